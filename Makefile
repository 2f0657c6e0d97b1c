# swarmd / swarmctl — see BUILDING.md for prerequisites and layout.
CARGO ?= cargo

.PHONY: all build release demo test check fix bench clean

all: build

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

# Starts a manager in a temp dir, drives it with swarmctl, stops it (README.md).
demo: build
	bash scripts/demo.sh target/debug

# Every test: unit, store/raft persistence, control API, and the real binaries in tests/.
test:
	@command -v cargo-nextest >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked
	$(CARGO) nextest run --workspace --lib --bins --tests --no-fail-fast

# Read-only checks: formatting and lints.
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fix:
	$(CARGO) fmt --all
	$(CARGO) clippy --workspace --all-targets --fix --allow-dirty -- -D warnings

# Control API throughput/latency and raft commit rate vs raw fsync rate; scheduler throughput and
# peak memory on SwarmKit's benchmark shapes; the dispatcher with 1000 hollow nodes running a
# 10000-replica service (figures printed). With SWARMKIT_REF_BIN set, control_api and dispatcher
# measure SwarmKit's swarmd in the same run and print ratios against the targets (BUILDING.md).
bench:
	$(CARGO) bench --bench control_api
	$(CARGO) bench -p scheduler --bench scheduler
	$(CARGO) bench --bench dispatcher

clean:
	$(CARGO) clean
