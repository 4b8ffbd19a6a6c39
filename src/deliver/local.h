/*
 * deliver/local: the local delivery agent. Recipients in our domains are resolved
 * (table/local), expanded through the queue (aliases, catch-all), refused (unknown: 5.1.1,
 * alias loop: 5.4.6), or written into Maildirs by deliver/maildir on a worker pool.
 *
 * Batching: local_agent_deliver() only queues Maildir jobs; local_agent_flush() hands
 * what is queued to the pool as batches, at most max_batches running at once, so that
 * jobs arriving together share one maildir_deliver_batch() call (and its new/ fsyncs).
 * While every batch slot is busy, jobs accumulate and the next batch takes them all
 * (up to LOCAL_AGENT_BATCH_MAX).
 *
 * Every recipient handed in gets exactly one outcome: queue_report() (from the loop,
 * after the Maildir write is durable), or queue_expand(). The agent holds a reference on
 * the message and on the configuration while a job exists. Loop thread only.
 */
#ifndef TERN_DELIVER_LOCAL_H
#define TERN_DELIVER_LOCAL_H

#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"
#include "lib/workers.h"
#include "queue/queue.h"

#define LOCAL_AGENT_BATCH_MAX 64 /* Maildir jobs in one batch */

struct local_agent;

/* pool: runs the Maildir writes (not owned; may be shared). max_batches: batches running
 * at once (the pool's thread count is right; 0 means 1). */
struct local_agent *local_agent_new(struct workers *pool, unsigned max_batches);
/* Deliver recipients rcpts[0..n) of m, each in one of c's domains or the bare Postmaster.
 * Must not be called from inside a queue hook (it calls queue_report/queue_expand). */
void local_agent_deliver(struct local_agent *a, struct conf *c, struct qmsg *m,
                         const uint32_t *rcpts, size_t n);
/* Submit the queued Maildir jobs. */
void local_agent_flush(struct local_agent *a);
/* Recipients handed in and not yet reported. */
size_t local_agent_pending(const struct local_agent *a);
/* Report jobs not yet submitted as temporary failures and stop taking new ones. Batches
 * still running report when they finish (run the pool's workers_free() afterwards); the
 * agent frees itself after the last one. Call before queue_close(). */
void local_agent_free(struct local_agent *a);

#endif
