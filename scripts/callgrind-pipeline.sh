#!/usr/bin/env bash
# Instructions per event on the pure path (benches/pipeline.rs), counted by
# valgrind's callgrind: the bench runs 1 and then 3 batches of 20,000
# events; the difference divided by 40,000 events leaves out set-up and
# event generation. Repeatable to well under 1% on a noisy machine, unlike
# wall-clock figures.
#
#   bash scripts/callgrind-pipeline.sh            # prints `callgrind: instructions/event=N`
#   bash scripts/callgrind-pipeline.sh json       # JSON in, JSON tier records out
#   KEEP=1 bash scripts/callgrind-pipeline.sh     # keeps target/callgrind/*.out for callgrind_annotate
#
# Its last line splits off the software SHA-256 of the
# pseudonyms (see below): natively, with SHA-NI, it is a small part.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
bin=$(cargo bench --bench pipeline --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "pipeline" and m.get("executable"):
        print(m["executable"])')
[ -n "$bin" ] || { echo "could not build benches/pipeline.rs" >&2; exit 1; }
format=${1:-avro}
case "$format" in avro|json) ;; *) echo "usage: $0 [avro|json]" >&2; exit 2 ;; esac
export PIPELINE_FORMAT=$format
mkdir -p target/callgrind
count() {
  PIPELINE_BATCHES=$1 valgrind --tool=callgrind --toggle-collect='*Engine::process_as*' --callgrind-out-file="target/callgrind/pipeline-$format-$1.out" \
    "$bin" 2>"target/callgrind/pipeline-$format-$1.log" >/dev/null
  grep -E '^summary:|^totals:' "target/callgrind/pipeline-$format-$1.out" | head -1 | awk '{print $2}'
}
one=$(count 1)
three=$(count 3)
per=$(( (three - one) / 40000 ))
echo "callgrind: format=$format batches=1 Ir=$one batches=3 Ir=$three"
echo "callgrind: format=$format instructions/event=$per"
# valgrind does not offer the CPU's SHA extensions (SHA-NI) to the program,
# so under it the sha2 crate falls back to its software SHA-256, which is
# far more instructions than the SHA-NI path that runs natively on
# CPUs that have it (perf puts SHA-256 at 3–4% of the native JSON pure
# path). Reported apart, so that a change elsewhere is not lost in it.
sha() {
  callgrind_annotate --auto=no --threshold=100 "target/callgrind/pipeline-$format-$1.out" 2>/dev/null \
    | awk '$0 ~ /:sha2::/ { gsub(",", "", $1); s += $1 } END { printf "%d\n", s }'
}
sha_per=$(( ($(sha 3) - $(sha 1)) / 40000 ))
echo "callgrind: format=$format of which software SHA-256 (pseudonyms)=$sha_per, the rest=$(( per - sha_per ))"
[ -n "${KEEP:-}" ] || rm -f "target/callgrind/pipeline-$format-"*.out
