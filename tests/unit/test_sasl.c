/* test_sasl: unit tests for src/mail/sasl.c (base64, SASL PLAIN). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/mem.h"
#include "mail/sasl.h"

/* RFC 4648 §10 test vectors */
static const struct {
    const char *plain, *b64;
} vectors[] = {
    {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},       {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
};

static void test_base64_vectors(void **state)
{
    (void)state;
    char enc[32];
    unsigned char dec[32];
    for (size_t i = 0; i < ARRAY_LEN(vectors); i++) {
        size_t pl = strlen(vectors[i].plain), bl = strlen(vectors[i].b64);
        assert_int_equal(base64_encode((const unsigned char *)vectors[i].plain, pl, enc,
                                       sizeof enc),
                         bl);
        assert_string_equal(enc, vectors[i].b64);
        memset(dec, 'x', sizeof dec);
        assert_int_equal(base64_decode(vectors[i].b64, bl, dec, sizeof dec), pl);
        assert_memory_equal(dec, vectors[i].plain, pl);
        assert_int_equal(dec[pl], '\0');
        /* cap: exactly the output and its NUL */
        assert_int_equal(base64_encode((const unsigned char *)vectors[i].plain, pl, enc, bl + 1),
                         bl);
        assert_int_equal(base64_encode((const unsigned char *)vectors[i].plain, pl, enc, bl),
                         (size_t)-1);
        assert_int_equal(base64_decode(vectors[i].b64, bl, dec, pl + 1), pl);
        assert_int_equal(base64_decode(vectors[i].b64, bl, dec, pl), (size_t)-1);
    }
}

static void test_base64_strict(void **state)
{
    (void)state;
    const char *bad[] = {
        "Zg",        /* no padding */
        "Zg=",       /* short padding */
        "Z===",      /* three pad characters */
        "====",      /* nothing but padding */
        "Zh==",      /* non-zero bits under the padding */
        "Zm9=",      /* the same with one pad character */
        "Zg==Zg==",  /* padding in the middle */
        "Zm9v\r\n",  /* line break */
        "Zm 9v",     /* white space */
        " Zm9v",     /* leading space */
        "Zm9v=",     /* stray pad */
        "=Zm9",      /* leading pad */
        "Zm-v",      /* base64url alphabet */
        "Zm_v",      /* base64url alphabet */
        "Zm9\xc3",   /* 8-bit */
        "Zm=v",      /* pad before data */
    };
    unsigned char dec[64];
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        memset(dec, 'x', sizeof dec);
        size_t r = base64_decode(bad[i], strlen(bad[i]), dec, sizeof dec);
        if (r != (size_t)-1)
            fail_msg("\"%s\" accepted", bad[i]);
    }
    /* a NUL inside the given length is bad input, not the end */
    assert_int_equal(base64_decode("Zm9v\0\0\0\0", 8, dec, sizeof dec), (size_t)-1);
    /* a failed decode does not leave decoded bytes behind */
    memset(dec, 'x', sizeof dec);
    assert_int_equal(base64_decode("c2VjcmV0!!!!", 12, dec, sizeof dec), (size_t)-1);
    assert_null(memmem(dec, sizeof dec, "secret", 6));
    assert_int_equal(base64_decode("", 0, dec, 0), (size_t)-1);
    char enc[4];
    assert_int_equal(base64_encode((const unsigned char *)"", 0, enc, 0), (size_t)-1);
    assert_int_equal(base64_encode((const unsigned char *)"", 0, enc, 1), 0);
}

static void test_base64_all_bytes(void **state)
{
    (void)state;
    unsigned char in[300], dec[301];
    char enc[401];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (unsigned char)(i * 7 + 3);
    for (size_t n = 0; n <= sizeof in; n++) {
        size_t el = base64_encode(in, n, enc, sizeof enc);
        assert_int_equal(el, (n + 2) / 3 * 4);
        assert_int_equal(base64_decode(enc, el, dec, sizeof dec), n);
        assert_memory_equal(dec, in, n);
    }
}

static char *b64_of(const void *p, size_t n)
{
    size_t cap = (n + 2) / 3 * 4 + 1;
    char *out = xmalloc(cap);
    assert_int_equal(base64_encode(p, n, out, cap), cap - 1);
    return out;
}

/* Build "authzid NUL authcid NUL passwd" with the given field lengths and decode it. */
static const char *plain_with(size_t zl, size_t cl, size_t pl, struct sasl_plain *out)
{
    size_t n = zl + cl + pl + 2;
    unsigned char *m = xmalloc(n);
    memset(m, 'z', zl);
    m[zl] = '\0';
    memset(m + zl + 1, 'c', cl);
    m[zl + 1 + cl] = '\0';
    memset(m + zl + 2 + cl, 'p', pl);
    char *b = b64_of(m, n);
    const char *why = sasl_plain_decode(b, strlen(b), out);
    free(m);
    free(b);
    return why;
}

static void assert_wiped(const struct sasl_plain *p)
{
    static const struct sasl_plain zero;
    assert_memory_equal(p, &zero, sizeof zero);
}

