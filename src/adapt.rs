//! Adapters: a producer's own JSON event → the canonical envelope, before
//! decode.
//!
//! Producers that do not write the canonical envelope (see the README) get an
//! adapter in the topology, declared per input topic. It says where each
//! canonical field comes from in the producer's JSON — a path
//! (`payload.userId`), a constant for what the producer lacks
//! (`entity_type: user`), a name-based UUID of some of its values (for a
//! producer without event ids) — how the producer's event type names map to
//! canonical event types (`user.profile.updated` → `user.profile_updated`),
//! and what orders its events: the entity version it maps, a sequence that
//! only increases (a NATS stream sequence), or nothing (`off`).
//!
//! [`Adapter::apply`] is pure: producer JSON in, canonical JSON and an
//! [`OrderBy`] out. The canonical JSON then takes the ordinary JSON path
//! (resolved against the schema the registry holds for its event type;
//! unknown keys are dropped). A value that does not fit is a [`Rejection`]
//! naming field paths, never a value: `adapter_mismatch`, or
//! `unknown_event_type` for a producer event type the adapter does not map.
//!
//! Adapters only run for topics that declare one; canonical topics pay
//! nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::record::{OrderBy, Reason, Rejection, Tier};

/// One adapter as the topology declares it (`adapters.<name>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// The input topics whose records are this producer's events; each is
    /// one of `input.topics`, and a topic has at most one adapter.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Path of the field holding the producer's event type
    /// (`eventType`, `action`).
    #[serde(default)]
    pub type_field: Option<String>,
    /// The producer's event types → canonical event types
    /// (`^[a-z]+\.[a-z_]+$`). A producer type not listed is a dead letter
    /// `unknown_event_type`.
    #[serde(default)]
    pub event_types: BTreeMap<String, String>,
    /// Where each canonical envelope field comes from.
    #[serde(default)]
    pub envelope: EnvelopeMapping,
    /// Envelope fields that come from elsewhere for some canonical event
    /// types (e.g. the entity of a role event is the role, not a user).
    #[serde(default)]
    pub by_event_type: BTreeMap<String, EnvelopeMapping>,
    /// What orders this producer's events; required, so that a producer
    /// without entity versions is never silently left unordered.
    #[serde(default)]
    pub ordering: Option<AdapterOrdering>,
}

/// Where each canonical envelope field comes from (`event_type` comes from
/// `type_field` and `event_types`). Required: `event_id`, `entity_type`,
/// `entity_id`, `occurred_at`, `producer`, `actor`, `schema_version`,
/// `privacy_tier`, `data`; the others are null when unmapped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeMapping {
    /// `event_id` (a UUID).
    #[serde(default)]
    pub event_id: Option<FieldSource>,
    /// `entity_type` (user, supplier, …).
    #[serde(default)]
    pub entity_type: Option<FieldSource>,
    /// `entity_id` (the record key).
    #[serde(default)]
    pub entity_id: Option<FieldSource>,
    /// `entity_version`: only for a producer with a real per-entity version
    /// (then `ordering: entity_version`); null otherwise.
    #[serde(default)]
    pub entity_version: Option<FieldSource>,
    /// `occurred_at` (ISO 8601 UTC).
    #[serde(default)]
    pub occurred_at: Option<FieldSource>,
    /// `trace_id` (a UUID).
    #[serde(default)]
    pub trace_id: Option<FieldSource>,
    /// `correlation_id` (a UUID).
    #[serde(default)]
    pub correlation_id: Option<FieldSource>,
    /// `producer` (the producing service).
    #[serde(default)]
    pub producer: Option<FieldSource>,
    /// `actor` (`{actor_type, actor_id}`).
    #[serde(default)]
    pub actor: Option<FieldSource>,
    /// `schema_version` (an integer >= 1).
    #[serde(default)]
    pub schema_version: Option<FieldSource>,
    /// `privacy_tier`: the declaration the tier check compares the content
    /// with.
    #[serde(default)]
    pub privacy_tier: Option<FieldSource>,
    /// `data`: the event type's own record.
    #[serde(default)]
    pub data: Option<FieldSource>,
}

