/*
 * server: see server.h.
 *
 * Ownership: a struct conn owns its io (socket and buffers), its session and, while a
 * message is being received, its queue draft. A conn whose client went away while a host
 * call was outstanding (a commit, a password check, a delayed reply) stays allocated as a
 * "zombie" until that call answers: callbacks never see freed memory.
 *
 * Flow control: input is fed to the session only while the session can take it (no
 * pending call, replies below the output limit); the io layer stops reading from the
 * socket when its bounded input buffer is full, so a client that sends without reading
 * replies is throttled rather than buffered without limit.
 */
#include "smtpd/server.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/dns.h"
#include "lib/io.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "lib/netaddr.h"
#include "lib/tls.h"
#include "mail/received.h"
#include "queue/queue.h"
#include "smtpd/auth.h"
#include "smtpd/iptable.h"
#include "smtpd/policy.h"
#include "smtpd/session.h"

#define OUTPUT_PAUSE (64 * 1024) /* stop reading while this much output is unsent */
#define TLS_HANDSHAKE_MS 60000
#define AUTH_DELAY_MAX_S 10

/* What a listener serves under one configuration snapshot; connections hold a reference. */
struct listen_ctx {
    int refs;
    struct conf *conf;
    const struct listen_conf *lc;
    struct tls_ctx *tls; /* NULL: no certificate, no STARTTLS */
};

struct slot {
    char *name;
    char *address;
    int fd;
    struct listener *listener;
    struct listen_ctx *ctx;
};

enum conn_timer { CT_NONE, CT_PREGREET, CT_TLS, CT_AUTH_DELAY };

struct conn {
    struct conn *prev, *next;
    struct listen_ctx *ctx;
    struct session_params par;
    struct io *io; /* NULL once the client is gone */
    struct session *sess;
    char sid[16];
    char ip[NETADDR_IP_MAX];
    unsigned port;
    bool trusted, counted_ip, greeted, closing, loopback;
    bool handshaking; /* TLS started, handshake not finished */
    char *rdns;
    struct dns_query *rdns_query;
    bool data_waits_for_rdns; /* DATA arrived before the reverse lookup finished */
    struct qdraft *draft;
    bool draft_failed;
    char proto[16];
    char single_rcpt[ADDR_TEXT_MAX + 1]; /* Received: "for" when there is one recipient */
    struct timer *timer;
    enum conn_timer timer_kind;
    struct reply delayed;
    unsigned pending; /* outstanding host calls */
    char *auth_candidate;
    unsigned auth_failures;
    unsigned messages;
    uint64_t start_ms;
};

static struct {
    struct slot *slots;
    size_t nslots;
    struct iptable *ips;
    struct conn *conns;
    unsigned nconns;  /* with a live socket */
    unsigned zombies; /* socket gone, a host call outstanding */
    bool shutting_down;
    struct timer *shutdown_timer;
    void (*shutdown_done)(void *arg);
    void *shutdown_arg;
    struct server_stats stats;
    uint32_t sid_counter;
} srv;

static void ctx_unref(struct listen_ctx *x)
{
    if (x == NULL || --x->refs > 0)
        return;
    tls_ctx_unref(x->tls);
    conf_unref(x->conf);
    free(x);
}

static const struct listen_conf *find_listen(const struct conf *c, const char *name)
{
    for (size_t i = 0; i < c->nlistens; i++)
        if (strcmp(c->listens[i].name, name) == 0)
            return &c->listens[i];
    return NULL;
}

/* Build the per-listener contexts of configuration c; NULL on a TLS error. */
static struct listen_ctx *make_ctx(struct conf *c, const struct listen_conf *lc, char *err,
                                   size_t errlen)
{
    struct listen_ctx *x = xcalloc(1, sizeof *x);
    x->refs = 1;
    x->conf = c;
    conf_ref(c);
    x->lc = lc;
    const char *cert = lc->tls_cert ? lc->tls_cert : c->tls_cert;
    const char *key = lc->tls_key ? lc->tls_key : c->tls_key;
    if (cert != NULL) {
        char why[512];
        x->tls = tls_server_ctx_new(cert, key, why, sizeof why);
        if (x->tls == NULL) {
            snprintf(err, errlen, "[listen %s]: %s", lc->name, why);
            ctx_unref(x);
            return NULL;
        }
    }
    return x;
}

