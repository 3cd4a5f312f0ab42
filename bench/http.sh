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
# all three alike. It reports the median of each and the ratios:
#
#   GET  /v1/get_fast/42          (a 64-byte value)       target >= 0.8 x nginx, p99 < 1 ms
#   POST /v1/put_fast/{n}         (64-byte body, n = 1, 2, 3, ... distinct keys)
#                                                         target >= 0.5 x nginx
#
# Environment: DURATION (seconds per run, default 10), CONNS (64), THREADS
# (wrk threads, 1), ROUNDS (3), NGINX_WORKERS (auto), SERVER_THREADS
# (default: the server's own default, one per CPU), STRICT=1 to exit 1 when
# a target is missed. Both servers are killed at the end, whatever happens.
set -euo pipefail

SERVER=${1:-build/kyrodb-server}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
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

# ---- nginx ------------------------------------------------------------------
NPORT=$(free_port)
mkdir -p "$TMP/nginx" "$TMP/res"
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

# ---- kyrodb-server ------------------------------------------------------------
KPORT=$(free_port)
targs=()
[ -n "$SERVER_THREADS" ] && targs=(--threads "$SERVER_THREADS")
KYRODB_LOG=warn "$SERVER" serve 127.0.0.1 "$KPORT" --data "$TMP/data" --sync normal "${targs[@]}" \
    2>"$TMP/server.log" &
KPID=$!
wait_http "http://127.0.0.1:$KPORT/health" "$KPID" kyrodb-server
VALUE=$(printf 'v%.0s' $(seq 1 64))
curl -s -o /dev/null -X POST --data-binary "$VALUE" "http://127.0.0.1:$KPORT/v1/put_fast/42"

cat >"$TMP/put.lua" <<EOF
-- POST /v1/put_fast/{n} with a 64-byte body, a new key each time.
local n = tonumber(os.getenv("KEYBASE") or "1000000")
local body = string.rep("v", 64)
request = function()
    n = n + 1
    return wrk.format("POST", "/v1/put_fast/" .. n, nil, body)
end
EOF

# run NAME URL [wrk args...] -> appends "rps p99_us non2xx" to $TMP/res/NAME
run() {
    local name=$1 url=$2
    shift 2
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" >"$TMP/wrk.out" 2>&1 || true
    "$PY" - "$TMP/wrk.out" >>"$TMP/res/$name" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s*([0-9.]+)", t)
p99 = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s)\s*$", t, re.M)
bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", t)
if not rps or not p99:
    sys.stderr.write(t)
    print("0 0 0")
else:
    scale = {"us": 1, "ms": 1e3, "s": 1e6}[p99.group(2)]
    print("%s %.0f %s" % (rps.group(1), float(p99.group(1)) * scale, bad.group(1) if bad else "0"))
EOF
    printf '  %-8s %10.0f req/s   p99 %6.0f us\n' "$name" \
        "$(tail -1 "$TMP/res/$name" | cut -d' ' -f1)" "$(tail -1 "$TMP/res/$name" | cut -d' ' -f2)"
}

echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds; $(nproc) CPUs; nginx workers: $NGINX_WORKERS;" \
    "kyrodb-server threads: ${SERVER_THREADS:-default}"
# Warm both up (connections, caches, the learned index) without counting it.
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NPORT/" >/dev/null 2>&1 || true
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$KPORT/v1/get_fast/42" >/dev/null 2>&1 || true
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r"
    run nginx "http://127.0.0.1:$NPORT/"
    run get "http://127.0.0.1:$KPORT/v1/get_fast/42"
    KEYBASE=$((r * 100000000)) run put "http://127.0.0.1:$KPORT/" -s "$TMP/put.lua"
done

"$PY" - "$TMP/res" "$STRICT" <<'EOF'
import statistics, sys
d, strict = sys.argv[1], sys.argv[2] == "1"
def load(name):
    rows = [list(map(float, l.split())) for l in open("%s/%s" % (d, name)) if l.strip()]
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows), sum(r[2] for r in rows)
n_rps, n_p99, _ = load("nginx")
g_rps, g_p99, g_bad = load("get")
p_rps, p_p99, p_bad = load("put")
print()
print("median of each:")
print("  nginx return 200          %9.0f req/s  p99 %6.0f us" % (n_rps, n_p99))
print("  GET  /v1/get_fast/42      %9.0f req/s  p99 %6.0f us  ratio %.2f x nginx" % (g_rps, g_p99, g_rps / n_rps if n_rps else 0))
print("  POST /v1/put_fast/{n}     %9.0f req/s  p99 %6.0f us  ratio %.2f x nginx" % (p_rps, p_p99, p_rps / n_rps if n_rps else 0))
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
