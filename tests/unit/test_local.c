/*
 * test_local: recipient resolution (table/local): users, recipient delimiter, aliases
 * (nesting, loops, self-reference, duplicates, other domains, remote targets), catch-all,
 * postmaster, limits, final-mode resolution and mailbox path safety. The configuration is
 * loaded with conf_load() from files written into a temporary folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/mem.h"
#include "table/local.h"

static char tmpdir[64];

static void write_file(const char *name, const char *content)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static struct conf *load(const char *name, const char *text)
{
    write_file(name, text);
    char path[256], err[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    struct conf *c = conf_load(path, err, sizeof err);
    if (c == NULL)
        fail_msg("conf_load: %s", err);
    return c;
}

static const char *const users1 = "alice\nbob\nbob+x\ncarol\ndave\n";

static char *aliases1(void)
{
    /* nesting three deep, loops, self-reference, duplicates, other domains, a chain longer
     * than LOCAL_DEPTH_MAX and two lists that together pass LOCAL_EXPANSION_MAX */
    size_t cap = 200000, n = 0;
    char *s = xmalloc(cap);
    n += (size_t)snprintf(s + n, cap - n,
                          "a1: a2\n"
                          "a2: a3\n"
                          "a3: alice, Remote.User@Far.Example\n"
                          "loopa: loopb\n"
                          "loopb: loopa\n"
                          "bob: bob, carol\n"
                          "team: alice, Alice, a1, ALICE@example.test\n"
                          "cross: alice@other.test, x@other.test\n"
                          "remotes: Remote.User@Far.Example, Remote.User@far.example,\n"
                          "  remote.user@far.example\n"
                          "diamond: d1, d2\n"
                          "d1: d3\n"
                          "d2: d3\n"
                          "d3: dave\n"
                          "ghostly: nobody1, nobody2\n"
                          "mixed: alice, nobody\n"
                          "selfonly: selfonly\n"
                          "tagged: alice+lists, carol\n"
                          "loopy: loopx@other.test\n"
                          "bigall: big1, big2\n");
    for (int i = 1; i <= 25; i++)
        n += (size_t)snprintf(s + n, cap - n, "chain%d: chain%d\n", i, i + 1);
    n += (size_t)snprintf(s + n, cap - n, "chain26: alice\n");
    n += (size_t)snprintf(s + n, cap - n, "short1: short2\nshort2: short3\nshort3: alice\n");
    for (int b = 1; b <= 2; b++) {
        n += (size_t)snprintf(s + n, cap - n, "big%d: r%d-0@far.example\n", b, b);
        for (int i = 1; i < 600; i++)
            n += (size_t)snprintf(s + n, cap - n, "  , r%d-%d@far.example\n", b, i);
    }
    return s;
}

static int setup(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tern-test-local-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    write_file("users1", users1);
    char *a = aliases1();
    write_file("aliases1", a);
    free(a);
    write_file("users2", "alice\ncarol\nzed\n");
    write_file("aliases2", "x: zed, bob@example.test\nloopx: loopy@example.test\n");
    write_file("users3", "alice\n");
    char conf[4096];
    snprintf(conf, sizeof conf,
             "hostname = mx.example.test\n"
             "spool = %s/spool\n"
             "[listen mx]\n"
             "address = 127.0.0.1:2525\n"
             "role = mx\n"
             "[domain example.test]\n"
             "mailboxes = %s/mail/%%d/%%u\n"
             "users = users1\n"
             "aliases = aliases1\n"
             "[domain Other.Test]\n"
             "mailboxes = %s/mail/%%d/%%u/Maildir\n"
             "users = users2\n"
             "aliases = aliases2\n"
             "postmaster = carol\n"
             "[domain catch.test]\n"
             "mailboxes = %s/mail/%%d/%%u\n"
             "users = users3\n"
             "catchall = alice\n"
             "[domain badcatch.test]\n"
             "mailboxes = %s/mail/%%d/%%u\n"
             "catchall = ghost\n"
             "[domain pmbad.test]\n"
             "mailboxes = %s/mail/%%d/%%u\n"
             "postmaster = nobody\n"
             "[domain pmloop1.test]\n"
             "mailboxes = %s/mail/%%d/%%u\n"
             "postmaster = postmaster@pmloop2.test\n"
             "[domain pmloop2.test]\n"
             "mailboxes = %s/mail/%%d/%%u\n"
             "postmaster = postmaster@pmloop1.test\n",
             tmpdir, tmpdir, tmpdir, tmpdir, tmpdir, tmpdir, tmpdir, tmpdir);
    *state = load("main.conf", conf);
    return 0;
}

