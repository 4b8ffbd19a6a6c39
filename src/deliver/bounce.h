/*
 * deliver/bounce: delivery status notifications for queued messages (the work behind the
 * queue's notify hook). For each request (message, kind, recipients):
 *   - recipients whose NOTIFY excludes this kind (NEVER; SUCCESS only when asked; no
 *     NOTIFY means FAILURE,DELAY) are acknowledged without a report;
 *   - a null reverse-path gets nothing back: a failure notice goes to the postmaster
 *     address instead ("a bounce that itself fails goes to postmaster"); delay and
 *     success notices are dropped; a failure of a recipient that is (or was expanded
 *     from) the postmaster address is dropped and logged, so notices cannot loop;
 *   - the report is composed (dsn_compose) on the worker pool, reading the original
 *     with qbody_read(): the whole message for a failure when RET is not HDRS and it is at
 *     most BOUNCE_RETURN_LIMIT bytes, else its first BOUNCE_HEADERS_MAX bytes for the
 *     header section;
 *   - then queued as a new message (sender <>, protocol "local"), and queue_dsn_done()
 *     is called once that commit is durable. If composing or committing fails nothing is
 *     acknowledged: the queue asks again later.
 * Loop thread only; not from inside a queue hook (it calls queue_dsn_done()).
 */
#ifndef TERN_BOUNCE_H
#define TERN_BOUNCE_H

#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"
#include "lib/workers.h"
#include "mail/dsn.h"
#include "queue/queue.h"

/* 50 KiB: what Postfix operators know (bounce_size_limit), enough for most text mail and
 * small enough that a burst of bounces does not fill the queue with copies. */
#define BOUNCE_RETURN_LIMIT (50 * 1024)
#define BOUNCE_HEADERS_MAX (64 * 1024) /* must exceed BOUNCE_RETURN_LIMIT */

struct bouncer;

/* pool: where reports are composed (not owned; may be shared). */
struct bouncer *bounce_new(struct workers *pool);
/* c: the configuration in effect (hostname, postmaster, queue lifetime); read during the
 * call only. */
void bounce_notify(struct bouncer *b, struct conf *c, struct qmsg *m, enum dsn_kind kind,
                   const uint32_t *rcpts, size_t n);
/* Reports being composed or committed. */
size_t bounce_pending(const struct bouncer *b);
/* Stop: reports still being composed are dropped when they finish (the queue asks again
 * after a restart); the bouncer frees itself after the last one. */
void bounce_free(struct bouncer *b);

#endif
