/*
 * strutil: small string helpers and the value syntaxes of the configuration file
 * (sizes "10M", durations "5m", booleans "yes"). Pure functions.
 */
#ifndef TERN_STRUTIL_H
#define TERN_STRUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

bool str_ieq(const char *a, const char *b);
bool str_ieqn(const char *a, size_t alen, const char *b); /* a (alen bytes) equals b */
bool str_iprefix(const char *s, const char *prefix);
void str_lower(char *s);
/* Trim ASCII white space in place; returns s advanced past leading space. */
char *str_trim(char *s);

/* The value of a hexadecimal digit (either case), or -1. */
int hex_value(char c);
/* A host name: dot-separated labels of letters, digits and inner hyphens, 1..63 octets
 * each, 253 in all (RFC 1035 §2.3.1, RFC 1123 §2.1). */
bool str_is_hostname(const char *s);

/* "1024", "512k", "10M", "1G" (binary multiples). */
bool parse_size(const char *s, uint64_t *out);
/* "300" (seconds), "250ms", "30s", "5m", "4h", "5d". Result in milliseconds. */
bool parse_duration_ms(const char *s, uint64_t *out);
/* yes/no, true/false, on/off, 1/0. */
bool parse_bool(const char *s, bool *out);
bool parse_uint(const char *s, uint64_t *out);

#endif
