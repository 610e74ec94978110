//! Inspection: what a topology and its schemas will do, worked out without
//! running anything — for producers' CI (`check`), operators (`describe`)
//! and compliance reviewers (`privacy-report`).
//!
//! Everything here reads the same structs the engine runs on (the validated
//! [`Topology`](crate::config::Topology), its [`EngineConfig`], schemas
//! compiled by [`CompiledSchema::compile`] with the topology's tag map) and
//! applies the engine's one rule, [`treatment`], so what a report says is
//! what the engine does. The functions return structs and strings; the CLI
//! only prints them.
//!
//! * [`check`]: the topology and every schema it touches, with every problem
//!   and every field that falls to the fail-closed default.
//! * [`describe`]: the topology as a graph (text or Mermaid).
//! * [`report`]: which field reaches which tier and how (Markdown or HTML).

pub mod check;
pub mod describe;
pub mod report;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::classify::{Redact, TierSource, PRIVACY_KEY, TAGS_KEY};
use crate::pipeline::EngineConfig;
use crate::project::{derived_schema, treatment, Treatment};
use crate::record::Tier;
use crate::registry::file::EventSchema;
use crate::schema::{CompiledSchema, Field, Kind, NodeId};

/// Where a field's tier came from: [`TierSource`] with labels told apart
/// from Confluent tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Provenance {
    /// The field's own `"privacy"` label (any mapped tag is less strict).
    Label,
    /// Mapped `"confluent:tags"` decided it: the field has no label, or one
    /// less strict than the tags.
    Tag {
        /// The tags that map to the winning tier.
        tags: Vec<String>,
    },
    /// The label and the strictest mapped tag agree.
    LabelAndTag {
        /// The tags that map to the same tier as the label.
        tags: Vec<String>,
    },
    /// No label or mapped tag: the enclosing record's `"privacy"` default.
    RecordDefault,
    /// No label, no mapped tag, no default from its own record: restricted.
    FailClosed,
}

impl Provenance {
    /// A short human description, e.g. `label + tag PII`.
    pub fn describe(&self) -> String {
        match self {
            Provenance::Label => "label".to_owned(),
            Provenance::Tag { tags } => format!("tag {}", tags.join(", ")),
            Provenance::LabelAndTag { tags } => format!("label + tag {}", tags.join(", ")),
            Provenance::RecordDefault => "record default".to_owned(),
            Provenance::FailClosed => "fail-closed default".to_owned(),
        }
    }
}

/// What one tier's record does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// Carried unchanged.
    Kept,
    /// Replaced by its keyed pseudonym (`redact: hash`).
    Hashed,
    /// Cut out of the record and of the derived schema.
    Removed,
    /// Absent because a field containing it is removed from this tier.
    RemovedWithContainer,
    /// The event type reaches no record of this tier (topology tier limit).
    NotRouted,
}

impl Reach {
    /// The word used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Kept => "kept",
            Reach::Hashed => "hashed",
            Reach::Removed => "removed",
            Reach::RemovedWithContainer => "removed (container)",
            Reach::NotRouted => "not routed",
        }
    }
}

/// One field of an event type, at one path, as the engine treats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldView {
    /// Value path: `data.email`; `[]` steps into array items, `{}` into map
    /// values, `<Name>` into one record branch of a union with several.
    pub path: String,
    /// A short type, e.g. `string`, `null | string`, `record Actor`.
    pub type_name: String,
    /// The field's `doc`, if any (schema text: escape before rendering).
    pub doc: Option<String>,
    /// The field's own tier.
    pub tier: Tier,
    /// Its own `"privacy"` label, if it has one.
    pub label: Option<Tier>,
    /// The highest tier on its path (a value's effective tier).
    pub path_tier: Tier,
    /// Where its own tier came from.
    pub provenance: Provenance,
    /// `"redact": "hash"`: pseudonymised below its tier.
    pub hash: bool,
    /// Tags on the field that the topology's tag map does not know.
    pub unmapped_tags: Vec<String>,
    /// Per tier ([`Tier::index`]): what the tier's record does with it.
    pub reach: [Reach; 3],
}

