/*
 * fuzz_inject: libFuzzer target for src/mail/inject.c (what local programs hand to
 * tern-sendmail).
 *
 * Input: the first byte chooses the options (bit 0 -t, bit 1 no -i, bits 2-7 where to
 * split the rest into two reads); the rest is the message.
 * Properties checked for every input:
 *   - the result never depends on how the input was split into reads;
 *   - a prepared message fits max_size, its head ends with an empty line, every LF in the
 *     head is part of a CRLF, and no Bcc: field survives;
 *   - every recipient found passes addr_parse_mailbox and appears once;
 *   - inject_parse_addresses on the raw bytes never crashes, and what it returns parses.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mem.h"
#include "mail/address.h"
#include "mail/inject.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static void check_addr(void *arg, const char *addr)
{
    struct mailaddr a;
    CHECK(addr_parse_mailbox(addr, strlen(addr), ADDR_ALLOW_UTF8, &a) == NULL);
}

struct result {
    enum inject_status st;
    char *msg;
    size_t len;
    size_t nrcpts;
};

static struct result run(const struct inject_params *p, const char *s, size_t n, size_t split)
{
    struct inject *in = inject_new(p);
    enum inject_status st = inject_feed(in, s, split);
    if (st == INJECT_MORE)
        st = inject_feed(in, s + split, n - split);
    if (st == INJECT_MORE || st == INJECT_END)
        st = inject_finish(in);
    struct result r = {st, NULL, 0, 0};
    if (st == INJECT_OK) {
        size_t hl, bl;
        const char *h = inject_head(in, &hl), *b = inject_body(in, &bl);
        CHECK(hl >= 2 && memcmp(h + hl - 2, "\r\n", 2) == 0);
        CHECK(hl == 2 || (hl >= 4 && memcmp(h + hl - 4, "\r\n\r\n", 4) == 0));
        for (size_t i = 0; i < hl; i++)
            if (h[i] == '\n')
                CHECK(i > 0 && h[i - 1] == '\r');
        for (size_t i = 0; i + 4 <= hl; i++)
            if (i == 0 || h[i - 1] == '\n')
                CHECK(strncasecmp(h + i, "bcc:", 4) != 0 && strncasecmp(h + i, "bcc ", 4) != 0);
        CHECK(hl + bl <= p->max_size);
        r.len = hl + bl;
        r.msg = xmalloc(r.len + 1);
        memcpy(r.msg, h, hl);
        memcpy(r.msg + hl, b, bl);
        r.nrcpts = inject_nrcpts(in);
        for (size_t i = 0; i < r.nrcpts; i++) {
            check_addr(NULL, inject_rcpt(in, i));
            for (size_t j = 0; j < i; j++)
                CHECK(strcasecmp(inject_rcpt(in, i), inject_rcpt(in, j)) != 0);
        }
    }
    inject_free(in);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    struct inject_params p = {
        .extract_rcpts = data[0] & 1,
        .dot_ends = data[0] & 2,
        .domain = "host.example",
        .from_addr = "joe@host.example",
        .full_name = "Joe",
        .date = "Mon, 01 Jan 2029 00:00:00 +0000",
        .message_id = "<id@host.example>",
        .max_size = 3000,
        .max_rcpts = 50,
    };
    size_t split = n ? (size_t)(data[0] >> 2) * n / 63 : 0;
    if (split > n)
        split = n;
    struct result a = run(&p, s, n, n);
    struct result b = run(&p, s, n, split);
    CHECK(a.st == b.st && a.len == b.len && a.nrcpts == b.nrcpts);
    if (a.msg)
        CHECK(memcmp(a.msg, b.msg, a.len) == 0);
    free(a.msg);
    free(b.msg);

    char err[256];
    inject_parse_addresses(s, n, "host.example", check_addr, NULL, err, sizeof err);
    return 0;
}