/* ---- connection teardown ---- */

static void server_maybe_done(void);

static void conn_free(struct conn *cn)
{
    session_free(cn->sess); /* may call back data_abort: cn is still valid */
    if (cn->draft)
        queue_draft_abort(cn->draft);
    timer_free(cn->timer);
    free(cn->rdns);
    free(cn->auth_candidate);
    ctx_unref(cn->ctx);
    free(cn);
}

/* A host call finished: free a zombie whose last call this was. */
static bool conn_release(struct conn *cn)
{
    cn->pending--;
    if (cn->io != NULL)
        return false;
    if (cn->pending == 0) {
        srv.zombies--;
        conn_free(cn);
        server_maybe_done();
    }
    return true;
}

static void conn_close(struct conn *cn, const char *reason)
{
    if (cn->io == NULL)
        return;
    struct logline l;
    log_begin(&l, LOG_LVL_INFO, "smtp.disconnect");
    log_str(&l, "sid", cn->sid);
    log_str(&l, "client", cn->ip);
    log_str(&l, "reason", reason);
    log_uint(&l, "messages", cn->messages);
    log_uint(&l, "errors", session_errors(cn->sess));
    log_uint(&l, "duration_ms", loop_now_ms() - cn->start_ms);
    log_end(&l);

    io_free(cn->io);
    cn->io = NULL;
    if (cn->rdns_query) {
        dns_cancel(cn->rdns_query);
        cn->rdns_query = NULL;
        if (cn->data_waits_for_rdns) {
            cn->data_waits_for_rdns = false;
            cn->pending--; /* that host call will never answer now */
        }
    }
    if (cn->timer_kind != CT_AUTH_DELAY)
        timer_stop(cn->timer);
    if (cn->counted_ip)
        iptable_session_remove(srv.ips, cn->ip);
    if (cn->prev)
        cn->prev->next = cn->next;
    else
        srv.conns = cn->next;
    if (cn->next)
        cn->next->prev = cn->prev;
    srv.nconns--;
    srv.stats.sessions = srv.nconns;
    if (cn->pending > 0) {
        srv.zombies++; /* freed by conn_release() */
    } else {
        conn_free(cn);
        server_maybe_done();
    }
}

/* ---- moving bytes ---- */

static void flush_output(struct conn *cn)
{
    size_t len;
    const char *out = session_output(cn->sess, &len);
    if (len > 0) {
        io_write(cn->io, out, len);
        session_output_sent(cn->sess, len);
    }
}

static void start_tls(struct conn *cn, bool implicit);

/* After the session moved: send replies, apply its wishes, set timeouts. */
static void conn_after(struct conn *cn)
{
    if (cn->io == NULL)
        return;
    flush_output(cn);
    if (session_wants_close(cn->sess)) {
        cn->closing = true;
        io_read_enable(cn->io, false);
        if (io_output_len(cn->io) == 0)
            conn_close(cn, "closed");
        return;
    }
    if (session_wants_tls(cn->sess)) {
        if (!cn->handshaking)
            start_tls(cn, false);
        return;
    }
    /* Reading pauses only while replies pile up unread (the client is not reading); while
     * a host call is pending the socket is still read into the bounded input buffer (the
     * session just does not consume it), which saves two epoll changes per message. */
    io_read_enable(cn->io, io_output_len(cn->io) < OUTPUT_PAUSE);
    const struct conf *c = cn->ctx->conf;
    unsigned ms = (unsigned)(session_reading_data(cn->sess) ? c->data_timeout_ms
                                                            : c->command_timeout_ms);
    io_set_timeouts(cn->io, ms, (unsigned)c->command_timeout_ms);
}