/// One event type's schema, field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    /// `user.created`
    pub event_type: String,
    /// The schema file it came from (the payload file for the file registry).
    pub file: PathBuf,
    /// The composed record's full name.
    pub fullname: String,
    /// SHA-256 of the composed schema text, hex.
    pub fingerprint: String,
    /// Per tier ([`Tier::index`]): whether the event type reaches it.
    pub reaches: [bool; 3],
    /// True when the topology limits its tiers.
    pub limited: bool,
    /// Every field at every path, in schema order.
    pub fields: Vec<FieldView>,
}

impl EventView {
    /// The field at a path.
    pub fn field(&self, path: &str) -> Option<&FieldView> {
        self.fields.iter().find(|f| f.path == path)
    }

    /// The tiers the event type reaches.
    pub fn tiers(&self) -> Vec<Tier> {
        Tier::ALL
            .into_iter()
            .filter(|t| self.reaches[t.index()])
            .collect()
    }
}

/// Why a schema cannot be used, found the way the engine would find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    /// Where in the schema (`fields.data.fields.email`, `<root>`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Compiles an event type's schema with the engine's rules and checks what
/// the engine needs of it: an envelope (or every record would be
/// dead-lettered as `schema_mismatch`) and a valid derived schema per tier.
/// Does not need the hash key: whether a schema asks for hashing is
/// [`CompiledSchema::has_hash`].
///
/// # Errors
/// The first [`SchemaProblem`] of the schema.
pub fn compile_event(text: &str, config: &EngineConfig) -> Result<CompiledSchema, SchemaProblem> {
    let schema = CompiledSchema::compile(text, &config.rules).map_err(|e| SchemaProblem {
        path: e.path,
        message: e.message,
    })?;
    if let Err(why) = schema.envelope() {
        return Err(SchemaProblem {
            path: "<root>".to_owned(),
            message: format!(
                "{why}: not an event envelope, every record would be dead-lettered (schema_mismatch)"
            ),
        });
    }
    for tier in Tier::ALL {
        let derived = derived_schema(&schema, tier);
        let bad = apache_avro::Schema::parse(&derived)
            .err()
            .map(|e| e.to_string())
            .or_else(|| {
                CompiledSchema::compile(&derived.to_string(), &config.rules)
                    .err()
                    .map(|e| e.to_string())
            });
        if let Some(e) = bad {
            return Err(SchemaProblem {
                path: format!("<derived {tier} schema>"),
                message: format!("the derived schema is not valid Avro: {e}"),
            });
        }
    }
    Ok(schema)
}

/// Per tier, whether `event_type` reaches it under the topology's limits.
pub fn reaches(config: &EngineConfig, event_type: &str) -> [bool; 3] {
    let limit = config.tier_limits.get(event_type);
    Tier::ALL.map(|t| limit.is_none_or(|l| l.contains(&t)))
}

/// The view of a compiled event type.
pub fn event_view(
    event: &EventSchema,
    schema: &CompiledSchema,
    config: &EngineConfig,
) -> EventView {
    let reaches = reaches(config, &event.event_type);
    let mut fields = Vec::new();
    let mut walker = Walker {
        schema,
        config,
        reaches,
        out: &mut fields,
        stack: Vec::new(),
    };
    walker.node(schema.root(), "", Tier::Public, [true; 3]);
    EventView {
        event_type: event.event_type.clone(),
        file: event.path.clone(),
        fullname: schema
            .fullname()
            .map_or_else(|| event.fullname.clone(), str::to_owned),
        fingerprint: sha256_hex(event.text.as_bytes()),
        reaches,
        limited: config.tier_limits.contains_key(&event.event_type),
        fields,
    }
}

