/*
 * db.c — the kv_db handle: open and recovery, the write path, maintenance
 * (folds, snapshots, compaction), the background thread, statistics.
 *
 * The only module that knows all the others. Invariants:
 *   - A write is appended to the WAL and inserted into the active buffer
 *     under wlock, in sequence order, then committed (group commit) outside
 *     it; visible_seq only moves past a write once its commit succeeded, so
 *     readers never see a write that could be lost, nor part of a batch.
 *   - Every version publish happens under wlock; folds, snapshots and
 *     compaction are serialised by maint, so at most one frozen buffer exists.
 *   - A frozen buffer only holds writes with seq <= the seq current when it
 *     was frozen, and is merged only once visible_seq has reached that seq,
 *     so a base run never holds a write some reader must not see.
 *   - The manifest names the live snapshot and the first live WAL; files it
 *     does not name are leftovers of an interrupted maintenance step and are
 *     removed at open.
 */
#include "db.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "os.h"
#include "probe.h"
#include "snapshot.h"
#include "sort.h"

#define LOCK_NAME "LOCK"
/* Bounds of the library-chosen fold threshold (base/8 between them). The
 * cap keeps the buffer's hash and sorted runs small enough that a random
 * insert stays cheap and the buffer's per-key bytes a bounded share of
 * memory; past it each fold of a large base costs more per write, on the
 * background thread. */
#define MIN_FOLD ((uint64_t)1 << 16)
#define MAX_FOLD ((uint64_t)1 << 20)
#define APPLY_AHEAD 8 /* batch keys whose lookups are started ahead */
/* Freed blocks stay pooled for the next fold while folds keep coming; after
 * this long without one they go back to the system. */
#define POOL_IDLE_NS ((uint64_t)1000000000u)
/* After a failed automatic snapshot (a disk with room for log appends but
 * not for the whole state) the next one waits this long, doubling per
 * failure up to the cap: each attempt rewrites the state until the disk
 * says no and, if anything was written since the last, leaves one more
 * small WAL behind until one succeeds. */
#define SNAP_BACKOFF_MIN_NS ((uint64_t)2000000000u)
#define SNAP_BACKOFF_MAX_NS ((uint64_t)300 * 1000000000u)

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

int db_io_error(kv_db *db, int neg_errno)
{
    atomic_store(&db->last_errno, neg_errno < 0 ? -neg_errno : EIO);
    return KV_EIO;
}

/* The WAL failed, or a logged write could not be applied in memory:
 * refuse every later write (a failed fsync is never retried, the pages it
 * covered may be gone). */
static int db_fail(kv_db *db, int rc, int err)
{
    atomic_store(&db->failed, 1);
    /* Every later write says KV_EIO, so kv_errno must name a cause even
     * when this failure was not an I/O error (memory for the buffer). */
    if (rc == KV_EIO)
        atomic_store(&db->last_errno, err ? err : EIO);
    else
        atomic_store(&db->last_errno, rc == KV_ENOMEM ? ENOMEM : EIO);
    return rc;
}

