/*
 * http.c — the REST interface, on libevent's evhttp.
 *
 * One http_worker per thread: its own event_base, its own evhttp and its own
 * listening socket, bound with SO_REUSEPORT to the shared address so the
 * kernel spreads new connections over the workers. A handler runs to the
 * end on its worker's thread (the library's reads are lock-free, its writes
 * serialise inside the library), so a slow admin call (snapshot, compact)
 * holds up only the connections of one worker.
 *
 * Routes (a request that matches none gets 404; a known path with the wrong
 * method gets 405 with Allow):
 *
 *   POST   /v1/put               {"key": u64, "value": "string"}  -> 200 JSON
 *   GET    /v1/lookup?key=K                                        -> 200 {"key","value"}
 *   POST   /v1/put_fast/K        raw body is the value             -> 204
 *   GET    /v1/get_fast/K        raw value, application/octet-stream
 *   DELETE /v1/K                                                   -> 200 JSON
 *   GET    /v1/scan?lo=&hi=&limit=                                 -> 200 JSON array
 *   POST   /v1/snapshot | /v1/compact | /v1/rmi/build | /v1/warmup -> 200 JSON
 *   GET    /health | /metrics | /build_info
 *
 * Every error we answer is JSON: {"error": "...", "status": N}. Requests
 * evhttp refuses before they reach the router (an unparsable request line
 * or header, headers over HTTP_MAX_HEADERS, a body over HTTP_MAX_BODY,
 * TRACE/CONNECT) get libevent's own small HTML error page and the
 * connection is closed; evhttp 2.1 has no hook to change that. Values that
 * are not valid UTF-8 come back from the JSON routes with U+FFFD in "value"
 * and the exact bytes in an extra "value_hex" member. A scan stops at `limit`
 * pairs or SCAN_MAX_BYTES of values; when it stopped early the header
 * X-KyroDB-Next-Key names the key to continue from.
 *
 * Limits: JSON bodies 1 MiB (413), raw values KV_MAX_VALUE (413), headers
 * 16 KiB; a connection that sends or accepts nothing for --timeout-secs is
 * closed. A slow client costs its connection's buffers, never a thread.
 *
 * Order of checks for each request: route, rate limit (not /health), bearer
 * token (not /health), method, then the handler. Answers on keep-alive
 * connections are written at once (see send_reply), and after its first
 * request a connection's bytes are read by its "anchor" event rather than
 * by the bufferevent (see struct anchor): evhttp still parses and answers
 * everything, we only save it system calls.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h> /* ev_read, timeout_read: see the anchor */
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

#include "server.h"

#define JSON_MAX_BODY ((size_t)1 << 20)               /* POST /v1/put */
#define HTTP_MAX_BODY (KV_MAX_VALUE + ((size_t)1 << 20)) /* evhttp's own cap, answered 413 */
#define HTTP_MAX_HEADERS 16384
#define GETBUF_SIZE ((size_t)64 << 10)
#define SCAN_DEFAULT_LIMIT 1000
#define SCAN_MAX_LIMIT 10000
#define SCAN_MAX_BYTES ((size_t)16 << 20)
#define BAD_KEY "bad key: expected a decimal integer from 0 to 18446744073709551615"

struct http_worker {
    server *srv;
    int id;
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    struct event_base *base;
    struct evhttp *http;
    struct event *wake_ev, *tick_ev;
    int wake_fd[2];
    metrics_worker *mw;
    unsigned ticks;
    char *getbuf;
    struct anchor **anchors; /* indexed by descriptor; see anchor_attach */
    size_t nanchors;
};

_Atomic bool http_worker_failed;

/* One request being answered. */
typedef struct rq {
    http_worker *w;
    struct evhttp_request *req;
    route_id route;
    uint64_t t0;
} rq;

enum {
    M_GET = EVHTTP_REQ_GET,
    M_HEAD = EVHTTP_REQ_HEAD,
    M_POST = EVHTTP_REQ_POST,
    M_PUT = EVHTTP_REQ_PUT,
    M_DELETE = EVHTTP_REQ_DELETE,
};

static const char *reason_for(int code)
{
    switch (code) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return NULL; /* evhttp's own table */
    }
}

static const char *method_name(enum evhttp_cmd_type c)
{
    switch (c) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return "?";
    }
}

static const char *peer_of(struct evhttp_request *req)
{
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    char *addr = NULL;
    ev_uint16_t port = 0;

    if (c != NULL)
        evhttp_connection_get_peer(c, &addr, &port);
    return addr != NULL ? addr : "?";
}

static void set_header(rq *r, const char *name, const char *value)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->req), name, value);
}

/* true when the connection stays open after this answer: HTTP/1.1 or later
 * and no "Connection: close" from the client. (http_struct.h is the only way
 * evhttp 2.1 shows the request's version.) */
static bool keeps_alive(struct evhttp_request *req)
{
    const char *c;

    if (req->major != 1 || req->minor < 1)
        return false;
    c = evhttp_find_header(evhttp_request_get_input_headers(req), "Connection");
    return c == NULL || strcasestr(c, "close") == NULL;
}

