/*
 * remote: outbound delivery over SMTP to the servers of domains that are not ours (the
 * scheduler of connections). dispatch hands it every due recipient whose domain is not
 * local; remote groups them by destination (route.h), runs one SMTP client (smtpc.h) per
 * connection to the hosts found by mx.h, and reports each recipient's outcome to the queue
 * with queue_report(). Bounces, delay warnings and success DSNs follow from those reports
 * (the queue and the bounce module decide them).
 *
 * Limits: max_outbound connections in all, max_outbound_per_destination per destination;
 * at most REMOTE_TXN_RCPTS recipients per transaction (more are split into several).
 *
 * All functions run on the loop thread.
 */
#ifndef TERN_REMOTE_H
#define TERN_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"

struct conf;

#define REMOTE_TXN_RCPTS 100 /* recipients per transaction (RFC 5321 §4.5.3.1.8 minimum) */

/* Start (after loop_init and dns_init): creates the TLS client context. c is referenced. */
void remote_init(struct conf *c);
/* A reloaded configuration: new deliveries route with it; running ones keep their route. */
void remote_set_conf(struct conf *c);
/* Deliver recipients rcpts[0..n) of m (indexes of qmsg_rcpt). Every one of them gets exactly
 * one queue_report() later (never from inside this call), unless remote_shutdown() runs
 * first. m is referenced for as long as it is needed. */
void remote_deliver(struct qmsg *m, const uint32_t *rcpts, size_t n);
/* Stop at once: close every connection and drop every job without a report, so that what
 * was not confirmed stays pending in the queue (a transaction whose final reply had not
 * arrived may be delivered twice, never lost). Call before queue_close(). */
void remote_shutdown(void);

/* Counters for ternctl and tests. */
struct remote_stats {
    size_t connections;  /* open or being opened */
    size_t idle;         /* of which idle, kept for reuse */
    size_t jobs_waiting; /* transactions waiting for a connection */
    size_t destinations;
};
void remote_get_stats(struct remote_stats *s);

#endif
