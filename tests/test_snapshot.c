/* test_snapshot.c — snapshot files: known-answer layout, write/load round
 * trips, every damaged or inconsistent file refused, I/O failures reported
 * with nothing left behind. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "kyro.h"
#include "os.h"
#include "rmi.h"
#include "run.h"
#include "snapshot.h"

#define NAME "snap-0000000000000001.kyro"
#define NAME2 "snap-0000000000000002.kyro"
#define HDR 192

/* ---- scratch directory ---- */

typedef struct {
    char dir[64];
    char path[128];
    char tmp[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/test_snapshot-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/%s", f->dir, NAME);
    snprintf(f->tmp, sizeof f->tmp, "%s/%s.tmp", f->dir, NAME);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    os_set_fault_hook(NULL, NULL);
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
                unlink(p);
            }
        }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- raw file access ---- */

static uint8_t *read_all(const char *path, size_t *len)
{
    void *p;
    assert_int_equal(os_read_file(path, &p, len), 0);
    return p;
}

static void write_all(const char *path, const uint8_t *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        assert_true(n > 0);
        off += (size_t)n;
    }
    close(fd);
}

static void pwrite_byte(const char *path, size_t pos, uint8_t b)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, &b, 1, (off_t)pos), 1);
    close(fd);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Header fields at their documented offsets. */
enum { H_VERSION = 8, H_HSIZE = 12, H_N = 16, H_MAXSEQ = 24, H_VBYTES = 32, H_TABLE = 40,
       H_RESERVED = 136, H_CSUM = 184 };
enum { S_KEYS, S_VREFS, S_VALUES, S_MODEL };

static uint64_t sec_off(const uint8_t *f, int s) { return rd64(f + H_TABLE + 24 * s); }
static uint64_t sec_len(const uint8_t *f, int s) { return rd64(f + H_TABLE + 24 * s + 8); }

/* Recompute every section checksum (where the section lies in the file) and
 * the header checksum, per the documented format: a file whose only fault is
 * the one a test put there on purpose. */
static void fixup(uint8_t *f, size_t size)
{
    for (int s = 0; s < 4; s++) {
        uint64_t off = sec_off(f, s), len = sec_len(f, s);
        if (off <= size && len <= size - off)
            wr64(f + H_TABLE + 24 * s + 16, XXH3_64bits(f + off, (size_t)len));
    }
    wr64(f + H_CSUM, XXH3_64bits(f, H_CSUM));
}

/* ---- runs built by hand ---- */

static uint64_t rng_state;
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Byte j of key's value: a pattern that depends on the key and repeats
 * every VAL_PERIOD bytes (a prime, so it does not line up with anything),
 * which lets large values be filled and checked with memcpy/memcmp. */
#define VAL_PERIOD 4093u
static uint8_t val_byte(uint64_t key, size_t j)
{
    j %= VAL_PERIOD;
    return (uint8_t)(key * 0x9e3779b1u + j * 31 + (j >> 8) * 7 + 1);
}

static void fill_value(uint64_t key, uint8_t *dst, size_t len)
{
    for (size_t j = 0; j < len && j < VAL_PERIOD; j++)
        dst[j] = val_byte(key, j);
    for (size_t j = VAL_PERIOD; j < len; j += VAL_PERIOD)
        memcpy(dst + j, dst, len - j < VAL_PERIOD ? len - j : VAL_PERIOD);
}

static int value_matches(uint64_t key, const uint8_t *p, size_t len)
{
    uint8_t pat[VAL_PERIOD];
    fill_value(key, pat, len < VAL_PERIOD ? len : VAL_PERIOD);
    for (size_t j = 0; j < len; j += VAL_PERIOD) {
        if (memcmp(p + j, pat, len - j < VAL_PERIOD ? len - j : VAL_PERIOD) != 0)
            return 0;
    }
    return 1;
}

typedef size_t (*len_fn)(size_t i, size_t n);

/*
 * A run over keys[0..n) with value i of vlen(i, n) bytes. The values are
 * spread over nsegs heap segments, interleaved and with junk between them,
 * so the writer has to gather and repack them. index: 1 to train one, 0 to
 * leave it NULL.
 */
