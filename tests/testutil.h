/*
 * testutil.h — helpers shared by the whole-database tests (test_api,
 * test_db_model, test_crash, test_corrupt, test_db_threads).
 *
 * Everything here is static inline and uses only the public header, libc and
 * POSIX, so each test program stays one self-contained process.
 *
 *   - temporary directories: tu_mkdtemp() (mkdtemp under /tmp),
 *     tu_mkdtemp_fast() (under $KYRO_TEST_DIR, else /dev/shm, else /tmp) and
 *     tu_rmrf() (recursive removal that never follows symlinks);
 *   - a seeded splitmix64 generator (tu_rng) and the splitmix finaliser
 *     tu_mix64() used as a cheap 64-bit hash;
 *   - self-checking values: tu_val_fill(buf, len, key, tag) writes bytes
 *     determined only by (key, tag, len). A value of TU_VAL_HDR bytes or more
 *     starts with its key, its tag and a checksum over everything else, so
 *     tu_val_decode() can tell from the bytes alone which write produced them
 *     (and that they are intact); shorter values can only be compared with
 *     an expected (key, tag) by tu_val_matches();
 *   - the test scale: KYRO_TEST_SCALE=small (sanitizer runs) shrinks the
 *     work, see tu_small() and tu_scaled();
 *   - tu_model, a reference map (sorted array of key -> (tag, len)), and
 *     TU_RC / TU_OK, status checks that print both codes' text.
 */
#ifndef KYRO_TESTUTIL_H
#define KYRO_TESTUTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, nftw */
#endif

#include <errno.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TU_PATH 256

/* ---- scale and environment ---------------------------------------------- */

/* True when KYRO_TEST_SCALE=small: sanitizer runs, keep the work modest. */
static inline bool tu_small(void)
{
    const char *s = getenv("KYRO_TEST_SCALE");
    return s && strcmp(s, "small") == 0;
}

/* n normally, n / 5 (at least 1) at the small scale. */
static inline size_t tu_scaled(size_t n)
{
    if (!tu_small())
        return n;
    return n / 5 ? n / 5 : 1;
}

/* An unsigned integer from the environment (decimal or 0x hex), else def. */
static inline uint64_t tu_env_u64(const char *name, uint64_t def)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return def;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        return def;
    return (uint64_t)v;
}

/* ---- time ---------------------------------------------------------------- */

static inline uint64_t tu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void tu_sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- temporary directories ----------------------------------------------- */

/* Create /tmp/kyro-TAG-XXXXXX; the name goes to buf (TU_PATH bytes). */
static inline int tu_mkdtemp(char *buf, const char *tag)
{
    snprintf(buf, TU_PATH, "/tmp/kyro-%s-XXXXXX", tag);
    return mkdtemp(buf) ? 0 : -1;
}

/*
 * Like tu_mkdtemp, but under $KYRO_TEST_DIR if set, else /dev/shm when it
 * is a writable directory (tmpfs: fsync costs nothing, so tests that fsync
 * on every write run many more cycles), else /tmp. For tests that kill
 * processes, not the machine: a tmpfs keeps everything a process crash
 * keeps.
 */
static inline int tu_mkdtemp_fast(char *buf, const char *tag)
{
    const char *base = getenv("KYRO_TEST_DIR");
    struct stat st;
    if (!base || !*base)
        base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
                   ? "/dev/shm"
                   : "/tmp";
    snprintf(buf, TU_PATH, "%s/kyro-%s-XXXXXX", base, tag);
    return mkdtemp(buf) ? 0 : -1;
}

static inline int tu_rmrf_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

/* Remove path and everything below it; a missing path is fine. */
static inline int tu_rmrf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    nftw(path, tu_rmrf_cb, 16, FTW_DEPTH | FTW_PHYS);
    return lstat(path, &st) == 0 ? -1 : 0;
}

/* Copy src into dst (cap bytes), aborting rather than truncating. */
static inline void tu_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        abort();
    memcpy(dst, src, n + 1);
}

/* buf = dir/name */
static inline const char *tu_join(char *buf, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + 1 + b >= TU_PATH)
        abort(); /* test paths are short; never silently truncate */
    memmove(buf, dir, a);
    buf[a] = '/';
    memcpy(buf + a + 1, name, b + 1);
    return buf;
}

/* ---- random numbers ------------------------------------------------------ */

