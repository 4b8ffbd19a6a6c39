/*
 * record: see record.h for the format. Decoders treat every byte as hostile: lengths are
 * checked before use, numbers are parsed strictly, tokens are unescaped with every escape
 * validated, and nothing is allocated beyond what the (bounded) text holds.
 */
#include "queue/record.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/crc32c.h"
#include "lib/mem.h"
#include "lib/strutil.h"
#include "queue/qid.h"

static const uint8_t magic[4] = {'T', 'Q', 'R', 'C'};

const char *rec_err_name(enum rec_err e)
{
    switch (e) {
    case REC_OK: return "ok";
    case REC_SHORT: return "short";
    case REC_ZERO: return "zero";
    case REC_BAD_MAGIC: return "bad_magic";
    case REC_BAD_VERSION: return "bad_version";
    case REC_BAD_HCRC: return "bad_header_crc";
    case REC_BAD_TYPE: return "bad_type";
    case REC_BAD_FLAGS: return "bad_flags";
    case REC_TOO_LONG: return "too_long";
    case REC_BAD_CRC: return "bad_crc";
    case REC_BAD_TEXT: return "bad_text";
    }
    return "unknown";
}

const char *rec_type_name(unsigned type)
{
    switch (type) {
    case REC_SEGMENT: return "segment";
    case REC_MESSAGE: return "message";
    case REC_STATUS: return "status";
    }
    return "unknown";
}

/* ---- header ---- */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void rec_hdr_encode(uint8_t out[REC_HDR_LEN], enum rec_type type, uint32_t len,
                    uint32_t payload_crc)
{
    memcpy(out, magic, 4);
    out[4] = REC_VERSION;
    out[5] = (uint8_t)type;
    out[6] = out[7] = 0;
    put32(out + 8, len);
    put32(out + 12, payload_crc);
    put32(out + 16, crc32c(0, out, 16));
}

enum rec_err rec_hdr_decode(const void *p, size_t n, struct rec_hdr *h)
{
    const uint8_t *b = p;
    if (n < REC_HDR_LEN)
        return REC_SHORT;
    bool zero = true;
    for (size_t i = 0; i < REC_HDR_LEN && zero; i++)
        zero = b[i] == 0;
    if (zero)
        return REC_ZERO;
    if (memcmp(b, magic, 4) != 0)
        return REC_BAD_MAGIC;
    /* the header checksum first: a damaged header must not be mistaken for a new version */
    if (get32(b + 16) != crc32c(0, b, 16))
        return REC_BAD_HCRC;
    if (b[4] != REC_VERSION)
        return REC_BAD_VERSION;
    if (b[5] < REC_SEGMENT || b[5] > REC_STATUS)
        return REC_BAD_TYPE;
    if (b[6] != 0 || b[7] != 0)
        return REC_BAD_FLAGS;
    h->version = b[4];
    h->type = b[5];
    h->len = get32(b + 8);
    h->crc = get32(b + 12);
    if (h->len > REC_PAYLOAD_MAX)
        return REC_TOO_LONG;
    return REC_OK;
}

enum rec_err rec_payload_check(const struct rec_hdr *h, const void *payload, size_t n)
{
    if (n < h->len)
        return REC_SHORT;
    return crc32c(0, payload, h->len) == h->crc ? REC_OK : REC_BAD_CRC;
}

/* CRC combination: the CRC register is linear over GF(2), so crc(A||B) is crc(A) carried
 * through len(B) zero bytes, xor crc(B) (the pre/post inversions cancel). Carrying through
 * zeros is a 32x32 bit matrix raised to a power by repeated squaring: O(log len). */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *sq, const uint32_t *mat)
{
    for (int i = 0; i < 32; i++)
        sq[i] = gf2_times(mat, mat[i]);
}

/* zeros_op[k] carries a CRC through 2^k zero bytes; built once (8 KiB), so a combination
 * costs one matrix-vector product per set bit of the length instead of a chain of
 * matrix squarings (this runs for every message committed). */
