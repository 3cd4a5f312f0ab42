/*
 * rmi.h — the learned index: a two-stage Recursive Model Index.
 *
 * A root model maps a key to one of L leaves; each leaf is a linear model
 * mapping a key to a position in the sorted key array, with an exact error
 * window over the keys it was trained on. Predictions are monotone in the key,
 * so the lower bound of an absent key also falls in its window. A lookup that
 * leaves the window (possible only with keys the model was not built on)
 * widens by exponential search and is counted as a fallback.
 *
 * Ownership and threads: rmi_build and rmi_deserialize give the caller a new
 * model, released with rmi_free (NULL allowed); neither keeps a pointer to
 * keys or src. A model never changes after it is made, so any number of
 * threads may call the const functions on it at once.
 */
#ifndef KYRO_RMI_H
#define KYRO_RMI_H

#include <stddef.h>
#include <stdint.h>

#include "probe.h"

typedef struct rmi rmi;

/* Train on n sorted, strictly ascending keys (n may be 0). */
int rmi_build(const uint64_t *keys, size_t n, rmi **out);   /* KV_OK / KV_ENOMEM */
void rmi_free(rmi *m);

/* Lower bound of key in keys[0..n): the first i with keys[i] >= key, or n.
 * keys must be the array the model was built on (or loaded with).
 * *probed (if non-NULL) gets the number of positions in the searched window;
 * *fallback (if non-NULL) is set to 1 when the window missed, else 0. */
size_t rmi_lower_bound(const rmi *m, const uint64_t *keys, uint64_t key,
                       size_t *probed, int *fallback);
/* rmi_lower_bound with the window searched by the given kernel instead of
 * probe_best() (for benchmarks and tests that compare kernels). */
size_t rmi_lower_bound_with(const rmi *m, const uint64_t *keys, uint64_t key, probe_fn probe,
                            size_t *probed, int *fallback);

/* Start loading the keys a lookup of key will probe (both ends of its
 * window), for callers that know their next keys ahead. */
void rmi_prefetch(const rmi *m, const uint64_t *keys, uint64_t key);

size_t rmi_key_count(const rmi *m);
size_t rmi_leaf_count(const rmi *m);
uint64_t rmi_max_error(const rmi *m);      /* largest leaf window width, in positions */
size_t rmi_memory_bytes(const rmi *m);

/* Serialised form (little-endian, fixed layout, described in rmi.c). */
size_t rmi_serialized_size(const rmi *m);
void rmi_serialize(const rmi *m, uint8_t *dst);
/* Load a model for keys[0..n) from untrusted bytes: every field is bounds-
 * checked; KV_ECORRUPT if anything is out of range. The model must produce
 * correct lower bounds for any input it accepts (fallback covers misses). */
int rmi_deserialize(const uint8_t *src, size_t len, size_t n, rmi **out);

/* ---- The lookup path ----------------------------------------------------
 * Inline, because it runs on every get: the model's layout and evaluation
 * live here (rmi.c describes both, with the training that relies on them),
 * and so does rmi_find. Nothing outside rmi.c and rmi_find reads these. */

#define RMI_VMAX ((int64_t)1 << 61)
enum { RMI_LINEAR = 0, RMI_LOG = 1, RMI_TABLE = 2 };

/* 24 bytes, so that the model stays near 1-2 % of the key array: a float
 * slope loses nothing that matters over a leaf's few hundred positions,
 * and errors beyond RMI_EMASK are rare enough to mean "whole leaf". */
#define RMI_START_BITS 40
#define RMI_START_MASK (((uint64_t)1 << RMI_START_BITS) - 1)
#define RMI_EBITS 12
#define RMI_EMASK ((1u << RMI_EBITS) - 1)  /* stored error meaning "unbounded" */

typedef struct {
    uint64_t kbase;   /* first key of the leaf; keys below it evaluate as kbase */
    uint64_t pos;     /* a_j (40 bits) | err_lo << 40 | err_hi << 52 */
    float slope;      /* >= 0, finite */
    int32_t off;      /* |off| <= 2^30 */
} rmi_leaf;

static inline size_t rmi_start(const rmi_leaf *lf)
{
    return (size_t)(lf->pos & RMI_START_MASK);
}

