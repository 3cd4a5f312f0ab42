/*
 * rmi.c — the learned index: a two-stage Recursive Model Index over n sorted,
 * strictly ascending uint64 keys. Owns training, lookup, the serialised form.
 *
 * Evaluation is integer work around one double multiply (no add follows it,
 * so a fused multiply-add cannot make training and lookup disagree):
 *   line(s, o, x) = min(floor(s * x), 2^61) + o          s >= 0, |o| <= 2^61
 *   root(k) = clamp(line(rs, ro, T(sat(k - kmin))), 0, L - 1)
 *             T(d) = d >> 1 (kind 0, linear) or flog(d) (kind 1, log), both
 *             monotone and below 2^63
 *   pred(k) = a_j + clamp(line(s_j, o_j, sat(k - kbase_j)), 0, m_j - 1)
 * Training tries linear and log roots (least squares, min/max and trimmed
 * quantile lines) on a sample and keeps the one with the best estimated
 * probe cost; leaves are least-squares lines with exact errors. O(n).
 *
 * Invariants: root is monotone, so leaf j holds the contiguous positions
 * [a_j, a_{j+1}) of the keys routed to it (a_0 = 0, a_L = n, non-decreasing)
 * and the lower bound of ANY key routed to j is in [a_j, a_{j+1}]. pred is
 * monotone and err_lo/err_hi are exact over the leaf's keys, so that lower
 * bound is in [max(a_j, p - err_lo), min(a_{j+1}, p + err_hi + 1)]; the probe
 * searches that window minus its last position (its own "not found" answer).
 * An empty leaf's window is the single answer a_j; an error of 0xffffffff
 * means the whole leaf. A model read from bytes may be wrong: every answer
 * is verified, and a miss widens by exponential search (a "fallback").
 *
 * Serialised layout (little-endian, fixed widths, 48 + 40 * L bytes):
 *   off  size  field
 *     0     4  magic 0x31494d52 ("RMI1")
 *     4     4  format version, 1
 *     8     8  n, the number of keys
 *    16     4  L, the number of leaves, >= 1
 *    20     4  root kind: 0 linear, 1 log
 *    24     8  root kmin, u64
 *    32     8  root slope, IEEE-754 binary64, finite, >= 0
 *    40     8  root offset, i64, |offset| <= 2^61
 *    48  40*L  leaves, each: kbase u64, slope f64 (finite, >= 0), offset i64
 *              (|offset| <= 2^61), start a_j u64 (a_0 = 0, non-decreasing,
 *              <= n), err_lo u32, err_hi u32
 */
#include "rmi.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kyro.h"
#include "probe.h"

#define RMI_MAGIC 0x31494d52u
#define RMI_VERSION 1u
#define RMI_HEADER 48u
#define RMI_LEAF_BYTES 40u
#define RMI_VMAX ((int64_t)1 << 61)
#define RMI_ERR_UNBOUNDED UINT32_MAX
#define RMI_KEYS_PER_LEAF 64u
#define RMI_SAMPLE 65536u /* keys looked at per root candidate */

enum { RMI_LINEAR = 0, RMI_LOG = 1 };

typedef struct {
    uint64_t kbase;   /* first key of the leaf; keys below it evaluate as kbase */
    double slope;     /* >= 0, finite */
    int64_t off;      /* |off| <= 2^61 */
    uint64_t start;   /* a_j */
    uint32_t err_lo;  /* max(pred - i) over the leaf's keys, or unbounded */
    uint32_t err_hi;  /* max(i - pred) over the leaf's keys, or unbounded */
} rmi_leaf;

struct rmi {
    size_t n;
    size_t nleaves;    /* L >= 1 */
    int kind;          /* RMI_LINEAR or RMI_LOG */
    uint64_t kmin;
    double slope;
    int64_t off;
    uint64_t max_err;  /* largest window width */
    probe_fn probe;
    rmi_leaf *leaves;  /* L + 1 entries; leaves[L].start == n is a sentinel */
};

/* ---- Evaluation (shared by training and lookup) ----------------------- */

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

