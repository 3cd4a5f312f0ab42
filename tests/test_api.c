/*
 * test_api.c — the public contract (API.md), call by call: versions, status
 * text, option defaults, open/close and locking, argument checks, value size
 * limits, point operations, batches, views, iterators, read-only handles,
 * statistics and durability across a clean close in every sync mode.
 *
 * Only include/kyro.h is used. Every test gets its own directory under /tmp.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kyro.h"
#include "testutil.h"

/* ---- fixture ------------------------------------------------------------- */

static char g_root[TU_PATH]; /* the test's temporary directory */
static char g_dir[TU_PATH];  /* g_root/db: the database directory */

static int setup(void **state)
{
    (void)state;
    if (tu_mkdtemp(g_root, "api") != 0)
        return -1;
    tu_join(g_dir, g_root, "db");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_rmrf(g_root);
}

static kv_db *open_opts(const kv_options *o)
{
    kv_db *db = NULL;
    TU_OK(kv_open(g_dir, o, &db));
    assert_non_null(db);
    return db;
}

static kv_db *open_mode(uint32_t flags, kv_sync_mode sync)
{
    kv_options o;
    kv_options_init(&o);
    o.flags = flags;
    o.sync = sync;
    return open_opts(&o);
}

static kv_db *open_default(void)
{
    return open_mode(KV_CREATE, KV_SYNC_FULL);
}

/* Put the value of (key, tag) with len bytes; returns the status. */
static int put_val(kv_db *db, uint64_t key, uint64_t tag, size_t len)
{
    uint8_t *v = tu_val_new(len, key, tag);
    int rc = kv_put(db, key, v, len);
    free(v);
    return rc;
}

static int batch_put_val(kv_batch *b, uint64_t key, uint64_t tag, size_t len)
{
    uint8_t *v = tu_val_new(len, key, tag);
    int rc = kv_batch_put(b, key, v, len);
    free(v);
    return rc;
}

/* key must hold exactly the value of (key, tag) with len bytes, by kv_get
 * and by kv_get_alloc. */
static void expect_val_at(kv_db *db, uint64_t key, uint64_t tag, size_t len, int line)
{
    size_t cap = len + 16;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    size_t got = (size_t)-1;
    int rc = kv_get(db, key, buf, cap, &got);
    if (rc != KV_OK)
        fail_msg("line %d: kv_get(%llu) = %d (%s), expected a %zu-byte value", line,
                 (unsigned long long)key, rc, kv_strerror(rc), len);
    if (!tu_val_matches(buf, got, key, tag, len))
        fail_msg("line %d: kv_get(%llu): wrong value (%zu bytes, expected tag %llu, %zu bytes)",
                 line, (unsigned long long)key, got, (unsigned long long)tag, len);
    free(buf);
    void *p = NULL;
    got = (size_t)-1;
    rc = kv_get_alloc(db, key, &p, &got);
    if (rc != KV_OK)
        fail_msg("line %d: kv_get_alloc(%llu) = %d (%s)", line, (unsigned long long)key, rc,
                 kv_strerror(rc));
    if (!p)
        fail_msg("line %d: kv_get_alloc(%llu) gave NULL on KV_OK", line, (unsigned long long)key);
    if (!tu_val_matches(p, got, key, tag, len))
        fail_msg("line %d: kv_get_alloc(%llu): wrong value", line, (unsigned long long)key);
    kv_free(p);
}
#define expect_val(db, key, tag, len) expect_val_at(db, key, tag, len, __LINE__)

static void expect_absent_at(kv_db *db, uint64_t key, int line)
{
    uint8_t buf[8];
    size_t len = 12345;
    int rc = kv_get(db, key, buf, sizeof buf, &len);
    if (rc != KV_NOTFOUND)
        fail_msg("line %d: kv_get(%llu) = %d (%s), expected KV_NOTFOUND", line,
                 (unsigned long long)key, rc, kv_strerror(rc));
    void *p = (void *)buf;
    rc = kv_get_alloc(db, key, &p, &len);
    if (rc != KV_NOTFOUND)
        fail_msg("line %d: kv_get_alloc(%llu) = %d (%s), expected KV_NOTFOUND", line,
                 (unsigned long long)key, rc, kv_strerror(rc));
}
#define expect_absent(db, key) expect_absent_at(db, key, __LINE__)

/* Drain it and compare with the entries of m in [lo, hi]; closes it. */
static void expect_iter_at(kv_iter *it, const tu_model *m, uint64_t lo, uint64_t hi, int line)
{
    size_t i = lo <= hi ? tu_model_lower(m, lo) : m->n;
    uint64_t key;
    const void *val;
    size_t len;
    int rc;
    size_t n = 0;
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        if (i >= m->n || m->e[i].key > hi)
            fail_msg("line %d: scan [%llu, %llu]: extra key %llu after %zu keys", line,
                     (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)key, n);
        if (key != m->e[i].key)
            fail_msg("line %d: scan [%llu, %llu]: key #%zu is %llu, expected %llu", line,
                     (unsigned long long)lo, (unsigned long long)hi, n, (unsigned long long)key,
                     (unsigned long long)m->e[i].key);
        if (!tu_val_matches(val, len, key, m->e[i].tag, m->e[i].len))
            fail_msg("line %d: scan: wrong value for key %llu", line, (unsigned long long)key);
        i++;
        n++;
    }
    if (rc != KV_NOTFOUND)
        fail_msg("line %d: kv_iter_next = %d (%s)", line, rc, kv_strerror(rc));
    if (i < m->n && m->e[i].key <= hi && lo <= hi)
        fail_msg("line %d: scan [%llu, %llu] stopped after %zu keys; key %llu missing", line,
                 (unsigned long long)lo, (unsigned long long)hi, n, (unsigned long long)m->e[i].key);
    /* Exhausted stays exhausted. */
    for (int k = 0; k < 3; k++) {
        rc = kv_iter_next(it, &key, &val, &len);
        if (rc != KV_NOTFOUND)
            fail_msg("line %d: kv_iter_next after the end = %d, expected KV_NOTFOUND", line, rc);
    }
    kv_iter_close(it);
}

static void expect_scan_at(kv_db *db, const tu_model *m, uint64_t lo, uint64_t hi, int line)
{
    kv_iter *it = NULL;
    TU_OK(kv_iter_open(db, lo, hi, &it));
    assert_non_null(it);
    expect_iter_at(it, m, lo, hi, line);
}
#define expect_scan(db, m, lo, hi) expect_scan_at(db, m, lo, hi, __LINE__)

static void expect_view_scan_at(kv_view *v, const tu_model *m, uint64_t lo, uint64_t hi, int line)
{
    kv_iter *it = NULL;
    TU_OK(kv_view_iter_open(v, lo, hi, &it));
    assert_non_null(it);
    expect_iter_at(it, m, lo, hi, line);
}
#define expect_view_scan(v, m, lo, hi) expect_view_scan_at(v, m, lo, hi, __LINE__)

/* Every key of m by kv_get, plus a full scan. */
static void expect_model_at(kv_db *db, const tu_model *m, int line)
{
    for (size_t i = 0; i < m->n; i++)
        expect_val_at(db, m->e[i].key, m->e[i].tag, m->e[i].len, line);
    expect_scan_at(db, m, 0, UINT64_MAX, line);
}
#define expect_model(db, m) expect_model_at(db, m, __LINE__)

/* ---- versions, status text, options ---------------------------------------- */

static void test_version(void **state)
{
    (void)state;
    assert_non_null(kv_version());
    assert_string_equal(kv_version(), KYRO_VERSION);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", KYRO_VERSION_MAJOR, KYRO_VERSION_MINOR,
             KYRO_VERSION_PATCH);
    assert_string_equal(KYRO_VERSION, want);
}

static void test_strerror(void **state)
{
    (void)state;
    const int codes[] = {KV_OK,      KV_NOTFOUND, KV_EINVAL,    KV_ENOMEM,
                         KV_EIO,     KV_ECORRUPT, KV_EBUSY,     KV_ETOOBIG,
                         KV_ERANGE,  KV_EREADONLY, KV_EVERSION};
    const size_t n = sizeof codes / sizeof codes[0];
    /* The numeric values are part of the ABI. */
    assert_int_equal(KV_OK, 0);
    assert_int_equal(KV_NOTFOUND, 1);
    assert_int_equal(KV_EINVAL, -1);
    assert_int_equal(KV_ENOMEM, -2);
    assert_int_equal(KV_EIO, -3);
    assert_int_equal(KV_ECORRUPT, -4);
    assert_int_equal(KV_EBUSY, -5);
    assert_int_equal(KV_ETOOBIG, -6);
    assert_int_equal(KV_ERANGE, -7);
    assert_int_equal(KV_EREADONLY, -8);
    assert_int_equal(KV_EVERSION, -9);
    assert_true(KV_MAX_VALUE == (size_t)64 << 20);

    const char *unknown = kv_strerror(12345);
    assert_non_null(unknown);
    assert_string_equal(unknown, "unknown error");
    assert_string_equal(kv_strerror(-10), "unknown error");
    assert_string_equal(kv_strerror(2), "unknown error");
    assert_string_equal(kv_strerror(-1000000), "unknown error");
    for (size_t i = 0; i < n; i++) {
        const char *s = kv_strerror(codes[i]);
        assert_non_null(s);
        if (s[0] == '\0' || strcmp(s, "unknown error") == 0)
            fail_msg("kv_strerror(%d) = \"%s\"", codes[i], s);
        /* Static text: the same pointer or at least the same text again. */
        assert_string_equal(s, kv_strerror(codes[i]));
        for (size_t j = 0; j < i; j++) {
            if (strcmp(s, kv_strerror(codes[j])) == 0)
                fail_msg("kv_strerror(%d) and kv_strerror(%d) are both \"%s\"", codes[i],
                         codes[j], s);
        }
    }
    assert_int_equal(kv_errno(NULL), 0);
    assert_int_equal(kv_write_status(NULL), KV_EINVAL);
}

static void test_options_init(void **state)
{
    (void)state;
    kv_options o;
    memset(&o, 0xAB, sizeof o);
    kv_options_init(&o);
    assert_int_equal(o.flags, KV_CREATE);
    assert_int_equal(o.sync, KV_SYNC_FULL);
    assert_int_equal(o.sync_interval_ms, 1000);
    assert_true(o.wal_max_bytes == (uint64_t)256 << 20);
    assert_int_equal(o.auto_snapshot_secs, 0);
    assert_true(o.rebuild_appends == 0);
    for (size_t i = 0; i < sizeof o.reserved / sizeof o.reserved[0]; i++)
        assert_int_equal(o.reserved[i], 0);
    assert_int_equal(KV_SYNC_FULL, 0);
    assert_int_equal(KV_SYNC_NORMAL, 1);
    assert_int_equal(KV_SYNC_OFF, 2);
    assert_int_equal(KV_CREATE, 1);
    assert_int_equal(KV_READONLY, 2);
    assert_int_equal(KV_RECOVER, 4);
}

/* ---- open and close ------------------------------------------------------ */

