/*
 * smtpc: one outbound SMTP session (the client side of RFC 5321) as an explicit state
 * machine that holds no socket, clock or file. The host (deliver/remote.c, or a unit test)
 * feeds it the server's bytes with smtpc_input(), sends what smtpc_output() holds, and acts
 * on smtpc_phase(): WAIT (read more), TLS (do the handshake), READY (give a transaction or
 * quit), CONTENT (stream the message), CLOSED (flush and close).
 *
 * Session: greeting, EHLO (HELO when EHLO gets a 5xx), STARTTLS when offered and allowed
 * (RFC 3207; EHLO again after the handshake), AUTH PLAIN or LOGIN (RFC 4954, 4616) only
 * over TLS. Transactions: MAIL with SIZE (RFC 1870), BODY=8BITMIME (RFC 6152), SMTPUTF8
 * (RFC 6531) and RET/ENVID (RFC 3461) as the server offers them; RCPT with NOTIFY/ORCPT
 * when it offers DSN; with PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one group
 * and the replies are read in order. Content is dot-stuffed and every line ending becomes
 * CRLF (a bare LF or bare CR is taken as a line end). A BODY=BINARYMIME message goes as
 * BDAT chunks, untouched (RFC 3030), or bounces with 5.6.3 when the server lacks CHUNKING
 * and BINARYMIME. RSET ends a transaction that failed before its end, so the session can
 * carry the next one; QUIT ends the session.
 *
 * Outcomes: every recipient of a transaction gets one (OK, TEMP, PERM) with an enhanced
 * status (the server's when its reply carries one of the right class, else X.0.0) and a
 * diagnostic "smtp; <reply>" (multi-line replies joined) or "x-tern; ..." for our own.
 * A 421 anywhere ends the session; recipients without an outcome get it as TEMP.
 *
 * Bounds: a reply line is at most SMTPC_LINE_MAX bytes, a whole reply SMTPC_REPLY_MAX;
 * more is a protocol error (the session fails, recipients are deferred). Output grows by
 * at most one command group or one content piece between the host's drains.
 */
#ifndef TERN_SMTPC_H
#define TERN_SMTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/envelope.h"

#define SMTPC_LINE_MAX 4096        /* one reply line (RFC 5321 says 512; servers exceed it) */
#define SMTPC_REPLY_MAX (64 * 1024) /* all lines of one reply */
#define SMTPC_DIAG_MAX 900         /* a diagnostic kept for a recipient */
#define SMTPC_CHUNK (64 * 1024)    /* content bytes smtpc_content() takes at once at most */
#define SMTPC_RCPTS_MAX 1000       /* recipients of one transaction */

/* RFC 5321 §4.5.3.2 */
#define SMTPC_TO_GREETING_MS 300000
#define SMTPC_TO_EHLO_MS 300000
#define SMTPC_TO_STARTTLS_MS 300000
#define SMTPC_TO_AUTH_MS 300000
#define SMTPC_TO_MAIL_MS 300000
#define SMTPC_TO_RCPT_MS 300000
#define SMTPC_TO_DATA_MS 120000
#define SMTPC_TO_BLOCK_MS 180000 /* one content block written */
#define SMTPC_TO_DOT_MS 600000
#define SMTPC_TO_RSET_MS 120000
#define SMTPC_TO_QUIT_MS 60000

enum smtpc_phase {
    SMTPC_WAIT,    /* replies are awaited: feed input */
    SMTPC_TLS,     /* STARTTLS accepted: discard buffered input, handshake, smtpc_tls_done() */
    SMTPC_READY,   /* idle: smtpc_begin() a transaction or smtpc_quit() */
    SMTPC_CONTENT, /* smtpc_content() the message, then smtpc_content_end() */
    SMTPC_CLOSED,  /* over: send what output is left, then close */
};

enum smtpc_outcome { SMTPC_NONE, SMTPC_OK, SMTPC_TEMP, SMTPC_PERM };

struct smtpc_params {
    const char *helo;     /* our name for EHLO/HELO */
    bool starttls;        /* use STARTTLS when the server offers it */
    bool require_tls;     /* no transaction without TLS (4.7.4 if STARTTLS is not offered) */
    const char *auth_user; /* AUTH (over TLS only) with these; NULL: no AUTH */
    const char *auth_pass;
};

