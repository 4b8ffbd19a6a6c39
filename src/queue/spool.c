/*
 * spool: see spool.h. State shared between the loop thread and the commit thread is the
 * job lists under `lock` and two atomic counters; the active segment (fd, sequence, size)
 * belongs to the commit thread once it runs (and to queue_open before that).
 *
 * Why one thread and one file: on this disk an fsync costs ~0.2 ms while creating and
 * unlinking a file per message is slow (ext4 without a journal); appending a batch to one
 * file and syncing once amortises best (see the GUIDE's measurements).
 *
 * Why segments are filled with zeros ahead of the records (ZERO_CHUNK at a time): an
 * fdatasync that only overwrites blocks the file already has writes no inode and no
 * allocation, and costs about half of one that grows the file (0.11-0.13 vs 0.22-0.25 ms
 * here, docs/PERFORMANCE.md). The zeros are written and synced with an ordinary batch
 * once per ZERO_CHUNK; a scan takes an all-zero rest of a segment as its clean end.
 */
#include "queue/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define RD_CHUNK (1u << 20)
#define ZERO_CHUNK (1u << 20) /* zeros written ahead of the records of the active segment */
#define SCAN_PREFIX (64u << 10)
#define COPY_BUF (256u << 10)

static struct {
    int qdirfd;
    /* the active segment: commit thread only once it runs */
    uint32_t seq;
    int fd;
    uint64_t size;
    uint64_t zero_end; /* the file holds zeros from size up to here */
    bool broken; /* a sync failed: never write to this segment again */
    uint32_t retire_block; /* a retirement of this segment failed: none after it may go */
    _Atomic uint64_t seg_max;
    _Atomic uint64_t fsyncs, batches;

    pthread_t thread;
    bool running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct spool_job *waiting, **waiting_tail;
    struct spool_job *done, **done_tail;
    bool stopping;
    struct notifier *notify;
    void (*done_cb)(struct spool_job *list);

    /* commit thread scratch */
    struct iovec *iov;
    size_t niov, iov_cap;
} S = {.fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

void spool_seg_name(char *out, size_t cap, uint32_t seq)
{
    snprintf(out, cap, "%010u.seg", seq);
}

static bool parse_seg_name(const char *name, uint32_t *seq)
{
    /* exactly ten digits then ".seg" */
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    if (strcmp(name + 10, ".seg") != 0 || v > UINT32_MAX)
        return false;
    *seq = (uint32_t)v;
    return true;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int spool_list(int qdirfd, uint32_t **seqs, size_t *n)
{
    int fd = dup(qdirfd);
    if (fd < 0)
        return -1;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return -1;
    }
    rewinddir(d);
    uint32_t *v = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint32_t seq;
        if (parse_seg_name(de->d_name, &seq)) {
            v = xgrow(v, &cap, cnt + 1, sizeof *v);
            v[cnt++] = seq;
        } else if (strncmp(de->d_name, "tmp.", 4) == 0) {
            /* a spill file of a draft that never committed (the O_TMPFILE fallback) */
            if (unlinkat(qdirfd, de->d_name, 0) == 0)
                log_printf(LOG_LVL_INFO, "event=queue.recover.tmp_removed file=%s", de->d_name);
        }
    }
    closedir(d);
    if (cnt > 1)
        qsort(v, cnt, sizeof *v, cmp_u32);
    *seqs = v;
    *n = cnt;
    return 0;
}

static char zero_chunk[ZERO_CHUNK]; /* never written: zeros */

/* ---- scanning ---- */

/* A window over the file, so a scan reads in large pieces, not record by record. */
struct rd {
    int fd;
    uint64_t size;
    char *buf;
    size_t cap;
    uint64_t boff;
    size_t blen;
    bool ioerr;
};