static void test_open_missing_dir(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.flags = 0;
    kv_db *db = (kv_db *)&o; /* must be reset to NULL */
    TU_RC(kv_open(g_dir, &o, &db), KV_NOTFOUND);
    assert_null(db);
    struct stat st;
    assert_int_not_equal(stat(g_dir, &st), 0); /* not created */

    o.flags = KV_READONLY;
    db = (kv_db *)&o;
    TU_RC(kv_open(g_dir, &o, &db), KV_NOTFOUND);
    assert_null(db);
    assert_int_not_equal(stat(g_dir, &st), 0);

    o.flags = KV_RECOVER;
    TU_RC(kv_open(g_dir, &o, &db), KV_NOTFOUND);
    assert_int_not_equal(stat(g_dir, &st), 0);

    /* KV_READONLY never creates anything, even with KV_CREATE. */
    o.flags = KV_READONLY | KV_CREATE;
    db = (kv_db *)&o;
    int rc = kv_open(g_dir, &o, &db);
    if (rc != KV_NOTFOUND && rc != KV_EINVAL)
        fail_msg("KV_READONLY | KV_CREATE on a missing directory = %d (%s)", rc, kv_strerror(rc));
    assert_null(db);
    assert_int_not_equal(stat(g_dir, &st), 0);

    /* With KV_CREATE (the default, also through opts == NULL) it is created. */
    TU_OK(kv_open(g_dir, NULL, &db));
    assert_non_null(db);
    assert_int_equal(stat(g_dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    TU_OK(put_val(db, 7, 1, 40));
    TU_OK(kv_close(db));

    /* Now it exists: opening without KV_CREATE works and sees the data. */
    db = open_mode(0, KV_SYNC_FULL);
    expect_val(db, 7, 1, 40);
    TU_OK(kv_close(db));
}

static void test_open_bad_options(void **state)
{
    (void)state;
    kv_options o;
    kv_db *db;

    kv_options_init(&o);
    o.sync = (kv_sync_mode)7;
    db = (kv_db *)&o;
    TU_RC(kv_open(g_dir, &o, &db), KV_EINVAL);
    assert_null(db);

    kv_options_init(&o);
    o.flags = KV_CREATE | 0x100u;
    TU_RC(kv_open(g_dir, &o, &db), KV_EINVAL);

    kv_options_init(&o);
    o.reserved[7] = 1;
    TU_RC(kv_open(g_dir, &o, &db), KV_EINVAL);

    /* And a good open afterwards is not disturbed by the failed ones. */
    kv_options_init(&o);
    TU_OK(kv_open(g_dir, &o, &db));
    TU_OK(kv_close(db));
}

/* Fork; the child opens dir with flags and exits with the status (as a byte). */
static int child_open_rc(const char *dir, uint32_t flags)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(30);
        kv_options o;
        kv_options_init(&o);
        o.flags = flags;
        kv_db *db = NULL;
        int rc = kv_open(dir, &o, &db);
        if (rc == KV_OK) {
            if (kv_close(db) != KV_OK)
                _exit(99);
        } else if (db != NULL) {
            _exit(98);
        }
        _exit(rc & 0xff);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st))
        fail_msg("child kv_open died with signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
    if (WEXITSTATUS(st) == 98)
        fail_msg("child kv_open failed but left *out non-NULL");
    if (WEXITSTATUS(st) == 99)
        fail_msg("child kv_close failed");
    return (int)(signed char)WEXITSTATUS(st);
}

static void test_ebusy_same_process(void **state)
{
    (void)state;
    kv_db *a = open_default();
    TU_OK(put_val(a, 1, 1, 30));
    kv_db *b = (kv_db *)&b;
    TU_RC(kv_open(g_dir, NULL, &b), KV_EBUSY);
    assert_null(b);
    kv_options o;
    kv_options_init(&o);
    o.flags = 0;
    TU_RC(kv_open(g_dir, &o, &b), KV_EBUSY);
    o.flags = KV_CREATE | KV_RECOVER;
    TU_RC(kv_open(g_dir, &o, &b), KV_EBUSY);
    /* The failed opens did not disturb the owner. */
    TU_OK(put_val(a, 2, 1, 30));
    expect_val(a, 1, 1, 30);
    TU_OK(kv_close(a));
    /* Closing releases the lock. */
    b = open_default();
    expect_val(b, 1, 1, 30);
    expect_val(b, 2, 1, 30);
    TU_OK(kv_close(b));
}

static void test_ebusy_other_process(void **state)
{
    (void)state;
    kv_db *a = open_default();
    TU_OK(put_val(a, 1, 1, 30));
    TU_RC(child_open_rc(g_dir, KV_CREATE), KV_EBUSY);
    TU_RC(child_open_rc(g_dir, 0), KV_EBUSY);
    TU_OK(kv_close(a));
    /* Released: another process may now open it. */
    TU_OK(child_open_rc(g_dir, KV_CREATE));
    a = open_default();
    expect_val(a, 1, 1, 30);
    TU_OK(kv_close(a));
}

static void test_close_null(void **state)
{
    (void)state;
    TU_OK(kv_close(NULL));
}

/* ---- argument checks ---------------------------------------------------- */

static void test_null_arguments(void **state)
{
    (void)state;
    kv_db *db = NULL;
    TU_RC(kv_open(NULL, NULL, &db), KV_EINVAL);
    TU_RC(kv_open(g_dir, NULL, NULL), KV_EINVAL);
    db = open_default();
    assert_int_equal(kv_errno(db), 0);
    TU_OK(put_val(db, 1, 1, 10));

    const char v[4] = "abc";
    uint8_t buf[64];
    size_t len = 0;
    void *p = NULL;

    TU_RC(kv_put(NULL, 1, v, 3), KV_EINVAL);
    TU_RC(kv_put(db, 1, NULL, 3), KV_EINVAL);
    expect_val(db, 1, 1, 10); /* unchanged */
    TU_OK(kv_put(db, 2, NULL, 0));
    TU_OK(kv_get(db, 2, buf, sizeof buf, &len));
    assert_int_equal(len, 0);

    TU_RC(kv_get(NULL, 1, buf, sizeof buf, &len), KV_EINVAL);
    TU_RC(kv_get(db, 1, buf, sizeof buf, NULL), KV_EINVAL);
    TU_RC(kv_get(db, 1, NULL, 16, &len), KV_EINVAL);
    TU_RC(kv_get_alloc(NULL, 1, &p, &len), KV_EINVAL);
    TU_RC(kv_get_alloc(db, 1, NULL, &len), KV_EINVAL);
    TU_RC(kv_get_alloc(db, 1, &p, NULL), KV_EINVAL);
    TU_RC(kv_delete(NULL, 1), KV_EINVAL);
    expect_val(db, 1, 1, 10);

    kv_batch *b = NULL;
    TU_RC(kv_batch_new(NULL), KV_EINVAL);
    TU_OK(kv_batch_new(&b));
    assert_non_null(b);
    TU_RC(kv_batch_put(NULL, 1, v, 3), KV_EINVAL);
    TU_RC(kv_batch_put(b, 1, NULL, 3), KV_EINVAL);
    TU_OK(kv_batch_put(b, 3, NULL, 0));
    TU_RC(kv_batch_delete(NULL, 1), KV_EINVAL);
    TU_RC(kv_batch_commit(NULL, b), KV_EINVAL);
    TU_RC(kv_batch_commit(db, NULL), KV_EINVAL);
    expect_absent(db, 3); /* the batch was never committed */
    kv_batch_clear(NULL);
    kv_batch_free(NULL);
    kv_batch_free(b);

    kv_view *vw = NULL;
    const void *vp;
    TU_RC(kv_view_open(NULL, &vw), KV_EINVAL);
    TU_RC(kv_view_open(db, NULL), KV_EINVAL);
    TU_OK(kv_view_open(db, &vw));
    assert_non_null(vw);
    TU_RC(kv_view_get(NULL, 1, &vp, &len), KV_EINVAL);
    TU_RC(kv_view_get(vw, 1, NULL, &len), KV_EINVAL);
    TU_RC(kv_view_get(vw, 1, &vp, NULL), KV_EINVAL);
    uint64_t many_keys[2] = {1, 3};
    const void *many_vals[2];
    size_t many_lens[2];
    int many_rcs[2] = {-1, -1};
    TU_RC(kv_view_get_many(NULL, 2, many_keys, many_vals, many_lens, many_rcs), KV_EINVAL);
    TU_RC(kv_view_get_many(vw, 2, NULL, many_vals, many_lens, many_rcs), KV_EINVAL);
    TU_RC(kv_view_get_many(vw, 2, many_keys, NULL, many_lens, many_rcs), KV_EINVAL);
    TU_RC(kv_view_get_many(vw, 2, many_keys, many_vals, NULL, many_rcs), KV_EINVAL);
    TU_RC(kv_view_get_many(vw, 2, many_keys, many_vals, many_lens, NULL), KV_EINVAL);
    assert_true(many_rcs[0] == -1 && many_rcs[1] == -1); /* nothing written */
    TU_RC(kv_view_get_many(NULL, 0, NULL, NULL, NULL, NULL), KV_EINVAL);
    TU_OK(kv_view_get_many(vw, 0, NULL, NULL, NULL, NULL));
    TU_OK(kv_view_get_many(vw, 2, many_keys, many_vals, many_lens, many_rcs));
    TU_RC(many_rcs[0], KV_OK);
    TU_RC(many_rcs[1], KV_NOTFOUND);
    for (int i = 0; i < 2; i++) {
        const void *one;
        size_t one_len;
        assert_int_equal(many_rcs[i], kv_view_get(vw, many_keys[i], &one, &one_len));
        if (many_rcs[i] == KV_OK)
            assert_true(many_lens[i] == one_len && many_vals[i] == one);
    }

    kv_iter *it = NULL;
    uint64_t key;
    TU_RC(kv_iter_open(NULL, 0, 10, &it), KV_EINVAL);
    TU_RC(kv_iter_open(db, 0, 10, NULL), KV_EINVAL);
    TU_RC(kv_view_iter_open(NULL, 0, 10, &it), KV_EINVAL);
    TU_RC(kv_view_iter_open(vw, 0, 10, NULL), KV_EINVAL);
    TU_OK(kv_view_iter_open(vw, 0, 10, &it));
    TU_RC(kv_iter_next(NULL, &key, &vp, &len), KV_EINVAL);
    TU_RC(kv_iter_next(it, NULL, &vp, &len), KV_EINVAL);
    TU_RC(kv_iter_next(it, &key, NULL, &len), KV_EINVAL);
    TU_RC(kv_iter_next(it, &key, &vp, NULL), KV_EINVAL);
    /* The rejected calls did not advance the iterator. */
    TU_OK(kv_iter_next(it, &key, &vp, &len));
    assert_true(key == 1);
    kv_iter_close(it);
    kv_view_close(vw);

    kv_stats st;
    TU_RC(kv_sync(NULL), KV_EINVAL);
    TU_RC(kv_snapshot(NULL), KV_EINVAL);
    TU_RC(kv_compact(NULL), KV_EINVAL);
    TU_RC(kv_rebuild_index(NULL), KV_EINVAL);
    TU_RC(kv_warmup(NULL), KV_EINVAL);
    TU_RC(kv_stats_get(NULL, &st), KV_EINVAL);
    TU_RC(kv_stats_get(db, NULL), KV_EINVAL);
    kv_free(NULL);
    assert_int_equal(kv_errno(db), 0);
    TU_OK(kv_close(db));
}

