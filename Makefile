# playbook-guard: the verbs a user types (`make` alone, or `make help`, prints them).
#   make run        build, start Envoy with the filter before a demo upstream, print curl lines
#   make test       every test: core (native, wasmtime, V8), CLI, harness, end-to-end in real Envoy
#   make build      the filter's .wasm (build/playbook_guard.wasm), its native build (an Envoy dynamic
#                   module, build/libplaybook_guard_native.so), the CLI, the validation stand-in
#   make bench      the core's decision time (native, V8), instructions per request (and per callback
#                   beside the Wasm floor), requests/s and latency in Envoy of both builds against
#                   no filter, jwt_authn + rbac and each build's floor, drawn as build/bench.svg
#   make fuzz       a million randomised requests through the core, 20,000 simulated schedules
#                   of the protocol across workers, then each libFuzzer target (the core's, then
#                   the native build's binding layer's)
#   make soak       ten minutes of mixed traffic through Envoy, policy republished, a flaky service
#   make lint       cargo fmt --check, clippy with warnings as errors (native, wasm, fuzz targets)
#   make unit       every workspace crate's tests, natively (the harness builds the .wasm itself)
#   make wasm-unit  the core's unit tests compiled to wasm32-wasip1, run under wasmtime
#   make v8-unit    the core's tests compiled to wasm32-unknown-unknown, run in V8 (Node.js)
#   make e2e        the end-to-end tests: pytest against real Envoy with the built filter
#   make clean      remove build outputs
#   make help       this list

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
WASM      := build/playbook_guard.wasm
RAW_WASM  := target/wasm32-wasip1/release/playbook_guard.wasm
# The Wasm floor (bench/floor) that `make bench` measures the filter against.
FLOOR     := build/playbook_guard_floor.wasm
RAW_FLOOR := target/wasm32-wasip1/release/playbook_guard_floor.wasm
# The native build (filter/native): an Envoy dynamic module for the pinned Envoy only.
NATIVE     := build/libplaybook_guard_native.so
RAW_NATIVE := $(or $(CARGO_TARGET_DIR),target)/release-native/libplaybook_guard_native.so
# The dynamic-module floor (filter/native built with its `floor` feature) that `make bench`
# measures the native build against: same file name, so a directory (and target directory) of its
# own, which keeps it from ever replacing the product's module.
NATIVE_FLOOR     := build/native-floor/libplaybook_guard_native.so
NATIVE_FLOOR_DIR := $(or $(CARGO_TARGET_DIR),target)/native-floor
RAW_NATIVE_FLOOR := $(NATIVE_FLOOR_DIR)/release-native/libplaybook_guard_native.so
CLI       := target/debug/playbook-guard
STANDIN   := target/debug/validation-service
WASM_OPT  := build/tools/node_modules/.bin/wasm-opt
WASM_OPT_FLAGS := -Oz --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext \
                  --enable-nontrapping-float-to-int --enable-mutable-globals

# wasm-bindgen-test-runner must be the version of the wasm-bindgen crate in Cargo.lock (it
# refuses any other); it is installed under a directory named for that version, so a bump of the
# lock installs the new one beside the old.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"$$/\1/p;}' Cargo.lock)
WASM_BINDGEN_ROOT    := build/tools/wasm-bindgen-$(WASM_BINDGEN_VERSION)
WASM_BINDGEN_RUNNER  := $(WASM_BINDGEN_ROOT)/bin/wasm-bindgen-test-runner

.PHONY: help run test build clean lint unit wasm-unit v8-unit e2e venv toolchain node bench fuzz fuzz-tools soak postgres

# The verbs are listed once, in the header comment above; this prints it.
help:
	@sed -n '/^$$/q; s/^#   //p' $(firstword $(MAKEFILE_LIST))

run: build venv
	$(PY) envoy/run_local.py

test: build venv lint unit wasm-unit v8-unit e2e

build: toolchain $(WASM) $(NATIVE) $(CLI) $(STANDIN)

