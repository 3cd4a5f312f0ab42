/* test_wal.c — the write-ahead log: format bytes, replay, torn tails,
 * corruption, reopening, group commit and sticky I/O failure. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* mkdtemp, nanosleep */
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "kyro.h"
#include "os.h"
#include "wal.h"

#define REC_HDR 24

static char dir[64];
static char path[128]; /* dir/w.log, the WAL most tests use */

static int setup(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/kyro-wal-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/w.log", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    os_set_fault_hook(NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

/* ---- helpers ---- */

static uint64_t rnd_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static void le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

typedef struct {
    uint32_t type;
    uint64_t seq;
    uint8_t *p;
    size_t len;
} rec;

typedef struct {
    rec *v;
    size_t n, cap;
} recs;

static void recs_push(recs *r, uint32_t type, uint64_t seq, const void *a, size_t na,
                      const void *b, size_t nb)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        assert_non_null(r->v);
    }
    rec *e = &r->v[r->n++];
    e->type = type;
    e->seq = seq;
    e->len = na + nb;
    e->p = malloc(e->len ? e->len : 1);
    assert_non_null(e->p);
    if (na)
        memcpy(e->p, a, na);
    if (nb)
        memcpy(e->p + na, b, nb);
}

static void recs_free(recs *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i].p);
    free(r->v);
    memset(r, 0, sizeof *r);
}

static int collect(void *ctx, uint32_t type, uint64_t seq, const uint8_t *p, size_t len)
{
    recs_push(ctx, type, seq, p, len, NULL, 0);
    return KV_OK;
}

/* got must equal want[from..from+count). */
static void recs_expect(const recs *got, const recs *want, size_t from, size_t count)
{
    assert_int_equal(got->n, count);
    for (size_t i = 0; i < count; i++) {
        const rec *g = &got->v[i], *w = &want->v[from + i];
        assert_int_equal(g->type, w->type);
        assert_int_equal(g->seq, w->seq);
        assert_int_equal(g->len, w->len);
        if (w->len)
            assert_memory_equal(g->p, w->p, w->len);
    }
}

static uint8_t *slurp(const char *p, size_t *len)
{
    void *buf;
    assert_int_equal(os_read_file(p, &buf, len), 0);
    return buf;
}

