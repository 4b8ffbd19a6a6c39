/* test_received: unit tests for src/mail/received.c (Received: header, RFC 5322 dates). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/mem.h"
#include "mail/received.h"

#define SUN_29_NOV_2026_NOON ((time_t)1795953600)

static char *repeat(char c, size_t n)
{
    char *s = xmalloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Structural checks that hold for every header we write. */
static void check_header(const char *h, size_t len, bool allow_long_clause)
{
    assert_int_equal(strlen(h), len);
    assert_true(len >= 2 && strncmp(h, "Received:", 9) == 0);
    assert_true(h[len - 2] == '\r' && h[len - 1] == '\n');
    size_t line_start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)h[i];
        if (c == '\r') {
            /* CR only before LF; every continuation line starts with a TAB */
            assert_true(i + 1 < len && h[i + 1] == '\n');
            size_t line_len = i - line_start;
            if (!allow_long_clause)
                assert_true(line_len <= 78);
            assert_true(line_len <= 998);
            if (i + 2 < len)
                assert_int_equal(h[i + 2], '\t');
            i++;
            line_start = i + 1;
            continue;
        }
        assert_true(c != '\n' && c != '\0');
        assert_true(c == '\t' || c >= 0x20);
    }
    /* the last ';' comes just before the date, which ends the header */
    const char *semi = strrchr(h, ';');
    assert_non_null(semi);
    assert_true(strncmp(semi, "; ", 2) == 0 || strncmp(semi, ";\r\n\t", 4) == 0);
    assert_string_equal(h + len - 7, "+0000\r\n");
}

static void test_date(void **state)
{
    (void)state;
    char d[64];
    assert_int_equal(rfc5322_date(0, d, sizeof d), 30);
    assert_string_equal(d, "Thu, 1 Jan 1970 00:00:00 +0000");
    assert_int_equal(rfc5322_date(SUN_29_NOV_2026_NOON, d, sizeof d), 31);
    assert_string_equal(d, "Sun, 29 Nov 2026 12:00:00 +0000");
    rfc5322_date(1709251199, d, sizeof d);
    assert_string_equal(d, "Thu, 29 Feb 2024 23:59:59 +0000");
    rfc5322_date(946684800, d, sizeof d);
    assert_string_equal(d, "Sat, 1 Jan 2000 00:00:00 +0000");
    rfc5322_date((time_t)253402300799, d, sizeof d);
    assert_string_equal(d, "Fri, 31 Dec 9999 23:59:59 +0000");
    /* a five-digit year does not fit date-time's 4DIGIT */
    assert_int_equal(rfc5322_date((time_t)253402300800, d, sizeof d), 0);
    /* cap: the text and its NUL */
    assert_int_equal(rfc5322_date(0, d, 31), 30);
    assert_int_equal(rfc5322_date(0, d, 30), 0);
    assert_int_equal(rfc5322_date(0, d, 0), 0);
}

static const struct received_info full = {
    .helo = "mail.example.org",
    .client_name = "mx.example.org",
    .client_ip = "192.0.2.1",
    .by = "tern.example.com",
    .with = "ESMTPS",
    .tls = "TLSv1.3 TLS_AES_256_GCM_SHA384 256 bits",
    .id = "4F3A2B",
    .for_addr = "user@example.com",
    .when = SUN_29_NOV_2026_NOON,
};

static void test_full(void **state)
{
    (void)state;
    char h[RECEIVED_MAX];
    size_t n = received_format(&full, h, sizeof h);
    const char *want = "Received: from mail.example.org (mx.example.org [192.0.2.1])\r\n"
                       "\tby tern.example.com (tern) with ESMTPS id 4F3A2B\r\n"
                       "\t(TLSv1.3 TLS_AES_256_GCM_SHA384 256 bits)\r\n"
                       "\tfor <user@example.com>; Sun, 29 Nov 2026 12:00:00 +0000\r\n";
    assert_string_equal(h, want);
    assert_int_equal(n, strlen(want));
    check_header(h, n, false);

    /* exactly enough room, then one byte short */
    char *small = xmalloc(n + 1);
    assert_int_equal(received_format(&full, small, n + 1), n);
    assert_string_equal(small, want);
    assert_int_equal(received_format(&full, small, n), 0);
    assert_int_equal(received_format(&full, small, 10), 0);
    assert_int_equal(received_format(&full, small, 0), 0);
    free(small);
}

