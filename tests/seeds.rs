//! The seed producers' own events through the engine, broker-free: each
//! producer's topology (`topology/<producer>.yaml`), its schemas (the
//! topology's `schemas.folder`), the file registry, an in-memory version
//! store. The seeds' example payloads are pasted verbatim; outputs are
//! decoded with apache-avro and the derived schema the registry holds, and
//! checked field by field per tier.
//!
//! Seed 002 (the user-service catalogue) names its events but gives no
//! payloads: its events here are ours, from `samples/user-catalogue.jsonl`.

// apache-avro's one-shot datum reader is deprecated in favour of a builder;
// it is the independent reference decoder here.
#![allow(deprecated)]

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use privacy_router::config::Topology;
use privacy_router::order::{MemoryStore, VersionStore};
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{OutRecord, Outcome, RawHeaders, RawRecord, Reason, Routed, Source};
use privacy_router::registry::{file, MemoryRegistry};
use privacy_router::schema::SchemaLookup;

const KEY: &[u8] = b"seed-test-key-0123456789abcdef";

struct Driver {
    engine: Engine,
    registry: MemoryRegistry,
    store: MemoryStore,
    topic: Arc<str>,
    offset: i64,
}

impl Driver {
    /// The producer's topology, reading its first input topic.
    fn new(topology: &str) -> Driver {
        let t = Topology::load(Path::new(topology)).unwrap();
        let reg = file::load(
            &t.spec.schemas.folder,
            &t.engine.subjects,
            &t.spec.input.topics,
        )
        .unwrap();
        Driver {
            engine: Engine::new(t.engine.clone(), Some(Hasher::new(KEY).unwrap())),
            registry: reg.registry,
            store: MemoryStore::default(),
            topic: Arc::from(t.spec.input.topics[0].as_str()),
            offset: 0,
        }
    }

    fn on_topic(mut self, topic: &str) -> Driver {
        self.topic = Arc::from(topic);
        self
    }

    fn pipe(&mut self, value: &str) -> Outcome {
        let source = Source {
            topic: self.topic.clone(),
            partition: 0,
            offset: self.offset,
        };
        self.offset += 1;
        let raw = RawRecord {
            source: &source,
            key: None,
            value: Some(value.as_bytes()),
            headers: RawHeaders::NONE,
        };
        self.engine
            .process(&raw, &mut self.store, &mut self.registry)
            .unwrap()
    }