/*
 * The anchor: a second, never-removed EV_READ event on every connection's
 * socket, which also does the connection's reading. Both save a system call
 * per request, and on this paravirtualised machine system calls are most of
 * what a small request costs.
 *
 * 1. evhttp switches its bufferevent's reading off and on around each
 *    request. With epoll's changelist a delete and re-add of the only read
 *    event on a descriptor in one loop iteration still costs an
 *    EPOLL_CTL_MOD. libevent calls the backend only when the count of read
 *    events on a descriptor goes between 0 and 1, so while the anchor stays
 *    added evhttp's toggling never reaches epoll.
 *
 * 2. The bufferevent reads with evbuffer_read, which asks FIONREAD (an
 *    ioctl) before every readv. The anchor recv()s straight into the
 *    bufferevent's input buffer instead and runs evhttp's read callback with
 *    bufferevent_trigger, exactly as the bufferevent would have. It takes
 *    the bufferevent's own read event off this round's active list (a
 *    delete and re-add, which also restarts the read timeout as a read by
 *    the bufferevent would) and moves itself back in front of it: libevent
 *    activates the events of a descriptor newest first, so the anchor runs
 *    first next time too. End of file, errors and spurious wake-ups are left
 *    to the bufferevent, which runs right after and sees them itself.
 *
 * While evhttp has reading off (from the end of a request's body until its
 * answer is out), the anchor must not read; and if bytes wait then (a
 * client pipelining behind a request whose answer could not be written at
 * once), level-triggered epoll would wake us for them on every iteration,
 * so the anchor steps aside until the connection's next request
 * (anchor_attach). The anchor is set up at a connection's first request and
 * evhttp calls anchor_close before it closes the socket, so a descriptor
 * number is never shared by two anchors. Measured on the 2-core box: a
 * keep-alive request went from 3 system calls (ioctl, readv, writev) plus an
 * epoll_ctl for requests with a body to 2 (recv, writev), and the server's
 * CPU time per GET from about 21 to 18 us, per PUT from 31 to 27 us.
 */
#define ANCHOR_READ 16384

struct anchor {
    http_worker *w;
    struct evhttp_connection *evcon;
    struct event *ev;
    int fd;
    bool parked;
};

static void add_with_timeout(struct event *ev, const struct timeval *tv)
{
    event_add(ev, evutil_timerisset(tv) ? tv : NULL);
}

/* Put the anchor first among its descriptor's events (see above); evhttp
 * re-adds its read event after each request with a body. */
static void anchor_front(struct anchor *a)
{
    event_del(a->ev);
    event_add(a->ev, NULL);
}

static void anchor_cb(evutil_socket_t fd, short what, void *arg)
{
    struct anchor *a = arg;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(a->evcon);
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v;
    ssize_t n;

    (void)what;
    if (!(bufferevent_get_enabled(bev) & EV_READ)) {
        event_del(a->ev);
        a->parked = true;
        return;
    }
    evbuffer_unfreeze(in, 0);
    if (evbuffer_reserve_space(in, ANCHOR_READ, &v, 1) < 1) {
        evbuffer_freeze(in, 0);
        return;
    }
    n = recv(fd, v.iov_base, v.iov_len < ANCHOR_READ ? v.iov_len : ANCHOR_READ, 0);
    if (n > 0) {
        v.iov_len = (size_t)n;
        evbuffer_commit_space(in, &v, 1);
    }
    evbuffer_freeze(in, 0);
    if (n > 0) {
        event_del(&bev->ev_read);
        add_with_timeout(&bev->ev_read, &bev->timeout_read);
    }
    anchor_front(a);
    /* Last: evhttp may answer, close the connection and free a here. */
    if (n > 0)
        bufferevent_trigger(bev, EV_READ, 0);
}

static void anchor_close(struct evhttp_connection *evcon, void *arg)
{
    struct anchor *a = arg;

    (void)evcon;
    a->w->anchors[a->fd] = NULL;
    event_free(a->ev);
    free(a);
}

/* Called for every request; a failure only costs the optimisation. */
static void anchor_attach(http_worker *w, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct anchor *a;
    int fd;

    if (evcon == NULL)
        return;
    fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
    if (fd < 0)
        return;
    if ((size_t)fd < w->nanchors && (a = w->anchors[fd]) != NULL) {
        if (a->evcon == evcon) {
            if (a->parked && event_add(a->ev, NULL) == 0)
                a->parked = false;
            return;
        }
        return; /* cannot happen: evhttp closes through anchor_close */
    }
    if ((size_t)fd >= w->nanchors) {
        size_t n = w->nanchors ? w->nanchors : 1024;
        while (n <= (size_t)fd)
            n *= 2;
        struct anchor **t = realloc(w->anchors, n * sizeof *t);
        if (t == NULL)
            return;
        memset(t + w->nanchors, 0, (n - w->nanchors) * sizeof *t);
        w->anchors = t;
        w->nanchors = n;
    }
    a = calloc(1, sizeof *a);
    if (a == NULL)
        return;
    a->w = w;
    a->evcon = evcon;
    a->fd = fd;
    a->ev = event_new(w->base, fd, EV_READ | EV_PERSIST, anchor_cb, a);
    if (a->ev == NULL || event_add(a->ev, NULL) != 0) {
        if (a->ev)
            event_free(a->ev);
        free(a);
        return;
    }
    w->anchors[fd] = a;
    evhttp_connection_set_closecb(evcon, anchor_close, a);
}

