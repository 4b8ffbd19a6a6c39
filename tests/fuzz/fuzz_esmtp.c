/*
 * fuzz_esmtp: libFuzzer target for src/mail/esmtp.c.
 *
 * Input: the first byte chooses what the session offered (bit 0 SIZE, 1 8BITMIME,
 * 2 BINARYMIME, 3 SMTPUTF8, 4 DSN, 5 AUTH, 6 a SIZE limit of 10000), the rest is given to
 * esmtp_parse_mail, esmtp_parse_rcpt and the xtext functions. For text seeds, '?' (0x3f)
 * offers everything and '\x7f' adds the limit.
 * Properties checked for every input:
 *   - a verdict is either accepted (code 0) or 501/552/555 with an enhanced code and text;
 *   - accepted values respect their limits and are valid xtext, as given;
 *   - xtext: encode(x) is valid and decodes to x; a valid xtext decodes, and the decoded
 *     value re-encodes to an xtext that decodes to the same bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mail/esmtp.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static void check_verdict(bool ok, const struct esmtp_error *err)
{
    if (ok) {
        CHECK(err->code == 0);
        return;
    }
    CHECK(err->code == 501 || err->code == 552 || err->code == 555);
    CHECK(err->enh != NULL && err->text != NULL && err->text[0] != '\0');
    CHECK(strcmp(err->enh, err->code == 552 ? "5.3.4" : "5.5.4") == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t o = data[0];
    struct esmtp_offer offer = {
        .size = o & 1, .eightbitmime = o & 2, .binarymime = o & 4, .smtputf8 = o & 8,
        .dsn = o & 16, .auth = o & 32, .size_limit = (o & 64) ? 10000 : 0,
    };
    size_t n = size - 1;
    char *s = malloc(n ? n : 1);
    if (s == NULL)
        return 0;
    memcpy(s, data + 1, n);

    struct esmtp_error err;
    struct mail_params mp;
    bool ok = esmtp_parse_mail(s, n, &offer, &mp, &err);
    check_verdict(ok, &err);
    if (ok) {
        CHECK(strlen(mp.envid) <= ENVID_MAX && xtext_valid(mp.envid, strlen(mp.envid)));
        CHECK(strlen(mp.auth) <= AUTH_PARAM_MAX && xtext_valid(mp.auth, strlen(mp.auth)));
        if (offer.size_limit != 0)
            CHECK(mp.size <= offer.size_limit);
        if (mp.body == BODY_8BITMIME)
            CHECK(offer.eightbitmime);
        if (mp.body == BODY_BINARYMIME)
            CHECK(offer.binarymime);
        if (mp.smtputf8)
            CHECK(offer.smtputf8);
        if (mp.ret != DSN_RET_UNSPEC || mp.envid[0] != '\0')
            CHECK(offer.dsn);
    }

    struct rcpt_params rp;
    ok = esmtp_parse_rcpt(s, n, &offer, &rp, &err);
    check_verdict(ok, &err);
    if (ok) {
        size_t ol = strlen(rp.orcpt);
        CHECK(ol <= ORCPT_MAX);
        if (ol > 0) {
            const char *semi = strchr(rp.orcpt, ';');
            CHECK(semi != NULL && semi > rp.orcpt);
            CHECK(xtext_valid(semi + 1, ol - (size_t)(semi + 1 - rp.orcpt)));
        }
        if (rp.notify & DSN_NOTIFY_NEVER)
            CHECK(rp.notify == DSN_NOTIFY_NEVER);
        CHECK(rp.notify <= 15);
        if (rp.notify != 0 || ol > 0)
            CHECK(offer.dsn);
    }

    /* xtext round trips */
    size_t cap = n * 3 + 1;
    char *enc = malloc(cap), *dec = malloc(n + 1), *enc2 = malloc(cap), *dec2 = malloc(n + 1);
    if (enc && dec && enc2 && dec2) {
        size_t el = xtext_encode(s, n, enc, cap);
        CHECK(el != (size_t)-1 && el <= cap - 1);
        CHECK(xtext_valid(enc, el));
        CHECK(xtext_decode(enc, el, dec, n + 1) == n);
        CHECK(memcmp(dec, s, n) == 0);
        /* too small a buffer is refused, never overrun */
        if (el > 0)
            CHECK(xtext_encode(s, n, enc2, el) == (size_t)-1);

        bool valid = xtext_valid(s, n);
        size_t dl = xtext_decode(s, n, dec, n + 1);
        CHECK(valid == (dl != (size_t)-1));
        if (valid) {
            CHECK(dl <= n);
            size_t el2 = xtext_encode(dec, dl, enc2, cap);
            CHECK(el2 != (size_t)-1);
            CHECK(xtext_decode(enc2, el2, dec2, n + 1) == dl);
            CHECK(memcmp(dec2, dec, dl) == 0);
        }
    }
    free(enc);
    free(dec);
    free(enc2);
    free(dec2);
    free(s);
    return 0;
}
