/* test_buffer.c — the write buffer: versions, iteration, growth, ENOMEM,
 * and one writer racing lock-free readers (run it under ThreadSanitizer). */
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

#include "buffer.h"
#include "kyro.h"
#include "version.h"
#include "testutil.h"

/* ---- Helpers ------------------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

/* KYRO_TEST_SCALE=small, or a sanitizer build, shrinks the big tests;
 * KYRO_TEST_SCALE=full keeps them full size even under a sanitizer. */
static int small_scale(void)
{
    const char *s = getenv("KYRO_TEST_SCALE");
    if (s && s[0] == 'f')
        return 0;
    return UNDER_SANITIZER || (s && s[0] == 's');
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    return mix64(rng_state += 0x9e3779b97f4a7c15ull);
}

/* Deterministic value bytes for a tag: length len, content from the tag. */
static void fill(uint64_t tag, unsigned char *out, size_t len)
{
    uint64_t x = mix64(tag + 1);
    for (size_t i = 0; i < len; i++) {
        if (i % 8 == 0)
            x = mix64(x + i);
        out[i] = (unsigned char)(x >> (8 * (i % 8)));
    }
}

static int same_bytes(uint64_t tag, const void *val, size_t len)
{
    /* Regenerate fill()'s stream block by block and memcmp it. */
    unsigned char tmp[4096];
    const unsigned char *p = val;
    uint64_t x = mix64(tag + 1);
    for (size_t off = 0; off < len; off += sizeof tmp) {
        size_t n = len - off < sizeof tmp ? len - off : sizeof tmp;
        for (size_t i = 0; i < n; i++) {
            size_t at = off + i;
            if (at % 8 == 0)
                x = mix64(x + at);
            tmp[i] = (unsigned char)(x >> (8 * (at % 8)));
        }
        if (memcmp(tmp, p + off, n) != 0)
            return 0;
    }
    return 1;
}

static void put_tag(buf *b, uint64_t key, uint64_t seq, uint64_t tag, size_t len)
{
    unsigned char tmp[256];
    assert_true(len <= sizeof tmp);
    fill(tag, tmp, len);
    assert_int_equal(buf_put(b, key, seq, 0, tmp, len), KV_OK);
}

static void put_str(buf *b, uint64_t key, uint64_t seq, const char *s)
{
    assert_int_equal(buf_put(b, key, seq, 0, s, strlen(s)), KV_OK);
}

static void expect_str(const buf *b, uint64_t key, uint64_t seq, const char *s)
{
    const void *val = NULL;
    size_t len = 12345;
    assert_int_equal(buf_get(b, key, seq, &val, &len), BUF_VALUE);
    assert_non_null(val);
    assert_int_equal(len, strlen(s));
    if (len)
        assert_memory_equal(val, s, len);
}

static void expect_state(const buf *b, uint64_t key, uint64_t seq, int state)
{
    const void *val = (const void *)&val;
    size_t len = 777;
    assert_int_equal(buf_get(b, key, seq, &val, &len), state);
    if (state == BUF_TOMBSTONE) {
        assert_null(val);
        assert_int_equal(len, 0);
    }
}

/* ---- Basics -------------------------------------------------------- */

/* A grace function for a buffer no other thread reads: no reader can be
 * between loading an order and taking its reference. */
static void no_readers(void *ctx)
{
    (void)ctx;
}

/* A grace-period domain for buffers shared with reader threads, as the
 * database sets one up: readers pin it around buf_iter_seek. */
static ver_domain *domain_new(void)
{
    ver_domain *d = malloc(sizeof *d);
    buf *b;
    run *r;
    assert_non_null(d);
    assert_int_equal(buf_new(&b), KV_OK);
    assert_int_equal(run_new_empty(&r), KV_OK);
    ver_buf *vb = ver_buf_new(b);
    assert_non_null(vb);
    ver *v = ver_new(vb, NULL, r, 0);
    assert_non_null(v);
    ver_buf_unref(vb);
    run_unref(r);
    assert_int_equal(ver_domain_init(d, v), 0);
    return d;
}

static void domain_free(ver_domain *d)
{
    ver_domain_destroy(d);
    free(d);
}

static void domain_grace(void *ctx)
{
    ver_synchronize(ctx);
}

/* buf_iter_seek, pinned in d when there is one. */
static void seek_pinned(ver_domain *d, const buf *b, buf_iter *it, uint64_t lo, uint64_t seq)
{
    ver_hold h = {0};
    if (d)
        h = ver_enter(d);
    buf_iter_seek(b, it, lo, seq);
    if (d)
        ver_leave(h);
}

static void test_empty(void **state)
{
    (void)state;
    buf *b = NULL;
    assert_int_equal(buf_new(&b), KV_OK);
    assert_non_null(b);
    expect_state(b, 0, UINT64_MAX, BUF_ABSENT);
    expect_state(b, UINT64_MAX, UINT64_MAX, BUF_ABSENT);
    expect_state(b, 42, 0, BUF_ABSENT);
    assert_int_equal(buf_keys(b), 0);
    assert_int_equal(buf_writes(b), 0);
    assert_true(buf_memory(b) > 0);
    assert_true(buf_memory(b) < 64 * 1024); /* an empty buffer is small */
    buf_iter it;
    uint64_t k;
    buf_iter_seek(b, &it, 0, UINT64_MAX);
    assert_int_equal(buf_iter_next(&it, &k, NULL, NULL), BUF_ABSENT);
    assert_int_equal(buf_iter_next(&it, &k, NULL, NULL), BUF_ABSENT);
    buf_iter_close(&it);
    buf_iter_close(&it);
    assert_int_equal(buf_validate(b), KV_OK);
    buf_free(b);
    buf_free(NULL);
    assert_int_equal(buf_new(NULL), KV_EINVAL);
}

