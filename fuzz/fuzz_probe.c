/*
 * fuzz_probe.c — the last-mile probe kernels and the learned index against a
 * plain reference.
 *
 * The input becomes a sorted, duplicate-free key array (dense, sparse, near
 * 2^63 or near UINT64_MAX: where signed-compare tricks in SIMD code break),
 * a window [lo, hi) and query keys. Every kernel this CPU has (scalar, AVX2,
 * AVX-512) must give the reference lower bound in the window; an RMI built on
 * the keys must give the reference lower bound for every key, with no
 * fallback on the keys it was built on; its serialised form must load back
 * and answer the same; and any bytes rmi_deserialize accepts (a raw slice of
 * the input, or the real model with input-chosen bytes flipped) must still
 * give correct answers, one key at a time and in groups (rmi_find_group). The key array is allocated to its exact length so
 * any read past it is caught by AddressSanitizer. Any mismatch aborts.
 *
 * Input: [mode u8][n u16][start u64][lo u16][hi u16][qidx u16][qraw u64]
 *        [dlen u16][dlen bytes of key deltas][nflips u8][nflips x (off u16, xor u8)]
 *        [rest: raw bytes offered to rmi_deserialize].
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kyro.h"
#include "probe.h"
#include "rmi.h"

#define FUZZ_NAME "fuzz_probe"
#include "fuzz.h"

#define MAX_N 2048

typedef struct {
    const uint8_t *p;
    size_t n;
} rd;

static uint64_t take(rd *r, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        uint8_t b = 0;
        if (r->n) {
            b = *r->p++;
            r->n--;
        }
        v |= (uint64_t)b << (8 * i);
    }
    return v;
}

static size_t ref_lb(const uint64_t *keys, size_t lo, size_t hi, uint64_t key)
{
    for (size_t i = lo; i < hi; i++)
        if (keys[i] >= key)
            return i;
    return hi;
}

static void check_kernels(const uint64_t *keys, size_t n, size_t lo, size_t hi, uint64_t key)
{
    (void)n;
    size_t want = ref_lb(keys, lo, hi, key);
    size_t got = probe_scalar(keys, lo, hi, key);
    CHECK(got == want, "probe_scalar [%zu,%zu) key %llx: %zu, want %zu", lo, hi,
          (unsigned long long)key, got, want);
    probe_fn f = probe_avx2();
    if (f) {
        got = f(keys, lo, hi, key);
        CHECK(got == want, "probe_avx2 [%zu,%zu) key %llx: %zu, want %zu", lo, hi,
              (unsigned long long)key, got, want);
    }
    f = probe_avx512();
    if (f) {
        got = f(keys, lo, hi, key);
        CHECK(got == want, "probe_avx512 [%zu,%zu) key %llx: %zu, want %zu", lo, hi,
              (unsigned long long)key, got, want);
    }
    got = probe_best()(keys, lo, hi, key);
    CHECK(got == want, "probe_best (%s) [%zu,%zu) key %llx: %zu, want %zu", probe_best_name(), lo,
          hi, (unsigned long long)key, got, want);
}

/* Lookups through a model: exact answers always; no fallback when strict
 * (for keys the model was built on). */
