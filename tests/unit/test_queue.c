/* LDWRAP: -Wl,--wrap=fdatasync,--wrap=writev,--wrap=pwrite */
/*
 * test_queue: the durable queue (queue/queue, spool, draft) driven with a real event loop in
 * a temporary folder: commit and immediate dispatch, delivery reports and the retry
 * schedule, expiry, DSN decisions (failure, delay, success, relayed, expanded), alias
 * expansion, hold/release/flush/delete, statistics and group commit; recovery after a
 * clean stop, after a "crash" (a copy of the spool taken while it runs), with the last
 * segment cut at every byte of its last record (and zero-filled or garbage tails), with a
 * damaged record in the middle; failure DSN ordering across a crash; compaction and
 * segment retirement; large (spilled) content read from another thread; and faults
 * injected into fdatasync and writev with the linker's --wrap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/crc32c.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "queue/qid.h"
#include "queue/queue.h"
#include "queue/record.h"
#include "queue/spool.h"

/* ---- fault injection ---- */

int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
ssize_t __real_writev(int fd, const struct iovec *iov, int n);
ssize_t __wrap_writev(int fd, const struct iovec *iov, int n);

ssize_t __real_pwrite(int fd, const void *p, size_t n, off_t off);
ssize_t __wrap_pwrite(int fd, const void *p, size_t n, off_t off);

/* how many of the next calls fail (pwrite: only spool's zeros ahead of the records use it) */
static _Atomic int fail_fdatasync, fail_writev, fail_pwrite;

ssize_t __wrap_pwrite(int fd, const void *p, size_t n, off_t off)
{
    if (atomic_load(&fail_pwrite) > 0) {
        atomic_fetch_sub(&fail_pwrite, 1);
        errno = ENOSPC;
        return -1;
    }
    return __real_pwrite(fd, p, n, off);
}

int __wrap_fdatasync(int fd)
{
    if (atomic_load(&fail_fdatasync) > 0) {
        atomic_fetch_sub(&fail_fdatasync, 1);
        errno = EIO;
        return -1;
    }
    return __real_fdatasync(fd);
}

ssize_t __wrap_writev(int fd, const struct iovec *iov, int n)
{
    if (atomic_load(&fail_writev) > 0) {
        atomic_fetch_sub(&fail_writev, 1);
        errno = ENOSPC;
        return -1;
    }
    return __real_writev(fd, iov, n);
}

/* ---- what the hooks saw ---- */

#define MAX_EV 8192

struct disp {
    char id[QID_MAX];
    uint32_t rcpt;
};
struct note {
    char id[QID_MAX];
    enum dsn_kind kind;
    uint32_t rcpts[16];
    size_t n;
    bool relayed[16];
    enum qrcpt_state state[16];
};

static struct {
    struct disp disp[MAX_EV];
    size_t ndisp;
    struct note note[256];
    size_t nnote;
    bool auto_dsn_done;
    int auto_report; /* -1, or a delivery_kind reported from inside the dispatch hook */
} T;

static void h_dispatch(void *arg, struct qmsg *m, const uint32_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        assert_true(T.ndisp < MAX_EV);
        snprintf(T.disp[T.ndisp].id, QID_MAX, "%s", qmsg_id(m));
        T.disp[T.ndisp++].rcpt = r[i];
        assert_true(qmsg_rcpt(m, r[i])->in_flight);
    }
    if (T.auto_report >= 0) {
        struct delivery_result res = {.kind = (enum delivery_kind)T.auto_report,
                                      .status = T.auto_report == DELIVERY_OK ? "2.0.0" : "4.0.0",
                                      .diagnostic = "x-test; auto"};
        for (size_t i = 0; i < n; i++)
            queue_report(m, r[i], &res);
    }
}

static void h_notify(void *arg, struct qmsg *m, enum dsn_kind kind, const uint32_t *r, size_t n)
{
    assert_true(T.nnote < 256);
    struct note *x = &T.note[T.nnote++];
    snprintf(x->id, QID_MAX, "%s", qmsg_id(m));
    x->kind = kind;
    x->n = n;
    for (size_t i = 0; i < n && i < 16; i++) {
        x->rcpts[i] = r[i];
        x->relayed[i] = qmsg_rcpt(m, r[i])->relayed;
        x->state[i] = qmsg_rcpt(m, r[i])->state;
    }
    if (T.auto_dsn_done)
        queue_dsn_done(m, kind, r, n);
}

static size_t disp_count(const char *id, uint32_t rcpt)
{
    size_t c = 0;
    for (size_t i = 0; i < T.ndisp; i++)
        c += strcmp(T.disp[i].id, id) == 0 && (rcpt == UINT32_MAX || T.disp[i].rcpt == rcpt);
    return c;
}

/* ---- the loop ---- */

static struct timer *poll_timer;
static bool (*cond_fn)(void);
static uint64_t deadline;
static bool timed_out;

static void poll_cb(void *arg)
{
    if (cond_fn && cond_fn()) {
        loop_exit();
        return;
    }
    if (loop_now_ms() >= deadline) {
        timed_out = true;
        loop_exit();
        return;
    }
    timer_arm(poll_timer, 1);
}

/* Run the loop until c() is true (checked every millisecond) or ms pass. */
static bool run_until(bool (*c)(void), uint64_t ms)
{
    if (c && c())
        return true;
    cond_fn = c;
    deadline = loop_now_ms() + ms;
    timed_out = false;
    timer_arm(poll_timer, 0);
    loop_run();
    timer_stop(poll_timer);
    return !timed_out;
}

static void run_for(uint64_t ms)
{
    run_until(NULL, ms);
}

static size_t want_n;
static size_t *want_p;
static bool reached(void)
{
    return *want_p >= want_n;
}

static bool wait_count(size_t *p, size_t n, uint64_t ms)
{
    want_p = p;
    want_n = n;
    return run_until(reached, ms);
}

/* ---- spool folders and the queue ---- */

static char base[64];
static char spool[400];
static int nspool;
static uint64_t retry[2] = {50, 100};
static struct queue_params P;

static void new_spool(void)
{
    snprintf(spool, sizeof spool, "%s/s%d", base, nspool++);
}

static void params_default(void)
{
    P = (struct queue_params){
        .spool_dir = spool,
        .retry_ms = retry,
        .nretry = 2,
        .queue_lifetime_ms = 60000,
        .body_cache_max = 1 << 20,
        .hooks = {h_dispatch, h_notify, NULL},
    };
}

static void open_q(void)
{
    char err[256];
    if (queue_open(&P, err, sizeof err) != 0)
        fail_msg("queue_open: %s", err);
}

static void reset_events(void)
{
    memset(&T, 0, sizeof T);
    T.auto_report = -1;
}

static int setup(void **state)
{
    new_spool();
    params_default();
    reset_events();
    atomic_store(&fail_fdatasync, 0);
    atomic_store(&fail_writev, 0);
    atomic_store(&fail_pwrite, 0);
    return 0;
}

static int teardown(void **state)
{
    queue_close();
    return 0;
}

static void sh(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (system(cmd) != 0)
        fail_msg("command failed: %s", cmd);
}

/* ---- messages ---- */

struct commit_res {
    bool done;
    int err;
    size_t ndisp_at_done;
};

static void on_done(void *arg, int err)
{
    struct commit_res *r = arg;
    r->done = true;
    r->err = err;
    r->ndisp_at_done = T.ndisp;
}

static struct envelope *mkenv(const char *const *rcpts, size_t n, const unsigned *notify)
{
    struct envelope e;
    envelope_init(&e);
    e.sender = xstrdup("sender@example.org");
    e.client_ip = xstrdup("192.0.2.7");
    e.protocol = xstrdup("ESMTP");
    for (size_t i = 0; i < n; i++)
        envelope_add_rcpt(&e, rcpts[i], NULL, notify ? notify[i] : 0);
    return envelope_move(&e);
}

