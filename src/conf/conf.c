/*
 * conf: see conf.h.
 *
 * Parsing is table-driven: each section kind has an array of key_def {name, type, field,
 * default, limits}. Defaults are parsed by the same code as file values, so a default can
 * never be something the file could not say. libinih does the INI syntax; our reader
 * callback counts lines (libinih as packaged does not pass line numbers), rejects lines
 * longer than libinih can hold, and strips " # comments".
 */
#include "conf/conf.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "lib/idna.h"
#include "lib/mem.h"
#include "lib/strutil.h"
#include "table/aliases.h"
#include "table/users.h"

enum ktype {
    K_STR,      /* any non-empty text */
    K_HOSTNAME, /* a domain name */
    K_PATH,     /* resolved against the configuration folder */
    K_SIZE,
    K_DURATION,
    K_UINT,
    K_BOOL,
    K_CIDRS,
    K_HOSTPORT,
    K_ROLE,
    K_TLS_POLICY,
    K_LOG_SINK,
    K_LOG_LEVEL,
    K_FACILITY,
    K_SCHEDULE, /* list of durations */
    K_ADDRESS,  /* local@domain */
    K_TARGET,   /* local name or local@domain */
    K_DELIM,    /* recipient delimiter characters */
    K_MAILBOXES /* path pattern with %u */
};

struct key_def {
    const char *name;
    enum ktype type;
    size_t off;
    const char *def; /* NULL: no default (unset) */
    uint64_t min, max;
    bool required;
};

#define TOP(f) offsetof(struct conf, f)
#define LSN(f) offsetof(struct listen_conf, f)
#define DOM(f) offsetof(struct domain_conf, f)
#define TRN(f) offsetof(struct transport_conf, f)
#define NOLIM 0, UINT64_MAX

static const struct key_def top_keys[] = {
    {"hostname", K_HOSTNAME, TOP(hostname), NULL, NOLIM, false},
    {"spool", K_PATH, TOP(spool), "/var/spool/tern", NOLIM, false},
    {"user", K_STR, TOP(user), "tern", NOLIM, false},
    {"pidfile", K_PATH, TOP(pidfile), NULL, NOLIM, false},
    {"control_socket", K_PATH, TOP(control_socket), NULL, NOLIM, false},
    {"log", K_LOG_SINK, TOP(log), "auto", NOLIM, false},
    {"log_level", K_LOG_LEVEL, TOP(log_level), "info", NOLIM, false},
    {"syslog_facility", K_FACILITY, TOP(syslog_facility), "mail", NOLIM, false},
    {"message_size_limit", K_SIZE, TOP(message_size_limit), "25M", 1024, 2ull << 30, false},
    {"max_recipients", K_UINT, TOP(max_recipients), "1000", 100, 100000, false},
    {"max_errors", K_UINT, TOP(max_errors), "10", 1, 1000, false},
    {"max_received_headers", K_UINT, TOP(max_received_headers), "100", 100, 10000, false},
    {"command_timeout", K_DURATION, TOP(command_timeout_ms), "5m", 1000, 3600000, false},
    {"data_timeout", K_DURATION, TOP(data_timeout_ms), "10m", 1000, 3600000, false},
    {"pregreet_wait", K_DURATION, TOP(pregreet_wait_ms), "0", 0, 60000, false},
    {"shutdown_timeout", K_DURATION, TOP(shutdown_timeout_ms), "30s", 0, 3600000, false},
    {"max_sessions", K_UINT, TOP(max_sessions), "20000", 1, 1000000, false},
    {"max_sessions_per_ip", K_UINT, TOP(max_sessions_per_ip), "50", 1, 1000000, false},
    {"session_limit_exceptions", K_CIDRS, TOP(session_limit_exceptions), "127.0.0.0/8, ::1",
     NOLIM, false},
    {"reverse_dns", K_BOOL, TOP(reverse_dns), "yes", NOLIM, false},
    {"reverse_dns_timeout", K_DURATION, TOP(reverse_dns_timeout_ms), "3s", 100, 60000, false},
    {"reverse_dns_skip", K_CIDRS, TOP(reverse_dns_skip), "127.0.0.0/8, ::1", NOLIM, false},
    {"recipient_delimiter", K_DELIM, TOP(recipient_delimiter), "+", NOLIM, false},
    {"postmaster", K_ADDRESS, TOP(postmaster), NULL, NOLIM, false},
    {"trusted_networks", K_CIDRS, TOP(trusted_networks), "", NOLIM, false},
    {"dns", K_HOSTPORT, TOP(dns), NULL, NOLIM, false},
    {"mx_port", K_UINT, TOP(mx_port), "25", 1, 65535, false},
    {"relayhost", K_HOSTPORT, TOP(relayhost), NULL, NOLIM, false},
    {"relayhost_user", K_STR, TOP(relayhost_user), NULL, NOLIM, false},
    {"relayhost_password", K_STR, TOP(relayhost_password), NULL, NOLIM, false},
    {"relayhost_password_file", K_PATH, TOP(relayhost_password_file), NULL, NOLIM, false},
    {"smtp_tls", K_TLS_POLICY, TOP(smtp_tls), "may", NOLIM, false},
    {"smtp_tls_ca_file", K_PATH, TOP(smtp_tls_ca_file), NULL, NOLIM, false},
    {"smtp_connect_timeout", K_DURATION, TOP(smtp_connect_timeout_ms), "30s", 1000, 600000,
     false},
    {"max_outbound", K_UINT, TOP(max_outbound), "200", 1, 100000, false},
    {"max_outbound_per_destination", K_UINT, TOP(max_outbound_per_destination), "20", 1, 10000,
     false},
    {"tls_cert", K_PATH, TOP(tls_cert), NULL, NOLIM, false},
    {"tls_key", K_PATH, TOP(tls_key), NULL, NOLIM, false},
    {"auth_plaintext_loopback", K_BOOL, TOP(auth_plaintext_loopback), "no", NOLIM, false},
    {"auth_max_failures", K_UINT, TOP(auth_max_failures), "3", 1, 100, false},
    {"sender_login_check", K_BOOL, TOP(sender_login_check), "yes", NOLIM, false},
    {"queue_lifetime", K_DURATION, TOP(queue_lifetime_ms), "5d", 60000, 60ull * 86400000, false},
    {"delay_warning", K_DURATION, TOP(delay_warning_ms), "4h", 0, 60ull * 86400000, false},
    {"retry_schedule", K_SCHEDULE, TOP(retry_ms), "1m, 5m, 15m, 30m, 1h, 2h, 4h", NOLIM, false},
    {"min_free_space", K_SIZE, TOP(min_free_space), "64M", 0, UINT64_MAX, false},
    {"delivery_workers", K_UINT, TOP(delivery_workers), "4", 1, 64, false},
    {"delivery_nice", K_UINT, TOP(delivery_nice), "10", 0, 19, false},
};

