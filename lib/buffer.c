/*
 * buffer.c — the write buffer: an open-addressing hash index key -> node
 * (point lookups) and an ordered index of sorted runs (scans, folds); each
 * node holds a chain of versions, newest first. One writer, any number of
 * lock-free readers.
 *
 * The ordered index is an "order": up to BUF_MAX_RUNS immutable sorted runs
 * of (key, node) entries plus a tail that the writer appends new keys to.
 * Every key is in exactly one place (one run, or the tail). Keys arrive in
 * ascending stretches (a batch is applied in key order) or at random (single
 * puts); the tail takes either, but is flushed into a run once it holds
 * BUF_TAIL_UNSORTED entries out of order, so a reader never sorts more than
 * that. A flush publishes a new order: the old runs, the tail as a new run,
 * and runs merged while the one before the last is at most twice the last
 * (so sizes fall by more than half from run to run: O(log n) runs, and each
 * entry is copied O(log n) times, by sequential merges rather than the
 * cache miss per level of a linked structure).
 *
 * Owns: every node, version and value byte (bump arenas of chunks growing to
 * 1 MiB; a value over BUF_BIG gets a dedicated allocation), every hash table
 * it ever published (the live one and all its smaller predecessors, together
 * < 2x the live one), the current order and the orders it replaced. Nodes,
 * versions, values and tables are never freed or moved before buf_free, so
 * any pointer a reader loads from them stays valid, and no address is ever
 * reused (no ABA).
 *
 * Orders are reclaimed while the buffer lives: an iterator holds a counted
 * reference on the order it walks, taken while its thread is pinned in the
 * owner's grace-period domain; once the writer's replaced orders hold as many
 * bytes as the live one, it runs the owner's grace function (see
 * buf_set_grace) and frees the replaced orders nobody references. Without a
 * grace function they stay until buf_free.
 *
 * Invariants: every node is in the live table exactly once and in the
 * current order exactly once; runs are strictly ascending; the tail is
 * ascending before index tail_unsorted, and an unsorted tail has at most
 * BUF_TAIL_UNSORTED entries; the live table is at most half full, so every
 * probe sequence reaches an empty (NULL) slot; a slot, once it holds a node,
 * never changes; a published version never changes, and a chain is newest
 * first in non-increasing seq.
 *
 * Memory ordering: the writer fully initialises an object (a node with its
 * first version; a version with its older link; a table with all its slots;
 * a run and the order listing it; a tail entry) and only then makes it
 * reachable with one release store (slot.node; node->newest; b->table;
 * b->order; tail_len). Readers reach every object only through acquire
 * loads of those fields, so its initialisation happens-before anything they
 * read from it. A reader on a stale table or order misses only keys inserted
 * concurrently: a reader that acquired a published max_seq afterwards loads
 * a table and an order at least as new as those the writer had when it
 * published that seq.
 */
#include "buffer.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kyro.h"
#include "os.h"
#include "sort.h"

#define BUF_CHUNK_MIN ((size_t)4 << 10)     /* first arena chunk */
#define BUF_CHUNK_MAX ((size_t)4 << 20)     /* chunks double up to this */
#define BUF_BIG (BUF_CHUNK_MAX / 4)         /* larger requests: own allocation */
#define BUF_TABLE_MIN 64                    /* slots in a new buffer's table */
#define BUF_TAIL_MIN 32                     /* smallest tail capacity */
#define BUF_TAIL_MAX 4096                   /* largest (a sorted stretch grows it) */
#define BUF_GC_MIN ((size_t)1 << 20)        /* replaced bytes worth a grace period */
#define BUF_SPARES 16                       /* freed run arrays kept for reuse */
#define BUF_RUN_MIN_CAP 64                  /* smallest run array, in entries */

_Static_assert(ATOMIC_POINTER_LOCK_FREE == 2, "lock-free atomic pointers required");
_Static_assert(KV_MAX_VALUE <= UINT32_MAX, "value length is stored in 32 bits");
_Static_assert(BUF_TAIL_UNSORTED <= BUF_TAIL_MIN, "an unsorted tail fits the smallest tail");

/* One version of a key. Immutable once published. val is NULL only for a
 * tombstone; a 0-byte value points at buf_empty. */
typedef struct buf_ver {
    uint64_t seq;
    const void *val;
    const struct buf_ver *older;
    uint32_t len;
    uint32_t tomb;
} buf_ver;

typedef struct buf_node {
    uint64_t key;
    _Atomic(const buf_ver *) newest; /* never NULL once published */
} buf_node;

/* key is written before node is stored (release) and read only after a
 * non-NULL node is loaded (acquire); it saves a node dereference per probe. */
typedef struct {
    _Atomic(buf_node *) node;
    uint64_t key;
} buf_slot;

typedef struct buf_table {
    size_t mask;              /* slots - 1; slots is a power of two */
    struct buf_table *older;  /* the table this one replaced (writer/buf_free only) */
    buf_slot slots[];
} buf_table;