static void check_model(const rmi *m, const uint64_t *keys, size_t n, uint64_t q, int strict,
                        const char *what)
{
    CHECK(rmi_key_count(m) == n, "%s: rmi_key_count %zu, want %zu", what, rmi_key_count(m), n);
    (void)rmi_leaf_count(m);
    (void)rmi_max_error(m);
    (void)rmi_memory_bytes(m);
    size_t probed;
    int fb;
    for (size_t i = 0; i < n; i++) {
        size_t got = rmi_lower_bound(m, keys, keys[i], &probed, &fb);
        CHECK(got == i, "%s: lower_bound(keys[%zu]=%llx) = %zu", what, i,
              (unsigned long long)keys[i], got);
        CHECK(!strict || !fb, "%s: fallback on built key keys[%zu]=%llx", what, i,
              (unsigned long long)keys[i]);
        if (keys[i] != UINT64_MAX && (i + 1 == n || keys[i + 1] != keys[i] + 1)) {
            got = rmi_lower_bound(m, keys, keys[i] + 1, NULL, NULL);
            CHECK(got == i + 1, "%s: lower_bound(%llx) = %zu, want %zu", what,
                  (unsigned long long)(keys[i] + 1), got, i + 1);
        }
        if (keys[i] != 0 && (i == 0 || keys[i - 1] != keys[i] - 1)) {
            got = rmi_lower_bound(m, keys, keys[i] - 1, NULL, NULL);
            CHECK(got == i, "%s: lower_bound(%llx) = %zu, want %zu", what,
                  (unsigned long long)(keys[i] - 1), got, i);
        }
    }
    uint64_t extra[] = {q, 0, UINT64_MAX, (uint64_t)1 << 63, ((uint64_t)1 << 63) - 1};
    for (size_t j = 0; j < sizeof extra / sizeof extra[0]; j++) {
        size_t want = ref_lb(keys, 0, n, extra[j]);
        size_t got = rmi_lower_bound(m, keys, extra[j], NULL, NULL);
        CHECK(got == want, "%s: lower_bound(%llx) = %zu, want %zu", what,
              (unsigned long long)extra[j], got, want);
    }
    /* The grouped find: every key, its successor and the extras, in groups
     * of 1 + q % RMI_GROUP; each answer is the key's position or SIZE_MAX,
     * and a model built on the keys never falls back. */
    uint64_t group[RMI_GROUP];
    size_t pos[RMI_GROUP], cnt = 0, fallbacks, size = 1 + (size_t)(q % RMI_GROUP);
    size_t total = 2 * n + sizeof extra / sizeof extra[0];
    for (size_t t = 0; t < total; t++) {
        group[cnt++] = t < 2 * n ? keys[t / 2] + (t & 1) : extra[t - 2 * n];
        if (cnt < size && t + 1 < total)
            continue;
        rmi_find_group(m, keys, cnt, group, pos, keys, sizeof *keys, &fallbacks);
        for (size_t i = 0; i < cnt; i++) {
            /* Known without a search for the keys and their successors
             * (keys ascend strictly; UINT64_MAX + 1 wraps to 0). */
            size_t at = t + 1 - cnt + i, lb;
            if (at < 2 * n && !(at & 1))
                lb = at / 2;
            else if (at < 2 * n)
                lb = group[i] == 0 ? 0 : at / 2 + 1;
            else
                lb = ref_lb(keys, 0, n, group[i]);
            size_t want = lb < n && keys[lb] == group[i] ? lb : SIZE_MAX;
            CHECK(pos[i] == want, "%s: find_group(%llx) = %zu, want %zu", what,
                  (unsigned long long)group[i], pos[i], want);
        }
        CHECK(!strict || fallbacks == 0, "%s: find_group fell back %zu times", what, fallbacks);
        cnt = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rd r = {data, size};
    unsigned mode = (unsigned)take(&r, 1);
    size_t n = (size_t)(take(&r, 2) % (MAX_N + 1));
    uint64_t start = take(&r, 8);
    switch (mode & 3) {
    case 0: break;                                              /* anywhere */
    case 1: start = ((uint64_t)1 << 63) - (start & 0xffff); break; /* across the sign bit */
    case 2: start = UINT64_MAX - (start & 0xfffff); break;      /* at the very top */
    case 3: start &= 0xff; break;                               /* from 0 */
    }
    unsigned shift = (mode >> 2) & 63; /* delta scale */
    size_t lo_in = (size_t)take(&r, 2), hi_in = (size_t)take(&r, 2);
    size_t qidx = (size_t)take(&r, 2);
    uint64_t qraw = take(&r, 8);

    /* Deltas: one byte each from the delta section, then a generator
     * seeded by the input. */
    size_t dlen = (size_t)take(&r, 2);
    if (dlen > r.n)
        dlen = r.n;
    rd dr = {r.p, dlen};
    r.p += dlen;
    r.n -= dlen;
    static uint64_t gen[MAX_N];
    uint64_t g = start ^ 0x9e3779b97f4a7c15ull, k = start;
    size_t have = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t d;
        if (dr.n) {
            d = take(&dr, 1);
        } else {
            g ^= g << 13;
            g ^= g >> 7;
            g ^= g << 17;
            d = g & 0xff;
        }
        d = shift < 56 ? (d << shift) : d;
        if (i > 0) {
            if (d == 0)
                d = 1;
            if (k > UINT64_MAX - d)
                break; /* would wrap: stop here */
            k += d;
        }
        gen[have++] = k;
    }
    n = have;
    /* 64-byte aligned like a run's keys, and exactly n long, so ASan
     * catches any read past keys[n-1]. */
    uint64_t *keys = NULL;
    if (posix_memalign((void **)&keys, 64, (n ? n : 1) * sizeof *keys) != 0)
        return 0;
    memcpy(keys, gen, n * sizeof *keys);

    size_t lo = n ? lo_in % (n + 1) : 0;
    size_t hi = lo + (n - lo ? hi_in % (n - lo + 1) : 0);
    uint64_t q;
    switch (qraw & 3) {
    case 0: q = qraw; break;
    case 1: q = n ? keys[qidx % n] : qraw; break;
    case 2: q = n ? keys[qidx % n] + 1 : qraw; break;
    default: q = n ? keys[qidx % n] - 1 : qraw; break;
    }

    /* Kernels: the chosen window and query, every key of a small window and
     * its neighbours, and the empty window. */
    check_kernels(keys, n, lo, hi, q);
    check_kernels(keys, n, lo, lo, q);
    check_kernels(keys, n, 0, n, q);
    if (hi - lo <= 80) {
        for (size_t i = lo; i < hi; i++) {
            check_kernels(keys, n, lo, hi, keys[i]);
            check_kernels(keys, n, lo, hi, keys[i] + 1);
            check_kernels(keys, n, lo, hi, keys[i] - 1);
        }
    }
    check_kernels(keys, n, lo, hi, 0);
    check_kernels(keys, n, lo, hi, UINT64_MAX);

    /* The model built on the keys. */
    rmi *m = NULL;
    int rc = rmi_build(keys, n, &m);
    CHECK(rc == KV_OK || rc == KV_ENOMEM, "rmi_build = %d", rc);
    if (rc == KV_OK) {
        check_model(m, keys, n, q, 1, "built");

        /* Round trip through the serialised form. */
        size_t sz = rmi_serialized_size(m);
        uint8_t *ser = malloc(sz);
        if (ser) {
            rmi_serialize(m, ser);
            rmi *m2 = NULL;
            rc = rmi_deserialize(ser, sz, n, &m2);
            CHECK(rc == KV_OK, "rmi_deserialize of a fresh serialisation = %d", rc);
            check_model(m2, keys, n, q, 1, "reloaded");
            rmi_free(m2);
            /* The model with bytes flipped where the input says. */
            int flips = 0, nflips = (int)take(&r, 1) % 9;
            while (r.n >= 3 && flips < nflips) {
                size_t off = (size_t)take(&r, 2) % sz;
                ser[off] ^= (uint8_t)take(&r, 1);
                flips++;
            }
            if (flips) {
                rc = rmi_deserialize(ser, sz, n, &m2);
                CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_ENOMEM,
                      "rmi_deserialize (flipped) = %d", rc);
                if (rc == KV_OK) {
                    check_model(m2, keys, n, q, 0, "flipped");
                    rmi_free(m2);
                }
            }
            /* Truncated and wrong-n forms must be refused or work. */
            rc = rmi_deserialize(ser, sz ? sz - 1 : 0, n, &m2);
            if (rc == KV_OK)
                rmi_free(m2);
            free(ser);
        }
        rmi_free(m);
    }

    /* Whatever is left of the input, as a model. */
    if (r.n) {
        rmi *m3 = NULL;
        rc = rmi_deserialize(r.p, r.n, n, &m3);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_ENOMEM, "rmi_deserialize (raw) = %d",
              rc);
        if (rc == KV_OK) {
            check_model(m3, keys, n, q, 0, "raw");
            rmi_free(m3);
        }
    }
    free(keys);
    return 0;
}
