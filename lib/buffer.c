/*
 * buffer.c — the write buffer: a skiplist of keys (ordered scans) plus an
 * open-addressing hash index key -> node (point lookups); each node holds a
 * chain of versions, newest first. One writer, any number of lock-free readers.
 *
 * Owns: every node, version and value byte (bump arenas of chunks growing to
 * 1 MiB; a value over BUF_BIG gets a dedicated allocation), the skiplist head
 * and every hash table it ever published (the live one and all its smaller
 * predecessors, together < 2x the live one). Nothing is freed or moved before
 * buf_free, so any pointer a reader ever loads stays valid, and no address is
 * ever reused (no ABA).
 *
 * Invariants: level 0 holds each key once, strictly ascending, and level i is
 * a sub-list of level i-1; every node is in the live table exactly once; the
 * live table is at most half full, so every probe sequence reaches an empty
 * (NULL) slot; a slot, once it holds a node, never changes; a published
 * version never changes, and a chain is newest first in non-increasing seq.
 *
 * Memory ordering: the writer fully initialises an object (a node with its
 * first version and its next[] links; a version with its older link; a table
 * with all its slots) and only then makes it reachable with one release store
 * (prev->next[i], bottom-up; slot.node; node->newest; b->table). Readers reach
 * every object only through acquire loads of those fields, so the object's
 * initialisation happens-before anything they read from it. A reader on a
 * stale table or a stale link misses only keys inserted concurrently: a
 * reader that acquired a published max_seq afterwards loads a table and links
 * at least as new as those the writer had made when it published that seq.
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

#define BUF_MAX_HEIGHT 16                   /* branching 4: ample for 2^32 keys */
#define BUF_CHUNK_MIN ((size_t)4 << 10)     /* first arena chunk */
#define BUF_CHUNK_MAX ((size_t)1 << 20)     /* chunks double up to this */
#define BUF_BIG (BUF_CHUNK_MAX / 4)         /* larger requests: own allocation */
#define BUF_TABLE_MIN 64                    /* slots in a new buffer's table */

_Static_assert(ATOMIC_POINTER_LOCK_FREE == 2, "lock-free atomic pointers required");
_Static_assert(KV_MAX_VALUE <= UINT32_MAX, "value length is stored in 32 bits");

/* One version of a key. Immutable once published. val is NULL only for a
 * tombstone; a 0-byte value points at buf_empty. */
typedef struct buf_ver {
    uint64_t seq;
    const void *val;
    const struct buf_ver *older;
    uint32_t len;
    uint32_t tomb;
} buf_ver;

/* A skiplist link. next_key copies the key of the node it points to, for
 * the writer only: its search decides whether to step forward without
 * touching the next node (a cache miss per rejected step saved). Readers
 * load the pointer and read the key from the node. */
typedef struct {
    _Atomic(struct buf_node *) node;
    uint64_t next_key;
} buf_link;

