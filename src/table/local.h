/*
 * local: what a recipient address in one of our domains means. Pure lookups in the
 * configuration snapshot (users, aliases, catch-all, postmaster, recipient delimiter).
 *
 * At RCPT time local_check() says whether the address can be delivered (so unknown users
 * are refused with 550 5.1.1 and no bounce is ever needed for them). At delivery time
 * local_resolve() says where it goes: one mailbox, or a list of final addresses that
 * replace it (alias and catch-all expansion, nested aliases resolved, loops refused).
 *
 * Resolution order for local part L in domain D (L compared case-insensitively):
 *   1. postmaster (any case)  -> D's postmaster key, else an alias named postmaster, else
 *                                a user named postmaster, else the top-level postmaster
 *                                address; if that fails or loops: mailbox "postmaster" of
 *                                D (never refused, RFC 5321 §4.5.1)
 *   2. an alias of D          -> its targets, expanded recursively
 *   3. a user of D            -> D's mailbox for the user
 *   4. L minus its tag        -> steps 1-3 again for the part before the first delimiter
 *                                character (conf recipient_delimiter, e.g. "+": alice+x
 *                                -> alice), only when L itself is not known
 *   5. D has a catchall       -> the catch-all target (not applied again inside the
 *                                expansion of a catch-all)
 *   6. otherwise unknown.
 * Aliases come before users so that an alias may name itself among its targets: that
 * target is the user of the same name ("bob: bob, carol" keeps a copy for bob).
 * Alias targets without "@" are names of the same domain; targets in another of our
 * domains are resolved with that domain's tables; targets in other domains are returned
 * as they are (outbound delivery). A target that names nothing known is kept as
 * "name@domain" (it fails with 5.1.1 when delivered). Final addresses are deduplicated
 * (local ones lowercased; remote ones compared with the domain case-insensitively).
 *
 * Final addresses are final: a recipient that an expansion produced is delivered with
 * local_resolve_final(), which looks up users only, so a queue can never expand in circles.
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

/* Is this a deliverable local address? (domain must be one of ours; local unquoted.)
 * LOCAL_ERROR for an alias that loops or exceeds the limits (answer 550 5.4.6). */
enum local_kind local_check(const struct conf *c, const struct domain_conf *d, const char *local);
/* Resolve "local@domain" (domain one of ours; the local part as received, quoted or not),
 * or the bare "Postmaster". Free with local_result_free(). */
void local_resolve(const struct conf *c, const char *addr, struct local_result *out);
/* Resolve a final address that an earlier local_resolve() produced: a user of its domain
 * (or postmaster) is LOCAL_MAILBOX, anything else LOCAL_UNKNOWN; never LOCAL_EXPAND. */
void local_resolve_final(const struct conf *c, const char *addr, struct local_result *out);
void local_result_free(struct local_result *r);
/* The user's mailbox path relative to d->mail_base: the pattern with %d and %u replaced
 * (domain and user lowercased). Returns false if it does not fit, or if the user could
 * leave the base folder (empty, contains "/", starts with ".", control characters). */
bool local_mailbox_path(const struct domain_conf *d, const char *user, char *out, size_t cap);

#endif
