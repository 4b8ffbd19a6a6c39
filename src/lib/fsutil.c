/* fsutil: see fsutil.h. */
#include "lib/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "lib/mem.h"

int fs_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int fs_pread_all(int fd, void *p, size_t n, off_t off)
{
    char *c = p;
    while (n > 0) {
        ssize_t r = pread(fd, c, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        c += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

int fs_fsync_dir_at(int dirfd, const char *path)
{
    int fd = openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

int fs_mkdirs_at(int dirfd, const char *path, mode_t mode)
{
    char tmp[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(tmp, path, len + 1);
    for (char *p = tmp + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdirat(dirfd, tmp, mode) == 0) {
            /* make the new name durable in its parent */
            char *slash = strrchr(tmp, '/');
            if (slash == NULL) {
                if (fs_fsync_dir_at(dirfd, ".") != 0)
                    return -1;
            } else {
                *slash = '\0';
                int rc = fs_fsync_dir_at(dirfd, tmp[0] ? tmp : "/");
                *slash = '/';
                if (rc != 0)
                    return -1;
            }
        } else if (errno != EEXIST) {
            return -1;
        }
        *p = saved;
        if (saved == '\0')
            break;
        while (p[1] == '/')
            p++;
    }
    struct stat st;
    if (fstatat(dirfd, path, &st, 0) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int fs_read_file_at(int dirfd, const char *path, size_t max, char **out, size_t *len)
{
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = S_ISREG(st.st_mode) ? errno : EINVAL;
        close(fd);
        errno = e;
        return -1;
    }
    /* The size may change under us: read until EOF, never keeping more than max bytes. */
    size_t cap = (size_t)st.st_size < max ? (size_t)st.st_size + 1 : max + 1;
    size_t n = 0;
    char *data = xmalloc(cap + 1);
    int err = 0;
    for (;;) {
        if (n == cap) {
            if (cap > max) {
                err = EFBIG;
                break;
            }
            cap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            data = xrealloc(data, cap + 1);
        }
        ssize_t r = read(fd, data + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (err == 0 && n > max)
        err = EFBIG;
    if (err != 0) {
        free(data);
        errno = err;
        return -1;
    }
    data[n] = '\0';
    *out = data;
    if (len)
        *len = n;
    return 0;
}

int fs_write_file_atomic_at(int dirfd, const char *path, const void *p, size_t n, mode_t mode)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    if (fs_write_all(fd, p, n) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlinkat(dirfd, tmp, 0);
        errno = e;
        return -1;
    }
    if (close(fd) != 0 || renameat(dirfd, tmp, dirfd, path) != 0) {
        int e = errno;
        unlinkat(dirfd, tmp, 0);
        errno = e;
        return -1;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return fs_fsync_dir_at(dirfd, ".");
    *slash = '\0';
    return fs_fsync_dir_at(dirfd, dir[0] ? dir : "/");
}

int fs_free_bytes(int fd, unsigned long long *out)
{
    struct statvfs sv;
    if (fstatvfs(fd, &sv) != 0)
        return -1;
    *out = (unsigned long long)sv.f_bavail * sv.f_frsize;
    return 0;
}
