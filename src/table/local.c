/*
 * local: see local.h.
 *
 * Expansion is a depth-first walk over "nodes" (an alias, a domain's catch-all, a domain's
 * postmaster) with the current path kept on a small stack: meeting a node that is already
 * on the path is a loop, and the error names the whole cycle ("a@d -> b@d -> a@d"). A node
 * that has been expanded completely is remembered, so a diamond (two aliases that share a
 * third) costs one walk, not one per path: with deduplicated results a second walk could
 * add nothing anyway, and skipping it keeps the work linear in the size of the tables.
 *
 * Postmaster is resolved in a scratch expander whose failure (loop, unknown target, limits)
 * falls back to the mailbox "postmaster" of the domain, because RFC 5321 §4.5.1 requires
 * that postmaster is always accepted and a configuration mistake must not take it away.
 *
 * Invariants: nothing here allocates on behalf of the configuration or changes it (the
 * snapshot is shared between threads); every result is bounded by LOCAL_DEPTH_MAX and
 * LOCAL_EXPANSION_MAX.
 */
#include "table/local.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mem.h"
#include "lib/strutil.h"
#include "mail/address.h"
#include "table/aliases.h"
#include "table/users.h"

#define NAME_MAX_LEN 64 /* user and alias names (names_valid_local) */

/* ---- a small set of strings (open addressing; keys are owned copies) ---- */

struct strset {
    char **slot;
    size_t cap, n;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static bool strset_has(const struct strset *s, const char *key)
{
    if (s->cap == 0)
        return false;
    for (size_t i = hash_str(key) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->slot[i] == NULL)
            return false;
        if (strcmp(s->slot[i], key) == 0)
            return true;
    }
}

static void strset_put(struct strset *s, char *owned)
{
    for (size_t i = hash_str(owned) & (s->cap - 1);; i = (i + 1) & (s->cap - 1))
        if (s->slot[i] == NULL) {
            s->slot[i] = owned;
            s->n++;
            return;
        }
}

/* Returns false if key was already present. */
static bool strset_add(struct strset *s, const char *key)
{
    if (strset_has(s, key))
        return false;
    if ((s->n + 1) * 2 > s->cap) { /* keep the load under one half */
        struct strset bigger = {xcalloc(s->cap ? s->cap * 2 : 16, sizeof(char *)),
                                s->cap ? s->cap * 2 : 16, 0};
        for (size_t i = 0; i < s->cap; i++)
            if (s->slot[i])
                strset_put(&bigger, s->slot[i]);
        free(s->slot);
        *s = bigger;
    }
    strset_put(s, xstrdup(key));
    return true;
}

static void strset_free(struct strset *s)
{
    for (size_t i = 0; i < s->cap; i++)
        free(s->slot[i]);
    free(s->slot);
    memset(s, 0, sizeof *s);
}

/* ---- the expander ---- */

struct final {
    char *addr; /* as returned */
    char *key;  /* for deduplication */
    bool unknown;
};

struct pathnode {
    char *key;     /* "a:name@domain", "c:@domain", "p:@domain" (+ "!" inside a catch-all) */
    char *display; /* for error texts */
};

struct expander {
    const struct conf *c;
    struct strset seen; /* keys of the finals */
    struct strset done; /* nodes expanded completely */
    struct pathnode path[LOCAL_DEPTH_MAX + 1];
    size_t depth;
    struct final *finals;
    size_t nfinals, cap;
    size_t nunknown;
    bool in_catchall; /* a catch-all is being expanded: do not apply catch-alls again */
    bool failed;
    char error[200];
};

static void expander_free(struct expander *x)
{
    strset_free(&x->seen);
    strset_free(&x->done);
    for (size_t i = 0; i < x->depth; i++) {
        free(x->path[i].key);
        free(x->path[i].display);
    }
    for (size_t i = 0; i < x->nfinals; i++) {
        free(x->finals[i].addr);
        free(x->finals[i].key);
    }
    free(x->finals);
}

