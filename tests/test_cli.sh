#!/usr/bin/env bash
# test_cli.sh — end-to-end tests of the kyro command-line tool.
#
#   tests/test_cli.sh [KYRO_BIN]      (default build/kyro)
#
# Runs every command against temporary directories and checks output bytes,
# messages and exit codes (0 ok, 1 not found, 2 usage, 3 tool I/O or input
# error, 3+n library error -n); run as root, it also fills a small tmpfs.
# Needs bash, cmp and python3 (to make test data). Prints one line per check
# and "N passed, N failed" at the end; exits 1 if anything failed, 2 on a
# usage error.
set -euo pipefail

KYRO=${1:-build/kyro}
if [ ! -x "$KYRO" ]; then
    echo "usage: $0 KYRO_BIN   ($KYRO is not an executable)" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "$0: python3 is required" >&2; exit 2; }
PY=$(python3 -c 'import sys; print(sys.executable)')

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kyro-test-cli.XXXXXX")
HOLDER=""
FULL_MOUNTED=0
cleanup() {
    if [ -n "$HOLDER" ]; then kill "$HOLDER" 2>/dev/null || true; wait "$HOLDER" 2>/dev/null || true; fi
    [ "$FULL_MOUNTED" = 0 ] || umount "$TMP/full" || true
    rm -rf "$TMP"
}
trap cleanup EXIT
PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
expect() {
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (expected '$2', got '$3')"; fi
}
# run ARGS... -> $RC, stdout in $TMP/out, stderr in $TMP/err
run() {
    RC=0
    "$KYRO" "$@" >"$TMP/out" 2>"$TMP/err" || RC=$?
}
# run_in FILE ARGS... : the same with stdin from FILE
run_in() {
    local f=$1
    shift
    RC=0
    "$KYRO" "$@" <"$f" >"$TMP/out" 2>"$TMP/err" || RC=$?
}
out() { cat "$TMP/out"; }
err_has() { grep -q -- "$1" "$TMP/err"; }

D="$TMP/db"

echo "# help and usage"
run --help
expect "--help exits 0" 0 "$RC"
check "--help documents the dump format" grep -q "KYRODUMP 1" "$TMP/out"
check "--help documents the exit codes" grep -q "exit codes" "$TMP/out"
run help
expect "help exits 0" 0 "$RC"
run
expect "no arguments: usage, exit 2" 2 "$RC"
run --version
expect "--version exits 0" 0 "$RC"
run "$D" frobnicate
expect "unknown command exits 2" 2 "$RC"
run "$D" get
expect "get without a key exits 2" 2 "$RC"
run "$D" put 1
expect "put without a value exits 2" 2 "$RC"
run "$D" scan 1 2 3 4
expect "scan with too many arguments exits 2" 2 "$RC"

echo "# a missing database"
run "$D" get 1
expect "get on a missing database exits 1" 1 "$RC"
check "and says so" err_has "no database"
run "$D" del 1
expect "del on a missing database exits 1" 1 "$RC"
check "read commands did not create the directory" test ! -e "$D"

echo "# put and get"
run "$D" put 1 hello
expect "put creates the database and exits 0" 0 "$RC"
run "$D" get 1
expect "get exits 0" 0 "$RC"
printf 'hello' >"$TMP/expect"
check "get writes exactly the value, no newline added" cmp -s "$TMP/out" "$TMP/expect"
run "$D" put 1 'hello again'
run "$D" get 1
expect "put overwrites" "hello again" "$(out)"
"$PY" -c 'import os,sys; sys.stdout.buffer.write(b"\x00bin\n\t\\\xff" + os.urandom(1 << 20))' >"$TMP/blob"
run_in "$TMP/blob" "$D" put 2 -
expect "put KEY - reads stdin" 0 "$RC"
run "$D" get 2
check "a 1 MiB binary value round-trips through stdin and stdout" cmp -s "$TMP/out" "$TMP/blob"
: >"$TMP/empty"
run_in "$TMP/empty" "$D" put 3 -
run "$D" get 3
expect "an empty value: get exits 0" 0 "$RC"
check "an empty value: get writes nothing" test ! -s "$TMP/out"
run "$D" put 0 zero
run "$D" get 0
expect "key 0" zero "$(out)"
run "$D" put 18446744073709551615 max
run "$D" get 18446744073709551615
expect "key 18446744073709551615" max "$(out)"
run "$D" get 999
expect "get of a missing key exits 1" 1 "$RC"
check "and says 'not found' on stderr" err_has "not found"
check "and writes nothing on stdout" test ! -s "$TMP/out"
for k in -1 +1 abc 1x '' ' 1' 18446744073709551616 99999999999999999999; do
    run "$D" get "$k"
    expect "bad key '$k' exits 2" 2 "$RC"
