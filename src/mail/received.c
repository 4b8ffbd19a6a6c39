/*
 * received: the Received: trace field (RFC 5321 §4.4) and RFC 5322 §3.3 dates.
 *
 *   Stamp          = From-domain By-domain Opt-info [CFWS] ";" FWS date-time
 *   From-domain    = "FROM" FWS Extended-Domain
 *   Extended-Domain = Domain / ( Domain FWS "(" TCP-info ")" ) / ...
 *   TCP-info       = address-literal / ( Domain FWS address-literal )
 *   Opt-info       = [Via] [With] [ID] [For] [Additional-Registered-Clauses]
 *
 * The header is built from clauses ("from x", "(name [ip])", "by y", ...) placed one after
 * another: a clause goes on the current line if the line stays within 78 characters,
 * otherwise on a continuation line (CRLF TAB); "by", the TLS comment and "for" always start
 * a line, for the shape documented in received.h. A single clause longer than a line is
 * not split (the 998-octet hard limit of RFC 5322 is far above the sum of the caps below).
 *
 * Everything but the fixed words is sanitised: in text from the client or DNS (HELO,
 * reverse name) and in our own strings alike, only graphic ASCII other than "(", ")",
 * "\" and ";" is kept, anything else becomes '?', and each piece is capped. Spaces are
 * replaced too (except in the TLS comment, which we write ourselves), so a client cannot
 * forge extra clauses such as "by" in its HELO, nor a ";" that a parser splitting at the
 * first ";" would take for the start of the date. The recipient keeps UTF-8 (an SMTPUTF8
 * message may carry it in header fields, RFC 6532) but loses control characters.
 *
 * With the caps below the header always fits in RECEIVED_MAX (checked at compile time).
 */
#include "mail/received.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lib/mem.h"
#include "mail/address.h"

#define LINE_TARGET 78
#define HELO_CAP 255
#define NAME_CAP 255 /* reverse DNS name, our host name */
#define IP_CAP 64
#define WITH_CAP 32
#define ID_CAP 64
#define TLS_CAP 128
#define FOR_CAP ADDR_TEXT_MAX
#define DATE_CAP 40
/* each clause costs its text plus at most "\r\n\t"; 16 clauses is more than ever placed */
#define WORST_CASE                                                                         \
    (sizeof "Received:" + 5 + HELO_CAP + 2 + NAME_CAP + 8 + IP_CAP + 2 + 3 + NAME_CAP +     \
     sizeof "(tern)" + 5 + WITH_CAP + 3 + ID_CAP + 2 + TLS_CAP + 6 + FOR_CAP + 2 +          \
     DATE_CAP + 16 * 3 + 3)
_Static_assert(WORST_CASE <= RECEIVED_MAX, "RECEIVED_MAX too small for the Received: caps");

/* One clause under construction; it never overflows, it only stops growing. */
struct clause {
    char b[FOR_CAP + 16];
    size_t n;
};

struct writer {
    char *dst;
    size_t cap, len, col;
    bool full;
};

static void cl_lit(struct clause *c, const char *s)
{
    size_t k = strlen(s);
    if (k > sizeof c->b - c->n)
        k = sizeof c->b - c->n;
    memcpy(c->b + c->n, s, k);
    c->n += k;
}

enum clean_mode {
    CLEAN_TOKEN,   /* graphic ASCII except ( ) \ ; */
    CLEAN_COMMENT, /* the same, plus SP */
    CLEAN_ADDRESS, /* SP..~ and UTF-8 octets: a mailbox as parsed */
};

static void cl_clean(struct clause *c, const char *s, size_t cap, enum clean_mode mode)
{
    for (size_t i = 0; s[i] != '\0' && i < cap && c->n < sizeof c->b; i++) {
        unsigned char ch = (unsigned char)s[i];
        bool keep;
        if (mode == CLEAN_ADDRESS)
            keep = (ch >= 32 && ch <= 126) || ch >= 0x80;
        else
            keep = ((ch >= 33 && ch <= 126) || (ch == ' ' && mode == CLEAN_COMMENT)) &&
                   ch != '(' && ch != ')' && ch != '\\' && ch != ';';
        c->b[c->n++] = keep ? (char)ch : '?';
    }
}

static void put(struct writer *w, const char *s, size_t n)
{
    if (w->full || n >= w->cap - w->len) {
        w->full = true;
        return;
    }
    memcpy(w->dst + w->len, s, n);
    w->len += n;
    w->col += n;
}

