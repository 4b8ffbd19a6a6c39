/*
 * esmtp: MAIL and RCPT parameters (RFC 5321 §4.1.2 esmtp-param) and xtext (RFC 3461 §4).
 *
 *   esmtp-param   = esmtp-keyword ["=" esmtp-value]
 *   esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
 *   esmtp-value   = 1*(%d33-60 / %d62-126)
 *
 * The list is split first (syntax), then each parameter is judged in the order given, so
 * the first fault wins. Verdicts: syntax or value errors and duplicates are 501 5.5.4;
 * a keyword that is unknown or belongs to an extension this session did not advertise is
 * 555 5.5.4 (RFC 5321 §4.1.1.11); SIZE above the fixed limit is 552 5.3.4 (RFC 1870 §6.1).
 *
 * Invariants: nothing is read outside s[0..n); every value is length-checked before it is
 * copied into the fixed fields of mail_params / rcpt_params. No allocation, no state.
 */
#include "mail/esmtp.h"

#include <string.h>

#include "lib/strutil.h"

struct param {
    const char *kw;
    size_t kwlen;
    const char *val; /* NULL when there was no "=" */
    size_t vlen;
};

static bool fail(struct esmtp_error *err, int code, const char *enh, const char *text)
{
    err->code = code;
    err->enh = enh;
    err->text = text;
    return false;
}

static bool bad(struct esmtp_error *err, const char *text)
{
    return fail(err, 501, "5.5.4", text);
}

static bool unsupported(struct esmtp_error *err)
{
    return fail(err, 555, "5.5.4", "Unsupported parameter");
}

static bool accepted(struct esmtp_error *err)
{
    err->code = 0;
    err->enh = "";
    err->text = "";
    return true;
}

static bool is_alnum(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}


/* Case-insensitive comparison of s[0..n) with an upper-case ASCII literal. */
static bool ieq(const char *s, size_t n, const char *lit)
{
    size_t i = 0;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'a' && c <= 'z')
            c = (unsigned char)(c - 'a' + 'A');
        if (lit[i] == '\0' || c != (unsigned char)lit[i])
            return false;
    }
    return lit[i] == '\0';
}

/* Split the parameter list; each parameter must be preceded by at least one SP (the first
 * one separates it from the path), trailing SPs are tolerated. */
static bool split(const char *s, size_t n, struct param *p, size_t *np, struct esmtp_error *err)
{
    size_t i = 0, count = 0;
    for (;;) {
        size_t sp = i;
        while (i < n && s[i] == ' ')
            i++;
        if (i == n)
            break;
        if (i == sp)
            return bad(err, "Syntax error in parameters");
        if (count == ESMTP_PARAMS_MAX)
            return bad(err, "Too many parameters");
        struct param *q = &p[count++];
        q->kw = s + i;
        if (!is_alnum((unsigned char)s[i]))
            return bad(err, "Syntax error in parameters");
        while (i < n && (is_alnum((unsigned char)s[i]) || s[i] == '-'))
            i++;
        q->kwlen = (size_t)(s + i - q->kw);
        q->val = NULL;
        q->vlen = 0;
        if (i < n && s[i] == '=') {
            i++;
            q->val = s + i;
            while (i < n && (unsigned char)s[i] >= 33 && (unsigned char)s[i] <= 126 &&
                   s[i] != '=')
                i++;
            q->vlen = (size_t)(s + i - q->val);
            if (q->vlen == 0)
                return bad(err, "Syntax error in parameters");
        }
        if (i < n && s[i] != ' ')
            return bad(err, "Syntax error in parameters");
    }
    *np = count;
    return true;
}

/* SIZE=1*20DIGIT (RFC 1870 §4); a value beyond 2^64-1 saturates (it exceeds any limit). */
static bool parse_size_param(const struct param *p, const struct esmtp_offer *offer, uint64_t *out,
                       struct esmtp_error *err)
{
    if (p->val == NULL || p->vlen > 20)
        return bad(err, "Bad SIZE value");
    uint64_t v = 0;
    for (size_t i = 0; i < p->vlen; i++) {
        unsigned char c = (unsigned char)p->val[i];
        if (c < '0' || c > '9')
            return bad(err, "Bad SIZE value");
        unsigned d = (unsigned)(c - '0');
        v = (v > (UINT64_MAX - d) / 10) ? UINT64_MAX : v * 10 + d;
    }
    if (offer->size_limit != 0 && v > offer->size_limit)
        return fail(err, 552, "5.3.4", "Message size exceeds fixed maximum message size");
    *out = v;
    return true;
}

