/* envelope: see envelope.h. */
#include "mail/envelope.h"

#include <stdlib.h>
#include <string.h>

#include "lib/mem.h"

void envelope_init(struct envelope *e)
{
    memset(e, 0, sizeof *e);
}

void envelope_clear(struct envelope *e)
{
    free(e->sender);
    free(e->envid);
    free(e->auth_param);
    for (size_t i = 0; i < e->nrcpts; i++) {
        free(e->rcpts[i].addr);
        free(e->rcpts[i].orcpt);
    }
    free(e->rcpts);
    free(e->client_ip);
    free(e->client_name);
    free(e->helo);
    free(e->auth_user);
    free(e->protocol);
    envelope_init(e);
}

void envelope_set(char **field, const char *value)
{
    free(*field);
    *field = value ? xstrdup(value) : NULL;
}

void envelope_add_rcpt(struct envelope *e, const char *addr, const char *orcpt, unsigned notify)
{
    e->rcpts = xgrow(e->rcpts, &e->rcpts_cap, e->nrcpts + 1, sizeof *e->rcpts);
    struct env_rcpt *r = &e->rcpts[e->nrcpts++];
    r->addr = xstrdup(addr);
    r->orcpt = orcpt ? xstrdup(orcpt) : NULL;
    r->notify = notify;
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

void envelope_copy(struct envelope *dst, const struct envelope *src)
{
    *dst = *src;
    dst->sender = dup_or_null(src->sender);
    dst->envid = dup_or_null(src->envid);
    dst->auth_param = dup_or_null(src->auth_param);
    dst->client_ip = dup_or_null(src->client_ip);
    dst->client_name = dup_or_null(src->client_name);
    dst->helo = dup_or_null(src->helo);
    dst->auth_user = dup_or_null(src->auth_user);
    dst->protocol = dup_or_null(src->protocol);
    dst->rcpts = NULL;
    dst->nrcpts = dst->rcpts_cap = 0;
    for (size_t i = 0; i < src->nrcpts; i++)
        envelope_add_rcpt(dst, src->rcpts[i].addr, src->rcpts[i].orcpt, src->rcpts[i].notify);
}

struct envelope *envelope_move(struct envelope *src)
{
    struct envelope *e = xmalloc(sizeof *e);
    *e = *src;
    envelope_init(src);
    return e;
}

void envelope_free(struct envelope *e)
{
    if (e == NULL)
        return;
    envelope_clear(e);
    free(e);
}
