/*
 * test_dsn: delivery status notifications (mail/dsn). Every composed report is parsed
 * back: CRLF-only lines of at most 998 octets, the top-level header, the multipart/report
 * structure and boundary, the RFC 3464 per-message and per-recipient fields, and the third
 * part (whole message, headers, encoded headers, none). Also: RET=HDRS/FULL, too large,
 * delay and success reports, the SMTPUTF8 (RFC 6533) variant, ORCPT and ENVID decoding,
 * folding of long values, a boundary that occurs in the original, and a too small buffer.
 *
 * With TERN_DSN_DUMP=DIR set, each report is also written to DIR/NAME.eml, for
 * tests/integration/test_dsn_python.py, which checks them with Python's email package.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"
#include "lib/mem.h"
#include "mail/dsn.h"

/* ---- a small MIME reader ---- */

static void check_lines(const char *s, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            if (i + 1 >= n || s[i + 1] != '\n')
                fail_msg("bare CR at offset %zu", i);
            i++;
            col = 0;
            continue;
        }
        if (s[i] == '\n')
            fail_msg("bare LF at offset %zu", i);
        if (++col > 998)
            fail_msg("line longer than 998 octets at offset %zu", i);
    }
    if (n < 2 || s[n - 2] != '\r' || s[n - 1] != '\n')
        fail_msg("does not end with CRLF");
}

/* The unfolded value of field name in a header block (NULL if absent; caller frees). */
static char *field(const char *blk, size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t p = 0; p < n;) {
        const char *eol = memmem(blk + p, n - p, "\r\n", 2);
        size_t end = eol ? (size_t)(eol - blk) : n;
        if (end - p > nl && strncasecmp(blk + p, name, nl) == 0 && blk[p + nl] == ':') {
            char *v = xmalloc(n + 1);
            size_t o = 0;
            size_t q = p + nl + 1;
            for (;;) {
                memcpy(v + o, blk + q, end - q);
                o += end - q;
                if (end + 2 < n && (blk[end + 2] == ' ' || blk[end + 2] == '\t')) {
                    q = end + 2; /* a continuation line: unfold */
                    eol = memmem(blk + q, n - q, "\r\n", 2);
                    end = eol ? (size_t)(eol - blk) : n;
                    continue;
                }
                break;
            }
            v[o] = '\0';
            char *t = v;
            while (*t == ' ' || *t == '\t')
                t++;
            memmove(v, t, strlen(t) + 1);
            return v;
        }
        p = end + 2;
    }
    return NULL;
}

static void expect_field(const char *blk, size_t n, const char *name, const char *want)
{
    char *v = field(blk, n, name);
    if (v == NULL)
        fail_msg("no field %s", name);
    if (strcmp(v, want) != 0)
        fail_msg("%s: got \"%s\", want \"%s\"", name, v, want);
    free(v);
}

static void expect_no_field(const char *blk, size_t n, const char *name)
{
    char *v = field(blk, n, name);
    if (v != NULL)
        fail_msg("unexpected field %s: %s", name, v);
}

struct part {
    const char *hdr, *body;
    size_t hlen, blen;
};

struct report {
    char *text;
    size_t len;
    const char *hdr; /* the top-level header */
    size_t hlen;
    char boundary[128];
    struct part parts[4];
    size_t nparts;
};

