/*
 * dsn: delivery status notifications as RFC 3464 multipart/report messages (report-type
 * delivery-status), for failures ("failed"), delay warnings ("delayed") and success
 * ("delivered", "relayed", "expanded"), per RFC 3461 §6 and RFC 3464 §2. Pure: the caller
 * supplies times, ids and the original message; the result is a complete RFC 5322 message
 * with CRLF line endings, ready to queue with the null reverse-path.
 *
 * The third part returns the original: message/rfc822 with the whole message when RET=FULL
 * (or RET unspecified for a failure) and it fits in return_limit, otherwise
 * text/rfc822-headers with the header section only (RET=HDRS, delay and success reports,
 * or a message too large to return whole).
 */
#ifndef TERN_DSN_H
#define TERN_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "lib/buf.h"
#include "mail/envelope.h"

enum dsn_kind { DSN_FAILURE, DSN_DELAY, DSN_SUCCESS };

struct dsn_rcpt {
    const char *addr;        /* the recipient the report is about (Final-Recipient rfc822;) */
    const char *orcpt;       /* ORCPT as given ("rfc822;xtext"), or NULL */
    const char *action;      /* "failed", "delayed", "delivered", "relayed", "expanded" */
    const char *status;      /* enhanced status "5.1.1" */
    const char *remote_mta;  /* next hop host name, or NULL */
    const char *diagnostic;  /* "smtp; 550 5.1.1 ..." or "x-tern; ...", or NULL */
    time_t last_attempt;     /* 0: omit */
    time_t will_retry_until; /* delayed only; 0: omit */
};

struct dsn_report {
    enum dsn_kind kind;
    const char *reporting_mta; /* our hostname */
    const char *from;          /* "MAILER-DAEMON@hostname" */
    const char *to;            /* the original envelope sender */
    const char *envid;         /* ENVID as given (xtext), or NULL */
    const char *orig_qid;      /* the original message's queue id (X-Postfix-Queue-ID style) */
    time_t arrival;            /* when the original arrived */
    time_t now;                /* Date: of the report */
    const char *message_id;    /* "<...>" for the report's Message-ID: */
    enum dsn_ret ret;          /* what the sender asked to get back */
    bool smtputf8;             /* original was SMTPUTF8: use message/global-delivery-status */
    size_t return_limit;       /* largest original returned whole (bytes) */
    const struct dsn_rcpt *rcpts;
    size_t nrcpts;
    const char *original;      /* the original message (CRLF lines), may be NULL */
    size_t original_len;
};

/* Compose the whole report into out (which bounds it). Returns 0, or -1 if out's maximum
 * is too small (out is then left with partial contents the caller discards). */
int dsn_compose(const struct dsn_report *r, struct buf *out);

/* Length of the header section of msg (up to and including the empty line), or len if
 * there is no empty line. */
size_t dsn_header_length(const char *msg, size_t len);

#endif