/* Place a clause: on this line after a space, or on a new continuation line. */
static void place(struct writer *w, const struct clause *c, bool newline)
{
    if (newline || w->col + 1 + c->n > LINE_TARGET) {
        put(w, "\r\n\t", 3);
        w->col = 1;
    } else {
        put(w, " ", 1);
    }
    put(w, c->b, c->n);
}

static const char *nonempty(const char *s)
{
    return (s != NULL && s[0] != '\0') ? s : NULL;
}

/* "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 §4.1.3 address literals). */
static void cl_ip_literal(struct clause *c, const char *ip)
{
    cl_lit(c, strchr(ip, ':') != NULL ? "[IPv6:" : "[");
    cl_clean(c, ip, IP_CAP, CLEAN_TOKEN);
    cl_lit(c, "]");
}

size_t received_format(const struct received_info *ri, char *dst, size_t cap)
{
    if (ri->by == NULL)
        fatal("received_format without our host name");
    if (cap == 0)
        return 0;
    const char *helo = nonempty(ri->helo), *rdns = nonempty(ri->client_name);
    const char *ip = nonempty(ri->client_ip);
    struct writer w = {dst, cap, 0, 0, false};
    struct clause c;
    bool have_from = helo != NULL || ip != NULL;

    put(&w, "Received:", 9);
    if (have_from) {
        /* From-domain: what the client called itself; failing that, what we know of it */
        c.n = 0;
        cl_lit(&c, "from ");
        if (helo != NULL)
            cl_clean(&c, helo, HELO_CAP, CLEAN_TOKEN);
        else if (rdns != NULL)
            cl_clean(&c, rdns, NAME_CAP, CLEAN_TOKEN);
        else
            cl_ip_literal(&c, ip);
        place(&w, &c, false);
        if (ip != NULL) {
            /* TCP-info = address-literal / ( Domain FWS address-literal ) */
            c.n = 0;
            cl_lit(&c, "(");
            if (rdns != NULL) {
                cl_clean(&c, rdns, NAME_CAP, CLEAN_TOKEN);
                cl_lit(&c, " ");
            }
            cl_ip_literal(&c, ip);
            cl_lit(&c, ")");
            place(&w, &c, false);
        }
    }
    c.n = 0;
    cl_lit(&c, "by ");
    cl_clean(&c, ri->by, NAME_CAP, CLEAN_TOKEN);
    place(&w, &c, have_from);
    c.n = 0;
    cl_lit(&c, "(tern)");
    place(&w, &c, false);
    if (nonempty(ri->with) != NULL) {
        c.n = 0;
        cl_lit(&c, "with ");
        cl_clean(&c, ri->with, WITH_CAP, CLEAN_TOKEN);
        place(&w, &c, false);
    }
    if (nonempty(ri->id) != NULL) {
        c.n = 0;
        cl_lit(&c, "id ");
        cl_clean(&c, ri->id, ID_CAP, CLEAN_TOKEN);
        place(&w, &c, false);
    }
    if (nonempty(ri->tls) != NULL) {
        c.n = 0;
        cl_lit(&c, "(");
        cl_clean(&c, ri->tls, TLS_CAP, CLEAN_COMMENT);
        cl_lit(&c, ")");
        place(&w, &c, true);
    }
    if (nonempty(ri->for_addr) != NULL) {
        c.n = 0;
        cl_lit(&c, "for <");
        cl_clean(&c, ri->for_addr, FOR_CAP, CLEAN_ADDRESS);
        cl_lit(&c, ">");
        place(&w, &c, true);
    }
    put(&w, ";", 1);
    char date[DATE_CAP];
    size_t dn = rfc5322_date(ri->when, date, sizeof date);
    if (dn == 0)
        return 0;
    c.n = 0;
    cl_lit(&c, date);
    place(&w, &c, false);
    put(&w, "\r\n", 2);
    if (w.full)
        return 0;
    dst[w.len] = '\0';
    return w.len;
}

size_t rfc5322_date(time_t t, char *dst, size_t cap)
{
    /* fixed English names: strftime's %a and %b follow the locale, RFC 5322 does not */
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL)
        return 0;
    long year = (long)tm.tm_year + 1900;
    if (year < 0 || year > 9999 || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
        tm.tm_mon > 11)
        return 0; /* date-time wants a 4-digit year */
    int r = snprintf(dst, cap, "%s, %d %s %04ld %02d:%02d:%02d +0000", days[tm.tm_wday],
                     tm.tm_mday, months[tm.tm_mon], year, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (r < 0 || (size_t)r >= cap)
        return 0;
    return (size_t)r;
}
