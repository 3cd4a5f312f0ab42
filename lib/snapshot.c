/*
 * snapshot.c — the on-disk image of a base run: one file holding the sorted
 * keys, their value references, the value bytes and the trained model.
 *
 * Owns the snapshot file format, writing it atomically and loading it back
 * as a run whose keys, references and values are read in place from a
 * read-only mapping of the file.
 *
 * File layout, format version 1. Integers are little-endian, fixed width.
 *
 *   header, 192 bytes:
 *     off  size  field
 *       0     8  magic "KYROSNAP"
 *       8     4  format version, 1
 *      12     4  header size, 192
 *      16     8  n, the number of keys
 *      24     8  max_seq, the highest WAL sequence number the run contains
 *      32     8  value_bytes, the sum of all value lengths
 *      40    96  section table, 4 entries of 24 bytes in this order:
 *                keys (40), vrefs (64), values (88), model (112); each
 *                entry is: u64 offset, u64 length, u64 XXH3_64 of the
 *                section's bytes
 *     136    48  reserved, zero
 *     184     8  XXH3_64 of header bytes 0..184
 *   keys    n x u64, strictly ascending.
 *   vrefs   n x 16 bytes, laid out as struct run_vref: u64 off, u32 len,
 *           u32 seg (always 0). off is relative to the values section; the
 *           values are stored back to back in key order, so vrefs[0].off = 0
 *           and vrefs[i].off = vrefs[i-1].off + vrefs[i-1].len; len is at
 *           most KV_MAX_VALUE; the lengths add up to value_bytes.
 *   values  value_bytes bytes.
 *   model   rmi_serialize() bytes of the index over the n keys (see rmi.c);
 *           always present, even for n = 0 (a model built on 0 keys).
 *
 *   Placement is fixed: keys start at 192; vrefs at the first 64-byte
 *   boundary at or after the end of keys (the gap, at most 56 bytes, is
 *   zero); values right after vrefs; model right after values; the file ends
 *   exactly where the model does. Keys are thus 64-byte aligned and vrefs
 *   16-byte aligned in the file and in its page-aligned mapping, which is
 *   why both are read in place (little-endian hosts only).
 *
 * Every byte of a valid file is either covered by a checksum or required to
 * be zero, so no damaged file loads. Reading (snap_load) trusts nothing:
 * sizes and offsets are checked against the mapping before any use, with
 * arithmetic that cannot overflow; a version other than 1 is KV_EVERSION,
 * anything else wrong is KV_ECORRUPT. Only after every section checksum and
 * the key order, the references and the model have been verified are the
 * key and reference arrays used in place.
 *
 * Writing (snap_write) streams the sections through one buffer into
 * NAME.tmp, computing each section's checksum on the way, then writes the
 * header at offset 0, fsyncs, renames the file to NAME and fsyncs the
 * directory. On failure the partial file is removed.
 */
#include "snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kyro.h"
#include "os.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "KyroDB snapshots read keys and value references in place: little-endian hosts only"
#endif

_Static_assert(sizeof(run_vref) == 16 && offsetof(run_vref, off) == 0 &&
                   offsetof(run_vref, len) == 8 && offsetof(run_vref, seg) == 12,
               "run_vref must match the on-disk vref layout");

#define SNAP_VERSION 1u
#define SNAP_HEADER 192u
#define SNAP_TABLE 40u      /* offset of the section table */
#define SNAP_SECT_BYTES 24u /* one table entry */
#define SNAP_RESERVED 136u  /* reserved zero bytes up to the checksum */
#define SNAP_CSUM 184u      /* header checksum, over bytes 0..184 */
#define SNAP_WBUF ((size_t)1 << 20)

static const uint8_t snap_magic[8] = {'K', 'Y', 'R', 'O', 'S', 'N', 'A', 'P'};

enum { SEC_KEYS, SEC_VREFS, SEC_VALUES, SEC_MODEL, SEC_COUNT };

/* Alignment of each section's start; the gap before it must be zero. */
static const uint64_t sec_align[SEC_COUNT] = {64, 64, 1, 1};

typedef struct {
    uint64_t off, len, sum;
} snap_section;

/* ---- byte helpers ---- */

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

static uint64_t align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) & ~(a - 1);
}

static char *path_join(const char *dir, const char *name, const char *suffix)
{
    size_t a = strlen(dir), b = strlen(name), c = strlen(suffix);
    char *p = malloc(a + b + c + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, name, b);
        memcpy(p + a + 1 + b, suffix, c + 1);
    }
    return p;
}

/* ---- writing ---- */

/* A sequential buffered writer that checksums what it is given. */
typedef struct {
    int fd;
    uint8_t *buf;
    size_t used;
    uint64_t pos;       /* bytes handed to the writer so far (= file offset) */
    XXH3_state_t *xs;   /* checksum of the current section */
    int rc;             /* first os_* error (-errno), sticky */
} snap_writer;

