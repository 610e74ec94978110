#!/usr/bin/env bash
# A real schema registry on loopback for tests: Apicurio Registry with
# in-memory storage (H2 in memory, everything is lost on stop), used through
# its Confluent-compatible API. No Docker, no build: Apicurio's own runnable
# distribution (Quarkus app, classifier "all") comes from Maven Central
# through tools/registry/pom.xml and runs with plain `java`.
#
#   scripts/registry.sh start [--dir DIR]
#   scripts/registry.sh stop [--dir DIR]
#   scripts/registry.sh status [--dir DIR]
#   scripts/registry.sh fetch                   # only resolve/unpack the dist
#
# DIR defaults to target/registry (relative to the repo root). `start` prints
# the base URL of the Confluent-compatible API,
#   http://127.0.0.1:PORT/apis/ccompat/v7
# as the last (only) line on stdout; progress goes to stderr, so
# `REGISTRY_URL=$(scripts/registry.sh start)` works. State in DIR:
#   url            that base URL          port   the HTTP port
#   pid            the JVM's pid          registry.log   its log (stdout+stderr)
# The port is picked by the JVM itself (quarkus.http.port=0, read back from
# the log), so there is no free-port race. A second `start` on a DIR whose
# registry still answers only prints its URL. Each start is a new, empty
# registry (in-memory storage).
#
# Compatibility: Apicurio enforces none unless a rule is set; Confluent's
# default is BACKWARD. So the global COMPATIBILITY rule is set to
# $REGISTRY_COMPATIBILITY (default BACKWARD, like Confluent; NONE = Apicurio's
# own default) with apicurio.rules.global.compatibility; PUT /config and
# PUT /config/{subject} change it as on Confluent.
#
# Env: REGISTRY_VERSION (default 3.3.3), REGISTRY_COMPATIBILITY (BACKWARD),
# REGISTRY_HEAP (-Xmx, default 384m), REGISTRY_START_TIMEOUT (seconds, 120),
# REGISTRY_JAVA (a java binary; otherwise JAVA_HOME, then the newest JDK in
# /usr/lib/jvm, then java on PATH; Apicurio 3.3.3 needs Java 21+),
# REGISTRY_CDS (1: keep a JVM class-data archive in target/tools/registry-*, which
# makes later starts ~1 s faster; 0: off).
# Findings, probe results and the differences from Confluent:
# docs/dev/apicurio.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSION="${REGISTRY_VERSION:-3.3.3}"
POM="$ROOT/tools/registry/pom.xml"
TOOLS="$ROOT/target/tools/registry-$VERSION"
DIST="$TOOLS/dist"
TIMEOUT="${REGISTRY_START_TIMEOUT:-120}"
HEAP="${REGISTRY_HEAP:-384m}"
COMPAT="${REGISTRY_COMPATIBILITY:-BACKWARD}"
CDS="${REGISTRY_CDS:-1}"
# 3.3.3 ships classifier "all" as a tar.gz (Quarkus fast-jar layout, Java 21
# bytecode); other 3.x versions are untested. 3.0.x (a zip, Java 17) cannot be
# resolved here: its parent pom is not served, and Maven needs it to read the
# artifact's descriptor.
TYPE=tar.gz
JAVA_MIN=21

die() { echo "registry.sh: error: $*" >&2; exit 1; }
say() { echo "registry.sh: $*" >&2; }
usage() { grep -E '^#   scripts/registry.sh' "${BASH_SOURCE[0]}" | sed 's/^#  *//' >&2; exit 2; }

java_major() { "$1" -version 2>&1 | sed -En 's/.* version "([0-9]+).*/\1/p' | head -1; }

