/*
 * db.h — the kv_db handle, shared by db.c (open, writes, maintenance),
 * read.c (gets, views, iterators) and batch.c. Nothing outside lib/ sees it.
 */
#ifndef KYRO_DB_H
#define KYRO_DB_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "kyro.h"
#include "manifest.h"
#include "version.h"
#include "wal.h"

/* A WAL a writer may still be committing on after a rotation: freed only
 * once no writer is in flight on it. */
typedef struct db_wal {
    wal *w;
    uint64_t id;
    atomic_int inflight;
    struct db_wal *older;
} db_wal;

struct kv_db {
    char *dir;
    kv_options opts;
    int readonly;
    int replaying; /* kv_open's log replay: live_keys is counted after it */
    int64_t replay_live_delta; /* see count_live_after_replay */
    int lock_fd;
    ver_domain vd;

    /* Writers: WAL append + buffer insert, and every version publish. */
    pthread_mutex_t wlock;
    atomic_uint writers;       /* threads inside db_write (see wal_set_writers) */
    db_wal *wal;               /* current (NULL when read-only) */
    manifest man;
    uint64_t snap_seq;         /* highest seq the live snapshot holds */
    atomic_uint_fast64_t visible_seq; /* readers see writes with seq <= this */
    atomic_uint_fast64_t live_keys;
    atomic_uint_fast64_t puts, deletes;
    atomic_int failed;         /* sticky: a WAL write or sync failed */
    atomic_int last_errno;

    /* Maintenance (folds, snapshots, compaction) is serialised by maint. */
    pthread_mutex_t maint;
    /* The WAL the latest snapshot started and the seq it starts after: if
     * that snapshot failed and nothing was written since, the retry takes
     * the same (empty) WAL instead of leaving one more behind. */
    uint64_t snap_wal_id, snap_wal_after;
    uint64_t fold_threshold;
    atomic_uint_fast64_t rebuilds, snapshots, compactions;
    atomic_uint_fast64_t last_rebuild_ns, last_snapshot_ns, recovery_ns;
    atomic_uint_fast64_t snapshot_bytes;
    atomic_uint_fast64_t retired_wal_syncs;

    /* Background thread: folds, automatic snapshots, KV_SYNC_NORMAL syncs. */
    pthread_t bg;
    int bg_running;
    pthread_mutex_t bg_lock;
    pthread_cond_t bg_cond;
    int bg_stop;
    int bg_kick;
};

/* The newest state of key in v's write buffers at seq (buf_get's answer):
 * the active buffer, unless nothing in it is visible at seq, then the
 * frozen one. */
static inline __attribute__((always_inline)) int
db_buffers_get(const ver *v, uint64_t seq, uint64_t key, const void **val, size_t *len)
{
    int s = seq > v->active_from ? buf_get(v->active->b, key, seq, val, len) : BUF_ABSENT;
    if (s == BUF_ABSENT && v->frozen)
        s = buf_get(v->frozen->b, key, seq, val, len);
    return s;
}

/* Newest state of key as seen through version v at sequence seq, newest
 * layer first; the get is counted on stripe st (the caller's own, its
 * ver_hold's). Forced inline, like everything below it on a get (see
 * rmi_find for why a get's instruction count matters). */
static inline __attribute__((always_inline)) int
db_lookup(const ver *v, uint64_t seq, uint64_t key, const void **val, size_t *len, ver_stripe *st)
{
    int s = db_buffers_get(v, seq, key, val, len);
    if (s != BUF_ABSENT) {
        ver_stat_add(st, &st->buffer_gets, 1);
        return s == BUF_VALUE ? KV_OK : KV_NOTFOUND;
    }
    size_t probed = 0;
    int fallback = 0;
    int rc = run_get(v->base, key, val, len, &probed, &fallback);
    ver_stat_lookup(st, probed, fallback);
    return rc;
}

/* Apply one batch payload (the WAL_BATCH encoding) to the active buffer at
 * seq; caller holds wlock (or is recovering). */
int db_apply_batch(kv_db *db, uint64_t seq, const uint8_t *payload, size_t len);

/* Append + apply + commit one WAL record; the whole write path. */
int db_write(kv_db *db, uint32_t type, uint64_t key, const void *val, size_t len,
             const uint8_t *batch, size_t batch_len);

/* Record an I/O error (-errno) on the handle; returns KV_EIO. */
int db_io_error(kv_db *db, int neg_errno);

static inline uint64_t db_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