/// Where one canonical field comes from: exactly one of `path`, `const` and
/// `uuid_from`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSource {
    /// A dot-separated path into the producer's JSON (`payload.userId`);
    /// `$` is the whole event.
    #[serde(default)]
    pub path: Option<String>,
    /// A constant, for what the producer does not carry.
    #[serde(default, rename = "const")]
    pub constant: Option<Value>,
    /// A name-based UUID (version 8, from SHA-256 over the adapter's name
    /// and the JSON of the values at these paths), for a producer without
    /// event ids: the same event content always gets the same id.
    #[serde(default)]
    pub uuid_from: Option<Vec<String>>,
    /// With `path`: the value when the path is absent or null.
    #[serde(default)]
    pub default: Option<Value>,
    /// With `path`: a conversion of the value.
    #[serde(default)]
    pub convert: Option<Convert>,
}

/// A conversion of a mapped value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convert {
    /// `"1.0"`, `"2"` or `2` → the major version as an integer >= 1.
    MajorVersion,
}

/// What orders a producer's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterOrdering {
    /// Nothing: events are routed as they come, without a verdict or a
    /// version-store write.
    Off,
    /// The `entity_version` the envelope maps, as for canonical events.
    EntityVersion,
    /// A number that only increases and is shared across entities.
    Sequence(SequenceOrdering),
}

/// Ordering by a sequence number (e.g. a NATS JetStream stream sequence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceOrdering {
    /// Path of the sequence number in the producer's JSON.
    pub field: String,
    /// What an event without it gets.
    pub when_missing: WhenMissing,
}

/// What happens to an event without its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenMissing {
    /// Routed without an ordering verdict (counted as `unordered`).
    RouteUnordered,
    /// Dead-lettered with reason `adapter_mismatch`.
    DeadLetter,
}

/// A problem in an adapter's declaration: the path below
/// `adapters.<name>` and what is wrong.
pub type AdapterProblem = (String, String);

/// A path into a producer's JSON; no segments is the whole event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JsonPath(Vec<String>);

impl JsonPath {
    fn parse(s: &str) -> Option<JsonPath> {
        if s == "$" {
            return Some(JsonPath(Vec::new()));
        }
        let segments: Vec<String> = s.split('.').map(str::to_owned).collect();
        segments
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| !c.is_whitespace()))
            .then_some(JsonPath(segments))
    }

    fn get<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(v, |v, k| v.as_object()?.get(k))
    }

    fn take(&self, v: &mut Value) -> Option<Value> {
        let mut cur = v;
        for k in &self.0 {
            cur = cur.as_object_mut()?.get_mut(k)?;
        }
        Some(cur.take())
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("$")
        } else {
            f.write_str(&self.0.join("."))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Path {
        path: JsonPath,
        default: Option<Value>,
        convert: Option<Convert>,
    },
    Const(Value),
    UuidFrom(Vec<JsonPath>),
}

/// The canonical fields an adapter fills, in envelope order (`data` last,
/// since it may move the whole event), and whether each is required.
const FIELDS: [(&str, bool); 12] = [
    ("event_id", true),
    ("entity_type", true),
    ("entity_id", true),
    ("entity_version", false),
    ("occurred_at", true),
    ("trace_id", false),
    ("correlation_id", false),
    ("producer", true),
    ("actor", true),
    ("schema_version", true),
    ("privacy_tier", true),
    ("data", true),
];

impl EnvelopeMapping {
    fn get(&self, name: &str) -> Option<&FieldSource> {
        match name {
            "event_id" => self.event_id.as_ref(),
            "entity_type" => self.entity_type.as_ref(),
            "entity_id" => self.entity_id.as_ref(),
            "entity_version" => self.entity_version.as_ref(),
            "occurred_at" => self.occurred_at.as_ref(),
            "trace_id" => self.trace_id.as_ref(),
            "correlation_id" => self.correlation_id.as_ref(),
            "producer" => self.producer.as_ref(),
            "actor" => self.actor.as_ref(),
            "schema_version" => self.schema_version.as_ref(),
            "privacy_tier" => self.privacy_tier.as_ref(),
            "data" => self.data.as_ref(),
            _ => None,
        }
    }
}