    fn pipe_json(&mut self, v: &Value) -> Outcome {
        self.pipe(&v.to_string())
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

    /// The routed event's records per tier name, decoded, with their keys
    /// and headers.
    fn tiers(&mut self, r: &Routed) -> Vec<(String, Tiered)> {
        r.records
            .iter()
            .map(|rec| {
                let tier = String::from_utf8(rec.header("privacy_tier").unwrap().to_vec()).unwrap();
                (
                    tier,
                    Tiered {
                        topic: rec.topic.to_string(),
                        key: String::from_utf8(rec.key.clone().unwrap()).unwrap(),
                        headers: rec
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), String::from_utf8(v.to_vec()).unwrap()))
                            .collect(),
                        value: self.decode(rec),
                        bytes: rec.value.clone().unwrap(),
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug)]
struct Tiered {
    topic: String,
    key: String,
    headers: Vec<(String, String)>,
    value: Value,
    bytes: Vec<u8>,
}

impl Tiered {
    fn holds(&self, needle: &str) -> bool {
        self.bytes
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
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

fn pseudo(s: &str) -> String {
    Hasher::new(KEY).unwrap().pseudonym(s.as_bytes())
}

/// The three tiers of a routed event, in order.
fn three(d: &mut Driver, r: &Routed) -> [Tiered; 3] {
    let mut t = d.tiers(r);
    assert_eq!(
        t.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["public", "internal", "restricted"]
    );
    let restricted = t.pop().unwrap().1;
    let internal = t.pop().unwrap().1;
    let public = t.pop().unwrap().1;
    [public, internal, restricted]
}

/// The document's annotations (`// …` comments, `❌ …` markers) removed:
/// what the producer would actually send, placeholders and all.
fn without_annotations(doc: &str) -> String {
    doc.lines()
        .map(|line| {
            let mut in_string = false;
            let mut escaped = false;
            for (i, c) in line.char_indices() {
                if in_string {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => in_string = false,
                        _ => {}
                    }
                } else if c == '"' {
                    in_string = true;
                } else if line[i..].starts_with("//") || c == '❌' {
                    return line[..i].trim_end();
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Seed 004, `user.created`, **Example** (verbatim).
const USER_CREATED: &str = r#"{
  "eventId": "a1b2c3d4-e5f6-4a5b-8c7d-9e8f7a6b5c4d",
  "eventType": "user.created",
  "timestamp": "2025-12-12T10:30:00.000Z",
  "version": "1.0",
  "source": "auth-service",
  "payload": {
    "userId": "usr_123456789",
    "email": "john.doe@example.com",
    "firstName": "John",
    "lastName": "Doe",
    "createdAt": "2025-12-12T10:30:00.000Z"
  }
}"#;

/// Seed 004, `user.updated`, **Example** (verbatim).
const USER_UPDATED: &str = r#"{
  "eventId": "b2c3d4e5-f6a7-4b5c-9d8e-0f1a2b3c4d5e",
  "eventType": "user.updated",
  "timestamp": "2025-12-12T11:45:00.000Z",
  "version": "1.0",
  "source": "user-service",
  "payload": {
    "userId": "usr_123456789",
    "changes": {
      "username": {
        "old": "johndoe",
        "new": "john_doe_2025"
      },
      "email": {
        "old": "john.old@example.com",
        "new": "john.new@example.com"
      }
    },
    "updatedAt": "2025-12-12T11:45:00.000Z"
  }
}"#;

/// Seed 004, `user.profile.updated`, **Example** (verbatim).
const USER_PROFILE_UPDATED: &str = r#"{
  "eventId": "c3d4e5f6-a7b8-4c5d-0e9f-1a2b3c4d5e6f",
  "eventType": "user.profile.updated",
  "timestamp": "2025-12-12T12:00:00.000Z",
  "version": "1.0",
  "source": "user-service",
  "payload": {
    "userId": "usr_123456789",
    "profile": {
      "firstName": "John",
      "lastName": "Doe",
      "phone": "+33612345678",
      "avatar": "/uploads/avatars/avatar-1702382400000-123456789.png",
      "dateOfBirth": "1990-01-15"
    },
    "updatedAt": "2025-12-12T12:00:00.000Z"
  }
}"#;

/// Seed 004, `user.preferences.updated`, **Example** (verbatim).
const USER_PREFERENCES_UPDATED: &str = r#"{
  "eventId": "d4e5f6a7-b8c9-4d5e-1f0a-2b3c4d5e6f7a",
  "eventType": "user.preferences.updated",
  "timestamp": "2025-12-12T13:15:00.000Z",
  "version": "1.0",
  "source": "user-service",
  "payload": {
    "userId": "usr_123456789",
    "preferences": {
      "language": "fr",
      "currency": "EUR",
      "notifications": {
        "email": true,
        "sms": false,
        "push": true
      },
      "travelPreferences": {
        "seatPreference": "window",
        "mealPreference": "vegetarian",
        "classPreference": "economy"
      }
    },
    "updatedAt": "2025-12-12T13:15:00.000Z"
  }
}"#;

/// Seed 000, "Before (V1) - Full User Data" (verbatim, with the document's
/// `//` comments and ❌ markers).
const V1_BEFORE: &str = r#"{
  // User Data
  "id": "uuid-here",
  "email": "user@example.com",
  "username": "john_doe",
  "displayName": "John Doe",          ❌ ลบออก
  "avatar": "https://cdn.../pic.jpg", ❌ ลบออก
  "role": "user",                     ❌ ลบออก
  "isActive": true,                   ❌ ลบออก
  "action": "created",

  // Metadata
  "request_id": "uuid",
  "timestamp": "2025-11-24T...",
  "service_name": "gofiber-auth"
}"#;

/// Seed 000, "After (V2) - Minimal Identity Event" (verbatim, with the
/// document's `//` comments).
const V2_AFTER: &str = r#"{
  // Minimal Identity Data
  "id": "uuid-here",
  "email": "user@example.com",
  "username": "john_doe",
  "action": "created",

  // Observability Metadata
  "request_id": "uuid",
  "timestamp": "2025-11-24T...",
  "service_name": "gofiber-auth",
  "sequence": 42  // NATS sequence number
}"#;

/// Seed 000, "Scenario: User สมัครใหม่", step 2 "Publish event" (verbatim,
/// with its indentation).
const V2_FLOW: &str = r#"     {
       "id": "uuid-123",
       "email": "john@example.com",
       "username": "john_doe",
       "action": "created"
     }"#;

/// Seed 001, "3. Event Topics & Schemas", the `user.events` payload
/// (verbatim).
const V1_PUBLISHER: &str = r#"{
  "id": "uuid",
  "email": "user@example.com",
  "username": "johndoe",
  "displayName": "John Doe",
  "avatar": "https://...",
  "role": "user",
  "isActive": true,
  "action": "created|updated|deleted",
  "timestamp": "2024-11-24T00:00:00Z"
}"#;

// ---------------------------------------------------------------------------
// Seed 004: the user-service's BaseEvent on dreamscape.user.*
// ---------------------------------------------------------------------------

fn user_service() -> Driver {
    Driver::new("topology/user-service.yaml")
}

