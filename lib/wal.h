/*
 * wal.h — the write-ahead log: record format, append, group commit, replay.
 *
 * A WAL file is a header followed by records; each record is one write or one
 * batch, carrying its length, type, sequence number and an xxh3 checksum of
 * header and payload. The exact byte layout is described in wal.c.
 */
#ifndef KYRO_WAL_H
#define KYRO_WAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>

enum { WAL_PUT = 1, WAL_DEL = 2, WAL_BATCH = 3 };

/* Batch payload entries (also used by kv_batch): op byte, key, then for a
 * put a u32 length and the bytes. Layout in wal.c. */
enum { WAL_OP_PUT = 1, WAL_OP_DEL = 2 };

#define WAL_HEADER_SIZE 32u                /* file header; the first record starts here */
#define WAL_MAX_BATCH ((size_t)1 << 30)    /* largest WAL_BATCH payload (wal_batch_add, wal_append) */

typedef struct wal wal;

/* Create a new, empty WAL file (fails if it exists), write its header,
 * fsync it and its directory. first_seq is the seq of its first record. */
int wal_create(const char *dir, const char *name, uint64_t first_seq, wal **out);
/* Open an existing WAL for appending after replay: truncates it to
 * valid_end (as returned by wal_replay), next record gets next_seq.
 * valid_end 0 (a torn header, see wal_replay), or a log with no records whose
 * header names another first seq, gets a fresh header with first_seq =
 * next_seq. Fsyncs the file before returning. */
int wal_open_append(const char *dir, const char *name, uint64_t valid_end,
                    uint64_t next_seq, wal **out);

/*
 * Append one record (not yet written to the file). The payload is the
 * concatenation of p1[0..n1) and p2[0..n2). Assigns the next sequence number
 * to *seq. Callers serialise appends; the returned *lsn is the byte position
 * just past the record, to pass to wal_commit. A full buffer is written out
 * (no sync) by the appender itself. WAL_PUT needs 8 <= n1 + n2 <= KV_MAX_VALUE
 * + 8, WAL_DEL exactly 8, WAL_BATCH at most WAL_MAX_BATCH (KV_ETOOBIG above
 * the limits, KV_EINVAL for other bad shapes). KV_EIO once the WAL failed.
 */
int wal_append(wal *w, uint32_t type, const void *p1, size_t n1, const void *p2,
               size_t n2, uint64_t *seq, uint64_t *lsn);

/*
 * Make the log up to lsn written (mode 1) or written and fdatasync'd (mode 0):
 * modes follow kv_sync_mode, mode 2 does nothing. Thread-safe, group commit:
 * a caller that finds a sync in flight waits and shares the next one. On an
 * I/O error the WAL becomes failed: this and every later call return KV_EIO
 * with the errno in *err. On success *durable_seq (if non-NULL) is the
 * highest seq covered by the mode's promise: synced (mode 0), written
 * (mode 1), appended (mode 2).
 */
int wal_commit(wal *w, uint64_t lsn, int mode, uint64_t *durable_seq, int *err);
/* The owner's count of writer threads between the start of a write and the
 * return of its wal_commit. A sync leader waits (briefly) until all of them
 * have queued, so that writers acknowledged by the previous sync share this
 * one. Set before the WAL is shared; NULL (the default) never waits. */
void wal_set_writers(wal *w, const atomic_uint *writers);
/* Write everything appended and fdatasync it (kv_sync, background timer). */
int wal_sync(wal *w, int *err);

/* Getters: any thread, any time before wal_close. */
uint64_t wal_bytes(const wal *w);        /* file size including unwritten appends */
uint64_t wal_sync_count(const wal *w);   /* fdatasync calls made */
uint64_t wal_last_seq(const wal *w);     /* seq of the last appended record, first_seq-1 if none */
int wal_failed(const wal *w);            /* non-zero after an I/O error */
int wal_error(const wal *w);             /* errno of the first I/O error, 0 if none */
/* errno behind this thread's last KV_EIO from wal_create, wal_open_append or
 * wal_replay (they have no handle to ask wal_error of). */
int wal_last_errno(void);
int wal_close(wal *w);                   /* does NOT sync; frees */

/*
 * Replay a WAL file: calls apply(ctx, type, seq, payload, len) for every
 * valid record with seq > after_seq, in order. Sequence numbers must rise by
 * one from record to record (else KV_ECORRUPT).
 * A bad or incomplete record with no valid record after it is a torn tail:
 * replay stops there, *torn = 1 (what a whole header's length covers is that
 * record's payload, not records after it; see wal.c). A bad record with a
 * valid one after it gives KV_ECORRUPT, unless recover != 0, in which case
 * the valid prefix is kept (and *torn = 1). *valid_end is the byte offset
 * after the last good record; *last_seq the seq of the last good record (or
 * header first_seq - 1).
 * A bad header: KV_ECORRUPT; unknown format version: KV_EVERSION. A file of
 * at most WAL_HEADER_SIZE bytes holding a partly written header (a crash in
 * wal_create) is an empty torn log: *valid_end = 0, *last_seq = after_seq,
 * *torn = 1; pass it to wal_open_append, which writes a new header.
 * An apply return other than KV_OK stops replay and is returned.
 * apply and the out-pointers may be NULL. I/O errors: KV_EIO (KV_ENOMEM).
 */
typedef int (*wal_apply_fn)(void *ctx, uint32_t type, uint64_t seq,
                            const uint8_t *payload, size_t len);
int wal_replay(const char *path, uint64_t after_seq, int recover, wal_apply_fn apply,
               void *ctx, uint64_t *valid_end, uint64_t *last_seq, int *torn);
/* wal_replay that also shows peek a record a few ahead of the one being
 * applied (type and payload inside the file, nothing verified yet), so the
 * caller can prefetch what applying it will touch. A hint only. */
typedef void (*wal_peek_fn)(void *ctx, uint32_t type, const uint8_t *payload, size_t len);
int wal_replay_peek(const char *path, uint64_t after_seq, int recover, wal_apply_fn apply,
                    wal_peek_fn peek, void *ctx, uint64_t *valid_end, uint64_t *last_seq,
                    int *torn);

/* Iterate the entries of a WAL_BATCH payload (also the kv_batch encoding).
 * Returns 1 with an entry, 0 at the end, KV_ECORRUPT if malformed (the
 * cursor then stays where it was). *val points into the payload (NULL for a
 * delete, whose *len is 0). */
typedef struct { const uint8_t *p, *end; } wal_batch_cursor;
int wal_batch_next(wal_batch_cursor *c, int *op, uint64_t *key, const uint8_t **val,
                   size_t *len);
/* Append one entry to a batch payload buffer (grows *buf, a malloc'd array).
 * KV_ETOOBIG past KV_MAX_VALUE per value or WAL_MAX_BATCH in all; on any
 * error the buffer is unchanged. */
int wal_batch_add(uint8_t **buf, size_t *len, size_t *cap, int op, uint64_t key,
                  const void *val, size_t vlen);

#endif
