/*
 * control: ternd's side of the command channel (see control.h; the wire format is in
 * ctlproto.h).
 *
 * One request per connection: the client sends one line, the daemon answers with records
 * and one status line, then closes. Invariants:
 *   - Only root and the daemon's own user may talk to it: the socket is created 0600 (the
 *     umask is narrowed around bind(), so it is never wider, not even for a moment) and
 *     every peer's SO_PEERCRED uid is checked as well.
 *   - Everything is bounded: the request line (CTL_REQUEST_MAX), the time to send it
 *     (CTL_REQUEST_TIMEOUT_MS), the number of clients (CTL_CLIENTS_MAX), the time a client
 *     may leave output unread (CTL_WRITE_TIMEOUT_MS) and the output held for a client: long
 *     answers (queue, show) are produced in chunks of about CTL_OUTPUT_CHUNK as the client
 *     reads them, so a queue of a million messages never sits in memory as text.
 *   - No pointer into the queue is kept between callbacks: a listing keeps queue ids and
 *     looks each message up again when it resumes (the message may be gone by then).
 *   - Text from messages and clients reaches the wire only through ctlproto's escaping.
 */
#include "control/control.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf/conf.h"
#include "control/ctlproto.h"
#include "lib/buf.h"
#include "lib/io.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "queue/qid.h"
#include "queue/queue.h"
#include "smtpd/server.h"

#define CTL_CLIENTS_MAX 32
#define CTL_BACKLOG 16
#define CTL_REQUEST_TIMEOUT_MS 10000u
#define CTL_WRITE_TIMEOUT_MS 30000u
#define CTL_OUTPUT_CHUNK (64 * 1024)
#define CTL_HEADERS_MAX (64 * 1024) /* `show` reads at most this much of a message's start */

enum client_state {
    CL_READING,   /* waiting for the request line */
    CL_STREAMING, /* producing a long answer as the client reads it */
    CL_CLOSING,   /* the status line is written; free once it is flushed */
};

struct client {
    struct client *prev, *next;
    struct io *io;
    struct timer *timer;
    unsigned long id;
    unsigned uid;
    enum client_state state;
    uint64_t started_ms;
    char cmd[CTL_CMD_MAX + 1];
    char arg[CTL_ARG_MAX + 1];
    struct buf line; /* the record being built */

    /* a listing in progress (queue, show) */
    bool detail;          /* show: every field, and the headers */
    char (*ids)[QID_MAX];
    size_t nids, ids_cap, pos;
    bool msg_written;     /* the message record of ids[pos] is out */
    uint32_t rcpt;        /* next recipient of ids[pos] */
    size_t listed;        /* messages actually listed */
    char *hdr;            /* show: the header section read from the message */
    size_t hdr_len, hdr_pos;
};

static struct {
    int fd;
    char *path;
    dev_t dev;
    ino_t ino;
    struct listener *listener;
    struct conf *conf;
    struct client *clients;
    unsigned nclients;
    unsigned long next_id;
    uint64_t start_ms;
} ctl = {.fd = -1};

/* ---- the socket ---- */

/* Is something listening at sa? (Connect without blocking: a full backlog (EAGAIN) still
 * means a live listener.) */
static bool socket_answers(const struct sockaddr_un *sa, socklen_t len, int *err)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return false;
    }
    int rc = connect(fd, (const struct sockaddr *)sa, len);
    *err = rc == 0 ? 0 : errno;
    close(fd);
    return rc == 0 || *err == EAGAIN || *err == EINPROGRESS;
}