static run *make_run(const uint64_t *keys, size_t n, len_fn vlen, uint32_t nsegs, int index)
{
    run *r = calloc(1, sizeof *r);
    assert_non_null(r);
    atomic_init(&r->refs, 1);
    size_t kbytes = ((n ? n : 1) * 8 + 63) & ~(size_t)63;
    uint64_t *k = aligned_alloc(64, kbytes);
    run_vref *v = malloc((n ? n : 1) * sizeof *v);
    uint64_t *seglen = calloc(nsegs, sizeof *seglen);
    assert_true(k && v && seglen);
    r->heap_keys = k;
    r->heap_vrefs = v;
    r->keys = k;
    r->vrefs = v;
    r->n = n;
    for (size_t i = 0; i < n; i++) {
        uint32_t s = (uint32_t)(i % nsegs);
        size_t len = vlen(i, n);
        k[i] = keys[i];
        seglen[s] += i % 3; /* junk before the value */
        v[i] = (run_vref){.off = seglen[s], .len = (uint32_t)len, .seg = s};
        seglen[s] += len;
        r->value_bytes += len;
    }
    r->segs = calloc(nsegs, sizeof *r->segs);
    assert_non_null(r->segs);
    for (uint32_t s = 0; s < nsegs; s++) {
        uint8_t *b = seglen[s] ? malloc(seglen[s]) : NULL;
        if (seglen[s]) {
            assert_non_null(b);
            memset(b, 0xee, seglen[s]);
        }
        r->segs[s] = run_seg_new_heap(b, seglen[s]);
        assert_non_null(r->segs[s]);
    }
    r->nsegs = nsegs;
    for (size_t i = 0; i < n; i++) {
        uint8_t *b = r->segs[v[i].seg]->heap;
        if (v[i].len)
            fill_value(k[i], b + v[i].off, v[i].len);
    }
    free(seglen);
    if (index)
        assert_int_equal(rmi_build(k, n, &r->index), KV_OK);
    return r;
}

static size_t len_small(size_t i, size_t n)
{
    (void)n;
    return (i * 7) % 23;
}

/* Mostly short values, some empty, a few of some KiB. */
static size_t len_medium(size_t i, size_t n)
{
    (void)n;
    if (i % 97 == 0)
        return 0;
    if (i % 1009 == 0)
        return 4096 + i % 5000;
    return (i * 13) % 61;
}

/* len_medium plus two large values (1 MiB and 3 MiB, the last). */
static size_t len_varied(size_t i, size_t n)
{
    if (i == 500)
        return (size_t)1 << 20;
    if (i == n - 1)
        return (size_t)3 << 20;
    return len_medium(i, n);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* n distinct sorted keys: 0, UINT64_MAX, a dense stretch and random ones. */
static uint64_t *make_keys(size_t n, uint64_t seed)
{
    uint64_t *k = malloc((n ? n : 1) * sizeof *k);
    assert_non_null(k);
    rng_state = seed;
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            if (i == 0)
                k[i] = 0;
            else if (i == 1)
                k[i] = UINT64_MAX;
            else if (i < n / 4)
                k[i] = 1000000 + i; /* dense */
            else
                k[i] = rnd();
        }
        qsort(k, n, sizeof *k, cmp_u64);
        size_t dup = 0;
        for (size_t i = 1; i < n; i++)
            dup |= k[i] == k[i - 1];
        if (!dup)
            return k;
    }
}

/* ---- checking a loaded run ---- */

static void check_mapped_run(const run *r, const uint64_t *keys, size_t n, len_fn vlen,
                             uint64_t file_bytes)
{
    assert_int_equal(r->n, n);
    assert_non_null(r->file);
    assert_int_equal(r->nsegs, 1);
    assert_ptr_equal(r->segs[0], r->file);
    assert_null(r->heap_keys);
    assert_null(r->heap_vrefs);
    assert_non_null(r->index);
    assert_int_equal(rmi_key_count(r->index), n);
    const uint8_t *map = r->file->map;
    assert_int_equal(r->file->map_len, file_bytes);
    /* Keys and references are read in place from the mapping. */
    assert_true((const uint8_t *)r->keys >= map + HDR);
    assert_true((const uint8_t *)(r->keys + n) <= map + file_bytes);
    assert_true((const uint8_t *)(r->vrefs + n) <= map + file_bytes);
    assert_int_equal((uintptr_t)r->keys % 64, 0);
    assert_true(r->segs[0]->data >= map && r->segs[0]->data + r->segs[0]->len <= map + file_bytes);

    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(r->keys[i] == keys[i]);
        size_t len = vlen(i, n), got_len, probed;
        const void *val = NULL;
        int fb = -1;
        assert_int_equal(run_get(r, keys[i], &val, &got_len, &probed, &fb), KV_OK);
        assert_int_equal(fb, 0); /* the stored model is exact on its keys */
        assert_int_equal(got_len, len);
        if (!value_matches(keys[i], val, len))
            fail_msg("value of key %zu (%zu bytes) differs", i, len);
        assert_int_equal(run_lower_bound(r, keys[i]), i);
        if (keys[i] != UINT64_MAX && (i + 1 == n || keys[i + 1] != keys[i] + 1)) {
            assert_int_equal(run_get(r, keys[i] + 1, &val, &got_len, &probed, &fb), KV_NOTFOUND);
            assert_int_equal(run_lower_bound(r, keys[i] + 1), i + 1);
        }
        total += len;
    }
    assert_int_equal(r->value_bytes, total);
    assert_int_equal(r->segs[0]->len, total);
    /* Values of one length load as a fixed run, read without references. */
    int one_len = n > 0;
    for (size_t i = 1; i < n && one_len; i++)
        one_len = vlen(i, n) == vlen(0, n);
    if (one_len) {
        assert_ptr_equal(r->fixed_values, r->segs[0]->data);
        assert_int_equal(r->fixed_len, vlen(0, n));
    } else {
        assert_null(r->fixed_values);
    }
    if (n == 0) {
        const void *val;
        size_t len;
        assert_int_equal(run_get(r, 0, &val, &len, NULL, NULL), KV_NOTFOUND);
        assert_int_equal(run_get(r, UINT64_MAX, &val, &len, NULL, NULL), KV_NOTFOUND);
        assert_int_equal(run_lower_bound(r, 12345), 0);
    }
}

