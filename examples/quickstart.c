/* quickstart.c — open, put, get, batch, scan, stats, close; every status checked. */
#include <stdio.h>
#include <string.h>
#include "kyro.h"

#define CHECK(call) do { int rc_ = (call); if (rc_ != KV_OK) { \
    fprintf(stderr, "%s: %s\n", #call, kv_strerror(rc_)); goto fail; } } while (0)

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "./data";
    kv_db *db = NULL;
    kv_batch *b = NULL;
    kv_iter *it = NULL;
    kv_options opts;
    kv_stats st;
    char buf[64];
    const void *val;
    size_t len;
    uint64_t key;
    int rc;

    kv_options_init(&opts);
    opts.flags = KV_CREATE;
    CHECK(kv_open(dir, &opts, &db));
    CHECK(kv_put(db, 1, "one", 3));
    CHECK(kv_put(db, 2, "two", 3));
    CHECK(kv_put(db, UINT64_MAX, "max", 3));
    for (int i = 0; i < 3; i++) {
        key = i < 2 ? (uint64_t)i + 1 : UINT64_MAX;
        CHECK(kv_get(db, key, buf, sizeof buf, &len));
        printf("get %llu = %.*s\n", (unsigned long long)key, (int)len, buf);
    }
    CHECK(kv_batch_new(&b)); /* all or nothing: 3 and 4 appear, 2 goes, together */
    CHECK(kv_batch_put(b, 3, "three", 5));
    CHECK(kv_batch_put(b, 4, "four", 4));
    CHECK(kv_batch_delete(b, 2));
    CHECK(kv_batch_commit(db, b));
    rc = kv_get(db, 2, buf, sizeof buf, &len);
    printf("get 2 after batch: %s\n", kv_strerror(rc)); /* KV_NOTFOUND is expected */
    CHECK(kv_iter_open(db, 0, 100, &it)); /* keys in [0, 100], ascending */
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK)
        printf("scan %llu = %.*s\n", (unsigned long long)key, (int)len, (const char *)val);
    if (rc != KV_NOTFOUND) { fprintf(stderr, "kv_iter_next: %s\n", kv_strerror(rc)); goto fail; }
    kv_iter_close(it);
    it = NULL;
    CHECK(kv_stats_get(db, &st));
    printf("keys %llu, puts %llu, memory %llu B, probe kernel %s\n", (unsigned long long)st.keys,
           (unsigned long long)st.puts, (unsigned long long)st.memory_bytes, st.simd);
    kv_batch_free(b);
    rc = kv_close(db);
    if (rc != KV_OK) { fprintf(stderr, "kv_close: %s\n", kv_strerror(rc)); return 1; }
    return 0;
fail:
    if (it)
        kv_iter_close(it);
    kv_batch_free(b);
    kv_close(db);
    return 1;
}
