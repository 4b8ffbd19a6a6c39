/*
 * fuzz_address: libFuzzer target for src/mail/address.c.
 *
 * Input: the first byte chooses the options (its low three bits: ADDR_ALLOW_NULL,
 * ADDR_ALLOW_POSTMASTER, ADDR_ALLOW_UTF8, so the digits '0'..'7' in a text seed select
 * them), the rest is given to addr_parse_path, addr_parse_mailbox and addr_check_domain.
 * Besides memory safety (ASan/UBSan) the target checks properties that must hold for
 * every input:
 *   - a result is NULL or a non-empty reason; a failed parse leaves an empty address;
 *   - a success respects every limit and sets *end just past a '>' within the path limit;
 *   - addr_err_needs_utf8 only without ADDR_ALLOW_UTF8, and the same input then parses
 *     with it; ADDR_F_UTF8 only with it;
 *   - round trip: addr_format's output parses back (as a mailbox and as a path) to the
 *     same address (a dropped route aside), and addr_split gives back local and domain.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mail/address.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static bool same_addr(const struct mailaddr *a, const struct mailaddr *b)
{
    unsigned fa = a->flags & ~(unsigned)ADDR_F_ROUTE, fb = b->flags & ~(unsigned)ADDR_F_ROUTE;
    if (fa != fb || strcmp(a->domain, b->domain) != 0)
        return false;
    /* bare postmaster is formatted as "Postmaster" whatever case it came in */
    if (a->flags & ADDR_F_POSTMASTER)
        return strcasecmp(a->local, b->local) == 0;
    return strcmp(a->local, b->local) == 0;
}

static void check_result(const char *why, const struct mailaddr *a, unsigned opts)
{
    if (why != NULL) {
        CHECK(why[0] != '\0');
        CHECK(a->local[0] == '\0' && a->domain[0] == '\0' && a->flags == 0);
        if (why == addr_err_needs_utf8)
            CHECK(!(opts & ADDR_ALLOW_UTF8));
        return;
    }
    CHECK(strlen(a->local) <= ADDR_LOCAL_MAX);
    CHECK(strlen(a->domain) <= ADDR_DOMAIN_MAX);
    if (a->flags & ADDR_F_UTF8)
        CHECK(opts & ADDR_ALLOW_UTF8);
    if (a->flags & ADDR_F_NULL)
        CHECK((opts & ADDR_ALLOW_NULL) && a->local[0] == '\0' && a->domain[0] == '\0');
    if (a->flags & ADDR_F_POSTMASTER)
        CHECK((opts & ADDR_ALLOW_POSTMASTER) && strcasecmp(a->local, "postmaster") == 0);
    if (!(a->flags & (ADDR_F_NULL | ADDR_F_POSTMASTER))) {
        CHECK(a->domain[0] != '\0');
        CHECK(((a->flags & ADDR_F_LITERAL) != 0) == (a->domain[0] == '['));
        CHECK(((a->flags & ADDR_F_QUOTED) != 0) == (a->local[0] == '"'));
        CHECK(addr_check_domain(a->domain, strlen(a->domain),
                                (opts & ADDR_ALLOW_UTF8) != 0) == NULL);
    }

    /* round trip */
    char text[ADDR_TEXT_MAX + 1];
    size_t n = addr_format(a, text, sizeof text);
    CHECK(n < sizeof text && n == strlen(text));
    struct mailaddr b;
    CHECK(addr_parse_mailbox(text, n, opts, &b) == NULL);
    CHECK(same_addr(a, &b));
    if (n + 2 <= ADDR_PATH_MAX) {
        char p[ADDR_TEXT_MAX + 3];
        p[0] = '<';
        memcpy(p + 1, text, n);
        p[n + 1] = '>';
        size_t end = 0;
        CHECK(addr_parse_path(p, n + 2, opts, &b, &end) == NULL);
        CHECK(end == n + 2);
        CHECK(same_addr(a, &b));
    }
    if (!(a->flags & (ADDR_F_NULL | ADDR_F_POSTMASTER))) {
        char l[ADDR_LOCAL_MAX + 1], d[ADDR_DOMAIN_MAX + 1];
        CHECK(addr_split(text, l, sizeof l, d, sizeof d));
        CHECK(strcmp(l, a->local) == 0 && strcmp(d, a->domain) == 0);
        char u[ADDR_LOCAL_MAX + 1];
        size_t ul = addr_local_unquote(a->local, u, sizeof u);
        CHECK(ul != (size_t)-1 && ul <= strlen(a->local));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned opts = data[0] & (ADDR_ALLOW_NULL | ADDR_ALLOW_POSTMASTER | ADDR_ALLOW_UTF8);
    size_t n = size - 1;
    /* an exact-size copy, so reading one byte too far is caught by ASan */
    char *s = malloc(n ? n : 1);
    if (s == NULL)
        return 0;
    memcpy(s, data + 1, n);

    struct mailaddr a;
    size_t end = (size_t)-1;
    const char *why = addr_parse_path(s, n, opts, &a, &end);
    check_result(why, &a, opts);
    if (why == NULL) {
        CHECK(end >= 2 && end <= n && end <= ADDR_PATH_MAX && s[end - 1] == '>');
    } else if (why == addr_err_needs_utf8) {
        struct mailaddr u;
        CHECK(addr_parse_path(s, n, opts | ADDR_ALLOW_UTF8, &u, NULL) == NULL);
        CHECK(u.flags & (ADDR_F_UTF8 | ADDR_F_ROUTE)); /* UTF-8 kept, or in a dropped route */
    }

    why = addr_parse_mailbox(s, n, opts, &a);
    check_result(why, &a, opts);
    if (why == addr_err_needs_utf8)
        CHECK(addr_parse_mailbox(s, n, opts | ADDR_ALLOW_UTF8, &a) == NULL);

    why = addr_check_domain(s, n, (opts & ADDR_ALLOW_UTF8) != 0);
    if (why != NULL) {
        CHECK(why[0] != '\0');
    } else {
        CHECK(n <= ADDR_DOMAIN_MAX);
        /* a valid domain makes a valid mailbox */
        char m[ADDR_DOMAIN_MAX + 3] = "x@";
        memcpy(m + 2, s, n);
        CHECK(addr_parse_mailbox(m, n + 2, opts | ADDR_ALLOW_UTF8, &a) == NULL);
        CHECK(strlen(a.domain) == n && memcmp(a.domain, s, n) == 0);
    }
    free(s);
    return 0;
}