/*
 * Hand the answer to evhttp, then, on a keep-alive connection, write it to
 * the socket at once instead of on the next loop iteration.
 *
 * evhttp queues the answer in the connection's bufferevent and turns on
 * EV_WRITE; the bufferevent writes it when epoll next reports the socket
 * writable, and its write callback tells evhttp the request is done (evhttp
 * then turns EV_WRITE off and EV_READ back on). That is an epoll_ctl, an
 * epoll_wait wake-up and another epoll_ctl per request. Writing the
 * bufferevent's output ourselves (evbuffer_write, with the start of the
 * buffer unfrozen for the call) and then running the bufferevent's write
 * callback (bufferevent_trigger) lets evhttp finish the request inside this
 * iteration, so the EV_WRITE on/off pair cancels out in epoll's changelist
 * and only EV_READ's off/on pair is left (one EPOLL_CTL_MOD). Measured with
 * strace: a keep-alive GET went from 7 system calls (readv, FIONREAD ioctl,
 * writev, 4 x epoll_ctl) to 4 (readv, ioctl, writev, 1 x epoll_ctl), and
 * one worker's GET rate with wrk -c64 on the 2-core box from ~39k to ~63k
 * requests/s (this and the changelist together, measured in one run). When the socket takes only part of the
 * answer (or none), nothing changes: the bufferevent writes the rest and
 * calls back as usual. Closing connections take evhttp's own path so it
 * never frees a connection under our feet.
 *
 * r->req must not be used after this call (the request may be freed).
 */
static void send_reply(rq *r, int code, const char *ctype)
{
    struct evhttp_request *req = r->req;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    bool now = evcon != NULL && keeps_alive(req);
    uint64_t dt;

    if (ctype != NULL)
        set_header(r, "Content-Type", ctype);
    dt = now_ns() - r->t0;
    metrics_request(r->w->mw, r->route, code, dt);
    if (log_level >= KLOG_DEBUG)
        log_msg(code >= 500 ? KLOG_ERROR : KLOG_DEBUG, "%s %s %d %.1fus peer=%s worker=%d",
                method_name(evhttp_request_get_command(req)), evhttp_request_get_uri(req), code,
                (double)dt / 1e3, peer_of(req), r->w->id);
    r->req = NULL;
    evhttp_send_reply(req, code, reason_for(code), NULL);
    if (now) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
        struct evbuffer *out = bufferevent_get_output(bev);
        int n;

        http_worker *w = r->w;
        int fd = bufferevent_getfd(bev);
        struct anchor *a;

        evbuffer_unfreeze(out, 1);
        n = evbuffer_write(out, fd);
        evbuffer_freeze(out, 1);
        if (n > 0 && evbuffer_get_length(out) == 0) {
            bufferevent_trigger(bev, EV_WRITE, 0);
            /* evhttp has now re-armed reading (or closed the connection,
             * which took the anchor away with it) */
            if (fd >= 0 && (size_t)fd < w->nanchors && (a = w->anchors[fd]) != NULL && !a->parked)
                anchor_front(a);
        }
    }
}

static void send_error(rq *r, int code, const char *msg)
{
    struct evbuffer *o = evhttp_request_get_output_buffer(r->req);

    evbuffer_drain(o, evbuffer_get_length(o));
    evbuffer_add(o, "{\"error\":\"", 10);
    json_escape(o, msg, strlen(msg));
    evbuffer_add_printf(o, "\",\"status\":%d}\n", code);
    if (code >= 500 && log_level < KLOG_DEBUG)
        LOGE("%s %s: %d %s", method_name(evhttp_request_get_command(r->req)),
             evhttp_request_get_uri(r->req), code, msg);
    send_reply(r, code, "application/json");
}

void kv_error_text(char *msg, size_t cap, int rc, int err)
{
    if (err != 0)
        snprintf(msg, cap, "%s: %s", kv_strerror(rc), strerror(err));
    else
        snprintf(msg, cap, "%s", kv_strerror(rc));
}

/* A library status that is not KV_OK/KV_NOTFOUND, as an HTTP answer. An I/O
 * error names its errno, so a client can tell a full disk (507) from a
 * failing one. */
static void send_kv_error(rq *r, int rc)
{
    int code = 500;
    char msg[160];

    if (rc == KV_ETOOBIG)
        code = 413;
    else if (rc == KV_EREADONLY || rc == KV_EBUSY)
        code = 503;
    else if (rc == KV_EINVAL)
        code = 400;
    int err = rc == KV_EIO ? kv_errno(r->w->srv->db) : 0;
    if (err == ENOSPC || err == EDQUOT)
        code = 507;
    kv_error_text(msg, sizeof msg, rc, err);
    send_error(r, code, msg);
}

