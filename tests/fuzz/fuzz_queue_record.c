/*
 * fuzz_queue_record: libFuzzer target for src/queue/record.c (the queue's on-disk records,
 * which recovery and the maildrop read back from files anyone may have damaged, and local
 * users may have written).
 *
 * Input: read as a sequence of records (header, payload) the way a segment scan does; each
 * record whose header and checksum hold is decoded by its type. Since a fuzzer rarely
 * forges a CRC, the whole input is also given to each text decoder directly.
 * Properties checked for every input:
 *   - a header that decodes re-encodes to the same 20 bytes;
 *   - a message or status text that decodes re-encodes (from the decoded values) to a text
 *     that decodes again, and encoding that gives the same bytes (a fixed point);
 *   - a decoded message's body length and text length add up to the payload length.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "queue/record.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static void check_message(const uint8_t *p, size_t n)
{
    struct rec_msg m;
    char err[160];
    if (rec_msg_decode(p, n, n, &m, err, sizeof err) != REC_OK)
        return;
    CHECK(m.text_len + m.body_len == n);
    struct buf a = BUF_INIT(REC_TEXT_MAX), b = BUF_INIT(REC_TEXT_MAX);
    CHECK(rec_msg_encode(&a, m.id, m.arrival_ms, &m.env, 0));
    struct rec_msg m2;
    CHECK(rec_msg_decode(a.data, a.len, a.len, &m2, err, sizeof err) == REC_OK);
    CHECK(strcmp(m.id, m2.id) == 0 && m.arrival_ms == m2.arrival_ms);
    CHECK(m.env.nrcpts == m2.env.nrcpts);
    CHECK(strcmp(m.env.sender, m2.env.sender) == 0);
    CHECK(rec_msg_encode(&b, m2.id, m2.arrival_ms, &m2.env, 0));
    CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    rec_msg_free(&m2);
    rec_msg_free(&m);
    buf_release(&a);
    buf_release(&b);
}

static void check_status(const uint8_t *p, size_t n)
{
    struct rec_status s;
    char err[160];
    if (rec_status_decode(p, n, &s, err, sizeof err) != REC_OK)
        return;
    struct buf a = BUF_INIT(REC_TEXT_MAX), b = BUF_INIT(REC_TEXT_MAX);
    CHECK(rec_status_encode(&a, &s));
    struct rec_status s2;
    CHECK(rec_status_decode(a.data, a.len, &s2, err, sizeof err) == REC_OK);
    CHECK(s.n == s2.n && s.held == s2.held && strcmp(s.id, s2.id) == 0);
    for (size_t i = 0; i < s.n; i++) {
        CHECK(s.rcpts[i].state == s2.rcpts[i].state);
        CHECK(s.rcpts[i].parent == s2.rcpts[i].parent);
        CHECK(strcmp(s.rcpts[i].addr, s2.rcpts[i].addr) == 0);
    }
    CHECK(rec_status_encode(&b, &s2));
    CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    rec_status_free(&s2);
    rec_status_free(&s);
    buf_release(&a);
    buf_release(&b);
}

static void check_segment(const uint8_t *p, size_t n)
{
    uint32_t seq;
    time_t created;
    (void)rec_segment_decode(p, n, &seq, &created);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* as a segment: records one after another */
    size_t off = 0;
    while (size - off >= REC_HDR_LEN) {
        struct rec_hdr h;
        if (rec_hdr_decode(data + off, size - off, &h) != REC_OK)
            break;
        uint8_t again[REC_HDR_LEN];
        rec_hdr_encode(again, (enum rec_type)h.type, h.len, h.crc);
        CHECK(memcmp(again, data + off, REC_HDR_LEN) == 0);
        const uint8_t *payload = data + off + REC_HDR_LEN;
        size_t avail = size - off - REC_HDR_LEN;
        if (rec_payload_check(&h, payload, avail) != REC_OK)
            break;
        if (h.type == REC_MESSAGE)
            check_message(payload, h.len);
        else if (h.type == REC_STATUS)
            check_status(payload, h.len);
        else
            check_segment(payload, h.len);
        off += REC_HDR_LEN + h.len;
    }
    /* and as bare payload text */
    check_message(data, size);
    check_status(data, size);
    check_segment(data, size);
    return 0;
}
