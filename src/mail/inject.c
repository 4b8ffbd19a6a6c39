/*
 * inject: see inject.h.
 *
 * Input is taken line by line through one bounded line buffer (INJECT_LINE_CHUNK): header
 * lines must fit in it (they are limited to 998 octets anyway); a longer body line is
 * passed on in pieces, which is why a piece-wise line can never be mistaken for the "."
 * line. Header fields are kept as written (folding included) until the input ends,
 * because -t and the missing-field checks need the whole header section; the body goes
 * straight into its buffer, already in CRLF form.
 */
#include "mail/inject.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"
#include "lib/mem.h"
#include "mail/address.h"

#define INJECT_LINE_CHUNK 8192
#define INJECT_ELEMENT_MAX 2048  /* one address list element (display name included) */
#define INJECT_NAME_MAX 200      /* display name bytes used in an added From: */

struct hdr {
    char *text; /* the field as written, folded lines joined by CRLF, no final CRLF */
    size_t len;
    size_t namelen;
};

enum phase { PH_HEADERS, PH_BODY };

struct inject {
    struct inject_params p;
    enum phase phase;
    enum inject_status status; /* INJECT_MORE until the input ends or something fails */
    char err[512];
    bool first_line;
    bool line_split;   /* part of the current line already went to the body */
    struct buf line;   /* the current, incomplete line */
    struct hdr *h;
    size_t nh, hcap;
    size_t hbytes;     /* header bytes kept so far, CRLFs included */
    struct buf head, body;
    char **rcpts;
    size_t nrcpts, rcap;
};

static const char *const wdays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void inject_format_date(time_t t, char *out, size_t cap)
{
    struct tm tm;
    localtime_r(&t, &tm);
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    /* names from our own tables: the locale must never reach a header */
    snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d %c%02ld%02ld", wdays[tm.tm_wday],
             tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec, sign, off / 60, off % 60);
}

/* ---- addresses ---- */

const char *inject_address(const char *s, const char *domain, char *out, size_t cap)
{
    size_t n = strlen(s);
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n >= 2 && s[0] == '<' && s[n - 1] == '>') {
        s++;
        n -= 2;
    }
    if (n > 0 && s[0] == '@') { /* an obsolete source route "@a,@b:" (RFC 5322 §4.4) */
        const char *colon = memchr(s, ':', n);
        if (colon == NULL)
            return "malformed source route";
        n -= (size_t)(colon + 1 - s);
        s = colon + 1;
    }
    if (n == 0)
        return "empty address";
    bool quoted = false, at = false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && quoted)
            i++;
        else if (s[i] == '"')
            quoted = !quoted;
        else if (s[i] == '@' && !quoted)
            at = true;
    }
    char q[ADDR_TEXT_MAX + 2];
    size_t qn;
    if (at) {
        if (n > ADDR_TEXT_MAX)
            return "address too long";
        memcpy(q, s, n);
        qn = n;
    } else {
        /* a bare name, as cron's "root": ours */
        size_t dn = domain ? strlen(domain) : 0;
        if (dn == 0)
            return "no domain";
        if (n + 1 + dn > ADDR_TEXT_MAX)
            return "address too long";
        memcpy(q, s, n);
        q[n] = '@';
        memcpy(q + n + 1, domain, dn);
        qn = n + 1 + dn;
    }
    q[qn] = '\0';
    struct mailaddr ma;
    const char *why = addr_parse_mailbox(q, qn, ADDR_ALLOW_UTF8, &ma);
    if (why != NULL)
        return why;
    if (addr_format(&ma, out, cap) >= cap)
        return "address too long";
    return NULL;
}

struct element {
    struct buf spec;  /* addr-spec text outside <>, comments and white space removed */
    struct buf angle; /* what was inside <> */
    bool have_angle;
    bool gap;         /* white space after some spec text */
    bool words;       /* two words with only white space between: a phrase */
};

static void element_reset(struct element *e)
{
    buf_reset(&e->spec);
    buf_reset(&e->angle);
    e->have_angle = e->gap = e->words = false;
}

/* Append to the addr-spec text; note a phrase ("Bob bob@x") as an error for later, but
 * allow the obsolete spaces around "." and "@" ("bob @ example.com"). */
static void spec_add(struct element *e, const char *p, size_t n)
{
    if (e->gap && e->spec.len > 0) {
        char last = e->spec.data[e->spec.len - 1];
        if (last != '.' && last != '@' && p[0] != '.' && p[0] != '@')
            e->words = true;
    }
    e->gap = false;
    if (!buf_add(&e->spec, p, n))
        e->words = true; /* too long to be an address: it must be a display name */
}

