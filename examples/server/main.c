/*
 * main.c — kyrodb-server: the command line, the environment, the database
 * handle, the worker threads and the orderly shutdown.
 *
 *   kyrodb-server serve [HOST [PORT]] [--data DIR] [--sync full|normal|off]
 *       [--auto-snapshot-secs N] [--wal-max-bytes N] [--rmi-rebuild-appends N]
 *       [--enable-rate-limiting] [--auth-token TOKEN] [--threads N]
 *       [--timeout-secs N]
 *
 * Start-up: parse everything (exit 2 on a usage error), check that the
 * address is free, open the database (KV_CREATE), optionally warm it, bind
 * one SO_REUSEPORT socket per worker, start the workers. SIGINT and SIGTERM
 * are blocked in every thread and taken by the main thread with sigwait, so
 * no code runs in signal context: the main thread wakes each worker through
 * its pipe, joins it, frees its evhttp (closing every connection) and only
 * then calls kv_close, which makes every acknowledged write durable. Exit
 * status 0 after a clean shutdown, 1 when start-up or kv_close failed.
 */
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "server.h"

#ifndef KYRODB_GIT_COMMIT
#define KYRODB_GIT_COMMIT "unknown"
#endif
#ifndef KYRODB_BUILD_TIME
#define KYRODB_BUILD_TIME __DATE__ " " __TIME__
#endif
#if defined(__clang__)
#define COMPILER_TEXT "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER_TEXT "gcc " __VERSION__
#else
#define COMPILER_TEXT "unknown"
#endif

const char build_commit[] = KYRODB_GIT_COMMIT;
const char build_time[] = KYRODB_BUILD_TIME;
const char build_compiler[] = COMPILER_TEXT;

#define MAX_THREADS 64

uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kyrodb-server serve [HOST [PORT]] [options]\n"
            "\n"
            "HTTP interface to a KyroDB database. HOST defaults to 127.0.0.1, PORT to 3030.\n"
            "\n"
            "options:\n"
            "  --data DIR                 database directory, created if missing (default ./data)\n"
            "  --sync full|normal|off     durability of each write (default full: fdatasync'd\n"
            "                             before the reply; normal: survives a process crash)\n"
            "  --auto-snapshot-secs N     snapshot every N seconds (default 0: never)\n"
            "  --wal-max-bytes N          snapshot when the WAL passes N bytes (K/M/G suffixes;\n"
            "                             default 256M; 0: never)\n"
            "  --rmi-rebuild-appends N    fold writes into the learned index after N writes\n"
            "                             (default 0: the library chooses)\n"
            "  --enable-rate-limiting     per-client token buckets: KYRODB_RL_RPS requests/s\n"
            "                             (default 1000), admin endpoints a tenth of that\n"
            "  --auth-token TOKEN         require 'Authorization: Bearer TOKEN' on every request\n"
            "                             but /health (or set KYRODB_AUTH_TOKEN)\n"
            "  --threads N                worker threads, each with its own event loop on a\n"
            "                             SO_REUSEPORT socket (default: online CPUs / 2, at least 1)\n"
            "  --timeout-secs N           read/write/idle timeout per connection (default 30)\n"
            "\n"
            "environment:\n"
            "  KYRODB_AUTH_TOKEN          bearer token (--auth-token wins)\n"
            "  KYRODB_RL_RPS              rate limit per client, requests/s (default 1000)\n"
            "  KYRODB_RL_ADMIN_RPS        admin endpoints' limit (default KYRODB_RL_RPS / 10)\n"
            "  KYRODB_WARM_ON_START=1     fault the index and values in before serving\n"
            "  KYRODB_LOG                 error|warn|info|debug|trace|off (default info), or a\n"
            "                             RUST_LOG-style list such as 'warn,kyrodb=debug'\n"
            "\n"
            "endpoints:\n"
            "  POST /v1/put {\"key\":K,\"value\":\"s\"}   GET /v1/lookup?key=K\n"
            "  POST /v1/put_fast/K (raw body)        GET /v1/get_fast/K (raw body)\n"
            "  DELETE /v1/K                          GET /v1/scan?lo=&hi=&limit=\n"
            "  POST /v1/snapshot  /v1/compact  /v1/rmi/build  /v1/warmup\n"
            "  GET /health  /metrics  /build_info\n");
}

