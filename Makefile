# KyroDB — GNU make build.
#
#   make / make all   library (static + shared), examples, server, cli
#   make test         deps, build, header contract, tests, ASan+UBSan, TSan
#   make test-fast    deps, build, header contract, tests (no sanitizers)
#   make test-asan    tests rebuilt in build-asan/ with ASan + UBSan
#   make test-tsan    the concurrency tests rebuilt in build-tsan/ with TSan
#   make tests        build the test binaries only
#   make stress       the crash and corruption tests at length (STRESS_CYCLES
#                     kill cycles, default 5000; STRESS_CORRUPT x the damage samples)
#   make run          deps, build, start the example server on 127.0.0.1:3030
#   make bench        deps (bench), build bench/*, run $(BENCH_RUN)
#   make bench-build  deps (bench), build bench/* only
#   make fuzz         build fuzz/*.c with clang + libFuzzer into build-fuzz/
#   make fuzz-run     run each fuzzer FUZZ_SECS seconds (default 60)
#   make install / uninstall   PREFIX=/usr/local, DESTDIR
#   make deps / deps-bench / deps-fuzz   check (and as root install) packages
#   make clean
#
# Every build directory is self-contained: BUILD=build-asan SAN_FLAGS=...
# builds the same tree with other flags beside the normal one; the sanitizer
# targets call this Makefile again that way.

# CC and CXX have built-in defaults (cc, g++), so ?= alone would never apply.
ifeq ($(origin CC),default)
CC := gcc
endif
ifeq ($(origin CXX),default)
CXX := g++
endif
CC ?= gcc
CXX ?= g++
PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKG_CONFIG ?= pkg-config

VERSION := 0.1.0
SOMAJOR := 0

BUILD ?= build
SAN_FLAGS ?=