static void test_versions(void **state)
{
    (void)state;
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    put_str(b, 7, 5, "a");
    assert_int_equal(buf_put(b, 7, 10, 1, "ignored", 7), KV_OK);
    put_str(b, 7, 15, "bbb");
    put_str(b, 7, 15, "cc"); /* same seq (a batch): the later one wins */
    put_str(b, 0, 3, "zero");
    put_str(b, UINT64_MAX, 4, "max");
    assert_int_equal(buf_put(b, 8, 6, 1, NULL, 0), KV_OK); /* a delete as first version */

    for (uint64_t s = 0; s < 5; s++)
        expect_state(b, 7, s, BUF_ABSENT);
    for (uint64_t s = 5; s < 10; s++)
        expect_str(b, 7, s, "a");
    for (uint64_t s = 10; s < 15; s++)
        expect_state(b, 7, s, BUF_TOMBSTONE);
    expect_str(b, 7, 15, "cc");
    expect_str(b, 7, UINT64_MAX, "cc");
    expect_state(b, 0, 2, BUF_ABSENT);
    expect_str(b, 0, 3, "zero");
    expect_state(b, UINT64_MAX, 3, BUF_ABSENT);
    expect_str(b, UINT64_MAX, 4, "max");
    expect_state(b, 8, 5, BUF_ABSENT);
    expect_state(b, 8, 6, BUF_TOMBSTONE);
    expect_state(b, 9, UINT64_MAX, BUF_ABSENT);
    expect_state(b, 1, UINT64_MAX, BUF_ABSENT);
    expect_state(b, UINT64_MAX - 1, UINT64_MAX, BUF_ABSENT);
    assert_int_equal(buf_keys(b), 4);
    assert_int_equal(buf_writes(b), 7);

    /* NULL out-pointers are allowed. */
    assert_int_equal(buf_get(b, 7, 15, NULL, NULL), BUF_VALUE);

    /* Misuse is refused and changes nothing. */
    assert_int_equal(buf_put(b, 7, 14, 0, "old", 3), KV_EINVAL); /* seq went back */
    assert_int_equal(buf_put(b, 9, 20, 0, NULL, 3), KV_EINVAL);
    assert_int_equal(buf_put(b, 9, 20, 0, "x", KV_MAX_VALUE + 1), KV_ETOOBIG);
    assert_int_equal(buf_put(NULL, 9, 20, 0, "x", 1), KV_EINVAL);
    expect_str(b, 7, UINT64_MAX, "cc");
    expect_state(b, 9, UINT64_MAX, BUF_ABSENT);
    assert_int_equal(buf_keys(b), 4);
    assert_int_equal(buf_writes(b), 7);
    assert_int_equal(buf_validate(b), KV_OK);
    buf_free(b);
}

/* ---- Model test ---------------------------------------------------- */

typedef struct {
    uint32_t kidx;
    uint32_t len;
    uint64_t seq;
    int tomb;
} model_op;

/* Check b at max_seq s against the reference state (op index per key, -1 =
 * absent). keys[] is sorted. */
static void model_check(const buf *b, const uint64_t *keys, size_t nk, const model_op *ops,
                        const long *st, uint64_t s)
{
    for (size_t k = 0; k < nk; k++) {
        const void *val = NULL;
        size_t len = 0;
        int got = buf_get(b, keys[k], s, &val, &len);
        if (st[k] < 0) {
            assert_int_equal(got, BUF_ABSENT);
            continue;
        }
        const model_op *o = &ops[st[k]];
        assert_int_equal(got, o->tomb ? BUF_TOMBSTONE : BUF_VALUE);
        if (!o->tomb) {
            assert_non_null(val);
            assert_int_equal(len, o->len);
            assert_true(same_bytes((uint64_t)st[k], val, len));
        }
    }
    /* Iteration from a random start, and from 0. */
    for (int pass = 0; pass < 2; pass++) {
        size_t from = pass ? (size_t)(rnd() % nk) : 0;
        uint64_t lo = keys[from];
        if (pass && from > 0 && rnd() % 2 && keys[from] - keys[from - 1] > 1)
            lo = keys[from - 1] + 1; /* a lo between keys */
        buf_iter it;
        buf_iter_seek(b, &it, lo, s);
        for (size_t k = from; k < nk; k++) {
            if (st[k] < 0)
                continue;
            uint64_t key = 0;
            const void *val = NULL;
            size_t len = 0;
            int got = buf_iter_next(&it, &key, &val, &len);
            const model_op *o = &ops[st[k]];
            assert_int_equal(got, o->tomb ? BUF_TOMBSTONE : BUF_VALUE);
            assert_true(key == keys[k]);
            if (!o->tomb) {
                assert_int_equal(len, o->len);
                assert_true(same_bytes((uint64_t)st[k], val, len));
            }
        }
        assert_int_equal(buf_iter_next(&it, NULL, NULL, NULL), BUF_ABSENT);
        buf_iter_close(&it);
    }
}