static void send_json(rq *r, int code)
{
    send_reply(r, code, "application/json");
}

/* Append a {"key":K,"value":"..."} object for one pair. */
static void pair_json(struct evbuffer *o, uint64_t key, const void *val, size_t len)
{
    evbuffer_add_printf(o, "{\"key\":%" PRIu64 ",\"value\":\"", key);
    json_escape(o, val, len);
    if (json_utf8_valid(val, len)) {
        evbuffer_add(o, "\"}", 2);
        return;
    }
    evbuffer_add(o, "\",\"value_hex\":\"", 15);
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = val;
    char chunk[512];
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        chunk[k++] = hex[p[i] >> 4];
        chunk[k++] = hex[p[i] & 15];
        if (k == sizeof chunk) {
            evbuffer_add(o, chunk, k);
            k = 0;
        }
    }
    evbuffer_add(o, chunk, k);
    evbuffer_add(o, "\"}", 2);
}

/* Parse a query string "a=1&b=2" against the allowed names. Each name may
 * appear once; an unknown name is an error. vals[i] is NULL when names[i]
 * is absent. Values are not percent-decoded (every value we take is digits
 * only, and a '%' then fails their check). */
static int parse_query(const char *q, const char *const *names, int nnames, const char **vals,
                       size_t *lens, char *err, size_t errcap)
{
    for (int i = 0; i < nnames; i++)
        vals[i] = NULL;
    while (q != NULL && *q != '\0') {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        size_t nl = eq ? (size_t)(eq - q) : n;
        int i;

        if (n > 0) {
            for (i = 0; i < nnames; i++)
                if (strlen(names[i]) == nl && memcmp(names[i], q, nl) == 0)
                    break;
            if (i == nnames) {
                snprintf(err, errcap, "unknown query parameter '%.*s'", (int)(nl > 32 ? 32 : nl), q);
                return -1;
            }
            if (vals[i] != NULL) {
                snprintf(err, errcap, "query parameter '%s' given twice", names[i]);
                return -1;
            }
            vals[i] = eq ? eq + 1 : q + n;
            lens[i] = eq ? n - nl - 1 : 0;
        }
        q = amp ? amp + 1 : NULL;
    }
    return 0;
}

/* ---- handlers --------------------------------------------------------------- */

static void free_kv_value(const void *data, size_t len, void *extra)
{
    (void)len;
    (void)extra;
    kv_free((void *)data);
}

static void h_get_fast(rq *r, const char *ks, size_t kn)
{
    kv_db *db = r->w->srv->db;
    struct evbuffer *o;
    uint64_t key;
    size_t len;
    int rc;

    if (json_parse_key(ks, kn, &key) != 0) {
        send_error(r, 400, BAD_KEY);
        return;
    }
    o = evhttp_request_get_output_buffer(r->req);
    rc = kv_get(db, key, r->w->getbuf, GETBUF_SIZE, &len);
    if (rc == KV_OK) {
        evbuffer_add(o, r->w->getbuf, len);
    } else if (rc == KV_ERANGE) { /* larger than the worker's buffer */
        void *p;
        rc = kv_get_alloc(db, key, &p, &len);
        if (rc == KV_OK && evbuffer_add_reference(o, p, len, free_kv_value, NULL) != 0) {
            kv_free(p);
            rc = KV_ENOMEM;
        }
    }
    if (rc == KV_NOTFOUND)
        send_error(r, 404, "key not found");
    else if (rc != KV_OK)
        send_kv_error(r, rc);
    else
        send_reply(r, 200, "application/octet-stream");
}

static void h_put_fast(rq *r, const char *ks, size_t kn)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t n = evbuffer_get_length(in);
    const void *p = "";
    uint64_t key;
    int rc;

    if (json_parse_key(ks, kn, &key) != 0) {
        send_error(r, 400, BAD_KEY);
        return;
    }
    if (n > KV_MAX_VALUE) {
        send_error(r, 413, "value larger than 67108864 bytes");
        return;
    }
    if (n > 0 && (p = evbuffer_pullup(in, (ev_ssize_t)n)) == NULL) {
        send_error(r, 500, "out of memory");
        return;
    }
    rc = kv_put(r->w->srv->db, key, p, n);
    if (rc != KV_OK) {
        send_kv_error(r, rc);
        return;
    }
    send_reply(r, 204, NULL);
}

static void h_put(rq *r)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t n = evbuffer_get_length(in), vlen;
    const char *p, *err;
    char *val, msg[160];
    uint64_t key;
    int rc;

    if (n > JSON_MAX_BODY) {
        send_error(r, 413, "JSON body larger than 1048576 bytes (use /v1/put_fast for large values)");
        return;
    }
    if (n == 0) {
        send_error(r, 400, "empty body: expected {\"key\": <u64>, \"value\": \"...\"}");
        return;
    }
    p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (p == NULL) {
        send_error(r, 500, "out of memory");
        return;
    }
    if (json_parse_put(p, n, &key, &val, &vlen, &err) != 0) {
        snprintf(msg, sizeof msg, "bad JSON: %s", err);
        send_error(r, 400, msg);
        return;
    }
    rc = kv_put(r->w->srv->db, key, val, vlen);
    free(val);
    if (rc != KV_OK) {
        send_kv_error(r, rc);
        return;
    }
    evbuffer_add_printf(evhttp_request_get_output_buffer(r->req), "{\"ok\":true,\"key\":%" PRIu64 "}\n",
                        key);
    send_json(r, 200);
}

