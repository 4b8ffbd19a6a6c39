/*
 * Unit tests of the SMTP session state machine (src/smtpd/session.c), driven through its
 * byte interface with a fake host: every command, sequence rule, limit and error reply,
 * DATA/BDAT framing and the smuggling cases, pipelining, pending host calls, STARTTLS and AUTH.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/buf.h"
#include "smtpd/session.h"

/* ---- the fake host ---- */

struct fake {
    struct buf out;       /* everything the session replied */
    struct buf content;   /* message content handed to data_write */
    struct envelope last; /* the envelope of the last data_end */
    int mail_calls, rcpt_calls, begin_calls, end_calls, abort_calls, auth_calls, tls_calls;
    char last_rcpt[400];
    unsigned last_rcpt_flags;
    char auth_user[256], auth_pass[256];
    /* behaviour */
    bool rcpt_pending, end_pending, auth_pending;
    int rcpt_refuse_code; /* 0: accept */
    int mail_refuse_code;
    int end_code;         /* 0: 250 */
    bool auth_ok;
};

static struct fake F;
static struct session_params P;

static enum host_rc f_mail(void *ctx, const struct mailaddr *from, const struct mail_params *p,
                           struct reply *r)
{
    F.mail_calls++;
    if (F.mail_refuse_code)
        reply_set(r, F.mail_refuse_code, "5.7.1", "refused");
    else
        reply_set(r, 250, "2.1.0", "Ok");
    return HOST_DONE;
}

static enum host_rc f_rcpt(void *ctx, const struct mailaddr *to, const struct rcpt_params *p,
                           struct reply *r)
{
    F.rcpt_calls++;
    addr_format(to, F.last_rcpt, sizeof F.last_rcpt);
    F.last_rcpt_flags = to->flags;
    if (F.rcpt_pending)
        return HOST_PENDING;
    if (F.rcpt_refuse_code)
        reply_set(r, F.rcpt_refuse_code, "5.1.1", "unknown");
    else
        reply_set(r, 250, "2.1.5", "Ok");
    return HOST_DONE;
}

static enum host_rc f_begin(void *ctx, const struct envelope *env, struct reply *r)
{
    F.begin_calls++;
    buf_reset(&F.content);
    reply_set(r, 354, NULL, "go");
    return HOST_DONE;
}

static void f_write(void *ctx, const char *p, size_t n)
{
    assert_true(buf_add(&F.content, p, n));
}

static enum host_rc f_end(void *ctx, struct envelope *env, struct reply *r)
{
    F.end_calls++;
    envelope_clear(&F.last);
    envelope_copy(&F.last, env);
    if (F.end_pending)
        return HOST_PENDING;
    if (F.end_code)
        reply_set(r, F.end_code, "4.3.0", "queue error");
    else
        reply_set(r, 250, "2.0.0", "Ok: queued as TEST");
    return HOST_DONE;
}

static void f_abort(void *ctx)
{
    F.abort_calls++;
}

static enum host_rc f_auth(void *ctx, const char *user, const char *pass, struct reply *r)
{
    F.auth_calls++;
    snprintf(F.auth_user, sizeof F.auth_user, "%s", user);
    snprintf(F.auth_pass, sizeof F.auth_pass, "%s", pass);
    if (F.auth_pending)
        return HOST_PENDING;
    if (F.auth_ok)
        reply_set(r, 235, "2.7.0", "Authentication successful");
    else
        reply_set(r, 535, "5.7.8", "Authentication credentials invalid");
    return HOST_DONE;
}

static void f_starttls(void *ctx)
{
    F.tls_calls++;
}

static const struct session_host HOST = {f_mail, f_rcpt, f_begin, f_write,
                                         f_end,  f_abort, f_auth, f_starttls};

static int setup(void **state)
{
    memset(&F, 0, sizeof F);
    buf_init(&F.out, 1 << 22);
    buf_init(&F.content, 1 << 24);
    envelope_init(&F.last);
    memset(&P, 0, sizeof P);
    P.hostname = "mx.test";
    P.size_limit = 10000;
    P.max_recipients = 100;
    P.max_errors = 10;
    P.max_received = 100;
    P.starttls = true;
    P.auth = false;
    return 0;
}

static int teardown(void **state)
{
    buf_release(&F.out);
    buf_release(&F.content);
    envelope_clear(&F.last);
    return 0;
}

