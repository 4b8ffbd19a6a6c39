/*
 * test_ctlproto: the control protocol shared by ternd and ternctl (src/control/ctlproto.c):
 * request parsing and its bounds, escaping of hostile text, record building (omitted NULLs,
 * cut values, fields that do not fit), parsing records back byte for byte, status lines,
 * malformed lines, and socket addresses for paths longer than sun_path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "control/ctlproto.h"
#include "lib/buf.h"
#include "lib/mem.h"

static const char *req(const char *line, char *cmd, char *arg)
{
    return ctl_request_parse(line, strlen(line), cmd, arg);
}

static void test_request_parse(void **state)
{
    char cmd[CTL_CMD_MAX + 1], arg[CTL_ARG_MAX + 1];
    assert_null(req("queue", cmd, arg));
    assert_string_equal(cmd, "queue");
    assert_string_equal(arg, "");
    assert_null(req("show 0ABCDEFGHIJKLM\r", cmd, arg));
    assert_string_equal(cmd, "show");
    assert_string_equal(arg, "0ABCDEFGHIJKLM");
    assert_null(req("FLUSH all", cmd, arg));
    assert_string_equal(cmd, "flush");
    assert_string_equal(arg, "all");

    assert_string_equal(req("", cmd, arg), "empty request");
    assert_string_equal(req(" queue", cmd, arg), "malformed command");
    assert_string_equal(req("queue  x", cmd, arg), "too many arguments");
    assert_string_equal(req("show a b", cmd, arg), "too many arguments");
    assert_string_equal(req("show ", cmd, arg), "empty argument");
    assert_string_equal(req("show\tx", cmd, arg), "request is not printable ASCII");
    assert_string_equal(req("sh0w x", cmd, arg), "malformed command");
    assert_string_equal(req("show \x1b[2J", cmd, arg), "request is not printable ASCII");
    assert_string_equal(req("abcdefghijklmnopq", cmd, arg), "command too long");

    char longarg[CTL_ARG_MAX + 10];
    memset(longarg, 'A', sizeof longarg - 1);
    longarg[sizeof longarg - 1] = '\0';
    char line[300];
    snprintf(line, sizeof line, "show %s", longarg);
    assert_string_equal(req(line, cmd, arg), "argument too long");
    /* exactly CTL_ARG_MAX is fine */
    snprintf(line, sizeof line, "show %.*s", CTL_ARG_MAX, longarg);
    assert_null(req(line, cmd, arg));
    assert_int_equal(strlen(arg), CTL_ARG_MAX);

    char huge[CTL_REQUEST_MAX + 1];
    memset(huge, 'a', sizeof huge);
    assert_string_equal(ctl_request_parse(huge, sizeof huge, cmd, arg), "request too long");
}

static void test_request_format(void **state)
{
    char buf[CTL_REQUEST_MAX + 1];
    assert_int_equal(ctl_request_format(buf, sizeof buf, "queue", NULL), 6);
    assert_string_equal(buf, "queue\n");
    assert_int_equal(ctl_request_format(buf, sizeof buf, "show", "ABC"), 9);
    assert_string_equal(buf, "show ABC\n");
    assert_int_equal(ctl_request_format(buf, sizeof buf, "show", "a b"), 0);
    assert_int_equal(ctl_request_format(buf, sizeof buf, "show", "a\nqueue"), 0);
    assert_int_equal(ctl_request_format(buf, 4, "queue", NULL), 0);
}

static void test_escape(void **state)
{
    char out[128];
    assert_int_equal(ctl_escape(out, sizeof out, "abc", 3), 5);
    assert_string_equal(out, "\"abc\"");
    ctl_escape(out, sizeof out, "", 0);
    assert_string_equal(out, "\"\"");
    ctl_escape(out, sizeof out, "a\"b\\c", 5);
    assert_string_equal(out, "\"a\\\"b\\\\c\"");
    ctl_escape(out, sizeof out, "x\r\nerror: y\x1b\x7f\xc3\xa9\0z", 17);
    assert_string_equal(out, "\"x\\x0d\\x0aerror: y\\x1b\\x7f\\xc3\\xa9\\x00z\"");
    /* snprintf-like: the needed length, a truncated but terminated result */
    assert_int_equal(ctl_escape(out, 4, "abcdef", 6), 8);
    assert_string_equal(out, "\"ab");
}

