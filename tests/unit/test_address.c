/*
 * test_address: unit tests for src/mail/address.c, and the golden file runner
 * (tests/golden/address.in -> address.ref; TERN_GOLDEN_UPDATE=1 rewrites the .ref).
 * Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "lib/buf.h"
#include "lib/mem.h"
#include "mail/address.h"

#define GOLDEN_IN "tests/golden/address.in"
#define GOLDEN_REF "tests/golden/address.ref"

/* ---- helpers ---- */

static char *repeat(char c, size_t n)
{
    char *s = xmalloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Parse a NUL-terminated path; returns the reason (NULL on success). */
static const char *path(const char *s, unsigned opts, struct mailaddr *a, size_t *end)
{
    size_t e = 0;
    const char *why = addr_parse_path(s, strlen(s), opts, a, &e);
    if (end != NULL)
        *end = e;
    return why;
}

static void expect_ok(const char *s, unsigned opts, const char *local, const char *domain,
                      unsigned flags)
{
    struct mailaddr a;
    size_t end;
    const char *why = path(s, opts, &a, &end);
    if (why != NULL)
        fail_msg("%s: unexpected error: %s", s, why);
    assert_string_equal(a.local, local);
    assert_string_equal(a.domain, domain);
    assert_int_equal(a.flags, flags);
    assert_int_equal(end, strlen(s));
}

static void expect_err(const char *s, unsigned opts, const char *reason)
{
    struct mailaddr a;
    const char *why = path(s, opts, &a, NULL);
    if (why == NULL)
        fail_msg("%s: accepted, expected \"%s\"", s, reason);
    assert_string_equal(why, reason);
    /* a failed parse leaves nothing behind */
    assert_string_equal(a.local, "");
    assert_string_equal(a.domain, "");
    assert_int_equal(a.flags, 0);
}

/* ---- paths ---- */

static void test_simple(void **state)
{
    (void)state;
    expect_ok("<user@example.com>", 0, "user", "example.com", 0);
    expect_ok("<User.Name+tag@Example.COM>", 0, "User.Name+tag", "Example.COM", 0);
    expect_ok("<!#$%&'*+-/=?^_`{|}~@x>", 0, "!#$%&'*+-/=?^_`{|}~", "x", 0);

    struct mailaddr a;
    size_t end;
    assert_null(path("<a@b> SIZE=1", 0, &a, &end));
    assert_int_equal(end, 5);
    /* the input need not be NUL-terminated: a length that stops inside is respected */
    assert_null(addr_parse_path("<a@b>XYZ", 5, 0, &a, &end));
    assert_string_equal(a.local, "a");
    assert_int_equal(end, 5);
    assert_string_equal(addr_parse_path("<a@bc>", 4, 0, &a, &end), "missing >");
    /* end may be NULL */
    assert_null(addr_parse_path("<a@b>", 5, 0, &a, NULL));
}

static void test_brackets(void **state)
{
    (void)state;
    expect_err("a@b", 0, "missing <");
    expect_err("", 0, "missing <");
    expect_err(" <a@b>", 0, "missing <");
    expect_err("<a@b", 0, "missing >");
    expect_err("<", 0, "empty local part");
    expect_err("<a@b c>", 0, "bad character in domain");
    expect_err("<a@[1.2.3.4]x>", 0, "bad character in domain");
}

static void test_dot_string(void **state)
{
    (void)state;
    expect_ok("<a.b.c@d>", 0, "a.b.c", "d", 0);
    expect_err("<.a@b>", 0, "misplaced dot in local part");
    expect_err("<a.@b>", 0, "misplaced dot in local part");
    expect_err("<a..b@b>", 0, "misplaced dot in local part");
    expect_err("<a b@c>", 0, "bad character in local part");
    expect_err("<a(b)@c>", 0, "bad character in local part");
    expect_err("<a\\b@c>", 0, "bad character in local part");
    expect_err("<a\"b\"@c>", 0, "bad character in local part");
    expect_err("<,a@c>", 0, "bad character in local part");
    expect_err("<a>", 0, "missing @");
    expect_err("<a@>", 0, "missing domain");
    expect_err("<a@@b>", 0, "bad character in domain");
    expect_err("<a@b@c>", 0, "bad character in domain");
    expect_err("<@b>", 0, "empty local part");
    struct mailaddr a;
    assert_string_equal(addr_parse_path("<a\0b@c>", 7, 0, &a, NULL),
                        "bad character in local part");
}

static void test_quoted(void **state)
{
    (void)state;
    expect_ok("<\"a\"@b>", 0, "\"a\"", "b", ADDR_F_QUOTED);
    expect_ok("<\"\"@b>", 0, "\"\"", "b", ADDR_F_QUOTED);
    expect_ok("<\"a b\"@c>", 0, "\"a b\"", "c", ADDR_F_QUOTED);
    expect_ok("<\"a@b\"@c>", 0, "\"a@b\"", "c", ADDR_F_QUOTED);
    expect_ok("<\"a\\\"b\"@c>", 0, "\"a\\\"b\"", "c", ADDR_F_QUOTED);
    expect_ok("<\"a\\\\b\"@c>", 0, "\"a\\\\b\"", "c", ADDR_F_QUOTED);
    expect_ok("<\"a>b\"@c>", 0, "\"a>b\"", "c", ADDR_F_QUOTED);
    expect_err("<\"a\"b@c>", 0, "bad character in local part");
    expect_err("<\"a\".b@c>", 0, "bad character in local part");
    expect_err("<a.\"b\"@c>", 0, "bad character in local part");
    expect_err("<a.>", 0, "misplaced dot in local part");
    expect_err("<\"a@c>", 0, "unterminated quoted string");
    expect_err("<\"a\\", 0, "unterminated quoted string");
    expect_err("<\"a\tb\"@c>", 0, "bad character in quoted string");
    expect_err("<\"a\\\t\"@c>", 0, "bad character in quoted string");
    expect_err("<\"a\x7f\"@c>", 0, "bad character in quoted string");
    expect_err("<\"a\r\nb\"@c>", 0, "bad character in quoted string");
}

static void test_local_limits(void **state)
{
    (void)state;
    char buf[512];
    for (size_t len = 63; len <= 65; len++) {
        char *l = repeat('a', len);
        snprintf(buf, sizeof buf, "<%s@b>", l);
        if (len <= ADDR_LOCAL_MAX)
            expect_ok(buf, 0, l, "b", 0);
        else
            expect_err(buf, 0, "local part longer than 64 octets");
        free(l);
    }
    /* quoted: 64 octets as written, the quotes count */
    char *q62 = repeat('q', 62), *q63 = repeat('q', 63);
    snprintf(buf, sizeof buf, "<\"%s\"@b>", q62);
    struct mailaddr a;
    assert_null(path(buf, 0, &a, NULL));
    assert_int_equal(strlen(a.local), 64);
    snprintf(buf, sizeof buf, "<\"%s\"@b>", q63);
    expect_err(buf, 0, "local part longer than 64 octets");
    /* an unterminated quoted string that is too long is reported as too long */
    snprintf(buf, sizeof buf, "<\"%s%s", q63, q63);
    expect_err(buf, 0, "local part longer than 64 octets");
    free(q62);
    free(q63);
}

static void test_domains(void **state)
{
    (void)state;
    expect_err("<a@-b.c>", 0, "domain label starts or ends with a hyphen");
    expect_err("<a@b-.c>", 0, "domain label starts or ends with a hyphen");
    expect_ok("<a@b--c.d>", 0, "a", "b--c.d", 0);
    expect_err("<a@b..c>", 0, "empty domain label");
    expect_err("<a@.b>", 0, "empty domain label");
    expect_err("<a@b.>", 0, "empty domain label");
    expect_err("<a@b_c>", 0, "bad character in domain");
    char buf[512];
    char *l63 = repeat('b', 63), *l64 = repeat('b', 64);
    snprintf(buf, sizeof buf, "<a@%s.c>", l63);
    struct mailaddr a;
    assert_null(path(buf, 0, &a, NULL));
    snprintf(buf, sizeof buf, "<a@%s.c>", l64);
    expect_err(buf, 0, "domain label longer than 63 octets");
    free(l63);
    free(l64);
}

/* A valid domain of exactly total octets: 63-octet labels, the last one shorter. */
static char *long_domain(size_t total)
{
    char *d = xmalloc(total + 1);
    size_t o = 0;
    while (o < total) {
        size_t left = total - o;
        size_t label = left > 63 ? 63 : left;
        /* never leave exactly one octet: it would have to be a dot with an empty label */
        if (left - label == 1)
            label--;
        memset(d + o, 'd', label);
        o += label;
        if (o < total)
            d[o++] = '.';
    }
    d[o] = '\0';
    return d;
}

static void test_path_limit(void **state)
{
    (void)state;
    char buf[1024];
    /* "<" + 64 + "@" + domain + ">" */
    for (size_t dlen = 188; dlen <= 191; dlen++) {
        char *l = repeat('a', 64), *d = long_domain(dlen);
        assert_int_equal(strlen(d), dlen);
        snprintf(buf, sizeof buf, "<%s@%s>", l, d);
        size_t plen = strlen(buf);
        if (plen <= ADDR_PATH_MAX)
            expect_ok(buf, 0, l, d, 0);
        else
            expect_err(buf, 0, "path longer than 256 octets");
        free(l);
        free(d);
    }
    /* exactly 255, 256, 257 */
    for (size_t plen = 255; plen <= 257; plen++) {
        char *d = long_domain(plen - 4);
        snprintf(buf, sizeof buf, "<a@%s>", d);
        assert_int_equal(strlen(buf), plen);
        if (plen <= 256)
            expect_ok(buf, 0, "a", d, 0);
        else
            expect_err(buf, 0, "path longer than 256 octets");
        free(d);
    }
    /* a long source route counts toward the path */
    char *d = long_domain(240);
    snprintf(buf, sizeof buf, "<@%s:a@b>", d);
    expect_ok(buf, 0, "a", "b", ADDR_F_ROUTE); /* 1+1+240+1+3+1 = 247 */
    snprintf(buf, sizeof buf, "<@%s,@%s:a@b>", d, d);
    expect_err(buf, 0, "path longer than 256 octets");
    free(d);
}

static void test_domain_limits(void **state)
{
    (void)state;
    char buf[1024];
    struct mailaddr a;
    for (size_t dlen = 254; dlen <= 256; dlen++) {
        char *d = long_domain(dlen);
        assert_int_equal(strlen(d), dlen);
        snprintf(buf, sizeof buf, "a@%s", d);
        const char *why = addr_parse_mailbox(buf, strlen(buf), 0, &a);
        const char *why2 = addr_check_domain(d, dlen, false);
        if (dlen <= ADDR_DOMAIN_MAX) {
            assert_null(why);
            assert_string_equal(a.domain, d);
            assert_null(why2);
        } else {
            assert_string_equal(why, "domain longer than 255 octets");
            assert_string_equal(why2, "domain longer than 255 octets");
        }
        free(d);
    }
    /* mailbox: no path limit, so 64 + 1 + 255 = 320 octets fit */
    char *l = repeat('a', 64), *d = long_domain(255);
    snprintf(buf, sizeof buf, "%s@%s", l, d);
    assert_null(addr_parse_mailbox(buf, strlen(buf), 0, &a));
    char text[ADDR_TEXT_MAX + 1];
    assert_int_equal(addr_format(&a, text, sizeof text), ADDR_TEXT_MAX);
    assert_string_equal(text, buf);
    free(l);
    free(d);
    /* literal domains are held to the same limit, brackets included */
    char *x251 = repeat('x', 251);
    snprintf(buf, sizeof buf, "a@[t:%s]", x251); /* 1 + 2 + 251 + 1 = 255 */
    assert_null(addr_parse_mailbox(buf, strlen(buf), 0, &a));
    assert_int_equal(strlen(a.domain), 255);
    assert_null(addr_check_domain(buf + 2, strlen(buf + 2), false));
    snprintf(buf, sizeof buf, "a@[tt:%s]", x251); /* 256 */
    assert_string_equal(addr_parse_mailbox(buf, strlen(buf), 0, &a),
                        "domain longer than 255 octets");
    assert_string_equal(addr_check_domain(buf + 2, strlen(buf + 2), false),
                        "domain longer than 255 octets");
    free(x251);
}

static void test_routes(void **state)
{
    (void)state;
    expect_ok("<@a:c@d>", 0, "c", "d", ADDR_F_ROUTE);
    expect_ok("<@a,@b:c@d>", 0, "c", "d", ADDR_F_ROUTE);
    expect_ok("<@a.b,@c-d.e:\"x\"@[1.2.3.4]>", 0, "\"x\"", "[1.2.3.4]",
              ADDR_F_ROUTE | ADDR_F_QUOTED | ADDR_F_LITERAL);
    expect_err("<@a,b:c@d>", 0, "bad source route");
    expect_err("<@a;c@d>", 0, "bad source route");
    expect_err("<@:c@d>", 0, "bad source route");
    expect_err("<@a..b:c@d>", 0, "bad source route");
    expect_err("<@[1.2.3.4]:c@d>", 0, "bad source route");
    expect_err("<@a>", 0, "empty local part");
    expect_err("<@a:>", ADDR_ALLOW_NULL, "empty local part");
    expect_err("<@a", 0, "missing >");
    expect_err("<@a:Postmaster>", ADDR_ALLOW_POSTMASTER, "missing @");
    expect_err("<@a\xff:b@c>", ADDR_ALLOW_UTF8, "invalid UTF-8");
    /* a U-label in a route needs SMTPUTF8, but the mailbox kept is plain ASCII */
    expect_ok("<@δ.example:b@c>", ADDR_ALLOW_UTF8, "b", "c", ADDR_F_ROUTE);
    expect_err("<@δ.example:b@c>", 0, addr_err_needs_utf8);
}

static void test_ipv4_literals(void **state)
{
    (void)state;
    expect_ok("<a@[192.0.2.1]>", 0, "a", "[192.0.2.1]", ADDR_F_LITERAL);
    expect_ok("<a@[255.255.255.255]>", 0, "a", "[255.255.255.255]", ADDR_F_LITERAL);
    expect_ok("<a@[01.002.3.4]>", 0, "a", "[01.002.3.4]", ADDR_F_LITERAL);
    const char *bad[] = {"256.1.1.1", "1.2.3", "1.2.3.4.5", "0001.2.3.4", "1.2.3.", ".1.2.3",
                         "1..2.3", "", "1.2.3.4 ", "-1.2.3.4", "1.2.3.4a"};
    char buf[128];
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        snprintf(buf, sizeof buf, "<a@[%s]>", bad[i]);
        expect_err(buf, 0, "bad address literal");
    }
    expect_err("<a@[1.2.3.4>", 0, "bad address literal");
}

