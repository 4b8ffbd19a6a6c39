/*
 * remote: see remote.h. The scheduler of outbound connections.
 *
 * Objects:
 *   job   one transaction to be: a message and up to REMOTE_TXN_RCPTS of its recipients
 *         that share a destination. Holds a reference on the message.
 *   dest  a destination (route key): a FIFO of jobs and the connections serving it.
 *   conn  one outbound connection: resolve the route (mx.c), try its addresses in order,
 *         run the SMTP client (smtpc.c) over io.c, carry jobs one after another, then stay
 *         idle for REMOTE_IDLE_MS waiting for more mail to the same destination.
 *
 * Lifecycle of a conn: RESOLVING -> CONNECTING -> SESSION (<-> IDLE) -> freed. A failure of
 * a host before its session was ready (refused, timeout, a 4xx greeting, TLS trouble)
 * moves to the next address with the same job; once the addresses run out the job gets
 * the last failure. A failure during a transaction ends that transaction (its recipients
 * without an outcome are deferred) and the connection.
 *
 * Limits: R.nconns <= max_outbound, dest->nconns <= max_outbound_per_destination. A dest
 * that wants a connection while the global limit is reached waits in R.waiting; idle
 * connections give way to it.
 *
 * Design choices, and why:
 *   - The SMTP client is a pure state machine (smtpc.c) polled by phase, like the server
 *     session: every protocol rule is unit-tested without sockets, and this file only
 *     moves bytes, timers and outcomes.
 *   - Connections are resolved per connection, not cached per destination: libunbound
 *     caches answers already, and a fresh lookup per connection follows TTLs for free.
 *   - A destination whose every address failed before a session was ready (or whose
 *     resolution failed) is "dead" for the jobs queued at that moment: they get the same
 *     outcome at once instead of one connect timeout each (Postfix marks such sites
 *     dead too); the queue's backoff schedules the next try.
 *   - Idle connections are kept REMOTE_IDLE_MS (Postfix's connection cache default) and
 *     reused for the next job of their destination; they are closed first when another
 *     destination needs room under max_outbound.
 *   - A 452 to RCPT after other recipients of the transaction went through is the server's
 *     recipient limit (RFC 5321 §4.5.3.1.10): those recipients go back to the head of the
 *     destination's queue, so the same connection sends them next, instead of waiting a
 *     retry step. Only when the transaction delivered something, so it always ends.
 *   - Shutdown abandons: the loop is already stopped when remote_shutdown() runs, and a
 *     recipient without a report stays pending in the queue's records (it may be sent
 *     twice, never lost). No TEMP is reported, so the restart retries at once.
 *   - Pumping destinations and reports for routing failures run from zero-delay timers:
 *     nothing is freed under a caller, and remote_deliver() never calls back the queue.
 *   - Message content is read from the spool on the loop thread, SMTPC_CHUNK bytes at a
 *     time and only while the socket's output is below REMOTE_CONTENT_HIGH: a page-cache
 *     read of a local file, bounded, rather than a worker round trip per chunk.
 *
 * Re-entrancy: a function that may free its conn says so and returns true then; callers
 * stop touching the conn.
 */
#include "deliver/remote.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "deliver/mx.h"
#include "deliver/route.h"
#include "deliver/smtpc.h"
#include "lib/io.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "lib/netaddr.h"
#include "lib/tls.h"

#define REMOTE_IDLE_MS 2000        /* keep an idle connection this long (Postfix: 2s) */
#define REMOTE_CONN_TXNS_MAX 100   /* transactions per connection before a fresh one */
#define REMOTE_CONTENT_HIGH (256 * 1024) /* content buffered in io before waiting */
#define REMOTE_DEST_BUCKETS 1024

struct dest;
struct conn;

struct job {
    struct job *next;
    struct dest *dest;
    struct qmsg *m;
    uint32_t *idx;
    size_t n;
    struct smtpc_rcpt *rc;
    struct smtpc_txn txn;
    /* set for jobs that fail before any connection (routing) */
    enum delivery_kind pre_kind;
    const char *pre_status;
    char *pre_diag;
};

struct dest {
    struct dest *hnext; /* hash chain */
    struct dest *wnext; /* R.waiting */
    struct dest *knext; /* R.kicked */
    bool waiting, kicked;
    struct route route;
    struct job *head, *tail;
    size_t njobs;
    struct conn *conns;
    unsigned nconns;
};

enum cstate { C_RESOLVING, C_CONNECTING, C_SESSION, C_IDLE };

struct conn {
    struct conn *next; /* in dest->conns */
    struct dest *dest;
    struct conf *conf;
    enum cstate st;
    struct mx_query *mxq;
    struct mx_result *mx;
    size_t ai; /* the address being tried */
    bool plaintext; /* STARTTLS failed under `may`: this address again, without it */
    bool tls_started; /* the handshake of this session began */
    bool announced;   /* the session was logged */
    struct io *io;
    struct smtpc *sc;
    struct timer *timer; /* connect timeout or idle time */
    struct job *job;
    char host[ROUTE_NAME_MAX];
    char relay[ROUTE_NAME_MAX + NETADDR_IP_MAX + 16];
    char tls[32];
    struct smtpc_error last; /* the last host failure */
    bool have_last;
    bool dead; /* resolution failed, or every address failed before a session was ready */
    struct qbody body;
    uint64_t off;
};

