/*
 * queue: the index of live messages, recipient states, the retry schedule, DSN decisions,
 * recovery and segment retirement (see queue.h for the contract). The bytes on disk are
 * spool.c's business, the record format record.c's.
 *
 * Threads: everything here runs on the loop thread. Records go to the commit thread as
 * spool jobs (struct cjob wraps one); their completions come back through spool's
 * notifier into on_spool_done().
 *
 * Group commit, loop side: commits made in one turn of the loop go to the commit thread
 * as one list (submit_soon), with every pending status snapshot riding along; the thread
 * then batches whatever arrives while it syncs.
 *
 * Durability rules this file keeps:
 *  - a message enters the index (and done(arg, 0) runs) only once its record is durable;
 *  - recipient changes mark the message dirty; dirty messages get a full status snapshot
 *    within STATUS_DELAY_MS (with the next commit if one goes out sooner), messages with
 *    many recipients at most once per SNAP_BIG_INTERVAL_MS;
 *  - a failed recipient whose failure DSN is owed is written as "deferred, due now" until
 *    queue_dsn_done() (the bounce is committed by then): a crash in between retries the
 *    recipient (at worst a second bounce) instead of losing the bounce;
 *  - a segment is retired only when no live message has its content or its latest
 *    durable snapshot in it, and only oldest first, so no stale state can come back;
 *    compaction re-appends long-lived messages so they do not pin old segments.
 *
 *  - a delivered recipient is final on disk at once (a repeat would be worse); a success
 *    DSN still owed after a restart is asked for again.
 *
 * References: the index holds one internal reference per live message; status and
 * compaction jobs, the dirty list and each recipient in flight hold internal ones too
 * (irefs), so a message deleted during a delivery stays valid until its report. qmsg_ref() callers
 * hold external ones (xrefs): while any exists, qbody pointers may be in use, so cached
 * content is not dropped and compaction does not move the content's location.
 */
#include "queue/queue.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "queue/draft.h"
#include "queue/maildrop.h"
#include "queue/pickup.h"
#include "queue/qid.h"
#include "queue/record.h"
#include "queue/spool.h"

#define STATUS_DELAY_MS 10      /* status-only records wait this long to share a sync */
#define STATUS_RETRY_MS 1000    /* after a failed status write */
#define MAINT_EVERY_MS 1000     /* compaction check while old segments exist */
#define SCHED_MAX_WAIT_MS 60000 /* re-check the clock at least this often */
#define SPACE_CHECK_MS 1000
#define DEFAULT_RETRY_MS (5 * 60 * 1000)
#define DIAG_MAX 1000 /* bytes of a diagnostic kept */
#define FIELD_MAX 255 /* status code, remote MTA name */
#define DEFAULT_SIZE_LIMIT (50ull << 20)
#define SNAP_BIG_RCPTS 100       /* messages with more recipients than this ... */
#define SNAP_BIG_INTERVAL_MS 1000 /* ... get at most one snapshot per interval */

enum phase { M_LIVE, M_FINISHING, M_GONE };

struct rstate {
    uint64_t due_ms;      /* deferred: wall-clock ms of the next attempt */
    bool busy[3];         /* notify hook called for this DSN kind, not yet done */
};

struct seg {
    uint32_t seq;
    int fd;
    uint64_t size;
    uint64_t live;   /* bytes of message records whose content is used from here */
    unsigned pins;   /* messages whose content or latest durable snapshot is here */
    bool damaged, retiring;
    struct seg *next; /* ascending sequence */
};

struct qmsg {
    char id[QID_MAX];
    struct envelope *env;
    struct qrcpt *rcpts;
    struct rstate *rs;
    size_t nrcpts, rcap;
    uint64_t arrival_ms;
    uint64_t snap_ms; /* when the last snapshot was encoded (monotonic) */
    bool held;
    enum phase phase;
    unsigned irefs, xrefs;
    /* content */
    uint64_t body_len;
    uint32_t body_crc;
    char *body_mem; /* cached copy, or NULL */
    struct seg *body_seg;
    uint64_t body_off, rec_len;
    struct seg *next_seg; /* compaction copy waiting for xrefs to reach 0 */
    uint64_t next_off, next_rec_len;
    struct seg *snap_seg; /* latest durable snapshot (or the message record itself) */
    /* pending work */
    bool dirty, compacting, settling;
    struct qmsg *dirty_next;
    struct seg *cmp_seg; /* compaction: where the content copy landed */
    uint64_t cmp_off, cmp_rec_len;
    /* schedule and index */
    size_t heap_i;
    uint64_t due_ms;
    struct qmsg *hnext, *prev, *next;
};

enum cjob_kind { CJ_COMMIT, CJ_STATUS, CJ_COMPACT_MSG, CJ_COMPACT_STATUS, CJ_RETIRE, CJ_UNLINK };

struct cjob {
    struct spool_job sj; /* first: on_spool_done() converts back */
    enum cjob_kind kind;
    struct qmsg *m;
    struct qdraft *d;
    struct buf text;
    struct iovec iov1;
    bool final; /* status: the snapshot says the message is finished */
    struct seg *seg;
    void (*done)(void *arg, int err);
    void *arg;
};

static struct {
    bool open, closing;
    struct queue_params p;
    uint64_t *retry;
    char *spool_dir;
    int qdirfd, dropdirfd, lockfd;
    /* index */
    struct qmsg **buckets;
    size_t nbuckets, count;
    struct qmsg *first, *last;
    /* segments, oldest first */
    struct seg *segs;
    /* schedule */
    struct qmsg **heap;
    size_t heap_n, heap_cap;
    struct timer *sched_timer, *flush_timer, *maint_timer, *start_timer;
    /* status snapshots waiting to be written */
    struct qmsg *dirty_head, **dirty_tail;
    bool status_backoff;
    uint64_t cache_used;
    uint64_t committed, delivered, failed, deferred_attempts;
    uint64_t space_checked_ms;
    bool space_ok;
    uint64_t next_compact_ms;
    uint64_t flush_at; /* when flush_timer fires (monotonic ms), if pending */
    struct timer *submit_timer;
    struct spool_job *out_head, **out_tail; /* commits waiting for submit_timer */
} Q;

static void settle(struct qmsg *m);
static void maint_soon(void);

/* ---- small helpers ---- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool state_final(enum qrcpt_state s)
{
    return s == QR_DELIVERED || s == QR_FAILED || s == QR_EXPANDED || s == QR_DELETED;
}

static void set_str(const char **field, const char *v, size_t max)
{
    free((char *)*field);
    *field = v ? xstrndup(v, strnlen(v, max)) : NULL;
}

static struct cjob *cjob_new(enum cjob_kind kind)
{
    struct cjob *j = xcalloc(1, sizeof *j);
    j->kind = kind;
    j->sj.kind = SJ_RECORD;
    j->sj.src_fd = -1;
    j->sj.fd = -1;
    j->sj.dirfd = -1;
    buf_init(&j->text, REC_TEXT_MAX);
    return j;
}

static void cjob_free(struct cjob *j)
{
    buf_release(&j->text);
    free(j);
}

/* ---- segments ---- */

static struct seg *seg_find(uint32_t seq)
{
    for (struct seg *s = Q.segs; s; s = s->next)
        if (s->seq == seq)
            return s;
    return NULL;
}

static struct seg *seg_add(uint32_t seq, int fd)
{
    struct seg *s = xcalloc(1, sizeof *s);
    s->seq = seq;
    s->fd = fd;
    struct seg **pp = &Q.segs;
    while (*pp && (*pp)->seq < seq)
        pp = &(*pp)->next;
    s->next = *pp;
    *pp = s;
    return s;
}

/* The segment a completed record landed in (the commit thread may have started it). */
static struct seg *seg_get(uint32_t seq, int fd)
{
    struct seg *s = seg_find(seq);
    if (s == NULL) {
        s = seg_add(seq, fd);
        maint_soon(); /* a new segment: an older one may be retirable now */
    }
    return s;
}

static void seg_pin(struct seg *s)
{
    s->pins++;
}

static void seg_unpin(struct seg *s)
{
    if (s->pins == 0)
        fatal("segment %u unpinned below zero", s->seq);
    if (--s->pins == 0)
        maint_soon();
}

static void body_pin(struct seg *s, uint64_t len)
{
    seg_pin(s);
    s->live += len;
}

static void body_unpin(struct seg *s, uint64_t len)
{
    s->live -= len < s->live ? len : s->live;
    seg_unpin(s);
}

static void snap_move(struct qmsg *m, struct seg *s)
{
    if (m->snap_seg == s)
        return;
    if (s)
        seg_pin(s);
    if (m->snap_seg)
        seg_unpin(m->snap_seg);
    m->snap_seg = s;
}