static void test_model(void **state)
{
    (void)state;
    rng_state = 0x1234;
    const size_t nk = 300, nops = small_scale() ? 6000 : 30000;
    uint64_t *keys = malloc(nk * sizeof *keys);
    model_op *ops = malloc(nops * sizeof *ops);
    long *st = malloc(nk * sizeof *st);
    assert_non_null(keys);
    assert_non_null(ops);
    assert_non_null(st);

    /* Keys: the extremes, a dense run, scattered ones; sorted, distinct. */
    size_t n = 0;
    keys[n++] = 0;
    keys[n++] = UINT64_MAX;
    keys[n++] = UINT64_MAX - 1;
    for (uint64_t i = 1; i <= 60; i++)
        keys[n++] = i;
    while (n < nk) {
        uint64_t k = rnd() % 4 ? rnd() : 1000 + rnd() % 1000;
        int dup = 0;
        for (size_t j = 0; j < n; j++)
            dup |= keys[j] == k;
        if (!dup)
            keys[n++] = k;
    }
    qsort(keys, nk, sizeof *keys, tu_cmp_u64);

    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    for (size_t k = 0; k < nk; k++)
        st[k] = -1;
    uint64_t seq = 1, distinct = 0;
    unsigned char tmp[256];
    for (size_t i = 0; i < nops; i++) {
        /* Skewed key choice so some keys get long chains. */
        uint32_t kidx = (uint32_t)(rnd() % 3 ? rnd() % nk : rnd() % 8);
        seq += rnd() % 5 == 0 ? 0 : 1 + rnd() % 3; /* equal seqs now and then */
        int tomb = rnd() % 5 == 0;
        uint32_t len = (uint32_t)(rnd() % 8 == 0 ? 0 : rnd() % 200);
        ops[i] = (model_op){kidx, tomb ? 0 : len, seq, tomb};
        fill(i, tmp, len);
        assert_int_equal(buf_put(b, keys[kidx], seq, tomb, tmp, len), KV_OK);
        distinct += st[kidx] < 0;
        st[kidx] = (long)i;
        if (i % 1000 == 999) {
            model_check(b, keys, nk, ops, st, UINT64_MAX);
            assert_int_equal(buf_validate(b), KV_OK);
        }
    }
    assert_int_equal(buf_keys(b), distinct);
    assert_int_equal(buf_writes(b), nops);
    assert_int_equal(buf_validate(b), KV_OK);

    /* Many snapshots: 0, every boundary, random seqs, past the end. */
    uint64_t checks[80];
    size_t nc = 0;
    checks[nc++] = 0;
    checks[nc++] = 1;
    checks[nc++] = seq;
    checks[nc++] = seq + 1;
    checks[nc++] = UINT64_MAX;
    while (nc < 80) {
        uint64_t s = ops[rnd() % nops].seq;
        checks[nc++] = s - (rnd() % 2);
    }
    for (size_t c = 0; c < nc; c++) {
        for (size_t k = 0; k < nk; k++)
            st[k] = -1;
        for (size_t i = 0; i < nops && ops[i].seq <= checks[c]; i++)
            st[ops[i].kidx] = (long)i;
        model_check(b, keys, nk, ops, st, checks[c]);
    }
    /* Keys never written stay absent. */
    for (int i = 0; i < 1000; i++) {
        uint64_t k = rnd();
        if (!bsearch(&k, keys, nk, sizeof *keys, tu_cmp_u64))
            expect_state(b, k, UINT64_MAX, BUF_ABSENT);
    }
    buf_free(b);
    free(keys);
    free(ops);
    free(st);
}

/* ---- Iteration ----------------------------------------------------- */

typedef struct {
    uint64_t key;
    int state;
    const char *val;
} want;

static void expect_iter(const buf *b, uint64_t lo, uint64_t s, const want *w, size_t n)
{
    buf_iter it;
    buf_iter_seek(b, &it, lo, s);
    for (size_t i = 0; i < n; i++) {
        uint64_t key = 0;
        const void *val = NULL;
        size_t len = 99;
        assert_int_equal(buf_iter_next(&it, &key, &val, &len), w[i].state);
        assert_true(key == w[i].key);
        if (w[i].state == BUF_VALUE) {
            assert_non_null(val);
            assert_int_equal(len, strlen(w[i].val));
            if (len)
                assert_memory_equal(val, w[i].val, len);
        } else {
            assert_null(val);
            assert_int_equal(len, 0);
        }
    }
    /* Exhausted, and stays so. */
    assert_int_equal(buf_iter_next(&it, NULL, NULL, NULL), BUF_ABSENT);
    assert_int_equal(buf_iter_next(&it, NULL, NULL, NULL), BUF_ABSENT);
    buf_iter_close(&it);
}

static void test_iterate(void **state)
{
    (void)state;
    const uint64_t MAX = UINT64_MAX;
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    put_str(b, 100, 1, "c");
    put_str(b, MAX, 2, "max");
    put_str(b, 0, 3, "zero");
    assert_int_equal(buf_put(b, 5, 4, 1, NULL, 0), KV_OK);
    put_str(b, 1, 5, "");
    put_str(b, MAX - 1, 6, "m1");
    assert_int_equal(buf_put(b, 100, 7, 1, NULL, 0), KV_OK);
    put_str(b, 0, 8, "z2");

    expect_iter(b, 0, 0, NULL, 0);
    want at2[] = {{100, BUF_VALUE, "c"}, {MAX, BUF_VALUE, "max"}};
    expect_iter(b, 0, 2, at2, 2);
    want at4[] = {{0, BUF_VALUE, "zero"}, {5, BUF_TOMBSTONE, NULL}, {100, BUF_VALUE, "c"},
                  {MAX, BUF_VALUE, "max"}};
    expect_iter(b, 0, 4, at4, 4);
    want at8[] = {{0, BUF_VALUE, "z2"},      {1, BUF_VALUE, ""},
                  {5, BUF_TOMBSTONE, NULL},  {100, BUF_TOMBSTONE, NULL},
                  {MAX - 1, BUF_VALUE, "m1"}, {MAX, BUF_VALUE, "max"}};
    expect_iter(b, 0, 8, at8, 6);
    expect_iter(b, 0, MAX, at8, 6);
    expect_iter(b, 1, 8, at8 + 1, 5);
    expect_iter(b, 2, 8, at8 + 2, 4);
    expect_iter(b, 6, 8, at8 + 3, 3);
    expect_iter(b, 101, 8, at8 + 4, 2);
    expect_iter(b, MAX - 1, 8, at8 + 4, 2);
    expect_iter(b, MAX, 8, at8 + 5, 1);
    expect_iter(b, MAX, 1, NULL, 0);      /* MAX not visible yet */
    expect_iter(b, MAX - 1, 5, at2 + 1, 1); /* MAX-1 not visible yet: skipped */
    want at6from1[] = {{1, BUF_VALUE, ""}, {5, BUF_TOMBSTONE, NULL}, {100, BUF_VALUE, "c"},
                       {MAX - 1, BUF_VALUE, "m1"}, {MAX, BUF_VALUE, "max"}};
    expect_iter(b, 1, 6, at6from1, 5);

    /* The 0-byte value is reported with a non-NULL pointer. */
    const void *val = NULL;
    size_t len = 5;
    assert_int_equal(buf_get(b, 1, 8, &val, &len), BUF_VALUE);
    assert_non_null(val);
    assert_int_equal(len, 0);
    assert_int_equal(buf_validate(b), KV_OK);
    buf_free(b);
}

