/*
 * idna: internationalized domain names (RFC 5890) for DNS. A domain written with UTF-8
 * labels (allowed in SMTPUTF8 mail, RFC 6531) is looked up by its ASCII form, each such
 * label turned into an "xn--" A-label. Wraps libidn2 (IDNA2008 with the UTS #46
 * non-transitional mapping, as browsers and other mail servers use). Pure; thread-safe.
 */
#ifndef TERN_IDNA_H
#define TERN_IDNA_H

#include <stdbool.h>
#include <stddef.h>

/* true if s holds a byte outside ASCII */
bool idna_is_utf8_name(const char *s);

/* The ASCII form of the domain `in`, lowercased, in out (cap bytes). An ASCII name is
 * copied as it is (no IDNA rules applied to it: DNS names may hold "_" and the like).
 * 0, or -1 with the reason in err: invalid UTF-8, a label IDNA2008 refuses, or a result
 * longer than cap - 1. */
int idna_to_ascii(const char *in, char *out, size_t cap, char *err, size_t errlen);

#endif
