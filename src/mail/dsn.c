/*
 * dsn: see dsn.h. RFC 3464 (message/delivery-status), RFC 6522 (multipart/report),
 * RFC 3461 §6 (what a DSN must carry), RFC 6533 (the SMTPUTF8 variants), RFC 3834
 * (Auto-Submitted), RFC 5322 (header syntax, line length, folding).
 *
 * Layout of a report:
 *     header (From, To, Subject, Date, Message-ID, MIME-Version, Content-Type with
 *             report-type and boundary, Auto-Submitted, [Content-Transfer-Encoding: 8bit])
 *     part 1  text/plain: what happened, one line per recipient with the diagnostic
 *     part 2  message/delivery-status (message/global-delivery-status for SMTPUTF8)
 *     part 3  message/rfc822 (message/global) with the whole original, or
 *             text/rfc822-headers (message/global-headers) with its header section;
 *             omitted when there is no original
 *
 * Decisions, each with its reason:
 *   - Original-Envelope-Id and Original-Recipient carry the values decoded from xtext:
 *     xtext (RFC 3461 §4) only exists to carry them through the SMTP parameter syntax;
 *     RFC 3464 §2.2.1 / §2.3.1 define the fields as text, and RFC 3461 §6.3 asks for "the
 *     value" of ENVID / ORCPT. A value that decodes to something a field cannot hold
 *     (control characters, or non-ASCII in an ASCII report) is given as received instead.
 *     An ORCPT of type utf-8 (RFC 6533 §3) is decoded from its \x{HEX} form in a global
 *     report and kept in that ASCII form otherwise.
 *   - A Final-Recipient with non-ASCII octets uses address type utf-8 (RFC 6533 §3).
 *   - The whole original is returned only when it can travel as message/rfc822 unencoded
 *     (RFC 2046 §5.2.1 forbids encodings other than 7bit/8bit/binary there): lines of at
 *     most 998 octets, CRLF only, no NUL. Otherwise, and when it is larger than
 *     return_limit, the header section is returned instead; a header section that is not
 *     clean is base64-encoded (a text type may be encoded).
 *   - Field values are folded at white space near 78 columns (the unfolded value is
 *     unchanged); a run of more than 998 octets without white space is broken with
 *     CRLF SP, which adds a space to the value: nothing else can keep the line limit.
 *   - Control characters in values (a multi-line remote reply) become spaces; in an ASCII
 *     report non-ASCII octets become "?"; in a global report invalid UTF-8 does.
 *   - The boundary starts with "=_", which quoted-printable and base64 cannot produce,
 *     and is checked against every input that reaches the report.
 *   - Date fields are in UTC with the numeric zone "+0000" (RFC 3464 asks for numeric zones),
 *     and English names are written without strftime() so the locale cannot change them.
 */
#include "mail/dsn.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mem.h"
#include "lib/strutil.h"
#include "lib/utf8.h"

#define LINE_SOFT 78  /* RFC 5322 §2.1.1 SHOULD */
#define LINE_HARD 998 /* RFC 5322 §2.1.1 MUST */
#define FIELD_VALUE_MAX 4000 /* a value longer than this is cut (with "...") */

/* ---- output with a sticky error ---- */

struct out {
    struct buf *b;
    bool ok;
};

