/*
 * test_crash.c — crash recovery under SIGKILL.
 *
 * Each cycle forks a child that opens the database (KV_SYNC_FULL in the first
 * two tests) and writes: puts and deletes on single keys, and batches over a
 * group of keys whose values all carry the batch's tag; now and then a
 * snapshot, compaction,
 * index rebuild or sync (small wal_max_bytes and rebuild_appends add automatic
 * snapshots and folds in the background). After every call that returns
 * KV_OK the child writes a fixed-size record {thread, seq} to a pipe. The
 * parent kills the child with SIGKILL at a random moment (0-50 ms after the
 * database is open, or after the fork in one cycle of four so recovery itself
 * is interrupted; every fifth cycle runs 50-300 ms), reopens the database and
 * checks it.
 *
 * The model. The operations of thread t are a deterministic function of
 * (cycle seed, t, seq), so the parent regenerates them. Thread t runs them
 * in order, one at a time, on keys no other thread touches. If the parent
 * received A acknowledgements from t, operations 0..A-1 returned KV_OK and
 * operation A may have been in flight (or even returned, with the ack lost
 * to the kill); nothing later was ever issued. So the keys of thread t must
 * be exactly in state S(A) or S(A+1), where S(i) is the state before the
 * cycle plus t's first i operations. This is stronger than "every key holds
 * its last acknowledged value or a later one that was issued": it also
 * requires each batch to be whole or absent, no key to appear that was never
 * written, and nothing acknowledged to be lost. Every value is also checked
 * on its own bytes (key, tag, checksum), so a value that was never written
 * is reported as such.
 *
 * The state found becomes the starting point of the next cycle, so damage
 * accumulates if recovery ever goes wrong.
 *
 * The same runs with KV_SYNC_NORMAL (a write handed to the OS survives a
 * process crash: the same rule) and with KV_SYNC_OFF, where only writes
 * before the last acknowledged kv_sync are promised: there the state must be
 * S(i) for some i between that kv_sync and A + 1.
 *
 * The main test is the KV_SYNC_FULL one with MAX_THREADS writer threads: it
 * runs KYRO_CRASH_CYCLES cycles (default 200; 40 with KYRO_TEST_SCALE=small;
 * `make stress` runs 5000). The other three run a fifth of that each (at
 * least 2). Before each reopen the directory is looked at as the kill left
 * it, to count the kills that caught a snapshot or manifest half-written
 * (a *.tmp file) or a snapshot not yet retired the WAL it covers (two or
 * more WAL files). Every test prints its figures (cycles, time, acknowledged
 * writes and maintenance calls, key states and values verified); the last
 * line of the program sums them.
 *
 * The database lives under $KYRO_TEST_DIR, else /dev/shm, else /tmp
 * (tu_mkdtemp_fast): a SIGKILL leaves the page cache alone, so a tmpfs loses
 * nothing a disk would keep after a process crash, and fsync costs nothing
 * there, so each cycle gets through many more writes.
 *
 * Environment: KYRO_CRASH_CYCLES, KYRO_TEST_SEED, KYRO_TEST_DIR.
 *
 * Sanitizers: make test-asan runs it (KYRO_TEST_SCALE=small: 64 cycles). It
 * is deliberately not in the Makefile's TSAN_TESTS: it works under TSan (the
 * parent forks while single-threaded, a report in the child would end it
 * before the kill and fail the cycle), but TSan slows the child so much that
 * it acknowledges only a few writes per 0-50 ms window (64 cycles, ~150
 * writes, ~50 s), while test_db_threads covers the same concurrent writers,
 * snapshots and folds under TSan at length.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kyro.h"
#include "testutil.h"

#define MAX_THREADS 4
#define NSINGLE 300                    /* single keys per thread */
#define NGROUPS 16                     /* batch groups per thread */
#define GSIZE 6                        /* keys per group */
#define NKEYS (NSINGLE + NGROUPS * GSIZE)

enum { OP_PUT, OP_DEL, OP_BATCH, OP_SNAPSHOT, OP_COMPACT, OP_REBUILD, OP_SYNC };

/* The sync mode of the current test (the child inherits it). */
static kv_sync_mode g_mode = KV_SYNC_FULL;

typedef struct {
    int kind;
    uint64_t tag;
    unsigned n;              /* keys touched */
    unsigned id[GSIZE];      /* key ids */
    size_t len[GSIZE];       /* SIZE_MAX: delete */
} op_t;

