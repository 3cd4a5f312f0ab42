/*
 * os.c — every system call KyroDB makes on files, behind one seam.
 *
 * Each wrapper asks the fault hook (if one is installed) before acting, so
 * tests can fail the Nth write with ENOSPC, make a write short, or fail an
 * fsync. Wrappers retry EINTR and short transfers themselves; callers see
 * 0 / a count on success and -errno on failure. Nothing here prints.
 */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static os_fault_fn fault_fn;
static void *fault_ctx;

void os_set_fault_hook(os_fault_fn fn, void *ctx)
{
    fault_fn = fn;
    fault_ctx = ctx;
}

/* 0 to proceed, -errno to fail, or for writes a positive short length. */
static int fault(os_op op, const char *path, int fd, size_t len)
{
    return fault_fn ? fault_fn(fault_ctx, op, path, fd, len) : 0;
}

int os_open(const char *path, int flags, int mode, int *fd_out)
{
    int rc = fault(OS_OPEN, path, -1, 0);
    if (rc < 0)
        return rc;
    int fd;
    do
        fd = open(path, flags | O_CLOEXEC, mode);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -errno;
    *fd_out = fd;
    return 0;
}

int os_close(int fd)
{
    return close(fd) == 0 ? 0 : -errno;
}

int os_mkdir(const char *path)
{
    int rc = fault(OS_MKDIR, path, -1, 0);
    if (rc < 0)
        return rc;
    if (mkdir(path, 0755) == 0)
        return 0;
    if (errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            return 0;
        return -ENOTDIR;
    }
    return -errno;
}

int os_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    int rc = fault(OS_READ, NULL, fd, len);
    if (rc < 0)
        return rc;
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO; /* unexpected end of file */
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Write all of buf; off < 0 means "at the current position". */
static int write_all(int fd, const void *buf, size_t len, int64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = off < 0 ? write(fd, p, len) : pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        if (off >= 0)
            off += n;
    }
    return 0;
}

static int write_checked(int fd, const void *buf, size_t len, int64_t off)
{
    int rc = fault(OS_WRITE, NULL, fd, len);
    if (rc < 0)
        return rc;
    if (rc > 0 && (size_t)rc < len) {
        /* Injected short write: part of the data lands, then the rest
         * fails as on a full disk. */
        int wrc = write_all(fd, buf, (size_t)rc, off);
        return wrc < 0 ? wrc : -ENOSPC;
    }
    return write_all(fd, buf, len, off);
}

int os_write_full(int fd, const void *buf, size_t len)
{
    return write_checked(fd, buf, len, -1);
}

int os_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    return write_checked(fd, buf, len, (int64_t)off);
}

int os_fdatasync(int fd)
{
    int rc = fault(OS_SYNC, NULL, fd, 0);
    if (rc < 0)
        return rc;
    return fdatasync(fd) == 0 ? 0 : -errno;
}

int os_fsync(int fd)
{
    int rc = fault(OS_SYNC, NULL, fd, 0);
    if (rc < 0)
        return rc;
    return fsync(fd) == 0 ? 0 : -errno;
}

