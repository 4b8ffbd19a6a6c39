/* strutil: see strutil.h. */
#include "lib/strutil.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool str_ieq(const char *a, const char *b)
{
    return strcasecmp(a, b) == 0;
}

bool str_ieqn(const char *a, size_t alen, const char *b)
{
    return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

bool str_iprefix(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

void str_lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

char *str_trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

bool str_is_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        if (!(isalnum(ch) || ch == '-') || ++label > 63)
            return false;
        if (ch == '-' && (label == 1 || i + 1 == n || s[i + 1] == '.'))
            return false;
    }
    return label > 0;
}

bool parse_uint(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

/* Number followed by a unit from the table; an empty unit uses the factor of "". */
static bool parse_scaled(const char *s, const char *const units[], const uint64_t factors[],
                         size_t nunits, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return false;
    for (size_t i = 0; i < nunits; i++) {
        if (strcasecmp(end, units[i]) == 0) {
            if (factors[i] != 0 && v > UINT64_MAX / factors[i])
                return false;
            *out = v * factors[i];
            return true;
        }
    }
    return false;
}

bool parse_size(const char *s, uint64_t *out)
{
    static const char *const units[] = {"", "k", "kb", "m", "mb", "g", "gb"};
    static const uint64_t factors[] = {1, 1024, 1024, 1024 * 1024, 1024 * 1024,
                                       1024ull * 1024 * 1024, 1024ull * 1024 * 1024};
    return parse_scaled(s, units, factors, sizeof units / sizeof units[0], out);
}

bool parse_duration_ms(const char *s, uint64_t *out)
{
    static const char *const units[] = {"", "ms", "s", "m", "h", "d"};
    static const uint64_t factors[] = {1000, 1, 1000, 60000, 3600000, 86400000};
    return parse_scaled(s, units, factors, sizeof units / sizeof units[0], out);
}

bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}
