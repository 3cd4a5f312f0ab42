#!/usr/bin/env bash
# test_server.sh — end-to-end tests of kyrodb-server over real HTTP.
#
#   tests/test_server.sh [SERVER_BIN]      (default build/kyrodb-server)
#
# Starts the server on free loopback ports with temporary data directories
# and drives every endpoint with curl and small python3 (stdlib) socket
# clients: good and bad requests, a slow client, 1,000 concurrent
# connections, auth on and off, rate limiting (with the admin bucket),
# KYRODB_LOG and KYRODB_WARM_ON_START, the tuning flags, restarts that must
# keep the data, clean shutdown on SIGTERM and SIGINT, a full disk (a small
# tmpfs, when run as root), the defaults (127.0.0.1:3030, ./data) and the
# exact command line `make run` uses.
# Needs bash, curl and python3.
# Prints one line per check and "N passed, N failed" at the end; exits 1 if
# anything failed, 2 on a usage error.
set -euo pipefail

SERVER=${1:-build/kyrodb-server}
if [ ! -x "$SERVER" ]; then
    echo "usage: $0 SERVER_BIN   ($SERVER is not an executable)" >&2
    exit 2
fi
command -v curl >/dev/null || { echo "$0: curl is required" >&2; exit 2; }
command -v python3 >/dev/null || { echo "$0: python3 is required" >&2; exit 2; }
# The interpreter itself, not a version-manager shim that costs 0.3 s a call.
PY=$(python3 -c 'import sys; print(sys.executable)')

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kyro-test-server.XXXXXX")
PASS=0
FAIL=0
SPID=""
PORT=""
BASE=""
LOG="$TMP/server.log"

stop_server() { # [signal] -> sets STOP_RC
    STOP_RC=0
    if [ -n "$SPID" ]; then
        kill "-${1:-TERM}" "$SPID" 2>/dev/null || true
        wait "$SPID" || STOP_RC=$?
        SPID=""
    fi
}
FULL_MOUNTED=0
cleanup() {
    stop_server KILL
    [ "$FULL_MOUNTED" = 0 ] || umount "$TMP/full" || true
    rm -rf "$TMP"
}
trap cleanup EXIT

