#!/usr/bin/env bash
# Builds (when its sources changed) and runs the Kafka Streams peer
# (`--build-only`: builds and stops there).
#
#   benches/peers/kafka-streams/run.sh --bootstrap 127.0.0.1:9092 \
#       [--application-id peer-kafka-streams] [--guarantee exactly_once_v2|at_least_once] \
#       [--input events.raw] [--public events.public] [--internal events.internal] \
#       [--restricted events.restricted] [--dead-letter events.dlq] [--threads 1] \
#       [--classification target/peers/classification.json] [--state-dir target/peers/kafka-streams-state]
#
# Needs Java 17+ and Maven (the first build fetches kafka-streams 4.4.0 from
# Maven Central; later builds run offline). The classification file is
# written by benches/peers/classify.py (needs PyYAML: the venv of quix/run.sh,
# or python3-yaml) when missing or older than the schemas. JAVA_OPTS is passed to
# the JVM. Stops on SIGTERM/SIGINT (commits and leaves the group).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
SRC=benches/peers/kafka-streams
JAR=target/peers/kafka-streams/peer-kafka-streams.jar

if [[ ! -f "$JAR" || -n "$(find "$SRC/pom.xml" "$SRC/src" -newer "$JAR" -print -quit)" ]]; then
  echo "kafka-streams peer: building $JAR" >&2
  offline=(); [[ -f "$JAR" ]] && offline=(-o)
  mvn -q -B "${offline[@]}" -f "$SRC/pom.xml" package >&2 || mvn -q -B -f "$SRC/pom.xml" package >&2
fi
CLS=target/peers/classification.json
if [[ ! -f $CLS || -n "$(find avro topology/default.yaml benches/peers/classify.py -newer $CLS -print -quit)" ]]; then
  PY=python3; [[ -x target/peers-venv/bin/python ]] && PY=target/peers-venv/bin/python # has PyYAML
  $PY benches/peers/classify.py -o $CLS >&2
fi
[[ "${1:-}" == "--build-only" ]] && exit 0
# shellcheck disable=SC2086
exec java ${JAVA_OPTS:-} -jar "$JAR" "$@"