static struct qdraft *mkdraft(const char *body, size_t len)
{
    struct qdraft *d = queue_draft_new();
    assert_true(queue_draft_write(d, body, len));
    assert_int_equal(queue_draft_size(d), len);
    return d;
}

static struct commit_res *last_res;
static bool res_done(void)
{
    return last_res->done;
}

/* Commit and wait for the outcome; the id in id. */
static int commit_full(const char *body, size_t len, const char *const *rcpts, size_t n,
                       const unsigned *notify, char *id)
{
    struct qdraft *d = mkdraft(body, len);
    snprintf(id, QID_MAX, "%s", queue_draft_id(d));
    struct commit_res r = {0};
    queue_draft_commit(d, mkenv(rcpts, n, notify), on_done, &r);
    assert_false(r.done); /* never from inside the call */
    last_res = &r;
    assert_true(run_until(res_done, 5000));
    return r.err;
}

static int commit_msg(const char *body, const char *const *rcpts, size_t n, char *id)
{
    return commit_full(body, strlen(body), rcpts, n, NULL, id);
}

static void report(const char *id, uint32_t rcpt, enum delivery_kind kind, const char *status)
{
    struct qmsg *m = queue_find(id);
    assert_non_null(m);
    struct delivery_result r = {.kind = kind, .status = status, .diagnostic = "x-test; reply",
                                .remote_mta = "mx.example.net"};
    queue_report(m, rcpt, &r);
}

static void check_body(const char *id, const char *body, size_t len)
{
    struct qmsg *m = queue_find(id);
    assert_non_null(m);
    qmsg_ref(m);
    struct qbody b;
    qmsg_body(m, &b);
    assert_int_equal(b.len, len);
    char *buf = xmalloc(len + 1);
    assert_int_equal(qbody_read(&b, buf, len, 0), 0);
    assert_memory_equal(buf, body, len);
    assert_int_equal(qbody_read(&b, buf, 2, len - 1), -1); /* past the end */
    free(buf);
    qmsg_unref(m);
}

static size_t count_files(const char *suffix)
{
    char path[600];
    snprintf(path, sizeof path, "%s/queue", spool);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    size_t n = 0, sl = strlen(suffix);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        n += l >= sl && strcmp(de->d_name + l - sl, suffix) == 0;
    }
    closedir(d);
    return n;
}

static void count_cb(void *arg, struct qmsg *m)
{
    (*(size_t *)arg)++;
}

static size_t count_messages(void)
{
    size_t n = 0;
    queue_foreach(count_cb, &n);
    return n;
}

/* ---- tests: running ---- */

static void test_commit_dispatch(void **state)
{
    open_q();
    assert_true(queue_space_ok());
    const char *rc[] = {"a@example.com", "b@example.com"};
    char id[QID_MAX];
    const char *body = "Subject: hi\r\n\r\nhello\r\n";
    assert_int_equal(commit_msg(body, rc, 2, id), 0);
    assert_true(qid_valid(id));
    /* dispatched at once: in the same completion run as done() */
    assert_int_equal(T.ndisp, 2);
    assert_int_equal(disp_count(id, 0), 1);
    assert_int_equal(disp_count(id, 1), 1);
    struct qmsg *m = queue_find(id);
    assert_non_null(m);
    assert_string_equal(qmsg_id(m), id);
    assert_int_equal(qmsg_nrcpts(m), 2);
    assert_int_equal(qmsg_size(m), strlen(body));
    assert_false(qmsg_held(m));
    assert_string_equal(qmsg_envelope(m)->sender, "sender@example.org");
    assert_true(qmsg_envelope(m)->arrival > 0);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_PENDING);
    assert_true(qmsg_rcpt(m, 0)->in_flight);
    assert_string_equal(qmsg_rcpt(m, 1)->addr, "b@example.com");
    assert_int_equal(qmsg_rcpt(m, 1)->parent, QRCPT_NO_PARENT);
    struct qbody b;
    qmsg_body(m, &b);
    assert_non_null(b.mem); /* small and recent: cached */
    check_body(id, body, strlen(body));
    assert_int_equal(count_messages(), 1);
    struct queue_stats st;
    queue_get_stats(&st);
    assert_int_equal(st.messages, 1);
    assert_int_equal(st.recipients_pending, 2);
    assert_int_equal(st.committed, 1);
    assert_int_equal(st.bytes, strlen(body));
    assert_true(st.fsyncs >= 1 && st.commit_batches >= 1);

    report(id, 0, DELIVERY_OK, "2.0.0");
    m = queue_find(id);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_DELIVERED);
    assert_int_equal(qmsg_rcpt(m, 0)->attempts, 1);
    assert_string_equal(qmsg_rcpt(m, 0)->remote_mta, "mx.example.net");
    report(id, 1, DELIVERY_OK, "2.0.0");
    assert_null(queue_find(id)); /* finished */
    assert_int_equal(T.nnote, 0);  /* no DSN asked for */
    queue_get_stats(&st);
    assert_int_equal(st.messages, 0);
    assert_int_equal(st.delivered, 2);
    /* the finished state is durable: not back after a restart */
    queue_close();
    open_q();
    assert_null(queue_find(id));
    run_for(20);
    assert_int_equal(T.ndisp, 2);
}

static void test_refused_commits(void **state)
{
    open_q();
    /* no recipients: refused, later, through done() */
    struct qdraft *d = mkdraft("x", 1);
    struct commit_res r = {0};
    queue_draft_commit(d, mkenv(NULL, 0, NULL), on_done, &r);
    assert_false(r.done);
    last_res = &r;
    assert_true(run_until(res_done, 1000));
    assert_int_equal(r.err, -1);
    /* an aborted draft leaves nothing */
    d = mkdraft("y", 1);
    queue_draft_abort(d);
    assert_int_equal(count_messages(), 0);
    queue_close();
    /* too little free space */
    P.min_free_space = UINT64_MAX;
    open_q();
    assert_false(queue_space_ok());
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void test_retry_schedule(void **state)
{
    open_q();
    const char *rc[] = {"a@example.com"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("body\r\n", rc, 1, id), 0);
    assert_int_equal(T.ndisp, 1);
    uint64_t expect[] = {50, 100, 100}; /* the last step repeats */
    for (size_t k = 0; k < 3; k++) {
        uint64_t t0 = now_ms();
        report(id, 0, DELIVERY_TEMP, "4.0.0");
        struct qmsg *m = queue_find(id);
        assert_int_equal(qmsg_rcpt(m, 0)->state, QR_DEFERRED);
        assert_int_equal(qmsg_rcpt(m, 0)->attempts, k + 1);
        assert_false(qmsg_rcpt(m, 0)->in_flight);
        assert_true(qmsg_rcpt(m, 0)->next_attempt >= (time_t)((t0 + expect[k]) / 1000));
        struct queue_stats st;
        queue_get_stats(&st);
        assert_int_equal(st.recipients_deferred, 1);
        assert_true(wait_count(&T.ndisp, k + 2, 2000));
        uint64_t waited = now_ms() - t0;
        if (waited + 2 < expect[k])
            fail_msg("retry %zu after %llu ms, schedule says %llu", k, (unsigned long long)waited,
                     (unsigned long long)expect[k]);
    }
    report(id, 0, DELIVERY_OK, "2.0.0");
    assert_null(queue_find(id));
    struct queue_stats st;
    queue_get_stats(&st);
    assert_int_equal(st.deferred_attempts, 3);
    assert_int_equal(st.delivered, 1);
}

static void test_expiry(void **state)
{
    P.queue_lifetime_ms = 0; /* every temporary failure is past the lifetime */
    open_q();
    const char *rc[] = {"a@example.com"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("body\r\n", rc, 1, id), 0);
    report(id, 0, DELIVERY_TEMP, "4.4.1");
    struct qmsg *m = queue_find(id);
    assert_non_null(m); /* kept: its bounce is owed */
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_FAILED);
    assert_string_equal(qmsg_rcpt(m, 0)->status, "4.4.1");
    assert_string_equal(qmsg_rcpt(m, 0)->last_reply, "x-test; reply");
    assert_int_equal(T.nnote, 1);
    assert_int_equal(T.note[0].kind, DSN_FAILURE);
    assert_int_equal(T.note[0].n, 1);
    queue_dsn_done(m, DSN_FAILURE, T.note[0].rcpts, 1);
    assert_null(queue_find(id));
    struct queue_stats st;
    queue_get_stats(&st);
    assert_int_equal(st.failed, 1);
}

