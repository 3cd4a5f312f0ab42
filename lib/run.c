/*
 * run.c — the base run: sorted keys, value references, the learned index.
 *
 * Invariants: keys[0..n) strictly ascending and 64-byte aligned; vrefs[i]
 * names a byte range inside segs[vrefs[i].seg] (or, in a fixed run, value
 * i is fixed_len bytes at fixed_values + i * fixed_len); index was trained on exactly
 * keys[0..n); every run has at least one segment, so a 0-byte value always
 * has a valid base pointer. A run never changes after it is published; a
 * fold builds a new one, sharing the old run's segments by reference count.
 */
#include "run.h"

#include <stdlib.h>
#include <string.h>

#include "kyro.h"
#include "os.h"

static const uint8_t empty_bytes[1];

run_seg *run_seg_new_heap(void *heap, uint64_t len)
{
    run_seg *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->heap = heap;
    s->data = heap ? heap : empty_bytes;
    s->len = len;
    return s;
}

run_seg *run_seg_new_big(void *heap, uint64_t len)
{
    run_seg *s = run_seg_new_heap(heap, len);
    if (s)
        s->heap_big = heap != NULL;
    return s;
}

run_seg *run_seg_new_map(const void *map, uint64_t map_len, const uint8_t *data, uint64_t len)
{
    run_seg *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->map = map;
    s->map_len = map_len;
    s->data = data;
    s->len = len;
    return s;
}