/* The splitmix64 finaliser: a bijection on 64-bit integers, used as a hash. */
static inline uint64_t tu_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    uint64_t s;
} tu_rng;

static inline tu_rng tu_rng_seed(uint64_t seed)
{
    tu_rng r = {seed};
    return r;
}

/* splitmix64 */
static inline uint64_t tu_next(tu_rng *r)
{
    r->s += 0x9E3779B97F4A7C15ull;
    return tu_mix64(r->s);
}

/* Uniform in [0, n); n == 0 gives 0. */
static inline uint64_t tu_below(tu_rng *r, uint64_t n)
{
    if (n == 0)
        return 0;
    return (uint64_t)(((unsigned __int128)tu_next(r) * n) >> 64);
}

/* Uniform in [lo, hi] (inclusive). */
static inline uint64_t tu_range(tu_rng *r, uint64_t lo, uint64_t hi)
{
    if (hi - lo == UINT64_MAX)
        return tu_next(r);
    return lo + tu_below(r, hi - lo + 1);
}

/* qsort and bsearch order for uint64_t keys. */
static inline int tu_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* True with probability per_mille / 1000. */
static inline bool tu_chance(tu_rng *r, unsigned per_mille)
{
    return tu_below(r, 1000) < per_mille;
}

/* ---- self-checking values ------------------------------------------------- */

/*
 * Layout of a value of len >= TU_VAL_HDR bytes (little-endian):
 *   [0, 8)    key the value was written under
 *   [8, 16)   tag: whatever the test uses to tell writes apart
 *   [16, 24)  check = hash of (key, tag, len, bytes [24, len))
 *   [24, len) pseudo-random bytes seeded by (key, tag, len)
 * A shorter value is the first len bytes of the pseudo-random stream.
 */
#define TU_VAL_HDR 24

static inline void tu_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t tu_rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static inline uint64_t tu_val_seed(uint64_t key, uint64_t tag, size_t len)
{
    return tu_mix64(key ^ tu_mix64(tag + 0x51ED270B27ull) ^ tu_mix64((uint64_t)len * 0x2545F4914F6CDD1Dull));
}

/* Fill p[0, n) with the stream of seed. */
static inline void tu_stream(uint8_t *p, size_t n, uint64_t seed)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        seed += 0x9E3779B97F4A7C15ull;
        uint64_t w = tu_mix64(seed);
        memcpy(p + i, &w, 8);
    }
    if (i < n) {
        seed += 0x9E3779B97F4A7C15ull;
        uint64_t w = tu_mix64(seed);
        memcpy(p + i, &w, n - i);
    }
}

static inline uint64_t tu_hash_bytes(const uint8_t *p, size_t n, uint64_t h)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = tu_mix64(h ^ w) + 0x9E3779B97F4A7C15ull;
    }
    uint64_t w = 0;
    memcpy(&w, p + i, n - i);
    return tu_mix64(h ^ w ^ ((uint64_t)n << 56));
}

static inline uint64_t tu_val_check(uint64_t key, uint64_t tag, size_t len, const uint8_t *payload)
{
    uint64_t h = tu_mix64(key) ^ tu_mix64(tag ^ 0xC0FFEEull) ^ (uint64_t)len;
    return tu_hash_bytes(payload, len - TU_VAL_HDR, h);
}

/* Write the value of (key, tag) with len bytes into buf. */
static inline void tu_val_fill(void *buf, size_t len, uint64_t key, uint64_t tag)
{
    uint8_t *p = (uint8_t *)buf;
    uint64_t seed = tu_val_seed(key, tag, len);
    if (len < TU_VAL_HDR) {
        tu_stream(p, len, seed);
        return;
    }
    tu_stream(p + TU_VAL_HDR, len - TU_VAL_HDR, seed);
    tu_le64(p, key);
    tu_le64(p + 8, tag);
    tu_le64(p + 16, tu_val_check(key, tag, len, p + TU_VAL_HDR));
}

/* A malloc'd value (never NULL; at least one byte is allocated). */
static inline uint8_t *tu_val_new(size_t len, uint64_t key, uint64_t tag)
{
    uint8_t *p = (uint8_t *)malloc(len ? len : 1);
    if (!p)
        abort();
    tu_val_fill(p, len, key, tag);
    return p;
}

