/* LDWRAP: -Wl,--wrap=dns_lookup -Wl,--wrap=dns_cancel */
/*
 * Unit tests of MX resolution (src/deliver/mx.c): ordering by preference with random order
 * among equals, null MX (RFC 7505), ourselves among the MX hosts, no MX -> the domain's
 * A/AAAA, NXDOMAIN, temporary failures, host-name and literal routes, the bounds on hosts
 * and addresses, and cancellation. DNS is a fake (dns_lookup/dns_cancel are wrapped at
 * link time): the test answers each query itself.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "deliver/mx.h"
#include "lib/loop.h"

/* ---- fake DNS ---- */

struct dns_query {
    char name[256];
    int type;
    dns_cb cb;
    void *arg;
    bool live;
};

#define FQ_MAX 64
static struct dns_query FQ[FQ_MAX];
static size_t NFQ;
static size_t NCANCELLED;

struct dns_query *__wrap_dns_lookup(const char *name, int rrtype, uint64_t timeout_ms,
                                    dns_cb cb, void *arg);
void __wrap_dns_cancel(struct dns_query *q);

struct dns_query *__wrap_dns_lookup(const char *name, int rrtype, uint64_t timeout_ms,
                                    dns_cb cb, void *arg)
{
    assert_true(NFQ < FQ_MAX);
    struct dns_query *q = &FQ[NFQ++];
    snprintf(q->name, sizeof q->name, "%s", name);
    q->type = rrtype;
    q->cb = cb;
    q->arg = arg;
    q->live = true;
    return q;
}

void __wrap_dns_cancel(struct dns_query *q)
{
    if (q == NULL)
        return;
    assert_true(q->live);
    q->live = false;
    NCANCELLED++;
}

static struct dns_query *find(const char *name, int type)
{
    for (size_t i = 0; i < NFQ; i++)
        if (FQ[i].live && FQ[i].type == type && strcmp(FQ[i].name, name) == 0)
            return &FQ[i];
    return NULL;
}

static size_t live_count(void)
{
    size_t n = 0;
    for (size_t i = 0; i < NFQ; i++)
        n += FQ[i].live;
    return n;
}

static void answer(const char *name, int type, enum dns_status st, const struct dns_mx *mx,
                   size_t nmx, const char *const *ips, size_t nips)
{
    struct dns_query *q = find(name, type);
    assert_non_null(q);
    q->live = false;
    struct dns_answer a = {.status = st, .rrtype = type, .why = "SERVFAIL"};
    struct sockaddr_storage ss[8];
    memset(ss, 0, sizeof ss);
    if (type == DNS_RR_MX) {
        a.mx = (struct dns_mx *)mx;
        a.n = nmx;
    } else {
        for (size_t i = 0; i < nips; i++) {
            if (type == DNS_RR_A) {
                struct sockaddr_in *sin = (struct sockaddr_in *)&ss[i];
                sin->sin_family = AF_INET;
                assert_int_equal(inet_pton(AF_INET, ips[i], &sin->sin_addr), 1);
            } else {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss[i];
                sin6->sin6_family = AF_INET6;
                assert_int_equal(inet_pton(AF_INET6, ips[i], &sin6->sin6_addr), 1);
            }
        }
        a.addrs = ss;
        a.n = nips;
    }
    q->cb(q->arg, &a);
}

static void answer_a(const char *name, const char *ip)
{
    answer(name, DNS_RR_A, ip ? DNS_OK : DNS_NODATA, NULL, 0, &ip, ip ? 1 : 0);
}

static void answer_aaaa(const char *name, const char *ip)
{
    answer(name, DNS_RR_AAAA, ip ? DNS_OK : DNS_NODATA, NULL, 0, &ip, ip ? 1 : 0);
}

/* ---- results ---- */

static struct mx_result RES;
static int NCB;

static void on_result(void *arg, const struct mx_result *r)
{
    RES = *r;
    NCB++;
}