static void put(struct out *o, const void *p, size_t n)
{
    if (o->ok && !buf_add(o->b, p, n))
        o->ok = false;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void putf(struct out *o, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void putf(struct out *o, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        fatal("dsn: formatted text longer than %zu", sizeof tmp); /* only fixed texts here */
    put(o, tmp, (size_t)n);
}

/* ---- small text helpers ---- */

static bool has_8bit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return true;
    return false;
}

static bool str_8bit(const char *s)
{
    return s != NULL && has_8bit(s, strlen(s));
}


/* A value for one field line: control characters (CR, LF, TAB, ...) become spaces, runs
 * of spaces collapse, ends are trimmed; non-ASCII is kept only where allowed (as valid
 * UTF-8). Returns a new string. */
static char *clean_value(const char *s, bool utf8)
{
    size_t n = s ? strlen(s) : 0;
    if (n > FIELD_VALUE_MAX)
        n = FIELD_VALUE_MAX;
    char *out = xmalloc(n + 4);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            if (o > 0 && out[o - 1] != ' ')
                out[o++] = ' ';
            i++;
        } else if (c == ' ') {
            if (o > 0 && out[o - 1] != ' ')
                out[o++] = ' ';
            i++;
        } else if (c < 0x80) {
            out[o++] = (char)c;
            i++;
        } else {
            size_t len = utf8 ? utf8_next((const unsigned char *)s + i, n - i, NULL) : 0;
            if (len == 0) {
                out[o++] = '?';
                i++;
            } else {
                memcpy(out + o, s + i, len);
                o += len;
                i += len;
            }
        }
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    if (s && strlen(s) > FIELD_VALUE_MAX) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/*
 * Write "Name: value" CRLF, folding (RFC 5322 §3.2.2) before white space so lines stay
 * near LINE_SOFT, and never past LINE_HARD. cont is the folding white space (" " or
 * "    " for text). value is single-line (clean_value).
 */
static void put_folded(struct out *o, const char *name, const char *value, const char *cont)
{
    size_t col = 0;
    if (name) {
        putf(o, "%s: ", name);
        col = strlen(name) + 2;
    }
    size_t start_col = col;
    const char *p = value;
    while (*p) {
        const char *q = p;
        while (*q == ' ')
            q++;
        while (*q && *q != ' ')
            q++;
        size_t len = (size_t)(q - p);
        if (col + len > LINE_SOFT && col > start_col && *p == ' ') {
            puts_(o, "\r\n");
            p++; /* the space is replaced by the continuation's white space */
            len--;
            puts_(o, cont);
            col = strlen(cont);
        }
        while (col + len > LINE_HARD) { /* no white space for too long: break it */
            size_t room = LINE_HARD - col;
            while (room > 0 && ((unsigned char)p[room] & 0xc0) == 0x80)
                room--; /* not inside a UTF-8 sequence */
            put(o, p, room);
            puts_(o, "\r\n");
            puts_(o, cont);
            col = strlen(cont);
            p += room;
            len -= room;
        }
        put(o, p, len);
        col += len;
        p += len;
    }
    puts_(o, "\r\n");
}

static void put_field(struct out *o, bool utf8, const char *name, const char *fmt, ...)
    PRINTF_LIKE(4, 5);
static void put_field(struct out *o, bool utf8, const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *raw = NULL;
    if (vasprintf(&raw, fmt, ap) < 0)
        fatal("vasprintf failed");
    va_end(ap);
    char *v = clean_value(raw, utf8);
    put_folded(o, name, v, name ? " " : ""); /* text lines wrap without an indent */
    free(v);
    free(raw);
}

static const char *const wdays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* RFC 5322 date-time in UTC. */
static void format_date(time_t t, char *out, size_t cap)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, cap, "%s, %d %s %d %02d:%02d:%02d +0000", wdays[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}



/*
 * Decode xtext "+HH" (RFC 3461 §4) and, when unicode is set, the "\x{HEX}" of
 * utf-8-addr-xtext (RFC 6533 §3), in one pass. NULL if the input is malformed.
 */
static char *xtext_decode_value(const char *s, bool unicode)
{
    size_t n = strlen(s);
    char *out = xmalloc(n * 4 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '+') {
            if (i + 2 >= n || hex_value(s[i + 1]) < 0 || hex_value(s[i + 2]) < 0)
                goto bad;
            int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
            out[o++] = (char)(hi * 16 + lo);
            i += 3;
        } else if (unicode && s[i] == '\\' && s[i + 1] == 'x' && s[i + 2] == '{') {
            uint32_t cp = 0;
            size_t j = i + 3, digits = 0;
            for (; j < n && s[j] != '}'; j++, digits++) {
                int v = hex_value(s[j]);
                if (v < 0 || digits >= 6)
                    goto bad;
                cp = cp * 16 + (uint32_t)v;
            }
            if (j >= n || digits == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                goto bad;
            o += utf8_put(cp, out + o);
            i = j + 1;
        } else {
            out[o++] = s[i++];
        }
    }
    out[o] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* Printable for a field: no control characters; non-ASCII only as valid UTF-8 when
 * allowed. */
static bool field_safe(const char *s, bool utf8)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = utf8 ? utf8_next((const unsigned char *)s + i, n - i, NULL) : 0;
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

/* "\x{HEX}" for each non-ASCII character (utf-8-addr-xtext form), for ASCII reports. */
static char *unicode_escape(const char *s)
{
    size_t n = strlen(s);
    char *out = xmalloc(n * 10 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        size_t len = u[0] < 0x80 ? 1 : utf8_next(u, n - i, NULL);
        if (u[0] < 0x80) {
            out[o++] = (char)u[0];
            i++;
            continue;
        }
        if (len == 0) { /* not UTF-8 at all: show the octet */
            o += (size_t)sprintf(out + o, "\\x{%02X}", u[0]);
            i++;
            continue;
        }
        uint32_t cp = u[0] & (len == 2 ? 0x1f : len == 3 ? 0x0f : 0x07);
        for (size_t k = 1; k < len; k++)
            cp = (cp << 6) | (u[k] & 0x3f);
        o += (size_t)sprintf(out + o, "\\x{%X}", cp);
        i += len;
    }
    out[o] = '\0';
    return out;
}

/* ---- the original message ---- */

size_t dsn_header_length(const char *msg, size_t len)
{
    size_t p = 0;
    while (p < len) {
        if (msg[p] == '\n')
            return p + 1;
        if (msg[p] == '\r' && p + 1 < len && msg[p + 1] == '\n')
            return p + 2;
        const char *nl = memchr(msg + p, '\n', len - p);
        if (nl == NULL)
            return len;
        p = (size_t)(nl - msg) + 1;
    }
    return len;
}

/* Can these bytes travel unencoded in a MIME part: CRLF only, no NUL, lines <= 998? */
static bool clean_lines(const char *s, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\r') {
            if (i + 1 >= n || s[i + 1] != '\n')
                return false;
            i++;
            col = 0;
            continue;
        }
        if (c == '\n' || c == '\0' || ++col > LINE_HARD)
            return false;
    }
    return true;
}

