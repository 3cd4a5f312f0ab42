/* test_probe.c — every probe kernel against a linear-scan reference. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, setenv */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "probe.h"
#include "testutil.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t ref_lower_bound(const uint64_t *keys, size_t lo, size_t hi, uint64_t key)
{
    for (size_t i = lo; i < hi; i++)
        if (keys[i] >= key)
            return i;
    return hi;
}

typedef struct {
    const char *name;
    probe_fn fn;
} kernel;

/* Every kernel this CPU runs, plus whatever probe_best picked. */
static size_t kernels(kernel *k)
{
    size_t n = 0;
    k[n++] = (kernel){ "scalar", probe_scalar };
    if (probe_avx2())
        k[n++] = (kernel){ "avx2", probe_avx2() };
    if (probe_avx512())
        k[n++] = (kernel){ "avx512", probe_avx512() };
    k[n++] = (kernel){ "best", probe_best() };
    return n;
}

/* n strictly ascending keys: 0 and UINT64_MAX at the ends, values on both
 * sides of 2^63 (where a signed compare goes wrong), runs of consecutive
 * integers (where an off-by-one shows) and wide gaps. */
static uint64_t *make_keys(size_t n)
{
    uint64_t *k = malloc(n * sizeof *k);
    assert_non_null(k);
    size_t m = 0;
    while (m < n) {
        uint64_t r = rnd();
        switch (r % 4) {
        case 0:
            k[m++] = rnd(); /* anywhere */
            break;
        case 1:
            k[m++] = (1ull << 63) + (rnd() % 4096) - 2048; /* around the sign bit */
            break;
        default: { /* a run of consecutive keys */
            uint64_t base = rnd(), len = 1 + rnd() % 16;
            for (uint64_t j = 0; j < len && m < n && base + j >= base; j++)
                k[m++] = base + j;
        }
        }
    }
    k[0] = 0;
    k[n - 1] = UINT64_MAX;
    for (;;) { /* sort, drop duplicates, refill the tail, until n distinct */
        qsort(k, n, sizeof *k, tu_cmp_u64);
        size_t u = 1;
        for (size_t i = 1; i < n; i++)
            if (k[i] != k[u - 1])
                k[u++] = k[i];
        if (u == n)
            return k;
        for (size_t i = u; i < n; i++)
            k[i] = rnd();
    }
}

/* Queries that matter for keys[lo..hi): below, above, each boundary, each
 * key and its neighbours (sampled for big windows), and random keys. */
static void check_window(const kernel *ks, size_t nk, const uint64_t *keys, size_t lo, size_t hi)
{
    uint64_t q[64];
    size_t nq = 0;
    q[nq++] = 0;
    q[nq++] = 1;
    q[nq++] = UINT64_MAX;
    q[nq++] = UINT64_MAX - 1;
    q[nq++] = 1ull << 63;
    q[nq++] = (1ull << 63) - 1;
    for (int i = 0; i < 8; i++)
        q[nq++] = rnd();
    if (hi > lo) {
        q[nq++] = keys[lo];
        q[nq++] = keys[lo] - 1;
        q[nq++] = keys[hi - 1];
        q[nq++] = keys[hi - 1] + 1;
        for (int i = 0; i < 12; i++) {
            uint64_t k = keys[lo + rnd() % (hi - lo)];
            q[nq++] = k;
            q[nq++] = k - 1;
            q[nq++] = k + 1;
        }
    }
    for (size_t i = 0; i < nq; i++) {
        size_t want = ref_lower_bound(keys, lo, hi, q[i]);
        for (size_t j = 0; j < nk; j++) {
            size_t got = ks[j].fn(keys, lo, hi, q[i]);
            if (got != want)
                fail_msg("%s: window [%zu,%zu) key %llu: got %zu want %zu", ks[j].name, lo, hi,
                         (unsigned long long)q[i], got, want);
        }
    }
}

/* Every window size 0..3000 at a random place, at the start and at the end
 * of the array; the array is malloc'd, so ASan sees any read past it. */
static void test_probe_every_size(void **state)
{
    (void)state;
    kernel ks[4];
    size_t nk = kernels(ks);
    const size_t n = 3200, maxw = 3000;
    uint64_t *keys = make_keys(n);
    for (size_t w = 0; w <= maxw; w++) {
        size_t lo = rnd() % (n - w + 1);
        check_window(ks, nk, keys, lo, lo + w);
        check_window(ks, nk, keys, 0, w);
        check_window(ks, nk, keys, n - w, n);
    }
    free(keys);
}

/* Windows copied into an exactly-sized heap block and into memory fenced
 * by PROT_NONE pages on both sides: an over- or under-read faults. */
