/*
 * fuzz_wal.c — WAL replay on hostile files.
 *
 * Two kinds of input:
 *   raw   (first byte != 0xFF): the bytes are the WAL file. Replay runs with
 *         recover 0 and 1; it must never crash, read out of bounds or hang,
 *         and what it hands to apply must be sane: known types, legal
 *         lengths, seqs rising by one from above after_seq, batch payloads
 *         that wal_batch_next walks without leaving the payload.
 *   built (first byte == 0xFF): the rest describes records, which are
 *         written with wal_create/wal_append/wal_sync, so their checksums
 *         are right and replay gets past them; then one piece of damage is
 *         applied (truncate, flip a byte, append junk). Replay must return
 *         exactly the records written before the damage, report a torn tail
 *         or corruption exactly as wal.h says, and recover=1 must keep the
 *         good prefix.
 * In both cases a replay that succeeds is followed by wal_open_append at the
 * returned valid_end, one more record and a second replay, which must see
 * the kept records plus the new one and no torn tail. Any mismatch aborts.
 *
 * Built layout after 0xFF: [seqsel u8][after u8][nrec u8]
 *   nrec x ([type u8][len u16][len payload bytes])  [dmode u8][pos u32][xor u8][junk...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "kyro.h"
#include "wal.h"

#define FUZZ_NAME "fuzz_wal"
#include "fuzz.h"

#define WAL_NAME "wal-0000000000000001.log"
#define MAX_RECS 64

static char dir[256], path[300];

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}

/* One scratch directory per process, made before the first input. */
__attribute__((constructor)) static void make_dir(void)
{
    const char *t = getenv("TMPDIR");
    struct stat st;
    if (!t)
        t = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/fuzz_wal-XXXXXX", t);
    if (!mkdtemp(dir))
        abort();
    snprintf(path, sizeof path, "%s/%s", dir, WAL_NAME);
    atexit(cleanup);
}

static void write_file(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        abort();
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0)
            abort();
        off += (size_t)n;
    }
    close(fd);
}

static uint64_t file_size(void)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Whether every byte of the file from off on is zero. */
static int zeros_from(uint64_t off)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    int ok = fseek(f, (long)off, SEEK_SET) == 0, c;
    while (ok && (c = fgetc(f)) != EOF)
        ok = c == 0;
    fclose(f);
    return ok;
}

/* Whether the file holds a record that verifies, with a seq above `above`, at
 * an 8-byte aligned offset from `from` on: the evidence of a hole that
 * replay looks for (written out again from the format in wal.c). */
static int verifying_record_from(uint64_t from, uint64_t above)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        abort();
    uint64_t size = file_size();
    uint8_t *b = malloc(size ? size : 1);
    if (!b || fread(b, 1, size, f) != size)
        abort();
    fclose(f);
    int found = 0;
    for (uint64_t pos = from; !found && pos + 24 <= size; pos += 8) {
        const uint8_t *h = b + pos;
        uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                       (uint32_t)h[3] << 24;
        unsigned type = h[4] | h[5] << 8, flags = h[6] | h[7] << 8;
        uint64_t seq = 0, sum = 0;
        for (int i = 7; i >= 0; i--) {
            seq = seq << 8 | h[8 + i];
            sum = sum << 8 | h[16 + i];
        }
        int len_ok = type == WAL_PUT   ? len >= 8 && len - 8 <= KV_MAX_VALUE
                     : type == WAL_DEL ? len == 8
                                       : type == WAL_BATCH && len <= WAL_MAX_BATCH;
        uint64_t total = 24 + (((uint64_t)len + 7) & ~(uint64_t)7);
        if (flags || !len_ok || seq <= above || total > size - pos)
            continue;
        int pad_ok = 1;
        for (uint64_t i = 24 + len; i < total; i++)
            pad_ok &= h[i] == 0;
        XXH3_state_t *xs = XXH3_createState();
        if (!xs)
            abort();
        XXH3_64bits_reset(xs);
        XXH3_64bits_update(xs, h, 16);
        XXH3_64bits_update(xs, h + 24, len);
        found = pad_ok && XXH3_64bits_digest(xs) == sum;
        XXH3_freeState(xs);
    }
    free(b);
    return found;
}

