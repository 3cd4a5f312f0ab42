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

static void view_init(kv_db *db, kv_view *vw)
{
    vw->db = db;
    vw->v = ver_acquire(&db->vd);
    vw->seq = atomic_load_explicit(&db->visible_seq, memory_order_acquire);
}

int kv_view_open(kv_db *db, kv_view **out)
{
    if (!db || !out)
        return KV_EINVAL;
    kv_view *vw = malloc(sizeof *vw);
    if (!vw)
        return KV_ENOMEM;
    view_init(db, vw);
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

/* RMI_GROUP keys at a time: the write buffers answer those they hold, a
 * hash probe per key, and the base the rest of the group in one
 * run_get_group. The statistics are added once per call. */
int kv_view_get_many(kv_view *vw, size_t n, const uint64_t *keys, const void **vals, size_t *lens,
                     int *rcs)
{
    if (!vw || (n && (!keys || !vals || !lens || !rcs)))
        return KV_EINVAL;
    const ver *v = vw->v;
    int buffered = vw->seq > v->active_from || v->frozen;
    uint64_t probed = 0, fallbacks = 0, lookups = 0, buffer_gets = 0;
    for (size_t at = 0; at < n; at += RMI_GROUP) {
        size_t cnt = n - at < RMI_GROUP ? n - at : RMI_GROUP;
        size_t missed;
        if (!buffered) {
            probed += run_get_group(v->base, cnt, keys + at, vals + at, lens + at, rcs + at, &missed);
            fallbacks += missed;
            lookups += cnt;
            continue;
        }
        uint64_t q[RMI_GROUP];
        size_t to[RMI_GROUP], m = 0;
        for (size_t i = at; i < at + cnt; i++) {
            int s = db_buffers_get(v, vw->seq, keys[i], &vals[i], &lens[i]);
            if (s == BUF_ABSENT) {
                to[m] = i;
                q[m++] = keys[i];
            } else {
                rcs[i] = s == BUF_VALUE ? KV_OK : KV_NOTFOUND;
                buffer_gets++;
            }
        }
        if (!m)
            continue;
        const void *qv[RMI_GROUP];
        size_t ql[RMI_GROUP];
        int qr[RMI_GROUP];
        probed += run_get_group(v->base, m, q, qv, ql, qr, &missed);
        fallbacks += missed;
        lookups += m;
        for (size_t j = 0; j < m; j++) {
            rcs[to[j]] = qr[j];
            if (qr[j] == KV_OK) {
                vals[to[j]] = qv[j];
                lens[to[j]] = ql[j];
            }
        }
    }
    ver_stripe *st = ver_my_stripe(&vw->db->vd);
    ver_stat_add(st, &st->buffer_gets, buffer_gets);
    ver_stat_add(st, &st->lookups, lookups);
    ver_stat_add(st, &st->probed, probed);
    ver_stat_add(st, &st->fallbacks, fallbacks);
    return KV_OK;
}

void kv_view_close(kv_view *vw)
{
    if (!vw)
        return;
    ver_release(&vw->db->vd, vw->v);
    free(vw);
}

/* ---- Iterators --------------------------------------------------------- */

enum { SRC_ACTIVE, SRC_FROZEN, SRC_BUFFERS };

typedef struct {
    int state; /* BUF_VALUE, BUF_TOMBSTONE, or BUF_ABSENT when exhausted or past hi */
    uint64_t key;
    const void *val;
    size_t len;
} iter_head;

struct kv_iter {
    /* The base's cursor comes first: once the buffers are exhausted (at
     * once when none was sought or none had an entry in the range) a step
     * reads only these fields. */
    const run *base;
    const uint64_t *base_keys;
    uint64_t base_pos; /* the next base entry */
    uint64_t base_n;
    uint64_t hi;
    int buffers_live; /* a buffer head is not exhausted: take the merged step */
    int owns_view;    /* kv_iter_open's: own is a view of its own, released at close */
    kv_view own;
    iter_head head[SRC_BUFFERS];
    buf_iter *bi[SRC_BUFFERS]; /* into bufs, or NULL for a buffer not sought */
    buf_iter bufs[];           /* kilobytes each: only for the buffers sought */
};

/* A buffer's next entry; past hi counts as exhausted, since keys ascend. */
static void iter_advance(kv_iter *it, int src)
{
    iter_head *h = &it->head[src];
    h->state = buf_iter_next(it->bi[src], &h->key, &h->val, &h->len);
    if (h->state != BUF_ABSENT && h->key > it->hi)
        h->state = BUF_ABSENT;
}

/* An iterator over [lo, hi] of vw, with room for the buffers it must seek:
 * none for an empty range, and no active buffer when it holds nothing vw
 * can see (the usual state after a fold). So a scan of the base alone
 * allocates a small block, not the kilobytes of two buffer iterators, and
 * a seek fills what it uses: nothing is zeroed. */
static kv_iter *iter_alloc(const kv_view *vw, uint64_t lo, uint64_t hi)
{
    const ver *v = vw->v;
    int seek_active = lo <= hi && vw->seq > v->active_from;
    int seek_frozen = lo <= hi && v->frozen != NULL;
    kv_iter *it = malloc(sizeof *it + (size_t)(seek_active + seek_frozen) * sizeof(buf_iter));
    if (!it)
        return NULL;
    buf_iter *next = it->bufs;
    it->bi[SRC_ACTIVE] = seek_active ? next++ : NULL;
    it->bi[SRC_FROZEN] = seek_frozen ? next : NULL;
    return it;
}

static void iter_start(kv_iter *it, const kv_view *vw, uint64_t lo, uint64_t hi)
{
    const ver *v = vw->v;
    it->base = v->base;
    it->base_keys = v->base->keys;
    it->base_n = v->base->n;
    it->base_pos = lo <= hi ? run_lower_bound(v->base, lo) : v->base->n;
    it->hi = hi;
    ver_stripe *st = ver_my_stripe(&vw->db->vd);
    ver_stat_add(st, &st->scans, 1);
    /* Seeking takes a reference on each buffer's ordered index, which the
     * buffer's writer frees only after a grace period: pin for it. */
    if (it->bi[SRC_ACTIVE] || it->bi[SRC_FROZEN]) {
        const ver_buf *bufs[SRC_BUFFERS] = {v->active, v->frozen};
        ver_hold h = ver_enter(&vw->db->vd);
        for (int s = 0; s < SRC_BUFFERS; s++) {
            if (it->bi[s])
                buf_iter_seek(bufs[s]->b, it->bi[s], lo, vw->seq);
        }
        ver_leave(h);
    }
    it->buffers_live = 0;
    for (int s = 0; s < SRC_BUFFERS; s++) {
        it->head[s].state = BUF_ABSENT;
        if (it->bi[s])
            iter_advance(it, s);
        it->buffers_live |= it->head[s].state != BUF_ABSENT;
    }
}

int kv_view_iter_open(kv_view *vw, uint64_t lo, uint64_t hi, kv_iter **out)
{
    if (!vw || !out)
        return KV_EINVAL;
    kv_iter *it = iter_alloc(vw, lo, hi);
    if (!it)
        return KV_ENOMEM;
    it->owns_view = 0;
    iter_start(it, vw, lo, hi);
    *out = it;
    return KV_OK;
}

/* The iterator carries its own view, so one allocation serves both. */
int kv_iter_open(kv_db *db, uint64_t lo, uint64_t hi, kv_iter **out)
{
    if (!db || !out)
        return KV_EINVAL;
    kv_view vw;
    view_init(db, &vw);
    kv_iter *it = iter_alloc(&vw, lo, hi);
    if (!it) {
        ver_release(&db->vd, vw.v);
        return KV_ENOMEM;
    }
    it->own = vw;
    it->owns_view = 1;
    iter_start(it, &it->own, lo, hi);
    *out = it;
    return KV_OK;
}

/* Whether the base has an entry left at or below hi (the base's next key). */
static inline int iter_base_left(const kv_iter *it)
{
    return it->base_pos < it->base_n && it->base_keys[it->base_pos] <= it->hi;
}

/* The base's next entry, or KV_NOTFOUND past hi, again on every later call.
 * The base holds no tombstones. */
static inline int iter_next_base(kv_iter *it, uint64_t *key, const void **val, size_t *len)
{
    uint64_t i = it->base_pos;
    if (i >= it->base_n)
        return KV_NOTFOUND;
    uint64_t k = it->base_keys[i]; /* read once: the stores below may alias it */
    if (k > it->hi)
        return KV_NOTFOUND;
    it->base_pos = i + 1;
    *key = k;
    *val = run_value(it->base, i, len);
    return KV_OK;
}

/* The general step: the smallest key over all layers, newest layer winning,
 * tombstones skipped. Out of line so the base-only step stays small. */
static __attribute__((noinline)) int iter_next_merged(kv_iter *it, uint64_t *key,
                                                      const void **val, size_t *len)
{
    iter_head *act = &it->head[SRC_ACTIVE], *fro = &it->head[SRC_FROZEN];
    for (;;) {
        /* On equal keys the active buffer is newer than the frozen one. */
        iter_head *h = act->state != BUF_ABSENT ? act : NULL;
        if (fro->state != BUF_ABSENT && (!h || fro->key < h->key))
            h = fro;
        if (!h) {
            it->buffers_live = 0;
            return iter_next_base(it, key, val, len);
        }
        if (iter_base_left(it) && it->base_keys[it->base_pos] < h->key)
            return iter_next_base(it, key, val, len);
        iter_head cur = *h;
        if (act->state != BUF_ABSENT && act->key == cur.key)
            iter_advance(it, SRC_ACTIVE);
        if (fro->state != BUF_ABSENT && fro->key == cur.key)
            iter_advance(it, SRC_FROZEN);
        if (iter_base_left(it) && it->base_keys[it->base_pos] == cur.key)
            it->base_pos++; /* shadowed by the newer entry */
        if (cur.state == BUF_TOMBSTONE)
            continue;
        *key = cur.key;
        *val = cur.val;
        *len = cur.len;
        return KV_OK;
    }
}

int kv_iter_next(kv_iter *it, uint64_t *key, const void **val, size_t *len)
{
    if (!it || !key || !val || !len)
        return KV_EINVAL;
    if (it->buffers_live)
        return iter_next_merged(it, key, val, len);
    return iter_next_base(it, key, val, len);
}

void kv_iter_close(kv_iter *it)
{
    if (!it)
        return;
    for (int s = 0; s < SRC_BUFFERS; s++) {
        if (it->bi[s])
            buf_iter_close(it->bi[s]);
    }
    if (it->owns_view)
        ver_release(&it->own.db->vd, it->own.v);
    free(it);
}
