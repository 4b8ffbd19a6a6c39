/*
 * tern-sendmail: the sendmail(1) interface for local programs (cron, PHP mail(),
 * git send-email, mutt). It reads a message on stdin, prepares it (mail/inject.h: CRLF,
 * -t recipients, Bcc: removed, From:/Date:/Message-ID: added when missing) and writes it
 * into the drop folder with maildrop_write() (queue/maildrop.h), which works whether ternd
 * runs or not; ternd imports the file when it runs.
 *
 *   tern-sendmail [-t] [-i] [-f sender] [-F name] [-C config] [--] [recipient ...]
 *
 * Promise: exit status 0 only after maildrop_write() returned success, i.e. the message is
 * complete, fsync'ed and renamed into the drop folder, and the folder fsync'ed. Every
 * failure says why on stderr and exits with a sysexits.h code: EX_USAGE (bad options, no
 * recipients), EX_DATAERR (message too large, bad header line), EX_NOUSER (a recipient
 * that is not an address), EX_CONFIG (configuration), EX_OSERR, EX_CANTCREAT (the drop
 * folder cannot be written), EX_TEMPFAIL (storage failed: try again later), EX_SOFTWARE.
 *
 * With -t, the recipients found in the headers are added to those named on the command
 * line (Postfix's reading; classic sendmail removed the named ones instead).
 *
 * Options that only make sense for a real sendmail are accepted and ignored, as other
 * sendmail replacements do (-oem, -odb, -oQ..., -v, -bm, -m, ...). -bp and -q are passed
 * to ternctl (queue listing, flush); the other modes (-bs, -bd, -bi, -bt, -bv, -I) are
 * refused with a message.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/time.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/mem.h"
#include "mail/address.h"
#include "mail/envelope.h"
#include "mail/inject.h"
#include "queue/maildrop.h"
#include "queue/queue.h"

#define READ_CHUNK (64 * 1024)
#define ENVID_MAX 100 /* RFC 3461 §4.4 */

static const char *prog = "tern-sendmail";

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

static _Noreturn void usage(void)
{
    fprintf(stderr,
            "usage: %s [-t] [-i] [-f sender] [-F name] [-C config] [--] [recipient ...]\n"
            "  -t          also send to the To:, Cc: and Bcc: addresses of the message\n"
            "  -i, -oi     a line with a single \".\" does not end the message\n"
            "  -f sender   envelope sender (also -r); \"<>\" for none\n"
            "  -F name     full name for the From: line added when the message has none\n"
            "  -C config   configuration file (default " CONF_DEFAULT_PATH ")\n"
            "  -N never|success,failure,delay   -R full|hdrs   -V envid   -B 7BIT|8BITMIME\n"
            "  -bp         list the queue (ternctl queue); -q: retry now (ternctl flush)\n"
            "The message is read from stdin.\n",
            prog);
    exit(EX_USAGE);
}

/* ---- helpers ---- */

struct rcpts {
    char **v;
    size_t n, cap;
    size_t max;
    bool too_many;
};

static void rcpts_add(void *arg, const char *addr)
{
    struct rcpts *r = arg;
    for (size_t i = 0; i < r->n; i++)
        if (strcasecmp(r->v[i], addr) == 0)
            return;
    if (r->n >= r->max) {
        r->too_many = true;
        return;
    }
    r->v = xgrow(r->v, &r->cap, r->n + 1, sizeof *r->v);
    r->v[r->n++] = xstrdup(addr);
}

/* The user's full name from the GECOS field: up to the first comma, with "&" standing for
 * the capitalised login (the old finger convention). */
static char *gecos_name(const struct passwd *pw)
{
    if (pw->pw_gecos == NULL)
        return NULL;
    size_t n = strcspn(pw->pw_gecos, ",");
    if (n == 0)
        return NULL;
    char out[256];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < sizeof out; i++) {
        if (pw->pw_gecos[i] == '&') {
            for (const char *l = pw->pw_name; *l && o + 1 < sizeof out; l++)
                out[o++] = (l == pw->pw_name && *l >= 'a' && *l <= 'z') ? (char)(*l - 32) : *l;
        } else {
            out[o++] = pw->pw_gecos[i];
        }
    }
    out[o] = '\0';
    return xstrdup(out);
}

