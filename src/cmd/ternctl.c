/*
 * ternctl: the operator's tool. Talks to a running ternd over its control socket (the
 * protocol is in control/ctlproto.h) and hashes passwords for users files.
 *
 *   ternctl [-c FILE] [-j] COMMAND [ARG]
 *
 * The socket is found through the configuration (-c FILE, default CONF_DEFAULT_PATH), so
 * "ternctl -c FILE" always reaches the daemon that runs with FILE.
 *
 * Exit status: 0 done; 1 the command failed (an error from the daemon, a configuration
 * that cannot be read, no permission); 2 usage; 3 ternd is not running.
 *
 * Output: aligned, human-readable text by default; with -j, one JSON object. Text that
 * came from messages is shown with control characters escaped (\xHH), so a hostile header
 * cannot drive the operator's terminal.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "control/ctlproto.h"
#include "lib/fsutil.h"
#include "lib/mem.h"
#include "lib/utf8.h"
#include "smtpd/auth.h"

#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_NOT_RUNNING 3

#define REPLY_TIMEOUT_MS 60000 /* a daemon that says nothing for this long is stuck */
#define PASSWORD_MAX 1024

static const char *prog = "ternctl";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ternctl [-c FILE] [-j|-p] COMMAND [ARG]\n"
            "\n"
            "  -c FILE   configuration of the ternd to talk to (default " CONF_DEFAULT_PATH ")\n"
            "  -j        print JSON instead of text\n"
            "  -p        stats in the Prometheus text format (e.g. for node_exporter's\n"
            "            textfile collector)\n"
            "\n"
            "commands:\n"
            "  queue             list queued messages and their recipients\n"
            "  show ID           one message: envelope, each recipient, headers\n"
            "  flush [ID|all]    retry deferred recipients now\n"
            "  delete ID|all     remove messages from the queue (no bounce is sent)\n"
            "  hold ID|all       keep messages from being delivered\n"
            "  release ID|all    let held messages be delivered again\n"
            "  stats             queue and server counters\n"
            "  ping              check that ternd is running\n"
            "  passwd            print a password hash for a users file (no daemon needed)\n"
            "  help              this text\n"
            "\n"
            "exit status: 0 done, 1 failed, 2 usage, 3 ternd is not running\n");
}

static _Noreturn void die(int code, const char *fmt, ...) PRINTF_LIKE(2, 3);
static _Noreturn void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* ---- passwd ---- */

static struct termios saved_tio;
static volatile sig_atomic_t tio_saved;

static void restore_tty(int signo)
{
    if (tio_saved)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
    signal(signo, SIG_DFL);
    raise(signo);
}

/* One line from stdin into buf (without the newline); byte by byte so nothing after the
 * line is consumed. -1 at EOF before any byte, -2 if the line is too long. */
static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    bool any = false;
    for (;;) {
        char c;
        ssize_t r = read(STDIN_FILENO, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        any = true;
        if (c == '\n')
            break;
        if (n + 1 >= cap) {
            explicit_bzero(buf, cap);
            return -2;
        }
        buf[n++] = c;
    }
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    return any ? 0 : -1;
}

/* Echo is already off (see cmd_passwd): the prompt comes after, so an answer typed as
 * soon as it shows is never discarded by the TCSAFLUSH that turns echo off. */
static int ask(const char *prompt, char *buf, size_t cap)
{
    fputs(prompt, stderr);
    fflush(stderr);
    return read_line(buf, cap);
}

