#!/usr/bin/env bash
# The NATS JetStream benchmark: privacy-router reading a JetStream stream
# (input.nats_jetstream) into the tier topics of Apache Kafka on this machine.
#
#   bash scripts/bench-nats.sh                          # 100,000 events; 1,000 events/s for 30 s
#   bash scripts/bench-nats.sh --events 300000 --rate 2000 --latency-secs 60
#   bash scripts/bench-nats.sh --phases latency
#
# It builds the processor (release) and runs benches/nats.rs, which starts a
# one-node Kafka of its own (scripts/kafka.sh, jars from Maven Central) and a
# NATS server with JetStream in target/bench-nats (scripts/nats.sh, Debian's
# nats-server; its store is emptied first), and stops both at the end.
# Phases: throughput (N events published before the processor starts, timed
# until the commit that covers the last; CPU seconds and peak RSS of the
# processor) and latency (events published at a steady rate; publish →
# committed restricted output, p50/p95/p99/max). Results are printed and
# written to target/bench-nats.json; the last line is
#
#   bench-nats: throughput=NNNNN events/s p95=NN ms
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin privacy-router
cargo bench --bench nats -- "$@"
