/*
 * kyro.h — KyroDB, an embeddable key-value store with a learned index.
 *
 * Keys are uint64_t (every value, 0 and UINT64_MAX included); values are
 * byte strings of 0 to KV_MAX_VALUE bytes. A database is a directory owned
 * by one kv_db handle at a time.
 *
 * Conventions
 *   - Every function that can fail returns int: KV_OK (0) on success, a
 *     positive code for an expected outcome (KV_NOTFOUND), a negative code
 *     for an error. The library never prints.
 *   - Ownership of every returned pointer is stated beside the function.
 *   - Threads: a kv_db may be used from any number of threads at once,
 *     kv_close aside. Reads (kv_get, kv_get_alloc, views, iterators) take no
 *     lock and never wait for writers or background work. Writes serialise
 *     among themselves. A kv_view, kv_iter or kv_batch is used by one thread
 *     at a time.
 *
 * Caveats
 *   - Views and iterators must be closed before kv_close.
 *   - A long-lived view keeps the memory of the state it sees alive.
 *   - After an I/O error on the write-ahead log the handle refuses further
 *     writes (KV_EIO); reopen the database to continue.
 */
#ifndef KYRO_H
#define KYRO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KYRO_VERSION_MAJOR 0
#define KYRO_VERSION_MINOR 1
#define KYRO_VERSION_PATCH 0
#define KYRO_VERSION "0.1.0"

/* The library's KYRO_VERSION at run time. Static string; any thread. */
const char *kv_version(void);

typedef struct kv_db kv_db; /* opaque; one per open directory */

/* Status codes. */
enum {
    KV_OK = 0,
    KV_NOTFOUND = 1,   /* key absent; iterator exhausted; directory missing */
    KV_EINVAL = -1,    /* bad argument: NULL handle, NULL out-pointer, bad options */
    KV_ENOMEM = -2,    /* allocation failed */
    KV_EIO = -3,       /* an I/O call failed (disk full, EIO, ...); see kv_errno */
    KV_ECORRUPT = -4,  /* on-disk data failed a checksum or format check */
    KV_EBUSY = -5,     /* the directory is already open (this process or another) */
    KV_ETOOBIG = -6,   /* value longer than KV_MAX_VALUE */
    KV_ERANGE = -7,    /* caller's buffer too small; *len holds the size needed */
    KV_EREADONLY = -8, /* write on a database opened with KV_READONLY */
    KV_EVERSION = -9   /* files written by an incompatible format version */
};
#define KV_MAX_VALUE ((size_t)64 << 20) /* 64 MiB */

/* Static text for any status code; "unknown error" for anything else. */
const char *kv_strerror(int rc);
/* The errno behind the latest KV_EIO on this handle, 0 if none (or db NULL). */
int kv_errno(const kv_db *db);
/* Whether the handle takes writes, without attempting one: KV_OK;
 * KV_EREADONLY if it was opened KV_READONLY; KV_EIO once a failed log write
 * or sync has made it refuse every write (kv_errno names the errno; reopen
 * to write again); KV_EINVAL if db is NULL. Takes no lock; any thread. */
int kv_write_status(const kv_db *db);

/* ---- Options -------------------------------------------------------- */

typedef enum {
    KV_SYNC_FULL = 0,   /* a write is durable (fdatasync'd) when it returns;
                           concurrent writers share one sync (group commit) */
    KV_SYNC_NORMAL = 1, /* handed to the OS when it returns (survives a process
                           crash); synced in the background every sync_interval_ms */
    KV_SYNC_OFF = 2     /* buffered; durable only after kv_sync() or kv_close() */
} kv_sync_mode;

#define KV_CREATE 0x1u   /* create the directory and an empty database if missing */
#define KV_READONLY 0x2u /* no writes; never modifies any file */
#define KV_RECOVER 0x4u  /* on a corrupt WAL record, keep the valid prefix instead of failing */

typedef struct kv_options {
    uint32_t flags;              /* KV_CREATE | KV_READONLY | KV_RECOVER; default KV_CREATE */
    kv_sync_mode sync;           /* default KV_SYNC_FULL */
    uint32_t sync_interval_ms;   /* KV_SYNC_NORMAL period; default 1000 */
    uint64_t wal_max_bytes;      /* snapshot automatically past this WAL size; 0 = never;
                                    default 256 MiB */
    uint32_t auto_snapshot_secs; /* snapshot automatically this often; 0 = never; default 0 */
    uint64_t rebuild_appends;    /* fold the write buffer into the learned index after this
                                    many writes; 0 = library chooses; default 0 */
    uint32_t reserved[8];        /* zero; room to grow without breaking the ABI */
} kv_options;

/* Fill every field of *opts with its default. */
void kv_options_init(kv_options *opts);

/* ---- Open and close ------------------------------------------------- */

/*
 * Open (or with KV_CREATE create) the database in directory dir.
 * opts == NULL means defaults. On KV_OK *out is a new handle; otherwise *out
 * is set to NULL. Recovers from any crash (see README, "Guarantees").
 * Returns KV_NOTFOUND if dir is missing and KV_CREATE is not set, KV_EBUSY if
 * another handle (in any process) has it open for writing, KV_ECORRUPT for a
 * damaged snapshot, manifest or WAL (KV_RECOVER keeps a WAL's valid prefix),
 * KV_EVERSION for files of an unknown format version. On KV_EIO, errno holds
 * the errno of the failed call (there is no handle to ask kv_errno).
 */
int kv_open(const char *dir, const kv_options *opts, kv_db **out);