static void sw_flush(snap_writer *w)
{
    if (w->used && w->rc == 0)
        w->rc = os_write_full(w->fd, w->buf, w->used);
    w->used = 0;
}

/* Append bytes that are not part of any section (header room, padding). */
static void sw_raw(snap_writer *w, const void *p, size_t len)
{
    if (w->rc || len == 0)
        return;
    w->pos += len;
    if (len > SNAP_WBUF - w->used) {
        sw_flush(w);
        if (len >= SNAP_WBUF) {
            if (w->rc == 0)
                w->rc = os_write_full(w->fd, p, len);
            return;
        }
    }
    memcpy(w->buf + w->used, p, len);
    w->used += len;
}

/* Append section bytes. */
static void sw_put(snap_writer *w, const void *p, size_t len)
{
    if (len)
        XXH3_64bits_update(w->xs, p, len);
    sw_raw(w, p, len);
}

/* Pad with zeros to the alignment of section s, start its checksum and
 * record its offset. */
static void sw_begin(snap_writer *w, snap_section *sec, int s)
{
    static const uint8_t zeros[64];
    uint64_t start = align_up(w->pos, sec_align[s]);
    sw_raw(w, zeros, (size_t)(start - w->pos));
    sec[s].off = start;
    XXH3_64bits_reset(w->xs);
}

static void sw_end(snap_writer *w, snap_section *sec, int s)
{
    sec[s].len = w->pos - sec[s].off;
    sec[s].sum = XXH3_64bits_digest(w->xs);
}

static void header_encode(uint8_t h[SNAP_HEADER], uint64_t n, uint64_t max_seq,
                          uint64_t value_bytes, const snap_section sec[SEC_COUNT])
{
    memset(h, 0, SNAP_HEADER);
    memcpy(h, snap_magic, 8);
    put_le32(h + 8, SNAP_VERSION);
    put_le32(h + 12, SNAP_HEADER);
    put_le64(h + 16, n);
    put_le64(h + 24, max_seq);
    put_le64(h + 32, value_bytes);
    for (int s = 0; s < SEC_COUNT; s++) {
        uint8_t *e = h + SNAP_TABLE + SNAP_SECT_BYTES * (unsigned)s;
        put_le64(e, sec[s].off);
        put_le64(e + 8, sec[s].len);
        put_le64(e + 16, sec[s].sum);
    }
    put_le64(h + SNAP_CSUM, XXH3_64bits(h, SNAP_CSUM));
}

/* Check that r can be written in a form snap_load accepts; sum its values. */
static int run_check(const run *r, uint64_t *value_bytes)
{
    uint64_t total = 0;
    for (uint64_t i = 0; i < r->n; i++) {
        if (i && r->keys[i] <= r->keys[i - 1])
            return KV_EINVAL;
        uint32_t len = run_vref_at(r, i).len;
        if (len > KV_MAX_VALUE)
            return KV_EINVAL;
        total += len;
    }
    *value_bytes = total;
    return KV_OK;
}

/* Stream the four sections of r after the header room. */
static void write_sections(snap_writer *w, const run *r, const uint8_t *model, size_t model_len,
                           snap_section sec[SEC_COUNT])
{
    static const uint8_t header_room[SNAP_HEADER];
    sw_raw(w, header_room, SNAP_HEADER);

    sw_begin(w, sec, SEC_KEYS);
    sw_put(w, r->keys, (size_t)r->n * sizeof(uint64_t)); /* host order is little-endian */
    sw_end(w, sec, SEC_KEYS);

    sw_begin(w, sec, SEC_VREFS);
    uint8_t chunk[256 * 16];
    uint64_t off = 0;
    for (uint64_t i = 0; i < r->n && w->rc == 0;) {
        size_t k = 0;
        for (; k < sizeof chunk / 16 && i < r->n; k++, i++) {
            uint32_t len = run_vref_at(r, i).len;
            put_le64(chunk + 16 * k, off);
            put_le32(chunk + 16 * k + 8, len);
            put_le32(chunk + 16 * k + 12, 0);
            off += len;
        }
        sw_put(w, chunk, 16 * k);
    }
    sw_end(w, sec, SEC_VREFS);

    sw_begin(w, sec, SEC_VALUES);
    for (uint64_t i = 0; i < r->n && w->rc == 0; i++) {
        size_t len;
        const void *v = run_value(r, i, &len);
        sw_put(w, v, len);
    }
    sw_end(w, sec, SEC_VALUES);

    sw_begin(w, sec, SEC_MODEL);
    sw_put(w, model, model_len);
    sw_end(w, sec, SEC_MODEL);
    sw_flush(w);
}

