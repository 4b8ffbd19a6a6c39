/*
 * iptable: per-client-address counters for the listeners: open sessions (for the
 * per-IP session limit) and recent AUTH failures (for the growing failure delay).
 * An open-addressing hash table keyed by the numeric address text; entries with nothing
 * to remember are removed (failures once outside IPTABLE_FAILURE_WINDOW: when the address
 * is looked up again, or in a sweep before the table grows), so the table holds at most one
 * entry per connected or recently failing client. Loop thread only.
 */
#ifndef TERN_IPTABLE_H
#define TERN_IPTABLE_H

#include <stddef.h>
#include <time.h>

struct iptable;

struct iptable *iptable_new(void);
void iptable_free(struct iptable *t);
/* Sessions open from ip after adding (or removing) one. */
unsigned iptable_session_add(struct iptable *t, const char *ip);
void iptable_session_remove(struct iptable *t, const char *ip);
/* Record an AUTH failure; returns the failures in the last window (decayed). */
unsigned iptable_auth_failed(struct iptable *t, const char *ip, time_t now);
unsigned iptable_auth_failures(struct iptable *t, const char *ip, time_t now);
size_t iptable_size(const struct iptable *t);

#define IPTABLE_FAILURE_WINDOW 900 /* seconds after which AUTH failures are forgotten */

#endif
