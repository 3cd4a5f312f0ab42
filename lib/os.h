/*
 * os.h — the seam between KyroDB and the operating system.
 *
 * Every file-system call the library makes goes through here, so tests can
 * inject faults: a hook sees each call before it happens and may make it fail
 * with an errno of its choosing. All functions return 0 (or a non-negative
 * count) on success and -errno on failure; they never print.
 */
#ifndef KYRO_OS_H
#define KYRO_OS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum {
    OS_OPEN, OS_READ, OS_WRITE, OS_SYNC, OS_DIRSYNC, OS_RENAME, OS_UNLINK,
    OS_TRUNCATE, OS_MMAP, OS_LOCK, OS_MKDIR, OS_OP_COUNT
} os_op;

/* A fault hook: return 0 to let the call proceed, -errno to fail it.
 * path is the file's name where the call takes one, else NULL; fd is the
 * descriptor where the call takes one, else -1 (a test can map it to a name
 * through /proc/self/fd). For OS_WRITE, returning a positive n < len makes
 * the write short (n bytes are written, then the call fails with -ENOSPC). */
typedef int (*os_fault_fn)(void *ctx, os_op op, const char *path, int fd, size_t len);
void os_set_fault_hook(os_fault_fn fn, void *ctx); /* NULL removes it; not thread-safe */

int os_open(const char *path, int flags, int mode, int *fd_out);
int os_close(int fd);
int os_mkdir(const char *path);                       /* 0 if it already exists as a dir */
int os_pread_full(int fd, void *buf, size_t len, uint64_t off);  /* -EIO on short read (EOF) */
int os_write_full(int fd, const void *buf, size_t len);          /* loops over short writes */
int os_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
int os_fdatasync(int fd);
int os_fsync(int fd);
int os_fsync_dir(const char *dir);
int os_rename(const char *from, const char *to);
int os_unlink(const char *path);                      /* 0 if already absent */
int os_ftruncate(int fd, uint64_t len);
/* Write zeros over [off, off+len), growing the size: unlike fallocate's
 * unwritten extents, the blocks are then written ones. Reported to the
 * fault hook as OS_TRUNCATE, the other size change. */
int os_zero_fill(int fd, uint64_t off, uint64_t len);
int os_file_size(int fd, uint64_t *size);
int os_mmap_read(int fd, size_t len, const void **addr); /* PROT_READ, MAP_SHARED */
void os_munmap(const void *addr, size_t len);

/* Large heap blocks (the write buffer's chunks and tables, the base run's
 * arrays) that churn with every fold. From OS_BIG_ALLOC bytes up they come
 * from the kernel, page aligned and faulted in at once, through a pool of
 * freed blocks (see os.c): os_big_free keeps a block for reuse instead of
 * unmapping it, and os_big_trim returns the pool to the system. Smaller
 * ones use aligned_alloc(64) and free. os_big_alloc zeroes the block;
 * os_big_alloc_raw leaves it as it was, for callers that write every byte
 * they later read. Free with os_big_free and the same size. NULL on
 * failure. Thread-safe. */
#define OS_BIG_ALLOC ((size_t)64 << 10)
void *os_big_alloc(size_t bytes);
void *os_big_alloc_raw(size_t bytes);
void os_big_free(void *p, size_t bytes);
/* Unmap every pooled block, if the pool has not been drawn from for
 * idle_ns (0: now). */
void os_big_trim(uint64_t idle_ns);
size_t os_big_pooled(void); /* bytes the pool holds */
int os_lock_exclusive(int fd);                        /* non-blocking; -EWOULDBLOCK if held */
int os_lock_shared(int fd);                           /* non-blocking; -EWOULDBLOCK if held */
int os_read_file(const char *path, void **buf, size_t *len); /* whole file, malloc'd */
int os_path_exists(const char *path);                 /* 1 yes, 0 no */

/* Sleep while *word == seen, for at most timeout_ns (0: no limit); returns
 * at once if it differs and may return spuriously. os_wake_all wakes every
 * thread sleeping on word. Private futexes: the word must not be shared
 * between processes. */
void os_wait_while(const atomic_uint *word, unsigned seen, uint64_t timeout_ns);
void os_wake_all(const atomic_uint *word);

#endif