static void fail(struct expander *x, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void fail(struct expander *x, const char *fmt, ...)
{
    if (x->failed)
        return; /* the first error is the one that explains */
    x->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->error, sizeof x->error, fmt, ap);
    va_end(ap);
}

static void add_final(struct expander *x, char *addr, char *key, bool unknown)
{
    if (x->failed || strset_has(&x->seen, key)) {
        free(addr);
        free(key);
        return;
    }
    if (x->nfinals >= LOCAL_EXPANSION_MAX) {
        fail(x, "%s expands to more than %d addresses",
             x->depth ? x->path[0].display : "recipient", LOCAL_EXPANSION_MAX);
        free(addr);
        free(key);
        return;
    }
    strset_add(&x->seen, key);
    x->finals = xgrow(x->finals, &x->cap, x->nfinals + 1, sizeof *x->finals);
    x->finals[x->nfinals++] = (struct final){addr, key, unknown};
    if (unknown)
        x->nunknown++;
}

/* user@domain, lowercased: a mailbox of ours, or (unknown) a name that fails at delivery. */
static void add_local(struct expander *x, const struct domain_conf *d, const char *name,
                      bool unknown)
{
    char *addr = xasprintf("%s@%s", name, d->name);
    str_lower(addr);
    add_final(x, addr, xstrdup(addr), unknown);
}

/* A remote address stays as written; only its domain is case-insensitive for duplicates. */
static void add_remote(struct expander *x, const char *addr)
{
    char *key = xstrdup(addr);
    char *at = strrchr(key, '@');
    if (at)
        str_lower(at);
    add_final(x, xstrdup(addr), key, false);
}

/* Enter a node; false (with the error set) on a loop or when nested too deep. */
static bool push(struct expander *x, const char *key, const char *display)
{
    for (size_t i = 0; i < x->depth; i++) {
        if (strcmp(x->path[i].key, key) != 0)
            continue;
        char cycle[sizeof x->error];
        size_t len = 0;
        for (size_t j = i; j < x->depth && len < sizeof cycle; j++)
            len += (size_t)snprintf(cycle + len, sizeof cycle - len, "%s -> ", x->path[j].display);
        if (len < sizeof cycle)
            snprintf(cycle + len, sizeof cycle - len, "%s", display);
        fail(x, "alias loop: %s", cycle);
        return false;
    }
    if (x->depth >= LOCAL_DEPTH_MAX) {
        fail(x, "aliases nested deeper than %d levels (at %s)", LOCAL_DEPTH_MAX, display);
        return false;
    }
    x->path[x->depth].key = xstrdup(key);
    x->path[x->depth].display = xstrdup(display);
    x->depth++;
    return true;
}

static void pop(struct expander *x)
{
    x->depth--;
    free(x->path[x->depth].key);
    free(x->path[x->depth].display);
}

static bool on_path(const struct expander *x, const char *key)
{
    for (size_t i = 0; i < x->depth; i++)
        if (strcmp(x->path[i].key, key) == 0)
            return true;
    return false;
}

enum match { M_POSTMASTER, M_ALIAS, M_USER, M_UNKNOWN };

static enum match lookup_exact(const struct domain_conf *d, const char *l)
{
    if (str_ieq(l, "postmaster"))
        return M_POSTMASTER;
    if (aliases_lookup(d->aliases, l) != NULL)
        return M_ALIAS;
    if (users_exists(d->users, l))
        return M_USER;
    return M_UNKNOWN;
}

/* Steps 1-4 of local.h; the matched name (L, or L without its tag) goes to name. */
static enum match lookup(const struct conf *c, const struct domain_conf *d, const char *l,
                         char name[NAME_MAX_LEN + 1])
{
    size_t n = strlen(l);
    if (n == 0 || n > NAME_MAX_LEN)
        return M_UNKNOWN; /* no table key is longer (names_valid_local) */
    enum match m = lookup_exact(d, l);
    if (m != M_UNKNOWN) {
        memcpy(name, l, n + 1);
        return m;
    }
    const char *delim = c->recipient_delimiter;
    if (delim == NULL || delim[0] == '\0')
        return M_UNKNOWN;
    /* Split at the first delimiter character, as Postfix does: predictable when several
     * characters are configured. A leading delimiter leaves no name to look up. */
    size_t p = strcspn(l, delim);
    if (p == 0 || p == n)
        return M_UNKNOWN;
    memcpy(name, l, p);
    name[p] = '\0';
    return lookup_exact(d, name);
}