int control_bind(const struct conf *c, int uid, int gid, char *err, size_t errlen)
{
    const char *path = c->control_socket;
    struct sockaddr_un sa;
    socklen_t salen;
    int dirfd, fd = -1;
    if (ctl_sockaddr(path, &sa, &salen, &dirfd) != 0) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        return -1;
    }
    const char *p = sa.sun_path; /* the name to use (maybe through dirfd) */
    struct stat st;
    if (lstat(p, &st) == 0) {
        int e;
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "control socket %s exists and is not a socket", path);
            goto fail;
        }
        if (socket_answers(&sa, salen, &e)) {
            snprintf(err, errlen,
                     "control socket %s: another ternd is running (it answers on the socket)",
                     path);
            goto fail;
        }
        if (e != ECONNREFUSED) {
            snprintf(err, errlen, "control socket %s: cannot tell whether it is in use: %s",
                     path, strerror(e));
            goto fail;
        }
        /* stale: left by a ternd that did not stop cleanly */
        if (unlink(p) != 0 && errno != ENOENT) {
            snprintf(err, errlen, "cannot remove stale control socket %s: %s", path,
                     strerror(errno));
            goto fail;
        }
    } else if (errno != ENOENT) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        goto fail;
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "control socket: %s", strerror(errno));
        goto fail;
    }
    mode_t old = umask(0177); /* born 0600: no window in which others could connect */
    int rc = bind(fd, (struct sockaddr *)&sa, salen);
    int e = errno;
    umask(old);
    if (rc != 0) {
        if (e == EADDRINUSE)
            snprintf(err, errlen, "control socket %s: another ternd is running (it was "
                     "created while this one started)", path);
        else
            snprintf(err, errlen, "cannot bind control socket %s: %s", path, strerror(e));
        goto fail;
    }
    if (chmod(p, 0600) != 0 || (uid >= 0 && chown(p, (uid_t)uid, (gid_t)gid) != 0)) {
        snprintf(err, errlen, "cannot set owner or mode of control socket %s: %s", path,
                 strerror(errno));
        unlink(p);
        goto fail;
    }
    if (listen(fd, CTL_BACKLOG) != 0 || lstat(p, &st) != 0) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        unlink(p);
        goto fail;
    }
    ctl.dev = st.st_dev;
    ctl.ino = st.st_ino;
    if (dirfd >= 0)
        close(dirfd);
    ctl.fd = fd;
    free(ctl.path);
    ctl.path = xstrdup(path);
    return 0;

fail:
    if (fd >= 0)
        close(fd);
    if (dirfd >= 0)
        close(dirfd);
    return -1;
}

/* Remove the socket file, but only if it is still ours (a new ternd may have replaced it). */
static void unlink_socket(void)
{
    struct sockaddr_un sa;
    socklen_t salen;
    int dirfd;
    if (ctl.path == NULL || ctl_sockaddr(ctl.path, &sa, &salen, &dirfd) != 0)
        return;
    struct stat st;
    if (lstat(sa.sun_path, &st) == 0 && st.st_dev == ctl.dev && st.st_ino == ctl.ino)
        unlink(sa.sun_path); /* may fail after the privilege drop; the next start copes */
    if (dirfd >= 0)
        close(dirfd);
}

/* ---- clients ---- */

static void client_free(struct client *cl)
{
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        ctl.clients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    ctl.nclients--;
    io_free(cl->io);
    timer_free(cl->timer);
    buf_release(&cl->line);
    free(cl->ids);
    free(cl->hdr);
    free(cl);
}

static void send_line(struct client *cl)
{
    io_write(cl->io, cl->line.data, cl->line.len);
}

/* Write the status line, log the command, and close once the client has it all. */
static void finish(struct client *cl, bool ok, const char *text)
{
    char status[512];
    int n = ok ? snprintf(status, sizeof status, text && *text ? "ok %s\n" : "ok\n", text)
               : snprintf(status, sizeof status, "error: %s\n", text);
    if (n < 0 || (size_t)n >= sizeof status) {
        n = (int)sizeof status - 1;
        status[n - 1] = '\n';
    }
    io_write(cl->io, status, (size_t)n);
    cl->state = CL_CLOSING;
    timer_stop(cl->timer);

    struct logline l;
    log_begin(&l, ok ? LOG_LVL_INFO : LOG_LVL_WARN, "control.command");
    log_uint(&l, "cid", cl->id);
    log_uint(&l, "uid", cl->uid);
    log_str(&l, "cmd", cl->cmd[0] ? cl->cmd : NULL);
    if (cl->arg[0])
        log_str(&l, "arg", cl->arg);
    log_str(&l, "result", ok ? "ok" : "error");
    if (text && *text)
        log_str(&l, ok ? "detail" : "error", text);
    log_uint(&l, "ms", loop_now_ms() - cl->started_ms);
    log_end(&l);
}