static void spit(const char *p, const void *buf, size_t len)
{
    /* A new file each time: ext4 flushes a file truncated and rewritten. */
    assert_int_equal(os_unlink(p), 0);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    if (len)
        assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint64_t file_size(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return (uint64_t)st.st_size;
}

/* The file holds records up to end, the last with seq last, and then at
 * most space reserved ahead of the writes (zeros, not a torn tail). */
static void assert_log_ends(const char *path, uint64_t end, uint64_t last)
{
    uint64_t ve, got_last;
    int torn;
    assert_true(file_size(path) >= end);
    assert_int_equal(wal_replay(path, 0, 0, NULL, NULL, &ve, &got_last, &torn), KV_OK);
    assert_int_equal(ve, end);
    assert_int_equal(got_last, last);
    assert_int_equal(torn, 0);
}

/* Append a put of key with vlen pattern bytes; records it in want. */
static void put(wal *w, recs *want, uint64_t key, size_t vlen, uint64_t *start, uint64_t *lsn)
{
    uint8_t k[8], *v = malloc(vlen ? vlen : 1);
    assert_non_null(v);
    for (size_t i = 0; i < vlen; i++)
        v[i] = (uint8_t)(rnd() >> 24);
    le64(k, key);
    uint64_t seq, before = wal_bytes(w), l;
    assert_int_equal(wal_append(w, WAL_PUT, k, 8, v, vlen, &seq, &l), KV_OK);
    assert_int_equal(l, before + REC_HDR + ((8 + vlen + 7) & ~(size_t)7));
    assert_int_equal(wal_bytes(w), l);
    assert_int_equal(wal_last_seq(w), seq);
    if (want) {
        if (want->n)
            assert_int_equal(seq, want->v[want->n - 1].seq + 1);
        recs_push(want, WAL_PUT, seq, k, 8, v, vlen);
    }
    if (start)
        *start = before;
    if (lsn)
        *lsn = l;
    free(v);
}

/* A WAL at path with n puts of vlen bytes, synced and closed; *starts[i] is
 * each record's offset (n + 1 entries: the last is the file size). */
static void make_wal(uint64_t first_seq, size_t n, size_t vlen, recs *want, uint64_t *starts)
{
    wal *w;
    int err = 0;
    assert_int_equal(wal_create(dir, "w.log", first_seq, &w), KV_OK);
    for (size_t i = 0; i < n; i++)
        put(w, want, 1000 + i, vlen + i, starts ? &starts[i] : NULL, NULL);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    if (starts)
        starts[n] = wal_bytes(w);
    assert_int_equal(wal_close(w), KV_OK);
}

static int replay(const char *p, uint64_t after, int recover, recs *got, uint64_t *ve,
                  uint64_t *last, int *torn)
{
    recs_free(got);
    return wal_replay(p, after, recover, collect, got, ve, last, torn);
}

/* ---- format ---- */

static void test_known_answer_bytes(void **state)
{
    (void)state;
    wal *w;
    uint64_t seq, lsn, durable = 0;
    int err = 0;
    uint8_t key[8];
    le64(key, 0x0102030405060708ull);
    assert_int_equal(wal_create(dir, "w.log", 7, &w), KV_OK);
    assert_int_equal(wal_last_seq(w), 6);
    assert_int_equal(wal_bytes(w), 32);
    assert_int_equal(wal_append(w, WAL_PUT, key, 8, "abc", 3, &seq, &lsn), KV_OK);
    assert_int_equal(seq, 7);
    assert_int_equal(lsn, 72);
    assert_int_equal(wal_commit(w, lsn, KV_SYNC_FULL, &durable, &err), KV_OK);
    assert_int_equal(durable, 7);
    assert_int_equal(wal_close(w), KV_OK);

    static const uint8_t want[72] = {
        /* header */
        'K', 'Y', 'R', 'O', 'W', 'A', 'L', '1', /* magic */
        0x01, 0x00, 0x00, 0x00,                 /* version 1 */
        0x20, 0x00, 0x00, 0x00,                 /* header size 32 */
        0x07, 0, 0, 0, 0, 0, 0, 0,              /* first_seq 7 */
        0, 0, 0, 0, 0, 0, 0, 0,                 /* xxh3(bytes 0..24), checked below */
        /* record */
        0x0b, 0x00, 0x00, 0x00,                 /* payload_len 11 */
        0x01, 0x00,                             /* type WAL_PUT */
        0x00, 0x00,                             /* flags */
        0x07, 0, 0, 0, 0, 0, 0, 0,              /* seq 7 */
        0, 0, 0, 0, 0, 0, 0, 0,                 /* checksum, checked below */
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 'a', 'b', 'c', /* key, value */
        0, 0, 0, 0, 0,                          /* padding to 8 */
    };
    size_t len;
    uint8_t *f = slurp(path, &len);
    assert_int_equal(len, sizeof want);
    assert_memory_equal(f, want, 24);
    assert_int_equal(rd64(f + 24), XXH3_64bits(f, 24));
    assert_memory_equal(f + 32, want + 32, 16);
    uint8_t sum_in[16 + 11];
    memcpy(sum_in, want + 32, 16);
    memcpy(sum_in + 16, want + 56, 11);
    assert_int_equal(rd64(f + 48), XXH3_64bits(sum_in, sizeof sum_in));
    assert_memory_equal(f + 56, want + 56, 16);
    free(f);

    recs got = {0};
    uint64_t ve, last;
    int torn = 1;
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    assert_int_equal(got.n, 1);
    assert_int_equal(got.v[0].type, WAL_PUT);
    assert_int_equal(got.v[0].seq, 7);
    assert_int_equal(got.v[0].len, 11);
    assert_memory_equal(got.v[0].p, want + 56, 11);
    assert_int_equal(ve, 72);
    assert_int_equal(last, 7);
    assert_int_equal(torn, 0);
    recs_free(&got);
}

static void test_batch_codec(void **state)
{
    (void)state;
    uint8_t *b = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(wal_batch_add(&b, &len, &cap, WAL_OP_PUT, 1, "xy", 2), KV_OK);
    assert_int_equal(wal_batch_add(&b, &len, &cap, WAL_OP_DEL, 2, NULL, 0), KV_OK);
    assert_int_equal(wal_batch_add(&b, &len, &cap, WAL_OP_PUT, UINT64_MAX, NULL, 0), KV_OK);
    static const uint8_t want[] = {
        0x01, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 'x', 'y', /* put 1 "xy" */
        0x02, 2, 0, 0, 0, 0, 0, 0, 0,                       /* del 2 */
        0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, /* put max "" */
    };
    assert_int_equal(len, sizeof want);
    assert_memory_equal(b, want, sizeof want);

    wal_batch_cursor c = {b, b + len};
    int op;
    uint64_t key;
    const uint8_t *val;
    size_t vlen;
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), 1);
    assert_int_equal(op, WAL_OP_PUT);
    assert_int_equal(key, 1);
    assert_int_equal(vlen, 2);
    assert_memory_equal(val, "xy", 2);
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), 1);
    assert_int_equal(op, WAL_OP_DEL);
    assert_int_equal(key, 2);
    assert_null(val);
    assert_int_equal(vlen, 0);
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), 1);
    assert_int_equal(op, WAL_OP_PUT);
    assert_int_equal(key, UINT64_MAX);
    assert_non_null(val);
    assert_int_equal(vlen, 0);
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), 0);
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), 0);

    /* Every proper prefix that cuts an entry is malformed; cuts between
     * entries are fine. Each prefix lives in its own exact-size allocation so
     * the sanitizers catch any read past it. */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *p = malloc(cut ? cut : 1);
        memcpy(p, b, cut);
        wal_batch_cursor pc = {p, p + cut};
        int rc, n = 0;
        while ((rc = wal_batch_next(&pc, &op, &key, &val, &vlen)) == 1)
            n++;
        int boundary = cut == 0 || cut == 15 || cut == 24;
        assert_int_equal(rc, boundary ? 0 : KV_ECORRUPT);
        /* A failed call leaves the cursor alone and fails again. */
        if (!boundary)
            assert_int_equal(wal_batch_next(&pc, &op, &key, &val, &vlen), KV_ECORRUPT);
        assert_int_equal(n, cut >= 24 ? 2 : cut >= 15 ? 1 : 0);
        free(p);
    }
    /* Unknown op, a length running past the end, a cursor past its end. */
    uint8_t bad[15];
    memcpy(bad, want, 15);
    bad[0] = 3;
    c = (wal_batch_cursor){bad, bad + 15};
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), KV_ECORRUPT);
    bad[0] = 0;
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), KV_ECORRUPT);
    memcpy(bad, want, 15);
    bad[9] = 3; /* len 3, only 2 bytes follow */
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), KV_ECORRUPT);
    bad[12] = 0x80; /* len 0x80000003 */
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), KV_ECORRUPT);
    c = (wal_batch_cursor){bad + 2, bad + 1};
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), KV_ECORRUPT);
    c = (wal_batch_cursor){NULL, NULL};
    assert_int_equal(wal_batch_next(&c, &op, &key, &val, &vlen), 0);

    /* Bad arguments leave the buffer as it was. */
    size_t old = len;
    assert_int_equal(wal_batch_add(&b, &len, &cap, 7, 1, NULL, 0), KV_EINVAL);
    assert_int_equal(wal_batch_add(&b, &len, &cap, WAL_OP_PUT, 1, NULL, 5), KV_EINVAL);
    assert_int_equal(wal_batch_add(&b, &len, &cap, WAL_OP_PUT, 1, "x", KV_MAX_VALUE + 1),
                     KV_ETOOBIG);
    size_t near = WAL_MAX_BATCH - 8, ncap = near; /* a delete needs 9 */
    uint8_t *dummy = b; /* never written: the size check fails first */
    assert_int_equal(wal_batch_add(&dummy, &near, &ncap, WAL_OP_DEL, 1, NULL, 0), KV_ETOOBIG);
    assert_int_equal(len, old);
    free(b);
}

/* ---- round trip ---- */

