/*
 * Unit tests of the configuration loader (src/conf/conf.c) and the users/aliases tables:
 * the contract configuration loads as written; every kind of mistake is an error naming
 * FILE:LINE and the key; defaults and limits; relative paths; table file syntax.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf/conf.h"
#include "table/aliases.h"
#include "table/users.h"

static char dir[256];

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/tern-conf-XXXXXX");
    assert_non_null(mkdtemp(dir));
    write_file("users", "alice:$6$x$y\nbob\n# a comment\n\ncarol # trailing comment\n");
    write_file("aliases", "team: alice, bob\n  carol\nall: team\n");
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static const char contract[] = "hostname = mx.example.test\n"
                               "spool = spool\n"
                               "\n"
                               "[listen mx]\n"
                               "address = 127.0.0.1:2525\n"
                               "role = mx\n"
                               "\n"
                               "[listen submission]\n"
                               "address = 127.0.0.1:5870\n"
                               "role = submission\n"
                               "\n"
                               "[domain example.test]\n"
                               "mailboxes = mail/%d/%u\n"
                               "users = users\n"
                               "aliases = aliases\n";

static struct conf *load(const char *text, char *err, size_t errlen)
{
    write_file("t.conf", text);
    char path[512];
    snprintf(path, sizeof path, "%s/t.conf", dir);
    return conf_load(path, err, errlen);
}

static void test_contract_config_loads(void **state)
{
    char err[1024] = "";
    struct conf *c = load(contract, err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    assert_string_equal(c->hostname, "mx.example.test");
    char want[1200];
    snprintf(want, sizeof want, "%s/spool", dir);
    char real[600];
    assert_non_null(realpath(dir, real));
    snprintf(want, sizeof want, "%s/spool", real);
    assert_string_equal(c->spool, want); /* relative to the file's folder */
    assert_int_equal(c->nlistens, 2);
    assert_string_equal(c->listens[0].name, "mx");
    assert_int_equal(c->listens[0].role, ROLE_MX);
    assert_string_equal(c->listens[1].address, "127.0.0.1:5870");
    assert_int_equal(c->listens[1].role, ROLE_SUBMISSION);
    assert_int_equal(c->ndomains, 1);
    const struct domain_conf *d = conf_find_domain(c, "EXAMPLE.test");
    assert_non_null(d);
    snprintf(want, sizeof want, "%s/mail/%%d/%%u", real);
    assert_string_equal(d->mailboxes, want);
    snprintf(want, sizeof want, "%s/mail", real);
    assert_string_equal(d->mail_base, want);
    assert_string_equal(d->mail_rel, "%d/%u");
    assert_true(users_exists(d->users, "alice"));
    assert_true(users_exists(d->users, "ALICE"));
    assert_true(users_exists(d->users, "carol"));
    assert_false(users_exists(d->users, "dave"));
    assert_string_equal(users_password_hash(d->users, "alice"), "$6$x$y");
    assert_null(users_password_hash(d->users, "bob"));
    const char *const *t = aliases_lookup(d->aliases, "team");
    assert_non_null(t);
    assert_string_equal(t[0], "alice");
    assert_string_equal(t[1], "bob");
    assert_string_equal(t[2], "carol"); /* continuation line */
    assert_null(t[3]);
    assert_null(conf_find_domain(c, "other.test"));
    /* defaults */
    assert_int_equal(c->max_recipients, 1000);
    assert_int_equal(c->max_errors, 10);
    assert_int_equal(c->max_received_headers, 100);
    assert_int_equal(c->command_timeout_ms, 300000);
    assert_int_equal(c->data_timeout_ms, 600000);
    assert_int_equal(c->queue_lifetime_ms, 5ull * 86400000);
    assert_int_equal(c->delay_warning_ms, 4ull * 3600000);
    assert_int_equal(c->mx_port, 25);
    assert_string_equal(c->recipient_delimiter, "+");
    assert_string_equal(c->user, "tern");
    assert_string_equal(c->postmaster, "postmaster@example.test");
    assert_int_equal(c->trusted_networks.n, 0);
    assert_true(c->nretry >= 1);
    assert_int_equal(c->retry_ms[0], 60000);
    conf_unref(c);
}