int snap_write(const char *dir, const char *name, const run *r, uint64_t max_seq,
               uint64_t *bytes, int *err)
{
    char *tmp = NULL, *final = NULL;
    const char *placed = NULL; /* the path our file currently has, if any */
    uint8_t *model = NULL;
    rmi *own_index = NULL;
    snap_writer w = {.fd = -1};
    snap_section sec[SEC_COUNT];
    uint64_t value_bytes;
    int rc, orc = 0;
    int dummy;
    if (!err)
        err = &dummy;
    *err = 0;

    if ((rc = run_check(r, &value_bytes)) != KV_OK)
        return rc;
    rc = KV_ENOMEM;
    const rmi *index = r->index;
    if (!index) {
        if (rmi_build(r->keys, (size_t)r->n, &own_index) != KV_OK)
            goto fail;
        index = own_index;
    }
    size_t model_len = rmi_serialized_size(index);
    tmp = path_join(dir, name, ".tmp");
    final = path_join(dir, name, "");
    model = malloc(model_len);
    w.buf = malloc(SNAP_WBUF);
    w.xs = XXH3_createState();
    if (!tmp || !final || !model || !w.buf || !w.xs)
        goto fail;
    rmi_serialize(index, model);

    rc = KV_EIO;
    if ((orc = os_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644, &w.fd)) < 0)
        goto fail;
    placed = tmp;
    write_sections(&w, r, model, model_len, sec);
    if ((orc = w.rc) < 0)
        goto fail;

    uint8_t h[SNAP_HEADER];
    header_encode(h, r->n, max_seq, value_bytes, sec);
    if ((orc = os_pwrite_full(w.fd, h, SNAP_HEADER, 0)) < 0)
        goto fail;
    if ((orc = os_fsync(w.fd)) < 0)
        goto fail;
    orc = os_close(w.fd);
    w.fd = -1;
    if (orc < 0)
        goto fail;
    if ((orc = os_rename(tmp, final)) < 0)
        goto fail;
    placed = final;
    if ((orc = os_fsync_dir(dir)) < 0)
        goto fail;

    if (bytes)
        *bytes = w.pos;
    rc = KV_OK;
    placed = NULL;
fail:
    if (rc == KV_EIO) {
        *err = -orc;
        if (orc == -ENOMEM)
            rc = KV_ENOMEM;
    }
    if (w.fd >= 0)
        os_close(w.fd);
    if (placed)
        os_unlink(placed);
    XXH3_freeState(w.xs);
    free(w.buf);
    free(model);
    rmi_free(own_index);
    free(tmp);
    free(final);
    return rc;
}

/* ---- loading ---- */

/* What the header says, once verified against the file. */
typedef struct {
    uint64_t n, max_seq, value_bytes;
    snap_section sec[SEC_COUNT];
} snap_info;

/* Verify the header, the placement of every section and every checksum in
 * a file of size bytes at p. Reads nothing outside p[0..size). */
static int verify_layout(const uint8_t *p, uint64_t size, snap_info *in)
{
    if (size < 16 || memcmp(p, snap_magic, 8) != 0)
        return KV_ECORRUPT;
    if (get_le32(p + 8) != SNAP_VERSION)
        return KV_EVERSION;
    if (size < SNAP_HEADER || get_le32(p + 12) != SNAP_HEADER ||
        get_le64(p + SNAP_CSUM) != XXH3_64bits(p, SNAP_CSUM))
        return KV_ECORRUPT;
    for (unsigned i = SNAP_RESERVED; i < SNAP_CSUM; i++) {
        if (p[i])
            return KV_ECORRUPT;
    }
    in->n = get_le64(p + 16);
    in->max_seq = get_le64(p + 24);
    in->value_bytes = get_le64(p + 32);

    uint64_t end = SNAP_HEADER;
    for (int s = 0; s < SEC_COUNT; s++) {
        const uint8_t *e = p + SNAP_TABLE + SNAP_SECT_BYTES * (unsigned)s;
        snap_section *sec = &in->sec[s];
        sec->off = get_le64(e);
        sec->len = get_le64(e + 8);
        sec->sum = get_le64(e + 16);
        /* end <= size holds here, so the aligned start cannot overflow. */
        if (sec->off != align_up(end, sec_align[s]) || sec->off > size ||
            sec->len > size - sec->off)
            return KV_ECORRUPT;
        for (uint64_t i = end; i < sec->off; i++) {
            if (p[i])
                return KV_ECORRUPT;
        }
        end = sec->off + sec->len;
    }
    if (end != size)
        return KV_ECORRUPT;
    /* Each key takes 24 bytes of keys and vrefs, so n <= size / 24 and the
     * products below cannot overflow. */
    if (in->n > size / 24 || in->sec[SEC_KEYS].len != in->n * 8 ||
        in->sec[SEC_VREFS].len != in->n * 16 || in->sec[SEC_VALUES].len != in->value_bytes)
        return KV_ECORRUPT;
    if (in->sec[SEC_KEYS].off % 64 != 0 || in->sec[SEC_VREFS].off % _Alignof(run_vref) != 0)
        return KV_ECORRUPT;
    for (int s = 0; s < SEC_COUNT; s++) {
        if (XXH3_64bits(p + in->sec[s].off, (size_t)in->sec[s].len) != in->sec[s].sum)
            return KV_ECORRUPT;
    }
    return KV_OK;
}

