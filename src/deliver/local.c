/*
 * deliver/local: see local.h.
 *
 * A recipient's way through here:
 *   local_agent_deliver()  resolve (local_resolve, or local_resolve_final for a recipient
 *                          an expansion produced: those are final and never expand again)
 *     LOCAL_UNKNOWN        -> queue_report PERM 5.1.1
 *     LOCAL_ERROR          -> queue_report PERM 5.4.6 (alias loop, limits)
 *     LOCAL_EXPAND         -> queue_expand (the queue dispatches the new recipients)
 *     LOCAL_MAILBOX        -> a job on the agent's FIFO (prefix built, message ref held)
 *   local_agent_flush()    FIFO -> batches on the worker pool (maildir_deliver_batch)
 *   batch_done()           queue_report per job: OK 2.0.0, or TEMP/PERM from the error
 *
 * Status codes for Maildir failures (RFC 3463): over quota 4.2.2, file system full
 * 4.3.1, other temporary faults of the mailbox (permissions) 4.2.0, of the system (I/O,
 * read-only) 4.3.0. A mailbox path that cannot work as configured (a path component is
 * a file, a name too long) and our other configuration faults (mail folder not open)
 * defer with 4.3.5 rather than bounce: they are local faults an operator can repair, and
 * tern never bounces for those (the queue lifetime still ends the wait).
 *
 * The prefix is "Return-Path: <sender>" and "Delivered-To: user@domain" (the final
 * mailbox address), CRLF-terminated like the content that follows it.
 */
#include "deliver/local.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deliver/dispatch.h"
#include "deliver/maildir.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "table/local.h"

struct ljob {
    struct ljob *next;
    struct qmsg *m; /* referenced */
    uint32_t rcpt;
    struct conf *conf; /* referenced: the domain_conf below lives in it */
    const struct domain_conf *d;
    char *relpath;
    char *prefix;
    size_t prefix_len;
    char *mailbox; /* user@domain, for Delivered-To and logs */
    char stable_id[QID_MAX + 16]; /* "<qid>R<recipient index>": see maildir.h */
    struct maildir_job mj;
};

struct lbatch {
    struct local_agent *a;
    struct ljob **jobs;
    struct maildir_job *mjobs;
    size_t n;
};

struct local_agent {
    struct workers *pool;
    unsigned max_batches;
    unsigned running;          /* batches on the pool */
    struct ljob *head, **tail; /* jobs not yet submitted */
    size_t queued;
    size_t pending; /* recipients handed in and not yet reported */
    bool closing;
};

struct local_agent *local_agent_new(struct workers *pool, unsigned max_batches)
{
    struct local_agent *a = xcalloc(1, sizeof *a);
    a->pool = pool;
    a->max_batches = max_batches ? max_batches : 1;
    a->tail = &a->head;
    return a;
}

size_t local_agent_pending(const struct local_agent *a)
{
    return a->pending;
}

static long delay_seconds(struct qmsg *m)
{
    time_t arrival = qmsg_envelope(m)->arrival;
    time_t now = loop_now();
    return arrival > 0 && now > arrival ? (long)(now - arrival) : 0;
}

static void report(struct local_agent *a, struct qmsg *m, uint32_t rcpt, enum delivery_kind kind,
                   const char *status, const char *diagnostic, const char *mailbox)
{
    struct delivery_result r = {.kind = kind, .status = status, .diagnostic = diagnostic};
    struct logline l;
    log_begin(&l, kind == DELIVERY_OK ? LOG_LVL_INFO : LOG_LVL_WARN, "deliver.local");
    log_str(&l, "qid", qmsg_id(m));
    log_str(&l, "rcpt", qmsg_rcpt(m, rcpt)->addr);
    if (mailbox)
        log_str(&l, "mailbox", mailbox);
    log_str(&l, "result", kind == DELIVERY_OK ? "ok" : kind == DELIVERY_TEMP ? "temp" : "perm");
    log_str(&l, "status", status);
    log_int(&l, "delay", delay_seconds(m));
    if (kind != DELIVERY_OK)
        log_str(&l, "error", diagnostic);
    log_end(&l);
    queue_report(m, rcpt, &r);
    a->pending--;
}

/* Shutting down: give no outcome, so the recipient stays pending on disk and the next
 * start delivers it at once (a temporary failure would cost it a whole retry step). */
static void abandon(struct local_agent *a, struct qmsg *m, uint32_t rcpt)
{
    log_printf(LOG_LVL_INFO, "event=deliver.local qid=%s rcpt_index=%u result=abandoned "
                             "note=\"shutting down; delivered after restart\"",
               qmsg_id(m), (unsigned)rcpt);
    a->pending--;
}

