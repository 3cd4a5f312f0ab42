/*
 * server.h — what the files of kyrodb-server share.
 *
 *   main.c       command line, environment, opening the database, threads,
 *                signals and the orderly shutdown
 *   http.c       one evhttp per worker thread, the router and every handler
 *   json.c       the strict parser of the POST /v1/put body, key parsing and
 *                JSON string escaping
 *   ratelimit.c  per-client token buckets
 *   metrics.c    per-worker counters and histograms, the Prometheus page
 *   log.c        levelled logging to stderr (KYRODB_LOG)
 *
 * Threads: the main thread only waits for SIGINT/SIGTERM. Each worker thread
 * owns one event_base and one evhttp, listening on its own SO_REUSEPORT
 * socket bound to the same address; nothing of libevent is shared between
 * threads. What is shared is the kv_db handle (safe from any thread), the
 * rate-limit table (locked), the metrics (one block per worker, written by
 * that worker alone, read by whoever renders /metrics) and the read-only
 * configuration.
 */
#ifndef KYRO_SERVER_H
#define KYRO_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kyro.h"

struct evbuffer;

#define SERVER_NAME "kyrodb-server"

/* ---- log.c ------------------------------------------------------------ */

enum { KLOG_OFF = 0, KLOG_ERROR, KLOG_WARN, KLOG_INFO, KLOG_DEBUG, KLOG_TRACE };

extern int log_level; /* written once at start-up, read by every thread */

/* Parse a KYRODB_LOG value: a level name (error, warn, info, debug, trace,
 * off), or a RUST_LOG-style list such as "warn,kyrodb=debug" where a
 * directive naming a target that starts with "kyrodb" wins over a bare level.
 * Returns 0 and sets *out, or -1 when nothing in s names a level. */
int log_parse_level(const char *s, int *out);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_AT(lvl, ...)                                                                           \
    do {                                                                                           \
        if (log_level >= (lvl))                                                                    \
            log_msg((lvl), __VA_ARGS__);                                                           \
    } while (0)
#define LOGE(...) LOG_AT(KLOG_ERROR, __VA_ARGS__)
#define LOGW(...) LOG_AT(KLOG_WARN, __VA_ARGS__)
#define LOGI(...) LOG_AT(KLOG_INFO, __VA_ARGS__)
#define LOGD(...) LOG_AT(KLOG_DEBUG, __VA_ARGS__)
#define LOGT(...) LOG_AT(KLOG_TRACE, __VA_ARGS__)

/* ---- json.c ------------------------------------------------------------ */

/* A key as it appears in a path or a query: one or more ASCII digits
 * (leading zeros allowed) whose value fits in uint64_t. Nothing else: no sign, no
 * space, no empty string, no trailing byte. Returns 0 or -1. */
int json_parse_key(const char *s, size_t n, uint64_t *out);

/* Parse the body of POST /v1/put: exactly one JSON object with exactly the
 * members "key" (a non-negative integer without fraction or exponent, at
 * most UINT64_MAX) and "value" (a string), in either order, surrounded by
 * optional whitespace. The text must be valid UTF-8 (RFC 8259). On success
 * returns 0, *key is set and *val is a malloc'd buffer of *vlen decoded bytes
 * (escapes decoded, \uXXXX surrogate pairs joined) that the caller frees. On
 * failure returns -1 and *err points to a static message. */
int json_parse_put(const char *s, size_t n, uint64_t *key, char **val, size_t *vlen,
                   const char **err);

/* true when p[0..n) is well-formed UTF-8 (no overlongs, no surrogates). */
bool json_utf8_valid(const void *p, size_t n);

/* Append p[0..n) to out as the inside of a JSON string: '"', '\\' and
 * control characters escaped, valid UTF-8 copied as is, every byte that is
 * not part of a valid UTF-8 sequence replaced by U+FFFD. */
int json_escape(struct evbuffer *out, const void *p, size_t n);

/* ---- ratelimit.c --------------------------------------------------------- */

typedef struct rl_table rl_table;

/* A table of per-client buckets: rps tokens a second with a burst of one
 * second's worth, and a separate bucket for admin endpoints at admin_rps.
 * Any thread. */
int rl_create(double rps, double admin_rps, rl_table **out);
void rl_destroy(rl_table *t);
/* Take one token from client's bucket (the admin one when admin is true);
 * false when it is empty. client is a NUL-terminated address string. */
bool rl_allow(rl_table *t, const char *client, bool admin, uint64_t now_ns);
/* Forget clients whose buckets have been full (idle) for a while. */
void rl_sweep(rl_table *t, uint64_t now_ns);
size_t rl_clients(rl_table *t);