/* A sorted run: entries (key, (uintptr_t)node), strictly ascending keys.
 * Immutable once an order lists it. refs counts the orders listing it;
 * only the writer (and buf_free) touch it. */
typedef struct buf_run {
    uint32_t refs;
    size_t len;
    size_t cap;    /* entries allocated: a power of two >= len */
    sort_pair *e;
} buf_run;

/* The ordered index as published: runs (largest first) and the tail. */
typedef struct buf_order {
    atomic_uint_fast32_t refs;        /* 1 while current, 1 per iterator on it */
    struct buf_order *replaced_next;  /* the writer's list of replaced orders */
    uint32_t nruns;
    uint32_t tail_cap;
    _Atomic size_t tail_len;          /* entries published (release) */
    _Atomic size_t tail_unsorted;     /* first entry below its predecessor, or SIZE_MAX */
    buf_run *runs[BUF_MAX_RUNS];
    sort_pair tail[];                 /* tail_cap entries */
} buf_order;

typedef struct buf_chunk {
    struct buf_chunk *next;
    size_t size;
    max_align_t data[];
} buf_chunk;

typedef struct {
    buf_chunk *chunks; /* every allocation of this arena, for buf_free */
    unsigned char *ptr;
    size_t left;
    size_t next_size;
} buf_arena;

struct buf {
    /* Read by readers; written by the writer on a new table or order. */
    _Atomic(buf_table *) table;
    _Atomic(buf_order *) order;
    uint64_t seed;
    unsigned char pad_[64]; /* keep the counters below off the readers' line */
    /* Written by the writer on every put; read by any thread (relaxed). */
    _Atomic uint64_t nkeys, nwrites, mem;
    /* Writer only. */
    buf_order *replaced;    /* orders replaced, not yet freed */
    /* Entry arrays of freed runs, kept for the next runs of their size
     * class: merges allocate and free arrays all the time, and a system
     * call for each would contend with the fold for the address space. */
    sort_pair *spare[BUF_SPARES];
    size_t spare_cap[BUF_SPARES];
    unsigned nspare;
    size_t replaced_bytes;
    void (*grace)(void *ctx);
    void *grace_ctx;
    /* Between buf_defer_order and buf_finish_order: new keys wait here,
     * in the hash index only, to be ordered in one sort. */
    int defer;
    sort_pair *pending; /* (key, node pointer) */
    size_t npending, cap_pending;
    buf_arena meta, vals;
};

static const unsigned char buf_empty[1];

static buf_fault_fn fault_fn;
static void *fault_ctx;

void buf_set_fault_hook(buf_fault_fn fn, void *ctx)
{
    fault_fn = fn;
    fault_ctx = ctx;
}

static void *xcalloc(size_t n, size_t size)
{
    if (fault_fn && fault_fn(fault_ctx, n * size))
        return NULL;
    return calloc(n, size);
}

static void mem_add(buf *b, size_t n)
{
    uint64_t m = atomic_load_explicit(&b->mem, memory_order_relaxed);
    atomic_store_explicit(&b->mem, m + n, memory_order_relaxed);
}

static void count_add(_Atomic uint64_t *c)
{
    uint64_t v = atomic_load_explicit(c, memory_order_relaxed);
    atomic_store_explicit(c, v + 1, memory_order_relaxed);
}

/* A seeded bijective 64-bit mixer (SplitMix64's finaliser): sequential,
 * strided and low-entropy keys all spread over the table. */
