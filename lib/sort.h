/*
 * sort.h — sorting (key, tag) pairs by key, then tag.
 *
 * The writer sorts on hot paths (a batch before it is applied, the keys
 * replay inserted before they are linked); the comparison is inlined here
 * because qsort's call per comparison costs more than what those sorts
 * save. The tag says what the pair stands for: a position, a pointer.
 */
#ifndef KYRO_SORT_H
#define KYRO_SORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t key;
    uint64_t tag;
} sort_pair;

/* In place, not stable; equal (key, tag) pairs are interchangeable. */
void sort_pairs(sort_pair *p, size_t n);

#endif
