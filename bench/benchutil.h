/*
 * benchutil.h — what every C benchmark in bench/ shares: the key generator,
 * the clock, a value pattern checkable from its key, sorted-array helpers
 * for the baselines, a pointer chase that measures memory latency, and the
 * argument and temporary-directory chores. Header-only (static functions).
 */
#ifndef KYRO_BENCHUTIL_H
#define KYRO_BENCHUTIL_H

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A keyed pattern: one hash of the key, then a word sequence from it, so a
 * value that belongs to another key (or is stale, shifted or truncated)
 * does not match. */
static inline void fill_value(uint64_t key, unsigned char *buf, size_t len)
{
    uint64_t s = key ^ 0x5851F42D4C957F2Dull, h = splitmix64(&s);
    size_t i = 0;
    for (uint64_t w = 0; i + 8 <= len; i += 8, w++) {
        uint64_t x = h + w * 0x9E3779B97F4A7C15ull;
        memcpy(buf + i, &x, 8);
    }
    for (; i < len; i++)
        buf[i] = (unsigned char)(h >> (8 * (i & 7)));
}

static inline int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* First index i with keys[i] >= key, n if none. */
static inline size_t lower_bound(const uint64_t *keys, size_t n, uint64_t key)
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

static inline void shuffle(uint64_t *a, size_t n, uint64_t seed)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(&seed) % i);
        uint64_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* Words per 64-byte line, the pointer chase's unit. */
#define CHASE_LINE_WORDS 8

/* Link `lines` 64-byte lines of block into one random cycle, using order
 * (room for `lines` entries) as scratch: each line's first word holds the
 * word index of the next line. Returns the word index of a line on it. */
static inline uint64_t chase_link(uint64_t *block, uint64_t *order, size_t lines, uint64_t seed)
{
    memset(block, 0, lines * 64);
    for (size_t i = 0; i < lines; i++)
        order[i] = i;
    shuffle(order, lines, seed);
    for (size_t i = 0; i < lines; i++)
        block[order[i] * CHASE_LINE_WORDS] = order[(i + 1) % lines] * CHASE_LINE_WORDS;
    return order[0] * CHASE_LINE_WORDS;
}

/* Follow the cycle `steps` loads from word index p, each load waiting for
 * the one before; returns where it stopped (use it, or the loads can go). */
static inline uint64_t chase(const uint64_t *block, uint64_t p, long steps)
{
    for (long i = 0; i < steps; i++)
        p = block[p];
    return p;
}

/* A whole decimal number: 1 with *out set, or 0 (NULL, empty, other text). */
static inline int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || (v == ULLONG_MAX && errno == ERANGE))
        return 0;
    *out = v;
    return 1;
}

/* Remove a benchmark's temporary database directory (flat: files only). */
static inline void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    if (d) {
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            unlinkat(dirfd(d), e->d_name, 0);
        }
        closedir(d);
    }
    rmdir(dir);
}

#endif
