/*
 * wal.c — the write-ahead log: file format, append, group commit, replay.
 *
 * Owns one WAL file per `wal` handle. Every write (or batch) becomes one
 * record; a record is durable once the bytes up to its end lsn have been
 * fdatasync'd. An lsn is simply a byte offset in the file.
 *
 * File format (version 1). All integers little-endian, fixed width; offsets
 * in bytes.
 *
 *   File header, 32 bytes, at offset 0:
 *     0  u8[8]  magic "KYROWAL1"
 *     8  u32    format version = 1
 *    12  u32    header size = 32
 *    16  u64    first_seq: the seq of the first record (>= 1)
 *    24  u64    XXH3_64 of bytes 0..24
 *
 *   Records follow back to back from offset 32; each starts 8-byte aligned:
 *     0  u32    payload_len
 *     4  u16    type: WAL_PUT 1, WAL_DEL 2, WAL_BATCH 3
 *     6  u16    flags = 0
 *     8  u64    seq: first_seq for the first record, +1 for each next one
 *    16  u64    checksum = XXH3_64 over record bytes 0..16 then the payload
 *    24  u8[payload_len]  payload
 *        u8[]   zero padding up to the next multiple of 8 (not in the
 *               checksum, but must be zero)
 *   A record is 24 + round_up(payload_len, 8) bytes.
 *
 *   Payloads:
 *     WAL_PUT    u64 key, then the value bytes (payload_len = 8 + value
 *                length, value length <= KV_MAX_VALUE)
 *     WAL_DEL    u64 key (payload_len = 8)
 *     WAL_BATCH  entries back to back (payload_len <= WAL_MAX_BATCH):
 *                  u8 op (WAL_OP_PUT 1 / WAL_OP_DEL 2), u64 key,
 *                  and for a put: u32 value length, then the value bytes.
 *                No alignment inside a batch. The same encoding is kv_batch's
 *                in-memory form (wal_batch_add / wal_batch_next).
 *
 * Replay. The header must verify: bad magic, header size, checksum or a
 * first_seq of 0 give KV_ECORRUPT, a good magic with another version gives
 * KV_EVERSION. The one exception is a file cut short while wal_create was
 * writing its header: a file of at most 32 bytes whose header does not
 * verify, and whose first min(size, 16) bytes are each either zero or the
 * constant header byte (magic, version, size) at that position, is a torn
 * empty log (valid_end 0, torn 1); wal_open_append then writes a fresh
 * header. wal_create fsyncs the file and the directory before any record is
 * appended, so any longer file, or bytes after a bad header, is corruption.
 *
 * Records are then walked from offset 32. A record is good when it fits in
 * the file, its flags are 0, its type is known, its payload_len is legal for
 * the type, its checksum matches, its padding is zero and its seq is the
 * previous seq + 1. At the first record that is not good:
 *   - a record that verifies in every other respect but carries the wrong
 *     seq is corruption (a torn write cannot produce it);
 *   - otherwise every later 8-byte aligned offset is tried: if any holds a
 *     verifying record with a seq above the last good one, the log is
 *     corrupt (a hole with data after it), else the rest is a torn tail.
 *     When the bad record's header is whole (flags 0, a legal length for a
 *     known type, and the seq expected next), the bytes its length covers
 *     are its payload, whatever they hold (a value may be a copy of a log
 *     file), and the search starts after them; only if the record verifies
 *     with a shorter length ending where a good record with the following
 *     seq begins was its length field the damage, and the log is corrupt.
 * A first bad record that starts an all-zero rest of the file is no damage
 * at all: the writer reserves file space ahead of its writes (see reserve),
 * so zeros there are the end of the log (torn = 0).
 * Corruption returns KV_ECORRUPT, or with recover != 0 keeps the good prefix
 * and reports torn = 1. The scan costs one checksum per plausible header;
 * crafted input can make it quadratic in the tail size, but never unbounded,
 * and every read is checked against the file size. The file is mmap'd
 * read-only for replay.
 *
 * Writer. The file is grown with written zeros 1 MiB at a time ahead of the
 * writes that are synced at once (reserve), and trimmed back to the last
 * record by wal_close. Appends go to a 1 MiB user-space buffer under the
 * mutex; a record that does not fit makes the appender flush the buffer
 * itself, and a record larger than the buffer is written straight after it.
 * Only one thread does file I/O at a time (io_busy); it takes the current
 * buffer and swaps in the spare one, so appends continue while it writes and
 * syncs outside the mutex. wal_commit is group commit: a caller whose lsn is
 * already covered returns; if I/O is in flight it sleeps until that I/O is
 * released (await_io_release) and returns if the release covered it, else
 * re-checks; else it becomes the leader for everything buffered so far,
 * after waiting briefly for the writers in flight (await_group).
 * Invariants, under mu:
 *   synced_lsn <= written_lsn <= end_lsn; every buffer boundary is a record
 *   boundary; with io idle, written_lsn + len == end_lsn; written_seq /
 *   synced_seq are the seqs of the last record below written/synced_lsn.
 * Any I/O error makes the handle failed for good (no retry of a failed
 * fsync: the kernel may have dropped the dirty pages); waiters are woken and
 * every call from then on returns KV_EIO with the first errno.
 */
#include "wal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kyro.h"
#include "os.h"

