/*
 * Unit tests of the lib layer: bounded buffers, log escaping, CIDR matching and host:port
 * parsing, value syntaxes, CRC-32C, file helpers, the worker pool and the per-IP table.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/buf.h"
#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/netaddr.h"
#include "lib/strutil.h"
#include "lib/utf8.h"
#include "lib/workers.h"
#include "smtpd/iptable.h"

static void test_buf_is_bounded(void **state)
{
    struct buf b = BUF_INIT(10);
    assert_true(buf_add(&b, "12345", 5));
    assert_true(buf_adds(&b, "67890"));
    assert_false(buf_addc(&b, 'x')); /* full: nothing added */
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "1234567890");
    buf_consume(&b, 4);
    assert_string_equal(b.data, "567890");
    assert_true(buf_printf(&b, "%d", 12));
    assert_false(buf_printf(&b, "%s", "too long for it"));
    assert_string_equal(b.data, "56789012");
    size_t n;
    char *s = buf_steal(&b, &n);
    assert_int_equal(n, 8);
    assert_null(b.data);
    free(s);
    buf_release(&b);
}

static int wakes;
static void count_wake(void)
{
    wakes++;
}

static off_t file_size(int fd)
{
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    return st.st_size;
}

/* Held lines: nothing reaches stderr until a flush, a warn/error line (which comes after
 * what was held), 64 KiB held, or the end of holding. */
static void test_log_hold_lines(void **state)
{
    char path[] = "/tmp/tern-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    log_setup("test", LOG_TO_STDERR, LOG_LVL_INFO, 0);

    wakes = 0;
    log_hold_lines(count_wake);
    log_printf(LOG_LVL_INFO, "event=one");
    log_printf(LOG_LVL_INFO, "event=two");
    log_printf(LOG_LVL_DEBUG, "event=filtered"); /* below the level: nothing at all */
    off_t before_warn = file_size(fd);
    int wakes_after_two = wakes;
    log_printf(LOG_LVL_WARN, "event=three");
    off_t after_warn = file_size(fd);
    log_printf(LOG_LVL_INFO, "event=four");
    off_t before_flush = file_size(fd);
    log_flush();
    off_t after_flush = file_size(fd);
    char big[400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (int i = 0; i < 300; i++) /* about 130 KiB: more than is held */
        log_printf(LOG_LVL_INFO, "event=big n=%d v=%s", i, big);
    off_t during_big = file_size(fd);
    log_hold_lines(NULL);
    log_printf(LOG_LVL_INFO, "event=direct");

    fflush(stderr);
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    assert_int_equal(before_warn, 0);
    assert_int_equal(wakes_after_two, 1); /* once per held run of lines */
    assert_true(after_warn > 0);
    assert_int_equal(before_flush, after_warn);
    assert_true(after_flush > before_flush);
    assert_true(during_big > after_flush); /* the buffer filled up and was written */
    off_t total = file_size(fd);
    char *text = xmalloc((size_t)total + 1);
    assert_int_equal(pread(fd, text, (size_t)total, 0), total);
    text[total] = '\0';
    close(fd);
    const char *order[] = {"event=one", "event=two", "event=three", "event=four",
                           "event=big n=0 ", "event=big n=299 ", "event=direct"};
    const char *at = text;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        const char *hit = strstr(at, order[i]);
        if (hit == NULL)
            fail_msg("%s missing or out of order", order[i]);
        at = hit;
    }
    assert_null(strstr(text, "event=filtered"));
    size_t lines = 0;
    for (const char *p = text; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 4 + 300 + 1);
    free(text);
}

static void test_log_escape(void **state)
{
    char out[128];
    log_escape(out, sizeof out, "plain", 5);
    assert_string_equal(out, "plain");
    log_escape(out, sizeof out, "two words", 9);
    assert_string_equal(out, "\"two words\"");
    log_escape(out, sizeof out, "inject\nevent=fake \"q\"", 21);
    assert_string_equal(out, "\"inject\\x0aevent=fake \\\"q\\\"\"");
    log_escape(out, sizeof out, "", 0);
    assert_string_equal(out, "\"\"");
    log_escape(out, sizeof out, "\xc3\xa9", 2);
    assert_string_equal(out, "\"\\xc3\\xa9\"");
    /* a small buffer truncates but stays terminated */
    char tiny[5];
    log_escape(tiny, sizeof tiny, "abcdefgh", 8);
    assert_int_equal(strlen(tiny), 4);
}