static void test_roundtrip_varied(void **state)
{
    (void)state;
    wal *w;
    recs want = {0}, got = {0};
    int err = 0;
    uint64_t seq, lsn, ve, last;
    int torn;
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    static const size_t fixed[] = {0, 1, 7, 8, 9, 15, 16, 17, 4096};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        put(w, &want, i, fixed[i], NULL, NULL);
    for (int i = 0; i < 600; i++) {
        uint64_t r = rnd();
        uint8_t k[8];
        le64(k, rnd());
        if (r % 5 == 0) {
            assert_int_equal(wal_append(w, WAL_DEL, k, 8, NULL, 0, &seq, &lsn), KV_OK);
            recs_push(&want, WAL_DEL, seq, k, 8, NULL, 0);
        } else if (r % 5 == 1) {
            uint8_t *b = NULL, v[300];
            size_t len = 0, cap = 0, n = rnd() % 6;
            for (size_t j = 0; j < n; j++) {
                size_t vl = rnd() % sizeof v;
                memset(v, (int)j, vl);
                int op = rnd() % 3 ? WAL_OP_PUT : WAL_OP_DEL;
                assert_int_equal(wal_batch_add(&b, &len, &cap, op, rnd(), v, vl), KV_OK);
            }
            assert_int_equal(wal_append(w, WAL_BATCH, b, len, NULL, 0, &seq, &lsn), KV_OK);
            recs_push(&want, WAL_BATCH, seq, b, len, NULL, 0);
            free(b);
        } else {
            /* Mostly small, sometimes big enough to overflow the buffer. */
            size_t vl = r % 50 == 2 ? 200000 + rnd() % 300000 : rnd() % 3000;
            put(w, &want, rnd(), vl, NULL, NULL);
        }
        if (i % 37 == 0)
            assert_int_equal(wal_commit(w, wal_bytes(w), (int)(rnd() % 3), NULL, &err), KV_OK);
    }
    /* Larger than the whole buffer: written directly, in order. */
    put(w, &want, 77, (3u << 20) + 5, NULL, NULL);
    put(w, &want, 78, 0, NULL, NULL);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    uint64_t end = wal_bytes(w);
    assert_int_equal(wal_close(w), KV_OK);
    assert_int_equal(file_size(path), end);

    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, want.n);
    assert_int_equal(ve, end);
    assert_int_equal(last, want.n);
    assert_int_equal(torn, 0);

    /* after_seq: only later records are applied, all are verified. */
    assert_int_equal(replay(path, 100, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 100, want.n - 100);
    assert_int_equal(last, want.n);
    /* No callback: verify only. */
    assert_int_equal(wal_replay(path, 0, 0, NULL, NULL, &ve, &last, &torn), KV_OK);
    assert_int_equal(ve, end);
    recs_free(&got);
    recs_free(&want);
}

static void test_append_rejects_bad_shapes(void **state)
{
    (void)state;
    wal *w;
    uint64_t seq = 99, lsn = 99;
    uint8_t k[8] = {0};
    static const char big[1]; /* never read: sizes are checked first */
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    assert_int_equal(wal_append(w, WAL_PUT, k, 7, NULL, 0, &seq, &lsn), KV_EINVAL);
    assert_int_equal(wal_append(w, WAL_DEL, k, 8, k, 1, &seq, &lsn), KV_EINVAL);
    assert_int_equal(wal_append(w, 9, k, 8, NULL, 0, &seq, &lsn), KV_EINVAL);
    assert_int_equal(wal_append(w, WAL_PUT, k, 8, NULL, 3, &seq, &lsn), KV_EINVAL);
    assert_int_equal(wal_append(w, WAL_PUT, k, 8, big, KV_MAX_VALUE + 1, &seq, &lsn),
                     KV_ETOOBIG);
    assert_int_equal(wal_append(w, WAL_BATCH, big, WAL_MAX_BATCH + 1, NULL, 0, &seq, &lsn),
                     KV_ETOOBIG);
    assert_int_equal(wal_append(w, WAL_PUT, k, 8, NULL, 0, NULL, &lsn), KV_EINVAL);
    assert_int_equal(wal_last_seq(w), 0);
    assert_int_equal(wal_bytes(w), 32);
    /* An empty batch is a legal record. */
    assert_int_equal(wal_append(w, WAL_BATCH, NULL, 0, NULL, 0, &seq, &lsn), KV_OK);
    assert_int_equal(seq, 1);
    assert_int_equal(lsn, 56);
    wal *w2 = NULL;
    assert_int_equal(wal_create(dir, "w.log", 1, &w2), KV_EIO); /* exists */
    assert_int_equal(wal_create(dir, "x.log", 0, &w2), KV_EINVAL);
    assert_null(w2);
    wal_close(w);
}

/* ---- torn tails and corruption ---- */

