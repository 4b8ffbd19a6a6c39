/*
 * sasl: strict base64 (RFC 4648 §4) and the PLAIN message (RFC 4616 §2) for AUTH
 * (RFC 4954).
 *
 * base64 here is the canonical form only: the standard alphabet, length a multiple of 4,
 * "=" padding only at the end, no white space, and the unused low bits of the last
 * quantum zero (RFC 4648 §3.5), so each byte string has exactly one accepted encoding.
 *
 * PLAIN: message = [authzid] NUL authcid NUL passwd, each field at most 255 octets
 * (SASL_FIELD_MAX, what RFC 4616 says a server MUST accept), authcid and passwd non-empty.
 * The octets are not checked for UTF-8 or SASLprep'd: the credentials are compared as
 * bytes by the auth back-end, which judges them.
 *
 * Secrets: the decoded PLAIN message passes through a stack buffer that is wiped before
 * return; on failure nothing of the credentials is left in *out. Callers wipe their own
 * buffers (sasl.h).
 */
#include "mail/sasl.h"

#include <stdint.h>
#include <string.h>

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

size_t base64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    if (n % 4 != 0)
        return (size_t)-1;
    size_t pad = 0;
    if (n > 0 && in[n - 1] == '=')
        pad = (in[n - 2] == '=') ? 2 : 1;
    size_t len = n / 4 * 3 - pad;
    if (cap == 0 || len > cap - 1)
        return (size_t)-1;

    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int v[4];
        for (int k = 0; k < 4; k++) {
            /* padding only in the last quantum's last pad positions */
            if (last && (size_t)k >= 4 - pad) {
                v[k] = 0;
                continue;
            }
            v[k] = b64val((unsigned char)in[i + (size_t)k]);
            if (v[k] < 0)
                goto bad;
        }
        uint32_t q = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        if (last && pad > 0 && (q & (pad == 2 ? 0xFFFFu : 0xFFu)) != 0)
            goto bad; /* non-zero bits under the padding: not the canonical encoding */
        out[o++] = (unsigned char)(q >> 16);
        if (!last || pad < 2)
            out[o++] = (unsigned char)(q >> 8);
        if (!last || pad < 1)
            out[o++] = (unsigned char)q;
    }
    out[o] = '\0';
    return o;
bad:
    explicit_bzero(out, o); /* what was decoded may be part of a secret */
    return (size_t)-1;
}

size_t base64_encode(const unsigned char *in, size_t n, char *out, size_t cap)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n > (SIZE_MAX - 4) / 4 * 3)
        return (size_t)-1;
    size_t len = (n + 2) / 3 * 4;
    if (cap == 0 || len > cap - 1)
        return (size_t)-1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        size_t left = n - i;
        uint32_t q = (uint32_t)in[i] << 16;
        if (left > 1)
            q |= (uint32_t)in[i + 1] << 8;
        if (left > 2)
            q |= in[i + 2];
        out[o++] = alphabet[q >> 18 & 63];
        out[o++] = alphabet[q >> 12 & 63];
        out[o++] = left > 1 ? alphabet[q >> 6 & 63] : '=';
        out[o++] = left > 2 ? alphabet[q & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

/* The largest PLAIN message: three full fields and two separators. */
#define PLAIN_MAX (3 * SASL_FIELD_MAX + 2)
#define PLAIN_B64_MAX ((PLAIN_MAX + 2) / 3 * 4)

const char *sasl_plain_decode(const char *b64, size_t n, struct sasl_plain *out)
{
    memset(out, 0, sizeof *out);
    /* refuse before decoding: a longer encoding cannot hold a valid message */
    if (n > PLAIN_B64_MAX)
        return "PLAIN response too long";
    unsigned char buf[PLAIN_B64_MAX / 4 * 3 + 1];
    size_t len = base64_decode(b64, n, buf, sizeof buf);
    if (len == (size_t)-1)
        return "Invalid base64 data";

    const char *why = NULL;
    const unsigned char *nul1 = memchr(buf, '\0', len);
    const unsigned char *nul2 = nul1 ? memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - buf))
                                     : NULL;
    if (nul2 == NULL ||
        memchr(nul2 + 1, '\0', len - (size_t)(nul2 + 1 - buf)) != NULL) {
        why = "Malformed PLAIN response"; /* not exactly two NUL separators */
        goto done;
    }
    size_t zlen = (size_t)(nul1 - buf);
    size_t clen = (size_t)(nul2 - nul1 - 1);
    size_t plen = len - (size_t)(nul2 + 1 - buf);
    if (zlen > SASL_FIELD_MAX || clen > SASL_FIELD_MAX || plen > SASL_FIELD_MAX) {
        why = "PLAIN field longer than 255 octets";
        goto done;
    }
    if (clen == 0) {
        why = "Empty authentication identity";
        goto done;
    }
    if (plen == 0) {
        why = "Empty password";
        goto done;
    }
    memcpy(out->authzid, buf, zlen);
    memcpy(out->authcid, nul1 + 1, clen);
    memcpy(out->passwd, nul2 + 1, plen);
done:
    explicit_bzero(buf, sizeof buf);
    return why;
}

size_t sasl_plain_encode(const char *authcid, const char *passwd, char *out, size_t cap)
{
    size_t clen = strlen(authcid), plen = strlen(passwd);
    /* the same rules the server applies, so what we send is what a server must accept */
    if (clen == 0 || plen == 0 || clen > SASL_FIELD_MAX || plen > SASL_FIELD_MAX)
        return (size_t)-1;
    unsigned char msg[PLAIN_MAX];
    msg[0] = '\0'; /* empty authzid: act as the authenticated identity */
    memcpy(msg + 1, authcid, clen);
    msg[1 + clen] = '\0';
    memcpy(msg + 2 + clen, passwd, plen);
    size_t r = base64_encode(msg, 2 + clen + plen, out, cap);
    explicit_bzero(msg, sizeof msg);
    return r;
}