static uint32_t zeros_op[64][32];
static pthread_once_t zeros_once = PTHREAD_ONCE_INIT;

static void build_zeros_ops(void)
{
    uint32_t odd[32], even[32];
    odd[0] = 0x82f63b78u; /* one zero bit: shift, and xor the polynomial if bit 0 was set */
    for (int i = 1; i < 32; i++)
        odd[i] = 1u << (i - 1);
    gf2_square(even, odd);            /* two zero bits */
    gf2_square(odd, even);            /* four */
    gf2_square(zeros_op[0], odd);     /* eight: one byte */
    for (int k = 1; k < 64; k++)
        gf2_square(zeros_op[k], zeros_op[k - 1]);
}

uint32_t rec_crc_combine(uint32_t crc1, uint32_t crc2, uint64_t len2)
{
    pthread_once(&zeros_once, build_zeros_ops);
    for (int k = 0; len2 != 0; k++, len2 >>= 1)
        if (len2 & 1)
            crc1 = gf2_times(zeros_op[k], crc1);
    return crc1 ^ crc2;
}

/* ---- text encoding ---- */

static bool put_tok(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    if (s == NULL)
        return buf_addc(b, '-');
    if (!buf_addc(b, ':'))
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p > 0x20 && *p < 0x7f && *p != '%') {
            if (!buf_addc(b, (char)*p))
                return false;
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            if (!buf_add(b, e, 3))
                return false;
        }
    }
    return true;
}

static bool put_line_tok(struct buf *b, const char *key, const char *val)
{
    return buf_adds(b, key) && buf_addc(b, ' ') && put_tok(b, val) && buf_addc(b, '\n');
}

static const char *const body_names[] = {[BODY_7BIT] = "7bit", [BODY_8BITMIME] = "8bitmime",
                                         [BODY_BINARYMIME] = "binarymime"};
static const char *const ret_names[] = {[DSN_RET_FULL] = "full", [DSN_RET_HDRS] = "hdrs"};
static const char *const state_names[] = {
    [QR_PENDING] = "pending",     [QR_DEFERRED] = "deferred", [QR_DELIVERED] = "delivered",
    [QR_FAILED] = "failed",       [QR_EXPANDED] = "expanded", [QR_DELETED] = "deleted",
};

const char *rec_state_name(enum qrcpt_state s)
{
    return (size_t)s < ARRAY_LEN(state_names) && state_names[s] ? state_names[s] : "unknown";
}

bool rec_segment_encode(struct buf *out, uint32_t seq, time_t created)
{
    return buf_printf(out, "tern-segment 1\nseq %u\ncreated %lld\n", seq, (long long)created);
}

bool rec_msg_encode(struct buf *out, const char *id, uint64_t arrival_ms,
                    const struct envelope *e, uint64_t body_len)
{
    bool ok = buf_printf(out, "tern-message 1\nid %s\narrival %lld\narrival-ms %llu\n", id,
                         (long long)e->arrival, (unsigned long long)arrival_ms) &&
              put_line_tok(out, "sender", e->sender ? e->sender : "");
    if (ok && e->body != BODY_UNSPEC && (size_t)e->body < ARRAY_LEN(body_names))
        ok = buf_printf(out, "body-type %s\n", body_names[e->body]);
    if (ok && e->smtputf8)
        ok = buf_adds(out, "smtputf8 1\n");
    if (ok && (e->ret == DSN_RET_FULL || e->ret == DSN_RET_HDRS))
        ok = buf_printf(out, "ret %s\n", ret_names[e->ret]);
    if (ok && e->envid)
        ok = put_line_tok(out, "envid", e->envid);
    if (ok && e->declared_size)
        ok = buf_printf(out, "size %llu\n", (unsigned long long)e->declared_size);
    if (ok && e->auth_param)
        ok = put_line_tok(out, "auth", e->auth_param);
    if (ok && e->client_ip)
        ok = put_line_tok(out, "client-ip", e->client_ip);
    if (ok && e->client_name)
        ok = put_line_tok(out, "client-name", e->client_name);
    if (ok && e->helo)
        ok = put_line_tok(out, "helo", e->helo);
    if (ok && e->auth_user)
        ok = put_line_tok(out, "auth-user", e->auth_user);
    if (ok && e->protocol)
        ok = put_line_tok(out, "protocol", e->protocol);
    for (size_t i = 0; ok && i < e->nrcpts; i++) {
        const struct env_rcpt *r = &e->rcpts[i];
        ok = buf_printf(out, "rcpt notify=%u orcpt=", r->notify) && put_tok(out, r->orcpt) &&
             buf_adds(out, " addr=") && put_tok(out, r->addr) && buf_addc(out, '\n');
    }
    return ok && buf_printf(out, "body %llu\n", (unsigned long long)body_len);
}