#[test]
fn user_created_reaches_each_tier_field_by_field() {
    let mut d = user_service();
    let r = routed(d.pipe(USER_CREATED));
    assert_eq!(r.verdict.label(), "unordered");
    assert_eq!(r.state, None, "ordering is off: no version-store write");
    let [public, internal, restricted] = three(&mut d, &r);

    assert_eq!(public.topic, "events.public");
    assert_eq!(internal.topic, "events.internal");
    assert_eq!(restricted.topic, "events.restricted");
    assert_eq!(public.key, pseudo("usr_123456789"));
    assert_eq!(internal.key, "usr_123456789");
    assert_eq!(restricted.key, "usr_123456789");
    for (t, tier) in [
        (&public, "public"),
        (&internal, "internal"),
        (&restricted, "restricted"),
    ] {
        assert_eq!(
            t.headers,
            [
                ("event_type".to_owned(), "user.created".to_owned()),
                ("entity_type".to_owned(), "user".to_owned()),
                ("privacy_tier".to_owned(), tier.to_owned()),
            ],
            "no entity_version header: the producer has none"
        );
    }

    let envelope = |entity_id: String| {
        json!({
            "event_id": "a1b2c3d4-e5f6-4a5b-8c7d-9e8f7a6b5c4d",
            "event_type": "user.created",
            "entity_type": "user",
            "entity_id": entity_id,
            "entity_version": null,
            "occurred_at": "2025-12-12T10:30:00.000Z",
            "actor": {"actor_type": "SYSTEM", "actor_id": null},
            "schema_version": 1,
            "privacy_tier": "restricted",
        })
    };
    let mut p = envelope(pseudo("usr_123456789"));
    p["data"] = json!({
        "userId": pseudo("usr_123456789"),
        "email": pseudo("john.doe@example.com"),
    });
    assert_eq!(public.value, p);

    let mut i = envelope("usr_123456789".to_owned());
    i["trace_id"] = Value::Null;
    i["correlation_id"] = Value::Null;
    i["producer"] = json!("auth-service");
    i["data"] = json!({
        "userId": "usr_123456789",
        "email": pseudo("john.doe@example.com"),
        "createdAt": "2025-12-12T10:30:00.000Z",
    });
    assert_eq!(internal.value, i);

    let mut x = i.clone();
    x["data"] = json!({
        "userId": "usr_123456789",
        "email": "john.doe@example.com",
        "firstName": "John",
        "lastName": "Doe",
        "createdAt": "2025-12-12T10:30:00.000Z",
    });
    assert_eq!(restricted.value, x);

    for t in [&public, &internal] {
        for pii in ["john.doe@example.com", "John", "Doe"] {
            assert!(!t.holds(pii), "{pii} reached {}", t.topic);
        }
    }
}

#[test]
fn user_updated_changes_reach_restricted_only_as_a_whole() {
    let mut d = user_service().on_topic("dreamscape.user.updated");
    let r = routed(d.pipe(USER_UPDATED));
    let [public, internal, restricted] = three(&mut d, &r);
    assert_eq!(public.header("event_type"), Some("user.updated"));
    assert_eq!(
        public.value["data"],
        json!({"userId": pseudo("usr_123456789")})
    );
    assert_eq!(
        internal.value["data"],
        json!({"userId": "usr_123456789", "updatedAt": "2025-12-12T11:45:00.000Z"})
    );
    assert_eq!(
        restricted.value["data"],
        json!({
            "userId": "usr_123456789",
            "changes": {
                "username": {"old": "johndoe", "new": "john_doe_2025"},
                "email": {"old": "john.old@example.com", "new": "john.new@example.com"}
            },
            "updatedAt": "2025-12-12T11:45:00.000Z"
        })
    );
    assert_eq!(internal.value["producer"], "user-service");
    for t in [&public, &internal] {
        // Not the values, and not even which fields changed.
        for s in [
            "john.old@example.com",
            "john.new@example.com",
            "johndoe",
            "john_doe_2025",
            "username",
        ] {
            assert!(!t.holds(s), "{s} reached {}", t.topic);
        }
    }
}

#[test]
fn user_profile_updated_is_renamed_and_its_profile_is_restricted() {
    let mut d = user_service().on_topic("dreamscape.user.profile.updated");
    let r = routed(d.pipe(USER_PROFILE_UPDATED));
    let [public, internal, restricted] = three(&mut d, &r);
    for t in [&public, &internal, &restricted] {
        assert_eq!(t.header("event_type"), Some("user.profile_updated"));
        assert_eq!(t.value["event_type"], "user.profile_updated");
        assert_eq!(t.value["event_id"], "c3d4e5f6-a7b8-4c5d-0e9f-1a2b3c4d5e6f");
    }
    assert_eq!(
        public.value["data"],
        json!({"userId": pseudo("usr_123456789")})
    );
    assert_eq!(
        internal.value["data"],
        json!({"userId": "usr_123456789", "updatedAt": "2025-12-12T12:00:00.000Z"})
    );
    assert_eq!(
        restricted.value["data"],
        json!({
            "userId": "usr_123456789",
            "profile": {
                "firstName": "John",
                "lastName": "Doe",
                "phone": "+33612345678",
                "avatar": "/uploads/avatars/avatar-1702382400000-123456789.png",
                "dateOfBirth": "1990-01-15",
                "nationality": null
            },
            "updatedAt": "2025-12-12T12:00:00.000Z"
        })
    );
    for t in [&public, &internal] {
        for s in ["+33612345678", "avatar-1702382400000", "1990-01-15", "John"] {
            assert!(!t.holds(s), "{s} reached {}", t.topic);
        }
    }
}

