/*
 * rmi.c — the learned index: a two-stage Recursive Model Index over n sorted,
 * strictly ascending uint64 keys. Owns training and the serialised form; the
 * lookup (evaluation below, rmi_find) is inline in rmi.h.
 *
 * Evaluation is integer work around one double multiply (no add follows it,
 * so a fused multiply-add cannot make training and lookup disagree):
 *   line(s, o, x) = min(floor(s * x), 2^61) + o          s >= 0, |o| <= 2^61
 *   root(k), kinds 0 and 1 = clamp(line(rs, ro, T(sat(k - kmin))), 0, L - 1)
 *             T(d) = d >> 1 (kind 0, linear) or flog(d) (kind 1, log), both
 *             monotone and below 2^63
 *   root(k), kind 2 (table) = the last leaf j with kbase_j <= k (0 if none),
 *             searched among the leaves listed under bucket
 *             min(U(sat(k - kmin)) >> shift, 2^tbits - 1), U = identity or
 *             flog; the leaves are equal-count, so clusters and tails that
 *             no single curve spreads still get ~n/L keys per leaf
 *   pred(k) = a_j + clamp(line(s_j, o_j, sat(k - kbase_j)), 0, m_j - 1)
 * Training: fitted roots (least squares, min/max and trimmed quantile lines
 * of T) are ranked by a cheap guess on a sample; the best few, and the two
 * table roots, are then judged by fitting the leaves that about a thousand
 * evenly spread keys fall in and pricing each key's exact window (plus,
 * for a table, its search). Leaves are least-squares lines with exact
 * errors. L is about n / 168: the most leaves that keep the model within
 * 2 % of the key array. Everything is O(n); the keys are read about twice.
 *
 * Invariants: root is monotone, so leaf j holds the contiguous positions
 * [a_j, a_{j+1}) of the keys routed to it (a_0 = 0, a_L = n, non-decreasing)
 * and the lower bound of ANY key routed to j is in [a_j, a_{j+1}]. pred is
 * monotone and err_lo/err_hi are exact over the leaf's keys, so that lower
 * bound is in [max(a_j, p - err_lo), min(a_{j+1}, p + err_hi + 1)]; the probe
 * searches that window minus its last position (its own "not found" answer).
 * An empty leaf's window is the single answer a_j; an error too large for
 * the in-memory leaf (12 bits) means the whole leaf. A model read from bytes
 * may be wrong: every answer is verified, and a miss widens by exponential
 * search (a "fallback", which never happens on the keys a model was built on).
 *
 * In memory a leaf is 24 bytes (kbase, a_j and both errors packed in one
 * word, float slope, int32 offset); a serialised leaf that does not fit that
 * exactly is loaded with the whole leaf as its window, which stays correct.
 *
 * Serialised layout (little-endian, fixed widths, 48 + 40 * L bytes):
 *   off  size  field
 *     0     4  magic 0x31494d52 ("RMI1")
 *     4     4  format version, 1
 *     8     8  n, the number of keys (< 2^40)
 *    16     4  L, the number of leaves, >= 1
 *    20     4  root kind: 0 linear, 1 log, 2 table
 *    24     8  root kmin, u64
 *    32     8  root slope, IEEE-754 binary64, finite, >= 0 (0 for a table)
 *    40     8  root offset, i64, |offset| <= 2^61; for a table instead
 *              shift | tbits << 8 | U-is-flog << 16, shift <= 63,
 *              2^tbits <= L (the bucket table is rebuilt from the leaves)
 *    48  40*L  leaves, each: kbase u64, slope f64 (finite, >= 0), offset i64
 *              (|offset| <= 2^61), start a_j u64 (a_0 = 0, non-decreasing,
 *              <= n), err_lo u32, err_hi u32 (0xffffffff: whole leaf)
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
#define RMI_ERR_UNBOUNDED UINT32_MAX /* in the serialised form */
#define RMI_KEYS_PER_LEAF 168u
#define RMI_SAMPLE 65536u /* keys looked at per root candidate */
#define RMI_SHORT 3        /* fitted roots given trial fits */
#define RMI_OFF_MAX ((int32_t)1 << 30) /* a leaf offset, clamped to fit its int32 */