static void sa4(struct sockaddr_in *s, const char *ip)
{
    memset(s, 0, sizeof *s);
    s->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &s->sin_addr);
}

static void sa6(struct sockaddr_in6 *s, const char *ip)
{
    memset(s, 0, sizeof *s);
    s->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &s->sin6_addr);
}

static void test_cidr(void **state)
{
    struct cidr_list l;
    char err[128];
    assert_true(cidr_list_parse("127.0.0.0/8, ::1 10.1.2.3,2001:db8::/32", &l, err, sizeof err));
    assert_int_equal(l.n, 4);
    struct sockaddr_in a;
    struct sockaddr_in6 b;
    sa4(&a, "127.9.9.9");
    assert_true(cidr_list_match(&l, (struct sockaddr *)&a));
    sa4(&a, "10.1.2.3");
    assert_true(cidr_list_match(&l, (struct sockaddr *)&a));
    sa4(&a, "10.1.2.4");
    assert_false(cidr_list_match(&l, (struct sockaddr *)&a));
    sa6(&b, "::1");
    assert_true(cidr_list_match(&l, (struct sockaddr *)&b));
    sa6(&b, "2001:db8:1::5");
    assert_true(cidr_list_match(&l, (struct sockaddr *)&b));
    sa6(&b, "2001:db9::5");
    assert_false(cidr_list_match(&l, (struct sockaddr *)&b));
    sa6(&b, "::ffff:127.0.0.1"); /* v4-mapped counts as v4 */
    assert_true(cidr_list_match(&l, (struct sockaddr *)&b));
    char ip[NETADDR_IP_MAX];
    sockaddr_format((struct sockaddr *)&b, ip, sizeof ip, NULL);
    assert_string_equal(ip, "127.0.0.1");
    assert_true(sockaddr_is_loopback((struct sockaddr *)&b));
    cidr_list_free(&l);
    struct cidr c;
    assert_true(cidr_parse("192.0.2.0/25", &c));
    sa4(&a, "192.0.2.127");
    struct cidr_list one = {&c, 1};
    assert_true(cidr_list_match(&one, (struct sockaddr *)&a));
    sa4(&a, "192.0.2.128");
    assert_false(cidr_list_match(&one, (struct sockaddr *)&a));
    assert_false(cidr_parse("10.0.0.0/33", &c));
    assert_false(cidr_parse("10.0.0/8", &c));
    assert_false(cidr_parse("::1/129", &c));
    assert_false(cidr_list_parse("10.0.0.0/8, bogus", &l, err, sizeof err));
    assert_non_null(strstr(err, "bogus"));
}

static void test_hostport(void **state)
{
    char host[64];
    unsigned port;
    assert_true(hostport_split("127.0.0.1:2525", 25, host, sizeof host, &port));
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 2525);
    assert_true(hostport_split("[::1]:25", 1, host, sizeof host, &port));
    assert_string_equal(host, "::1");
    assert_int_equal(port, 25);
    assert_true(hostport_split("mx.example.org", 25, host, sizeof host, &port));
    assert_int_equal(port, 25);
    assert_false(hostport_split("::1:25", 25, host, sizeof host, &port));
    assert_false(hostport_split("host:0", 25, host, sizeof host, &port));
    assert_false(hostport_split("host:65536", 25, host, sizeof host, &port));
    assert_false(hostport_split("host:x", 25, host, sizeof host, &port));
    assert_false(hostport_split(":25", 25, host, sizeof host, &port));
}

static void test_value_syntax(void **state)
{
    uint64_t v;
    assert_true(parse_size("25M", &v));
    assert_int_equal(v, 25 * 1024 * 1024);
    assert_true(parse_size("512k", &v));
    assert_int_equal(v, 512 * 1024);
    assert_false(parse_size("-1", &v));
    assert_false(parse_size("99999999999999999999999", &v));
    assert_true(parse_duration_ms("5m", &v));
    assert_int_equal(v, 300000);
    assert_true(parse_duration_ms("300", &v));
    assert_int_equal(v, 300000);
    assert_true(parse_duration_ms("250ms", &v));
    assert_int_equal(v, 250);
    assert_true(parse_duration_ms("5d", &v));
    assert_int_equal(v, 5ull * 86400000);
    assert_false(parse_duration_ms("5 minutes", &v));
    bool b;
    assert_true(parse_bool("Yes", &b) && b);
    assert_true(parse_bool("off", &b) && !b);
    assert_false(parse_bool("maybe", &b));
}

