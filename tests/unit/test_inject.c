/*
 * test_inject: tern-sendmail's message preparation (src/mail/inject.c): LF -> CRLF, the
 * "." line with and without -i (also split across reads), -t recipients from To:/Cc:/Bcc:
 * with display names, comments, quoted strings, groups and folded lines, Resent-*, Bcc:
 * removal, From:/Date:/Message-ID: added only when missing, display-name quoting and
 * encoding, header-less input, and the bounds (header line, size, recipients).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mem.h"
#include "mail/address.h"
#include "mail/inject.h"

static struct inject_params defaults(void)
{
    struct inject_params p = {
        .extract_rcpts = false,
        .dot_ends = true,
        .domain = "host.example",
        .from_addr = "joe@host.example",
        .full_name = NULL,
        .date = "Mon, 01 Jan 2029 00:00:00 +0000",
        .message_id = "<id1@host.example>",
        .max_size = 1 << 20,
        .max_rcpts = 100,
    };
    return p;
}

/* Run a whole input through; the message (head + body) goes to *msg (caller frees). */
static enum inject_status run(const struct inject_params *p, const char *input, size_t chunk,
                              char **msg, struct inject **keep)
{
    struct inject *in = inject_new(p);
    size_t n = strlen(input);
    enum inject_status st = INJECT_MORE;
    for (size_t i = 0; i < n && st == INJECT_MORE; i += chunk)
        st = inject_feed(in, input + i, n - i < chunk ? n - i : chunk);
    if (st == INJECT_MORE || st == INJECT_END)
        st = inject_finish(in);
    if (msg) {
        *msg = NULL;
        if (st == INJECT_OK) {
            size_t hl, bl;
            const char *h = inject_head(in, &hl), *b = inject_body(in, &bl);
            *msg = xmalloc(hl + bl + 1);
            memcpy(*msg, h, hl);
            memcpy(*msg + hl, b, bl);
            (*msg)[hl + bl] = '\0';
        }
    }
    if (keep)
        *keep = in;
    else
        inject_free(in);
    return st;
}

static const char *const added =
    "From: joe@host.example\r\n"
    "Date: Mon, 01 Jan 2029 00:00:00 +0000\r\n"
    "Message-ID: <id1@host.example>\r\n";

static void expect(const struct inject_params *p, const char *input, const char *want)
{
    /* the result must not depend on how the input is split into reads */
    static const size_t chunks[] = {1, 2, 3, 7, 64, 1 << 20};
    for (size_t c = 0; c < ARRAY_LEN(chunks); c++) {
        char *msg;
        enum inject_status st = run(p, input, chunks[c], &msg, NULL);
        if (st != INJECT_OK)
            fail_msg("status %d for chunk %zu", st, chunks[c]);
        if (strcmp(msg, want) != 0)
            fail_msg("chunk %zu:\n--- got\n%s\n--- want\n%s", chunks[c], msg, want);
        free(msg);
    }
}

static char *cat(const char *a, const char *b, const char *c)
{
    return xasprintf("%s%s%s", a, b, c);
}

static void test_crlf(void **state)
{
    struct inject_params p = defaults();
    char *want = cat("Subject: x\r\n", added, "\r\nline 1\r\nline 2\r\n");
    expect(&p, "Subject: x\n\nline 1\nline 2\n", want);
    expect(&p, "Subject: x\r\n\r\nline 1\r\nline 2\r\n", want); /* CRLF stays CRLF */
    expect(&p, "Subject: x\n\nline 1\r\nline 2", want);          /* no final newline */
    free(want);
    /* a CR that is not before LF is content */
    want = cat("Subject: x\r\n", added, "\r\na\rb\r\n");
    expect(&p, "Subject: x\n\na\rb\n", want);
    free(want);
}