static void path_join(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

/* The write buffers' grace period (buf_set_grace): the writer frees parts
 * of a buffer's ordered index that iterators may have loaded. Readers pin
 * only briefly and never wait while pinned, so this never waits long. */
static void db_grace(void *ctx)
{
    ver_synchronize(&((kv_db *)ctx)->vd);
}

/* ---- Reads through a version --------------------------------------- */

/* ---- The write path ------------------------------------------------ */

static uint64_t pending_writes(const ver *v)
{
    return buf_writes(v->active->b) + (v->frozen ? buf_writes(v->frozen->b) : 0);
}

/* Insert one put or delete into the active buffer; wlock held (or recovery). */
static int apply_one(kv_db *db, uint64_t seq, int is_delete, uint64_t key, const void *val,
                     size_t len)
{
    ver *v = ver_current(&db->vd);
    int prev;
    int rc = buf_put_prev(v->active->b, key, seq, is_delete, val, len, &prev);
    if (rc != KV_OK)
        return rc;
    atomic_fetch_add_explicit(is_delete ? &db->deletes : &db->puts, 1, memory_order_relaxed);
    if (db->replaying) {
        /* A key's first write here is settled against the base later. */
        db->replay_live_delta += (int64_t)!is_delete - (int64_t)(prev == BUF_VALUE);
        return KV_OK;
    }
    int existed = prev == BUF_VALUE;
    if (prev == BUF_ABSENT) {
        /* Not in the active buffer: the older layers decide. */
        const void *old;
        size_t old_len;
        int s = v->frozen ? buf_get(v->frozen->b, key, UINT64_MAX, &old, &old_len) : BUF_ABSENT;
        if (s == BUF_ABSENT) {
            size_t probed = 0;
            int fallback = 0;
            existed = run_get(v->base, key, &old, &old_len, &probed, &fallback) == KV_OK;
        } else {
            existed = s == BUF_VALUE;
        }
    }
    if (!existed && !is_delete)
        atomic_fetch_add_explicit(&db->live_keys, 1, memory_order_relaxed);
    else if (existed && is_delete)
        atomic_fetch_sub_explicit(&db->live_keys, 1, memory_order_relaxed);
    return KV_OK;
}

/*
 * live_keys after replay without a base lookup per record. Each replayed
 * write moved its key from the state before it to put or deleted; those
 * steps telescope, so replay_live_delta holds all of them except, for each
 * key's first write, whether the key was live in the base before. Those
 * keys come back sorted from buf_finish_order: one merge with the base's
 * keys counts them.
 */
static int finish_replay(kv_db *db)
{
    const ver *v = ver_current(&db->vd);
    const run *base = v->base;
    int rc = buf_finish_order(v->active->b);
    if (rc != KV_OK)
        return rc;
    /* Replay started on an empty buffer: every key in it had its first
     * write there. */
    buf_iter it;
    buf_iter_seek(v->active->b, &it, 0, UINT64_MAX);
    uint64_t in_base = 0, i = 0, key;
    while (buf_iter_next(&it, &key, NULL, NULL) != BUF_ABSENT) {
        while (i < base->n && base->keys[i] < key)
            i++;
        in_base += i < base->n && base->keys[i] == key;
    }
    buf_iter_close(&it);
    atomic_store(&db->live_keys, (uint64_t)((int64_t)base->n + db->replay_live_delta) - in_base);
    return KV_OK;
}

int db_apply_batch(kv_db *db, uint64_t seq, const uint8_t *payload, size_t len)
{
    wal_batch_cursor c = {payload, payload + len};
    int op, rc;
    uint64_t key;
    const uint8_t *val;
    size_t vlen, count = 0;
    /* Validate the whole batch before applying any of it. */
    while ((rc = wal_batch_next(&c, &op, &key, &val, &vlen)) == 1) {
        if (vlen > KV_MAX_VALUE)
            return KV_ECORRUPT;
        count++;
    }
    if (rc != 0)
        return KV_ECORRUPT;

    /* In key order the buffer's insert resumes where the previous one
     * ended instead of searching from the top. Each entry is sorted with
     * its offset in the payload, so equal keys keep batch order and the
     * later one still wins. Without memory, batch order works too. */
    sort_pair *order = count > 1 ? malloc(count * sizeof *order) : NULL;
    c = (wal_batch_cursor){payload, payload + len};
    if (!order) {
        while (wal_batch_next(&c, &op, &key, &val, &vlen) == 1) {
            if ((rc = apply_one(db, seq, op == WAL_OP_DEL, key, val, vlen)) != KV_OK)
                return rc;
        }
        return KV_OK;
    }
    for (size_t i = 0; i < count; i++) {
        uint64_t off = (uint64_t)(c.p - payload);
        wal_batch_next(&c, &op, &key, &val, &vlen);
        order[i] = (sort_pair){key, off};
    }
    sort_pairs(order, count);
    rc = KV_OK;
    /* Each key's first lookups (its hash slots, and for a new key its
     * window in the base) are cache misses independent of the others':
     * start them a few keys ahead. wlock is held, so the version is stable. */
    const ver *v = ver_current(&db->vd);
    for (size_t i = 0; i < count && rc == KV_OK; i++) {
        if (i + APPLY_AHEAD < count) {
            uint64_t ahead = order[i + APPLY_AHEAD].key;
            buf_prefetch(v->active->b, ahead);
            if (v->frozen)
                buf_prefetch(v->frozen->b, ahead);
            if (!db->replaying)
                run_prefetch(v->base, ahead);
        }
        c = (wal_batch_cursor){payload + order[i].tag, payload + len};
        wal_batch_next(&c, &op, &key, &val, &vlen);
        rc = apply_one(db, seq, op == WAL_OP_DEL, key, val, vlen);
    }
    free(order);
    return rc;
}

static void kick_background(kv_db *db)
{
    pthread_mutex_lock(&db->bg_lock);
    db->bg_kick = 1;
    pthread_cond_signal(&db->bg_cond);
    pthread_mutex_unlock(&db->bg_lock);
}

static void advance_visible(kv_db *db, uint64_t seq)
{
    uint64_t cur = atomic_load(&db->visible_seq);
    while (cur < seq && !atomic_compare_exchange_weak(&db->visible_seq, &cur, seq)) {
    }
}

static int db_write_counted(kv_db *db, uint32_t type, uint64_t key, const void *val,
                            size_t len, const uint8_t *batch, size_t batch_len);

/* Counts the writers in flight for the WAL's group commit. */
int db_write(kv_db *db, uint32_t type, uint64_t key, const void *val, size_t len,
             const uint8_t *batch, size_t batch_len)
{
    atomic_fetch_add(&db->writers, 1);
    int rc = db_write_counted(db, type, key, val, len, batch, batch_len);
    atomic_fetch_sub(&db->writers, 1);
    return rc;
}

static int db_write_counted(kv_db *db, uint32_t type, uint64_t key, const void *val,
                            size_t len, const uint8_t *batch, size_t batch_len)
{
    uint8_t kbuf[8];
    uint64_t seq, lsn;
    int rc, err = 0;

    if (atomic_load(&db->failed))
        return KV_EIO;
    put_le64(kbuf, key);
    pthread_mutex_lock(&db->wlock);
    if (atomic_load(&db->failed)) {
        pthread_mutex_unlock(&db->wlock);
        return KV_EIO;
    }
    db_wal *dw = db->wal;
    if (type == WAL_BATCH)
        rc = wal_append(dw->w, WAL_BATCH, batch, batch_len, NULL, 0, &seq, &lsn);
    else
        rc = wal_append(dw->w, type, kbuf, 8, val, type == WAL_PUT ? len : 0, &seq, &lsn);
    if (rc != KV_OK) {
        pthread_mutex_unlock(&db->wlock);
        if (rc == KV_EIO) /* the append's own write failed: the WAL has its errno */
            return db_fail(db, rc, wal_error(dw->w));
        return rc;
    }
    if (type == WAL_BATCH)
        rc = db_apply_batch(db, seq, batch, batch_len);
    else
        rc = apply_one(db, seq, type == WAL_DEL, key, val, len);
    if (rc != KV_OK) {
        /* The record is in the log but not in memory: the handle can no
         * longer promise that what it serves matches what recovery will. */
        pthread_mutex_unlock(&db->wlock);
        return db_fail(db, rc, 0);
    }
    atomic_fetch_add(&dw->inflight, 1);
    int want_fold = pending_writes(ver_current(&db->vd)) >= db->fold_threshold;
    pthread_mutex_unlock(&db->wlock);
    if (want_fold)
        kick_background(db);

    uint64_t durable;
    rc = wal_commit(dw->w, lsn, (int)db->opts.sync, &durable, &err);
    atomic_fetch_sub(&dw->inflight, 1);
    if (rc != KV_OK)
        return db_fail(db, KV_EIO, err);
    advance_visible(db, seq);
    return KV_OK;
}

static int check_writable(kv_db *db)
{
    if (!db)
        return KV_EINVAL;
    if (db->readonly)
        return KV_EREADONLY;
    return KV_OK;
}

int kv_put(kv_db *db, uint64_t key, const void *val, size_t len)
{
    int rc = check_writable(db);
    if (rc != KV_OK)
        return rc;
    if (!val && len)
        return KV_EINVAL;
    if (len > KV_MAX_VALUE)
        return KV_ETOOBIG;
    return db_write(db, WAL_PUT, key, val, len, NULL, 0);
}

int kv_delete(kv_db *db, uint64_t key)
{
    int rc = check_writable(db);
    if (rc != KV_OK)
        return rc;
    return db_write(db, WAL_DEL, key, NULL, 0, NULL, 0);
}

/* ---- WAL files --------------------------------------------------------- */

static int parse_id(const char *name, const char *prefix, const char *suffix, uint64_t *id)
{
    size_t pl = strlen(prefix), sl = strlen(suffix), nl = strlen(name);
    if (nl != pl + 16 + sl || strncmp(name, prefix, pl) != 0 || strcmp(name + pl + 16, suffix) != 0)
        return 0;
    uint64_t v = 0;
    for (size_t i = pl; i < pl + 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        v = v << 4 | (uint64_t)d;
    }
    *id = v;
    return 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every WAL id in the directory (sorted), and the largest file id seen. */
static int list_files(const char *dir, uint64_t **wal_ids, size_t *nwal, uint64_t *max_id,
                      int *has_db_files)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    size_t n = 0, cap = 0;
    uint64_t *ids = NULL, id;
    struct dirent *e;
    *max_id = 0;
    *has_db_files = 0;
    while ((e = readdir(d)) != NULL) {
        if (parse_id(e->d_name, "wal-", ".log", &id)) {
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                uint64_t *grown = realloc(ids, cap * sizeof *ids);
                if (!grown) {
                    free(ids);
                    closedir(d);
                    return -ENOMEM;
                }
                ids = grown;
            }
            ids[n++] = id;
            *has_db_files = 1;
        } else if (!parse_id(e->d_name, "snap-", ".kyro", &id)) {
            continue;
        } else {
            *has_db_files = 1;
        }
        if (id > *max_id)
            *max_id = id;
    }
    closedir(d);
    if (n)
        qsort(ids, n, sizeof *ids, cmp_u64);
    *wal_ids = ids;
    *nwal = n;
    return 0;
}

