/* LDWRAP: -Wl,--wrap=maildir_deliver_batch */
/*
 * test_local_delivery: the delivery side behind the queue's hooks: deliver/dispatch,
 * deliver/local (the local agent), deliver/remote (the stand-in) and deliver/bounce.
 *
 * The queue is faked in this file (struct qmsg, queue_report, queue_expand, queue_dsn_done,
 * drafts), and so is remote_deliver (the outbound client): the linker takes these
 * definitions before it would look into libtern.a, so the test depends on neither and can
 * check every call made to them. The fake
 * queue_expand() calls the dispatch hook at once, as the real queue does; draft commits
 * complete on a later loop iteration, as the real ones do. maildir_deliver_batch is wrapped
 * (--wrap) to count batches and to inject Maildir failures.
 *
 * Covered: resolution outcomes (mailbox, +tag, alias expansion with final children,
 * unknown 5.1.1, alias loop 5.4.6, remote addresses handed to remote_deliver, bare
 * Postmaster), exact Maildir bytes
 * with the Return-Path/Delivered-To prefix (content in memory and in a file), batching of
 * jobs that arrive together, status codes of Maildir failures, message references coming
 * back to where they started, configuration swap, shutdown, and the bouncer: reports to
 * the sender, to postmaster for a null sender, dropped loops, NOTIFY filtering, RET=HDRS
 * and size limit, unreadable content, a failed commit asked again, duplicate requests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"
#include "deliver/dispatch.h"
#include "deliver/maildir.h"
#include "deliver/remote.h"
#include "lib/buf.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "queue/queue.h"

/* ---- the fake queue ---- */

struct qmsg {
    char id[QID_MAX];
    struct envelope env;
    struct qrcpt *r;
    size_t n, cap;
    int refs;
    const char *mem; /* the content: in memory, or len bytes at off in fd */
    int fd;
    uint64_t off;
    size_t len;
};

struct outcome {
    struct qmsg *m;
    uint32_t rcpt;
    enum delivery_kind kind;
    char status[16];
    char diag[512];
};

struct draft_rec {
    char *content;
    size_t len;
    struct envelope *env;
};

struct qdraft {
    char id[QID_MAX];
    struct buf b;
};

static struct queue_hooks hooks;
static struct outcome outcomes[1024];
static size_t noutcomes;
static size_t nexpanded;
static struct {
    struct qmsg *m;
    enum dsn_kind kind;
    uint32_t rcpts[16];
    size_t n;
} dsn_done[64];
static size_t ndsn_done;
static struct draft_rec drafts[64];
static size_t ndrafts;
static bool commit_fails, draft_write_fails, body_read_fails;
static unsigned draft_counter;

const char *qmsg_id(const struct qmsg *m)
{
    return m->id;
}

const struct envelope *qmsg_envelope(const struct qmsg *m)
{
    return &m->env;
}

size_t qmsg_size(const struct qmsg *m)
{
    return m->len;
}

size_t qmsg_nrcpts(const struct qmsg *m)
{
    return m->n;
}

const struct qrcpt *qmsg_rcpt(const struct qmsg *m, uint32_t i)
{
    assert_true(i < m->n);
    return &m->r[i];
}

void qmsg_ref(struct qmsg *m)
{
    m->refs++;
}

void qmsg_unref(struct qmsg *m)
{
    assert_true(m->refs > 1); /* the test holds the first reference */
    m->refs--;
}

void qmsg_body(struct qmsg *m, struct qbody *out)
{
    out->mem = m->mem;
    out->fd = m->fd;
    out->off = m->off;
    out->len = m->len;
}

int qbody_read(const struct qbody *b, void *buf, size_t len, uint64_t off)
{
    if (body_read_fails)
        return -1;
    if (b->mem) {
        memcpy(buf, b->mem + off, len);
        return 0;
    }
    return fs_pread_all(b->fd, buf, len, (off_t)(b->off + off));
}

static uint32_t add_rcpt(struct qmsg *m, const char *addr, const char *orcpt, unsigned notify,
                         uint32_t parent)
{
    m->r = xgrow(m->r, &m->cap, m->n + 1, sizeof *m->r);
    struct qrcpt *r = &m->r[m->n];
    memset(r, 0, sizeof *r);
    r->addr = xstrdup(addr);
    r->orcpt = orcpt ? xstrdup(orcpt) : NULL;
    r->notify = notify;
    r->parent = parent;
    r->state = QR_PENDING;
    return (uint32_t)m->n++;
}

void queue_report(struct qmsg *m, uint32_t rcpt, const struct delivery_result *res)
{
    assert_true(noutcomes < ARRAY_LEN(outcomes));
    struct qrcpt *r = &m->r[rcpt];
    assert_true(r->in_flight); /* exactly one outcome per dispatch */
    r->in_flight = false;
    r->state = res->kind == DELIVERY_OK ? QR_DELIVERED
               : res->kind == DELIVERY_TEMP ? QR_DEFERRED
                                            : QR_FAILED;
    free((char *)r->status);
    free((char *)r->last_reply);
    r->status = xstrdup(res->status);
    r->last_reply = res->diagnostic ? xstrdup(res->diagnostic) : NULL;
    struct outcome *o = &outcomes[noutcomes++];
    o->m = m;
    o->rcpt = rcpt;
    o->kind = res->kind;
    snprintf(o->status, sizeof o->status, "%s", res->status);
    snprintf(o->diag, sizeof o->diag, "%s", res->diagnostic ? res->diagnostic : "");
}

