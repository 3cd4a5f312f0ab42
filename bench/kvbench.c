/*
 * kvbench.c — KyroDB against a sorted array, in one run, on one thread.
 *
 * N distinct random uint64 keys (splitmix64, fixed seed) with V-byte values
 * go into a fresh database in a temporary directory (KV_SYNC_OFF, no
 * automatic snapshot) in random order; kv_rebuild_index folds them into
 * the learned index; then, timed separately: gets of every key in another
 * random order (each value checked), gets of N absent keys, and S scans of
 * 100 keys from a random present key. The baseline is a plain sorted array
 * of the same keys and values searched by binary search, doing the same
 * work per operation (copy and check the value; walk 100 entries). Each row
 * prints ops/s and KyroDB / baseline; then the index fields of kv_stats,
 * taken right after the present-key gets.
 *
 *   kvbench [-n N] [-v BYTES] [-s SCANS] [-d DIR] [--pad K] [--csv]
 *
 * -n keys (default 2000000), -v value size (default 16), -s scans
 * (default N / 20), -d parent of the temporary database directory (default
 * $TMPDIR or /tmp), --pad K (1 to 256) K one-byte NOPs after each
 * present get of both KyroDB and the baseline, --csv one header line and
 * one data line.
 *
 * --pad is a probe of the CPU's window, not a workload: a get that waits on
 * memory can overlap with the next get only while the instructions between
 * them fit in the reorder buffer, and padding shows how close to that limit
 * the present-key loop runs (a loop that already overlaps nothing loses
 * nothing to the padding).
 *
 * Exit status 1 if any operation fails or returns a wrong value.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"
#include "kyro.h"

#define SCAN_LEN 100

struct row {
    const char *name; /* table label */
    const char *id;   /* CSV column prefix */
    uint64_t ops;
    double secs;      /* KyroDB */
    double base_secs; /* baseline; 0 if there is none */
};

static double rate(uint64_t ops, double secs) { return secs > 0 ? (double)ops / secs : 0; }

/* A run of PAD_MAX one-byte NOPs and a return: a call PAD_MAX - K bytes
 * in runs the last K of them. x86-64 only (elsewhere --pad is refused). */
#define PAD_MAX 256
#if defined(__x86_64__)
#define PAD_STR(x) #x
#define PAD_REPT(x) PAD_STR(x)
__asm__(".pushsection .text\n"
        ".p2align 6\n"
        "kvbench_nops:\n"
        ".rept " PAD_REPT(PAD_MAX) "\n\tnop\n.endr\n"
        "\tret\n"
        ".popsection\n");
extern const unsigned char kvbench_nops[];
#define PAD_ENTRY(k) ((void (*)(void))(uintptr_t)(kvbench_nops + (PAD_MAX - (k))))
#else
#define PAD_ENTRY(k) ((void (*)(void))NULL)
#endif

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [-n KEYS] [-v VALUE_BYTES] [-s SCANS] [-d DIR] [--pad 1-256] [--csv]\n",
            prog);
    exit(2);
}

static uint64_t parse_num(const char *prog, const char *s)
{
    uint64_t v;
    if (!parse_u64(s, &v))
        usage(prog);
    return v;
}

#define FAIL(...) do { fprintf(stderr, "kvbench: " __VA_ARGS__); fputc('\n', stderr); goto fail; } while (0)

