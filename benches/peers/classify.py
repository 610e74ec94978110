#!/usr/bin/env python3
"""Writes the peers' classification file: per event type and schema version,
each field's privacy tier, read from our own Avro schemas the way
privacy-router's `classify` reads them.

  python3 benches/peers/classify.py [--schemas avro] [--topology topology/default.yaml]
                                    [-o target/peers/classification.json]
                                    [--engine BIN | --no-engine-check]

Rules (src/classify.rs, src/schema/mod.rs):
* a field's `"privacy"` label and its `"confluent:tags"` mapped by the
  topology's `classification.tags` (default PII/INTERNAL/PUBLIC): the
  strictest wins; an unmapped tag adds nothing;
* with neither, its own record's `"privacy"` default; with none, restricted
  (fail closed);
* `classification.overrides` (record full name -> field path inside it ->
  tier floor) raise a tier, never lower it;
* `event_types.<type>.tiers` limits the tiers an event type reaches, and
  `event_types.<type>.versions` maps producer versions to schema versions.

The file (JSON), read by both peers:

  {"event_types": {"user.created": {
      "tiers": ["public", "internal", "restricted"],
      "versions": {"1": {"event_id": {"tier": "public"},
                         "entity_id": {"tier": "internal", "redact": "hash"},
                         "actor": {"tier": "public", "record": {...}},
                         "data": {"tier": "public", "record": {
                             "items": {"tier": "public", "array": {"record": {...}}},
                             ...}}}}}}}

A field is {"tier", optional "redact", and where its type holds records one
of "record" (the fields), "array" or "map" (the shape of the items or
values, again a {"record"|"array"|"map"} object)}. A union is read as its
branches merged: a record's fields are the union of the branches' fields,
the strictest tier where two branches have a field of the same name. Fields
whose type holds no record are leaves, kept or removed whole.

The tier record of tier T keeps a field when its tier <= T (a container
above T is removed whole); a key the file does not know is restricted.

Unless --no-engine-check is given, the result is checked field by field
against `privacy-router privacy-report` (the engine's own answer: each
field path's tier, `redact`, and kept/hashed/removed/not routed per tier)
and the script fails on any difference. Fields that the engine hashes below
their tier are removed by the peers instead (they make no pseudonyms).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys

TIERS = ["public", "internal", "restricted"]
RANK = {t: i for i, t in enumerate(TIERS)}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
DEFAULT_TAGS = {"PII": "restricted", "INTERNAL": "internal", "PUBLIC": "public"}


def stricter(a, b):
    return a if RANK[a] >= RANK[b] else b


class Compiler:
    """Walks one event type's schema (the envelope with its payload)."""

    def __init__(self, tags, overrides):
        self.tags = tags
        self.overrides = overrides
        self.names = {}  # full name -> compiled shape (None for enums and fixed)
        self.scopes = []  # [record full name, path from it]: where overrides apply

    def fullname(self, name, ns):
        if "." in name:
            return name
        return f"{ns}.{name}" if ns else name

    def shape(self, t, ns):
        """The shape of a type: None (a leaf), {"record": fields},
        {"array": shape} or {"map": shape}; plus the flat paths for the check."""
        if isinstance(t, str):
            if t in PRIMITIVES:
                return None
            full = self.fullname(t, ns)
            if full not in self.names:
                full = next((n for n in self.names if n.rsplit(".", 1)[-1] == t), None)
                if full is None:
                    raise SystemExit(f"classify.py: unknown type {t!r}")
            return self.names[full]
        if isinstance(t, list):
            shapes = [self.shape(b, ns) for b in t]
            return merge([s for s in shapes if s is not None])
        kind = t.get("type")
        if kind == "record":
            full = self.fullname(t["name"], t.get("namespace", ns))
            inner_ns = full.rsplit(".", 1)[0] if "." in full else None
            out = {"record": {}}
            self.names[full] = out  # recursive references see it
            self.scopes.append([full, ""])
            default = t.get("privacy")
            for f in t["fields"]:
                out["record"][f["name"]] = self.field(f, default, inner_ns)
            self.scopes.pop()
            return out
        if kind in ("enum", "fixed"):
            self.names[self.fullname(t["name"], t.get("namespace", ns))] = None
            return None
        if kind == "array":
            s = self.shape(t["items"], ns)
            return None if s is None else {"array": s}
        if kind == "map":
            s = self.shape(t["values"], ns)
            return None if s is None else {"map": s}
        if isinstance(kind, (dict, list)):
            return self.shape(kind, ns)
        return None  # a primitive with a logical type

    def field(self, f, record_default, ns):
        name = f["name"]
        before = [p for _, p in self.scopes]
        for s in self.scopes:
            s[1] = f"{s[1]}.{name}" if s[1] else name
        paths = [(r, p) for r, p in self.scopes]
        shape = self.shape(f["type"], ns)
        for s, p in zip(self.scopes, before):
            s[1] = p
        label = f.get("privacy")
        mapped = [self.tags[x] for x in f.get("confluent:tags", []) if x in self.tags]
        if label is None and not mapped:
            tier = record_default or "restricted"  # fail closed
        else:
            tier = label or mapped[0]
            for m in mapped:
                tier = stricter(tier, m)
        for record, path in paths:
            floor = self.overrides.get(record, {}).get(path)
            if floor:
                tier = stricter(tier, floor)
        out = {"tier": tier}
        if f.get("redact") == "hash":
            out["redact"] = "hash"
        if shape is not None:
            out.update(shape)
        return out