bool rec_status_encode(struct buf *out, const struct rec_status *s)
{
    bool ok = buf_printf(out, "tern-status 1\nid %s\nheld %d\n", s->id, s->held ? 1 : 0);
    for (size_t i = 0; ok && i < s->n; i++) {
        const struct rec_rcpt *r = &s->rcpts[i];
        char parent[16] = "-", flags[4] = "-";
        if (r->parent != QRCPT_NO_PARENT)
            snprintf(parent, sizeof parent, "%u", r->parent);
        size_t f = 0;
        if (r->delay_warned)
            flags[f++] = 'w';
        if (r->dsn_sent)
            flags[f++] = 's';
        if (r->relayed)
            flags[f++] = 'r';
        if (f)
            flags[f] = '\0';
        ok = buf_printf(out,
                        "rcpt i=%zu state=%s att=%u first=%lld next=%llu parent=%s notify=%u "
                        "flags=%s status=",
                        i, rec_state_name(r->state), r->attempts, (long long)r->first_attempt,
                        (unsigned long long)r->next_ms, parent, r->notify, flags) &&
             put_tok(out, r->status) && buf_adds(out, " mta=") && put_tok(out, r->mta) &&
             buf_adds(out, " reply=") && put_tok(out, r->reply) && buf_adds(out, " orcpt=") &&
             put_tok(out, r->orcpt) && buf_adds(out, " addr=") && put_tok(out, r->addr) &&
             buf_addc(out, '\n');
    }
    return ok;
}

/* ---- text decoding ---- */

struct parser {
    const char *p, *end;
    char *err;
    size_t errlen;
};

PRINTF_LIKE(2, 3) static enum rec_err fail(struct parser *ps, const char *fmt, ...)
{
    if (ps->err && ps->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ps->err, ps->errlen, fmt, ap);
        va_end(ap);
    }
    return REC_BAD_TEXT;
}

/* The next line (without its newline); false at the end or if the last line is unfinished. */
static bool next_line(struct parser *ps, const char **line, size_t *len)
{
    if (ps->p >= ps->end)
        return false;
    const char *nl = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
    if (nl == NULL)
        return false;
    *line = ps->p;
    *len = (size_t)(nl - ps->p);
    ps->p = nl + 1;
    return true;
}

/* Split off the next space-separated word of [*s, end). */
static bool next_word(const char **s, const char *end, const char **w, size_t *wlen)
{
    while (*s < end && **s == ' ')
        (*s)++;
    if (*s >= end)
        return false;
    *w = *s;
    while (*s < end && **s != ' ')
        (*s)++;
    *wlen = (size_t)(*s - *w);
    return true;
}

static bool word_is(const char *w, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(w, lit, n) == 0;
}