/*
 * Make every write durable, stop background work, free the handle.
 * kv_close(NULL) returns KV_OK. The handle is gone afterwards even when an
 * error is returned. No other call on the handle may run concurrently.
 */
int kv_close(kv_db *db);

/* ---- Point operations ---------------------------------------------- */

/* Insert or overwrite. val may be NULL only when len is 0. */
int kv_put(kv_db *db, uint64_t key, const void *val, size_t len);

/*
 * Copy the value of key into buf (cap bytes). Absent: KV_NOTFOUND. Too small:
 * nothing is copied, *len is the size needed, KV_ERANGE. buf may be NULL when
 * cap is 0 (a size query).
 */
int kv_get(kv_db *db, uint64_t key, void *buf, size_t cap, size_t *len);

/* *val is a malloc'd copy (never NULL on KV_OK, even for 0 bytes); the
 * caller owns it and releases it with kv_free. */
int kv_get_alloc(kv_db *db, uint64_t key, void **val, size_t *len);

/* Remove key; removing an absent key returns KV_OK. */
int kv_delete(kv_db *db, uint64_t key);

/* Free memory returned by kv_get_alloc. NULL is allowed. */
void kv_free(void *p);

/* ---- Batches (atomic, all-or-nothing) ------------------------------ */

typedef struct kv_batch kv_batch;

/* A new empty batch, owned by the caller until kv_batch_free. */
int kv_batch_new(kv_batch **out);
/* Record a put (the value is copied) or a delete in the batch. */
int kv_batch_put(kv_batch *b, uint64_t key, const void *val, size_t len);
int kv_batch_delete(kv_batch *b, uint64_t key);
/* Empty the batch for reuse. */
void kv_batch_clear(kv_batch *b);
/*
 * Apply the batch as one unit: after a crash it is there whole or not at
 * all, and no reader ever sees part of it. Later operations on one key win.
 * The batch is unchanged and still owned by the caller.
 */
int kv_batch_commit(kv_db *db, kv_batch *b);
/* Free a batch; NULL is allowed. */
void kv_batch_free(kv_batch *b);

/* ---- Read views and range scans ------------------------------------ */

typedef struct kv_view kv_view; /* a consistent point-in-time state */

/* A view of exactly the writes that returned before this call. */
int kv_view_open(kv_db *db, kv_view **out);
/* Zero-copy: *val points into memory valid and unchanged until
 * kv_view_close. *val may be NULL for a 0-byte value. */
int kv_view_get(kv_view *v, uint64_t key, const void **val, size_t *len);
/* n gets on one view at once: rcs[i] gets what kv_view_get(v, keys[i],
 * &vals[i], &lens[i]) returns (KV_OK or KV_NOTFOUND), and vals[i] and
 * lens[i] what it sets them to. The lookups are interleaved, so their
 * cache misses overlap: for keys spread over a large database it answers
 * sooner than n calls of kv_view_get. KV_OK, or KV_EINVAL (v NULL, or an
 * array NULL with n > 0: nothing is written). */
int kv_view_get_many(kv_view *v, size_t n, const uint64_t *keys, const void **vals, size_t *lens,
                     int *rcs);
void kv_view_close(kv_view *v);

typedef struct kv_iter kv_iter;

/* Iterate live keys in [lo, hi] (inclusive) in ascending order over a view
 * of its own. lo > hi yields nothing. */
int kv_iter_open(kv_db *db, uint64_t lo, uint64_t hi, kv_iter **out);
/* Iterate over an existing view; the view must outlive the iterator. */
int kv_view_iter_open(kv_view *v, uint64_t lo, uint64_t hi, kv_iter **out);
/* KV_OK with the next pair (*val valid until the next call on the iterator
 * or its close); KV_NOTFOUND at the end and on every later call. */
int kv_iter_next(kv_iter *it, uint64_t *key, const void **val, size_t *len);
void kv_iter_close(kv_iter *it);

/* ---- Maintenance ---------------------------------------------------- */

int kv_sync(kv_db *db);          /* make every write so far durable */
int kv_snapshot(kv_db *db);      /* write a snapshot of the current state, retire the WAL it covers */
int kv_compact(kv_db *db);       /* drop space held by overwritten and deleted values */
int kv_rebuild_index(kv_db *db); /* fold pending writes into the learned index and retrain it now */
int kv_warmup(kv_db *db);        /* fault in the index and values so first reads are fast */

/* ---- Statistics ----------------------------------------------------- */

typedef struct kv_stats {
    uint64_t keys;           /* live keys */
    uint64_t pending_writes; /* writes not yet folded into the learned index */
    uint64_t wal_bytes;      /* current WAL size on disk */
    uint64_t snapshot_bytes; /* current snapshot size on disk */
    uint64_t memory_bytes;   /* heap memory the database holds */
    uint64_t gets, puts, deletes, scans; /* operations since open */
    uint64_t index_models;    /* leaf models in the learned index */
    uint64_t index_max_error; /* largest leaf error bound, in positions */
    double index_avg_probe;   /* mean positions probed per index lookup since open */
    uint64_t index_fallbacks; /* lookups that left the model's error window */
    uint64_t rebuilds, snapshots, compactions;
    uint64_t wal_syncs; /* fdatasync calls on the WAL */
    uint64_t last_rebuild_ns, last_snapshot_ns, recovery_ns;
    const char *simd; /* probe kernel in use: "avx512", "avx2" or "scalar"; static string */
} kv_stats;

int kv_stats_get(kv_db *db, kv_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* KYRO_H */