static void test_dot(void **state)
{
    struct inject_params p = defaults();
    char *want = cat("Subject: x\r\n", added, "\r\nbefore\r\n..two dots stay\r\n");
    expect(&p, "Subject: x\n\nbefore\n..two dots stay\n.\nafter\n", want);
    expect(&p, "Subject: x\r\n\r\nbefore\r\n..two dots stay\r\n.\r\nafter\r\n", want);
    free(want);

    /* feeding stops at the "." line: the caller must stop reading */
    struct inject *in = inject_new(&p);
    assert_int_equal(inject_feed(in, "Subject: x\n\nhi\n.", 16), INJECT_MORE);
    assert_int_equal(inject_feed(in, "\nmore\n", 6), INJECT_END);
    assert_int_equal(inject_finish(in), INJECT_OK);
    size_t bl;
    assert_string_equal(inject_body(in, &bl), "hi\r\n");
    inject_free(in);

    /* "." in the header section ends the input too */
    want = cat("Subject: x\r\n", added, "\r\n");
    expect(&p, "Subject: x\n.\nBody: no\n", want);
    free(want);

    /* -i: the dot is content */
    p.dot_ends = false;
    want = cat("Subject: x\r\n", added, "\r\nbefore\r\n.\r\nafter\r\n");
    expect(&p, "Subject: x\n\nbefore\n.\nafter\n", want);
    free(want);

    /* a "." that is only the end of a long line is not the end */
    p.dot_ends = true;
    size_t big = 20000;
    char *input = xmalloc(big + 64);
    int n = snprintf(input, big + 64, "Subject: x\n\n");
    memset(input + n, 'a', big);
    strcpy(input + n + big, ".\nrest\n");
    char *msg;
    assert_int_equal(run(&p, input, 5000, &msg, NULL), INJECT_OK);
    assert_non_null(strstr(msg, "a.\r\nrest\r\n"));
    free(msg);
    free(input);
}

static void test_missing_fields(void **state)
{
    struct inject_params p = defaults();
    /* present: nothing added (names match case-insensitively) */
    const char *full = "from: Me <me@x.example>\nDATE: Tue, 02 Jan 2029 00:00:00 +0000\n"
                       "Message-Id: <m@x>\nSubject: s\n\nbody\n";
    expect(&p, full,
           "from: Me <me@x.example>\r\nDATE: Tue, 02 Jan 2029 00:00:00 +0000\r\n"
           "Message-Id: <m@x>\r\nSubject: s\r\n\r\nbody\r\n");
    /* only what is missing */
    expect(&p, "From: a@b.example\nSubject: s\n\nbody\n",
           "From: a@b.example\r\nSubject: s\r\nDate: Mon, 01 Jan 2029 00:00:00 +0000\r\n"
           "Message-ID: <id1@host.example>\r\n\r\nbody\r\n");
    /* an empty message still gets a header section */
    char *want = cat("", added, "\r\n");
    expect(&p, "", want);
    free(want);
}