static void put_base64(struct out *o, const char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char line[80];
    size_t col = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(unsigned char)s[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)s[i + 2];
        line[col++] = tab[(v >> 18) & 63];
        line[col++] = tab[(v >> 12) & 63];
        line[col++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        line[col++] = i + 2 < n ? tab[v & 63] : '=';
        if (col == 76) { /* RFC 2045 §6.8 */
            put(o, line, col);
            puts_(o, "\r\n");
            col = 0;
        }
    }
    if (col > 0) {
        put(o, line, col);
        puts_(o, "\r\n");
    }
}

/* ---- the parts ---- */

enum third { THIRD_NONE, THIRD_FULL, THIRD_HEADERS };

struct plan {
    bool global;     /* RFC 6533 types */
    enum third third;
    const char *ret_data; /* what the third part carries */
    size_t ret_len;
    bool ret_base64;
    bool ret_8bit;
    bool too_large;  /* the whole message was asked for but not returned */
    bool text_8bit;  /* the first or second part has UTF-8 */
    char boundary[80];
};

static const char *default_action(enum dsn_kind k)
{
    return k == DSN_FAILURE ? "failed" : k == DSN_DELAY ? "delayed" : "delivered";
}

static const char *rcpt_action(const struct dsn_report *r, const struct dsn_rcpt *rc)
{
    static const char *const valid[] = {"failed", "delayed", "delivered", "relayed", "expanded"};
    if (rc->action)
        for (size_t i = 0; i < ARRAY_LEN(valid); i++)
            if (strcmp(rc->action, valid[i]) == 0)
                return valid[i];
    return default_action(r->kind);
}

