/* test_esmtp: unit tests for src/mail/esmtp.c (MAIL/RCPT parameters, xtext). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/mem.h"
#include "mail/esmtp.h"

static const struct esmtp_offer all = {true, true, true, true, true, true, 0};
static const struct esmtp_offer none = {false, false, false, false, false, false, 0};

static bool mail(const char *s, const struct esmtp_offer *o, struct mail_params *mp,
                 struct esmtp_error *err)
{
    return esmtp_parse_mail(s, strlen(s), o, mp, err);
}

static bool rcpt(const char *s, const struct esmtp_offer *o, struct rcpt_params *rp,
                 struct esmtp_error *err)
{
    return esmtp_parse_rcpt(s, strlen(s), o, rp, err);
}

static void mail_fails(const char *s, const struct esmtp_offer *o, int code, const char *enh)
{
    struct mail_params mp;
    struct esmtp_error err;
    if (mail(s, o, &mp, &err))
        fail_msg("MAIL params \"%s\" accepted", s);
    if (err.code != code)
        fail_msg("MAIL params \"%s\": %d %s, expected %d", s, err.code, err.text, code);
    assert_string_equal(err.enh, enh);
    assert_non_null(err.text);
    assert_true(strlen(err.text) > 0);
}

static void rcpt_fails(const char *s, const struct esmtp_offer *o, int code)
{
    struct rcpt_params rp;
    struct esmtp_error err;
    if (rcpt(s, o, &rp, &err))
        fail_msg("RCPT params \"%s\" accepted", s);
    if (err.code != code)
        fail_msg("RCPT params \"%s\": %d %s, expected %d", s, err.code, err.text, code);
    assert_string_equal(err.enh, "5.5.4");
}

static char *repeat(char c, size_t n)
{
    char *s = xmalloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void test_empty(void **state)
{
    (void)state;
    struct mail_params mp;
    struct rcpt_params rp;
    struct esmtp_error err;
    assert_true(mail("", &none, &mp, &err));
    assert_int_equal(err.code, 0);
    assert_int_equal(mp.size, 0);
    assert_int_equal(mp.body, BODY_UNSPEC);
    assert_false(mp.smtputf8);
    assert_int_equal(mp.ret, DSN_RET_UNSPEC);
    assert_string_equal(mp.envid, "");
    assert_string_equal(mp.auth, "");
    assert_true(mail("   ", &none, &mp, &err)); /* trailing spaces are tolerated */
    assert_true(rcpt("", &none, &rp, &err));
    assert_int_equal(rp.notify, 0);
    assert_string_equal(rp.orcpt, "");
}

static void test_syntax(void **state)
{
    (void)state;
    mail_fails("SIZE=10", &all, 501, "5.5.4");     /* no SP after the path */
    mail_fails(" SIZE=", &all, 501, "5.5.4");      /* empty value */
    mail_fails(" =10", &all, 501, "5.5.4");        /* no keyword */
    mail_fails(" -X=1", &all, 501, "5.5.4");       /* keyword starts with a hyphen */
    mail_fails(" X_Y=1", &all, 501, "5.5.4");      /* underscore */
    mail_fails(" SIZE=1=2", &all, 501, "5.5.4");   /* '=' inside a value */
    mail_fails(" SIZE=1\t", &all, 501, "5.5.4");   /* TAB is not SP */
    mail_fails(" BODY=8BIT\x7f", &all, 501, "5.5.4");
    mail_fails(" BODY=8BIT\xc3\xa9", &all, 501, "5.5.4");
    /* NUL inside the given length */
    struct mail_params mp;
    struct esmtp_error err;
    assert_false(esmtp_parse_mail(" SIZE=1\0", 8, &all, &mp, &err));
    assert_int_equal(err.code, 501);
    /* only n bytes are read */
    assert_true(esmtp_parse_mail(" SIZE=12 BODY=JUNK", 8, &all, &mp, &err));
    assert_int_equal(mp.size, 12);
    /* several spaces between parameters */
    assert_true(mail("  SIZE=5    SMTPUTF8  ", &all, &mp, &err));
    assert_int_equal(mp.size, 5);
    assert_true(mp.smtputf8);
    /* keywords are case-insensitive, and so are the enumerated values */
    assert_true(mail(" size=7 Body=8bitmime smtputf8 ret=hdrs", &all, &mp, &err));
    assert_int_equal(mp.size, 7);
    assert_int_equal(mp.body, BODY_8BITMIME);
    assert_int_equal(mp.ret, DSN_RET_HDRS);
}

