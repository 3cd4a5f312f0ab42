/*
 * fuzz_ops.c — the whole database against a reference map.
 *
 * The input is a program: each byte group is one operation (put, overwrite,
 * delete, batch, get, get_alloc, scan, view (with get_many), rebuild,
 * snapshot, compact, sync, stats, reopen, read-only reopen) on a real
 * database in a scratch directory (KV_SYNC_OFF, a tiny rebuild_appends so
 * background folds race with the operations). A plain array of (key, value) is the reference;
 * every read is compared with it and any difference, or any unexpected
 * status, aborts. Each input starts from an empty directory and is bounded:
 * at most 200 operations, values up to 64 bytes.
 *
 * Layout: [config u8] then ops, each [op u8][args...] (a reopen needs an
 * argument byte that is 0 mod 4); keys come from a
 * small table of interesting values (0, UINT64_MAX, around 2^63, a dense
 * run) unless the key byte is >= 0xF0, in which case 8 raw bytes follow.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kyro.h"

#define MAX_OPS 200
#define MAX_VAL 64
#define MAX_REF 512

static char root[256], dbdir[300];

static void wipe(void)
{
    DIR *d = opendir(dbdir);
    if (!d)
        return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", dbdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dbdir);
}

static void cleanup(void)
{
    wipe();
    rmdir(root);
}

/* One scratch directory per process, made before the first input. */
__attribute__((constructor)) static void make_dir(void)
{
    const char *t = getenv("TMPDIR");
    struct stat st;
    if (!t)
        t = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/fuzz_ops-XXXXXX", t);
    if (!mkdtemp(root))
        abort();
    snprintf(dbdir, sizeof dbdir, "%s/db", root);
    atexit(cleanup);
}

#define CHECK(cond, ...)                                                                         \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz_ops: op %d: ", opno);                                          \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fprintf(stderr, "\n");                                                               \
            abort();                                                                             \
        }                                                                                        \
    } while (0)