/// The file a field's definition lives in: `data` and below come from the
/// event type's payload file, the other envelope fields from
/// `<schemas>/envelope.avsc` (how the file registry composes schemas).
pub fn field_file(schemas_dir: &Path, event: &EventSchema, path: &str) -> PathBuf {
    if path == "data" || path.starts_with("data.") || path.starts_with("data<") {
        event.path.clone()
    } else {
        schemas_dir.join("envelope.avsc")
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Walker<'a> {
    schema: &'a CompiledSchema,
    config: &'a EngineConfig,
    reaches: [bool; 3],
    out: &'a mut Vec<FieldView>,
    /// Named records on the current path (recursive types stop here).
    stack: Vec<NodeId>,
}

impl Walker<'_> {
    /// Walks node `id` at `path`, inside containers whose highest tier is
    /// `ceiling`; `alive[i]` is false where a container is removed from tier
    /// `i`.
    fn node(&mut self, id: NodeId, path: &str, ceiling: Tier, alive: [bool; 3]) {
        let s = self.schema;
        match &s.node(id).kind {
            Kind::Record(fields) => {
                if self.stack.contains(&id) {
                    return;
                }
                self.stack.push(id);
                for f in fields {
                    self.field(f, path, ceiling, alive);
                }
                self.stack.pop();
            }
            Kind::Array(items) => self.node(*items, &format!("{path}[]"), ceiling, alive),
            Kind::Map(values) => self.node(*values, &format!("{path}{{}}"), ceiling, alive),
            Kind::Union(branches) => {
                let records = branches
                    .iter()
                    .filter(|b| matches!(s.node(**b).kind, Kind::Record(_)))
                    .count();
                for b in branches {
                    let p = match (&s.node(*b).kind, &s.node(*b).fullname) {
                        (Kind::Record(_), Some(full)) if records > 1 => {
                            format!("{path}<{}>", short_name(full))
                        }
                        _ => path.to_owned(),
                    };
                    self.node(*b, &p, ceiling, alive);
                }
            }
            _ => {}
        }
    }

    fn field(&mut self, f: &Field, parent: &str, ceiling: Tier, alive: [bool; 3]) {
        let path = if parent.is_empty() {
            f.name.clone()
        } else {
            format!("{parent}.{}", f.name)
        };
        let mut reach = [Reach::NotRouted; 3];
        let mut child_alive = [false; 3];
        for tier in Tier::ALL {
            let i = tier.index();
            reach[i] = if !self.reaches[i] {
                Reach::NotRouted
            } else if !alive[i] {
                Reach::RemovedWithContainer
            } else {
                match treatment(f.class, tier) {
                    Treatment::Keep => Reach::Kept,
                    Treatment::Hash => Reach::Hashed,
                    Treatment::Remove => Reach::Removed,
                }
            };
            child_alive[i] = reach[i] == Reach::Kept;
        }
        let (provenance, label, unmapped_tags) = provenance(f, self.config);
        let tier = f.class.tier;
        self.out.push(FieldView {
            path: path.clone(),
            type_name: type_name(self.schema, f.node),
            doc: f
                .attrs
                .get("doc")
                .and_then(Value::as_str)
                .map(str::to_owned),
            tier,
            label,
            path_tier: ceiling.max(tier),
            provenance,
            hash: f.class.redact == Redact::Hash,
            unmapped_tags,
            reach,
        });
        // Below a field, only the tiers that keep it still hold anything.
        self.node(f.node, &path, ceiling.max(tier), child_alive);
    }
}