/* status-code = DIGIT "." 1*3DIGIT "." 1*3DIGIT (RFC 3464 §2.3.4) */
static bool status_valid(const char *s)
{
    if (s == NULL || !(s[0] == '2' || s[0] == '4' || s[0] == '5') || s[1] != '.')
        return false;
    const char *p = s + 2;
    for (int part = 0; part < 2; part++) {
        size_t d = 0;
        while (p[d] >= '0' && p[d] <= '9')
            d++;
        if (d == 0 || d > 3 || (d > 1 && p[0] == '0'))
            return false;
        p += d;
        if (part == 0) {
            if (*p != '.')
                return false;
            p++;
        }
    }
    return *p == '\0';
}

static const char *rcpt_status(const struct dsn_report *r, const struct dsn_rcpt *rc)
{
    if (status_valid(rc->status))
        return rc->status;
    const char *a = rcpt_action(r, rc);
    return strcmp(a, "failed") == 0 ? "5.0.0" : strcmp(a, "delayed") == 0 ? "4.0.0" : "2.0.0";
}

/* The text after "type; " of a diagnostic, for people. */
static const char *diag_text(const char *d)
{
    const char *semi = strchr(d, ';');
    if (semi == NULL)
        return d;
    for (const char *p = d; p < semi; p++)
        if (*p == ' ' || (unsigned char)*p < 0x21)
            return d; /* not a "type;" prefix */
    semi++;
    while (*semi == ' ')
        semi++;
    return semi;
}

static void put_text_part(struct out *o, const struct dsn_report *r, const struct plan *pl)
{
    char date[64];
    puts_(o, "Content-Description: Notification\r\n");
    if (pl->global && pl->text_8bit)
        puts_(o, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n");
    else
        puts_(o, "Content-Type: text/plain; charset=us-ascii\r\n");
    puts_(o, "\r\n");
    put_field(o, false, NULL, "This is the mail system at %s.", r->reporting_mta);
    puts_(o, "\r\n");
    const char *intro;
    switch (r->kind) {
    case DSN_FAILURE:
        intro = "Your message could not be delivered to the recipients below. The mail "
                "system has given up; it will not try again.";
        break;
    case DSN_DELAY:
        intro = "Your message has not been delivered yet to the recipients below. This is "
                "only a warning: the mail system keeps trying, and you do not need to send "
                "the message again. You will be told if it finally fails.";
        break;
    default:
        intro = "Your message was delivered to the recipients below, as you asked to be "
                "told.";
        break;
    }
    put_field(o, false, NULL, "%s", intro);
    puts_(o, "\r\n");
    for (size_t i = 0; i < r->nrcpts; i++) {
        const struct dsn_rcpt *rc = &r->rcpts[i];
        const char *action = rcpt_action(r, rc);
        char what[200];
        if (strcmp(action, "delivered") == 0)
            snprintf(what, sizeof what, "delivered");
        else if (strcmp(action, "relayed") == 0)
            snprintf(what, sizeof what,
                     "relayed to a system that does not report delivery (status %s)",
                     rcpt_status(r, rc));
        else if (strcmp(action, "expanded") == 0)
            snprintf(what, sizeof what, "delivered and forwarded to further addresses");
        else
            snprintf(what, sizeof what, "status %s", rcpt_status(r, rc));
        char until[100] = "";
        if (strcmp(action, "delayed") == 0 && rc->will_retry_until) {
            format_date(rc->will_retry_until, date, sizeof date);
            snprintf(until, sizeof until, " (the mail system will try until %s)", date);
        }
        bool diag = rc->diagnostic && rc->diagnostic[0];
        bool remote = rc->remote_mta && rc->remote_mta[0];
        put_field(o, pl->global, NULL, "<%s>: %s%s%s%s%s%s%s", rc->addr, what, diag ? ": " : "",
                  diag ? diag_text(rc->diagnostic) : "", remote ? " (reported by " : "",
                  remote ? rc->remote_mta : "", remote ? ")" : "", until);
        puts_(o, "\r\n"); /* an empty line between recipients */
    }
    switch (pl->third) {
    case THIRD_FULL:
        puts_(o, "The original message is attached.\r\n");
        break;
    case THIRD_HEADERS:
        if (pl->too_large)
            put_field(o, false, NULL, "%s",
                      "The original message was too large (or not in a form) to return in "
                      "full; its headers are attached.");
        else
            puts_(o, "The headers of the original message are attached.\r\n");
        break;
    case THIRD_NONE:
        break;
    }
}

/* "type; value" of Original-Recipient from an ORCPT "type;xtext". false: omit the field. */
static bool orcpt_field(const char *orcpt, bool global, char **out)
{
    const char *semi = strchr(orcpt, ';');
    if (semi == NULL || semi == orcpt)
        return false;
    char *type = xstrndup(orcpt, (size_t)(semi - orcpt));
    for (char *p = type; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-')) {
            free(type);
            return false; /* address-type is an atom */
        }
    }
    const char *raw = semi + 1;
    bool is_utf8 = strcasecmp(type, "utf-8") == 0;
    char *dec = xtext_decode_value(raw, is_utf8);
    const char *value = raw;
    if (dec != NULL && field_safe(dec, global && is_utf8) && !(is_utf8 && !global))
        value = dec; /* the decoded address */
    else if (!field_safe(raw, false))
        value = NULL;
    if (value != NULL) {
        if (strcasecmp(type, "rfc822") == 0)
            *out = xasprintf("rfc822; %s", value);
        else
            *out = xasprintf("%s; %s", type, value);
    }
    free(dec);
    free(type);
    return value != NULL;
}

