/*
 * session: see session.h.
 *
 * Layout: input is split into command lines (bounded, assembled across reads only when a
 * line spans two reads), each line is looked up in the command table, whose entry says in
 * which states the verb is allowed and which handler runs. Handlers produce one reply
 * value; reply() writes it, counts errors and logs failures. DATA content goes through a
 * byte-level scanner (struct data_scan) that finds CRLF.CRLF, undoes dot-stuffing, spots
 * bare CR/LF and counts Received: headers, handing content to the host in spans (no copy).
 */
#include "smtpd/session.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/mem.h"
#include "mail/sasl.h"

enum pending_op { P_NONE, P_MAIL, P_RCPT, P_DATA_BEGIN, P_BDAT_BEGIN, P_DATA_END, P_AUTH };

enum dstate {
    D_BOL,   /* at the beginning of a line */
    D_MID,   /* inside a line */
    D_CR,    /* just after a CR inside a line */
    D_DOT,   /* a line began with "." */
    D_DOTCR, /* a line began with ".\r" */
};

/* Scanning state of message content (DATA or BDAT). */
struct data_scan {
    enum dstate st;
    bool in_headers;
    char hdr[9]; /* first bytes of the current header line, to spot "Received:" */
    unsigned hdr_len;
    unsigned received;
    uint64_t size;
    bool bare_newline;
    bool too_big;
    bool loop;
};

enum auth_step { AUTH_IDLE, AUTH_PLAIN_RESPONSE, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

struct session {
    const struct session_params *par;
    const struct session_host *host;
    void *ctx;
    char id[32];
    enum session_state state;
    enum pending_op pending;
    bool esmtp, tls, want_close, want_tls, closing_after_txn, draft_open, line_overflow;
    char helo[256];
    char *auth_user;
    unsigned errors;
    const char *verb; /* of the command being answered, for logs */
    struct buf line;
    struct buf out;

    /* the transaction */
    struct envelope env;
    struct mailaddr pend_addr; /* MAIL/RCPT awaiting the host */
    struct rcpt_params pend_rcpt;
    struct data_scan ds;
    uint64_t bdat_remaining;
    bool bdat_last;
    bool bdat_failed; /* the BDAT transaction failed: read and refuse the remaining chunks */
    struct reply bdat_fail;
    unsigned nrcpt_accepted;

    enum auth_step auth_step;
    char auth_login_user[SASL_FIELD_MAX + 1];
};

/* ---- output ---- */

static bool counts_as_error(const struct reply *r)
{
    if (r->code < 400 || r->code == 421)
        return false;
    /* Our own conditions and normal limits are not the client's errors. */
    if (r->enh && (strcmp(r->enh, "4.5.3") == 0 || strcmp(r->enh, "4.3.1") == 0 ||
                   strcmp(r->enh, "4.3.0") == 0 || strcmp(r->enh, "5.3.4") == 0))
        return false;
    return true;
}

static void out_add(struct session *s, const char *p, size_t n)
{
    if (!buf_add(&s->out, p, n))
        fatal("session %s: reply buffer over %d bytes", s->id, SESSION_OUT_MAX);
}

static void close_session(struct session *s)
{
    s->state = SS_CLOSED;
    s->want_close = true;
}

static void reply(struct session *s, const struct reply *r)
{
    char line[REPLY_TEXT_MAX + 32];
    size_t n = reply_format(r, line, sizeof line);
    out_add(s, line, n);
    if (r->code >= 400) {
        struct logline l;
        log_begin(&l, LOG_LVL_INFO, "smtp.reject");
        log_str(&l, "sid", s->id);
        log_str(&l, "cmd", s->verb ? s->verb : "");
        log_int(&l, "code", r->code);
        log_str(&l, "enh", r->enh ? r->enh : "");
        log_str(&l, "text", r->text);
        log_end(&l);
    }
    if (counts_as_error(r) && ++s->errors > s->par->max_errors && s->state != SS_CLOSED) {
        struct reply bye;
        reply_set(&bye, 421, "4.7.0", "%s Error: too many errors, closing connection",
                  s->par->hostname);
        n = reply_format(&bye, line, sizeof line);
        out_add(s, line, n);
        log_printf(LOG_LVL_INFO, "event=smtp.too_many_errors sid=%s errors=%u", s->id, s->errors);
        close_session(s);
    }
}

static void replyf(struct session *s, int code, const char *enh, const char *fmt, ...)
    PRINTF_LIKE(4, 5);
static void replyf(struct session *s, int code, const char *enh, const char *fmt, ...)
{
    struct reply r;
    r.code = code;
    r.enh = enh;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.text, sizeof r.text, fmt, ap);
    va_end(ap);
    reply(s, &r);
}

/* ---- transaction state ---- */

static void abort_draft(struct session *s)
{
    if (s->draft_open) {
        s->draft_open = false;
        s->host->data_abort(s->ctx);
    }
}

static void reset_transaction(struct session *s)
{
    abort_draft(s);
    envelope_clear(&s->env);
    memset(&s->ds, 0, sizeof s->ds);
    s->bdat_remaining = 0;
    s->bdat_last = false;
    s->bdat_failed = false;
    s->nrcpt_accepted = 0;
    if (s->state != SS_CLOSED)
        s->state = s->helo[0] ? SS_READY : SS_INIT;
}

