/* aliases: see aliases.h. */
#include "table/aliases.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/fsutil.h"
#include "lib/mem.h"
#include "lib/strutil.h"
#include "table/names.h"

struct target_list {
    char **v; /* NULL-terminated */
    size_t n, cap;
};

struct aliases {
    struct name_index ix; /* value: struct target_list * */
};

struct aliases *aliases_empty(void)
{
    return xcalloc(1, sizeof(struct aliases));
}

static void free_targets(void *value)
{
    struct target_list *t = value;
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i]);
    free(t->v);
    free(t);
}

void aliases_free(struct aliases *a)
{
    if (a == NULL)
        return;
    names_free(&a->ix, free_targets);
    free(a);
}

/* A target is a local name or local@domain; no spaces, quotes or commas inside. */
static bool valid_target(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 320)
        return false;
    const char *at = strrchr(t, '@');
    for (const char *p = t; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '"' || *p == '<' || *p == '>' || *p == '|')
            return false;
    if (at == NULL)
        return names_valid_local(t);
    if (at == t || at[1] == '\0')
        return false;
    return true;
}

/* Add the comma-separated targets in s to t. */
static bool add_targets(struct target_list *t, char *s, const char *path, unsigned lineno,
                        char *err, size_t errlen)
{
    char *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *target = str_trim(tok);
        if (*target == '\0')
            continue;
        if (!valid_target(target)) {
            snprintf(err, errlen,
                     "%s:%u: \"%.100s\" is not a valid target (a local name or an address; "
                     "files and commands are not supported)",
                     path, lineno, target);
            return false;
        }
        if (t->n >= ALIAS_TARGETS_MAX) {
            snprintf(err, errlen, "%s:%u: more than %u targets", path, lineno, ALIAS_TARGETS_MAX);
            return false;
        }
        t->v = xgrow(t->v, &t->cap, t->n + 2, sizeof *t->v);
        t->v[t->n] = xstrdup(target);
        if (strchr(target, '@') == NULL)
            str_lower(t->v[t->n]);
        t->n++;
        t->v[t->n] = NULL;
    }
    return true;
}

struct aliases *aliases_load(const char *path, char *err, size_t errlen)
{
    char *data;
    if (fs_read_file_at(AT_FDCWD, path, ALIASES_FILE_MAX, &data, NULL) != 0) {
        snprintf(err, errlen, "%s: cannot read aliases file: %s", path,
                 errno == EFBIG ? "larger than 64 MiB" : strerror(errno));
        return NULL;
    }
    struct aliases *a = aliases_empty();
    struct target_list *current = NULL;
    unsigned lineno = 0;
    for (char *line = data; line != NULL;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        char *hash_mark = strchr(line, '#');
        if (hash_mark)
            *hash_mark = '\0';
        bool continuation = line[0] == ' ' || line[0] == '\t';
        char *s = str_trim(line);
        if (*s == '\0') {
            line = next;
            continue;
        }
        if (continuation) {
            if (current == NULL) {
                snprintf(err, errlen, "%s:%u: continuation line without an alias above it", path,
                         lineno);
                goto fail;
            }
            if (!add_targets(current, s, path, lineno, err, errlen))
                goto fail;
        } else {
            char *colon = strchr(s, ':');
            if (colon == NULL) {
                snprintf(err, errlen, "%s:%u: expected \"name: target, ...\"", path, lineno);
                goto fail;
            }
            *colon = '\0';
            char *name = str_trim(s);
            if (!names_valid_local(name)) {
                snprintf(err, errlen, "%s:%u: \"%.64s\" is not a valid alias name", path, lineno,
                         name);
                goto fail;
            }
            current = xcalloc(1, sizeof *current);
            names_add(&a->ix, name, current, lineno);
            if (!add_targets(current, colon + 1, path, lineno, err, errlen))
                goto fail;
        }
        line = next;
    }
    for (size_t i = 0; i < a->ix.n; i++) {
        struct target_list *t = a->ix.v[i].value;
        if (t->n == 0) {
            snprintf(err, errlen, "%s:%u: alias \"%s\" has no targets", path, a->ix.v[i].line,
                     a->ix.v[i].name);
            goto fail;
        }
    }
    const struct name_entry *first, *dup = names_seal(&a->ix, &first);
    if (dup) {
        snprintf(err, errlen, "%s:%u: alias \"%s\" already defined at line %u", path, dup->line,
                 dup->name, first->line);
        goto fail;
    }
    free(data);
    return a;
fail:
    free(data);
    aliases_free(a);
    return NULL;
}

const char *const *aliases_lookup(const struct aliases *a, const char *name)
{
    const struct name_entry *e = names_find(&a->ix, name);
    if (e == NULL)
        return NULL;
    const struct target_list *t = e->value;
    return (const char *const *)t->v;
}

size_t aliases_count(const struct aliases *a)
{
    return a->ix.n;
}