def merge(shapes):
    """Union branches: one shape holding every branch's fields."""
    if not shapes:
        return None
    if len(shapes) == 1:
        return shapes[0]
    out = {}
    for s in shapes:
        for kind, inner in s.items():
            if kind == "record":
                fields = out.setdefault("record", {})
                for name, f in inner.items():
                    fields[name] = merge_field(fields[name], f) if name in fields else f
            else:
                out[kind] = merge([out[kind], inner]) if kind in out else inner
    return out


def merge_field(a, b):
    out = {"tier": stricter(a["tier"], b["tier"])}
    if a.get("redact") == "hash" and b.get("redact") == "hash":
        out["redact"] = "hash"
    shape = merge([{k: v for k, v in x.items() if k in ("record", "array", "map")} for x in (a, b)
                   if any(k in x for k in ("record", "array", "map"))])
    if shape:
        out.update(shape)
    return out


# ---- flat paths, in the privacy report's notation, for the engine check ----

def flat_paths(schema_json, tags, overrides):
    """(path, tier, redact) for every field, walking the schema as the report
    does: `a.b`, `[]` into arrays, `{}` into maps, `<Name>` into one record
    branch of a union with several."""
    out = []
    names = {}

    def full(name, ns):
        return name if "." in name else (f"{ns}.{name}" if ns else name)

    def records_of(t, ns):
        """The record branches of a type: [(short name, record json, ns)],
        with the suffix ([] / {}) the path takes to reach them."""
        if isinstance(t, str):
            if t in PRIMITIVES:
                return "", []
            n = full(t, ns)
            if n not in names:
                n = next((k for k in names if k.rsplit(".", 1)[-1] == t), n)
            d = names.get(n)
            if d is None or d.get("type") != "record":
                return "", []
            return "", [(d["name"].rsplit(".", 1)[-1], d, n.rsplit(".", 1)[0])]
        if isinstance(t, list):
            suffix, recs = "", []
            for b in t:
                s, r = records_of(b, ns)
                suffix = suffix or s
                recs += r
            return suffix, recs
        kind = t.get("type")
        if kind == "record":
            n = full(t["name"], t.get("namespace", ns))
            names[n] = t
            return "", [(t["name"].rsplit(".", 1)[-1], t, n.rsplit(".", 1)[0] if "." in n else None)]
        if kind in ("enum", "fixed"):
            names[full(t["name"], t.get("namespace", ns))] = t
            return "", []
        if kind == "array":
            s, r = records_of(t["items"], ns)
            return "[]" + s, r
        if kind == "map":
            s, r = records_of(t["values"], ns)
            return "{}" + s, r
        if isinstance(kind, (dict, list)):
            return records_of(kind, ns)
        return "", []

    def walk(record, ns, prefix, scopes):
        default = record.get("privacy")
        for f in record["fields"]:
            name = f["name"]
            path = f"{prefix}.{name}" if prefix else name
            inner_scopes = [(r, f"{p}.{name}" if p else name) for r, p in scopes]
            label = f.get("privacy")
            mapped = [tags[x] for x in f.get("confluent:tags", []) if x in tags]
            if label is None and not mapped:
                tier = default or "restricted"
            else:
                tier = label or mapped[0]
                for m in mapped:
                    tier = stricter(tier, m)
            for r, p in inner_scopes:
                floor = overrides.get(r, {}).get(p)
                if floor:
                    tier = stricter(tier, floor)
            out.append((path, tier, f.get("redact") == "hash"))
            suffix, recs = records_of(f["type"], ns)
            for short, rec, rns in recs:
                rname = full(rec["name"], rec.get("namespace", rns))
                branch = f"<{short}>" if len(recs) > 1 else ""
                walk(rec, rname.rsplit(".", 1)[0], path + suffix + branch,
                     inner_scopes + [(rname, "")])

    top = full(schema_json["name"], schema_json.get("namespace"))
    names[top] = schema_json
    walk(schema_json, top.rsplit(".", 1)[0], "", [(top, "")])
    return out


