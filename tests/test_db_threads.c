/*
 * test_db_threads.c — concurrent writers, readers and background work.
 *
 * Writers (one, then two on disjoint key ranges) run with KV_SYNC_OFF and a
 * small rebuild_appends, so the write buffer is folded into the index in the
 * background all the time, and call kv_snapshot / kv_compact /
 * kv_rebuild_index now and then (or a separate maintenance thread does).
 * Readers meanwhile use kv_get, kv_get_alloc, views and iterators.
 *
 * What the readers check. Each writer numbers its write operations
 * (gseq 1, 2, ...) and keeps, for every tracked key, the gseq of each of its
 * writes: hist[key][c] is the gseq of the write that gave the key its c-th
 * value. It records that entry before calling the library. A value carries
 * (key, c, gseq) and a checksum. A reader remembers the highest gseq it has
 * seen from each writer (maxG) and the last c it saw for each key. Then:
 *
 *   - a value decodes (no torn or foreign bytes) and hist[key][c] == gseq;
 *   - c never goes down for a key (no going back in time);
 *   - hist[key][c+1] > maxG: the next write of that key was not issued
 *     before a write this reader already saw (which returned before the
 *     next one began, so it must be visible too);
 *   - in a view or an iterator, the same with maxG taken over everything the
 *     view shows: a view is a prefix of each writer's history;
 *   - a batch writes generation c into all keys of a group and, when c is
 *     even, the same into the group's shadow keys, otherwise deletes them: a
 *     view or iterator sees all main keys with one generation and the shadow
 *     keys all present (same tag) or all absent accordingly;
 *   - scans in a view are ascending, unique and agree with kv_view_get, and
 *     the zero-copy pointers of a view keep their bytes until it is closed;
 *   - a view's tracked keys read in one kv_view_get_many pass the same
 *     checks as those read one kv_view_get at a time.
 *
 * Afterwards every key is compared with the writer's final state, before and
 * after a reopen. The group-commit test runs 4 threads of KV_SYNC_FULL puts
 * and checks all of them after a reopen.
 *
 * Runs under ThreadSanitizer; KYRO_TEST_SCALE=small keeps it short.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kyro.h"
#include "testutil.h"

#define MAX_WRITERS 2
#define MAX_READERS 3
#define NCTR 64  /* counter keys per writer */
#define NGRP 8   /* batch groups per writer */
#define GK 4     /* keys per group (and as many shadow keys) */
#define NTRK (NCTR + NGRP * GK) /* tracked keys per writer */
#define NCHURN 128
#define UNSET UINT64_MAX
#define GSEQ_BITS 40
#define GSEQ_MASK ((1ull << GSEQ_BITS) - 1)

/* ---- keys ------------------------------------------------------------------ */

static uint64_t wbase(unsigned w)
{
    return ((uint64_t)w + 1) << 44;
}
/* tracked key i: counters 0..NCTR-1, then group mains */
static uint64_t trk_key(unsigned w, unsigned i)
{
    if (i < NCTR)
        return wbase(w) + i;
    unsigned g = (i - NCTR) / GK, k = (i - NCTR) % GK;
    return wbase(w) + 0x1000 + g * 16 + k;
}
static uint64_t shadow_key(unsigned w, unsigned g, unsigned k)
{
    return wbase(w) + 0x2000 + g * 16 + k;
}
static uint64_t churn_key(unsigned w, unsigned i)
{
    if (w == 0 && i == 0)
        return 0;
    if (w == 0 && i == 1)
        return UINT64_MAX;
    return wbase(w) + 0x3000 + (uint64_t)i * 7;
}
/* The tracked index of key for writer w, or -1. */
static int trk_index(unsigned w, uint64_t key)
{
    if (key >= wbase(w) && key < wbase(w) + NCTR)
        return (int)(key - wbase(w));
    if (key >= wbase(w) + 0x1000 && key < wbase(w) + 0x1000 + NGRP * 16) {
        uint64_t off = key - wbase(w) - 0x1000;
        if (off % 16 < GK)
            return NCTR + (int)(off / 16) * GK + (int)(off % 16);
    }
    return -1;
}

/* ---- shared state -------------------------------------------------------------- */

typedef struct {
    uint8_t present;
    uint64_t tag;
    size_t len;
} cslot;

typedef struct {
    unsigned id;
    uint64_t gseq;              /* writer-private */
    uint64_t cnt[NTRK];         /* writer-private: current counter per tracked key */
    uint64_t *hist;             /* [NTRK][cap]: gseq of each write, atomic access */
    size_t cap;
    cslot churn[NCHURN];        /* writer-private */
    size_t nops;
    int maintenance;            /* this writer also snapshots/compacts */
    uint64_t seed;
} writer_t;