static void test_unknown_and_not_offered(void **state)
{
    (void)state;
    mail_fails(" FOO=BAR", &all, 555, "5.5.4");
    mail_fails(" X-Y", &all, 555, "5.5.4");
    mail_fails(" NOTIFY=NEVER", &all, 555, "5.5.4"); /* a RCPT parameter on MAIL */
    mail_fails(" SIZE=1", &none, 555, "5.5.4");
    mail_fails(" BODY=7BIT", &none, 555, "5.5.4");
    mail_fails(" SMTPUTF8", &none, 555, "5.5.4");
    mail_fails(" RET=FULL", &none, 555, "5.5.4");
    mail_fails(" ENVID=x", &none, 555, "5.5.4");
    mail_fails(" AUTH=<>", &none, 555, "5.5.4");
    rcpt_fails(" NOTIFY=NEVER", &none, 555);
    rcpt_fails(" ORCPT=rfc822;a@b", &none, 555);
    rcpt_fails(" SIZE=1", &all, 555); /* a MAIL parameter on RCPT */
    /* the first fault wins */
    mail_fails(" FOO SIZE=x", &all, 555, "5.5.4");
    mail_fails(" SIZE=x FOO", &all, 501, "5.5.4");
}

static void test_size(void **state)
{
    (void)state;
    struct mail_params mp;
    struct esmtp_error err;
    struct esmtp_offer o = all;
    assert_true(mail(" SIZE=0", &o, &mp, &err));
    assert_int_equal(mp.size, 0);
    assert_true(mail(" SIZE=12345678901234567890", &o, &mp, &err)); /* 20 digits, no limit */
    assert_true(mp.size == 12345678901234567890u);
    assert_true(mail(" SIZE=99999999999999999999", &o, &mp, &err)); /* above 2^64-1 */
    assert_true(mp.size == UINT64_MAX);                             /* saturated */
    assert_true(mail(" SIZE=18446744073709551616", &o, &mp, &err));
    assert_true(mp.size == UINT64_MAX);
    assert_true(mail(" SIZE=18446744073709551615", &o, &mp, &err));
    assert_true(mp.size == UINT64_MAX);
    assert_true(mail(" SIZE=18446744073709551614", &o, &mp, &err));
    assert_true(mp.size == UINT64_MAX - 1);
    assert_true(mail(" SIZE=00000000000000000042", &o, &mp, &err));
    assert_int_equal(mp.size, 42);
    mail_fails(" SIZE=123456789012345678901", &o, 501, "5.5.4"); /* 21 digits */
    mail_fails(" SIZE=-1", &o, 501, "5.5.4");
    mail_fails(" SIZE=1k", &o, 501, "5.5.4");
    mail_fails(" SIZE", &o, 501, "5.5.4");
    mail_fails(" SIZE=1 SIZE=1", &o, 501, "5.5.4");

    o.size_limit = 1000;
    assert_true(mail(" SIZE=999", &o, &mp, &err));
    assert_true(mail(" SIZE=1000", &o, &mp, &err));
    assert_int_equal(mp.size, 1000);
    mail_fails(" SIZE=1001", &o, 552, "5.3.4");
    assert_false(mail(" SIZE=99999999999999999999", &o, &mp, &err));
    assert_int_equal(err.code, 552);
    assert_string_equal(err.text, "Message size exceeds fixed maximum message size");
}