static void test_dsn_decisions(void **state)
{
    T.auto_dsn_done = true;
    open_q();
    const char *rc[] = {"r0@x", "r1@x", "r2@x", "r3@x", "r4@x", "r5@x"};
    unsigned nt[] = {0, DSN_NOTIFY_NEVER, DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY,
                     DSN_NOTIFY_SUCCESS, DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE, 0};
    char id[QID_MAX];
    assert_int_equal(commit_full("b\r\n", 3, rc, 6, nt, id), 0);
    assert_int_equal(T.ndisp, 6);
    report(id, 0, DELIVERY_PERM, "5.1.1");
    report(id, 1, DELIVERY_PERM, "5.1.1");
    report(id, 2, DELIVERY_PERM, "5.1.1");
    report(id, 3, DELIVERY_OK, "2.0.0");
    assert_int_equal(T.nnote, 0); /* one report per delivery pass, when nothing is in flight */
    struct qmsg *m = queue_find(id);
    struct delivery_result relayed = {.kind = DELIVERY_OK, .status = "2.0.0", .relayed = true};
    queue_report(m, 4, &relayed);
    report(id, 5, DELIVERY_OK, "2.0.0");
    assert_int_equal(T.nnote, 2);
    assert_int_equal(T.note[0].kind, DSN_FAILURE);
    assert_int_equal(T.note[0].n, 2);
    assert_int_equal(T.note[0].rcpts[0], 0);
    assert_int_equal(T.note[0].rcpts[1], 2);
    assert_int_equal(T.note[0].state[0], QR_FAILED);
    assert_int_equal(T.note[1].kind, DSN_SUCCESS);
    assert_int_equal(T.note[1].n, 2);
    assert_int_equal(T.note[1].rcpts[0], 3);
    assert_int_equal(T.note[1].rcpts[1], 4);
    assert_false(T.note[1].relayed[0]);
    assert_true(T.note[1].relayed[1]);
    assert_null(queue_find(id)); /* every DSN done: finished */
}

static void test_delay_warning(void **state)
{
    T.auto_dsn_done = true;
    P.delay_warning_ms = 1;
    open_q();
    const char *rc[] = {"r0@x", "r1@x", "r2@x", "r3@x"};
    unsigned nt[] = {0, DSN_NOTIFY_DELAY, DSN_NOTIFY_FAILURE, DSN_NOTIFY_NEVER};
    char id[QID_MAX];
    assert_int_equal(commit_full("b\r\n", 3, rc, 4, nt, id), 0);
    run_for(5);
    for (uint32_t i = 0; i < 4; i++)
        report(id, i, DELIVERY_TEMP, "4.2.0");
    assert_int_equal(T.nnote, 1);
    assert_int_equal(T.note[0].kind, DSN_DELAY);
    assert_int_equal(T.note[0].n, 2);
    assert_int_equal(T.note[0].rcpts[0], 0);
    assert_int_equal(T.note[0].rcpts[1], 1);
    assert_true(qmsg_rcpt(queue_find(id), 0)->delay_warned);
    /* the next deferral warns nobody again */
    assert_true(wait_count(&T.ndisp, 8, 2000));
    for (uint32_t i = 0; i < 4; i++)
        report(id, i, DELIVERY_TEMP, "4.2.0");
    assert_int_equal(T.nnote, 1);
    /* deleted: no DSN at all */
    assert_int_equal(queue_delete(id), 0);
    assert_null(queue_find(id));
    assert_int_equal(T.nnote, 1);
}

static bool nnote_1(void)
{
    return T.nnote >= 1;
}

static void test_expand(void **state)
{
    T.auto_dsn_done = true;
    open_q();
    const char *rc[] = {"list@x", "solo@x"};
    unsigned nt[] = {DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE, DSN_NOTIFY_SUCCESS};
    char id[QID_MAX];
    assert_int_equal(commit_full("b\r\n", 3, rc, 2, nt, id), 0);
    assert_int_equal(T.ndisp, 2);
    struct qmsg *m = queue_find(id);
    const char *targets[] = {"a@x", "b@x"};
    assert_int_equal(queue_expand(m, 0, targets, 2), 2);
    const char *one[] = {"c@x"};
    assert_int_equal(queue_expand(m, 1, one, 1), 4);
    assert_int_equal(qmsg_nrcpts(m), 5);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_EXPANDED);
    for (uint32_t i = 2; i <= 3; i++) {
        const struct qrcpt *r = qmsg_rcpt(m, i);
        assert_int_equal(r->parent, 0);
        assert_int_equal(r->notify, DSN_NOTIFY_FAILURE); /* SUCCESS answered by "expanded" */
        assert_string_equal(r->orcpt, "rfc822;list@x");
        assert_int_equal(r->state, QR_PENDING);
    }
    assert_int_equal(qmsg_rcpt(m, 4)->notify, DSN_NOTIFY_SUCCESS); /* forwarding */
    assert_string_equal(qmsg_rcpt(m, 4)->addr, "c@x");
    /* the new recipients are dispatched by the scheduler, not from inside expand */
    assert_int_equal(T.ndisp, 2);
    assert_true(wait_count(&T.ndisp, 5, 1000));
    assert_int_equal(disp_count(id, 2) + disp_count(id, 3) + disp_count(id, 4), 3);
    /* the list's "expanded" DSN went out as soon as nothing was in flight */
    assert_int_equal(T.nnote, 1);
    assert_int_equal(T.note[0].kind, DSN_SUCCESS);
    assert_int_equal(T.note[0].n, 1);
    assert_int_equal(T.note[0].rcpts[0], 0);
    assert_int_equal(T.note[0].state[0], QR_EXPANDED);
    /* a restart now keeps the expansion */
    queue_close();
    reset_events();
    T.auto_dsn_done = true;
    open_q();
    m = queue_find(id);
    assert_non_null(m);
    assert_int_equal(qmsg_nrcpts(m), 5);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_EXPANDED);
    assert_int_equal(qmsg_rcpt(m, 3)->parent, 0);
    assert_string_equal(qmsg_rcpt(m, 3)->orcpt, "rfc822;list@x");
    assert_true(wait_count(&T.ndisp, 3, 1000));
    report(id, 2, DELIVERY_OK, "2.0.0");
    report(id, 3, DELIVERY_OK, "2.0.0");
    report(id, 4, DELIVERY_OK, "2.0.0");
    /* "delivered" for the forwarded one only: the list's DSN is not sent twice */
    assert_int_equal(T.nnote, 1);
    assert_int_equal(T.note[0].kind, DSN_SUCCESS);
    assert_int_equal(T.note[0].n, 1);
    assert_int_equal(T.note[0].rcpts[0], 4);
    assert_int_equal(T.note[0].state[0], QR_DELIVERED);
    assert_null(queue_find(id));
}