static int cmd_passwd(void)
{
    static char pw[PASSWORD_MAX], again[PASSWORD_MAX];
    int rc;
    bool tty = isatty(STDIN_FILENO);
    if (tty) {
        if (tcgetattr(STDIN_FILENO, &saved_tio) != 0)
            die(EXIT_FAILED, "cannot read the terminal settings: %s", strerror(errno));
        tio_saved = 1;
        /* never leave the terminal without echo, whatever stops us */
        signal(SIGINT, restore_tty);
        signal(SIGTERM, restore_tty);
        signal(SIGHUP, restore_tty);
        signal(SIGQUIT, restore_tty);
        struct termios quiet = saved_tio;
        quiet.c_lflag &= (tcflag_t) ~(ECHO | ECHOE | ECHOK);
        quiet.c_lflag |= ECHONL;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet); /* drops typed-ahead text, as getpass */
        rc = ask("Password: ", pw, sizeof pw);
        if (rc == 0) {
            int rc2 = ask("Repeat password: ", again, sizeof again);
            if (rc2 != 0 || strcmp(pw, again) != 0) {
                tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
                explicit_bzero(pw, sizeof pw);
                explicit_bzero(again, sizeof again);
                die(EXIT_FAILED, "the passwords do not match");
            }
            explicit_bzero(again, sizeof again);
        }
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
    } else {
        rc = read_line(pw, sizeof pw);
    }
    if (rc == -2)
        die(EXIT_FAILED, "password longer than %d bytes", PASSWORD_MAX - 1);
    if (rc == -1)
        die(EXIT_FAILED, "no password given (end of input)");
    if (pw[0] == '\0')
        die(EXIT_FAILED, "empty password refused");
    char *hash = auth_hash_password(pw);
    explicit_bzero(pw, sizeof pw);
    if (hash == NULL)
        die(EXIT_FAILED, "libcrypt cannot make a yescrypt hash");
    printf("%s\n", hash);
    free(hash);
    return fflush(stdout) == 0 ? 0 : EXIT_FAILED;
}

/* ---- showing values ---- */


/* Print text for a terminal: printable ASCII and UTF-8 above the C1 controls as they are,
 * everything else as \xHH. */
static void put_text(const char *v, size_t n)
{
    const unsigned char *s = (const unsigned char *)v;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_next(s + i, n - i, &cp);
        if (len == 1 && cp >= 0x20 && cp < 0x7f) {
            putchar((int)cp);
        } else if (len > 1 && cp >= 0xa0) {
            fwrite(s + i, 1, len, stdout);
        } else {
            printf("\\x%02x", s[i]);
            len = 1;
        }
        i += len;
    }
}

static void put_json_string(const char *v, size_t n)
{
    const unsigned char *s = (const unsigned char *)v;
    putchar('"');
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_next(s + i, n - i, &cp);
        if (len == 0) {
            fputs("\\ufffd", stdout); /* not UTF-8: the JSON must stay valid */
            i++;
            continue;
        }
        if (cp == '"' || cp == '\\')
            printf("\\%c", (int)cp);
        else if (cp == '\n')
            fputs("\\n", stdout);
        else if (cp == '\r')
            fputs("\\r", stdout);
        else if (cp == '\t')
            fputs("\\t", stdout);
        else if (cp < 0x20 || cp == 0x7f)
            printf("\\u%04x", (unsigned)cp);
        else
            fwrite(s + i, 1, len, stdout);
        i += len;
    }
    putchar('"');
}

static void put_json_value(const struct ctl_field *f)
{
    if (f->text)
        put_json_string(f->val, f->len);
    else if (strcmp(f->val, "yes") == 0)
        fputs("true", stdout);
    else if (strcmp(f->val, "no") == 0)
        fputs("false", stdout);
    else if (strspn(f->val, "0123456789") == f->len)
        fputs(f->val, stdout);
    else
        put_json_string(f->val, f->len);
}

static void put_json_fields(const struct ctl_record *r, bool first)
{
    for (size_t i = 0; i < r->n; i++) {
        if (!first || i > 0)
            putchar(',');
        put_json_string(r->f[i].key, strlen(r->f[i].key));
        putchar(':');
        put_json_value(&r->f[i]);
    }
}

static const char *field(const struct ctl_record *r, const char *key)
{
    const struct ctl_field *f = ctl_record_get(r, key);
    return f ? f->val : NULL;
}

static unsigned long long field_num(const struct ctl_record *r, const char *key)
{
    const char *v = field(r, key);
    return v ? strtoull(v, NULL, 10) : 0;
}

static void fmt_duration(unsigned long long s, char *out, size_t cap)
{
    if (s < 60)
        snprintf(out, cap, "%llus", s);
    else if (s < 3600)
        snprintf(out, cap, "%llum", s / 60);
    else if (s < 86400)
        snprintf(out, cap, "%lluh%02llum", s / 3600, s % 3600 / 60);
    else
        snprintf(out, cap, "%llud%02lluh", s / 86400, s % 86400 / 3600);
}

