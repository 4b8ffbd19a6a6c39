/*
 * users: the local users of one domain, loaded from a file of lines
 *     name            a mailbox without a password (receives mail only)
 *     name:HASH       a mailbox that may also log in (crypt(3) hash, for AUTH)
 * "#" starts a comment; blank lines are ignored. Names are matched case-insensitively.
 * Immutable once loaded: a reload builds a new table.
 */
#ifndef TERN_USERS_H
#define TERN_USERS_H

#include <stdbool.h>
#include <stddef.h>

#define USERS_FILE_MAX (64u * 1024 * 1024)

struct users;

/* NULL on error, with "FILE:LINE: reason" in err. */
struct users *users_load(const char *path, char *err, size_t errlen);
/* An empty table (a domain without a users file). */
struct users *users_empty(void);
void users_free(struct users *u);
bool users_exists(const struct users *u, const char *name);
/* The password hash, or NULL if the user has none (or does not exist). */
const char *users_password_hash(const struct users *u, const char *name);
size_t users_count(const struct users *u);

#endif