/* ---- messages and references ---- */

static struct qmsg *msg_new(const char *id, struct envelope *env, uint64_t arrival_ms)
{
    struct qmsg *m = xcalloc(1, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", id);
    m->env = env;
    m->arrival_ms = arrival_ms;
    m->heap_i = SIZE_MAX;
    m->irefs = 1; /* becomes the index's reference */
    for (size_t i = 0; i < env->nrcpts; i++) {
        m->rcpts = xgrow(m->rcpts, &m->rcap, m->nrcpts + 1, sizeof *m->rcpts);
        m->rs = xrealloc(m->rs, m->rcap * sizeof *m->rs);
        struct qrcpt *r = &m->rcpts[m->nrcpts];
        memset(r, 0, sizeof *r);
        memset(&m->rs[m->nrcpts], 0, sizeof *m->rs);
        r->addr = xstrdup(env->rcpts[i].addr);
        r->orcpt = env->rcpts[i].orcpt ? xstrdup(env->rcpts[i].orcpt) : NULL;
        r->notify = env->rcpts[i].notify;
        r->parent = QRCPT_NO_PARENT;
        m->nrcpts++;
    }
    return m;
}

static void rcpt_strings_free(struct qrcpt *r)
{
    free((char *)r->addr);
    free((char *)r->orcpt);
    free((char *)r->status);
    free((char *)r->last_reply);
    free((char *)r->remote_mta);
}

static void msg_free(struct qmsg *m)
{
    if (m->body_seg)
        body_unpin(m->body_seg, m->rec_len);
    if (m->next_seg)
        body_unpin(m->next_seg, m->next_rec_len);
    if (m->snap_seg)
        seg_unpin(m->snap_seg);
    if (m->body_mem) {
        Q.cache_used -= m->body_len;
        free(m->body_mem);
    }
    for (size_t i = 0; i < m->nrcpts; i++)
        rcpt_strings_free(&m->rcpts[i]);
    free(m->rcpts);
    free(m->rs);
    envelope_free(m->env);
    free(m);
}

static void iref(struct qmsg *m)
{
    m->irefs++;
}

static void iunref(struct qmsg *m)
{
    if (m->irefs == 0)
        fatal("qmsg %s: internal reference count below zero", m->id);
    if (--m->irefs == 0 && m->xrefs == 0)
        msg_free(m);
}

void qmsg_ref(struct qmsg *m)
{
    m->xrefs++;
}

static bool any_in_flight(const struct qmsg *m)
{
    for (size_t i = 0; i < m->nrcpts; i++)
        if (m->rcpts[i].in_flight)
            return true;
    return false;
}

/* Cached content is for the first delivery attempts; once every recipient still waiting
 * is deferred, the memory is better used for new messages. */
static void maybe_drop_cache(struct qmsg *m)
{
    if (m->body_mem == NULL || m->xrefs > 0 || m->body_seg == NULL || m->compacting)
        return; /* (a compaction job may be writing from the memory) */
    if (m->phase == M_LIVE) {
        for (size_t i = 0; i < m->nrcpts; i++)
            if (m->rcpts[i].in_flight || m->rcpts[i].state == QR_PENDING)
                return;
    }
    Q.cache_used -= m->body_len;
    free(m->body_mem);
    m->body_mem = NULL;
}

/* Move to the compaction copy once nobody can hold a qbody pointing at the old place:
 * no external reference, or the content is cached (then every qbody handed out points at
 * the memory: a cache is only ever dropped, never added after the commit). */
static void apply_next_seg(struct qmsg *m)
{
    if (m->next_seg == NULL || (m->xrefs > 0 && m->body_mem == NULL))
        return;
    body_unpin(m->body_seg, m->rec_len);
    m->body_seg = m->next_seg;
    m->body_off = m->next_off;
    m->rec_len = m->next_rec_len;
    m->next_seg = NULL;
}

void qmsg_unref(struct qmsg *m)
{
    if (m->xrefs == 0)
        fatal("qmsg %s: reference count below zero", m->id);
    if (--m->xrefs > 0)
        return;
    if (m->irefs == 0) {
        msg_free(m);
        return;
    }
    apply_next_seg(m);
    maybe_drop_cache(m);
}

/* ---- index ---- */

static size_t hash_id(const char *id)
{
    uint64_t h = 14695981039346656037ull;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ull;
    return (size_t)h;
}

static struct qmsg *idx_find(const char *id)
{
    if (Q.nbuckets == 0 || id == NULL)
        return NULL;
    for (struct qmsg *m = Q.buckets[hash_id(id) & (Q.nbuckets - 1)]; m; m = m->hnext)
        if (strcmp(m->id, id) == 0)
            return m;
    return NULL;
}

static void idx_insert(struct qmsg *m)
{
    if (Q.count + 1 > Q.nbuckets) {
        size_t n = Q.nbuckets ? Q.nbuckets * 2 : 256;
        struct qmsg **b = xcalloc(n, sizeof *b);
        for (size_t i = 0; i < Q.nbuckets; i++) {
            while (Q.buckets[i]) {
                struct qmsg *x = Q.buckets[i];
                Q.buckets[i] = x->hnext;
                size_t k = hash_id(x->id) & (n - 1);
                x->hnext = b[k];
                b[k] = x;
            }
        }
        free(Q.buckets);
        Q.buckets = b;
        Q.nbuckets = n;
    }
    size_t k = hash_id(m->id) & (Q.nbuckets - 1);
    m->hnext = Q.buckets[k];
    Q.buckets[k] = m;
    m->prev = Q.last;
    m->next = NULL;
    if (Q.last)
        Q.last->next = m;
    else
        Q.first = m;
    Q.last = m;
    Q.count++;
}

static void idx_remove(struct qmsg *m)
{
    struct qmsg **pp = &Q.buckets[hash_id(m->id) & (Q.nbuckets - 1)];
    while (*pp != m)
        pp = &(*pp)->hnext;
    *pp = m->hnext;
    if (m->prev)
        m->prev->next = m->next;
    else
        Q.first = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        Q.last = m->prev;
    m->prev = m->next = m->hnext = NULL;
    Q.count--;
}

/* ---- schedule: a binary min-heap of messages by their earliest due time ---- */

static void heap_swap(size_t a, size_t b)
{
    struct qmsg *t = Q.heap[a];
    Q.heap[a] = Q.heap[b];
    Q.heap[b] = t;
    Q.heap[a]->heap_i = a;
    Q.heap[b]->heap_i = b;
}

static void heap_fix(size_t i)
{
    while (i > 0 && Q.heap[(i - 1) / 2]->due_ms > Q.heap[i]->due_ms) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        if (l < Q.heap_n && Q.heap[l]->due_ms < Q.heap[s]->due_ms)
            s = l;
        if (r < Q.heap_n && Q.heap[r]->due_ms < Q.heap[s]->due_ms)
            s = r;
        if (s == i)
            break;
        heap_swap(i, s);
        i = s;
    }
}

static void heap_remove(struct qmsg *m)
{
    size_t i = m->heap_i;
    if (i == SIZE_MAX)
        return;
    m->heap_i = SIZE_MAX;
    Q.heap_n--;
    if (i != Q.heap_n) {
        Q.heap[i] = Q.heap[Q.heap_n];
        Q.heap[i]->heap_i = i;
        heap_fix(i);
    }
}

static void heap_set(struct qmsg *m, uint64_t due)
{
    if (due == UINT64_MAX) {
        heap_remove(m);
        return;
    }
    m->due_ms = due;
    if (m->heap_i == SIZE_MAX) {
        Q.heap = xgrow(Q.heap, &Q.heap_cap, Q.heap_n + 1, sizeof *Q.heap);
        m->heap_i = Q.heap_n;
        Q.heap[Q.heap_n++] = m;
    }
    heap_fix(m->heap_i);
}

static void sched_arm(void)
{
    if (Q.sched_timer == NULL)
        return;
    if (Q.heap_n == 0) {
        timer_stop(Q.sched_timer);
        return;
    }
    uint64_t now = wall_ms(), due = Q.heap[0]->due_ms;
    uint64_t wait = due > now ? due - now : 0;
    timer_arm(Q.sched_timer, wait > SCHED_MAX_WAIT_MS ? SCHED_MAX_WAIT_MS : wait);
}

