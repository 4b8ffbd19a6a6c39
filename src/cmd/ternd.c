/*
 * ternd: the tern mail server daemon.
 *
 *   ternd [-F] [-c FILE]    run (daemonize unless -F)
 *   ternd -n [-c FILE]      check the configuration and exit (0 if valid)
 *
 * Start-up order matters for privileges: everything that needs root (binding ports 25,
 * 465, 587, reading TLS keys, creating the spool and mail folders, the control socket,
 * the pid file) happens first; then ternd changes into the spool folder and drops to the
 * configured user before the event loop reads a single byte from the network. Relative
 * lookups from the spool folder and the mail folders' descriptors keep working even when
 * their parent folders are closed to that user.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "conf/conf.h"
#include "control/control.h"
#include "deliver/dispatch.h"
#include "deliver/remote.h"
#include "lib/dns.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "lib/tls.h"
#include "lib/workers.h"
#include "queue/queue.h"
#include "smtpd/auth.h"
#include "smtpd/server.h"

#define TERN_VERSION "0.1"
#define BODY_CACHE_MAX (128ull * 1024 * 1024)

static struct {
    struct conf *conf;
    const char *conf_path;
    bool foreground;
    bool root;
    uid_t uid;
    gid_t gid;
    bool stopping;
    bool wrote_pidfile;
    struct workers *auth_pool;
    struct dispatch *dispatch;
    struct sigwatch *sig_term, *sig_int, *sig_hup;
} d;

static void usage(void)
{
    fprintf(stderr, "usage: ternd [-F] [-n] [-c config]\n"
                    "  -c FILE  configuration file (default " CONF_DEFAULT_PATH ")\n"
                    "  -F       stay in the foreground, log to stderr\n"
                    "  -n       check the configuration and exit\n");
    exit(2);
}

static _Noreturn void die(const char *fmt, ...) PRINTF_LIKE(1, 2);
static _Noreturn void die(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ternd: %s\n", msg);
    if (!d.foreground) {
        struct logline l;
        log_begin(&l, LOG_LVL_ERROR, "start.failed");
        log_str(&l, "error", msg);
        log_end(&l);
    }
    exit(1);
}

/* Check what conf_load cannot: that certificates load. */
static void check_tls(const struct conf *c)
{
    char err[512];
    for (size_t i = 0; i < c->nlistens; i++) {
        const struct listen_conf *l = &c->listens[i];
        const char *cert = l->tls_cert ? l->tls_cert : c->tls_cert;
        const char *key = l->tls_key ? l->tls_key : c->tls_key;
        if (cert == NULL)
            continue;
        struct tls_ctx *t = tls_server_ctx_new(cert, key, err, sizeof err);
        if (t == NULL)
            die("%s:%u: [listen %s]: %s", c->path, l->line, l->name, err);
        tls_ctx_unref(t);
    }
    if (c->smtp_tls_ca_file != NULL) {
        struct tls_ctx *t = tls_client_ctx_new(c->smtp_tls_ca_file, err, sizeof err);
        if (t == NULL)
            die("%s: smtp_tls_ca_file: %s", c->path, err);
        tls_ctx_unref(t);
    }
}

static void setup_logging(const struct conf *c)
{
    enum log_target t = c->log == LOG_SINK_STDERR   ? LOG_TO_STDERR
                        : c->log == LOG_SINK_SYSLOG ? LOG_TO_SYSLOG
                        : d.foreground              ? LOG_TO_STDERR
                                                    : LOG_TO_SYSLOG;
    log_setup("ternd", t, c->log_level, c->syslog_facility);
}

/* mkdir -p, owned by the run user when we are root. */
static void make_dir(const char *path, mode_t mode)
{
    if (fs_mkdirs_at(AT_FDCWD, path, mode) != 0)
        die("cannot create %s: %s", path, strerror(errno));
    if (d.root && chown(path, d.uid, d.gid) != 0)
        die("cannot give %s to the run user: %s", path, strerror(errno));
}

/* Open every domain's mail base folder (reusing the descriptors of old for the same path,
 * since after the privilege drop a reload may not be able to open them again). */
static int open_mail_bases(struct conf *c, const struct conf *old, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->ndomains; i++) {
        struct domain_conf *dom = &c->domains[i];
        for (size_t j = 0; old && j < old->ndomains && dom->mail_base_fd < 0; j++)
            if (old->domains[j].mail_base_fd >= 0 &&
                strcmp(old->domains[j].mail_base, dom->mail_base) == 0)
                dom->mail_base_fd = fcntl(old->domains[j].mail_base_fd, F_DUPFD_CLOEXEC, 3);
        for (size_t j = 0; j < i && dom->mail_base_fd < 0; j++)
            if (strcmp(c->domains[j].mail_base, dom->mail_base) == 0)
                dom->mail_base_fd = fcntl(c->domains[j].mail_base_fd, F_DUPFD_CLOEXEC, 3);
        if (dom->mail_base_fd >= 0)
            continue;
        if (old == NULL)
            make_dir(dom->mail_base, 0750);
        dom->mail_base_fd = open(dom->mail_base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dom->mail_base_fd < 0) {
            snprintf(err, errlen, "[domain %s]: cannot open %s: %s", dom->name, dom->mail_base,
                     strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void daemonize(void)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid > 0)
        _exit(0);
    setsid();
    pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid > 0)
        _exit(0);
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        if (fd > 2)
            close(fd);
    }
}

