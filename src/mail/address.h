/*
 * address: RFC 5321 §4.1.2 paths and mailboxes, with RFC 6531 (SMTPUTF8) extensions.
 * Pure functions, no allocation; every limit is checked before a byte is copied.
 *
 *   Reverse-path / Forward-path = "<" [ A-d-l ":" ] Mailbox ">"
 *   Mailbox    = Local-part "@" ( Domain / address-literal )
 *   Local-part = Dot-string / Quoted-string
 *
 * Limits (RFC 5321 §4.5.3.1): local part 64 octets, domain 255 octets, path 256 octets.
 */
#ifndef TERN_ADDRESS_H
#define TERN_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>

#define ADDR_LOCAL_MAX 64
#define ADDR_DOMAIN_MAX 255
#define ADDR_PATH_MAX 256 /* "<" ... ">" included */
#define ADDR_TEXT_MAX (ADDR_LOCAL_MAX + 1 + ADDR_DOMAIN_MAX) /* local@domain */

/* flags of a parsed address */
#define ADDR_F_NULL 0x01       /* the null path <> */
#define ADDR_F_POSTMASTER 0x02 /* <Postmaster> without a domain (any case) */
#define ADDR_F_QUOTED 0x04     /* the local part is a Quoted-string */
#define ADDR_F_UTF8 0x08       /* non-ASCII octets in local part or domain */
#define ADDR_F_LITERAL 0x10    /* the domain is an address literal [...] */
#define ADDR_F_ROUTE 0x20      /* a source route (A-d-l) was present and has been dropped */

/* parse options */
#define ADDR_ALLOW_NULL 0x01       /* accept <> (MAIL FROM) */
#define ADDR_ALLOW_POSTMASTER 0x02 /* accept <Postmaster> (RCPT TO) */
#define ADDR_ALLOW_UTF8 0x04       /* accept UTF-8 (the transaction said SMTPUTF8) */

struct mailaddr {
    char local[ADDR_LOCAL_MAX + 1];   /* as written: quotes and backslashes kept */
    char domain[ADDR_DOMAIN_MAX + 1]; /* as written (not lowercased); "" for <> and <Postmaster> */
    unsigned flags;
};

/* Returned instead of a reason when the only fault is non-ASCII without ADDR_ALLOW_UTF8,
 * so the caller can answer 553 5.6.7 (RFC 6531 §3.7.4.1) rather than 501. */
extern const char addr_err_needs_utf8[];

/*
 * Parse a path at s[0..n): must start with '<'. On success returns NULL, fills *out and sets
 * *end to the number of bytes consumed (just past '>'). On failure returns a short static
 * reason ("local part longer than 64 octets", "missing >", ...) suitable for a 501
 * reply, or addr_err_needs_utf8.
 */
const char *addr_parse_path(const char *s, size_t n, unsigned opts, struct mailaddr *out,
                            size_t *end);

/* Parse a bare mailbox "local@domain" (the whole string, no brackets). Same results; with
 * ADDR_ALLOW_NULL "" is the null path and with ADDR_ALLOW_POSTMASTER a bare "Postmaster"
 * (any case) is accepted, so whatever addr_format writes parses back. */
const char *addr_parse_mailbox(const char *s, size_t n, unsigned opts, struct mailaddr *out);

/* The local part without quoting: "\"a\\\"b\"" -> a"b. Returns the length, or (size_t)-1 if
 * cap is too small. */
size_t addr_local_unquote(const char *local, char *out, size_t cap);

/* "local@domain" (or "" for the null path, "Postmaster" for bare postmaster) into dst.
 * Returns the full length, as snprintf does (a result >= cap means dst was cut short);
 * dst is always NUL-terminated if cap > 0. */
size_t addr_format(const struct mailaddr *a, char *dst, size_t cap);

/* A valid EHLO/HELO argument: a domain or an address literal (UTF-8 labels if allow_utf8).
 * On failure returns a static reason; NULL when valid. */
const char *addr_check_domain(const char *s, size_t n, bool allow_utf8);

/* Split "local@domain" at the last '@' (local may be quoted and contain '@'). Returns false
 * if there is no '@' or a part is too long. */
bool addr_split(const char *addr, char *local, size_t llen, char *domain, size_t dlen);

#endif