typedef struct {
    kv_db *db;
    writer_t w[MAX_WRITERS];
    unsigned nwriters;
    atomic_int writers_done;
    atomic_int failed;
    pthread_mutex_t msg_lock;
    char msg[512];
    /* reader statistics */
    atomic_ulong n_gets, n_views, n_iters;
} shared_t;

static shared_t S;

static void failf(const char *fmt, ...)
{
    pthread_mutex_lock(&S.msg_lock);
    if (!atomic_load(&S.failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(S.msg, sizeof S.msg, fmt, ap);
        va_end(ap);
        atomic_store(&S.failed, 1);
    }
    pthread_mutex_unlock(&S.msg_lock);
}

static uint64_t hist_get(const writer_t *w, unsigned i, uint64_t c)
{
    if (c >= w->cap)
        return UNSET;
    return __atomic_load_n(&w->hist[(size_t)i * w->cap + c], __ATOMIC_RELAXED);
}

static void hist_set(writer_t *w, unsigned i, uint64_t c, uint64_t g)
{
    __atomic_store_n(&w->hist[(size_t)i * w->cap + c], g, __ATOMIC_RELAXED);
}

/* ---- writers --------------------------------------------------------------------- */

static int w_put_trk(writer_t *w, unsigned i, tu_rng *r)
{
    uint64_t c = w->cnt[i] + 1;
    if (c >= w->cap)
        return KV_OK; /* history full: skip */
    uint64_t g = ++w->gseq;
    hist_set(w, i, c, g);
    w->cnt[i] = c;
    size_t len = TU_VAL_HDR + (size_t)tu_below(r, tu_chance(r, 50) ? 2000 : 40);
    uint64_t key = trk_key(w->id, i);
    uint8_t *v = tu_val_new(len, key, c << GSEQ_BITS | g);
    int rc = kv_put(S.db, key, v, len);
    free(v);
    return rc;
}

static int w_batch_group(writer_t *w, unsigned grp, kv_batch *b, tu_rng *r)
{
    unsigned first = NCTR + grp * GK;
    uint64_t c = w->cnt[first] + 1;
    if (c >= w->cap)
        return KV_OK;
    uint64_t g = ++w->gseq;
    for (unsigned k = 0; k < GK; k++) {
        hist_set(w, first + k, c, g);
        w->cnt[first + k] = c;
    }
    uint64_t tag = c << GSEQ_BITS | g;
    kv_batch_clear(b);
    int rc = KV_OK;
    for (unsigned k = 0; k < GK && rc == KV_OK; k++) {
        size_t len = TU_VAL_HDR + (size_t)tu_below(r, 64);
        uint64_t key = trk_key(w->id, first + k);
        uint8_t *v = tu_val_new(len, key, tag);
        rc = kv_batch_put(b, key, v, len);
        free(v);
        if (rc != KV_OK)
            break;
        uint64_t sk = shadow_key(w->id, grp, k);
        if (c % 2 == 0) {
            v = tu_val_new(len, sk, tag);
            rc = kv_batch_put(b, sk, v, len);
            free(v);
        } else {
            rc = kv_batch_delete(b, sk);
        }
    }
    return rc == KV_OK ? kv_batch_commit(S.db, b) : rc;
}

static int w_churn(writer_t *w, tu_rng *r)
{
    unsigned i = (unsigned)tu_below(r, NCHURN);
    uint64_t key = churn_key(w->id, i);
    uint64_t g = ++w->gseq;
    if (tu_chance(r, 350)) {
        w->churn[i].present = 0;
        return kv_delete(S.db, key);
    }
    size_t len = TU_VAL_HDR + (size_t)tu_below(r, 300);
    uint8_t *v = tu_val_new(len, key, g);
    int rc = kv_put(S.db, key, v, len);
    free(v);
    w->churn[i] = (cslot){1, g, len};
    return rc;
}

/* Every tracked key and group once, so readers always find values. */
static void writer_init(writer_t *w)
{
    kv_batch *b;
    if (kv_batch_new(&b) != KV_OK) {
        failf("kv_batch_new failed");
        return;
    }
    tu_rng r = tu_rng_seed(w->seed ^ 0x1111);
    for (unsigned i = 0; i < NCTR; i++) {
        int rc = w_put_trk(w, i, &r);
        if (rc != KV_OK)
            failf("writer %u init put: %d (%s)", w->id, rc, kv_strerror(rc));
    }
    for (unsigned g = 0; g < NGRP; g++) {
        int rc = w_batch_group(w, g, b, &r);
        if (rc != KV_OK)
            failf("writer %u init batch: %d (%s)", w->id, rc, kv_strerror(rc));
    }
    kv_batch_free(b);
}

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    kv_batch *b;
    if (kv_batch_new(&b) != KV_OK) {
        failf("kv_batch_new failed");
        atomic_fetch_add(&S.writers_done, 1);
        return NULL;
    }
    tu_rng r = tu_rng_seed(w->seed);
    for (size_t op = 0; op < w->nops && !atomic_load(&S.failed); op++) {
        uint64_t x = tu_below(&r, 1000);
        int rc;
        const char *what;
        if (x < 450) {
            what = "put";
            rc = w_put_trk(w, (unsigned)tu_below(&r, NCTR), &r);
        } else if (x < 680) {
            what = "batch";
            rc = w_batch_group(w, (unsigned)tu_below(&r, NGRP), b, &r);
        } else if (x < 990 || !w->maintenance) {
            what = "churn";
            rc = w_churn(w, &r);
        } else if (x < 995) {
            what = "kv_snapshot";
            rc = kv_snapshot(S.db);
        } else if (x < 997) {
            what = "kv_compact";
            rc = kv_compact(S.db);
        } else {
            what = "kv_rebuild_index";
            rc = kv_rebuild_index(S.db);
        }
        if (rc != KV_OK) {
            failf("writer %u op %zu (%s): %d (%s)", w->id, op, what, rc, kv_strerror(rc));
            break;
        }
    }
    kv_batch_free(b);
    atomic_fetch_add(&S.writers_done, 1);
    return NULL;
}

