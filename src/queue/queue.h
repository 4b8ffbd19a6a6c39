/*
 * queue: the durable queue. Owns the spool folder, the commit thread (group commit), the
 * in-memory index of live messages and each recipient's status, and the retry schedule.
 *
 * Promise: queue_draft_commit() calls done(arg, 0) only after the message and its envelope
 * are on stable storage (written, fsync'ed; a new file's directory fsync'ed). Messages that
 * arrive together share fsyncs. Recipient status changes are recorded crash-safely; after a
 * crash every message whose commit completed is found again, and a delivery that happened
 * just before the crash may be repeated, never lost.
 *
 * Threads: every function here is for the loop thread, except that the bytes a struct
 * qbody points to (memory or a file range) may be read from worker threads while the
 * caller holds a reference on the message.
 *
 * Hooks connect the queue to delivery without the queue knowing about it:
 *   dispatch: recipients are due; the queue marks them in flight until queue_report()
 *             (or queue_expand()), and m stays valid until then; whoever reads the
 *             content meanwhile takes a reference (qmsg_ref) for as long as it reads.
 *   notify:   a DSN is due (failure, delay warning, success); the hook composes and
 *             commits it, then calls queue_dsn_done(), which records that it was sent.
 */
#ifndef TERN_QUEUE_H
#define TERN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "mail/dsn.h"
#include "mail/envelope.h"

#define QID_MAX 24 /* bytes including the NUL */
/* Recipients of one message, counting those added by queue_expand(). */
#define QUEUE_RCPTS_MAX 10000

struct qmsg;
struct qdraft;

enum qrcpt_state {
    QR_PENDING,   /* not yet tried, or due again */
    QR_DEFERRED,  /* last attempt failed temporarily; next_attempt says when */
    QR_DELIVERED, /* final */
    QR_FAILED,    /* final: permanent failure or expired */
    QR_EXPANDED,  /* final: an alias, replaced by the recipients that follow it */
    QR_DELETED,   /* final: removed by the operator */
};

struct qrcpt {
    const char *addr;
    const char *orcpt; /* or NULL */
    unsigned notify;   /* DSN_NOTIFY_* */
    enum qrcpt_state state;
    uint32_t parent;   /* index of the alias this came from, or QRCPT_NO_PARENT */
    uint32_t attempts;
    time_t first_attempt; /* 0 if never tried */
    time_t next_attempt;  /* for QR_DEFERRED */
    const char *status;   /* last enhanced status, "4.4.1"; or NULL */
    const char *last_reply; /* last diagnostic text; or NULL */
    const char *remote_mta; /* or NULL */
    bool in_flight;
    bool delay_warned;
    bool dsn_sent;        /* the failure/success DSN for this recipient went out (or none
                           * is owed: an alias expanded to a single address passes the
                           * request on, RFC 3461 section 6.2.7) */
    bool relayed;         /* delivered to a next hop without DSN support: the success DSN
                           * says "relayed", not "delivered" */
};
#define QRCPT_NO_PARENT UINT32_MAX

struct queue_hooks {
    void (*dispatch)(void *arg, struct qmsg *m, const uint32_t *rcpts, size_t n);
    void (*notify)(void *arg, struct qmsg *m, enum dsn_kind kind, const uint32_t *rcpts,
                   size_t n);
    void *arg;
};

struct queue_params {
    const char *spool_dir; /* created if missing; a relative path is taken from the
                            * current folder at queue_open() (only then) */
    const uint64_t *retry_ms;
    size_t nretry;
    uint64_t queue_lifetime_ms;
    uint64_t delay_warning_ms; /* 0: never */
    uint64_t min_free_space;   /* bytes; below this, queue_space_ok() is false */
    uint64_t body_cache_max;   /* bytes of message content kept in memory for delivery */
    uint64_t message_size_limit; /* bounds maildrop files (2x this + 64 KiB); 0: 50 MiB */
    uint64_t segment_max;      /* spool segment size before a new one; 0: 64 MiB */
    struct queue_hooks hooks;
};

/* Recover the spool (finish or discard what a crash left), start the commit thread, and
 * schedule every unfinished recipient. -1 with err if the spool cannot be used. */
int queue_open(const struct queue_params *p, char *err, size_t errlen);
/* Change the schedule and limits (configuration reload). */
void queue_set_params(const struct queue_params *p);
/* Finish pending commits and status writes, stop the thread, release everything. */
void queue_close(void);

/* ---- receiving ---- */