static void test_body(void **state)
{
    (void)state;
    struct mail_params mp;
    struct esmtp_error err;
    struct esmtp_offer o = none;
    o.eightbitmime = true;
    assert_true(mail(" BODY=7BIT", &o, &mp, &err));
    assert_int_equal(mp.body, BODY_7BIT);
    assert_true(mail(" BODY=8BITMIME", &o, &mp, &err));
    assert_int_equal(mp.body, BODY_8BITMIME);
    mail_fails(" BODY=BINARYMIME", &o, 555, "5.5.4");
    mail_fails(" BODY=8BIT", &o, 501, "5.5.4");
    mail_fails(" BODY", &o, 501, "5.5.4");
    mail_fails(" BODY=7BIT BODY=7BIT", &o, 501, "5.5.4");
    o.eightbitmime = false;
    o.binarymime = true;
    assert_true(mail(" BODY=BINARYMIME", &o, &mp, &err));
    assert_int_equal(mp.body, BODY_BINARYMIME);
    assert_true(mail(" BODY=7bit", &o, &mp, &err));
    mail_fails(" BODY=8BITMIME", &o, 555, "5.5.4");
}

static void test_smtputf8_ret(void **state)
{
    (void)state;
    struct mail_params mp;
    struct esmtp_error err;
    assert_true(mail(" SMTPUTF8", &all, &mp, &err));
    assert_true(mp.smtputf8);
    mail_fails(" SMTPUTF8=yes", &all, 501, "5.5.4");
    mail_fails(" SMTPUTF8 SMTPUTF8", &all, 501, "5.5.4");
    assert_true(mail(" RET=FULL", &all, &mp, &err));
    assert_int_equal(mp.ret, DSN_RET_FULL);
    assert_true(mail(" RET=Hdrs", &all, &mp, &err));
    assert_int_equal(mp.ret, DSN_RET_HDRS);
    mail_fails(" RET=BOTH", &all, 501, "5.5.4");
    mail_fails(" RET", &all, 501, "5.5.4");
    mail_fails(" RET=FULL RET=HDRS", &all, 501, "5.5.4");
}

static void test_envid_auth(void **state)
{
    (void)state;
    struct mail_params mp;
    struct esmtp_error err;
    char buf[1024];
    assert_true(mail(" ENVID=QQ314159+2B+3D", &all, &mp, &err));
    assert_string_equal(mp.envid, "QQ314159+2B+3D"); /* as given, not decoded */
    for (size_t len = 99; len <= 101; len++) {
        char *v = repeat('e', len);
        snprintf(buf, sizeof buf, " ENVID=%s", v);
        if (len <= ENVID_MAX) {
            assert_true(mail(buf, &all, &mp, &err));
            assert_string_equal(mp.envid, v);
        } else {
            mail_fails(buf, &all, 501, "5.5.4");
        }
        free(v);
    }
    mail_fails(" ENVID=a+2", &all, 501, "5.5.4");
    mail_fails(" ENVID=a+XY", &all, 501, "5.5.4");
    mail_fails(" ENVID=a+", &all, 501, "5.5.4");
    mail_fails(" ENVID", &all, 501, "5.5.4");
    mail_fails(" ENVID=a ENVID=b", &all, 501, "5.5.4");

    assert_true(mail(" AUTH=<>", &all, &mp, &err));
    assert_string_equal(mp.auth, "<>");
    assert_true(mail(" AUTH=user+40example.com", &all, &mp, &err));
    assert_string_equal(mp.auth, "user+40example.com");
    assert_true(mail(" AUTH=user@example.com", &all, &mp, &err)); /* '@' is an xchar */
    mail_fails(" AUTH=a+4", &all, 501, "5.5.4");
    mail_fails(" AUTH", &all, 501, "5.5.4");
    for (size_t len = 499; len <= 501; len++) {
        char *v = repeat('u', len);
        snprintf(buf, sizeof buf, " AUTH=%s", v);
        if (len <= AUTH_PARAM_MAX) {
            assert_true(mail(buf, &all, &mp, &err));
            assert_int_equal(strlen(mp.auth), len);
        } else {
            mail_fails(buf, &all, 501, "5.5.4");
        }
        free(v);
    }
}