static void fmt_size(unsigned long long n, char *out, size_t cap)
{
    if (n < 1024)
        snprintf(out, cap, "%llu", n);
    else if (n < 1024 * 1024)
        snprintf(out, cap, "%.1fK", (double)n / 1024);
    else if (n < 1024ull * 1024 * 1024)
        snprintf(out, cap, "%.1fM", (double)n / (1024 * 1024));
    else
        snprintf(out, cap, "%.1fG", (double)n / (1024.0 * 1024 * 1024));
}

static void fmt_time(time_t t, char *out, size_t cap)
{
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S %z", &tm);
}

/* "in 4m" / "now" for a future (or just passed) moment. */
static void fmt_when(time_t t, char *out, size_t cap)
{
    time_t now = time(NULL);
    if (t <= now) {
        snprintf(out, cap, "now");
        return;
    }
    char d[32];
    fmt_duration((unsigned long long)(t - now), d, sizeof d);
    snprintf(out, cap, "in %s", d);
}

/* ---- rendering a response ---- */

struct view {
    const char *cmd;
    bool json;
    bool prometheus;
    /* text */
    bool queue_header;
    size_t messages, recipients;
    /* json */
    bool top_any;   /* a member was written in the top object */
    bool in_list;   /* inside "messages":[ */
    bool msg_open;  /* a message object is open */
    int sub;        /* 0, or open array in the message: 1 recipients, 2 headers */
    size_t nsub;
};

static void json_top_member(struct view *v, const char *name)
{
    printf("%s\"%s\":", v->top_any ? "," : "{", name);
    v->top_any = true;
}

static void json_close_sub(struct view *v)
{
    if (v->sub)
        putchar(']');
    v->sub = 0;
    v->nsub = 0;
}

static void json_close_msg(struct view *v)
{
    json_close_sub(v);
    if (v->msg_open)
        putchar('}');
    v->msg_open = false;
}

static void json_close_list(struct view *v)
{
    json_close_msg(v);
    if (v->in_list)
        putchar(']');
    v->in_list = false;
}

static void json_open_sub(struct view *v, int which)
{
    if (v->sub == which)
        return;
    json_close_sub(v);
    printf(",\"%s\":[", which == 1 ? "recipients" : "headers");
    v->sub = which;
}

static void json_record(struct view *v, const struct ctl_record *r)
{
    bool single = strcmp(v->cmd, "show") == 0;
    if (strcmp(r->type, "msg") == 0) {
        json_close_msg(v);
        if (single) {
            json_top_member(v, "message");
        } else if (!v->in_list) {
            json_top_member(v, "messages");
            putchar('[');
            v->in_list = true;
        } else {
            putchar(',');
        }
        putchar('{');
        put_json_fields(r, true);
        v->msg_open = true;
        v->messages++;
    } else if (v->msg_open && strcmp(r->type, "rcpt") == 0) {
        json_open_sub(v, 1);
        printf("%s{", v->nsub++ ? "," : "");
        put_json_fields(r, true);
        putchar('}');
    } else if (v->msg_open && strcmp(r->type, "header") == 0) {
        json_open_sub(v, 2);
        const struct ctl_field *t = ctl_record_get(r, "text");
        if (v->nsub++)
            putchar(',');
        put_json_string(t ? t->val : "", t ? t->len : 0);
    } else {
        /* stats, and any record type a newer daemon sends: an object of its own */
        json_close_list(v);
        json_top_member(v, r->type);
        putchar('{');
        put_json_fields(r, true);
        putchar('}');
    }
}

/* ---- Prometheus text format (ternctl -p stats), for a textfile collector or a scrape
 * wrapper. Each stats field has a metric name, a type and a help line; a field a newer
 * ternd sends and this table does not know is printed untyped as tern_FIELD. ---- */

