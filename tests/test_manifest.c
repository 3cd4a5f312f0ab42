/* test_manifest.c — the MANIFEST file: known-answer bytes, round trips,
 * every damaged form refused, I/O failures reported and cleaned up. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "kyro.h"
#include "manifest.h"
#include "os.h"

#define MSIZE 48

/* ---- scratch directory and raw file access ---- */

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
    snprintf(f->dir, sizeof f->dir, "/tmp/test_manifest-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/%s", f->dir, MANIFEST_NAME);
    snprintf(f->tmp, sizeof f->tmp, "%s/%s.tmp", f->dir, MANIFEST_NAME);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    os_set_fault_hook(NULL, NULL);
    unlink(f->path);
    unlink(f->tmp);
    rmdir(f->dir);
    free(f);
    return 0;
}

static size_t read_raw(const char *path, uint8_t *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, cap);
    assert_true(n >= 0);
    close(fd);
    return (size_t)n;
}

static void write_raw(const char *path, const uint8_t *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

static void le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The documented layout, encoded independently of manifest.c. */
static void encode(uint8_t b[MSIZE], uint32_t version, uint32_t size, uint64_t snap, uint64_t wal,
                   uint64_t next)
{
    memcpy(b, "KYROMANI", 8);
    le32(b + 8, version);
    le32(b + 12, size);
    le64(b + 16, snap);
    le64(b + 24, wal);
    le64(b + 32, next);
    le64(b + 40, XXH3_64bits(b, 40));
}

static int same(const manifest *a, const manifest *b)
{
    return a->snapshot_id == b->snapshot_id && a->wal_id == b->wal_id && a->next_id == b->next_id;
}

/* ---- tests ---- */

static void test_manifest_known_bytes(void **state)
{
    fixture *f = *state;
    manifest m = {.snapshot_id = 0x0102030405060708ull, .wal_id = 9, .next_id = 0xa1b2c3d4e5f60718ull};
    int err = -1;
    assert_int_equal(manifest_write(f->dir, &m, &err), KV_OK);
    assert_int_equal(err, 0);

    uint8_t got[MSIZE + 8];
    assert_int_equal(read_raw(f->path, got, sizeof got), MSIZE);
    static const uint8_t want_prefix[40] = {
        'K',  'Y',  'R',  'O',  'M',  'A',  'N',  'I',  /* magic */
        0x01, 0x00, 0x00, 0x00,                         /* version 1 */
        0x30, 0x00, 0x00, 0x00,                         /* size 48 */
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* snapshot_id */
        0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* wal_id */
        0x18, 0x07, 0xf6, 0xe5, 0xd4, 0xc3, 0xb2, 0xa1, /* next_id */
    };
    assert_memory_equal(got, want_prefix, 40);
    uint64_t sum = XXH3_64bits(want_prefix, 40);
    for (int i = 0; i < 8; i++)
        assert_int_equal(got[40 + i], (uint8_t)(sum >> (8 * i)));
    assert_false(os_path_exists(f->tmp));

    manifest r = {0};
    assert_int_equal(manifest_read(f->dir, &r, &err), KV_OK);
    assert_true(same(&m, &r));
}

static void test_manifest_round_trip(void **state)
{
    fixture *f = *state;
    static const manifest cases[] = {
        {0, 1, 2},
        {3, 2, 4},
        {0, UINT64_MAX - 1, UINT64_MAX},
        {UINT64_MAX - 1, 1, UINT64_MAX},
        {0x8000000000000000ull, 0x7fffffffffffffffull, 0x8000000000000001ull},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int err;
        manifest r;
        assert_int_equal(manifest_write(f->dir, &cases[i], &err), KV_OK);
        memset(&r, 0, sizeof r);
        assert_int_equal(manifest_read(f->dir, &r, &err), KV_OK);
        assert_true(same(&cases[i], &r));
        /* Byte-exact against the independent encoder. */
        uint8_t want[MSIZE], got[MSIZE + 1];
        encode(want, 1, MSIZE, cases[i].snapshot_id, cases[i].wal_id, cases[i].next_id);
        assert_int_equal(read_raw(f->path, got, sizeof got), MSIZE);
        assert_memory_equal(got, want, MSIZE);
    }
}

static void test_manifest_absent(void **state)
{
    fixture *f = *state;
    manifest m = {7, 8, 9}, keep = m;
    int err = -1;
    assert_int_equal(manifest_read(f->dir, &m, &err), KV_NOTFOUND);
    assert_true(same(&m, &keep));
    char missing[128];
    snprintf(missing, sizeof missing, "%s/no-such-dir", f->dir);
    assert_int_equal(manifest_read(missing, &m, &err), KV_NOTFOUND);
}

static void test_manifest_every_flip(void **state)
{
    fixture *f = *state;
    manifest w = {0x11, 0x22, 0x33};
    int err;
    assert_int_equal(manifest_write(f->dir, &w, &err), KV_OK);
    uint8_t good[MSIZE];
    assert_int_equal(read_raw(f->path, good, sizeof good), MSIZE);
    static const uint8_t masks[] = {0x01, 0x02, 0x10, 0x80, 0xff};
    for (size_t pos = 0; pos < MSIZE; pos++) {
        for (size_t k = 0; k < sizeof masks; k++) {
            uint8_t bad[MSIZE];
            memcpy(bad, good, MSIZE);
            bad[pos] ^= masks[k];
            write_raw(f->path, bad, MSIZE);
            manifest m = {0};
            int rc = manifest_read(f->dir, &m, &err);
            /* The version field is the only one read before the checksum. */
            assert_int_equal(rc, pos >= 8 && pos < 12 ? KV_EVERSION : KV_ECORRUPT);
        }
    }
}

static void test_manifest_truncated_and_extended(void **state)
{
    fixture *f = *state;
    manifest w = {5, 6, 7};
    int err;
    assert_int_equal(manifest_write(f->dir, &w, &err), KV_OK);
    uint8_t good[MSIZE + 16];
    assert_int_equal(read_raw(f->path, good, sizeof good), MSIZE);
    memset(good + MSIZE, 0, 16);
    for (size_t len = 0; len <= MSIZE + 16; len++) {
        if (len == MSIZE)
            continue;
        write_raw(f->path, good, len);
        manifest m = {0};
        assert_int_equal(manifest_read(f->dir, &m, &err), KV_ECORRUPT);
    }
}

static void test_manifest_version_and_fields(void **state)
{
    fixture *f = *state;
    uint8_t b[MSIZE];
    manifest m;
    int err;

    encode(b, 1, MSIZE, 1, 2, 3); /* the independent encoder is accepted */
    write_raw(f->path, b, MSIZE);
    assert_int_equal(manifest_read(f->dir, &m, &err), KV_OK);
    assert_true(m.snapshot_id == 1 && m.wal_id == 2 && m.next_id == 3);

    static const uint32_t versions[] = {0, 2, 0x100, UINT32_MAX};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        encode(b, versions[i], MSIZE, 1, 2, 3);
        write_raw(f->path, b, MSIZE);
        assert_int_equal(manifest_read(f->dir, &m, &err), KV_EVERSION);
    }
    /* A future version may be any length. */
    encode(b, 2, 64, 1, 2, 3);
    write_raw(f->path, b, 20);
    assert_int_equal(manifest_read(f->dir, &m, &err), KV_EVERSION);

    /* Checksum-valid but wrong size field. */
    encode(b, 1, 40, 1, 2, 3);
    write_raw(f->path, b, MSIZE);
    assert_int_equal(manifest_read(f->dir, &m, &err), KV_ECORRUPT);

    /* Checksum-valid ids that break the invariants. */
    static const uint64_t bad_ids[][3] = {
        {0, 0, 1},          /* wal_id 0 */
        {0, 5, 5},          /* next_id not past wal_id */
        {9, 2, 9},          /* next_id not past snapshot_id */
        {0, UINT64_MAX, 0}, /* wrapped */
    };
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        encode(b, 1, MSIZE, bad_ids[i][0], bad_ids[i][1], bad_ids[i][2]);
        write_raw(f->path, b, MSIZE);
        assert_int_equal(manifest_read(f->dir, &m, &err), KV_ECORRUPT);
        manifest w = {bad_ids[i][0], bad_ids[i][1], bad_ids[i][2]};
        assert_int_equal(manifest_write(f->dir, &w, &err), KV_EINVAL);
        /* The file on disk was not touched by the refused write. */
        uint8_t got[MSIZE];
        assert_int_equal(read_raw(f->path, got, sizeof got), MSIZE);
        assert_memory_equal(got, b, MSIZE);
    }
}