/* Skip a comment starting at s[i] == '('; returns the index after it, or 0 if unbalanced. */
static size_t skip_comment(const char *s, size_t n, size_t i)
{
    int depth = 0;
    for (; i < n; i++) {
        if (s[i] == '\\') {
            i++;
        } else if (s[i] == '(') {
            depth++;
        } else if (s[i] == ')') {
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

/* A quoted string at s[i] == '"': index after the closing quote, or 0. */
static size_t skip_quoted(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return 0;
}

static int element_finish(struct element *e, const char *domain,
                          void (*add)(void *arg, const char *addr), void *arg, char *err,
                          size_t errlen)
{
    const struct buf *src = e->have_angle ? &e->angle : &e->spec;
    if (!e->have_angle && e->spec.len == 0)
        return 0; /* empty element: "a@x,,b@y", "undisclosed-recipients:;" */
    char shown[96];
    snprintf(shown, sizeof shown, "%.80s%s", src->len ? src->data : "<>",
             src->len > 80 ? "..." : "");
    if (!e->have_angle && e->words) {
        snprintf(err, errlen, "invalid address \"%s\": a name needs the address in <...>",
                 shown);
        return -1;
    }
    char out[ADDR_TEXT_MAX + 1];
    const char *why = inject_address(src->len ? src->data : "", domain, out, sizeof out);
    if (why != NULL) {
        snprintf(err, errlen, "invalid address \"%s\": %s", shown, why);
        return -1;
    }
    add(arg, out);
    return 0;
}

int inject_parse_addresses(const char *s, size_t n, const char *domain,
                           void (*add)(void *arg, const char *addr), void *arg, char *err,
                           size_t errlen)
{
    struct element e = {BUF_INIT(INJECT_ELEMENT_MAX), BUF_INIT(INJECT_ELEMENT_MAX), false,
                        false, false};
    bool in_group = false;
    int rc = -1;
    size_t i = 0;
    for (;;) {
        if (i >= n || s[i] == ',' || s[i] == ';') {
            if (element_finish(&e, domain, add, arg, err, errlen) != 0)
                goto out;
            element_reset(&e);
            if (i >= n)
                break;
            if (s[i] == ';') {
                if (!in_group) {
                    snprintf(err, errlen, "\";\" outside a group");
                    goto out;
                }
                in_group = false;
            }
            i++;
            continue;
        }
        char c = s[i];
        if (c == '(') {
            size_t j = skip_comment(s, n, i);
            if (j == 0) {
                snprintf(err, errlen, "unbalanced parenthesis");
                goto out;
            }
            if (e.spec.len > 0)
                e.gap = true;
            i = j;
        } else if (c == '"') {
            size_t j = skip_quoted(s, n, i);
            if (j == 0) {
                snprintf(err, errlen, "unbalanced quote");
                goto out;
            }
            spec_add(&e, s + i, j - i);
            i = j;
        } else if (c == '<') {
            if (e.have_angle) {
                snprintf(err, errlen, "two addresses in <...> without a comma between them");
                goto out;
            }
            size_t j = i + 1;
            while (j < n && s[j] != '>') {
                if (s[j] == '"') {
                    size_t k = skip_quoted(s, n, j);
                    if (k == 0)
                        break;
                    if (!buf_add(&e.angle, s + j, k - j))
                        break;
                    j = k;
                    continue;
                }
                if (s[j] != ' ' && s[j] != '\t' && s[j] != '\r' && s[j] != '\n' &&
                    !buf_addc(&e.angle, s[j]))
                    break;
                j++;
            }
            if (j >= n || s[j] != '>') {
                snprintf(err, errlen, "unbalanced < or address too long");
                goto out;
            }
            e.have_angle = true;
            i = j + 1;
        } else if (c == ':' && !e.have_angle) {
            /* "name: a, b;" a group; what came before was its display name */
            if (in_group) {
                snprintf(err, errlen, "nested group");
                goto out;
            }
            in_group = true;
            element_reset(&e);
            i++;
        } else if (c == '[') {
            const char *close = memchr(s + i, ']', n - i);
            if (close == NULL) {
                snprintf(err, errlen, "unbalanced [");
                goto out;
            }
            spec_add(&e, s + i, (size_t)(close + 1 - (s + i)));
            i = (size_t)(close + 1 - s);
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            if (e.spec.len > 0)
                e.gap = true;
            i++;
        } else {
            spec_add(&e, s + i, 1);
            i++;
        }
    }
    rc = 0;
out:
    buf_release(&e.spec);
    buf_release(&e.angle);
    return rc;
}

/* ---- reading ---- */

struct inject *inject_new(const struct inject_params *p)
{
    struct inject *in = xcalloc(1, sizeof *in);
    in->p = *p;
    in->phase = PH_HEADERS;
    in->status = INJECT_MORE;
    in->first_line = true;
    buf_init(&in->line, INJECT_LINE_CHUNK);
    buf_init(&in->head, p->max_size);
    buf_init(&in->body, p->max_size);
    return in;
}

static enum inject_status fail(struct inject *in, enum inject_status st, const char *fmt, ...)
    PRINTF_LIKE(3, 4);
static enum inject_status fail(struct inject *in, enum inject_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(in->err, sizeof in->err, fmt, ap);
    va_end(ap);
    in->status = st;
    return st;
}

static enum inject_status too_big(struct inject *in)
{
    return fail(in, INJECT_TOO_BIG, "message larger than %zu bytes", in->p.max_size);
}

/* RFC 5322 §3.6.8: field-name = 1*ftext (printable ASCII but ':'), then ':'; white space
 * before the colon is the obsolete syntax and still accepted. Returns the name length. */
static size_t field_name_len(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && s[i] > ' ' && s[i] < 0x7f && s[i] != ':')
        i++;
    size_t name = i;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return (name > 0 && i < n && s[i] == ':') ? name : 0;
}

static enum inject_status body_add(struct inject *in, const char *p, size_t n)
{
    if (in->hbytes + in->body.len + n > in->p.max_size || !buf_add(&in->body, p, n))
        return too_big(in);
    return INJECT_MORE;
}

static enum inject_status body_line(struct inject *in, const char *p, size_t n)
{
    if (body_add(in, p, n) != INJECT_MORE)
        return in->status;
    return body_add(in, "\r\n", 2);
}

static bool header_like(const struct inject *in, const char *s, size_t n)
{
    return (n > 0 && (s[0] == ' ' || s[0] == '\t') && in->nh > 0) || field_name_len(s, n) > 0;
}

/* A whole line (no line ending) while in the header section. */
static enum inject_status header_line(struct inject *in, const char *s, size_t n)
{
    bool first = in->first_line;
    in->first_line = false;
    if (first && n >= 5 && memcmp(s, "From ", 5) == 0)
        return INJECT_MORE; /* an mbox separator, not part of the message */
    if (n == 0) {
        in->phase = PH_BODY; /* the empty line: we write our own between head and body */
        return INJECT_MORE;
    }
    if (!header_like(in, s, n)) {
        /* the body starts without an empty line before it */
        in->phase = PH_BODY;
        return body_line(in, s, n);
    }
    if (n > INJECT_HEADER_LINE_MAX)
        return fail(in, INJECT_BAD_HEADER, "header line longer than %d bytes",
                    INJECT_HEADER_LINE_MAX);
    in->hbytes += n + 2;
    if (in->hbytes + in->body.len > in->p.max_size)
        return too_big(in);
    if (s[0] == ' ' || s[0] == '\t') {
        struct hdr *h = &in->h[in->nh - 1];
        h->text = xrealloc(h->text, h->len + 2 + n + 1);
        memcpy(h->text + h->len, "\r\n", 2);
        memcpy(h->text + h->len + 2, s, n);
        h->len += 2 + n;
        h->text[h->len] = '\0';
    } else {
        in->h = xgrow(in->h, &in->hcap, in->nh + 1, sizeof *in->h);
        struct hdr *h = &in->h[in->nh++];
        h->text = xstrndup(s, n);
        h->len = n;
        h->namelen = field_name_len(s, n);
    }
    return INJECT_MORE;
}

static enum inject_status complete_line(struct inject *in)
{
    const char *s = in->line.data ? in->line.data : "";
    size_t n = in->line.len;
    if (n > 0 && s[n - 1] == '\r')
        n--;
    enum inject_status st = INJECT_MORE;
    if (in->p.dot_ends && !in->line_split && n == 1 && s[0] == '.')
        st = in->status = INJECT_END;
    else if (in->phase == PH_HEADERS)
        st = header_line(in, s, n);
    else
        st = body_line(in, s, n);
    buf_reset(&in->line);
    in->line_split = false;
    return st;
}

/* The line buffer is full and no line end is in sight. */
static enum inject_status line_overflow(struct inject *in)
{
    if (in->phase == PH_HEADERS) {
        if (header_like(in, in->line.data, in->line.len))
            return fail(in, INJECT_BAD_HEADER, "header line longer than %d bytes",
                        INJECT_HEADER_LINE_MAX);
        in->phase = PH_BODY;
        in->first_line = false;
    }
    /* pass the piece on, but keep a final CR: it may be half of the CRLF */
    size_t keep = in->line.data[in->line.len - 1] == '\r' ? 1 : 0;
    if (body_add(in, in->line.data, in->line.len - keep) != INJECT_MORE)
        return in->status;
    buf_consume(&in->line, in->line.len - keep);
    in->line_split = true;
    return INJECT_MORE;
}

enum inject_status inject_feed(struct inject *in, const char *p, size_t n)
{
    while (n > 0 && in->status == INJECT_MORE) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        while (take > 0 && in->status == INJECT_MORE) {
            size_t room = buf_room(&in->line);
            size_t k = take < room ? take : room;
            buf_add(&in->line, p, k);
            p += k;
            n -= k;
            take -= k;
            if (buf_room(&in->line) == 0)
                line_overflow(in);
        }
        if (nl && in->status == INJECT_MORE) {
            p++;
            n--;
            complete_line(in);
        }
    }
    return in->status;
}

/* ---- finishing ---- */

static bool name_is(const struct hdr *h, const char *name)
{
    return h->namelen == strlen(name) && strncasecmp(h->text, name, h->namelen) == 0;
}

static void add_rcpt(void *arg, const char *addr)
{
    struct inject *in = arg;
    for (size_t i = 0; i < in->nrcpts; i++)
        if (strcasecmp(in->rcpts[i], addr) == 0)
            return;
    if (in->nrcpts >= in->p.max_rcpts) {
        if (in->status != INJECT_TOO_MANY_RCPTS)
            fail(in, INJECT_TOO_MANY_RCPTS, "more than %zu recipients", in->p.max_rcpts);
        return;
    }
    in->rcpts = xgrow(in->rcpts, &in->rcap, in->nrcpts + 1, sizeof *in->rcpts);
    in->rcpts[in->nrcpts++] = xstrdup(addr);
}

static bool is_atext_phrase(const char *s)
{
    for (; *s; s++)
        if (!(((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z') || (*s >= '0' && *s <= '9') ||
              strchr(" !#$%&'*+-/=?^_`{|}~", *s)))
            return false;
    return true;
}

/* The display name for an added From: (RFC 5322 §3.4 phrase; RFC 2047 encoded words for
 * non-ASCII). Control characters become spaces: a -F argument cannot add header lines.
 * False if b ran out of room. */
static bool put_display_name(struct buf *b, const char *name)
{
    char clean[INJECT_NAME_MAX + 1];
    size_t n = 0;
    bool ascii = true;
    for (const char *s = name; *s && n < INJECT_NAME_MAX; s++) {
        unsigned char c = (unsigned char)*s;
        clean[n++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
        if (c >= 0x80)
            ascii = false;
    }
    /* do not cut a UTF-8 sequence in half */
    while (n > 0 && name[n] != '\0' && ((unsigned char)name[n] & 0xc0) == 0x80)
        n--;
    clean[n] = '\0';
    bool ok = true;
    if (ascii && is_atext_phrase(clean))
        return buf_adds(b, clean);
    if (ascii) {
        ok &= buf_addc(b, '"');
        for (size_t i = 0; i < n; i++) {
            if (clean[i] == '"' || clean[i] == '\\')
                ok &= buf_addc(b, '\\');
            ok &= buf_addc(b, clean[i]);
        }
        return ok && buf_addc(b, '"');
    }
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    /* encoded words of at most 45 bytes of text (60 of base64), whole characters each,
     * one per folded line so no line passes 78 characters */
    for (size_t i = 0; i < n;) {
        size_t end = i + 45 < n ? i + 45 : n;
        while (end < n && end > i + 1 && ((unsigned char)clean[end] & 0xc0) == 0x80)
            end--;
        if (i > 0)
            ok &= buf_adds(b, "\r\n ");
        ok &= buf_adds(b, "=?UTF-8?B?");
        for (size_t j = i; j < end; j += 3) {
            uint32_t v = (uint32_t)(unsigned char)clean[j] << 16;
            if (j + 1 < end)
                v |= (uint32_t)(unsigned char)clean[j + 1] << 8;
            if (j + 2 < end)
                v |= (unsigned char)clean[j + 2];
            ok &= buf_addc(b, b64[v >> 18 & 63]);
            ok &= buf_addc(b, b64[v >> 12 & 63]);
            ok &= buf_addc(b, j + 1 < end ? b64[v >> 6 & 63] : '=');
            ok &= buf_addc(b, j + 2 < end ? b64[v & 63] : '=');
        }
        ok &= buf_adds(b, "?=");
        i = end;
    }
    return ok;
}

enum inject_status inject_finish(struct inject *in)
{
    if (in->status != INJECT_MORE && in->status != INJECT_END)
        return in->status;
    if (in->status == INJECT_MORE && (in->line.len > 0 || in->line_split)) {
        /* a last line without a line end */
        if (complete_line(in) != INJECT_MORE && in->status != INJECT_END)
            return in->status;
    }
    in->status = INJECT_MORE;

    bool resent = false, has_from = false, has_date = false, has_msgid = false, fits = true;
    for (size_t i = 0; i < in->nh; i++) {
        const struct hdr *h = &in->h[i];
        resent |= name_is(h, "Resent-To") || name_is(h, "Resent-Cc") ||
                  name_is(h, "Resent-Bcc");
        has_from |= name_is(h, "From");
        has_date |= name_is(h, "Date");
        has_msgid |= name_is(h, "Message-ID");
    }
    for (size_t i = 0; i < in->nh; i++) {
        const struct hdr *h = &in->h[i];
        bool bcc = name_is(h, "Bcc") || name_is(h, "Resent-Bcc");
        bool rcpt_field = resent ? (name_is(h, "Resent-To") || name_is(h, "Resent-Cc") ||
                                    name_is(h, "Resent-Bcc"))
                                 : (name_is(h, "To") || name_is(h, "Cc") || name_is(h, "Bcc"));
        if (in->p.extract_rcpts && rcpt_field) {
            const char *colon = memchr(h->text, ':', h->len);
            char err[400];
            if (inject_parse_addresses(colon + 1, h->len - (size_t)(colon + 1 - h->text),
                                       in->p.domain, add_rcpt, in, err, sizeof err) != 0)
                return fail(in, INJECT_BAD_ADDRESS, "%.*s: header: %s", (int)h->namelen,
                            h->text, err);
            if (in->status != INJECT_MORE)
                return in->status;
        }
        if (bcc)
            continue; /* never shown to the other recipients */
        fits &= buf_add(&in->head, h->text, h->len);
        fits &= buf_add(&in->head, "\r\n", 2);
    }
    if (!has_from && in->p.from_addr) {
        fits &= buf_adds(&in->head, "From: ");
        if (in->p.full_name && in->p.full_name[0]) {
            fits &= put_display_name(&in->head, in->p.full_name);
            fits &= buf_printf(&in->head, " <%s>\r\n", in->p.from_addr);
        } else {
            fits &= buf_printf(&in->head, "%s\r\n", in->p.from_addr);
        }
    }
    if (!has_date && in->p.date)
        fits &= buf_printf(&in->head, "Date: %s\r\n", in->p.date);
    if (!has_msgid && in->p.message_id)
        fits &= buf_printf(&in->head, "Message-ID: %s\r\n", in->p.message_id);
    fits &= buf_add(&in->head, "\r\n", 2);
    if (!fits || in->head.len + in->body.len > in->p.max_size)
        return too_big(in);
    in->status = INJECT_OK;
    return INJECT_OK;
}

const char *inject_error(const struct inject *in)
{
    return in->err;
}

const char *inject_head(const struct inject *in, size_t *len)
{
    *len = in->head.len;
    return in->head.data ? in->head.data : "";
}

const char *inject_body(const struct inject *in, size_t *len)
{
    *len = in->body.len;
    return in->body.data ? in->body.data : "";
}

size_t inject_nrcpts(const struct inject *in)
{
    return in->nrcpts;
}

const char *inject_rcpt(const struct inject *in, size_t i)
{
    return i < in->nrcpts ? in->rcpts[i] : NULL;
}

void inject_free(struct inject *in)
{
    if (in == NULL)
        return;
    for (size_t i = 0; i < in->nh; i++)
        free(in->h[i].text);
    free(in->h);
    for (size_t i = 0; i < in->nrcpts; i++)
        free(in->rcpts[i]);
    free(in->rcpts);
    buf_release(&in->line);
    buf_release(&in->head);
    buf_release(&in->body);
    free(in);
}