#[test]
fn user_preferences_updated_keeps_business_facts_internal_and_the_meal_restricted() {
    let mut d = user_service().on_topic("dreamscape.user.preferences.updated");
    let r = routed(d.pipe(USER_PREFERENCES_UPDATED));
    let [public, internal, restricted] = three(&mut d, &r);
    assert_eq!(
        public.header("event_type"),
        Some("user.preferences_updated")
    );
    assert_eq!(
        public.value["data"],
        json!({"userId": pseudo("usr_123456789")})
    );
    let mut prefs = json!({
        "language": "fr",
        "currency": "EUR",
        "notifications": {"email": true, "sms": false, "push": true},
        "travelPreferences": {"seatPreference": "window", "classPreference": "economy"}
    });
    assert_eq!(
        internal.value["data"],
        json!({"userId": "usr_123456789", "preferences": prefs, "updatedAt": "2025-12-12T13:15:00.000Z"})
    );
    prefs["travelPreferences"]["mealPreference"] = json!("vegetarian");
    assert_eq!(
        restricted.value["data"],
        json!({"userId": "usr_123456789", "preferences": prefs, "updatedAt": "2025-12-12T13:15:00.000Z"})
    );
    assert!(!public.holds("window") && !public.holds("EUR"));
    assert!(!internal.holds("vegetarian"));
}

#[test]
fn with_ordering_off_every_event_is_routed_unordered() {
    let mut d = user_service();
    for _ in 0..2 {
        let r = routed(d.pipe(USER_CREATED));
        assert_eq!(r.verdict.label(), "unordered");
        assert_eq!(r.state, None);
        assert_eq!(r.records.len(), 3);
    }
    assert_eq!(d.store.len(), 0, "nothing is remembered");
}

#[test]
fn user_service_events_that_do_not_fit_are_dead_letters_without_values() {
    let mut d = user_service();
    let base: Value = serde_json::from_str(USER_CREATED).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v.to_string()
    };
    let cases = [
        (
            with(&|v| v["eventType"] = json!("user.deleted")),
            Reason::UnknownEventType,
            "eventType",
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("eventType");
            }),
            Reason::AdapterMismatch,
            "eventType",
        ),
        (
            with(&|v| {
                v["payload"].as_object_mut().unwrap().remove("userId");
            }),
            Reason::AdapterMismatch,
            "payload.userId",
        ),
        (
            with(&|v| v["payload"] = json!("john.doe@example.com")),
            Reason::AdapterMismatch,
            "payload.userId",
        ),
        (
            with(&|v| v["version"] = json!("v-one")),
            Reason::AdapterMismatch,
            "version",
        ),
        (
            with(&|v| v["correlationId"] = json!("corr-john.doe")),
            Reason::InvalidUuid,
            "correlation_id",
        ),
        (
            with(&|v| v["payload"]["email"] = json!(["john.doe@example.com"])),
            Reason::SchemaMismatch,
            "data.email",
        ),
        (
            with(&|v| v["payload"]["createdAt"] = json!("12/12/2025")),
            Reason::InvalidTimestamp,
            "data.createdAt",
        ),
        ("[1, 2]".to_owned(), Reason::MalformedJson, "JSON object"),
        (
            "usr_123456789".to_owned(),
            Reason::MalformedJson,
            "JSON object",
        ),
    ];
    for (i, (value, reason, path)) in cases.into_iter().enumerate() {
        let (rec, got, detail) = rejected(d.pipe(&value));
        assert_eq!(got, reason, "case {i}: {detail}");
        assert!(detail.contains(path), "case {i}: {detail}");
        assert_eq!(&*rec.topic, "events.dlq");
        assert_eq!(rec.value.as_deref(), Some(value.as_bytes()), "unchanged");
        assert_eq!(rec.header("x-error-reason"), Some(reason.code().as_bytes()));
        assert_eq!(
            rec.header("x-source-topic"),
            Some(&b"dreamscape.user.created"[..])
        );
        for v in [
            "user.deleted",
            "usr_123456789",
            "john.doe",
            "v-one",
            "12/12/2025",
        ] {
            assert!(!detail.contains(v), "case {i} quotes a value: {detail}");
        }
    }
}

// ---------------------------------------------------------------------------
// Seeds 000 and 001: the auth service's identity event, V1 and V2
// ---------------------------------------------------------------------------

fn auth() -> Driver {
    Driver::new("topology/auth-identity.yaml")
}

/// Seed 001's payload with its one placeholder filled: `action` lists the
/// three values; an event carries one.
fn v1_created() -> String {
    V1_PUBLISHER.replace("created|updated|deleted", "created")
}

/// Seed 000's V2 with the document's comments removed and its placeholders
/// (`"2025-11-24T..."`, `"uuid"`) filled.
fn v2_created() -> String {
    without_annotations(V2_AFTER)
        .replace("2025-11-24T...", "2025-11-24T09:15:00Z")
        .replace(
            r#""request_id": "uuid""#,
            r#""request_id": "5b0c7e52-3f1d-4c8a-9e2b-7a6d1c0f4e93""#,
        )
}

