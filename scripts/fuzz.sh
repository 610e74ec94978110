#!/usr/bin/env bash
# Coverage-guided fuzzing of Engine::process with cargo-fuzz (libFuzzer);
# issue 9, "Bad input". Not part of CI.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET]
#
# SECONDS (default 600) is the time per target; TARGET is one of framed,
# json, adapter (default: each in turn). The targets (fuzz/fuzz_targets/)
# share fuzz/harness.rs with tests/fuzz_corpus.rs: real schemas from avro/
# plus evolving versions, the default topology, a strict variant and the
# adapter topologies; a panic is a finding.
#
# Steps per target: seed fuzz/corpus/TARGET from the kept corpus
# (tests/fuzz-corpus/TARGET), samples/*.jsonl (json: the events of the
# evolved types with schema_version 1..4 and 9 too) and `privacy-router
# sample --format framed` (framed); run libFuzzer for SECONDS with one job;
# print its figures and any crash; minimise the corpus (cargo fuzz cmin)
# and keep at most FUZZ_MAX_FILES (300) files / FUZZ_MAX_BYTES (1 MB) of
# it, spread over its sizes, in tests/fuzz-corpus/TARGET, which `cargo test --test
# fuzz_corpus` replays. Exits non-zero when a target crashed; the input is
# in fuzz/artifacts/TARGET/ (minimise it in fuzz/ with RUSTC_BOOTSTRAP=1:
# `cargo fuzz tmin --release --debug-assertions --sanitizer none TARGET
# FILE`). PRIVACY_ROUTER_BIN names a built privacy-router for the framed
# seeds instead of `cargo build --release`.
#
# cargo-fuzz needs nightly flags (sanitizer coverage, -Zsanitizer): with
# RUSTC_BOOTSTRAP=1 the stable toolchain takes them. The default sanitizer is
# none: privacy-router forbids unsafe code, and with AddressSanitizer the cc
# crate builds zstd-sys with -fsanitize=address, after which librdkafka's
# configure (rdkafka-sys) cannot link its zstd check and the build fails.
# FUZZ_SANITIZER=address asks for it anyway. Builds and runs are niced (the
# machine is shared).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECS=${1:-600}
ALL_TARGETS=(framed json adapter)
if [ $# -ge 2 ]; then
  TARGETS=("$2")
else
  TARGETS=("${ALL_TARGETS[@]}")
fi
for t in "${TARGETS[@]}"; do
  case " ${ALL_TARGETS[*]} " in
    *" $t "*) ;;
    *) echo "unknown target $t (one of: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
  esac
done
MAX_FILES=${FUZZ_MAX_FILES:-300}
MAX_BYTES=${FUZZ_MAX_BYTES:-1000000}
SANITIZER=${FUZZ_SANITIZER:-none}
# Release builds with debug assertions (overflow checks included): the same
# flags for build, run and cmin, so the target is built once.
FLAGS=(--sanitizer "$SANITIZER" --release --debug-assertions)
NICE=(nice -n 10)

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version > /dev/null 2>&1; then
  echo "== installing cargo-fuzz from crates.io"
  "${NICE[@]}" cargo install cargo-fuzz --locked
fi
cargo fuzz --version

mkdir -p fuzz/corpus fuzz/dict fuzz/artifacts