static inline size_t rmi_root(const rmi *m, uint64_t key)
{
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
    int64_t s = rmi_line(lf->slope, lf->off, (double)d);
    if (s < 0)
        s = 0;
    if ((uint64_t)s >= cnt)
        s = (int64_t)(cnt - 1);
    return a + (size_t)s;
}

static inline size_t rmi_err(uint32_t e)
{
    return e == RMI_ERR_UNBOUNDED ? SIZE_MAX : (size_t)e;
}

/* The search window [*lo, *hi) for key; its lower bound is in [*lo, *hi]. */
static inline void rmi_window(const rmi *m, uint64_t key, size_t *lo, size_t *hi)
{
    const rmi_leaf *lf = &m->leaves[rmi_root(m, key)];
    size_t a = lf[0].start, e = lf[1].start;
    if (a >= e) {
        *lo = *hi = a;
        return;
    }
    size_t p = rmi_pred(lf, a, e - a, key);
    size_t elo = rmi_err(lf->err_lo), ehi = rmi_err(lf->err_hi);
    *lo = p - a > elo ? p - elo : a;
    *hi = e - p - 1 > ehi ? p + ehi + 1 : e;
}

static size_t rmi_leaf_width(const rmi_leaf *lf)
{
    size_t cnt = (size_t)(lf[1].start - lf[0].start);
    size_t elo = rmi_err(lf->err_lo), ehi = rmi_err(lf->err_hi);
    if (elo >= cnt || ehi >= cnt || elo + ehi + 1 >= cnt)
        return cnt;
    return elo + ehi + 1;
}

static void rmi_finish(rmi *m)
{
    m->max_err = 0;
    for (size_t j = 0; j < m->nleaves; j++) {
        size_t w = rmi_leaf_width(&m->leaves[j]);
        if (w > m->max_err)
            m->max_err = w;
    }
    m->probe = probe_best();
}

/* ---- Training --------------------------------------------------------- */

static int64_t rmi_offset(double c)
{
    if (!(c > -0x1p61))
        return -RMI_VMAX;
    if (!(c < 0x1p61))
        return RMI_VMAX;
    double f = floor(c);
    return (int64_t)f;
}

static double rmi_slope(double cov, double var)
{
    double s = var > 0 ? cov / var : 0;
    return s >= 0 && isfinite(s) ? s : 0;
}

/* Root lines: least squares from T(key) to the leaf its position belongs
 * in (fit 0), or the line through the keys at ranks q*n and (1-q)*n with
 * q = 2^-shift (q = 0 is min/max interpolation; q > 0 ignores outliers,
 * which clamp into the first and last leaf). */
enum { RMI_FIT_LSQ = 0, RMI_FITS = 6 };
static const unsigned rmi_trim_shift[RMI_FITS] = { 0, 0, 5, 7, 10, 14 }; /* q = 2^-shift; 0: none */

static void rmi_fit_root(const uint64_t *keys, size_t n, size_t stride, int fit, rmi *m)
{
    m->slope = 0;
    m->off = 0;
    if (n < 2 || m->nleaves < 2)
        return;
    double scale = (double)m->nleaves / (double)n;
    if (fit == RMI_FIT_LSQ) {
        double xbar = 0, ibar = 0, cnt = 0;
        for (size_t i = 0; i < n; i += stride) {
            xbar += rmi_root_x(m->kind, m->kmin, keys[i]);
            ibar += (double)i;
            cnt += 1;
        }
        xbar /= cnt;
        ibar /= cnt;
        double cov = 0, var = 0;
        for (size_t i = 0; i < n; i += stride) {
            double dx = rmi_root_x(m->kind, m->kmin, keys[i]) - xbar;
            cov += dx * ((double)i - ibar);
            var += dx * dx;
        }
        m->slope = rmi_slope(cov * scale, var);
        /* floor(s*x) + off ~ s*x + c - 0.5 on average: aim at the middle */
        m->off = rmi_offset(ibar * scale - m->slope * xbar + 0.5);
        return;
    }
    size_t i1 = rmi_trim_shift[fit] ? n >> rmi_trim_shift[fit] : 0, i2 = n - 1 - i1;
    double x1 = rmi_root_x(m->kind, m->kmin, keys[i1]);
    double x2 = rmi_root_x(m->kind, m->kmin, keys[i2]);
    double y1 = (double)i1 * scale, y2 = (double)(i2 + 1) * scale;
    m->slope = rmi_slope(y2 - y1, x2 - x1);
    m->off = rmi_offset(y1 - m->slope * x1);
}