static void test_ipv6_literals(void **state)
{
    (void)state;
    const char *good[] = {
        "2001:db8:0:0:0:0:0:1", "1:2:3:4:5:6:7:8", "ffff:FFFF:abcd:0:0000:1:2:3",
        "2001:db8::1", "::", "::1", "1::", "1:2:3:4:5:6::", "1:2:3::4:5:6", "::1:2:3:4:5:6",
        "1:2:3:4:5:6:192.0.2.1", "::ffff:192.0.2.1", "::192.0.2.1", "1:2:3:4::192.0.2.1",
        "1:2::3:4:192.0.2.1", "1::2:3:4:192.0.2.1",
    };
    const char *bad[] = {
        "1:2:3:4:5:6:7::", "::1:2:3:4:5:6:7", "1:2:3::4:5:6:7", "1:2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8:9", "1::2::3", "12345::1", "g::1", ":1", "1:", "1:::2", "",
        "xyz", "2001:db8::1%eth0", "1:2:3:4:5:192.0.2.1", "1:2:3:4:5:6:7:192.0.2.1",
        "1:2:3:4:5::192.0.2.1", "1::2:3:4:5:192.0.2.1", "::1.2.3.256", "1.2.3.4",
        "::1.2.3.4:5", "::1.2.3", ":::", "::ffff:1.2.3.4.", "1:2:3:4:5:6:7:8:",
    };
    char buf[128];
    struct mailaddr a;
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        snprintf(buf, sizeof buf, "<a@[IPv6:%s]>", good[i]);
        const char *why = path(buf, 0, &a, NULL);
        if (why != NULL)
            fail_msg("%s: %s", buf, why);
        assert_int_equal(a.flags, ADDR_F_LITERAL);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        snprintf(buf, sizeof buf, "<a@[IPv6:%s]>", bad[i]);
        expect_err(buf, 0, "bad address literal");
    }
    /* the tag is case-insensitive (ABNF literal strings are) */
    expect_ok("<a@[ipv6:2001:DB8::1]>", 0, "a", "[ipv6:2001:DB8::1]", ADDR_F_LITERAL);
}

