/*
 * test_sort.c — sort_pairs against qsort: every size from 0 to 300 and some
 * large ones, with many equal keys (order then by tag), sorted and reversed
 * input, 0 and UINT64_MAX.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "sort.h"

static uint64_t rng = 12345;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int cmp_pair(const void *a, const void *b)
{
    const sort_pair *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->tag < y->tag ? -1 : x->tag > y->tag;
}

static void check(sort_pair *p, size_t n)
{
    sort_pair *want = malloc((n ? n : 1) * sizeof *want);
    assert_non_null(want);
    memcpy(want, p, n * sizeof *p);
    qsort(want, n, sizeof *want, cmp_pair);
    sort_pairs(p, n);
    assert_memory_equal(p, want, n * sizeof *p);
    free(want);
}

static void test_against_qsort(void **state)
{
    (void)state;
    static sort_pair p[100000];
    for (size_t n = 0; n <= 300; n++) {
        for (int shape = 0; shape < 4; shape++) {
            for (size_t i = 0; i < n; i++) {
                uint64_t k = shape == 0 ? rnd() : shape == 1 ? rnd() % 7 : shape == 2 ? i : n - i;
                if (i % 11 == 3)
                    k = i % 2 ? UINT64_MAX : 0;
                p[i] = (sort_pair){k, rnd() % 5};
            }
            check(p, n);
        }
    }
    size_t big[] = {1000, 4096, 100000};
    for (size_t b = 0; b < 3; b++) {
        for (size_t i = 0; i < big[b]; i++)
            p[i] = (sort_pair){rnd() % (big[b] / 4), i};
        check(p, big[b]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_against_qsort)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