/* Remove files the manifest no longer names (interrupted maintenance). */
static void remove_leftovers(kv_db *db)
{
    DIR *d = opendir(db->dir);
    if (!d)
        return;
    struct dirent *e;
    char path[4096];
    uint64_t id;
    while ((e = readdir(d)) != NULL) {
        size_t nl = strlen(e->d_name);
        int stale = (nl > 4 && strcmp(e->d_name + nl - 4, ".tmp") == 0) ||
                    (parse_id(e->d_name, "snap-", ".kyro", &id) && id != db->man.snapshot_id) ||
                    (parse_id(e->d_name, "wal-", ".log", &id) && id < db->man.wal_id);
        if (stale) {
            path_join(path, sizeof path, db->dir, e->d_name);
            os_unlink(path);
        }
    }
    closedir(d);
}

static db_wal *db_wal_new(kv_db *db, wal *w, uint64_t id)
{
    db_wal *dw = calloc(1, sizeof *dw);
    if (!dw)
        return NULL;
    wal_set_writers(w, &db->writers);
    dw->w = w;
    dw->id = id;
    atomic_init(&dw->inflight, 0);
    return dw;
}

/* The current WAL, kept open while the caller uses it outside wlock. */
static db_wal *wal_hold(kv_db *db)
{
    pthread_mutex_lock(&db->wlock);
    db_wal *dw = db->wal;
    atomic_fetch_add(&dw->inflight, 1);
    pthread_mutex_unlock(&db->wlock);
    return dw;
}

static void wal_drop(db_wal *dw)
{
    atomic_fetch_sub(&dw->inflight, 1);
}

/* Close retired WALs no writer is still committing on. wlock held. */
static void free_idle_wals(kv_db *db)
{
    db_wal **pp = &db->wal->older;
    while (*pp) {
        db_wal *dw = *pp;
        if (atomic_load(&dw->inflight) == 0) {
            *pp = dw->older;
            atomic_fetch_add(&db->retired_wal_syncs, wal_sync_count(dw->w));
            wal_close(dw->w);
            free(dw);
        } else {
            pp = &dw->older;
        }
    }
}

/* ---- Recovery -------------------------------------------------------- */

typedef struct {
    kv_db *db;
    uint64_t expect; /* next seq the log must hold */
} replay_ctx;

/* A record a few ahead: its key's hash slot is a cache miss to start now. */
static void replay_peek(void *arg, uint32_t type, const uint8_t *p, size_t len)
{
    replay_ctx *rc = arg;
    if ((type == WAL_PUT || type == WAL_DEL) && len >= 8)
        buf_prefetch(ver_current(&rc->db->vd)->active->b, get_le64(p));
}

static int replay_apply(void *arg, uint32_t type, uint64_t seq, const uint8_t *p, size_t len)
{
    replay_ctx *rc = arg;
    if (seq != rc->expect)
        return KV_ECORRUPT;
    rc->expect++;
    switch (type) {
    case WAL_PUT:
        if (len < 8 || len - 8 > KV_MAX_VALUE)
            return KV_ECORRUPT;
        return apply_one(rc->db, seq, 0, get_le64(p), p + 8, len - 8);
    case WAL_DEL:
        if (len != 8)
            return KV_ECORRUPT;
        return apply_one(rc->db, seq, 1, get_le64(p), NULL, 0);
    case WAL_BATCH:
        return db_apply_batch(rc->db, seq, p, len);
    default:
        return KV_ECORRUPT;
    }
}

