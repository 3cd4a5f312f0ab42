/* test_rmi.c — the learned index: exact answers on many distributions, the
 * serialised form (known bytes, round trip) and untrusted input. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kyro.h"
#include "rmi.h"
#include "testutil.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unif(void) /* (0, 1) */
{
    return ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
}

static double gauss(void)
{
    return sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif());
}

static uint64_t from_double(double x)
{
    if (!(x > 0))
        return 0;
    if (x >= 18446744073709549568.0)
        return UINT64_MAX;
    return (uint64_t)x;
}

static size_t ref_lower_bound(const uint64_t *keys, size_t n, uint64_t key)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t sort_unique(uint64_t *k, size_t n)
{
    qsort(k, n, sizeof *k, tu_cmp_u64);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || k[u - 1] != k[i])
            k[u++] = k[i];
    return u;
}

/* ---- Distributions ---------------------------------------------------- */

enum {
    D_UNIFORM_DENSE,
    D_UNIFORM_SPARSE,
    D_LOGNORMAL,
    D_NORMAL,
    D_CLUSTERED,
    D_SEQ_GAPS,
    D_HEAVY_TAIL,
    D_COUNT
};
static const char *const dist_name[D_COUNT] = { "uniform-dense", "uniform-sparse", "lognormal",
                                                "normal",        "clustered",      "seq-gaps",
                                                "heavy-tail" };

/* n keys (fewer after removing duplicates) of distribution d, always with
 * 0 and UINT64_MAX among them; *n is updated. */
static uint64_t *gen_keys(int d, size_t *n)
{
    size_t m = *n;
    uint64_t *k = malloc((m + 2) * sizeof *k);
    assert_non_null(k);
    uint64_t run = 1000;
    for (size_t i = 0; i < m; i++) {
        switch (d) {
        case D_UNIFORM_DENSE:
            k[i] = rnd() % (2 * (uint64_t)m);
            break;
        case D_UNIFORM_SPARSE:
            k[i] = rnd();
            break;
        case D_LOGNORMAL:
            k[i] = from_double(exp(2.0 * gauss()) * 1e9);
            break;
        case D_NORMAL:
            k[i] = from_double(9.2e18 + gauss() * 1e17);
            break;
        case D_CLUSTERED: /* 50 tight clusters spread over the key space */
            k[i] = (rnd() % 50) * (UINT64_MAX / 50) + rnd() % 100000;
            break;
        case D_SEQ_GAPS: /* runs of consecutive keys, random gaps between */
            run += (rnd() % 20 == 0) ? 1 + rnd() % 1000000 : 1;
            k[i] = run;
            break;
        default: /* Pareto(1.1) plus outliers near the top */
            k[i] = (i % 997 == 0) ? UINT64_MAX - rnd() % 1000000
                                  : from_double(1e6 / pow(unif(), 1 / 1.1));
            break;
        }
    }
    k[m] = 0;
    k[m + 1] = UINT64_MAX;
    *n = sort_unique(k, m + 2);
    return k;
}

/* ---- Checks ----------------------------------------------------------- */

/* rmi_find(key) is want (a position or SIZE_MAX), reporting fallback as
 * want_fb says (-1: either); the side array is the keys themselves. */
static void check_find(const rmi *m, const uint64_t *keys, uint64_t key, size_t want, int want_fb)
{
    size_t probed = 0;
    int fb = -1;
    size_t got = rmi_find(m, keys, key, keys, sizeof *keys, &probed, &fb);
    if (got != want || (want_fb >= 0 && fb != want_fb) || (fb != 0 && fb != 1))
        fail_msg("rmi_find %llu: got %zu want %zu fallback %d", (unsigned long long)key, got, want,
                 fb);
}

/* key at its lower bound (called "absent", though 0 and UINT64_MAX may be
 * keys) without a fallback; rmi_find agrees. */
static void check_absent(const rmi *m, const uint64_t *keys, size_t n, uint64_t key)
{
    size_t probed = 0;
    int fb = -1;
    size_t got = rmi_lower_bound(m, keys, key, &probed, &fb);
    size_t want = ref_lower_bound(keys, n, key);
    check_find(m, keys, key, want < n && keys[want] == key ? want : SIZE_MAX, 0);
    if (got != want || fb != 0)
        fail_msg("key %llu: got %zu want %zu fallback %d", (unsigned long long)key, got, want, fb);
    if (probed > rmi_max_error(m))
        fail_msg("key %llu: probed %zu > max error %llu", (unsigned long long)key, probed,
                 (unsigned long long)rmi_max_error(m));
}

/* rmi_find_group on groups of 1 to RMI_GROUP keys (every key in order, and
 * random keys, neighbours and repeats) answers as rmi_find does key by
 * key, with the same window widths and fallbacks in total. The side array
 * is the keys themselves, read at 8 and at 24 bytes a position. */