done
head -c $((64 * 1024 * 1024 + 1)) /dev/zero >"$TMP/huge"
run_in "$TMP/huge" "$D" put 4 -
expect "a value over 64 MiB exits 9 (KV_ETOOBIG)" 9 "$RC"
rm -f "$TMP/huge"
run "$D" get 4
expect "and nothing was stored" 1 "$RC"

echo "# del"
run "$D" del 1
expect "del of a present key exits 0" 0 "$RC"
run "$D" get 1
expect "the key is gone" 1 "$RC"
run "$D" del 1
expect "del of an absent key exits 1" 1 "$RC"
check "and says 'not found'" err_has "not found"

echo "# scan"
for k in 10 11 12 13 14 15 16 17 18 19; do "$KYRO" "$D" put "$k" "v$k"; done
"$KYRO" "$D" put 20 "$(printf 'tab\there\\back\x01')"
run "$D" scan 10 19
expect "scan exits 0" 0 "$RC"
expect "scan lists the pairs in order" "$(for k in 10 11 12 13 14 15 16 17 18 19; do printf '%s\tv%s\n' $k $k; done)" "$(out)"
run "$D" scan 10 100 3
expect "scan with LIMIT" "$(printf '10\tv10\n11\tv11\n12\tv12')" "$(out)"
run "$D" scan 20 20
expect "scan escapes tab, backslash and control bytes" "$(printf '20\t%s' 'tab\there\\back\x01')" "$(out)"
run "$D" scan 19 10
expect "scan with LO > HI prints nothing and exits 0" "0:" "$RC:$(out)"
run "$D" scan 0 18446744073709551615 0
expect "scan with LIMIT 0 prints nothing" "0:" "$RC:$(out)"
run "$D" scan 0 x
expect "scan with a bad bound exits 2" 2 "$RC"
run "$D" scan 0 1 -1
expect "scan with a bad limit exits 2" 2 "$RC"

echo "# stats and check"
run "$D" stats
expect "stats exits 0" 0 "$RC"
# keys now: 0, 2, 3, 10..20, max = 15
expect "stats counts the keys" "keys: 15" "$(grep '^keys:' "$TMP/out" | tr -s ' ')"
check "stats names the probe kernel" grep -Eq '^simd: +(avx512|avx2|scalar)$' "$TMP/out"
run "$D" check
expect "check exits 0" 0 "$RC"
check "check reports every key" grep -q '^ok: 15 keys' "$TMP/out"

echo "# read-only commands change no file"
snap_files() { (cd "$D" && find . -type f -exec md5sum {} + | sort); }
before=$(snap_files)
"$KYRO" "$D" get 2 >/dev/null
"$KYRO" "$D" scan 0 100 >/dev/null
"$KYRO" "$D" stats >/dev/null
"$KYRO" "$D" check >/dev/null
"$KYRO" "$D" dump >/dev/null
expect "get/scan/stats/check/dump leave every file as it was" "$before" "$(snap_files)"

echo "# dump and load"
run "$D" dump
expect "dump exits 0" 0 "$RC"
cp "$TMP/out" "$TMP/dump1"
check "dump format: header, KEY<TAB>HEX lines in ascending order, END count" "$PY" - "$TMP/dump1" "$TMP/blob" <<'EOF'
import re, sys
lines = open(sys.argv[1], "rb").read().split(b"\n")
assert lines[0] == b"KYRODUMP 1", lines[0]
assert lines[-1] == b"", "no final newline"
body, end = lines[1:-2], lines[-2]
assert end == b"END %d" % len(body), end
keys = []
pairs = {}
for l in body:
    m = re.fullmatch(rb"(0|[1-9][0-9]*)\t((?:[0-9a-f]{2})*)", l)
    assert m, l[:80]
    k = int(m.group(1)); keys.append(k); pairs[k] = bytes.fromhex(m.group(2).decode())
