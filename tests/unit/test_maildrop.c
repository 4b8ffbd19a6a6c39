/* LDWRAP: -Wl,--wrap=renameat */
/*
 * test_maildrop: the drop folder for local submission (queue/maildrop, queue/pickup):
 * writing a drop file without a daemon, importing at start (queue_pickup) and on an inotify
 * event, replacing the writer's claims about the origin, refusing hostile files (garbage,
 * bad checksum, oversize, symlink, FIFO, hard link, wrong name), not importing twice after
 * a crash between commit and unlink, stale temporary files, and a failed rename.
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

#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "queue/maildrop.h"
#include "queue/qid.h"
#include "queue/queue.h"

int __real_renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
int __wrap_renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
static int fail_renameat;

int __wrap_renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    if (fail_renameat > 0) {
        fail_renameat--;
        errno = EIO;
        return -1;
    }
    return __real_renameat(olddirfd, oldpath, newdirfd, newpath);
}

static char base[64];
static char spool[300];
static char drop[400];
static int nspool;
static struct timer *poll_timer;
static bool (*cond_fn)(void);
static uint64_t deadline;
static bool timed_out;

struct seen {
    char id[QID_MAX];
};
static struct seen seen[64];
static size_t nseen;

static void h_dispatch(void *arg, struct qmsg *m, const uint32_t *r, size_t n)
{
    if (nseen < 64)
        snprintf(seen[nseen++].id, QID_MAX, "%s", qmsg_id(m));
}

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

static uint64_t size_limit;

static void open_q(void)
{
    static const uint64_t retry[] = {60000};
    struct queue_params p = {
        .spool_dir = spool,
        .retry_ms = retry,
        .nretry = 1,
        .queue_lifetime_ms = 600000,
        .message_size_limit = size_limit,
        .hooks = {.dispatch = h_dispatch},
    };
    char err[256];
    if (queue_open(&p, err, sizeof err) != 0)
        fail_msg("queue_open: %s", err);
}

static int setup(void **state)
{
    snprintf(spool, sizeof spool, "%s/s%d", base, nspool++);
    snprintf(drop, sizeof drop, "%s/%s", spool, MAILDROP_DIR);
    nseen = 0;
    size_limit = 0;
    fail_renameat = 0;
    return 0;
}

static int teardown(void **state)
{
    queue_close();
    return 0;
}

/* The folder as ternd would have made it, without running the queue. */
static void make_dropdir(void)
{
    assert_int_equal(mkdir(spool, 0711), 0);
    assert_int_equal(mkdir(drop, 0700), 0);
    assert_int_equal(chmod(drop, MAILDROP_MODE), 0);
}

static struct envelope *claims(void)
{
    struct envelope *e = xcalloc(1, sizeof *e);
    envelope_init(e);
    e->sender = xstrdup("user@host.example");
    e->client_ip = xstrdup("203.0.113.9");
    e->helo = xstrdup("forged.example");
    e->auth_user = xstrdup("admin");
    e->protocol = xstrdup("ESMTPSA");
    envelope_add_rcpt(e, "rcpt@example.org", NULL, DSN_NOTIFY_FAILURE);
    envelope_add_rcpt(e, "other@example.org", NULL, 0);
    return e;
}

static void write_drop(const char *body, char *id)
{
    struct envelope *e = claims();
    char err[256];
    if (maildrop_write(spool, e, body, strlen(body), id, err, sizeof err) != 0)
        fail_msg("maildrop_write: %s", err);
    envelope_free(e);
}

static size_t count_in_drop(const char *prefix)
{
    DIR *d = opendir(drop);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (prefix ? strncmp(de->d_name, prefix, strlen(prefix)) == 0 : maildrop_name_ok(de->d_name))
            n++;
    }
    closedir(d);
    return n;
}

static bool drop_empty(void)
{
    return count_in_drop(NULL) == 0;
}

static size_t want;
static bool seen_enough(void)
{
    return nseen >= want;
}

