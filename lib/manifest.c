/*
 * manifest.c — the MANIFEST file: which snapshot is live, the first WAL to
 * replay, the next unused file id.
 *
 * Owns the file format and its atomic replacement (MANIFEST.tmp, fsync,
 * rename over MANIFEST, fsync of the directory), so a crash leaves either the
 * old or the new manifest, never a mixture.
 *
 * File layout, format version 1: 48 bytes, integers little-endian.
 *   off  size  field
 *     0     8  magic "KYROMANI"
 *     8     4  format version, 1
 *    12     4  file size, 48
 *    16     8  snapshot_id (0 = no snapshot)
 *    24     8  wal_id (>= 1)
 *    32     8  next_id (> snapshot_id and > wal_id)
 *    40     8  XXH3_64 of bytes 0..40
 *
 * Reading checks, in order: at least 16 bytes and the magic (else
 * KV_ECORRUPT); the version (else KV_EVERSION); the size field and the
 * file's size both 48, the checksum, and the id invariants above (else
 * KV_ECORRUPT). Writing refuses ids that break the invariants (KV_EINVAL).
 */
#include "manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kyro.h"
#include "os.h"

#define MANIFEST_VERSION 1u
#define MANIFEST_SIZE 48u
#define MANIFEST_CSUM 40u

static const uint8_t manifest_magic[8] = {'K', 'Y', 'R', 'O', 'M', 'A', 'N', 'I'};

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

static int ids_valid(const manifest *m)
{
    return m->wal_id != 0 && m->next_id > m->wal_id && m->next_id > m->snapshot_id;
}

int manifest_write(const char *dir, const manifest *m, int *err)
{
    uint8_t b[MANIFEST_SIZE];
    int fd = -1, orc = 0, rc;
    *err = 0;
    if (!ids_valid(m))
        return KV_EINVAL;
    memcpy(b, manifest_magic, 8);
    put_le32(b + 8, MANIFEST_VERSION);
    put_le32(b + 12, MANIFEST_SIZE);
    put_le64(b + 16, m->snapshot_id);
    put_le64(b + 24, m->wal_id);
    put_le64(b + 32, m->next_id);
    put_le64(b + MANIFEST_CSUM, XXH3_64bits(b, MANIFEST_CSUM));

    char *tmp = path_join(dir, MANIFEST_NAME ".tmp");
    char *final = path_join(dir, MANIFEST_NAME);
    const char *placed = NULL; /* the path our file currently has, if any */
    rc = KV_ENOMEM;
    if (!tmp || !final)
        goto fail;
    rc = KV_EIO;
    if ((orc = os_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644, &fd)) < 0)
        goto fail;
    placed = tmp;
    if ((orc = os_write_full(fd, b, sizeof b)) < 0 || (orc = os_fsync(fd)) < 0)
        goto fail;
    orc = os_close(fd);
    fd = -1;
    if (orc < 0 || (orc = os_rename(tmp, final)) < 0)
        goto fail;
    placed = NULL; /* the old manifest is gone: never remove the new one */
    if ((orc = os_fsync_dir(dir)) < 0)
        goto fail;
    rc = KV_OK;
fail:
    if (rc == KV_EIO) {
        *err = -orc;
        if (orc == -ENOMEM)
            rc = KV_ENOMEM;
    }
    if (fd >= 0)
        os_close(fd);
    if (placed)
        os_unlink(placed);
    free(tmp);
    free(final);
    return rc;
}

int manifest_read(const char *dir, manifest *m, int *err)
{
    void *data = NULL;
    size_t len = 0;
    *err = 0;
    char *path = path_join(dir, MANIFEST_NAME);
    if (!path)
        return KV_ENOMEM;
    int orc = os_read_file(path, &data, &len);
    free(path);
    if (orc == -ENOENT)
        return KV_NOTFOUND;
    if (orc == -ENOMEM)
        return KV_ENOMEM;
    if (orc < 0) {
        *err = -orc;
        return KV_EIO;
    }

    const uint8_t *b = data;
    manifest got;
    int rc = KV_ECORRUPT;
    if (len < 16 || memcmp(b, manifest_magic, 8) != 0)
        goto out;
    if (get_le32(b + 8) != MANIFEST_VERSION) {
        rc = KV_EVERSION;
        goto out;
    }
    if (len != MANIFEST_SIZE || get_le32(b + 12) != MANIFEST_SIZE ||
        get_le64(b + MANIFEST_CSUM) != XXH3_64bits(b, MANIFEST_CSUM))
        goto out;
    got.snapshot_id = get_le64(b + 16);
    got.wal_id = get_le64(b + 24);
    got.next_id = get_le64(b + 32);
    if (!ids_valid(&got))
        goto out;
    *m = got;
    rc = KV_OK;
out:
    free(data);
    return rc;
}

void manifest_snap_name(uint64_t id, char *buf)
{
    snprintf(buf, 32, "snap-%016llx.kyro", (unsigned long long)id);
}

void manifest_wal_name(uint64_t id, char *buf)
{
    snprintf(buf, 32, "wal-%016llx.log", (unsigned long long)id);
}
