/*
 * workers: see workers.h. Jobs wait in a FIFO under a mutex; finished jobs go to a second
 * list and one notifier wakes the loop, which runs their done() callbacks in order.
 */
#include "lib/workers.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"

struct job {
    struct job *next;
    void (*work)(void *arg);
    void (*done)(void *arg);
    void *arg;
};

struct workers {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *wait_head, **wait_tail;
    struct job *done_head, **done_tail;
    struct notifier *notify;
    pthread_t *threads;
    unsigned nthreads;
    size_t pending; /* loop thread only */
    int nice;
    bool stopping;
};

static void *worker_main(void *arg)
{
    struct workers *w = arg;
    /* on Linux a nice value belongs to the thread; failing to lower it is harmless */
    if (w->nice != 0 && setpriority(PRIO_PROCESS, (id_t)gettid(), w->nice) != 0)
        log_printf(LOG_LVL_DEBUG, "event=workers.nice_failed nice=%d", w->nice);
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->wait_head == NULL && !w->stopping)
            pthread_cond_wait(&w->cond, &w->lock);
        struct job *j = w->wait_head;
        if (j == NULL)
            break; /* stopping and nothing left */
        w->wait_head = j->next;
        if (w->wait_head == NULL)
            w->wait_tail = &w->wait_head;
        pthread_mutex_unlock(&w->lock);

        j->work(j->arg);

        pthread_mutex_lock(&w->lock);
        j->next = NULL;
        bool was_empty = w->done_head == NULL;
        *w->done_tail = j;
        w->done_tail = &j->next;
        if (was_empty)
            notifier_signal(w->notify);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static void run_done(void *arg)
{
    struct workers *w = arg;
    pthread_mutex_lock(&w->lock);
    struct job *list = w->done_head;
    w->done_head = NULL;
    w->done_tail = &w->done_head;
    pthread_mutex_unlock(&w->lock);
    while (list) {
        struct job *j = list;
        list = j->next;
        w->pending--;
        if (j->done)
            j->done(j->arg);
        free(j);
    }
}

struct workers *workers_new(const char *name, unsigned nthreads)
{
    return workers_new_nice(name, nthreads, 0);
}

struct workers *workers_new_nice(const char *name, unsigned nthreads, int nice)
{
    struct workers *w = xcalloc(1, sizeof *w);
    w->nice = nice;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->wait_tail = &w->wait_head;
    w->done_tail = &w->done_head;
    w->notify = notifier_new(run_done, w);
    w->nthreads = nthreads ? nthreads : 1;
    w->threads = xcalloc(w->nthreads, sizeof *w->threads);
    for (unsigned i = 0; i < w->nthreads; i++) {
        if (pthread_create(&w->threads[i], NULL, worker_main, w) != 0)
            fatal("cannot start worker thread %s/%u", name, i);
        char tname[64];
        snprintf(tname, sizeof tname, "%s/%u", name, i);
        tname[15] = '\0'; /* the kernel's limit for thread names */
        pthread_setname_np(w->threads[i], tname);
    }
    return w;
}

void workers_submit(struct workers *w, void (*work)(void *arg), void (*done)(void *arg), void *arg)
{
    struct job *j = xmalloc(sizeof *j);
    j->next = NULL;
    j->work = work;
    j->done = done;
    j->arg = arg;
    w->pending++;
    pthread_mutex_lock(&w->lock);
    *w->wait_tail = j;
    w->wait_tail = &j->next;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

size_t workers_pending(const struct workers *w)
{
    return w->pending;
}

void workers_free(struct workers *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (unsigned i = 0; i < w->nthreads; i++)
        pthread_join(w->threads[i], NULL);
    run_done(w);
    notifier_free(w->notify);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->threads);
    free(w);
}
