#!/usr/bin/env bash
# A long chaos run on real Kafka (not part of CI):
#
#   bash scripts/chaos.sh [--events N] [--kills K] [--instances I] [--brokers 1|3] [--stream-threads T]
#
# Defaults: 1,000,000 events, 20 kills, 3 instances, 1 broker. It starts a
# Kafka of its own (scripts/kafka.sh; with --brokers 3 a three-node cluster,
# one of whose brokers is killed and restarted once mid-run), feeds the
# events while processors are SIGKILLed at random and restarted, then reads
# every tier and the dead-letter topic read_committed and compares them with
# what the pure engine emits. Its last line:
#
#   chaos: events=N kills=K lost=L duplicated=D misordered=M
#
# and its exit status is 0 only when L, D and M are all zero.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin privacy-router
cargo bench --bench chaos -- "$@"