/* Collect the session's output into F.out. */
static void drain(struct session *s)
{
    size_t len;
    const char *o = session_output(s, &len);
    assert_true(buf_add(&F.out, o, len));
    session_output_sent(s, len);
}

/* Feed everything (as the server does: again while output is drained), return consumed. */
static size_t feedn(struct session *s, const char *p, size_t n)
{
    size_t used = 0;
    for (;;) {
        size_t u = session_input(s, p + used, n - used);
        used += u;
        drain(s);
        if (u == 0 || used == n)
            break;
    }
    return used;
}

static size_t feed(struct session *s, const char *text)
{
    return feedn(s, text, strlen(text));
}

/* The reply lines since the last call, as one string. */
static char *take(void)
{
    static char copy[1 << 20];
    size_t n = F.out.len < sizeof copy - 1 ? F.out.len : sizeof copy - 1;
    memcpy(copy, F.out.data ? F.out.data : "", n);
    copy[n] = '\0';
    buf_reset(&F.out);
    return copy;
}

static void expect(struct session *s, const char *input, const char *reply_prefix)
{
    feed(s, input);
    char *got = take();
    if (strncmp(got, reply_prefix, strlen(reply_prefix)) != 0)
        fail_msg("input %s: expected reply starting \"%s\", got \"%s\"", input, reply_prefix, got);
}

static struct session *start(void)
{
    struct session *s = session_new(&P, &HOST, NULL, "T1");
    session_greet(s);
    drain(s);
    assert_string_equal(take(), "220 mx.test ESMTP tern\r\n");
    return s;
}

static struct session *ready(void)
{
    struct session *s = start();
    feed(s, "EHLO client.test\r\n");
    take();
    return s;
}

/* ---- tests ---- */

static void test_ehlo_lists_extensions(void **state)
{
    struct session *s = start();
    feed(s, "EHLO client.test\r\n");
    char *r = take();
    assert_non_null(strstr(r, "250-mx.test\r\n"));
    assert_non_null(strstr(r, "250-PIPELINING\r\n"));
    assert_non_null(strstr(r, "250-SIZE 10000\r\n"));
    assert_non_null(strstr(r, "250-8BITMIME\r\n"));
    assert_non_null(strstr(r, "250-SMTPUTF8\r\n"));
    assert_non_null(strstr(r, "250-CHUNKING\r\n"));
    assert_non_null(strstr(r, "250-DSN\r\n"));
    assert_non_null(strstr(r, "250-STARTTLS\r\n"));
    assert_null(strstr(r, "AUTH")); /* not on this listener */
    /* the last line has a space after the code */
    assert_non_null(strstr(r, "250 ENHANCEDSTATUSCODES\r\n"));
    assert_int_equal(session_state(s), SS_READY);
    session_free(s);
}

static void test_helo_and_bad_helo(void **state)
{
    struct session *s = start();
    expect(s, "HELO\r\n", "501 5.5.4");
    expect(s, "HELO bad..name\r\n", "501 5.5.4");
    expect(s, "HELO client.test\r\n", "250 mx.test\r\n");
    /* after HELO, ESMTP parameters were never offered */
    expect(s, "MAIL FROM:<a@b.test> SIZE=10\r\n", "555 5.5.4");
    assert_false(session_esmtp(s));
    assert_string_equal(session_protocol(s), "SMTP");
    session_free(s);
}

static void test_sequence_errors(void **state)
{
    struct session *s = start();
    expect(s, "MAIL FROM:<a@b.test>\r\n", "503 5.5.1 Send HELO/EHLO first");
    feed(s, "EHLO c.test\r\n");
    take();
    expect(s, "RCPT TO:<a@b.test>\r\n", "503 5.5.1");
    expect(s, "DATA\r\n", "503 5.5.1");
    expect(s, "MAIL FROM:<a@b.test>\r\n", "250 2.1.0");
    expect(s, "MAIL FROM:<a@b.test>\r\n", "503 5.5.1 Nested MAIL");
    expect(s, "DATA\r\n", "503 5.5.1 No valid recipients");
    assert_int_equal(F.begin_calls, 0);
    session_free(s);
}