/* Put the message in the heap at its earliest due recipient (or take it out). */
static void sched_update(struct qmsg *m)
{
    uint64_t due = UINT64_MAX;
    if (m->phase == M_LIVE && !m->held) {
        for (size_t i = 0; i < m->nrcpts; i++) {
            const struct qrcpt *r = &m->rcpts[i];
            if (r->in_flight)
                continue;
            if (r->state == QR_PENDING)
                due = 0;
            else if (r->state == QR_DEFERRED && m->rs[i].due_ms < due)
                due = m->rs[i].due_ms;
        }
    }
    heap_set(m, due);
    sched_arm();
}

/* Hand every due recipient to the dispatch hook (marking it in flight). */
static void dispatch_due(struct qmsg *m)
{
    if (m->phase != M_LIVE || m->held || Q.closing) {
        sched_update(m);
        return;
    }
    uint64_t now = wall_ms();
    uint32_t *idx = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < m->nrcpts; i++) {
        struct qrcpt *r = &m->rcpts[i];
        if (r->in_flight)
            continue;
        if (r->state == QR_PENDING || (r->state == QR_DEFERRED && m->rs[i].due_ms <= now)) {
            idx = xgrow(idx, &cap, n + 1, sizeof *idx);
            idx[n++] = (uint32_t)i;
            r->in_flight = true;
            iref(m); /* until queue_report(): the message outlives a delete meanwhile */
        }
    }
    sched_update(m);
    if (n && Q.p.hooks.dispatch) {
        iref(m);
        Q.p.hooks.dispatch(Q.p.hooks.arg, m, idx, n);
        iunref(m);
    }
    free(idx);
}

static void on_sched(void *arg)
{
    uint64_t now = wall_ms();
    while (Q.heap_n && Q.heap[0]->due_ms <= now) {
        struct qmsg *m = Q.heap[0];
        heap_remove(m);
        iref(m);
        dispatch_due(m);
        iunref(m);
    }
    sched_arm();
}

/* ---- status snapshots ---- */

static bool wants_failure_dsn(unsigned notify)
{
    return !(notify & DSN_NOTIFY_NEVER) && (notify == 0 || (notify & DSN_NOTIFY_FAILURE));
}

static bool wants_success_dsn(unsigned notify)
{
    return !(notify & DSN_NOTIFY_NEVER) && (notify & DSN_NOTIFY_SUCCESS);
}

/* A DSN of this kind is owed for recipient i and has not been done. */
static bool dsn_owed(const struct qmsg *m, size_t i, enum dsn_kind kind, uint64_t now)
{
    const struct qrcpt *r = &m->rcpts[i];
    switch (kind) {
    case DSN_FAILURE:
        return r->state == QR_FAILED && !r->dsn_sent && wants_failure_dsn(r->notify);
    case DSN_SUCCESS:
        return (r->state == QR_DELIVERED || r->state == QR_EXPANDED) && !r->dsn_sent &&
               wants_success_dsn(r->notify);
    case DSN_DELAY:
        return r->state == QR_DEFERRED && !r->delay_warned && Q.p.delay_warning_ms &&
               now >= m->arrival_ms + Q.p.delay_warning_ms && !(r->notify & DSN_NOTIFY_NEVER) &&
               (r->notify == 0 || (r->notify & DSN_NOTIFY_DELAY));
    }
    return false;
}

/* Encode m's snapshot; *final says whether it shows the message finished. lean leaves
 * out the texts (replies, relays, status codes) that only ternctl shows. */
static bool encode_snapshot(struct qmsg *m, struct buf *out, bool *final, bool lean)
{
    struct rec_status s = {.held = m->held, .n = m->nrcpts};
    snprintf(s.id, sizeof s.id, "%s", m->id);
    s.rcpts = xcalloc(m->nrcpts ? m->nrcpts : 1, sizeof *s.rcpts);
    bool fin = true;
    for (size_t i = 0; i < m->nrcpts; i++) {
        const struct qrcpt *r = &m->rcpts[i];
        struct rec_rcpt *w = &s.rcpts[i];
        w->addr = (char *)r->addr;
        w->orcpt = (char *)r->orcpt;
        w->notify = r->notify;
        w->state = r->state;
        w->parent = r->parent;
        w->attempts = r->attempts;
        w->first_attempt = r->first_attempt;
        w->next_ms = r->state == QR_DEFERRED ? m->rs[i].due_ms : 0;
        if (!lean) {
            w->status = (char *)r->status;
            w->mta = (char *)r->remote_mta;
            w->reply = (char *)r->last_reply;
        }
        w->delay_warned = r->delay_warned;
        w->dsn_sent = r->dsn_sent;
        w->relayed = r->relayed;
        if (dsn_owed(m, i, DSN_FAILURE, 0)) {
            /* not final on disk before its bounce is: retried after a crash */
            w->state = QR_DEFERRED;
            w->next_ms = 0;
        }
        if (!state_final(w->state) || dsn_owed(m, i, DSN_SUCCESS, 0))
            fin = false;
    }
    bool ok = rec_status_encode(out, &s);
    free(s.rcpts);
    *final = fin;
    return ok;
}

/* Have the flush timer fire within ms (earlier if it already would). */
static void flush_within(uint64_t ms)
{
    if (Q.flush_timer == NULL)
        return;
    uint64_t at = loop_now_ms() + ms;
    if (!timer_pending(Q.flush_timer) || at < Q.flush_at) {
        timer_arm(Q.flush_timer, ms);
        Q.flush_at = at;
    }
}

static void mark_dirty(struct qmsg *m)
{
    if (m->dirty || Q.closing)
        return;
    m->dirty = true;
    iref(m); /* the dirty list's reference, passed on to the status job */
    m->dirty_next = NULL;
    *Q.dirty_tail = m;
    Q.dirty_tail = &m->dirty_next;
    flush_within(Q.status_backoff ? STATUS_RETRY_MS : STATUS_DELAY_MS);
}

static void set_record_header(struct cjob *j, enum rec_type type, uint32_t body_crc,
                              uint64_t body_len)
{
    uint32_t crc = crc32c(0, j->text.data, j->text.len);
    if (body_len)
        crc = rec_crc_combine(crc, body_crc, body_len);
    rec_hdr_encode(j->sj.hdr, type, (uint32_t)(j->text.len + body_len), crc);
    j->sj.text = j->text.data;
    j->sj.text_len = j->text.len;
    j->sj.body_len = body_len;
}

/* A status job for m (taking one of its references), or NULL if even a lean snapshot
 * does not fit a record (tens of thousands of recipients with huge addresses). */
static struct cjob *status_job(struct qmsg *m, enum cjob_kind kind)
{
    struct cjob *j = cjob_new(kind);
    j->m = m;
    m->snap_ms = loop_now_ms();
    if (!encode_snapshot(m, &j->text, &j->final, false)) {
        buf_reset(&j->text);
        if (!encode_snapshot(m, &j->text, &j->final, true)) {
            log_printf(LOG_LVL_ERROR, "event=queue.status_too_large qid=%s rcpts=%zu", m->id,
                       m->nrcpts);
            cjob_free(j);
            return NULL;
        }
    }
    set_record_header(j, REC_STATUS, 0, 0);
    return j;
}

/* Turn the dirty list into status jobs, appended to *list. Unless force, a message with
 * many recipients waits SNAP_BIG_INTERVAL_MS between snapshots: each one holds every
 * recipient, and a crash in between only repeats some deliveries. */
static void take_dirty(struct spool_job **list, bool force)
{
    struct spool_job **tail = list;
    while (*tail)
        tail = &(*tail)->next;
    struct qmsg *keep = NULL, **keep_tail = &keep;
    uint64_t now = loop_now_ms(), wait = UINT64_MAX;
    while (Q.dirty_head) {
        struct qmsg *m = Q.dirty_head;
        Q.dirty_head = m->dirty_next;
        if (!force && m->phase == M_LIVE && m->nrcpts > SNAP_BIG_RCPTS &&
            now - m->snap_ms < SNAP_BIG_INTERVAL_MS) {
            uint64_t left = SNAP_BIG_INTERVAL_MS - (now - m->snap_ms);
            wait = left < wait ? left : wait;
            m->dirty_next = NULL;
            *keep_tail = m;
            keep_tail = &m->dirty_next;
            continue;
        }
        m->dirty = false;
        struct cjob *j = status_job(m, CJ_STATUS); /* takes the dirty list's reference */
        if (j == NULL) {
            if (m->phase == M_FINISHING) {
                m->phase = M_GONE;
                snap_move(m, NULL);
            }
            iunref(m);
            continue;
        }
        *tail = &j->sj;
        tail = &j->sj.next;
    }
    Q.dirty_head = keep;
    Q.dirty_tail = keep ? keep_tail : &Q.dirty_head;
    if (Q.flush_timer) {
        timer_stop(Q.flush_timer);
        if (keep)
            flush_within(wait);
    }
}

