/*
 * maildrop: the drop folder spool_dir/maildrop/ for local submission (tern-sendmail). It
 * works whether or not ternd runs: a drop file is complete and durable before the writer
 * exits, and ternd imports it when it starts or when the folder changes (queue_pickup()).
 *
 * A drop file holds exactly one message record (record.h: header, envelope text, content)
 * and is named by its queue id. It is written as ".tmp.ID", fsync'ed, renamed to "ID" and
 * the folder fsync'ed. Names starting with '.' are never imported. The folder is mode 3777
 * and belongs to ternd's group: anyone may create files and open the folder (to fsync it:
 * that needs read permission), nobody may remove another's files (sticky), and every file
 * created in it belongs to ternd's group (setgid) with mode 0640, so ternd can read it and
 * other local users cannot.
 *
 * Drop files may come from any local user: maildrop_open() trusts nothing in them. It
 * refuses anything but a regular file with one link, bounds the size, checks the header
 * and parses the envelope; the content checksum is verified by the reader as it streams
 * the content (maildrop_open gives the CRC of the text part to continue from). The
 * envelope's origin fields are the writer's claims: the importer replaces them.
 *
 * Blocking; no loop, no threads: maildrop_write() is for standalone programs.
 */
#ifndef TERN_MAILDROP_H
#define TERN_MAILDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mail/envelope.h"
#include "queue/queue.h"

#define MAILDROP_DIR "maildrop"
#define MAILDROP_MODE 03777

/* Write one message into spool_dir/maildrop/. 0 with the new id in id (QID_MAX bytes), or
 * -1 with a reason in err. */
int maildrop_write(const char *spool_dir, const struct envelope *env, const void *msg,
                   size_t len, char *id, char *err, size_t errlen);

/* Is name a complete drop file's name (a queue id)? */
bool maildrop_name_ok(const char *name);

struct maildrop_file {
    int fd;
    uid_t uid;            /* the file's owner: who submitted it */
    char id[QID_MAX];
    struct envelope env;
    uint64_t arrival_ms;
    uint64_t body_off;    /* the content: body_len bytes at body_off of fd */
    uint64_t body_len;
    uint32_t text_crc;    /* CRC-32C of the text part ... */
    uint32_t payload_crc; /* ... and what the whole payload's must come to */
};
/* Open dirfd/name and check it as described above. 0, or -1 with a reason in err (errno
 * ENOENT if the file is gone). */
int maildrop_open(int dirfd, const char *name, uint64_t max_size, struct maildrop_file *out,
                  char *err, size_t errlen);
void maildrop_close(struct maildrop_file *f);

#endif