static void test_variants(void **state)
{
    (void)state;
    char h[RECEIVED_MAX];
    struct received_info ri = full;

    /* no reverse name: TCP-info is the bare literal; IPv6 literals carry the tag */
    ri.client_name = NULL;
    ri.client_ip = "2001:db8::25";
    ri.tls = NULL;
    ri.for_addr = NULL;
    ri.with = "ESMTP";
    size_t n = received_format(&ri, h, sizeof h);
    assert_string_equal(h, "Received: from mail.example.org ([IPv6:2001:db8::25])\r\n"
                           "\tby tern.example.com (tern) with ESMTP id 4F3A2B;\r\n"
                           "\tSun, 29 Nov 2026 12:00:00 +0000\r\n");
    check_header(h, n, false);

    /* no HELO: the From-domain falls back to the reverse name, then to the literal */
    ri = full;
    ri.helo = NULL;
    ri.tls = NULL;
    received_format(&ri, h, sizeof h);
    assert_non_null(strstr(h, "Received: from mx.example.org (mx.example.org [192.0.2.1])"));
    ri.client_name = "";
    received_format(&ri, h, sizeof h);
    assert_non_null(strstr(h, "Received: from [192.0.2.1] ([192.0.2.1])\r\n"));

    /* local submission: no from clause at all */
    ri = full;
    ri.helo = ri.client_name = ri.client_ip = ri.tls = ri.for_addr = NULL;
    ri.with = "local";
    n = received_format(&ri, h, sizeof h);
    assert_string_equal(h, "Received: by tern.example.com (tern) with local id 4F3A2B;\r\n"
                           "\tSun, 29 Nov 2026 12:00:00 +0000\r\n");
    check_header(h, n, false);

    /* no id and no with: only what is known */
    ri.with = NULL;
    ri.id = NULL;
    received_format(&ri, h, sizeof h);
    assert_string_equal(h, "Received: by tern.example.com (tern); Sun, 29 Nov 2026 12:00:00 "
                           "+0000\r\n");

    /* a UTF-8 recipient is kept as is (SMTPUTF8 messages may carry it) */
    ri = full;
    ri.for_addr = "δοκιμή@παράδειγμα.δοκιμή";
    received_format(&ri, h, sizeof h);
    assert_non_null(strstr(h, "for <δοκιμή@παράδειγμα.δοκιμή>;"));
}

static void test_sanitise(void **state)
{
    (void)state;
    char h[RECEIVED_MAX];
    struct received_info ri = full;
    ri.helo = "evil\r\nX-Injected: yes (by x) \\ ;";
    ri.client_name = "name(with)parens\x01";
    ri.tls = "TLS (odd)\n";
    ri.for_addr = "a\r\nb@c";
    size_t n = received_format(&ri, h, sizeof h);
    check_header(h, n, false);
    assert_null(strstr(h, "X-Injected: yes"));
    assert_non_null(strstr(h, "from evil??X-Injected:?yes??by?x????"));
    assert_non_null(strstr(h, "(name?with?parens? [192.0.2.1])"));
    assert_non_null(strstr(h, "(TLS ?odd?\?)"));
    assert_non_null(strstr(h, "for <a??b@c>"));
    /* no forged ';': the only one starts the date */
    assert_string_equal(strchr(h, ';'), "; Sun, 29 Nov 2026 12:00:00 +0000\r\n");
    /* 8-bit HELO octets become '?' */
    ri = full;
    ri.helo = "h\xc3\xa9llo";
    received_format(&ri, h, sizeof h);
    assert_non_null(strstr(h, "from h??llo "));
}

static void test_fold_and_caps(void **state)
{
    (void)state;
    char h[RECEIVED_MAX];
    struct received_info ri = full;
    /* clauses that do not fit the line move to a continuation line */
    ri.helo = "a-rather-long-helo-name.subdomain.example.org";
    ri.client_name = "a-rather-long-reverse-name.example.net";
    size_t n = received_format(&ri, h, sizeof h);
    check_header(h, n, false);
    assert_non_null(strstr(h, "Received: from a-rather-long-helo-name.subdomain.example.org\r\n"
                               "\t(a-rather-long-reverse-name.example.net [192.0.2.1])\r\n"));

    /* the worst case: every piece at or over its cap still fits in RECEIVED_MAX */
    char *big = repeat('h', 5000), *addr = repeat('r', 5000);
    ri.helo = big;
    ri.client_name = big;
    ri.client_ip = big;
    ri.by = big;
    ri.with = big;
    ri.id = big;
    ri.tls = big;
    ri.for_addr = addr;
    n = received_format(&ri, h, sizeof h);
    assert_true(n > 0 && n < RECEIVED_MAX);
    check_header(h, n, true);
    /* the HELO is capped at 255 octets */
    char *h255 = repeat('h', 255);
    char want[300];
    snprintf(want, sizeof want, "from %s\r\n", h255);
    assert_non_null(strstr(h, want));
    free(h255);
    free(big);
    free(addr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_date),     cmocka_unit_test(test_full),
        cmocka_unit_test(test_variants), cmocka_unit_test(test_sanitise),
        cmocka_unit_test(test_fold_and_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