static void test_syntax_errors(void **state)
{
    struct session *s = ready();
    expect(s, "MAIL TO:<a@b.test>\r\n", "501 5.5.4");
    expect(s, "MAIL FROM:a@b.test\r\n", "501 5.1.7");
    expect(s, "MAIL FROM:<a@b.test> FOO=bar\r\n", "555 5.5.4");
    expect(s, "MAIL FROM:<a@b.test> BODY=BOGUS\r\n", "501 5.5.4");
    /* RFC 5321 §4.1.4: a refused MAIL leaves no transaction: the next MAIL works */
    expect(s, "MAIL FROM:<a@b.test>\r\n", "250 2.1.0");
    expect(s, "RCPT TO:<nobracket@b.test\r\n", "501 5.1.3");
    expect(s, "RCPT FROM:<x@b.test>\r\n", "501 5.5.4");
    expect(s, "XYZZY\r\n", "500 5.5.1");
    expect(s, "EXPN list\r\n", "502 5.5.1");
    expect(s, "VRFY alice\r\n", "252 2.5.2");
    expect(s, "VRFY\r\n", "501 5.5.4");
    expect(s, "RSET now\r\n", "501 5.5.4");
    expect(s, "NOOP anything\r\n", "250 2.0.0");
    expect(s, "HELP\r\n", "214 2.0.0");
    session_free(s);
}

static void test_address_limits(void **state)
{
    struct session *s = ready();
    char line[800];
    char local[70];
    memset(local, 'a', 65);
    local[65] = '\0';
    snprintf(line, sizeof line, "MAIL FROM:<%s@b.test>\r\n", local);
    expect(s, line, "501 5.1.7");
    local[64] = '\0';
    snprintf(line, sizeof line, "MAIL FROM:<%s@b.test>\r\n", local);
    expect(s, line, "250 2.1.0");
    session_free(s);
}

static void test_long_line_and_control_chars(void **state)
{
    struct session *s = ready();
    char line[700];
    memset(line, 'x', 600);
    memcpy(line, "NOOP ", 5);
    memcpy(line + 600, "\r\n", 3);
    expect(s, line, "500 5.5.2");
    expect(s, "NOOP\r\n", "250 2.0.0"); /* still usable */
    /* AUTH lines may be longer (an initial response), up to their own limit */
    static char auth[SMTP_AUTH_LINE_MAX + 8];
    memset(auth, 'A', SMTP_AUTH_LINE_MAX);
    memcpy(auth, "AUTH PLAIN ", 11);
    memcpy(auth + SMTP_AUTH_LINE_MAX - 1, "\r\n", 3);
    feed(s, auth);
    char want[80];
    snprintf(want, sizeof want, "500 5.5.2 Line too long (the limit is %d octets)\r\n",
             SMTP_AUTH_LINE_MAX);
    assert_string_equal(take(), want);
    snprintf(want, sizeof want, "500 5.5.2 Line too long (the limit is %d octets)\r\n",
             SMTP_LINE_MAX);
    feed(s, line);
    assert_string_equal(take(), want);
    /* a line longer than every buffer, in pieces */
    static char huge[40000];
    memset(huge, 'y', sizeof huge);
    feedn(s, huge, sizeof huge);
    assert_string_equal(take(), "");
    expect(s, "\r\n", "500 5.5.2");
    expect(s, "NOOP\r\n", "250 2.0.0");
    feedn(s, "NO\0OP\r\n", 7);
    assert_string_equal(take(), "500 5.5.2 Syntax error: control characters in command\r\n");
    expect(s, "NOOP\n", "500 5.5.2"); /* bare LF */
    expect(s, "NO\rOP\r\n", "500 5.5.2"); /* bare CR */
    expect(s, "QUIT\r\n", "221 2.0.0");
    assert_true(session_wants_close(s));
    session_free(s);
}