static void test_general_literals(void **state)
{
    (void)state;
    expect_ok("<a@[x-tag:anything]>", 0, "a", "[x-tag:anything]", ADDR_F_LITERAL);
    expect_ok("<a@[tag:a:b@c]>", 0, "a", "[tag:a:b@c]", ADDR_F_LITERAL);
    expect_ok("<a@[-tag:x]>", 0, "a", "[-tag:x]", ADDR_F_LITERAL);
    expect_ok("<a@[IPv6x:1]>", 0, "a", "[IPv6x:1]", ADDR_F_LITERAL);
    const char *bad[] = {"tag-:x", "tag:", ":x", "ta_g:x", "tag:a b", "tag:a\\b", "tag:a[b",
                         "tag:\xce\xb4"};
    char buf[128];
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        snprintf(buf, sizeof buf, "<a@[%s]>", bad[i]);
        expect_err(buf, ADDR_ALLOW_UTF8, "bad address literal");
    }
}

static void test_utf8(void **state)
{
    (void)state;
    const char *greek = "<δοκιμή@παράδειγμα.δοκιμή>";
    struct mailaddr a;
    assert_ptr_equal(path(greek, 0, &a, NULL), addr_err_needs_utf8);
    assert_ptr_equal(path("<a@παράδειγμα.δοκιμή>", 0, &a, NULL), addr_err_needs_utf8);
    assert_ptr_equal(path("<\"δ\"@b>", 0, &a, NULL), addr_err_needs_utf8);
    /* another fault wins over the missing SMTPUTF8: that is a 501, not a 553 */
    expect_err("<δ@b c>", 0, "bad character in domain");
    expect_ok(greek, ADDR_ALLOW_UTF8, "δοκιμή", "παράδειγμα.δοκιμή", ADDR_F_UTF8);
    expect_ok("<\"δοκ ιμή\"@x>", ADDR_ALLOW_UTF8, "\"δοκ ιμή\"", "x",
              ADDR_F_UTF8 | ADDR_F_QUOTED);
    expect_ok("<a@b>", ADDR_ALLOW_UTF8, "a", "b", 0); /* no UTF-8, no flag */
    expect_err("<\"\\δ\"@x>", ADDR_ALLOW_UTF8, "bad character in quoted string");

    /* every UTF-8 boundary, accepted or not, with and without the option */
    static const struct {
        const char *seq;
        bool ok;
    } cases[] = {
        {"\xc3\xa9", true},          {"\xc2\x80", true},          {"\xdf\xbf", true},
        {"\xe0\xa0\x80", true},      {"\xef\xbf\xbf", true},      {"\xf0\x90\x80\x80", true},
        {"\xf4\x8f\xbf\xbf", true},  {"\xf0\x9f\x98\x80", true},  {"\xee\x80\x80", true},
        {"\xed\x9f\xbf", true},      {"\xc0\xaf", false},         {"\xc1\xbf", false},
        {"\xe0\x80\xaf", false},     {"\xe0\x9f\xbf", false},     {"\xf0\x80\x80\xaf", false},
        {"\xf0\x8f\xbf\xbf", false}, {"\xed\xa0\x80", false},     {"\xed\xbf\xbf", false},
        {"\xf4\x90\x80\x80", false}, {"\xf5\x80\x80\x80", false}, {"\xff", false},
        {"\xfe", false},             {"\xc3", false},             {"\xe2\x82", false},
        {"\xf0\x9f\x98", false},     {"\x80", false},             {"\xc3\x28", false},
        {"\xe2\x28\xa1", false},     {"\xf0\x90\x28\xbc", false},
        {"\xe1\x80\x80", true},      {"\xec\xbf\xbf", true},      {"\xf1\x80\x80\x80", true},
        {"\xf3\xbf\xbf\xbf", true},  {"\xe2\x82\xc0", false},     {"\xf0\x90\x80\xc0", false},
        {"\xf1\x80\x80", false},     {"\xc2\xc0", false},
    };
    char buf[64];
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        for (int where = 0; where < 3; where++) {
            if (where == 0)
                snprintf(buf, sizeof buf, "<x%s@x>", cases[i].seq);
            else if (where == 1)
                snprintf(buf, sizeof buf, "<\"%s\"@x>", cases[i].seq);
            else
                snprintf(buf, sizeof buf, "<x@x%s>", cases[i].seq);
            const char *why = path(buf, ADDR_ALLOW_UTF8, &a, NULL);
            if (why == NULL)
                assert_true(a.flags & ADDR_F_UTF8);
            const char *why0 = path(buf, 0, &a, NULL);
            if (cases[i].ok) {
                if (why != NULL)
                    fail_msg("case %zu/%d: %s", i, where, why);
                assert_ptr_equal(why0, addr_err_needs_utf8);
            } else {
                if (why == NULL || why0 == NULL)
                    fail_msg("case %zu/%d accepted", i, where);
                assert_ptr_not_equal(why, addr_err_needs_utf8);
                assert_ptr_not_equal(why0, addr_err_needs_utf8);
            }
        }
    }
    /* U-label labels: 63 octets as written */
    char dom[256] = "<a@";
    for (int i = 0; i < 31; i++)
        strcat(dom, "é");
    strcat(dom, ".x>");
    assert_null(path(dom, ADDR_ALLOW_UTF8, &a, NULL));
    dom[strlen(dom) - 3] = '\0';
    strcat(dom, "é.x>");
    expect_err(dom, ADDR_ALLOW_UTF8, "domain label longer than 63 octets");
    expect_err("<a@-é>", ADDR_ALLOW_UTF8, "domain label starts or ends with a hyphen");
}