static void finishf(struct client *cl, bool ok, const char *fmt, ...) PRINTF_LIKE(3, 4);
static void finishf(struct client *cl, bool ok, const char *fmt, ...)
{
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    finish(cl, ok, text);
}

/* ---- records ---- */

static const char *state_name(enum qrcpt_state s)
{
    switch (s) {
    case QR_PENDING:
        return "pending";
    case QR_DEFERRED:
        return "deferred";
    case QR_DELIVERED:
        return "delivered";
    case QR_FAILED:
        return "failed";
    case QR_EXPANDED:
        return "expanded";
    case QR_DELETED:
        return "deleted";
    }
    return "unknown";
}

static const char *body_name(enum body_type b)
{
    switch (b) {
    case BODY_7BIT:
        return "7bit";
    case BODY_8BITMIME:
        return "8bitmime";
    case BODY_BINARYMIME:
        return "binarymime";
    case BODY_UNSPEC:
        break;
    }
    return NULL;
}

static void notify_text(unsigned notify, char *out, size_t cap)
{
    out[0] = '\0';
    if (notify == 0)
        return;
    if (notify & DSN_NOTIFY_NEVER) {
        snprintf(out, cap, "never");
        return;
    }
    snprintf(out, cap, "%s%s%s", (notify & DSN_NOTIFY_SUCCESS) ? "success," : "",
             (notify & DSN_NOTIFY_FAILURE) ? "failure," : "",
             (notify & DSN_NOTIFY_DELAY) ? "delay," : "");
    size_t n = strlen(out);
    if (n > 0)
        out[n - 1] = '\0';
}

static void put_msg(struct client *cl, struct qmsg *m)
{
    const struct envelope *e = qmsg_envelope(m);
    time_t now = loop_now();
    struct buf *b = &cl->line;
    size_t open = 0;
    for (size_t i = 0; i < qmsg_nrcpts(m); i++) {
        enum qrcpt_state s = qmsg_rcpt(m, (uint32_t)i)->state;
        if (s == QR_PENDING || s == QR_DEFERRED)
            open++;
    }
    ctl_rec_begin(b, "msg");
    ctl_rec_str(b, "id", qmsg_id(m));
    ctl_rec_uint(b, "arrival", (unsigned long long)e->arrival);
    ctl_rec_uint(b, "age", now > e->arrival ? (unsigned long long)(now - e->arrival) : 0);
    ctl_rec_uint(b, "size", qmsg_size(m));
    ctl_rec_bool(b, "held", qmsg_held(m));
    ctl_rec_str(b, "sender", e->sender);
    ctl_rec_uint(b, "rcpts", qmsg_nrcpts(m));
    ctl_rec_uint(b, "open", open);
    if (cl->detail) {
        ctl_rec_str(b, "body", body_name(e->body));
        ctl_rec_bool(b, "smtputf8", e->smtputf8);
        ctl_rec_str(b, "ret", e->ret == DSN_RET_FULL ? "full" : e->ret == DSN_RET_HDRS ? "hdrs"
                                                                                       : NULL);
        ctl_rec_str(b, "envid", e->envid);
        ctl_rec_str(b, "protocol", e->protocol);
        ctl_rec_str(b, "client_ip", e->client_ip);
        ctl_rec_str(b, "client_name", e->client_name);
        ctl_rec_str(b, "helo", e->helo);
        ctl_rec_str(b, "auth_user", e->auth_user);
        if (cl->hdr_len == CTL_HEADERS_MAX && qmsg_size(m) > CTL_HEADERS_MAX)
            ctl_rec_bool(b, "headers_cut", true);
    }
    ctl_rec_end(b);
    send_line(cl);
}