static void test_expand_limits(void **state)
{
    T.auto_dsn_done = true;
    open_q();
    const char *rc[] = {"big@x"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("b\r\n", rc, 1, id), 0);
    struct qmsg *m = queue_find(id);
    const char **many = xcalloc(QUEUE_RCPTS_MAX, sizeof *many);
    for (size_t i = 0; i < QUEUE_RCPTS_MAX; i++)
        many[i] = "t@x";
    assert_int_equal(queue_expand(m, 0, many, QUEUE_RCPTS_MAX), QRCPT_NO_PARENT);
    free(many);
    /* the parent failed (and its bounce went out): the message is done */
    assert_int_equal(T.nnote, 1);
    assert_int_equal(T.note[0].kind, DSN_FAILURE);
    assert_null(queue_find(id));
    /* expanding a final recipient is refused */
    assert_int_equal(commit_msg("b\r\n", rc, 1, id), 0);
    report(id, 0, DELIVERY_TEMP, "4.0.0");
    m = queue_find(id);
    qmsg_ref(m);
    report(id, 0, DELIVERY_OK, "2.0.0");
    const char *one[] = {"x@y"};
    assert_int_equal(queue_expand(m, 0, one, 1), QRCPT_NO_PARENT);
    qmsg_unref(m);
}

static void test_hold_release_flush_delete(void **state)
{
    retry[0] = retry[1] = 60000;
    open_q();
    const char *rc[] = {"a@x"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("b\r\n", rc, 1, id), 0);
    report(id, 0, DELIVERY_TEMP, "4.0.0");
    assert_int_equal(queue_hold(id), 0);
    assert_true(qmsg_held(queue_find(id)));
    assert_int_equal(queue_flush(id), 0);
    run_for(30);
    assert_int_equal(T.ndisp, 1); /* held: flushed but not sent */
    struct queue_stats st;
    queue_get_stats(&st);
    assert_int_equal(st.held, 1);
    assert_int_equal(queue_release(id), 0);
    assert_int_equal(T.ndisp, 2); /* due (flushed) and released: at once */
    report(id, 0, DELIVERY_TEMP, "4.0.0");
    run_for(30);
    assert_int_equal(T.ndisp, 2); /* the next try is a minute away */
    assert_int_equal(queue_flush(NULL), 0);
    assert_int_equal(T.ndisp, 3);
    report(id, 0, DELIVERY_TEMP, "4.0.0");
    /* hold survives a restart; a held message is not sent when due */
    assert_int_equal(queue_hold(NULL), 0);
    assert_int_equal(queue_flush(id), 0);
    queue_close();
    reset_events();
    open_q();
    assert_true(qmsg_held(queue_find(id)));
    run_for(50);
    assert_int_equal(T.ndisp, 0);
    assert_int_equal(queue_release(NULL), 0);
    assert_int_equal(queue_flush(NULL), 0);
    assert_int_equal(T.ndisp, 1);
    report(id, 0, DELIVERY_TEMP, "4.0.0");
    assert_int_equal(queue_delete(id), 0);
    assert_null(queue_find(id));
    assert_int_equal(T.nnote, 0);
    assert_int_equal(queue_delete("0123456789ABCD"), -1);
    assert_int_equal(queue_hold("0123456789ABCD"), -1);
    assert_int_equal(queue_release("0123456789ABCD"), -1);
    assert_int_equal(queue_flush("0123456789ABCD"), -1);
    queue_close();
    open_q();
    assert_null(queue_find(id));
    retry[0] = 50;
    retry[1] = 100;
}

static size_t ndone;
static void count_done(void *arg, int err)
{
    if (err == 0)
        ndone++;
}

/* A recipient in flight keeps its message valid even when the operator deletes it. */
static void test_delete_in_flight(void **state)
{
    open_q();
    const char *rc[] = {"a@x", "b@x"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("b\r\n", rc, 2, id), 0);
    struct qmsg *m = queue_find(id); /* no reference taken, as the hook may not either */
    assert_int_equal(queue_delete(id), 0);
    assert_null(queue_find(id));
    struct delivery_result r = {.kind = DELIVERY_OK, .status = "2.0.0"};
    queue_report(m, 0, &r); /* still valid: in flight */
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_DELETED);
    queue_report(m, 1, &r); /* the last one lets it go */
    assert_int_equal(T.nnote, 0);
    queue_close();
    open_q();
    assert_null(queue_find(id));
}

static uint64_t fsyncs_now(void)
{
    struct queue_stats st;
    queue_get_stats(&st);
    return st.fsyncs;
}

/* Snapshots of a message with many recipients are spaced out. */
static void test_big_snapshot_throttle(void **state)
{
    open_q();
    enum { N = 150 };
    const char *rc[N];
    char addrs[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(addrs[i], sizeof addrs[i], "r%d@x", i);
        rc[i] = addrs[i];
    }
    char id[QID_MAX];
    assert_int_equal(commit_msg("big\r\n", rc, N, id), 0);
    uint64_t f0 = fsyncs_now();
    report(id, 0, DELIVERY_OK, "2.0.0");
    run_for(40);
    uint64_t f1 = fsyncs_now();
    assert_int_equal(f1, f0 + 1); /* the first snapshot goes at once */
    report(id, 1, DELIVERY_OK, "2.0.0");
    run_for(40);
    assert_int_equal(fsyncs_now(), f1); /* the next one waits ... */
    run_for(1100);
    assert_int_equal(fsyncs_now(), f1 + 1); /* ... about a second */
    report(id, 2, DELIVERY_OK, "2.0.0");
    queue_close(); /* and a stop writes what is left */
    reset_events();
    open_q();
    struct qmsg *m = queue_find(id);
    assert_int_equal(qmsg_nrcpts(m), N);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(qmsg_rcpt(m, i)->state, QR_DELIVERED);
    assert_int_equal(qmsg_rcpt(m, 3)->state, QR_PENDING);
    assert_true(wait_count(&T.ndisp, N - 3, 1000));
}

/* Many sessions committing at once share fsyncs. */
static void test_group_commit(void **state)
{
    T.auto_report = DELIVERY_OK;
    open_q();
    ndone = 0;
    enum { N = 100 };
    const char *rc[] = {"a@x"};
    char body[1024];
    memset(body, 'x', sizeof body);
    for (int i = 0; i < N; i++) {
        struct qdraft *d = mkdraft(body, sizeof body);
        queue_draft_commit(d, mkenv(rc, 1, NULL), count_done, NULL);
    }
    assert_true(wait_count(&ndone, N, 5000));
    struct queue_stats st;
    queue_get_stats(&st);
    assert_int_equal(st.committed, N);
    print_message("group commit: %d messages, %llu fsyncs (2 for the first segment), %llu batches\n",
                  N, (unsigned long long)st.fsyncs, (unsigned long long)st.commit_batches);
    assert_true(st.fsyncs * 4 < (uint64_t)N);
    assert_int_equal(T.ndisp, N);
    /* delivered at once; the finished states become durable shortly */
    run_for(50);
    queue_get_stats(&st);
    assert_int_equal(st.messages, 0);
    assert_int_equal(st.delivered, N);
}

/* ---- tests: recovery ---- */

