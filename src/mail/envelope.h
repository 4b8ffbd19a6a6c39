/*
 * envelope: what SMTP carries outside the message (RFC 5321 §2.3.1), with the DSN
 * parameters of RFC 3461 and where the message came from. Owned by whoever holds it: the
 * session builds one per transaction and hands it to the queue at commit.
 *
 * Addresses are stored as "local@domain" without angle brackets, the local part exactly as
 * received (quoted if it was quoted); the null reverse-path is "".
 */
#ifndef TERN_ENVELOPE_H
#define TERN_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum body_type { BODY_UNSPEC, BODY_7BIT, BODY_8BITMIME, BODY_BINARYMIME };
enum dsn_ret { DSN_RET_UNSPEC, DSN_RET_FULL, DSN_RET_HDRS };

/* RFC 3461 NOTIFY bits; 0 means the client gave no NOTIFY. */
#define DSN_NOTIFY_NEVER 1u
#define DSN_NOTIFY_SUCCESS 2u
#define DSN_NOTIFY_FAILURE 4u
#define DSN_NOTIFY_DELAY 8u

struct env_rcpt {
    char *addr;
    char *orcpt;     /* "rfc822;xtext-value" exactly as given, or NULL */
    unsigned notify; /* DSN_NOTIFY_* bits */
};

struct envelope {
    char *sender; /* "" for <> */
    enum body_type body;
    bool smtputf8;
    enum dsn_ret ret;
    char *envid;           /* xtext as given, or NULL */
    uint64_t declared_size; /* SIZE= or 0 */
    char *auth_param;      /* MAIL AUTH= value (xtext) or NULL */
    struct env_rcpt *rcpts;
    size_t nrcpts, rcpts_cap;
    /* origin: for logs, Received:, bounces and ternctl */
    char *client_ip;
    char *client_name; /* reverse DNS name or NULL */
    char *helo;
    char *auth_user; /* authenticated login or NULL */
    char *protocol;  /* "ESMTPSA" and the like; "local" for tern-sendmail */
    time_t arrival;
};

void envelope_init(struct envelope *e);
/* Free everything the envelope holds and reset it to empty. */
void envelope_clear(struct envelope *e);
void envelope_add_rcpt(struct envelope *e, const char *addr, const char *orcpt, unsigned notify);
/* Deep copy into dst (dst is overwritten, not freed). */
void envelope_copy(struct envelope *dst, const struct envelope *src);
/* Move src into a new heap envelope; src is left empty. */
struct envelope *envelope_move(struct envelope *src);
void envelope_free(struct envelope *e);
/* Replace *field with a copy of value (NULL allowed). */
void envelope_set(char **field, const char *value);

#endif
