#!/usr/bin/env bash
# A real Apache Kafka (KRaft, combined broker+controller nodes) on loopback,
# for tests and benchmarks. No Docker, no tarball: the broker jars come from
# Maven Central through tools/kafka/pom.xml and run with plain `java`.
#
#   scripts/kafka.sh start [--brokers 1|3] [--dir DIR] [--security]
#   scripts/kafka.sh stop [--dir DIR]
#   scripts/kafka.sh status [--dir DIR]
#   scripts/kafka.sh kill-node N [--dir DIR]    # SIGKILL one node
#   scripts/kafka.sh start-node N [--dir DIR]   # restart it on its config/data
#
# DIR defaults to target/kafka (relative to the repo root). `start` prints
# the bootstrap servers as the last (only) line on stdout; progress goes to
# stderr, so `BOOTSTRAP=$(scripts/kafka.sh start)` works. State in DIR:
#   cluster.env              brokers, security, cluster id, every node's ports
#   bootstrap                127.0.0.1:P1[,127.0.0.1:P2,...]   (PLAINTEXT)
#   bootstrap-sasl-ssl       the SASL_SSL listeners            (--security)
#   client-sasl-ssl.properties  Java-client settings for user router
#   log4j2.properties        quiet logging (WARN; INFO for startup lines)
#   tls/ca.pem, tls/broker-keystore.pem, ...                   (--security)
#   node-N/{server.properties, data/ (log.dirs + KRaft metadata), pid,
#           server.log (log4j + JVM output), format.log}
# A second `start` on the same DIR reuses its config, ports and formatted
# data (nothing is reformatted); if every node already runs it only prints
# the bootstrap. Env: KAFKA_VERSION (default 4.4.0), KAFKA_HEAP_OPTS,
# KAFKA_START_TIMEOUT (seconds, default 90), JAVA_HOME.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
POM="$ROOT/tools/kafka/pom.xml"
set_libs() { TOOLS="$ROOT/target/tools/kafka-$KAFKA_VERSION"; LIBS="$TOOLS/libs"; }; set_libs
TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
# The classes the release's bin scripts run (Kafka 4.x):
#   bin/kafka-server-start.sh: exec $base_dir/kafka-run-class.sh $EXTRA_ARGS kafka.Kafka "$@"
#   bin/kafka-storage.sh:      exec $(dirname $0)/kafka-run-class.sh kafka.tools.StorageTool "$@"
SERVER_MAIN=kafka.Kafka
STORAGE_MAIN=kafka.tools.StorageTool

die() { echo "kafka.sh: error: $*" >&2; exit 1; }; say() { echo "kafka.sh: $*" >&2; }
usage() { grep -E '^#   scripts/kafka.sh' "${BASH_SOURCE[0]}" | sed 's/^#  *//' >&2; exit 2; }

