/*
 * ctlproto: see ctlproto.h for the grammar. Escaping follows the log module's rules (\" \\
 * and \xHH for everything outside printable ASCII) so an operator reads one style in logs
 * and in ternctl output, but it is implemented here: the wire format must not change
 * when someone tunes the logs.
 */
#include "control/ctlproto.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mem.h"
#include "lib/strutil.h"

#include <unistd.h>

static bool is_word_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

static bool is_print(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e;
}

/* ---- the socket ---- */

int ctl_sockaddr(const char *path, struct sockaddr_un *sa, socklen_t *len, int *dirfd)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    *dirfd = -1;
    size_t n = strlen(path);
    if (n == 0) {
        errno = ENOENT;
        return -1;
    }
    if (n < sizeof sa->sun_path) {
        memcpy(sa->sun_path, path, n + 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 0;
    }
    const char *slash = strrchr(path, '/');
    if (slash == NULL || slash[1] == '\0') {
        errno = ENAMETOOLONG;
        return -1;
    }
    char *dir = slash == path ? xstrdup("/") : xstrndup(path, (size_t)(slash - path));
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int e = errno;
    free(dir);
    if (fd < 0) {
        errno = e;
        return -1;
    }
    int m = snprintf(sa->sun_path, sizeof sa->sun_path, "/proc/self/fd/%d/%s", fd, slash + 1);
    if (m < 0 || (size_t)m >= sizeof sa->sun_path) {
        close(fd);
        errno = ENAMETOOLONG;
        return -1;
    }
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)m + 1);
    *dirfd = fd;
    return 0;
}

/* ---- requests ---- */

size_t ctl_request_format(char *dst, size_t cap, const char *cmd, const char *arg)
{
    char cbuf[CTL_CMD_MAX + 1], abuf[CTL_ARG_MAX + 1];
    int n = arg && *arg ? snprintf(dst, cap, "%s %s\n", cmd, arg) : snprintf(dst, cap, "%s\n", cmd);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    /* refuse what the daemon would refuse, so the error is local and clear */
    if (ctl_request_parse(dst, (size_t)n - 1, cbuf, abuf) != NULL)
        return 0;
    return (size_t)n;
}

