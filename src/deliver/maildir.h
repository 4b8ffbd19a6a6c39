/*
 * maildir: deliver into Maildirs (the Maildir specification: tmp/, new/, cur/).
 * Blocking; runs on worker threads, never on the loop. Thread-safe: several batches may
 * run at once, into the same Maildirs too.
 *
 * For each job: create the Maildir (and parents, mode 0700) if missing, write
 * tmp/UNIQUE (mode 0600) with the prefix (Return-Path:, Delivered-To:) then the content
 * byte for byte as queued, fsync, rename into new/. A batch fsyncs each distinct new/
 * directory once at the end, and a job reports success only after that. Unique names:
 * "SECONDS.M<usec>P<pid>Q<n>_<thread>.HOST,S=<size>", or, for a job with a stable_id,
 * first "TIME.<stable_id>.HOST,S=<size>": the same name every time the same delivery is
 * tried, so a delivery repeated after a crash (done, but its status never recorded) finds
 * its earlier file in new/ and, when that file holds exactly the same bytes, counts it
 * as delivered instead of writing a second copy (`already` is set). A file of that name
 * with other bytes is left alone and a unique name is used. Every path is opened relative to
 * base_fd (ternd opens it before dropping privileges); relpath must be relative, without
 * "..". Any failure removes the tmp file (and the new/ file when the directory fsync
 * fails) and is reported as temporary (a full disk, a missing permission, an I/O error)
 * unless it can never succeed (a path component is not a directory, an invalid or
 * overlong name): then permanent.
 */
#ifndef TERN_MAILDIR_H
#define TERN_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>

#include "queue/queue.h"

struct maildir_job {
    /* in */
    int base_fd;          /* the domain's mail base directory */
    const char *relpath;  /* the Maildir below base_fd, e.g. "example.test/alice" */
    const char *prefix;   /* header lines to write first (CRLF), e.g. Return-Path */
    size_t prefix_len;
    struct qbody body;    /* the message content */
    const char *hostname; /* for unique names */
    const char *stable_id; /* optional: [A-Za-z0-9]+, the same for every try of this
                            * delivery and never for another (queue id + recipient) */
    long long stable_time; /* with stable_id: the TIME of its name (the arrival) */
    /* out */
    bool ok;
    bool permanent;       /* when !ok: retrying will not help */
    int errnum;           /* when !ok: the errno behind it (EDQUOT, ENOSPC, ...) or 0 */
    char error[256];      /* when !ok */
    char filename[256];   /* when ok: the file's path relative to base_fd */
    bool already;         /* when ok: an earlier try had written this very file */
};

void maildir_deliver_batch(struct maildir_job *jobs, size_t n);

#endif
