/*
 * test_faults.c — whole-database fault injection through the os.h seam.
 *
 * One fixed, deterministic workload (puts of varied sizes, batches, deletes,
 * a rebuild, a snapshot, a reopen into KV_SYNC_NORMAL, a kv_sync, a compact,
 * a close) is run again and again on a fresh directory, each time with one
 * fault planted at a different point:
 *
 *   (a) fault sweeps: the Nth call among OS_WRITE / OS_SYNC / OS_DIRSYNC /
 *       OS_RENAME / OS_OPEN / OS_TRUNCATE / OS_MMAP fails (-EIO, then -ENOSPC),
 *       and a third sweep makes the Nth OS_WRITE short. Every call must give
 *       KV_OK or a documented error; after a write or kv_sync said KV_EIO the
 *       handle refuses every later write with KV_EIO. The process does not
 *       die, so the page cache survives: every acknowledged write must be
 *       there after a normal reopen.
 *   (b) power-loss sweep: the Nth OS_SYNC / OS_DIRSYNC is where the power
 *       goes. That call and every later one fail with -EIO; then, before the
 *       reopen, the directory is rolled back to what a disk cache would have
 *       kept (see "Power-loss model" below). Only writes acknowledged under
 *       KV_SYNC_FULL, or followed by a successful kv_sync / kv_snapshot /
 *       kv_compact / kv_close, must survive.
 *   (c) a WAL append that fails in its own write (a record bigger than the
 *       log's buffer, or the full buffer written out) reports the injected
 *       errno through kv_errno.
 *
 * The check after each run is a prefix check: writes are issued one after
 * another, so the recovered state must equal the state after the first k
 * writes for some k between "what must be there" and "everything issued"
 * (the write whose fault was seen may or may not have reached the log; a
 * batch counts as one write, so it is whole or absent). Values carry an
 * xxh64 of key + payload and a value id, so a value that was never written
 * is named as such. After the check, one more write goes in and the database
 * is reopened once more: recovery must leave a log that can be appended to.
 *
 * Violations are counted over a whole sweep and the first few are printed
 * with the injection point and the call that failed, then the test fails.
 * KYRO_TEST_SCALE=small shrinks the workload (sanitizer builds);
 * KYRO_TEST_DIR picks where the scratch directories go (default /dev/shm,
 * where fsync costs nothing, else /tmp).
 *
 * The os hook is process-global. The test itself is single-threaded; the
 * library's background thread may call through the seam too, so the hooks
 * count with atomics / a mutex. With KV_SYNC_FULL, wal_max_bytes = 0 and a
 * one-hour KV_SYNC_NORMAL interval, the background thread only folds (no
 * I/O), so the sequence of calls, and with it every sweep, is deterministic.
 */
#define _GNU_SOURCE /* mkdtemp, readlink, lstat, truncate */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "kyro.h"
#include "os.h"

#define PATH_CAP 512

/* ====================================================================
 * The workload
 * ==================================================================== */

enum { ST_PUT, ST_DEL, ST_BATCH, ST_SNAPSHOT, ST_COMPACT, ST_SYNC, ST_REBUILD, ST_REOPEN };

typedef struct {
    int key; /* index into W.keys */
    int vid; /* value id, or -1 for a delete */
} wl_entry;

typedef struct {
    int type;
    int first, count; /* W.ents[first .. first+count) for writes */
} wl_step;

#define MAX_KEYS 128
#define MAX_STEPS 512
#define MAX_ENTS 1024
#define MAX_VIDS 1024
#define MAX_VAL 9000
#define MARKER_KEY 0x5eed5eed5eed5eedull

static struct {
    uint64_t keys[MAX_KEYS];
    int nkeys;
    wl_step steps[MAX_STEPS];
    int nsteps;
    wl_entry ents[MAX_ENTS];
    int nents;
    uint32_t vlen[MAX_VIDS]; /* vid -> value length */
    int vkey[MAX_VIDS];      /* vid -> key index */
    int nvids;
    int write_step[MAX_STEPS]; /* write number -> step index */
    int nwrites;
    int small;
    uint64_t rebuild_appends;
} W;

static uint64_t rng_state;
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* xxh64 of the key (little-endian) followed by the payload. */
static uint64_t value_sum(uint64_t key, const uint8_t *payload, size_t n)
{
    XXH64_state_t *s = XXH64_createState();
    uint8_t kb[8];
    put_le64(kb, key);
    XXH64_reset(s, 0);
    XXH64_update(s, kb, 8);
    XXH64_update(s, payload, n);
    uint64_t h = XXH64_digest(s);
    XXH64_freeState(s);
    return h;
}

/* Value layout: u64 xxh64(key || payload), then payload = u32 vid, filler.
 * Values are either 0 bytes or at least 12. */
static size_t gen_value(int vid, uint8_t *out)
{
    size_t len = W.vlen[vid];
    if (len == 0)
        return 0;
    uint64_t key = W.keys[W.vkey[vid]];
    put_le32(out + 8, (uint32_t)vid);
    for (size_t i = 12; i < len; i++)
        out[i] = (uint8_t)((uint32_t)vid * 131u + (uint32_t)i * 7u + (uint32_t)key);
    put_le64(out, value_sum(key, out + 8, len - 8));
    return len;
}

static int new_vid(int key)
{
    static const uint32_t sizes[] = {12, 13, 17, 32, 64, 100, 255, 256, 777, 1000, 4096, MAX_VAL};
    assert_true(W.nvids < MAX_VIDS);
    int vid = W.nvids++;
    uint64_t r = rnd();
    W.vlen[vid] = r % 16 == 0 ? 0 : sizes[(r >> 8) % (sizeof sizes / sizeof sizes[0])];
    W.vkey[vid] = key;
    return vid;
}

static void add_step(int type)
{
    assert_true(W.nsteps < MAX_STEPS);
    wl_step *s = &W.steps[W.nsteps];
    s->type = type;
    s->first = W.nents;
    s->count = 0;
    if (type == ST_PUT || type == ST_DEL || type == ST_BATCH)
        W.write_step[W.nwrites++] = W.nsteps;
    W.nsteps++;
}

static void add_entry(int key, int vid)
{
    assert_true(W.nents < MAX_ENTS);
    W.ents[W.nents++] = (wl_entry){key, vid};
    W.steps[W.nsteps - 1].count++;
}

static int live_at_build[MAX_KEYS];

/* A key to delete: mostly one that is live, sometimes any. */
static int pick_delete_key(void)
{
    for (int tries = 0; tries < 8; tries++) {
        int k = (int)(rnd() % (uint64_t)W.nkeys);
        if (live_at_build[k])
            return k;
    }
    return (int)(rnd() % (uint64_t)W.nkeys);
}