/* A decimal count with an optional K/M/G/T suffix (powers of 1024). */
static int parse_count(const char *s, bool suffixes, uint64_t max, uint64_t *out)
{
    uint64_t v = 0, mul = 1;
    const char *p = s;

    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (*p != '\0' && suffixes) {
        switch (*p) {
        case 'k': case 'K': mul = 1ull << 10; break;
        case 'm': case 'M': mul = 1ull << 20; break;
        case 'g': case 'G': mul = 1ull << 30; break;
        case 't': case 'T': mul = 1ull << 40; break;
        default: return -1;
        }
        p++;
        if (*p == 'i' || *p == 'I')
            p++;
        if (*p == 'b' || *p == 'B')
            p++;
    }
    if (*p != '\0' || (v != 0 && mul > UINT64_MAX / v) || v * mul > max)
        return -1;
    *out = v * mul;
    return 0;
}

static bool env_true(const char *v)
{
    return v != NULL && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 ||
                         strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0);
}

static int env_rate(const char *name, double *out)
{
    const char *v = getenv(name);
    char *end;
    double d;

    if (v == NULL || *v == '\0')
        return 0;
    errno = 0;
    d = strtod(v, &end);
    if (errno != 0 || *end != '\0' || !(d > 0) || d > 1e9) {
        fprintf(stderr, "kyrodb-server: %s must be a positive number of requests per second\n", name);
        return -1;
    }
    *out = d;
    return 0;
}

/* Fill cfg from argv and the environment; 0, or 2 for a usage error (after
 * printing why), or -1 when --help was asked for. */