static void job_free(struct ljob *j)
{
    qmsg_unref(j->m);
    conf_unref(j->conf);
    free(j->relpath);
    free(j->prefix);
    free(j->mailbox);
    free(j);
}

/* Choose the status code of a Maildir failure (see the file comment). */
static const char *maildir_status(const struct maildir_job *mj)
{
    if (mj->permanent)
        return "4.3.5"; /* a local configuration fault: defer, never bounce (file comment) */
    switch (mj->errnum) {
    case EDQUOT:
        return "4.2.2";
    case ENOSPC:
        return "4.3.1";
    case EACCES:
    case EPERM:
        return "4.2.0";
    default:
        return "4.3.0";
    }
}

static void maildir_job_report(struct local_agent *a, struct ljob *j)
{
    if (j->mj.ok) {
        report(a, j->m, j->rcpt, DELIVERY_OK, "2.0.0",
               j->mj.already ? "x-tern; delivered to maildir (the file of an earlier try, "
                               "before a restart, was already there)"
                             : "x-tern; delivered to maildir",
               j->mailbox);
        return;
    }
    char diag[400];
    snprintf(diag, sizeof diag, "x-tern; maildir: %s", j->mj.error);
    report(a, j->m, j->rcpt, DELIVERY_TEMP, maildir_status(&j->mj), diag, j->mailbox);
}

static void agent_maybe_free(struct local_agent *a)
{
    if (a->closing && a->running == 0 && a->head == NULL)
        free(a);
}

/* ---- the worker side ---- */

static void batch_work(void *arg)
{
    struct lbatch *b = arg;
    maildir_deliver_batch(b->mjobs, b->n);
}

static void batch_done(void *arg)
{
    struct lbatch *b = arg;
    struct local_agent *a = b->a;
    for (size_t i = 0; i < b->n; i++) {
        b->jobs[i]->mj = b->mjobs[i];
        maildir_job_report(a, b->jobs[i]);
        job_free(b->jobs[i]);
    }
    free(b->jobs);
    free(b->mjobs);
    free(b);
    a->running--;
    if (a->closing)
        agent_maybe_free(a);
    else
        local_agent_flush(a);
}

void local_agent_flush(struct local_agent *a)
{
    while (a->head != NULL && a->running < a->max_batches && !a->closing) {
        /* share what is queued among the free slots, so no batch waits behind another */
        size_t slots = a->max_batches - a->running;
        size_t take = (a->queued + slots - 1) / slots;
        if (take > LOCAL_AGENT_BATCH_MAX)
            take = LOCAL_AGENT_BATCH_MAX;
        struct lbatch *b = xcalloc(1, sizeof *b);
        b->a = a;
        b->jobs = xcalloc(take, sizeof *b->jobs);
        b->mjobs = xcalloc(take, sizeof *b->mjobs);
        while (b->n < take && a->head != NULL) {
            struct ljob *j = a->head;
            a->head = j->next;
            a->queued--;
            j->next = NULL;
            b->jobs[b->n] = j;
            b->mjobs[b->n] = j->mj; /* the worker works on its own copy */
            b->n++;
        }
        if (a->head == NULL)
            a->tail = &a->head;
        a->running++;
        workers_submit(a->pool, batch_work, batch_done, b);
    }
}

/* ---- resolution ---- */

#define DEDUPE_RCPTS_MAX 1000 /* larger messages skip the (quadratic) duplicate check */

/* Does a recipient of m listed before rcpt, already delivered or being delivered, end in
 * the same mailbox? Then this one is a duplicate: one message, one copy per mailbox
 * (e.g. <Postmaster> and <postmaster@domain>, or an alias and one of its members). The
 * earlier recipient wins, so of several duplicates exactly one is written. */
static bool duplicate_mailbox(struct conf *c, struct qmsg *m, uint32_t rcpt, const char *mailbox)
{
    size_t n = qmsg_nrcpts(m);
    if (n > DEDUPE_RCPTS_MAX)
        return false;
    for (uint32_t i = 0; i < rcpt && i < n; i++) {
        const struct qrcpt *q = qmsg_rcpt(m, i);
        if (q->state != QR_DELIVERED && !q->in_flight)
            continue;
        if (!dispatch_is_local(c, q->addr))
            continue;
        struct local_result res;
        if (q->parent != QRCPT_NO_PARENT)
            local_resolve_final(c, q->addr, &res);
        else
            local_resolve(c, q->addr, &res);
        bool same = false;
        if (res.kind == LOCAL_MAILBOX) {
            char other[400];
            snprintf(other, sizeof other, "%s@%s", res.user, res.domain->name);
            same = strcmp(other, mailbox) == 0;
        }
        local_result_free(&res);
        if (same)
            return true;
    }
    return false;
}