static void on_flush(void *arg)
{
    struct spool_job *list = NULL;
    take_dirty(&list, false);
    spool_submit(list);
}

/* ---- DSN decisions, finishing ---- */

static void evaluate_dsn(struct qmsg *m)
{
    if (m->phase != M_LIVE || Q.closing || any_in_flight(m))
        return;
    static const enum dsn_kind kinds[] = {DSN_FAILURE, DSN_DELAY, DSN_SUCCESS};
    uint64_t now = wall_ms();
    for (size_t k = 0; k < ARRAY_LEN(kinds); k++) {
        enum dsn_kind kind = kinds[k];
        uint32_t *idx = NULL;
        size_t n = 0, cap = 0;
        for (size_t i = 0; i < m->nrcpts; i++) {
            if (!m->rs[i].busy[kind] && dsn_owed(m, i, kind, now)) {
                idx = xgrow(idx, &cap, n + 1, sizeof *idx);
                idx[n++] = (uint32_t)i;
                m->rs[i].busy[kind] = true;
            }
        }
        if (n) {
            static const char *const names[] = {[DSN_FAILURE] = "failure", [DSN_DELAY] = "delay",
                                                [DSN_SUCCESS] = "success"};
            log_printf(LOG_LVL_INFO, "event=queue.dsn_due qid=%s kind=%s rcpts=%zu", m->id,
                       names[kind], n);
            if (Q.p.hooks.notify)
                Q.p.hooks.notify(Q.p.hooks.arg, m, kind, idx, n);
            else
                queue_dsn_done(m, kind, idx, n);
        }
        free(idx);
    }
}

static void maybe_finish(struct qmsg *m)
{
    if (m->phase != M_LIVE)
        return;
    for (size_t i = 0; i < m->nrcpts; i++) {
        const struct qrcpt *r = &m->rcpts[i];
        const struct rstate *s = &m->rs[i];
        if (!state_final(r->state) || s->busy[DSN_FAILURE] || s->busy[DSN_SUCCESS] ||
            s->busy[DSN_DELAY] || dsn_owed(m, i, DSN_FAILURE, 0) || dsn_owed(m, i, DSN_SUCCESS, 0))
            return;
    }
    m->phase = M_FINISHING;
    heap_remove(m);
    sched_arm();
    idx_remove(m);
    size_t delivered = 0, failed = 0, deleted = 0;
    for (size_t i = 0; i < m->nrcpts; i++) {
        delivered += m->rcpts[i].state == QR_DELIVERED;
        failed += m->rcpts[i].state == QR_FAILED;
        deleted += m->rcpts[i].state == QR_DELETED;
    }
    log_printf(LOG_LVL_INFO, "event=queue.done qid=%s delivered=%zu failed=%zu deleted=%zu",
               m->id, delivered, failed, deleted);
    mark_dirty(m); /* the final snapshot; the message is gone once it is durable */
    iunref(m);     /* the index's reference */
}

/* After any change: DSNs, schedule, cache, finishing. */
static void settle(struct qmsg *m)
{
    if (m->settling)
        return; /* a hook called back into the queue: the outer settle finishes the job */
    m->settling = true;
    iref(m);
    evaluate_dsn(m);
    if (m->phase == M_LIVE)
        sched_update(m);
    maybe_drop_cache(m);
    m->settling = false;
    maybe_finish(m);
    iunref(m);
}

/* ---- commit ---- */

/* Commits made during one turn of the loop (sessions finishing DATA together, a batch of
 * completions each starting the next message) go to the commit thread as one list: the
 * thread would otherwise wake for the first and sync it alone. The zero-delay timer runs
 * right after the events of the current turn. */
static void on_submit(void *arg)
{
    struct spool_job *list = Q.out_head;
    Q.out_head = NULL;
    Q.out_tail = &Q.out_head;
    take_dirty(&list, false); /* status records ride along with the commits for free */
    spool_submit(list);
}

static void submit_soon(struct cjob *j)
{
    j->sj.next = NULL;
    *Q.out_tail = &j->sj;
    Q.out_tail = &j->sj.next;
    if (!timer_pending(Q.submit_timer))
        timer_arm(Q.submit_timer, 0);
}

static void fail_commit_later(struct cjob *j, const char *why, int err)
{
    log_printf(LOG_LVL_ERROR, "event=queue.commit_failed qid=%s reason=\"%s\"",
               queue_draft_id(j->d), why);
    j->sj.kind = SJ_NONE;
    j->sj.err = err;
    submit_soon(j); /* done(arg, -1) comes back like any other completion */
}

void queue_draft_commit(struct qdraft *d, struct envelope *env,
                        void (*done)(void *arg, int err), void *arg)
{
    if (!Q.open)
        fatal("queue_draft_commit on a closed queue");
    if (Q.closing) {
        /* only from a completion run by queue_close(): no thread left to write it */
        envelope_free(env);
        qdraft_free(d);
        if (done)
            done(arg, -1);
        return;
    }
    struct cjob *j = cjob_new(CJ_COMMIT);
    j->d = d;
    j->done = done;
    j->arg = arg;
    const char *why = NULL;
    if (!qdraft_finish(d))
        why = "content could not be stored";
    else if (env->nrcpts == 0)
        why = "no recipients";
    else if (env->nrcpts > QUEUE_RCPTS_MAX)
        why = "too many recipients";
    else if (idx_find(queue_draft_id(d)))
        why = "duplicate queue id";
    if (why) {
        envelope_free(env);
        fail_commit_later(j, why, EINVAL);
        return;
    }
    uint64_t now = wall_ms();
    if (env->arrival == 0)
        env->arrival = (time_t)(now / 1000);
    struct qmsg *m = msg_new(queue_draft_id(d), env, now);
    m->body_len = queue_draft_size(d);
    m->body_crc = qdraft_crc(d);
    j->m = m;
    if (!rec_msg_encode(&j->text, m->id, m->arrival_ms, env, m->body_len)) {
        j->m = NULL;
        msg_free(m);
        fail_commit_later(j, "envelope too large", EFBIG);
        return;
    }
    set_record_header(j, REC_MESSAGE, m->body_crc, m->body_len);
    if (qdraft_spill_fd(d) >= 0) {
        j->sj.src_fd = qdraft_spill_fd(d);
        j->sj.src_off = 0;
    } else {
        if (Q.cache_used <= Q.p.body_cache_max &&
            m->body_len <= Q.p.body_cache_max - Q.cache_used) {
            m->body_mem = qdraft_join(d);
            Q.cache_used += m->body_len;
        }
        j->sj.iov = qdraft_chunks(d, &j->sj.niov);
    }
    submit_soon(j);
}

static void commit_done(struct cjob *j)
{
    struct qmsg *m = j->m;
    void (*done)(void *, int) = j->done;
    void *arg = j->arg;
    if (j->sj.err || m == NULL) {
        if (m) {
            log_printf(LOG_LVL_ERROR, "event=queue.commit_failed qid=%s size=%llu error=\"%s\"",
                       m->id, (unsigned long long)m->body_len, strerror(j->sj.err));
            msg_free(m);
        }
        qdraft_free(j->d);
        if (done)
            done(arg, -1);
        return;
    }
    struct seg *s = seg_get(j->sj.seg_seq, j->sj.seg_fd);
    m->rec_len = REC_HDR_LEN + j->sj.text_len + m->body_len;
    m->body_off = j->sj.rec_off + REC_HDR_LEN + j->sj.text_len;
    if (s->size < j->sj.rec_off + m->rec_len)
        s->size = j->sj.rec_off + m->rec_len;
    m->body_seg = s;
    body_pin(s, m->rec_len);
    snap_move(m, s);
    idx_insert(m);
    Q.committed++;
    qdraft_free(j->d);
    struct logline l;
    /* debug: smtp.queued (or queue.pickup) already says so at info, with more context */
    log_begin(&l, LOG_LVL_DEBUG, "queue.commit");
    log_str(&l, "qid", m->id);
    log_uint(&l, "size", m->body_len);
    log_uint(&l, "rcpts", m->nrcpts);
    log_str(&l, "from", m->env->sender);
    log_end(&l);
    iref(m);
    if (done)
        done(arg, 0);
    if (!Q.closing && m->phase == M_LIVE)
        dispatch_due(m);
    iunref(m);
}

