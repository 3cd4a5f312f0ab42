/*
 * test_db_model.c — a seeded model-based test of the whole database.
 *
 * A random sequence of operations (puts of 0 to ~300 bytes and now and then
 * 100 KB, overwrites, deletes, batches with repeated keys, gets with buffers
 * of every size, kv_get_alloc, range scans with random bounds, views opened
 * mid-way and checked much later, rebuilds, snapshots, compactions, syncs and
 * close + reopen) runs against the library and against a sorted array in
 * this file. Every answer is compared with the model; after every reopen each
 * key and a full scan are compared. Small rebuild_appends and wal_max_bytes
 * make folds and automatic snapshots happen all the time.
 *
 * Environment: KYRO_TEST_SEED=N runs that one seed (all key distributions);
 * KYRO_TEST_OPS=N sets the operations per run; KYRO_TEST_SCALE=small runs
 * fewer operations. Every failure message starts with the seed and the step.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kyro.h"
#include "testutil.h"

enum { DIST_DENSE, DIST_SPARSE, DIST_MIXED };
static const char *const dist_name[] = {"dense", "sparse", "mixed"};

#define MAX_VIEWS 3
#define MAX_PINS 8

typedef struct {
    kv_view *v;
    tu_model m; /* the state the view must show */
    size_t opened_at;
    size_t npins;
    uint64_t pin_key[MAX_PINS];
    const void *pin_ptr[MAX_PINS];
    size_t pin_len[MAX_PINS];
    uint8_t *pin_copy[MAX_PINS];
} view_slot;

typedef struct {
    uint64_t seed;
    int dist;
    size_t step;
    tu_rng r;
    char root[TU_PATH];
    char dir[TU_PATH];
    kv_options opts;
    kv_db *db;
    tu_model m;
    uint64_t tag; /* a fresh tag per write */
    uint64_t dense_base, dense_span;
    view_slot views[MAX_VIEWS];
    size_t nviews;
    /* counters for the summary line */
    size_t n_put, n_del, n_batch, n_get, n_scan, n_view, n_reopen, n_snap, n_compact, n_rebuild;
} ctx;

