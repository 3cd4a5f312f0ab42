/*
 * getmany.c — kv_view_get_many against a loop of kv_view_get on the same
 * view, in one run, on one thread.
 *
 * N random uint64 keys with V-byte values go into a fresh database in a
 * temporary directory (KV_SYNC_OFF), and kv_rebuild_index folds them into
 * the learned index. Then, on one view, R rounds each of: a kv_view_get
 * per key, and kv_view_get_many over batches of B keys for each B listed,
 * all over the same random order of the present keys, then the same again
 * for N absent keys. Every answer is checked: a present key's value
 * against the pattern it was written with (so each variant reads the value
 * bytes), an absent key's status. The variants alternate within a round,
 * so a slow spell of the host falls on all of them; each reports its best
 * round, and the ratio to the loop of kv_view_get.
 *
 *   getmany [-n N] [-v BYTES] [-r ROUNDS] [-d DIR] [B ...]
 *
 * -n keys (default 2000000), -v value size (default 16), -r rounds
 * (default 3), -d parent of the temporary database directory (default
 * $TMPDIR or /tmp), batch sizes (default 4 16 64 256).
 *
 * The keys are consecutive outputs of splitmix64, which are distinct (its
 * output mix is a bijection of a state that only steps forward), and the
 * absent ones are the outputs after them.
 *
 * Exit status 1 if any operation fails or returns a wrong answer.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"
#include "kyro.h"

#define MAX_SIZES 8

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [-n KEYS] [-v VALUE_BYTES] [-r ROUNDS] [-d DIR] [BATCH ...]\n",
            prog);
    exit(2);
}

/* A decimal argument of at least min. */
static size_t arg_num(const char *prog, const char *s, uint64_t min)
{
    uint64_t v;
    if (!parse_u64(s, &v) || v < min || v > SIZE_MAX / 2)
        usage(prog);
    return (size_t)v;
}

/* One pass over keys: batch 0 is a kv_view_get per key, else
 * kv_view_get_many over batches of that many. Returns the seconds taken,
 * or a negative number after printing the first wrong answer. */
static double pass(kv_view *view, const uint64_t *keys, size_t n, size_t batch, size_t vsize,
                   int present, const void **vals, size_t *lens, int *rcs, unsigned char *expect)
{
    double t0 = now();
    size_t step = batch ? batch : 1;
    for (size_t at = 0; at < n; at += step) {
        size_t cnt = n - at < step ? n - at : step;
        int rc = KV_OK;
        if (batch)
            rc = kv_view_get_many(view, cnt, keys + at, vals, lens, rcs);
        else
            rcs[0] = kv_view_get(view, keys[at], &vals[0], &lens[0]);
        if (rc != KV_OK) {
            fprintf(stderr, "getmany: kv_view_get_many: %s\n", kv_strerror(rc));
            return -1;
        }
        for (size_t i = 0; i < cnt; i++) {
            uint64_t key = keys[at + i];
            int ok = rcs[i] == (present ? KV_OK : KV_NOTFOUND);
            if (ok && present) {
                fill_value(key, expect, vsize);
                ok = lens[i] == vsize && (vsize == 0 || memcmp(vals[i], expect, vsize) == 0);
            }
            if (!ok) {
                fprintf(stderr, "getmany: batch %zu, key %llu: %s%s\n", batch,
                        (unsigned long long)key, kv_strerror(rcs[i]),
                        rcs[i] == KV_OK && present ? ", wrong value" : "");
                return -1;
            }
        }
    }
    return now() - t0;
}