static void test_full_name(void **state)
{
    struct inject_params p = defaults();
    const char *tail = "Date: Mon, 01 Jan 2029 00:00:00 +0000\r\n"
                       "Message-ID: <id1@host.example>\r\n\r\n";
    struct {
        const char *name, *from;
    } cases[] = {
        {"Joe Bloggs", "From: Joe Bloggs <joe@host.example>\r\n"},
        {"Bloggs, Joe (ops)", "From: \"Bloggs, Joe (ops)\" <joe@host.example>\r\n"},
        {"say \"hi\"", "From: \"say \\\"hi\\\"\" <joe@host.example>\r\n"},
        /* a -F value cannot add header lines */
        {"Eve\r\nBcc: x@evil.example", "From: \"Eve  Bcc: x@evil.example\" <joe@host.example>\r\n"},
        {"J\xc3\xb6rg", "From: =?UTF-8?B?SsO2cmc=?= <joe@host.example>\r\n"},
        {"", "From: joe@host.example\r\n"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        p.full_name = cases[i].name;
        char *want = cat(cases[i].from, tail, "");
        expect(&p, "", want);
        free(want);
    }
    /* a long non-ASCII name: several encoded words on folded lines, whole characters */
    char name[300] = "";
    for (int i = 0; i < 60; i++)
        strcat(name, "\xc3\xa9");
    p.full_name = name;
    char *msg;
    assert_int_equal(run(&p, "", 100, &msg, NULL), INJECT_OK);
    assert_non_null(strstr(msg, "?=\r\n =?UTF-8?B?"));
    for (char *line = msg; *line;) {
        char *end = strstr(line, "\r\n");
        assert_true(end - line <= 78);
        line = end + 2;
    }
    free(msg);
}

static void test_headerless(void **state)
{
    struct inject_params p = defaults();
    /* the first line is not a field: it is the body, with an empty line before it */
    char *want = cat("", added, "\r\nHello there\r\nSubject: not a header\r\n");
    expect(&p, "Hello there\nSubject: not a header\n", want);
    free(want);
    /* a body that follows headers without an empty line */
    want = cat("Subject: s\r\n", added, "\r\nno blank line\r\n");
    expect(&p, "Subject: s\nno blank line\n", want);
    free(want);
    /* mbox "From " separator dropped; only as the very first line */
    want = cat("Subject: s\r\n", added, "\r\nFrom me\r\n");
    expect(&p, "From joe Mon Jan  1 00:00:00 2029\nSubject: s\n\nFrom me\n", want);
    free(want);
    /* a continuation line with nothing to continue starts the body */
    want = cat("", added, "\r\n  indented\r\n");
    expect(&p, "  indented\n", want);
    free(want);
}

static void rcpts_are(struct inject *in, const char *const *want, size_t n)
{
    if (inject_nrcpts(in) != n) {
        for (size_t i = 0; i < inject_nrcpts(in); i++)
            print_message("got %s\n", inject_rcpt(in, i));
        fail_msg("%zu recipients, want %zu", inject_nrcpts(in), n);
    }
    for (size_t i = 0; i < n; i++)
        assert_string_equal(inject_rcpt(in, i), want[i]);
}

static void test_extract(void **state)
{
    struct inject_params p = defaults();
    p.extract_rcpts = true;
    const char *input =
        "To: Alice <alice@example.test>, \"Smith, Bob\" <bob@example.test>,\n"
        "  carol@example.test (Carol C.), root\n"
        "Cc: team: dave@example.test, Eve <eve@example.test>;, frank@example.test\n"
        "CC: undisclosed-recipients:;\n"
        "Bcc: hidden@example.test,\n"
        "\t\"quoted local\"@example.test\n"
        "Subject: to: not@recipient.test\n"
        "X-To: nobody@example.test\n"
        "\n"
        "To: body@example.test\n";
    static const char *const want[] = {
        "alice@example.test", "bob@example.test",  "carol@example.test",
        "root@host.example",  "dave@example.test", "eve@example.test",
        "frank@example.test", "hidden@example.test", "\"quoted local\"@example.test",
    };
    for (size_t chunk = 1; chunk < 100; chunk += 13) {
        struct inject *in;
        char *msg;
        assert_int_equal(run(&p, input, chunk, &msg, &in), INJECT_OK);
        rcpts_are(in, want, ARRAY_LEN(want));
        /* Bcc: is gone with its continuation line; the rest is intact */
        assert_null(strstr(msg, "Bcc"));
        assert_null(strstr(msg, "hidden"));
        assert_null(strstr(msg, "quoted local"));
        assert_non_null(strstr(msg, "To: Alice <alice@example.test>, \"Smith, Bob\" "
                                    "<bob@example.test>,\r\n  carol@example.test (Carol C.), "
                                    "root\r\nCc: team:"));
        assert_non_null(strstr(msg, "\r\n\r\nTo: body@example.test\r\n"));
        free(msg);
        inject_free(in);
    }

    /* without -t, nothing is extracted, but Bcc: is still removed */
    p.extract_rcpts = false;
    struct inject *in;
    char *msg;
    assert_int_equal(run(&p, input, 1000, &msg, &in), INJECT_OK);
    assert_int_equal(inject_nrcpts(in), 0);
    assert_null(strstr(msg, "hidden"));
    free(msg);
    inject_free(in);
}

static void test_resent_and_dups(void **state)
{
    struct inject_params p = defaults();
    p.extract_rcpts = true;
    /* Resent-* present: only they count */
    const char *input = "To: old@example.test\nResent-To: new@example.test\n"
                        "Resent-Bcc: secret@example.test\nBcc: oldbcc@example.test\n\nx\n";
    static const char *const want[] = {"new@example.test", "secret@example.test"};
    struct inject *in;
    char *msg;
    assert_int_equal(run(&p, input, 1000, &msg, &in), INJECT_OK);
    rcpts_are(in, want, 2);
    assert_null(strstr(msg, "secret"));
    assert_null(strstr(msg, "oldbcc"));
    assert_non_null(strstr(msg, "To: old@example.test\r\n"));
    free(msg);
    inject_free(in);

    /* duplicates (any case) once */
    input = "To: a@example.test, A@Example.Test\nCc: <a@example.test>\n\nx\n";
    static const char *const want2[] = {"a@example.test"};
    assert_int_equal(run(&p, input, 1000, NULL, &in), INJECT_OK);
    rcpts_are(in, want2, 1);
    inject_free(in);
}

static void test_bad_addresses(void **state)
{
    struct inject_params p = defaults();
    p.extract_rcpts = true;
    static const char *const bad[] = {
        "To: Bob bob@example.test\n\n",          /* a name without <> */
        "To: <bob@example.test\n\n",             /* unbalanced < */
        "To: \"Bob <bob@example.test>\n\n",      /* unbalanced quote */
        "To: (comment bob@example.test\n\n",     /* unbalanced ( */
        "To: bob@exa mple.test\n\n",             /* space in the domain */
        "To: a@b@example.test\n\n",              /* two @ */
        "To: <a@x> <b@y>\n\n",                   /* two angle addresses */
        "To: x;\n\n",                            /* ; outside a group */
        "To: g1: g2: a@x;;\n\n",                 /* nested group */
        "To: <>\n\n",                            /* null address as recipient */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct inject *in;
        enum inject_status st = run(&p, bad[i], 1000, NULL, &in);
        if (st != INJECT_BAD_ADDRESS)
            fail_msg("status %d for %s", st, bad[i]);
        assert_true(strncmp(inject_error(in), "To: header: ", 12) == 0);
        inject_free(in);
    }
    /* obsolete but valid forms */
    static const char *const ok[] = {
        "To: bob @ example.test\n\n",
        "To: <@relay.example:bob@example.test>\n\n",
        "To: bob@example.test,,\n\n",
        "To: Bob (the builder) <bob@example.test> (work)\n\n",
    };
    for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
        struct inject *in;
        enum inject_status st = run(&p, ok[i], 1000, NULL, &in);
        if (st != INJECT_OK)
            fail_msg("status %d for %s: %s", st, ok[i], inject_error(in));
        assert_int_equal(inject_nrcpts(in), 1);
        assert_string_equal(inject_rcpt(in, 0), "bob@example.test");
        inject_free(in);
    }
}