/* A cheap guess at the window a leaf over keys[a..e) will get: how far the
 * keys at its quartiles sit from the line through its first and last key. */
static double rmi_guess_width(const uint64_t *keys, size_t a, size_t e)
{
    size_t cnt = e - a;
    if (cnt <= 2)
        return (double)cnt;
    double span = (double)(keys[e - 1] - keys[a]), dev = 0;
    for (size_t q = 1; q <= 3; q++) {
        size_t r = cnt * q / 4;
        double x = (double)(keys[a + r] - keys[a]) / span * (double)(cnt - 1);
        double d = fabs(x - (double)r);
        if (d > dev)
            dev = d;
    }
    double w = 2 * dev + 2;
    return w < (double)cnt ? w : (double)cnt;
}

/* Route every stride-th key (no fitting) and sum cnt * log2(1 + guessed
 * width / 8) over the leaves: about the cache lines a lookup touches, a
 * stand-in for the probe cost of the trained model. */
static double rmi_route_cost(const uint64_t *keys, size_t n, size_t stride, const rmi *m)
{
    double cost = 0;
    size_t jp = 0, from = 0;
    for (size_t i = 0; i < n; i += stride) {
        size_t j = rmi_root(m, keys[i]);
        if (j != jp) {
            if (i > from)
                cost += (double)(i - from) * log2(rmi_guess_width(keys, from, i) / 8 + 1);
            jp = j;
            from = i;
        }
    }
    return cost + (double)(n - from) * log2(rmi_guess_width(keys, from, n) / 8 + 1);
}

/* Least-squares line from key - kbase to position, then its exact errors. */
static void rmi_fit_leaf(const uint64_t *keys, rmi_leaf *lf)
{
    size_t a = lf[0].start, cnt = lf[1].start - lf[0].start;
    lf->slope = 0;
    lf->off = 0;
    lf->err_lo = lf->err_hi = 0;
    lf->kbase = cnt ? keys[a] : 0;
    if (cnt == 0)
        return;
    const uint64_t *k = keys + a;
    if (cnt >= 2) {
        double xbar = 0;
        for (size_t i = 0; i < cnt; i++)
            xbar += (double)(k[i] - lf->kbase);
        xbar /= (double)cnt;
        double ibar = (double)(cnt - 1) / 2, cov = 0, var = 0;
        for (size_t i = 0; i < cnt; i++) {
            double dx = (double)(k[i] - lf->kbase) - xbar;
            cov += dx * ((double)i - ibar);
            var += dx * dx;
        }
        lf->slope = rmi_slope(cov, var);
        lf->off = rmi_offset(ibar - lf->slope * xbar + 0.5);
    }
    size_t elo = 0, ehi = 0;
    for (size_t i = 0; i < cnt; i++) {
        size_t p = rmi_pred(lf, a, cnt, k[i]) - a;
        if (p > i) {
            if (p - i > elo)
                elo = p - i;
        } else if (i - p > ehi) {
            ehi = i - p;
        }
    }
    lf->err_lo = elo >= RMI_ERR_UNBOUNDED ? RMI_ERR_UNBOUNDED : (uint32_t)elo;
    lf->err_hi = ehi >= RMI_ERR_UNBOUNDED ? RMI_ERR_UNBOUNDED : (uint32_t)ehi;
}

/* Route every key and fit every leaf. */
static void rmi_train(const uint64_t *keys, size_t n, rmi *m)
{
    size_t L = m->nleaves, jp = 0;
    m->leaves[0].start = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = rmi_root(m, keys[i]);
        while (jp < j)
            m->leaves[++jp].start = i;
    }
    while (jp < L)
        m->leaves[++jp].start = n;
    for (size_t j = 0; j < L; j++)
        rmi_fit_leaf(keys, &m->leaves[j]);
}

