//! What a topology says about schemas, checked against the schemas the
//! processor will read ([`Catalogue`]: the file registry's folder, or every
//! version of the input subjects in the registry given by `--registry-url`).
//!
//! Configuration fails closed: a name that matches nothing would let the
//! rule it carries lapse silently (a misspelt `user.login_faild: {tiers:
//! [restricted]}` leaves `user.login_failed` reaching every tier), so each of
//! these is an **error**, with a "did you mean" where a near name exists:
//!
//! * an event type in `event_types` or in an adapter's mapping that no
//!   schema defines;
//! * a subject version in `event_types.<type>.versions` that does not exist;
//! * an override in `classification.overrides` that matches no field of any
//!   schema, or that would lower a field's tier.
//!
//! A tag that the file's `classification.tags` adds to the default map
//! (`PII`, `INTERNAL`, `PUBLIC`) and that no field carries is only a
//! **warning**: it changes nothing, but it is likely a misspelling.

use std::collections::{BTreeMap, BTreeSet};

use super::{did_you_mean, Problem, Topology};
use crate::classify::TAGS_KEY;
use crate::registry::Catalogue;
use crate::schema::CompiledSchema;

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaCheck {
    /// The topology is refused for these.
    pub errors: Vec<Problem>,
    /// Probably mistakes, never a leak.
    pub warnings: Vec<Problem>,
}

/// Checks `topology` against `catalogue` (see the module docs). Schemas
/// that do not compile are skipped here: loading them reports them.
pub fn check(topology: &Topology, catalogue: &Catalogue) -> SchemaCheck {
    let mut out = SchemaCheck::default();
    let known = catalogue.event_types();
    let source = catalogue.source.as_str();
    let mut error = |path: String, message: String| {
        let place = topology.place(&path);
        out.errors.push(Problem {
            path,
            message,
            place,
        });
    };
    let unknown = |event_type: &str| {
        let mut m = format!("no schema in {source} defines the event type {event_type}");
        if let Some(s) = did_you_mean(event_type, known.iter().copied()) {
            m.push_str(&format!("; did you mean {s}?"));
        }
        m
    };
    for (event_type, cfg) in &topology.spec.event_types {
        let base = format!("event_types.{event_type}");
        if !known.contains(event_type.as_str()) {
            error(base, unknown(event_type));
            continue;
        }
        let versions = catalogue.versions_of(event_type);
        for (from, to) in cfg.versions.iter().flatten() {
            if !versions.contains(to) {
                error(
                    format!("{base}.versions.{from}"),
                    format!(
                        "maps schema_version {from} to version {to}, which the subject does not have in {source} (it has {})",
                        list(&versions)
                    ),
                );
            }
        }
    }
    for (name, adapter) in &topology.spec.adapters {
        for (producer_type, event_type) in &adapter.event_types {
            if !known.contains(event_type.as_str()) {
                error(
                    format!("adapters.{name}.event_types.{producer_type}"),
                    unknown(event_type),
                );
            }
        }
    }

    let rules = &topology.engine.rules;
    let compiled: Vec<CompiledSchema> = catalogue
        .schemas
        .iter()
        .filter_map(|s| CompiledSchema::compile(&s.text, rules).ok())
        .collect();
    // Overrides: each must match a field somewhere, and never lower one.
    let mut matched = BTreeSet::new();
    let mut lowering = BTreeMap::new();
    for schema in &compiled {
        for hit in schema.overridden() {
            matched.insert((hit.record.clone(), hit.path.clone()));
            if hit.override_tier < hit.schema_tier {
                lowering
                    .entry((hit.record.clone(), hit.path.clone()))
                    .or_insert((hit.schema_tier, hit.override_tier));
            }
        }
    }
    let records: BTreeMap<&str, BTreeSet<&str>> = compiled
        .iter()
        .flat_map(|s| s.records())
        .map(|(name, fields)| (name, fields.iter().map(|f| f.name.as_str()).collect()))
        .collect();
    for (record, path, tier) in rules.overrides.iter() {
        let at = format!("classification.overrides.{record}.{path}");
        if let Some((schema_tier, _)) = lowering.get(&(record.to_owned(), path.to_owned())) {
            error(
                at,
                format!(
                    "would lower the field from {schema_tier} (what its schema says) to {tier}; an override can only raise a tier"
                ),
            );
        } else if !matched.contains(&(record.to_owned(), path.to_owned())) {
            let mut m = format!("matches no field of any schema in {source}");
            match records.get(record) {
                None => {
                    m = format!("{m}: no schema has a record named {record}");
                    if let Some(s) = did_you_mean(record, records.keys().copied()) {
                        m.push_str(&format!("; did you mean {s}?"));
                    }
                }
                Some(fields) => {
                    let first = path.split('.').next().unwrap_or(path);
                    if let Some(s) = did_you_mean(first, fields.iter().copied()) {
                        m.push_str(&format!("; did you mean {s}?"));
                    }
                }
            }
            error(at, m);
        }
    }

    // Tags that no field carries: harmless, but likely a misspelling.
    let used: BTreeSet<&str> = compiled
        .iter()
        .flat_map(|s| s.records().flat_map(|(_, fields)| fields.iter()))
        .filter_map(|f| f.attrs.get(TAGS_KEY)?.as_array())
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    for tag in rules.tags.0.keys() {
        let path = format!("classification.tags.{tag}");
        let default = crate::classify::TagMap::default().0.contains_key(tag);
        if !used.contains(tag.as_str()) && !default && topology.writes(&path) {
            let place = topology.place(&path);
            out.warnings.push(Problem {
                path,
                message: format!("no field of any schema in {source} carries this tag"),
                place,
            });
        }
    }
    out.errors.sort_by_key(|p| (p.place.is_none(), p.place));
    out
}

fn list(versions: &BTreeSet<u32>) -> String {
    if versions.is_empty() {
        return "none".to_owned();
    }
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