static void put_status_part(struct out *o, const struct dsn_report *r, const struct plan *pl)
{
    char date[64];
    puts_(o, "Content-Description: Delivery report\r\n");
    if (pl->global) {
        puts_(o, "Content-Type: message/global-delivery-status\r\n");
        if (pl->text_8bit)
            puts_(o, "Content-Transfer-Encoding: 8bit\r\n");
    } else {
        puts_(o, "Content-Type: message/delivery-status\r\n");
    }
    puts_(o, "\r\n");
    /* per-message fields, in RFC 3464 §2.2 order */
    if (r->envid && r->envid[0]) {
        char *dec = xtext_decode_value(r->envid, false);
        const char *v = dec && field_safe(dec, false) ? dec : r->envid;
        put_field(o, false, "Original-Envelope-Id", "%s", v);
        free(dec);
    }
    put_field(o, false, "Reporting-MTA", "dns; %s", r->reporting_mta);
    if (r->arrival) {
        format_date(r->arrival, date, sizeof date);
        put_field(o, false, "Arrival-Date", "%s", date);
    }
    if (r->orig_qid && r->orig_qid[0])
        put_field(o, false, "X-Tern-Queue-ID", "%s", r->orig_qid);
    for (size_t i = 0; i < r->nrcpts; i++) {
        const struct dsn_rcpt *rc = &r->rcpts[i];
        const char *action = rcpt_action(r, rc);
        puts_(o, "\r\n");
        char *orig = NULL;
        if (rc->orcpt && orcpt_field(rc->orcpt, pl->global, &orig)) {
            put_field(o, pl->global, "Original-Recipient", "%s", orig);
            free(orig);
        }
        if (!str_8bit(rc->addr)) {
            put_field(o, false, "Final-Recipient", "rfc822; %s", rc->addr);
        } else if (pl->global) {
            put_field(o, true, "Final-Recipient", "utf-8; %s", rc->addr);
        } else {
            char *esc = unicode_escape(rc->addr);
            put_field(o, false, "Final-Recipient", "utf-8; %s", esc);
            free(esc);
        }
        put_field(o, false, "Action", "%s", action);
        put_field(o, false, "Status", "%s", rcpt_status(r, rc));
        if (rc->remote_mta && rc->remote_mta[0])
            put_field(o, false, "Remote-MTA", "dns; %s", rc->remote_mta);
        if (rc->diagnostic && rc->diagnostic[0]) {
            if (diag_text(rc->diagnostic) != rc->diagnostic)
                put_field(o, pl->global, "Diagnostic-Code", "%s", rc->diagnostic);
            else
                put_field(o, pl->global, "Diagnostic-Code", "x-tern; %s", rc->diagnostic);
        }
        if (rc->last_attempt) {
            format_date(rc->last_attempt, date, sizeof date);
            put_field(o, false, "Last-Attempt-Date", "%s", date);
        }
        if (strcmp(action, "delayed") == 0 && rc->will_retry_until) {
            /* RFC 3464 §2.3.9: in "delayed" reports only */
            format_date(rc->will_retry_until, date, sizeof date);
            put_field(o, false, "Will-Retry-Until", "%s", date);
        }
    }
}