#define WAL_VERSION 1u
#define REC_HDR 24u
#define BUF_CAP ((size_t)1 << 20)
#define MAX_PUT_PAYLOAD (KV_MAX_VALUE + 8)
/* Ahead of the writes that are synced at once, the file is grown with
 * written zeros in steps of this many bytes. An fdatasync that need not
 * also commit a new file size is cheaper on ext4, and so is one whose data
 * lands in blocks already written: a write into a fallocate'd (unwritten)
 * block must also commit the block's conversion, which made every sync
 * that reached a new 4 KiB block about 50 us slower here (bench/walsync).
 * The zeros cost one slower sync per step. Replay reads the zero tail as
 * the end of the log. */
#define PREALLOC_STEP ((uint64_t)1 << 20)
/* Upper bound on a sync leader's wait for the rest of its group. */
#define GROUP_WAIT_MAX_NS 100000u

static const uint8_t wal_magic[8] = {'K', 'Y', 'R', 'O', 'W', 'A', 'L', '1'};

struct wal {
    int fd;
    pthread_mutex_t mu;
    uint8_t *buf[2];     /* buf[cur] takes appends; the other is written */
    int cur;
    size_t len;          /* bytes in buf[cur] */
    uint64_t end_lsn;    /* logical file size including buffered records */
    uint64_t written_lsn, synced_lsn;
    uint64_t last_seq, written_seq, synced_seq;
    uint64_t sync_count;
    int io_busy;         /* one thread is writing/syncing outside mu */
    int failed, err;     /* sticky; err is a positive errno */
    XXH3_state_t *xs;    /* checksum state, used only by the appender */
    /* Group commit sizing (see await_group). */
    atomic_uint queued;      /* sync waiters whose records no leader took yet */
    uint64_t sync_taken_lsn; /* end of the bytes the latest sync leader took */
    const atomic_uint *writers; /* owner's count of writers in flight, or NULL */
    uint64_t last_sync_ns;   /* how long the last write + fdatasync took */
    uint64_t alloc_end;      /* file size written or zero-filled so far (I/O owner only) */
    int alloc_off;           /* reserving failed once: stop trying */
    /* What wal_commit's waiters read without mu (see publish_io). */
    _Atomic uint64_t pub_written_lsn, pub_synced_lsn, pub_written_seq, pub_synced_seq;
    atomic_uint io_epoch;    /* bumped each time the I/O role is released */
    atomic_uint sleepers;    /* waiters asleep on io_epoch, or about to be */
    atomic_uint leader_waiting; /* a sync leader sleeps on queued (await_group) */
};

/* ---- byte helpers ---- */

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
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

static uint16_t get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
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

static uint64_t pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

/* errno of this thread's last failed OS call here, for wal_last_errno. */
static _Thread_local int last_os_errno;

static int os_rc(int neg_errno)
{
    last_os_errno = -neg_errno;
    return neg_errno == -ENOMEM ? KV_ENOMEM : KV_EIO;
}

int wal_last_errno(void)
{
    return last_os_errno;
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, name, b + 1);
    }
    return p;
}

/* ---- format ---- */

static void header_encode(uint8_t h[WAL_HEADER_SIZE], uint64_t first_seq)
{
    memcpy(h, wal_magic, 8);
    put_le32(h + 8, WAL_VERSION);
    put_le32(h + 12, WAL_HEADER_SIZE);
    put_le64(h + 16, first_seq);
    put_le64(h + 24, XXH3_64bits(h, 24));
}

/* Verify a complete 32-byte header. */
static int header_decode(const uint8_t *h, uint64_t *first_seq)
{
    if (memcmp(h, wal_magic, 8) != 0)
        return KV_ECORRUPT;
    if (get_le32(h + 8) != WAL_VERSION)
        return KV_EVERSION;
    if (get_le32(h + 12) != WAL_HEADER_SIZE || get_le64(h + 24) != XXH3_64bits(h, 24))
        return KV_ECORRUPT;
    *first_seq = get_le64(h + 16);
    return *first_seq == 0 ? KV_ECORRUPT : KV_OK;
}

/* A file of at most 32 bytes left by a crash inside wal_create: each of its
 * first 16 bytes (those known in advance) is zero or the header's byte. */
static int header_torn(const uint8_t *p, size_t size)
{
    uint8_t want[WAL_HEADER_SIZE];
    if (size > WAL_HEADER_SIZE)
        return 0;
    header_encode(want, 1);
    for (size_t i = 0; i < size && i < 16; i++)
        if (p[i] != 0 && p[i] != want[i])
            return 0;
    return 1;
}

static int payload_len_ok(uint32_t type, uint64_t len)
{
    switch (type) {
    case WAL_PUT:
        return len >= 8 && len <= MAX_PUT_PAYLOAD;
    case WAL_DEL:
        return len == 8;
    case WAL_BATCH:
        return len <= WAL_MAX_BATCH;
    default:
        return 0;
    }
}

/* Records whose checksummed bytes fit here are hashed in one call. */
#define SMALL_RECORD 240