static void test_record_build(void **state)
{
    struct buf b = BUF_INIT(CTL_LINE_MAX);
    ctl_rec_begin(&b, "msg");
    ctl_rec_str(&b, "id", "0ABC");
    ctl_rec_uint(&b, "size", 1234);
    ctl_rec_bool(&b, "held", true);
    ctl_rec_bool(&b, "x", false);
    ctl_rec_str(&b, "absent", NULL);
    ctl_rec_str(&b, "sender", "");
    ctl_rec_str(&b, "reply", "550 5.1.1 \"no\"\n");
    ctl_rec_end(&b);
    assert_string_equal(b.data, "msg id=\"0ABC\" size=1234 held=yes x=no sender=\"\" "
                                "reply=\"550 5.1.1 \\\"no\\\"\\x0a\"\n");

    /* a value past CTL_VALUE_MAX is cut and marked */
    char *big = xmalloc(CTL_VALUE_MAX * 2);
    memset(big, 'v', CTL_VALUE_MAX * 2);
    ctl_rec_begin(&b, "header");
    ctl_rec_strn(&b, "text", big, CTL_VALUE_MAX * 2);
    ctl_rec_end(&b);
    assert_int_equal(b.len, strlen("header text=\"\"\n") + CTL_VALUE_MAX);
    assert_memory_equal(b.data + b.len - 5, "...\"\n", 5);

    /* worst-case values: fields that no longer fit are left out whole, and the line
     * always ends with its newline within CTL_LINE_MAX */
    for (size_t i = 0; i < CTL_VALUE_MAX * 2; i++)
        big[i] = '\x01';
    ctl_rec_begin(&b, "rcpt");
    int added = 0;
    for (int i = 0; i < 10; i++) {
        size_t before = b.len;
        ctl_rec_strn(&b, "reply", big, CTL_VALUE_MAX);
        if (b.len > before)
            added++;
    }
    ctl_rec_uint(&b, "n", 7);
    ctl_rec_end(&b);
    assert_true(added >= 3 && added < 10);
    assert_true(b.len <= CTL_LINE_MAX);
    assert_int_equal(b.data[b.len - 1], '\n');
    for (size_t i = 0; i + 1 < b.len; i++)
        assert_true(b.data[i] >= 0x20 && b.data[i] <= 0x7e);
    free(big);
    buf_release(&b);
}

static void test_roundtrip(void **state)
{
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    struct buf b = BUF_INIT(CTL_LINE_MAX);
    ctl_rec_begin(&b, "rcpt");
    ctl_rec_str(&b, "addr", "a@example.test");
    ctl_rec_strn(&b, "reply", all, sizeof all);
    ctl_rec_uint(&b, "attempts", 3);
    ctl_rec_str(&b, "empty", "");
    ctl_rec_str(&b, "trick", "x\" y=\"z");
    ctl_rec_bool(&b, "smtputf8", false);
    ctl_rec_end(&b);
    /* the whole line is printable */
    for (size_t i = 0; i + 1 < b.len; i++)
        assert_true(b.data[i] >= 0x20 && b.data[i] <= 0x7e);

    char *line = xstrndup(b.data, b.len - 1);
    struct ctl_record r = {0};
    const char *text;
    assert_int_equal(ctl_parse_line(line, b.len - 1, &r, &text), CTL_LINE_RECORD);
    assert_string_equal(r.type, "rcpt");
    assert_int_equal(r.n, 6);
    assert_string_equal(ctl_record_get(&r, "smtputf8")->val, "no");
    const struct ctl_field *f = ctl_record_get(&r, "reply");
    assert_non_null(f);
    assert_true(f->text);
    assert_int_equal(f->len, 256);
    assert_memory_equal(f->val, all, 256);
    f = ctl_record_get(&r, "attempts");
    assert_false(f->text);
    assert_string_equal(f->val, "3");
    f = ctl_record_get(&r, "addr");
    assert_string_equal(f->val, "a@example.test");
    f = ctl_record_get(&r, "empty");
    assert_true(f->text);
    assert_int_equal(f->len, 0);
    assert_string_equal(ctl_record_get(&r, "trick")->val, "x\" y=\"z");
    assert_null(ctl_record_get(&r, "nothing"));
    ctl_record_free(&r);
    free(line);
    buf_release(&b);
}