# rust-toolchain.toml names the targets; adding them explicitly covers rustup versions that do
# not install a pinned toolchain's targets on their own.
toolchain:
	@for t in wasm32-wasip1 wasm32-unknown-unknown; do \
	    rustup target add $$t >/dev/null 2>&1 || rustup target list --installed | grep -q $$t || exit 1; done

# Cargo decides what is stale, so it is always asked; it leaves an up-to-date artifact (and its
# timestamp) alone, which is what lets the rule for $(WASM) compare timestamps.
.PHONY: wasm-cargo floor-cargo $(CLI) $(STANDIN)
wasm-cargo:
	cargo build -p playbook-guard --target wasm32-wasip1 --release
$(RAW_WASM): wasm-cargo ;
floor-cargo:
	cargo build -p playbook-guard-floor --target wasm32-wasip1 --release
$(RAW_FLOOR): floor-cargo ;
# The release-native profile is the release profile with `panic = "unwind"` (Cargo.toml says why).
.PHONY: native-cargo
native-cargo:
	cargo build -p playbook-guard-native --profile release-native
$(RAW_NATIVE): native-cargo ;
$(NATIVE): $(RAW_NATIVE)
	@mkdir -p build
	cp $(RAW_NATIVE) $(NATIVE)
.PHONY: native-floor-cargo
native-floor-cargo:
	cargo build -p playbook-guard-native --profile release-native --features floor --target-dir $(NATIVE_FLOOR_DIR)
$(RAW_NATIVE_FLOOR): native-floor-cargo ;
$(NATIVE_FLOOR): $(RAW_NATIVE_FLOOR)
	@mkdir -p $(dir $(NATIVE_FLOOR))
	cp $(RAW_NATIVE_FLOOR) $(NATIVE_FLOOR)

$(CLI):
	cargo build -p playbook-guard-cli

# The validation-service stand-in (NoETL's session-validation API) for make run and e2e.
$(STANDIN):
	cargo build -p playbook-guard-test-harness --bin validation-service

# wasm-opt (Binaryen, from the npm registry) shrinks the module by about a fifth, in about a
# minute: it runs only when the raw module is newer than the optimised one (or wasm-opt has just
# been installed). Without Node.js the unoptimised module is used as it is.
$(WASM): $(RAW_WASM) $(WASM_OPT)
	$(call wasm_opt,$(RAW_WASM),$(WASM))

# The floor goes through the same release profile and the same wasm-opt step as the filter, so
# the bench compares two modules built alike.
$(FLOOR): $(RAW_FLOOR) $(WASM_OPT)
	$(call wasm_opt,$(RAW_FLOOR),$(FLOOR))

# $(call wasm_opt,raw module,optimised module)
define wasm_opt
	@mkdir -p build
	@if [ -x $(WASM_OPT) ]; then \
	    echo "wasm-opt $(1)"; \
	    $(WASM_OPT) $(WASM_OPT_FLAGS) $(1) -o $(2).tmp && mv $(2).tmp $(2); \
	else echo "note: wasm-opt unavailable (no npm); using the unoptimised module"; cp $(1) $(2); fi
	@echo "built $(2): $$(stat -c %s $(2)) bytes"
endef

# Installed only when missing. Without npm there is none, so $(WASM) is copied from the raw
# module on every build (a copy, not a minute of wasm-opt).
$(WASM_OPT):
	@if command -v npm >/dev/null; then \
	    npm install --silent --no-audit --no-fund --prefix build/tools binaryen@132 >/dev/null; fi