/* Many keys inserted in random order: iteration yields all, in order, once
 * each; a key whose only versions are newer than max_seq is skipped. */
static void test_iterate_many(void **state)
{
    (void)state;
    rng_state = 77;
    const size_t n = small_scale() ? 5000 : 50000;
    uint64_t *keys = malloc(n * sizeof *keys), *seqs = malloc(n * sizeof *seqs);
    assert_non_null(keys);
    assert_non_null(seqs);
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    for (size_t i = 0; i < n; i++) {
        uint64_t k;
        do
            k = i < 2 ? (i ? UINT64_MAX : 0) : rnd() >> (rnd() % 64);
        while (buf_get(b, k, UINT64_MAX, NULL, NULL) != BUF_ABSENT);
        keys[i] = k;
        seqs[i] = i + 1;
        put_tag(b, k, i + 1, k, (size_t)(k % 17));
    }
    assert_int_equal(buf_keys(b), n);
    assert_int_equal(buf_validate(b), KV_OK);
    uint64_t cut[] = {0, 1, 2, n / 3, n / 2, n - 1, n, UINT64_MAX};
    for (size_t c = 0; c < sizeof cut / sizeof cut[0]; c++) {
        /* expected: keys with seq <= cut, sorted */
        uint64_t *exp = malloc(n * sizeof *exp);
        assert_non_null(exp);
        size_t ne = 0;
        for (size_t i = 0; i < n; i++)
            if (seqs[i] <= cut[c])
                exp[ne++] = keys[i];
        qsort(exp, ne, sizeof *exp, tu_cmp_u64);
        buf_iter it;
        buf_iter_seek(b, &it, 0, cut[c]);
        uint64_t key;
        const void *val;
        size_t len;
        for (size_t i = 0; i < ne; i++) {
            assert_int_equal(buf_iter_next(&it, &key, &val, &len), BUF_VALUE);
            assert_true(key == exp[i]);
            assert_int_equal(len, key % 17);
            assert_true(same_bytes(key, val, len));
        }
        assert_int_equal(buf_iter_next(&it, &key, &val, &len), BUF_ABSENT);
        buf_iter_close(&it);
        free(exp);
    }
    buf_free(b);
    free(keys);
    free(seqs);
}

/* ---- Value sizes --------------------------------------------------- */

/* Ascending runs from random starting points (how sorted batches arrive),
 * mixed with single random keys: inserts that resume from the previous
 * insert's position must link every node where a search from the head
 * would have. */
static void test_ascending_runs(void **state)
{
    (void)state;
    rng_state = 4242;
    const size_t n = small_scale() ? 6000 : 60000;
    uint64_t *keys = malloc(n * sizeof *keys);
    assert_non_null(keys);
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    size_t got = 0;
    while (got < n) {
        size_t run = 1 + rnd() % 64;
        uint64_t k = rnd() >> (rnd() % 40);
        for (size_t r = 0; r < run && got < n; r++) {
            k += 1 + rnd() % 1000;
            if (buf_get(b, k, UINT64_MAX, NULL, NULL) != BUF_ABSENT)
                continue;
            keys[got] = k;
            put_tag(b, k, got + 1, k, 8);
            got++;
        }
        if (got % 97 == 0)
            assert_int_equal(buf_validate(b), KV_OK);
    }
    assert_int_equal(buf_keys(b), n);
    assert_int_equal(buf_validate(b), KV_OK);
    qsort(keys, n, sizeof *keys, tu_cmp_u64);
    buf_iter it;
    buf_iter_seek(b, &it, 0, UINT64_MAX);
    uint64_t k;
    const void *v;
    size_t len, i = 0;
    while (buf_iter_next(&it, &k, &v, &len) == BUF_VALUE) {
        assert_true(i < n);
        assert_true(k == keys[i]);
        i++;
    }
    buf_iter_close(&it);
    assert_int_equal(i, n);
    buf_free(b);
    free(keys);
}

/* Deferred ordering (recovery): point reads work while keys wait, and
 * buf_finish_order orders them all: iteration then yields exactly the new
 * keys, sorted. */
static void test_deferred_order(void **state)
{
    (void)state;
    rng_state = 99;
    const size_t n = small_scale() ? 4000 : 40000;
    uint64_t *keys = malloc(n * sizeof *keys);
    assert_non_null(keys);
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    assert_int_equal(buf_reserve(b, n), KV_OK);
    buf_defer_order(b);
    size_t got = 0;
    uint64_t seq = 0;
    while (got < n) {
        uint64_t k = got < 2 ? (got ? UINT64_MAX : 0) : rnd() >> (rnd() % 48);
        int prev;
        assert_int_equal(buf_put_prev(b, k, ++seq, 0, &k, 8, &prev), KV_OK);
        if (prev == BUF_ABSENT)
            keys[got++] = k;
        if (rnd() % 4 == 0) { /* overwrite or delete a key already there */
            uint64_t old = keys[rnd() % got];
            assert_int_equal(buf_put_prev(b, old, ++seq, 1, NULL, 0, &prev), KV_OK);
            assert_true(prev != BUF_ABSENT);
            assert_int_equal(buf_put_prev(b, old, ++seq, 0, &old, 8, &prev), KV_OK);
            assert_int_equal(prev, BUF_TOMBSTONE);
        }
        const void *v;
        size_t len;
        assert_int_equal(buf_get(b, k, UINT64_MAX, &v, &len), BUF_VALUE);
    }
    assert_int_equal(buf_validate(b), KV_OK);
    assert_int_equal(buf_finish_order(b), KV_OK);
    assert_int_equal(buf_finish_order(b), KV_OK); /* once is enough */
    qsort(keys, n, sizeof *keys, tu_cmp_u64);
    assert_int_equal(buf_validate(b), KV_OK);
    buf_iter it;
    buf_iter_seek(b, &it, 0, UINT64_MAX);
    uint64_t k;
    const void *v;
    size_t len, i = 0;
    while (buf_iter_next(&it, &k, &v, &len) == BUF_VALUE) {
        assert_true(i < n && k == keys[i]);
        assert_int_equal(len, 8);
        assert_memory_equal(v, &k, 8);
        i++;
    }
    buf_iter_close(&it);
    assert_int_equal(i, n);
    /* Back to normal inserts afterwards. */
    assert_int_equal(buf_put(b, 12345, ++seq, 0, "x", 1), KV_OK);
    assert_int_equal(buf_validate(b), KV_OK);
    buf_free(b);
    free(keys);
}