static const struct metric {
    const char *field, *name, *type, *help;
} metrics[] = {
    {"uptime", "tern_uptime_seconds", "gauge", "Seconds since ternd started."},
    {"messages", "tern_queue_messages", "gauge", "Messages in the queue."},
    {"bytes", "tern_queue_bytes", "gauge", "Content bytes of the messages in the queue."},
    {"held", "tern_queue_held_messages", "gauge", "Messages on hold."},
    {"recipients_pending", "tern_queue_recipients_pending", "gauge",
     "Recipients waiting for a delivery attempt."},
    {"recipients_deferred", "tern_queue_recipients_deferred", "gauge",
     "Recipients waiting for a retry after a temporary failure."},
    {"committed", "tern_queue_committed_messages_total", "counter",
     "Messages made durable in the queue."},
    {"delivered", "tern_delivered_recipients_total", "counter",
     "Recipients delivered (Maildir or accepted by the next server)."},
    {"failed", "tern_failed_recipients_total", "counter",
     "Recipients failed for good (bounced, or expired)."},
    {"deferred_attempts", "tern_deferred_attempts_total", "counter",
     "Delivery attempts that failed temporarily."},
    {"fsyncs", "tern_queue_fsyncs_total", "counter", "fsync/fdatasync calls of the queue."},
    {"commit_batches", "tern_queue_commit_batches_total", "counter",
     "Group commits of the queue."},
    {"sessions", "tern_smtp_sessions", "gauge", "SMTP sessions open now."},
    {"connections_accepted", "tern_smtp_connections_accepted_total", "counter",
     "SMTP connections accepted."},
    {"connections_refused", "tern_smtp_connections_refused_total", "counter",
     "SMTP connections refused at once (session limits)."},
    {"smtp_messages", "tern_smtp_messages_total", "counter",
     "Messages accepted over SMTP (250 after the content)."},
};

static bool metric_name_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return n > 0;
}

static bool metric_value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return n > 0;
}

static void prometheus_record(const struct ctl_record *r)
{
    if (strcmp(r->type, "stats") != 0)
        return;
    for (size_t i = 0; i < r->n; i++) {
        const struct ctl_field *f = &r->f[i];
        if (strcmp(f->key, "pid") == 0 || !metric_value_ok(f->val, f->len))
            continue;
        const struct metric *m = NULL;
        for (size_t k = 0; k < ARRAY_LEN(metrics) && m == NULL; k++)
            if (strcmp(metrics[k].field, f->key) == 0)
                m = &metrics[k];
        if (m != NULL) {
            printf("# HELP %s %s\n# TYPE %s %s\n%s %.*s\n", m->name, m->help, m->name, m->type,
                   m->name, (int)f->len, f->val);
        } else if (metric_name_ok(f->key, strlen(f->key))) {
            printf("# TYPE tern_%s untyped\ntern_%s %.*s\n", f->key, f->key, (int)f->len,
                   f->val);
        }
    }
}

static void json_end(struct view *v, bool ok, const char *text)
{
    json_close_list(v);
    json_top_member(v, "ok");
    fputs(ok ? "true" : "false", stdout);
    if (*text) {
        printf(",\"%s\":", ok ? "detail" : "error");
        put_json_string(text, strlen(text));
    }
    puts("}");
}

static void text_rcpt_details(const struct ctl_record *r, const char *indent)
{
    char buf[64];
    bool any = false;
    unsigned long long attempts = field_num(r, "attempts");
    printf("%s", indent);
    if (attempts) {
        printf("attempts %llu", attempts);
        any = true;
    }
    if (field(r, "next")) {
        fmt_when((time_t)field_num(r, "next"), buf, sizeof buf);
        printf("%snext %s", any ? ", " : "", buf);
        any = true;
    }
    if (field(r, "in_flight")) {
        printf("%sbeing delivered", any ? ", " : "");
        any = true;
    }
    const struct ctl_field *status = ctl_record_get(r, "status");
    const struct ctl_field *reply = ctl_record_get(r, "reply");
    if (status || reply) {
        printf("%s", any ? ": " : "");
        if (status) {
            put_text(status->val, status->len);
            if (reply)
                putchar(' ');
        }
        if (reply)
            put_text(reply->val, reply->len);
        any = true;
    }
    (void)any;
}

