/*
 * deliver/bounce: see bounce.h. RFC 3461 §6 (when and to whom a DSN goes), RFC 5321 §6.1
 * (notices to the null reverse-path are not sent), RFC 3464 via mail/dsn.
 *
 * A request becomes a job: everything the report needs is copied out of the queue's
 * records on the loop thread (the worker must not touch them), the message stays
 * referenced so its content can be read on the worker, and the job is listed as active
 * until the commit's callback, so that a repeated request for the same recipients does
 * not produce a second report meanwhile.
 */
#include "deliver/bounce.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "lib/strutil.h"

_Static_assert(BOUNCE_HEADERS_MAX > BOUNCE_RETURN_LIMIT,
               "a prefix read for the headers must never look like a whole message");

#define REPORT_BASE_MAX (16 * 1024) /* text, per-message fields, MIME scaffolding */
#define REPORT_RCPT_MAX (16 * 1024) /* one recipient's text line and fields */

struct bjob {
    struct bjob *next; /* on the active list */
    struct bouncer *b;
    struct qmsg *m; /* referenced */
    enum dsn_kind kind;
    uint32_t *rcpts;
    size_t n;
    /* the report: every pointer in rep and dr is owned here */
    struct dsn_report rep;
    struct dsn_rcpt *dr;
    char *to;
    bool to_postmaster;
    struct qbody body;
    size_t size;
    /* results from the worker */
    char *content;
    size_t len;
    bool eightbit;
    bool read_failed;
    int rc;
    char dsn_qid[QID_MAX];
};

struct bouncer {
    struct workers *pool;
    struct bjob *active;
    size_t nactive;
    unsigned long counter; /* Message-ID uniqueness */
    bool closing;
};

static const char *const kind_names[] = {"failure", "delay", "success"};

struct bouncer *bounce_new(struct workers *pool)
{
    struct bouncer *b = xcalloc(1, sizeof *b);
    b->pool = pool;
    return b;
}

size_t bounce_pending(const struct bouncer *b)
{
    return b->nactive;
}

/* RFC 3461 §4.1: no NOTIFY means FAILURE,DELAY; NEVER means nothing. */
static bool notify_wants(unsigned notify, enum dsn_kind kind)
{
    if (notify & DSN_NOTIFY_NEVER)
        return false;
    if (notify == 0)
        return kind != DSN_SUCCESS;
    unsigned bit = kind == DSN_FAILURE ? DSN_NOTIFY_FAILURE
                   : kind == DSN_DELAY ? DSN_NOTIFY_DELAY
                                       : DSN_NOTIFY_SUCCESS;
    return (notify & bit) != 0;
}

/* Is this recipient, or the alias it was expanded from, the postmaster? */
static bool from_postmaster(const struct conf *c, struct qmsg *m, uint32_t i)
{
    for (unsigned hops = 0; hops < 64 && i != QRCPT_NO_PARENT; hops++) {
        const struct qrcpt *r = qmsg_rcpt(m, i);
        if (str_ieq(r->addr, "postmaster") || (c->postmaster && str_ieq(r->addr, c->postmaster)))
            return true;
        i = r->parent;
    }
    return false;
}

static bool in_active(const struct bouncer *b, struct qmsg *m, enum dsn_kind kind, uint32_t i)
{
    for (const struct bjob *j = b->active; j; j = j->next)
        if (j->m == m && j->kind == kind)
            for (size_t k = 0; k < j->n; k++)
                if (j->rcpts[k] == i)
                    return true;
    return false;
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void job_free(struct bjob *j)
{
    for (size_t i = 0; i < j->n; i++) {
        free((char *)j->dr[i].addr);
        free((char *)j->dr[i].orcpt);
        free((char *)j->dr[i].status);
        free((char *)j->dr[i].remote_mta);
        free((char *)j->dr[i].diagnostic);
    }
    free(j->dr);
    free(j->rcpts);
    free((char *)j->rep.reporting_mta);
    free((char *)j->rep.from);
    free((char *)j->rep.envid);
    free((char *)j->rep.orig_qid);
    free((char *)j->rep.message_id);
    free(j->to);
    free(j->content);
    qmsg_unref(j->m);
    free(j);
}

static void bouncer_maybe_free(struct bouncer *b)
{
    if (b->closing && b->active == NULL)
        free(b);
}

/* Take j off the active list, free it, and the bouncer too if it is closing. */
static void job_finish(struct bjob *j)
{
    struct bouncer *b = j->b;
    for (struct bjob **p = &b->active; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            break;
        }
    b->nactive--;
    job_free(j);
    bouncer_maybe_free(b);
}

static void log_job(const struct bjob *j, enum log_level level, const char *result, const char *why)
{
    struct logline l;
    log_begin(&l, level, "bounce");
    log_str(&l, "qid", qmsg_id(j->m));
    log_str(&l, "kind", kind_names[j->kind]);
    log_uint(&l, "rcpts", j->n);
    if (j->to)
        log_str(&l, "to", j->to);
    if (j->dsn_qid[0])
        log_str(&l, "dsn_qid", j->dsn_qid);
    log_str(&l, "result", result);
    if (why)
        log_str(&l, "reason", why);
    log_end(&l);
}

/* ---- the worker side ---- */

static bool any_8bit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return true;
    return false;
}

