/*
 * Unit tests of the outbound SMTP client state machine (src/deliver/smtpc.c), driven
 * without sockets: replies go in as bytes, commands come out as bytes. Covers the session
 * set-up (EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN), transactions with and without
 * PIPELINING, ESMTP and DSN parameters, per-recipient outcomes and diagnostics, multi-line
 * replies and their limits, 421 handling, dot-stuffing and line-end normalisation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "deliver/smtpc.h"
#include "lib/buf.h"

static struct smtpc *S;
static struct buf OUT; /* everything sent */

static void drain(void)
{
    size_t len;
    const char *p = smtpc_output(S, &len);
    assert_true(buf_add(&OUT, p, len));
    smtpc_output_sent(S, len);
}

/* Feed server text; returns bytes consumed. */
static size_t feed(const char *s)
{
    size_t n = smtpc_input(S, s, strlen(s));
    drain();
    return n;
}

/* The output since the last call, as a string (static). */
static const char *sent(void)
{
    static char copy[256 * 1024];
    drain();
    size_t n = OUT.len < sizeof copy - 1 ? OUT.len : sizeof copy - 1;
    memcpy(copy, OUT.data ? OUT.data : "", n);
    copy[n] = '\0';
    buf_reset(&OUT);
    return copy;
}

static void start(const struct smtpc_params *p)
{
    S = smtpc_new(p);
    buf_init(&OUT, 1 << 20);
}

static struct smtpc_params plain_params(void)
{
    struct smtpc_params p = {.helo = "mx.example.test", .starttls = true};
    return p;
}

static int teardown(void **state)
{
    smtpc_free(S);
    S = NULL;
    buf_release(&OUT);
    return 0;
}

#define EHLO_FULL                                                                              \
    "250-peer.example Hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"           \
    "250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"

/* greeting + EHLO, up to READY */
static void hello(const char *ehlo_reply)
{
    assert_int_equal(smtpc_phase(S), SMTPC_WAIT);
    feed("220 peer.example ESMTP\r\n");
    assert_string_equal(sent(), "EHLO mx.example.test\r\n");
    feed(ehlo_reply);
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
}

struct txn_fixture {
    struct smtpc_rcpt rc[4];
    struct smtpc_txn t;
};

static void make_txn(struct txn_fixture *f, size_t n)
{
    memset(f, 0, sizeof *f);
    static const char *const addrs[] = {"a@peer.example", "b@peer.example", "c@peer.example",
                                        "d@peer.example"};
    for (size_t i = 0; i < n; i++)
        f->rc[i].addr = addrs[i];
    f->t.sender = "alice@example.test";
    f->t.size = 1234;
    f->t.body = BODY_UNSPEC;
    f->t.rcpts = f->rc;
    f->t.nrcpts = n;
}

/* ---- tests ---- */

static void test_pipelined_transaction(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    const struct smtpc_ext *e = smtpc_ext(S);
    assert_true(e->pipelining && e->size && e->eightbitmime && e->dsn && e->smtputf8);
    assert_false(e->starttls);
    assert_int_equal(e->size_limit, 100000);

    struct txn_fixture f;
    make_txn(&f, 2);
    f.t.body = BODY_8BITMIME;
    f.t.ret = DSN_RET_HDRS;
    f.t.envid = "abc+2B1";
    f.rc[0].notify = DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE;
    f.rc[0].orcpt = "rfc822;a+40peer.example";
    f.rc[1].notify = DSN_NOTIFY_NEVER;
    smtpc_begin(S, &f.t);
    /* one group: MAIL, both RCPTs and DATA */
    assert_string_equal(sent(), "MAIL FROM:<alice@example.test> SIZE=1234 BODY=8BITMIME "
                                "RET=HDRS ENVID=abc+2B1\r\n"
                                "RCPT TO:<a@peer.example> NOTIFY=SUCCESS,FAILURE "
                                "ORCPT=rfc822;a+40peer.example\r\n"
                                "RCPT TO:<b@peer.example> NOTIFY=NEVER\r\n"
                                "DATA\r\n");
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_MAIL_MS);
    feed("250 2.1.0 Ok\r\n");
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_RCPT_MS);
    feed("250 2.1.5 Ok\r\n550 5.1.1 <b@peer.example>: Recipient address rejected\r\n");
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_DATA_MS);
    feed("354 End data with <CR><LF>.<CR><LF>\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    assert_int_equal(smtpc_content(S, "Subject: x\n\n.dot\r\nend", 21), 21);
    smtpc_content_end(S);
    assert_string_equal(sent(), "Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n");
    assert_true(f.t.dot_sent);
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_DOT_MS);
    assert_null(smtpc_take_done(S));
    feed("250 2.0.0 Ok: queued as ABC\r\n");
    assert_ptr_equal(smtpc_take_done(S), &f.t);
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    assert_int_equal(f.rc[0].outcome, SMTPC_OK);
    assert_string_equal(f.rc[0].status, "2.0.0");
    assert_string_equal(f.rc[0].diag, "smtp; 250 2.0.0 Ok: queued as ABC");
    assert_false(f.rc[0].relayed); /* the server does DSN */
    assert_int_equal(f.rc[1].outcome, SMTPC_PERM);
    assert_string_equal(f.rc[1].status, "5.1.1");
    assert_string_equal(f.rc[1].diag,
                        "smtp; 550 5.1.1 <b@peer.example>: Recipient address rejected");
    assert_int_equal(smtpc_txn_count(S), 1);

    smtpc_quit(S);
    assert_string_equal(sent(), "QUIT\r\n");
    feed("221 2.0.0 Bye\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_false(smtpc_error(S)->failed);
    smtpc_txn_clear(&f.t);
}

