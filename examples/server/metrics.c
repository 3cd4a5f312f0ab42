/*
 * metrics.c — counters and histograms, rendered as Prometheus text 0.0.4.
 *
 * HTTP side: each worker owns a metrics_worker block (requests by route and
 * status code, a latency histogram by route). Only its worker writes it, with
 * relaxed atomic load+store (no locked instruction on the hot path); the
 * renderer sums all blocks with relaxed loads, so a scrape may miss requests
 * answered while it runs but never sees a torn or decreasing value.
 *
 * Library side: gauges and counters come straight from kv_stats_get at each
 * scrape. The library keeps only the duration of its latest snapshot and
 * rebuild, so metrics_poll (every second, after every admin endpoint and at
 * each scrape) turns "the counter moved" into one histogram observation of
 * that latest duration (and, for a rebuild, of the index's max error). Two
 * automatic snapshots within one poll interval are therefore one sample.
 *
 * Every name starts with kyrodb_. Counter names end in _total.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "server.h"

const char *const route_names[ROUTE_COUNT] = {
    "put",     "lookup",    "put_fast", "get_fast", "delete", "scan",       "snapshot",
    "compact", "rmi_build", "warmup",   "health",   "metrics", "build_info", "unknown",
};

static const int codes[METRICS_CODES - 1] = {200, 201, 204, 400, 401, 403, 404, 405,
                                             408, 411, 413, 414, 429, 500, 503, 507};

/* Upper bounds of the request latency buckets, in nanoseconds. */
static const uint64_t lat_bounds_ns[METRICS_LAT_BUCKETS] = {
    25000,     50000,     100000,     250000,     500000,    1000000,
    2500000,   5000000,   10000000,   25000000,   50000000,  100000000,
    250000000, 500000000, 1000000000, 2500000000u,
};

/* A histogram written under the metrics lock (rare events only). */
#define SLOW_BUCKETS 12
typedef struct slow_hist {
    const double *bounds; /* SLOW_BUCKETS finite upper bounds */
    uint64_t bucket[SLOW_BUCKETS + 1];
    double sum;
    uint64_t count;
} slow_hist;

static const double dur_bounds[SLOW_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                0.1,   0.25,   0.5,   1,    5,     30};
static const double err_bounds[SLOW_BUCKETS] = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096};

struct metrics {
    int nworkers;
    metrics_worker **w;
    uint64_t start_ns;
    _Atomic uint64_t rate_limited, auth_failed;
    pthread_mutex_t lock; /* the fields below */
    uint64_t seen_snapshots, seen_rebuilds;
    slow_hist snapshot_dur, rebuild_dur, compaction_dur, rebuild_max_err;
};

static void hist_observe(slow_hist *h, double v)
{
    int i = 0;

    while (i < SLOW_BUCKETS && v > h->bounds[i])
        i++;
    h->bucket[i]++;
    h->sum += v;
    h->count++;
}

int metrics_create(int nworkers, metrics **out)
{
    metrics *m = calloc(1, sizeof *m);

    if (m == NULL)
        return -1;
    m->w = calloc((size_t)nworkers, sizeof *m->w);
    if (m->w == NULL)
        goto fail;
    m->nworkers = nworkers;
    for (int i = 0; i < nworkers; i++) {
        /* Separate, cache-line aligned blocks: no false sharing between workers. */
        size_t sz = (sizeof(metrics_worker) + 63) / 64 * 64;
        m->w[i] = aligned_alloc(64, sz);
        if (m->w[i] == NULL)
            goto fail;
        memset(m->w[i], 0, sz);
    }
    pthread_mutex_init(&m->lock, NULL);
    m->start_ns = now_ns();
    m->snapshot_dur.bounds = dur_bounds;
    m->rebuild_dur.bounds = dur_bounds;
    m->compaction_dur.bounds = dur_bounds;
    m->rebuild_max_err.bounds = err_bounds;
    *out = m;
    return 0;
fail:
    if (m->w)
        for (int i = 0; i < nworkers; i++)
            free(m->w[i]);
    free(m->w);
    free(m);
    return -1;
}