typedef struct buf_node {
    uint64_t key;
    _Atomic(const buf_ver *) newest; /* never NULL once published */
    uint32_t height;
    buf_link next[]; /* height entries */
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
    /* Read by readers; written only by buf_new (max_height: rarely). */
    _Atomic(buf_table *) table;
    buf_node *head;
    uint64_t seed;
    atomic_int max_height;
    unsigned char pad_[64]; /* keep the counters below off the readers' line */
    /* Written by the writer on every put; read by any thread (relaxed). */
    _Atomic uint64_t nkeys, nwrites, mem;
    /* Writer only. */
    buf_node *tail[BUF_MAX_HEIGHT]; /* last node of each level, or head */
    /* The previous insert's prev[] (with the inserted node on its own
     * levels) and its key: an insert of a larger key resumes each level's
     * search there, so ascending runs (sorted batches) skip most of the
     * walk from the head. finger[0] == NULL until the first insert. */
    buf_node *finger[BUF_MAX_HEIGHT];
    uint64_t finger_key;
    /* Between buf_defer_order and buf_finish_order: new keys wait here,
     * in the hash index only, to be linked in key order in one pass. */
    int defer;
    sort_pair *pending; /* (key, node pointer) */
    size_t npending, cap_pending;
    uint64_t rng;
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

/* Chunks and tables come from os_big_alloc: a folded buffer's memory goes
 * back to the system when the buffer is freed. */
static void *big_alloc(size_t bytes)
{
    if (fault_fn && fault_fn(fault_ctx, bytes))
        return NULL;
    return os_big_alloc(bytes);
}

static buf_chunk *chunk_new(buf *b, buf_arena *a, size_t size)
{
    buf_chunk *c = big_alloc(sizeof *c + size);
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
    buf_table *t = bytes < OS_BIG_ALLOC ? xcalloc(1, bytes) : big_alloc(bytes);
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

/* ---- Skiplist ------------------------------------------------------ */

static size_t node_bytes(uint32_t height)
{
    return sizeof(buf_node) + height * sizeof(buf_link);
}

static uint32_t random_height(buf *b)
{
    /* xorshift64*: each extra level with probability 1/4 */
    b->rng ^= b->rng >> 12;
    b->rng ^= b->rng << 25;
    b->rng ^= b->rng >> 27;
    uint64_t r = b->rng * 0x2545f4914f6cdd1dull;
    uint32_t h = 1;
    while (h < BUF_MAX_HEIGHT && (r >> 62) == 0) {
        h++;
        r <<= 2;
    }
    return h;
}

static const buf_node *load_next(const buf_node *n, int level)
{
    return atomic_load_explicit(&n->next[level].node, memory_order_acquire);
}

/* Reader side: the first node with key >= key, or NULL. */
static const buf_node *find_ge(const buf *b, uint64_t key)
{
    const buf_node *x = b->head;
    int level = atomic_load_explicit(&b->max_height, memory_order_relaxed) - 1;
    for (;;) {
        const buf_node *nx = load_next(x, level);
        if (nx && nx->key < key)
            x = nx;
        else if (level == 0)
            return nx;
        else
            level--;
    }
}

/* Writer side: prev[i] = the last node at level i with key < key. Appends
 * past the current maximum (sequential keys) take the tail pointers. */
static void find_prev(buf *b, uint64_t key, buf_node **prev)
{
    if (b->tail[0] == b->head || b->tail[0]->key < key) {
        memcpy(prev, b->tail, sizeof b->tail);
        return;
    }
    int top = atomic_load_explicit(&b->max_height, memory_order_relaxed);
    buf_node *x = b->head;
    int resume = b->finger[0] && b->finger_key < key;
    for (int i = BUF_MAX_HEIGHT - 1; i >= 0; i--) {
        if (i < top) {
            /* Both x and finger[i] are level-i nodes below key: start from
             * whichever is further along. */
            buf_node *f = resume ? b->finger[i] : b->head;
            if (f != b->head && (x == b->head || f->key > x->key))
                x = f;
            for (;;) {
                buf_node *nx = atomic_load_explicit(&x->next[i].node, memory_order_relaxed);
                if (!nx || x->next[i].next_key >= key)
                    break;
                x = nx;
            }
        }
        prev[i] = x;
    }
}

static void link_node(buf *b, buf_node *n)
{
    buf_node *prev[BUF_MAX_HEIGHT];
    find_prev(b, n->key, prev);
    for (uint32_t i = 0; i < n->height; i++) {
        buf_node *nx = atomic_load_explicit(&prev[i]->next[i].node, memory_order_relaxed);
        n->next[i].next_key = prev[i]->next[i].next_key;
        atomic_store_explicit(&n->next[i].node, nx, memory_order_relaxed);
        /* Publish bottom-up: a reader that finds n at level i can always
         * continue from it at every level below. */
        prev[i]->next[i].next_key = n->key;
        atomic_store_explicit(&prev[i]->next[i].node, n, memory_order_release);
        if (!nx)
            b->tail[i] = n;
    }
    for (int i = 0; i < BUF_MAX_HEIGHT; i++)
        b->finger[i] = i < (int)n->height ? n : prev[i];
    b->finger_key = n->key;
    if ((int)n->height > atomic_load_explicit(&b->max_height, memory_order_relaxed))
        atomic_store_explicit(&b->max_height, (int)n->height, memory_order_relaxed);
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
    atomic_init(&b->max_height, 1);
    b->meta.next_size = BUF_CHUNK_MIN;
    b->vals.next_size = BUF_CHUNK_MIN;

    /* Seed the hash and the heights from this buffer's address, a process
     * counter and the clock, so keys cannot be chosen against the table. */
    static atomic_uint_fast64_t instances;
    struct timespec ts = {0, 0};
    timespec_get(&ts, TIME_UTC);
    uint64_t s = (uint64_t)(uintptr_t)b ^ ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^
                 (atomic_fetch_add_explicit(&instances, 1, memory_order_relaxed) << 17);
    b->seed = buf_hash(0x9e3779b97f4a7c15ull, s);
    b->rng = buf_hash(b->seed, 0x2545f4914f6cdd1dull) | 1;

    b->head = arena_alloc(b, &b->meta, node_bytes(BUF_MAX_HEIGHT), alignof(buf_node));
    if (!b->head)
        goto fail;
    b->head->key = 0;
    b->head->height = BUF_MAX_HEIGHT;
    atomic_init(&b->head->newest, NULL);
    for (int i = 0; i < BUF_MAX_HEIGHT; i++) {
        atomic_init(&b->head->next[i].node, NULL);
        b->tail[i] = b->head;
    }
    buf_table *t = table_new(b, BUF_TABLE_MIN);
    if (!t)
        goto fail;
    atomic_init(&b->table, t);
    *out = b;
    return KV_OK;
fail:
    arena_free(&b->meta);
    free(b);
    return KV_ENOMEM;
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

    /* A new key: node and its first version side by side (one cache line
     * for the common height 1). */
    uint32_t h = random_height(b);
    size_t nb = node_bytes(h);
    _Static_assert(sizeof(buf_node) % alignof(buf_ver) == 0, "version placement");
    void *p = arena_alloc(b, &b->meta, nb + sizeof(buf_ver), alignof(buf_node));
    if (!p)
        return KV_ENOMEM;
    buf_node *node = p;
    buf_ver *v = (void *)((unsigned char *)p + nb);
    *v = (buf_ver){.seq = seq, .val = copy, .older = NULL, .len = (uint32_t)len,
                   .tomb = tombstone != 0};
    node->key = key;
    node->height = h;
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
        link_node(b, node);
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

uint64_t *buf_finish_order(buf *b, size_t *nkeys)
{
    sort_pairs(b->pending, b->npending);
    /* Ascending keys: each link resumes at the previous one (the tail or
     * the finger), so the whole pass is about linear. */
    for (size_t i = 0; i < b->npending; i++) {
        /* Nodes lie in arrival order, so each link is a cache miss unless
         * it was asked for a few links ahead. */
        if (i + 8 < b->npending)
            __builtin_prefetch((void *)(uintptr_t)b->pending[i + 8].tag);
        link_node(b, (buf_node *)(uintptr_t)b->pending[i].tag);
    }
    /* Hand the sorted keys back in the same memory (8 of every 16 bytes,
     * front to back, so nothing is overwritten before it is read). */
    uint64_t *keys = (uint64_t *)(void *)b->pending;
    for (size_t i = 0; i < b->npending; i++)
        keys[i] = b->pending[i].key;
    *nkeys = b->npending;
    b->pending = NULL;
    b->npending = b->cap_pending = 0;
    b->defer = 0;
    return keys;
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

void buf_iter_seek(const buf *b, buf_iter *it, uint64_t lo, uint64_t max_seq)
{
    it->b = b;
    it->max_seq = max_seq;
    it->node = find_ge(b, lo);
}

int buf_iter_next(buf_iter *it, uint64_t *key, const void **val, size_t *len)
{
    const buf_node *n = it->node;
    while (n) {
        const buf_ver *v = visible(n, it->max_seq);
        const buf_node *nx = load_next(n, 0);
        if (v) {
            it->node = nx;
            if (key)
                *key = n->key;
            return report(v, val, len);
        }
        n = nx;
    }
    it->node = NULL;
    return BUF_ABSENT;
}

int buf_validate(const buf *b)
{
    const buf_table *t = atomic_load_explicit(&b->table, memory_order_acquire);
    int top = atomic_load_explicit(&b->max_height, memory_order_relaxed);
    uint64_t keys = 0, versions = 0, used = 0;
    if (top < 1 || top > BUF_MAX_HEIGHT)
        return KV_ECORRUPT;
    for (int level = BUF_MAX_HEIGHT - 1; level >= 0; level--) {
        const buf_node *prev = NULL, *lower = b->head;
        for (const buf_node *n = load_next(b->head, level); n; n = load_next(n, level)) {
            if (level >= top || n->height <= (uint32_t)level ||
                n->height > BUF_MAX_HEIGHT || (prev && prev->key >= n->key))
                return KV_ECORRUPT;
            if ((prev ? prev : b->head)->next[level].next_key != n->key)
                return KV_ECORRUPT; /* the writer's copy of the key */
            if (level > 0) { /* n must also be on the level below, after lower */
                while (lower && lower != n)
                    lower = load_next(lower, level - 1);
                if (!lower)
                    return KV_ECORRUPT;
            }
            if (level == 0) {
                keys++;
                if (table_find(t, b->seed, n->key, NULL) != n)
                    return KV_ECORRUPT;
                const buf_ver *v = visible(n, UINT64_MAX);
                if (!v)
                    return KV_ECORRUPT;
                for (; v; v = v->older) {
                    versions++;
                    if ((v->older && v->older->seq > v->seq) || (v->tomb && v->val) ||
                        (!v->tomb && !v->val) || v->len > KV_MAX_VALUE)
                        return KV_ECORRUPT;
                }
            }
            prev = n;
        }
    }
    for (size_t i = 0; i <= t->mask; i++) {
        const buf_node *n = atomic_load_explicit(&t->slots[i].node, memory_order_acquire);
        if (!n)
            continue;
        used++;
        if (n->key != t->slots[i].key)
            return KV_ECORRUPT;
    }
    if (keys != buf_keys(b) || used != keys || versions != buf_writes(b) ||
        used * 2 > (uint64_t)t->mask + 1)
        return KV_ECORRUPT;
    return KV_OK;
}