static void addr_text(size_t i, char *out, size_t cap)
{
    unsigned port;
    char ip[NETADDR_IP_MAX];
    sockaddr_format((const struct sockaddr *)&RES.addrs[i].sa, ip, sizeof ip, &port);
    snprintf(out, cap, "%s/%u/%s", ip, port, RES.hosts[RES.addrs[i].host].name);
}

static void assert_addr(size_t i, const char *expect)
{
    char t[400];
    assert_true(i < RES.naddrs);
    addr_text(i, t, sizeof t);
    assert_string_equal(t, expect);
}

static int setup(void **state)
{
    memset(FQ, 0, sizeof FQ);
    NFQ = 0;
    NCANCELLED = 0;
    memset(&RES, 0, sizeof RES);
    NCB = 0;
    mx_set_random(NULL);
    return 0;
}

static struct route mx_route(const char *domain, unsigned port)
{
    struct route r;
    memset(&r, 0, sizeof r);
    r.kind = ROUTE_MX;
    snprintf(r.name, sizeof r.name, "%s", domain);
    r.port = port;
    r.mx_lookup = true;
    return r;
}

/* ---- pure ordering ---- */

static uint32_t always_zero(uint32_t n)
{
    return 0;
}

static void test_order_preference(void **state)
{
    struct dns_mx in[] = {{20, "b.example."}, {10, "A.Example"}, {30, "c.example"},
                          {20, "b.example"}};
    struct mx_host out[MX_HOSTS_MAX];
    size_t n;
    assert_int_equal(mx_order(in, 4, "mx.self", out, MX_HOSTS_MAX, &n), MX_OK);
    assert_int_equal(n, 3); /* the duplicate is dropped */
    assert_string_equal(out[0].name, "a.example");
    assert_int_equal(out[0].pref, 10);
    assert_string_equal(out[1].name, "b.example");
    assert_string_equal(out[2].name, "c.example");
}

static void test_order_random_among_equals(void **state)
{
    struct dns_mx in[] = {{10, "x1"}, {10, "x2"}, {10, "x3"}, {5, "best"}, {50, "last"}};
    int first[3] = {0, 0, 0};
    for (int run = 0; run < 300; run++) {
        struct mx_host out[MX_HOSTS_MAX];
        size_t n;
        assert_int_equal(mx_order(in, 5, NULL, out, MX_HOSTS_MAX, &n), MX_OK);
        assert_int_equal(n, 5);
        assert_string_equal(out[0].name, "best"); /* preference always wins */
        assert_string_equal(out[4].name, "last");
        first[out[1].name[1] - '1']++;
        for (int k = 1; k < 4; k++)
            assert_int_equal(out[k].pref, 10);
    }
    /* each of the equal hosts comes first some of the time */
    for (int k = 0; k < 3; k++)
        assert_true(first[k] > 30);

    /* with a fixed random source the order is deterministic */
    mx_set_random(always_zero);
    struct mx_host out[MX_HOSTS_MAX];
    size_t n;
    mx_order(in, 5, NULL, out, MX_HOSTS_MAX, &n);
    struct mx_host again[MX_HOSTS_MAX];
    mx_order(in, 5, NULL, again, MX_HOSTS_MAX, &n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(out[i].name, again[i].name);
}

static void test_order_null_mx_and_self(void **state)
{
    struct mx_host out[MX_HOSTS_MAX];
    size_t n;
    struct dns_mx null_mx[] = {{0, "."}};
    assert_int_equal(mx_order(null_mx, 1, NULL, out, MX_HOSTS_MAX, &n), MX_NULLMX);
    assert_int_equal(n, 0);
    /* a "." among real hosts is ignored */
    struct dns_mx mixed[] = {{0, "."}, {10, "real.example"}};
    assert_int_equal(mx_order(mixed, 2, NULL, out, MX_HOSTS_MAX, &n), MX_OK);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].name, "real.example");

    /* we are listed: only better hosts remain (RFC 5321 §5.1) */
    struct dns_mx self[] = {{10, "primary.example"}, {20, "MX.Self."}, {30, "worse.example"}};
    assert_int_equal(mx_order(self, 3, "mx.self", out, MX_HOSTS_MAX, &n), MX_OK);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].name, "primary.example");
    struct dns_mx best[] = {{10, "mx.self"}, {20, "backup.example"}};
    assert_int_equal(mx_order(best, 2, "mx.self", out, MX_HOSTS_MAX, &n), MX_LOOP);
    /* hosts of our own preference go too, wherever the sort put them */
    struct dns_mx peers[] = {{10, "twin.example"}, {10, "mx.self"}, {5, "better.example"}};
    for (int run = 0; run < 20; run++) {
        assert_int_equal(mx_order(peers, 3, "mx.self", out, MX_HOSTS_MAX, &n), MX_OK);
        assert_int_equal(n, 1);
        assert_string_equal(out[0].name, "better.example");
    }
    struct dns_mx twins[] = {{10, "twin.example"}, {10, "mx.self"}};
    assert_int_equal(mx_order(twins, 2, "mx.self", out, MX_HOSTS_MAX, &n), MX_LOOP);
}