static enum ctl_line parse(const char *s, struct ctl_record *r, const char **text)
{
    static char line[512];
    snprintf(line, sizeof line, "%s", s);
    return ctl_parse_line(line, strlen(line), r, text);
}

static void test_status_and_malformed(void **state)
{
    struct ctl_record r = {0};
    const char *text;
    assert_int_equal(parse("ok", &r, &text), CTL_LINE_OK);
    assert_string_equal(text, "");
    assert_int_equal(parse("ok 3 messages", &r, &text), CTL_LINE_OK);
    assert_string_equal(text, "3 messages");
    assert_int_equal(parse("error: unknown queue id X", &r, &text), CTL_LINE_ERROR);
    assert_string_equal(text, "unknown queue id X");
    assert_int_equal(parse("stats", &r, &text), CTL_LINE_RECORD);
    assert_int_equal(r.n, 0);
    assert_int_equal(parse("stats a=1 b=2", &r, &text), CTL_LINE_RECORD);
    assert_int_equal(r.n, 2);
    assert_string_equal(ctl_record_get(&r, "a")->val, "1");
    assert_string_equal(ctl_record_get(&r, "b")->val, "2");

    static const char *const bad[] = {
        "",                  /* nothing */
        "okay",              /* neither a status nor ... a record? "okay" is a record type */
        "msg id=\"abc",      /* unterminated quote */
        "msg id=\"a\\qb\"",  /* unknown escape */
        "msg id=\"a\\x4\"",  /* short hex escape */
        "msg id=",           /* empty bare value */
        "msg id=a\"b",       /* quote in a bare value */
        "msg id",            /* no = */
        "msg  id=1",         /* two spaces */
        "msg id=1 ",         /* trailing space */
        "msg id=\"a\"b=1",   /* no separator after a quoted value */
        "Msg id=1",          /* type is lowercase */
        "msg ID=1",          /* keys too */
        "msg id=\x01",       /* control character */
        "abcdefghijklmnopq", /* type too long */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        enum ctl_line k = parse(bad[i], &r, &text);
        if (i == 1) {
            assert_int_equal(k, CTL_LINE_RECORD);
            continue;
        }
        if (k != CTL_LINE_MALFORMED)
            fail_msg("accepted %s", bad[i]);
    }
    ctl_record_free(&r);
}

static void test_sockaddr(void **state)
{
    struct sockaddr_un sa;
    socklen_t len;
    int dirfd;
    assert_int_equal(ctl_sockaddr("/tmp/x.sock", &sa, &len, &dirfd), 0);
    assert_int_equal(dirfd, -1);
    assert_string_equal(sa.sun_path, "/tmp/x.sock");

    /* a folder whose path is longer than sun_path: bind and connect still work */
    char base[] = "/tmp/test_ctlproto.XXXXXX";
    assert_non_null(mkdtemp(base));
    char path[512];
    snprintf(path, sizeof path, "%s/%0120d", base, 0);
    assert_int_equal(mkdir(path, 0700), 0);
    char sock[600];
    snprintf(sock, sizeof sock, "%s/control.sock", path);
    assert_true(strlen(sock) >= sizeof sa.sun_path);
    assert_int_equal(ctl_sockaddr(sock, &sa, &len, &dirfd), 0);
    assert_true(dirfd >= 0);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, len), 0);
    assert_int_equal(listen(s, 1), 0);
    close(dirfd);
    struct stat st;
    assert_int_equal(stat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(ctl_sockaddr(sock, &sa, &len, &dirfd), 0);
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(connect(c, (struct sockaddr *)&sa, len), 0);
    close(dirfd);
    close(c);
    close(s);
    unlink(sock);
    rmdir(path);
    rmdir(base);

    /* a folder that does not exist */
    snprintf(sock, sizeof sock, "/nonexistent/%0120d/control.sock", 0);
    assert_int_equal(ctl_sockaddr(sock, &sa, &len, &dirfd), -1);
    assert_int_equal(errno, ENOENT);
    /* a name that is too long by itself */
    snprintf(sock, sizeof sock, "/tmp/%0200d", 0);
    assert_int_equal(ctl_sockaddr(sock, &sa, &len, &dirfd), -1);
    assert_int_equal(errno, ENAMETOOLONG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_parse),
        cmocka_unit_test(test_request_format),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_record_build),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_status_and_malformed),
        cmocka_unit_test(test_sockaddr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
