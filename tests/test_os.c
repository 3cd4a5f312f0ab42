/* test_os.c — the system-call seam: wrappers and fault injection. */
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
#include <unistd.h>

#include "os.h"

typedef struct {
    os_op op;
    int countdown; /* fail the Nth matching call */
    int result;    /* what to return then */
    int calls;
} fault_plan;

static int plan_hook(void *ctx, os_op op, const char *path, int fd, size_t len)
{
    (void)path;
    (void)fd;
    (void)len;
    fault_plan *p = ctx;
    if (op != p->op)
        return 0;
    p->calls++;
    return p->calls == p->countdown ? p->result : 0;
}

static char dir[64];

static int setup(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/kyro-os-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    os_set_fault_hook(NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static void test_write_read_roundtrip(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/f", dir);
    int fd;
    assert_int_equal(os_open(path, O_RDWR | O_CREAT, 0644, &fd), 0);
    assert_int_equal(os_write_full(fd, "hello", 5), 0);
    assert_int_equal(os_pwrite_full(fd, "J", 1, 0), 0);
    assert_int_equal(os_fdatasync(fd), 0);
    uint64_t size;
    assert_int_equal(os_file_size(fd, &size), 0);
    assert_int_equal(size, 5);
    char buf[5];
    assert_int_equal(os_pread_full(fd, buf, 5, 0), 0);
    assert_memory_equal(buf, "Jello", 5);
    /* Reading past the end is an error, not a silent short read. */
    assert_int_equal(os_pread_full(fd, buf, 5, 1), -EIO);
    assert_int_equal(os_ftruncate(fd, 2), 0);
    os_close(fd);

    void *all;
    size_t len;
    assert_int_equal(os_read_file(path, &all, &len), 0);
    assert_int_equal(len, 2);
    assert_memory_equal(all, "Je", 2);
    free(all);
    assert_int_equal(os_read_file("/nonexistent/kyro", &all, &len), -ENOENT);
}

static void test_mkdir_unlink_rename(void **state)
{
    (void)state;
    char sub[128], a[160], b[160];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    assert_int_equal(os_mkdir(sub), 0);
    assert_int_equal(os_mkdir(sub), 0); /* already there as a directory */
    snprintf(a, sizeof a, "%s/a", sub);
    snprintf(b, sizeof b, "%s/b", sub);
    int fd;
    assert_int_equal(os_open(a, O_RDWR | O_CREAT, 0644, &fd), 0);
    os_close(fd);
    assert_int_equal(os_mkdir(a), -ENOTDIR);
    assert_int_equal(os_rename(a, b), 0);
    assert_false(os_path_exists(a));
    assert_true(os_path_exists(b));
    assert_int_equal(os_fsync_dir(sub), 0);
    assert_int_equal(os_unlink(b), 0);
    assert_int_equal(os_unlink(b), 0); /* already absent is fine */
}

static void test_lock_excludes_second_holder(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/LOCK", dir);
    int fd1, fd2, fd3;
    assert_int_equal(os_open(path, O_RDWR | O_CREAT, 0644, &fd1), 0);
    assert_int_equal(os_open(path, O_RDWR, 0, &fd2), 0);
    assert_int_equal(os_lock_exclusive(fd1), 0);
    assert_int_equal(os_lock_exclusive(fd2), -EWOULDBLOCK);
    assert_int_equal(os_lock_shared(fd2), -EWOULDBLOCK);
    os_close(fd1);
    assert_int_equal(os_lock_shared(fd2), 0);
    assert_int_equal(os_open(path, O_RDONLY, 0, &fd3), 0);
    assert_int_equal(os_lock_shared(fd3), 0);
    os_close(fd2);
    os_close(fd3);
}

static void test_fault_fails_nth_call(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/g", dir);
    int fd;
    assert_int_equal(os_open(path, O_RDWR | O_CREAT, 0644, &fd), 0);
    fault_plan p = {.op = OS_WRITE, .countdown = 3, .result = -ENOSPC};
    os_set_fault_hook(plan_hook, &p);
    assert_int_equal(os_write_full(fd, "a", 1), 0);
    assert_int_equal(os_write_full(fd, "b", 1), 0);
    assert_int_equal(os_write_full(fd, "c", 1), -ENOSPC);
    assert_int_equal(os_write_full(fd, "d", 1), 0);
    fault_plan s = {.op = OS_SYNC, .countdown = 1, .result = -EIO};
    os_set_fault_hook(plan_hook, &s);
    assert_int_equal(os_fdatasync(fd), -EIO);
    assert_int_equal(os_fsync(fd), 0);
    os_set_fault_hook(NULL, NULL);
    uint64_t size;
    assert_int_equal(os_file_size(fd, &size), 0);
    assert_int_equal(size, 3); /* "abd": the failed write put nothing down */
    os_close(fd);
}

static void test_fault_short_write(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/h", dir);
    int fd;
    assert_int_equal(os_open(path, O_RDWR | O_CREAT, 0644, &fd), 0);
    fault_plan p = {.op = OS_WRITE, .countdown = 1, .result = 4};
    os_set_fault_hook(plan_hook, &p);
    assert_int_equal(os_write_full(fd, "0123456789", 10), -ENOSPC);
    os_set_fault_hook(NULL, NULL);
    uint64_t size;
    assert_int_equal(os_file_size(fd, &size), 0);
    assert_int_equal(size, 4);
    char buf[4];
    assert_int_equal(os_pread_full(fd, buf, 4, 0), 0);
    assert_memory_equal(buf, "0123", 4);
    os_close(fd);
}

static void test_zero_fill(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/z", dir);
    int fd;
    assert_int_equal(os_open(path, O_RDWR | O_CREAT, 0644, &fd), 0);
    assert_int_equal(os_pwrite_full(fd, "abc", 3, 0), 0);
    /* More than the wrapper's zero block, and not a multiple of it. */
    const uint64_t len = (1u << 20) + 12345;
    assert_int_equal(os_zero_fill(fd, 3, len), 0);
    uint64_t size;
    assert_int_equal(os_file_size(fd, &size), 0);
    assert_int_equal(size, 3 + len);
    uint8_t *buf = malloc((size_t)size);
    assert_non_null(buf);
    assert_int_equal(os_pread_full(fd, buf, (size_t)size, 0), 0);
    assert_memory_equal(buf, "abc", 3);
    for (uint64_t i = 3; i < size; i++)
        assert_int_equal(buf[i], 0);
    free(buf);
    /* The fault hook sees it as a size change, and a failure writes nothing. */
    fault_plan p = {.op = OS_TRUNCATE, .countdown = 1, .result = -ENOSPC};
    os_set_fault_hook(plan_hook, &p);
    assert_int_equal(os_zero_fill(fd, size, 4096), -ENOSPC);
    os_set_fault_hook(NULL, NULL);
    assert_int_equal(p.calls, 1);
    assert_int_equal(os_file_size(fd, &size), 0);
    assert_int_equal(size, 3 + len);
    os_close(fd);
}

static void test_mmap_read(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/m", dir);
    int fd;
    assert_int_equal(os_open(path, O_RDWR | O_CREAT, 0644, &fd), 0);
    assert_int_equal(os_write_full(fd, "mapped", 6), 0);
    const void *p;
    assert_int_equal(os_mmap_read(fd, 6, &p), 0);
    assert_memory_equal(p, "mapped", 6);
    os_munmap(p, 6);
    assert_int_equal(os_mmap_read(fd, 0, &p), -EINVAL);
    fault_plan f = {.op = OS_MMAP, .countdown = 1, .result = -ENOMEM};
    os_set_fault_hook(plan_hook, &f);
    assert_int_equal(os_mmap_read(fd, 6, &p), -ENOMEM);
    os_set_fault_hook(NULL, NULL);
    os_close(fd);
}

/* The block pool: freed big blocks are kept and reused (grown or shrunk
 * in place of a fresh mapping), os_big_alloc's blocks are zeroed even when
 * reused, and trimming returns them. */
static void test_big_block_pool(void **state)
{
    (void)state;
    os_big_trim(0);
    assert_int_equal(os_big_pooled(), 0);
    size_t sizes[] = {OS_BIG_ALLOC, (size_t)1 << 20, ((size_t)3 << 20) + 5, (size_t)8 << 20};
    unsigned char *held[4];
    for (size_t i = 0; i < 4; i++) {
        held[i] = os_big_alloc_raw(sizes[i]);
        assert_non_null(held[i]);
        memset(held[i], 0xA5, sizes[i]);
    }
    for (size_t i = 0; i < 4; i++)
        os_big_free(held[i], sizes[i]);
    assert_true(os_big_pooled() >= OS_BIG_ALLOC + ((size_t)12 << 20));
    /* A freed block is taken again rather than a fresh one mapped. */
    size_t before = os_big_pooled();
    unsigned char *again = os_big_alloc_raw((size_t)1 << 20);
    assert_non_null(again);
    assert_int_equal(os_big_pooled(), before - ((size_t)1 << 20));
    os_big_free(again, (size_t)1 << 20);
    /* Every size, smaller and larger than what is pooled, comes back whole
     * and writable; the zeroing allocator's blocks read as zero. */
    size_t want[] = {((size_t)2 << 20) + 1, (size_t)16 << 20, OS_BIG_ALLOC, (size_t)5 << 20};
    unsigned char *got[4];
    for (size_t i = 0; i < 4; i++) {
        got[i] = i % 2 ? os_big_alloc(want[i]) : os_big_alloc_raw(want[i]);
        assert_non_null(got[i]);
        if (i % 2) {
            for (size_t off = 0; off < want[i]; off += 4093)
                assert_int_equal(got[i][off], 0);
            assert_int_equal(got[i][want[i] - 1], 0);
        }
        memset(got[i], (int)i, want[i]);
    }
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(got[i][0], i);
        assert_int_equal(got[i][want[i] - 1], i);
        os_big_free(got[i], want[i]);
    }
    /* Recently used: an idle trim keeps the pool; a full trim empties it. */
    assert_true(os_big_pooled() > 0);
    os_big_trim((uint64_t)60 * 1000000000u);
    assert_true(os_big_pooled() > 0);
    os_big_trim(0);
    assert_int_equal(os_big_pooled(), 0);
    /* Small blocks bypass the pool. */
    void *small = os_big_alloc(100);
    assert_non_null(small);
    assert_int_equal(((unsigned char *)small)[99], 0);
    os_big_free(small, 100);
    assert_int_equal(os_big_pooled(), 0);
}

/* A pooled block bigger than asked for is split: the head is handed out,
 * the tail stays pooled (still populated, not unmapped), and each piece is
 * freed and reused on its own. */
static void test_big_block_pool_splits(void **state)
{
    (void)state;
    os_big_trim(0);
    const size_t whole = (size_t)1 << 20, piece = (size_t)256 << 10;
    unsigned char *block = os_big_alloc_raw(whole);
    assert_non_null(block);
    memset(block, 0x5A, whole);
    os_big_free(block, whole);
    assert_int_equal(os_big_pooled(), whole);

    unsigned char *head = os_big_alloc_raw(piece);
    assert_ptr_equal(head, block);
    assert_int_equal(os_big_pooled(), whole - piece);
    unsigned char *next = os_big_alloc(piece);
    assert_ptr_equal(next, block + piece);
    assert_int_equal(os_big_pooled(), whole - 2 * piece);
    for (size_t off = 0; off < piece; off += 4093)
        assert_int_equal(next[off], 0);
    assert_int_equal(head[piece - 1], 0x5A); /* the raw head kept its bytes */
    memset(head, 1, piece);
    memset(next, 2, piece);
    assert_int_equal(block[whole - 1], 0x5A); /* the pooled tail is untouched */

    /* A remainder smaller than OS_BIG_ALLOC is not worth a pool entry. */
    const size_t tail_bytes = whole - 2 * piece - OS_BIG_ALLOC / 2;
    unsigned char *tail = os_big_alloc_raw(tail_bytes);
    assert_ptr_equal(tail, block + 2 * piece);
    assert_int_equal(os_big_pooled(), 0);
    memset(tail, 3, tail_bytes);

    os_big_free(next, piece);
    os_big_free(head, piece);
    os_big_free(tail, tail_bytes);
    assert_int_equal(os_big_pooled(), 2 * piece + tail_bytes);
    os_big_trim(0);
    assert_int_equal(os_big_pooled(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_read_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkdir_unlink_rename, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_excludes_second_holder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_fails_nth_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_short_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_fill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmap_read, setup, teardown),
        cmocka_unit_test(test_big_block_pool),
        cmocka_unit_test(test_big_block_pool_splits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
