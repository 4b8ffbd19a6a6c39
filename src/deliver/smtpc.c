/*
 * smtpc: see smtpc.h.
 *
 * Layout: input is cut into reply lines (bounded); the lines of one reply are collected
 * until the last one, then the reply goes to the handler of the state that awaits it.
 * Inside a transaction the commands form one sequence (MAIL, RCPT 0..n-1, DATA); `sent`
 * counts those written and `answered` those whose reply arrived, so pipelined and
 * one-at-a-time sending share one reply handler (with PIPELINING everything is sent at
 * once, without it the next command goes out when the previous reply arrives).
 */
#include "deliver/smtpc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/mem.h"
#include "lib/strutil.h"
#include "mail/sasl.h"

/* the largest command group: MAIL plus every RCPT (each with NOTIFY and ORCPT) and DATA */
#define OUT_MAX (SMTPC_RCPTS_MAX * 1400 + 4 * SMTPC_CHUNK)

enum sstate {
    S_GREETING,
    S_EHLO,
    S_HELO,
    S_STARTTLS,
    S_TLS,        /* the host runs the handshake */
    S_AUTH,       /* AUTH PLAIN sent, or the password of AUTH LOGIN: 235 awaited */
    S_AUTH_LOGIN, /* AUTH LOGIN sent: 334 for the user name awaited */
    S_AUTH_USER,  /* user name sent: 334 for the password awaited */
    S_READY,
    S_TXN,     /* MAIL/RCPT/DATA replies awaited */
    S_CONTENT, /* the host streams content (with BDAT and PIPELINING, chunk replies arrive) */
    S_DOT,     /* the final reply awaited */
    S_BDAT,    /* BDAT replies awaited before more content (or the last one) */
    S_RSET,
    S_QUIT,
    S_CLOSED,
};

struct reply_in {
    int code;
    char enh[12];
    char text[SMTPC_DIAG_MAX + 1]; /* "550 5.1.1 text text", sanitized and bounded */
    size_t text_len;
    unsigned nlines;
};

struct smtpc {
    struct smtpc_params par;
    enum sstate st;
    bool tls;
    bool ready_once; /* reached READY at least once */
    struct smtpc_ext ext;
    struct smtpc_error err;
    unsigned ntxn;

    /* reply assembly */
    struct buf line;
    struct buf reply_lines; /* the EHLO reply's lines after the first, NUL-separated */
    size_t reply_total;
    struct reply_in rep;
    bool rep_open; /* a multi-line reply has begun */

    struct buf out;

    /* the transaction */
    struct smtpc_txn *txn;
    struct smtpc_txn *done_txn;
    size_t ncmds, sent, answered, accepted;
    bool mail_ok, discard_dot;
    /* BDAT (RFC 3030), for BODY=BINARYMIME */
    bool bdat, bdat_failed, bdat_last_sent;
    size_t bdat_pending; /* BDAT commands whose reply has not arrived */
    /* content scanning */
    bool bol, cr;
};

static const char *const stage_names[] = {
    [S_GREETING] = "greeting",  [S_EHLO] = "EHLO",          [S_HELO] = "HELO",
    [S_STARTTLS] = "STARTTLS",  [S_TLS] = "TLS handshake",  [S_AUTH] = "AUTH",
    [S_AUTH_LOGIN] = "AUTH",    [S_AUTH_USER] = "AUTH",     [S_READY] = "idle",
    [S_TXN] = "MAIL/RCPT/DATA", [S_CONTENT] = "message content", [S_DOT] = "end of data",
    [S_RSET] = "RSET",          [S_QUIT] = "QUIT",          [S_CLOSED] = "closed",
    [S_BDAT] = "BDAT",
};

/* ---- small helpers ---- */