/* snap_load's status for the file at f->path (any run loaded is released). */
static int load_rc(fixture *f)
{
    run *r = NULL;
    uint64_t seq, bytes;
    int err;
    int rc = snap_load(f->dir, NAME, &r, &seq, &bytes, &err);
    if (rc == KV_OK)
        run_unref(r);
    else
        assert_null(r);
    return rc;
}

static void round_trip(fixture *f, size_t n, len_fn vlen, uint32_t nsegs, int index, uint64_t seed)
{
    uint64_t *keys = make_keys(n, seed);
    run *w = make_run(keys, n, vlen, nsegs, index);
    uint64_t bytes = 0, max_seq = 0, lbytes = 0;
    int err = -1;
    assert_int_equal(snap_write(f->dir, NAME, w, 0xfedcba9876543210ull, &bytes, &err), KV_OK);
    assert_int_equal(err, 0);
    assert_false(os_path_exists(f->tmp));
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, bytes);
    run_unref(w); /* the loaded run must not depend on the written one */

    run *r = NULL;
    assert_int_equal(snap_load(f->dir, NAME, &r, &max_seq, &lbytes, &err), KV_OK);
    assert_int_equal(max_seq, 0xfedcba9876543210ull);
    assert_int_equal(lbytes, bytes);
    check_mapped_run(r, keys, n, vlen, bytes);
    run_unref(r);
    free(keys);
}

/* ---- tests: known answer ---- */

static size_t len_tiny(size_t i, size_t n)
{
    (void)n;
    return i; /* "", 1 byte, 2 bytes, ... */
}

static void test_snap_known_header(void **state)
{
    fixture *f = *state;
    static const uint64_t keys[3] = {0, 5, UINT64_MAX};
    run *w = make_run(keys, 3, len_tiny, 2, 1);
    uint64_t bytes;
    int err;
    assert_int_equal(snap_write(f->dir, NAME, w, 42, &bytes, &err), KV_OK);
    size_t model_len = rmi_serialized_size(w->index);
    uint8_t *model = malloc(model_len);
    assert_non_null(model);
    rmi_serialize(w->index, model);

    size_t size;
    uint8_t *b = read_all(f->path, &size);
    /* keys at 192 (24 bytes), vrefs at the next 64-byte boundary 256
     * (48 bytes), values right after at 304 (0+1+2 = 3 bytes), model at 307. */
    assert_int_equal(size, 307 + model_len);
    assert_int_equal(bytes, size);
    assert_memory_equal(b, "KYROSNAP", 8);
    assert_int_equal(rd32(b + H_VERSION), 1);
    assert_int_equal(rd32(b + H_HSIZE), HDR);
    assert_int_equal(rd64(b + H_N), 3);
    assert_int_equal(rd64(b + H_MAXSEQ), 42);
    assert_int_equal(rd64(b + H_VBYTES), 3);
    static const uint64_t offs[4] = {192, 256, 304, 307};
    const uint64_t lens[4] = {24, 48, 3, model_len};
    for (int s = 0; s < 4; s++) {
        assert_int_equal(sec_off(b, s), offs[s]);
        assert_int_equal(sec_len(b, s), lens[s]);
        assert_int_equal(rd64(b + H_TABLE + 24 * s + 16), XXH3_64bits(b + offs[s], lens[s]));
    }
    for (int i = H_RESERVED; i < H_CSUM; i++)
        assert_int_equal(b[i], 0);
    assert_int_equal(rd64(b + H_CSUM), XXH3_64bits(b, H_CSUM));

    static const uint8_t want_keys[24] = {
        0, 0, 0, 0, 0, 0, 0, 0,
        5, 0, 0, 0, 0, 0, 0, 0,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    };
    assert_memory_equal(b + 192, want_keys, 24);
    for (int i = 216; i < 256; i++)
        assert_int_equal(b[i], 0); /* padding */
    static const uint8_t want_vrefs[48] = {
        0, 0, 0, 0, 0, 0, 0, 0, /**/ 0, 0, 0, 0, /**/ 0, 0, 0, 0, /* off 0, len 0 */
        0, 0, 0, 0, 0, 0, 0, 0, /**/ 1, 0, 0, 0, /**/ 0, 0, 0, 0, /* off 0, len 1 */
        1, 0, 0, 0, 0, 0, 0, 0, /**/ 2, 0, 0, 0, /**/ 0, 0, 0, 0, /* off 1, len 2 */
    };
    assert_memory_equal(b + 256, want_vrefs, 48);
    const uint8_t want_values[3] = {val_byte(5, 0), val_byte(UINT64_MAX, 0),
                                    val_byte(UINT64_MAX, 1)};
    assert_memory_equal(b + 304, want_values, 3);
    assert_memory_equal(b + 307, model, model_len);
    free(model);
    free(b);
    run_unref(w);
}