typedef struct {
    uint8_t present;
    uint64_t tag;
    size_t len;
} slot;

/* What the child sends: {t, rc, seq}. */
#define REC_READY 0xFFFFu
typedef struct {
    uint32_t t;
    int32_t rc; /* 0: an acknowledgement; else the failing status */
    uint64_t seq;
} rec;

/* ---- keys and operations -------------------------------------------------------- */

static uint64_t key_of(unsigned t, unsigned id)
{
    if (t == 0 && id == 0)
        return 0;
    if (t == 0 && id == 1)
        return UINT64_MAX;
    if (id < 100)
        return ((uint64_t)(t + 1) << 20) + id; /* a small dense range */
    return tu_mix64(((uint64_t)(t + 1) << 32) | id);
}

typedef struct {
    uint64_t key;
    unsigned t, id;
} keymap;

static keymap g_keys[MAX_THREADS * NKEYS];

static int keymap_cmp(const void *a, const void *b)
{
    uint64_t x = ((const keymap *)a)->key, y = ((const keymap *)b)->key;
    return x < y ? -1 : x > y;
}

static void keymap_init(void)
{
    size_t n = 0;
    for (unsigned t = 0; t < MAX_THREADS; t++)
        for (unsigned id = 0; id < NKEYS; id++)
            g_keys[n++] = (keymap){key_of(t, id), t, id};
    qsort(g_keys, n, sizeof g_keys[0], keymap_cmp);
    for (size_t i = 1; i < n; i++)
        assert_true(g_keys[i - 1].key != g_keys[i].key);
}

static const keymap *keymap_find(uint64_t key)
{
    size_t lo = 0, hi = MAX_THREADS * NKEYS;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g_keys[mid].key < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < MAX_THREADS * NKEYS && g_keys[lo].key == key ? &g_keys[lo] : NULL;
}

static size_t value_len(tu_rng *r)
{
    if (tu_chance(r, 20))
        return 65536 + (size_t)tu_below(r, 4096);
    return TU_VAL_HDR + (size_t)tu_below(r, 2000);
}

/* Operation seq of thread t in the cycle with seed cseed. */
static void gen_op(uint64_t cseed, unsigned t, uint64_t seq, uint64_t cycle, op_t *op)
{
    tu_rng r = tu_rng_seed(tu_mix64(cseed ^ ((uint64_t)t << 48)) ^ tu_mix64(seq + 1));
    memset(op, 0, sizeof *op);
    op->tag = (cycle << 40) | ((uint64_t)t << 32) | seq;
    uint64_t x = tu_below(&r, 1000);
    if (g_mode == KV_SYNC_OFF && x < 40) {
        op->kind = OP_SYNC; /* the only durability points in this mode */
        return;
    }
    if (x < 550) {
        op->kind = OP_PUT;
        op->n = 1;
        op->id[0] = (unsigned)tu_below(&r, NSINGLE);
        op->len[0] = value_len(&r);
    } else if (x < 700) {
        op->kind = OP_DEL;
        op->n = 1;
        op->id[0] = (unsigned)tu_below(&r, NSINGLE);
    } else if (x < 960) {
        op->kind = OP_BATCH;
        unsigned g = (unsigned)tu_below(&r, NGROUPS);
        op->n = GSIZE;
        for (unsigned i = 0; i < GSIZE; i++) {
            op->id[i] = NSINGLE + g * GSIZE + i;
            op->len[i] = tu_chance(&r, 150) ? SIZE_MAX : value_len(&r);
        }
    } else if (x < 975) {
        op->kind = OP_SNAPSHOT;
    } else if (x < 985) {
        op->kind = OP_COMPACT;
    } else if (x < 993) {
        op->kind = OP_REBUILD;
    } else {
        op->kind = OP_SYNC;
    }
}

static void apply_op(slot *s, const op_t *op)
{
    for (unsigned i = 0; i < op->n; i++) {
        slot *k = &s[op->id[i]];
        if (op->kind == OP_DEL || op->len[i] == SIZE_MAX) {
            k->present = 0;
        } else {
            k->present = 1;
            k->tag = op->tag;
            k->len = op->len[i];
        }
    }
}

static int slot_eq(const slot *a, const slot *b)
{
    if (a->present != b->present)
        return 0;
    return !a->present || (a->tag == b->tag && a->len == b->len);
}

