/* iptable: see iptable.h. Linear probing with backward-shift deletion (no tombstones). */
#include "smtpd/iptable.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mem.h"
#include "lib/netaddr.h"

struct entry {
    char ip[NETADDR_IP_MAX];
    unsigned sessions;
    unsigned failures;
    time_t last_failure;
    bool used;
};

struct iptable {
    struct entry *v;
    size_t cap; /* power of two */
    size_t n;
};

static uint64_t hash_ip(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

struct iptable *iptable_new(void)
{
    struct iptable *t = xcalloc(1, sizeof *t);
    t->cap = 64;
    t->v = xcalloc(t->cap, sizeof *t->v);
    return t;
}

void iptable_free(struct iptable *t)
{
    if (t == NULL)
        return;
    free(t->v);
    free(t);
}

static struct entry *find(struct iptable *t, const char *ip, bool create);

static void grow(struct iptable *t)
{
    struct entry *old = t->v;
    size_t oldcap = t->cap;
    t->cap *= 2;
    t->v = xcalloc(t->cap, sizeof *t->v);
    t->n = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].used)
            *find(t, old[i].ip, true) = old[i];
    free(old);
}

static struct entry *find(struct iptable *t, const char *ip, bool create)
{
    if (create && (t->n + 1) * 4 > t->cap * 3)
        grow(t);
    size_t mask = t->cap - 1;
    for (size_t i = hash_ip(ip) & mask;; i = (i + 1) & mask) {
        struct entry *e = &t->v[i];
        if (!e->used) {
            if (!create)
                return NULL;
            memset(e, 0, sizeof *e);
            e->used = true;
            snprintf(e->ip, sizeof e->ip, "%s", ip);
            t->n++;
            return e;
        }
        if (strcmp(e->ip, ip) == 0)
            return e;
    }
}

/* Remove e, shifting later entries of its probe run back into the hole. */
static void drop(struct iptable *t, struct entry *e)
{
    size_t mask = t->cap - 1;
    size_t hole = (size_t)(e - t->v);
    t->v[hole].used = false;
    t->n--;
    for (size_t i = (hole + 1) & mask; t->v[i].used; i = (i + 1) & mask) {
        size_t home = hash_ip(t->v[i].ip) & mask;
        /* move i into the hole if its home is not cyclically within (hole, i] */
        bool between = hole < i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!between) {
            t->v[hole] = t->v[i];
            t->v[i].used = false;
            hole = i;
        }
    }
}

static void forget_old_failures(struct entry *e, time_t now)
{
    if (e->failures && now - e->last_failure > IPTABLE_FAILURE_WINDOW)
        e->failures = 0;
}

unsigned iptable_session_add(struct iptable *t, const char *ip)
{
    return ++find(t, ip, true)->sessions;
}

void iptable_session_remove(struct iptable *t, const char *ip)
{
    struct entry *e = find(t, ip, false);
    if (e == NULL || e->sessions == 0)
        fatal("iptable: session count for %s below zero", ip);
    e->sessions--;
    if (e->sessions == 0 && e->failures == 0)
        drop(t, e);
}

/* Drop every entry that only remembered failures now outside the window. Runs before the
 * table would grow for a new failing address, so addresses that failed once and never came
 * back do not pile up (each costs the table a slot until then). */
static void sweep(struct iptable *t, time_t now)
{
    for (size_t i = 0; i < t->cap;) {
        struct entry *e = &t->v[i];
        if (e->used && e->sessions == 0) {
            forget_old_failures(e, now);
            if (e->failures == 0) {
                drop(t, e); /* may shift a later entry into slot i: look at it again */
                continue;
            }
        }
        i++;
    }
}

unsigned iptable_auth_failed(struct iptable *t, const char *ip, time_t now)
{
    if ((t->n + 1) * 4 > t->cap * 3 && find(t, ip, false) == NULL)
        sweep(t, now);
    struct entry *e = find(t, ip, true);
    forget_old_failures(e, now);
    e->failures++;
    e->last_failure = now;
    return e->failures;
}

unsigned iptable_auth_failures(struct iptable *t, const char *ip, time_t now)
{
    struct entry *e = find(t, ip, false);
    if (e == NULL)
        return 0;
    forget_old_failures(e, now);
    unsigned f = e->failures;
    if (f == 0 && e->sessions == 0)
        drop(t, e);
    return f;
}

size_t iptable_size(const struct iptable *t)
{
    return t->n;
}