bool queue_space_ok(void);
struct qdraft *queue_draft_new(void);
const char *queue_draft_id(const struct qdraft *d);
/* Append content. Returns false if it cannot be kept (e.g. a spill file write failed);
 * the draft must then be aborted. */
bool queue_draft_write(struct qdraft *d, const void *p, size_t n);
size_t queue_draft_size(const struct qdraft *d);
void queue_draft_abort(struct qdraft *d);
/* Take env (a heap envelope, e.g. from envelope_move(); the queue frees it) and the draft.
 * done(arg, 0) once durable (and the message is then dispatched at once); done(arg, -1)
 * if it could not be stored (nothing is kept). done always runs later from the loop,
 * never inside this call. */
void queue_draft_commit(struct qdraft *d, struct envelope *env,
                        void (*done)(void *arg, int err), void *arg);

/* ---- messages ---- */

const char *qmsg_id(const struct qmsg *m);
const struct envelope *qmsg_envelope(const struct qmsg *m);
size_t qmsg_size(const struct qmsg *m);
bool qmsg_held(const struct qmsg *m);
size_t qmsg_nrcpts(const struct qmsg *m);
const struct qrcpt *qmsg_rcpt(const struct qmsg *m, uint32_t i);
void qmsg_ref(struct qmsg *m);
void qmsg_unref(struct qmsg *m);

/* The content: in memory (mem != NULL) or len bytes at off in fd. */
struct qbody {
    const char *mem;
    int fd;
    uint64_t off;
    size_t len;
};
void qmsg_body(struct qmsg *m, struct qbody *out);
/* Read len bytes at off of the content into buf (any thread; -1 on I/O error). */
int qbody_read(const struct qbody *b, void *buf, size_t len, uint64_t off);

/* ---- delivery results ---- */

enum delivery_kind { DELIVERY_OK, DELIVERY_TEMP, DELIVERY_PERM };

struct delivery_result {
    enum delivery_kind kind;
    const char *status;     /* enhanced status code, "2.0.0", "4.4.1", "5.1.1" */
    const char *diagnostic; /* "smtp; 550 5.1.1 ..." or "x-tern; ..." (copied) */
    const char *remote_mta; /* or NULL */
    bool relayed;           /* OK, but the next hop does not do DSN (RFC 3461 "relayed") */
};

/* One recipient's outcome. TEMP after the queue lifetime becomes a failure. */
void queue_report(struct qmsg *m, uint32_t rcpt, const struct delivery_result *r);
/* Replace recipient `parent` (an alias) by the addresses given: they are added as pending
 * recipients and dispatched (by the scheduler, as soon as the caller returns to the loop,
 * never from inside this call); parent becomes QR_EXPANDED. The new recipients carry the
 * parent's ORCPT (or "rfc822;" + the parent) and NOTIFY, less SUCCESS when n > 1 (the
 * parent then owes an "expanded" success DSN; RFC 3461 section 6.2.7). Returns the first
 * new index; QRCPT_NO_PARENT if the message would pass QUEUE_RCPTS_MAX recipients (the
 * parent then fails with 5.3.4) or parent is not a recipient waiting for an outcome. */
uint32_t queue_expand(struct qmsg *m, uint32_t parent, const char *const *addrs, size_t n);
/* The notify hook sent (or gave up on) the DSN of this kind for these recipients. */
void queue_dsn_done(struct qmsg *m, enum dsn_kind kind, const uint32_t *rcpts, size_t n);

/* ---- operator commands (ternctl) ---- */

struct queue_stats {
    size_t messages, recipients_pending, recipients_deferred, held;
    uint64_t bytes;
    uint64_t committed, delivered, failed, deferred_attempts; /* since start */
    uint64_t fsyncs, commit_batches;
};

struct qmsg *queue_find(const char *id);
void queue_foreach(void (*cb)(void *arg, struct qmsg *m), void *arg);
/* Make deferred recipients due now; id NULL for all. -1 if the id is unknown. */
int queue_flush(const char *id);
/* Remove (no DSN); id NULL for all. -1 if unknown. */
int queue_delete(const char *id);
/* Hold (no delivery attempts) or release; id NULL for all. -1 if unknown. */
int queue_hold(const char *id);
int queue_release(const char *id);
void queue_get_stats(struct queue_stats *s);

/* ---- local submission ---- */

/* Import every complete file of spool_dir/maildrop/ (written by maildrop_write(), see
 * maildrop.h) into the queue; each file is unlinked once its queued copy is durable.
 * ternd calls it at start; queue_open() also watches the folder (inotify) and calls it
 * when a file arrives. Returns the number of files taken up by this call. */
size_t queue_pickup(void);

#endif
