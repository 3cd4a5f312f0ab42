/*
 * fuzz_manifest.c — manifest_read on hostile files.
 *
 * raw   (first byte != 0xFF): the bytes are the MANIFEST. manifest_read must
 *       return KV_OK, KV_ECORRUPT or KV_EVERSION, never crash; what it
 *       accepts must survive a write/read round trip unchanged.
 * built (first byte == 0xFF): three ids from the input are written with
 *       manifest_write and read back (must be equal); then the file is cut
 *       short or one byte is flipped, and manifest_read must refuse it or
 *       return exactly the ids written (never other ids).
 * The file-name helpers are checked against their documented formats.
 * Any mismatch aborts.
 *
 * Built layout after 0xFF: [snapshot_id u64][wal_id u64][next_id u64]
 *                          [dmode u8][pos u16][xor u8]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kyro.h"
#include "manifest.h"

#define FUZZ_NAME "fuzz_manifest"
#include "fuzz.h"

static char dir[256], path[300];

static void cleanup(void)
{
    char p[320];
    unlink(path);
    snprintf(p, sizeof p, "%s.tmp", path);
    unlink(p);
    rmdir(dir);
}

/* One scratch directory per process, made before the first input. */
__attribute__((constructor)) static void make_dir(void)
{
    const char *t = getenv("TMPDIR");
    struct stat st;
    if (!t)
        t = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/fuzz_manifest-XXXXXX", t);
    if (!mkdtemp(dir))
        abort();
    snprintf(path, sizeof path, "%s/%s", dir, MANIFEST_NAME);
    atexit(cleanup);
}

static void write_file(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        abort();
    if (size && write(fd, data, size) != (ssize_t)size)
        abort();
    close(fd);
}

static int same(const manifest *a, const manifest *b)
{
    return a->snapshot_id == b->snapshot_id && a->wal_id == b->wal_id && a->next_id == b->next_id;
}

static void check_names(const manifest *m)
{
    char got[64], want[64];
    memset(got, 0x7f, sizeof got);
    manifest_snap_name(m->snapshot_id, got);
    snprintf(want, sizeof want, "snap-%016llx.kyro", (unsigned long long)m->snapshot_id);
    CHECK(strcmp(got, want) == 0, "manifest_snap_name: %.40s, want %s", got, want);
    memset(got, 0x7f, sizeof got);
    manifest_wal_name(m->wal_id, got);
    snprintf(want, sizeof want, "wal-%016llx.log", (unsigned long long)m->wal_id);
    CHECK(strcmp(got, want) == 0, "manifest_wal_name: %.40s, want %s", got, want);
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    manifest m, m2;
    int err = 0, rc;
    if (size == 0 || data[0] != 0xFF) {
        write_file(data, size);
        memset(&m, 0, sizeof m);
        rc = manifest_read(dir, &m, &err);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_EVERSION, "manifest_read = %d", rc);
        if (rc != KV_OK)
            return 0;
        check_names(&m);
        /* What was accepted survives a round trip. */
        rc = manifest_write(dir, &m, &err);
        if (rc == KV_EINVAL)
            return 0; /* accepted on read but refused on write: tolerated */
        CHECK(rc == KV_OK, "manifest_write of a manifest just read = %d (errno %d)", rc, err);
        memset(&m2, 0, sizeof m2);
        rc = manifest_read(dir, &m2, &err);
        CHECK(rc == KV_OK && same(&m, &m2), "round trip changed the manifest (%d)", rc);
        return 0;
    }

    uint8_t in[8 * 3 + 4] = {0};
    memcpy(in, data + 1, size - 1 < sizeof in ? size - 1 : sizeof in);
    manifest w = {le64(in), le64(in + 8), le64(in + 16)};
    unsigned dmode = in[24] % 3;
    unsigned pos = in[25] | (unsigned)in[26] << 8;
    uint8_t x = in[27];
    unlink(path);
    rc = manifest_write(dir, &w, &err);
    CHECK(rc == KV_OK || rc == KV_EINVAL, "manifest_write = %d (errno %d)", rc, err);
    if (rc != KV_OK)
        return 0;
    memset(&m, 0, sizeof m);
    rc = manifest_read(dir, &m, &err);
    CHECK(rc == KV_OK && same(&m, &w), "manifest_read after write = %d, ids differ", rc);
    check_names(&m);

    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size > 0, "no MANIFEST after manifest_write");
    size_t fsize = (size_t)st.st_size;
    uint8_t *file = malloc(fsize);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && read(fd, file, fsize) == (ssize_t)fsize, "read MANIFEST");
    close(fd);
    if (dmode == 1) {
        write_file(file, pos % fsize); /* cut short */
        rc = manifest_read(dir, &m, &err);
        CHECK(rc == KV_ECORRUPT || rc == KV_EVERSION,
              "MANIFEST cut to %u of %zu bytes: manifest_read = %d, want a refusal",
              pos % (unsigned)fsize, fsize, rc);
    } else if (dmode == 2 && x) {
        file[pos % fsize] ^= x;
        write_file(file, fsize);
        memset(&m, 0, sizeof m);
        rc = manifest_read(dir, &m, &err);
        CHECK(rc == KV_ECORRUPT || rc == KV_EVERSION || (rc == KV_OK && same(&m, &w)),
              "byte %u of MANIFEST flipped (^%02x): manifest_read = %d with other ids", pos % (unsigned)fsize,
              x, rc);
    }
    free(file);
    return 0;
}