static struct {
    struct conf *conf;
    struct tls_ctx *tls;
    struct dest *buckets[REMOTE_DEST_BUCKETS];
    size_t ndests;
    struct dest *waiting, *waiting_tail;
    size_t nconns, nidle, njobs;
    struct job *later; /* jobs to report from the loop (routing failures) */
    struct timer *later_timer;
    struct dest *kicked; /* destinations to pump from the loop */
    struct timer *kick_timer;
    bool stopping;
} R;

static char content_buf[SMTPC_CHUNK]; /* the loop thread's read buffer for file bodies */

static void dest_pump(struct dest *d);
static void dest_kick(struct dest *d);
static bool conn_drive(struct conn *c);
static bool conn_next_address(struct conn *c);

/* ---- destinations ---- */

static unsigned hash_key(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % REMOTE_DEST_BUCKETS;
}

static struct dest *dest_get(const struct route *r)
{
    unsigned h = hash_key(r->key);
    for (struct dest *d = R.buckets[h]; d; d = d->hnext)
        if (strcmp(d->route.key, r->key) == 0)
            return d;
    struct dest *d = xcalloc(1, sizeof *d);
    d->route = *r;
    d->hnext = R.buckets[h];
    R.buckets[h] = d;
    R.ndests++;
    return d;
}

static void waiting_remove(struct dest *d)
{
    if (!d->waiting)
        return;
    struct dest **pp = &R.waiting;
    R.waiting_tail = NULL;
    while (*pp) {
        if (*pp == d) {
            *pp = d->wnext;
            continue;
        }
        R.waiting_tail = *pp;
        pp = &(*pp)->wnext;
    }
    d->waiting = false;
    d->wnext = NULL;
}

static void waiting_add(struct dest *d)
{
    if (d->waiting)
        return;
    d->waiting = true;
    d->wnext = NULL;
    if (R.waiting_tail)
        R.waiting_tail->wnext = d;
    else
        R.waiting = d;
    R.waiting_tail = d;
}

