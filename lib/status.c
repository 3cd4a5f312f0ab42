/*
 * status.c — version, status text and option defaults: the static facts of
 * the public API.
 */
#include <string.h>

#include "kyro.h"

const char *kv_version(void)
{
    return KYRO_VERSION;
}

const char *kv_strerror(int rc)
{
    switch (rc) {
    case KV_OK: return "ok";
    case KV_NOTFOUND: return "not found";
    case KV_EINVAL: return "invalid argument";
    case KV_ENOMEM: return "out of memory";
    case KV_EIO: return "I/O error";
    case KV_ECORRUPT: return "database file is corrupt";
    case KV_EBUSY: return "database is already open";
    case KV_ETOOBIG: return "value too large";
    case KV_ERANGE: return "buffer too small";
    case KV_EREADONLY: return "database is read-only";
    case KV_EVERSION: return "incompatible file format version";
    default: return "unknown error";
    }
}

void kv_options_init(kv_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->flags = KV_CREATE;
    opts->sync = KV_SYNC_FULL;
    opts->sync_interval_ms = 1000;
    opts->wal_max_bytes = (uint64_t)256 << 20;
    opts->auto_snapshot_secs = 0;
    opts->rebuild_appends = 0;
}
