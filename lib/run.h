/*
 * run.h — the base run: every key folded so far, sorted, with its value and
 * the learned index over the keys. Immutable once published.
 *
 * Keys live in a 64-byte aligned array (on the heap, or in place in the
 * snapshot's mmap); values are referenced by (segment, offset, length), a
 * segment being a block of value bytes: the snapshot's values section, or a
 * heap block holding the values of one fold. Runs and segments are reference
 * counted so successive runs share them.
 *
 * A run whose values all have one length ("fixed", the common case of a
 * fixed-size record) stores them back to back in key order in segs[0], so
 * value i is at fixed_values + i * fixed_len: a lookup finds it from the
 * key's position alone, with no reference to load first, and a heap run
 * keeps no references at all (vrefs is NULL).
 */
#ifndef KYRO_RUN_H
#define KYRO_RUN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "buffer.h"
#include "kyro.h"
#include "rmi.h"

typedef struct run_vref {
    uint64_t off;  /* byte offset within its segment */
    uint32_t len;  /* value length (<= KV_MAX_VALUE) */
    uint32_t seg;  /* index into run.segs */
} run_vref;

typedef struct run_seg {
    atomic_uint_fast32_t refs;
    const uint8_t *data;
    uint64_t len;
    void *heap;              /* freed with the segment, or NULL */
    int heap_big;            /* heap came from os_big_alloc(len), not malloc */
    const void *map;         /* munmapped with the segment, or NULL */
    uint64_t map_len;
} run_seg;

typedef struct run {
    atomic_uint_fast32_t refs;
    uint64_t n;
    const uint64_t *keys;    /* n keys, strictly ascending, 64-byte aligned */
    const run_vref *vrefs;   /* n value references; NULL in a fixed heap run */
    const uint8_t *fixed_values; /* fixed runs: segs[0]->data, else NULL */
    uint32_t fixed_len;      /* fixed runs: every value's length */
    rmi *index;              /* built on keys[0..n) */
    uint32_t nsegs;
    run_seg **segs;
    void *heap_keys, *heap_vrefs; /* freed with the run, or NULL */
    size_t heap_keys_bytes, heap_vrefs_bytes; /* os_big_alloc sizes; 0: malloc'd */
    run_seg *file;           /* the snapshot mapping keys/vrefs point into, or NULL */
    uint64_t value_bytes;    /* sum of live value lengths */
} run;

int run_new_empty(run **out);
run_seg *run_seg_new_heap(void *heap, uint64_t len);     /* heap from malloc */
run_seg *run_seg_new_big(void *heap, uint64_t len);      /* heap from os_big_alloc(len) */
run_seg *run_seg_new_map(const void *map, uint64_t map_len, const uint8_t *data, uint64_t len);
void run_seg_ref(run_seg *s);
void run_seg_unref(run_seg *s);
void run_ref(run *r);
void run_unref(run *r);

static inline const void *run_value(const run *r, uint64_t i, size_t *len);
/* Point lookup: KV_OK with the value, or KV_NOTFOUND. *probed gets the
 * window's length and *fallback whether the model missed (each may be
 * NULL). Forced inline: it is the innermost layer of every get, and gcc
 * kept it out of line, passing *probed and *fallback through memory. */
static inline __attribute__((always_inline)) int
run_get(const run *r, uint64_t key, const void **val, size_t *len, size_t *probed, int *fallback)
{
    /* The model's window also says where the value (fixed runs) or its
     * reference lies, so that load starts beside the key probe. */
    const void *side = r->fixed_values ? (const void *)r->fixed_values : (const void *)r->vrefs;
    size_t stride = r->fixed_values ? r->fixed_len : sizeof *r->vrefs;
    size_t width;
    int missed;
    size_t i = rmi_find(r->index, r->keys, key, side, stride, &width, &missed);
    if (probed)
        *probed = width;
    if (fallback)
        *fallback = missed;
    if (i == SIZE_MAX)
        return KV_NOTFOUND;
    *val = run_value(r, i, len);
    return KV_OK;
}
/* Start loading what run_get(r, key) will read first. */
static inline void run_prefetch(const run *r, uint64_t key)
{
    rmi_prefetch(r->index, r->keys, key);
}
/* run_get for cnt <= RMI_GROUP keys at once, their loads overlapped
 * (rmi_find_group): rcs[i] gets KV_OK, with vals[i] and lens[i] set, or
 * KV_NOTFOUND. Returns the sum of the window widths; *fallbacks gets how
 * many windows missed. */
size_t run_get_group(const run *r, size_t cnt, const uint64_t *q, const void **vals, size_t *lens,
                     int *rcs, size_t *fallbacks);
/* First position with keys[i] >= key. */
uint64_t run_lower_bound(const run *r, uint64_t key);
static inline const void *run_value(const run *r, uint64_t i, size_t *len)
{
    if (r->fixed_values) {
        *len = r->fixed_len;
        return r->fixed_values + i * r->fixed_len;
    }
    const run_vref *v = &r->vrefs[i];
    *len = v->len;
    return r->segs[v->seg]->data + v->off;
}
/* The reference of value i, also for a fixed run. */
static inline run_vref run_vref_at(const run *r, uint64_t i)
{
    if (r->fixed_values)
        return (run_vref){.off = i * r->fixed_len, .len = r->fixed_len, .seg = 0};
    return r->vrefs[i];
}
/* Mark r fixed: the caller knows that segs[0] holds its n values of len
 * bytes back to back in key order (snapshot load has verified it). */
void run_set_fixed(run *r, uint32_t len);

/* A new run: base merged with every entry of frozen visible at max_seq
 * (frozen wins; tombstones remove). Buffer values are copied into one new
 * heap segment; base segments are shared. The index is trained. */
int run_merge(const run *base, const buf *frozen, uint64_t max_seq, run **out);
/* A new run holding the same pairs with all values copied into one fresh
 * heap segment (drops dead bytes). */
int run_compact(const run *base, run **out);

uint64_t run_memory(const run *r);   /* heap bytes owned (not shared mmap) */

#endif
