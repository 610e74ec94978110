#!/usr/bin/env bash
# A real NATS server with JetStream on loopback, for the NATS source's tests.
# No Docker, no download of our own: Debian's nats-server package (2.9.10 on
# Debian 12), installed with apt-get when nats-server is not on PATH.
#
#   scripts/nats.sh start [--dir DIR] [--port P]
#   scripts/nats.sh stop [--dir DIR]
#   scripts/nats.sh status [--dir DIR]
#
# DIR defaults to target/nats (relative to the repo root). `start` prints
# the client URL,
#   nats://127.0.0.1:PORT
# as the last (only) line on stdout; progress goes to stderr, so
# `NATS_URL=$(scripts/nats.sh start)` works. It returns once the server
# answers /healthz on its monitoring port and its INFO on the client port
# says JetStream is on. No auth, no TLS, one server.
# The client port is --port P if given, else the one an earlier start on DIR
# used (DIR/port), else a free one; the monitoring port is picked afresh at
# every start. `stop` then `start --port P` on the same DIR is an outage and
# a restart: the JetStream store (streams, messages, consumers) survives.
# State in DIR:
#   url    nats://127.0.0.1:PORT      port   the client port
#   monitor-port   the HTTP monitoring port (/healthz, /varz, /jsz)
#   pid    the server's pid           server.log   its log (stdout+stderr)
#   jetstream/     the JetStream store (--store_dir)
#   apt.log        apt-get's output, when this script installed the package
# A second `start` on a DIR whose server still runs only prints its URL
# (with --port, only if that is its port). Env: NATS_START_TIMEOUT (seconds,
# default 30).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIMEOUT="${NATS_START_TIMEOUT:-30}"

die() { echo "nats.sh: error: $*" >&2; exit 1; }
say() { echo "nats.sh: $*" >&2; }
usage() { grep -E '^#   scripts/nats.sh' "${BASH_SOURCE[0]}" | sed 's/^#  *//' >&2; exit 2; }

# ---- prerequisites: fail loudly, never skip -------------------------------
# Debian's package; its maintainer scripts must not start a system service
# (policy-rc.d, as in scripts/test.sh). A lock keeps parallel callers from
# running apt-get at the same time.
ensure_server() {
  command -v nats-server > /dev/null && return 0
  command -v apt-get > /dev/null || die "nats-server not found and there is no apt-get to install it"
  mkdir -p "$ROOT/target/tools"
  exec 9> "$ROOT/target/tools/.nats-install.lock"; flock 9
  if ! command -v nats-server > /dev/null; then
    say "installing Debian's nats-server with apt-get (log: ${DIR#"$ROOT"/}/apt.log) ..."
    local created_policy="" rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      created_policy=1
    fi
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server)
    if ! "${install[@]}" > "$DIR/apt.log" 2>&1; then
      { apt-get update -qq && "${install[@]}"; } >> "$DIR/apt.log" 2>&1 || rc=$?
    fi
    [[ -z "$created_policy" ]] || rm -f /usr/sbin/policy-rc.d
    if (( rc != 0 )) || ! command -v nats-server > /dev/null; then
      tail -n 20 "$DIR/apt.log" >&2; die "apt-get could not install nats-server (log: $DIR/apt.log)"
    fi
  fi
  exec 9>&-
  command -v curl > /dev/null || die "curl not found (used to wait for the server): apt-get install curl"
  command -v python3 > /dev/null || die "python3 not found (used to pick free ports)"
}

# Free loopback ports: bind all to port 0 at once so they are distinct.
free_ports() {
  python3 -c 'import socket,sys; ss=[socket.socket() for _ in range(int(sys.argv[1]))]
print(" ".join(str(s.bind(("127.0.0.1",0)) or s.getsockname()[1]) for s in ss))' "$1"
}

# Running = pid file, live process, and its command line names this DIR's store.
server_pid() {
  local pid
  pid="$(cat "$DIR/pid" 2>/dev/null)" && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--store_dir $DIR/jetstream " || return 1
  echo "$pid"
}

# Healthy = /healthz on the monitoring port answers 200, and the client port
# greets with this server's INFO saying "jetstream":true. (Debian's 2.9.10
# ignores /healthz?js-enabled-only=true -- it answers ok even without -js --
# so the INFO is what proves JetStream; /jsz would too, with "disabled".)
healthy() {
  local mport=$1 port=$2 info
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$mport/healthz" 2>/dev/null || return 1
  info="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"; IFS= read -r line <&3; echo "$line"' "$port" 2>/dev/null)" || return 1
  [[ "$info" == INFO* && "$info" == *"\"server_name\":\"$NAME\""* && "$info" == *'"jetstream":true'* ]]
}

# A stable name (the JetStream store does not depend on it; logs and INFO show it).
NAME=""
set_name() { NAME="privacy-router-$(basename "$DIR" | tr -c 'A-Za-z0-9_\n-' '-')"; }