static void enqueue_mailbox(struct local_agent *a, struct conf *c, struct qmsg *m, uint32_t rcpt,
                            const struct local_result *res)
{
    const struct domain_conf *d = res->domain;
    char mailbox[400];
    snprintf(mailbox, sizeof mailbox, "%s@%s", res->user, d->name);
    if (duplicate_mailbox(c, m, rcpt, mailbox)) {
        report(a, m, rcpt, DELIVERY_OK, "2.0.0",
               "x-tern; same mailbox as another recipient of this message: delivered once",
               mailbox);
        return;
    }
    char rel[4096];
    if (!local_mailbox_path(d, res->user, rel, sizeof rel)) {
        report(a, m, rcpt, DELIVERY_TEMP, "4.3.5",
               "x-tern; maildir: no safe mailbox path for this user (check the mailboxes "
               "pattern)",
               mailbox);
        return;
    }
    if (d->mail_base_fd < 0) {
        char diag[600];
        snprintf(diag, sizeof diag, "x-tern; maildir: mail folder %s is not open", d->mail_base);
        report(a, m, rcpt, DELIVERY_TEMP, "4.3.5", diag, mailbox);
        return;
    }
    const struct envelope *env = qmsg_envelope(m);
    struct ljob *j = xcalloc(1, sizeof *j);
    qmsg_ref(m);
    conf_ref(c);
    j->m = m;
    j->rcpt = rcpt;
    j->conf = c;
    j->d = d;
    j->relpath = xstrdup(rel);
    j->mailbox = xstrdup(mailbox);
    j->prefix = xasprintf("Return-Path: <%s>\r\nDelivered-To: %s\r\n", env->sender, mailbox);
    j->prefix_len = strlen(j->prefix);
    j->mj.base_fd = d->mail_base_fd;
    j->mj.relpath = j->relpath;
    j->mj.prefix = j->prefix;
    j->mj.prefix_len = j->prefix_len;
    j->mj.hostname = c->hostname;
    /* the same name for every try of this delivery, so one repeated after a crash finds
     * the file its first try wrote (maildir.h) */
    snprintf(j->stable_id, sizeof j->stable_id, "%sR%u", qmsg_id(m), (unsigned)rcpt);
    j->mj.stable_id = j->stable_id;
    j->mj.stable_time = (long long)env->arrival;
    qmsg_body(m, &j->mj.body); /* valid while the reference is held */
    *a->tail = j;
    a->tail = &j->next;
    a->queued++;
}

void local_agent_deliver(struct local_agent *a, struct conf *c, struct qmsg *m,
                         const uint32_t *rcpts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t idx = rcpts[i];
        const struct qrcpt *qr = qmsg_rcpt(m, idx);
        a->pending++;
        if (a->closing) {
            abandon(a, m, idx);
            continue;
        }
        struct local_result res;
        if (qr->parent != QRCPT_NO_PARENT)
            local_resolve_final(c, qr->addr, &res);
        else
            local_resolve(c, qr->addr, &res);
        char diag[300];
        switch (res.kind) {
        case LOCAL_MAILBOX:
            enqueue_mailbox(a, c, m, idx, &res);
            break;
        case LOCAL_UNKNOWN:
            snprintf(diag, sizeof diag, "x-tern; %s", res.error[0] ? res.error : "no such user");
            report(a, m, idx, DELIVERY_PERM, "5.1.1", diag, NULL);
            break;
        case LOCAL_ERROR:
            snprintf(diag, sizeof diag, "x-tern; %s", res.error);
            report(a, m, idx, DELIVERY_PERM, "5.4.6", diag, NULL);
            break;
        case LOCAL_EXPAND: {
            struct logline l;
            log_begin(&l, LOG_LVL_INFO, "deliver.expand");
            log_str(&l, "qid", qmsg_id(m));
            log_str(&l, "rcpt", qr->addr);
            log_uint(&l, "count", res.naddrs);
            log_end(&l);
            /* the queue takes the outcome from here: new recipients, or the parent's
             * failure when the message would have too many */
            a->pending--;
            queue_expand(m, idx, (const char *const *)res.addrs, res.naddrs);
            break;
        }
        }
        local_result_free(&res);
    }
}

void local_agent_free(struct local_agent *a)
{
    if (a == NULL)
        return;
    a->closing = true;
    while (a->head != NULL) { /* never submitted: delivered after the next start */
        struct ljob *j = a->head;
        a->head = j->next;
        a->queued--;
        abandon(a, j->m, j->rcpt);
        job_free(j);
    }
    a->tail = &a->head;
    agent_maybe_free(a);
}
