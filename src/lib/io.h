/*
 * io: buffered, non-blocking connections and listeners (libevent bufferevents), with TLS
 * layered on demand (STARTTLS) or from the first byte (implicit TLS).
 *
 * Ownership: an io owns its socket and both buffers; io_free() closes the socket. The input
 * buffer stops reading at IO_INPUT_HIGH bytes, so a peer can never make it grow further: the
 * owner must consume input to receive more. Callbacks run on the loop thread; a callback may
 * call io_free() on its own io, and must not touch it afterwards.
 */
#ifndef TERN_IO_H
#define TERN_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "lib/tls.h"

#define IO_INPUT_HIGH (256 * 1024)

enum io_event {
    IO_EV_CONNECTED, /* client side: the connection (and nothing more) is up */
    IO_EV_TLS_DONE,  /* the TLS handshake finished */
    IO_EV_EOF,       /* the peer closed */
    IO_EV_ERROR,     /* socket error (detail says which) */
    IO_EV_TIMEOUT,   /* no progress in time (read or write timeout) */
    IO_EV_TLS_ERROR, /* TLS handshake or record failure */
};

struct io;

struct io_handlers {
    void (*on_read)(struct io *io, void *arg);    /* new input is buffered */
    /* everything written so far is in the kernel; may be NULL. Runs from the loop after
     * io_write() (never inside it), also when the socket took the bytes at once. */
    void (*on_flushed)(struct io *io, void *arg);
    void (*on_event)(struct io *io, void *arg, enum io_event ev, const char *detail);
};

/* Wrap an accepted, non-blocking socket. */
struct io *io_new(int fd, const struct io_handlers *h, void *arg);
/* Start a non-blocking connect; completion arrives as IO_EV_CONNECTED or an error. bind_to
 * may be NULL. Returns NULL (and errno) if the socket cannot even be created. */
struct io *io_connect(const struct sockaddr *to, socklen_t tolen, const struct sockaddr *bind_to,
                      socklen_t bindlen, const struct io_handlers *h, void *arg);
void io_free(struct io *io);

size_t io_input_len(struct io *io);
/* Fill up to nvec pieces covering the buffered input in order; returns how many. */
int io_input_peek(struct io *io, struct iovec *vec, int nvec);
void io_input_drain(struct io *io, size_t n);
/* Discard all buffered input. io_start_tls() does this for the server side, so nothing a
 * client pipelined in plaintext after STARTTLS is read as if it came over TLS. */
void io_input_discard(struct io *io);

void io_write(struct io *io, const void *p, size_t n);
size_t io_output_len(struct io *io);

void io_read_enable(struct io *io, bool on);
/* Timeouts in milliseconds; 0 disables. The read timeout runs only while reading is on. */
void io_set_timeouts(struct io *io, unsigned read_ms, unsigned write_ms);

/* Layer TLS over the connection: as server (SSL object from tls_server_new_ssl) or client.
 * IO_EV_TLS_DONE or IO_EV_TLS_ERROR reports the result. Returns -1 if TLS cannot start. */
int io_start_tls(struct io *io, struct tls_ctx *ctx, bool server, const char *sni);
bool io_is_tls(struct io *io);
/* "TLSv1.3" and "TLS_AES_256_GCM_SHA384" style strings; "" without TLS. */
void io_tls_info(struct io *io, char *version, size_t vlen, char *cipher, size_t clen, int *bits);
/* Whether the peer's certificate verified against the client context's trust store
 * (and the name given to io_start_tls); with detail of why not. */
bool io_tls_peer_verified(struct io *io, char *why, size_t whylen);

int io_fd(struct io *io);

/* ---- listeners ---- */

/* Create, bind and listen on "ip:port", "[ipv6]:port" or "*:port". Returns the fd, or -1
 * with a message in err. */
int net_listen(const char *hostport, char *err, size_t errlen);

struct listener;
typedef void (*listener_accept_fn)(int fd, const struct sockaddr *sa, socklen_t len, void *arg);
struct listener *listener_new(int fd, listener_accept_fn cb, void *arg);
void listener_enable(struct listener *l, bool on);
/* Frees the listener; closes the fd only if close_fd. */
void listener_free(struct listener *l, bool close_fd);

#endif