static const struct key_def listen_keys[] = {
    {"address", K_HOSTPORT, LSN(address), NULL, NOLIM, true},
    {"role", K_ROLE, LSN(role), NULL, NOLIM, true},
    {"tls_cert", K_PATH, LSN(tls_cert), NULL, NOLIM, false},
    {"tls_key", K_PATH, LSN(tls_key), NULL, NOLIM, false},
    {"pregreet_wait", K_DURATION, LSN(pregreet_wait_ms), NULL, 0, 60000, false},
};

static const struct key_def domain_keys[] = {
    {"mailboxes", K_MAILBOXES, DOM(mailboxes), NULL, NOLIM, true},
    {"users", K_PATH, DOM(users_path), NULL, NOLIM, false},
    {"aliases", K_PATH, DOM(aliases_path), NULL, NOLIM, false},
    {"catchall", K_TARGET, DOM(catchall), NULL, NOLIM, false},
    {"postmaster", K_TARGET, DOM(postmaster), NULL, NOLIM, false},
};

static const struct key_def transport_keys[] = {
    {"nexthop", K_HOSTPORT, TRN(nexthop), NULL, NOLIM, true},
    {"tls", K_TLS_POLICY, TRN(tls), "may", NOLIM, false},
};

static const char *const role_names[] = {"mx", "submission", "submissions"};
static const char *const tls_policy_names[] = {"none", "may", "encrypt", "verify"};
static const char *const log_sink_names[] = {"auto", "stderr", "syslog"};

const char *conf_role_name(enum listen_role r)
{
    return role_names[r];
}

const char *conf_tls_policy_name(enum tls_policy p)
{
    return tls_policy_names[p];
}

bool conf_tls_policy_parse(const char *s, enum tls_policy *out)
{
    for (size_t i = 0; i < ARRAY_LEN(tls_policy_names); i++)
        if (str_ieq(s, tls_policy_names[i])) {
            *out = (enum tls_policy)i;
            return true;
        }
    return false;
}

static bool lookup_name(const char *s, const char *const *names, size_t n, int *out)
{
    for (size_t i = 0; i < n; i++)
        if (str_ieq(s, names[i])) {
            *out = (int)i;
            return true;
        }
    return false;
}