static void status_done(struct cjob *j)
{
    struct qmsg *m = j->m;
    if (j->sj.err) {
        log_printf(LOG_LVL_ERROR, "event=queue.status_failed qid=%s error=\"%s\"", m->id,
                   strerror(j->sj.err));
        Q.status_backoff = true;
        if (m->phase != M_GONE)
            mark_dirty(m);
    } else {
        Q.status_backoff = false;
        struct seg *s = seg_get(j->sj.seg_seq, j->sj.seg_fd);
        if (s->size < j->sj.rec_off + REC_HDR_LEN + j->sj.text_len)
            s->size = j->sj.rec_off + REC_HDR_LEN + j->sj.text_len;
        if (j->final && m->phase == M_FINISHING) {
            m->phase = M_GONE; /* nothing on disk keeps it alive any more */
            snap_move(m, NULL);
        } else if (m->phase != M_GONE) {
            snap_move(m, s);
        }
    }
    iunref(m);
}

/* ---- compaction and retirement ---- */

static bool idle_for_compaction(const struct qmsg *m)
{
    if (m->phase != M_LIVE || m->compacting || m->next_seg || m->dirty || any_in_flight(m))
        return false;
    for (size_t i = 0; i < m->nrcpts; i++)
        if (m->rs[i].busy[0] || m->rs[i].busy[1] || m->rs[i].busy[2])
            return false;
    return true;
}

/* Re-append m's content and current snapshot to the active segment. */
static void compact(struct qmsg *m)
{
    struct cjob *mj = cjob_new(CJ_COMPACT_MSG);
    mj->m = m;
    iref(m);
    if (!rec_msg_encode(&mj->text, m->id, m->arrival_ms, m->env, m->body_len))
        fatal("envelope of %s no longer fits", m->id);
    set_record_header(mj, REC_MESSAGE, m->body_crc, m->body_len);
    if (m->body_mem) {
        mj->iov1.iov_base = m->body_mem;
        mj->iov1.iov_len = m->body_len;
        mj->sj.iov = &mj->iov1;
        mj->sj.niov = 1;
    } else {
        mj->sj.src_fd = m->body_seg->fd;
        mj->sj.src_off = m->body_off;
    }
    iref(m);
    struct cjob *sj = status_job(m, CJ_COMPACT_STATUS);
    if (sj == NULL) {
        iunref(m);
        iunref(m);
        cjob_free(mj);
        return;
    }
    mj->sj.next = &sj->sj; /* one list: both go into the same batch */
    m->compacting = true;
    m->cmp_seg = NULL;
    log_printf(LOG_LVL_INFO, "event=queue.compact qid=%s from_seg=%u size=%llu", m->id,
               m->body_seg->seq, (unsigned long long)m->body_len);
    spool_submit(&mj->sj);
}

static void compact_done(struct cjob *j)
{
    struct qmsg *m = j->m;
    if (j->kind == CJ_COMPACT_MSG) {
        if (j->sj.err == 0) {
            m->cmp_seg = seg_get(j->sj.seg_seq, j->sj.seg_fd);
            m->cmp_rec_len = REC_HDR_LEN + j->sj.text_len + m->body_len;
            m->cmp_off = j->sj.rec_off + REC_HDR_LEN + j->sj.text_len;
            if (m->cmp_seg->size < j->sj.rec_off + m->cmp_rec_len)
                m->cmp_seg->size = j->sj.rec_off + m->cmp_rec_len;
        }
        iunref(m);
        return;
    }
    m->compacting = false;
    if (j->sj.err == 0 && m->cmp_seg && m->phase == M_LIVE) {
        struct seg *s = seg_get(j->sj.seg_seq, j->sj.seg_fd);
        snap_move(m, s);
        body_pin(m->cmp_seg, m->cmp_rec_len);
        m->next_seg = m->cmp_seg;
        m->next_off = m->cmp_off;
        m->next_rec_len = m->cmp_rec_len;
        apply_next_seg(m);
    } else if (j->sj.err) {
        log_printf(LOG_LVL_WARN, "event=queue.compact_failed qid=%s error=\"%s\"", m->id,
                   strerror(j->sj.err));
    }
    m->cmp_seg = NULL;
    iunref(m);
}

static void retire_done(struct cjob *j)
{
    struct seg *s = j->seg;
    if (j->sj.err) {
        log_printf(LOG_LVL_ERROR, "event=queue.segment.retire_failed seg=%u error=\"%s\"", s->seq,
                   strerror(j->sj.err));
        s->retiring = false;
        return;
    }
    log_printf(LOG_LVL_INFO, "event=queue.segment.retired seg=%u%s", s->seq,
               s->damaged ? " kept=damaged" : "");
    struct seg **pp = &Q.segs;
    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    free(s);
}

static void maint_soon(void)
{
    if (Q.maint_timer && !Q.closing)
        timer_arm(Q.maint_timer, 0);
}

static void on_maint(void *arg)
{
    if (Q.closing)
        return;
    /* the newest segment the loop knows of stands for the active one: the commit thread
     * may have started a newer one, which only makes this more careful */
    struct seg *newest = Q.segs;
    while (newest && newest->next)
        newest = newest->next;
    uint32_t active = newest ? newest->seq : 0;
    struct spool_job *list = NULL, **tail = &list;
    struct seg *s = Q.segs;
    /* oldest first, and stop at the first one still in use */
    for (; s && s->seq < active; s = s->next) {
        if (s->retiring)
            continue;
        if (s->pins > 0)
            break;
        struct cjob *j = cjob_new(CJ_RETIRE);
        j->seg = s;
        j->sj.kind = SJ_RETIRE;
        j->sj.seq = s->seq;
        j->sj.fd = s->fd;
        j->sj.keep_aside = s->damaged;
        s->retiring = true;
        *tail = &j->sj;
        tail = &j->sj.next;
    }
    spool_submit(list);
    if (s == NULL || s->seq >= active)
        return;
    /* s is the oldest segment still in use: move its messages on when little of it is
     * live (or it is damaged), so it and the ones after it can go. The walk over the
     * index runs at most once per MAINT_EVERY_MS. */
    uint64_t now = loop_now_ms();
    if ((s->damaged || s->live * 2 <= s->size) && now >= Q.next_compact_ms) {
        Q.next_compact_ms = now + MAINT_EVERY_MS;
        for (struct qmsg *m = Q.first; m; m = m->next) {
            if ((m->body_seg == s || m->snap_seg == s) && idle_for_compaction(m))
                compact(m);
        }
    }
    timer_arm(Q.maint_timer, MAINT_EVERY_MS);
}

/* ---- completions ---- */

static void on_spool_done(struct spool_job *list)
{
    while (list) {
        struct cjob *j = (struct cjob *)list;
        list = list->next;
        if (j->sj.kind == SJ_RECORD && j->sj.seg_seq)
            seg_get(j->sj.seg_seq, j->sj.seg_fd); /* known even if nothing in it succeeded */
        switch (j->kind) {
        case CJ_COMMIT:
            commit_done(j);
            break;
        case CJ_STATUS:
            status_done(j);
            break;
        case CJ_COMPACT_MSG:
        case CJ_COMPACT_STATUS:
            compact_done(j);
            break;
        case CJ_RETIRE:
            retire_done(j);
            break;
        case CJ_UNLINK:
            if (j->done)
                j->done(j->arg, j->sj.err);
            break;
        }
        cjob_free(j);
    }
}

void queue_unlink_after_commits(int dirfd, const char *name, void (*done)(void *arg, int err),
                                void *arg)
{
    if (Q.closing) {
        done(arg, ECANCELED); /* the file stays; the next start sees it is queued already */
        return;
    }
    struct cjob *j = cjob_new(CJ_UNLINK);
    j->sj.kind = SJ_UNLINK;
    j->sj.dirfd = dirfd;
    snprintf(j->sj.name, sizeof j->sj.name, "%s", name);
    j->done = done;
    j->arg = arg;
    spool_submit(&j->sj);
}

/* ---- recovery ---- */

struct recovery {
    struct seg *seg;
    char max_id[QID_MAX];
    size_t records, bad;
};