/* Replay every live WAL, reopen the last for appending. */
static int recover_wals(kv_db *db, const uint64_t *ids, size_t n)
{
    replay_ctx ctx = {db, db->snap_seq + 1};
    char name[64], path[4096];
    int recover = (db->opts.flags & KV_RECOVER) != 0;
    uint64_t valid_end = 0, last_id = 0, log_bytes = 0;
    size_t i;
    int rc = KV_OK;

    /* Size the buffer's hash index once for what the logs can hold (a put
     * of a small value takes about 48 bytes of log) instead of doubling it
     * over and over during replay. Only a hint: failure changes nothing. */
    for (i = 0; i < n; i++) {
        struct stat st;
        manifest_wal_name(ids[i], name);
        path_join(path, sizeof path, db->dir, name);
        if (ids[i] >= db->man.wal_id && stat(path, &st) == 0 && st.st_size > 0)
            log_bytes += (uint64_t)st.st_size;
    }
    (void)buf_reserve(ver_current(&db->vd)->active->b, log_bytes / 48);

    for (i = 0; i < n; i++) {
        if (ids[i] < db->man.wal_id)
            continue;
        int torn = 0;
        uint64_t file_last;
        manifest_wal_name(ids[i], name);
        path_join(path, sizeof path, db->dir, name);
        rc = wal_replay_peek(path, db->snap_seq, recover, replay_apply, replay_peek, &ctx,
                             &valid_end, &file_last, &torn);
        if (rc == KV_EIO)
            db_io_error(db, -wal_last_errno());
        if (rc != KV_OK)
            return rc;
        last_id = ids[i];
        (void)file_last;
        if (torn && i + 1 < n) {
            /* A hole with later logs after it is not a torn tail. */
            if (!recover)
                return KV_ECORRUPT;
            if (!db->readonly) {
                for (size_t j = i + 1; j < n; j++) {
                    manifest_wal_name(ids[j], name);
                    path_join(path, sizeof path, db->dir, name);
                    os_unlink(path);
                }
            }
            break;
        }
    }
    atomic_store(&db->visible_seq, ctx.expect - 1 > db->snap_seq ? ctx.expect - 1 : db->snap_seq);
    if (db->readonly)
        return KV_OK;

    wal *w = NULL;
    uint64_t next_seq = atomic_load(&db->visible_seq) + 1;
    if (last_id) {
        manifest_wal_name(last_id, name);
        rc = wal_open_append(db->dir, name, valid_end, next_seq, &w);
        if (rc == KV_EIO)
            db_io_error(db, -wal_last_errno());
    } else {
        /* The manifest's WAL is missing (a crash between creating it and
         * naming it cannot cause this; a lost file can): start a new one. */
        last_id = db->man.next_id++;
        manifest_wal_name(last_id, name);
        rc = wal_create(db->dir, name, next_seq, &w);
        if (rc == KV_EIO)
            db_io_error(db, -wal_last_errno());
        if (rc == KV_OK) {
            db->man.wal_id = last_id;
            int err = 0;
            rc = manifest_write(db->dir, &db->man, &err);
            if (rc == KV_EIO)
                db_io_error(db, -err);
        }
    }
    if (rc != KV_OK) {
        if (w)
            wal_close(w);
        return rc;
    }
    db->wal = db_wal_new(db, w, last_id);
    if (!db->wal) {
        wal_close(w);
        return KV_ENOMEM;
    }
    return KV_OK;
}

static int create_fresh(kv_db *db)
{
    char name[64];
    int err = 0;
    wal *w;
    db->man = (manifest){.snapshot_id = 0, .wal_id = 1, .next_id = 2};
    /* The manifest first: a failure before it leaves no data file behind
     * (the next open starts fresh again), and a failure after it leaves a
     * manifest whose missing WAL the next open recreates. */
    int rc = manifest_write(db->dir, &db->man, &err);
    if (rc != KV_OK)
        return rc == KV_EIO ? db_io_error(db, -err) : rc;
    manifest_wal_name(1, name);
    rc = wal_create(db->dir, name, 1, &w);
    if (rc != KV_OK)
        return rc == KV_EIO ? db_io_error(db, -wal_last_errno()) : rc;
    db->wal = db_wal_new(db, w, 1);
    if (!db->wal) {
        wal_close(w);
        return KV_ENOMEM;
    }
    return KV_OK;
}

static int check_options(const kv_options *o)
{
    if (o->flags & ~(KV_CREATE | KV_READONLY | KV_RECOVER))
        return KV_EINVAL;
    if ((unsigned)o->sync > KV_SYNC_OFF)
        return KV_EINVAL;
    if (o->sync == KV_SYNC_NORMAL && o->sync_interval_ms == 0)
        return KV_EINVAL;
    for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++) {
        if (o->reserved[i])
            return KV_EINVAL;
    }
    return KV_OK;
}

static void update_fold_threshold(kv_db *db, uint64_t base_n)
{
    if (db->opts.rebuild_appends) {
        db->fold_threshold = db->opts.rebuild_appends;
        return;
    }
    /* Grows with the base so each write pays a bounded share of merging. */
    uint64_t t = base_n / 8;
    db->fold_threshold = t < MIN_FOLD ? MIN_FOLD : t > MAX_FOLD ? MAX_FOLD : t;
}

static void *bg_main(void *arg);

static int take_lock(kv_db *db)
{
    char path[4096];
    path_join(path, sizeof path, db->dir, LOCK_NAME);
    int rc;
    if (db->readonly) {
        /* A shared lock, on the lock file only if it already exists: a
         * read-only open never creates or changes a file. */
        if (!os_path_exists(path))
            return KV_OK;
        rc = os_open(path, O_RDONLY, 0, &db->lock_fd);
        if (rc == 0)
            rc = os_lock_shared(db->lock_fd);
    } else {
        rc = os_open(path, O_RDWR | O_CREAT, 0644, &db->lock_fd);
        if (rc == 0)
            rc = os_lock_exclusive(db->lock_fd);
    }
    if (rc == -EWOULDBLOCK || rc == -EAGAIN)
        return KV_EBUSY;
    return rc < 0 ? db_io_error(db, rc) : KV_OK;
}

