/*
 * spool: the queue's segment files and the one commit thread that writes them (group
 * commit), plus the segment scan used by recovery. Knows records only as bytes; what they
 * mean is queue.c's business.
 *
 * Files in spool_dir/queue/: NNNNNNNNNN.seg (decimal sequence, zero-padded), each starting
 * with a segment record; a segment kept aside after damage is renamed NNNNNNNNNN.seg.damaged.
 *
 * Commit thread: takes every job queued so far, appends the records of the batch with
 * writev (content from memory or copied from a file) over zeros written ahead of them
 * (so the sync does not grow the file), calls fdatasync once, then hands the
 * finished jobs back to the loop thread through a notifier: while it syncs, the next batch
 * accumulates. A record is acknowledged (err == 0) only after its segment has been synced;
 * a new segment is created, fsync'ed and its folder fsync'ed before it holds anything.
 * After a failed write the segment is truncated back to the last good record; after a
 * failed sync the segment is given up (its page state is unknown) and the next batch goes
 * to a new segment. Retire and unlink jobs run after the batch's sync, in submission order.
 */
#ifndef TERN_SPOOL_H
#define TERN_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "queue/record.h"

#define SPOOL_SEG_MAX_DEFAULT (64ull << 20)
#define SPOOL_NAME_MAX 96

enum spool_job_kind {
    SJ_RECORD, /* append a record */
    SJ_RETIRE, /* unlink (or keep aside as .damaged) a segment that holds nothing live */
    SJ_UNLINK, /* unlink dirfd/name and fsync dirfd (a maildrop file once imported) */
    SJ_NONE,   /* carries only an error back (err preset by the submitter) */
};

struct spool_job {
    struct spool_job *next;
    enum spool_job_kind kind;
    /* SJ_RECORD: the header, the text part (not owned), then body_len content bytes from
     * iov (not owned) or from src_fd at src_off (src_fd -1 when the content is in iov). */
    uint8_t hdr[REC_HDR_LEN];
    const char *text;
    size_t text_len;
    const struct iovec *iov;
    size_t niov;
    int src_fd;
    uint64_t src_off;
    uint64_t body_len;
    /* SJ_RETIRE */
    uint32_t seq;
    int fd;
    bool keep_aside;
    /* SJ_UNLINK */
    int dirfd;
    char name[SPOOL_NAME_MAX];
    /* results, valid in done(): err 0 or an errno; where the record landed */
    int err;
    uint32_t seg_seq;
    int seg_fd;
    uint64_t rec_off;
};

void spool_seg_name(char *out, size_t cap, uint32_t seq);

/* ---- before the thread runs ---- */

/* The segment sequence numbers in qdirfd, ascending; removes stale tmp.* files. */
int spool_list(int qdirfd, uint32_t **seqs, size_t *n);

struct spool_rec {
    uint32_t seq;
    uint64_t off;       /* of the header */
    struct rec_hdr hdr;
    const char *text;   /* whole payload for segment/status records, the first bytes of a
                         * message record's payload (up to REC_TEXT_MAX + 64); NULL if a
                         * status record is too long to hold */
    size_t text_len;
};
struct spool_scan {
    uint64_t size;       /* after any truncation */
    uint64_t truncated;  /* bytes cut from a torn tail */
    uint64_t zero_tail;  /* zeros after the last record (written ahead of records) */
    unsigned bad;        /* damaged records or regions skipped */
    bool damaged;
};
/* Read every valid record of the segment in order (checksums verified) and give it to cb.
 * An invalid record followed by a valid one is damage: it is logged and skipped. An
 * invalid tail with nothing valid after it is, in the last segment, a write that was never
 * acknowledged: the file is truncated there (and synced); elsewhere it is damage. */
int spool_scan(int fd, uint32_t seq, bool last, void (*cb)(void *arg, const struct spool_rec *r),
               void *arg, struct spool_scan *out);

/* Create the first active segment (seq). 0, or -1 with errno. */
int spool_init(int qdirfd, uint32_t seq, uint64_t seg_max);
uint32_t spool_active_seq(void);
int spool_active_fd(void);
/* Start the commit thread; done() runs on the loop thread with finished jobs, in order. */
void spool_start(void (*done)(struct spool_job *list));

/* ---- loop thread ---- */

/* Queue jobs (a list linked by next) for the commit thread; a list goes into one batch. */
void spool_submit(struct spool_job *list);
void spool_set_seg_max(uint64_t seg_max);
/* Finish every queued job (their done() runs before this returns) and stop the thread. */
void spool_stop(void);
void spool_counters(uint64_t *fsyncs, uint64_t *batches);

#endif