static void parse_report(struct report *rep)
{
    check_lines(rep->text, rep->len);
    const char *sep = memmem(rep->text, rep->len, "\r\n\r\n", 4);
    assert_non_null(sep);
    rep->hdr = rep->text;
    rep->hlen = (size_t)(sep - rep->text) + 2;
    char *ct = field(rep->hdr, rep->hlen, "Content-Type");
    assert_non_null(ct);
    assert_true(strncmp(ct, "multipart/report;", 17) == 0);
    char *b = strstr(ct, "boundary=\"");
    assert_non_null(b);
    b += 10;
    char *e = strchr(b, '"');
    assert_non_null(e);
    snprintf(rep->boundary, sizeof rep->boundary, "%.*s", (int)(e - b), b);
    free(ct);

    char delim[160];
    snprintf(delim, sizeof delim, "\r\n--%s", rep->boundary);
    size_t dl = strlen(delim);
    const char *body = sep + 2; /* keep the CRLF before the first delimiter */
    size_t n = rep->len - (size_t)(body - rep->text);
    const char *p = memmem(body, n, delim, dl);
    assert_non_null(p);
    rep->nparts = 0;
    for (;;) {
        const char *after = p + dl;
        if (after[0] == '-' && after[1] == '-') {
            assert_memory_equal(after + 2, "\r\n", 2);
            assert_true(after + 4 == rep->text + rep->len); /* nothing after the end */
            break;
        }
        assert_memory_equal(after, "\r\n", 2);
        const char *start = after + 2;
        const char *next = memmem(start, (size_t)(rep->text + rep->len - start), delim, dl);
        assert_non_null(next);
        assert_true(rep->nparts < 4);
        struct part *pt = &rep->parts[rep->nparts++];
        const char *hs = memmem(start, (size_t)(next - start) + 2, "\r\n\r\n", 4);
        if (start[0] == '\r' && start[1] == '\n') { /* no header */
            pt->hdr = start;
            pt->hlen = 0;
            pt->body = start + 2;
        } else {
            assert_non_null(hs);
            pt->hdr = start;
            pt->hlen = (size_t)(hs - start) + 2;
            pt->body = hs + 4;
        }
        pt->blen = (size_t)(next - pt->body);
        p = next;
    }
}

/* The blocks of a delivery-status body: [0] per-message, then one per recipient. */
static size_t status_blocks(const struct part *pt, const char **blk, size_t *len, size_t max)
{
    size_t nb = 0;
    const char *s = pt->body, *end = pt->body + pt->blen;
    while (s < end && nb < max) {
        const char *e = memmem(s, (size_t)(end - s), "\r\n\r\n", 4);
        const char *stop = e ? e + 2 : end;
        blk[nb] = s;
        len[nb++] = (size_t)(stop - s);
        s = e ? e + 4 : end;
    }
    return nb;
}

static char *part_type(const struct part *pt)
{
    return field(pt->hdr, pt->hlen, "Content-Type");
}

static void expect_type(const struct part *pt, const char *want_prefix)
{
    char *t = part_type(pt);
    assert_non_null(t);
    if (strncmp(t, want_prefix, strlen(want_prefix)) != 0)
        fail_msg("part type \"%s\", want \"%s\"", t, want_prefix);
    free(t);
}

/* ---- fixtures ---- */

static const char original[] = "Received: from client.example.org\r\n"
                               "From: Sender <sender@example.org>\r\n"
                               "To: bob@example.net\r\n"
                               "Subject: hello\r\n"
                               "Message-ID: <orig@example.org>\r\n"
                               "\r\n"
                               "Body line one.\r\n"
                               "Body line two.\r\n";

static struct dsn_rcpt failed_rcpt(void)
{
    struct dsn_rcpt rc = {
        .addr = "bob@example.net",
        .action = "failed",
        .status = "5.1.1",
        .remote_mta = "mx.example.net",
        .diagnostic = "smtp; 550 5.1.1 <bob@example.net>: no such user",
        .last_attempt = 1700000100,
    };
    return rc;
}

static struct dsn_report base_report(enum dsn_kind kind, const struct dsn_rcpt *rcpts, size_t n)
{
    struct dsn_report r = {
        .kind = kind,
        .reporting_mta = "mx.example.test",
        .from = "MAILER-DAEMON@mx.example.test",
        .to = "sender@example.org",
        .orig_qid = "Q1234ABCD",
        .arrival = 1700000000,
        .now = 1700000200,
        .message_id = "<dsn.Q1234ABCD@mx.example.test>",
        .ret = DSN_RET_UNSPEC,
        .return_limit = 50 * 1024,
        .rcpts = rcpts,
        .nrcpts = n,
        .original = original,
        .original_len = sizeof original - 1,
    };
    return r;
}

