/*
 * test_corrupt.c — damaged files never crash, hang or return a wrong value.
 *
 * A database is built with a snapshot and a WAL tail: 2000 keys, kv_snapshot,
 * then TAIL operations (puts, overwrites, deletes, small batches; one WAL
 * record each, wal_max_bytes 0 so the tail stays in the WAL), kv_close. The
 * expected state after every prefix of the tail is known (as an
 * order-independent hash of (key, tag, len) over the live keys, plus the
 * operations to rebuild it).
 *
 * Then every file but the lock file is damaged in a fresh copy of the
 * directory: single bytes flipped (every bit of every byte of a small file,
 * every byte of a large file's first 128, several hundred sampled elsewhere,
 * and bytes known to lie inside a value), several bytes flipped at once
 * within a short span, truncation at many lengths, a 4 KiB page zeroed (page
 * aligned, and 4 KiB at unaligned offsets), garbage or zeros appended. About
 * a thousand trials per file (MANIFEST, snapshot, WAL);
 * KYRO_CORRUPT_SCALE=N multiplies the random samples (`make stress`: 10). Each trial opens the copy in a forked child (so a crash or hang
 * is caught and reported with the trial) and reads everything back: every
 * value is checked on its own bytes and the state must equal the state after
 * some prefix of the tail. What is accepted:
 *
 *   MANIFEST, snapshot, other files: KV_ECORRUPT / KV_EVERSION, or KV_OK
 *     with the complete state (a byte no check covers, e.g. padding).
 *   WAL, any damage: KV_ECORRUPT / KV_EVERSION, or KV_OK with a prefix that
 *     keeps every record lying wholly before the damage.
 *   WAL, a byte inside the value of tail operation j: if j is not the last
 *     operation, valid records follow: KV_ECORRUPT, and with KV_RECOVER,
 *     KV_OK with exactly the first j operations.
 *   WAL truncated (past the first record's start) or with garbage appended:
 *     a torn tail: KV_OK, with every record wholly before the cut, and after
 *     a new write, close and plain reopen, that write is there too.
 *
 * KYRO_TEST_SCALE=small samples fewer offsets. Each test prints, per file
 * kind, the trials run, how many were detected (KV_ECORRUPT / KV_EVERSION)
 * and how many opened clean (KV_OK with the complete state, or with a valid
 * prefix of the WAL tail); the last line sums them. The copies live under
 * $KYRO_TEST_DIR, else /dev/shm, else /tmp.
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
#include <errno.h>
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

#define NBASE 2000
#define TAIL 300
#define MAXSUB 5
#define NEW_KEY 0x7777777777777777ull /* written after a torn-tail open */

/* ---- the database and its expected states -------------------------------------- */

typedef struct {
    uint64_t key;
    size_t len; /* SIZE_MAX: delete */
} sub_op;

typedef struct {
    uint64_t tag;
    unsigned n;
    sub_op s[MAXSUB];
    long vstart, vend; /* where its values lie in the WAL; -1: not found */
} tail_op;

enum { F_MANIFEST, F_SNAP, F_WAL, F_OTHER };
static const char *const kind_name[] = {"MANIFEST", "snapshot", "WAL", "other"};

typedef struct {
    char name[256];
    int kind;
    uint8_t *data;
    size_t size;
} dbfile;

static struct {
    char root[TU_PATH];
    tu_model base; /* the state at the snapshot */
    tail_op ops[TAIL];
    uint64_t hash[TAIL + 1]; /* state hash after each prefix */
    dbfile files[32];
    size_t nfiles;
    size_t nwal;
    /* summary */
    size_t trials, ok_full, ok_prefix, corrupt, version, recover_trials;
    size_t accepted_flips[4];
    /* per file kind: trials, KV_OK complete, KV_OK prefix, KV_ECORRUPT, KV_EVERSION */
    size_t k_trials[4], k_full[4], k_prefix[4], k_corrupt[4], k_version[4];
    uint64_t t0;
} G;

static uint64_t term(uint64_t key, uint64_t tag, size_t len)
{
    return tu_mix64(key * 0x9E3779B97F4A7C15ull ^ tu_mix64(tag ^ ((uint64_t)len << 40)));
}

static uint64_t model_hash(const tu_model *m)
{
    uint64_t h = 0;
    for (size_t i = 0; i < m->n; i++)
        h += term(m->e[i].key, m->e[i].tag, m->e[i].len);
    return h;
}

static void apply_tail(tu_model *m, const tail_op *op)
{
    for (unsigned i = 0; i < op->n; i++) {
        if (op->s[i].len == SIZE_MAX)
            tu_model_del(m, op->s[i].key);
        else
            tu_model_put(m, op->s[i].key, op->tag, op->s[i].len);
    }
}

