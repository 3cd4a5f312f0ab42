/*
 * buffer.h — the write buffer: recent writes, readable without locks.
 *
 * One writer at a time (callers serialise) inserts versions of keys; any
 * number of readers look keys up and iterate in key order concurrently,
 * without locks. Each key keeps a chain of versions, newest first, each
 * tagged with the write's sequence number, so a reader at sequence S sees
 * exactly the newest version with seq <= S. Values are copied into the
 * buffer's own arena and stay at a fixed address until buf_free.
 */
#ifndef KYRO_BUFFER_H
#define KYRO_BUFFER_H

#include <stddef.h>
#include <stdint.h>

#include "sort.h"

typedef struct buf buf;

int buf_new(buf **out);           /* KV_OK / KV_ENOMEM */
void buf_free(buf *b);            /* no reader may still use it */

/* Writer side (one thread at a time). tombstone != 0 records a delete
 * (val/len ignored). The value is copied. KV_OK / KV_ENOMEM.
 * seq must be >= the seq of every earlier write of the same key (equal seqs:
 * the later put wins, as in a batch); otherwise KV_EINVAL and nothing changes.
 * len > KV_MAX_VALUE gives KV_ETOOBIG; val may be NULL only when len is 0.
 * On any error no reader can see a change (buf_memory aside). */
int buf_put(buf *b, uint64_t key, uint64_t seq, int tombstone, const void *val, size_t len);
/* Bulk loading by the only thread using the buffer (recovery): after
 * buf_defer_order, new keys are indexed for buf_get but not yet ordered;
 * buf_finish_order sorts them in one pass and adds them to the ordered
 * index. No iteration or seek may run in between. KV_OK, or KV_ENOMEM with
 * the buffer still deferred (finishing can be tried again). */
void buf_defer_order(buf *b);
int buf_finish_order(buf *b);
/* The owner's grace period: grace(ctx) returns once every reader that was
 * pinned when it was called has unpinned (ver_synchronize). With it the
 * writer frees replaced parts of the ordered index as it goes, calling it
 * from buf_put now and then; without it (the default) they stay until
 * buf_free. Set before the buffer is shared. */
void buf_set_grace(buf *b, void (*grace)(void *ctx), void *ctx);
/* Size the hash index for nkeys keys now rather than by repeated doubling
 * (a hint: KV_ENOMEM leaves the buffer as it was). */
int buf_reserve(buf *b, uint64_t nkeys);
/* Start loading the hash slot a lookup or insert of key will read first. */
void buf_prefetch(const buf *b, uint64_t key);
/* buf_put that also reports what the key held here before the write:
 * BUF_VALUE, BUF_TOMBSTONE or BUF_ABSENT (saves the writer a lookup). */
int buf_put_prev(buf *b, uint64_t key, uint64_t seq, int tombstone, const void *val, size_t len,
                 int *prev);

/* Reader side (any thread, lock-free). */
enum { BUF_ABSENT = 0, BUF_VALUE = 1, BUF_TOMBSTONE = 2 };
/* The newest version of key with seq <= max_seq. BUF_VALUE: *val and *len name
 * the bytes (never NULL, even for 0 bytes), owned by the buffer, fixed and
 * unchanged until buf_free. BUF_TOMBSTONE: *val = NULL, *len = 0. BUF_ABSENT:
 * *val and *len untouched. val and len may be NULL. */
int buf_get(const buf *b, uint64_t key, uint64_t max_seq, const void **val, size_t *len);

uint64_t buf_keys(const buf *b);     /* distinct keys inserted */
uint64_t buf_writes(const buf *b);   /* versions inserted */
uint64_t buf_memory(const buf *b);   /* heap bytes held */

/* Ordered iteration, lock-free. Visits each key >= lo in ascending order that
 * has a version with seq <= max_seq, reporting that version (value or
 * tombstone). Keys inserted after the seek are not seen. buf_iter_seek holds
 * a reference on the ordered index until buf_iter_close (which a seeked
 * iterator needs before buf_free); on a buffer with a grace function, the
 * seek must run while the thread is pinned in that grace-period domain
 * (the iteration after it need not). */
#define BUF_TAIL_UNSORTED 32 /* most out-of-order new keys an iterator sorts */
#define BUF_MAX_RUNS 64       /* sorted runs in the ordered index (sizes more than halve) */
typedef struct {
    struct buf_order *order;
    uint64_t max_seq;
    unsigned nsrc;
    struct {
        const sort_pair *p, *end; /* (key, node) entries of one source, unread part */
    } src[BUF_MAX_RUNS + 1];      /* the runs and the tail */
    sort_pair tail[BUF_TAIL_UNSORTED]; /* an unsorted tail, sorted for this iterator */
} buf_iter;
void buf_iter_seek(const buf *b, buf_iter *it, uint64_t lo, uint64_t max_seq);
/* Returns BUF_VALUE / BUF_TOMBSTONE with the current entry and advances, or
 * BUF_ABSENT at the end. */
int buf_iter_next(buf_iter *it, uint64_t *key, const void **val, size_t *len);
void buf_iter_close(buf_iter *it); /* after a seek; again is harmless */

/* Check every structural invariant (runs ascending, each key in the ordered
 * index and the hash index exactly once, load factor, version chains in
 * seq order, counters). KV_OK, KV_ECORRUPT, or KV_ENOMEM. O(n log n); not
 * concurrently with buf_put. For tests. */
int buf_validate(const buf *b);

/* Test hook: before each heap allocation the buffer calls fn(ctx, bytes); a
 * nonzero return makes that allocation fail (KV_ENOMEM). NULL removes it.
 * Process-wide and not thread-safe: set it only while no buffer is in use
 * by another thread. */
typedef int (*buf_fault_fn)(void *ctx, size_t bytes);
void buf_set_fault_hook(buf_fault_fn fn, void *ctx);

#endif