static void test_utf8(void **state)
{
    uint32_t cp;
    assert_int_equal(utf8_next((const unsigned char *)"A", 1, &cp), 1);
    assert_int_equal(cp, 'A');
    assert_int_equal(utf8_next((const unsigned char *)"\xc3\xa9", 2, &cp), 2);
    assert_int_equal(cp, 0xe9);
    assert_int_equal(utf8_next((const unsigned char *)"\xe2\x82\xac", 3, &cp), 3);
    assert_int_equal(cp, 0x20ac);
    assert_int_equal(utf8_next((const unsigned char *)"\xf0\x9f\x98\x80", 4, &cp), 4);
    assert_int_equal(cp, 0x1f600);
    /* malformed: overlongs, surrogates, above U+10FFFF, truncated, stray continuation */
    static const char *const bad[] = {"\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xed\xa0\x80",
                                      "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\x80",
                                      "\xe2\x82"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        assert_int_equal(utf8_next((const unsigned char *)bad[i], strlen(bad[i]), NULL), 0);
    assert_int_equal(utf8_next((const unsigned char *)"\xe2\x82\xac", 2, NULL), 0);
    /* every encoding decodes back */
    char out[4];
    for (uint32_t c = 0; c <= 0x10ffff; c += (c < 0x1000 ? 1 : 97)) {
        if (c >= 0xd800 && c <= 0xdfff)
            continue;
        size_t n = utf8_put(c, out);
        assert_int_equal(utf8_next((const unsigned char *)out, n, &cp), n);
        assert_int_equal(cp, c);
    }
}

static void test_hex_and_hostnames(void **state)
{
    assert_int_equal(hex_value('0'), 0);
    assert_int_equal(hex_value('a'), 10);
    assert_int_equal(hex_value('F'), 15);
    assert_int_equal(hex_value('g'), -1);
    assert_true(str_is_hostname("mx.example.test"));
    assert_true(str_is_hostname("a-b.c1"));
    assert_false(str_is_hostname(""));
    assert_false(str_is_hostname("-a.test"));
    assert_false(str_is_hostname("a-.test"));
    assert_false(str_is_hostname("a..test"));
    assert_false(str_is_hostname("a.test."));
    assert_false(str_is_hostname("under_score.test"));
    char label[80];
    memset(label, 'x', 64);
    label[64] = '\0';
    assert_false(str_is_hostname(label));
    label[63] = '\0';
    assert_true(str_is_hostname(label));
}

static void test_crc32c(void **state)
{
    /* the standard check value of CRC-32C */
    assert_int_equal(crc32c(0, "123456789", 9), 0xe3069283);
    /* incremental equals whole, at every split point */
    const char *text = "The quick brown fox jumps over the lazy dog, twice over.";
    size_t n = strlen(text);
    uint32_t whole = crc32c(0, text, n);
    for (size_t i = 0; i <= n; i++)
        assert_int_equal(crc32c(crc32c(0, text, i), text + i, n - i), whole);
}

static void test_files(void **state)
{
    char dir[] = "/tmp/tern-lib-XXXXXX";
    assert_non_null(mkdtemp(dir));
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_true(dfd >= 0);
    assert_int_equal(fs_mkdirs_at(dfd, "a/b/c", 0700), 0);
    assert_int_equal(fs_mkdirs_at(dfd, "a/b/c", 0700), 0); /* existing is fine */
    assert_int_equal(fs_write_file_atomic_at(dfd, "a/b/c/f", "hello", 5, 0600), 0);
    char *data;
    size_t len;
    assert_int_equal(fs_read_file_at(dfd, "a/b/c/f", 100, &data, &len), 0);
    assert_int_equal(len, 5);
    assert_string_equal(data, "hello");
    free(data);
    errno = 0;
    assert_int_equal(fs_read_file_at(dfd, "a/b/c/f", 4, &data, &len), -1);
    assert_int_equal(errno, EFBIG);
    assert_int_equal(fs_mkdirs_at(dfd, "a/b/c/f/g", 0700), -1); /* f is a file */
    unsigned long long freeb;
    assert_int_equal(fs_free_bytes(dfd, &freeb), 0);
    assert_true(freeb > 0);
    close(dfd);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static int work_done;
static int work_ran;

static void job_work(void *arg)
{
    __atomic_add_fetch(&work_ran, 1, __ATOMIC_SEQ_CST);
}

static void job_done(void *arg)
{
    int *expected_order = arg;
    assert_int_equal(*expected_order, work_done); /* completions arrive in order */
    work_done++;
    if (work_done == 100)
        loop_exit();
    free(expected_order);
}

static void test_workers(void **state)
{
    loop_init();
    struct workers *w = workers_new("t", 1);
    for (int i = 0; i < 100; i++) {
        int *n = malloc(sizeof *n);
        *n = i;
        workers_submit(w, job_work, job_done, n);
    }
    assert_int_equal(workers_pending(w), 100);
    loop_run();
    assert_int_equal(work_done, 100);
    assert_int_equal(work_ran, 100);
    assert_int_equal(workers_pending(w), 0);
    workers_free(w);
    loop_free();
}

static void test_iptable(void **state)
{
    struct iptable *t = iptable_new();
    char ip[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(ip, sizeof ip, "10.0.%d.%d", i / 256, i % 256);
        assert_int_equal(iptable_session_add(t, ip), 1);
    }
    assert_int_equal(iptable_session_add(t, "10.0.0.5"), 2);
    assert_int_equal(iptable_size(t), 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(ip, sizeof ip, "10.0.%d.%d", i / 256, i % 256);
        iptable_session_remove(t, ip);
    }
    assert_int_equal(iptable_size(t), 1); /* 10.0.0.5 still has one */
    assert_int_equal(iptable_session_add(t, "10.0.0.5"), 2);
    iptable_session_remove(t, "10.0.0.5");
    iptable_session_remove(t, "10.0.0.5");
    assert_int_equal(iptable_size(t), 0);
    assert_int_equal(iptable_auth_failed(t, "::1", 1000), 1);
    assert_int_equal(iptable_auth_failed(t, "::1", 1001), 2);
    assert_int_equal(iptable_auth_failures(t, "::1", 1002), 2);
    /* forgotten after the window */
    assert_int_equal(iptable_auth_failures(t, "::1", 1001 + IPTABLE_FAILURE_WINDOW + 1), 0);
    assert_int_equal(iptable_size(t), 0);
    iptable_free(t);

    /* addresses that failed once and never came back are swept before the table grows
     * (a fresh table: 64 slots, grown at 48 entries) */
    t = iptable_new();
    for (int i = 0; i < 40; i++) {
        snprintf(ip, sizeof ip, "192.0.2.%d", i);
        iptable_auth_failed(t, ip, 5000);
    }
    assert_int_equal(iptable_session_add(t, "192.0.2.200"), 1); /* connected: kept */
    assert_int_equal(iptable_size(t), 41);
    time_t later = 5000 + IPTABLE_FAILURE_WINDOW + 1;
    for (int i = 0; i < 40; i++) {
        snprintf(ip, sizeof ip, "198.51.100.%d", i);
        assert_int_equal(iptable_auth_failed(t, ip, later), 1);
    }
    /* the 40 old ones went at the first sweep; the 40 new and the connected one remain */
    assert_int_equal(iptable_size(t), 41);
    assert_int_equal(iptable_auth_failures(t, "198.51.100.0", later), 1);
    assert_int_equal(iptable_auth_failures(t, "198.51.100.39", later), 1);
    assert_int_equal(iptable_session_add(t, "192.0.2.200"), 2);
    iptable_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_is_bounded), cmocka_unit_test(test_log_escape),
        cmocka_unit_test(test_log_hold_lines),
        cmocka_unit_test(test_cidr),           cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_value_syntax),   cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_utf8),           cmocka_unit_test(test_hex_and_hostnames),
        cmocka_unit_test(test_files),          cmocka_unit_test(test_workers),
        cmocka_unit_test(test_iptable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