static size_t rmi_leaves_for(size_t n)
{
    size_t L = n / RMI_KEYS_PER_LEAF;
    if (L < 1)
        L = 1;
    if (L > UINT32_MAX)
        L = UINT32_MAX;
    return L;
}

int rmi_build(const uint64_t *keys, size_t n, rmi **out)
{
    *out = NULL;
    rmi *m = calloc(1, sizeof *m);
    if (!m)
        goto fail;
    m->n = n;
    m->nleaves = rmi_leaves_for(n);
    m->leaves = calloc(m->nleaves + 1, sizeof *m->leaves);
    if (!m->leaves)
        goto fail;
    if (n > 0) {
        m->kmin = keys[0];
        /* Pick the root whose routing balances the leaves best, judged on
         * about RMI_SAMPLE keys. */
        size_t stride = n / RMI_SAMPLE + 1;
        double best = HUGE_VAL;
        /* (kind, kmin): linear from the first key; log from the first key
         * (data starting near its minimum); log from 0 (data whose spread is
         * relative to its magnitude, e.g. power laws far from 0). */
        static const int kinds[] = { RMI_LINEAR, RMI_LOG, RMI_LOG };
        for (int c = 0; c < 3 && m->nleaves > 1; c++) {
            for (int fit = 0; fit < RMI_FITS; fit++) {
                rmi cand = *m;
                cand.kind = kinds[c];
                cand.kmin = c == 2 ? 0 : keys[0];
                rmi_fit_root(keys, n, stride, fit, &cand);
                double cost = rmi_route_cost(keys, n, stride, &cand);
                if (cost < best) {
                    best = cost;
                    *m = cand;
                }
            }
        }
        rmi_train(keys, n, m);
    }
    rmi_finish(m);
    *out = m;
    return KV_OK;
fail:
    rmi_free(m);
    return KV_ENOMEM;
}

void rmi_free(rmi *m)
{
    if (!m)
        return;
    free(m->leaves);
    free(m);
}

/* ---- Lookup ----------------------------------------------------------- */

static size_t rmi_widen(const uint64_t *keys, size_t n, size_t r, uint64_t key)
{
    size_t lo, hi, step = 1;
    if (r > 0 && keys[r - 1] >= key) {
        /* answer in [0, r - 1]; keys[hi] >= key throughout */
        hi = r - 1;
        for (;;) {
            if (hi < step) {
                lo = 0;
                break;
            }
            size_t c = hi - step;
            if (keys[c] < key) {
                lo = c + 1;
                break;
            }
            hi = c;
            step <<= 1;
        }
    } else {
        /* keys[r] < key: answer in [r + 1, n]; keys[lo - 1] < key throughout */
        lo = r + 1;
        for (;;) {
            if (step >= n - lo) {
                hi = n;
                break;
            }
            size_t c = lo + step;
            if (keys[c] >= key) {
                hi = c;
                break;
            }
            lo = c + 1;
            step <<= 1;
        }
    }
    return probe_scalar(keys, lo, hi, key);
}

size_t rmi_lower_bound(const rmi *m, const uint64_t *keys, uint64_t key, size_t *probed,
                       int *fallback)
{
    size_t n = m->n, lo, hi;
    rmi_window(m, key, &lo, &hi);
    size_t r = m->probe(keys, lo, hi, key);
    int missed = !((r == 0 || keys[r - 1] < key) && (r == n || keys[r] >= key));
    if (missed)
        r = rmi_widen(keys, n, r, key);
    if (probed)
        *probed = hi - lo;
    if (fallback)
        *fallback = missed;
    return r;
}

size_t rmi_key_count(const rmi *m)
{
    return m->n;
}

size_t rmi_leaf_count(const rmi *m)
{
    return m->nleaves;
}

uint64_t rmi_max_error(const rmi *m)
{
    return m->max_err;
}

size_t rmi_memory_bytes(const rmi *m)
{
    return m ? sizeof *m + (m->nleaves + 1) * sizeof *m->leaves : 0;
}

/* ---- Serialised form -------------------------------------------------- */