/* ---- tests: round trips ---- */

static void test_snap_round_trip_empty(void **state)
{
    fixture *f = *state;
    round_trip(f, 0, len_small, 1, 0, 1); /* NULL index: one is trained for the file */
    round_trip(f, 0, len_small, 1, 1, 1);

    run *e;
    assert_int_equal(run_new_empty(&e), KV_OK);
    uint64_t bytes;
    int err;
    assert_int_equal(snap_write(f->dir, NAME, e, 0, &bytes, &err), KV_OK);
    run_unref(e);
    run *r;
    uint64_t seq = 1;
    assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_OK);
    assert_int_equal(seq, 0);
    check_mapped_run(r, NULL, 0, len_small, bytes);
    run_unref(r);
}

static size_t len_zero(size_t i, size_t n)
{
    (void)i;
    (void)n;
    return 0;
}

static size_t len_one(size_t i, size_t n)
{
    (void)i;
    (void)n;
    return 1;
}

static void test_snap_round_trip_one(void **state)
{
    fixture *f = *state;
    static const uint64_t ks[] = {0, 1, 0x8000000000000000ull, UINT64_MAX};
    len_fn lens[] = {len_zero, len_one};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        for (size_t l = 0; l < 2; l++) {
            run *w = make_run(&ks[i], 1, lens[l], 1, (int)(i & 1));
            uint64_t bytes, seq;
            int err;
            assert_int_equal(snap_write(f->dir, NAME, w, i, &bytes, &err), KV_OK);
            run_unref(w);
            run *r;
            assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_OK);
            assert_int_equal(seq, i);
            check_mapped_run(r, &ks[i], 1, lens[l], bytes);
            run_unref(r);
        }
    }
}

static void test_snap_round_trip_large(void **state)
{
    fixture *f = *state;
    round_trip(f, 100000, len_varied, 3, 1, 7);
    round_trip(f, 100003, len_small, 1, 0, 8); /* odd n: padding after keys */
}

static size_t len_max(size_t i, size_t n)
{
    (void)n;
    return i == 1 ? KV_MAX_VALUE : 3;
}

static size_t len_over(size_t i, size_t n)
{
    (void)n;
    return i == 1 ? KV_MAX_VALUE + 1 : 3;
}