static void test_null_postmaster(void **state)
{
    (void)state;
    expect_err("<>", 0, "null path not allowed here");
    expect_err("<>", ADDR_ALLOW_POSTMASTER | ADDR_ALLOW_UTF8, "null path not allowed here");
    struct mailaddr a;
    size_t end;
    assert_null(path("<> SIZE=1", ADDR_ALLOW_NULL, &a, &end));
    assert_int_equal(a.flags, ADDR_F_NULL);
    assert_string_equal(a.local, "");
    assert_string_equal(a.domain, "");
    assert_int_equal(end, 2);

    expect_err("<Postmaster>", 0, "missing @");
    expect_err("<Postmaster>", ADDR_ALLOW_NULL, "missing @");
    expect_ok("<Postmaster>", ADDR_ALLOW_POSTMASTER, "Postmaster", "", ADDR_F_POSTMASTER);
    expect_ok("<pOSTMASTER>", ADDR_ALLOW_POSTMASTER, "pOSTMASTER", "", ADDR_F_POSTMASTER);
    expect_ok("<Postmaster@example.com>", ADDR_ALLOW_POSTMASTER, "Postmaster", "example.com",
              0);
    expect_err("<Postmastr>", ADDR_ALLOW_POSTMASTER, "missing @");
    expect_err("<Postmasters>", ADDR_ALLOW_POSTMASTER, "missing @");
    expect_err("<\"Postmaster\">", ADDR_ALLOW_POSTMASTER, "missing @");
    assert_null(path("<postmaster> NOTIFY=NEVER", ADDR_ALLOW_POSTMASTER, &a, &end));
    assert_int_equal(end, 12);

    /* the bare forms in addr_parse_mailbox */
    assert_string_equal(addr_parse_mailbox("", 0, 0, &a), "null path not allowed here");
    assert_null(addr_parse_mailbox("", 0, ADDR_ALLOW_NULL, &a));
    assert_int_equal(a.flags, ADDR_F_NULL);
    assert_string_equal(addr_parse_mailbox("postmaster", 10, 0, &a), "missing @");
    assert_null(addr_parse_mailbox("postmaster", 10, ADDR_ALLOW_POSTMASTER, &a));
    assert_int_equal(a.flags, ADDR_F_POSTMASTER);
}