static inline uint64_t buf_hash(uint64_t seed, uint64_t key)
{
    uint64_t z = key ^ seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- Arenas (writer only) ------------------------------------------ */

/* Chunks, tables and run entries come from os_big_alloc: a folded
 * buffer's memory goes back to the block pool for the next buffer. Tables
 * need zeroed memory (an all-zero slot is empty); the rest is written
 * before it is read. */
static void *big_alloc(size_t bytes, int zeroed)
{
    if (fault_fn && fault_fn(fault_ctx, bytes))
        return NULL;
    return zeroed ? os_big_alloc(bytes) : os_big_alloc_raw(bytes);
}

static buf_chunk *chunk_new(buf *b, buf_arena *a, size_t size)
{
    buf_chunk *c = big_alloc(sizeof *c + size, 0);
    if (!c)
        return NULL;
    c->size = size;
    c->next = a->chunks;
    a->chunks = c;
    mem_add(b, sizeof *c + size);
    return c;
}

/* n > 0 bytes aligned to align (a power of two <= alignof(max_align_t)),
 * or NULL with the arena unchanged. */
static void *arena_alloc(buf *b, buf_arena *a, size_t n, size_t align)
{
    if (a->ptr) {
        size_t pad = (size_t)(-(uintptr_t)a->ptr) & (align - 1);
        if (n <= a->left && pad <= a->left - n) {
            void *p = a->ptr + pad;
            a->ptr += pad + n;
            a->left -= pad + n;
            return p;
        }
    }
    if (n > BUF_BIG) {
        /* Its own allocation; the current chunk keeps serving small ones. */
        buf_chunk *c = chunk_new(b, a, n);
        return c ? (void *)c->data : NULL;
    }
    size_t size = a->next_size > n ? a->next_size : n;
    buf_chunk *c = chunk_new(b, a, size);
    if (!c)
        return NULL;
    a->ptr = (unsigned char *)c->data + n;
    a->left = size - n;
    if (a->next_size < BUF_CHUNK_MAX)
        a->next_size *= 2;
    return c->data;
}

static void arena_free(buf_arena *a)
{
    buf_chunk *c = a->chunks;
    while (c) {
        buf_chunk *next = c->next;
        os_big_free(c, sizeof *c + c->size);
        c = next;
    }
}

/* ---- Hash index ---------------------------------------------------- */

static size_t table_bytes(size_t slots)
{
    return sizeof(buf_table) + slots * sizeof(buf_slot);
}

static buf_table *table_new(buf *b, size_t slots)
{
    /* Zeroed (calloc, or fresh pages): an all-zero lock-free atomic
     * pointer is NULL on every target we build for. */
    size_t bytes = table_bytes(slots);
    buf_table *t = bytes < OS_BIG_ALLOC ? xcalloc(1, bytes) : big_alloc(bytes, 1);
    if (!t)
        return NULL;
    t->mask = slots - 1;
    mem_add(b, table_bytes(slots));
    return t;
}

/* Put node in a table not yet visible to readers (relaxed suffices: the
 * release store of b->table publishes it). */
/* key is n's key, passed in so that rehashing reads it from the old slot
 * rather than from the node (a cache miss each). */
static void table_fill(buf_table *t, uint64_t seed, uint64_t key, buf_node *n)
{
    size_t i = (size_t)buf_hash(seed, key) & t->mask;
    while (atomic_load_explicit(&t->slots[i].node, memory_order_relaxed))
        i = (i + 1) & t->mask;
    t->slots[i].key = key;
    atomic_store_explicit(&t->slots[i].node, n, memory_order_relaxed);
}

/* The node of key in t, or NULL; *empty gets the slot where it would go. */
static buf_node *table_find(const buf_table *t, uint64_t seed, uint64_t key, size_t *empty)
{
    size_t i = (size_t)buf_hash(seed, key) & t->mask;
    for (;;) {
        buf_node *n = atomic_load_explicit(&t->slots[i].node, memory_order_acquire);
        if (!n) {
            if (empty)
                *empty = i;
            return NULL;
        }
        if (t->slots[i].key == key)
            return n;
        i = (i + 1) & t->mask;
    }
}

/* A table twice the size of old holding all its nodes, not yet published. */
static buf_table *table_grow(buf *b, buf_table *old)
{
    size_t slots = (old->mask + 1) * 2;
    buf_table *t = table_new(b, slots);
    if (!t)
        return NULL;
    for (size_t i = 0; i <= old->mask; i++) {
        buf_node *n = atomic_load_explicit(&old->slots[i].node, memory_order_relaxed);
        if (n)
            table_fill(t, b->seed, old->slots[i].key, n);
    }
    t->older = old;
    return t;
}

/* ---- Sorted runs and orders (writer side) ---------------------------- */

static void mem_sub(buf *b, size_t n)
{
    uint64_t m = atomic_load_explicit(&b->mem, memory_order_relaxed);
    atomic_store_explicit(&b->mem, m - n, memory_order_relaxed);
}

static size_t run_entry_bytes(size_t cap)
{
    return cap * sizeof(sort_pair);
}

static size_t run_cap(size_t len)
{
    size_t cap = BUF_RUN_MIN_CAP;
    while (cap < len)
        cap *= 2;
    return cap;
}

static buf_run *run_alloc(buf *b, size_t len)
{
    buf_run *r = xcalloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->cap = run_cap(len);
    r->len = len;
    r->refs = 1;
    for (unsigned i = 0; i < b->nspare; i++) {
        if (b->spare_cap[i] == r->cap) {
            r->e = b->spare[i];
            b->spare[i] = b->spare[b->nspare - 1];
            b->spare_cap[i] = b->spare_cap[b->nspare - 1];
            b->nspare--;
            mem_add(b, sizeof *r);
            return r;
        }
    }
    r->e = big_alloc(run_entry_bytes(r->cap), 0);
    if (!r->e) {
        free(r);
        return NULL;
    }
    mem_add(b, sizeof *r + run_entry_bytes(r->cap));
    return r;
}

static void run_unref(buf *b, buf_run *r)
{
    if (--r->refs)
        return;
    mem_sub(b, sizeof *r);
    if (b->nspare < BUF_SPARES) {
        b->spare[b->nspare] = r->e;
        b->spare_cap[b->nspare++] = r->cap;
    } else {
        mem_sub(b, run_entry_bytes(r->cap));
        os_big_free(r->e, run_entry_bytes(r->cap));
    }
    free(r);
}

/* A run of x and y's entries, merged (their keys are disjoint). */
static buf_run *run_merge2(buf *b, const buf_run *x, const buf_run *y)
{
    buf_run *r = run_alloc(b, x->len + y->len);
    if (!r)
        return NULL;
    const sort_pair *p = x->e, *pe = x->e + x->len, *q = y->e, *qe = y->e + y->len;
    sort_pair *o = r->e;
    while (p < pe && q < qe) {
        /* Branch-free: which side is smaller is a coin toss for random keys. */
        int take_p = p->key < q->key;
        *o++ = take_p ? *p : *q;
        p += take_p;
        q += !take_p;
    }
    memcpy(o, p, (size_t)(pe - p) * sizeof *p);
    o += pe - p;
    memcpy(o, q, (size_t)(qe - q) * sizeof *q);
    return r;
}

static size_t order_bytes(uint32_t tail_cap)
{
    return sizeof(buf_order) + (size_t)tail_cap * sizeof(sort_pair);
}

static buf_order *order_alloc(buf *b, uint32_t tail_cap)
{
    buf_order *o = xcalloc(1, order_bytes(tail_cap));
    if (!o)
        return NULL;
    atomic_init(&o->refs, 1);
    atomic_init(&o->tail_len, 0);
    atomic_init(&o->tail_unsorted, SIZE_MAX);
    o->tail_cap = tail_cap;
    mem_add(b, order_bytes(tail_cap));
    return o;
}

static size_t order_run_bytes(const buf_order *o)
{
    size_t n = 0;
    for (uint32_t i = 0; i < o->nruns; i++)
        n += sizeof *o->runs[i] + run_entry_bytes(o->runs[i]->cap);
    return n;
}

static void order_free(buf *b, buf_order *o)
{
    for (uint32_t i = 0; i < o->nruns; i++)
        run_unref(b, o->runs[i]);
    mem_sub(b, order_bytes(o->tail_cap));
    free(o);
}

/* Push r (one reference, handed over) as o's newest run, merging while
 * the run before the last is at most twice the last. */
static int order_push_run(buf *b, buf_order *o, buf_run *r)
{
    o->runs[o->nruns++] = r;
    while (o->nruns >= 2 && (o->runs[o->nruns - 2]->len <= 2 * o->runs[o->nruns - 1]->len ||
                             o->nruns == BUF_MAX_RUNS)) {
        buf_run *x = o->runs[o->nruns - 2], *y = o->runs[o->nruns - 1];
        buf_run *m = run_merge2(b, x, y);
        if (!m)
            return KV_ENOMEM;
        run_unref(b, x);
        run_unref(b, y);
        o->runs[--o->nruns - 1] = m;
    }
    return KV_OK;
}

/* Free the replaced orders no iterator holds, after a grace period:
 * a reader that loaded one as current was pinned while it took its
 * reference, so once the grace period is over a count of zero stays zero. */
static void collect_replaced(buf *b)
{
    b->grace(b->grace_ctx);
    buf_order **pp = &b->replaced;
    b->replaced_bytes = 0;
    while (*pp) {
        buf_order *o = *pp;
        if (atomic_load_explicit(&o->refs, memory_order_acquire) == 0) {
            *pp = o->replaced_next;
            order_free(b, o);
        } else {
            b->replaced_bytes += order_bytes(o->tail_cap) + order_run_bytes(o);
            pp = &o->replaced_next;
        }
    }
}

/* Make o current; the order it replaces joins the replaced list. */
static void order_publish(buf *b, buf_order *o)
{
    buf_order *old = atomic_load_explicit(&b->order, memory_order_relaxed);
    atomic_store_explicit(&b->order, o, memory_order_release);
    old->replaced_next = b->replaced;
    b->replaced = old;
    /* Runs the new order shares are not garbage; the rest of old is. */
    size_t shared = 0;
    for (uint32_t i = 0; i < old->nruns; i++) {
        for (uint32_t j = 0; j < o->nruns; j++)
            shared += old->runs[i] == o->runs[j] ? sizeof *old->runs[i] + run_entry_bytes(old->runs[i]->cap) : 0;
    }
    b->replaced_bytes += order_bytes(old->tail_cap) + order_run_bytes(old) - shared;
    atomic_fetch_sub_explicit(&old->refs, 1, memory_order_release);
    if (b->grace) {
        size_t live = order_run_bytes(o);
        if (b->replaced_bytes >= BUF_GC_MIN && b->replaced_bytes >= live)
            collect_replaced(b);
    }
}

/* Capacity of the tail that follows one of len entries: a sorted stretch
 * (a batch in key order) gets room for one twice as long. */
static uint32_t next_tail_cap(size_t len, int sorted)
{
    size_t cap = sorted ? 2 * len : BUF_TAIL_MIN;
    return (uint32_t)(cap < BUF_TAIL_MIN ? BUF_TAIL_MIN : cap > BUF_TAIL_MAX ? BUF_TAIL_MAX : cap);
}

/* Publish an order holding the current one's runs plus its tail as a run
 * (or extra[0..nextra) sorted, in defer mode's finish), with an empty tail.
 * KV_ENOMEM leaves the current order in place. */
static int flush_tail(buf *b, sort_pair *extra, size_t nextra)
{
    buf_order *cur = atomic_load_explicit(&b->order, memory_order_relaxed);
    size_t len = atomic_load_explicit(&cur->tail_len, memory_order_relaxed);
    int sorted = atomic_load_explicit(&cur->tail_unsorted, memory_order_relaxed) >= len;
    buf_order *o = order_alloc(b, extra ? cur->tail_cap : next_tail_cap(len, sorted));
    if (!o)
        return KV_ENOMEM;
    o->nruns = cur->nruns;
    for (uint32_t i = 0; i < cur->nruns; i++) {
        o->runs[i] = cur->runs[i];
        o->runs[i]->refs++;
    }
    buf_run *r = NULL;
    if (extra) {
        /* The tail stays as it is: copy it over. */
        memcpy(o->tail, cur->tail, len * sizeof *o->tail);
        atomic_store_explicit(&o->tail_unsorted,
                              atomic_load_explicit(&cur->tail_unsorted, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&o->tail_len, len, memory_order_relaxed);
        if (nextra && (r = run_alloc(b, nextra)) != NULL)
            memcpy(r->e, extra, nextra * sizeof *extra);
    } else if ((r = run_alloc(b, len)) != NULL) {
        memcpy(r->e, cur->tail, len * sizeof *cur->tail);
        if (!sorted)
            sort_pairs(r->e, len);
    }
    int rc = KV_OK;
    if (!r && (extra ? nextra : len))
        rc = KV_ENOMEM;
    else if (r)
        rc = order_push_run(b, o, r);
    if (rc != KV_OK) {
        order_free(b, o);
        return rc;
    }
    order_publish(b, o);
    return KV_OK;
}

/* Make room in the tail for key: flush first if it is full, or if it holds
 * BUF_TAIL_UNSORTED entries and would be (or is) out of order. */
static int tail_reserve(buf *b, uint64_t key)
{
    buf_order *o = atomic_load_explicit(&b->order, memory_order_relaxed);
    size_t len = atomic_load_explicit(&o->tail_len, memory_order_relaxed);
    if (len == 0)
        return KV_OK;
    int unsorted = atomic_load_explicit(&o->tail_unsorted, memory_order_relaxed) < len ||
                   key < o->tail[len - 1].key;
    if (len == o->tail_cap || (unsorted && len >= BUF_TAIL_UNSORTED))
        return flush_tail(b, NULL, 0);
    return KV_OK;
}

/* Append after tail_reserve made room. */
static void tail_append(buf *b, uint64_t key, buf_node *node)
{
    buf_order *o = atomic_load_explicit(&b->order, memory_order_relaxed);
    size_t len = atomic_load_explicit(&o->tail_len, memory_order_relaxed);
    o->tail[len] = (sort_pair){key, (uint64_t)(uintptr_t)node};
    if (len && key < o->tail[len - 1].key &&
        atomic_load_explicit(&o->tail_unsorted, memory_order_relaxed) == SIZE_MAX)
        atomic_store_explicit(&o->tail_unsorted, len, memory_order_relaxed);
    atomic_store_explicit(&o->tail_len, len + 1, memory_order_release);
}

/* ---- Versions ------------------------------------------------------ */

static const buf_ver *visible(const buf_node *n, uint64_t max_seq)
{
    const buf_ver *v = atomic_load_explicit(&n->newest, memory_order_acquire);
    while (v && v->seq > max_seq)
        v = v->older;
    return v;
}

static int report(const buf_ver *v, const void **val, size_t *len)
{
    if (!v)
        return BUF_ABSENT;
    if (val)
        *val = v->val;
    if (len)
        *len = v->len;
    return v->tomb ? BUF_TOMBSTONE : BUF_VALUE;
}

/* ---- Public -------------------------------------------------------- */

int buf_new(buf **out)
{
    if (!out)
        return KV_EINVAL;
    *out = NULL;
    buf *b = xcalloc(1, sizeof *b);
    if (!b)
        return KV_ENOMEM;
    atomic_init(&b->nkeys, 0);
    atomic_init(&b->nwrites, 0);
    atomic_init(&b->mem, sizeof *b);
    b->meta.next_size = BUF_CHUNK_MIN;
    b->vals.next_size = BUF_CHUNK_MIN;

    /* Seed the hash from this buffer's address, a process counter and the
     * clock, so keys cannot be chosen against the table. */
    static atomic_uint_fast64_t instances;
    struct timespec ts = {0, 0};
    timespec_get(&ts, TIME_UTC);
    uint64_t s = (uint64_t)(uintptr_t)b ^ ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^
                 (atomic_fetch_add_explicit(&instances, 1, memory_order_relaxed) << 17);
    b->seed = buf_hash(0x9e3779b97f4a7c15ull, s);

    buf_order *o = order_alloc(b, BUF_TAIL_MIN);
    if (!o)
        goto fail;
    atomic_init(&b->order, o);
    buf_table *t = table_new(b, BUF_TABLE_MIN);
    if (!t) {
        free(o);
        goto fail;
    }
    atomic_init(&b->table, t);
    *out = b;
    return KV_OK;
fail:
    free(b);
    return KV_ENOMEM;
}

void buf_set_grace(buf *b, void (*grace)(void *ctx), void *ctx)
{
    b->grace = grace;
    b->grace_ctx = ctx;
}

void buf_free(buf *b)
{
    if (!b)
        return;
    buf_table *t = atomic_load_explicit(&b->table, memory_order_relaxed);
    while (t) {
        buf_table *older = t->older;
        os_big_free(t, table_bytes(t->mask + 1));
        t = older;
    }
    order_free(b, atomic_load_explicit(&b->order, memory_order_relaxed));
    while (b->replaced) {
        buf_order *next = b->replaced->replaced_next;
        order_free(b, b->replaced);
        b->replaced = next;
    }
    for (unsigned i = 0; i < b->nspare; i++)
        os_big_free(b->spare[i], run_entry_bytes(b->spare_cap[i]));
    arena_free(&b->meta);
    arena_free(&b->vals);
    free(b->pending);
    free(b);
}

int buf_put(buf *b, uint64_t key, uint64_t seq, int tombstone, const void *val, size_t len)
{
    int prev;
    return buf_put_prev(b, key, seq, tombstone, val, len, &prev);
}

int buf_put_prev(buf *b, uint64_t key, uint64_t seq, int tombstone, const void *val, size_t len,
                 int *prev)
{
    *prev = BUF_ABSENT;
    if (!b)
        return KV_EINVAL;
    if (tombstone) {
        val = NULL;
        len = 0;
    } else if (len > KV_MAX_VALUE) {
        return KV_ETOOBIG;
    } else if (len && !val) {
        return KV_EINVAL;
    }

    buf_table *t = atomic_load_explicit(&b->table, memory_order_relaxed);
    size_t slot = 0;
    buf_node *n = table_find(t, b->seed, key, &slot);
    const buf_ver *newest =
        n ? atomic_load_explicit(&n->newest, memory_order_relaxed) : NULL;
    if (newest && seq < newest->seq)
        return KV_EINVAL; /* chains must stay newest-first */
    int before = newest ? (newest->tomb ? BUF_TOMBSTONE : BUF_VALUE) : BUF_ABSENT;

    /* Allocate everything first: a failure leaves nothing published. */
    const void *copy = NULL;
    if (!tombstone) {
        if (len == 0) {
            copy = buf_empty;
        } else {
            void *p = arena_alloc(b, &b->vals, len, 1);
            if (!p)
                return KV_ENOMEM;
            memcpy(p, val, len);
            copy = p;
        }
    }

    if (n) {
        buf_ver *v = arena_alloc(b, &b->meta, sizeof *v, alignof(buf_ver));
        if (!v)
            return KV_ENOMEM;
        *v = (buf_ver){.seq = seq, .val = copy, .older = newest, .len = (uint32_t)len,
                       .tomb = tombstone != 0};
        atomic_store_explicit(&n->newest, v, memory_order_release);
        count_add(&b->nwrites);
        *prev = before;
        return KV_OK;
    }

    /* A new key: node and its first version side by side (48 bytes). */
    _Static_assert(sizeof(buf_node) % alignof(buf_ver) == 0, "version placement");
    void *p = arena_alloc(b, &b->meta, sizeof(buf_node) + sizeof(buf_ver), alignof(buf_node));
    if (!p)
        return KV_ENOMEM;
    buf_node *node = p;
    buf_ver *v = (void *)((unsigned char *)p + sizeof(buf_node));
    *v = (buf_ver){.seq = seq, .val = copy, .older = NULL, .len = (uint32_t)len,
                   .tomb = tombstone != 0};
    node->key = key;
    atomic_init(&node->newest, v);

    if (b->defer && b->npending == b->cap_pending) {
        size_t cap = b->cap_pending ? b->cap_pending * 2 : 1024;
        if (fault_fn && fault_fn(fault_ctx, cap * sizeof *b->pending))
            return KV_ENOMEM;
        sort_pair *grown_list = realloc(b->pending, cap * sizeof *b->pending);
        if (!grown_list)
            return KV_ENOMEM;
        b->pending = grown_list;
        b->cap_pending = cap;
    }
    if (!b->defer && tail_reserve(b, key) != KV_OK)
        return KV_ENOMEM;
    uint64_t nkeys = atomic_load_explicit(&b->nkeys, memory_order_relaxed);
    buf_table *grown = NULL;
    if ((nkeys + 1) * 2 > (uint64_t)t->mask + 1) {
        grown = table_grow(b, t);
        if (!grown)
            return KV_ENOMEM;
    }

    if (b->defer)
        b->pending[b->npending++] = (sort_pair){key, (uint64_t)(uintptr_t)node};
    else
        tail_append(b, key, node);
    if (grown) {
        table_fill(grown, b->seed, key, node);
        atomic_store_explicit(&b->table, grown, memory_order_release);
    } else {
        t->slots[slot].key = key;
        atomic_store_explicit(&t->slots[slot].node, node, memory_order_release);
    }
    count_add(&b->nkeys);
    count_add(&b->nwrites);
    return KV_OK;
}

void buf_defer_order(buf *b)
{
    b->defer = 1;
}

int buf_reserve(buf *b, uint64_t nkeys)
{
    buf_table *t = atomic_load_explicit(&b->table, memory_order_relaxed);
    size_t slots = t->mask + 1;
    if (nkeys > ((uint64_t)1 << 40))
        return KV_ENOMEM;
    while ((uint64_t)slots < 2 * nkeys)
        slots *= 2;
    if (slots == t->mask + 1)
        return KV_OK;
    buf_table *grown = table_new(b, slots);
    if (!grown)
        return KV_ENOMEM;
    for (size_t i = 0; i <= t->mask; i++) {
        buf_node *n = atomic_load_explicit(&t->slots[i].node, memory_order_relaxed);
        if (n)
            table_fill(grown, b->seed, t->slots[i].key, n);
    }
    grown->older = t;
    atomic_store_explicit(&b->table, grown, memory_order_release);
    return KV_OK;
}

int buf_finish_order(buf *b)
{
    if (!b->defer)
        return KV_OK;
    sort_pairs(b->pending, b->npending);
    int rc = flush_tail(b, b->pending, b->npending);
    if (rc != KV_OK)
        return rc;
    free(b->pending);
    b->pending = NULL;
    b->npending = b->cap_pending = 0;
    b->defer = 0;
    return KV_OK;
}

void buf_prefetch(const buf *b, uint64_t key)
{
    const buf_table *t = atomic_load_explicit(&b->table, memory_order_relaxed);
    __builtin_prefetch(&t->slots[(size_t)buf_hash(b->seed, key) & t->mask]);
}

int buf_get(const buf *b, uint64_t key, uint64_t max_seq, const void **val, size_t *len)
{
    /* An empty buffer (the usual state right after a fold) answers without
     * touching its table. The count is raised after a key's node is
     * published, and a reader loads visible_seq (released after both)
     * before calling: every key it may see is already counted. */
    if (atomic_load_explicit(&b->nkeys, memory_order_relaxed) == 0)
        return BUF_ABSENT;
    const buf_table *t =
        atomic_load_explicit(&b->table, memory_order_acquire);
    const buf_node *n = table_find(t, b->seed, key, NULL);
    return n ? report(visible(n, max_seq), val, len) : BUF_ABSENT;
}

uint64_t buf_keys(const buf *b)
{
    return atomic_load_explicit(&b->nkeys, memory_order_relaxed);
}

uint64_t buf_writes(const buf *b)
{
    return atomic_load_explicit(&b->nwrites, memory_order_relaxed);
}

uint64_t buf_memory(const buf *b)
{
    return atomic_load_explicit(&b->mem, memory_order_relaxed);
}

/* ---- Iteration (readers) ------------------------------------------- */

/* A counted reference to the current order. The caller is pinned (or the
 * buffer has no grace function), so the order cannot be freed between the
 * load and the increment; a count of zero means it was replaced: reload. */
static buf_order *order_acquire(const buf *b)
{
    for (;;) {
        buf_order *o = atomic_load_explicit(&b->order, memory_order_acquire);
        uint_fast32_t n = atomic_load_explicit(&o->refs, memory_order_relaxed);
        while (n != 0 && !atomic_compare_exchange_weak_explicit(&o->refs, &n, n + 1,
                                                                memory_order_acquire,
                                                                memory_order_relaxed)) {
        }
        if (n != 0)
            return o;
    }
}

/* First i in e[0..n) with e[i].key >= key. */
static size_t entries_lower_bound(const sort_pair *e, size_t n, uint64_t key)
{
    size_t lo = 0;
    while (n > 0) {
        size_t half = n / 2;
        if (e[lo + half].key < key) {
            lo += half + 1;
            n -= half + 1;
        } else {
            n = half;
        }
    }
    return lo;
}

static void iter_add(buf_iter *it, const sort_pair *e, size_t n, uint64_t lo)
{
    size_t i = entries_lower_bound(e, n, lo);
    if (i < n) {
        it->src[it->nsrc].p = e + i;
        it->src[it->nsrc].end = e + n;
        it->nsrc++;
    }
}

void buf_iter_seek(const buf *b, buf_iter *it, uint64_t lo, uint64_t max_seq)
{
    it->order = order_acquire(b);
    it->max_seq = max_seq;
    it->nsrc = 0;
    const buf_order *o = it->order;
    for (uint32_t i = 0; i < o->nruns; i++)
        iter_add(it, o->runs[i]->e, o->runs[i]->len, lo);
    size_t len = atomic_load_explicit(&o->tail_len, memory_order_acquire);
    if (atomic_load_explicit(&o->tail_unsorted, memory_order_relaxed) < len) {
        /* The writer flushes an unsorted tail before it outgrows this. */
        memcpy(it->tail, o->tail, len * sizeof *it->tail);
        sort_pairs(it->tail, len);
        iter_add(it, it->tail, len, lo);
    } else {
        iter_add(it, o->tail, len, lo);
    }
}

int buf_iter_next(buf_iter *it, uint64_t *key, const void **val, size_t *len)
{
    while (it->nsrc) {
        unsigned m = 0;
        for (unsigned s = 1; s < it->nsrc; s++) {
            if (it->src[s].p->key < it->src[m].p->key)
                m = s;
        }
        const sort_pair *e = it->src[m].p++;
        if (it->src[m].p == it->src[m].end)
            it->src[m] = it->src[--it->nsrc];
        else if (it->src[m].end - it->src[m].p > 4)
            __builtin_prefetch((const void *)(uintptr_t)it->src[m].p[4].tag);
        const buf_node *n = (const buf_node *)(uintptr_t)e->tag;
        const buf_ver *v = visible(n, it->max_seq);
        if (v) {
            if (key)
                *key = e->key;
            return report(v, val, len);
        }
    }
    return BUF_ABSENT;
}

void buf_iter_close(buf_iter *it)
{
    if (it->order) {
        atomic_fetch_sub_explicit(&it->order->refs, 1, memory_order_release);
        it->order = NULL;
    }
    it->nsrc = 0;
}

/* ---- Validation ---------------------------------------------------- */

static int chain_ok(const buf_node *n, uint64_t *versions)
{
    const buf_ver *v = visible(n, UINT64_MAX);
    if (!v)
        return 0;
    for (; v; v = v->older) {
        ++*versions;
        if ((v->older && v->older->seq > v->seq) || (v->tomb && v->val) ||
            (!v->tomb && !v->val) || v->len > KV_MAX_VALUE)
            return 0;
    }
    return 1;
}

static int entries_ok(const buf *b, const buf_table *t, const sort_pair *e, size_t n, int sorted,
                      uint64_t *keys, uint64_t *versions, uint64_t *all, size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        const buf_node *node = (const buf_node *)(uintptr_t)e[i].tag;
        if ((sorted && i > 0 && e[i - 1].key >= e[i].key) || node->key != e[i].key ||
            table_find(t, b->seed, e[i].key, NULL) != node || !chain_ok(node, versions) ||
            *keys >= cap)
            return 0;
        all[(*keys)++] = e[i].key;
    }
    return 1;
}

static int cmp_key(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, c = *(const uint64_t *)y;
    return (a > c) - (a < c);
}

int buf_validate(const buf *b)
{
    const buf_table *t = atomic_load_explicit(&b->table, memory_order_acquire);
    const buf_order *o = atomic_load_explicit(&b->order, memory_order_acquire);
    uint64_t nkeys = buf_keys(b), keys = 0, versions = 0, used = 0;
    uint64_t *all = malloc((size_t)(nkeys ? nkeys : 1) * sizeof *all);
    if (!all)
        return KV_ENOMEM;
    int ok = atomic_load(&o->refs) >= 1 && o->nruns <= BUF_MAX_RUNS;
    for (uint32_t i = 0; ok && i < o->nruns; i++)
        ok = o->runs[i]->refs >= 1 && o->runs[i]->len > 0 &&
             entries_ok(b, t, o->runs[i]->e, o->runs[i]->len, 1, &keys, &versions, all, nkeys);
    size_t tl = atomic_load(&o->tail_len), tu = atomic_load(&o->tail_unsorted);
    ok = ok && tl <= o->tail_cap && (tu >= tl || tl <= BUF_TAIL_UNSORTED) &&
         entries_ok(b, t, o->tail, tl < tu ? tl : tu, 1, &keys, &versions, all, nkeys) &&
         (tu >= tl || entries_ok(b, t, o->tail + tu, tl - tu, 0, &keys, &versions, all, nkeys));
    if (ok && b->defer)
        ok = entries_ok(b, t, b->pending, b->npending, 0, &keys, &versions, all, nkeys);
    if (ok) {
        /* Each key in exactly one place. */
        qsort(all, (size_t)keys, sizeof *all, cmp_key);
        for (uint64_t i = 1; ok && i < keys; i++)
            ok = all[i - 1] < all[i];
    }
    free(all);
    if (!ok)
        return KV_ECORRUPT;
    for (size_t i = 0; i <= t->mask; i++) {
        const buf_node *n = atomic_load_explicit(&t->slots[i].node, memory_order_acquire);
        if (!n)
            continue;
        used++;
        if (n->key != t->slots[i].key)
            return KV_ECORRUPT;
    }
    if (keys != nkeys || used != keys || versions != buf_writes(b) ||
        used * 2 > (uint64_t)t->mask + 1)
        return KV_ECORRUPT;
    return KV_OK;
}
