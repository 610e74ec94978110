#!/usr/bin/env bash
# Checks both peers against privacy-router on a real Kafka broker, under
# exactly-once and at-least-once (benches/peers/README.md, "How they were
# checked"). Not part of scripts/test.sh: it is about the benchmark's peers.
#
#   benches/peers/test.sh [--count 5000] [--seed 12] [--bootstrap HOST:PORT]
#
# Without --bootstrap it starts a broker with scripts/kafka.sh in
# target/peers-kafka and stops it at the end. Needs target/release/privacy-router
# (`cargo build --release`), Java 17+, Maven and python3. For each peer and
# guarantee: fresh output topics, the peer over the same input topic (its own
# consumer group), `verify.py check` against `privacy-router replay` of the
# same file with JSON output, then SIGTERM. Exit status 1 when any check fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
COUNT=5000 SEED=12 BOOTSTRAP=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --count) COUNT=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --bootstrap) BOOTSTRAP=$2; shift 2 ;;
    *) echo "usage: $0 [--count N] [--seed S] [--bootstrap HOST:PORT]" >&2; exit 2 ;;
  esac
done
ENGINE=target/release/privacy-router
[[ -x $ENGINE ]] || { echo "test.sh: $ENGINE not built (cargo build --release)" >&2; exit 1; }
OUT=target/peers/verify
mkdir -p "$OUT"

# The venv (Quix Streams, confluent-kafka for verify.py) and the classification.
bash benches/peers/quix/run.sh --help > /dev/null
PY=target/peers-venv/bin/python
"$PY" benches/peers/classify.py --engine "$ENGINE" -o target/peers/classification.json

if [[ -z $BOOTSTRAP ]]; then
  bash scripts/kafka.sh start --dir target/peers-kafka > target/peers-kafka.out
  BOOTSTRAP=$(tail -1 target/peers-kafka.out)
  trap 'bash scripts/kafka.sh stop --dir target/peers-kafka' EXIT
fi

# The input, and what privacy-router makes of it (JSON output: the peers' format).
"$PY" benches/peers/verify.py input --engine "$ENGINE" --count "$COUNT" --seed "$SEED" -o "$OUT/input.jsonl"
# The peers emit a gap at once (no reorder window): so does the reference.
sed -e 's/^  format: avro .*/  format: json/' -e 's/^  on_gap: hold.*/  on_gap: emit/' \
  topology/default.yaml > "$OUT/topology-json.yaml"
grep -q '^  on_gap: emit' "$OUT/topology-json.yaml"
rm -rf "$OUT/expected"
PRIVACY_ROUTER_HASH_KEY=peers-verify-key-0123456789 RUST_LOG=error \
  "$ENGINE" replay --topology "$OUT/topology-json.yaml" --out "$OUT/expected" "$OUT/input.jsonl" | tee "$OUT/replay.txt"
"$PY" benches/peers/verify.py topics --bootstrap "$BOOTSTRAP" events.raw
"$PY" benches/peers/verify.py load --bootstrap "$BOOTSTRAP" --topic events.raw "$OUT/input.jsonl"

failed=0
STAMP=$(date +%s) # new application ids: new consumer groups and changelogs
run() { # name peer guarantee dead-letter-topic|"" [restart]
  local name=$1 peer=$2 guarantee=$3 dlq=$4 restart=${5:-}
  local topics=("$name.public" "$name.internal" "$name.restricted")
  local args=(--bootstrap "$BOOTSTRAP" --application-id "peers-test-$STAMP-$name" --guarantee "$guarantee"
              --public "$name.public" --internal "$name.internal" --restricted "$name.restricted")
  local check=(--group "peers-test-$STAMP-$name" --public "$name.public" --internal "$name.internal" --restricted "$name.restricted")
  if [[ -n $dlq ]]; then
    topics+=("$dlq"); args+=(--dead-letter "$dlq")
    [[ -n $restart ]] || check+=(--dead-letter "$dlq") # a restart sends the rejects again
  fi
  if [[ -z $restart ]]; then
    "$PY" benches/peers/verify.py topics --bootstrap "$BOOTSTRAP" "${topics[@]}"
    echo "== $name: $peer, $guarantee" | tee -a "$OUT/results.txt"
  else
    echo "== $name again, on an empty state directory, after the input was loaded a second time" | tee -a "$OUT/results.txt"
  fi
  rm -rf "target/peers/state-$name"
  bash "benches/peers/$peer/run.sh" "${args[@]}" --state-dir "target/peers/state-$name" > "$OUT/$name$restart.log" 2>&1 &
  local pid=$!
  if ! "$PY" benches/peers/verify.py check --bootstrap "$BOOTSTRAP" --expected "$OUT/expected" \
      --input "$OUT/input.jsonl" "${check[@]}" | tee -a "$OUT/results.txt"; then
    failed=1
  fi
  kill -TERM "$pid"; wait "$pid" || true
  grep -E "^(kafka-streams|quix) peer: routed" "$OUT/$name$restart.log" | tee -a "$OUT/results.txt" || true
}
: > "$OUT/results.txt"
run ks-eos kafka-streams exactly_once_v2 ks-eos.dlq
run ks-alo kafka-streams at_least_once ks-alo.dlq
run qx-eos quix exactly-once ""
run qx-alo quix at-least-once ""
# The version store lives in the changelog: load every input record again
# (each one a replay now) and restart the exactly-once peers on empty state
# directories; they restore the versions from their changelogs and skip all
# of them, so the tier topics must hold exactly what they held.
"$PY" benches/peers/verify.py load --bootstrap "$BOOTSTRAP" --topic events.raw "$OUT/input.jsonl"
run ks-eos kafka-streams exactly_once_v2 ks-eos.dlq restart
run qx-eos quix exactly-once "" restart
if [[ $failed == 0 ]]; then echo "peers test: OK (details in $OUT/results.txt)"; else echo "peers test: FAILED"; exit 1; fi