static void text_queue_record(struct view *v, const struct ctl_record *r)
{
    char age[32], size[32];
    if (strcmp(r->type, "msg") == 0) {
        if (!v->queue_header) {
            printf("%-14s  %6s  %7s  %-4s  %s\n", "QUEUE ID", "AGE", "SIZE", "HELD", "SENDER");
            v->queue_header = true;
        }
        fmt_duration(field_num(r, "age"), age, sizeof age);
        fmt_size(field_num(r, "size"), size, sizeof size);
        const char *held = field(r, "held");
        const struct ctl_field *sender = ctl_record_get(r, "sender");
        printf("%-14s  %6s  %7s  %-4s  ", field(r, "id") ? field(r, "id") : "?", age, size,
               held && strcmp(held, "yes") == 0 ? "held" : "-");
        if (sender == NULL || sender->len == 0)
            fputs("<>", stdout);
        else
            put_text(sender->val, sender->len);
        putchar('\n');
        v->messages++;
    } else if (strcmp(r->type, "rcpt") == 0) {
        const struct ctl_field *addr = ctl_record_get(r, "addr");
        const char *state = field(r, "state");
        printf("    %-9s  ", state ? state : "?");
        if (addr)
            put_text(addr->val, addr->len);
        const char *sep = "  ";
        if (field(r, "attempts") && field_num(r, "attempts") > 0)
            text_rcpt_details(r, sep);
        else if (ctl_record_get(r, "reply") || ctl_record_get(r, "status"))
            text_rcpt_details(r, sep);
        putchar('\n');
        v->recipients++;
    }
}

/* Keys of `show` printed with a unit or as times. */
static void text_value(const char *key, const struct ctl_field *f)
{
    char buf[64];
    if (!f->text && (strcmp(key, "arrival") == 0 || strcmp(key, "first") == 0 ||
                     strcmp(key, "next") == 0)) {
        time_t t = (time_t)strtoll(f->val, NULL, 10);
        fmt_time(t, buf, sizeof buf);
        fputs(buf, stdout);
        if (strcmp(key, "next") == 0) {
            fmt_when(t, buf, sizeof buf);
            printf(" (%s)", buf);
        }
    } else if (!f->text && (strcmp(key, "age") == 0 || strcmp(key, "uptime") == 0)) {
        fmt_duration(strtoull(f->val, NULL, 10), buf, sizeof buf);
        fputs(buf, stdout);
    } else if (f->text && f->len == 0 && strcmp(key, "sender") == 0) {
        fputs("<>", stdout);
    } else {
        put_text(f->val, f->len);
    }
}

static void text_fields(const struct ctl_record *r, const char *indent, const char *const *skip)
{
    size_t w = 0;
    for (size_t i = 0; i < r->n; i++)
        if (strlen(r->f[i].key) > w)
            w = strlen(r->f[i].key);
    for (size_t i = 0; i < r->n; i++) {
        bool skipped = false;
        for (size_t s = 0; skip && skip[s]; s++)
            skipped |= strcmp(skip[s], r->f[i].key) == 0;
        if (skipped)
            continue;
        printf("%s%s:%*s ", indent, r->f[i].key, (int)(w - strlen(r->f[i].key)), "");
        text_value(r->f[i].key, &r->f[i]);
        putchar('\n');
    }
}

static void text_show_record(struct view *v, const struct ctl_record *r)
{
    if (strcmp(r->type, "msg") == 0) {
        text_fields(r, "", NULL);
    } else if (strcmp(r->type, "rcpt") == 0) {
        if (v->recipients++ == 0)
            puts("recipients:");
        const struct ctl_field *addr = ctl_record_get(r, "addr");
        printf("  [%s] %s ", field(r, "n") ? field(r, "n") : "?",
               field(r, "state") ? field(r, "state") : "?");
        if (addr)
            put_text(addr->val, addr->len);
        putchar('\n');
        static const char *const skip[] = {"id", "n", "addr", "state", NULL};
        text_fields(r, "      ", skip);
    } else if (strcmp(r->type, "header") == 0) {
        if (v->messages++ == 0) /* counts header lines here */
            puts("headers:");
        const struct ctl_field *t = ctl_record_get(r, "text");
        fputs("  ", stdout);
        if (t)
            put_text(t->val, t->len);
        putchar('\n');
    }
}

