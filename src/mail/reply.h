/*
 * reply: an SMTP reply as a value {code, enhanced code, text} (RFC 5321 §4.2, RFC 3463).
 * Handlers return replies; one writer formats them. Text is never client-controlled
 * beyond what the writer escapes.
 */
#ifndef TERN_REPLY_H
#define TERN_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/mem.h"

#define REPLY_TEXT_MAX 400

struct reply {
    int code;             /* 0 = no reply (nothing to send) */
    const char *enh;      /* "2.1.0"; NULL for replies that carry none (220, 221 greeting) */
    char text[REPLY_TEXT_MAX];
};

void reply_set(struct reply *r, int code, const char *enh, const char *fmt, ...) PRINTF_LIKE(4, 5);
static inline bool reply_is_error(const struct reply *r) { return r->code >= 400; }
/* "250 2.1.0 Ok\r\n" into dst; text bytes below 0x20 or above 0x7e become '?'. Returns the
 * length (truncating the text if cap is too small). */
size_t reply_format(const struct reply *r, char *dst, size_t cap);

#endif