#define MFAIL(c, fmt, ...)                                                                      \
    fail_msg("seed %llu (%s) step %zu: " fmt, (unsigned long long)(c)->seed,                    \
             dist_name[(c)->dist], (c)->step, ##__VA_ARGS__)

#define MRC(c, expr, want)                                                                      \
    do {                                                                                        \
        int mrc_ = (expr);                                                                      \
        if (mrc_ != (want))                                                                     \
            MFAIL(c, "%s = %d (%s), expected %d (%s)", #expr, mrc_, kv_strerror(mrc_), (want),   \
                  kv_strerror(want));                                                           \
    } while (0)

/* ---- generators ------------------------------------------------------------ */

static uint64_t fresh_key(ctx *c)
{
    switch (c->dist) {
    case DIST_DENSE:
        return c->dense_base + tu_below(&c->r, c->dense_span);
    case DIST_SPARSE:
        return tu_next(&c->r);
    default:
        return tu_chance(&c->r, 500) ? c->dense_base + tu_below(&c->r, c->dense_span)
                                     : tu_next(&c->r);
    }
}

static uint64_t pick_key(ctx *c)
{
    uint64_t x = tu_below(&c->r, 1000);
    if (x < 8)
        return 0;
    if (x < 16)
        return UINT64_MAX;
    if (x < 20)
        return UINT64_MAX - 1;
    if (x < 24)
        return 1;
    if (x < 500 && c->m.n)
        return c->m.e[tu_below(&c->r, c->m.n)].key;
    return fresh_key(c);
}

static size_t pick_len(ctx *c)
{
    uint64_t x = tu_below(&c->r, 1000);
    if (x < 4)
        return 100 * 1024 + (size_t)tu_below(&c->r, 2048);
    if (x < 60)
        return 0;
    if (x < 120)
        return 300 + (size_t)tu_below(&c->r, 3700);
    return (size_t)tu_below(&c->r, 301);
}

/* ---- checks ---------------------------------------------------------------- */

static void check_get(ctx *c, uint64_t key)
{
    const tu_ent *e = tu_model_find(&c->m, key);
    size_t want = e ? e->len : 0;
    size_t cap;
    switch (tu_below(&c->r, 6)) {
    case 0: cap = 0; break;
    case 1: cap = want; break;
    case 2: cap = want ? want - 1 : 0; break;
    case 3: cap = want / 2; break;
    default: cap = want + (size_t)tu_below(&c->r, 64); break;
    }
    uint8_t *buf = cap ? malloc(cap) : NULL;
    if (cap)
        memset(buf, 0xA5, cap);
    size_t len = 0xDEAD;
    int rc = kv_get(c->db, key, buf, cap, &len);
    c->n_get++;
    if (!e) {
        if (rc != KV_NOTFOUND)
            MFAIL(c, "kv_get(%llu) = %d (%s) for an absent key", (unsigned long long)key, rc,
                  kv_strerror(rc));
    } else if (cap >= want) {
        if (rc != KV_OK)
            MFAIL(c, "kv_get(%llu, cap %zu) = %d (%s), value has %zu bytes",
                  (unsigned long long)key, cap, rc, kv_strerror(rc), want);
        if (!tu_val_matches(buf, len, key, e->tag, e->len))
            MFAIL(c, "kv_get(%llu): wrong value (%zu bytes; expected tag %llu, %zu bytes)",
                  (unsigned long long)key, len, (unsigned long long)e->tag, e->len);
        for (size_t i = want; i < cap; i++) {
            if (buf[i] != 0xA5)
                MFAIL(c, "kv_get(%llu) wrote past the value's end", (unsigned long long)key);
        }
    } else {
        if (rc != KV_ERANGE || len != want)
            MFAIL(c, "kv_get(%llu, cap %zu) = %d (%s), len %zu; expected KV_ERANGE, len %zu",
                  (unsigned long long)key, cap, rc, kv_strerror(rc), len, want);
        for (size_t i = 0; i < cap; i++) {
            if (buf[i] != 0xA5)
                MFAIL(c, "kv_get(%llu) copied into a too small buffer", (unsigned long long)key);
        }
    }
    free(buf);
}

static void check_get_alloc(ctx *c, uint64_t key)
{
    const tu_ent *e = tu_model_find(&c->m, key);
    void *p = NULL;
    size_t len = 0xDEAD;
    int rc = kv_get_alloc(c->db, key, &p, &len);
    c->n_get++;
    if (!e) {
        if (rc != KV_NOTFOUND)
            MFAIL(c, "kv_get_alloc(%llu) = %d (%s) for an absent key", (unsigned long long)key,
                  rc, kv_strerror(rc));
        return;
    }
    if (rc != KV_OK || !p)
        MFAIL(c, "kv_get_alloc(%llu) = %d (%s), p %p", (unsigned long long)key, rc,
              kv_strerror(rc), p);
    if (!tu_val_matches(p, len, key, e->tag, e->len))
        MFAIL(c, "kv_get_alloc(%llu): wrong value (%zu bytes; expected tag %llu, %zu bytes)",
              (unsigned long long)key, len, (unsigned long long)e->tag, e->len);
    kv_free(p);
}

/* Drain it against the entries of m in [lo, hi]; closes it. */
static void check_iter(ctx *c, kv_iter *it, const tu_model *m, uint64_t lo, uint64_t hi,
                       const char *what)
{
    size_t i = lo <= hi ? tu_model_lower(m, lo) : m->n;
    size_t n = 0;
    uint64_t key;
    const void *val;
    size_t len;
    int rc;
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        if (i >= m->n || m->e[i].key > hi)
            MFAIL(c, "%s [%llu, %llu]: extra key %llu after %zu keys", what,
                  (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)key, n);
        if (key != m->e[i].key)
            MFAIL(c, "%s [%llu, %llu]: key #%zu is %llu, expected %llu", what,
                  (unsigned long long)lo, (unsigned long long)hi, n, (unsigned long long)key,
                  (unsigned long long)m->e[i].key);
        if (!tu_val_matches(val, len, key, m->e[i].tag, m->e[i].len))
            MFAIL(c, "%s: wrong value for key %llu (%zu bytes; expected tag %llu, %zu bytes)",
                  what, (unsigned long long)key, len, (unsigned long long)m->e[i].tag,
                  m->e[i].len);
        i++;
        n++;
    }
    if (rc != KV_NOTFOUND)
        MFAIL(c, "%s: kv_iter_next = %d (%s)", what, rc, kv_strerror(rc));
    if (lo <= hi && i < m->n && m->e[i].key <= hi)
        MFAIL(c, "%s [%llu, %llu]: ended after %zu keys, key %llu missing", what,
              (unsigned long long)lo, (unsigned long long)hi, n, (unsigned long long)m->e[i].key);
    if (kv_iter_next(it, &key, &val, &len) != KV_NOTFOUND)
        MFAIL(c, "%s: kv_iter_next after the end did not return KV_NOTFOUND", what);
    kv_iter_close(it);
}

