/* users: see users.h. */
#include "table/users.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/fsutil.h"
#include "lib/mem.h"
#include "lib/strutil.h"
#include "table/names.h"

struct users {
    struct name_index ix; /* value: the hash (char *) or NULL */
};

struct users *users_empty(void)
{
    return xcalloc(1, sizeof(struct users));
}

void users_free(struct users *u)
{
    if (u == NULL)
        return;
    names_free(&u->ix, free);
    free(u);
}

static bool valid_hash(const char *h)
{
    /* crypt(3) output alphabet; "*" or "!" lock the account (kept, never matches) */
    for (; *h; h++)
        if (!(strchr("./$=,*!-+", *h) || (*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'z') ||
              (*h >= 'A' && *h <= 'Z')))
            return false;
    return true;
}

struct users *users_load(const char *path, char *err, size_t errlen)
{
    char *data;
    if (fs_read_file_at(AT_FDCWD, path, USERS_FILE_MAX, &data, NULL) != 0) {
        snprintf(err, errlen, "%s: cannot read users file: %s", path,
                 errno == EFBIG ? "larger than 64 MiB" : strerror(errno));
        return NULL;
    }
    struct users *u = users_empty();
    unsigned lineno = 0;
    for (char *line = data; line != NULL;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        char *hash_mark = strchr(line, '#');
        if (hash_mark)
            *hash_mark = '\0';
        char *s = str_trim(line);
        if (*s != '\0') {
            char *colon = strchr(s, ':');
            char *hash = NULL;
            if (colon) {
                *colon = '\0';
                hash = str_trim(colon + 1);
                s = str_trim(s);
                if (*hash == '\0') {
                    snprintf(err, errlen, "%s:%u: empty password hash after \":\"", path, lineno);
                    goto fail;
                }
                if (!valid_hash(hash)) {
                    snprintf(err, errlen, "%s:%u: \"%s\" is not a crypt(3) hash", path, lineno,
                             s);
                    goto fail;
                }
            }
            /* a user name becomes a folder name: no "/" */
            if (!names_valid_local(s) || strchr(s, '/') != NULL) {
                snprintf(err, errlen, "%s:%u: \"%.64s\" is not a valid user name (a local part)",
                         path, lineno, s);
                goto fail;
            }
            names_add(&u->ix, s, hash ? xstrdup(hash) : NULL, lineno);
        }
        line = next;
    }
    const struct name_entry *first, *dup = names_seal(&u->ix, &first);
    if (dup) {
        snprintf(err, errlen, "%s:%u: user \"%s\" already defined at line %u", path, dup->line,
                 dup->name, first->line);
        goto fail;
    }
    free(data);
    return u;
fail:
    free(data);
    users_free(u);
    return NULL;
}

bool users_exists(const struct users *u, const char *name)
{
    return names_find(&u->ix, name) != NULL;
}

const char *users_password_hash(const struct users *u, const char *name)
{
    const struct name_entry *e = names_find(&u->ix, name);
    return e ? e->value : NULL;
}

size_t users_count(const struct users *u)
{
    return u->ix.n;
}