static void make_message_id(const char *host, char *out, size_t cap)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd = (uint64_t)tv.tv_usec * 2654435761u ^ (uint64_t)getpid();
    snprintf(out, cap, "<%lld.%06ld.%ld.%016llx@%s>", (long long)tv.tv_sec, (long)tv.tv_usec,
             (long)getpid(), (unsigned long long)rnd, host);
}

static unsigned parse_notify(const char *s)
{
    if (strcasecmp(s, "never") == 0)
        return DSN_NOTIFY_NEVER;
    unsigned bits = 0;
    char *copy = xstrdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (strcasecmp(t, "success") == 0)
            bits |= DSN_NOTIFY_SUCCESS;
        else if (strcasecmp(t, "failure") == 0)
            bits |= DSN_NOTIFY_FAILURE;
        else if (strcasecmp(t, "delay") == 0)
            bits |= DSN_NOTIFY_DELAY;
        else
            die(EX_USAGE, "-N: \"%s\" is not never, success, failure or delay", t);
    }
    free(copy);
    return bits;
}

/* RFC 3461 §4 xtext: printable ASCII but "+" and "=", hexchar escapes allowed. */
static bool envid_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ENVID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            if (i + 2 >= n || !strchr("0123456789ABCDEF", s[i + 1]) ||
                !strchr("0123456789ABCDEF", s[i + 2]))
                return false;
            i += 2;
        } else if (c < 0x21 || c > 0x7e || c == '=') {
            return false;
        }
    }
    return true;
}

/* -bp and -q: the queue belongs to ternd; ternctl next to this program does the work. */
static _Noreturn void exec_ternctl(const char *conf_path, const char *cmd)
{
    char self[PATH_MAX], path[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    const char *bin = "ternctl";
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof path, "%s/ternctl", self);
            if (access(path, X_OK) == 0)
                bin = path;
        }
    }
    fflush(stdout);
    execlp(bin, "ternctl", "-c", conf_path, cmd, (char *)NULL);
    die(EX_UNAVAILABLE, "cannot run %s: %s", bin, strerror(errno));
}

static int exit_code_for(int err)
{
    switch (err) {
    case ENOENT:
    case ENOTDIR:
    case EACCES:
    case EPERM:
    case EROFS:
        return EX_CANTCREAT;
    default:
        return EX_TEMPFAIL; /* disk full, I/O error, ...: the program should try later */
    }
}

/* ---- main ---- */