/* ---- metrics.c ------------------------------------------------------------ */

typedef enum {
    ROUTE_PUT,
    ROUTE_LOOKUP,
    ROUTE_PUT_FAST,
    ROUTE_GET_FAST,
    ROUTE_DELETE,
    ROUTE_SCAN,
    ROUTE_SNAPSHOT,
    ROUTE_COMPACT,
    ROUTE_RMI_BUILD,
    ROUTE_WARMUP,
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_BUILD_INFO,
    ROUTE_UNKNOWN,
    ROUTE_COUNT
} route_id;

extern const char *const route_names[ROUTE_COUNT];

#define METRICS_CODES 17      /* distinct status codes tracked, the last is "other" */
#define METRICS_LAT_BUCKETS 16 /* finite latency buckets; one more for +Inf */

/* One per worker thread, written only by that thread (relaxed atomic stores,
 * no read-modify-write), summed by the renderer. */
typedef struct metrics_worker {
    _Atomic uint64_t requests[ROUTE_COUNT][METRICS_CODES];
    _Atomic uint64_t lat_bucket[ROUTE_COUNT][METRICS_LAT_BUCKETS + 1];
    _Atomic uint64_t lat_sum_ns[ROUTE_COUNT];
} metrics_worker;

typedef struct metrics metrics;

int metrics_create(int nworkers, metrics **out);
void metrics_destroy(metrics *m);
metrics_worker *metrics_worker_get(metrics *m, int i);
/* Record one answered request on worker mw. */
void metrics_request(metrics_worker *mw, route_id r, int code, uint64_t ns);
/* Server-wide counters, any thread. */
void metrics_rate_limited(metrics *m);
void metrics_auth_failed(metrics *m);
/* A compaction the server ran took ns. */
void metrics_observe_compaction(metrics *m, uint64_t ns);
/* Compare kv_stats with the last poll and feed the snapshot and rebuild
 * duration histograms (the library reports the latest duration; a poll runs
 * every second and after every admin endpoint). Any thread. */
void metrics_poll(metrics *m, kv_db *db);
/* Append the Prometheus text (format 0.0.4) to out. */
int metrics_render(metrics *m, kv_db *db, struct evbuffer *out);

/* ---- main.c / http.c --------------------------------------------------------- */

typedef struct server_config {
    const char *host;
    int port;
    const char *data_dir;
    kv_options opts;
    int threads;
    int timeout_secs;      /* read/write/idle timeout of a connection */
    bool rate_limit;       /* --enable-rate-limiting */
    double rl_rps;         /* KYRODB_RL_RPS */
    double rl_admin_rps;   /* KYRODB_RL_ADMIN_RPS, default rl_rps / 10 */
    const char *auth_token; /* NULL or "": no auth */
    size_t auth_token_len;
    bool warm_on_start;    /* KYRODB_WARM_ON_START */
} server_config;

typedef struct server {
    server_config cfg;
    kv_db *db;
    rl_table *rl;    /* NULL unless rate limiting is on */
    metrics *met;
    uint64_t start_ns;
} server;

uint64_t now_ns(void); /* CLOCK_MONOTONIC in nanoseconds */
/* The message for a library status rc (http.c): kv_strerror(rc), followed
 * by strerror(err) when err, the errno behind it, is not 0. */
void kv_error_text(char *msg, size_t cap, int rc, int err);

/* Facts fixed at build time (main.c): the git commit comes from
 * -DKYRODB_GIT_COMMIT="..." when the build passes it, else "unknown"; the
 * build time from -DKYRODB_BUILD_TIME="..." else __DATE__ __TIME__. */
extern const char build_commit[];
extern const char build_time[];
extern const char build_compiler[];

typedef struct http_worker http_worker;

/* Create worker `id` of srv listening on its own SO_REUSEPORT socket bound
 * to addr (a struct sockaddr of addrlen bytes). Called from the main thread
 * before any worker runs. */
int http_worker_create(server *srv, int id, const void *addr, unsigned addrlen,
                       http_worker **out);
/* Run the worker's event loop on a new thread. */
int http_worker_start(http_worker *w);
/* Ask the worker to leave its loop (async-signal-safe: one write()). */
void http_worker_stop(http_worker *w);
/* Set when a worker's loop ended without being asked to (it then sends
 * SIGTERM to the process so the main thread shuts everything down). */
extern _Atomic bool http_worker_failed;
/* Wait for the thread, then free everything the worker owns. */
void http_worker_join_free(http_worker *w);

#endif /* KYRO_SERVER_H */
