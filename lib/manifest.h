/*
 * manifest.h — the small file that names the live snapshot and the first
 * live WAL. Replaced atomically: write a temp file, fsync, rename, fsync dir.
 */
#ifndef KYRO_MANIFEST_H
#define KYRO_MANIFEST_H

#include <stdint.h>

typedef struct manifest {
    uint64_t snapshot_id; /* 0 = no snapshot; file "snap-%016llx.kyro" */
    uint64_t wal_id;      /* first WAL to replay: "wal-%016llx.log", then +1 ... */
    uint64_t next_id;     /* next unused file id */
} manifest;

#define MANIFEST_NAME "MANIFEST"

/* Replace dir/MANIFEST with m. KV_EINVAL if the ids break the invariants
 * (wal_id >= 1, next_id > wal_id, next_id > snapshot_id). KV_EIO (errno in
 * *err) / KV_ENOMEM: if the failure was the final directory fsync the new
 * manifest is already in place (not yet durable); otherwise the old one is
 * untouched. Either way the caller must keep every file either one names. */
int manifest_write(const char *dir, const manifest *m, int *err);
/* KV_OK, KV_NOTFOUND (no manifest), KV_ECORRUPT, KV_EVERSION, KV_EIO (errno
 * in *err), KV_ENOMEM. *m is written only on KV_OK. */
int manifest_read(const char *dir, manifest *m, int *err);

/* File names for ids, into buf (at least 32 bytes). */
void manifest_snap_name(uint64_t id, char *buf);
void manifest_wal_name(uint64_t id, char *buf);

#endif