static void test_bounds(void **state)
{
    struct inject_params p = defaults();
    /* a header line of 998 octets is fine; 999 is not */
    char *line = xmalloc(1200);
    memset(line, 'h', 1200);
    memcpy(line, "X-Long: ", 8);
    line[998] = '\0';
    char *input = xasprintf("%s\n\nbody\n", line);
    assert_int_equal(run(&p, input, 100, NULL, NULL), INJECT_OK);
    free(input);
    line[998] = 'h';
    line[999] = '\0';
    input = xasprintf("%s\n\nbody\n", line);
    assert_int_equal(run(&p, input, 100, NULL, NULL), INJECT_BAD_HEADER);
    free(input);
    /* also as a continuation line, and one that never ends */
    line[999] = 'h';
    line[1199] = '\0';
    input = xasprintf("Subject: a\n %s\n\n", line);
    assert_int_equal(run(&p, input, 100, NULL, NULL), INJECT_BAD_HEADER);
    free(input);
    free(line);
    struct inject *in = inject_new(&p);
    char junk[4096];
    memset(junk, 'j', sizeof junk);
    memcpy(junk, "X-Junk: ", 8);
    enum inject_status st = INJECT_MORE;
    for (int i = 0; i < 10 && st == INJECT_MORE; i++)
        st = inject_feed(in, junk, sizeof junk);
    assert_int_equal(st, INJECT_BAD_HEADER);
    inject_free(in);

    /* long body lines pass (in pieces) intact */
    size_t big = 100000;
    char *body = xmalloc(big + 1);
    memset(body, 'b', big);
    body[big] = '\0';
    input = xasprintf("Subject: s\n\n%s\nend\n", body);
    char *msg;
    assert_int_equal(run(&p, input, 777, &msg, NULL), INJECT_OK);
    char *want = xasprintf("\r\n\r\n%s\r\nend\r\n", body);
    assert_non_null(strstr(msg, want));
    free(want);
    free(msg);
    free(input);
    free(body);

    /* size: stops while reading, long before the end of an endless input */
    p.max_size = 10000;
    in = inject_new(&p);
    char chunk[1000];
    memset(chunk, 'x', sizeof chunk);
    chunk[999] = '\n';
    st = inject_feed(in, "Subject: s\n\n", 12);
    int fed = 0;
    while (st == INJECT_MORE && fed < 1000) {
        st = inject_feed(in, chunk, sizeof chunk);
        fed++;
    }
    assert_int_equal(st, INJECT_TOO_BIG);
    assert_true(fed <= 11);
    inject_free(in);
    /* the added fields count too */
    p.max_size = 100;
    assert_int_equal(run(&p, "Subject: s\n\nshort\n", 1000, NULL, NULL), INJECT_TOO_BIG);

    /* recipients */
    p = defaults();
    p.extract_rcpts = true;
    p.max_rcpts = 3;
    assert_int_equal(run(&p, "To: a@x.test, b@x.test, c@x.test\n\n", 1000, NULL, NULL),
                     INJECT_OK);
    assert_int_equal(run(&p, "To: a@x.test, b@x.test, c@x.test, d@x.test\n\n", 1000, NULL,
                         NULL),
                     INJECT_TOO_MANY_RCPTS);
}