/* ---- What replay hands to apply -------------------------------------- */

typedef struct {
    uint32_t type;
    uint64_t seq;
    const uint8_t *payload; /* only valid inside the callback */
    size_t len;
    uint64_t sum; /* cheap fingerprint of the payload */
} seen_rec;

typedef struct {
    uint64_t after_seq;
    uint64_t prev;
    int have_prev;
    size_t n;
    seen_rec recs[MAX_RECS * 2];
    size_t total; /* records seen, including those past recs[] */
    int stop_at;  /* return an error from this record (-1: never) */
} replay_log;

static uint64_t fingerprint(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h ^ n;
}

static int apply(void *ctx, uint32_t type, uint64_t seq, const uint8_t *p, size_t len)
{
    replay_log *l = ctx;
    CHECK(seq > l->after_seq, "apply got seq %llu <= after_seq %llu", (unsigned long long)seq,
          (unsigned long long)l->after_seq);
    CHECK(!l->have_prev || seq == l->prev + 1, "apply got seq %llu after %llu",
          (unsigned long long)seq, (unsigned long long)l->prev);
    l->prev = seq;
    l->have_prev = 1;
    CHECK(len == 0 || p, "apply got a NULL payload of %zu bytes", len);
    switch (type) {
    case WAL_PUT:
        CHECK(len >= 8 && len - 8 <= KV_MAX_VALUE, "WAL_PUT payload of %zu bytes", len);
        break;
    case WAL_DEL:
        CHECK(len == 8, "WAL_DEL payload of %zu bytes", len);
        break;
    case WAL_BATCH: {
        wal_batch_cursor c = {p, p + len};
        int op, rc;
        uint64_t key;
        const uint8_t *val;
        size_t vlen;
        volatile uint8_t sink = 0;
        while ((rc = wal_batch_next(&c, &op, &key, &val, &vlen)) == 1) {
            CHECK(op == WAL_OP_PUT || op == WAL_OP_DEL, "batch entry op %d", op);
            CHECK(c.p >= p && c.p <= p + len, "batch cursor left the payload");
            if (op == WAL_OP_PUT) {
                CHECK(vlen == 0 || (val >= p && val + vlen <= p + len),
                      "batch value outside the payload");
                for (size_t i = 0; i < vlen; i++)
                    sink ^= val[i];
            }
        }
        CHECK(rc == 0 || rc == KV_ECORRUPT, "wal_batch_next = %d", rc);
        (void)sink;
        break;
    }
    default:
        CHECK(0, "apply got record type %u", type);
    }
    volatile uint8_t s2 = 0;
    for (size_t i = 0; i < len; i++)
        s2 ^= p[i];
    (void)s2;
    if (l->n < sizeof l->recs / sizeof l->recs[0])
        l->recs[l->n++] = (seen_rec){type, seq, NULL, len, fingerprint(p, len)};
    if (l->stop_at >= 0 && (int)l->total == l->stop_at) {
        l->total++;
        return KV_ENOMEM; /* any non-OK code must stop replay and come back */
    }
    l->total++;
    return KV_OK;
}

typedef struct {
    int rc, torn;
    uint64_t valid_end, last_seq;
    replay_log log;
} replay_out;

