"""privacy-router's job written with Quix Streams: raw JSON events in, one
projection per privacy tier out, in order per entity.

  raw topic -> in_order (state: entity_type -> last version, per message key)
            -> branch per tier: routed? -> headers -> project -> tier topic

The input must be keyed by entity_id (as privacy-router's producers key it):
Quix keeps state per message key, so the version store's key is
(message key = entity_id, entity_type). Records that are not routable events
(not JSON, unknown event type or schema version, no entity keys, a key other
than entity_id) are logged by reason and skipped.
"""

import argparse
import json
import logging
import sys

from quixstreams import Application
from quixstreams.models.serializers.exceptions import SerializationError

TIERS = ("public", "internal", "restricted")
RANK = {t: i for i, t in enumerate(TIERS)}
log = logging.getLogger("quix-peer")
counts = {"routed": 0, "skipped": 0, "gaps": 0, "rejected": 0}


class Rejected(Exception):
    """Not a routable event; the message is a reason code, never a value."""


def load_classification(path):
    """{event_type: (tiers, {schema_version: envelope shape})}, where a shape
    is None (a leaf), ("record", {name: (rank, shape)}), ("array", shape) or
    ("map", shape)."""

    def shape(node):
        if "record" in node:
            return ("record", {name: (RANK[f["tier"]], shape(f)) for name, f in node["record"].items()})
        if "array" in node:
            return ("array", shape(node["array"]))
        if "map" in node:
            return ("map", shape(node["map"]))
        return None

    doc = json.load(open(path))
    return {
        name: (frozenset(et["tiers"]), {int(v): shape({"record": fields}) for v, fields in et["versions"].items()})
        for name, et in doc["event_types"].items()
    }


def project(value, shape, rank):
    """The value as the tier of `rank` may see it: fields above the tier
    removed with everything inside them, keys the schema does not know removed
    (unlabelled = restricted)."""
    if shape is None or value is None:
        return value
    kind, inner = shape
    if kind == "record" and isinstance(value, dict):
        out = {}
        for k, v in value.items():
            f = inner.get(k)
            if f is not None and f[0] <= rank:
                out[k] = project(v, f[1], rank)
        return out
    if kind == "array" and isinstance(value, list):
        return [project(x, inner, rank) for x in value]
    if kind == "map" and isinstance(value, dict):
        return {k: project(x, inner, rank) for k, x in value.items()}
    return value


def main():
    ap = argparse.ArgumentParser(description="privacy-router's job in Quix Streams")
    ap.add_argument("--bootstrap", default="localhost:9092")
    ap.add_argument("--application-id", default="peer-quix", help="consumer group")
    ap.add_argument("--input", default="events.raw")
    ap.add_argument("--public", default="events.public")
    ap.add_argument("--internal", default="events.internal")
    ap.add_argument("--restricted", default="events.restricted")
    ap.add_argument("--guarantee", default="exactly-once", choices=["exactly-once", "at-least-once"])
    ap.add_argument("--classification", default="target/peers/classification.json")
    ap.add_argument("--state-dir", default="target/peers/quix-state")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    classes = load_classification(a.classification)

    def in_order(event, key, timestamp, headers, state):
        """Duplicates and stale versions -> None; else (event, missing versions)."""
        if not isinstance(event, dict):
            raise Rejected("malformed_json")
        et = classes.get(event.get("event_type"))
        if et is None:
            raise Rejected("unknown_event_type")
        if event.get("schema_version") not in et[1]:
            raise Rejected("unknown_schema_version")
        entity_type, version = event.get("entity_type"), event.get("entity_version")
        if not isinstance(entity_type, str) or type(version) is not int or version < 1:
            raise Rejected("invalid_envelope")
        if key != event.get("entity_id"):
            raise Rejected("key_is_not_entity_id")
        last = state.get(entity_type)
        if last is not None and version <= last:
            counts["skipped"] += 1
            return None
        state.set(entity_type, version)
        missing = 0 if last is None else version - last - 1
        counts["routed"] += 1
        counts["gaps"] += missing > 0
        return (event, missing)

    def on_error(exc, row_or_message, logger):
        """Log the reason (never the value) and skip the record."""
        if isinstance(exc, Rejected):
            reason = str(exc)
        elif isinstance(exc, SerializationError):
            reason = "malformed_json"  # its message may quote the payload
        else:
            return False  # a bug or a Kafka error: stop
        counts["rejected"] += 1
        log.warning("record skipped: %s", reason)
        return True

    app = Application(
        broker_address=a.bootstrap,
        consumer_group=a.application_id,
        auto_offset_reset="earliest",
        commit_interval=0.1,
        processing_guarantee=a.guarantee,
        state_dir=a.state_dir,
        on_consumer_error=on_error,
        on_processing_error=on_error,
        loglevel="WARNING",
    )
    raw = app.topic(a.input, key_deserializer="str", value_deserializer="json")
    outputs = {t: app.topic(getattr(a, t), key_serializer="str", value_serializer="json") for t in TIERS}

    sdf = app.dataframe(raw)
    sdf = sdf.apply(in_order, stateful=True, metadata=True)
    sdf = sdf.filter(lambda routed: routed is not None)
    for tier in TIERS:

        def routed_to(routed, tier=tier):
            return tier in classes[routed[0]["event_type"]][0]

        def headers(routed, key, timestamp, _headers, tier=tier):
            event, missing = routed
            h = [
                ("event_type", event["event_type"]),
                ("entity_type", event["entity_type"]),
                ("entity_version", str(event["entity_version"])),
                ("privacy_tier", tier),
            ]
            if missing:
                h.append(("x-version-gap", str(missing)))
            return h

        def projection(routed, rank=RANK[tier]):
            event = routed[0]
            if rank == RANK["restricted"]:
                return event  # restricted sees everything
            envelope = classes[event["event_type"]][1][event["schema_version"]]
            return project(event, envelope, rank)

        sdf.filter(routed_to).set_headers(headers).apply(projection).to_topic(outputs[tier])

    print(f"quix peer: {a.application_id} {a.input} -> {a.public}, {a.internal}, {a.restricted} "
          f"({a.guarantee}, {len(classes)} event types)", file=sys.stderr)
    app.run()
    print("quix peer: routed {routed}, skipped (duplicate or stale) {skipped}, gaps {gaps}, "
          "rejected {rejected}".format(**counts), file=sys.stderr)


if __name__ == "__main__":
    main()