static void dump(const char *name, const struct report *rep)
{
    const char *dir = getenv("TERN_DSN_DUMP");
    if (dir == NULL)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s/%s.eml", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(rep->text, 1, rep->len, f);
    fclose(f);
}

static void compose(const struct dsn_report *r, struct report *rep, const char *name)
{
    struct buf b = BUF_INIT(1 << 20);
    assert_int_equal(dsn_compose(r, &b), 0);
    memset(rep, 0, sizeof *rep);
    rep->text = buf_steal(&b, &rep->len);
    dump(name, rep);
    parse_report(rep);
}

static void expect_common_header(const struct report *rep, const char *subject)
{
    expect_field(rep->hdr, rep->hlen, "From",
                 "Mail Delivery System <MAILER-DAEMON@mx.example.test>");
    expect_field(rep->hdr, rep->hlen, "To", "<sender@example.org>");
    expect_field(rep->hdr, rep->hlen, "Subject", subject);
    expect_field(rep->hdr, rep->hlen, "Date", "Tue, 14 Nov 2023 22:16:40 +0000");
    expect_field(rep->hdr, rep->hlen, "Message-ID", "<dsn.Q1234ABCD@mx.example.test>");
    expect_field(rep->hdr, rep->hlen, "MIME-Version", "1.0");
    expect_field(rep->hdr, rep->hlen, "Auto-Submitted", "auto-replied");
}

/* ---- tests ---- */

static void test_failure_full(void **state)
{
    struct dsn_rcpt rc = failed_rcpt();
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    struct report rep;
    compose(&r, &rep, "failure_full");
    expect_common_header(&rep, "Undelivered Mail Returned to Sender");
    char *ct = field(rep.hdr, rep.hlen, "Content-Type");
    assert_non_null(strstr(ct, "report-type=delivery-status;"));
    free(ct);
    expect_no_field(rep.hdr, rep.hlen, "Content-Transfer-Encoding");
    assert_int_equal(rep.nparts, 3);

    expect_type(&rep.parts[0], "text/plain; charset=us-ascii");
    assert_non_null(memmem(rep.parts[0].body, rep.parts[0].blen, "bob@example.net", 15));
    assert_non_null(memmem(rep.parts[0].body, rep.parts[0].blen, "no such user", 12));
    assert_non_null(
        memmem(rep.parts[0].body, rep.parts[0].blen, "original message is attached", 28));

    expect_type(&rep.parts[1], "message/delivery-status");
    const char *blk[8];
    size_t len[8];
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 2);
    expect_field(blk[0], len[0], "Reporting-MTA", "dns; mx.example.test");
    expect_field(blk[0], len[0], "Arrival-Date", "Tue, 14 Nov 2023 22:13:20 +0000");
    expect_field(blk[0], len[0], "X-Tern-Queue-ID", "Q1234ABCD");
    expect_no_field(blk[0], len[0], "Original-Envelope-Id");
    expect_field(blk[1], len[1], "Final-Recipient", "rfc822; bob@example.net");
    expect_field(blk[1], len[1], "Action", "failed");
    expect_field(blk[1], len[1], "Status", "5.1.1");
    expect_field(blk[1], len[1], "Remote-MTA", "dns; mx.example.net");
    expect_field(blk[1], len[1], "Diagnostic-Code",
                 "smtp; 550 5.1.1 <bob@example.net>: no such user");
    expect_field(blk[1], len[1], "Last-Attempt-Date", "Tue, 14 Nov 2023 22:15:00 +0000");
    expect_no_field(blk[1], len[1], "Original-Recipient");
    expect_no_field(blk[1], len[1], "Will-Retry-Until");

    /* the whole original, byte for byte */
    expect_type(&rep.parts[2], "message/rfc822");
    assert_int_equal(rep.parts[2].blen, sizeof original - 1);
    assert_memory_equal(rep.parts[2].body, original, sizeof original - 1);
    free(rep.text);
}