static void test_one_at_a_time(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello("250-peer.example\r\n250 SIZE\r\n");
    struct txn_fixture f;
    make_txn(&f, 3);
    f.rc[1].notify = DSN_NOTIFY_SUCCESS; /* no DSN: no NOTIFY sent, "relayed" on success */
    smtpc_begin(S, &f.t);
    assert_string_equal(sent(), "MAIL FROM:<alice@example.test> SIZE=1234\r\n");
    feed("250 ok\r\n");
    assert_string_equal(sent(), "RCPT TO:<a@peer.example>\r\n");
    feed("451 4.3.0 try later\r\n");
    assert_string_equal(sent(), "RCPT TO:<b@peer.example>\r\n");
    feed("250 ok\r\n");
    assert_string_equal(sent(), "RCPT TO:<c@peer.example>\r\n");
    feed("550 no\r\n");
    assert_string_equal(sent(), "DATA\r\n");
    feed("354 go\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    smtpc_content(S, "x\r\n", 3);
    smtpc_content_end(S);
    assert_string_equal(sent(), "x\r\n.\r\n");
    feed("250 queued\r\n");
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_TEMP);
    assert_string_equal(f.rc[0].status, "4.3.0");
    assert_int_equal(f.rc[1].outcome, SMTPC_OK);
    assert_string_equal(f.rc[1].status, "2.0.0");
    assert_true(f.rc[1].relayed);
    assert_string_equal(f.rc[1].diag, "smtp; 250 queued");
    assert_int_equal(f.rc[2].outcome, SMTPC_PERM);
    assert_string_equal(f.rc[2].status, "5.0.0"); /* derived: no enhanced code given */
    assert_string_equal(f.rc[2].diag, "smtp; 550 no");
    smtpc_txn_clear(&f.t);
}

