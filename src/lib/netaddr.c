/* netaddr: see netaddr.h. */
#include "lib/netaddr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mem.h"

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool cidr_parse(const char *s, struct cidr *out)
{
    char text[64];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof text)
        return false;
    memcpy(text, s, alen);
    text[alen] = '\0';
    memset(out, 0, sizeof *out);
    unsigned maxbits;
    if (inet_pton(AF_INET, text, out->addr) == 1) {
        out->family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, text, out->addr) == 1) {
        out->family = AF_INET6;
        maxbits = 128;
    } else {
        return false;
    }
    out->prefix = maxbits;
    if (slash) {
        char *end;
        if (!isdigit((unsigned char)slash[1]))
            return false;
        unsigned long p = strtoul(slash + 1, &end, 10);
        if (*end != '\0' || p > maxbits)
            return false;
        out->prefix = (unsigned)p;
    }
    return true;
}

bool cidr_list_parse(const char *s, struct cidr_list *out, char *err, size_t errlen)
{
    out->v = NULL;
    out->n = 0;
    size_t cap = 0;
    while (*s) {
        while (*s == ',' || isspace((unsigned char)*s))
            s++;
        if (*s == '\0')
            break;
        size_t len = strcspn(s, ", \t");
        char item[64];
        if (len >= sizeof item) {
            snprintf(err, errlen, "network \"%.*s...\" is too long", 20, s);
            cidr_list_free(out);
            return false;
        }
        memcpy(item, s, len);
        item[len] = '\0';
        struct cidr c;
        if (!cidr_parse(item, &c)) {
            snprintf(err, errlen, "\"%s\" is not an address or address/prefix", item);
            cidr_list_free(out);
            return false;
        }
        out->v = xgrow(out->v, &cap, out->n + 1, sizeof *out->v);
        out->v[out->n++] = c;
        s += len;
    }
    return true;
}

void cidr_list_free(struct cidr_list *l)
{
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Normalise a socket address to (family, 16 bytes), unwrapping IPv4-mapped IPv6. */
static bool sa_bytes(const struct sockaddr *sa, int *family, uint8_t bytes[16])
{
    if (sa->sa_family == AF_INET) {
        *family = AF_INET;
        memcpy(bytes, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (memcmp(a, v4mapped_prefix, 12) == 0) {
            *family = AF_INET;
            memcpy(bytes, a + 12, 4);
        } else {
            *family = AF_INET6;
            memcpy(bytes, a, 16);
        }
        return true;
    }
    return false;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

bool cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa)
{
    int family;
    uint8_t bytes[16];
    if (!sa_bytes(sa, &family, bytes))
        return false;
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].family == family && prefix_equal(l->v[i].addr, bytes, l->v[i].prefix))
            return true;
    return false;
}

void sockaddr_format(const struct sockaddr *sa, char *ip, size_t iplen, unsigned *port)
{
    int family;
    uint8_t bytes[16];
    if (!sa_bytes(sa, &family, bytes)) {
        snprintf(ip, iplen, "unknown");
        if (port)
            *port = 0;
        return;
    }
    char text[NETADDR_IP_MAX];
    inet_ntop(family, bytes, text, sizeof text);
    snprintf(ip, iplen, "%s", text);
    if (port)
        *port = ntohs(sa->sa_family == AF_INET ? ((const struct sockaddr_in *)sa)->sin_port
                                               : ((const struct sockaddr_in6 *)sa)->sin6_port);
}

bool sockaddr_is_loopback(const struct sockaddr *sa)
{
    int family;
    uint8_t bytes[16];
    if (!sa_bytes(sa, &family, bytes))
        return false;
    if (family == AF_INET)
        return bytes[0] == 127;
    static const uint8_t loop6[16] = {[15] = 1};
    return memcmp(bytes, loop6, 16) == 0;
}

bool hostport_split(const char *s, unsigned default_port, char *host, size_t hostlen,
                    unsigned *port)
{
    const char *h = s, *portstr = NULL;
    size_t hlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL)
            return false;
        h = s + 1;
        hlen = (size_t)(close - h);
        if (close[1] == ':')
            portstr = close + 2;
        else if (close[1] != '\0')
            return false;
    } else {
        const char *colon = strchr(s, ':');
        if (colon && strchr(colon + 1, ':'))
            return false; /* a bare IPv6 address needs brackets */
        hlen = colon ? (size_t)(colon - s) : strlen(s);
        if (colon)
            portstr = colon + 1;
    }
    if (hlen == 0 || hlen >= hostlen)
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = default_port;
    if (portstr) {
        char *end;
        if (!isdigit((unsigned char)portstr[0]))
            return false;
        unsigned long p = strtoul(portstr, &end, 10);
        if (*end != '\0' || p == 0 || p > 65535)
            return false;
        *port = (unsigned)p;
    }
    return true;
}