static void conn_feed(struct conn *cn)
{
    while (cn->io != NULL && !cn->closing && cn->greeted && !session_pending(cn->sess) &&
           !session_wants_tls(cn->sess) && io_output_len(cn->io) < OUTPUT_PAUSE &&
           cn->timer_kind != CT_AUTH_DELAY) {
        struct iovec v[8];
        int n = io_input_peek(cn->io, v, 8);
        if (n <= 0)
            break;
        size_t used = 0;
        for (int i = 0; i < n; i++) {
            size_t u = session_input(cn->sess, v[i].iov_base, v[i].iov_len);
            used += u;
            if (u < v[i].iov_len)
                break;
        }
        io_input_drain(cn->io, used);
        flush_output(cn);
        if (used == 0 || session_state(cn->sess) == SS_CLOSED)
            break;
    }
    conn_after(cn);
}

/* ---- greeting, pregreet, TLS ---- */

static void greet(struct conn *cn)
{
    cn->greeted = true;
    session_greet(cn->sess);
    conn_feed(cn); /* anything already sent by a client that waited for nothing */
}

static void on_timer(void *arg)
{
    struct conn *cn = arg;
    enum conn_timer kind = cn->timer_kind;
    cn->timer_kind = CT_NONE;
    switch (kind) {
    case CT_NONE:
        break;
    case CT_PREGREET:
        greet(cn);
        break;
    case CT_TLS:
        log_printf(LOG_LVL_INFO, "event=smtp.tls_timeout sid=%s", cn->sid);
        conn_close(cn, "tls_handshake_timeout");
        break;
    case CT_AUTH_DELAY:
        if (conn_release(cn))
            return;
        session_resume(cn->sess, &cn->delayed);
        conn_feed(cn);
        break;
    }
}

static void arm(struct conn *cn, enum conn_timer kind, uint64_t ms)
{
    cn->timer_kind = kind;
    timer_arm(cn->timer, ms);
}

static void start_tls(struct conn *cn, bool implicit)
{
    if (io_start_tls(cn->io, cn->ctx->tls, true, NULL) != 0) {
        log_printf(LOG_LVL_WARN, "event=smtp.tls_error sid=%s error=\"cannot start TLS\"",
                   cn->sid);
        conn_close(cn, "tls_error");
        return;
    }
    cn->handshaking = true;
    arm(cn, CT_TLS, TLS_HANDSHAKE_MS);
    io_set_timeouts(cn->io, TLS_HANDSHAKE_MS, TLS_HANDSHAKE_MS);
}

static void tls_done(struct conn *cn)
{
    cn->handshaking = false;
    timer_stop(cn->timer);
    cn->timer_kind = CT_NONE;
    char version[32], cipher[96];
    int bits;
    io_tls_info(cn->io, version, sizeof version, cipher, sizeof cipher, &bits);
    struct logline l;
    log_begin(&l, LOG_LVL_INFO, "smtp.tls");
    log_str(&l, "sid", cn->sid);
    log_str(&l, "version", version);
    log_str(&l, "cipher", cipher);
    log_int(&l, "bits", bits);
    log_end(&l);
    if (!cn->greeted) {
        session_set_tls(cn->sess, true); /* implicit TLS: greet now */
        greet(cn);
    } else {
        session_tls_started(cn->sess);
        conn_feed(cn);
    }
}

/* ---- io callbacks ---- */

static void on_read(struct io *io, void *arg)
{
    struct conn *cn = arg;
    if (!cn->greeted) {
        if (cn->timer_kind == CT_PREGREET) {
            timer_stop(cn->timer);
            cn->timer_kind = CT_NONE;
            io_input_discard(io);
            cn->greeted = true;
            struct reply r;
            reply_set(&r, 554, "5.5.1",
                      "%s Error: SMTP protocol violation (client spoke before the greeting)",
                      cn->ctx->conf->hostname);
            log_printf(LOG_LVL_INFO, "event=smtp.pregreet sid=%s client=%s", cn->sid, cn->ip);
            session_close_with(cn->sess, &r);
            conn_after(cn);
        }
        return;
    }
    conn_feed(cn);
}