static inline void rmi_set_pos(rmi_leaf *lf, uint64_t start, uint32_t elo, uint32_t ehi)
{
    lf->pos = start | (uint64_t)elo << RMI_START_BITS | (uint64_t)ehi << (RMI_START_BITS + RMI_EBITS);
}

/* ---- Evaluation (shared by training and lookup) ----------------------- */

static inline size_t rmi_bucket(const rmi *m, uint64_t key)
{
    uint64_t d = key > m->kmin ? key - m->kmin : 0;
    uint64_t b = (m->tlog ? rmi_flog(d) : d) >> m->shift;
    uint64_t top = ((uint64_t)1 << m->tbits) - 1;
    return (size_t)(b < top ? b : top);
}

/* Table root: the last leaf j with kbase_j <= key (leaf 0 if none), found
 * by a branchless search over the leaves whose first key shares key's
 * bucket. Leaves 1..L-1 are listed in the table, leaf 0 takes what is
 * below them all. */
size_t rmi_root_table(const rmi *m, uint64_t key)
{
    size_t b = rmi_bucket(m, key);
    size_t base = m->table[b], len = m->table[b + 1] - base;
    const rmi_leaf *lf = m->leaves;
    if (len) {
        while (len > 1) {
            size_t half = len / 2;
            base = lf[base + half - 1].kbase <= key ? base + half : base;
            len -= half;
        }
        base += lf[base].kbase <= key;
    }
    return base - 1;
}