static void test_value_sizes(void **state)
{
    (void)state;
    static const size_t sizes[] = {0,          1,           7,           4095,
                                   4096,       4097,        262143,      262144,
                                   262145,     1048575,     1048576,     1048577,
                                   5u << 20,   KV_MAX_VALUE};
    /* The 64 MiB one only at full scale. */
    const size_t ns = sizeof sizes / sizeof sizes[0] - (small_scale() ? 1 : 0);
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    const void *where[sizeof sizes / sizeof sizes[0]];
    uint64_t total = 0;
    for (size_t i = 0; i < ns; i++) {
        unsigned char *v = malloc(sizes[i] ? sizes[i] : 1);
        assert_non_null(v);
        fill(1000 + i, v, sizes[i]);
        assert_int_equal(buf_put(b, i * 3, i + 1, 0, sizes[i] ? v : NULL, sizes[i]), KV_OK);
        memset(v, 0xEE, sizes[i]); /* the buffer kept its own copy */
        free(v);
        put_tag(b, i * 3 + 1, i + 1, i, 50); /* small ones interleaved */
        total += sizes[i];
        size_t len;
        assert_int_equal(buf_get(b, i * 3, UINT64_MAX, &where[i], &len), BUF_VALUE);
        assert_non_null(where[i]);
        assert_int_equal(len, sizes[i]);
    }
    uint64_t mem = buf_memory(b);
    assert_true(mem >= total);
    assert_true(mem <= total + total / 4 + (8u << 20));
    /* More writes, overwrites included, move nothing. */
    for (uint64_t i = 0; i < 20000; i++)
        put_tag(b, 1000000 + i % 5000, 100 + i, i, (size_t)(i % 200));
    for (size_t i = 0; i < ns; i++) {
        const void *val;
        size_t len;
        assert_int_equal(buf_get(b, i * 3, UINT64_MAX, &val, &len), BUF_VALUE);
        assert_ptr_equal(val, where[i]);
        assert_int_equal(len, sizes[i]);
        assert_true(same_bytes(1000 + i, val, len));
        assert_int_equal(buf_get(b, i * 3 + 1, UINT64_MAX, &val, &len), BUF_VALUE);
        assert_true(len == 50 && same_bytes(i, val, len));
    }
    assert_true(buf_memory(b) > mem);
    assert_int_equal(buf_validate(b), KV_OK);
    buf_free(b);
}

/* ---- Hash growth --------------------------------------------------- */

static uint64_t growth_key(uint64_t i, uint64_t n)
{
    /* Thirds: sequential from 0, strided by 2^32 (identical low bits), and
     * pseudo-random (includes UINT64_MAX at the end). */
    if (i < n / 3)
        return i;
    if (i < 2 * n / 3)
        return (i - n / 3 + 1) << 32;
    if (i == n - 1)
        return UINT64_MAX;
    return mix64(i) | 1; /* odd: never one of the strided keys */
}

static void test_hash_growth(void **state)
{
    (void)state;
    const uint64_t n = small_scale() ? 100000 : 1000000;
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    buf_set_grace(b, no_readers, NULL); /* replaced orders are freed as it goes */
    uint64_t mem0 = buf_memory(b);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = growth_key(i, n);
        put_tag(b, k, i + 1, k, (size_t)(k % 9));
        if ((i & (i + 1)) == 0) { /* at powers of two: a key from each third is there */
            for (uint64_t j = 0; j <= i; j = j * 2 + 1)
                assert_int_equal(buf_get(b, growth_key(j, n), i + 1, NULL, NULL), BUF_VALUE);
        }
    }
    assert_int_equal(buf_keys(b), n);
    assert_int_equal(buf_writes(b), n);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = growth_key(i, n);
        const void *val;
        size_t len;
        assert_int_equal(buf_get(b, k, UINT64_MAX, &val, &len), BUF_VALUE);
        assert_int_equal(len, k % 9);
        assert_true(same_bytes(k, val, len));
        assert_int_equal(buf_get(b, k, i, NULL, NULL), BUF_ABSENT); /* seq i+1 > i */
    }
    /* Near misses are absent. */
    for (uint64_t i = 0; i < 10000; i++) {
        expect_state(b, n + i, UINT64_MAX, BUF_ABSENT);
        expect_state(b, ((i + 1) << 32) + 1, UINT64_MAX, BUF_ABSENT);
        expect_state(b, (n + i) << 33 | (1ull << 32), UINT64_MAX, BUF_ABSENT);
    }
    /* Ordered and complete. */
    buf_iter it;
    buf_iter_seek(b, &it, 0, UINT64_MAX);
    uint64_t key, prev = 0, count = 0;
    while (buf_iter_next(&it, &key, NULL, NULL) == BUF_VALUE) {
        assert_true(count == 0 || key > prev);
        prev = key;
        count++;
    }
    buf_iter_close(&it);
    assert_int_equal(count, n);
    assert_true(prev == UINT64_MAX);
    /* Memory: counts tables and nodes, but stays within a sane bound. */
    uint64_t mem = buf_memory(b);
    assert_true(mem > mem0 + n * 16 * 2);
    assert_true(mem < n * 200 + (4u << 20));
    assert_int_equal(buf_validate(b), KV_OK);
    buf_free(b);
}