/* Replace m's recipients by a snapshot's. false if the snapshot does not fit m. */
static bool apply_snapshot(struct qmsg *m, struct rec_status *st)
{
    if (st->n < m->env->nrcpts || st->n > QUEUE_RCPTS_MAX)
        return false;
    for (size_t i = 0; i < m->env->nrcpts; i++)
        if (strcmp(st->rcpts[i].addr, m->env->rcpts[i].addr) != 0)
            return false;
    for (size_t i = 0; i < m->nrcpts; i++)
        rcpt_strings_free(&m->rcpts[i]);
    m->nrcpts = 0;
    m->rcpts = xgrow(m->rcpts, &m->rcap, st->n, sizeof *m->rcpts);
    m->rs = xrealloc(m->rs, m->rcap * sizeof *m->rs);
    for (size_t i = 0; i < st->n; i++) {
        struct rec_rcpt *w = &st->rcpts[i];
        struct qrcpt *r = &m->rcpts[i];
        memset(r, 0, sizeof *r);
        memset(&m->rs[i], 0, sizeof m->rs[i]);
        r->addr = w->addr;
        r->orcpt = w->orcpt;
        r->status = w->status;
        r->remote_mta = w->mta;
        r->last_reply = w->reply;
        w->addr = w->orcpt = w->status = w->mta = w->reply = NULL; /* moved */
        r->notify = w->notify;
        r->state = w->state;
        r->parent = w->parent;
        r->attempts = w->attempts;
        r->first_attempt = (time_t)w->first_attempt;
        r->next_attempt = (time_t)(w->next_ms / 1000);
        r->delay_warned = w->delay_warned;
        r->dsn_sent = w->dsn_sent;
        r->relayed = w->relayed;
        m->rs[i].due_ms = w->next_ms;
    }
    m->nrcpts = st->n;
    m->held = st->held;
    return true;
}

/* A record whose checksum holds but whose payload does not parse (a bug, or a format from
 * the future): logged, and its segment is kept aside once nothing live is left in it. */
static void bad_record(struct recovery *rc, const struct spool_rec *r, const char *type,
                       enum rec_err e, const char *why)
{
    struct logline l;
    log_begin(&l, LOG_LVL_ERROR, "queue.recover.bad_record");
    log_uint(&l, "seg", r->seq);
    log_uint(&l, "offset", r->off);
    log_str(&l, "type", type);
    log_str(&l, "error", rec_err_name(e));
    log_str(&l, "reason", why);
    log_end(&l);
    rc->seg->damaged = true;
    rc->bad++;
}

static void recover_message(struct recovery *rc, const struct spool_rec *r)
{
    char err[160] = "";
    struct rec_msg rm;
    enum rec_err e = REC_TOO_LONG;
    if (r->text)
        e = rec_msg_decode(r->text, r->text_len, r->hdr.len, &rm, err, sizeof err);
    if (e != REC_OK) {
        bad_record(rc, r, "message", e, err);
        return;
    }
    uint64_t rec_len = REC_HDR_LEN + r->hdr.len;
    uint64_t body_off = r->off + REC_HDR_LEN + rm.text_len;
    uint32_t text_crc = crc32c(0, r->text, rm.text_len);
    if (strcmp(rm.id, rc->max_id) > 0)
        snprintf(rc->max_id, sizeof rc->max_id, "%s", rm.id);
    struct qmsg *m = idx_find(rm.id);
    if (m) {
        /* a compaction copy: the content now lives here; the state stays as it is until
         * the snapshot that follows it */
        body_pin(rc->seg, rec_len);
        body_unpin(m->body_seg, m->rec_len);
        m->body_seg = rc->seg;
        m->body_off = body_off;
        m->rec_len = rec_len;
        rec_msg_free(&rm);
        return;
    }
    m = msg_new(rm.id, envelope_move(&rm.env), rm.arrival_ms);
    m->body_len = rm.body_len;
    /* crc(body) from crc(text||body) and crc(text): combining is reversible this way */
    m->body_crc = rec_crc_combine(text_crc, r->hdr.crc, rm.body_len);
    m->body_seg = rc->seg;
    m->body_off = body_off;
    m->rec_len = rec_len;
    body_pin(rc->seg, rec_len);
    snap_move(m, rc->seg);
    idx_insert(m);
}

static void recover_status(struct recovery *rc, const struct spool_rec *r)
{
    char err[160] = "";
    struct rec_status st;
    enum rec_err e = r->text ? rec_status_decode(r->text, r->text_len, &st, err, sizeof err)
                             : REC_TOO_LONG;
    if (e != REC_OK) {
        bad_record(rc, r, "status", e, err);
        return;
    }
    struct qmsg *m = idx_find(st.id);
    if (m == NULL) {
        /* its content was retired with its segment: the message finished long ago */
        rec_status_free(&st);
        return;
    }
    if (!apply_snapshot(m, &st)) {
        log_printf(LOG_LVL_ERROR,
                   "event=queue.recover.bad_record qid=%s seg=%u offset=%llu type=status "
                   "reason=\"recipients do not match the message\"",
                   m->id, r->seq, (unsigned long long)r->off);
        rc->seg->damaged = true;
        rc->bad++;
    } else {
        snap_move(m, rc->seg);
    }
    rec_status_free(&st);
    /* finished on disk: drop it (a later record for it cannot exist) */
    bool fin = true;
    for (size_t i = 0; i < m->nrcpts && fin; i++)
        fin = state_final(m->rcpts[i].state) && !dsn_owed(m, i, DSN_FAILURE, 0) &&
              !dsn_owed(m, i, DSN_SUCCESS, 0);
    if (fin) {
        idx_remove(m);
        iunref(m);
    }
}

static void recover_record(void *arg, const struct spool_rec *r)
{
    struct recovery *rc = arg;
    rc->records++;
    if (r->hdr.type == REC_MESSAGE) {
        recover_message(rc, r);
    } else if (r->hdr.type == REC_STATUS) {
        recover_status(rc, r);
    } else if (r->hdr.type == REC_SEGMENT) {
        uint32_t seq;
        time_t created;
        if (r->text == NULL || rec_segment_decode(r->text, r->text_len, &seq, &created) != REC_OK ||
            seq != rc->seg->seq)
            log_printf(LOG_LVL_WARN, "event=queue.recover.segment_mismatch seg=%u", rc->seg->seq);
    }
}

static int recover(char *err, size_t errlen, uint32_t *next_seq)
{
    uint32_t *seqs;
    size_t n;
    if (spool_list(Q.qdirfd, &seqs, &n) != 0) {
        snprintf(err, errlen, "cannot list %s/queue: %s", Q.spool_dir, strerror(errno));
        return -1;
    }
    struct recovery rc = {.max_id = ""};
    uint64_t truncated = 0;
    size_t damaged = 0;
    for (size_t i = 0; i < n; i++) {
        char name[64];
        spool_seg_name(name, sizeof name, seqs[i]);
        int fd = openat(Q.qdirfd, name, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open %s: %s", name, strerror(errno));
            free(seqs);
            return -1;
        }
        rc.seg = seg_add(seqs[i], fd);
        struct spool_scan sc;
        if (spool_scan(fd, seqs[i], i + 1 == n, recover_record, &rc, &sc) != 0) {
            snprintf(err, errlen, "cannot read %s: %s", name, strerror(errno));
            free(seqs);
            return -1;
        }
        rc.seg->size = sc.size;
        if (sc.damaged)
            rc.seg->damaged = true;
        truncated += sc.truncated;
        damaged += rc.seg->damaged;
    }
    *next_seq = n ? seqs[n - 1] + 1 : 1;
    free(seqs);
    if (rc.max_id[0])
        qid_seed(rc.max_id);
    log_printf(LOG_LVL_INFO,
               "event=queue.recover messages=%zu segments=%zu records=%zu truncated=%llu "
               "damaged_segments=%zu bad_records=%zu",
               Q.count, n, rc.records, (unsigned long long)truncated, damaged, rc.bad);
    return 0;
}

/* Every live message, each with an internal reference: callbacks may change the index
 * (delete, finish) while a caller walks it. */
static struct qmsg **live_messages(size_t *n)
{
    struct qmsg **v = xmalloc((Q.count ? Q.count : 1) * sizeof *v);
    size_t k = 0;
    for (struct qmsg *m = Q.first; m; m = m->next) {
        iref(m);
        v[k++] = m;
    }
    *n = k;
    return v;
}

static void for_all(void (*op)(struct qmsg *m))
{
    size_t n;
    struct qmsg **v = live_messages(&n);
    for (size_t i = 0; i < n; i++) {
        op(v[i]);
        iunref(v[i]);
    }
    free(v);
}

/* After start: DSNs owed from before the restart, and every unfinished recipient. */
static void on_start(void *arg)
{
    for_all(settle);
}

/* ---- open, close, parameters ---- */

static void copy_params(const struct queue_params *p)
{
    free(Q.retry);
    Q.retry = NULL;
    Q.p = *p;
    if (p->nretry) {
        Q.retry = xmalloc(p->nretry * sizeof *Q.retry);
        memcpy(Q.retry, p->retry_ms, p->nretry * sizeof *Q.retry);
    }
    Q.p.retry_ms = Q.retry;
    Q.p.spool_dir = Q.spool_dir;
}

static uint64_t maildrop_max(void)
{
    uint64_t lim = Q.p.message_size_limit ? Q.p.message_size_limit : DEFAULT_SIZE_LIMIT;
    return 2 * lim + (64u << 10);
}