static void resolve_name(struct expander *x, const struct domain_conf *d, const char *l);

/* A target: "name" (of domain d) or "local@domain" (ours or not). */
static void resolve_target(struct expander *x, const struct domain_conf *d, const char *target)
{
    const char *at = strrchr(target, '@');
    if (at == NULL) {
        resolve_name(x, d, target);
        return;
    }
    const struct domain_conf *td = conf_find_domain(x->c, at + 1);
    if (td == NULL) {
        add_remote(x, target);
        return;
    }
    char *local = xstrndup(target, (size_t)(at - target));
    resolve_name(x, td, local);
    free(local);
}

static void expand_alias(struct expander *x, const struct domain_conf *d, const char *name)
{
    char *key = xasprintf("a:%s@%s%s", name, d->name, x->in_catchall ? "!" : "");
    str_lower(key);
    char *display = xasprintf("%s@%s", name, d->name);
    str_lower(display);
    if (!strset_has(&x->done, key) && push(x, key, display)) {
        const char *const *targets = aliases_lookup(d->aliases, name);
        for (size_t i = 0; targets && targets[i] && !x->failed; i++) {
            const char *t = targets[i];
            const char *at = strrchr(t, '@');
            bool self = at == NULL ? str_ieq(t, name)
                                   : (conf_find_domain(x->c, at + 1) == d &&
                                      str_ieqn(t, (size_t)(at - t), name));
            if (self) /* the user of the same name, not the alias again */
                add_local(x, d, name,
                          !users_exists(d->users, name) && !str_ieq(name, "postmaster"));
            else
                resolve_target(x, d, t);
        }
        pop(x);
        if (!x->failed)
            strset_add(&x->done, key);
    }
    free(key);
    free(display);
}

static void resolve_catchall(struct expander *x, const struct domain_conf *d)
{
    char *key = xasprintf("c:@%s", d->name);
    char *display = xasprintf("catch-all of %s", d->name);
    if (push(x, key, display)) {
        bool saved = x->in_catchall;
        x->in_catchall = true;
        resolve_target(x, d, d->catchall);
        x->in_catchall = saved;
        pop(x);
    }
    free(key);
    free(display);
}

/* Step 1 of local.h in a scratch expander; any failure gives the mailbox postmaster@d. */
static void resolve_postmaster(struct expander *x, const struct domain_conf *d)
{
    char *key = xasprintf("p:@%s", d->name);
    if (on_path(x, key) || x->depth >= LOCAL_DEPTH_MAX) {
        /* we came back to this postmaster through its own redirections: stop here */
        free(key);
        add_local(x, d, "postmaster", false);
        return;
    }
    struct expander sub = {.c = x->c, .in_catchall = x->in_catchall};
    for (size_t i = 0; i < x->depth; i++) { /* inherit the path: loops through it count */
        sub.path[i].key = xstrdup(x->path[i].key);
        sub.path[i].display = xstrdup(x->path[i].display);
    }
    sub.depth = x->depth;
    char *display = xasprintf("postmaster@%s", d->name);
    if (push(&sub, key, display)) {
        if (d->postmaster != NULL) {
            resolve_target(&sub, d, d->postmaster);
        } else if (aliases_lookup(d->aliases, "postmaster") != NULL) {
            expand_alias(&sub, d, "postmaster");
        } else if (users_exists(d->users, "postmaster")) {
            add_local(&sub, d, "postmaster", false);
        } else {
            const char *top = x->c->postmaster;
            const char *at = top ? strrchr(top, '@') : NULL;
            if (at == NULL || (conf_find_domain(x->c, at + 1) == d &&
                               str_ieqn(top, (size_t)(at - top), "postmaster")))
                add_local(&sub, d, "postmaster", false);
            else
                resolve_target(&sub, d, top);
        }
    }
    if (sub.failed || sub.nfinals == 0 || sub.nunknown == sub.nfinals) {
        add_local(x, d, "postmaster", false);
    } else {
        for (size_t i = 0; i < sub.nfinals; i++) {
            add_final(x, sub.finals[i].addr, sub.finals[i].key, sub.finals[i].unknown);
            sub.finals[i].addr = sub.finals[i].key = NULL; /* moved */
        }
    }
    free(key);
    free(display);
    expander_free(&sub);
}