bool smtpc_needs_utf8(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

size_t smtpc_parse_enhanced(int code, const char *text, size_t len, char *out, size_t cap)
{
    /* class "." subject (1-3 digits) "." detail (1-3 digits), then a space or the end */
    if (len < 5 || text[0] != (char)('0' + code / 100) || text[1] != '.')
        return 0;
    if (text[0] != '2' && text[0] != '4' && text[0] != '5')
        return 0;
    size_t i = 2;
    for (int part = 0; part < 2; part++) {
        size_t start = i;
        while (i < len && i - start < 4 && text[i] >= '0' && text[i] <= '9')
            i++;
        if (i == start || i - start > 3)
            return 0;
        if (part == 0) {
            if (i >= len || text[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < len && text[i] != ' ')
        return 0;
    if (i + 1 > cap)
        return 0;
    memcpy(out, text, i);
    out[i] = '\0';
    return i;
}

static void outf(struct smtpc *s, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void outf(struct smtpc *s, const char *fmt, ...)
{
    char small[1024];
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        fatal("smtpc: cannot format a command");
    char *p = small;
    if ((size_t)n >= sizeof small) { /* a long address with a long ORCPT, say */
        p = xmalloc((size_t)n + 1);
        vsnprintf(p, (size_t)n + 1, fmt, ap2);
    }
    va_end(ap2);
    if (!buf_add(&s->out, p, (size_t)n))
        fatal("smtpc: output over its bound");
    explicit_bzero(p, (size_t)n); /* AUTH lines pass through here */
    if (p != small)
        free(p);
}

static void rcpt_set(struct smtpc_rcpt *r, enum smtpc_outcome o, const char *status,
                     const char *diag_type, const char *diag)
{
    r->outcome = o;
    snprintf(r->status, sizeof r->status, "%s", status);
    free(r->diag);
    r->diag = xasprintf("%s; %.*s", diag_type, SMTPC_DIAG_MAX, diag);
}

static enum smtpc_outcome outcome_of(int code)
{
    return code < 300 ? SMTPC_OK : code < 500 ? SMTPC_TEMP : SMTPC_PERM;
}

/* The enhanced status of a reply: the server's, else derived from the class. */
static const char *status_of(const struct reply_in *r)
{
    if (r->enh[0])
        return r->enh;
    return r->code < 300 ? "2.0.0" : r->code < 500 ? "4.0.0" : "5.0.0";
}

static void rcpt_set_reply(struct smtpc_rcpt *r, const struct reply_in *rep)
{
    rcpt_set(r, outcome_of(rep->code), status_of(rep), "smtp", rep->text);
}

static void finish_txn(struct smtpc *s)
{
    struct smtpc_txn *t = s->txn;
    t->done = true;
    s->done_txn = t;
    s->txn = NULL;
    s->ntxn++;
}

/* Every recipient without an outcome gets this one (a TEMP outcome always carries a 4.x.x
 * status, whatever the reply that caused it said). */
static void resolve_rest(struct smtpc *s, enum smtpc_outcome o, const char *status,
                         const char *type, const char *diag)
{
    if (s->txn == NULL)
        return;
    char st[12];
    snprintf(st, sizeof st, "%s", status);
    if (o == SMTPC_TEMP && st[0] != '4')
        st[0] = '4';
    for (size_t i = 0; i < s->txn->nrcpts; i++) {
        struct smtpc_rcpt *r = &s->txn->rcpts[i];
        if (r->outcome == SMTPC_NONE)
            rcpt_set(r, o, st, type, diag);
    }
    finish_txn(s);
}

static void set_error(struct smtpc *s, enum smtpc_outcome kind, const char *status,
                      const char *type, const char *diag)
{
    if (s->err.failed)
        return; /* the first failure is the one that explains */
    s->err.failed = true;
    s->err.kind = kind;
    s->err.next_host = !s->ready_once;
    s->err.stage = stage_names[s->st];
    snprintf(s->err.status, sizeof s->err.status, "%s", status);
    if (kind == SMTPC_TEMP && s->err.status[0] == '5')
        s->err.status[0] = '4'; /* the class follows the outcome */
    snprintf(s->err.diag, sizeof s->err.diag, "%s; %s", type, diag);
}

/* The session cannot go on. With a reply from the server, say QUIT on the way out (RFC
 * 5321 §3.1 asks for it even after a 554 greeting); after a 421 the server is gone. */
static void session_fail(struct smtpc *s, enum smtpc_outcome kind, const struct reply_in *rep,
                         const char *status, const char *why)
{
    if (rep) {
        set_error(s, kind, status_of(rep), "smtp", rep->text);
        resolve_rest(s, SMTPC_TEMP, status_of(rep), "smtp", rep->text);
        if (rep->code != 421)
            outf(s, "QUIT\r\n");
    } else {
        set_error(s, kind, status, "x-tern", why);
        resolve_rest(s, SMTPC_TEMP, status, "x-tern", why);
    }
    s->st = S_CLOSED;
}

/* A 4xx status for a failure reported with a 5xx reply that we treat as temporary. */
static void soften(const struct reply_in *rep, char *status, size_t cap)
{
    const char *st = status_of(rep);
    snprintf(status, cap, "4%s", st + 1);
}

/* ---- session setup ---- */

static void send_ehlo(struct smtpc *s)
{
    memset(&s->ext, 0, sizeof s->ext);
    outf(s, "EHLO %s\r\n", s->par.helo);
    s->st = S_EHLO;
}

static void become_ready(struct smtpc *s)
{
    s->st = S_READY;
    s->ready_once = true;
}

static void after_hello(struct smtpc *s)
{
    if (!s->tls && s->par.starttls && s->ext.starttls) {
        outf(s, "STARTTLS\r\n");
        s->st = S_STARTTLS;
        return;
    }
    if (!s->tls && s->par.require_tls) {
        session_fail(s, SMTPC_TEMP, NULL, "4.7.4", "TLS is required, but was not offered");
        outf(s, "QUIT\r\n");
        return;
    }
    if (s->par.auth_user != NULL) {
        if (!s->tls) {
            /* route.c makes credentials imply `encrypt`; this is the last line of defence */
            session_fail(s, SMTPC_TEMP, NULL, "4.7.0", "will not send credentials without TLS");
            outf(s, "QUIT\r\n");
            return;
        }
        if (s->ext.auth_plain) {
            char b64[2 * SASL_FIELD_MAX + 16];
            size_t n = sasl_plain_encode(s->par.auth_user, s->par.auth_pass, b64, sizeof b64);
            if (n == (size_t)-1) {
                session_fail(s, SMTPC_TEMP, NULL, "4.7.0", "credentials are too long");
                return;
            }
            outf(s, "AUTH PLAIN %s\r\n", b64);
            explicit_bzero(b64, sizeof b64);
            s->st = S_AUTH;
            return;
        }
        if (s->ext.auth_login) {
            outf(s, "AUTH LOGIN\r\n");
            s->st = S_AUTH_LOGIN;
            return;
        }
        session_fail(s, SMTPC_TEMP, NULL, "4.7.0",
                     "the server offers no AUTH mechanism we know (PLAIN, LOGIN)");
        outf(s, "QUIT\r\n");
        return;
    }
    become_ready(s);
}

static void ehlo_keyword(struct smtpc *s, const char *kw)
{
    char word[32];
    size_t n = strcspn(kw, " =");
    if (n >= sizeof word)
        return;
    memcpy(word, kw, n);
    word[n] = '\0';
    const char *args = kw[n] ? kw + n + 1 : "";
    if (str_ieq(word, "PIPELINING"))
        s->ext.pipelining = true;
    else if (str_ieq(word, "SIZE")) {
        s->ext.size = true;
        uint64_t v;
        s->ext.size_limit = parse_uint(args, &v) ? v : 0;
    } else if (str_ieq(word, "8BITMIME"))
        s->ext.eightbitmime = true;
    else if (str_ieq(word, "SMTPUTF8"))
        s->ext.smtputf8 = true;
    else if (str_ieq(word, "DSN"))
        s->ext.dsn = true;
    else if (str_ieq(word, "STARTTLS"))
        s->ext.starttls = true;
    else if (str_ieq(word, "ENHANCEDSTATUSCODES"))
        s->ext.enhanced = true;
    else if (str_ieq(word, "CHUNKING"))
        s->ext.chunking = true;
    else if (str_ieq(word, "BINARYMIME"))
        s->ext.binarymime = true;
    else if (str_ieq(word, "AUTH")) {
        /* "AUTH PLAIN LOGIN" or the old "AUTH=PLAIN LOGIN" */
        char mech[32];
        while (*args) {
            size_t m = strcspn(args, " ");
            if (m > 0 && m < sizeof mech) {
                memcpy(mech, args, m);
                mech[m] = '\0';
                if (str_ieq(mech, "PLAIN"))
                    s->ext.auth_plain = true;
                else if (str_ieq(mech, "LOGIN"))
                    s->ext.auth_login = true;
            }
            args += m;
            while (*args == ' ')
                args++;
        }
    }
}

static void on_greeting(struct smtpc *s, const struct reply_in *r)
{
    if (r->code == 220) {
        send_ehlo(s);
        return;
    }
    /* Like Postfix's smtp_skip_5xx_greeting: a server that will not talk now is a host
     * problem (try the next one, defer), not a verdict on the recipients. */
    char st[12];
    soften(r, st, sizeof st);
    set_error(s, SMTPC_TEMP, st, "smtp", r->text);
    session_fail(s, SMTPC_TEMP, r, NULL, NULL);
}

static void on_ehlo(struct smtpc *s, const struct reply_in *r)
{
    if (r->code / 100 == 2) {
        s->ext.esmtp = true;
        for (size_t off = 0; off < s->reply_lines.len;) {
            const char *kw = s->reply_lines.data + off;
            ehlo_keyword(s, kw);
            off += strlen(kw) + 1;
        }
        after_hello(s);
        return;
    }
    if (r->code / 100 == 5 && r->code != 421) {
        outf(s, "HELO %s\r\n", s->par.helo);
        s->st = S_HELO;
        return;
    }
    session_fail(s, SMTPC_TEMP, r, NULL, NULL);
}

static void on_helo(struct smtpc *s, const struct reply_in *r)
{
    if (r->code / 100 == 2) {
        after_hello(s);
        return;
    }
    /* refused both EHLO and HELO: a 5xx is the server's verdict (Postfix bounces too) */
    session_fail(s, r->code == 421 ? SMTPC_TEMP : outcome_of(r->code), r, NULL, NULL);
}

static void on_starttls(struct smtpc *s, const struct reply_in *r)
{
    if (r->code == 220) {
        s->st = S_TLS;
        return;
    }
    if (r->code == 421 || s->par.require_tls) {
        set_error(s, SMTPC_TEMP, r->code == 421 ? status_of(r) : "4.7.5", "smtp", r->text);
        session_fail(s, SMTPC_TEMP, r, NULL, NULL);
        return;
    }
    /* opportunistic TLS: the server would not, so go on in plaintext */
    s->par.starttls = false;
    after_hello(s);
}

static void on_auth(struct smtpc *s, const struct reply_in *r)
{
    if (s->st == S_AUTH && r->code == 235) {
        become_ready(s);
        return;
    }
    if (r->code == 334 && (s->st == S_AUTH_LOGIN || s->st == S_AUTH_USER)) {
        const char *v = s->st == S_AUTH_LOGIN ? s->par.auth_user : s->par.auth_pass;
        char b64[2 * SASL_FIELD_MAX + 8];
        size_t vlen = strlen(v);
        if (vlen > SASL_FIELD_MAX ||
            base64_encode((const unsigned char *)v, vlen, b64, sizeof b64) == (size_t)-1) {
            outf(s, "*\r\n"); /* cancel the exchange (RFC 4954 §4) */
            session_fail(s, SMTPC_TEMP, NULL, "4.7.0", "credentials are too long");
            return;
        }
        outf(s, "%s\r\n", b64);
        explicit_bzero(b64, sizeof b64);
        s->st = s->st == S_AUTH_LOGIN ? S_AUTH_USER : S_AUTH;
        return;
    }
    /* Authentication failures defer (Postfix's smtp_sasl_auth_soft_bounce): the fix is on
     * our side (credentials), not the sender's. */
    char st[12];
    soften(r, st, sizeof st);
    if (r->code / 100 == 3)
        snprintf(st, sizeof st, "4.7.0");
    set_error(s, SMTPC_TEMP, st, "smtp", r->text);
    session_fail(s, SMTPC_TEMP, r, NULL, NULL);
}

/* ---- transactions ---- */

static void send_cmd(struct smtpc *s, size_t k)
{
    struct smtpc_txn *t = s->txn;
    if (k == 0) {
        char params[600] = "";
        size_t o = 0;
        if (s->ext.size)
            o += (size_t)snprintf(params + o, sizeof params - o, " SIZE=%llu",
                                  (unsigned long long)t->size);
        if (t->body == BODY_8BITMIME && s->ext.eightbitmime)
            o += (size_t)snprintf(params + o, sizeof params - o, " BODY=8BITMIME");
        else if (t->body == BODY_BINARYMIME)
            o += (size_t)snprintf(params + o, sizeof params - o, " BODY=BINARYMIME");
        if (t->smtputf8 && s->ext.smtputf8)
            o += (size_t)snprintf(params + o, sizeof params - o, " SMTPUTF8");
        if (s->ext.dsn && t->ret != DSN_RET_UNSPEC)
            o += (size_t)snprintf(params + o, sizeof params - o, " RET=%s",
                                  t->ret == DSN_RET_FULL ? "FULL" : "HDRS");
        if (s->ext.dsn && t->envid && t->envid[0] && o < sizeof params)
            snprintf(params + o, sizeof params - o, " ENVID=%s", t->envid);
        outf(s, "MAIL FROM:<%s>%s\r\n", t->sender, params);
    } else if (k <= t->nrcpts) {
        const struct smtpc_rcpt *r = &t->rcpts[k - 1];
        char params[700] = "";
        size_t o = 0;
        if (s->ext.dsn && r->notify) {
            /* RFC 3461 §4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY */
            static const struct {
                unsigned bit;
                const char *name;
            } words[] = {{DSN_NOTIFY_SUCCESS, "SUCCESS"},
                         {DSN_NOTIFY_FAILURE, "FAILURE"},
                         {DSN_NOTIFY_DELAY, "DELAY"}};
            o += (size_t)snprintf(params, sizeof params, " NOTIFY=");
            if (r->notify & DSN_NOTIFY_NEVER) {
                o += (size_t)snprintf(params + o, sizeof params - o, "NEVER");
            } else {
                const char *sep = "";
                for (size_t w = 0; w < sizeof words / sizeof *words; w++)
                    if (r->notify & words[w].bit) {
                        o += (size_t)snprintf(params + o, sizeof params - o, "%s%s", sep,
                                              words[w].name);
                        sep = ",";
                    }
            }
        }
        if (s->ext.dsn && r->orcpt && r->orcpt[0] && o < sizeof params)
            snprintf(params + o, sizeof params - o, " ORCPT=%s", r->orcpt);
        outf(s, "RCPT TO:<%s>%s\r\n", r->addr, params);
    } else {
        outf(s, "DATA\r\n");
    }
    s->sent = k + 1;
}

static void end_failed_txn(struct smtpc *s)
{
    /* the server may still hold a transaction (MAIL accepted): clear it for the next one */
    finish_txn(s);
    outf(s, "RSET\r\n");
    s->st = S_RSET;
}

/* After the last RCPT reply of a BDAT transaction: the content goes next. */
static void bdat_start_or_end(struct smtpc *s)
{
    if (s->accepted == 0) {
        end_failed_txn(s);
        return;
    }
    s->bdat_pending = 0;
    s->bdat_failed = s->bdat_last_sent = false;
    s->st = S_CONTENT;
}

static void on_txn_reply(struct smtpc *s, const struct reply_in *r)
{
    struct smtpc_txn *t = s->txn;
    size_t k = s->answered++;
    size_t n = t->nrcpts;
    size_t last = s->bdat ? n : n + 1; /* BDAT has no DATA command */
    if (k == 0) {
        s->mail_ok = r->code / 100 == 2;
        if (!s->mail_ok)
            for (size_t i = 0; i < n; i++)
                rcpt_set_reply(&t->rcpts[i], r);
    } else if (k <= n) {
        struct smtpc_rcpt *rc = &t->rcpts[k - 1];
        if (s->mail_ok) {
            if (r->code / 100 == 2) {
                rc->accepted = true;
                s->accepted++;
            } else {
                rcpt_set_reply(rc, r);
                rc->rcpt_code = r->code;
            }
        }
    } else { /* DATA */
        if (r->code == 354) {
            if (s->accepted == 0) {
                /* a server that says 354 with no recipient: end the empty message */
                outf(s, ".\r\n");
                s->discard_dot = true;
                s->st = S_DOT;
                return;
            }
            s->bol = true;
            s->cr = false;
            s->st = S_CONTENT;
            return;
        }
        if (s->accepted > 0)
            for (size_t i = 0; i < n; i++)
                if (t->rcpts[i].accepted && t->rcpts[i].outcome == SMTPC_NONE)
                    rcpt_set_reply(&t->rcpts[i], r);
    }
    if (r->code == 421) {
        session_fail(s, SMTPC_TEMP, r, NULL, NULL);
        return;
    }
    if (k == last) {
        if (s->bdat)
            bdat_start_or_end(s);
        else
            end_failed_txn(s); /* DATA refused */
        return;
    }
    if (s->ext.pipelining)
        return; /* everything was sent; wait for the rest */
    /* one at a time: decide what comes next */
    if (k == 0 && !s->mail_ok) {
        end_failed_txn(s);
    } else if (k < n) {
        send_cmd(s, k + 1);
    } else if (s->bdat) {
        bdat_start_or_end(s); /* not reached: k == n == last */
    } else if (s->accepted > 0) {
        send_cmd(s, n + 1);
    } else {
        end_failed_txn(s);
    }
}

/* Every accepted recipient without an outcome gets the final reply. */
static void final_reply(struct smtpc *s, const struct reply_in *r)
{
    struct smtpc_txn *t = s->txn;
    for (size_t i = 0; i < t->nrcpts; i++) {
        struct smtpc_rcpt *rc = &t->rcpts[i];
        if (!rc->accepted || rc->outcome != SMTPC_NONE)
            continue;
        rcpt_set_reply(rc, r);
        /* RFC 3461 §5.2.2: the next hop cannot pass NOTIFY on; we report "relayed" */
        if (rc->outcome == SMTPC_OK && !s->ext.dsn && (rc->notify & DSN_NOTIFY_SUCCESS))
            rc->relayed = true;
    }
}

/* A reply to one BDAT command. */
static void on_bdat_reply(struct smtpc *s, const struct reply_in *r)
{
    s->bdat_pending--;
    bool final = s->bdat_pending == 0 && s->bdat_last_sent;
    if (r->code / 100 != 2 && !s->bdat_failed) {
        /* the first refused chunk decides; later chunks are not sent */
        s->bdat_failed = true;
        final_reply(s, r);
    } else if (final && !s->bdat_failed) {
        final_reply(s, r);
    }
    if (r->code == 421) {
        session_fail(s, SMTPC_TEMP, r, NULL, NULL);
        return;
    }
    if (final) {
        if (s->bdat_failed) {
            end_failed_txn(s);
        } else {
            finish_txn(s);
            become_ready(s);
        }
        return;
    }
    if (s->st == S_BDAT && !s->bdat_last_sent && s->bdat_pending == 0)
        s->st = S_CONTENT; /* one at a time: the next chunk may go */
}

static void on_dot(struct smtpc *s, const struct reply_in *r)
{
    if (s->discard_dot) {
        s->discard_dot = false;
        if (r->code == 421) {
            session_fail(s, SMTPC_TEMP, r, NULL, NULL);
            return;
        }
        finish_txn(s);
        become_ready(s);
        return;
    }
    final_reply(s, r);
    if (r->code == 421) {
        session_fail(s, SMTPC_TEMP, r, NULL, NULL);
        return;
    }
    finish_txn(s);
    become_ready(s);
}

/* ---- replies ---- */

static void sanitize_append(struct reply_in *r, const char *p, size_t n)
{
    for (size_t i = 0; i < n && r->text_len < sizeof r->text - 1; i++) {
        unsigned char c = (unsigned char)p[i];
        r->text[r->text_len++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    r->text[r->text_len] = '\0';
}

static void protocol_error(struct smtpc *s, const char *why)
{
    session_fail(s, SMTPC_TEMP, NULL, "4.5.0", why);
    outf(s, "QUIT\r\n");
}

static void dispatch_reply(struct smtpc *s)
{
    struct reply_in *r = &s->rep;
    switch (s->st) {
    case S_GREETING:
        on_greeting(s, r);
        break;
    case S_EHLO:
        on_ehlo(s, r);
        break;
    case S_HELO:
        on_helo(s, r);
        break;
    case S_STARTTLS:
        on_starttls(s, r);
        break;
    case S_AUTH:
    case S_AUTH_LOGIN:
    case S_AUTH_USER:
        on_auth(s, r);
        break;
    case S_TXN:
        on_txn_reply(s, r);
        break;
    case S_DOT:
        on_dot(s, r);
        break;
    case S_CONTENT:
    case S_BDAT:
        on_bdat_reply(s, r);
        break;
    case S_RSET:
        if (r->code / 100 == 2) {
            become_ready(s);
        } else {
            /* the session is in a state we cannot trust: end it (the transaction is done) */
            if (r->code != 421)
                outf(s, "QUIT\r\n");
            s->st = S_CLOSED;
        }
        break;
    case S_QUIT:
        s->st = S_CLOSED;
        break;
    default:
        fatal("smtpc: reply in state %d", (int)s->st);
    }
}

/* One complete line (CR LF stripped) of the reply being read. */
static void on_line(struct smtpc *s, const char *p, size_t n)
{
    struct reply_in *r = &s->rep;
    if (n < 3 || p[0] < '2' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' ||
        p[2] > '9' || (n > 3 && p[3] != ' ' && p[3] != '-')) {
        protocol_error(s, "malformed reply from server");
        return;
    }
    int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    bool more = n > 3 && p[3] == '-';
    const char *text = n > 4 ? p + 4 : "";
    size_t tlen = n > 4 ? n - 4 : 0;
    if (!s->rep_open) {
        memset(r, 0, sizeof *r);
        buf_reset(&s->reply_lines);
        s->reply_total = 0;
        r->code = code;
        smtpc_parse_enhanced(code, text, tlen, r->enh, sizeof r->enh);
        sanitize_append(r, p, 3);
        if (tlen > 0) {
            sanitize_append(r, " ", 1);
            sanitize_append(r, text, tlen);
        }
    } else {
        if (code != r->code) {
            protocol_error(s, "inconsistent reply codes in a multi-line reply");
            return;
        }
        /* continuation lines: drop a repeated enhanced code, join with one space */
        char enh[12];
        size_t e = smtpc_parse_enhanced(code, text, tlen, enh, sizeof enh);
        if (e > 0 && strcmp(enh, r->enh) == 0) {
            text += e;
            tlen -= e;
            while (tlen > 0 && *text == ' ') {
                text++;
                tlen--;
            }
        }
        if (tlen > 0) {
            sanitize_append(r, " ", 1);
            sanitize_append(r, text, tlen);
        }
        /* EHLO keywords (one per line after the first) */
        if (s->st == S_EHLO && n > 4) {
            if (!buf_add(&s->reply_lines, p + 4, n - 4) || !buf_addc(&s->reply_lines, '\0')) {
                protocol_error(s, "reply too long");
                return;
            }
        }
    }
    r->nlines++;
    s->reply_total += n + 2;
    if (s->reply_total > SMTPC_REPLY_MAX) {
        protocol_error(s, "reply too long");
        return;
    }
    if (more) {
        s->rep_open = true;
        return;
    }
    s->rep_open = false;
    dispatch_reply(s);
}

static bool awaiting_reply(const struct smtpc *s)
{
    switch (s->st) {
    case S_GREETING:
    case S_EHLO:
    case S_HELO:
    case S_STARTTLS:
    case S_AUTH:
    case S_AUTH_LOGIN:
    case S_AUTH_USER:
    case S_DOT:
    case S_RSET:
    case S_QUIT:
        return true;
    case S_TXN:
        return s->answered < s->sent;
    case S_CONTENT:
        return s->bdat_pending > 0;
    case S_BDAT:
        return true;
    default:
        return false;
    }
}

size_t smtpc_input(struct smtpc *s, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && awaiting_reply(s)) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t take = nl ? (size_t)(nl - (p + i)) : n - i;
        if (!buf_add(&s->line, p + i, take)) {
            /* no waiting for the end of an endless line: the session is over now */
            buf_reset(&s->line);
            protocol_error(s, "reply line too long");
            return n;
        }
        i += take;
        if (nl == NULL)
            break;
        i++; /* the LF */
        size_t len = s->line.len;
        if (len > 0 && s->line.data[len - 1] == '\r')
            len--;
        on_line(s, s->line.data ? s->line.data : "", len);
        buf_reset(&s->line);
    }
    return i;
}

/* ---- host interface ---- */

struct smtpc *smtpc_new(const struct smtpc_params *p)
{
    struct smtpc *s = xcalloc(1, sizeof *s);
    s->par = *p;
    s->st = S_GREETING;
    buf_init(&s->line, SMTPC_LINE_MAX);
    buf_init(&s->reply_lines, SMTPC_REPLY_MAX);
    buf_init(&s->out, OUT_MAX);
    return s;
}

void smtpc_free(struct smtpc *s)
{
    if (s == NULL)
        return;
    buf_release(&s->line);
    buf_release(&s->reply_lines);
    if (s->out.data)
        explicit_bzero(s->out.data, s->out.len);
    buf_release(&s->out);
    free(s);
}

const char *smtpc_output(const struct smtpc *s, size_t *len)
{
    *len = s->out.len;
    return s->out.data ? s->out.data : "";
}

void smtpc_output_sent(struct smtpc *s, size_t n)
{
    if (s->out.data)
        explicit_bzero(s->out.data, n < s->out.len ? n : s->out.len);
    buf_consume(&s->out, n);
}

enum smtpc_phase smtpc_phase(const struct smtpc *s)
{
    switch (s->st) {
    case S_TLS:
        return SMTPC_TLS;
    case S_READY:
        return SMTPC_READY;
    case S_CONTENT:
        return SMTPC_CONTENT;
    case S_CLOSED:
        return SMTPC_CLOSED;
    default:
        return SMTPC_WAIT;
    }
}

uint64_t smtpc_timeout_ms(const struct smtpc *s)
{
    switch (s->st) {
    case S_GREETING:
        return SMTPC_TO_GREETING_MS;
    case S_EHLO:
    case S_HELO:
        return SMTPC_TO_EHLO_MS;
    case S_STARTTLS:
    case S_TLS:
        return SMTPC_TO_STARTTLS_MS;
    case S_AUTH:
    case S_AUTH_LOGIN:
    case S_AUTH_USER:
        return SMTPC_TO_AUTH_MS;
    case S_TXN:
        if (s->answered >= s->sent)
            return 0;
        if (s->answered == 0)
            return SMTPC_TO_MAIL_MS;
        return s->answered <= s->txn->nrcpts ? SMTPC_TO_RCPT_MS : SMTPC_TO_DATA_MS;
    case S_DOT:
        return SMTPC_TO_DOT_MS;
    case S_BDAT:
        return s->bdat_last_sent ? SMTPC_TO_DOT_MS : SMTPC_TO_BLOCK_MS;
    case S_RSET:
        return SMTPC_TO_RSET_MS;
    case S_QUIT:
        return SMTPC_TO_QUIT_MS;
    default:
        return 0;
    }
}

void smtpc_tls_done(struct smtpc *s)
{
    if (s->st != S_TLS)
        fatal("smtpc_tls_done outside the handshake");
    s->tls = true;
    send_ehlo(s); /* RFC 3207 §4.2: forget what was learnt in plaintext */
}

void smtpc_begin(struct smtpc *s, struct smtpc_txn *t)
{
    if (s->st != S_READY || t->nrcpts == 0 || t->nrcpts > SMTPC_RCPTS_MAX)
        fatal("smtpc_begin in state %d with %zu recipients", (int)s->st, t->nrcpts);
    s->txn = t;
    t->done = false;
    t->dot_sent = false;
    for (size_t i = 0; i < t->nrcpts; i++) {
        t->rcpts[i].outcome = SMTPC_NONE;
        t->rcpts[i].accepted = false;
        t->rcpts[i].rcpt_code = 0;
        t->rcpts[i].relayed = false;
    }
    bool utf8 = t->smtputf8 || smtpc_needs_utf8(t->sender);
    for (size_t i = 0; i < t->nrcpts && !utf8; i++)
        utf8 = smtpc_needs_utf8(t->rcpts[i].addr);
    t->smtputf8 = utf8;
    if (utf8 && !s->ext.smtputf8) {
        /* RFC 6531 §3.2: no downgrade; the message cannot go this way */
        resolve_rest(s, SMTPC_PERM, "5.6.7", "x-tern",
                     "the message needs SMTPUTF8, which the next hop does not offer");
        return;
    }
    if (s->ext.size && s->ext.size_limit > 0 && t->size > s->ext.size_limit) {
        char why[160];
        snprintf(why, sizeof why, "message size %llu exceeds the next hop's limit of %llu",
                 (unsigned long long)t->size, (unsigned long long)s->ext.size_limit);
        resolve_rest(s, SMTPC_PERM, "5.3.4", "x-tern", why);
        return;
    }
    s->bdat = t->body == BODY_BINARYMIME;
    if (s->bdat && !(s->ext.binarymime && s->ext.chunking)) {
        /* RFC 3030 §3: binary content cannot go as DATA, and we do not convert it */
        resolve_rest(s, SMTPC_PERM, "5.6.3", "x-tern",
                     "the message is binary (BODY=BINARYMIME), which the next hop does not "
                     "accept");
        return;
    }
    s->ncmds = t->nrcpts + (s->bdat ? 1 : 2);
    s->sent = s->answered = s->accepted = 0;
    s->mail_ok = false;
    s->discard_dot = false;
    s->st = S_TXN;
    if (s->ext.pipelining) {
        for (size_t k = 0; k < s->ncmds; k++)
            send_cmd(s, k);
    } else {
        send_cmd(s, 0);
    }
}

/* One BDAT chunk: the bytes as they are (no stuffing, no line-end changes). */
static size_t bdat_chunk(struct smtpc *s, const char *p, size_t n)
{
    if (s->bdat_failed)
        return n; /* the transaction failed: the rest is not sent */
    if (n == 0)
        return 0;
    size_t room = buf_room(&s->out);
    if (room < 64)
        return 0;
    if (n > room - 64)
        n = room - 64;
    outf(s, "BDAT %zu\r\n", n);
    buf_add(&s->out, p, n);
    s->bdat_pending++;
    if (!s->ext.pipelining)
        s->st = S_BDAT; /* RFC 3030 §4.2: wait for each reply without PIPELINING */
    return n;
}

size_t smtpc_content(struct smtpc *s, const char *p, size_t n)
{
    if (s->st != S_CONTENT)
        fatal("smtpc_content in state %d", (int)s->st);
    if (n > SMTPC_CHUNK)
        n = SMTPC_CHUNK;
    if (s->bdat)
        return bdat_chunk(s, p, n);
    /* each input byte becomes at most two output bytes */
    size_t room = buf_room(&s->out);
    if (room < 16)
        return 0;
    if (n > (room - 16) / 2)
        n = (room - 16) / 2; /* and room is left for the final dot */
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        if (s->cr) {
            s->cr = false;
            buf_add(&s->out, "\r\n", 2); /* CR LF, or a bare CR taken as a line end */
            s->bol = true;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r') {
            s->cr = true;
            i++;
            continue;
        }
        if (c == '\n') {
            buf_add(&s->out, "\r\n", 2); /* a bare LF */
            s->bol = true;
            i++;
            continue;
        }
        if (s->bol && c == '.')
            buf_addc(&s->out, '.'); /* RFC 5321 §4.5.2 */
        /* copy the run of ordinary bytes up to the next line end */
        size_t j = i;
        while (j < n && p[j] != '\r' && p[j] != '\n')
            j++;
        buf_add(&s->out, p + i, j - i);
        s->bol = false;
        i = j;
    }
    return n;
}

void smtpc_content_end(struct smtpc *s)
{
    if (s->st != S_CONTENT)
        fatal("smtpc_content_end in state %d", (int)s->st);
    if (s->bdat) {
        s->bdat_last_sent = true;
        if (!s->bdat_failed) {
            outf(s, "BDAT 0 LAST\r\n");
            s->bdat_pending++;
            s->txn->dot_sent = true;
        } else if (s->bdat_pending == 0) {
            end_failed_txn(s);
            return;
        }
        s->st = S_BDAT;
        return;
    }
    if (s->cr || !s->bol)
        outf(s, "\r\n"); /* the message must end with a line end before the dot */
    s->cr = false;
    outf(s, ".\r\n");
    s->txn->dot_sent = true;
    s->st = S_DOT;
}

void smtpc_quit(struct smtpc *s)
{
    if (s->st != S_READY)
        fatal("smtpc_quit in state %d", (int)s->st);
    outf(s, "QUIT\r\n");
    s->st = S_QUIT;
}

void smtpc_abort(struct smtpc *s, const char *status, const char *why)
{
    if (s->st == S_CLOSED && s->txn == NULL)
        return;
    if (s->st == S_QUIT) {
        s->st = S_CLOSED; /* the goodbye got lost: nothing was at stake */
        return;
    }
    set_error(s, SMTPC_TEMP, status, "x-tern", why);
    resolve_rest(s, SMTPC_TEMP, status, "x-tern", why);
    s->st = S_CLOSED;
}

struct smtpc_txn *smtpc_take_done(struct smtpc *s)
{
    struct smtpc_txn *t = s->done_txn;
    s->done_txn = NULL;
    return t;
}

const struct smtpc_error *smtpc_error(const struct smtpc *s)
{
    return &s->err;
}

const struct smtpc_ext *smtpc_ext(const struct smtpc *s)
{
    return &s->ext;
}

bool smtpc_tls_active(const struct smtpc *s)
{
    return s->tls;
}

bool smtpc_in_txn(const struct smtpc *s)
{
    return s->txn != NULL;
}

const char *smtpc_stage(const struct smtpc *s)
{
    if (s->st == S_TXN && s->txn) {
        if (s->answered == 0)
            return "MAIL FROM";
        return s->answered <= s->txn->nrcpts ? "RCPT TO" : "DATA";
    }
    return stage_names[s->st];
}

unsigned smtpc_txn_count(const struct smtpc *s)
{
    return s->ntxn;
}

void smtpc_txn_clear(struct smtpc_txn *t)
{
    for (size_t i = 0; i < t->nrcpts; i++) {
        free(t->rcpts[i].diag);
        t->rcpts[i].diag = NULL;
        t->rcpts[i].outcome = SMTPC_NONE;
    }
    t->done = false;
}