/* A transaction just ended (reply written): honour a pending shutdown. */
static void transaction_done(struct session *s)
{
    reset_transaction(s);
    if (s->closing_after_txn && s->state != SS_CLOSED) {
        replyf(s, 421, "4.3.2", "%s Service shutting down, closing connection",
               s->par->hostname);
        close_session(s);
    }
}

/* ---- the command table ---- */

#define ST(x) (1u << (x))
#define ST_ANY (ST(SS_INIT) | ST(SS_READY) | ST(SS_MAIL) | ST(SS_RCPT) | ST(SS_BDAT))
#define ST_TXN (ST(SS_MAIL) | ST(SS_RCPT) | ST(SS_BDAT))

struct command {
    const char *verb;
    unsigned states; /* where the verb is allowed; elsewhere 503 */
    void (*run)(struct session *s, const char *arg, size_t len);
};

static void cmd_ehlo(struct session *s, const char *arg, size_t len);
static void cmd_helo(struct session *s, const char *arg, size_t len);
static void cmd_mail(struct session *s, const char *arg, size_t len);
static void cmd_rcpt(struct session *s, const char *arg, size_t len);
static void cmd_data(struct session *s, const char *arg, size_t len);
static void cmd_bdat(struct session *s, const char *arg, size_t len);
static void cmd_rset(struct session *s, const char *arg, size_t len);
static void cmd_noop(struct session *s, const char *arg, size_t len);
static void cmd_quit(struct session *s, const char *arg, size_t len);
static void cmd_vrfy(struct session *s, const char *arg, size_t len);
static void cmd_help(struct session *s, const char *arg, size_t len);
static void cmd_starttls(struct session *s, const char *arg, size_t len);
static void cmd_auth(struct session *s, const char *arg, size_t len);
static void cmd_not_offered(struct session *s, const char *arg, size_t len);

static const struct command commands[] = {
    {"EHLO", ST_ANY, cmd_ehlo},
    {"HELO", ST_ANY, cmd_helo},
    {"MAIL", ST(SS_READY), cmd_mail},
    {"RCPT", ST(SS_MAIL) | ST(SS_RCPT), cmd_rcpt},
    {"DATA", ST(SS_RCPT), cmd_data},
    {"BDAT", ST_ANY, cmd_bdat}, /* the handler reads the chunk even when out of sequence */
    {"RSET", ST_ANY, cmd_rset},
    {"NOOP", ST_ANY, cmd_noop},
    {"QUIT", ST_ANY, cmd_quit},
    {"VRFY", ST_ANY, cmd_vrfy},
    {"HELP", ST_ANY, cmd_help},
    {"STARTTLS", ST(SS_INIT) | ST(SS_READY), cmd_starttls},
    {"AUTH", ST(SS_READY), cmd_auth},
    {"EXPN", ST_ANY, cmd_not_offered},
    {"TURN", ST_ANY, cmd_not_offered},
    {"ETRN", ST_ANY, cmd_not_offered},
    {"SEND", ST_ANY, cmd_not_offered},
    {"SOML", ST_ANY, cmd_not_offered},
    {"SAML", ST_ANY, cmd_not_offered},
};

static void bad_sequence(struct session *s, const struct command *c)
{
    const char *why = "Bad sequence of commands";
    if (s->state == SS_INIT)
        why = "Send HELO/EHLO first";
    else if (strcmp(c->verb, "MAIL") == 0)
        why = "Nested MAIL command";
    else if (strcmp(c->verb, "RCPT") == 0)
        why = "Need MAIL command";
    else if (strcmp(c->verb, "DATA") == 0)
        why = s->state == SS_MAIL ? "No valid recipients"
              : s->state == SS_BDAT ? "DATA not allowed in a BDAT transaction"
                                    : "Need MAIL command";
    else if (strcmp(c->verb, "STARTTLS") == 0 || strcmp(c->verb, "AUTH") == 0)
        why = "Not allowed during a mail transaction";
    replyf(s, 503, "5.5.1", "%s", why);
}

/* ---- lines ---- */

static bool has_control_chars(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

static void auth_line(struct session *s, const char *p, size_t n);

/* One complete line (terminator excluded): n bytes at p; crlf says whether it ended in
 * CRLF (false: a bare LF). */
static void process_line(struct session *s, const char *p, size_t n, bool crlf)
{
    s->verb = NULL;
    if (!crlf || memchr(p, '\r', n) != NULL) {
        replyf(s, 500, "5.5.2", "Syntax error: bare CR or LF in command line");
        if (s->state == SS_AUTH)
            s->state = SS_READY, s->auth_step = AUTH_IDLE;
        return;
    }
    if (s->state == SS_AUTH) {
        auth_line(s, p, n);
        return;
    }
    size_t vlen = 0;
    while (vlen < n && p[vlen] != ' ')
        vlen++;
    bool is_auth = vlen == 4 && strncasecmp(p, "AUTH", 4) == 0;
    /* AUTH may carry an initial response, so its line may be longer (RFC 4954 section 4) */
    int limit = is_auth ? SMTP_AUTH_LINE_MAX : SMTP_LINE_MAX;
    if (n + 2 > (size_t)limit) {
        replyf(s, 500, "5.5.2", "Line too long (the limit is %d octets)", limit);
        return;
    }
    if (has_control_chars(p, n)) {
        replyf(s, 500, "5.5.2", "Syntax error: control characters in command");
        return;
    }
    if (vlen == 0) {
        replyf(s, 500, "5.5.2", "Syntax error: empty command");
        return;
    }
    const struct command *cmd = NULL;
    for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
        if (strlen(commands[i].verb) == vlen && strncasecmp(commands[i].verb, p, vlen) == 0) {
            cmd = &commands[i];
            break;
        }
    }
    if (cmd == NULL) {
        replyf(s, 500, "5.5.1", "Command unrecognized");
        return;
    }
    s->verb = cmd->verb;
    if (s->closing_after_txn && !session_in_transaction(s) && strcmp(cmd->verb, "QUIT") != 0) {
        replyf(s, 421, "4.3.2", "%s Service shutting down, closing connection",
               s->par->hostname);
        close_session(s);
        return;
    }
    if (!(cmd->states & ST(s->state))) {
        bad_sequence(s, cmd);
        return;
    }
    const char *arg = p + vlen;
    size_t alen = n - vlen;
    while (alen > 0 && *arg == ' ')
        arg++, alen--;
    while (alen > 0 && arg[alen - 1] == ' ')
        alen--;
    cmd->run(s, arg, alen);
}