static void *maint_main(void *arg)
{
    (void)arg;
    tu_rng r = tu_rng_seed(77);
    while (atomic_load(&S.writers_done) < (int)S.nwriters && !atomic_load(&S.failed)) {
        int rc;
        const char *what;
        switch (tu_below(&r, 4)) {
        case 0: what = "kv_snapshot"; rc = kv_snapshot(S.db); break;
        case 1: what = "kv_compact"; rc = kv_compact(S.db); break;
        case 2: what = "kv_rebuild_index"; rc = kv_rebuild_index(S.db); break;
        default: what = "kv_sync"; rc = kv_sync(S.db); break;
        }
        if (rc != KV_OK)
            failf("maintenance %s: %d (%s)", what, rc, kv_strerror(rc));
        kv_stats st;
        if (kv_stats_get(S.db, &st) != KV_OK)
            failf("kv_stats_get failed");
        tu_sleep_us(2000 + tu_below(&r, 20000));
    }
    return NULL;
}

/* ---- readers --------------------------------------------------------------------- */

typedef struct {
    unsigned id;
    uint64_t last[MAX_WRITERS][NTRK]; /* last counter seen per key */
    uint64_t maxg[MAX_WRITERS];       /* highest gseq seen per writer */
    tu_rng r;
} reader_t;

/*
 * Check one tracked value seen by reader rd. floor: the gseq every write at
 * or below which must be visible. Returns the value's counter, 0 on failure.
 */
static uint64_t check_trk(reader_t *rd, unsigned w, unsigned i, const void *val, size_t len,
                          uint64_t floor, const char *how)
{
    const writer_t *wr = &S.w[w];
    uint64_t key = trk_key(w, i), tag = 0;
    if (!tu_val_decode(val, len, key, &tag)) {
        failf("reader %u %s: key %llu holds %zu bytes no write produced", rd->id, how,
              (unsigned long long)key, len);
        return 0;
    }
    uint64_t c = tag >> GSEQ_BITS, g = tag & GSEQ_MASK;
    if (c == 0 || hist_get(wr, i, c) != g) {
        failf("reader %u %s: key %llu counter %llu gseq %llu does not match the writer's history "
              "(%llu)",
              rd->id, how, (unsigned long long)key, (unsigned long long)c, (unsigned long long)g,
              (unsigned long long)hist_get(wr, i, c));
        return 0;
    }
    if (c < rd->last[w][i]) {
        failf("reader %u %s: key %llu went back in time: counter %llu after %llu", rd->id, how,
              (unsigned long long)key, (unsigned long long)c, (unsigned long long)rd->last[w][i]);
        return 0;
    }
    uint64_t next = hist_get(wr, i, c + 1);
    if (next != UNSET && next <= floor) {
        failf("reader %u %s: key %llu shows counter %llu (gseq %llu), but write gseq %llu of it "
              "happened before write gseq %llu that this reader already saw",
              rd->id, how, (unsigned long long)key, (unsigned long long)c, (unsigned long long)g,
              (unsigned long long)next, (unsigned long long)floor);
        return 0;
    }
    return c;
}

static void note_seen(reader_t *rd, unsigned w, unsigned i, uint64_t c)
{
    if (c > rd->last[w][i])
        rd->last[w][i] = c;
    uint64_t g = hist_get(&S.w[w], i, c);
    if (g != UNSET && g > rd->maxg[w])
        rd->maxg[w] = g;
}

