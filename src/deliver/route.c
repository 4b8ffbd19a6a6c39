/*
 * route: see route.h.
 */
#include "deliver/route.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "lib/idna.h"
#include "lib/strutil.h"

const char *route_kind_name(enum route_kind k)
{
    switch (k) {
    case ROUTE_MX:
        return "mx";
    case ROUTE_RELAYHOST:
        return "relayhost";
    case ROUTE_TRANSPORT:
        return "transport";
    }
    return "?";
}

static bool is_numeric(const char *s)
{
    unsigned char b[16];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* A host or domain name as DNS can carry it: letters, digits, '-', '_' and dots, no empty
 * label (so no control bytes or spaces reach queries and logs). */
static bool valid_name(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n >= ROUTE_NAME_MAX - 1)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_'))
            return false;
        if (++label > 63)
            return false;
    }
    return true;
}

bool route_parse_nexthop(const char *s, unsigned default_port, struct route *out)
{
    char host[ROUTE_NAME_MAX];
    unsigned port;
    if (!hostport_split(s, default_port, host, sizeof host, &port))
        return false;
    bool bracketed = s[0] == '[';
    out->literal = is_numeric(host);
    if (!out->literal && !valid_name(host))
        return false;
    /* a trailing dot names the same host; drop it so keys and SNI agree */
    size_t n = strlen(host);
    if (!out->literal && host[n - 1] == '.')
        host[n - 1] = '\0';
    str_lower(host);
    snprintf(out->name, sizeof out->name, "%s", host);
    out->port = port;
    out->mx_lookup = !bracketed && !out->literal;
    return true;
}

static void make_key(struct route *r)
{
    /* kind, name, port, lookup style and TLS policy: two routes that differ in any of these
     * must not share a connection */
    snprintf(r->key, sizeof r->key, "%s:%s%s%s:%u:%s%s", route_kind_name(r->kind),
             r->mx_lookup ? "" : "[", r->name, r->mx_lookup ? "" : "]", r->port,
             conf_tls_policy_name(r->tls), r->auth ? ":auth" : "");
}

bool route_for_domain(const struct conf *c, const char *domain, struct route *out, char *err,
                      size_t errlen)
{
    memset(out, 0, sizeof *out);
    /* SMTPUTF8 mail may name a domain in UTF-8; DNS and [transport] keys know it by its
     * A-labels. A name IDNA refuses still goes to a relayhost, which may know better. */
    char alabels[ROUTE_NAME_MAX], idna_why[128] = "";
    if (idna_is_utf8_name(domain) &&
        idna_to_ascii(domain, alabels, sizeof alabels, idna_why, sizeof idna_why) == 0)
        domain = alabels;
    const struct transport_conf *t = conf_find_transport(c, domain);
    if (t != NULL) {
        out->kind = ROUTE_TRANSPORT;
        if (!route_parse_nexthop(t->nexthop, c->mx_port, out)) {
            snprintf(err, errlen, "[transport %s]: nexthop %s does not parse", t->domain,
                     t->nexthop);
            return false;
        }
        out->tls = t->tls;
        make_key(out);
        return true;
    }
    if (c->relayhost != NULL) {
        out->kind = ROUTE_RELAYHOST;
        if (!route_parse_nexthop(c->relayhost, c->mx_port, out)) {
            snprintf(err, errlen, "relayhost %s does not parse", c->relayhost);
            return false;
        }
        out->tls = c->smtp_tls;
        out->auth = c->relayhost_user != NULL && c->relayhost_password != NULL;
        if (out->auth && out->tls < TLS_POLICY_ENCRYPT)
            out->tls = TLS_POLICY_ENCRYPT;
        make_key(out);
        return true;
    }
    out->kind = ROUTE_MX;
    /* an address literal domain ("user@[192.0.2.1]") goes to that address */
    size_t n = strlen(domain);
    if (n >= 2 && domain[0] == '[' && domain[n - 1] == ']') {
        char lit[ROUTE_NAME_MAX];
        const char *ip = domain + 1;
        size_t iplen = n - 2;
        if (iplen > 5 && str_iprefix(ip, "IPv6:")) {
            ip += 5;
            iplen -= 5;
        }
        if (iplen >= sizeof lit) {
            snprintf(err, errlen, "address literal too long");
            return false;
        }
        memcpy(lit, ip, iplen);
        lit[iplen] = '\0';
        if (!is_numeric(lit)) {
            snprintf(err, errlen, "bad address literal %s", domain);
            return false;
        }
        snprintf(out->name, sizeof out->name, "%s", lit);
        out->literal = true;
    } else {
        if (idna_why[0] != '\0') {
            snprintf(err, errlen, "bad domain name (%s)", idna_why);
            return false;
        }
        if (!valid_name(domain)) {
            snprintf(err, errlen, "bad domain name");
            return false;
        }
        snprintf(out->name, sizeof out->name, "%s", domain);
        size_t m = strlen(out->name);
        if (out->name[m - 1] == '.')
            out->name[m - 1] = '\0';
        str_lower(out->name);
        out->mx_lookup = true;
    }
    out->port = c->mx_port;
    out->tls = c->smtp_tls;
    make_key(out);
    return true;
}
