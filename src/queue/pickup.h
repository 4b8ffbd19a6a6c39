/*
 * pickup: the daemon side of the maildrop (queue_pickup() of queue.h lives in pickup.c):
 * an inotify watch on spool_dir/maildrop/ and the import of each complete drop file into
 * the queue. This header joins pickup.c and queue.c; nothing outside src/queue uses it.
 */
#ifndef TERN_PICKUP_H
#define TERN_PICKUP_H

#include <stdint.h>

/* Watch the folder (dirfd stays owned by the caller); max_size bounds a drop file. */
void pickup_open(const char *path, int dirfd, uint64_t max_size);
void pickup_set_max(uint64_t max_size);
void pickup_close(void);

/* From queue.c: unlink dirfd/name durably on the commit thread, after every record
 * submitted before it is durable; done(arg, err) on the loop thread. */
void queue_unlink_after_commits(int dirfd, const char *name, void (*done)(void *arg, int err),
                                void *arg);

#endif