static void test_full_transaction_and_dot_unstuffing(void **state)
{
    struct session *s = ready();
    expect(s, "MAIL FROM:<sender@a.test>\r\n", "250 2.1.0");
    expect(s, "RCPT TO:<rcpt@b.test>\r\n", "250 2.1.5");
    expect(s, "RCPT TO:<rcpt@b.test>\r\n", "250 2.1.5"); /* a duplicate: stored once */
    expect(s, "DATA\r\n", "354 ");
    assert_int_equal(session_state(s), SS_DATA);
    expect(s, "Subject: x\r\n\r\n..dot\r\n.\r\n", "250 2.0.0 Ok: queued as TEST");
    assert_int_equal(F.end_calls, 1);
    assert_int_equal(F.content.len, strlen("Subject: x\r\n\r\n.dot\r\n"));
    assert_memory_equal(F.content.data, "Subject: x\r\n\r\n.dot\r\n", F.content.len);
    assert_string_equal(F.last.sender, "sender@a.test");
    assert_int_equal(F.last.nrcpts, 1);
    assert_string_equal(F.last.rcpts[0].addr, "rcpt@b.test");
    assert_int_equal(session_state(s), SS_READY);
    /* an empty message */
    feed(s, "MAIL FROM:<>\r\nRCPT TO:<r@b.test>\r\nDATA\r\n.\r\n");
    char *r = take();
    assert_non_null(strstr(r, "250 2.0.0 Ok: queued"));
    assert_int_equal(F.content.len, 0);
    assert_string_equal(F.last.sender, "");
    session_free(s);
}

/* Feeding byte by byte must give the same content and replies as all at once. */
static void test_data_split_anywhere(void **state)
{
    const char *msg = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
                      "Received: x\r\nSubject: y\r\n\r\n...\r\n..\r\n.x\r\nline\r\n\r\n.\r\n"
                      "NOOP\r\n";
    struct session *s = ready();
    feed(s, msg);
    char whole[4096];
    const char *all = take();
    assert_true(strlen(all) < sizeof whole);
    memcpy(whole, all, strlen(all) + 1);
    char content[4096];
    memcpy(content, F.content.data, F.content.len);
    size_t clen = F.content.len;
    session_free(s);

    s = ready();
    for (size_t i = 0; msg[i]; i++)
        feedn(s, msg + i, 1);
    assert_string_equal(take(), whole);
    assert_int_equal(F.content.len, clen);
    assert_memory_equal(F.content.data, content, clen);
    const char expected[] = "Received: x\r\nSubject: y\r\n\r\n..\r\n.\r\nx\r\nline\r\n\r\n";
    assert_int_equal(clen, sizeof expected - 1);
    assert_memory_equal(content, expected, clen);
    session_free(s);
}

/* SMTP smuggling: only CRLF.CRLF ends DATA; bare LF/CR refuse the whole message. */
static void test_smuggling_refused(void **state)
{
    const char *variants[] = {
        "Subject: a\r\n\r\nhello\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<v@y.test>\nDATA\n"
        "forged\n.\n\r\n.\r\n",
        "Subject: a\r\n\r\nhello\r\n.\nMAIL FROM:<evil@x.test>\r\n\r\n.\r\n",
        "Subject: a\r\n\r\nhello\n.\r\nMAIL FROM:<evil@x.test>\r\n\r\n.\r\n",
        "Subject: a\r\n\r\nhello\r.\r\nMAIL FROM:<evil@x.test>\r\n\r\n.\r\n",
        "Subject: a\r\n\r\nhello\r\n.\rMAIL FROM:<evil@x.test>\r\n\r\n.\r\n",
    };
    for (size_t i = 0; i < ARRAY_LEN(variants); i++) {
        struct session *s = ready();
        feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n");
        take();
        int mails_before = F.mail_calls;
        feed(s, variants[i]);
        char *r = take();
        if (strncmp(r, "550 5.6.0", 9) != 0)
            fail_msg("variant %zu: got \"%s\"", i, r);
        if (strstr(r, "\r\n") != r + strlen(r) - 2) /* exactly one reply: no second message */
            fail_msg("variant %zu: more than one reply: \"%s\"", i, r);
        assert_int_equal(F.mail_calls, mails_before); /* the forged MAIL was content */
        assert_int_equal(F.end_calls, 0);
        assert_true(F.abort_calls >= 1);
        expect(s, "NOOP\r\n", "250 2.0.0");
        session_free(s);
        teardown(state);
        setup(state);
    }
}

