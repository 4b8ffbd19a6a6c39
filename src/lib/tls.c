/*
 * tls: see tls.h. The only file that includes OpenSSL headers (io.c passes SSL objects
 * through as opaque pointers to libevent's OpenSSL filter).
 */
#include "lib/tls.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/mem.h"

/* TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are OpenSSL's defaults. */
#define TLS12_CIPHERS                                                                          \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                                \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"

struct tls_ctx {
    SSL_CTX *ctx;
    int refs;
};

void tls_last_error(char *buf, size_t len)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    if (len == 0)
        return;
    if (last == 0) {
        buf[0] = '\0';
        return;
    }
    ERR_error_string_n(last, buf, len);
}

static SSL_CTX *base_ctx(bool server, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        tls_last_error(err, errlen);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        tls_last_error(err, errlen);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* libevent's filter may retry a write with a moved buffer */
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_RELEASE_BUFFERS);
    return ctx;
}

struct tls_ctx *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err,
                                   size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = base_ctx(true, err, errlen);
    if (ctx == NULL)
        return NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        tls_last_error(why, sizeof why);
        snprintf(err, errlen, "cannot load certificate %s: %s", cert_file, why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        tls_last_error(why, sizeof why);
        snprintf(err, errlen, "cannot load key %s: %s", key_file, why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "key %s does not match certificate %s", key_file, cert_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    static const unsigned char sid_ctx[] = "ternd";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    struct tls_ctx *t = xcalloc(1, sizeof *t);
    t->ctx = ctx;
    t->refs = 1;
    return t;
}

struct tls_ctx *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = base_ctx(false, err, errlen);
    if (ctx == NULL)
        return NULL;
    /* The system trust store as a hashed folder, looked up lazily per issuer: loading the
     * whole bundle file (what SSL_CTX_set_default_verify_paths does) costs a tenth of a
     * second at every start, for a client that may never verify anything. SSL_CERT_FILE,
     * when set, still wins, as it does for OpenSSL's defaults. */
    const char *env_file = getenv(X509_get_default_cert_file_env());
    const char *env_dir = getenv(X509_get_default_cert_dir_env());
    int ok = ca_file    ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
             : env_file ? SSL_CTX_load_verify_locations(ctx, env_file, NULL)
                        : SSL_CTX_load_verify_locations(
                              ctx, NULL, env_dir ? env_dir : X509_get_default_cert_dir());
    if (ok != 1) {
        char why[256];
        tls_last_error(why, sizeof why);
        snprintf(err, errlen, "cannot load trust store %s: %s", ca_file ? ca_file : "(system)",
                 why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* Verification is judged after the handshake by policy (tls_ssl_verified), so that
     * opportunistic TLS still encrypts to servers with self-signed certificates. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    struct tls_ctx *t = xcalloc(1, sizeof *t);
    t->ctx = ctx;
    t->refs = 1;
    return t;
}

void tls_ctx_ref(struct tls_ctx *ctx)
{
    ctx->refs++;
}

void tls_ctx_unref(struct tls_ctx *ctx)
{
    if (ctx == NULL || --ctx->refs > 0)
        return;
    SSL_CTX_free(ctx->ctx);
    free(ctx);
}

void *tls_ssl_new(struct tls_ctx *ctx, bool server, const char *sni)
{
    SSL *ssl = SSL_new(ctx->ctx);
    if (ssl == NULL)
        return NULL;
    if (!server && sni != NULL && sni[0] != '\0') {
        SSL_set_tlsext_host_name(ssl, sni);
        SSL_set1_host(ssl, sni);
    }
    return ssl;
}

void tls_ssl_info(void *p, char *version, size_t vlen, char *cipher, size_t clen, int *bits)
{
    SSL *ssl = p;
    if (vlen)
        snprintf(version, vlen, "%s", SSL_get_version(ssl));
    if (clen)
        snprintf(cipher, clen, "%s", SSL_get_cipher_name(ssl));
    if (bits)
        *bits = SSL_get_cipher_bits(ssl, NULL);
}

bool tls_ssl_verified(void *p, char *why, size_t whylen)
{
    SSL *ssl = p;
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (peer == NULL) {
        snprintf(why, whylen, "no peer certificate");
        return false;
    }
    long r = SSL_get_verify_result(ssl);
    if (r != X509_V_OK) {
        snprintf(why, whylen, "%s", X509_verify_cert_error_string(r));
        return false;
    }
    snprintf(why, whylen, "verified");
    return true;
}

int tls_make_self_signed(const char *cert_file, const char *key_file, const char *cn, char *err,
                         size_t errlen)
{
    int rc = -1;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    FILE *f = NULL;
    if (key == NULL || x == NULL)
        goto fail;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 24 * 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    char san[300];
    snprintf(san, sizeof san, "DNS:%s", cn);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (ext == NULL)
        goto fail;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (X509_sign(x, key, EVP_sha256()) == 0)
        goto fail;

    int kfd = open(key_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (kfd < 0 || (f = fdopen(kfd, "w")) == NULL) {
        snprintf(err, errlen, "cannot write %s", key_file);
        if (kfd >= 0)
            close(kfd);
        goto out;
    }
    if (PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) != 1 || fclose(f) != 0) {
        f = NULL;
        goto fail;
    }
    f = fopen(cert_file, "w");
    if (f == NULL) {
        snprintf(err, errlen, "cannot write %s", cert_file);
        goto out;
    }
    if (PEM_write_X509(f, x) != 1)
        goto fail;
    if (fclose(f) != 0) {
        f = NULL;
        goto fail;
    }
    f = NULL;
    rc = 0;
    goto out;
fail:
    tls_last_error(err, errlen);
    if (err[0] == '\0')
        snprintf(err, errlen, "cannot create a self-signed certificate");
out:
    if (f)
        fclose(f);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}
