//! The schemas in `avro/`: complete, explicitly classified, valid, and
//! derivable for every tier — the canonical ones and each producer's
//! (`avro/producers/<producer>`, loaded through its topology).

use std::path::Path;

use serde_json::Value;

use privacy_router::classify::{Rules, TierSource};
use privacy_router::config::Topology;
use privacy_router::project::derived_schema;
use privacy_router::record::Tier;
use privacy_router::registry::file;
use privacy_router::schema::{CompiledSchema, Kind, SubjectNaming};

fn load() -> file::FileRegistry {
    file::load(
        Path::new("avro"),
        &SubjectNaming::default(),
        &["events.raw".to_owned()],
    )
    .unwrap()
}

/// The producer topologies (those with adapters).
const PRODUCERS: [&str; 3] = [
    "topology/user-service.yaml",
    "topology/auth-identity.yaml",
    "topology/user-catalogue.yaml",
];

/// Each producer's schemas, as its topology's file registry loads them.
fn producers() -> Vec<(Topology, file::FileRegistry)> {
    PRODUCERS
        .iter()
        .map(|p| {
            let t = Topology::load(Path::new(p)).unwrap();
            let reg = file::load(
                &t.spec.schemas.folder,
                &t.engine.subjects,
                &t.spec.input.topics,
            )
            .unwrap_or_else(|e| panic!("{p}: {e}"));
            (t, reg)
        })
        .collect()
}

/// Every schema: the canonical ones, then each producer's.
fn all_events() -> Vec<file::EventSchema> {
    let mut events = load().events;
    for (_, reg) in producers() {
        events.extend(reg.events);
    }
    events
}

#[test]
fn every_event_type_of_seed_003_has_a_schema() {
    let reg = load();
    let types: Vec<&str> = reg.events.iter().map(|e| e.event_type.as_str()).collect();
    // Seed 003 §2, domain by domain (`Login*`, `Payment*`, `Inventory*`,
    // `Approved*`/`Rejected*`, `Global*` expanded to concrete events).
    for t in [
        "user.created",
        "user.verified",
        "user.updated",
        "user.suspended",
        "user.deleted",
        "user.role_changed",
        "user.stats_changed",
        "user.login_succeeded",
        "user.login_failed",
        "user.locked",
        "supplier.created",
        "supplier.verified",
        "supplier.rejected",
        "supplier.suspended",
        "supplier.stats_changed",
        "community.created",
        "community.updated",
        "community.member_joined",
        "community.member_left",
        "community.deleted",
        "product.created",
        "product.published",
        "product.price_changed",
        "product.inventory_updated",
        "product.deleted",
        "promotion.created",
        "promotion.submitted",
        "promotion.approved",
        "promotion.rejected",
        "promotion.scheduled",
        "promotion.activated",
        "promotion.paused",
        "promotion.ended",
        "promotion.impression",
        "promotion.clicked",
        "promotion.converted",
        "post.created",
        "post.published",
        "post.updated",
        "post.global_approved",
        "post.pinned",
        "post.hidden",
        "post.deleted",
        "post.stats_changed",
        "order.created",
        "order.payment_authorized",
        "order.payment_captured",
        "order.payment_failed",
        "order.confirmed",
        "order.item_shipped",
        "order.item_delivered",
        "order.status_changed",
        "order.cancelled",
        "order.attribution_recorded",
    ] {
        assert!(types.contains(&t), "{t} has no schema");
    }
}

#[test]
fn our_schemas_label_every_field_explicitly() {
    let mut unlabelled = Vec::new();
    for e in &all_events() {
        let s = CompiledSchema::compile(&e.text, &Rules::default()).unwrap();
        for (path, f) in s.fields_with_paths() {
            if f.class.source != TierSource::Label || f.attrs.get("privacy").is_none() {
                unlabelled.push(format!("{}: {path}", e.path.display()));
            }
        }
    }
    assert!(
        unlabelled.is_empty(),
        "fields without their own privacy label:\n{}",
        unlabelled.join("\n")
    );
}

#[test]
fn every_schema_is_an_envelope_and_derives_valid_tier_schemas() {
    for e in &all_events() {
        let s = CompiledSchema::compile(&e.text, &Rules::default()).unwrap();
        s.envelope()
            .unwrap_or_else(|why| panic!("{}: {why}", e.path.display()));
        for tier in Tier::ALL {
            let derived = derived_schema(&s, tier);
            apache_avro::Schema::parse(&derived)
                .unwrap_or_else(|err| panic!("{} {tier}: {err}", e.path.display()));
        }
    }
}

#[test]
fn pii_field_names_are_never_below_restricted() {
    // A safety net over the labels: names that mean e-mail, phone, IP or a
    // street address are restricted (or hashed below it) everywhere.
    let reg = load();
    for e in &reg.events {
        let s = CompiledSchema::compile(&e.text, &Rules::default()).unwrap();
        for (path, f) in s.fields_with_paths() {
            let n = f.name.as_str();
            let pii = n.contains("email")
                || n.contains("phone")
                || n.contains("ip_address")
                || n.contains("street")
                || n.contains("line1")
                || n.contains("birth")
                || n.contains("user_agent");
            if pii {
                assert_eq!(f.class.tier, Tier::Restricted, "{}: {path}", e.event_type);
            }
        }
    }
}