static void check_groups(const rmi *m, const uint64_t *keys, size_t n)
{
    uint64_t q[RMI_GROUP];
    size_t pos[RMI_GROUP];
    size_t total = n + 4000;
    for (size_t at = 0; at < total;) {
        size_t cnt = 1 + rnd() % RMI_GROUP;
        for (size_t i = 0; i < cnt; i++) {
            size_t t = at + i;
            if (t < n)
                q[i] = keys[t];
            else if (i && rnd() % 8 == 0)
                q[i] = q[rnd() % i];
            else if (n && rnd() % 2)
                q[i] = keys[rnd() % n] + rnd() % 3 - 1;
            else
                q[i] = rnd();
        }
        size_t stride = (at / RMI_GROUP) % 2 ? 3 * sizeof *keys : sizeof *keys;
        size_t fallbacks = SIZE_MAX, want_probed = 0, want_fallbacks = 0;
        size_t probed = rmi_find_group(m, keys, cnt, q, pos, keys, stride, &fallbacks);
        for (size_t i = 0; i < cnt; i++) {
            size_t w;
            int fb;
            size_t want = rmi_find(m, keys, q[i], keys, stride, &w, &fb);
            want_probed += w;
            want_fallbacks += (size_t)fb;
            if (pos[i] != want)
                fail_msg("rmi_find_group entry %zu of %zu, key %llu: got %zu, rmi_find %zu", i,
                         cnt, (unsigned long long)q[i], pos[i], want);
        }
        if (probed != want_probed || fallbacks != want_fallbacks)
            fail_msg("rmi_find_group: probed %zu fallbacks %zu, rmi_find %zu and %zu", probed,
                     fallbacks, want_probed, want_fallbacks);
        at += cnt;
    }
}

/* Every key at its index, every neighbour of every key and random keys at
 * their lower bound, all without a fallback and within max_error. */
static void check_model(const rmi *m, const uint64_t *keys, size_t n)
{
    assert_int_equal(rmi_key_count(m), n);
    assert_true(rmi_leaf_count(m) >= 1);
    assert_true(rmi_memory_bytes(m) > 0);
    for (size_t i = 0; i < n; i++) {
        size_t probed = 0;
        int fb = -1;
        size_t got = rmi_lower_bound(m, keys, keys[i], &probed, &fb);
        if (got != i || fb != 0)
            fail_msg("present key %llu: got %zu want %zu fallback %d", (unsigned long long)keys[i],
                     got, i, fb);
        if (probed < 1 || probed > rmi_max_error(m))
            fail_msg("present key at %zu: probed %zu, max error %llu", i, probed,
                     (unsigned long long)rmi_max_error(m));
        check_find(m, keys, keys[i], i, 0);
        if (keys[i] > 0 && (i == 0 || keys[i - 1] != keys[i] - 1))
            check_absent(m, keys, n, keys[i] - 1);
        if (keys[i] < UINT64_MAX && (i + 1 == n || keys[i + 1] != keys[i] + 1))
            check_absent(m, keys, n, keys[i] + 1);
        if (i + 1 < n && keys[i + 1] - keys[i] > 2)
            check_absent(m, keys, n, keys[i] + (keys[i + 1] - keys[i]) / 2);
    }
    check_absent(m, keys, n, 0);
    check_absent(m, keys, n, UINT64_MAX);
    for (int t = 0; t < 20000; t++)
        check_absent(m, keys, n, rnd());
    if (n > 0)
        for (int t = 0; t < 20000; t++) /* near the data */
            check_absent(m, keys, n, keys[rnd() % n] + rnd() % 1024 - 512);
    check_groups(m, keys, n);
}

/* Lookups that must be right, fallbacks allowed (a model that may be wrong). */
static void check_answers(const rmi *m, const uint64_t *keys, size_t n, int queries)
{
    for (size_t i = 0; i < n; i++) {
        if (rmi_lower_bound(m, keys, keys[i], NULL, NULL) != i)
            fail_msg("present key at %zu answered wrongly", i);
        check_find(m, keys, keys[i], i, -1);
    }
    for (int t = 0; t < queries; t++) {
        uint64_t key = (t & 1) && n ? keys[rnd() % n] + 1 : rnd();
        if (t == 0)
            key = 0;
        if (t == 1)
            key = UINT64_MAX;
        int fb = -1;
        size_t want = ref_lower_bound(keys, n, key);
        if (rmi_lower_bound(m, keys, key, NULL, &fb) != want)
            fail_msg("key %llu answered wrongly", (unsigned long long)key);
        assert_true(fb == 0 || fb == 1);
        check_find(m, keys, key, want < n && keys[want] == key ? want : SIZE_MAX, -1);
    }
    check_groups(m, keys, n);
}