/* ---- value parsing ---- */

struct parser {
    struct conf *c;
    const char *file;
    unsigned lineno;
    char err[512];
    bool failed;
    /* the current section */
    const struct key_def *keys;
    size_t nkeys;
    void *base;
    unsigned *set_lines; /* per key: line where set, 0 = not yet */
    char section[CONF_LINE_MAX + 1];
    unsigned section_line;
    /* for the reader */
    FILE *fp;
    char *linebuf;
    size_t linecap;
};


static char *resolve_path(const struct conf *c, const char *v)
{
    if (v[0] == '/')
        return xstrdup(v);
    return xasprintf("%s/%s", c->dir, v);
}

static bool valid_address(const char *v, bool allow_local_only)
{
    const char *at = strrchr(v, '@');
    if (at == NULL)
        return allow_local_only && v[0] != '\0' && strpbrk(v, " \t\"<>,") == NULL;
    return at != v && str_is_hostname(at + 1) && strpbrk(v, " \t\"<>,") == NULL;
}

static bool parse_schedule(const char *v, uint64_t **out, size_t *n, char *why, size_t whylen)
{
    uint64_t *steps = NULL;
    size_t count = 0, cap = 0;
    char *copy = xstrdup(v), *save = NULL;
    for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        uint64_t ms;
        if (!parse_duration_ms(tok, &ms) || ms < 1000) {
            snprintf(why, whylen, "\"%s\" is not a duration of at least 1s", tok);
            free(copy);
            free(steps);
            return false;
        }
        if (count > 0 && ms < steps[count - 1]) {
            snprintf(why, whylen, "steps must not get shorter (\"%s\")", tok);
            free(copy);
            free(steps);
            return false;
        }
        steps = xgrow(steps, &cap, count + 1, sizeof *steps);
        steps[count++] = ms;
    }
    free(copy);
    if (count == 0) {
        snprintf(why, whylen, "needs at least one duration");
        return false;
    }
    free(*out);
    *out = steps;
    *n = count;
    return true;
}