static void reader_point(reader_t *rd)
{
    unsigned w = (unsigned)tu_below(&rd->r, S.nwriters);
    unsigned i = (unsigned)tu_below(&rd->r, NTRK);
    uint64_t key = trk_key(w, i);
    uint8_t buf[4096];
    void *p = NULL;
    size_t len = 0;
    int rc;
    bool alloc = tu_chance(&rd->r, 300);
    if (alloc) {
        rc = kv_get_alloc(S.db, key, &p, &len);
    } else {
        rc = kv_get(S.db, key, buf, sizeof buf, &len);
        p = buf;
    }
    atomic_fetch_add_explicit(&S.n_gets, 1, memory_order_relaxed);
    if (rc != KV_OK) {
        failf("reader %u: kv_get%s(%llu) = %d (%s); tracked keys are never deleted", rd->id,
              alloc ? "_alloc" : "", (unsigned long long)key, rc, kv_strerror(rc));
        return;
    }
    uint64_t c = check_trk(rd, w, i, p, len, rd->maxg[w], "kv_get");
    if (c)
        note_seen(rd, w, i, c);
    if (alloc)
        kv_free(p);
}

/* A view: prefix consistency, groups whole, scans agree with point reads. */
static void reader_view(reader_t *rd)
{
    kv_view *v;
    int rc = kv_view_open(S.db, &v);
    if (rc != KV_OK) {
        failf("reader %u: kv_view_open = %d", rd->id, rc);
        return;
    }
    atomic_fetch_add_explicit(&S.n_views, 1, memory_order_relaxed);
    static _Thread_local uint64_t cnt[MAX_WRITERS][NTRK];
    const void *pin_p[4] = {0};
    size_t pin_len[4] = {0};
    uint8_t pin_copy[4][64];
    unsigned npin = 0;

    for (unsigned w = 0; w < S.nwriters && !atomic_load(&S.failed); w++) {
        /* Pass 1: read every tracked key, find the view's gseq floor. */
        const void *val[NTRK];
        size_t len[NTRK];
        uint64_t floor = rd->maxg[w];
        /* Half the time in one kv_view_get_many, which must agree. */
        int many_rcs[NTRK], many = tu_chance(&rd->r, 500);
        if (many) {
            uint64_t keys[NTRK];
            for (unsigned i = 0; i < NTRK; i++)
                keys[i] = trk_key(w, i);
            rc = kv_view_get_many(v, NTRK, keys, val, len, many_rcs);
            if (rc != KV_OK) {
                failf("reader %u: kv_view_get_many = %d", rd->id, rc);
                goto out;
            }
        }
        for (unsigned i = 0; i < NTRK; i++) {
            rc = many ? many_rcs[i] : kv_view_get(v, trk_key(w, i), &val[i], &len[i]);
            if (rc != KV_OK) {
                failf("reader %u: %s(%llu) = %d", rd->id, many ? "kv_view_get_many" : "kv_view_get",
                      (unsigned long long)trk_key(w, i), rc);
                goto out;
            }
            uint64_t tag = 0;
            if (!tu_val_decode(val[i], len[i], trk_key(w, i), &tag)) {
                failf("reader %u view: key %llu holds bytes no write produced", rd->id,
                      (unsigned long long)trk_key(w, i));
                goto out;
            }
            if ((tag & GSEQ_MASK) > floor)
                floor = tag & GSEQ_MASK;
            if (npin < 4 && len[i] <= 64 && tu_chance(&rd->r, 100)) {
                pin_p[npin] = val[i];
                pin_len[npin] = len[i];
                memcpy(pin_copy[npin], val[i], len[i]);
                npin++;
            }
        }
        /* Pass 2: every key is at the state of that prefix. */
        for (unsigned i = 0; i < NTRK; i++) {
            cnt[w][i] = check_trk(rd, w, i, val[i], len[i], floor, "view");
            if (!cnt[w][i])
                goto out;
        }
        /* Groups: mains share one generation; shadows follow its parity. */
        for (unsigned g = 0; g < NGRP; g++) {
            unsigned first = NCTR + g * GK;
            uint64_t gen = cnt[w][first];
            for (unsigned k = 0; k < GK; k++) {
                if (cnt[w][first + k] != gen) {
                    failf("reader %u view: torn batch in group %u: generations %llu and %llu",
                          rd->id, g, (unsigned long long)gen,
                          (unsigned long long)cnt[w][first + k]);
                    goto out;
                }
                const void *sp;
                size_t sl;
                rc = kv_view_get(v, shadow_key(w, g, k), &sp, &sl);
                uint64_t mtag = gen << GSEQ_BITS | hist_get(&S.w[w], first, gen);
                if (gen % 2 == 0) {
                    if (rc != KV_OK || !tu_val_matches(sp, sl, shadow_key(w, g, k), mtag, sl) ||
                        sl < TU_VAL_HDR) {
                        failf("reader %u view: group %u generation %llu: shadow key %u = %d, "
                              "expected present with the batch's tag (torn batch)",
                              rd->id, g, (unsigned long long)gen, k, rc);
                        goto out;
                    }
                } else if (rc != KV_NOTFOUND) {
                    failf("reader %u view: group %u generation %llu: shadow key %u = %d, expected "
                          "deleted by the batch (torn batch)",
                          rd->id, g, (unsigned long long)gen, k, rc);
                    goto out;
                }
            }
        }
        /* A scan of a random part of the writer's range inside the view. */
        uint64_t lo = wbase(w) + tu_below(&rd->r, 0x3000 + NCHURN * 7);
        uint64_t hi = tu_chance(&rd->r, 300) ? wbase(w + 1) - 1 : lo + tu_below(&rd->r, 0x2000);
        if (w == 0 && tu_chance(&rd->r, 200)) {
            lo = 0;
            hi = UINT64_MAX;
        }
        kv_iter *it;
        rc = kv_view_iter_open(v, lo, hi, &it);
        if (rc != KV_OK) {
            failf("reader %u: kv_view_iter_open = %d", rd->id, rc);
            goto out;
        }
        uint64_t key, prev = 0;
        const void *ip;
        size_t il;
        bool first = true;
        size_t ntrk = 0;
        while ((rc = kv_iter_next(it, &key, &ip, &il)) == KV_OK) {
            if (key < lo || key > hi || (!first && key <= prev)) {
                failf("reader %u view scan [%llu, %llu]: key %llu after %llu (order/range)",
                      rd->id, (unsigned long long)lo, (unsigned long long)hi,
                      (unsigned long long)key, (unsigned long long)prev);
                break;
            }
            first = false;
            prev = key;
            const void *gp;
            size_t gl;
            int grc = kv_view_get(v, key, &gp, &gl);
            if (grc != KV_OK || gl != il || (il && memcmp(gp, ip, il) != 0)) {
                failf("reader %u view scan: key %llu disagrees with kv_view_get (%d)", rd->id,
                      (unsigned long long)key, grc);
                break;
            }
            if (!tu_val_decode(ip, il, key, NULL)) {
                failf("reader %u view scan: key %llu holds bytes no write produced", rd->id,
                      (unsigned long long)key);
                break;
            }
            ntrk += trk_index(w, key) >= 0;
        }
        if (rc == KV_NOTFOUND && !atomic_load(&S.failed)) {
            /* Tracked keys are never deleted: each one in range must show up. */
            size_t want = 0;
            for (unsigned i = 0; i < NTRK; i++)
                want += trk_key(w, i) >= lo && trk_key(w, i) <= hi;
            if (ntrk != want)
                failf("reader %u view scan [%llu, %llu]: %zu tracked keys, expected %zu", rd->id,
                      (unsigned long long)lo, (unsigned long long)hi, ntrk, want);
        }
        if (rc != KV_OK && rc != KV_NOTFOUND)
            failf("reader %u: kv_iter_next = %d", rd->id, rc);
        kv_iter_close(it);
        for (unsigned i = 0; i < NTRK; i++)
            note_seen(rd, w, i, cnt[w][i]);
    }
    for (unsigned j = 0; j < npin; j++) {
        if (memcmp(pin_p[j], pin_copy[j], pin_len[j]) != 0)
            failf("reader %u: the bytes behind a view pointer changed before kv_view_close", rd->id);
    }
out:
    kv_view_close(v);
}