/* ---- values -------------------------------------------------------------- */

static void test_value_too_big(void **state)
{
    (void)state;
    kv_db *db = open_default();
    TU_OK(put_val(db, 5, 1, 100));
    /* A real buffer, so a library that reads it anyway does not crash. */
    uint8_t *big = calloc(1, KV_MAX_VALUE + 1);
    assert_non_null(big);
    TU_RC(kv_put(db, 5, big, KV_MAX_VALUE + 1), KV_ETOOBIG);
    TU_RC(kv_put(db, 6, big, KV_MAX_VALUE + 1), KV_ETOOBIG);
    TU_RC(kv_put(db, 6, big, SIZE_MAX), KV_ETOOBIG);
    expect_val(db, 5, 1, 100);
    expect_absent(db, 6);

    /* In a batch: refused when recorded, or the commit refuses the whole batch. */
    kv_batch *b;
    TU_OK(kv_batch_new(&b));
    TU_OK(batch_put_val(b, 7, 1, 50));
    int rc = kv_batch_put(b, 5, big, KV_MAX_VALUE + 1);
    if (rc == KV_OK) {
        TU_RC(kv_batch_commit(db, b), KV_ETOOBIG);
        expect_absent(db, 7);
    } else {
        TU_RC(rc, KV_ETOOBIG);
        TU_OK(kv_batch_commit(db, b));
        expect_val(db, 7, 1, 50);
    }
    expect_val(db, 5, 1, 100);
    kv_batch_free(b);
    free(big);
    TU_OK(kv_close(db));
    db = open_default();
    expect_val(db, 5, 1, 100);
    expect_absent(db, 6);
    TU_OK(kv_close(db));
}

static void test_value_max_size(void **state)
{
    (void)state;
    kv_db *db = open_default();
    const uint64_t key = 0x123456789ull;
    uint8_t *v = tu_val_new(KV_MAX_VALUE, key, 77);
    TU_OK(kv_put(db, key, v, KV_MAX_VALUE));
    TU_OK(put_val(db, key + 1, 1, 10)); /* a neighbour stays intact */
    uint8_t *buf = malloc(KV_MAX_VALUE);
    assert_non_null(buf);
    size_t len = 0;
    TU_RC(kv_get(db, key, buf, KV_MAX_VALUE - 1, &len), KV_ERANGE);
    assert_true(len == KV_MAX_VALUE);
    len = 0;
    TU_OK(kv_get(db, key, buf, KV_MAX_VALUE, &len));
    assert_true(len == KV_MAX_VALUE);
    assert_true(memcmp(buf, v, KV_MAX_VALUE) == 0);
    void *p = NULL;
    TU_OK(kv_get_alloc(db, key, &p, &len));
    assert_true(len == KV_MAX_VALUE);
    assert_true(memcmp(p, v, KV_MAX_VALUE) == 0);
    kv_free(p);
    expect_val(db, key + 1, 1, 10);
    TU_OK(kv_close(db));

    if (!tu_small()) {
        /* It survives a reopen and a snapshot. */
        db = open_default();
        memset(buf, 0, KV_MAX_VALUE);
        TU_OK(kv_get(db, key, buf, KV_MAX_VALUE, &len));
        assert_true(len == KV_MAX_VALUE && memcmp(buf, v, KV_MAX_VALUE) == 0);
        TU_OK(kv_snapshot(db));
        TU_OK(kv_close(db));
        db = open_default();
        memset(buf, 0, KV_MAX_VALUE);
        TU_OK(kv_get(db, key, buf, KV_MAX_VALUE, &len));
        assert_true(len == KV_MAX_VALUE && memcmp(buf, v, KV_MAX_VALUE) == 0);
        expect_val(db, key + 1, 1, 10);
        TU_OK(kv_close(db));
    }
    free(buf);
    free(v);
}

/* 0-byte values are present (not absent) everywhere, and survive. */
static void check_zero_len(kv_db *db)
{
    uint8_t buf[8] = {0};
    size_t len = 99;
    TU_OK(kv_get(db, 10, buf, sizeof buf, &len));
    assert_int_equal(len, 0);
    len = 99;
    TU_OK(kv_get(db, 10, NULL, 0, &len)); /* a 0-byte value fits in 0 bytes */
    assert_int_equal(len, 0);
    len = 99;
    TU_OK(kv_get(db, 11, NULL, 0, &len));
    assert_int_equal(len, 0);
    void *p = NULL;
    len = 99;
    TU_OK(kv_get_alloc(db, 10, &p, &len));
    assert_non_null(p);
    assert_int_equal(len, 0);
    kv_free(p);
    p = NULL;
    TU_OK(kv_get_alloc(db, 12, &p, &len));
    assert_non_null(p);
    assert_int_equal(len, 0);
    kv_free(p);
    expect_absent(db, 13);

    kv_view *v;
    TU_OK(kv_view_open(db, &v));
    const void *vp;
    len = 99;
    TU_OK(kv_view_get(v, 10, &vp, &len));
    assert_int_equal(len, 0);
    TU_RC(kv_view_get(v, 13, &vp, &len), KV_NOTFOUND);
    kv_view_close(v);

    tu_model m = {0};
    tu_model_put(&m, 10, 0, 0);
    tu_model_put(&m, 11, 0, 0);
    tu_model_put(&m, 12, 0, 0);
    tu_model_put(&m, 14, 5, 30);
    expect_scan(db, &m, 0, UINT64_MAX);
    tu_model_free(&m);
}

static void test_zero_length_values(void **state)
{
    (void)state;
    kv_db *db = open_default();
    TU_OK(kv_put(db, 10, NULL, 0));
    TU_OK(put_val(db, 11, 3, 50));
    TU_OK(kv_put(db, 11, "xyz", 0)); /* non-NULL pointer, 0 bytes: overwrites */
    kv_batch *b;
    TU_OK(kv_batch_new(&b));
    TU_OK(kv_batch_put(b, 12, NULL, 0));
    TU_OK(batch_put_val(b, 14, 5, 30));
    TU_OK(kv_batch_commit(db, b));
    kv_batch_free(b);
    check_zero_len(db);
    TU_OK(kv_rebuild_index(db));
    check_zero_len(db);
    TU_OK(kv_close(db));
    db = open_default();
    check_zero_len(db);
    TU_OK(kv_snapshot(db));
    TU_OK(kv_close(db));
    db = open_default();
    check_zero_len(db);
    TU_OK(kv_close(db));
}

static void test_extreme_keys(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.rebuild_appends = 64;
    o.sync = KV_SYNC_OFF;
    kv_db *db = open_opts(&o);
    tu_model m = {0};
    const uint64_t keys[] = {0, 1, UINT64_MAX - 1, UINT64_MAX, (uint64_t)1 << 63,
                             ((uint64_t)1 << 63) - 1};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        TU_OK(put_val(db, keys[i], 100 + i, 20 + i));
        tu_model_put(&m, keys[i], 100 + i, 20 + i);
    }
    expect_model(db, &m);
    /* Many keys in between, so a learned index is trained over the whole range. */
    tu_rng r = tu_rng_seed(42);
    for (int i = 0; i < 2000; i++) {
        uint64_t k = tu_next(&r);
        TU_OK(put_val(db, k, 7, 30));
        tu_model_put(&m, k, 7, 30);
    }
    TU_OK(kv_rebuild_index(db));
    expect_model(db, &m);

    expect_scan(db, &m, 0, 0);
    expect_scan(db, &m, UINT64_MAX, UINT64_MAX);
    expect_scan(db, &m, UINT64_MAX - 1, UINT64_MAX);
    expect_scan(db, &m, 1, UINT64_MAX - 1);

    TU_OK(kv_delete(db, 0));
    tu_model_del(&m, 0);
    expect_absent(db, 0);
    expect_val(db, 1, 101, 21);
    TU_OK(kv_delete(db, UINT64_MAX));
    tu_model_del(&m, UINT64_MAX);
    expect_absent(db, UINT64_MAX);
    expect_val(db, UINT64_MAX - 1, 102, 22);
    expect_scan(db, &m, 0, UINT64_MAX);
    TU_OK(put_val(db, UINT64_MAX, 999, 40));
    tu_model_put(&m, UINT64_MAX, 999, 40);
    TU_OK(kv_close(db));
    db = open_opts(&o);
    expect_model(db, &m);
    TU_OK(kv_snapshot(db));
    TU_OK(kv_close(db));
    db = open_opts(&o);
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_model_free(&m);
}

static void test_get_small_buffer(void **state)
{
    (void)state;
    kv_db *db = open_default();
    TU_OK(put_val(db, 9, 1, 100));
    for (int round = 0; round < 2; round++) {
        size_t len = 0;
        TU_RC(kv_get(db, 9, NULL, 0, &len), KV_ERANGE);
        assert_int_equal(len, 100);
        uint8_t buf[256];
        memset(buf, 0xEE, sizeof buf);
        len = 0;
        TU_RC(kv_get(db, 9, buf, 99, &len), KV_ERANGE);
        assert_int_equal(len, 100);
        for (size_t i = 0; i < sizeof buf; i++) {
            if (buf[i] != 0xEE)
                fail_msg("kv_get with a too small buffer wrote byte %zu", i);
        }
        len = 0;
        TU_RC(kv_get(db, 9, buf, 1, &len), KV_ERANGE);
        assert_int_equal(len, 100);
        assert_int_equal(buf[0], 0xEE);
        len = 0;
        TU_OK(kv_get(db, 9, buf, 100, &len));
        assert_int_equal(len, 100);
        assert_true(tu_val_matches(buf, len, 9, 1, 100));
        memset(buf, 0xEE, sizeof buf);
        TU_OK(kv_get(db, 9, buf, sizeof buf, &len));
        assert_int_equal(len, 100);
        assert_true(tu_val_matches(buf, len, 9, 1, 100));
        for (size_t i = 100; i < sizeof buf; i++)
            assert_int_equal(buf[i], 0xEE);
        /* Absent beats the size query. */
        TU_RC(kv_get(db, 10, NULL, 0, &len), KV_NOTFOUND);
        TU_OK(kv_rebuild_index(db)); /* again, from the learned index */
    }
    TU_OK(kv_close(db));
}

static void test_delete(void **state)
{
    (void)state;
    kv_db *db = open_default();
    TU_OK(kv_delete(db, 77)); /* absent: fine */
    expect_absent(db, 77);
    TU_OK(put_val(db, 77, 1, 20));
    TU_OK(put_val(db, 78, 1, 20));
    TU_OK(kv_delete(db, 77));
    expect_absent(db, 77);
    TU_OK(kv_delete(db, 77));
    expect_val(db, 78, 1, 20);
    /* Delete of a key already folded into the index. */
    TU_OK(kv_rebuild_index(db));
    TU_OK(kv_delete(db, 78));
    expect_absent(db, 78);
    TU_OK(put_val(db, 77, 2, 25)); /* back again */
    TU_OK(kv_close(db));
    db = open_default();
    expect_val(db, 77, 2, 25);
    expect_absent(db, 78);
    TU_OK(kv_close(db));
}

