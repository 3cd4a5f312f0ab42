#!/usr/bin/env bash
# http.sh — kyrodb-server against nginx, measured with wrk in the same run.
#
#   bench/http.sh [SERVER_BIN]          (default build/kyrodb-server)
#
# Starts Debian's nginx (nginx-light) on a free loopback port with its own
# temporary configuration (non-daemon, `return 200;`, no access log) and
# kyrodb-server on another with a temporary database under KV_SYNC_NORMAL,
# then runs wrk -t1 -cCONNS against each, ROUNDS times, interleaved
# (nginx, get, put, nginx, get, put, ...) so that a noisy neighbour hurts
# all three alike. It reports the median of each and the ratios, and the
# CPU time each server spent per request (less disturbed than the rates by
# other work on a shared machine):
#
#   GET  /v1/get_fast/42          (a 64-byte value)       target >= 0.8 x nginx, p99 < 1 ms
#   POST /v1/put_fast/{n}         (64-byte body, n = 1, 2, 3, ... distinct keys)
#                                                         target >= 0.5 x nginx
#
# Environment: DURATION (seconds per run, default 10), CONNS (64), THREADS
# (wrk threads, 1), ROUNDS (3), SERVER_THREADS (default: the server's own
# default, one worker per two CPUs), NGINX_WORKERS (default: as many as the
# server has worker threads, read from /build_info, so both get the same
# share of the machine; "auto" is nginx's one per CPU, which on a 2-core box
# puts a second nginx worker beside wrk), STRICT=1 to exit 1 when a target
# is missed. Both servers are killed at the end, whatever happens.
set -euo pipefail

SERVER=${1:-build/kyrodb-server}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
NGINX_WORKERS=${NGINX_WORKERS:-}
SERVER_THREADS=${SERVER_THREADS:-}
STRICT=${STRICT:-0}

for tool in wrk nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is required (apt-get install wrk nginx-light curl python3)" >&2; exit 2; }
done
[ -x "$SERVER" ] || { echo "usage: $0 [SERVER_BIN]   ($SERVER is not an executable; run make first)" >&2; exit 2; }
NGINX=$(command -v nginx)
PY=$(python3 -c 'import sys; print(sys.executable)')

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kyro-bench-http.XXXXXX")
NPID=""
KPID=""
cleanup() {
    [ -n "$NPID" ] && kill "$NPID" 2>/dev/null && wait "$NPID" 2>/dev/null
    [ -n "$KPID" ] && kill "$KPID" 2>/dev/null && wait "$KPID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_http() { # URL PID NAME
    for _ in $(seq 1 200); do
        if curl -s -o /dev/null "$1"; then return 0; fi
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
    echo "$3 did not start" >&2
    return 1
}

# ---- kyrodb-server ------------------------------------------------------------
KPORT=$(free_port)
mkdir -p "$TMP/res"
targs=()
[ -n "$SERVER_THREADS" ] && targs=(--threads "$SERVER_THREADS")
KYRODB_LOG=warn "$SERVER" serve 127.0.0.1 "$KPORT" --data "$TMP/data" --sync normal "${targs[@]}" \
    2>"$TMP/server.log" &
KPID=$!
wait_http "http://127.0.0.1:$KPORT/health" "$KPID" kyrodb-server
VALUE=$(printf 'v%.0s' $(seq 1 64))
curl -s -o /dev/null -X POST --data-binary "$VALUE" "http://127.0.0.1:$KPORT/v1/put_fast/42"

SRV_THREADS=$(curl -s "http://127.0.0.1:$KPORT/build_info" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["threads"])')
[ -n "$NGINX_WORKERS" ] || NGINX_WORKERS=$SRV_THREADS

# ---- nginx ------------------------------------------------------------------
NPORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$NPORT;
        location / { return 200; }
    }
}
EOF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
NPID=$!
wait_http "http://127.0.0.1:$NPORT/" "$NPID" nginx
NGINX_PIDS="$NPID $(pgrep -P "$NPID" | tr '\n' ' ')" # the master and its workers

cat >"$TMP/put.lua" <<EOF
-- POST /v1/put_fast/{n} with a 64-byte body, a new key each time.
local n = tonumber(os.getenv("KEYBASE") or "1000000")
local body = string.rep("v", 64)
request = function()
    n = n + 1
    return wrk.format("POST", "/v1/put_fast/" .. n, nil, body)