static bool set_value(struct conf *c, const struct key_def *k, void *base, const char *v,
                      char *why, size_t whylen)
{
    void *field = (char *)base + k->off;
    uint64_t u;
    bool b;
    int e;
    switch (k->type) {
    case K_STR:
        if (v[0] == '\0') {
            snprintf(why, whylen, "must not be empty");
            return false;
        }
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        return true;
    case K_HOSTNAME:
        if (!str_is_hostname(v)) {
            snprintf(why, whylen, "\"%s\" is not a valid host name", v);
            return false;
        }
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        str_lower(*(char **)field);
        return true;
    case K_PATH:
        if (v[0] == '\0') {
            snprintf(why, whylen, "must not be empty");
            return false;
        }
        free(*(char **)field);
        *(char **)field = resolve_path(c, v);
        return true;
    case K_MAILBOXES:
        if (strstr(v, "%u") == NULL) {
            snprintf(why, whylen, "\"%s\" must contain %%u (the user)", v);
            return false;
        }
        for (const char *p = strchr(v, '%'); p; p = strchr(p + 2, '%'))
            if (p[1] != 'u' && p[1] != 'd') {
                snprintf(why, whylen, "only %%u and %%d may follow %% in \"%s\"", v);
                return false;
            }
        if (strstr(v, "..") != NULL) {
            snprintf(why, whylen, "\"..\" is not allowed in \"%s\"", v);
            return false;
        }
        free(*(char **)field);
        *(char **)field = resolve_path(c, v);
        return true;
    case K_SIZE:
        if (!parse_size(v, &u)) {
            snprintf(why, whylen, "\"%s\" is not a size (like 1024, 512k, 25M, 1G)", v);
            return false;
        }
        goto check_range;
    case K_DURATION:
        if (!parse_duration_ms(v, &u)) {
            snprintf(why, whylen, "\"%s\" is not a duration (like 30s, 5m, 4h, 5d)", v);
            return false;
        }
        goto check_range;
    case K_UINT:
        if (!parse_uint(v, &u)) {
            snprintf(why, whylen, "\"%s\" is not a whole number", v);
            return false;
        }
    check_range:
        if (u < k->min || u > k->max) {
            snprintf(why, whylen, "%s is out of range (%llu to %llu)", v,
                     (unsigned long long)k->min, (unsigned long long)k->max);
            return false;
        }
        if (k->type == K_UINT)
            *(unsigned *)field = (unsigned)u;
        else
            *(uint64_t *)field = u;
        return true;
    case K_BOOL:
        if (!parse_bool(v, &b)) {
            snprintf(why, whylen, "\"%s\" is not yes or no", v);
            return false;
        }
        *(bool *)field = b;
        return true;
    case K_CIDRS: {
        struct cidr_list l;
        if (!cidr_list_parse(v, &l, why, whylen))
            return false;
        cidr_list_free((struct cidr_list *)field);
        *(struct cidr_list *)field = l;
        return true;
    }
    case K_HOSTPORT: {
        char host[256];
        unsigned port;
        if (!hostport_split(v, 25, host, sizeof host, &port) || strchr(v, ':') == NULL) {
            snprintf(why, whylen, "\"%s\" is not host:port (IPv6 as [addr]:port)", v);
            return false;
        }
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        return true;
    }
    case K_ROLE:
        if (!lookup_name(v, role_names, ARRAY_LEN(role_names), &e)) {
            snprintf(why, whylen, "\"%s\" is not mx, submission or submissions", v);
            return false;
        }
        *(enum listen_role *)field = (enum listen_role)e;
        return true;
    case K_TLS_POLICY:
        if (!lookup_name(v, tls_policy_names, ARRAY_LEN(tls_policy_names), &e)) {
            snprintf(why, whylen, "\"%s\" is not none, may, encrypt or verify", v);
            return false;
        }
        *(enum tls_policy *)field = (enum tls_policy)e;
        return true;
    case K_LOG_SINK:
        if (!lookup_name(v, log_sink_names, ARRAY_LEN(log_sink_names), &e)) {
            snprintf(why, whylen, "\"%s\" is not auto, stderr or syslog", v);
            return false;
        }
        *(enum log_sink *)field = (enum log_sink)e;
        return true;
    case K_LOG_LEVEL: {
        enum log_level l;
        if (!log_level_parse(v, &l)) {
            snprintf(why, whylen, "\"%s\" is not error, warn, info or debug", v);
            return false;
        }
        *(enum log_level *)field = l;
        return true;
    }
    case K_FACILITY: {
        static const struct {
            const char *name;
            int value;
        } facilities[] = {{"mail", LOG_MAIL},     {"daemon", LOG_DAEMON}, {"local0", LOG_LOCAL0},
                          {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},
                          {"local4", LOG_LOCAL4}, {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},
                          {"local7", LOG_LOCAL7}};
        for (size_t i = 0; i < ARRAY_LEN(facilities); i++)
            if (str_ieq(v, facilities[i].name)) {
                *(int *)field = facilities[i].value;
                return true;
            }
        snprintf(why, whylen, "\"%s\" is not mail, daemon or local0..local7", v);
        return false;
    }
    case K_SCHEDULE:
        return parse_schedule(v, (uint64_t **)field, &c->nretry, why, whylen);
    case K_ADDRESS:
    case K_TARGET:
        if (!valid_address(v, k->type == K_TARGET)) {
            snprintf(why, whylen, "\"%s\" is not %s", v,
                     k->type == K_TARGET ? "a local name or an address" : "an address");
            return false;
        }
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        return true;
    case K_DELIM:
        for (const char *p = v; *p; p++)
            if (!strchr("+-_.=", *p)) {
                snprintf(why, whylen, "\"%s\": the delimiter may use + - _ . = only", v);
                return false;
            }
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        return true;
    }
    fatal("unhandled key type %d", k->type);
}

static void apply_defaults(struct conf *c, const struct key_def *keys, size_t n, void *base)
{
    char why[256];
    for (size_t i = 0; i < n; i++)
        if (keys[i].def != NULL && !set_value(c, &keys[i], base, keys[i].def, why, sizeof why))
            fatal("bad built-in default for %s: %s", keys[i].name, why);
}

/* ---- the libinih callbacks ---- */