static void test_mailbox(void **state)
{
    (void)state;
    struct mailaddr a;
    assert_null(addr_parse_mailbox("\"a@b\"@c", 7, 0, &a));
    assert_string_equal(a.local, "\"a@b\"");
    assert_string_equal(a.domain, "c");
    assert_int_equal(a.flags, ADDR_F_QUOTED);
    assert_string_equal(addr_parse_mailbox("<a@b>", 5, 0, &a), "bad character in local part");
    assert_string_equal(addr_parse_mailbox("a@b>", 4, 0, &a), "bad character in domain");
    assert_string_equal(addr_parse_mailbox("a@b ", 4, 0, &a), "bad character in domain");
    assert_string_equal(addr_parse_mailbox("a", 1, 0, &a), "missing @");
    assert_string_equal(addr_parse_mailbox("@b", 2, 0, &a), "empty local part");
    assert_string_equal(addr_parse_mailbox("a@", 2, 0, &a), "missing domain");
    assert_ptr_equal(addr_parse_mailbox("δ@b", strlen("δ@b"), 0, &a), addr_err_needs_utf8);
    assert_null(addr_parse_mailbox("δ@b", strlen("δ@b"), ADDR_ALLOW_UTF8, &a));
    assert_int_equal(a.flags, ADDR_F_UTF8);
    /* only n bytes are read */
    assert_null(addr_parse_mailbox("a@b.c", 3, 0, &a));
    assert_string_equal(a.domain, "b");
}

static void test_check_domain(void **state)
{
    (void)state;
    assert_null(addr_check_domain("example.com", 11, false));
    assert_null(addr_check_domain("[192.0.2.1]", 11, false));
    assert_null(addr_check_domain("[IPv6:::1]", 10, false));
    assert_string_equal(addr_check_domain("", 0, false), "missing domain");
    assert_string_equal(addr_check_domain("a.", 2, false), "empty domain label");
    assert_string_equal(addr_check_domain("a b", 3, false), "bad character in domain");
    assert_string_equal(addr_check_domain("a@b", 3, false), "bad character in domain");
    assert_string_equal(addr_check_domain("[1.2.3.4]x", 10, false), "bad character in domain");
    assert_string_equal(addr_check_domain("[1.2.3]", 7, false), "bad address literal");
    const char *u = "παράδειγμα.δοκιμή";
    assert_ptr_equal(addr_check_domain(u, strlen(u), false), addr_err_needs_utf8);
    assert_null(addr_check_domain(u, strlen(u), true));
    assert_string_equal(addr_check_domain("a\xff", 2, true), "invalid UTF-8");
    assert_string_equal(addr_check_domain("a\xff", 2, false), "invalid UTF-8");
}