static bool parse_u64(const char *w, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] < '0' || w[i] > '9')
            return false;
        unsigned d = (unsigned)(w[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_u32(const char *w, size_t n, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(w, n, &v) || v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_i64(const char *w, size_t n, int64_t *out)
{
    uint64_t v;
    if (!parse_u64(w, n, &v) || v > (uint64_t)INT64_MAX)
        return false;
    *out = (int64_t)v;
    return true;
}


/* A token into a fresh string (*out NULL for "-"). Refuses raw bytes outside 0x21..0x7e,
 * bad escapes and NUL bytes. */
static bool parse_tok(const char *w, size_t n, char **out)
{
    if (n == 1 && w[0] == '-') {
        *out = NULL;
        return true;
    }
    if (n == 0 || w[0] != ':')
        return false;
    char *s = xmalloc(n);
    size_t o = 0;
    for (size_t i = 1; i < n; i++) {
        unsigned char c = (unsigned char)w[i];
        if (c == '%') {
            int hi = i + 2 < n ? hex_value(w[i + 1]) : -1;
            int lo = i + 2 < n ? hex_value(w[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                goto bad;
            s[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (c > 0x20 && c < 0x7f) {
            s[o++] = (char)c;
        } else {
            goto bad;
        }
    }
    s[o] = '\0';
    *out = s;
    return true;
bad:
    free(s);
    return false;
}

/* Replace *field with the token's value. */
static bool set_tok(char **field, const char *w, size_t n)
{
    char *v;
    if (!parse_tok(w, n, &v))
        return false;
    free(*field);
    *field = v;
    return true;
}

/* A line "key rest": key and the rest (one word expected for scalars). */
static void split_key(const char *line, size_t len, const char **key, size_t *klen,
                      const char **rest, size_t *rlen)
{
    const char *sp = memchr(line, ' ', len);
    *key = line;
    *klen = sp ? (size_t)(sp - line) : len;
    *rest = sp ? sp + 1 : line + len;
    *rlen = (size_t)(line + len - *rest);
}

/* The single value word of a scalar line (no further words). */
static bool one_word(const char *rest, size_t rlen, const char **w, size_t *wlen)
{
    const char *s = rest, *end = rest + rlen, *x;
    size_t xl;
    if (!next_word(&s, end, w, wlen))
        return false;
    return !next_word(&s, end, &x, &xl);
}

static bool parse_id(const char *w, size_t n, char id[QID_MAX])
{
    if (n >= QID_MAX)
        return false;
    memcpy(id, w, n);
    id[n] = '\0';
    return qid_valid(id);
}

static enum rec_err check_first_line(struct parser *ps, const char *name)
{
    const char *line;
    size_t len;
    if (!next_line(ps, &line, &len))
        return fail(ps, "no first line");
    const char *k, *rest, *w;
    size_t kl, rl, wl;
    split_key(line, len, &k, &kl, &rest, &rl);
    if (!word_is(k, kl, name))
        return fail(ps, "not a %s payload", name);
    if (!one_word(rest, rl, &w, &wl) || !word_is(w, wl, "1")) {
        fail(ps, "%s: unknown payload version", name);
        return REC_BAD_VERSION;
    }
    return REC_OK;
}

enum rec_err rec_segment_decode(const void *p, size_t n, uint32_t *seq, time_t *created)
{
    struct parser ps = {p, (const char *)p + n, NULL, 0};
    enum rec_err e = check_first_line(&ps, "tern-segment");
    if (e != REC_OK)
        return e;
    bool have_seq = false;
    *created = 0;
    const char *line;
    size_t len;
    while (next_line(&ps, &line, &len)) {
        const char *k, *rest, *w;
        size_t kl, rl, wl;
        split_key(line, len, &k, &kl, &rest, &rl);
        if (!word_is(k, kl, "seq") && !word_is(k, kl, "created"))
            continue;
        if (!one_word(rest, rl, &w, &wl))
            return REC_BAD_TEXT;
        int64_t t;
        if (word_is(k, kl, "seq")) {
            if (!parse_u32(w, wl, seq))
                return REC_BAD_TEXT;
            have_seq = true;
        } else if (word_is(k, kl, "created")) {
            if (!parse_i64(w, wl, &t))
                return REC_BAD_TEXT;
            *created = (time_t)t;
        }
    }
    return have_seq && ps.p == ps.end ? REC_OK : REC_BAD_TEXT;
}

void rec_msg_free(struct rec_msg *m)
{
    envelope_clear(&m->env);
}

bool rec_msg_text_in(const void *p, size_t n)
{
    const char *s = p;
    for (const char *b = s; (b = memmem(b, n - (size_t)(b - s), "\nbody ", 6)) != NULL; b++)
        if (memchr(b + 6, '\n', n - (size_t)(b + 6 - s)))
            return true;
    return false;
}

static enum rec_err msg_rcpt(struct parser *ps, struct envelope *env, const char *rest, size_t rl)
{
    if (env->nrcpts >= REC_RCPTS_MAX)
        return fail(ps, "too many recipients");
    const char *s = rest, *end = rest + rl, *w;
    size_t wl;
    char *addr = NULL, *orcpt = NULL;
    uint32_t notify = 0;
    bool have_addr = false, ok = true;
    while (ok && next_word(&s, end, &w, &wl)) {
        const char *eq = memchr(w, '=', wl);
        if (eq == NULL) {
            ok = false;
            break;
        }
        size_t kl = (size_t)(eq - w);
        const char *v = eq + 1;
        size_t vl = wl - kl - 1;
        if (word_is(w, kl, "notify"))
            ok = parse_u32(v, vl, &notify) && notify <= 15;
        else if (word_is(w, kl, "orcpt"))
            ok = set_tok(&orcpt, v, vl);
        else if (word_is(w, kl, "addr"))
            ok = set_tok(&addr, v, vl) && (have_addr = addr != NULL);
    }
    enum rec_err e = REC_OK;
    if (ok && have_addr)
        envelope_add_rcpt(env, addr, orcpt, notify);
    else
        e = fail(ps, "bad rcpt line %zu", env->nrcpts);
    free(addr);
    free(orcpt);
    return e;
}

static const char *const msg_keys[] = {
    "id",   "arrival",     "arrival-ms", "sender", "body-type", "smtputf8", "ret",      "envid",
    "size", "auth", "client-ip", "client-name", "helo", "auth-user", "protocol", "body",
};

static bool known_key(const char *const *keys, size_t n, const char *k, size_t kl)
{
    for (size_t i = 0; i < n; i++)
        if (word_is(k, kl, keys[i]))
            return true;
    return false;
}

static bool parse_enum(const char *w, size_t n, const char *const *names, size_t count, int *out)
{
    for (size_t i = 0; i < count; i++) {
        if (names[i] && word_is(w, n, names[i])) {
            *out = (int)i;
            return true;
        }
    }
    return false;
}

enum rec_err rec_msg_decode(const void *p, size_t avail, uint64_t payload_len,
                            struct rec_msg *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    envelope_init(&out->env);
    if (avail > payload_len)
        avail = (size_t)payload_len;
    if (avail > REC_TEXT_MAX + 64)
        avail = REC_TEXT_MAX + 64;
    struct parser ps = {p, (const char *)p + avail, err, errlen};
    struct envelope *e = &out->env;
    enum rec_err rc = check_first_line(&ps, "tern-message");
    bool have_id = false, have_arrival_ms = false, have_body = false;
    const char *line;
    size_t len;
    while (rc == REC_OK && !have_body && next_line(&ps, &line, &len)) {
        const char *k, *rest, *w = NULL;
        size_t kl, rl, wl = 0;
        split_key(line, len, &k, &kl, &rest, &rl);
        if (word_is(k, kl, "rcpt")) {
            rc = msg_rcpt(&ps, e, rest, rl);
            continue;
        }
        if (!known_key(msg_keys, ARRAY_LEN(msg_keys), k, kl))
            continue; /* a newer writer's key */
        if (!one_word(rest, rl, &w, &wl)) {
            rc = fail(&ps, "line without a value");
            break;
        }
        bool ok = true;
        int v;
        int64_t t;
        if (word_is(k, kl, "id"))
            ok = have_id = parse_id(w, wl, out->id);
        else if (word_is(k, kl, "arrival"))
            ok = parse_i64(w, wl, &t) && ((e->arrival = (time_t)t), true);
        else if (word_is(k, kl, "arrival-ms"))
            ok = have_arrival_ms = parse_u64(w, wl, &out->arrival_ms);
        else if (word_is(k, kl, "sender"))
            ok = set_tok(&e->sender, w, wl) && e->sender != NULL;
        else if (word_is(k, kl, "body-type"))
            ok = parse_enum(w, wl, body_names, ARRAY_LEN(body_names), &v) &&
                 ((e->body = (enum body_type)v), true);
        else if (word_is(k, kl, "smtputf8"))
            ok = (word_is(w, wl, "1") || word_is(w, wl, "0")) &&
                 ((e->smtputf8 = w[0] == '1'), true);
        else if (word_is(k, kl, "ret"))
            ok = parse_enum(w, wl, ret_names, ARRAY_LEN(ret_names), &v) &&
                 ((e->ret = (enum dsn_ret)v), true);
        else if (word_is(k, kl, "envid"))
            ok = set_tok(&e->envid, w, wl);
        else if (word_is(k, kl, "size"))
            ok = parse_u64(w, wl, &e->declared_size);
        else if (word_is(k, kl, "auth"))
            ok = set_tok(&e->auth_param, w, wl);
        else if (word_is(k, kl, "client-ip"))
            ok = set_tok(&e->client_ip, w, wl);
        else if (word_is(k, kl, "client-name"))
            ok = set_tok(&e->client_name, w, wl);
        else if (word_is(k, kl, "helo"))
            ok = set_tok(&e->helo, w, wl);
        else if (word_is(k, kl, "auth-user"))
            ok = set_tok(&e->auth_user, w, wl);
        else if (word_is(k, kl, "protocol"))
            ok = set_tok(&e->protocol, w, wl);
        else if (word_is(k, kl, "body"))
            ok = have_body = parse_u64(w, wl, &out->body_len);
        if (!ok)
            rc = fail(&ps, "bad value for %.*s", (int)(kl < 32 ? kl : 32), k);
    }
    if (rc == REC_OK) {
        out->text_len = (size_t)(ps.p - (const char *)p);
        if (!have_body)
            rc = fail(&ps, "no body line");
        else if (!have_id)
            rc = fail(&ps, "no id");
        else if (e->sender == NULL)
            rc = fail(&ps, "no sender");
        else if (e->nrcpts == 0)
            rc = fail(&ps, "no recipients");
        else if (out->body_len != payload_len - out->text_len)
            rc = fail(&ps, "body length %llu does not match the record",
                      (unsigned long long)out->body_len);
    }
    if (rc != REC_OK) {
        rec_msg_free(out);
        return rc;
    }
    if (!have_arrival_ms)
        out->arrival_ms = e->arrival > 0 ? (uint64_t)e->arrival * 1000 : 0;
    return REC_OK;
}

void rec_status_free(struct rec_status *s)
{
    for (size_t i = 0; i < s->n; i++) {
        struct rec_rcpt *r = &s->rcpts[i];
        free(r->addr);
        free(r->orcpt);
        free(r->status);
        free(r->mta);
        free(r->reply);
    }
    free(s->rcpts);
    s->rcpts = NULL;
    s->n = 0;
}

static bool status_rcpt(struct rec_status *s, size_t *cap, const char *rest, size_t rl)
{
    if (s->n >= REC_RCPTS_MAX)
        return false;
    s->rcpts = xgrow(s->rcpts, cap, s->n + 1, sizeof *s->rcpts);
    struct rec_rcpt *r = &s->rcpts[s->n];
    memset(r, 0, sizeof *r);
    r->parent = QRCPT_NO_PARENT;
    s->n++; /* counted now so rec_status_free releases what a failed parse allocated */
    const char *p = rest, *end = rest + rl, *w;
    size_t wl;
    bool have_i = false, have_state = false, ok = true;
    while (ok && next_word(&p, end, &w, &wl)) {
        const char *eq = memchr(w, '=', wl);
        if (eq == NULL)
            return false;
        size_t kl = (size_t)(eq - w);
        const char *v = eq + 1;
        size_t vl = wl - kl - 1;
        uint32_t u;
        int st = 0;
        if (word_is(w, kl, "i")) {
            ok = have_i = parse_u32(v, vl, &u) && u == s->n - 1;
        } else if (word_is(w, kl, "state")) {
            ok = have_state = parse_enum(v, vl, state_names, ARRAY_LEN(state_names), &st);
            r->state = (enum qrcpt_state)st;
        } else if (word_is(w, kl, "att")) {
            ok = parse_u32(v, vl, &r->attempts);
        } else if (word_is(w, kl, "first")) {
            ok = parse_i64(v, vl, &r->first_attempt);
        } else if (word_is(w, kl, "next")) {
            ok = parse_u64(v, vl, &r->next_ms);
        } else if (word_is(w, kl, "parent")) {
            if (vl == 1 && v[0] == '-')
                r->parent = QRCPT_NO_PARENT;
            else
                ok = parse_u32(v, vl, &r->parent) && r->parent < s->n - 1;
        } else if (word_is(w, kl, "notify")) {
            ok = parse_u32(v, vl, &u) && u <= 15;
            r->notify = u;
        } else if (word_is(w, kl, "flags")) {
            r->delay_warned = r->dsn_sent = r->relayed = false;
            if (!(vl == 1 && v[0] == '-')) {
                for (size_t i = 0; ok && i < vl; i++) {
                    if (v[i] == 'w')
                        r->delay_warned = true;
                    else if (v[i] == 's')
                        r->dsn_sent = true;
                    else if (v[i] == 'r')
                        r->relayed = true;
                    else
                        ok = false;
                }
            }
        } else if (word_is(w, kl, "status")) {
            ok = set_tok(&r->status, v, vl);
        } else if (word_is(w, kl, "mta")) {
            ok = set_tok(&r->mta, v, vl);
        } else if (word_is(w, kl, "reply")) {
            ok = set_tok(&r->reply, v, vl);
        } else if (word_is(w, kl, "orcpt")) {
            ok = set_tok(&r->orcpt, v, vl);
        } else if (word_is(w, kl, "addr")) {
            ok = set_tok(&r->addr, v, vl);
        }
    }
    return ok && have_i && have_state && r->addr != NULL;
}

enum rec_err rec_status_decode(const void *p, size_t n, struct rec_status *out, char *err,
                               size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (n > REC_TEXT_MAX)
        return REC_TOO_LONG;
    struct parser ps = {p, (const char *)p + n, err, errlen};
    enum rec_err rc = check_first_line(&ps, "tern-status");
    size_t cap = 0;
    bool have_id = false;
    const char *line;
    size_t len;
    while (rc == REC_OK && next_line(&ps, &line, &len)) {
        const char *k, *rest, *w;
        size_t kl, rl, wl;
        split_key(line, len, &k, &kl, &rest, &rl);
        if (word_is(k, kl, "rcpt")) {
            if (!status_rcpt(out, &cap, rest, rl))
                rc = fail(&ps, "bad rcpt line %zu", out->n - 1);
            continue;
        }
        if (!word_is(k, kl, "id") && !word_is(k, kl, "held"))
            continue; /* a newer writer's key */
        if (!one_word(rest, rl, &w, &wl)) {
            rc = fail(&ps, "line without a value");
        } else if (word_is(k, kl, "id")) {
            if (!(have_id = parse_id(w, wl, out->id)))
                rc = fail(&ps, "bad id");
        } else if (word_is(k, kl, "held")) {
            if (word_is(w, wl, "1") || word_is(w, wl, "0"))
                out->held = w[0] == '1';
            else
                rc = fail(&ps, "bad held");
        }
    }
    if (rc == REC_OK && ps.p != ps.end)
        rc = fail(&ps, "unfinished last line");
    if (rc == REC_OK && !have_id)
        rc = fail(&ps, "no id");
    if (rc == REC_OK && out->n == 0)
        rc = fail(&ps, "no recipients");
    if (rc != REC_OK)
        rec_status_free(out);
    return rc;
}