void metrics_destroy(metrics *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < m->nworkers; i++)
        free(m->w[i]);
    free(m->w);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

metrics_worker *metrics_worker_get(metrics *m, int i)
{
    return m->w[i];
}

static inline void bump(_Atomic uint64_t *c, uint64_t by)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

void metrics_request(metrics_worker *mw, route_id r, int code, uint64_t ns)
{
    int ci = METRICS_CODES - 1, bi = 0;

    for (int i = 0; i < METRICS_CODES - 1; i++)
        if (codes[i] == code) {
            ci = i;
            break;
        }
    while (bi < METRICS_LAT_BUCKETS && ns > lat_bounds_ns[bi])
        bi++;
    bump(&mw->requests[r][ci], 1);
    bump(&mw->lat_bucket[r][bi], 1);
    bump(&mw->lat_sum_ns[r], ns);
}

void metrics_rate_limited(metrics *m)
{
    atomic_fetch_add_explicit(&m->rate_limited, 1, memory_order_relaxed);
}

void metrics_auth_failed(metrics *m)
{
    atomic_fetch_add_explicit(&m->auth_failed, 1, memory_order_relaxed);
}

void metrics_observe_compaction(metrics *m, uint64_t ns)
{
    pthread_mutex_lock(&m->lock);
    hist_observe(&m->compaction_dur, (double)ns / 1e9);
    pthread_mutex_unlock(&m->lock);
}

void metrics_poll(metrics *m, kv_db *db)
{
    kv_stats st;

    if (kv_stats_get(db, &st) != KV_OK)
        return;
    pthread_mutex_lock(&m->lock);
    if (st.snapshots > m->seen_snapshots) {
        hist_observe(&m->snapshot_dur, (double)st.last_snapshot_ns / 1e9);
        m->seen_snapshots = st.snapshots;
    }
    if (st.rebuilds > m->seen_rebuilds) {
        hist_observe(&m->rebuild_dur, (double)st.last_rebuild_ns / 1e9);
        hist_observe(&m->rebuild_max_err, (double)st.index_max_error);
        m->seen_rebuilds = st.rebuilds;
    }
    pthread_mutex_unlock(&m->lock);
}

/* ---- rendering ------------------------------------------------------------ */

