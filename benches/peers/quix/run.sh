#!/usr/bin/env bash
# Runs the Quix Streams peer, creating its venv (target/peers-venv, Quix
# Streams 3.28.1 from PyPI) when missing (`--build-only`: stops there).
#
#   benches/peers/quix/run.sh --bootstrap 127.0.0.1:9092 \
#       [--application-id peer-quix] [--guarantee exactly-once|at-least-once] \
#       [--input events.raw] [--public events.public] [--internal events.internal] \
#       [--restricted events.restricted] \
#       [--classification target/peers/classification.json] [--state-dir target/peers/quix-state]
#
# The classification file is written by benches/peers/classify.py when
# missing or older than the schemas. Stops on SIGTERM/SIGINT (commits first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
VENV=target/peers-venv
if [[ ! -x $VENV/bin/python || ! -f $VENV/.quixstreams-3.28.1 ]]; then
  echo "quix peer: creating $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q quixstreams==3.28.1 pyyaml >&2
  touch "$VENV/.quixstreams-3.28.1"
fi
CLS=target/peers/classification.json
if [[ ! -f $CLS || -n "$(find avro topology/default.yaml benches/peers/classify.py -newer $CLS -print -quit)" ]]; then
  "$VENV/bin/python" benches/peers/classify.py -o $CLS >&2
fi
[[ "${1:-}" == "--build-only" ]] && exit 0
# Quix imports authlib, which warns about its own httpx module at import.
PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning} exec "$VENV/bin/python" benches/peers/quix/peer.py "$@"
