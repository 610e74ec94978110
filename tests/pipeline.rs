//! The whole pipeline, broker-free (in the manner of Kafka Streams'
//! TopologyTestDriver): the default topology, the schemas in `avro/`, the
//! file registry, an in-memory version store. Outputs are decoded with
//! apache-avro and the derived schema the registry holds for their id.

// apache-avro's one-shot datum reader is deprecated in favour of a builder;
// it is the independent reference decoder here.
#![allow(deprecated)]

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use privacy_router::config::Topology;
use privacy_router::order::hold::{Holdback, Release};
use privacy_router::order::{MemoryStore, VersionStore};
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{OutRecord, Outcome, RawHeaders, RawRecord, Reason, Routed, Source};
use privacy_router::registry::{file, MemoryRegistry};
use privacy_router::reorder::{HeldChange, Reorder, Step};
use privacy_router::schema::{binary, json as sjson, CompiledSchema, LookupError, SchemaLookup};

const KEY: &[u8] = b"pipeline-test-key-0123456789";

struct Driver {
    engine: Engine,
    registry: MemoryRegistry,
    events: Vec<file::EventSchema>,
    store: MemoryStore,
    offset: i64,
}

impl Driver {
    fn with(topology_yaml: &str) -> Driver {
        let topology = Topology::parse(Path::new("test.yaml"), topology_yaml).unwrap();
        Self::from_topology(&topology, Some(Hasher::new(KEY).unwrap()))
    }

    fn default_topology() -> Driver {
        let topology = Topology::load(Path::new("topology/default.yaml")).unwrap();
        Self::from_topology(&topology, Some(Hasher::new(KEY).unwrap()))
    }

    fn from_topology(topology: &Topology, hasher: Option<Hasher>) -> Driver {
        let reg = file::load(
            Path::new("avro"),
            &topology.engine.subjects,
            &topology.spec.input.topics,
        )
        .unwrap();
        Driver {
            engine: Engine::new(topology.engine.clone(), hasher),
            registry: reg.registry,
            events: reg.events,
            store: MemoryStore::default(),
            offset: 0,
        }
    }

    fn pipe(&mut self, value: &[u8]) -> Outcome {
        let source = Source {
            topic: Arc::from("events.raw"),
            partition: 3,
            offset: self.offset,
        };
        self.offset += 1;
        let headers = vec![("origin".to_owned(), b"test".to_vec())];
        let raw = RawRecord {
            source: &source,
            key: Some(b"k"),
            value: Some(value),
            headers: (&headers).into(),
        };
        self.engine
            .process(&raw, &mut self.store, &mut self.registry)
            .unwrap()
    }

    fn pipe_json(&mut self, v: &Value) -> Outcome {
        self.pipe(&serde_json::to_vec(v).unwrap())
    }

    fn framed(&self, v: &Value) -> Vec<u8> {
        let et = v["event_type"].as_str().unwrap();
        let e = self.events.iter().find(|e| e.event_type == et).unwrap();
        let schema = CompiledSchema::compile(&e.text, &Default::default()).unwrap();
        let d = sjson::resolve(&schema, v).unwrap();
        let mut out = vec![0];
        out.extend_from_slice(&e.id.to_be_bytes());
        binary::encode(&d, &mut out);
        out
    }

    /// Decodes a tier record with apache-avro and the registered derived schema.
    fn decode(&mut self, r: &OutRecord) -> Value {
        let v = r.value.as_deref().unwrap();
        assert_eq!(v[0], 0, "Confluent magic byte");
        let id = u32::from_be_bytes(v[1..5].try_into().unwrap());
        let text = self.registry.schema_by_id(id).unwrap();
        let schema = apache_avro::Schema::parse_str(&text).unwrap();
        let d = apache_avro::from_avro_datum(&schema, &mut &v[5..], None).unwrap();
        Value::try_from(d).unwrap()
    }
}

fn routed(o: Outcome) -> Routed {
    match o {
        Outcome::Routed(r) => r,
        other => panic!("expected routed, got {other:?}"),
    }
}

