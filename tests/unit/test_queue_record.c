/*
 * test_queue_record: the queue record format (queue/record): header round trip and every
 * kind of damaged header, payload checksum and truncation, CRC combination, and the
 * segment, message and status payloads (round trips with hostile values, and refusals).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/crc32c.h"
#include "lib/mem.h"
#include "queue/qid.h"
#include "queue/record.h"

/* ---- header ---- */

static void make_record(enum rec_type t, const char *payload, size_t n, uint8_t *out)
{
    rec_hdr_encode(out, t, (uint32_t)n, crc32c(0, payload, n));
    memcpy(out + REC_HDR_LEN, payload, n);
}

static void reseal(uint8_t *h)
{
    /* recompute the header checksum after editing a field */
    uint32_t c = crc32c(0, h, 16);
    h[16] = (uint8_t)c;
    h[17] = (uint8_t)(c >> 8);
    h[18] = (uint8_t)(c >> 16);
    h[19] = (uint8_t)(c >> 24);
}

static void test_header_round_trip(void **state)
{
    uint8_t b[REC_HDR_LEN + 5];
    make_record(REC_STATUS, "hello", 5, b);
    struct rec_hdr h;
    assert_int_equal(rec_hdr_decode(b, sizeof b, &h), REC_OK);
    assert_int_equal(h.version, REC_VERSION);
    assert_int_equal(h.type, REC_STATUS);
    assert_int_equal(h.len, 5);
    assert_int_equal(h.crc, crc32c(0, "hello", 5));
    assert_int_equal(rec_payload_check(&h, b + REC_HDR_LEN, 5), REC_OK);
    assert_string_equal(rec_type_name(REC_MESSAGE), "message");
    assert_string_equal(rec_err_name(REC_BAD_CRC), "bad_crc");
}

static void test_header_damage(void **state)
{
    uint8_t b[REC_HDR_LEN];
    struct rec_hdr h;
    rec_hdr_encode(b, REC_MESSAGE, 100, 0x12345678);
    /* every short read */
    for (size_t n = 0; n < REC_HDR_LEN; n++)
        assert_int_equal(rec_hdr_decode(b, n, &h), REC_SHORT);
    /* every single bit flipped is caught */
    for (size_t i = 0; i < REC_HDR_LEN; i++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t c[REC_HDR_LEN];
            memcpy(c, b, sizeof c);
            c[i] ^= (uint8_t)(1u << bit);
            assert_int_not_equal(rec_hdr_decode(c, sizeof c, &h), REC_OK);
        }
    }
    /* zero-filled (a file extended but never written) */
    uint8_t z[REC_HDR_LEN] = {0};
    assert_int_equal(rec_hdr_decode(z, sizeof z, &h), REC_ZERO);
    uint8_t c[REC_HDR_LEN];
    memcpy(c, b, sizeof c);
    c[0] = 'X';
    assert_int_equal(rec_hdr_decode(c, sizeof c, &h), REC_BAD_MAGIC);
    memcpy(c, b, sizeof c);
    c[17] ^= 1;
    assert_int_equal(rec_hdr_decode(c, sizeof c, &h), REC_BAD_HCRC);
    /* fields that are wrong but sealed with a good header checksum */
    memcpy(c, b, sizeof c);
    c[4] = 2;
    reseal(c);
    assert_int_equal(rec_hdr_decode(c, sizeof c, &h), REC_BAD_VERSION);
    static const uint8_t bad_types[] = {0, 4, 255};
    for (size_t i = 0; i < sizeof bad_types; i++) {
        memcpy(c, b, sizeof c);
        c[5] = bad_types[i];
        reseal(c);
        assert_int_equal(rec_hdr_decode(c, sizeof c, &h), REC_BAD_TYPE);
    }
    memcpy(c, b, sizeof c);
    c[6] = 1;
    reseal(c);
    assert_int_equal(rec_hdr_decode(c, sizeof c, &h), REC_BAD_FLAGS);
    rec_hdr_encode(c, REC_MESSAGE, REC_PAYLOAD_MAX + 1u, 0);
    assert_int_equal(rec_hdr_decode(c, sizeof c, &h), REC_TOO_LONG);
    rec_hdr_encode(c, REC_MESSAGE, REC_PAYLOAD_MAX, 0);
    assert_int_equal(rec_hdr_decode(c, sizeof c, &h), REC_OK);
}

