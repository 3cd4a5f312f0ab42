/*
 * compare.c — KyroDB against LMDB, RocksDB, LevelDB, SQLite and a plain
 * sorted array, same workloads, one process, one run.
 *
 * For each value size (16 and 100 bytes unless -v is given) each engine in
 * turn gets a fresh directory, is loaded, settled and warmed up; then the
 * timed phases run, in this order:
 *
 *   load      N random uint64 keys in random order, batches of 1000, no sync
 *   settle    untimed: what a user calls after a bulk load (KyroDB
 *             kv_rebuild_index + kv_warmup, RocksDB flush + compact_range,
 *             LevelDB compact_range, SQLite wal_checkpoint, LMDB nothing),
 *             then the same warm-up for all: one get of every key in key order;
 *             once every engine is loaded, sync(2), untimed
 *   get       random gets of present keys, 1 thread
 *   absent    random gets of absent keys, 1 thread
 *   scan100   100 consecutive keys from a random present key, 1 thread
 *   get 2T    random gets of present keys from 2 threads
 *   mixed     90% get / 10% overwrite (no sync), 1 thread
 *   durable   single puts of new keys with each engine's sync-on-commit
 *             setting (KyroDB KV_SYNC_FULL, LMDB default sync, RocksDB and
 *             LevelDB sync=true, SQLite WAL + synchronous=FULL), from 1 and
 *             from 8 threads, each for a fixed time (KyroDB's sync mode is
 *             per handle: it is closed and reopened with KV_SYNC_FULL)
 *
 * The sorted array (binary search over sorted keys, values in a parallel
 * array) answers the read phases only; it is the no-index baseline.
 *
 * Every value read (gets, scans, warm-up, mixed) is checked against the
 * value derived from its key; scans also check the keys and their order.
 * A mismatch or an engine error makes the exit status 1.
 *
 * All engines stay open together and every timed phase runs in rounds
 * (READ_ROUNDS for reads, WRITE_ROUNDS for the mixed and durable phases)
 * with the engines taking turns; each engine's best round counts
 * (the machine is shared: contention only ever slows a round). The read
 * phases go round-major (round 1 of each, then round 2 of each, ...), so
 * one phase's rounds are spread over the whole read part of the run. A read
 * round stops after N operations or ROUND_CAP seconds, whichever comes
 * first, so a slow engine cannot stretch the run; a rate is operations
 * done / wall time. The threads of a read round claim chunks of one
 * operation list as they go, so both stay busy until it is done. The
 * threads of every round but the durable ones are pinned: round r's
 * single thread to the (r mod CPUs)-th CPU the process may use, for every
 * engine alike (see run_phase). Durable rounds last --durable-secs /
 * WRITE_ROUNDS each.
 *
 * Beside the 1- and 2-thread get rows, in the same rounds, a multiply loop
 * that touches no memory runs on 1 and on 2 threads: its 2-thread scaling
 * says whether the machine gave the process two CPUs' time then. After
 * each read round a pointer chase through CHASE_MIB measures the memory
 * latency of each of two CPUs: this VM's vCPUs have spent minutes with
 * one of them reaching memory far slower than the other, which slows
 * every engine's turn on it and caps what two threads can add.
 *
 * The table gives ops/s per engine, KyroDB / best peer (peers: the other
 * engines), KyroDB / sorted array (the no-index baseline), and PASS/MISS
 * for the rows with a target. KyroDB's memory per key (kv_stats.memory_bytes,
 * and the RSS delta over open + load + settle, before and after malloc_trim)
 * is compared with 1.3 x (8 + value + 16) bytes.
 *
 *   compare [-n N] [-v BYTES] [-d DIR] [--engines LIST] [--csv] [--quick]
 *           [--durable-secs S] [--rounds]
 *
 * -n keys (default 2000000; --quick 200000), -v one value size instead of
 * both, -d parent of the data directories (default build/bench-data),
 * --engines comma list of kyrodb,lmdb,rocksdb,leveldb,sqlite,array,
 * --csv one line per row instead of the table, --quick small N and short
 * durable phases, --durable-secs seconds per engine per durable phase,
 * over all rounds (default 2), --rounds each round's rate (millions of
 * operations per second) on the progress line of its phase. Progress goes
 * to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <leveldb/c.h>
#include <lmdb.h>
#include <rocksdb/c.h>
#include <sqlite3.h>

#include "benchutil.h"
#include "kyro.h"

#define BATCH 1000
#define SCAN_LEN 100
#define DUR_THREADS 8
/* Each timed phase runs in rounds, the engines taking turns within a
 * round, and each engine keeps its best round: on a shared machine a
 * burst of someone else's work then slows one round of every engine
 * rather than all of one engine's measurement. The read phases get more
 * rounds than the write phases because their rounds are short (a fast
 * engine's lasts a few tenths of a second) and this machine's slow spells
 * have lasted a minute and more, longer than three read rounds take. A
 * read round stops after ROUND_CAP seconds even if its N operations are
 * not done, so the whole default run takes about 6 minutes on two cores. */
#define READ_ROUNDS 5
#define WRITE_ROUNDS 3
#define ROUND_CAP 0.7
#define WARM_CAP 4.0
/* Seconds of each multiply-loop round (multiply_loop). */
#define LOOP_SECS 0.3
/* The memory-latency chase (P_CHASE): its block, four times this
 * machine's 32 MB L3 so that nearly every load misses it, and its loads
 * per measurement (some 40-90 ms, twice: see memory_chase). */
#define CHASE_MIB 128
#define CHASE_STEPS 150000
/* Spare room past the value size in read buffers, so a wrong (longer)
 * value is caught as a length mismatch rather than truncated. */
#define BUF_SLACK 64
/* List positions a read-phase thread claims at a time. */
#define CHUNK 1024

/* ---- helpers ----------------------------------------------------------- */

static int value_ok(uint64_t key, const void *val, size_t len, size_t vsize, unsigned char *tmp)
{
    if (len != vsize)
        return 0;
    fill_value(key, tmp, vsize);
    return vsize == 0 || memcmp(val, tmp, vsize) == 0;
}

static void be64(unsigned char *p, uint64_t k)
{
    for (int i = 7; i >= 0; i--, k >>= 8)
        p[i] = (unsigned char)k;
}

static uint64_t from_be64(const void *q)
{
    const unsigned char *p = q;
    uint64_t k = 0;
    for (int i = 0; i < 8; i++)
        k = k << 8 | p[i];
    return k;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) != 0 && errno != ENOENT;
}

static void remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, res = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &res) != 2)
        res = 0;
    fclose(f);
    return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* ---- scan checking ----------------------------------------------------- */

/* What a scan from a present key must yield: the next keys of the sorted
 * set, each with its own value. Engines report every entry here. */
struct scan_chk {
    const uint64_t *expect;
    size_t nexpect;
    size_t vsize;
    size_t seen;
    uint64_t bad;
    unsigned char *tmp;
};

static void chk_entry(struct scan_chk *c, uint64_t key, const void *val, size_t len)
{
    if (c->seen >= c->nexpect || key != c->expect[c->seen] ||
        !value_ok(key, val, len, c->vsize, c->tmp))
        c->bad++;
    c->seen++;
}

/* ---- the engine interface ---------------------------------------------- */

/*
 * open: a fresh database in dir in load mode (writes not synced).
 * load: one batch, atomically where the engine has batches.
 * settle: the untimed post-load housekeeping a user would do.
 * durable: switch every later put to sync-on-commit.
 * topen/tclose: per-thread state, opened on the thread that uses it;
 *   readonly = no writes in this phase, so a long read snapshot is fine.
 * get: 0 found (value copied to buf, *len set), 1 absent, -1 error.
 * scan: report up to count entries from the first key >= start; -1 error.
 * put: one single put in the current mode.
 */
struct engine {
    const char *name;
    const char *id;
    void *(*open)(const char *dir, size_t n, size_t vsize);
    int (*load)(void *h, const uint64_t *keys, size_t n, size_t vsize, unsigned char *tmp);
    int (*settle)(void *h);
    int (*durable)(void *h);
    void (*close)(void *h);
    void *(*topen)(void *h, int readonly);
    void (*tclose)(void *t);
    int (*get)(void *t, uint64_t key, unsigned char *buf, size_t cap, size_t *len);
    int (*scan)(void *t, uint64_t start, int count, struct scan_chk *c);
    int (*put)(void *t, uint64_t key, const void *val, size_t len);
};

/* ---- KyroDB ------------------------------------------------------------ */

struct kyro {
    kv_db *db;
    char dir[4096];
    kv_batch *batch;
};

static void *ky_open(const char *dir, size_t n, size_t vsize)
{
    struct kyro *h = calloc(1, sizeof *h);
    kv_options o;
    int rc;
    (void)n;
    (void)vsize;
    if (h == NULL)
        return NULL;
    snprintf(h->dir, sizeof h->dir, "%s", dir);
    kv_options_init(&o);
    o.flags = KV_CREATE;
    o.sync = KV_SYNC_OFF;
    if ((rc = kv_open(dir, &o, &h->db)) != KV_OK || (rc = kv_batch_new(&h->batch)) != KV_OK) {
        fprintf(stderr, "compare: kyrodb open: %s\n", kv_strerror(rc));
        kv_close(h->db);
        free(h);
        return NULL;
    }
    return h;
}

static int ky_load(void *hp, const uint64_t *keys, size_t n, size_t vsize, unsigned char *tmp)
{
    struct kyro *h = hp;
    int rc;
    kv_batch_clear(h->batch);
    for (size_t i = 0; i < n; i++) {
        fill_value(keys[i], tmp, vsize);
        if ((rc = kv_batch_put(h->batch, keys[i], tmp, vsize)) != KV_OK)
            return -1;
    }
    return kv_batch_commit(h->db, h->batch) == KV_OK ? 0 : -1;
}

static int ky_settle(void *hp)
{
    struct kyro *h = hp;
    if (kv_rebuild_index(h->db) != KV_OK)
        return -1;
    return kv_warmup(h->db) == KV_OK ? 0 : -1;
}

/* The sync mode is fixed per handle, so durable mode is a reopen. The
 * snapshot first keeps the reopen from replaying the whole load WAL and
 * leaves no fold pending to run during the timed puts. */
static int ky_durable(void *hp)
{
    struct kyro *h = hp;
    kv_options o;
    int rc;
    if (kv_snapshot(h->db) != KV_OK)
        return -1;
    rc = kv_close(h->db);
    h->db = NULL;
    if (rc != KV_OK)
        return -1;
    kv_options_init(&o);
    o.flags = KV_CREATE;
    o.sync = KV_SYNC_FULL;
    return kv_open(h->dir, &o, &h->db) == KV_OK ? 0 : -1;
}