void run_seg_ref(run_seg *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void run_seg_unref(run_seg *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (s->heap_big)
        os_big_free(s->heap, (size_t)s->len);
    else
        free(s->heap);
    os_munmap(s->map, (size_t)s->map_len);
    free(s);
}

void run_ref(run *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void run_unref(run *r)
{
    if (!r || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (uint32_t i = 0; i < r->nsegs; i++)
        run_seg_unref(r->segs[i]);
    free(r->segs);
    os_big_free(r->heap_keys, r->heap_keys_bytes);
    os_big_free(r->heap_vrefs, r->heap_vrefs_bytes);
    rmi_free(r->index);
    run_seg_unref(r->file);
    free(r);
}

/* Allocate a run shell with room for nsegs segment pointers. */
static run *run_alloc(uint32_t nsegs)
{
    run *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    r->segs = calloc(nsegs ? nsegs : 1, sizeof *r->segs);
    if (!r->segs) {
        free(r);
        return NULL;
    }
    return r;
}

static int run_train(run *r)
{
    return rmi_build(r->keys, (size_t)r->n, &r->index);
}

int run_new_empty(run **out)
{
    run *r = run_alloc(1);
    if (!r)
        return KV_ENOMEM;
    r->segs[0] = run_seg_new_heap(NULL, 0);
    if (!r->segs[0])
        goto fail;
    r->nsegs = 1;
    if (run_train(r) != KV_OK)
        goto fail;
    *out = r;
    return KV_OK;
fail:
    run_unref(r);
    return KV_ENOMEM;
}

void run_set_fixed(run *r, uint32_t len)
{
    r->fixed_len = len;
    r->fixed_values = r->segs[0]->data;
}

size_t run_get_group(const run *r, size_t cnt, const uint64_t *q, const void **vals, size_t *lens,
                     int *rcs, size_t *fallbacks)
{
    const void *side = r->fixed_values ? (const void *)r->fixed_values : (const void *)r->vrefs;
    size_t stride = r->fixed_values ? r->fixed_len : sizeof *r->vrefs;
    size_t pos[RMI_GROUP];
    size_t probed = rmi_find_group(r->index, r->keys, cnt, q, pos, side, stride, fallbacks);
    /* A reference's bytes were loading since the probe; start on the value
     * it names before any value is handed out. */
    if (!r->fixed_values) {
        for (size_t i = 0; i < cnt; i++) {
            if (pos[i] != SIZE_MAX) {
                const run_vref *v = &r->vrefs[pos[i]];
                __builtin_prefetch(r->segs[v->seg]->data + v->off);
            }
        }
    }
    for (size_t i = 0; i < cnt; i++) {
        rcs[i] = pos[i] == SIZE_MAX ? KV_NOTFOUND : KV_OK;
        if (pos[i] != SIZE_MAX)
            vals[i] = run_value(r, pos[i], &lens[i]);
    }
    return probed;
}

uint64_t run_lower_bound(const run *r, uint64_t key)
{
    return rmi_lower_bound(r->index, r->keys, key, NULL, NULL);
}

/* Room for n keys (64-byte aligned, as the probe kernels expect) and, for
 * a run that is not fixed, their references. */
static int run_alloc_arrays(run *r, uint64_t n, int fixed)
{
    size_t kbytes = (size_t)((n ? n : 1) * sizeof(uint64_t) + 63) & ~(size_t)63;
    r->heap_keys = os_big_alloc_raw(kbytes);
    r->heap_keys_bytes = kbytes;
    if (!r->heap_keys)
        return KV_ENOMEM;
    /* The fold writes keys[0..n); the padding after them is zeroed. */
    memset((uint64_t *)r->heap_keys + n, 0, kbytes - (size_t)n * sizeof(uint64_t));
    r->keys = r->heap_keys;
    if (fixed)
        return KV_OK;
    size_t vbytes = (size_t)(n ? n : 1) * sizeof(run_vref);
    r->heap_vrefs = os_big_alloc_raw(vbytes);
    r->heap_vrefs_bytes = vbytes;
    if (!r->heap_vrefs)
        return KV_ENOMEM;
    r->vrefs = r->heap_vrefs;
    return KV_OK;
}

/* Longest value length a fold lays out as a fixed run. A fixed fold copies
 * every value, where a fold with references shares the base's segments and
 * writes 16 bytes per key; past this length the copying costs more than the
 * saved reference load is worth. */
#define FIXED_MAX_LEN 128u

/* Tracks whether every value seen has one length: -1 before the first,
 * -2 once two differ, else that length. */
static void note_len(int64_t *same, uint64_t len)
{
    if (*same == -1)
        *same = (int64_t)len;
    else if (*same != (int64_t)len)
        *same = -2;
}

/*
 * Merge walk shared by the counting and the filling pass: base pairs and
 * the frozen buffer's visible entries in key order, buffer entries winning,
 * tombstones dropping the key. Buffer values are copied into the new
 * segment; a base value is copied too when seg_map[its segment] is
 * SEG_COPY, else its reference is renumbered through seg_map. With out ==
 * NULL it only counts keys and the new segment's bytes, and notes in
 * *same_len whether all values have one length (see note_len). A fixed out
 * (no vrefs) needs every value copied.
 */
#define SEG_COPY UINT32_MAX

static void merge_walk(const run *base, const buf *frozen, uint64_t max_seq, const uint32_t *seg_map,
                       run *out, uint32_t new_seg, uint8_t *seg_bytes, uint64_t *nkeys,
                       uint64_t *nbytes, uint64_t *live_bytes, int64_t *same_len)
{
    int64_t same = -1;
    buf_iter it;
    uint64_t bkey = 0, i = 0, n = 0, off = 0, live = 0;
    const void *bval = NULL;
    size_t blen = 0;
    uint64_t *keys = out ? (uint64_t *)out->keys : NULL;
    run_vref *vrefs = out ? (run_vref *)out->vrefs : NULL;

    buf_iter_seek(frozen, &it, 0, max_seq);
    int bstate = buf_iter_next(&it, &bkey, &bval, &blen);
    while (i < base->n || bstate != BUF_ABSENT) {
        int take_buf = bstate != BUF_ABSENT && (i >= base->n || bkey <= base->keys[i]);
        if (take_buf) {
            if (i < base->n && base->keys[i] == bkey)
                i++; /* shadowed by the buffer */
            if (bstate == BUF_VALUE) {
                note_len(&same, blen);
                if (out) {
                    keys[n] = bkey;
                    if (vrefs)
                        vrefs[n] = (run_vref){.off = off, .len = (uint32_t)blen, .seg = new_seg};
                    if (blen)
                        memcpy(seg_bytes + off, bval, blen);
                }
                n++;
                off += blen;
                live += blen;
            }
            bstate = buf_iter_next(&it, &bkey, &bval, &blen);
        } else {
            run_vref v = run_vref_at(base, i);
            note_len(&same, v.len);
            uint32_t to = seg_map[v.seg];
            if (to == SEG_COPY) {
                if (out && v.len)
                    memcpy(seg_bytes + off, base->segs[v.seg]->data + v.off, v.len);
                v = (run_vref){.off = off, .len = v.len, .seg = new_seg};
                off += v.len;
            } else {
                v.seg = to;
            }
            if (out) {
                keys[n] = base->keys[i];
                if (vrefs)
                    vrefs[n] = v;
            }
            live += v.len;
            n++;
            i++;
        }
    }
    buf_iter_close(&it);
    *nkeys = n;
    *nbytes = off;
    *live_bytes = live;
    if (same_len)
        *same_len = same;
}

/* Heap segments a base may gather before a fold rewrites their values. */
#define MAX_HEAP_SEGS 8

/*
 * Each fold adds a heap segment with the values it brought in. Left alone,
 * neighbouring keys' values scatter over many segments (a range scan misses
 * the cache on nearly every value) and overwritten values pin dead bytes. So
 * once the base holds MAX_HEAP_SEGS heap segments, or its heap segments are
 * more than twice the live bytes, the fold copies every heap value into its
 * new segment in key order. Values still in the snapshot file stay there.
 */
static int should_rewrite_heap(const run *base)
{
    uint32_t heap_segs = 0;
    uint64_t heap_bytes = 0;
    for (uint32_t s = 0; s < base->nsegs; s++) {
        if (!base->segs[s]->map) {
            heap_segs++;
            heap_bytes += base->segs[s]->len;
        }
    }
    return heap_segs >= MAX_HEAP_SEGS || heap_bytes > 2 * base->value_bytes + (1u << 20);
}

int run_merge(const run *base, const buf *frozen, uint64_t max_seq, run **out)
{
    uint64_t n, nbytes, live;
    uint8_t *seg_bytes = NULL;
    uint32_t *seg_map = malloc((base->nsegs ? base->nsegs : 1) * sizeof *seg_map);
    if (!seg_map)
        return KV_ENOMEM;
    int rewrite = should_rewrite_heap(base);
    uint32_t kept = 0;
    for (uint32_t s = 0; s < base->nsegs; s++)
        seg_map[s] = rewrite && !base->segs[s]->map ? SEG_COPY : kept++;
    int64_t same_len;
    merge_walk(base, frozen, max_seq, seg_map, NULL, 0, NULL, &n, &nbytes, &live, &same_len);
    int fixed = same_len >= 0 && same_len <= FIXED_MAX_LEN;
    if (fixed) { /* every value moves into the one new segment */
        for (uint32_t s = 0; s < base->nsegs; s++)
            seg_map[s] = SEG_COPY;
        kept = 0;
        nbytes = n * (uint64_t)same_len;
    }

    run *r = run_alloc(kept + 1);
    if (!r) {
        free(seg_map);
        return KV_ENOMEM;
    }
    if (run_alloc_arrays(r, n, fixed) != KV_OK)
        goto fail;
    if (nbytes && !(seg_bytes = os_big_alloc_raw((size_t)nbytes)))
        goto fail;
    r->segs[kept] = run_seg_new_big(seg_bytes, nbytes);
    if (!r->segs[kept]) {
        os_big_free(seg_bytes, (size_t)nbytes);
        goto fail;
    }
    for (uint32_t s = 0; s < base->nsegs; s++) {
        if (seg_map[s] != SEG_COPY) {
            run_seg_ref(base->segs[s]);
            r->segs[seg_map[s]] = base->segs[s];
        }
    }
    r->nsegs = kept + 1;
    merge_walk(base, frozen, max_seq, seg_map, r, kept, seg_bytes, &r->n, &nbytes, &live, NULL);
    r->value_bytes = live;
    if (fixed)
        run_set_fixed(r, (uint32_t)same_len);
    if (run_train(r) != KV_OK)
        goto fail;
    free(seg_map);
    *out = r;
    return KV_OK;
fail:
    free(seg_map);
    run_unref(r);
    return KV_ENOMEM;
}

int run_compact(const run *base, run **out)
{
    uint8_t *bytes = NULL;
    int64_t same = -1;
    for (uint64_t i = 0; i < base->n && same != -2; i++)
        note_len(&same, run_vref_at(base, i).len);
    int fixed = same >= 0 && same <= FIXED_MAX_LEN;
    run *r = run_alloc(1);
    if (!r)
        return KV_ENOMEM;
    if (run_alloc_arrays(r, base->n, fixed) != KV_OK)
        goto fail;
    if (base->value_bytes && !(bytes = os_big_alloc_raw((size_t)base->value_bytes)))
        goto fail;
    r->segs[0] = run_seg_new_big(bytes, base->value_bytes);
    if (!r->segs[0]) {
        os_big_free(bytes, (size_t)base->value_bytes);
        goto fail;
    }
    r->nsegs = 1;
    uint64_t off = 0;
    uint64_t *keys = r->heap_keys;
    run_vref *vrefs = r->heap_vrefs;
    for (uint64_t i = 0; i < base->n; i++) {
        size_t len;
        const void *v = run_value(base, i, &len);
        keys[i] = base->keys[i];
        if (vrefs)
            vrefs[i] = (run_vref){.off = off, .len = (uint32_t)len, .seg = 0};
        if (len)
            memcpy(bytes + off, v, len);
        off += len;
    }
    r->n = base->n;
    r->value_bytes = off;
    if (fixed)
        run_set_fixed(r, (uint32_t)same);
    if (run_train(r) != KV_OK)
        goto fail;
    *out = r;
    return KV_OK;
fail:
    run_unref(r);
    return KV_ENOMEM;
}

uint64_t run_memory(const run *r)
{
    uint64_t m = sizeof *r + r->nsegs * sizeof(run_seg *) + rmi_memory_bytes(r->index);
    if (r->heap_keys)
        m += r->n * sizeof(uint64_t);
    if (r->heap_vrefs)
        m += r->n * sizeof(run_vref);
    for (uint32_t i = 0; i < r->nsegs; i++) {
        if (r->segs[i]->heap)
            m += r->segs[i]->len;
    }
    return m;
}
