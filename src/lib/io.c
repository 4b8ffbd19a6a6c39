/*
 * io: see io.h. Built on libevent. Plaintext: a bufferevent holds and writes the output
 * (replies usually go straight to the socket, see io_write) and owns the input buffer,
 * but reading is ours: one readv() per readable event into space reserved in that buffer.
 * (libevent's own reader asks the kernel with ioctl(FIONREAD) before every read: one
 * system call per read we do not need.) TLS: libevent's OpenSSL filter over the socket
 * bufferevent does both directions, with SSL objects made by tls.c.
 */
#include "lib/io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/loop.h"
#include "lib/log.h"
#include "lib/mem.h"

#define IO_READ_CHUNK (64 * 1024) /* most bytes taken by one read */

struct io {
    struct bufferevent *bev;
    struct event *rev; /* plaintext input (NULL under TLS) */
    struct evbuffer *in; /* plaintext input buffer (under TLS the filter's is used) */
    bool rev_added;
    bool suspended;    /* the input buffer is full: not reading until the owner drains it */
    bool eof;          /* the peer closed (or the read failed): no more reading */
    bool reading; /* the owner wants input */
    struct timer *flush_check; /* TLS: waits for the socket layer to drain too */
    const struct io_handlers *h;
    void *arg;
    void *ssl; /* owned by the filter bufferevent once TLS starts */
    unsigned read_ms, write_ms;
    bool connecting;
    bool tls_handshaking;
    int fd;
};

/* Add or remove the plaintext read event as the state asks; re-adding a pending event
 * restarts its timeout, which is what a new read timeout needs. */
static void rev_update(struct io *io, bool timeout_changed)
{
    if (io->rev == NULL)
        return;
    bool want = io->reading && !io->suspended && !io->eof && !io->connecting;
    if (want && (!io->rev_added || timeout_changed)) {
        struct timeval rtv = {io->read_ms / 1000, (io->read_ms % 1000) * 1000};
        event_add(io->rev, io->read_ms ? &rtv : NULL);
        io->rev_added = true;
    } else if (!want && io->rev_added) {
        event_del(io->rev);
        io->rev_added = false;
    }
}

static void apply_settings(struct io *io)
{
    struct timeval rtv = {io->read_ms / 1000, (io->read_ms % 1000) * 1000};
    struct timeval wtv = {io->write_ms / 1000, (io->write_ms % 1000) * 1000};
    if (io->rev != NULL) {
        bufferevent_set_timeouts(io->bev, NULL, io->write_ms ? &wtv : NULL);
        rev_update(io, true);
        return;
    }
    bufferevent_setwatermark(io->bev, EV_READ, 0, IO_INPUT_HIGH);
    bufferevent_set_timeouts(io->bev, io->read_ms ? &rtv : NULL, io->write_ms ? &wtv : NULL);
}

/* Plaintext input: readable (or the read timeout). The owner's callback may free io. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    if (what & EV_TIMEOUT) {
        io->reading = false; /* as a bufferevent does after a read timeout */
        rev_update(io, false);
        io->h->on_event(io, io->arg, IO_EV_TIMEOUT, "read");
        return;
    }
    struct evbuffer *in = io->in;
    size_t have = evbuffer_get_length(in);
    size_t want = IO_INPUT_HIGH - have;
    if (want > IO_READ_CHUNK)
        want = IO_READ_CHUNK;
    struct evbuffer_iovec v[2];
    int nv = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
    if (nv <= 0)
        fatal("evbuffer_reserve_space failed");
    struct iovec iov[2];
    for (int i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    ssize_t r = readv((int)fd, iov, nv);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        evbuffer_commit_space(in, v, 0);
        return;
    }
    if (r <= 0) {
        int err = r < 0 ? errno : 0;
        evbuffer_commit_space(in, v, 0);
        io->eof = true;
        rev_update(io, false);
        if (err == 0) {
            io->h->on_event(io, io->arg, IO_EV_EOF, "");
        } else {
            char detail[128];
            snprintf(detail, sizeof detail, "%s", strerror(err));
            io->h->on_event(io, io->arg, IO_EV_ERROR, detail);
        }
        return;
    }
    /* commit exactly what arrived */
    size_t got = (size_t)r;
    int used = 0;
    for (int i = 0; i < nv && got > 0; i++) {
        if (v[i].iov_len > got)
            v[i].iov_len = got;
        got -= v[i].iov_len;
        used = i + 1;
    }
    evbuffer_commit_space(in, v, used);
    if (evbuffer_get_length(in) >= IO_INPUT_HIGH) {
        io->suspended = true;
        rev_update(io, false);
    }
    io->h->on_read(io, io->arg);
}

