/*
 * policy: who may send what to whom. Pure decisions over the configuration snapshot, so
 * every rule is unit tested without a socket.
 *
 *   RCPT: our domains accept known local recipients (550 5.1.1 otherwise, so no bounce
 *         is ever needed for them); other domains only for authenticated users and
 *         trusted networks (554 5.7.1 relay denied). Open-relay tricks are refused, never
 *         interpreted: source routes (@a,@b:user@c), percent hacks (user%other@ours),
 *         bang paths (other!user@ours) and quoted local parts holding "@".
 *   MAIL: an authenticated user may only use their own addresses (and +tags of them, and
 *         aliases that lead to them) unless sender_login_check is off (553 5.7.1).
 *   AUTH: login names are "user@domain", or a bare "user" when exactly one domain has it.
 */
#ifndef TERN_POLICY_H
#define TERN_POLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"
#include "mail/address.h"
#include "mail/reply.h"

struct policy_client {
    enum listen_role role;
    bool trusted;          /* in trusted_networks */
    const char *auth_user; /* canonical "user@domain", or NULL */
};

/* Fill r with 250 2.1.5 or the refusal. */
void policy_rcpt(const struct conf *c, const struct policy_client *cl, const struct mailaddr *to,
                 struct reply *r);
/* Fill r with 250 2.1.0 or the refusal. */
void policy_mail(const struct conf *c, const struct policy_client *cl,
                 const struct mailaddr *from, struct reply *r);
/* Find a login: the canonical "user@domain" into canonical and the user's password hash
 * (NULL if the user has none or does not exist). Returns false if there is no such user. */
bool policy_find_login(const struct conf *c, const char *login, char *canonical, size_t cap,
                       const char **hash);

#endif