static int teardown(void **state)
{
    conf_unref(*state);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

/* ---- helpers ---- */

static void expect_mailbox(const struct conf *c, const char *addr, const char *domain,
                           const char *user)
{
    struct local_result r;
    local_resolve(c, addr, &r);
    if (r.kind != LOCAL_MAILBOX)
        fail_msg("%s: kind %d (%s), expected a mailbox", addr, r.kind, r.error);
    assert_string_equal(r.domain->name, domain);
    assert_string_equal(r.user, user);
    local_result_free(&r);
}

static void expect_kind(const struct conf *c, const char *addr, enum local_kind kind)
{
    struct local_result r;
    local_resolve(c, addr, &r);
    if (r.kind != kind)
        fail_msg("%s: kind %d, expected %d (%s)", addr, r.kind, kind, r.error);
    local_result_free(&r);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* expected: the sorted final addresses, separated by spaces */
static void expect_expand(const struct conf *c, const char *addr, const char *expected)
{
    struct local_result r;
    local_resolve(c, addr, &r);
    if (r.kind != LOCAL_EXPAND)
        fail_msg("%s: kind %d (%s), expected an expansion", addr, r.kind, r.error);
    qsort(r.addrs, r.naddrs, sizeof *r.addrs, cmp_str);
    char got[2048] = "";
    for (size_t i = 0; i < r.naddrs; i++) {
        strcat(got, i ? " " : "");
        strcat(got, r.addrs[i]);
    }
    assert_string_equal(got, expected);
    local_result_free(&r);
}

static const struct domain_conf *dom(const struct conf *c, const char *name)
{
    const struct domain_conf *d = conf_find_domain(c, name);
    assert_non_null(d);
    return d;
}

/* ---- tests ---- */

static void test_users(void **state)
{
    struct conf *c = *state;
    expect_mailbox(c, "alice@example.test", "example.test", "alice");
    expect_mailbox(c, "ALICE@Example.TEST", "example.test", "alice");
    expect_mailbox(c, "\"alice\"@example.test", "example.test", "alice");
    expect_mailbox(c, "zed@other.test", "other.test", "zed");
    assert_int_equal(local_check(c, dom(c, "example.test"), "Carol"), LOCAL_MAILBOX);
}

static void test_unknown(void **state)
{
    struct conf *c = *state;
    expect_kind(c, "nobody@example.test", LOCAL_UNKNOWN);
    expect_kind(c, "alice@not-ours.test", LOCAL_UNKNOWN);
    expect_kind(c, "not-an-address", LOCAL_UNKNOWN);
    assert_int_equal(local_check(c, dom(c, "example.test"), "nobody"), LOCAL_UNKNOWN);
    assert_int_equal(local_check(c, dom(c, "example.test"), ""), LOCAL_UNKNOWN);
    /* a name longer than any table key, and one with odd characters from a quoted string */
    char longname[70];
    memset(longname, 'a', 69);
    longname[69] = '\0';
    assert_int_equal(local_check(c, dom(c, "example.test"), longname), LOCAL_UNKNOWN);
    assert_int_equal(local_check(c, dom(c, "example.test"), "../alice"), LOCAL_UNKNOWN);
    /* aliases whose every target is unknown are refused rather than bounced later */
    expect_kind(c, "ghostly@example.test", LOCAL_UNKNOWN);
    expect_kind(c, "selfonly@example.test", LOCAL_UNKNOWN);
    /* one unknown target among known ones is kept: it fails alone at delivery */
    expect_expand(c, "mixed@example.test", "alice@example.test nobody@example.test");
}

static void test_delimiter(void **state)
{
    struct conf *c = *state;
    expect_mailbox(c, "alice+news@example.test", "example.test", "alice");
    expect_mailbox(c, "Alice+News+More@example.test", "example.test", "alice");
    /* a user literally named with the delimiter wins over the split */
    expect_mailbox(c, "bob+x@example.test", "example.test", "bob+x");
    /* bob+y: bob is an alias (and a user): the alias applies */
    expect_expand(c, "bob+y@example.test", "bob@example.test carol@example.test");
    expect_kind(c, "nobody+tag@example.test", LOCAL_UNKNOWN);
    expect_kind(c, "+alice@example.test", LOCAL_UNKNOWN);
    /* an alias target with a tag resolves to the user */
    expect_expand(c, "tagged@example.test", "alice@example.test carol@example.test");

    /* several delimiter characters; and none */
    char text[1024];
    snprintf(text, sizeof text,
             "hostname = mx.example.test\nspool = %s/spool\nrecipient_delimiter = +-\n"
             "[listen mx]\naddress = 127.0.0.1:2525\nrole = mx\n"
             "[domain example.test]\nmailboxes = %s/mail/%%d/%%u\nusers = users1\n",
             tmpdir, tmpdir);
    struct conf *c2 = load("delim.conf", text);
    expect_mailbox(c2, "alice-news@example.test", "example.test", "alice");
    expect_mailbox(c2, "alice+news@example.test", "example.test", "alice");
    expect_mailbox(c2, "carol-a+b@example.test", "example.test", "carol");
    conf_unref(c2);
    snprintf(text, sizeof text,
             "hostname = mx.example.test\nspool = %s/spool\nrecipient_delimiter =\n"
             "[listen mx]\naddress = 127.0.0.1:2525\nrole = mx\n"
             "[domain example.test]\nmailboxes = %s/mail/%%d/%%u\nusers = users1\n",
             tmpdir, tmpdir);
    struct conf *c3 = load("nodelim.conf", text);
    expect_kind(c3, "alice+news@example.test", LOCAL_UNKNOWN);
    expect_mailbox(c3, "bob+x@example.test", "example.test", "bob+x");
    conf_unref(c3);
}

static void test_aliases_nested(void **state)
{
    struct conf *c = *state;
    expect_expand(c, "a1@example.test", "Remote.User@Far.Example alice@example.test");
    assert_int_equal(local_check(c, dom(c, "example.test"), "A1"), LOCAL_EXPAND);
    /* a diamond is not a loop, and dave appears once */
    expect_expand(c, "diamond@example.test", "dave@example.test");
    expect_expand(c, "short1@example.test", "alice@example.test");
}

static void test_loops(void **state)
{
    struct conf *c = *state;
    struct local_result r;
    local_resolve(c, "loopa@example.test", &r);
    assert_int_equal(r.kind, LOCAL_ERROR);
    assert_non_null(strstr(r.error,
                           "loopa@example.test -> loopb@example.test -> loopa@example.test"));
    local_result_free(&r);
    assert_int_equal(local_check(c, dom(c, "example.test"), "loopb"), LOCAL_ERROR);
    /* a loop through another domain */
    local_resolve(c, "loopy@example.test", &r);
    assert_int_equal(r.kind, LOCAL_ERROR);
    assert_non_null(strstr(r.error, "loopx@other.test"));
    local_result_free(&r);
    /* nesting deeper than LOCAL_DEPTH_MAX */
    local_resolve(c, "chain1@example.test", &r);
    assert_int_equal(r.kind, LOCAL_ERROR);
    assert_non_null(strstr(r.error, "deeper"));
    local_result_free(&r);
}

static void test_self_reference(void **state)
{
    struct conf *c = *state;
    /* bob: bob, carol -> bob's own mailbox plus carol, not a loop */
    expect_expand(c, "bob@example.test", "bob@example.test carol@example.test");
    assert_int_equal(local_check(c, dom(c, "example.test"), "bob"), LOCAL_EXPAND);
    /* the expansion's results are final: bob@ resolves to the mailbox, not the alias */
    struct local_result r;
    local_resolve_final(c, "bob@example.test", &r);
    assert_int_equal(r.kind, LOCAL_MAILBOX);
    assert_string_equal(r.user, "bob");
    local_result_free(&r);
    local_resolve_final(c, "team@example.test", &r); /* an alias, not a user */
    assert_int_equal(r.kind, LOCAL_UNKNOWN);
    local_result_free(&r);
    local_resolve_final(c, "postmaster@pmbad.test", &r);
    assert_int_equal(r.kind, LOCAL_MAILBOX);
    assert_string_equal(r.user, "postmaster");
    local_result_free(&r);
}

static void test_duplicates(void **state)
{
    struct conf *c = *state;
    expect_expand(c, "team@example.test", "Remote.User@Far.Example alice@example.test");
    /* remote local parts keep their case; only the domain is case-insensitive */
    expect_expand(c, "remotes@example.test", "Remote.User@Far.Example remote.user@far.example");
}

static void test_cross_domain(void **state)
{
    struct conf *c = *state;
    /* x@other.test: zed (other.test's user) and bob@example.test (example.test's alias) */
    expect_expand(c, "cross@example.test",
                  "alice@other.test bob@example.test carol@example.test zed@other.test");
}

static void test_limits(void **state)
{
    struct conf *c = *state;
    struct local_result r;
    local_resolve(c, "bigall@example.test", &r);
    assert_int_equal(r.kind, LOCAL_ERROR);
    assert_non_null(strstr(r.error, "more than 1000"));
    local_result_free(&r);
    local_resolve(c, "big1@example.test", &r);
    assert_int_equal(r.kind, LOCAL_EXPAND);
    assert_int_equal(r.naddrs, 600);
    local_result_free(&r);
}

static void test_catchall(void **state)
{
    struct conf *c = *state;
    expect_expand(c, "anything@catch.test", "alice@catch.test");
    expect_mailbox(c, "alice@catch.test", "catch.test", "alice");
    expect_mailbox(c, "alice+x@catch.test", "catch.test", "alice");
    assert_int_equal(local_check(c, dom(c, "catch.test"), "who"), LOCAL_EXPAND);
    /* a catch-all whose target is unknown accepts nothing */
    expect_kind(c, "anything@badcatch.test", LOCAL_UNKNOWN);
    assert_int_equal(local_check(c, dom(c, "badcatch.test"), "x"), LOCAL_UNKNOWN);
}

static void test_postmaster(void **state)
{
    struct conf *c = *state;
    /* nothing configured: the top-level postmaster (postmaster@example.test) is itself */
    expect_mailbox(c, "postmaster@example.test", "example.test", "postmaster");
    expect_mailbox(c, "PostMaster@EXAMPLE.test", "example.test", "postmaster");
    expect_mailbox(c, "postmaster+x@example.test", "example.test", "postmaster");
    expect_mailbox(c, "Postmaster", "example.test", "postmaster");
    expect_mailbox(c, "POSTMASTER", "example.test", "postmaster");
    /* per-domain override */
    expect_expand(c, "postmaster@other.test", "carol@other.test");
    expect_expand(c, "POSTMASTER@other.test", "carol@other.test");
    /* no key, alias or user: the top-level address */
    expect_expand(c, "postmaster@catch.test", "postmaster@example.test");
    /* a key naming nobody, or a loop of keys: still accepted, mailbox postmaster */
    expect_mailbox(c, "postmaster@pmbad.test", "pmbad.test", "postmaster");
    expect_mailbox(c, "postmaster@pmloop1.test", "pmloop1.test", "postmaster");
    assert_int_equal(local_check(c, dom(c, "pmbad.test"), "Postmaster"), LOCAL_MAILBOX);
    assert_int_equal(local_check(c, dom(c, "badcatch.test"), "postmaster"), LOCAL_EXPAND);
}

static void test_mailbox_path(void **state)
{
    struct conf *c = *state;
    char out[256];
    const struct domain_conf *d = dom(c, "example.test");
    assert_true(local_mailbox_path(d, "Alice", out, sizeof out));
    assert_string_equal(out, "example.test/alice");
    assert_true(local_mailbox_path(d, "bob+x", out, sizeof out));
    assert_string_equal(out, "example.test/bob+x");
    assert_true(local_mailbox_path(dom(c, "other.test"), "ZED", out, sizeof out));
    assert_string_equal(out, "other.test/zed/Maildir");
    assert_false(local_mailbox_path(d, "", out, sizeof out));
    assert_false(local_mailbox_path(d, "..", out, sizeof out));
    assert_false(local_mailbox_path(d, "../etc", out, sizeof out));
    assert_false(local_mailbox_path(d, ".hidden", out, sizeof out));
    assert_false(local_mailbox_path(d, "a/b", out, sizeof out));
    assert_false(local_mailbox_path(d, "a\nb", out, sizeof out));
    assert_false(local_mailbox_path(d, "alice", out, 10)); /* does not fit */
    assert_true(local_mailbox_path(d, "alice", out, 19));  /* exactly fits */
    assert_string_equal(out, "example.test/alice");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_users),          cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_delimiter),      cmocka_unit_test(test_aliases_nested),
        cmocka_unit_test(test_loops),          cmocka_unit_test(test_self_reference),
        cmocka_unit_test(test_duplicates),     cmocka_unit_test(test_cross_domain),
        cmocka_unit_test(test_limits),         cmocka_unit_test(test_catchall),
        cmocka_unit_test(test_postmaster),     cmocka_unit_test(test_mailbox_path),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