assert keys == sorted(keys) and len(set(keys)) == len(keys)
assert len(keys) == 15, len(keys)
assert pairs[2] == open(sys.argv[2], "rb").read()
assert pairs[3] == b"" and pairs[0] == b"zero" and pairs[2**64 - 1] == b"max"
assert pairs[20] == b"tab\there\\back\x01"
EOF
run "$TMP/db2" load "$TMP/dump1"
expect "load FILE exits 0" 0 "$RC"
check "load reports the count" err_has "loaded 15 pairs"
run "$TMP/db2" dump "$TMP/dump2"
expect "dump FILE exits 0" 0 "$RC"
check "dump -> load -> dump is byte-identical" cmp -s "$TMP/dump1" "$TMP/dump2"
run "$TMP/db2" get 2
check "binary value intact after the round trip" cmp -s "$TMP/out" "$TMP/blob"
RC=0
cat "$TMP/dump1" | "$KYRO" "$TMP/db3" load >/dev/null 2>"$TMP/err" || RC=$?
expect "load from a pipe exits 0" 0 "$RC"
check "and loads everything" bash -c "'$KYRO' '$TMP/db3' dump | cmp -s - '$TMP/dump1'"
printf 'KYRODUMP 1\n5\t61\n5\t62\n6\t\nEND 3\n' >"$TMP/later"
run "$TMP/db4" load "$TMP/later"
run "$TMP/db4" get 5
expect "a later line for the same key wins" b "$(out)"
run "$TMP/db4" get 6
expect "an empty hex field loads an empty value" "0:" "$RC:$(out)"
printf 'KYRODUMP 1\r\n7\t4142\r\nEND 1\r\n' >"$TMP/crlf"
run "$TMP/db4" load "$TMP/crlf"
expect "CRLF line ends are tolerated" 0 "$RC"
run "$TMP/db4" get 7
expect "uppercase hex loads" AB "$(out)"

bad_dumps=(
    'KYRODUMP 2\nEND 0\n'
    'kyrodump 1\nEND 0\n'
    '1\t61\nEND 1\n'
    'KYRODUMP 1\n1\t6\nEND 1\n'
    'KYRODUMP 1\n1\t6g\nEND 1\n'
    'KYRODUMP 1\n1 61\nEND 1\n'
    'KYRODUMP 1\n1\t61\t62\nEND 1\n'
    'KYRODUMP 1\n-1\t61\nEND 1\n'
    'KYRODUMP 1\n18446744073709551616\t61\nEND 1\n'
    'KYRODUMP 1\n\t61\nEND 1\n'
    'KYRODUMP 1\n1\t61\nEND 2\n'
    'KYRODUMP 1\n1\t61\n'
    'KYRODUMP 1\n1\t61\nEND 1\n2\t62\n'
    'KYRODUMP 1\n1\t61\nEND 1'
    'KYRODUMP 1\n1\t61\n\nEND 1\n'
    ''
)
i=0
for b in "${bad_dumps[@]}"; do
    i=$((i + 1))
    printf "$b" >"$TMP/bad$i"
    run "$TMP/bad_db$i" load "$TMP/bad$i"
    expect "malformed dump #$i ('$b') exits 3" 3 "$RC"
    run "$TMP/bad_db$i" get 1
    expect "malformed dump #$i loaded nothing (checked before writing)" 1 "$RC"
done
run "$TMP/db5" load "$TMP/no-such-file"
expect "load of a missing file exits 3" 3 "$RC"
run "$D" dump "$TMP/no-such-dir/x"
expect "dump into a missing directory exits 3" 3 "$RC"

echo "# snapshot and compact"
run "$D" snapshot
expect "snapshot exits 0" 0 "$RC"
check "snapshot says what it did" grep -q "snapshot done" "$TMP/out"
"$KYRO" "$D" put 10 overwritten
"$KYRO" "$D" del 11
run "$D" compact
expect "compact exits 0" 0 "$RC"
run "$D" get 10
expect "data intact after snapshot and compact" overwritten "$(out)"
run "$D" get 11
expect "deleted key stays deleted after compact" 1 "$RC"
run "$D" get 2
check "large value intact after snapshot and compact" cmp -s "$TMP/out" "$TMP/blob"
run "$D" check
expect "check passes after snapshot and compact" 0 "$RC"

echo "# shell"
cat >"$TMP/script" <<'EOF'
put 30 "two words"
put 31 'single \x quoted'
put 32 "esc\t\x41\\"
get 30
get 31
get 32
scan 30 32
# a comment line