static void test_order_bounded(void **state)
{
    struct dns_mx in[40];
    for (int i = 0; i < 40; i++) {
        in[i].pref = (unsigned)(40 - i);
        snprintf(in[i].host, sizeof in[i].host, "h%02d.example", i);
    }
    struct mx_host out[MX_HOSTS_MAX];
    size_t n;
    assert_int_equal(mx_order(in, 40, NULL, out, MX_HOSTS_MAX, &n), MX_OK);
    assert_int_equal(n, MX_HOSTS_MAX);
    assert_string_equal(out[0].name, "h39.example"); /* the best ten are kept */
    assert_int_equal(out[0].pref, 1);
    assert_int_equal(out[9].pref, 10);
}

static void test_add_addrs(void **state)
{
    struct sockaddr_storage v4[6], v6[6];
    memset(v4, 0, sizeof v4);
    memset(v6, 0, sizeof v6);
    for (int i = 0; i < 6; i++) {
        struct sockaddr_in *a = (struct sockaddr_in *)&v4[i];
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)i);
        struct sockaddr_in6 *b = (struct sockaddr_in6 *)&v6[i];
        b->sin6_family = AF_INET6;
        b->sin6_addr.s6_addr[15] = (uint8_t)(i + 1);
    }
    memset(&RES, 0, sizeof RES);
    RES.nhosts = 6;
    for (int h = 0; h < 6; h++)
        snprintf(RES.hosts[h].name, sizeof RES.hosts[h].name, "h%d", h);
    /* families alternate, IPv6 first, at most MX_ADDRS_PER_HOST per host */
    assert_int_equal(mx_add_addrs(&RES, 0, v6, 2, v4, 3, 2525), MX_ADDRS_PER_HOST);
    assert_addr(0, "::1/2525/h0");
    assert_addr(1, "127.0.0.1/2525/h0");
    assert_addr(2, "::2/2525/h0");
    assert_addr(3, "127.0.0.2/2525/h0");
    /* an address already listed (another name for the same host) is not tried twice */
    assert_int_equal(mx_add_addrs(&RES, 1, NULL, 0, v4, 2, 25), 0);
    assert_int_equal(mx_add_addrs(&RES, 1, NULL, 0, v4 + 2, 1, 25), 1);
    assert_addr(4, "127.0.0.3/25/h1");
    /* the overall bound */
    for (unsigned h = 2; h < 6; h++)
        mx_add_addrs(&RES, h, v6 + 2, 4, v4 + 3, 3, 25);
    assert_true(RES.naddrs <= MX_ADDRS_MAX);
}

/* ---- asynchronous resolution ---- */