static void replay(uint64_t after_seq, int recover, replay_out *o)
{
    memset(o, 0, sizeof *o);
    o->log.after_seq = after_seq;
    o->log.stop_at = -1;
    o->valid_end = 12345;
    o->rc = wal_replay(path, after_seq, recover, apply, &o->log, &o->valid_end, &o->last_seq,
                       &o->torn);
    CHECK(o->rc == KV_OK || o->rc == KV_ECORRUPT || o->rc == KV_EVERSION,
          "wal_replay (recover %d) = %d", recover, o->rc);
    if (o->rc == KV_OK) {
        uint64_t size = file_size();
        CHECK(o->valid_end <= size, "valid_end %llu past the file (%llu)",
              (unsigned long long)o->valid_end, (unsigned long long)size);
        CHECK(o->valid_end == 0 || (o->valid_end >= WAL_HEADER_SIZE && o->valid_end % 8 == 0),
              "valid_end %llu", (unsigned long long)o->valid_end);
        /* Short of the end without a torn tail only over zeros: the space
         * the writer reserves ahead of its records. */
        CHECK(o->torn || o->valid_end == size || zeros_from(o->valid_end),
              "no torn tail but valid_end %llu < size %llu and non-zero bytes after it",
              (unsigned long long)o->valid_end, (unsigned long long)size);
        if (o->log.total)
            CHECK(o->last_seq == o->log.prev, "last_seq %llu, last applied %llu",
                  (unsigned long long)o->last_seq, (unsigned long long)o->log.prev);
        if (o->valid_end == 0)
            CHECK(o->torn && o->log.total == 0 && o->last_seq == after_seq,
                  "valid_end 0 without a torn empty log");
    }
}

static int same_records(const replay_log *a, const replay_log *b, size_t n)
{
    for (size_t i = 0; i < n && i < a->n && i < b->n; i++) {
        if (a->recs[i].type != b->recs[i].type || a->recs[i].seq != b->recs[i].seq ||
            a->recs[i].len != b->recs[i].len || a->recs[i].sum != b->recs[i].sum)
            return 0;
    }
    return 1;
}

/* After a successful replay: append one record where replay said the log
 * ends, and replay again. */
static void append_after(const replay_out *o)
{
    wal *w;
    uint64_t next = o->last_seq + 1;
    if (o->last_seq == UINT64_MAX)
        return;
    int rc = wal_open_append(dir, WAL_NAME, o->valid_end, next, &w);
    CHECK(rc == KV_OK, "wal_open_append(valid_end %llu, next %llu) = %d",
          (unsigned long long)o->valid_end, (unsigned long long)next, rc);
    uint8_t payload[8 + 5] = {1, 2, 3, 4, 5, 6, 7, 8, 'h', 'e', 'l', 'l', 'o'};
    uint64_t seq, lsn;
    rc = wal_append(w, WAL_PUT, payload, sizeof payload, NULL, 0, &seq, &lsn);
    CHECK(rc == KV_OK && seq == next, "wal_append after reopen = %d, seq %llu", rc,
          (unsigned long long)seq);
    int err = 0;
    rc = wal_sync(w, &err);
    CHECK(rc == KV_OK, "wal_sync = %d (errno %d)", rc, err);
    CHECK(wal_last_seq(w) == next && !wal_failed(w), "wal state after append");
    wal_close(w);

    replay_out r;
    replay(0, 0, &r);
    CHECK(r.rc == KV_OK && !r.torn, "replay after append = %d, torn %d", r.rc, r.torn);
    /* Everything replay delivered before (with after_seq 0) is still there,
     * then the new record. */
    if (o->log.after_seq == 0) {
        CHECK(r.log.total == o->log.total + 1, "after append: %zu records, want %zu",
              r.log.total, o->log.total + 1);
        CHECK(same_records(&o->log, &r.log, o->log.n), "after append: old records changed");
    }
    CHECK(r.log.total >= 1 && r.log.prev == next, "after append: last seq %llu, want %llu",
          (unsigned long long)r.log.prev, (unsigned long long)next);
    CHECK(r.valid_end == file_size(), "after append: valid_end short of the file");
}

/* ---- raw mode ----------------------------------------------------------- */