/* One phase: puts, batches and deletes in a shuffled order; marks[] are
 * maintenance steps placed at the given fraction (per mille) of the phase. */
static void add_phase(int puts, int batches, int dels, const int *marks, const int *at, int nmarks)
{
    int total = puts + batches + dels, placed = 0;
    int *order = malloc((size_t)total * sizeof *order);
    for (int i = 0; i < total; i++)
        order[i] = i < puts ? ST_PUT : i < puts + batches ? ST_BATCH : ST_DEL;
    for (int i = total - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i <= total; i++) {
        for (int m = 0; m < nmarks; m++) {
            if (at[m] * total / 1000 == i && placed <= m) {
                add_step(marks[m]);
                placed++;
            }
        }
        if (i == total)
            break;
        int k;
        switch (order[i]) {
        case ST_PUT:
            k = (int)(rnd() % (uint64_t)W.nkeys);
            add_step(ST_PUT);
            add_entry(k, new_vid(k));
            live_at_build[k] = 1;
            break;
        case ST_DEL:
            k = pick_delete_key();
            add_step(ST_DEL);
            add_entry(k, -1);
            live_at_build[k] = 0;
            break;
        case ST_BATCH: {
            add_step(ST_BATCH);
            int n = 2 + (int)(rnd() % 7);
            for (int e = 0; e < n; e++) {
                /* Sometimes the same key twice in one batch: the later wins. */
                k = e > 0 && rnd() % 5 == 0 ? W.ents[W.nents - 1].key
                                            : (int)(rnd() % (uint64_t)W.nkeys);
                if (rnd() % 4 == 0) {
                    add_entry(k, -1);
                    live_at_build[k] = 0;
                } else {
                    add_entry(k, new_vid(k));
                    live_at_build[k] = 1;
                }
            }
            break;
        }
        }
    }
    free(order);
}

static int key_known(uint64_t k, int n)
{
    for (int i = 0; i < n; i++)
        if (W.keys[i] == k)
            return 1;
    return k == MARKER_KEY;
}

static void build_workload(void)
{
    const char *scale = getenv("KYRO_TEST_SCALE");
    memset(&W, 0, sizeof W);
    memset(live_at_build, 0, sizeof live_at_build);
    rng_state = 0x4b59524f44425f46ull;
    W.small = scale && strcmp(scale, "small") == 0;
    W.nkeys = W.small ? 32 : 96;
    W.rebuild_appends = W.small ? 12 : 50;

    /* Keys: the extremes, a dense cluster, and scattered ones. */
    static const uint64_t fixed[] = {0, 1, 2, UINT64_MAX, UINT64_MAX - 1, 1ull << 63};
    int n = 0;
    for (; n < 6; n++)
        W.keys[n] = fixed[n];
    for (int i = 0; n < W.nkeys / 2; i++, n++)
        W.keys[n] = 1000 + 3 * (uint64_t)i;
    while (n < W.nkeys) {
        uint64_t k = rnd();
        if (!key_known(k, n))
            W.keys[n++] = k;
    }

    /* Phase 1, KV_SYNC_FULL: a rebuild early, a snapshot in the middle. */
    int m1[] = {ST_REBUILD, ST_SNAPSHOT}, a1[] = {250, 500};
    /* Phase 2, KV_SYNC_NORMAL: a kv_sync, then a compact near the end. */
    int m2[] = {ST_SYNC, ST_COMPACT}, a2[] = {330, 800};
    if (W.small) {
        add_phase(20, 2, 5, m1, a1, 2);
        add_step(ST_REOPEN);
        add_phase(16, 2, 4, m2, a2, 2);
    } else {
        add_phase(110, 6, 16, m1, a1, 2);
        add_step(ST_REOPEN);
        add_phase(90, 4, 14, m2, a2, 2);
    }
}

/* ====================================================================
 * Scratch directories
 * ==================================================================== */

static char base_dir[256], db_dir[300], bak_dir[300];

/* Remove every entry of a flat directory (and the directory if rmself). */
static void clear_dir(const char *dir, int rmself)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[PATH_CAP + 300];
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    if (rmself)
        rmdir(dir);
}

static void fresh_dirs(void)
{
    clear_dir(db_dir, 1);
    clear_dir(bak_dir, 1);
    assert_int_equal(mkdir(db_dir, 0755), 0);
    assert_int_equal(mkdir(bak_dir, 0755), 0);
}

static int group_setup(void **state)
{
    (void)state;
    build_workload();
    const char *b = getenv("KYRO_TEST_DIR");
    struct stat st;
    if (!b)
        b = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
                ? "/dev/shm"
                : "/tmp";
    snprintf(base_dir, sizeof base_dir, "%s/kyro-faults-XXXXXX", b);
    if (!mkdtemp(base_dir))
        return -1;
    snprintf(db_dir, sizeof db_dir, "%s/db", base_dir);
    snprintf(bak_dir, sizeof bak_dir, "%s/bak", base_dir);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    os_set_fault_hook(NULL, NULL);
    clear_dir(db_dir, 1);
    clear_dir(bak_dir, 1);
    rmdir(base_dir);
    return 0;
}

/* ====================================================================
 * Violations: counted per sweep, the first few printed
 * ==================================================================== */

static struct {
    const char *name;
    long point;
    int violations;
    int points_failed;
    int last_failed_point;
    char site[PATH_CAP + 64]; /* where the fault was injected */
    int want_errno;           /* the errno a KV_EIO must report; 0: any but 0 */
} S;

static void violation(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    S.violations++;
    if (S.last_failed_point != S.point) {
        S.points_failed++;
        S.last_failed_point = (int)S.point;
    }
    if (S.violations <= 12)
        print_message("[%s N=%ld, fault: %s] %s\n", S.name, S.point, S.site[0] ? S.site : "none",
                      msg);
}

static const char *op_name(os_op op)
{
    static const char *names[] = {"OS_OPEN",   "OS_READ",   "OS_WRITE", "OS_SYNC",
                                  "OS_DIRSYNC", "OS_RENAME", "OS_UNLINK", "OS_TRUNCATE",
                                  "OS_MMAP",   "OS_LOCK",   "OS_MKDIR"};
    return (unsigned)op < OS_OP_COUNT ? names[op] : "?";
}