static void write_pidfile(const char *path)
{
    char text[32];
    int n = snprintf(text, sizeof text, "%ld\n", (long)getpid());
    if (fs_write_file_atomic_at(AT_FDCWD, path, text, (size_t)n, 0644) != 0)
        die("cannot write pid file %s: %s", path, strerror(errno));
    d.wrote_pidfile = true;
}

static void drop_privileges(void)
{
    if (!d.root)
        return;
    if (setgroups(1, &d.gid) != 0 || setgid(d.gid) != 0 || setuid(d.uid) != 0)
        die("cannot drop privileges to uid %u: %s", (unsigned)d.uid, strerror(errno));
    if (setuid(0) == 0)
        die("privileges were not dropped (setuid(0) succeeded)");
}

/* Every session and outbound connection is a descriptor, plus files and spool segments:
 * ask for enough (as root even above the hard limit), and say so if the system gives less. */
static void raise_fd_limit(const struct conf *c)
{
    rlim_t need = (rlim_t)c->max_sessions + c->max_outbound + 1024;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (d.root && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        struct rlimit more = {need, need};
        if (setrlimit(RLIMIT_NOFILE, &more) == 0)
            rl = more;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        log_printf(LOG_LVL_WARN,
                   "event=start.fd_limit limit=%llu wanted=%llu note=\"max_sessions may not be "
                   "reachable: raise the limit (ulimit -n) or lower max_sessions\"",
                   (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

/* ---- signals ---- */

static void finish_stop(void *arg)
{
    log_printf(LOG_LVL_INFO, "event=stop phase=sessions_done");
    loop_exit();
}

static void on_stop_signal(int signo, void *arg)
{
    if (d.stopping) {
        log_printf(LOG_LVL_WARN, "event=stop phase=forced signal=%d", signo);
        loop_exit();
        return;
    }
    d.stopping = true;
    log_printf(LOG_LVL_INFO, "event=stop phase=begin signal=%d timeout_ms=%llu", signo,
               (unsigned long long)d.conf->shutdown_timeout_ms);
    control_stop();
    server_shutdown(d.conf->shutdown_timeout_ms, finish_stop, NULL);
}

static struct queue_params queue_params_of(const struct conf *c)
{
    struct queue_params p = {
        .spool_dir = ".", /* ternd runs in the spool folder */
        .retry_ms = c->retry_ms,
        .nretry = c->nretry,
        .queue_lifetime_ms = c->queue_lifetime_ms,
        .delay_warning_ms = c->delay_warning_ms,
        .min_free_space = c->min_free_space,
        .body_cache_max = BODY_CACHE_MAX,
        .message_size_limit = c->message_size_limit,
    };
    dispatch_hooks(d.dispatch, &p.hooks);
    return p;
}

/* tern-sendmail reads ternd.conf for every local user: a password written in it is
 * theirs to read when the file is world-readable. */
static void warn_readable_password(const struct conf *c)
{
    struct stat st;
    if (c->relayhost_password != NULL && c->relayhost_password_file == NULL &&
        stat(c->path, &st) == 0 && (st.st_mode & S_IROTH))
        log_printf(LOG_LVL_WARN,
                   "event=config.warning key=relayhost_password note=\"%s is readable by every "
                   "local user; move the password to relayhost_password_file\"",
                   c->path);
}

static void on_reload(int signo, void *arg)
{
    char err[1024];
    struct conf *fresh = conf_load(d.conf_path, err, sizeof err);
    if (fresh == NULL) {
        struct logline l;
        log_begin(&l, LOG_LVL_ERROR, "reload.failed");
        log_str(&l, "error", err);
        log_str(&l, "note", "keeping the running configuration");
        log_end(&l);
        return;
    }
    warn_readable_password(fresh);
    if (strcmp(fresh->spool, d.conf->spool) != 0 || strcmp(fresh->user, d.conf->user) != 0)
        log_printf(LOG_LVL_WARN,
                   "event=reload.ignored keys=\"spool user\" note=\"these need a restart\"");
    if (open_mail_bases(fresh, d.conf, err, sizeof err) != 0 ||
        server_reload(fresh, err, sizeof err) != 0) {
        struct logline l;
        log_begin(&l, LOG_LVL_ERROR, "reload.failed");
        log_str(&l, "error", err);
        log_str(&l, "note", "keeping the running configuration");
        log_end(&l);
        conf_unref(fresh);
        return;
    }
    setup_logging(fresh);
    dispatch_set_conf(d.dispatch, fresh);
    remote_set_conf(fresh);
    struct queue_params qp = queue_params_of(fresh);
    queue_set_params(&qp);
    control_set_conf(fresh);
    conf_unref(d.conf);
    d.conf = fresh;
    log_printf(LOG_LVL_INFO, "event=reload.done");
}

int main(int argc, char **argv)
{
    bool check_only = false;
    d.conf_path = CONF_DEFAULT_PATH;
    int opt;
    while ((opt = getopt(argc, argv, "Fnc:h")) != -1) {
        switch (opt) {
        case 'F':
            d.foreground = true;
            break;
        case 'n':
            check_only = true;
            d.foreground = true;
            break;
        case 'c':
            d.conf_path = optarg;
            break;
        default:
            usage();
        }
    }
    if (optind != argc)
        usage();

    char err[1024];
    d.conf = conf_load(d.conf_path, err, sizeof err);
    if (d.conf == NULL)
        die("%s", err);
    check_tls(d.conf);
    if (check_only) {
        printf("ternd: %s: configuration is valid\n", d.conf->path);
        return 0;
    }

    d.root = geteuid() == 0;
    if (d.root) {
        struct passwd *pw = getpwnam(d.conf->user);
        if (pw == NULL)
            die("user \"%s\" does not exist (create it, e.g. useradd --system %s, or set "
                "\"user\" in %s)",
                d.conf->user, d.conf->user, d.conf->path);
        if (pw->pw_uid == 0)
            die("user \"%s\" is root: ternd will not run its sessions as root", d.conf->user);
        d.uid = pw->pw_uid;
        d.gid = pw->pw_gid;
    }
    setup_logging(d.conf);
    signal(SIGPIPE, SIG_IGN);
    umask(027);
    if (!d.foreground)
        daemonize();

    /* everything that may need root. The spool is searchable by all so that tern-sendmail,
     * run by any local user, reaches its drop folder (the queue keeps the rest private). */
    make_dir(d.conf->spool, 0755);
    if (chmod(d.conf->spool, 0755) != 0)
        die("cannot set the mode of %s: %s", d.conf->spool, strerror(errno));
    if (open_mail_bases(d.conf, NULL, err, sizeof err) != 0)
        die("%s", err);
    if (server_bind(d.conf, err, sizeof err) != 0)
        die("%s", err);
    if (control_bind(d.conf, d.root ? (int)d.uid : -1, d.root ? (int)d.gid : -1, err,
                     sizeof err) != 0)
        die("%s", err);
    if (!d.foreground)
        write_pidfile(d.conf->pidfile);
    if (chdir(d.conf->spool) != 0)
        die("cannot enter the spool %s: %s", d.conf->spool, strerror(errno));
    raise_fd_limit(d.conf);
    drop_privileges();

    loop_init();
    if (dns_init(d.conf->dns, err, sizeof err) != 0)
        die("%s", err);
    d.auth_pool = workers_new("auth", 2);
    auth_init(d.auth_pool);
    remote_init(d.conf);
    d.dispatch = dispatch_new(d.conf);
    struct queue_params qp = queue_params_of(d.conf);
    if (queue_open(&qp, err, sizeof err) != 0)
        die("%s", err);
    queue_pickup();
    server_start();
    control_start(d.conf);
    d.sig_term = sigwatch_new(SIGTERM, on_stop_signal, NULL);
    d.sig_int = sigwatch_new(SIGINT, on_stop_signal, NULL);
    d.sig_hup = sigwatch_new(SIGHUP, on_reload, NULL);
    log_printf(LOG_LVL_INFO, "event=start version=%s pid=%ld uid=%u", TERN_VERSION,
               (long)getpid(), (unsigned)getuid());
    warn_readable_password(d.conf);

    if (loop_run() != 0)
        log_printf(LOG_LVL_ERROR, "event=loop_failed");

    /* orderly stop: no more deliveries, then the queue's last writes */
    dispatch_free(d.dispatch);
    remote_shutdown();
    queue_close();
    server_free();
    control_free();
    workers_free(d.auth_pool);
    sigwatch_free(d.sig_term);
    sigwatch_free(d.sig_int);
    sigwatch_free(d.sig_hup);
    dns_free();
    if (d.wrote_pidfile)
        unlink(d.conf->pidfile); /* may fail after the privilege drop; harmless */
    log_printf(LOG_LVL_INFO, "event=stop phase=done");
    conf_unref(d.conf);
    loop_free();
    return 0;
}