/// The rules of one canonical event type: its name and where each envelope
/// field comes from.
#[derive(Debug)]
struct TypeRule {
    event_type: String,
    fields: Vec<(&'static str, bool, Source)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Ordering {
    Off,
    EntityVersion,
    Sequence {
        field: JsonPath,
        when_missing: WhenMissing,
    },
}

/// A built adapter: the runtime form of an [`AdapterConfig`].
#[derive(Debug)]
pub struct Adapter {
    name: Arc<str>,
    type_field: JsonPath,
    types: HashMap<String, Arc<TypeRule>>,
    ordering: Ordering,
}

/// A producer's event in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapted {
    /// The canonical envelope as JSON, for the ordinary JSON path.
    pub event: Value,
    /// What orders it.
    pub order_by: OrderBy,
}

fn mismatch(detail: String) -> Rejection {
    Rejection::new(Reason::AdapterMismatch, detail)
}

fn is_positive_integer(v: &Value) -> bool {
    v.as_i64().is_some_and(|n| n >= 1)
}

impl AdapterConfig {
    /// Builds the adapter named `name`, or reports every problem of its
    /// declaration (paths below `adapters.<name>`). Canonical event type
    /// names and topics are checked by the topology, which knows the rules
    /// and the input topics.
    ///
    /// # Errors
    /// Every problem found.
    pub fn build(&self, name: &str) -> Result<Adapter, Vec<AdapterProblem>> {
        let mut problems: Vec<AdapterProblem> = Vec::new();
        let mut problem = |path: String, message: &str| problems.push((path, message.to_owned()));
        if self.topics.is_empty() {
            problem(
                "topics".into(),
                "is empty: list the input topics that carry this producer's events",
            );
        }
        let type_field = match self.type_field.as_deref() {
            None => {
                problem(
                    "type_field".into(),
                    "is missing: name the field that holds the producer's event type",
                );
                None
            }
            Some(p) => {
                let parsed = JsonPath::parse(p).filter(|p| !p.0.is_empty());
                if parsed.is_none() {
                    problem(
                        "type_field".into(),
                        "is not a path of dot-separated keys (e.g. eventType)",
                    );
                }
                parsed
            }
        };
        if self.event_types.is_empty() {
            problem(
                "event_types".into(),
                "is empty: map each of the producer's event types to a canonical one",
            );
        }
        let canonical: Vec<&String> = self.event_types.values().collect();
        let mut base = Vec::new();
        for (field, required) in FIELDS {
            let path = format!("envelope.{field}");
            match self.envelope.get(field) {
                None if required => problem(
                    path,
                    "is missing: every canonical event needs it (map it with path, const or uuid_from)",
                ),
                None => {}
                Some(src) => {
                    if let Some(s) = source(field, src, &path, &mut problem) {
                        base.push((field, required, s));
                    }
                }
            }
        }
        let mut overrides: HashMap<&str, Vec<(&'static str, Source)>> = HashMap::new();
        for (event_type, mapping) in &self.by_event_type {
            let base_path = format!("by_event_type.{event_type}");
            if !canonical.contains(&event_type) {
                problem(
                    base_path.clone(),
                    "is not one of the canonical event types that event_types maps to",
                );
            }
            let entry = overrides.entry(event_type.as_str()).or_default();
            for (field, _) in FIELDS {
                if let Some(src) = mapping.get(field) {
                    let path = format!("{base_path}.{field}");
                    if let Some(s) = source(field, src, &path, &mut problem) {
                        entry.push((field, s));
                    }
                }
            }
        }
        let maps_version = self.envelope.entity_version.is_some();
        let versioned_types: Vec<&String> = self
            .by_event_type
            .iter()
            .filter(|(_, m)| m.entity_version.is_some())
            .map(|(t, _)| t)
            .collect();
        let ordering = match &self.ordering {
            None => {
                problem(
                    "ordering".into(),
                    "is missing: say what orders this producer's events (entity_version, sequence) or that ordering is off",
                );
                None
            }
            Some(AdapterOrdering::EntityVersion) if !maps_version => {
                problem(
                    "ordering".into(),
                    "is entity_version, but envelope.entity_version is not mapped",
                );
                None
            }
            Some(AdapterOrdering::EntityVersion) => Some(Ordering::EntityVersion),
            Some(AdapterOrdering::Off | AdapterOrdering::Sequence(_))
                if maps_version || !versioned_types.is_empty() =>
            {
                let paths = maps_version
                    .then(|| "envelope.entity_version".to_owned())
                    .into_iter()
                    .chain(
                        versioned_types
                            .iter()
                            .map(|t| format!("by_event_type.{t}.entity_version")),
                    );
                for path in paths {
                    problem(
                        path,
                        "is mapped, so the producer has entity versions: order by them (ordering: entity_version)",
                    );
                }
                None
            }
            Some(AdapterOrdering::Off) => Some(Ordering::Off),
            Some(AdapterOrdering::Sequence(s)) => match JsonPath::parse(&s.field) {
                Some(field) if !field.0.is_empty() => Some(Ordering::Sequence {
                    field,
                    when_missing: s.when_missing,
                }),
                _ => {
                    problem(
                        "ordering.sequence.field".into(),
                        "is not a path of dot-separated keys (e.g. sequence)",
                    );
                    None
                }
            },
        };
        let (Some(type_field), Some(ordering), true) = (type_field, ordering, problems.is_empty())
        else {
            return Err(problems);
        };
        let mut rules: HashMap<&str, Arc<TypeRule>> = HashMap::new();
        let mut types = HashMap::new();
        for (producer_type, event_type) in &self.event_types {
            let rule = rules.entry(event_type.as_str()).or_insert_with(|| {
                let mut fields = base.clone();
                for (field, s) in overrides.get(event_type.as_str()).into_iter().flatten() {
                    match fields.iter_mut().find(|(f, _, _)| f == field) {
                        Some(slot) => slot.2 = s.clone(),
                        None => fields.push((field, false, s.clone())),
                    }
                }
                // Envelope order, `data` last.
                fields.sort_by_key(|(f, _, _)| FIELDS.iter().position(|(n, _)| n == f));
                Arc::new(TypeRule {
                    event_type: event_type.clone(),
                    fields,
                })
            });
            types.insert(producer_type.clone(), rule.clone());
        }
        Ok(Adapter {
            name: Arc::from(name),
            type_field,
            types,
            ordering,
        })
    }
}

/// Checks one field source and builds it.
fn source(
    field: &str,
    src: &FieldSource,
    path: &str,
    problem: &mut impl FnMut(String, &str),
) -> Option<Source> {
    let kinds = usize::from(src.path.is_some())
        + usize::from(src.constant.is_some())
        + usize::from(src.uuid_from.is_some());
    if kinds != 1 {
        problem(
            path.to_owned(),
            "needs exactly one of path, const and uuid_from",
        );
        return None;
    }
    if src.path.is_none() && (src.default.is_some() || src.convert.is_some()) {
        problem(path.to_owned(), "default and convert only go with path");
        return None;
    }
    if let Some(p) = &src.path {
        let Some(parsed) = JsonPath::parse(p) else {
            problem(
                format!("{path}.path"),
                "is not a path of dot-separated keys, or $ for the whole event",
            );
            return None;
        };
        if src.convert == Some(Convert::MajorVersion)
            && src
                .default
                .as_ref()
                .is_some_and(|d| !is_positive_integer(d))
        {
            problem(
                format!("{path}.default"),
                "must be an integer >= 1 (the result of major_version)",
            );
            return None;
        }
        return Some(Source::Path {
            path: parsed,
            default: src.default.clone(),
            convert: src.convert,
        });
    }
    if let Some(parts) = &src.uuid_from {
        let parsed: Option<Vec<JsonPath>> = parts.iter().map(|p| JsonPath::parse(p)).collect();
        return match parsed {
            Some(ps) if !ps.is_empty() => Some(Source::UuidFrom(ps)),
            _ => {
                problem(
                    format!("{path}.uuid_from"),
                    "needs one or more paths of dot-separated keys ($ for the whole event)",
                );
                None
            }
        };
    }
    let c = src.constant.clone().unwrap_or(Value::Null);
    let bad = match field {
        "event_id" => Some("cannot be a constant: every event would have the same id"),
        "entity_id" => Some("cannot be a constant: every event would have the same key"),
        "data" => Some("cannot be a constant: nothing of the event would be forwarded"),
        "privacy_tier" if c.as_str().and_then(Tier::parse).is_none() => {
            Some("must be one of public, internal, restricted")
        }
        "schema_version" | "entity_version" if !is_positive_integer(&c) => {
            Some("must be an integer >= 1")
        }
        "entity_type" | "producer" | "occurred_at" if !c.is_string() => Some("must be a string"),
        "actor" if !c.is_object() => Some("must be a mapping like {actor_type: SYSTEM}"),
        _ => None,
    };
    if let Some(message) = bad {
        problem(format!("{path}.const"), message);
        return None;
    }
    Some(Source::Const(c))
}

impl Adapter {
    /// The adapter's name (from the topology).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Maps a producer's event onto the canonical envelope.
    ///
    /// # Errors
    /// `adapter_mismatch` when the type field or a required mapped field is
    /// missing or cannot be converted, `unknown_event_type` when the
    /// producer's event type is not mapped. Details name paths, never
    /// values.
    pub fn apply(&self, mut event: Value) -> Result<Adapted, Rejection> {
        let rule = match self.type_field.get(&event) {
            Some(Value::String(t)) => match self.types.get(t.as_str()) {
                Some(rule) => rule,
                None => {
                    return Err(Rejection::new(
                        Reason::UnknownEventType,
                        format!(
                            "the event type at {} is not one the adapter {} maps",
                            self.type_field, self.name
                        ),
                    ))
                }
            },
            _ => {
                return Err(mismatch(format!(
                    "{} (the event type for the adapter {}) is missing or not a string",
                    self.type_field, self.name
                )))
            }
        };
        // Read before `data` may move the event away.
        let order_by = self.order_by(&event)?;
        let mut out = Map::new();
        out.insert(
            "event_type".to_owned(),
            Value::String(rule.event_type.clone()),
        );
        for (field, required, src) in &rule.fields {
            let value = match src {
                // `data` comes last, so it may move its subtree (or the
                // whole event) instead of copying it.
                Source::Path {
                    path,
                    default: None,
                    convert: None,
                } if *field == "data" => path.take(&mut event).filter(|v| !v.is_null()),
                _ => self.value(field, src, &event)?,
            };
            match value {
                Some(v) => {
                    out.insert((*field).to_owned(), v);
                }
                None if *required => {
                    return Err(mismatch(format!(
                        "{} (mapped to {field} by the adapter {}) is missing or null",
                        describe(src),
                        self.name
                    )))
                }
                None => {}
            }
        }
        Ok(Adapted {
            event: Value::Object(out),
            order_by,
        })
    }