static void test_snap_value_limits(void **state)
{
    fixture *f = *state;
    static const uint64_t keys[2] = {10, 20};
    round_trip(f, 2, len_max, 1, 1, 0);

    /* Checksummed references that join the two values into one over the
     * limit: everything else adds up, only the limit refuses it. */
    size_t size;
    uint8_t *b = read_all(f->path, &size);
    uint64_t vo = sec_off(b, S_VREFS);
    assert_int_equal(rd32(b + vo + 8), 3);
    wr32(b + vo + 8, (uint32_t)KV_MAX_VALUE + 3);
    wr64(b + vo + 16, (uint64_t)KV_MAX_VALUE + 3);
    wr32(b + vo + 16 + 8, 0);
    fixup(b, size);
    write_all(f->path, b, size);
    assert_int_equal(load_rc(f), KV_ECORRUPT);
    free(b);
    unlink(f->path);

    /* A run the format cannot hold is refused and leaves nothing behind. */
    run *w = make_run(keys, 2, len_over, 1, 1);
    uint64_t bytes;
    int err;
    assert_int_equal(snap_write(f->dir, NAME, w, 1, &bytes, &err), KV_EINVAL);
    run_unref(w);
    static const uint64_t unsorted[3] = {1, 3, 2}, dup[3] = {1, 2, 2};
    w = make_run(unsorted, 3, len_small, 1, 0);
    assert_int_equal(snap_write(f->dir, NAME, w, 1, &bytes, &err), KV_EINVAL);
    run_unref(w);
    w = make_run(dup, 3, len_small, 1, 0);
    assert_int_equal(snap_write(f->dir, NAME, w, 1, &bytes, &err), KV_EINVAL);
    run_unref(w);
    assert_false(os_path_exists(f->path));
    assert_false(os_path_exists(f->tmp));
}

/* A loaded run written again gives the same bytes: the writer is
 * deterministic and reads mapped runs as well as heap ones. */
static void test_snap_rewrite_identical(void **state)
{
    fixture *f = *state;
    uint64_t *keys = make_keys(5000, 3);
    run *w = make_run(keys, 5000, len_varied, 4, 1);
    uint64_t bytes, seq;
    int err;
    assert_int_equal(snap_write(f->dir, NAME, w, 77, &bytes, &err), KV_OK);
    run_unref(w);
    run *r;
    assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_OK);
    assert_int_equal(snap_write(f->dir, NAME2, r, seq, &bytes, &err), KV_OK);
    run_unref(r);
    char p2[256];
    snprintf(p2, sizeof p2, "%s/%s", f->dir, NAME2);
    size_t l1, l2;
    uint8_t *a = read_all(f->path, &l1), *b = read_all(p2, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(a, b, l1);
    free(a);
    free(b);
    free(keys);
}

/* The values segment keeps the mapping alive after the run is gone. */
static void test_snap_segment_outlives_run(void **state)
{
    fixture *f = *state;
    uint64_t *keys = make_keys(100, 4);
    run *w = make_run(keys, 100, len_small, 1, 1);
    uint64_t bytes, seq;
    int err;
    assert_int_equal(snap_write(f->dir, NAME, w, 1, &bytes, &err), KV_OK);
    run_unref(w);
    run *r;
    assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_OK);
    run_seg *s = r->segs[0];
    run_seg_ref(s);
    uint64_t off = r->vrefs[99].off;
    size_t len = r->vrefs[99].len;
    run_unref(r);
    for (size_t j = 0; j < len; j++)
        assert_int_equal(s->data[off + j], val_byte(keys[99], j));
    run_seg_unref(s);
    free(keys);
}

/* ---- tests: damage ---- */


/* Write a snapshot of n keys; returns its bytes (caller frees). */
static uint8_t *write_sample(fixture *f, size_t n, len_fn vlen, size_t *size)
{
    uint64_t *keys = make_keys(n, 11);
    run *w = make_run(keys, n, vlen, 2, 1);
    uint64_t bytes;
    int err;
    assert_int_equal(snap_write(f->dir, NAME, w, 5, &bytes, &err), KV_OK);
    run_unref(w);
    free(keys);
    return read_all(f->path, size);
}

/* Every byte of a small file, flipped: each one is refused (every byte is
 * under a checksum or required to be zero), as a version error only when it
 * is in the version field. */
static void test_snap_every_byte_flipped(void **state)
{
    fixture *f = *state;
    size_t size;
    uint8_t *good = write_sample(f, 21, len_small, &size);
    assert_int_equal(load_rc(f), KV_OK);
    static const uint8_t masks[] = {0x01, 0x80, 0x5a};
    for (size_t pos = 0; pos < size; pos++) {
        for (size_t k = 0; k < sizeof masks; k++) {
            pwrite_byte(f->path, pos, good[pos] ^ masks[k]);
            int rc = load_rc(f);
            if (pos >= H_VERSION && pos < H_VERSION + 4)
                assert_int_equal(rc, KV_EVERSION);
            else if (rc != KV_ECORRUPT)
                fail_msg("flip ^%02x at byte %zu of %zu: snap_load = %d", masks[k], pos, size, rc);
        }
        pwrite_byte(f->path, pos, good[pos]);
    }
    assert_int_equal(load_rc(f), KV_OK);
    free(good);
}