static void on_flushed(struct io *io, void *arg)
{
    struct conn *cn = arg;
    if (cn->closing) {
        conn_close(cn, "closed");
        return;
    }
    conn_feed(cn);
}

static void on_event(struct io *io, void *arg, enum io_event ev, const char *detail)
{
    struct conn *cn = arg;
    switch (ev) {
    case IO_EV_CONNECTED:
        break;
    case IO_EV_TLS_DONE:
        tls_done(cn);
        break;
    case IO_EV_TIMEOUT:
        if (cn->closing) {
            conn_close(cn, "write_timeout");
            return;
        }
        log_printf(LOG_LVL_INFO, "event=smtp.timeout sid=%s state=%d", cn->sid,
                   (int)session_state(cn->sess));
        session_timeout(cn->sess);
        conn_after(cn);
        break;
    case IO_EV_TLS_ERROR: {
        struct logline l;
        log_begin(&l, LOG_LVL_INFO, "smtp.tls_error");
        log_str(&l, "sid", cn->sid);
        log_str(&l, "error", detail);
        log_end(&l);
        conn_close(cn, "tls_error");
        break;
    }
    case IO_EV_EOF:
        conn_close(cn, cn->closing ? "closed" : "client_eof");
        break;
    case IO_EV_ERROR:
        conn_close(cn, cn->closing ? "closed" : "client_error");
        break;
    }
}

static const struct io_handlers conn_io = {on_read, on_flushed, on_event};

/* ---- the session's host calls ---- */

static struct policy_client client_of(const struct conn *cn)
{
    struct policy_client pc = {cn->ctx->lc->role, cn->trusted, session_auth_user(cn->sess)};
    return pc;
}

static enum host_rc host_mail(void *ctx, const struct mailaddr *from, const struct mail_params *p,
                              struct reply *r)
{
    struct conn *cn = ctx;
    if (!queue_space_ok()) {
        reply_set(r, 452, "4.3.1", "Insufficient system storage, try again later");
        return HOST_DONE;
    }
    struct policy_client pc = client_of(cn);
    policy_mail(cn->ctx->conf, &pc, from, r);
    return HOST_DONE;
}

static enum host_rc host_rcpt(void *ctx, const struct mailaddr *to, const struct rcpt_params *p,
                              struct reply *r)
{
    struct conn *cn = ctx;
    struct policy_client pc = client_of(cn);
    policy_rcpt(cn->ctx->conf, &pc, to, r);
    return HOST_DONE;
}

/* Open the queue draft and write the Received: header (the reverse name is final now). */
static void open_draft(struct conn *cn, struct reply *r)
{
    const struct conf *c = cn->ctx->conf;
    if (cn->draft != NULL)
        fatal("session %s: a second draft", cn->sid);
    cn->draft = queue_draft_new();
    cn->draft_failed = false;
    char tls[160] = "";
    if (session_tls(cn->sess)) {
        char version[32], cipher[96];
        int bits;
        io_tls_info(cn->io, version, sizeof version, cipher, sizeof cipher, &bits);
        snprintf(tls, sizeof tls, "version=%s cipher=%s bits=%d", version, cipher, bits);
    }
    struct received_info ri = {
        .helo = session_helo(cn->sess),
        .client_name = cn->rdns,
        .client_ip = cn->ip,
        .by = c->hostname,
        .with = cn->proto,
        .tls = tls[0] ? tls : NULL,
        .id = queue_draft_id(cn->draft),
        .for_addr = cn->single_rcpt[0] ? cn->single_rcpt : NULL,
        .when = time(NULL),
    };
    char hdr[RECEIVED_MAX];
    size_t n = received_format(&ri, hdr, sizeof hdr);
    if (n == 0 || !queue_draft_write(cn->draft, hdr, n)) {
        queue_draft_abort(cn->draft);
        cn->draft = NULL;
        reply_set(r, 451, "4.3.0", "Error: cannot queue the message now, try again later");
        return;
    }
    reply_set(r, 354, NULL, "go ahead");
}