static void parse_error(struct parser *p, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void parse_error(struct parser *p, const char *fmt, ...)
{
    if (p->failed)
        return; /* keep the first error */
    p->failed = true;
    int n = snprintf(p->err, sizeof p->err, "%s:%u: ", p->file, p->lineno);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, sizeof p->err - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Close the current section: check its required keys. */
static void end_section(struct parser *p)
{
    if (p->keys == NULL || p->failed)
        goto out;
    for (size_t i = 0; i < p->nkeys; i++) {
        if (p->keys[i].required && p->set_lines[i] == 0) {
            unsigned saved = p->lineno;
            p->lineno = p->section_line;
            parse_error(p, "[%s] needs the key \"%s\"", p->section, p->keys[i].name);
            p->lineno = saved;
        }
    }
out:
    free(p->set_lines);
    p->set_lines = NULL;
    p->keys = NULL;
}

static void begin_top(struct parser *p)
{
    p->keys = top_keys;
    p->nkeys = ARRAY_LEN(top_keys);
    p->base = p->c;
    p->set_lines = xcalloc(p->nkeys, sizeof *p->set_lines);
    p->section[0] = '\0';
}

/* Called by the reader for each "[...]" line, so that sections without keys are seen too. */
/* The name of a [domain] or [transport] section as it is kept, compared and used in paths
 * (%d): its A-labels when written in UTF-8, lowercased. NULL after a parse error. */
static const char *section_domain(struct parser *p, const char *kind, const char *arg,
                                  char *out, size_t cap)
{
    char why[128];
    if (idna_to_ascii(arg, out, cap, why, sizeof why) != 0) {
        parse_error(p, "[%s %s]: %s", kind, arg, why);
        return NULL;
    }
    return out;
}

static bool begin_section(struct parser *p, const char *section)
{
    struct conf *c = p->c;
    end_section(p);
    p->section_line = p->lineno;
    snprintf(p->section, sizeof p->section, "%s", section);
    const char *space = strchr(section, ' ');
    const char *kind_end = space ? space : section + strlen(section);
    size_t kind_len = (size_t)(kind_end - section);
    const char *arg = space ? space + 1 : "";
    while (*arg == ' ')
        arg++;

    if (str_ieqn(section, kind_len, "listen")) {
        if (*arg == '\0') {
            parse_error(p, "[listen] needs a name: [listen NAME]");
            return false;
        }
        for (size_t i = 0; i < c->nlistens; i++)
            if (strcmp(c->listens[i].name, arg) == 0) {
                parse_error(p, "[listen %s] already defined at line %u", arg, c->listens[i].line);
                return false;
            }
        c->listens = xrealloc(c->listens, (c->nlistens + 1) * sizeof *c->listens);
        struct listen_conf *l = &c->listens[c->nlistens++];
        memset(l, 0, sizeof *l);
        l->name = xstrdup(arg);
        l->line = p->lineno;
        l->pregreet_wait_ms = UINT64_MAX; /* unset: inherit */
        p->keys = listen_keys;
        p->nkeys = ARRAY_LEN(listen_keys);
        p->base = l;
    } else if (str_ieqn(section, kind_len, "domain")) {
        char alabels[256];
        if ((arg = section_domain(p, "domain", arg, alabels, sizeof alabels)) == NULL)
            return false;
        if (*arg == '\0' || !str_is_hostname(arg)) {
            parse_error(p, "[domain %s]: a domain name is needed", arg);
            return false;
        }
        for (size_t i = 0; i < c->ndomains; i++)
            if (str_ieq(c->domains[i].name, arg)) {
                parse_error(p, "[domain %s] already defined at line %u", arg, c->domains[i].line);
                return false;
            }
        c->domains = xrealloc(c->domains, (c->ndomains + 1) * sizeof *c->domains);
        struct domain_conf *d = &c->domains[c->ndomains++];
        memset(d, 0, sizeof *d);
        d->mail_base_fd = -1;
        d->name = xstrdup(arg);
        str_lower(d->name);
        d->line = p->lineno;
        p->keys = domain_keys;
        p->nkeys = ARRAY_LEN(domain_keys);
        p->base = d;
    } else if (str_ieqn(section, kind_len, "transport")) {
        char alabels[256];
        if ((arg = section_domain(p, "transport", arg, alabels, sizeof alabels)) == NULL)
            return false;
        if (*arg == '\0' || !str_is_hostname(arg)) {
            parse_error(p, "[transport %s]: a domain name is needed", arg);
            return false;
        }
        for (size_t i = 0; i < c->ntransports; i++)
            if (str_ieq(c->transports[i].domain, arg)) {
                parse_error(p, "[transport %s] already defined at line %u", arg,
                            c->transports[i].line);
                return false;
            }
        c->transports = xrealloc(c->transports, (c->ntransports + 1) * sizeof *c->transports);
        struct transport_conf *t = &c->transports[c->ntransports++];
        memset(t, 0, sizeof *t);
        t->domain = xstrdup(arg);
        str_lower(t->domain);
        t->line = p->lineno;
        p->keys = transport_keys;
        p->nkeys = ARRAY_LEN(transport_keys);
        p->base = t;
    } else {
        parse_error(p, "unknown section [%s] (expected [listen NAME], [domain NAME] or "
                       "[transport DOMAIN])",
                    section);
        return false;
    }
    apply_defaults(c, p->keys, p->nkeys, p->base);
    p->set_lines = xcalloc(p->nkeys, sizeof *p->set_lines);
    return true;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    struct parser *p = user;
    if (p->failed)
        return 1;
    if (p->keys == NULL || strcmp(section, p->section) != 0) {
        /* the reader failed to open this section (error already recorded), or libinih and
         * the reader disagree about where a section starts */
        parse_error(p, "key \"%s\" outside a valid section", name);
        return 1;
    }
    for (size_t i = 0; i < p->nkeys; i++) {
        if (strcmp(p->keys[i].name, name) != 0)
            continue;
        if (p->set_lines[i] != 0) {
            parse_error(p, "key \"%s\" already set at line %u", name, p->set_lines[i]);
            return 1;
        }
        char why[300];
        if (!set_value(p->c, &p->keys[i], p->base, value, why, sizeof why)) {
            parse_error(p, "key \"%s\": %s", name, why);
            return 1;
        }
        p->set_lines[i] = p->lineno;
        return 1;
    }
    if (section[0])
        parse_error(p, "unknown key \"%s\" in [%s]", name, section);
    else
        parse_error(p, "unknown key \"%s\"", name);
    return 1;
}

/* libinih reader: one line per call, counted; overlong lines are an error. */
static char *read_line(char *str, int num, void *stream)
{
    struct parser *p = stream;
    if (p->failed)
        return NULL;
    ssize_t n = getline(&p->linebuf, &p->linecap, p->fp);
    if (n < 0)
        return NULL;
    p->lineno++;
    if (n > 0 && p->linebuf[n - 1] == '\n')
        p->linebuf[--n] = '\0';
    if (n > 0 && p->linebuf[n - 1] == '\r')
        p->linebuf[--n] = '\0';
    if (memchr(p->linebuf, '\0', (size_t)n) != NULL) {
        parse_error(p, "NUL byte in line");
        return NULL;
    }
    /* " # comment" after a value: libinih only knows ";" for inline comments */
    for (char *h = strchr(p->linebuf, '#'); h; h = strchr(h + 1, '#'))
        if (h > p->linebuf && (h[-1] == ' ' || h[-1] == '\t')) {
            *h = '\0';
            n = (ssize_t)(h - p->linebuf);
            break;
        }
    if (n >= num - 1 || n > CONF_LINE_MAX) {
        parse_error(p, "line longer than %d characters", CONF_LINE_MAX);
        return NULL;
    }
    /* a section header: open it here, where its line number is known */
    char *t = p->linebuf;
    while (*t == ' ' || *t == '\t')
        t++;
    if (*t == '[') {
        char *close = strchr(t, ']');
        if (close != NULL) {
            char name[CONF_LINE_MAX + 1];
            size_t len = (size_t)(close - t - 1);
            memcpy(name, t + 1, len);
            name[len] = '\0';
            char *trimmed = str_trim(name);
            if (!begin_section(p, trimmed))
                return NULL;
        }
    }
    memcpy(str, p->linebuf, (size_t)n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

/* ---- whole-file validation ---- */

/* "/srv/mail/%d/%u" -> base "/srv/mail", rel "%d/%u" */
static void split_mailboxes(struct domain_conf *d)
{
    const char *pct = strchr(d->mailboxes, '%');
    const char *slash = pct;
    while (slash > d->mailboxes && slash[-1] != '/')
        slash--;
    /* slash is just past the last '/' before the first '%' (the pattern is absolute) */
    size_t base_len = (size_t)(slash - d->mailboxes);
    while (base_len > 1 && d->mailboxes[base_len - 1] == '/')
        base_len--;
    d->mail_base = xstrndup(d->mailboxes, base_len);
    d->mail_rel = slash;
    d->mail_base_fd = -1;
}

static bool load_tables(struct conf *c, unsigned flags, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->ndomains; i++) {
        struct domain_conf *d = &c->domains[i];
        split_mailboxes(d);
        if (flags & CONF_SKIP_TABLES) {
            d->users = users_empty();
            d->aliases = aliases_empty();
            continue;
        }
        d->users = d->users_path ? users_load(d->users_path, err, errlen) : users_empty();
        if (d->users == NULL)
            return false;
        d->aliases = d->aliases_path ? aliases_load(d->aliases_path, err, errlen) : aliases_empty();
        if (d->aliases == NULL)
            return false;
    }
    return true;
}

/* The smarthost password from relayhost_password_file: one line (a final newline is not
 * part of it), at most RELAYHOST_PASSWORD_MAX bytes, in a regular file. */
_Static_assert(RELAYHOST_PASSWORD_MAX == 1024, "the error below names the limit");
static bool load_password_file(struct conf *c, char *err, size_t errlen)
{
    const char *path = c->relayhost_password_file;
    char buf[RELAYHOST_PASSWORD_MAX + 3];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    ssize_t n = -1;
    const char *why = NULL;
    if (fd < 0 || fstat(fd, &st) != 0)
        why = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        why = "not a regular file";
    else if ((n = read(fd, buf, sizeof buf)) < 0)
        why = strerror(errno);
    if (fd >= 0)
        close(fd);
    size_t len = n > 0 ? (size_t)n : 0;
    if (why == NULL && len > 0 && buf[len - 1] == '\n')
        len--;
    if (why == NULL && len > 0 && buf[len - 1] == '\r')
        len--;
    if (why == NULL && len == 0)
        why = "empty";
    else if (why == NULL && len > RELAYHOST_PASSWORD_MAX)
        why = "longer than 1024 bytes (RELAYHOST_PASSWORD_MAX)";
    else if (why == NULL &&
             (memchr(buf, '\n', len) || memchr(buf, '\r', len) || memchr(buf, 0, len)))
        why = "more than one line, or a NUL byte";
    if (why != NULL) {
        explicit_bzero(buf, sizeof buf);
        snprintf(err, errlen, "%s: relayhost_password_file: %s: %s", c->path, path, why);
        return false;
    }
    c->relayhost_password = xstrndup(buf, len);
    explicit_bzero(buf, sizeof buf);
    return true;
}

static bool finish(struct conf *c, unsigned flags, char *err, size_t errlen)
{
    if (c->hostname == NULL) {
        char host[256];
        if (gethostname(host, sizeof host) != 0 || !str_is_hostname(host)) {
            snprintf(err, errlen, "%s: set \"hostname\": the system host name is not usable",
                     c->path);
            return false;
        }
        c->hostname = xstrdup(host);
        str_lower(c->hostname);
    }
    if (c->pidfile == NULL)
        c->pidfile = xasprintf("%s/ternd.pid", c->spool);
    if (c->control_socket == NULL)
        c->control_socket = xasprintf("%s/control.sock", c->spool);
    if (c->postmaster == NULL)
        c->postmaster = xasprintf("postmaster@%s", c->ndomains ? c->domains[0].name : c->hostname);
    if (c->nlistens == 0) {
        snprintf(err, errlen, "%s: no [listen NAME] section: ternd would not accept mail",
                 c->path);
        return false;
    }
    if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
        snprintf(err, errlen, "%s: tls_cert and tls_key go together", c->path);
        return false;
    }
    for (size_t i = 0; i < c->nlistens; i++) {
        struct listen_conf *l = &c->listens[i];
        if ((l->tls_cert == NULL) != (l->tls_key == NULL)) {
            snprintf(err, errlen, "%s:%u: [listen %s]: tls_cert and tls_key go together", c->path,
                     l->line, l->name);
            return false;
        }
        if (l->pregreet_wait_ms == UINT64_MAX)
            l->pregreet_wait_ms = l->role == ROLE_MX ? c->pregreet_wait_ms : 0;
        if (l->role == ROLE_SUBMISSIONS && l->tls_cert == NULL && c->tls_cert == NULL) {
            snprintf(err, errlen,
                     "%s:%u: [listen %s]: role submissions needs tls_cert and tls_key", c->path,
                     l->line, l->name);
            return false;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->listens[j].address, l->address) == 0) {
                snprintf(err, errlen, "%s:%u: [listen %s]: address %s is also used by [listen %s]",
                         c->path, l->line, l->name, l->address, c->listens[j].name);
                return false;
            }
    }
    if (c->relayhost_password != NULL && c->relayhost_password_file != NULL) {
        snprintf(err, errlen,
                 "%s: relayhost_password and relayhost_password_file: set one, not both",
                 c->path);
        return false;
    }
    if ((c->relayhost_user == NULL) !=
        (c->relayhost_password == NULL && c->relayhost_password_file == NULL)) {
        snprintf(err, errlen,
                 "%s: relayhost_user and relayhost_password (or relayhost_password_file) go "
                 "together",
                 c->path);
        return false;
    }
    /* tern-sendmail (CONF_SKIP_TABLES) never needs it, and need not be able to read it */
    if (c->relayhost_password_file != NULL && !(flags & CONF_SKIP_TABLES) &&
        !load_password_file(c, err, errlen))
        return false;
    return load_tables(c, flags, err, errlen);
}

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
    return conf_load_opts(path, 0, err, errlen);
}

