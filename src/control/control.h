/*
 * control: ternd's side of the command channel used by ternctl: a unix stream socket
 * (owner-only permissions, path from the configuration key control_socket) speaking a
 * small line protocol. Commands run on the loop thread against the queue and server APIs.
 */
#ifndef TERN_CONTROL_H
#define TERN_CONTROL_H

#include <stddef.h>

struct conf;

/* Create and bind the socket (called while still root); uid/gid: owner to give it, or -1. */
int control_bind(const struct conf *c, int uid, int gid, char *err, size_t errlen);
/* Start accepting on the event loop. */
void control_start(struct conf *c);
/* A reload: use c from now on (the socket path stays; changing it needs a restart). */
void control_set_conf(struct conf *c);
/* Stop accepting new control connections (shutdown). */
void control_stop(void);
void control_free(void);

#endif