static void fd_path(int fd, char *out, size_t cap)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    if (n < 0)
        n = 0;
    out[n] = '\0';
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void describe_site(os_op op, const char *path, int fd, const char *what)
{
    char p[PATH_CAP] = "";
    if (path)
        snprintf(p, sizeof p, "%s", path);
    else if (fd >= 0)
        fd_path(fd, p, sizeof p);
    snprintf(S.site, sizeof S.site, "%s %s%s", op_name(op), base_name(p), what);
}

/* ====================================================================
 * Running the workload
 * ==================================================================== */

typedef struct {
    int n_acked;   /* writes 0 .. n_acked-1 returned KV_OK */
    int pending;   /* write n_acked failed: it may or may not be in the log */
    int n_durable; /* writes known durable (power-loss sweep) */
    int tainted;   /* a write after a failure was accepted: state unknowable */
} outcome;

/* kv_errno names the cause of a KV_EIO: the injected errno when the sweep
 * injects one, else anything but 0. */
static int errno_names_cause(kv_db *db)
{
    int e = kv_errno(db);
    return S.want_errno ? e == S.want_errno : e != 0;
}

/* KV_OK or a documented error; kv_errno, or for a failed kv_open (db NULL,
 * called right after it) errno, must name the cause of a KV_EIO. */
static int documented(kv_db *db, int rc)
{
    int open_errno = errno;
    if (rc == KV_OK || rc == KV_ENOMEM)
        return 1;
    if (rc == KV_EIO && db == NULL)
        return S.want_errno ? open_errno == S.want_errno : open_errno != 0;
    if (rc == KV_EIO)
        return errno_names_cause(db);
    return 0;
}

static uint8_t vbuf[MAX_VAL];

static int do_write(kv_db *db, const wl_step *s, kv_batch *b)
{
    const wl_entry *e = &W.ents[s->first];
    size_t len;
    switch (s->type) {
    case ST_PUT:
        len = gen_value(e->vid, vbuf);
        return kv_put(db, W.keys[e->key], len ? vbuf : NULL, len);
    case ST_DEL:
        return kv_delete(db, W.keys[e->key]);
    default:
        kv_batch_clear(b);
        for (int i = 0; i < s->count; i++) {
            int rc;
            if (e[i].vid < 0) {
                rc = kv_batch_delete(b, W.keys[e[i].key]);
            } else {
                len = gen_value(e[i].vid, vbuf);
                rc = kv_batch_put(b, W.keys[e[i].key], len ? vbuf : NULL, len);
            }
            if (rc != KV_OK)
                return rc;
        }
        return kv_batch_commit(db, b);
    }
}

/* kv_write_status must foretell a refusal and report one: a handle that
 * says KV_EIO refuses the write, and one that failed a write says KV_EIO
 * after it (a failed fold or snapshot may fail the handle between the two
 * calls, so KV_OK before says nothing about the write). */
static void write_status_agrees(kv_db *db, int before, int rc, int w)
{
    if (before != KV_OK && before != KV_EIO)
        violation("kv_write_status before write #%d = %s", w, kv_strerror(before));
    if (before == KV_EIO && rc != KV_EIO)
        violation("write #%d = %s after kv_write_status said KV_EIO", w, kv_strerror(rc));
    int after = kv_write_status(db);
    if (rc == KV_EIO && after != KV_EIO)
        violation("kv_write_status after write #%d failed = %s, want KV_EIO", w,
                  kv_strerror(after));
}

/* ---- A read state and the prefix check ------------------------------- */

typedef struct {
    int present;
    size_t len;
    uint8_t *val;
} rval;

static rval R[MAX_KEYS], R2[MAX_KEYS];

static void state_free(rval *st)
{
    for (int i = 0; i < W.nkeys; i++) {
        kv_free(st[i].val);
        st[i] = (rval){0, 0, NULL};
    }
}

/* Read every key of the universe with kv_get_alloc. 0 on a read error. */
static int read_state(kv_db *db, rval *st, const char *when)
{
    state_free(st);
    for (int i = 0; i < W.nkeys; i++) {
        void *v = NULL;
        size_t len = 0;
        int rc = kv_get_alloc(db, W.keys[i], &v, &len);
        if (rc == KV_OK) {
            if (!v) {
                violation("%s: kv_get_alloc returned KV_OK with a NULL value", when);
                return 0;
            }
            st[i] = (rval){1, len, v};
        } else if (rc != KV_NOTFOUND) {
            violation("%s: kv_get_alloc(key %llu) = %s", when, (unsigned long long)W.keys[i],
                      kv_strerror(rc));
            return 0;
        }
    }
    return 1;
}

static int key_index(uint64_t k)
{
    for (int i = 0; i < W.nkeys; i++)
        if (W.keys[i] == k)
            return i;
    return -1;
}

/* A full scan must agree with the point reads, in order, nothing extra
 * (the marker key aside when allow_marker). */
static void check_scan(kv_db *db, const rval *st, int allow_marker, const char *when)
{
    kv_iter *it;
    int rc = kv_iter_open(db, 0, UINT64_MAX, &it);
    if (rc != KV_OK) {
        violation("%s: kv_iter_open = %s", when, kv_strerror(rc));
        return;
    }
    uint64_t k, prev = 0;
    const void *v;
    size_t len;
    int seen = 0, live = 0;
    while ((rc = kv_iter_next(it, &k, &v, &len)) == KV_OK) {
        if (seen && k <= prev) {
            violation("%s: scan not ascending (%llx after %llx)", when, (unsigned long long)k,
                      (unsigned long long)prev);
            break;
        }
        prev = k;
        seen++;
        if (k == MARKER_KEY && allow_marker)
            continue;
        int i = key_index(k);
        if (i < 0) {
            violation("%s: scan yields key %llx that was never written", when,
                      (unsigned long long)k);
            continue;
        }
        if (!st[i].present || st[i].len != len || (len && memcmp(st[i].val, v, len) != 0))
            violation("%s: scan and kv_get disagree on key %llx", when, (unsigned long long)k);
    }
    if (rc != KV_NOTFOUND)
        violation("%s: kv_iter_next = %s", when, kv_strerror(rc));
    kv_iter_close(it);
    for (int i = 0; i < W.nkeys; i++)
        live += st[i].present;
    if (seen - (allow_marker ? 1 : 0) != live && rc == KV_NOTFOUND)
        violation("%s: scan yields %d keys, point reads find %d", when, seen, live);
}

static uint8_t cmpbuf[MAX_VAL];

static int matches(const rval *st, int ki, int vid)
{
    if (vid < 0)
        return !st[ki].present;
    if (!st[ki].present || st[ki].len != W.vlen[vid])
        return 0;
    size_t n = gen_value(vid, cmpbuf);
    return n == 0 || memcmp(st[ki].val, cmpbuf, n) == 0;
}

