#!/usr/bin/env bash
# Runs every test of privacy-router: the README's test command.
#
#   bash scripts/test.sh
#
# Unit, property and broker-free pipeline tests, the CLI tests, the benchmark
# in test mode (each benchmark once), and the README's main command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo build (release)"
cargo build --release --all-targets

echo "== the README's main command"
PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production cargo run --release --quiet -- replay --out target/readme-replay
test -s target/readme-replay/public.jsonl
test -s target/readme-replay/dead-letter.jsonl

echo "== cargo test (release, all targets)"
cargo test --release --all-targets
