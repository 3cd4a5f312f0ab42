/*
 * batch.c — kv_batch: a list of puts and deletes applied as one unit.
 *
 * A batch is kept already encoded as a WAL_BATCH payload (see wal.c), so a
 * commit appends it to the log without re-encoding. The caller owns it.
 */
#include <stdlib.h>

#include "db.h"

struct kv_batch {
    uint8_t *buf;
    size_t len, cap;
    size_t count;
};

int kv_batch_new(kv_batch **out)
{
    if (!out)
        return KV_EINVAL;
    *out = calloc(1, sizeof **out);
    return *out ? KV_OK : KV_ENOMEM;
}

int kv_batch_put(kv_batch *b, uint64_t key, const void *val, size_t len)
{
    if (!b || (!val && len))
        return KV_EINVAL;
    if (len > KV_MAX_VALUE)
        return KV_ETOOBIG;
    int rc = wal_batch_add(&b->buf, &b->len, &b->cap, WAL_OP_PUT, key, val, len);
    if (rc == KV_OK)
        b->count++;
    return rc;
}

int kv_batch_delete(kv_batch *b, uint64_t key)
{
    if (!b)
        return KV_EINVAL;
    int rc = wal_batch_add(&b->buf, &b->len, &b->cap, WAL_OP_DEL, key, NULL, 0);
    if (rc == KV_OK)
        b->count++;
    return rc;
}

void kv_batch_clear(kv_batch *b)
{
    if (b) {
        b->len = 0;
        b->count = 0;
    }
}

int kv_batch_commit(kv_db *db, kv_batch *b)
{
    if (!db || !b)
        return KV_EINVAL;
    if (db->readonly)
        return KV_EREADONLY;
    if (b->count == 0)
        return KV_OK;
    return db_write(db, WAL_BATCH, 0, NULL, 0, b->buf, b->len);
}

void kv_batch_free(kv_batch *b)
{
    if (b) {
        free(b->buf);
        free(b);
    }
}