/* A bigger file: a random sample of positions and masks. */
static void test_snap_sampled_flips(void **state)
{
    fixture *f = *state;
    size_t size;
    uint8_t *good = write_sample(f, 5000, len_medium, &size);
    rng_state = 99;
    for (int t = 0; t < 3000; t++) {
        size_t pos = t < 256 ? (size_t)t : (size_t)(rnd() % size);
        uint8_t mask = (uint8_t)(rnd() % 255 + 1);
        pwrite_byte(f->path, pos, good[pos] ^ mask);
        int rc = load_rc(f);
        if (!(rc == KV_ECORRUPT || (rc == KV_EVERSION && pos >= 8 && pos < 12)))
            fail_msg("flip ^%02x at byte %zu of %zu: snap_load = %d", mask, pos, size, rc);
        pwrite_byte(f->path, pos, good[pos]);
    }
    assert_int_equal(load_rc(f), KV_OK);
    free(good);
}

static int cmp_size_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x > y ? -1 : x < y;
}

/* The file cut at each length in lens (shrinking in place, longest first). */
static void check_cuts(fixture *f, size_t *lens, size_t count)
{
    qsort(lens, count, sizeof *lens, cmp_size_desc);
    for (size_t i = 0; i < count; i++) {
        if (i && lens[i] == lens[i - 1])
            continue;
        assert_int_equal(truncate(f->path, (off_t)lens[i]), 0);
        int rc = load_rc(f);
        if (rc != KV_ECORRUPT)
            fail_msg("file cut to %zu bytes: snap_load = %d", lens[i], rc);
    }
}

static void test_snap_truncated_and_extended(void **state)
{
    fixture *f = *state;
    size_t size, count = 0;
    uint8_t *good = write_sample(f, 21, len_small, &size);
    size_t *lens = malloc((size + 512) * sizeof *lens);
    assert_non_null(lens);
    for (size_t len = 0; len < size; len++)
        lens[count++] = len; /* every length */
    check_cuts(f, lens, count);
    free(good);

    good = write_sample(f, 5000, len_medium, &size);
    count = 0;
    for (size_t len = 0; len < 200; len++)
        lens[count++] = len; /* all of the header and then some */
    for (int s = 0; s < 4; s++) {
        size_t off = (size_t)sec_off(good, s);
        for (size_t d = 0; d < 3; d++)
            lens[count++] = off - 1 + d; /* around each section start */
    }
    lens[count++] = size - 1;
    rng_state = 5;
    for (int t = 0; t < 100; t++)
        lens[count++] = (size_t)(rnd() % size);
    check_cuts(f, lens, count);

    /* Anything after the model is refused too, zeros or not. */
    write_all(f->path, good, size);
    assert_int_equal(load_rc(f), KV_OK);
    for (size_t extra = 1; extra <= 4096; extra *= 4) {
        assert_int_equal(truncate(f->path, (off_t)(size + extra)), 0);
        assert_int_equal(load_rc(f), KV_ECORRUPT);
        pwrite_byte(f->path, size + extra - 1, 0x42);
        assert_int_equal(load_rc(f), KV_ECORRUPT);
    }
    assert_int_equal(truncate(f->path, (off_t)size), 0);
    assert_int_equal(load_rc(f), KV_OK);
    free(lens);
    free(good);
}

/*
 * Files whose checksums are all right but whose contents break a rule: each
 * must be refused by the rule itself. fixup() recomputes the checksums.
 */
