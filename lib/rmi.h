/*
 * rmi.h — the learned index: a two-stage Recursive Model Index.
 *
 * A root model maps a key to one of L leaves; each leaf is a linear model
 * mapping a key to a position in the sorted key array, with an exact error
 * window over the keys it was trained on. Predictions are monotone in the key,
 * so the lower bound of an absent key also falls in its window. A lookup that
 * leaves the window (possible only with keys the model was not built on)
 * widens by exponential search and is counted as a fallback.
 *
 * Ownership and threads: rmi_build and rmi_deserialize give the caller a new
 * model, released with rmi_free (NULL allowed); neither keeps a pointer to
 * keys or src. A model never changes after it is made, so any number of
 * threads may call the const functions on it at once.
 */
#ifndef KYRO_RMI_H
#define KYRO_RMI_H

#include <stddef.h>
#include <stdint.h>

#include "probe.h"

typedef struct rmi rmi;

/* Train on n sorted, strictly ascending keys (n may be 0). */
int rmi_build(const uint64_t *keys, size_t n, rmi **out);   /* KV_OK / KV_ENOMEM */
void rmi_free(rmi *m);

/* Lower bound of key in keys[0..n): the first i with keys[i] >= key, or n.
 * keys must be the array the model was built on (or loaded with).
 * *probed (if non-NULL) gets the number of positions in the searched window;
 * *fallback (if non-NULL) is set to 1 when the window missed, else 0. */
size_t rmi_lower_bound(const rmi *m, const uint64_t *keys, uint64_t key,
                       size_t *probed, int *fallback);
/* The position of key in keys[0..n), or SIZE_MAX if it is not there; the
 * point lookup. While the window is probed it also prefetches side[lo..hi)
 * (entries of stride bytes beside the keys: the values of a fixed run, or
 * their references), whose entry for key the caller reads next. *probed and
 * *fallback (each may be NULL) as for rmi_lower_bound. */
size_t rmi_find(const rmi *m, const uint64_t *keys, uint64_t key, const void *side, size_t stride,
                size_t *probed, int *fallback);
/* rmi_lower_bound with the window searched by the given kernel instead of
 * probe_best() (for benchmarks and tests that compare kernels). */
size_t rmi_lower_bound_with(const rmi *m, const uint64_t *keys, uint64_t key, probe_fn probe,
                            size_t *probed, int *fallback);

/* Start loading the keys a lookup of key will probe (both ends of its
 * window), for callers that know their next keys ahead. */
void rmi_prefetch(const rmi *m, const uint64_t *keys, uint64_t key);

size_t rmi_key_count(const rmi *m);
size_t rmi_leaf_count(const rmi *m);
uint64_t rmi_max_error(const rmi *m);      /* largest leaf window width, in positions */
size_t rmi_memory_bytes(const rmi *m);

/* Serialised form (little-endian, fixed layout, described in rmi.c). */
size_t rmi_serialized_size(const rmi *m);
void rmi_serialize(const rmi *m, uint8_t *dst);
/* Load a model for keys[0..n) from untrusted bytes: every field is bounds-
 * checked; KV_ECORRUPT if anything is out of range. The model must produce
 * correct lower bounds for any input it accepts (fallback covers misses). */
int rmi_deserialize(const uint8_t *src, size_t len, size_t n, rmi **out);

#endif