cmd_start() {
  mkdir -p "$DIR"
  local pid
  if pid="$(server_pid)"; then
    local rport mport; rport="$(cat "$DIR/port" 2>/dev/null || true)"; mport="$(cat "$DIR/monitor-port" 2>/dev/null || true)"
    if [[ -n "$PORT" && "$PORT" != "$rport" ]]; then
      die "a server already runs in $DIR on port $rport, not $PORT (scripts/nats.sh stop --dir $DIR)"
    fi
    if [[ -n "$rport" && -n "$mport" ]] && healthy "$mport" "$rport"; then
      say "already running (pid $pid)"; echo "nats://127.0.0.1:$rport"; return 0
    fi
    say "pid $pid runs in $DIR but does not answer: restarting it"; cmd_stop
  fi
  ensure_server
  local port mport
  if [[ -n "$PORT" ]]; then port="$PORT"
  elif [[ -s "$DIR/port" ]]; then port="$(cat "$DIR/port")"
  else port="$(free_ports 1)"; fi
  # A monitoring port distinct from the client port.
  while :; do mport="$(free_ports 1)"; [[ "$mport" != "$port" ]] && break; done
  mkdir -p "$DIR/jetstream"
  rm -f "$DIR/pid" "$DIR/url"
  echo "$port" > "$DIR/port"; echo "$mport" > "$DIR/monitor-port"
  echo "===== $(date -u +%FT%TZ) nats.sh: starting $(nats-server --version 2>&1 | head -1) on 127.0.0.1:$port (monitoring $mport)" >> "$DIR/server.log"
  local t0=$SECONDS
  # Own session, stdin/stdout/stderr away from the caller (so $(...) returns);
  # the inner shell writes its pid, then execs nats-server (same pid).
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$DIR/pid" nats-server \
    -a 127.0.0.1 -p "$port" -m "$mport" --server_name "$NAME" \
    -js --store_dir "$DIR/jetstream" \
    < /dev/null >> "$DIR/server.log" 2>&1 &
  local i; for i in $(seq 50); do [[ -s "$DIR/pid" ]] && break; sleep 0.1; done
  [[ -s "$DIR/pid" ]] || die "the server did not start (see $DIR/server.log)"
  pid="$(cat "$DIR/pid")"
  while :; do
    healthy "$mport" "$port" && break
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DIR/server.log" >&2; rm -f "$DIR/pid"
      die "the server exited during startup (port $port taken? log: $DIR/server.log)"
    fi
    if (( SECONDS - t0 >= TIMEOUT )); then
      tail -n 20 "$DIR/server.log" >&2; cmd_stop || true
      die "the server did not answer within ${TIMEOUT}s (log: $DIR/server.log)"
    fi
    sleep 0.1
  done
  echo "nats://127.0.0.1:$port" > "$DIR/url"
  say "up after $((SECONDS - t0)) s (pid $pid, monitoring http://127.0.0.1:$mport, store ${DIR#"$ROOT"/}/jetstream)"
  echo "nats://127.0.0.1:$port"
}

# SIGTERM (nats-server shuts down cleanly, flushing the store), SIGKILL
# after 10 s. DIR/port stays, so a later start reuses the port.
cmd_stop() {
  local pid i
  if ! pid="$(server_pid)"; then
    rm -f "$DIR/pid" "$DIR/url"; say "not running"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid ignored SIGTERM for 10 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$DIR/pid" "$DIR/url"
  say "stopped (pid $pid; store kept in ${DIR#"$ROOT"/}/jetstream)"
}

cmd_status() {
  local pid port mport
  port="$(cat "$DIR/port" 2>/dev/null || true)"; mport="$(cat "$DIR/monitor-port" 2>/dev/null || true)"
  if pid="$(server_pid)" && [[ -n "$port" && -n "$mport" ]] && healthy "$mport" "$port"; then
    echo "running pid $pid, nats://127.0.0.1:$port, monitoring http://127.0.0.1:$mport, RSS $(awk '/VmRSS/{print $2 $3}' "/proc/$pid/status")"
    echo "nats://127.0.0.1:$port"
  else
    echo "not running in $DIR"; exit 3
  fi
}

# ---- arguments -----------------------------------------------------------
[[ $# -ge 1 ]] || usage
CMD=$1; shift
DIR="target/nats"; PORT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --port=*) PORT="${1#--port=}"; shift ;;
    -h|--help) usage ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ -z "$PORT" || "$CMD" == start ]] || die "--port is an option of start"
[[ -z "$PORT" || ( "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ) ]] || die "--port must be a port number"
# A relative DIR is relative to the repo root (we cd there); make it absolute,
# since the server process is recognised by its store path.
[[ "$DIR" == /* ]] || DIR="$ROOT/$DIR"
DIR="$(realpath -m "$DIR")"
set_name
case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
