/*
 * dns: see dns.h. The only user of libunbound. libunbound resolves in its own thread
 * (ub_ctx_async) and signals results through a file descriptor the loop watches; the
 * callbacks then run in ub_process() on the loop thread.
 */
#include "lib/dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unbound.h>

#include "lib/loop.h"
#include "lib/mem.h"
#include "lib/netaddr.h"

static struct ub_ctx *ub;
static struct fdwatch *ub_watch;

struct dns_query {
    /* a plain lookup */
    int async_id;
    bool active; /* an unbound query is in flight */
    const char *fail_why;
    struct timer *timer;
    dns_cb cb;
    void *arg;
    int rrtype;
    /* a reverse lookup: PTR, then A/AAAA of the name, driven through sub */
    bool reverse;
    struct dns_query *sub;
    void (*rcb)(void *arg, const char *name);
    struct sockaddr_storage sa;
    char name[256];
};

static void on_ub_readable(int fd, void *arg)
{
    ub_process(ub);
}

/* With a configured server, that server answers everything: remove the local zones
 * libunbound answers itself by default, the special-use names of RFC 6761 (a test DNS
 * server serves exactly those, e.g. example.test) and the loopback reverse zones.
 * (ub_ctx_zone_remove finalizes the context, so this runs after the options.) */
