/* names: see names.h. */
#include "table/names.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mem.h"
#include "lib/strutil.h"

void names_add(struct name_index *ix, const char *name, void *value, unsigned line)
{
    ix->v = xgrow(ix->v, &ix->cap, ix->n + 1, sizeof *ix->v);
    struct name_entry *e = &ix->v[ix->n++];
    e->name = xstrdup(name);
    str_lower(e->name);
    e->value = value;
    e->line = line;
}

static int cmp_entry(const void *a, const void *b)
{
    const struct name_entry *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    return x->line < y->line ? -1 : x->line > y->line;
}

const struct name_entry *names_seal(struct name_index *ix, const struct name_entry **first)
{
    if (ix->n > 1)
        qsort(ix->v, ix->n, sizeof *ix->v, cmp_entry);
    for (size_t i = 1; i < ix->n; i++) {
        if (strcmp(ix->v[i - 1].name, ix->v[i].name) == 0) {
            *first = &ix->v[i - 1];
            return &ix->v[i];
        }
    }
    return NULL;
}

void names_free(struct name_index *ix, void (*free_value)(void *value))
{
    for (size_t i = 0; i < ix->n; i++) {
        free(ix->v[i].name);
        free_value(ix->v[i].value);
    }
    free(ix->v);
    ix->v = NULL;
    ix->n = ix->cap = 0;
}

const struct name_entry *names_find(const struct name_index *ix, const char *name)
{
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcasecmp(name, ix->v[mid].name);
        if (c == 0)
            return &ix->v[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

bool names_valid_local(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80)
            continue; /* UTF-8 local parts (RFC 6531) */
        if (isalnum(c) || strchr("!#$%&'*+-/=?^_`{|}~.", c))
            continue;
        return false;
    }
    return strstr(s, "..") == NULL;
}
