/*
 * walsync.c — what one durable log write costs, by how the file was grown.
 *
 * Each round writes the same sequence of records, each followed by
 * fdatasync, at the end of a log file in three files side by side:
 *
 *   append      every write extends the file (the size changes each time)
 *   fallocate   the file was grown with fallocate(2) first: unwritten blocks
 *   zeroed      the file was grown with written zeros first (KyroDB's WAL)
 *
 * The files take turns record by record, so a change in the disk's speed
 * lands on all three. A write + fdatasync that reaches a 4 KiB block no
 * earlier write touched is counted apart from one that stays in blocks
 * already written: on ext4 the former must also commit an unwritten
 * block's conversion (fallocate) or a new size and block (append).
 *
 *   walsync [-d DIR] [-n RECORDS] [-s BYTES]
 *
 * -d where the files go (default build/bench-data), -n records per file
 * (default 3000), -s bytes per write (default 1088: a group of eight
 * 100-byte puts in KyroDB's WAL). Prints the mean latency per class and
 * file, and each file's mean over all writes relative to zeroed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { APPEND, FALLOC, ZEROED, KINDS };
static const char *const kind_name[KINDS] = {"append", "fallocate", "zeroed"};

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int die(const char *what, const char *path)
{
    fprintf(stderr, "walsync: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    const char *dir = "build/bench-data";
    long n = 3000, size = 1088;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-d") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            n = atol(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc)
            size = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: walsync [-d DIR] [-n RECORDS] [-s BYTES]\n");
            return 2;
        }
    }
    if (n < 1 || size < 1 || size > (1 << 20)) {
        fprintf(stderr, "walsync: need -n >= 1 and 1 <= -s <= 1048576\n");
        return 2;
    }
    mkdir(dir, 0755);
    const off_t total = (off_t)n * size;
    char *rec = malloc((size_t)size);
    char *zeros = calloc(1, 1 << 20);
    if (!rec || !zeros)
        return die("out of memory for", "buffers");
    memset(rec, 0x5a, (size_t)size);

    char path[KINDS][4096];
    int fd[KINDS];
    for (int k = 0; k < KINDS; k++) {
        snprintf(path[k], sizeof path[k], "%s/walsync-%s-%d", dir, kind_name[k], (int)getpid());
        fd[k] = open(path[k], O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd[k] < 0)
            return die("open", path[k]);
        if (k == FALLOC && fallocate(fd[k], 0, 0, total) != 0)
            return die("fallocate", path[k]);
        for (off_t off = 0; k == ZEROED && off < total; off += 1 << 20) {
            size_t len = total - off < (1 << 20) ? (size_t)(total - off) : (size_t)1 << 20;
            if (pwrite(fd[k], zeros, len, off) != (ssize_t)len)
                return die("zero-fill", path[k]);
        }
        if (fsync(fd[k]) != 0)
            return die("fsync", path[k]);
    }

    double sum[KINDS][2] = {{0}};
    long count[KINDS][2] = {{0}};
    for (long i = 0; i < n; i++) {
        off_t off = (off_t)i * size;
        /* A new block: the write reaches past the last 4 KiB block that
         * earlier writes touched. */
        int fresh = i == 0 || (off + size - 1) / 4096 > (off - 1) / 4096;
        for (int k = 0; k < KINDS; k++) {
            double t0 = now_us();
            if (pwrite(fd[k], rec, (size_t)size, off) != (ssize_t)size)
                return die("write", path[k]);
            if (fdatasync(fd[k]) != 0)
                return die("fdatasync", path[k]);
            sum[k][fresh] += now_us() - t0;
            count[k][fresh]++;
        }
    }
    for (int k = 0; k < KINDS; k++) {
        close(fd[k]);
        unlink(path[k]);
    }

    printf("%ld writes of %ld bytes + fdatasync per file, files taking turns, in %s\n", n, size,
           dir);
    printf("%-10s %22s %22s %12s %10s\n", "file", "new 4 KiB block (us)", "same blocks (us)",
           "all (us)", "/ zeroed");
    double all[KINDS];
    for (int k = 0; k < KINDS; k++)
        all[k] = (sum[k][0] + sum[k][1]) / (double)n;
    for (int k = 0; k < KINDS; k++) {
        printf("%-10s %12.1f (%6ld) %12.1f (%6ld) %12.1f %10.2f\n", kind_name[k],
               count[k][1] ? sum[k][1] / (double)count[k][1] : 0.0, count[k][1],
               count[k][0] ? sum[k][0] / (double)count[k][0] : 0.0, count[k][0], all[k],
               all[k] / all[ZEROED]);
    }
    free(rec);
    free(zeros);
    return 0;
}