static inline uint32_t rmi_elo(const rmi_leaf *lf)
{
    return (uint32_t)(lf->pos >> RMI_START_BITS) & RMI_EMASK;
}

static inline uint32_t rmi_ehi(const rmi_leaf *lf)
{
    return (uint32_t)(lf->pos >> (RMI_START_BITS + RMI_EBITS)) & RMI_EMASK;
}

struct rmi {
    size_t n;
    size_t nleaves;    /* L >= 1 */
    int kind;          /* RMI_LINEAR, RMI_LOG or RMI_TABLE */
    uint64_t kmin;
    double slope;      /* linear and log roots */
    int64_t off;
    unsigned tlog;     /* table root: bucket = T(key - kmin) >> shift, T = flog */
    unsigned shift;    /* if tlog else identity, clamped below 2^tbits */
    unsigned tbits;
    uint32_t *table;   /* 2^tbits + 1 entries: first leaf >= 1 in bucket b */
    uint64_t max_err;  /* largest window width */
    probe_fn probe;
    rmi_leaf *leaves;  /* L + 1 entries; leaves[L].start == n is a sentinel */
};

/* A monotone integer log2 below 2^63: 7 bits of exponent, 56 of mantissa. */
static inline uint64_t rmi_flog(uint64_t d)
{
    if (d == 0)
        return 0;
    int z = __builtin_clzll(d);
    return ((uint64_t)(64 - z) << 56) | (((d << z) << 1) >> 8);
}

static inline int64_t rmi_line(double slope, int64_t off, double x)
{
    double p = slope * x;
    int64_t v = p < 0x1p61 ? (int64_t)p : RMI_VMAX; /* NaN cannot occur; it would saturate */
    return v + off;
}

/* The root's input, below 2^63 so that it converts to double without a
 * branch on the top bit (the linear kind drops the lowest bit for that). */
static inline double rmi_root_x(int kind, uint64_t kmin, uint64_t key)
{
    uint64_t d = key > kmin ? key - kmin : 0;
    return (double)(int64_t)(kind == RMI_LOG ? rmi_flog(d) : d >> 1);
}

/* Table root (out of line: only clustered key sets use it). */
size_t rmi_root_table(const rmi *m, uint64_t key);

static inline size_t rmi_root(const rmi *m, uint64_t key)
{
    if (m->kind == RMI_TABLE)
        return rmi_root_table(m, key);
    int64_t s = rmi_line(m->slope, m->off, rmi_root_x(m->kind, m->kmin, key));
    if (s < 0)
        return 0;
    if ((uint64_t)s >= m->nleaves)
        return m->nleaves - 1;
    return (size_t)s;
}

/* Predicted position of key in a leaf starting at a with cnt >= 1 keys. */
static inline size_t rmi_pred(const rmi_leaf *lf, size_t a, size_t cnt, uint64_t key)
{
    uint64_t d = key > lf->kbase ? key - lf->kbase : 0;
    int64_t s = rmi_line((double)lf->slope, lf->off, (double)d);
    if (s < 0)
        s = 0;
    if ((uint64_t)s >= cnt)
        s = (int64_t)(cnt - 1);
    return a + (size_t)s;
}

static inline size_t rmi_err(uint32_t e)
{
    return e == RMI_EMASK ? SIZE_MAX : (size_t)e;
}

/* The search window [*lo, *hi) for key in leaf lf; its lower bound is in
 * [*lo, *hi]. Returns the predicted position (lo when the window is empty). */
static inline __attribute__((always_inline)) size_t rmi_window_in(const rmi_leaf *lf, uint64_t key,
                                                                  size_t *lo, size_t *hi)
{
    size_t a = rmi_start(lf), e = rmi_start(lf + 1);
    if (a >= e) {
        *lo = *hi = a;
        return a;
    }
    size_t p = rmi_pred(lf, a, e - a, key);
    size_t elo = rmi_err(rmi_elo(lf)), ehi = rmi_err(rmi_ehi(lf));
    *lo = p - a > elo ? p - elo : a;
    *hi = e - p - 1 > ehi ? p + ehi + 1 : e;
    return p;
}

/* rmi_window_in for the leaf the root picks for key. */
static inline __attribute__((always_inline)) size_t rmi_window(const rmi *m, uint64_t key,
                                                               size_t *lo, size_t *hi)
{
    return rmi_window_in(&m->leaves[rmi_root(m, key)], key, lo, hi);
}

