/*
 * draft: see draft.h. Loop thread only, except that the commit thread reads the chunks or
 * the spill file of a committed draft (the draft is not touched again until its commit
 * completes).
 */
#include "queue/draft.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/mem.h"
#include "queue/qid.h"

#define FIRST_CHUNK (16u << 10)
#define CHUNK_MAX (256u << 10)
#define STAGE_SIZE (256u << 10)

struct qdraft {
    char id[QID_MAX];
    struct iovec *chunks; /* iov_len is the fill; capacity in caps[] */
    size_t *caps;
    size_t nchunks, chunks_cap, caps_cap;
    uint64_t size;
    uint32_t crc;
    int spill_fd;
    char *stage; /* spilled: bytes not yet written to the file */
    size_t stage_len;
    char *joined; /* qdraft_join's buffer (owned by the caller) */
    struct iovec joined_iov;
    bool failed;
};

static int spill_dirfd = -1;

void qdraft_set_dir(int dirfd)
{
    spill_dirfd = dirfd;
}

struct qdraft *queue_draft_new(void)
{
    struct qdraft *d = xcalloc(1, sizeof *d);
    qid_new(d->id);
    d->spill_fd = -1;
    return d;
}

void qdraft_set_id(struct qdraft *d, const char *id)
{
    snprintf(d->id, sizeof d->id, "%s", id);
}

const char *queue_draft_id(const struct qdraft *d)
{
    return d->id;
}

size_t queue_draft_size(const struct qdraft *d)
{
    return (size_t)d->size;
}

uint32_t qdraft_crc(const struct qdraft *d)
{
    return d->crc;
}

int qdraft_spill_fd(const struct qdraft *d)
{
    return d->spill_fd;
}

const struct iovec *qdraft_chunks(const struct qdraft *d, size_t *n)
{
    if (d->joined) {
        *n = 1;
        return &d->joined_iov;
    }
    *n = d->nchunks;
    return d->chunks;
}

static void free_chunks(struct qdraft *d)
{
    for (size_t i = 0; i < d->nchunks; i++)
        free(d->chunks[i].iov_base);
    free(d->chunks);
    free(d->caps);
    d->chunks = NULL;
    d->caps = NULL;
    d->nchunks = d->chunks_cap = d->caps_cap = 0;
}

static int open_spill(struct qdraft *d)
{
    if (spill_dirfd < 0) {
        errno = ENOTDIR;
        return -1;
    }
    int fd = openat(spill_dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    /* no O_TMPFILE here: a named file, unlinked at once (recovery removes a leftover) */
    char name[64];
    snprintf(name, sizeof name, "tmp.%s", d->id);
    fd = openat(spill_dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0)
        unlinkat(spill_dirfd, name, 0);
    return fd;
}

static bool stage_flush(struct qdraft *d)
{
    if (d->stage_len && fs_write_all(d->spill_fd, d->stage, d->stage_len) != 0) {
        log_printf(LOG_LVL_ERROR, "event=queue.draft.spill_failed qid=%s error=\"%s\"", d->id,
                   strerror(errno));
        d->failed = true;
        return false;
    }
    d->stage_len = 0;
    return true;
}

/* Move the memory chunks into a temporary file. */
static bool spill(struct qdraft *d)
{
    d->spill_fd = open_spill(d);
    if (d->spill_fd < 0) {
        log_printf(LOG_LVL_ERROR, "event=queue.draft.spill_failed qid=%s error=\"%s\"", d->id,
                   strerror(errno));
        d->failed = true;
        return false;
    }
    for (size_t i = 0; i < d->nchunks; i++) {
        if (fs_write_all(d->spill_fd, d->chunks[i].iov_base, d->chunks[i].iov_len) != 0) {
            log_printf(LOG_LVL_ERROR, "event=queue.draft.spill_failed qid=%s error=\"%s\"", d->id,
                       strerror(errno));
            d->failed = true;
            return false;
        }
    }
    free_chunks(d);
    d->stage = xmalloc(STAGE_SIZE);
    return true;
}

bool queue_draft_write(struct qdraft *d, const void *p, size_t n)
{
    if (d->failed || d->joined)
        return false;
    if (n > DRAFT_MAX - d->size) {
        d->failed = true;
        return false;
    }
    d->crc = crc32c(d->crc, p, n);
    d->size += n;
    if (d->spill_fd < 0 && d->size > DRAFT_SPILL_AT && spill_dirfd >= 0 && !spill(d))
        return false;
    const char *s = p;
    if (d->spill_fd >= 0) {
        while (n > 0) {
            if (d->stage_len == STAGE_SIZE && !stage_flush(d))
                return false;
            size_t k = STAGE_SIZE - d->stage_len < n ? STAGE_SIZE - d->stage_len : n;
            memcpy(d->stage + d->stage_len, s, k);
            d->stage_len += k;
            s += k;
            n -= k;
        }
        return true;
    }
    while (n > 0) {
        size_t last = d->nchunks ? d->nchunks - 1 : 0;
        if (d->nchunks == 0 || d->chunks[last].iov_len == d->caps[last]) {
            size_t cap = d->nchunks ? d->caps[last] * 2 : FIRST_CHUNK;
            if (cap > CHUNK_MAX)
                cap = CHUNK_MAX;
            d->chunks = xgrow(d->chunks, &d->chunks_cap, d->nchunks + 1, sizeof *d->chunks);
            d->caps = xgrow(d->caps, &d->caps_cap, d->nchunks + 1, sizeof *d->caps);
            d->chunks[d->nchunks].iov_base = xmalloc(cap);
            d->chunks[d->nchunks].iov_len = 0;
            d->caps[d->nchunks] = cap;
            last = d->nchunks++;
        }
        struct iovec *c = &d->chunks[last];
        size_t room = d->caps[last] - c->iov_len;
        size_t k = room < n ? room : n;
        memcpy((char *)c->iov_base + c->iov_len, s, k);
        c->iov_len += k;
        s += k;
        n -= k;
    }
    return true;
}

bool qdraft_finish(struct qdraft *d)
{
    if (d->failed)
        return false;
    return d->spill_fd < 0 || stage_flush(d);
}

char *qdraft_join(struct qdraft *d)
{
    if (d->spill_fd >= 0 || d->failed)
        return NULL;
    char *buf;
    size_t o = 0;
    if (d->nchunks == 1) {
        /* the common small message: hand over the one chunk, no copy */
        buf = d->chunks[0].iov_base;
        o = d->chunks[0].iov_len;
        d->chunks[0].iov_base = NULL;
    } else {
        buf = xmalloc(d->size ? (size_t)d->size : 1);
        for (size_t i = 0; i < d->nchunks; i++) {
            memcpy(buf + o, d->chunks[i].iov_base, d->chunks[i].iov_len);
            o += d->chunks[i].iov_len;
        }
    }
    free_chunks(d);
    d->joined = buf;
    d->joined_iov.iov_base = buf;
    d->joined_iov.iov_len = o;
    return buf;
}

void qdraft_free(struct qdraft *d)
{
    if (d == NULL)
        return;
    free_chunks(d);
    free(d->stage);
    if (d->spill_fd >= 0)
        close(d->spill_fd);
    free(d);
}

void queue_draft_abort(struct qdraft *d)
{
    qdraft_free(d);
}