static void test_torn_tail_every_offset(void **state)
{
    (void)state;
    enum { N = 6 };
    recs want = {0}, got = {0};
    uint64_t starts[N + 1], ve, last;
    int torn;
    /* The last record carries 1 KiB of random bytes. */
    make_wal(50, N - 1, 40, &want, starts);
    wal *w;
    assert_int_equal(wal_open_append(dir, "w.log", starts[N - 1], 55, &w), KV_OK);
    put(w, &want, 5, 1000, &starts[N - 1], &starts[N]);
    int err;
    assert_int_equal(wal_sync(w, &err), KV_OK);
    wal_close(w);

    size_t len;
    uint8_t *f = slurp(path, &len);
    assert_int_equal(len, starts[N]);
    char cut_path[160];
    snprintf(cut_path, sizeof cut_path, "%s/cut.log", dir);
    for (uint64_t cut = starts[N - 1]; cut <= len; cut++) {
        spit(cut_path, f, (size_t)cut);
        torn = -1;
        assert_int_equal(replay(cut_path, 0, 0, &got, &ve, &last, &torn), KV_OK);
        if (cut == len) {
            recs_expect(&got, &want, 0, N);
            assert_int_equal(torn, 0);
            continue;
        }
        recs_expect(&got, &want, 0, N - 1);
        assert_int_equal(ve, starts[N - 1]);
        assert_int_equal(last, 50 + N - 2);
        assert_int_equal(torn, cut != starts[N - 1]);
    }
    /* Zeros after the end (space reserved ahead of the writes, or pages
     * never written): the end of the log, not a torn tail. */
    uint8_t *z = calloc(1, len + 8192);
    memcpy(z, f, len);
    spit(cut_path, z, len + 8192);
    assert_int_equal(replay(cut_path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, N);
    assert_int_equal(ve, len);
    assert_int_equal(torn, 0);
    /* A partial record before the zeros is still torn. */
    z[len] = 0x10;
    spit(cut_path, z, len + 8192);
    assert_int_equal(replay(cut_path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    assert_int_equal(ve, len);
    assert_int_equal(torn, 1);
    free(z);
    free(f);
    recs_free(&got);
    recs_free(&want);
}

static void test_corruption_middle_vs_last(void **state)
{
    (void)state;
    enum { N = 6 };
    recs want = {0}, got = {0};
    uint64_t starts[N + 1], ve, last;
    int torn;
    make_wal(1, N, 13, &want, starts);
    size_t len;
    uint8_t *f = slurp(path, &len);

    /* Any byte of record 3 (header, payload or padding) damaged: a hole
     * with good records after it. */
    for (uint64_t off = starts[2]; off < starts[3]; off++) {
        f[off] ^= 0x20;
        spit(path, f, len);
        assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_ECORRUPT);
        assert_int_equal(replay(path, 0, 1, &got, &ve, &last, &torn), KV_OK);
        recs_expect(&got, &want, 0, 2);
        assert_int_equal(ve, starts[2]);
        assert_int_equal(last, 2);
        assert_int_equal(torn, 1);
        f[off] ^= 0x20;
    }
    /* The same damage in the last record is a torn tail. */
    for (uint64_t off = starts[N - 1]; off < starts[N]; off++) {
        f[off] ^= 0x01;
        spit(path, f, len);
        assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
        recs_expect(&got, &want, 0, N - 1);
        assert_int_equal(ve, starts[N - 1]);
        assert_int_equal(torn, 1);
        f[off] ^= 0x01;
    }
    /* Undamaged again: everything. */
    spit(path, f, len);
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, N);
    assert_int_equal(torn, 0);
    free(f);
    recs_free(&got);
    recs_free(&want);
}

/* A value may be a copy of a log file. A crash while its record is written
 * leaves a record cut short whose payload holds records that verify, with
 * seqs above the last good one: that is still a torn tail, not a hole. */
static void test_torn_record_holding_a_log(void **state)
{
    (void)state;
    enum { N = 4 };
    recs want = {0}, got = {0};
    uint64_t starts[N + 1], ve, last, seq, lsn;
    int torn, err;
    /* The log to copy: seqs 6..8, above this log's 1..4. */
    make_wal(6, 3, 20, NULL, NULL);
    size_t img_len;
    uint8_t *img = slurp(path, &img_len);
    assert_int_equal(os_unlink(path), 0);
    make_wal(1, N - 1, 13, &want, starts);
    wal *w;
    assert_int_equal(wal_open_append(dir, "w.log", starts[N - 1], N, &w), KV_OK);
    uint8_t k[8];
    le64(k, 77);
    /* The value starts 32 bytes into its record, so the copied records sit
     * at 8-byte aligned offsets, where replay looks for records. */
    assert_int_equal(wal_append(w, WAL_PUT, k, 8, img + 32, img_len - 32, &seq, &lsn), KV_OK);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    assert_int_equal(wal_close(w), KV_OK);
    recs_push(&want, WAL_PUT, seq, k, 8, img + 32, img_len - 32);
    size_t len;
    uint8_t *f = slurp(path, &len);
    assert_int_equal(len, lsn);
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, N);
    assert_int_equal(torn, 0);

    char cut_path[160];
    snprintf(cut_path, sizeof cut_path, "%s/cut.log", dir);
    uint8_t *z = calloc(1, len + 4096);
    assert_non_null(z);
    uint64_t end_nz = len; /* the record's end without its trailing zero bytes */
    while (end_nz > starts[N - 1] && f[end_nz - 1] == 0)
        end_nz--;
    for (uint64_t cut = starts[N - 1] + 1; cut < len; cut++) {
        /* Cut there, and (where the zeros do not complete it) cut there
         * with the writer's reserved zeros after. */
        for (int zeros = 0; zeros <= (cut < end_nz); zeros++) {
            memset(z, 0, len + 4096);
            memcpy(z, f, (size_t)cut);
            spit(cut_path, z, zeros ? len + 4096 : (size_t)cut);
            assert_int_equal(replay(cut_path, 0, 0, &got, &ve, &last, &torn), KV_OK);
            recs_expect(&got, &want, 0, N - 1);
            assert_int_equal(ve, starts[N - 1]);
            assert_int_equal(last, N - 1);
            assert_int_equal(torn, 1);
        }
    }
    /* Any byte after its header damaged, the checksum included: torn too. */
    for (uint64_t off = starts[N - 1] + 16; off < len; off++) {
        f[off] ^= 0x04;
        spit(path, f, len);
        assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
        recs_expect(&got, &want, 0, N - 1);
        assert_int_equal(torn, 1);
        f[off] ^= 0x04;
    }
    free(z);
    free(f);
    free(img);
    recs_free(&got);
    recs_free(&want);
}

/* A length field damaged to reach past the end of the file still shows the
 * records after it: a hole, not a torn tail. */
static void test_damaged_length_is_corruption(void **state)
{
    (void)state;
    enum { N = 6 };
    recs want = {0}, got = {0};
    uint64_t starts[N + 1], ve, last;
    int torn;
    make_wal(1, N, 13, &want, starts);
    size_t len;
    uint8_t *f = slurp(path, &len);
    for (size_t r = 0; r < N; r++) {
        uint8_t *h = f + starts[r];
        uint32_t was = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                       (uint32_t)h[3] << 24;
        uint32_t now = was + 4096;
        for (int i = 0; i < 4; i++)
            h[i] = (uint8_t)(now >> (8 * i));
        spit(path, f, len);
        /* Only the last record has no good record after it. */
        assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn),
                         r + 1 < N ? KV_ECORRUPT : KV_OK);
        assert_int_equal(replay(path, 0, 1, &got, &ve, &last, &torn), KV_OK);
        recs_expect(&got, &want, 0, r);
        assert_int_equal(ve, starts[r]);
        assert_int_equal(torn, 1);
        for (int i = 0; i < 4; i++)
            h[i] = (uint8_t)(was >> (8 * i));
    }
    free(f);
    recs_free(&got);
    recs_free(&want);
}

static void test_seq_gap_is_corruption(void **state)
{
    (void)state;
    recs want = {0}, got = {0};
    uint64_t starts[4], ve, last;
    int torn, err;
    make_wal(1, 3, 5, &want, starts);
    /* Reopen claiming the next seq is 5: record 5 follows record 3. */
    wal *w;
    assert_int_equal(wal_open_append(dir, "w.log", starts[3], 5, &w), KV_OK);
    put(w, NULL, 9, 5, NULL, NULL);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    wal_close(w);
    /* A record that checks out but carries the wrong seq cannot come from a
     * torn write, even as the last record. */
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_ECORRUPT);
    assert_int_equal(replay(path, 0, 1, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, 3);
    assert_int_equal(ve, starts[3]);
    assert_int_equal(last, 3);
    assert_int_equal(torn, 1);

    /* First record's seq must be the header's first_seq: rewrite the header
     * to say 2 (with a valid checksum). */
    assert_int_equal(os_unlink(path), 0);
    make_wal(1, 2, 5, NULL, NULL);
    size_t len;
    uint8_t *f = slurp(path, &len);
    le64(f + 16, 2);
    le64(f + 24, XXH3_64bits(f, 24));
    spit(path, f, len);
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_ECORRUPT);
    assert_int_equal(replay(path, 0, 1, &got, &ve, &last, &torn), KV_OK);
    assert_int_equal(got.n, 0);
    assert_int_equal(ve, 32);
    assert_int_equal(last, 1);
    free(f);
    recs_free(&got);
    recs_free(&want);
}