static void compose_work(void *arg)
{
    struct bjob *j = arg;
    bool whole = j->kind == DSN_FAILURE && j->rep.ret != DSN_RET_HDRS &&
                 j->size <= BOUNCE_RETURN_LIMIT;
    size_t want = whole ? j->size : (j->size < BOUNCE_HEADERS_MAX ? j->size : BOUNCE_HEADERS_MAX);
    char *orig = NULL;
    if (want > 0) {
        orig = xmalloc(want);
        if (qbody_read(&j->body, orig, want, 0) != 0) {
            /* the notice matters more than the copy: send it without the original */
            free(orig);
            orig = NULL;
            want = 0;
            j->read_failed = true;
        }
    }
    j->rep.original = orig;
    j->rep.original_len = want;
    struct buf out = BUF_INIT(BOUNCE_RETURN_LIMIT + 2 * BOUNCE_HEADERS_MAX + REPORT_BASE_MAX +
                              j->n * REPORT_RCPT_MAX);
    j->rc = dsn_compose(&j->rep, &out);
    if (j->rc != 0) { /* cannot happen with the bounds above; be safe: no original */
        buf_reset(&out);
        j->rep.original = NULL;
        j->rep.original_len = 0;
        j->rc = dsn_compose(&j->rep, &out);
    }
    j->rep.original = NULL;
    free(orig);
    if (j->rc == 0) {
        j->content = buf_steal(&out, &j->len);
        j->eightbit = any_8bit(j->content, j->len);
    }
    buf_release(&out);
}

/* ---- back on the loop ---- */

static void commit_done(void *arg, int err)
{
    struct bjob *j = arg;
    if (err != 0) {
        log_job(j, LOG_LVL_ERROR, "deferred", "the report could not be queued");
    } else {
        log_job(j, LOG_LVL_INFO, "sent", j->read_failed ? "original unreadable" : NULL);
        queue_dsn_done(j->m, j->kind, j->rcpts, j->n);
    }
    job_finish(j);
}

static void compose_done(void *arg)
{
    struct bjob *j = arg;
    if (j->b->closing) {
        job_finish(j); /* shutting down: the queue asks again after the restart */
        return;
    }
    if (j->rc != 0) {
        log_job(j, LOG_LVL_ERROR, "deferred", "the report could not be composed");
        job_finish(j);
        return;
    }
    struct qdraft *d = queue_draft_new();
    snprintf(j->dsn_qid, sizeof j->dsn_qid, "%s", queue_draft_id(d));
    if (!queue_draft_write(d, j->content, j->len)) {
        queue_draft_abort(d);
        log_job(j, LOG_LVL_ERROR, "deferred", "the report could not be written to the queue");
        job_finish(j);
        return;
    }
    free(j->content); /* the draft has it now */
    j->content = NULL;
    struct envelope env;
    envelope_init(&env);
    envelope_set(&env.sender, ""); /* RFC 3461 §6.2: a DSN has the null reverse-path */
    envelope_add_rcpt(&env, j->to, NULL, 0);
    env.body = j->eightbit ? BODY_8BITMIME : BODY_7BIT;
    env.smtputf8 = any_8bit(j->to, strlen(j->to));
    envelope_set(&env.protocol, "local");
    env.arrival = loop_now();
    queue_draft_commit(d, envelope_move(&env), commit_done, j);
}

