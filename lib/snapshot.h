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
 * dir). max_seq is the highest WAL seq the run contains. *bytes = file size.
 * r is only read (any number of threads may read it meanwhile); r->index may
 * be NULL (a model is then trained for the file). KV_EIO (errno in *err) or
 * KV_ENOMEM, with no file left behind; KV_EINVAL for a run the format cannot
 * hold (keys not strictly ascending, a value over KV_MAX_VALUE). bytes and
 * err may be NULL. */
int snap_write(const char *dir, const char *name, const run *r, uint64_t max_seq,
               uint64_t *bytes, int *err);

/* Map and verify dir/name (magic, version, bounds, every checksum, keys
 * strictly ascending, references in bounds, model) and make a run whose keys
 * and values are read in place from the mapping. KV_ECORRUPT / KV_EVERSION /
 * KV_EIO (errno in *err) / KV_ENOMEM. A missing file is KV_ECORRUPT (with
 * ENOENT in *err): the caller was told by the manifest that it exists.
 * *out (refs 1) belongs to the caller, released with run_unref; its one
 * segment and r->file are the same mapping segment, unmapped when the last
 * run or segment reference goes. max_seq, bytes and err may be NULL. */
int snap_load(const char *dir, const char *name, run **out, uint64_t *max_seq,
              uint64_t *bytes, int *err);

#endif
