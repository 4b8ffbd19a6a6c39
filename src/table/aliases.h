/*
 * aliases: the aliases of one domain, loaded from a file of lines
 *     name: target, target, ...
 * where a target without "@" is a user (or alias) of the same domain and one with "@" is a
 * full address. A line that starts with white space continues the previous alias's targets.
 * "#" starts a comment. Names are matched case-insensitively. Expansion (nesting, loops)
 * is table/local's job; this module only stores the lines.
 */
#ifndef TERN_ALIASES_H
#define TERN_ALIASES_H

#include <stddef.h>

#define ALIASES_FILE_MAX (64u * 1024 * 1024)
#define ALIAS_TARGETS_MAX 1000 /* targets of one alias */

struct aliases;

struct aliases *aliases_load(const char *path, char *err, size_t errlen);
struct aliases *aliases_empty(void);
void aliases_free(struct aliases *a);
/* NULL if name is not an alias; else its targets, NULL-terminated, in file order. */
const char *const *aliases_lookup(const struct aliases *a, const char *name);
size_t aliases_count(const struct aliases *a);

#endif
