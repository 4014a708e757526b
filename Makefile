# hvprobe: a thin wrapper over cargo. `make run` runs the suite on this host;
# `make test` runs every test. Both install what they need first (`make setup`).
CARGO ?= cargo
GUEST_TARGET := x86_64-unknown-none
# Extra arguments for `hvprobe run` (or `hvprobe bench`), e.g. make run ARGS="--filter irq::"
ARGS ?=
# `make run` measures the benchmarks too; `make run BENCH=` leaves them out.
BENCH ?= --bench

.PHONY: all setup setup-browser build test run run-nested peer-vmexit bench bench-criterion report lint fmt host list clean fuzz fuzz-smoke

all: build

# RUSTUP_AUTO_INSTALL=0 on our machines: the guest target and the lint components are
# installed explicitly, and only when missing.
setup:
	@rustup target list --installed | grep -qx '$(GUEST_TARGET)' || rustup target add $(GUEST_TARGET)
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy

# The dashboard's browser test loads the site in Debian's headless Chromium.
setup-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	    echo "installing Debian's chromium for the dashboard browser test"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

build: setup
	$(CARGO) build --release

# Unit tests of every crate, the CLI tests, and every guest case as its own trial; then
# the guest/host ABI's own tests, on the host (its workspace builds for bare metal).
test: setup setup-browser
	$(CARGO) test --workspace
	cd guest-payloads && $(CARGO) test -p hvprobe-abi --target x86_64-unknown-linux-gnu --target-dir ../target/guest-host

# Coverage-guided fuzzing of every parser of outside input (AFL++ through cargo-afl, which
# it installs once): 10 million executions per target; the grown corpora land in
# suites/fuzz/corpus/ to be committed. FUZZ_ARGS="--seconds 60 results" for one target.
FUZZ_ARGS ?=
fuzz: setup
	suites/fuzz/run.sh $(FUZZ_ARGS)

# CI's short form: 5 seconds per target, the committed corpora left as they are.
fuzz-smoke: setup
	suites/fuzz/run.sh --seconds 5 --keep-corpus

# Runs the whole suite and the benchmarks on this host, prints the report, writes
# results/runs/*.json: the nightly job.
run: setup
	$(CARGO) run --release --quiet -p hvprobe-suites --bin hvprobe -- run $(BENCH) $(ARGS)

# The second backend: the suite inside a Linux guest under QEMU TCG with an emulated AMD
# SVM CPU, against that guest's kvm_amd; writes results/runs/*-nested-kvm_amd.json, e.g.
# make run-nested ARGS="--filter cpu::". Fetches Debian's kernel into target/nested once;
# NESTED_TIMEOUT, NESTED_STALL, NESTED_RETRIES... are in suites/nested/run-nested.sh.
run-nested: build
	bash suites/nested/run-nested.sh $(ARGS)

# kvm-unit-tests' x86/vmexit beside hvprobe's matching benchmarks on this host (builds
# kvm-unit-tests into target/peer once; needs qemu-system-x86 and gcc). See
# suites/peer/vmexit.sh for KUT_SRC, KUT_GIT, QEMU and PEER_TIMEOUT.
peer-vmexit: build
	bash suites/peer/vmexit.sh

# The benchmarks alone, e.g. make bench ARGS="--filter ioeventfd --samples 30".
bench: setup
	$(CARGO) run --release --quiet -p hvprobe-suites --bin hvprobe -- bench $(ARGS)

# The benchmarks under criterion, e.g. make bench-criterion ARGS="--save-baseline main",
# then ARGS="--baseline main" to compare with it.
bench-criterion: setup
	$(CARGO) bench -p hvprobe-suites --bench guest -- $(ARGS)

# The dashboard of every run kept in results/runs/, for the nightly job.
report: setup
	$(CARGO) run --release --quiet -p hvprobe-suites --bin hvprobe -- report results/runs --out target/dashboard

host: setup
	$(CARGO) run --release --quiet -p hvprobe-suites --bin hvprobe -- host

list: setup
	$(CARGO) run --release --quiet -p hvprobe-suites --bin hvprobe -- list

lint: setup
	$(CARGO) fmt --all --check
	cd guest-payloads && $(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd guest-payloads && $(CARGO) clippy --release --target-dir ../target/guest -- -D warnings

fmt: setup
	$(CARGO) fmt --all
	cd guest-payloads && $(CARGO) fmt --all

clean:
	$(CARGO) clean
