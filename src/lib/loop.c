/*
 * loop: see loop.h. This file and io.c are the only users of libevent.
 */
#include "lib/loop.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/mem.h"

static struct event_base *base;

void loop_init(void)
{
    if (base)
        fatal("loop_init called twice");
    struct event_config *cfg = event_config_new();
    /* one thread runs the loop: no locking inside libevent's base */
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
    base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (base == NULL)
        fatal("event_base_new failed");
}

void loop_free(void)
{
    if (base)
        event_base_free(base);
    base = NULL;
}

struct event_base *loop_base(void)
{
    if (base == NULL)
        fatal("loop used before loop_init");
    return base;
}

/* Log lines of a loop turn are written together once its callbacks have run: an event made
 * active with the first held line runs after the callbacks already active. */
static struct event *log_flush_ev;

static void on_log_flush(evutil_socket_t fd, short what, void *arg)
{
    log_flush();
}

static void wake_log_flush(void)
{
    event_active(log_flush_ev, 0, 0);
}

int loop_run(void)
{
    log_flush_ev = event_new(loop_base(), -1, 0, on_log_flush, NULL);
    if (log_flush_ev == NULL)
        fatal("event_new failed");
    log_hold_lines(wake_log_flush);
    int rc = event_base_dispatch(loop_base()) < 0 ? -1 : 0;
    log_hold_lines(NULL);
    event_free(log_flush_ev);
    log_flush_ev = NULL;
    return rc;
}

void loop_exit(void)
{
    event_base_loopbreak(loop_base());
}

time_t loop_now(void)
{
    struct timeval tv;
    if (base == NULL || event_base_gettimeofday_cached(base, &tv) != 0)
        return time(NULL);
    return tv.tv_sec;
}

uint64_t loop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- timers ---- */

struct timer {
    struct event *ev;
    void (*cb)(void *arg);
    void *arg;
};

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    struct timer *t = arg;
    t->cb(t->arg);
}

struct timer *timer_new(void (*cb)(void *arg), void *arg)
{
    struct timer *t = xmalloc(sizeof *t);
    t->cb = cb;
    t->arg = arg;
    t->ev = evtimer_new(loop_base(), timer_fire, t);
    if (t->ev == NULL)
        fatal("evtimer_new failed");
    return t;
}

void timer_arm(struct timer *t, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(t->ev, &tv);
}

void timer_stop(struct timer *t)
{
    evtimer_del(t->ev);
}

bool timer_pending(const struct timer *t)
{
    return evtimer_pending(t->ev, NULL) != 0;
}

void timer_free(struct timer *t)
{
    if (t == NULL)
        return;
    event_free(t->ev);
    free(t);
}

/* ---- fd watches ---- */

struct fdwatch {
    struct event *ev;
    void (*cb)(int fd, void *arg);
    void *arg;
};

static void fdwatch_fire(evutil_socket_t fd, short what, void *arg)
{
    struct fdwatch *w = arg;
    w->cb(fd, w->arg);
}

struct fdwatch *fdwatch_new(int fd, void (*cb)(int fd, void *arg), void *arg)
{
    struct fdwatch *w = xmalloc(sizeof *w);
    w->cb = cb;
    w->arg = arg;
    w->ev = event_new(loop_base(), fd, EV_READ | EV_PERSIST, fdwatch_fire, w);
    if (w->ev == NULL || event_add(w->ev, NULL) != 0)
        fatal("cannot watch fd %d", fd);
    return w;
}

void fdwatch_free(struct fdwatch *w)
{
    if (w == NULL)
        return;
    event_free(w->ev);
    free(w);
}

/* ---- signals ---- */

struct sigwatch {
    struct event *ev;
    void (*cb)(int signo, void *arg);
    void *arg;
};

static void sigwatch_fire(evutil_socket_t signo, short what, void *arg)
{
    struct sigwatch *w = arg;
    w->cb((int)signo, w->arg);
}

struct sigwatch *sigwatch_new(int signo, void (*cb)(int signo, void *arg), void *arg)
{
    struct sigwatch *w = xmalloc(sizeof *w);
    w->cb = cb;
    w->arg = arg;
    w->ev = evsignal_new(loop_base(), signo, sigwatch_fire, w);
    if (w->ev == NULL || event_add(w->ev, NULL) != 0)
        fatal("cannot watch signal %d", signo);
    return w;
}

void sigwatch_free(struct sigwatch *w)
{
    if (w == NULL)
        return;
    event_free(w->ev);
    free(w);
}

/* ---- notifier: an eventfd watched by the loop ---- */

struct notifier {
    int fd;
    struct event *ev;
    void (*cb)(void *arg);
    void *arg;
};

static void notifier_fire(evutil_socket_t fd, short what, void *arg)
{
    struct notifier *n = arg;
    uint64_t count;
    /* reset the counter first, so a signal sent while cb runs wakes us again */
    while (read(n->fd, &count, sizeof count) < 0 && errno == EINTR)
        ;
    n->cb(n->arg);
}

struct notifier *notifier_new(void (*cb)(void *arg), void *arg)
{
    struct notifier *n = xmalloc(sizeof *n);
    n->cb = cb;
    n->arg = arg;
    n->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (n->fd < 0)
        fatal("eventfd failed");
    n->ev = event_new(loop_base(), n->fd, EV_READ | EV_PERSIST, notifier_fire, n);
    if (n->ev == NULL || event_add(n->ev, NULL) != 0)
        fatal("cannot watch eventfd");
    return n;
}

void notifier_signal(struct notifier *n)
{
    uint64_t one = 1;
    while (write(n->fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

void notifier_free(struct notifier *n)
{
    if (n == NULL)
        return;
    event_free(n->ev);
    close(n->fd);
    free(n);
}
