/*
 * address: RFC 5321 §4.1.2 / §4.1.3 path and mailbox syntax, with RFC 6531 UTF-8.
 *
 * Everything here is a recogniser over (pointer, length): input is never assumed to be
 * NUL-terminated and may contain any octet. Parsing only records offsets; the local part
 * and domain are copied into struct mailaddr after the whole path has been recognised and
 * every limit (local part 64, domain 255, path 256 octets, label 63) has been checked, so an
 * over-long input can never overflow the fixed fields. Scanning stops as soon as a limit is
 * passed, so the work done is bounded by the limits, not by the input length.
 *
 * Non-ASCII octets are always validated as UTF-8 (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF) and accepted where RFC 6531 §3.3 allows UTF8-non-ascii (atext,
 * qtextSMTP, sub-domain). Whether the caller allowed them is decided at the very end, so
 * addr_err_needs_utf8 is returned only when the address is otherwise valid: that is what
 * lets the session answer 553 5.6.7 instead of 501.
 *
 * U-labels are not checked against IDNA2008 (that needs Unicode tables); a label with
 * UTF-8 is held to the same 63-octet limit as an ASCII label, counted in octets as written.
 */
#include "mail/address.h"

#include <stdio.h>
#include <string.h>

#include "lib/mem.h"
#include "lib/utf8.h"

const char addr_err_needs_utf8[] = "non-ASCII address needs SMTPUTF8";
static const char err_bad_utf8[] = "invalid UTF-8";

/* A cursor over the input and what has been seen so far. */
struct scan {
    const unsigned char *s;
    size_t n;
    size_t pos;
    bool nonascii; /* well-formed UTF-8 was accepted somewhere */
};

static bool is_alpha(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_letdig(unsigned char c)
{
    return is_alpha(c) || is_digit(c);
}

static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

/* RFC 5322 §3.2.3 atext, ASCII part. */
static bool is_atext(unsigned char c)
{
    if (is_letdig(c))
        return true;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '/': case '=': case '?': case '^': case '_': case '`': case '{':
    case '|': case '}': case '~':
        return true;
    default:
        return false;
    }
}


static bool ieq_ascii(const unsigned char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y - 'A' + 'a');
        if (x != y)
            return false;
    }
    return true;
}

/* Local-part = Dot-string / Quoted-string (RFC 5321 §4.1.2, RFC 6531 §3.3). */
static const char *scan_local(struct scan *sc, bool *quoted)
{
    const unsigned char *s = sc->s;
    size_t start = sc->pos, i = start;

    if (i < sc->n && s[i] == '"') {
        *quoted = true;
        i++;
        for (;;) {
            if (i >= sc->n)
                return "unterminated quoted string";
            unsigned char c = s[i];
            if (c == '"') {
                i++;
                break;
            }
            if (c == '\\') {
                /* quoted-pairSMTP = %d92 %d32-126: no UTF-8 after a backslash */
                if (i + 1 >= sc->n)
                    return "unterminated quoted string";
                if (s[i + 1] < 32 || s[i + 1] > 126)
                    return "bad character in quoted string";
                i += 2;
            } else if (c >= 32 && c <= 126) {
                i++; /* qtextSMTP: everything printable but '"' and '\' (handled above) */
            } else if (c >= 0x80) {
                size_t k = utf8_next(s + i, sc->n - i, NULL);
                if (k == 0)
                    return err_bad_utf8;
                sc->nonascii = true;
                i += k;
            } else {
                return "bad character in quoted string";
            }
            if (i - start > ADDR_LOCAL_MAX)
                return "local part longer than 64 octets";
        }
        if (i - start > ADDR_LOCAL_MAX)
            return "local part longer than 64 octets";
        sc->pos = i;
        return NULL;
    }

    *quoted = false;
    bool want_atom = true; /* at the start or just after a dot: an atom must come next */
    while (i < sc->n) {
        unsigned char c = s[i];
        if (c == '.') {
            if (want_atom)
                return "misplaced dot in local part";
            want_atom = true;
            i++;
        } else if (is_atext(c)) {
            want_atom = false;
            i++;
        } else if (c >= 0x80) {
            size_t k = utf8_next(s + i, sc->n - i, NULL);
            if (k == 0)
                return err_bad_utf8;
            sc->nonascii = true;
            want_atom = false;
            i += k;
        } else {
            break;
        }
        if (i - start > ADDR_LOCAL_MAX)
            return "local part longer than 64 octets";
    }
    if (i == start)
        return (i >= sc->n || s[i] == '@' || s[i] == '>') ? "empty local part"
                                                          : "bad character in local part";
    /* after a dot, a character that cannot start an atom is the fault, not the dot: this
     * is how a Dot-string followed by a Quoted-string ("a."b"@c) is reported */
    if (want_atom && i < sc->n && s[i] != '@' && s[i] != '>')
        return "bad character in local part";
    if (want_atom)
        return "misplaced dot in local part";
    sc->pos = i;
    return NULL;
}

/* Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str] (or a U-label).
 * Stops at the first octet that cannot continue the domain; the caller judges it. */
static const char *scan_domain(struct scan *sc)
{
    const unsigned char *s = sc->s;
    size_t start = sc->pos, i = start;
    for (;;) {
        size_t label = i;
        while (i < sc->n) {
            unsigned char c = s[i];
            if (is_letdig(c) || c == '-') {
                i++;
            } else if (c >= 0x80) {
                size_t k = utf8_next(s + i, sc->n - i, NULL);
                if (k == 0)
                    return err_bad_utf8;
                sc->nonascii = true;
                i += k;
            } else {
                break;
            }
            if (i - label > 63)
                return "domain label longer than 63 octets";
        }
        if (i == label) {
            if (i < sc->n && s[i] != '.' && s[i] != '>')
                return "bad character in domain";
            return (i == start && (i >= sc->n || s[i] != '.')) ? "missing domain"
                                                               : "empty domain label";
        }
        /* Let-dig first and last; a non-ASCII octet counts as a letter of a U-label */
        if (s[label] == '-' || s[i - 1] == '-')
            return "domain label starts or ends with a hyphen";
        if (i - start > ADDR_DOMAIN_MAX)
            return "domain longer than 255 octets";
        if (i < sc->n && s[i] == '.') {
            i++;
            continue;
        }
        break;
    }
    sc->pos = i;
    return NULL;
}

/* Snum 3("." Snum), Snum = 1*3DIGIT with a value 0..255 (RFC 5321 §4.1.3). */
static bool ipv4_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= n || s[i] != '.')
                return false;
            i++;
        }
        size_t digits = 0;
        unsigned v = 0;
        while (i < n && is_digit(s[i]) && digits < 3) {
            v = v * 10 + (unsigned)(s[i] - '0');
            i++;
            digits++;
        }
        if (digits == 0 || v > 255)
            return false;
    }
    return i == n;
}

/*
 * IPv6-addr = IPv6-full / IPv6-comp / IPv6v4-full / IPv6v4-comp (RFC 5321 §4.1.3).
 * Walk the groups once, counting explicit 16-bit groups and noting "::" and an IPv4 tail;
 * then the counts decide: full forms need exactly 8 (or 6 + IPv4) groups, compressed forms
 * at most 6 (or 4 + IPv4) because RFC 5321 makes "::" stand for at least two zero groups.
 */
static bool ipv6_valid(const unsigned char *s, size_t n)
{
    size_t i = 0, groups = 0;
    bool dcolon = false, v4 = false;

    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        dcolon = true;
        i = 2;
        if (i == n)
            return true; /* "::" alone */
    } else if (n >= 1 && s[0] == ':') {
        return false;
    }
    for (;;) {
        size_t j = i;
        while (j < n && is_hex(s[j]) && j - i < 5)
            j++;
        if (j < n && s[j] == '.') {
            /* the IPv4 tail must end the address */
            if (!ipv4_valid(s + i, n - i))
                return false;
            v4 = true;
            break;
        }
        if (j == i || j - i > 4)
            return false;
        groups++;
        i = j;
        if (i == n)
            break;
        if (s[i] != ':')
            return false;
        i++;
        if (i < n && s[i] == ':') {
            if (dcolon)
                return false; /* a second "::" */
            dcolon = true;
            i++;
            if (i == n)
                break;
        } else if (i == n) {
            return false; /* a lone trailing ':' */
        }
    }
    if (v4)
        return dcolon ? groups <= 4 : groups == 6;
    return dcolon ? groups <= 6 : groups == 8;
}

/* Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig (the Standardized-tag). */
static bool ldh_str_valid(const unsigned char *s, size_t n)
{
    if (n == 0 || !is_letdig(s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_letdig(s[i]) && s[i] != '-')
            return false;
    return true;
}

/* The inside of an address literal (between '[' and ']'), already known to be dcontent. */
static bool literal_valid(const unsigned char *s, size_t n)
{
    /* ABNF literal strings are case-insensitive, so "ipv6:" is the same tag as "IPv6:" */
    if (n >= 5 && ieq_ascii(s, "IPv6:", 5))
        return ipv6_valid(s + 5, n - 5);
    const unsigned char *colon = memchr(s, ':', n);
    if (colon != NULL) {
        /* General-address-literal = Standardized-tag ":" 1*dcontent */
        size_t tag = (size_t)(colon - s);
        return ldh_str_valid(s, tag) && tag + 1 < n;
    }
    return ipv4_valid(s, n);
}

/* address-literal = "[" ( IPv4 / IPv6 / General-address-literal ) "]"; kept with brackets. */
static const char *scan_literal(struct scan *sc)
{
    const unsigned char *s = sc->s;
    size_t start = sc->pos, i = start + 1;
    while (i < sc->n && s[i] != ']') {
        unsigned char c = s[i];
        /* dcontent = %d33-90 / %d94-126: printable ASCII without "[", "\", "]" */
        if (c < 33 || c > 126 || c == '[' || c == '\\')
            return "bad address literal";
        i++;
        if (i - start + 1 > ADDR_DOMAIN_MAX) /* +1 for the ']' still to come */
            return "domain longer than 255 octets";
    }
    if (i >= sc->n)
        return "bad address literal";
    if (!literal_valid(s + start + 1, i - start - 1))
        return "bad address literal";
    sc->pos = i + 1;
    return NULL;
}

/* Mailbox = Local-part "@" ( Domain / address-literal ); records where the parts are. */
static const char *scan_mailbox(struct scan *sc, size_t *lstart, size_t *llen, size_t *dstart,
                                size_t *dlen, unsigned *flags)
{
    bool quoted;
    *lstart = sc->pos;
    const char *why = scan_local(sc, &quoted);
    if (why != NULL)
        return why;
    *llen = sc->pos - *lstart;
    if (quoted)
        *flags |= ADDR_F_QUOTED;
    if (sc->pos >= sc->n || sc->s[sc->pos] != '@')
        return (sc->pos >= sc->n || sc->s[sc->pos] == '>') ? "missing @"
                                                           : "bad character in local part";
    sc->pos++;
    *dstart = sc->pos;
    if (sc->pos < sc->n && sc->s[sc->pos] == '[') {
        why = scan_literal(sc);
        *flags |= ADDR_F_LITERAL;
    } else {
        why = scan_domain(sc);
    }
    if (why != NULL)
        return why;
    *dlen = sc->pos - *dstart;
    return NULL;
}

/* A-d-l ":" with A-d-l = At-domain *( "," At-domain ), At-domain = "@" Domain. Parsed for
 * syntax only and then dropped: servers must accept source routes but SHOULD ignore them
 * (RFC 5321 §4.1.1.3, Appendix C). */
static const char *scan_route(struct scan *sc)
{
    for (;;) {
        if (sc->pos >= sc->n || sc->s[sc->pos] != '@')
            return "bad source route";
        sc->pos++;
        const char *why = scan_domain(sc);
        if (why != NULL)
            return why == err_bad_utf8 ? why : "bad source route";
        /* a route is not otherwise bounded: the path limit keeps the scan short */
        if (sc->pos > ADDR_PATH_MAX)
            return "path longer than 256 octets";
        if (sc->pos >= sc->n)
            return "missing >";
        unsigned char c = sc->s[sc->pos];
        if (c == ':') {
            sc->pos++;
            return NULL;
        }
        if (c == '>')
            return "empty local part"; /* "<@example.org>": a domain with no mailbox */
        if (c != ',')
            return "bad source route";
        sc->pos++;
    }
}

static void clear_addr(struct mailaddr *out)
{
    out->local[0] = '\0';
    out->domain[0] = '\0';
    out->flags = 0;
}

/* The last step of a successful parse: every limit has been checked, now copy. */
static const char *finish(const struct scan *sc, bool route_nonascii, unsigned opts,
                          unsigned flags, size_t lstart, size_t llen, size_t dstart, size_t dlen,
                          struct mailaddr *out)
{
    /* UTF-8 anywhere in the path needs SMTPUTF8, but ADDR_F_UTF8 describes what is kept:
     * a U-label in a dropped source route does not make the mailbox non-ASCII */
    if ((sc->nonascii || route_nonascii) && !(opts & ADDR_ALLOW_UTF8))
        return addr_err_needs_utf8;
    if (sc->nonascii)
        flags |= ADDR_F_UTF8;
    if (llen > ADDR_LOCAL_MAX || dlen > ADDR_DOMAIN_MAX)
        fatal("address limits not enforced by the scanner");
    memcpy(out->local, sc->s + lstart, llen);
    out->local[llen] = '\0';
    memcpy(out->domain, sc->s + dstart, dlen);
    out->domain[dlen] = '\0';
    out->flags = flags;
    return NULL;
}

static bool is_postmaster(const unsigned char *s, size_t n)
{
    return n == 10 && ieq_ascii(s, "postmaster", 10);
}

const char *addr_parse_path(const char *s, size_t n, unsigned opts, struct mailaddr *out,
                            size_t *end)
{
    clear_addr(out);
    if (n == 0 || s[0] != '<')
        return "missing <";
    struct scan sc = {(const unsigned char *)s, n, 1, false};
    unsigned flags = 0;

    if (n >= 2 && s[1] == '>') {
        if (!(opts & ADDR_ALLOW_NULL))
            return "null path not allowed here";
        out->flags = ADDR_F_NULL;
        if (end != NULL)
            *end = 2;
        return NULL;
    }
    /* <Postmaster> without a domain (RFC 5321 §4.1.1.3); only for RCPT, never with a route */
    if ((opts & ADDR_ALLOW_POSTMASTER) && n >= 12 && s[11] == '>' &&
        is_postmaster(sc.s + 1, 10)) {
        memcpy(out->local, s + 1, 10);
        out->local[10] = '\0';
        out->flags = ADDR_F_POSTMASTER;
        if (end != NULL)
            *end = 12;
        return NULL;
    }
    bool route_nonascii = false;
    if (n >= 2 && s[1] == '@') {
        const char *why = scan_route(&sc);
        if (why != NULL)
            return why;
        flags |= ADDR_F_ROUTE;
        route_nonascii = sc.nonascii;
        sc.nonascii = false;
    }

    size_t lstart = 0, llen = 0, dstart = 0, dlen = 0;
    const char *why = scan_mailbox(&sc, &lstart, &llen, &dstart, &dlen, &flags);
    if (why != NULL)
        return why;
    if (sc.pos >= n)
        return "missing >";
    if (s[sc.pos] != '>')
        return "bad character in domain";
    sc.pos++;
    if (sc.pos > ADDR_PATH_MAX)
        return "path longer than 256 octets";
    why = finish(&sc, route_nonascii, opts, flags, lstart, llen, dstart, dlen, out);
    if (why == NULL && end != NULL)
        *end = sc.pos;
    return why;
}

const char *addr_parse_mailbox(const char *s, size_t n, unsigned opts, struct mailaddr *out)
{
    clear_addr(out);
    /* the bare forms of <> and <Postmaster>, so addr_format output always parses back */
    if (n == 0) {
        if (!(opts & ADDR_ALLOW_NULL))
            return "null path not allowed here";
        out->flags = ADDR_F_NULL;
        return NULL;
    }
    if ((opts & ADDR_ALLOW_POSTMASTER) && is_postmaster((const unsigned char *)s, n)) {
        memcpy(out->local, s, 10);
        out->local[10] = '\0';
        out->flags = ADDR_F_POSTMASTER;
        return NULL;
    }
    struct scan sc = {(const unsigned char *)s, n, 0, false};
    unsigned flags = 0;
    size_t lstart = 0, llen = 0, dstart = 0, dlen = 0;
    const char *why = scan_mailbox(&sc, &lstart, &llen, &dstart, &dlen, &flags);
    if (why != NULL)
        return why;
    if (sc.pos != n)
        return "bad character in domain";
    return finish(&sc, false, opts, flags, lstart, llen, dstart, dlen, out);
}

const char *addr_check_domain(const char *s, size_t n, bool allow_utf8)
{
    if (n == 0)
        return "missing domain";
    struct scan sc = {(const unsigned char *)s, n, 0, false};
    const char *why = s[0] == '[' ? scan_literal(&sc) : scan_domain(&sc);
    if (why != NULL)
        return why;
    if (sc.pos != n)
        return "bad character in domain";
    if (sc.nonascii && !allow_utf8)
        return addr_err_needs_utf8;
    return NULL;
}

size_t addr_local_unquote(const char *local, char *out, size_t cap)
{
    size_t n = strlen(local), o = 0;
    size_t from = 0, to = n;
    bool quoted = n >= 2 && local[0] == '"' && local[n - 1] == '"';
    if (quoted) {
        from = 1;
        to = n - 1;
    }
    for (size_t i = from; i < to; i++) {
        /* inside quotes a backslash makes the next character literal (quoted-pairSMTP) */
        if (quoted && local[i] == '\\' && i + 1 < to)
            i++;
        if (o + 1 >= cap)
            return (size_t)-1;
        out[o++] = local[i];
    }
    if (cap == 0)
        return (size_t)-1;
    out[o] = '\0';
    return o;
}

/* Returns the length of the full text, like snprintf: a result >= cap means it was cut. */
size_t addr_format(const struct mailaddr *a, char *dst, size_t cap)
{
    int r;
    if (a->flags & ADDR_F_NULL)
        r = snprintf(dst, cap, "%s", "");
    else if (a->flags & ADDR_F_POSTMASTER)
        r = snprintf(dst, cap, "%s", "Postmaster");
    else
        r = snprintf(dst, cap, "%s@%s", a->local, a->domain);
    return r < 0 ? 0 : (size_t)r;
}

bool addr_split(const char *addr, char *local, size_t llen, char *domain, size_t dlen)
{
    size_t n = strlen(addr);
    const char *at = NULL;
    /* a general address literal may contain '@' (dcontent allows it), so for "...@[...]"
     * the separator is the '@' just before the last '[' ('[' cannot occur inside) */
    if (n > 0 && addr[n - 1] == ']') {
        for (size_t i = n; i-- > 0;)
            if (addr[i] == '[') {
                if (i > 0 && addr[i - 1] == '@')
                    at = addr + i - 1;
                break;
            }
    }
    if (at == NULL)
        for (size_t i = n; i-- > 0;)
            if (addr[i] == '@') {
                at = addr + i;
                break;
            }
    if (at == NULL)
        return false;
    size_t ll = (size_t)(at - addr), dl = n - ll - 1;
    if (ll + 1 > llen || dl + 1 > dlen)
        return false;
    memcpy(local, addr, ll);
    local[ll] = '\0';
    memcpy(domain, at + 1, dl);
    domain[dl] = '\0';
    return true;
}