static uint8_t *serialize(const rmi *m, size_t *len)
{
    *len = rmi_serialized_size(m);
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    rmi_serialize(m, b);
    return b;
}

/* Deserialise, check it answers like the original, re-serialise identically. */
static void check_round_trip(const rmi *m, const uint64_t *keys, size_t n)
{
    size_t len, len2;
    uint8_t *b = serialize(m, &len);
    rmi *m2 = NULL;
    assert_int_equal(rmi_deserialize(b, len, n, &m2), KV_OK);
    assert_non_null(m2);
    assert_int_equal(rmi_leaf_count(m2), rmi_leaf_count(m));
    assert_int_equal(rmi_max_error(m2), rmi_max_error(m));
    uint8_t *b2 = serialize(m2, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(b, b2, len);
    for (size_t i = 0; i < n; i += 1 + n / 5000) {
        size_t p1, p2;
        int f2 = -1;
        assert_int_equal(rmi_lower_bound(m2, keys, keys[i], &p2, &f2),
                         rmi_lower_bound(m, keys, keys[i], &p1, NULL));
        assert_int_equal(p1, p2);
        assert_int_equal(f2, 0);
    }
    for (int t = 0; t < 5000; t++) {
        uint64_t key = rnd();
        assert_int_equal(rmi_lower_bound(m2, keys, key, NULL, NULL),
                         rmi_lower_bound(m, keys, key, NULL, NULL));
    }
    /* a model for another n is refused */
    rmi *m3 = (rmi *)1;
    assert_int_equal(rmi_deserialize(b, len, n + 1, &m3), KV_ECORRUPT);
    assert_null(m3);
    rmi_free(m2);
    free(b);
    free(b2);
}

/* ---- Tests ------------------------------------------------------------ */

static void test_rmi_distributions(void **state)
{
    (void)state;
    for (int d = 0; d < D_COUNT; d++) {
        size_t n = 200000;
        uint64_t *keys = gen_keys(d, &n);
        rmi *m = NULL;
        assert_int_equal(rmi_build(keys, n, &m), KV_OK);
        assert_non_null(m);
        /* L adapts to n: between n/512 and n/16 leaves; the whole model
         * stays within 2 % of the key array */
        assert_true(rmi_leaf_count(m) >= n / 512 && rmi_leaf_count(m) <= n / 16);
        if (rmi_memory_bytes(m) > n * sizeof(uint64_t) / 50)
            fail_msg("%s: model %zu bytes for %zu keys", dist_name[d], rmi_memory_bytes(m), n);
        check_model(m, keys, n);
        check_round_trip(m, keys, n);
        print_message("  %-15s n=%zu leaves=%zu max_error=%llu\n", dist_name[d], n,
                      rmi_leaf_count(m), (unsigned long long)rmi_max_error(m));
        rmi_free(m);
        free(keys);
    }
}

/* A good model on smooth data: windows stay small (catches a model that is
 * correct only because its windows cover everything). */
static void test_rmi_window_quality(void **state)
{
    (void)state;
    const int dists[] = { D_UNIFORM_SPARSE, D_LOGNORMAL, D_NORMAL, D_CLUSTERED };
    for (size_t t = 0; t < sizeof dists / sizeof dists[0]; t++) {
        size_t n = 200000;
        uint64_t *keys = gen_keys(dists[t], &n);
        rmi *m = NULL;
        assert_int_equal(rmi_build(keys, n, &m), KV_OK);
        double sum = 0;
        for (size_t i = 0; i < n; i++) {
            size_t probed;
            rmi_lower_bound(m, keys, keys[i], &probed, NULL);
            sum += (double)probed;
        }
        if (sum / (double)n > 64)
            fail_msg("%s: average window %.1f", dist_name[dists[t]], sum / (double)n);
        if (dists[t] == D_UNIFORM_SPARSE && rmi_max_error(m) > 128)
            fail_msg("uniform: max error %llu", (unsigned long long)rmi_max_error(m));
        rmi_free(m);
        free(keys);
    }
}

/* n = 0..3 with every combination of extreme keys, then small n. */
static void test_rmi_tiny(void **state)
{
    (void)state;
    static const uint64_t sets[][3] = {
        { 0, 0, 0 },          { UINT64_MAX, 0, 0 },       { 5, 0, 0 },
        { 0, UINT64_MAX, 0 }, { 0, 1, 0 },                { UINT64_MAX - 1, UINT64_MAX, 0 },
        { 0, 1, 2 },          { 0, 1ull << 63, UINT64_MAX }, { 7, 100, UINT64_MAX },
    };
    static const size_t sizes[] = { 1, 1, 1, 2, 2, 2, 3, 3, 3 };
    rmi *m = NULL;
    /* n = 0: everything has lower bound 0 */
    assert_int_equal(rmi_build(NULL, 0, &m), KV_OK);
    assert_int_equal(rmi_key_count(m), 0);
    assert_int_equal(rmi_max_error(m), 0);
    uint64_t dummy = 0;
    for (int t = 0; t < 100; t++) {
        int fb = -1;
        assert_int_equal(rmi_lower_bound(m, &dummy, t < 2 ? t * UINT64_MAX : rnd(), NULL, &fb), 0);
        assert_int_equal(fb, 0);
    }
    check_round_trip(m, &dummy, 0);
    rmi_free(m);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        uint64_t keys[3];
        memcpy(keys, sets[s], sizeof keys);
        assert_int_equal(rmi_build(keys, sizes[s], &m), KV_OK);
        check_model(m, keys, sizes[s]);
        check_round_trip(m, keys, sizes[s]);
        rmi_free(m);
    }
    for (size_t n = 4; n < 300; n += 1 + n / 8) {
        for (int d = 0; d < D_COUNT; d++) {
            size_t k = n;
            uint64_t *keys = gen_keys(d, &k);
            assert_int_equal(rmi_build(keys, k, &m), KV_OK);
            check_model(m, keys, k);
            check_round_trip(m, keys, k);
            rmi_free(m);
            free(keys);
        }
    }
    rmi_free(NULL);
}