/* ---- batches ------------------------------------------------------------- */

static void test_batch_semantics(void **state)
{
    (void)state;
    kv_db *db = open_default();
    TU_OK(put_val(db, 2, 1, 20));
    TU_OK(put_val(db, 5, 1, 20));

    kv_batch *b;
    TU_OK(kv_batch_new(&b));
    TU_OK(batch_put_val(b, 1, 10, 30));
    TU_OK(batch_put_val(b, 1, 11, 31)); /* later wins */
    TU_OK(kv_batch_delete(b, 2));
    TU_OK(batch_put_val(b, 3, 12, 32));
    TU_OK(kv_batch_delete(b, 3)); /* put then delete: absent */
    TU_OK(kv_batch_delete(b, 4));
    TU_OK(batch_put_val(b, 4, 13, 33)); /* delete then put: present */
    TU_OK(kv_batch_delete(b, 99)); /* absent key: fine */
    TU_OK(batch_put_val(b, UINT64_MAX, 14, 34));
    TU_OK(batch_put_val(b, 0, 15, 0));
    /* Nothing is visible before the commit. */
    expect_absent(db, 1);
    expect_val(db, 2, 1, 20);
    TU_OK(kv_batch_commit(db, b));

    tu_model m = {0};
    tu_model_put(&m, 0, 15, 0);
    tu_model_put(&m, 1, 11, 31);
    tu_model_put(&m, 4, 13, 33);
    tu_model_put(&m, 5, 1, 20);
    tu_model_put(&m, UINT64_MAX, 14, 34);
    expect_model(db, &m);
    expect_absent(db, 2);
    expect_absent(db, 3);

    /* The batch is unchanged by the commit: committing it again re-applies it. */
    TU_OK(put_val(db, 1, 50, 10));
    TU_OK(put_val(db, 3, 50, 10));
    TU_OK(kv_batch_commit(db, b));
    expect_model(db, &m);

    /* After clear it is empty: committing changes nothing. */
    kv_batch_clear(b);
    TU_OK(put_val(db, 1, 60, 12));
    tu_model_put(&m, 1, 60, 12);
    TU_OK(kv_batch_commit(db, b));
    expect_model(db, &m);

    /* Reuse after clear: only the new operations apply. */
    TU_OK(batch_put_val(b, 6, 16, 36));
    TU_OK(kv_batch_delete(b, 5));
    TU_OK(kv_batch_commit(db, b));
    tu_model_put(&m, 6, 16, 36);
    tu_model_del(&m, 5);
    expect_model(db, &m);
    kv_batch_free(b);

    /* A fresh, never-used batch commits as a no-op. */
    TU_OK(kv_batch_new(&b));
    TU_OK(kv_batch_commit(db, b));
    kv_batch_free(b);
    expect_model(db, &m);

    /* A batch of many operations on few keys. */
    TU_OK(kv_batch_new(&b));
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t k = 100 + i % 7;
        if (i % 5 == 4) {
            TU_OK(kv_batch_delete(b, k));
            tu_model_del(&m, k);
        } else {
            TU_OK(batch_put_val(b, k, 1000 + i, i % 200));
            tu_model_put(&m, k, 1000 + i, i % 200);
        }
    }
    TU_OK(kv_batch_commit(db, b));
    kv_batch_free(b);
    expect_model(db, &m);
    TU_OK(kv_close(db));
    db = open_default();
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_model_free(&m);
}

/* ---- views --------------------------------------------------------------- */

typedef struct {
    const void *p;
    size_t len;
    uint8_t *copy;
} pinned;

static void test_view_isolation(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.rebuild_appends = 64; /* folds happen while the view is open */
    o.sync = KV_SYNC_OFF;
    kv_db *db = open_opts(&o);
    tu_model m = {0};
    enum { N = 300 };
    for (uint64_t k = 1; k <= N; k++) {
        size_t len = k % 10 == 0 ? 0 : (size_t)(k * 7 % 300);
        TU_OK(put_val(db, k, 1, len));
        tu_model_put(&m, k, 1, len);
    }
    TU_OK(kv_rebuild_index(db));
    for (uint64_t k = N / 2; k <= N; k += 3) { /* some live in the write buffer */
        TU_OK(put_val(db, k, 2, 64));
        tu_model_put(&m, k, 2, 64);
    }
    kv_view *v1;
    TU_OK(kv_view_open(db, &v1));
    tu_model m1;
    tu_model_copy(&m1, &m);

    /* Pin every value of the view now. */
    pinned pin[N + 1];
    for (uint64_t k = 1; k <= N; k++) {
        size_t len = 1234;
        TU_OK(kv_view_get(v1, k, &pin[k].p, &pin[k].len));
        const tu_ent *e = tu_model_find(&m1, k);
        if (!tu_val_matches(pin[k].p, pin[k].len, k, e->tag, e->len))
            fail_msg("view: wrong value for key %llu", (unsigned long long)k);
        pin[k].copy = malloc(pin[k].len + 1);
        if (pin[k].len)
            memcpy(pin[k].copy, pin[k].p, pin[k].len);
        (void)len;
    }

    /* After the view: overwrite everything, delete a third, add new keys,
     * and run every maintenance operation that moves values around. */
    for (uint64_t k = 1; k <= N; k++) {
        TU_OK(put_val(db, k, 3, (size_t)(k * 13 % 500)));
        tu_model_put(&m, k, 3, (size_t)(k * 13 % 500));
    }
    for (uint64_t k = 1; k <= N; k += 3) {
        TU_OK(kv_delete(db, k));
        tu_model_del(&m, k);
    }
    for (uint64_t k = 1000; k < 1200; k++) {
        TU_OK(put_val(db, k, 4, 40));
        tu_model_put(&m, k, 4, 40);
    }
    kv_view *v2;
    TU_OK(kv_view_open(db, &v2));
    tu_model m2;
    tu_model_copy(&m2, &m);
    TU_OK(kv_rebuild_index(db));
    TU_OK(kv_snapshot(db));
    TU_OK(kv_compact(db));
    for (uint64_t k = 1; k <= N; k++) {
        TU_OK(put_val(db, k, 5, 100));
        tu_model_put(&m, k, 5, 100);
    }
    TU_OK(kv_delete(db, 1000));
    tu_model_del(&m, 1000);
    TU_OK(kv_snapshot(db));
    TU_OK(kv_compact(db));

    /* The database shows the new state ... */
    expect_model(db, &m);
    /* ... the first view still the old one, pointers and bytes unchanged. */
    for (uint64_t k = 1; k <= N; k++) {
        if (pin[k].len && memcmp(pin[k].p, pin[k].copy, pin[k].len) != 0)
            fail_msg("view: bytes of key %llu changed under a pinned pointer",
                     (unsigned long long)k);
        const void *p;
        size_t len;
        TU_OK(kv_view_get(v1, k, &p, &len));
        const tu_ent *e = tu_model_find(&m1, k);
        if (!tu_val_matches(p, len, k, e->tag, e->len))
            fail_msg("view 1: key %llu changed after the view was opened", (unsigned long long)k);
    }
    for (uint64_t k = 1000; k < 1200; k += 17) {
        const void *p;
        size_t len;
        TU_RC(kv_view_get(v1, k, &p, &len), KV_NOTFOUND);
    }
    expect_view_scan(v1, &m1, 0, UINT64_MAX);
    expect_view_scan(v1, &m1, 50, 150);
    /* The second view: deleted keys absent, new keys present. */
    for (uint64_t k = 1; k <= N; k++) {
        const void *p;
        size_t len;
        const tu_ent *e = tu_model_find(&m2, k);
        if (!e) {
            TU_RC(kv_view_get(v2, k, &p, &len), KV_NOTFOUND);
        } else {
            TU_OK(kv_view_get(v2, k, &p, &len));
            if (!tu_val_matches(p, len, k, e->tag, e->len))
                fail_msg("view 2: wrong value for key %llu", (unsigned long long)k);
        }
    }
    expect_view_scan(v2, &m2, 0, UINT64_MAX);
    kv_view_close(v2);
    /* v1 is unaffected by closing v2. */
    for (uint64_t k = 1; k <= N; k++) {
        if (pin[k].len && memcmp(pin[k].p, pin[k].copy, pin[k].len) != 0)
            fail_msg("view: bytes of key %llu changed", (unsigned long long)k);
        free(pin[k].copy);
    }
    kv_view_close(v1);
    /* A view opened now sees the latest writes. */
    kv_view *v3;
    TU_OK(kv_view_open(db, &v3));
    expect_view_scan(v3, &m, 0, UINT64_MAX);
    kv_view_close(v3);
    TU_OK(kv_close(db));
    tu_model_free(&m);
    tu_model_free(&m1);
    tu_model_free(&m2);
}

/* ---- iterators ----------------------------------------------------------- */