static int state_eq(const slot *a, const slot *b)
{
    for (unsigned id = 0; id < NKEYS; id++) {
        if (!slot_eq(&a[id], &b[id]))
            return 0;
    }
    return 1;
}

/* ---- the child ------------------------------------------------------------------ */

typedef struct {
    kv_db *db;
    int fd;
    unsigned t;
    uint64_t cseed, cycle;
} worker;

static void send_rec(int fd, uint32_t t, int32_t rc, uint64_t seq)
{
    rec x = {t, rc, seq};
    /* Records are far below PIPE_BUF, so each write is atomic. */
    if (write(fd, &x, sizeof x) != (ssize_t)sizeof x)
        _exit(5);
}

static int run_op(kv_db *db, kv_batch *b, unsigned t, const op_t *op)
{
    uint8_t *v;
    int rc;
    switch (op->kind) {
    case OP_PUT:
        v = tu_val_new(op->len[0], key_of(t, op->id[0]), op->tag);
        rc = kv_put(db, key_of(t, op->id[0]), v, op->len[0]);
        free(v);
        return rc;
    case OP_DEL:
        return kv_delete(db, key_of(t, op->id[0]));
    case OP_BATCH:
        kv_batch_clear(b);
        for (unsigned i = 0; i < op->n; i++) {
            uint64_t key = key_of(t, op->id[i]);
            if (op->len[i] == SIZE_MAX) {
                rc = kv_batch_delete(b, key);
            } else {
                v = tu_val_new(op->len[i], key, op->tag);
                rc = kv_batch_put(b, key, v, op->len[i]);
                free(v);
            }
            if (rc != KV_OK)
                return rc;
        }
        return kv_batch_commit(db, b);
    case OP_SNAPSHOT:
        return kv_snapshot(db);
    case OP_COMPACT:
        return kv_compact(db);
    case OP_REBUILD:
        return kv_rebuild_index(db);
    default:
        return kv_sync(db);
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    kv_batch *b;
    if (kv_batch_new(&b) != KV_OK)
        _exit(6);
    for (uint64_t seq = 0;; seq++) {
        op_t op;
        gen_op(w->cseed, w->t, seq, w->cycle, &op);
        int rc = run_op(w->db, b, w->t, &op);
        send_rec(w->fd, w->t, rc, seq);
        if (rc != KV_OK)
            _exit(3);
    }
    return NULL;
}

static void child_main(const char *dir, int fd, unsigned nthreads, uint64_t cseed, uint64_t cycle)
{
    alarm(60); /* never outlive a broken parent */
    kv_options o;
    kv_options_init(&o);
    o.sync = g_mode;
    o.sync_interval_ms = 20;
    o.wal_max_bytes = 64 * 1024;
    o.rebuild_appends = 200;
    kv_db *db = NULL;
    int rc = kv_open(dir, &o, &db);
    if (rc != KV_OK) {
        send_rec(fd, REC_READY, rc, 0);
        _exit(4);
    }
    send_rec(fd, REC_READY, 0, 0);
    worker w[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    for (unsigned t = 0; t < nthreads; t++) {
        w[t] = (worker){db, fd, t, cseed, cycle};
        if (t > 0 && pthread_create(&th[t], NULL, worker_main, &w[t]) != 0)
            _exit(7);
    }
    worker_main(&w[0]);
}

/* ---- the parent ------------------------------------------------------------------- */

typedef struct {
    char root[TU_PATH], dir[TU_PATH];
    unsigned nthreads;
    uint64_t seed;
    slot state[MAX_THREADS][NKEYS]; /* verified state before the cycle */
    uint64_t total_acks, inflight_applied, cycles_killed_early, lost_unsynced;
    uint64_t acked_writes, acked_maint, maint_inflight, kills_tmp, kills_multiwal;
    uint64_t keys_checked, values_checked;
} crash_ctx;

/* Sums over every test of the program, printed at the end. */
static struct {
    uint64_t tests, cycles, acked_writes, acked_maint, keys_checked, values_checked;
    uint64_t kills_tmp, kills_multiwal, maint_inflight, ns;
} g_total;

/* Read records until the deadline (ns, 0: until EOF); returns 1 at EOF. */
static int drain(int fd, uint64_t deadline, uint64_t *acks, unsigned nthreads, int *ready,
                 int *child_rc, uint64_t *child_seq, unsigned *child_t)
{
    static uint8_t buf[sizeof(rec) * 256];
    static size_t have = 0;
    for (;;) {
        int timeout = -1;
        if (deadline) {
            uint64_t now = tu_now_ns();
            if (now >= deadline)
                return 0;
            timeout = (int)((deadline - now) / 1000000) + 1;
        }
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, timeout);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            continue;
        ssize_t n = read(fd, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            have = 0;
            return 1;
        }
        have += (size_t)n;
        size_t off = 0;
        for (; off + sizeof(rec) <= have; off += sizeof(rec)) {
            rec x;
            memcpy(&x, buf + off, sizeof x);
            if (x.t == REC_READY) {
                *ready = 1;
                if (x.rc != 0) {
                    *child_rc = x.rc;
                    *child_t = REC_READY;
                }
                continue;
            }
            if (x.t >= nthreads)
                fail_msg("bad record from the child: thread %u", x.t);
            if (x.rc != 0) {
                *child_rc = x.rc;
                *child_seq = x.seq;
                *child_t = x.t;
                continue;
            }
            if (x.seq != acks[x.t])
                fail_msg("child thread %u acknowledged seq %llu, expected %llu", x.t,
                         (unsigned long long)x.seq, (unsigned long long)acks[x.t]);
            acks[x.t]++;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
}

static void describe(char *out, size_t cap, const slot *s)
{
    if (!s->present)
        snprintf(out, cap, "absent");
    else
        snprintf(out, cap, "tag %#llx (%zu bytes)", (unsigned long long)s->tag, s->len);
}

/*
 * Open, read everything, compare each thread's keys with S(A) or S(A+1)
 * (exact: only S(A), for a second open or a child that never got to write).
 */
static void verify(crash_ctx *c, uint64_t cycle, uint64_t cseed, const uint64_t *acks, int exact)
{
    kv_options o;
    kv_options_init(&o);
    o.flags = 0; /* the database must exist */
    kv_db *db = NULL;
    int rc = kv_open(c->dir, &o, &db);
    if (rc != KV_OK)
        fail_msg("seed %llu cycle %llu: reopen after the crash = %d (%s)",
                 (unsigned long long)c->seed, (unsigned long long)cycle, rc, kv_strerror(rc));

    static slot found[MAX_THREADS][NKEYS];
    memset(found, 0, sizeof found);
    kv_iter *it;
    TU_OK(kv_iter_open(db, 0, UINT64_MAX, &it));
    uint64_t key, prev = 0;
    const void *val;
    size_t len;
    size_t n = 0;
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        if (n && key <= prev)
            fail_msg("cycle %llu: scan not ascending (%llu after %llu)", (unsigned long long)cycle,
                     (unsigned long long)key, (unsigned long long)prev);
        prev = key;
        n++;
        const keymap *km = keymap_find(key);
        if (!km || km->t >= c->nthreads)
            fail_msg("seed %llu cycle %llu: key %llu was never written", (unsigned long long)c->seed,
                     (unsigned long long)cycle, (unsigned long long)key);
        uint64_t tag = 0;
        if (!tu_val_decode(val, len, key, &tag))
            fail_msg("seed %llu cycle %llu: key %llu holds %zu bytes that no write produced "
                     "(torn or foreign value)",
                     (unsigned long long)c->seed, (unsigned long long)cycle,
                     (unsigned long long)key, len);
        c->values_checked++;
        slot *s = &found[km->t][km->id];
        s->present = 1;
        s->tag = tag;
        s->len = len;
    }
    TU_RC(rc, KV_NOTFOUND);
    kv_iter_close(it);

    /* Point reads agree with the scan. */
    for (unsigned t = 0; t < c->nthreads; t++) {
        for (unsigned id = 0; id < NKEYS; id++) {
            void *p = NULL;
            rc = kv_get_alloc(db, key_of(t, id), &p, &len);
            const slot *s = &found[t][id];
            if (s->present) {
                if (rc != KV_OK || !tu_val_matches(p, len, key_of(t, id), s->tag, s->len))
                    fail_msg("cycle %llu: kv_get_alloc(%llu) = %d disagrees with the scan",
                             (unsigned long long)cycle, (unsigned long long)key_of(t, id), rc);
                kv_free(p);
            } else if (rc != KV_NOTFOUND) {
                fail_msg("cycle %llu: kv_get_alloc(%llu) = %d but the scan did not show it",
                         (unsigned long long)cycle, (unsigned long long)key_of(t, id), rc);
            }
        }
    }
    kv_stats st;
    TU_OK(kv_stats_get(db, &st));
    if (st.keys != n)
        fail_msg("cycle %llu: stats.keys %llu, scan found %zu", (unsigned long long)cycle,
                 (unsigned long long)st.keys, n);
    TU_OK(kv_close(db));
    c->keys_checked += (uint64_t)c->nthreads * NKEYS;

    for (unsigned t = 0; t < c->nthreads; t++) {
        static slot cand[NKEYS];
        memcpy(cand, c->state[t], sizeof cand);
        op_t op;
        for (uint64_t i = 0; i < acks[t]; i++) {
            gen_op(cseed, t, i, cycle, &op);
            apply_op(cand, &op);
        }
        if (state_eq(cand, found[t])) {
            memcpy(c->state[t], found[t], sizeof cand);
            continue;
        }
        /* Not S(A): it must be S(A+1), the in-flight operation applied. */
        static slot cand2[NKEYS];
        memcpy(cand2, cand, sizeof cand2);
        gen_op(cseed, t, acks[t], cycle, &op);
        apply_op(cand2, &op);
        if (!exact && state_eq(cand2, found[t])) {
            memcpy(c->state[t], found[t], sizeof cand2);
            c->inflight_applied++;
            continue;
        }
        if (!exact && g_mode == KV_SYNC_OFF) {
            /* Only what the last acknowledged kv_sync covered is promised;
             * the log is written in order, so the state is S(i) for some i
             * from just after that kv_sync up to A + 1. */
            uint64_t from = 0;
            for (uint64_t i = 0; i < acks[t]; i++) {
                gen_op(cseed, t, i, cycle, &op);
                if (op.kind == OP_SYNC)
                    from = i + 1;
            }
            static slot cand3[NKEYS];
            memcpy(cand3, c->state[t], sizeof cand3);
            int matched = 0;
            for (uint64_t i = 0; i <= acks[t] + 1 && !matched; i++) {
                if (i > 0) {
                    gen_op(cseed, t, i - 1, cycle, &op);
                    apply_op(cand3, &op);
                }
                if (i >= from && state_eq(cand3, found[t])) {
                    matched = 1;
                    c->lost_unsynced += acks[t] > i ? acks[t] - i : 0;
                }
            }
            if (matched) {
                memcpy(c->state[t], found[t], sizeof cand3);
                continue;
            }
            fail_msg("seed %llu cycle %llu (KV_SYNC_OFF): the state after the crash is not the "
                     "state after any prefix of the operations from the last acknowledged kv_sync "
                     "(op %llu) to the in-flight one (op %llu)",
                     (unsigned long long)c->seed, (unsigned long long)cycle,
                     (unsigned long long)from, (unsigned long long)acks[t]);
        }
        /* Neither: report the first key that differs from S(A). */
        for (unsigned id = 0; id < NKEYS; id++) {
            if (slot_eq(&cand[id], &found[t][id]))
                continue;
            char want[64], alt[64], got[64];
            describe(want, sizeof want, &cand[id]);
            describe(alt, sizeof alt, &cand2[id]);
            describe(got, sizeof got, &found[t][id]);
            fail_msg("seed %llu cycle %llu thread %u (%llu acks, in-flight op kind %d): key %llu "
                     "(id %u) is %s; acknowledged state has %s, in-flight state %s%s",
                     (unsigned long long)c->seed, (unsigned long long)cycle, t,
                     (unsigned long long)acks[t], op.kind, (unsigned long long)key_of(t, id), id,
                     got, want, exact ? "not allowed" : alt, exact ? " (exact check)" : "");
        }
        fail_msg("thread %u: state differs", t);
    }
}

/* What the kill left in the directory: *tmp = a *.tmp file (a snapshot or
 * manifest caught half-written), *nwal = WAL files. */
static void look_at_dir(const char *dir, int *tmp, int *nwal)
{
    *tmp = *nwal = 0;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0)
            *tmp = 1;
        if (strncmp(e->d_name, "wal-", 4) == 0)
            (*nwal)++;
    }
    closedir(d);
}