# ---- prerequisites: fail loudly, never skip -------------------------------
need_java() {
  if [[ -n "${JAVA_HOME:-}" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA="$(command -v java || true)"; fi
  [[ -n "$JAVA" && -x "$JAVA" ]] || die "java not found (need Java 17+: apt-get install openjdk-17-jre-headless, or set JAVA_HOME)"
  local major; major="$("$JAVA" -version 2>&1 | sed -En 's/.* version "([0-9]+).*/\1/p' | head -1)"
  [[ "${major:-0}" -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, but $JAVA is version ${major:-unknown}"
  command -v python3 >/dev/null || die "python3 not found (used to pick ports and probe the brokers)"
}

# Resolve kafka_2.13 and its runtime jars once; a marker (version + pom hash)
# written after success makes later calls skip Maven. A lock keeps parallel
# callers from resolving twice; the jars land in libs.tmp, then are moved.
ensure_libs() {
  local stamp; stamp="$KAFKA_VERSION $(sha256sum "$POM" | cut -c1-16)"
  [[ -f "$LIBS/.complete" && "$(cat "$LIBS/.complete")" == "$stamp" ]] && return 0
  command -v mvn >/dev/null || die "mvn (Maven) not found and $LIBS is not resolved yet: apt-get install maven"
  mkdir -p "$TOOLS"
  exec 9>"$TOOLS/.lock"; flock 9
  if ! [[ -f "$LIBS/.complete" && "$(cat "$LIBS/.complete")" == "$stamp" ]]; then
    say "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven into ${LIBS#"$ROOT"/} ..."
    rm -rf "$LIBS.tmp" "$LIBS"
    # outputDirectory must be absolute: Maven resolves a relative one against the pom's folder.
    # (Debian's Maven 3.8.7 prints colour codes even with -q -B: strip them.)
    mvn -q -B -Dstyle.color=never -f "$POM" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS.tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 \
      || die "Maven could not resolve kafka_2.13:$KAFKA_VERSION (see above)"
    [[ -f "$LIBS.tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "Maven ran but kafka_2.13-$KAFKA_VERSION.jar is missing"
    mv "$LIBS.tmp" "$LIBS"; echo "$stamp" > "$LIBS/.complete"
  fi
  exec 9>&-
}

# ---- per-cluster helpers -------------------------------------------------
# cluster.env also pins KAFKA_VERSION: a DIR keeps the Kafka that formatted it.
load_cluster() { [[ -f "$DIR/cluster.env" ]] || die "no Kafka cluster in $DIR (scripts/kafka.sh start --dir $DIR)"; source "$DIR/cluster.env"; set_libs; }
nodes() { seq 1 "$BROKERS"; }
port_of() { local v="PORT_$1"; echo "${!v}"; }
# Running = pid file, live process, and its command line is this node's broker.
node_pid() {
  local pid; pid="$(cat "$DIR/node-$1/pid" 2>/dev/null)" && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR/node-$1/server.properties" || return 1
  echo "$pid"
}

# Free loopback ports: bind all to port 0 at once so they are distinct.
free_ports() {
  python3 -c 'import socket,sys; ss=[socket.socket() for _ in range(int(sys.argv[1]))]
print(" ".join(str(s.bind(("127.0.0.1",0)) or s.getsockname()[1]) for s in ss))' "$1"
}

# Readiness: send a Metadata v4 request (all topics) to a node; print the ids
# of the live brokers it reports, '|', and the number of under-replicated
# partitions. A KRaft broker only serves requests once it has caught up with
# the metadata log and is unfenced, so an answer listing the wanted ids means
# "ready for clients"; after a restart, followers also need a moment to
# rejoin the ISR (acks=all with min.insync.replicas=2 needs them).
probe() {
  python3 - "$1" <<'PY' 2>/dev/null
import socket, struct, sys
cid = b"kafka.sh"
msg = struct.pack(">hhih", 3, 4, 7, len(cid)) + cid + struct.pack(">i?", -1, False)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
s.sendall(struct.pack(">i", len(msg)) + msg)
f = s.makefile("rb")   # read(n) waits for n bytes; at EOF unpack fails -> exit 1
r, off = f.read(struct.unpack(">i", f.read(4))[0]), 4   # skip correlation id
def get(fmt):
    global off
    v = struct.unpack_from(">" + fmt, r, off); off += struct.calcsize(">" + fmt); return v[0]
def skip_str():
    global off; n = get("h"); off += max(n, 0)
get("i"); ids, urp = [], 0                                # throttle time
for _ in range(get("i")):                                 # brokers
    ids.append(get("i")); skip_str(); get("i"); skip_str()  # id host port rack
skip_str(); get("i")                                      # cluster id, controller
for _ in range(get("i")):                                 # topics
    get("h"); skip_str(); get("?")                        # error, name, internal
    for _ in range(get("i")):                             # partitions
        get("h"); get("i"); get("i")                      # error, index, leader
        reps = [get("i") for _ in range(get("i"))]; isr = [get("i") for _ in range(get("i"))]
        urp += len(isr) < len(reps)
print(" ".join(map(str, sorted(ids))) + "|" + str(urp))
PY
}

# Wait until each given node answers and lists every running node and, when
# all nodes run, no partition is under-replicated.
wait_ready() {
  local deadline=$((SECONDS + TIMEOUT)) n out got want m
  for n in "$@"; do
    while :; do
      want=""; for m in $(nodes); do node_pid "$m" >/dev/null && want+="$m "; done
      out="$(probe "$(port_of "$n")" || true)"; got="${out%|*}"
      [[ -n "$out" && "$got " == "$want" && ( "${out#*|}" == 0 || "$want" != "$(nodes | tr '\n' ' ')" ) ]] && break
      node_pid "$n" >/dev/null || fail_start "node $n exited during startup"
      (( SECONDS < deadline )) || fail_start "node $n not ready after ${TIMEOUT}s (brokers seen: '${got}', wanted: '${want% }')"
      sleep 0.5
    done
  done
}
fail_start() {
  local n
  for n in $(nodes); do echo "----- node $n: errors and tail of $DIR/node-$n/server.log"
    grep -E '\] (ERROR|FATAL) |^Caused by' "$DIR/node-$n/server.log" | tail -n 6; tail -n 12 "$DIR/node-$n/server.log"
  done >&2 2>/dev/null || true
  die "$1 (nodes left as they are; scripts/kafka.sh stop --dir $DIR)"
}

# ---- creating a cluster --------------------------------------------------
make_tls() {  # a CA and one broker certificate for localhost/127.0.0.1, PEM
  local t="$DIR/tls"; mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=privacy-router test CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$t/broker.key" -out "$t/broker.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" > "$t/broker.ext"
  openssl x509 -req -in "$t/broker.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
    -days 3650 -extfile "$t/broker.ext" -out "$t/broker.crt" 2>/dev/null
  # Kafka's PEM keystore: unencrypted PKCS#8 key, then the certificate chain.
  cat "$t/broker.key" "$t/broker.crt" "$t/ca.pem" > "$t/broker-keystore.pem"
  chmod 600 "$t"/*.key "$t/broker-keystore.pem"
}

write_node_config() {
  local n=$1 nd="$DIR/node-$n" rf isr voters="" m v
  rf=$(( BROKERS >= 3 ? 3 : 1 )); isr=$(( BROKERS >= 3 ? 2 : 1 ))
  for m in $(nodes); do v="CTRL_$m"; voters+="${voters:+,}$m@127.0.0.1:${!v}"; done
  local p c s listeners adv; p="$(port_of "$n")"; v="CTRL_$n"; c="${!v}"; v="SASL_$n"; s="${!v}"
  listeners="PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$c" adv="PLAINTEXT://127.0.0.1:$p"
  [[ "$SECURITY" == 1 ]] && { listeners+=",SASL_SSL://127.0.0.1:$s"; adv+=",SASL_SSL://127.0.0.1:$s"; }
  mkdir -p "$nd/data"
  cat > "$nd/server.properties" <<EOF
# Written by scripts/kafka.sh: node $n of a $BROKERS-node KRaft cluster (combined roles).
process.roles=broker,controller
node.id=$n
# Static quorum (kraft.version 0): format needs no --standalone/--initial-controllers.
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$adv
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
log.dirs=$nd/data
# Topics: tests create their own; the internal topics match the cluster size
# (1 node: same as docker-compose.yml; 3 nodes: RF 3, min ISR 2).
num.partitions=1
auto.create.topics.enable=false
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
# Fewer internal partitions than the default 50: faster first group/transaction.
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
# KIP-848 (group.protocol=consumer) is on by default in 4.x; setting
# group.coordinator.rebalance.protocols is deprecated in 4.4 and would only
# switch the streams protocol off, so it is left at its default.
# Quick transaction housekeeping and log cleaning, so tests can observe them.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
transaction.remove.expired.transaction.cleanup.interval.ms=5000
log.cleaner.backoff.ms=1000
# Files of deleted topics and cleaned segments go after 1 s, not 60 s, so a
# benchmark cell does not pay for removing the topics of one run earlier.
log.segment.delete.delay.ms=1000
# A 2-core machine: few threads.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1
EOF
  if [[ "$SECURITY" == 1 ]]; then cat >> "$nd/server.properties" <<EOF
# --security: SASL_SSL with SCRAM-SHA-512 (users added at format time), PEM TLS.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$DIR/tls/broker-keystore.pem
EOF
  fi
}

format_node() {  # only a node without meta.properties: restarts keep data
  local n=$1 nd="$DIR/node-$n" args=()
  [[ -f "$nd/data/meta.properties" ]] && return 0
  [[ "$SECURITY" == 1 ]] && args=(--add-scram 'SCRAM-SHA-512=[name=router,password=router-secret]'
                                  --add-scram 'SCRAM-SHA-512=[name=admin,password=admin-secret]')
  "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$LIBS/*" "$STORAGE_MAIN" \
    format --config "$nd/server.properties" --cluster-id "$CLUSTER_ID" "${args[@]}" > "$nd/format.log" 2>&1 \
    || { cat "$nd/format.log" >&2; die "formatting node $n failed"; }
}

create_cluster() {
  mkdir -p "$DIR"
  local ports n i=0
  read -r -a ports <<< "$(free_ports $((BROKERS * 3)))"
  # What `kafka-storage.sh random-uuid` prints (16 random bytes, URL-safe
  # base64, no padding, not starting with '-'), without another JVM start.
  CLUSTER_ID="$(python3 -c 'import base64,os
while (u := base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")).startswith("-"): pass
print(u)')"
  { echo "KAFKA_VERSION=$KAFKA_VERSION"; echo "BROKERS=$BROKERS"; echo "SECURITY=$SECURITY"; echo "CLUSTER_ID=$CLUSTER_ID"
    for n in $(nodes); do echo "PORT_$n=${ports[i]} CTRL_$n=${ports[i+1]} SASL_$n=${ports[i+2]}"; i=$((i + 3)); done
  } > "$DIR/cluster.env.tmp"
  source "$DIR/cluster.env.tmp"
  [[ "$SECURITY" == 1 ]] && make_tls
  mv "$DIR/cluster.env.tmp" "$DIR/cluster.env"
}

# Every `start` rewrites the configs from cluster.env (same ports, same
# cluster id), so changes to this script reach existing DIRs; data stays.
write_configs() {
  local n
  cat > "$DIR/log4j2.properties" <<'EOF'
# Quiet broker logging to stdout (redirected to node-N/server.log).
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
# "Kafka Server started" (4.x has no kafka.server.KafkaServer: ZooKeeper mode is gone)
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
EOF
  for n in $(nodes); do write_node_config "$n"; done
}

start_node() {
  local n=$1 nd="$DIR/node-$n" heap i
  node_pid "$n" >/dev/null && return 0
  heap="${KAFKA_HEAP_OPTS:-$( (( BROKERS > 1 )) && echo "-Xmx384m -Xms192m" || echo "-Xmx512m -Xms256m")}"
  rm -f "$nd/pid"
  echo "===== $(date -u +%FT%TZ) kafka.sh: starting node $n ($SERVER_MAIN, Kafka $KAFKA_VERSION)" >> "$nd/server.log"
  # setsid: own session, so the caller's Ctrl-C or exit doesn't reach it; the
  # inner shell writes its pid, then execs java (same pid).
  # shellcheck disable=SC2086
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$nd/pid" \
    "$JAVA" $heap -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$LIBS/*" "$SERVER_MAIN" "$nd/server.properties" \
    >> "$nd/server.log" 2>&1 < /dev/null &
  for i in $(seq 50); do [[ -s "$nd/pid" ]] && return 0; sleep 0.1; done
  die "node $n did not start (see $nd/server.log)"
}

print_bootstrap() {
  local n b="" s="" v
  for n in $(nodes); do b+="${b:+,}127.0.0.1:$(port_of "$n")"; v="SASL_$n"; s+="${s:+,}127.0.0.1:${!v}"; done
  echo "$b" > "$DIR/bootstrap"
  if [[ "$SECURITY" == 1 ]]; then
    echo "$s" > "$DIR/bootstrap-sasl-ssl"
    printf '%s\n' "bootstrap.servers=$s" "security.protocol=SASL_SSL" "sasl.mechanism=SCRAM-SHA-512" \
      'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="router" password="router-secret";' \
      "ssl.truststore.type=PEM" "ssl.truststore.location=$DIR/tls/ca.pem" > "$DIR/client-sasl-ssl.properties"
  fi
  echo "$b"
}

# ---- commands ------------------------------------------------------------
cmd_start() {
  local n t0=$SECONDS started=0 want_b="$BROKERS" want_s="$SECURITY"
  need_java
  if [[ -f "$DIR/cluster.env" ]]; then  # an earlier start: same ports, id, data
    load_cluster
    [[ -z "$want_b" || "$want_b" == "$BROKERS" ]] || die "$DIR holds a $BROKERS-node cluster; use another --dir, or stop it and remove $DIR"
    [[ -z "$want_s" || "$want_s" == "$SECURITY" ]] || die "$DIR was created with security=$SECURITY; use another --dir, or stop it and remove $DIR"
    ensure_libs
  else
    BROKERS="${BROKERS:-1}"; SECURITY="${SECURITY:-0}"
    [[ "$BROKERS" == 1 || "$BROKERS" == 3 ]] || die "--brokers must be 1 or 3"
    ensure_libs; create_cluster
  fi
  write_configs
  local fmt=(); for n in $(nodes); do format_node "$n" & fmt+=($!); done  # in parallel
  for n in "${fmt[@]}"; do wait "$n" || die "formatting KRaft storage failed"; done
  for n in $(nodes); do node_pid "$n" >/dev/null || { start_node "$n"; started=1; }; done
  (( started )) && say "waiting for $BROKERS node(s) in $DIR (timeout ${TIMEOUT}s) ..."
  wait_ready $(nodes)
  (( started )) && say "ready in $((SECONDS - t0))s" || say "already running"
  print_bootstrap
}

cmd_stop() {
  load_cluster
  local n pid pids=() i
  for n in $(nodes); do pid="$(node_pid "$n")" && { kill -TERM "$pid"; pids+=("$pid"); }; done
  for i in $(seq 200); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done  # 20 s
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && { say "pid $pid ignored SIGTERM for 20s: SIGKILL"; kill -KILL "$pid"; }; done
  for n in $(nodes); do rm -f "$DIR/node-$n/pid"; done
  say "stopped ${#pids[@]} node(s) in $DIR (data kept)"
}

cmd_kill_node() {
  load_cluster; local n=$1 pid i
  pid="$(node_pid "$n")" || die "node $n of $DIR is not running"
  kill -KILL "$pid"
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$DIR/node-$n/pid"; say "killed node $n (pid $pid)"
}

cmd_start_node() {
  load_cluster; need_java; ensure_libs
  local n=$1; [[ -f "$DIR/node-$n/server.properties" ]] || die "no node $n in $DIR"
  start_node "$n"; wait_ready "$n"; say "node $n is up on 127.0.0.1:$(port_of "$n")"
}

cmd_status() {
  [[ -f "$DIR/cluster.env" ]] || { echo "no cluster in $DIR"; exit 3; }
  load_cluster; local n pid up=0 v
  echo "cluster $CLUSTER_ID in $DIR: $BROKERS node(s), Kafka $KAFKA_VERSION, security=$SECURITY"
  for n in $(nodes); do
    v="CTRL_$n"
    if pid="$(node_pid "$n")"; then up=$((up + 1))
      echo "node $n: running pid $pid, 127.0.0.1:$(port_of "$n") (controller ${!v}), RSS $(awk '/VmRSS/{print $2 $3}' "/proc/$pid/status")"
    else echo "node $n: stopped"; fi
  done
  [[ -f "$DIR/bootstrap" ]] && echo "bootstrap: $(cat "$DIR/bootstrap")"
  [[ -f "$DIR/bootstrap-sasl-ssl" ]] && echo "bootstrap-sasl-ssl: $(cat "$DIR/bootstrap-sasl-ssl")"
  (( up == BROKERS ))  || exit 3
}

# ---- arguments -----------------------------------------------------------
[[ $# -ge 1 ]] || usage
CMD=$1; shift
NODE=""
if [[ "$CMD" == kill-node || "$CMD" == start-node ]]; then
  [[ "${1:-}" =~ ^[1-9]$ ]] || die "$CMD needs a node number"; NODE=$1; shift
fi
DIR="target/kafka"; BROKERS=""; SECURITY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --brokers) BROKERS="${2:?--brokers needs 1 or 3}"; shift 2 ;;
    --security) SECURITY=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ "$CMD" == start || ( -z "$BROKERS" && -z "$SECURITY" ) ]] || die "--brokers/--security are options of start"
# A relative DIR is relative to the repo root (we cd there); make it absolute,
# since node processes are recognised by their config path.
[[ "$DIR" == /* ]] || DIR="$ROOT/$DIR"
DIR="$(realpath -m "$DIR")"
case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  kill-node) cmd_kill_node "$NODE" ;;
  start-node) cmd_start_node "$NODE" ;;
  *) usage ;;
esac