static void head(struct evbuffer *o, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void u64_metric(struct evbuffer *o, const char *name, const char *type, const char *help,
                       uint64_t v)
{
    head(o, name, type, help);
    evbuffer_add_printf(o, "%s %" PRIu64 "\n", name, v);
}

static void f_metric(struct evbuffer *o, const char *name, const char *type, const char *help,
                     double v)
{
    head(o, name, type, help);
    evbuffer_add_printf(o, "%s %.9g\n", name, v);
}

static void slow_hist_render(struct evbuffer *o, const char *name, const char *help,
                             const slow_hist *h)
{
    uint64_t cum = 0;

    head(o, name, "histogram", help);
    for (int i = 0; i < SLOW_BUCKETS; i++) {
        cum += h->bucket[i];
        evbuffer_add_printf(o, "%s_bucket{le=\"%.9g\"} %" PRIu64 "\n", name, h->bounds[i], cum);
    }
    cum += h->bucket[SLOW_BUCKETS];
    evbuffer_add_printf(o, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    evbuffer_add_printf(o, "%s_sum %.9g\n%s_count %" PRIu64 "\n", name, h->sum, name, h->count);
}

/* A label value with \, " and newline escaped as the text format requires. */
static void label_value(struct evbuffer *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            evbuffer_add_printf(o, "\\%c", *s);
        else if (*s == '\n')
            evbuffer_add(o, "\\n", 2);
        else
            evbuffer_add(o, s, 1);
    }
}

int metrics_render(metrics *m, kv_db *db, struct evbuffer *o)
{
    static uint64_t req[ROUTE_COUNT][METRICS_CODES];
    static uint64_t lat[ROUTE_COUNT][METRICS_LAT_BUCKETS + 1];
    static uint64_t lat_sum[ROUTE_COUNT];
    static pthread_mutex_t render_lock = PTHREAD_MUTEX_INITIALIZER;
    slow_hist snap, reb, comp, maxerr;
    kv_stats st;
    int rc;

    metrics_poll(m, db);
    rc = kv_stats_get(db, &st);
    if (rc != KV_OK)
        return rc;

    /* The sums live in static arrays (too big for a worker's stack to be
     * comfortable); the lock makes concurrent scrapes take turns. */
    pthread_mutex_lock(&render_lock);
    memset(req, 0, sizeof req);
    memset(lat, 0, sizeof lat);
    memset(lat_sum, 0, sizeof lat_sum);
    for (int w = 0; w < m->nworkers; w++) {
        metrics_worker *mw = m->w[w];
        for (int r = 0; r < ROUTE_COUNT; r++) {
            for (int c = 0; c < METRICS_CODES; c++)
                req[r][c] += atomic_load_explicit(&mw->requests[r][c], memory_order_relaxed);
            for (int b = 0; b <= METRICS_LAT_BUCKETS; b++)
                lat[r][b] += atomic_load_explicit(&mw->lat_bucket[r][b], memory_order_relaxed);
            lat_sum[r] += atomic_load_explicit(&mw->lat_sum_ns[r], memory_order_relaxed);
        }
    }

    head(o, "kyrodb_http_requests_total", "counter", "HTTP requests answered, by route and status code.");
    for (int r = 0; r < ROUTE_COUNT; r++)
        for (int c = 0; c < METRICS_CODES; c++) {
            if (req[r][c] == 0)
                continue;
            if (c < METRICS_CODES - 1)
                evbuffer_add_printf(o, "kyrodb_http_requests_total{route=\"%s\",code=\"%d\"} %" PRIu64 "\n",
                                    route_names[r], codes[c], req[r][c]);
            else
                evbuffer_add_printf(o, "kyrodb_http_requests_total{route=\"%s\",code=\"other\"} %" PRIu64 "\n",
                                    route_names[r], req[r][c]);
        }
    head(o, "kyrodb_http_request_duration_seconds", "histogram",
         "Time from routing a request to handing its reply to the connection, by route.");
    for (int r = 0; r < ROUTE_COUNT; r++) {
        uint64_t cum = 0;
        for (int b = 0; b <= METRICS_LAT_BUCKETS; b++)
            cum += lat[r][b];
        if (cum == 0)
            continue;
        cum = 0;
        for (int b = 0; b < METRICS_LAT_BUCKETS; b++) {
            cum += lat[r][b];
            evbuffer_add_printf(o,
                                "kyrodb_http_request_duration_seconds_bucket{route=\"%s\",le=\"%.9g\"} %" PRIu64 "\n",
                                route_names[r], (double)lat_bounds_ns[b] / 1e9, cum);
        }
        cum += lat[r][METRICS_LAT_BUCKETS];
        evbuffer_add_printf(o, "kyrodb_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                            route_names[r], cum);
        evbuffer_add_printf(o, "kyrodb_http_request_duration_seconds_sum{route=\"%s\"} %.9g\n",
                            route_names[r], (double)lat_sum[r] / 1e9);
        evbuffer_add_printf(o, "kyrodb_http_request_duration_seconds_count{route=\"%s\"} %" PRIu64 "\n",
                            route_names[r], cum);
    }
    pthread_mutex_unlock(&render_lock);

    u64_metric(o, "kyrodb_http_rate_limited_total", "counter", "Requests refused with 429 by the rate limiter.",
               atomic_load(&m->rate_limited));
    u64_metric(o, "kyrodb_http_auth_failures_total", "counter", "Requests refused with 401 (missing or wrong bearer token).",
               atomic_load(&m->auth_failed));

    u64_metric(o, "kyrodb_writable", "gauge",
               "1 while the database takes writes, 0 once a failed log write or sync has made it refuse them.",
               kv_write_status(db) == KV_OK);
    u64_metric(o, "kyrodb_keys", "gauge", "Live keys.", st.keys);
    u64_metric(o, "kyrodb_gets_total", "counter", "Point reads since the database was opened.", st.gets);
    u64_metric(o, "kyrodb_puts_total", "counter", "Puts since the database was opened.", st.puts);
    u64_metric(o, "kyrodb_deletes_total", "counter", "Deletes since the database was opened.", st.deletes);
    u64_metric(o, "kyrodb_scans_total", "counter", "Range scans since the database was opened.", st.scans);
    u64_metric(o, "kyrodb_pending_writes", "gauge", "Writes not yet folded into the learned index.", st.pending_writes);
    u64_metric(o, "kyrodb_wal_size_bytes", "gauge", "Current WAL size on disk.", st.wal_bytes);
    u64_metric(o, "kyrodb_wal_syncs_total", "counter", "fdatasync calls on the WAL.", st.wal_syncs);
    u64_metric(o, "kyrodb_snapshot_size_bytes", "gauge", "Current snapshot size on disk.", st.snapshot_bytes);
    u64_metric(o, "kyrodb_memory_bytes", "gauge", "Heap memory the database holds.", st.memory_bytes);
    u64_metric(o, "kyrodb_rmi_leaves", "gauge", "Leaf models in the learned index.", st.index_models);
    u64_metric(o, "kyrodb_rmi_max_error", "gauge", "Largest leaf error bound of the learned index, in positions.",
               st.index_max_error);
    f_metric(o, "kyrodb_rmi_probe_len_avg", "gauge", "Mean positions probed per index lookup since open.",
             st.index_avg_probe);
    u64_metric(o, "kyrodb_rmi_fallbacks_total", "counter",
               "Index lookups that left the model's error window.", st.index_fallbacks);
    u64_metric(o, "kyrodb_rmi_rebuilds_total", "counter", "Learned index rebuilds since open.", st.rebuilds);
    u64_metric(o, "kyrodb_snapshots_total", "counter", "Snapshots written since open.", st.snapshots);
    u64_metric(o, "kyrodb_compactions_total", "counter", "Compactions since open.", st.compactions);
    f_metric(o, "kyrodb_rmi_last_rebuild_seconds", "gauge", "Duration of the latest index rebuild.",
             (double)st.last_rebuild_ns / 1e9);
    f_metric(o, "kyrodb_last_snapshot_seconds", "gauge", "Duration of the latest snapshot.",
             (double)st.last_snapshot_ns / 1e9);
    f_metric(o, "kyrodb_recovery_seconds", "gauge", "Time kv_open spent recovering.",
             (double)st.recovery_ns / 1e9);

    pthread_mutex_lock(&m->lock);
    snap = m->snapshot_dur;
    reb = m->rebuild_dur;
    comp = m->compaction_dur;
    maxerr = m->rebuild_max_err;
    pthread_mutex_unlock(&m->lock);
    slow_hist_render(o, "kyrodb_snapshot_duration_seconds", "Snapshot durations (sampled once per poll).", &snap);
    slow_hist_render(o, "kyrodb_rmi_rebuild_duration_seconds", "Index rebuild durations (sampled once per poll).",
                     &reb);
    slow_hist_render(o, "kyrodb_compaction_duration_seconds", "Durations of compactions run by POST /v1/compact.",
                     &comp);
    slow_hist_render(o, "kyrodb_rmi_max_error_positions", "The index's max error bound after each rebuild.",
                     &maxerr);

    f_metric(o, "kyrodb_uptime_seconds", "gauge", "Seconds since the server started.",
             (double)(now_ns() - m->start_ns) / 1e9);
    head(o, "kyrodb_build_info", "gauge", "Build facts; the value is always 1.");
    evbuffer_add_printf(o, "kyrodb_build_info{version=\"");
    label_value(o, kv_version());
    evbuffer_add_printf(o, "\",commit=\"");
    label_value(o, build_commit);
    evbuffer_add_printf(o, "\",simd=\"");
    label_value(o, st.simd ? st.simd : "unknown");
    evbuffer_add_printf(o, "\"} 1\n");
    return KV_OK;
}