/* Free a destination that has nothing left to do. */
static void dest_maybe_free(struct dest *d)
{
    if (d->head || d->conns)
        return;
    waiting_remove(d);
    unsigned h = hash_key(d->route.key);
    for (struct dest **pp = &R.buckets[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == d) {
            *pp = d->hnext;
            break;
        }
    R.ndests--;
    free(d);
}

static struct job *dest_pop(struct dest *d)
{
    struct job *j = d->head;
    if (j) {
        d->head = j->next;
        if (d->head == NULL)
            d->tail = NULL;
        j->next = NULL;
        d->njobs--;
        R.njobs--;
    }
    return j;
}

/* ---- jobs and reports ---- */

static struct job *job_new(struct qmsg *m, size_t cap)
{
    struct job *j = xcalloc(1, sizeof *j);
    j->m = m;
    qmsg_ref(m);
    j->idx = xcalloc(cap, sizeof *j->idx);
    j->rc = xcalloc(cap, sizeof *j->rc);
    return j;
}

static void job_free(struct job *j)
{
    smtpc_txn_clear(&j->txn);
    qmsg_unref(j->m);
    free(j->idx);
    free(j->rc);
    free(j->pre_diag);
    free(j);
}

static const char *kind_word(enum delivery_kind k)
{
    return k == DELIVERY_OK ? "sent" : k == DELIVERY_TEMP ? "deferred" : "bounced";
}

static void report_one(struct job *j, size_t i, const struct delivery_result *res,
                       const char *relay, const char *tls)
{
    const struct envelope *env = qmsg_envelope(j->m);
    const struct qrcpt *qr = qmsg_rcpt(j->m, j->idx[i]);
    struct logline l;
    log_begin(&l, res->kind == DELIVERY_PERM ? LOG_LVL_WARN : LOG_LVL_INFO, "deliver.remote");
    log_str(&l, "qid", qmsg_id(j->m));
    log_str(&l, "rcpt", qr->addr);
    log_str(&l, "relay", relay && relay[0] ? relay : "none");
    time_t now = loop_now();
    log_int(&l, "delay", env->arrival && now > env->arrival ? (long long)(now - env->arrival) : 0);
    log_str(&l, "tls", tls && tls[0] ? tls : "none");
    log_str(&l, "result", kind_word(res->kind));
    log_str(&l, "status", res->status);
    if (res->relayed)
        log_str(&l, "dsn", "relayed");
    log_str(&l, "reply", res->diagnostic);
    log_end(&l);
    queue_report(j->m, j->idx[i], res);
}

/* RFC 5321 §4.5.3.1.10: a 452 to RCPT while other recipients of the same transaction
 * went through is the server's recipient limit, not trouble with those addresses. Is
 * recipient i such a one, to be sent again in a new transaction at once? Only if the
 * transaction delivered something, so every round makes progress. */
static bool over_rcpt_limit(const struct job *j, size_t i, size_t delivered)
{
    return delivered > 0 && j->rc[i].outcome == SMTPC_TEMP && j->rc[i].rcpt_code == 452 &&
           !R.stopping;
}

/* Report every recipient of a finished transaction, then free the job. Recipients over
 * the server's limit go into a new job at the head of the destination's queue, which
 * this connection takes next. */
static void job_report_txn(struct job *j, const struct conn *c)
{
    size_t delivered = 0, over = 0;
    for (size_t i = 0; i < j->n; i++)
        delivered += j->rc[i].outcome == SMTPC_OK;
    for (size_t i = 0; i < j->n; i++)
        over += over_rcpt_limit(j, i, delivered);
    struct job *rest = NULL;
    if (over > 0) {
        rest = job_new(j->m, over);
        rest->dest = j->dest;
        struct logline l;
        log_begin(&l, LOG_LVL_INFO, "deliver.remote.rcpt_limit");
        log_str(&l, "qid", qmsg_id(j->m));
        log_str(&l, "relay", c->relay[0] ? c->relay : "none");
        log_uint(&l, "sent", delivered);
        log_uint(&l, "again", over);
        log_str(&l, "note", "452 to RCPT: the rest go in the next transaction");
        log_end(&l);
    }
    for (size_t i = 0; i < j->n; i++) {
        const struct smtpc_rcpt *rc = &j->rc[i];
        if (rest != NULL && over_rcpt_limit(j, i, delivered)) {
            rest->idx[rest->n++] = j->idx[i];
            continue;
        }
        struct delivery_result res = {
            .kind = rc->outcome == SMTPC_OK     ? DELIVERY_OK
                    : rc->outcome == SMTPC_PERM ? DELIVERY_PERM
                                                : DELIVERY_TEMP,
            .status = rc->status[0] ? rc->status : "4.0.0",
            .diagnostic = rc->diag ? rc->diag : "x-tern; no outcome",
            .remote_mta = c->host[0] ? c->host : NULL,
            .relayed = rc->relayed,
        };
        report_one(j, i, &res, c->relay, c->tls);
    }
    job_free(j);
    if (rest != NULL) {
        struct dest *d = rest->dest;
        rest->next = d->head;
        d->head = rest;
        if (d->tail == NULL)
            d->tail = rest;
        d->njobs++;
        R.njobs++;
        dest_kick(d); /* in case this connection does not take it (its last transaction) */
    }
}

/* Every recipient of the job gets the same outcome. */
static void job_report_all(struct job *j, enum delivery_kind kind, const char *status,
                           const char *diag, const struct conn *c)
{
    for (size_t i = 0; i < j->n; i++) {
        struct delivery_result res = {
            .kind = kind,
            .status = status,
            .diagnostic = diag,
            .remote_mta = c && c->host[0] ? c->host : NULL,
        };
        report_one(j, i, &res, c ? c->relay : NULL, c ? c->tls : NULL);
    }
    job_free(j);
}

static void on_later(void *arg)
{
    struct job *list = R.later;
    R.later = NULL;
    while (list) {
        struct job *j = list;
        list = j->next;
        job_report_all(j, j->pre_kind, j->pre_status, j->pre_diag, NULL);
    }
}

static void report_later(struct job *j, enum delivery_kind kind, const char *status,
                         const char *diag)
{
    j->pre_kind = kind;
    j->pre_status = status;
    j->pre_diag = xstrdup(diag);
    j->next = R.later;
    R.later = j;
    timer_arm(R.later_timer, 0);
}

/* Build the transaction of a job (when it starts on a session). */
static void job_txn(struct job *j)
{
    const struct envelope *env = qmsg_envelope(j->m);
    smtpc_txn_clear(&j->txn);
    struct smtpc_txn *t = &j->txn;
    t->sender = env->sender;
    t->size = qmsg_size(j->m);
    t->body = env->body;
    t->smtputf8 = env->smtputf8;
    t->ret = env->ret;
    t->envid = env->envid;
    t->rcpts = j->rc;
    t->nrcpts = j->n;
    for (size_t i = 0; i < j->n; i++) {
        const struct qrcpt *qr = qmsg_rcpt(j->m, j->idx[i]);
        j->rc[i].addr = qr->addr;
        j->rc[i].orcpt = qr->orcpt;
        j->rc[i].notify = qr->notify;
    }
}

/* ---- connections ---- */

static void conn_unlink(struct conn *c)
{
    struct dest *d = c->dest;
    for (struct conn **pp = &d->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    d->nconns--;
    R.nconns--;
    if (c->st == C_IDLE)
        R.nidle--;
}

static void pump_waiting(void)
{
    while (R.waiting && R.nconns < R.conf->max_outbound) {
        struct dest *d = R.waiting;
        waiting_remove(d);
        dest_pump(d); /* puts d back only when the limit is reached again */
    }
}

/* Pumping and freeing destinations happens here, from the loop, never inside a conn's
 * callbacks or remote_deliver(): no destination disappears under a caller, and no report
 * is made inside remote_deliver(). */
static void on_kick(void *arg)
{
    while (R.kicked) {
        struct dest *d = R.kicked;
        R.kicked = d->knext;
        d->knext = NULL;
        d->kicked = false;
        dest_pump(d);
        if (!d->kicked) /* pumping may kick it again (a conn freed on the way) */
            dest_maybe_free(d);
    }
    pump_waiting();
}

static void dest_kick(struct dest *d)
{
    if (d->kicked || R.stopping)
        return;
    d->kicked = true;
    d->knext = R.kicked;
    R.kicked = d;
    timer_arm(R.kick_timer, 0);
}

/* Free the connection. Its job, if it still has one, is deferred with the last failure. */
static void conn_free(struct conn *c)
{
    struct dest *d = c->dest;
    conn_unlink(c);
    mx_cancel(c->mxq);
    free(c->mx);
    smtpc_free(c->sc);
    io_free(c->io);
    timer_free(c->timer);
    struct job *j = c->job;
    c->job = NULL;
    if (j && !R.stopping) {
        enum delivery_kind kind = DELIVERY_TEMP;
        const char *status = "4.4.1", *diag = "x-tern; no answer from any host";
        if (c->have_last) {
            kind = c->last.kind == SMTPC_PERM ? DELIVERY_PERM : DELIVERY_TEMP;
            status = c->last.status;
            diag = c->last.diag;
        }
        job_report_all(j, kind, status, diag, c);
        /* The destination is unreachable (or does not exist): the jobs waiting for it would
         * meet the same fate one connect timeout after another; give them the outcome now,
         * unless another connection to it is working. The queue's backoff decides when to
         * try again. */
        bool live = false;
        for (struct conn *o = d->conns; o && !live; o = o->next)
            live = o->st == C_SESSION || o->st == C_IDLE;
        while (c->dead && !live && (j = dest_pop(d)) != NULL)
            job_report_all(j, kind, status, diag, c);
    } else if (j) {
        job_free(j);
    }
    conf_unref(c->conf);
    free(c);
    if (!R.stopping)
        dest_kick(d); /* its jobs may need a new connection; or it may be done */
}

static void set_idle(struct conn *c, bool idle)
{
    if (idle == (c->st == C_IDLE))
        return;
    if (idle) {
        c->st = C_IDLE;
        R.nidle++;
    } else {
        c->st = C_SESSION;
        R.nidle--;
    }
}

/* Flush the client's output into the connection. */
static void conn_flush(struct conn *c)
{
    size_t len;
    const char *p = smtpc_output(c->sc, &len);
    if (len > 0) {
        io_write(c->io, p, len);
        smtpc_output_sent(c->sc, len);
    }
}

/* Record why this host failed, for the job if no other host does better. */
static void note_host_failure(struct conn *c, enum smtpc_outcome kind, const char *status,
                              const char *diag)
{
    c->have_last = true;
    memset(&c->last, 0, sizeof c->last);
    c->last.failed = true;
    c->last.kind = kind;
    snprintf(c->last.status, sizeof c->last.status, "%s", status);
    snprintf(c->last.diag, sizeof c->last.diag, "%s", diag);
    struct logline l;
    log_begin(&l, LOG_LVL_INFO, "deliver.remote.host_failed");
    if (c->job)
        log_str(&l, "qid", qmsg_id(c->job->m));
    log_str(&l, "relay", c->relay);
    log_str(&l, "status", status);
    log_str(&l, "error", diag);
    log_end(&l);
}

static void end_session(struct conn *c)
{
    c->tls_started = false;
    c->announced = false;
    smtpc_free(c->sc);
    c->sc = NULL;
    io_free(c->io);
    c->io = NULL;
    c->tls[0] = '\0';
}

/* The session failed before it was ready: this host is done; try the next address. */
static bool conn_host_failed(struct conn *c, enum smtpc_outcome kind, const char *status,
                             const char *diag)
{
    note_host_failure(c, kind, status, diag);
    end_session(c);
    c->plaintext = false;
    c->ai++;
    return conn_next_address(c);
}

static void on_timer(void *arg);

static const struct io_handlers conn_handlers;

/* Connect to c->mx->addrs[c->ai] or a later one. Returns true if c was freed. */
static bool conn_next_address(struct conn *c)
{
    while (c->mx && c->ai < c->mx->naddrs) {
        const struct mx_addr *a = &c->mx->addrs[c->ai];
        char ip[NETADDR_IP_MAX];
        unsigned port;
        sockaddr_format((const struct sockaddr *)&a->sa, ip, sizeof ip, &port);
        snprintf(c->host, sizeof c->host, "%s", c->mx->hosts[a->host].name);
        snprintf(c->relay, sizeof c->relay, "%s[%s]:%u", c->host, ip, port);
        c->io = io_connect((const struct sockaddr *)&a->sa, a->len, NULL, 0, &conn_handlers, c);
        if (c->io != NULL) {
            c->st = C_CONNECTING;
            timer_arm(c->timer, c->conf->smtp_connect_timeout_ms);
            return false;
        }
        char diag[SMTPC_DIAG_MAX];
        snprintf(diag, sizeof diag, "x-tern; connect to %s: %s", c->relay, strerror(errno));
        note_host_failure(c, SMTPC_TEMP, "4.4.1", diag);
        c->plaintext = false;
        c->ai++;
    }
    c->dead = true;
    conn_free(c); /* the job gets the last failure */
    return true;
}

static void on_mx(void *arg, const struct mx_result *res)
{
    struct conn *c = arg;
    c->mxq = NULL;
    if (res->status == MX_OK) {
        c->mx = xmalloc(sizeof *c->mx);
        *c->mx = *res;
        c->ai = 0;
        conn_next_address(c);
        return;
    }
    /* Only the recipient domain's own DNS can make mail undeliverable; a configured
     * nexthop that does not resolve is our problem, so it defers. */
    bool own = c->dest->route.kind == ROUTE_MX;
    enum delivery_kind kind = DELIVERY_TEMP;
    const char *status = "4.4.3";
    char diag[SMTPC_DIAG_MAX];
    snprintf(diag, sizeof diag, "x-tern; %s", res->why);
    switch (res->status) {
    case MX_NXDOMAIN:
        if (own) {
            kind = DELIVERY_PERM;
            status = "5.1.2";
        } else {
            status = "4.4.4";
        }
        break;
    case MX_NULLMX:
        if (own) {
            kind = DELIVERY_PERM;
            status = "5.1.10";
            snprintf(diag, sizeof diag, "x-tern; 556 5.1.10 %s (RFC 7505)", res->why);
        } else {
            status = "4.4.4";
        }
        break;
    case MX_NOHOST:
        if (own) {
            kind = DELIVERY_PERM;
            status = "5.4.4";
        } else {
            status = "4.4.4";
        }
        break;
    case MX_LOOP:
        status = "4.4.6";
        break;
    default:
        break;
    }
    c->have_last = true;
    memset(&c->last, 0, sizeof c->last);
    c->last.kind = kind == DELIVERY_PERM ? SMTPC_PERM : SMTPC_TEMP;
    snprintf(c->last.status, sizeof c->last.status, "%s", status);
    snprintf(c->last.diag, sizeof c->last.diag, "%s", diag);
    c->dead = true;
    conn_free(c);
}

/* Once per session, at debug level: what the server offered. */
static void log_session(struct conn *c)
{
    if (c->announced || !log_enabled(LOG_LVL_DEBUG))
        return;
    c->announced = true;
    const struct smtpc_ext *e = smtpc_ext(c->sc);
    struct logline l;
    log_begin(&l, LOG_LVL_DEBUG, "deliver.remote.session");
    log_str(&l, "relay", c->relay);
    log_str(&l, "tls", c->tls[0] ? c->tls : "none");
    log_fmt(&l, "offers", "%s%s%s%s%s%s%s", e->esmtp ? "esmtp" : "helo",
            e->pipelining ? ",pipelining" : "", e->size ? ",size" : "",
            e->eightbitmime ? ",8bitmime" : "", e->smtputf8 ? ",smtputf8" : "",
            e->dsn ? ",dsn" : "", e->chunking ? ",chunking" : "");
    log_str(&l, "auth", c->dest->route.auth ? "yes" : "no");
    log_end(&l);
}

/* Take the next job of the destination, or go idle, or quit. Returns true if c was freed. */
static bool conn_ready(struct conn *c)
{
    struct dest *d = c->dest;
    log_session(c);
    if (c->job == NULL && !R.stopping && smtpc_txn_count(c->sc) < REMOTE_CONN_TXNS_MAX)
        c->job = dest_pop(d);
    if (c->job) {
        set_idle(c, false);
        job_txn(c->job);
        c->off = 0;
        smtpc_begin(c->sc, &c->job->txn);
        return false;
    }
    /* nothing to send: keep the connection a little while, unless others wait for room
     * or it has carried enough */
    if (R.waiting || R.stopping || smtpc_txn_count(c->sc) >= REMOTE_CONN_TXNS_MAX) {
        set_idle(c, false);
        smtpc_quit(c->sc);
        return false;
    }
    set_idle(c, true);
    io_set_timeouts(c->io, 0, SMTPC_TO_BLOCK_MS);
    timer_arm(c->timer, REMOTE_IDLE_MS);
    return false;
}

/* Give the client message content while the connection's output has room. Returns true
 * if c was freed. */
static bool conn_feed(struct conn *c)
{
    struct job *j = c->job;
    if (c->off == 0)
        qmsg_body(j->m, &c->body);
    while (io_output_len(c->io) < REMOTE_CONTENT_HIGH) {
        size_t left = c->body.len - (size_t)c->off;
        if (left == 0) {
            smtpc_content_end(c->sc);
            conn_flush(c);
            return false;
        }
        size_t want = left < SMTPC_CHUNK ? left : SMTPC_CHUNK;
        const char *p;
        if (c->body.mem) {
            p = c->body.mem + c->off;
        } else {
            /* a page-cache read of at most SMTPC_CHUNK bytes; the spool is local */
            if (qbody_read(&c->body, content_buf, want, c->off) != 0) {
                struct logline l;
                log_begin(&l, LOG_LVL_ERROR, "deliver.remote.read_failed");
                log_str(&l, "qid", qmsg_id(j->m));
                log_str(&l, "error", strerror(errno));
                log_end(&l);
                /* our fault: defer; the half-sent message is abandoned by closing */
                smtpc_abort(c->sc, "4.3.0", "cannot read the queued message");
                return conn_drive(c);
            }
            p = content_buf;
        }
        size_t n = smtpc_content(c->sc, p, want);
        c->off += n;
        conn_flush(c);
        if (n == 0)
            break;
    }
    return false;
}

/* Session failure handling once the client says CLOSED. Returns true (c is freed or moved
 * on to another address). */
static bool conn_closed(struct conn *c)
{
    const struct smtpc_error *e = smtpc_error(c->sc);
    if (e->failed && e->next_host && c->job) {
        struct smtpc_error copy = *e;
        conn_flush(c); /* a QUIT, if any, is polite but not waited for */
        return conn_host_failed(c, copy.kind, copy.status, copy.diag);
    }
    conn_free(c); /* a job still here (it never is) would be deferred */
    return true;
}

/* Run the client until it waits for the network. Returns true if c was freed. */
static bool conn_drive(struct conn *c)
{
    for (;;) {
        /* replies are awaited in WAIT, and also during CONTENT (pipelined BDAT chunks);
         * smtpc_input() takes nothing when none is awaited */
        enum smtpc_phase ph = smtpc_phase(c->sc);
        size_t used = 0;
        if ((ph == SMTPC_WAIT || ph == SMTPC_CONTENT) && io_input_len(c->io) > 0) {
            struct iovec v[16];
            int nv = io_input_peek(c->io, v, 16);
            bool stalled = false;
            for (int i = 0; i < nv && !stalled; i++) {
                size_t k = smtpc_input(c->sc, v[i].iov_base, v[i].iov_len);
                used += k;
                stalled = k < v[i].iov_len;
            }
            io_input_drain(c->io, used);
        }
        conn_flush(c);
        struct smtpc_txn *t = smtpc_take_done(c->sc);
        if (t != NULL && c->job != NULL && t == &c->job->txn) {
            struct job *j = c->job;
            c->job = NULL;
            job_report_txn(j, c);
        }
        switch (smtpc_phase(c->sc)) {
        case SMTPC_WAIT: {
            uint64_t to = smtpc_timeout_ms(c->sc);
            io_set_timeouts(c->io, (unsigned)to, SMTPC_TO_BLOCK_MS);
            if (used > 0 && io_input_len(c->io) > 0)
                continue; /* more input than one peek covered */
            return false;
        }
        case SMTPC_TLS: {
            if (c->tls_started)
                return false; /* the handshake is running */
            /* RFC 3207 §4.2 / CVE-2011-0411: nothing read before the handshake may be
             * taken as if it came over TLS */
            c->tls_started = true;
            io_input_discard(c->io);
            io_set_timeouts(c->io, SMTPC_TO_STARTTLS_MS, SMTPC_TO_STARTTLS_MS);
            const char *sni = c->dest->route.literal ? NULL : c->host;
            if (R.tls == NULL || io_start_tls(c->io, R.tls, false, sni) != 0) {
                smtpc_abort(c->sc, "4.7.5", "cannot start TLS");
                continue;
            }
            return false;
        }
        case SMTPC_READY:
            if (conn_ready(c))
                return true;
            if (c->job && c->job->txn.done)
                continue; /* it ended at once (SMTPUTF8, SIZE): report, take the next */
            if (smtpc_phase(c->sc) == SMTPC_READY)
                return false; /* idle */
            continue;
        case SMTPC_CONTENT:
            io_set_timeouts(c->io, 0, SMTPC_TO_BLOCK_MS);
            if (conn_feed(c))
                return true;
            if (smtpc_phase(c->sc) == SMTPC_CONTENT)
                return false; /* wait for the output to drain */
            continue;
        case SMTPC_CLOSED:
            return conn_closed(c);
        }
    }
}

static void on_read(struct io *io, void *arg)
{
    struct conn *c = arg;
    if (c->sc == NULL || c->st == C_IDLE) {
        /* a reply nobody asked for (a 421 before closing an idle connection): leave it;
         * the close that follows ends the connection */
        return;
    }
    conn_drive(c);
}

static void on_flushed(struct io *io, void *arg)
{
    struct conn *c = arg;
    if (c->sc && smtpc_phase(c->sc) == SMTPC_CONTENT)
        conn_drive(c);
}

static void tls_failed(struct conn *c, const char *detail)
{
    enum tls_policy pol = c->dest->route.tls;
    char diag[SMTPC_DIAG_MAX];
    snprintf(diag, sizeof diag, "x-tern; TLS with %s failed: %s", c->relay, detail);
    if (pol == TLS_POLICY_MAY && !c->plaintext) {
        /* opportunistic: the same address again, in plaintext */
        note_host_failure(c, SMTPC_TEMP, "4.7.5", diag);
        end_session(c);
        c->plaintext = true;
        conn_next_address(c);
        return;
    }
    conn_host_failed(c, SMTPC_TEMP, "4.7.5", diag);
}

static void on_event(struct io *io, void *arg, enum io_event ev, const char *detail)
{
    struct conn *c = arg;
    if (ev == IO_EV_CONNECTED) {
        timer_stop(c->timer);
        c->st = C_SESSION;
        enum tls_policy pol = c->dest->route.tls;
        bool auth = c->dest->route.auth && c->conf->relayhost_user && c->conf->relayhost_password;
        struct smtpc_params p = {
            .helo = c->conf->hostname,
            .starttls = pol != TLS_POLICY_NONE && R.tls != NULL && !c->plaintext,
            .require_tls = pol >= TLS_POLICY_ENCRYPT,
            .auth_user = auth ? c->conf->relayhost_user : NULL,
            .auth_pass = auth ? c->conf->relayhost_password : NULL,
        };
        c->sc = smtpc_new(&p);
        io_set_timeouts(c->io, SMTPC_TO_GREETING_MS, SMTPC_TO_BLOCK_MS);
        conn_drive(c);
        return;
    }
    if (c->st == C_CONNECTING) {
        timer_stop(c->timer);
        char diag[SMTPC_DIAG_MAX];
        snprintf(diag, sizeof diag, "x-tern; connect to %s: %s", c->relay,
                 detail && detail[0] ? detail : "failed");
        conn_host_failed(c, SMTPC_TEMP, "4.4.1", diag);
        return;
    }
    if (ev == IO_EV_TLS_DONE) {
        char ver[32], cipher[64], why[128];
        int bits = 0;
        io_tls_info(c->io, ver, sizeof ver, cipher, sizeof cipher, &bits);
        snprintf(c->tls, sizeof c->tls, "%s", ver);
        if (c->dest->route.tls == TLS_POLICY_VERIFY &&
            !io_tls_peer_verified(c->io, why, sizeof why)) {
            char diag[SMTPC_DIAG_MAX];
            snprintf(diag, sizeof diag, "x-tern; certificate of %s not verified: %s", c->relay,
                     why);
            conn_host_failed(c, SMTPC_TEMP, "4.7.5", diag);
            return;
        }
        smtpc_tls_done(c->sc);
        conn_drive(c);
        return;
    }
    if (c->st == C_IDLE) {
        /* the server closed an idle connection (or said 421 first): just let it go */
        conn_free(c);
        return;
    }
    if (ev == IO_EV_TLS_ERROR && smtpc_phase(c->sc) == SMTPC_TLS) {
        tls_failed(c, detail);
        return;
    }
    /* lost or timed out in the middle of the session */
    char why[SMTPC_DIAG_MAX];
    const char *what = ev == IO_EV_TIMEOUT ? "timeout" : ev == IO_EV_EOF ? "lost connection"
                                                                          : "connection error";
    snprintf(why, sizeof why, "%s with %s while waiting for %s%s%s", what, c->relay,
             smtpc_stage(c->sc), detail && detail[0] ? ": " : "", detail ? detail : "");
    /* read what the server said before it left: a 421 explains better than an EOF */
    if (ev == IO_EV_EOF && io_input_len(c->io) > 0 && smtpc_phase(c->sc) == SMTPC_WAIT) {
        if (conn_drive(c))
            return; /* the reply ended the session */
    }
    smtpc_abort(c->sc, "4.4.2", why);
    conn_drive(c);
}

static void on_timer(void *arg)
{
    struct conn *c = arg;
    if (c->st == C_CONNECTING) {
        char diag[SMTPC_DIAG_MAX];
        snprintf(diag, sizeof diag, "x-tern; connect to %s: timed out", c->relay);
        conn_host_failed(c, SMTPC_TEMP, "4.4.1", diag);
        return;
    }
    if (c->st == C_IDLE) {
        set_idle(c, false);
        smtpc_quit(c->sc);
        io_set_timeouts(c->io, SMTPC_TO_QUIT_MS, SMTPC_TO_QUIT_MS);
        conn_drive(c);
    }
}

static const struct io_handlers conn_handlers = {
    .on_read = on_read,
    .on_flushed = on_flushed,
    .on_event = on_event,
};

static void conn_start(struct dest *d)
{
    struct conn *c = xcalloc(1, sizeof *c);
    c->dest = d;
    c->conf = R.conf;
    conf_ref(c->conf);
    c->st = C_RESOLVING;
    c->timer = timer_new(on_timer, c);
    c->next = d->conns;
    d->conns = c;
    d->nconns++;
    R.nconns++;
    c->job = dest_pop(d);
    snprintf(c->host, sizeof c->host, "%s", "");
    c->mxq = mx_resolve(&d->route, R.conf->hostname, on_mx, c);
}

/* Close one idle connection (of any destination) to make room under max_outbound. */
static bool close_one_idle(void)
{
    for (size_t b = 0; b < REMOTE_DEST_BUCKETS && R.nidle > 0; b++)
        for (struct dest *d = R.buckets[b]; d; d = d->hnext)
            for (struct conn *c = d->conns; c; c = c->next)
                if (c->st == C_IDLE) {
                    timer_stop(c->timer);
                    set_idle(c, false);
                    smtpc_quit(c->sc);
                    io_set_timeouts(c->io, SMTPC_TO_QUIT_MS, SMTPC_TO_QUIT_MS);
                    conn_drive(c);
                    return true;
                }
    return false;
}

static void dest_pump(struct dest *d)
{
    while (d->head && !R.stopping) {
        struct conn *idle = NULL;
        for (struct conn *c = d->conns; c && !idle; c = c->next)
            if (c->st == C_IDLE)
                idle = c;
        if (idle) {
            timer_stop(idle->timer);
            set_idle(idle, false);
            conn_drive(idle); /* READY: it takes the head job */
            continue;
        }
        if (d->nconns >= R.conf->max_outbound_per_destination)
            return; /* its own connections will take the jobs as they finish */
        if (R.nconns >= R.conf->max_outbound) {
            waiting_add(d);
            /* an idle connection elsewhere gives way; the room appears when it closes */
            close_one_idle();
            return;
        }
        conn_start(d);
    }
}

/* ---- public ---- */

void remote_init(struct conf *c)
{
    memset(&R, 0, sizeof R);
    R.conf = c;
    conf_ref(c);
    R.later_timer = timer_new(on_later, NULL);
    R.kick_timer = timer_new(on_kick, NULL);
    char err[256];
    R.tls = tls_client_ctx_new(c->smtp_tls_ca_file, err, sizeof err);
    if (R.tls == NULL) {
        struct logline l;
        log_begin(&l, LOG_LVL_WARN, "deliver.remote.tls_unavailable");
        log_str(&l, "error", err);
        log_str(&l, "note", "outbound STARTTLS is off; encrypt/verify destinations defer");
        log_end(&l);
    }
}

void remote_set_conf(struct conf *c)
{
    if (c->smtp_tls_ca_file != NULL || R.conf->smtp_tls_ca_file != NULL) {
        /* read again even under the same name: the file may have been replaced. Sessions
         * under way keep the store they started with (each holds its own reference). */
        char err[256];
        struct tls_ctx *fresh = tls_client_ctx_new(c->smtp_tls_ca_file, err, sizeof err);
        if (fresh != NULL) {
            if (R.tls != NULL)
                tls_ctx_unref(R.tls);
            R.tls = fresh;
        } else {
            struct logline l;
            log_begin(&l, LOG_LVL_ERROR, "reload.failed");
            log_str(&l, "key", "smtp_tls_ca_file");
            log_str(&l, "error", err);
            log_str(&l, "note", "keeping the outbound trust store in use");
            log_end(&l);
        }
    }
    conf_ref(c);
    conf_unref(R.conf);
    R.conf = c;
    timer_arm(R.kick_timer, 0); /* max_outbound may have grown: pump_waiting() */
}

static bool domain_of(const char *addr, char *out, size_t cap)
{
    const char *at = strrchr(addr, '@');
    if (at == NULL || at[1] == '\0' || strlen(at + 1) >= cap)
        return false;
    snprintf(out, cap, "%s", at + 1);
    return true;
}

/* remote_deliver() before remote_init(): a wiring mistake; defer rather than lose mail. */
static void not_initialised(struct qmsg *m, const uint32_t *rcpts, size_t n)
{
    static bool logged;
    if (!logged) {
        log_printf(LOG_LVL_ERROR, "event=deliver.remote.not_initialised "
                                  "note=\"remote_init() was not called; deferring\"");
        logged = true;
    }
    if (R.later_timer == NULL)
        R.later_timer = timer_new(on_later, NULL);
    for (size_t i = 0; i < n; i++) {
        struct job *j = job_new(m, 1);
        j->idx[j->n++] = rcpts[i];
        report_later(j, DELIVERY_TEMP, "4.3.0", "x-tern; outbound delivery is not initialised");
    }
}

void remote_deliver(struct qmsg *m, const uint32_t *rcpts, size_t n)
{
    if (R.stopping || n == 0)
        return;
    if (R.conf == NULL) {
        not_initialised(m, rcpts, n);
        return;
    }
    /* jobs being filled in this call, one per destination (and per 100 recipients) */
    struct open_job {
        struct dest *d;
        struct job *j;
    } *open = xcalloc(n, sizeof *open);
    size_t nopen = 0;
    for (size_t i = 0; i < n; i++) {
        const struct qrcpt *qr = qmsg_rcpt(m, rcpts[i]);
        char domain[ROUTE_NAME_MAX + 2], err[256];
        struct route rt;
        if (!domain_of(qr->addr, domain, sizeof domain)) {
            struct job *j = job_new(m, 1);
            j->idx[j->n++] = rcpts[i];
            report_later(j, DELIVERY_PERM, "5.1.3", "x-tern; recipient address has no domain");
            continue;
        }
        if (!route_for_domain(R.conf, domain, &rt, err, sizeof err)) {
            struct job *j = job_new(m, 1);
            j->idx[j->n++] = rcpts[i];
            char diag[SMTPC_DIAG_MAX];
            snprintf(diag, sizeof diag, "x-tern; cannot route %s: %.200s", domain, err);
            if (rt.kind == ROUTE_MX)
                report_later(j, DELIVERY_PERM, "5.1.2", diag); /* the domain is malformed */
            else
                report_later(j, DELIVERY_TEMP, "4.3.5", diag); /* our configuration */
            continue;
        }
        struct dest *d = dest_get(&rt);
        struct open_job *o = NULL;
        for (size_t k = 0; k < nopen && !o; k++)
            if (open[k].d == d && open[k].j->n < REMOTE_TXN_RCPTS)
                o = &open[k];
        if (o == NULL) {
            o = &open[nopen++];
            o->d = d;
            o->j = job_new(m, n - i < REMOTE_TXN_RCPTS ? n - i : REMOTE_TXN_RCPTS);
            o->j->dest = d;
        }
        o->j->idx[o->j->n++] = rcpts[i];
    }
    for (size_t k = 0; k < nopen; k++) {
        struct dest *d = open[k].d;
        struct job *j = open[k].j;
        if (d->tail)
            d->tail->next = j;
        else
            d->head = j;
        d->tail = j;
        d->njobs++;
        R.njobs++;
        dest_kick(d); /* connections start from the loop, after this call */
    }
    free(open);
}

void remote_shutdown(void)
{
    if (R.conf == NULL)
        return;
    R.stopping = true;
    for (size_t b = 0; b < REMOTE_DEST_BUCKETS; b++) {
        while (R.buckets[b]) {
            struct dest *d = R.buckets[b];
            while (d->conns)
                conn_free(d->conns);
            struct job *j;
            while ((j = dest_pop(d)) != NULL)
                job_free(j);
            R.buckets[b] = d->hnext;
            free(d);
        }
    }
    while (R.later) {
        struct job *j = R.later;
        R.later = j->next;
        job_free(j);
    }
    timer_free(R.later_timer);
    timer_free(R.kick_timer);
    tls_ctx_unref(R.tls);
    conf_unref(R.conf);
    memset(&R, 0, sizeof R);
}

void remote_get_stats(struct remote_stats *s)
{
    s->connections = R.nconns;
    s->idle = R.nidle;
    s->jobs_waiting = R.njobs;
    s->destinations = R.ndests;
}