/* Sequential keys 0..n-1 and keys packed against UINT64_MAX: exact linear
 * data, where the model must be (nearly) perfect, and no overflow at the top. */
static void test_rmi_edges_of_key_space(void **state)
{
    (void)state;
    const size_t n = 100000;
    uint64_t *keys = malloc(n * sizeof *keys);
    assert_non_null(keys);
    rmi *m = NULL;
    for (size_t i = 0; i < n; i++)
        keys[i] = i;
    assert_int_equal(rmi_build(keys, n, &m), KV_OK);
    check_model(m, keys, n);
    assert_true(rmi_max_error(m) <= 4);
    rmi_free(m);
    for (size_t i = 0; i < n; i++)
        keys[i] = UINT64_MAX - (n - 1 - i) * 3;
    assert_int_equal(rmi_build(keys, n, &m), KV_OK);
    check_model(m, keys, n);
    assert_true(rmi_max_error(m) <= 4);
    rmi_free(m);
    /* two far-apart dense blocks: half the key space is empty */
    for (size_t i = 0; i < n; i++)
        keys[i] = i < n / 2 ? i : UINT64_MAX - (n - 1 - i);
    assert_int_equal(rmi_build(keys, n, &m), KV_OK);
    check_model(m, keys, n);
    rmi_free(m);
    free(keys);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* The layout documented in rmi.c, byte for byte. */
static void test_rmi_known_bytes(void **state)
{
    (void)state;
    /* keys 10, 20, 30: one leaf, least squares slope 0.1 (held as a float),
     * offset 0, exact */
    const uint64_t keys[3] = { 10, 20, 30 };
    static const uint8_t want[88] = {
        0x52, 0x4d, 0x49, 0x31, 0x01, 0x00, 0x00, 0x00,             /* magic, version */
        0x03, 0, 0, 0, 0, 0, 0, 0,                                  /* n = 3 */
        0x01, 0, 0, 0, 0x00, 0, 0, 0,                               /* L = 1, linear */
        0x0a, 0, 0, 0, 0, 0, 0, 0,                                  /* kmin = 10 */
        0, 0, 0, 0, 0, 0, 0, 0,                                     /* root slope 0.0 */
        0, 0, 0, 0, 0, 0, 0, 0,                                     /* root offset 0 */
        0x0a, 0, 0, 0, 0, 0, 0, 0,                                  /* leaf kbase 10 */
        0, 0, 0, 0xa0, 0x99, 0x99, 0xb9, 0x3f,                      /* slope (float)0.1 */
        0, 0, 0, 0, 0, 0, 0, 0,                                     /* offset 0 */
        0, 0, 0, 0, 0, 0, 0, 0,                                     /* start 0 */
        0, 0, 0, 0, 0, 0, 0, 0,                                     /* err_lo 0, err_hi 0 */
    };
    rmi *m = NULL;
    assert_int_equal(rmi_build(keys, 3, &m), KV_OK);
    assert_int_equal(rmi_serialized_size(m), sizeof want);
    uint8_t got[sizeof want];
    rmi_serialize(m, got);
    assert_memory_equal(got, want, sizeof want);
    assert_int_equal(rmi_max_error(m), 1);
    rmi_free(m);

    /* A hand-made three-leaf model for keys 100..107 and 1000..1007:
     * x = (key - 100) >> 1, root = floor(x / 200), so keys 500..899 go to
     * the empty middle leaf; each leaf is exact (slope 1, errors 0). */
    uint64_t k2[16];
    for (int i = 0; i < 8; i++) {
        k2[i] = 100 + (uint64_t)i;
        k2[8 + i] = 1000 + (uint64_t)i;
    }
    uint8_t b[48 + 3 * 40];
    memset(b, 0, sizeof b);
    put32(b + 0, 0x31494d52u);
    put32(b + 4, 1);
    put64(b + 8, 16);
    put32(b + 16, 3);
    put32(b + 20, 0);
    put64(b + 24, 100);
    put64(b + 32, dbits(1.0 / 200));
    put64(b + 40, 0);
    static const uint64_t kbase[3] = { 100, 0, 1000 }, start[3] = { 0, 8, 8 };
    for (int j = 0; j < 3; j++) {
        uint8_t *l = b + 48 + 40 * j;
        put64(l + 0, kbase[j]);
        put64(l + 8, dbits(j == 1 ? 0.0 : 1.0));
        put64(l + 16, 0);
        put64(l + 24, start[j]);
        put32(l + 32, 0);
        put32(l + 36, 0);
    }
    assert_int_equal(rmi_deserialize(b, sizeof b, 16, &m), KV_OK);
    assert_int_equal(rmi_leaf_count(m), 3);
    assert_int_equal(rmi_max_error(m), 1);
    for (size_t i = 0; i < 16; i++) {
        size_t probed;
        int fb;
        assert_int_equal(rmi_lower_bound(m, k2, k2[i], &probed, &fb), i);
        assert_int_equal(fb, 0);
        assert_int_equal(probed, 1);
    }
    static const struct {
        uint64_t key;
        size_t want, probed;
    } q[] = {
        { 0, 0, 1 },      { 99, 0, 1 },    { 300, 8, 1 },   /* leaf 0: window [7, 8) */
        { 500, 8, 0 },    { 899, 8, 0 },   /* empty leaf: the single answer 8 */
        { 900, 8, 1 },    { 1008, 16, 1 }, { UINT64_MAX, 16, 1 },
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        size_t probed;
        int fb;
        assert_int_equal(rmi_lower_bound(m, k2, q[i].key, &probed, &fb), q[i].want);
        assert_int_equal(fb, 0);
        assert_int_equal(probed, q[i].probed);
    }
    rmi_free(m);
}

/* Specific damage: each must be refused. */
static void test_rmi_corrupt_fields(void **state)
{
    (void)state;
    size_t n = 5000, len;
    uint64_t *keys = gen_keys(D_LOGNORMAL, &n);
    rmi *m = NULL, *bad = NULL;
    assert_int_equal(rmi_build(keys, n, &m), KV_OK);
    assert_true(rmi_leaf_count(m) >= 3);
    uint8_t *good = serialize(m, &len);
    uint8_t *b = malloc(len + 40);
    assert_non_null(b);
    size_t L = rmi_leaf_count(m);
#define REFUSED(edit)                                                           \
    do {                                                                        \
        memcpy(b, good, len);                                                   \
        edit;                                                                   \
        bad = (rmi *)1;                                                         \
        assert_int_equal(rmi_deserialize(b, len, n, &bad), KV_ECORRUPT);        \
        assert_null(bad);                                                       \
    } while (0)
    REFUSED(b[0] ^= 1);                                  /* magic */
    REFUSED(put32(b + 4, 2));                            /* version */
    REFUSED(put64(b + 8, n - 1));                        /* n */
    REFUSED(put32(b + 16, 0));                           /* L = 0 */
    REFUSED(put32(b + 16, (uint32_t)L + 1));             /* L beyond the bytes */
    REFUSED(put32(b + 16, UINT32_MAX));                  /* L huge */
    REFUSED(put32(b + 20, 3));                           /* root kind */
    REFUSED(put64(b + 32, dbits(NAN)));                  /* root slope */
    REFUSED(put64(b + 32, dbits(-1.0)));
    REFUSED(put64(b + 32, dbits(INFINITY)));
    REFUSED(put64(b + 40, (uint64_t)INT64_MIN));         /* root offset */
    REFUSED(put64(b + 40, (uint64_t)1 << 62));
    REFUSED(put64(b + 48 + 8, dbits(NAN)));              /* leaf slope */
    REFUSED(put64(b + 48 + 40 + 8, dbits(-INFINITY)));
    REFUSED(put64(b + 48 + 40 + 8, dbits(-0.5)));
    REFUSED(put64(b + 48 + 16, (uint64_t)1 << 63));      /* leaf offset */
    REFUSED(put64(b + 48 + 24, 1));                      /* first start != 0 */
    REFUSED(put64(b + 48 + 40 * (L - 1) + 24, n + 1));   /* start beyond n */
    REFUSED(put64(b + 48 + 40 * (L - 1) + 24, UINT64_MAX));
    REFUSED(put64(b + 48 + 40 * 2 + 24, 0);             /* starts decreasing */
            put64(b + 48 + 40 * 1 + 24, n));
#undef REFUSED
    /* wrong lengths: every truncation, one byte too many */
    for (size_t l = 0; l < len; l++) {
        bad = (rmi *)1;
        assert_int_equal(rmi_deserialize(good, l, n, &bad), KV_ECORRUPT);
        assert_null(bad);
    }
    memcpy(b, good, 48); /* a header alone claiming no leaves */
    put32(b + 16, 0);
    assert_int_equal(rmi_deserialize(b, 48, n, &bad), KV_ECORRUPT);
    memcpy(b, good, len);
    b[len] = 0;
    assert_int_equal(rmi_deserialize(b, len + 1, n, &bad), KV_ECORRUPT);
    assert_int_equal(rmi_deserialize(NULL, 0, n, &bad), KV_ECORRUPT);
    free(b);
    free(good);
    rmi_free(m);
    free(keys);
}

/* Valid-looking but wrong models: accepted, and the answers stay right
 * because a missed window widens (and reports the fallback). */
static void test_rmi_wrong_model_falls_back(void **state)
{
    (void)state;
    size_t n = 20000, len;
    uint64_t *keys = gen_keys(D_UNIFORM_SPARSE, &n);
    rmi *m = NULL, *w = NULL;
    assert_int_equal(rmi_build(keys, n, &m), KV_OK);
    uint8_t *b = serialize(m, &len);
    size_t L = rmi_leaf_count(m);
    for (int variant = 0; variant < 4; variant++) {
        uint8_t *c = malloc(len);
        assert_non_null(c);
        memcpy(c, b, len);
        for (size_t j = 0; j < L; j++) {
            uint8_t *l = c + 48 + 40 * j;
            if (variant == 0) { /* windows of width one */
                put32(l + 32, 0);
                put32(l + 36, 0);
            } else if (variant == 1) { /* every leaf says "position start" */
                put64(l + 8, dbits(0.0));
                put64(l + 16, 0);
                put32(l + 32, 0);
                put32(l + 36, 0);
            } else if (variant == 2 && j > 0) { /* leaves cover the wrong keys */
                put64(l + 24, (uint64_t)(n * j / L / 2));
            }
        }
        if (variant == 3) { /* the root sends everything to one leaf */
            put64(c + 32, dbits(0.0));
            put64(c + 40, (uint64_t)(L / 2));
        }
        assert_int_equal(rmi_deserialize(c, len, n, &w), KV_OK);
        size_t fallbacks = 0, find_fallbacks = 0;
        for (size_t i = 0; i < n; i++) {
            int fb = -1;
            assert_int_equal(rmi_lower_bound(w, keys, keys[i], NULL, &fb), i);
            fallbacks += (size_t)fb;
            size_t probed;
            assert_int_equal(rmi_find(w, keys, keys[i], keys, sizeof *keys, &probed, &fb), i);
            find_fallbacks += (size_t)fb;
        }
        assert_true(fallbacks > 0);
        /* a found key needs no widening, so rmi_find may fall back less */
        assert_true(find_fallbacks <= fallbacks);
        check_answers(w, keys, n, 20000);
        rmi_free(w);
        free(c);
    }
    free(b);
    rmi_free(m);
    free(keys);
}

/* Random damage: refused or correct, never a crash or a wrong answer. */
static void test_rmi_fuzz_bytes(void **state)
{
    (void)state;
    size_t n = 2000, len;
    uint64_t *keys = gen_keys(D_HEAVY_TAIL, &n);
    rmi *m = NULL, *f = NULL;
    assert_int_equal(rmi_build(keys, n, &m), KV_OK);
    uint8_t *good = serialize(m, &len);
    uint8_t *b = malloc(len);
    assert_non_null(b);
    size_t accepted = 0, refused = 0;
    /* one random bit in every byte; every bit of the header */
    for (size_t pos = 0; pos < len; pos++) {
        for (int bit = 0; bit < 8; bit++) {
            if (pos >= 48 && bit != (int)(rnd() % 8))
                continue;
            memcpy(b, good, len);
            b[pos] ^= (uint8_t)(1u << bit);
            int rc = rmi_deserialize(b, len, n, &f);
            if (rc == KV_OK) {
                accepted++;
                check_answers(f, keys, n, 200);
                rmi_free(f);
            } else {
                assert_int_equal(rc, KV_ECORRUPT);
                assert_null(f);
                refused++;
            }
        }
    }
    /* garbage after a valid header, and garbage everywhere */
    for (int t = 0; t < 2000; t++) {
        memcpy(b, good, len);
        size_t from = t & 1 ? 48 : 0;
        for (size_t i = from; i < len; i++)
            if (rnd() % 4 == 0)
                b[i] = (uint8_t)rnd();
        int rc = rmi_deserialize(b, len, n, &f);
        if (rc == KV_OK) {
            accepted++;
            check_answers(f, keys, n, 200);
            rmi_free(f);
        } else {
            assert_int_equal(rc, KV_ECORRUPT);
            refused++;
        }
    }
    assert_true(accepted > 0 && refused > 0);
    free(b);
    free(good);
    rmi_free(m);
    free(keys);
}

/* Every probe kernel the CPU runs gives the same answers through the model
 * (a table root on clustered data, a fitted root on lognormal data). */
static void test_rmi_kernels_agree(void **state)
{
    (void)state;
    probe_fn fns[3];
    size_t nf = 0;
    fns[nf++] = probe_scalar;
    if (probe_avx2())
        fns[nf++] = probe_avx2();
    if (probe_avx512())
        fns[nf++] = probe_avx512();
    const int dists[] = { D_CLUSTERED, D_LOGNORMAL, D_HEAVY_TAIL };
    for (size_t t = 0; t < sizeof dists / sizeof dists[0]; t++) {
        size_t n = 100000;
        uint64_t *keys = gen_keys(dists[t], &n);
        rmi *m = NULL;
        assert_int_equal(rmi_build(keys, n, &m), KV_OK);
        for (int q = 0; q < 60000; q++) {
            uint64_t key = keys[rnd() % n] + (uint64_t)(q % 3) - 1; /* below, at, above */
            if (q % 7 == 0)
                key = rnd();
            size_t want = ref_lower_bound(keys, n, key);
            for (size_t f = 0; f < nf; f++) {
                int fb = -1;
                size_t got = rmi_lower_bound_with(m, keys, key, fns[f], NULL, &fb);
                if (got != want || fb != 0)
                    fail_msg("%s kernel %zu key %llu: got %zu want %zu fallback %d",
                             dist_name[dists[t]], f, (unsigned long long)key, got, want, fb);
            }
        }
        rmi_free(m);
        free(keys);
    }
}

/* A hand-made table-root model: keys 100..107 and 1000..1007 in four
 * leaves of four (slope 1, exact); two buckets of 512 keys from kmin = 100
 * (shift 9, tbits 1): leaf 1 (first key 104) in bucket 0, leaves 2 and 3
 * (1000, 1004) in bucket 1. */
static void table_model(uint8_t *b, const uint64_t *kbase)
{
    memset(b, 0, 48 + 4 * 40);
    put32(b + 0, 0x31494d52u);
    put32(b + 4, 1);
    put64(b + 8, 16);
    put32(b + 16, 4);
    put32(b + 20, 2);
    put64(b + 24, 100);
    put64(b + 32, dbits(0.0));
    put64(b + 40, 9 | 1 << 8);
    for (int j = 0; j < 4; j++) {
        uint8_t *l = b + 48 + 40 * j;
        put64(l + 0, kbase[j]);
        put64(l + 8, dbits(1.0));
        put64(l + 24, 4 * (uint64_t)j);
    }
}

static void test_rmi_table_root(void **state)
{
    (void)state;
    uint64_t k2[16];
    for (int i = 0; i < 8; i++) {
        k2[i] = 100 + (uint64_t)i;
        k2[8 + i] = 1000 + (uint64_t)i;
    }
    static const uint64_t kbase[4] = { 100, 104, 1000, 1004 };
    uint8_t b[48 + 4 * 40], b2[sizeof b];
    table_model(b, kbase);
    rmi *m = NULL;
    assert_int_equal(rmi_deserialize(b, sizeof b, 16, &m), KV_OK);
    assert_int_equal(rmi_leaf_count(m), 4);
    assert_int_equal(rmi_max_error(m), 1);
    assert_int_equal(rmi_serialized_size(m), sizeof b);
    rmi_serialize(m, b2);
    assert_memory_equal(b, b2, sizeof b);
    static const struct {
        uint64_t key;
        size_t want;
    } q[] = {
        { 0, 0 },       { 103, 3 },  { 104, 4 },  /* below leaf 0, leaf 0, leaf 1 */
        { 500, 8 },     { 611, 8 },  /* leaf 1, past its last key, bucket 0 */
        { 612, 8 },     { 999, 8 },  /* bucket 1, before leaf 2: still leaf 1 */
        { 1003, 11 },   { 1004, 12 }, { 1007, 15 }, { 1008, 16 }, { UINT64_MAX, 16 },
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        size_t probed;
        int fb;
        assert_int_equal(rmi_lower_bound(m, k2, q[i].key, &probed, &fb), q[i].want);
        assert_int_equal(fb, 0);
        assert_int_equal(probed, 1);
    }
    for (size_t i = 0; i < 16; i++)
        assert_int_equal(rmi_lower_bound(m, k2, k2[i], NULL, NULL), i);
    rmi_free(m);

    /* table fields out of range are refused */
    static const uint64_t bad_geometry[] = { 64 | 1 << 8,  /* shift */
                                             9 | 3 << 8,   /* 8 buckets > 4 leaves */
                                             9 | 1 << 17 }; /* unknown bit */
    for (size_t i = 0; i < sizeof bad_geometry / sizeof bad_geometry[0]; i++) {
        table_model(b, kbase);
        put64(b + 40, bad_geometry[i]);
        m = (rmi *)1;
        assert_int_equal(rmi_deserialize(b, sizeof b, 16, &m), KV_ECORRUPT);
        assert_null(m);
    }
    table_model(b, kbase);
    put64(b + 32, dbits(0.5)); /* a table root has no slope */
    assert_int_equal(rmi_deserialize(b, sizeof b, 16, &m), KV_ECORRUPT);

    /* first keys out of order: accepted, searches stay in bounds, answers
     * stay right (through fallbacks) */
    static const uint64_t shuffled[4] = { 100, 1004, 104, 1000 };
    table_model(b, shuffled);
    assert_int_equal(rmi_deserialize(b, sizeof b, 16, &m), KV_OK);
    check_answers(m, k2, 16, 2000);
    rmi_free(m);

    /* built: clustered data gets narrow windows and survives a round trip */
    size_t n = 50000;
    uint64_t *keys = gen_keys(D_CLUSTERED, &n);
    assert_int_equal(rmi_build(keys, n, &m), KV_OK);
    check_model(m, keys, n);
    check_round_trip(m, keys, n);
    assert_true(rmi_max_error(m) <= 512);
    rmi_free(m);
    free(keys);
}

/* Serialised leaves the 24-byte in-memory leaf cannot hold exactly (a slope
 * that is not a float, an offset beyond 2^30, an error beyond 4094) are
 * loaded with the whole leaf as their window: no fallback, right answers. */
static void test_rmi_wide_leaf_fields(void **state)
{
    (void)state;
    const size_t n = 3000;
    uint64_t *keys = malloc(n * sizeof *keys);
    assert_non_null(keys);
    for (size_t i = 0; i < n; i++)
        keys[i] = 8 * i + 5;
    uint8_t b[48 + 40];
    for (int variant = 0; variant < 4; variant++) {
        memset(b, 0, sizeof b);
        put32(b + 0, 0x31494d52u);
        put32(b + 4, 1);
        put64(b + 8, n);
        put32(b + 16, 1);
        put64(b + 24, 5);
        put64(b + 48 + 0, 5);
        put64(b + 48 + 8, dbits(variant == 0 ? 0.1 : 0.125)); /* 0.1 is not a float */
        put64(b + 48 + 16, variant == 1 ? (uint64_t)1 << 40 : 0);
        put32(b + 48 + 32, variant == 2 ? 5000 : 1);
        put32(b + 48 + 36, 1);
        rmi *m = NULL;
        assert_int_equal(rmi_deserialize(b, sizeof b, n, &m), KV_OK);
        assert_int_equal(rmi_max_error(m), variant == 3 ? 3 : n);
        for (size_t i = 0; i < n; i += 7) {
            size_t probed;
            int fb = -1;
            assert_int_equal(rmi_lower_bound(m, keys, keys[i], &probed, &fb), i);
            assert_int_equal(fb, 0);
            assert_int_equal(probed, variant == 3 ? (size_t)(i == 0 || i == n - 1 ? 2 : 3) : n);
            assert_int_equal(rmi_lower_bound(m, keys, keys[i] - 1, NULL, &fb), i);
            assert_int_equal(fb, 0);
        }
        rmi_free(m);
    }
    free(keys);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmi_distributions),
        cmocka_unit_test(test_rmi_window_quality),
        cmocka_unit_test(test_rmi_tiny),
        cmocka_unit_test(test_rmi_edges_of_key_space),
        cmocka_unit_test(test_rmi_known_bytes),
        cmocka_unit_test(test_rmi_corrupt_fields),
        cmocka_unit_test(test_rmi_wrong_model_falls_back),
        cmocka_unit_test(test_rmi_fuzz_bytes),
        cmocka_unit_test(test_rmi_kernels_agree),
        cmocka_unit_test(test_rmi_table_root),
        cmocka_unit_test(test_rmi_wide_leaf_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