int os_fsync_dir(const char *dir)
{
    int rc = fault(OS_DIRSYNC, dir, -1, 0);
    if (rc < 0)
        return rc;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int os_rename(const char *from, const char *to)
{
    int rc = fault(OS_RENAME, to, -1, 0);
    if (rc < 0)
        return rc;
    return rename(from, to) == 0 ? 0 : -errno;
}

int os_unlink(const char *path)
{
    int rc = fault(OS_UNLINK, path, -1, 0);
    if (rc < 0)
        return rc;
    if (unlink(path) == 0 || errno == ENOENT)
        return 0;
    return -errno;
}

int os_ftruncate(int fd, uint64_t len)
{
    int rc = fault(OS_TRUNCATE, NULL, fd, 0);
    if (rc < 0)
        return rc;
    while (ftruncate(fd, (off_t)len) != 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

int os_zero_fill(int fd, uint64_t off, uint64_t len)
{
    /* Read-only after zero-initialisation; in .bss, so it costs no memory
     * until read, and then only the shared zero pages. */
    static uint8_t zeros[256 << 10];
    int rc = fault(OS_TRUNCATE, NULL, fd, (size_t)len);
    if (rc < 0)
        return rc;
    while (len > 0) {
        size_t n = len < sizeof zeros ? (size_t)len : sizeof zeros;
        if ((rc = write_all(fd, zeros, n, (int64_t)off)) < 0)
            return rc;
        off += n;
        len -= n;
    }
    return 0;
}

int os_file_size(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

int os_mmap_read(int fd, size_t len, const void **addr)
{
    int rc = fault(OS_MMAP, NULL, fd, len);
    if (rc < 0)
        return rc;
    if (len == 0)
        return -EINVAL;
    void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    *addr = p;
    return 0;
}

void os_munmap(const void *addr, size_t len)
{
    if (addr && len)
        munmap((void *)addr, len);
}

/*
 * The block pool. Big blocks churn: every fold allocates the new base's
 * arrays while the old one is still read, a new write buffer fills fresh
 * chunks while the frozen one is folded, and the previous generation is
 * freed just after. Fresh anonymous memory costs a page fault and a zeroed
 * page per 4 KiB (far more on a virtual machine whose host backs guest
 * memory lazily), and every mmap or munmap takes the process's address-space
 * lock, which populating another block holds. So freed blocks wait here for
 * reuse, a block of another size is resized with mremap (page tables move;
 * no byte is copied or zeroed again), and os_big_trim hands them back.
 * Bounded by POOL_MAX_BLOCKS blocks and POOL_MAX_BYTES bytes.
 */
#define POOL_MAX_BLOCKS 512
#define POOL_MAX_BYTES ((size_t)4 << 30)
#define POPULATE_SLICE ((size_t)2 << 20)

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    void *p;
    size_t bytes;
} pool[POOL_MAX_BLOCKS];
static size_t pool_n, pool_bytes;
static _Atomic uint64_t pool_last_use_ns;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Fault in [p, p + len) now, a slice at a time so that no single call holds
 * the address-space lock for long: one call per slice costs less than a
 * fault per page. Where MADV_POPULATE_WRITE is unknown the pages fault in
 * on first use instead. */
static void populate(void *p, size_t len)
{
#ifdef MADV_POPULATE_WRITE
    for (size_t off = 0; off < len; off += POPULATE_SLICE) {
        size_t n = len - off < POPULATE_SLICE ? len - off : POPULATE_SLICE;
        if (madvise((char *)p + off, n, MADV_POPULATE_WRITE) != 0)
            return;
    }
#else
    (void)p;
    (void)len;
#endif
}

static size_t page_round(size_t bytes)
{
    return (bytes + 4095) & ~(size_t)4095;
}

/* A pooled block resized to bytes (page-rounded), or NULL. Takes the
 * smallest block that is big enough, else the largest one (grown). A block
 * bigger than asked for is split, its tail going back to the pool: shrinking
 * it would hand populated pages back to the system, and the next fold, which
 * needs them again, would fault every one of them in afresh. */
static void *pool_take(size_t bytes)
{
    pthread_mutex_lock(&pool_lock);
    size_t best = SIZE_MAX, largest = SIZE_MAX;
    for (size_t i = 0; i < pool_n; i++) {
        if (pool[i].bytes >= bytes && (best == SIZE_MAX || pool[i].bytes < pool[best].bytes))
            best = i;
        if (largest == SIZE_MAX || pool[i].bytes > pool[largest].bytes)
            largest = i;
    }
    size_t pick = best != SIZE_MAX ? best : largest;
    if (pick == SIZE_MAX) {
        pthread_mutex_unlock(&pool_lock);
        return NULL;
    }
    char *p = pool[pick].p;
    size_t have = pool[pick].bytes;
    if (have > bytes && have - bytes >= OS_BIG_ALLOC) {
        pool[pick].p = p + bytes;
        pool[pick].bytes = have - bytes;
        pool_bytes -= bytes;
        have = bytes;
    } else {
        pool[pick] = pool[--pool_n];
        pool_bytes -= have;
    }
    atomic_store_explicit(&pool_last_use_ns, mono_ns(), memory_order_relaxed);
    pthread_mutex_unlock(&pool_lock);
    if (have == bytes)
        return p;
    void *q = mremap(p, have, bytes, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) {
        munmap(p, have);
        return NULL;
    }
    if (bytes > have)
        populate((char *)q + have, bytes - have);
    return q;
}

void *os_big_alloc_raw(size_t bytes)
{
    if (bytes < OS_BIG_ALLOC)
        return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    size_t len = page_round(bytes);
    void *p = pool_take(len);
    if (p)
        return p;
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* These blocks are filled right away. */
    populate(p, len);
    return p;
}

void *os_big_alloc(size_t bytes)
{
    if (bytes < OS_BIG_ALLOC) {
        void *p = os_big_alloc_raw(bytes);
        if (p)
            memset(p, 0, bytes);
        return p;
    }
    size_t len = page_round(bytes);
    void *p = pool_take(len);
    if (p) {
        memset(p, 0, len);
        return p;
    }
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    populate(p, len);
    return p;
}

void os_big_free(void *p, size_t bytes)
{
    if (!p)
        return;
    if (bytes < OS_BIG_ALLOC) {
        free(p);
        return;
    }
    size_t len = page_round(bytes);
    pthread_mutex_lock(&pool_lock);
    if (pool_n < POOL_MAX_BLOCKS && pool_bytes + len <= POOL_MAX_BYTES) {
        pool[pool_n].p = p;
        pool[pool_n].bytes = len;
        pool_n++;
        pool_bytes += len;
        p = NULL;
    }
    pthread_mutex_unlock(&pool_lock);
    if (p)
        munmap(p, len);
}

void os_big_trim(uint64_t idle_ns)
{
    pthread_mutex_lock(&pool_lock);
    if (idle_ns && mono_ns() - atomic_load_explicit(&pool_last_use_ns, memory_order_relaxed) < idle_ns) {
        pthread_mutex_unlock(&pool_lock);
        return;
    }
    size_t n = pool_n;
    void *ps[POOL_MAX_BLOCKS];
    size_t lens[POOL_MAX_BLOCKS];
    for (size_t i = 0; i < n; i++) {
        ps[i] = pool[i].p;
        lens[i] = pool[i].bytes;
    }
    pool_n = 0;
    pool_bytes = 0;
    pthread_mutex_unlock(&pool_lock);
    for (size_t i = 0; i < n; i++)
        munmap(ps[i], lens[i]);
}

size_t os_big_pooled(void)
{
    pthread_mutex_lock(&pool_lock);
    size_t n = pool_bytes;
    pthread_mutex_unlock(&pool_lock);
    return n;
}

static int lock_fd(int fd, int how)
{
    int rc = fault(OS_LOCK, NULL, fd, 0);
    if (rc < 0)
        return rc;
    while (flock(fd, how | LOCK_NB) != 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

int os_lock_exclusive(int fd)
{
    return lock_fd(fd, LOCK_EX);
}

int os_lock_shared(int fd)
{
    return lock_fd(fd, LOCK_SH);
}

int os_read_file(const char *path, void **buf, size_t *len)
{
    int fd, rc = os_open(path, O_RDONLY, 0, &fd);
    if (rc < 0)
        return rc;
    uint64_t size;
    uint8_t *p = NULL;
    rc = os_file_size(fd, &size);
    if (rc < 0)
        goto fail;
    if (size > SIZE_MAX - 1) {
        rc = -EFBIG;
        goto fail;
    }
    p = malloc(size ? (size_t)size : 1);
    if (!p) {
        rc = -ENOMEM;
        goto fail;
    }
    if (size) {
        rc = os_pread_full(fd, p, (size_t)size, 0);
        if (rc < 0)
            goto fail;
    }
    close(fd);
    *buf = p;
    *len = (size_t)size;
    return 0;
fail:
    free(p);
    close(fd);
    return rc;
}

int os_path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

void os_wait_while(const atomic_uint *word, unsigned seen, uint64_t timeout_ns)
{
    struct timespec t = {(time_t)(timeout_ns / 1000000000u), (long)(timeout_ns % 1000000000u)};
    /* EAGAIN (changed already), ETIMEDOUT and EINTR all mean: look again. */
    (void)syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, timeout_ns ? &t : NULL, NULL, 0);
}

void os_wake_all(const atomic_uint *word)
{
    (void)syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}