const char *ctl_request_parse(const char *line, size_t n, char cmd[CTL_CMD_MAX + 1],
                              char arg[CTL_ARG_MAX + 1])
{
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (n + 1 > CTL_REQUEST_MAX)
        return "request too long";
    for (size_t i = 0; i < n; i++)
        if (!is_print((unsigned char)line[i]))
            return "request is not printable ASCII";
    size_t i = 0, c = 0;
    while (i < n && ((line[i] >= 'a' && line[i] <= 'z') || (line[i] >= 'A' && line[i] <= 'Z'))) {
        if (c == CTL_CMD_MAX)
            return "command too long";
        char ch = line[i++];
        cmd[c++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    cmd[c] = '\0';
    arg[0] = '\0';
    if (c == 0)
        return n == 0 ? "empty request" : "malformed command";
    if (i == n)
        return NULL;
    if (line[i] != ' ')
        return "malformed command";
    i++;
    size_t a = 0;
    for (; i < n; i++) {
        if (line[i] == ' ')
            return "too many arguments";
        if (a == CTL_ARG_MAX)
            return "argument too long";
        arg[a++] = line[i];
    }
    arg[a] = '\0';
    return a == 0 ? "empty argument" : NULL;
}

/* ---- writing ---- */

size_t ctl_escape(char *dst, size_t cap, const char *val, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
#define EMIT(ch)                                                                                \
    do {                                                                                        \
        if (o + 1 < cap)                                                                        \
            dst[o] = (ch);                                                                      \
        o++;                                                                                    \
    } while (0)
    EMIT('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)val[i];
        if (c == '"' || c == '\\') {
            EMIT('\\');
            EMIT((char)c);
        } else if (!is_print(c)) {
            EMIT('\\');
            EMIT('x');
            EMIT(hex[c >> 4]);
            EMIT(hex[c & 15]);
        } else {
            EMIT((char)c);
        }
    }
    EMIT('"');
#undef EMIT
    if (cap > 0)
        dst[o < cap ? o : cap - 1] = '\0';
    return o;
}

void ctl_rec_begin(struct buf *b, const char *type)
{
    buf_reset(b);
    buf_adds(b, type);
}

/* Add " key=" + raw (already in wire form) only if it fits with room for the LF. */
static void add_field(struct buf *b, const char *key, const char *raw, size_t rawlen)
{
    size_t klen = strlen(key);
    if (buf_room(b) < 1 + klen + 1 + rawlen + 1)
        return;
    buf_addc(b, ' ');
    buf_add(b, key, klen);
    buf_addc(b, '=');
    buf_add(b, raw, rawlen);
}

void ctl_rec_strn(struct buf *b, const char *key, const char *val, size_t n)
{
    if (val == NULL)
        return;
    /* worst case: every byte becomes \xHH, plus quotes */
    static _Thread_local char esc[4 * CTL_VALUE_MAX + 3];
    size_t len;
    if (n > CTL_VALUE_MAX) {
        char cut[CTL_VALUE_MAX];
        memcpy(cut, val, CTL_VALUE_MAX - 3);
        memcpy(cut + CTL_VALUE_MAX - 3, "...", 3);
        len = ctl_escape(esc, sizeof esc, cut, CTL_VALUE_MAX);
    } else {
        len = ctl_escape(esc, sizeof esc, val, n);
    }
    if (len >= sizeof esc)
        fatal("ctl_escape overflow (%zu)", len);
    add_field(b, key, esc, len);
}

void ctl_rec_str(struct buf *b, const char *key, const char *val)
{
    if (val != NULL)
        ctl_rec_strn(b, key, val, strlen(val));
}

void ctl_rec_uint(struct buf *b, const char *key, unsigned long long v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%llu", v);
    add_field(b, key, num, (size_t)n);
}

void ctl_rec_bool(struct buf *b, const char *key, bool v)
{
    add_field(b, key, v ? "yes" : "no", v ? 3 : 2);
}

void ctl_rec_end(struct buf *b)
{
    if (!buf_addc(b, '\n'))
        fatal("control record without room for its newline");
}

/* ---- reading ---- */


enum ctl_line ctl_parse_line(char *line, size_t n, struct ctl_record *r, const char **text)
{
    r->n = 0;
    r->type[0] = '\0';
    *text = "";
    for (size_t i = 0; i < n; i++)
        if (!is_print((unsigned char)line[i]))
            return CTL_LINE_MALFORMED;
    if ((n == 2 && memcmp(line, "ok", 2) == 0) || (n > 2 && memcmp(line, "ok ", 3) == 0)) {
        *text = n > 2 ? line + 3 : "";
        return CTL_LINE_OK;
    }
    if (n >= 6 && memcmp(line, "error:", 6) == 0) {
        const char *t = line + 6;
        while (*t == ' ')
            t++;
        *text = t;
        return CTL_LINE_ERROR;
    }

    size_t i = 0;
    while (i < n && is_word_char(line[i])) {
        if (i == CTL_TYPE_MAX)
            return CTL_LINE_MALFORMED;
        r->type[i] = line[i];
        i++;
    }
    r->type[i] = '\0';
    if (i == 0)
        return CTL_LINE_MALFORMED;
    /* each field: the separator before it, then key=value; a separator becomes the NUL
     * that ends the value before it */
    while (i < n) {
        if (line[i] != ' ')
            return CTL_LINE_MALFORMED;
        line[i++] = '\0';
        size_t k = i;
        while (i < n && is_word_char(line[i]))
            i++;
        if (i == k || i == n || line[i] != '=')
            return CTL_LINE_MALFORMED;
        line[i++] = '\0'; /* ends the key */
        struct ctl_field f = {.key = line + k};
        if (i < n && line[i] == '"') {
            /* decode in place: the text only shrinks, so the write position never passes
             * the read position, and the closing quote's byte is free for the NUL */
            char *out = line + i;
            size_t o = 0;
            i++;
            for (;;) {
                if (i >= n)
                    return CTL_LINE_MALFORMED;
                char c = line[i];
                if (c == '"') {
                    i++;
                    break;
                }
                if (c != '\\') {
                    out[o++] = c;
                    i++;
                    continue;
                }
                char e = i + 1 < n ? line[i + 1] : '\0';
                if (e == '"' || e == '\\') {
                    out[o++] = e;
                    i += 2;
                } else if (e == 'x' && i + 3 < n && hex_value(line[i + 2]) >= 0 &&
                           hex_value(line[i + 3]) >= 0) {
                    out[o++] = (char)(hex_value(line[i + 2]) * 16 + hex_value(line[i + 3]));
                    i += 4;
                } else {
                    return CTL_LINE_MALFORMED;
                }
            }
            out[o] = '\0';
            f.val = out;
            f.len = o;
            f.text = true;
        } else {
            size_t v = i;
            while (i < n && line[i] != ' ') {
                if (line[i] == '"' || line[i] == '\\' || line[i] == '=')
                    return CTL_LINE_MALFORMED;
                i++;
            }
            if (i == v)
                return CTL_LINE_MALFORMED;
            f.val = line + v; /* ended by the next separator, or by line[n] */
            f.len = i - v;
        }
        r->f = xgrow(r->f, &r->cap, r->n + 1, sizeof *r->f);
        r->f[r->n++] = f;
        if (i + 1 == n && line[i] == ' ')
            return CTL_LINE_MALFORMED; /* trailing space */
    }
    return CTL_LINE_RECORD;
}

const struct ctl_field *ctl_record_get(const struct ctl_record *r, const char *key)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->f[i].key, key) == 0)
            return &r->f[i];
    return NULL;
}

void ctl_record_free(struct ctl_record *r)
{
    free(r->f);
    r->f = NULL;
    r->n = r->cap = 0;
}