/* Start loading the keys a probe of [lo, hi) reads first: both ends. */
static inline void rmi_prefetch_keys(const uint64_t *keys, size_t lo, size_t hi)
{
    /* As integers: an empty run's keys may be NULL, where even keys + 0 is
     * undefined; a prefetch of any address is harmless. */
    uintptr_t base = (uintptr_t)keys;
    __builtin_prefetch((const void *)(base + lo * sizeof *keys));
    if (hi > lo + 1)
        __builtin_prefetch((const void *)(base + (hi - 1) * sizeof *keys));
}

/* The lower bound of key, given a probe answer r that missed its window
 * (only a model loaded from bytes can miss): exponential search from r. */
size_t rmi_widen(const uint64_t *keys, size_t n, size_t r, uint64_t key);

/* The position of key given r, the probe's answer in its window: r when
 * keys[r] is key, SIZE_MAX when r shows key absent, and otherwise (the
 * window missed) the answer of an exponential search from r, with
 * *fallback set. */
static inline __attribute__((always_inline)) size_t rmi_settle(const uint64_t *keys, size_t n,
                                                               size_t r, uint64_t key, int *fallback)
{
    *fallback = 0;
    if (r < n && keys[r] == key) /* keys ascend strictly: r is the lower bound */
        return r;
    /* Absent if r is the lower bound: keys[r - 1] < key < keys[r]. */
    if (__builtin_expect((r == 0 || keys[r - 1] < key) && (r == n || keys[r] > key), 1))
        return SIZE_MAX;
    *fallback = 1;
    r = rmi_widen(keys, n, r, key);
    return r < n && keys[r] == key ? r : SIZE_MAX;
}

/* Bytes of side prefetched around the middle of the predicted entry. */
#define RMI_SIDE_SPAN 512u

/* The position of key in keys[0..n), or SIZE_MAX if it is not there; the
 * point lookup. Before the window is probed it also starts loading the
 * entries of side (stride bytes each, beside the keys: the values of a
 * fixed run, or their references) around the predicted position, whose
 * entry for key the caller reads next: the RMI_SIDE_SPAN bytes centred on
 * the middle of the predicted entry (of its first RMI_SIDE_SPAN bytes, for
 * a longer one), which hold the key's own entry for most keys (the
 * prediction is off by under three positions on average). A fixed number
 * of lines, unrolled: on a get the instructions count as much as the
 * misses, since fewer of them let the next get's misses start sooner.
 * *probed gets the window's width, *fallback whether the window missed. */
static inline __attribute__((always_inline)) size_t
rmi_find(const rmi *m, const uint64_t *keys, uint64_t key, const void *side, size_t stride,
         size_t *probed, int *fallback)
{
    size_t n = m->n, lo, hi;
    size_t p = rmi_window(m, key, &lo, &hi);
    rmi_prefetch_keys(keys, lo, hi);
    /* Addresses as integers: near an empty run's NULL side they may wrap,
     * and a prefetch of any address is harmless. */
    uintptr_t mid = (uintptr_t)side + p * stride + (stride < RMI_SIDE_SPAN ? stride : RMI_SIDE_SPAN) / 2;
    uintptr_t line = (mid - RMI_SIDE_SPAN / 2) & ~(uintptr_t)63;
#pragma GCC unroll 16
    for (uintptr_t i = 0; i <= RMI_SIDE_SPAN / 64; i++)
        __builtin_prefetch((const void *)(line + 64 * i));
    *probed = hi - lo;
    return rmi_settle(keys, n, m->probe(keys, lo, hi, key), key, fallback);
}

/* The find of up to RMI_GROUP keys at once: pos[i] gets rmi_find's answer
 * for q[i]. Each stage starts the loads of every key before the next stage
 * reads any of them (leaf, then window, then the side entry at the found
 * position), so the misses of the whole group overlap instead of a few at
 * a time. Returns the sum of the window widths; *fallbacks gets how many
 * windows missed. */
#define RMI_GROUP 16
size_t rmi_find_group(const rmi *m, const uint64_t *keys, size_t cnt, const uint64_t *q,
                      size_t *pos, const void *side, size_t stride, size_t *fallbacks);

#endif