# ---- the schemas and the topology ----

def event_schemas(folder):
    """{event_type: {version: envelope schema json}} from the schema folder."""
    envelope = json.load(open(os.path.join(folder, "envelope.avsc")))
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "events", "*", "*.avsc"))):
        base = os.path.basename(path)[: -len(".avsc")]
        m = re.fullmatch(r"(.+)\.v(\d+)", base)
        event_type, version = (m.group(1), int(m.group(2))) if m else (base, 1)
        domain, short = event_type.split(".", 1)
        payload = json.load(open(path))
        env = json.loads(json.dumps(envelope))
        env["name"] = domain.capitalize() + "".join(p.capitalize() for p in short.split("_"))
        env["namespace"] = f"com.privacyrouter.events.{domain}"
        for f in env["fields"]:
            if f["type"] == "PAYLOAD":
                f["type"] = payload
        out.setdefault(event_type, {})[version] = env
    return out


def load_topology(path):
    try:
        import yaml
    except ImportError:
        raise SystemExit("classify.py: needs PyYAML to read the topology (pip install pyyaml)")
    return yaml.safe_load(open(path)) or {}


def build(schemas_dir, topology):
    cls = topology.get("classification") or {}
    tags = cls.get("tags") or DEFAULT_TAGS
    overrides = cls.get("overrides") or {}
    limits = topology.get("event_types") or {}
    schemas = event_schemas(schemas_dir)
    out = {}
    flat = {}
    for event_type, versions in sorted(schemas.items()):
        conf = limits.get(event_type) or {}
        tiers = [t for t in TIERS if t in (conf.get("tiers") or TIERS)]
        mapping = conf.get("versions") or {v: v for v in versions}
        entry = {"tiers": tiers, "versions": {}}
        for producer_version, schema_version in sorted(mapping.items()):
            schema = versions[int(schema_version)]
            shape = Compiler(tags, overrides).shape(schema, None)
            entry["versions"][str(producer_version)] = shape["record"]
            flat[(event_type, int(schema_version))] = (tiers, flat_paths(schema, tags, overrides))
        out[event_type] = entry
    return out, flat


# ---- the engine check: privacy-router privacy-report ----

def split_row(line):
    cells, cur, i = [], "", 1
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            cur += line[i : i + 2]
            i += 2
            continue
        if c == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    return cells