static void check_scan(ctx *c, uint64_t lo, uint64_t hi)
{
    kv_iter *it = NULL;
    MRC(c, kv_iter_open(c->db, lo, hi, &it), KV_OK);
    c->n_scan++;
    check_iter(c, it, &c->m, lo, hi, "scan");
}

static void check_stats(ctx *c)
{
    kv_stats st;
    MRC(c, kv_stats_get(c->db, &st), KV_OK);
    if (st.keys != c->m.n)
        MFAIL(c, "stats.keys = %llu, model has %zu keys", (unsigned long long)st.keys, c->m.n);
}

/* Every key through kv_view_get_many on a new view, in key order, in
 * batches of random sizes. */
static void check_all_many(ctx *c)
{
    enum { BATCH_MAX = 100 };
    uint64_t keys[BATCH_MAX];
    const void *vals[BATCH_MAX];
    size_t lens[BATCH_MAX];
    int rcs[BATCH_MAX];
    kv_view *v;
    MRC(c, kv_view_open(c->db, &v), KV_OK);
    for (size_t at = 0; at < c->m.n;) {
        size_t n = 1 + (size_t)tu_below(&c->r, BATCH_MAX);
        if (n > c->m.n - at)
            n = c->m.n - at;
        for (size_t i = 0; i < n; i++)
            keys[i] = c->m.e[at + i].key;
        MRC(c, kv_view_get_many(v, n, keys, vals, lens, rcs), KV_OK);
        for (size_t i = 0; i < n; i++) {
            const tu_ent *e = &c->m.e[at + i];
            if (rcs[i] != KV_OK || !tu_val_matches(vals[i], lens[i], e->key, e->tag, e->len))
                MFAIL(c, "full check: get_many of key %llu = %d (%s) / wrong value; expected tag "
                         "%llu, %zu bytes",
                      (unsigned long long)e->key, rcs[i], kv_strerror(rcs[i]),
                      (unsigned long long)e->tag, e->len);
        }
        at += n;
    }
    kv_view_close(v);
}

/* Every key (one get at a time and in batches), some absent ones, and a
 * full scan. */
static void check_all(ctx *c)
{
    for (size_t i = 0; i < c->m.n; i++) {
        const tu_ent *e = &c->m.e[i];
        void *p = NULL;
        size_t len = 0;
        int rc = kv_get_alloc(c->db, e->key, &p, &len);
        if (rc != KV_OK)
            MFAIL(c, "full check: kv_get_alloc(%llu) = %d (%s), expected a %zu-byte value",
                  (unsigned long long)e->key, rc, kv_strerror(rc), e->len);
        if (!tu_val_matches(p, len, e->key, e->tag, e->len))
            MFAIL(c, "full check: wrong value for key %llu (%zu bytes; expected tag %llu, %zu)",
                  (unsigned long long)e->key, len, (unsigned long long)e->tag, e->len);
        kv_free(p);
    }
    check_all_many(c);
    for (int i = 0; i < 50; i++)
        check_get(c, fresh_key(c));
    check_scan(c, 0, UINT64_MAX);
    check_stats(c);
}

/* ---- views ----------------------------------------------------------------- */

static void view_open(ctx *c)
{
    if (c->nviews == MAX_VIEWS)
        return;
    view_slot *s = &c->views[c->nviews];
    memset(s, 0, sizeof *s);
    MRC(c, kv_view_open(c->db, &s->v), KV_OK);
    tu_model_copy(&s->m, &c->m);
    s->opened_at = c->step;
    for (size_t i = 0; i < MAX_PINS && s->m.n; i++) {
        const tu_ent *e = &s->m.e[tu_below(&c->r, s->m.n)];
        const void *p;
        size_t len;
        MRC(c, kv_view_get(s->v, e->key, &p, &len), KV_OK);
        if (!tu_val_matches(p, len, e->key, e->tag, e->len))
            MFAIL(c, "new view: wrong value for key %llu", (unsigned long long)e->key);
        s->pin_key[s->npins] = e->key;
        s->pin_ptr[s->npins] = p;
        s->pin_len[s->npins] = len;
        s->pin_copy[s->npins] = malloc(len + 1);
        if (len)
            memcpy(s->pin_copy[s->npins], p, len);
        s->npins++;
    }
    c->nviews++;
    c->n_view++;
}