static void test_unquote(void **state)
{
    (void)state;
    char out[ADDR_LOCAL_MAX + 1];
    assert_int_equal(addr_local_unquote("\"a\\\"b\"", out, sizeof out), 3);
    assert_string_equal(out, "a\"b");
    assert_int_equal(addr_local_unquote("\"a\\\\b\"", out, sizeof out), 3);
    assert_string_equal(out, "a\\b");
    assert_int_equal(addr_local_unquote("\"a b@c\"", out, sizeof out), 5);
    assert_string_equal(out, "a b@c");
    assert_int_equal(addr_local_unquote("\"\"", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(addr_local_unquote("plain.x", out, sizeof out), 7);
    assert_string_equal(out, "plain.x");
    /* a backslash outside quotes is not an escape */
    assert_int_equal(addr_local_unquote("a\\b", out, sizeof out), 3);
    /* cap: the result and its NUL must fit */
    assert_int_equal(addr_local_unquote("abc", out, 4), 3);
    assert_int_equal(addr_local_unquote("abc", out, 3), (size_t)-1);
    assert_int_equal(addr_local_unquote("\"abc\"", out, 3), (size_t)-1);
    assert_int_equal(addr_local_unquote("", out, 0), (size_t)-1);
    assert_int_equal(addr_local_unquote("", out, 1), 0);
}

static void test_format(void **state)
{
    (void)state;
    struct mailaddr a;
    char out[ADDR_TEXT_MAX + 1];
    assert_null(path("<@r:\"a b\"@[1.2.3.4]>", 0, &a, NULL));
    assert_int_equal(addr_format(&a, out, sizeof out), 15);
    assert_string_equal(out, "\"a b\"@[1.2.3.4]");
    assert_null(path("<>", ADDR_ALLOW_NULL, &a, NULL));
    assert_int_equal(addr_format(&a, out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_null(path("<postMASTER>", ADDR_ALLOW_POSTMASTER, &a, NULL));
    assert_int_equal(addr_format(&a, out, sizeof out), 10);
    assert_string_equal(out, "Postmaster");
    /* a short buffer is NUL-terminated, the full length is returned */
    assert_null(path("<abc@def>", 0, &a, NULL));
    assert_int_equal(addr_format(&a, out, 4), 7);
    assert_string_equal(out, "abc");
    out[0] = 'x';
    addr_format(&a, out, 0);
    assert_int_equal(out[0], 'x');
}

static void test_split(void **state)
{
    (void)state;
    char l[ADDR_LOCAL_MAX + 1], d[ADDR_DOMAIN_MAX + 1];
    assert_true(addr_split("a@b", l, sizeof l, d, sizeof d));
    assert_string_equal(l, "a");
    assert_string_equal(d, "b");
    assert_true(addr_split("\"x@y\"@b.c", l, sizeof l, d, sizeof d));
    assert_string_equal(l, "\"x@y\"");
    assert_string_equal(d, "b.c");
    assert_true(addr_split("a@[tag:x@y]", l, sizeof l, d, sizeof d));
    assert_string_equal(l, "a");
    assert_string_equal(d, "[tag:x@y]");
    assert_true(addr_split("a@[1.2.3.4]", l, sizeof l, d, sizeof d));
    assert_string_equal(d, "[1.2.3.4]");
    assert_true(addr_split("@b", l, sizeof l, d, sizeof d));
    assert_string_equal(l, "");
    assert_false(addr_split("ab", l, sizeof l, d, sizeof d));
    assert_false(addr_split("", l, sizeof l, d, sizeof d));
    assert_false(addr_split("Postmaster", l, sizeof l, d, sizeof d));
    assert_false(addr_split("[1.2.3.4]", l, sizeof l, d, sizeof d));
    assert_true(addr_split("a@b]", l, sizeof l, d, sizeof d)); /* no '[': the last '@' */
    assert_string_equal(d, "b]");
    /* too long for the caller's buffers */
    assert_true(addr_split("abc@de", l, 4, d, 3));
    assert_false(addr_split("abcd@de", l, 4, d, 3));
    assert_false(addr_split("abc@def", l, 4, d, 3));
}

/* Format and re-parse (as a bare mailbox and as a path): the same address comes back. */
static const char *roundtrip(const struct mailaddr *a, unsigned opts)
{
    char text[ADDR_TEXT_MAX + 1];
    size_t n = addr_format(a, text, sizeof text);
    if (n >= sizeof text)
        return "format truncated";
    struct mailaddr b;
    if (addr_parse_mailbox(text, n, opts, &b) != NULL)
        return "formatted mailbox does not parse";
    unsigned want = a->flags & ~(unsigned)ADDR_F_ROUTE;
    if (b.flags != want || strcmp(b.domain, a->domain) != 0)
        return "mailbox differs";
    if ((a->flags & ADDR_F_POSTMASTER) ? strcasecmp(b.local, a->local) != 0
                                       : strcmp(b.local, a->local) != 0)
        return "local part differs";
    if (!(a->flags & (ADDR_F_NULL | ADDR_F_POSTMASTER))) {
        char l[ADDR_LOCAL_MAX + 1], d[ADDR_DOMAIN_MAX + 1];
        if (!addr_split(text, l, sizeof l, d, sizeof d) || strcmp(l, a->local) != 0 ||
            strcmp(d, a->domain) != 0)
            return "split differs";
    }
    return NULL;
}

static void test_roundtrip(void **state)
{
    (void)state;
    const char *paths[] = {"<a@b>", "<\"a\\\"b c\"@[IPv6:::1]>", "<@x,@y:q@z>", "<>",
                           "<Postmaster>", "<δ@δ.δ>", "<\"@\"@[t:@]>"};
    unsigned opts = ADDR_ALLOW_NULL | ADDR_ALLOW_POSTMASTER | ADDR_ALLOW_UTF8;
    for (size_t i = 0; i < ARRAY_LEN(paths); i++) {
        struct mailaddr a;
        assert_null(path(paths[i], opts, &a, NULL));
        const char *why = roundtrip(&a, opts);
        if (why != NULL)
            fail_msg("%s: %s", paths[i], why);
    }
}

/* ---- golden files ---- */

static char *read_file(const char *name, size_t *len)
{
    FILE *f = fopen(name, "rb");
    if (f == NULL)
        return NULL;
    struct buf b = BUF_INIT(1 << 22);
    char chunk[4096];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (!buf_add(&b, chunk, k))
            fail_msg("%s too large", name);
    fclose(f);
    if (b.data == NULL)
        buf_adds(&b, "");
    return buf_steal(&b, len);
}

static int hexdigit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Expand ${xHH}, ${TEXT*N} and ${} in one .in line. */
static void expand(const char *line, size_t len, struct buf *out, int lineno)
{
    for (size_t i = 0; i < len;) {
        if (line[i] != '$' || i + 1 >= len || line[i + 1] != '{') {
            buf_addc(out, line[i++]);
            continue;
        }
        const char *close = memchr(line + i + 2, '}', len - i - 2);
        if (close == NULL)
            fail_msg("%s:%d: unterminated ${", GOLDEN_IN, lineno);
        const char *in = line + i + 2;
        size_t inlen = (size_t)(close - in);
        if (inlen == 3 && in[0] == 'x' && hexdigit(in[1]) >= 0 && hexdigit(in[2]) >= 0) {
            buf_addc(out, (char)(hexdigit(in[1]) * 16 + hexdigit(in[2])));
        } else if (inlen > 0) {
            const char *star = NULL;
            for (const char *p = in; p < close; p++)
                if (*p == '*')
                    star = p;
            if (star == NULL || star == in)
                fail_msg("%s:%d: bad ${...}", GOLDEN_IN, lineno);
            long count = strtol(star + 1, NULL, 10);
            for (long r = 0; r < count; r++)
                buf_add(out, in, (size_t)(star - in));
        }
        i = (size_t)(close - line) + 1;
    }
}

static const char *flag_names(unsigned f, char *dst, size_t cap)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{ADDR_F_NULL, "null"},       {ADDR_F_POSTMASTER, "postmaster"},
                 {ADDR_F_QUOTED, "quoted"},   {ADDR_F_UTF8, "utf8"},
                 {ADDR_F_LITERAL, "literal"}, {ADDR_F_ROUTE, "route"}};
    dst[0] = '\0';
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        if (f & names[i].bit) {
            if (dst[0] != '\0')
                strncat(dst, ",", cap - strlen(dst) - 1);
            strncat(dst, names[i].name, cap - strlen(dst) - 1);
        }
    if (dst[0] == '\0')
        snprintf(dst, cap, "-");
    return dst;
}

/* Append v, writing C0/C1 control characters as \xHH so the .ref stays plain text. */
static void show_bytes(struct buf *out, const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c == 0x7f) {
            buf_printf(out, "\\x%02x", c);
        } else if (c == 0xc2 && i + 1 < n && (unsigned char)v[i + 1] < 0xa0) {
            buf_printf(out, "\\x%02x\\x%02x", c, (unsigned char)v[i + 1]);
            i++;
        } else {
            buf_addc(out, (char)c);
        }
    }
}

