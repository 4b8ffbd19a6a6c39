/*
 * Unit tests of route selection (src/deliver/route.c): [transport DOMAIN] before relayhost
 * before MX; nexthop syntax ([host] suppresses the MX lookup, numeric addresses are
 * literal); per-destination TLS policy (credentials raise it to encrypt); destination keys.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "deliver/route.h"

static struct conf C;
static struct transport_conf T[2];

static int setup(void **state)
{
    memset(&C, 0, sizeof C);
    memset(T, 0, sizeof T);
    C.mx_port = 25;
    C.smtp_tls = TLS_POLICY_MAY;
    return 0;
}

static void test_mx_route(void **state)
{
    struct route r;
    char err[200];
    assert_true(route_for_domain(&C, "Example.ORG.", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_MX);
    assert_string_equal(r.name, "example.org");
    assert_true(r.mx_lookup);
    assert_false(r.literal);
    assert_int_equal(r.port, 25);
    assert_int_equal(r.tls, TLS_POLICY_MAY);
    assert_false(r.auth);

    C.mx_port = 2525;
    C.smtp_tls = TLS_POLICY_NONE;
    struct route r2;
    assert_true(route_for_domain(&C, "example.org", &r2, err, sizeof err));
    assert_int_equal(r2.port, 2525);
    assert_int_equal(r2.tls, TLS_POLICY_NONE);
    assert_string_not_equal(r.key, r2.key); /* port and policy are part of the key */

    struct route r3;
    assert_true(route_for_domain(&C, "EXAMPLE.org", &r3, err, sizeof err));
    assert_string_equal(r2.key, r3.key); /* case does not split a destination */

    /* address literals go to the address */
    assert_true(route_for_domain(&C, "[192.0.2.7]", &r, err, sizeof err));
    assert_true(r.literal);
    assert_false(r.mx_lookup);
    assert_string_equal(r.name, "192.0.2.7");
    assert_true(route_for_domain(&C, "[IPv6:2001:db8::1]", &r, err, sizeof err));
    assert_true(r.literal);
    assert_string_equal(r.name, "2001:db8::1");
    assert_false(route_for_domain(&C, "[not.an.ip]", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_MX);

    /* names DNS cannot carry */
    assert_false(route_for_domain(&C, "bad domain", &r, err, sizeof err));
    assert_false(route_for_domain(&C, "a..b", &r, err, sizeof err));
    assert_false(route_for_domain(&C, "", &r, err, sizeof err));
}