static void test_payload_damage(void **state)
{
    const char *p = "tern-status 1\nid 0123456789ABCD\n";
    size_t n = strlen(p);
    uint8_t b[128];
    make_record(REC_STATUS, p, n, b);
    struct rec_hdr h;
    assert_int_equal(rec_hdr_decode(b, REC_HDR_LEN, &h), REC_OK);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(rec_payload_check(&h, b + REC_HDR_LEN, k), REC_SHORT);
    for (size_t i = 0; i < n; i++) {
        uint8_t c[128];
        memcpy(c, b, sizeof c);
        c[REC_HDR_LEN + i] ^= 0x20;
        assert_int_equal(rec_payload_check(&h, c + REC_HDR_LEN, n), REC_BAD_CRC);
    }
}

static void test_crc_combine(void **state)
{
    char a[3000], b[5000];
    for (size_t i = 0; i < sizeof a; i++)
        a[i] = (char)(i * 7 + 3);
    for (size_t i = 0; i < sizeof b; i++)
        b[i] = (char)(i * 13 + 1);
    static const size_t la[] = {0, 1, 7, 100, 3000};
    static const size_t lb[] = {0, 1, 2, 3, 8, 9, 255, 4096, 5000};
    for (size_t i = 0; i < ARRAY_LEN(la); i++) {
        for (size_t j = 0; j < ARRAY_LEN(lb); j++) {
            uint32_t whole = crc32c(crc32c(0, a, la[i]), b, lb[j]);
            uint32_t ca = crc32c(0, a, la[i]), cb = crc32c(0, b, lb[j]);
            assert_int_equal(rec_crc_combine(ca, cb, lb[j]), whole);
            /* and backwards: crc(B) from crc(A) and crc(A||B) */
            assert_int_equal(rec_crc_combine(ca, whole, lb[j]), cb);
        }
    }
}

/* ---- segment ---- */

static void test_segment(void **state)
{
    struct buf b = BUF_INIT(256);
    assert_true(rec_segment_encode(&b, 42, 1700000000));
    uint32_t seq;
    time_t t;
    assert_int_equal(rec_segment_decode(b.data, b.len, &seq, &t), REC_OK);
    assert_int_equal(seq, 42);
    assert_int_equal(t, 1700000000);
    for (size_t k = 0; k < b.len; k++) {
        enum rec_err e = rec_segment_decode(b.data, k, &seq, &t);
        /* a cut inside a line, or before the seq line, never decodes */
        if (e == REC_OK)
            assert_true(b.data[k - 1] == '\n' && memmem(b.data, k, "seq 42\n", 7) != NULL);
    }
    const char *v2 = "tern-segment 2\nseq 1\n";
    assert_int_equal(rec_segment_decode(v2, strlen(v2), &seq, &t), REC_BAD_VERSION);
    buf_release(&b);
}

/* ---- message ---- */

static void fill_env(struct envelope *e)
{
    envelope_init(e);
    e->sender = xstrdup("\"odd sender\"@exa%mple.org");
    e->body = BODY_8BITMIME;
    e->smtputf8 = true;
    e->ret = DSN_RET_HDRS;
    e->envid = xstrdup("abc+2Bdef");
    e->declared_size = 12345;
    e->auth_param = xstrdup("<>");
    e->client_ip = xstrdup("192.0.2.1");
    e->client_name = xstrdup("mx.example.org");
    e->helo = xstrdup("helo with spaces\tand\ttabs\r\n");
    e->auth_user = xstrdup("j\xc3\xb6rg");
    e->protocol = xstrdup("ESMTPSA");
    e->arrival = 1700000001;
    envelope_add_rcpt(e, "bob@example.com", NULL, 0);
    envelope_add_rcpt(e, "\"a b\"@example.com", "rfc822;a+20b@example.com",
                      DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE);
    envelope_add_rcpt(e, "n\xc3\xa9@example.com", "utf-8;x", DSN_NOTIFY_NEVER);
}

