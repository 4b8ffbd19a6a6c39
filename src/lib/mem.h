/*
 * mem: allocation that never returns NULL, and fatal() for broken invariants.
 *
 * Allocation failure is not an expected error in tern: it aborts once, here, with a log line,
 * so callers never check for NULL. fatal() is for invariants the code itself broke (never for
 * bad input): it logs file and line and aborts, leaving a core for the post-mortem.
 */
#ifndef TERN_MEM_H
#define TERN_MEM_H

#include <stddef.h>

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
/* Grow an array to hold at least need elements (doubling); *cap is updated. */
void *xgrow(void *p, size_t *cap, size_t need, size_t elem_size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) PRINTF_LIKE(1, 2);

_Noreturn void fatal_at(const char *file, int line, const char *fmt, ...) PRINTF_LIKE(3, 4);
#define fatal(...) fatal_at(__FILE__, __LINE__, __VA_ARGS__)

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