/* Fill bytes 0..24 of a record header; the checksum covers h[0..16) + payload. */
static void rec_encode(XXH3_state_t *xs, uint8_t h[REC_HDR], uint32_t type, uint32_t len,
                       uint64_t seq, const void *p1, size_t n1, const void *p2, size_t n2)
{
    put_le32(h, len);
    put_le16(h + 4, (uint16_t)type);
    put_le16(h + 6, 0);
    put_le64(h + 8, seq);
    uint64_t sum;
    if (16 + n1 + n2 <= SMALL_RECORD) {
        /* One-shot XXH3 on a copy: the same value as streaming, at a
         * fraction of the cost for the small records most writes make. */
        uint8_t tmp[SMALL_RECORD];
        memcpy(tmp, h, 16);
        if (n1)
            memcpy(tmp + 16, p1, n1);
        if (n2)
            memcpy(tmp + 16 + n1, p2, n2);
        sum = XXH3_64bits(tmp, 16 + n1 + n2);
    } else {
        XXH3_64bits_reset(xs);
        XXH3_64bits_update(xs, h, 16);
        if (n1)
            XXH3_64bits_update(xs, p1, n1);
        if (n2)
            XXH3_64bits_update(xs, p2, n2);
        sum = XXH3_64bits_digest(xs);
    }
    put_le64(h + 16, sum);
}

typedef struct {
    uint32_t type;
    uint32_t len;   /* payload length */
    uint64_t seq;
    uint64_t total; /* record size with padding */
} rec_info;

static int all_zero(const uint8_t *p, uint64_t n)
{
    for (; n >= 8; p += 8, n -= 8) {
        if (get_le64(p) != 0)
            return 0;
    }
    for (; n > 0; p++, n--) {
        if (*p)
            return 0;
    }
    return 1;
}

/* The checksum of a record whose header bytes 0..16 are h16 and whose
 * payload is the len bytes at payload. */
static uint64_t rec_sum(XXH3_state_t *xs, const uint8_t *h16, const uint8_t *payload,
                        uint32_t len)
{
    if (16 + (size_t)len <= SMALL_RECORD) {
        uint8_t tmp[SMALL_RECORD];
        memcpy(tmp, h16, 16);
        if (len)
            memcpy(tmp + 16, payload, len);
        return XXH3_64bits(tmp, 16 + (size_t)len);
    }
    XXH3_64bits_reset(xs);
    XXH3_64bits_update(xs, h16, 16);
    if (len)
        XXH3_64bits_update(xs, payload, len);
    return XXH3_64bits_digest(xs);
}

/* Decode the header at off: 1 if it fits in the file and its flags and its
 * length for its type are legal (nothing else checked), filling *ri. */
static int rec_header(const uint8_t *base, uint64_t size, uint64_t off, rec_info *ri)
{
    if (off > size || size - off < REC_HDR)
        return 0;
    const uint8_t *h = base + off;
    ri->len = get_le32(h);
    ri->type = get_le16(h + 4);
    ri->seq = get_le64(h + 8);
    if (get_le16(h + 6) != 0 || !payload_len_ok(ri->type, ri->len))
        return 0;
    ri->total = REC_HDR + pad8(ri->len);
    return 1;
}

/* Does base[off..size) start with a record that verifies (seq aside)? */
static int rec_verify(XXH3_state_t *xs, const uint8_t *base, uint64_t size, uint64_t off,
                      rec_info *ri)
{
    if (!rec_header(base, size, off, ri) || ri->total > size - off)
        return 0;
    const uint8_t *h = base + off;
    return all_zero(h + REC_HDR + ri->len, ri->total - REC_HDR - ri->len) &&
           rec_sum(xs, h, h + REC_HDR, ri->len) == get_le64(h + 16);
}

/* The record at off did not verify, but its header is whole and carries the
 * seq expected next (bad); its length covers the file up to end. Was its
 * length field the damage? Then it verifies with a shorter length that ends
 * where a good record with the seq after its own begins, and the records
 * from there on are real ones. */
static int rec_length_damaged(XXH3_state_t *xs, const uint8_t *base, uint64_t size,
                              uint64_t off, uint64_t end, const rec_info *bad)
{
    const uint8_t *payload = base + off + REC_HDR;
    uint8_t h16[16];
    memcpy(h16, base + off, 16);
    rec_info ri;
    for (uint64_t pos = off + REC_HDR; pos < end && size - pos >= REC_HDR; pos += 8) {
        if (!rec_verify(xs, base, size, pos, &ri) || ri.seq != bad->seq + 1)
            continue;
        uint64_t room = pos - off - REC_HDR; /* payload and padding, a multiple of 8 */
        for (uint64_t len = room >= 7 ? room - 7 : 0; len <= room; len++) {
            if (!payload_len_ok(bad->type, len) || !all_zero(payload + len, room - len))
                continue;
            put_le32(h16, (uint32_t)len);
            if (rec_sum(xs, h16, payload, (uint32_t)len) == get_le64(base + off + 16))
                return 1;
        }
    }
    return 0;
}

/* ---- replay ---- */

int wal_replay(const char *path, uint64_t after_seq, int recover, wal_apply_fn apply,
               void *ctx, uint64_t *valid_end, uint64_t *last_seq, int *torn)
{
    return wal_replay_peek(path, after_seq, recover, apply, NULL, ctx, valid_end, last_seq, torn);
}

/* Records a peek runs ahead of the one being applied. */
#define PEEK_AHEAD 4