static const char *query_of(rq *r)
{
    const char *q = strchr(evhttp_request_get_uri(r->req), '?');
    return q ? q + 1 : NULL;
}

static void h_lookup(rq *r)
{
    static const char *const names[] = {"key"};
    const char *vals[1];
    size_t lens[1];
    char err[96];
    uint64_t key;
    void *val;
    size_t len;
    int rc;

    if (parse_query(query_of(r), names, 1, vals, lens, err, sizeof err) != 0) {
        send_error(r, 400, err);
        return;
    }
    if (vals[0] == NULL) {
        send_error(r, 400, "missing query parameter 'key'");
        return;
    }
    if (json_parse_key(vals[0], lens[0], &key) != 0) {
        send_error(r, 400, BAD_KEY);
        return;
    }
    rc = kv_get_alloc(r->w->srv->db, key, &val, &len);
    if (rc == KV_NOTFOUND) {
        send_error(r, 404, "key not found");
        return;
    }
    if (rc != KV_OK) {
        send_kv_error(r, rc);
        return;
    }
    struct evbuffer *o = evhttp_request_get_output_buffer(r->req);
    pair_json(o, key, val, len);
    evbuffer_add(o, "\n", 1);
    kv_free(val);
    send_json(r, 200);
}

static void h_delete(rq *r, const char *ks, size_t kn)
{
    uint64_t key;
    int rc;

    if (json_parse_key(ks, kn, &key) != 0) {
        send_error(r, 400, BAD_KEY);
        return;
    }
    rc = kv_delete(r->w->srv->db, key);
    if (rc != KV_OK) {
        send_kv_error(r, rc);
        return;
    }
    evbuffer_add_printf(evhttp_request_get_output_buffer(r->req), "{\"ok\":true,\"key\":%" PRIu64 "}\n",
                        key);
    send_json(r, 200);
}

