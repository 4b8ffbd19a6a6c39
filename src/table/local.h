/*
 * local: what a recipient address in one of our domains means. Pure lookups in the
 * configuration snapshot (users, aliases, catch-all, postmaster, recipient delimiter).
 *
 * At RCPT time local_check() says whether the address can be delivered (so unknown users
 * are refused with 550 5.1.1 and no bounce is ever needed for them). At delivery time
 * local_resolve() says where it goes: one mailbox, or a list of final addresses that
 * replace it (alias and catch-all expansion, nested aliases resolved, loops refused).
 *
 * Resolution order for local part L in domain D (L compared case-insensitively, after
 * removing a "+tag" suffix when the delimiter is configured and L itself is not known):
 *   1. postmaster (any case)  -> D's postmaster key, else a user/alias named postmaster,
 *                                else the top-level postmaster address; else mailbox
 *                                "postmaster" of D (never refused, RFC 5321 §4.5.1)
 *   2. a user of D            -> D's mailbox for the user
 *   3. an alias of D          -> its targets, expanded recursively
 *   4. D has a catchall       -> the catch-all target
 *   5. otherwise unknown.
 * An alias may name itself among its targets: that target is the user of the same name.
 */
#ifndef TERN_LOCAL_H
#define TERN_LOCAL_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

#define LOCAL_EXPANSION_MAX 1000 /* final addresses from one recipient */
#define LOCAL_DEPTH_MAX 20       /* nesting of aliases */

enum local_kind {
    LOCAL_MAILBOX, /* deliver to user's mailbox in domain */
    LOCAL_EXPAND,  /* replace by addrs */
    LOCAL_UNKNOWN, /* no such recipient */
    LOCAL_ERROR,   /* alias loop, too deep, too many targets: error says which */
};

struct local_result {
    enum local_kind kind;
    const struct domain_conf *domain; /* LOCAL_MAILBOX: the domain */
    char user[65];                    /* LOCAL_MAILBOX: the user, lowercased */
    char **addrs;                     /* LOCAL_EXPAND: final addresses (user@domain) */
    size_t naddrs;
    char error[200];
};

/* Is this a deliverable local address? (domain must be one of ours; local unquoted.) */
enum local_kind local_check(const struct conf *c, const struct domain_conf *d, const char *local);
/* Resolve "local@domain" (domain one of ours). Free with local_result_free(). */
void local_resolve(const struct conf *c, const char *addr, struct local_result *out);
void local_result_free(struct local_result *r);
/* The user's mailbox path relative to d->mail_base: the pattern with %d and %u replaced
 * (domain and user lowercased). Returns false if it does not fit. */
bool local_mailbox_path(const struct domain_conf *d, const char *user, char *out, size_t cap);

#endif