static void test_bad_header_codes(void **state)
{
    (void)state;
    uint64_t starts[3], ve, last;
    int torn;
    recs got = {0};
    make_wal(1, 2, 3, NULL, starts);
    size_t len;
    uint8_t *f = slurp(path, &len), *g = malloc(len);
    struct {
        size_t off;
        uint8_t val;
        int fix_sum;
        int want;
    } cases[] = {
        {0, 'X', 1, KV_ECORRUPT},  /* magic */
        {7, '2', 1, KV_ECORRUPT},  /* magic */
        {8, 2, 1, KV_EVERSION},    /* version 2 */
        {8, 2, 0, KV_EVERSION},    /* version is judged before the checksum */
        {11, 1, 1, KV_EVERSION},
        {12, 40, 1, KV_ECORRUPT},  /* header size */
        {16, 0, 1, KV_ECORRUPT},   /* first_seq 0 */
        {17, 1, 0, KV_ECORRUPT},   /* first_seq changed, checksum stale */
        {24, 0x55, 0, KV_ECORRUPT}, /* checksum */
        {31, 0x55, 0, KV_ECORRUPT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(g, f, len);
        g[cases[i].off] = cases[i].val;
        if (cases[i].fix_sum)
            le64(g + 24, XXH3_64bits(g, 24));
        spit(path, g, len);
        assert_int_equal(replay(path, 0, 1, &got, &ve, &last, &torn), cases[i].want);
        assert_int_equal(got.n, 0);
        /* The header is never torn once records follow it. */
        spit(path, g, 32);
        assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn),
                         cases[i].want == KV_EVERSION || cases[i].off < 16 ? cases[i].want
                                                                           : KV_OK);
    }
    assert_int_equal(wal_replay("/nonexistent/kyro/w.log", 0, 0, collect, &got, &ve, &last,
                                &torn),
                     KV_EIO);
    free(g);
    free(f);
    recs_free(&got);
}

static void test_torn_header(void **state)
{
    (void)state;
    uint64_t ve, last;
    int torn;
    recs got = {0};
    make_wal(1, 1, 3, NULL, NULL);
    size_t len;
    uint8_t *f = slurp(path, &len);
    uint8_t zeros[40] = {0}, garbage[32];
    memset(garbage, 0x5a, sizeof garbage);
    uint8_t half[32];
    memcpy(half, f, 32);
    memset(half + 24, 0, 8); /* header written but its checksum not */
    struct {
        const uint8_t *p;
        size_t len;
        int want;
    } cases[] = {
        {f, 0, 1},         /* created, nothing written */
        {f, 10, 1},        /* part of the magic */
        {f, 20, 1},        /* constant part and some of first_seq */
        {zeros, 32, 1},    /* size extended, data not written */
        {zeros, 20, 1},
        {half, 32, 1},
        {zeros, 40, 0},    /* bytes after a zero header: corrupt */
        {garbage, 12, 0},  /* not a header at all */
        {garbage, 32, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        spit(path, cases[i].p, cases[i].len);
        int rc = replay(path, 17, 0, &got, &ve, &last, &torn);
        if (!cases[i].want) {
            assert_int_equal(rc, KV_ECORRUPT);
            continue;
        }
        assert_int_equal(rc, KV_OK);
        assert_int_equal(got.n, 0);
        assert_int_equal(ve, 0);
        assert_int_equal(last, 17);
        assert_int_equal(torn, 1);
    }
    /* Reopening a torn-header log writes a fresh header with next_seq. */
    spit(path, f, 20);
    wal *w;
    int err;
    recs want = {0};
    assert_int_equal(wal_open_append(dir, "w.log", 0, 42, &w), KV_OK);
    assert_int_equal(wal_bytes(w), 32);
    assert_int_equal(wal_last_seq(w), 41);
    put(w, &want, 1, 3, NULL, NULL);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    wal_close(w);
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, 1);
    assert_int_equal(got.v[0].seq, 42);
    assert_int_equal(torn, 0);
    free(f);
    recs_free(&got);
    recs_free(&want);
}

static void test_open_append_truncates_and_continues(void **state)
{
    (void)state;
    enum { N = 10 };
    recs want = {0}, got = {0};
    uint64_t starts[N + 1], ve, last;
    int torn, err;
    make_wal(1, N, 20, &want, starts);
    /* Tear the last record in half. */
    size_t len;
    uint8_t *f = slurp(path, &len);
    spit(path, f, (size_t)(starts[N - 1] + (starts[N] - starts[N - 1]) / 2));
    free(f);
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    assert_int_equal(torn, 1);
    assert_int_equal(ve, starts[N - 1]);
    assert_int_equal(last, N - 1);
    want.n--;
    free(want.v[want.n].p);

    wal *w;
    assert_int_equal(wal_open_append(dir, "w.log", 33, N, &w), KV_EINVAL);
    assert_int_equal(wal_open_append(dir, "w.log", starts[N], N, &w), KV_EINVAL); /* past end */
    assert_int_equal(wal_open_append(dir, "nope.log", 32, N, &w), KV_EIO);
    assert_int_equal(wal_open_append(dir, "w.log", ve, last + 1, &w), KV_OK);
    assert_int_equal(file_size(path), ve); /* truncated at once */
    assert_int_equal(wal_bytes(w), ve);
    assert_int_equal(wal_last_seq(w), N - 1);
    for (int i = 0; i < 5; i++)
        put(w, &want, 500 + i, 100 * i, NULL, NULL);
    assert_int_equal(wal_last_seq(w), N + 4);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    wal_close(w);
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, N + 4);
    assert_int_equal(last, N + 4);
    assert_int_equal(torn, 0);

    /* An empty log whose header names another first seq is rewritten. */
    char p2[160];
    snprintf(p2, sizeof p2, "%s/e.log", dir);
    assert_int_equal(wal_create(dir, "e.log", 1, &w), KV_OK);
    wal_close(w);
    assert_int_equal(wal_open_append(dir, "e.log", 32, 9, &w), KV_OK);
    put(w, NULL, 1, 1, NULL, NULL);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    wal_close(w);
    assert_int_equal(replay(p2, 0, 0, &got, &ve, &last, &torn), KV_OK);
    assert_int_equal(got.n, 1);
    assert_int_equal(got.v[0].seq, 9);
    recs_free(&got);
    recs_free(&want);
}