static void test_size_limits(void **state)
{
    struct session *s = ready();
    expect(s, "MAIL FROM:<a@b.test> SIZE=20000\r\n", "552 5.3.4");
    expect(s, "MAIL FROM:<a@b.test> SIZE=9000\r\n", "250 2.1.0");
    expect(s, "RCPT TO:<c@d.test>\r\n", "250");
    expect(s, "DATA\r\n", "354");
    static char big[12000];
    memset(big, 'z', sizeof big);
    for (size_t i = 100; i < sizeof big; i += 100)
        big[i - 2] = '\r', big[i - 1] = '\n';
    feedn(s, big, sizeof big);
    assert_string_equal(take(), ""); /* read to its end first */
    expect(s, "\r\n.\r\n", "552 5.3.4");
    assert_int_equal(F.end_calls, 0);
    assert_true(F.abort_calls >= 1);
    assert_int_equal(session_state(s), SS_READY);
    session_free(s);
}

static void test_received_loop(void **state)
{
    for (int count = 100; count <= 101; count++) {
        struct session *s = ready();
        feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n");
        take();
        P.size_limit = 1 << 20;
        for (int i = 0; i < count; i++)
            feed(s, "Received: from x by y; Sun, 29 Nov 2026 12:00:00 +0000\r\n");
        feed(s, "Subject: loop\r\n\r\nReceived: in the body does not count\r\n.\r\n");
        char *r = take();
        if (count == 100)
            assert_true(strncmp(r, "250 2.0.0", 9) == 0);
        else
            assert_true(strncmp(r, "554 5.4.6", 9) == 0);
        session_free(s);
        P.size_limit = 10000;
    }
}

static void test_bdat(void **state)
{
    struct session *s = ready();
    feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n");
    take();
    /* binary content, CR and LF alone, a dot line: kept byte for byte */
    const char chunk1[] = "Sub: b\r\n\r\n\0\r.\n\r\n.\r\n";
    char cmd[64];
    snprintf(cmd, sizeof cmd, "BDAT %zu\r\n", sizeof chunk1 - 1);
    feed(s, cmd);
    feedn(s, chunk1, sizeof chunk1 - 1);
    char *r = take();
    assert_true(strncmp(r, "250 2.0.0", 9) == 0);
    expect(s, "DATA\r\n", "503 5.5.1 DATA not allowed in a BDAT transaction");
    expect(s, "BDAT 3 LAST\r\nxyz", "250 2.0.0 Ok: queued");
    assert_int_equal(F.content.len, sizeof chunk1 - 1 + 3);
    assert_memory_equal(F.content.data, chunk1, sizeof chunk1 - 1);
    assert_memory_equal(F.content.data + sizeof chunk1 - 1, "xyz", 3);
    /* BDAT 0 LAST ends a message */
    feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 4\r\nabcdBDAT 0 LAST\r\n");
    r = take();
    assert_non_null(strstr(r, "250 2.0.0 Ok: queued"));
    assert_int_equal(F.end_calls, 2);
    /* BDAT without recipients: the chunk is read and refused, the session goes on */
    feed(s, "MAIL FROM:<a@b.test>\r\nBDAT 5 LAST\r\nRSET\r\nNOOP\r\n");
    r = take();
    assert_non_null(strstr(r, "503 5.5.1 No valid recipients"));
    assert_non_null(strstr(r, "250 2.0.0 Ok\r\n"));
    assert_int_equal(F.end_calls, 2);
    session_free(s);
}

static void test_bdat_too_big(void **state)
{
    struct session *s = ready();
    feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n");
    take();
    static char chunk[8000];
    memset(chunk, 'q', sizeof chunk);
    feed(s, "BDAT 8000\r\n");
    feedn(s, chunk, sizeof chunk);
    expect(s, "", "250 2.0.0");
    feed(s, "BDAT 8000\r\n");
    feedn(s, chunk, sizeof chunk);
    expect(s, "", "552 5.3.4");
    feed(s, "BDAT 8000 LAST\r\n");
    feedn(s, chunk, sizeof chunk);
    expect(s, "", "552 5.3.4");
    assert_int_equal(F.end_calls, 0);
    expect(s, "NOOP\r\n", "250 2.0.0");
    session_free(s);
}

static void test_pipelining_in_order(void **state)
{
    struct session *s = ready();
    F.rcpt_refuse_code = 0;
    feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<bad\r\nDATA\r\n");
    char *r = take();
    /* four replies, in the order of the commands */
    char *l2 = strstr(r, "\r\n") + 2, *l3 = strstr(l2, "\r\n") + 2, *l4 = strstr(l3, "\r\n") + 2;
    assert_true(strncmp(r, "250 2.1.0 Ok\r\n", 14) == 0);
    assert_true(strncmp(l2, "250 2.1.5 Ok\r\n", 14) == 0);
    assert_true(strncmp(l3, "501 5.1.3 Bad recipient address syntax: ", 40) == 0);
    assert_string_equal(l4, "354 End data with <CR><LF>.<CR><LF>\r\n");
    session_free(s);
}