static void check_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void test_message_round_trip(void **state)
{
    struct envelope e;
    fill_env(&e);
    char id[QID_MAX];
    qid_new(id);
    const char *body = "Subject: x\r\n\r\nline\r\n";
    struct buf b = BUF_INIT(REC_TEXT_MAX);
    assert_true(rec_msg_encode(&b, id, 1700000001234ull, &e, strlen(body)));
    size_t text_len = b.len;
    assert_true(buf_adds(&b, body));
    struct rec_msg m;
    char err[128];
    assert_int_equal(rec_msg_decode(b.data, b.len, b.len, &m, err, sizeof err), REC_OK);
    assert_string_equal(m.id, id);
    assert_int_equal(m.arrival_ms, 1700000001234ull);
    assert_int_equal(m.text_len, text_len);
    assert_int_equal(m.body_len, strlen(body));
    assert_memory_equal(b.data + m.text_len, body, strlen(body));
    check_str(m.env.sender, e.sender);
    assert_int_equal(m.env.body, e.body);
    assert_true(m.env.smtputf8);
    assert_int_equal(m.env.ret, e.ret);
    check_str(m.env.envid, e.envid);
    assert_int_equal(m.env.declared_size, e.declared_size);
    check_str(m.env.auth_param, e.auth_param);
    check_str(m.env.client_ip, e.client_ip);
    check_str(m.env.client_name, e.client_name);
    check_str(m.env.helo, e.helo);
    check_str(m.env.auth_user, e.auth_user);
    check_str(m.env.protocol, e.protocol);
    assert_int_equal(m.env.arrival, e.arrival);
    assert_int_equal(m.env.nrcpts, e.nrcpts);
    for (size_t i = 0; i < e.nrcpts; i++) {
        check_str(m.env.rcpts[i].addr, e.rcpts[i].addr);
        check_str(m.env.rcpts[i].orcpt, e.rcpts[i].orcpt);
        assert_int_equal(m.env.rcpts[i].notify, e.rcpts[i].notify);
    }
    rec_msg_free(&m);
    /* the text is pure printable ASCII lines */
    for (size_t i = 0; i < text_len; i++)
        assert_true(b.data[i] == '\n' || (b.data[i] >= 0x20 && b.data[i] < 0x7f));
    /* only the text needs to be there */
    assert_int_equal(rec_msg_decode(b.data, text_len, b.len, &m, err, sizeof err), REC_OK);
    rec_msg_free(&m);
    /* every shorter prefix of the text fails, and is seen not to hold the whole text */
    for (size_t k = 0; k < text_len; k++) {
        assert_int_not_equal(rec_msg_decode(b.data, k, b.len, &m, err, sizeof err), REC_OK);
        assert_false(rec_msg_text_in(b.data, k));
    }
    assert_true(rec_msg_text_in(b.data, text_len));
    assert_true(rec_msg_text_in(b.data, b.len));
    /* the body length must match the record */
    assert_int_not_equal(rec_msg_decode(b.data, b.len, b.len + 1, &m, err, sizeof err), REC_OK);
    assert_int_not_equal(rec_msg_decode(b.data, b.len - 1, b.len - 1, &m, err, sizeof err), REC_OK);
    /* the null sender and the minimum envelope */
    struct envelope e2;
    envelope_init(&e2);
    e2.sender = xstrdup("");
    envelope_add_rcpt(&e2, "x@y", NULL, 0);
    buf_reset(&b);
    assert_true(rec_msg_encode(&b, id, 5, &e2, 0));
    assert_int_equal(rec_msg_decode(b.data, b.len, b.len, &m, err, sizeof err), REC_OK);
    assert_string_equal(m.env.sender, "");
    assert_null(m.env.envid);
    assert_int_equal(m.body_len, 0);
    rec_msg_free(&m);
    envelope_clear(&e2);
    envelope_clear(&e);
    buf_release(&b);
}

static enum rec_err decode_text(const char *t)
{
    struct rec_msg m;
    char err[128];
    size_t n = strlen(t);
    enum rec_err e = rec_msg_decode(t, n, n, &m, err, sizeof err);
    if (e == REC_OK)
        rec_msg_free(&m);
    return e;
}

static void test_message_refused(void **state)
{
    /* a good one first, so the failures below are about what they change */
    assert_int_equal(decode_text("tern-message 1\nid 0123456789ABCD\nsender :a@b\n"
                                 "rcpt notify=0 orcpt=- addr=:c@d\nbody 0\n"),
                     REC_OK);
    /* unknown keys are skipped (a newer writer) */
    assert_int_equal(decode_text("tern-message 1\nid 0123456789ABCD\nfuture :x y z\nsender :\n"
                                 "rcpt notify=0 orcpt=- addr=:c@d later=:1\nbody 0\n"),
                     REC_OK);
    static const char *const bad[] = {
        "tern-message 2\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-msg 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789abcd\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender -\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=-\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=16 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c%00@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c%4@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c%4\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\nbody -1\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\nbody 1\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\nbody 99999999999999999999999\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nrcpt notify=0 orcpt=- addr=:c@d\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nbody-type 9bit\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nret none\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a b\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender :a@b\nsmtputf8 2\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "tern-message 1\nid 0123456789ABCD\nsender\nrcpt notify=0 orcpt=- addr=:c@d\nbody 0\n",
        "",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        if (decode_text(bad[i]) == REC_OK)
            fail_msg("accepted bad message text %zu", i);
    }
}

/* ---- status ---- */