static bool parse_body(const struct param *p, const struct esmtp_offer *offer,
                       enum body_type *out, struct esmtp_error *err)
{
    if (p->val == NULL)
        return bad(err, "Bad BODY value");
    if (ieq(p->val, p->vlen, "7BIT")) {
        *out = BODY_7BIT;
    } else if (ieq(p->val, p->vlen, "8BITMIME")) {
        if (!offer->eightbitmime)
            return unsupported(err);
        *out = BODY_8BITMIME;
    } else if (ieq(p->val, p->vlen, "BINARYMIME")) {
        if (!offer->binarymime)
            return unsupported(err);
        *out = BODY_BINARYMIME;
    } else {
        return bad(err, "Bad BODY value");
    }
    return true;
}

/* A value that must be xtext of at most max characters, copied as given into out. */
static bool take_xtext(const struct param *p, size_t max, char *out, const char *why,
                       struct esmtp_error *err)
{
    if (p->val == NULL || p->vlen > max || !xtext_valid(p->val, p->vlen))
        return bad(err, why);
    memcpy(out, p->val, p->vlen);
    out[p->vlen] = '\0';
    return true;
}

enum mail_kw { MK_SIZE, MK_BODY, MK_SMTPUTF8, MK_RET, MK_ENVID, MK_AUTH };

bool esmtp_parse_mail(const char *s, size_t n, const struct esmtp_offer *offer,
                      struct mail_params *out, struct esmtp_error *err)
{
    memset(out, 0, sizeof *out);
    struct param p[ESMTP_PARAMS_MAX];
    size_t np;
    if (!split(s, n, p, &np, err))
        return false;
    unsigned seen = 0;
    for (size_t i = 0; i < np; i++) {
        const struct param *q = &p[i];
        enum mail_kw k;
        bool offered;
        if (ieq(q->kw, q->kwlen, "SIZE"))
            k = MK_SIZE, offered = offer->size;
        else if (ieq(q->kw, q->kwlen, "BODY"))
            /* BODY comes with 8BITMIME (RFC 6152) and with BINARYMIME (RFC 3030) */
            k = MK_BODY, offered = offer->eightbitmime || offer->binarymime;
        else if (ieq(q->kw, q->kwlen, "SMTPUTF8"))
            k = MK_SMTPUTF8, offered = offer->smtputf8;
        else if (ieq(q->kw, q->kwlen, "RET"))
            k = MK_RET, offered = offer->dsn;
        else if (ieq(q->kw, q->kwlen, "ENVID"))
            k = MK_ENVID, offered = offer->dsn;
        else if (ieq(q->kw, q->kwlen, "AUTH"))
            k = MK_AUTH, offered = offer->auth;
        else
            return unsupported(err);
        if (!offered)
            return unsupported(err);
        if (seen & (1u << k))
            return bad(err, "Duplicate parameter");
        seen |= 1u << k;

        switch (k) {
        case MK_SIZE:
            if (!parse_size_param(q, offer, &out->size, err))
                return false;
            break;
        case MK_BODY:
            if (!parse_body(q, offer, &out->body, err))
                return false;
            break;
        case MK_SMTPUTF8:
            if (q->val != NULL)
                return bad(err, "SMTPUTF8 takes no value");
            out->smtputf8 = true;
            break;
        case MK_RET:
            if (q->val != NULL && ieq(q->val, q->vlen, "FULL"))
                out->ret = DSN_RET_FULL;
            else if (q->val != NULL && ieq(q->val, q->vlen, "HDRS"))
                out->ret = DSN_RET_HDRS;
            else
                return bad(err, "Bad RET value");
            break;
        case MK_ENVID:
            if (!take_xtext(q, ENVID_MAX, out->envid, "Bad ENVID value", err))
                return false;
            break;
        case MK_AUTH:
            /* RFC 4954 §5: AUTH=<> (identity unknown) or an xtext mailbox; "<>" is xtext */
            if (!take_xtext(q, AUTH_PARAM_MAX, out->auth, "Bad AUTH value", err))
                return false;
            break;
        }
    }
    return accepted(err);
}