static void put_rcpt(struct client *cl, struct qmsg *m, uint32_t i)
{
    const struct qrcpt *r = qmsg_rcpt(m, i);
    struct buf *b = &cl->line;
    ctl_rec_begin(b, "rcpt");
    ctl_rec_str(b, "id", qmsg_id(m));
    ctl_rec_uint(b, "n", i);
    ctl_rec_str(b, "addr", r->addr);
    ctl_rec_str(b, "state", state_name(r->state));
    ctl_rec_uint(b, "attempts", r->attempts);
    if (r->state == QR_DEFERRED && r->next_attempt)
        ctl_rec_uint(b, "next", (unsigned long long)r->next_attempt);
    if (r->in_flight)
        ctl_rec_bool(b, "in_flight", true);
    ctl_rec_str(b, "status", r->status);
    ctl_rec_str(b, "reply", r->last_reply);
    if (cl->detail) {
        char notify[40];
        notify_text(r->notify, notify, sizeof notify);
        if (r->first_attempt)
            ctl_rec_uint(b, "first", (unsigned long long)r->first_attempt);
        ctl_rec_str(b, "remote", r->remote_mta);
        ctl_rec_str(b, "orcpt", r->orcpt);
        if (notify[0])
            ctl_rec_str(b, "notify", notify);
        if (r->parent != QRCPT_NO_PARENT)
            ctl_rec_uint(b, "parent", r->parent);
        ctl_rec_bool(b, "delay_warned", r->delay_warned);
        ctl_rec_bool(b, "dsn_sent", r->dsn_sent);
    }
    ctl_rec_end(b);
    send_line(cl);
}

/* One header line (a physical line; continuation lines come as their own records). */
static bool put_next_header(struct client *cl)
{
    if (cl->hdr_pos >= cl->hdr_len)
        return false;
    const char *s = cl->hdr + cl->hdr_pos;
    size_t rest = cl->hdr_len - cl->hdr_pos;
    const char *nl = memchr(s, '\n', rest);
    size_t n = nl ? (size_t)(nl - s) : rest;
    cl->hdr_pos += nl ? n + 1 : n;
    if (n > 0 && s[n - 1] == '\r')
        n--;
    ctl_rec_begin(&cl->line, "header");
    ctl_rec_strn(&cl->line, "text", s, n);
    ctl_rec_end(&cl->line);
    send_line(cl);
    return true;
}

/* Produce output until about CTL_OUTPUT_CHUNK is waiting; called again when it drains. */
static void fill(struct client *cl)
{
    while (io_output_len(cl->io) < CTL_OUTPUT_CHUNK) {
        if (cl->pos >= cl->nids) {
            if (cl->detail)
                finish(cl, true, NULL);
            else
                finishf(cl, true, "%zu message%s", cl->listed, cl->listed == 1 ? "" : "s");
            return;
        }
        struct qmsg *m = queue_find(cl->ids[cl->pos]);
        if (m == NULL) {
            if (cl->detail) { /* gone while we were showing it */
                finishf(cl, false, "queue id %s went away", cl->ids[cl->pos]);
                return;
            }
            cl->pos++;
            cl->msg_written = false;
            cl->rcpt = 0;
            continue;
        }
        if (!cl->msg_written) {
            put_msg(cl, m);
            cl->msg_written = true;
            cl->listed++;
            continue;
        }
        if (cl->rcpt < qmsg_nrcpts(m)) {
            put_rcpt(cl, m, cl->rcpt++);
            continue;
        }
        if (cl->detail && put_next_header(cl))
            continue;
        cl->pos++;
        cl->msg_written = false;
        cl->rcpt = 0;
    }
}

static void start_listing(struct client *cl)
{
    cl->state = CL_STREAMING;
    buf_init(&cl->line, CTL_LINE_MAX);
    fill(cl);
}

/* ---- commands ---- */

