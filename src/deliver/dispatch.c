/*
 * deliver/dispatch: see dispatch.h.
 *
 * The hooks append a request to a FIFO and arm a zero-delay timer; the timer's callback
 * runs on the next loop iteration, hands every request on (local agent, remote delivery,
 * bouncer) and then flushes the local agent once, so the Maildir jobs of all the
 * messages that became due in one iteration share batches. Requests that arrive while
 * the FIFO is being handled (queue_expand() dispatches the new recipients at once) wait
 * for the next iteration.
 */
#include "deliver/dispatch.h"

#include <stdlib.h>
#include <string.h>

#include "deliver/bounce.h"
#include "deliver/local.h"
#include "deliver/remote.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "lib/strutil.h"
#include "lib/workers.h"
#include "mail/address.h"


struct request {
    struct request *next;
    struct qmsg *m; /* referenced */
    bool notify;    /* a DSN request, else a delivery */
    enum dsn_kind kind;
    uint32_t *rcpts;
    size_t n;
};

struct dispatch {
    struct conf *conf; /* referenced */
    struct workers *pool;
    struct local_agent *agent;
    struct bouncer *bouncer;
    struct timer *timer;
    struct request *head, **tail;
    size_t queued;
};

static void run_requests(void *arg);

struct dispatch *dispatch_new(struct conf *c)
{
    struct dispatch *d = xcalloc(1, sizeof *d);
    conf_ref(c);
    d->conf = c;
    unsigned threads = c->delivery_workers ? c->delivery_workers : 1;
    /* Maildir writing runs below the loop's priority (delivery_nice, default 10): when
     * both want the CPU, accepting mail (a client waits for every reply) goes first and
     * delivery catches up after; at nice 10 delivery still gets about a tenth of a busy
     * CPU, so it never starves, and nothing changes when the CPU is not saturated */
    d->pool = workers_new_nice("deliver", threads, (int)c->delivery_nice);
    d->agent = local_agent_new(d->pool, threads);
    d->bouncer = bounce_new(d->pool);
    d->timer = timer_new(run_requests, d);
    d->tail = &d->head;
    return d;
}

void dispatch_set_conf(struct dispatch *d, struct conf *c)
{
    conf_ref(c);
    conf_unref(d->conf);
    d->conf = c;
}

bool dispatch_is_local(const struct conf *c, const char *addr)
{
    if (strchr(addr, '@') == NULL)
        return str_ieq(addr, "postmaster"); /* RFC 5321 §4.1.1.3 */
    size_t n = strlen(addr) + 1;
    char *local = xmalloc(n), *domain = xmalloc(n);
    bool ours = addr_split(addr, local, n, domain, n) && conf_find_domain(c, domain) != NULL;
    free(local);
    free(domain);
    return ours;
}

static void add_request(struct dispatch *d, struct qmsg *m, bool notify, enum dsn_kind kind,
                        const uint32_t *rcpts, size_t n)
{
    if (n == 0)
        return;
    struct request *r = xcalloc(1, sizeof *r);
    qmsg_ref(m);
    r->m = m;
    r->notify = notify;
    r->kind = kind;
    r->rcpts = xmalloc(n * sizeof *r->rcpts);
    memcpy(r->rcpts, rcpts, n * sizeof *r->rcpts);
    r->n = n;
    *d->tail = r;
    d->tail = &r->next;
    d->queued++;
    if (!timer_pending(d->timer))
        timer_arm(d->timer, 0);
}

static void dispatch_hook(void *arg, struct qmsg *m, const uint32_t *rcpts, size_t n)
{
    add_request(arg, m, false, DSN_FAILURE, rcpts, n);
}

static void notify_hook(void *arg, struct qmsg *m, enum dsn_kind kind, const uint32_t *rcpts,
                        size_t n)
{
    add_request(arg, m, true, kind, rcpts, n);
}

void dispatch_hooks(struct dispatch *d, struct queue_hooks *out)
{
    out->dispatch = dispatch_hook;
    out->notify = notify_hook;
    out->arg = d;
}

static void request_free(struct request *r)
{
    qmsg_unref(r->m);
    free(r->rcpts);
    free(r);
}

static void hand_on(struct dispatch *d, struct request *r)
{
    if (r->notify) {
        bounce_notify(d->bouncer, d->conf, r->m, r->kind, r->rcpts, r->n);
        return;
    }
    uint32_t *local = xmalloc(r->n * sizeof *local), *remote = xmalloc(r->n * sizeof *remote);
    size_t nl = 0, nr = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (dispatch_is_local(d->conf, qmsg_rcpt(r->m, r->rcpts[i])->addr))
            local[nl++] = r->rcpts[i];
        else
            remote[nr++] = r->rcpts[i];
    }
    if (nl > 0)
        local_agent_deliver(d->agent, d->conf, r->m, local, nl);
    if (nr > 0)
        remote_deliver(r->m, remote, nr);
    free(local);
    free(remote);
}

static void run_requests(void *arg)
{
    struct dispatch *d = arg;
    /* take the FIFO as it is now; what the handling adds waits for the timer again */
    struct request *list = d->head;
    d->head = NULL;
    d->tail = &d->head;
    while (list != NULL) {
        struct request *r = list;
        list = r->next;
        d->queued--;
        hand_on(d, r);
        request_free(r);
    }
    local_agent_flush(d->agent);
}

size_t dispatch_pending(const struct dispatch *d)
{
    return d->queued + local_agent_pending(d->agent) + bounce_pending(d->bouncer);
}

void dispatch_free(struct dispatch *d)
{
    if (d == NULL)
        return;
    timer_free(d->timer);
    /* Requests not yet handed on get no outcome: their recipients are still pending on
     * disk, so the next start delivers them at once (an outcome such as "4.3.0 shutting
     * down" would count an attempt and delay them by a whole retry step). */
    while (d->head != NULL) {
        struct request *r = d->head;
        d->head = r->next;
        request_free(r);
    }
    local_agent_free(d->agent); /* frees itself once its running batches reported */
    bounce_free(d->bouncer);
    workers_free(d->pool); /* finishes what runs, with the done callbacks */
    conf_unref(d->conf);
    free(d);
}
