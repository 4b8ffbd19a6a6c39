/*
 * log: see log.h. Sink state is set once at start-up (and on reload) by the main thread;
 * emitting a line touches only the caller's struct logline.
 */
#include "lib/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static enum log_target sink = LOG_TO_STDERR;
static enum log_level min_level = LOG_LVL_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* Held lines (log_hold_lines): this thread's info and debug lines for stderr, written with
 * one write(2) when the loop turn ends, when the buffer is full, or before a warn or error
 * line. Only the thread that asked holds anything. */
#define LOG_HOLD_MAX (64 * 1024)
static __thread void (*hold_wake)(void);
static __thread char *held;
static __thread size_t held_len;

static void write_all_stderr(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = write(STDERR_FILENO, p, n);
        if (r <= 0)
            return; /* nowhere left to report a failed log write */
        p += r;
        n -= (size_t)r;
    }
}

void log_flush(void)
{
    if (held_len == 0)
        return;
    write_all_stderr(held, held_len);
    held_len = 0;
}

static void flush_at_exit(void)
{
    log_flush();
}

void log_hold_lines(void (*wake)(void))
{
    static __thread bool registered;
    log_flush();
    hold_wake = wake;
    if (wake != NULL && held == NULL) {
        held = xmalloc(LOG_HOLD_MAX);
    } else if (wake == NULL) {
        free(held);
        held = NULL;
    }
    if (wake != NULL && !registered) {
        atexit(flush_at_exit); /* exit() from this thread keeps what it held */
        registered = true;
    }
}

void log_setup(const char *ident, enum log_target target, enum log_level min, int facility)
{
    if (sink == LOG_TO_SYSLOG && target != LOG_TO_SYSLOG)
        closelog();
    sink = target;
    min_level = min;
    if (target == LOG_TO_SYSLOG)
        openlog(ident, LOG_PID | LOG_NDELAY, facility);
}

void log_set_level(enum log_level min)
{
    min_level = min;
}

bool log_enabled(enum log_level level)
{
    return level <= min_level;
}

bool log_level_parse(const char *s, enum log_level *out)
{
    for (size_t i = 0; i < ARRAY_LEN(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return true;
        }
    }
    return false;
}

static void put(struct logline *l, const char *s, size_t n)
{
    size_t room = sizeof l->buf - 1 - l->len; /* keep one byte for the newline */
    if (n > room) {
        n = room;
        l->truncated = true;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static bool needs_quotes(const char *v, size_t n)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
            return true;
    }
    return false;
}

size_t log_escape(char *dst, size_t cap, const char *val, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    bool quote = needs_quotes(val, n);
#define EMIT(ch)                                                                                \
    do {                                                                                        \
        if (o + 1 < cap)                                                                        \
            dst[o] = (ch);                                                                      \
        o++;                                                                                    \
    } while (0)
    if (quote)
        EMIT('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)val[i];
        if (c == '"' || c == '\\') {
            EMIT('\\');
            EMIT((char)c);
        } else if (c < ' ' || c >= 0x7f) {
            EMIT('\\');
            EMIT('x');
            EMIT(hex[c >> 4]);
            EMIT(hex[c & 15]);
        } else {
            EMIT((char)c);
        }
    }
    if (quote)
        EMIT('"');
#undef EMIT
    if (cap > 0)
        dst[o < cap ? o : cap - 1] = '\0';
    return o;
}

static void start_line(struct logline *l, enum log_level level)
{
    l->len = 0;
    l->level = level;
    l->truncated = false;
    l->active = log_enabled(level);
    if (!l->active)
        return;
    if (sink == LOG_TO_STDERR) {
        /* "ts=2026-11-29T12:00:00." is formatted once a second per thread; only the
         * milliseconds are written per line (this runs for every line, on the hot path) */
        static __thread time_t cached_sec = -1;
        static __thread char cached[40];
        static __thread size_t cached_len;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        if (ts.tv_sec != cached_sec) {
            struct tm tm;
            gmtime_r(&ts.tv_sec, &tm);
            int n = snprintf(cached, sizeof cached, "ts=%04d-%02d-%02dT%02d:%02d:%02d.",
                             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                             tm.tm_min, tm.tm_sec);
            cached_len = n > 0 && (size_t)n < sizeof cached ? (size_t)n : 0;
            cached_sec = ts.tv_sec;
        }
        put(l, cached, cached_len);
        long ms = ts.tv_nsec / 1000000;
        char tail[6] = {(char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
                        'Z', ' ', 0};
        put(l, tail, 5);
    }
    put(l, "level=", 6);
    put(l, level_names[level], strlen(level_names[level]));
}

void log_begin(struct logline *l, enum log_level level, const char *event)
{
    start_line(l, level);
    if (!l->active)
        return;
    put(l, " event=", 7);
    put(l, event, strlen(event));
}

void log_strn(struct logline *l, const char *key, const char *val, size_t n)
{
    if (!l->active)
        return;
    char esc[LOG_LINE_MAX];
    put(l, " ", 1);
    put(l, key, strlen(key));
    put(l, "=", 1);
    size_t m = log_escape(esc, sizeof esc, val ? val : "", val ? n : 0);
    if (m >= sizeof esc) {
        m = sizeof esc - 1;
        l->truncated = true;
    }
    put(l, esc, m);
}

void log_str(struct logline *l, const char *key, const char *val)
{
    log_strn(l, key, val, val ? strlen(val) : 0);
}

void log_int(struct logline *l, const char *key, long long v)
{
    log_fmt(l, key, "%lld", v);
}

void log_uint(struct logline *l, const char *key, unsigned long long v)
{
    log_fmt(l, key, "%llu", v);
}

void log_fmt(struct logline *l, const char *key, const char *fmt, ...)
{
    if (!l->active)
        return;
    char val[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(val, sizeof val, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof val)
        n = sizeof val - 1;
    log_strn(l, key, val, (size_t)n);
}

static const int syslog_priority[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

void log_end(struct logline *l)
{
    if (!l->active)
        return;
    if (l->truncated) {
        static const char mark[] = " truncated=1";
        if (l->len > sizeof l->buf - sizeof mark)
            l->len = sizeof l->buf - sizeof mark;
        memcpy(l->buf + l->len, mark, sizeof mark - 1);
        l->len += sizeof mark - 1;
    }
    if (sink == LOG_TO_SYSLOG) {
        l->buf[l->len] = '\0';
        syslog(syslog_priority[l->level], "%s", l->buf);
    } else {
        l->buf[l->len] = '\n';
        size_t n = l->len + 1;
        if (hold_wake != NULL && l->level >= LOG_LVL_INFO) {
            if (held_len + n > LOG_HOLD_MAX)
                log_flush();
            bool first = held_len == 0;
            memcpy(held + held_len, l->buf, n);
            held_len += n;
            if (first)
                hold_wake();
        } else {
            log_flush(); /* what this thread held comes first */
            write_all_stderr(l->buf, n);
        }
    }
    l->active = false;
}

void log_printf(enum log_level level, const char *fmt, ...)
{
    struct logline l;
    start_line(&l, level);
    if (!l.active)
        return;
    char body[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    put(&l, " ", 1);
    if (n > 0)
        put(&l, body, (size_t)n < sizeof body ? (size_t)n : sizeof body - 1);
    log_end(&l);
}