static void test_failure_hdrs(void **state)
{
    struct dsn_rcpt rc = failed_rcpt();
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    r.ret = DSN_RET_HDRS;
    struct report rep;
    compose(&r, &rep, "failure_hdrs");
    assert_int_equal(rep.nparts, 3);
    expect_type(&rep.parts[2], "text/rfc822-headers");
    size_t hl = dsn_header_length(original, sizeof original - 1);
    assert_int_equal(rep.parts[2].blen, hl - 2); /* the header lines, not the empty line */
    assert_memory_equal(rep.parts[2].body, original, hl - 2);
    assert_null(memmem(rep.text, rep.len, "Body line", 9));
    free(rep.text);
}

static void test_failure_too_large(void **state)
{
    struct dsn_rcpt rc = failed_rcpt();
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    r.ret = DSN_RET_FULL;
    r.return_limit = 100; /* smaller than the original */
    struct report rep;
    compose(&r, &rep, "failure_too_large");
    expect_type(&rep.parts[2], "text/rfc822-headers");
    assert_null(memmem(rep.text, rep.len, "Body line", 9));
    assert_non_null(memmem(rep.parts[0].body, rep.parts[0].blen, "too large", 9));
    free(rep.text);
    /* exactly at the limit it is returned whole */
    r.return_limit = sizeof original - 1;
    compose(&r, &rep, "failure_at_limit");
    expect_type(&rep.parts[2], "message/rfc822");
    free(rep.text);
}

static void test_delay(void **state)
{
    struct dsn_rcpt rc = {.addr = "carol@example.net", .action = "delayed", .status = "4.4.1",
                          .diagnostic = "x-tern; connection timed out",
                          .will_retry_until = 1700432000};
    struct dsn_report r = base_report(DSN_DELAY, &rc, 1);
    r.ret = DSN_RET_FULL; /* headers only all the same: no failure in it */
    struct report rep;
    compose(&r, &rep, "delay");
    expect_common_header(&rep, "Delivery Status Notification (Delay)");
    const char *blk[8];
    size_t len[8];
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 2);
    expect_field(blk[1], len[1], "Action", "delayed");
    expect_field(blk[1], len[1], "Status", "4.4.1");
    expect_field(blk[1], len[1], "Will-Retry-Until", "Sun, 19 Nov 2023 22:13:20 +0000");
    expect_no_field(blk[1], len[1], "Remote-MTA");
    expect_no_field(blk[1], len[1], "Last-Attempt-Date");
    expect_type(&rep.parts[2], "text/rfc822-headers");
    assert_non_null(memmem(rep.parts[0].body, rep.parts[0].blen, "keeps trying", 12));
    free(rep.text);
}

static void test_success(void **state)
{
    struct dsn_rcpt rc[3] = {
        {.addr = "dave@example.test", .action = "delivered", .status = "2.0.0"},
        {.addr = "list@example.test", .action = "expanded", .status = "2.0.0"},
        {.addr = "far@example.net", .action = "relayed", .status = "2.0.0",
         .remote_mta = "mx.example.net"},
    };
    struct dsn_report r = base_report(DSN_SUCCESS, rc, 3);
    struct report rep;
    compose(&r, &rep, "success");
    expect_common_header(&rep, "Delivery Status Notification (Success)");
    const char *blk[8];
    size_t len[8];
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 4);
    expect_field(blk[1], len[1], "Action", "delivered");
    expect_field(blk[2], len[2], "Action", "expanded");
    expect_field(blk[3], len[3], "Action", "relayed");
    for (int i = 1; i <= 3; i++) {
        expect_field(blk[i], len[i], "Status", "2.0.0");
        expect_no_field(blk[i], len[i], "Will-Retry-Until");
    }
    expect_type(&rep.parts[2], "text/rfc822-headers");
    free(rep.text);
    /* a missing or malformed status is derived from the action */
    rc[0].status = "2.00.0";
    rc[1].status = NULL;
    compose(&r, &rep, "success_status");
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 4);
    expect_field(blk[1], len[1], "Status", "2.0.0");
    expect_field(blk[2], len[2], "Status", "2.0.0");
    free(rep.text);
}

