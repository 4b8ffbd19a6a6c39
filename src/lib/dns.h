/*
 * dns: asynchronous DNS lookups (libunbound behind a small API), driven by the event loop:
 * no call here ever blocks. Answers are parsed into plain values (MX preference and host,
 * addresses, names). Each query has its own timeout; a query can be cancelled, and then
 * its callback never runs.
 *
 * dns_init() selects the server: "ip:port" from the configuration key `dns`, or the
 * resolvers of /etc/resolv.conf. DNSSEC: the `secure` flag is set only when a trust
 * anchor is configured and the answer validated.
 */
#ifndef TERN_DNS_H
#define TERN_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define DNS_RR_A 1
#define DNS_RR_PTR 12
#define DNS_RR_MX 15
#define DNS_RR_AAAA 28
#define DNS_RR_TLSA 52

enum dns_status {
    DNS_OK,       /* records in the answer */
    DNS_NODATA,   /* the name exists, no records of this type */
    DNS_NXDOMAIN, /* the name does not exist */
    DNS_TEMPFAIL, /* timeout, SERVFAIL, network error: try again later */
};

struct dns_mx {
    unsigned pref;
    char host[256];
};

struct dns_answer {
    enum dns_status status;
    bool secure;
    int rrtype;
    size_t n;
    struct dns_mx *mx;                /* DNS_RR_MX */
    struct sockaddr_storage *addrs;   /* DNS_RR_A / DNS_RR_AAAA (port 0) */
    char **names;                     /* DNS_RR_PTR */
    const char *why;                  /* for DNS_TEMPFAIL */
};

struct dns_query;
typedef void (*dns_cb)(void *arg, const struct dns_answer *a);

int dns_init(const char *server, char *err, size_t errlen);
void dns_free(void);
/* Start a lookup; the callback runs later on the loop thread (never from inside this call). */
struct dns_query *dns_lookup(const char *name, int rrtype, uint64_t timeout_ms, dns_cb cb,
                             void *arg);
void dns_cancel(struct dns_query *q);

/* Forward-confirmed reverse DNS of an address: cb gets the name, or NULL if there is none,
 * it does not resolve back to the address, or the lookups did not finish in time. */
struct dns_query *dns_reverse(const struct sockaddr *sa, uint64_t timeout_ms,
                              void (*cb)(void *arg, const char *name), void *arg);

/* The reverse-lookup name of an address ("4.3.2.1.in-addr.arpa", nibbles for IPv6). */
bool dns_reverse_name(const struct sockaddr *sa, char *out, size_t cap);
/* Parse wire-format rdata (for tests): a domain name, an MX record. */
bool dns_parse_name(const unsigned char *p, size_t len, size_t *off, char *out, size_t cap);
bool dns_parse_mx(const unsigned char *p, size_t len, struct dns_mx *out);

#endif
