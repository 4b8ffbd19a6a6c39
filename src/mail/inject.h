/*
 * inject: turns what a local program hands to tern-sendmail into a message ready for the
 * queue (RFC 5322 §2-3), the way sendmail(1) does. Pure: no I/O; the caller feeds bytes
 * as it reads them and supplies the date, the Message-ID and the addresses to use.
 *
 *   - Line endings become CRLF (LF or CRLF in; a final line without one gets one).
 *   - Without -i, a line holding a single "." ends the input (inject_feed says so, and the
 *     caller stops reading, which matters on a terminal).
 *   - A leading mbox "From " line is dropped. The header section ends at the first empty
 *     line, or at the first line that is neither a field nor a continuation (the body then
 *     starts there and an empty line is put in between).
 *   - -t: recipients come from To:, Cc: and Bcc: (or only from Resent-To:, Resent-Cc: and
 *     Resent-Bcc: when any of those is present), parsed as RFC 5322 address lists: display
 *     names, comments, quoted strings, groups ("team: a@x, b@y;"), folded lines.
 *   - Bcc: and Resent-Bcc: fields are always removed.
 *   - From:, Date: and Message-ID: are added at the end of the header section when missing.
 *   - Bare names ("root") are qualified with the given domain; every address must pass
 *     addr_parse_mailbox().
 *
 * Bounds: INJECT_HEADER_LINE_MAX per header line (RFC 5322 §2.1.1), max_size for the whole
 * prepared message (checked while reading, so an endless input stops early), max_rcpts.
 */
#ifndef TERN_INJECT_H
#define TERN_INJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define INJECT_HEADER_LINE_MAX 998 /* octets, without the CRLF */
#define INJECT_DATE_MAX 64

struct inject_params {
    bool extract_rcpts;     /* -t */
    bool dot_ends;          /* no -i: a line "." alone ends the input */
    const char *domain;     /* qualifies bare names; the Message-ID's right-hand side */
    const char *from_addr;  /* for a From: added when missing (qualified, valid) */
    const char *full_name;  /* its display name (-F or the user's name), or NULL */
    const char *date;       /* Date: value to add when missing (inject_format_date) */
    const char *message_id; /* Message-ID: value ("<...>") to add when missing */
    size_t max_size;        /* of the prepared message, in bytes */
    size_t max_rcpts;       /* recipients found in headers */
};

enum inject_status {
    INJECT_MORE,        /* feed more input */
    INJECT_END,         /* a "." line ended the input: stop reading, call inject_finish */
    INJECT_OK,          /* inject_finish: the message is ready */
    INJECT_TOO_BIG,     /* larger than max_size */
    INJECT_BAD_HEADER,  /* a header line longer than INJECT_HEADER_LINE_MAX */
    INJECT_BAD_ADDRESS, /* -t: an address in a header that cannot be parsed */
    INJECT_TOO_MANY_RCPTS,
};

struct inject;

struct inject *inject_new(const struct inject_params *p);
/* Feed input. After INJECT_END or an error, further calls return the same status. */
enum inject_status inject_feed(struct inject *in, const char *p, size_t n);
/* The input is complete: process the header section. */
enum inject_status inject_finish(struct inject *in);
/* What went wrong, for the last error status. */
const char *inject_error(const struct inject *in);
/* After INJECT_OK: the message is head (header section and the empty line) then body,
 * both CRLF. */
const char *inject_head(const struct inject *in, size_t *len);
const char *inject_body(const struct inject *in, size_t *len);
/* -t: the recipients found in headers (qualified, without duplicates), in order. */
size_t inject_nrcpts(const struct inject *in);
const char *inject_rcpt(const struct inject *in, size_t i);
void inject_free(struct inject *in);

/* Parse an RFC 5322 address list (a header field value, possibly folded; or a command-line
 * argument such as "a@x, Bob <b@y>"), calling add() for each address, qualified with domain
 * when it has none. 0, or -1 with a message naming the bad address in err. */
int inject_parse_addresses(const char *s, size_t n, const char *domain,
                           void (*add)(void *arg, const char *addr), void *arg, char *err,
                           size_t errlen);
/* One address ("a@x", "<a@x>", "root"), qualified and checked into out (ADDR_TEXT_MAX + 1
 * bytes). NULL, or a static reason. */
const char *inject_address(const char *s, const char *domain, char *out, size_t cap);
/* RFC 5322 date-time of t in the local time zone: "Tue, 01 Jan 2030 10:00:00 +0100". */
void inject_format_date(time_t t, char *out, size_t cap);

#endif