/* ---- commit modes ---- */

static void test_commit_modes(void **state)
{
    (void)state;
    wal *w;
    uint64_t lsn1, lsn2, durable;
    int err = 0;
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    put(w, NULL, 1, 10, NULL, &lsn1);
    /* OFF: nothing reaches the file. */
    assert_int_equal(wal_commit(w, lsn1, KV_SYNC_OFF, &durable, &err), KV_OK);
    assert_int_equal(durable, 1);
    assert_int_equal(file_size(path), 32);
    assert_int_equal(wal_bytes(w), lsn1);
    /* NORMAL: written (the file may be reserved beyond it), not synced. */
    assert_int_equal(wal_commit(w, lsn1, KV_SYNC_NORMAL, &durable, &err), KV_OK);
    assert_int_equal(durable, 1);
    assert_log_ends(path, lsn1, 1);
    assert_int_equal(wal_sync_count(w), 0);
    put(w, NULL, 2, 10, NULL, &lsn2);
    /* FULL on an older lsn still writes and syncs what is buffered. */
    assert_int_equal(wal_commit(w, lsn1, KV_SYNC_FULL, &durable, &err), KV_OK);
    assert_int_equal(wal_sync_count(w), 1);
    assert_int_equal(durable, 2);
    assert_log_ends(path, lsn2, 2);
    /* Covered already: no new sync, also not for wal_sync. */
    assert_int_equal(wal_commit(w, lsn2, KV_SYNC_FULL, &durable, &err), KV_OK);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    assert_int_equal(wal_sync_count(w), 1);
    /* An lsn beyond the end is clamped, not waited for forever. */
    assert_int_equal(wal_commit(w, UINT64_MAX, KV_SYNC_FULL, &durable, &err), KV_OK);
    assert_int_equal(wal_commit(w, lsn2, 3, &durable, &err), KV_EINVAL);
    assert_false(wal_failed(w));
    assert_int_equal(wal_error(w), 0);
    wal_close(w);
    assert_int_equal(file_size(path), lsn2); /* close gives back reserved space */
    assert_int_equal(wal_close(NULL), KV_OK);
}

/* Records flushed in bulk (appends past a full buffer, no sync) and records
 * synced one by one, in turns: the zeros laid down ahead of the synced
 * writes never cover a record, the log ends at its last record after every
 * sync, and close trims the zeros. */
static void test_bulk_and_synced_writes(void **state)
{
    (void)state;
    wal *w;
    recs want = {0}, got = {0};
    uint64_t lsn = 0, ve, last, key = 0;
    int err = 0, torn;
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 400; i++) /* 1.6 MB: more than the buffer holds */
            put(w, &want, key++, 4000, NULL, &lsn);
        for (int i = 0; i < 20; i++) {
            put(w, &want, key++, 100, NULL, &lsn);
            assert_int_equal(wal_commit(w, lsn, KV_SYNC_FULL, NULL, &err), KV_OK);
            assert_log_ends(path, lsn, want.v[want.n - 1].seq);
        }
    }
    assert_int_equal(wal_close(w), KV_OK);
    assert_int_equal(file_size(path), lsn);
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, want.n);
    assert_int_equal(torn, 0);
    recs_free(&got);
    recs_free(&want);
}

/* ---- group commit ---- */

typedef struct {
    wal *w;
    pthread_mutex_t *append_lock;
    atomic_uint *writers; /* writers in flight, as kv_db counts them, or NULL */
    int id, iters;
    int failures;
} gc_arg;

static void *gc_worker(void *p)
{
    gc_arg *a = p;
    for (int i = 0; i < a->iters; i++) {
        uint8_t k[8], v[64];
        uint64_t seq, lsn, durable = 0;
        int err = 0;
        le64(k, (uint64_t)a->id << 32 | (uint64_t)i);
        memset(v, a->id, sizeof v);
        if (a->writers)
            atomic_fetch_add(a->writers, 1);
        pthread_mutex_lock(a->append_lock);
        int rc = wal_append(a->w, WAL_PUT, k, 8, v, (size_t)(i % 64), &seq, &lsn);
        pthread_mutex_unlock(a->append_lock);
        if (rc != KV_OK || wal_commit(a->w, lsn, KV_SYNC_FULL, &durable, &err) != KV_OK ||
            durable < seq)
            a->failures++;
        if (a->writers)
            atomic_fetch_sub(a->writers, 1);
    }
    return NULL;
}

static int slow_sync_hook(void *ctx, os_op op, const char *p, int fd, size_t len)
{
    (void)ctx;
    (void)p;
    (void)fd;
    (void)len;
    if (op == OS_SYNC) {
        struct timespec ts = {0, 1000000}; /* a 1 ms disk */
        nanosleep(&ts, NULL);
    }
    return 0;
}

typedef struct {
    wal *w;
    volatile int stop;
    uint64_t reads;
} gc_reader;

static void *gc_read(void *p)
{
    gc_reader *r = p;
    uint64_t prev = 0;
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        uint64_t b = wal_bytes(r->w);
        assert_true(b >= prev);
        prev = b;
        (void)wal_sync_count(r->w);
        (void)wal_last_seq(r->w);
        (void)wal_failed(r->w);
        r->reads++;
    }
    return NULL;
}

/* 8 writers commit with a 1 ms sync while a reader polls the WAL; with
 * count_writers the WAL also knows how many are in flight, so each sync
 * leader sleeps until the rest of its group has queued (await_group). */