static enum host_rc host_data_begin(void *ctx, const struct envelope *env, struct reply *r)
{
    struct conn *cn = ctx;
    snprintf(cn->proto, sizeof cn->proto, "%s", session_protocol(cn->sess));
    snprintf(cn->single_rcpt, sizeof cn->single_rcpt, "%s",
             env->nrcpts == 1 ? env->rcpts[0].addr : "");
    if (cn->rdns_query != NULL) {
        /* the client's name is still being looked up (bounded by reverse_dns_timeout):
         * Received: should carry it, so the message starts when the answer is in */
        cn->data_waits_for_rdns = true;
        cn->pending++;
        return HOST_PENDING;
    }
    open_draft(cn, r);
    return HOST_DONE;
}

static void host_data_write(void *ctx, const char *p, size_t n)
{
    struct conn *cn = ctx;
    if (cn->draft != NULL && !cn->draft_failed && !queue_draft_write(cn->draft, p, n))
        cn->draft_failed = true;
}

struct commit_ctx {
    struct conn *cn;
    char qid[QID_MAX];
    size_t size;
    size_t nrcpts;
    char *from;
    char *to; /* the first recipient */
};

static void commit_done(void *arg, int err)
{
    struct commit_ctx *cc = arg;
    struct conn *cn = cc->cn;
    struct logline l;
    log_begin(&l, err ? LOG_LVL_WARN : LOG_LVL_INFO, err ? "smtp.queue_failed" : "smtp.queued");
    log_str(&l, "sid", cn->sid);
    log_str(&l, "qid", cc->qid);
    log_str(&l, "from", cc->from);
    log_str(&l, "to", cc->to);
    log_uint(&l, "rcpts", cc->nrcpts);
    log_uint(&l, "size", cc->size);
    log_str(&l, "proto", cn->proto);
    log_end(&l);
    struct reply r;
    if (err == 0) {
        cn->messages++;
        srv.stats.messages++;
        reply_set(&r, 250, "2.0.0", "Ok: queued as %s", cc->qid);
    } else {
        reply_set(&r, 451, "4.3.0", "Error: queue write failed, try again later");
    }
    free(cc->from);
    free(cc->to);
    free(cc);
    if (conn_release(cn))
        return;
    session_resume(cn->sess, &r);
    conn_feed(cn);
}

static enum host_rc host_data_end(void *ctx, struct envelope *env, struct reply *r)
{
    struct conn *cn = ctx;
    struct qdraft *d = cn->draft;
    cn->draft = NULL;
    if (d == NULL || cn->draft_failed) {
        if (d)
            queue_draft_abort(d);
        reply_set(r, 451, "4.3.0", "Error: queue write failed, try again later");
        return HOST_DONE;
    }
    envelope_set(&env->client_ip, cn->ip);
    envelope_set(&env->client_name, cn->rdns);
    envelope_set(&env->helo, session_helo(cn->sess));
    envelope_set(&env->auth_user, session_auth_user(cn->sess));
    envelope_set(&env->protocol, cn->proto);
    env->arrival = time(NULL);

    struct commit_ctx *cc = xcalloc(1, sizeof *cc);
    cc->cn = cn;
    snprintf(cc->qid, sizeof cc->qid, "%s", queue_draft_id(d));
    cc->size = queue_draft_size(d);
    cc->nrcpts = env->nrcpts;
    cc->from = xstrdup(env->sender);
    cc->to = xstrdup(env->nrcpts ? env->rcpts[0].addr : "");
    cn->pending++;
    queue_draft_commit(d, envelope_move(env), commit_done, cc);
    return HOST_PENDING;
}

static void host_data_abort(void *ctx)
{
    struct conn *cn = ctx;
    if (cn->draft != NULL) {
        queue_draft_abort(cn->draft);
        cn->draft = NULL;
    }
}