/* The state after the first p tail operations. */
static void state_at(tu_model *out, size_t p)
{
    tu_model_copy(out, &G.base);
    for (size_t i = 0; i < p; i++)
        apply_tail(out, &G.ops[i]);
}

static int put_val(kv_db *db, uint64_t key, uint64_t tag, size_t len)
{
    uint8_t *v = tu_val_new(len, key, tag);
    int rc = kv_put(db, key, v, len);
    free(v);
    return rc;
}

static uint8_t *read_file(const char *path, size_t *size)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    uint8_t *p = malloc((size_t)st.st_size + 1);
    assert_non_null(p);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
        assert_true(r > 0);
        got += (size_t)r;
    }
    close(fd);
    *size = got;
    return p;
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        fail_msg("open %s: %s", path, strerror(errno));
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        assert_true(w > 0);
        done += (size_t)w;
    }
    close(fd);
}

/* Where the value of (key, tag, len) lies in buf, or -1. */
static long find_value(const uint8_t *buf, size_t size, uint64_t key, uint64_t tag, size_t len)
{
    uint8_t v[TU_VAL_HDR];
    uint8_t *full = tu_val_new(len, key, tag);
    memcpy(v, full, TU_VAL_HDR);
    free(full);
    const uint8_t *hit = memmem(buf, size, v, sizeof v);
    return hit ? (long)(hit - buf) : -1;
}

static int setup(void **state)
{
    (void)state;
    memset(&G, 0, sizeof G);
    G.t0 = tu_now_ns();
    if (tu_mkdtemp_fast(G.root, "corrupt") != 0)
        return -1;
    char dir[TU_PATH];
    tu_join(dir, G.root, "db");

    kv_options o;
    kv_options_init(&o);
    o.sync = KV_SYNC_NORMAL;
    o.wal_max_bytes = 0; /* the tail stays in the WAL */
    kv_db *db;
    if (kv_open(dir, &o, &db) != KV_OK)
        return -1;
    tu_rng r = tu_rng_seed(0xC022);
    for (uint64_t i = 0; i < NBASE; i++) {
        uint64_t key = i < 200 ? i * 3 : tu_mix64(i + 1);
        if (i == 200)
            key = UINT64_MAX;
        size_t len = TU_VAL_HDR + 16 + (size_t)(i * 37 % 200);
        if (put_val(db, key, 1, len) != KV_OK)
            return -1;
        tu_model_put(&G.base, key, 1, len);
    }
    if (kv_snapshot(db) != KV_OK)
        return -1;

    tu_model m;
    tu_model_copy(&m, &G.base);
    G.hash[0] = model_hash(&m);
    kv_batch *b;
    if (kv_batch_new(&b) != KV_OK)
        return -1;
    for (size_t i = 0; i < TAIL; i++) {
        tail_op *op = &G.ops[i];
        op->tag = 1000 + i;
        uint64_t x = tu_below(&r, 100);
        unsigned n = x < 80 ? 1 : 2 + (unsigned)tu_below(&r, MAXSUB - 1);
        bool is_del = x >= 55 && x < 80;
        op->n = 0;
        for (unsigned j = 0; j < n; j++) {
            sub_op *s = &op->s[op->n];
            bool del = is_del || (n > 1 && tu_chance(&r, 250));
            if (del || tu_chance(&r, 500))
                s->key = m.e[tu_below(&r, m.n)].key;
            else
                s->key = tu_mix64(100000 + i * 8 + j);
            bool dup = false;
            for (unsigned k = 0; k < op->n; k++)
                dup |= op->s[k].key == s->key;
            if (dup)
                continue;
            s->len = del ? SIZE_MAX : TU_VAL_HDR + 16 + (size_t)tu_below(&r, 160);
            op->n++;
        }
        int rc;
        if (n == 1) {
            rc = op->s[0].len == SIZE_MAX ? kv_delete(db, op->s[0].key)
                                          : put_val(db, op->s[0].key, op->tag, op->s[0].len);
        } else {
            kv_batch_clear(b);
            for (unsigned j = 0; j < op->n; j++) {
                if (op->s[j].len == SIZE_MAX) {
                    rc = kv_batch_delete(b, op->s[j].key);
                } else {
                    uint8_t *v = tu_val_new(op->s[j].len, op->s[j].key, op->tag);
                    rc = kv_batch_put(b, op->s[j].key, v, op->s[j].len);
                    free(v);
                }
                if (rc != KV_OK)
                    return -1;
            }
            rc = kv_batch_commit(db, b);
        }
        if (rc != KV_OK)
            return -1;
        apply_tail(&m, op);
        G.hash[i + 1] = model_hash(&m);
        if (G.hash[i + 1] == G.hash[i])
            return -1; /* every operation changes the state */
    }
    kv_batch_free(b);
    tu_model_free(&m);
    if (kv_close(db) != KV_OK)
        return -1;

    /* The files. */
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (G.nfiles == 32)
            return -1;
        dbfile *f = &G.files[G.nfiles++];
        tu_copy(f->name, sizeof f->name, de->d_name);
        char path[TU_PATH];
        tu_join(path, dir, de->d_name);
        f->data = read_file(path, &f->size);
        if (strcmp(f->name, "MANIFEST") == 0)
            f->kind = F_MANIFEST;
        else if (strncmp(f->name, "snap-", 5) == 0)
            f->kind = F_SNAP;
        else if (strncmp(f->name, "wal-", 4) == 0)
            f->kind = F_WAL;
        else
            f->kind = F_OTHER;
        if (f->kind == F_WAL)
            G.nwal++;
    }
    closedir(d);

    /* Locate the tail's values in the WAL. */
    for (size_t i = 0; i < TAIL; i++) {
        G.ops[i].vstart = G.ops[i].vend = -1;
        for (size_t fi = 0; fi < G.nfiles; fi++) {
            dbfile *f = &G.files[fi];
            if (f->kind != F_WAL || G.nwal != 1)
                continue;
            for (unsigned j = 0; j < G.ops[i].n; j++) {
                const sub_op *s = &G.ops[i].s[j];
                if (s->len == SIZE_MAX)
                    continue;
                long at = find_value(f->data, f->size, s->key, G.ops[i].tag, s->len);
                if (at < 0)
                    continue;
                if (G.ops[i].vstart < 0 || at < G.ops[i].vstart)
                    G.ops[i].vstart = at;
                if ((long)(at + (long)s->len) > G.ops[i].vend)
                    G.ops[i].vend = at + (long)s->len;
            }
        }
    }
    return 0;
}