static void test_plain(void **state)
{
    (void)state;
    struct sasl_plain p;
    /* RFC 4616 §4 examples */
    assert_null(sasl_plain_decode("AHRpbQB0YW5zdGFhZnRhbnN0YWFm", 28, &p));
    assert_string_equal(p.authzid, "");
    assert_string_equal(p.authcid, "tim");
    assert_string_equal(p.passwd, "tanstaaftanstaaf");
    char *b = b64_of("Ursel\0Kurt\0xipj3plmq", 20);
    assert_null(sasl_plain_decode(b, strlen(b), &p));
    assert_string_equal(p.authzid, "Ursel");
    assert_string_equal(p.authcid, "Kurt");
    assert_string_equal(p.passwd, "xipj3plmq");
    free(b);

    /* field limits: 255 octets each is the most a message can hold */
    assert_null(plain_with(255, 255, 255, &p));
    assert_int_equal(strlen(p.authzid), 255);
    assert_int_equal(strlen(p.authcid), 255);
    assert_int_equal(strlen(p.passwd), 255);
    assert_null(plain_with(0, 1, 1, &p));
    const size_t over[][3] = {{256, 1, 1}, {1, 256, 1}, {1, 1, 256}, {256, 255, 255}};
    for (size_t i = 0; i < ARRAY_LEN(over); i++) {
        memset(&p, 'x', sizeof p);
        assert_string_equal(plain_with(over[i][0], over[i][1], over[i][2], &p),
                            "PLAIN field longer than 255 octets");
        assert_wiped(&p);
    }
    assert_string_equal(plain_with(3, 0, 3, &p), "Empty authentication identity");
    assert_wiped(&p);
    assert_string_equal(plain_with(3, 3, 0, &p), "Empty password");
    assert_wiped(&p);
}

static void test_plain_malformed(void **state)
{
    (void)state;
    struct sasl_plain p;
    const struct {
        const char *msg;
        size_t len;
    } bad[] = {
        {"user", 4},              /* no NUL */
        {"\0user", 5},            /* one NUL */
        {"\0us\0er\0pw", 10},     /* a NUL inside the password */
        {"\0\0\0", 3},            /* only separators */
        {"a\0b\0c\0", 6},         /* trailing NUL */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char *b = b64_of(bad[i].msg, bad[i].len);
        memset(&p, 'x', sizeof p);
        assert_string_equal(sasl_plain_decode(b, strlen(b), &p), "Malformed PLAIN response");
        assert_wiped(&p);
        free(b);
    }
    assert_string_equal(sasl_plain_decode("AHRpbQB0YW5z!GFhZg==", 20, &p),
                        "Invalid base64 data");
    assert_string_equal(sasl_plain_decode("=", 1, &p), "Invalid base64 data");
    assert_string_equal(sasl_plain_decode("", 0, &p), "Malformed PLAIN response");
    /* longer than any valid message could encode to: refused before decoding */
    char *big = xmalloc(1029);
    memset(big, 'A', 1028);
    big[1028] = '\0';
    assert_string_equal(sasl_plain_decode(big, 1028, &p), "PLAIN response too long");
    assert_string_equal(sasl_plain_decode(big, 1024, &p), "Malformed PLAIN response");
    free(big);
}

static void test_plain_encode(void **state)
{
    (void)state;
    char out[1100];
    size_t n = sasl_plain_encode("tim", "tanstaaftanstaaf", out, sizeof out);
    assert_int_equal(n, 28);
    assert_string_equal(out, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    /* round trip through the server side at the limits */
    char c255[256], p255[256];
    memset(c255, 'c', 255);
    c255[255] = '\0';
    memset(p255, 'p', 255);
    p255[255] = '\0';
    n = sasl_plain_encode(c255, p255, out, sizeof out);
    assert_true(n != (size_t)-1);
    struct sasl_plain p;
    assert_null(sasl_plain_decode(out, n, &p));
    assert_string_equal(p.authcid, c255);
    assert_string_equal(p.passwd, p255);
    char c256[257];
    memset(c256, 'c', 256);
    c256[256] = '\0';
    assert_int_equal(sasl_plain_encode(c256, "pw", out, sizeof out), (size_t)-1);
    assert_int_equal(sasl_plain_encode("u", c256, out, sizeof out), (size_t)-1);
    assert_int_equal(sasl_plain_encode("", "pw", out, sizeof out), (size_t)-1);
    assert_int_equal(sasl_plain_encode("u", "", out, sizeof out), (size_t)-1);
    /* cap: "\0u\0pw" is 5 octets -> 8 characters + NUL */
    assert_int_equal(sasl_plain_encode("u", "pw", out, 9), 8);
    assert_int_equal(sasl_plain_encode("u", "pw", out, 8), (size_t)-1);
    /* UTF-8 credentials pass through as octets */
    n = sasl_plain_encode("jürgen", "pässwörd", out, sizeof out);
    assert_null(sasl_plain_decode(out, n, &p));
    assert_string_equal(p.authcid, "jürgen");
    assert_string_equal(p.passwd, "pässwörd");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_vectors),   cmocka_unit_test(test_base64_strict),
        cmocka_unit_test(test_base64_all_bytes), cmocka_unit_test(test_plain),
        cmocka_unit_test(test_plain_malformed),  cmocka_unit_test(test_plain_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