/* A stored value: short ones in full, long ones as head...tail plus their length. */
static void show(struct buf *out, const char *key, const char *v)
{
    size_t n = strlen(v);
    buf_printf(out, " %s=", key);
    if (n <= 40) {
        show_bytes(out, v, n);
    } else {
        show_bytes(out, v, 12);
        buf_adds(out, "...");
        show_bytes(out, v + n - 12, 12);
        buf_printf(out, "(%zu octets)", n);
    }
}

static void golden_line(struct buf *out, const char *mode, unsigned opts, const char *s,
                        size_t n)
{
    struct mailaddr a;
    const char *why;
    size_t end = n;
    if (strcmp(mode, "domain") == 0) {
        why = addr_check_domain(s, n, (opts & ADDR_ALLOW_UTF8) != 0);
        buf_printf(out, why ? " => error: %s\n" : " => ok\n", why);
        return;
    }
    if (strcmp(mode, "mailbox") == 0)
        why = addr_parse_mailbox(s, n, opts, &a);
    else
        why = addr_parse_path(s, n, opts, &a, &end);
    if (why != NULL) {
        buf_printf(out, " => error: %s\n", why);
        return;
    }
    char fl[80];
    buf_printf(out, " => ok flags=%s", flag_names(a.flags, fl, sizeof fl));
    show(out, "local", a.local);
    show(out, "domain", a.domain);
    if (end < n)
        buf_printf(out, " rest=%.*s", (int)(n - end), s + end);
    const char *rt = roundtrip(&a, opts);
    if (rt != NULL)
        buf_printf(out, " ROUNDTRIP FAILED: %s", rt);
    buf_addc(out, '\n');
}

