/*
 * draft: a message being received, before it is committed (queue_draft_* of queue.h are
 * implemented in draft.c; this header is for the rest of the queue module).
 *
 * Content accumulates in memory in chunks that double in size (no realloc copying); past
 * DRAFT_SPILL_AT bytes it moves to an unlinked temporary file in spool_dir/queue
 * (O_TMPFILE, or tmp.ID created and unlinked at once), so many large messages in flight
 * do not sit in RAM. A crash loses the temporary file with the draft: nothing to clean.
 * The CRC-32C of the content is kept up to date as bytes arrive.
 */
#ifndef TERN_DRAFT_H
#define TERN_DRAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "queue/queue.h"

#define DRAFT_SPILL_AT (1u << 20)
#define DRAFT_MAX ((uint64_t)1 << 29) /* 512 MiB: a hard stop far above any size limit */

/* The folder (spool_dir/queue) where drafts spill; -1 keeps everything in memory. */
void qdraft_set_dir(int dirfd);
/* Keep an id chosen elsewhere (a maildrop file's). */
void qdraft_set_id(struct qdraft *d, const char *id);

/* Write out buffered spill data; false if that fails (or an earlier write did). */
bool qdraft_finish(struct qdraft *d);
uint32_t qdraft_crc(const struct qdraft *d);
/* The content: spill file (fd >= 0, content at offset 0) or memory chunks. */
int qdraft_spill_fd(const struct qdraft *d);
const struct iovec *qdraft_chunks(const struct qdraft *d, size_t *n);
/* The content as one heap buffer the caller owns (the draft keeps an iovec pointing at
 * it until freed, so it stays valid while the commit writes it); NULL if spilled. */
char *qdraft_join(struct qdraft *d);
void qdraft_free(struct qdraft *d);

#endif