static void db_destroy(kv_db *db)
{
    if (db->bg_running) {
        pthread_mutex_lock(&db->bg_lock);
        db->bg_stop = 1;
        pthread_cond_signal(&db->bg_cond);
        pthread_mutex_unlock(&db->bg_lock);
        pthread_join(db->bg, NULL);
    }
    while (db->wal) {
        db_wal *next = db->wal->older;
        wal_close(db->wal->w);
        free(db->wal);
        db->wal = next;
    }
    if (atomic_load(&db->vd.current))
        ver_domain_destroy(&db->vd);
    if (db->lock_fd >= 0)
        close(db->lock_fd);
    pthread_mutex_destroy(&db->wlock);
    pthread_mutex_destroy(&db->maint);
    pthread_mutex_destroy(&db->bg_lock);
    pthread_cond_destroy(&db->bg_cond);
    free(db->dir);
    free(db);
}

int kv_open(const char *dir, const kv_options *opts, kv_db **out)
{
    if (!out)
        return KV_EINVAL;
    *out = NULL;
    if (!dir || !*dir)
        return KV_EINVAL;
    kv_options o;
    kv_options_init(&o);
    if (opts)
        o = *opts;
    if (check_options(&o) != KV_OK)
        return KV_EINVAL;

    uint64_t t0 = db_now_ns();
    /* Cache-line aligned, as the readers' stripes inside it are declared:
     * from calloc's 16-byte alignment each stripe would straddle two lines
     * and share one with its neighbour, another thread's. */
    size_t db_bytes = (sizeof(kv_db) + 63) & ~(size_t)63;
    kv_db *db = aligned_alloc(64, db_bytes);
    if (!db)
        return KV_ENOMEM;
    memset(db, 0, db_bytes);
    db->opts = o;
    db->readonly = (o.flags & KV_READONLY) != 0;
    db->lock_fd = -1;
    db->dir = strdup(dir);
    pthread_mutex_init(&db->wlock, NULL);
    pthread_mutex_init(&db->maint, NULL);
    pthread_mutex_init(&db->bg_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&db->bg_cond, &ca);
    pthread_condattr_destroy(&ca);

    int rc = KV_ENOMEM, err = 0;
    uint64_t *wal_ids = NULL;
    size_t nwal = 0;
    run *base = NULL;
    ver_buf *active = NULL;
    buf *b = NULL;
    if (!db->dir)
        goto fail;

    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT) {
            rc = db_io_error(db, -errno);
            goto fail;
        }
        if (db->readonly || !(o.flags & KV_CREATE)) {
            rc = KV_NOTFOUND;
            goto fail;
        }
        int mrc = os_mkdir(dir);
        if (mrc < 0) {
            rc = db_io_error(db, mrc);
            goto fail;
        }
    } else if (!S_ISDIR(st.st_mode)) {
        rc = KV_EINVAL;
        goto fail;
    }
    if ((rc = take_lock(db)) != KV_OK)
        goto fail;

    uint64_t max_id = 0;
    int has_files = 0;
    int lrc = list_files(dir, &wal_ids, &nwal, &max_id, &has_files);
    if (lrc < 0) {
        rc = lrc == -ENOMEM ? KV_ENOMEM : db_io_error(db, lrc);
        goto fail;
    }
    rc = manifest_read(dir, &db->man, &err);
    if (rc == KV_NOTFOUND && has_files) {
        rc = KV_ECORRUPT; /* data files without the manifest naming them */
        goto fail;
    }
    int fresh = rc == KV_NOTFOUND;
    if (rc == KV_EIO)
        db_io_error(db, -err);
    if (rc != KV_OK && !fresh)
        goto fail;
    if (!fresh && db->man.next_id <= max_id)
        db->man.next_id = max_id + 1;

    if (!fresh && db->man.snapshot_id) {
        char name[64];
        uint64_t bytes;
        manifest_snap_name(db->man.snapshot_id, name);
        rc = snap_load(dir, name, &base, &db->snap_seq, &bytes, &err);
        if (rc == KV_EIO)
            db_io_error(db, -err);
        if (rc != KV_OK)
            goto fail;
        atomic_store(&db->snapshot_bytes, bytes);
    } else if ((rc = run_new_empty(&base)) != KV_OK) {
        goto fail;
    }
    atomic_store(&db->live_keys, base->n);
    update_fold_threshold(db, base->n);

    rc = KV_ENOMEM;
    if (buf_new(&b) != KV_OK)
        goto fail;
    buf_set_grace(b, db_grace, db);
    /* Replay fills the buffer in log order, which for random keys makes
     * every ordered insert a walk from the top: order it once at the end. */
    buf_defer_order(b);
    if (!(active = ver_buf_new(b)))
        goto fail;
    b = NULL;
    ver *v = ver_new(active, NULL, base, 0); /* replay fills active; see below */
    if (!v)
        goto fail;
    ver_buf_unref(active);
    run_unref(base);
    active = NULL;
    base = NULL;
    ver_domain_init(&db->vd, v);

    if (fresh) {
        rc = db->readonly ? KV_OK : create_fresh(db);
    } else {
        db->replaying = 1;
        rc = recover_wals(db, wal_ids, nwal);
        db->replaying = 0;
    }
    if (rc == KV_OK)
        rc = finish_replay(db);
    if (rc != KV_OK)
        goto fail;
    /* No reader exists yet. Replay put the writes above the snapshot's seq
     * into the active buffer; with none, the next write is the first. */
    {
        ver *cur = ver_current(&db->vd);
        cur->active_from = buf_writes(cur->active->b) ? db->snap_seq
                                                      : atomic_load(&db->visible_seq);
    }
    if (!db->readonly) {
        remove_leftovers(db);
        if (pthread_create(&db->bg, NULL, bg_main, db) != 0) {
            rc = KV_ENOMEM;
            goto fail;
        }
        db->bg_running = 1;
    }
    free(wal_ids);
    atomic_store(&db->recovery_ns, db_now_ns() - t0);
    *out = db;
    return KV_OK;