static void print_kind(int k);

static int teardown(void **state)
{
    (void)state;
    print_message("[ corrupt  ] total: %zu trials in %.1f s: detected %zu (KV_ECORRUPT %zu, "
                  "KV_EVERSION %zu), clean %zu (complete %zu, WAL prefix %zu); 0 crashes, hangs "
                  "or wrong values\n",
                  G.trials, (double)(tu_now_ns() - G.t0) / 1e9, G.corrupt + G.version, G.corrupt,
                  G.version, G.ok_full + G.ok_prefix, G.ok_full, G.ok_prefix);
    for (int k = F_MANIFEST; k <= F_OTHER; k++)
        if (G.k_trials[k])
            print_kind(k);
    for (size_t i = 0; i < G.nfiles; i++)
        free(G.files[i].data);
    tu_model_free(&G.base);
    return tu_rmrf(G.root);
}

/* ---- one trial ----------------------------------------------------------------- */

enum { D_FLIP, D_TRUNC, D_ZERO, D_APPEND, D_MULTI };
static const char *const dmg_name[] = {"flip", "truncate", "zero page", "append", "multi-flip"};

typedef struct {
    size_t file;
    int dmg;
    size_t off;    /* flip: offset; truncate: new length; zero: start; multi: first byte */
    size_t span;   /* multi: bytes [off, off + span) may be hit */
    uint8_t x;     /* flip: xor mask */
    size_t extra;  /* append: byte count */
    int zeros;     /* append: zeros instead of random */
    uint32_t flags;
    int write_after; /* after a KV_OK open: write, close, reopen, check */
} trial;

typedef struct {
    int open_rc;
    int p;        /* the prefix matched, -1 for none */
    int bad;      /* a wrong value or an inconsistent read */
    int after_rc; /* the write-after check */
    char msg[300];
} result;

static void make_copy(const trial *t, const char *dir)
{
    tu_rmrf(dir);
    if (mkdir(dir, 0755) != 0)
        fail_msg("mkdir %s: %s", dir, strerror(errno));
    for (size_t i = 0; i < G.nfiles; i++) {
        const dbfile *f = &G.files[i];
        char path[TU_PATH];
        tu_join(path, dir, f->name);
        if (i != t->file) {
            write_file(path, f->data, f->size);
            continue;
        }
        size_t n = f->size;
        uint8_t *p = malloc(n + t->extra + 1);
        memcpy(p, f->data, n);
        switch (t->dmg) {
        case D_FLIP:
            p[t->off] ^= t->x;
            break;
        case D_TRUNC:
            n = t->off;
            break;
        case D_ZERO:
            memset(p + t->off, 0, t->off + 4096 <= n ? 4096 : n - t->off);
            break;
        case D_MULTI: {
            /* 2 to 16 bytes xor'ed with nonzero masks, the first at off. */
            tu_rng r = tu_rng_seed(t->off * 0x9E3779B97F4A7C15ull + t->span + t->x);
            unsigned k = 2 + (unsigned)tu_below(&r, 15);
            p[t->off] ^= (uint8_t)(1 + tu_below(&r, 255));
            for (unsigned j = 1; j < k; j++) {
                size_t o = t->off + (size_t)tu_below(&r, t->span);
                if (o < n)
                    p[o] ^= (uint8_t)(1 + tu_below(&r, 255));
            }
            break;
        }
        default: {
            tu_rng r = tu_rng_seed(t->extra * 31 + t->off);
            for (size_t k = 0; k < t->extra; k++)
                p[n + k] = t->zeros ? 0 : (uint8_t)tu_next(&r);
            n += t->extra;
        }
        }
        write_file(path, p, n);
        free(p);
    }
}

