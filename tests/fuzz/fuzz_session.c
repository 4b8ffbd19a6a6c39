/*
 * libFuzzer target: the SMTP session state machine. The first input byte picks the
 * session's options and the host's behaviour (refusals, pending calls resumed later); the
 * rest is fed in pieces whose sizes come from the input too. Checked on every step: the
 * session never crashes or leaks, every reply line is "DDD" + SP/'-' + text + CRLF, and a
 * message is only ever committed with at least one recipient.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "smtpd/session.h"

static unsigned behaviour;
static bool pending_now;
static size_t content_bytes;

static enum host_rc answer(struct reply *r, int code, const char *enh, unsigned bit)
{
    if (behaviour & (bit << 4)) {
        pending_now = true;
        return HOST_PENDING;
    }
    if (behaviour & bit)
        reply_set(r, 550, "5.7.1", "refused");
    else
        reply_set(r, code, enh, "Ok");
    return HOST_DONE;
}

static enum host_rc f_mail(void *c, const struct mailaddr *a, const struct mail_params *p,
                           struct reply *r)
{
    return answer(r, 250, "2.1.0", 1);
}
static enum host_rc f_rcpt(void *c, const struct mailaddr *a, const struct rcpt_params *p,
                           struct reply *r)
{
    return answer(r, 250, "2.1.5", 2);
}
static enum host_rc f_begin(void *c, const struct envelope *e, struct reply *r)
{
    if (e->nrcpts == 0)
        abort(); /* a message must have recipients */
    reply_set(r, 354, NULL, "go");
    return HOST_DONE;
}
static void f_write(void *c, const char *p, size_t n)
{
    content_bytes += n;
}
static enum host_rc f_end(void *c, struct envelope *e, struct reply *r)
{
    if (e->nrcpts == 0)
        abort();
    return answer(r, 250, "2.0.0", 4);
}
static void f_abort(void *c)
{
}
static enum host_rc f_auth(void *c, const char *u, const char *p, struct reply *r)
{
    return answer(r, 235, "2.7.0", 8);
}
static void f_tls(void *c)
{
}

static const struct session_host host = {f_mail, f_rcpt, f_begin, f_write,
                                         f_end,  f_abort, f_auth, f_tls};

static void check_output(struct session *s)
{
    size_t len;
    const char *o = session_output(s, &len);
    size_t i = 0;
    while (i < len) {
        const char *eol = memchr(o + i, '\n', len - i);
        if (eol == NULL || eol == o + i || eol[-1] != '\r')
            abort();
        size_t n = (size_t)(eol - (o + i)) + 1;
        if (n < 6 || o[i] < '2' || o[i] > '5' || (o[i + 3] != ' ' && o[i + 3] != '-'))
            abort();
        i += n;
    }
    session_output_sent(s, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    if (!init) {
        log_set_level(LOG_LVL_ERROR);
        init = true;
    }
    if (size < 2)
        return 0;
    behaviour = data[0];
    struct session_params par = {
        .hostname = "fuzz.test",
        .size_limit = 4096,
        .max_recipients = 100,
        .max_errors = 10,
        .max_received = 100,
        .starttls = data[1] & 1,
        .auth = data[1] & 2,
        .auth_plain_ok = data[1] & 4,
        .require_auth = data[1] & 8,
    };
    struct session *s = session_new(&par, &host, NULL, "fuzz");
    session_greet(s);
    check_output(s);
    size_t pos = 2;
    unsigned step = 0;
    while (pos < size && session_state(s) != SS_CLOSED) {
        size_t piece = 1 + (size_t)(data[pos] % 64) * (step % 3 == 0 ? 8 : 1);
        if (piece > size - pos)
            piece = size - pos;
        pending_now = false;
        size_t used = session_input(s, (const char *)data + pos, piece);
        check_output(s);
        if (session_pending(s)) {
            struct reply r;
            reply_set(&r, (step & 1) ? 250 : 451, (step & 1) ? "2.0.0" : "4.3.0", "later");
            session_resume(s, &r);
            check_output(s);
        }
        if (session_wants_tls(s))
            session_tls_started(s);
        if (used == 0 && !session_pending(s))
            pos += piece; /* output full or closed: skip ahead, as a dropped client would */
        pos += used;
        step++;
    }
    if (data[1] & 16)
        session_shutdown(s);
    else if (data[1] & 32)
        session_timeout(s);
    check_output(s);
    session_free(s);
    return 0;
}