static void test_restart(void **state)
{
    retry[0] = retry[1] = 60000;
    open_q();
    const char *rc2[] = {"a@x", "b@x"}, *rc1[] = {"c@x"};
    char ida[QID_MAX], idb[QID_MAX], idc[QID_MAX];
    assert_int_equal(commit_msg("message A\r\n", rc2, 2, ida), 0);
    assert_int_equal(commit_msg("message B\r\n", rc1, 1, idb), 0);
    assert_int_equal(commit_msg("message C\r\n", rc1, 1, idc), 0);
    report(ida, 0, DELIVERY_OK, "2.0.0");
    report(ida, 1, DELIVERY_TEMP, "4.0.0");
    report(idb, 0, DELIVERY_TEMP, "4.0.0");
    assert_int_equal(queue_hold(idb), 0);
    queue_close();

    reset_events();
    open_q();
    assert_int_equal(count_messages(), 3);
    struct qmsg *a = queue_find(ida);
    assert_int_equal(qmsg_rcpt(a, 0)->state, QR_DELIVERED);
    assert_int_equal(qmsg_rcpt(a, 1)->state, QR_DEFERRED);
    assert_int_equal(qmsg_rcpt(a, 1)->attempts, 1);
    assert_string_equal(qmsg_rcpt(a, 1)->status, "4.0.0");
    assert_string_equal(qmsg_rcpt(a, 1)->last_reply, "x-test; reply");
    assert_true(qmsg_held(queue_find(idb)));
    check_body(ida, "message A\r\n", 11);
    check_body(idc, "message C\r\n", 11);
    struct qbody b;
    qmsg_body(queue_find(idc), &b);
    assert_null(b.mem); /* recovered content is read from its segment */
    assert_true(b.fd >= 0);
    /* C was in flight when we stopped: sent again; A's deferral and held B are not due */
    assert_true(wait_count(&T.ndisp, 1, 1000));
    run_for(30);
    assert_int_equal(T.ndisp, 1);
    assert_int_equal(disp_count(idc, 0), 1);
    /* ids keep rising across restarts */
    char idd[QID_MAX];
    assert_int_equal(commit_msg("D\r\n", rc1, 1, idd), 0);
    assert_true(strcmp(idd, idc) > 0);
    retry[0] = 50;
    retry[1] = 100;
}

/* A copy of the spool taken while the queue runs is what a crash leaves. */
static void test_crash_copies(void **state)
{
    open_q();
    const char *rc[] = {"a@x"};
    char ids[5][QID_MAX];
    char copies[5][400];
    for (int i = 0; i < 5; i++) {
        assert_int_equal(commit_msg("crash test\r\n", rc, 1, ids[i]), 0);
        snprintf(copies[i], sizeof copies[i], "%.300s.copy%d", spool, i);
        sh("cp -a %s %s", spool, copies[i]);
    }
    queue_close();
    char orig[400];
    snprintf(orig, sizeof orig, "%s", spool);
    for (int i = 0; i < 5; i++) {
        snprintf(spool, sizeof spool, "%.399s", copies[i]);
        reset_events();
        open_q();
        /* everything acknowledged before the copy is there, nothing else */
        assert_int_equal(count_messages(), (size_t)i + 1);
        for (int k = 0; k <= i; k++)
            check_body(ids[k], "crash test\r\n", 12);
        assert_true(wait_count(&T.ndisp, (size_t)i + 1, 1000));
        queue_close();
    }
    snprintf(spool, sizeof spool, "%.399s", orig);
}

struct recs {
    uint64_t off[64];
    unsigned type[64];
    size_t n;
    uint64_t end;       /* the end of the last record */
    uint64_t zero_tail; /* zeros after it */
};

static void collect(void *arg, const struct spool_rec *r)
{
    struct recs *x = arg;
    if (x->n < 64) {
        x->off[x->n] = r->off;
        x->type[x->n++] = r->hdr.type;
    }
}

/* The spool's queue folder (open; the caller closes it) and its segments, oldest first. */
static int list_segments(char *dir, size_t cap, uint32_t **seqs, size_t *n)
{
    snprintf(dir, cap, "%s/queue", spool);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_true(dfd >= 0);
    assert_int_equal(spool_list(dfd, seqs, n), 0);
    return dfd;
}

/* The newest segment file of the spool, and its records. */
static void last_segment(char *path, size_t cap, struct recs *out)
{
    char dir[600];
    uint32_t *seqs;
    size_t n;
    int dfd = list_segments(dir, sizeof dir, &seqs, &n);
    assert_true(n > 0);
    char name[64];
    spool_seg_name(name, sizeof name, seqs[n - 1]);
    snprintf(path, cap, "%s/%s", dir, name);
    free(seqs);
    close(dfd);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    memset(out, 0, sizeof *out);
    struct spool_scan sc;
    assert_int_equal(spool_scan(fd, 1, false, collect, out, &sc), 0);
    assert_false(sc.damaged);
    out->end = sc.size;
    out->zero_tail = sc.zero_tail;
    close(fd);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* Nothing but zeros in path from off on (or the file ends there). */
static void assert_only_zeros_from(const char *path, off_t off)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    char buf[4096];
    ssize_t n;
    while ((n = pread(fd, buf, sizeof buf, off)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != 0)
                fail_msg("byte %lld of %s is not zero", (long long)(off + i), path);
        off += n;
    }
    assert_int_equal(n, 0);
    close(fd);
}

enum tail { TAIL_CUT, TAIL_ZERO, TAIL_GARBAGE };

