/*
 * pickup: see pickup.h and maildrop.h. Imports drop files on the loop thread: reading a
 * drop file is bounded (2x the size limit) and local submission is rare, so the reads do
 * not get a thread of their own. A file is unlinked only after its queued copy is durable
 * (the unlink runs on the commit thread after the commit); if the daemon dies between the
 * two, the next start finds the id already queued and only removes the file.
 *
 * Invariant: a name is in the busy list from the moment its import starts until its
 * commit failed or its unlink finished, so an inotify event in between cannot import it
 * twice.
 */
#include "queue/pickup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/loop.h"
#include "lib/mem.h"
#include "queue/draft.h"
#include "queue/maildrop.h"
#include "queue/queue.h"

#define PICKUP_BATCH 64          /* files started per pass; the next pass follows at once */
#define PICKUP_EVERY_MS 60000    /* a scan even without events (missed or overflowed) */
#define PICKUP_RETRY_MS 5000     /* after a failed commit */
#define STALE_TMP_SECONDS 3600   /* a writer's temporary file this old was abandoned */
#define READ_CHUNK (64u << 10)

struct import {
    struct import *next;
    char name[QID_MAX];
    char id[QID_MAX];
};

static struct {
    bool open;
    int dirfd;
    uint64_t max;
    int ino; /* kept for the life of the process: closing one waits for an RCU grace
              * period (~10-20 ms here), which a stop/start pays for nothing */
    int wd;
    struct fdwatch *watch;
    struct timer *timer;
    struct import *busy;
} P = {.dirfd = -1, .ino = -1, .wd = -1};

static void on_timer(void *arg)
{
    queue_pickup();
}

static void on_inotify(int fd, void *arg)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    while (read(fd, buf, sizeof buf) > 0)
        ; /* which file does not matter: a pass looks at all of them */
    timer_arm(P.timer, 0);
}

void pickup_open(const char *path, int dirfd, uint64_t max_size)
{
    P.open = true;
    P.dirfd = dirfd;
    P.max = max_size;
    P.busy = NULL;
    P.timer = timer_new(on_timer, NULL);
    if (P.ino < 0)
        P.ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (P.ino >= 0 && (P.wd = inotify_add_watch(P.ino, path, IN_MOVED_TO | IN_CLOSE_WRITE)) >= 0) {
        P.watch = fdwatch_new(P.ino, on_inotify, NULL);
    } else {
        log_printf(LOG_LVL_WARN, "event=queue.pickup.no_inotify error=\"%s\" every_ms=%d",
                   strerror(errno), PICKUP_EVERY_MS);
    }
    timer_arm(P.timer, PICKUP_EVERY_MS);
}

void pickup_set_max(uint64_t max_size)
{
    P.max = max_size;
}

void pickup_close(void)
{
    if (!P.open)
        return;
    fdwatch_free(P.watch);
    if (P.wd >= 0)
        inotify_rm_watch(P.ino, P.wd);
    timer_free(P.timer);
    P.watch = NULL;
    P.timer = NULL;
    P.wd = -1;
    P.open = false;
    /* imports still running free themselves from their callbacks */
    P.busy = NULL;
}

static bool busy(const char *name)
{
    for (struct import *i = P.busy; i; i = i->next)
        if (strcmp(i->name, name) == 0)
            return true;
    return false;
}

static struct import *busy_add(const char *name, const char *id)
{
    struct import *i = xcalloc(1, sizeof *i);
    snprintf(i->name, sizeof i->name, "%s", name);
    snprintf(i->id, sizeof i->id, "%s", id);
    i->next = P.busy;
    P.busy = i;
    return i;
}

static void busy_done(struct import *imp)
{
    for (struct import **pp = &P.busy; *pp; pp = &(*pp)->next) {
        if (*pp == imp) {
            *pp = imp->next;
            break;
        }
    }
    free(imp);
}

static void log_rejected(const char *key, const char *name, const char *reason)
{
    struct logline l;
    log_begin(&l, LOG_LVL_ERROR, "queue.pickup.rejected");
    log_str(&l, key, name);
    log_str(&l, "reason", reason);
    log_end(&l);
}

/* Keep a refused file for the operator, out of the way of later passes. */
static void set_aside(const char *name)
{
    char aside[64];
    snprintf(aside, sizeof aside, ".bad.%s", name);
    if (renameat(P.dirfd, name, P.dirfd, aside) != 0)
        unlinkat(P.dirfd, name, 0);
}

static void unlinked(void *arg, int err)
{
    struct import *imp = arg;
    if (err && err != ECANCELED)
        log_printf(LOG_LVL_WARN, "event=queue.pickup.unlink_failed qid=%s error=\"%s\"", imp->id,
                   strerror(err));
    busy_done(imp);
}