static void run_group_commit_threads(int count_writers)
{
    enum { T = 8, ITERS = 250 };
    atomic_uint writers = 0;
    wal *w;
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_t th[T], rt;
    gc_arg args[T];
    gc_reader reader = {0};
    unlink(path);
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    if (count_writers)
        wal_set_writers(w, &writers);
    os_set_fault_hook(slow_sync_hook, NULL);
    reader.w = w;
    assert_int_equal(pthread_create(&rt, NULL, gc_read, &reader), 0);
    for (int i = 0; i < T; i++) {
        args[i] = (gc_arg){w, &lock, count_writers ? &writers : NULL, i, ITERS, 0};
        assert_int_equal(pthread_create(&th[i], NULL, gc_worker, &args[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    __atomic_store_n(&reader.stop, 1, __ATOMIC_RELEASE);
    pthread_join(rt, NULL);
    os_set_fault_hook(NULL, NULL);
    uint64_t syncs = wal_sync_count(w);
    print_message("group commit: %llu fdatasyncs for %d commits\n", (unsigned long long)syncs,
                  T * ITERS);
    /* With a 1 ms sync and 8 writers, commits share syncs: far fewer syncs
     * than commits (the deterministic proof is the next test). */
    assert_true(syncs >= 1);
    assert_true(syncs < (uint64_t)T * ITERS / 2);
    assert_int_equal(wal_last_seq(w), T * ITERS);
    wal_close(w);

    /* Every record is there, in seq order, each thread's in its own order. */
    recs got = {0};
    uint64_t ve, last;
    int torn;
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    assert_int_equal(got.n, T * ITERS);
    assert_int_equal(torn, 0);
    int next[T] = {0};
    for (size_t i = 0; i < got.n; i++) {
        uint64_t key = rd64(got.v[i].p);
        int id = (int)(key >> 32), it = (int)(uint32_t)key;
        assert_true(id >= 0 && id < T);
        assert_int_equal(it, next[id]);
        next[id]++;
        assert_int_equal(got.v[i].len, 8 + (size_t)(it % 64));
    }
    recs_free(&got);
}

static void test_group_commit_threads(void **state)
{
    (void)state;
    run_group_commit_threads(0);
    run_group_commit_threads(1);
}

/* A hook that holds the first armed fdatasync until released, then returns
 * result; counts syncs. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int armed, entered, released, result, syncs;
} gate;

static int gate_hook(void *ctx, os_op op, const char *p, int fd, size_t len)
{
    (void)p;
    (void)fd;
    (void)len;
    gate *g = ctx;
    if (op != OS_SYNC)
        return 0;
    pthread_mutex_lock(&g->mu);
    g->syncs++;
    int rc = 0;
    if (g->armed) {
        g->armed = 0;
        g->entered = 1;
        pthread_cond_broadcast(&g->cv);
        while (!g->released)
            pthread_cond_wait(&g->cv, &g->mu);
        rc = g->result;
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

typedef struct {
    wal *w;
    uint64_t lsn, durable;
    int rc, err;
} commit_arg;

static void *commit_thread(void *p)
{
    commit_arg *a = p;
    a->rc = wal_commit(a->w, a->lsn, KV_SYNC_FULL, &a->durable, &a->err);
    return NULL;
}

/* Leader L is inside fdatasync; two more records are appended meanwhile and
 * two threads commit them: they share one sync. Returns the commit results. */
static void run_gated(gate *g, wal *w, commit_arg c[3])
{
    pthread_t th[3];
    uint64_t lsn;
    put(w, NULL, 1, 8, NULL, &lsn);
    c[0] = (commit_arg){w, lsn, 0, -100, 0};
    assert_int_equal(pthread_create(&th[0], NULL, commit_thread, &c[0]), 0);
    pthread_mutex_lock(&g->mu);
    while (!g->entered)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    /* Appends go on while the leader's sync is in flight. */
    for (int i = 1; i < 3; i++) {
        put(w, NULL, 1 + (uint64_t)i, 8, NULL, &lsn);
        c[i] = (commit_arg){w, lsn, 0, -100, 0};
        assert_int_equal(pthread_create(&th[i], NULL, commit_thread, &c[i]), 0);
    }
    struct timespec ts = {0, 20000000}; /* let them reach the wait (not required) */
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&g->mu);
    g->released = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
}

static void test_group_commit_shares_sync(void **state)
{
    (void)state;
    wal *w;
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0, 0, 0, 0};
    commit_arg c[3];
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    os_set_fault_hook(gate_hook, &g);
    run_gated(&g, w, c);
    os_set_fault_hook(NULL, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(c[i].rc, KV_OK);
    assert_int_equal(c[0].durable, 1); /* the leader's sync covered only r1 */
    assert_int_equal(c[1].durable, 3);
    assert_int_equal(c[2].durable, 3);
    /* Three commits, two fdatasyncs: the second one served both waiters. */
    assert_int_equal(g.syncs, 2);
    assert_int_equal(wal_sync_count(w), 2);
    wal_close(w);
    recs got = {0};
    uint64_t ve, last;
    int torn;
    assert_int_equal(replay(path, 0, 0, &got, &ve, &last, &torn), KV_OK);
    assert_int_equal(got.n, 3);
    assert_int_equal(last, 3);
    recs_free(&got);
}

static void test_sync_failure_is_sticky(void **state)
{
    (void)state;
    wal *w;
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0, 0, -EIO, 0};
    commit_arg c[3];
    uint64_t seq, lsn, durable;
    int err = 0;
    uint8_t k[8] = {0};
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    os_set_fault_hook(gate_hook, &g);
    run_gated(&g, w, c);
    /* The leader's sync fails; the waiters are woken and fail too, without
     * another fdatasync being tried. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c[i].rc, KV_EIO);
        assert_int_equal(c[i].err, EIO);
    }
    assert_int_equal(g.syncs, 1);
    assert_true(wal_failed(w));
    assert_int_equal(wal_error(w), EIO);
    os_set_fault_hook(NULL, NULL);
    /* Sticky: even with a healthy disk every call fails now. */
    assert_int_equal(wal_append(w, WAL_DEL, k, 8, NULL, 0, &seq, &lsn), KV_EIO);
    err = 0;
    assert_int_equal(wal_commit(w, 32, KV_SYNC_OFF, &durable, &err), KV_EIO);
    assert_int_equal(err, EIO);
    err = 0;
    assert_int_equal(wal_sync(w, &err), KV_EIO);
    assert_int_equal(err, EIO);
    assert_int_equal(wal_sync_count(w), 1);
    wal_close(w);
}

typedef struct {
    os_op op;
    int result;
    int calls;
} fail_plan;

static int fail_hook(void *ctx, os_op op, const char *p, int fd, size_t len)
{
    (void)p;
    (void)fd;
    fail_plan *f = ctx;
    if (op != f->op)
        return 0;
    f->calls++;
    /* A positive result is a short write of that many bytes. */
    return f->result > 0 && (size_t)f->result >= len ? 0 : f->result;
}

static void test_write_failures(void **state)
{
    (void)state;
    wal *w;
    recs want = {0}, got = {0};
    uint64_t lsn, ve, last, seq;
    int err = 0, torn;

    /* ENOSPC on a NORMAL commit. */
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    put(w, NULL, 1, 10, NULL, &lsn);
    fail_plan f = {OS_WRITE, -ENOSPC, 0};
    os_set_fault_hook(fail_hook, &f);
    assert_int_equal(wal_commit(w, lsn, KV_SYNC_NORMAL, NULL, &err), KV_EIO);
    assert_int_equal(err, ENOSPC);
    os_set_fault_hook(NULL, NULL);
    assert_int_equal(wal_commit(w, lsn, KV_SYNC_NORMAL, NULL, &err), KV_EIO);
    assert_int_equal(f.calls, 1);
    wal_close(w);

    /* A short write leaves a torn tail behind the good prefix. */
    assert_int_equal(wal_create(dir, "s.log", 1, &w), KV_OK);
    for (int i = 0; i < 3; i++)
        put(w, &want, (uint64_t)i, 30, NULL, &lsn);
    assert_int_equal(wal_sync(w, &err), KV_OK);
    put(w, NULL, 9, 30, NULL, &lsn);
    f = (fail_plan){OS_WRITE, 20, 0};
    os_set_fault_hook(fail_hook, &f);
    assert_int_equal(wal_sync(w, &err), KV_EIO);
    assert_int_equal(err, ENOSPC);
    os_set_fault_hook(NULL, NULL);
    wal_close(w);
    char sp[160];
    snprintf(sp, sizeof sp, "%s/s.log", dir);
    assert_int_equal(replay(sp, 0, 0, &got, &ve, &last, &torn), KV_OK);
    recs_expect(&got, &want, 0, 3);
    assert_int_equal(torn, 1);

    /* A write failing while an append flushes the full buffer. */
    assert_int_equal(wal_create(dir, "b.log", 1, &w), KV_OK);
    f = (fail_plan){OS_WRITE, -EIO, 0};
    os_set_fault_hook(fail_hook, &f);
    int rc = KV_OK;
    for (int i = 0; i < 100 && rc == KV_OK; i++) {
        uint8_t k[8] = {0}, v[40000] = {0};
        rc = wal_append(w, WAL_PUT, k, 8, v, sizeof v, &seq, &lsn);
    }
    assert_int_equal(rc, KV_EIO);
    assert_int_equal(f.calls, 1);
    assert_true(wal_failed(w));
    assert_int_equal(wal_error(w), EIO);
    os_set_fault_hook(NULL, NULL);
    wal_close(w);

    /* wal_create fails cleanly (and leaves no file) when its fsync fails. */
    f = (fail_plan){OS_SYNC, -EIO, 0};
    os_set_fault_hook(fail_hook, &f);
    assert_int_equal(wal_create(dir, "c.log", 1, &w), KV_EIO);
    os_set_fault_hook(NULL, NULL);
    snprintf(sp, sizeof sp, "%s/c.log", dir);
    assert_false(os_path_exists(sp));
    recs_free(&got);
    recs_free(&want);
}

/* ---- arbitrary bytes ---- */

static int check_batch(void *ctx, uint32_t type, uint64_t seq, const uint8_t *p, size_t len)
{
    uint64_t *expect = ctx;
    assert_int_equal(seq, *expect);
    (*expect)++;
    if (type == WAL_BATCH) {
        wal_batch_cursor c = {p, p + len};
        int op, rc;
        uint64_t key;
        const uint8_t *val;
        size_t vlen;
        while ((rc = wal_batch_next(&c, &op, &key, &val, &vlen)) == 1)
            assert_true(val == NULL || (val >= p && val + vlen <= p + len));
        assert_true(rc == 0 || rc == KV_ECORRUPT);
    }
    return KV_OK;
}

static void test_replay_random_damage(void **state)
{
    (void)state;
    wal *w;
    int err;
    uint64_t seq, lsn;
    assert_int_equal(wal_create(dir, "w.log", 1, &w), KV_OK);
    for (int i = 0; i < 24; i++) {
        uint8_t k[8];
        le64(k, (uint64_t)i);
        if (i % 4 == 3) {
            uint8_t *b = NULL;
            size_t len = 0, cap = 0;
            for (int j = 0; j < 3; j++)
                assert_int_equal(wal_batch_add(&b, &len, &cap, WAL_OP_PUT, (uint64_t)j, "vvvv",
                                               (size_t)j),
                                 KV_OK);
            assert_int_equal(wal_append(w, WAL_BATCH, b, len, NULL, 0, &seq, &lsn), KV_OK);
            free(b);
        } else {
            put(w, NULL, (uint64_t)i, (size_t)(i * 7 % 50), NULL, NULL);
        }
    }
    assert_int_equal(wal_sync(w, &err), KV_OK);
    wal_close(w);
    size_t len;
    uint8_t *orig = slurp(path, &len), *buf = malloc(len + 64);
    char mp[160];
    snprintf(mp, sizeof mp, "%s/m.log", dir);
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = len;
        memcpy(buf, orig, len);
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++) {
            switch (rnd() % 4) {
            case 0:
                buf[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 1:
                buf[rnd() % n] = (uint8_t)rnd();
                break;
            case 2: /* a plausible length somewhere */
                if (n >= 16) {
                    size_t at = (rnd() % (n / 8)) * 8;
                    buf[at] = (uint8_t)rnd();
                    buf[at + 1] = (uint8_t)(rnd() % 4);
                }
                break;
            default:
                n = (size_t)(rnd() % (n + 1));
                if (n == 0)
                    n = 1;
                break;
            }
        }
        spit(mp, buf, n);
        for (int recover = 0; recover < 2; recover++) {
            uint64_t expect = 1, ve = 0, last = 0;
            int torn = 0;
            int rc = wal_replay(mp, 0, recover, check_batch, &expect, &ve, &last, &torn);
            assert_true(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_EVERSION);
            if (rc == KV_OK) {
                assert_true(ve <= n);
                assert_true(ve % 8 == 0);
                if (ve)
                    assert_int_equal(last, expect - 1);
                /* Stopping early is a torn tail, unless all that is left
                 * is zeros (space reserved ahead of the writes). */
                if (!torn && ve < n)
                    for (size_t i = (size_t)ve; i < n; i++)
                        assert_int_equal(buf[i], 0);
            }
            if (recover)
                assert_true(rc != KV_ECORRUPT || n < 32 || memcmp(buf, orig, 32) != 0);
        }
    }
    free(buf);
    free(orig);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_known_answer_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_codec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_varied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_rejects_bad_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corruption_middle_vs_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_record_holding_a_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_length_is_corruption, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seq_gap_is_corruption, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_header_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_append_truncates_and_continues, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_commit_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bulk_and_synced_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_shares_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_failure_is_sticky, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_random_damage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