/* Put the spool back as it was: only the segment seg, holding data (len bytes). */
static void restore_spool(const char *seg, const char *data, size_t len)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/queue", spool);
    DIR *d = opendir(dir);
    assert_non_null(d);
    const char *base_name = strrchr(seg, '/') + 1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 4 && strcmp(de->d_name + l - 4, ".seg") == 0 && strcmp(de->d_name, base_name) != 0) {
            char p[1200];
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            assert_int_equal(unlink(p), 0);
        }
    }
    closedir(d);
    int fd = open(seg, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* Cut or spoil the last record at every byte; the spool must come back with the messages
 * before it and without it. Zeroed and spoiled tails are followed by zeros, as the zeros
 * the commit thread writes ahead of the records would follow them after a crash. */
static void cut_every_offset(enum tail how)
{
    open_q();
    const char *rc[] = {"a@x"};
    char ids[3][QID_MAX];
    for (int i = 0; i < 3; i++)
        assert_int_equal(commit_msg("cut test body\r\n", rc, 1, ids[i]), 0);
    queue_close();
    char seg[700];
    struct recs recs;
    last_segment(seg, sizeof seg, &recs);
    assert_true(recs.n >= 4); /* segment, 3 messages */
    uint64_t start = recs.off[recs.n - 1];
    assert_int_equal(recs.type[recs.n - 1], REC_MESSAGE);
    off_t size = (off_t)recs.end; /* the records; the file goes on with zeros */
    assert_true(recs.zero_tail > 0);
    assert_int_equal(file_size(seg), size + (off_t)recs.zero_tail);
    char *data = xmalloc((size_t)size);
    int fd = open(seg, O_RDONLY);
    assert_int_equal(read(fd, data, (size_t)size), (ssize_t)size);
    close(fd);
    for (off_t cut = (off_t)start; cut < size; cut++) {
        restore_spool(seg, data, (size_t)size);
        if (how == TAIL_CUT) {
            assert_int_equal(truncate(seg, cut), 0);
        } else {
            fd = open(seg, O_WRONLY);
            assert_true(fd >= 0);
            char fill[4096 + 8192] = {0};
            size_t n = (size_t)(size - cut);
            for (size_t i = 0; i < n; i++)
                fill[i] = how == TAIL_ZERO ? 0 : (char)(i * 31 + (size_t)cut);
            assert_int_equal(pwrite(fd, fill, n + 8192, cut), (ssize_t)(n + 8192));
            close(fd);
        }
        reset_events();
        open_q();
        assert_non_null(queue_find(ids[0]));
        assert_non_null(queue_find(ids[1]));
        if (queue_find(ids[2]))
            fail_msg("a spoiled record came back (tail %d cut at %lld)", (int)how, (long long)cut);
        assert_int_equal(count_messages(), 2);
        /* the torn tail is gone: cut off, or only zeros are left */
        assert_only_zeros_from(seg, (off_t)start);
        assert_int_equal(count_files(".damaged"), 0);
        queue_close();
    }
    free(data);
}

static void test_truncated_tail(void **state)
{
    cut_every_offset(TAIL_CUT);
}

static void test_zero_tail(void **state)
{
    cut_every_offset(TAIL_ZERO);
}

static void test_garbage_tail(void **state)
{
    cut_every_offset(TAIL_GARBAGE);
}

/* The active segment has zeros written ahead of its records (so a commit's sync does not
 * grow the file), they are topped up as records use them, a segment left with zeros after
 * its records is read back whole and clean, and rotation trims the zeros of the old one. */
static void test_zeros_ahead_of_records(void **state)
{
    open_q();
    const char *rc[] = {"a@x"};
    char first[QID_MAX], id[QID_MAX];
    assert_int_equal(commit_msg("zero ahead\r\n", rc, 1, first), 0);
    char seg[700];
    struct recs recs;
    last_segment(seg, sizeof seg, &recs);
    assert_true(recs.zero_tail >= 512u * 1024);
    assert_int_equal(file_size(seg), (off_t)(recs.end + recs.zero_tail));
    assert_only_zeros_from(seg, (off_t)recs.end);
    /* ~1.5 MiB of messages: the zeros are topped up, never run out for long */
    static char big[64 * 1024];
    memset(big, 'z', sizeof big - 3);
    memcpy(big + sizeof big - 3, "\r\n", 3); /* and the NUL: commit_msg takes a string */
    for (int i = 0; i < 24; i++)
        assert_int_equal(commit_msg(big, rc, 1, id), 0);
    last_segment(seg, sizeof seg, &recs);
    assert_true(recs.end > 1536u * 1024);
    assert_true(recs.zero_tail >= 512u * 1024);
    queue_close();

    /* the next start writes a new segment; the old one keeps its zeros and is clean */
    reset_events();
    P.segment_max = 4096; /* and from now on every batch goes to a new segment */
    open_q();
    assert_non_null(queue_find(first));
    assert_non_null(queue_find(id));
    assert_int_equal(count_files(".damaged"), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(commit_msg(big, rc, 1, id), 0);
    queue_close();
    /* a rotation trims the zeros of the segment it leaves; the newest keeps them */
    char dir[600];
    uint32_t *seqs;
    size_t n;
    int dfd = list_segments(dir, sizeof dir, &seqs, &n);
    assert_true(n >= 4);
    for (size_t i = 1; i < n; i++) { /* [0] is the first run's, left with its zeros */
        char name[64];
        spool_seg_name(name, sizeof name, seqs[i]);
        int fd = openat(dfd, name, O_RDONLY);
        assert_true(fd >= 0);
        struct recs r = {0};
        struct spool_scan sc;
        assert_int_equal(spool_scan(fd, seqs[i], false, collect, &r, &sc), 0);
        assert_false(sc.damaged);
        if (i + 1 < n)
            assert_int_equal(sc.zero_tail, 0);
        else
            assert_true(sc.zero_tail > 0);
        close(fd);
    }
    free(seqs);
    close(dfd);
    reset_events();
    open_q();
    assert_non_null(queue_find(first));
    assert_non_null(queue_find(id));
    assert_int_equal(count_files(".damaged"), 0);
    queue_close();
}

/* A disk too full for the zeros: segments are still made and records still committed
 * (the zeros are a speed-up only), and recovery finds every message. */
static void test_zeros_ahead_disk_full(void **state)
{
    atomic_store(&fail_pwrite, 1000000);
    open_q(); /* the first segment: its zeros fail, it is made without them */
    const char *rc[] = {"a@x"};
    char ids[3][QID_MAX];
    for (int i = 0; i < 3; i++) /* every batch tries to top the zeros up, and fails */
        assert_int_equal(commit_msg("no zeros\r\n", rc, 1, ids[i]), 0);
    assert_true(atomic_load(&fail_pwrite) < 1000000 - 3);
    char seg[700];
    struct recs recs;
    last_segment(seg, sizeof seg, &recs);
    assert_int_equal(recs.zero_tail, 0);
    assert_int_equal(file_size(seg), (off_t)recs.end);
    queue_close();
    atomic_store(&fail_pwrite, 0);
    reset_events();
    open_q();
    for (int i = 0; i < 3; i++)
        assert_non_null(queue_find(ids[i]));
    assert_int_equal(count_files(".damaged"), 0);
    queue_close();
}

static bool damaged_file_exists(void)
{
    return count_files(".damaged") > 0;
}

/* Flip one byte of record k of the newest segment. */
static void spoil_record(int k)
{
    char seg[700];
    struct recs recs;
    last_segment(seg, sizeof seg, &recs);
    int fd = open(seg, O_RDWR);
    assert_true(fd >= 0);
    char c;
    off_t at = (off_t)recs.off[k] + REC_HDR_LEN + 3;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x55;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

static void test_damaged_record(void **state)
{
    T.auto_report = DELIVERY_TEMP; /* everything deferred: idle, so it can be moved */
    retry[0] = retry[1] = 60000;
    open_q();
    const char *rc[] = {"a@x"};
    char ids[3][QID_MAX];
    for (int i = 0; i < 3; i++)
        assert_int_equal(commit_msg("damage test\r\n", rc, 1, ids[i]), 0);
    queue_close();
    spoil_record(2); /* records: segment, M0, M1 (spoiled), M2, status ... */
    reset_events();
    T.auto_report = DELIVERY_TEMP;
    open_q();
    assert_non_null(queue_find(ids[0]));
    assert_null(queue_find(ids[1])); /* lost: its record is damaged (and logged) */
    assert_non_null(queue_find(ids[2]));
    /* the damaged segment's messages are moved on and the file is kept aside */
    assert_true(run_until(damaged_file_exists, 5000));
    queue_close();
    reset_events();
    open_q();
    assert_int_equal(count_messages(), 2);
    check_body(ids[0], "damage test\r\n", 13);
    check_body(ids[2], "damage test\r\n", 13);
    assert_int_equal(qmsg_rcpt(queue_find(ids[2]), 0)->state, QR_DEFERRED);
    assert_int_equal(count_files(".damaged"), 1);
    retry[0] = 50;
    retry[1] = 100;
}

static uint64_t fsyncs_target;
static bool fsyncs_reached(void)
{
    struct queue_stats st;
    queue_get_stats(&st);
    return st.fsyncs >= fsyncs_target;
}

/* Wait until a status record written after now is durable. */
static void wait_status_durable(void)
{
    struct queue_stats st;
    queue_get_stats(&st);
    fsyncs_target = st.fsyncs + 1;
    assert_true(run_until(fsyncs_reached, 2000));
}

/* A failed recipient is final on disk only after its bounce is done. */
static void test_failure_dsn_ordering(void **state)
{
    open_q();
    const char *rc[] = {"ok@x", "bad@x"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("dsn order\r\n", rc, 2, id), 0);
    report(id, 0, DELIVERY_OK, "2.0.0");
    report(id, 1, DELIVERY_PERM, "5.1.1");
    assert_int_equal(T.nnote, 1); /* bounce owed, not done yet */
    wait_status_durable();
    char orig[400], copy[400];
    snprintf(orig, sizeof orig, "%s", spool);
    snprintf(copy, sizeof copy, "%.300s.crash", spool);
    sh("cp -a %s %s", spool, copy);
    struct qmsg *m = queue_find(id);
    queue_dsn_done(m, DSN_FAILURE, T.note[0].rcpts, 1);
    assert_null(queue_find(id));
    queue_close();
    /* crashed before the bounce: the failed recipient is tried again */
    snprintf(spool, sizeof spool, "%.399s", copy);
    reset_events();
    open_q();
    m = queue_find(id);
    assert_non_null(m);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_DELIVERED);
    assert_int_equal(qmsg_rcpt(m, 1)->state, QR_DEFERRED);
    assert_true(wait_count(&T.ndisp, 1, 1000));
    assert_int_equal(disp_count(id, 1), 1);
    assert_int_equal(disp_count(id, 0), 0);
    queue_close();
    /* stopped after it: finished */
    snprintf(spool, sizeof spool, "%.399s", orig);
    reset_events();
    open_q();
    assert_null(queue_find(id));
}

/* A success DSN owed at a crash is sent after the restart (the delivery is not repeated). */
static void test_success_dsn_after_restart(void **state)
{
    open_q();
    const char *rc[] = {"a@x"};
    unsigned nt[] = {DSN_NOTIFY_SUCCESS};
    char id[QID_MAX];
    assert_int_equal(commit_full("b\r\n", 3, rc, 1, nt, id), 0);
    report(id, 0, DELIVERY_OK, "2.0.0");
    assert_int_equal(T.nnote, 1);
    queue_close(); /* the hook never called queue_dsn_done */
    reset_events();
    T.auto_dsn_done = true;
    open_q();
    assert_true(run_until(nnote_1, 1000));
    assert_int_equal(T.note[0].kind, DSN_SUCCESS);
    assert_int_equal(T.ndisp, 0);
    assert_null(queue_find(id));
}

static bool few_segments(void)
{
    return count_files(".seg") <= 3;
}

static void test_compaction(void **state)
{
    P.segment_max = 4096;
    retry[0] = retry[1] = 60000;
    open_q();
    const char *rc[] = {"slow@x"};
    char idx[QID_MAX], id[QID_MAX];
    char body[600];
    memset(body, 'b', sizeof body);
    body[sizeof body - 1] = '\n';
    assert_int_equal(commit_full(body, sizeof body, rc, 1, NULL, idx), 0);
    report(idx, 0, DELIVERY_TEMP, "4.0.0"); /* deferred for a minute: pins its segment */
    T.auto_report = DELIVERY_OK;
    const char *fast[] = {"fast@x"};
    for (int i = 0; i < 60; i++)
        assert_int_equal(commit_full(body, sizeof body, fast, 1, NULL, id), 0);
    assert_true(count_files(".seg") > 3);
    /* old segments go once the deferred message has moved on */
    assert_true(run_until(few_segments, 5000));
    assert_int_equal(count_messages(), 1);
    check_body(idx, body, sizeof body);
    queue_close();
    reset_events();
    open_q();
    assert_int_equal(count_messages(), 1);
    struct qmsg *m = queue_find(idx);
    assert_non_null(m);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_DEFERRED);
    assert_int_equal(qmsg_rcpt(m, 0)->attempts, 1);
    check_body(idx, body, sizeof body);
    retry[0] = 50;
    retry[1] = 100;
}

/* A hand-made spool: what compaction leaves if the daemon dies before the old segment is
 * gone (two copies of a message), a snapshot of a message whose content was retired, and a
 * message finished on disk. */
static void put_record(struct buf *seg, enum rec_type t, const struct buf *text, const char *body)
{
    size_t blen = body ? strlen(body) : 0;
    uint32_t crc = crc32c(crc32c(0, text->data, text->len), body ? body : "", blen);
    uint8_t h[REC_HDR_LEN];
    rec_hdr_encode(h, t, (uint32_t)(text->len + blen), crc);
    assert_true(buf_add(seg, h, sizeof h));
    assert_true(buf_add(seg, text->data, text->len));
    assert_true(buf_add(seg, body ? body : "", blen));
}

static void put_msg(struct buf *seg, const char *id, const char *rcpt, const char *body)
{
    struct envelope e;
    envelope_init(&e);
    e.sender = xstrdup("s@x");
    e.arrival = time(NULL);
    envelope_add_rcpt(&e, rcpt, NULL, 0);
    struct buf t = BUF_INIT(REC_TEXT_MAX);
    assert_true(rec_msg_encode(&t, id, (uint64_t)e.arrival * 1000, &e, strlen(body)));
    put_record(seg, REC_MESSAGE, &t, body);
    buf_release(&t);
    envelope_clear(&e);
}

static void put_status(struct buf *seg, const char *id, const char *rcpt, enum qrcpt_state st)
{
    struct rec_rcpt r = {.addr = (char *)rcpt, .state = st, .parent = QRCPT_NO_PARENT,
                         .attempts = 1, .next_ms = now_ms() + 3600000};
    struct rec_status s = {.rcpts = &r, .n = 1};
    snprintf(s.id, sizeof s.id, "%s", id);
    struct buf t = BUF_INIT(REC_TEXT_MAX);
    assert_true(rec_status_encode(&t, &s));
    put_record(seg, REC_STATUS, &t, NULL);
    buf_release(&t);
}

static void put_segment(struct buf *seg, uint32_t seq)
{
    struct buf t = BUF_INIT(256);
    assert_true(rec_segment_encode(&t, seq, time(NULL)));
    put_record(seg, REC_SEGMENT, &t, NULL);
    buf_release(&t);
}

static void write_seg(uint32_t seq, const struct buf *b)
{
    char name[64], path[700];
    spool_seg_name(name, sizeof name, seq);
    snprintf(path, sizeof path, "%s/queue/%s", spool, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b->data, b->len), (ssize_t)b->len);
    close(fd);
}

