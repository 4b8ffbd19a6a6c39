/*
 * sasl: base64 (RFC 4648) and the PLAIN (RFC 4616) and LOGIN mechanisms' message formats,
 * for AUTH (RFC 4954) on the server and client side. Pure functions; no secrets are kept
 * beyond the caller's buffers (callers wipe them with explicit_bzero when done).
 */
#ifndef TERN_SASL_H
#define TERN_SASL_H

#include <stdbool.h>
#include <stddef.h>

#define SASL_LINE_MAX 12288 /* RFC 4954 §4: an AUTH line may be this long */
#define SASL_FIELD_MAX 255  /* authzid, authcid and password each */

/* Decode base64 (no white space; padding required); returns the length or (size_t)-1 on bad
 * input or if cap is too small. Output is NUL-terminated (not counted). */
size_t base64_decode(const char *in, size_t n, unsigned char *out, size_t cap);
/* Encode; returns the length or (size_t)-1 if cap is too small. NUL-terminated. */
size_t base64_encode(const unsigned char *in, size_t n, char *out, size_t cap);

struct sasl_plain {
    char authzid[SASL_FIELD_MAX + 1];
    char authcid[SASL_FIELD_MAX + 1];
    char passwd[SASL_FIELD_MAX + 1];
};

/* Decode a base64 PLAIN message "authzid NUL authcid NUL passwd". Returns NULL on success,
 * else a static reason. Empty authcid or passwd, or a NUL in a field, is an error. */
const char *sasl_plain_decode(const char *b64, size_t n, struct sasl_plain *out);
/* Build a base64 PLAIN response for the client side; returns length or (size_t)-1. */
size_t sasl_plain_encode(const char *authcid, const char *passwd, char *out, size_t cap);

#endif