static void auth_done(void *arg, bool ok)
{
    struct conn *cn = arg;
    const struct conf *c = cn->ctx->conf;
    if (cn->io == NULL) {
        conn_release(cn);
        return;
    }
    struct logline l;
    log_begin(&l, ok ? LOG_LVL_INFO : LOG_LVL_WARN, ok ? "smtp.auth" : "smtp.auth_failed");
    log_str(&l, "sid", cn->sid);
    log_str(&l, "client", cn->ip);
    log_str(&l, "user", cn->auth_candidate);
    log_end(&l);
    if (ok) {
        session_set_auth_user(cn->sess, cn->auth_candidate);
        struct reply r;
        reply_set(&r, 235, "2.7.0", "Authentication successful");
        conn_release(cn);
        session_resume(cn->sess, &r);
        conn_feed(cn);
        return;
    }
    /* a growing delay per client address, then the refusal; never a hint about the user */
    unsigned failures = iptable_auth_failed(srv.ips, cn->ip, time(NULL));
    cn->auth_failures++;
    reply_set(&cn->delayed, 535, "5.7.8", "Authentication credentials invalid");
    if (cn->auth_failures >= c->auth_max_failures) {
        conn_release(cn);
        session_resume(cn->sess, &cn->delayed);
        struct reply bye;
        reply_set(&bye, 421, "4.7.0", "%s Error: too many authentication failures",
                  c->hostname);
        session_close_with(cn->sess, &bye);
        conn_after(cn);
        return;
    }
    unsigned delay = failures < AUTH_DELAY_MAX_S ? failures : AUTH_DELAY_MAX_S;
    /* the pending count stays raised until the delay ends (on_timer releases it) */
    arm(cn, CT_AUTH_DELAY, (uint64_t)delay * 1000);
    conn_after(cn);
}

static enum host_rc host_auth(void *ctx, const char *user, const char *password, struct reply *r)
{
    struct conn *cn = ctx;
    char canonical[ADDR_TEXT_MAX + 1];
    const char *hash = NULL;
    if (!policy_find_login(cn->ctx->conf, user, canonical, sizeof canonical, &hash))
        snprintf(canonical, sizeof canonical, "%s", user);
    free(cn->auth_candidate);
    cn->auth_candidate = xstrdup(canonical);
    cn->pending++;
    auth_verify(hash, password, auth_done, cn);
    return HOST_PENDING;
}

static void host_starttls(void *ctx)
{
    /* conn_after() sees session_wants_tls() and starts the handshake once the 220 is out */
}

static const struct session_host host_ops = {
    host_mail, host_rcpt, host_data_begin, host_data_write,
    host_data_end, host_data_abort, host_auth, host_starttls,
};

/* ---- reverse DNS ---- */

static void rdns_done(void *arg, const char *name)
{
    struct conn *cn = arg;
    cn->rdns_query = NULL;
    if (name != NULL)
        cn->rdns = xstrdup(name);
    if (cn->data_waits_for_rdns) {
        cn->data_waits_for_rdns = false;
        if (conn_release(cn))
            return;
        struct reply r;
        open_draft(cn, &r);
        session_resume(cn->sess, &r);
        conn_feed(cn);
    }
}

/* ---- accepting ---- */

