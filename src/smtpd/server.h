/*
 * server: the SMTP listeners and connections. Glues each accepted socket (lib/io) to a
 * session state machine (smtpd/session), answers the session's host calls with the relay
 * policy, the queue and AUTH, and enforces the connection limits and timeouts.
 *
 * Life cycle: server_bind() (as root: sockets and TLS keys), then server_start() on the
 * event loop; server_reload() swaps in a new configuration for new connections;
 * server_shutdown() stops accepting, lets transactions finish up to a timeout, then calls
 * done.
 */
#ifndef TERN_SERVER_H
#define TERN_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf;

int server_bind(struct conf *c, char *err, size_t errlen);
void server_start(void);
/* New connections use c; listeners keep their sockets (changing addresses needs a restart).
 * Returns -1 with err (and changes nothing) if a new TLS certificate cannot be loaded. */
int server_reload(struct conf *c, char *err, size_t errlen);
void server_shutdown(uint64_t timeout_ms, void (*done)(void *arg), void *arg);
void server_free(void);

struct server_stats {
    unsigned sessions;
    uint64_t accepted_connections, refused_connections, messages;
};
void server_get_stats(struct server_stats *s);

#endif