static void fill_rcpt(struct bjob *j, struct dsn_rcpt *dr, const struct qrcpt *qr,
                      time_t retry_until)
{
    dr->addr = xstrdup(qr->addr);
    dr->orcpt = dup_or_null(qr->orcpt);
    dr->status = dup_or_null(qr->status);
    dr->remote_mta = dup_or_null(qr->remote_mta);
    dr->diagnostic = dup_or_null(qr->last_reply);
    switch (j->kind) {
    case DSN_FAILURE:
        dr->action = "failed";
        break;
    case DSN_DELAY:
        dr->action = "delayed";
        dr->will_retry_until = retry_until;
        break;
    case DSN_SUCCESS:
        dr->action = qr->state == QR_EXPANDED ? "expanded" : qr->relayed ? "relayed" : "delivered";
        break;
    }
    /* Last-Attempt-Date is left out: the queue keeps no time of the last attempt, and
     * RFC 3464 §2.3.7 says to omit it rather than guess */
}

void bounce_notify(struct bouncer *b, struct conf *c, struct qmsg *m, enum dsn_kind kind,
                   const uint32_t *rcpts, size_t n)
{
    if (b->closing || n == 0)
        return;
    const struct envelope *env = qmsg_envelope(m);
    bool null_sender = env->sender == NULL || env->sender[0] == '\0';
    uint32_t *send = xcalloc(n, sizeof *send), *ack = xcalloc(n, sizeof *ack);
    size_t nsend = 0, nack = 0;
    for (size_t i = 0; i < n; i++) {
        const struct qrcpt *qr = qmsg_rcpt(m, rcpts[i]);
        if (in_active(b, m, kind, rcpts[i]))
            continue; /* a report about it is on its way */
        const char *why = NULL;
        if (!notify_wants(qr->notify, kind))
            why = "NOTIFY";
        else if (null_sender && kind != DSN_FAILURE)
            why = "null sender";
        else if (null_sender && from_postmaster(c, m, rcpts[i]))
            why = "failed notice to postmaster";
        if (why == NULL) {
            send[nsend++] = rcpts[i];
            continue;
        }
        ack[nack++] = rcpts[i];
        struct logline l;
        log_begin(&l, strcmp(why, "NOTIFY") == 0 ? LOG_LVL_DEBUG : LOG_LVL_WARN, "bounce");
        log_str(&l, "qid", qmsg_id(m));
        log_str(&l, "kind", kind_names[kind]);
        log_str(&l, "rcpt", qr->addr);
        log_str(&l, "result", "dropped");
        log_str(&l, "reason", why);
        log_end(&l);
    }
    if (nack > 0)
        queue_dsn_done(m, kind, ack, nack); /* nothing is owed for these */
    free(ack);
    if (nsend == 0) {
        free(send);
        return;
    }

    struct bjob *j = xcalloc(1, sizeof *j);
    j->b = b;
    j->m = m;
    qmsg_ref(m);
    j->kind = kind;
    j->rcpts = send;
    j->n = nsend;
    j->to_postmaster = null_sender;
    j->to = xstrdup(null_sender ? c->postmaster : env->sender);
    time_t retry_until = env->arrival + (time_t)(c->queue_lifetime_ms / 1000);
    j->dr = xcalloc(nsend, sizeof *j->dr);
    for (size_t i = 0; i < nsend; i++)
        fill_rcpt(j, &j->dr[i], qmsg_rcpt(m, send[i]), retry_until);
    time_t now = loop_now();
    j->rep.kind = kind;
    j->rep.reporting_mta = xstrdup(c->hostname);
    j->rep.from = xasprintf("MAILER-DAEMON@%s", c->hostname);
    j->rep.to = j->to;
    j->rep.envid = dup_or_null(env->envid);
    j->rep.orig_qid = xstrdup(qmsg_id(m));
    j->rep.arrival = env->arrival;
    j->rep.now = now;
    j->rep.message_id = xasprintf("<%s.%c%lu.%lld@%s>", qmsg_id(m), "FDS"[kind], ++b->counter,
                                  (long long)now, c->hostname);
    j->rep.ret = env->ret;
    j->rep.smtputf8 = env->smtputf8;
    j->rep.return_limit = BOUNCE_RETURN_LIMIT;
    j->rep.rcpts = j->dr;
    j->rep.nrcpts = nsend;
    qmsg_body(m, &j->body);
    j->size = qmsg_size(m);
    j->next = b->active;
    b->active = j;
    b->nactive++;
    workers_submit(b->pool, compose_work, compose_done, j);
}

void bounce_free(struct bouncer *b)
{
    if (b == NULL)
        return;
    b->closing = true;
    bouncer_maybe_free(b);
}
