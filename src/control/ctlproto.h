/*
 * ctlproto: the line protocol between ternctl and ternd's control socket, shared by both
 * sides. Pure functions (but ctl_sockaddr).
 *
 *   request  = command [SP argument] LF      one per connection, at most CTL_REQUEST_MAX
 *                                            bytes with the LF, printable ASCII only
 *   response = *record status
 *   record   = type *(SP key "=" value) LF   type, key: [a-z0-9_]+
 *   value    = bare / quoted
 *   bare     = 1*(%x21-7E except DQUOTE "\" "=")    numbers, yes/no
 *   quoted   = DQUOTE *(%x20-7E except DQUOTE "\" / "\" DQUOTE / "\\" / "\x" 2HEXDIG) DQUOTE
 *   status   = "ok" [SP text] LF / "error:" SP text LF
 *
 * Invariants: every byte the daemon sends is printable ASCII or LF, whatever the message or
 * the client put into the queue (text is always quoted and escaped), so a response can be
 * shown on a terminal or split at LF safely. Text values are always quoted and numbers never
 * are, so a reader (ternctl --json) can type values by syntax alone. Text longer than
 * CTL_VALUE_MAX is cut (and ends in "..."), which keeps every line under CTL_LINE_MAX.
 */
#ifndef TERN_CTLPROTO_H
#define TERN_CTLPROTO_H

#include <stdbool.h>
#include <stddef.h>

#include <sys/socket.h>
#include <sys/un.h>

#include "lib/buf.h"

#define CTL_REQUEST_MAX 256       /* request line, LF included */
#define CTL_CMD_MAX 16            /* command word */
#define CTL_ARG_MAX 64            /* argument */
#define CTL_VALUE_MAX 4096        /* text value before escaping; longer text is cut */
#define CTL_LINE_MAX (64 * 1024)  /* any response line, LF included */
#define CTL_TYPE_MAX 16           /* record type */

/* ---- the socket ---- */

/* Fill a unix socket address for path. A path longer than sun_path is reached through an
 * open descriptor of its folder ("/proc/self/fd/N/name"), so deep test folders work too:
 * *dirfd is then that descriptor, for the caller to close after bind/connect/chmod (-1
 * otherwise). -1 with errno (ENAMETOOLONG, or open's error). The one function here that
 * touches the file system. */
int ctl_sockaddr(const char *path, struct sockaddr_un *sa, socklen_t *len, int *dirfd);

/* ---- requests ---- */

/* "cmd arg\n" into dst; returns the length, or 0 if it does not fit or is not valid. */
size_t ctl_request_format(char *dst, size_t cap, const char *cmd, const char *arg);
/* Parse one request line (without its LF; a trailing CR is allowed). On success returns NULL
 * and fills cmd (lowercase letters) and arg ("" when absent); otherwise a short static
 * reason for an "error:" reply. */
const char *ctl_request_parse(const char *line, size_t n, char cmd[CTL_CMD_MAX + 1],
                              char arg[CTL_ARG_MAX + 1]);

/* ---- writing records (daemon side) ---- */

/* Quoted and escaped form of val[0..n) into dst (NUL-terminated if cap > 0). Returns the
 * length the whole escape needs, like snprintf. */
size_t ctl_escape(char *dst, size_t cap, const char *val, size_t n);
/* Start a record line in b (emptied first; b->max should be CTL_LINE_MAX). */
void ctl_rec_begin(struct buf *b, const char *type);
/* Add a text field; NULL values are left out. Text past CTL_VALUE_MAX is cut. A field that
 * no longer fits in the line is left out (never a partial field). */
void ctl_rec_str(struct buf *b, const char *key, const char *val);
void ctl_rec_strn(struct buf *b, const char *key, const char *val, size_t n);
void ctl_rec_uint(struct buf *b, const char *key, unsigned long long v);
void ctl_rec_bool(struct buf *b, const char *key, bool v);
/* Finish the line (adds LF; always fits, as fields leave room for it). */
void ctl_rec_end(struct buf *b);

/* ---- reading responses (client side) ---- */

enum ctl_line { CTL_LINE_RECORD, CTL_LINE_OK, CTL_LINE_ERROR, CTL_LINE_MALFORMED };

struct ctl_field {
    const char *key;
    const char *val; /* decoded, NUL-terminated (may hold NUL bytes: use len) */
    size_t len;
    bool text;       /* it was quoted */
};

struct ctl_record {
    char type[CTL_TYPE_MAX + 1];
    struct ctl_field *f;
    size_t n, cap;
};

/* Classify and parse one response line (without its LF), decoding values in place: line
 * must be writable and NUL-terminated at n; fields point into it. For OK and ERROR, *text
 * is the status text ("" if none). */
enum ctl_line ctl_parse_line(char *line, size_t n, struct ctl_record *r, const char **text);
/* A field's value, or NULL. */
const struct ctl_field *ctl_record_get(const struct ctl_record *r, const char *key);
void ctl_record_free(struct ctl_record *r);

#endif