def unescape(md):
    md = md.strip("`")
    for a, b in (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")):
        md = md.replace(a, b)
    return re.sub(r"\\(.)", r"\1", md)


def engine_report(engine, topology_path, schemas_dir):
    text = subprocess.run(
        [engine, "privacy-report", "--topology", topology_path, "--schemas", schemas_dir],
        check=True, capture_output=True, text=True,
    ).stdout
    report, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^### `([^`]+)` v(\d+)$", line)
        if m:
            current = report.setdefault((m.group(1), int(m.group(2))), {})
            continue
        if current is not None and line.startswith("| `"):
            cells = split_row(line)
            path = unescape(cells[0])
            current[path] = {
                "tier": cells[2], "redact": cells[4] == "hash",
                "public": cells[5], "internal": cells[6], "restricted": cells[7],
            }
    return report


def check_against_engine(flat, report):
    problems = []
    for key, (tiers, paths) in sorted(flat.items()):
        fields = report.get(key)
        if fields is None:
            problems.append(f"{key[0]} v{key[1]}: not in the engine's report")
            continue
        mine = {}
        for path, tier, redact in paths:
            mine[path] = (tier, redact)
        if set(mine) != set(fields):
            problems.append(f"{key[0]} v{key[1]}: paths differ: only here {sorted(set(mine) - set(fields))}, "
                            f"only in the engine {sorted(set(fields) - set(mine))}")
            continue
        for path, (tier, redact) in mine.items():
            e = fields[path]
            if (tier, redact) != (e["tier"], e["redact"]):
                problems.append(f"{key[0]} v{key[1]}: {path}: tier {tier}/{redact}, engine {e['tier']}/{e['redact']}")
            # the treatment per tier, as the peers apply it
            for t in TIERS:
                if t not in tiers:
                    want = {"not routed"}
                elif container_above(path, mine, t):
                    want = {"removed (container)"}
                elif RANK[tier] <= RANK[t]:
                    want = {"kept"}
                else:
                    want = {"hashed"} if redact else {"removed"}
                if e[t] not in want:
                    problems.append(f"{key[0]} v{key[1]}: {path}: {t} {e[t]}, peers' rule says {want}")
    return problems


def container_above(path, mine, tier):
    for prefix in parents(path):
        if prefix in mine and RANK[mine[prefix][0]] > RANK[tier]:
            return True
    return False


def parents(path):
    """The field paths above a path: `a.b[].c<X>.d` -> a, a.b, a.b[].c."""
    out = []
    depth_cut = [m.start() for m in re.finditer(r"\.", path)]
    for i in depth_cut:
        p = re.sub(r"(\[\]|\{\}|<[^>]*>)+$", "", path[:i])
        if p and p != path and p not in out:
            out.append(p)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemas", default="avro")
    ap.add_argument("--topology", default="topology/default.yaml")
    ap.add_argument("-o", "--output", default="target/peers/classification.json")
    ap.add_argument("--engine", default=None,
                    help="privacy-router binary whose privacy-report the result is checked against "
                         "(default target/release/privacy-router; skipped with a warning when that is not built)")
    ap.add_argument("--no-engine-check", action="store_true")
    a = ap.parse_args()
    topology = load_topology(a.topology)
    event_types, flat = build(a.schemas, topology)
    if a.engine is None:
        a.engine = "target/release/privacy-router"
        if not os.access(a.engine, os.X_OK) and not a.no_engine_check:
            print(f"classify.py: warning: {a.engine} is not built: not checked against the engine's privacy-report",
                  file=sys.stderr)
            a.no_engine_check = True
    if not a.no_engine_check:
        if not os.access(a.engine, os.X_OK):
            raise SystemExit(f"classify.py: {a.engine} not found: build it, pass --engine, or --no-engine-check")
        problems = check_against_engine(flat, engine_report(a.engine, a.topology, a.schemas))
        if problems:
            print("\n".join(problems), file=sys.stderr)
            raise SystemExit(f"classify.py: {len(problems)} difference(s) from the engine's privacy-report")
    doc = {
        "generated_by": "benches/peers/classify.py",
        "schemas": a.schemas,
        "topology": a.topology,
        "checked_against_engine": not a.no_engine_check,
        "tiers": TIERS,
        "event_types": event_types,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    fields = sum(len(p) for _, p in flat.values())
    print(f"classify.py: {a.output}: {len(event_types)} event types, {len(flat)} schema versions, "
          f"{fields} field paths" + ("" if a.no_engine_check else ", identical to the engine's privacy-report"),
          file=sys.stderr)


if __name__ == "__main__":
    main()