static void put_third_part(struct out *o, const struct dsn_report *r, const struct plan *pl)
{
    if (pl->third == THIRD_FULL) {
        puts_(o, r->kind == DSN_FAILURE ? "Content-Description: Undelivered Message\r\n"
                                        : "Content-Description: Message\r\n");
        puts_(o, pl->global ? "Content-Type: message/global\r\n"
                            : "Content-Type: message/rfc822\r\n");
    } else {
        puts_(o, r->kind == DSN_FAILURE ? "Content-Description: Undelivered Message Headers\r\n"
                                        : "Content-Description: Message Headers\r\n");
        puts_(o, pl->global ? "Content-Type: message/global-headers\r\n"
                            : "Content-Type: text/rfc822-headers\r\n");
    }
    if (pl->ret_base64)
        puts_(o, "Content-Transfer-Encoding: base64\r\n");
    else if (pl->ret_8bit)
        puts_(o, "Content-Transfer-Encoding: 8bit\r\n");
    puts_(o, "\r\n");
    if (pl->ret_base64)
        put_base64(o, pl->ret_data, pl->ret_len);
    else
        put(o, pl->ret_data, pl->ret_len);
}

/* ---- planning ---- */

static bool occurs(const char *hay, size_t n, const char *needle)
{
    return hay != NULL && n > 0 && memmem(hay, n, needle, strlen(needle)) != NULL;
}

static bool boundary_free(const struct dsn_report *r, const struct plan *pl, const char *b)
{
    if (!pl->ret_base64 && occurs(pl->ret_data, pl->ret_len, b))
        return false;
    const char *fields[] = {r->to, r->envid, r->reporting_mta, r->orig_qid};
    for (size_t i = 0; i < ARRAY_LEN(fields); i++)
        if (fields[i] && strstr(fields[i], b))
            return false;
    for (size_t i = 0; i < r->nrcpts; i++) {
        const struct dsn_rcpt *rc = &r->rcpts[i];
        const char *rf[] = {rc->addr, rc->orcpt, rc->diagnostic, rc->remote_mta};
        for (size_t k = 0; k < ARRAY_LEN(rf); k++)
            if (rf[k] && strstr(rf[k], b))
                return false;
    }
    return true;
}