section() { echo "# $1 (${SECONDS}s)"; }
ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
check() { # NAME COMMAND... : passes when the command succeeds
    local name=$1
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
expect() { # NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (expected '$2', got '$3')"; fi
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_server DATA_DIR [server options...]; environment passes through.
start_server() {
    local data=$1
    shift
    PORT=$(free_port)
    BASE="http://127.0.0.1:$PORT"
    echo "--- serve 127.0.0.1 $PORT --data $data $*" >>"$LOG"
    "$SERVER" serve 127.0.0.1 "$PORT" --data "$data" "$@" 2>>"$LOG" &
    SPID=$!
    for _ in $(seq 1 200); do
        if curl -sf -o /dev/null "$BASE/health"; then return 0; fi
        if ! kill -0 "$SPID" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "server did not come up; log:" >&2
    tail -20 "$LOG" >&2
    return 1
}

# req METHOD PATH [curl args...] -> $CODE, body in $TMP/body, headers in $TMP/hdr
req() {
    local m=$1 p=$2
    shift 2
    CODE=$(curl -s -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' -X "$m" "$@" "$BASE$p" || true)
}
body() { cat "$TMP/body"; }
header() { grep -i "^$1:" "$TMP/hdr" | head -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }
is_json_error() { # the body is {"error": "...", "status": CODE}
    "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert isinstance(d, dict) and isinstance(d.get("error"), str) and d["error"], d
assert d.get("status") == int(sys.argv[2]), d
' "$TMP/body" "$1" 2>/dev/null
}
expect_error() { # NAME CODE : the last answer was CODE with a JSON error
    if [ "$CODE" = "$2" ] && is_json_error "$2"; then
        ok "$1"
    else
        bad "$1 (expected $2 with a JSON error, got $CODE: $(head -c 200 "$TMP/body"))"
    fi
}

DATA="$TMP/data"

# ---------------------------------------------------------------------------
section "command line"
set +e
"$SERVER" --help >/dev/null 2>&1; expect "--help exits 0" 0 $?
"$SERVER" >/dev/null 2>&1; expect "no command exits 2" 2 $?
"$SERVER" serve 127.0.0.1 notaport >/dev/null 2>&1; expect "bad port exits 2" 2 $?
"$SERVER" serve 127.0.0.1 0 >/dev/null 2>&1; expect "port 0 exits 2" 2 $?
"$SERVER" serve 127.0.0.1 1 --no-such-flag >/dev/null 2>&1; expect "unknown flag exits 2" 2 $?
"$SERVER" serve 127.0.0.1 1 --sync sometimes >/dev/null 2>&1; expect "bad --sync exits 2" 2 $?
KYRODB_RL_RPS=-3 "$SERVER" serve 127.0.0.1 1 --enable-rate-limiting >/dev/null 2>&1
expect "bad KYRODB_RL_RPS exits 2" 2 $?
set -e

# ---------------------------------------------------------------------------
section "basic endpoints (no auth, no rate limit)"
start_server "$DATA" --sync normal --threads 2
req GET /health
expect "GET /health is 200" 200 "$CODE"
expect "/health body" '{"status":"ok"}' "$(body)"
HEAD_CODE=$(curl -s -o "$TMP/body" -I -w '%{http_code}' "$BASE/health")
expect "HEAD /health is 200" 200 "$HEAD_CODE"
grep -q -i '^content-length' "$TMP/body" || true

req POST /v1/put -H 'Content-Type: application/json' -d '{"key": 1, "value": "hello"}'
expect "POST /v1/put is 200" 200 "$CODE"
check "put answer is JSON with ok" "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d=={"ok":True,"key":1}, d' "$TMP/body"
req GET '/v1/lookup?key=1'
expect "lookup is 200" 200 "$CODE"
check "lookup answer" "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d=={"key":1,"value":"hello"}, d' "$TMP/body"
expect "lookup content type" "application/json" "$(header Content-Type)"

# JSON escapes, including a surrogate pair, decode to UTF-8 bytes.
req POST /v1/put --data-binary '{"value":"q\"b\\s\/ n\n t\t u\u00e9 \ud83d\ude00 \u20ac","key":2}'
expect "put with escapes (members in the other order) is 200" 200 "$CODE"
printf 'q"b\\s/ n\n t\t u\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac' >"$TMP/expect2"
req GET /v1/get_fast/2
check "escapes decoded to the exact bytes" cmp -s "$TMP/body" "$TMP/expect2"
req GET '/v1/lookup?key=2'
check "lookup re-escapes to the same string" "$PY" -c '
import json,sys
d=json.load(open(sys.argv[1], encoding="utf-8"))
assert d["value"] == open(sys.argv[2], "rb").read().decode("utf-8"), d' "$TMP/body" "$TMP/expect2"

# Raw values: binary, larger than the worker buffer, empty.
head -c 200000 /dev/urandom >"$TMP/blob"
req POST /v1/put_fast/3 --data-binary @"$TMP/blob"
expect "put_fast of 200000 random bytes is 204" 204 "$CODE"
req GET /v1/get_fast/3
expect "get_fast is 200" 200 "$CODE"
check "get_fast returns the exact bytes" cmp -s "$TMP/body" "$TMP/blob"
expect "get_fast content type" "application/octet-stream" "$(header Content-Type)"
req GET '/v1/lookup?key=3'
check "lookup of a binary value carries value_hex" "$PY" -c '
import json,sys
d=json.load(open(sys.argv[1]))
assert bytes.fromhex(d["value_hex"]) == open(sys.argv[2],"rb").read()' "$TMP/body" "$TMP/blob"
req POST /v1/put_fast/4 --data-binary ''
expect "put_fast of an empty value is 204" 204 "$CODE"
req GET /v1/get_fast/4
expect "get_fast of an empty value is 200" 200 "$CODE"
expect "empty value has Content-Length 0" 0 "$(header Content-Length)"
req PUT /v1/put_fast/5 --data-binary 'via PUT'
expect "PUT /v1/put_fast is accepted too" 204 "$CODE"

# Extreme keys.
req POST /v1/put_fast/0 --data-binary 'zero'
req GET /v1/get_fast/0
expect "key 0" "zero" "$(body)"
req POST /v1/put_fast/18446744073709551615 --data-binary 'max'
req GET /v1/get_fast/18446744073709551615
expect "key 18446744073709551615" "max" "$(body)"
req GET /v1/get_fast/0018446744073709551615
expect "leading zeros are still the same decimal key" "max" "$(body)"

section "missing keys and bad requests"
req GET /v1/get_fast/999
expect_error "get_fast of a missing key is 404 JSON" 404
req GET '/v1/lookup?key=999'
expect_error "lookup of a missing key is 404 JSON" 404
for k in 18446744073709551616 99999999999999999999 -1 +1 12a abc '%31' '1%20' ''; do
    req GET "/v1/get_fast/$k"
    expect_error "get_fast key '$k' is 400" 400
done
for k in -5 1.0 x 18446744073709551616; do
    req POST "/v1/put_fast/$k" --data-binary 'v'
    expect_error "put_fast key '$k' is 400" 400
done
req GET '/v1/lookup'
expect_error "lookup without key is 400" 400
req GET '/v1/lookup?key='
expect_error "lookup with an empty key is 400" 400
req GET '/v1/lookup?key=1&key=2'
expect_error "lookup with key twice is 400" 400
req GET '/v1/lookup?key=1&bogus=2'
expect_error "lookup with an unknown parameter is 400" 400

bad_json=(
    ''
    '{'
    '{}'
    '[]'
    'null'
    '{"key":1}'
    '{"value":"x"}'
    '{"key":-1,"value":"x"}'
    '{"key":1.5,"value":"x"}'
    '{"key":1e3,"value":"x"}'
    '{"key":01,"value":"x"}'
    '{"key":18446744073709551616,"value":"x"}'
    '{"key":"7","value":"x"}'
    '{"key":7,"value":7}'
    '{"key":7,"value":null}'
    '{"key":7,"value":["x"]}'
    '{"key":7,"value":"x","extra":1}'
    '{"key":7,"key":8,"value":"x"}'
    '{"key":7,"value":"x",}'
    '{"key":7,"value":"x"} junk'
    '{"key":7,"value":"x"}{}'
    '{"key":7 "value":"x"}'
    '{key:7,"value":"x"}'
    "{'key':7,'value':'x'}"
    '{"key":7,"value":"\ud800"}'
    '{"key":7,"value":"\udc00"}'
    '{"key":7,"value":"\ud800\u0041"}'
    '{"key":7,"value":"\x"}'
    '{"key":7,"value":"\u12"}'
    '{"key":7,"value":"unterminated}'
)
for b in "${bad_json[@]}"; do
    req POST /v1/put --data-binary "$b"
    expect_error "bad JSON body '$b' is 400" 400
done
printf '{"key":7,"value":"a\tb"}' >"$TMP/ctl.json"
req POST /v1/put --data-binary @"$TMP/ctl.json"
expect_error "raw control character in a string is 400" 400
printf '{"key":7,"value":"\xff\xfe"}' >"$TMP/utf.json"
req POST /v1/put --data-binary @"$TMP/utf.json"
expect_error "invalid UTF-8 is 400" 400
printf '{"key":7,"value":"\xc0\xaf"}' >"$TMP/utf2.json"
req POST /v1/put --data-binary @"$TMP/utf2.json"
expect_error "overlong UTF-8 is 400" 400
req GET /v1/get_fast/7
expect_error "no bad body stored anything under key 7" 404

"$PY" -c 'import sys; sys.stdout.write("{\"key\":8,\"value\":\"" + "a" * (1 << 20) + "\"}")' >"$TMP/big.json"
req POST /v1/put --data-binary @"$TMP/big.json"
expect_error "JSON body over 1 MiB is 413" 413
head -c $((64 * 1024 * 1024 + 1)) /dev/zero >"$TMP/huge"
req POST /v1/put_fast/9 --data-binary @"$TMP/huge"
expect_error "put_fast body over 64 MiB is 413" 413
rm -f "$TMP/huge"

req GET /nope
expect_error "unknown path is 404" 404
req GET /v1/nope/deeper
expect_error "unknown /v1 path is 404" 404
req GET /v1/put
expect_error "GET on a POST endpoint is 405" 405
expect "405 names the allowed method" "POST, PUT" "$(header Allow)"
req POST /health
expect_error "POST /health is 405" 405
req GET /v1/1
expect_error "GET /v1/KEY is 405 (only DELETE)" 405
req OPTIONS /v1/get_fast/1
expect_error "OPTIONS is 405" 405

section "delete and scan"
req DELETE /v1/1
expect "DELETE is 200" 200 "$CODE"
req GET /v1/get_fast/1
expect_error "deleted key is gone" 404
req DELETE /v1/1
expect "DELETE of an absent key is 200" 200 "$CODE"
req DELETE /v1/abc
expect_error "DELETE of a bad key is 400" 400

for k in $(seq 100 109); do
    curl -s -o /dev/null -X POST --data-binary "v$k" "$BASE/v1/put_fast/$k"
done
req GET '/v1/scan?lo=100&hi=109'
expect "scan is 200" 200 "$CODE"
check "scan returns the 10 pairs in order" "$PY" -c '
import json,sys
d=json.load(open(sys.argv[1]))
assert d == [{"key":k,"value":"v%d"%k} for k in range(100,110)], d' "$TMP/body"
req GET '/v1/scan?lo=100&hi=109&limit=3'
check "scan honours limit" "$PY" -c '
import json,sys
d=json.load(open(sys.argv[1]))
assert [p["key"] for p in d] == [100,101,102], d' "$TMP/body"
expect "a cut-short scan names the next key" 103 "$(header X-KyroDB-Next-Key)"
req GET '/v1/scan?lo=109&hi=100'
expect "scan with lo > hi is an empty array" "[]" "$(body)"
req GET '/v1/scan?lo=105&hi=105'
expect "scan of a single key" '[{"key":105,"value":"v105"}]' "$(body)"
req GET '/v1/scan?lo=x'
expect_error "scan with a bad lo is 400" 400
req GET '/v1/scan?limit=10001'
expect_error "scan with a limit over 10000 is 400" 400
req GET '/v1/scan?lo=1&what=2'
expect_error "scan with an unknown parameter is 400" 400

section "admin, metrics, build info"
for p in snapshot compact rmi/build warmup; do
    req POST "/v1/$p"
    expect "POST /v1/$p is 200" 200 "$CODE"
    check "/v1/$p answers ok" "$PY" -c 'import json,sys; assert json.load(open(sys.argv[1]))["ok"] is True' "$TMP/body"
done
req GET /v1/get_fast/105
expect "data survives snapshot+compact+rebuild" "v105" "$(body)"
req GET /metrics
expect "GET /metrics is 200" 200 "$CODE"
expect "metrics content type" "text/plain; version=0.0.4; charset=utf-8" "$(header Content-Type)"
check "metrics are valid Prometheus text with the kyrodb_ series" "$PY" - "$TMP/body" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
assert text.endswith("\n")
line_re = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (?P<value>-?[0-9.eE+-]+|\+Inf|NaN)$')
types, samples = {}, {}
for line in text.splitlines():
    if line.startswith("# TYPE "):
        _, _, name, typ = line.split(" ", 3)
        assert name not in types, "duplicate TYPE " + name
        types[name] = typ
        continue
    if line.startswith("# HELP "):
        continue
    m = line_re.match(line)
    assert m, "bad line: " + line
    name = m.group("name")
    assert name.startswith("kyrodb_"), name
    samples.setdefault(name, []).append((line, float(m.group("value"))))
for name, typ in types.items():
    if typ == "counter":
        assert name.endswith("_total"), name
for need in ["kyrodb_gets_total", "kyrodb_puts_total", "kyrodb_deletes_total",
             "kyrodb_rmi_rebuilds_total", "kyrodb_snapshots_total", "kyrodb_rmi_max_error",
             "kyrodb_rmi_probe_len_avg", "kyrodb_rmi_fallbacks_total", "kyrodb_wal_size_bytes",
             "kyrodb_wal_syncs_total", "kyrodb_keys", "kyrodb_http_requests_total",
             "kyrodb_snapshot_duration_seconds_count", "kyrodb_rmi_rebuild_duration_seconds_count",
             "kyrodb_http_request_duration_seconds_bucket", "kyrodb_build_info"]:
    assert need in samples, "missing " + need
assert types["kyrodb_snapshot_duration_seconds"] == "histogram"
assert samples["kyrodb_puts_total"][0][1] >= 14, samples["kyrodb_puts_total"]
assert samples["kyrodb_snapshots_total"][0][1] >= 1
assert samples["kyrodb_snapshot_duration_seconds_count"][0][1] >= 1
assert samples["kyrodb_rmi_rebuilds_total"][0][1] >= 1
assert samples["kyrodb_writable"][0][1] == 1, samples["kyrodb_writable"]
# buckets are cumulative and end in +Inf == _count
for h in [n[:-len("_bucket")] for n in samples if n.endswith("_bucket")]:
    series = {}
    for line, v in samples[h + "_bucket"]:
        key = re.sub(r',?le="[^"]*"', "", line.split(" ")[0])
        series.setdefault(key, []).append((line, v))
    for key, items in series.items():
        vals = [v for _, v in items]
        assert vals == sorted(vals), "buckets not cumulative: " + key
        assert 'le="+Inf"' in items[-1][0], key
    counts = {re.sub(r"_count", "_bucket", l.split(" ")[0]).replace("{}", ""): v
              for l, v in samples[h + "_count"]}
    for key, items in series.items():
        k2 = key.replace("{}", "")
        assert k2 in counts and counts[k2] == items[-1][1], ("+Inf != _count", key)
got = [l for l, v in samples["kyrodb_http_requests_total"] if 'route="get_fast",code="404"' in l]
assert got, "no get_fast 404 counted"
EOF
req GET /build_info
expect "GET /build_info is 200" 200 "$CODE"
check "build_info fields" "$PY" -c '
import json,sys
d=json.load(open(sys.argv[1]))
for k in ("version","git_commit","build_time","compiler","simd"):
    assert isinstance(d.get(k), str) and d[k], k
assert d["simd"] in ("avx512","avx2","scalar"), d
assert d["threads"] == 2, d  # --threads 2: two SO_REUSEPORT workers' "$TMP/body"

section "keep-alive, garbage, slow clients, 1000 connections"
NC=$(curl -s -w '%{num_connects}\n' -o /dev/null "$BASE/health" -o /dev/null "$BASE/health" \
    -o /dev/null "$BASE/health" | paste -sd, -)
expect "three requests share one keep-alive connection" "1,0,0" "$NC"
check "pipelined requests (GETs, a POST with a body, a GET) are answered in order" "$PY" - "$PORT" <<'EOF'
import re, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"GET /v1/get_fast/105 HTTP/1.1\r\nHost: t\r\n\r\n" * 3 +
          b"POST /v1/put_fast/150 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" +
          b"GET /v1/get_fast/150 HTTP/1.1\r\nHost: t\r\n\r\n")
data = b""
while data.count(b"HTTP/1.1 ") < 5 or not data.endswith(b"abc"):
    chunk = s.recv(65536)
    assert chunk, data
    data += chunk
codes = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
assert codes == [b"200", b"200", b"200", b"204", b"200"], codes
assert data.count(b"v105") == 3
EOF
check "garbage on the socket gets a 4xx and the server lives on" "$PY" - "$PORT" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"\x00\x01 THIS IS NOT HTTP\r\n\r\n")
data = s.recv(4096)
assert data == b"" or data.startswith(b"HTTP/1.") and data[9:10] == b"4", data[:100]
EOF
req GET /health
expect "healthy after garbage" 200 "$CODE"

check "slow clients (a byte a second) do not hold up other requests" "$PY" - "$PORT" <<'EOF'
import socket, sys, threading, time, urllib.request
port = int(sys.argv[1])
req = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
slow = []
for _ in range(8):                      # more than there are worker threads
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.append(s)
worst = 0.0
served = 0
start = time.time()
for i in range(6):                      # 6 s: one byte a second on every slow socket
    for s in slow:
        s.sendall(req[i:i + 1])
    t_end = time.time() + 1.0
    while time.time() < t_end:
        t0 = time.time()
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/get_fast/105" % port, timeout=5) as r:
            assert r.read() == b"v105"
        worst = max(worst, time.time() - t0)
        served += 1
for s in slow:                           # the rest of the request: each gets its answer
    s.sendall(req[6:])
for s in slow:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "slow client's connection was closed"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:80]
    s.close()