int main(int argc, char **argv)
{
    size_t n = 2000000, vsize = 16, rounds = 3, sizes[MAX_SIZES + 1] = {0}, nsizes = 1;
    const char *parent = getenv("TMPDIR");
    char dir[4096];
    int status = 1, rc;
    kv_db *db = NULL;
    kv_view *view = NULL;
    kv_options opts;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            n = arg_num(argv[0], argv[++i], 1);
        else if (strcmp(argv[i], "-v") == 0 && i + 1 < argc)
            vsize = arg_num(argv[0], argv[++i], 0);
        else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc)
            rounds = arg_num(argv[0], argv[++i], 1);
        else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc)
            parent = argv[++i];
        else if (nsizes <= MAX_SIZES && argv[i][0] != '-')
            sizes[nsizes++] = arg_num(argv[0], argv[i], 1);
        else
            usage(argv[0]);
    }
    if (nsizes == 1) {
        static const size_t dflt[] = {4, 16, 64, 256};
        for (size_t i = 0; i < sizeof dflt / sizeof dflt[0]; i++)
            sizes[nsizes++] = dflt[i];
    }
    if (vsize > KV_MAX_VALUE)
        usage(argv[0]);
    if (parent == NULL || *parent == '\0')
        parent = "/tmp";

    size_t maxb = 1;
    for (size_t s = 0; s < nsizes; s++)
        maxb = sizes[s] > maxb ? sizes[s] : maxb;
    uint64_t *present = malloc(n * sizeof *present), *absent = malloc(n * sizeof *absent);
    const void **vals = malloc(maxb * sizeof *vals);
    size_t *lens = malloc(maxb * sizeof *lens);
    int *rcs = malloc(maxb * sizeof *rcs);
    unsigned char *val = malloc(vsize + 1);
    double *best = malloc(2 * nsizes * sizeof *best);
    if (!present || !absent || !vals || !lens || !rcs || !val || !best) {
        fprintf(stderr, "getmany: out of memory for %zu keys\n", n);
        goto out;
    }
    uint64_t seed = 42;
    for (size_t i = 0; i < n; i++)
        present[i] = splitmix64(&seed);
    for (size_t i = 0; i < n; i++)
        absent[i] = splitmix64(&seed);

    snprintf(dir, sizeof dir, "%s/getmany-XXXXXX", parent);
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "getmany: mkdtemp %s failed\n", dir);
        goto out;
    }
    kv_options_init(&opts);
    opts.flags = KV_CREATE;
    opts.sync = KV_SYNC_OFF;
    opts.wal_max_bytes = 0; /* no snapshot starting beside the gets */
    if ((rc = kv_open(dir, &opts, &db)) != KV_OK) {
        fprintf(stderr, "getmany: kv_open %s: %s\n", dir, kv_strerror(rc));
        goto out_dir;
    }
    for (size_t i = 0; i < n; i++) {
        fill_value(present[i], val, vsize);
        if ((rc = kv_put(db, present[i], val, vsize)) != KV_OK) {
            fprintf(stderr, "getmany: kv_put: %s\n", kv_strerror(rc));
            goto out_db;
        }
    }
    if ((rc = kv_rebuild_index(db)) != KV_OK || (rc = kv_view_open(db, &view)) != KV_OK) {
        fprintf(stderr, "getmany: rebuild or view: %s\n", kv_strerror(rc));
        goto out_db;
    }
    shuffle(present, n, 7);

    for (size_t s = 0; s < 2 * nsizes; s++)
        best[s] = 0;
    for (size_t r = 0; r < rounds; r++) {
        for (int p = 0; p < 2; p++) {
            for (size_t s = 0; s < nsizes; s++) {
                double t = pass(view, p ? absent : present, n, sizes[s], vsize, !p, vals, lens, rcs,
                                val);
                if (t < 0)
                    goto out_view;
                double *b = &best[(size_t)p * nsizes + s];
                if (*b == 0 || t < *b)
                    *b = t;
            }
        }
    }

    printf("getmany: %zu keys, %zu-byte values, best of %zu rounds, one view, %s\n", n, vsize,
           rounds, dir);
    printf("%-8s %-22s %14s %8s\n", "keys", "call", "ops/s", "ratio");
    for (int p = 0; p < 2; p++) {
        for (size_t s = 0; s < nsizes; s++) {
            char call[48];
            if (sizes[s])
                snprintf(call, sizeof call, "get_many, batch %zu", sizes[s]);
            else
                snprintf(call, sizeof call, "kv_view_get");
            double t = best[(size_t)p * nsizes + s], t1 = best[(size_t)p * nsizes];
            printf("%-8s %-22s %14.0f %8.2f\n", p ? "absent" : "present", call, (double)n / t,
                   t1 / t);
        }
    }
    status = 0;
out_view:
    kv_view_close(view);
out_db:
    if ((rc = kv_close(db)) != KV_OK) {
        fprintf(stderr, "getmany: kv_close: %s\n", kv_strerror(rc));
        status = 1;
    }
out_dir:
    remove_dir(dir);
out:
    free(present);
    free(absent);
    free(vals);
    free(lens);
    free(rcs);
    free(val);
    free(best);
    return status;
}
