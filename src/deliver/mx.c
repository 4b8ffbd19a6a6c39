/*
 * mx: see mx.h.
 *
 * One query object holds everything: the MX lookup, then up to MX_HOSTS_MAX pairs of A and
 * AAAA lookups that run together; when the last one answers, the address list is built in
 * host order and the callback runs. Cancelling cancels every lookup still in flight.
 */
#include "deliver/mx.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/loop.h"
#include "lib/mem.h"
#include "lib/strutil.h"

struct hostq {
    struct mx_query *q;
    struct dns_query *a, *aaaa;
    enum dns_status st_a, st_aaaa;
    const char *why; /* static text of a temporary failure */
    size_t n4, n6;
    struct sockaddr_storage v4[MX_ADDRS_PER_HOST], v6[MX_ADDRS_PER_HOST];
};

struct mx_query {
    struct route route;
    char myname[ROUTE_NAME_MAX];
    mx_cb cb;
    void *arg;
    struct dns_query *mxq;
    struct hostq hq[MX_HOSTS_MAX];
    size_t pending; /* host lookups in flight */
    struct timer *t; /* reports results known without DNS from the loop */
    struct mx_result res;
};

static uint32_t default_random(uint32_t n)
{
    return arc4random_uniform(n);
}

static uint32_t (*random_fn)(uint32_t) = default_random;

void mx_set_random(uint32_t (*rnd)(uint32_t n))
{
    random_fn = rnd ? rnd : default_random;
}

/* ---- pure parts ---- */

static int cmp_pref(const void *a, const void *b)
{
    const struct dns_mx *x = a, *y = b;
    return x->pref < y->pref ? -1 : x->pref > y->pref;
}

enum mx_status mx_order(const struct dns_mx *in, size_t n, const char *myname,
                        struct mx_host *out, size_t max, size_t *nout)
{
    *nout = 0;
    /* work on a bounded copy: a hostile zone could list thousands of records */
    size_t cap = n < 256 ? n : 256;
    struct dns_mx *v = xcalloc(cap ? cap : 1, sizeof *v);
    size_t m = 0, nulls = 0;
    for (size_t i = 0; i < n && m < cap; i++) {
        if (strcmp(in[i].host, ".") == 0 || in[i].host[0] == '\0') {
            nulls++; /* RFC 7505 null MX; ignored when real hosts are listed too */
            continue;
        }
        v[m] = in[i];
        size_t len = strlen(v[m].host);
        if (len > 1 && v[m].host[len - 1] == '.')
            v[m].host[len - 1] = '\0';
        str_lower(v[m].host);
        m++;
    }
    if (m == 0) {
        free(v);
        return nulls > 0 ? MX_NULLMX : MX_NOHOST;
    }
    qsort(v, m, sizeof *v, cmp_pref);
    /* RFC 5321 §5.1: if we are listed, only hosts strictly better than us may be used
     * (not those of our own preference either: they may route back to us) */
    for (size_t i = 0; myname && myname[0] && i < m; i++)
        if (str_ieq(v[i].host, myname)) {
            unsigned ours = v[i].pref;
            m = 0;
            while (v[m].pref < ours)
                m++;
            break;
        }
    if (m == 0) {
        free(v);
        return MX_LOOP;
    }
    /* shuffle each run of equal preferences (Fisher-Yates), RFC 5321 §5.1 */
    for (size_t start = 0; start < m;) {
        size_t end = start + 1;
        while (end < m && v[end].pref == v[start].pref)
            end++;
        for (size_t i = end - 1; i > start; i--) {
            size_t j = start + random_fn((uint32_t)(i - start + 1));
            struct dns_mx tmp = v[i];
            v[i] = v[j];
            v[j] = tmp;
        }
        start = end;
    }
    for (size_t i = 0; i < m && *nout < max; i++) {
        bool dup = false;
        for (size_t k = 0; k < *nout && !dup; k++)
            dup = strcmp(out[k].name, v[i].host) == 0;
        if (dup)
            continue;
        struct mx_host *h = &out[(*nout)++];
        snprintf(h->name, sizeof h->name, "%s", v[i].host);
        h->pref = v[i].pref;
        h->implicit = false;
    }
    free(v);
    return MX_OK;
}

static void set_port(struct sockaddr_storage *ss, socklen_t *len, unsigned port)
{
    if (ss->ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
        *len = sizeof(struct sockaddr_in6);
    } else {
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
        *len = sizeof(struct sockaddr_in);
    }
}

