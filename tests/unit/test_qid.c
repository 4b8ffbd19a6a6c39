/*
 * test_qid: queue ids (queue/qid): format, uniqueness over a million ids, order, ids made
 * by several threads and by two processes at once, and qid_seed after a restart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/mem.h"
#include "queue/qid.h"
#include "queue/queue.h"

#define N 1000000

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_format(void **state)
{
    char id[QID_MAX];
    qid_new(id);
    assert_int_equal(strlen(id), QID_LEN);
    assert_true(qid_valid(id));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    uint64_t t = qid_time_us(id);
    assert_true(t <= now + 1000000 && t + 1000000 >= now);
    assert_false(qid_valid(""));
    assert_false(qid_valid("0123456789ABC"));
    assert_false(qid_valid("0123456789ABCDE"));
    assert_false(qid_valid("0123456789abcd"));
    assert_false(qid_valid("0123456789AB-D"));
    assert_true(qid_valid("0123456789ABCD"));
}

static void test_million_unique_ordered(void **state)
{
    char(*ids)[16] = xmalloc((size_t)N * sizeof *ids);
    for (size_t i = 0; i < N; i++) {
        qid_new(ids[i]);
        /* strictly increasing in creation order: unique, and sorting = time order */
        if (i && strcmp(ids[i - 1], ids[i]) >= 0)
            fail_msg("ids out of order at %zu: %s %s", i, ids[i - 1], ids[i]);
    }
    qsort(ids, N, sizeof *ids, cmp_id);
    for (size_t i = 1; i < N; i++)
        assert_true(strcmp(ids[i - 1], ids[i]) < 0);
    free(ids);
}

static void test_time_order(void **state)
{
    char a[QID_MAX], b[QID_MAX];
    qid_new(a);
    usleep(2000);
    qid_new(b);
    assert_true(strcmp(a, b) < 0);
    /* the time part follows the clock (runs before the bursts below, which may run it a
     * little ahead of the real time) */
    assert_true(qid_time_us(b) >= qid_time_us(a) + 2000);
}

#define THREADS 4
#define PER_THREAD 100000
static char (*tids)[16];

static void *make_ids(void *arg)
{
    size_t base = (size_t)(uintptr_t)arg * PER_THREAD;
    for (size_t i = 0; i < PER_THREAD; i++)
        qid_new(tids[base + i]);
    return NULL;
}

static void test_threads(void **state)
{
    tids = xmalloc((size_t)THREADS * PER_THREAD * sizeof *tids);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, make_ids, (void *)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    qsort(tids, (size_t)THREADS * PER_THREAD, sizeof *tids, cmp_id);
    for (size_t i = 1; i < (size_t)THREADS * PER_THREAD; i++)
        assert_true(strcmp(tids[i - 1], tids[i]) < 0);
    free(tids);
}

/* ternd and tern-sendmail make ids at the same time */
static void test_two_processes(void **state)
{
    enum { M = 200000 };
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        char id[QID_MAX];
        for (int i = 0; i < M; i++) {
            qid_new(id);
            if (write(fds[1], id, 16) != 16)
                _exit(1);
        }
        _exit(0);
    }
    close(fds[1]);
    char(*all)[16] = xcalloc(2 * M, sizeof *all);
    for (int i = 0; i < M; i++)
        qid_new(all[i]);
    size_t got = 0;
    char *p = (char *)all[M];
    for (;;) {
        ssize_t r = read(fds[0], p + got, (size_t)M * 16 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_int_equal(got, (size_t)M * 16);
    for (int i = 0; i < M; i++)
        all[M + i][QID_LEN] = '\0';
    qsort(all, 2 * M, sizeof *all, cmp_id);
    for (size_t i = 1; i < 2 * M; i++)
        assert_true(strcmp(all[i - 1], all[i]) != 0);
    free(all);
}

static void test_seed(void **state)
{
    /* an id from "the future" (a clock that stepped back after a restart) */
    char future[QID_MAX] = "Q0000000000000"; /* about 2053 */
    char a[QID_MAX], b[QID_MAX];
    qid_new(a);
    assert_true(strcmp(a, future) < 0);
    qid_seed("bad");
    qid_seed(future);
    qid_new(b);
    assert_true(strcmp(b, future) > 0);
    assert_true(qid_valid(b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),        cmocka_unit_test(test_time_order),
        cmocka_unit_test(test_million_unique_ordered), cmocka_unit_test(test_threads),
        cmocka_unit_test(test_two_processes), cmocka_unit_test(test_seed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
