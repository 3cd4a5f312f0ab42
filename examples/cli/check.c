/*
 * check.c — `kyro DIR check`: verify every file of a database directory,
 * without changing any of them, and say which file is damaged and how.
 *
 * The files are read through the library's own modules (the tool links the
 * static library, so lib/manifest.h, lib/snapshot.h and lib/wal.h are there),
 * file by file, so a damaged file is named even when kv_open would only say
 * KV_ECORRUPT:
 *
 *   MANIFEST   magic, version, size, checksum, id invariants (manifest_read);
 *   snapshot   the one the manifest names: header checksum, placement and
 *              checksum of every section, keys strictly ascending, value
 *              references contiguous and inside the values section, the
 *              stored model (snap_load). Then, on the loaded run: the model
 *              covers exactly the n keys; every key is found by the learned
 *              index at its own position inside the model's error window (no
 *              fallback), and every gap between keys gives the right lower
 *              bound; every value reference lies inside its segment and the
 *              lengths add up to the header's value bytes. On a damaged file
 *              the header and section table are read again here to say which
 *              part failed (magic, version, header checksum, a section's
 *              checksum).
 *   WAL        every live log (id >= the manifest's), in order: header, every
 *              record's checksum, type, length and padding, sequence numbers
 *              rising by one (wal_replay); each record's payload parsed here
 *              (a put's key and length, a delete's key, every entry of a
 *              batch); and the sequence chain: the first record past the
 *              snapshot follows the snapshot's max_seq, and each log follows
 *              the one before it. A bad record with valid records after it is
 *              damage, named with its byte offset. A bad record at the very
 *              end is a torn tail (a write cut by a crash that was never
 *              acknowledged): reported as a warning, since kv_open drops it
 *              and loses nothing; likewise a torn tail with later logs after
 *              it is damage.
 *   others     snapshots and logs the manifest no longer names, *.tmp files
 *              left by an interrupted snapshot or manifest write, and unknown
 *              files are listed (kv_open removes the first two kinds).
 *
 * When every file passes, the database is also opened read-only through the
 * public API and walked: keys strictly ascending, each pair found again by a
 * point lookup (through the index) with the same bytes, and the count equal
 * to the live-key statistic.
 *
 * Output: one line per file on stdout ("ok" or "DAMAGED: ..."), warnings and
 * damage also on stderr as "kyro: check: FILE: ...", then a summary line.
 * Exit 0 when nothing is damaged (warnings allowed), 7 (KV_ECORRUPT) when a
 * file is damaged, 12 (KV_EVERSION) when the only problem is an unknown
 * format version, 1 when DIR holds no database.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli.h"
#include "manifest.h"
#include "rmi.h"
#include "run.h"
#include "snapshot.h"
#include "wal.h"

typedef struct {
    const char *dir;
    unsigned damaged, version, warnings;
    char first_bad[64]; /* the first damaged file, for the summary */
} checker;

/* "FILE: DAMAGED: ..." on stdout and stderr. */
__attribute__((format(printf, 4, 5))) static void damaged(checker *ck, const char *file, int rc,
                                                          const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (rc == KV_EVERSION)
        ck->version++;
    else
        ck->damaged++;
    if (!ck->first_bad[0])
        snprintf(ck->first_bad, sizeof ck->first_bad, "%s", file);
    printf("%s: DAMAGED: %s\n", file, msg);
    cli_err("check: %s: %s", file, msg);
}