static void test_snap_inconsistent_but_checksummed(void **state)
{
    fixture *f = *state;
    size_t size;
    uint8_t *good = write_sample(f, 9, len_small, &size);
    uint8_t *b = malloc(size + 64);
    assert_non_null(b);
    const uint64_t ko = sec_off(good, S_KEYS), vo = sec_off(good, S_VREFS),
                   mo = sec_off(good, S_MODEL);
    assert_int_equal(ko, 192);
    assert_int_equal(vo, 320); /* 192 + 72 = 264, rounded up to 64 */

#define MUTATE(expect, size_delta, ...)                                                         \
    do {                                                                                        \
        memcpy(b, good, size);                                                                  \
        memset(b + size, 0, 64);                                                                \
        size_t sz = size + (size_delta);                                                        \
        __VA_ARGS__;                                                                            \
        fixup(b, sz);                                                                           \
        write_all(f->path, b, sz);                                                              \
        int rc_ = load_rc(f);                                                                   \
        if (rc_ != (expect))                                                                    \
            fail_msg("%s: snap_load = %d, want %d", #__VA_ARGS__, rc_, (expect));                 \
    } while (0)

    /* Controls: fixup alone, and a changed max_seq, load fine. */
    MUTATE(KV_OK, 0, (void)0);
    MUTATE(KV_OK, 0, wr64(b + H_MAXSEQ, 123456));

    /* Header. */
    MUTATE(KV_EVERSION, 0, wr32(b + H_VERSION, 2));
    MUTATE(KV_EVERSION, 0, wr32(b + H_VERSION, 0));
    MUTATE(KV_ECORRUPT, 0, wr32(b + H_HSIZE, 256));
    MUTATE(KV_ECORRUPT, 0, b[H_RESERVED + 5] = 1);
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_N, 10));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_N, 8));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_N, (uint64_t)1 << 61));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_N, UINT64_MAX));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_VBYTES, rd64(b + H_VBYTES) + 1));
    /* value_bytes and the references agree, but point past the values. */
    MUTATE(KV_ECORRUPT, 0, {
        wr64(b + H_VBYTES, rd64(b + H_VBYTES) + 1);
        wr32(b + vo + 16 * 8 + 8, rd32(b + vo + 16 * 8 + 8) + 1);
    });

    /* Section table: moved, misaligned, overlapping, out of bounds. */
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE, 200));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE, 256));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE + 24, vo - 8));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE + 24, vo + 8));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE + 24 * 3 + 8, UINT64_MAX));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE + 24 * 3, UINT64_MAX - 8));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE + 24 * 2 + 8, sec_len(b, S_VALUES) + 1));

    /* Padding between keys and vrefs must be zero. */
    MUTATE(KV_ECORRUPT, 0, b[ko + 9 * 8] = 1);
    MUTATE(KV_ECORRUPT, 0, b[vo - 1] = 0x80);

    /* Keys out of order. */
    MUTATE(KV_ECORRUPT, 0, {
        uint64_t k0 = rd64(b + ko), k1 = rd64(b + ko + 8);
        wr64(b + ko, k1);
        wr64(b + ko + 8, k0);
    });
    MUTATE(KV_ECORRUPT, 0, wr64(b + ko + 8 * 4, rd64(b + ko + 8 * 3)));

    /* References: segment, offset, length, total. */
    MUTATE(KV_ECORRUPT, 0, wr32(b + vo + 16 * 2 + 12, 1));
    MUTATE(KV_ECORRUPT, 0, wr64(b + vo + 16 * 3, rd64(b + vo + 16 * 3) + 1));
    MUTATE(KV_ECORRUPT, 0, wr64(b + vo + 16 * 3, 0));
    MUTATE(KV_ECORRUPT, 0, wr32(b + vo + 16 * 8 + 8, rd32(b + vo + 16 * 8 + 8) + 1));
    MUTATE(KV_ECORRUPT, 0, wr32(b + vo + 16 * 8 + 8, (uint32_t)KV_MAX_VALUE + 1));
    MUTATE(KV_ECORRUPT, 0, wr32(b + vo + 16 * 8 + 8, rd32(b + vo + 16 * 8 + 8) - 1));
    MUTATE(KV_ECORRUPT, 0, wr32(b + vo + 16 * 8 + 8, UINT32_MAX));

    /* Model: wrong key count, a length that disagrees with its leaves, junk
     * appended inside the section. */
    MUTATE(KV_ECORRUPT, 0, wr64(b + mo + 8, 8));
    MUTATE(KV_ECORRUPT, 8, wr64(b + H_TABLE + 24 * 3 + 8, sec_len(b, S_MODEL) + 8));
    MUTATE(KV_ECORRUPT, 0, wr64(b + H_TABLE + 24 * 3 + 8, sec_len(b, S_MODEL) - 40));
    MUTATE(KV_ECORRUPT, -(ssize_t)sec_len(good, S_MODEL),
           wr64(b + H_TABLE + 24 * 3 + 8, 0));
#undef MUTATE

    /* Another version may lay its header out differently, even shorter. */
    memcpy(b, good, 16);
    wr32(b + H_VERSION, 2);
    write_all(f->path, b, 16);
    assert_int_equal(load_rc(f), KV_EVERSION);
    free(b);
    free(good);
}

/* Key counts whose array sizes wrap around 2^64 (n * 8 or n * 16 == 0 for
 * an empty file's section lengths) must not pass as an empty file. */
static void test_snap_wrapping_counts(void **state)
{
    fixture *f = *state;
    run *e = make_run(NULL, 0, len_small, 1, 1);
    uint64_t bytes;
    int err;
    assert_int_equal(snap_write(f->dir, NAME, e, 1, &bytes, &err), KV_OK);
    run_unref(e);
    size_t size;
    uint8_t *b = read_all(f->path, &size);
    static const uint64_t ns[] = {(uint64_t)1 << 60, (uint64_t)1 << 61, (uint64_t)1 << 62,
                                  (uint64_t)1 << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        wr64(b + H_N, ns[i]);
        fixup(b, size);
        write_all(f->path, b, size);
        assert_int_equal(load_rc(f), KV_ECORRUPT);
    }
    wr64(b + H_N, 0);
    fixup(b, size);
    write_all(f->path, b, size);
    assert_int_equal(load_rc(f), KV_OK);
    free(b);
}

