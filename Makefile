# The two entry points. Both work on a fresh Debian machine.
#   make demo   set up, then run a command in a fresh VM
#   make test   set up, then format check, lints and every test
# And:
#   make bench  set up, then measure boot, lifecycle, hot-plug, memory and
#               density (table on stdout, bench-out/bench.json and .svg)
#   make soak   SOAK_N (200) mixed lifecycles, a third with a kill -9;
#               SOAK_SEED replays a run
#   make fuzz   every fuzz target for FUZZ_SECONDS (600) each (nightly,
#               cargo-fuzz; setup installs them)

.PHONY: demo test bench setup lint check-fmt soak fuzz

SOAK_N ?= 200
FUZZ_SECONDS ?= 600

demo: setup
	target/release/sandvisor run -- uname -a

bench: setup
	target/release/sandvisor bench --out bench-out

test: setup lint
	cargo nextest run --workspace --profile ci
	cargo test --workspace --doc

setup:
	scripts/setup.sh

# Not under nextest: 200 lifecycles outlast its per-test timeout. Cloud
# Hypervisor and Firecracker come from SANDVISOR_VMM_DIR, else from where
# setup installs them.
soak: setup
	SANDVISOR_VMM_DIR=$${SANDVISOR_VMM_DIR:-$${SANDVISOR_BIN_DIR:-/usr/local/bin}} \
	SOAK_N=$(SOAK_N) cargo test -p sandvisor-cli --test vm_soak -- --nocapture

fuzz:
	SANDVISOR_FUZZ=1 scripts/setup.sh
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

lint: check-fmt
	cargo clippy --workspace --all-targets -- -D warnings

check-fmt:
	cargo fmt --all --check