static void check_imported(const char *id, const char *body)
{
    struct qmsg *m = queue_find(id);
    assert_non_null(m);
    const struct envelope *e = qmsg_envelope(m);
    char who[32];
    snprintf(who, sizeof who, "uid=%lu", (unsigned long)getuid());
    assert_string_equal(e->client_name, who);
    assert_string_equal(e->protocol, "local");
    assert_null(e->client_ip);
    assert_null(e->helo);
    assert_null(e->auth_user);
    assert_string_equal(e->sender, "user@host.example");
    assert_int_equal(qmsg_nrcpts(m), 2);
    assert_string_equal(qmsg_rcpt(m, 0)->addr, "rcpt@example.org");
    assert_int_equal(qmsg_rcpt(m, 0)->notify, DSN_NOTIFY_FAILURE);
    qmsg_ref(m);
    struct qbody b;
    qmsg_body(m, &b);
    assert_int_equal(b.len, strlen(body));
    char buf[256];
    assert_int_equal(qbody_read(&b, buf, b.len, 0), 0);
    assert_memory_equal(buf, body, b.len);
    qmsg_unref(m);
}

static void test_write_standalone(void **state)
{
    make_dropdir();
    char id[QID_MAX];
    write_drop("Subject: t\r\n\r\nbody\r\n", id);
    assert_true(qid_valid(id));
    assert_int_equal(count_in_drop(NULL), 1);
    assert_int_equal(count_in_drop(".tmp."), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/%s", drop, id);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640); /* ternd reads it through the group */
    int dfd = open(drop, O_RDONLY | O_DIRECTORY);
    struct maildrop_file f;
    char err[256];
    assert_int_equal(maildrop_open(dfd, id, 1 << 20, &f, err, sizeof err), 0);
    assert_string_equal(f.id, id);
    assert_int_equal(f.uid, getuid());
    assert_int_equal(f.body_len, strlen("Subject: t\r\n\r\nbody\r\n"));
    assert_string_equal(f.env.sender, "user@host.example");
    assert_int_equal(f.env.nrcpts, 2);
    maildrop_close(&f);
    errno = 0;
    assert_int_equal(maildrop_open(dfd, "0123456789ABCD", 1 << 20, &f, err, sizeof err), -1);
    assert_int_equal(errno, ENOENT);
    close(dfd);
    /* no drop folder: a clear error */
    char bad[400];
    snprintf(bad, sizeof bad, "%s/nowhere", base);
    struct envelope *e = claims();
    assert_int_equal(maildrop_write(bad, e, "x", 1, id, err, sizeof err), -1);
    assert_non_null(strstr(err, "nowhere"));
    envelope_free(e);
}

static void test_pickup_at_start(void **state)
{
    make_dropdir();
    char ids[3][QID_MAX];
    for (int i = 0; i < 3; i++)
        write_drop("local message\r\n", ids[i]);
    open_q();
    assert_int_equal(queue_pickup(), 3);
    assert_int_equal(queue_pickup(), 0); /* in progress: not taken twice */
    want = 3;
    assert_true(run_until(seen_enough, 2000));
    assert_true(run_until(drop_empty, 2000));
    for (int i = 0; i < 3; i++)
        check_imported(ids[i], "local message\r\n");
    /* durable: still there after a restart, and not imported again */
    queue_close();
    nseen = 0;
    open_q();
    assert_int_equal(queue_pickup(), 0);
    for (int i = 0; i < 3; i++)
        assert_non_null(queue_find(ids[i]));
}

static void test_pickup_inotify(void **state)
{
    open_q(); /* creates the folder */
    struct stat st;
    assert_int_equal(stat(drop, &st), 0);
    assert_int_equal(st.st_mode & 07777, MAILDROP_MODE);
    char id[QID_MAX];
    write_drop("noticed\r\n", id);
    want = 1;
    assert_true(run_until(seen_enough, 2000)); /* no queue_pickup() call: the watch saw it */
    assert_string_equal(seen[0].id, id);
    check_imported(id, "noticed\r\n");
    assert_true(run_until(drop_empty, 2000));
}

static void put_file(const char *name, const void *data, size_t len)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", drop, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static char *read_drop(const char *name, size_t *len)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", drop, name);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct stat st;
    fstat(fd, &st);
    char *p = xmalloc((size_t)st.st_size);
    assert_int_equal(read(fd, p, (size_t)st.st_size), st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return p;
}

