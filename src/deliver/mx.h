/*
 * mx: asynchronous resolution of a route (route.h) into the ordered list of addresses to
 * try, through lib/dns (libunbound; nothing here blocks).
 *
 *   - mail domain (RFC 5321 §5.1): MX records sorted by preference, random order among
 *     equal preferences; hosts at or above our own preference are dropped (we are one of
 *     the MX hosts: a loop otherwise); no MX records: the domain itself, as an implicit MX
 *     of preference 0; NXDOMAIN: the domain does not exist; a null MX (RFC 7505: one MX
 *     record whose exchange is "."): the domain accepts no mail.
 *   - host name: its A and AAAA records.
 *   - numeric address: itself.
 *
 * Each host is resolved with A and AAAA queries in parallel (all hosts at once). The
 * address list is in host order; within a host, IPv6 and IPv4 addresses alternate
 * (starting with IPv6), so one broken family costs one attempt, not all of them.
 *
 * Bounds: MX_HOSTS_MAX hosts, MX_ADDRS_MAX addresses in all, MX_ADDRS_PER_HOST per host.
 */
#ifndef TERN_MX_H
#define TERN_MX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "deliver/route.h"
#include "lib/dns.h"

#define MX_HOSTS_MAX 10
#define MX_ADDRS_MAX 20
#define MX_ADDRS_PER_HOST 4
#define MX_DNS_TIMEOUT_MS 30000

enum mx_status {
    MX_OK,       /* addresses to try */
    MX_TEMPFAIL, /* DNS failure, or no host has an address: try later */
    MX_NXDOMAIN, /* the mail domain does not exist */
    MX_NULLMX,   /* RFC 7505: the domain accepts no mail */
    MX_NOHOST,   /* the domain exists but has neither MX nor A/AAAA records */
    MX_LOOP,     /* we are the best MX host for the domain */
};

struct mx_host {
    char name[ROUTE_NAME_MAX];
    unsigned pref;
    bool implicit; /* the domain itself (no MX records) */
};

struct mx_addr {
    struct sockaddr_storage sa; /* port set */
    socklen_t len;
    unsigned host; /* index into hosts */
};

struct mx_result {
    enum mx_status status;
    char why[400]; /* for everything but MX_OK */
    size_t nhosts;
    struct mx_host hosts[MX_HOSTS_MAX];
    size_t naddrs;
    struct mx_addr addrs[MX_ADDRS_MAX];
};

struct mx_query;
typedef void (*mx_cb)(void *arg, const struct mx_result *r);

/* Resolve r; cb runs later on the loop thread (never inside this call). myname is our own
 * host name (to spot ourselves among MX hosts). */
struct mx_query *mx_resolve(const struct route *r, const char *myname, mx_cb cb, void *arg);
/* Cancel; the callback will not run. */
void mx_cancel(struct mx_query *q);

/* ---- the pure parts (for tests) ---- */

/* Random number in [0, n) for the shuffle; arc4random_uniform unless a test replaces it. */
void mx_set_random(uint32_t (*rnd)(uint32_t n));
/* Turn MX records into the ordered host list. Returns the status: MX_OK (hosts filled),
 * MX_NULLMX or MX_LOOP. */
enum mx_status mx_order(const struct dns_mx *in, size_t n, const char *myname,
                        struct mx_host *out, size_t max, size_t *nout);
/* Add a host's addresses (v6 and v4 alternating, at most MX_ADDRS_PER_HOST and up to
 * MX_ADDRS_MAX in all) with port; returns how many were added. */
size_t mx_add_addrs(struct mx_result *res, unsigned host, const struct sockaddr_storage *v6,
                    size_t n6, const struct sockaddr_storage *v4, size_t n4, unsigned port);

#endif