static void test_smtputf8(void **state)
{
    static const char orig8[] = "From: J\xc3\xbcrgen <j\xc3\xbcrgen@example.org>\r\n"
                                "Subject: Gr\xc3\xbc\xc3\x9f" "e\r\n\r\nHall\xc3\xb6\r\n";
    struct dsn_rcpt rc = failed_rcpt();
    rc.addr = "\xe7\x94\xa8\xe6\x88\xb7@example.net";
    rc.orcpt = "utf-8;\\x{7528}\\x{6237}@example.net";
    rc.diagnostic = "smtp; 550 5.1.1 unknown \xc3\xbc\x01ser";
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    r.smtputf8 = true;
    r.to = "j\xc3\xbcrgen@example.org";
    r.original = orig8;
    r.original_len = sizeof orig8 - 1;
    struct report rep;
    compose(&r, &rep, "smtputf8");
    char *ct = field(rep.hdr, rep.hlen, "Content-Type");
    assert_non_null(strstr(ct, "report-type=global-delivery-status;"));
    free(ct);
    expect_field(rep.hdr, rep.hlen, "To", "<j\xc3\xbcrgen@example.org>");
    expect_field(rep.hdr, rep.hlen, "Content-Transfer-Encoding", "8bit");
    expect_type(&rep.parts[0], "text/plain; charset=utf-8");
    expect_type(&rep.parts[1], "message/global-delivery-status");
    expect_type(&rep.parts[2], "message/global");
    const char *blk[8];
    size_t len[8];
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 2);
    expect_field(blk[1], len[1], "Final-Recipient", "utf-8; \xe7\x94\xa8\xe6\x88\xb7@example.net");
    expect_field(blk[1], len[1], "Original-Recipient",
                 "utf-8; \xe7\x94\xa8\xe6\x88\xb7@example.net");
    /* the control character became a space; the UTF-8 stayed */
    expect_field(blk[1], len[1], "Diagnostic-Code", "smtp; 550 5.1.1 unknown \xc3\xbc ser");
    assert_memory_equal(rep.parts[2].body, orig8, sizeof orig8 - 1);
    free(rep.text);

    /* headers only: message/global-headers */
    r.ret = DSN_RET_HDRS;
    compose(&r, &rep, "smtputf8_hdrs");
    expect_type(&rep.parts[2], "message/global-headers");
    free(rep.text);

    /* the same recipient in an ASCII report keeps the ASCII forms */
    r.smtputf8 = false;
    r.to = "sender@example.org";
    r.original = original;
    r.original_len = sizeof original - 1;
    compose(&r, &rep, "utf8_in_ascii_report");
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 2);
    expect_field(blk[1], len[1], "Final-Recipient", "utf-8; \\x{7528}\\x{6237}@example.net");
    expect_field(blk[1], len[1], "Original-Recipient", "utf-8; \\x{7528}\\x{6237}@example.net");
    expect_field(blk[1], len[1], "Diagnostic-Code", "smtp; 550 5.1.1 unknown ?? ser");
    for (size_t i = 0; i < rep.len; i++)
        assert_true((unsigned char)rep.text[i] < 0x80);
    free(rep.text);
}