static void ky_close(void *hp)
{
    struct kyro *h = hp;
    int rc = kv_close(h->db);
    if (rc != KV_OK)
        fprintf(stderr, "compare: kv_close: %s\n", kv_strerror(rc));
    kv_batch_free(h->batch);
    free(h);
}

/* Engines whose handle is safe to share between threads need no
 * per-thread state. */
static void *shared_topen(void *hp, int readonly)
{
    (void)readonly;
    return hp;
}

static void shared_tclose(void *t) { (void)t; }

static int ky_get(void *t, uint64_t key, unsigned char *buf, size_t cap, size_t *len)
{
    int rc = kv_get(((struct kyro *)t)->db, key, buf, cap, len);
    if (rc == KV_OK)
        return 0;
    if (rc == KV_NOTFOUND)
        return 1;
    if (rc == KV_ERANGE)
        return 0; /* wrong length: the caller's check counts it */
    return -1;
}

static int ky_scan(void *t, uint64_t start, int count, struct scan_chk *c)
{
    kv_iter *it;
    uint64_t k;
    const void *v;
    size_t len;
    int rc = KV_OK;
    if (kv_iter_open(((struct kyro *)t)->db, start, UINT64_MAX, &it) != KV_OK)
        return -1;
    for (int i = 0; i < count && (rc = kv_iter_next(it, &k, &v, &len)) == KV_OK; i++)
        chk_entry(c, k, v, len);
    kv_iter_close(it);
    return rc == KV_OK || rc == KV_NOTFOUND ? 0 : -1;
}

static int ky_put(void *t, uint64_t key, const void *val, size_t len)
{
    return kv_put(((struct kyro *)t)->db, key, val, len) == KV_OK ? 0 : -1;
}

static uint64_t ky_memory(void *hp)
{
    kv_stats st;
    return kv_stats_get(((struct kyro *)hp)->db, &st) == KV_OK ? st.memory_bytes : 0;
}

/* Puts and WAL fdatasyncs so far: their ratio over a durable phase is how
 * many writers each group commit carried. */
static void ky_sync_counts(void *hp, uint64_t *puts, uint64_t *syncs)
{
    kv_stats st;
    *puts = *syncs = 0;
    if (kv_stats_get(((struct kyro *)hp)->db, &st) == KV_OK) {
        *puts = st.puts;
        *syncs = st.wal_syncs;
    }
}

/* ---- LMDB -------------------------------------------------------------- */

struct lm {
    MDB_env *env;
    MDB_dbi dbi;
};

struct lm_t {
    struct lm *h;
    MDB_txn *rtxn;
    MDB_cursor *cur;
    int stale; /* this thread wrote since rtxn began: renew to read it */
};

static void *lm_open(const char *dir, size_t n, size_t vsize)
{
    struct lm *h = calloc(1, sizeof *h);
    MDB_txn *txn;
    /* Room for the data several times over; the map is only reserved
     * address space, so generous costs nothing. */
    size_t map = (size_t)(n + 1000000) * (vsize + 96) * 4;
    if (h == NULL)
        return NULL;
    if (map < ((size_t)1 << 30))
        map = (size_t)1 << 30;
    mkdir(dir, 0755);
    /* MDB_NOTLS: read txns live in per-thread state of our own, and a
     * thread in the mixed phase holds one while it writes. MDB_NOSYNC only
     * for the load (the spec's "without sync"); durable mode clears it. */
    if (mdb_env_create(&h->env) != 0 || mdb_env_set_mapsize(h->env, map) != 0 ||
        mdb_env_set_maxreaders(h->env, 64) != 0 ||
        mdb_env_open(h->env, dir, MDB_NOTLS | MDB_NOSYNC, 0644) != 0 ||
        mdb_txn_begin(h->env, NULL, 0, &txn) != 0)
        goto fail;
    /* MDB_INTEGERKEY: native uint64 compare, LMDB's fastest key type. */
    if (mdb_dbi_open(txn, NULL, MDB_INTEGERKEY, &h->dbi) != 0 || mdb_txn_commit(txn) != 0)
        goto fail;
    return h;
fail:
    fprintf(stderr, "compare: lmdb open failed\n");
    if (h->env)
        mdb_env_close(h->env);
    free(h);
    return NULL;
}

static int lm_load(void *hp, const uint64_t *keys, size_t n, size_t vsize, unsigned char *tmp)
{
    struct lm *h = hp;
    MDB_txn *txn;
    if (mdb_txn_begin(h->env, NULL, 0, &txn) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        uint64_t k = keys[i];
        MDB_val mk = {8, &k}, mv = {vsize, tmp};
        fill_value(k, tmp, vsize);
        if (mdb_put(txn, h->dbi, &mk, &mv, 0) != 0) {
            mdb_txn_abort(txn);
            return -1;
        }
    }
    return mdb_txn_commit(txn) == 0 ? 0 : -1;
}

static int lm_settle(void *hp)
{
    (void)hp;
    return 0;
}

static int lm_durable(void *hp)
{
    struct lm *h = hp;
    if (mdb_env_set_flags(h->env, MDB_NOSYNC, 0) != 0)
        return -1;
    return mdb_env_sync(h->env, 1) == 0 ? 0 : -1;
}

static void lm_close(void *hp)
{
    struct lm *h = hp;
    mdb_env_close(h->env);
    free(h);
}