int wal_replay_peek(const char *path, uint64_t after_seq, int recover, wal_apply_fn apply,
                    wal_peek_fn peek, void *ctx, uint64_t *valid_end, uint64_t *last_seq,
                    int *torn)
{
    uint64_t ve_local, ls_local;
    int torn_local;
    if (!valid_end)
        valid_end = &ve_local;
    if (!last_seq)
        last_seq = &ls_local;
    if (!torn)
        torn = &torn_local;
    *valid_end = 0;
    *last_seq = after_seq;
    *torn = 0;
    if (!path)
        return KV_EINVAL;

    int fd, rc = os_open(path, O_RDONLY, 0, &fd);
    if (rc < 0)
        return os_rc(rc);
    uint64_t size;
    const uint8_t *base = NULL;
    XXH3_state_t *xs = NULL;
    rc = os_file_size(fd, &size);
    if (rc < 0) {
        rc = os_rc(rc);
        goto out;
    }
    if (size > SIZE_MAX) {
        rc = KV_ENOMEM;
        goto out;
    }
    if (size > 0) {
        const void *m;
        rc = os_mmap_read(fd, (size_t)size, &m);
        if (rc < 0) {
            rc = os_rc(rc);
            goto out;
        }
        base = m;
    }

    uint64_t first_seq;
    rc = size >= WAL_HEADER_SIZE ? header_decode(base, &first_seq) : KV_ECORRUPT;
    if (rc == KV_ECORRUPT && header_torn(base, (size_t)size)) {
        *torn = 1;
        rc = KV_OK;
        goto out;
    }
    if (rc != KV_OK)
        goto out;
    xs = XXH3_createState();
    if (!xs) {
        rc = KV_ENOMEM;
        goto out;
    }

    uint64_t off = WAL_HEADER_SIZE, prev = first_seq - 1, ahead = off;
    int ahead_n = 0; /* records between off and ahead */
    rec_info ri;
    int bad_seq = 0;
    *valid_end = off;
    *last_seq = prev;
    while (off < size) {
        /* Walk the peek cursor on header lengths alone; it stops at the
         * first header that does not fit, which verification judges. */
        while (peek && ahead_n < PEEK_AHEAD && size - ahead >= REC_HDR) {
            uint32_t len = get_le32(base + ahead);
            uint64_t total = REC_HDR + pad8(len);
            if (total > size - ahead)
                break;
            peek(ctx, get_le16(base + ahead + 4), base + ahead + REC_HDR, len);
            ahead += total;
            ahead_n++;
        }
        if (!rec_verify(xs, base, size, off, &ri))
            break;
        if (ri.seq != prev + 1) {
            bad_seq = 1;
            break;
        }
        if (ri.seq > after_seq && apply) {
            rc = apply(ctx, ri.type, ri.seq, base + off + REC_HDR, ri.len);
            if (rc != KV_OK)
                goto out;
        }
        prev = ri.seq;
        off += ri.total;
        if (ahead_n > 0)
            ahead_n--;
        if (ahead < off) { /* the cursor fell behind (a header it could not read) */
            ahead = off;
            ahead_n = 0;
        }
        *valid_end = off;
        *last_seq = prev;
    }
    if (off < size && !bad_seq && all_zero(base + off, size - off))
        off = size; /* space reserved ahead of the writes: a clean end */
    if (off < size) {
        int corrupt = bad_seq;
        uint64_t from = off + 8;
        rec_info bad;
        if (!corrupt && rec_header(base, size, off, &bad) && bad.seq == prev + 1) {
            /* A whole header of the record expected next: a write of it cut
             * short, or damage after its header. The bytes its length
             * covers are its own payload, which may hold anything (a value
             * may be a copy of a log), so records are looked for only after
             * them, unless its length field is what was damaged. */
            from = bad.total < size - off ? off + bad.total : size;
            corrupt = rec_length_damaged(xs, base, size, off, from, &bad);
        }
        for (uint64_t pos = from; !corrupt && pos < size && size - pos >= REC_HDR; pos += 8)
            corrupt = rec_verify(xs, base, size, pos, &ri) && ri.seq > prev;
        if (corrupt && !recover) {
            rc = KV_ECORRUPT;
            goto out;
        }
        *torn = 1;
    }
    rc = KV_OK;
out:
    XXH3_freeState(xs);
    if (base)
        os_munmap(base, (size_t)size);
    os_close(fd);
    return rc;
}

/* ---- batch payloads ---- */

int wal_batch_next(wal_batch_cursor *c, int *op, uint64_t *key, const uint8_t **val,
                   size_t *len)
{
    if (!c || !op || !key || !val || !len)
        return KV_EINVAL;
    const uint8_t *p = c->p, *end = c->end;
    if (p == end)
        return 0;
    if (!p || !end || p > end)
        return KV_ECORRUPT;
    size_t left = (size_t)(end - p);
    if (left < 9 || (p[0] != WAL_OP_PUT && p[0] != WAL_OP_DEL))
        return KV_ECORRUPT;
    int o = p[0];
    uint64_t k = get_le64(p + 1);
    p += 9;
    left -= 9;
    const uint8_t *v = NULL;
    size_t n = 0;
    if (o == WAL_OP_PUT) {
        if (left < 4)
            return KV_ECORRUPT;
        n = get_le32(p);
        p += 4;
        left -= 4;
        if (n > left)
            return KV_ECORRUPT;
        v = p;
        p += n;
    }
    c->p = p;
    *op = o;
    *key = k;
    *val = v;
    *len = n;
    return 1;
}