static void test_orcpt_envid(void **state)
{
    struct dsn_rcpt rc[4] = {failed_rcpt(), failed_rcpt(), failed_rcpt(), failed_rcpt()};
    rc[0].orcpt = "rfc822;first+2Blast@example.org";   /* xtext: a "+" */
    rc[1].orcpt = "RFC822;plain@example.org";
    rc[2].orcpt = "rfc822;bad+ZZxtext@example.org";    /* malformed: kept as given */
    rc[3].orcpt = "rfc822;cr+0D+0Ainjection@example.org"; /* decodes to CR LF: kept */
    struct dsn_report r = base_report(DSN_FAILURE, rc, 4);
    r.envid = "QQ+2B314159+3Dx";
    struct report rep;
    compose(&r, &rep, "orcpt_envid");
    const char *blk[8];
    size_t len[8];
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 5);
    expect_field(blk[0], len[0], "Original-Envelope-Id", "QQ+314159=x");
    expect_field(blk[1], len[1], "Original-Recipient", "rfc822; first+last@example.org");
    expect_field(blk[2], len[2], "Original-Recipient", "rfc822; plain@example.org");
    expect_field(blk[3], len[3], "Original-Recipient", "rfc822; bad+ZZxtext@example.org");
    expect_field(blk[4], len[4], "Original-Recipient",
                 "rfc822; cr+0D+0Ainjection@example.org");
    /* the per-recipient order of RFC 3464 §2.3: Original-Recipient first */
    assert_true(strncmp(blk[1], "Original-Recipient:", 19) == 0);
    free(rep.text);
}

static void test_long_values_folded(void **state)
{
    /* a long multi-line remote reply and a 2000-octet run without white space */
    size_t n = 6000;
    char *diag = xmalloc(n + 1);
    size_t o = (size_t)snprintf(diag, n, "smtp; 550-5.7.1 first line\r\n550 5.7.1");
    for (int i = 0; o < 1500; i++)
        o += (size_t)snprintf(diag + o, n - o, " word%d", i);
    diag[o++] = ' ';
    for (int i = 0; i < 2000; i++)
        diag[o++] = (char)('a' + i % 26);
    diag[o] = '\0';
    struct dsn_rcpt rc = failed_rcpt();
    rc.diagnostic = diag;
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    struct report rep;
    compose(&r, &rep, "long_values"); /* parse_report checks the line lengths */
    const char *blk[8];
    size_t len[8];
    assert_int_equal(status_blocks(&rep.parts[1], blk, len, 8), 2);
    char *v = field(blk[1], len[1], "Diagnostic-Code");
    assert_non_null(v);
    /* unfolded: the text with CR LF turned into a space; the long run is cut by a space */
    assert_true(strncmp(v, "smtp; 550-5.7.1 first line 550 5.7.1 word0 word1", 48) == 0);
    assert_non_null(strstr(v, "word100 word101"));
    /* the 2000-octet run is all there, broken twice (about 997 octets a line) */
    const char *run = strstr(v, "abcdefghijklmnopqrstuvwxyz");
    assert_non_null(run);
    size_t letters = 0, spaces = 0;
    for (const char *q = run; *q; q++)
        *q == ' ' ? spaces++ : letters++;
    assert_int_equal(letters, 2000);
    assert_int_equal(spaces, 2);
    free(v);
    /* the folded lines are short where there is white space */
    const char *dc = memmem(blk[1], len[1], "Diagnostic-Code:", 16);
    const char *eol = memmem(dc, len[1], "\r\n", 2);
    assert_true(eol - dc <= 78);
    free(rep.text);
    free(diag);
}