static void collect_id(void *arg, struct qmsg *m)
{
    struct client *cl = arg;
    cl->ids = xgrow(cl->ids, &cl->ids_cap, cl->nids + 1, sizeof *cl->ids);
    snprintf(cl->ids[cl->nids++], QID_MAX, "%s", qmsg_id(m));
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Normalise and check an id argument; on failure the client has its answer. */
static bool check_id(struct client *cl, char *id)
{
    for (char *p = id; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    if (qid_valid(id))
        return true;
    char esc[4 * CTL_ARG_MAX + 3];
    ctl_escape(esc, sizeof esc, cl->arg, strlen(cl->arg));
    finishf(cl, false, "invalid queue id %s (ids are %d characters of 0-9 and A-Z)", esc,
            QID_LEN);
    return false;
}

static void cmd_queue(struct client *cl, char *arg)
{
    queue_foreach(collect_id, cl);
    /* ids sort in creation order: oldest first, as an operator reads a queue */
    if (cl->nids > 1)
        qsort(cl->ids, cl->nids, sizeof *cl->ids, cmp_id);
    start_listing(cl);
}

static void cmd_show(struct client *cl, char *id)
{
    if (!check_id(cl, id))
        return;
    struct qmsg *m = queue_find(id);
    if (m == NULL) {
        finishf(cl, false, "unknown queue id %s", id);
        return;
    }
    /* The header section, from the first CTL_HEADERS_MAX bytes. This reads on the loop
     * thread: a 64 KiB pread, normally from the page cache, once per operator command. */
    struct qbody body;
    qmsg_body(m, &body);
    size_t len = body.len < CTL_HEADERS_MAX ? body.len : CTL_HEADERS_MAX;
    cl->hdr = xmalloc(len + 1);
    if (len > 0 && qbody_read(&body, cl->hdr, len, 0) != 0) {
        finishf(cl, false, "cannot read message %s: %s", id, strerror(errno));
        return;
    }
    cl->hdr[len] = '\0';
    cl->hdr_len = len;
    /* the header section ends at the first empty line (LF or CRLF) */
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(cl->hdr + pos, '\n', len - pos);
        if (nl == NULL)
            break;
        size_t end = (size_t)(nl - cl->hdr);
        if (end == pos || (end == pos + 1 && cl->hdr[pos] == '\r')) {
            cl->hdr_len = pos;
            break;
        }
        pos = end + 1;
    }
    cl->detail = true;
    collect_id(cl, m);
    start_listing(cl);
}

/* "all" or an id; NULL in *idp for all. */
static bool id_or_all(struct client *cl, char *arg, const char **idp)
{
    if (arg[0] == '\0' || strcmp(arg, "all") == 0) {
        *idp = NULL;
        return true;
    }
    *idp = arg;
    return check_id(cl, arg);
}

static void cmd_flush(struct client *cl, char *arg)
{
    const char *id;
    if (!id_or_all(cl, arg, &id))
        return;
    if (queue_flush(id) != 0)
        finishf(cl, false, "unknown queue id %s", id ? id : "(all)");
    else
        finishf(cl, true, "flushed %s", id ? id : "all");
}

static void cmd_delete(struct client *cl, char *arg)
{
    const char *id;
    if (!id_or_all(cl, arg, &id))
        return;
    if (id == NULL) {
        struct queue_stats s;
        queue_get_stats(&s);
        queue_delete(NULL);
        finishf(cl, true, "deleted %zu message%s", s.messages, s.messages == 1 ? "" : "s");
    } else if (queue_delete(id) != 0) {
        finishf(cl, false, "unknown queue id %s", id);
    } else {
        finishf(cl, true, "deleted %s", id);
    }
}

static void hold_or_release(struct client *cl, char *arg, bool hold)
{
    const char *id;
    if (!id_or_all(cl, arg, &id))
        return;
    int (*op)(const char *) = hold ? queue_hold : queue_release;
    if (op(id) != 0)
        finishf(cl, false, "unknown queue id %s", id ? id : "(all)");
    else
        finishf(cl, true, "%s %s", hold ? "held" : "released", id ? id : "all");
}

static void cmd_hold(struct client *cl, char *arg)
{
    hold_or_release(cl, arg, true);
}

static void cmd_release(struct client *cl, char *arg)
{
    hold_or_release(cl, arg, false);
}

static void cmd_stats(struct client *cl, char *arg)
{
    struct queue_stats q;
    struct server_stats s;
    queue_get_stats(&q);
    server_get_stats(&s);
    struct buf *b = &cl->line;
    buf_init(b, CTL_LINE_MAX);
    ctl_rec_begin(b, "stats");
    ctl_rec_uint(b, "uptime", (loop_now_ms() - ctl.start_ms) / 1000);
    ctl_rec_uint(b, "pid", (unsigned long long)getpid());
    ctl_rec_uint(b, "messages", q.messages);
    ctl_rec_uint(b, "bytes", q.bytes);
    ctl_rec_uint(b, "held", q.held);
    ctl_rec_uint(b, "recipients_pending", q.recipients_pending);
    ctl_rec_uint(b, "recipients_deferred", q.recipients_deferred);
    ctl_rec_uint(b, "committed", q.committed);
    ctl_rec_uint(b, "delivered", q.delivered);
    ctl_rec_uint(b, "failed", q.failed);
    ctl_rec_uint(b, "deferred_attempts", q.deferred_attempts);
    ctl_rec_uint(b, "fsyncs", q.fsyncs);
    ctl_rec_uint(b, "commit_batches", q.commit_batches);
    ctl_rec_uint(b, "sessions", s.sessions);
    ctl_rec_uint(b, "connections_accepted", s.accepted_connections);
    ctl_rec_uint(b, "connections_refused", s.refused_connections);
    ctl_rec_uint(b, "smtp_messages", s.messages);
    ctl_rec_end(b);
    send_line(cl);
    finish(cl, true, NULL);
}

static void cmd_ping(struct client *cl, char *arg)
{
    finishf(cl, true, "pid %ld", (long)getpid());
}

enum arg_rule { ARG_NONE, ARG_OPTIONAL, ARG_REQUIRED };

static const struct command {
    const char *name;
    enum arg_rule arg;
    void (*run)(struct client *cl, char *arg);
    const char *usage;
} commands[] = {
    {"queue", ARG_NONE, cmd_queue, "queue"},
    {"show", ARG_REQUIRED, cmd_show, "show ID"},
    {"flush", ARG_OPTIONAL, cmd_flush, "flush [ID|all]"},
    {"delete", ARG_REQUIRED, cmd_delete, "delete ID|all"},
    {"hold", ARG_REQUIRED, cmd_hold, "hold ID|all"},
    {"release", ARG_REQUIRED, cmd_release, "release ID|all"},
    {"stats", ARG_NONE, cmd_stats, "stats"},
    {"ping", ARG_NONE, cmd_ping, "ping"},
};

static void run_request(struct client *cl, const char *line, size_t n)
{
    const char *why = ctl_request_parse(line, n, cl->cmd, cl->arg);
    if (why != NULL) {
        cl->cmd[0] = cl->arg[0] = '\0';
        finish(cl, false, why);
        return;
    }
    for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
        const struct command *c = &commands[i];
        if (strcmp(c->name, cl->cmd) != 0)
            continue;
        if ((c->arg == ARG_NONE && cl->arg[0]) || (c->arg == ARG_REQUIRED && !cl->arg[0])) {
            finishf(cl, false, "usage: %s", c->usage);
            return;
        }
        char arg[CTL_ARG_MAX + 1];
        memcpy(arg, cl->arg, sizeof arg);
        c->run(cl, arg);
        return;
    }
    char esc[4 * CTL_CMD_MAX + 3];
    ctl_escape(esc, sizeof esc, cl->cmd, strlen(cl->cmd));
    finishf(cl, false, "unknown command %s (commands: queue, show, flush, delete, hold, "
                       "release, stats, ping)", esc);
}