/* kv_view_get_many on n keys of the view's model and picked ones (absent,
 * edge keys, repeats), in one call: each answer must be the model's. */
#define MANY_MAX 40
static void view_check_many(ctx *c, kv_view *v, const tu_model *m, const char *what)
{
    uint64_t keys[MANY_MAX] = {0}; /* n may be 0 */
    const void *vals[MANY_MAX];
    size_t lens[MANY_MAX];
    int rcs[MANY_MAX];
    size_t n = (size_t)tu_below(&c->r, MANY_MAX + 1);
    for (size_t i = 0; i < n; i++) {
        if (i && tu_chance(&c->r, 50))
            keys[i] = keys[tu_below(&c->r, i)];
        else if (m->n && tu_chance(&c->r, 600))
            keys[i] = m->e[tu_below(&c->r, m->n)].key;
        else
            keys[i] = pick_key(c);
    }
    MRC(c, kv_view_get_many(v, n, keys, vals, lens, rcs), KV_OK);
    for (size_t i = 0; i < n; i++) {
        const tu_ent *e = tu_model_find(m, keys[i]);
        if (!e && rcs[i] != KV_NOTFOUND)
            MFAIL(c, "%s: get_many entry %zu of %zu: key %llu should be absent, got %d (%s)", what,
                  i, n, (unsigned long long)keys[i], rcs[i], kv_strerror(rcs[i]));
        if (e && (rcs[i] != KV_OK || !tu_val_matches(vals[i], lens[i], e->key, e->tag, e->len)))
            MFAIL(c, "%s: get_many entry %zu of %zu: key %llu = %d (%s) / wrong value; expected "
                     "tag %llu, %zu bytes",
                  what, i, n, (unsigned long long)keys[i], rcs[i], kv_strerror(rcs[i]),
                  (unsigned long long)e->tag, e->len);
    }
}

/* Check view i: pinned bytes, some or all keys, a scan; full closes it. */
static void view_check(ctx *c, size_t i, bool full)
{
    view_slot *s = &c->views[i];
    for (size_t j = 0; j < s->npins; j++) {
        if (s->pin_len[j] && memcmp(s->pin_ptr[j], s->pin_copy[j], s->pin_len[j]) != 0)
            MFAIL(c, "view opened at step %zu: bytes of key %llu changed under a pinned pointer",
                  s->opened_at, (unsigned long long)s->pin_key[j]);
    }
    size_t n = full ? s->m.n : (s->m.n < 64 ? s->m.n : 64);
    for (size_t j = 0; j < n; j++) {
        const tu_ent *e = full ? &s->m.e[j] : &s->m.e[tu_below(&c->r, s->m.n)];
        const void *p;
        size_t len;
        int rc = kv_view_get(s->v, e->key, &p, &len);
        if (rc != KV_OK || !tu_val_matches(p, len, e->key, e->tag, e->len))
            MFAIL(c, "view opened at step %zu: key %llu = %d (%s) / wrong value; expected tag "
                     "%llu, %zu bytes",
                  s->opened_at, (unsigned long long)e->key, rc, kv_strerror(rc),
                  (unsigned long long)e->tag, e->len);
    }
    for (int j = 0; j < 20; j++) {
        uint64_t k = pick_key(c);
        if (tu_model_find(&s->m, k))
            continue;
        const void *p;
        size_t len;
        int rc = kv_view_get(s->v, k, &p, &len);
        if (rc != KV_NOTFOUND)
            MFAIL(c, "view opened at step %zu: key %llu should be absent, got %d (%s)",
                  s->opened_at, (unsigned long long)k, rc, kv_strerror(rc));
    }
    view_check_many(c, s->v, &s->m, "view");
    uint64_t lo = 0, hi = UINT64_MAX;
    if (!full) {
        lo = pick_key(c);
        hi = pick_key(c);
        if (lo > hi && tu_chance(&c->r, 900)) {
            uint64_t t = lo;
            lo = hi;
            hi = t;
        }
    }
    kv_iter *it;
    MRC(c, kv_view_iter_open(s->v, lo, hi, &it), KV_OK);
    check_iter(c, it, &s->m, lo, hi, "view scan");
    if (!full)
        return;
    kv_view_close(s->v);
    tu_model_free(&s->m);
    for (size_t j = 0; j < s->npins; j++)
        free(s->pin_copy[j]);
    c->views[i] = c->views[c->nviews - 1];
    c->nviews--;
}

