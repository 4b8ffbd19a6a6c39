/*
 * loop: the event loop (libevent behind a small API): timers, fd readiness, signals, a
 * cached clock, and a thread-safe notifier through which other threads wake the loop.
 *
 * One loop per process, run by the main thread. Every callback runs on that thread, except
 * notifier_signal(), which any thread may call.
 */
#ifndef TERN_LOOP_H
#define TERN_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct event_base;

void loop_init(void);
void loop_free(void);
/* Run until loop_exit(); returns 0, or -1 if libevent failed. */
int loop_run(void);
void loop_exit(void);
/* Wall-clock seconds and a monotonic millisecond clock, cached per loop iteration. */
time_t loop_now(void);
uint64_t loop_now_ms(void);
/* For the io module only: the libevent base. */
struct event_base *loop_base(void);

struct timer;
struct timer *timer_new(void (*cb)(void *arg), void *arg);
void timer_arm(struct timer *t, uint64_t ms);   /* (re)arm, one shot */
void timer_stop(struct timer *t);
bool timer_pending(const struct timer *t);
void timer_free(struct timer *t);

/* Persistent readable-watch on a file descriptor (the caller owns the fd). */
struct fdwatch;
struct fdwatch *fdwatch_new(int fd, void (*cb)(int fd, void *arg), void *arg);
void fdwatch_free(struct fdwatch *w);

struct sigwatch;
struct sigwatch *sigwatch_new(int signo, void (*cb)(int signo, void *arg), void *arg);
void sigwatch_free(struct sigwatch *w);

/* Thread-safe wake-up: notifier_signal() from any thread makes cb run on the loop thread
 * (signals coalesce: one run may answer several signals). */
struct notifier;
struct notifier *notifier_new(void (*cb)(void *arg), void *arg);
void notifier_signal(struct notifier *n);
void notifier_free(struct notifier *n);

#endif