static void resolve_name(struct expander *x, const struct domain_conf *d, const char *l)
{
    if (x->failed)
        return;
    char name[NAME_MAX_LEN + 1];
    switch (lookup(x->c, d, l, name)) {
    case M_POSTMASTER:
        resolve_postmaster(x, d);
        return;
    case M_ALIAS:
        expand_alias(x, d, name);
        return;
    case M_USER:
        add_local(x, d, name, false);
        return;
    case M_UNKNOWN:
        if (d->catchall != NULL && !x->in_catchall)
            resolve_catchall(x, d);
        else
            add_local(x, d, l, true);
        return;
    }
}

/* ---- results ---- */

static void set_mailbox(struct local_result *out, const struct domain_conf *d, const char *user)
{
    out->kind = LOCAL_MAILBOX;
    out->domain = d;
    snprintf(out->user, sizeof out->user, "%s", user);
    str_lower(out->user);
}

/* Resolve local part l (unquoted) of domain d; out may be NULL (local_check). */
static enum local_kind resolve_top(const struct conf *c, const struct domain_conf *d,
                                   const char *l, struct local_result *out)
{
    struct expander x = {.c = c};
    char name[NAME_MAX_LEN + 1];
    enum local_kind kind = LOCAL_EXPAND;
    switch (lookup(c, d, l, name)) {
    case M_USER:
        if (out)
            set_mailbox(out, d, name);
        return LOCAL_MAILBOX;
    case M_POSTMASTER:
        resolve_postmaster(&x, d);
        if (!x.failed && x.nfinals == 1 && !x.finals[0].unknown) {
            /* "postmaster@d" itself: deliver without an expansion step */
            char self[NAME_MAX_LEN + 300];
            snprintf(self, sizeof self, "postmaster@%s", d->name);
            if (strcmp(x.finals[0].addr, self) == 0)
                kind = LOCAL_MAILBOX;
        }
        break;
    case M_ALIAS:
        expand_alias(&x, d, name);
        break;
    case M_UNKNOWN:
        if (d->catchall == NULL) {
            if (out)
                snprintf(out->error, sizeof out->error, "no such user here");
            return LOCAL_UNKNOWN;
        }
        resolve_catchall(&x, d);
        break;
    }
    if (x.failed) {
        kind = LOCAL_ERROR;
        if (out)
            snprintf(out->error, sizeof out->error, "%s", x.error);
    } else if (x.nfinals == 0 || x.nunknown == x.nfinals) {
        /* every target is unknown: refuse at RCPT rather than accept and bounce */
        kind = LOCAL_UNKNOWN;
        if (out)
            snprintf(out->error, sizeof out->error, "no such user here (no known target)");
    }
    if (out && kind == LOCAL_MAILBOX) {
        set_mailbox(out, d, "postmaster");
    } else if (out && kind == LOCAL_EXPAND) {
        out->addrs = xcalloc(x.nfinals, sizeof *out->addrs);
        for (size_t i = 0; i < x.nfinals; i++) {
            out->addrs[i] = x.finals[i].addr;
            x.finals[i].addr = NULL;
        }
        out->naddrs = x.nfinals;
    }
    expander_free(&x);
    return kind;
}

static void result_init(struct local_result *out)
{
    memset(out, 0, sizeof *out);
    out->kind = LOCAL_UNKNOWN;
}

enum local_kind local_check(const struct conf *c, const struct domain_conf *d, const char *local)
{
    return resolve_top(c, d, local, NULL);
}