static void on_accept(int fd, const struct sockaddr *sa, socklen_t len, void *arg)
{
    struct slot *sl = arg;
    struct listen_ctx *x = sl->ctx;
    const struct conf *c = x->conf;
    struct conn *cn = xcalloc(1, sizeof *cn);
    cn->ctx = x;
    x->refs++;
    cn->start_ms = loop_now_ms();
    sockaddr_format(sa, cn->ip, sizeof cn->ip, &cn->port);
    cn->trusted = cidr_list_match(&c->trusted_networks, sa);
    cn->loopback = sockaddr_is_loopback(sa);
    snprintf(cn->sid, sizeof cn->sid, "%08X%04X", (unsigned)time(NULL),
             (unsigned)(srv.sid_counter++ & 0xffff));
    cn->timer = timer_new(on_timer, cn);

    cn->par.hostname = c->hostname;
    cn->par.size_limit = c->message_size_limit;
    cn->par.max_recipients = c->max_recipients;
    cn->par.max_errors = c->max_errors;
    cn->par.max_received = c->max_received_headers;
    cn->par.starttls = x->tls != NULL && x->lc->role != ROLE_SUBMISSIONS;
    cn->par.auth = x->lc->role != ROLE_MX;
    cn->par.auth_plain_ok = c->auth_plaintext_loopback && cn->loopback;
    cn->par.require_auth = x->lc->role != ROLE_MX;
    cn->sess = session_new(&cn->par, &host_ops, cn, cn->sid);
    cn->io = io_new(fd, &conn_io, cn);
    io_set_timeouts(cn->io, (unsigned)c->command_timeout_ms, (unsigned)c->command_timeout_ms);

    cn->next = srv.conns;
    if (srv.conns)
        srv.conns->prev = cn;
    srv.conns = cn;
    srv.nconns++;
    srv.stats.sessions = srv.nconns;
    srv.stats.accepted_connections++;

    struct logline l;
    log_begin(&l, LOG_LVL_INFO, "smtp.connect");
    log_str(&l, "sid", cn->sid);
    log_str(&l, "client", cn->ip);
    log_uint(&l, "port", cn->port);
    log_str(&l, "listener", x->lc->name);
    log_end(&l);

    struct reply refuse = {0};
    if (srv.nconns > c->max_sessions) {
        reply_set(&refuse, 421, "4.7.0", "%s Error: too many connections, try again later",
                  c->hostname);
    } else if (!cidr_list_match(&c->session_limit_exceptions, sa)) {
        cn->counted_ip = true;
        if (iptable_session_add(srv.ips, cn->ip) > c->max_sessions_per_ip)
            reply_set(&refuse, 421, "4.7.0",
                      "%s Error: too many connections from your address, try again later",
                      c->hostname);
    }
    if (refuse.code != 0) {
        srv.stats.refused_connections++;
        cn->greeted = true;
        session_close_with(cn->sess, &refuse);
        conn_after(cn);
        return;
    }
    if (c->reverse_dns && !cidr_list_match(&c->reverse_dns_skip, sa))
        cn->rdns_query = dns_reverse(sa, c->reverse_dns_timeout_ms, rdns_done, cn);
    if (x->lc->role == ROLE_SUBMISSIONS)
        start_tls(cn, true);
    else if (x->lc->pregreet_wait_ms > 0)
        arm(cn, CT_PREGREET, x->lc->pregreet_wait_ms);
    else
        greet(cn);
}

/* ---- life cycle ---- */

int server_bind(struct conf *c, char *err, size_t errlen)
{
    srv.ips = iptable_new();
    srv.slots = xcalloc(c->nlistens, sizeof *srv.slots);
    for (size_t i = 0; i < c->nlistens; i++) {
        const struct listen_conf *lc = &c->listens[i];
        struct slot *sl = &srv.slots[srv.nslots];
        char why[256];
        sl->fd = net_listen(lc->address, why, sizeof why);
        if (sl->fd < 0) {
            snprintf(err, errlen, "%s:%u: [listen %s]: %s", c->path, lc->line, lc->name, why);
            return -1;
        }
        srv.nslots++;
        sl->name = xstrdup(lc->name);
        sl->address = xstrdup(lc->address);
        sl->ctx = make_ctx(c, lc, err, errlen);
        if (sl->ctx == NULL)
            return -1;
    }
    return 0;
}

void server_start(void)
{
    for (size_t i = 0; i < srv.nslots; i++) {
        struct slot *sl = &srv.slots[i];
        sl->listener = listener_new(sl->fd, on_accept, sl);
        log_printf(LOG_LVL_INFO, "event=listen name=%s address=%s role=%s tls=%s", sl->name,
                   sl->address, conf_role_name(sl->ctx->lc->role),
                   sl->ctx->tls ? "yes" : "no");
    }
}

