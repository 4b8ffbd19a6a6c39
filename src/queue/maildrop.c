/*
 * maildrop: see maildrop.h. Uses only record, qid and the lib layer, so tern-sendmail can
 * link it without the event loop or the commit thread.
 */
#include "queue/maildrop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/mem.h"
#include "queue/qid.h"
#include "queue/record.h"

PRINTF_LIKE(3, 4) static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    errno = e;
    return -1;
}

static int writev_all(int fd, struct iovec *v, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, v, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        size_t left = (size_t)w;
        while (n > 0 && left >= v->iov_len) {
            left -= v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (char *)v->iov_base + left;
            v->iov_len -= left;
        }
    }
    return 0;
}

int maildrop_write(const char *spool_dir, const struct envelope *env, const void *msg,
                   size_t len, char *id, char *err, size_t errlen)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", spool_dir, MAILDROP_DIR) >= sizeof path)
        return fail(err, errlen, "spool path too long");
    if (len > REC_PAYLOAD_MAX - REC_TEXT_MAX)
        return fail(err, errlen, "message too large");
    int dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return fail(err, errlen, "cannot open %s: %s", path, strerror(errno));
    qid_new(id);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct envelope e = *env; /* shallow: only the arrival is ours to set */
    if (e.arrival == 0)
        e.arrival = ts.tv_sec;
    struct buf text = BUF_INIT(REC_TEXT_MAX);
    if (!rec_msg_encode(&text, id, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000,
                        &e, len)) {
        buf_release(&text);
        close(dirfd);
        return fail(err, errlen, "envelope too large");
    }
    uint32_t crc = crc32c(crc32c(0, text.data, text.len), msg, len);
    uint8_t hdr[REC_HDR_LEN];
    rec_hdr_encode(hdr, REC_MESSAGE, (uint32_t)(text.len + len), crc);

    char tmp[64];
    snprintf(tmp, sizeof tmp, ".tmp.%s", id);
    int rc = -1;
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) {
        fail(err, errlen, "cannot create %s/%s: %s", path, tmp, strerror(errno));
        goto out;
    }
    struct iovec v[3] = {{hdr, sizeof hdr}, {text.data, text.len}, {(void *)msg, len}};
    /* 0640 whatever the umask: the folder's setgid bit gave the file ternd's group, so
     * ternd (another user) can read it and other local users cannot */
    if (fchmod(fd, 0640) != 0 || writev_all(fd, v, 3) != 0 || fsync(fd) != 0) {
        fail(err, errlen, "cannot write %s/%s: %s", path, tmp, strerror(errno));
        close(fd);
        unlinkat(dirfd, tmp, 0);
        goto out;
    }
    if (close(fd) != 0 || renameat(dirfd, tmp, dirfd, id) != 0) {
        fail(err, errlen, "cannot store %s/%s: %s", path, id, strerror(errno));
        unlinkat(dirfd, tmp, 0);
        goto out;
    }
    if (fsync(dirfd) != 0) {
        /* the name may not survive a crash: report failure, but the file is complete and
         * may still be delivered (a duplicate at worst, never a loss) */
        fail(err, errlen, "cannot sync %s: %s", path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    buf_release(&text);
    close(dirfd);
    return rc;
}

bool maildrop_name_ok(const char *name)
{
    return qid_valid(name);
}

int maildrop_open(int dirfd, const char *name, uint64_t max_size, struct maildrop_file *out,
                  char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    envelope_init(&out->env);
    out->fd = -1;
    if (!maildrop_name_ok(name)) {
        errno = EINVAL;
        return fail(err, errlen, "not a drop file name");
    }
    /* O_NONBLOCK: a FIFO planted here must not hang the daemon; O_NOFOLLOW: no symlinks */
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errlen, "cannot open: %s", strerror(errno));
    struct stat st;
    char *text = NULL;
    if (fstat(fd, &st) != 0) {
        fail(err, errlen, "cannot stat: %s", strerror(errno));
        goto bad;
    }
    errno = EINVAL;
    if (!S_ISREG(st.st_mode)) {
        fail(err, errlen, "not a regular file");
        goto bad;
    }
    if (st.st_nlink != 1) {
        fail(err, errlen, "file has %lu links", (unsigned long)st.st_nlink);
        goto bad;
    }
    if ((uint64_t)st.st_size > max_size) {
        fail(err, errlen, "file too large (%lld bytes)", (long long)st.st_size);
        goto bad;
    }
    uint8_t hb[REC_HDR_LEN];
    struct rec_hdr h;
    enum rec_err e;
    if ((uint64_t)st.st_size < REC_HDR_LEN || fs_pread_all(fd, hb, sizeof hb, 0) != 0 ||
        (e = rec_hdr_decode(hb, sizeof hb, &h)) != REC_OK) {
        errno = EINVAL;
        fail(err, errlen, "bad record header");
        goto bad;
    }
    if (h.type != REC_MESSAGE || (uint64_t)h.len + REC_HDR_LEN != (uint64_t)st.st_size) {
        errno = EINVAL;
        fail(err, errlen, "record type or length does not match the file");
        goto bad;
    }
    size_t avail = h.len < REC_TEXT_MAX + 64 ? h.len : REC_TEXT_MAX + 64;
    text = xmalloc(avail ? avail : 1);
    if (fs_pread_all(fd, text, avail, REC_HDR_LEN) != 0) {
        fail(err, errlen, "cannot read: %s", strerror(errno));
        goto bad;
    }
    struct rec_msg rm;
    char why[160] = "";
    if ((e = rec_msg_decode(text, avail, h.len, &rm, why, sizeof why)) != REC_OK) {
        errno = EINVAL;
        fail(err, errlen, "bad envelope: %s %s", rec_err_name(e), why);
        goto bad;
    }
    if (strcmp(rm.id, name) != 0) {
        rec_msg_free(&rm);
        errno = EINVAL;
        fail(err, errlen, "file name and queue id differ");
        goto bad;
    }
    out->fd = fd;
    out->uid = st.st_uid;
    snprintf(out->id, sizeof out->id, "%s", rm.id);
    out->env = rm.env;
    out->arrival_ms = rm.arrival_ms;
    out->body_off = REC_HDR_LEN + rm.text_len;
    out->body_len = rm.body_len;
    out->text_crc = crc32c(0, text, rm.text_len);
    out->payload_crc = h.crc;
    free(text);
    return 0;
bad:
    free(text);
    close(fd);
    return -1;
}

void maildrop_close(struct maildrop_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    envelope_clear(&f->env);
}