    fn order_by(&self, event: &Value) -> Result<OrderBy, Rejection> {
        Ok(match &self.ordering {
            Ordering::Off => OrderBy::Off,
            Ordering::EntityVersion => OrderBy::EntityVersion,
            Ordering::Sequence {
                field,
                when_missing,
            } => match field.get(event).filter(|v| !v.is_null()) {
                Some(v) => match v.as_i64().filter(|n| *n >= 1) {
                    Some(value) => OrderBy::Sequence {
                        value,
                        keyspace: self.name.clone(),
                    },
                    None => {
                        return Err(mismatch(format!(
                            "{field} (the sequence that orders the adapter {}'s events) is not an integer >= 1",
                            self.name
                        )))
                    }
                },
                None => match when_missing {
                    WhenMissing::RouteUnordered => OrderBy::Off,
                    WhenMissing::DeadLetter => {
                        return Err(mismatch(format!(
                            "{field} (the sequence that orders the adapter {}'s events) is missing",
                            self.name
                        )))
                    }
                },
            },
        })
    }

    /// The value of one source; `None` when a path is absent or null and
    /// has no default.
    fn value(&self, field: &str, src: &Source, event: &Value) -> Result<Option<Value>, Rejection> {
        Ok(match src {
            Source::Const(c) => Some(c.clone()),
            Source::Path {
                path,
                default,
                convert,
            } => match path.get(event).filter(|v| !v.is_null()) {
                None => default.clone(),
                Some(v) => match convert {
                    None => Some(v.clone()),
                    Some(Convert::MajorVersion) => Some(major_version(v).ok_or_else(|| {
                        mismatch(format!(
                            "{path} (mapped to {field} by the adapter {}) is not a version number (major[.minor])",
                            self.name
                        ))
                    })?),
                },
            },
            Source::UuidFrom(parts) => {
                let mut h = Sha256::new();
                h.update(b"privacy-router adapter\0");
                h.update(self.name.as_bytes());
                for p in parts {
                    let Some(v) = p.get(event).filter(|v| !v.is_null()) else {
                        return Err(mismatch(format!(
                            "{p} (from which the adapter {} derives {field}) is missing or null",
                            self.name
                        )));
                    };
                    h.update([0x1f]);
                    h.update(serde_json::to_vec(v).unwrap_or_default());
                }
                let digest = h.finalize();
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(&digest[..16]);
                Some(Value::String(
                    uuid::Builder::from_custom_bytes(bytes)
                        .into_uuid()
                        .hyphenated()
                        .to_string(),
                ))
            }
        })
    }
}

fn describe(src: &Source) -> String {
    match src {
        Source::Path { path, .. } => path.to_string(),
        Source::Const(_) => "the constant".to_owned(),
        Source::UuidFrom(_) => "the derived id".to_owned(),
    }
}

fn major_version(v: &Value) -> Option<Value> {
    let major = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => {
            let mut parts = s.split('.');
            let major: u64 = parts.next()?.parse().ok()?;
            if !parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
                return None;
            }
            major
        }
        _ => return None,
    };
    (1..=i32::MAX as u64)
        .contains(&major)
        .then(|| Value::from(major))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(yaml: &str) -> AdapterConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// A BaseEvent-like producer (camelCase ids, a nested payload).
    fn base_event() -> Adapter {
        config(
            r#"
topics: [t]
type_field: eventType
event_types: {user.created: user.created, user.profile.updated: user.profile_updated, RoleCreated: role.created}
envelope:
  event_id: {path: eventId}
  entity_type: {const: user}
  entity_id: {path: payload.userId}
  occurred_at: {path: timestamp}
  correlation_id: {path: correlationId}
  producer: {path: source, default: unknown-service}
  actor: {const: {actor_type: SYSTEM}}
  schema_version: {path: version, convert: major_version}
  privacy_tier: {const: restricted}
  data: {path: payload}
by_event_type:
  role.created: {entity_type: {const: role}, entity_id: {path: payload.roleId}}
ordering: off
"#,
        )
        .build("base")
        .unwrap()
    }

    fn event() -> Value {
        json!({
            "eventId": "a1b2c3d4-e5f6-4a5b-8c7d-9e8f7a6b5c4d",
            "eventType": "user.profile.updated",
            "timestamp": "2025-12-12T12:00:00.000Z",
            "version": "1.0",
            "source": "user-service",
            "metadata": {"anything": "at all"},
            "payload": {"userId": "usr_1", "profile": {"phone": "+33612345678"}}
        })
    }

    #[test]
    fn maps_the_producer_envelope_onto_the_canonical_one() {
        let a = base_event().apply(event()).unwrap();
        assert_eq!(
            a.event,
            json!({
                "event_id": "a1b2c3d4-e5f6-4a5b-8c7d-9e8f7a6b5c4d",
                "event_type": "user.profile_updated",
                "entity_type": "user",
                "entity_id": "usr_1",
                "occurred_at": "2025-12-12T12:00:00.000Z",
                "producer": "user-service",
                "actor": {"actor_type": "SYSTEM"},
                "schema_version": 1,
                "privacy_tier": "restricted",
                "data": {"userId": "usr_1", "profile": {"phone": "+33612345678"}}
            })
        );
        assert_eq!(a.order_by, OrderBy::Off);
    }

    #[test]
    fn defaults_conversions_and_per_type_overrides() {
        let mut e = event();
        e["eventType"] = json!("RoleCreated");
        e["payload"] = json!({"roleId": "rol_1"});
        e["version"] = json!("2.13");
        e.as_object_mut().unwrap().remove("source");
        let a = base_event().apply(e).unwrap().event;
        assert_eq!(a["entity_type"], "role");
        assert_eq!(a["entity_id"], "rol_1");
        assert_eq!(a["schema_version"], 2);
        assert_eq!(a["producer"], "unknown-service");
        for bad in [json!("1.x"), json!("0"), json!(""), json!(true), json!(-1)] {
            let mut e = event();
            e["version"] = bad.clone();
            let r = base_event().apply(e).unwrap_err();
            assert_eq!(r.reason, Reason::AdapterMismatch, "{bad}");
            assert!(
                r.detail.starts_with("version (mapped to schema_version"),
                "{}",
                r.detail
            );
        }
    }

    #[test]
    fn events_that_do_not_fit_are_rejected_by_path_never_by_value() {
        let a = base_event();
        let mut no_type = event();
        no_type.as_object_mut().unwrap().remove("eventType");
        let mut typed_wrong = event();
        typed_wrong["eventType"] = json!(42);
        let mut unknown = event();
        unknown["eventType"] = json!("user.teleported");
        let mut no_user = event();
        no_user["payload"]["userId"] = Value::Null;
        let mut no_payload = event();
        no_payload.as_object_mut().unwrap().remove("payload");
        for (e, reason, path) in [
            (no_type, Reason::AdapterMismatch, "eventType"),
            (typed_wrong, Reason::AdapterMismatch, "eventType"),
            (unknown, Reason::UnknownEventType, "eventType"),
            (no_user, Reason::AdapterMismatch, "payload.userId"),
            (no_payload, Reason::AdapterMismatch, "payload.userId"),
        ] {
            let r = a.apply(e).unwrap_err();
            assert_eq!(r.reason, reason, "{}", r.detail);
            assert!(r.detail.contains(path), "{}", r.detail);
            for value in ["teleported", "42", "usr_1", "+3361"] {
                assert!(!r.detail.contains(value), "{}", r.detail);
            }
        }
    }

    fn identity(ordering: &str) -> Adapter {
        identity_named(ordering, "identity")
    }

    fn identity_named(ordering: &str, name: &str) -> Adapter {
        config(&format!(
            r#"
topics: [t]
type_field: action
event_types: {{created: identity.created}}
envelope:
  event_id: {{uuid_from: ["$"]}}
  entity_type: {{const: user}}
  entity_id: {{path: id}}
  occurred_at: {{path: timestamp}}
  producer: {{const: auth}}
  actor: {{const: {{actor_type: SYSTEM}}}}
  schema_version: {{const: 1}}
  privacy_tier: {{const: restricted}}
  data: {{path: "$"}}
ordering: {ordering}
"#
        ))
        .build(name)
        .unwrap()
    }

    #[test]
    fn derived_event_ids_are_stable_per_content_and_adapter() {
        let e = json!({"id": "u1", "action": "created", "timestamp": "2025-11-24T00:00:00Z", "sequence": 42});
        let a = identity("off");
        let id = |a: &Adapter, e: &Value| a.apply(e.clone()).unwrap().event["event_id"].clone();
        let first = id(&a, &e);
        let parsed = uuid::Uuid::parse_str(first.as_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Custom));
        assert_eq!(id(&a, &e), first, "the same event, the same id");
        // Key order and whitespace do not matter: the parsed content does.
        let reordered: Value = serde_json::from_str(
            r#"{ "timestamp": "2025-11-24T00:00:00Z", "sequence": 42, "action": "created", "id": "u1" }"#,
        )
        .unwrap();
        assert_eq!(id(&a, &reordered), first);
        let mut other = e.clone();
        other["sequence"] = json!(43);
        assert_ne!(id(&a, &other), first, "another event, another id");
        let b = identity_named("off", "another");
        assert_ne!(id(&b, &e), first, "ids are namespaced by the adapter");
        // The whole event is the payload here.
        assert_eq!(a.apply(e.clone()).unwrap().event["data"], e);
    }

    #[test]
    fn sequences_order_events_or_say_why_not() {
        let e = json!({"id": "u1", "action": "created", "timestamp": "2025-11-24T00:00:00Z", "sequence": 42});
        let mut missing = e.clone();
        missing.as_object_mut().unwrap().remove("sequence");
        let route = identity("{sequence: {field: sequence, when_missing: route_unordered}}");
        let strict = identity("{sequence: {field: sequence, when_missing: dead_letter}}");
        assert_eq!(
            route.apply(e.clone()).unwrap().order_by,
            OrderBy::Sequence {
                value: 42,
                keyspace: Arc::from("identity")
            }
        );
        assert_eq!(route.apply(missing.clone()).unwrap().order_by, OrderBy::Off);
        let r = strict.apply(missing).unwrap_err();
        assert_eq!(r.reason, Reason::AdapterMismatch);
        assert!(r.detail.contains("sequence"), "{}", r.detail);
        for bad in [json!("42"), json!(0), json!(4.5), json!(-3)] {
            let mut e = e.clone();
            e["sequence"] = bad.clone();
            let r = route.apply(e).unwrap_err();
            assert_eq!(r.reason, Reason::AdapterMismatch, "{bad}");
            assert!(!r.detail.contains("4.5"), "{}", r.detail);
        }
    }

    #[test]
    fn a_broken_declaration_reports_every_problem_by_path() {
        let c = config(
            r#"
type_field: "event..type"
event_types: {}
envelope:
  event_id: {const: 7c9e6679-7425-40de-944b-e07fc1f90001}
  entity_type: {path: a, const: user}
  entity_id: {path: id}
  entity_version: {path: v}
  occurred_at: {const: 5}
  producer: {uuid_from: []}
  actor: {const: SYSTEM}
  schema_version: {const: 0, convert: major_version}
  privacy_tier: {const: secret}
by_event_type:
  user.nope: {entity_id: {path: ""}, entity_version: {path: w}}
ordering: off
"#,
        );
        let problems = c.build("x").unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "topics",
                "type_field",
                "event_types",
                "envelope.event_id.const",
                "envelope.entity_type",
                "envelope.occurred_at.const",
                "envelope.producer.uuid_from",
                "envelope.actor.const",
                "envelope.schema_version",
                "envelope.privacy_tier.const",
                "envelope.data",
                "by_event_type.user.nope",
                "by_event_type.user.nope.entity_id.path",
                "envelope.entity_version",
                "by_event_type.user.nope.entity_version",
            ],
            "{problems:#?}"
        );
        let missing_ordering = config(
            r#"
topics: [t]
type_field: type
event_types: {A: a.b}
envelope:
  event_id: {path: id}
  entity_type: {const: user}
  entity_id: {path: id}
  occurred_at: {path: at}
  producer: {const: p}
  actor: {const: {actor_type: SYSTEM}}
  schema_version: {const: 1}
  privacy_tier: {const: internal}
  data: {path: "$"}
"#,
        );
        let problems = missing_ordering.build("y").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "ordering");
        let mut by_version = missing_ordering.clone();
        by_version.ordering = Some(AdapterOrdering::EntityVersion);
        assert_eq!(by_version.build("y").unwrap_err()[0].0, "ordering");
        by_version.envelope.entity_version = Some(FieldSource {
            path: Some("version".into()),
            ..Default::default()
        });
        assert!(by_version.build("y").is_ok());
    }
}
