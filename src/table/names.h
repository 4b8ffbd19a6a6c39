/*
 * names: a sorted, case-insensitive name -> value index shared by the users and aliases
 * tables (binary search over one array; built once, then read-only).
 */
#ifndef TERN_NAMES_H
#define TERN_NAMES_H

#include <stdbool.h>
#include <stddef.h>

struct name_entry {
    char *name; /* lowercased */
    void *value;
    unsigned line; /* where it was defined, for duplicate errors */
};

struct name_index {
    struct name_entry *v;
    size_t n, cap;
};

void names_add(struct name_index *ix, const char *name, void *value, unsigned line);
/* Sort; returns the first duplicate's entry (and the earlier one in *first), or NULL. */
const struct name_entry *names_seal(struct name_index *ix, const struct name_entry **first);
const struct name_entry *names_find(const struct name_index *ix, const char *name);
/* Free every name, each value with free_value, and the index's array. */
void names_free(struct name_index *ix, void (*free_value)(void *value));
/* A plausible local part for a table key: 1..64 octets of atext and dots. */
bool names_valid_local(const char *s);

#endif