static void model_state(int k, int *cur)
{
    for (int i = 0; i < W.nkeys; i++)
        cur[i] = -1;
    for (int w = 0; w < k; w++) {
        const wl_step *s = &W.steps[W.write_step[w]];
        for (int e = 0; e < s->count; e++)
            cur[W.ents[s->first + e].key] = W.ents[s->first + e].vid;
    }
}

/* Which write produced a value, in words. */
static void describe_value(const rval *st, int ki, char *out, size_t cap)
{
    if (!st[ki].present) {
        snprintf(out, cap, "absent");
    } else if (st[ki].len == 0) {
        snprintf(out, cap, "0-byte value");
    } else if (st[ki].len < 12) {
        snprintf(out, cap, "%zu bytes, never written (too short)", st[ki].len);
    } else if (get_le64(st[ki].val) !=
               value_sum(W.keys[ki], st[ki].val + 8, st[ki].len - 8)) {
        snprintf(out, cap, "%zu bytes, never written (checksum mismatch)", st[ki].len);
    } else {
        uint32_t vid = get_le32(st[ki].val + 8);
        snprintf(out, cap, "value #%u (%zu bytes)%s", vid, st[ki].len,
                 vid < (uint32_t)W.nvids && W.vkey[vid] == ki && matches(st, ki, (int)vid)
                     ? ""
                     : ", never written for this key");
    }
}

static int write_of_vid(int vid)
{
    for (int w = 0; w < W.nwrites; w++) {
        const wl_step *s = &W.steps[W.write_step[w]];
        for (int e = 0; e < s->count; e++)
            if (W.ents[s->first + e].vid == vid)
                return w;
    }
    return -1;
}

static void describe_vid(int vid, char *out, size_t cap)
{
    if (vid < 0)
        snprintf(out, cap, "absent");
    else
        snprintf(out, cap, "value #%d (write #%d, %u bytes)", vid, write_of_vid(vid), W.vlen[vid]);
}

/*
 * Is st the state after the first k writes for some k in [kmin, kmax]?
 * Walks k upward keeping the number of keys that differ. On failure the
 * differences against the kmin and kmax states are printed.
 */
static int prefix_check(const rval *st, int kmin, int kmax, const char *when)
{
    int cur[MAX_KEYS];
    uint8_t bad[MAX_KEYS];
    int mism = 0;
    for (int i = 0; i < W.nkeys; i++) {
        cur[i] = -1;
        bad[i] = !matches(st, i, -1);
        mism += bad[i];
    }
    if (kmin == 0 && mism == 0)
        return 1;
    for (int k = 0; k < kmax; k++) {
        const wl_step *s = &W.steps[W.write_step[k]];
        for (int e = 0; e < s->count; e++)
            cur[W.ents[s->first + e].key] = W.ents[s->first + e].vid;
        for (int e = 0; e < s->count; e++) {
            int ki = W.ents[s->first + e].key;
            uint8_t nb = (uint8_t)!matches(st, ki, cur[ki]);
            mism += (int)nb - (int)bad[ki];
            bad[ki] = nb;
        }
        if (k + 1 >= kmin && mism == 0)
            return 1;
    }
    /* Explain: against the states after kmin and kmax writes. */
    int lo[MAX_KEYS], hi[MAX_KEYS], shown = 0;
    model_state(kmin, lo);
    model_state(kmax, hi);
    char line[1200], got[128], a[64], b[64];
    int off = snprintf(line, sizeof line,
                       "%s: state is no prefix of the writes (must hold the first %d, may "
                       "hold up to %d of %d):",
                       when, kmin, kmax, W.nwrites);
    for (int i = 0; i < W.nkeys && shown < 4 && off < (int)sizeof line; i++) {
        if (matches(st, i, lo[i]) || matches(st, i, hi[i]))
            continue;
        describe_value(st, i, got, sizeof got);
        describe_vid(lo[i], a, sizeof a);
        describe_vid(hi[i], b, sizeof b);
        off += snprintf(line + off, sizeof line - (size_t)off, " key %llx: got %s, want %s%s%s;",
                        (unsigned long long)W.keys[i], got, a, lo[i] == hi[i] ? "" : " or ",
                        lo[i] == hi[i] ? "" : b);
        shown++;
    }
    if (!shown && off < (int)sizeof line)
        snprintf(line + off, sizeof line - (size_t)off,
                 " each key matches one end but no single prefix does (a batch split?)");
    violation("%s", line);
    return 0;
}

/* Reads on a live handle: the acknowledged state, perhaps plus the write
 * that failed. */
static void check_live(kv_db *db, const outcome *o, const char *when)
{
    if (o->tainted)
        return;
    if (read_state(db, R, when))
        prefix_check(R, o->n_acked, o->n_acked + o->pending, when);
}

/* ---- The driver ------------------------------------------------------ */

typedef int (*crashed_fn)(void);

/*
 * Run the workload on db_dir with whatever hook is installed. power != NULL
 * selects the power-loss rules: stop as soon as the crash happened.
 */