void queue_set_params(const struct queue_params *p)
{
    copy_params(p);
    spool_set_seg_max(p->segment_max);
    pickup_set_max(maildrop_max());
}

static void release_all(void)
{
    /* the live index, then whatever the dirty list still holds */
    while (Q.first) {
        struct qmsg *m = Q.first;
        for (size_t i = 0; i < m->nrcpts; i++) {
            if (m->rcpts[i].in_flight) {
                m->rcpts[i].in_flight = false;
                iunref(m); /* deliveries still running must not report after this */
            }
        }
        idx_remove(m);
        heap_remove(m);
        m->phase = M_GONE;
        iunref(m);
    }
    while (Q.dirty_head) {
        struct qmsg *m = Q.dirty_head;
        Q.dirty_head = m->dirty_next;
        m->dirty = false;
        iunref(m);
    }
    Q.dirty_tail = &Q.dirty_head;
    while (Q.segs) {
        struct seg *s = Q.segs;
        Q.segs = s->next;
        close(s->fd);
        free(s);
    }
    free(Q.buckets);
    free(Q.heap);
    Q.buckets = NULL;
    Q.heap = NULL;
    Q.nbuckets = Q.count = Q.heap_n = Q.heap_cap = 0;
    timer_free(Q.sched_timer);
    timer_free(Q.flush_timer);
    timer_free(Q.maint_timer);
    timer_free(Q.start_timer);
    timer_free(Q.submit_timer);
    Q.sched_timer = Q.flush_timer = Q.maint_timer = Q.start_timer = Q.submit_timer = NULL;
    if (Q.dropdirfd >= 0)
        close(Q.dropdirfd);
    if (Q.qdirfd >= 0)
        close(Q.qdirfd);
    if (Q.lockfd >= 0)
        close(Q.lockfd);
    qdraft_set_dir(-1);
    free(Q.retry);
    free(Q.spool_dir);
    Q.retry = NULL;
    Q.spool_dir = NULL;
}

