/*
 * received: the Received: trace header tern prepends to every accepted message
 * (RFC 5321 §4.4, the "with" protocol names of RFC 3848). Pure: the caller passes the time.
 *
 *   Received: from HELO (RDNS [IP])
 *           by HOSTNAME (tern) with ESMTPS id QID
 *           (TLS details as a comment, if any)
 *           for <RCPT>; Sun, 29 Nov 2026 12:00:00 +0000
 *
 * Lines are folded below 78 characters where possible, end in CRLF; text that came from the
 * client (HELO) is sanitised so it cannot break the header (no CR, LF, or parentheses).
 */
#ifndef TERN_RECEIVED_H
#define TERN_RECEIVED_H

#include <stddef.h>
#include <time.h>

#define RECEIVED_MAX 2048 /* with received.c's caps on each piece the header always fits */

struct received_info {
    const char *helo;        /* as given by the client, or NULL */
    const char *client_name; /* reverse DNS name, or NULL if unknown */
    const char *client_ip;   /* numeric; NULL for local submission */
    const char *by;          /* our hostname */
    const char *with;        /* SMTP, ESMTP, ESMTPA, ESMTPS, ESMTPSA, UTF8SMTP..., "local" */
    const char *tls;         /* e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384 256 bits", or NULL */
    const char *id;          /* queue id */
    const char *for_addr;    /* the recipient, only when there is exactly one; or NULL */
    time_t when;
};

/* Write the header (ending in CRLF) into dst; returns its length, or 0 if cap is too small. */
size_t received_format(const struct received_info *ri, char *dst, size_t cap);
/* RFC 5322 date-time, e.g. "Sun, 29 Nov 2026 12:00:00 +0000", in UTC. */
size_t rfc5322_date(time_t t, char *dst, size_t cap);

#endif
