#!/usr/bin/env python3
"""Checks a peer against privacy-router on a real broker (benches/peers/test.sh
drives it; needs confluent-kafka, e.g. the venv of benches/peers/quix/run.sh).

  verify.py input --engine BIN --count N [--seed S] -o FILE
      canonical JSON events from `privacy-router sample --no-anomalies`, with
      anomalies mixed in: events left out (so a later version of the entity is
      a gap), exact replays of earlier events (duplicates, or stale when the
      entity moved on), truncated JSON and unknown event types.
  verify.py load --bootstrap B --topic T FILE
      produces the lines in order, keyed by entity_id (idempotent producer).
  verify.py check --bootstrap B --expected DIR --input FILE [--public T ...]
      reads the three tier topics (and the dead-letter topic) read_committed
      and compares them with what `privacy-router replay` wrote for the same
      file with JSON output (DIR): per tier exactly the events privacy-router
      routes, each once, with the same headers (x-version-gap included) and
      the same value except the fields privacy-router pseudonymises below
      their tier (the peers remove them); no record carries a field above its
      tier or one the schema does not know; internal and restricted keys equal
      entity_id.
  verify.py topics --bootstrap B [--partitions 6] TOPIC...
      (re)creates the topics, empty.
  verify.py rate --bootstrap B --topic T --count N [--pid P]
      waits until T holds N committed records; prints the events/s between
      the first and the last, and the CPU seconds of process P meanwhile.
"""

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIERS = ("public", "internal", "restricted")
RANK = {t: i for i, t in enumerate(TIERS)}


# ---- input ----

def make_input(a):
    lines = subprocess.run(
        [a.engine, "sample", "--count", str(a.count), "--seed", str(a.seed), "--no-anomalies",
         "--entities", str(a.entities)],
        check=True, capture_output=True, text=True).stdout.splitlines()
    rng = random.Random(a.seed)
    out, later = [], collections.defaultdict(list)
    seen = collections.defaultdict(list)  # entity -> earlier lines
    stats = collections.Counter()
    for i, line in enumerate(lines):
        out.extend(later.pop(i, []))
        e = json.loads(line)
        entity = (e["entity_type"], e["entity_id"])
        r = rng.random()
        if r < 0.03:
            stats["left out (gap later)"] += 1
            continue
        out.append(line)
        seen[entity].append(line)
        r = rng.random()
        if r < 0.03:
            later[i + rng.randint(1, 40)].append(line)  # duplicate, or stale if the entity moves on
            stats["replayed later"] += 1
        elif r < 0.04 and len(seen[entity]) > 1:
            out.append(rng.choice(seen[entity][:-1]))  # an older version: stale
            stats["older version replayed"] += 1
        elif r < 0.045:
            out.append(line[: len(line) // 2])
            stats["truncated JSON"] += 1
        elif r < 0.05:
            bad = dict(e, event_type=e["entity_type"] + ".teleported", event_id=str(uuid.UUID(int=rng.getrandbits(128))))
            out.append(json.dumps(bad))
            stats["unknown event type"] += 1
    for k in sorted(later):
        out.extend(later[k])
    with open(a.output, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"verify.py input: {a.output}: {len(out)} records from {len(lines)} sample events; "
          + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())), file=sys.stderr)


# ---- load ----