static void views_close_all(ctx *c)
{
    while (c->nviews)
        view_check(c, c->nviews - 1, true);
}

/* ---- operations ------------------------------------------------------------- */

static void op_put(ctx *c)
{
    uint64_t key = pick_key(c);
    size_t len = pick_len(c);
    uint64_t tag = ++c->tag;
    uint8_t *v = tu_val_new(len, key, tag);
    MRC(c, kv_put(c->db, key, tu_chance(&c->r, 500) && len == 0 ? NULL : v, len), KV_OK);
    free(v);
    tu_model_put(&c->m, key, tag, len);
    c->n_put++;
}

static void op_delete(ctx *c)
{
    uint64_t key = tu_chance(&c->r, 800) ? pick_key(c) : fresh_key(c);
    MRC(c, kv_delete(c->db, key), KV_OK);
    tu_model_del(&c->m, key);
    c->n_del++;
}

typedef struct {
    uint64_t key, tag;
    size_t len; /* SIZE_MAX: delete */
} bop;

static void op_batch(ctx *c, kv_batch *b)
{
    size_t n = tu_chance(&c->r, 50) ? 0 : 1 + (size_t)tu_below(&c->r, tu_chance(&c->r, 100) ? 200 : 20);
    bop *ops = malloc((n + 1) * sizeof *ops);
    kv_batch_clear(b);
    for (size_t i = 0; i < n; i++) {
        uint64_t key = i && tu_chance(&c->r, 300) ? ops[tu_below(&c->r, i)].key : pick_key(c);
        ops[i].key = key;
        if (tu_chance(&c->r, 300)) {
            ops[i].len = SIZE_MAX;
            MRC(c, kv_batch_delete(b, key), KV_OK);
        } else {
            size_t len = pick_len(c);
            if (len > 8192)
                len = 8192; /* keep batches modest */
            ops[i].len = len;
            ops[i].tag = ++c->tag;
            uint8_t *v = tu_val_new(len, key, ops[i].tag);
            MRC(c, kv_batch_put(b, key, v, len), KV_OK);
            free(v);
        }
    }
    MRC(c, kv_batch_commit(c->db, b), KV_OK);
    for (size_t i = 0; i < n; i++) {
        if (ops[i].len == SIZE_MAX)
            tu_model_del(&c->m, ops[i].key);
        else
            tu_model_put(&c->m, ops[i].key, ops[i].tag, ops[i].len);
    }
    free(ops);
    c->n_batch++;
}

static void op_scan(ctx *c)
{
    uint64_t lo, hi;
    uint64_t x = tu_below(&c->r, 100);
    if (x < 10) {
        lo = 0;
        hi = UINT64_MAX;
    } else {
        lo = pick_key(c);
        hi = x < 20 ? UINT64_MAX : pick_key(c);
        if (x < 25)
            lo = 0;
        if (lo > hi && x >= 30) {
            uint64_t t = lo;
            lo = hi;
            hi = t;
        }
    }
    check_scan(c, lo, hi);
}

static void db_open(ctx *c)
{
    c->db = NULL;
    MRC(c, kv_open(c->dir, &c->opts, &c->db), KV_OK);
}

static void random_options(ctx *c, bool first)
{
    kv_options_init(&c->opts);
    c->opts.rebuild_appends = 64 + tu_below(&c->r, 437);
    c->opts.wal_max_bytes = tu_chance(&c->r, 800) ? 64 * 1024 : (tu_chance(&c->r, 500) ? 0 : 1 << 20);
    c->opts.sync = tu_chance(&c->r, 500) ? KV_SYNC_OFF : KV_SYNC_NORMAL;
    c->opts.sync_interval_ms = 20 + (uint32_t)tu_below(&c->r, 200);
    if (!first && tu_chance(&c->r, 100))
        c->opts.rebuild_appends = 0; /* the library's choice */
    else if (!first && tu_chance(&c->r, 150))
        c->opts.rebuild_appends = 1 + tu_below(&c->r, 3); /* fold after (almost) every write */
    if (!first && tu_chance(&c->r, 100))
        c->opts.wal_max_bytes = 4096;
}

static void op_reopen(ctx *c)
{
    views_close_all(c);
    MRC(c, kv_close(c->db), KV_OK);
    c->db = NULL;
    if (tu_chance(&c->r, 500))
        random_options(c, false);
    db_open(c);
    c->n_reopen++;
    check_all(c);
}

