/*
 * esmtp: the parameters after MAIL FROM:<...> and RCPT TO:<...> (RFC 5321 §4.1.2
 * esmtp-param), their meaning for the extensions tern offers, and xtext (RFC 3461 §4).
 *
 *   MAIL: SIZE (RFC 1870), BODY=7BIT|8BITMIME|BINARYMIME (RFC 6152, RFC 3030),
 *         SMTPUTF8 (RFC 6531), RET=FULL|HDRS and ENVID (RFC 3461), AUTH (RFC 4954)
 *   RCPT: NOTIFY=NEVER|SUCCESS,FAILURE,DELAY and ORCPT=addr-type;xtext (RFC 3461)
 *
 * A parameter that is unknown, or belongs to an extension not advertised, gets 555 5.5.4
 * (RFC 5321 §4.1.1.11, §4.3.2); a known one with a bad value gets 501 5.5.4; a parameter
 * given twice gets 501 5.5.4. Pure functions.
 */
#ifndef TERN_ESMTP_H
#define TERN_ESMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mail/envelope.h"

#define ESMTP_PARAMS_MAX 16
#define ENVID_MAX 100  /* RFC 3461 §4.4 */
#define ORCPT_MAX 500  /* RFC 3461 §4.2 */
#define AUTH_PARAM_MAX 500

/* Which extensions this session advertised (a parameter of one not advertised is refused). */
struct esmtp_offer {
    bool size, eightbitmime, binarymime, smtputf8, dsn, auth;
    uint64_t size_limit; /* for SIZE=: 0 means no limit */
};

struct mail_params {
    uint64_t size; /* 0 if not given */
    enum body_type body;
    bool smtputf8;
    enum dsn_ret ret;
    char envid[ENVID_MAX + 1]; /* xtext as given; "" if absent */
    char auth[AUTH_PARAM_MAX + 1]; /* xtext as given; "" if absent */
};

struct rcpt_params {
    unsigned notify;           /* DSN_NOTIFY_* bits, 0 if absent */
    char orcpt[ORCPT_MAX + 1]; /* "addr-type;xtext" as given, "" if absent */
};

/* The verdict on a parameter list: code 0 means accepted. */
struct esmtp_error {
    int code;         /* 501, 552, 555 */
    const char *enh;  /* "5.5.4", "5.3.4" */
    const char *text; /* static text */
};

/* s[0..n) is everything after the closing '>' (leading spaces included). */
bool esmtp_parse_mail(const char *s, size_t n, const struct esmtp_offer *offer,
                      struct mail_params *out, struct esmtp_error *err);
bool esmtp_parse_rcpt(const char *s, size_t n, const struct esmtp_offer *offer,
                      struct rcpt_params *out, struct esmtp_error *err);

/* xtext (RFC 3461 §4): printable ASCII except '+' and '=', with "+HH" hex escapes. */
bool xtext_valid(const char *s, size_t n);
/* Decode; returns the decoded length, or (size_t)-1 if invalid or cap too small.
 * Output is NUL-terminated. */
size_t xtext_decode(const char *s, size_t n, char *out, size_t cap);
/* Encode; returns the encoded length, or (size_t)-1 if cap is too small. */
size_t xtext_encode(const char *s, size_t n, char *out, size_t cap);

#endif
