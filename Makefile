# The two entry points. Both work on a fresh Debian machine.
#   make demo   set up, then run a command in a fresh VM
#   make test   set up, then format check, lints and every test
# And:
#   make bench  set up, then measure boot, lifecycle, hot-plug, memory and
#               density (table on stdout, bench-out/bench.json and .svg)

.PHONY: demo test bench setup lint check-fmt

demo: setup
	target/release/sandvisor run -- uname -a

bench: setup
	target/release/sandvisor bench --out bench-out

test: setup lint
	cargo nextest run --workspace --profile ci
	cargo test --workspace --doc

setup:
	scripts/setup.sh

lint: check-fmt
	cargo clippy --workspace --all-targets -- -D warnings

check-fmt:
	cargo fmt --all --check