/* Read the whole database; 0 and the prefix in *p, or -1 with res->msg. */
static int read_state(kv_db *db, result *res, int *p, uint64_t extra_term)
{
    kv_iter *it;
    int rc = kv_iter_open(db, 0, UINT64_MAX, &it);
    if (rc != KV_OK) {
        snprintf(res->msg, sizeof res->msg, "kv_iter_open = %d", rc);
        return -1;
    }
    uint64_t key, prev = 0, h = 0;
    const void *val;
    size_t len, n = 0;
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        uint64_t tag = 0;
        if (n && key <= prev) {
            snprintf(res->msg, sizeof res->msg, "scan not ascending at key %llu",
                     (unsigned long long)key);
            kv_iter_close(it);
            return -1;
        }
        prev = key;
        n++;
        if (key == NEW_KEY && extra_term) {
            if (!tu_val_matches(val, len, key, 77, 50)) {
                snprintf(res->msg, sizeof res->msg, "the write after recovery reads back wrong");
                kv_iter_close(it);
                return -1;
            }
            continue;
        }
        if (!tu_val_decode(val, len, key, &tag)) {
            snprintf(res->msg, sizeof res->msg, "WRONG VALUE: key %llu, %zu bytes no write produced",
                     (unsigned long long)key, len);
            kv_iter_close(it);
            return -1;
        }
        h += term(key, tag, len);
    }
    kv_iter_close(it);
    if (rc != KV_NOTFOUND) {
        snprintf(res->msg, sizeof res->msg, "kv_iter_next = %d (%s)", rc, kv_strerror(rc));
        return -1;
    }
    *p = -1;
    for (int i = 0; i <= TAIL; i++) {
        if (G.hash[i] == h) {
            *p = i;
            break;
        }
    }
    if (*p < 0) {
        snprintf(res->msg, sizeof res->msg,
                 "WRONG STATE: %zu keys, intact values, but no prefix of the tail gives it", n);
        return -1;
    }
    /* Point reads agree with the expected state, present and absent keys. */
    tu_model m;
    state_at(&m, (size_t)*p);
    for (size_t i = 0; i < m.n; i++) {
        void *v = NULL;
        rc = kv_get_alloc(db, m.e[i].key, &v, &len);
        if (rc != KV_OK || !tu_val_matches(v, len, m.e[i].key, m.e[i].tag, m.e[i].len)) {
            snprintf(res->msg, sizeof res->msg, "kv_get_alloc(%llu) = %d / wrong value",
                     (unsigned long long)m.e[i].key, rc);
            kv_free(v);
            tu_model_free(&m);
            return -1;
        }
        kv_free(v);
    }
    for (size_t i = 0; i < TAIL; i++) {
        for (unsigned j = 0; j < G.ops[i].n; j++) {
            uint64_t k = G.ops[i].s[j].key;
            if (tu_model_find(&m, k))
                continue;
            rc = kv_get(db, k, NULL, 0, &len);
            if (rc != KV_NOTFOUND) {
                snprintf(res->msg, sizeof res->msg, "kv_get(%llu) = %d, key should be absent",
                         (unsigned long long)k, rc);
                tu_model_free(&m);
                return -1;
            }
        }
    }
    tu_model_free(&m);
    return 0;
}

