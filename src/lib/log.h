/*
 * log: one line per event, logfmt (key=value), to stderr or syslog.
 *
 * A line is built on the caller's stack with log_begin / log_str / log_int / log_end and
 * written with one write(2) or syslog(3) call, so lines from several threads never mix.
 * Every value given to log_str is escaped: client text cannot forge keys or lines. Keys are
 * trusted literals. Convention: after "event", the session id (sid) and queue id (qid) come
 * first. AUTH data is never logged.
 */
#ifndef TERN_LOG_H
#define TERN_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/mem.h"

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
enum log_target { LOG_TO_STDERR, LOG_TO_SYSLOG };

#define LOG_LINE_MAX 2048

struct logline {
    char buf[LOG_LINE_MAX];
    size_t len;
    enum log_level level;
    bool active;     /* false when the level is filtered out: the calls below do nothing */
    bool truncated;
};

/* Configure the sink; before the first call, logging goes to stderr at info level. */
void log_setup(const char *ident, enum log_target target, enum log_level min, int syslog_facility);
void log_set_level(enum log_level min);
bool log_enabled(enum log_level level);
/* Parse "error", "warn", "info", "debug"; returns false for anything else. */
bool log_level_parse(const char *s, enum log_level *out);

void log_begin(struct logline *l, enum log_level level, const char *event);
void log_str(struct logline *l, const char *key, const char *val);      /* NULL logs as "" */
void log_strn(struct logline *l, const char *key, const char *val, size_t n);
void log_int(struct logline *l, const char *key, long long v);
void log_uint(struct logline *l, const char *key, unsigned long long v);
void log_fmt(struct logline *l, const char *key, const char *fmt, ...) PRINTF_LIKE(3, 4);
void log_end(struct logline *l);

/* A whole line from a trusted format (no client text in the arguments). */
void log_printf(enum log_level level, const char *fmt, ...) PRINTF_LIKE(2, 3);

/* Hold this thread's info and debug lines for stderr (not syslog) and write them in one
 * go: at log_flush(), before a warn or error line of this thread (which is never held), when
 * 64 KiB are held, and at exit(). wake() runs when a first line is held, so the caller can
 * arrange a log_flush() soon: the loop does it at the end of the turn, saving a write(2)
 * per line. NULL stops holding (and flushes). */
void log_hold_lines(void (*wake)(void));
void log_flush(void);

/* Escape one value into dst the way log_str does (for tests and ternctl). */
size_t log_escape(char *dst, size_t cap, const char *val, size_t n);

#endif
