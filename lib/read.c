/*
 * read.c — the read path: point gets, views and range iterators.
 *
 * Nothing here takes a lock or waits. A get pins the version domain, loads
 * the current version, then the visible sequence number, and looks the key
 * up newest layer first: active buffer, frozen buffer, base run. Loading the
 * version before the sequence number matters: every write at or below the
 * frozen seq of that version is already in it, so filtering its buffers by
 * the sequence number gives a consistent prefix of history.
 *
 * An iterator merges the three layers in key order; on equal keys the newest
 * layer wins and a tombstone hides the key.
 */
#include <stdlib.h>
#include <string.h>

#include "db.h"

int kv_get(kv_db *db, uint64_t key, void *buf, size_t cap, size_t *len)
{
    if (!db || !len || (!buf && cap))
        return KV_EINVAL;
    ver_hold h = ver_enter(&db->vd);
    const ver *v = ver_current(&db->vd);
    uint64_t seq = atomic_load_explicit(&db->visible_seq, memory_order_acquire);
    const void *val;
    size_t vlen;
    int rc = db_lookup(v, seq, key, &val, &vlen, h.stripe);
    if (rc == KV_OK) {
        *len = vlen;
        if (vlen > cap)
            rc = KV_ERANGE;
        else if (vlen)
            memcpy(buf, val, vlen);
    }
    ver_leave(h);
    return rc;
}

int kv_get_alloc(kv_db *db, uint64_t key, void **out, size_t *len)
{
    if (!db || !out || !len)
        return KV_EINVAL;
    ver_hold h = ver_enter(&db->vd);
    const ver *v = ver_current(&db->vd);
    uint64_t seq = atomic_load_explicit(&db->visible_seq, memory_order_acquire);
    const void *val;
    size_t vlen;
    int rc = db_lookup(v, seq, key, &val, &vlen, h.stripe);
    if (rc == KV_OK) {
        void *copy = malloc(vlen ? vlen : 1);
        if (!copy) {
            rc = KV_ENOMEM;
        } else {
            if (vlen)
                memcpy(copy, val, vlen);
            *out = copy;
            *len = vlen;
        }
    }
    ver_leave(h);
    return rc;
}

void kv_free(void *p)
{
    free(p);
}

/* ---- Views ------------------------------------------------------------ */

struct kv_view {
    kv_db *db;
    ver *v;       /* counted reference */
    uint64_t seq; /* writes with seq <= this are visible */
};

int kv_view_open(kv_db *db, kv_view **out)
{
    if (!db || !out)
        return KV_EINVAL;
    kv_view *vw = malloc(sizeof *vw);
    if (!vw)
        return KV_ENOMEM;
    vw->db = db;
    vw->v = ver_acquire(&db->vd);
    vw->seq = atomic_load_explicit(&db->visible_seq, memory_order_acquire);
    *out = vw;
    return KV_OK;
}

int kv_view_get(kv_view *vw, uint64_t key, const void **val, size_t *len)
{
    if (!vw || !val || !len)
        return KV_EINVAL;
    ver_stripe *st = ver_my_stripe(&vw->db->vd);
    return db_lookup(vw->v, vw->seq, key, val, len, st);
}

void kv_view_close(kv_view *vw)
{
    if (!vw)
        return;
    ver_release(&vw->db->vd, vw->v);
    free(vw);
}

/* ---- Iterators --------------------------------------------------------- */

enum { SRC_ACTIVE, SRC_FROZEN, SRC_BASE, SRC_COUNT };

typedef struct {
    int state; /* BUF_VALUE, BUF_TOMBSTONE, or BUF_ABSENT when exhausted */
    uint64_t key;
    const void *val;
    size_t len;
} iter_head;

struct kv_iter {
    kv_view *view;
    int owns_view;
    uint64_t hi;
    int done;
    buf_iter bi[2]; /* active, frozen */
    uint64_t base_pos;
    iter_head head[SRC_COUNT];
};

static void iter_advance(kv_iter *it, int src)
{
    iter_head *h = &it->head[src];
    if (src == SRC_BASE) {
        const run *r = it->view->v->base;
        if (it->base_pos < r->n) {
            h->key = r->keys[it->base_pos];
            h->val = run_value(r, it->base_pos, &h->len);
            h->state = BUF_VALUE;
            it->base_pos++;
        } else {
            h->state = BUF_ABSENT;
        }
        return;
    }
    h->state = buf_iter_next(&it->bi[src], &h->key, &h->val, &h->len);
}

