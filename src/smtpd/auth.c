/* auth: see auth.h. */
#include "smtpd/auth.h"

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mem.h"
#include "lib/workers.h"

static struct workers *pool;
static char *dummy_hash; /* a yescrypt hash nobody knows the password of */

struct job {
    char *hash; /* NULL: compare against the dummy, answer false */
    char *password;
    bool ok;
    void (*done)(void *arg, bool ok);
    void *arg;
};

static bool equal_const_time(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la && i < lb; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

static void verify_work(void *arg)
{
    struct job *j = arg;
    struct crypt_data *cd = xcalloc(1, sizeof *cd);
    const char *setting = j->hash ? j->hash : dummy_hash;
    const char *out = crypt_r(j->password, setting, cd);
    /* libxcrypt returns a string starting with '*' on failure, never NULL */
    j->ok = j->hash != NULL && out != NULL && out[0] != '*' && equal_const_time(out, j->hash);
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    explicit_bzero(j->password, strlen(j->password));
}

static void verify_done(void *arg)
{
    struct job *j = arg;
    j->done(j->arg, j->ok);
    free(j->hash);
    free(j->password);
    free(j);
}

char *auth_hash_password(const char *password)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof salt) == NULL)
        return NULL;
    struct crypt_data *cd = xcalloc(1, sizeof *cd);
    const char *out = crypt_r(password, salt, cd);
    char *result = (out && out[0] != '*') ? xstrdup(out) : NULL;
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    return result;
}

void auth_init(struct workers *p)
{
    pool = p;
    if (dummy_hash == NULL) {
        char random_pw[32];
        for (size_t i = 0; i < sizeof random_pw - 1; i++)
            random_pw[i] = (char)('a' + (unsigned)rand() % 26);
        random_pw[sizeof random_pw - 1] = '\0';
        dummy_hash = auth_hash_password(random_pw);
        if (dummy_hash == NULL)
            fatal("libcrypt cannot make a yescrypt hash");
    }
}

void auth_verify(const char *hash, const char *password, void (*done)(void *arg, bool ok),
                 void *arg)
{
    struct job *j = xcalloc(1, sizeof *j);
    /* a locked or malformed hash ("*", "!") behaves like a wrong password */
    j->hash = (hash && hash[0] == '$') ? xstrdup(hash) : NULL;
    j->password = xstrdup(password);
    j->done = done;
    j->arg = arg;
    workers_submit(pool, verify_work, verify_done, j);
}