static void test_rejects(void **state)
{
    size_limit = 1000; /* drop files up to 2000 + 64 KiB */
    make_dropdir();
    char id[QID_MAX], name[QID_MAX];
    /* garbage */
    qid_new(name);
    put_file(name, "this is not a record at all, just some text\n", 44);
    /* a good file with one content byte changed */
    write_drop("checksummed content\r\n", id);
    size_t len;
    char *p = read_drop(id, &len);
    p[len - 3] ^= 1;
    put_file(id, p, len);
    free(p);
    /* too large */
    char *big = xmalloc(100000);
    memset(big, 'a', 99999);
    big[99999] = '\0';
    write_drop(big, id);
    free(big);
    /* a good file under another id's name */
    write_drop("renamed\r\n", id);
    qid_new(name);
    char from[600], to[600];
    snprintf(from, sizeof from, "%s/%s", drop, id);
    snprintf(to, sizeof to, "%s/%s", drop, name);
    assert_int_equal(rename(from, to), 0);
    /* a symlink to a good file outside */
    char outside[400];
    snprintf(outside, sizeof outside, "%s/outside", spool);
    write_drop("linked\r\n", id);
    snprintf(from, sizeof from, "%s/%s", drop, id);
    assert_int_equal(rename(from, outside), 0);
    qid_new(name);
    snprintf(to, sizeof to, "%s/%s", drop, name);
    assert_int_equal(symlink(outside, to), 0);
    /* a hard link to a good file */
    write_drop("hard linked\r\n", id);
    snprintf(from, sizeof from, "%s/%s", drop, id);
    snprintf(to, sizeof to, "%s/hardlink", spool);
    assert_int_equal(link(from, to), 0);
    /* a FIFO */
    qid_new(name);
    snprintf(to, sizeof to, "%s/%s", drop, name);
    assert_int_equal(mkfifo(to, 0644), 0);
    size_t bad = count_in_drop(NULL);
    assert_int_equal(bad, 7);

    open_q();
    assert_int_equal(queue_pickup(), 0);
    run_until(NULL, 50);
    assert_int_equal(nseen, 0);
    assert_int_equal(count_in_drop(NULL), 0);
    assert_int_equal(count_in_drop(".bad."), 7); /* kept aside for the operator */
    assert_int_equal(queue_pickup(), 0);
}

static void test_already_queued(void **state)
{
    make_dropdir();
    char id[QID_MAX];
    write_drop("only once\r\n", id);
    size_t len;
    char *copy = read_drop(id, &len);
    open_q();
    assert_int_equal(queue_pickup(), 1);
    assert_true(run_until(drop_empty, 2000));
    run_until(NULL, 20); /* the unlink's completion */
    assert_int_equal(nseen, 1);
    /* as if the daemon had died after the commit, before the unlink */
    put_file(id, copy, len);
    free(copy);
    assert_int_equal(queue_pickup(), 1);
    assert_true(run_until(drop_empty, 2000));
    run_until(NULL, 20);
    assert_int_equal(nseen, 1);
    struct queue_stats st;
    queue_get_stats(&st);
    assert_int_equal(st.messages, 1);
    assert_int_equal(st.committed, 1);
}

static void test_stale_tmp(void **state)
{
    make_dropdir();
    put_file(".tmp.OLD", "x", 1);
    put_file(".tmp.NEW", "y", 1);
    char path[600];
    snprintf(path, sizeof path, "%s/.tmp.OLD", drop);
    struct timespec t[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
    assert_int_equal(utimensat(AT_FDCWD, path, t, 0), 0);
    open_q();
    assert_int_equal(queue_pickup(), 0);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof path, "%s/.tmp.NEW", drop);
    assert_int_equal(access(path, F_OK), 0); /* a writer may still be at work */
}

static void test_rename_fails(void **state)
{
    make_dropdir();
    struct envelope *e = claims();
    char id[QID_MAX], err[256];
    fail_renameat = 1;
    assert_int_equal(maildrop_write(spool, e, "x\r\n", 3, id, err, sizeof err), -1);
    envelope_free(e);
    assert_int_equal(count_in_drop(NULL), 0);
    assert_int_equal(count_in_drop(".tmp."), 0); /* nothing left behind */
}

static int group_setup(void **state)
{
    snprintf(base, sizeof base, "/tmp/tern-test-maildrop-XXXXXX");
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
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", base);
    return system(cmd) == 0 ? 0 : -1;
}

#define T_(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T_(test_write_standalone), T_(test_pickup_at_start), T_(test_pickup_inotify),
        T_(test_rejects),          T_(test_already_queued),  T_(test_stale_tmp),
        T_(test_rename_fails),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
