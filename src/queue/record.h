/*
 * record: the queue's on-disk record format. Pure functions (no I/O), fuzzed by
 * tests/fuzz/fuzz_queue_record.c; used by the spool (segments), recovery, the maildrop
 * and `ternctl queue show`.
 *
 * A record is a 20-byte header followed by the payload:
 *
 *   offset size  field
 *   0      4     magic "TQRC"
 *   4      1     header format version (1)
 *   5      1     type: 1 segment, 2 message, 3 status
 *   6      2     flags (0 in version 1; anything else is refused)
 *   8      4     payload length, little-endian (at most REC_PAYLOAD_MAX)
 *   12     4     CRC-32C of the payload, little-endian
 *   16     4     CRC-32C of bytes 0..15, little-endian
 *
 * Payloads are text lines "key value" (message and status records end the text with a
 * body or nothing). Every string value is a token: "-" for none, else ":" followed by the
 * value with each byte outside 0x21..0x7e and '%' written as %XX, so a token never holds a
 * space, a newline or a non-ASCII byte. Recipient lines hold "key=token" words. Unknown
 * keys are skipped (a newer writer may add some); the first line names the payload format
 * and its version. All three are shown here:
 *
 *   segment:  tern-segment 1 / seq N / created UNIXTIME
 *   message:  tern-message 1 / id QID / arrival UNIXTIME / arrival-ms MS / sender TOK /
 *             [body-type 7bit|8bitmime|binarymime] [smtputf8 1] [ret full|hdrs]
 *             [envid TOK] [size N] [auth TOK] [client-ip TOK] [client-name TOK] [helo TOK]
 *             [auth-user TOK] [protocol TOK] / rcpt notify=N orcpt=TOK addr=TOK (one per
 *             recipient) / body LEN, then exactly LEN bytes of message content
 *   status:   tern-status 1 / id QID / held 0|1 / rcpt i=N state=NAME att=N first=UNIXTIME
 *             next=MS parent=N|- notify=N flags=[w][s][r]|- status=TOK mta=TOK reply=TOK
 *             orcpt=TOK addr=TOK (one per recipient, i = 0, 1, ...)
 *
 * A status record is a full snapshot of one message's recipients (flags: w delay warning
 * sent, s failure/success DSN sent, r relayed); the latest one in log order wins.
 */
#ifndef TERN_RECORD_H
#define TERN_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "lib/buf.h"
#include "mail/envelope.h"
#include "queue/queue.h"

#define REC_HDR_LEN 20
#define REC_VERSION 1
#define REC_PAYLOAD_MAX (1u << 30) /* 1 GiB: far above any message size limit */
#define REC_TEXT_MAX (64u << 20)   /* envelope or status text */
#define REC_RCPTS_MAX 100000u

enum rec_type { REC_SEGMENT = 1, REC_MESSAGE = 2, REC_STATUS = 3 };

enum rec_err {
    REC_OK,
    REC_SHORT,       /* fewer bytes than the header or payload needs */
    REC_ZERO,        /* the header bytes are all zero (a file extended but never written) */
    REC_BAD_MAGIC,
    REC_BAD_VERSION, /* header or payload format version we do not know */
    REC_BAD_HCRC,
    REC_BAD_TYPE,
    REC_BAD_FLAGS,
    REC_TOO_LONG,
    REC_BAD_CRC,     /* payload checksum */
    REC_BAD_TEXT,    /* checksum fine but the payload does not parse */
};

struct rec_hdr {
    unsigned version;
    unsigned type;
    uint32_t len;
    uint32_t crc;
};

const char *rec_err_name(enum rec_err e);
const char *rec_type_name(unsigned type);

void rec_hdr_encode(uint8_t out[REC_HDR_LEN], enum rec_type type, uint32_t len,
                    uint32_t payload_crc);
enum rec_err rec_hdr_decode(const void *p, size_t n, struct rec_hdr *h);
/* n: the payload bytes available (REC_SHORT if fewer than h->len). */
enum rec_err rec_payload_check(const struct rec_hdr *h, const void *payload, size_t n);
/* CRC-32C of A||B from crc(A), crc(B) and the length of B. */
uint32_t rec_crc_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);

/* ---- segment ---- */
bool rec_segment_encode(struct buf *out, uint32_t seq, time_t created);
enum rec_err rec_segment_decode(const void *p, size_t n, uint32_t *seq, time_t *created);

/* ---- message ---- */
struct rec_msg {
    char id[QID_MAX];
    uint64_t arrival_ms;
    struct envelope env;
    size_t text_len;   /* the content starts at this offset of the payload */
    uint64_t body_len;
};
/* The text part, ending with the "body LEN" line. false if it passes REC_TEXT_MAX. */
bool rec_msg_encode(struct buf *out, const char *id, uint64_t arrival_ms,
                    const struct envelope *e, uint64_t body_len);
/* Parse the text part from the first avail bytes of a payload of payload_len bytes (avail
 * must cover the text; the content need not be there). On success out->env is owned by
 * the caller (rec_msg_free). err gets a reason on failure. */
enum rec_err rec_msg_decode(const void *p, size_t avail, uint64_t payload_len,
                            struct rec_msg *out, char *err, size_t errlen);
void rec_msg_free(struct rec_msg *m);
/* Do the first n bytes of a message payload hold its whole text part (the "body" line)?
 * Lets a reader fetch a small prefix first. */
bool rec_msg_text_in(const void *p, size_t n);

/* ---- status ---- */
struct rec_rcpt {
    char *addr;
    char *orcpt;
    unsigned notify;
    enum qrcpt_state state;
    uint32_t parent;
    uint32_t attempts;
    int64_t first_attempt;
    uint64_t next_ms; /* wall-clock milliseconds of the next attempt (deferred) */
    char *status, *mta, *reply;
    bool delay_warned, dsn_sent, relayed;
};
struct rec_status {
    char id[QID_MAX];
    bool held;
    struct rec_rcpt *rcpts;
    size_t n;
};
const char *rec_state_name(enum qrcpt_state s);
bool rec_status_encode(struct buf *out, const struct rec_status *s);
enum rec_err rec_status_decode(const void *p, size_t n, struct rec_status *out, char *err,
                               size_t errlen);
void rec_status_free(struct rec_status *s);

#endif