/* True when (buf, len) is exactly the value of (key, tag) with explen bytes. */
static inline bool tu_val_matches(const void *buf, size_t len, uint64_t key, uint64_t tag, size_t explen)
{
    if (len != explen)
        return false;
    if (len == 0)
        return true;
    if (!buf)
        return false;
    const uint8_t *p = (const uint8_t *)buf;
    if (len >= TU_VAL_HDR) {
        if (tu_rd64(p) != key || tu_rd64(p + 8) != tag)
            return false;
        if (tu_rd64(p + 16) != tu_val_check(key, tag, len, p + TU_VAL_HDR))
            return false;
        return true; /* the checksum covers every other byte */
    }
    uint8_t tmp[TU_VAL_HDR];
    tu_stream(tmp, len, tu_val_seed(key, tag, len));
    return memcmp(tmp, p, len) == 0;
}

/*
 * For a value of at least TU_VAL_HDR bytes read under key: true when it is
 * intact and was written under that key; its tag goes to *tag.
 */
static inline bool tu_val_decode(const void *buf, size_t len, uint64_t key, uint64_t *tag)
{
    if (len < TU_VAL_HDR || !buf)
        return false;
    const uint8_t *p = (const uint8_t *)buf;
    if (tu_rd64(p) != key)
        return false;
    uint64_t t = tu_rd64(p + 8);
    if (tu_rd64(p + 16) != tu_val_check(key, t, len, p + TU_VAL_HDR))
        return false;
    if (tag)
        *tag = t;
    return true;
}


/* ---- a reference model: a sorted array of (key, tag, len) ----------------- */

typedef struct {
    uint64_t key;
    uint64_t tag;
    size_t len;
} tu_ent;

typedef struct {
    tu_ent *e;
    size_t n, cap;
} tu_model;

/* Index of the first entry with key >= key (n if none). */
static inline size_t tu_model_lower(const tu_model *m, uint64_t key)
{
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->e[mid].key < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The entry of key, or NULL. */
static inline const tu_ent *tu_model_find(const tu_model *m, uint64_t key)
{
    size_t i = tu_model_lower(m, key);
    return i < m->n && m->e[i].key == key ? &m->e[i] : NULL;
}

static inline void tu_model_put(tu_model *m, uint64_t key, uint64_t tag, size_t len)
{
    size_t i = tu_model_lower(m, key);
    if (i < m->n && m->e[i].key == key) {
        m->e[i].tag = tag;
        m->e[i].len = len;
        return;
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->e = (tu_ent *)realloc(m->e, m->cap * sizeof *m->e);
        if (!m->e)
            abort();
    }
    memmove(&m->e[i + 1], &m->e[i], (m->n - i) * sizeof *m->e);
    m->e[i].key = key;
    m->e[i].tag = tag;
    m->e[i].len = len;
    m->n++;
}

static inline void tu_model_del(tu_model *m, uint64_t key)
{
    size_t i = tu_model_lower(m, key);
    if (i < m->n && m->e[i].key == key) {
        memmove(&m->e[i], &m->e[i + 1], (m->n - i - 1) * sizeof *m->e);
        m->n--;
    }
}

static inline void tu_model_copy(tu_model *dst, const tu_model *src)
{
    dst->n = src->n;
    dst->cap = src->n ? src->n : 1;
    dst->e = (tu_ent *)malloc(dst->cap * sizeof *dst->e);
    if (!dst->e)
        abort();
    if (src->n)
        memcpy(dst->e, src->e, src->n * sizeof *src->e);
}

static inline void tu_model_free(tu_model *m)
{
    free(m->e);
    m->e = NULL;
    m->n = m->cap = 0;
}

/* ---- status checks (cmocka) --------------------------------------------- */

#ifdef fail_msg
/* Fail with both codes spelled out when expr does not return want. */
#define TU_RC(expr, want)                                                                      \
    do {                                                                                       \
        int tu_rc_ = (expr);                                                                   \
        int tu_want_ = (want);                                                                 \
        if (tu_rc_ != tu_want_)                                                                \
            fail_msg("%s:%d: %s returned %d (%s), expected %d (%s)", __FILE__, __LINE__, #expr, \
                     tu_rc_, kv_strerror(tu_rc_), tu_want_, kv_strerror(tu_want_));           \
    } while (0)
#define TU_OK(expr) TU_RC(expr, 0)
#endif

#endif /* KYRO_TESTUTIL_H */