print("  served %d requests beside 8 slow clients, slowest %.1f ms" % (served, worst * 1000))
assert served > 50 and worst < 0.5, (served, worst)
EOF

check "1000 concurrent connections are all answered (twice, keep-alive)" "$PY" - "$PORT" <<'EOF'
import resource, selectors, socket, sys, time
port = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
N = 1000
socks = []
for i in range(N):
    s = socket.socket()
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    socks.append(s)
sel = selectors.DefaultSelector()
def round_trip(rnd):
    pending = {}
    for i, s in enumerate(socks):
        s.send(b"GET /v1/get_fast/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (100 + i % 10))
        pending[s.fileno()] = (s, i, b"")
        sel.register(s, selectors.EVENT_READ)
    deadline = time.time() + 30
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            s, i, buf = pending[key.fd]
            chunk = s.recv(65536)
            assert chunk, "connection %d closed" % i
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                lines = head.split(b"\r\n")
                assert lines[0].startswith(b"HTTP/1.1 200"), lines[0]
                clen = [int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length:")][0]
                if len(rest) >= clen:
                    assert rest[:clen] == b"v%d" % (100 + i % 10), (i, rest)
                    sel.unregister(s)
                    del pending[key.fd]
                    continue
            pending[key.fd] = (s, i, buf)
    assert not pending, "%d of %d connections unanswered in round %d" % (len(pending), N, rnd)
t0 = time.time()
round_trip(1)
round_trip(2)
print("  2 x %d requests on %d open connections in %.2f s" % (N, N, time.time() - t0))
for s in socks:
    s.close()
EOF
req GET /health
expect "healthy after 1000 connections" 200 "$CODE"

section "restart keeps the data (sync full), SIGTERM exits 0"
stop_server TERM
expect "SIGTERM: exit status 0" 0 "$STOP_RC"
check "shutdown closed the database" grep -q "database closed" "$LOG"
start_server "$DATA" --timeout-secs 2
req GET /v1/get_fast/3
check "binary value survives the restart" cmp -s "$TMP/body" "$TMP/blob"
req GET /v1/get_fast/2
check "escaped value survives the restart" cmp -s "$TMP/body" "$TMP/expect2"
req GET '/v1/scan?lo=100&hi=109'
check "all scan keys survive the restart" "$PY" -c 'import json,sys; assert len(json.load(open(sys.argv[1]))) == 10' "$TMP/body"
req GET /v1/get_fast/1
expect_error "deleted key stays deleted" 404
for k in $(seq 1000 1049); do
    curl -s -o /dev/null -X POST -d "{\"key\":$k,\"value\":\"w$k\"}" "$BASE/v1/put"
done
check "an idle connection is closed after --timeout-secs" "$PY" - "$PORT" <<'EOF'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"GET /hea")
t0 = time.time()
data = s.recv(4096)
took = time.time() - t0
assert data == b"" and 1.0 < took < 8, (data[:60], took)
EOF
check "one keep-alive connection: a slow request outlives --timeout-secs while bytes arrive; big bodies both ways" "$PY" - "$PORT" "$TMP/blob" <<'EOF'
import socket, sys, time
blob = open(sys.argv[2], "rb").read()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
buf = b""
def answer():
    global buf
    while b"\r\n\r\n" not in buf:
        c = s.recv(65536); assert c, "closed"; buf += c
    head, _, buf = buf.partition(b"\r\n\r\n")
    n = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    n = n[0] if n else 0
    while len(buf) < n:
        c = s.recv(65536); assert c, "closed"; buf += c
    body, buf = buf[:n], buf[n:]
    return head.split(b" ")[1], body
s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
assert answer()[0] == b"200"
# 3.5 s of one byte every 0.25 s: longer than the 2 s timeout, never idle for it
req = b"GET /v1/get_fast/3 HTTP/1.1\r\nHost: t\r\n\r\n"
t0 = time.time()
for i in range(14):
    s.sendall(req[i:i + 1]); time.sleep(0.25)
s.sendall(req[14:])
code, body = answer()
assert code == b"200" and body == blob, (code, len(body), time.time() - t0)
for k in range(3):  # 200 KB up, 200 KB down, on the same connection
    s.sendall(b"POST /v1/put_fast/%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (60 + k, len(blob)))
    for i in range(0, len(blob), 7000):
        s.sendall(blob[i:i + 7000])
    assert answer()[0] == b"204"
    s.sendall(b"GET /v1/get_fast/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (60 + k))
    code, body = answer()
    assert code == b"200" and body == blob, (k, code, len(body))
EOF
# (timeout: a server that wrongly starts is stopped and counts as a failure)
set +e
timeout 10 "$SERVER" serve 127.0.0.1 "$PORT" --data "$TMP/other" 2>/dev/null
expect "the address is taken: a second server on it exits 1" 1 $?
timeout 10 "$SERVER" serve 127.0.0.1 "$(free_port)" --data "$DATA" 2>/dev/null
expect "the database is locked: a second server on it exits 1" 1 $?
set -e
stop_server INT
expect "SIGINT: exit status 0" 0 "$STOP_RC"
start_server "$DATA"
req GET /v1/get_fast/1049
expect "writes made before SIGINT survive" "w1049" "$(body)"
req GET /v1/get_fast/3
check "older data still there after the second restart" cmp -s "$TMP/body" "$TMP/blob"
stop_server TERM

section "auth"
KYRODB_AUTH_TOKEN=s3cret start_server "$DATA"
req GET /health
expect "/health needs no token" 200 "$CODE"
req GET /v1/get_fast/105
expect_error "no token is 401" 401
expect "401 says how to authenticate" "Bearer" "$(header WWW-Authenticate)"
req GET /v1/get_fast/105 -H 'Authorization: Bearer wrong!'
expect_error "wrong token is 401" 401
req GET /v1/get_fast/105 -H 'Authorization: Bearer s3cre'
expect_error "a prefix of the token is 401" 401
req GET /v1/get_fast/105 -H 'Authorization: Bearer s3cretX'
expect_error "the token plus a byte is 401" 401
req GET /v1/get_fast/105 -H 'Authorization: Basic czNjcmV0'
expect_error "another scheme is 401" 401
req GET /v1/get_fast/105 -H 'Authorization: Bearer s3cret'
expect "right token is 200" "200 v105" "$CODE $(body)"
req GET /v1/get_fast/105 -H 'Authorization: bearer s3cret'
expect "the scheme is case-insensitive" 200 "$CODE"
req POST /v1/snapshot
expect_error "admin endpoints need the token" 401
req GET /metrics
expect_error "/metrics needs the token" 401
req GET /nope
expect_error "unknown paths answer 401 before 404" 401
stop_server TERM
KYRODB_AUTH_TOKEN=s3cret start_server "$DATA" --auth-token flagtoken
req GET /v1/get_fast/105 -H 'Authorization: Bearer flagtoken'
expect "--auth-token wins over KYRODB_AUTH_TOKEN" 200 "$CODE"
req GET /v1/get_fast/105 -H 'Authorization: Bearer s3cret'
expect_error "the environment token is then refused" 401
stop_server TERM

section "rate limiting"
KYRODB_RL_RPS=20 start_server "$DATA" --enable-rate-limiting
urls=()
for _ in $(seq 1 60); do urls+=(-o /dev/null "$BASE/v1/get_fast/105"); done
# The 61st request in the same burst keeps its answer for the checks below.
codes=$(curl -s -w '%{http_code}\n' "${urls[@]}" -o "$TMP/body" -D "$TMP/hdr" "$BASE/v1/get_fast/105")
CODE=$(tail -1 <<<"$codes")
codes=$(head -60 <<<"$codes")
n200=$(grep -c '^200$' <<<"$codes" || true)
n429=$(grep -c '^429$' <<<"$codes" || true)
check "60 quick requests at 20 req/s: about 20 pass, the rest 429 ($n200 ok, $n429 limited)" \
    test "$n200" -ge 15 -a "$n200" -le 35 -a $((n200 + n429)) -eq 60
expect_error "rate limited answer is 429 JSON" 429
expect "429 carries Retry-After" 1 "$(header Retry-After)"
hurls=()
for _ in $(seq 1 40); do hurls+=(-o /dev/null "$BASE/health"); done
hcodes=$(curl -s -w '%{http_code}\n' "${hurls[@]}" | sort -u | paste -sd, -)
expect "/health is never rate limited" 200 "$hcodes"
aurls=()
for _ in $(seq 1 6); do aurls+=(-o /dev/null "$BASE/v1/warmup"); done
acodes=$(curl -s -X POST -w '%{http_code}\n' "${aurls[@]}")
a429=$(grep -c '^429$' <<<"$acodes" || true)
check "admin endpoints have the stricter bucket (2 req/s: $a429 of 6 limited)" test "$a429" -ge 3
sleep 1.2
req GET /v1/get_fast/105
expect "the bucket refills" 200 "$CODE"
req GET /metrics
check "rate limited requests are counted" grep -q '^kyrodb_http_rate_limited_total [1-9]' "$TMP/body"
stop_server TERM

section "environment: KYRODB_LOG, KYRODB_WARM_ON_START"
: >"$LOG"
KYRODB_LOG=debug KYRODB_WARM_ON_START=1 start_server "$DATA"
req GET /v1/get_fast/105
stop_server TERM
check "KYRODB_WARM_ON_START=1 warms up" grep -q "warmed up" "$LOG"
check "KYRODB_LOG=debug logs each request" grep -q "GET /v1/get_fast/105 200" "$LOG"
: >"$LOG"
KYRODB_LOG=error start_server "$DATA"
req GET /v1/get_fast/105
stop_server TERM
check "KYRODB_LOG=error prints nothing on a clean run" bash -c "! grep -v '^--- serve' '$LOG'"
: >"$LOG"
KYRODB_LOG='warn,kyrodb=debug' start_server "$DATA"
req GET /v1/get_fast/105
stop_server TERM
check "RUST_LOG-style 'warn,kyrodb=debug' selects debug" grep -q "GET /v1/get_fast/105 200" "$LOG"

section "tuning flags: --rmi-rebuild-appends, --auto-snapshot-secs, --wal-max-bytes"
metric() { # NAME -> the value of an unlabelled series on /metrics
    curl -s "$BASE/metrics" | awk -v n="$1" '$1 == n { print $2 }'
}
wait_metric() { # NAME MIN: poll up to 5 s until NAME >= MIN; prints the last value
    local v=""
    for _ in $(seq 1 50); do
        v=$(metric "$1")
        if [ -n "$v" ] && awk -v v="$v" -v m="$2" 'BEGIN { exit !(v >= m) }'; then break; fi
        sleep 0.1
    done
    echo "${v:-none}"
}
# (the library's own threshold is tens of thousands of writes, so 30 fold
# only when the flag reaches it)
start_server "$TMP/tune1" --sync normal --rmi-rebuild-appends 20
for k in $(seq 1 30); do curl -s -o /dev/null -X POST --data-binary "t$k" "$BASE/v1/put_fast/$k"; done
v=$(wait_metric kyrodb_rmi_rebuilds_total 1)
check "--rmi-rebuild-appends 20: 30 writes fold into the index without being asked (rebuilds $v)" \
    test "$v" != none -a "$v" -ge 1
expect "and no snapshot was taken on the way" 0 "$(metric kyrodb_snapshots_total)"
stop_server TERM
start_server "$TMP/tune1" --sync normal --auto-snapshot-secs 1
curl -s -o /dev/null -X POST --data-binary "t31" "$BASE/v1/put_fast/31"
v=$(wait_metric kyrodb_snapshots_total 1)
check "--auto-snapshot-secs 1: a snapshot within seconds (snapshots $v)" test "$v" != none -a "$v" -ge 1
stop_server TERM
start_server "$TMP/tune2" --sync normal --wal-max-bytes 4K
before=$(metric kyrodb_snapshots_total)
head -c 300 /dev/zero | tr '\0' w >"$TMP/300"
for k in $(seq 1 40); do curl -s -o /dev/null -X POST --data-binary @"$TMP/300" "$BASE/v1/put_fast/$k"; done
v=$(wait_metric kyrodb_snapshots_total 1)
check "--wal-max-bytes 4K: 12 KB of writes trigger a snapshot (snapshots $before -> $v)" \
    test "$v" != none -a "$v" -ge 1
stop_server TERM
start_server "$TMP/tune2"
req GET /v1/get_fast/40
expect "data written across automatic snapshots survives a restart" "$(cat "$TMP/300")" "$(body)"
stop_server TERM

section "a full disk: 507, nothing acknowledged lost"
# A real filesystem that fills up: a 4 MiB tmpfs (needs root to mount).
FULL="$TMP/full"
mkdir -p "$FULL"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=4m kyro-test-full "$FULL" 2>/dev/null; then
    FULL_MOUNTED=1
    head -c 60000 /dev/urandom >"$TMP/v60k"
    full_value() { { printf '%08d' "$1"; cat "$TMP/v60k"; } >"$TMP/val"; }
    start_server "$FULL/db"
    acked=0
    for i in $(seq 1 200); do
        full_value "$i"
        req POST "/v1/put_fast/$i" --data-binary "@$TMP/val"
        [ "$CODE" = 204 ] || break
        acked=$i
    done
    check "some puts were acknowledged before the disk filled ($acked)" test "$acked" -gt 0
    expect_error "the put that finds the disk full is 507" 507
    check "its message names the cause" grep -q "No space left on device" "$TMP/body"
    req POST /v1/put -d '{"key": 999999, "value": "x"}'
    expect_error "later writes are refused with 507 too" 507
    req GET "/v1/get_fast/$acked"
    full_value "$acked"
    check "reads still answer, with the right bytes" bash -c "[ '$CODE' = 200 ] && cmp -s '$TMP/body' '$TMP/val'"
    check "/metrics counts the 507s" bash -c "curl -s '$BASE/metrics' | grep -q 'route=\"put_fast\",code=\"507\"} 1'"
    expect "/metrics says the database is not writable" 0 "$(metric kyrodb_writable)"
    req GET /health
    expect "/health is 503 once writes are refused" 503 "$CODE"
    expect "/health names the cause" '{"status":"refusing writes","error":"I/O error: No space left on device"}' "$(body)"
    stop_server TERM
    start_server "$FULL/db"
    lost=0
    for i in $(seq 1 "$acked"); do
        full_value "$i"
        req GET "/v1/get_fast/$i"
        if [ "$CODE" != 200 ] || ! cmp -s "$TMP/body" "$TMP/val"; then lost=$((lost + 1)); fi
    done
    expect "after a restart on the still-full disk every acknowledged put reads back" 0 "$lost"
    req GET /health
    expect "the restarted server is healthy until a write fails" 200 "$CODE"
    stop_server TERM
    cat /dev/zero >"$FULL/filler" 2>/dev/null || true # the last free blocks
    rc=0
    "$SERVER" serve 127.0.0.1 "$(free_port)" --data "$FULL/fresh" 2>"$TMP/openerr" || rc=$?
    expect "a server that cannot create its database on the full disk exits 1" 1 "$rc"
    check "and logs the errno" grep -q "cannot open database $FULL/fresh: I/O error: No space left on device" "$TMP/openerr"
    umount "$FULL" && FULL_MOUNTED=0
else
    echo "skip - cannot mount a tmpfs here (needs root); the full-disk answers not checked"
fi

section "defaults: 127.0.0.1:3030 and ./data; make run's command line"
# Run from an empty directory so that the default ./data is ours to check.
SERVER_ABS=$(cd "$(dirname "$SERVER")" && pwd)/$(basename "$SERVER")
mkdir -p "$TMP/cwd"
wait_3030() { # -> 0 when /health answers on 127.0.0.1:3030
    for _ in $(seq 1 100); do
        if curl -sf -o /dev/null http://127.0.0.1:3030/health; then return 0; fi
        kill -0 "$SPID" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
if "$PY" -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1",3030)); s.close()' 2>/dev/null; then
    (cd "$TMP/cwd" && exec "$SERVER_ABS" serve 2>>"$LOG") &
    SPID=$!
    up=0; wait_3030 && up=1
    expect "'serve' with no address listens on 127.0.0.1:3030" 1 "$up"
    if [ -r /proc/net/tcp ]; then
        # 0100007F:0BD6 is 127.0.0.1:3030, state 0A is LISTEN; 00000000:0BD6 would be 0.0.0.0.
        check "and only on loopback" bash -c "grep -q ' 0100007F:0BD6 .* 0A ' /proc/net/tcp && ! grep -q ' 00000000:0BD6 .* 0A ' /proc/net/tcp"
    fi
    curl -s -o /dev/null -X POST --data-binary 'in ./data' http://127.0.0.1:3030/v1/put_fast/77
    stop_server TERM
    check "without --data the database is ./data" test -f "$TMP/cwd/data/MANIFEST"
    # Exactly what `make run` executes, stopped as Ctrl-C stops it.
    : >"$LOG"
    (cd "$TMP/cwd" && exec "$SERVER_ABS" serve 127.0.0.1 3030 --data ./data 2>>"$LOG") &
    SPID=$!
    up=0; wait_3030 && up=1
    expect "make run's 'serve 127.0.0.1 3030 --data ./data' starts" 1 "$up"
    CODE=$(curl -s -o "$TMP/body" -w '%{http_code}' http://127.0.0.1:3030/v1/get_fast/77)
    expect "and serves what was written to ./data" "200 in ./data" "$CODE $(body)"
    stop_server INT
    expect "Ctrl-C (SIGINT) stops it with status 0" 0 "$STOP_RC"
    check "after closing the database" grep -q "database closed" "$LOG"
else
    echo "skip - port 3030 is busy; the defaults and make run's command line not checked"
fi

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