static bool one_segment(void)
{
    return count_files(".seg") == 1;
}

static void test_recover_handmade(void **state)
{
    char qdir[600];
    snprintf(qdir, sizeof qdir, "%s/queue", spool);
    assert_int_equal(mkdir(spool, 0711), 0);
    assert_int_equal(mkdir(qdir, 0700), 0);
    char x[QID_MAX], y[QID_MAX], z[QID_MAX];
    qid_new(y);
    qid_new(x);
    qid_new(z);
    struct buf s1 = BUF_INIT(1 << 20), s2 = BUF_INIT(1 << 20);
    put_segment(&s1, 1);
    put_msg(&s1, x, "x@r", "content of x, first copy\r\n");
    put_status(&s1, x, "x@r", QR_DEFERRED);
    put_msg(&s1, z, "z@r", "z\r\n");
    put_segment(&s2, 2);
    put_status(&s2, y, "y@r", QR_DEFERRED);  /* y's content is long gone */
    put_msg(&s2, x, "x@r", "content of x, first copy\r\n"); /* the compaction copy ... */
    put_status(&s2, x, "x@r", QR_DEFERRED);  /* ... with its snapshot */
    put_status(&s2, z, "z@r", QR_DELIVERED); /* z finished */
    write_seg(1, &s1);
    write_seg(2, &s2);
    buf_release(&s1);
    buf_release(&s2);
    open_q();
    assert_int_equal(count_messages(), 1);
    assert_null(queue_find(y));
    assert_null(queue_find(z));
    struct qmsg *m = queue_find(x);
    assert_non_null(m);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_DEFERRED);
    check_body(x, "content of x, first copy\r\n", 26);
    /* segment 1 holds nothing live any more: retired (and x, a small part of segment 2,
     * may well have been moved on to the new segment 3 already) */
    run_for(50);
    char seg1[700];
    snprintf(seg1, sizeof seg1, "%s/0000000001.seg", qdir);
    assert_int_equal(access(seg1, F_OK), -1);
    assert_true(count_files(".seg") <= 2);
    check_body(x, "content of x, first copy\r\n", 26);
    assert_int_equal(T.ndisp, 0); /* deferred for an hour */
    /* and once x is done, everything but the active segment goes */
    assert_int_equal(queue_delete(x), 0);
    assert_true(run_until(one_segment, 2000));
    queue_close();
    open_q();
    assert_int_equal(count_messages(), 0);
}