static void test_pending_host_calls(void **state)
{
    struct session *s = ready();
    F.rcpt_pending = true;
    const char *in = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nNOOP\r\n";
    size_t used = session_input(s, in, strlen(in));
    drain(s);
    assert_true(session_pending(s));
    assert_int_equal(used, strlen("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"));
    assert_string_equal(take(), "250 2.1.0 Ok\r\n");
    struct reply r;
    reply_set(&r, 550, "5.1.1", "User unknown");
    session_resume(s, &r);
    feed(s, in + used);
    assert_string_equal(take(), "550 5.1.1 User unknown\r\n250 2.0.0 Ok\r\n");
    /* a pending commit */
    F.rcpt_pending = false;
    F.end_pending = true;
    feed(s, "RCPT TO:<c@d.test>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n");
    assert_true(session_pending(s));
    take();
    reply_set(&r, 250, "2.0.0", "Ok: queued as Q1");
    session_resume(s, &r);
    feed(s, "NOOP\r\n");
    char *out = take();
    assert_true(strncmp(out, "250 2.0.0 Ok: queued as Q1\r\n250 2.0.0 Ok\r\n", 40) == 0);
    session_free(s);
}

static void test_error_limit(void **state)
{
    struct session *s = ready();
    for (int i = 0; i < 10; i++)
        expect(s, "BOGUS\r\n", "500");
    assert_int_equal(session_state(s), SS_READY);
    feed(s, "BOGUS\r\n");
    char *r = take();
    assert_non_null(strstr(r, "421 4.7.0"));
    assert_true(session_wants_close(s));
    assert_int_equal(session_state(s), SS_CLOSED);
    assert_int_equal(feed(s, "NOOP\r\n"), 0); /* nothing more is read */
    session_free(s);
}

static void test_recipient_limit(void **state)
{
    struct session *s = ready();
    feed(s, "MAIL FROM:<a@b.test>\r\n");
    take();
    char line[64];
    for (int i = 0; i < 100; i++) {
        snprintf(line, sizeof line, "RCPT TO:<r%d@d.test>\r\n", i);
        expect(s, line, "250 2.1.5");
    }
    expect(s, "RCPT TO:<r100@d.test>\r\n", "452 4.5.3");
    assert_int_equal(session_errors(s), 0); /* a limit, not the client's error */
    session_free(s);
}

static void test_smtputf8(void **state)
{
    struct session *s = ready();
    expect(s, "MAIL FROM:<j\xc3\xb6rg@b.test>\r\n", "553 5.6.7");
    expect(s, "MAIL FROM:<a@b.test>\r\n", "250");
    expect(s, "RCPT TO:<j\xc3\xb6rg@d.test>\r\n", "553 5.6.7");
    expect(s, "RSET\r\n", "250");
    expect(s, "MAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8\r\n", "250 2.1.0");
    expect(s, "RCPT TO:<\xc3\xa9l\xc3\xa8ve@\xc3\xa9" "cole.test>\r\n", "250 2.1.5");
    session_free(s);
}

static void test_postmaster_and_null_sender(void **state)
{
    struct session *s = ready();
    expect(s, "MAIL FROM:<>\r\n", "250 2.1.0");
    expect(s, "RCPT TO:<POSTMASTER>\r\n", "250 2.1.5");
    assert_true(F.last_rcpt_flags & ADDR_F_POSTMASTER);
    session_free(s);
}

static void test_refused_mail_leaves_no_transaction(void **state)
{
    struct session *s = ready();
    F.mail_refuse_code = 553;
    expect(s, "MAIL FROM:<a@b.test>\r\n", "553");
    expect(s, "RCPT TO:<c@d.test>\r\n", "503 5.5.1");
    F.mail_refuse_code = 0;
    expect(s, "MAIL FROM:<a@b.test>\r\n", "250");
    session_free(s);
}