static void test_manifest_names(void **state)
{
    (void)state;
    char buf[32];
    memset(buf, 'x', sizeof buf);
    manifest_snap_name(0, buf);
    assert_string_equal(buf, "snap-0000000000000000.kyro");
    manifest_snap_name(0x1a2b, buf);
    assert_string_equal(buf, "snap-0000000000001a2b.kyro");
    manifest_snap_name(UINT64_MAX, buf);
    assert_string_equal(buf, "snap-ffffffffffffffff.kyro");
    manifest_wal_name(1, buf);
    assert_string_equal(buf, "wal-0000000000000001.log");
    manifest_wal_name(UINT64_MAX, buf);
    assert_string_equal(buf, "wal-ffffffffffffffff.log");
}

/* ---- I/O failures ---- */

typedef struct {
    os_op op;
    int nth;      /* fail the nth call of op (1-based) */
    int seen;
    int rc;       /* what to return: -errno, or a short length for OS_WRITE */
} fault_plan;

static int fault_hook(void *ctx, os_op op, const char *path, int fd, size_t len)
{
    (void)path;
    (void)fd;
    (void)len;
    fault_plan *p = ctx;
    if (op == p->op && ++p->seen == p->nth)
        return p->rc;
    return 0;
}

static void test_manifest_write_faults(void **state)
{
    fixture *f = *state;
    manifest old = {1, 2, 3}, neu = {4, 5, 6};
    int err;
    struct {
        os_op op;
        int rc, want_errno;
        int new_in_place; /* the failure comes after the rename */
    } cases[] = {
        {OS_OPEN, -EACCES, EACCES, 0},  {OS_WRITE, -ENOSPC, ENOSPC, 0},
        {OS_WRITE, 7, ENOSPC, 0},        /* short write */
        {OS_SYNC, -EIO, EIO, 0},        {OS_RENAME, -EXDEV, EXDEV, 0},
        {OS_DIRSYNC, -EIO, EIO, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(manifest_write(f->dir, &old, &err), KV_OK);
        fault_plan plan = {cases[i].op, 1, 0, cases[i].rc};
        os_set_fault_hook(fault_hook, &plan);
        err = 0;
        int rc = manifest_write(f->dir, &neu, &err);
        os_set_fault_hook(NULL, NULL);
        assert_int_equal(rc, KV_EIO);
        assert_int_equal(err, cases[i].want_errno);
        assert_false(os_path_exists(f->tmp));
        manifest m = {0};
        assert_int_equal(manifest_read(f->dir, &m, &err), KV_OK);
        assert_true(same(&m, cases[i].new_in_place ? &neu : &old));
    }
    /* ENOMEM from the OS is reported as KV_ENOMEM. */
    fault_plan plan = {OS_OPEN, 1, 0, -ENOMEM};
    os_set_fault_hook(fault_hook, &plan);
    assert_int_equal(manifest_write(f->dir, &neu, &err), KV_ENOMEM);
    os_set_fault_hook(NULL, NULL);
}

static void test_manifest_read_faults(void **state)
{
    fixture *f = *state;
    manifest w = {1, 2, 3}, m;
    int err;
    assert_int_equal(manifest_write(f->dir, &w, &err), KV_OK);
    fault_plan plan = {OS_OPEN, 1, 0, -EACCES};
    os_set_fault_hook(fault_hook, &plan);
    assert_int_equal(manifest_read(f->dir, &m, &err), KV_EIO);
    assert_int_equal(err, EACCES);
    plan = (fault_plan){OS_READ, 1, 0, -EIO};
    os_set_fault_hook(fault_hook, &plan);
    assert_int_equal(manifest_read(f->dir, &m, &err), KV_EIO);
    assert_int_equal(err, EIO);
    os_set_fault_hook(NULL, NULL);
    /* A directory where the file should be is an I/O error, not corruption. */
    unlink(f->path);
    assert_int_equal(mkdir(f->path, 0755), 0);
    assert_int_equal(manifest_read(f->dir, &m, &err), KV_EIO);
    assert_int_not_equal(err, 0);
    rmdir(f->path);
}

/* An optional argument names the tests to run (a cmocka filter pattern). */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_manifest_known_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_every_flip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_truncated_and_extended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_version_and_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_write_faults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_read_faults, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