static size_t rmi_leaf_width(const rmi_leaf *lf)
{
    size_t cnt = rmi_start(lf + 1) - rmi_start(lf);
    size_t elo = rmi_err(rmi_elo(lf)), ehi = rmi_err(rmi_ehi(lf));
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
 * keys at 15 evenly spaced ranks sit from the line through its first and
 * last key (fewer points miss the steps of lumpy data). */
#define RMI_GUESS_POINTS 16
static double rmi_guess_width(const uint64_t *keys, size_t a, size_t e)
{
    size_t cnt = e - a;
    if (cnt <= 2)
        return (double)cnt;
    double span = (double)(keys[e - 1] - keys[a]), dev = 0;
    size_t parts = cnt < RMI_GUESS_POINTS ? cnt : RMI_GUESS_POINTS;
    for (size_t q = 1; q < parts; q++) {
        size_t r = cnt * q / parts;
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

/* Least-squares line from key - kbase to position, then its exact errors
 * (computed with the stored float slope, so they hold at lookup). */
static void rmi_fit_leaf(const uint64_t *keys, rmi_leaf *lf)
{
    size_t a = rmi_start(lf), cnt = rmi_start(lf + 1) - a;
    lf->slope = 0;
    lf->off = 0;
    lf->kbase = cnt ? keys[a] : 0;
    rmi_set_pos(lf, a, 0, 0);
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
        float f = (float)rmi_slope(cov, var);
        lf->slope = isfinite(f) ? f : 0;
        int64_t off = rmi_offset(ibar - (double)lf->slope * xbar + 0.5);
        lf->off = (int32_t)(off < -RMI_OFF_MAX ? -RMI_OFF_MAX : off > RMI_OFF_MAX ? RMI_OFF_MAX : off);
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
    rmi_set_pos(lf, a, elo >= RMI_EMASK ? RMI_EMASK : (uint32_t)elo,
                ehi >= RMI_EMASK ? RMI_EMASK : (uint32_t)ehi);
}

/* Route every key and fit every leaf. */
static void rmi_train(const uint64_t *keys, size_t n, rmi *m)
{
    size_t L = m->nleaves, jp = 0;
    rmi_set_pos(&m->leaves[0], 0, 0, 0);
    for (size_t i = 0; i < n; i++) {
        size_t j = rmi_root(m, keys[i]);
        while (jp < j)
            rmi_set_pos(&m->leaves[++jp], i, 0, 0);
    }
    while (jp < L)
        rmi_set_pos(&m->leaves[++jp], n, 0, 0);
    for (size_t j = 0; j < L; j++)
        rmi_fit_leaf(keys, &m->leaves[j]);
}

/* The table over leaves 1..L-1 by the bucket of their first key. A model
 * read from bytes may have unsorted first keys; taking the running maximum
 * of their buckets keeps the table non-decreasing and every search inside
 * [1, L], so lookups stay in bounds (and are verified anyway). */
static int rmi_make_table(rmi *m)
{
    size_t T = (size_t)1 << m->tbits, L = m->nleaves, j = 1, bmax = 0;
    free(m->table);
    m->table = malloc((T + 1) * sizeof *m->table);
    if (!m->table)
        return KV_ENOMEM;
    for (size_t b = 0; b <= T; b++) {
        while (j < L) {
            size_t bj = rmi_bucket(m, m->leaves[j].kbase);
            if (bj < bmax)
                bj = bmax;
            if (bj >= b)
                break;
            bmax = bj;
            j++;
        }
        m->table[b] = (uint32_t)j;
    }
    return KV_OK;
}

/* Equal-count leaves: leaf j starts at floor(j * n / L) (kept without a
 * product that could overflow). */
static void rmi_set_equal_starts(rmi *m)
{
    size_t L = m->nleaves, q = m->n / L, r = m->n % L, a = 0, acc = 0;
    for (size_t j = 0; j <= L; j++) {
        rmi_set_pos(&m->leaves[j], a, 0, 0);
        a += q;
        acc += r;
        if (acc >= L) {
            acc -= L;
            a++;
        }
    }
}

/* Table-root geometry for keys[0..n): about L/2 buckets over the span of
 * U(key - kmin), U = flog if tlog else identity. */
static void rmi_table_geometry(const uint64_t *keys, size_t n, unsigned tlog, rmi *m)
{
    unsigned tbits = 0;
    while (tbits < 30 && ((size_t)2 << tbits) <= m->nleaves / 2)
        tbits++;
    uint64_t span = keys[n - 1] - keys[0];
    if (tlog)
        span = rmi_flog(span);
    unsigned shift = 0;
    while (shift < 63 && (span >> shift) >> tbits)
        shift++;
    m->kind = RMI_TABLE;
    m->kmin = keys[0];
    m->slope = 0;
    m->off = 0;
    m->tbits = tbits;
    m->shift = shift;
    m->tlog = tlog;
}

/* Probe cost of a window of w positions: about the cache lines a lookup
 * touches in it, plus a small linear term so that a few huge leaves (which
 * trimmed roots make of the tails) still count: they are the slow lookups,
 * and the scalar kernel pays more for width than the SIMD ones. */
static double rmi_wcost(size_t w)
{
    return log2((double)w / 8 + 1) + (double)w / 256;
}

/* The exact window of a leaf over keys[a..e), by fitting it; a leaf far
 * larger than the average is not worth fitting: call it all window. */
static size_t rmi_trial_width(const uint64_t *keys, size_t a, size_t e, size_t big)
{
    if (e - a > big)
        return e - a;
    rmi_leaf t[2];
    memset(t, 0, sizeof t);
    rmi_set_pos(&t[0], a, 0, 0);
    rmi_set_pos(&t[1], e, 0, 0);
    rmi_fit_leaf(keys, t);
    return rmi_leaf_width(t);
}

/* First index in [lo, hi] whose key routes to leaf >= j (the root is
 * monotone, so this is where leaf j starts). */
static size_t rmi_route_from(const uint64_t *keys, size_t lo, size_t hi, const rmi *m, size_t j)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rmi_root(m, keys[mid]) >= j)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* Mean probe cost over RMI_TRIALS keys spread evenly by rank, each charged
 * the exact window of the leaf it routes to: fits the leaves a sample
 * touches, not all of them, so a shortlist of roots can be compared on
 * what training would really give. */
#define RMI_TRIALS 1024u
static double rmi_trial_cost(const uint64_t *keys, size_t n, const rmi *m)
{
    size_t S = n < RMI_TRIALS ? n : RMI_TRIALS, big = 16 * (n / m->nleaves + 1);
    size_t jprev = SIZE_MAX, a = 0, e = 0;
    double sum = 0, c = 0;
    for (size_t s = 0; s < S; s++) {
        size_t i = s * (n / S) + n / S / 2;
        size_t j = rmi_root(m, keys[i]);
        if (j != jprev) {
            a = rmi_route_from(keys, e > i ? 0 : e, i, m, j);
            e = rmi_route_from(keys, i + 1, n, m, j + 1);
            c = rmi_wcost(rmi_trial_width(keys, a, e, big));
            jprev = j;
        }
        sum += c;
    }
    return sum / (double)S;
}

/* Estimated cost of the table root, in the units of rmi_trial_cost: the
 * exact windows of a sample of its equal-count leaves, plus the table read
 * and the search among the leaves sharing a bucket. */
#define RMI_TABLE_COST 0.5 /* the table entry, often a cache miss */
#define RMI_STEP_COST 0.2  /* one search step, mostly in cache */
static double rmi_table_cost(const uint64_t *keys, size_t n, rmi *m)
{
    size_t L = m->nleaves, S = L < RMI_TRIALS ? L : RMI_TRIALS, big = 16 * (n / L + 1);
    double cost = 0, steps = 0;
    rmi_set_equal_starts(m);
    for (size_t s = 0; s < S; s++) {
        const rmi_leaf *lf = &m->leaves[s * (L / S) + L / S / 2];
        cost += rmi_wcost(rmi_trial_width(keys, rmi_start(lf), rmi_start(lf + 1), big));
    }
    size_t run = 0, bprev = 0;
    for (size_t j = 1; j < L; j++) {
        size_t b = rmi_bucket(m, keys[rmi_start(&m->leaves[j])]);
        if (run && b != bprev) {
            steps += (double)run * log2((double)run + 1);
            run = 0;
        }
        bprev = b;
        run++;
    }
    steps += (double)run * log2((double)run + 1);
    return cost / (double)S + RMI_TABLE_COST + RMI_STEP_COST * steps / (double)L;
}

static int rmi_train_table(const uint64_t *keys, rmi *m)
{
    rmi_set_equal_starts(m);
    for (size_t j = 0; j < m->nleaves; j++)
        rmi_fit_leaf(keys, &m->leaves[j]);
    return rmi_make_table(m);
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
    rmi *m = NULL;
    if ((uint64_t)n > RMI_START_MASK) /* 8 TiB of keys: more than we can index */
        goto fail;
    m = calloc(1, sizeof *m);
    if (!m)
        goto fail;
    m->n = n;
    m->nleaves = rmi_leaves_for(n);
    m->leaves = calloc(m->nleaves + 1, sizeof *m->leaves);
    if (!m->leaves)
        goto fail;
    if (n > 0) {
        m->kmin = keys[0];
        /* Fitted roots: a cheap guess on about RMI_SAMPLE keys shortlists
         * RMI_SHORT of them, which are then judged by trial fits. (kind,
         * kmin): linear from the first key; log from the first key (data
         * starting near its minimum); log from 0 (data whose spread is
         * relative to its magnitude, e.g. power laws far from 0). */
        size_t stride = n / RMI_SAMPLE + 1, nshort = 0;
        rmi shortlist[RMI_SHORT];
        double guess[RMI_SHORT];
        static const int kinds[] = { RMI_LINEAR, RMI_LOG, RMI_LOG };
        for (int c = 0; c < 3 && m->nleaves > 1; c++) {
            for (int fit = 0; fit < RMI_FITS; fit++) {
                rmi cand = *m;
                cand.kind = kinds[c];
                cand.kmin = c == 2 ? 0 : keys[0];
                rmi_fit_root(keys, n, stride, fit, &cand);
                double cost = rmi_route_cost(keys, n, stride, &cand);
                size_t k = nshort < RMI_SHORT ? nshort++ : RMI_SHORT;
                while (k > 0 && guess[k - 1] > cost) {
                    if (k < RMI_SHORT) {
                        guess[k] = guess[k - 1];
                        shortlist[k] = shortlist[k - 1];
                    }
                    k--;
                }
                if (k < RMI_SHORT) {
                    guess[k] = cost;
                    shortlist[k] = cand;
                }
            }
        }
        double best = HUGE_VAL;
        for (size_t k = 0; k < nshort; k++) {
            double cost = rmi_trial_cost(keys, n, &shortlist[k]);
            if (cost < best) {
                best = cost;
                *m = shortlist[k];
            }
        }
        /* Equal-count leaves need at least a few keys each. Buckets by
         * the key or by its log (for heavy tails). */
        for (unsigned tlog = 0; tlog < 2 && m->nleaves > 1 && n >= 4 * m->nleaves; tlog++) {
            rmi cand = *m;
            rmi_table_geometry(keys, n, tlog, &cand);
            double cost = rmi_table_cost(keys, n, &cand);
            if (cost < best) {
                best = cost;
                *m = cand;
            }
        }
        if (m->kind == RMI_TABLE) {
            if (rmi_train_table(keys, m) != KV_OK)
                goto fail;
        } else {
            rmi_train(keys, n, m);
        }
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
    free(m->table);
    free(m);
}

/* ---- Lookup ----------------------------------------------------------- */

size_t rmi_widen(const uint64_t *keys, size_t n, size_t r, uint64_t key)
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

size_t rmi_lower_bound_with(const rmi *m, const uint64_t *keys, uint64_t key, probe_fn probe,
                            size_t *probed, int *fallback)
{
    size_t n = m->n, lo, hi;
    rmi_window(m, key, &lo, &hi);
    size_t r = probe(keys, lo, hi, key);
    int missed = !((r == 0 || keys[r - 1] < key) && (r == n || keys[r] >= key));
    if (missed)
        r = rmi_widen(keys, n, r, key);
    if (probed)
        *probed = hi - lo;
    if (fallback)
        *fallback = missed;
    return r;
}

void rmi_prefetch(const rmi *m, const uint64_t *keys, uint64_t key)
{
    size_t lo, hi;
    rmi_window(m, key, &lo, &hi);
    rmi_prefetch_keys(keys, lo, hi);
}

/* Leaves up to this size are taken to stay in a core's cache. */
#define RMI_NEAR_LEAVES_BYTES (512u * 1024)

/* Start loading [p, p + len) (len >= 1), line by line. */
static void rmi_prefetch_span(uintptr_t p, size_t len)
{
    for (uintptr_t line = p & ~(uintptr_t)63; line < p + len; line += 64)
        __builtin_prefetch((const void *)line);
}

size_t rmi_find_group(const rmi *m, const uint64_t *keys, size_t cnt, const uint64_t *q,
                      size_t *pos, const void *side, size_t stride, size_t *fallbacks)
{
    const rmi_leaf *leaf[RMI_GROUP];
    size_t lo[RMI_GROUP], hi[RMI_GROUP], probed = 0, missed = 0;
    /* A leaf is 24 bytes, its end the next leaf's start: two lines at most.
     * Worth loading ahead only when the leaves are unlikely to be in cache
     * (measured with bench/getmany: 17 % more gets a second at 20M keys,
     * 2.9 MB of leaves; 5 % fewer at 2M keys, 290 KB). */
    int far = m->nleaves * sizeof *m->leaves > RMI_NEAR_LEAVES_BYTES;
    for (size_t i = 0; i < cnt; i++) {
        leaf[i] = &m->leaves[rmi_root(m, q[i])];
        if (far)
            rmi_prefetch_span((uintptr_t)leaf[i], 2 * sizeof *leaf[i]);
    }
    for (size_t i = 0; i < cnt; i++) {
        rmi_window_in(leaf[i], q[i], &lo[i], &hi[i]);
        rmi_prefetch_keys(keys, lo[i], hi[i]);
    }
    /* The side entry's first bytes are what its reader needs first: the
     * head of a value, or all of a reference. Not before the probe: a
     * prefetch at the predicted position often misses the entry's line,
     * and absent keys have none, so the guess costs more than it saves. */
    size_t span = stride < RMI_SIDE_SPAN / 2 ? stride : RMI_SIDE_SPAN / 2;
    for (size_t i = 0; i < cnt; i++) {
        int fallback;
        size_t r = m->probe(keys, lo[i], hi[i], q[i]);
        pos[i] = rmi_settle(keys, m->n, r, q[i], &fallback);
        probed += hi[i] - lo[i];
        missed += (size_t)fallback;
        if (pos[i] != SIZE_MAX && span)
            rmi_prefetch_span((uintptr_t)side + pos[i] * stride, span);
    }
    *fallbacks = missed;
    return probed;
}

size_t rmi_lower_bound(const rmi *m, const uint64_t *keys, uint64_t key, size_t *probed,
                       int *fallback)
{
    return rmi_lower_bound_with(m, keys, key, m->probe, probed, fallback);
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
    if (!m)
        return 0;
    size_t t = m->table ? (((size_t)1 << m->tbits) + 1) * sizeof *m->table : 0;
    return sizeof *m + (m->nleaves + 1) * sizeof *m->leaves + t;
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
    if (m->kind == RMI_TABLE)
        rmi_put64(dst + 40, (uint64_t)m->shift | (uint64_t)m->tbits << 8 | (uint64_t)m->tlog << 16);
    else
        rmi_put64(dst + 40, (uint64_t)m->off);
    uint8_t *p = dst + RMI_HEADER;
    for (size_t j = 0; j < m->nleaves; j++, p += RMI_LEAF_BYTES) {
        const rmi_leaf *lf = &m->leaves[j];
        rmi_put64(p + 0, lf->kbase);
        rmi_put64(p + 8, rmi_dbits((double)lf->slope));
        rmi_put64(p + 16, (uint64_t)(int64_t)lf->off);
        rmi_put64(p + 24, (uint64_t)rmi_start(lf));
        rmi_put32(p + 32, rmi_elo(lf) == RMI_EMASK ? RMI_ERR_UNBOUNDED : rmi_elo(lf));
        rmi_put32(p + 36, rmi_ehi(lf) == RMI_EMASK ? RMI_ERR_UNBOUNDED : rmi_ehi(lf));
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
    if (rmi_get64(src + 8) != (uint64_t)n || (uint64_t)n > RMI_START_MASK)
        goto fail;
    size_t L = rmi_get32(src + 16);
    if (L < 1 || L > (len - RMI_HEADER) / RMI_LEAF_BYTES ||
        len != RMI_HEADER + L * RMI_LEAF_BYTES)
        goto fail;
    uint32_t kind = rmi_get32(src + 20);
    if (kind != RMI_LINEAR && kind != RMI_LOG && kind != RMI_TABLE)
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
    if (m->kind == RMI_TABLE) {
        /* offset = shift | tbits << 8 | log << 16; 2^tbits <= L buckets */
        uint64_t g = (uint64_t)m->off;
        m->shift = (unsigned)(g & 0xff);
        m->tbits = (unsigned)(g >> 8 & 0xff);
        m->tlog = (unsigned)(g >> 16);
        if (m->slope != 0 || g >> 17 || m->shift > 63 || m->tbits > 30 ||
            ((size_t)1 << m->tbits) > L)
            goto fail;
        m->off = 0;
    }
    const uint8_t *p = src + RMI_HEADER;
    uint64_t prev = 0;
    for (size_t j = 0; j < L; j++, p += RMI_LEAF_BYTES) {
        rmi_leaf *lf = &m->leaves[j];
        double slope = rmi_bitsd(rmi_get64(p + 8));
        int64_t off = (int64_t)rmi_get64(p + 16);
        uint64_t start = rmi_get64(p + 24);
        uint32_t elo = rmi_get32(p + 32), ehi = rmi_get32(p + 36);
        if (!rmi_slope_ok(slope) || !rmi_off_ok(off))
            goto fail;
        if (start < prev || start > (uint64_t)n || (j == 0 && start != 0))
            goto fail;
        prev = start;
        lf->kbase = rmi_get64(p + 0);
        lf->slope = (float)slope;
        lf->off = (int32_t)(off < -RMI_OFF_MAX ? -RMI_OFF_MAX : off > RMI_OFF_MAX ? RMI_OFF_MAX : off);
        /* A line the in-memory form cannot hold exactly, or an error too
         * wide for it, gets the whole leaf as its window: still correct. */
        if ((double)lf->slope != slope || lf->off != off || elo >= RMI_EMASK || ehi >= RMI_EMASK)
            elo = ehi = RMI_EMASK;
        rmi_set_pos(lf, start, elo, ehi);
    }
    rmi_set_pos(&m->leaves[L], (uint64_t)n, 0, 0);
    if (m->kind == RMI_TABLE && rmi_make_table(m) != KV_OK) {
        rc = KV_ENOMEM;
        goto fail;
    }
    rmi_finish(m);
    *out = m;
    return KV_OK;
fail:
    rmi_free(m);
    return rc;
}