/* ---- Allocation failure -------------------------------------------- */

typedef struct {
    int armed;
    uint64_t rng, one_in, calls, failed, fail_at; /* fail_at: fail call number n (1-based) */
} fault_state;

static int fault(void *ctx, size_t bytes)
{
    (void)bytes;
    fault_state *f = ctx;
    if (!f->armed)
        return 0;
    f->calls++;
    int fail = f->fail_at ? f->calls == f->fail_at : mix64(f->rng += 0x9e37) % f->one_in == 0;
    f->failed += fail;
    return fail;
}

static void test_enomem(void **state)
{
    (void)state;
    fault_state f = {0};
    buf_set_fault_hook(fault, &f);

    /* buf_new fails cleanly at each of its allocations. */
    for (uint64_t at = 1;; at++) {
        buf *b = (buf *)&f;
        f = (fault_state){.armed = 1, .fail_at = at};
        int rc = buf_new(&b);
        f.armed = 0;
        if (rc == KV_OK) {
            assert_true(at > 2);
            buf_free(b);
            break;
        }
        assert_int_equal(rc, KV_ENOMEM);
        assert_null(b);
    }

    /* Rounds of random writes on fresh buffers (so chunks and tables are
     * still growing) with random failures: each failed put changes nothing
     * a reader can see, and the buffer stays valid and usable. */
    rng_state = 99;
    const size_t nk = 1500, per_round = 1500, rounds = small_scale() ? 6 : 20;
    long *st = malloc(nk * sizeof *st);
    model_op *ops = malloc(per_round * sizeof *ops);
    unsigned char *big = malloc(300000);
    uint64_t *sorted = malloc(nk * sizeof *sorted);
    assert_non_null(st);
    assert_non_null(ops);
    assert_non_null(big);
    assert_non_null(sorted);
    uint64_t fails = 0, oks = 0;
    for (size_t round = 0; round < rounds; round++) {
        for (size_t k = 0; k < nk; k++)
            st[k] = -1;
        buf *b;
        assert_int_equal(buf_new(&b), KV_OK);
        f = (fault_state){.armed = 1, .rng = round, .one_in = 4};
        uint64_t ok = 0, keys = 0;
        for (size_t i = 0; i < per_round; i++) {
            uint32_t kidx = (uint32_t)(rnd() % nk);
            int tomb = rnd() % 6 == 0;
            uint32_t len = (uint32_t)(rnd() % 64 == 0 ? 262145 + rnd() % 30000 : rnd() % 300);
            if (tomb)
                len = 0;
            ops[i] = (model_op){kidx, len, i + 1, tomb};
            fill(i, big, len);
            uint64_t key = mix64(kidx);
            int rc = buf_put(b, key, i + 1, tomb, big, len);
            if (rc == KV_OK) {
                ok++;
                keys += st[kidx] < 0;
                st[kidx] = (long)i;
            } else {
                assert_int_equal(rc, KV_ENOMEM);
                fails++;
            }
            /* This key reads as the reference says, at the newest seq. */
            const void *val;
            size_t vlen;
            int got = buf_get(b, key, UINT64_MAX, &val, &vlen);
            if (st[kidx] < 0) {
                assert_int_equal(got, BUF_ABSENT);
            } else {
                const model_op *o = &ops[st[kidx]];
                assert_int_equal(got, o->tomb ? BUF_TOMBSTONE : BUF_VALUE);
                if (!o->tomb)
                    assert_true(vlen == o->len && same_bytes((uint64_t)st[kidx], val, vlen));
            }
            assert_int_equal(buf_keys(b), keys);
            assert_int_equal(buf_writes(b), ok);
            if (rc != KV_OK && fails % 16 == 1) {
                f.armed = 0;
                assert_int_equal(buf_validate(b), KV_OK);
                f.armed = 1;
            }
        }
        f.armed = 0;
        oks += ok;
        assert_int_equal(buf_validate(b), KV_OK);
        /* Whole state, and iteration in order, match the reference. */
        size_t live = 0;
        for (size_t k = 0; k < nk; k++) {
            uint64_t key = mix64(k);
            int got = buf_get(b, key, UINT64_MAX, NULL, NULL);
            assert_int_equal(got, st[k] < 0 ? BUF_ABSENT
                                            : ops[st[k]].tomb ? BUF_TOMBSTONE : BUF_VALUE);
            if (st[k] >= 0)
                sorted[live++] = key;
        }
        qsort(sorted, live, sizeof *sorted, tu_cmp_u64);
        buf_iter it;
        buf_iter_seek(b, &it, 0, UINT64_MAX);
        uint64_t key;
        for (size_t i = 0; i < live; i++) {
            assert_int_not_equal(buf_iter_next(&it, &key, NULL, NULL), BUF_ABSENT);
            assert_true(key == sorted[i]);
        }
        assert_int_equal(buf_iter_next(&it, NULL, NULL, NULL), BUF_ABSENT);
        buf_iter_close(&it);
        /* And it still takes writes. */
        put_str(b, 12345, per_round + 1, "after");
        expect_str(b, 12345, UINT64_MAX, "after");
        buf_free(b);
    }
    buf_set_fault_hook(NULL, NULL);
    assert_true(fails >= 5 * rounds);
    assert_true(oks > rounds * per_round / 2);
    free(st);
    free(ops);
    free(big);
    free(sorted);
}