static void test_probe_fenced(void **state)
{
    (void)state;
    kernel ks[4];
    size_t nk = kernels(ks);
    long pg = sysconf(_SC_PAGESIZE);
    assert_true(pg > 0);
    size_t page = (size_t)pg, body = 8 * page;
    uint8_t *map = mmap(NULL, body + 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
    assert_true(map != MAP_FAILED);
    assert_int_equal(mprotect(map, page, PROT_NONE), 0);
    assert_int_equal(mprotect(map + page + body, page, PROT_NONE), 0);
    uint64_t *lo_fence = (uint64_t *)(void *)(map + page);          /* page before it is fenced */
    uint64_t *hi_end = (uint64_t *)(void *)(map + page + body);      /* first fenced word */
    const size_t n = 1500;
    uint64_t *keys = make_keys(n);
    for (size_t w = 0; w <= 600; w++) {
        size_t off = rnd() % (n - w + 1);
        uint64_t *exact = malloc(w ? w * sizeof *exact : 1);
        assert_non_null(exact);
        memcpy(exact, keys + off, w * sizeof *exact);
        check_window(ks, nk, exact, 0, w);
        free(exact);

        memcpy(lo_fence, keys + off, w * sizeof *keys);
        check_window(ks, nk, lo_fence, 0, w);
        memcpy(hi_end - w, keys + off, w * sizeof *keys);
        check_window(ks, nk, hi_end - w, 0, w);
        /* lo > 0: the kernel must start reading at keys + lo, not keys */
        if (w >= 2)
            check_window(ks, nk, hi_end - w, 1, w);
    }
    free(keys);
    munmap(map, body + 2 * page);
}

/* Large windows and all-equal-side queries on an array with 0 and MAX. */
static void test_probe_large_and_extremes(void **state)
{
    (void)state;
    kernel ks[4];
    size_t nk = kernels(ks);
    const size_t n = 100000;
    uint64_t *keys = make_keys(n);
    assert_true(keys[0] == 0 && keys[n - 1] == UINT64_MAX);
    for (size_t j = 0; j < nk; j++) {
        assert_int_equal(ks[j].fn(keys, 0, n, 0), 0);
        assert_int_equal(ks[j].fn(keys, 0, n, 1), 1);
        assert_int_equal(ks[j].fn(keys, 0, n, UINT64_MAX), n - 1);
        assert_int_equal(ks[j].fn(keys, 1, n - 1, 0), 1);             /* below everything */
        assert_int_equal(ks[j].fn(keys, 1, n - 1, UINT64_MAX), n - 1); /* above everything */
        assert_int_equal(ks[j].fn(keys, 7, 7, 12345), 7);              /* empty window */
        for (int t = 0; t < 2000; t++) {
            size_t i = (size_t)(rnd() % n);
            assert_int_equal(ks[j].fn(keys, 0, n, keys[i]), i);
            if (i > 0 && keys[i] - 1 != keys[i - 1])
                assert_int_equal(ks[j].fn(keys, 0, n, keys[i] - 1), i);
            if (i + 1 < n && keys[i] + 1 != keys[i + 1])
                assert_int_equal(ks[j].fn(keys, 0, n, keys[i] + 1), i + 1);
        }
    }
    for (int t = 0; t < 200; t++) {
        size_t lo = (size_t)(rnd() % n), hi = lo + (size_t)(rnd() % (n - lo + 1));
        check_window(ks, nk, keys, lo, hi);
    }
    free(keys);
}

/* Dense keys 0..n-1: every query in range has an exact answer. */
static void test_probe_dense(void **state)
{
    (void)state;
    kernel ks[4];
    size_t nk = kernels(ks);
    const size_t n = 1000;
    uint64_t *keys = malloc(n * sizeof *keys);
    assert_non_null(keys);
    for (size_t i = 0; i < n; i++)
        keys[i] = i * 2;
    for (size_t j = 0; j < nk; j++)
        for (size_t lo = 0; lo < 70; lo++)
            for (size_t hi = lo; hi < lo + 70; hi++)
                for (uint64_t key = 0; key < 2 * (hi + 2); key++) {
                    size_t want = key / 2 + (key & 1);
                    want = want < lo ? lo : want > hi ? hi : want;
                    assert_int_equal(ks[j].fn(keys, lo, hi, key), want);
                }
    free(keys);
}

static int choose_in_child(const char *env, char *name, size_t cap)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(fd[0]);
        if (env)
            setenv("KYRO_PROBE", env, 1);
        else
            unsetenv("KYRO_PROBE");
        const char *got = probe_best_name();
        probe_fn f = probe_best();
        int consistent = (strcmp(got, "scalar") == 0 && f == probe_scalar) ||
                         (strcmp(got, "avx2") == 0 && f == probe_avx2()) ||
                         (strcmp(got, "avx512") == 0 && f == probe_avx512());
        if (!consistent || write(fd[1], got, strlen(got) + 1) < 0)
            _exit(1);
        _exit(0);
    }
    close(fd[1]);
    ssize_t r = read(fd[0], name, cap - 1);
    close(fd[0]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || r <= 0)
        return -1;
    name[r] = 0;
    return 0;
}

/* The choice: the best supported kernel by default, KYRO_PROBE forces a
 * supported one, and names match functions. Each choice runs in a fresh
 * child, since the choice is made once per process. */
static void test_probe_choice(void **state)
{
    (void)state;
    char name[32];
    const char *best = probe_avx512() ? "avx512" : probe_avx2() ? "avx2" : "scalar";
    assert_int_equal(choose_in_child(NULL, name, sizeof name), 0);
    assert_string_equal(name, best);
    assert_int_equal(choose_in_child("scalar", name, sizeof name), 0);
    assert_string_equal(name, "scalar");
    assert_int_equal(choose_in_child("avx2", name, sizeof name), 0);
    assert_string_equal(name, probe_avx2() ? "avx2" : best);
    assert_int_equal(choose_in_child("avx512", name, sizeof name), 0);
    assert_string_equal(name, probe_avx512() ? "avx512" : best);
    assert_int_equal(choose_in_child("bogus", name, sizeof name), 0);
    assert_string_equal(name, best);
    /* this process: stable across calls */
    assert_true(probe_best() == probe_best());
    assert_string_equal(probe_best_name(), probe_best_name());
#if defined(__x86_64__)
    /* every x86-64 CPU this library targets in CI has AVX2; say so if not */
    if (!probe_avx2())
        print_message("note: no AVX2 on this CPU, SIMD kernels untested\n");
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_choice),
        cmocka_unit_test(test_probe_every_size),
        cmocka_unit_test(test_probe_fenced),
        cmocka_unit_test(test_probe_large_and_extremes),
        cmocka_unit_test(test_probe_dense),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
