/* policy: see policy.h. */
#include "smtpd/policy.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/strutil.h"
#include "table/local.h"
#include "table/users.h"

void policy_rcpt(const struct conf *c, const struct policy_client *cl, const struct mailaddr *to,
                 struct reply *r)
{
    if (to->flags & ADDR_F_POSTMASTER) {
        reply_set(r, 250, "2.1.5", "Ok");
        return;
    }
    if (to->flags & ADDR_F_ROUTE) {
        reply_set(r, 553, "5.7.1", "Source routes are not accepted (RFC 5321 section 3.6.1)");
        return;
    }
    char local[ADDR_LOCAL_MAX + 1];
    if (addr_local_unquote(to->local, local, sizeof local) == (size_t)-1) {
        reply_set(r, 501, "5.1.3", "Bad recipient address syntax");
        return;
    }
    const struct domain_conf *d =
        (to->flags & ADDR_F_LITERAL) ? NULL : conf_find_domain(c, to->domain);
    if (d != NULL) {
        if (strpbrk(local, "@%!") != NULL) {
            /* user%other@ours, other!user@ours, "user@other"@ours: we never route by them */
            reply_set(r, 550, "5.7.1", "Relay access denied: routing characters in the local "
                                       "part are not accepted");
            return;
        }
        switch (local_check(c, d, local)) {
        case LOCAL_MAILBOX:
        case LOCAL_EXPAND:
            reply_set(r, 250, "2.1.5", "Ok");
            return;
        case LOCAL_ERROR:
            reply_set(r, 550, "5.4.6", "Recipient address rejected: alias loop");
            return;
        case LOCAL_UNKNOWN:
            break;
        }
        reply_set(r, 550, "5.1.1", "Recipient address rejected: User unknown");
        return;
    }
    if (cl->auth_user != NULL || cl->trusted) {
        reply_set(r, 250, "2.1.5", "Ok");
        return;
    }
    reply_set(r, 554, "5.7.1", "Relay access denied");
}

bool policy_find_login(const struct conf *c, const char *login, char *canonical, size_t cap,
                       const char **hash)
{
    const char *at = strrchr(login, '@');
    const struct domain_conf *found = NULL;
    char user[ADDR_LOCAL_MAX + 1];
    if (at != NULL) {
        size_t ulen = (size_t)(at - login);
        if (ulen == 0 || ulen >= sizeof user)
            return false;
        memcpy(user, login, ulen);
        user[ulen] = '\0';
        const struct domain_conf *d = conf_find_domain(c, at + 1);
        if (d != NULL && users_exists(d->users, user))
            found = d;
    } else {
        if (strlen(login) >= sizeof user)
            return false;
        snprintf(user, sizeof user, "%s", login);
        for (size_t i = 0; i < c->ndomains; i++) {
            if (users_exists(c->domains[i].users, user)) {
                if (found != NULL)
                    return false; /* ambiguous: the full address is needed */
                found = &c->domains[i];
            }
        }
    }
    if (found == NULL)
        return false;
    str_lower(user);
    snprintf(canonical, cap, "%s@%s", user, found->name);
    *hash = users_password_hash(found->users, user);
    return true;
}

/* Does sender (local@domain, one of ours) belong to the user (canonical user@domain)? */
static bool sender_owned(const struct conf *c, const char *user, const struct mailaddr *from)
{
    char local[ADDR_LOCAL_MAX + 1];
    if (addr_local_unquote(from->local, local, sizeof local) == (size_t)-1)
        return false;
    char addr[ADDR_TEXT_MAX + 1];
    snprintf(addr, sizeof addr, "%s@%s", local, from->domain);
    if (str_ieq(addr, user))
        return true;
    if (conf_find_domain(c, from->domain) == NULL)
        return false;
    /* a +tag of the user's address, or an alias that leads to the user */
    struct local_result res;
    local_resolve(c, addr, &res);
    bool owned = false;
    if (res.kind == LOCAL_MAILBOX) {
        char mailbox[ADDR_TEXT_MAX + 1];
        snprintf(mailbox, sizeof mailbox, "%s@%s", res.user, res.domain->name);
        owned = str_ieq(mailbox, user);
    } else if (res.kind == LOCAL_EXPAND) {
        for (size_t i = 0; i < res.naddrs && !owned; i++)
            owned = str_ieq(res.addrs[i], user);
    }
    local_result_free(&res);
    return owned;
}

void policy_mail(const struct conf *c, const struct policy_client *cl,
                 const struct mailaddr *from, struct reply *r)
{
    if (cl->auth_user != NULL && c->sender_login_check && !(from->flags & ADDR_F_NULL) &&
        !sender_owned(c, cl->auth_user, from)) {
        reply_set(r, 553, "5.7.1", "Sender address rejected: not owned by user %s",
                  cl->auth_user);
        return;
    }
    reply_set(r, 250, "2.1.0", "Ok");
}