#define RC(call, want)                                                                           \
    do {                                                                                         \
        int rc_ = (call);                                                                        \
        CHECK(rc_ == (want), "%s = %s, want %s", #call, kv_strerror(rc_), kv_strerror(want));   \
    } while (0)

static int opno;

/* ---- Input reader ---------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n;
} rd;

static unsigned byte(rd *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static uint64_t take_key(rd *r)
{
    static const uint64_t table[] = {
        0,          1,          2,          3,          4,          5,
        100,        101,        102,        1000,       4096,       65535,
        1ull << 32, (1ull << 63) - 1, 1ull << 63, (1ull << 63) + 1, UINT64_MAX - 2, UINT64_MAX - 1,
        UINT64_MAX, 0xdeadbeef, 77777,      77778,      1ull << 40, 12345678901ull,
    };
    unsigned b = byte(r);
    if (b < 0xF0)
        return table[b % (sizeof table / sizeof table[0])];
    uint64_t k = 0;
    for (int i = 0; i < 8; i++)
        k |= (uint64_t)byte(r) << (8 * i);
    return k;
}

static uint32_t tag_counter;

/* A value: its length from the input, its bytes a pattern unique to this
 * write, so a stale or misplaced value never compares equal. */
static size_t take_value(rd *r, uint8_t *out)
{
    size_t len = byte(r) % (MAX_VAL + 1);
    uint32_t tag = ++tag_counter;
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(tag * 2654435761u >> (8 * (i % 4))) ^ (uint8_t)(i * 13);
    if (len >= 4)
        memcpy(out, &tag, 4);
    return len;
}

/* ---- Reference map --------------------------------------------------------- */

typedef struct {
    uint64_t key;
    size_t len;
    uint8_t val[MAX_VAL];
} ref_entry;

static ref_entry ref[MAX_REF];
static size_t nref;

static ref_entry *ref_find(uint64_t key)
{
    for (size_t i = 0; i < nref; i++)
        if (ref[i].key == key)
            return &ref[i];
    return NULL;
}

static void ref_put(uint64_t key, const uint8_t *val, size_t len)
{
    ref_entry *e = ref_find(key);
    if (!e) {
        if (nref == MAX_REF)
            abort(); /* cannot happen: at most 200 ops x 8 batch entries */
        e = &ref[nref++];
        e->key = key;
    }
    e->len = len;
    memcpy(e->val, val, len);
}

static void ref_del(uint64_t key)
{
    ref_entry *e = ref_find(key);
    if (e)
        *e = ref[--nref];
}

static int cmp_ref(const void *a, const void *b)
{
    uint64_t x = ((const ref_entry *)a)->key, y = ((const ref_entry *)b)->key;
    return x < y ? -1 : x > y;
}

/* ---- Checks ---------------------------------------------------------------- */

static void check_get(kv_db *db, uint64_t key)
{
    const ref_entry *e = ref_find(key);
    uint8_t buf[MAX_VAL + 1];
    size_t len = 999;
    int rc = kv_get(db, key, buf, sizeof buf, &len);
    if (!e) {
        CHECK(rc == KV_NOTFOUND, "kv_get(%llx) = %s, want KV_NOTFOUND", (unsigned long long)key,
              kv_strerror(rc));
        return;
    }
    CHECK(rc == KV_OK, "kv_get(%llx) = %s", (unsigned long long)key, kv_strerror(rc));
    CHECK(len == e->len && memcmp(buf, e->val, len) == 0, "kv_get(%llx): wrong value",
          (unsigned long long)key);
    /* Size query and a buffer one byte short. */
    len = 999;
    rc = kv_get(db, key, NULL, 0, &len);
    CHECK(len == e->len && rc == (e->len ? KV_ERANGE : KV_OK), "size query (%llx) = %s, len %zu",
          (unsigned long long)key, kv_strerror(rc), len);
    if (e->len) {
        memset(buf, 0xAB, sizeof buf);
        rc = kv_get(db, key, buf, e->len - 1, &len);
        CHECK(rc == KV_ERANGE && len == e->len && buf[0] == 0xAB,
              "kv_get with a short buffer = %s", kv_strerror(rc));
    }
}

static void check_get_alloc(kv_db *db, uint64_t key)
{
    const ref_entry *e = ref_find(key);
    void *v = NULL;
    size_t len = 0;
    int rc = kv_get_alloc(db, key, &v, &len);
    if (!e) {
        CHECK(rc == KV_NOTFOUND, "kv_get_alloc(%llx) = %s", (unsigned long long)key,
              kv_strerror(rc));
        return;
    }
    CHECK(rc == KV_OK && v != NULL, "kv_get_alloc(%llx) = %s", (unsigned long long)key,
          kv_strerror(rc));
    CHECK(len == e->len && memcmp(v, e->val, len) == 0, "kv_get_alloc(%llx): wrong value",
          (unsigned long long)key);
    kv_free(v);
}

/* A scan of [lo, hi] through it (an iterator on the db or on a view) must
 * be exactly the reference entries in range, ascending. */
static void check_iter(kv_iter *it, uint64_t lo, uint64_t hi, const ref_entry *snap, size_t nsnap)
{
    size_t i = 0;
    while (i < nsnap && snap[i].key < lo)
        i++;
    uint64_t k;
    const void *v;
    size_t len;
    int rc;
    while ((rc = kv_iter_next(it, &k, &v, &len)) == KV_OK) {
        CHECK(lo <= hi && i < nsnap && snap[i].key <= hi, "scan [%llx,%llx] yields extra key %llx",
              (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)k);
        CHECK(k == snap[i].key, "scan [%llx,%llx]: key %llx, want %llx", (unsigned long long)lo,
              (unsigned long long)hi, (unsigned long long)k, (unsigned long long)snap[i].key);
        CHECK(len == snap[i].len && (len == 0 || memcmp(v, snap[i].val, len) == 0),
              "scan: wrong value for %llx", (unsigned long long)k);
        i++;
    }
    CHECK(rc == KV_NOTFOUND, "kv_iter_next = %s", kv_strerror(rc));
    CHECK(lo > hi || i == nsnap || snap[i].key > hi, "scan [%llx,%llx] stops early before %llx",
          (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)snap[i].key);
    CHECK(kv_iter_next(it, &k, &v, &len) == KV_NOTFOUND, "iterator restarts after the end");
}

static ref_entry sorted[MAX_REF];

static size_t sorted_ref(void)
{
    memcpy(sorted, ref, nref * sizeof *ref);
    qsort(sorted, nref, sizeof *sorted, cmp_ref);
    return nref;
}

static void check_scan(kv_db *db, uint64_t lo, uint64_t hi)
{
    kv_iter *it;
    RC(kv_iter_open(db, lo, hi, &it), KV_OK);
    check_iter(it, lo, hi, sorted, sorted_ref());
    kv_iter_close(it);
}

static void check_all(kv_db *db)
{
    for (size_t i = 0; i < nref; i++)
        check_get(db, ref[i].key);
    check_scan(db, 0, UINT64_MAX);
    kv_stats st;
    RC(kv_stats_get(db, &st), KV_OK);
    CHECK(st.keys == nref, "kv_stats keys = %llu, want %zu", (unsigned long long)st.keys, nref);
}

/* ---- The program ------------------------------------------------------------ */

static kv_db *open_db(const kv_options *o)
{
    kv_db *db = NULL;
    RC(kv_open(dbdir, o, &db), KV_OK);
    return db;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rd r = {data, size};
    wipe();
    nref = 0;
    tag_counter = 0;
    opno = -1;

    unsigned cfg = byte(&r);
    kv_options o;
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    o.rebuild_appends = 1 + (cfg & 15);
    o.wal_max_bytes = cfg & 0x10 ? 4096 : 0; /* automatic snapshots too */
    kv_db *db = open_db(&o);
    kv_batch *b;
    RC(kv_batch_new(&b), KV_OK);
    uint8_t val[MAX_VAL];

    for (opno = 0; opno < MAX_OPS && r.n; opno++) {
        unsigned op = byte(&r) % 16;
        uint64_t key, lo, hi;
        size_t len;
        switch (op) {
        case 0: /* put */
        case 1:
            key = take_key(&r);
            len = take_value(&r, val);
            RC(kv_put(db, key, len ? val : NULL, len), KV_OK);
            ref_put(key, val, len);
            break;
        case 2: /* overwrite an existing key */
            if (!nref)
                break;
            key = ref[byte(&r) % nref].key;
            len = take_value(&r, val);
            RC(kv_put(db, key, val, len), KV_OK);
            ref_put(key, val, len);
            break;
        case 3: /* delete (present or not) */
            key = take_key(&r);
            RC(kv_delete(db, key), KV_OK);
            ref_del(key);
            break;
        case 4: { /* batch */
            unsigned n = byte(&r) % 9;
            kv_batch_clear(b);
            static struct {
                uint64_t key;
                int del;
                size_t len;
                uint8_t val[MAX_VAL];
            } ents[8];
            for (unsigned i = 0; i < n; i++) {
                unsigned how = byte(&r);
                ents[i].key = how & 1 && i > 0 ? ents[i - 1].key : take_key(&r);
                ents[i].del = (how & 6) == 6;
                if (ents[i].del) {
                    RC(kv_batch_delete(b, ents[i].key), KV_OK);
                } else {
                    ents[i].len = take_value(&r, ents[i].val);
                    RC(kv_batch_put(b, ents[i].key, ents[i].val, ents[i].len), KV_OK);
                }
            }
            RC(kv_batch_commit(db, b), KV_OK);
            for (unsigned i = 0; i < n; i++) {
                if (ents[i].del)
                    ref_del(ents[i].key);
                else
                    ref_put(ents[i].key, ents[i].val, ents[i].len);
            }
            break;
        }
        case 5:
            check_get(db, take_key(&r));
            break;
        case 6:
            check_get_alloc(db, take_key(&r));
            break;
        case 7: /* scan */
            lo = take_key(&r);
            hi = take_key(&r);
            check_scan(db, lo, hi);
            break;
        case 8: { /* a view keeps its state while writes go on */
            kv_view *v;
            RC(kv_view_open(db, &v), KV_OK);
            size_t n = sorted_ref();
            static ref_entry frozen[MAX_REF];
            memcpy(frozen, sorted, n * sizeof *sorted);
            key = take_key(&r);
            len = take_value(&r, val);
            RC(kv_put(db, key, val, len), KV_OK);
            ref_put(key, val, len);
            if (byte(&r) & 1)
                RC(kv_rebuild_index(db), KV_OK);
            /* The view still answers from before the put. */
            const void *vv;
            size_t vl;
            const ref_entry *old = NULL;
            for (size_t i = 0; i < n; i++)
                if (frozen[i].key == key)
                    old = &frozen[i];
            int rc = kv_view_get(v, key, &vv, &vl);
            if (old)
                CHECK(rc == KV_OK && vl == old->len && (vl == 0 || memcmp(vv, old->val, vl) == 0),
                      "view sees a write made after it opened (%s)", kv_strerror(rc));
            else
                CHECK(rc == KV_NOTFOUND, "view sees a key put after it opened (%s)",
                      kv_strerror(rc));
            /* One kv_view_get_many of the view's keys, the new key and
             * one more: each answer is the view's. */
            static uint64_t many_keys[MAX_REF + 2];
            static const void *many_vals[MAX_REF + 2];
            static size_t many_lens[MAX_REF + 2];
            static int many_rcs[MAX_REF + 2];
            size_t m = 0;
            for (size_t i = 0; i < n; i++)
                many_keys[m++] = frozen[i].key;
            many_keys[m++] = key;
            many_keys[m++] = take_key(&r);
            RC(kv_view_get_many(v, m, many_keys, many_vals, many_lens, many_rcs), KV_OK);
            for (size_t j = 0; j < m; j++) {
                old = NULL;
                for (size_t i = 0; i < n; i++)
                    if (frozen[i].key == many_keys[j])
                        old = &frozen[i];
                if (old)
                    CHECK(many_rcs[j] == KV_OK && many_lens[j] == old->len &&
                              (old->len == 0 || memcmp(many_vals[j], old->val, old->len) == 0),
                          "get_many entry %zu: wrong answer (%s)", j, kv_strerror(many_rcs[j]));
                else
                    CHECK(many_rcs[j] == KV_NOTFOUND, "get_many entry %zu: key not in the view (%s)",
                          j, kv_strerror(many_rcs[j]));
            }
            kv_iter *it;
            RC(kv_view_iter_open(v, 0, UINT64_MAX, &it), KV_OK);
            check_iter(it, 0, UINT64_MAX, frozen, n);
            kv_iter_close(it);
            kv_view_close(v);
            break;
        }
        case 9:
            RC(kv_rebuild_index(db), KV_OK);
            break;
        case 10:
            RC(kv_snapshot(db), KV_OK);
            break;
        case 11:
            RC(kv_compact(db), KV_OK);
            break;
        case 12:
            RC(kv_sync(db), KV_OK);
            if (byte(&r) & 1)
                RC(kv_warmup(db), KV_OK);
            break;
        case 13: /* reopen (rarer: a reopen costs as much as many ops) */
            if (byte(&r) % 4)
                break;
            RC(kv_close(db), KV_OK);
            db = open_db(&o);
            check_all(db);
            break;
        case 14: { /* read-only reopen: same state, writes refused */
            if (byte(&r) % 4)
                break;
            RC(kv_close(db), KV_OK);
            kv_options ro = o;
            ro.flags = KV_READONLY;
            db = open_db(&ro);
            check_all(db);
            RC(kv_put(db, 1, "x", 1), KV_EREADONLY);
            RC(kv_delete(db, 1), KV_EREADONLY);
            RC(kv_snapshot(db), KV_EREADONLY);
            RC(kv_close(db), KV_OK);
            db = open_db(&o);
            break;
        }
        default: {
            kv_stats st;
            RC(kv_stats_get(db, &st), KV_OK);
            CHECK(st.keys == nref, "kv_stats keys = %llu, want %zu", (unsigned long long)st.keys,
                  nref);
            break;
        }
        }
    }
    opno = MAX_OPS;
    check_all(db);
    RC(kv_close(db), KV_OK);
    db = open_db(&o);
    check_all(db);
    RC(kv_close(db), KV_OK);
    kv_batch_free(b);
    return 0;
}