/* Cycles of the main test (KV_SYNC_FULL, several threads). */
static uint64_t main_cycles(void)
{
    return tu_env_u64("KYRO_CRASH_CYCLES", tu_small() ? 40 : 200);
}

/* Cycles of the other tests: a fifth of the main test's, at least 2. */
static uint64_t side_cycles(void)
{
    uint64_t n = main_cycles() / 5;
    return n < 2 ? 2 : n;
}

static void run_cycles(unsigned nthreads, uint64_t seed, kv_sync_mode mode, uint64_t cycles)
{
    uint64_t t0 = tu_now_ns();
    g_mode = mode;
    crash_ctx *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->nthreads = nthreads;
    c->seed = seed;
    if (tu_mkdtemp_fast(c->root, "crash") != 0)
        fail_msg("mkdtemp");
    tu_join(c->dir, c->root, "db");
    keymap_init();
    tu_rng r = tu_rng_seed(seed);
    static const char *const mode_name[] = {"KV_SYNC_FULL", "KV_SYNC_NORMAL", "KV_SYNC_OFF"};
    print_message("[ crash    ] %s, seed %llu, %u thread(s), %llu cycles, dir %s\n",
                  mode_name[mode], (unsigned long long)seed, nthreads, (unsigned long long)cycles,
                  c->dir);
    for (uint64_t cycle = 1; cycle <= cycles; cycle++) {
        uint64_t cseed = tu_next(&r);
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            child_main(c->dir, fds[1], nthreads, cseed, cycle);
            _exit(0);
        }
        close(fds[1]);
        uint64_t acks[MAX_THREADS] = {0};
        int ready = 0, child_rc = 0;
        uint64_t child_seq = 0;
        unsigned child_t = 0;
        /* One cycle in four kills from the fork (maybe inside kv_open's
         * recovery); the others from the moment the database is open. */
        uint64_t delay_ns = tu_below(&r, 50 * 1000000ull + 1);
        if (cycle % 5 == 0) /* now and then a longer run, so automatic snapshots happen */
            delay_ns = 50000000ull + tu_below(&r, 250 * 1000000ull);
        if (cycle % 4 != 0) {
            uint64_t limit = tu_now_ns() + 30000000000ull;
            while (!ready && !child_rc && tu_now_ns() < limit) {
                if (drain(fds[0], tu_now_ns() + 1000000, acks, nthreads, &ready, &child_rc,
                          &child_seq, &child_t))
                    break;
            }
            if (!ready)
                fail_msg("cycle %llu: the child did not open the database within 30 s",
                         (unsigned long long)cycle);
        }
        int eof = drain(fds[0], tu_now_ns() + delay_ns, acks, nthreads, &ready, &child_rc,
                        &child_seq, &child_t);
        kill(pid, SIGKILL);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        if (!eof)
            drain(fds[0], 0, acks, nthreads, &ready, &child_rc, &child_seq, &child_t);
        close(fds[0]);
        if (child_rc) {
            if (child_t == REC_READY)
                fail_msg("seed %llu cycle %llu: child kv_open = %d (%s)", (unsigned long long)seed,
                         (unsigned long long)cycle, child_rc, kv_strerror(child_rc));
            fail_msg("seed %llu cycle %llu: child thread %u op %llu = %d (%s)",
                     (unsigned long long)seed, (unsigned long long)cycle, child_t,
                     (unsigned long long)child_seq, child_rc, kv_strerror(child_rc));
        }
        if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
            fail_msg("cycle %llu: the child ended on its own (status %#x)", (unsigned long long)cycle,
                     st);
        if (!ready) {
            c->cycles_killed_early++;
            /* Killed before or inside kv_open: nothing of this cycle ran. */
            struct stat sb;
            if (stat(c->dir, &sb) != 0)
                continue; /* not even created */
        }
        int maint = 0;
        for (unsigned t = 0; t < nthreads; t++) {
            c->total_acks += acks[t];
            op_t op;
            for (uint64_t i = 0; i <= acks[t]; i++) {
                gen_op(cseed, t, i, cycle, &op);
                int write = op.kind == OP_PUT || op.kind == OP_DEL || op.kind == OP_BATCH;
                if (i == acks[t]) /* the one in flight when the kill came */
                    maint |= ready && (op.kind == OP_SNAPSHOT || op.kind == OP_COMPACT ||
                                       op.kind == OP_REBUILD);
                else if (write)
                    c->acked_writes++;
                else
                    c->acked_maint++;
            }
        }
        c->maint_inflight += maint;
        int tmp, nwal;
        look_at_dir(c->dir, &tmp, &nwal);
        c->kills_tmp += tmp;
        c->kills_multiwal += nwal > 1;
        verify(c, cycle, cseed, acks, !ready);
        /* Recovery is repeatable: a second open finds the same state. */
        uint64_t none[MAX_THREADS] = {0};
        verify(c, cycle, 0, none, 1);
    }
    uint64_t ns = tu_now_ns() - t0;
    print_message("[ crash    ] %s: %llu cycles in %.1f s; %llu acknowledged writes (puts, deletes, "
                  "batches) and %llu maintenance calls; in-flight operation found applied "
                  "%llu times; %llu kills before the database was open, %llu with a "
                  "snapshot/compact/rebuild call in flight, %llu leaving a half-written "
                  "snapshot or manifest, %llu with 2+ WAL files; %llu unsynced operations lost\n",
                  mode_name[mode], (unsigned long long)cycles, (double)ns / 1e9,
                  (unsigned long long)c->acked_writes, (unsigned long long)c->acked_maint,
                  (unsigned long long)c->inflight_applied,
                  (unsigned long long)c->cycles_killed_early,
                  (unsigned long long)c->maint_inflight, (unsigned long long)c->kills_tmp,
                  (unsigned long long)c->kills_multiwal, (unsigned long long)c->lost_unsynced);
    print_message("[ crash    ] verified after every kill: %llu key states against the "
                  "acknowledged writes (2 opens per cycle), %llu values by their checksums\n",
                  (unsigned long long)c->keys_checked, (unsigned long long)c->values_checked);
    g_total.tests++;
    g_total.cycles += cycles;
    g_total.acked_writes += c->acked_writes;
    g_total.acked_maint += c->acked_maint;
    g_total.keys_checked += c->keys_checked;
    g_total.values_checked += c->values_checked;
    g_total.kills_tmp += c->kills_tmp;
    g_total.kills_multiwal += c->kills_multiwal;
    g_total.maint_inflight += c->maint_inflight;
    g_total.ns += ns;
    if (c->total_acks == 0)
        fail_msg("no operation was acknowledged in %llu cycles: the test tested nothing",
                 (unsigned long long)cycles);
    tu_rmrf(c->root);
    free(c);
}

