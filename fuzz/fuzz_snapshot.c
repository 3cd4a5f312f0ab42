/*
 * fuzz_snapshot.c — snap_load on hostile files.
 *
 * raw   (first byte != 0xFF): the bytes are a snapshot file. snap_load must
 *       return KV_OK, KV_ECORRUPT or KV_EVERSION and never crash. A run it
 *       accepts must be sound: keys strictly ascending, every value
 *       reference inside its segment and every segment inside the mapping,
 *       every byte readable, run_get finding each key with the same value
 *       and nothing between keys, run_lower_bound exact.
 * built (first byte == 0xFF): pairs from the input are merged into a run
 *       (buf_put + run_merge), written with snap_write and loaded back: the
 *       same pairs and max_seq must come back. Then the file is cut short,
 *       one byte is flipped or junk is appended; snap_load must refuse it or
 *       return exactly the pairs written — never a wrong value.
 * Any mismatch aborts.
 *
 * Built layout after 0xFF: [n u8][max_seq u32]
 *   n x ([key: u8 selector, or 0xFF + u64; 0x40..0x7f = delete][vlen u8][vlen bytes])
 *   [dmode u8][pos u32][xor u8][junk...]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buffer.h"
#include "kyro.h"
#include "run.h"
#include "snapshot.h"

#define FUZZ_NAME "fuzz_snapshot"
#include "fuzz.h"

#define SNAP_NAME "snap-0000000000000001.kyro"
#define MAX_PAIRS 128

static char dir[256], path[300];

static void cleanup(void)
{
    char p[320];
    unlink(path);
    snprintf(p, sizeof p, "%s.tmp", path);
    unlink(p);
    rmdir(dir);
}

/* One scratch directory per process, made before the first input. */
__attribute__((constructor)) static void make_dir(void)
{
    const char *t = getenv("TMPDIR");
    struct stat st;
    if (!t)
        t = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/fuzz_snapshot-XXXXXX", t);
    if (!mkdtemp(dir))
        abort();
    snprintf(path, sizeof path, "%s/%s", dir, SNAP_NAME);
    atexit(cleanup);
}

static void write_file(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        abort();
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0)
            abort();
        off += (size_t)n;
    }
    close(fd);
}

static uint64_t file_size(void)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Everything a loaded run promises; returns a fingerprint of its pairs. */
static uint64_t check_run(const run *r)
{
    uint64_t h = 0xcbf29ce484222325ull ^ r->n;
    CHECK(r->n == 0 || r->keys, "run with keys but no key array");
    CHECK(((uintptr_t)r->keys & 63) == 0 || r->n == 0, "keys not 64-byte aligned");
    CHECK(r->nsegs >= 1 && r->segs, "run without a segment");
    for (uint32_t s = 0; s < r->nsegs; s++) {
        const run_seg *sg = r->segs[s];
        CHECK(sg && (sg->data || sg->len == 0), "segment %u has no data", s);
        if (sg->map && sg->len)
            CHECK(sg->data >= (const uint8_t *)sg->map &&
                      sg->len <= sg->map_len &&
                      (uint64_t)(sg->data - (const uint8_t *)sg->map) <= sg->map_len - sg->len,
                  "segment %u lies outside its mapping", s);
    }
    if (r->index)
        CHECK(rmi_key_count(r->index) == r->n, "index built on %zu keys, run has %llu",
              rmi_key_count(r->index), (unsigned long long)r->n);
    for (uint64_t i = 0; i < r->n; i++) {
        if (i)
            CHECK(r->keys[i] > r->keys[i - 1], "keys not strictly ascending at %llu",
                  (unsigned long long)i);
        const run_vref vr = run_vref_at(r, i); /* a fixed run has no vrefs */
        const run_vref *v = &vr;
        CHECK(v->seg < r->nsegs, "value %llu names segment %u of %u", (unsigned long long)i,
              v->seg, r->nsegs);
        const run_seg *sg = r->segs[v->seg];
        CHECK(v->len <= KV_MAX_VALUE && v->off <= sg->len && v->len <= sg->len - v->off,
              "value %llu [%llu,+%u) outside its segment (%llu bytes)", (unsigned long long)i,
              (unsigned long long)v->off, v->len, (unsigned long long)sg->len);
        size_t len;
        const uint8_t *p = run_value(r, i, &len);
        for (size_t j = 0; j < len; j++)
            h = (h ^ p[j]) * 0x100000001b3ull;
        h = (h ^ r->keys[i] ^ len) * 0x100000001b3ull;

        const void *gv;
        size_t gl, probed = 0;
        int fb = 0;
        int rc = run_get(r, r->keys[i], &gv, &gl, &probed, &fb);
        CHECK(rc == KV_OK && gv == (const void *)p && gl == len, "run_get(keys[%llu]) = %d",
              (unsigned long long)i, rc);
        CHECK(run_lower_bound(r, r->keys[i]) == i, "run_lower_bound(keys[%llu]) wrong",
              (unsigned long long)i);
        if (r->keys[i] != UINT64_MAX && (i + 1 == r->n || r->keys[i + 1] != r->keys[i] + 1)) {
            CHECK(run_get(r, r->keys[i] + 1, &gv, &gl, NULL, NULL) == KV_NOTFOUND,
                  "run_get finds a key that is not there");
            CHECK(run_lower_bound(r, r->keys[i] + 1) == i + 1, "run_lower_bound(key+1) wrong");
        }
    }
    CHECK(run_lower_bound(r, 0) == 0 || (r->n && r->keys[0] == 0) || r->n == 0,
          "run_lower_bound(0) wrong");
    if (r->n == 0 || r->keys[r->n - 1] != UINT64_MAX)
        CHECK(run_lower_bound(r, UINT64_MAX) == r->n, "run_lower_bound(max) wrong");
    return h;
}

