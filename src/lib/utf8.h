/*
 * utf8: well-formed UTF-8 (RFC 3629 §4): decoding one sequence and encoding one code point.
 * Overlong forms, surrogates and code points above U+10FFFF are malformed. Pure functions.
 */
#ifndef TERN_UTF8_H
#define TERN_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the sequence at p (1 for ASCII), with its code point in *cp when cp is not
 * NULL; 0 if the bytes there (avail of them) are not well-formed UTF-8. */
size_t utf8_next(const unsigned char *p, size_t avail, uint32_t *cp);
/* Write cp (at most U+10FFFF) as 1 to 4 bytes into out; returns how many. */
size_t utf8_put(uint32_t cp, char out[4]);

#endif