static void h_scan(rq *r)
{
    static const char *const names[] = {"lo", "hi", "limit"};
    const char *vals[3];
    size_t lens[3], bytes = 0;
    uint64_t lo = 0, hi = UINT64_MAX, limit = SCAN_DEFAULT_LIMIT, n = 0, key;
    char err[96];
    kv_iter *it = NULL;
    const void *val;
    size_t len;
    int rc;

    if (parse_query(query_of(r), names, 3, vals, lens, err, sizeof err) != 0) {
        send_error(r, 400, err);
        return;
    }
    if ((vals[0] && json_parse_key(vals[0], lens[0], &lo) != 0) ||
        (vals[1] && json_parse_key(vals[1], lens[1], &hi) != 0)) {
        send_error(r, 400, "bad lo/hi: expected decimal integers from 0 to 18446744073709551615");
        return;
    }
    if (vals[2] && (json_parse_key(vals[2], lens[2], &limit) != 0 || limit > SCAN_MAX_LIMIT)) {
        send_error(r, 400, "bad limit: expected an integer from 0 to 10000");
        return;
    }
    rc = kv_iter_open(r->w->srv->db, lo, hi, &it);
    if (rc != KV_OK) {
        send_kv_error(r, rc);
        return;
    }
    struct evbuffer *o = evhttp_request_get_output_buffer(r->req);
    evbuffer_add(o, "[", 1);
    while (n < limit && bytes <= SCAN_MAX_BYTES && (rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        if (n > 0)
            evbuffer_add(o, ",", 1);
        pair_json(o, key, val, len);
        n++;
        bytes += len;
    }
    if (rc == KV_OK) { /* stopped by limit or size: is there more? */
        rc = kv_iter_next(it, &key, &val, &len);
        if (rc == KV_OK) {
            char next[24];
            snprintf(next, sizeof next, "%" PRIu64, key);
            set_header(r, "X-KyroDB-Next-Key", next);
            rc = KV_NOTFOUND;
        }
    }
    kv_iter_close(it);
    if (rc != KV_NOTFOUND) {
        send_kv_error(r, rc);
        return;
    }
    evbuffer_add(o, "]\n", 2);
    send_json(r, 200);
}

static void h_admin(rq *r)
{
    server *srv = r->w->srv;
    struct evbuffer *o = evhttp_request_get_output_buffer(r->req);
    uint64_t t0 = now_ns(), dt;
    kv_stats st;
    int rc;

    switch (r->route) {
    case ROUTE_SNAPSHOT: rc = kv_snapshot(srv->db); break;
    case ROUTE_COMPACT: rc = kv_compact(srv->db); break;
    case ROUTE_RMI_BUILD: rc = kv_rebuild_index(srv->db); break;
    default: rc = kv_warmup(srv->db); break;
    }
    dt = now_ns() - t0;
    if (rc != KV_OK) {
        send_kv_error(r, rc);
        return;
    }
    if (r->route == ROUTE_COMPACT)
        metrics_observe_compaction(srv->met, dt);
    metrics_poll(srv->met, srv->db);
    LOGI("%s done in %.3f ms", route_names[r->route], (double)dt / 1e6);
    evbuffer_add_printf(o, "{\"ok\":true,\"duration_ms\":%.3f", (double)dt / 1e6);
    if (kv_stats_get(srv->db, &st) == KV_OK) {
        if (r->route == ROUTE_RMI_BUILD)
            evbuffer_add_printf(o, ",\"index_models\":%" PRIu64 ",\"index_max_error\":%" PRIu64
                                   ",\"pending_writes\":%" PRIu64,
                                st.index_models, st.index_max_error, st.pending_writes);
        else
            evbuffer_add_printf(o, ",\"keys\":%" PRIu64 ",\"snapshot_bytes\":%" PRIu64
                                   ",\"wal_bytes\":%" PRIu64,
                                st.keys, st.snapshot_bytes, st.wal_bytes);
    }
    evbuffer_add(o, "}\n", 2);
    send_json(r, 200);
}

static void h_metrics(rq *r)
{
    int rc = metrics_render(r->w->srv->met, r->w->srv->db, evhttp_request_get_output_buffer(r->req));

    if (rc != KV_OK) {
        send_kv_error(r, rc);
        return;
    }
    send_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8");
}

/* 200 while the database takes writes; 503 once a failed log write has
 * made it refuse them (reads still work, a restart reopens it), so that a
 * supervisor's health check sees what a writer would. */
static void h_health(rq *r)
{
    struct evbuffer *o = evhttp_request_get_output_buffer(r->req);
    kv_db *db = r->w->srv->db;

    if (kv_write_status(db) != KV_EIO) {
        evbuffer_add_printf(o, "{\"status\":\"ok\"}\n");
        send_json(r, 200);
        return;
    }
    char msg[160];
    kv_error_text(msg, sizeof msg, KV_EIO, kv_errno(db));
    evbuffer_add_printf(o, "{\"status\":\"refusing writes\",\"error\":\"");
    json_escape(o, msg, strlen(msg));
    evbuffer_add(o, "\"}\n", 3);
    send_json(r, 503);
}

static void h_build_info(rq *r)
{
    struct evbuffer *o = evhttp_request_get_output_buffer(r->req);
    kv_stats st;
    const char *simd = "unknown";

    if (kv_stats_get(r->w->srv->db, &st) == KV_OK && st.simd != NULL)
        simd = st.simd;
    evbuffer_add_printf(o, "{\"name\":\"%s\",\"version\":\"%s\",\"library_version\":\"", SERVER_NAME,
                        KYRO_VERSION);
    json_escape(o, kv_version(), strlen(kv_version()));
    evbuffer_add(o, "\",\"git_commit\":\"", 16);
    json_escape(o, build_commit, strlen(build_commit));
    evbuffer_add(o, "\",\"build_time\":\"", 16);
    json_escape(o, build_time, strlen(build_time));
    evbuffer_add(o, "\",\"compiler\":\"", 14);
    json_escape(o, build_compiler, strlen(build_compiler));
    evbuffer_add(o, "\",\"simd\":\"", 10);
    json_escape(o, simd, strlen(simd));
    evbuffer_add(o, "\",\"libevent\":\"", 14);
    json_escape(o, event_get_version(), strlen(event_get_version()));
    evbuffer_add_printf(o, "\",\"threads\":%d}\n", r->w->srv->cfg.threads);
    send_json(r, 200);
}

/* ---- the router ----------------------------------------------------------------- */

static bool path_is(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(p, lit, l) == 0;
}

static bool all_digits(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    return n > 0;
}

/* Constant-time in the token's length and content: every byte of the
 * expected token is examined whatever the client sent. */
static bool token_ok(const server_config *cfg, const char *hdr)
{
    const char *given;
    size_t glen;
    volatile unsigned char diff;

    if (hdr == NULL || strncasecmp(hdr, "Bearer ", 7) != 0)
        return false;
    given = hdr + 7;
    while (*given == ' ')
        given++;
    glen = strlen(given);
    while (glen > 0 && (given[glen - 1] == ' ' || given[glen - 1] == '\t'))
        glen--;
    diff = (unsigned char)(glen != cfg->auth_token_len);
    for (size_t i = 0; i < cfg->auth_token_len; i++)
        diff |= (unsigned char)(cfg->auth_token[i] ^ (i < glen ? given[i] : 0));
    return diff == 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    http_worker *w = arg;
    const server_config *cfg = &w->srv->cfg;
    rq r = {w, req, ROUTE_UNKNOWN, now_ns()};
    const char *uri = evhttp_request_get_uri(req);
    const char *q = strchr(uri, '?');
    size_t plen = q ? (size_t)(q - uri) : strlen(uri);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const char *ks = NULL;
    size_t kn = 0;
    unsigned allowed = 0;
    const char *allow_hdr = NULL;

    anchor_attach(w, req);
    if (plen >= 13 && memcmp(uri, "/v1/get_fast/", 13) == 0) {
        r.route = ROUTE_GET_FAST;
        ks = uri + 13;
        kn = plen - 13;
        allowed = M_GET | M_HEAD;
    } else if (plen >= 13 && memcmp(uri, "/v1/put_fast/", 13) == 0) {
        r.route = ROUTE_PUT_FAST;
        ks = uri + 13;
        kn = plen - 13;
        allowed = M_POST | M_PUT;
    } else if (path_is(uri, plen, "/v1/put")) {
        r.route = ROUTE_PUT;
        allowed = M_POST | M_PUT;
    } else if (path_is(uri, plen, "/v1/lookup")) {
        r.route = ROUTE_LOOKUP;
        allowed = M_GET | M_HEAD;
    } else if (path_is(uri, plen, "/v1/scan")) {
        r.route = ROUTE_SCAN;
        allowed = M_GET | M_HEAD;
    } else if (path_is(uri, plen, "/v1/snapshot")) {
        r.route = ROUTE_SNAPSHOT;
        allowed = M_POST;
    } else if (path_is(uri, plen, "/v1/compact")) {
        r.route = ROUTE_COMPACT;
        allowed = M_POST;
    } else if (path_is(uri, plen, "/v1/rmi/build")) {
        r.route = ROUTE_RMI_BUILD;
        allowed = M_POST;
    } else if (path_is(uri, plen, "/v1/warmup")) {
        r.route = ROUTE_WARMUP;
        allowed = M_POST;
    } else if (path_is(uri, plen, "/health")) {
        r.route = ROUTE_HEALTH;
        allowed = M_GET | M_HEAD;
    } else if (path_is(uri, plen, "/metrics")) {
        r.route = ROUTE_METRICS;
        allowed = M_GET | M_HEAD;
    } else if (path_is(uri, plen, "/build_info")) {
        r.route = ROUTE_BUILD_INFO;
        allowed = M_GET | M_HEAD;
    } else if (plen > 4 && memcmp(uri, "/v1/", 4) == 0 && memchr(uri + 4, '/', plen - 4) == NULL &&
               (cmd == EVHTTP_REQ_DELETE || all_digits(uri + 4, plen - 4))) {
        /* DELETE /v1/{key}; another method on /v1/<digits> is a 405. */
        r.route = ROUTE_DELETE;
        ks = uri + 4;
        kn = plen - 4;
        allowed = M_DELETE;
    }

    if (w->srv->rl != NULL && r.route != ROUTE_HEALTH) {
        bool admin = r.route == ROUTE_SNAPSHOT || r.route == ROUTE_COMPACT ||
                     r.route == ROUTE_RMI_BUILD || r.route == ROUTE_WARMUP;
        if (!rl_allow(w->srv->rl, peer_of(req), admin, r.t0)) {
            metrics_rate_limited(w->srv->met);
            set_header(&r, "Retry-After", "1");
            send_error(&r, 429, admin ? "rate limit exceeded (admin endpoints)" : "rate limit exceeded");
            return;
        }
    }
    if (cfg->auth_token != NULL && r.route != ROUTE_HEALTH &&
        !token_ok(cfg, evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization"))) {
        metrics_auth_failed(w->srv->met);
        set_header(&r, "WWW-Authenticate", "Bearer");
        send_error(&r, 401, "missing or invalid bearer token");
        return;
    }
    if (r.route == ROUTE_UNKNOWN) {
        send_error(&r, 404, "no such endpoint");
        return;
    }
    if (!((unsigned)cmd & allowed)) {
        if (allowed == (M_GET | M_HEAD))
            allow_hdr = "GET, HEAD";
        else if (allowed == (M_POST | M_PUT))
            allow_hdr = "POST, PUT";
        else if (allowed == M_POST)
            allow_hdr = "POST";
        else
            allow_hdr = "DELETE";
        set_header(&r, "Allow", allow_hdr);
        send_error(&r, 405, "method not allowed");
        return;
    }

    switch (r.route) {
    case ROUTE_GET_FAST: h_get_fast(&r, ks, kn); break;
    case ROUTE_PUT_FAST: h_put_fast(&r, ks, kn); break;
    case ROUTE_PUT: h_put(&r); break;
    case ROUTE_LOOKUP: h_lookup(&r); break;
    case ROUTE_DELETE: h_delete(&r, ks, kn); break;
    case ROUTE_SCAN: h_scan(&r); break;
    case ROUTE_SNAPSHOT:
    case ROUTE_COMPACT:
    case ROUTE_RMI_BUILD:
    case ROUTE_WARMUP: h_admin(&r); break;
    case ROUTE_HEALTH: h_health(&r); break;
    case ROUTE_METRICS: h_metrics(&r); break;
    case ROUTE_BUILD_INFO: h_build_info(&r); break;
    default: send_error(&r, 404, "no such endpoint"); break;
    }
}

/* ---- workers ---------------------------------------------------------------------- */

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    http_worker *w = arg;
    char buf[16];

    (void)what;
    while (read(fd, buf, sizeof buf) > 0)
        ;
    event_base_loopbreak(w->base);
}

/* Worker 0, once a second: feed the duration histograms, and now and then
 * forget idle rate-limit clients. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    http_worker *w = arg;

    (void)fd;
    (void)what;
    metrics_poll(w->srv->met, w->srv->db);
    if (w->srv->rl != NULL && ++w->ticks % 10 == 0)
        rl_sweep(w->srv->rl, now_ns());
}

static int listen_socket(const struct sockaddr *addr, socklen_t addrlen)
{
    int one = 1;
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    /* TCP_NODELAY on the listener is inherited by accepted sockets (Linux):
     * a reply is one write, and Nagle must not hold it back. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
        bind(fd, addr, addrlen) != 0 || listen(fd, 4096) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* An event_base for one thread: no locking (nothing of it is shared), and
 * epoll's changelist, which folds the event changes of one loop iteration
 * into at most one epoll_ctl per descriptor. evhttp turns reading off while
 * it answers a request and writing off once the answer is out; without the
 * changelist that is four epoll_ctl calls per request, with it two. */
static struct event_base *new_base(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *base;

    if (cfg == NULL)
        return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK | EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

int http_worker_create(server *srv, int id, const void *addr, unsigned addrlen, http_worker **out)
{
    http_worker *w = calloc(1, sizeof *w);
    struct timeval sec = {1, 0};
    int fd = -1;

    if (w == NULL)
        return -1;
    w->srv = srv;
    w->id = id;
    w->wake_fd[0] = w->wake_fd[1] = -1;
    w->mw = metrics_worker_get(srv->met, id);
    w->getbuf = malloc(GETBUF_SIZE);
    w->base = new_base();
    if (w->getbuf == NULL || w->base == NULL)
        goto fail;
    w->http = evhttp_new(w->base);
    if (w->http == NULL)
        goto fail;
    evhttp_set_gencb(w->http, on_request, w);
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(w->http, HTTP_MAX_HEADERS);
    evhttp_set_max_body_size(w->http, (ev_ssize_t)HTTP_MAX_BODY);
    evhttp_set_timeout(w->http, srv->cfg.timeout_secs);

    fd = listen_socket(addr, (socklen_t)addrlen);
    if (fd < 0) {
        LOGE("worker %d: cannot listen: %s", id, strerror(errno));
        goto fail;
    }
    if (evhttp_accept_socket_with_handle(w->http, fd) == NULL) {
        LOGE("worker %d: evhttp_accept_socket failed", id);
        close(fd);
        goto fail;
    }
    if (pipe2(w->wake_fd, O_CLOEXEC | O_NONBLOCK) != 0)
        goto fail;
    w->wake_ev = event_new(w->base, w->wake_fd[0], EV_READ | EV_PERSIST, on_wake, w);
    if (w->wake_ev == NULL || event_add(w->wake_ev, NULL) != 0)
        goto fail;
    if (id == 0) {
        w->tick_ev = event_new(w->base, -1, EV_PERSIST, on_tick, w);
        if (w->tick_ev == NULL || event_add(w->tick_ev, &sec) != 0)
            goto fail;
    }
    *out = w;
    return 0;
fail:
    http_worker_join_free(w);
    return -1;
}

static void *worker_main(void *arg)
{
    http_worker *w = arg;
    char name[16];

    snprintf(name, sizeof name, "kyrodb-http-%d", w->id);
    pthread_setname_np(pthread_self(), name);
    if (event_base_dispatch(w->base) < 0)
        LOGE("worker %d: event loop failed", w->id);
    if (!atomic_load(&w->stopping)) { /* not asked to stop: bring the server down */
        LOGE("worker %d left its event loop unexpectedly", w->id);
        atomic_store(&http_worker_failed, true);
        kill(getpid(), SIGTERM);
    }
    LOGD("worker %d stopped", w->id);
    return NULL;
}

int http_worker_start(http_worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return -1;
    w->started = true;
    return 0;
}

void http_worker_stop(http_worker *w)
{
    if (w != NULL && w->wake_fd[1] >= 0) {
        atomic_store(&w->stopping, true);
        ssize_t n = write(w->wake_fd[1], "x", 1);
        (void)n;
    }
}

void http_worker_join_free(http_worker *w)
{
    if (w == NULL)
        return;
    if (w->started)
        pthread_join(w->thread, NULL);
    if (w->tick_ev)
        event_free(w->tick_ev);
    if (w->wake_ev)
        event_free(w->wake_ev);
    if (w->http)
        evhttp_free(w->http); /* closes the listener and every connection */
    if (w->base)
        event_base_free(w->base);
    if (w->wake_fd[0] >= 0)
        close(w->wake_fd[0]);
    if (w->wake_fd[1] >= 0)
        close(w->wake_fd[1]);
    free(w->anchors); /* empty by now: evhttp_free closed every connection */
    free(w->getbuf);
    free(w);
}