#[test]
fn the_identity_seed_examples_as_written_are_dead_letters_with_reasons() {
    let mut d = auth();
    let cases = [
        // With the document's comments it is not JSON at all.
        (V1_BEFORE.to_owned(), Reason::MalformedJson, "JSON object"),
        // Without them, the placeholders remain: "2025-11-24T..." is no instant.
        (
            without_annotations(V1_BEFORE),
            Reason::InvalidTimestamp,
            "occurred_at",
        ),
        (
            without_annotations(V2_AFTER),
            Reason::InvalidTimestamp,
            "occurred_at",
        ),
        // The scenario's event leaves out the timestamp.
        (V2_FLOW.to_owned(), Reason::AdapterMismatch, "timestamp"),
        // The publisher's schema lists every action in one string.
        (V1_PUBLISHER.to_owned(), Reason::UnknownEventType, "action"),
    ];
    for (i, (value, reason, path)) in cases.into_iter().enumerate() {
        let (rec, got, detail) = rejected(d.pipe(&value));
        assert_eq!(got, reason, "case {i}: {detail}");
        assert!(detail.contains(path), "case {i}: {detail}");
        assert_eq!(rec.value.as_deref(), Some(value.as_bytes()), "unchanged");
        assert_eq!(rec.header("x-source-topic"), Some(&b"auth.user.events"[..]));
        for v in [
            "uuid-here",
            "uuid-123",
            "user@example.com",
            "john@example.com",
            "john_doe",
            "John Doe",
            "2025-11-24T",
            "created|updated|deleted",
            "gofiber-auth",
        ] {
            assert!(!detail.contains(v), "case {i} quotes a value: {detail}");
        }
    }
    assert_eq!(d.store.len(), 0);
}

#[test]
fn a_v1_identity_event_reaches_each_tier_field_by_field_and_role_and_is_active_never_reach_public()
{
    let mut d = auth();
    let r = routed(d.pipe(&v1_created()));
    assert_eq!(
        r.verdict.label(),
        "unordered",
        "V1 has no sequence: routed without an ordering verdict"
    );
    assert_eq!(r.state, None);
    let [public, internal, restricted] = three(&mut d, &r);

    // A derived id, the same in every tier and for a re-delivery.
    let event_id = public.value["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&event_id).unwrap().get_version(),
        Some(uuid::Version::Custom)
    );
    let again = routed(auth().pipe(&v1_created()));
    assert_eq!(
        again.records[0].value, r.records[0].value,
        "the same event, the same record"
    );

    assert_eq!(public.key, pseudo("uuid"));
    assert_eq!(internal.key, "uuid");
    assert_eq!(public.header("event_type"), Some("identity.created"));
    let envelope = |entity_id: String| {
        json!({
            "event_id": event_id,
            "event_type": "identity.created",
            "entity_type": "user",
            "entity_id": entity_id,
            "entity_version": null,
            "occurred_at": "2024-11-24T00:00:00Z",
            "actor": {"actor_type": "SYSTEM", "actor_id": null},
            "schema_version": 1,
            "privacy_tier": "restricted",
        })
    };
    let mut p = envelope(pseudo("uuid"));
    p["data"] = json!({
        "id": pseudo("uuid"),
        "email": pseudo("user@example.com"),
        "action": "created",
        "timestamp": "2024-11-24T00:00:00Z",
    });
    assert_eq!(public.value, p);

    let mut i = envelope("uuid".to_owned());
    i["trace_id"] = Value::Null;
    i["correlation_id"] = Value::Null;
    i["producer"] = json!("gofiber-auth");
    i["data"] = json!({
        "id": "uuid",
        "email": pseudo("user@example.com"),
        "action": "created",
        "request_id": null,
        "timestamp": "2024-11-24T00:00:00Z",
        "service_name": null,
        "sequence": null,
    });
    assert_eq!(internal.value, i);

    let mut x = i.clone();
    x["data"] = json!({
        "id": "uuid",
        "email": "user@example.com",
        "username": "johndoe",
        "displayName": "John Doe",
        "avatar": "https://...",
        "role": "user",
        "isActive": true,
        "action": "created",
        "request_id": null,
        "timestamp": "2024-11-24T00:00:00Z",
        "service_name": null,
        "sequence": null,
    });
    assert_eq!(restricted.value, x);

    // role and isActive: not in public (nor internal: the auth service
    // calls them security sensitive), neither as values nor as fields of
    // the derived schema.
    for t in [&public, &internal] {
        let data = t.value["data"].as_object().unwrap();
        assert!(!data.contains_key("role") && !data.contains_key("isActive"));
        for s in ["John Doe", "johndoe", "user@example.com", "https://..."] {
            assert!(!t.holds(s), "{s} reached {}", t.topic);
        }
    }
    let public_schema = d
        .registry
        .latest("events.public-com.privacyrouter.producers.auth_identity.identity.IdentityCreated")
        .unwrap()
        .1;
    assert!(!public_schema.contains("\"role\"") && !public_schema.contains("\"isActive\""));
}