int kv_view_iter_open(kv_view *vw, uint64_t lo, uint64_t hi, kv_iter **out)
{
    if (!vw || !out)
        return KV_EINVAL;
    kv_iter *it = calloc(1, sizeof *it);
    if (!it)
        return KV_ENOMEM;
    it->view = vw;
    it->hi = hi;
    ver_stripe *st = ver_my_stripe(&vw->db->vd);
    ver_stat_add(st, &st->scans, 1);
    if (lo > hi) {
        it->done = 1;
        *out = it;
        return KV_OK;
    }
    const ver *v = vw->v;
    /* Seeking takes a reference on each buffer's ordered index, which the
     * buffer's writer frees only after a grace period: pin for it. */
    ver_hold h = ver_enter(&vw->db->vd);
    buf_iter_seek(v->active->b, &it->bi[SRC_ACTIVE], lo, vw->seq);
    if (v->frozen)
        buf_iter_seek(v->frozen->b, &it->bi[SRC_FROZEN], lo, vw->seq);
    ver_leave(h);
    iter_advance(it, SRC_ACTIVE);
    if (v->frozen)
        iter_advance(it, SRC_FROZEN);
    else
        it->head[SRC_FROZEN].state = BUF_ABSENT;
    it->base_pos = run_lower_bound(v->base, lo);
    iter_advance(it, SRC_BASE);
    *out = it;
    return KV_OK;
}

int kv_iter_open(kv_db *db, uint64_t lo, uint64_t hi, kv_iter **out)
{
    if (!db || !out)
        return KV_EINVAL;
    kv_view *vw;
    int rc = kv_view_open(db, &vw);
    if (rc != KV_OK)
        return rc;
    rc = kv_view_iter_open(vw, lo, hi, out);
    if (rc != KV_OK) {
        kv_view_close(vw);
        return rc;
    }
    (*out)->owns_view = 1;
    return KV_OK;
}

/* The general step: the smallest key over all layers, newest layer winning,
 * tombstones skipped. Out of line so the base-only path stays small. */
static __attribute__((noinline)) int iter_next_merged(kv_iter *it, uint64_t *key,
                                                      const void **val, size_t *len)
{
    while (!it->done) {
        int best = -1;
        for (int s = 0; s < SRC_COUNT; s++) {
            /* Lower index = newer layer, so strict < keeps the newest. */
            if (it->head[s].state != BUF_ABSENT && (best < 0 || it->head[s].key < it->head[best].key))
                best = s;
        }
        if (best < 0 || it->head[best].key > it->hi) {
            it->done = 1;
            break;
        }
        iter_head h = it->head[best];
        for (int s = 0; s < SRC_COUNT; s++) {
            if (it->head[s].state != BUF_ABSENT && it->head[s].key == h.key)
                iter_advance(it, s);
        }
        if (h.state == BUF_TOMBSTONE)
            continue;
        if (h.key == it->hi)
            it->done = 1; /* hi may be UINT64_MAX: stop without computing hi + 1 */
        *key = h.key;
        *val = h.val;
        *len = h.len;
        return KV_OK;
    }
    return KV_NOTFOUND;
}

int kv_iter_next(kv_iter *it, uint64_t *key, const void **val, size_t *len)
{
    if (!it || !key || !val || !len)
        return KV_EINVAL;
    if (it->head[SRC_ACTIVE].state != BUF_ABSENT || it->head[SRC_FROZEN].state != BUF_ABSENT)
        return iter_next_merged(it, key, val, len);
    /* Only the base is left (the usual case once the buffers are folded):
     * step it directly. It holds no tombstones. */
    iter_head *hb = &it->head[SRC_BASE];
    if (it->done || hb->state == BUF_ABSENT || hb->key > it->hi) {
        it->done = 1;
        return KV_NOTFOUND;
    }
    *key = hb->key;
    *val = hb->val;
    *len = hb->len;
    if (hb->key == it->hi)
        it->done = 1;
    const run *r = it->view->v->base;
    if (it->base_pos < r->n) {
        hb->key = r->keys[it->base_pos];
        hb->val = run_value(r, it->base_pos, &hb->len);
        it->base_pos++;
    } else {
        hb->state = BUF_ABSENT;
    }
    return KV_OK;
}

void kv_iter_close(kv_iter *it)
{
    if (!it)
        return;
    buf_iter_close(&it->bi[SRC_ACTIVE]);
    buf_iter_close(&it->bi[SRC_FROZEN]);
    if (it->owns_view)
        kv_view_close(it->view);
    free(it);
}