/// Tells labels from tags for a classified field; also returns the tags the
/// topology does not map (they add nothing).
fn provenance(f: &Field, config: &EngineConfig) -> (Provenance, Option<Tier>, Vec<String>) {
    let label = f
        .attrs
        .get(PRIVACY_KEY)
        .and_then(Value::as_str)
        .and_then(Tier::parse);
    let tags: Vec<&str> = f
        .attrs
        .get(TAGS_KEY)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let unmapped: Vec<String> = tags
        .iter()
        .filter(|t| !config.rules.tags.0.contains_key(**t))
        .map(|t| (*t).to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tagged = tags
        .iter()
        .filter_map(|t| config.rules.tags.0.get(*t))
        .max();
    let winning = |tier: Tier| -> Vec<String> {
        tags.iter()
            .filter(|t| config.rules.tags.0.get(**t) == Some(&tier))
            .map(|t| (*t).to_owned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let p = match f.class.source {
        TierSource::RecordDefault => Provenance::RecordDefault,
        TierSource::FailClosed => Provenance::FailClosed,
        TierSource::Label => match (label, tagged) {
            (Some(l), Some(t)) if *t == l => Provenance::LabelAndTag { tags: winning(l) },
            (Some(l), Some(t)) if *t > l => Provenance::Tag { tags: winning(*t) },
            (None, Some(t)) => Provenance::Tag { tags: winning(*t) },
            _ => Provenance::Label,
        },
    };
    (p, label, unmapped)
}

fn short_name(full: &str) -> &str {
    full.rsplit('.').next().unwrap_or(full)
}

/// A short, readable type: `string`, `uuid`, `enum EntityType`,
/// `array<record Item>`, `null | string`, `long (timestamp-millis)`.
pub fn type_name(s: &CompiledSchema, id: NodeId) -> String {
    let node = s.node(id);
    let named = || short_name(node.fullname.as_deref().unwrap_or("?")).to_owned();
    let logical = node
        .attrs
        .get("logicalType")
        .and_then(Value::as_str)
        .filter(|_| node.kind != Kind::Uuid);
    let base = match &node.kind {
        Kind::Null => "null".to_owned(),
        Kind::Boolean => "boolean".to_owned(),
        Kind::Int => "int".to_owned(),
        Kind::Long => "long".to_owned(),
        Kind::Float => "float".to_owned(),
        Kind::Double => "double".to_owned(),
        Kind::Bytes => "bytes".to_owned(),
        Kind::String => "string".to_owned(),
        Kind::Uuid => "uuid".to_owned(),
        Kind::Fixed(n) => format!("fixed {} ({n} bytes)", named()),
        Kind::Enum(_) => format!("enum {}", named()),
        Kind::Record(_) => format!("record {}", named()),
        Kind::Array(c) => format!("array<{}>", type_name(s, *c)),
        Kind::Map(c) => format!("map<{}>", type_name(s, *c)),
        Kind::Union(bs) => bs
            .iter()
            .map(|b| type_name(s, *b))
            .collect::<Vec<_>>()
            .join(" | "),
    };
    match logical {
        Some(l) => format!("{base} ({l})"),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Rules, TagMap};
    use std::collections::{HashMap, HashSet};

    const TEXT: &str = r#"{"type":"record","name":"E","namespace":"t","fields":[
        {"name":"id","type":"string","privacy":"public"},
        {"name":"email","type":["null","string"],"privacy":"restricted","redact":"hash","default":null},
        {"name":"phone","type":"string","confluent:tags":["PII","CUSTOM"]},
        {"name":"tagged_up","type":"string","privacy":"public","confluent:tags":["INTERNAL"]},
        {"name":"billing","privacy":"restricted","type":{"type":"record","name":"Addr","fields":[
            {"name":"city","type":"string","privacy":"public"},
            {"name":"street","type":"string"}]}},
        {"name":"shipping","privacy":"internal","type":"Addr"},
        {"name":"stats","type":{"type":"record","name":"Stats","privacy":"internal","fields":[
            {"name":"views_count","type":"long"}]},"privacy":"public"},
        {"name":"items","privacy":"public","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
            {"name":"sku","type":"string","privacy":"public"}]}}},
        {"name":"note","type":"string"}]}"#;

    fn event(text: &str) -> EventSchema {
        EventSchema {
            version: 1,
            event_type: "user.created".to_owned(),
            fullname: "t.E".to_owned(),
            path: PathBuf::from("avro/events/user/user.created.avsc"),
            text: text.to_owned(),
            id: 1,
        }
    }

    fn view(config: &EngineConfig) -> EventView {
        let schema = CompiledSchema::compile(TEXT, &config.rules).unwrap();
        event_view(&event(TEXT), &schema, config)
    }

    #[test]
    fn every_path_is_listed_with_the_engines_treatment() {
        let v = view(&EngineConfig::default());
        let paths: Vec<&str> = v.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "id",
                "email",
                "phone",
                "tagged_up",
                "billing",
                "billing.city",
                "billing.street",
                "shipping",
                "shipping.city",
                "shipping.street",
                "stats",
                "stats.views_count",
                "items",
                "items[].sku",
                "note"
            ]
        );
        use Reach::*;
        let reach = |p: &str| v.field(p).unwrap().reach;
        assert_eq!(reach("id"), [Kept, Kept, Kept]);
        assert_eq!(reach("email"), [Hashed, Hashed, Kept]);
        assert_eq!(reach("billing"), [Removed, Removed, Kept]);
        assert_eq!(
            reach("billing.city"),
            [RemovedWithContainer, RemovedWithContainer, Kept]
        );
        assert_eq!(reach("shipping.city"), [RemovedWithContainer, Kept, Kept]);
        assert_eq!(
            reach("shipping.street"),
            [RemovedWithContainer, Removed, Kept]
        );
        assert_eq!(reach("stats.views_count"), [Removed, Kept, Kept]);
        assert_eq!(reach("items[].sku"), [Kept, Kept, Kept]);
        assert_eq!(v.field("shipping.city").unwrap().path_tier, Tier::Internal);
    }

    #[test]
    fn provenance_tells_labels_tags_defaults_and_fail_closed_apart() {
        let v = view(&EngineConfig::default());
        let p = |path: &str| v.field(path).unwrap().provenance.clone();
        assert_eq!(p("id"), Provenance::Label);
        assert_eq!(
            p("phone"),
            Provenance::Tag {
                tags: vec!["PII".to_owned()]
            }
        );
        assert_eq!(v.field("phone").unwrap().unmapped_tags, ["CUSTOM"]);
        assert_eq!(
            p("tagged_up"),
            Provenance::Tag {
                tags: vec!["INTERNAL".to_owned()]
            }
        );
        assert_eq!(v.field("tagged_up").unwrap().tier, Tier::Internal);
        assert_eq!(p("stats.views_count"), Provenance::RecordDefault);
        assert_eq!(p("billing.street"), Provenance::FailClosed);
        assert_eq!(p("note"), Provenance::FailClosed);
        assert_eq!(v.field("note").unwrap().tier, Tier::Restricted);
        assert!(v.field("email").unwrap().hash);
    }

    #[test]
    fn the_topologys_tag_map_is_the_one_used() {
        let config = EngineConfig {
            rules: Rules::with_tags(TagMap([("PII".to_owned(), Tier::Internal)].into())),
            ..EngineConfig::default()
        };
        let v = view(&config);
        let phone = v.field("phone").unwrap();
        assert_eq!(phone.tier, Tier::Internal);
        assert_eq!(phone.unmapped_tags, ["CUSTOM"]);
        // INTERNAL is not mapped any more: the label decides.
        assert_eq!(v.field("tagged_up").unwrap().tier, Tier::Public);
        assert_eq!(v.field("tagged_up").unwrap().provenance, Provenance::Label);
    }

    #[test]
    fn a_tier_limit_leaves_nothing_in_other_tiers() {
        let config = EngineConfig {
            tier_limits: HashMap::from([(
                "user.created".to_owned(),
                HashSet::from([Tier::Restricted]),
            )]),
            ..EngineConfig::default()
        };
        let v = view(&config);
        assert!(v.limited);
        assert_eq!(v.tiers(), [Tier::Restricted]);
        for f in &v.fields {
            assert_eq!(f.reach[0], Reach::NotRouted, "{}", f.path);
            assert_eq!(f.reach[1], Reach::NotRouted, "{}", f.path);
            assert_eq!(f.reach[2], Reach::Kept, "{}", f.path);
        }
    }

    #[test]
    fn union_record_branches_are_told_apart_and_recursion_stops() {
        let text = r#"{"type":"record","name":"E","namespace":"t","fields":[
            {"name":"pay","privacy":"internal","type":[
                {"type":"record","name":"Card","fields":[{"name":"last4","type":"string","privacy":"restricted"}]},
                {"type":"record","name":"Wallet","fields":[{"name":"last4","type":"string","privacy":"internal"}]}]},
            {"name":"tree","privacy":"public","type":{"type":"record","name":"Node","fields":[
                {"name":"children","privacy":"public","type":{"type":"array","items":"Node"}}]}}]}"#;
        let config = EngineConfig::default();
        let schema = CompiledSchema::compile(text, &config.rules).unwrap();
        let v = event_view(&event(text), &schema, &config);
        let paths: Vec<&str> = v.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "pay",
                "pay<Card>.last4",
                "pay<Wallet>.last4",
                "tree",
                "tree.children"
            ]
        );
        assert_eq!(
            type_name(&schema, schema.root_fields()[0].node),
            "record Card | record Wallet"
        );
    }

    #[test]
    fn compile_event_refuses_what_the_engine_would() {
        let config = EngineConfig::default();
        let p = compile_event(TEXT, &config).unwrap_err();
        assert!(p.message.contains("event_id"), "{p:?}");
        let p = compile_event(
            r#"{"type":"record","name":"E","fields":[{"name":"x","type":"long","privacy":"secret"}]}"#,
            &config,
        )
        .unwrap_err();
        assert_eq!(p.path, "fields.x");
    }
}