static const char *rd_get(struct rd *r, uint64_t off, size_t n)
{
    if (off > r->size || n > r->size - off)
        return NULL;
    if (off >= r->boff && off + n <= r->boff + r->blen)
        return r->buf + (off - r->boff);
    size_t want = n > RD_CHUNK ? n : RD_CHUNK;
    if (want > r->size - off)
        want = (size_t)(r->size - off);
    if (want > r->cap) {
        free(r->buf);
        r->buf = xmalloc(want);
        r->cap = want;
    }
    r->blen = 0;
    if (want && fs_pread_all(r->fd, r->buf, want, (off_t)off) != 0) {
        r->ioerr = true;
        return NULL;
    }
    r->boff = off;
    r->blen = want;
    return r->buf;
}

/* REC_OK if a whole valid record starts at off; -1 on an I/O error. */
static int record_at(struct rd *r, uint64_t off, struct rec_hdr *h)
{
    if (r->size - off < REC_HDR_LEN) {
        const char *p = rd_get(r, off, (size_t)(r->size - off));
        if (p == NULL)
            return r->ioerr ? -1 : REC_SHORT;
        for (uint64_t i = 0; i < r->size - off; i++)
            if (p[i] != 0)
                return REC_SHORT;
        return REC_ZERO;
    }
    const char *p = rd_get(r, off, REC_HDR_LEN);
    if (p == NULL)
        return -1;
    enum rec_err e = rec_hdr_decode(p, REC_HDR_LEN, h);
    if (e != REC_OK)
        return (int)e;
    if (h->len > r->size - off - REC_HDR_LEN)
        return REC_SHORT;
    uint32_t crc = 0;
    for (uint64_t done = 0; done < h->len;) {
        size_t n = h->len - done > RD_CHUNK ? RD_CHUNK : (size_t)(h->len - done);
        const char *q = rd_get(r, off + REC_HDR_LEN + done, n);
        if (q == NULL)
            return -1;
        crc = crc32c(crc, q, n);
        done += n;
    }
    return crc == h->crc ? REC_OK : REC_BAD_CRC;
}

/* The offset of the next valid record after `from`, UINT64_MAX if none, or -1 (as
 * UINT64_MAX - 1) on an I/O error. */
#define SCAN_NONE UINT64_MAX
#define SCAN_IOERR (UINT64_MAX - 1)
static uint64_t next_valid(struct rd *r, uint64_t from)
{
    static const char magic[4] = {'T', 'Q', 'R', 'C'};
    uint64_t pos = from;
    while (pos + REC_HDR_LEN <= r->size) {
        size_t n = r->size - pos > RD_CHUNK ? RD_CHUNK : (size_t)(r->size - pos);
        const char *p = rd_get(r, pos, n);
        if (p == NULL)
            return SCAN_IOERR;
        const char *hit = memmem(p, n, magic, sizeof magic);
        if (hit == NULL) {
            if (n < sizeof magic || pos + n >= r->size)
                break;
            pos += n - (sizeof magic - 1);
            continue;
        }
        uint64_t c = pos + (uint64_t)(hit - p);
        struct rec_hdr h;
        int e = record_at(r, c, &h);
        if (e < 0)
            return SCAN_IOERR;
        if (e == REC_OK)
            return c;
        pos = c + 1;
    }
    return SCAN_NONE;
}

/* 1 if every byte from off to the end is zero, 0 if not, -1 on an I/O error. */
static int zero_from(struct rd *r, uint64_t off)
{
    while (off < r->size) {
        size_t n = r->size - off > RD_CHUNK ? RD_CHUNK : (size_t)(r->size - off);
        const char *p = rd_get(r, off, n);
        if (p == NULL)
            return r->ioerr ? -1 : 0;
        if (p[0] != 0 || memcmp(p, p + 1, n - 1) != 0)
            return 0;
        off += n;
    }
    return 1;
}