/* ---- EHLO / HELO ---- */

static bool set_helo(struct session *s, const char *verb, const char *arg, size_t len)
{
    if (len == 0) {
        replyf(s, 501, "5.5.4", "Syntax: %s hostname", verb);
        return false;
    }
    const char *why = addr_check_domain(arg, len, true);
    if (why != NULL) {
        replyf(s, 501, "5.5.4", "Invalid domain name in %s: %s", verb, why);
        return false;
    }
    if (len >= sizeof s->helo)
        len = sizeof s->helo - 1;
    memcpy(s->helo, arg, len);
    s->helo[len] = '\0';
    return true;
}

static bool auth_offered(const struct session *s)
{
    return s->par->auth && (s->tls || s->par->auth_plain_ok);
}

static void cmd_ehlo(struct session *s, const char *arg, size_t len)
{
    if (!set_helo(s, "EHLO", arg, len))
        return;
    s->esmtp = true;
    reset_transaction(s); /* RFC 5321 §4.1.4: EHLO resets like RSET */
    s->state = SS_READY;
    char line[160];
    snprintf(line, sizeof line, "250-%s\r\n", s->par->hostname);
    out_add(s, line, strlen(line));
    out_add(s, "250-PIPELINING\r\n", 16);
    snprintf(line, sizeof line, "250-SIZE %llu\r\n", (unsigned long long)s->par->size_limit);
    out_add(s, line, strlen(line));
    static const char common[] = "250-8BITMIME\r\n"
                                 "250-SMTPUTF8\r\n"
                                 "250-CHUNKING\r\n"
                                 "250-DSN\r\n";
    out_add(s, common, sizeof common - 1);
    if (s->par->starttls && !s->tls)
        out_add(s, "250-STARTTLS\r\n", 14);
    if (auth_offered(s) && s->auth_user == NULL)
        out_add(s, "250-AUTH PLAIN LOGIN\r\n", 22);
    out_add(s, "250 ENHANCEDSTATUSCODES\r\n", 25);
}

static void cmd_helo(struct session *s, const char *arg, size_t len)
{
    if (!set_helo(s, "HELO", arg, len))
        return;
    s->esmtp = false;
    reset_transaction(s);
    s->state = SS_READY;
    char line[300];
    snprintf(line, sizeof line, "250 %s\r\n", s->par->hostname);
    out_add(s, line, strlen(line));
}

/* ---- MAIL / RCPT ---- */

static struct esmtp_offer offer_of(const struct session *s)
{
    struct esmtp_offer o = {0};
    if (s->esmtp) {
        o.size = o.eightbitmime = o.smtputf8 = o.dsn = true;
        o.auth = auth_offered(s);
        o.size_limit = s->par->size_limit;
    }
    return o;
}

/* "FROM:" / "TO:" prefix, then optional spaces (liberal: some clients send one). */
static bool skip_prefix(const char **arg, size_t *len, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (*len < pl || strncasecmp(*arg, prefix, pl) != 0)
        return false;
    *arg += pl;
    *len -= pl;
    while (*len > 0 && **arg == ' ')
        (*arg)++, (*len)--;
    return true;
}

static void mail_accepted(struct session *s)
{
    s->state = SS_MAIL;
    char text[ADDR_TEXT_MAX + 1];
    addr_format(&s->pend_addr, text, sizeof text);
    envelope_set(&s->env.sender, text);
    replyf(s, 250, "2.1.0", "Ok");
}