int wal_batch_add(uint8_t **buf, size_t *len, size_t *cap, int op, uint64_t key,
                  const void *val, size_t vlen)
{
    if (!buf || !len || !cap || *len > *cap || (op != WAL_OP_PUT && op != WAL_OP_DEL))
        return KV_EINVAL;
    if (op == WAL_OP_DEL)
        vlen = 0;
    else if (!val && vlen)
        return KV_EINVAL;
    if (vlen > KV_MAX_VALUE)
        return KV_ETOOBIG;
    size_t need = 9 + (op == WAL_OP_PUT ? 4 + vlen : 0);
    if (*len > WAL_MAX_BATCH || need > WAL_MAX_BATCH - *len)
        return KV_ETOOBIG;
    if (*len + need > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < *len + need)
            ncap *= 2;
        uint8_t *nb = realloc(*buf, ncap);
        if (!nb)
            return KV_ENOMEM;
        *buf = nb;
        *cap = ncap;
    }
    uint8_t *p = *buf + *len;
    p[0] = (uint8_t)op;
    put_le64(p + 1, key);
    if (op == WAL_OP_PUT) {
        put_le32(p + 9, (uint32_t)vlen);
        if (vlen)
            memcpy(p + 13, val, vlen);
    }
    *len += need;
    return KV_OK;
}

/* ---- writer ---- */

static int wal_alloc(int fd, uint64_t end, uint64_t last_seq, wal **out)
{
    wal *w = calloc(1, sizeof *w);
    if (!w)
        return KV_ENOMEM;
    w->fd = fd;
    w->buf[0] = malloc(BUF_CAP);
    w->buf[1] = malloc(BUF_CAP);
    w->xs = XXH3_createState();
    if (!w->buf[0] || !w->buf[1] || !w->xs)
        goto fail;
    if (pthread_mutex_init(&w->mu, NULL) != 0)
        goto fail;
    atomic_init(&w->queued, 0);
    atomic_init(&w->pub_written_lsn, end);
    atomic_init(&w->pub_synced_lsn, end);
    atomic_init(&w->pub_written_seq, last_seq);
    atomic_init(&w->pub_synced_seq, last_seq);
    atomic_init(&w->io_epoch, 0);
    atomic_init(&w->sleepers, 0);
    atomic_init(&w->leader_waiting, 0);
    w->sync_taken_lsn = end;
    w->alloc_end = end;
    w->end_lsn = w->written_lsn = w->synced_lsn = end;
    w->last_seq = w->written_seq = w->synced_seq = last_seq;
    *out = w;
    return KV_OK;
fail:
    XXH3_freeState(w->xs);
    free(w->buf[0]);
    free(w->buf[1]);
    free(w);
    return KV_ENOMEM;
}

int wal_create(const char *dir, const char *name, uint64_t first_seq, wal **out)
{
    if (!dir || !name || !out || first_seq == 0)
        return KV_EINVAL;
    char *path = path_join(dir, name);
    if (!path)
        return KV_ENOMEM;
    int fd, rc = os_open(path, O_WRONLY | O_CREAT | O_EXCL, 0644, &fd);
    if (rc < 0) {
        free(path);
        return os_rc(rc);
    }
    uint8_t h[WAL_HEADER_SIZE];
    header_encode(h, first_seq);
    if ((rc = os_pwrite_full(fd, h, sizeof h, 0)) < 0 || (rc = os_fsync(fd)) < 0 ||
        (rc = os_fsync_dir(dir)) < 0) {
        rc = os_rc(rc);
        goto fail;
    }
    rc = wal_alloc(fd, WAL_HEADER_SIZE, first_seq - 1, out);
    if (rc != KV_OK)
        goto fail;
    free(path);
    return KV_OK;
fail:
    os_close(fd);
    os_unlink(path);
    free(path);
    return rc;
}

int wal_open_append(const char *dir, const char *name, uint64_t valid_end,
                    uint64_t next_seq, wal **out)
{
    if (!dir || !name || !out || next_seq == 0 ||
        (valid_end != 0 && (valid_end < WAL_HEADER_SIZE || valid_end % 8 != 0)))
        return KV_EINVAL;
    char *path = path_join(dir, name);
    if (!path)
        return KV_ENOMEM;
    int fd, rc = os_open(path, O_RDWR, 0, &fd);
    free(path);
    if (rc < 0)
        return os_rc(rc);
    uint64_t size, first_seq;
    if ((rc = os_file_size(fd, &size)) < 0) {
        rc = os_rc(rc);
        goto fail;
    }
    if (size < valid_end) {
        rc = KV_EINVAL;
        goto fail;
    }
    uint8_t h[WAL_HEADER_SIZE];
    int fresh = valid_end == 0;
    if (!fresh) {
        if ((rc = os_pread_full(fd, h, sizeof h, 0)) < 0) {
            rc = os_rc(rc);
            goto fail;
        }
        if ((rc = header_decode(h, &first_seq)) != KV_OK)
            goto fail;
        /* No records yet: the header may name any first seq; make it ours. */
        fresh = valid_end == WAL_HEADER_SIZE && first_seq != next_seq;
    }
    if (fresh) {
        /* A crash between these leaves a short file: a torn empty log. */
        header_encode(h, next_seq);
        if ((rc = os_ftruncate(fd, 0)) < 0 || (rc = os_pwrite_full(fd, h, sizeof h, 0)) < 0) {
            rc = os_rc(rc);
            goto fail;
        }
        valid_end = WAL_HEADER_SIZE;
    } else if (size != valid_end && (rc = os_ftruncate(fd, valid_end)) < 0) {
        rc = os_rc(rc);
        goto fail;
    }
    if ((rc = os_fsync(fd)) < 0) {
        rc = os_rc(rc);
        goto fail;
    }
    rc = wal_alloc(fd, valid_end, next_seq - 1, out);
    if (rc != KV_OK)
        goto fail;
    return KV_OK;
fail:
    os_close(fd);
    return rc;
}