static void *lm_topen(void *hp, int readonly)
{
    struct lm_t *t = calloc(1, sizeof *t);
    (void)readonly;
    if (t == NULL)
        return NULL;
    t->h = hp;
    if (mdb_txn_begin(t->h->env, NULL, MDB_RDONLY, &t->rtxn) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

static void lm_tclose(void *tp)
{
    struct lm_t *t = tp;
    if (t->cur)
        mdb_cursor_close(t->cur);
    mdb_txn_abort(t->rtxn);
    free(t);
}

/* A long-lived read txn, renewed only after this thread's own writes: the
 * cheap read path LMDB's documentation recommends (reset/renew). */
static int lm_fresh(struct lm_t *t)
{
    if (!t->stale)
        return 0;
    mdb_txn_reset(t->rtxn);
    if (mdb_txn_renew(t->rtxn) != 0)
        return -1;
    if (t->cur && mdb_cursor_renew(t->rtxn, t->cur) != 0)
        return -1;
    t->stale = 0;
    return 0;
}

static int lm_get(void *tp, uint64_t key, unsigned char *buf, size_t cap, size_t *len)
{
    struct lm_t *t = tp;
    MDB_val mk = {8, &key}, mv;
    int rc;
    if (lm_fresh(t) != 0)
        return -1;
    rc = mdb_get(t->rtxn, t->h->dbi, &mk, &mv);
    if (rc == MDB_NOTFOUND)
        return 1;
    if (rc != 0)
        return -1;
    *len = mv.mv_size;
    memcpy(buf, mv.mv_data, mv.mv_size < cap ? mv.mv_size : cap);
    return 0;
}

static int lm_scan(void *tp, uint64_t start, int count, struct scan_chk *c)
{
    struct lm_t *t = tp;
    MDB_val mk = {8, &start}, mv;
    int rc;
    if (lm_fresh(t) != 0)
        return -1;
    if (t->cur == NULL && mdb_cursor_open(t->rtxn, t->h->dbi, &t->cur) != 0)
        return -1;
    rc = mdb_cursor_get(t->cur, &mk, &mv, MDB_SET_RANGE);
    for (int i = 0; i < count && rc == 0; i++) {
        uint64_t k;
        memcpy(&k, mk.mv_data, 8);
        chk_entry(c, k, mv.mv_data, mv.mv_size);
        if (i + 1 < count)
            rc = mdb_cursor_get(t->cur, &mk, &mv, MDB_NEXT);
    }
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : -1;
}

static int lm_put(void *tp, uint64_t key, const void *val, size_t len)
{
    struct lm_t *t = tp;
    MDB_txn *txn;
    MDB_val mk = {8, &key}, mv = {len, (void *)val};
    if (mdb_txn_begin(t->h->env, NULL, 0, &txn) != 0)
        return -1;
    if (mdb_put(txn, t->h->dbi, &mk, &mv, 0) != 0) {
        mdb_txn_abort(txn);
        return -1;
    }
    t->stale = 1;
    return mdb_txn_commit(txn) == 0 ? 0 : -1;
}

/* ---- RocksDB ----------------------------------------------------------- */

struct rk {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_block_based_table_options_t *bbto;
    rocksdb_cache_t *cache;
    rocksdb_filterpolicy_t *bloom;
    rocksdb_readoptions_t *ro;
    rocksdb_writeoptions_t *wo;
    rocksdb_writebatch_t *wb;
};

static void rk_free(struct rk *h)
{
    if (h->db)
        rocksdb_close(h->db);
    if (h->wb)
        rocksdb_writebatch_destroy(h->wb);
    if (h->ro)
        rocksdb_readoptions_destroy(h->ro);
    if (h->wo)
        rocksdb_writeoptions_destroy(h->wo);
    if (h->opts)
        rocksdb_options_destroy(h->opts);
    /* The table options own the filter policy once it is set. */
    if (h->bbto)
        rocksdb_block_based_options_destroy(h->bbto);
    if (h->cache)
        rocksdb_cache_destroy(h->cache);
    free(h);
}

static void *rk_open(const char *dir, size_t n, size_t vsize)
{
    struct rk *h = calloc(1, sizeof *h);
    char *err = NULL;
    (void)n;
    (void)vsize;
    if (h == NULL)
        return NULL;
    /* Tuned as RocksDB's tuning guide suggests for point lookups on data
     * that fits in memory: a block cache bigger than the data, full bloom
     * filters at 10 bits/key, hash index inside data blocks, no
     * compression (the values are random, so it would only cost CPU), and
     * both cores for flushes and compactions. */
    h->cache = rocksdb_cache_create_lru((size_t)1 << 30);
    h->bloom = rocksdb_filterpolicy_create_bloom_full(10);
    h->bbto = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(h->bbto, h->cache);
    rocksdb_block_based_options_set_filter_policy(h->bbto, h->bloom);
    rocksdb_block_based_options_set_data_block_index_type(
        h->bbto, rocksdb_block_based_table_data_block_index_type_binary_search_and_hash);
    h->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(h->opts, 1);
    rocksdb_options_increase_parallelism(h->opts, 2);
    rocksdb_options_set_compression(h->opts, rocksdb_no_compression);
    rocksdb_options_set_max_open_files(h->opts, -1);
    rocksdb_options_set_block_based_table_factory(h->opts, h->bbto);
    h->ro = rocksdb_readoptions_create();
    h->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(h->wo, 0);
    h->wb = rocksdb_writebatch_create();
    h->db = rocksdb_open(h->opts, dir, &err);
    if (err != NULL) {
        fprintf(stderr, "compare: rocksdb open: %s\n", err);
        rocksdb_free(err);
        rk_free(h);
        return NULL;
    }
    return h;
}

static int rk_load(void *hp, const uint64_t *keys, size_t n, size_t vsize, unsigned char *tmp)
{
    struct rk *h = hp;
    char *err = NULL;
    unsigned char kb[8];
    rocksdb_writebatch_clear(h->wb);
    for (size_t i = 0; i < n; i++) {
        be64(kb, keys[i]);
        fill_value(keys[i], tmp, vsize);
        rocksdb_writebatch_put(h->wb, (const char *)kb, 8, (const char *)tmp, vsize);
    }
    rocksdb_write(h->db, h->wo, h->wb, &err);
    if (err) {
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

static int rk_settle(void *hp)
{
    struct rk *h = hp;
    char *err = NULL;
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_flush(h->db, fo, &err);
    rocksdb_flushoptions_destroy(fo);
    if (err) {
        rocksdb_free(err);
        return -1;
    }
    rocksdb_compact_range(h->db, NULL, 0, NULL, 0);
    return 0;
}

static int rk_durable(void *hp)
{
    rocksdb_writeoptions_set_sync(((struct rk *)hp)->wo, 1);
    return 0;
}

static void rk_close(void *hp) { rk_free(hp); }


static int rk_get(void *tp, uint64_t key, unsigned char *buf, size_t cap, size_t *len)
{
    struct rk *h = tp;
    char *err = NULL;
    unsigned char kb[8];
    rocksdb_pinnableslice_t *ps;
    const char *v;
    be64(kb, key);
    /* The pinned get: no copy out of the block cache beyond our own. */
    ps = rocksdb_get_pinned(h->db, h->ro, (const char *)kb, 8, &err);
    if (err) {
        rocksdb_free(err);
        return -1;
    }
    if (ps == NULL)
        return 1;
    v = rocksdb_pinnableslice_value(ps, len);
    memcpy(buf, v, *len < cap ? *len : cap);
    rocksdb_pinnableslice_destroy(ps);
    return 0;
}

static int rk_scan(void *tp, uint64_t start, int count, struct scan_chk *c)
{
    struct rk *h = tp;
    unsigned char kb[8];
    rocksdb_iterator_t *it = rocksdb_create_iterator(h->db, h->ro);
    char *err = NULL;
    be64(kb, start);
    rocksdb_iter_seek(it, (const char *)kb, 8);
    for (int i = 0; i < count && rocksdb_iter_valid(it); i++) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        chk_entry(c, kl == 8 ? from_be64(k) : 0, v, vl);
        if (i + 1 < count)
            rocksdb_iter_next(it);
    }
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    if (err) {
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

static int rk_put(void *tp, uint64_t key, const void *val, size_t len)
{
    struct rk *h = tp;
    char *err = NULL;
    unsigned char kb[8];
    be64(kb, key);
    rocksdb_put(h->db, h->wo, (const char *)kb, 8, val, len, &err);
    if (err) {
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

/* ---- LevelDB ----------------------------------------------------------- */

struct lv {
    leveldb_t *db;
    leveldb_options_t *opts;
    leveldb_cache_t *cache;
    leveldb_filterpolicy_t *bloom;
    leveldb_readoptions_t *ro;
    leveldb_writeoptions_t *wo;
    leveldb_writebatch_t *wb;
};

static void lv_free(struct lv *h)
{
    if (h->db)
        leveldb_close(h->db);
    if (h->wb)
        leveldb_writebatch_destroy(h->wb);
    if (h->ro)
        leveldb_readoptions_destroy(h->ro);
    if (h->wo)
        leveldb_writeoptions_destroy(h->wo);
    if (h->opts)
        leveldb_options_destroy(h->opts);
    if (h->bloom)
        leveldb_filterpolicy_destroy(h->bloom);
    if (h->cache)
        leveldb_cache_destroy(h->cache);
    free(h);
}

static void *lv_open(const char *dir, size_t n, size_t vsize)
{
    struct lv *h = calloc(1, sizeof *h);
    char *err = NULL;
    (void)n;
    (void)vsize;
    if (h == NULL)
        return NULL;
    /* As LevelDB's performance notes suggest: a block cache that holds
     * the data, a bloom filter for gets, no compression for incompressible
     * values, and a larger write buffer for a bulk load. */
    h->cache = leveldb_cache_create_lru((size_t)1 << 30);
    h->bloom = leveldb_filterpolicy_create_bloom(10);
    h->opts = leveldb_options_create();
    leveldb_options_set_create_if_missing(h->opts, 1);
    leveldb_options_set_cache(h->opts, h->cache);
    leveldb_options_set_filter_policy(h->opts, h->bloom);
    leveldb_options_set_compression(h->opts, leveldb_no_compression);
    leveldb_options_set_write_buffer_size(h->opts, (size_t)64 << 20);
    leveldb_options_set_max_open_files(h->opts, 10000);
    h->ro = leveldb_readoptions_create();
    h->wo = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(h->wo, 0);
    h->wb = leveldb_writebatch_create();
    h->db = leveldb_open(h->opts, dir, &err);
    if (err != NULL) {
        fprintf(stderr, "compare: leveldb open: %s\n", err);
        leveldb_free(err);
        lv_free(h);
        return NULL;
    }
    return h;
}

static int lv_load(void *hp, const uint64_t *keys, size_t n, size_t vsize, unsigned char *tmp)
{
    struct lv *h = hp;
    char *err = NULL;
    unsigned char kb[8];
    leveldb_writebatch_clear(h->wb);
    for (size_t i = 0; i < n; i++) {
        be64(kb, keys[i]);
        fill_value(keys[i], tmp, vsize);
        leveldb_writebatch_put(h->wb, (const char *)kb, 8, (const char *)tmp, vsize);
    }
    leveldb_write(h->db, h->wo, h->wb, &err);
    if (err) {
        leveldb_free(err);
        return -1;
    }
    return 0;
}

static int lv_settle(void *hp)
{
    leveldb_compact_range(((struct lv *)hp)->db, NULL, 0, NULL, 0);
    return 0;
}

static int lv_durable(void *hp)
{
    leveldb_writeoptions_set_sync(((struct lv *)hp)->wo, 1);
    return 0;
}

static void lv_close(void *hp) { lv_free(hp); }

static int lv_get(void *tp, uint64_t key, unsigned char *buf, size_t cap, size_t *len)
{
    struct lv *h = tp;
    char *err = NULL, *v;
    unsigned char kb[8];
    be64(kb, key);
    /* The C API's only get returns a malloc'd copy. */
    v = leveldb_get(h->db, h->ro, (const char *)kb, 8, len, &err);
    if (err) {
        leveldb_free(err);
        return -1;
    }
    if (v == NULL)
        return 1;
    memcpy(buf, v, *len < cap ? *len : cap);
    leveldb_free(v);
    return 0;
}

static int lv_scan(void *tp, uint64_t start, int count, struct scan_chk *c)
{
    struct lv *h = tp;
    unsigned char kb[8];
    leveldb_iterator_t *it = leveldb_create_iterator(h->db, h->ro);
    char *err = NULL;
    be64(kb, start);
    leveldb_iter_seek(it, (const char *)kb, 8);
    for (int i = 0; i < count && leveldb_iter_valid(it); i++) {
        size_t kl, vl;
        const char *k = leveldb_iter_key(it, &kl);
        const char *v = leveldb_iter_value(it, &vl);
        chk_entry(c, kl == 8 ? from_be64(k) : 0, v, vl);
        if (i + 1 < count)
            leveldb_iter_next(it);
    }
    leveldb_iter_get_error(it, &err);
    leveldb_iter_destroy(it);
    if (err) {
        leveldb_free(err);
        return -1;
    }
    return 0;
}

static int lv_put(void *tp, uint64_t key, const void *val, size_t len)
{
    struct lv *h = tp;
    char *err = NULL;
    unsigned char kb[8];
    be64(kb, key);
    leveldb_put(h->db, h->wo, (const char *)kb, 8, val, len, &err);
    if (err) {
        leveldb_free(err);
        return -1;
    }
    return 0;
}

/* ---- SQLite ------------------------------------------------------------ */

/* SQLite integers are signed: flipping the top bit keeps uint64 order. */
#define SQ_FLIP 0x8000000000000000ull

struct sq {
    char path[4096];
    int durable;
    sqlite3 *db; /* the load connection */
    sqlite3_stmt *ins;
    /* SQLite allows one writer at a time; taking turns here instead of
     * in SQLite's busy handler (which sleeps) is the faster choice. */
    pthread_mutex_t wlock;
};

struct sq_t {
    struct sq *h;
    sqlite3 *db;
    sqlite3_stmt *get, *scan, *put;
    int in_txn;
};

static int sq_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "compare: sqlite: %s: %s\n", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Per-connection settings: a page cache that holds the database and
 * reads through mmap, as SQLite's docs suggest for a database that fits in
 * memory; the sync level is per connection too. */
static sqlite3 *sq_connect(struct sq *h)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(h->path, &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(db, 10000);
    if (sq_exec(db, "PRAGMA journal_mode=WAL") || sq_exec(db, "PRAGMA cache_size=-524288") ||
        sq_exec(db, "PRAGMA mmap_size=4294967296") || sq_exec(db, "PRAGMA temp_store=MEMORY") ||
        sq_exec(db, h->durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=OFF"))
        goto fail;
    return db;
fail:
    fprintf(stderr, "compare: sqlite open %s: %s\n", h->path, db ? sqlite3_errmsg(db) : "?");
    sqlite3_close(db);
    return NULL;
}

static void *sq_open(const char *dir, size_t n, size_t vsize)
{
    struct sq *h = calloc(1, sizeof *h);
    (void)n;
    (void)vsize;
    if (h == NULL)
        return NULL;
    mkdir(dir, 0755);
    snprintf(h->path, sizeof h->path, "%s/kv.db", dir);
    pthread_mutex_init(&h->wlock, NULL);
    if ((h->db = sq_connect(h)) == NULL)
        goto fail;
    /* Random-order batches dirty ~1000 pages per commit; checkpointing
     * every 1000 WAL pages (the default) would copy each of them back to
     * the database once per batch. A larger threshold lets a page that is
     * rewritten by many batches be copied back once. settle checkpoints. */
    if (sq_exec(h->db, "PRAGMA wal_autocheckpoint=65536"))
        goto fail;
    /* WITHOUT ROWID: the rows are small, so one B-tree keyed by k. */
    if (sq_exec(h->db, "CREATE TABLE kv(k INTEGER PRIMARY KEY, v BLOB) WITHOUT ROWID"))
        goto fail;
    if (sqlite3_prepare_v2(h->db, "INSERT OR REPLACE INTO kv(k, v) VALUES(?1, ?2)", -1, &h->ins,
                           NULL) != SQLITE_OK)
        goto fail;
    return h;
fail:
    sqlite3_close(h->db);
    pthread_mutex_destroy(&h->wlock);
    free(h);
    return NULL;
}

static int sq_load(void *hp, const uint64_t *keys, size_t n, size_t vsize, unsigned char *tmp)
{
    struct sq *h = hp;
    if (sq_exec(h->db, "BEGIN"))
        return -1;
    for (size_t i = 0; i < n; i++) {
        fill_value(keys[i], tmp, vsize);
        sqlite3_bind_int64(h->ins, 1, (sqlite3_int64)(keys[i] ^ SQ_FLIP));
        sqlite3_bind_blob(h->ins, 2, tmp, (int)vsize, SQLITE_STATIC);
        if (sqlite3_step(h->ins) != SQLITE_DONE) {
            sqlite3_reset(h->ins);
            sq_exec(h->db, "ROLLBACK");
            return -1;
        }
        sqlite3_reset(h->ins);
    }
    return sq_exec(h->db, "COMMIT");
}

static int sq_settle(void *hp)
{
    return sq_exec(((struct sq *)hp)->db, "PRAGMA wal_checkpoint(TRUNCATE)");
}

/* Connections opened after this (every phase opens its own) use FULL. */
static int sq_durable(void *hp)
{
    struct sq *h = hp;
    h->durable = 1;
    return sq_exec(h->db, "PRAGMA synchronous=FULL");
}

static void sq_close(void *hp)
{
    struct sq *h = hp;
    sqlite3_finalize(h->ins);
    sqlite3_close(h->db);
    pthread_mutex_destroy(&h->wlock);
    free(h);
}

static void sq_tclose(void *tp)
{
    struct sq_t *t = tp;
    if (t->in_txn)
        sq_exec(t->db, "COMMIT");
    sqlite3_finalize(t->get);
    sqlite3_finalize(t->scan);
    sqlite3_finalize(t->put);
    sqlite3_close(t->db);
    free(t);
}

static void *sq_topen(void *hp, int readonly)
{
    struct sq_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->h = hp;
    if ((t->db = sq_connect(t->h)) == NULL)
        goto fail;
    if (sqlite3_prepare_v2(t->db, "SELECT v FROM kv WHERE k = ?1", -1, &t->get, NULL) ||
        sqlite3_prepare_v2(t->db, "SELECT k, v FROM kv WHERE k >= ?1 ORDER BY k LIMIT ?2", -1,
                           &t->scan, NULL) ||
        sqlite3_prepare_v2(t->db, "INSERT OR REPLACE INTO kv(k, v) VALUES(?1, ?2)", -1, &t->put,
                           NULL))
        goto fail;
    /* One read transaction for a read-only phase, like LMDB's long read
     * txn: it spares a WAL read-lock round per statement. */
    if (readonly) {
        if (sq_exec(t->db, "BEGIN"))
            goto fail;
        t->in_txn = 1;
    }
    return t;
fail:
    sq_tclose(t);
    return NULL;
}

static int sq_get(void *tp, uint64_t key, unsigned char *buf, size_t cap, size_t *len)
{
    struct sq_t *t = tp;
    int rc;
    sqlite3_bind_int64(t->get, 1, (sqlite3_int64)(key ^ SQ_FLIP));
    rc = sqlite3_step(t->get);
    if (rc == SQLITE_ROW) {
        const void *v = sqlite3_column_blob(t->get, 0);
        *len = (size_t)sqlite3_column_bytes(t->get, 0);
        if (*len)
            memcpy(buf, v, *len < cap ? *len : cap);
        rc = 0;
    } else {
        rc = rc == SQLITE_DONE ? 1 : -1;
    }
    sqlite3_reset(t->get);
    return rc;
}

static int sq_scan(void *tp, uint64_t start, int count, struct scan_chk *c)
{
    struct sq_t *t = tp;
    int rc;
    sqlite3_bind_int64(t->scan, 1, (sqlite3_int64)(start ^ SQ_FLIP));
    sqlite3_bind_int(t->scan, 2, count);
    while ((rc = sqlite3_step(t->scan)) == SQLITE_ROW) {
        uint64_t k = (uint64_t)sqlite3_column_int64(t->scan, 0) ^ SQ_FLIP;
        const void *v = sqlite3_column_blob(t->scan, 1);
        chk_entry(c, k, v, (size_t)sqlite3_column_bytes(t->scan, 1));
    }
    sqlite3_reset(t->scan);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_put(void *tp, uint64_t key, const void *val, size_t len)
{
    struct sq_t *t = tp;
    int rc;
    sqlite3_bind_int64(t->put, 1, (sqlite3_int64)(key ^ SQ_FLIP));
    sqlite3_bind_blob(t->put, 2, val, (int)len, SQLITE_STATIC);
    pthread_mutex_lock(&t->h->wlock);
    rc = sqlite3_step(t->put);
    sqlite3_reset(t->put);
    pthread_mutex_unlock(&t->h->wlock);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- the sorted array (baseline) --------------------------------------- */

/* Built from the load set by sorting, so "load" is not comparable and is
 * not reported; it answers only the read phases. */
struct arr {
    uint64_t *keys;
    unsigned char *vals;
    size_t n, vsize, cap;
};

static void *ar_open(const char *dir, size_t n, size_t vsize)
{
    struct arr *h = calloc(1, sizeof *h);
    (void)dir;
    if (h == NULL)
        return NULL;
    h->cap = n;
    h->vsize = vsize;
    h->keys = malloc((n ? n : 1) * sizeof *h->keys);
    h->vals = malloc((n ? n : 1) * (vsize ? vsize : 1));
    if (!h->keys || !h->vals) {
        free(h->keys);
        free(h->vals);
        free(h);
        return NULL;
    }
    return h;
}

static int ar_load(void *hp, const uint64_t *keys, size_t n, size_t vsize, unsigned char *tmp)
{
    struct arr *h = hp;
    (void)vsize;
    (void)tmp;
    if (h->n + n > h->cap)
        return -1;
    memcpy(h->keys + h->n, keys, n * sizeof *keys);
    h->n += n;
    return 0;
}

static int ar_settle(void *hp)
{
    struct arr *h = hp;
    qsort(h->keys, h->n, sizeof *h->keys, cmp_u64);
    for (size_t i = 0; i < h->n; i++)
        fill_value(h->keys[i], h->vals + i * h->vsize, h->vsize);
    return 0;
}

static void ar_close(void *hp)
{
    struct arr *h = hp;
    free(h->keys);
    free(h->vals);
    free(h);
}


static int ar_get(void *tp, uint64_t key, unsigned char *buf, size_t cap, size_t *len)
{
    struct arr *h = tp;
    size_t pos = lower_bound(h->keys, h->n, key);
    if (pos == h->n || h->keys[pos] != key)
        return 1;
    *len = h->vsize;
    memcpy(buf, h->vals + pos * h->vsize, h->vsize < cap ? h->vsize : cap);
    return 0;
}

static int ar_scan(void *tp, uint64_t start, int count, struct scan_chk *c)
{
    struct arr *h = tp;
    size_t pos = lower_bound(h->keys, h->n, start);
    for (int i = 0; i < count && pos < h->n; i++, pos++)
        chk_entry(c, h->keys[pos], h->vals + pos * h->vsize, h->vsize);
    return 0;
}

static const struct engine engines[] = {
    {"KyroDB", "kyrodb", ky_open, ky_load, ky_settle, ky_durable, ky_close, shared_topen,
     shared_tclose, ky_get, ky_scan, ky_put},
    {"LMDB", "lmdb", lm_open, lm_load, lm_settle, lm_durable, lm_close, lm_topen, lm_tclose,
     lm_get, lm_scan, lm_put},
    {"RocksDB", "rocksdb", rk_open, rk_load, rk_settle, rk_durable, rk_close, shared_topen,
     shared_tclose, rk_get, rk_scan, rk_put},
    {"LevelDB", "leveldb", lv_open, lv_load, lv_settle, lv_durable, lv_close, shared_topen,
     shared_tclose, lv_get, lv_scan, lv_put},
    {"SQLite", "sqlite", sq_open, sq_load, sq_settle, sq_durable, sq_close, sq_topen, sq_tclose,
     sq_get, sq_scan, sq_put},
    {"sorted array", "array", ar_open, ar_load, ar_settle, NULL, ar_close, shared_topen,
     shared_tclose, ar_get, ar_scan, NULL},
};
#define NENG ((int)(sizeof engines / sizeof engines[0]))
#define E_KYRO 0
#define E_LMDB 1
#define E_ARRAY (NENG - 1)

/* ---- phases ------------------------------------------------------------ */

enum { R_LOAD, R_GET, R_ABSENT, R_SCAN, R_GET2, R_MIXED, R_DUR1, R_DUR8, NROWS };
static const char *row_name[NROWS] = {"load (batch 1000)", "get present",   "get absent",
                                      "scan 100",          "get 2 threads", "mixed 90/10",
                                      "durable put 1T",    "durable put 8T"};
static const char *row_id[NROWS] = {"load", "get", "get_absent", "scan100",
                                    "get_2t", "mixed", "durable_1t", "durable_8t"};

enum phase { P_WARM, P_GET, P_ABSENT, P_SCAN, P_MIXED, P_DURABLE, P_LOOP, P_CHASE };

struct bench {
    size_t n, vsize;
    const uint64_t *sorted; /* the key set, ascending */
    const uint64_t *order;  /* the key set, in a random order for gets */
    const uint64_t *absent; /* n keys not in the set */
    const uint64_t *starts; /* scan start keys (present) */
    size_t nscan;
    double durable_secs;
    int rounds_log; /* --rounds: print every round's rate to stderr */
    /* P_CHASE: a CHASE_MIB block linked into one random cycle, and where
     * the next chase starts (each goes on from where the last stopped, so
     * none re-reads lines a recent one left in the cache). */
    const uint64_t *chase_block;
    uint64_t *chase_at;
};

/* What the machine gave the process during the read rounds, measured
 * beside them: the multiply loop's best rate beside the get rows (loop,
 * by row), and in every read round the memory latency of CPUs
 * round_cpu(0, 0) and round_cpu(1, 0) (mem_ns; 0 = not measured). */
struct machine {
    double loop[NROWS];
    double mem_ns[READ_ROUNDS][2];
};

/* How many rounds a phase runs (see READ_ROUNDS). */
static int phase_rounds(enum phase ph)
{
    return ph == P_MIXED || ph == P_DURABLE ? WRITE_ROUNDS : READ_ROUNDS;
}

/* One cache line or more each: a worker counts every operation in ops,
 * and that store must not share a line with what another worker reads on
 * every operation (its b, e, ph), or 2-thread rows measure the sharing. */
struct worker {
    _Alignas(64) const struct bench *b;
    const struct engine *e;
    void *h;
    enum phase ph;
    int tid, nthreads;
    int round;
    double cap; /* seconds */
    pthread_barrier_t *bar;
    atomic_size_t *next; /* read phases: the next unclaimed list position */
    uint64_t ops, bad, errors;
    double start, end;
    pthread_t th;
};

static void note_bad(const struct worker *w, const char *what, uint64_t key)
{
    /* A few lines are enough to locate a bug; the count says the rest. */
    if (w->bad + w->errors <= 3)
        fprintf(stderr, "compare: %s %zu-byte: %s key %llu\n", w->e->name, w->b->vsize, what,
                (unsigned long long)key);
}

/* One read-phase operation on key k: a get, a scan, or (mixed) an
 * overwrite; its outcome is counted in w. */
static void read_op(struct worker *w, void *t, uint64_t k, unsigned char *buf, unsigned char *tmp,
                    uint64_t *seed)
{
    const struct bench *b = w->b;
    size_t cap = b->vsize + BUF_SLACK, len;
    int rc;
    if (w->ph == P_SCAN) {
        size_t pos = lower_bound(b->sorted, b->n, k);
        struct scan_chk c = {b->sorted + pos, b->n - pos < SCAN_LEN ? b->n - pos : SCAN_LEN,
                             b->vsize, 0, 0, tmp};
        if (w->e->scan(t, k, SCAN_LEN, &c) != 0) {
            w->errors++;
            note_bad(w, "scan failed from", k);
        } else if (c.bad || c.seen != c.nexpect) {
            w->bad++;
            note_bad(w, "scan returned wrong entries from", k);
        }
        return;
    }
    if (w->ph == P_MIXED && splitmix64(seed) % 10 == 0) {
        /* Overwrite with the key's own value, so later reads still have
         * one right answer. */
        fill_value(k, tmp, b->vsize);
        if (w->e->put(t, k, tmp, b->vsize) != 0) {
            w->errors++;
            note_bad(w, "put failed", k);
        }
        return;
    }
    rc = w->e->get(t, k, buf, cap, &len);
    if (w->ph == P_ABSENT) {
        if (rc != 1) {
            if (rc < 0)
                w->errors++;
            else
                w->bad++;
            note_bad(w, rc < 0 ? "get failed" : "found an absent key", k);
        }
    } else if (rc != 0) {
        if (rc < 0)
            w->errors++;
        else
            w->bad++;
        note_bad(w, rc < 0 ? "get failed" : "present key not found", k);
    } else if (!value_ok(k, buf, len, b->vsize, tmp)) {
        w->bad++;
        note_bad(w, "wrong value for", k);
    }
}

/* Durable puts of new keys until the deadline; the last one must read back. */
static void durable_loop(struct worker *w, void *t, double deadline, unsigned char *buf,
                         unsigned char *tmp)
{
    const struct bench *b = w->b;
    size_t cap = b->vsize + BUF_SLACK, len;
    uint64_t s = 0xD00Dull * (uint64_t)(w->tid + 1) + 7919ull * (uint64_t)w->round, last = 0;
    int rc;
    for (;;) {
        uint64_t k = splitmix64(&s);
        fill_value(k, tmp, b->vsize);
        if (w->e->put(t, k, tmp, b->vsize) != 0) {
            w->errors++;
            note_bad(w, "durable put failed", k);
            break;
        }
        last = k;
        w->ops++;
        if (now() >= deadline)
            break;
    }
    if (w->ops && (rc = w->e->get(t, last, buf, cap, &len)) != 0) {
        w->errors++;
        note_bad(w, "durable put not found", last);
    } else if (w->ops && !value_ok(last, buf, len, b->vsize, tmp)) {
        w->bad++;
        note_bad(w, "durable put wrong value", last);
    }
}

/* P_LOOP: a chain of dependent multiplies that touches no memory and no
 * engine, run on 1 and on 2 threads in the same rounds as the 1- and
 * 2-thread gets. Its 2-thread scaling shows whether the second vCPU ran at
 * all while both were busy (this machine's vCPUs are sometimes time-sliced
 * away); it cannot show whether the two shared a core's caches or memory
 * pipeline, which limits gets but not this loop. */
static void multiply_loop(struct worker *w)
{
    uint64_t x = (uint64_t)(uintptr_t)w;
    double deadline;
    pthread_barrier_wait(w->bar);
    w->start = now();
    deadline = w->start + w->cap;
    do {
        for (int i = 0; i < 4096; i++)
            x = x * 6364136223846793005ull + 1442695040888963407ull;
        w->ops += 4096;
    } while (now() < deadline);
    __asm__ volatile("" : : "r"(x)); /* keep the chain */
    w->end = now();
}

/* P_CHASE: the latency of one dependent load that misses the cache, on
 * the CPU the thread is pinned to. Beside the read rounds it shows when
 * one vCPU's memory is slower than the other's, which no engine's turn on
 * that vCPU can escape and which caps the 2-thread rows. */
static void memory_chase(struct worker *w)
{
    const struct bench *b = w->b;
    pthread_barrier_wait(w->bar);
    /* Untimed first, so that the timed part on either CPU follows a chase
     * through the block, as the second CPU's always does: timed from the
     * start, the first CPU read 435-1304 ns where the second read 243-288,
     * and memlat pinned to each then showed no such gap. */
    *b->chase_at = chase(b->chase_block, *b->chase_at, CHASE_STEPS);
    w->start = now();
    *b->chase_at = chase(b->chase_block, *b->chase_at, CHASE_STEPS);
    w->end = now();
    w->ops = CHASE_STEPS;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (w->ph == P_LOOP || w->ph == P_CHASE) {
        (w->ph == P_LOOP ? multiply_loop : memory_chase)(w);
        return NULL;
    }
    const struct bench *b = w->b;
    size_t cap = b->vsize + BUF_SLACK;
    unsigned char *buf = malloc(cap), *tmp = malloc(cap);
    void *t = w->e->topen(w->h, w->ph != P_MIXED && w->ph != P_DURABLE);
    const uint64_t *list = NULL;
    size_t n = 0, first;
    double start, deadline;
    uint64_t seed = 1000003ull * (uint64_t)(w->tid + 1) + (uint64_t)w->ph;

    if (!buf || !tmp || !t) {
        fprintf(stderr, "compare: %s: thread setup failed\n", w->e->name);
        w->errors++;
    }
    switch (w->ph) {
    case P_WARM: list = b->sorted; n = b->n; break;
    case P_GET: case P_MIXED: list = b->order; n = b->n; break;
    case P_ABSENT: list = b->absent; n = b->n; break;
    case P_SCAN: list = b->starts; n = b->nscan; break;
    case P_DURABLE: case P_LOOP: case P_CHASE: break;
    }
    /* Each round starts at its own part of the list (and wraps), so a
     * round that stops early does not leave later rounds re-reading the
     * keys an earlier one just pulled into cache. */
    first = n * (size_t)w->round / (size_t)phase_rounds(w->ph);
    pthread_barrier_wait(w->bar);
    start = now();
    deadline = start + w->cap;
    if (w->errors)
        goto out;
    if (w->ph == P_DURABLE) {
        durable_loop(w, t, deadline, buf, tmp);
        goto out;
    }
    /* The threads claim chunks of the one list in turn, so a thread whose
     * CPU runs slower does less of the work rather than holding the round
     * open alone once the others are done: the two vCPUs of this machine
     * often run at different speeds while both are busy. */
    for (int stop = 0; !stop;) {
        size_t j = atomic_fetch_add_explicit(w->next, CHUNK, memory_order_relaxed), end;
        if (j >= n)
            break;
        end = n - j > CHUNK ? j + CHUNK : n;
        for (; j < end; j++) {
            if ((w->ops & 255) == 255 && now() >= deadline) {
                stop = 1;
                break;
            }
            w->ops++;
            read_op(w, t, list[first + j < n ? first + j : first + j - n], buf, tmp, &seed);
        }
    }
out:
    w->start = start;
    w->end = now();
    if (t)
        w->e->tclose(t);
    free(buf);
    free(tmp);
    return NULL;
}

struct result {
    double ops_s;
    uint64_t ops, bad, errors;
};

/* The CPU, of those this process may run on, that thread tid of a round
 * is pinned to: (round + tid) modulo their number, so every engine's
 * rounds of a phase sit on the same CPUs in the same order. -1: none
 * (the affinity mask cannot be read). */
static int round_cpu(int round, int tid)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) == 0)
        return -1;
    int want = (round + tid) % CPU_COUNT(&set);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set) && want-- == 0)
            return c;
    return -1;
}

/* Run one round of a phase on nthreads threads; the clock starts when the
 * first thread leaves the barrier (every thread has its per-thread state
 * by then) and stops when the last one finishes. The threads' own clocks
 * are used because the runner may not be scheduled until they are done.
 *
 * The threads of every phase but the durable ones (whose writers wait on
 * I/O) are pinned by round_cpu: this VM's vCPUs have run memory-bound code
 * at half speed for seconds at a time, often one vCPU only, so a thread
 * the scheduler happened to place on the slow one would slow one engine's
 * round and not the next one's. Pinned, the engines' turns of a round
 * share a CPU, and over the rounds each engine runs on each CPU. */
static struct result run_phase(const struct bench *b, const struct engine *e, void *h,
                               enum phase ph, int nthreads, int round, double cap)
{
    struct worker w[DUR_THREADS];
    pthread_barrier_t bar;
    _Alignas(64) atomic_size_t next = 0;
    struct result r = {0, 0, 0, 0};
    double t0 = 0, t1 = 0;
    pthread_barrier_init(&bar, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++) {
        pthread_attr_t attr;
        int cpu = ph == P_DURABLE ? -1 : round_cpu(round, i);
        pthread_attr_init(&attr);
        if (cpu >= 0) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            pthread_attr_setaffinity_np(&attr, sizeof one, &one);
        }
        w[i] = (struct worker){.b = b, .e = e, .h = h, .ph = ph, .tid = i,
                               .nthreads = nthreads, .round = round, .cap = cap, .bar = &bar,
                               .next = &next};
        if (pthread_create(&w[i].th, &attr, worker_main, &w[i]) != 0)
            pthread_create(&w[i].th, NULL, worker_main, &w[i]); /* unpinned, then */
        pthread_attr_destroy(&attr);
    }
    pthread_barrier_wait(&bar);
    for (int i = 0; i < nthreads; i++)
        pthread_join(w[i].th, NULL);
    pthread_barrier_destroy(&bar);
    for (int i = 0; i < nthreads; i++) {
        if (i == 0 || w[i].start < t0)
            t0 = w[i].start;
        if (w[i].end > t1)
            t1 = w[i].end;
        r.ops += w[i].ops;
        r.bad += w[i].bad;
        r.errors += w[i].errors;
    }
    r.ops_s = t1 > t0 ? (double)r.ops / (t1 - t0) : 0;
    return r;
}

/* ---- one value size: every engine ----------------------------------- */

struct eng_out {
    int ran;
    double ops_s[NROWS]; /* best round; 0 = not measured */
    double settle_s;
    uint64_t bad, errors;
    uint64_t mem_bytes, rss_delta, rss_trimmed; /* KyroDB only */
    double puts_per_sync[NROWS];                /* KyroDB only, durable rows */
    double get_on_cpu[2]; /* best 1-thread get round on each of the two CPUs (round_slot) */
};

struct eng_run {
    const struct engine *e;
    void *h;   /* NULL: not running (not wanted, or failed) */
    char dir[4200];
    struct eng_out *out;
};

/* Open, load, settle and warm up one engine. KyroDB goes first so its RSS
 * delta is not blurred by the other engines' memory. */
static void setup_engine(const struct bench *b, struct eng_run *er, const char *parent,
                         const uint64_t *load_keys)
{
    const struct engine *e = er->e;
    struct eng_out *out = er->out;
    unsigned char *tmp = malloc(b->vsize + BUF_SLACK);
    uint64_t rss0;
    double t0;
    struct result r;

    out->ran = 1;
    snprintf(er->dir, sizeof er->dir, "%s/%s-%zu", parent, e->id, b->vsize);
    remove_tree(er->dir);
    malloc_trim(0);
    rss0 = rss_bytes();
    if (tmp == NULL || (er->h = e->open(er->dir, b->n, b->vsize)) == NULL) {
        fprintf(stderr, "compare: %s: open failed in %s\n", e->name, er->dir);
        out->errors++;
        free(tmp);
        return;
    }
    fprintf(stderr, "compare: %-12s %3zu-byte values: load", e->name, b->vsize);
    t0 = now();
    for (size_t i = 0; i < b->n; i += BATCH) {
        size_t m = b->n - i < BATCH ? b->n - i : BATCH;
        if (e->load(er->h, load_keys + i, m, b->vsize, tmp) != 0) {
            fprintf(stderr, "\ncompare: %s: load failed at %zu\n", e->name, i);
            goto fail;
        }
    }
    if (e != &engines[E_ARRAY])
        out->ops_s[R_LOAD] = (double)b->n / (now() - t0);
    fprintf(stderr, " %.1f s, settle", now() - t0);
    t0 = now();
    if (e->settle(er->h) != 0) {
        fprintf(stderr, "\ncompare: %s: settle failed\n", e->name);
        goto fail;
    }
    out->settle_s = now() - t0;
    fprintf(stderr, " %.1f s, warm-up", out->settle_s);
    t0 = now();
    r = run_phase(b, e, er->h, P_WARM, 1, 0, WARM_CAP);
    out->bad += r.bad;
    out->errors += r.errors;
    fprintf(stderr, " %.1f s\n", now() - t0);
    if (e == &engines[E_KYRO]) {
        out->mem_bytes = ky_memory(er->h);
        out->rss_delta = rss_bytes() - rss0;
        /* Freed memory that malloc keeps for reuse is in the RSS but not
         * held by the database; trimming shows how much of it that is. */
        malloc_trim(0);
        out->rss_trimmed = rss_bytes() - rss0;
    }
    free(tmp);
    return;
fail:
    out->errors++;
    e->close(er->h);
    er->h = NULL;
    remove_tree(er->dir);
    free(tmp);
}

struct step {
    int row;
    enum phase ph;
    int threads;
};

/* Which of the two CPUs of measure_memory (slot 0 or 1) round r's
 * 1-thread phases run on; -1 if neither (more than two CPUs). */
static int round_slot(int round)
{
    int cpu = round_cpu(round, 0);
    for (int slot = 0; slot < 2; slot++)
        if (cpu == round_cpu(slot, 0))
            return slot;
    return -1;
}

/* One round of one phase: every engine in turn, then (beside the get rows)
 * the multiply loop. Each keeps its best round. */
static void run_round(const struct bench *b, struct eng_run *er, int neng, const struct step *st,
                      int round, struct machine *m)
{
    int writes = st->ph == P_MIXED || st->ph == P_DURABLE;
    double cap = st->ph == P_DURABLE ? b->durable_secs / WRITE_ROUNDS : ROUND_CAP;
    for (int e = 0; e < neng; e++) {
        struct result r;
        if (er[e].h == NULL || (writes && er[e].e->put == NULL))
            continue;
        r = run_phase(b, er[e].e, er[e].h, st->ph, st->threads, round, cap);
        if (b->rounds_log)
            fprintf(stderr, " [%s %.3fM]", er[e].e->name, r.ops_s / 1e6);
        if (r.ops_s > er[e].out->ops_s[st->row])
            er[e].out->ops_s[st->row] = r.ops_s;
        int slot = st->row == R_GET ? round_slot(round) : -1;
        if (slot >= 0 && r.ops_s > er[e].out->get_on_cpu[slot])
            er[e].out->get_on_cpu[slot] = r.ops_s;
        er[e].out->bad += r.bad;
        er[e].out->errors += r.errors;
    }
    if (st->ph == P_GET) {
        double x = run_phase(b, NULL, NULL, P_LOOP, st->threads, round, LOOP_SECS).ops_s;
        if (b->rounds_log)
            fprintf(stderr, " [loop %.0fM]", x / 1e6);
        if (x > m->loop[st->row])
            m->loop[st->row] = x;
    }
}

/* After a read round: on each of two CPUs, the latency of a dependent
 * load that misses the cache. */
static void measure_memory(const struct bench *b, int round, struct machine *m)
{
    for (int slot = 0; slot < 2; slot++) {
        /* A 1-thread phase of round r runs on round_cpu(r, 0): as rounds 0
         * and 1, the chases run on the first two CPUs the process may use
         * (on two CPUs, those of every 2-thread round). */
        struct result r = run_phase(b, NULL, NULL, P_CHASE, 1, slot, 1.0);
        m->mem_ns[round][slot] = r.ops_s > 0 ? 1e9 / r.ops_s : 0;
        if (b->rounds_log)
            fprintf(stderr, " [memory CPU %d %.0f ns]", round_cpu(slot, 0), m->mem_ns[round][slot]);
    }
}

/* m: the multiply loop beside the get rows, and the memory latency of the
 * two CPUs after each read round (struct machine).
 *
 * The read phases run round by round: round 1 of each of them, then round
 * 2 of each, and so on, so one phase's rounds lie some 15 s apart (a
 * minute from first to last) rather than within 12 s. A slow spell of the
 * machine that lasts a few tens of seconds (seen here: all three of one
 * engine's rounds of a phase at half its rate in the other phases of the
 * same run, and once every engine's reads slowed for about 50 s) then
 * costs an engine some rounds of a phase, not the phase. The phases that
 * write come after, each in its own rounds, as they change what the reads
 * would see. */
static void run_size(const struct bench *b, struct eng_run *er, int neng, struct machine *m)
{
    static const struct step reads[] = {{R_GET, P_GET, 1},
                                        {R_ABSENT, P_ABSENT, 1},
                                        {R_SCAN, P_SCAN, 1},
                                        {R_GET2, P_GET, 2}};
    static const struct step writes[] = {{R_MIXED, P_MIXED, 1},
                                         {R_DUR1, P_DURABLE, 1},
                                         {R_DUR8, P_DURABLE, DUR_THREADS}};
    for (int round = 0; round < READ_ROUNDS; round++) {
        fprintf(stderr, "compare: %3zu-byte values: reads, round %d:", b->vsize, round + 1);
        double t0 = now();
        for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++) {
            fprintf(stderr, " %s", row_id[reads[i].row]);
            run_round(b, er, neng, &reads[i], round, m);
        }
        measure_memory(b, round, m);
        fprintf(stderr, " %.1f s\n", now() - t0);
    }
    int durable = 0;
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        const struct step *st = &writes[i];
        if (st->ph == P_DURABLE && !durable) {
            for (int e = 0; e < neng; e++) {
                if (er[e].h == NULL || er[e].e->durable == NULL)
                    continue;
                if (er[e].e->durable(er[e].h) != 0) {
                    fprintf(stderr, "compare: %s: switch to durable mode failed\n",
                            er[e].e->name);
                    er[e].out->errors++;
                    er[e].e->close(er[e].h);
                    er[e].h = NULL;
                }
            }
            durable = 1;
        }
        fprintf(stderr, "compare: %3zu-byte values: %s", b->vsize, row_id[st->row]);
        double t0 = now();
        uint64_t puts0 = 0, syncs0 = 0;
        int ky = er[E_KYRO].h != NULL && st->ph == P_DURABLE;
        if (ky)
            ky_sync_counts(er[E_KYRO].h, &puts0, &syncs0);
        for (int round = 0; round < WRITE_ROUNDS; round++)
            run_round(b, er, neng, st, round, m);
        if (ky) {
            uint64_t puts1, syncs1;
            ky_sync_counts(er[E_KYRO].h, &puts1, &syncs1);
            if (syncs1 > syncs0)
                er[E_KYRO].out->puts_per_sync[st->row] =
                    (double)(puts1 - puts0) / (double)(syncs1 - syncs0);
        }
        fprintf(stderr, " %.1f s\n", now() - t0);
    }
}

/* ---- report ------------------------------------------------------------ */

struct target {
    int row;
    int vs;       /* engine index, or -1 best peer, -2 KyroDB's own R_GET */
    double need;
    const char *text;
};

static const struct target targets[] = {
    {R_LOAD, -1, 2.0, ">=2x best peer"},  {R_GET, E_LMDB, 2.0, ">=2x LMDB"},
    {R_GET, E_ARRAY, 1.2, ">=1.2x array"}, {R_ABSENT, -1, 1.5, ">=1.5x best peer"},
    {R_SCAN, E_LMDB, 1.5, ">=1.5x LMDB"},  {R_GET2, -2, 1.8, ">=1.8x 1T get"},
    {R_DUR1, -1, 0.9, ">=0.9x best peer"}, {R_DUR8, -1, 1.5, ">=1.5x best peer"},
};
#define NTARGETS ((int)(sizeof targets / sizeof targets[0]))

static int best_peer(const struct eng_out *o, int row)
{
    int best = -1;
    for (int e = 0; e < NENG; e++) {
        if (e == E_KYRO || e == E_ARRAY || !o[e].ran || o[e].ops_s[row] <= 0)
            continue;
        if (best < 0 || o[e].ops_s[row] > o[best].ops_s[row])
            best = e;
    }
    return best;
}

/* KyroDB's ratio for target t, or NAN if either side was not measured. */
static double target_ratio(const struct eng_out *o, const struct target *t, const char **against)
{
    double k = o[E_KYRO].ran ? o[E_KYRO].ops_s[t->row] : 0, d = 0;
    int vs = t->vs;
    *against = "";
    if (vs == -1)
        vs = best_peer(o, t->row);
    if (t->vs == -2) {
        d = o[E_KYRO].ops_s[R_GET];
        *against = "KyroDB 1T";
    } else if (vs >= 0 && o[vs].ran) {
        d = o[vs].ops_s[t->row];
        *against = engines[vs].name;
    }
    return k > 0 && d > 0 ? k / d : NAN;
}

static const char *verdict(double ratio, double need)
{
    return isnan(ratio) ? "n/a" : ratio >= need ? "PASS" : "MISS";
}

/* The target, ratio and result CSV fields of one row; a row with two
 * targets lists both in each field, separated by ';'. */
static void csv_targets(const struct eng_out *o, int row)
{
    char tt[64] = "", xx[64] = "", vv[32] = "";
    for (int t = 0; t < NTARGETS; t++) {
        const char *against;
        double x;
        size_t lt = strlen(tt), lx = strlen(xx), lv = strlen(vv);
        if (targets[t].row != row)
            continue;
        x = target_ratio(o, &targets[t], &against);
        snprintf(tt + lt, sizeof tt - lt, "%s%s", lt ? ";" : "", targets[t].text);
        snprintf(xx + lx, sizeof xx - lx, "%s%.3f", lx ? ";" : "", x);
        snprintf(vv + lv, sizeof vv - lv, "%s%s", lv ? ";" : "", verdict(x, targets[t].need));
    }
    printf(",%s,%s,%s", tt, xx, vv);
}

/* 2-thread gets over the mean of the best 1-thread round on each of the
 * two CPUs: how much the second thread added beyond what its own CPU
 * gives one thread, which the best round alone (on the faster CPU, when
 * the two differ) does not show. 0 if a CPU had no 1-thread round. */
static double per_cpu_scaling(const struct eng_out *o)
{
    double mean = (o->get_on_cpu[0] + o->get_on_cpu[1]) / 2;
    return o->get_on_cpu[0] > 0 && o->get_on_cpu[1] > 0 ? o->ops_s[R_GET2] / mean : 0;
}

/* The median over the read rounds of one CPU's memory latency (ns). */
static double median_mem_ns(const struct machine *m, int slot)
{
    double v[READ_ROUNDS];
    int k = 0;
    for (int r = 0; r < READ_ROUNDS; r++) {
        double x = m->mem_ns[r][slot];
        if (x <= 0)
            continue;
        int j = k++;
        for (; j > 0 && v[j - 1] > x; j--) /* insertion: a handful of rounds */
            v[j] = v[j - 1];
        v[j] = x;
    }
    return k == 0 ? 0 : k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

static void report(const struct bench *b, const struct eng_out *o, const struct machine *m, int csv,
                   int *header_done)
{
    double per_key_budget = 1.3 * (double)(8 + b->vsize + 16);
    if (csv) {
        if (!*header_done) {
            printf("n,value_bytes,row");
            for (int e = 0; e < NENG; e++)
                printf(",%s_ops_s", engines[e].id);
            printf(",best_peer,kyrodb_vs_best_peer,kyrodb_vs_array,target,target_ratio,result\n");
            *header_done = 1;
        }
        for (int r = 0; r < NROWS; r++) {
            int bp = best_peer(o, r);
            double k = o[E_KYRO].ran ? o[E_KYRO].ops_s[r] : 0;
            printf("%zu,%zu,%s", b->n, b->vsize, row_id[r]);
            for (int e = 0; e < NENG; e++) {
                if (o[e].ran && o[e].ops_s[r] > 0)
                    printf(",%.0f", o[e].ops_s[r]);
                else
                    printf(",");
            }
            printf(",%s", bp >= 0 ? engines[bp].id : "");
            if (bp >= 0 && k > 0)
                printf(",%.3f", k / o[bp].ops_s[r]);
            else
                printf(",");
            if (o[E_ARRAY].ran && o[E_ARRAY].ops_s[r] > 0 && k > 0)
                printf(",%.3f", k / o[E_ARRAY].ops_s[r]);
            else
                printf(",");
            csv_targets(o, r);
            printf("\n");
        }
        if (o[E_KYRO].ran) {
            double m = (double)o[E_KYRO].mem_bytes / (double)b->n;
            double s = (double)o[E_KYRO].rss_delta / (double)b->n;
            printf("%zu,%zu,memory_bytes_per_key,%.1f,,,,,,,,,<=%.1f,%.3f,%s\n", b->n, b->vsize, m,
                   per_key_budget, m / per_key_budget, m <= per_key_budget ? "PASS" : "MISS");
            printf("%zu,%zu,rss_delta_bytes_per_key,%.1f,,,,,,,,,<=%.1f,%.3f,%s\n", b->n, b->vsize,
                   s, per_key_budget, s / per_key_budget, s <= per_key_budget ? "PASS" : "MISS");
            s = (double)o[E_KYRO].rss_trimmed / (double)b->n;
            printf("%zu,%zu,rss_delta_trimmed_bytes_per_key,%.1f,,,,,,,,,<=%.1f,%.3f,%s\n", b->n,
                   b->vsize, s, per_key_budget, s / per_key_budget,
                   s <= per_key_budget ? "PASS" : "MISS");
        }
        printf("%zu,%zu,kyrodb_2t_vs_per_cpu_1t,%.3f,,,,,,,,,,,\n", b->n, b->vsize,
               per_cpu_scaling(&o[E_KYRO]));
        printf("%zu,%zu,array_2t_vs_per_cpu_1t,%.3f,,,,,,,,,,,\n", b->n, b->vsize,
               per_cpu_scaling(&o[E_ARRAY]));
        printf("%zu,%zu,cpu_loop_2t_vs_1t,%.3f,,,,,,,,,,,\n", b->n, b->vsize,
               m->loop[R_GET] > 0 ? m->loop[R_GET2] / m->loop[R_GET] : 0);
        for (int slot = 0; slot < 2; slot++)
            printf("%zu,%zu,memory_latency_ns_cpu%d,%.1f,,,,,,,,,,,\n", b->n, b->vsize,
                   round_cpu(slot, 0), median_mem_ns(m, slot));
        return;
    }

    printf("\n== %zu keys, %zu-byte values (ops/s, best of %d interleaved read rounds, of %d "
           "mixed or durable rounds; a read round stops at %.1f s, a durable round runs %.2f s)\n",
           b->n, b->vsize, READ_ROUNDS, WRITE_ROUNDS, ROUND_CAP, b->durable_secs / WRITE_ROUNDS);
    printf("%-18s", "op");
    for (int e = 0; e < NENG; e++)
        printf(" %12s", engines[e].name);
    printf("  %-8s %6s %7s  %-24s %s\n", "best", "K/best", "K/array", "target", "result");
    for (int r = 0; r < NROWS; r++) {
        int bp = best_peer(o, r);
        double k = o[E_KYRO].ran ? o[E_KYRO].ops_s[r] : 0;
        printf("%-18s", row_name[r]);
        for (int e = 0; e < NENG; e++) {
            if (o[e].ran && o[e].ops_s[r] > 0)
                printf(" %12.0f", o[e].ops_s[r]);
            else
                printf(" %12s", "-");
        }
        printf("  %-8s", bp >= 0 ? engines[bp].name : "-");
        if (bp >= 0 && k > 0)
            printf(" %6.2f", k / o[bp].ops_s[r]);
        else
            printf(" %6s", "-");
        if (o[E_ARRAY].ran && o[E_ARRAY].ops_s[r] > 0 && k > 0)
            printf(" %7.2f", k / o[E_ARRAY].ops_s[r]);
        else
            printf(" %7s", "-");
        char tt[64] = "", vv[32] = "";
        for (int t = 0; t < NTARGETS; t++) {
            const char *against;
            if (targets[t].row != r)
                continue;
            double x = target_ratio(o, &targets[t], &against);
            size_t l = strlen(tt), lv = strlen(vv);
            snprintf(tt + l, sizeof tt - l, "%s%s", l ? ", " : "", targets[t].text);
            snprintf(vv + lv, sizeof vv - lv, "%s%s", lv ? "," : "", verdict(x, targets[t].need));
        }
        printf("  %-24s %s\n", tt, vv);
    }
    printf("%-18s", "settle secs");
    for (int e = 0; e < NENG; e++) {
        if (o[e].ran)
            printf(" %12.2f", o[e].settle_s);
        else
            printf(" %12s", "-");
    }
    printf("  (untimed; not in any rate)\n");

    printf("targets (KyroDB, this run):\n");
    for (int t = 0; t < NTARGETS; t++) {
        const char *against;
        double x = target_ratio(o, &targets[t], &against);
        char ratio[16] = "   n/a ";
        if (!isnan(x))
            snprintf(ratio, sizeof ratio, "%6.2fx", x);
        printf("  %-18s vs %-12s %s  need %-18s %s", row_name[targets[t].row],
               *against ? against : "-", ratio, targets[t].text, verdict(x, targets[t].need));
        /* Two threads can only scale as far as the machine lets them: the
         * sorted array's scaling and the multiply loop's, in the same
         * rounds, show how far that was, and the two CPUs' memory latency
         * whether one of them was slower. The target stays judged against
         * the best 1-thread round; the per-CPU ratio is context. */
        if (targets[t].vs == -2) {
            printf("  (");
            if (o[E_ARRAY].ran && o[E_ARRAY].ops_s[R_GET] > 0)
                printf("sorted array: %.2fx, ", o[E_ARRAY].ops_s[R_GET2] / o[E_ARRAY].ops_s[R_GET]);
            printf("CPU-only loop: %.2fx)\n",
                   m->loop[R_GET] > 0 ? m->loop[R_GET2] / m->loop[R_GET] : 0);
            printf("%47s memory latency, median of the read rounds: CPU %d %.0f ns, "
                   "CPU %d %.0f ns;\n"
                   "%47s 2 threads over the mean of the best 1-thread round on each CPU:",
                   "", round_cpu(0, 0), median_mem_ns(m, 0), round_cpu(1, 0),
                   median_mem_ns(m, 1), "");
            const int shown[2] = {E_KYRO, E_ARRAY};
            const char *sep = " ";
            for (int i = 0; i < 2; i++) {
                int e = shown[i];
                if (o[e].ran) {
                    printf("%s%s %.2fx", sep, engines[e].name, per_cpu_scaling(&o[e]));
                    sep = ", ";
                }
            }
        }
        if (o[E_KYRO].puts_per_sync[targets[t].row] > 0)
            printf("  (KyroDB: %.1f puts per fdatasync)",
                   o[E_KYRO].puts_per_sync[targets[t].row]);
        printf("\n");
    }
    if (o[E_KYRO].ran) {
        double m = (double)o[E_KYRO].mem_bytes / (double)b->n;
        double s = (double)o[E_KYRO].rss_delta / (double)b->n;
        printf("  %-33s %6.1f B/key  need <= %.1f B/key (1.3 x (8+%zu+16))  %s\n",
               "memory (kv_stats.memory_bytes)", m, per_key_budget, b->vsize,
               m <= per_key_budget ? "PASS" : "MISS");
        printf("  %-33s %6.1f B/key  need <= %.1f B/key                     %s\n",
               "memory (RSS delta)", s, per_key_budget, s <= per_key_budget ? "PASS" : "MISS");
        s = (double)o[E_KYRO].rss_trimmed / (double)b->n;
        printf("  %-33s %6.1f B/key  need <= %.1f B/key                     %s\n",
               "memory (RSS delta, malloc_trim)", s, per_key_budget,
               s <= per_key_budget ? "PASS" : "MISS");
    }
    for (int e = 0; e < NENG; e++)
        if (o[e].ran && (o[e].bad || o[e].errors))
            printf("  %s: %llu wrong results, %llu errors  FAIL\n", engines[e].name,
                   (unsigned long long)o[e].bad, (unsigned long long)o[e].errors);
}

/* ---- main -------------------------------------------------------------- */

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [-n KEYS] [-v VALUE_BYTES] [-d DIR] [--engines LIST] [--csv] [--quick]\n"
            "          [--durable-secs S] [--rounds]\n"
            "  LIST: comma-separated, from kyrodb,lmdb,rocksdb,leveldb,sqlite,array\n",
            prog);
    exit(2);
}

static uint64_t parse_num(const char *prog, const char *s)
{
    uint64_t v;
    if (!parse_u64(s, &v))
        usage(prog);
    return v;
}

static int mkdir_p(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

int main(int argc, char **argv)
{
    size_t n = 0, vsizes[2] = {16, 100}, nv = 2;
    int csv = 0, quick = 0, rounds_log = 0, header_done = 0, failed = 0;
    int want[NENG];
    double durable_secs = -1;
    const char *parent_arg = NULL;
    char parent[4096];
    uint64_t seed = 42;

    for (int e = 0; e < NENG; e++)
        want[e] = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0)
            n = (size_t)parse_num(argv[0], argv[++i]);
        else if (strcmp(argv[i], "-v") == 0) {
            vsizes[0] = (size_t)parse_num(argv[0], argv[++i]);
            nv = 1;
        } else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc)
            parent_arg = argv[++i];
        else if (strcmp(argv[i], "--csv") == 0)
            csv = 1;
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds_log = 1;
        else if (strcmp(argv[i], "--durable-secs") == 0 && i + 1 < argc)
            durable_secs = atof(argv[++i]);
        else if (strcmp(argv[i], "--engines") == 0 && i + 1 < argc) {
            char *list = strdup(argv[++i]), *save = NULL;
            for (int e = 0; e < NENG; e++)
                want[e] = 0;
            for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                int found = 0;
                for (int e = 0; e < NENG; e++)
                    if (strcasecmp(tok, engines[e].id) == 0)
                        want[e] = found = 1;
                if (!found)
                    usage(argv[0]);
            }
            free(list);
        } else
            usage(argv[0]);
    }
    if (n == 0)
        n = quick ? 200000 : 2000000;
    if (durable_secs < 0)
        durable_secs = quick ? 0.5 : 2.0;
    for (size_t i = 0; i < nv; i++)
        if (vsizes[i] > 1 << 20)
            usage(argv[0]);

    /* Default under build/ so the durable phases hit the real disk; a
     * tmpfs $TMPDIR would make fsync free and the durable rows meaningless. */
    snprintf(parent, sizeof parent, "%s/compare-%d", parent_arg ? parent_arg : "build/bench-data",
             (int)getpid());
    if (mkdir_p(parent) != 0) {
        fprintf(stderr, "compare: cannot create %s: %s\n", parent, strerror(errno));
        return 1;
    }

    uint64_t *keys = malloc(n * sizeof *keys), *sorted = malloc(n * sizeof *sorted);
    uint64_t *order = malloc(n * sizeof *order), *absent = malloc(n * sizeof *absent);
    size_t nscan = n / 20 ? n / 20 : 1;
    uint64_t *starts = malloc(nscan * sizeof *starts);
    if (!keys || !sorted || !order || !absent || !starts) {
        fprintf(stderr, "compare: out of memory for %zu keys\n", n);
        return 1;
    }
    /* N distinct keys: draw, sort, redraw duplicates (practically never). */
    for (size_t i = 0; i < n; i++)
        keys[i] = splitmix64(&seed);
    for (;;) {
        size_t dups = 0;
        memcpy(sorted, keys, n * sizeof *keys);
        qsort(sorted, n, sizeof *sorted, cmp_u64);
        for (size_t i = 1; i < n; i++)
            if (sorted[i] == sorted[i - 1]) {
                for (size_t j = 0; j < n; j++)
                    if (keys[j] == sorted[i]) {
                        keys[j] = splitmix64(&seed);
                        break;
                    }
                dups++;
            }
        if (dups == 0)
            break;
    }
    memcpy(order, keys, n * sizeof *keys);
    shuffle(order, n, 7);
    for (size_t i = 0; i < n; i++) {
        uint64_t k;
        size_t p;
        do {
            k = splitmix64(&seed);
            p = lower_bound(sorted, n, k);
        } while (p < n && sorted[p] == k);
        absent[i] = k;
    }
    for (size_t i = 0; i < nscan; i++)
        starts[i] = keys[splitmix64(&seed) % n];
    /* Built before any engine opens, so no engine's RSS delta holds it. */
    size_t chase_lines = (size_t)CHASE_MIB * 1024 * 1024 / 64;
    uint64_t *chase_block = aligned_alloc(64, chase_lines * 64), chase_at = 0;
    uint64_t *chase_order = malloc(chase_lines * sizeof *chase_order);
    if (!chase_block || !chase_order) {
        fprintf(stderr, "compare: out of memory for the %d MiB latency block\n", CHASE_MIB);
        return 1;
    }
    chase_at = chase_link(chase_block, chase_order, chase_lines, 0x63686173ull);
    free(chase_order);

    if (!csv) {
        printf("compare: KyroDB %s, %s, RocksDB (C API), LevelDB %d.%d, SQLite %s\n",
               kv_version(), MDB_VERSION_STRING, leveldb_major_version(),
               leveldb_minor_version(), sqlite3_libversion());
        printf("data in %s; %zu keys; load without sync; after load, untimed: KyroDB "
               "kv_rebuild_index + kv_warmup,\nRocksDB flush + compact_range, LevelDB "
               "compact_range, SQLite wal_checkpoint; then for all one get of every key,\n"
               "and once all engines are loaded, sync(2).\n"
               "KyroDB durable mode is a reopen with KV_SYNC_FULL (after kv_snapshot).\n",
               parent, n);
        fflush(stdout);
    }

    for (size_t v = 0; v < nv; v++) {
        struct bench b = {.n = n, .vsize = vsizes[v], .sorted = sorted, .order = order,
                          .absent = absent, .starts = starts, .nscan = nscan,
                          .durable_secs = durable_secs, .rounds_log = rounds_log,
                          .chase_block = chase_block, .chase_at = &chase_at};
        struct eng_out out[NENG];
        struct eng_run er[NENG];
        memset(out, 0, sizeof out);
        memset(er, 0, sizeof er);
        for (int e = 0; e < NENG; e++) {
            er[e].e = &engines[e];
            er[e].out = &out[e];
            if (want[e])
                setup_engine(&b, &er[e], parent, keys);
        }
        /* The loads left the engines' files dirty in the page cache; the
         * kernel's writeback of them would otherwise run on the second
         * core during the timed reads (2-thread gets most of all). */
        double t0 = now();
        fprintf(stderr, "compare: %3zu-byte values: sync", b.vsize);
        sync();
        fprintf(stderr, " %.1f s\n", now() - t0);
        struct machine m;
        memset(&m, 0, sizeof m);
        run_size(&b, er, NENG, &m);
        for (int e = 0; e < NENG; e++) {
            if (er[e].h) {
                er[e].e->close(er[e].h);
                remove_tree(er[e].dir);
            }
            if (out[e].bad || out[e].errors)
                failed = 1;
        }
        report(&b, out, &m, csv, &header_done);
        fflush(stdout);
    }
    remove_tree(parent);
    free(keys);
    free(sorted);
    free(order);
    free(absent);
    free(starts);
    free(chase_block);
    if (failed)
        fprintf(stderr, "compare: FAILED: wrong results or errors (see above)\n");
    return failed;
}