static void test_unclean_original(void **state)
{
    /* a body line longer than 998 octets: only the headers can be returned */
    size_t n = 4000;
    char *msg = xmalloc(n);
    size_t o = (size_t)snprintf(msg, n, "Subject: long\r\n\r\n");
    memset(msg + o, 'x', 1500);
    o += 1500;
    memcpy(msg + o, "\r\n", 2);
    o += 2;
    struct dsn_rcpt rc = failed_rcpt();
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    r.original = msg;
    r.original_len = o;
    struct report rep;
    compose(&r, &rep, "unclean_body");
    expect_type(&rep.parts[2], "text/rfc822-headers");
    assert_int_equal(rep.parts[2].blen, 15);
    free(rep.text);

    /* bare LF in the body: same */
    static const char lf[] = "Subject: lf\r\n\r\nbare\nline\r\n";
    r.original = lf;
    r.original_len = sizeof lf - 1;
    compose(&r, &rep, "unclean_lf");
    expect_type(&rep.parts[2], "text/rfc822-headers");
    free(rep.text);

    /* a header line longer than 998: the headers go base64-encoded */
    o = (size_t)snprintf(msg, n, "X-Long: ");
    memset(msg + o, 'h', 1200);
    o += 1200;
    o += (size_t)snprintf(msg + o, n - o, "\r\nSubject: x\r\n\r\nbody\r\n");
    r.original = msg;
    r.original_len = o;
    compose(&r, &rep, "unclean_header");
    expect_type(&rep.parts[2], "text/rfc822-headers");
    expect_field(rep.parts[2].hdr, rep.parts[2].hlen, "Content-Transfer-Encoding", "base64");
    assert_null(memmem(rep.parts[2].body, rep.parts[2].blen, "hhhh", 4));
    free(rep.text);

    /* no original at all: two parts */
    r.original = NULL;
    r.original_len = 0;
    compose(&r, &rep, "no_original");
    assert_int_equal(rep.nparts, 2);
    free(rep.text);
    free(msg);
}

static void test_boundary_avoids_content(void **state)
{
    struct dsn_rcpt rc = failed_rcpt();
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    struct report first;
    compose(&r, &first, "boundary_first");
    /* an original that contains exactly that boundary line */
    char msg[512];
    int n = snprintf(msg, sizeof msg,
                     "Subject: trap\r\n\r\n--%s\r\nContent-Type: text/plain\r\n\r\n--%s--\r\n",
                     first.boundary, first.boundary);
    r.original = msg;
    r.original_len = (size_t)n;
    struct report second;
    compose(&r, &second, "boundary_second");
    assert_string_not_equal(first.boundary, second.boundary);
    assert_int_equal(second.nparts, 3);
    assert_memory_equal(second.parts[2].body, msg, (size_t)n);
    /* and one hidden in a diagnostic */
    char diag[200];
    snprintf(diag, sizeof diag, "smtp; 550 --%s", second.boundary);
    rc.diagnostic = diag;
    struct report third;
    compose(&r, &third, "boundary_third");
    assert_string_not_equal(third.boundary, second.boundary);
    assert_int_equal(third.nparts, 3);
    free(first.text);
    free(second.text);
    free(third.text);
}

static void test_buffer_too_small(void **state)
{
    struct dsn_rcpt rc = failed_rcpt();
    struct dsn_report r = base_report(DSN_FAILURE, &rc, 1);
    struct buf b = BUF_INIT(600);
    assert_int_equal(dsn_compose(&r, &b), -1);
    assert_true(b.len <= 600);
    buf_release(&b);
}

static void test_header_length(void **state)
{
    assert_int_equal(dsn_header_length("A: b\r\n\r\nbody", 12), 8);
    assert_int_equal(dsn_header_length("\r\nbody", 6), 2);
    assert_int_equal(dsn_header_length("A: b\n\nbody", 10), 6);
    assert_int_equal(dsn_header_length("A: b\r\nC: d\r\n", 12), 12);
    assert_int_equal(dsn_header_length("A: b", 4), 4);
    assert_int_equal(dsn_header_length("", 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failure_full),       cmocka_unit_test(test_failure_hdrs),
        cmocka_unit_test(test_failure_too_large),  cmocka_unit_test(test_delay),
        cmocka_unit_test(test_success),            cmocka_unit_test(test_smtputf8),
        cmocka_unit_test(test_orcpt_envid),        cmocka_unit_test(test_long_values_folded),
        cmocka_unit_test(test_unclean_original),   cmocka_unit_test(test_boundary_avoids_content),
        cmocka_unit_test(test_buffer_too_small),   cmocka_unit_test(test_header_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