struct smtpc_rcpt {
    const char *addr;  /* local@domain */
    const char *orcpt; /* "rfc822;xtext" or NULL */
    unsigned notify;   /* DSN_NOTIFY_* */
    /* results */
    enum smtpc_outcome outcome;
    bool relayed;      /* OK, NOTIFY=SUCCESS asked, but the server does not do DSN */
    char status[12];   /* enhanced status */
    char *diag;        /* heap: "smtp; 250 2.0.0 Ok" or "x-tern; ..." */
    bool accepted;     /* RCPT got 2xx (internal) */
    int rcpt_code;     /* the reply code of a refused RCPT, else 0 */
};

struct smtpc_txn {
    const char *sender; /* "" for <> */
    uint64_t size;
    enum body_type body;
    bool smtputf8;
    enum dsn_ret ret;
    const char *envid; /* xtext or NULL */
    struct smtpc_rcpt *rcpts;
    size_t nrcpts;
    /* results */
    bool done;
    bool dot_sent; /* the final dot went out (a lost reply then may mean a duplicate) */
};

/* Free the results (diagnostics) of a transaction so it can be reused or dropped. */
void smtpc_txn_clear(struct smtpc_txn *t);

/* What the server offered in its last EHLO reply. */
struct smtpc_ext {
    bool esmtp, pipelining, size, eightbitmime, smtputf8, dsn, starttls, enhanced;
    bool chunking, binarymime, auth_plain, auth_login;
    uint64_t size_limit; /* 0: none given */
};

/* Why the session failed (valid when failed is true). */
struct smtpc_error {
    bool failed;
    enum smtpc_outcome kind; /* TEMP or PERM */
    bool next_host;          /* failed before it was ready: another host may do better */
    char status[12];
    char diag[SMTPC_DIAG_MAX + 64];
    const char *stage;       /* "greeting", "EHLO", ... (static) */
};

struct smtpc;

struct smtpc *smtpc_new(const struct smtpc_params *p);
/* Free; the transaction in progress (if any) is left as it is (its results are partial). */
void smtpc_free(struct smtpc *s);

/* Feed the server's bytes; returns how many were consumed. Input is consumed only while
 * replies are awaited: it stops when the phase leaves WAIT. */
size_t smtpc_input(struct smtpc *s, const char *p, size_t n);
/* Bytes to send. */
const char *smtpc_output(const struct smtpc *s, size_t *len);
void smtpc_output_sent(struct smtpc *s, size_t n);

enum smtpc_phase smtpc_phase(const struct smtpc *s);
/* How long to wait for the awaited reply (0 when none is awaited). */
uint64_t smtpc_timeout_ms(const struct smtpc *s);

/* The TLS handshake after STARTTLS succeeded (and satisfied the policy). */
void smtpc_tls_done(struct smtpc *s);
/* In READY: start transaction t (the caller keeps it alive until it is done). It may end
 * at once, without a command sent (SMTPUTF8 or SIZE refused by what the server offers). */
void smtpc_begin(struct smtpc *s, struct smtpc_txn *t);
/* In CONTENT: take up to n bytes of message content (at most SMTPC_CHUNK are taken, and
 * fewer while earlier output waits); returns how many were taken. */
size_t smtpc_content(struct smtpc *s, const char *p, size_t n);
/* In CONTENT: the whole message was given: send the final dot. */
void smtpc_content_end(struct smtpc *s);
/* In READY: end the session politely. */
void smtpc_quit(struct smtpc *s);
/* The connection failed (lost, timed out, TLS failed): the session fails with status and
 * diagnostic "x-tern; why", and recipients without an outcome get them as TEMP. */
void smtpc_abort(struct smtpc *s, const char *status, const char *why);

/* The transaction that ended since the last call (its results are filled in), or NULL. */
struct smtpc_txn *smtpc_take_done(struct smtpc *s);
const struct smtpc_error *smtpc_error(const struct smtpc *s);
const struct smtpc_ext *smtpc_ext(const struct smtpc *s);
bool smtpc_tls_active(const struct smtpc *s);
bool smtpc_in_txn(const struct smtpc *s);
/* What is being awaited or done ("greeting", "MAIL", "end of data", ...), for logs. */
const char *smtpc_stage(const struct smtpc *s);
/* Transactions completed on this session. */
unsigned smtpc_txn_count(const struct smtpc *s);

/* ---- pure helpers (exported for tests) ---- */

/* The enhanced status code at the start of text (RFC 3463) whose class matches code;
 * copies it into out and returns its length, or 0. */
size_t smtpc_parse_enhanced(int code, const char *text, size_t len, char *out, size_t cap);
/* Whether an address or string needs SMTPUTF8 (any byte above 0x7f). */
bool smtpc_needs_utf8(const char *s);

#endif
