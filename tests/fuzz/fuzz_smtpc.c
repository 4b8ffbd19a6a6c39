/*
 * libFuzzer target: the outbound SMTP client state machine (src/deliver/smtpc.c) fed
 * arbitrary server replies. The first input byte picks the client's options (STARTTLS,
 * required TLS, AUTH) and the transactions' shape (recipients, body type, SMTPUTF8); the
 * rest is the server's byte stream, fed in pieces whose sizes come from the input too.
 * The host side plays along with every phase (TLS succeeds, content is streamed, a new
 * transaction starts whenever the session is ready). Checked: no crash or leak; every
 * transaction that ends gives every recipient an outcome, a status of the matching class
 * and a diagnostic; output stays bounded.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deliver/smtpc.h"

static const char *const addrs[] = {"a@peer.example", "b@peer.example", "j\xc3\xb6rg@x.example"};

static void check_txn(const struct smtpc_txn *t)
{
    for (size_t i = 0; i < t->nrcpts; i++) {
        const struct smtpc_rcpt *r = &t->rcpts[i];
        if (r->outcome == SMTPC_NONE || r->diag == NULL || r->status[1] != '.')
            abort();
        char cls = r->outcome == SMTPC_OK ? '2' : r->outcome == SMTPC_TEMP ? '4' : '5';
        if (r->status[0] != cls)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned opt = data[0];
    data++;
    size--;
    struct smtpc_params p = {
        .helo = "mx.example.test",
        .starttls = opt & 1,
        .require_tls = opt & 2,
        .auth_user = (opt & 4) ? "user" : NULL,
        .auth_pass = (opt & 4) ? "pass" : NULL,
    };
    struct smtpc *s = smtpc_new(&p);
    struct smtpc_rcpt rc[3];
    struct smtpc_txn t;
    memset(rc, 0, sizeof rc);
    memset(&t, 0, sizeof t);
    t.sender = (opt & 8) ? "" : "alice@example.test";
    t.size = 1000;
    t.body = (opt >> 4) & 3;
    t.ret = (opt >> 6) & 1 ? DSN_RET_HDRS : DSN_RET_UNSPEC;
    t.envid = (opt & 0x80) ? "abc" : NULL;
    t.rcpts = rc;
    t.nrcpts = 1 + (opt % 3);
    for (size_t i = 0; i < t.nrcpts; i++) {
        rc[i].addr = addrs[i];
        rc[i].notify = (unsigned)(opt >> i) & 15;
        rc[i].orcpt = (opt & 32) ? "rfc822;a@peer.example" : NULL;
    }
    unsigned txns = 0;
    size_t off = 0;
    for (int steps = 0; steps < 10000; steps++) {
        size_t len;
        smtpc_output(s, &len);
        if (len > 4u * 1024 * 1024)
            abort();
        smtpc_output_sent(s, len);
        struct smtpc_txn *done = smtpc_take_done(s);
        if (done) {
            check_txn(done);
            smtpc_txn_clear(done);
        }
        enum smtpc_phase ph = smtpc_phase(s);
        if (ph == SMTPC_CLOSED)
            break;
        if (ph == SMTPC_TLS) {
            smtpc_tls_done(s);
            continue;
        }
        if (ph == SMTPC_READY) {
            if (txns++ < 3) {
                t.smtputf8 = false;
                smtpc_begin(s, &t);
            } else {
                smtpc_quit(s);
            }
            continue;
        }
        if (ph == SMTPC_CONTENT && (off >= size || (data[off] & 3) == 0)) {
            static const char body[] = "Subject: x\n\n.line\r\nbare\rcr\n..\n";
            smtpc_content(s, body, sizeof body - 1);
            smtpc_content_end(s);
            continue;
        }
        if (off >= size) {
            smtpc_abort(s, "4.4.2", "end of input");
            continue;
        }
        size_t piece = 1 + data[off] % 64;
        off++;
        if (piece > size - off)
            piece = size - off;
        smtpc_input(s, (const char *)data + off, piece);
        off += piece;
    }
    struct smtpc_txn *done = smtpc_take_done(s);
    if (done) {
        check_txn(done);
        smtpc_txn_clear(done);
    }
    smtpc_txn_clear(&t);
    smtpc_free(s);
    return 0;
}