del 30
get 30
EOF
run_in "$TMP/script" "$D"
expect "a shell script ending in a not-found get exits 1" 1 "$RC"
expect "shell output" $'two words\nsingle \\x quoted\nesc\tA\\\n30\ttwo words\n31\tsingle \\\\x quoted\n32\tesc\\tA\\\\' "$(out)"
printf 'get 31\nquit\nget 30\n' >"$TMP/script2"
run_in "$TMP/script2" "$D"
expect "quit ends the shell" "0:single \\x quoted" "$RC:$(out)"
printf 'nosuch\nget 31\n' >"$TMP/script3"
run_in "$TMP/script3" "$D"
expect "a bad command does not stop the shell, but sets the exit code" "2:single \\x quoted" "$RC:$(out)"
printf 'put 40 -\n' >"$TMP/script4"
run_in "$TMP/script4" "$D"
expect "put KEY - is refused in the shell" 2 "$RC"
printf 'put 41 "unterminated\n' >"$TMP/script5"
run_in "$TMP/script5" "$D"
expect "bad quoting is a usage error" 2 "$RC"

echo "# a database in use, a corrupt database"
mkfifo "$TMP/fifo"
"$KYRO" "$D" <"$TMP/fifo" >/dev/null 2>&1 &
HOLDER=$!
exec 7>"$TMP/fifo"
sleep 0.3
run "$D" put 50 x
expect "put while another process has the database open exits 8 (KV_EBUSY)" 8 "$RC"
check "with the library's message" err_has "already open"
echo quit >&7
exec 7>&-
wait "$HOLDER" || true
HOLDER=""
run "$D" put 50 x
expect "and works once it is closed" 0 "$RC"

"$KYRO" "$D" snapshot >/dev/null
snap=$(find "$D" -maxdepth 1 -type f -name 'snap*' | head -1)
if [ -n "$snap" ]; then
    cp -r "$D" "$TMP/corrupt"
    snap="$TMP/corrupt/$(basename "$snap")"
    size=$(stat -c %s "$snap")
    "$PY" - "$snap" "$size" <<'EOF'
