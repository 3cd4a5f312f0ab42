#!/usr/bin/env bash
# deps.sh GROUP — make sure the Debian packages a make target needs are there.
#
#   build  compile the library, examples and tests; run the test suite
#   bench  build + the comparison benchmarks (make bench)
#   fuzz   build + clang and its libFuzzer runtime (make fuzz)
#
# Each package is checked with dpkg-query. If any is missing: as root, they
# are installed with apt-get; otherwise the exact command to run is printed
# and the script fails. On a system without dpkg nothing can be checked: the
# list is printed and the build goes on.
set -euo pipefail

group=${1:-build}

# g++: make test compiles include/kyro.h as C++11. python3 and curl:
# tests/test_server.sh drives the example server with them.

build=(gcc g++ make pkg-config libxxhash-dev libcmocka-dev libevent-dev curl python3)
case "$group" in
build) pkgs=("${build[@]}") ;;
bench) pkgs=("${build[@]}" libbenchmark-dev liblmdb-dev librocksdb-dev libleveldb-dev libsqlite3-dev) ;;
fuzz)
    # libFuzzer ships in the clang runtime package of clang's own version.
    ver=14
    if command -v clang >/dev/null 2>&1; then
        ver=$(clang -dumpversion | cut -d. -f1)
    fi
    pkgs=("${build[@]}" clang "libclang-rt-$ver-dev")
    ;;
*)
    echo "usage: $0 build|bench|fuzz" >&2
    exit 2
    ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps.sh: not a Debian system; make sure these are installed: ${pkgs[*]}" >&2
    exit 0
fi

missing=()
for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    echo "deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
else
    echo "deps.sh: missing Debian packages for '$group': ${missing[*]}" >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
