/* test_run.c — base runs: merging buffers in, lookups, compaction. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kyro.h"
#include "run.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Reference: a flat table of (key, present, value-tag). */
typedef struct {
    uint64_t key;
    int present;
    uint32_t tag;
    uint32_t len;
} ref_entry;

static int cmp_ref(const void *a, const void *b)
{
    uint64_t x = ((const ref_entry *)a)->key, y = ((const ref_entry *)b)->key;
    return x < y ? -1 : x > y;
}

static void value_fill(uint64_t key, uint32_t tag, size_t len, char *out)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (char)(key * 31 + tag + i);
}

static size_t value_for(uint64_t key, uint32_t tag, char *out)
{
    size_t len = (size_t)((key ^ tag) % 40);
    for (size_t i = 0; i < len; i++)
        out[i] = (char)(key * 31 + tag + i);
    return len;
}

static void check_run_against(const run *r, ref_entry *ref, size_t nref)
{
    qsort(ref, nref, sizeof *ref, cmp_ref);
    uint64_t live = 0;
    for (size_t i = 0; i < nref; i++) {
        const void *val;
        size_t len, probed = 0;
        int fb = 0;
        int rc = run_get(r, ref[i].key, &val, &len, &probed, &fb);
        assert_int_equal(fb, 0);
        if (!ref[i].present) {
            assert_int_equal(rc, KV_NOTFOUND);
            continue;
        }
        assert_int_equal(rc, KV_OK);
        char want[256];
        value_fill(ref[i].key, ref[i].tag, ref[i].len, want);
        assert_int_equal(len, ref[i].len);
        assert_memory_equal(val, want, len);
        assert_int_equal(r->keys[live], ref[i].key);
        live++;
    }
    assert_int_equal(r->n, live);
    for (uint64_t i = 1; i < r->n; i++)
        assert_true(r->keys[i - 1] < r->keys[i]);
    assert_int_equal((uintptr_t)r->keys % 64, 0);
}

static void test_merge_model(void **state)
{
    (void)state;
    enum { KEYS = 3000, ROUNDS = 20 };
    ref_entry *ref = calloc(KEYS, sizeof *ref);
    for (size_t i = 0; i < KEYS; i++)
        ref[i].key = i == 0 ? 0 : i == 1 ? UINT64_MAX : rnd();
    run *base;
    assert_int_equal(run_new_empty(&base), KV_OK);
    uint64_t seq = 0;
    for (int round = 0; round < ROUNDS; round++) {
        buf *b;
        assert_int_equal(buf_new(&b), KV_OK);
        for (int op = 0; op < 2000; op++) {
            ref_entry *e = &ref[rnd() % KEYS];
            int del = rnd() % 4 == 0;
            char val[64];
            uint32_t tag = (uint32_t)rnd();
            size_t len = value_for(e->key, tag, val);
            assert_int_equal(buf_put(b, e->key, ++seq, del, val, len), KV_OK);
            e->present = !del;
            e->tag = tag;
            e->len = (uint32_t)len;
        }
        /* Writes past max_seq must not reach the run. */
        assert_int_equal(buf_put(b, ref[5].key, seq + 1, 1, NULL, 0), KV_OK);
        run *next;
        assert_int_equal(run_merge(base, b, seq, &next), KV_OK);
        if (base->nsegs < 8) {
            /* Few segments: the old ones are shared, the fold adds one. */
            assert_int_equal(next->nsegs, base->nsegs + 1);
            for (uint32_t s = 0; s < base->nsegs; s++)
                assert_ptr_equal(next->segs[s], base->segs[s]);
        } else {
            /* Eight heap segments: every value is rewritten into one, in
             * key order, with no dead bytes. */
            assert_int_equal(next->nsegs, 1);
            assert_int_equal(next->segs[0]->len, next->value_bytes);
            for (uint64_t i = 1; i < next->n; i++)
                assert_int_equal(next->vrefs[i].off, next->vrefs[i - 1].off + next->vrefs[i - 1].len);
        }
        assert_true(next->nsegs <= 8);
        run_unref(base);
        buf_free(b);
        base = next;
        check_run_against(base, ref, KEYS);
    }
    run *compacted;
    assert_int_equal(run_compact(base, &compacted), KV_OK);
    assert_int_equal(compacted->nsegs, 1);
    assert_int_equal(compacted->value_bytes, base->value_bytes);
    run_unref(base);
    check_run_against(compacted, ref, KEYS);
    run_unref(compacted);
    free(ref);
}