static bool have_addr(const struct mx_result *res, const struct sockaddr_storage *ss)
{
    for (size_t i = 0; i < res->naddrs; i++) {
        const struct sockaddr_storage *o = &res->addrs[i].sa;
        if (o->ss_family != ss->ss_family)
            continue;
        if (ss->ss_family == AF_INET &&
            memcmp(&((const struct sockaddr_in *)o)->sin_addr,
                   &((const struct sockaddr_in *)ss)->sin_addr, 4) == 0)
            return true;
        if (ss->ss_family == AF_INET6 &&
            memcmp(&((const struct sockaddr_in6 *)o)->sin6_addr,
                   &((const struct sockaddr_in6 *)ss)->sin6_addr, 16) == 0)
            return true;
    }
    return false;
}

size_t mx_add_addrs(struct mx_result *res, unsigned host, const struct sockaddr_storage *v6,
                    size_t n6, const struct sockaddr_storage *v4, size_t n4, unsigned port)
{
    size_t added = 0, i6 = 0, i4 = 0;
    while ((i6 < n6 || i4 < n4) && added < MX_ADDRS_PER_HOST && res->naddrs < MX_ADDRS_MAX) {
        const struct sockaddr_storage *pick;
        /* alternate families, IPv6 first, so a dead family costs one try per host */
        if (i6 < n6 && (i4 >= n4 || i6 <= i4))
            pick = &v6[i6++];
        else
            pick = &v4[i4++];
        /* two MX names for one address: trying it twice gains nothing */
        if (have_addr(res, pick))
            continue;
        struct mx_addr *a = &res->addrs[res->naddrs++];
        a->sa = *pick;
        set_port(&a->sa, &a->len, port);
        a->host = host;
        added++;
    }
    return added;
}

/* ---- the asynchronous query ---- */

static void finish(struct mx_query *q)
{
    mx_cb cb = q->cb;
    void *arg = q->arg;
    struct mx_result *res = xmalloc(sizeof *res);
    *res = q->res;
    mx_cancel(q);
    cb(arg, res);
    free(res);
}

static void fail(struct mx_query *q, enum mx_status st, const char *fmt, ...) PRINTF_LIKE(3, 4);
static void fail(struct mx_query *q, enum mx_status st, const char *fmt, ...)
{
    q->res.status = st;
    q->res.naddrs = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->res.why, sizeof q->res.why, fmt, ap);
    va_end(ap);
    finish(q);
}

static void hosts_done(struct mx_query *q)
{
    struct mx_result *res = &q->res;
    res->naddrs = 0;
    bool temp = false, all_nx = true;
    const char *why = NULL;
    for (size_t i = 0; i < res->nhosts; i++) {
        struct hostq *h = &q->hq[i];
        mx_add_addrs(res, (unsigned)i, h->v6, h->n6, h->v4, h->n4, q->route.port);
        if (h->st_a == DNS_TEMPFAIL || h->st_aaaa == DNS_TEMPFAIL) {
            temp = true;
            why = h->why;
        }
        if (h->st_a != DNS_NXDOMAIN || h->st_aaaa != DNS_NXDOMAIN)
            all_nx = false;
    }
    if (res->naddrs > 0) {
        res->status = MX_OK;
        finish(q);
        return;
    }
    const char *name = q->route.name;
    if (temp)
        fail(q, MX_TEMPFAIL, "cannot resolve the hosts of %s: %s", name, why ? why : "DNS error");
    else if (res->nhosts == 1 && (res->hosts[0].implicit || !q->route.mx_lookup))
        if (all_nx)
            fail(q, MX_NXDOMAIN, "host or domain name not found: %s", name);
        else
            fail(q, MX_NOHOST, "%s has no %sA or AAAA record", name,
                 q->route.mx_lookup ? "MX, " : "");
    else
        fail(q, MX_TEMPFAIL, "no MX host of %s has an address", name);
}

static void on_addr(void *arg, const struct dns_answer *a)
{
    struct hostq *h = arg;
    struct mx_query *q = h->q;
    bool v6 = a->rrtype == DNS_RR_AAAA;
    if (v6) {
        h->aaaa = NULL;
        h->st_aaaa = a->status;
    } else {
        h->a = NULL;
        h->st_a = a->status;
    }
    if (a->status == DNS_TEMPFAIL)
        h->why = a->why;
    for (size_t i = 0; a->status == DNS_OK && i < a->n; i++) {
        if (a->addrs[i].ss_family == AF_INET6 && v6 && h->n6 < MX_ADDRS_PER_HOST)
            h->v6[h->n6++] = a->addrs[i];
        else if (a->addrs[i].ss_family == AF_INET && !v6 && h->n4 < MX_ADDRS_PER_HOST)
            h->v4[h->n4++] = a->addrs[i];
    }
    if (--q->pending == 0)
        hosts_done(q);
}