#[test]
fn a_v2_identity_event_reaches_each_tier_field_by_field() {
    let mut d = auth();
    let r = routed(d.pipe(&v2_created()));
    assert_eq!(r.verdict.label(), "accepted");
    let [public, internal, restricted] = three(&mut d, &r);
    assert_eq!(public.key, pseudo("uuid-here"));
    assert_eq!(restricted.key, "uuid-here");
    assert_eq!(public.value["entity_version"], Value::Null);
    assert_eq!(public.value["occurred_at"], "2025-11-24T09:15:00Z");
    assert_eq!(
        public.value["data"],
        json!({
            "id": pseudo("uuid-here"),
            "email": pseudo("user@example.com"),
            "action": "created",
            "timestamp": "2025-11-24T09:15:00Z",
        })
    );
    assert!(public.value.get("trace_id").is_none() && public.value.get("producer").is_none());
    assert_eq!(
        internal.value["trace_id"],
        "5b0c7e52-3f1d-4c8a-9e2b-7a6d1c0f4e93"
    );
    assert_eq!(internal.value["producer"], "gofiber-auth");
    assert_eq!(
        internal.value["data"],
        json!({
            "id": "uuid-here",
            "email": pseudo("user@example.com"),
            "action": "created",
            "request_id": "5b0c7e52-3f1d-4c8a-9e2b-7a6d1c0f4e93",
            "timestamp": "2025-11-24T09:15:00Z",
            "service_name": "gofiber-auth",
            "sequence": 42,
        })
    );
    assert_eq!(
        restricted.value["data"],
        json!({
            "id": "uuid-here",
            "email": "user@example.com",
            "username": "john_doe",
            "displayName": null,
            "avatar": null,
            "role": null,
            "isActive": null,
            "action": "created",
            "request_id": "5b0c7e52-3f1d-4c8a-9e2b-7a6d1c0f4e93",
            "timestamp": "2025-11-24T09:15:00Z",
            "service_name": "gofiber-auth",
            "sequence": 42,
        })
    );
}