static void test_crash_full_single_thread(void **state)
{
    (void)state;
    run_cycles(1, tu_env_u64("KYRO_TEST_SEED", 0x5EED0001), KV_SYNC_FULL, side_cycles());
}

static void test_crash_full_threads(void **state)
{
    (void)state;
    run_cycles(MAX_THREADS, tu_env_u64("KYRO_TEST_SEED", 0x5EED0001) + 1, KV_SYNC_FULL,
               main_cycles());
}

/* KV_SYNC_NORMAL: a write handed to the OS survives a process crash, so the
 * same rule as KV_SYNC_FULL applies to SIGKILL. */
static void test_crash_normal_threads(void **state)
{
    (void)state;
    run_cycles(MAX_THREADS, tu_env_u64("KYRO_TEST_SEED", 0x5EED0001) + 2, KV_SYNC_NORMAL,
               side_cycles());
}

/* KV_SYNC_OFF: only writes before an acknowledged kv_sync are promised. */
static void test_crash_off_single_thread(void **state)
{
    (void)state;
    run_cycles(1, tu_env_u64("KYRO_TEST_SEED", 0x5EED0001) + 3, KV_SYNC_OFF, side_cycles());
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_full_single_thread),
        cmocka_unit_test(test_crash_full_threads),
        cmocka_unit_test(test_crash_normal_threads),
        cmocka_unit_test(test_crash_off_single_thread),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    print_message("[ crash    ] total: %llu tests, %llu SIGKILL cycles in %.1f s, %llu acknowledged "
                  "writes and %llu maintenance calls verified, %llu key states and %llu values "
                  "checked; %llu kills with maintenance in flight, %llu mid-snapshot/manifest "
                  "(*.tmp left), %llu with 2+ WAL files\n",
                  (unsigned long long)g_total.tests, (unsigned long long)g_total.cycles,
                  (double)g_total.ns / 1e9, (unsigned long long)g_total.acked_writes,
                  (unsigned long long)g_total.acked_maint, (unsigned long long)g_total.keys_checked,
                  (unsigned long long)g_total.values_checked,
                  (unsigned long long)g_total.maint_inflight, (unsigned long long)g_total.kills_tmp,
                  (unsigned long long)g_total.kills_multiwal);
    return failed;
}