static void start_hosts(struct mx_query *q)
{
    q->pending = 2 * q->res.nhosts;
    for (size_t i = 0; i < q->res.nhosts; i++) {
        struct hostq *h = &q->hq[i];
        h->q = q;
        h->st_a = h->st_aaaa = DNS_NODATA;
    }
    /* dns_lookup never calls back from inside: every query starts before any answer */
    for (size_t i = 0; i < q->res.nhosts; i++) {
        struct hostq *h = &q->hq[i];
        h->a = dns_lookup(q->res.hosts[i].name, DNS_RR_A, MX_DNS_TIMEOUT_MS, on_addr, h);
        h->aaaa = dns_lookup(q->res.hosts[i].name, DNS_RR_AAAA, MX_DNS_TIMEOUT_MS, on_addr, h);
    }
}

static void single_host(struct mx_query *q, bool implicit)
{
    q->res.nhosts = 1;
    snprintf(q->res.hosts[0].name, sizeof q->res.hosts[0].name, "%s", q->route.name);
    q->res.hosts[0].pref = 0;
    q->res.hosts[0].implicit = implicit;
    start_hosts(q);
}

static void on_mx(void *arg, const struct dns_answer *a)
{
    struct mx_query *q = arg;
    q->mxq = NULL;
    const char *name = q->route.name;
    switch (a->status) {
    case DNS_NXDOMAIN:
        fail(q, MX_NXDOMAIN, "host or domain name not found: %s", name);
        return;
    case DNS_TEMPFAIL:
        fail(q, MX_TEMPFAIL, "MX lookup of %s failed: %s", name, a->why ? a->why : "DNS error");
        return;
    case DNS_NODATA:
        single_host(q, true); /* RFC 5321 §5.1: the domain itself is the implicit MX */
        return;
    case DNS_OK:
        break;
    }
    enum mx_status st =
        mx_order(a->mx, a->n, q->myname, q->res.hosts, MX_HOSTS_MAX, &q->res.nhosts);
    if (st == MX_NULLMX)
        fail(q, MX_NULLMX, "%s does not accept mail (null MX)", name);
    else if (st == MX_LOOP)
        fail(q, MX_LOOP, "mail for %s loops back to myself (%s is its best MX)", name, q->myname);
    else if (st == MX_NOHOST)
        single_host(q, true); /* records we could not use count as none */
    else
        start_hosts(q);
}

static void on_literal(void *arg)
{
    finish(arg);
}

struct mx_query *mx_resolve(const struct route *r, const char *myname, mx_cb cb, void *arg)
{
    struct mx_query *q = xcalloc(1, sizeof *q);
    q->route = *r;
    snprintf(q->myname, sizeof q->myname, "%s", myname ? myname : "");
    q->cb = cb;
    q->arg = arg;
    if (r->literal) {
        struct sockaddr_storage ss = {0};
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        q->res.nhosts = 1;
        snprintf(q->res.hosts[0].name, sizeof q->res.hosts[0].name, "%s", r->name);
        if (inet_pton(AF_INET, r->name, &sin->sin_addr) == 1) {
            ss.ss_family = AF_INET;
            mx_add_addrs(&q->res, 0, NULL, 0, &ss, 1, r->port);
        } else if (inet_pton(AF_INET6, r->name, &sin6->sin6_addr) == 1) {
            ss.ss_family = AF_INET6;
            mx_add_addrs(&q->res, 0, &ss, 1, NULL, 0, r->port);
        }
        if (q->res.naddrs == 0) {
            q->res.status = MX_TEMPFAIL;
            snprintf(q->res.why, sizeof q->res.why, "bad address %s", r->name);
        }
        q->t = timer_new(on_literal, q);
        timer_arm(q->t, 0);
    } else if (r->mx_lookup) {
        q->mxq = dns_lookup(r->name, DNS_RR_MX, MX_DNS_TIMEOUT_MS, on_mx, q);
    } else {
        single_host(q, false);
    }
    return q;
}

void mx_cancel(struct mx_query *q)
{
    if (q == NULL)
        return;
    dns_cancel(q->mxq);
    for (size_t i = 0; i < MX_HOSTS_MAX; i++) {
        dns_cancel(q->hq[i].a);
        dns_cancel(q->hq[i].aaaa);
    }
    timer_free(q->t);
    free(q);
}