int spool_scan(int fd, uint32_t seq, bool last, void (*cb)(void *arg, const struct spool_rec *r),
               void *arg, struct spool_scan *out)
{
    memset(out, 0, sizeof *out);
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < 0)
        return -1;
    struct rd r = {.fd = fd, .size = (uint64_t)end};
    uint64_t off = 0;
    int rc = 0;
    while (off < r.size) {
        struct rec_hdr h;
        int e = record_at(&r, off, &h);
        if (e < 0) {
            rc = -1;
            break;
        }
        if (e == REC_OK) {
            struct spool_rec sr = {.seq = seq, .off = off, .hdr = h};
            size_t want = h.len;
            if (h.type == REC_MESSAGE) {
                /* the envelope text, not the content: a small prefix nearly always holds
                 * it, and a large message is not read into memory once more */
                want = h.len < SCAN_PREFIX ? h.len : SCAN_PREFIX;
                const char *p = rd_get(&r, off + REC_HDR_LEN, want);
                if (p && want < h.len && !rec_msg_text_in(p, want))
                    want = h.len < REC_TEXT_MAX + 64 ? h.len : REC_TEXT_MAX + 64;
            }
            if (want <= REC_TEXT_MAX + 64) {
                sr.text = rd_get(&r, off + REC_HDR_LEN, want);
                sr.text_len = want;
                if (sr.text == NULL && r.ioerr) {
                    rc = -1;
                    break;
                }
            }
            cb(arg, &sr);
            off += REC_HDR_LEN + h.len;
            continue;
        }
        if (e == REC_ZERO) {
            int z = zero_from(&r, off);
            if (z < 0) {
                rc = -1;
                break;
            }
            if (z == 1) {
                /* the zeros written ahead of the records (see the file comment): the end */
                out->zero_tail = r.size - off;
                r.size = off;
                break;
            }
        }
        uint64_t next = next_valid(&r, off + 1);
        if (next == SCAN_IOERR) {
            rc = -1;
            break;
        }
        if (next == SCAN_NONE && last) {
            /* never acknowledged: a batch cut short by the crash */
            log_printf(LOG_LVL_WARN,
                       "event=queue.recover.truncate seg=%u offset=%llu bytes=%llu reason=%s", seq,
                       (unsigned long long)off, (unsigned long long)(r.size - off),
                       rec_err_name((enum rec_err)e));
            if (ftruncate(fd, (off_t)off) != 0 || fsync(fd) != 0) {
                rc = -1;
                break;
            }
            out->truncated = r.size - off;
            r.size = off;
            break;
        }
        out->damaged = true;
        out->bad++;
        uint64_t stop = next == SCAN_NONE ? r.size : next;
        log_printf(LOG_LVL_ERROR,
                   "event=queue.recover.damaged seg=%u offset=%llu bytes=%llu reason=%s", seq,
                   (unsigned long long)off, (unsigned long long)(stop - off),
                   rec_err_name((enum rec_err)e));
        off = stop;
    }
    out->size = r.size;
    free(r.buf);
    return rc;
}

/* ---- the active segment ---- */