static void child_trial(const trial *t, int fd, const char *dir)
{
    alarm(30);
    result res;
    memset(&res, 0, sizeof res);
    res.p = -1;
    kv_options o;
    kv_options_init(&o);
    o.flags = t->flags;
    o.wal_max_bytes = 0;
    kv_db *db = NULL;
    res.open_rc = kv_open(dir, &o, &db);
    if (res.open_rc == KV_OK) {
        if (read_state(db, &res, &res.p, 0) != 0)
            res.bad = 1;
        int rc = KV_OK;
        if (!res.bad && t->write_after) {
            rc = put_val(db, NEW_KEY, 77, 50);
            if (rc == KV_OK)
                rc = kv_close(db);
            db = NULL;
            if (rc == KV_OK) {
                kv_options_init(&o);
                o.flags = 0;
                rc = kv_open(dir, &o, &db);
            }
            if (rc == KV_OK) {
                int p2 = -1;
                if (read_state(db, &res, &p2, 1) != 0) {
                    res.bad = 1;
                } else if (p2 != res.p) {
                    res.bad = 1;
                    snprintf(res.msg, sizeof res.msg,
                             "after write + reopen the state is prefix %d, was %d", p2, res.p);
                } else {
                    void *v = NULL;
                    size_t len;
                    rc = kv_get_alloc(db, NEW_KEY, &v, &len);
                    if (rc == KV_OK && !tu_val_matches(v, len, NEW_KEY, 77, 50))
                        rc = KV_ECORRUPT;
                    kv_free(v);
                }
            }
            res.after_rc = rc;
        }
        if (db && kv_close(db) != KV_OK && !res.bad) {
            res.bad = 1;
            snprintf(res.msg, sizeof res.msg, "kv_close failed");
        }
    } else if (db != NULL) {
        res.bad = 1;
        snprintf(res.msg, sizeof res.msg, "failed open left *out non-NULL");
    }
    if (write(fd, &res, sizeof res) != (ssize_t)sizeof res)
        _exit(3);
    _exit(0);
}

static void describe_trial(char *out, size_t cap, const trial *t)
{
    const dbfile *f = &G.files[t->file];
    snprintf(out, cap, "%s %s (%s, %zu bytes) at %zu (xor/seed %u, span %zu)%s%s",
             dmg_name[t->dmg], f->name, kind_name[f->kind], f->size,
             t->dmg == D_APPEND ? t->extra : t->off, (unsigned)t->x, t->span,
             (t->flags & KV_RECOVER) ? " +KV_RECOVER" : "",
             (t->flags & KV_READONLY) ? " +KV_READONLY" : "");
}

/* Lowest prefix a KV_OK open may give when the damage starts at off:
 * every operation whose successor's value starts before off lies wholly
 * before the damage and is valid, so it must be kept. */
static int min_prefix(size_t off)
{
    int pmin = 0;
    for (int i = 0; i < TAIL; i++) {
        if (G.ops[i].vstart >= 0 && (size_t)G.ops[i].vstart <= off)
            pmin = i; /* records 0..i-1 end before op i's value */
    }
    return pmin;
}

/* Highest prefix: no operation whose value lies (partly) at or after off
 * can survive a truncation at off. */
static int max_prefix_trunc(size_t off)
{
    for (int i = 0; i < TAIL; i++) {
        if (G.ops[i].vend >= 0 && (size_t)G.ops[i].vend > off)
            return i;
    }
    return TAIL;
}

/* The tail operation whose values span byte off (a batch is one record,
 * so the bytes between its values belong to it too), or -1. */
static int op_at(size_t off)
{
    for (int i = 0; i < TAIL; i++) {
        if (G.ops[i].vstart >= 0 && (size_t)G.ops[i].vstart <= off && off < (size_t)G.ops[i].vend)
            return i;
    }
    return -1;
}

/* Trials run in NSLOTS children at once (opening mostly waits on fsync). */
#define NSLOTS 4
static struct {
    pid_t pid;
    int fd;
    trial t;
    char dir[TU_PATH];
} slots[NSLOTS];

static void evaluate(const trial *t, const result *res, ssize_t got, int st);

/* Wait for one running trial and judge it. */
static void reap_one(void)
{
    int st;
    pid_t pid = waitpid(-1, &st, 0);
    assert_true(pid > 0);
    for (int i = 0; i < NSLOTS; i++) {
        if (slots[i].pid != pid)
            continue;
        result res;
        memset(&res, 0, sizeof res);
        ssize_t got = read(slots[i].fd, &res, sizeof res);
        close(slots[i].fd);
        slots[i].pid = 0;
        evaluate(&slots[i].t, &res, got, st);
        return;
    }
    fail_msg("waitpid returned an unknown child %d", (int)pid);
}

static void flush_trials(void)
{
    for (int i = 0; i < NSLOTS; i++) {
        if (slots[i].pid)
            reap_one(), i = -1;
    }
}

static void run_trial(const trial *t)
{
    int i;
    for (;;) {
        for (i = 0; i < NSLOTS && slots[i].pid; i++) {
        }
        if (i < NSLOTS)
            break;
        reap_one();
    }
    if (!slots[i].dir[0]) {
        char name[32];
        snprintf(name, sizeof name, "trial%d", i);
        tu_join(slots[i].dir, G.root, name);
    }
    slots[i].t = *t;
    make_copy(t, slots[i].dir);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        child_trial(t, fds[1], slots[i].dir);
    }
    close(fds[1]);
    slots[i].pid = pid;
    slots[i].fd = fds[0];
}

