/*
 * probe.h — last-mile search: lower bound of a key in a small sorted window.
 *
 * Three kernels (scalar, AVX2, AVX-512), chosen once at run time by cpuid.
 * All return the same answer: the first index i in [lo, hi) with
 * keys[i] >= key, or hi if there is none. keys[lo..hi) is sorted ascending;
 * nothing outside it is read. Kernels are pure: any thread, any time. Names
 * are static strings.
 */
#ifndef KYRO_PROBE_H
#define KYRO_PROBE_H

#include <stddef.h>
#include <stdint.h>

typedef size_t (*probe_fn)(const uint64_t *keys, size_t lo, size_t hi, uint64_t key);

size_t probe_scalar(const uint64_t *keys, size_t lo, size_t hi, uint64_t key);
/* NULL when the CPU (or the compiler) lacks the instruction set. */
probe_fn probe_avx2(void);
probe_fn probe_avx512(void);

/* The best kernel this CPU runs, and its name ("avx512", "avx2", "scalar").
 * Chosen on first call; thread-safe. KYRO_PROBE=scalar|avx2|avx512 in the
 * environment forces a kernel (if the CPU supports it), for testing. */
probe_fn probe_best(void);
const char *probe_best_name(void);

#endif