static void run_one(uint64_t seed, int dist, size_t nops)
{
    ctx *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->seed = seed;
    c->dist = dist;
    c->r = tu_rng_seed(seed ^ ((uint64_t)dist << 56));
    c->dense_span = tu_chance(&c->r, 500) ? 256 : 2000;
    c->dense_base = tu_chance(&c->r, 300) ? 0 : (tu_next(&c->r) >> 1);
    if (tu_mkdtemp(c->root, "model") != 0)
        fail_msg("mkdtemp failed");
    tu_join(c->dir, c->root, "db");
    random_options(c, true);
    print_message("[ seed     ] %llu dist %s ops %zu rebuild_appends %llu wal_max_bytes %llu "
                  "sync %d dir %s\n",
                  (unsigned long long)seed, dist_name[dist], nops,
                  (unsigned long long)c->opts.rebuild_appends,
                  (unsigned long long)c->opts.wal_max_bytes, (int)c->opts.sync, c->dir);
    db_open(c);
    kv_batch *b = NULL;
    MRC(c, kv_batch_new(&b), KV_OK);

    for (c->step = 0; c->step < nops; c->step++) {
        uint64_t x = tu_below(&c->r, 10000);
        if (x < 3800) {
            op_put(c);
        } else if (x < 5000) {
            op_delete(c);
        } else if (x < 5800) {
            op_batch(c, b);
        } else if (x < 7300) {
            check_get(c, pick_key(c));
        } else if (x < 8000) {
            check_get_alloc(c, pick_key(c));
        } else if (x < 8400) {
            op_scan(c);
        } else if (x < 8500) {
            view_open(c);
        } else if (x < 8700) {
            if (c->nviews)
                view_check(c, tu_below(&c->r, c->nviews), tu_chance(&c->r, 300));
        } else if (x < 8760) {
            MRC(c, kv_rebuild_index(c->db), KV_OK);
            c->n_rebuild++;
        } else if (x < 8790) {
            MRC(c, kv_snapshot(c->db), KV_OK);
            c->n_snap++;
        } else if (x < 8815) {
            MRC(c, kv_compact(c->db), KV_OK);
            c->n_compact++;
        } else if (x < 8860) {
            MRC(c, kv_sync(c->db), KV_OK);
        } else if (x < 8870) {
            MRC(c, kv_warmup(c->db), KV_OK);
        } else if (x < 8895) {
            op_reopen(c);
        } else if (x < 8945) {
            check_stats(c);
        } else {
            op_put(c); /* the rest: more writes */
        }
    }
    views_close_all(c);
    check_all(c);
    kv_batch_free(b);
    MRC(c, kv_close(c->db), KV_OK);
    /* One last reopen with default options. */
    kv_options_init(&c->opts);
    db_open(c);
    check_all(c);
    MRC(c, kv_close(c->db), KV_OK);
    print_message("[ done     ] %zu keys; %zu puts %zu deletes %zu batches %zu gets %zu scans "
                  "%zu views %zu reopens %zu snapshots %zu compactions %zu rebuilds\n",
                  c->m.n, c->n_put, c->n_del, c->n_batch, c->n_get, c->n_scan, c->n_view,
                  c->n_reopen, c->n_snap, c->n_compact, c->n_rebuild);
    tu_model_free(&c->m);
    tu_rmrf(c->root);
    free(c);
}

static size_t ops_per_run(size_t normal)
{
    return (size_t)tu_env_u64("KYRO_TEST_OPS", tu_scaled(normal));
}

static void run_dist(int dist, const uint64_t *seeds, size_t nseeds)
{
    uint64_t env_seed = tu_env_u64("KYRO_TEST_SEED", 0);
    if (env_seed) {
        run_one(env_seed, dist, ops_per_run(20000));
        return;
    }
    for (size_t i = 0; i < nseeds; i++)
        run_one(seeds[i], dist, ops_per_run(12000));
}

static void test_model_dense(void **state)
{
    (void)state;
    const uint64_t seeds[] = {1, 0xC0FFEE};
    run_dist(DIST_DENSE, seeds, 2);
}

static void test_model_sparse(void **state)
{
    (void)state;
    const uint64_t seeds[] = {2, 0xBADC0DE};
    run_dist(DIST_SPARSE, seeds, 2);
}

static void test_model_mixed(void **state)
{
    (void)state;
    const uint64_t seeds[] = {3, 20240601};
    run_dist(DIST_MIXED, seeds, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_dense),
        cmocka_unit_test(test_model_sparse),
        cmocka_unit_test(test_model_mixed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