/* Split and unquote "local@domain"; false (with out->error) if that is not possible. */
static bool split_addr(const struct conf *c, const char *addr, char *local, size_t llen,
                       const struct domain_conf **d, struct local_result *out)
{
    char raw[ADDR_LOCAL_MAX + 1], domain[ADDR_DOMAIN_MAX + 1];
    if (!addr_split(addr, raw, sizeof raw, domain, sizeof domain)) {
        snprintf(out->error, sizeof out->error, "not a valid address");
        return false;
    }
    if (addr_local_unquote(raw, local, llen) == (size_t)-1) {
        snprintf(out->error, sizeof out->error, "local part too long");
        return false;
    }
    *d = conf_find_domain(c, domain);
    if (*d == NULL) {
        snprintf(out->error, sizeof out->error, "not one of our domains");
        return false;
    }
    return true;
}

void local_resolve(const struct conf *c, const char *addr, struct local_result *out)
{
    result_init(out);
    if (strchr(addr, '@') == NULL) {
        if (!str_ieq(addr, "postmaster")) {
            snprintf(out->error, sizeof out->error, "not a valid address");
            return;
        }
        /* the bare <Postmaster> of RFC 5321 §4.1.1.3: the top-level postmaster address */
        const char *top = c->postmaster;
        const char *at = strrchr(top, '@');
        const struct domain_conf *d = at ? conf_find_domain(c, at + 1) : NULL;
        if (d == NULL) {
            out->kind = LOCAL_EXPAND;
            out->addrs = xcalloc(1, sizeof *out->addrs);
            out->addrs[0] = xstrdup(top);
            out->naddrs = 1;
            return;
        }
        char *local = xstrndup(top, (size_t)(at - top));
        out->kind = resolve_top(c, d, local, out);
        free(local);
        return;
    }
    char local[ADDR_LOCAL_MAX + 1];
    const struct domain_conf *d;
    if (!split_addr(c, addr, local, sizeof local, &d, out))
        return;
    out->kind = resolve_top(c, d, local, out);
}

void local_resolve_final(const struct conf *c, const char *addr, struct local_result *out)
{
    result_init(out);
    if (strchr(addr, '@') == NULL) {
        local_resolve(c, addr, out); /* a bare Postmaster is never an expansion's result */
        return;
    }
    char local[ADDR_LOCAL_MAX + 1];
    const struct domain_conf *d;
    if (!split_addr(c, addr, local, sizeof local, &d, out))
        return;
    if (strlen(local) <= NAME_MAX_LEN &&
        (users_exists(d->users, local) || str_ieq(local, "postmaster"))) {
        set_mailbox(out, d, local);
        return;
    }
    snprintf(out->error, sizeof out->error, "no such user here");
}

void local_result_free(struct local_result *r)
{
    for (size_t i = 0; i < r->naddrs; i++)
        free(r->addrs[i]);
    free(r->addrs);
    r->addrs = NULL;
    r->naddrs = 0;
}

bool local_mailbox_path(const struct domain_conf *d, const char *user, char *out, size_t cap)
{
    size_t ulen = strlen(user);
    if (ulen == 0 || ulen > NAME_MAX_LEN || user[0] == '.' || strchr(user, '/') != NULL)
        return false;
    for (const char *p = user; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    size_t n = 0;
    for (const char *p = d->mail_rel; *p; p++) {
        const char *sub = NULL;
        if (p[0] == '%' && (p[1] == 'u' || p[1] == 'd')) {
            sub = p[1] == 'u' ? user : d->name;
            p++;
        }
        size_t len = sub ? strlen(sub) : 1;
        if (n + len >= cap)
            return false;
        if (sub) {
            for (size_t i = 0; i < len; i++) /* ASCII lowercase; UTF-8 bytes unchanged */
                out[n + i] = (sub[i] >= 'A' && sub[i] <= 'Z') ? (char)(sub[i] + 32) : sub[i];
        } else {
            out[n] = *p;
        }
        n += len;
    }
    if (n == 0 || cap == 0)
        return false;
    out[n] = '\0';
    return true;
}
