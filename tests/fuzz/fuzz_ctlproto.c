/*
 * fuzz_ctlproto: libFuzzer target for src/control/ctlproto.c (what ternctl reads from the
 * daemon, and what the daemon reads from a client).
 *
 * Properties checked for every input:
 *   - ctl_request_parse never overflows and, when it accepts, gives a lowercase command
 *     and an argument without spaces, both within their limits;
 *   - ctl_parse_line on arbitrary bytes never crashes; for a record, every field is
 *     NUL-terminated at len;
 *   - writing the input as a text value and reading the line back gives the same bytes,
 *     and the line is printable ASCII only (so client text cannot forge lines).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control/ctlproto.h"
#include "lib/buf.h"
#include "lib/mem.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;

    char cmd[CTL_CMD_MAX + 1], arg[CTL_ARG_MAX + 1];
    if (ctl_request_parse(s, size, cmd, arg) == NULL) {
        CHECK(strlen(cmd) > 0 && strlen(cmd) <= CTL_CMD_MAX);
        for (const char *p = cmd; *p; p++)
            CHECK(*p >= 'a' && *p <= 'z');
        CHECK(strlen(arg) <= CTL_ARG_MAX && strchr(arg, ' ') == NULL);
    }

    char *line = xmalloc(size + 1);
    memcpy(line, data, size);
    line[size] = '\0';
    struct ctl_record r = {0};
    const char *text;
    if (ctl_parse_line(line, size, &r, &text) == CTL_LINE_RECORD)
        for (size_t i = 0; i < r.n; i++)
            CHECK(r.f[i].val[r.f[i].len] == '\0');
    free(line);

    struct buf b = BUF_INIT(CTL_LINE_MAX);
    ctl_rec_begin(&b, "t");
    ctl_rec_strn(&b, "v", s, size);
    ctl_rec_uint(&b, "n", size);
    ctl_rec_end(&b);
    for (size_t i = 0; i + 1 < b.len; i++)
        CHECK(b.data[i] >= 0x20 && b.data[i] <= 0x7e);
    b.data[b.len - 1] = '\0';
    CHECK(ctl_parse_line(b.data, b.len - 1, &r, &text) == CTL_LINE_RECORD);
    const struct ctl_field *f = ctl_record_get(&r, "v");
    CHECK(f != NULL && f->text);
    if (size <= CTL_VALUE_MAX)
        CHECK(f->len == size && memcmp(f->val, data, size) == 0);
    else
        CHECK(f->len == CTL_VALUE_MAX && memcmp(f->val, data, CTL_VALUE_MAX - 3) == 0);
    ctl_record_free(&r);
    buf_release(&b);
    return 0;
}