def load(a):
    p = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True, "linger.ms": 20,
                  "compression.type": "lz4", "batch.num.messages": 10000})
    n = 0
    with open(a.file, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            try:
                key = json.loads(line).get("entity_id")
            except ValueError:
                key = None
            while True:
                try:
                    p.produce(a.topic, value=line, key=key.encode() if isinstance(key, str) else None)
                    break
                except BufferError:
                    p.poll(0.1)
            n += 1
            p.poll(0)
    if p.flush(60) != 0:
        raise SystemExit("verify.py load: records left unsent")
    print(f"verify.py load: {n} records into {a.topic}", file=sys.stderr)


# ---- reading a topic read_committed ----

def read_topic(bootstrap, topic, want=None, timeout=180.0, quiet=3.0):
    """Every committed record of the topic (key, headers, value bytes), read
    until the topic holds `want` records (or, without `want`, until every
    partition is at its end) and nothing more arrives for `quiet` seconds."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{uuid.uuid4()}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    md = c.list_topics(topic, timeout=10).topics[topic]
    if md.error is not None:
        raise SystemExit(f"verify.py: topic {topic}: {md.error}")
    parts = sorted(md.partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    records, at_end, start, last_new = [], set(), time.monotonic(), time.monotonic()
    while True:
        m = c.poll(0.2)
        now = time.monotonic()
        if m is not None:
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    at_end.add(m.partition())
                else:
                    raise SystemExit(f"verify.py: {topic}: {m.error()}")
            else:
                at_end.discard(m.partition())
                records.append((m.key(), dict((k, v.decode()) for k, v in (m.headers() or [])), m.value()))
                last_new = now
                continue
        done = len(records) >= want if want is not None else len(at_end) == len(parts)
        if done and len(at_end) == len(parts) and now - last_new >= quiet:
            break
        if now - start > timeout:
            print(f"verify.py: {topic}: timed out after {timeout:.0f} s with {len(records)} records", file=sys.stderr)
            break
    c.close()
    return records


# ---- check ----

def strip_hashed(value, shape, rank):
    """privacy-router's record minus the fields it pseudonymises below their
    tier (the peers remove those)."""
    if not isinstance(value, dict) or "record" not in shape:
        if isinstance(value, list) and "array" in shape:
            return [strip_hashed(x, shape["array"], rank) for x in value]
        if isinstance(value, dict) and "map" in shape:
            return {k: strip_hashed(x, shape["map"], rank) for k, x in value.items()}
        return value
    out = {}
    for k, v in value.items():
        f = shape["record"].get(k)
        if f is not None and RANK[f["tier"]] > rank and f.get("redact") == "hash":
            continue
        out[k] = strip_hashed(v, f, rank) if f is not None else v
    return out


def leaks(value, shape, rank, path=""):
    """Paths in a tier record that the tier must not see."""
    out = []
    if isinstance(value, dict) and "record" in shape:
        for k, v in value.items():
            f = shape["record"].get(k)
            p = f"{path}.{k}" if path else k
            if f is None:
                out.append(p + " (unknown)")
            elif RANK[f["tier"]] > rank:
                out.append(p)
            else:
                out += leaks(v, f, rank, p)
    elif isinstance(value, list) and "array" in shape:
        for x in value:
            out += leaks(x, shape["array"], rank, path + "[]")
    elif isinstance(value, dict) and "map" in shape:
        for x in value.values():
            out += leaks(x, shape["map"], rank, path + "{}")
    return out


def wait_caught_up(bootstrap, group, topic, timeout):
    """Waits until the consumer group has committed the end of every
    partition of the topic (the peer has processed all of its input)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
    deadline = time.monotonic() + timeout
    while True:
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        done = [tp.offset for tp in c.committed(parts, timeout=10)]
        if all(d >= e for d, e in zip(done, ends)):
            break
        if time.monotonic() > deadline:
            print(f"verify.py: group {group} has not caught up with {topic} after {timeout:.0f} s", file=sys.stderr)
            break
        time.sleep(0.5)
    c.close()


def check(a):
    classes = json.load(open(a.classification))["event_types"]
    if a.group:
        wait_caught_up(a.bootstrap, a.group, a.source, a.timeout)
    problems = []
    inputs, seen_ids, replays = 0, set(), 0
    with open(a.input) as f:
        for line in f:
            inputs += 1
            try:
                eid = json.loads(line).get("event_id")
            except ValueError:
                continue
            replays += eid in seen_ids
            seen_ids.add(eid)
    summary = []
    for tier in TIERS:
        expected = [json.loads(l) for l in open(os.path.join(a.expected, f"{tier}.jsonl"))]
        got = read_topic(a.bootstrap, getattr(a, tier), want=len(expected), timeout=a.timeout)
        by_id = collections.defaultdict(list)
        for key, headers, raw in got:
            v = json.loads(raw)
            by_id[v["event_id"]].append((key.decode() if key is not None else None, headers, v))
        want_ids = collections.Counter(e["value"]["event_id"] for e in expected)
        dup = [i for i, recs in by_id.items() if len(recs) > 1]
        missing = [i for i in want_ids if i not in by_id]
        extra = [i for i in by_id if i not in want_ids]
        for name, ids in (("written more than once", dup), ("missing", missing), ("not routed by privacy-router", extra)):
            if ids:
                problems.append(f"{tier}: {len(ids)} event(s) {name}, e.g. {ids[:3]}")
        value_diffs = header_diffs = key_diffs = 0
        leaked = collections.Counter()
        gaps = 0
        for e in expected:
            recs = by_id.get(e["value"]["event_id"])
            if not recs:
                continue
            key, headers, v = recs[0]
            ev = e["value"]
            shape = {"record": classes[ev["event_type"]]["versions"][str(ev["schema_version"])]}
            for p in leaks(v, shape, RANK[tier]):
                leaked[p] += 1
            if v != strip_hashed(ev, shape, RANK[tier]):
                value_diffs += 1
                if value_diffs <= 3:
                    problems.append(f"{tier}: value of {ev['event_id']} differs: peer {json.dumps(v, sort_keys=True)[:400]} "
                                    f"privacy-router {json.dumps(strip_hashed(ev, shape, RANK[tier]), sort_keys=True)[:400]}")
            if headers != e["headers"]:
                header_diffs += 1
                if header_diffs <= 3:
                    problems.append(f"{tier}: headers of {ev['event_id']}: peer {headers}, privacy-router {e['headers']}")
            gaps += "x-version-gap" in headers
            want_key = e["key"] if tier != "public" else None  # public: privacy-router keys by the pseudonym
            if want_key is not None and key != want_key:
                key_diffs += 1
        if value_diffs > 3:
            problems.append(f"{tier}: {value_diffs} values differ in all")
        if header_diffs > 3:
            problems.append(f"{tier}: {header_diffs} header sets differ in all")
        if key_diffs:
            problems.append(f"{tier}: {key_diffs} keys are not entity_id")
        for p, n in sorted(leaked.items()):
            problems.append(f"{tier}: {n} record(s) carry {p}, above the tier")
        summary.append(f"  {tier:<10} {getattr(a, tier):<28} expected {len(expected):>6}  got {len(got):>6}  "
                       f"distinct events {len(by_id):>6}  with x-version-gap {gaps:>4}  "
                       f"fields above the tier {sum(leaked.values())}")
    if a.dead_letter:
        expected = sum(1 for _ in open(os.path.join(a.expected, "dead-letter.jsonl")))
        got = read_topic(a.bootstrap, a.dead_letter, want=expected, timeout=a.timeout)
        summary.append(f"  {'dead letter':<10} {a.dead_letter:<28} expected {expected:>6}  got {len(got):>6}")
        if len(got) != expected:
            problems.append(f"dead letter: {len(got)} records, privacy-router wrote {expected}")
    print(f"verify.py check: {a.input}: {inputs} input records, {replays} of them replays of an earlier "
          f"event_id (to be skipped as duplicate or stale)")
    print("\n".join(summary))
    if problems:
        print("\n".join("FAIL " + p for p in problems))
        raise SystemExit(1)
    print("verify.py check: OK")


# ---- topics ----

def topics(a):
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    existing = set(admin.list_topics(timeout=10).topics) & set(a.topics)
    if existing:
        for f in admin.delete_topics(sorted(existing)).values():
            f.result()
        deadline = time.monotonic() + 30
        while set(admin.list_topics(timeout=10).topics) & existing and time.monotonic() < deadline:
            time.sleep(0.2)
    while True:
        futures = admin.create_topics([NewTopic(t, a.partitions, 1) for t in a.topics])
        try:
            for f in futures.values():
                f.result()
            break
        except Exception as e:  # a deleted topic can take a moment to go
            if "already exists" not in str(e) and "marked for deletion" not in str(e):
                raise
            time.sleep(0.5)
            admin.delete_topics([t for t in a.topics if t in admin.list_topics(timeout=10).topics])
    print(f"verify.py topics: {', '.join(a.topics)} ({a.partitions} partitions)", file=sys.stderr)


# ---- rate ----

def cpu_seconds(pid):
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(a):
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": f"verify-{uuid.uuid4()}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "fetch.min.bytes": 1})
    md = c.list_topics(a.topic, timeout=10).topics[a.topic]
    c.assign([TopicPartition(a.topic, p, 0) for p in md.partitions])
    n, first, deadline = 0, None, time.monotonic() + a.timeout
    cpu0 = None
    while n < a.count and time.monotonic() < deadline:
        msgs = c.consume(10000, 0.2)
        if msgs and first is None:
            first, cpu0 = time.monotonic(), cpu_seconds(a.pid)
        n += sum(1 for m in msgs if not m.error())
    end, cpu1 = time.monotonic(), cpu_seconds(a.pid)
    c.close()
    if first is None or end <= first:
        raise SystemExit(f"verify.py rate: {a.topic}: {n} records, no rate")
    line = f"verify.py rate: {a.topic}: {n} records in {end - first:.1f} s after the first: {n / (end - first):,.0f}/s"
    if cpu0 is not None:
        line += f"; process {a.pid}: {cpu1 - cpu0:.1f} CPU s, {1e6 * (cpu1 - cpu0) / max(n, 1):.0f} CPU µs per record"
    print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("input")
    p.add_argument("--engine", default="target/release/privacy-router")
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--entities", type=int, default=40)
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("load")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", default="events.raw")
    p.add_argument("file")
    p = sub.add_parser("check")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--expected", required=True, help="privacy-router replay --out DIR (JSON output)")
    p.add_argument("--input", required=True)
    p.add_argument("--classification", default="target/peers/classification.json")
    for t in TIERS:
        p.add_argument(f"--{t}", default=f"events.{t}")
    p.add_argument("--dead-letter", default=None)
    p.add_argument("--group", help="first wait until this consumer group (the peer's) has committed "
                                   "the end of --source")
    p.add_argument("--source", default="events.raw")
    p.add_argument("--timeout", type=float, default=180)
    p = sub.add_parser("topics")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("topics", nargs="+")
    p = sub.add_parser("rate")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    {"input": make_input, "load": load, "check": check, "topics": topics, "rate": rate}[a.cmd](a)


if __name__ == "__main__":
    main()