static void test_iterators(void **state)
{
    (void)state;
    kv_db *db = open_default();
    tu_model m = {0};
    const uint64_t base_keys[] = {0, 5, 10, 11, 12, 13, 14, 15, UINT64_MAX - 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof base_keys / sizeof base_keys[0]; i++) {
        TU_OK(put_val(db, base_keys[i], 1, 30));
        tu_model_put(&m, base_keys[i], 1, 30);
    }
    TU_OK(kv_rebuild_index(db)); /* these now live in the learned index */
    const uint64_t buf_keys[] = {16, 17, 18, 19, 20, 1000};
    for (size_t i = 0; i < sizeof buf_keys / sizeof buf_keys[0]; i++) {
        TU_OK(put_val(db, buf_keys[i], 2, 40));
        tu_model_put(&m, buf_keys[i], 2, 40);
    }
    TU_OK(kv_delete(db, 12));   /* deleted from the base */
    TU_OK(kv_delete(db, 1000)); /* deleted from the buffer */
    TU_OK(kv_delete(db, 15));
    TU_OK(put_val(db, 15, 3, 50)); /* and back with a new value */
    TU_OK(put_val(db, 11, 3, 0)); /* overwritten in the buffer */
    tu_model_del(&m, 12);
    tu_model_del(&m, 1000);
    tu_model_put(&m, 15, 3, 50);
    tu_model_put(&m, 11, 3, 0);

    for (int round = 0; round < 2; round++) {
        expect_scan(db, &m, 0, UINT64_MAX);
        expect_scan(db, &m, 10, 15);
        expect_scan(db, &m, 11, 11);
        expect_scan(db, &m, 12, 12);  /* deleted: nothing */
        expect_scan(db, &m, 6, 9);    /* gap: nothing */
        expect_scan(db, &m, 20, 10);  /* lo > hi: nothing */
        expect_scan(db, &m, UINT64_MAX, 0);
        expect_scan(db, &m, 0, 0);
        expect_scan(db, &m, UINT64_MAX, UINT64_MAX);
        expect_scan(db, &m, UINT64_MAX - 1, UINT64_MAX);
        expect_scan(db, &m, 1, UINT64_MAX - 1);
        expect_scan(db, &m, 999, 1001);
        expect_scan(db, &m, 21, UINT64_MAX - 2);
        tu_rng r = tu_rng_seed(7 + (uint64_t)round);
        for (int i = 0; i < 200; i++) {
            uint64_t lo = tu_below(&r, 30), hi = tu_below(&r, 30);
            if (i % 10 == 0)
                hi = UINT64_MAX - tu_below(&r, 3);
            expect_scan(db, &m, lo, hi);
        }
        TU_OK(kv_rebuild_index(db)); /* round 2: everything folded */
    }

    /* An iterator has its own view: writes after it opened are invisible. */
    kv_iter *it;
    TU_OK(kv_iter_open(db, 0, UINT64_MAX, &it));
    tu_model before;
    tu_model_copy(&before, &m);
    TU_OK(put_val(db, 7, 9, 10));
    TU_OK(put_val(db, 10, 9, 11));
    TU_OK(kv_delete(db, 13));
    TU_OK(kv_rebuild_index(db));
    tu_model_put(&m, 7, 9, 10);
    tu_model_put(&m, 10, 9, 11);
    tu_model_del(&m, 13);
    expect_iter_at(it, &before, 0, UINT64_MAX, __LINE__);
    expect_scan(db, &m, 0, UINT64_MAX);

    /* Partially consumed iterators may be closed. */
    TU_OK(kv_iter_open(db, 0, UINT64_MAX, &it));
    uint64_t key;
    const void *vp;
    size_t len;
    TU_OK(kv_iter_next(it, &key, &vp, &len));
    assert_true(key == 0);
    kv_iter_close(it);

    /* On an empty database. */
    TU_OK(kv_close(db));
    tu_rmrf(g_dir);
    db = open_default();
    tu_model empty = {0};
    expect_scan(db, &empty, 0, UINT64_MAX);
    TU_OK(kv_close(db));
    tu_model_free(&m);
    tu_model_free(&before);
}

static void test_iter_over_view(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    kv_db *db = open_opts(&o);
    tu_model m = {0};
    tu_rng r = tu_rng_seed(99);
    for (int i = 0; i < 500; i++) {
        uint64_t k = tu_below(&r, 2000);
        size_t len = (size_t)tu_below(&r, 100);
        TU_OK(put_val(db, k, (uint64_t)i, len));
        tu_model_put(&m, k, (uint64_t)i, len);
    }
    kv_view *v;
    TU_OK(kv_view_open(db, &v));
    tu_model mv;
    tu_model_copy(&mv, &m);
    for (int i = 0; i < 500; i++) {
        uint64_t k = tu_below(&r, 2000);
        if (i % 2)
            TU_OK(kv_delete(db, k));
        else
            TU_OK(put_val(db, k, 10000 + (uint64_t)i, 20));
    }
    TU_OK(kv_rebuild_index(db));
    /* Several iterators over the same view, one after another and interleaved. */
    expect_view_scan(v, &mv, 0, UINT64_MAX);
    expect_view_scan(v, &mv, 100, 900);
    expect_view_scan(v, &mv, 900, 100);
    kv_iter *a, *b;
    TU_OK(kv_view_iter_open(v, 0, UINT64_MAX, &a));
    TU_OK(kv_view_iter_open(v, 1000, 1999, &b));
    uint64_t ka, kb;
    const void *pa, *pb;
    size_t la, lb;
    size_t ia = 0, ib = tu_model_lower(&mv, 1000);
    for (;;) {
        int ra = kv_iter_next(a, &ka, &pa, &la);
        int rb = kv_iter_next(b, &kb, &pb, &lb);
        if (ra == KV_OK) {
            assert_true(ia < mv.n && mv.e[ia].key == ka);
            assert_true(tu_val_matches(pa, la, ka, mv.e[ia].tag, mv.e[ia].len));
            ia++;
        } else {
            TU_RC(ra, KV_NOTFOUND);
        }
        if (rb == KV_OK) {
            assert_true(ib < mv.n && mv.e[ib].key == kb);
            assert_true(tu_val_matches(pb, lb, kb, mv.e[ib].tag, mv.e[ib].len));
            ib++;
        } else {
            TU_RC(rb, KV_NOTFOUND);
        }
        if (ra != KV_OK && rb != KV_OK)
            break;
    }
    assert_int_equal(ia, mv.n);
    assert_int_equal(ib, mv.n);
    kv_iter_close(a);
    kv_iter_close(b);
    kv_view_close(v);
    TU_OK(kv_close(db));
    tu_model_free(&m);
    tu_model_free(&mv);
}

/* ---- read-only ------------------------------------------------------------ */

typedef struct {
    char name[256];
    off_t size;
    struct timespec mtime, ctime;
    ino_t ino;
    mode_t mode;
    uint64_t hash;
} fstate;

/* Names, sizes, times, inodes and content hashes of every entry of dir. */
static size_t dir_state(const char *dir, fstate *out, size_t cap)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        assert_true(n < cap);
        fstate *f = &out[n++];
        memset(f, 0, sizeof *f);
        tu_copy(f->name, sizeof f->name, de->d_name);
        char path[TU_PATH];
        tu_join(path, dir, de->d_name);
        struct stat st;
        assert_int_equal(lstat(path, &st), 0);
        f->size = st.st_size;
        f->mtime = st.st_mtim;
        f->ctime = st.st_ctim;
        f->ino = st.st_ino;
        f->mode = st.st_mode;
        if (S_ISREG(st.st_mode)) {
            int fd = open(path, O_RDONLY);
            assert_true(fd >= 0);
            uint8_t buf[65536];
            ssize_t r;
            uint64_t h = 1;
            while ((r = read(fd, buf, sizeof buf)) > 0)
                h = tu_hash_bytes(buf, (size_t)r, h);
            close(fd);
            f->hash = h;
        }
    }
    closedir(d);
    /* sort by name */
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && strcmp(out[j - 1].name, out[j].name) > 0; j--) {
            fstate t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    }
    return n;
}

static void expect_same_dir(const fstate *a, size_t na, const fstate *b, size_t nb)
{
    if (na != nb)
        fail_msg("read-only open changed the directory: %zu entries before, %zu after", na, nb);
    for (size_t i = 0; i < na; i++) {
        if (strcmp(a[i].name, b[i].name) != 0)
            fail_msg("read-only open changed the directory: %s became %s", a[i].name, b[i].name);
        if (a[i].size != b[i].size || a[i].hash != b[i].hash)
            fail_msg("read-only open changed the contents of %s", a[i].name);
        if (a[i].ino != b[i].ino || a[i].mode != b[i].mode)
            fail_msg("read-only open replaced %s", a[i].name);
        if (a[i].mtime.tv_sec != b[i].mtime.tv_sec || a[i].mtime.tv_nsec != b[i].mtime.tv_nsec)
            fail_msg("read-only open touched %s (mtime)", a[i].name);
        if (a[i].ctime.tv_sec != b[i].ctime.tv_sec || a[i].ctime.tv_nsec != b[i].ctime.tv_nsec)
            fail_msg("read-only open touched %s (ctime)", a[i].name);
    }
}

/* A database with a snapshot and a WAL tail; its state goes to m. */
static void build_db(tu_model *m)
{
    kv_db *db = open_mode(KV_CREATE, KV_SYNC_NORMAL);
    kv_batch *b;
    TU_OK(kv_batch_new(&b));
    for (uint64_t k = 0; k < 500; k++) {
        TU_OK(batch_put_val(b, k * 1000, 1, (size_t)(k % 90)));
        tu_model_put(m, k * 1000, 1, (size_t)(k % 90));
    }
    TU_OK(kv_batch_commit(db, b));
    kv_batch_free(b);
    TU_OK(kv_snapshot(db));
    for (uint64_t k = 0; k < 100; k++) {
        TU_OK(put_val(db, k * 3000, 2, 50));
        tu_model_put(m, k * 3000, 2, 50);
        TU_OK(kv_delete(db, k * 7000 + 1000));
        tu_model_del(m, k * 7000 + 1000);
    }
    TU_OK(kv_close(db));
}

static void test_readonly(void **state)
{
    (void)state;
    tu_model m = {0};
    build_db(&m);
    static fstate before[64], after[64];
    size_t nb = dir_state(g_dir, before, 64);
    assert_true(nb >= 2);
    /* Let a coarse file-time clock tick, so a touch would show. */
    tu_sleep_us(20000);
    kv_db *db = open_mode(KV_READONLY, KV_SYNC_FULL);
    expect_model(db, &m);
    kv_stats st;
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.keys == m.n);

    const char v[8] = "1234567";
    TU_RC(kv_write_status(db), KV_EREADONLY);
    TU_RC(kv_put(db, 1, v, 7), KV_EREADONLY);
    TU_RC(kv_put(db, 0, v, 0), KV_EREADONLY);
    TU_RC(kv_delete(db, 0), KV_EREADONLY);
    TU_RC(kv_delete(db, 123456789), KV_EREADONLY);
    kv_batch *b;
    TU_OK(kv_batch_new(&b));
    TU_RC(kv_batch_commit(db, b), KV_EREADONLY); /* even an empty one */
    TU_OK(kv_batch_put(b, 1, v, 7));
    TU_RC(kv_batch_commit(db, b), KV_EREADONLY);
    kv_batch_free(b);
    TU_RC(kv_snapshot(db), KV_EREADONLY);
    TU_RC(kv_compact(db), KV_EREADONLY);
    TU_OK(kv_sync(db));
    TU_OK(kv_rebuild_index(db));
    TU_OK(kv_warmup(db));
    expect_model(db, &m);
    expect_scan(db, &m, 1000, 50000);
    expect_absent(db, 1);
    TU_OK(kv_close(db));
    size_t na = dir_state(g_dir, after, 64);
    expect_same_dir(before, nb, after, na);
    tu_model_free(&m);
}

/* Read-only opens (also with KV_RECOVER) change no file: names, sizes,
 * contents, inodes and times are the same afterwards. */
static void test_readonly_files(void **state)
{
    (void)state;
    tu_model m = {0};
    build_db(&m);
    static fstate before[64], after[64];
    size_t nb = dir_state(g_dir, before, 64);
    assert_true(nb >= 2);
    tu_sleep_us(20000);

    for (int round = 0; round < 2; round++) {
        kv_db *db = open_mode(KV_READONLY | (round ? KV_RECOVER : 0), KV_SYNC_FULL);
        expect_model(db, &m);
        TU_RC(put_val(db, 5, 5, 5), KV_EREADONLY);
        TU_RC(kv_snapshot(db), KV_EREADONLY);
        TU_RC(kv_compact(db), KV_EREADONLY);
        TU_OK(kv_sync(db));
        TU_OK(kv_rebuild_index(db));
        TU_OK(kv_warmup(db));
        expect_model(db, &m);
        TU_OK(kv_close(db));
        size_t na = dir_state(g_dir, after, 64);
        expect_same_dir(before, nb, after, na);
    }
    /* A writer afterwards still finds everything. */
    kv_db *db = open_default();
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_model_free(&m);
}

