/*
 * deliver/dispatch: the queue's dispatch and notify hooks. Due recipients go to the local
 * agent (a domain of ours, or the bare "Postmaster") or to outbound delivery (remote.h);
 * DSN requests go to deliver/bounce. The hooks only note the request (holding a message
 * reference) and handle it on the next loop iteration, so that nothing calls back into
 * the queue from inside its own hooks, and so that everything that became due together
 * is batched together.
 *
 * Owns the delivery worker pool (conf delivery_workers threads, fixed at creation), the
 * local agent and the bouncer, and holds a reference on the current configuration.
 * Loop thread only; loop_init() must have been called.
 */
#ifndef TERN_DISPATCH_H
#define TERN_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"
#include "queue/queue.h"

struct dispatch;

/* Takes a reference on c. */
struct dispatch *dispatch_new(struct conf *c);
/* Use c from now on (configuration reload): takes a reference, drops the previous one.
 * Jobs already running keep the configuration they started with. */
void dispatch_set_conf(struct dispatch *d, struct conf *c);
/* Fill the dispatch and notify hooks (and their argument) for queue_params. */
void dispatch_hooks(struct dispatch *d, struct queue_hooks *out);
/* Is addr delivered locally under c: one of c's domains, or the bare "Postmaster"? */
bool dispatch_is_local(const struct conf *c, const char *addr);
/* Requests noted and not yet handed on, plus recipients the local agent has not reported. */
size_t dispatch_pending(const struct dispatch *d);
/* Shut down: recipients not yet handed on are deferred (4.3.0), running Maildir batches
 * finish and report, reports being composed are dropped. Call before queue_close(). */
void dispatch_free(struct dispatch *d);

#endif