static void test_starttls_discards_pipelined_input(void **state)
{
    struct session *s = ready();
    const char *in = "STARTTLS\r\nRSET\r\nMAIL FROM:<injected@x.test>\r\n";
    size_t used = session_input(s, in, strlen(in));
    drain(s);
    assert_int_equal(used, strlen(in)); /* all consumed: the rest is thrown away */
    assert_string_equal(take(), "220 2.0.0 Ready to start TLS\r\n");
    assert_true(session_wants_tls(s));
    assert_int_equal(F.mail_calls, 0);
    session_tls_started(s);
    assert_true(session_tls(s));
    expect(s, "MAIL FROM:<a@b.test>\r\n", "503 5.5.1 Send HELO/EHLO first");
    feed(s, "EHLO c.test\r\n");
    char *r = take();
    assert_null(strstr(r, "STARTTLS"));
    expect(s, "STARTTLS\r\n", "503 5.5.1");
    assert_string_equal(session_protocol(s), "ESMTPS");
    session_free(s);
    P.starttls = false;
    s = ready();
    expect(s, "STARTTLS\r\n", "502 5.5.1");
    session_free(s);
}

static void test_auth(void **state)
{
    P.auth = true;
    P.require_auth = true;
    struct session *s = ready();
    /* no TLS yet: AUTH is not offered and is refused */
    expect(s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", "538 5.7.11");
    expect(s, "MAIL FROM:<a@b.test>\r\n", "530 5.7.0");
    session_free(s);

    P.auth_plain_ok = true; /* the loopback development switch */
    s = start();
    feed(s, "EHLO c.test\r\n");
    assert_non_null(strstr(take(), "250-AUTH PLAIN LOGIN\r\n"));
    F.auth_ok = false;
    /* "\0alice\0secret" */
    expect(s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", "535 5.7.8");
    assert_string_equal(F.auth_user, "alice");
    assert_string_equal(F.auth_pass, "secret");
    expect(s, "AUTH PLAIN\r\n", "334 ");
    expect(s, "*\r\n", "501 5.0.0");
    expect(s, "AUTH PLAIN\r\n", "334 ");
    expect(s, "not base64!\r\n", "501 5.5.2");
    expect(s, "AUTH CRAM-MD5\r\n", "504 5.5.4");
    F.auth_ok = true;
    expect(s, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6");
    expect(s, "Ym9i\r\n", "334 UGFzc3dvcmQ6");
    feed(s, "cGFzcw==\r\n");
    assert_string_equal(F.auth_user, "bob");
    assert_string_equal(F.auth_pass, "pass");
    assert_true(strncmp(take(), "235 2.7.0", 9) == 0);
    session_set_auth_user(s, "bob@b.test");
    expect(s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", "503 5.5.1");
    expect(s, "MAIL FROM:<bob@b.test>\r\n", "250 2.1.0");
    assert_string_equal(session_protocol(s), "ESMTPA");
    session_free(s);
}

static void test_timeout_and_shutdown(void **state)
{
    struct session *s = ready();
    session_timeout(s);
    drain(s);
    assert_true(strncmp(take(), "421 4.4.2", 9) == 0);
    assert_true(session_wants_close(s));
    session_free(s);

    s = ready();
    session_shutdown(s);
    drain(s);
    assert_true(strncmp(take(), "421 4.3.2", 9) == 0);
    session_free(s);

    /* mid-transaction: the transaction finishes first */
    s = ready();
    feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n");
    take();
    session_shutdown(s);
    drain(s);
    assert_string_equal(take(), "");
    feed(s, "hi\r\n.\r\n");
    char *r = take();
    assert_non_null(strstr(r, "250 2.0.0 Ok: queued"));
    assert_non_null(strstr(r, "421 4.3.2"));
    assert_true(session_wants_close(s));
    session_free(s);
}

static void test_disconnect_mid_data_aborts(void **state)
{
    struct session *s = ready();
    feed(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\npartial");
    assert_int_equal(F.abort_calls, 0);
    session_free(s);
    assert_int_equal(F.abort_calls, 1);
    assert_int_equal(F.end_calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ehlo_lists_extensions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_helo_and_bad_helo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sequence_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_address_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line_and_control_chars, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_transaction_and_dot_unstuffing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_data_split_anywhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_smuggling_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_received_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bdat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bdat_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_host_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recipient_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_smtputf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_postmaster_and_null_sender, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_mail_leaves_no_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_starttls_discards_pipelined_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_mid_data_aborts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