#[test]
fn v2_events_are_ordered_by_their_nats_sequence() {
    let mut d = auth();
    let v2 = v2_created();
    let at = |seq: u32, action: &str, minute: u32| {
        v2.replace(r#""sequence": 42"#, &format!(r#""sequence": {seq}"#))
            .replace(
                r#""action": "created""#,
                &format!(r#""action": "{action}""#),
            )
            .replace("09:15:00Z", &format!("09:{minute:02}:00Z"))
    };

    let first = routed(d.pipe(&at(42, "created", 15)));
    assert_eq!(first.verdict.label(), "accepted");
    let state = first.state.unwrap();
    assert_eq!(state.key, b"identity:user/uuid-here", "its own keyspace");
    assert_eq!(state.version, 42);

    // A re-delivery and an older event are not emitted again.
    assert!(
        matches!(d.pipe(&at(42, "created", 15)), Outcome::Skipped(v) if v.label() == "duplicate")
    );
    assert!(matches!(d.pipe(&at(41, "updated", 14)), Outcome::Skipped(v) if v.label() == "stale"));

    // The stream numbers every user's events: a jump is not a gap.
    let later = routed(d.pipe(&at(97, "updated", 30)));
    assert_eq!(later.verdict.label(), "accepted");
    assert!(later
        .records
        .iter()
        .all(|r| r.header("x-version-gap").is_none() && r.header("entity_version").is_none()));
    assert_eq!(later.state.unwrap().version, 97);
    assert!(matches!(d.pipe(&at(96, "updated", 29)), Outcome::Skipped(v) if v.label() == "stale"));

    // The sequence is optional in V2, absent in V1: routed, unordered, and
    // the remembered sequence stays.
    let without: Value = {
        let mut v: Value = serde_json::from_str(&at(0, "updated", 31)).unwrap();
        v.as_object_mut().unwrap().remove("sequence");
        v
    };
    let r = routed(d.pipe_json(&without));
    assert_eq!((r.verdict.label(), r.state), ("unordered", None));
    let r = routed(d.pipe(&v1_created()));
    assert_eq!((r.verdict.label(), r.state), ("unordered", None));
    assert!(
        matches!(d.pipe(&at(97, "updated", 30)), Outcome::Skipped(v) if v.label() == "duplicate")
    );
    assert_eq!(d.store.len(), 1);

    // A sequence that is no positive integer does not fit the adapter.
    let (_, reason, detail) =
        rejected(d.pipe(&v2.replace(r#""sequence": 42"#, r#""sequence": "42""#)));
    assert_eq!(reason, Reason::AdapterMismatch);
    assert!(
        detail.contains("sequence") && !detail.contains("42"),
        "{detail}"
    );
}

// ---------------------------------------------------------------------------
// Seed 002: the user-service event catalogue (names only; payloads are ours)
// ---------------------------------------------------------------------------

fn catalogue() -> Driver {
    Driver::new("topology/user-catalogue.yaml")
}

/// Every event the catalogue names (seed 002, "Key Published Events").
const CATALOGUE: [&str; 16] = [
    "UserRegistered",
    "UserEmailVerified",
    "UserPasswordChanged",
    "UserAccountStatusChanged",
    "UserDeleted",
    "UserProfileUpdated",
    "UserAddressAdded",
    "UserAddressUpdated",
    "UserAddressDeleted",
    "UserLoggedIn",
    "UserLoginFailed",
    "UserLoggedOut",
    "MfaStatusChanged",
    "RoleCreated",
    "RoleAssignedToUser",
    "PermissionGrantedToRole",
];

#[test]
fn every_catalogue_event_is_mapped_and_has_a_schema() {
    let t = Topology::load(Path::new("topology/user-catalogue.yaml")).unwrap();
    let adapter = &t.spec.adapters["catalogue"];
    let mut names: Vec<&str> = adapter.event_types.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected = CATALOGUE.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    let reg = file::load(
        &t.spec.schemas.folder,
        &t.engine.subjects,
        &t.spec.input.topics,
    )
    .unwrap();
    for event_type in adapter.event_types.values() {
        assert!(
            reg.events.iter().any(|e| &e.event_type == event_type),
            "{event_type} has no schema"
        );
    }
}

#[test]
fn catalogue_events_reach_the_tiers_their_sensitivity_allows() {
    let mut d = catalogue();
    let sample = std::fs::read_to_string("samples/user-catalogue.jsonl").unwrap();
    let mut reached: Vec<(String, Vec<String>)> = Vec::new();
    let mut below_restricted: Vec<Tiered> = Vec::new();
    let mut all: Vec<Tiered> = Vec::new();
    let mut dead = Vec::new();
    for line in sample.lines() {
        match d.pipe(line) {
            Outcome::Routed(r) => {
                assert_eq!(r.verdict.label(), "unordered");
                let tiers = d.tiers(&r);
                let et = tiers[0].1.header("event_type").unwrap().to_owned();
                reached.push((et, tiers.iter().map(|(n, _)| n.clone()).collect()));
                for (name, t) in tiers {
                    if name != "restricted" {
                        below_restricted.push(t);
                    } else {
                        all.push(t);
                    }
                }
            }
            Outcome::DeadLettered { rejection, .. } => dead.push(rejection.reason),
            Outcome::Skipped(v) => panic!("nothing is ordered here: {v:?}"),
            Outcome::Held { .. } => panic!("nothing is ordered here, nothing is held"),
        }
    }
    let security = [
        "user.password_changed",
        "user.logged_in",
        "user.login_failed",
        "user.logged_out",
        "user.mfa_status_changed",
    ];
    let admin = [
        "role.created",
        "role.permission_granted",
        "user.role_assigned",
    ];
    assert_eq!(reached.len(), 17);
    for (et, tiers) in &reached {
        let expected: &[&str] = if security.contains(&et.as_str()) {
            &["restricted"]
        } else if admin.contains(&et.as_str()) {
            &["internal", "restricted"]
        } else {
            &["public", "internal", "restricted"]
        };
        assert_eq!(tiers, expected, "{et}");
    }
    for s in security {
        assert!(
            reached.iter().any(|(et, _)| et == s),
            "{s} is in the sample"
        );
    }
    assert_eq!(dead, [Reason::UnknownEventType, Reason::AdapterMismatch]);

    // Secrets a producer might add are never forwarded, not even to
    // compliance: the schemas do not know them.
    for t in all.iter().chain(&below_restricted) {
        for secret in ["$2b$12$", "JBSWY3DPEHPK3PXP", "passwordHash", "totpSecret"] {
            assert!(!t.holds(secret), "{secret} reached {}", t.topic);
        }
    }
    // Below restricted: no e-mail, phone, IP, session, name or address.
    for t in &below_restricted {
        for pii in [
            "@example.",
            "+351",
            "198.51.100.",
            "203.0.113.",
            "sess_",
            "Maria",
            "Silva",
            "Rua das Flores",
            "Chargeback",
        ] {
            assert!(!t.holds(pii), "{pii} reached {}: {}", t.topic, t.value);
        }
    }
}

#[test]
fn catalogue_registration_and_role_events_field_by_field() {
    let mut d = catalogue();
    let sample = std::fs::read_to_string("samples/user-catalogue.jsonl").unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    let user = "6f1d2c3b-0a9e-4f8d-b7c6-5e4d3c2b1a00";

    let r = routed(d.pipe(lines[0]));
    let [public, internal, restricted] = three(&mut d, &r);
    assert_eq!(public.header("event_type"), Some("user.registered"));
    assert_eq!(
        public.value["event_id"],
        "7c9e6679-7425-40de-944b-e07fc1f90001"
    );
    assert_eq!(
        internal.value["correlation_id"],
        "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
    );
    assert_eq!(
        public.value["data"],
        json!({"userId": pseudo(user), "email": pseudo("maria.silva@example.com")})
    );
    assert_eq!(
        internal.value["data"],
        json!({"userId": user, "email": pseudo("maria.silva@example.com"),
               "registrationMethod": "EMAIL", "registeredAt": "2025-06-02T08:00:00.000Z"})
    );
    assert_eq!(
        restricted.value["data"],
        json!({"userId": user, "email": "maria.silva@example.com", "username": "msilva",
               "firstName": "Maria", "lastName": "Silva", "registrationMethod": "EMAIL",
               "registeredAt": "2025-06-02T08:00:00.000Z"})
    );

    // A failed login for an unknown account is keyed unknown-account.
    let failed = lines
        .iter()
        .find(|l| l.contains("UNKNOWN_ACCOUNT"))
        .unwrap();
    let r = routed(d.pipe(failed));
    let tiers = d.tiers(&r);
    assert_eq!(tiers.len(), 1);
    let (tier, t) = &tiers[0];
    assert_eq!(tier, "restricted");
    assert_eq!(t.key, "unknown-account");
    assert_eq!(t.value["data"]["userId"], Value::Null);
    assert_eq!(t.value["data"]["attemptedEmail"], "nobody@example.net");

    // A role event's entity is the role.
    let role = lines
        .iter()
        .find(|l| l.contains("\"RoleCreated\""))
        .unwrap();
    let r = routed(d.pipe(role));
    let tiers = d.tiers(&r);
    let names: Vec<&str> = tiers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["internal", "restricted"]);
    let internal = &tiers[0].1;
    assert_eq!(internal.key, "rol_catalogue_editor");
    assert_eq!(internal.header("entity_type"), Some("role"));
    assert_eq!(
        internal.value["data"],
        json!({"roleId": "rol_catalogue_editor", "roleName": "catalogue-editor",
               "description": "Edits product listings", "permissions": ["products:write"],
               "createdBy": "a2b3c4d5-0000-4e6f-8a7b-9c0d1e2f3a4b",
               "createdAt": "2025-06-05T12:00:00.000Z"})
    );
}

// ---------------------------------------------------------------------------
// Every producer
// ---------------------------------------------------------------------------

#[test]
fn an_adapter_runs_only_on_its_own_topics() {
    // The user-service's BaseEvent on a topic its topology does not declare
    // is read as a canonical event: it has no event_type, so it is refused.
    let mut d = user_service().on_topic("some.other.topic");
    let (_, reason, _) = rejected(d.pipe(USER_CREATED));
    assert_eq!(reason, Reason::InvalidEventType);
    // And a canonical envelope on an adapter's topic does not fit it.
    let mut d = user_service();
    let (_, reason, detail) =
        rejected(d.pipe(r#"{"event_type": "user.created", "event_id": "x"}"#));
    assert_eq!(reason, Reason::AdapterMismatch);
    assert!(detail.contains("eventType"), "{detail}");
}

/// Every object in a JSON value, by its path of keys.
fn object_paths(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(o) = v {
        out.push(path.clone());
        for (k, x) in o {
            path.push(k.clone());
            object_paths(x, path, out);
            path.pop();
        }
    }
}

#[test]
fn mutated_producer_events_are_routed_or_dead_lettered_never_leaked() {
    let mut rng = fastrand::Rng::with_seed(17);
    let (mut routed_n, mut dead_n) = (0, 0);
    for producer in ["user-service", "auth-identity", "user-catalogue"] {
        let mut d = Driver::new(&format!("topology/{producer}.yaml"));
        let sample = std::fs::read_to_string(format!("samples/{producer}.jsonl")).unwrap();
        for line in sample.lines() {
            let original: Value = serde_json::from_str(line).unwrap();
            let mut objects = Vec::new();
            object_paths(&original, &mut Vec::new(), &mut objects);
            for _ in 0..60 {
                let mut v = original.clone();
                let path = &objects[rng.usize(..objects.len())];
                let mut target = &mut v;
                for k in path {
                    target = &mut target[k.as_str()];
                }
                let o = target.as_object_mut().unwrap();
                let keys: Vec<String> = o.keys().cloned().collect();
                if keys.is_empty() {
                    continue;
                }
                let k = keys[rng.usize(..keys.len())].clone();
                match rng.u8(..6) {
                    0 => {
                        o.remove(&k);
                    }
                    1 => o[&k] = Value::Null,
                    2 => o[&k] = json!(rng.i64(-5..100)),
                    3 => o[&k] = json!("x"),
                    4 => o[&k] = json!([1, "a"]),
                    _ => o[&k] = json!({"nested": true}),
                }
                let text = v.to_string();
                match d.pipe(&text) {
                    Outcome::DeadLettered { record, rejection } => {
                        dead_n += 1;
                        assert_eq!(record.value.as_deref(), Some(text.as_bytes()));
                        assert!(!rejection.detail.contains('@'), "{}", rejection.detail);
                    }
                    Outcome::Routed(r) => {
                        routed_n += 1;
                        for t in d.tiers(&r) {
                            if t.0 != "restricted" {
                                for pii in ["@example.", "+33", "+351", "198.51.100.", "203.0.113."]
                                {
                                    assert!(
                                        !t.1.holds(pii),
                                        "{producer}: {pii} reached {} from {text}",
                                        t.0
                                    );
                                }
                            }
                        }
                    }
                    // Producer topologies emit gaps: nothing is held.
                    Outcome::Skipped(_) | Outcome::Held { .. } => {}
                }
            }
        }
    }
    assert!(
        routed_n > 150 && dead_n > 1000,
        "routed {routed_n}, dead {dead_n}"
    );
}
