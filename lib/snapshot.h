/*
 * snapshot.h — the on-disk image of a base run: one sorted file with keys,
 * value references, values and the trained model, each section checksummed.
 * Written to a temporary name, fsync'd and renamed into place.
 */
#ifndef KYRO_SNAPSHOT_H
#define KYRO_SNAPSHOT_H

#include <stdint.h>

#include "run.h"

/* Write r as snapshot file dir/name (via dir/name.tmp, fsync, rename, fsync
 * dir). max_seq is the highest WAL seq the run contains. *bytes = file size. */
int snap_write(const char *dir, const char *name, const run *r, uint64_t max_seq,
               uint64_t *bytes, int *err);

/* Map and verify dir/name (magic, version, bounds, every checksum, keys
 * strictly ascending, references in bounds, model) and make a run whose keys
 * and values are read in place from the mapping. KV_ECORRUPT / KV_EVERSION /
 * KV_EIO (errno in *err) / KV_ENOMEM. */
int snap_load(const char *dir, const char *name, run **out, uint64_t *max_seq,
              uint64_t *bytes, int *err);

#endif