static void test_status_round_trip(void **state)
{
    struct rec_rcpt r[3] = {
        {.addr = "a@b", .state = QR_DELIVERED, .parent = QRCPT_NO_PARENT, .attempts = 1,
         .first_attempt = 1700000000, .status = "2.0.0", .mta = "mx.b", .reply = "smtp; 250 ok",
         .dsn_sent = true, .relayed = true},
        {.addr = "list@b", .orcpt = "rfc822;list@b", .notify = DSN_NOTIFY_SUCCESS,
         .state = QR_EXPANDED, .parent = QRCPT_NO_PARENT},
        {.addr = "x y@b", .orcpt = "rfc822;list@b", .state = QR_DEFERRED, .parent = 1,
         .attempts = 7, .next_ms = 1700000099999ull, .status = "4.4.1",
         .reply = "x-tern; connection refused\r\n%", .delay_warned = true},
    };
    struct rec_status s = {.held = true, .rcpts = r, .n = 3};
    qid_new(s.id);
    struct buf b = BUF_INIT(REC_TEXT_MAX);
    assert_true(rec_status_encode(&b, &s));
    struct rec_status d;
    char err[128];
    assert_int_equal(rec_status_decode(b.data, b.len, &d, err, sizeof err), REC_OK);
    assert_string_equal(d.id, s.id);
    assert_true(d.held);
    assert_int_equal(d.n, 3);
    for (size_t i = 0; i < 3; i++) {
        check_str(d.rcpts[i].addr, r[i].addr);
        check_str(d.rcpts[i].orcpt, r[i].orcpt);
        check_str(d.rcpts[i].status, r[i].status);
        check_str(d.rcpts[i].mta, r[i].mta);
        check_str(d.rcpts[i].reply, r[i].reply);
        assert_int_equal(d.rcpts[i].state, r[i].state);
        assert_int_equal(d.rcpts[i].parent, r[i].parent);
        assert_int_equal(d.rcpts[i].attempts, r[i].attempts);
        assert_int_equal(d.rcpts[i].first_attempt, r[i].first_attempt);
        assert_int_equal(d.rcpts[i].next_ms, r[i].next_ms);
        assert_int_equal(d.rcpts[i].notify, r[i].notify);
        assert_int_equal(d.rcpts[i].delay_warned, r[i].delay_warned);
        assert_int_equal(d.rcpts[i].dsn_sent, r[i].dsn_sent);
        assert_int_equal(d.rcpts[i].relayed, r[i].relayed);
    }
    rec_status_free(&d);
    /* a cut in the middle of a line never decodes (a cut at a line end can: the record
     * checksum is what catches those) */
    for (size_t k = 0; k < b.len; k++) {
        enum rec_err e = rec_status_decode(b.data, k, &d, err, sizeof err);
        if (e == REC_OK) {
            assert_true(k > 0 && b.data[k - 1] == '\n');
            rec_status_free(&d);
        }
    }
    buf_release(&b);
}

static void test_status_refused(void **state)
{
    static const char *const bad[] = {
        "tern-status 1\nid 0123456789ABCD\nheld 0\n",                       /* no rcpts */
        "tern-status 1\nheld 0\nrcpt i=0 state=pending addr=:a@b\n",       /* no id */
        "tern-status 1\nid 0123456789ABCD\nrcpt i=1 state=pending addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=lost addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=pending\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=pending addr=-\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=pending parent=0 addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=pending flags=x addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=pending att=-1 addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=pending junk addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nheld 2\nrcpt i=0 state=pending addr=:a@b\n",
        "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=pending addr=:a@b",
        "tern-status 3\nid 0123456789ABCD\nrcpt i=0 state=pending addr=:a@b\n",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct rec_status d;
        char err[128];
        if (rec_status_decode(bad[i], strlen(bad[i]), &d, err, sizeof err) == REC_OK)
            fail_msg("accepted bad status text %zu", i);
    }
    const char *ok = "tern-status 1\nid 0123456789ABCD\nrcpt i=0 state=failed addr=:a@b\n"
                     "rcpt i=1 state=pending parent=0 addr=:c@d\n";
    struct rec_status d;
    assert_int_equal(rec_status_decode(ok, strlen(ok), &d, NULL, 0), REC_OK);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.rcpts[1].parent, 0);
    assert_int_equal(d.rcpts[0].parent, QRCPT_NO_PARENT);
    rec_status_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_round_trip), cmocka_unit_test(test_header_damage),
        cmocka_unit_test(test_payload_damage),    cmocka_unit_test(test_crc_combine),
        cmocka_unit_test(test_segment),           cmocka_unit_test(test_message_round_trip),
        cmocka_unit_test(test_message_refused),   cmocka_unit_test(test_status_round_trip),
        cmocka_unit_test(test_status_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