# pip checks each download against the index's sha256. A download that arrives damaged (seen
# once on a CI machine: a wheel whose hash did not match) fails the install, so it is tried three
# times, each time fetched anew rather than from pip's cache. The versions of everything the tests
# install, down to the dependencies of dependencies, are pinned in constraints.txt: they run against
# the set they were written against.
define pip_install
	@for attempt in 1 2 3; do \
	    $(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir \
	        -c test-harness/e2e/constraints.txt -r $(1) && exit 0; \
	    echo "pip install -r $(1): attempt $$attempt failed"; sleep $$((attempt * 5)); \
	done; exit 1
endef

venv: $(VENV)/.installed
$(VENV)/.installed: test-harness/e2e/requirements.txt test-harness/e2e/constraints.txt
	python3 -m venv $(VENV)
	$(call pip_install,test-harness/e2e/requirements.txt)
	touch $@

# PostgreSQL, for the tests of import-noetl and sync-noetl (each starts its own server with initdb
# and pg_ctl in a temporary folder, on a free port, and stops it). Debian's package postgresql is
# installed with apt-get only when initdb is neither on PATH nor under /usr/lib/postgresql/*/bin,
# and only as root; otherwise a missing initdb stops here with a message.
postgres:
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	    if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing postgresql (apt-get)"; \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get install -y postgresql >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y postgresql >/dev/null; }; \
	    else echo "PostgreSQL's initdb is missing: install Debian's package postgresql (the import-noetl tests need it)" >&2; \
	        exit 1; fi; fi

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo clippy --manifest-path $(FUZZ_DIR)/Cargo.toml --quiet -- -D warnings
	cargo clippy --manifest-path $(NATIVE_FUZZ_DIR)/Cargo.toml --quiet -- -D warnings
	cargo clippy -p playbook-guard -p playbook-guard-floor --target wasm32-wasip1 --quiet -- -D warnings
	cargo clippy -p playbook-guard-native --features floor --quiet -- -D warnings
	cargo clippy -p playbook-guard-core --target wasm32-unknown-unknown --all-targets --quiet -- -D warnings
	@# The core's test fixtures are for tests only: the filter must never enable them.
	@if cargo tree -p playbook-guard --target wasm32-wasip1 -e features -i playbook-guard-core 2>/dev/null \
	    | grep -q 'playbook-guard-core feature "testing"'; then \
	    echo "the filter enables the core's 'testing' feature (test fixtures); only dev-dependencies may"; exit 1; fi

unit: postgres
	cargo test --workspace

# The core's tests compiled to wasm32-wasip1 and run under wasmtime, as the filter runs in Envoy.
wasm-unit: venv
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(CURDIR)/$(PY) $(CURDIR)/test-harness/e2e/wasi_run.py" \
	    cargo test -p playbook-guard-core --target wasm32-wasip1

# The core's tests compiled to wasm32-unknown-unknown and run by wasm-bindgen-test in Node.js,
# which is V8, the engine Envoy runs the filter in. The runner is cargo's target runner.
v8-unit: toolchain node $(WASM_BINDGEN_RUNNER)
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$(CURDIR)/$(WASM_BINDGEN_RUNNER)" \
	    cargo test -p playbook-guard-core --target wasm32-unknown-unknown

# Node.js from Debian's packages, only when `node` is missing, and only as root (as CI runs);
# never sudo. Otherwise the message says what to install.
node:
	@command -v node >/dev/null || { \
	    if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing nodejs (apt-get)"; \
	        apt-get install -y nodejs >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y nodejs >/dev/null; }; \
	    fi; command -v node >/dev/null || { echo "make v8-unit needs Node.js: install Debian's package nodejs"; exit 1; }; }

# Built from source once (a few minutes on two cores) and kept under build/, as CI caches it.
# `--locked` takes the versions that wasm-bindgen released it with; a registry that lacks one of
# them gets the newest compatible ones instead.
$(WASM_BINDGEN_RUNNER):
	@test -n "$(WASM_BINDGEN_VERSION)" || { echo "no wasm-bindgen in Cargo.lock"; exit 1; }
	cargo install --quiet --locked wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --root $(WASM_BINDGEN_ROOT) \
	    || cargo install --quiet wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --root $(WASM_BINDGEN_ROOT)

# The floors too: test_bench_configs.py checks that every configuration of `make bench` answers.
e2e: build $(FLOOR) $(NATIVE_FLOOR) venv postgres
	PLAYBOOK_GUARD_WASM=$(CURDIR)/$(WASM) PLAYBOOK_GUARD_NATIVE=$(CURDIR)/$(NATIVE) \
	    PLAYBOOK_GUARD_NATIVE_FLOOR=$(CURDIR)/$(NATIVE_FLOOR) \
	    PLAYBOOK_GUARD_CLI=$(CURDIR)/$(CLI) PLAYBOOK_GUARD_VALIDATION_SERVICE=$(CURDIR)/$(STANDIN) \
	    $(PY) -m pytest -q test-harness/e2e

# Performance: wasm instructions per request through the real filter (deterministic), by path and,
# for the session-cache hit, callback by callback beside the Wasm floor (bench/floor); then
# requests/s and latency through real Envoy in four configurations in one run: no filter, Envoy's
# jwt_authn + rbac, the floor, the filter on the session-cache-hit path (test-harness/e2e/
# bench_envoy.py; load from wrk; Envoy and wrk pinned to a core each with taskset), written to
# build/bench.json and drawn as build/bench.svg (bench-plot); then the same four configurations'
# instructions per request through real Envoy under Valgrind's callgrind (deterministic where
# req/s is not; test-harness/e2e/bench_envoy_instructions.py, build/bench-instructions.json).
# Never sudo: a missing wrk or valgrind is installed with apt-get only when running as root;
# otherwise that part is skipped, saying so.
#
# First, the core's decision alone, natively and in V8 (filter/core/tests/decision_time.rs, release
# builds, microseconds per request): what the engine costs, apart from Envoy and the ABI.
#
# BENCH_ARGS go to bench_envoy.py (default: 3 rounds of 8 s each), e.g. BENCH_ARGS="--duration 3 --rounds 1".
BENCH_ARGS ?=
# Installs Debian's package $(1) with apt-get if the command of that name is missing and make runs
# as root; never sudo.
define install_if_root
@if ! command -v $(1) >/dev/null && [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
    echo "installing $(1) (apt-get)"; \
    apt-get install -y $(1) >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y $(1) >/dev/null; } \
        || echo "apt-get could not install $(1)"; fi
endef
bench: build $(FLOOR) $(NATIVE_FLOOR) venv node $(WASM_BINDGEN_RUNNER)
	cargo test --release -p playbook-guard-core --test decision_time -- --include-ignored --nocapture
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$(CURDIR)/$(WASM_BINDGEN_RUNNER)" \
	    cargo test --release -p playbook-guard-core --target wasm32-unknown-unknown --test decision_time \
	    -- --include-ignored --nocapture
	cargo bench -p playbook-guard-test-harness --bench instructions
	$(call install_if_root,wrk)
	@if command -v wrk >/dev/null; then \
	    PLAYBOOK_GUARD_WASM=$(CURDIR)/$(WASM) PLAYBOOK_GUARD_FLOOR_WASM=$(CURDIR)/$(FLOOR) \
	    PLAYBOOK_GUARD_NATIVE=$(CURDIR)/$(NATIVE) PLAYBOOK_GUARD_NATIVE_FLOOR=$(CURDIR)/$(NATIVE_FLOOR) \
	    PLAYBOOK_GUARD_CLI=$(CURDIR)/$(CLI) PLAYBOOK_GUARD_VALIDATION_SERVICE=$(CURDIR)/$(STANDIN) \
	    $(PY) test-harness/e2e/bench_envoy.py $(BENCH_ARGS) --output build/bench.json \
	    && cargo run --quiet -p playbook-guard-bench-plot -- --input build/bench.json --output build/bench.svg; \
	else echo "skipping requests/s through Envoy: wrk is not installed (it is Debian's package wrk;" \
	    "make bench installs it only when run as root)"; fi
	$(call install_if_root,valgrind)
	@if command -v valgrind >/dev/null; then \
	    PLAYBOOK_GUARD_WASM=$(CURDIR)/$(WASM) PLAYBOOK_GUARD_FLOOR_WASM=$(CURDIR)/$(FLOOR) \
	    PLAYBOOK_GUARD_NATIVE=$(CURDIR)/$(NATIVE) PLAYBOOK_GUARD_NATIVE_FLOOR=$(CURDIR)/$(NATIVE_FLOOR) \
	    PLAYBOOK_GUARD_CLI=$(CURDIR)/$(CLI) PLAYBOOK_GUARD_VALIDATION_SERVICE=$(CURDIR)/$(STANDIN) \
	    $(PY) test-harness/e2e/bench_envoy_instructions.py --native --output build/bench-instructions.json; \
	else echo "skipping instructions per request through Envoy: valgrind is not installed (Debian's" \
	    "package valgrind; make bench installs it only when run as root)"; fi

# A long randomised run of the core: nothing panics, and a token that is not byte-for-byte the
# signed one never gets through (filter/core/tests/robustness.rs; `make test` runs 3000 cases).
#
# Then coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the parsers a hostile client reaches:
# each target in filter/core/fuzz/fuzz_targets for FUZZ_SECONDS, from the committed seeds; what
# it finds goes to build/fuzz/<target>, and a crash stops the run with the input that caused it.
# No sanitizer: the core forbids unsafe code, so the oracle is panics and the targets' asserts.
FUZZ_DIR     := filter/core/fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := request token path body validation_answer lookup_answer catalog_yaml header_map
# Then the native build's binding layer (filter/native/src/convert.rs): what it makes of the
# configuration's bytes, Envoy's header arrays and a callout's answer. Its finds go to
# build/fuzz/native/<target>. The unsafe readers of raw pointers are under test here, but every
# pointer a target passes is valid by construction, so panics and asserts stay the oracle.
NATIVE_FUZZ_DIR     := filter/native/fuzz
NATIVE_FUZZ_TARGETS := config headers callout_answer
fuzz: fuzz-tools
	PLAYBOOK_GUARD_FUZZ_ITERS=$${PLAYBOOK_GUARD_FUZZ_ITERS:-1000000} \
	    cargo test --release -p playbook-guard-core --test robustness -- --nocapture
	PLAYBOOK_GUARD_SIM_SEEDS=$${PLAYBOOK_GUARD_SIM_SEEDS:-20000} \
	    cargo test --release -p playbook-guard-core --lib protocol::simulation -- --nocapture
	@for t in $(FUZZ_TARGETS); do $(call fuzz_one,$(FUZZ_DIR),$$t,build/fuzz/$$t); done
	@for t in $(NATIVE_FUZZ_TARGETS); do $(call fuzz_one,$(NATIVE_FUZZ_DIR),$$t,build/fuzz/native/$$t); done

# $(call fuzz_one,fuzz crate,target,corpus directory): one target for FUZZ_SECONDS from its seeds;
# a crash stops make with the input that caused it.
define fuzz_one
mkdir -p $(3); \
	    echo "== $(2) ($(FUZZ_SECONDS) s)"; \
	    cargo fuzz run --fuzz-dir $(1) --sanitizer none --debug-assertions $(2) \
	        $(3) $(1)/seeds/$(2) -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        2>&1 | grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|==|thread|panicked|SUMMARY|.*Test unit written)' \
	        ; test $${PIPESTATUS[0]} -eq 0 || exit 1
endef

# cargo-fuzz, pinned, installed with cargo; it drives the pinned stable toolchain (no sanitizer flags).
fuzz-tools:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

# Not part of `make test`: SOAK_SECONDS (default 600) of mixed traffic through real Envoy with two
# workers, checked against an oracle; prints crashes, wrong decisions, the memory slope and
# callouts per session per TTL, writes build/soak.svg, and fails on a crash or a wrong decision.
soak: build venv
	$(call pip_install,test-harness/e2e/requirements-soak.txt)
	PLAYBOOK_GUARD_WASM=$(CURDIR)/$(WASM) PLAYBOOK_GUARD_CLI=$(CURDIR)/$(CLI) \
	    PLAYBOOK_GUARD_VALIDATION_SERVICE=$(CURDIR)/$(STANDIN) $(PY) test-harness/e2e/soak.py

clean:
	cargo clean
	rm -rf build