/* NOTIFY = "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" ) (RFC 3461 §4.1). */
static bool parse_notify(const struct param *p, unsigned *out, struct esmtp_error *err)
{
    if (p->val == NULL)
        return bad(err, "Bad NOTIFY value");
    if (ieq(p->val, p->vlen, "NEVER")) {
        *out = DSN_NOTIFY_NEVER;
        return true;
    }
    unsigned bits = 0;
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < p->vlen && p->val[i] != ',')
            i++;
        unsigned bit;
        if (ieq(p->val + start, i - start, "SUCCESS"))
            bit = DSN_NOTIFY_SUCCESS;
        else if (ieq(p->val + start, i - start, "FAILURE"))
            bit = DSN_NOTIFY_FAILURE;
        else if (ieq(p->val + start, i - start, "DELAY"))
            bit = DSN_NOTIFY_DELAY;
        else
            return bad(err, "Bad NOTIFY value"); /* also NEVER in a list, or an empty item */
        if (bits & bit)
            return bad(err, "Bad NOTIFY value");
        bits |= bit;
        if (i == p->vlen)
            break;
        i++; /* the comma */
    }
    *out = bits;
    return true;
}

/* ORCPT = addr-type ";" xtext (RFC 3461 §4.2); addr-type is an atom (RFC 5322 atext). */
static bool parse_orcpt(const struct param *p, char *out, struct esmtp_error *err)
{
    if (p->val == NULL || p->vlen > ORCPT_MAX)
        return bad(err, "Bad ORCPT value");
    const char *semi = memchr(p->val, ';', p->vlen);
    if (semi == NULL || semi == p->val)
        return bad(err, "Bad ORCPT value");
    for (const char *c = p->val; c < semi; c++) {
        unsigned char ch = (unsigned char)*c;
        if (!is_alnum(ch) && (ch == '\0' || strchr("!#$%&'*+-/=?^_`{|}~", ch) == NULL))
            return bad(err, "Bad ORCPT value");
    }
    size_t rest = p->vlen - (size_t)(semi + 1 - p->val);
    if (!xtext_valid(semi + 1, rest))
        return bad(err, "Bad ORCPT value");
    memcpy(out, p->val, p->vlen);
    out[p->vlen] = '\0';
    return true;
}

enum rcpt_kw { RK_NOTIFY, RK_ORCPT };

bool esmtp_parse_rcpt(const char *s, size_t n, const struct esmtp_offer *offer,
                      struct rcpt_params *out, struct esmtp_error *err)
{
    memset(out, 0, sizeof *out);
    struct param p[ESMTP_PARAMS_MAX];
    size_t np;
    if (!split(s, n, p, &np, err))
        return false;
    unsigned seen = 0;
    for (size_t i = 0; i < np; i++) {
        const struct param *q = &p[i];
        enum rcpt_kw k;
        if (ieq(q->kw, q->kwlen, "NOTIFY"))
            k = RK_NOTIFY;
        else if (ieq(q->kw, q->kwlen, "ORCPT"))
            k = RK_ORCPT;
        else
            return unsupported(err);
        if (!offer->dsn)
            return unsupported(err);
        if (seen & (1u << k))
            return bad(err, "Duplicate parameter");
        seen |= 1u << k;
        if (k == RK_NOTIFY ? !parse_notify(q, &out->notify, err)
                           : !parse_orcpt(q, out->orcpt, err))
            return false;
    }
    return accepted(err);
}

/* xchar = %d33-42 / %d44-60 / %d62-126 (printable ASCII but "+" and "="). */
static bool is_xchar(unsigned char c)
{
    return c >= 33 && c <= 126 && c != '+' && c != '=';
}

bool xtext_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            if (n - i < 3 || hex_value((char)s[i + 1]) < 0 ||
                hex_value((char)s[i + 2]) < 0)
                return false;
            i += 3;
        } else if (is_xchar(c)) {
            i++;
        } else {
            return false;
        }
    }
    return true;
}

size_t xtext_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        char v;
        if (c == '+') {
            int hi = n - i >= 3 ? hex_value((char)s[i + 1]) : -1;
            int lo = n - i >= 3 ? hex_value((char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return (size_t)-1;
            v = (char)(hi * 16 + lo);
            i += 3;
        } else if (is_xchar(c)) {
            v = (char)c;
            i++;
        } else {
            return (size_t)-1;
        }
        if (o + 1 >= cap)
            return (size_t)-1;
        out[o++] = v;
    }
    if (cap == 0)
        return (size_t)-1;
    out[o] = '\0';
    return o;
}

size_t xtext_encode(const char *s, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_xchar(c)) {
            if (o + 1 >= cap)
                return (size_t)-1;
            out[o++] = (char)c;
        } else {
            if (o + 3 >= cap)
                return (size_t)-1;
            out[o++] = '+';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    if (cap == 0)
        return (size_t)-1;
    out[o] = '\0';
    return o;
}