struct conf *conf_load_opts(const char *path, unsigned flags, char *err, size_t errlen)
{
    struct conf *c = xcalloc(1, sizeof *c);
    c->refs = 1;
    char real[PATH_MAX];
    if (realpath(path, real) == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        free(c);
        return NULL;
    }
    c->path = xstrdup(real);
    char *slash = strrchr(real, '/');
    c->dir = slash == real ? xstrdup("/") : xstrndup(real, (size_t)(slash - real));

    struct parser p = {.c = c, .file = path};
    p.fp = fopen(path, "r");
    if (p.fp == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        conf_unref(c);
        return NULL;
    }
    apply_defaults(c, top_keys, ARRAY_LEN(top_keys), c);
    begin_top(&p);
    int rc = ini_parse_stream(read_line, &p, on_key, &p);
    if (!p.failed && ferror(p.fp))
        parse_error(&p, "read error: %s", strerror(errno));
    if (!p.failed && rc != 0) {
        /* a syntax error libinih found itself (the line it names is ours too) */
        p.lineno = rc > 0 ? (unsigned)rc : p.lineno;
        parse_error(&p, "syntax error (expected \"key = value\" or \"[section]\")");
    }
    end_section(&p);
    free(p.set_lines);
    fclose(p.fp);
    free(p.linebuf);
    if (p.failed) {
        snprintf(err, errlen, "%s", p.err);
        conf_unref(c);
        return NULL;
    }
    if (!finish(c, flags, err, errlen)) {
        conf_unref(c);
        return NULL;
    }
    return c;
}

