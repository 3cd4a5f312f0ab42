/*
 * memlat.c — the machine's cost of one random memory access, the floor
 * under every get that misses the cache.
 *
 * For each size, a block of that many MiB is linked into one random cycle
 * of 64-byte lines (4 KiB pages, as the library's and the baselines'
 * arrays get). Then, timed: one pointer chase around the cycle (each load
 * waits for the one before: the latency of a cache, TLB and memory miss),
 * and two chases interleaved (two independent loads in flight: how much of
 * that latency the CPU overlaps when it has independent work).
 *
 *   memlat [MIB ...]          default: 16 32 256
 *
 * Prints ns per access for both, one line per size.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"

#define STEPS 4000000

static int measure(size_t mib)
{
    size_t lines = mib * 1024 * 1024 / 64;
    if (lines < 2) {
        fprintf(stderr, "memlat: %zu MiB is too small\n", mib);
        return -1;
    }
    uint64_t *block = aligned_alloc(64, lines * 64);
    uint64_t *order = malloc(lines * sizeof *order);
    if (!block || !order) {
        fprintf(stderr, "memlat: out of memory for %zu MiB\n", mib);
        free(block);
        free(order);
        return -1;
    }
    uint64_t p = chase_link(block, order, lines, 0x6D656D6C6174ull + mib);
    /* The second chain starts half a cycle on, far from the first. */
    uint64_t a = p, b = order[lines / 2] * CHASE_LINE_WORDS;
    double t0 = now();
    p = chase(block, p, STEPS);
    double one = (now() - t0) / STEPS * 1e9;

    t0 = now();
    for (int i = 0; i < STEPS / 2; i++) {
        a = block[a];
        b = block[b];
    }
    double two = (now() - t0) / STEPS * 1e9;

    /* The chases' ends are printed so that the loads cannot be dropped. */
    printf("%6zu MiB: one chain %6.1f ns/access, two chains %6.1f ns/access  (end %llu)\n", mib,
           one, two, (unsigned long long)((p ^ a ^ b) % 10));
    free(block);
    free(order);
    return 0;
}

int main(int argc, char **argv)
{
    static const size_t defaults[] = {16, 32, 256};
    int failed = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            char *end;
            unsigned long long v = strtoull(argv[i], &end, 10);
            if (*end || v == 0 || v > 65536) {
                fprintf(stderr, "usage: %s [MIB ...]  (each 1..65536)\n", argv[0]);
                return 2;
            }
            failed |= measure((size_t)v) != 0;
        }
    } else {
        for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
            failed |= measure(defaults[i]) != 0;
    }
    return failed;
}