/* An iterator with its own view over one writer's groups: whole batches. */
static void reader_iter(reader_t *rd)
{
    unsigned w = (unsigned)tu_below(&rd->r, S.nwriters);
    kv_iter *it;
    int rc = kv_iter_open(S.db, wbase(w) + 0x1000, wbase(w) + 0x2FFF, &it);
    if (rc != KV_OK) {
        failf("reader %u: kv_iter_open = %d", rd->id, rc);
        return;
    }
    atomic_fetch_add_explicit(&S.n_iters, 1, memory_order_relaxed);
    uint64_t main_tag[NGRP][GK], shadow_tag[NGRP][GK];
    memset(main_tag, 0, sizeof main_tag);
    memset(shadow_tag, 0, sizeof shadow_tag);
    uint64_t key, prev = 0;
    const void *val;
    size_t len;
    bool first = true;
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        if (!first && key <= prev) {
            failf("reader %u iterator: key %llu after %llu", rd->id, (unsigned long long)key,
                  (unsigned long long)prev);
            break;
        }
        first = false;
        prev = key;
        uint64_t tag = 0;
        if (!tu_val_decode(val, len, key, &tag)) {
            failf("reader %u iterator: key %llu holds bytes no write produced", rd->id,
                  (unsigned long long)key);
            break;
        }
        uint64_t off = key - wbase(w);
        unsigned g = (unsigned)((off & 0xFFF) / 16), k = (unsigned)(off % 16);
        if (g >= NGRP || k >= GK) {
            failf("reader %u iterator: unexpected key %llu", rd->id, (unsigned long long)key);
            break;
        }
        if (off < 0x2000)
            main_tag[g][k] = tag;
        else
            shadow_tag[g][k] = tag;
    }
    kv_iter_close(it);
    if (rc != KV_OK && rc != KV_NOTFOUND) {
        failf("reader %u: kv_iter_next = %d", rd->id, rc);
        return;
    }
    if (atomic_load(&S.failed))
        return;
    for (unsigned g = 0; g < NGRP; g++) {
        uint64_t t = main_tag[g][0], gen = t >> GSEQ_BITS;
        for (unsigned k = 0; k < GK; k++) {
            uint64_t want_shadow = gen % 2 == 0 ? t : 0;
            if (main_tag[g][k] != t || shadow_tag[g][k] != want_shadow) {
                failf("reader %u iterator: torn batch in writer %u group %u: key %u main tag "
                      "%#llx shadow %#llx, first main %#llx",
                      rd->id, w, g, k, (unsigned long long)main_tag[g][k],
                      (unsigned long long)shadow_tag[g][k], (unsigned long long)t);
                return;
            }
        }
        unsigned i = NCTR + g * GK;
        if (gen < rd->last[w][i]) {
            failf("reader %u iterator: group %u went back in time: generation %llu after %llu",
                  rd->id, g, (unsigned long long)gen, (unsigned long long)rd->last[w][i]);
            return;
        }
        if (t == 0 || hist_get(&S.w[w], i, gen) != (t & GSEQ_MASK)) {
            failf("reader %u iterator: group %u tag %#llx not in the writer's history", rd->id, g,
                  (unsigned long long)t);
            return;
        }
        uint64_t next = hist_get(&S.w[w], i, gen + 1);
        if (next != UNSET && next <= rd->maxg[w]) {
            failf("reader %u iterator: group %u at generation %llu, but its next batch (gseq "
                  "%llu) came before write gseq %llu this reader already saw",
                  rd->id, g, (unsigned long long)gen, (unsigned long long)next,
                  (unsigned long long)rd->maxg[w]);
            return;
        }
    }
    for (unsigned g = 0; g < NGRP; g++) {
        for (unsigned k = 0; k < GK; k++)
            note_seen(rd, w, NCTR + g * GK + k, main_tag[g][k] >> GSEQ_BITS);
    }
}

