/*
 * maildir: see maildir.h. Follows the Maildir specification (cr.yp.to/proto/maildir.html)
 * and Postfix's virtual(8) habit of deferring whenever in doubt.
 *
 * A batch works in three steps:
 *   1. open each distinct Maildir once (creating it on first delivery: parents with
 *      fs_mkdirs_at, which makes every new name durable in its parent, then tmp/ new/ cur/
 *      and an fsync of the Maildir folder);
 *   2. per job: an unnamed file in tmp/ (O_TMPFILE), prefix + content written, fsync, then
 *      linked into new/NAME; where the file system cannot do that, the classic way:
 *      create tmp/NAME with O_EXCL, write, fsync, close, rename into new/NAME;
 *   3. fsync each new/ that received a file, once; only then is a job ok. If that fsync
 *      fails the files are taken out of new/ again, so a retry cannot deliver twice.
 *
 * Invariants: no absolute path is ever opened (everything is *at() relative to base_fd or
 * to the Maildir's fd); a job that is not ok leaves no file behind in tmp/ or new/; the
 * content is written exactly as queued (CRLF kept, no dot-stuffing, no conversion).
 *
 * Unique names combine time, pid, a process-wide counter and the thread id, so two
 * threads (or two deliveries in the same microsecond) never collide; O_EXCL catches what
 * would remain (another host sharing the folder with our name), and we pick a new name.
 *
 * Stable names (a job with a stable_id): the queue reports a
 * delivery only after step 3, so a crash between a link into new/ and the record of the
 * delivery makes the next start deliver again. With the same name every try, that second
 * try meets its own earlier file (EEXIST) and, only if the bytes are the same, takes it
 * as its own delivery: the mailbox ends with one copy, exactly what was to be written.
 * Different bytes under the name (a queue id reused by another spool) never count: the
 * job falls back to a unique name, so a false match can cost a duplicate, never a loss.
 */
#include "deliver/maildir.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/fsutil.h"
#include "lib/mem.h"

#define MAILDIR_DIR_MODE 0700
#define MAILDIR_FILE_MODE 0600
#define NAME_TRIES 5           /* fresh unique names before giving up on EEXIST */
#define COPY_CHUNK (64 * 1024) /* pread/write fallback buffer */

/* The one piece of process-wide state: the Q<n> of unique names. */
static atomic_ulong delivery_counter;

struct mdir {
    int base_fd;
    const char *relpath;
    int fd;   /* the Maildir folder, or -1 if it could not be opened */
    int err;  /* why not */
    bool permanent;
    bool used; /* a file was renamed into new/ */
};

struct jstate {
    struct mdir *m;
    char name[160]; /* the unique name in tmp/ and new/ */
    bool renamed;
};

static void job_fail(struct maildir_job *j, int err, bool permanent, const char *fmt, ...)
    PRINTF_LIKE(4, 5);
static void job_fail(struct maildir_job *j, int err, bool permanent, const char *fmt, ...)
{
    j->ok = false;
    j->errnum = err;
    j->permanent = permanent;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->error, sizeof j->error, fmt, ap);
    va_end(ap);
    if (err != 0 && n >= 0 && (size_t)n < sizeof j->error)
        snprintf(j->error + n, sizeof j->error - (size_t)n, ": %s", strerror(err));
}

/* Errors that retrying cannot fix: the path itself is wrong. */
static bool path_error_is_permanent(int err)
{
    return err == ENOTDIR || err == ENAMETOOLONG || err == ELOOP || err == EINVAL;
}

/* Relative, non-empty, no ".." component (the caller built it from the configuration
 * pattern and a checked user name: this is the last line of defence). */
static bool relpath_ok(const char *p)
{
    if (p == NULL || p[0] == '\0' || p[0] == '/')
        return false;
    for (const char *s = p; *s;) {
        size_t len = strcspn(s, "/");
        if (len == 2 && s[0] == '.' && s[1] == '.')
            return false;
        s += len;
        while (*s == '/')
            s++;
    }
    return true;
}