fn rejected(o: Outcome) -> (OutRecord, Reason, String) {
    match o {
        Outcome::DeadLettered { record, rejection } => (record, rejection.reason, rejection.detail),
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

fn user_created(version: i64) -> Value {
    json!({
        "event_id": "0b6f5f0e-7c57-4d0e-9a31-6d1f1c2b8e01",
        "event_type": "user.created",
        "entity_type": "user",
        "entity_id": "65a1b2c3d4e5f60718293a4b",
        "entity_version": version,
        "occurred_at": "2026-05-01T12:00:00Z",
        "trace_id": "2f0c8a8e-1d4b-4a5e-9b7a-3c2d1e0f9a8b",
        "correlation_id": null,
        "producer": "user-service",
        "actor": {"actor_type": "USER", "actor_id": "65a1b2c3d4e5f60718293a4b"},
        "schema_version": 1,
        "privacy_tier": "restricted",
        "data": {
            "email": "sentinel.person@example.org",
            "phone": "+15550001111",
            "first_name": "Sentinelfirst",
            "last_name": "Sentinellast",
            "date_of_birth": "1991-02-03",
            "role": "CONSUMER",
            "signup_source": "WEB",
            "referrer_user_id": "65ffffffffffffffffffffff",
            "locale": "pt-PT",
            "marketing_opt_in": true,
            "signup_ip_address": "203.0.113.77",
            "created_at": "2026-05-01T11:59:00Z",
            "unknown_extra_key": "must-never-be-forwarded"
        }
    })
}

const PII: [&str; 7] = [
    "sentinel.person@example.org",
    "+15550001111",
    "Sentinelfirst",
    "Sentinellast",
    "1991-02-03",
    "203.0.113.77",
    "must-never-be-forwarded",
];

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn user_created_reaches_each_tier_with_its_projection() {
    let mut d = Driver::default_topology();
    let r = routed(d.pipe_json(&user_created(1)));
    assert_eq!(r.records.len(), 3);
    let h = Hasher::new(KEY).unwrap();
    let pseudo = |s: &str| h.pseudonym(s.as_bytes());
    let [public, internal, restricted] = [0, 1, 2].map(|i| r.records[i].clone());
    assert_eq!(&*public.topic, "events.public");
    assert_eq!(&*internal.topic, "events.internal");
    assert_eq!(&*restricted.topic, "events.restricted");

    // Keys: entity_id where the tier may see it, its pseudonym otherwise.
    assert_eq!(
        public.key.as_deref(),
        Some(pseudo("65a1b2c3d4e5f60718293a4b").as_bytes())
    );
    assert_eq!(
        internal.key.as_deref(),
        Some(&b"65a1b2c3d4e5f60718293a4b"[..])
    );
    assert_eq!(
        restricted.key.as_deref(),
        Some(&b"65a1b2c3d4e5f60718293a4b"[..])
    );
    for (rec, tier) in [
        (&public, "public"),
        (&internal, "internal"),
        (&restricted, "restricted"),
    ] {
        assert_eq!(rec.header("event_type"), Some(&b"user.created"[..]));
        assert_eq!(rec.header("entity_type"), Some(&b"user"[..]));
        assert_eq!(rec.header("entity_version"), Some(&b"1"[..]));
        assert_eq!(rec.header("privacy_tier"), Some(tier.as_bytes()));
    }

    let p = d.decode(&public);
    assert_eq!(
        p,
        json!({
            "event_id": "0b6f5f0e-7c57-4d0e-9a31-6d1f1c2b8e01", "event_type": "user.created",
            "entity_type": "user", "entity_id": pseudo("65a1b2c3d4e5f60718293a4b"), "entity_version": 1,
            "occurred_at": "2026-05-01T12:00:00Z",
            "actor": {"actor_type": "USER", "actor_id": pseudo("65a1b2c3d4e5f60718293a4b")},
            "schema_version": 1, "privacy_tier": "restricted",
            "data": {"email": pseudo("sentinel.person@example.org")}
        })
    );
    let i = d.decode(&internal);
    assert_eq!(
        i["data"],
        json!({"email": pseudo("sentinel.person@example.org"), "role": "CONSUMER", "signup_source": "WEB",
               "referrer_user_id": "65ffffffffffffffffffffff", "locale": "pt-PT", "marketing_opt_in": true,
               "created_at": "2026-05-01T11:59:00Z"})
    );
    assert_eq!(i["trace_id"], json!("2f0c8a8e-1d4b-4a5e-9b7a-3c2d1e0f9a8b"));
    assert_eq!(i["producer"], json!("user-service"));
    assert_eq!(i["actor"]["actor_id"], json!("65a1b2c3d4e5f60718293a4b"));
    let mut full = user_created(1);
    full["data"]
        .as_object_mut()
        .unwrap()
        .remove("unknown_extra_key");
    assert_eq!(d.decode(&restricted), full);

    for rec in [&public, &internal] {
        for pii in PII {
            assert!(
                !contains(rec.value.as_deref().unwrap(), pii),
                "{pii} leaked to {}",
                rec.topic
            );
        }
    }
    assert!(!contains(
        restricted.value.as_deref().unwrap(),
        "must-never-be-forwarded"
    ));
    let state = r.state.unwrap();
    assert_eq!(state.key, b"user/65a1b2c3d4e5f60718293a4b");
    assert_eq!(state.version, 1);
    assert_eq!(r.tier_mismatch, None);
}

#[test]
fn framed_avro_and_json_give_the_same_records() {
    let mut a = Driver::default_topology();
    let mut b = Driver::default_topology();
    let mut v = user_created(1);
    v["data"]
        .as_object_mut()
        .unwrap()
        .remove("unknown_extra_key");
    let framed = b.framed(&v);
    assert_eq!(
        routed(a.pipe_json(&v)).records,
        routed(b.pipe(&framed)).records
    );
}

#[test]
fn security_events_reach_restricted_only() {
    let mut d = Driver::default_topology();
    let v = json!({
        "event_id": "0b6f5f0e-7c57-4d0e-9a31-6d1f1c2b8e02", "event_type": "user.login_failed",
        "entity_type": "user", "entity_id": "u1", "entity_version": 1, "occurred_at": "2026-05-01T12:00:00Z",
        "producer": "auth", "actor": {"actor_type": "SYSTEM"}, "schema_version": 1, "privacy_tier": "restricted",
        "data": d_login_failed()
    });
    let r = routed(d.pipe_json(&v));
    let topics: Vec<&str> = r.records.iter().map(|r| &*r.topic).collect();
    assert_eq!(topics, ["events.restricted"]);
}

fn d_login_failed() -> Value {
    let text = std::fs::read_to_string("avro/events/user/user.login_failed.avsc").unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    // A value for every field from the schema, by type.
    fn fill(t: &Value) -> Value {
        match t {
            Value::String(s) if s == "string" => json!("2026-05-01T12:00:00Z"),
            Value::String(s) if s == "long" || s == "int" => json!(1),
            Value::String(s) if s == "boolean" => json!(false),
            Value::Array(_) => Value::Null,
            Value::Object(o) if o["type"] == "enum" => o["symbols"][0].clone(),
            Value::Object(o) if o["type"] == "string" => {
                json!("6f1c1f1e-8a33-4a55-9d0c-2b9a7f2e9a11")
            }
            Value::Object(o) if o["type"] == "array" => json!([]),
            Value::Object(o) if o["type"] == "map" => json!({}),
            Value::Object(o) if o["type"] == "record" => Value::Object(
                o["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| (f["name"].as_str().unwrap().to_owned(), fill(&f["type"])))
                    .collect(),
            ),
            other => panic!("unexpected type {other}"),
        }
    }
    fill(&schema)
}

#[test]
fn duplicates_and_stale_versions_are_skipped_and_gaps_flagged() {
    // The default topology holds gaps; emitting them is the other policy.
    let mut d = Driver::with("ordering: {on_gap: emit}");
    routed(d.pipe_json(&user_created(1)));
    routed(d.pipe_json(&user_created(2)));
    assert!(
        matches!(d.pipe_json(&user_created(2)), Outcome::Skipped(v) if v.label() == "duplicate")
    );
    assert!(matches!(d.pipe_json(&user_created(1)), Outcome::Skipped(v) if v.label() == "stale"));
    let gap = routed(d.pipe_json(&user_created(5)));
    assert_eq!(gap.verdict.label(), "gap");
    for r in &gap.records {
        assert_eq!(r.header("x-version-gap"), Some(&b"2"[..]));
    }
    routed(d.pipe_json(&user_created(6)));
}

#[test]
fn gap_can_be_dead_lettered_without_moving_the_state() {
    let mut d = Driver::with("ordering: {on_gap: dead_letter}");
    routed(d.pipe_json(&user_created(1)));
    let (_, reason, _) = rejected(d.pipe_json(&user_created(4)));
    assert_eq!(reason, Reason::VersionGap);
    assert_eq!(
        routed(d.pipe_json(&user_created(2))).verdict.label(),
        "accepted"
    );
}

#[test]
fn declared_tier_mismatch_is_flagged_or_dead_lettered() {
    let mut v = user_created(1);
    v["privacy_tier"] = json!("public");
    let mut d = Driver::default_topology();
    let r = routed(d.pipe_json(&v));
    assert_eq!(r.tier_mismatch.as_deref(), Some("data.email"));
    assert_eq!(r.records.len(), 3);

    let mut d = Driver::with("classification: {on_tier_mismatch: dead_letter}");
    let (rec, reason, detail) = rejected(d.pipe_json(&v));
    assert_eq!(reason, Reason::TierMismatch);
    assert!(detail.contains("data.email"), "{detail}");
    assert_eq!(
        rec.value.as_deref(),
        Some(serde_json::to_vec(&v).unwrap().as_slice())
    );
}

#[test]
fn invalid_records_are_dead_lettered_unchanged_with_reason_and_source() {
    let mut d = Driver::default_topology();
    let good = user_created(1);
    let with = |path: &[&str], x: Value| {
        let mut v = good.clone();
        let mut t = &mut v;
        for p in &path[..path.len() - 1] {
            t = &mut t[*p];
        }
        t[path[path.len() - 1]] = x;
        serde_json::to_vec(&v).unwrap()
    };
    let mut without_data = good.clone();
    without_data.as_object_mut().unwrap().remove("data");
    let framed = d.framed(&{
        let mut v = good.clone();
        v["data"]
            .as_object_mut()
            .unwrap()
            .remove("unknown_extra_key");
        v
    });
    let mut unknown_id = framed.clone();
    unknown_id[1..5].copy_from_slice(&4_000_000u32.to_be_bytes());
    let cases: Vec<(Vec<u8>, Reason)> = vec![
        (Vec::new(), Reason::EmptyValue),
        (vec![0, 0, 1], Reason::TruncatedFrame),
        (b"\x07garbage".to_vec(), Reason::UnknownMagicByte),
        (unknown_id, Reason::UnknownSchemaId),
        (framed[..framed.len() - 3].to_vec(), Reason::MalformedAvro),
        ([framed.as_slice(), &[1, 2]].concat(), Reason::MalformedAvro),
        (b"{\"event_type\": ".to_vec(), Reason::MalformedJson),
        (
            with(&["event_type"], json!("User.Created")),
            Reason::InvalidEventType,
        ),
        (
            with(&["event_type"], json!("user.teleported")),
            Reason::UnknownEventType,
        ),
        (
            serde_json::to_vec(&without_data).unwrap(),
            Reason::SchemaMismatch,
        ),
        (
            with(&["data", "marketing_opt_in"], json!("yes")),
            Reason::SchemaMismatch,
        ),
        (
            with(&["event_id"], json!("not-a-uuid")),
            Reason::InvalidUuid,
        ),
        (with(&["entity_id"], json!("")), Reason::InvalidEntityId),
        (
            with(&["entity_version"], json!(0)),
            Reason::InvalidEntityVersion,
        ),
        (
            with(&["schema_version"], json!(0)),
            Reason::InvalidSchemaVersion,
        ),
        (
            with(&["occurred_at"], json!("2026-05-01T14:00:00+02:00")),
            Reason::InvalidTimestamp,
        ),
        (
            with(&["data", "created_at"], json!("yesterday")),
            Reason::InvalidTimestamp,
        ),
    ];
    for (i, (value, reason)) in cases.into_iter().enumerate() {
        let (rec, got, detail) = rejected(d.pipe(&value));
        assert_eq!(got, reason, "case {i}: {detail}");
        assert_eq!(&*rec.topic, "events.dlq");
        assert_eq!(rec.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            rec.value.as_deref(),
            Some(value.as_slice()),
            "case {i}: the original value, unchanged"
        );
        assert_eq!(
            rec.header("origin"),
            Some(&b"test"[..]),
            "original headers are kept"
        );
        assert_eq!(rec.header("x-error-reason"), Some(reason.code().as_bytes()));
        assert_eq!(rec.header("x-source-topic"), Some(&b"events.raw"[..]));
        assert_eq!(rec.header("x-source-partition"), Some(&b"3"[..]));
        assert_eq!(
            rec.header("x-source-offset"),
            Some(i.to_string().as_bytes())
        );
        // The same facts under Kafka Streams' dead-letter headers (KIP-1034).
        assert_eq!(
            rec.header("__streams.errors.exception"),
            Some(reason.code().as_bytes())
        );
        assert_eq!(
            rec.header("__streams.errors.message"),
            rec.header("x-error-detail")
        );
        assert_eq!(
            rec.header("__streams.errors.topic"),
            Some(&b"events.raw"[..])
        );
        assert_eq!(rec.header("__streams.errors.partition"), Some(&b"3"[..]));
        assert_eq!(
            rec.header("__streams.errors.offset"),
            Some(i.to_string().as_bytes())
        );
        let detail_header = rec.header("x-error-detail").unwrap();
        for pii in PII.iter().chain(&[
            "User.Created",
            "user.teleported",
            "not-a-uuid",
            "yesterday",
            "+02:00",
        ]) {
            assert!(
                !contains(detail_header, pii),
                "case {i}: detail quotes a value: {detail}"
            );
        }
    }
    assert_eq!(
        d.store.len(),
        0,
        "no rejected event touched the version store"
    );
}

#[test]
fn negative_amounts_and_counts_are_rejected() {
    let mut d = Driver::default_topology();
    let reg = file::load(
        Path::new("avro"),
        &Default::default(),
        &["events.raw".to_owned()],
    )
    .unwrap();
    let mut g = privacy_router::sample::Generator::new(
        &reg,
        privacy_router::sample::Options {
            anomalies: false,
            ..Default::default()
        },
    );
    // Find a generated order.created and break its money and its item counts.
    let v = loop {
        let v: Value = serde_json::from_slice(&g.next_record()).unwrap();
        if v["event_type"] == "order.created" {
            break v;
        }
    };
    let mut neg = v.clone();
    neg["data"]["total_cents"] = json!(-1);
    assert_eq!(rejected(d.pipe_json(&neg)).1, Reason::NegativeCents);
    let mut neg = v.clone();
    let items = neg["data"]["items"].as_array_mut().unwrap();
    let count_key = items[0]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.ends_with("_count"))
        .unwrap()
        .clone();
    items[0][&count_key] = json!(-2);
    let (_, reason, detail) = rejected(d.pipe_json(&neg));
    assert_eq!(reason, Reason::NegativeCount);
    assert!(detail.starts_with("data.items."), "{detail}");
    assert_eq!(routed(d.pipe_json(&v)).verdict.label(), "accepted");
}

#[test]
fn hashing_schemas_without_a_key_dead_letter_instead_of_leaking() {
    let topology = Topology::load(Path::new("topology/default.yaml")).unwrap();
    let mut d = Driver::from_topology(&topology, None);
    let (_, reason, _) = rejected(d.pipe_json(&user_created(1)));
    assert_eq!(reason, Reason::RedactionUnavailable);
}

#[test]
fn json_output_format_writes_the_projection_as_json() {
    let mut d = Driver::with("outputs: {format: json}");
    let r = routed(d.pipe_json(&user_created(1)));
    let public: Value = serde_json::from_slice(r.records[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(
        public["data"],
        json!({"email": Hasher::new(KEY).unwrap().pseudonym(b"sentinel.person@example.org")})
    );
    assert!(public.get("producer").is_none());
}

#[test]
fn derived_schemas_are_registered_under_topic_record_subjects() {
    let mut d = Driver::default_topology();
    routed(d.pipe_json(&user_created(1)));
    let (id, text) = d
        .registry
        .latest("events.public-com.privacyrouter.events.user.UserCreated")
        .unwrap();
    let derived: Value = serde_json::from_str(&text).unwrap();
    let data_fields: Vec<&str> = derived["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "data")
        .unwrap()["type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(data_fields, ["email"]);
    assert!(d
        .registry
        .latest("events.internal-com.privacyrouter.events.user.UserCreated")
        .is_ok());
    assert!(d
        .registry
        .latest("events.restricted-com.privacyrouter.events.user.UserCreated")
        .is_ok());
    assert_ne!(
        id,
        d.events
            .iter()
            .find(|e| e.event_type == "user.created")
            .unwrap()
            .id
    );
}

/// Counts registry calls.
struct Counting<'a> {
    inner: &'a mut MemoryRegistry,
    calls: usize,
}

impl SchemaLookup for Counting<'_> {
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, privacy_router::schema::LookupError> {
        self.calls += 1;
        self.inner.schema_by_id(id)
    }
    fn latest(
        &mut self,
        subject: &str,
    ) -> Result<(u32, Arc<str>), privacy_router::schema::LookupError> {
        self.calls += 1;
        self.inner.latest(subject)
    }
    fn version(
        &mut self,
        subject: &str,
        version: u32,
    ) -> Result<(u32, Arc<str>), privacy_router::schema::LookupError> {
        self.calls += 1;
        self.inner.version(subject, version)
    }
    fn subjects(&mut self) -> Result<Vec<String>, privacy_router::schema::LookupError> {
        self.calls += 1;
        SchemaLookup::subjects(self.inner)
    }
    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, privacy_router::schema::LookupError> {
        self.calls += 1;
        self.inner.versions(subject)
    }
    fn register(
        &mut self,
        subject: &str,
        schema: &str,
    ) -> Result<u32, privacy_router::schema::LookupError> {
        self.calls += 1;
        self.inner.register(subject, schema)
    }
}

#[test]
fn bad_records_neither_grow_the_caches_nor_hammer_the_registry() {
    let mut d = Driver::default_topology();
    let mut reg = Counting {
        inner: &mut d.registry,
        calls: 0,
    };
    let source = Source {
        topic: Arc::from("events.raw"),
        partition: 0,
        offset: 0,
    };
    let mut rng = fastrand::Rng::with_seed(5);
    for i in 0..20_000u32 {
        let id = if i % 2 == 0 {
            1_000_000
        } else {
            1_000_000 + rng.u32(..) % 1_000_000
        };
        let mut frame = vec![0];
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(b"junk");
        let json = format!(
            "{{\"event_type\": \"user.nope_{}\"}}",
            "x".repeat((i % 50) as usize)
        );
        for value in [frame, json.into_bytes()] {
            let raw = RawRecord {
                source: &source,
                key: None,
                value: Some(&value),
                headers: RawHeaders::NONE,
            };
            let out = d.engine.process(&raw, &mut d.store, &mut reg).unwrap();
            assert!(matches!(out, Outcome::DeadLettered { .. }));
        }
    }
    assert!(
        d.engine.cache_entries() <= 2 * 1024 + 2,
        "{}",
        d.engine.cache_entries()
    );
    // Each random id is looked up once; the repeated id and the 50 repeated
    // event types once, plus once more each time the miss memory (1024
    // entries) fills up with random ids and is cleared.
    let refills = 10_000 / 1024 + 1;
    assert!(
        reg.calls <= 10_000 + 1 + refills + 50,
        "{} registry calls",
        reg.calls
    );
}

#[test]
fn a_per_event_type_subject_overrides_the_template() {
    let topology = Topology::parse(
        Path::new("test.yaml"),
        "event_types:\n  user.created: {subject: 'legacy-{event_type}-value'}\n",
    )
    .unwrap();
    // A registry filled with the default naming holds no such subject: the
    // override is what the engine asks for, so user.created has no schema…
    let mut d = Driver::default_topology();
    d.engine = Engine::new(topology.engine.clone(), Some(Hasher::new(KEY).unwrap()));
    let (_, reason, detail) = rejected(d.pipe_json(&user_created(1)));
    assert_eq!(reason, Reason::UnknownEventType, "{detail}");
    // …while the other event types keep the template.
    let mut login = json!({
        "event_id": "0b6f5f0e-7c57-4d0e-9a31-6d1f1c2b8e03", "event_type": "user.login_failed",
        "entity_type": "user", "entity_id": "u1", "entity_version": 1, "occurred_at": "2026-05-01T12:00:00Z",
        "producer": "auth", "actor": {"actor_type": "SYSTEM"}, "schema_version": 1, "privacy_tier": "restricted",
    });
    login["data"] = d_login_failed();
    routed(d.pipe_json(&login));
    // Once the schema is registered under the overriding subject, it is used.
    let text = d
        .events
        .iter()
        .find(|e| e.event_type == "user.created")
        .unwrap()
        .text
        .clone();
    d.registry
        .register("legacy-user.created-value", &text)
        .unwrap();
    d.engine.forget_misses();
    assert_eq!(
        routed(d.pipe_json(&user_created(1))).verdict.label(),
        "accepted"
    );
}

// ------------------------------------------------------- schema evolution

const USER_CREATED_SUBJECT: &str = "events.raw-com.privacyrouter.events.user.UserCreated";

/// Version 2 of user.created as a producer would register it: the
/// restricted `date_of_birth` removed, `locale` relabelled public.
fn user_created_v2(d: &Driver) -> String {
    let v1 = &d
        .events
        .iter()
        .find(|e| e.event_type == "user.created")
        .unwrap()
        .text;
    let mut s: Value = serde_json::from_str(v1).unwrap();
    let data = s["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "data")
        .unwrap();
    let fields = data["type"]["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["name"] != "date_of_birth");
    let locale = fields.iter_mut().find(|f| f["name"] == "locale").unwrap();
    locale["privacy"] = json!("public");
    s.to_string()
}

fn with_schema_version(mut v: Value, n: i64) -> Value {
    v["schema_version"] = json!(n);
    v
}

#[test]
fn a_json_event_is_read_with_the_schema_version_it_names() {
    let mut d = Driver::default_topology();
    let v2 = user_created_v2(&d);
    d.registry.register(USER_CREATED_SUBJECT, &v2).unwrap();
    assert_eq!(d.registry.versions(USER_CREATED_SUBJECT).unwrap(), [1, 2]);

    // A version 1 event after version 2 exists: read with version 1, so
    // `locale` stays internal (v2's public label is not its own) and the
    // restricted `date_of_birth` that v2 removed is not lost.
    let r = routed(d.pipe_json(&user_created(1)));
    let [public, internal, restricted] = [0, 1, 2].map(|i| r.records[i].clone());
    let p = d.decode(&public);
    assert!(p["data"].get("locale").is_none(), "{p}");
    assert!(!contains(public.value.as_deref().unwrap(), "pt-PT"));
    assert_eq!(d.decode(&internal)["data"]["locale"], json!("pt-PT"));
    let full = d.decode(&restricted);
    assert_eq!(full["data"]["date_of_birth"], json!("1991-02-03"));
    assert_eq!(full["schema_version"], json!(1));

    // A version 2 event: `locale` is public now, `date_of_birth` is not in
    // its schema (a key its own version does not know is not forwarded).
    let r = routed(d.pipe_json(&with_schema_version(user_created(2), 2)));
    let [public, internal, restricted] = [0, 1, 2].map(|i| r.records[i].clone());
    assert_eq!(d.decode(&public)["data"]["locale"], json!("pt-PT"));
    assert_eq!(d.decode(&internal)["data"]["locale"], json!("pt-PT"));
    let full = d.decode(&restricted);
    assert!(full["data"].get("date_of_birth").is_none(), "{full}");
    assert_eq!(full["data"]["email"], json!("sentinel.person@example.org"));
    for rec in [&public, &internal] {
        for pii in PII.iter().filter(|p| **p != "1991-02-03") {
            assert!(!contains(rec.value.as_deref().unwrap(), pii), "{pii}");
        }
    }

    // A version the subject does not have: dead-lettered, never read with
    // another version.
    let (record, reason, detail) = rejected(d.pipe_json(&with_schema_version(user_created(3), 3)));
    assert_eq!(reason, Reason::UnknownSchemaVersion, "{detail}");
    assert!(detail.contains(USER_CREATED_SUBJECT), "{detail}");
    assert!(detail.contains("version 3"), "{detail}");
    assert_eq!(
        record.value.as_deref(),
        Some(&serde_json::to_vec(&with_schema_version(user_created(3), 3)).unwrap()[..])
    );
    // A missing or malformed schema_version is a dead letter too.
    let mut none = user_created(3);
    none.as_object_mut().unwrap().remove("schema_version");
    let (_, reason, _) = rejected(d.pipe_json(&none));
    assert_eq!(reason, Reason::InvalidSchemaVersion);
}

#[test]
fn the_topology_maps_producer_versions_to_subject_versions() {
    let mut d = Driver::with("event_types:\n  user.created:\n    versions: {7: 2, 6: 1}\n");
    let v2 = user_created_v2(&d);
    d.registry.register(USER_CREATED_SUBJECT, &v2).unwrap();
    let r = routed(d.pipe_json(&with_schema_version(user_created(1), 7)));
    assert_eq!(d.decode(&r.records[0])["data"]["locale"], json!("pt-PT"));
    let r = routed(d.pipe_json(&with_schema_version(user_created(2), 6)));
    assert!(d.decode(&r.records[0])["data"].get("locale").is_none());
    // With a map, an unmapped version is refused rather than guessed.
    let (_, reason, detail) = rejected(d.pipe_json(&user_created(3)));
    assert_eq!(reason, Reason::UnknownSchemaVersion);
    assert!(
        detail.contains("not one of the versions the topology maps"),
        "{detail}"
    );
}

/// A registry that refuses registrations under some subjects, as Confluent
/// does for an incompatible schema (409).
struct Refusing<'a> {
    inner: &'a mut MemoryRegistry,
    refuse: &'a str,
    registrations: usize,
}

impl SchemaLookup for Refusing<'_> {
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError> {
        self.inner.schema_by_id(id)
    }
    fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError> {
        self.inner.latest(subject)
    }
    fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError> {
        self.inner.version(subject, version)
    }
    fn subjects(&mut self) -> Result<Vec<String>, LookupError> {
        SchemaLookup::subjects(self.inner)
    }
    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError> {
        self.inner.versions(subject)
    }
    fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError> {
        self.registrations += 1;
        if subject == self.refuse {
            return Err(LookupError::Refused(format!(
                "HTTP 409: Schema being registered is incompatible with an earlier schema for subject \"{subject}\""
            )));
        }
        self.inner.register(subject, schema)
    }
}

#[test]
fn a_refused_derived_schema_dead_letters_its_events_and_nothing_else() {
    let mut d = Driver::default_topology();
    let refused = "events.public-com.privacyrouter.events.user.UserCreated";
    let mut reg = Refusing {
        inner: &mut d.registry,
        refuse: refused,
        registrations: 0,
    };
    let source = Source {
        topic: Arc::from("events.raw"),
        partition: 0,
        offset: 7,
    };
    let pipe = |engine: &mut Engine, store: &mut MemoryStore, reg: &mut Refusing<'_>, v: &Value| {
        let value = serde_json::to_vec(v).unwrap();
        let raw = RawRecord {
            source: &source,
            key: None,
            value: Some(&value),
            headers: RawHeaders::NONE,
        };
        (engine.process(&raw, store, reg).unwrap(), value)
    };
    let (out, value) = pipe(&mut d.engine, &mut d.store, &mut reg, &user_created(1));
    let (record, reason, detail) = rejected(out);
    assert_eq!(reason, Reason::DerivedSchemaRejected);
    assert!(detail.contains(refused), "{detail}");
    assert!(detail.contains("incompatible"), "{detail}");
    assert!(!detail.contains("sentinel"), "{detail}");
    assert_eq!(
        record.value.as_deref(),
        Some(&value[..]),
        "unchanged, replayable"
    );
    assert_eq!(
        record.header("x-error-reason"),
        Some(&b"derived_schema_rejected"[..])
    );
    // The version was not recorded: the event can be replayed later.
    assert_eq!(d.store.last_version(b"user/65a1b2c3d4e5f60718293a4b"), None);
    let refusals = d.engine.take_refusals();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].subject, refused);

    // The next event of the type is dead-lettered without asking again…
    let before = reg.registrations;
    let (out, _) = pipe(&mut d.engine, &mut d.store, &mut reg, &user_created(1));
    assert_eq!(rejected(out).1, Reason::DerivedSchemaRejected);
    assert_eq!(reg.registrations, before);
    assert!(d.engine.take_refusals().is_empty(), "logged once");
    // …while every other event type keeps flowing.
    let mut login = json!({
        "event_id": "0b6f5f0e-7c57-4d0e-9a31-6d1f1c2b8e03", "event_type": "user.login_failed",
        "entity_type": "user", "entity_id": "u1", "entity_version": 1, "occurred_at": "2026-05-01T12:00:00Z",
        "producer": "auth", "actor": {"actor_type": "SYSTEM"}, "schema_version": 1, "privacy_tier": "restricted",
    });
    login["data"] = d_login_failed();
    let (out, _) = pipe(&mut d.engine, &mut d.store, &mut reg, &login);
    routed(out);
}

#[test]
fn an_override_raises_a_tier_in_every_version_and_never_lowers_one() {
    let yaml = "classification:\n  overrides:\n    com.privacyrouter.events.user.UserCreatedData:\n      locale: restricted\n      email: public\n";
    let mut d = Driver::with(yaml);
    let v2 = user_created_v2(&d);
    d.registry.register(USER_CREATED_SUBJECT, &v2).unwrap();
    for (n, v) in [
        (1, user_created(1)),
        (2, with_schema_version(user_created(2), 2)),
    ] {
        let r = routed(d.pipe_json(&v));
        let [public, internal, restricted] = [0, 1, 2].map(|i| r.records[i].clone());
        assert!(d.decode(&public)["data"].get("locale").is_none(), "v{n}");
        assert!(d.decode(&internal)["data"].get("locale").is_none(), "v{n}");
        assert_eq!(
            d.decode(&restricted)["data"]["locale"],
            json!("pt-PT"),
            "v{n}"
        );
        // `email: public` would lower it: it stays restricted (hashed below).
        assert!(
            !contains(public.value.as_deref().unwrap(), "sentinel.person"),
            "v{n}"
        );
    }
    // …and the topology is refused for trying.
    let topology = Topology::parse(Path::new("t.yaml"), yaml).unwrap();
    let catalogue = privacy_router::registry::Catalogue::read(
        &mut d.registry,
        &topology.engine.subjects,
        &topology.spec.input.topics,
        "the test registry",
    )
    .unwrap();
    let found = privacy_router::config::schemas::check(&topology, &catalogue);
    let paths: Vec<&str> = found.errors.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["classification.overrides.com.privacyrouter.events.user.UserCreatedData.email"],
        "{:?}",
        found.errors
    );
    assert!(
        found.errors[0].message.contains("would lower"),
        "{:?}",
        found.errors
    );
}

