/*
 * workers: a small pool of threads for work that would block the event loop (fsync, Maildir
 * writes, password hashing). work() runs on a pool thread and must not touch loop-owned
 * state; done() then runs on the loop thread with the same argument.
 */
#ifndef TERN_WORKERS_H
#define TERN_WORKERS_H

#include <stddef.h>

struct workers;

struct workers *workers_new(const char *name, unsigned nthreads);
/* The same, with the threads at a lower scheduling priority (nice > 0): for background
 * work that must not take CPU from the loop when both want it. */
struct workers *workers_new_nice(const char *name, unsigned nthreads, int nice);
void workers_submit(struct workers *w, void (*work)(void *arg), void (*done)(void *arg), void *arg);
/* Jobs submitted and not yet completed (done() not yet run). */
size_t workers_pending(const struct workers *w);
/* Finish every queued job (running their done() callbacks), then join the threads. */
void workers_free(struct workers *w);

#endif