static void run_raw(const uint8_t *data, size_t size)
{
    write_file(data, size);
    replay_out a, b;
    replay(0, 0, &a);
    replay(0, 1, &b);
    if (a.rc == KV_OK) {
        /* Nothing to recover from: recover=1 must agree exactly. */
        CHECK(b.rc == KV_OK && b.torn == a.torn && b.valid_end == a.valid_end &&
                  b.log.total == a.log.total && same_records(&a.log, &b.log, a.log.n),
              "recover=1 disagrees with a clean recover=0 replay");
    }
    if (a.rc == KV_EVERSION)
        CHECK(b.rc == KV_EVERSION, "recover=1 hides a version mismatch");
    if (b.rc == KV_OK) {
        /* The kept prefix is a prefix of what recover=0 saw before failing. */
        CHECK(same_records(&a.log, &b.log, a.log.n < b.log.n ? a.log.n : b.log.n),
              "recover=1 delivered different records");
    }
    /* An apply error stops replay and comes back unchanged. */
    if (a.rc == KV_OK && a.log.total > 0) {
        replay_log l;
        memset(&l, 0, sizeof l);
        l.stop_at = 0;
        int rc = wal_replay(path, 0, 0, apply, &l, NULL, NULL, NULL);
        CHECK(rc == KV_ENOMEM && l.total == 1, "apply error: replay = %d after %zu records", rc,
              l.total);
    }
    /* after_seq skips a prefix. */
    if (a.rc == KV_OK && a.log.total > 1) {
        replay_out c;
        uint64_t after = a.log.recs[0].seq;
        replay(after, 0, &c);
        CHECK(c.rc == KV_OK && c.log.total == a.log.total - 1, "after_seq: %d, %zu records",
              c.rc, c.log.total);
    }
    if (b.rc == KV_OK)
        append_after(&b);
}

/* ---- built mode ----------------------------------------------------------- */

typedef struct {
    uint32_t type;
    uint64_t seq, off, end; /* record's byte range in the file */
    size_t len;
    uint64_t sum;
} built_rec;