static void test_readonly_locking(void **state)
{
    (void)state;
    tu_model m = {0};
    build_db(&m);
    /* A writer holds it: read-only opens fail, here and in another process. */
    kv_db *w = open_default();
    kv_db *r = (kv_db *)&r;
    kv_options o;
    kv_options_init(&o);
    o.flags = KV_READONLY;
    TU_RC(kv_open(g_dir, &o, &r), KV_EBUSY);
    assert_null(r);
    TU_RC(child_open_rc(g_dir, KV_READONLY), KV_EBUSY);
    TU_OK(kv_close(w));

    /* Read-only opens coexist; a writer is refused while they are open. */
    kv_db *r1 = open_mode(KV_READONLY, KV_SYNC_FULL);
    kv_db *r2 = open_mode(KV_READONLY, KV_SYNC_FULL);
    TU_OK(child_open_rc(g_dir, KV_READONLY));
    kv_db *x = (kv_db *)&x;
    TU_RC(kv_open(g_dir, NULL, &x), KV_EBUSY);
    assert_null(x);
    TU_RC(child_open_rc(g_dir, KV_CREATE), KV_EBUSY);
    expect_model(r1, &m);
    expect_model(r2, &m);
    TU_OK(kv_close(r1));
    TU_RC(kv_open(g_dir, NULL, &x), KV_EBUSY); /* r2 still holds it */
    TU_OK(kv_close(r2));
    w = open_default();
    expect_model(w, &m);
    TU_OK(kv_close(w));
    tu_model_free(&m);
}

/* Name of the newest wal-*.log in dir (by name), into out; 0 if found. */
static int newest_wal(const char *dir, char *out)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    int found = -1;
    char best[TU_PATH] = "";
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (strncmp(de->d_name, "wal-", 4) == 0 && n > 8 && strcmp(de->d_name + n - 4, ".log") == 0) {
            if (found != 0 || strcmp(de->d_name, best) > 0)
                tu_copy(best, sizeof best, de->d_name);
            found = 0;
        }
    }
    closedir(d);
    if (found == 0)
        tu_join(out, dir, best);
    return found;
}

static void test_readonly_torn_tail(void **state)
{
    (void)state;
    tu_model m = {0};
    kv_db *db = open_mode(KV_CREATE, KV_SYNC_NORMAL);
    for (uint64_t k = 0; k < 200; k++) {
        TU_OK(put_val(db, k, 1, 100));
        tu_model_put(&m, k, 1, 100);
    }
    TU_OK(kv_close(db));
    char wal[TU_PATH];
    if (newest_wal(g_dir, wal) != 0)
        fail_msg("no wal-*.log in %s after writes (README: Files in a database directory)", g_dir);
    /* A torn record: a few bytes of a header that never completed. */
    int fd = open(wal, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    const uint8_t torn[11] = {0x41, 0, 0, 0, 7, 0, 0, 0, 0x99, 0x13, 0x37};
    assert_int_equal(write(fd, torn, sizeof torn), (ssize_t)sizeof torn);
    close(fd);

    static fstate before[64], after[64];
    size_t nb = dir_state(g_dir, before, 64);
    tu_sleep_us(20000);
    db = open_mode(KV_READONLY, KV_SYNC_FULL);
    expect_model(db, &m);
    TU_OK(kv_close(db));
    size_t na = dir_state(g_dir, after, 64);
    expect_same_dir(before, nb, after, na); /* ignored, not truncated */

    /* A writer drops the torn tail; its new writes must not land behind it. */
    db = open_default();
    expect_model(db, &m);
    TU_OK(put_val(db, 5000, 2, 70));
    tu_model_put(&m, 5000, 2, 70);
    TU_OK(kv_delete(db, 3));
    tu_model_del(&m, 3);
    TU_OK(kv_close(db));
    db = open_default();
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_model_free(&m);
}

/* The whole of a file, or fail. */
static uint8_t *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    uint8_t *p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* A value may be a copy of a log file, here another database's. A crash in
 * the middle of writing it leaves a torn record whose payload holds records
 * that verify, with seqs above the last good one: kv_open drops it as a torn
 * tail and keeps everything before it. */
static void test_torn_value_holding_a_log(void **state)
{
    (void)state;
    char other[TU_PATH], wal[TU_PATH];
    tu_join(other, g_root, "other");
    kv_options o;
    kv_options_init(&o);
    o.flags = KV_CREATE;
    kv_db *db = NULL;
    TU_OK(kv_open(other, &o, &db));
    for (uint64_t k = 0; k < 300; k++)
        TU_OK(put_val(db, k, 7, 20));
    TU_OK(kv_close(db));
    if (newest_wal(other, wal) != 0)
        fail_msg("no wal-*.log in %s after writes", other);
    size_t img_len;
    uint8_t *img = read_whole(wal, &img_len);
    assert_true(img_len > 32 + 300 * 24);

    tu_model m = {0};
    db = open_default();
    for (uint64_t k = 1000; k < 1100; k++) {
        TU_OK(put_val(db, k, 1, 30));
        tu_model_put(&m, k, 1, 30);
    }
    /* Its records carry seqs 1..300; this log's last good one is 100. */
    TU_OK(kv_put(db, 99, img + 32, img_len - 32));
    TU_OK(kv_close(db));
    if (newest_wal(g_dir, wal) != 0)
        fail_msg("no wal-*.log in %s after writes", g_dir);
    size_t len;
    uint8_t *f = read_whole(wal, &len);
    const uint8_t *v = memmem(f, len, img + 32, img_len - 32);
    assert_non_null(v);
    /* Cut inside the copy, well past its first records. */
    size_t cut = (size_t)(v - f) + (img_len - 32) / 2;
    FILE *w = fopen(wal, "wb");
    assert_non_null(w);
    assert_int_equal(fwrite(f, 1, cut, w), cut);
    assert_int_equal(fclose(w), 0);

    db = open_default();
    expect_model(db, &m);
    expect_absent(db, 99);
    TU_OK(kv_close(db));
    free(f);
    free(img);
    tu_model_free(&m);
}

/* ---- statistics ----------------------------------------------------------- */

static void test_stats(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.rebuild_appends = 1000000; /* no automatic fold during the test */
    o.sync = KV_SYNC_NORMAL;
    kv_db *db = open_opts(&o);
    kv_stats st;
    memset(&st, 0xFF, sizeof st);
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.keys == 0);
    assert_true(st.puts == 0 && st.gets == 0 && st.deletes == 0 && st.scans == 0);
    assert_true(st.snapshots == 0 && st.compactions == 0);
    assert_non_null(st.simd);
    if (strcmp(st.simd, "avx512") != 0 && strcmp(st.simd, "avx2") != 0 &&
        strcmp(st.simd, "scalar") != 0)
        fail_msg("stats.simd = \"%s\"", st.simd);

    tu_model m = {0};
    tu_rng r = tu_rng_seed(5);
    uint64_t puts = 0, dels = 0, gets = 0;
    while (m.n < 1000) {
        uint64_t k = tu_next(&r) >> 8;
        if (tu_model_find(&m, k))
            continue;
        TU_OK(put_val(db, k, 1, 40));
        tu_model_put(&m, k, 1, 40);
        puts++;
    }
    for (size_t i = 0; i < 100; i++) {
        TU_OK(put_val(db, m.e[i * 7].key, 2, 41));
        tu_model_put(&m, m.e[i * 7].key, 2, 41);
        puts++;
    }
    for (size_t i = 0; i < 50; i++) {
        uint64_t k = m.e[i * 3 + 1].key;
        TU_OK(kv_delete(db, k));
        tu_model_del(&m, k);
        dels++;
    }
    uint8_t buf[64];
    size_t len;
    for (size_t i = 0; i < 200; i++) {
        TU_OK(kv_get(db, m.e[i].key, buf, sizeof buf, &len));
        gets++;
    }
    for (int i = 0; i < 3; i++) {
        kv_iter *it;
        TU_OK(kv_iter_open(db, 0, UINT64_MAX, &it));
        kv_iter_close(it);
    }
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.keys == m.n);
    assert_true(st.keys == 950);
    if (st.puts != puts || st.deletes != dels || st.gets != gets || st.scans != 3)
        fail_msg("stats: puts %llu deletes %llu gets %llu scans %llu; expected %llu %llu %llu 3",
                 (unsigned long long)st.puts, (unsigned long long)st.deletes,
                 (unsigned long long)st.gets, (unsigned long long)st.scans,
                 (unsigned long long)puts, (unsigned long long)dels, (unsigned long long)gets);
    assert_true(st.wal_bytes > 0);
    assert_true(st.memory_bytes > 0);
    if (st.pending_writes == 0 || st.pending_writes > puts + dels)
        fail_msg("stats.pending_writes = %llu with no fold after %llu writes",
                 (unsigned long long)st.pending_writes, (unsigned long long)(puts + dels));

    uint64_t rebuilds = st.rebuilds;
    TU_OK(kv_rebuild_index(db));
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.pending_writes == 0);
    assert_true(st.index_models >= 1);
    assert_true(st.rebuilds >= rebuilds + 1);
    assert_true(st.keys == m.n);
    for (size_t i = 0; i < m.n; i++) {
        TU_OK(kv_get(db, m.e[i].key, buf, sizeof buf, &len));
        gets++;
    }
    TU_OK(kv_stats_get(db, &st));
    if (st.index_fallbacks != 0)
        fail_msg("stats.index_fallbacks = %llu after gets of keys the index was built on",
                 (unsigned long long)st.index_fallbacks);
    assert_true(st.gets == gets);

    uint64_t snaps = st.snapshots, compactions = st.compactions;
    TU_OK(kv_snapshot(db));
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.snapshots == snaps + 1);
    assert_true(st.snapshot_bytes > 0);
    TU_OK(kv_compact(db));
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.compactions == compactions + 1);
    assert_true(st.keys == m.n);
    TU_OK(kv_close(db));

    /* Counters are per open; the key count is not. */
    o.sync = KV_SYNC_FULL;
    db = open_opts(&o);
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.keys == m.n);
    assert_true(st.puts == 0 && st.gets == 0 && st.deletes == 0 && st.scans == 0);
    assert_true(st.snapshot_bytes > 0);
    TU_OK(put_val(db, 1, 1, 1));
    TU_OK(put_val(db, 1, 2, 1)); /* overwrite: still one key */
    TU_OK(kv_delete(db, m.e[0].key));
    TU_OK(kv_stats_get(db, &st));
    assert_true(st.keys == m.n);
    assert_true(st.puts == 2 && st.deletes == 1);
    assert_true(st.wal_bytes > 0);
    assert_true(st.wal_syncs >= 1); /* KV_SYNC_FULL: each of those writes was synced */
    TU_OK(kv_close(db));
    tu_model_free(&m);
}

/* ---- durability across a clean close ---------------------------------------- */