static void cmd_mail(struct session *s, const char *arg, size_t len)
{
    if (!skip_prefix(&arg, &len, "FROM:")) {
        replyf(s, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
        return;
    }
    if (s->par->require_auth && s->auth_user == NULL) {
        replyf(s, 530, "5.7.0", "Authentication required");
        return;
    }
    size_t end;
    const char *why = addr_parse_path(arg, len, ADDR_ALLOW_NULL | ADDR_ALLOW_UTF8,
                                      &s->pend_addr, &end);
    if (why != NULL) {
        replyf(s, 501, "5.1.7", "Bad sender address syntax: %s", why);
        return;
    }
    struct esmtp_offer offer = offer_of(s);
    struct mail_params mp;
    struct esmtp_error err;
    if (!esmtp_parse_mail(arg + end, len - end, &offer, &mp, &err)) {
        replyf(s, err.code, err.enh, "%s", err.text);
        return;
    }
    if ((s->pend_addr.flags & ADDR_F_UTF8) && !mp.smtputf8) {
        replyf(s, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8 (RFC 6531)");
        return;
    }
    envelope_clear(&s->env);
    s->env.body = mp.body;
    s->env.smtputf8 = mp.smtputf8;
    s->env.ret = mp.ret;
    s->env.declared_size = mp.size;
    envelope_set(&s->env.envid, mp.envid[0] ? mp.envid : NULL);
    envelope_set(&s->env.auth_param, mp.auth[0] ? mp.auth : NULL);
    struct reply r;
    s->pending = P_MAIL;
    if (s->host->mail(s->ctx, &s->pend_addr, &mp, &r) == HOST_DONE)
        session_resume(s, &r);
}

static bool rcpt_is_duplicate(const struct session *s, const char *addr)
{
    for (size_t i = 0; i < s->env.nrcpts; i++)
        if (strcmp(s->env.rcpts[i].addr, addr) == 0)
            return true;
    return false;
}

static void rcpt_accepted(struct session *s)
{
    char text[ADDR_TEXT_MAX + 1];
    addr_format(&s->pend_addr, text, sizeof text);
    /* the same recipient twice is accepted but stored once (delivered once) */
    if (!rcpt_is_duplicate(s, text))
        envelope_add_rcpt(&s->env, text, s->pend_rcpt.orcpt[0] ? s->pend_rcpt.orcpt : NULL,
                          s->pend_rcpt.notify);
    s->nrcpt_accepted++;
    s->state = SS_RCPT;
    replyf(s, 250, "2.1.5", "Ok");
}

static void cmd_rcpt(struct session *s, const char *arg, size_t len)
{
    if (!skip_prefix(&arg, &len, "TO:")) {
        replyf(s, 501, "5.5.4", "Syntax: RCPT TO:<address>");
        return;
    }
    if (s->env.nrcpts >= s->par->max_recipients) {
        replyf(s, 452, "4.5.3", "Too many recipients (the limit is %u)",
               s->par->max_recipients);
        return;
    }
    size_t end;
    unsigned opts = ADDR_ALLOW_POSTMASTER | (s->env.smtputf8 ? ADDR_ALLOW_UTF8 : 0);
    const char *why = addr_parse_path(arg, len, opts, &s->pend_addr, &end);
    if (why == addr_err_needs_utf8) {
        replyf(s, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8 on MAIL (RFC 6531)");
        return;
    }
    if (why != NULL) {
        replyf(s, 501, "5.1.3", "Bad recipient address syntax: %s", why);
        return;
    }
    struct esmtp_offer offer = offer_of(s);
    struct esmtp_error err;
    if (!esmtp_parse_rcpt(arg + end, len - end, &offer, &s->pend_rcpt, &err)) {
        replyf(s, err.code, err.enh, "%s", err.text);
        return;
    }
    struct reply r;
    s->pending = P_RCPT;
    if (s->host->rcpt(s->ctx, &s->pend_addr, &s->pend_rcpt, &r) == HOST_DONE)
        session_resume(s, &r);
}

/* ---- DATA ---- */

static void begin_scan(struct session *s)
{
    memset(&s->ds, 0, sizeof s->ds);
    s->ds.st = D_BOL;
    s->ds.in_headers = true;
}

static void cmd_data(struct session *s, const char *arg, size_t len)
{
    if (len != 0) {
        replyf(s, 501, "5.5.4", "Syntax: DATA (no argument)");
        return;
    }
    struct reply r;
    s->pending = P_DATA_BEGIN;
    if (s->host->data_begin(s->ctx, &s->env, &r) == HOST_DONE)
        session_resume(s, &r);
}

/* Hand content to the host unless the message is already refused. */
static void emit(struct session *s, const char *p, size_t n)
{
    if (n == 0 || s->ds.too_big || s->ds.bare_newline || s->ds.loop)
        return;
    if (s->ds.size + n > s->par->size_limit) {
        s->ds.too_big = true;
        abort_draft(s); /* nothing is kept of a message that will be refused */
        return;
    }
    s->ds.size += n;
    s->host->data_write(s->ctx, p, n);
}

static void flag_bare(struct session *s)
{
    if (!s->ds.bare_newline) {
        s->ds.bare_newline = true;
        abort_draft(s);
    }
}

/* Header tracking at the end of a line: count Received: fields (RFC 5321 §6.3). */
static void header_line_end(struct session *s, bool empty)
{
    struct data_scan *d = &s->ds;
    if (!d->in_headers)
        return;
    if (empty) {
        d->in_headers = false;
        return;
    }
    if (d->hdr_len == sizeof d->hdr && strncasecmp(d->hdr, "received:", 9) == 0 &&
        ++d->received > s->par->max_received && !d->loop) {
        d->loop = true;
        abort_draft(s);
    }
    d->hdr_len = 0;
}

static void header_bytes(struct session *s, const char *p, size_t n)
{
    struct data_scan *d = &s->ds;
    while (d->in_headers && d->hdr_len < sizeof d->hdr && n > 0) {
        d->hdr[d->hdr_len++] = *p++;
        n--;
    }
}

static void message_complete(struct session *s);

/* Scan DATA content; returns bytes consumed (stops right after the terminator). */
static size_t data_feed(struct session *s, const char *p, size_t n)
{
    struct data_scan *d = &s->ds;
    size_t i = 0, span = 0; /* p[span..i) is content not yet emitted */
    while (i < n) {
        char c = p[i];
        switch (d->st) {
        case D_BOL:
            if (c == '.') {
                emit(s, p + span, i - span);
                i++;
                span = i; /* the dot is never content: stuffing or terminator */
                d->st = D_DOT;
            } else if (c == '\r') {
                i++;
                d->st = D_CR;
                header_line_end(s, true);
            } else if (c == '\n') {
                flag_bare(s);
                i++;
                d->st = D_MID; /* after a bare LF no line "begins": "\n.\r\n" ends nothing */
            } else {
                d->st = D_MID;
            }
            break;
        case D_MID: {
            size_t start = i;
            while (i < n && p[i] != '\r' && p[i] != '\n')
                i++;
            header_bytes(s, p + start, i - start);
            if (i < n) {
                if (p[i] == '\r')
                    d->st = D_CR;
                else
                    flag_bare(s); /* and stay mid-line: only CRLF starts a line */
                i++;
            }
            break;
        }
        case D_CR:
            if (c == '\n') {
                i++;
                header_line_end(s, false); /* (an empty line was seen at its CR) */
                d->st = D_BOL;
            } else {
                flag_bare(s); /* a CR not followed by LF */
                d->st = D_MID;
            }
            break;
        case D_DOT:
            if (c == '\r') {
                /* hold the CR back: ".\r\n" is the terminator, and ".\rX" (a bare CR)
                 * refuses the message, so this CR is never content */
                emit(s, p + span, i - span);
                i++;
                span = i;
                d->st = D_DOTCR;
            } else {
                if (c == '\n')
                    flag_bare(s);
                d->st = D_MID; /* a stuffed dot: the line goes on without it */
            }
            break;
        case D_DOTCR:
            if (c == '\n') {
                i++;
                message_complete(s);
                return i;
            }
            flag_bare(s);
            d->st = D_MID;
            break;
        }
    }
    emit(s, p + span, i - span);
    return i;
}

/* After DATA's terminator or BDAT LAST: refuse, or have the host commit. */
static void message_complete(struct session *s)
{
    struct data_scan *d = &s->ds;
    if (d->too_big) {
        replyf(s, 552, "5.3.4", "Message too big for system (the limit is %llu octets)",
               (unsigned long long)s->par->size_limit);
        transaction_done(s);
        return;
    }
    if (d->bare_newline) {
        replyf(s, 550, "5.6.0",
               "Message refused: bare CR or LF characters (RFC 5321 section 2.3.8)");
        transaction_done(s);
        return;
    }
    if (d->loop) {
        replyf(s, 554, "5.4.6", "Too many Received: headers (%u): mail forwarding loop",
               d->received);
        transaction_done(s);
        return;
    }
    struct envelope *env = envelope_move(&s->env);
    struct reply r;
    s->pending = P_DATA_END;
    s->draft_open = false; /* the host owns the draft from here */
    enum host_rc rc = s->host->data_end(s->ctx, env, &r);
    envelope_free(env);
    if (rc == HOST_DONE)
        session_resume(s, &r);
}

/* ---- BDAT (RFC 3030) ---- */

/* BDAT content: no dot-stuffing and no terminator; still count Received: headers. Here
 * D_BOL means "no content byte on this line yet" and D_MID "some". */
static void bdat_scan(struct session *s, const char *p, size_t n)
{
    struct data_scan *d = &s->ds;
    for (size_t i = 0; i < n && d->in_headers; i++) {
        char c = p[i];
        if (c == '\n') {
            header_line_end(s, d->st == D_BOL);
            d->st = D_BOL;
        } else if (c != '\r') {
            d->st = D_MID;
            header_bytes(s, &c, 1);
        }
    }
    emit(s, p, n);
}

static void bdat_chunk_done(struct session *s)
{
    if (s->bdat_failed) {
        reply(s, &s->bdat_fail);
        if (s->bdat_last)
            transaction_done(s);
        else
            s->state = SS_BDAT;
        return;
    }
    if (s->ds.too_big) {
        /* refuse now and every remaining chunk of this transaction */
        s->bdat_failed = true;
        reply_set(&s->bdat_fail, 552, "5.3.4",
                  "Message too big for system (the limit is %llu octets)",
                  (unsigned long long)s->par->size_limit);
        reply(s, &s->bdat_fail);
        if (s->bdat_last)
            transaction_done(s);
        else
            s->state = SS_BDAT;
        return;
    }
    if (s->bdat_last) {
        message_complete(s);
        return;
    }
    s->state = SS_BDAT;
    replyf(s, 250, "2.0.0", "%llu octets received", (unsigned long long)s->ds.size);
}

static size_t bdat_feed(struct session *s, const char *p, size_t n)
{
    size_t take = n < s->bdat_remaining ? n : (size_t)s->bdat_remaining;
    if (!s->bdat_failed)
        bdat_scan(s, p, take);
    s->bdat_remaining -= take;
    if (s->bdat_remaining == 0)
        bdat_chunk_done(s);
    return take;
}

static void cmd_bdat(struct session *s, const char *arg, size_t len)
{
    /* BDAT chunk-size [SP "LAST"] */
    size_t i = 0;
    uint64_t size = 0;
    while (i < len && isdigit((unsigned char)arg[i])) {
        if (i >= 18) {
            replyf(s, 501, "5.5.4", "Syntax: BDAT chunk-size too large");
            return;
        }
        size = size * 10 + (uint64_t)(arg[i] - '0');
        i++;
    }
    bool last = false;
    if (i == 0) {
        replyf(s, 501, "5.5.4", "Syntax: BDAT chunk-size [LAST]");
        return;
    }
    if (i < len) {
        size_t j = i;
        while (j < len && arg[j] == ' ')
            j++;
        if (j == i || len - j != 4 || strncasecmp(arg + j, "LAST", 4) != 0) {
            replyf(s, 501, "5.5.4", "Syntax: BDAT chunk-size [LAST]");
            return;
        }
        last = true;
    }
    s->bdat_remaining = size;
    s->bdat_last = last;

    if (s->state == SS_BDAT) {
        s->state = SS_BDAT_CHUNK;
        if (size == 0)
            bdat_chunk_done(s);
        return;
    }
    if (s->state != SS_RCPT) {
        /* out of sequence: the chunk still follows; read it, then refuse */
        s->bdat_failed = true;
        const char *why = s->state == SS_MAIL ? "No valid recipients"
                          : s->state == SS_INIT ? "Send HELO/EHLO first"
                                                : "Need MAIL command";
        reply_set(&s->bdat_fail, 503, "5.5.1", "%s", why);
        s->state = SS_BDAT_CHUNK; /* the transaction stays failed until LAST */
        if (size == 0)
            bdat_chunk_done(s);
        return;
    }
    begin_scan(s);
    struct reply r;
    s->pending = P_BDAT_BEGIN;
    if (s->host->data_begin(s->ctx, &s->env, &r) == HOST_DONE)
        session_resume(s, &r);
}

/* ---- the other commands ---- */

static void cmd_rset(struct session *s, const char *arg, size_t len)
{
    if (len != 0) {
        replyf(s, 501, "5.5.4", "Syntax: RSET (no argument)");
        return;
    }
    reset_transaction(s);
    replyf(s, 250, "2.0.0", "Ok");
    if (s->closing_after_txn) {
        replyf(s, 421, "4.3.2", "%s Service shutting down, closing connection",
               s->par->hostname);
        close_session(s);
    }
}

static void cmd_noop(struct session *s, const char *arg, size_t len)
{
    replyf(s, 250, "2.0.0", "Ok");
}

static void cmd_quit(struct session *s, const char *arg, size_t len)
{
    if (len != 0) {
        replyf(s, 501, "5.5.4", "Syntax: QUIT (no argument)");
        return;
    }
    reset_transaction(s);
    replyf(s, 221, "2.0.0", "Bye");
    close_session(s);
}

static void cmd_vrfy(struct session *s, const char *arg, size_t len)
{
    if (len == 0) {
        replyf(s, 501, "5.5.4", "Syntax: VRFY address");
        return;
    }
    /* never a user list (RFC 5321 §3.5.3, §7.3) */
    replyf(s, 252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_help(struct session *s, const char *arg, size_t len)
{
    replyf(s, 214, "2.0.0",
           "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
}

/* EXPN (never a list: RFC 5321 §3.5.3, §7.3), TURN, ETRN, SEND, SOML, SAML */
static void cmd_not_offered(struct session *s, const char *arg, size_t len)
{
    replyf(s, 502, "5.5.1", "Command not implemented");
}

static void cmd_starttls(struct session *s, const char *arg, size_t len)
{
    if (len != 0) {
        replyf(s, 501, "5.5.4", "Syntax: STARTTLS (no argument)");
        return;
    }
    if (s->tls) {
        replyf(s, 503, "5.5.1", "TLS already active");
        return;
    }
    if (!s->par->starttls) {
        replyf(s, 502, "5.5.1", "STARTTLS not available");
        return;
    }
    replyf(s, 220, "2.0.0", "Ready to start TLS");
    s->want_tls = true;
}

/* ---- AUTH (RFC 4954) ---- */

static void wipe(void *p, size_t n)
{
    explicit_bzero(p, n);
}

static void auth_fail_syntax(struct session *s, const char *why)
{
    s->state = SS_READY;
    s->auth_step = AUTH_IDLE;
    wipe(s->auth_login_user, sizeof s->auth_login_user);
    replyf(s, 501, "5.5.2", "%s", why);
}

static void auth_check(struct session *s, const char *user, const char *pass)
{
    struct reply r;
    s->state = SS_READY;
    s->auth_step = AUTH_IDLE;
    s->pending = P_AUTH;
    if (s->host->auth(s->ctx, user, pass, &r) == HOST_DONE)
        session_resume(s, &r);
}

static void auth_plain(struct session *s, const char *b64, size_t n)
{
    struct sasl_plain pl;
    const char *why = sasl_plain_decode(b64, n, &pl);
    if (why != NULL) {
        wipe(&pl, sizeof pl);
        auth_fail_syntax(s, why);
        return;
    }
    if (pl.authzid[0] != '\0' && strcmp(pl.authzid, pl.authcid) != 0) {
        wipe(&pl, sizeof pl);
        s->state = SS_READY;
        s->auth_step = AUTH_IDLE;
        replyf(s, 535, "5.7.8", "Authentication credentials invalid");
        return;
    }
    auth_check(s, pl.authcid, pl.passwd);
    wipe(&pl, sizeof pl);
}

static void auth_line(struct session *s, const char *p, size_t n)
{
    if (n == 1 && p[0] == '*') {
        s->state = SS_READY;
        s->auth_step = AUTH_IDLE;
        wipe(s->auth_login_user, sizeof s->auth_login_user);
        replyf(s, 501, "5.0.0", "Authentication cancelled");
        return;
    }
    if (s->auth_step == AUTH_PLAIN_RESPONSE) {
        auth_plain(s, p, n);
        return;
    }
    unsigned char field[SASL_LINE_MAX];
    size_t len = base64_decode(p, n, field, sizeof field);
    if (len == (size_t)-1 || len > SASL_FIELD_MAX || memchr(field, '\0', len) != NULL) {
        wipe(field, sizeof field);
        auth_fail_syntax(s, "Invalid base64 data");
        return;
    }
    if (s->auth_step == AUTH_LOGIN_USER) {
        memcpy(s->auth_login_user, field, len + 1);
        wipe(field, len);
        s->auth_step = AUTH_LOGIN_PASS;
        out_add(s, "334 UGFzc3dvcmQ6\r\n", 18); /* "Password:" */
        return;
    }
    auth_check(s, s->auth_login_user, (const char *)field);
    wipe(field, sizeof field);
    wipe(s->auth_login_user, sizeof s->auth_login_user);
}

static void cmd_auth(struct session *s, const char *arg, size_t len)
{
    if (s->auth_user != NULL) {
        replyf(s, 503, "5.5.1", "Already authenticated");
        return;
    }
    if (!s->par->auth) {
        replyf(s, 502, "5.5.1", "AUTH not available");
        return;
    }
    if (!auth_offered(s)) {
        replyf(s, 538, "5.7.11", "Encryption required for requested authentication mechanism");
        return;
    }
    size_t mlen = 0;
    while (mlen < len && arg[mlen] != ' ')
        mlen++;
    const char *resp = arg + mlen;
    size_t rlen = len - mlen;
    while (rlen > 0 && *resp == ' ')
        resp++, rlen--;
    if (mlen == 5 && strncasecmp(arg, "PLAIN", 5) == 0) {
        if (rlen == 0) {
            s->state = SS_AUTH;
            s->auth_step = AUTH_PLAIN_RESPONSE;
            out_add(s, "334 \r\n", 6);
        } else if (rlen == 1 && resp[0] == '=') {
            auth_fail_syntax(s, "Empty PLAIN response");
        } else {
            auth_plain(s, resp, rlen);
        }
        return;
    }
    if (mlen == 5 && strncasecmp(arg, "LOGIN", 5) == 0) {
        s->state = SS_AUTH;
        if (rlen == 0) {
            s->auth_step = AUTH_LOGIN_USER;
            out_add(s, "334 VXNlcm5hbWU6\r\n", 18); /* "Username:" */
        } else {
            s->auth_step = AUTH_LOGIN_USER;
            auth_line(s, resp, rlen);
        }
        return;
    }
    if (mlen == 0)
        replyf(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
    else
        replyf(s, 504, "5.5.4", "Unrecognized authentication type");
}

/* ---- resuming host calls ---- */

void session_resume(struct session *s, const struct reply *r)
{
    enum pending_op op = s->pending;
    s->pending = P_NONE;
    switch (op) {
    case P_NONE:
        fatal("session %s: resume without a pending call", s->id);
    case P_MAIL:
        if (r->code >= 200 && r->code < 300)
            mail_accepted(s);
        else {
            envelope_clear(&s->env);
            reply(s, r);
        }
        break;
    case P_RCPT:
        if (r->code >= 200 && r->code < 300)
            rcpt_accepted(s);
        else
            reply(s, r);
        break;
    case P_DATA_BEGIN:
        if (r->code >= 200 && r->code < 400) {
            s->draft_open = true;
            begin_scan(s);
            s->state = SS_DATA;
            out_add(s, "354 End data with <CR><LF>.<CR><LF>\r\n", 37);
        } else {
            reply(s, r);
        }
        break;
    case P_BDAT_BEGIN:
        s->state = SS_BDAT_CHUNK;
        if (r->code >= 200 && r->code < 400) {
            s->draft_open = true;
        } else {
            s->bdat_failed = true;
            s->bdat_fail = *r;
        }
        if (s->bdat_remaining == 0)
            bdat_chunk_done(s);
        break;
    case P_DATA_END:
        reply(s, r);
        transaction_done(s);
        break;
    case P_AUTH:
        reply(s, r);
        break;
    }
}

/* ---- input ---- */

size_t session_input(struct session *s, const char *p, size_t n)
{
    size_t used = 0;
    while (used < n && s->pending == P_NONE && s->state != SS_CLOSED && !s->want_tls &&
           s->out.len < SESSION_OUT_HIGH) {
        if (s->state == SS_DATA) {
            used += data_feed(s, p + used, n - used);
            continue;
        }
        if (s->state == SS_BDAT_CHUNK) {
            used += bdat_feed(s, p + used, n - used);
            continue;
        }
        const char *start = p + used;
        const char *lf = memchr(start, '\n', n - used);
        if (lf == NULL) {
            /* a partial line: keep it (bounded) until its end arrives */
            size_t part = n - used;
            if (!s->line_overflow && !buf_add(&s->line, start, part)) {
                s->line_overflow = true;
                buf_reset(&s->line);
            }
            used = n;
            break;
        }
        size_t seg = (size_t)(lf - start);
        used += seg + 1;
        if (s->line_overflow) {
            s->line_overflow = false;
            s->verb = NULL;
            replyf(s, 500, "5.5.2", "Line too long (the limit is %d octets)", SMTP_LINE_MAX);
            continue;
        }
        const char *line = start;
        size_t len = seg;
        if (s->line.len > 0) {
            if (!buf_add(&s->line, start, seg)) {
                buf_reset(&s->line);
                s->verb = NULL;
                replyf(s, 500, "5.5.2", "Line too long (the limit is %d octets)",
                       SMTP_LINE_MAX);
                continue;
            }
            line = s->line.data;
            len = s->line.len;
        }
        bool crlf = len > 0 && line[len - 1] == '\r';
        process_line(s, line, crlf ? len - 1 : len, crlf);
        buf_reset(&s->line);
        if (s->line.cap > 1024)
            buf_release(&s->line); /* idle sessions keep no large buffers */
    }
    if (s->want_tls)
        used = n; /* RFC 3207 §4.2 / CVE-2011-0411: nothing pipelined after STARTTLS counts */
    return used;
}

/* ---- life cycle and accessors ---- */

struct session *session_new(const struct session_params *par, const struct session_host *host,
                            void *ctx, const char *id)
{
    struct session *s = xcalloc(1, sizeof *s);
    s->par = par;
    s->host = host;
    s->ctx = ctx;
    snprintf(s->id, sizeof s->id, "%s", id);
    s->state = SS_INIT;
    buf_init(&s->line, SMTP_AUTH_LINE_MAX + 2);
    buf_init(&s->out, SESSION_OUT_MAX);
    envelope_init(&s->env);
    return s;
}

void session_free(struct session *s)
{
    if (s == NULL)
        return;
    abort_draft(s);
    envelope_clear(&s->env);
    buf_release(&s->line);
    buf_release(&s->out);
    free(s->auth_user);
    wipe(s->auth_login_user, sizeof s->auth_login_user);
    free(s);
}

void session_greet(struct session *s)
{
    char line[300];
    snprintf(line, sizeof line, "220 %s ESMTP tern\r\n", s->par->hostname);
    out_add(s, line, strlen(line));
}

void session_close_with(struct session *s, const struct reply *r)
{
    if (s->state == SS_CLOSED)
        return;
    abort_draft(s);
    s->verb = NULL;
    reply(s, r);
    close_session(s);
}

void session_tls_started(struct session *s)
{
    s->want_tls = false;
    s->tls = true;
    s->helo[0] = '\0';
    s->esmtp = false;
    reset_transaction(s);
    s->state = SS_INIT;
    buf_reset(&s->line);
    s->line_overflow = false;
}

void session_set_tls(struct session *s, bool active)
{
    s->tls = active;
}

void session_set_auth_user(struct session *s, const char *user)
{
    free(s->auth_user);
    s->auth_user = xstrdup(user);
}

void session_timeout(struct session *s)
{
    struct reply r;
    reply_set(&r, 421, "4.4.2", "%s Error: timeout exceeded, closing connection",
              s->par->hostname);
    session_close_with(s, &r);
}

void session_shutdown(struct session *s)
{
    if (s->state == SS_CLOSED)
        return;
    if (session_in_transaction(s) || s->pending != P_NONE) {
        s->closing_after_txn = true;
        return;
    }
    struct reply r;
    reply_set(&r, 421, "4.3.2", "%s Service shutting down, closing connection",
              s->par->hostname);
    session_close_with(s, &r);
}

const char *session_output(const struct session *s, size_t *len)
{
    *len = s->out.len;
    return s->out.data;
}

void session_output_sent(struct session *s, size_t n)
{
    buf_consume(&s->out, n);
    if (s->out.len == 0 && s->out.cap > 4096)
        buf_release(&s->out);
}

enum session_state session_state(const struct session *s)
{
    return s->state;
}

bool session_pending(const struct session *s)
{
    return s->pending != P_NONE;
}

bool session_wants_close(const struct session *s)
{
    return s->want_close;
}

bool session_wants_tls(const struct session *s)
{
    return s->want_tls;
}

bool session_in_transaction(const struct session *s)
{
    return s->state == SS_MAIL || s->state == SS_RCPT || s->state == SS_DATA ||
           s->state == SS_BDAT || s->state == SS_BDAT_CHUNK || s->pending == P_DATA_END;
}

bool session_reading_data(const struct session *s)
{
    return s->state == SS_DATA || s->state == SS_BDAT_CHUNK;
}

const char *session_helo(const struct session *s)
{
    return s->helo;
}

bool session_esmtp(const struct session *s)
{
    return s->esmtp;
}

bool session_tls(const struct session *s)
{
    return s->tls;
}

const char *session_auth_user(const struct session *s)
{
    return s->auth_user;
}

const char *session_protocol(const struct session *s)
{
    if (!s->esmtp)
        return "SMTP";
    bool utf8 = s->env.smtputf8;
    if (s->tls && s->auth_user)
        return utf8 ? "UTF8SMTPSA" : "ESMTPSA";
    if (s->tls)
        return utf8 ? "UTF8SMTPS" : "ESMTPS";
    if (s->auth_user)
        return utf8 ? "UTF8SMTPA" : "ESMTPA";
    return utf8 ? "UTF8SMTP" : "ESMTP";
}

const char *session_id(const struct session *s)
{
    return s->id;
}

unsigned session_errors(const struct session *s)
{
    return s->errors;
}