static void text_record(struct view *v, const struct ctl_record *r, const char *raw)
{
    if (strcmp(v->cmd, "queue") == 0 && (!strcmp(r->type, "msg") || !strcmp(r->type, "rcpt")))
        text_queue_record(v, r);
    else if (strcmp(v->cmd, "show") == 0)
        text_show_record(v, r);
    else if (strcmp(r->type, "stats") == 0)
        text_fields(r, "", NULL);
    else
        puts(raw); /* unknown to this ternctl: the wire form is printable and readable */
}

static void text_end(struct view *v, bool ok, const char *text)
{
    if (!ok) {
        fflush(stdout);
        fprintf(stderr, "%s: %s\n", prog, text);
        return;
    }
    if (strcmp(v->cmd, "queue") == 0) {
        if (v->messages == 0)
            puts("the queue is empty");
        else
            printf("-- %zu message%s, %zu recipient%s\n", v->messages,
                   v->messages == 1 ? "" : "s", v->recipients, v->recipients == 1 ? "" : "s");
    } else if (strcmp(v->cmd, "ping") == 0) {
        printf("ternd is running (%s)\n", text);
    } else if (*text) {
        puts(text);
    }
}

/* ---- talking to the daemon ---- */

static int connect_daemon(const char *path)
{
    struct sockaddr_un sa;
    socklen_t len;
    int dirfd;
    if (ctl_sockaddr(path, &sa, &len, &dirfd) != 0) {
        if (errno == ENOENT)
            die(EXIT_NOT_RUNNING, "ternd is not running (no control socket %s)", path);
        die(EXIT_FAILED, "control socket %s: %s", path, strerror(errno));
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die(EXIT_FAILED, "socket: %s", strerror(errno));
    int rc = connect(fd, (struct sockaddr *)&sa, len);
    int e = errno;
    if (dirfd >= 0)
        close(dirfd);
    if (rc == 0)
        return fd;
    if (e == ENOENT)
        die(EXIT_NOT_RUNNING, "ternd is not running (no control socket %s)", path);
    if (e == ECONNREFUSED)
        die(EXIT_NOT_RUNNING, "ternd is not running (nothing answers on %s)", path);
    if (e == EACCES || e == EPERM)
        die(EXIT_FAILED, "permission denied on %s (run ternctl as root or as the user ternd "
                         "runs as)", path);
    die(EXIT_FAILED, "cannot connect to %s: %s", path, strerror(e));
}

/* Read one LF-terminated line into buf (without the LF). 0 at EOF before any byte. */
static int read_reply_line(int fd, struct buf *in, size_t *consumed, const char *path)
{
    for (;;) {
        if (in->len > *consumed && memchr(in->data + *consumed, '\n', in->len - *consumed))
            return 1;
        if (*consumed > 0) {
            buf_consume(in, *consumed);
            *consumed = 0;
        }
        if (buf_room(in) == 0)
            die(EXIT_FAILED, "protocol error: a reply line from ternd is longer than %d bytes",
                CTL_LINE_MAX);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, REPLY_TIMEOUT_MS);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            die(EXIT_FAILED, "no answer from ternd on %s for %d seconds", path,
                REPLY_TIMEOUT_MS / 1000);
        char chunk[16384];
        size_t want = buf_room(in) < sizeof chunk ? buf_room(in) : sizeof chunk;
        ssize_t r = read(fd, chunk, want);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(EXIT_FAILED, "reading from %s: %s", path, strerror(errno));
        if (r == 0)
            return 0;
        buf_add(in, chunk, (size_t)r);
    }
}