static void collect(void *arg, const char *addr)
{
    char *out = arg;
    strcat(out, addr);
    strcat(out, "|");
}

static void test_parse_addresses(void **state)
{
    char out[1024] = "", err[256];
    const char *list = "a@x.test, Bob <b@y.test>, root, \"c d\"@z.test, grp: e@x.test;";
    assert_int_equal(inject_parse_addresses(list, strlen(list), "h.test", collect, out, err,
                                            sizeof err),
                     0);
    assert_string_equal(out, "a@x.test|b@y.test|root@h.test|\"c d\"@z.test|e@x.test|");
    out[0] = '\0';
    assert_int_equal(inject_parse_addresses("a b", 3, "h.test", collect, out, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "\"ab\""));

    char a[ADDR_TEXT_MAX + 1];
    assert_null(inject_address("<x@y.test>", "h.test", a, sizeof a));
    assert_string_equal(a, "x@y.test");
    assert_null(inject_address(" mailer ", "h.test", a, sizeof a));
    assert_string_equal(a, "mailer@h.test");
    assert_non_null(inject_address("", "h.test", a, sizeof a));
    assert_non_null(inject_address("x@", "h.test", a, sizeof a));
    assert_non_null(inject_address("root", NULL, a, sizeof a));
    char longlocal[80];
    memset(longlocal, 'l', 70);
    longlocal[70] = '\0';
    assert_non_null(inject_address(longlocal, "h.test", a, sizeof a));
}

static void test_date(void **state)
{
    char d[INJECT_DATE_MAX];
    setenv("TZ", "UTC0", 1);
    tzset();
    inject_format_date(1861920000, d, sizeof d); /* 2029-01-01 00:00:00 UTC */
    assert_string_equal(d, "Mon, 01 Jan 2029 00:00:00 +0000");
    setenv("TZ", "IST-5:30", 1);
    tzset();
    inject_format_date(1861920000, d, sizeof d);
    assert_string_equal(d, "Mon, 01 Jan 2029 05:30:00 +0530");
    setenv("TZ", "EST5", 1);
    tzset();
    inject_format_date(1861920000, d, sizeof d);
    assert_string_equal(d, "Sun, 31 Dec 2028 19:00:00 -0500");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crlf),          cmocka_unit_test(test_dot),
        cmocka_unit_test(test_missing_fields), cmocka_unit_test(test_full_name),
        cmocka_unit_test(test_headerless),    cmocka_unit_test(test_extract),
        cmocka_unit_test(test_resent_and_dups), cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_bounds),        cmocka_unit_test(test_parse_addresses),
        cmocka_unit_test(test_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