static void test_durability_sync_modes(void **state)
{
    (void)state;
    const kv_sync_mode modes[3] = {KV_SYNC_FULL, KV_SYNC_NORMAL, KV_SYNC_OFF};
    for (int mi = 0; mi < 3; mi++) {
        tu_rmrf(g_dir);
        kv_options o;
        kv_options_init(&o);
        o.sync = modes[mi];
        o.sync_interval_ms = 10;
        kv_db *db = open_opts(&o);
        tu_model m = {0};
        tu_rng r = tu_rng_seed(100 + (uint64_t)mi);
        for (int i = 0; i < 300; i++) {
            uint64_t k = tu_below(&r, 400);
            size_t len = i % 50 == 0 ? 20000 : (size_t)tu_below(&r, 200);
            TU_OK(put_val(db, k, (uint64_t)i, len));
            tu_model_put(&m, k, (uint64_t)i, len);
            if (i % 7 == 0) {
                uint64_t d = tu_below(&r, 400);
                TU_OK(kv_delete(db, d));
                tu_model_del(&m, d);
            }
        }
        kv_batch *b;
        TU_OK(kv_batch_new(&b));
        for (uint64_t k = 0; k < 40; k++) {
            TU_OK(batch_put_val(b, 10000 + k, 5, 33));
            tu_model_put(&m, 10000 + k, 5, 33);
        }
        TU_OK(kv_batch_commit(db, b));
        kv_batch_free(b);
        TU_OK(kv_close(db));
        /* Same mode, then each other mode. */
        for (int mj = 0; mj < 3; mj++) {
            kv_options o2 = o;
            o2.sync = modes[(mi + mj) % 3];
            db = open_opts(&o2);
            expect_model(db, &m);
            kv_stats st;
            TU_OK(kv_stats_get(db, &st));
            assert_true(st.keys == m.n);
            TU_OK(put_val(db, 20000 + (uint64_t)mj, 6, 44));
            tu_model_put(&m, 20000 + (uint64_t)mj, 6, 44);
            if (mj == 1)
                TU_OK(kv_sync(db));
            TU_OK(kv_close(db));
        }
        db = open_opts(&o);
        expect_model(db, &m);
        TU_OK(kv_close(db));
        tu_model_free(&m);
    }
}

static void test_reopen_after_maintenance(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.rebuild_appends = 100;
    o.sync = KV_SYNC_NORMAL;
    kv_db *db = open_opts(&o);
    tu_model m = {0};
    tu_rng r = tu_rng_seed(3);
    for (int i = 0; i < 3000; i++) {
        uint64_t k = i % 3 ? tu_below(&r, 1000) : tu_next(&r);
        if (tu_chance(&r, 200)) {
            TU_OK(kv_delete(db, k));
            tu_model_del(&m, k);
        } else {
            size_t len = (size_t)tu_below(&r, 120);
            TU_OK(put_val(db, k, (uint64_t)i, len));
            tu_model_put(&m, k, (uint64_t)i, len);
        }
        if (i == 1000)
            TU_OK(kv_snapshot(db));
        if (i == 1500)
            TU_OK(kv_compact(db));
        if (i == 2000)
            TU_OK(kv_warmup(db));
        if (i == 2500) {
            TU_OK(kv_snapshot(db));
            TU_OK(kv_snapshot(db)); /* twice in a row */
            TU_OK(kv_compact(db));
        }
    }
    expect_model(db, &m);
    TU_OK(kv_close(db));
    db = open_opts(&o);
    expect_model(db, &m);
    TU_OK(kv_compact(db));
    TU_OK(kv_close(db));
    db = open_opts(&o);
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_model_free(&m);
}

/* Right after a fold, or an open with nothing to replay, gets skip the
 * empty write buffer; the first write after either must still be seen at
 * once, by gets and scans, and only by views opened after it. */
static void test_first_write_after_fold(void **state)
{
    (void)state;
    kv_db *db = open_mode(KV_CREATE, KV_SYNC_OFF);
    for (uint64_t k = 1; k <= 200; k++)
        TU_OK(put_val(db, k * 10, k, 8));
    for (int round = 0; round < 3; round++) {
        if (round == 0)
            TU_OK(kv_rebuild_index(db));
        if (round == 1)
            TU_OK(kv_snapshot(db));
        if (round == 2) {
            TU_OK(kv_close(db)); /* the snapshot covers everything: no replay */
            db = open_mode(KV_CREATE, KV_SYNC_OFF);
        }
        kv_view *before;
        TU_OK(kv_view_open(db, &before));
        uint64_t tag = 1000 + (uint64_t)round;
        TU_OK(put_val(db, 500, tag, 9));         /* overwrite of a base key */
        TU_OK(put_val(db, 505 + (uint64_t)round, tag, 7)); /* a new key */
        TU_OK(kv_delete(db, 10 * (uint64_t)(round + 1)));
        expect_val(db, 500, tag, 9);
        expect_val(db, 505 + (uint64_t)round, tag, 7);
        expect_absent(db, 10 * (uint64_t)(round + 1));
        const void *v;
        size_t len;
        TU_OK(kv_view_get(before, 500, &v, &len));
        assert_int_equal(len, round == 0 ? 8 : 9); /* the value before this round's write */
        assert_int_equal(kv_view_get(before, 505 + (uint64_t)round, &v, &len), KV_NOTFOUND);
        kv_view_close(before);
        kv_iter *it;
        TU_OK(kv_iter_open(db, 500, 510, &it));
        uint64_t key;
        TU_OK(kv_iter_next(it, &key, &v, &len));
        assert_true(key == 500 && len == 9);
        for (int r = 0; r <= round; r++) {
            TU_OK(kv_iter_next(it, &key, &v, &len));
            assert_true(key == 505 + (uint64_t)r);
        }
        TU_OK(kv_iter_next(it, &key, &v, &len));
        assert_true(key == 510);
        assert_int_equal(kv_iter_next(it, &key, &v, &len), KV_NOTFOUND);
        kv_iter_close(it);
    }
    TU_OK(kv_close(db));
    /* And after a replay of those writes. */
    db = open_mode(KV_CREATE, KV_SYNC_OFF);
    expect_val(db, 500, 1002, 9);
    expect_val(db, 507, 1002, 7);
    expect_absent(db, 30);
    TU_OK(put_val(db, 500, 2000, 3));
    expect_val(db, 500, 2000, 3);
    TU_OK(kv_close(db));
}

/* Pointers of a view into values that live in the snapshot file stay valid
 * and unchanged while new snapshots and compactions replace that file. */
static void test_view_pins_snapshot(void **state)
{
    (void)state;
    kv_options o;
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    kv_db *db = open_opts(&o);
    enum { N = 500 };
    for (uint64_t k = 0; k < N; k++)
        TU_OK(put_val(db, k * 5, 1, 20 + (size_t)(k % 200)));
    TU_OK(kv_snapshot(db));
    TU_OK(kv_close(db));
    db = open_opts(&o); /* the values now come from the snapshot */
    kv_view *v;
    TU_OK(kv_view_open(db, &v));
    static pinned pin[N];
    for (uint64_t k = 0; k < N; k++) {
        TU_OK(kv_view_get(v, k * 5, &pin[k].p, &pin[k].len));
        assert_true(tu_val_matches(pin[k].p, pin[k].len, k * 5, 1, 20 + (size_t)(k % 200)));
        pin[k].copy = malloc(pin[k].len);
        memcpy(pin[k].copy, pin[k].p, pin[k].len);
    }
    for (int round = 0; round < 3; round++) {
        for (uint64_t k = 0; k < N; k++) {
            if (k % 3 == 0)
                TU_OK(kv_delete(db, k * 5));
            else
                TU_OK(put_val(db, k * 5, 10 + (uint64_t)round, 30));
        }
        TU_OK(kv_snapshot(db));
        TU_OK(kv_compact(db));
        TU_OK(kv_rebuild_index(db));
    }
    for (uint64_t k = 0; k < N; k++) {
        if (memcmp(pin[k].p, pin[k].copy, pin[k].len) != 0)
            fail_msg("view pointer of key %llu changed after snapshots and compactions",
                     (unsigned long long)(k * 5));
        const void *p;
        size_t len;
        TU_OK(kv_view_get(v, k * 5, &p, &len));
        assert_true(tu_val_matches(p, len, k * 5, 1, 20 + (size_t)(k % 200)));
        free(pin[k].copy);
    }
    kv_view_close(v);
    expect_absent(db, 0);
    expect_val(db, 5, 12, 30);
    TU_OK(kv_close(db));
}

/* The learned index finds every key it was built on without leaving its
 * error window, and answers absent keys, over awkward key distributions. */
/* kv_view_get_many over keys[0..cnt) (the values of test_index_distributions)
 * and their successors, interleaved, in batches of 1 to 64 entries: each
 * answer must be what sorted[0..cnt) says. */
static void check_get_many(kv_db *db, const uint64_t *keys, const uint64_t *sorted, size_t cnt,
                           const char *name)
{
    enum { BATCH_MAX = 64 };
    uint64_t q[BATCH_MAX];
    const void *vals[BATCH_MAX];
    size_t lens[BATCH_MAX];
    int rcs[BATCH_MAX];
    kv_view *v;
    TU_OK(kv_view_open(db, &v));
    tu_rng r = tu_rng_seed(cnt);
    size_t next = 0; /* entries asked for so far: keys[next / 2] (+ 1 if odd) */
    while (next < 2 * cnt) {
        size_t n = 1 + (size_t)tu_below(&r, BATCH_MAX);
        if (n > 2 * cnt - next)
            n = 2 * cnt - next;
        for (size_t i = 0; i < n; i++)
            q[i] = keys[(next + i) / 2] + ((next + i) & 1);
        TU_OK(kv_view_get_many(v, n, q, vals, lens, rcs));
        for (size_t i = 0; i < n; i++) {
            bool present = bsearch(&q[i], sorted, cnt, sizeof *sorted, tu_cmp_u64) != NULL;
            if (present ? rcs[i] != KV_OK || !tu_val_matches(vals[i], lens[i], q[i], 9, 8)
                        : rcs[i] != KV_NOTFOUND)
                fail_msg("%s: get_many of key %llu (%s) = %d (%s)%s", name,
                         (unsigned long long)q[i], present ? "present" : "absent", rcs[i],
                         kv_strerror(rcs[i]), rcs[i] == KV_OK ? " / wrong value" : "");
        }
        next += n;
    }
    kv_view_close(v);
}

