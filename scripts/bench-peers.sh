#!/usr/bin/env bash
# privacy-router side by side with the same job in Kafka Streams and Quix
# Streams, and with the Rust passthroughs, on one Apache Kafka broker:
#
#   bash scripts/bench-peers.sh                         # 200,000 events, a warm-up round, 3 rounds, both guarantees
#   bash scripts/bench-peers.sh --events 50000 --rounds 1 --guarantees exactly_once
#   bash scripts/bench-peers.sh --only privacy-router-json,kafka-streams
#
# It builds privacy-router (release), the Kafka Streams peer (Maven, jars
# from Maven Central) and the Quix peer (a virtualenv under target/, from
# PyPI), then runs benches/peers.rs: a one-node Kafka of its own
# (scripts/kafka.sh), the same events loaded once as JSON and as Avro,
# every implementation in turn under each guarantee, round after round.
# Results: target/bench-peers.json, the table in docs/benchmarks.md, and a
# last line
#
#   bench-peers: vs-kafka-streams=X.XX vs-quix=Y.YY cpu-vs-fanout=Z.ZZ
#
# (exactly-once: privacy-router JSON events/s over Kafka Streams' and over
# Quix's; privacy-router Avro CPU per event over the Rust fan-out's).
set -euo pipefail
cd "$(dirname "$0")/.."

# The builds first, timed apart: a clean one takes minutes, and is no
# part of any measurement.
started=$SECONDS
cargo build --release --bin privacy-router
bash benches/peers/kafka-streams/run.sh --build-only
bash benches/peers/quix/run.sh --build-only
cargo bench --bench peers --no-run
echo "== builds: $((SECONDS - started)) s; the measurements start now" >&2
cargo bench --bench peers -- "$@"