static void *reader_main(void *arg)
{
    reader_t *rd = arg;
    while (atomic_load(&S.writers_done) < (int)S.nwriters && !atomic_load(&S.failed)) {
        uint64_t x = tu_below(&rd->r, 100);
        if (x < 80)
            reader_point(rd);
        else if (x < 93)
            reader_view(rd);
        else
            reader_iter(rd);
    }
    return NULL;
}

/* ---- scenarios ------------------------------------------------------------------ */

static char g_root[TU_PATH], g_dir[TU_PATH];

static int setup(void **state)
{
    (void)state;
    if (tu_mkdtemp(g_root, "threads") != 0)
        return -1;
    tu_join(g_dir, g_root, "db");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_rmrf(g_root);
}

/* Every key equals the writers' final state. */
static void check_final(const char *when)
{
    for (unsigned w = 0; w < S.nwriters; w++) {
        const writer_t *wr = &S.w[w];
        for (unsigned i = 0; i < NTRK; i++) {
            void *p = NULL;
            size_t len;
            uint64_t key = trk_key(w, i);
            TU_OK(kv_get_alloc(S.db, key, &p, &len));
            uint64_t tag = 0;
            if (!tu_val_decode(p, len, key, &tag))
                fail_msg("%s: key %llu: bad value", when, (unsigned long long)key);
            uint64_t want = wr->cnt[i] << GSEQ_BITS | hist_get(wr, i, wr->cnt[i]);
            if (tag != want)
                fail_msg("%s: key %llu has tag %#llx, the last write was %#llx", when,
                         (unsigned long long)key, (unsigned long long)tag,
                         (unsigned long long)want);
            kv_free(p);
        }
        for (unsigned g = 0; g < NGRP; g++) {
            uint64_t gen = wr->cnt[NCTR + g * GK];
            for (unsigned k = 0; k < GK; k++) {
                size_t len;
                int rc = kv_get(S.db, shadow_key(w, g, k), NULL, 0, &len);
                if (rc != (gen % 2 == 0 ? KV_ERANGE : KV_NOTFOUND))
                    fail_msg("%s: shadow key of group %u generation %llu: %d", when, g,
                             (unsigned long long)gen, rc);
            }
        }
        for (unsigned i = 0; i < NCHURN; i++) {
            void *p = NULL;
            size_t len;
            int rc = kv_get_alloc(S.db, churn_key(w, i), &p, &len);
            const cslot *c = &wr->churn[i];
            if (!c->present) {
                if (rc != KV_NOTFOUND)
                    fail_msg("%s: churn key %llu should be absent, got %d", when,
                             (unsigned long long)churn_key(w, i), rc);
                continue;
            }
            if (rc != KV_OK || !tu_val_matches(p, len, churn_key(w, i), c->tag, c->len))
                fail_msg("%s: churn key %llu = %d / wrong value", when,
                         (unsigned long long)churn_key(w, i), rc);
            kv_free(p);
        }
    }
}