void conf_ref(struct conf *c)
{
    c->refs++;
}

void conf_unref(struct conf *c)
{
    if (c == NULL || --c->refs > 0)
        return;
    for (size_t i = 0; i < c->nlistens; i++) {
        struct listen_conf *l = &c->listens[i];
        free(l->name);
        free(l->address);
        free(l->tls_cert);
        free(l->tls_key);
    }
    free(c->listens);
    for (size_t i = 0; i < c->ndomains; i++) {
        struct domain_conf *d = &c->domains[i];
        free(d->name);
        free(d->mailboxes);
        free(d->mail_base);
        if (d->mail_base_fd >= 0)
            close(d->mail_base_fd);
        free(d->users_path);
        free(d->aliases_path);
        free(d->catchall);
        free(d->postmaster);
        users_free(d->users);
        aliases_free(d->aliases);
    }
    free(c->domains);
    for (size_t i = 0; i < c->ntransports; i++) {
        free(c->transports[i].domain);
        free(c->transports[i].nexthop);
    }
    free(c->transports);
    char **strings[] = {&c->path,           &c->dir,        &c->hostname,
                        &c->spool,          &c->user,       &c->pidfile,
                        &c->control_socket, &c->recipient_delimiter, &c->postmaster,
                        &c->dns,            &c->relayhost,  &c->relayhost_user,
                        &c->relayhost_password, &c->relayhost_password_file,
                        &c->smtp_tls_ca_file, &c->tls_cert, &c->tls_key};
    if (c->relayhost_password != NULL)
        explicit_bzero(c->relayhost_password, strlen(c->relayhost_password));
    for (size_t i = 0; i < ARRAY_LEN(strings); i++)
        free(*strings[i]);
    cidr_list_free(&c->session_limit_exceptions);
    cidr_list_free(&c->trusted_networks);
    cidr_list_free(&c->reverse_dns_skip);
    free(c->retry_ms);
    free(c);
}

/* domain, or its A-labels in buf when it is written in UTF-8 (SMTPUTF8); NULL if IDNA
 * refuses it, and so it is no name of ours */
static const char *ascii_name(const char *domain, char *buf, size_t cap)
{
    char why[128];
    if (!idna_is_utf8_name(domain))
        return domain;
    return idna_to_ascii(domain, buf, cap, why, sizeof why) == 0 ? buf : NULL;
}

const struct domain_conf *conf_find_domain(const struct conf *c, const char *domain)
{
    char buf[256];
    if ((domain = ascii_name(domain, buf, sizeof buf)) == NULL)
        return NULL;
    for (size_t i = 0; i < c->ndomains; i++)
        if (str_ieq(c->domains[i].name, domain))
            return &c->domains[i];
    return NULL;
}

const struct transport_conf *conf_find_transport(const struct conf *c, const char *domain)
{
    char buf[256];
    if ((domain = ascii_name(domain, buf, sizeof buf)) == NULL)
        return NULL;
    for (size_t i = 0; i < c->ntransports; i++)
        if (str_ieq(c->transports[i].domain, domain))
            return &c->transports[i];
    return NULL;
}