/* SMTPUTF8 domains are looked up by their A-labels (IDNA2008 + UTS #46) */
static void test_idna(void **state)
{
    struct route r;
    char err[200];
    assert_true(route_for_domain(&C, "J\xc3\xb6rg.Example", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_MX);
    assert_true(r.mx_lookup);
    assert_string_equal(r.name, "xn--jrg-sna.example");
    /* the same name decomposed (o + combining diaeresis) is the same domain */
    struct route r2;
    assert_true(route_for_domain(&C, "jo\xcc\x88rg.example", &r2, err, sizeof err));
    assert_string_equal(r2.key, r.key);
    /* not UTF-8; a symbol IDNA2008 does not allow: permanent (kind MX) */
    assert_false(route_for_domain(&C, "j\xffrg.example", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_MX);
    assert_non_null(strstr(err, "IDNA"));
    assert_false(route_for_domain(&C, "\xe2\x98\x83.example", &r, err, sizeof err));
    assert_non_null(strstr(err, "IDNA"));
    /* a relayhost takes even those: the smarthost may know better */
    C.relayhost = "relay.example:25";
    assert_true(route_for_domain(&C, "\xe2\x98\x83.example", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_RELAYHOST);
    /* a [transport] written with A-labels serves the UTF-8 spelling */
    T[0].domain = "xn--bcher-kva.example";
    T[0].nexthop = "[books.internal.example]:2526";
    T[0].tls = TLS_POLICY_MAY;
    C.transports = T;
    C.ntransports = 1;
    assert_true(route_for_domain(&C, "b\xc3\xbc" "cher.example", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_TRANSPORT);
    assert_string_equal(r.name, "books.internal.example");
}

static void test_relayhost(void **state)
{
    struct route r, r2;
    char err[200];
    C.relayhost = "smtp.provider.example:587";
    assert_true(route_for_domain(&C, "example.org", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_RELAYHOST);
    assert_string_equal(r.name, "smtp.provider.example");
    assert_int_equal(r.port, 587);
    assert_true(r.mx_lookup); /* Postfix: an unbracketed name is looked up as MX first */
    assert_int_equal(r.tls, TLS_POLICY_MAY);
    /* every remote domain shares the relayhost's destination */
    assert_true(route_for_domain(&C, "other.example", &r2, err, sizeof err));
    assert_string_equal(r.key, r2.key);

    C.relayhost = "[smtp.provider.example]:587";
    assert_true(route_for_domain(&C, "example.org", &r, err, sizeof err));
    assert_false(r.mx_lookup);
    assert_false(r.literal);

    C.relayhost = "127.0.0.9:2525";
    assert_true(route_for_domain(&C, "example.org", &r, err, sizeof err));
    assert_true(r.literal);
    assert_string_equal(r.name, "127.0.0.9");
    assert_int_equal(r.port, 2525);

    C.relayhost = "[::1]:2525";
    assert_true(route_for_domain(&C, "example.org", &r, err, sizeof err));
    assert_true(r.literal);
    assert_string_equal(r.name, "::1");

    /* credentials: TLS becomes mandatory, and the key says auth */
    C.relayhost_user = "u";
    C.relayhost_password = "p";
    assert_true(route_for_domain(&C, "example.org", &r2, err, sizeof err));
    assert_true(r2.auth);
    assert_int_equal(r2.tls, TLS_POLICY_ENCRYPT);
    assert_string_not_equal(r.key, r2.key);
    C.smtp_tls = TLS_POLICY_VERIFY; /* a stricter policy stays */
    assert_true(route_for_domain(&C, "example.org", &r2, err, sizeof err));
    assert_int_equal(r2.tls, TLS_POLICY_VERIFY);

    C.relayhost = "bad host:25";
    assert_false(route_for_domain(&C, "example.org", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_RELAYHOST);
}

static void test_transport(void **state)
{
    struct route r;
    char err[200];
    C.relayhost = "relay.example:25";
    T[0].domain = "example.org";
    T[0].nexthop = "[mail.internal.example]:2526";
    T[0].tls = TLS_POLICY_ENCRYPT;
    T[1].domain = "lit.example";
    T[1].nexthop = "127.0.0.5";
    T[1].tls = TLS_POLICY_NONE;
    C.transports = T;
    C.ntransports = 2;
    /* the transport wins over relayhost */
    assert_true(route_for_domain(&C, "EXAMPLE.org", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_TRANSPORT);
    assert_string_equal(r.name, "mail.internal.example");
    assert_int_equal(r.port, 2526);
    assert_false(r.mx_lookup);
    assert_int_equal(r.tls, TLS_POLICY_ENCRYPT);
    assert_false(r.auth); /* credentials are the relayhost's only */

    assert_true(route_for_domain(&C, "lit.example", &r, err, sizeof err));
    assert_true(r.literal);
    assert_int_equal(r.port, 25); /* mx_port when the nexthop gives none */
    assert_int_equal(r.tls, TLS_POLICY_NONE);

    /* other domains: relayhost */
    assert_true(route_for_domain(&C, "sub.example.org", &r, err, sizeof err));
    assert_int_equal(r.kind, ROUTE_RELAYHOST);
}

static void test_parse_nexthop(void **state)
{
    struct route r;
    memset(&r, 0, sizeof r);
    assert_true(route_parse_nexthop("Host.Example.:26", 25, &r));
    assert_string_equal(r.name, "host.example");
    assert_int_equal(r.port, 26);
    assert_false(route_parse_nexthop("host:0", 25, &r));
    assert_false(route_parse_nexthop("host:99999", 25, &r));
    assert_false(route_parse_nexthop("[unclosed:25", 25, &r));
    assert_false(route_parse_nexthop("2001:db8::1:25", 25, &r)); /* needs brackets */
    assert_true(route_parse_nexthop("[2001:db8::1]:25", 25, &r));
    assert_true(r.literal);
    assert_string_equal(route_kind_name(ROUTE_MX), "mx");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_mx_route, setup),
        cmocka_unit_test_setup(test_idna, setup),
        cmocka_unit_test_setup(test_relayhost, setup),
        cmocka_unit_test_setup(test_transport, setup),
        cmocka_unit_test_setup(test_parse_nexthop, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