static unsigned parse_opts(const char *p, size_t len, int lineno)
{
    unsigned opts = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && (p[i] == ' ' || p[i] == ','))
            i++;
        size_t st = i;
        while (i < len && p[i] != ' ' && p[i] != ',')
            i++;
        size_t w = i - st;
        if (w == 0)
            continue;
        if (w == 4 && memcmp(p + st, "null", 4) == 0)
            opts |= ADDR_ALLOW_NULL;
        else if (w == 10 && memcmp(p + st, "postmaster", 10) == 0)
            opts |= ADDR_ALLOW_POSTMASTER;
        else if (w == 4 && memcmp(p + st, "utf8", 4) == 0)
            opts |= ADDR_ALLOW_UTF8;
        else
            fail_msg("%s:%d: unknown option %.*s", GOLDEN_IN, lineno, (int)w, p + st);
    }
    return opts;
}

static void test_golden(void **state)
{
    (void)state;
    size_t inlen;
    char *in = read_file(GOLDEN_IN, &inlen);
    if (in == NULL)
        fail_msg("cannot read %s (run the tests from the repository root)", GOLDEN_IN);
    struct buf out = BUF_INIT(1 << 22);
    char mode[16] = "path";
    unsigned opts = 0;
    int lineno = 0, ntests = 0;
    for (size_t pos = 0; pos < inlen;) {
        const char *line = in + pos;
        const char *nl = memchr(line, '\n', inlen - pos);
        size_t len = nl ? (size_t)(nl - line) : inlen - pos;
        pos += len + (nl ? 1 : 0);
        lineno++;
        buf_add(&out, line, len);
        if (len == 0 || line[0] == '#') {
            if (len >= 6 && memcmp(line, "#opts:", 6) == 0) {
                opts = parse_opts(line + 6, len - 6, lineno);
            } else if (len >= 6 && memcmp(line, "#mode:", 6) == 0) {
                const char *m = line + 6;
                size_t ml = len - 6;
                while (ml > 0 && *m == ' ')
                    m++, ml--;
                if (ml >= sizeof mode ||
                    !((ml == 4 && memcmp(m, "path", 4) == 0) ||
                      (ml == 7 && memcmp(m, "mailbox", 7) == 0) ||
                      (ml == 6 && memcmp(m, "domain", 6) == 0)))
                    fail_msg("%s:%d: unknown mode", GOLDEN_IN, lineno);
                memcpy(mode, m, ml);
                mode[ml] = '\0';
            }
            buf_addc(&out, '\n');
            continue;
        }
        struct buf input = BUF_INIT(1 << 16);
        expand(line, len, &input, lineno);
        golden_line(&out, mode, opts, input.data ? input.data : "", input.len);
        buf_release(&input);
        ntests++;
    }
    assert_true(ntests > 100);

    const char *update = getenv("TERN_GOLDEN_UPDATE");
    if (update != NULL && strcmp(update, "1") == 0) {
        FILE *f = fopen(GOLDEN_REF, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(out.data, 1, out.len, f), out.len);
        assert_int_equal(fclose(f), 0);
        print_message("wrote %s (%d tests): review it by hand\n", GOLDEN_REF, ntests);
    } else {
        size_t reflen;
        char *ref = read_file(GOLDEN_REF, &reflen);
        if (ref == NULL)
            fail_msg("cannot read %s", GOLDEN_REF);
        if (reflen != out.len || memcmp(ref, out.data, reflen) != 0) {
            /* report the first line that differs */
            size_t i = 0, ls = 0;
            int ln = 1;
            while (i < reflen && i < out.len && ref[i] == out.data[i]) {
                if (ref[i] == '\n') {
                    ln++;
                    ls = i + 1;
                }
                i++;
            }
            const char *re = memchr(ref + ls, '\n', reflen - ls);
            const char *oe = memchr(out.data + ls, '\n', out.len - ls);
            int rl = (int)(re ? (size_t)(re - ref) - ls : reflen - ls);
            int ol = (int)(oe ? (size_t)(oe - out.data) - ls : out.len - ls);
            fail_msg("%s line %d differs:\n  expected: %.*s\n  got:      %.*s", GOLDEN_REF, ln,
                     rl, ref + ls, ol, out.data + ls);
        }
        free(ref);
    }
    buf_release(&out);
    free(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple),          cmocka_unit_test(test_brackets),
        cmocka_unit_test(test_dot_string),      cmocka_unit_test(test_quoted),
        cmocka_unit_test(test_local_limits),    cmocka_unit_test(test_domains),
        cmocka_unit_test(test_path_limit),      cmocka_unit_test(test_domain_limits),
        cmocka_unit_test(test_routes),          cmocka_unit_test(test_ipv4_literals),
        cmocka_unit_test(test_ipv6_literals),   cmocka_unit_test(test_general_literals),
        cmocka_unit_test(test_utf8),            cmocka_unit_test(test_null_postmaster),
        cmocka_unit_test(test_mailbox),         cmocka_unit_test(test_check_domain),
        cmocka_unit_test(test_unquote),         cmocka_unit_test(test_format),
        cmocka_unit_test(test_split),           cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_golden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