static void test_all_refused_then_reuse(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    struct txn_fixture f;
    make_txn(&f, 2);
    smtpc_begin(S, &f.t);
    sent();
    feed("250 2.1.0 Ok\r\n550 5.1.1 no a\r\n450 4.2.0 busy b\r\n554 5.5.1 no valid recipients\r\n");
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_PERM);
    assert_int_equal(f.rc[1].outcome, SMTPC_TEMP);
    assert_string_equal(f.rc[1].status, "4.2.0");
    /* the refused RCPTs keep their reply codes (remote.c sends 452s again at once) */
    assert_int_equal(f.rc[0].rcpt_code, 550);
    assert_int_equal(f.rc[1].rcpt_code, 450);
    /* the transaction ended before its dot: RSET before the next */
    assert_string_equal(sent(), "RSET\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_WAIT);
    feed("250 2.0.0 Ok\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    smtpc_txn_clear(&f.t);

    /* the same session carries the next message */
    struct txn_fixture g;
    make_txn(&g, 1);
    g.t.sender = "";
    smtpc_begin(S, &g.t);
    assert_string_equal(sent(), "MAIL FROM:<> SIZE=1234\r\nRCPT TO:<a@peer.example>\r\nDATA\r\n");
    feed("250 Ok\r\n250 Ok\r\n354 go\r\n");
    smtpc_content_end(S);
    assert_string_equal(sent(), ".\r\n");
    feed("250 Ok\r\n");
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(g.rc[0].outcome, SMTPC_OK);
    assert_int_equal(smtpc_txn_count(S), 2);
    smtpc_txn_clear(&g.t);
}

static void test_mail_refused(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello("250-peer\r\n250 ENHANCEDSTATUSCODES\r\n");
    struct txn_fixture f;
    make_txn(&f, 2);
    smtpc_begin(S, &f.t);
    assert_string_equal(sent(), "MAIL FROM:<alice@example.test>\r\n");
    feed("553 5.7.1 sender rejected\r\n");
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_PERM);
    assert_int_equal(f.rc[1].outcome, SMTPC_PERM);
    assert_string_equal(f.rc[1].diag, "smtp; 553 5.7.1 sender rejected");
    assert_string_equal(sent(), "RSET\r\n"); /* no RCPT or DATA after a refused MAIL */
    smtpc_txn_clear(&f.t);
}

static void test_data_refused_and_354_without_recipients(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    struct txn_fixture f;
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    sent();
    feed("250 ok\r\n250 ok\r\n451 4.3.0 no DATA now\r\n");
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_TEMP);
    assert_string_equal(f.rc[0].status, "4.3.0");
    assert_int_equal(f.rc[0].rcpt_code, 0); /* its RCPT was accepted: DATA was refused */
    assert_string_equal(sent(), "RSET\r\n");
    feed("250 ok\r\n");
    smtpc_txn_clear(&f.t);

    /* a broken server that says 354 although no recipient was accepted */
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    sent();
    feed("250 ok\r\n550 no\r\n354 go\r\n");
    assert_string_equal(sent(), ".\r\n");
    feed("554 no recipients\r\n");
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_PERM);
    assert_string_equal(f.rc[0].diag, "smtp; 550 no");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    smtpc_txn_clear(&f.t);
}

