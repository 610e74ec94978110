//! The schemas in `avro/`: complete, explicitly classified, valid, and
//! derivable for every tier.

use std::path::Path;

use serde_json::Value;

use privacy_router::classify::{TagMap, TierSource};
use privacy_router::pipeline::SubjectNaming;
use privacy_router::project::derived_schema;
use privacy_router::record::Tier;
use privacy_router::registry::file;
use privacy_router::schema::{CompiledSchema, Kind};

fn load() -> file::FileRegistry {
    file::load(
        Path::new("avro"),
        &SubjectNaming::default(),
        &["events.raw".to_owned()],
    )
    .unwrap()
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
    let reg = load();
    let mut unlabelled = Vec::new();
    for e in &reg.events {
        let s = CompiledSchema::compile(&e.text, &TagMap::default()).unwrap();
        for (path, f) in s.fields_with_paths() {
            if f.class.source != TierSource::Label || f.attrs.get("privacy").is_none() {
                unlabelled.push(format!("{}: {path}", e.event_type));
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
    let reg = load();
    for e in &reg.events {
        let s = CompiledSchema::compile(&e.text, &TagMap::default()).unwrap();
        s.envelope()
            .unwrap_or_else(|why| panic!("{}: {why}", e.event_type));
        for tier in Tier::ALL {
            let derived = derived_schema(&s, tier);
            apache_avro::Schema::parse(&derived)
                .unwrap_or_else(|err| panic!("{} {tier}: {err}", e.event_type));
        }
    }
}

#[test]
fn pii_field_names_are_never_below_restricted() {
    // A safety net over the labels: names that mean e-mail, phone, IP or a
    // street address are restricted (or hashed below it) everywhere.
    let reg = load();
    for e in &reg.events {
        let s = CompiledSchema::compile(&e.text, &TagMap::default()).unwrap();
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
        let s = CompiledSchema::compile(&e.text, &TagMap::default()).unwrap();
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