static void run_scenario(unsigned nwriters, unsigned nreaders, int maint_thread,
                         uint64_t rebuild_appends, uint64_t seed)
{
    memset(&S, 0, sizeof S);
    pthread_mutex_init(&S.msg_lock, NULL);
    S.nwriters = nwriters;
    kv_options o;
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    o.rebuild_appends = rebuild_appends;
    o.wal_max_bytes = 1 << 20;
    tu_rmrf(g_dir);
    TU_OK(kv_open(g_dir, &o, &S.db));
    size_t nops = tu_scaled(20000);
    for (unsigned w = 0; w < nwriters; w++) {
        writer_t *wr = &S.w[w];
        wr->id = w;
        wr->nops = nops;
        wr->cap = nops + 8;
        wr->seed = seed * 131 + w;
        wr->maintenance = !maint_thread;
        wr->hist = malloc(sizeof(uint64_t) * NTRK * wr->cap);
        assert_non_null(wr->hist);
        for (size_t k = 0; k < (size_t)NTRK * wr->cap; k++)
            wr->hist[k] = UNSET;
        writer_init(wr);
    }
    assert_false(atomic_load(&S.failed));

    reader_t *rd = calloc(MAX_READERS, sizeof *rd);
    pthread_t rt[MAX_READERS], wt[MAX_WRITERS], mt;
    uint64_t t0 = tu_now_ns();
    for (unsigned i = 0; i < nreaders; i++) {
        rd[i].id = i;
        rd[i].r = tu_rng_seed(seed * 7 + i);
        assert_int_equal(pthread_create(&rt[i], NULL, reader_main, &rd[i]), 0);
    }
    for (unsigned w = 0; w < nwriters; w++)
        assert_int_equal(pthread_create(&wt[w], NULL, writer_main, &S.w[w]), 0);
    if (maint_thread)
        assert_int_equal(pthread_create(&mt, NULL, maint_main, NULL), 0);
    for (unsigned w = 0; w < nwriters; w++)
        pthread_join(wt[w], NULL);
    if (maint_thread)
        pthread_join(mt, NULL);
    for (unsigned i = 0; i < nreaders; i++)
        pthread_join(rt[i], NULL);
    double secs = (double)(tu_now_ns() - t0) / 1e9;
    if (atomic_load(&S.failed))
        fail_msg("%s", S.msg);
    kv_stats st;
    TU_OK(kv_stats_get(S.db, &st));
    print_message("[ threads  ] %u writer(s) x %zu ops, %u readers, %.2f s: %lu gets, %lu views, "
                  "%lu iterators; %llu rebuilds, %llu snapshots, %llu compactions, %llu pending\n",
                  nwriters, nops, nreaders, secs, (unsigned long)atomic_load(&S.n_gets),
                  (unsigned long)atomic_load(&S.n_views), (unsigned long)atomic_load(&S.n_iters),
                  (unsigned long long)st.rebuilds, (unsigned long long)st.snapshots,
                  (unsigned long long)st.compactions, (unsigned long long)st.pending_writes);
    if (atomic_load(&S.n_views) == 0 || atomic_load(&S.n_gets) == 0)
        fail_msg("the readers did not get to run");
    check_final("after the run");
    TU_OK(kv_close(S.db));
    TU_OK(kv_open(g_dir, &o, &S.db));
    check_final("after reopen");
    TU_OK(kv_close(S.db));
    for (unsigned w = 0; w < nwriters; w++)
        free(S.w[w].hist);
    free(rd);
    pthread_mutex_destroy(&S.msg_lock);
}