int main(int argc, char **argv)
{
    size_t n = 2000000, vsize = 16, nscan = 0;
    uint64_t pad = 0;
    void (*pad_fn)(void) = NULL;
    int csv = 0;
    const char *parent = getenv("TMPDIR");
    char dir[4096];
    uint64_t *keys = NULL, *sorted = NULL, *order = NULL, *absent = NULL;
    unsigned char *values = NULL, *val = NULL, *buf = NULL;
    kv_db *db = NULL;
    kv_options opts;
    kv_stats st;
    struct row rows[5];
    int nrows = 0, rc, status = 1, have_dir = 0;
    uint64_t seed = 42, sink = 0;
    double t0, t_rebuild;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0)
            n = (size_t)parse_num(argv[0], argv[++i]);
        else if (strcmp(argv[i], "-v") == 0)
            vsize = (size_t)parse_num(argv[0], argv[++i]);
        else if (strcmp(argv[i], "-s") == 0)
            nscan = (size_t)parse_num(argv[0], argv[++i]);
        else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc)
            parent = argv[++i];
        else if (strcmp(argv[i], "--pad") == 0) {
            pad = parse_num(argv[0], argv[++i]);
            if (pad == 0 || pad > PAD_MAX || (pad_fn = PAD_ENTRY(pad)) == NULL)
                usage(argv[0]);
        } else if (strcmp(argv[i], "--csv") == 0)
            csv = 1;
        else
            usage(argv[0]);
    }
    if (n == 0 || vsize > KV_MAX_VALUE)
        usage(argv[0]);
    if (nscan == 0)
        nscan = n / 20 ? n / 20 : 1;
    if (parent == NULL || *parent == '\0')
        parent = "/tmp";

    keys = malloc(n * sizeof *keys);
    sorted = malloc(n * sizeof *sorted);
    order = malloc(n * sizeof *order);
    absent = malloc(n * sizeof *absent);
    values = malloc(n * vsize + 1);
    val = malloc(vsize + 1);
    buf = malloc(vsize + 1);
    if (!keys || !sorted || !order || !absent || !values || !val || !buf)
        FAIL("out of memory for %zu keys", n);

    /* N distinct keys: draw, sort, redraw the duplicates (practically never). */
    for (size_t i = 0; i < n; i++)
        keys[i] = splitmix64(&seed);
    for (;;) {
        size_t dups = 0;
        memcpy(sorted, keys, n * sizeof *keys);
        qsort(sorted, n, sizeof *sorted, cmp_u64);
        for (size_t i = 1; i < n; i++) {
            if (sorted[i] == sorted[i - 1]) {
                for (size_t j = 0; j < n; j++)
                    if (keys[j] == sorted[i]) {
                        keys[j] = splitmix64(&seed);
                        break;
                    }
                dups++;
            }
        }
        if (dups == 0)
            break;
    }
    for (size_t i = 0; i < n; i++)
        fill_value(sorted[i], values + i * vsize, vsize);
    memcpy(order, keys, n * sizeof *keys);
    shuffle(order, n, 7);
    for (size_t i = 0; i < n; i++) {
        uint64_t k;
        do {
            k = splitmix64(&seed);
        } while (lower_bound(sorted, n, k) < n && sorted[lower_bound(sorted, n, k)] == k);
        absent[i] = k;
    }

    snprintf(dir, sizeof dir, "%s/kvbench-XXXXXX", parent);
    if (mkdtemp(dir) == NULL)
        FAIL("mkdtemp %s failed", dir);
    have_dir = 1;
    kv_options_init(&opts);
    opts.flags = KV_CREATE;
    opts.sync = KV_SYNC_OFF;
    /* No automatic snapshot. At 100-byte values the puts' log ends just
     * past the default 256 MiB, so one would start in the background as
     * the puts finish, and where it lands would decide what is measured:
     * its work inside the rebuild's time (which waits for it) or beside
     * the gets, and the gets reading the base from the heap or, once it
     * is done, from the snapshot's mapping. */
    opts.wal_max_bytes = 0;
    if ((rc = kv_open(dir, &opts, &db)) != KV_OK)
        FAIL("kv_open %s: %s", dir, kv_strerror(rc));

    /* Puts in random (generation) order. */
    t0 = now();
    for (size_t i = 0; i < n; i++) {
        fill_value(keys[i], val, vsize);
        if ((rc = kv_put(db, keys[i], val, vsize)) != KV_OK)
            FAIL("kv_put: %s", kv_strerror(rc));
    }
    rows[nrows++] = (struct row){"put random", "put", n, now() - t0, 0};

    t0 = now();
    if ((rc = kv_rebuild_index(db)) != KV_OK)
        FAIL("kv_rebuild_index: %s", kv_strerror(rc));
    t_rebuild = now() - t0;
    rows[nrows++] = (struct row){"rebuild_index", "rebuild", 1, t_rebuild, 0};

    /* Present keys, in an order unrelated to the insertion order. */
    struct row *r = &rows[nrows++];
    *r = (struct row){"get present", "get", n, 0, 0};
    t0 = now();
    for (size_t i = 0; i < n; i++) {
        size_t len;
        if ((rc = kv_get(db, order[i], buf, vsize, &len)) != KV_OK)
            FAIL("kv_get %llu: %s", (unsigned long long)order[i], kv_strerror(rc));
        fill_value(order[i], val, vsize);
        if (len != vsize || memcmp(buf, val, vsize) != 0)
            FAIL("kv_get %llu: wrong value", (unsigned long long)order[i]);
        if (pad_fn)
            pad_fn();
    }
    r->secs = now() - t0;
    if ((rc = kv_stats_get(db, &st)) != KV_OK)
        FAIL("kv_stats_get: %s", kv_strerror(rc));
    t0 = now();
    for (size_t i = 0; i < n; i++) {
        size_t pos = lower_bound(sorted, n, order[i]);
        if (pos == n || sorted[pos] != order[i])
            FAIL("baseline lost key %llu", (unsigned long long)order[i]);
        memcpy(buf, values + pos * vsize, vsize);
        fill_value(order[i], val, vsize);
        if (memcmp(buf, val, vsize) != 0)
            FAIL("baseline: wrong value");
        if (pad_fn)
            pad_fn();
    }
    r->base_secs = now() - t0;

    r = &rows[nrows++];
    *r = (struct row){"get absent", "get_absent", n, 0, 0};
    t0 = now();
    for (size_t i = 0; i < n; i++) {
        size_t len;
        if ((rc = kv_get(db, absent[i], buf, vsize, &len)) != KV_NOTFOUND)
            FAIL("kv_get absent %llu: %s", (unsigned long long)absent[i], kv_strerror(rc));
    }
    r->secs = now() - t0;
    t0 = now();
    for (size_t i = 0; i < n; i++) {
        size_t pos = lower_bound(sorted, n, absent[i]);
        if (pos < n && sorted[pos] == absent[i])
            FAIL("baseline found absent key");
    }
    r->base_secs = now() - t0;

    /* Scans of up to 100 keys from a random present key to the top. */
    r = &rows[nrows++];
    *r = (struct row){"scan 100", "scan100", nscan, 0, 0};
    t0 = now();
    for (size_t i = 0; i < nscan; i++) {
        kv_iter *it;
        uint64_t k;
        const void *v;
        size_t len;
        int got = 0;
        if ((rc = kv_iter_open(db, order[i % n], UINT64_MAX, &it)) != KV_OK)
            FAIL("kv_iter_open: %s", kv_strerror(rc));
        while (got < SCAN_LEN && (rc = kv_iter_next(it, &k, &v, &len)) == KV_OK) {
            sink += k + len + (len ? *(const unsigned char *)v : 0);
            got++;
        }
        kv_iter_close(it);
        if (got < SCAN_LEN && rc != KV_NOTFOUND)
            FAIL("kv_iter_next: %s", kv_strerror(rc));
    }
    r->secs = now() - t0;
    t0 = now();
    for (size_t i = 0; i < nscan; i++) {
        size_t pos = lower_bound(sorted, n, order[i % n]);
        for (int got = 0; got < SCAN_LEN && pos < n; got++, pos++)
            sink -= sorted[pos] + vsize + (vsize ? values[pos * vsize] : 0);
    }
    r->base_secs = now() - t0;
    if (sink != 0)
        FAIL("scan: KyroDB and the baseline saw different entries");

    if (st.keys != n)
        FAIL("kv_stats keys = %llu, expected %zu", (unsigned long long)st.keys, n);

    if (csv) {
        printf("n,value_bytes,scans");
        for (int i = 0; i < nrows; i++)
            printf(",%s_s,%s_ops_s,%s_baseline_ops_s,%s_ratio", rows[i].id, rows[i].id, rows[i].id,
                   rows[i].id);
        printf(",index_models,index_max_error,index_avg_probe,index_fallbacks,memory_bytes,simd,pad\n");
        printf("%zu,%zu,%zu", n, vsize, nscan);
        for (int i = 0; i < nrows; i++) {
            double kr = rate(rows[i].ops, rows[i].secs), br = rate(rows[i].ops, rows[i].base_secs);
            printf(",%.6f,%.0f", rows[i].secs, kr);
            if (br > 0)
                printf(",%.0f,%.3f", br, kr / br);
            else
                printf(",,");
        }
        printf(",%llu,%llu,%.3f,%llu,%llu,%s,%llu\n", (unsigned long long)st.index_models,
               (unsigned long long)st.index_max_error, st.index_avg_probe,
               (unsigned long long)st.index_fallbacks, (unsigned long long)st.memory_bytes,
               st.simd ? st.simd : "", (unsigned long long)pad);
    } else {
        printf("kvbench: %zu keys, %zu-byte values, %zu scans of %d, KV_SYNC_OFF, %s\n", n, vsize,
               nscan, SCAN_LEN, dir);
        if (pad)
            printf("--pad %llu: %llu NOPs after each present get, KyroDB and baseline alike\n",
                   (unsigned long long)pad, (unsigned long long)pad);
        printf("%-14s %10s %9s %14s %14s %8s\n", "op", "ops", "seconds", "KyroDB ops/s",
               "sorted array", "ratio");
        for (int i = 0; i < nrows; i++) {
            double kr = rate(rows[i].ops, rows[i].secs), br = rate(rows[i].ops, rows[i].base_secs);
            printf("%-14s %10llu %9.3f ", rows[i].name, (unsigned long long)rows[i].ops,
                   rows[i].secs);
            if (rows[i].ops > 1)
                printf("%14.0f ", kr);
            else
                printf("%14s ", "-");
            if (br > 0)
                printf("%14.0f %8.2f\n", br, kr / br);
            else
                printf("%14s %8s\n", "-", "-");
        }
        printf("index_models %llu, index_max_error %llu, index_avg_probe %.2f, "
               "index_fallbacks %llu, memory_bytes %llu, simd %s\n",
               (unsigned long long)st.index_models, (unsigned long long)st.index_max_error,
               st.index_avg_probe, (unsigned long long)st.index_fallbacks,
               (unsigned long long)st.memory_bytes, st.simd ? st.simd : "?");
    }
    status = 0;
fail:
    if (db && (rc = kv_close(db)) != KV_OK) {
        fprintf(stderr, "kvbench: kv_close: %s\n", kv_strerror(rc));
        status = 1;
    }
    if (have_dir)
        remove_dir(dir);
    free(keys);
    free(sorted);
    free(order);
    free(absent);
    free(values);
    free(val);
    free(buf);
    return status;
}