static void test_resolve_mx(void **state)
{
    struct route r = mx_route("peer.example", 2525);
    mx_set_random(always_zero);
    struct mx_query *q = mx_resolve(&r, "mx.self", on_result, NULL);
    assert_non_null(find("peer.example", DNS_RR_MX));
    struct dns_mx mx[] = {{20, "mx2.peer.example"}, {10, "mx1.peer.example"}};
    answer("peer.example", DNS_RR_MX, DNS_OK, mx, 2, NULL, 0);
    /* both hosts are resolved together, A and AAAA */
    assert_int_equal(live_count(), 4);
    answer_a("mx2.peer.example", "127.0.0.3");
    answer_aaaa("mx2.peer.example", NULL);
    answer_aaaa("mx1.peer.example", "::1");
    assert_int_equal(NCB, 0);
    answer_a("mx1.peer.example", "127.0.0.2");
    assert_int_equal(NCB, 1);
    assert_int_equal(RES.status, MX_OK);
    assert_int_equal(RES.nhosts, 2);
    assert_int_equal(RES.naddrs, 3);
    assert_addr(0, "::1/2525/mx1.peer.example");
    assert_addr(1, "127.0.0.2/2525/mx1.peer.example");
    assert_addr(2, "127.0.0.3/2525/mx2.peer.example");
    (void)q;
}

static void test_resolve_no_mx(void **state)
{
    struct route r = mx_route("plain.example", 25);
    mx_resolve(&r, NULL, on_result, NULL);
    answer("plain.example", DNS_RR_MX, DNS_NODATA, NULL, 0, NULL, 0);
    answer_a("plain.example", "127.0.0.4");
    answer_aaaa("plain.example", NULL);
    assert_int_equal(RES.status, MX_OK);
    assert_true(RES.hosts[0].implicit);
    assert_addr(0, "127.0.0.4/25/plain.example");

    /* neither MX nor address records */
    setup(NULL);
    mx_resolve(&r, NULL, on_result, NULL);
    answer("plain.example", DNS_RR_MX, DNS_NODATA, NULL, 0, NULL, 0);
    answer_a("plain.example", NULL);
    answer_aaaa("plain.example", NULL);
    assert_int_equal(RES.status, MX_NOHOST);
}

static void test_resolve_failures(void **state)
{
    struct route r = mx_route("gone.example", 25);
    mx_resolve(&r, NULL, on_result, NULL);
    answer("gone.example", DNS_RR_MX, DNS_NXDOMAIN, NULL, 0, NULL, 0);
    assert_int_equal(RES.status, MX_NXDOMAIN);
    assert_int_equal(live_count(), 0);

    setup(NULL);
    mx_resolve(&r, NULL, on_result, NULL);
    struct dns_mx null_mx[] = {{0, "."}};
    answer("gone.example", DNS_RR_MX, DNS_OK, null_mx, 1, NULL, 0);
    assert_int_equal(RES.status, MX_NULLMX);
    assert_non_null(strstr(RES.why, "null MX"));

    setup(NULL);
    mx_resolve(&r, NULL, on_result, NULL);
    answer("gone.example", DNS_RR_MX, DNS_TEMPFAIL, NULL, 0, NULL, 0);
    assert_int_equal(RES.status, MX_TEMPFAIL);
    assert_non_null(strstr(RES.why, "SERVFAIL"));

    /* MX hosts without addresses: one lookup failed temporarily -> try later */
    setup(NULL);
    mx_resolve(&r, NULL, on_result, NULL);
    struct dns_mx mx[] = {{10, "a.gone.example"}, {20, "b.gone.example"}};
    answer("gone.example", DNS_RR_MX, DNS_OK, mx, 2, NULL, 0);
    answer("a.gone.example", DNS_RR_A, DNS_TEMPFAIL, NULL, 0, NULL, 0);
    answer_aaaa("a.gone.example", NULL);
    answer("b.gone.example", DNS_RR_A, DNS_NXDOMAIN, NULL, 0, NULL, 0);
    answer("b.gone.example", DNS_RR_AAAA, DNS_NXDOMAIN, NULL, 0, NULL, 0);
    assert_int_equal(RES.status, MX_TEMPFAIL);

    /* the first MX host does not resolve; the second does */
    setup(NULL);
    mx_resolve(&r, NULL, on_result, NULL);
    answer("gone.example", DNS_RR_MX, DNS_OK, mx, 2, NULL, 0);
    answer("a.gone.example", DNS_RR_A, DNS_NXDOMAIN, NULL, 0, NULL, 0);
    answer("a.gone.example", DNS_RR_AAAA, DNS_NXDOMAIN, NULL, 0, NULL, 0);
    answer_a("b.gone.example", "127.0.0.9");
    answer_aaaa("b.gone.example", NULL);
    assert_int_equal(RES.status, MX_OK);
    assert_int_equal(RES.naddrs, 1);
    assert_addr(0, "127.0.0.9/25/b.gone.example");

    /* we are the best MX */
    setup(NULL);
    mx_resolve(&r, "mx.self", on_result, NULL);
    struct dns_mx self[] = {{10, "mx.self"}};
    answer("gone.example", DNS_RR_MX, DNS_OK, self, 1, NULL, 0);
    assert_int_equal(RES.status, MX_LOOP);
}