/* tmp/, new/ and cur/ inside an open Maildir; fsync it if any was created. */
static int make_subdirs(int fd)
{
    static const char *const sub[] = {"tmp", "new", "cur"};
    bool created = false;
    for (size_t i = 0; i < ARRAY_LEN(sub); i++) {
        if (mkdirat(fd, sub[i], MAILDIR_DIR_MODE) == 0)
            created = true;
        else if (errno != EEXIST)
            return -1;
    }
    if (created && fsync(fd) != 0)
        return -1;
    return 0;
}

static void open_mdir(struct mdir *m)
{
    m->fd = -1;
    if (!relpath_ok(m->relpath)) {
        m->err = EINVAL;
        m->permanent = true;
        return;
    }
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    int fd = openat(m->base_fd, m->relpath, flags);
    bool fresh = false;
    if (fd < 0 && errno == ENOENT) {
        /* first delivery: create the Maildir and its parents */
        if (fs_mkdirs_at(m->base_fd, m->relpath, MAILDIR_DIR_MODE) != 0) {
            m->err = errno;
            m->permanent = path_error_is_permanent(errno);
            return;
        }
        fd = openat(m->base_fd, m->relpath, flags);
        fresh = true;
    }
    if (fd < 0) {
        m->err = errno;
        m->permanent = path_error_is_permanent(errno);
        return;
    }
    /* an existing Maildir normally has its subfolders; one that lacks them is mended when
     * a delivery meets ENOENT (see deliver_one), so this costs nothing per batch */
    if (fresh && make_subdirs(fd) != 0) {
        m->err = errno;
        m->permanent = path_error_is_permanent(errno);
        close(fd);
        return;
    }
    m->fd = fd;
}