# Files named by content, as libFuzzer names them.
seed_lines() { # FILE... -> stdin of python writing one file per line into $DEST
  python3 - "$@" <<'PY'
import hashlib, json, os, sys
dest = os.environ["DEST"]
versions = [int(v) for v in os.environ.get("VERSIONS", "").split()]
evolved = set(os.environ.get("EVOLVED", "").split())
def put(data):
    with open(os.path.join(dest, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            put(line)
            if not versions:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("event_type") in evolved:
                for v in versions:
                    doc["schema_version"] = v
                    put(json.dumps(doc, separators=(",", ":")).encode())
PY
}

# A libFuzzer dictionary of the names and symbols of the schemas in $1.
dictionary() { # DIR OUT
  python3 - "$1" "$2" <<'PY'
import json, os, sys
words = {"schema_version", "event_type", "privacy_tier", "entity_version", "data",
         "public", "internal", "restricted", "null", "true", "false"}
def walk(v):
    if isinstance(v, dict):
        for k in ("name", "namespace"):
            if isinstance(v.get(k), str):
                words.add(v[k])
        for s in v.get("symbols", []) or []:
            if isinstance(s, str):
                words.add(s)
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        if f.endswith(".avsc"):
            with open(os.path.join(d, f)) as fh:
                walk(json.load(fh))
with open(sys.argv[2], "w") as out:
    for w in sorted(words):
        q = json.dumps(w)
        out.write('"%s"\n' % q.replace("\\", "\\\\").replace('"', '\\"'))
PY
}

framed_seeds() { # DEST: privacy-router sample --format framed, split, as [id-1][body]
  local bin=${PRIVACY_ROUTER_BIN:-}
  if [ -z "$bin" ]; then
    bin=target/release/privacy-router
    if ! "${NICE[@]}" cargo build --release --quiet --bin privacy-router; then
      echo "   (the release build failed: no new framed seeds this time)"
      return 0
    fi
  fi
  local tmp
  tmp=$(mktemp)
  for seed in 7 11; do
    "$bin" sample --count 200 --seed "$seed" --format framed >> "$tmp"
  done
  python3 - "$tmp" <<'PY'
import hashlib, os, struct, sys
dest = os.environ["DEST"]
data = open(sys.argv[1], "rb").read()
i = n = 0
while i + 4 <= len(data):
    (size,) = struct.unpack(">I", data[i:i + 4])
    rec = data[i + 4:i + 4 + size]
    i += 4 + size
    if len(rec) < 5 or rec[0] != 0:
        continue
    (sid,) = struct.unpack(">I", rec[1:5])
    if not 1 <= sid <= 128:
        continue
    seed = bytes([sid - 1]) + rec[5:]
    with open(os.path.join(dest, hashlib.sha1(seed).hexdigest()), "wb") as f:
        f.write(seed)
    n += 1
print("   %d framed seeds" % n)
PY
  rm -f "$tmp"
}

seed() { # TARGET
  local t=$1
  export DEST=fuzz/corpus/$t
  mkdir -p "$DEST"
  if [ -d "tests/fuzz-corpus/$t" ]; then
    cp -n tests/fuzz-corpus/"$t"/* "$DEST"/ 2> /dev/null || true
  fi
  case $t in
    json)
      VERSIONS="1 2 3 4 9" EVOLVED="user.created order.created user.login_failed product.created" \
        seed_lines samples/events.jsonl
      dictionary avro fuzz/dict/json.dict
      ;;
    adapter)
      seed_lines samples/auth-identity.jsonl samples/user-catalogue.jsonl samples/user-service.jsonl
      dictionary avro/producers fuzz/dict/adapter.dict
      ;;
    framed)
      framed_seeds
      ;;
  esac
  echo "   corpus: $(find "$DEST" -type f | wc -l) files"
}

keep() { # TARGET: cmin, then files spread over the sizes, up to the limits
  local t=$1
  echo "== $t: cargo fuzz cmin"
  (cd fuzz && "${NICE[@]}" cargo fuzz cmin "${FLAGS[@]}" "$t" "$ROOT/fuzz/corpus/$t" -- -rss_limit_mb=2048 > "$ROOT/fuzz/cmin-$t.log" 2>&1) ||
    { echo "   cmin failed (fuzz/cmin-$t.log)"; return 1; }
  # Minimised crashes kept by hand (crash-*) stay; the rest is replaced.
  local saved
  saved=$(mktemp -d)
  cp tests/fuzz-corpus/"$t"/crash-* "$saved"/ 2> /dev/null || true
  rm -rf "tests/fuzz-corpus/$t"
  mkdir -p "tests/fuzz-corpus/$t"
  cp "$saved"/* "tests/fuzz-corpus/$t"/ 2> /dev/null || true
  rm -rf "$saved"
  python3 - "fuzz/corpus/$t" "tests/fuzz-corpus/$t" "$MAX_FILES" "$MAX_BYTES" <<'PY'
# Every k-th file by size, so small and large inputs both stay, within the
# limits.
import os, shutil, sys
src, dst, max_files, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = sorted((os.path.getsize(os.path.join(src, f)), f) for f in os.listdir(src))
n = min(len(files), max_files)
while n > 0:
    picked = [files[i * len(files) // n] for i in range(n)]
    if sum(size for size, _ in picked) <= max_bytes:
        break
    n -= max(1, n // 20)
else:
    picked = []
for _, f in picked:
    shutil.copy(os.path.join(src, f), os.path.join(dst, f))
print("   kept %d of %d minimised inputs, %d bytes, in %s"
      % (len(picked), len(files), sum(size for size, _ in picked), dst))
PY
}

status=0
for t in "${TARGETS[@]}"; do
  echo "== $t: seeding"
  seed "$t"
  echo "== $t: building"
  (cd fuzz && "${NICE[@]}" cargo fuzz build "${FLAGS[@]}" "$t")
  mkdir -p "fuzz/artifacts/$t"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  dict=()
  if [ -f "fuzz/dict/$t.dict" ]; then dict=("-dict=$ROOT/fuzz/dict/$t.dict"); fi
  echo "== $t: fuzzing for ${SECS}s (one job)"
  rm -f fuzz/fuzz-0.log
  rc=0
  (cd fuzz && "${NICE[@]}" cargo fuzz run "${FLAGS[@]}" "$t" "$ROOT/fuzz/corpus/$t" -- \
    -max_total_time="$SECS" -jobs=1 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    "${dict[@]}") || rc=$?
  # With -jobs, libFuzzer writes the job's output to fuzz-0.log.
  log=fuzz/fuzz-$t.log
  mv -f fuzz/fuzz-0.log "$log" 2> /dev/null || true
  echo "== $t: figures (full log: $log)"
  if [ -f "$log" ]; then
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE|pulse)' "$log" | tail -n 2 || true
    grep -E '^(Done [0-9]+ runs|stat::)' "$log" || true
    grep -E 'ERROR|panicked|SUMMARY' "$log" | head -n 5 || true
  fi
  after=$(find "fuzz/artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  echo "== $t: exit code $rc, new crash/timeout/oom artifacts: $crashes"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    status=1
    find "fuzz/artifacts/$t" -type f -newer fuzz/Cargo.toml -printf '   %p\n' 2> /dev/null | tail -n 5
  fi
  keep "$t" || status=1
done
exit "$status"
