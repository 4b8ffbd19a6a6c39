/* LDWRAP: -Wl,--wrap=fsync,--wrap=write,--wrap=copy_file_range,--wrap=openat */
/*
 * test_maildir: Maildir delivery (deliver/maildir): layout and modes, exact bytes from
 * memory and from a file range (kernel copy and the user-space fallback, short writes),
 * unique names over 10k deliveries and across threads, one new/ fsync per Maildir per
 * batch, and fault injection through the linker's --wrap: a failed write, file fsync or
 * directory fsync leaves nothing in tmp/ or new/ and is temporary; a path that is not a
 * directory, or an invalid path, is permanent.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "deliver/maildir.h"
#include "lib/fsutil.h"
#include "lib/mem.h"

/* ---- fault injection ---- */

static int fail_write_at = -1; /* fail the Nth write to a regular file (0-based) */
static int writes_seen;
static int fail_write_errno = ENOSPC;
static bool short_writes;        /* write at most 7 bytes per call */
static bool fail_file_fsync;     /* fsync of a regular file fails with EIO */
static bool fail_dir_fsync;      /* fsync of a directory fails with EIO */
static int dir_fsyncs;           /* directory fsyncs seen */
static bool force_exdev;         /* copy_file_range says EXDEV */
static int kernel_copies;        /* successful copy_file_range calls */

static int fd_type(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return 0;
    return (int)(st.st_mode & S_IFMT);
}

int __real_fsync(int fd);
int __wrap_fsync(int fd);
int __wrap_fsync(int fd)
{
    int t = fd_type(fd);
    if (t == S_IFDIR) {
        __atomic_add_fetch(&dir_fsyncs, 1, __ATOMIC_RELAXED);
        if (fail_dir_fsync) {
            errno = EIO;
            return -1;
        }
    }
    if (t == S_IFREG && fail_file_fsync) {
        errno = EIO;
        return -1;
    }
    return __real_fsync(fd);
}

ssize_t __real_write(int fd, const void *p, size_t n);
ssize_t __wrap_write(int fd, const void *p, size_t n);
ssize_t __wrap_write(int fd, const void *p, size_t n)
{
    if (fd_type(fd) == S_IFREG) {
        if (fail_write_at >= 0 && writes_seen++ == fail_write_at) {
            errno = fail_write_errno;
            return -1;
        }
        if (short_writes && n > 7)
            n = 7;
    }
    return __real_write(fd, p, n);
}

/* The whole suite runs twice: with O_TMPFILE (the normal way) and with it refused, as on
 * a file system without it, which exercises the classic tmp/NAME + rename path. */
static bool no_tmpfile;

int __real_openat(int dirfd, const char *path, int flags, ...);
int __wrap_openat(int dirfd, const char *path, int flags, ...);
int __wrap_openat(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    if (no_tmpfile && (flags & O_TMPFILE) == O_TMPFILE) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return __real_openat(dirfd, path, flags, mode);
}

ssize_t __real_copy_file_range(int in, loff_t *inoff, int out, loff_t *outoff, size_t len,
                               unsigned flags);
ssize_t __wrap_copy_file_range(int in, loff_t *inoff, int out, loff_t *outoff, size_t len,
                               unsigned flags);
ssize_t __wrap_copy_file_range(int in, loff_t *inoff, int out, loff_t *outoff, size_t len,
                               unsigned flags)
{
    if (force_exdev) {
        errno = EXDEV;
        return -1;
    }
    ssize_t r = __real_copy_file_range(in, inoff, out, outoff, len, flags);
    if (r > 0)
        __atomic_add_fetch(&kernel_copies, 1, __ATOMIC_RELAXED);
    return r;
}

/* ---- fixture ---- */

static char base[64];
static int base_fd = -1;

static int setup(void **state)
{
    umask(022);
    snprintf(base, sizeof base, "/tmp/tern-test-maildir-XXXXXX");
    assert_non_null(mkdtemp(base));
    base_fd = open(base, O_RDONLY | O_DIRECTORY);
    assert_true(base_fd >= 0);
    return 0;
}