static int parse_args(int argc, char **argv, server_config *cfg)
{
    int positional = 0;
    uint64_t v;
    long cpus;

    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->port = 3030;
    cfg->data_dir = "./data";
    kv_options_init(&cfg->opts);
    cfg->opts.flags = KV_CREATE;
    /* One worker per two CPUs: the library's background thread (merges,
     * snapshots) needs a core too, and on the 2-core benchmark box with the
     * load generator beside the server, 1 worker answered ~60k GET/s and 2
     * workers ~48k (three busy threads on two cores). Raise it with
     * --threads when the clients are elsewhere. */
    cpus = sysconf(_SC_NPROCESSORS_ONLN) / 2;
    cfg->threads = cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (int)cpus;
    cfg->timeout_secs = 30;
    cfg->rl_rps = 1000;
    cfg->auth_token = getenv("KYRODB_AUTH_TOKEN");
    cfg->warm_on_start = env_true(getenv("KYRODB_WARM_ON_START"));

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[40];

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return -1;
        if (a[0] != '-' || a[1] == '\0') {
            if (positional == 0) {
                cfg->host = a;
            } else if (positional == 1) {
                if (parse_count(a, false, 65535, &v) != 0 || v == 0) {
                    fprintf(stderr, "kyrodb-server: bad port '%s'\n", a);
                    return 2;
                }
                cfg->port = (int)v;
            } else {
                fprintf(stderr, "kyrodb-server: unexpected argument '%s'\n", a);
                return 2;
            }
            positional++;
            continue;
        }
        /* --name=value or --name value */
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (nl >= sizeof name) {
            fprintf(stderr, "kyrodb-server: unknown option '%s'\n", a);
            return 2;
        }
        memcpy(name, a, nl);
        name[nl] = '\0';
        if (strcmp(name, "--enable-rate-limiting") == 0) {
            if (eq) {
                fprintf(stderr, "kyrodb-server: %s takes no value\n", name);
                return 2;
            }
            cfg->rate_limit = true;
            continue;
        }
        static const char *const with_value[] = {
            "--data",          "--sync",         "--auto-snapshot-secs", "--wal-max-bytes",
            "--rmi-rebuild-appends", "--auth-token", "--threads", "--timeout-secs"};
        bool known = false;
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++)
            known |= strcmp(name, with_value[k]) == 0;
        if (!known) {
            fprintf(stderr, "kyrodb-server: unknown option '%s' (see --help)\n", name);
            return 2;
        }
        if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "kyrodb-server: %s needs a value\n", name);
            return 2;
        }
        if (strcmp(name, "--data") == 0) {
            if (*val == '\0') {
                fprintf(stderr, "kyrodb-server: --data needs a directory\n");
                return 2;
            }
            cfg->data_dir = val;
        } else if (strcmp(name, "--sync") == 0) {
            if (strcmp(val, "full") == 0)
                cfg->opts.sync = KV_SYNC_FULL;
            else if (strcmp(val, "normal") == 0)
                cfg->opts.sync = KV_SYNC_NORMAL;
            else if (strcmp(val, "off") == 0)
                cfg->opts.sync = KV_SYNC_OFF;
            else {
                fprintf(stderr, "kyrodb-server: --sync must be full, normal or off\n");
                return 2;
            }
        } else if (strcmp(name, "--auth-token") == 0) {
            cfg->auth_token = val;
        } else if (strcmp(name, "--auto-snapshot-secs") == 0) {
            if (parse_count(val, false, UINT32_MAX, &v) != 0)
                goto bad_number;
            cfg->opts.auto_snapshot_secs = (uint32_t)v;
        } else if (strcmp(name, "--wal-max-bytes") == 0) {
            if (parse_count(val, true, UINT64_MAX, &v) != 0)
                goto bad_number;
            cfg->opts.wal_max_bytes = v;
        } else if (strcmp(name, "--rmi-rebuild-appends") == 0) {
            if (parse_count(val, false, UINT64_MAX, &v) != 0)
                goto bad_number;
            cfg->opts.rebuild_appends = v;
        } else if (strcmp(name, "--threads") == 0) {
            if (parse_count(val, false, MAX_THREADS, &v) != 0 || v == 0)
                goto bad_number;
            cfg->threads = (int)v;
        } else if (strcmp(name, "--timeout-secs") == 0) {
            if (parse_count(val, false, 86400, &v) != 0 || v == 0)
                goto bad_number;
            cfg->timeout_secs = (int)v;
        }
        continue;
    bad_number:
        fprintf(stderr, "kyrodb-server: bad value '%s' for %s\n", val, name);
        return 2;
    }
    if (cfg->auth_token != NULL && cfg->auth_token[0] == '\0')
        cfg->auth_token = NULL;
    cfg->auth_token_len = cfg->auth_token ? strlen(cfg->auth_token) : 0;
    if (env_rate("KYRODB_RL_RPS", &cfg->rl_rps) != 0)
        return 2;
    cfg->rl_admin_rps = cfg->rl_rps / 10;
    if (env_rate("KYRODB_RL_ADMIN_RPS", &cfg->rl_admin_rps) != 0)
        return 2;
    return 0;
}

/* Let 1,000s of connections in: raise the descriptor limit to the hard one. */
static void raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            LOGW("cannot raise the open-file limit: %s", strerror(errno));
    }
}

/* SO_REUSEPORT would let us share the port with another server run by the
 * same user; bind once without it first so that is refused loudly. */
static int address_free(const struct addrinfo *ai)
{
    int one = 1, fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), rc = -1;

    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
        bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        rc = 0;
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static const char *sync_name(kv_sync_mode m)
{
    return m == KV_SYNC_FULL ? "full" : m == KV_SYNC_NORMAL ? "normal" : "off";
}