static void test_one_writer(void **state)
{
    (void)state;
    run_scenario(1, 3, 0, 64, 1);
}

static void test_two_writers(void **state)
{
    (void)state;
    run_scenario(2, 2, 1, 128, 2);
}

/* ---- group commit -------------------------------------------------------------- */

typedef struct {
    kv_db *db;
    unsigned t;
    size_t n;
    int rc;
} gc_arg;

static uint64_t gc_key(unsigned t, size_t i)
{
    return tu_mix64(((uint64_t)t << 32) | i);
}

static void *gc_main(void *arg)
{
    gc_arg *a = arg;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t key = gc_key(a->t, i);
        size_t len = TU_VAL_HDR + (i * 13) % 200;
        uint8_t *v = tu_val_new(len, key, a->t + 1);
        int rc = kv_put(a->db, key, v, len);
        free(v);
        if (rc != KV_OK) {
            a->rc = rc;
            break;
        }
    }
    return NULL;
}

static void check_gc(kv_db *db, size_t n)
{
    for (unsigned t = 0; t < 4; t++) {
        for (size_t i = 0; i < n; i++) {
            uint8_t buf[512];
            size_t len;
            uint64_t key = gc_key(t, i);
            int rc = kv_get(db, key, buf, sizeof buf, &len);
            if (rc != KV_OK || !tu_val_matches(buf, len, key, t + 1, TU_VAL_HDR + (i * 13) % 200))
                fail_msg("group commit: thread %u put %zu: %d (%s) / wrong value", t, i, rc,
                         kv_strerror(rc));
        }
    }
}

static void test_group_commit(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.sync = KV_SYNC_FULL;
    kv_db *db;
    TU_OK(kv_open(g_dir, &o, &db));
    size_t n = tu_scaled(150);
    gc_arg a[4];
    pthread_t th[4];
    uint64_t t0 = tu_now_ns();
    for (unsigned t = 0; t < 4; t++) {
        a[t] = (gc_arg){db, t, n, KV_OK};
        assert_int_equal(pthread_create(&th[t], NULL, gc_main, &a[t]), 0);
    }
    for (unsigned t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    for (unsigned t = 0; t < 4; t++)
        TU_OK(a[t].rc);
    double secs = (double)(tu_now_ns() - t0) / 1e9;
    kv_stats st;
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.puts == 4 * n);
    assert_true(st.wal_syncs >= 1);
    print_message("[ threads  ] group commit: %zu KV_SYNC_FULL puts from 4 threads in %.2f s, "
                  "%llu WAL syncs\n",
                  4 * n, secs, (unsigned long long)st.wal_syncs);
    check_gc(db, n);
    TU_OK(kv_close(db));
    TU_OK(kv_open(g_dir, &o, &db));
    check_gc(db, n);
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.keys == 4 * n);
    TU_OK(kv_close(db));
}

/* More reader threads than stripes, in waves so later threads reuse the
 * stripes earlier ones gave back: every get is counted exactly once. */
typedef struct {
    kv_db *db;
    unsigned gets;
    int rc;
} counter_arg;

static void *counting_reader(void *p)
{
    counter_arg *a = p;
    char buf[16];
    size_t len;
    for (unsigned i = 0; i < a->gets && a->rc == KV_OK; i++) {
        int rc = kv_get(a->db, i % 64, buf, sizeof buf, &len);
        if (rc != KV_OK && rc != KV_NOTFOUND)
            a->rc = rc;
    }
    return NULL;
}

static void test_get_counts_many_threads(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    kv_db *db;
    TU_OK(kv_open(g_dir, &o, &db));
    for (uint64_t k = 0; k < 32; k++)
        TU_OK(kv_put(db, k, "v", 1));
    enum { WAVES = 3, PER_WAVE = 40 };
    const unsigned gets = (unsigned)tu_scaled(2000);
    kv_stats before, after;
    TU_OK(kv_stats_get(db, &before));
    for (unsigned w = 0; w < WAVES; w++) {
        pthread_t th[PER_WAVE];
        counter_arg a[PER_WAVE];
        for (unsigned t = 0; t < PER_WAVE; t++) {
            a[t] = (counter_arg){db, gets, KV_OK};
            assert_int_equal(pthread_create(&th[t], NULL, counting_reader, &a[t]), 0);
        }
        for (unsigned t = 0; t < PER_WAVE; t++) {
            pthread_join(th[t], NULL);
            TU_OK(a[t].rc);
        }
    }
    TU_OK(kv_stats_get(db, &after));
    assert_true(after.gets - before.gets == (uint64_t)WAVES * PER_WAVE * gets);
    TU_OK(kv_close(db));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_counts_many_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