static void dispatch_rcpts(struct qmsg *m, const uint32_t *idx, size_t n)
{
    for (size_t i = 0; i < n; i++)
        m->r[idx[i]].in_flight = true;
    hooks.dispatch(hooks.arg, m, idx, n);
}

uint32_t queue_expand(struct qmsg *m, uint32_t parent, const char *const *addrs, size_t n)
{
    struct qrcpt *p = &m->r[parent];
    assert_true(p->in_flight);
    p->in_flight = false;
    p->state = QR_EXPANDED;
    nexpanded++;
    char *orcpt = p->orcpt ? xstrdup(p->orcpt) : xasprintf("rfc822;%s", p->addr);
    unsigned notify = p->notify;
    uint32_t first = (uint32_t)m->n;
    uint32_t *idx = xcalloc(n, sizeof *idx);
    for (size_t i = 0; i < n; i++)
        idx[i] = add_rcpt(m, addrs[i], orcpt, notify, parent);
    free(orcpt);
    dispatch_rcpts(m, idx, n); /* as the real queue: dispatched at once */
    free(idx);
    return first;
}

void queue_dsn_done(struct qmsg *m, enum dsn_kind kind, const uint32_t *rcpts, size_t n)
{
    assert_true(ndsn_done < ARRAY_LEN(dsn_done));
    dsn_done[ndsn_done].m = m;
    dsn_done[ndsn_done].kind = kind;
    assert_true(n <= 16);
    memcpy(dsn_done[ndsn_done].rcpts, rcpts, n * sizeof *rcpts);
    dsn_done[ndsn_done].n = n;
    ndsn_done++;
}

struct qdraft *queue_draft_new(void)
{
    struct qdraft *d = xcalloc(1, sizeof *d);
    snprintf(d->id, sizeof d->id, "DSN%04u", ++draft_counter);
    buf_init(&d->b, 16 << 20);
    return d;
}

const char *queue_draft_id(const struct qdraft *d)
{
    return d->id;
}

bool queue_draft_write(struct qdraft *d, const void *p, size_t n)
{
    return !draft_write_fails && buf_add(&d->b, p, n);
}

void queue_draft_abort(struct qdraft *d)
{
    buf_release(&d->b);
    free(d);
}

struct pending_commit {
    struct timer *t;
    void (*done)(void *arg, int err);
    void *arg;
    int err;
};

static void commit_fire(void *arg)
{
    struct pending_commit *pc = arg;
    timer_free(pc->t);
    pc->done(pc->arg, pc->err);
    free(pc);
}

void queue_draft_commit(struct qdraft *d, struct envelope *env, void (*done)(void *arg, int err),
                        void *arg)
{
    struct pending_commit *pc = xcalloc(1, sizeof *pc);
    pc->done = done;
    pc->arg = arg;
    pc->err = commit_fails ? -1 : 0;
    if (!commit_fails) {
        assert_true(ndrafts < ARRAY_LEN(drafts));
        drafts[ndrafts].content = buf_steal(&d->b, &drafts[ndrafts].len);
        drafts[ndrafts].env = env;
        ndrafts++;
    } else {
        envelope_free(env);
    }
    buf_release(&d->b);
    free(d);
    pc->t = timer_new(commit_fire, pc); /* never inside this call */
    timer_arm(pc->t, 1);
}

/* ---- the fake outbound client (deliver/remote is another module's, and does network) ---- */

static size_t remote_calls;

void remote_deliver(struct qmsg *m, const uint32_t *rcpts, size_t n)
{
    static const struct delivery_result deferred = {
        .kind = DELIVERY_TEMP, .status = "4.4.0", .diagnostic = "x-tern; fake remote"};
    remote_calls++;
    for (size_t i = 0; i < n; i++) /* dispatch never calls this from inside a queue hook */
        queue_report(m, rcpts[i], &deferred);
}

/* ---- wrapped Maildir batches ---- */

static size_t batch_calls, batch_jobs;
static int inject_errnum; /* 0: deliver for real */