static void run_workload(outcome *o, crashed_fn power)
{
    kv_options opt;
    kv_options_init(&opt);
    opt.sync = KV_SYNC_FULL;
    opt.rebuild_appends = W.rebuild_appends;
    opt.wal_max_bytes = 0;
    int sync_mode = KV_SYNC_FULL;
    *o = (outcome){0, 0, 0, 0};

    kv_batch *b;
    assert_int_equal(kv_batch_new(&b), KV_OK);
    kv_db *db = NULL;
    int rc = kv_open(db_dir, &opt, &db);
    if (rc != KV_OK) {
        if (!documented(NULL, rc))
            violation("kv_open = %s (errno %d)", kv_strerror(rc), errno);
        kv_batch_free(b);
        return;
    }

    int w = 0, failed = 0, si;
    for (si = 0; si < W.nsteps && !failed; si++) {
        if (power && power())
            break;
        const wl_step *s = &W.steps[si];
        switch (s->type) {
        case ST_PUT:
        case ST_DEL:
        case ST_BATCH: {
            int before = kv_write_status(db);
            rc = do_write(db, s, b);
            if (!documented(db, rc))
                violation("write #%d = %s (kv_errno %d)", w, kv_strerror(rc), kv_errno(db));
            write_status_agrees(db, before, rc, w);
            if (rc == KV_OK) {
                o->n_acked = w + 1;
                if (sync_mode == KV_SYNC_FULL)
                    o->n_durable = o->n_acked;
            } else {
                o->pending = 1;
                failed = 1;
            }
            w++;
            break;
        }
        case ST_SYNC:
        case ST_SNAPSHOT:
        case ST_COMPACT:
            rc = s->type == ST_SYNC ? kv_sync(db) : s->type == ST_SNAPSHOT ? kv_snapshot(db)
                                                                          : kv_compact(db);
            if (!documented(db, rc))
                violation("%s = %s (kv_errno %d)",
                          s->type == ST_SYNC ? "kv_sync" : s->type == ST_SNAPSHOT ? "kv_snapshot"
                                                                                  : "kv_compact",
                          kv_strerror(rc), kv_errno(db));
            if (rc == KV_OK)
                o->n_durable = o->n_acked;
            else if (s->type == ST_SYNC)
                failed = 1;
            /* A failed snapshot or compaction leaves the handle usable
             * (or failed: the next write will tell). */
            break;
        case ST_REBUILD:
            rc = kv_rebuild_index(db);
            if (!documented(db, rc))
                violation("kv_rebuild_index = %s", kv_strerror(rc));
            break;
        case ST_REOPEN:
            check_live(db, o, "reads before the reopen");
            rc = kv_close(db);
            db = NULL;
            if (rc != KV_OK && rc != KV_EIO)
                violation("kv_close = %s", kv_strerror(rc));
            if (rc != KV_OK) {
                kv_batch_free(b);
                return;
            }
            o->n_durable = o->n_acked;
            if (power && power()) {
                kv_batch_free(b);
                return;
            }
            opt.sync = sync_mode = KV_SYNC_NORMAL;
            opt.sync_interval_ms = 3600u * 1000u; /* never within a run */
            rc = kv_open(db_dir, &opt, &db);
            if (rc != KV_OK) {
                if (!documented(NULL, rc))
                    violation("kv_open (reopen) = %s (errno %d)", kv_strerror(rc), errno);
                kv_batch_free(b);
                return;
            }
            break;
        }
    }

    if (failed && !power) {
        /* No retry after a failed write or sync: the next writes, and
         * kv_sync, must all say KV_EIO. */
        int tried = 0;
        for (int sj = si; sj < W.nsteps && tried < 3; sj++) {
            const wl_step *s = &W.steps[sj];
            if (s->type != ST_PUT && s->type != ST_DEL && s->type != ST_BATCH)
                continue;
            tried++;
            rc = do_write(db, s, b);
            if (rc != KV_EIO) {
                violation("write after a failed write/sync = %s, want KV_EIO", kv_strerror(rc));
                if (rc == KV_OK)
                    o->tainted = 1;
            }
        }
        rc = kv_sync(db);
        if (rc != KV_EIO)
            violation("kv_sync after a failed write/sync = %s, want KV_EIO", kv_strerror(rc));
        if (kv_write_status(db) != KV_EIO)
            violation("kv_write_status after a failed write/sync = %s, want KV_EIO",
                      kv_strerror(kv_write_status(db)));
        if (rc == KV_EIO && !errno_names_cause(db))
            violation("KV_EIO with kv_errno %d after a failed write/sync (want %d)", kv_errno(db),
                      S.want_errno);
    }
    check_live(db, o, failed ? "reads after the failure" : "reads before close");
    rc = kv_close(db);
    if (rc != KV_OK && rc != KV_EIO)
        violation("kv_close = %s", kv_strerror(rc));
    if (rc == KV_OK && !failed)
        o->n_durable = o->n_acked;
    if (rc == KV_OK && failed && !power)
        violation("kv_close = KV_OK on a handle whose log failed");
    kv_batch_free(b);
}

/*
 * Reopen normally and check the state against the writes: it must be the
 * state after k writes, kmin <= k <= kmax. Then one more write, close,
 * reopen: the recovered log must take appends.
 */
static void verify_recovery(const outcome *o, int kmin)
{
    if (o->tainted)
        return;
    kv_db *db;
    int rc = kv_open(db_dir, NULL, &db);
    if (rc != KV_OK) {
        violation("recovery: kv_open = %s (kv_errno n/a)", kv_strerror(rc));
        return;
    }
    if (read_state(db, R, "recovery")) {
        check_scan(db, R, 0, "recovery");
        prefix_check(R, kmin, o->n_acked + o->pending, "recovery");
        kv_stats st;
        if (kv_stats_get(db, &st) == KV_OK) {
            uint64_t live = 0;
            for (int i = 0; i < W.nkeys; i++)
                live += (uint64_t)R[i].present;
            if (st.keys != live)
                violation("recovery: kv_stats keys = %llu, %llu live", (unsigned long long)st.keys,
                          (unsigned long long)live);
        }
    }
    rc = kv_put(db, MARKER_KEY, "marker", 6);
    if (rc != KV_OK)
        violation("recovery: a put after recovery = %s", kv_strerror(rc));
    rc = kv_close(db);
    if (rc != KV_OK)
        violation("recovery: kv_close = %s", kv_strerror(rc));

    rc = kv_open(db_dir, NULL, &db);
    if (rc != KV_OK) {
        violation("second reopen after recovery: kv_open = %s", kv_strerror(rc));
        return;
    }
    if (read_state(db, R2, "second reopen")) {
        check_scan(db, R2, 1, "second reopen");
        for (int i = 0; i < W.nkeys; i++) {
            if (R[i].present != R2[i].present || R[i].len != R2[i].len ||
                (R[i].len && memcmp(R[i].val, R2[i].val, R[i].len) != 0)) {
                violation("second reopen: key %llx changed between two recoveries",
                          (unsigned long long)W.keys[i]);
                break;
            }
        }
        char mb[16];
        size_t ml;
        rc = kv_get(db, MARKER_KEY, mb, sizeof mb, &ml);
        if (rc != KV_OK || ml != 6 || memcmp(mb, "marker", 6) != 0)
            violation("second reopen: the write made after recovery is lost (%s)",
                      kv_strerror(rc));
    }
    kv_close(db);
}

/* ====================================================================
 * (a) Fault sweeps
 * ==================================================================== */

typedef struct {
    atomic_long count;
    long target;
    int result;     /* -EIO or -ENOSPC */
    int short_mode; /* make the Nth OS_WRITE short instead */
    atomic_int fired;
} fault_plan;

static fault_plan FP;