int main(int argc, char **argv)
{
    static server srv;
    http_worker *workers[MAX_THREADS] = {0};
    struct addrinfo hints, *ai = NULL;
    char portstr[8];
    sigset_t sigs;
    int rc, sig = 0, status = 1;
    const char *lv = getenv("KYRODB_LOG");

    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
        printf("kyrodb-server %s (library %s, commit %s)\n", KYRO_VERSION, kv_version(), build_commit);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "serve") != 0) {
        usage(stderr);
        return 2;
    }
    if (lv != NULL && *lv != '\0' && log_parse_level(lv, &log_level) != 0)
        fprintf(stderr, "kyrodb-server: KYRODB_LOG='%s' names no level; using info\n", lv);
    rc = parse_args(argc, argv, &srv.cfg);
    if (rc < 0) {
        usage(stdout);
        return 0;
    }
    if (rc > 0)
        return rc;

    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* inherited by every worker */

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof portstr, "%d", srv.cfg.port);
    rc = getaddrinfo(srv.cfg.host, portstr, &hints, &ai);
    if (rc != 0) {
        LOGE("cannot resolve %s: %s", srv.cfg.host, gai_strerror(rc));
        return 1;
    }
    if (address_free(ai) != 0) {
        LOGE("cannot bind %s:%d: %s", srv.cfg.host, srv.cfg.port, strerror(errno));
        freeaddrinfo(ai);
        return 1;
    }

    srv.start_ns = now_ns();
    rc = kv_open(srv.cfg.data_dir, &srv.cfg.opts, &srv.db);
    if (rc != KV_OK) {
        char msg[160];
        /* kv_open's KV_EIO leaves its cause in errno */
        kv_error_text(msg, sizeof msg, rc, rc == KV_EIO ? errno : 0);
        LOGE("cannot open database %s: %s", srv.cfg.data_dir, msg);
        freeaddrinfo(ai);
        return 1;
    }
    LOGI("opened %s in %.1f ms (sync %s)", srv.cfg.data_dir, (double)(now_ns() - srv.start_ns) / 1e6,
         sync_name(srv.cfg.opts.sync));
    if (srv.cfg.warm_on_start) {
        uint64_t t0 = now_ns();
        rc = kv_warmup(srv.db);
        if (rc != KV_OK)
            LOGW("warmup failed: %s", kv_strerror(rc));
        else
            LOGI("warmed up in %.1f ms", (double)(now_ns() - t0) / 1e6);
    }
    if (metrics_create(srv.cfg.threads, &srv.met) != 0)
        goto out;
    if (srv.cfg.rate_limit && rl_create(srv.cfg.rl_rps, srv.cfg.rl_admin_rps, &srv.rl) != 0)
        goto out;
    for (int i = 0; i < srv.cfg.threads; i++)
        if (http_worker_create(&srv, i, ai->ai_addr, (unsigned)ai->ai_addrlen, &workers[i]) != 0)
            goto out;
    for (int i = 0; i < srv.cfg.threads; i++) {
        if (http_worker_start(workers[i]) != 0) {
            LOGE("cannot start worker thread %d", i);
            goto out;
        }
    }
    LOGI("listening on http://%s:%d (%d threads, libevent %s%s%s)", srv.cfg.host, srv.cfg.port,
         srv.cfg.threads, event_get_version(), srv.cfg.auth_token ? ", bearer auth" : "",
         srv.rl ? ", rate limiting" : "");
    if (srv.rl)
        LOGI("rate limit: %.0f req/s per client, %.1f req/s for admin endpoints", srv.cfg.rl_rps,
             srv.cfg.rl_admin_rps);

    for (;;) {
        if (sigwait(&sigs, &sig) == 0 && (sig == SIGINT || sig == SIGTERM))
            break;
    }
    LOGI("%s received, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    status = atomic_load(&http_worker_failed) ? 1 : 0;
out:
    for (int i = 0; i < srv.cfg.threads; i++)
        http_worker_stop(workers[i]);
    for (int i = 0; i < srv.cfg.threads; i++)
        http_worker_join_free(workers[i]);
    rl_destroy(srv.rl);
    metrics_destroy(srv.met);
    freeaddrinfo(ai);
    rc = kv_close(srv.db);
    if (rc != KV_OK) {
        LOGE("kv_close: %s", kv_strerror(rc));
        status = 1;
    } else {
        LOGI("database closed");
    }
    return status;
}