int queue_open(const struct queue_params *p, char *err, size_t errlen)
{
    if (Q.open)
        fatal("queue_open called twice");
    memset(&Q, 0, sizeof Q);
    Q.qdirfd = Q.dropdirfd = Q.lockfd = -1;
    Q.dirty_tail = &Q.dirty_head;
    Q.out_tail = &Q.out_head;
    if (p->spool_dir == NULL || p->spool_dir[0] == '\0') {
        snprintf(err, errlen, "no spool folder");
        return -1;
    }
    Q.spool_dir = xstrdup(p->spool_dir);
    copy_params(p);
    char *qpath = xasprintf("%s/queue", Q.spool_dir);
    char *dpath = xasprintf("%s/%s", Q.spool_dir, MAILDROP_DIR);
    int rc = -1;
    uint32_t next_seq = 1;
    /* the spool is searchable by all (local users drop mail in maildrop/); the queue is
     * ours alone; maildrop's mode is explained in maildrop.h (and enforced at every start,
     * so a spool made by an older version is corrected) */
    if (fs_mkdirs_at(AT_FDCWD, Q.spool_dir, 0711) != 0 ||
        fs_mkdirs_at(AT_FDCWD, qpath, 0700) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", qpath, strerror(errno));
        goto out;
    }
    if (fs_mkdirs_at(AT_FDCWD, dpath, 0700) != 0 || chmod(dpath, MAILDROP_MODE) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", dpath, strerror(errno));
        goto out;
    }
    Q.qdirfd = open(qpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    Q.dropdirfd = open(dpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (Q.qdirfd < 0 || Q.dropdirfd < 0) {
        snprintf(err, errlen, "cannot open the spool: %s", strerror(errno));
        goto out;
    }
    Q.lockfd = openat(Q.qdirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (Q.lockfd < 0 || flock(Q.lockfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "%s is in use by another process (%s)", qpath, strerror(errno));
        goto out;
    }
    qdraft_set_dir(Q.qdirfd);
    if (recover(err, errlen, &next_seq) != 0)
        goto out;
    if (spool_init(Q.qdirfd, next_seq, p->segment_max) != 0) {
        snprintf(err, errlen, "cannot create segment %u in %s: %s", next_seq, qpath,
                 strerror(errno));
        goto out;
    }
    seg_add(spool_active_seq(), spool_active_fd());
    spool_start(on_spool_done);
    Q.sched_timer = timer_new(on_sched, NULL);
    Q.flush_timer = timer_new(on_flush, NULL);
    Q.maint_timer = timer_new(on_maint, NULL);
    Q.start_timer = timer_new(on_start, NULL);
    Q.submit_timer = timer_new(on_submit, NULL);
    timer_arm(Q.start_timer, 0);
    timer_arm(Q.maint_timer, 0);
    pickup_open(dpath, Q.dropdirfd, maildrop_max());
    Q.open = true;
    rc = 0;
out:
    if (rc != 0)
        release_all();
    free(qpath);
    free(dpath);
    return rc;
}

void queue_close(void)
{
    if (!Q.open)
        return;
    pickup_close();
    /* the last snapshots, then let the commit thread finish everything */
    timer_stop(Q.submit_timer);
    on_submit(NULL);
    struct spool_job *list = NULL;
    take_dirty(&list, true);
    spool_submit(list);
    Q.closing = true;
    spool_stop();
    release_all();
    Q.open = false;
    Q.closing = false;
}

bool queue_space_ok(void)
{
    if (!Q.open)
        return false;
    uint64_t now = loop_now_ms();
    if (Q.space_checked_ms == 0 || now - Q.space_checked_ms >= SPACE_CHECK_MS) {
        unsigned long long freeb;
        Q.space_ok = fs_free_bytes(Q.qdirfd, &freeb) == 0 && freeb >= Q.p.min_free_space;
        Q.space_checked_ms = now ? now : 1;
    }
    return Q.space_ok;
}

/* ---- message accessors ---- */

const char *qmsg_id(const struct qmsg *m)
{
    return m->id;
}

const struct envelope *qmsg_envelope(const struct qmsg *m)
{
    return m->env;
}

size_t qmsg_size(const struct qmsg *m)
{
    return (size_t)m->body_len;
}

bool qmsg_held(const struct qmsg *m)
{
    return m->held;
}

size_t qmsg_nrcpts(const struct qmsg *m)
{
    return m->nrcpts;
}

const struct qrcpt *qmsg_rcpt(const struct qmsg *m, uint32_t i)
{
    if (i >= m->nrcpts)
        fatal("qmsg %s: recipient %u of %zu", m->id, i, m->nrcpts);
    return &m->rcpts[i];
}

void qmsg_body(struct qmsg *m, struct qbody *out)
{
    memset(out, 0, sizeof *out);
    out->len = (size_t)m->body_len;
    out->fd = -1;
    if (m->body_mem) {
        out->mem = m->body_mem;
    } else {
        out->fd = m->body_seg->fd;
        out->off = m->body_off;
    }
}

int qbody_read(const struct qbody *b, void *buf, size_t len, uint64_t off)
{
    if (off > b->len || len > b->len - off) {
        errno = EINVAL;
        return -1;
    }
    if (b->mem) {
        memcpy(buf, b->mem + off, len);
        return 0;
    }
    return fs_pread_all(b->fd, buf, len, (off_t)(b->off + off));
}

/* ---- delivery results ---- */

static uint64_t retry_delay(uint32_t attempts)
{
    if (Q.p.nretry == 0)
        return DEFAULT_RETRY_MS;
    size_t k = attempts ? attempts - 1 : 0;
    uint64_t d = Q.p.retry_ms[k < Q.p.nretry - 1 ? k : Q.p.nretry - 1];
    return d ? d : 1; /* always in the future, so one timer run cannot loop forever */
}

void queue_report(struct qmsg *m, uint32_t i, const struct delivery_result *res)
{
    if (i >= m->nrcpts)
        fatal("queue_report: %s has no recipient %u", m->id, i);
    struct qrcpt *r = &m->rcpts[i];
    bool was_in_flight = r->in_flight;
    r->in_flight = false;
    if (state_final(r->state) || m->phase != M_LIVE) {
        settle(m); /* deleted meanwhile: the outcome no longer matters */
        if (was_in_flight)
            iunref(m);
        return;
    }
    uint64_t now = wall_ms();
    r->attempts++;
    if (r->first_attempt == 0)
        r->first_attempt = (time_t)(now / 1000);
    set_str(&r->status, res->status, FIELD_MAX);
    set_str(&r->last_reply, res->diagnostic, DIAG_MAX);
    set_str(&r->remote_mta, res->remote_mta, FIELD_MAX);
    const char *result = "ok";
    switch (res->kind) {
    case DELIVERY_OK:
        r->state = QR_DELIVERED;
        r->relayed = res->relayed;
        Q.delivered++;
        break;
    case DELIVERY_PERM:
        r->state = QR_FAILED;
        result = "failed";
        Q.failed++;
        break;
    case DELIVERY_TEMP:
        Q.deferred_attempts++;
        if (now >= m->arrival_ms + Q.p.queue_lifetime_ms) {
            /* expired: fail, keeping the temporary status code and the last reply */
            r->state = QR_FAILED;
            result = "expired";
            Q.failed++;
        } else {
            r->state = QR_DEFERRED;
            m->rs[i].due_ms = now + retry_delay(r->attempts);
            r->next_attempt = (time_t)(m->rs[i].due_ms / 1000);
            result = "deferred";
        }
        break;
    }
    struct logline l;
    /* debug: the delivery agents log each attempt at info (deliver.local, deliver.remote) */
    log_begin(&l, LOG_LVL_DEBUG, "queue.report");
    log_str(&l, "qid", m->id);
    log_str(&l, "rcpt", r->addr);
    log_str(&l, "result", result);
    log_str(&l, "status", r->status);
    log_uint(&l, "attempts", r->attempts);
    if (r->state == QR_DEFERRED)
        log_uint(&l, "retry_in_ms", m->rs[i].due_ms - now);
    log_str(&l, "relay", r->remote_mta);
    log_str(&l, "diag", r->last_reply);
    log_end(&l);
    mark_dirty(m);
    settle(m);
    if (was_in_flight)
        iunref(m); /* dispatch_due's reference */
}

/* xtext (RFC 3461 section 4) of an address, for a synthesised ORCPT */
static char *orcpt_of(const char *addr)
{
    static const char hex[] = "0123456789ABCDEF";
    struct buf b = BUF_INIT(4096);
    buf_adds(&b, "rfc822;");
    for (const unsigned char *p = (const unsigned char *)addr; *p; p++) {
        if (*p >= 0x21 && *p <= 0x7e && *p != '+' && *p != '=') {
            if (!buf_addc(&b, (char)*p))
                break;
        } else {
            char e[3] = {'+', hex[*p >> 4], hex[*p & 15]};
            if (!buf_add(&b, e, 3))
                break;
        }
    }
    size_t len;
    return buf_steal(&b, &len);
}

uint32_t queue_expand(struct qmsg *m, uint32_t parent, const char *const *addrs, size_t n)
{
    if (parent >= m->nrcpts)
        fatal("queue_expand: %s has no recipient %u", m->id, parent);
    struct qrcpt *p = &m->rcpts[parent];
    if (m->phase != M_LIVE || state_final(p->state)) {
        log_printf(LOG_LVL_WARN, "event=queue.expand_refused qid=%s rcpt=%u reason=final", m->id,
                   parent);
        return QRCPT_NO_PARENT;
    }
    if (n > QUEUE_RCPTS_MAX - m->nrcpts) {
        struct delivery_result res = {
            .kind = DELIVERY_PERM,
            .status = "5.3.4",
            .diagnostic = "x-tern; too many recipients after alias expansion",
        };
        queue_report(m, parent, &res);
        return QRCPT_NO_PARENT;
    }
    bool was_in_flight = p->in_flight;
    p->in_flight = false;
    uint32_t first = (uint32_t)m->nrcpts;
    char *orcpt = p->orcpt ? xstrdup(p->orcpt) : orcpt_of(p->addr);
    unsigned notify = p->notify;
    if (n > 1)
        notify &= ~DSN_NOTIFY_SUCCESS; /* the parent's "expanded" DSN answers the request */
    m->rcpts = xgrow(m->rcpts, &m->rcap, m->nrcpts + n, sizeof *m->rcpts);
    m->rs = xrealloc(m->rs, m->rcap * sizeof *m->rs);
    p = &m->rcpts[parent]; /* the array may have moved */
    for (size_t k = 0; k < n; k++) {
        struct qrcpt *r = &m->rcpts[m->nrcpts];
        memset(r, 0, sizeof *r);
        memset(&m->rs[m->nrcpts], 0, sizeof *m->rs);
        r->addr = xstrdup(addrs[k]);
        r->orcpt = xstrdup(orcpt);
        r->notify = notify;
        r->parent = parent;
        r->state = QR_PENDING;
        m->nrcpts++;
    }
    free(orcpt);
    p->state = QR_EXPANDED;
    if (n == 1)
        p->dsn_sent = true; /* forwarding: the one target carries the request on */
    log_printf(LOG_LVL_INFO, "event=queue.expand qid=%s rcpt=%u targets=%zu", m->id, parent, n);
    mark_dirty(m);
    /* the new recipients go out from the scheduler, not from inside the caller's hook */
    settle(m);
    if (was_in_flight)
        iunref(m); /* dispatch_due's reference */
    return first;
}

void queue_dsn_done(struct qmsg *m, enum dsn_kind kind, const uint32_t *rcpts, size_t n)
{
    if ((unsigned)kind > DSN_SUCCESS)
        fatal("queue_dsn_done: unknown kind %d", (int)kind);
    for (size_t k = 0; k < n; k++) {
        if (rcpts[k] >= m->nrcpts)
            fatal("queue_dsn_done: %s has no recipient %u", m->id, rcpts[k]);
        struct qrcpt *r = &m->rcpts[rcpts[k]];
        m->rs[rcpts[k]].busy[kind] = false;
        if (kind == DSN_DELAY)
            r->delay_warned = true;
        else
            r->dsn_sent = true;
    }
    mark_dirty(m);
    settle(m);
}

/* ---- operator commands ---- */

struct qmsg *queue_find(const char *id)
{
    return idx_find(id);
}

void queue_foreach(void (*cb)(void *arg, struct qmsg *m), void *arg)
{
    size_t n;
    struct qmsg **v = live_messages(&n);
    for (size_t i = 0; i < n; i++) {
        if (v[i]->phase == M_LIVE)
            cb(arg, v[i]);
        iunref(v[i]);
    }
    free(v);
}

/* Run op on one message (id) or on all (NULL); -1 if the id is unknown. */
static int for_ids(const char *id, void (*op)(struct qmsg *m))
{
    if (id) {
        struct qmsg *m = idx_find(id);
        if (m == NULL)
            return -1;
        iref(m);
        op(m);
        iunref(m);
        return 0;
    }
    for_all(op);
    return 0;
}

static void op_flush(struct qmsg *m)
{
    uint64_t now = wall_ms();
    for (size_t i = 0; i < m->nrcpts; i++) {
        if (m->rcpts[i].state == QR_DEFERRED && !m->rcpts[i].in_flight) {
            m->rs[i].due_ms = now;
            m->rcpts[i].next_attempt = (time_t)(now / 1000);
        }
    }
    dispatch_due(m);
}

static void op_delete(struct qmsg *m)
{
    for (size_t i = 0; i < m->nrcpts; i++)
        if (!state_final(m->rcpts[i].state))
            m->rcpts[i].state = QR_DELETED;
    log_printf(LOG_LVL_INFO, "event=queue.delete qid=%s", m->id);
    mark_dirty(m);
    settle(m);
}

static void op_hold(struct qmsg *m)
{
    if (m->held)
        return;
    m->held = true;
    log_printf(LOG_LVL_INFO, "event=queue.hold qid=%s", m->id);
    mark_dirty(m);
    sched_update(m);
}

static void op_release(struct qmsg *m)
{
    if (!m->held)
        return;
    m->held = false;
    log_printf(LOG_LVL_INFO, "event=queue.release qid=%s", m->id);
    mark_dirty(m);
    dispatch_due(m);
}

int queue_flush(const char *id)
{
    return for_ids(id, op_flush);
}

int queue_delete(const char *id)
{
    return for_ids(id, op_delete);
}

int queue_hold(const char *id)
{
    return for_ids(id, op_hold);
}

int queue_release(const char *id)
{
    return for_ids(id, op_release);
}

void queue_get_stats(struct queue_stats *s)
{
    memset(s, 0, sizeof *s);
    for (struct qmsg *m = Q.first; m; m = m->next) {
        s->messages++;
        s->held += m->held;
        s->bytes += m->body_len;
        for (size_t i = 0; i < m->nrcpts; i++) {
            s->recipients_pending += m->rcpts[i].state == QR_PENDING;
            s->recipients_deferred += m->rcpts[i].state == QR_DEFERRED;
        }
    }
    s->committed = Q.committed;
    s->delivered = Q.delivered;
    s->failed = Q.failed;
    s->deferred_attempts = Q.deferred_attempts;
    spool_counters(&s->fsyncs, &s->commit_batches);
}