static void rmi_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void rmi_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t rmi_get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t rmi_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t rmi_dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double rmi_bitsd(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

size_t rmi_serialized_size(const rmi *m)
{
    return RMI_HEADER + m->nleaves * RMI_LEAF_BYTES;
}

void rmi_serialize(const rmi *m, uint8_t *dst)
{
    rmi_put32(dst + 0, RMI_MAGIC);
    rmi_put32(dst + 4, RMI_VERSION);
    rmi_put64(dst + 8, (uint64_t)m->n);
    rmi_put32(dst + 16, (uint32_t)m->nleaves);
    rmi_put32(dst + 20, (uint32_t)m->kind);
    rmi_put64(dst + 24, m->kmin);
    rmi_put64(dst + 32, rmi_dbits(m->slope));
    rmi_put64(dst + 40, (uint64_t)m->off);
    uint8_t *p = dst + RMI_HEADER;
    for (size_t j = 0; j < m->nleaves; j++, p += RMI_LEAF_BYTES) {
        const rmi_leaf *lf = &m->leaves[j];
        rmi_put64(p + 0, lf->kbase);
        rmi_put64(p + 8, rmi_dbits(lf->slope));
        rmi_put64(p + 16, (uint64_t)lf->off);
        rmi_put64(p + 24, lf->start);
        rmi_put32(p + 32, lf->err_lo);
        rmi_put32(p + 36, lf->err_hi);
    }
}

static int rmi_slope_ok(double s)
{
    return isfinite(s) && s >= 0;
}

static int rmi_off_ok(int64_t o)
{
    return o >= -RMI_VMAX && o <= RMI_VMAX;
}

int rmi_deserialize(const uint8_t *src, size_t len, size_t n, rmi **out)
{
    rmi *m = NULL;
    int rc = KV_ECORRUPT;
    *out = NULL;
    if (!src || len < RMI_HEADER)
        goto fail;
    if (rmi_get32(src) != RMI_MAGIC || rmi_get32(src + 4) != RMI_VERSION)
        goto fail;
    if (rmi_get64(src + 8) != (uint64_t)n)
        goto fail;
    size_t L = rmi_get32(src + 16);
    if (L < 1 || L > (len - RMI_HEADER) / RMI_LEAF_BYTES ||
        len != RMI_HEADER + L * RMI_LEAF_BYTES)
        goto fail;
    uint32_t kind = rmi_get32(src + 20);
    if (kind != RMI_LINEAR && kind != RMI_LOG)
        goto fail;
    rc = KV_ENOMEM;
    m = calloc(1, sizeof *m);
    if (!m)
        goto fail;
    m->leaves = calloc(L + 1, sizeof *m->leaves);
    if (!m->leaves)
        goto fail;
    rc = KV_ECORRUPT;
    m->n = n;
    m->nleaves = L;
    m->kind = (int)kind;
    m->kmin = rmi_get64(src + 24);
    m->slope = rmi_bitsd(rmi_get64(src + 32));
    m->off = (int64_t)rmi_get64(src + 40);
    if (!rmi_slope_ok(m->slope) || !rmi_off_ok(m->off))
        goto fail;
    const uint8_t *p = src + RMI_HEADER;
    uint64_t prev = 0;
    for (size_t j = 0; j < L; j++, p += RMI_LEAF_BYTES) {
        rmi_leaf *lf = &m->leaves[j];
        lf->kbase = rmi_get64(p + 0);
        lf->slope = rmi_bitsd(rmi_get64(p + 8));
        lf->off = (int64_t)rmi_get64(p + 16);
        lf->start = rmi_get64(p + 24);
        lf->err_lo = rmi_get32(p + 32);
        lf->err_hi = rmi_get32(p + 36);
        if (!rmi_slope_ok(lf->slope) || !rmi_off_ok(lf->off))
            goto fail;
        if (lf->start < prev || lf->start > (uint64_t)n || (j == 0 && lf->start != 0))
            goto fail;
        prev = lf->start;
    }
    m->leaves[L].start = (uint64_t)n;
    rmi_finish(m);
    *out = m;
    return KV_OK;
fail:
    rmi_free(m);
    return rc;
}