/* ---- I/O ---- */

static void on_read(struct io *io, void *arg)
{
    struct client *cl = arg;
    if (cl->state != CL_READING) {
        io_input_discard(io); /* one request per connection */
        return;
    }
    char line[CTL_REQUEST_MAX];
    size_t n = 0;
    struct iovec vec[8];
    int nvec = io_input_peek(io, vec, (int)ARRAY_LEN(vec));
    for (int i = 0; i < nvec && n < sizeof line; i++) {
        size_t take = vec[i].iov_len < sizeof line - n ? vec[i].iov_len : sizeof line - n;
        memcpy(line + n, vec[i].iov_base, take);
        n += take;
    }
    char *nl = memchr(line, '\n', n);
    if (nl == NULL) {
        if (n >= sizeof line) {
            io_input_discard(io);
            io_read_enable(io, false);
            finish(cl, false, "request too long");
        }
        return;
    }
    size_t len = (size_t)(nl - line);
    io_input_discard(io);
    io_read_enable(io, false);
    timer_stop(cl->timer);
    run_request(cl, line, len);
}

static void on_flushed(struct io *io, void *arg)
{
    struct client *cl = arg;
    if (cl->state == CL_STREAMING)
        fill(cl);
    if (cl->state == CL_CLOSING && io_output_len(io) == 0)
        client_free(cl);
}

