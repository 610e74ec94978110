#!/usr/bin/env bash
# The end-to-end benchmark: privacy-router on Apache Kafka on this machine.
#
#   bash scripts/bench-e2e.sh                      # Kafka, 200,000 events, every phase
#   bash scripts/bench-e2e.sh --events 500000 --phases throughput
#
# Phases: throughput (privacy-router against a passthrough with the same
# client settings and guarantee), latency (p99 at --rate events/s), memory
# (resident memory while tracking ~1,000,000 entities). Each phase starts a
# one-node Kafka of its own (scripts/kafka.sh, jars from Maven Central) and
# stops it at the end. Results are printed and written to
# target/bench-e2e.json.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin privacy-router
cargo bench --bench e2e -- "$@"
