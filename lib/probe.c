/*
 * probe.c — the last-mile search: lower bound of a key in a sorted window.
 *
 * Owns the three kernels (scalar, AVX2, AVX-512) and the one-time choice
 * among them. Every kernel returns the first i in [lo, hi) with
 * keys[i] >= key, or hi, and reads nothing outside keys[lo..hi): the window
 * may end exactly at the end of a mapping. Each kernel first narrows the
 * window with branchless halving steps (invariant: the answer lies in
 * [base, base + len]) and then counts the keys < key in what is left, which
 * for a sorted window is the answer's offset. SIMD tails use masked loads,
 * which do not touch the masked-off lanes. The SIMD kernels are compiled with
 * target attributes, so this file needs no -m flags, and only on x86-64.
 */
#include "probe.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PROBE_X86 1
#include <immintrin.h>
#else
#define PROBE_X86 0
#endif

#define PROBE_SCALAR_LINEAR 8 /* scalar: count linearly once len <= this */
#define PROBE_AVX2_LINEAR 16  /* AVX2: four 4-lane vectors */
#define PROBE_AVX512_LINEAR 32 /* AVX-512: four 8-lane vectors */

size_t probe_scalar(const uint64_t *keys, size_t lo, size_t hi, uint64_t key)
{
    if (hi <= lo)
        return hi;
    const uint64_t *base = keys + lo;
    size_t len = hi - lo;
    while (len > PROBE_SCALAR_LINEAR) {
        size_t half = len / 2;
        base = base[half] < key ? base + half : base;
        len -= half;
    }
    size_t c = 0;
    for (size_t i = 0; i < len; i++)
        c += base[i] < key;
    return (size_t)(base - keys) + c;
}

#if PROBE_X86

__attribute__((target("avx2,popcnt")))
static size_t probe_avx2_kernel(const uint64_t *keys, size_t lo, size_t hi, uint64_t key)
{
    if (hi <= lo)
        return hi;
    const uint64_t *base = keys + lo;
    size_t len = hi - lo;
    while (len > PROBE_AVX2_LINEAR) {
        size_t half = len / 2;
        base = base[half] < key ? base + half : base;
        len -= half;
    }
    /* Unsigned a < b  <=>  signed (b ^ MSB) > (a ^ MSB). */
    const __m256i sign = _mm256_set1_epi64x(INT64_MIN);
    const __m256i k = _mm256_xor_si256(_mm256_set1_epi64x((long long)key), sign);
    size_t c = 0, i = 0;
    for (; i + 4 <= len; i += 4) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(base + i));
        __m256i lt = _mm256_cmpgt_epi64(k, _mm256_xor_si256(v, sign));
        c += (size_t)__builtin_popcount((unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(lt)));
    }
    if (i < len) {
        long long rem = (long long)(len - i); /* 1..3 */
        __m256i lanes = _mm256_cmpgt_epi64(_mm256_set1_epi64x(rem), _mm256_set_epi64x(3, 2, 1, 0));
        __m256i v = _mm256_maskload_epi64((const long long *)(const void *)(base + i), lanes);
        __m256i lt = _mm256_cmpgt_epi64(k, _mm256_xor_si256(v, sign));
        lt = _mm256_and_si256(lt, lanes);
        c += (size_t)__builtin_popcount((unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(lt)));
    }
    return (size_t)(base - keys) + c;
}

__attribute__((target("avx512f,popcnt")))
static size_t probe_avx512_kernel(const uint64_t *keys, size_t lo, size_t hi, uint64_t key)
{
    if (hi <= lo)
        return hi;
    const uint64_t *base = keys + lo;
    size_t len = hi - lo;
    while (len > PROBE_AVX512_LINEAR) {
        size_t half = len / 2;
        base = base[half] < key ? base + half : base;
        len -= half;
    }
    const __m512i k = _mm512_set1_epi64((long long)key);
    size_t c = 0, i = 0;
    for (; i + 8 <= len; i += 8) {
        __m512i v = _mm512_loadu_si512((const void *)(base + i));
        c += (size_t)__builtin_popcount((unsigned)_mm512_cmplt_epu64_mask(v, k));
    }
    if (i < len) {
        __mmask8 m = (__mmask8)((1u << (len - i)) - 1u);
        __m512i v = _mm512_maskz_loadu_epi64(m, (const void *)(base + i));
        c += (size_t)__builtin_popcount((unsigned)_mm512_mask_cmplt_epu64_mask(m, v, k));
    }
    return (size_t)(base - keys) + c;
}

static int probe_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}

static int probe_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt");
}

probe_fn probe_avx2(void)
{
    return probe_has_avx2() ? probe_avx2_kernel : NULL;
}

probe_fn probe_avx512(void)
{
    return probe_has_avx512() ? probe_avx512_kernel : NULL;
}

#else /* !PROBE_X86 */

probe_fn probe_avx2(void)
{
    return NULL;
}

probe_fn probe_avx512(void)
{
    return NULL;
}

#endif

/* The choice: -1 until made, then an index into the tables below. Computing
 * it twice in a race gives the same answer, so a relaxed publish suffices. */
enum { PROBE_SCALAR = 0, PROBE_AVX2 = 1, PROBE_AVX512 = 2 };
static atomic_int probe_choice = -1;
static const char *const probe_names[] = { "scalar", "avx2", "avx512" };
#if PROBE_X86
static const probe_fn probe_kernels[] = { probe_scalar, probe_avx2_kernel, probe_avx512_kernel };
#else
static const probe_fn probe_kernels[] = { probe_scalar, probe_scalar, probe_scalar };
#endif

static int probe_choose(void)
{
    int best = PROBE_SCALAR;
    if (probe_avx512())
        best = PROBE_AVX512;
    else if (probe_avx2())
        best = PROBE_AVX2;
    const char *env = getenv("KYRO_PROBE");
    if (env) {
        if (strcmp(env, "scalar") == 0)
            best = PROBE_SCALAR;
        else if (strcmp(env, "avx2") == 0 && probe_avx2())
            best = PROBE_AVX2;
        else if (strcmp(env, "avx512") == 0 && probe_avx512())
            best = PROBE_AVX512;
    }
    return best;
}

static int probe_chosen(void)
{
    int c = atomic_load_explicit(&probe_choice, memory_order_relaxed);
    if (c < 0) {
        c = probe_choose();
        atomic_store_explicit(&probe_choice, c, memory_order_relaxed);
    }
    return c;
}

probe_fn probe_best(void)
{
    return probe_kernels[probe_chosen()];
}

const char *probe_best_name(void)
{
    return probe_names[probe_chosen()];
}