static int fault_hook(void *ctx, os_op op, const char *path, int fd, size_t len)
{
    fault_plan *f = ctx;
    if (f->short_mode) {
        if (op != OS_WRITE)
            return 0;
    } else if (op != OS_WRITE && op != OS_SYNC && op != OS_DIRSYNC && op != OS_RENAME &&
               op != OS_OPEN && op != OS_TRUNCATE && op != OS_MMAP) {
        return 0;
    }
    long n = atomic_fetch_add(&f->count, 1) + 1;
    if (n != f->target)
        return 0;
    atomic_store(&f->fired, 1);
    if (f->short_mode) {
        int r = len >= 2 ? (int)(len / 2 > INT_MAX ? INT_MAX : len / 2) : -ENOSPC;
        char what[64];
        snprintf(what, sizeof what, " (%zu bytes cut to %d)", len, r > 0 ? r : 0);
        describe_site(op, path, fd, what);
        return r;
    }
    describe_site(op, path, fd, f->result == -EIO ? " -> EIO" : " -> ENOSPC");
    return f->result;
}

static void fault_sweep(const char *name, int result, int short_mode)
{
    memset(&S, 0, sizeof S);
    S.name = name;
    S.last_failed_point = -1;
    S.want_errno = short_mode ? 0 : -result;
    long points = 0;
    for (long n = 1;; n++) {
        fresh_dirs();
        atomic_store(&FP.count, 0);
        atomic_store(&FP.fired, 0);
        FP.target = n;
        FP.result = result;
        FP.short_mode = short_mode;
        S.point = n;
        S.site[0] = '\0';
        outcome o;
        os_set_fault_hook(fault_hook, &FP);
        run_workload(&o, NULL);
        os_set_fault_hook(NULL, NULL);
        verify_recovery(&o, o.n_acked);
        if (!atomic_load(&FP.fired))
            break; /* the workload ran clean: every point has been tried */
        points++;
        if (n == 100000) {
            violation("the sweep does not end: the library's calls are not deterministic");
            break;
        }
    }
    state_free(R);
    state_free(R2);
    print_message("%s: %ld injection points, %d writes in the workload, %d violations at %d "
                  "points\n",
                  name, points, W.nwrites, S.violations, S.points_failed);
    assert_int_equal(S.violations, 0);
}

static void test_fault_sweep_eio(void **state)
{
    (void)state;
    fault_sweep("EIO sweep", -EIO, 0);
}

static void test_fault_sweep_enospc(void **state)
{
    (void)state;
    fault_sweep("ENOSPC sweep", -ENOSPC, 0);
}

static void test_fault_sweep_short_write(void **state)
{
    (void)state;
    fault_sweep("short-write sweep", 0, 1);
}

/* ====================================================================
 * (b) Power-loss sweep
 *
 * Power-loss model (after LevelDB's FaultInjectionTestEnv), per inode and
 * per directory entry:
 *   - Data: each file's size at its last fsync/fdatasync is what survives.
 *     A file written or truncated since then is cut back to that size (or
 *     to its current size if that is smaller). A file never synced keeps
 *     nothing.
 *   - Names: every create, rename and unlink in a directory since that
 *     directory's last fsync is undone, newest first: a created name is
 *     removed, a renamed-to name gets back the file it replaced (kept as a
 *     hard link in a side directory) or is removed, an unlinked name comes
 *     back (from its hard link). So the directory is exactly as it was at
 *     its last fsync.
 *   - The crash happens at the Nth OS_SYNC / OS_DIRSYNC: that call and
 *     every later call of any kind fail with -EIO, the workload stops, the
 *     handle is closed, then the rollback is applied and the directory is
 *     reopened with the hook removed. The rollback is also applied after a
 *     run where no crash fired (the power goes after kv_close).
 * Limits:
 *   - Files are assumed append-only: data overwritten in place below the
 *     last synced size is not rolled back (the hook sees no offsets).
 *   - It is one worst case, not every possible state: real disks may also
 *     keep any part of the unsynced data, or reorder unsynced writes within
 *     a file (torn pages); the fault sweeps above cover the "everything
 *     kept" end and short writes.
 *   - The source name of a rename is not known to the hook (os.h passes the
 *     target only), so undoing a rename does not bring back the old name
 *     (the library's *.tmp files, which open removes anyway).
 *   - An open of an existing file with O_TRUNC is seen as a plain open.
 *   - The database directory itself is created by the test and taken as
 *     durable; only its entries are modelled.
 * ==================================================================== */

typedef struct {
    dev_t dev;
    ino_t ino;
    uint64_t synced; /* size at the last fsync/fdatasync */
    int dirty;       /* written or truncated since */
} pl_file;

enum { DOP_CREATE, DOP_RENAME, DOP_UNLINK };

typedef struct {
    int kind;
    char path[PATH_CAP];
    char backup[PATH_CAP]; /* "" when there was nothing to keep */
} pl_dirop;

#define PL_FILES 512
#define PL_OPS 256
#define PL_FRESH 32

static struct {
    pthread_mutex_t mu;
    long target, syncs;
    int crashed;
    pl_file files[PL_FILES];
    int nfiles;
    pl_dirop ops[PL_OPS];
    int nops;
    char fresh[PL_FRESH][PATH_CAP]; /* names opened while absent: new inodes */
    int nfresh;
    int nbak;
    int overflow;
} PL = {.mu = PTHREAD_MUTEX_INITIALIZER};

static pl_file *pl_file_of(const struct stat *st)
{
    for (int i = 0; i < PL.nfiles; i++)
        if (PL.files[i].dev == st->st_dev && PL.files[i].ino == st->st_ino)
            return &PL.files[i];
    if (PL.nfiles == PL_FILES) {
        PL.overflow = 1;
        return NULL;
    }
    pl_file *f = &PL.files[PL.nfiles++];
    *f = (pl_file){st->st_dev, st->st_ino, (uint64_t)st->st_size, 0};
    return f;
}

static void parent_of(const char *path, char *out)
{
    snprintf(out, PATH_CAP, "%s", path);
    char *s = strrchr(out, '/');
    if (s && s != out)
        *s = '\0';
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = '\0';
}

static void pl_add_op(int kind, const char *path, int keep)
{
    if (PL.nops == PL_OPS) {
        PL.overflow = 1;
        return;
    }
    pl_dirop *d = &PL.ops[PL.nops++];
    d->kind = kind;
    snprintf(d->path, sizeof d->path, "%s", path);
    d->backup[0] = '\0';
    if (keep) {
        snprintf(d->backup, sizeof d->backup, "%s/%d", bak_dir, PL.nbak++);
        if (link(path, d->backup) != 0)
            d->backup[0] = '\0';
    }
}

