#!/usr/bin/env bash
# Runs every test of privacy-router: the README's test command.
#
#   bash scripts/test.sh
#
# Installs and starts what the tests need, and stops it at the end:
# * Apache Kafka 4.4.0 (KRaft, one node; jars from Maven Central through
#   tools/kafka/pom.xml, see scripts/kafka.sh) — the broker of every broker
#   test (tests that kill brokers, need three of them or TLS/SASL start
#   clusters of their own with the same script);
# * Apicurio Registry 3.3.3 (Confluent-compatible API, from Maven Central,
#   see scripts/registry.sh) — a real schema registry beside the stand-in;
# * Debian's nats-server (2.9.10, JetStream on, see scripts/nats.sh) — the
#   server of the NATS JetStream source's tests;
# * Debian's docker-compose, to check docker-compose.yml without an engine;
# * Debian's prometheus, for `promtool check rules deploy/alerts.yml`.
# Then: formatting, the release build, the README's main command (the
# embedded demo), and every test target: unit, property and broker-free
# pipeline tests, the CLI, README and inspection tests, the compose file
# check, the fuzz corpus, the broker tests on Kafka (one at a time, see
# `serial` in tests/support: each runs processors, feeders and readers on
# this machine's two cores), and the benchmarks in test mode (each once).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KAFKA_DIR="$ROOT/target/test-kafka"
REGISTRY_DIR="$ROOT/target/test-registry"
NATS_DIR="$ROOT/target/test-nats"
stop_servers() {
  bash scripts/kafka.sh stop --dir "$KAFKA_DIR" > /dev/null 2>&1 || true
  bash scripts/registry.sh stop --dir "$REGISTRY_DIR" > /dev/null 2>&1 || true
  bash scripts/nats.sh stop --dir "$NATS_DIR" > /dev/null 2>&1 || true
}
trap stop_servers EXIT

echo "== tools: docker-compose (checks docker-compose.yml without an engine), promtool (checks deploy/alerts.yml)"
missing=()
command -v docker-compose > /dev/null || missing+=(docker-compose)
command -v promtool > /dev/null || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  # policy-rc.d: the prometheus package must not try to start its service.
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
  [ -z "$created_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
docker-compose version --short
promtool --version | head -1

echo "== servers: Apache Kafka, Apicurio Registry and NATS (started in the background)"
# A fresh broker, registry and NATS server every run: no state from an earlier one.
stop_servers
rm -rf "$KAFKA_DIR" "$REGISTRY_DIR" "$NATS_DIR"
bash scripts/kafka.sh start --dir "$KAFKA_DIR" > target/test-kafka.out 2> target/test-kafka.err &
kafka_pid=$!
bash scripts/registry.sh start --dir "$REGISTRY_DIR" > target/test-registry.out 2> target/test-registry.err &
registry_pid=$!
bash scripts/nats.sh start --dir "$NATS_DIR" > target/test-nats.out 2> target/test-nats.err &
nats_pid=$!

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo build (release)"
cargo build --release --all-targets

wait "$kafka_pid" || { cat target/test-kafka.err; echo "Kafka did not start" >&2; exit 1; }
wait "$registry_pid" || { cat target/test-registry.err; echo "Apicurio Registry did not start" >&2; exit 1; }
wait "$nats_pid" || { cat target/test-nats.err; echo "NATS did not start" >&2; exit 1; }
KAFKA_BOOTSTRAP="$(tail -n 1 target/test-kafka.out)"
APICURIO_URL="$(tail -n 1 target/test-registry.out)"
NATS_URL="$(tail -n 1 target/test-nats.out)"
export KAFKA_BOOTSTRAP KAFKA_DIR APICURIO_URL NATS_URL NATS_DIR
echo "Kafka at $KAFKA_BOOTSTRAP, Apicurio Registry at $APICURIO_URL, NATS at $NATS_URL"

echo "== the README's main command: the embedded demo"
PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production cargo run --release --quiet -- demo --out target/readme-demo
test -s target/readme-demo/public.jsonl
test -s target/readme-demo/dead-letter.jsonl

echo "== the global allocator's own tests (crates/mimalloc-natural)"
# A crate of its own (it holds `unsafe`, which privacy-router forbids), so
# the workspace's `cargo test` does not reach its tests.
cargo test --release --quiet --manifest-path crates/mimalloc-natural/Cargo.toml --target-dir target/crates

echo "== crates/ascii-str's own tests"
# Likewise (one `unsafe` call).
cargo test --release --quiet --manifest-path crates/ascii-str/Cargo.toml --target-dir target/crates

echo "== cargo test (release, all targets)"
# Each broker test appends its name and duration here (tests/support).
rm -f target/broker-test-times.txt
status=0
cargo test --release --all-targets || status=$?
echo "== broker tests, seconds each"
cat target/broker-test-times.txt 2>/dev/null || echo "(none ran)"
exit "$status"
