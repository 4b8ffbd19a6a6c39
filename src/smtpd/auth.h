/*
 * auth: password verification off the event loop. crypt(3) hashes (yescrypt,
 * SHA-512-crypt, ...) are slow on purpose, so each check runs on the worker pool and the
 * answer comes back on the loop thread. A user without a hash (or an unknown user) is
 * checked against a dummy hash of the same kind, so the time taken never tells whether
 * the user exists. Passwords are wiped from memory as soon as they are hashed.
 */
#ifndef TERN_AUTH_H
#define TERN_AUTH_H

#include <stdbool.h>

struct workers;

void auth_init(struct workers *pool);
/* hash may be NULL (no such user, or no password): the answer is then always false. */
void auth_verify(const char *hash, const char *password, void (*done)(void *arg, bool ok),
                 void *arg);
/* Hash a password with the strongest method libcrypt offers (yescrypt); NULL on failure.
 * Blocking (for ternctl passwd). The caller frees the result. */
char *auth_hash_password(const char *password);

#endif
