/*
 * conf: the configuration file (INI, read with libinih) as an immutable, reference-counted
 * snapshot. ternd loads one at start and on SIGHUP swaps in a new one; sessions and jobs
 * keep a reference to the snapshot they started with.
 *
 * Every key is declared once in a typed table in conf.c (type, default, limits), which is
 * also what docs/configuration in README.md describes. Errors name "FILE:LINE: ...".
 * Relative paths are relative to the configuration file's folder and stored absolute.
 */
#ifndef TERN_CONF_H
#define TERN_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/log.h"
#include "lib/netaddr.h"

#define CONF_DEFAULT_PATH "/etc/tern/ternd.conf"
#define CONF_LINE_MAX 199 /* libinih's line limit, less the newline */

struct users;
struct aliases;

enum listen_role { ROLE_MX, ROLE_SUBMISSION, ROLE_SUBMISSIONS };
enum tls_policy { TLS_POLICY_NONE, TLS_POLICY_MAY, TLS_POLICY_ENCRYPT, TLS_POLICY_VERIFY };
enum log_sink { LOG_SINK_AUTO, LOG_SINK_STDERR, LOG_SINK_SYSLOG };

struct listen_conf {
    char *name;
    char *address; /* "ip:port" */
    enum listen_role role;
    char *tls_cert, *tls_key; /* NULL: the top-level ones */
    uint64_t pregreet_wait_ms;
    unsigned line;
};

struct domain_conf {
    char *name;      /* lowercased */
    char *mailboxes; /* absolute pattern with %d (domain) and %u (user) */
    char *mail_base; /* the pattern's fixed leading folder ("/srv/mail" of "/srv/mail/%d/%u") */
    const char *mail_rel; /* the rest of the pattern, relative to mail_base ("%d/%u") */
    int mail_base_fd;     /* opened by ternd (before dropping privileges); -1 until then */
    char *users_path, *aliases_path; /* absolute, or NULL */
    char *catchall;   /* local user or address that gets unknown local parts, or NULL */
    char *postmaster; /* where postmaster@ goes; NULL: the top-level postmaster */
    struct users *users;
    struct aliases *aliases;
    unsigned line;
};

struct transport_conf {
    char *domain;  /* lowercased; "*" never (that is relayhost) */
    char *nexthop; /* "host:port" or "[ip]:port" */
    enum tls_policy tls;
    unsigned line;
};

struct conf {
    int refs;
    char *path; /* absolute path of the file */
    char *dir;  /* its folder */

    char *hostname;
    char *spool;
    char *user;
    char *pidfile;
    char *control_socket;
    enum log_sink log;
    enum log_level log_level;
    int syslog_facility;

    uint64_t message_size_limit;
    unsigned max_recipients;
    unsigned max_errors;
    unsigned max_received_headers;
    uint64_t command_timeout_ms;
    uint64_t data_timeout_ms;
    uint64_t pregreet_wait_ms;
    uint64_t shutdown_timeout_ms;
    unsigned max_sessions;
    unsigned max_sessions_per_ip;
    struct cidr_list session_limit_exceptions;
    bool reverse_dns;
    uint64_t reverse_dns_timeout_ms;
    struct cidr_list reverse_dns_skip; /* clients never looked up (loopback by default) */
    char *recipient_delimiter; /* "" disables */
    char *postmaster;          /* address */

    struct cidr_list trusted_networks;
    char *dns; /* "ip:port" or NULL for /etc/resolv.conf */
    unsigned mx_port;
    char *relayhost; /* "host:port" or NULL */
    char *relayhost_user;
    char *relayhost_password; /* from relayhost_password or read from the file below */
    char *relayhost_password_file;
    enum tls_policy smtp_tls;
    char *smtp_tls_ca_file; /* outbound trust store (PEM); NULL: the system's */
    uint64_t smtp_connect_timeout_ms;
    unsigned max_outbound;
    unsigned max_outbound_per_destination;

    char *tls_cert, *tls_key;
    bool auth_plaintext_loopback;
    unsigned auth_max_failures;
    bool sender_login_check;

    uint64_t queue_lifetime_ms;
    uint64_t delay_warning_ms; /* 0: no delay warnings */
    uint64_t *retry_ms;        /* backoff schedule; the last step repeats */
    size_t nretry;
    uint64_t min_free_space;
    unsigned delivery_workers;
    unsigned delivery_nice; /* scheduling priority of the delivery threads below the loop */

    struct listen_conf *listens;
    size_t nlistens;
    struct domain_conf *domains;
    size_t ndomains;
    struct transport_conf *transports;
    size_t ntransports;
};

/* Load and validate; NULL with "FILE:LINE: reason" in err. */
struct conf *conf_load(const char *path, char *err, size_t errlen);
/* The same, for tools run by any local user (tern-sendmail, ternctl): the users and aliases
 * files (which hold password hashes and may be private) and relayhost_password_file are not
 * read; every domain gets empty tables and relayhost_password stays NULL (unless written
 * in the file itself). */
#define CONF_SKIP_TABLES 1u
#define RELAYHOST_PASSWORD_MAX 1024
struct conf *conf_load_opts(const char *path, unsigned flags, char *err, size_t errlen);
void conf_ref(struct conf *c);
void conf_unref(struct conf *c);

/* Case-insensitive; a name written in UTF-8 is compared by its IDNA2008 A-labels (every
 * [domain] and [transport] name is kept in that form). NULL if the domain is not ours. */
const struct domain_conf *conf_find_domain(const struct conf *c, const char *domain);
const struct transport_conf *conf_find_transport(const struct conf *c, const char *domain);
const char *conf_role_name(enum listen_role r);
const char *conf_tls_policy_name(enum tls_policy p);
bool conf_tls_policy_parse(const char *s, enum tls_policy *out);

#endif