/// Runs values through [`Reorder`] with no wall clock (as `replay` does),
/// collecting every step.
fn reorder(d: &mut Driver, held: &mut Holdback, value: &Value, ts: i64) -> Vec<Step> {
    let source = Source {
        topic: Arc::from("events.raw"),
        partition: 3,
        offset: d.offset,
    };
    d.offset += 1;
    let bytes = serde_json::to_vec(value).unwrap();
    let raw = RawRecord {
        source: &source,
        key: Some(b"k"),
        value: Some(&bytes),
        headers: RawHeaders::NONE,
    };
    let mut out = Vec::new();
    Reorder {
        engine: &mut d.engine,
        store: &mut d.store,
        held,
        registry: &mut d.registry,
    }
    .process(&raw, Some(ts), None, &mut out)
    .unwrap();
    out
}

/// (input offset, verdict or "held", x-version-gap header) of each step.
fn summary(steps: &[Step]) -> Vec<(i64, String, Option<String>)> {
    steps
        .iter()
        .map(|s| match &s.outcome {
            Outcome::Routed(r) => (
                s.source.offset,
                r.verdict.label().to_owned(),
                r.records[0]
                    .header("x-version-gap")
                    .map(|h| String::from_utf8_lossy(h).into_owned()),
            ),
            Outcome::Held { .. } => (s.source.offset, "held".to_owned(), None),
            Outcome::Skipped(v) => (s.source.offset, v.label().to_owned(), None),
            Outcome::DeadLettered { rejection, .. } => {
                (s.source.offset, rejection.reason.code().to_owned(), None)
            }
        })
        .collect()
}