end
EOF

# CPU time (user + system, all threads) of the given processes, in clock ticks.
cpu_ticks() {
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}

# run NAME URL PIDS [wrk args...] -> appends "rps p99_us non2xx cpu_us_per_request" to
# $TMP/res/NAME. PIDS (one argument, space-separated) are the server's processes: the
# CPU time they spend per answered request is disturbed far less than the request
# rate by other work on a shared machine.
run() {
    local name=$1 url=$2 pids=$3 c0 c1
    shift 3
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" >"$TMP/wrk.out" 2>&1 || true
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    "$PY" - "$TMP/wrk.out" $((c1 - c0)) "$(getconf CLK_TCK)" >>"$TMP/res/$name" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
rps = re.search(r"Requests/sec:\s*([0-9.]+)", t)
p99 = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s)\s*$", t, re.M)
bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", t)
n = re.search(r"^\s*(\d+) requests in", t, re.M)
if not rps or not p99 or not n:
    sys.stderr.write(t)
    print("0 0 0 0")
else:
    scale = {"us": 1, "ms": 1e3, "s": 1e6}[p99.group(2)]
    cpu = ticks * 1e6 / hz / max(int(n.group(1)), 1)
    print("%s %.0f %s %.2f" % (rps.group(1), float(p99.group(1)) * scale, bad.group(1) if bad else "0", cpu))
EOF
    printf '  %-8s %10.0f req/s   p99 %6.0f us   server CPU %5.1f us/request\n' "$name" \
        "$(tail -1 "$TMP/res/$name" | cut -d' ' -f1)" "$(tail -1 "$TMP/res/$name" | cut -d' ' -f2)" \
        "$(tail -1 "$TMP/res/$name" | cut -d' ' -f4)"
}

echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds; $(nproc) CPUs; nginx workers: $NGINX_WORKERS;" \
    "kyrodb-server threads: $SRV_THREADS"
# Warm both up (connections, caches, the learned index) without counting it.
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NPORT/" >/dev/null 2>&1 || true
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$KPORT/v1/get_fast/42" >/dev/null 2>&1 || true
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r"
    run nginx "http://127.0.0.1:$NPORT/" "$NGINX_PIDS"
    run get "http://127.0.0.1:$KPORT/v1/get_fast/42" "$KPID"
    KEYBASE=$((r * 100000000)) run put "http://127.0.0.1:$KPORT/" "$KPID" -s "$TMP/put.lua"
done

"$PY" - "$TMP/res" "$STRICT" <<'EOF'
import statistics, sys
d, strict = sys.argv[1], sys.argv[2] == "1"
def load(name):
    rows = [list(map(float, l.split())) for l in open("%s/%s" % (d, name)) if l.strip()]
    return (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
            sum(r[2] for r in rows), statistics.median(r[3] for r in rows))
n_rps, n_p99, _, n_cpu = load("nginx")
g_rps, g_p99, g_bad, g_cpu = load("get")
p_rps, p_p99, p_bad, p_cpu = load("put")
print()
print("median of each:")
print("  nginx return 200          %9.0f req/s  p99 %6.0f us                      CPU %5.1f us/req" % (n_rps, n_p99, n_cpu))
print("  GET  /v1/get_fast/42      %9.0f req/s  p99 %6.0f us  ratio %.2f x nginx  CPU %5.1f us/req" % (g_rps, g_p99, g_rps / n_rps if n_rps else 0, g_cpu))
print("  POST /v1/put_fast/{n}     %9.0f req/s  p99 %6.0f us  ratio %.2f x nginx  CPU %5.1f us/req" % (p_rps, p_p99, p_rps / n_rps if n_rps else 0, p_cpu))
if g_bad or p_bad:
    print("  non-2xx answers: get %d, put %d" % (g_bad, p_bad))
ok = True
for what, cond in [("get >= 0.8 x nginx", n_rps and g_rps >= 0.8 * n_rps),
                   ("get p99 < 1 ms", g_p99 < 1000),
                   ("put >= 0.5 x nginx", n_rps and p_rps >= 0.5 * n_rps),
                   ("no errors", g_bad == 0 and p_bad == 0)]:
    print("  %-22s %s" % (what, "met" if cond else "MISSED"))
    ok = ok and bool(cond)
sys.exit(1 if strict and not ok else 0)
EOF