static void on_event(struct io *io, void *arg, enum io_event ev, const char *detail)
{
    struct client *cl = arg;
    if (ev == IO_EV_EOF && cl->state != CL_READING)
        return; /* a half-close after the request: keep answering */
    if (ev == IO_EV_TIMEOUT || ev == IO_EV_ERROR) {
        struct logline l;
        log_begin(&l, LOG_LVL_WARN, "control.drop");
        log_uint(&l, "cid", cl->id);
        log_str(&l, "reason", ev == IO_EV_TIMEOUT ? "write timeout" : "error");
        log_str(&l, "detail", detail);
        log_end(&l);
    }
    client_free(cl);
}

static void on_request_timeout(void *arg)
{
    struct client *cl = arg;
    io_input_discard(cl->io);
    io_read_enable(cl->io, false);
    finish(cl, false, "request timeout");
}

static const struct io_handlers handlers = {on_read, on_flushed, on_event};

/* Answer and close a connection we will not serve (best effort: the socket is new, so a
 * short line always fits in its buffer). */
static void refuse(int fd, const char *line)
{
    ssize_t w = write(fd, line, strlen(line));
    (void)w;
    close(fd);
}

static void on_accept(int fd, const struct sockaddr *sa, socklen_t len, void *arg)
{
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        close(fd);
        return;
    }
    /* the file mode already keeps others out; this also covers a socket whose mode an
     * administrator widened by hand */
    if (cred.uid != 0 && cred.uid != geteuid()) {
        log_printf(LOG_LVL_WARN, "event=control.refused uid=%u reason=permission", cred.uid);
        refuse(fd, "error: permission denied\n");
        return;
    }
    if (ctl.nclients >= CTL_CLIENTS_MAX) {
        log_printf(LOG_LVL_WARN, "event=control.refused uid=%u reason=busy max=%d", cred.uid,
                   CTL_CLIENTS_MAX);
        refuse(fd, "error: too many control connections, try again\n");
        return;
    }
    struct client *cl = xcalloc(1, sizeof *cl);
    cl->id = ++ctl.next_id;
    cl->uid = cred.uid;
    cl->started_ms = loop_now_ms();
    cl->state = CL_READING;
    cl->io = io_new(fd, &handlers, cl);
    io_set_timeouts(cl->io, 0, CTL_WRITE_TIMEOUT_MS);
    cl->timer = timer_new(on_request_timeout, cl);
    timer_arm(cl->timer, CTL_REQUEST_TIMEOUT_MS);
    cl->next = ctl.clients;
    if (ctl.clients)
        ctl.clients->prev = cl;
    ctl.clients = cl;
    ctl.nclients++;
}

/* ---- life cycle ---- */

void control_start(struct conf *c)
{
    if (ctl.fd < 0)
        fatal("control_start without control_bind");
    conf_ref(c);
    ctl.conf = c;
    ctl.start_ms = loop_now_ms();
    ctl.listener = listener_new(ctl.fd, on_accept, NULL);
}

void control_set_conf(struct conf *c)
{
    conf_ref(c);
    if (ctl.conf)
        conf_unref(ctl.conf);
    ctl.conf = c;
}

void control_stop(void)
{
    /* Close the socket rather than just stop accepting: a ternctl run during the shutdown
     * then hears "not running" at once instead of waiting in the backlog. */
    if (ctl.listener) {
        listener_free(ctl.listener, true);
        ctl.listener = NULL;
        ctl.fd = -1;
    } else if (ctl.fd >= 0) {
        close(ctl.fd);
        ctl.fd = -1;
    }
    unlink_socket();
}

void control_free(void)
{
    control_stop();
    while (ctl.clients)
        client_free(ctl.clients);
    if (ctl.conf)
        conf_unref(ctl.conf);
    ctl.conf = NULL;
    free(ctl.path);
    ctl.path = NULL;
}