/* A data operation on fd: a write/truncate (sync = 0) or a sync. */
static void pl_touch_fd(int fd, int sync)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return;
    pl_file *f = pl_file_of(&st);
    if (!f)
        return;
    char p[PATH_CAP];
    fd_path(fd, p, sizeof p);
    for (int i = 0; i < PL.nfresh; i++) {
        if (strcmp(PL.fresh[i], p) == 0) {
            /* A new file, perhaps on a recycled inode number. */
            f->synced = 0;
            f->dirty = 0;
            memmove(PL.fresh[i], PL.fresh[PL.nfresh - 1], sizeof PL.fresh[i]);
            PL.nfresh--;
            break;
        }
    }
    if (sync) {
        f->synced = (uint64_t)st.st_size;
        f->dirty = 0;
    } else {
        f->dirty = 1;
    }
}

static int power_hook(void *ctx, os_op op, const char *path, int fd, size_t len)
{
    (void)ctx;
    (void)len;
    struct stat st;
    int rc = 0;
    pthread_mutex_lock(&PL.mu);
    if (PL.crashed) {
        rc = -EIO;
        goto out;
    }
    if ((op == OS_SYNC || op == OS_DIRSYNC) && ++PL.syncs == PL.target) {
        PL.crashed = 1;
        describe_site(op, path, fd, " (power lost)");
        rc = -EIO;
        goto out;
    }
    switch (op) {
    case OS_OPEN:
        if (path && stat(path, &st) != 0) {
            pl_add_op(DOP_CREATE, path, 0);
            if (PL.nfresh < PL_FRESH)
                snprintf(PL.fresh[PL.nfresh++], PATH_CAP, "%s", path);
            else
                PL.overflow = 1;
        } else if (path && S_ISREG(st.st_mode)) {
            pl_file_of(&st);
        }
        break;
    case OS_WRITE:
    case OS_TRUNCATE:
        pl_touch_fd(fd, 0);
        break;
    case OS_SYNC:
        pl_touch_fd(fd, 1);
        break;
    case OS_DIRSYNC: {
        /* Every entry change in this directory is durable now. */
        char want[PATH_CAP], par[PATH_CAP];
        snprintf(want, sizeof want, "%s", path);
        size_t wl = strlen(want);
        while (wl > 1 && want[wl - 1] == '/')
            want[--wl] = '\0';
        int keep = 0;
        for (int i = 0; i < PL.nops; i++) {
            parent_of(PL.ops[i].path, par);
            if (strcmp(par, want) == 0) {
                if (PL.ops[i].backup[0])
                    unlink(PL.ops[i].backup);
            } else {
                PL.ops[keep++] = PL.ops[i];
            }
        }
        PL.nops = keep;
        break;
    }
    case OS_RENAME:
        if (path) {
            int exists = lstat(path, &st) == 0;
            if (exists && S_ISREG(st.st_mode))
                pl_file_of(&st);
            pl_add_op(DOP_RENAME, path, exists);
        }
        break;
    case OS_UNLINK:
        if (path && lstat(path, &st) == 0) {
            if (S_ISREG(st.st_mode))
                pl_file_of(&st);
            pl_add_op(DOP_UNLINK, path, 1);
        }
        break;
    default:
        break;
    }
out:
    pthread_mutex_unlock(&PL.mu);
    return rc;
}

static int power_crashed(void)
{
    pthread_mutex_lock(&PL.mu);
    int c = PL.crashed;
    pthread_mutex_unlock(&PL.mu);
    return c;
}

/* Roll the directory back to what the disk kept. Hook removed. */
static void pl_power_cut(void)
{
    for (int i = PL.nops - 1; i >= 0; i--) {
        pl_dirop *d = &PL.ops[i];
        switch (d->kind) {
        case DOP_CREATE:
            unlink(d->path);
            break;
        case DOP_RENAME:
            if (d->backup[0])
                rename(d->backup, d->path);
            else
                unlink(d->path);
            break;
        case DOP_UNLINK:
            if (d->backup[0])
                rename(d->backup, d->path);
            break;
        }
    }
    PL.nops = 0;
    DIR *dd = opendir(db_dir);
    assert_non_null(dd);
    struct dirent *e;
    char p[PATH_CAP + 300];
    while ((e = readdir(dd)) != NULL) {
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", db_dir, e->d_name);
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        for (int i = 0; i < PL.nfiles; i++) {
            pl_file *f = &PL.files[i];
            if (f->dev != st.st_dev || f->ino != st.st_ino || !f->dirty)
                continue;
            uint64_t keep = f->synced < (uint64_t)st.st_size ? f->synced : (uint64_t)st.st_size;
            if (truncate(p, (off_t)keep) != 0)
                violation("power cut: truncate(%s) failed", e->d_name);
            break;
        }
    }
    closedir(dd);
    clear_dir(bak_dir, 0);
}

static void test_power_loss_sweep(void **state)
{
    (void)state;
    memset(&S, 0, sizeof S);
    S.name = "power-loss sweep";
    S.last_failed_point = -1;
    long points = 0;
    for (long n = 1;; n++) {
        fresh_dirs();
        pthread_mutex_lock(&PL.mu);
        PL.target = n;
        PL.syncs = 0;
        PL.crashed = 0;
        PL.nfiles = PL.nops = PL.nfresh = PL.nbak = 0;
        PL.overflow = 0;
        pthread_mutex_unlock(&PL.mu);
        S.point = n;
        S.site[0] = '\0';
        outcome o;
        os_set_fault_hook(power_hook, NULL);
        run_workload(&o, power_crashed);
        os_set_fault_hook(NULL, NULL);
        int crashed = PL.crashed;
        if (PL.overflow)
            violation("the power-loss model overflowed its tables (test limit)");
        pl_power_cut();
        verify_recovery(&o, o.n_durable);
        if (!crashed)
            break;
        points++;
        if (n == 100000) {
            violation("the sweep does not end: the library's syncs are not deterministic");
            break;
        }
    }
    state_free(R);
    state_free(R2);
    print_message("power-loss sweep: %ld sync points, %d writes in the workload, %d violations "
                  "at %d points\n",
                  points, W.nwrites, S.violations, S.points_failed);
    assert_int_equal(S.violations, 0);
}

/* The workload with no hook at all: the baseline every sweep relies on. */
static void test_workload_clean(void **state)
{
    (void)state;
    memset(&S, 0, sizeof S);
    S.name = "clean run";
    S.last_failed_point = -1;
    fresh_dirs();
    outcome o;
    run_workload(&o, NULL);
    assert_int_equal(o.n_acked, W.nwrites);
    assert_int_equal(o.pending, 0);
    verify_recovery(&o, W.nwrites);
    state_free(R);
    state_free(R2);
    assert_int_equal(S.violations, 0);
}

/* ====================================================================
 * (c) A failed append names its errno
 * ==================================================================== */