/* Each broken configuration must fail with FILE:LINE and a reason that names the key. */
static void test_errors_name_file_line_and_key(void **state)
{
    static const struct {
        const char *text;
        const char *line;   /* ":N:" expected in the message */
        const char *needle; /* and this */
    } cases[] = {
        {"hostname = a.test\nbogus_key = 1\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", ":2:",
         "unknown key \"bogus_key\""},
        {"[listen x]\naddress = 127.0.0.1:1\nrole = relay\n", ":3:", "\"role\""},
        {"[listen x]\naddress = nowhere\nrole = mx\n", ":2:", "\"address\""},
        {"[listen x]\nrole = mx\n", ":1:", "needs the key \"address\""},
        {"max_recipients = 50\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", ":1:",
         "out of range"},
        {"max_received_headers = 99\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", ":1:",
         "\"max_received_headers\""},
        {"command_timeout = soon\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", ":1:",
         "not a duration"},
        {"message_size_limit = 10Q\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", ":1:",
         "not a size"},
        {"trusted_networks = 10.0.0.0/33\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", ":1:",
         "\"trusted_networks\""},
        {"[listen x]\naddress=127.0.0.1:1\nrole=mx\nrole=mx\n", ":4:", "already set at line 3"},
        {"[listen x]\naddress=127.0.0.1:1\nrole=mx\n[listen x]\naddress=127.0.0.1:2\nrole=mx\n",
         ":4:", "already defined"},
        {"[frobnicate y]\n", ":1:", "unknown section"},
        {"[listen x]\naddress=127.0.0.1:1\nrole=mx\n[domain a.test]\nusers = users\n", ":4:",
         "needs the key \"mailboxes\""},
        {"[listen x]\naddress=127.0.0.1:1\nrole=mx\n[domain a.test]\nmailboxes = mail/x\n",
         ":5:", "%u"},
        {"[listen x]\naddress=127.0.0.1:1\nrole=mx\n[domain a.test]\nmailboxes = m/%u\n"
         "users = missing-file\n",
         "missing-file", "cannot read users file"},
        {"hostname = bad..host\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", ":1:",
         "\"hostname\""},
        {"this is not ini\n", ":1:", "syntax error"},
        {"[listen x]\naddress=127.0.0.1:1\nrole=mx\n[listen y]\naddress=127.0.0.1:1\nrole=mx\n",
         "[listen y]", "also used"},
        {"hostname = a.test\n", "t.conf: ", "no [listen"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[1024] = "";
        struct conf *c = load(cases[i].text, err, sizeof err);
        if (c != NULL)
            fail_msg("case %zu loaded but should fail", i);
        if (strstr(err, cases[i].line) == NULL || strstr(err, cases[i].needle) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\" or \"%s\"", i, err, cases[i].line,
                     cases[i].needle);
        if (strstr(err, "t.conf") == NULL && strstr(err, "missing-file") == NULL)
            fail_msg("case %zu: \"%s\" does not name the file", i, err);
    }
}

static void test_missing_file(void **state)
{
    char err[1024] = "";
    assert_null(conf_load("/nonexistent/tern.conf", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/tern.conf"));
    assert_non_null(strstr(err, "No such file"));
}

static void test_long_line_and_inline_comment(void **state)
{
    char text[1024];
    char longval[300];
    memset(longval, 'a', 250);
    longval[250] = '\0';
    snprintf(text, sizeof text, "hostname = %s.test\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n",
             longval);
    char err[1024] = "";
    assert_null(load(text, err, sizeof err));
    assert_non_null(strstr(err, ":1: line longer than"));
    struct conf *c = load("hostname = a.test   # our name\n[listen x]\naddress=127.0.0.1:1 "
                          "; port\nrole=mx\n",
                          err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    assert_string_equal(c->hostname, "a.test");
    assert_string_equal(c->listens[0].address, "127.0.0.1:1");
    conf_unref(c);
}

static void test_values_and_units(void **state)
{
    char err[1024] = "";
    struct conf *c = load("message_size_limit = 10M\ncommand_timeout = 90s\n"
                          "queue_lifetime = 2d\nretry_schedule = 10s, 1m, 1h\n"
                          "trusted_networks = 127.0.0.2/32, ::1/128\nreverse_dns = no\n"
                          "relayhost = [192.0.2.1]:587\ndns = 127.0.0.1:5353\nmx_port = 2526\n"
                          "[listen x]\naddress=[::1]:2525\nrole=submissions\ntls_cert=c.pem\n"
                          "tls_key=k.pem\n"
                          "[transport example.org]\nnexthop = 127.0.0.5:25\ntls = encrypt\n",
                          err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    assert_int_equal(c->message_size_limit, 10 * 1024 * 1024);
    assert_int_equal(c->command_timeout_ms, 90000);
    assert_int_equal(c->queue_lifetime_ms, 2 * 86400000ull);
    assert_int_equal(c->nretry, 3);
    assert_int_equal(c->retry_ms[2], 3600000);
    assert_int_equal(c->trusted_networks.n, 2);
    assert_false(c->reverse_dns);
    assert_string_equal(c->relayhost, "[192.0.2.1]:587");
    assert_string_equal(c->dns, "127.0.0.1:5353");
    assert_int_equal(c->mx_port, 2526);
    assert_int_equal(c->listens[0].role, ROLE_SUBMISSIONS);
    const struct transport_conf *t = conf_find_transport(c, "EXAMPLE.ORG");
    assert_non_null(t);
    assert_int_equal(t->tls, TLS_POLICY_ENCRYPT);
    conf_unref(c);
    /* a shrinking retry schedule is refused */
    assert_null(load("retry_schedule = 1h, 1m\n[listen x]\naddress=127.0.0.1:1\nrole=mx\n", err,
                     sizeof err));
    assert_non_null(strstr(err, "retry_schedule"));
    /* submissions needs a certificate */
    assert_null(load("[listen x]\naddress=127.0.0.1:1\nrole=submissions\n", err, sizeof err));
    assert_non_null(strstr(err, "needs tls_cert"));
}

static void test_table_errors(void **state)
{
    char err[512] = "";
    char path[512];
    snprintf(path, sizeof path, "%s/bad-users", dir);
    write_file("bad-users", "alice\nbad user\n");
    assert_null(users_load(path, err, sizeof err));
    assert_non_null(strstr(err, "bad-users:2:"));
    write_file("bad-users", "alice\nALICE\n");
    assert_null(users_load(path, err, sizeof err));
    assert_non_null(strstr(err, "already defined"));
    write_file("bad-users", "../etc\n");
    assert_null(users_load(path, err, sizeof err));
    write_file("bad-users", "a/b\n");
    assert_null(users_load(path, err, sizeof err));
    write_file("bad-users", "alice:not a hash\n");
    assert_null(users_load(path, err, sizeof err));
    assert_non_null(strstr(err, ":1:"));

    snprintf(path, sizeof path, "%s/bad-aliases", dir);
    write_file("bad-aliases", "team alice\n");
    assert_null(aliases_load(path, err, sizeof err));
    assert_non_null(strstr(err, "bad-aliases:1:"));
    write_file("bad-aliases", "team: |/bin/sh\n");
    assert_null(aliases_load(path, err, sizeof err));
    write_file("bad-aliases", "  alice\n");
    assert_null(aliases_load(path, err, sizeof err));
    assert_non_null(strstr(err, "continuation"));
    write_file("bad-aliases", "team:\n");
    assert_null(aliases_load(path, err, sizeof err));
    write_file("bad-aliases", "x: a\nX: b\n");
    assert_null(aliases_load(path, err, sizeof err));
    write_file("bad-aliases", "ok: a@remote.test, b\n");
    struct aliases *a = aliases_load(path, err, sizeof err);
    assert_non_null(a);
    assert_string_equal(aliases_lookup(a, "OK")[0], "a@remote.test");
    aliases_free(a);
}

/* internationalized domain names: kept and matched by their A-labels */
static void test_idn_domains(void **state)
{
    char err[512] = "";
    char text[2048];
    snprintf(text, sizeof text,
             "%s\n[domain B\xc3\xbc" "cher.example]\nmailboxes = mail/%%d/%%u\n"
             "[transport m\xc3\xbcnchen.example]\nnexthop = [192.0.2.9]:25\n",
             contract);
    struct conf *c = load(text, err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    const struct domain_conf *d = conf_find_domain(c, "xn--bcher-kva.example");
    assert_non_null(d);
    assert_string_equal(d->name, "xn--bcher-kva.example");
    assert_ptr_equal(conf_find_domain(c, "B\xc3\x9c" "cher.Example"), d); /* Ü folds to ü */
    assert_ptr_equal(conf_find_domain(c, "bu\xcc\x88" "cher.example"), d); /* decomposed */
    assert_null(conf_find_domain(c, "\xe2\x98\x83.example"));
    assert_null(conf_find_domain(c, "b\xff" "cher.example"));
    const struct transport_conf *t = conf_find_transport(c, "m\xc3\xbcnchen.example");
    assert_non_null(t);
    assert_string_equal(t->domain, "xn--mnchen-3ya.example");
    conf_unref(c);
    /* the same domain twice, once in each spelling */
    snprintf(text, sizeof text,
             "%s\n[domain b\xc3\xbc" "cher.example]\nmailboxes = mail/%%d/%%u\n"
             "[domain xn--bcher-kva.example]\nmailboxes = mail/%%d/%%u\n",
             contract);
    assert_null(load(text, err, sizeof err));
    assert_non_null(strstr(err, "already defined"));
    /* a name IDNA2008 refuses */
    snprintf(text, sizeof text, "%s\n[domain \xe2\x98\x83.example]\nmailboxes = m/%%u\n",
             contract);
    assert_null(load(text, err, sizeof err));
    assert_non_null(strstr(err, "IDNA"));
}

/* relayhost_password_file: read by ternd, never by the tools local users run */
static void test_relayhost_password_file(void **state)
{
    char err[512] = "";
    char text[2048];
    const char *head = "relayhost = [192.0.2.1]:587\nrelayhost_user = relay\n";
    write_file("relay-pass", "s3cret pass\n");
    snprintf(text, sizeof text, "%srelayhost_password_file = relay-pass\n%s", head, contract);
    struct conf *c = load(text, err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    assert_string_equal(c->relayhost_password, "s3cret pass");
    conf_unref(c);

    /* tern-sendmail does not read it, so it need not be readable by local users */
    write_file("t.conf", text);
    char path[512];
    snprintf(path, sizeof path, "%s/t.conf", dir);
    snprintf(err, sizeof err, "%s/relay-pass", dir);
    assert_int_equal(unlink(err), 0);
    c = conf_load_opts(path, CONF_SKIP_TABLES, err, sizeof err);
    assert_non_null(c);
    assert_null(c->relayhost_password);
    conf_unref(c);
    assert_null(load(text, err, sizeof err));
    assert_non_null(strstr(err, "relayhost_password_file"));
    assert_non_null(strstr(err, "relay-pass: No such file"));

    struct {
        const char *content; /* NULL: a directory */
        const char *why;
    } bad[] = {
        {"", "empty"},
        {"\n", "empty"},
        {"one\ntwo\n", "more than one line"},
        {NULL, "not a regular file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "pass%zu", i);
        if (bad[i].content) {
            write_file(name, bad[i].content);
        } else {
            snprintf(path, sizeof path, "%s/%s", dir, name);
            assert_int_equal(mkdir(path, 0700), 0);
        }
        snprintf(text, sizeof text, "%srelayhost_password_file = %s\n%s", head, name, contract);
        assert_null(load(text, err, sizeof err));
        if (strstr(err, bad[i].why) == NULL)
            fail_msg("%s: \"%s\" not in: %s", name, bad[i].why, err);
    }
    char big[RELAYHOST_PASSWORD_MAX + 2];
    memset(big, 'p', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    write_file("big", big);
    snprintf(text, sizeof text, "%srelayhost_password_file = big\n%s", head, contract);
    assert_null(load(text, err, sizeof err));
    assert_non_null(strstr(err, "longer than 1024"));
    big[RELAYHOST_PASSWORD_MAX] = '\n'; /* exactly the limit, then a newline: fine */
    write_file("big", big);
    c = load(text, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(strlen(c->relayhost_password), RELAYHOST_PASSWORD_MAX);
    conf_unref(c);

    /* one of the two, and never without the user */
    snprintf(text, sizeof text,
             "%srelayhost_password = x\nrelayhost_password_file = relay-pass\n%s", head,
             contract);
    assert_null(load(text, err, sizeof err));
    assert_non_null(strstr(err, "set one, not both"));
    write_file("relay-pass", "s3cret\n");
    snprintf(text, sizeof text, "relayhost_password_file = relay-pass\n%s", contract);
    assert_null(load(text, err, sizeof err));
    assert_non_null(strstr(err, "go together"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_contract_config_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_name_file_line_and_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line_and_inline_comment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_and_units, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relayhost_password_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idn_domains, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