/* Verify keys and references, which verify_layout placed and checksummed. */
static int verify_entries(const uint64_t *keys, const run_vref *vrefs, uint64_t n,
                          uint64_t value_bytes, int64_t *same_len)
{
    uint64_t off = 0;
    *same_len = n ? (int64_t)vrefs[0].len : -1;
    for (uint64_t i = 0; i < n; i++) {
        if (i && keys[i] <= keys[i - 1])
            return KV_ECORRUPT;
        const run_vref *v = &vrefs[i];
        /* off <= value_bytes on entry, so value_bytes - off cannot wrap. */
        if (v->seg != 0 || v->off != off || v->len > KV_MAX_VALUE || v->len > value_bytes - off)
            return KV_ECORRUPT;
        if (v->len != *same_len)
            *same_len = -1;
        off += v->len;
    }
    return off == value_bytes ? KV_OK : KV_ECORRUPT;
}

int snap_load(const char *dir, const char *name, run **out, uint64_t *max_seq,
              uint64_t *bytes, int *err)
{
    char *path = path_join(dir, name, "");
    const uint8_t *map = NULL;
    uint64_t size = 0;
    rmi *index = NULL;
    run *r = NULL;
    run_seg *seg = NULL;
    snap_info in;
    int fd = -1, rc = KV_ENOMEM, orc = 0;
    int dummy;
    if (!err)
        err = &dummy;
    *err = 0;
    *out = NULL;
    if (!path)
        goto fail;

    rc = KV_EIO;
    if ((orc = os_open(path, O_RDONLY, 0, &fd)) < 0)
        goto fail;
    if ((orc = os_file_size(fd, &size)) < 0)
        goto fail;
    rc = KV_ECORRUPT;
    if (size == 0 || size > SIZE_MAX)
        goto fail; /* nothing to map (a crash before the first write), or unmappable */
    rc = KV_EIO;
    const void *addr;
    if ((orc = os_mmap_read(fd, (size_t)size, &addr)) < 0)
        goto fail;
    map = addr;
    os_close(fd);
    fd = -1;

    if ((rc = verify_layout(map, size, &in)) != KV_OK)
        goto fail;
    const uint64_t *keys = (const uint64_t *)(map + in.sec[SEC_KEYS].off);
    const run_vref *vrefs = (const run_vref *)(map + in.sec[SEC_VREFS].off);
    int64_t same_len;
    if ((rc = verify_entries(keys, vrefs, in.n, in.value_bytes, &same_len)) != KV_OK)
        goto fail;
    if ((rc = rmi_deserialize(map + in.sec[SEC_MODEL].off, (size_t)in.sec[SEC_MODEL].len,
                              (size_t)in.n, &index)) != KV_OK)
        goto fail;

    rc = KV_ENOMEM;
    if (!(r = calloc(1, sizeof *r)) || !(r->segs = calloc(1, sizeof *r->segs)))
        goto fail;
    seg = run_seg_new_map(map, size, map + in.sec[SEC_VALUES].off, in.value_bytes);
    if (!seg)
        goto fail;
    map = NULL; /* the segment owns the mapping now */
    atomic_init(&r->refs, 1);
    r->n = in.n;
    r->keys = keys;
    r->vrefs = vrefs;
    r->index = index;
    r->value_bytes = in.value_bytes;
    run_seg_ref(seg);
    r->segs[0] = seg;
    r->nsegs = 1;
    r->file = seg;
    /* Values of one length lie back to back in key order in the values
     * section: a fixed run, whatever the length (nothing is copied). */
    if (same_len >= 0)
        run_set_fixed(r, (uint32_t)same_len);

    *out = r;
    if (max_seq)
        *max_seq = in.max_seq;
    if (bytes)
        *bytes = size;
    free(path);
    return KV_OK;
fail:
    if (rc == KV_EIO) {
        *err = -orc;
        if (orc == -ENOMEM)
            rc = KV_ENOMEM;
        else if (orc == -ENOENT)
            rc = KV_ECORRUPT; /* the snapshot the caller was told to load is gone */
    }
    if (fd >= 0)
        os_close(fd);
    if (r) {
        free(r->segs);
        free(r);
    }
    rmi_free(index);
    os_munmap(map, (size_t)size);
    free(path);
    return rc;
}