fail:;
    /* No handle is left to ask kv_errno, so a KV_EIO leaves its errno in
     * errno, set after the cleanup that could overwrite it. */
    int cause = atomic_load(&db->last_errno);
    free(wal_ids);
    if (b)
        buf_free(b);
    ver_buf_unref(active);
    run_unref(base);
    db_destroy(db);
    if (rc == KV_EIO)
        errno = cause ? cause : EIO;
    return rc;
}

/* ---- Maintenance ------------------------------------------------------ */

/* Wait until every write up to seq is visible (its commit finished), or the
 * handle failed. Only maintenance waits here, never a reader. */
static int wait_visible(kv_db *db, uint64_t seq)
{
    while (atomic_load(&db->visible_seq) < seq) {
        if (atomic_load(&db->failed))
            return KV_EIO;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return KV_OK;
}

/* Freeze the active buffer; maint and wlock held. Returns the frozen seq. */
static int freeze_active(kv_db *db, uint64_t *frozen_seq)
{
    buf *b;
    if (buf_new(&b) != KV_OK)
        return KV_ENOMEM;
    buf_set_grace(b, db_grace, db);
    /* The new buffer's table starts small and grows with its keys: every
     * get probes it first, so a table sized for a whole fold up front would
     * cost each get a cache miss while the buffer is nearly empty. */
    ver_buf *nb = ver_buf_new(b);
    if (!nb) {
        buf_free(b);
        return KV_ENOMEM;
    }
    ver *cur = ver_current(&db->vd);
    /* Every write appended so far was applied under wlock, to the buffer
     * now frozen: the new active buffer gets only later seqs. */
    *frozen_seq = wal_last_seq(db->wal->w);
    ver *v = ver_new(nb, cur->active, cur->base, *frozen_seq);
    ver_buf_unref(nb);
    if (!v)
        return KV_ENOMEM;
    ver_publish(&db->vd, v);
    return KV_OK;
}

/* Replace the current version's frozen buffer and base; maint held. */
static int publish_base(kv_db *db, run *base)
{
    pthread_mutex_lock(&db->wlock);
    ver *cur = ver_current(&db->vd);
    ver *v = ver_new(cur->active, NULL, base, cur->active_from);
    if (!v) {
        pthread_mutex_unlock(&db->wlock);
        return KV_ENOMEM;
    }
    ver_publish(&db->vd, v);
    update_fold_threshold(db, base->n);
    pthread_mutex_unlock(&db->wlock);
    return KV_OK;
}

/* Merge the frozen buffer (if any) into a new base and publish it; maint
 * held. */
static int fold_frozen(kv_db *db, uint64_t frozen_seq)
{
    ver *cur = ver_current(&db->vd);
    if (!cur->frozen)
        return KV_OK;
    int rc = wait_visible(db, frozen_seq);
    if (rc != KV_OK)
        return rc;
    uint64_t t0 = db_now_ns();
    run *nb;
    rc = run_merge(cur->base, cur->frozen->b, frozen_seq, &nb);
    if (rc != KV_OK)
        return rc;
    rc = publish_base(db, nb);
    run_unref(nb);
    if (rc != KV_OK)
        return rc;
    atomic_store(&db->last_rebuild_ns, db_now_ns() - t0);
    atomic_fetch_add(&db->rebuilds, 1);
    ver_reclaim(&db->vd);
    return KV_OK;
}

static int fold_locked(kv_db *db)
{
    uint64_t seq;
    pthread_mutex_lock(&db->wlock);
    if (buf_writes(ver_current(&db->vd)->active->b) == 0) {
        pthread_mutex_unlock(&db->wlock);
        return KV_OK;
    }
    int rc = freeze_active(db, &seq);
    pthread_mutex_unlock(&db->wlock);
    return rc == KV_OK ? fold_frozen(db, seq) : rc;
}

int kv_rebuild_index(kv_db *db)
{
    if (!db)
        return KV_EINVAL;
    if (db->readonly)
        return KV_OK;
    if (atomic_load(&db->failed))
        return KV_EIO;
    pthread_mutex_lock(&db->maint);
    int rc = fold_locked(db);
    pthread_mutex_unlock(&db->maint);
    /* An explicit rebuild settles the database: the blocks the old base
     * and buffer leave in the pool go back to the system now rather than
     * after the background thread's idle timeout. */
    os_big_trim(0);
    return rc;
}

/*
 * Write the whole state as a new snapshot and retire the WALs it covers.
 * Steps: freeze the buffer and start a new WAL (the old one synced first;
 * a retry of a failed snapshot with nothing written since keeps the empty
 * WAL that one started); fold; write the snapshot file; point the manifest
 * at it and the new WAL; delete what the manifest no longer names; serve
 * reads from the new file so the heap copies of values are freed. A
 * failure before the manifest is replaced leaves the previous snapshot and
 * every WAL in place.
 */
static int snapshot_locked(kv_db *db, int force)
{
    char name[64], path[4096];
    int rc, err = 0;
    uint64_t t0 = db_now_ns();

    pthread_mutex_lock(&db->wlock);
    uint64_t last = wal_last_seq(db->wal->w);
    if (!force && last == db->snap_seq) {
        pthread_mutex_unlock(&db->wlock);
        return KV_OK;
    }
    rc = wal_sync(db->wal->w, &err);
    if (rc != KV_OK) {
        pthread_mutex_unlock(&db->wlock);
        return db_fail(db, KV_EIO, err);
    }
    uint64_t wal_id = db->wal->id;
    int retry_same_wal = wal_id != db->man.wal_id && wal_id == db->snap_wal_id &&
                         last == db->snap_wal_after;
    if (!retry_same_wal) {
        wal_id = db->man.next_id++;
        wal *nw;
        manifest_wal_name(wal_id, name);
        rc = wal_create(db->dir, name, last + 1, &nw);
        if (rc != KV_OK) {
            pthread_mutex_unlock(&db->wlock);
            return rc == KV_EIO ? db_io_error(db, -wal_last_errno()) : rc;
        }
        db_wal *dw = db_wal_new(db, nw, wal_id);
        if (!dw) {
            wal_close(nw);
            pthread_mutex_unlock(&db->wlock);
            return KV_ENOMEM;
        }
        dw->older = db->wal;
        db->wal = dw;
        free_idle_wals(db);
        db->snap_wal_id = wal_id;
        db->snap_wal_after = last;
    }
    uint64_t snap_id = db->man.next_id++;
    uint64_t frozen_seq = last;
    if (buf_writes(ver_current(&db->vd)->active->b) != 0)
        rc = freeze_active(db, &frozen_seq);
    pthread_mutex_unlock(&db->wlock);
    if (rc != KV_OK)
        return rc;
    if ((rc = fold_frozen(db, last)) != KV_OK)
        return rc;

    run *base = ver_current(&db->vd)->base; /* stable: only maint replaces it */
    uint64_t bytes;
    manifest_snap_name(snap_id, name);
    rc = snap_write(db->dir, name, base, last, &bytes, &err);
    if (rc != KV_OK)
        return rc == KV_EIO ? db_io_error(db, -err) : rc;

    manifest m = db->man;
    uint64_t old_snap = m.snapshot_id, old_wal = m.wal_id;
    m.snapshot_id = snap_id;
    m.wal_id = wal_id;
    rc = manifest_write(db->dir, &m, &err);
    if (rc != KV_OK) {
        /* The rename may have landed before the failure (a failed directory
         * fsync): then the manifest on disk names the new snapshot, which
         * must stay. Either manifest opens to the same data. */
        manifest on_disk;
        int rerr = 0;
        if (manifest_read(db->dir, &on_disk, &rerr) == KV_OK && on_disk.snapshot_id != snap_id) {
            path_join(path, sizeof path, db->dir, name);
            os_unlink(path);
        }
        return rc == KV_EIO ? db_io_error(db, -err) : rc;
    }
    pthread_mutex_lock(&db->wlock);
    db->man.snapshot_id = snap_id;
    db->man.wal_id = wal_id;
    db->snap_seq = last;
    pthread_mutex_unlock(&db->wlock);
    atomic_store(&db->snapshot_bytes, bytes);

    if (old_snap) {
        manifest_snap_name(old_snap, name);
        path_join(path, sizeof path, db->dir, name);
        os_unlink(path);
    }
    for (uint64_t id = old_wal; id < wal_id; id++) {
        manifest_wal_name(id, name);
        path_join(path, sizeof path, db->dir, name);
        os_unlink(path);
    }

    /* Serve the base from the file just written: values leave the heap. */
    run *mapped;
    uint64_t seq_check;
    manifest_snap_name(snap_id, name);
    if (snap_load(db->dir, name, &mapped, &seq_check, &bytes, &err) == KV_OK) {
        publish_base(db, mapped);
        run_unref(mapped);
        ver_reclaim(&db->vd);
    }
    atomic_store(&db->last_snapshot_ns, db_now_ns() - t0);
    atomic_fetch_add(&db->snapshots, 1);
    return KV_OK;
}

static int maintenance_entry(kv_db *db)
{
    if (!db)
        return KV_EINVAL;
    if (db->readonly)
        return KV_EREADONLY;
    if (atomic_load(&db->failed))
        return KV_EIO;
    return KV_OK;
}

int kv_snapshot(kv_db *db)
{
    int rc = maintenance_entry(db);
    if (rc != KV_OK)
        return rc;
    pthread_mutex_lock(&db->maint);
    rc = snapshot_locked(db, 0);
    pthread_mutex_unlock(&db->maint);
    return rc;
}

int kv_compact(kv_db *db)
{
    int rc = maintenance_entry(db);
    if (rc != KV_OK)
        return rc;
    /* A snapshot rewrites only live values; serving from it frees every
     * heap block that held overwritten or deleted ones. */
    pthread_mutex_lock(&db->maint);
    rc = snapshot_locked(db, 1);
    pthread_mutex_unlock(&db->maint);
    if (rc == KV_OK)
        atomic_fetch_add(&db->compactions, 1);
    return rc;
}

int kv_sync(kv_db *db)
{
    if (!db)
        return KV_EINVAL;
    if (db->readonly)
        return KV_OK;
    if (atomic_load(&db->failed))
        return KV_EIO;
    int err = 0;
    db_wal *dw = wal_hold(db);
    int rc = wal_sync(dw->w, &err);
    wal_drop(dw);
    return rc == KV_OK ? KV_OK : db_fail(db, KV_EIO, err);
}

int kv_warmup(kv_db *db)
{
    if (!db)
        return KV_EINVAL;
    /* A counted reference, not a pin: touching every page takes long, and a
     * grace period must not wait for it. */
    ver *v = ver_acquire(&db->vd);
    const run *r = v->base;
    volatile uint64_t sink = 0;
    /* Touch one word per page of keys, references and values. */
    for (uint64_t i = 0; i < r->n; i += 4096 / sizeof(uint64_t))
        sink += r->keys[i];
    for (uint64_t i = 0; r->vrefs && i < r->n; i += 4096 / sizeof(run_vref))
        sink += r->vrefs[i].off;
    for (uint32_t s = 0; s < r->nsegs; s++) {
        const volatile uint8_t *p = r->segs[s]->data;
        for (uint64_t off = 0; off < r->segs[s]->len; off += 4096)
            sink += p[off];
    }
    (void)sink;
    ver_release(&db->vd, v);
    return KV_OK;
}

/* ---- Background thread ------------------------------------------------ */

static void deadline_after(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *bg_main(void *arg)
{
    kv_db *db = arg;
    uint64_t now = db_now_ns();
    uint64_t next_sync = now + (uint64_t)db->opts.sync_interval_ms * 1000000u;
    uint64_t next_snap = now + (uint64_t)db->opts.auto_snapshot_secs * 1000000000u;
    uint64_t snap_backoff = 0, snap_retry_at = 0; /* see SNAP_BACKOFF_MIN_NS */
    uint64_t tick_ms = 100;
    if (db->opts.sync == KV_SYNC_NORMAL && db->opts.sync_interval_ms < tick_ms)
        tick_ms = db->opts.sync_interval_ms;

    pthread_mutex_lock(&db->bg_lock);
    while (!db->bg_stop) {
        if (!db->bg_kick) {
            struct timespec ts;
            deadline_after(&ts, tick_ms);
            pthread_cond_timedwait(&db->bg_cond, &db->bg_lock, &ts);
        }
        db->bg_kick = 0;
        if (db->bg_stop)
            break;
        pthread_mutex_unlock(&db->bg_lock);

        if (!atomic_load(&db->failed)) {
            now = db_now_ns();
            pthread_mutex_lock(&db->maint);
            if (db->opts.sync == KV_SYNC_NORMAL && now >= next_sync) {
                int err = 0;
                if (wal_sync(db->wal->w, &err) != KV_OK)
                    db_fail(db, KV_EIO, err);
                next_sync = now + (uint64_t)db->opts.sync_interval_ms * 1000000u;
            }
            if (pending_writes(ver_current(&db->vd)) >= db->fold_threshold)
                fold_locked(db);
            int snap = db->opts.wal_max_bytes && wal_bytes(db->wal->w) >= db->opts.wal_max_bytes;
            if (db->opts.auto_snapshot_secs && now >= next_snap) {
                snap = 1;
                next_snap = now + (uint64_t)db->opts.auto_snapshot_secs * 1000000000u;
            }
            if (snap && now >= snap_retry_at && !atomic_load(&db->failed)) {
                if (snapshot_locked(db, 0) == KV_OK) {
                    snap_backoff = 0;
                } else {
                    snap_backoff = snap_backoff ? snap_backoff * 2 : SNAP_BACKOFF_MIN_NS;
                    if (snap_backoff > SNAP_BACKOFF_MAX_NS)
                        snap_backoff = SNAP_BACKOFF_MAX_NS;
                    snap_retry_at = db_now_ns() + snap_backoff;
                }
            }
            pthread_mutex_unlock(&db->maint);
        }
        ver_reclaim(&db->vd);
        os_big_trim(POOL_IDLE_NS);
        pthread_mutex_lock(&db->bg_lock);
    }
    pthread_mutex_unlock(&db->bg_lock);
    return NULL;
}

/* ---- Close, errors, statistics ------------------------------------------ */

int kv_close(kv_db *db)
{
    if (!db)
        return KV_OK;
    int rc = KV_OK;
    if (db->bg_running) {
        pthread_mutex_lock(&db->bg_lock);
        db->bg_stop = 1;
        pthread_cond_signal(&db->bg_cond);
        pthread_mutex_unlock(&db->bg_lock);
        pthread_join(db->bg, NULL);
        db->bg_running = 0;
    }
    if (!db->readonly && db->wal) {
        if (atomic_load(&db->failed)) {
            rc = KV_EIO;
        } else {
            int err = 0;
            if (wal_sync(db->wal->w, &err) != KV_OK)
                rc = db_fail(db, KV_EIO, err);
        }
    }
    db_destroy(db);
    os_big_trim(0); /* the pooled blocks this handle's buffers and runs left */
    return rc;
}

int kv_errno(const kv_db *db)
{
    return db ? atomic_load(&((kv_db *)db)->last_errno) : 0;
}

int kv_write_status(const kv_db *db)
{
    if (!db)
        return KV_EINVAL;
    if (db->readonly)
        return KV_EREADONLY;
    return atomic_load(&((kv_db *)db)->failed) ? KV_EIO : KV_OK;
}

int kv_stats_get(kv_db *db, kv_stats *out)
{
    if (!db || !out)
        return KV_EINVAL;
    memset(out, 0, sizeof *out);
    ver_hold h = ver_enter(&db->vd);
    const ver *v = ver_current(&db->vd);
    const run *r = v->base;
    out->keys = atomic_load(&db->live_keys);
    out->pending_writes = pending_writes(v);
    out->memory_bytes = sizeof *db + buf_memory(v->active->b) + run_memory(r) +
                        (v->frozen ? buf_memory(v->frozen->b) : 0) + os_big_pooled();
    out->index_models = rmi_leaf_count(r->index);
    out->index_max_error = rmi_max_error(r->index);
    ver_leave(h);

    uint64_t probed = 0, lookups = 0;
    for (unsigned i = 0; i < VER_STRIPES; i++) {
        ver_stripe *s = &db->vd.stripes[i];
        out->gets += atomic_load_explicit(&s->buffer_gets, memory_order_relaxed) +
                     atomic_load_explicit(&s->lookups, memory_order_relaxed);
        out->scans += atomic_load_explicit(&s->scans, memory_order_relaxed);
        out->index_fallbacks += atomic_load_explicit(&s->fallbacks, memory_order_relaxed);
        probed += atomic_load_explicit(&s->probed, memory_order_relaxed);
        lookups += atomic_load_explicit(&s->lookups, memory_order_relaxed);
    }
    out->index_avg_probe = lookups ? (double)probed / (double)lookups : 0.0;
    out->puts = atomic_load(&db->puts);
    out->deletes = atomic_load(&db->deletes);
    out->rebuilds = atomic_load(&db->rebuilds);
    out->snapshots = atomic_load(&db->snapshots);
    out->compactions = atomic_load(&db->compactions);
    out->last_rebuild_ns = atomic_load(&db->last_rebuild_ns);
    out->last_snapshot_ns = atomic_load(&db->last_snapshot_ns);
    out->recovery_ns = atomic_load(&db->recovery_ns);
    out->snapshot_bytes = atomic_load(&db->snapshot_bytes);
    out->wal_syncs = atomic_load(&db->retired_wal_syncs);
    if (!db->readonly) {
        db_wal *dw = wal_hold(db);
        out->wal_bytes = wal_bytes(dw->w);
        out->wal_syncs += wal_sync_count(dw->w);
        wal_drop(dw);
    }
    out->simd = probe_best_name();
    return KV_OK;
}