static void test_resolve_host_route(void **state)
{
    struct route r;
    memset(&r, 0, sizeof r);
    r.kind = ROUTE_RELAYHOST;
    snprintf(r.name, sizeof r.name, "relay.example");
    r.port = 587;
    mx_resolve(&r, NULL, on_result, NULL);
    assert_null(find("relay.example", DNS_RR_MX)); /* [relay.example]: no MX lookup */
    answer_a("relay.example", "127.0.0.7");
    answer_aaaa("relay.example", NULL);
    assert_int_equal(RES.status, MX_OK);
    assert_addr(0, "127.0.0.7/587/relay.example");

    setup(NULL);
    mx_resolve(&r, NULL, on_result, NULL);
    answer("relay.example", DNS_RR_A, DNS_NXDOMAIN, NULL, 0, NULL, 0);
    answer("relay.example", DNS_RR_AAAA, DNS_NXDOMAIN, NULL, 0, NULL, 0);
    assert_int_equal(RES.status, MX_NXDOMAIN);
}

static void test_cancel(void **state)
{
    struct route r = mx_route("peer.example", 25);
    struct mx_query *q = mx_resolve(&r, NULL, on_result, NULL);
    struct dns_mx mx[] = {{10, "mx1.peer.example"}};
    answer("peer.example", DNS_RR_MX, DNS_OK, mx, 1, NULL, 0);
    answer_a("mx1.peer.example", "127.0.0.2");
    assert_int_equal(live_count(), 1);
    mx_cancel(q);
    assert_int_equal(live_count(), 0);
    assert_int_equal(NCANCELLED, 1);
    assert_int_equal(NCB, 0);
}

static void stop_loop(void *arg)
{
    loop_exit();
}

static void on_result_stop(void *arg, const struct mx_result *r)
{
    on_result(arg, r);
    loop_exit();
}

static void test_literal(void **state)
{
    loop_init();
    struct timer *guard = timer_new(stop_loop, NULL);
    timer_arm(guard, 2000);
    struct route r;
    memset(&r, 0, sizeof r);
    snprintf(r.name, sizeof r.name, "::1");
    r.literal = true;
    r.port = 2525;
    mx_resolve(&r, NULL, on_result_stop, NULL);
    assert_int_equal(NCB, 0); /* never from inside mx_resolve */
    loop_run();
    assert_int_equal(NCB, 1);
    assert_int_equal(NFQ, 0); /* no DNS */
    assert_int_equal(RES.status, MX_OK);
    assert_addr(0, "::1/2525/::1");
    timer_free(guard);
    loop_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_order_preference, setup),
        cmocka_unit_test_setup(test_order_random_among_equals, setup),
        cmocka_unit_test_setup(test_order_null_mx_and_self, setup),
        cmocka_unit_test_setup(test_order_bounded, setup),
        cmocka_unit_test_setup(test_add_addrs, setup),
        cmocka_unit_test_setup(test_resolve_mx, setup),
        cmocka_unit_test_setup(test_resolve_no_mx, setup),
        cmocka_unit_test_setup(test_resolve_failures, setup),
        cmocka_unit_test_setup(test_resolve_host_route, setup),
        cmocka_unit_test_setup(test_cancel, setup),
        cmocka_unit_test_setup(test_literal, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
