/*
 * route: where mail for a recipient domain goes next. Pure function of the configuration.
 *
 *   1. [transport DOMAIN] for the domain: its nexthop and tls policy;
 *   2. else relayhost, if set: every remote domain goes there;
 *   3. else the domain's MX hosts (RFC 5321 §5.1) on mx_port, with smtp_tls.
 *
 * A nexthop (relayhost or transport) follows Postfix's syntax: "[name]:port" names a host
 * (its A/AAAA records are used), "name:port" is looked up as a mail domain first (MX, then
 * A/AAAA), a numeric address (bracketed or not) is used as it is.
 *
 * Failure semantics differ by kind, and that is why the kind is kept: when the recipient's
 * own domain does not exist or has a null MX, mail to it can never succeed (bounce); when a
 * configured nexthop cannot be found, that is our configuration's fault (defer, never
 * bounce).
 *
 * TLS: relayhost with credentials is at least `encrypt` (credentials never go in clear).
 */
#ifndef TERN_ROUTE_H
#define TERN_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

#define ROUTE_NAME_MAX 256
#define ROUTE_KEY_MAX 320

enum route_kind {
    ROUTE_MX,        /* the recipient domain's own MX hosts */
    ROUTE_RELAYHOST, /* the configured smarthost */
    ROUTE_TRANSPORT, /* a [transport DOMAIN] nexthop */
};

struct route {
    enum route_kind kind;
    char name[ROUTE_NAME_MAX]; /* domain or host name, or numeric address; lowercased */
    unsigned port;
    bool mx_lookup; /* resolve name as a mail domain (MX, then A/AAAA) */
    bool literal;   /* name is a numeric address: no DNS */
    enum tls_policy tls;
    bool auth; /* AUTH with relayhost_user/relayhost_password */
    /* Jobs with equal keys may share connections and transactions. */
    char key[ROUTE_KEY_MAX];
};

/* Route for recipient domain (without '@'). false if it cannot be routed (an empty or
 * over-long domain, or a nexthop that does not parse), with a reason in err. */
bool route_for_domain(const struct conf *c, const char *domain, struct route *out, char *err,
                      size_t errlen);
/* Parse a nexthop ("[host]:port", "host:port", "ip:port", "[ipv6]:port"). */
bool route_parse_nexthop(const char *s, unsigned default_port, struct route *out);
const char *route_kind_name(enum route_kind k);

#endif