# Java: REGISTRY_JAVA, else JAVA_HOME, else the newest /usr/lib/jvm JDK, else PATH;
# the first one that is new enough wins.
need_java() {
  local c cands=() major
  if [[ -n "${REGISTRY_JAVA:-}" ]]; then
    cands=("$REGISTRY_JAVA")
  else
    [[ -n "${JAVA_HOME:-}" ]] && cands+=("$JAVA_HOME/bin/java")
    while IFS= read -r c; do cands+=("$c"); done < <(
      for c in /usr/lib/jvm/*/bin/java; do
        [[ -x "$c" ]] && echo "$(java_major "$c" || echo 0) $c"
      done | sort -rn | cut -d' ' -f2-)
    c="$(command -v java || true)"; [[ -n "$c" ]] && cands+=("$c")
  fi
  for c in "${cands[@]}"; do
    [[ -x "$c" ]] || continue
    major="$(java_major "$c")"
    if [[ "${major:-0}" -ge "$JAVA_MIN" ]]; then JAVA="$c"; return 0; fi
  done
  die "Apicurio Registry $VERSION needs Java $JAVA_MIN+; none found among: ${cands[*]:-nothing} (set REGISTRY_JAVA or JAVA_HOME)"
}

# The runnable jar of the unpacked dist (Quarkus fast-jar layout).
dist_jar() { [[ -f "$DIST/quarkus-run.jar" ]] && echo "$DIST/quarkus-run.jar"; }

# Resolve and unpack once; a marker (version + pom hash) written after success
# makes later calls skip Maven. A lock keeps parallel callers from unpacking
# twice; the dist lands in dist.tmp, then is moved.
ensure_dist() {
  local stamp; stamp="$VERSION $TYPE $(sha256sum "$POM" | cut -c1-16)"
  [[ -f "$DIST/.complete" && "$(cat "$DIST/.complete")" == "$stamp" ]] && return 0
  command -v mvn >/dev/null || die "mvn (Maven) not found and $DIST is not unpacked yet: apt-get install maven"
  mkdir -p "$TOOLS"
  exec 9>"$TOOLS/.lock"; flock 9
  if ! [[ -f "$DIST/.complete" && "$(cat "$DIST/.complete")" == "$stamp" ]]; then
    say "fetching io.apicurio:apicurio-registry-app:$VERSION:$TYPE:all with Maven into ${DIST#"$ROOT"/} ..."
    rm -rf "$DIST.tmp" "$DIST"
    # outputDirectory must be absolute: Maven resolves a relative one against the pom's folder.
    if ! mvn -q -B -Dstyle.color=never -f "$POM" generate-resources -Dregistry.version="$VERSION" \
        -Dregistry.type="$TYPE" -Dregistry.out="$DIST.tmp" > "$TOOLS/maven.log" 2>&1; then
      sed 's/\x1b\[[0-9;]*m//g' "$TOOLS/maven.log" >&2
      die "Maven could not fetch apicurio-registry-app:$VERSION:$TYPE:all (see above)"
    fi
    mv "$DIST.tmp" "$DIST"
    [[ -n "$(dist_jar)" ]] || die "unpacked $DIST but found no quarkus-run.jar in it"
    echo "$stamp" > "$DIST/.complete"
  fi
  exec 9>&-
}

# Running = pid file, live process, and its command line names this DIR.
registry_pid() {
  local pid
  [[ -s "$DIR/pid" ]] || return 1
  pid="$(cat "$DIR/pid")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Dprivacy-router.registry.dir=$DIR " || return 1
  echo "$pid"
}

answers() { curl -sf -o /dev/null --max-time 5 "$1/subjects"; }

start() {
  mkdir -p "$DIR"
  if registry_pid >/dev/null && [[ -s "$DIR/url" ]] && answers "$(cat "$DIR/url")"; then
    say "already running (pid $(cat "$DIR/pid"))"
    cat "$DIR/url"; return 0
  fi
  if registry_pid >/dev/null; then stop; fi
  command -v curl >/dev/null || die "curl not found (used to wait for the registry): apt-get install curl"
  case "$COMPAT" in
    BACKWARD|BACKWARD_TRANSITIVE|FORWARD|FORWARD_TRANSITIVE|FULL|FULL_TRANSITIVE|NONE) ;;
    *) die "REGISTRY_COMPATIBILITY=$COMPAT is not one of BACKWARD[_TRANSITIVE], FORWARD[_TRANSITIVE], FULL[_TRANSITIVE], NONE" ;;
  esac
  need_java
  ensure_dist
  local jar; jar="$(dist_jar)"
  rm -f "$DIR/pid" "$DIR/url" "$DIR/port"
  : > "$DIR/registry.log"
  local opts=(-Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1)
  # AppCDS archive (Java 19+): written when the JVM exits, used by later starts.
  if [[ "$CDS" == 1 && "$(java_major "$JAVA")" -ge 19 ]]; then
    opts+=(-XX:+AutoCreateSharedArchive -XX:SharedArchiveFile="$TOOLS/cds-java$(java_major "$JAVA").jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
  fi
  opts+=(
    -Dprivacy-router.registry.dir="$DIR"   # marks the process as this DIR's (see registry_pid)
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port=0
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port=0
    -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2
    -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2
    -Dapicurio.datasource.jdbc.max-size=20
    -Dapicurio.rules.global.compatibility="$COMPAT"
    -Dapicurio.storage.snapshot.location="$DIR" -Dapicurio.import.work-dir="$DIR"
    -Djava.io.tmpdir="$DIR"
  )
  say "starting Apicurio Registry $VERSION ($JAVA, heap $HEAP, compatibility $COMPAT); log: ${DIR#"$ROOT"/}/registry.log"
  local t0=$SECONDS
  # Own session, stdin/stdout/stderr away from the caller (so $(...) returns);
  # the inner shell writes its pid, then execs java (same pid).
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$DIR/pid" "$JAVA" "${opts[@]}" -jar "$jar" \
    < /dev/null >> "$DIR/registry.log" 2>&1 &
  local port="" url
  while (( SECONDS - t0 < TIMEOUT )); do
    if ! registry_pid >/dev/null && [[ -s "$DIR/pid" ]] && ! kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
      tail -n 30 "$DIR/registry.log" >&2; die "the registry exited during startup (log: $DIR/registry.log)"
    fi
    port="$(sed -En 's/.*Listening on: http:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' "$DIR/registry.log" | head -1)"
    if [[ -n "$port" ]]; then
      url="http://127.0.0.1:$port/apis/ccompat/v7"
      if answers "$url"; then
        echo "$port" > "$DIR/port"; echo "$url" > "$DIR/url"
        say "up after $((SECONDS - t0)) s: $url"
        echo "$url"; return 0
      fi
    fi
    sleep 0.2
  done
  tail -n 30 "$DIR/registry.log" >&2
  stop || true
  die "the registry did not answer within ${TIMEOUT}s (log: $DIR/registry.log)"
}

stop() {
  local pid i
  if ! pid="$(registry_pid)"; then
    rm -f "$DIR/pid" "$DIR/url" "$DIR/port"; say "not running"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then say "pid $pid still alive after 30 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$DIR/pid" "$DIR/url" "$DIR/port"
  say "stopped (pid $pid)"
}

status() {
  local pid
  if pid="$(registry_pid)" && [[ -s "$DIR/url" ]] && answers "$(cat "$DIR/url")"; then
    say "running (pid $pid)"; cat "$DIR/url"
  else
    say "not running"; return 1
  fi
}

CMD="${1:-}"; [[ -n "$CMD" ]] || usage; shift
DIR="target/registry"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) [[ $# -ge 2 ]] || usage; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    *) usage ;;
  esac
done
mkdir -p "$DIR"; DIR="$(cd "$DIR" && pwd)"
case "$CMD" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) ensure_dist; say "dist ready: ${DIST#"$ROOT"/} ($(dist_jar))" ;;
  *) usage ;;
esac
