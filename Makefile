# hvprobe: a thin wrapper over cargo. `make run` runs the suite on this host;
# `make test` runs every test. Both install what they need first (`make setup`).
CARGO ?= cargo
GUEST_TARGET := x86_64-unknown-none
# Extra arguments for `hvprobe run`, e.g. make run ARGS="--filter irq::"
ARGS ?=

.PHONY: all setup build test run lint fmt host list clean

all: build

# RUSTUP_AUTO_INSTALL=0 on our machines: the guest target and the lint components are
# installed explicitly, and only when missing.
setup:
	@rustup target list --installed | grep -qx '$(GUEST_TARGET)' || rustup target add $(GUEST_TARGET)
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy

build: setup
	$(CARGO) build --release

# Unit tests of every crate, the CLI tests, and every guest case as its own trial.
test: setup
	$(CARGO) test --workspace

# Runs the whole suite on this host, prints the report, writes results/runs/*.json.
run: setup
	$(CARGO) run --release --quiet -p hvprobe-suites --bin hvprobe -- run $(ARGS)

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