static void test_lower_bound_and_zero_length(void **state)
{
    (void)state;
    run *base, *r;
    buf *b;
    assert_int_equal(run_new_empty(&base), KV_OK);
    assert_int_equal(run_lower_bound(base, 42), 0);
    assert_int_equal(buf_new(&b), KV_OK);
    for (uint64_t k = 10; k <= 1000; k += 10)
        assert_int_equal(buf_put(b, k, k, 0, NULL, 0), KV_OK);
    assert_int_equal(run_merge(base, b, UINT64_MAX, &r), KV_OK);
    assert_int_equal(r->n, 100);
    assert_int_equal(r->value_bytes, 0);
    assert_int_equal(run_lower_bound(r, 0), 0);
    assert_int_equal(run_lower_bound(r, 10), 0);
    assert_int_equal(run_lower_bound(r, 11), 1);
    assert_int_equal(run_lower_bound(r, 1000), 99);
    assert_int_equal(run_lower_bound(r, 1001), 100);
    assert_int_equal(run_lower_bound(r, UINT64_MAX), 100);
    const void *val = NULL;
    size_t len = 99, probed = 0;
    int fb = 0;
    assert_int_equal(run_get(r, 500, &val, &len, &probed, &fb), KV_OK);
    assert_int_equal(len, 0);
    assert_non_null(val);
    assert_int_equal(run_get(r, 505, &val, &len, &probed, &fb), KV_NOTFOUND);
    /* All values empty: a fixed run of length 0, keys only. */
    assert_non_null(r->fixed_values);
    assert_int_equal(r->fixed_len, 0);
    assert_null(r->vrefs);
    assert_true(run_memory(r) >= 100 * sizeof(uint64_t));
    buf_free(b);
    run_unref(base);
    run_unref(r);
}

/* Fold one round of puts (and a few deletes) of len-byte values into
 * *base; the reference follows. */
static void fold_round(run **base, ref_entry *ref, size_t nref, size_t len, uint64_t *seq)
{
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    for (int op = 0; op < 500; op++) {
        ref_entry *e = &ref[rnd() % nref];
        int del = rnd() % 8 == 0;
        char val[256];
        uint32_t tag = (uint32_t)rnd();
        value_fill(e->key, tag, len, val);
        assert_int_equal(buf_put(b, e->key, ++*seq, del, val, len), KV_OK);
        e->present = !del;
        e->tag = tag;
        e->len = (uint32_t)len;
    }
    run *next;
    assert_int_equal(run_merge(*base, b, *seq, &next), KV_OK);
    buf_free(b);
    run_unref(*base);
    *base = next;
    check_run_against(next, ref, nref);
}

/* Every value of one length: a fixed run with no references. */
static void assert_fixed(const run *r, uint32_t len)
{
    assert_non_null(r->fixed_values);
    assert_int_equal(r->fixed_len, len);
    assert_null(r->vrefs);
    assert_int_equal(r->nsegs, 1);
    assert_int_equal(r->segs[0]->len, r->n * len);
    assert_int_equal(r->value_bytes, r->n * len);
    assert_true(run_memory(r) < r->n * (sizeof(uint64_t) + sizeof(run_vref)) + r->n * len);
}

static void test_fixed_runs(void **state)
{
    (void)state;
    enum { KEYS = 2000 };
    ref_entry *ref = calloc(KEYS, sizeof *ref);
    for (size_t i = 0; i < KEYS; i++)
        ref[i].key = rnd();
    run *base;
    uint64_t seq = 0;
    assert_int_equal(run_new_empty(&base), KV_OK);
    for (int round = 0; round < 3; round++) {
        fold_round(&base, ref, KEYS, 16, &seq);
        assert_fixed(base, 16);
    }
    /* Overwriting every live key with 7-byte values, in two folds: mixed
     * lengths in between (a run with references, reading the fixed base's
     * values in place), one length again after. */
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    for (size_t i = 0; i < KEYS / 2; i++) {
        char val[8];
        value_fill(ref[i].key, 1, 7, val);
        assert_int_equal(buf_put(b, ref[i].key, ++seq, !ref[i].present, val, 7), KV_OK);
        ref[i].tag = 1;
        ref[i].len = 7;
    }
    run *mixed;
    assert_int_equal(run_merge(base, b, seq, &mixed), KV_OK);
    buf_free(b);
    assert_null(mixed->fixed_values);
    assert_non_null(mixed->vrefs);
    assert_ptr_equal(mixed->segs[0], base->segs[0]); /* shared, not copied */
    run_unref(base);
    check_run_against(mixed, ref, KEYS);
    assert_int_equal(buf_new(&b), KV_OK);
    for (size_t i = KEYS / 2; i < KEYS; i++) {
        char val[8];
        value_fill(ref[i].key, 1, 7, val);
        assert_int_equal(buf_put(b, ref[i].key, ++seq, !ref[i].present, val, 7), KV_OK);
        ref[i].tag = 1;
        ref[i].len = 7;
    }
    assert_int_equal(run_merge(mixed, b, seq, &base), KV_OK);
    buf_free(b);
    run_unref(mixed);
    check_run_against(base, ref, KEYS);
    assert_fixed(base, 7);

    /* Compaction keeps a fixed run fixed. */
    run *compacted;
    assert_int_equal(run_compact(base, &compacted), KV_OK);
    assert_fixed(compacted, 7);
    check_run_against(compacted, ref, KEYS);
    run_unref(compacted);

    /* Long values of one length keep references: a fold would copy them
     * all. */
    for (size_t i = 0; i < KEYS; i++)
        ref[i].present = 0;
    run_unref(base);
    assert_int_equal(run_new_empty(&base), KV_OK);
    fold_round(&base, ref, KEYS, 200, &seq);
    assert_null(base->fixed_values);
    assert_non_null(base->vrefs);
    run_unref(base);
    free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_model),
        cmocka_unit_test(test_fixed_runs),
        cmocka_unit_test(test_lower_bound_and_zero_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