__attribute__((format(printf, 3, 4))) static void warning(checker *ck, const char *file,
                                                          const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ck->warnings++;
    printf("%s: warning: %s\n", file, msg);
    cli_err("check: %s: warning: %s", file, msg);
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Read all of dir/name (at most max bytes). NULL with errno on failure. */
static uint8_t *slurp(const char *dir, const char *name, size_t max, size_t *size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return NULL;
    }
    size_t n = (size_t)st.st_size < max ? (size_t)st.st_size : max;
    uint8_t *p = malloc(n ? n : 1);
    size_t got = 0;
    while (p && got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *size = got;
    return p;
}

static int parse_id(const char *name, const char *prefix, const char *suffix, uint64_t *id)
{
    size_t pl = strlen(prefix), sl = strlen(suffix), n = strlen(name);
    if (n != pl + 16 + sl || strncmp(name, prefix, pl) != 0 || strcmp(name + pl + 16, suffix) != 0)
        return 0;
    uint64_t v = 0;
    for (size_t i = pl; i < pl + 16; i++) {
        char c = name[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                                            : 16u;
        if (d == 16)
            return 0;
        v = v << 4 | d;
    }
    *id = v;
    return 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- MANIFEST ------------------------------------------------------------ */

static const char *manifest_why(const uint8_t *p, size_t n)
{
    if (n < 16 || memcmp(p, "KYROMANI", 8) != 0)
        return n < 16 ? "too short to hold a header" : "bad magic";
    if (le32(p + 8) != 1)
        return "unknown format version";
    if (n != 48 || le32(p + 12) != 48)
        return "wrong size (a manifest is 48 bytes)";
    if (le64(p + 40) != XXH3_64bits(p, 40))
        return "checksum mismatch";
    return "ids break the invariants (wal_id >= 1, next_id > wal_id, next_id > snapshot_id)";
}

/* ---- snapshot ------------------------------------------------------------ */

/* Which part of a snapshot snap_load refused (re-reading header and table). */
static void snapshot_why(const char *dir, const char *name, char *out, size_t cap)
{
    static const char *const sect[4] = {"keys", "value references", "values", "model"};
    size_t n = 0;
    uint8_t *p = slurp(dir, name, SIZE_MAX, &n);
    if (!p) {
        snprintf(out, cap, "cannot read it: %s", strerror(errno));
        return;
    }
    if (n == 0)
        snprintf(out, cap, "empty file");
    else if (n < 16 || memcmp(p, "KYROSNAP", 8) != 0)
        snprintf(out, cap, "bad magic");
    else if (le32(p + 8) != 1)
        snprintf(out, cap, "unknown format version %" PRIu32, le32(p + 8));
    else if (n < 192 || le32(p + 12) != 192)
        snprintf(out, cap, "header truncated or wrong header size");
    else if (le64(p + 184) != XXH3_64bits(p, 184))
        snprintf(out, cap, "header checksum mismatch");
    else {
        out[0] = '\0';
        uint64_t end = 192;
        for (int s = 0; s < 4 && !out[0]; s++) {
            const uint8_t *e = p + 40 + 24 * s;
            uint64_t off = le64(e), len = le64(e + 8), sum = le64(e + 16);
            if (off < end || off > n || len > n - off)
                snprintf(out, cap, "%s section out of bounds (file of %zu bytes, truncated or "
                         "extended?)", sect[s], n);
            else if (XXH3_64bits(p + off, (size_t)len) != sum)
                snprintf(out, cap, "%s section checksum mismatch (bytes %" PRIu64 "..%" PRIu64 ")",
                         sect[s], off, off + len);
            end = off + len;
        }
        if (!out[0] && end != n)
            snprintf(out, cap, "%zu bytes after the last section (garbage appended?)",
                     (size_t)(n - end));
        if (!out[0])
            snprintf(out, cap, "nonzero padding, a bad key order, value reference or model");
    }
    free(p);
}

/* The run's own invariants, beyond what snap_load verified. */
static void check_run(checker *ck, const char *name, const run *r, uint64_t *models,
                      uint64_t *max_err)
{
    uint64_t bad = 0, value_bytes = 0;
    if (!r->index || rmi_key_count(r->index) != r->n) {
        damaged(ck, name, KV_ECORRUPT, "the model covers %zu keys, the file holds %" PRIu64,
                r->index ? rmi_key_count(r->index) : (size_t)0, r->n);
        return;
    }
    *models = rmi_leaf_count(r->index);
    *max_err = rmi_max_error(r->index);
    for (uint64_t i = 0; i < r->n; i++) {
        size_t probed = 0;
        int fallback = 0;
        size_t at = rmi_lower_bound(r->index, r->keys, r->keys[i], &probed, &fallback);
        if (at != i || fallback) {
            if (bad++ < 5)
                damaged(ck, name, KV_ECORRUPT,
                        "key %" PRIu64 " (position %" PRIu64 ") found at %zu by the index%s", r->keys[i],
                        i, at, fallback ? ", outside the model's error window" : "");
        }
        /* A key between two stored ones: its lower bound is the next one. */
        if (i + 1 < r->n && r->keys[i + 1] - r->keys[i] > 1) {
            uint64_t gap = r->keys[i] + (r->keys[i + 1] - r->keys[i]) / 2;
            at = rmi_lower_bound(r->index, r->keys, gap, NULL, NULL);
            if (at != i + 1 && bad++ < 5)
                damaged(ck, name, KV_ECORRUPT,
                        "absent key %" PRIu64 ": the index gives position %zu, not %" PRIu64, gap, at,
                        i + 1);
        }
        const run_vref vr = run_vref_at(r, i);
        const run_vref *v = &vr;
        if (v->seg >= r->nsegs || v->off > r->segs[v->seg]->len ||
            v->len > r->segs[v->seg]->len - v->off) {
            if (bad++ < 5)
                damaged(ck, name, KV_ECORRUPT, "the value of key %" PRIu64 " lies outside its segment",
                        r->keys[i]);
        }
        value_bytes += v->len;
    }
    if (value_bytes != r->value_bytes && bad++ < 5)
        damaged(ck, name, KV_ECORRUPT, "values add up to %" PRIu64 " bytes, the header says %" PRIu64,
                value_bytes, r->value_bytes);
}

/* ---- WAL ----------------------------------------------------------------- */

typedef struct {
    uint64_t snap_seq;   /* records up to this are covered by the snapshot */
    uint64_t expect;     /* the next seq the chain needs (0: not started) */
    uint64_t first, last, records, puts, dels, batches, entries, covered;
    char why[160];       /* set when a record is malformed or out of sequence */
} wal_scan;

static int wal_record(void *arg, uint32_t type, uint64_t seq, const uint8_t *p, size_t len)
{
    wal_scan *w = arg;
    if (!w->first)
        w->first = seq;
    w->last = seq;
    w->records++;
    if (seq <= w->snap_seq) {
        w->covered++;
    } else {
        if (w->expect && seq != w->expect) {
            snprintf(w->why, sizeof w->why,
                     "record seq %" PRIu64 " where %" PRIu64 " was due (%s)", seq, w->expect,
                     w->expect == w->snap_seq + 1 ? "a gap after the snapshot's max seq"
                                                  : "a gap in the sequence");
            return KV_ECORRUPT;
        }
        w->expect = seq + 1;
    }
    switch (type) {
    case WAL_PUT:
        if (len < 8 || len - 8 > KV_MAX_VALUE) {
            snprintf(w->why, sizeof w->why, "put record seq %" PRIu64 " of %zu bytes", seq, len);
            return KV_ECORRUPT;
        }
        w->puts++;
        return KV_OK;
    case WAL_DEL:
        if (len != 8) {
            snprintf(w->why, sizeof w->why, "delete record seq %" PRIu64 " of %zu bytes", seq, len);
            return KV_ECORRUPT;
        }
        w->dels++;
        return KV_OK;
    case WAL_BATCH: {
        wal_batch_cursor c = {p, p + len};
        int op, rc;
        uint64_t key;
        const uint8_t *val;
        size_t vlen;
        while ((rc = wal_batch_next(&c, &op, &key, &val, &vlen)) == 1)
            w->entries++;
        if (rc != 0) {
            snprintf(w->why, sizeof w->why, "batch record seq %" PRIu64 ": malformed entry at "
                     "payload byte %zu", seq, (size_t)(c.p - p));
            return KV_ECORRUPT;
        }
        w->batches++;
        return KV_OK;
    }
    default:
        snprintf(w->why, sizeof w->why, "record seq %" PRIu64 " of unknown type %" PRIu32, seq,
                 type);
        return KV_ECORRUPT;
    }
}

/* Check one live log; returns 1 if it ends in a torn tail. */
static int check_wal(checker *ck, const char *name, wal_scan *w, int last_log)
{
    char path[4096];
    uint64_t valid_end = 0, last_seq = 0, size = 0;
    int torn = 0;
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", ck->dir, name);
    if (stat(path, &st) == 0)
        size = (uint64_t)st.st_size;
    uint64_t rec0 = w->records, puts0 = w->puts, dels0 = w->dels, batches0 = w->batches;
    w->first = 0;
    w->why[0] = '\0';
    int rc = wal_replay(path, 0, 0, wal_record, w, &valid_end, &last_seq, &torn);
    if (rc == KV_EVERSION) {
        damaged(ck, name, rc, "unknown format version");
        return 0;
    }
    if (rc == KV_EIO) {
        damaged(ck, name, KV_ECORRUPT, "cannot read it: %s", strerror(wal_last_errno()));
        return 0;
    }
    if (rc != KV_OK) {
        if (w->why[0]) {
            damaged(ck, name, rc, "%s", w->why);
            return 0;
        }
        /* Where is the first bad record? The valid prefix ends there. */
        uint64_t good_end = 0, good_last = 0;
        int t2 = 0;
        int rc2 = wal_replay(path, 0, 1, NULL, NULL, &good_end, &good_last, &t2);
        if (rc2 == KV_OK && good_end >= WAL_HEADER_SIZE)
            damaged(ck, name, rc,
                    "bad record at byte %" PRIu64 " (after seq %" PRIu64 ") with valid records "
                    "after it; %" PRIu64 " of %" PRIu64 " bytes are good (kv_open with KV_RECOVER "
                    "keeps them)",
                    good_end, good_last, good_end, size);
        else
            damaged(ck, name, rc, "bad header (magic, size, checksum or first seq)");
        return 0;
    }
    if (torn && valid_end == 0) {
        warning(ck, name, "a header cut short while the log was being created (%" PRIu64 " bytes); "
                "the next writable open rewrites it", size);
    } else if (torn) {
        if (last_log)
            warning(ck, name, "torn tail: %" PRIu64 " bytes after byte %" PRIu64 " do not form a "
                    "valid record (a write cut by a crash, never acknowledged); the next "
                    "writable open drops them", size - valid_end, valid_end);
        else
            damaged(ck, name, KV_ECORRUPT, "bad record at byte %" PRIu64 " (after seq %" PRIu64
                    ") with later logs after it", valid_end, last_seq);
    }
    printf("%s: %s, %" PRIu64 " bytes, %" PRIu64 " records (%" PRIu64 " puts, %" PRIu64
           " deletes, %" PRIu64 " batches)", name, torn ? "checked" : "ok", size, w->records - rec0,
           w->puts - puts0, w->dels - dels0, w->batches - batches0);
    if (w->records > rec0)
        printf(", seq %" PRIu64 "..%" PRIu64, w->first, w->last);
    printf(", every checksum verified\n");
    return torn;
}

/* ---- the directory ---------------------------------------------------------- */

/* The public API's view: open read-only, walk, look every key up again. */
static int check_api(checker *ck, kv_db *db, int fresh, uint64_t *nkeys, uint64_t *bytes)
{
    kv_iter *it;
    kv_stats s;
    uint64_t key, prev = 0, n = 0, bad = 0;
    const void *val;
    size_t len, glen, cap = 0;
    void *buf = NULL;
    int rc = kv_iter_open(db, 0, UINT64_MAX, &it);
    if (rc != KV_OK)
        return rc;
    *bytes = 0;
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        if (n > 0 && key <= prev && bad++ < 10)
            cli_err("check: keys out of order: %" PRIu64 " after %" PRIu64, key, prev);
        if (len > cap) {
            void *nb = realloc(buf, len);
            if (!nb) {
                kv_iter_close(it);
                free(buf);
                return KV_ENOMEM;
            }
            buf = nb;
            cap = len;
        }
        int g = kv_get(db, key, buf, cap, &glen);
        if ((g != KV_OK || glen != len || (len > 0 && memcmp(buf, val, len) != 0)) && bad++ < 10)
            cli_err("check: key %" PRIu64 ": point lookup disagrees with the scan (%s)", key,
                    g != KV_OK ? kv_strerror(g) : "different value");
        prev = key;
        n++;
        *bytes += len;
    }
    kv_iter_close(it);
    free(buf);
    if (rc != KV_NOTFOUND)
        return rc;
    if ((rc = kv_stats_get(db, &s)) != KV_OK)
        return rc;
    if (s.keys != n) {
        cli_err("check: the scan found %" PRIu64 " keys but the statistics say %" PRIu64, n, s.keys);
        bad++;
    }
    /* Only present keys were looked up since this open: none may leave the
     * index's window (a shell's earlier gets of absent keys could). */
    if (fresh && s.index_fallbacks != 0) {
        cli_err("check: %" PRIu64 " lookups left the learned index's error window", s.index_fallbacks);
        bad++;
    }
    *nkeys = n;
    if (bad) {
        ck->damaged++;
        printf("database: DAMAGED: %" PRIu64 " disagreement(s) between scan, point lookups and "
               "statistics\n", bad);
    }
    return KV_OK;
}

int check_dir(const char *dir, kv_db *open_db)
{
    checker ck = {.dir = dir};
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        cli_err("%s: no database here", dir);
        return EXIT_NOTFOUND;
    }
    DIR *d = opendir(dir);
    if (!d) {
        cli_err("%s: %s", dir, strerror(errno));
        return EXIT_IO;
    }
    uint64_t *wals = NULL, *snaps = NULL, id;
    size_t nwal = 0, nsnap = 0, cap_w = 0, cap_s = 0;
    int have_manifest = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        size_t nl = strlen(nm);
        if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0 || strcmp(nm, "LOCK") == 0)
            continue;
        if (strcmp(nm, MANIFEST_NAME) == 0) {
            have_manifest = 1;
        } else if (parse_id(nm, "wal-", ".log", &id)) {
            if (nwal == cap_w) {
                cap_w = cap_w ? 2 * cap_w : 8;
                uint64_t *g = realloc(wals, cap_w * sizeof *wals);
                if (!g)
                    abort();
                wals = g;
            }
            wals[nwal++] = id;
        } else if (parse_id(nm, "snap-", ".kyro", &id)) {
            if (nsnap == cap_s) {
                cap_s = cap_s ? 2 * cap_s : 4;
                uint64_t *g = realloc(snaps, cap_s * sizeof *snaps);
                if (!g)
                    abort();
                snaps = g;
            }
            snaps[nsnap++] = id;
        } else if (nl > 4 && strcmp(nm + nl - 4, ".tmp") == 0) {
            warning(&ck, nm, "left by an interrupted snapshot or manifest write; the next "
                    "writable open removes it");
        } else {
            warning(&ck, nm, "not a database file");
        }
    }
    closedir(d);
    if (nwal)
        qsort(wals, nwal, sizeof *wals, cmp_u64);

    manifest m = {0};
    int err = 0, rc;
    if (!have_manifest) {
        free(wals);
        free(snaps);
        if (nwal || nsnap) {
            damaged(&ck, MANIFEST_NAME, KV_ECORRUPT, "missing, but data files are there");
            printf("check: DAMAGED: %s\n", ck.first_bad);
            return 3 - KV_ECORRUPT;
        }
        cli_err("%s: no database here", dir);
        return EXIT_NOTFOUND;
    }
    rc = manifest_read(dir, &m, &err);
    if (rc != KV_OK) {
        size_t n = 0;
        uint8_t *p = slurp(dir, MANIFEST_NAME, 4096, &n);
        damaged(&ck, MANIFEST_NAME, rc, "%s",
                rc == KV_EIO ? strerror(err) : p ? manifest_why(p, n) : "unreadable");
        free(p);
    } else {
        printf("%s: ok, snapshot %" PRIu64 ", first log %" PRIu64 ", next id %" PRIu64
               ", checksum verified\n", MANIFEST_NAME, m.snapshot_id, m.wal_id, m.next_id);
    }

    /* The snapshot. */
    uint64_t snap_seq = 0, models = 0, max_err = 0;
    int snap_known = 1; /* snap_seq is known (no snapshot, or it loaded) */
    if (rc == KV_OK && m.snapshot_id) {
        snap_known = 0;
        char name[64];
        manifest_snap_name(m.snapshot_id, name);
        run *r = NULL;
        uint64_t bytes = 0;
        int serr = 0;
        int src = snap_load(dir, name, &r, &snap_seq, &bytes, &serr);
        if (src == KV_OK) {
            snap_known = 1;
            unsigned before = ck.damaged;
            check_run(&ck, name, r, &models, &max_err);
            if (ck.damaged == before)
                printf("%s: ok, %" PRIu64 " bytes, %" PRIu64 " keys, %" PRIu64 " value bytes, "
                       "max seq %" PRIu64 "; every section checksum verified, keys ascending, "
                       "value references in range, every key found by the index in its window "
                       "(%" PRIu64 " models, max error %" PRIu64 ")\n",
                       name, bytes, r->n, r->value_bytes, snap_seq, models, max_err);
            run_unref(r);
        } else if (serr == ENOENT) {
            damaged(&ck, name, KV_ECORRUPT, "named by the MANIFEST but missing");
        } else if (src == KV_EIO || src == KV_ENOMEM) {
            damaged(&ck, name, KV_ECORRUPT, "cannot read it: %s",
                    src == KV_EIO ? strerror(serr) : "out of memory");
        } else {
            char why[256];
            snapshot_why(dir, name, why, sizeof why);
            damaged(&ck, name, src, "%s", why);
        }
        if (m.snapshot_id >= m.next_id)
            damaged(&ck, MANIFEST_NAME, KV_ECORRUPT, "snapshot id not below next id");
    }
    for (size_t i = 0; i < nsnap; i++) {
        if (rc == KV_OK && snaps[i] != m.snapshot_id) {
            char name[64];
            manifest_snap_name(snaps[i], name);
            warning(&ck, name, "a snapshot the MANIFEST does not name (left by an interrupted "
                    "snapshot); the next writable open removes it");
        }
    }

    /* The logs. */
    if (rc == KV_OK) {
        /* Without the snapshot's max seq the chain is checked from the
         * first record on. */
        wal_scan w = {.snap_seq = snap_seq, .expect = snap_known ? snap_seq + 1 : 0};
        size_t live = 0, last = 0;
        for (size_t i = 0; i < nwal; i++) {
            if (wals[i] >= m.wal_id) {
                live++;
                last = i;
            }
        }
        for (size_t i = 0; i < nwal; i++) {
            char name[64];
            manifest_wal_name(wals[i], name);
            if (wals[i] < m.wal_id) {
                warning(&ck, name, "a log older than the MANIFEST's first live log (already "
                        "covered by the snapshot); the next writable open removes it");
                continue;
            }
            unsigned before = ck.damaged + ck.version;
            int torn = check_wal(&ck, name, &w, i == last);
            if (ck.damaged + ck.version != before)
                break; /* later logs cannot be replayed past the damage */
            if (torn && i != last)
                break;
        }
        if (live == 0 && !(m.snapshot_id == 0 && m.wal_id == 1))
            warning(&ck, MANIFEST_NAME, "names log %" PRIu64 ", which is missing (the next "
                    "writable open starts an empty one)", m.wal_id);
    }
    free(wals);
    free(snaps);

    if (ck.damaged || ck.version) {
        printf("check: DAMAGED: %u problem(s)%s, first in %s\n", ck.damaged + ck.version,
               ck.version && !ck.damaged ? " (unknown format version)" : "", ck.first_bad);
        return ck.damaged ? 3 - KV_ECORRUPT : 3 - KV_EVERSION;
    }

    /* Every file passed: the library's view must agree. */
    kv_db *db = open_db;
    if (!db) {
        kv_options o;
        kv_options_init(&o);
        o.flags = KV_READONLY;
        rc = kv_open(dir, &o, &db);
        if (rc == KV_EBUSY) {
            printf("check: files ok; the database is open for writing elsewhere, so its contents "
                   "were not walked\n");
            return 0;
        }
        if (rc != KV_OK) {
            ck.damaged++;
            printf("check: DAMAGED: every file passed but kv_open says %s\n", kv_strerror(rc));
            cli_err("check: every file passed but kv_open says %s", kv_strerror(rc));
            return rc < 0 ? 3 - rc : EXIT_IO;
        }
    }
    uint64_t nkeys = 0, bytes = 0;
    rc = check_api(&ck, db, open_db == NULL, &nkeys, &bytes);
    if (!open_db)
        kv_close(db);
    if (rc != KV_OK)
        return cli_lib_error("check", rc);
    if (ck.damaged) {
        printf("check: DAMAGED: the files pass but the database disagrees with itself\n");
        return 3 - KV_ECORRUPT;
    }
    printf("ok: %" PRIu64 " keys, %" PRIu64 " value bytes, checksums verified, %u warning(s)\n",
           nkeys, bytes, ck.warnings);
    return 0;
}
