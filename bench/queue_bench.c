/*
 * queue_bench: commits per second and fsyncs per commit of the durable queue, with C
 * concurrent "sessions" each committing SIZE-byte messages back to back (a session starts
 * its next commit when the previous one is acknowledged), for SECONDS seconds.
 * With -d the dispatch hook reports every recipient delivered at once, so status
 * snapshots (and message retirement) share the commit thread too.
 *
 *   make B=build/hb build/hb/libtern.a
 *   cc -D_GNU_SOURCE -Isrc -O2 -pthread bench/queue_bench.c build/hb/libtern.a \
 *      $(pkg-config --libs libevent) -o build/hb/queue_bench
 *   build/hb/queue_bench [-d] [-s SIZE] [-t SECONDS] SPOOL_DIR C...
 *
 * The spool is a fresh folder per run (removed first). Segment files are created once per
 * 64 MiB, so the slow create-after-unlink of this ext4 (no journal) barely shows here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "queue/queue.h"

static size_t msg_size = 1024;
static bool deliver;
static bool stopping;
static unsigned long done_count, failed;
static char *body;

static void start_commit(void);

static void on_done(void *arg, int err)
{
    if (err)
        failed++;
    else
        done_count++;
    if (!stopping)
        start_commit();
}

static void start_commit(void)
{
    struct qdraft *d = queue_draft_new();
    queue_draft_write(d, body, msg_size);
    struct envelope e;
    envelope_init(&e);
    e.sender = xstrdup("bench@example.org");
    envelope_add_rcpt(&e, "rcpt@example.net", NULL, 0);
    queue_draft_commit(d, envelope_move(&e), on_done, NULL);
}

static void on_dispatch(void *arg, struct qmsg *m, const uint32_t *r, size_t n)
{
    if (!deliver)
        return;
    struct delivery_result res = {.kind = DELIVERY_OK, .status = "2.0.0"};
    for (size_t i = 0; i < n; i++)
        queue_report(m, r[i], &res);
}

static void on_stop(void *arg)
{
    stopping = true;
    loop_exit();
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int seconds = 3, opt;
    while ((opt = getopt(argc, argv, "ds:t:")) != -1) {
        if (opt == 'd')
            deliver = true;
        else if (opt == 's')
            msg_size = (size_t)atol(optarg);
        else if (opt == 't')
            seconds = atoi(optarg);
        else
            return 2;
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: %s [-d] [-s SIZE] [-t SECONDS] SPOOL_DIR C...\n", argv[0]);
        return 2;
    }
    const char *spool = argv[optind];
    body = xmalloc(msg_size);
    memset(body, 'x', msg_size);
    log_set_level(LOG_LVL_WARN);
    loop_init();
    static const uint64_t retry[] = {60000};
    printf("%-6s %10s %10s %12s %10s %s\n", "conc", "commits/s", "fsyncs", "fsyncs/msg",
           "msgs/batch", deliver ? "(delivered at once)" : "(kept queued)");
    for (int a = optind + 1; a < argc; a++) {
        int conc = atoi(argv[a]);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", spool);
        if (system(cmd) != 0)
            return 1;
        struct queue_params p = {.spool_dir = spool,
                                 .retry_ms = retry,
                                 .nretry = 1,
                                 .queue_lifetime_ms = 86400000,
                                 .body_cache_max = 64 << 20,
                                 .hooks = {.dispatch = on_dispatch}};
        char err[256];
        if (queue_open(&p, err, sizeof err) != 0) {
            fprintf(stderr, "queue_open: %s\n", err);
            return 1;
        }
        struct queue_stats s0;
        queue_get_stats(&s0);
        done_count = failed = 0;
        stopping = false;
        struct timer *t = timer_new(on_stop, NULL);
        timer_arm(t, (uint64_t)seconds * 1000);
        double t0 = now_s();
        for (int i = 0; i < conc; i++)
            start_commit();
        loop_run();
        double el = now_s() - t0;
        /* let the commits in flight finish (they are not counted) */
        unsigned long counted = done_count;
        struct queue_stats s1;
        queue_get_stats(&s1);
        queue_close();
        timer_free(t);
        uint64_t fs = s1.fsyncs - s0.fsyncs, batches = s1.commit_batches - s0.commit_batches;
        printf("%-6d %10.0f %10llu %12.3f %10.1f%s\n", conc, (double)counted / el,
               (unsigned long long)fs, counted ? (double)fs / (double)counted : 0.0,
               batches ? (double)counted / (double)batches : 0.0, failed ? " FAILURES" : "");
    }
    loop_free();
    free(body);
    return 0;
}