/* HOST of the unique name: "/" and ":" are escaped as the specification says. */
static void host_part(const char *host, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = host && host[0] ? host : "localhost"; *p && n + 5 < cap; p++) {
        if (*p == '/' || *p == ':') {
            n += (size_t)snprintf(out + n, cap - n, "\\%03o", (unsigned char)*p);
        } else if ((unsigned char)*p > ' ' && *p != 0x7f) {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

static __thread long my_pid, my_tid;
static pthread_once_t ids_once = PTHREAD_ONCE_INIT;

static void forget_ids(void)
{
    my_pid = my_tid = 0; /* runs in the child, in the thread that forked */
}

static void register_fork_reset(void)
{
    pthread_atfork(NULL, NULL, forget_ids);
}

static void unique_name(const struct maildir_job *j, char *out, size_t cap)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char host[72];
    host_part(j->hostname, host, sizeof host);
    unsigned long q = atomic_fetch_add(&delivery_counter, 1);
    /* both are system calls: asked once per thread (and again in a forked child) */
    pthread_once(&ids_once, register_fork_reset);
    if (my_tid == 0) {
        my_pid = (long)getpid();
        my_tid = (long)gettid();
    }
    long pid = my_pid, tid = my_tid;
    snprintf(out, cap, "%lld.M%06ldP%ldQ%lu_%ld.%s,S=%zu", (long long)tv.tv_sec,
             (long)tv.tv_usec, pid, q, tid, host, j->prefix_len + j->body.len);
}

/* The stable name of a job (see the file comment); false if it has no usable stable_id. */
static bool stable_name(const struct maildir_job *j, char *out, size_t cap)
{
    if (j->stable_id == NULL || j->stable_id[0] == '\0')
        return false;
    for (const char *p = j->stable_id; *p; p++)
        if (!isalnum((unsigned char)*p))
            return false;
    char host[72];
    host_part(j->hostname, host, sizeof host);
    int n = snprintf(out, cap, "%lld.%s.%s,S=%zu", j->stable_time, j->stable_id, host,
                     j->prefix_len + j->body.len);
    return n > 0 && (size_t)n < cap;
}

/* Bytes [off, off + n) of what job j writes (prefix, then content) into out. */
static int job_bytes(const struct maildir_job *j, char *out, uint64_t off, size_t n)
{
    while (n > 0) {
        size_t take;
        if (off < j->prefix_len) {
            take = j->prefix_len - off < n ? (size_t)(j->prefix_len - off) : n;
            memcpy(out, j->prefix + off, take);
        } else {
            uint64_t at = off - j->prefix_len;
            take = n;
            if (j->body.mem != NULL)
                memcpy(out, j->body.mem + at, take);
            else if (fs_pread_all(j->body.fd, out, take, (off_t)(j->body.off + at)) != 0)
                return -1;
        }
        out += take;
        off += take;
        n -= take;
    }
    return 0;
}

/* Is path (below dirfd) a regular file holding exactly the bytes job j writes? Read in
 * chunks: this runs only when a stable name is already taken (after a crash). */
static bool same_content(int dirfd, const char *path, const struct maildir_job *j)
{
    int fd = openat(dirfd, path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return false;
    uint64_t total = j->prefix_len + j->body.len;
    struct stat st;
    bool same = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == total;
    char *mine = same ? xmalloc(COPY_CHUNK) : NULL;
    char *theirs = same ? xmalloc(COPY_CHUNK) : NULL;
    for (uint64_t off = 0; same && off < total;) {
        size_t n = total - off < COPY_CHUNK ? (size_t)(total - off) : COPY_CHUNK;
        same = job_bytes(j, mine, off, n) == 0 && fs_pread_all(fd, theirs, n, (off_t)off) == 0 &&
               memcmp(mine, theirs, n) == 0;
        off += n;
    }
    free(mine);
    free(theirs);
    close(fd);
    return same;
}

/* Copy len bytes at off of in_fd to out_fd: in the kernel when it can, else through a
 * small buffer (never the whole message in memory). */
static int copy_range(int out_fd, int in_fd, uint64_t off, size_t len)
{
    loff_t pos = (loff_t)off;
    size_t left = len;
    bool kernel = true;
    char *buf = NULL;
    while (left > 0) {
        if (kernel) {
            ssize_t r = copy_file_range(in_fd, &pos, out_fd, NULL, left, 0);
            if (r > 0) {
                left -= (size_t)r;
                continue;
            }
            if (r == 0) { /* the spool file is shorter than the queue says */
                errno = EIO;
                break;
            }
            if (errno == EINTR)
                continue;
            if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP &&
                errno != EBADF)
                break;
            kernel = false; /* not supported between these files: copy through user space */
            buf = xmalloc(COPY_CHUNK);
        }
        size_t chunk = left < COPY_CHUNK ? left : COPY_CHUNK;
        if (fs_pread_all(in_fd, buf, chunk, (off_t)pos) != 0 ||
            fs_write_all(out_fd, buf, chunk) != 0)
            break;
        pos += (loff_t)chunk;
        left -= chunk;
    }
    int e = errno;
    free(buf);
    errno = e;
    return left == 0 ? 0 : -1;
}

static int write_content(int fd, const struct maildir_job *j)
{
    if (j->prefix_len > 0 && fs_write_all(fd, j->prefix, j->prefix_len) != 0)
        return -1;
    if (j->body.len == 0)
        return 0;
    if (j->body.mem != NULL)
        return fs_write_all(fd, j->body.mem, j->body.len);
    return copy_range(fd, j->body.fd, j->body.off, j->body.len);
}

/* Step 2 for one job, the fast way: an unnamed file (O_TMPFILE) in tmp/, written and
 * synced, then linked into new/ under its unique name. The message still appears in new/
 * only when complete (the point of tmp/), and no name is created in tmp/ and renamed away:
 * on this kind of file system that saves a directory update and its sync per message.
 * Returns false (with errno) if the file system cannot do it; the caller falls back. */
static bool deliver_linked(struct maildir_job *j, struct jstate *st, const char **what)
{
    struct mdir *m = st->m;
    int fd = openat(m->fd, "tmp", O_TMPFILE | O_WRONLY | O_CLOEXEC, MAILDIR_FILE_MODE);
    if (fd < 0 && errno == ENOENT && make_subdirs(m->fd) == 0)
        fd = openat(m->fd, "tmp", O_TMPFILE | O_WRONLY | O_CLOEXEC, MAILDIR_FILE_MODE);
    if (fd < 0) {
        *what = NULL; /* not supported here (or no tmp/): let the classic way decide */
        return false;
    }
    char proc[64], fresh[200];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    *what = "write";
    if (write_content(fd, j) != 0)
        goto fail;
    *what = "fsync";
    if (fsync(fd) != 0)
        goto fail;
    *what = "link into new/";
    if (stable_name(j, st->name, sizeof st->name)) {
        snprintf(fresh, sizeof fresh, "new/%s", st->name);
        int rc = linkat(AT_FDCWD, proc, m->fd, fresh, AT_SYMLINK_FOLLOW);
        if (rc != 0 && errno == ENOENT && make_subdirs(m->fd) == 0)
            rc = linkat(AT_FDCWD, proc, m->fd, fresh, AT_SYMLINK_FOLLOW);
        int link_err = rc == 0 ? 0 : errno;
        if (rc == 0 || (link_err == EEXIST && same_content(m->fd, fresh, j))) {
            /* an earlier file of ours: new/ is still synced in step 3, since that
             * earlier try may have crashed before its own sync */
            j->already = rc != 0;
            close(fd);
            st->renamed = true;
            m->used = true;
            return true;
        }
        if (link_err != EEXIST) {
            errno = link_err;
            goto fail;
        }
    }
    for (int attempt = 0; attempt < NAME_TRIES; attempt++) {
        unique_name(j, st->name, sizeof st->name);
        snprintf(fresh, sizeof fresh, "new/%s", st->name);
        if (linkat(AT_FDCWD, proc, m->fd, fresh, AT_SYMLINK_FOLLOW) == 0) {
            close(fd);
            st->renamed = true;
            m->used = true;
            return true;
        }
        if (errno == ENOENT && make_subdirs(m->fd) == 0 &&
            linkat(AT_FDCWD, proc, m->fd, fresh, AT_SYMLINK_FOLLOW) == 0) {
            close(fd);
            st->renamed = true;
            m->used = true;
            return true;
        }
        if (errno != EEXIST)
            break;
    }
fail:;
    int e = errno;
    close(fd); /* an unnamed file vanishes with its last descriptor: nothing to clean */
    errno = e;
    return false;
}

/* Step 2 for one job. */
static void deliver_one(struct maildir_job *j, struct jstate *st)
{
    const char *linked_what = NULL;
    if (deliver_linked(j, st, &linked_what))
        return;
    if (linked_what != NULL && !(errno == ENOENT && strcmp(linked_what, "link into new/") == 0)) {
        /* a real failure (not "no O_TMPFILE" or "no /proc"): report it */
        job_fail(j, errno, false, "%s of a new file in %s/tmp failed", linked_what, j->relpath);
        return;
    }
    struct mdir *m = st->m;
    char tmp[200], fresh[200];
    int fd = -1;
    for (int attempt = 0; attempt < NAME_TRIES && fd < 0; attempt++) {
        unique_name(j, st->name, sizeof st->name);
        snprintf(tmp, sizeof tmp, "tmp/%s", st->name);
        fd = openat(m->fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                    MAILDIR_FILE_MODE);
        if (fd < 0 && errno == ENOENT && make_subdirs(m->fd) == 0)
            fd = openat(m->fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                        MAILDIR_FILE_MODE); /* someone removed tmp/: recreate it */
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        int e = errno;
        job_fail(j, e, path_error_is_permanent(e) && e != ELOOP,
                 "cannot create a file in %s/tmp", j->relpath);
        return;
    }
    const char *what = "write";
    if (write_content(fd, j) != 0)
        goto fail;
    what = "fsync";
    if (fsync(fd) != 0)
        goto fail;
    what = "close";
    int rc = close(fd);
    fd = -1;
    if (rc != 0)
        goto fail;
    char stable[sizeof st->name];
    if (stable_name(j, stable, sizeof stable)) {
        /* link, not rename: rename would replace an earlier file under the name */
        snprintf(fresh, sizeof fresh, "new/%s", stable);
        int linked = linkat(m->fd, tmp, m->fd, fresh, 0);
        if (linked == 0 || (errno == EEXIST && same_content(m->fd, fresh, j))) {
            j->already = linked != 0;
            unlinkat(m->fd, tmp, 0); /* a crash before this leaves a stray tmp/ file */
            snprintf(st->name, sizeof st->name, "%s", stable);
            st->renamed = true;
            m->used = true;
            return;
        }
        /* taken by other bytes, or no hard links here: the unique name, as usual */
    }
    what = "rename into new/";
    snprintf(fresh, sizeof fresh, "new/%s", st->name);
    if (renameat(m->fd, tmp, m->fd, fresh) != 0) {
        if (errno != ENOENT || make_subdirs(m->fd) != 0 ||
            renameat(m->fd, tmp, m->fd, fresh) != 0)
            goto fail;
    }
    st->renamed = true;
    m->used = true;
    return;
fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlinkat(m->fd, tmp, 0);
    job_fail(j, e, false, "%s of %s/%s failed", what, j->relpath, tmp);
}

void maildir_deliver_batch(struct maildir_job *jobs, size_t n)
{
    if (n == 0)
        return;
    struct mdir *dirs = xcalloc(n, sizeof *dirs);
    struct jstate *st = xcalloc(n, sizeof *st);
    size_t ndirs = 0;

    /* step 1: the distinct Maildirs (same base and path text; an alias of the same folder
     * by another path only costs an extra fsync) */
    for (size_t i = 0; i < n; i++) {
        struct maildir_job *j = &jobs[i];
        j->ok = false;
        j->already = false;
        j->permanent = false;
        j->errnum = 0;
        j->error[0] = j->filename[0] = '\0';
        const char *rel = j->relpath ? j->relpath : "";
        struct mdir *m = NULL;
        for (size_t k = 0; k < ndirs && m == NULL; k++)
            if (dirs[k].base_fd == j->base_fd && strcmp(dirs[k].relpath, rel) == 0)
                m = &dirs[k];
        if (m == NULL) {
            m = &dirs[ndirs++];
            m->base_fd = j->base_fd;
            m->relpath = rel;
            open_mdir(m);
        }
        st[i].m = m;
    }

    /* step 2: write and rename */
    for (size_t i = 0; i < n; i++) {
        struct maildir_job *j = &jobs[i];
        struct mdir *m = st[i].m;
        if (m->fd < 0) {
            if (m->err == EINVAL && m->permanent)
                job_fail(j, 0, true, "invalid Maildir path \"%.100s\"", m->relpath);
            else
                job_fail(j, m->err, m->permanent, "cannot open Maildir %.150s", m->relpath);
            continue;
        }
        deliver_one(j, &st[i]);
    }

    /* step 3: one fsync per new/ that changed, then the verdicts */
    for (size_t k = 0; k < ndirs; k++) {
        struct mdir *m = &dirs[k];
        if (m->fd < 0)
            continue;
        int err = 0;
        if (m->used && fs_fsync_dir_at(m->fd, "new") != 0)
            err = errno;
        for (size_t i = 0; i < n; i++) {
            if (st[i].m != m || !st[i].renamed)
                continue;
            struct maildir_job *j = &jobs[i];
            if (err != 0) {
                /* the name may or may not survive a crash: take it out, defer, retry */
                char fresh[200];
                snprintf(fresh, sizeof fresh, "new/%s", st[i].name);
                unlinkat(m->fd, fresh, 0);
                job_fail(j, err, false, "fsync of %s/new failed", j->relpath);
                continue;
            }
            j->ok = true;
            snprintf(j->filename, sizeof j->filename, "%s/new/%s", j->relpath, st[i].name);
        }
        close(m->fd);
    }
    free(dirs);
    free(st);
}