static void committed(void *arg, int err)
{
    struct import *imp = arg;
    if (err) {
        log_printf(LOG_LVL_ERROR, "event=queue.pickup.commit_failed qid=%s", imp->id);
        busy_done(imp);
        if (P.open)
            timer_arm(P.timer, PICKUP_RETRY_MS);
        return;
    }
    log_printf(LOG_LVL_INFO, "event=queue.pickup qid=%s", imp->id);
    queue_unlink_after_commits(P.dirfd, imp->name, unlinked, imp);
}

/* Stream the content into a draft, checking the file's checksum on the way. */
static bool read_content(struct maildrop_file *f, struct qdraft *d, char *err, size_t errlen)
{
    char *buf = xmalloc(READ_CHUNK);
    uint32_t crc = f->text_crc;
    bool ok = true;
    for (uint64_t done = 0; ok && done < f->body_len;) {
        size_t n = f->body_len - done > READ_CHUNK ? READ_CHUNK : (size_t)(f->body_len - done);
        if (fs_pread_all(f->fd, buf, n, (off_t)(f->body_off + done)) != 0) {
            snprintf(err, errlen, "cannot read: %s", strerror(errno));
            ok = false;
        } else if (!queue_draft_write(d, buf, n)) {
            snprintf(err, errlen, "cannot store the content");
            ok = false;
        }
        crc = crc32c(crc, buf, n);
        done += n;
    }
    free(buf);
    if (ok && crc != f->payload_crc) {
        snprintf(err, errlen, "content checksum mismatch");
        ok = false;
    }
    return ok;
}

/* true if the file was taken up (its import or removal is under way). */
static bool import(const char *name)
{
    struct maildrop_file f;
    char err[256];
    if (maildrop_open(P.dirfd, name, P.max, &f, err, sizeof err) != 0) {
        if (errno == ENOENT)
            return false;
        log_rejected("file", name, err);
        set_aside(name);
        return false;
    }
    if (queue_find(f.id)) {
        /* queued before a crash that came before the unlink */
        log_printf(LOG_LVL_INFO, "event=queue.pickup.already_queued qid=%s", f.id);
        struct import *imp = busy_add(name, f.id);
        maildrop_close(&f);
        queue_unlink_after_commits(P.dirfd, name, unlinked, imp);
        return true;
    }
    struct qdraft *d = queue_draft_new();
    qdraft_set_id(d, f.id);
    if (!read_content(&f, d, err, sizeof err)) {
        log_rejected("qid", f.id, err);
        queue_draft_abort(d);
        maildrop_close(&f);
        set_aside(name);
        return false;
    }
    struct envelope *env = envelope_move(&f.env);
    /* the writer's claims about the origin are replaced by what we know */
    char who[32];
    snprintf(who, sizeof who, "uid=%lu", (unsigned long)f.uid);
    envelope_set(&env->client_name, who);
    envelope_set(&env->client_ip, NULL);
    envelope_set(&env->helo, NULL);
    envelope_set(&env->auth_user, NULL);
    envelope_set(&env->protocol, "local");
    env->arrival = 0; /* the queue's arrival: now */
    struct import *imp = busy_add(name, f.id);
    maildrop_close(&f);
    queue_draft_commit(d, env, committed, imp);
    return true;
}

static void remove_stale_tmp(const char *name)
{
    struct stat st;
    if (fstatat(P.dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        time(NULL) - st.st_mtime > STALE_TMP_SECONDS && unlinkat(P.dirfd, name, 0) == 0) {
        struct logline l;
        log_begin(&l, LOG_LVL_INFO, "queue.pickup.stale_tmp_removed");
        log_str(&l, "file", name); /* any local user picks these names */
        log_end(&l);
    }
}

size_t queue_pickup(void)
{
    if (!P.open)
        return 0;
    int fd = dup(P.dirfd);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (dir == NULL) {
        if (fd >= 0)
            close(fd);
        log_printf(LOG_LVL_ERROR, "event=queue.pickup.scan_failed error=\"%s\"", strerror(errno));
        return 0;
    }
    rewinddir(dir);
    size_t started = 0;
    bool more = false;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        const char *name = de->d_name;
        if (strncmp(name, ".tmp.", 5) == 0) {
            remove_stale_tmp(name);
            continue;
        }
        if (!maildrop_name_ok(name) || busy(name))
            continue;
        if (started == PICKUP_BATCH) {
            more = true;
            break;
        }
        started += import(name);
    }
    closedir(dir);
    timer_arm(P.timer, more ? 0 : PICKUP_EVERY_MS);
    return started;
}
