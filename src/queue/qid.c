/*
 * qid: see qid.h. One mutex guards the last time value and the random generator state;
 * ids are made a few hundred thousand times a second at most, far below what a mutex costs.
 */
#include "queue/qid.h"

#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue.h"

_Static_assert(QID_LEN + 1 <= QID_MAX, "QID_MAX too small for a queue id");

#define TIME_DIGITS 10
#define RAND_DIGITS 4
#define RAND_RANGE (36u * 36u * 36u * 36u)

static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t last_us;
static uint64_t rng_state;
static bool rng_ready;
/* The random part: drawn once per process (again in a forked child), not per id. Within a
 * process the time part alone makes ids unique; across processes two ids can only be equal
 * if their processes drew the same tag (1 in 1.7 million) and used the same microsecond.
 * A fresh draw per id would instead give every pair of ids made in the same microsecond
 * that chance: two processes making ids flat out would collide every few million ids. */
static uint64_t tag;

/* splitmix64: a good small generator; the seed comes from getrandom (or time and pid). */
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(void);

/* A forked child must not replay its parent's ids: fresh random bits. (tern-sendmail is
 * exec'd, so this is only for children of a process that made ids before forking.) */
static void after_fork_child(void)
{
    pthread_mutex_init(&lock, NULL);
    rng_seed();
}

static void rng_seed(void)
{
    static bool atfork_done;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = true;
    }
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    }
    rng_state = seed;
    tag = rng_next() % RAND_RANGE;
    rng_ready = true;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void put_base36(char *out, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        out[i] = digits[v % 36];
        v /= 36;
    }
}

void qid_new(char *out)
{
    uint64_t t = now_us();
    pthread_mutex_lock(&lock);
    if (!rng_ready)
        rng_seed();
    if (t <= last_us)
        t = last_us + 1;
    last_us = t;
    uint64_t r = tag;
    pthread_mutex_unlock(&lock);
    put_base36(out, t, TIME_DIGITS);
    put_base36(out + TIME_DIGITS, r, RAND_DIGITS);
    out[QID_LEN] = '\0';
}

static int digit_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'Z')
        return c - 'A' + 10;
    return -1;
}

bool qid_valid(const char *s)
{
    for (int i = 0; i < QID_LEN; i++)
        if (digit_value(s[i]) < 0)
            return false; /* also stops at a NUL */
    return s[QID_LEN] == '\0';
}

uint64_t qid_time_us(const char *id)
{
    uint64_t v = 0;
    for (int i = 0; i < TIME_DIGITS; i++)
        v = v * 36 + (uint64_t)digit_value(id[i]);
    return v;
}

void qid_seed(const char *id)
{
    if (!qid_valid(id))
        return;
    uint64_t t = qid_time_us(id);
    pthread_mutex_lock(&lock);
    if (t > last_us)
        last_us = t;
    pthread_mutex_unlock(&lock);
}
