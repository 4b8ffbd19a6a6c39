/*
 * netaddr: numeric socket addresses, CIDR lists and host:port strings. Pure functions.
 * IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are treated as the IPv4 address they carry.
 */
#ifndef TERN_NETADDR_H
#define TERN_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define NETADDR_IP_MAX 46 /* INET6_ADDRSTRLEN */

struct cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix;
};

struct cidr_list {
    struct cidr *v;
    size_t n;
};

/* "192.0.2.0/24", "2001:db8::/32", or a bare address (a host route). */
bool cidr_parse(const char *s, struct cidr *out);
/* A list separated by commas and/or white space; an empty string is an empty list. */
bool cidr_list_parse(const char *s, struct cidr_list *out, char *err, size_t errlen);
void cidr_list_free(struct cidr_list *l);
bool cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa);

/* Numeric address text (IPv4-mapped shown as IPv4) and port of a socket address. */
void sockaddr_format(const struct sockaddr *sa, char *ip, size_t iplen, unsigned *port);
bool sockaddr_is_loopback(const struct sockaddr *sa);

/* Split "host:port", "[v6addr]:port" or plain "host" (port = default_port). */
bool hostport_split(const char *s, unsigned default_port, char *host, size_t hostlen,
                    unsigned *port);

#endif