static void on_bev_read(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    io->h->on_read(io, io->arg);
}

/* Bytes written but not yet handed to the kernel: with TLS, the filter's output and the
 * encrypted bytes still in the socket layer below it. */
static size_t pending_output(struct io *io)
{
    size_t n = evbuffer_get_length(bufferevent_get_output(io->bev));
    struct bufferevent *under = bufferevent_get_underlying(io->bev);
    if (under != NULL)
        n += evbuffer_get_length(bufferevent_get_output(under));
    return n;
}

static void on_bev_write(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    if (pending_output(io) > 0) {
        /* the TLS filter drained into the socket layer, which has not written it all yet:
         * "flushed" must mean flushed, or a close right after would cut the last reply */
        timer_arm(io->flush_check, 5);
        return;
    }
    if (io->h->on_flushed)
        io->h->on_flushed(io, io->arg);
}

static void on_flush_check(void *arg)
{
    struct io *io = arg;
    on_bev_write(io->bev, io);
}

static void on_bev_event(struct bufferevent *bev, short what, void *arg)
{
    struct io *io = arg;
    char detail[256] = "";

    if (what & BEV_EVENT_CONNECTED) {
        if (io->tls_handshaking) {
            io->tls_handshaking = false;
            io->h->on_event(io, io->arg, IO_EV_TLS_DONE, "");
        } else {
            io->connecting = false;
            rev_update(io, false);
            io->h->on_event(io, io->arg, IO_EV_CONNECTED, "");
        }
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        if (what & BEV_EVENT_READING)
            io->reading = false; /* libevent disabled reading (TLS) */
        io->h->on_event(io, io->arg, IO_EV_TIMEOUT, (what & BEV_EVENT_READING) ? "read" : "write");
        return;
    }
    if (io->ssl != NULL && (what & BEV_EVENT_ERROR)) {
        unsigned long e = bufferevent_get_openssl_error(bev);
        if (e != 0) {
            tls_last_error(detail, sizeof detail);
            if (detail[0] == '\0')
                snprintf(detail, sizeof detail, "openssl error %lu", e);
            io->h->on_event(io, io->arg, IO_EV_TLS_ERROR, detail);
            return;
        }
        if (io->tls_handshaking) {
            int err = EVUTIL_SOCKET_ERROR();
            snprintf(detail, sizeof detail, "handshake: %s",
                     err ? evutil_socket_error_to_string(err) : "connection closed");
            io->h->on_event(io, io->arg, IO_EV_TLS_ERROR, detail);
            return;
        }
    }
    if (what & BEV_EVENT_ERROR) {
        int err = EVUTIL_SOCKET_ERROR();
        snprintf(detail, sizeof detail, "%s", err ? evutil_socket_error_to_string(err) : "error");
        io->h->on_event(io, io->arg, IO_EV_ERROR, detail);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        io->h->on_event(io, io->arg, io->tls_handshaking ? IO_EV_TLS_ERROR : IO_EV_EOF,
                        io->tls_handshaking ? "handshake: connection closed" : "");
        return;
    }
}