static void evaluate(const trial *t, const result *r, ssize_t got, int st)
{
    result res = *r;
    char what[400];
    describe_trial(what, sizeof what, t);
    G.trials++;
    if (WIFSIGNALED(st))
        fail_msg("%s: the library %s (signal %d)", what,
                 WTERMSIG(st) == SIGALRM ? "hung" : "crashed", WTERMSIG(st));
    if (got != (ssize_t)sizeof res || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("%s: the child failed (status %#x)", what, st);
    if (res.bad)
        fail_msg("%s: open = %d (%s): %s", what, res.open_rc, kv_strerror(res.open_rc), res.msg);

    const dbfile *f = &G.files[t->file];
    int rc = res.open_rc;
    bool wal = f->kind == F_WAL && G.nwal == 1;
    bool err_ok = rc == KV_ECORRUPT || rc == KV_EVERSION;
    if (rc != KV_OK && !err_ok)
        fail_msg("%s: open = %d (%s); only KV_OK, KV_ECORRUPT or KV_EVERSION are acceptable",
                 what, rc, kv_strerror(rc));
    int k = f->kind;
    G.k_trials[k]++;
    if (rc == KV_ECORRUPT)
        G.corrupt++, G.k_corrupt[k]++;
    if (rc == KV_EVERSION)
        G.version++, G.k_version[k]++;
    if (rc == KV_OK) {
        if (res.p == TAIL)
            G.ok_full++, G.k_full[k]++;
        else
            G.ok_prefix++, G.k_prefix[k]++;
    }

    if (!wal) {
        /* Damage outside the WAL never loses or invents writes. */
        if (rc == KV_OK && res.p != TAIL)
            fail_msg("%s: KV_OK with only %d of %d tail operations", what, res.p, TAIL);
        if (rc == KV_OK && t->dmg == D_FLIP)
            G.accepted_flips[f->kind]++;
        return;
    }

    /* The WAL. */
    size_t dmg_off = t->dmg == D_APPEND ? f->size : t->off;
    int pmin = min_prefix(dmg_off);
    if (rc == KV_OK && res.p < pmin)
        fail_msg("%s: KV_OK with %d tail operations, but the first %d lie wholly before the "
                 "damage",
                 what, res.p, pmin);
    if (t->dmg == D_APPEND) {
        if (rc != KV_OK || res.p != TAIL)
            fail_msg("%s: garbage after the last record is a torn tail: expected KV_OK with all "
                     "%d operations, got %d (%s) with %d",
                     what, TAIL, rc, kv_strerror(rc), res.p);
    }
    if (t->dmg == D_TRUNC && G.ops[0].vstart >= 0 && t->off >= (size_t)G.ops[0].vstart) {
        if (rc != KV_OK)
            fail_msg("%s: a truncated log is a torn tail: expected KV_OK, got %d (%s)", what, rc,
                     kv_strerror(rc));
        int pmax = max_prefix_trunc(t->off);
        if (res.p > pmax)
            fail_msg("%s: %d operations survived, but operation %d was cut", what, res.p, pmax);
    }
    if (t->dmg == D_FLIP) {
        int j = op_at(t->off);
        if (j >= 0 && j < TAIL - 1) {
            if (t->flags & KV_RECOVER) {
                if (rc != KV_OK || res.p != j)
                    fail_msg("%s: a bad record (operation %d) with valid records after it: "
                             "KV_RECOVER must keep exactly the %d before it; got %d (%s) with %d",
                             what, j, j, rc, kv_strerror(rc), res.p);
            } else if (rc != KV_ECORRUPT) {
                fail_msg("%s: a bad record (operation %d) with valid records after it must give "
                         "KV_ECORRUPT; got %d (%s) with %d operations",
                         what, j, rc, kv_strerror(rc), res.p);
            }
        }
        if (j == TAIL - 1 && rc == KV_OK && res.p != TAIL - 1)
            fail_msg("%s: the last record is bad; expected %d operations, got %d", what,
                     TAIL - 1, res.p);
    }
    if (t->write_after && rc == KV_OK && res.after_rc != KV_OK)
        fail_msg("%s: after recovery, write + close + reopen failed: %d (%s)", what, res.after_rc,
                 kv_strerror(res.after_rc));
}

/* ---- the tests ------------------------------------------------------------------ */

/* n random samples, times KYRO_CORRUPT_SCALE; a quarter at the small scale. */
static size_t sample(size_t n)
{
    n *= (size_t)tu_env_u64("KYRO_CORRUPT_SCALE", 1);
    return tu_small() ? (n + 3) / 4 : n;
}

static void flips(size_t fi, tu_rng *r)
{
    const dbfile *f = &G.files[fi];
    trial t = {0};
    t.file = fi;
    t.dmg = D_FLIP;
    if (f->size <= 512) {
        /* Every bit of every byte, then every byte with a random mask. */
        for (size_t off = 0; off < f->size; off += tu_small() ? 3 : 1) {
            t.off = off;
            for (unsigned bit = 0; bit < 8; bit += tu_small() ? 3 : 1) {
                t.x = (uint8_t)(1u << bit);
                run_trial(&t);
            }
            t.x = (uint8_t)(1 + tu_below(r, 255));
            run_trial(&t);
        }
        return;
    }
    for (size_t off = 0; off < 128; off += tu_small() ? 4 : 1) { /* headers */
        t.off = off;
        t.x = (uint8_t)(1u << (off % 8));
        run_trial(&t);
    }
    for (size_t i = 0; i < sample(700); i++) {
        t.off = (size_t)tu_below(r, f->size);
        t.x = (uint8_t)(1 + tu_below(r, 255));
        run_trial(&t);
    }
    for (size_t i = 0; i < 8; i++) { /* the last bytes */
        t.off = f->size - 1 - i;
        t.x = 0x80;
        run_trial(&t);
    }
}

/* Several bytes at once within a short span (a damaged sector, a torn
 * write of the wrong data): the checksums must still catch it. */
static void multis(size_t fi, tu_rng *r)
{
    const dbfile *f = &G.files[fi];
    trial t = {0};
    t.file = fi;
    t.dmg = D_MULTI;
    for (size_t i = 0; i < sample(f->size <= 512 ? 400 : 150); i++) {
        t.off = (size_t)tu_below(r, f->size);
        t.span = 1 + (size_t)tu_below(r, f->size <= 512 ? 48 : 512);
        t.x = (uint8_t)tu_next(r);
        run_trial(&t);
    }
}

static void truncations(size_t fi, tu_rng *r)
{
    const dbfile *f = &G.files[fi];
    trial t = {0};
    t.file = fi;
    t.dmg = D_TRUNC;
    t.write_after = f->kind == F_WAL;
    if (f->size <= 512) {
        for (size_t len = 0; len < f->size; len += tu_small() ? 3 : 1) {
            t.off = len;
            run_trial(&t);
        }
        return;
    }
    const size_t fixed[] = {0, 1, 4, 8, 16, 24, 32, 48, 64, 100, 128, 4096};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (fixed[i] < f->size) {
            t.off = fixed[i];
            run_trial(&t);
        }
    }
    for (size_t i = 1; i <= (tu_small() ? 8 : 24); i++) {
        t.off = f->size - i;
        run_trial(&t);
    }
    for (size_t i = 0; i < sample(150); i++) {
        t.off = (size_t)tu_below(r, f->size);
        t.flags = i % 5 == 0 && f->kind == F_WAL ? KV_READONLY : 0;
        t.write_after = f->kind == F_WAL && !t.flags;
        run_trial(&t);
    }
}