static void test_index_distributions(void **state)
{
    (void)state;
    const size_t n = tu_small() ? 20000 : 100000;
    uint64_t *keys = malloc(n * sizeof *keys), *sorted = malloc(n * sizeof *sorted);
    assert_true(keys && sorted);
    static const char *const names[] = {"sequential", "uniform",   "clustered",
                                        "exponential", "near-max", "dense+outliers"};
    for (int dist = 0; dist < 6; dist++) {
        tu_rmrf(g_dir);
        tu_rng r = tu_rng_seed(1000 + (uint64_t)dist);
        size_t cnt = 0;
        uint64_t x = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t k;
            switch (dist) {
            case 0: k = 1000000 + i * 2; break;
            case 1: k = tu_next(&r); break;
            case 2: k = ((i / 1000) << 50) + (i % 1000) * 3; break;
            case 3: x += 1 + (tu_below(&r, 2) ? tu_below(&r, 4) : (uint64_t)1 << tu_below(&r, 40)); k = x; break;
            case 4: k = UINT64_MAX - i * 7; break;
            default:
                k = i < 4 ? (uint64_t[]){0, 1, UINT64_MAX, UINT64_MAX / 2}[i] : 5000000 + i;
                break;
            }
            keys[cnt++] = k;
        }
        memcpy(sorted, keys, cnt * sizeof *keys);
        qsort(sorted, cnt, sizeof *sorted, tu_cmp_u64);
        kv_options o;
        kv_options_init(&o);
        o.sync = KV_SYNC_OFF;
        o.rebuild_appends = 1000000;
        kv_db *db = open_opts(&o);
        kv_batch *b;
        TU_OK(kv_batch_new(&b));
        for (size_t i = 0; i < cnt; i++) {
            uint8_t v[8];
            tu_val_fill(v, 8, keys[i], 9);
            TU_OK(kv_batch_put(b, keys[i], v, 8));
            if (i % 5000 == 4999 || i == cnt - 1) {
                TU_OK(kv_batch_commit(db, b));
                kv_batch_clear(b);
            }
        }
        kv_batch_free(b);
        for (int phase = 0; phase < 2; phase++) {
            if (phase == 0) {
                TU_OK(kv_rebuild_index(db));
            } else {
                TU_OK(kv_snapshot(db));
                TU_OK(kv_close(db));
                db = open_opts(&o); /* the index as stored in the snapshot */
            }
            kv_stats st;
            TU_OK(kv_stats_get(db, &st));
            if (st.keys != cnt || st.pending_writes != 0 || st.index_models < 1)
                fail_msg("%s: keys %llu pending %llu models %llu", names[dist],
                         (unsigned long long)st.keys, (unsigned long long)st.pending_writes,
                         (unsigned long long)st.index_models);
            uint64_t fb0 = st.index_fallbacks, gets0 = st.gets;
            for (size_t i = 0; i < cnt; i++) {
                uint8_t v[16];
                size_t len = 0;
                int rc = kv_get(db, keys[i], v, sizeof v, &len);
                if (rc != KV_OK || !tu_val_matches(v, len, keys[i], 9, 8))
                    fail_msg("%s (%s): kv_get of key #%zu (%llu) = %d (%s)", names[dist],
                             phase ? "after reopen" : "after rebuild", i,
                             (unsigned long long)keys[i], rc, kv_strerror(rc));
            }
            check_get_many(db, keys, sorted, cnt, names[dist]);
            TU_OK(kv_stats_get(db, &st));
            if (st.index_fallbacks != fb0)
                fail_msg("%s (%s): %llu index fallbacks on keys the index was built on",
                         names[dist], phase ? "after reopen" : "after rebuild",
                         (unsigned long long)(st.index_fallbacks - fb0));
            /* A get per key above, and two per key (itself and key + 1) in
             * check_get_many. */
            assert_int_equal(st.gets - gets0, 3 * cnt);
            /* Absent neighbours. */
            for (size_t i = 0; i < cnt; i += 7) {
                for (int d = -1; d <= 1; d += 2) {
                    uint64_t k = keys[i] + (uint64_t)(int64_t)d;
                    bool present = false;
                    for (size_t j = (i > 2 ? i - 2 : 0); j < i + 3 && j < cnt; j++)
                        present |= keys[j] == k;
                    if (present || (dist == 5 && i < 4))
                        continue;
                    size_t len;
                    int rc = kv_get(db, k, NULL, 0, &len);
                    if (rc != KV_NOTFOUND)
                        fail_msg("%s: absent key %llu = %d (%s)", names[dist],
                                 (unsigned long long)k, rc, kv_strerror(rc));
                }
            }
            /* A full scan has every key once, in order. */
            kv_iter *it;
            TU_OK(kv_iter_open(db, 0, UINT64_MAX, &it));
            uint64_t key, prev = 0;
            const void *vp;
            size_t len, seen = 0;
            while (kv_iter_next(it, &key, &vp, &len) == KV_OK) {
                if (seen && key <= prev)
                    fail_msg("%s: scan out of order", names[dist]);
                prev = key;
                seen++;
            }
            kv_iter_close(it);
            if (seen != cnt)
                fail_msg("%s: scan saw %zu of %zu keys", names[dist], seen, cnt);
        }
        TU_OK(kv_close(db));
    }
    free(keys);
    free(sorted);
}

/* ---- automatic background work ------------------------------------------------ */

static bool has_snapshot_file(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    bool found = false;
    while ((de = readdir(d)) != NULL)
        found |= strncmp(de->d_name, "snap-", 5) == 0;
    closedir(d);
    return found;
}

/* Poll kv_stats_get for up to secs seconds until pred holds. */
static bool wait_stats(kv_db *db, double secs, bool (*pred)(const kv_stats *, const void *),
                       const void *arg, kv_stats *st)
{
    uint64_t end = tu_now_ns() + (uint64_t)(secs * 1e9);
    for (;;) {
        TU_OK(kv_stats_get(db, st));
        if (pred(st, arg))
            return true;
        if (tu_now_ns() > end)
            return false;
        tu_sleep_us(10000);
    }
}

static bool folded(const kv_stats *st, const void *arg)
{
    return st->rebuilds >= 1 && st->pending_writes < *(const uint64_t *)arg;
}

static bool snapshotted(const kv_stats *st, const void *arg)
{
    (void)arg;
    return st->snapshot_bytes > 0 && has_snapshot_file(g_dir);
}

static bool wal_shrunk(const kv_stats *st, const void *arg)
{
    return st->snapshot_bytes > 0 && st->wal_bytes < *(const uint64_t *)arg;
}

static bool synced(const kv_stats *st, const void *arg)
{
    (void)arg;
    return st->wal_syncs >= 1;
}

/* rebuild_appends, wal_max_bytes, auto_snapshot_secs and sync_interval_ms
 * make the library do the work on its own; 0 means never. */
static void test_auto_maintenance(void **state)
{
    (void)state;
    kv_options o;
    kv_stats st;
    tu_model m = {0};

    /* rebuild_appends: 1000 writes with a threshold of 100 get folded. */
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    o.rebuild_appends = 100;
    kv_db *db = open_opts(&o);
    for (uint64_t k = 0; k < 1000; k++) {
        TU_OK(put_val(db, k * 11, 1, 30));
        tu_model_put(&m, k * 11, 1, 30);
    }
    uint64_t limit = 1000;
    if (!wait_stats(db, 10, folded, &limit, &st))
        fail_msg("rebuild_appends 100: after 1000 writes and 10 s, rebuilds %llu, pending %llu",
                 (unsigned long long)st.rebuilds, (unsigned long long)st.pending_writes);
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_rmrf(g_dir);
    tu_model_free(&m);

    /* wal_max_bytes 0 and auto_snapshot_secs 0: never a snapshot. */
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    o.wal_max_bytes = 0;
    db = open_opts(&o);
    for (uint64_t k = 0; k < 256; k++) {
        TU_OK(put_val(db, k, 2, 4096));
        tu_model_put(&m, k, 2, 4096);
    }
    tu_sleep_us(300000);
    TU_OK(kv_stats_get(db, &st));
    if (st.snapshots != 0 || st.snapshot_bytes != 0 || has_snapshot_file(g_dir))
        fail_msg("wal_max_bytes 0: a snapshot was taken (%llu, %llu bytes)",
                 (unsigned long long)st.snapshots, (unsigned long long)st.snapshot_bytes);
    TU_OK(kv_close(db));
    tu_rmrf(g_dir);
    tu_model_free(&m);

    /* wal_max_bytes 64 KiB: 1 MiB of writes take a snapshot and retire WAL. */
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    o.wal_max_bytes = 64 * 1024;
    db = open_opts(&o);
    for (uint64_t k = 0; k < 256; k++) {
        TU_OK(put_val(db, k, 3, 4096));
        tu_model_put(&m, k, 3, 4096);
    }
    limit = 256 * 4096;
    if (!wait_stats(db, 10, wal_shrunk, &limit, &st))
        fail_msg("wal_max_bytes 64 KiB: after 1 MiB of writes, snapshot_bytes %llu wal_bytes %llu",
                 (unsigned long long)st.snapshot_bytes, (unsigned long long)st.wal_bytes);
    assert_true(has_snapshot_file(g_dir));
    expect_model(db, &m);
    TU_OK(kv_close(db));
    db = open_opts(&o);
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_rmrf(g_dir);
    tu_model_free(&m);

    /* auto_snapshot_secs 1: a snapshot within a few seconds. */
    kv_options_init(&o);
    o.sync = KV_SYNC_OFF;
    o.auto_snapshot_secs = 1;
    db = open_opts(&o);
    for (uint64_t k = 0; k < 50; k++) {
        TU_OK(put_val(db, k, 4, 100));
        tu_model_put(&m, k, 4, 100);
    }
    if (!wait_stats(db, 6, snapshotted, NULL, &st))
        fail_msg("auto_snapshot_secs 1: no snapshot after 6 s");
    TU_OK(put_val(db, 7, 5, 10));
    tu_model_put(&m, 7, 5, 10);
    TU_OK(kv_close(db));
    db = open_opts(&o);
    expect_model(db, &m);
    TU_OK(kv_close(db));
    tu_rmrf(g_dir);
    tu_model_free(&m);

    /* KV_SYNC_NORMAL: the background sync runs every sync_interval_ms. */
    kv_options_init(&o);
    o.sync = KV_SYNC_NORMAL;
    o.sync_interval_ms = 20;
    db = open_opts(&o);
    TU_OK(put_val(db, 1, 6, 100));
    if (!wait_stats(db, 3, synced, NULL, &st))
        fail_msg("KV_SYNC_NORMAL, sync_interval_ms 20: no WAL sync 3 s after a write");
    TU_OK(kv_close(db));
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_version),
        T(test_strerror),
        T(test_options_init),
        T(test_open_missing_dir),
        T(test_open_bad_options),
        T(test_ebusy_same_process),
        T(test_ebusy_other_process),
        T(test_close_null),
        T(test_null_arguments),
        T(test_value_too_big),
        T(test_value_max_size),
        T(test_zero_length_values),
        T(test_extreme_keys),
        T(test_get_small_buffer),
        T(test_delete),
        T(test_batch_semantics),
        T(test_view_isolation),
        T(test_iterators),
        T(test_iter_over_view),
        T(test_readonly),
        T(test_readonly_files),
        T(test_readonly_locking),
        T(test_readonly_torn_tail),
        T(test_torn_value_holding_a_log),
        T(test_stats),
        T(test_durability_sync_modes),
        T(test_reopen_after_maintenance),
        T(test_first_write_after_fold),
        T(test_view_pins_snapshot),
        T(test_index_distributions),
        T(test_auto_maintenance),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