#[test]
fn the_schemas_use_every_avro_shape() {
    let reg = load();
    let (
        mut arrays,
        mut maps,
        mut unions,
        mut record_unions,
        mut enums,
        mut hashed,
        mut tagged,
        mut defaults,
    ) = (0, 0, 0, 0, 0, 0, 0, 0);
    for e in &reg.events {
        let s = CompiledSchema::compile(&e.text, &Rules::default()).unwrap();
        for (_, f) in s.fields_with_paths() {
            match &s.node(f.node).kind {
                Kind::Array(_) => arrays += 1,
                Kind::Map(_) => maps += 1,
                Kind::Enum(_) => enums += 1,
                Kind::Union(bs) => {
                    unions += 1;
                    if bs
                        .iter()
                        .filter(|b| matches!(s.node(**b).kind, Kind::Record(_)))
                        .count()
                        >= 2
                    {
                        record_unions += 1;
                    }
                }
                _ => {}
            }
            hashed += usize::from(f.attrs.get("redact") == Some(&Value::from("hash")));
            tagged += usize::from(f.attrs.contains_key("confluent:tags"));
        }
        let payload: Value =
            serde_json::from_str(&std::fs::read_to_string(&e.path).unwrap()).unwrap();
        defaults += usize::from(payload.get("privacy").is_some());
    }
    assert!(arrays > 0 && maps > 0 && unions > 0 && record_unions >= 2 && enums > 0);
    assert!(
        hashed >= 5 && tagged >= 5,
        "hashed {hashed}, tagged {tagged}"
    );
    assert!(
        defaults > 0,
        "some payload records carry a record-level default"
    );
}

#[test]
fn producer_pii_field_names_are_never_below_restricted() {
    // The same safety net over the producers' camelCase names: a string
    // that is an e-mail, phone, IP, user agent, name, handle, avatar,
    // session, street or birth date is restricted (or hashed below it).
    // Non-strings are flags about them (`notifications.email: true`).
    for (_, reg) in producers() {
        for e in &reg.events {
            let s = CompiledSchema::compile(&e.text, &Rules::default()).unwrap();
            for (path, f) in s.fields_with_paths() {
                let n = f.name.to_ascii_lowercase();
                let pii = [
                    "email",
                    "phone",
                    "ipaddress",
                    "useragent",
                    "firstname",
                    "lastname",
                    "displayname",
                    "username",
                    "avatar",
                    "session",
                    "street",
                    "birth",
                    "password",
                    "secret",
                ]
                .iter()
                .any(|p| n.contains(p));
                let stringy = match &s.node(f.node).kind {
                    Kind::String => true,
                    Kind::Union(bs) => bs.iter().any(|b| s.node(*b).kind == Kind::String),
                    _ => false,
                };
                if pii && stringy {
                    assert_eq!(
                        f.class.tier,
                        Tier::Restricted,
                        "{}: {path}",
                        e.path.display()
                    );
                }
            }
        }
    }
}

#[test]
fn every_mapped_event_type_has_a_schema_and_every_schema_is_mapped() {
    for (t, reg) in producers() {
        let mapped: std::collections::BTreeSet<&str> = t
            .spec
            .adapters
            .values()
            .flat_map(|a| a.event_types.values().map(String::as_str))
            .collect();
        let schemas: std::collections::BTreeSet<&str> =
            reg.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(mapped, schemas, "{}", t.file.display());
        for (event_type, cfg) in &t.spec.event_types {
            assert!(
                schemas.contains(event_type.as_str()),
                "{}: event_types.{event_type} names no schema ({cfg:?})",
                t.file.display()
            );
        }
    }
}

/// An envelope with what a producer copy may change blanked out: docs,
/// namespaces, and the type of `entity_version`.
fn comparable(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("doc");
                o.remove("namespace");
                if o.get("name") == Some(&Value::from("entity_version")) {
                    o.remove("type");
                    o.remove("default");
                }
                o.values_mut().for_each(walk);
            }
            Value::Array(xs) => xs.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

#[test]
fn producer_envelopes_are_the_canonical_one_with_documented_differences() {
    let read =
        |p: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let canonical = read("avro/envelope.avsc");
    for (t, _) in producers() {
        let folder = t.spec.schemas.folder.display().to_string();
        let env = read(&format!("{folder}/envelope.avsc"));
        let ns = env["namespace"].as_str().unwrap();
        assert!(ns.starts_with("com.privacyrouter.producers."), "{folder}");
        let version = env["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "entity_version")
            .unwrap();
        assert_eq!(version["type"], serde_json::json!(["null", "long"]));
        assert_eq!(version["default"], Value::Null);
        let mut env = comparable(env);
        if folder.ends_with("user-catalogue") {
            // The catalogue's admin events are about roles.
            let symbols = env["fields"][2]["type"]["symbols"].as_array_mut().unwrap();
            assert_eq!(symbols.pop(), Some(Value::from("role")));
        }
        assert_eq!(env, comparable(canonical.clone()), "{folder}");
    }
}