/* Record what the I/O just released achieved, for the waiters that sleep on
 * io_epoch without mu (await_io_release). seq before lsn, so a waiter that
 * sees an lsn also sees a seq at least as new. Called with mu held; the
 * caller wakes the sleepers (wake_waiters) once it has dropped mu. */
static void publish_io(wal *w)
{
    atomic_store_explicit(&w->pub_written_seq, w->written_seq, memory_order_relaxed);
    atomic_store_explicit(&w->pub_synced_seq, w->synced_seq, memory_order_relaxed);
    atomic_store_explicit(&w->pub_written_lsn, w->written_lsn, memory_order_release);
    atomic_store_explicit(&w->pub_synced_lsn, w->synced_lsn, memory_order_release);
    atomic_fetch_add(&w->io_epoch, 1);
}

/* Wake every thread asleep in await_io_release. Called without mu: a
 * waiter woken while the waker still held it would block on it at once.
 * The seq_cst epoch increment (publish_io) and sleepers load pair with the
 * sleeper's increment and epoch load: either it sees the new epoch or this
 * sees it counted. */
static void wake_waiters(wal *w)
{
    if (atomic_load(&w->sleepers))
        os_wake_all(&w->io_epoch);
}

/* Called with mu held while another thread owns the I/O: drop mu and sleep
 * until that I/O is released (or a spurious wake-up). Returns without mu.
 * Waiters do not retake mu to find out whether they are done (see
 * io_covers), so one release lets a whole group of writers return at
 * once instead of handing mu from each to the next. If *wake_leader, the
 * caller completed a sync leader's group: wake the leader first, once mu
 * is free for it, and clear the flag. */
static void await_io_release(wal *w, int *wake_leader)
{
    unsigned epoch = atomic_load(&w->io_epoch);
    pthread_mutex_unlock(&w->mu);
    if (wake_leader && *wake_leader) {
        os_wake_all(&w->queued);
        *wake_leader = 0;
    }
    atomic_fetch_add(&w->sleepers, 1);
    if (atomic_load(&w->io_epoch) == epoch)
        os_wait_while(&w->io_epoch, epoch, 0);
    atomic_fetch_sub(&w->sleepers, 1);
}

/* Whether the published state covers lsn for mode (0 synced, 1 written);
 * if so *durable_seq is set. Lock-free. */
static int io_covers(wal *w, uint64_t lsn, int mode, uint64_t *durable_seq)
{
    int sync = mode == 0;
    uint64_t done = atomic_load_explicit(sync ? &w->pub_synced_lsn : &w->pub_written_lsn,
                                         memory_order_acquire);
    if (done < lsn)
        return 0;
    if (durable_seq)
        *durable_seq = atomic_load_explicit(sync ? &w->pub_synced_seq : &w->pub_written_seq,
                                            memory_order_relaxed);
    return 1;
}

static void wal_fail(wal *w, int neg_errno)
{
    if (!w->failed) {
        w->failed = 1;
        w->err = neg_errno < 0 ? -neg_errno : EIO;
    }
}

/* Hand the active buffer to the caller, who becomes the I/O thread: *off is
 * where its bytes go in the file. Called with mu held and io idle. */
static void take_buffer(wal *w, const uint8_t **data, size_t *n, uint64_t *off, uint64_t *seq)
{
    w->io_busy = 1;
    *data = w->buf[w->cur];
    *n = w->len;
    *off = w->written_lsn;
    *seq = w->last_seq;
    w->cur ^= 1;
    w->len = 0;
}

/* Release the I/O role after writing up to end (records up to seq), synced
 * or not; rc < 0 fails the WAL. Called with mu held; the caller must call
 * wake_waiters after dropping it. */
static int finish_io(wal *w, int rc, uint64_t end, uint64_t seq, int synced)
{
    w->io_busy = 0;
    if (rc < 0) {
        wal_fail(w, rc);
    } else {
        w->written_lsn = end;
        w->written_seq = seq;
        if (synced) {
            w->synced_lsn = end;
            w->synced_seq = seq;
        }
    }
    publish_io(w);
    return rc < 0 ? KV_EIO : KV_OK;
}

/* Grow the file ahead of a write that ends at end (I/O owner, outside mu).
 * Only a speed-up: if it fails, the writes extend the file themselves, and
 * any real I/O problem shows up in the write or sync. Only a write that an
 * fdatasync follows (synced) gains from it; any other is left to extend
 * the file itself rather than also write as many zeros. */