static void run_built(const uint8_t *data, size_t size)
{
    size_t pos = 0;
#define TAKE() (pos < size ? data[pos++] : 0)
    static const uint64_t firsts[] = {1, 7, (uint64_t)1 << 32, UINT64_MAX - 300};
    uint64_t first_seq = firsts[TAKE() % 4];
    unsigned after_sel = TAKE();
    size_t nrec = TAKE() % (MAX_RECS + 1);

    unlink(path);
    wal *w;
    int rc = wal_create(dir, WAL_NAME, first_seq, &w);
    CHECK(rc == KV_OK, "wal_create = %d", rc);
    built_rec recs[MAX_RECS];
    static uint8_t payload[65536 + 8];
    uint64_t off = WAL_HEADER_SIZE;
    for (size_t i = 0; i < nrec; i++) {
        uint32_t type = 1 + TAKE() % 3;
        size_t len = TAKE();
        len |= (size_t)TAKE() << 8;
        if (type == WAL_DEL)
            len = 8;
        else if (type == WAL_PUT && len < 8)
            len = 8;
        for (size_t j = 0; j < len; j++)
            payload[j] = pos < size ? data[pos++] : (uint8_t)(j * 31 + i);
        /* Split the payload over p1/p2 the way db_write does for puts. */
        size_t n1 = type == WAL_PUT ? 8 : len;
        uint64_t seq, lsn;
        rc = wal_append(w, type, payload, n1, payload + n1, len - n1, &seq, &lsn);
        CHECK(rc == KV_OK, "wal_append(type %u, %zu bytes) = %d", type, len, rc);
        CHECK(seq == first_seq + i, "wal_append seq %llu, want %llu", (unsigned long long)seq,
              (unsigned long long)(first_seq + i));
        uint64_t total = 24 + ((len + 7) & ~(uint64_t)7);
        CHECK(lsn == off + total, "wal_append lsn %llu, want %llu", (unsigned long long)lsn,
              (unsigned long long)(off + total));
        recs[i] = (built_rec){type, seq, off, off + total, len, fingerprint(payload, len)};
        off += total;
        /* Commit now and then, in every mode, as writers do. */
        if (i % 3 == 0) {
            int err = 0;
            rc = wal_commit(w, lsn, (int)(i % 9 / 3), NULL, &err);
            CHECK(rc == KV_OK, "wal_commit = %d", rc);
        }
    }
    int err = 0;
    rc = wal_sync(w, &err);
    CHECK(rc == KV_OK, "wal_sync = %d", rc);
    CHECK(wal_bytes(w) == off, "wal_bytes %llu, want %llu", (unsigned long long)wal_bytes(w),
          (unsigned long long)off);
    wal_close(w);
    CHECK(file_size() == off, "file is %llu bytes, want %llu", (unsigned long long)file_size(),
          (unsigned long long)off);

    /* Damage. */
    unsigned dmode = TAKE() % 4;
    uint64_t dpos = TAKE();
    dpos |= (uint64_t)TAKE() << 8;
    dpos |= (uint64_t)TAKE() << 16;
    dpos |= (uint64_t)TAKE() << 24;
    uint8_t x = TAKE();
    uint64_t size_now = off;
    int damaged_rec = -2; /* -2 none, -1 header, else record index */
    uint64_t damaged_at = 0;
    if (dmode == 1) {
        size_now = dpos % (off + 1);
        CHECK(truncate(path, (off_t)size_now) == 0, "truncate");
    } else if (dmode == 2 && x) {
        uint64_t at = dpos % off;
        int fd = open(path, O_RDWR);
        uint8_t b;
        CHECK(fd >= 0 && pread(fd, &b, 1, (off_t)at) == 1, "pread");
        b ^= x;
        CHECK(pwrite(fd, &b, 1, (off_t)at) == 1, "pwrite");
        close(fd);
        damaged_rec = -1;
        damaged_at = at;
        for (size_t i = 0; i < nrec; i++)
            if (at >= recs[i].off && at < recs[i].end)
                damaged_rec = (int)i;
    } else if (dmode == 3 && pos < size) {
        int fd = open(path, O_WRONLY | O_APPEND);
        CHECK(fd >= 0 && write(fd, data + pos, size - pos) == (ssize_t)(size - pos), "append");
        close(fd);
        size_now = off + (size - pos);
    }
#undef TAKE

    /* How many whole records survive, and what replay must say. */
    size_t keep = nrec;
    int want_torn = 0, want_corrupt = 0;
    if (dmode == 1) {
        keep = 0;
        while (keep < nrec && recs[keep].end <= size_now)
            keep++;
        want_torn = size_now != (keep ? recs[keep - 1].end : WAL_HEADER_SIZE);
        if (size_now < WAL_HEADER_SIZE)
            want_torn = 1;
        /* A cut that leaves only zero bytes after the last whole record
         * (a record whose first bytes are zero) looks exactly like the space
         * the writer reserves ahead of its writes: the log's clean end. */
        else if (want_torn && zeros_from(keep ? recs[keep - 1].end : WAL_HEADER_SIZE))
            want_torn = 0;
    } else if (damaged_rec >= 0) {
        keep = (size_t)damaged_rec;
        want_torn = 1;
        want_corrupt = keep + 1 < nrec;
    }

    for (int recover = 0; recover <= 1; recover++) {
        uint64_t after = nrec ? first_seq - 1 + after_sel % (nrec + 1) : 0;
        if (after_sel & 0x80)
            after = 0;
        replay_out o;
        replay(after, recover, &o);
        if (damaged_rec == -1) {
            /* A damaged header: corrupt, wrong version, or (a 32-byte file
             * whose first 16 bytes still look right) a torn empty log. */
            CHECK(o.rc != KV_OK || (off == WAL_HEADER_SIZE && o.torn && o.valid_end == 0),
                  "damaged header accepted");
            continue;
        }
        if (want_corrupt && !recover) {
            CHECK(o.rc == KV_ECORRUPT, "record %d of %zu damaged: replay = %d, want KV_ECORRUPT",
                  damaged_rec, nrec, o.rc);
            continue;
        }
        if (damaged_rec >= 0 && !want_corrupt && !recover && o.rc == KV_ECORRUPT) {
            /* The last record's header damaged (its length, type, flags or
             * seq): replay can no longer tell its payload from records after
             * it, so a payload the fuzzer made hold a record that verifies
             * with a higher seq is a hole with data after it, as wal.h says.
             * Damage after the header leaves the header whole: a torn tail. */
            const built_rec *d = &recs[damaged_rec];
            uint64_t prev = damaged_rec ? recs[damaged_rec - 1].seq : first_seq - 1;
            CHECK(damaged_at < d->off + 16 && verifying_record_from(d->off + 8, prev),
                  "last record damaged at +%llu: replay = KV_ECORRUPT with no record after it",
                  (unsigned long long)(damaged_at - d->off));
            continue;
        }
        if (dmode == 3) {
            /* Junk after the log. The fuzzer can learn checksums from the
             * comparisons it sees, so the junk may hold a record that
             * verifies: with the next seq it is a legitimate record, with
             * another seq it is corruption. Only the records written must
             * come back unchanged. */
            CHECK(o.rc == KV_OK || (o.rc == KV_ECORRUPT && !recover),
                  "replay after junk (recover %d) = %d", recover, o.rc);
            if (o.rc != KV_OK)
                continue;
            keep = nrec;
            for (size_t i = 0, j = 0; i < keep; i++) {
                if (recs[i].seq <= after)
                    continue;
                CHECK(j < o.log.n && o.log.recs[j].seq == recs[i].seq &&
                          o.log.recs[j].sum == recs[i].sum,
                      "junk after the log: record seq %llu lost or changed",
                      (unsigned long long)recs[i].seq);
                j++;
            }
            if (recover == 1 && after == 0)
                append_after(&o);
            continue;
        }
        CHECK(o.rc == KV_OK, "replay (recover %d, damage %u) = %d, want KV_OK", recover, dmode,
              o.rc);
        CHECK(o.torn == want_torn, "replay torn = %d, want %d (damage %u)", o.torn, want_torn,
              dmode);
        /* Exactly the kept records above after_seq, unchanged. */
        size_t want_n = 0;
        for (size_t i = 0; i < keep; i++) {
            if (recs[i].seq <= after)
                continue;
            CHECK(want_n < o.log.n, "record seq %llu missing", (unsigned long long)recs[i].seq);
            const seen_rec *s = &o.log.recs[want_n++];
            CHECK(s->type == recs[i].type && s->seq == recs[i].seq && s->len == recs[i].len &&
                      s->sum == recs[i].sum,
                  "record seq %llu differs after replay", (unsigned long long)recs[i].seq);
        }
        CHECK(o.log.total == want_n, "replay delivered %zu records, want %zu", o.log.total,
              want_n);
        uint64_t want_end = keep ? recs[keep - 1].end : WAL_HEADER_SIZE;
        if (dmode == 1 && size_now < WAL_HEADER_SIZE)
            want_end = 0;
        CHECK(o.valid_end == want_end, "valid_end %llu, want %llu",
              (unsigned long long)o.valid_end, (unsigned long long)want_end);
        uint64_t want_last = keep ? recs[keep - 1].seq : want_end ? first_seq - 1 : after;
        CHECK(o.last_seq == want_last, "last_seq %llu, want %llu", (unsigned long long)o.last_seq,
              (unsigned long long)want_last);
        if (recover == 1 && after == 0)
            append_after(&o);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0 && data[0] == 0xFF)
        run_built(data + 1, size - 1);
    else
        run_raw(data, size);
    return 0;
}