#[test]
fn held_events_follow_the_missing_versions_in_order() {
    let mut d = Driver::with("ordering: {on_gap: hold, reorder_window_ms: 1000}");
    let mut held = Holdback::default();
    let s = |x: &[(i64, &str, Option<&str>)]| {
        x.iter()
            .map(|(o, v, g)| (*o, (*v).to_owned(), g.map(str::to_owned)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &user_created(1), 0)),
        s(&[(0, "accepted", None)])
    );
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &user_created(4), 10)),
        s(&[(1, "held", None)])
    );
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &user_created(3), 20)),
        s(&[(2, "held", None)])
    );
    // The same version again while it is held: a duplicate.
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &user_created(3), 30)),
        s(&[(3, "duplicate", None)])
    );
    let steps = reorder(&mut d, &mut held, &user_created(2), 40);
    assert_eq!(
        summary(&steps),
        s(&[
            (4, "accepted", None),
            (2, "accepted", None),
            (1, "accepted", None)
        ])
    );
    assert!(matches!(
        steps[1].held,
        HeldChange::Released {
            how: Release::InOrder,
            ..
        }
    ));
    assert!(held.is_empty());
    // Released records keep their own input coordinates and timestamp.
    assert_eq!(steps[2].timestamp, Some(10));
    // Past the window in stream time: emitted as a gap with its header.
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &user_created(7), 50)),
        s(&[(5, "held", None)])
    );
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &user_created(8), 60)),
        s(&[(6, "held", None)])
    );
    let other = with_entity(user_created(1), "65a1b2c3d4e5f60718293aff");
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &other, 1_050)),
        s(&[
            (7, "accepted", None),
            (5, "gap", Some("2")),
            (6, "accepted", None)
        ])
    );
    assert_eq!(
        d.store.last_version(b"user/65a1b2c3d4e5f60718293a4b"),
        Some(8)
    );
    // Stale stays stale, and is never held.
    assert_eq!(
        summary(&reorder(&mut d, &mut held, &user_created(5), 1_060)),
        s(&[(8, "stale", None)])
    );
}