/* Fail the first OS_WRITE of at least 512 KiB with -ENOSPC: the WAL writing
 * out its full 1 MiB buffer, or a record too big for the buffer. */
static atomic_int big_write_failed;

static int big_write_hook(void *ctx, os_op op, const char *path, int fd, size_t len)
{
    (void)ctx, (void)path, (void)fd;
    if (op != OS_WRITE || len < ((size_t)512 << 10) || atomic_exchange(&big_write_failed, 1))
        return 0;
    return -ENOSPC;
}

/* The append itself fails (not the commit after it): the handle refuses
 * writes, kv_errno says ENOSPC, and the reopened database has what was
 * synced before. way 0: a 2 MiB value written past the buffer under
 * KV_SYNC_FULL; way 1: KV_SYNC_OFF puts until the buffer is written out. */
static void failed_append(int way)
{
    kv_options opt;
    kv_options_init(&opt);
    opt.sync = way == 0 ? KV_SYNC_FULL : KV_SYNC_OFF;
    opt.wal_max_bytes = 0;
    fresh_dirs();
    kv_db *db;
    assert_int_equal(kv_open(db_dir, &opt, &db), KV_OK);
    assert_int_equal(kv_put(db, 1, "synced", 6), KV_OK);
    assert_int_equal(kv_sync(db), KV_OK);
    assert_int_equal(kv_write_status(db), KV_OK);

    size_t vlen = way == 0 ? (size_t)2 << 20 : 4000;
    uint8_t *v = malloc(vlen);
    assert_non_null(v);
    memset(v, 0x5a, vlen);
    atomic_store(&big_write_failed, 0);
    os_set_fault_hook(big_write_hook, NULL);
    int rc = KV_OK;
    uint64_t k = 2;
    while (rc == KV_OK && k < 1000)
        rc = kv_put(db, k++, v, vlen);
    os_set_fault_hook(NULL, NULL);
    free(v);

    assert_int_equal(atomic_load(&big_write_failed), 1);
    assert_int_equal(rc, KV_EIO);
    assert_int_equal(kv_errno(db), ENOSPC);
    assert_int_equal(kv_write_status(db), KV_EIO);
    assert_int_equal(kv_put(db, 5000, "x", 1), KV_EIO);
    assert_int_equal(kv_errno(db), ENOSPC);
    char buf[16];
    size_t len;
    assert_int_equal(kv_get(db, 1, buf, sizeof buf, &len), KV_OK);
    assert_int_equal(kv_close(db), KV_EIO);

    assert_int_equal(kv_open(db_dir, &opt, &db), KV_OK);
    assert_int_equal(kv_get(db, 1, buf, sizeof buf, &len), KV_OK);
    assert_memory_equal(buf, "synced", 6);
    assert_int_equal(kv_get(db, 5000, buf, sizeof buf, &len), KV_NOTFOUND);
    assert_int_equal(kv_write_status(db), KV_OK);
    assert_int_equal(kv_put(db, 5000, "x", 1), KV_OK);
    assert_int_equal(kv_close(db), KV_OK);
}

static void test_failed_direct_append_names_errno(void **state)
{
    (void)state;
    failed_append(0);
}

static void test_failed_buffer_write_names_errno(void **state)
{
    (void)state;
    failed_append(1);
}

/* A disk with room for log appends but not for a snapshot: the automatic
 * snapshot fails every time it opens its file. */
static atomic_int snap_opens;

static int snap_full_hook(void *ctx, os_op op, const char *path, int fd, size_t len)
{
    (void)ctx, (void)fd, (void)len;
    if (op != OS_OPEN || !path || strncmp(base_name(path), "snap-", 5) != 0)
        return 0;
    atomic_fetch_add(&snap_opens, 1);
    return -ENOSPC;
}

static int wal_files(void)
{
    DIR *d = opendir(db_dir);
    assert_non_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, "wal-", 4) == 0;
    closedir(d);
    return n;
}

/* Failed automatic snapshots back off (1 s period: attempts at about 1 and
 * 3 s, not every second) and leave the handle writable; failures with
 * nothing written between them share one new WAL; a snapshot that then
 * succeeds retires every older WAL. */
static void test_failing_auto_snapshot_backs_off(void **state)
{
    (void)state;
    kv_options opt;
    kv_options_init(&opt);
    opt.auto_snapshot_secs = 1;
    opt.wal_max_bytes = 0;
    fresh_dirs();
    atomic_store(&snap_opens, 0);
    os_set_fault_hook(snap_full_hook, NULL);
    kv_db *db;
    assert_int_equal(kv_open(db_dir, &opt, &db), KV_OK);
    for (uint64_t k = 1; k <= 100; k++)
        assert_int_equal(kv_put(db, k, &k, sizeof k), KV_OK);
    struct timespec wait = {4, 500000000};
    while (nanosleep(&wait, &wait) != 0 && errno == EINTR)
        ;
    int attempts = atomic_load(&snap_opens);
    assert_in_range(attempts, 1, 2);
    assert_int_equal(kv_write_status(db), KV_OK);
    /* The first failure started a WAL; a retry with nothing written since
     * keeps it, one after a write needs a new one to cut at. */
    assert_int_equal(kv_snapshot(db), KV_EIO);
    assert_int_equal(kv_errno(db), ENOSPC);
    assert_int_equal(wal_files(), 2);
    uint64_t k = 101;
    assert_int_equal(kv_put(db, k, &k, sizeof k), KV_OK);
    assert_int_equal(kv_snapshot(db), KV_EIO);
    assert_int_equal(wal_files(), 3);

    os_set_fault_hook(NULL, NULL);
    assert_int_equal(kv_snapshot(db), KV_OK);
    assert_int_equal(wal_files(), 1);
    assert_int_equal(kv_close(db), KV_OK);
    assert_int_equal(kv_open(db_dir, &opt, &db), KV_OK);
    for (k = 1; k <= 101; k++) {
        uint64_t got;
        size_t len;
        assert_int_equal(kv_get(db, k, &got, sizeof got, &len), KV_OK);
        assert_int_equal(got, k);
    }
    assert_int_equal(kv_close(db), KV_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workload_clean),
        cmocka_unit_test(test_fault_sweep_eio),
        cmocka_unit_test(test_fault_sweep_enospc),
        cmocka_unit_test(test_fault_sweep_short_write),
        cmocka_unit_test(test_power_loss_sweep),
        cmocka_unit_test(test_failed_direct_append_names_errno),
        cmocka_unit_test(test_failed_buffer_write_names_errno),
        cmocka_unit_test(test_failing_auto_snapshot_backs_off),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