void __real_maildir_deliver_batch(struct maildir_job *jobs, size_t n);
void __wrap_maildir_deliver_batch(struct maildir_job *jobs, size_t n);
void __wrap_maildir_deliver_batch(struct maildir_job *jobs, size_t n)
{
    __atomic_add_fetch(&batch_calls, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&batch_jobs, n, __ATOMIC_RELAXED);
    if (inject_errnum == 0) {
        __real_maildir_deliver_batch(jobs, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        jobs[i].ok = false;
        jobs[i].permanent = false;
        jobs[i].errnum = inject_errnum;
        snprintf(jobs[i].error, sizeof jobs[i].error, "injected: %s", strerror(inject_errnum));
    }
}

/* ---- fixture ---- */

static char tmpdir[64];
static struct conf *conf;
static struct dispatch *disp;

static void write_file(const char *name, const char *content)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static struct conf *load_conf(void)
{
    char text[2048], path[256], err[512];
    snprintf(text, sizeof text,
             "hostname = mx.example.test\n"
             "spool = %s/spool\n"
             "delivery_workers = 2\n"
             "postmaster = postmaster@example.test\n"
             "[listen mx]\naddress = 127.0.0.1:2525\nrole = mx\n"
             "[domain example.test]\n"
             "mailboxes = %s/mail/%%d/%%u\n"
             "users = users\n"
             "aliases = aliases\n"
             "[domain closed.test]\n"
             "mailboxes = %s/closed/%%d/%%u\n"
             "users = users\n",
             tmpdir, tmpdir, tmpdir);
    write_file("ternd.conf", text);
    snprintf(path, sizeof path, "%s/ternd.conf", tmpdir);
    struct conf *c = conf_load(path, err, sizeof err);
    if (c == NULL)
        fail_msg("conf_load: %s", err);
    /* what ternd does before dropping privileges (closed.test stays unopened) */
    char mail[256];
    snprintf(mail, sizeof mail, "%s/mail", tmpdir);
    mkdir(mail, 0700);
    struct domain_conf *d = (struct domain_conf *)conf_find_domain(c, "example.test");
    d->mail_base_fd = open(d->mail_base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(d->mail_base_fd >= 0);
    return c;
}

static int setup(void **state)
{
    log_set_level(LOG_LVL_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tern-test-ldeliv-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    write_file("users", "alice\ncarol\ndave\nerin\npostmaster\n");
    write_file("aliases", "team: alice, carol, far@remote.example\n"
                          "erin: erin, carol\n" /* keeps a copy for the user erin */
                          "loopa: loopb\nloopb: loopa\n"
                          "pm: postmaster\n");
    loop_init();
    conf = load_conf();
    disp = dispatch_new(conf);
    dispatch_hooks(disp, &hooks);
    return 0;
}

static int teardown(void **state)
{
    dispatch_free(disp);
    assert_int_equal(conf->refs, 1);
    conf_unref(conf);
    loop_free();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static void reset(void)
{
    noutcomes = nexpanded = ndsn_done = remote_calls = 0;
    for (size_t i = 0; i < ndrafts; i++) {
        free(drafts[i].content);
        envelope_free(drafts[i].env);
    }
    ndrafts = 0;
    batch_calls = batch_jobs = 0;
    inject_errnum = 0;
    commit_fails = draft_write_fails = body_read_fails = false;
}

static const char body1[] = "From: sender@example.org\r\nTo: alice@example.test\r\n"
                            "Subject: test\r\nMessage-ID: <m1@example.org>\r\n\r\n"
                            "Hello.\r\n.leading dot kept\r\nbare\nLF kept\r\n";

/* without the bare LF: a message that can be returned whole in a bounce */
static const char body2[] = "From: sender@example.org\r\nTo: nobody@example.test\r\n"
                            "Subject: test\r\nMessage-ID: <m2@example.org>\r\n\r\n"
                            "Hello.\r\n.leading dot kept\r\n";

static struct qmsg *new_msg(const char *id, const char *sender)
{
    struct qmsg *m = xcalloc(1, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", id);
    envelope_init(&m->env);
    envelope_set(&m->env.sender, sender);
    m->env.arrival = 1700000000;
    m->refs = 1;
    m->mem = body1;
    m->fd = -1;
    m->len = sizeof body1 - 1;
    return m;
}

static void free_msg(struct qmsg *m)
{
    assert_int_equal(m->refs, 1); /* every reference taken was given back */
    for (size_t i = 0; i < m->n; i++) {
        free((char *)m->r[i].addr);
        free((char *)m->r[i].orcpt);
        free((char *)m->r[i].status);
        free((char *)m->r[i].last_reply);
    }
    free(m->r);
    envelope_clear(&m->env);
    free(m);
}

static void dispatch_all(struct qmsg *m)
{
    uint32_t *idx = xcalloc(m->n, sizeof *idx);
    for (size_t i = 0; i < m->n; i++)
        idx[i] = (uint32_t)i;
    dispatch_rcpts(m, idx, m->n);
    free(idx);
}

/* Run the loop until cond() holds (or fail after 10 s). */
static bool (*wait_cond)(void);
static uint64_t wait_deadline;
static struct timer *wait_timer;

static void wait_tick(void *arg)
{
    if (wait_cond() || loop_now_ms() > wait_deadline) {
        loop_exit();
        return;
    }
    timer_arm(wait_timer, 2);
}

static void run_until(bool (*cond)(void))
{
    wait_cond = cond;
    wait_deadline = loop_now_ms() + 10000;
    wait_timer = timer_new(wait_tick, NULL);
    timer_arm(wait_timer, 1);
    loop_run();
    timer_free(wait_timer);
    if (!cond())
        fail_msg("timed out waiting");
}

static size_t want_outcomes, want_dsn_done;
static bool outcomes_reached(void)
{
    return noutcomes >= want_outcomes && dispatch_pending(disp) == 0;
}
static bool dsn_done_reached(void)
{
    return ndsn_done >= want_dsn_done && dispatch_pending(disp) == 0;
}
static bool all_idle(void)
{
    return dispatch_pending(disp) == 0;
}

/* The outcome of the first recipient with this address (exactly one is allowed). */
static const struct outcome *outcome_for(struct qmsg *m, const char *addr)
{
    size_t idx = 0;
    while (idx < m->n && strcmp(m->r[idx].addr, addr) != 0)
        idx++;
    if (idx == m->n)
        fail_msg("no recipient %s", addr);
    const struct outcome *found = NULL;
    for (size_t i = 0; i < noutcomes; i++)
        if (outcomes[i].m == m && outcomes[i].rcpt == idx) {
            assert_null(found); /* one outcome per recipient */
            found = &outcomes[i];
        }
    if (found == NULL)
        fail_msg("no outcome for %s", addr);
    return found;
}

static void expect_outcome(struct qmsg *m, const char *addr, enum delivery_kind kind,
                           const char *status, const char *diag_part)
{
    const struct outcome *o = outcome_for(m, addr);
    if (o->kind != kind || strcmp(o->status, status) != 0)
        fail_msg("%s: got %d %s (%s), want %d %s", addr, o->kind, o->status, o->diag, kind,
                 status);
    if (diag_part && strstr(o->diag, diag_part) == NULL)
        fail_msg("%s: diagnostic \"%s\" lacks \"%s\"", addr, o->diag, diag_part);
}

static size_t maildir_files(const char *domain, const char *user, char ***names)
{
    char path[512];
    snprintf(path, sizeof path, "%s/mail/%s/%s/new", tmpdir, domain, user);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.') {
            if (names) {
                *names = xrealloc(*names, (n + 1) * sizeof **names);
                (*names)[n] = xasprintf("%s/%s", path, e->d_name);
            }
            n++;
        }
    closedir(d);
    return n;
}

static void clear_maildirs(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s/mail/example.test", tmpdir);
    assert_int_equal(system(cmd), 0);
}

static void expect_file_contents(const char *path, const char *sender, const char *delivered_to,
                                 const char *body, size_t len)
{
    char *data;
    size_t n;
    assert_int_equal(fs_read_file_at(AT_FDCWD, path, 1 << 20, &data, &n), 0);
    char prefix[512];
    int pl = snprintf(prefix, sizeof prefix, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", sender,
                      delivered_to);
    assert_int_equal(n, (size_t)pl + len);
    assert_memory_equal(data, prefix, (size_t)pl);
    assert_memory_equal(data + pl, body, len);
    free(data);
}

/* ---- delivery tests ---- */

static void test_mixed_recipients(void **state)
{
    reset();
    clear_maildirs();
    struct qmsg *m = new_msg("Q1", "sender@example.org");
    add_rcpt(m, "alice@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "Alice+news@Example.TEST", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "team@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "nobody@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "loopa@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "far2@remote.example", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "Postmaster", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "erin@example.test", NULL, 0, QRCPT_NO_PARENT);
    dispatch_all(m);
    assert_int_equal(noutcomes, 0); /* nothing happens inside the hook */
    want_outcomes = 10; /* 8 - team - erin + alice, carol, far + erin, carol */
    run_until(outcomes_reached);
    run_until(all_idle);
    assert_int_equal(noutcomes, 11);
    expect_outcome(m, "alice@example.test", DELIVERY_OK, "2.0.0", NULL);
    expect_outcome(m, "Alice+news@Example.TEST", DELIVERY_OK, "2.0.0", NULL);
    expect_outcome(m, "nobody@example.test", DELIVERY_PERM, "5.1.1", "x-tern; no such user");
    expect_outcome(m, "loopa@example.test", DELIVERY_PERM, "5.4.6", "alias loop");
    expect_outcome(m, "far2@remote.example", DELIVERY_TEMP, "4.4.0", "x-tern; fake remote");
    assert_int_equal(remote_calls, 2); /* far2 with the first batch, far after the expansion */
    expect_outcome(m, "Postmaster", DELIVERY_OK, "2.0.0", NULL);
    /* team expanded; its children are final and went where they belong */
    assert_int_equal(nexpanded, 2);
    assert_int_equal(m->r[2].state, QR_EXPANDED);
    assert_int_equal(m->r[7].state, QR_EXPANDED);
    assert_int_equal(m->n, 13);
    for (uint32_t i = 8; i < 11; i++) {
        assert_int_equal(m->r[i].parent, 2);
        assert_string_equal(m->r[i].orcpt, "rfc822;team@example.test");
    }
    const struct outcome *o = NULL;
    for (size_t i = 0; i < noutcomes; i++)
        if (outcomes[i].rcpt == 8) /* the child alice@example.test */
            o = &outcomes[i];
    assert_non_null(o);
    assert_int_equal(o->kind, DELIVERY_OK);
    expect_outcome(m, "carol@example.test", DELIVERY_OK, "2.0.0", NULL);
    expect_outcome(m, "far@remote.example", DELIVERY_TEMP, "4.4.0", NULL);

    /* the files: alice once, though reached three ways (direct, +news, via team): one
     * message, one copy per mailbox; the later ways report OK without a second file */
    char **names = NULL;
    size_t n = maildir_files("example.test", "alice", &names);
    assert_int_equal(n, 1);
    for (size_t i = 0; i < n; i++) {
        expect_file_contents(names[i], "sender@example.org", "alice@example.test", body1,
                             sizeof body1 - 1);
        free(names[i]);
    }
    free(names);
    /* erin's own copy: the child erin@ is final, delivered, not expanded again */
    assert_int_equal(m->r[11].parent, 7);
    assert_int_equal(m->r[11].state, QR_DELIVERED);
    assert_int_equal(maildir_files("example.test", "erin", NULL), 1);
    assert_int_equal(maildir_files("example.test", "carol", NULL), 1);
    assert_int_equal(maildir_files("example.test", "postmaster", NULL), 1);
    free_msg(m);
}

static void test_body_in_file_and_null_sender(void **state)
{
    reset();
    clear_maildirs();
    char spool[256];
    snprintf(spool, sizeof spool, "%s/spoolfile", tmpdir);
    int fd = open(spool, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(fs_write_all(fd, "JUNKJUNK", 8), 0);
    assert_int_equal(fs_write_all(fd, body1, sizeof body1 - 1), 0);
    assert_int_equal(fs_write_all(fd, "MOREJUNK", 8), 0);
    struct qmsg *m = new_msg("Q2", "");
    m->mem = NULL;
    m->fd = fd;
    m->off = 8;
    add_rcpt(m, "dave@example.test", NULL, 0, QRCPT_NO_PARENT);
    dispatch_all(m);
    want_outcomes = 1;
    run_until(outcomes_reached);
    expect_outcome(m, "dave@example.test", DELIVERY_OK, "2.0.0", NULL);
    char **names = NULL;
    assert_int_equal(maildir_files("example.test", "dave", &names), 1);
    expect_file_contents(names[0], "", "dave@example.test", body1, sizeof body1 - 1);
    free(names[0]);
    free(names);
    close(fd);
    free_msg(m);
}

static void test_batching(void **state)
{
    reset();
    clear_maildirs();
    enum { MSGS = 40 };
    struct qmsg *m[MSGS];
    for (int i = 0; i < MSGS; i++) {
        char id[16];
        snprintf(id, sizeof id, "B%d", i);
        m[i] = new_msg(id, "sender@example.org");
        add_rcpt(m[i], "alice@example.test", NULL, 0, QRCPT_NO_PARENT);
        add_rcpt(m[i], "carol@example.test", NULL, 0, QRCPT_NO_PARENT);
        dispatch_all(m[i]); /* all due in the same loop iteration */
    }
    want_outcomes = 2 * MSGS;
    run_until(outcomes_reached);
    assert_int_equal(batch_jobs, 2 * MSGS);
    /* two worker slots: the 80 jobs go as two batches of 40, not 80 single writes */
    assert_int_equal(batch_calls, 2);
    for (size_t i = 0; i < noutcomes; i++)
        assert_int_equal(outcomes[i].kind, DELIVERY_OK);
    assert_int_equal(maildir_files("example.test", "alice", NULL), MSGS);
    assert_int_equal(maildir_files("example.test", "carol", NULL), MSGS);
    for (int i = 0; i < MSGS; i++)
        free_msg(m[i]);
}

static void test_maildir_failures(void **state)
{
    reset();
    clear_maildirs();
    struct qmsg *m = new_msg("Q3", "sender@example.org");
    add_rcpt(m, "alice@closed.test", NULL, 0, QRCPT_NO_PARENT); /* base folder not open */
    dispatch_all(m);
    want_outcomes = 1;
    run_until(outcomes_reached);
    expect_outcome(m, "alice@closed.test", DELIVERY_TEMP, "4.3.5", "is not open");

    /* the Maildir path is a regular file: a configuration fault, deferred with 4.3.5 */
    char path[256];
    snprintf(path, sizeof path, "%s/mail/example.test", tmpdir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/mail/example.test/carol", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    add_rcpt(m, "carol@example.test", NULL, 0, QRCPT_NO_PARENT);
    uint32_t idx = 1;
    dispatch_rcpts(m, &idx, 1);
    want_outcomes = 2;
    run_until(outcomes_reached);
    expect_outcome(m, "carol@example.test", DELIVERY_TEMP, "4.3.5", "x-tern; maildir: ");
    unlink(path);

    /* over quota and disk full: temporary, with their own codes */
    static const struct {
        int err;
        const char *status;
    } cases[] = {{EDQUOT, "4.2.2"}, {ENOSPC, "4.3.1"}, {EACCES, "4.2.0"}, {EIO, "4.3.0"}};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        inject_errnum = cases[i].err;
        char addr[64];
        snprintf(addr, sizeof addr, "dave+%zu@example.test", i);
        idx = add_rcpt(m, addr, NULL, 0, QRCPT_NO_PARENT);
        dispatch_rcpts(m, &idx, 1);
        want_outcomes = noutcomes + 1;
        run_until(outcomes_reached);
        expect_outcome(m, addr, DELIVERY_TEMP, cases[i].status, "injected");
    }
    free_msg(m);
}

static void test_set_conf(void **state)
{
    reset();
    struct conf *c2 = load_conf();
    dispatch_set_conf(disp, c2);
    assert_int_equal(c2->refs, 2);
    assert_int_equal(conf->refs, 1);
    struct qmsg *m = new_msg("Q4", "sender@example.org");
    add_rcpt(m, "alice@example.test", NULL, 0, QRCPT_NO_PARENT);
    dispatch_all(m);
    want_outcomes = 1;
    run_until(outcomes_reached);
    expect_outcome(m, "alice@example.test", DELIVERY_OK, "2.0.0", NULL);
    assert_int_equal(c2->refs, 2); /* the job's reference came back */
    dispatch_set_conf(disp, conf);
    assert_int_equal(c2->refs, 1);
    conf_unref(c2);
    free_msg(m);
}

/* ---- bounce tests ---- */

static const struct draft_rec *only_draft(void)
{
    assert_int_equal(ndrafts, 1);
    return &drafts[0];
}

static bool has(const struct draft_rec *d, const char *s)
{
    return memmem(d->content, d->len, s, strlen(s)) != NULL;
}

static void notify(struct qmsg *m, enum dsn_kind kind, const uint32_t *rcpts, size_t n)
{
    hooks.notify(hooks.arg, m, kind, rcpts, n);
}

static void test_bounce_to_sender(void **state)
{
    reset();
    struct qmsg *m = new_msg("Q5", "sender@example.org");
    m->mem = body2;
    m->len = sizeof body2 - 1;
    m->env.envid = xstrdup("ENV+2B1");
    add_rcpt(m, "nobody@example.test", "rfc822;nobody+2Bx@example.test", 0, QRCPT_NO_PARENT);
    dispatch_all(m);
    want_outcomes = 1;
    run_until(outcomes_reached);
    uint32_t idx = 0;
    notify(m, DSN_FAILURE, &idx, 1);
    assert_int_equal(ndsn_done, 0);
    want_dsn_done = 1;
    run_until(dsn_done_reached);
    assert_int_equal(dsn_done[0].kind, DSN_FAILURE);
    assert_int_equal(dsn_done[0].n, 1);
    const struct draft_rec *d = only_draft();
    assert_string_equal(d->env->sender, "");
    assert_int_equal(d->env->nrcpts, 1);
    assert_string_equal(d->env->rcpts[0].addr, "sender@example.org");
    assert_string_equal(d->env->protocol, "local");
    assert_int_equal(d->env->body, BODY_7BIT);
    assert_true(has(d, "To: <sender@example.org>\r\n"));
    assert_true(has(d, "From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\n"));
    assert_true(has(d, "Subject: Undelivered Mail Returned to Sender\r\n"));
    assert_true(has(d, "Reporting-MTA: dns; mx.example.test\r\n"));
    assert_true(has(d, "Original-Envelope-Id: ENV+1\r\n"));
    assert_true(has(d, "X-Tern-Queue-ID: Q5\r\n"));
    assert_true(has(d, "Original-Recipient: rfc822; nobody+x@example.test\r\n"));
    assert_true(has(d, "Final-Recipient: rfc822; nobody@example.test\r\n"));
    assert_true(has(d, "Action: failed\r\n"));
    assert_true(has(d, "Status: 5.1.1\r\n"));
    assert_true(has(d, "Diagnostic-Code: x-tern; no such user here\r\n"));
    assert_true(has(d, "Content-Type: message/rfc822\r\n"));
    assert_true(has(d, "Hello.\r\n.leading dot kept\r\n")); /* the whole original */
    free_msg(m);
}

static void test_bounce_null_sender(void **state)
{
    reset();
    struct qmsg *m = new_msg("Q6", "");
    add_rcpt(m, "gone@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "postmaster@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "pm@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "alice@example.test", NULL, 0, 2); /* as if expanded from pm -> ... */
    add_rcpt(m, "carol@example.test", NULL, 0, QRCPT_NO_PARENT);
    /* pm's child is "postmaster@example.test" in real life; here one level more */
    m->r[2].parent = 1;
    for (uint32_t i = 0; i < m->n; i++) {
        m->r[i].state = QR_FAILED;
        m->r[i].status = xstrdup("5.1.1");
        m->r[i].last_reply = xstrdup("x-tern; no such user here");
    }
    /* a failure with a null sender goes to postmaster; those about postmaster are dropped */
    uint32_t all[] = {0, 1, 2, 3};
    notify(m, DSN_FAILURE, all, 4);
    want_dsn_done = 2; /* the dropped ones at once, the others after the commit */
    run_until(dsn_done_reached);
    size_t acked = 0;
    for (size_t i = 0; i < ndsn_done; i++)
        acked += dsn_done[i].n;
    assert_int_equal(acked, 4);
    const struct draft_rec *d = only_draft();
    assert_string_equal(d->env->rcpts[0].addr, "postmaster@example.test");
    assert_string_equal(d->env->sender, "");
    assert_true(has(d, "Final-Recipient: rfc822; gone@example.test\r\n"));
    assert_false(has(d, "Final-Recipient: rfc822; postmaster@example.test"));
    assert_false(has(d, "Final-Recipient: rfc822; alice@example.test"));

    /* delay and success notices for a null sender are dropped */
    reset();
    uint32_t four = 4;
    m->r[4].state = QR_DEFERRED;
    notify(m, DSN_DELAY, &four, 1);
    m->r[4].notify = DSN_NOTIFY_SUCCESS;
    notify(m, DSN_SUCCESS, &four, 1);
    want_dsn_done = 2;
    run_until(dsn_done_reached);
    run_until(all_idle);
    assert_int_equal(ndrafts, 0);
    free_msg(m);
}

static void test_bounce_notify_filter(void **state)
{
    reset();
    struct qmsg *m = new_msg("Q7", "sender@example.org");
    add_rcpt(m, "a@example.test", NULL, DSN_NOTIFY_NEVER, QRCPT_NO_PARENT);
    add_rcpt(m, "b@example.test", NULL, DSN_NOTIFY_SUCCESS, QRCPT_NO_PARENT);
    add_rcpt(m, "c@example.test", NULL, 0, QRCPT_NO_PARENT);
    add_rcpt(m, "list@example.test", NULL, DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE,
             QRCPT_NO_PARENT);
    add_rcpt(m, "far@remote.example", NULL, DSN_NOTIFY_SUCCESS, QRCPT_NO_PARENT);
    m->r[3].state = QR_EXPANDED;
    m->r[4].state = QR_DELIVERED;
    m->r[4].relayed = true;
    m->r[1].state = m->r[2].state = QR_DELIVERED;
    /* success: only those that asked; a and c did not */
    uint32_t all[] = {0, 1, 2, 3, 4};
    notify(m, DSN_SUCCESS, all, 5);
    want_dsn_done = 2;
    run_until(dsn_done_reached);
    const struct draft_rec *d = only_draft();
    assert_true(has(d, "Subject: Delivery Status Notification (Success)\r\n"));
    assert_true(has(d, "Final-Recipient: rfc822; b@example.test\r\nAction: delivered\r\n"));
    assert_true(has(d, "Final-Recipient: rfc822; list@example.test\r\nAction: expanded\r\n"));
    assert_true(has(d, "Final-Recipient: rfc822; far@remote.example\r\nAction: relayed\r\n"));
    assert_false(has(d, "a@example.test"));
    assert_false(has(d, "Final-Recipient: rfc822; c@example.test"));
    assert_true(has(d, "Content-Type: text/rfc822-headers\r\n")); /* no failure: headers */
    assert_false(has(d, "Hello."));
    /* failure: a (NEVER) and b (SUCCESS only) are filtered, c (default) is not */
    reset();
    notify(m, DSN_FAILURE, all, 3);
    want_dsn_done = 2;
    run_until(dsn_done_reached);
    d = only_draft();
    assert_true(has(d, "Final-Recipient: rfc822; c@example.test\r\n"));
    assert_false(has(d, "Final-Recipient: rfc822; b@example.test"));
    free_msg(m);
}

static void test_bounce_delay(void **state)
{
    reset();
    struct qmsg *m = new_msg("Q8", "sender@example.org");
    m->env.ret = DSN_RET_FULL;
    add_rcpt(m, "far@remote.example", NULL, 0, QRCPT_NO_PARENT);
    m->r[0].state = QR_DEFERRED;
    m->r[0].status = xstrdup("4.4.0");
    m->r[0].last_reply = xstrdup("x-tern; outbound delivery is not configured in this build");
    uint32_t idx = 0;
    notify(m, DSN_DELAY, &idx, 1);
    want_dsn_done = 1;
    run_until(dsn_done_reached);
    const struct draft_rec *d = only_draft();
    assert_true(has(d, "Subject: Delivery Status Notification (Delay)\r\n"));
    assert_true(has(d, "Action: delayed\r\n"));
    /* arrival + queue_lifetime (5 days by default) */
    assert_true(has(d, "Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"));
    assert_true(has(d, "Content-Type: text/rfc822-headers\r\n"));
    free_msg(m);
}

static void test_bounce_return_rules(void **state)
{
    /* RET=HDRS: headers only */
    reset();
    struct qmsg *m = new_msg("Q9", "sender@example.org");
    m->env.ret = DSN_RET_HDRS;
    add_rcpt(m, "gone@example.test", NULL, 0, QRCPT_NO_PARENT);
    m->r[0].state = QR_FAILED;
    uint32_t idx = 0;
    notify(m, DSN_FAILURE, &idx, 1);
    want_dsn_done = 1;
    run_until(dsn_done_reached);
    assert_true(has(only_draft(), "Content-Type: text/rfc822-headers\r\n"));
    assert_true(has(only_draft(), "Message-ID: <m1@example.org>\r\n"));
    assert_false(has(only_draft(), "Hello."));

    /* larger than BOUNCE_RETURN_LIMIT: headers only, even with RET=FULL */
    reset();
    size_t big = 200 * 1024;
    char *content = xmalloc(big);
    memcpy(content, body1, sizeof body1 - 1);
    for (size_t i = sizeof body1 - 1; i < big; i++)
        content[i] = (i % 80 == 79) ? '\n' : (i % 80 == 78 ? '\r' : 'x');
    m->mem = content;
    m->len = big;
    m->env.ret = DSN_RET_FULL;
    notify(m, DSN_FAILURE, &idx, 1);
    want_dsn_done = 1;
    run_until(dsn_done_reached);
    assert_true(has(only_draft(), "Content-Type: text/rfc822-headers\r\n"));
    assert_true(has(only_draft(), "too large"));
    assert_true(only_draft()->len < 20 * 1024);

    /* the content cannot be read: the notice goes without it */
    reset();
    body_read_fails = true;
    notify(m, DSN_FAILURE, &idx, 1);
    want_dsn_done = 1;
    run_until(dsn_done_reached);
    assert_false(has(only_draft(), "rfc822-headers"));
    assert_false(has(only_draft(), "message/rfc822"));
    free(content);
    m->mem = body1;
    free_msg(m);
}

static void test_bounce_commit_failure_and_duplicates(void **state)
{
    reset();
    struct qmsg *m = new_msg("Q10", "sender@example.org");
    add_rcpt(m, "gone@example.test", NULL, 0, QRCPT_NO_PARENT);
    m->r[0].state = QR_FAILED;
    uint32_t idx = 0;
    commit_fails = true;
    notify(m, DSN_FAILURE, &idx, 1);
    run_until(all_idle);
    assert_int_equal(ndsn_done, 0); /* not acknowledged: the queue asks again later */
    draft_write_fails = true;
    commit_fails = false;
    notify(m, DSN_FAILURE, &idx, 1);
    run_until(all_idle);
    assert_int_equal(ndsn_done, 0);
    assert_int_equal(ndrafts, 0);
    /* asked again (twice in the same iteration): one report */
    draft_write_fails = false;
    notify(m, DSN_FAILURE, &idx, 1);
    notify(m, DSN_FAILURE, &idx, 1);
    want_dsn_done = 1;
    run_until(dsn_done_reached);
    run_until(all_idle);
    assert_int_equal(ndsn_done, 1);
    assert_int_equal(ndrafts, 1);
    free_msg(m);
}

static void test_smtputf8_bounce(void **state)
{
    reset();
    struct qmsg *m = new_msg("Q11", "j\xc3\xbcrgen@example.org");
    m->env.smtputf8 = true;
    add_rcpt(m, "gone@example.test", NULL, 0, QRCPT_NO_PARENT);
    m->r[0].state = QR_FAILED;
    uint32_t idx = 0;
    notify(m, DSN_FAILURE, &idx, 1);
    want_dsn_done = 1;
    run_until(dsn_done_reached);
    const struct draft_rec *d = only_draft();
    assert_true(d->env->smtputf8);
    assert_int_equal(d->env->body, BODY_8BITMIME);
    assert_true(has(d, "report-type=global-delivery-status"));
    free_msg(m);
}

static void test_shutdown_leaves_pending(void **state)
{
    /* requests noted but not yet handed on when dispatch_free() runs get no outcome: they
     * stay pending on disk and are delivered at the next start without a retry delay */
    reset();
    struct qmsg *m = new_msg("Q12", "sender@example.org");
    add_rcpt(m, "alice@example.test", NULL, 0, QRCPT_NO_PARENT);
    struct dispatch *d2 = dispatch_new(conf);
    struct queue_hooks saved = hooks;
    dispatch_hooks(d2, &hooks);
    dispatch_all(m);
    dispatch_free(d2);
    hooks = saved;
    assert_int_equal(noutcomes, 0);
    free_msg(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_recipients),
        cmocka_unit_test(test_body_in_file_and_null_sender),
        cmocka_unit_test(test_batching),
        cmocka_unit_test(test_maildir_failures),
        cmocka_unit_test(test_set_conf),
        cmocka_unit_test(test_bounce_to_sender),
        cmocka_unit_test(test_bounce_null_sender),
        cmocka_unit_test(test_bounce_notify_filter),
        cmocka_unit_test(test_bounce_delay),
        cmocka_unit_test(test_bounce_return_rules),
        cmocka_unit_test(test_bounce_commit_failure_and_duplicates),
        cmocka_unit_test(test_smtputf8_bounce),
        cmocka_unit_test(test_shutdown_leaves_pending),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    reset();
    return rc;
}
