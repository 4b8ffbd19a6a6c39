/*
 * tls: OpenSSL behind a small API. Contexts are reference counted so a configuration reload
 * can swap certificates while existing sessions keep the context they started with.
 * Only TLS 1.2 and 1.3 are enabled, with a modern cipher list.
 */
#ifndef TERN_TLS_H
#define TERN_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct tls_ctx;

/* Server context from PEM certificate chain and key files. NULL with err on failure. */
struct tls_ctx *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err,
                                   size_t errlen);
/* Client context: verify selects whether peers' certificates are checked against the system
 * trust store (ca_file overrides it when not NULL). */
struct tls_ctx *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen);
void tls_ctx_ref(struct tls_ctx *ctx);
void tls_ctx_unref(struct tls_ctx *ctx);

/* For io.c: a new SSL object (returned as void * to keep OpenSSL out of other headers). */
void *tls_ssl_new(struct tls_ctx *ctx, bool server, const char *sni);
void tls_ssl_info(void *ssl, char *version, size_t vlen, char *cipher, size_t clen, int *bits);
bool tls_ssl_verified(void *ssl, char *why, size_t whylen);
/* The most recent OpenSSL error of this thread as text (and clear the queue). */
void tls_last_error(char *buf, size_t len);

/* Generate a self-signed certificate and key (for the development configuration). */
int tls_make_self_signed(const char *cert_file, const char *key_file, const char *cn, char *err,
                         size_t errlen);

#endif