/* ZERO_CHUNK zeros at off of fd (the file position is left alone). */
static int pwrite_zeros(int fd, uint64_t off)
{
    size_t done = 0;
    while (done < ZERO_CHUNK) {
        ssize_t w = pwrite(fd, zero_chunk + done, ZERO_CHUNK - done, (off_t)(off + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

static int rotate(void)
{
    uint32_t seq = S.seq + 1;
    char name[64];
    spool_seg_name(name, sizeof name, seq);
    int fd = openat(S.qdirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    struct buf b = BUF_INIT(256);
    rec_segment_encode(&b, seq, time(NULL));
    uint8_t hdr[REC_HDR_LEN];
    rec_hdr_encode(hdr, REC_SEGMENT, (uint32_t)b.len, crc32c(0, b.data, b.len));
    uint64_t used = REC_HDR_LEN + b.len;
    int rc = fs_write_all(fd, hdr, sizeof hdr) == 0 && fs_write_all(fd, b.data, b.len) == 0 ? 0
                                                                                          : -1;
    bool zeros = false;
    if (rc == 0) {
        /* the zeros are a speed-up only: a disk too full for them still gets a segment */
        zeros = pwrite_zeros(fd, used) == 0;
        if (!zeros && ftruncate(fd, (off_t)used) != 0)
            rc = -1;
    }
    if (rc == 0 && (fsync(fd) != 0 || fsync(S.qdirfd) != 0))
        rc = -1;
    int e = errno;
    atomic_fetch_add(&S.fsyncs, 2);
    if (rc != 0) {
        close(fd);
        unlinkat(S.qdirfd, name, 0);
        buf_release(&b);
        errno = e;
        return -1;
    }
    if (S.fd >= 0 && !S.broken && S.zero_end > S.size)
        (void)ftruncate(S.fd, (off_t)S.size); /* its zeros are not needed any more; if
                                                * this is lost, a scan still ends there */
    S.seq = seq;
    S.fd = fd;
    S.size = used;
    S.zero_end = zeros ? used + ZERO_CHUNK : used;
    S.broken = false;
    buf_release(&b);
    log_printf(LOG_LVL_INFO, "event=queue.segment.new seg=%u", seq);
    return 0;
}

int spool_init(int qdirfd, uint32_t seq, uint64_t seg_max)
{
    S.qdirfd = qdirfd;
    S.seq = seq - 1;
    S.fd = -1;
    S.waiting = S.done = NULL;
    S.retire_block = 0;
    S.waiting_tail = &S.waiting;
    S.done_tail = &S.done;
    S.stopping = false;
    atomic_store(&S.seg_max, seg_max ? seg_max : SPOOL_SEG_MAX_DEFAULT);
    atomic_store(&S.fsyncs, 0);
    atomic_store(&S.batches, 0);
    return rotate();
}

uint32_t spool_active_seq(void)
{
    return S.seq;
}

int spool_active_fd(void)
{
    return S.fd;
}

void spool_set_seg_max(uint64_t seg_max)
{
    atomic_store(&S.seg_max, seg_max ? seg_max : SPOOL_SEG_MAX_DEFAULT);
}

void spool_counters(uint64_t *fsyncs, uint64_t *batches)
{
    *fsyncs = atomic_load(&S.fsyncs);
    *batches = atomic_load(&S.batches);
}

/* ---- commit thread ---- */

static void iov_add(const void *p, size_t n)
{
    if (n == 0)
        return;
    S.iov = xgrow(S.iov, &S.iov_cap, S.niov + 1, sizeof *S.iov);
    S.iov[S.niov].iov_base = (void *)p;
    S.iov[S.niov].iov_len = n;
    S.niov++;
}

static int iov_flush(void)
{
    struct iovec *v = S.iov;
    size_t n = S.niov;
    S.niov = 0;
    while (n > 0) {
        ssize_t w = writev(S.fd, v, n > IOV_MAX ? IOV_MAX : (int)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        size_t left = (size_t)w;
        while (n > 0 && left >= v->iov_len) {
            left -= v->iov_len;
            v++;
            n--;
        }
        if (left) {
            v->iov_base = (char *)v->iov_base + left;
            v->iov_len -= left;
        }
    }
    return 0;
}

/* Append len bytes of src_fd at off to the segment: in the kernel when it can. */
static int copy_in(int src_fd, uint64_t off, uint64_t len)
{
    loff_t in = (loff_t)off;
    while (len > 0) {
        ssize_t c = copy_file_range(src_fd, &in, S.fd, NULL, len, 0);
        if (c < 0 && errno == EINTR)
            continue;
        if (c < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP))
            break; /* do it by hand below */
        if (c < 0)
            return -1;
        if (c == 0) {
            errno = EIO; /* the source is shorter than it should be */
            return -1;
        }
        len -= (uint64_t)c;
    }
    char *buf = len ? xmalloc(COPY_BUF) : NULL;
    while (len > 0) {
        size_t n = len > COPY_BUF ? COPY_BUF : (size_t)len;
        if (fs_pread_all(src_fd, buf, n, (off_t)in) != 0 || fs_write_all(S.fd, buf, n) != 0) {
            int e = errno;
            free(buf);
            errno = e;
            return -1;
        }
        in += (loff_t)n;
        len -= n;
    }
    free(buf);
    return 0;
}

/* Write the records of jobs[0..n) at the end of the segment; sets rec_off. */
static int write_records(struct spool_job **jobs, size_t n)
{
    uint64_t pos = S.size;
    S.niov = 0;
    for (size_t i = 0; i < n; i++) {
        struct spool_job *j = jobs[i];
        j->rec_off = pos;
        pos += REC_HDR_LEN + j->text_len + j->body_len;
        iov_add(j->hdr, REC_HDR_LEN);
        iov_add(j->text, j->text_len);
        if (j->src_fd < 0) {
            for (size_t k = 0; k < j->niov; k++)
                iov_add(j->iov[k].iov_base, j->iov[k].iov_len);
        } else if (j->body_len) {
            if (iov_flush() != 0 || copy_in(j->src_fd, j->src_off, j->body_len) != 0)
                return -1;
        }
    }
    if (iov_flush() != 0)
        return -1;
    S.size = pos;
    return 0;
}

/* Cut the segment back to off (the records after it were never acknowledged). */
static void truncate_to(uint64_t off)
{
    if (ftruncate(S.fd, (off_t)off) != 0 || lseek(S.fd, (off_t)off, SEEK_SET) < 0) {
        log_printf(LOG_LVL_ERROR, "event=queue.segment.truncate_failed seg=%u error=\"%s\"", S.seq,
                   strerror(errno));
        S.broken = true;
    }
    S.size = off;
    S.zero_end = off;
}

static void run_records(struct spool_job **jobs, size_t n)
{
    if (S.broken || S.size >= atomic_load(&S.seg_max)) {
        if (rotate() != 0) {
            int e = errno;
            log_printf(LOG_LVL_ERROR, "event=queue.segment.create_failed seg=%u error=\"%s\"",
                       S.seq + 1, strerror(e));
            if (S.broken) {
                for (size_t i = 0; i < n; i++)
                    jobs[i]->err = e;
                return;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        jobs[i]->seg_seq = S.seq;
        jobs[i]->seg_fd = S.fd;
    }
    uint64_t start = S.size;
    bool any = true;
    if (write_records(jobs, n) != 0) {
        /* find out which records fail by writing them one at a time: one huge message
         * on a full disk must not take the small ones of its batch down with it */
        truncate_to(start);
        any = false;
        for (size_t i = 0; i < n && !S.broken; i++) {
            uint64_t at = S.size;
            if (write_records(&jobs[i], 1) != 0) {
                jobs[i]->err = errno ? errno : EIO;
                truncate_to(at);
            } else {
                any = true;
            }
        }
        if (S.broken) {
            /* cannot even cut the file back: nothing of this batch can be trusted */
            for (size_t i = 0; i < n; i++)
                if (jobs[i]->err == 0)
                    jobs[i]->err = EIO;
            return;
        }
    }
    if (!any)
        return;
    if (S.zero_end < S.size + ZERO_CHUNK / 2) {
        /* top the zeros up; this batch's sync makes them and the new size durable */
        uint64_t at = S.zero_end > S.size ? S.zero_end : S.size;
        if (pwrite_zeros(S.fd, at) == 0)
            S.zero_end = at + ZERO_CHUNK;
        else if (S.zero_end < S.size)
            S.zero_end = S.size; /* a full disk, say: the records do not need them */
    }
    int rc = fdatasync(S.fd);
    atomic_fetch_add(&S.fsyncs, 1);
    if (rc != 0) {
        int e = errno;
        log_printf(LOG_LVL_ERROR, "event=queue.segment.sync_failed seg=%u error=\"%s\"", S.seq,
                   strerror(e));
        for (size_t i = 0; i < n; i++)
            if (jobs[i]->err == 0)
                jobs[i]->err = e;
        /* the kernel may have dropped the pages it failed to write: cut the batch off and
         * never trust this file for new records again */
        truncate_to(start);
        S.broken = true;
    }
}

static void run_retire(struct spool_job *j)
{
    char name[64], aside[80];
    spool_seg_name(name, sizeof name, j->seq);
    if (j->seq == S.seq) {
        j->err = EBUSY; /* never the active segment */
        return;
    }
    if (S.retire_block && j->seq > S.retire_block) {
        j->err = ECANCELED; /* oldest first, always: the loop submits it again later */
        return;
    }
    int rc;
    if (j->keep_aside) {
        snprintf(aside, sizeof aside, "%s.damaged", name);
        rc = renameat(S.qdirfd, name, S.qdirfd, aside);
    } else {
        rc = unlinkat(S.qdirfd, name, 0);
    }
    /* the folder is synced after each one so retirements become durable oldest first */
    if (rc != 0 || fsync(S.qdirfd) != 0)
        j->err = errno;
    atomic_fetch_add(&S.fsyncs, 1);
    if (j->err == 0) {
        close(j->fd);
        if (S.retire_block == j->seq)
            S.retire_block = 0;
    } else if (S.retire_block == 0 || j->seq < S.retire_block) {
        S.retire_block = j->seq;
    }
}

static void run_batch(struct spool_job *list)
{
    struct spool_job **recs = NULL;
    size_t nrecs = 0, cap = 0;
    for (struct spool_job *j = list; j; j = j->next) {
        if (j->kind == SJ_RECORD) {
            j->err = 0;
            recs = xgrow(recs, &cap, nrecs + 1, sizeof *recs);
            recs[nrecs++] = j;
        }
    }
    if (nrecs) {
        run_records(recs, nrecs);
        atomic_fetch_add(&S.batches, 1);
    }
    free(recs);
    for (struct spool_job *j = list; j; j = j->next) {
        if (j->kind == SJ_RETIRE) {
            j->err = 0;
            run_retire(j);
        } else if (j->kind == SJ_UNLINK) {
            j->err = unlinkat(j->dirfd, j->name, 0) == 0 && fsync(j->dirfd) == 0 ? 0 : errno;
        }
    }
}

static void *commit_main(void *arg)
{
    pthread_mutex_lock(&S.lock);
    for (;;) {
        while (S.waiting == NULL && !S.stopping)
            pthread_cond_wait(&S.cond, &S.lock);
        struct spool_job *list = S.waiting;
        if (list == NULL)
            break; /* stopping, and nothing left */
        struct spool_job **tail = S.waiting_tail;
        S.waiting = NULL;
        S.waiting_tail = &S.waiting;
        pthread_mutex_unlock(&S.lock);

        run_batch(list);

        pthread_mutex_lock(&S.lock);
        bool was_empty = S.done == NULL;
        *S.done_tail = list;
        S.done_tail = tail;
        if (was_empty)
            notifier_signal(S.notify);
    }
    pthread_mutex_unlock(&S.lock);
    return NULL;
}

static void deliver_done(void *arg)
{
    pthread_mutex_lock(&S.lock);
    struct spool_job *list = S.done;
    S.done = NULL;
    S.done_tail = &S.done;
    pthread_mutex_unlock(&S.lock);
    if (list)
        S.done_cb(list);
}

void spool_start(void (*done)(struct spool_job *list))
{
    S.done_cb = done;
    S.notify = notifier_new(deliver_done, NULL);
    S.stopping = false;
    if (pthread_create(&S.thread, NULL, commit_main, NULL) != 0)
        fatal("cannot start the queue commit thread");
    pthread_setname_np(S.thread, "queue-commit");
    S.running = true;
}

void spool_submit(struct spool_job *list)
{
    if (list == NULL)
        return;
    if (!S.running)
        fatal("spool_submit without a commit thread");
    struct spool_job *last = list;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&S.lock);
    *S.waiting_tail = list;
    S.waiting_tail = &last->next;
    pthread_cond_signal(&S.cond);
    pthread_mutex_unlock(&S.lock);
}

void spool_stop(void)
{
    if (!S.running)
        return;
    pthread_mutex_lock(&S.lock);
    S.stopping = true;
    pthread_cond_signal(&S.cond);
    pthread_mutex_unlock(&S.lock);
    pthread_join(S.thread, NULL);
    S.running = false;
    deliver_done(NULL);
    notifier_free(S.notify);
    S.notify = NULL;
    free(S.iov);
    S.iov = NULL;
    S.niov = S.iov_cap = 0;
    S.fd = -1; /* the loop side owns and closes every segment fd */
}