static void set_nodelay(int fd)
{
    int one = 1;
    /* replies are written whole; do not let Nagle hold back the last one */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static struct io *io_wrap(int fd, const struct io_handlers *h, void *arg)
{
    struct io *io = xcalloc(1, sizeof *io);
    io->h = h;
    io->arg = arg;
    io->fd = fd;
    io->flush_check = timer_new(on_flush_check, io);
    io->bev = bufferevent_socket_new(loop_base(), fd, BEV_OPT_CLOSE_ON_FREE);
    if (io->bev == NULL)
        fatal("bufferevent_socket_new failed");
    bufferevent_setcb(io->bev, on_bev_read, on_bev_write, on_bev_event, io);
    io->rev = event_new(loop_base(), fd, EV_READ | EV_PERSIST, on_readable, io);
    io->in = evbuffer_new();
    if (io->rev == NULL || io->in == NULL)
        fatal("event_new failed");
    apply_settings(io);
    return io;
}

struct io *io_new(int fd, const struct io_handlers *h, void *arg)
{
    set_nodelay(fd);
    struct io *io = io_wrap(fd, h, arg);
    bufferevent_enable(io->bev, EV_WRITE); /* reading is ours (on_readable) */
    io->reading = true;
    rev_update(io, false);
    return io;
}

struct io *io_connect(const struct sockaddr *to, socklen_t tolen, const struct sockaddr *bind_to,
                      socklen_t bindlen, const struct io_handlers *h, void *arg)
{
    int fd = socket(to->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (bind_to != NULL && bind(fd, bind_to, bindlen) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    set_nodelay(fd);
    struct io *io = io_wrap(fd, h, arg);
    io->connecting = true;
    if (bufferevent_socket_connect(io->bev, to, (int)tolen) != 0) {
        int e = errno;
        io_free(io);
        errno = e ? e : ECONNREFUSED;
        return NULL;
    }
    bufferevent_enable(io->bev, EV_WRITE);
    io->reading = true; /* starts once connected */
    return io;
}

void io_free(struct io *io)
{
    if (io == NULL)
        return;
    if (io->rev)
        event_free(io->rev);
    if (io->in)
        evbuffer_free(io->in);
    if (io->bev)
        bufferevent_free(io->bev); /* closes the socket (and frees SSL for a filter) */
    timer_free(io->flush_check);
    free(io);
}

static struct evbuffer *input_of(struct io *io)
{
    return io->in != NULL ? io->in : bufferevent_get_input(io->bev);
}

size_t io_input_len(struct io *io)
{
    return evbuffer_get_length(input_of(io));
}

int io_input_peek(struct io *io, struct iovec *vec, int nvec)
{
    struct evbuffer_iovec ev[16];
    if (nvec > 16)
        nvec = 16;
    int n = evbuffer_peek(input_of(io), -1, NULL, ev, nvec);
    if (n > nvec)
        n = nvec;
    for (int i = 0; i < n; i++) {
        vec[i].iov_base = ev[i].iov_base;
        vec[i].iov_len = ev[i].iov_len;
    }
    return n;
}

static void maybe_resume(struct io *io)
{
    if (io->suspended && evbuffer_get_length(input_of(io)) < IO_INPUT_HIGH) {
        io->suspended = false;
        rev_update(io, false);
    }
}

void io_input_drain(struct io *io, size_t n)
{
    evbuffer_drain(input_of(io), n);
    maybe_resume(io);
}

void io_input_discard(struct io *io)
{
    struct evbuffer *in = input_of(io);
    evbuffer_drain(in, evbuffer_get_length(in));
    maybe_resume(io);
}

void io_write(struct io *io, const void *p, size_t n)
{
    if (n == 0)
        return;
    /* Plaintext with nothing queued: hand the bytes to the kernel now. Through the
     * bufferevent every reply would turn write interest on and off again in epoll (two
     * system calls); a socket that takes the whole reply, the usual case, needs neither. */
    if (io->ssl == NULL && !io->connecting &&
        evbuffer_get_length(bufferevent_get_output(io->bev)) == 0) {
        ssize_t w = send(io->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            p = (const char *)p + w;
            n -= (size_t)w;
        }
        /* on EAGAIN (or any error) the bufferevent takes the rest and reports errors */
        if (n == 0) {
            /* all out at once: still tell the owner, as the bufferevent would have (from
             * the loop, never from inside this call) */
            if (io->h->on_flushed != NULL && !timer_pending(io->flush_check))
                timer_arm(io->flush_check, 0);
            return;
        }
    }
    if (bufferevent_write(io->bev, p, n) != 0)
        fatal("bufferevent_write failed");
}

size_t io_output_len(struct io *io)
{
    return pending_output(io);
}

/* Both are called after every batch of input: they touch libevent (and epoll) only when
 * something changes. */
void io_read_enable(struct io *io, bool on)
{
    if (on == io->reading)
        return;
    io->reading = on;
    if (io->rev != NULL)
        rev_update(io, false);
    else if (on)
        bufferevent_enable(io->bev, EV_READ);
    else
        bufferevent_disable(io->bev, EV_READ);
}

void io_set_timeouts(struct io *io, unsigned read_ms, unsigned write_ms)
{
    if (io->read_ms == read_ms && io->write_ms == write_ms)
        return;
    io->read_ms = read_ms;
    io->write_ms = write_ms;
    apply_settings(io);
}

int io_start_tls(struct io *io, struct tls_ctx *ctx, bool server, const char *sni)
{
    if (io->ssl != NULL)
        return -1;
    void *ssl = tls_ssl_new(ctx, server, sni);
    if (ssl == NULL)
        return -1;
    if (server)
        io_input_discard(io);
    struct bufferevent *under = io->bev;
    bufferevent_setcb(under, NULL, NULL, NULL, NULL);
    struct bufferevent *filt = bufferevent_openssl_filter_new(
        loop_base(), under, ssl, server ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
        BEV_OPT_CLOSE_ON_FREE);
    if (filt == NULL) {
        bufferevent_setcb(under, on_bev_read, on_bev_write, on_bev_event, io);
        return -1;
    }
    /* from here the TLS filter reads the socket: our plaintext reader stops for good
     * (its buffer is empty: a server discarded it above; a client has consumed the 220) */
    if (io->rev != NULL) {
        event_free(io->rev);
        io->rev = NULL;
        io->rev_added = false;
        evbuffer_free(io->in);
        io->in = NULL;
        io->suspended = false;
    }
    /* Many SMTP peers close without a TLS close_notify: treat that as an ordinary EOF. */
    bufferevent_openssl_set_allow_dirty_shutdown(filt, 1);
    io->bev = filt;
    io->ssl = ssl;
    io->tls_handshaking = true;
    bufferevent_setcb(filt, on_bev_read, on_bev_write, on_bev_event, io);
    apply_settings(io);
    bufferevent_enable(filt, EV_READ | EV_WRITE);
    io->reading = true;
    return 0;
}

bool io_is_tls(struct io *io)
{
    return io->ssl != NULL && !io->tls_handshaking;
}

void io_tls_info(struct io *io, char *version, size_t vlen, char *cipher, size_t clen, int *bits)
{
    if (io->ssl == NULL) {
        if (vlen)
            version[0] = '\0';
        if (clen)
            cipher[0] = '\0';
        if (bits)
            *bits = 0;
        return;
    }
    tls_ssl_info(io->ssl, version, vlen, cipher, clen, bits);
}

bool io_tls_peer_verified(struct io *io, char *why, size_t whylen)
{
    if (io->ssl == NULL) {
        snprintf(why, whylen, "no TLS");
        return false;
    }
    return tls_ssl_verified(io->ssl, why, whylen);
}

int io_fd(struct io *io)
{
    return io->fd;
}

/* ---- listeners ---- */

int net_listen(const char *hostport, char *err, size_t errlen)
{
    char host[256];
    const char *port;
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || colon[1] == '\0') {
        snprintf(err, errlen, "\"%s\" is not host:port", hostport);
        return -1;
    }
    size_t hlen = (size_t)(colon - hostport);
    if (hlen >= sizeof host) {
        snprintf(err, errlen, "host part of \"%s\" is too long", hostport);
        return -1;
    }
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';
    port = colon + 1;
    char *h = host;
    if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
        h[hlen - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(strcmp(h, "*") == 0 || h[0] == '\0' ? NULL : h, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "\"%s\": %s (a numeric address and port are needed)", hostport,
                 gai_strerror(rc));
        return -1;
    }
    /* for a wildcard, prefer IPv6 with dual stack; else the single numeric address */
    struct addrinfo *ai = res;
    for (struct addrinfo *p = res; p; p = p->ai_next)
        if (p->ai_family == AF_INET6 && (h[0] == '*' || h[0] == '\0'))
            ai = p;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, (h[0] == '*' || h[0] == '\0') ? &zero : &one,
                   sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", hostport, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

struct listener {
    struct evconnlistener *lev;
    struct timer *retry;
    listener_accept_fn cb;
    void *arg;
    bool enabled;
};

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int len, void *arg)
{
    struct listener *l = arg;
    l->cb(fd, sa, (socklen_t)len, l->arg);
}

static void listener_retry(void *arg)
{
    struct listener *l = arg;
    if (l->enabled)
        evconnlistener_enable(l->lev);
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct listener *l = arg;
    int e = EVUTIL_SOCKET_ERROR();
    /* Out of descriptors or memory: back off briefly instead of spinning on accept(). */
    log_printf(LOG_LVL_WARN, "event=listener.accept_error error=\"%s\" retry_ms=100",
               evutil_socket_error_to_string(e));
    evconnlistener_disable(l->lev);
    timer_arm(l->retry, 100);
}

struct listener *listener_new(int fd, listener_accept_fn cb, void *arg)
{
    struct listener *l = xcalloc(1, sizeof *l);
    l->cb = cb;
    l->arg = arg;
    l->enabled = true;
    l->retry = timer_new(listener_retry, l);
    l->lev = evconnlistener_new(loop_base(), on_accept, l, LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (l->lev == NULL)
        fatal("evconnlistener_new failed");
    evconnlistener_set_error_cb(l->lev, on_accept_error);
    return l;
}

void listener_enable(struct listener *l, bool on)
{
    l->enabled = on;
    if (on)
        evconnlistener_enable(l->lev);
    else {
        evconnlistener_disable(l->lev);
        timer_stop(l->retry);
    }
}

void listener_free(struct listener *l, bool close_fd)
{
    if (l == NULL)
        return;
    int fd = evconnlistener_get_fd(l->lev);
    evconnlistener_free(l->lev);
    timer_free(l->retry);
    if (close_fd)
        close(fd);
    free(l);
}