static void reserve(wal *w, uint64_t end, int synced)
{
    if (end <= w->alloc_end || w->alloc_off)
        return;
    if (!synced) {
        /* The zeros must start past this write's bytes. */
        w->alloc_end = end;
        return;
    }
    uint64_t to = (end + PREALLOC_STEP - 1) / PREALLOC_STEP * PREALLOC_STEP;
    if (os_zero_fill(w->fd, w->alloc_end, to - w->alloc_end) == 0)
        w->alloc_end = to;
    else
        w->alloc_off = 1;
}

/* Copy one encoded record into the active buffer (mu held, room checked). */
static void buffer_record(wal *w, const uint8_t h[REC_HDR], const void *p1, size_t n1,
                          const void *p2, size_t n2, uint64_t total)
{
    uint8_t *d = w->buf[w->cur] + w->len;
    memcpy(d, h, REC_HDR);
    if (n1)
        memcpy(d + REC_HDR, p1, n1);
    if (n2)
        memcpy(d + REC_HDR + n1, p2, n2);
    memset(d + REC_HDR + n1 + n2, 0, (size_t)total - REC_HDR - n1 - n2);
    w->len += (size_t)total;
}

int wal_append(wal *w, uint32_t type, const void *p1, size_t n1, const void *p2, size_t n2,
               uint64_t *seq, uint64_t *lsn)
{
    if (!w || !seq || !lsn || (!p1 && n1) || (!p2 && n2) || n1 > SIZE_MAX - n2)
        return KV_EINVAL;
    uint64_t plen = (uint64_t)n1 + n2;
    if (type == WAL_PUT ? plen > MAX_PUT_PAYLOAD : type == WAL_BATCH && plen > WAL_MAX_BATCH)
        return KV_ETOOBIG;
    if (!payload_len_ok(type, plen))
        return KV_EINVAL;
    /* Appends are serialised by the caller and only they write last_seq,
     * so it can be read here without mu. */
    if (w->last_seq == UINT64_MAX)
        return KV_EINVAL;
    uint64_t s = w->last_seq + 1, total = REC_HDR + pad8(plen);
    uint8_t h[REC_HDR];
    rec_encode(w->xs, h, type, (uint32_t)plen, s, p1, n1, p2, n2);

    pthread_mutex_lock(&w->mu);
    if (w->failed)
        goto failed;
    if (w->len + total > BUF_CAP) {
        /* Full: become the I/O thread and write the buffer out first. */
        while (w->io_busy && !w->failed) {
            await_io_release(w, NULL);
            pthread_mutex_lock(&w->mu);
        }
        if (w->failed)
            goto failed;
        const uint8_t *data;
        size_t n;
        uint64_t off, prev_seq;
        take_buffer(w, &data, &n, &off, &prev_seq);
        int direct = total > BUF_CAP;
        if (!direct) {
            buffer_record(w, h, p1, n1, p2, n2, total);
            w->end_lsn += total;
            w->last_seq = s;
        }
        pthread_mutex_unlock(&w->mu);

        reserve(w, off + n + (direct ? total : 0), 0);
        int rc = n ? os_pwrite_full(w->fd, data, n, off) : 0;
        uint64_t end = off + n;
        if (direct) {
            static const uint8_t zeros[8];
            if (rc == 0)
                rc = os_pwrite_full(w->fd, h, REC_HDR, end);
            if (rc == 0 && n1)
                rc = os_pwrite_full(w->fd, p1, n1, end + REC_HDR);
            if (rc == 0 && n2)
                rc = os_pwrite_full(w->fd, p2, n2, end + REC_HDR + n1);
            if (rc == 0 && total > REC_HDR + plen)
                rc = os_pwrite_full(w->fd, zeros, (size_t)(total - REC_HDR - plen),
                                    end + REC_HDR + plen);
        }

        pthread_mutex_lock(&w->mu);
        if (direct) {
            w->end_lsn += total;
            w->last_seq = s;
            rc = finish_io(w, rc, end + total, s, 0);
        } else {
            rc = finish_io(w, rc, end, prev_seq, 0);
        }
        uint64_t rec_end = w->end_lsn;
        pthread_mutex_unlock(&w->mu);
        wake_waiters(w);
        if (rc != KV_OK)
            return KV_EIO;
        *seq = s;
        *lsn = rec_end;
        return KV_OK;
    }
    buffer_record(w, h, p1, n1, p2, n2, total);
    w->end_lsn += total;
    w->last_seq = s;
    *seq = s;
    *lsn = w->end_lsn;
    pthread_mutex_unlock(&w->mu);
    return KV_OK;
failed:
    pthread_mutex_unlock(&w->mu);
    return KV_EIO;
}

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Writers acknowledged by a sync come straight back with their next put. A
 * leader that synced at once would take only those that queued during the
 * previous sync and leave the returning ones for the next, so groups
 * alternate between few and many writers. So the leader waits, as the I/O
 * owner (no one else leads) and without mu (so appends go on), until every
 * writer in flight has queued, for at most half a sync and never over
 * GROUP_WAIT_MAX_NS. A lone writer is the only one in flight and never
 * waits. Called with mu held and io idle. */
static int group_incomplete(const wal *w)
{
    return w->writers && atomic_load(&w->queued) < atomic_load(w->writers);
}