static int teardown(void **state)
{
    close(base_fd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", base);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static void reset_faults(void)
{
    fail_write_at = -1;
    writes_seen = 0;
    fail_write_errno = ENOSPC;
    short_writes = fail_file_fsync = fail_dir_fsync = force_exdev = false;
    dir_fsyncs = kernel_copies = 0;
}

static const char prefix[] = "Return-Path: <sender@example.org>\r\n"
                             "Delivered-To: alice@example.test\r\n";

static struct maildir_job mem_job(const char *rel, const char *body, size_t len)
{
    struct maildir_job j = {.base_fd = base_fd, .relpath = rel, .prefix = prefix,
                            .prefix_len = sizeof prefix - 1, .hostname = "mx.example.test"};
    j.body.mem = body;
    j.body.fd = -1;
    j.body.len = len;
    return j;
}

static size_t count_files(const char *rel, const char *sub)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/%s", base, rel, sub);
    DIR *d = opendir(path);
    if (d == NULL)
        return (size_t)-1;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static mode_t mode_of(const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", base, rel);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static char *read_delivered(const struct maildir_job *j, size_t *len)
{
    char *data;
    assert_int_equal(fs_read_file_at(base_fd, j->filename, 64 << 20, &data, len), 0);
    return data;
}

static void expect_bytes(const struct maildir_job *j, const char *body, size_t len)
{
    size_t got_len;
    char *got = read_delivered(j, &got_len);
    assert_int_equal(got_len, sizeof prefix - 1 + len);
    assert_memory_equal(got, prefix, sizeof prefix - 1);
    assert_memory_equal(got + sizeof prefix - 1, body, len);
    free(got);
    /* ",S=<size>" in the name is the file size */
    char want[64];
    snprintf(want, sizeof want, ",S=%zu", got_len);
    assert_non_null(strstr(j->filename, want));
}

/* ---- tests ---- */

static void test_layout_and_modes(void **state)
{
    reset_faults();
    static const char body[] = "Subject: hi\r\n\r\nhello\r\n";
    struct maildir_job j = mem_job("example.test/alice", body, sizeof body - 1);
    maildir_deliver_batch(&j, 1);
    assert_true(j.ok);
    assert_int_equal(mode_of("example.test"), 0700);
    assert_int_equal(mode_of("example.test/alice"), 0700);
    assert_int_equal(mode_of("example.test/alice/tmp"), 0700);
    assert_int_equal(mode_of("example.test/alice/new"), 0700);
    assert_int_equal(mode_of("example.test/alice/cur"), 0700);
    assert_int_equal(mode_of(j.filename), 0600);
    assert_int_equal(count_files("example.test/alice", "new"), 1);
    assert_int_equal(count_files("example.test/alice", "tmp"), 0);
    assert_int_equal(count_files("example.test/alice", "cur"), 0);
    /* SECONDS.M<usec>P<pid>Q<n>_<thread>.HOST,S=<size> */
    const char *name = strrchr(j.filename, '/') + 1;
    assert_memory_equal(j.filename, "example.test/alice/new/", 23);
    char pid[32];
    snprintf(pid, sizeof pid, "P%ld", (long)getpid());
    assert_non_null(strstr(name, ".M"));
    assert_non_null(strstr(name, pid));
    assert_non_null(strstr(name, "Q"));
    assert_non_null(strstr(name, ".mx.example.test,S="));
    expect_bytes(&j, body, sizeof body - 1);
}

static void test_exact_bytes_memory(void **state)
{
    reset_faults();
    /* CRLF kept, a bare LF, a NUL, a lone dot line, a line without its end: as queued */
    static const char body[] = "Subject: bytes\r\n\r\nline1\r\nbare\nnul\0byte\r\n.\r\n..x\r\nend";
    struct maildir_job j = mem_job("example.test/bytes", body, sizeof body - 1);
    maildir_deliver_batch(&j, 1);
    assert_true(j.ok);
    expect_bytes(&j, body, sizeof body - 1);
    /* short writes are completed */
    short_writes = true;
    struct maildir_job k = mem_job("example.test/bytes", body, sizeof body - 1);
    maildir_deliver_batch(&k, 1);
    assert_true(k.ok);
    expect_bytes(&k, body, sizeof body - 1);
    /* an empty body: the prefix only */
    reset_faults();
    struct maildir_job e = mem_job("example.test/bytes", "", 0);
    maildir_deliver_batch(&e, 1);
    assert_true(e.ok);
    expect_bytes(&e, "", 0);
}

static void file_range_case(bool exdev)
{
    reset_faults();
    force_exdev = exdev;
    /* a spool file with other data around the message; the message is larger than the
     * fallback's buffer so both paths loop */
    size_t before = 1000, len = 300 * 1024 + 17, after = 500;
    char *all = xmalloc(before + len + after);
    for (size_t i = 0; i < before + len + after; i++)
        all[i] = (char)((i * 7 + 3) % 251);
    memcpy(all + before, "Subject: file\r\n\r\n", 17);
    char spool[128];
    snprintf(spool, sizeof spool, "%s/spoolfile", base);
    int wfd = open(spool, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(wfd >= 0);
    assert_int_equal(fs_write_all(wfd, all, before + len + after), 0);
    close(wfd);
    int rfd = open(spool, O_RDONLY);
    assert_true(rfd >= 0);
    struct maildir_job j = mem_job("example.test/file", NULL, len);
    j.body.mem = NULL;
    j.body.fd = rfd;
    j.body.off = before;
    maildir_deliver_batch(&j, 1);
    assert_true(j.ok);
    expect_bytes(&j, all + before, len);
    if (exdev)
        assert_int_equal(kernel_copies, 0);
    /* a range past the end of the file is an I/O error, temporary, and leaves nothing */
    size_t files = count_files("example.test/file", "new");
    struct maildir_job k = j;
    k.body.off = before + len + after - 10;
    maildir_deliver_batch(&k, 1);
    assert_false(k.ok);
    assert_false(k.permanent);
    assert_int_equal(count_files("example.test/file", "new"), files);
    assert_int_equal(count_files("example.test/file", "tmp"), 0);
    close(rfd);
    free(all);
}

static void test_exact_bytes_file_range(void **state)
{
    file_range_case(false);
    file_range_case(true);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_unique_names_10k(void **state)
{
    reset_faults();
    enum { TOTAL = 10000, BATCH = 100 };
    char **names = xcalloc(TOTAL, sizeof *names);
    struct maildir_job jobs[BATCH];
    for (int b = 0; b < TOTAL / BATCH; b++) {
        for (int i = 0; i < BATCH; i++)
            jobs[i] = mem_job("example.test/many", "x\r\n", 3);
        dir_fsyncs = 0;
        maildir_deliver_batch(jobs, BATCH);
        if (b > 0) /* the Maildir exists: exactly one fsync of new/ for the whole batch */
            assert_int_equal(dir_fsyncs, 1);
        for (int i = 0; i < BATCH; i++) {
            assert_true(jobs[i].ok);
            names[b * BATCH + i] = xstrdup(jobs[i].filename);
        }
    }
    qsort(names, TOTAL, sizeof *names, cmp_str);
    for (int i = 1; i < TOTAL; i++)
        assert_string_not_equal(names[i - 1], names[i]);
    for (int i = 0; i < TOTAL; i++)
        free(names[i]);
    free(names);
    assert_int_equal(count_files("example.test/many", "new"), TOTAL);
}

enum { THREADS = 4, PER_THREAD = 1000 };

static void *thread_main(void *arg)
{
    char **names = arg;
    for (int i = 0; i < PER_THREAD; i += 10) {
        struct maildir_job jobs[10];
        for (int k = 0; k < 10; k++)
            jobs[k] = mem_job("example.test/threads", "y\r\n", 3);
        maildir_deliver_batch(jobs, 10);
        for (int k = 0; k < 10; k++)
            names[i + k] = jobs[k].ok ? xstrdup(jobs[k].filename) : NULL;
    }
    return NULL;
}

static void test_unique_names_threads(void **state)
{
    reset_faults();
    char **names = xcalloc(THREADS * PER_THREAD, sizeof *names);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, thread_main, names + i * PER_THREAD), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS * PER_THREAD; i++)
        assert_non_null(names[i]);
    qsort(names, THREADS * PER_THREAD, sizeof *names, cmp_str);
    for (int i = 1; i < THREADS * PER_THREAD; i++)
        assert_string_not_equal(names[i - 1], names[i]);
    for (int i = 0; i < THREADS * PER_THREAD; i++)
        free(names[i]);
    free(names);
    /* a collision would have renamed one file over another */
    assert_int_equal(count_files("example.test/threads", "new"), THREADS * PER_THREAD);
}

static void test_write_failure(void **state)
{
    static const char body[] = "Subject: w\r\n\r\nbody\r\n";
    for (int at = 0; at < 2; at++) { /* the prefix's write, then the body's */
        reset_faults();
        fail_write_at = at;
        struct maildir_job j = mem_job("example.test/wfail", body, sizeof body - 1);
        maildir_deliver_batch(&j, 1);
        assert_false(j.ok);
        assert_false(j.permanent);
        assert_int_equal(j.errnum, ENOSPC);
        assert_non_null(strstr(j.error, "No space left on device"));
        assert_int_equal(count_files("example.test/wfail", "tmp"), 0);
        assert_int_equal(count_files("example.test/wfail", "new"), 0);
    }
    /* over quota is temporary too, and says so */
    reset_faults();
    fail_write_at = 1;
    fail_write_errno = EDQUOT;
    struct maildir_job q = mem_job("example.test/wfail", body, sizeof body - 1);
    maildir_deliver_batch(&q, 1);
    assert_false(q.ok);
    assert_false(q.permanent);
    assert_int_equal(q.errnum, EDQUOT);
    /* in a batch, only the failing job fails */
    reset_faults();
    fail_write_at = 3; /* job 0: writes 0,1; job 1: writes 2,3 */
    struct maildir_job jobs[3];
    for (int i = 0; i < 3; i++)
        jobs[i] = mem_job("example.test/wfail", body, sizeof body - 1);
    maildir_deliver_batch(jobs, 3);
    assert_true(jobs[0].ok);
    assert_false(jobs[1].ok);
    assert_true(jobs[2].ok);
    assert_int_equal(count_files("example.test/wfail", "new"), 2);
    assert_int_equal(count_files("example.test/wfail", "tmp"), 0);
}

static void test_fsync_failure(void **state)
{
    static const char body[] = "Subject: f\r\n\r\nbody\r\n";
    reset_faults();
    fail_file_fsync = true;
    struct maildir_job j = mem_job("example.test/ffail", body, sizeof body - 1);
    maildir_deliver_batch(&j, 1);
    assert_false(j.ok);
    assert_false(j.permanent);
    assert_int_equal(j.errnum, EIO);
    assert_non_null(strstr(j.error, "fsync"));
    assert_int_equal(count_files("example.test/ffail", "tmp"), 0);
    assert_int_equal(count_files("example.test/ffail", "new"), 0);

    /* the new/ directory's fsync fails: the renamed files are taken out again */
    reset_faults();
    fail_dir_fsync = true;
    struct maildir_job jobs[2] = {mem_job("example.test/ffail", body, sizeof body - 1),
                                  mem_job("example.test/ffail", body, sizeof body - 1)};
    maildir_deliver_batch(jobs, 2);
    for (int i = 0; i < 2; i++) {
        assert_false(jobs[i].ok);
        assert_false(jobs[i].permanent);
        assert_non_null(strstr(jobs[i].error, "new"));
    }
    assert_int_equal(count_files("example.test/ffail", "tmp"), 0);
    assert_int_equal(count_files("example.test/ffail", "new"), 0);
}

static void test_not_a_directory(void **state)
{
    reset_faults();
    static const char body[] = "x\r\n";
    char path[256];
    /* a path component is a regular file */
    snprintf(path, sizeof path, "%s/example.test/plainfile", base);
    char parent[256];
    snprintf(parent, sizeof parent, "%s/example.test", base);
    mkdir(parent, 0700);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    const char *bad[] = {"example.test/plainfile", "example.test/plainfile/alice"};
    for (size_t i = 0; i < 2; i++) {
        struct maildir_job j = mem_job(bad[i], body, 3);
        maildir_deliver_batch(&j, 1);
        assert_false(j.ok);
        assert_true(j.permanent);
        assert_int_equal(j.errnum, ENOTDIR);
    }
    /* tmp/ inside an existing Maildir is a file */
    struct maildir_job ok = mem_job("example.test/tmpfile", body, 3);
    maildir_deliver_batch(&ok, 1);
    assert_true(ok.ok);
    snprintf(path, sizeof path, "%s/example.test/tmpfile/tmp", base);
    assert_int_equal(rmdir(path), 0);
    fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    struct maildir_job j = mem_job("example.test/tmpfile", body, 3);
    maildir_deliver_batch(&j, 1);
    assert_false(j.ok);
    assert_true(j.permanent);
    /* invalid paths never leave base_fd */
    const char *invalid[] = {"", "/etc", "../escape", "example.test/../../escape"};
    for (size_t i = 0; i < ARRAY_LEN(invalid); i++) {
        struct maildir_job k = mem_job(invalid[i], body, 3);
        maildir_deliver_batch(&k, 1);
        assert_false(k.ok);
        assert_true(k.permanent);
        assert_non_null(strstr(k.error, "invalid"));
    }
}

static void test_missing_subdir_recreated(void **state)
{
    /* someone removed tmp/ and new/ of an existing Maildir: deliveries recreate them */
    reset_faults();
    struct maildir_job j = mem_job("example.test/heal", "a\r\n", 3);
    maildir_deliver_batch(&j, 1);
    assert_true(j.ok);
    char path[256];
    snprintf(path, sizeof path, "%s/example.test/heal/new/%s", base, strrchr(j.filename, '/') + 1);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof path, "%s/example.test/heal/new", base);
    assert_int_equal(rmdir(path), 0);
    struct maildir_job k = mem_job("example.test/heal", "b\r\n", 3);
    maildir_deliver_batch(&k, 1);
    assert_true(k.ok);
    assert_int_equal(count_files("example.test/heal", "new"), 1);
}

/* A delivery tried again (after a crash) under its stable name finds its own earlier file
 * and writes no second copy; other bytes under that name are never taken for it. */
static void test_stable_name_repeat(void **state)
{
    reset_faults();
    static const char body[] = "Subject: once\r\n\r\nbody\r\n";
    struct maildir_job j = mem_job("example.test/stable", body, sizeof body - 1);
    j.stable_id = "0ABCDEFGHIJ12R3";
    j.stable_time = 1700000000;
    maildir_deliver_batch(&j, 1);
    assert_true(j.ok);
    assert_false(j.already);
    char want[128];
    snprintf(want, sizeof want, "example.test/stable/new/1700000000.0ABCDEFGHIJ12R3."
             "mx.example.test,S=%zu", sizeof prefix - 1 + sizeof body - 1);
    assert_string_equal(j.filename, want);

    struct maildir_job again = j;
    dir_fsyncs = 0;
    maildir_deliver_batch(&again, 1);
    assert_true(again.ok);
    assert_true(again.already);
    assert_string_equal(again.filename, want);
    assert_int_equal(dir_fsyncs, 1); /* the earlier try may not have synced new/ */
    assert_int_equal(count_files("example.test/stable", "new"), 1);
    assert_int_equal(count_files("example.test/stable", "tmp"), 0);

    /* same name, same size, other bytes: a second file under a unique name */
    static const char other[] = "Subject: ONCE\r\n\r\nbody\r\n";
    struct maildir_job k = mem_job("example.test/stable", other, sizeof other - 1);
    k.stable_id = j.stable_id;
    k.stable_time = j.stable_time;
    maildir_deliver_batch(&k, 1);
    assert_true(k.ok);
    assert_false(k.already);
    assert_string_not_equal(k.filename, want);
    expect_bytes(&k, other, sizeof other - 1);
    expect_bytes(&j, body, sizeof body - 1);
    assert_int_equal(count_files("example.test/stable", "new"), 2);

    /* an id that is not plain alphanumerics is not used for a name */
    struct maildir_job bad = mem_job("example.test/stable", body, sizeof body - 1);
    bad.stable_id = "../x";
    maildir_deliver_batch(&bad, 1);
    assert_true(bad.ok);
    assert_null(strstr(bad.filename, "x.mx"));
    assert_int_equal(count_files("example.test/stable", "new"), 3);
}

static void test_several_maildirs_one_batch(void **state)
{
    reset_faults();
    const char *rel[] = {"example.test/m1", "example.test/m2", "example.test/m1",
                         "example.test/m3", "example.test/m2", "example.test/m1"};
    struct maildir_job jobs[6];
    for (int i = 0; i < 6; i++)
        jobs[i] = mem_job(rel[i], "z\r\n", 3);
    maildir_deliver_batch(jobs, 6); /* creates them */
    for (int i = 0; i < 6; i++)
        jobs[i] = mem_job(rel[i], "z\r\n", 3);
    dir_fsyncs = 0;
    maildir_deliver_batch(jobs, 6);
    for (int i = 0; i < 6; i++)
        assert_true(jobs[i].ok);
    assert_int_equal(dir_fsyncs, 3); /* one per distinct new/ */
    assert_int_equal(count_files("example.test/m1", "new"), 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_and_modes),
        cmocka_unit_test(test_exact_bytes_memory),
        cmocka_unit_test(test_exact_bytes_file_range),
        cmocka_unit_test(test_unique_names_10k),
        cmocka_unit_test(test_unique_names_threads),
        cmocka_unit_test(test_write_failure),
        cmocka_unit_test(test_fsync_failure),
        cmocka_unit_test(test_not_a_directory),
        cmocka_unit_test(test_missing_subdir_recreated),
        cmocka_unit_test(test_several_maildirs_one_batch),
        cmocka_unit_test(test_stable_name_repeat),
    };
    int failed = cmocka_run_group_tests_name("maildir (O_TMPFILE + link)", tests, setup, teardown);
    no_tmpfile = true;
    failed += cmocka_run_group_tests_name("maildir (tmp/ + rename)", tests, setup, teardown);
    return failed;
}