static void run_raw(const uint8_t *data, size_t size)
{
    write_file(data, size);
    run *r = NULL;
    uint64_t max_seq = 0, bytes = 0;
    int err = 0;
    int rc = snap_load(dir, SNAP_NAME, &r, &max_seq, &bytes, &err);
    CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_EVERSION,
          "snap_load of %zu bytes = %s (errno %d)", size, kv_strerror(rc), err);
    if (rc != KV_OK)
        return;
    CHECK(bytes == size, "snap_load: bytes %llu, file %zu", (unsigned long long)bytes, size);
    check_run(r);
    run_unref(r);
}

static void run_built(const uint8_t *data, size_t size)
{
    size_t pos = 0;
#define TAKE() (pos < size ? data[pos++] : 0)
    static const uint64_t table[] = {0,          1,          2,     3,
                                     1000,       1001,       65536, (1ull << 63) - 1,
                                     1ull << 63, UINT64_MAX - 1, UINT64_MAX, 0xfeedface};
    size_t n = TAKE() % (MAX_PAIRS + 1);
    uint64_t max_seq = TAKE();
    max_seq |= (uint64_t)TAKE() << 8;
    max_seq |= (uint64_t)TAKE() << 16;
    max_seq |= (uint64_t)TAKE() << 24;

    buf *b;
    CHECK(buf_new(&b) == KV_OK, "buf_new");
    static uint8_t val[256];
    for (size_t i = 0; i < n; i++) {
        unsigned sel = TAKE();
        uint64_t key;
        if (sel == 0xFF) {
            key = 0;
            for (int j = 0; j < 8; j++)
                key |= (uint64_t)TAKE() << (8 * j);
        } else if (sel >= 0x80) {
            key = 5000 + sel * 7; /* a dense-ish run of keys */
        } else {
            key = table[sel % (sizeof table / sizeof table[0])];
        }
        /* Selectors 0x40..0x7f are deletes (of earlier puts, or of nothing). */
        int tomb = sel >= 0x40 && sel < 0x80;
        size_t len = tomb ? 0 : TAKE();
        for (size_t j = 0; j < len; j++)
            val[j] = pos < size ? data[pos++] : (uint8_t)(j + i);
        CHECK(buf_put(b, key, i + 1, tomb, val, len) == KV_OK, "buf_put");
    }
    run *empty, *merged;
    CHECK(run_new_empty(&empty) == KV_OK, "run_new_empty");
    CHECK(run_merge(empty, b, UINT64_MAX, &merged) == KV_OK, "run_merge");
    run_unref(empty);
    uint64_t want = check_run(merged);

    unlink(path);
    uint64_t bytes = 0, got_seq = 0;
    int err = 0;
    int rc = snap_write(dir, SNAP_NAME, merged, max_seq, &bytes, &err);
    CHECK(rc == KV_OK, "snap_write = %s (errno %d)", kv_strerror(rc), err);
    CHECK(bytes == file_size(), "snap_write: bytes %llu, file %llu", (unsigned long long)bytes,
          (unsigned long long)file_size());
    uint64_t n_pairs = merged->n;
    run_unref(merged);
    buf_free(b);

    run *r = NULL;
    rc = snap_load(dir, SNAP_NAME, &r, &got_seq, &bytes, &err);
    CHECK(rc == KV_OK, "snap_load of a fresh snapshot = %s (errno %d)", kv_strerror(rc), err);
    CHECK(got_seq == max_seq && r->n == n_pairs, "snap_load: max_seq %llu/%llu, n %llu/%llu",
          (unsigned long long)got_seq, (unsigned long long)max_seq, (unsigned long long)r->n,
          (unsigned long long)n_pairs);
    CHECK(check_run(r) == want, "snapshot round trip changed the pairs");
    run_unref(r);

    /* Damage. */
    unsigned dmode = TAKE() % 4;
    uint64_t dpos = TAKE();
    dpos |= (uint64_t)TAKE() << 8;
    dpos |= (uint64_t)TAKE() << 16;
    dpos |= (uint64_t)TAKE() << 24;
    uint8_t x = TAKE();
#undef TAKE
    uint64_t fsize = file_size();
    if (dmode == 0 || fsize == 0 || (dmode == 2 && !x))
        return;
    uint8_t *file = malloc(fsize + (size - pos));
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && read(fd, file, fsize) == (ssize_t)fsize, "read snapshot");
    close(fd);
    uint64_t nsize = fsize;
    if (dmode == 1)
        nsize = dpos % fsize; /* cut short */
    else if (dmode == 2)
        file[dpos % fsize] ^= x;
    else {
        memcpy(file + fsize, data + pos, size - pos); /* junk after the end */
        nsize = fsize + (size - pos);
        if (nsize == fsize) {
            free(file);
            return;
        }
    }
    write_file(file, (size_t)nsize);
    free(file);
    rc = snap_load(dir, SNAP_NAME, &r, &got_seq, &bytes, &err);
    CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_EVERSION, "damaged snapshot: %s",
          kv_strerror(rc));
    if (dmode == 1)
        CHECK(rc != KV_OK, "snapshot cut from %llu to %llu bytes accepted",
              (unsigned long long)fsize, (unsigned long long)nsize);
    if (rc == KV_OK) {
        /* Loaded despite the damage: only if nothing it returns changed. */
        CHECK(got_seq == max_seq && r->n == n_pairs && check_run(r) == want,
              "damaged snapshot (mode %u at %llu) loads with different contents", dmode,
              (unsigned long long)(dpos % fsize));
        run_unref(r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0 && data[0] == 0xFF)
        run_built(data + 1, size - 1);
    else
        run_raw(data, size);
    return 0;
}