/* ---- tests: I/O ---- */

typedef struct {
    os_op op;
    int nth;  /* fail the nth call of op (1-based) */
    int seen;
    int rc;   /* -errno; for OS_WRITE with rc == 1: a short write of half */
} fault_plan;

static int fault_hook(void *ctx, os_op op, const char *path, int fd, size_t len)
{
    (void)path;
    (void)fd;
    fault_plan *p = ctx;
    if (op != p->op || ++p->seen != p->nth)
        return 0;
    if (p->rc == 1)
        return len > 1 ? (int)(len / 2) : -ENOSPC;
    return p->rc;
}

static void test_snap_write_faults(void **state)
{
    fixture *f = *state;
    uint64_t *keys = make_keys(20000, 12);
    run *w = make_run(keys, 20000, len_varied, 2, 1);
    struct {
        os_op op;
        int rc, want_errno;
    } cases[] = {
        {OS_OPEN, -EACCES, EACCES}, {OS_WRITE, -ENOSPC, ENOSPC}, {OS_WRITE, 1, ENOSPC},
        {OS_SYNC, -EIO, EIO},       {OS_RENAME, -EXDEV, EXDEV}, {OS_DIRSYNC, -EIO, EIO},
    };
    int writes_failed = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int nth = 1;; nth++) {
            fault_plan plan = {cases[c].op, nth, 0, cases[c].rc};
            os_set_fault_hook(fault_hook, &plan);
            uint64_t bytes;
            int err = 0;
            int rc = snap_write(f->dir, NAME, w, 3, &bytes, &err);
            os_set_fault_hook(NULL, NULL);
            if (plan.seen < nth) { /* fewer calls than nth: nothing failed */
                assert_int_equal(rc, KV_OK);
                assert_int_equal(load_rc(f), KV_OK);
                unlink(f->path);
                break;
            }
            assert_int_equal(rc, KV_EIO);
            assert_int_equal(err, cases[c].want_errno);
            assert_false(os_path_exists(f->tmp));
            assert_false(os_path_exists(f->path));
            writes_failed += cases[c].op == OS_WRITE;
        }
    }
    assert_true(writes_failed >= 6); /* header + several streamed writes, twice */
    run_unref(w);
    free(keys);
}

static void test_snap_load_faults(void **state)
{
    fixture *f = *state;
    run *r = (run *)1;
    uint64_t seq, bytes;
    int err = 0;
    assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_ECORRUPT);
    assert_int_equal(err, ENOENT);
    assert_null(r);

    size_t size;
    free(write_sample(f, 50, len_small, &size));
    fault_plan plan = {OS_OPEN, 1, 0, -EACCES};
    os_set_fault_hook(fault_hook, &plan);
    assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_EIO);
    assert_int_equal(err, EACCES);
    plan = (fault_plan){OS_MMAP, 1, 0, -EIO};
    os_set_fault_hook(fault_hook, &plan);
    assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_EIO);
    assert_int_equal(err, EIO);
    plan = (fault_plan){OS_MMAP, 1, 0, -ENOMEM};
    os_set_fault_hook(fault_hook, &plan);
    assert_int_equal(snap_load(f->dir, NAME, &r, &seq, &bytes, &err), KV_ENOMEM);
    os_set_fault_hook(NULL, NULL);
    assert_int_equal(load_rc(f), KV_OK);

    /* An empty file (a crash before anything was written). */
    write_all(f->path, NULL, 0);
    assert_int_equal(load_rc(f), KV_ECORRUPT);
}

/* An optional argument names the tests to run (a cmocka filter pattern). */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_snap_known_header),
        T(test_snap_round_trip_empty),
        T(test_snap_round_trip_one),
        T(test_snap_round_trip_large),
        T(test_snap_value_limits),
        T(test_snap_rewrite_identical),
        T(test_snap_segment_outlives_run),
        T(test_snap_every_byte_flipped),
        T(test_snap_sampled_flips),
        T(test_snap_truncated_and_extended),
        T(test_snap_inconsistent_but_checksummed),
        T(test_snap_wrapping_counts),
        T(test_snap_write_faults),
        T(test_snap_load_faults),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