static void await_group(wal *w)
{
    if (!group_incomplete(w))
        return;
    uint64_t wait = w->last_sync_ns / 2;
    if (wait > GROUP_WAIT_MAX_NS)
        wait = GROUP_WAIT_MAX_NS;
    w->io_busy = 1;
    pthread_mutex_unlock(&w->mu);
    /* Sleep rather than spin: on few cores the writers still to come need
     * the CPU this thread would hold. The one that completes the group
     * wakes it (see wal_commit). */
    uint64_t deadline = mono_ns() + wait;
    atomic_store(&w->leader_waiting, 1);
    for (;;) {
        unsigned q = atomic_load(&w->queued);
        uint64_t t = mono_ns();
        if (q >= atomic_load(w->writers) || t >= deadline)
            break;
        os_wait_while(&w->queued, q, deadline - t);
    }
    atomic_store(&w->leader_waiting, 0);
    pthread_mutex_lock(&w->mu);
    w->io_busy = 0;
}

void wal_set_writers(wal *w, const atomic_uint *writers)
{
    w->writers = writers;
}

int wal_commit(wal *w, uint64_t lsn, int mode, uint64_t *durable_seq, int *err)
{
    if (!w || mode < 0 || mode > 2)
        return KV_EINVAL;
    int rc = KV_OK, released = 0, wake_leader = 0;
    pthread_mutex_lock(&w->mu);
    if (lsn > w->end_lsn)
        lsn = w->end_lsn;
    if (mode == 0 && lsn > w->sync_taken_lsn) {
        /* seq_cst pairs with await_group: either the leader sees this
         * writer queued or this sees the leader waiting. */
        unsigned q = atomic_fetch_add(&w->queued, 1) + 1;
        wake_leader = w->writers && atomic_load(&w->leader_waiting) &&
                      q >= atomic_load(w->writers);
    }
    for (;;) {
        if (w->failed) {
            if (err)
                *err = w->err;
            rc = KV_EIO;
            break;
        }
        if (mode == 2) {
            if (durable_seq)
                *durable_seq = w->last_seq;
            break;
        }
        if (mode == 0 ? w->synced_lsn >= lsn : w->written_lsn >= lsn) {
            if (durable_seq)
                *durable_seq = mode == 0 ? w->synced_seq : w->written_seq;
            break;
        }
        if (w->io_busy) {
            await_io_release(w, &wake_leader);
            if (io_covers(w, lsn, mode, durable_seq))
                return KV_OK;
            pthread_mutex_lock(&w->mu);
            continue;
        }
        /* Leader: write (and sync) everything buffered so far, for every
         * waiter at once. */
        if (mode == 0)
            await_group(w);
        const uint8_t *data;
        size_t n;
        uint64_t off, seq;
        take_buffer(w, &data, &n, &off, &seq);
        if (mode == 0) {
            atomic_store(&w->queued, 0);
            w->sync_taken_lsn = off + n;
        }
        pthread_mutex_unlock(&w->mu);
        uint64_t t0 = mode == 0 ? mono_ns() : 0;
        reserve(w, off + n, mode == 0);
        int io = n ? os_pwrite_full(w->fd, data, n, off) : 0;
        int synced = io == 0 && mode == 0;
        if (synced)
            io = os_fdatasync(w->fd);
        pthread_mutex_lock(&w->mu);
        if (synced)
            w->last_sync_ns = mono_ns() - t0;
        w->sync_count += (uint64_t)synced;
        finish_io(w, io, off + n, seq, mode == 0);
        released = 1;
    }
    pthread_mutex_unlock(&w->mu);
    if (released)
        wake_waiters(w);
    if (wake_leader)
        os_wake_all(&w->queued);
    return rc;
}

int wal_sync(wal *w, int *err)
{
    if (!w)
        return KV_EINVAL;
    pthread_mutex_lock(&w->mu);
    uint64_t end = w->end_lsn;
    pthread_mutex_unlock(&w->mu);
    return wal_commit(w, end, 0, NULL, err);
}

/* The getters lock mu, which lives in a non-const heap object. */
static wal *wal_lock(const wal *w)
{
    wal *m = (wal *)w;
    pthread_mutex_lock(&m->mu);
    return m;
}

uint64_t wal_bytes(const wal *w)
{
    wal *m = wal_lock(w);
    uint64_t v = m->end_lsn;
    pthread_mutex_unlock(&m->mu);
    return v;
}

uint64_t wal_sync_count(const wal *w)
{
    wal *m = wal_lock(w);
    uint64_t v = m->sync_count;
    pthread_mutex_unlock(&m->mu);
    return v;
}

uint64_t wal_last_seq(const wal *w)
{
    wal *m = wal_lock(w);
    uint64_t v = m->last_seq;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int wal_failed(const wal *w)
{
    wal *m = wal_lock(w);
    int v = m->failed;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int wal_error(const wal *w)
{
    wal *m = wal_lock(w);
    int v = m->err;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int wal_close(wal *w)
{
    if (!w)
        return KV_OK;
    /* Give back the reserved space once every byte is written; the zero
     * tail is harmless if this fails or never happens. */
    if (!w->failed && w->written_lsn == w->end_lsn && w->alloc_end > w->written_lsn)
        (void)os_ftruncate(w->fd, w->written_lsn);
    int rc = os_close(w->fd) < 0 ? KV_EIO : KV_OK;
    pthread_mutex_destroy(&w->mu);
    XXH3_freeState(w->xs);
    free(w->buf[0]);
    free(w->buf[1]);
    free(w);
    return rc;
}
