/*
 * qid: queue ids. 14 characters of [0-9A-Z]: 10 base-36 digits of microseconds since the
 * epoch, then 4 base-36 digits of random bits drawn once per process (a per-process tag).
 *
 * Invariants: within one process ids strictly increase (the time part never repeats: a
 * burst faster than one id per microsecond borrows from the next microseconds), so they
 * are unique and sort in creation order; across processes (ternd and tern-sendmail) and
 * restarts two ids can be equal only if both processes drew the same tag (1 in 1.7
 * million) and made them in the same microsecond, and the daemon still checks its index
 * before using an id it did not make. qid_seed() keeps ids rising across a restart even if the clock
 * stepped back. Thread-safe.
 */
#ifndef TERN_QID_H
#define TERN_QID_H

#include <stdbool.h>
#include <stdint.h>

#define QID_LEN 14

/* out must hold QID_LEN + 1 bytes (QID_MAX from queue.h is enough). */
void qid_new(char *out);
/* Exactly QID_LEN characters of [0-9A-Z]. */
bool qid_valid(const char *s);
/* The time part of a valid id, in microseconds since the epoch. */
uint64_t qid_time_us(const char *id);
/* Make every later id of this process sort after id (used after recovery). */
void qid_seed(const char *id);

#endif
