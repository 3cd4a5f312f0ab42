/*
 * sort.c — quicksort of (key, tag) pairs: median of three, insertion sort
 * below 16, recursion only into the smaller side (O(log n) stack).
 */
#include "sort.h"

static int pair_less(const sort_pair *x, const sort_pair *y)
{
    return x->key != y->key ? x->key < y->key : x->tag < y->tag;
}

static void swap_pairs(sort_pair *a, sort_pair *b)
{
    sort_pair t = *a;
    *a = *b;
    *b = t;
}

void sort_pairs(sort_pair *p, size_t n)
{
    while (n > 16) {
        size_t mid = n / 2;
        if (pair_less(&p[mid], &p[0]))
            swap_pairs(&p[mid], &p[0]);
        if (pair_less(&p[n - 1], &p[0]))
            swap_pairs(&p[n - 1], &p[0]);
        if (pair_less(&p[n - 1], &p[mid]))
            swap_pairs(&p[n - 1], &p[mid]);
        sort_pair pivot = p[mid];
        size_t i = 0, j = n - 1;
        for (;;) {
            while (pair_less(&p[i], &pivot))
                i++;
            while (pair_less(&pivot, &p[j]))
                j--;
            if (i >= j)
                break;
            swap_pairs(&p[i], &p[j]);
            i++;
            j--;
        }
        size_t left = j + 1;
        if (left < n - left) {
            sort_pairs(p, left);
            p += left;
            n -= left;
        } else {
            sort_pairs(p + left, n - left);
            n = left;
        }
    }
    for (size_t i = 1; i < n; i++) {
        sort_pair x = p[i];
        size_t j = i;
        for (; j > 0 && pair_less(&x, &p[j - 1]); j--)
            p[j] = p[j - 1];
        p[j] = x;
    }
}
