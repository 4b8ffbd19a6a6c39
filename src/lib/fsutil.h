/*
 * fsutil: file-system helpers with the durability rules tern relies on.
 *
 * "Durable" here means: data written, the file fsync'ed, and (for a new name) the directory
 * that holds the name fsync'ed. Every function reports failure with -1 and errno; none
 * of them logs (the caller knows what the failure means).
 */
#ifndef TERN_FSUTIL_H
#define TERN_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* write(2) until done (EINTR-safe); -1 on the first error. */
int fs_write_all(int fd, const void *p, size_t n);
/* pread(2) exactly n bytes or fail (a short file is EIO). */
int fs_pread_all(int fd, void *p, size_t n, off_t off);
int fs_fsync_dir_at(int dirfd, const char *path);
/* mkdir -p relative to dirfd (AT_FDCWD for the cwd); existing directories are fine. Each
 * directory created is made durable in its parent. */
int fs_mkdirs_at(int dirfd, const char *path, mode_t mode);
/* Read a whole file of at most max bytes (EFBIG beyond) into a NUL-terminated buffer. */
int fs_read_file_at(int dirfd, const char *path, size_t max, char **out, size_t *len);
/* Write tmp, fsync, rename over path, fsync the directory. */
int fs_write_file_atomic_at(int dirfd, const char *path, const void *p, size_t n, mode_t mode);
/* Free bytes available to unprivileged users on the file system holding fd. */
int fs_free_bytes(int fd, unsigned long long *out);

#endif