static void test_many(void **state)
{
    (void)state;
    struct mail_params mp;
    struct esmtp_error err;
    assert_true(mail(" SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc AUTH=<>", &all, &mp,
                     &err));
    assert_int_equal(mp.size, 10);
    assert_int_equal(mp.body, BODY_8BITMIME);
    assert_true(mp.smtputf8);
    assert_int_equal(mp.ret, DSN_RET_HDRS);
    assert_string_equal(mp.envid, "abc");
    assert_string_equal(mp.auth, "<>");

    /* ESMTP_PARAMS_MAX parameters are split; one more is refused before any meaning */
    char buf[512] = "";
    for (int i = 0; i < ESMTP_PARAMS_MAX; i++)
        strcat(buf, " X");
    mail_fails(buf, &all, 555, "5.5.4"); /* 16 fit, X is unknown */
    strcat(buf, " X");
    struct mail_params mp2;
    assert_false(mail(buf, &all, &mp2, &err));
    assert_int_equal(err.code, 501);
    assert_string_equal(err.text, "Too many parameters");
}

static void test_notify(void **state)
{
    (void)state;
    struct rcpt_params rp;
    struct esmtp_error err;
    assert_true(rcpt(" NOTIFY=NEVER", &all, &rp, &err));
    assert_int_equal(rp.notify, DSN_NOTIFY_NEVER);
    assert_true(rcpt(" NOTIFY=never", &all, &rp, &err));
    assert_int_equal(rp.notify, DSN_NOTIFY_NEVER);
    assert_true(rcpt(" NOTIFY=SUCCESS", &all, &rp, &err));
    assert_int_equal(rp.notify, DSN_NOTIFY_SUCCESS);
    assert_true(rcpt(" NOTIFY=FAILURE,DELAY", &all, &rp, &err));
    assert_int_equal(rp.notify, DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY);
    assert_true(rcpt(" NOTIFY=delay,Success,FAILURE", &all, &rp, &err));
    assert_int_equal(rp.notify, DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY | DSN_NOTIFY_SUCCESS);
    const char *bad[] = {" NOTIFY=NEVER,SUCCESS", " NOTIFY=SUCCESS,NEVER", " NOTIFY=",
                         " NOTIFY",
                         " NOTIFY=SUCCESS,,DELAY", " NOTIFY=SUCCESS,", " NOTIFY=,SUCCESS",
                         " NOTIFY=SUCCESS,success", " NOTIFY=NEVER,NEVER", " NOTIFY=SOMETIMES",
                         " NOTIFY=SUCCESSFAILURE", " NOTIFY=NEVER NOTIFY=NEVER"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        rcpt_fails(bad[i], &all, 501);
}

static void test_orcpt(void **state)
{
    (void)state;
    struct rcpt_params rp;
    struct esmtp_error err;
    assert_true(rcpt(" ORCPT=rfc822;user@example.com", &all, &rp, &err));
    assert_string_equal(rp.orcpt, "rfc822;user@example.com");
    assert_true(rcpt(" ORCPT=RFC822;a+2Bb@c", &all, &rp, &err));
    assert_string_equal(rp.orcpt, "RFC822;a+2Bb@c");
    assert_true(rcpt(" ORCPT=x-local;anything", &all, &rp, &err));
    assert_true(rcpt(" ORCPT=utf-8;user+40x", &all, &rp, &err));
    assert_true(rcpt(" NOTIFY=FAILURE ORCPT=rfc822;a@b", &all, &rp, &err));
    assert_int_equal(rp.notify, DSN_NOTIFY_FAILURE);
    assert_string_equal(rp.orcpt, "rfc822;a@b");
    const char *bad[] = {" ORCPT=rfc822", " ORCPT=;a@b", " ORCPT=rfc(822);a@b",
                         " ORCPT=rfc822;a+4", " ORCPT=rfc822;a+ZZb", " ORCPT",
                         " ORCPT=a;b ORCPT=a;b"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        rcpt_fails(bad[i], &all, 501);

    /* 500 characters in all */
    char buf[1024];
    for (size_t len = 499; len <= 501; len++) {
        char *v = repeat('o', len - 7);
        snprintf(buf, sizeof buf, " ORCPT=rfc822;%s", v);
        if (len <= ORCPT_MAX) {
            assert_true(rcpt(buf, &all, &rp, &err));
            assert_int_equal(strlen(rp.orcpt), len);
        } else {
            rcpt_fails(buf, &all, 501);
        }
        free(v);
    }
}

static void test_xtext(void **state)
{
    (void)state;
    assert_true(xtext_valid("", 0));
    assert_true(xtext_valid("abc", 3));
    assert_true(xtext_valid("a+2Bb", 5));
    assert_true(xtext_valid("a+2bb", 5)); /* lower-case hex accepted on input */
    assert_true(xtext_valid("!~<>", 4));
    assert_false(xtext_valid("a+", 2));
    assert_false(xtext_valid("a+2", 3));
    assert_false(xtext_valid("a+G0", 4));
    assert_false(xtext_valid("a=b", 3));
    assert_false(xtext_valid("a b", 3));
    assert_false(xtext_valid("a\x7f", 2));
    assert_false(xtext_valid("\xc3\xa9", 2));
    assert_false(xtext_valid("a\0", 2));

    char out[64];
    assert_int_equal(xtext_decode("a+2Bb+3d", 8, out, sizeof out), 4);
    assert_string_equal(out, "a+b=");
    assert_int_equal(xtext_decode("+00x", 4, out, sizeof out), 2);
    assert_int_equal(out[0], '\0');
    assert_int_equal(out[1], 'x');
    assert_int_equal(xtext_decode("", 0, out, sizeof out), 0);
    assert_int_equal(xtext_decode("a+2", 3, out, sizeof out), (size_t)-1);
    assert_int_equal(xtext_decode("a=", 2, out, sizeof out), (size_t)-1);
    assert_int_equal(xtext_decode("abc", 3, out, 4), 3);
    assert_int_equal(xtext_decode("abc", 3, out, 3), (size_t)-1);
    assert_int_equal(xtext_decode("", 0, out, 0), (size_t)-1);

    assert_int_equal(xtext_encode("a+b=c d\xff", 8, out, sizeof out), 16);
    assert_string_equal(out, "a+2Bb+3Dc+20d+FF");
    assert_int_equal(xtext_encode("abc", 3, out, 4), 3);
    assert_int_equal(xtext_encode("abc", 3, out, 3), (size_t)-1);
    assert_int_equal(xtext_encode("+", 1, out, 4), 3);
    assert_int_equal(xtext_encode("+", 1, out, 3), (size_t)-1);
    assert_int_equal(xtext_encode("", 0, out, 0), (size_t)-1);

    /* every octet survives encode then decode */
    char all_octets[256], enc[256 * 3 + 1], dec[257];
    for (int i = 0; i < 256; i++)
        all_octets[i] = (char)i;
    size_t el = xtext_encode(all_octets, 256, enc, sizeof enc);
    assert_true(el != (size_t)-1);
    assert_true(xtext_valid(enc, el));
    assert_int_equal(xtext_decode(enc, el, dec, sizeof dec), 256);
    assert_memory_equal(dec, all_octets, 256);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),     cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_unknown_and_not_offered),
        cmocka_unit_test(test_size),      cmocka_unit_test(test_body),
        cmocka_unit_test(test_smtputf8_ret), cmocka_unit_test(test_envid_auth),
        cmocka_unit_test(test_many),      cmocka_unit_test(test_notify),
        cmocka_unit_test(test_orcpt),     cmocka_unit_test(test_xtext),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