static int run_command(const char *sock, const char *cmd, const char *arg, bool json,
                       bool prometheus)
{
    char req[CTL_REQUEST_MAX + 1];
    size_t n = ctl_request_format(req, sizeof req, cmd, arg);
    if (n == 0)
        die(EXIT_USAGE, "invalid argument \"%s\" (no spaces or control characters; at most "
                        "%d bytes)", arg ? arg : "", CTL_ARG_MAX);
    int fd = connect_daemon(sock);
    if (fs_write_all(fd, req, n) != 0)
        die(EXIT_FAILED, "writing to %s: %s", sock, strerror(errno));

    struct view v = {.cmd = cmd, .json = json, .prometheus = prometheus};
    struct buf in = BUF_INIT(CTL_LINE_MAX);
    struct ctl_record rec = {0};
    size_t consumed = 0;
    for (;;) {
        if (!read_reply_line(fd, &in, &consumed, sock))
            die(EXIT_FAILED, "ternd closed the connection without finishing its answer");
        char *line = in.data + consumed;
        char *nl = memchr(line, '\n', in.len - consumed);
        size_t len = (size_t)(nl - line);
        *nl = '\0';
        consumed += len + 1;
        char raw[CTL_LINE_MAX];
        memcpy(raw, line, len + 1); /* parsing decodes in place */
        const char *text;
        switch (ctl_parse_line(line, len, &rec, &text)) {
        case CTL_LINE_RECORD:
            if (v.prometheus)
                prometheus_record(&rec);
            else if (json)
                json_record(&v, &rec);
            else
                text_record(&v, &rec, raw);
            continue;
        case CTL_LINE_OK:
        case CTL_LINE_ERROR: {
            bool ok = raw[0] == 'o';
            if (v.prometheus && !ok)
                fprintf(stderr, "%s: %s\n", prog, text);
            else if (v.prometheus)
                ; /* the metrics are all there is */
            else if (json)
                json_end(&v, ok, text);
            else
                text_end(&v, ok, text);
            ctl_record_free(&rec);
            buf_release(&in);
            close(fd);
            if (fflush(stdout) != 0)
                return EXIT_FAILED;
            return ok ? 0 : EXIT_FAILED;
        }
        case CTL_LINE_MALFORMED:
            die(EXIT_FAILED, "protocol error: ternd sent a line this ternctl cannot read");
        }
    }
}

int main(int argc, char **argv)
{
    const char *conf_path = CONF_DEFAULT_PATH;
    bool json = false, prometheus = false;
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"prometheus", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    /* "+": options end at the command, as with git */
    while ((opt = getopt_long(argc, argv, "+c:jph", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_path = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'p':
            prometheus = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[optind];
    int nargs = argc - optind - 1;
    const char *arg = nargs > 0 ? argv[optind + 1] : NULL;

    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "passwd") == 0) {
        if (nargs != 0)
            die(EXIT_USAGE, "usage: ternctl passwd (the password is read from the terminal "
                            "or stdin)");
        return cmd_passwd();
    }

    static const struct {
        const char *name;
        int min, max;
        const char *usage;
    } cmds[] = {
        {"queue", 0, 0, "queue"},         {"show", 1, 1, "show ID"},
        {"flush", 0, 1, "flush [ID|all]"}, {"delete", 1, 1, "delete ID|all"},
        {"hold", 1, 1, "hold ID|all"},    {"release", 1, 1, "release ID|all"},
        {"stats", 0, 0, "stats"},         {"ping", 0, 0, "ping"},
    };
    size_t i;
    for (i = 0; i < ARRAY_LEN(cmds); i++)
        if (strcmp(cmds[i].name, cmd) == 0)
            break;
    if (i == ARRAY_LEN(cmds)) {
        fprintf(stderr, "%s: unknown command \"%s\"\n", prog, cmd);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (nargs < cmds[i].min || nargs > cmds[i].max)
        die(EXIT_USAGE, "usage: ternctl [-c FILE] [-j] %s", cmds[i].usage);
    if (prometheus && (json || strcmp(cmd, "stats") != 0))
        die(EXIT_USAGE, "-p (Prometheus text format) goes with stats only, without -j");

    char err[1024];
    struct conf *c = conf_load_opts(conf_path, CONF_SKIP_TABLES, err, sizeof err);
    if (c == NULL)
        die(EXIT_FAILED, "%s", err);
    char *sock = xstrdup(c->control_socket);
    conf_unref(c);
    signal(SIGPIPE, SIG_IGN);
    int rc = run_command(sock, cmds[i].name, arg, json, prometheus);
    free(sock);
    return rc;
}