# -D_GNU_SOURCE= (empty) rather than -D_GNU_SOURCE (=1): a source file that
# says "#define _GNU_SOURCE" itself then repeats the same definition instead
# of redefining it, which -Werror would reject.
KV_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2 -g -fPIC -D_GNU_SOURCE= -Iinclude -Ilib
LIB_LIBS := -lxxhash -lpthread -lm
TEST_LIBS := -lcmocka $(LIB_LIBS)
ALL_CFLAGS = $(KV_CFLAGS) $(SAN_FLAGS) $(CPPFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(SAN_FLAGS) $(LDFLAGS)
DEPFLAGS = -MMD -MP -MF $@.d -MT $@

# ---- sources --------------------------------------------------------------

LIB_SRCS := $(wildcard lib/*.c)
LIB_OBJS := $(patsubst lib/%.c,$(BUILD)/obj/lib/%.o,$(LIB_SRCS))
STATIC_LIB := $(BUILD)/libkyrodb.a
SHARED_LIB := $(BUILD)/libkyrodb.so.$(VERSION)
SHARED_LINKS := $(BUILD)/libkyrodb.so.$(SOMAJOR) $(BUILD)/libkyrodb.so

TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
TEST_HDRS := $(wildcard tests/*.h)
# The tests ThreadSanitizer runs; a name that matches no file is skipped.
TSAN_TESTS := $(sort $(wildcard tests/test_*thread*.c tests/test_buffer.c tests/test_wal.c tests/test_db_threads.c tests/test_version.c))
TSAN_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TSAN_TESTS))

EXAMPLE_SRCS := $(wildcard examples/*.c)
EXAMPLE_BINS := $(patsubst examples/%.c,$(BUILD)/examples/%,$(EXAMPLE_SRCS))

SERVER_SRCS := $(wildcard examples/server/*.c)
SERVER_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(SERVER_SRCS))
SERVER_BIN := $(if $(SERVER_SRCS),$(BUILD)/kyrodb-server)
LIBEVENT_CFLAGS := $(shell $(PKG_CONFIG) --cflags libevent 2>/dev/null)
# The commit /build_info reports; "unknown" outside a git checkout.
GIT_COMMIT := $(or $(shell git rev-parse --short=12 HEAD 2>/dev/null),unknown)
LIBEVENT_LIBS := $(or $(shell $(PKG_CONFIG) --libs libevent 2>/dev/null),-levent)

CLI_SRCS := $(wildcard examples/cli/*.c)
CLI_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(CLI_SRCS))
CLI_BIN := $(if $(CLI_SRCS),$(BUILD)/kyro)

# Shell tests (tests/test_*.sh) run after the binaries in test-fast only, with
# no arguments, from the top directory; test_server.sh needs the server.
TEST_SCRIPTS := $(wildcard tests/test_*.sh)
ifeq ($(SERVER_SRCS),)
TEST_SCRIPTS := $(filter-out tests/test_server.sh,$(TEST_SCRIPTS))
endif

BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
BENCH_CXX_SRCS := $(wildcard bench/*.cc)
BENCH_CXX_BINS := $(patsubst bench/%.cc,$(BUILD)/bench/%,$(BENCH_CXX_SRCS))
COMPARE_LIBS := -llmdb -lrocksdb -lleveldb -lsqlite3
# What `make bench` runs, one program per entry, in order. Append with
# BENCH_RUN += $(BUILD)/bench/NAME; arguments for one program go in
# BENCH_ARGS_NAME (e.g. make bench BENCH_ARGS_kvbench='-n 500000').
BENCH_RUN := $(BUILD)/bench/kvbench $(BUILD)/bench/index_bench $(BUILD)/bench/compare \
	$(BUILD)/bench/getmany
# Every round's rate on compare's progress lines (stderr), so a run that
# misses a target shows which rounds were slow and on which CPU.
BENCH_ARGS_compare ?= --rounds

FUZZ_CC ?= clang
FUZZ_SECS ?= 60
FUZZ_DIR := build-fuzz
FUZZ_CFLAGS := -g -O1 -Wall -Wextra -D_GNU_SOURCE= -Iinclude -Ilib
FUZZ_SRCS := $(wildcard fuzz/*.c)
FUZZ_BINS := $(patsubst fuzz/%.c,$(FUZZ_DIR)/%,$(FUZZ_SRCS))
FUZZ_LIB_OBJS := $(patsubst lib/%.c,$(FUZZ_DIR)/obj/lib/%.o,$(LIB_SRCS))

# The header contract: the shared one next to the checkout, and the copy in
# tests/contract that a checkout elsewhere (a CI machine) still has.
SHARED_CONTRACT ?= ../shared/contract/signatures.c
CONTRACT := tests/contract/signatures.c
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
TSAN_FLAGS := -fsanitize=thread
# Seconds one test binary may run before it counts as failed (0: no limit).
TEST_TIMEOUT ?= 1800

.DEFAULT_GOAL := all
.DELETE_ON_ERROR:
.PHONY: all lib examples tests test test-fast test-asan test-tsan contract \
	run bench bench-build fuzz fuzz-run stress install uninstall clean \
	deps deps-build deps-bench deps-fuzz

# ---- library -------------------------------------------------------------

all: lib examples

lib: $(STATIC_LIB) $(SHARED_LIB) $(SHARED_LINKS)

$(BUILD)/obj/lib/%.o: lib/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(STATIC_LIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

$(SHARED_LIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,libkyrodb.so.$(SOMAJOR) -Wl,--no-undefined $(ALL_LDFLAGS) \
		-o $@ $^ $(LIB_LIBS)

$(BUILD)/libkyrodb.so.$(SOMAJOR): $(SHARED_LIB)
	ln -sf $(notdir $<) $@

$(BUILD)/libkyrodb.so: $(BUILD)/libkyrodb.so.$(SOMAJOR)
	ln -sf $(notdir $<) $@

# ---- examples, server, cli -----------------------------------------------

examples: $(EXAMPLE_BINS) $(SERVER_BIN) $(CLI_BIN)

$(BUILD)/examples/%: examples/%.c $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(DEPFLAGS) $(ALL_LDFLAGS) $< $(STATIC_LIB) $(LIB_LIBS) -o $@

$(BUILD)/obj/examples/server/%.o: examples/server/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Iexamples/server $(LIBEVENT_CFLAGS) \
		$(if $(filter main,$*),-DKYRODB_GIT_COMMIT='"$(GIT_COMMIT)"') $(DEPFLAGS) -c $< -o $@

$(BUILD)/kyrodb-server: $(SERVER_OBJS) $(STATIC_LIB)
	$(CC) $(ALL_LDFLAGS) $(SERVER_OBJS) $(STATIC_LIB) $(LIBEVENT_LIBS) $(LIB_LIBS) -o $@

$(BUILD)/obj/examples/cli/%.o: examples/cli/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Iexamples/cli $(DEPFLAGS) -c $< -o $@

$(BUILD)/kyro: $(CLI_OBJS) $(STATIC_LIB)
	$(CC) $(ALL_LDFLAGS) $(CLI_OBJS) $(STATIC_LIB) $(LIB_LIBS) -o $@

# ---- tests ---------------------------------------------------------------

tests: $(TEST_BINS)

$(BUILD)/tests/%: tests/%.c $(STATIC_LIB) $(TEST_HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Itests $(DEPFLAGS) $(ALL_LDFLAGS) $< $(STATIC_LIB) $(TEST_LIBS) -o $@

# $(call run_tests,BINARIES,ENVIRONMENT): one process per test binary, in
# order, stopping at the first failure (KEEP_GOING=1: run them all); then
# "N passed, N failed".
define run_tests
	@pass=0; fail=0; \
	for t in $(1); do \
		echo "== $$t"; \
		if env $(2) timeout --foreground $(TEST_TIMEOUT) $$t; then \
			pass=$$((pass + 1)); \
		else \
			rc=$$?; fail=$$((fail + 1)); \
			echo "FAILED: $$t (exit $$rc)"; [ -n "$(KEEP_GOING)" ] || break; \
		fi; \
	done; \
	echo "$$pass passed, $$fail failed"; \
	test $$fail -eq 0
endef

# The sub-makes below run with DEPS_DONE=1 so the packages are checked once.
test:
	@$(MAKE) --no-print-directory test-fast
	@$(MAKE) --no-print-directory test-asan DEPS_DONE=1
	@$(MAKE) --no-print-directory test-tsan DEPS_DONE=1

test-fast: deps-build
	@$(MAKE) --no-print-directory all tests
	@$(MAKE) --no-print-directory contract
	$(call run_tests,$(TEST_BINS) $(TEST_SCRIPTS),)

test-asan: deps-build
	@$(MAKE) --no-print-directory tests BUILD=build-asan SAN_FLAGS='$(ASAN_FLAGS)'
	@echo "== AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)"
	$(call run_tests,$(TEST_BINS:$(BUILD)/%=build-asan/%),KYRO_TEST_SCALE=small \
		ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1)

test-tsan: deps-build
	@$(MAKE) --no-print-directory $(TSAN_BINS:$(BUILD)/%=build-tsan/%) BUILD=build-tsan \
		SAN_FLAGS='$(TSAN_FLAGS)'
	@echo "== ThreadSanitizer (build-tsan/): $(notdir $(TSAN_BINS))"
	$(call run_tests,$(TSAN_BINS:$(BUILD)/%=build-tsan/%),KYRO_TEST_SCALE=small \
		TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1)

# Long runs of the SIGKILL crash test and the corruption trials (the same
# binaries as make test, more cycles and samples).
STRESS_CYCLES ?= 5000
STRESS_CORRUPT ?= 10
stress: TEST_TIMEOUT = 7200
stress: deps-build
	@$(MAKE) --no-print-directory $(BUILD)/tests/test_crash $(BUILD)/tests/test_corrupt
	$(call run_tests,$(BUILD)/tests/test_crash $(BUILD)/tests/test_corrupt,\
		KYRO_CRASH_CYCLES=$(STRESS_CYCLES) KYRO_CORRUPT_SCALE=$(STRESS_CORRUPT))

# The public header must compile cleanly on its own as C99 and C++11 and
# match the contract; the copy must equal the shared contract where that is
# present (a changed contract is copied in, never edited here).
$(BUILD)/header_check.c:
	@mkdir -p $(@D)
	printf '#include "kyro.h"\n#include "kyro.h"\nint kyro_header_check(void);\n' > $@
	printf 'int kyro_header_check(void) { return KV_OK; }\n' >> $@

contract: $(BUILD)/header_check.c
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -Iinclude -c $< -o /dev/null
	$(CXX) -std=c++11 -Wall -Wextra -pedantic -Werror -Iinclude -x c++ -c $< -o /dev/null
	@if [ -f $(SHARED_CONTRACT) ] && ! cmp -s $(SHARED_CONTRACT) $(CONTRACT); then \
		echo "contract: $(CONTRACT) differs from $(SHARED_CONTRACT); copy the shared one in"; \
		exit 1; \
	fi
	$(CC) -std=c99 -Wall -Wextra -pedantic -Werror -Iinclude -c $(CONTRACT) -o /dev/null
	$(CXX) -std=c++11 -Wall -Wextra -pedantic -Werror -Iinclude -x c++ -c $(CONTRACT) -o /dev/null

# ---- run -----------------------------------------------------------------

run: deps-build
	@$(MAKE) --no-print-directory all
ifneq ($(SERVER_SRCS),)
	exec $(BUILD)/kyrodb-server serve 127.0.0.1 3030 --data ./data
else
	$(BUILD)/examples/quickstart ./data
endif

# ---- benchmarks ----------------------------------------------------------

bench: deps-bench
	@$(MAKE) --no-print-directory bench-build DEPS_DONE=1
	$(foreach b,$(BENCH_RUN),$(b) $(BENCH_ARGS_$(notdir $(b)))$(newline))

bench-build: deps-bench
	@$(MAKE) --no-print-directory $(BENCH_BINS) $(BENCH_CXX_BINS)

$(BUILD)/bench/%: bench/%.c $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(DEPFLAGS) $(ALL_LDFLAGS) $< $(STATIC_LIB) \
		$(if $(filter compare,$*),$(COMPARE_LIBS)) $(LIB_LIBS) -o $@

$(BUILD)/bench/%: bench/%.cc $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Iinclude -Ilib $(SAN_FLAGS) $(CPPFLAGS) $(CXXFLAGS) \
		$(DEPFLAGS) $(ALL_LDFLAGS) $< $(STATIC_LIB) -lbenchmark -lpthread $(LIB_LIBS) -o $@

define newline


endef

# ---- fuzzing (clang + libFuzzer, the library compiled from source) -------

fuzz: deps-fuzz
	@$(MAKE) --no-print-directory $(FUZZ_BINS)

$(FUZZ_DIR)/obj/lib/%.o: lib/%.c
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer-no-link,address,undefined $(FUZZ_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(FUZZ_DIR)/%: fuzz/%.c $(FUZZ_LIB_OBJS)
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined $(FUZZ_CFLAGS) $(DEPFLAGS) $< $(FUZZ_LIB_OBJS) \
		$(LIB_LIBS) -o $@

# fuzz_json tests the example server's JSON code rather than the library.
$(FUZZ_DIR)/obj/examples/server/json.o: examples/server/json.c
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer-no-link,address,undefined $(FUZZ_CFLAGS) -Iexamples/server \
		$(LIBEVENT_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(FUZZ_DIR)/fuzz_json: fuzz/fuzz_json.c $(FUZZ_DIR)/obj/examples/server/json.o
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined $(FUZZ_CFLAGS) -Iexamples/server \
		$(LIBEVENT_CFLAGS) $(DEPFLAGS) $< $(FUZZ_DIR)/obj/examples/server/json.o \
		$(LIBEVENT_LIBS) -o $@

# New inputs go to build-fuzz/corpus/NAME; fuzz/corpus/NAME (the checked-in
# seeds) is only read. Crashes land in build-fuzz/artifacts/.
fuzz-run: fuzz
	@mkdir -p $(FUZZ_DIR)/artifacts
	@for f in $(FUZZ_BINS); do \
		n=$$(basename $$f); mkdir -p $(FUZZ_DIR)/corpus/$$n; \
		seeds=; [ -d fuzz/corpus/$$n ] && seeds=fuzz/corpus/$$n; \
		echo "== $$n: $(FUZZ_SECS)s"; \
		$$f -max_total_time=$(FUZZ_SECS) -print_final_stats=1 \
			-artifact_prefix=$(FUZZ_DIR)/artifacts/$$n- $(FUZZ_DIR)/corpus/$$n $$seeds || exit 1; \
	done

# ---- install -------------------------------------------------------------

$(BUILD)/kyrodb.pc: kyrodb.pc.in
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

# The .pc bakes in PREFIX; rebuild it on every install so it matches.
.PHONY: $(BUILD)/kyrodb.pc

install: lib $(BUILD)/kyrodb.pc
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 644 include/*.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 644 $(STATIC_LIB) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED_LIB) $(DESTDIR)$(LIBDIR)/
	ln -sf libkyrodb.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libkyrodb.so.$(SOMAJOR)
	ln -sf libkyrodb.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/libkyrodb.so
	install -m 644 $(BUILD)/kyrodb.pc $(DESTDIR)$(LIBDIR)/pkgconfig/

uninstall:
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/,$(notdir $(wildcard include/*.h)))
	rm -f $(DESTDIR)$(LIBDIR)/libkyrodb.a $(DESTDIR)$(LIBDIR)/libkyrodb.so.$(VERSION) \
		$(DESTDIR)$(LIBDIR)/libkyrodb.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/libkyrodb.so \
		$(DESTDIR)$(LIBDIR)/pkgconfig/kyrodb.pc

# ---- packages ------------------------------------------------------------

deps: deps-build

deps-build deps-bench deps-fuzz:
	@[ -n "$(DEPS_DONE)" ] || bash scripts/deps.sh $(@:deps-%=%)

clean:
	rm -rf build build-asan build-tsan $(FUZZ_DIR)
ifneq ($(filter-out build build-asan build-tsan,$(BUILD)),)
	rm -rf $(BUILD)
endif

-include $(wildcard $(BUILD)/obj/lib/*.d $(BUILD)/obj/examples/*/*.d $(BUILD)/*/*.d \
	$(FUZZ_DIR)/obj/lib/*.d $(FUZZ_DIR)/obj/examples/*/*.d $(FUZZ_DIR)/*.d)