static void zero_pages(size_t fi, tu_rng *r)
{
    const dbfile *f = &G.files[fi];
    trial t = {0};
    t.file = fi;
    t.dmg = D_ZERO;
    size_t pages = (f->size + 4095) / 4096;
    for (size_t pg = 0; pg < pages; pg++) {
        if (pages > 24 && pg != 0 && pg != pages - 1 && !tu_chance(r, 24000 / pages))
            continue;
        t.off = pg * 4096;
        run_trial(&t);
    }
    /* 4 KiB of zeros at unaligned offsets (to the end for the last ones). */
    for (size_t i = 0; i < sample(f->size <= 512 ? 10 : 50); i++) {
        t.off = (size_t)tu_below(r, f->size);
        run_trial(&t);
    }
}

static void appends(size_t fi, tu_rng *r)
{
    const dbfile *f = &G.files[fi];
    trial t = {0};
    t.file = fi;
    t.dmg = D_APPEND;
    t.write_after = f->kind == F_WAL;
    const size_t sizes[] = {1, 7, 8, 24, 32, 100, 4096, 5000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        t.extra = sizes[i];
        t.off = (size_t)tu_below(r, 1000);
        t.zeros = 0;
        run_trial(&t);
        t.zeros = 1;
        run_trial(&t);
    }
    for (size_t i = 0; i < sample(40); i++) {
        t.extra = 1 + (size_t)tu_below(r, 9000);
        t.off = (size_t)tu_below(r, 1000000);
        t.zeros = tu_chance(r, 200);
        run_trial(&t);
    }
}

static void print_kind(int k)
{
    print_message("[ corrupt  ] %s: %zu trials: detected %zu (KV_ECORRUPT %zu, KV_EVERSION %zu), "
                  "clean %zu (KV_OK complete %zu, KV_OK with a valid prefix of the WAL tail %zu); "
                  "flips no check covers (harmless, state complete) %zu; never a crash, hang or "
                  "wrong value\n",
                  kind_name[k], G.k_trials[k], G.k_corrupt[k] + G.k_version[k], G.k_corrupt[k],
                  G.k_version[k], G.k_full[k] + G.k_prefix[k], G.k_full[k], G.k_prefix[k],
                  G.accepted_flips[k]);
}