/* ---- Concurrency --------------------------------------------------- */

#define READERS 3

/* Writer inserts keys 0..n-1 with seq = key; published = keys inserted so far. */
typedef struct {
    buf *b;
    ver_domain *d; /* the buffer's grace-period domain, or NULL (no reclaiming) */
    uint64_t n;
    _Atomic uint64_t published;
    atomic_int done;
} append_shared;

typedef struct {
    append_shared *s;
    uint64_t rng;
    uint64_t gets, iters, errors;
    char first_error[160];
} append_reader;

static size_t append_len(uint64_t key)
{
    return (size_t)(key % 23);
}

static void note_error(char *first, uint64_t *errors, const char *what, uint64_t a, uint64_t b)
{
    if ((*errors)++ == 0)
        snprintf(first, 160, "%s (%llu, %llu)", what, (unsigned long long)a,
                 (unsigned long long)b);
}

static void append_check(append_reader *r, uint64_t p, int full)
{
    append_shared *s = r->s;
    uint64_t S = p - 1; /* keys 0..S are published, at max_seq S */
    if (buf_keys(s->b) < p)
        note_error(r->first_error, &r->errors, "buf_keys behind published", buf_keys(s->b), p);
    for (int i = 0; i < 64; i++) {
        uint64_t k = mix64(r->rng++) % p;
        const void *val;
        size_t len;
        int got = buf_get(s->b, k, S, &val, &len);
        if (got != BUF_VALUE || len != append_len(k) || !same_bytes(k, val, len))
            note_error(r->first_error, &r->errors, "published key wrong", k, S);
        if (buf_get(s->b, k, UINT64_MAX, NULL, NULL) != BUF_VALUE)
            note_error(r->first_error, &r->errors, "published key missing", k, S);
        if (S + 1 < s->n) {
            uint64_t k2 = S + 1 + mix64(r->rng++) % (s->n - S - 1);
            if (buf_get(s->b, k2, S, NULL, NULL) != BUF_ABSENT)
                note_error(r->first_error, &r->errors, "future key visible", k2, S);
        }
        r->gets++;
    }
    /* Iterating at S from lo yields exactly lo..S, in order. */
    uint64_t lo = full ? 0 : mix64(r->rng++) % p;
    buf_iter it;
    seek_pinned(s->d, s->b, &it, lo, S);
    uint64_t key;
    const void *val;
    size_t len;
    for (uint64_t want_k = lo; want_k <= S; want_k++) {
        if (buf_iter_next(&it, &key, &val, &len) != BUF_VALUE || key != want_k ||
            len != append_len(key) || !same_bytes(key, val, len)) {
            note_error(r->first_error, &r->errors, "iteration wrong", want_k, S);
            buf_iter_close(&it);
            return;
        }
    }
    if (buf_iter_next(&it, &key, &val, &len) != BUF_ABSENT)
        note_error(r->first_error, &r->errors, "iteration past S", key, S);
    buf_iter_close(&it);
    r->iters++;
}

static void *append_reader_main(void *arg)
{
    append_reader *r = arg;
    append_shared *s = r->s;
    for (;;) {
        int done = atomic_load_explicit(&s->done, memory_order_acquire);
        uint64_t p = atomic_load_explicit(&s->published, memory_order_acquire);
        if (p > 0)
            append_check(r, p, done);
        if (done)
            break;
    }
    return NULL;
}

static void concurrent_append(int reclaim)
{
    append_shared s = {.n = small_scale() ? 50000 : 300000};
    assert_int_equal(buf_new(&s.b), KV_OK);
    if (reclaim) {
        s.d = domain_new();
        buf_set_grace(s.b, domain_grace, s.d);
    }
    atomic_init(&s.published, 0);
    atomic_init(&s.done, 0);
    append_reader r[READERS];
    pthread_t t[READERS];
    for (int i = 0; i < READERS; i++) {
        r[i] = (append_reader){.s = &s, .rng = (uint64_t)i << 40};
        assert_int_equal(pthread_create(&t[i], NULL, append_reader_main, &r[i]), 0);
    }
    unsigned char tmp[32];
    for (uint64_t k = 0; k < s.n; k++) {
        fill(k, tmp, append_len(k));
        assert_int_equal(buf_put(s.b, k, k, 0, tmp, append_len(k)), KV_OK);
        atomic_store_explicit(&s.published, k + 1, memory_order_release);
    }
    atomic_store_explicit(&s.done, 1, memory_order_release);
    uint64_t gets = 0, iters = 0;
    for (int i = 0; i < READERS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        if (r[i].errors)
            fail_msg("reader %d: %llu errors, first: %s", i, (unsigned long long)r[i].errors,
                     r[i].first_error);
        gets += r[i].gets;
        iters += r[i].iters;
    }
    assert_true(gets > 0);
    assert_true(iters >= READERS); /* at least the final full pass each */
    assert_int_equal(buf_validate(s.b), KV_OK);
    /* Replaced orders were freed along the way: about 220 bytes a key
     * here, against about 290 without reclaiming. */
    if (reclaim)
        assert_true(buf_memory(s.b) < s.n * 240 + (4u << 20));
    buf_free(s.b);
    if (s.d)
        domain_free(s.d);
}

static void test_concurrent_append(void **state)
{
    (void)state;
    concurrent_append(0);
}

/* The same with the writer freeing replaced orders under the readers. */
static void test_concurrent_append_reclaiming(void **state)
{
    (void)state;
    concurrent_append(1);
}

/* Writer: R rounds over K keys visited in a shuffled order, op g (seq g+1)
 * writes key keyof(perm[g % K]); every 7th op is a delete. Readers at any
 * published seq S can compute exactly which version each key must show. */
typedef struct {
    buf *b;
    ver_domain *d; /* as in append_shared */
    uint64_t k, rounds;
    uint32_t *perm, *inv;
    _Atomic uint64_t published;
    atomic_int done;
} ow_shared;

