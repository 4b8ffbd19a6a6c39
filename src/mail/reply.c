/* reply: see reply.h. */
#include "mail/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void reply_set(struct reply *r, int code, const char *enh, const char *fmt, ...)
{
    r->code = code;
    r->enh = enh;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof r->text, fmt, ap);
    va_end(ap);
}

size_t reply_format(const struct reply *r, char *dst, size_t cap)
{
    if (cap < 8)
        return 0;
    int n = r->enh ? snprintf(dst, cap, "%03d %s ", r->code, r->enh)
                   : snprintf(dst, cap, "%03d ", r->code);
    size_t o = (size_t)n < cap ? (size_t)n : cap - 1;
    for (const char *t = r->text; *t && o + 3 < cap; t++) {
        unsigned char c = (unsigned char)*t;
        dst[o++] = (c < 0x20 || c > 0x7e) ? '?' : (char)c;
    }
    dst[o++] = '\r';
    dst[o++] = '\n';
    dst[o] = '\0';
    return o;
}