static void damage_kind(int kind)
{
    tu_rng r = tu_rng_seed(0xDA3A6E + (uint64_t)kind);
    size_t before = G.trials;
    bool any = false;
    for (size_t fi = 0; fi < G.nfiles; fi++) {
        const dbfile *f = &G.files[fi];
        if (f->kind != kind || strcmp(f->name, "LOCK") == 0 || strstr(f->name, "lock"))
            continue;
        if (f->size == 0)
            continue;
        any = true;
        flips(fi, &r);
        multis(fi, &r);
        truncations(fi, &r);
        zero_pages(fi, &r);
        appends(fi, &r);
    }
    flush_trials();
    if (!any && kind != F_OTHER)
        fail_msg("no %s file in the database directory", kind_name[kind]);
    (void)before;
    if (G.k_trials[kind])
        print_kind(kind);
    else
        print_message("[ corrupt  ] %s: no such file in the directory\n", kind_name[kind]);
}

static void test_corrupt_manifest(void **state)
{
    (void)state;
    damage_kind(F_MANIFEST);
}

static void test_corrupt_snapshot(void **state)
{
    (void)state;
    damage_kind(F_SNAP);
    /* Bytes known to be inside values stored in the snapshot. */
    for (size_t fi = 0; fi < G.nfiles; fi++) {
        if (G.files[fi].kind != F_SNAP)
            continue;
        size_t found = 0;
        for (size_t i = 0; i < G.base.n && found < (tu_small() ? 5u : 20u); i += 97) {
            const tu_ent *e = &G.base.e[i];
            long at = find_value(G.files[fi].data, G.files[fi].size, e->key, e->tag, e->len);
            if (at < 0)
                continue;
            found++;
            trial t = {0};
            t.file = fi;
            t.dmg = D_FLIP;
            t.off = (size_t)at + TU_VAL_HDR + (e->len - TU_VAL_HDR) / 2;
            t.x = 0x01;
            run_trial(&t);
        }
        flush_trials();
        if (!found)
            print_message("[ note     ] values not found verbatim in %s; skipped value flips\n",
                          G.files[fi].name);
    }
    print_message("[ corrupt  ] snapshot, with the flips aimed inside stored values:\n");
    print_kind(F_SNAP);
}

static void test_corrupt_wal(void **state)
{
    (void)state;
    if (G.nwal != 1)
        print_message("[ note     ] %zu WAL files; the WAL checks run leniently\n", G.nwal);
    damage_kind(F_WAL);
}

static void test_corrupt_other(void **state)
{
    (void)state;
    damage_kind(F_OTHER);
}

/* A flipped byte inside a middle record's value: KV_ECORRUPT without
 * KV_RECOVER; with it, exactly the records before, and the database is
 * usable afterwards (a new write survives a plain reopen). */
static void test_recover_middle_record(void **state)
{
    (void)state;
    size_t wal = SIZE_MAX;
    for (size_t fi = 0; fi < G.nfiles; fi++) {
        if (G.files[fi].kind == F_WAL)
            wal = fi;
    }
    if (G.nwal != 1 || wal == SIZE_MAX)
        fail_msg("expected exactly one WAL file, found %zu", G.nwal);
    size_t tried = 0;
    for (int j = TAIL / 3; j < TAIL - 1 && tried < (tu_small() ? 4u : 12u); j += 11) {
        const tail_op *op = &G.ops[j];
        if (op->vstart < 0 || op->n != 1)
            continue;
        trial t = {0};
        t.file = wal;
        t.dmg = D_FLIP;
        t.off = (size_t)op->vstart + TU_VAL_HDR + 3;
        t.x = 0x10;
        run_trial(&t); /* KV_ECORRUPT */
        t.flags = KV_RECOVER;
        t.write_after = 1;
        run_trial(&t); /* KV_OK with exactly j operations, then usable */
        t.flags = KV_RECOVER | KV_READONLY;
        t.write_after = 0;
        run_trial(&t); /* read-only recovery gives the same prefix */
        tried++;
        G.recover_trials += 3;
    }
    flush_trials();
    if (tried == 0)
        fail_msg("no tail value was found verbatim in the WAL; cannot aim a flip at a record");
    print_message("[ corrupt  ] KV_RECOVER: %zu records damaged, %zu trials\n", tried,
                  G.recover_trials);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corrupt_manifest),
        cmocka_unit_test(test_corrupt_snapshot),
        cmocka_unit_test(test_corrupt_wal),
        cmocka_unit_test(test_corrupt_other),
        cmocka_unit_test(test_recover_middle_record),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
