/*
 * session: one inbound SMTP session as an explicit state machine (RFC 5321 §4.1, §4.3.2).
 *
 * It turns input bytes into replies and events and holds no socket, clock or file: the
 * host (smtpd/server.c, or a unit test) feeds it bytes with session_input(), sends what
 * session_output() holds, and answers its calls through struct session_host. A host call
 * either answers at once (HOST_DONE, reply filled in) or later (HOST_PENDING, then
 * session_resume() with the reply); while a call is pending the session consumes no input.
 *
 * Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
 * (RFC 6531), CHUNKING (RFC 3030), DSN (RFC 3461), ENHANCEDSTATUSCODES (RFC 2034, 3463),
 * STARTTLS (RFC 3207), AUTH PLAIN/LOGIN (RFC 4954, 4616).
 *
 * Input rules: only CRLF ends a command line; a bare CR or LF in a command is refused with
 * 500 5.5.2. Only CRLF.CRLF ends DATA: a bare CR or LF anywhere in DATA makes the whole
 * message refused (550 5.6.0) after its end, so no second message can be carved out of
 * one DATA (the SMTP smuggling family). Every buffer is bounded (see docs/limits.md).
 */
#ifndef TERN_SESSION_H
#define TERN_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/address.h"
#include "mail/envelope.h"
#include "mail/esmtp.h"
#include "mail/reply.h"

#define SMTP_LINE_MAX 512      /* a command line, CRLF included (RFC 5321 §4.5.3.1.4) */
#define SMTP_AUTH_LINE_MAX 12288 /* an AUTH line (RFC 4954 §4) */
#define SESSION_OUT_HIGH (16 * 1024) /* stop reading input while more replies wait */
#define SESSION_OUT_MAX (256 * 1024)

enum session_state {
    SS_INIT,       /* greeted; needs EHLO/HELO */
    SS_READY,      /* no transaction */
    SS_MAIL,       /* MAIL accepted, no recipient yet */
    SS_RCPT,       /* at least one recipient */
    SS_DATA,       /* reading DATA content */
    SS_BDAT,       /* a BDAT transaction, between chunks */
    SS_BDAT_CHUNK, /* reading a chunk's octets */
    SS_AUTH,       /* an AUTH exchange awaits the client's next line */
    SS_CLOSED,     /* nothing more is read; output may still wait to be sent */
};

enum host_rc { HOST_DONE, HOST_PENDING };

struct session_params {
    const char *hostname;
    uint64_t size_limit;
    unsigned max_recipients;
    unsigned max_errors;
    unsigned max_received;
    bool starttls;     /* STARTTLS can be offered (a certificate is configured) */
    bool auth;         /* AUTH can be offered on this listener (once the rules below allow) */
    bool auth_plain_ok; /* AUTH may be used without TLS (loopback development switch) */
    bool require_auth; /* MAIL needs AUTH first (submission roles) */
};

struct session;

/* The host's side. ctx is the host's own pointer. Each call may answer at once (fill *r,
 * return HOST_DONE) or later (return HOST_PENDING and call session_resume()). */
struct session_host {
    /* MAIL FROM accepted syntactically: policy (sender identity, free space). */
    enum host_rc (*mail)(void *ctx, const struct mailaddr *from, const struct mail_params *p,
                         struct reply *r);
    /* RCPT TO accepted syntactically: relay policy and local recipient check. */
    enum host_rc (*rcpt)(void *ctx, const struct mailaddr *to, const struct rcpt_params *p,
                         struct reply *r);
    /* A message begins (DATA, or the first BDAT): open a queue draft. */
    enum host_rc (*data_begin)(void *ctx, const struct envelope *env, struct reply *r);
    /* Message content (dot-unstuffed for DATA, raw for BDAT), in order. */
    void (*data_write)(void *ctx, const char *p, size_t n);
    /* The whole message arrived intact: commit it with this envelope (host takes it). */
    enum host_rc (*data_end)(void *ctx, struct envelope *env, struct reply *r);
    /* The message is refused or the session ends: drop the draft. */
    void (*data_abort)(void *ctx);
    /* Check credentials (secrets are wiped by the session after the call returns). */
    enum host_rc (*auth)(void *ctx, const char *user, const char *password, struct reply *r);
    /* STARTTLS was accepted: after the 220 is sent, start the handshake. */
    void (*starttls)(void *ctx);
};

struct session *session_new(const struct session_params *par, const struct session_host *host,
                            void *ctx, const char *id);
/* Free; an unfinished message is aborted through data_abort. */
void session_free(struct session *s);

void session_greet(struct session *s);
/* Send r and close (pregreet, limits, shutdown, too many AUTH failures). */
void session_close_with(struct session *s, const struct reply *r);

/* Feed input; returns how many bytes were consumed (fewer than n while a host call is
 * pending, once the session is closed, or while output waits above SESSION_OUT_HIGH). */
size_t session_input(struct session *s, const char *p, size_t n);
/* Complete the pending host call with its reply. */
void session_resume(struct session *s, const struct reply *r);

/* The TLS handshake after STARTTLS finished: the session starts over (RFC 3207 §4.2). */
void session_tls_started(struct session *s);
void session_set_tls(struct session *s, bool active); /* implicit TLS */
/* The host accepted the credentials of user (call before resuming with 235). */
void session_set_auth_user(struct session *s, const char *user);
/* No input in time: 421 and close. */
void session_timeout(struct session *s);
/* The daemon stops: 421 now if idle, else after the current transaction. */
void session_shutdown(struct session *s);

/* Replies waiting to be sent. */
const char *session_output(const struct session *s, size_t *len);
void session_output_sent(struct session *s, size_t n);

enum session_state session_state(const struct session *s);
bool session_pending(const struct session *s);
bool session_wants_close(const struct session *s);   /* send the output, then close */
bool session_wants_tls(const struct session *s);     /* send the 220, then call starttls */
bool session_in_transaction(const struct session *s);
bool session_reading_data(const struct session *s);  /* DATA or BDAT content */
const char *session_helo(const struct session *s);
bool session_esmtp(const struct session *s);
bool session_tls(const struct session *s);
const char *session_auth_user(const struct session *s);
/* The "with" protocol name for Received: (RFC 3848): SMTP, ESMTP, ESMTPS, ESMTPSA, ... */
const char *session_protocol(const struct session *s);
const char *session_id(const struct session *s);
unsigned session_errors(const struct session *s);

#endif
