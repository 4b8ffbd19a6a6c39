/*
 * buf: a growable byte buffer with a hard maximum.
 *
 * Contract: a buffer has exactly one owner. It never holds more than `max` bytes: an append
 * that would pass the maximum adds nothing and returns false, so every caller must decide
 * what an over-long input means. data is NUL-terminated after every successful append
 * (the terminator is not counted in len and may sit one byte past max).
 */
#ifndef TERN_BUF_H
#define TERN_BUF_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/mem.h"

struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
};

#define BUF_INIT(maxlen) {NULL, 0, 0, (maxlen)}

void buf_init(struct buf *b, size_t max);
bool buf_add(struct buf *b, const void *p, size_t n);
bool buf_adds(struct buf *b, const char *s);
bool buf_addc(struct buf *b, char c);
bool buf_printf(struct buf *b, const char *fmt, ...) PRINTF_LIKE(2, 3);
/* Drop the first n bytes. */
void buf_consume(struct buf *b, size_t n);
/* Empty the buffer but keep its memory; buf_release frees the memory too. */
void buf_reset(struct buf *b);
void buf_release(struct buf *b);
/* Hand the bytes to the caller (who frees them); the buffer becomes empty. */
char *buf_steal(struct buf *b, size_t *len);
static inline size_t buf_room(const struct buf *b) { return b->max - b->len; }

#endif