import sys
path, size = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(size // 2)
    b = f.read(1)
    f.seek(size // 2)
    f.write(bytes([b[0] ^ 0xFF]))
EOF
    run "$TMP/corrupt" check
    expect "check of a damaged snapshot exits 7 (KV_ECORRUPT)" 7 "$RC"
    check "with the library's message" err_has "checksum\|corrupt"
else
    bad "no snapshot file found in $D to damage"
fi

echo "# check: every file verified, the damaged one named"
C="$TMP/chk"
for i in $(seq 1 40); do "$KYRO" "$C" put "$i" "value-$i" 2>/dev/null; done
"$KYRO" "$C" snapshot >/dev/null
for i in $(seq 30 45); do "$KYRO" "$C" put "$i" "second-$i"; done
"$KYRO" "$C" del 5
printf 'KYRODUMP 1\n100\t6869\n101\t\n102\t00ff\nEND 3\n' >"$TMP/chk.dump"
"$KYRO" "$C" load "$TMP/chk.dump" 2>/dev/null
CSNAP=$(cd "$C" && ls snap-*.kyro | head -1)
CWAL=$(cd "$C" && ls wal-*.log | tail -1)
run "$C" check
expect "check of a healthy database exits 0" 0 "$RC"
check "it reports the MANIFEST, the snapshot and the log as ok" \
    bash -c "grep -q '^MANIFEST: ok' '$TMP/out' && grep -q '^$CSNAP: ok' '$TMP/out' && grep -q '^$CWAL: ok' '$TMP/out'"
check "it counts the keys (40 + 5 new - 1 deleted + 3 loaded)" grep -q "^ok: 47 keys" "$TMP/out"
check "it says every key was found by the learned index in its window" \
    grep -q 'every key found by the index in its window' "$TMP/out"
before=$(cd "$C" && find . -type f -exec md5sum {} + | sort)
"$KYRO" "$C" check >/dev/null 2>&1 || true
expect "check changes no file" "$before" "$(cd "$C" && find . -type f -exec md5sum {} + | sort)"

# damage DIR FILE OFFSET: flip one byte
damage() {
    "$PY" - "$1/$2" "$3" <<'EOF'
import sys
path, off = sys.argv[1], int(sys.argv[2])
b = bytearray(open(path, "rb").read())
b[off] ^= 0x5A
open(path, "wb").write(b)
EOF
}
fresh() { rm -rf "$TMP/chk2"; cp -r "$C" "$TMP/chk2"; }
fresh; damage "$TMP/chk2" "$CSNAP" 300
run "$TMP/chk2" check
expect "check of a flipped byte in the snapshot's keys exits 7" 7 "$RC"
check "and names the snapshot file and the section" grep -q "^$CSNAP: DAMAGED: keys section checksum" "$TMP/out"
check "on stderr too" err_has "$CSNAP"
fresh; damage "$TMP/chk2" "$CWAL" 40
run "$TMP/chk2" check
expect "check of a bad WAL record with valid ones after it exits 7" 7 "$RC"
check "and names the log and the byte offset" grep -q "^$CWAL: DAMAGED: bad record at byte 32" "$TMP/out"
fresh; damage "$TMP/chk2" MANIFEST 20
run "$TMP/chk2" check
expect "check of a damaged MANIFEST exits 7" 7 "$RC"
check "and names it" grep -q "^MANIFEST: DAMAGED: checksum mismatch" "$TMP/out"
fresh; rm "$TMP/chk2/$CSNAP"
run "$TMP/chk2" check
expect "check with the snapshot missing exits 7" 7 "$RC"
check "and says so" grep -q "^$CSNAP: DAMAGED: named by the MANIFEST but missing" "$TMP/out"
fresh; damage "$TMP/chk2" "$CSNAP" 8
run "$TMP/chk2" check
expect "check of a snapshot with another format version exits 12 (KV_EVERSION)" 12 "$RC"
fresh; truncate -s -3 "$TMP/chk2/$CWAL"
run "$TMP/chk2" check
expect "a torn log tail is only a warning: exit 0" 0 "$RC"
check "named as a torn tail" grep -q "^$CWAL: warning: torn tail" "$TMP/out"

# Random damage (flips, truncations, appended garbage): check's verdict
# must be the library's (a read-only open).
mangle() {
    "$PY" - "$1" "$2" "$3" <<'EOF'
import sys
path, how, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = bytearray(open(path, "rb").read())
if how == "flip":
    b[off] ^= 0x5A
elif how == "cut":
    del b[off:]
else:
    b += bytes((off * 131 + k * 7) & 0xFF for k in range(1 + off % 40))
open(path, "wb").write(b)
EOF
}
agree=0; disagree=0; damaged_n=0
for i in $(seq 1 60); do
    fresh
    files=(MANIFEST "$CSNAP" "$CWAL")
    f=${files[$((i % 3))]}
    hows=(flip flip cut append)
    how=${hows[$(( (i / 3) % 4 ))]}
    size=$(stat -c %s "$TMP/chk2/$f")
    off=$(( (i * 7919 + i * i * 104729) % size ))
    mangle "$TMP/chk2/$f" "$how" "$off"
    RC=0; "$KYRO" "$TMP/chk2" check >/dev/null 2>&1 || RC=$?
    LRC=0; "$KYRO" "$TMP/chk2" stats >/dev/null 2>&1 || LRC=$?
    [ "$RC" -ne 0 ] && damaged_n=$((damaged_n + 1))
    if [ "$RC" = "$LRC" ]; then agree=$((agree + 1)); else
        disagree=$((disagree + 1)); echo "  # $how $f at $off: check exit $RC, open exit $LRC"; fi
done
expect "on 60 random damages, check's exit code is kv_open's ($damaged_n found damaged)" 0 "$disagree"

echo "# a full disk"
# A real filesystem that fills up: a 4 MiB tmpfs (needs root to mount).
mkdir -p "$TMP/full"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=4m kyro-test-cli-full "$TMP/full" 2>/dev/null; then
    FULL_MOUNTED=1
    "$PY" -c 'import os, sys; sys.stdout.buffer.write(os.urandom(1500000))' >"$TMP/v1500k"
    run_in "$TMP/v1500k" "$TMP/full/db" put 1 -
    expect "a put that fits exits 0" 0 "$RC"
    for k in 2 3 4; do
        run_in "$TMP/v1500k" "$TMP/full/db" put "$k" -
        [ "$RC" = 0 ] || break
    done
    expect "the put that finds the disk full exits 6 (KV_EIO)" 6 "$RC"
    check "and says why" err_has "put: I/O error: No space left on device"
    run "$TMP/full/db" get 1
    check "what was put before reads back" cmp -s "$TMP/out" "$TMP/v1500k"
    cat /dev/zero >"$TMP/full/filler" 2>/dev/null || true # the last free blocks
    run "$TMP/full/fresh" put 9 x
    expect "creating a database on the full disk exits 6 (KV_EIO)" 6 "$RC"
    check "and the open names the errno" err_has "cannot open $TMP/full/fresh: I/O error: No space left on device"
    umount "$TMP/full" && FULL_MOUNTED=0
else
    echo "skip - cannot mount a tmpfs here (needs root); the full-disk message not checked"
fi

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