#[test]
fn the_bound_emits_the_oldest_held_events_as_gaps() {
    let mut d = Driver::with("ordering: {on_gap: hold, max_held_per_partition: 2}");
    let mut held = Holdback::default();
    let a = |v| user_created(v);
    let b = |v| with_entity(user_created(v), "65a1b2c3d4e5f60718293aff");
    reorder(&mut d, &mut held, &a(1), 0);
    reorder(&mut d, &mut held, &b(1), 0);
    reorder(&mut d, &mut held, &a(3), 0);
    reorder(&mut d, &mut held, &b(5), 0);
    let steps = reorder(&mut d, &mut held, &b(3), 0);
    // Three held: the oldest (a's 3) goes out as a gap.
    let got = summary(&steps);
    assert_eq!(got[0], (4, "held".to_owned(), None));
    assert_eq!(got[1], (2, "gap".to_owned(), Some("1".to_owned())));
    assert!(matches!(
        steps[1].held,
        HeldChange::Released {
            how: Release::Bound,
            ..
        }
    ));
    assert_eq!(held.len(), 2);
}

#[test]
fn stale_events_can_be_dead_lettered() {
    let mut d = Driver::with("ordering: {on_stale: dead_letter}");
    routed(d.pipe_json(&user_created(1)));
    routed(d.pipe_json(&user_created(2)));
    assert!(
        matches!(d.pipe_json(&user_created(2)), Outcome::Skipped(v) if v.label() == "duplicate")
    );
    let (record, reason, detail) = rejected(d.pipe_json(&user_created(1)));
    assert_eq!(reason, Reason::StaleVersion);
    assert_eq!(record.header("x-error-reason"), Some(&b"stale_version"[..]));
    for p in PII {
        assert!(!detail.contains(p));
    }
}

fn with_entity(mut v: Value, id: &str) -> Value {
    v["entity_id"] = Value::from(id);
    v
}