static int forward_everything(void)
{
    static const char *const zones[] = {
        "test.", "invalid.", "onion.", "home.arpa.", "127.in-addr.arpa.",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    };
    for (size_t i = 0; i < sizeof zones / sizeof zones[0]; i++) {
        int rc = ub_ctx_zone_remove(ub, zones[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int dns_init(const char *server, char *err, size_t errlen)
{
    ub = ub_ctx_create();
    if (ub == NULL) {
        snprintf(err, errlen, "cannot create a libunbound context");
        return -1;
    }
    /* tests and many hosts run their resolver on loopback: allow asking it */
    ub_ctx_set_option(ub, "do-not-query-localhost:", "no");
    int rc;
    if (server != NULL) {
        char host[128];
        unsigned port;
        if (!hostport_split(server, 53, host, sizeof host, &port)) {
            snprintf(err, errlen, "dns = %s: not ip:port", server);
            return -1;
        }
        char fwd[160];
        snprintf(fwd, sizeof fwd, "%s@%u", host, port);
        rc = ub_ctx_set_fwd(ub, fwd);
        /* the private reverse zones too (see forward_everything() below) */
        if (rc == 0)
            rc = ub_ctx_set_option(ub, "unblock-lan-zones:", "yes");
        if (rc == 0)
            rc = ub_ctx_set_option(ub, "insecure-lan-zones:", "yes");
    } else {
        rc = ub_ctx_resolvconf(ub, "/etc/resolv.conf");
        if (rc == 0)
            ub_ctx_hosts(ub, "/etc/hosts");
    }
    if (rc != 0) {
        snprintf(err, errlen, "dns setup: %s", ub_strerror(rc));
        return -1;
    }
    if ((rc = ub_ctx_async(ub, 1)) != 0) {
        snprintf(err, errlen, "dns setup: %s", ub_strerror(rc));
        return -1;
    }
    if (server != NULL && (rc = forward_everything()) != 0) {
        snprintf(err, errlen, "dns setup: %s", ub_strerror(rc));
        return -1;
    }
    ub_watch = fdwatch_new(ub_fd(ub), on_ub_readable, NULL);
    return 0;
}

void dns_free(void)
{
    fdwatch_free(ub_watch);
    ub_watch = NULL;
    if (ub)
        ub_ctx_delete(ub);
    ub = NULL;
}

/* ---- wire-format parsing ---- */

bool dns_parse_name(const unsigned char *p, size_t len, size_t *off, char *out, size_t cap)
{
    size_t o = 0, i = *off;
    for (;;) {
        if (i >= len)
            return false;
        unsigned l = p[i++];
        if (l == 0)
            break;
        if (l > 63 || i + l > len)
            return false; /* compression pointers never appear in libunbound's rdata */
        if (o + l + 2 > cap)
            return false;
        if (o > 0)
            out[o++] = '.';
        for (unsigned k = 0; k < l; k++) {
            unsigned char c = p[i + k];
            /* a host name never holds these; refuse rather than carry them into logs */
            if (c <= ' ' || c >= 0x7f || c == '.')
                return false;
            out[o++] = (char)c;
        }
        i += l;
    }
    if (o == 0) {
        if (cap < 2)
            return false;
        out[o++] = '.'; /* the root: "." (a null MX points here) */
    }
    out[o] = '\0';
    *off = i;
    return true;
}

bool dns_parse_mx(const unsigned char *p, size_t len, struct dns_mx *out)
{
    if (len < 3)
        return false;
    out->pref = (unsigned)p[0] << 8 | p[1];
    size_t off = 2;
    return dns_parse_name(p, len, &off, out->host, sizeof out->host) && off == len;
}

static void free_answer(struct dns_answer *a)
{
    free(a->mx);
    free(a->addrs);
    if (a->names)
        for (size_t i = 0; i < a->n; i++)
            free(a->names[i]);
    free(a->names);
}

static void parse_records(struct ub_result *r, struct dns_answer *a)
{
    size_t count = 0;
    while (r->data[count])
        count++;
    if (a->rrtype == DNS_RR_MX)
        a->mx = xcalloc(count ? count : 1, sizeof *a->mx);
    else if (a->rrtype == DNS_RR_A || a->rrtype == DNS_RR_AAAA)
        a->addrs = xcalloc(count ? count : 1, sizeof *a->addrs);
    else if (a->rrtype == DNS_RR_PTR)
        a->names = xcalloc(count ? count : 1, sizeof *a->names);
    for (size_t i = 0; i < count; i++) {
        const unsigned char *d = (const unsigned char *)r->data[i];
        size_t len = (size_t)r->len[i];
        if (a->rrtype == DNS_RR_MX) {
            if (dns_parse_mx(d, len, &a->mx[a->n]))
                a->n++;
        } else if (a->rrtype == DNS_RR_A && len == 4) {
            struct sockaddr_in *sin = (struct sockaddr_in *)&a->addrs[a->n++];
            sin->sin_family = AF_INET;
            memcpy(&sin->sin_addr, d, 4);
        } else if (a->rrtype == DNS_RR_AAAA && len == 16) {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->addrs[a->n++];
            sin6->sin6_family = AF_INET6;
            memcpy(&sin6->sin6_addr, d, 16);
        } else if (a->rrtype == DNS_RR_PTR) {
            char name[256];
            size_t off = 0;
            if (dns_parse_name(d, len, &off, name, sizeof name))
                a->names[a->n++] = xstrdup(name);
        }
    }
    if (a->n == 0)
        a->status = DNS_NODATA; /* records we could not use count as none */
}

/* ---- plain lookups ---- */

static void query_free(struct dns_query *q)
{
    timer_free(q->timer);
    free(q);
}

static void deliver(struct dns_query *q, struct dns_answer *a)
{
    dns_cb cb = q->cb;
    void *arg = q->arg;
    query_free(q);
    cb(arg, a);
    free_answer(a);
}

static void on_ub_result(void *mydata, int err, struct ub_result *r)
{
    struct dns_query *q = mydata;
    q->active = false;
    timer_stop(q->timer);
    struct dns_answer a = {.rrtype = q->rrtype};
    if (err != 0) {
        a.status = DNS_TEMPFAIL;
        a.why = ub_strerror(err);
    } else if (r->rcode == 3) {
        a.status = DNS_NXDOMAIN;
    } else if (r->rcode != 0) {
        a.status = DNS_TEMPFAIL;
        a.why = r->rcode == 2 ? "SERVFAIL" : "DNS server error";
    } else if (r->bogus) {
        a.status = DNS_TEMPFAIL;
        a.why = "DNSSEC validation failed";
    } else if (!r->havedata) {
        a.status = DNS_NODATA;
    } else {
        a.status = DNS_OK;
        a.secure = r->secure != 0;
        parse_records(r, &a);
    }
    if (r)
        ub_resolve_free(r);
    deliver(q, &a);
}

static void on_query_timeout(void *arg)
{
    struct dns_query *q = arg;
    if (q->active) {
        ub_cancel(ub, q->async_id);
        q->active = false;
    }
    struct dns_answer a = {.rrtype = q->rrtype, .status = DNS_TEMPFAIL};
    a.why = q->fail_why ? q->fail_why : "DNS timeout";
    deliver(q, &a);
}

struct dns_query *dns_lookup(const char *name, int rrtype, uint64_t timeout_ms, dns_cb cb,
                             void *arg)
{
    if (ub == NULL)
        fatal("dns_lookup before dns_init");
    struct dns_query *q = xcalloc(1, sizeof *q);
    q->cb = cb;
    q->arg = arg;
    q->rrtype = rrtype;
    q->timer = timer_new(on_query_timeout, q);
    int rc = ub_resolve_async(ub, name, rrtype, 1 /* IN */, q, on_ub_result, &q->async_id);
    if (rc != 0) {
        q->fail_why = ub_strerror(rc);
        timer_arm(q->timer, 0); /* report the failure from the loop, not from here */
    } else {
        q->active = true;
        timer_arm(q->timer, timeout_ms);
    }
    return q;
}

void dns_cancel(struct dns_query *q)
{
    if (q == NULL)
        return;
    if (q->reverse) {
        dns_cancel(q->sub);
    } else if (q->active) {
        ub_cancel(ub, q->async_id);
    }
    query_free(q);
}

/* ---- forward-confirmed reverse lookups ---- */

bool dns_reverse_name(const struct sockaddr *sa, char *out, size_t cap)
{
    char ip[NETADDR_IP_MAX];
    sockaddr_format(sa, ip, sizeof ip, NULL);
    unsigned char b[16];
    if (inet_pton(AF_INET, ip, b) == 1) {
        return (size_t)snprintf(out, cap, "%u.%u.%u.%u.in-addr.arpa", b[3], b[2], b[1], b[0]) <
               cap;
    }
    if (inet_pton(AF_INET6, ip, b) != 1 || cap < 64 + 9)
        return false;
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 15; i >= 0; i--) {
        out[o++] = hex[b[i] & 15];
        out[o++] = '.';
        out[o++] = hex[b[i] >> 4];
        out[o++] = '.';
    }
    snprintf(out + o, cap - o, "ip6.arpa");
    return true;
}

static void reverse_finish(struct dns_query *r, const char *name)
{
    void (*cb)(void *, const char *) = r->rcb;
    void *arg = r->arg;
    char copy[sizeof r->name]; /* name may point into r, which goes first */
    if (name != NULL)
        snprintf(copy, sizeof copy, "%s", name);
    query_free(r);
    cb(arg, name != NULL ? copy : NULL);
}

static bool same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
    char x[NETADDR_IP_MAX], y[NETADDR_IP_MAX];
    sockaddr_format(a, x, sizeof x, NULL);
    sockaddr_format(b, y, sizeof y, NULL);
    return strcmp(x, y) == 0;
}

static void reverse_forward_done(void *arg, const struct dns_answer *a)
{
    struct dns_query *r = arg;
    r->sub = NULL;
    bool confirmed = false;
    for (size_t i = 0; a->status == DNS_OK && i < a->n; i++)
        confirmed |= same_ip((const struct sockaddr *)&a->addrs[i],
                             (const struct sockaddr *)&r->sa);
    reverse_finish(r, confirmed ? r->name : NULL);
}

static void reverse_ptr_done(void *arg, const struct dns_answer *a)
{
    struct dns_query *r = arg;
    r->sub = NULL;
    if (a->status != DNS_OK || a->n == 0) {
        reverse_finish(r, NULL);
        return;
    }
    snprintf(r->name, sizeof r->name, "%s", a->names[0]);
    char ip[NETADDR_IP_MAX];
    sockaddr_format((const struct sockaddr *)&r->sa, ip, sizeof ip, NULL);
    int type = strchr(ip, ':') ? DNS_RR_AAAA : DNS_RR_A;
    /* the overall timer of r still bounds the whole exchange */
    r->sub = dns_lookup(r->name, type, 60000, reverse_forward_done, r);
}

static void reverse_timeout(void *arg)
{
    struct dns_query *r = arg;
    dns_cancel(r->sub);
    r->sub = NULL;
    reverse_finish(r, NULL);
}

struct dns_query *dns_reverse(const struct sockaddr *sa, uint64_t timeout_ms,
                              void (*cb)(void *arg, const char *name), void *arg)
{
    struct dns_query *r = xcalloc(1, sizeof *r);
    r->reverse = true;
    r->rcb = cb;
    r->arg = arg;
    memcpy(&r->sa, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                 : sizeof(struct sockaddr_in));
    r->timer = timer_new(reverse_timeout, r);
    char qname[128];
    if (!dns_reverse_name(sa, qname, sizeof qname)) {
        timer_arm(r->timer, 0);
        return r;
    }
    timer_arm(r->timer, timeout_ms);
    r->sub = dns_lookup(qname, DNS_RR_PTR, timeout_ms, reverse_ptr_done, r);
    return r;
}