static void choose_boundary(const struct dsn_report *r, struct plan *pl)
{
    uint64_t h = 1469598103934665603ull;
    const char *seed[] = {r->orig_qid, r->message_id, r->to};
    for (size_t i = 0; i < ARRAY_LEN(seed); i++)
        for (const char *p = seed[i] ? seed[i] : ""; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h ^= (uint64_t)r->now;
    for (unsigned n = 0;; n++) {
        snprintf(pl->boundary, sizeof pl->boundary, "=_tern_%016llx_%u", (unsigned long long)h, n);
        if (boundary_free(r, pl, pl->boundary))
            return;
    }
}

static void plan_report(const struct dsn_report *r, struct plan *pl)
{
    memset(pl, 0, sizeof *pl);
    pl->global = r->smtputf8;
    if (pl->global) {
        pl->text_8bit = str_8bit(r->to);
        for (size_t i = 0; i < r->nrcpts; i++) {
            char *orig = NULL;
            if (str_8bit(r->rcpts[i].addr) || str_8bit(r->rcpts[i].diagnostic) ||
                (r->rcpts[i].orcpt && orcpt_field(r->rcpts[i].orcpt, true, &orig) &&
                 str_8bit(orig)))
                pl->text_8bit = true;
            free(orig);
        }
    }
    const char *msg = r->original;
    size_t len = msg ? r->original_len : 0;
    if (len == 0) {
        pl->third = THIRD_NONE;
        return;
    }
    bool want_full = r->kind == DSN_FAILURE && r->ret != DSN_RET_HDRS;
    if (want_full && len <= r->return_limit && clean_lines(msg, len)) {
        pl->third = THIRD_FULL;
        pl->ret_data = msg;
        pl->ret_len = len;
        pl->ret_8bit = has_8bit(msg, len);
        return;
    }
    pl->too_large = want_full;
    pl->third = THIRD_HEADERS;
    size_t h = dsn_header_length(msg, len);
    /* the header lines without the empty line that ends them; a section cut short by the
     * caller ends at its last complete line */
    if (h >= 2 && msg[h - 1] == '\n' && msg[h - 2] == '\r' && (h == 2 || msg[h - 3] == '\n'))
        h -= 2;
    else if (h >= 1 && msg[h - 1] == '\n' && (h == 1 || msg[h - 2] == '\n'))
        h -= 1;
    else if (h == len) {
        while (h > 0 && msg[h - 1] != '\n')
            h--;
    }
    if (h == 0) {
        pl->third = THIRD_NONE;
        return;
    }
    pl->ret_data = msg;
    pl->ret_len = h;
    pl->ret_base64 = !clean_lines(msg, h);
    pl->ret_8bit = !pl->ret_base64 && has_8bit(msg, h);
}

int dsn_compose(const struct dsn_report *r, struct buf *outbuf)
{
    struct plan pl;
    plan_report(r, &pl);
    choose_boundary(r, &pl);
    bool any_8bit = pl.ret_8bit || (pl.global && pl.text_8bit);
    struct out o = {outbuf, true};
    char date[64];

    /* the header */
    puts_(&o, "From: Mail Delivery System <");
    puts_(&o, r->from);
    puts_(&o, ">\r\n");
    if (r->to && r->to[0])
        put_field(&o, pl.global, "To", "<%s>", r->to);
    else
        puts_(&o, "To: undisclosed-recipients:;\r\n");
    static const char *const subjects[] = {"Undelivered Mail Returned to Sender",
                                           "Delivery Status Notification (Delay)",
                                           "Delivery Status Notification (Success)"};
    put_field(&o, false, "Subject", "%s", subjects[r->kind]);
    format_date(r->now, date, sizeof date);
    put_field(&o, false, "Date", "%s", date);
    put_field(&o, false, "Message-ID", "%s", r->message_id);
    puts_(&o, "MIME-Version: 1.0\r\n");
    putf(&o, "Content-Type: multipart/report; report-type=%s;\r\n\tboundary=\"%s\"\r\n",
         pl.global ? "global-delivery-status" : "delivery-status", pl.boundary);
    puts_(&o, "Auto-Submitted: auto-replied\r\n"); /* RFC 3834 §5 */
    if (any_8bit)
        puts_(&o, "Content-Transfer-Encoding: 8bit\r\n");
    puts_(&o, "\r\nThis is a MIME-encapsulated message.\r\n");

    putf(&o, "\r\n--%s\r\n", pl.boundary);
    put_text_part(&o, r, &pl);
    putf(&o, "\r\n--%s\r\n", pl.boundary);
    put_status_part(&o, r, &pl);
    if (pl.third != THIRD_NONE) {
        putf(&o, "\r\n--%s\r\n", pl.boundary);
        put_third_part(&o, r, &pl);
    }
    putf(&o, "\r\n--%s--\r\n", pl.boundary);
    return o.ok ? 0 : -1;
}