static void test_helo_fallback(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    feed("220 old.example\r\n");
    assert_string_equal(sent(), "EHLO mx.example.test\r\n");
    feed("502 5.5.2 what?\r\n");
    assert_string_equal(sent(), "HELO mx.example.test\r\n");
    feed("250 old.example\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    assert_false(smtpc_ext(S)->esmtp);
    struct txn_fixture f;
    make_txn(&f, 1);
    f.t.body = BODY_8BITMIME; /* not offered: sent as it is, without BODY= */
    smtpc_begin(S, &f.t);
    assert_string_equal(sent(), "MAIL FROM:<alice@example.test>\r\n");
    smtpc_txn_clear(&f.t);
}

static void test_helo_refused(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    feed("220 x\r\n");
    feed("500 no\r\n");
    feed("550 go away\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    const struct smtpc_error *e = smtpc_error(S);
    assert_true(e->failed);
    assert_int_equal(e->kind, SMTPC_PERM);
    assert_true(e->next_host);
    assert_string_equal(e->diag, "smtp; 550 go away");
}

static void test_greeting_refused(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    feed("554-5.3.2 not now\r\n554 5.3.2 really\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    const struct smtpc_error *e = smtpc_error(S);
    assert_true(e->failed);
    assert_true(e->next_host);
    assert_int_equal(e->kind, SMTPC_TEMP); /* a greeting is a host problem */
    assert_string_equal(e->status, "4.3.2");
    assert_string_equal(e->diag, "smtp; 554 5.3.2 not now really");
    assert_string_equal(e->stage, "greeting");
    assert_string_equal(sent(), "QUIT\r\n");

    teardown(NULL);
    start(&p);
    feed("421 4.3.2 busy\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_true(smtpc_error(S)->next_host);
    assert_string_equal(smtpc_error(S)->status, "4.3.2");
    assert_string_equal(sent(), ""); /* no QUIT after 421 */
}

static void test_starttls(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    feed("220 x\r\n");
    sent();
    /* the 220 and a line injected after it in the same read */
    feed("250-x\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
    assert_string_equal(sent(), "STARTTLS\r\n");
    const char *in = "220 2.0.0 go ahead\r\n250 injected\r\n";
    size_t used = smtpc_input(S, in, strlen(in));
    assert_int_equal(used, strlen("220 2.0.0 go ahead\r\n")); /* nothing after the 220 */
    assert_int_equal(smtpc_phase(S), SMTPC_TLS);
    assert_false(smtpc_tls_active(S));
    smtpc_tls_done(S);
    assert_true(smtpc_tls_active(S));
    assert_string_equal(sent(), "EHLO mx.example.test\r\n");
    assert_false(smtpc_ext(S)->pipelining); /* forgotten after TLS */
    feed("250-x\r\n250 SIZE\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    assert_false(smtpc_ext(S)->starttls);
}

static void test_starttls_refused_or_missing(void **state)
{
    /* may: a refused STARTTLS continues in plaintext */
    struct smtpc_params p = plain_params();
    start(&p);
    feed("220 x\r\n250-x\r\n250 STARTTLS\r\n");
    assert_string_equal(sent(), "EHLO mx.example.test\r\nSTARTTLS\r\n");
    feed("454 4.7.0 TLS not available\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    assert_false(smtpc_tls_active(S));

    /* encrypt: refused STARTTLS fails the host with 4.7.5 */
    teardown(NULL);
    p.require_tls = true;
    start(&p);
    feed("220 x\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_string_equal(smtpc_error(S)->status, "4.7.5");
    assert_true(smtpc_error(S)->next_host);

    /* encrypt: not offered at all: 4.7.4 */
    teardown(NULL);
    start(&p);
    feed("220 x\r\n250-x\r\n250 PIPELINING\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_string_equal(smtpc_error(S)->status, "4.7.4");
    assert_int_equal(smtpc_error(S)->kind, SMTPC_TEMP);
    assert_string_equal(sent(), "EHLO mx.example.test\r\nQUIT\r\n");

    /* policy none: STARTTLS offered but not used */
    teardown(NULL);
    p.require_tls = false;
    p.starttls = false;
    start(&p);
    feed("220 x\r\n250-x\r\n250 STARTTLS\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
}

static void to_tls_ready(const char *ehlo_after_tls)
{
    feed("220 x\r\n250-x\r\n250 STARTTLS\r\n");
    feed("220 go\r\n");
    smtpc_tls_done(S);
    sent();
    feed(ehlo_after_tls);
}

static void test_auth_plain(void **state)
{
    struct smtpc_params p = plain_params();
    p.require_tls = true;
    p.auth_user = "alice";
    p.auth_pass = "secret";
    start(&p);
    to_tls_ready("250-x\r\n250 AUTH LOGIN PLAIN\r\n");
    assert_string_equal(sent(), "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_WAIT);
    feed("235 2.7.0 Authentication successful\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
}

static void test_auth_login_and_failure(void **state)
{
    struct smtpc_params p = plain_params();
    p.require_tls = true;
    p.auth_user = "alice";
    p.auth_pass = "secret";
    start(&p);
    to_tls_ready("250-x\r\n250 AUTH=LOGIN\r\n");
    assert_string_equal(sent(), "AUTH LOGIN\r\n");
    feed("334 VXNlcm5hbWU6\r\n");
    assert_string_equal(sent(), "YWxpY2U=\r\n");
    feed("334 UGFzc3dvcmQ6\r\n");
    assert_string_equal(sent(), "c2VjcmV0\r\n");
    feed("535 5.7.8 Authentication credentials invalid\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    const struct smtpc_error *e = smtpc_error(S);
    assert_int_equal(e->kind, SMTPC_TEMP); /* our credentials: defer, never bounce */
    assert_string_equal(e->status, "4.7.8");
    assert_string_equal(e->diag, "smtp; 535 5.7.8 Authentication credentials invalid");

    /* no mechanism we know */
    teardown(NULL);
    start(&p);
    to_tls_ready("250-x\r\n250 AUTH CRAM-MD5\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_string_equal(smtpc_error(S)->status, "4.7.0");

    /* credentials never go in plaintext, even if a caller asks without require_tls */
    teardown(NULL);
    p.require_tls = false;
    p.starttls = false;
    start(&p);
    feed("220 x\r\n250-x\r\n250 AUTH PLAIN\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_null(strstr(sent(), "AUTH"));
}

static void test_multiline_and_limits(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    struct txn_fixture f;
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    sent();
    feed("250 ok\r\n550-5.1.1 The email account that you tried to reach does not exist.\r\n"
         "550-5.1.1 Please try\r\n550 5.1.1 https://example.invalid/help x\r\n");
    assert_string_equal(f.rc[0].diag,
                        "smtp; 550 5.1.1 The email account that you tried to reach does not "
                        "exist. Please try https://example.invalid/help x");
    assert_string_equal(f.rc[0].status, "5.1.1");
    feed("554 no\r\n"); /* DATA */
    smtpc_txn_clear(&f.t);

    /* control bytes in a reply never reach a diagnostic */
    feed("250 ok\r\n"); /* RSET */
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n550 bad\x01\x7f\xc3\xa9 text\r\n554 no\r\n");
    assert_string_equal(f.rc[0].diag, "smtp; 550 bad???? text");
    smtpc_txn_clear(&f.t);

    /* a line longer than SMTPC_LINE_MAX: protocol error, session over */
    feed("250 ok\r\n"); /* RSET */
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    sent();
    char *big = malloc(SMTPC_LINE_MAX + 100);
    memset(big, 'x', SMTPC_LINE_MAX + 97);
    memcpy(big, "250 ", 4);
    memcpy(big + SMTPC_LINE_MAX + 97, "\r\n", 3);
    feed(big);
    free(big);
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_TEMP);
    assert_string_equal(f.rc[0].status, "4.5.0");
    assert_non_null(strstr(f.rc[0].diag, "too long"));
    smtpc_txn_clear(&f.t);
}

static void test_reply_total_limit_and_malformed(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    feed("220 x\r\n");
    /* an endless multi-line EHLO reply */
    char line[1100];
    memset(line, 'k', sizeof line);
    memcpy(line, "250-", 4);
    memcpy(line + sizeof line - 3, "\r\n", 3);
    for (int i = 0; i < 70 && smtpc_phase(S) == SMTPC_WAIT; i++)
        feed(line);
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_non_null(strstr(smtpc_error(S)->diag, "reply too long"));
    assert_true(smtpc_error(S)->next_host);

    teardown(NULL);
    start(&p);
    feed("hello there\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_non_null(strstr(smtpc_error(S)->diag, "malformed"));

    teardown(NULL);
    start(&p);
    feed("220-x\r\n250 y\r\n"); /* codes differ inside one reply */
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);

    /* replies split at any byte, and LF-only line ends, are fine */
    teardown(NULL);
    start(&p);
    feed("2");
    feed("20 x");
    feed("\r");
    assert_int_equal(smtpc_phase(S), SMTPC_WAIT);
    feed("\n");
    assert_string_equal(sent(), "EHLO mx.example.test\r\n");
    feed("250 ok\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
}

static void test_421_mid_transaction(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    struct txn_fixture f;
    make_txn(&f, 3);
    smtpc_begin(S, &f.t);
    sent();
    feed("250 ok\r\n550 5.1.1 no\r\n421 4.4.2 closing\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_PERM);
    assert_int_equal(f.rc[1].outcome, SMTPC_TEMP);
    assert_int_equal(f.rc[2].outcome, SMTPC_TEMP);
    assert_string_equal(f.rc[2].diag, "smtp; 421 4.4.2 closing");
    assert_false(smtpc_error(S)->next_host); /* it was ready: the recipients are done */
    assert_string_equal(sent(), "");
    smtpc_txn_clear(&f.t);
}

static void test_smtputf8_size_binarymime(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello("250-x\r\n250-SIZE 1000\r\n250 PIPELINING\r\n");
    struct txn_fixture f;
    make_txn(&f, 2);
    f.rc[1].addr = "j\xc3\xb6rg@peer.example";
    smtpc_begin(S, &f.t);
    assert_ptr_equal(smtpc_take_done(S), &f.t);
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    assert_string_equal(sent(), "");
    assert_int_equal(f.rc[0].outcome, SMTPC_PERM);
    assert_string_equal(f.rc[0].status, "5.6.7");
    assert_non_null(strstr(f.rc[0].diag, "x-tern; "));
    smtpc_txn_clear(&f.t);

    make_txn(&f, 1);
    f.t.size = 5000;
    smtpc_begin(S, &f.t);
    assert_non_null(smtpc_take_done(S));
    assert_string_equal(f.rc[0].status, "5.3.4");
    assert_int_equal(f.rc[0].outcome, SMTPC_PERM);
    smtpc_txn_clear(&f.t);

    make_txn(&f, 1);
    f.t.body = BODY_BINARYMIME;
    f.t.size = 100;
    smtpc_begin(S, &f.t);
    assert_non_null(smtpc_take_done(S));
    assert_string_equal(f.rc[0].status, "5.6.3");
    smtpc_txn_clear(&f.t);

    /* SMTPUTF8 offered: passed on */
    teardown(NULL);
    start(&p);
    hello("250-x\r\n250 SMTPUTF8\r\n");
    make_txn(&f, 1);
    f.t.smtputf8 = true;
    smtpc_begin(S, &f.t);
    assert_string_equal(sent(), "MAIL FROM:<alice@example.test> SMTPUTF8\r\n");
    smtpc_txn_clear(&f.t);
}

static void test_abort(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    struct txn_fixture f;
    make_txn(&f, 2);
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    smtpc_content(S, "partial", 7);
    smtpc_abort(S, "4.4.2", "lost connection with peer while sending message content");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_TEMP);
    assert_string_equal(f.rc[0].status, "4.4.2");
    assert_string_equal(f.rc[0].diag,
                        "x-tern; lost connection with peer while sending message content");
    assert_int_equal(f.rc[1].outcome, SMTPC_PERM); /* its outcome was known already */
    assert_false(f.t.dot_sent);
    smtpc_txn_clear(&f.t);

    /* before the session is ready: the host may try another */
    teardown(NULL);
    start(&p);
    smtpc_abort(S, "4.4.2", "timeout");
    assert_true(smtpc_error(S)->next_host);
    assert_string_equal(smtpc_error(S)->diag, "x-tern; timeout");
}

static void test_content_normalisation(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    struct txn_fixture f;
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n250 ok\r\n354 go\r\n");
    sent();
    /* CR LF split across calls, bare CR, bare LF, dots at line starts, a lone dot line */
    const char *pieces[] = {".a\r", "\nb\rc\n", ".", "\r\n", "..x\n\n", "last"};
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++)
        assert_int_equal(smtpc_content(S, pieces[i], strlen(pieces[i])), strlen(pieces[i]));
    smtpc_content_end(S);
    assert_string_equal(sent(), "..a\r\nb\r\nc\r\n..\r\n...x\r\n\r\nlast\r\n.\r\n");
    feed("250 ok\r\n");
    smtpc_txn_clear(&f.t);

    /* a message ending in CR LF gets no extra line; an empty one is just the dot */
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n250 ok\r\n354 go\r\n");
    sent();
    smtpc_content(S, "x\r\n", 3);
    smtpc_content_end(S);
    assert_string_equal(sent(), "x\r\n.\r\n");
    feed("250 ok\r\n");
    smtpc_txn_clear(&f.t);

    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n250 ok\r\n354 go\r\n");
    sent();
    smtpc_content_end(S);
    assert_string_equal(sent(), ".\r\n");
    feed("250 ok\r\n");
    smtpc_txn_clear(&f.t);

    /* a trailing bare CR is a line end */
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n250 ok\r\n354 go\r\n");
    sent();
    smtpc_content(S, "y\r", 2);
    smtpc_content_end(S);
    assert_string_equal(sent(), "y\r\n.\r\n");
    feed("250 ok\r\n");
    smtpc_txn_clear(&f.t);
}

static void test_content_bounded(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    struct txn_fixture f;
    make_txn(&f, 1);
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n250 ok\r\n354 go\r\n");
    sent();
    size_t n = 3 * SMTPC_CHUNK;
    char *big = malloc(n);
    memset(big, '\n', n); /* worst case: every byte doubles */
    size_t took = smtpc_content(S, big, n);
    assert_int_equal(took, SMTPC_CHUNK); /* one piece at a time */
    size_t len;
    smtpc_output(S, &len);
    assert_int_equal(len, 2 * SMTPC_CHUNK);
    /* without draining, the output bound stops it eventually rather than growing */
    size_t total = took;
    for (int i = 0; i < 100; i++) {
        size_t k = smtpc_content(S, big, n);
        total += k;
        if (k == 0)
            break;
    }
    smtpc_output(S, &len);
    assert_true(len <= SMTPC_RCPTS_MAX * 1400 + 4 * SMTPC_CHUNK);
    assert_int_equal(len, 2 * total);
    free(big);
    smtpc_txn_clear(&f.t);
}

static void test_enhanced_parse(void **state)
{
    char out[12];
    assert_int_equal(smtpc_parse_enhanced(250, "2.1.0 Ok", 8, out, sizeof out), 5);
    assert_string_equal(out, "2.1.0");
    assert_int_equal(smtpc_parse_enhanced(556, "5.1.10 null MX", 14, out, sizeof out), 6);
    assert_string_equal(out, "5.1.10");
    assert_int_equal(smtpc_parse_enhanced(550, "5.7.1", 5, out, sizeof out), 5);
    assert_int_equal(smtpc_parse_enhanced(550, "4.1.1 wrong class", 17, out, sizeof out), 0);
    assert_int_equal(smtpc_parse_enhanced(550, "5.1 short", 9, out, sizeof out), 0);
    assert_int_equal(smtpc_parse_enhanced(550, "5.1.1234 long", 13, out, sizeof out), 0);
    assert_int_equal(smtpc_parse_enhanced(550, "5.1.1x", 6, out, sizeof out), 0);
    assert_int_equal(smtpc_parse_enhanced(550, "Mailbox unavailable", 19, out, sizeof out), 0);
    assert_int_equal(smtpc_parse_enhanced(354, "3.0.0 x", 7, out, sizeof out), 0);
    assert_true(smtpc_needs_utf8("j\xc3\xb6rg@x"));
    assert_false(smtpc_needs_utf8("joerg@x"));
}

static void test_timeouts(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_GREETING_MS);
    feed("220 x\r\n");
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_EHLO_MS);
    feed("250 x\r\n");
    assert_int_equal(smtpc_timeout_ms(S), 0); /* idle: the host's own idle timer */
    smtpc_quit(S);
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_QUIT_MS);
    /* a lost QUIT reply is no failure */
    smtpc_abort(S, "4.4.2", "eof");
    assert_int_equal(smtpc_phase(S), SMTPC_CLOSED);
    assert_false(smtpc_error(S)->failed);
}

static void test_bdat_binarymime(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello("250-x\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 BINARYMIME\r\n");
    struct txn_fixture f;
    make_txn(&f, 2);
    f.t.body = BODY_BINARYMIME;
    smtpc_begin(S, &f.t);
    /* no DATA: MAIL and the RCPTs, then BDAT chunks */
    assert_string_equal(sent(), "MAIL FROM:<alice@example.test> BODY=BINARYMIME\r\n"
                                "RCPT TO:<a@peer.example>\r\nRCPT TO:<b@peer.example>\r\n");
    feed("250 ok\r\n250 ok\r\n550 no b\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    /* raw bytes: a bare LF, a leading dot and a NUL stay as they are */
    assert_int_equal(smtpc_content(S, ".a\nb\0c", 6), 6);
    assert_int_equal(smtpc_content(S, "\r\n.\r\n", 5), 5);
    /* pipelined: the reply to the first chunk arrives while content still flows */
    feed("250 2.0.0 chunk ok\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    smtpc_content_end(S);
    const char *out = sent();
    assert_memory_equal(out, "BDAT 6\r\n.a\nb\0cBDAT 5\r\n\r\n.\r\nBDAT 0 LAST\r\n", 40);
    assert_int_equal(smtpc_phase(S), SMTPC_WAIT);
    assert_int_equal(smtpc_timeout_ms(S), SMTPC_TO_DOT_MS);
    feed("250 2.0.0 chunk ok\r\n");
    assert_null(smtpc_take_done(S));
    feed("250 2.0.0 queued as B\r\n");
    assert_ptr_equal(smtpc_take_done(S), &f.t);
    assert_int_equal(f.rc[0].outcome, SMTPC_OK);
    assert_string_equal(f.rc[0].diag, "smtp; 250 2.0.0 queued as B");
    assert_int_equal(f.rc[1].outcome, SMTPC_PERM);
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    smtpc_txn_clear(&f.t);
}

static void test_bdat_one_at_a_time_and_refused_chunk(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello("250-x\r\n250-CHUNKING\r\n250 BINARYMIME\r\n");
    struct txn_fixture f;
    make_txn(&f, 1);
    f.t.body = BODY_BINARYMIME;
    smtpc_begin(S, &f.t);
    feed("250 ok\r\n");
    assert_string_equal(sent(), "MAIL FROM:<alice@example.test> BODY=BINARYMIME\r\n"
                                "RCPT TO:<a@peer.example>\r\n");
    feed("250 ok\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    smtpc_content(S, "abc", 3);
    /* without PIPELINING each chunk waits for its reply */
    assert_int_equal(smtpc_phase(S), SMTPC_WAIT);
    assert_string_equal(sent(), "BDAT 3\r\nabc");
    feed("250 ok\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    smtpc_content(S, "def", 3);
    feed("552 5.3.4 too big\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_CONTENT);
    /* the rest is swallowed; the end sends no LAST chunk but ends the transaction */
    assert_int_equal(smtpc_content(S, "ghi", 3), 3);
    sent();
    smtpc_content_end(S);
    assert_string_equal(sent(), "RSET\r\n");
    assert_non_null(smtpc_take_done(S));
    assert_int_equal(f.rc[0].outcome, SMTPC_PERM);
    assert_string_equal(f.rc[0].status, "5.3.4");
    feed("250 ok\r\n");
    assert_int_equal(smtpc_phase(S), SMTPC_READY);
    smtpc_txn_clear(&f.t);
}

static void test_long_command(void **state)
{
    struct smtpc_params p = plain_params();
    start(&p);
    hello(EHLO_FULL);
    char orcpt[520] = "rfc822;";
    memset(orcpt + 7, 'o', 500);
    orcpt[507] = '\0';
    char addr[300];
    memset(addr, 'l', 250);
    memcpy(addr + 250, "@peer.example", 14);
    struct txn_fixture f;
    make_txn(&f, 1);
    f.rc[0].addr = addr;
    f.rc[0].orcpt = orcpt;
    smtpc_begin(S, &f.t);
    const char *out = sent();
    char expect[1200];
    snprintf(expect, sizeof expect, "RCPT TO:<%s> ORCPT=%s\r\n", addr, orcpt);
    assert_non_null(strstr(out, expect));
    smtpc_txn_clear(&f.t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_pipelined_transaction, teardown),
        cmocka_unit_test_teardown(test_one_at_a_time, teardown),
        cmocka_unit_test_teardown(test_all_refused_then_reuse, teardown),
        cmocka_unit_test_teardown(test_mail_refused, teardown),
        cmocka_unit_test_teardown(test_data_refused_and_354_without_recipients, teardown),
        cmocka_unit_test_teardown(test_helo_fallback, teardown),
        cmocka_unit_test_teardown(test_helo_refused, teardown),
        cmocka_unit_test_teardown(test_greeting_refused, teardown),
        cmocka_unit_test_teardown(test_starttls, teardown),
        cmocka_unit_test_teardown(test_starttls_refused_or_missing, teardown),
        cmocka_unit_test_teardown(test_auth_plain, teardown),
        cmocka_unit_test_teardown(test_auth_login_and_failure, teardown),
        cmocka_unit_test_teardown(test_multiline_and_limits, teardown),
        cmocka_unit_test_teardown(test_reply_total_limit_and_malformed, teardown),
        cmocka_unit_test_teardown(test_421_mid_transaction, teardown),
        cmocka_unit_test_teardown(test_smtputf8_size_binarymime, teardown),
        cmocka_unit_test_teardown(test_abort, teardown),
        cmocka_unit_test_teardown(test_content_normalisation, teardown),
        cmocka_unit_test_teardown(test_content_bounded, teardown),
        cmocka_unit_test_teardown(test_enhanced_parse, teardown),
        cmocka_unit_test_teardown(test_timeouts, teardown),
        cmocka_unit_test_teardown(test_bdat_binarymime, teardown),
        cmocka_unit_test_teardown(test_bdat_one_at_a_time_and_refused_chunk, teardown),
        cmocka_unit_test_teardown(test_long_command, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