typedef struct {
    ow_shared *s;
    uint64_t rng;
    uint64_t gets, iters, errors;
    char first_error[160];
} ow_reader;

static uint64_t ow_key(const ow_shared *s, uint64_t p)
{
    return p == s->k - 1 ? UINT64_MAX : p * (UINT64_MAX / (s->k - 1));
}

static int ow_tomb(uint64_t g)
{
    return g % 7 == 3;
}

static size_t ow_len(uint64_t g)
{
    return (size_t)(g % 29);
}

/* The op that key position j (in visiting order) shows at seq S; -1 none. */
static int64_t ow_expected(const ow_shared *s, uint64_t j, uint64_t S)
{
    if (S == 0 || S - 1 < j)
        return -1;
    return (int64_t)(j + (S - 1 - j) / s->k * s->k);
}

static int ow_matches(int64_t g, int got, const void *val, size_t len)
{
    if (g < 0)
        return got == BUF_ABSENT;
    if (ow_tomb((uint64_t)g))
        return got == BUF_TOMBSTONE;
    return got == BUF_VALUE && len == ow_len((uint64_t)g) && same_bytes((uint64_t)g, val, len);
}

static void *ow_reader_main(void *arg)
{
    ow_reader *r = arg;
    ow_shared *s = r->s;
    for (;;) {
        int done = atomic_load_explicit(&s->done, memory_order_acquire);
        uint64_t S = atomic_load_explicit(&s->published, memory_order_acquire);
        for (int i = 0; i < 64; i++) {
            uint64_t j = mix64(r->rng++) % s->k;
            const void *val = NULL;
            size_t len = 0;
            int got = buf_get(s->b, ow_key(s, s->perm[j]), S, &val, &len);
            if (!ow_matches(ow_expected(s, j, S), got, val, len))
                note_error(r->first_error, &r->errors, "get wrong", j, S);
            r->gets++;
        }
        buf_iter it;
        seek_pinned(s->d, s->b, &it, 0, S);
        for (uint64_t p = 0; p < s->k; p++) {
            int64_t g = ow_expected(s, s->inv[p], S);
            if (g < 0)
                continue; /* not visible at S: must be skipped */
            uint64_t key = 0;
            const void *val = NULL;
            size_t len = 0;
            int got = buf_iter_next(&it, &key, &val, &len);
            if (key != ow_key(s, p) || !ow_matches(g, got, val, len)) {
                note_error(r->first_error, &r->errors, "iteration wrong", p, S);
                break;
            }
        }
        if (buf_iter_next(&it, NULL, NULL, NULL) != BUF_ABSENT)
            note_error(r->first_error, &r->errors, "iteration too long", 0, S);
        buf_iter_close(&it);
        r->iters++;
        if (done)
            break;
    }
    return NULL;
}

static void concurrent_overwrite(int reclaim)
{
    ow_shared s = {.k = small_scale() ? 1024 : 4096, .rounds = small_scale() ? 40 : 100};
    s.perm = malloc(s.k * sizeof *s.perm);
    s.inv = malloc(s.k * sizeof *s.inv);
    assert_non_null(s.perm);
    assert_non_null(s.inv);
    for (uint64_t j = 0; j < s.k; j++) { /* odd multiplier: a bijection mod 2^m */
        s.perm[j] = (uint32_t)((j * 0x9E3779B1u + 12345) & (s.k - 1));
        s.inv[s.perm[j]] = (uint32_t)j;
    }
    assert_int_equal(buf_new(&s.b), KV_OK);
    if (reclaim) {
        s.d = domain_new();
        buf_set_grace(s.b, domain_grace, s.d);
    }
    atomic_init(&s.published, 0);
    atomic_init(&s.done, 0);
    ow_reader r[READERS];
    pthread_t t[READERS];
    for (int i = 0; i < READERS; i++) {
        r[i] = (ow_reader){.s = &s, .rng = (uint64_t)(i + 1) << 40};
        assert_int_equal(pthread_create(&t[i], NULL, ow_reader_main, &r[i]), 0);
    }
    unsigned char tmp[32];
    for (uint64_t g = 0; g < s.k * s.rounds; g++) {
        uint64_t key = ow_key(&s, s.perm[g % s.k]);
        fill(g, tmp, ow_len(g));
        assert_int_equal(buf_put(s.b, key, g + 1, ow_tomb(g), tmp, ow_len(g)), KV_OK);
        atomic_store_explicit(&s.published, g + 1, memory_order_release);
    }
    atomic_store_explicit(&s.done, 1, memory_order_release);
    for (int i = 0; i < READERS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        if (r[i].errors)
            fail_msg("reader %d: %llu errors, first: %s", i, (unsigned long long)r[i].errors,
                     r[i].first_error);
        assert_true(r[i].iters > 0);
    }
    assert_int_equal(buf_keys(s.b), s.k);
    assert_int_equal(buf_writes(s.b), s.k * s.rounds);
    assert_int_equal(buf_validate(s.b), KV_OK);
    buf_free(s.b);
    free(s.perm);
    free(s.inv);
    if (s.d)
        domain_free(s.d);
}

static void test_concurrent_overwrite(void **state)
{
    (void)state;
    concurrent_overwrite(0);
}

static void test_concurrent_overwrite_reclaiming(void **state)
{
    (void)state;
    concurrent_overwrite(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_iterate),
        cmocka_unit_test(test_iterate_many),
        cmocka_unit_test(test_ascending_runs),
        cmocka_unit_test(test_deferred_order),
        cmocka_unit_test(test_value_sizes),
        cmocka_unit_test(test_hash_growth),
        cmocka_unit_test(test_enomem),
        cmocka_unit_test(test_concurrent_append),
        cmocka_unit_test(test_concurrent_overwrite),
        cmocka_unit_test(test_concurrent_append_reclaiming),
        cmocka_unit_test(test_concurrent_overwrite_reclaiming),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