/* ---- tests: content ---- */

struct reader {
    struct qbody b;
    const char *expect;
    bool ok;
};

static void *read_in_thread(void *arg)
{
    struct reader *r = arg;
    char buf[70000];
    r->ok = true;
    for (uint64_t off = 0; off < r->b.len;) {
        size_t n = r->b.len - off < sizeof buf ? (size_t)(r->b.len - off) : sizeof buf;
        if (qbody_read(&r->b, buf, n, off) != 0 || memcmp(buf, r->expect + off, n) != 0)
            r->ok = false;
        off += n;
    }
    return NULL;
}

static void test_large_content(void **state)
{
    open_q();
    size_t len = 3 * 1024 * 1024 + 7;
    char *body = xmalloc(len);
    for (size_t i = 0; i < len; i++)
        body[i] = (char)(i * 2654435761u >> 13);
    struct qdraft *d = queue_draft_new();
    size_t off = 0, step = 1;
    while (off < len) { /* uneven pieces across chunk and spill boundaries */
        size_t n = step < len - off ? step : len - off;
        assert_true(queue_draft_write(d, body + off, n));
        off += n;
        step = step * 3 + 1;
        if (step > 300000)
            step = 7;
    }
    assert_int_equal(queue_draft_size(d), len);
    char id[QID_MAX];
    snprintf(id, sizeof id, "%s", queue_draft_id(d));
    const char *rc[] = {"a@x"};
    struct commit_res r = {0};
    queue_draft_commit(d, mkenv(rc, 1, NULL), on_done, &r);
    last_res = &r;
    assert_true(run_until(res_done, 5000));
    assert_int_equal(r.err, 0);
    struct qmsg *m = queue_find(id);
    qmsg_ref(m);
    struct reader rd = {.expect = body};
    qmsg_body(m, &rd.b);
    assert_null(rd.b.mem); /* spilled to a file, so not cached */
    pthread_t t;
    pthread_create(&t, NULL, read_in_thread, &rd);
    pthread_join(t, NULL);
    assert_true(rd.ok);
    qmsg_unref(m);
    /* a medium one spans several chunks and is cached whole */
    size_t mlen = 200000;
    assert_int_equal(commit_full(body, mlen, rc, 1, NULL, id), 0);
    struct qbody b;
    qmsg_body(queue_find(id), &b);
    assert_non_null(b.mem);
    check_body(id, body, mlen);
    queue_close();
    open_q();
    check_body(id, body, mlen);
    free(body);
}

/* ---- tests: faults ---- */

static void test_fault_sync(void **state)
{
    open_q();
    const char *rc[] = {"a@x"};
    char id1[QID_MAX], id2[QID_MAX];
    atomic_store(&fail_fdatasync, 1);
    assert_int_equal(commit_msg("first\r\n", rc, 1, id1), -1);
    assert_null(queue_find(id1));
    assert_int_equal(T.ndisp, 0);
    /* the daemon goes on: the next commit works (in a new segment) */
    assert_int_equal(commit_msg("second\r\n", rc, 1, id2), 0);
    assert_int_equal(T.ndisp, 1);
    queue_close();
    reset_events();
    open_q();
    assert_null(queue_find(id1));
    check_body(id2, "second\r\n", 8);
}

static void test_fault_write(void **state)
{
    open_q();
    const char *rc[] = {"a@x"};
    char id1[QID_MAX], id2[QID_MAX];
    atomic_store(&fail_writev, 1000); /* a full disk */
    assert_int_equal(commit_msg("first\r\n", rc, 1, id1), -1);
    atomic_store(&fail_writev, 0);
    assert_int_equal(commit_msg("second\r\n", rc, 1, id2), 0);
    /* one failed write in a batch: the records are retried one by one and all make it */
    atomic_store(&fail_writev, 1);
    ndone = 0;
    char ids[3][QID_MAX];
    for (int i = 0; i < 3; i++) {
        struct qdraft *d = mkdraft("third\r\n", 7);
        snprintf(ids[i], QID_MAX, "%s", queue_draft_id(d));
        queue_draft_commit(d, mkenv(rc, 1, NULL), count_done, NULL);
    }
    assert_true(wait_count(&ndone, 3, 2000));
    assert_int_equal(atomic_load(&fail_writev), 0);
    queue_close();
    reset_events();
    open_q();
    assert_null(queue_find(id1));
    check_body(id2, "second\r\n", 8);
    for (int i = 0; i < 3; i++)
        check_body(ids[i], "third\r\n", 7);
}

static bool sync_fault_used(void)
{
    return atomic_load(&fail_fdatasync) == 0;
}

static void test_fault_status(void **state)
{
    open_q();
    const char *rc[] = {"a@x", "b@x"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("status\r\n", rc, 2, id), 0);
    atomic_store(&fail_fdatasync, 1);
    report(id, 0, DELIVERY_OK, "2.0.0");
    assert_true(run_until(sync_fault_used, 1000));
    /* the snapshot is written again (after a pause) */
    wait_status_durable();
    queue_close();
    reset_events();
    open_q();
    struct qmsg *m = queue_find(id);
    assert_int_equal(qmsg_rcpt(m, 0)->state, QR_DELIVERED);
    assert_int_equal(qmsg_rcpt(m, 1)->state, QR_PENDING);
    assert_true(wait_count(&T.ndisp, 1, 1000));
    assert_int_equal(disp_count(id, 1), 1);
}

/* ternd runs in its spool folder and names it "." */
static void test_relative_spool(void **state)
{
    assert_int_equal(mkdir(spool, 0700), 0);
    char cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(spool), 0);
    P.spool_dir = ".";
    open_q();
    assert_int_equal(chdir("/"), 0); /* only the folder at queue_open() counts */
    const char *rc[] = {"a@x"};
    char id[QID_MAX];
    assert_int_equal(commit_msg("relative\r\n", rc, 1, id), 0);
    queue_close();
    assert_int_equal(chdir(cwd), 0);
    P.spool_dir = spool;
    open_q();
    check_body(id, "relative\r\n", 10);
}

static void test_lock(void **state)
{
    open_q();
    char path[600];
    snprintf(path, sizeof path, "%s/queue/lock", spool);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), -1); /* a second daemon would fail */
    close(fd);
}

static int group_setup(void **state)
{
    snprintf(base, sizeof base, "/tmp/tern-test-queue-XXXXXX");
    if (mkdtemp(base) == NULL)
        return -1;
    log_set_level(LOG_LVL_WARN);
    loop_init();
    poll_timer = timer_new(poll_cb, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    timer_free(poll_timer);
    loop_free();
    sh("rm -rf %s", base);
    return 0;
}

#define T_(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T_(test_commit_dispatch),
        T_(test_refused_commits),
        T_(test_retry_schedule),
        T_(test_expiry),
        T_(test_dsn_decisions),
        T_(test_delay_warning),
        T_(test_expand),
        T_(test_expand_limits),
        T_(test_hold_release_flush_delete),
        T_(test_delete_in_flight),
        T_(test_big_snapshot_throttle),
        T_(test_group_commit),
        T_(test_restart),
        T_(test_crash_copies),
        T_(test_truncated_tail),
        T_(test_zero_tail),
        T_(test_zeros_ahead_of_records),
        T_(test_zeros_ahead_disk_full),
        T_(test_garbage_tail),
        T_(test_damaged_record),
        T_(test_failure_dsn_ordering),
        T_(test_success_dsn_after_restart),
        T_(test_compaction),
        T_(test_recover_handmade),
        T_(test_large_content),
        T_(test_fault_sync),
        T_(test_fault_write),
        T_(test_fault_status),
        T_(test_relative_spool),
        T_(test_lock),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