int main(int argc, char **argv)
{
    const char *conf_path = CONF_DEFAULT_PATH;
    const char *sender_arg = NULL, *full_name = NULL, *envid = NULL;
    bool extract = false, ignore_dots = false, verbose = false;
    unsigned notify = 0;
    enum dsn_ret ret = DSN_RET_UNSPEC;
    enum body_type body = BODY_UNSPEC;
    const char *mode = NULL; /* -b, -q, -I */

    /* sendmail's option letters; "+": stop at the first recipient */
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, "+A:B:b:C:cd:F:f:Gh:IiL:mN:nO:o:p:q::R:r:tUV:vX:")) != -1) {
        switch (opt) {
        case 'B':
            if (strcasecmp(optarg, "8BITMIME") == 0)
                body = BODY_8BITMIME;
            else if (strcasecmp(optarg, "7BIT") == 0)
                body = BODY_7BIT;
            else
                die(EX_USAGE, "-B: \"%s\" is not 7BIT or 8BITMIME", optarg);
            break;
        case 'b':
            if (strcmp(optarg, "m") == 0)
                break; /* deliver mail: what we do anyway */
            if (strcmp(optarg, "p") == 0) {
                mode = "queue";
                break;
            }
            if (strcmp(optarg, "s") == 0)
                die(EX_USAGE, "-bs (SMTP on stdin) is not supported: submit over SMTP to "
                              "ternd's submission port, or pipe the message to %s", prog);
            if (strcmp(optarg, "d") == 0)
                die(EX_USAGE, "-bd: the daemon is ternd, not %s", prog);
            if (strcmp(optarg, "i") == 0)
                die(EX_USAGE, "-bi (newaliases) is not needed: ternd reads alias files as they "
                              "are, at start and on reload");
            die(EX_USAGE, "-b%s is not supported (only -bm and -bp)", optarg);
        case 'C':
            conf_path = optarg;
            break;
        case 'F':
            full_name = optarg;
            break;
        case 'f':
        case 'r':
            sender_arg = optarg;
            break;
        case 'I':
            die(EX_USAGE, "-I (newaliases) is not needed: ternd reads alias files as they "
                          "are, at start and on reload");
        case 'i':
            ignore_dots = true;
            break;
        case 'N':
            notify = parse_notify(optarg);
            break;
        case 'o':
            /* -oi is -i; the rest (-oem, -odb, -oQ/dir, -om, -o7, ...) tune a sendmail we
             * are not */
            if (strcmp(optarg, "i") == 0)
                ignore_dots = true;
            break;
        case 'q':
            if (optarg != NULL && optarg[0] != '\0')
                die(EX_USAGE, "-q%s: ternd runs the queue by itself; -q alone retries now",
                    optarg);
            mode = "flush";
            break;
        case 'R':
            if (strcasecmp(optarg, "full") == 0)
                ret = DSN_RET_FULL;
            else if (strcasecmp(optarg, "hdrs") == 0)
                ret = DSN_RET_HDRS;
            else
                die(EX_USAGE, "-R: \"%s\" is not full or hdrs", optarg);
            break;
        case 't':
            extract = true;
            break;
        case 'V':
            if (!envid_ok(optarg))
                die(EX_USAGE, "-V: \"%s\" is not a valid envelope id (xtext, at most %d "
                              "characters)", optarg, ENVID_MAX);
            envid = optarg;
            break;
        case 'v':
            verbose = true;
            break;
        case 'A': case 'c': case 'd': case 'G': case 'h': case 'L': case 'm': case 'n':
        case 'O': case 'p': case 'U': case 'X':
            break; /* accepted and ignored, as sendmail replacements do */
        case '?':
            if (strchr("ABbCdFfhLNOopRrVX", optopt))
                die(EX_USAGE, "option -%c needs a value", optopt);
            fprintf(stderr, "%s: unknown option -%c\n", prog, optopt);
            usage();
        default:
            usage();
        }
    }
    if (mode != NULL)
        exec_ternctl(conf_path, mode);

    char err[1024];
    struct conf *c = conf_load_opts(conf_path, CONF_SKIP_TABLES, err, sizeof err);
    if (c == NULL)
        die(EX_CONFIG, "%s", err);

    /* who we are */
    struct passwd *pw = getpwuid(getuid());
    char user_addr[ADDR_TEXT_MAX + 1] = "";
    if (pw != NULL) {
        const char *why = inject_address(pw->pw_name, c->hostname, user_addr, sizeof user_addr);
        if (why != NULL)
            die(EX_OSERR, "your login \"%s\" does not make an address: %s", pw->pw_name, why);
    }

    /* the envelope sender */
    char sender[ADDR_TEXT_MAX + 1];
    if (sender_arg != NULL) {
        if (sender_arg[0] == '\0' || strcmp(sender_arg, "<>") == 0) {
            sender[0] = '\0';
        } else {
            const char *why = inject_address(sender_arg, c->hostname, sender, sizeof sender);
            if (why != NULL)
                die(EX_USAGE, "invalid sender address \"%s\" (-f): %s", sender_arg, why);
        }
    } else if (user_addr[0]) {
        snprintf(sender, sizeof sender, "%s", user_addr);
    } else {
        die(EX_OSERR, "uid %u has no user name; give the sender with -f", (unsigned)getuid());
    }
    /* From: when missing: -f's address (unless <>), else the user's, with -F or GECOS */
    const char *from_addr = sender[0] ? sender : user_addr;
    char *gecos = NULL;
    if (full_name == NULL && sender_arg == NULL && pw != NULL)
        full_name = gecos = gecos_name(pw);
    if (from_addr[0] == '\0')
        die(EX_OSERR, "uid %u has no user name; give the sender with -f", (unsigned)getuid());

    /* recipients on the command line (each argument may be a list: "a@x, Bob <b@y>") */
    struct rcpts rc = {.max = c->max_recipients};
    for (int i = optind; i < argc; i++) {
        if (inject_parse_addresses(argv[i], strlen(argv[i]), c->hostname, rcpts_add, &rc, err,
                                   sizeof err) != 0)
            die(EX_NOUSER, "recipient \"%s\": %s", argv[i], err);
    }
    if (!extract && rc.n == 0 && !rc.too_many)
        die(EX_USAGE, "no recipients given (name them, or use -t to take them from the To:, "
                      "Cc: and Bcc: lines)");

    /* the message */
    char date[INJECT_DATE_MAX], msgid[ADDR_DOMAIN_MAX + 80];
    inject_format_date(time(NULL), date, sizeof date);
    make_message_id(c->hostname, msgid, sizeof msgid);
    struct inject_params ip = {
        .extract_rcpts = extract,
        .dot_ends = !ignore_dots,
        .domain = c->hostname,
        .from_addr = from_addr,
        .full_name = full_name,
        .date = date,
        .message_id = msgid,
        .max_size = c->message_size_limit,
        .max_rcpts = c->max_recipients,
    };
    struct inject *in = inject_new(&ip);
    char *chunk = xmalloc(READ_CHUNK);
    enum inject_status st = INJECT_MORE;
    while (st == INJECT_MORE) {
        ssize_t n = read(STDIN_FILENO, chunk, READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die(EX_IOERR, "reading the message from stdin: %s", strerror(errno));
        if (n == 0)
            break;
        st = inject_feed(in, chunk, (size_t)n);
    }
    free(chunk);
    if (st == INJECT_MORE || st == INJECT_END)
        st = inject_finish(in);
    switch (st) {
    case INJECT_OK:
        break;
    case INJECT_BAD_ADDRESS:
        die(EX_NOUSER, "%s", inject_error(in));
    case INJECT_TOO_MANY_RCPTS:
        die(EX_DATAERR, "%s (max_recipients)", inject_error(in));
    case INJECT_TOO_BIG:
        die(EX_DATAERR, "%s (message_size_limit)", inject_error(in));
    default:
        die(EX_DATAERR, "%s", inject_error(in));
    }
    for (size_t i = 0; i < inject_nrcpts(in); i++)
        rcpts_add(&rc, inject_rcpt(in, i));
    if (rc.too_many)
        die(EX_DATAERR, "more than %u recipients (max_recipients)", c->max_recipients);
    if (rc.n == 0)
        die(EX_DATAERR, "no recipients: the message has no To:, Cc: or Bcc: addresses (-t)");

    size_t hlen, blen;
    const char *head = inject_head(in, &hlen);
    const char *bodyp = inject_body(in, &blen);
    char *msg = xmalloc(hlen + blen + 1);
    memcpy(msg, head, hlen);
    memcpy(msg + hlen, bodyp, blen);
    size_t len = hlen + blen;
    inject_free(in);

    struct envelope env;
    envelope_init(&env);
    envelope_set(&env.sender, sender);
    bool utf8 = false;
    for (const unsigned char *s = (const unsigned char *)sender; *s; s++)
        utf8 |= *s >= 0x80;
    for (size_t i = 0; i < rc.n; i++) {
        envelope_add_rcpt(&env, rc.v[i], NULL, notify);
        for (const unsigned char *s = (const unsigned char *)rc.v[i]; *s; s++)
            utf8 |= *s >= 0x80;
    }
    if (body == BODY_UNSPEC) {
        body = BODY_7BIT;
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)msg[i] >= 0x80) {
                body = BODY_8BITMIME;
                break;
            }
    }
    env.body = body;
    env.smtputf8 = utf8;
    env.ret = ret;
    envelope_set(&env.envid, envid);
    envelope_set(&env.protocol, "local");
    env.arrival = time(NULL);

    char id[QID_MAX];
    errno = 0;
    if (maildrop_write(c->spool, &env, msg, len, id, err, sizeof err) != 0) {
        int e = errno;
        die(exit_code_for(e), "cannot queue the message: %s", err);
    }
    if (verbose)
        fprintf(stderr, "%s: queued as %s for %zu recipient%s\n", prog, id, rc.n,
                rc.n == 1 ? "" : "s");

    envelope_clear(&env);
    free(msg);
    free(gecos);
    for (size_t i = 0; i < rc.n; i++)
        free(rc.v[i]);
    free(rc.v);
    conf_unref(c);
    return 0;
}