int server_reload(struct conf *c, char *err, size_t errlen)
{
    struct listen_ctx **fresh = xcalloc(srv.nslots ? srv.nslots : 1, sizeof *fresh);
    for (size_t i = 0; i < srv.nslots; i++) {
        const struct listen_conf *lc = find_listen(c, srv.slots[i].name);
        if (lc == NULL || strcmp(lc->address, srv.slots[i].address) != 0) {
            log_printf(LOG_LVL_WARN,
                       "event=reload.listener_changed name=%s note=\"listener changes need a "
                       "restart; keeping the old settings for it\"",
                       srv.slots[i].name);
            fresh[i] = NULL;
            continue;
        }
        fresh[i] = make_ctx(c, lc, err, errlen);
        if (fresh[i] == NULL) {
            for (size_t j = 0; j < i; j++)
                ctx_unref(fresh[j]);
            free(fresh);
            return -1;
        }
    }
    for (size_t i = 0; i < c->nlistens; i++) {
        bool known = false;
        for (size_t j = 0; j < srv.nslots; j++)
            known |= strcmp(srv.slots[j].name, c->listens[i].name) == 0;
        if (!known)
            log_printf(LOG_LVL_WARN,
                       "event=reload.listener_added name=%s note=\"new listeners need a "
                       "restart\"",
                       c->listens[i].name);
    }
    for (size_t i = 0; i < srv.nslots; i++) {
        if (fresh[i] == NULL)
            continue;
        ctx_unref(srv.slots[i].ctx);
        srv.slots[i].ctx = fresh[i];
    }
    free(fresh);
    return 0;
}

static void shutdown_finish(void *arg)
{
    if (srv.shutdown_done) {
        void (*done)(void *) = srv.shutdown_done;
        srv.shutdown_done = NULL;
        timer_stop(srv.shutdown_timer);
        done(srv.shutdown_arg);
    }
}

static void server_maybe_done(void)
{
    if (srv.shutting_down && srv.nconns == 0 && srv.zombies == 0 && srv.shutdown_done)
        shutdown_finish(NULL);
}

static void shutdown_deadline(void *arg)
{
    log_printf(LOG_LVL_WARN, "event=shutdown.timeout sessions=%u note=\"closing the rest\"",
               srv.nconns);
    while (srv.conns) {
        struct conn *cn = srv.conns;
        struct reply r;
        reply_set(&r, 421, "4.3.2", "%s Service shutting down, closing connection",
                  cn->ctx->conf->hostname);
        session_close_with(cn->sess, &r);
        flush_output(cn);
        conn_close(cn, "shutdown");
    }
    /* commits already handed to the queue finish in queue_close(); do not wait for them */
    shutdown_finish(NULL);
}

void server_shutdown(uint64_t timeout_ms, void (*done)(void *arg), void *arg)
{
    srv.shutting_down = true;
    srv.shutdown_done = done;
    srv.shutdown_arg = arg;
    for (size_t i = 0; i < srv.nslots; i++)
        if (srv.slots[i].listener)
            listener_enable(srv.slots[i].listener, false);
    srv.shutdown_timer = timer_new(shutdown_deadline, NULL);
    timer_arm(srv.shutdown_timer, timeout_ms);
    struct conn *next;
    for (struct conn *cn = srv.conns; cn; cn = next) {
        next = cn->next;
        session_shutdown(cn->sess);
        conn_after(cn);
    }
    server_maybe_done();
}

void server_free(void)
{
    while (srv.conns)
        conn_close(srv.conns, "shutdown");
    for (size_t i = 0; i < srv.nslots; i++) {
        listener_free(srv.slots[i].listener, true);
        if (srv.slots[i].listener == NULL && srv.slots[i].fd >= 0)
            close(srv.slots[i].fd);
        ctx_unref(srv.slots[i].ctx);
        free(srv.slots[i].name);
        free(srv.slots[i].address);
    }
    free(srv.slots);
    timer_free(srv.shutdown_timer);
    iptable_free(srv.ips);
    memset(&srv, 0, sizeof srv);
}

void server_get_stats(struct server_stats *s)
{
    *s = srv.stats;
}
