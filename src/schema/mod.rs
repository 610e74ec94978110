//! Compiled writer schemas.
//!
//! An Avro schema (JSON text, as the registry holds it) is compiled once into
//! an arena of [`Node`]s with names resolved and every record field
//! classified (see [`crate::classify`]). Decoding, validation and projection
//! walk this arena; nothing re-parses or re-resolves a schema per record.
//!
//! The text is also parsed by `apache-avro`, so a schema that the reference
//! implementation rejects is rejected here too.
//!
//! Where schemas come from is here too: the registry as the pipeline sees it
//! ([`SchemaLookup`], [`LookupError`]) and the subjects that hold writer and
//! derived schemas ([`SubjectNaming`], [`derived_subject`]).

pub mod binary;
pub mod json;
pub mod json_pass;
mod lookup;
pub mod pass;
mod subject;

pub use lookup::{LookupError, SchemaLookup};
pub use subject::{derived_subject, pascal_case, SubjectNaming, DEFAULT_SUBJECT_TEMPLATE};

use std::collections::HashMap;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::classify::{self, FieldClass, Redact, Rules, TierOrigin};
use crate::record::{Datum, Tier};

/// Index of a node in a [`CompiledSchema`].
pub type NodeId = usize;

/// The shape of a schema node.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `null`
    Null,
    /// `boolean`
    Boolean,
    /// `int` (also `date`, `time-millis`)
    Int,
    /// `long` (also timestamps)
    Long,
    /// `float`
    Float,
    /// `double`
    Double,
    /// `bytes` (also `decimal` on bytes)
    Bytes,
    /// `string`
    String,
    /// `string` with `logicalType: uuid`
    Uuid,
    /// `fixed` of this size
    Fixed(usize),
    /// `enum` with these symbols
    Enum(Vec<String>),
    /// `array` of items
    Array(NodeId),
    /// `map` of values
    Map(NodeId),
    /// `union` of branches
    Union(Vec<NodeId>),
    /// `record` with fields
    Record(Vec<Field>),
}

/// A record field, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Field type.
    pub node: NodeId,
    /// Tier and treatment.
    pub class: FieldClass,
    /// How classification reached the tier (for reports).
    pub origin: TierOrigin,
    /// The field's JSON attributes (everything but `type`), for derived schemas.
    pub attrs: Map<String, Value>,
    /// The validation rule its name implies.
    pub rule: NameRule,
    /// The name has only ASCII letters, digits and `_` (as Avro's names
    /// do): a JSON key of those bytes between quotes is this name, with
    /// nothing to unescape, so the JSON pass compares it without scanning.
    pub plain_name: bool,
    /// The outputs (bit `i` is `Tier::ALL[i]`) that keep its value:
    /// `treatment_masks` of `class` for all three, computed once here
    /// instead of for every field of every event.
    pub keep: u8,
    /// The outputs that hash it, likewise.
    pub hash: u8,
}

/// A validation rule implied by a field's name suffix.
///
/// The suffixes are snake_case (`*_at`); producers that write camelCase
/// (`createdAt`, `failedAttemptCount`) get the same rules from the same
/// suffix after a lowercase letter or digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// No rule.
    None,
    /// `*_cents` / `*Cents`: an integer `>= 0`.
    Cents,
    /// `*_count` / `*Count`: an integer `>= 0`.
    Count,
    /// `*_at` / `*At`: an ISO 8601 UTC instant when a string.
    Instant,
}

impl NameRule {
    /// The rule for a field name.
    pub fn of(name: &str) -> NameRule {
        let suffix = |snake: &str, camel: &str| {
            name.ends_with(snake)
                || name.strip_suffix(camel).is_some_and(|head| {
                    head.bytes()
                        .last()
                        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
        };
        if suffix("_cents", "Cents") {
            NameRule::Cents
        } else if suffix("_count", "Count") {
            NameRule::Count
        } else if suffix("_at", "At") {
            NameRule::Instant
        } else {
            NameRule::None
        }
    }
}

/// A schema node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its shape.
    pub kind: Kind,
    /// Full name of a named type (record, enum, fixed).
    pub fullname: Option<String>,
    /// The node's own JSON without its children (`fields`, `items`,
    /// `values`), for derived schemas.
    pub attrs: Value,
}

/// Why a schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct SchemaError {
    /// Where in the schema (`fields.data.fields.email`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl SchemaError {
    fn new(path: &str, message: impl Into<String>) -> Self {
        SchemaError {
            path: if path.is_empty() {
                "<root>".to_owned()
            } else {
                path.to_owned()
            },
            message: message.into(),
        }
    }
}

/// A writer schema compiled for the pipeline.
#[derive(Debug, Clone)]
pub struct CompiledSchema {
    nodes: Vec<Node>,
    root: NodeId,
    has_hash: bool,
    envelope: Result<Envelope, String>,
    overridden: Vec<OverrideHit>,
    /// Per node: a record's fields as the JSON pass reads them, in the
    /// order of their names (JSON objects are written with sorted keys);
    /// empty for other nodes.
    pass_records: Vec<PassRecord>,
    /// Per node: what its subtree holds (walks skip what cannot matter).
    subtree: Vec<Subtree>,
    /// Per node: a record's fields as the Avro pass reads them, in field
    /// order; empty for other nodes.
    slots: Vec<Box<[pass::Slot]>>,
}

/// A record's fields as the JSON pass reads them ([`PassField`]), in the
/// order of their names, with the names back to back: the walk over a
/// record reads a few cache lines, where the [`Field`]s (128 bytes each,
/// the name in a block of its own) took two or three a field. In the
/// processor the walk meets them cold, after librdkafka's work on the same
/// core.
#[derive(Debug, Clone, Default)]
pub struct PassRecord {
    fields: Box<[PassField]>,
    names: Box<[u8]>,
}

/// What the JSON pass needs of one [`Field`].
#[derive(Debug, Clone, Copy)]
pub struct PassField {
    /// Where the name lies in [`PassRecord`]'s names.
    name_at: u32,
    name_len: u32,
    /// The field's position in its record's [`Field`]s.
    pub index: u32,
    /// Its type.
    pub node: u32,
    /// Its own tier (`class.tier`).
    pub tier: Tier,
    /// [`Field::keep`].
    pub keep: u8,
    /// [`Field::hash`].
    pub hash: u8,
    /// The rule its name implies.
    pub rule: NameRule,
    /// [`Field::plain_name`].
    pub plain_name: bool,
}

impl PassRecord {
    fn new(fields: &[Field]) -> Result<Self, SchemaError> {
        let mut sorted: Vec<usize> = (0..fields.len()).collect();
        sorted.sort_by(|a, b| fields[*a].name.cmp(&fields[*b].name));
        let mut names = Vec::new();
        let mut out = Vec::with_capacity(sorted.len());
        let too_big = || SchemaError::new("", "a record too large to compile".to_owned());
        for i in sorted {
            let f = &fields[i];
            out.push(PassField {
                name_at: u32::try_from(names.len()).map_err(|_| too_big())?,
                name_len: u32::try_from(f.name.len()).map_err(|_| too_big())?,
                index: u32::try_from(i).map_err(|_| too_big())?,
                node: u32::try_from(f.node).map_err(|_| too_big())?,
                tier: f.class.tier,
                keep: f.keep,
                hash: f.hash,
                rule: f.rule,
                plain_name: f.plain_name,
            });
            names.extend_from_slice(f.name.as_bytes());
        }
        Ok(PassRecord {
            fields: out.into_boxed_slice(),
            names: names.into_boxed_slice(),
        })
    }

    /// The fields, in the order of their names.
    pub fn fields(&self) -> &[PassField] {
        &self.fields
    }

    /// A field's name (UTF-8).
    pub fn name(&self, f: &PassField) -> &[u8] {
        let at = f.name_at as usize;
        &self.names[at..at + f.name_len as usize]
    }
}

/// What a node's subtree holds, so that walks over a value skip the parts
/// that cannot change their answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subtree {
    /// Something to validate: a `uuid` string or a field with a name rule.
    pub checks: bool,
    /// The highest tier of any field in it (`public` without fields).
    pub max_tier: Tier,
}

/// A topology override that matched a field of this schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideHit {
    /// The record full name it is keyed by.
    pub record: String,
    /// The field path inside that record.
    pub path: String,
    /// The tier the schema gives the field.
    pub schema_tier: Tier,
    /// The override's tier. Below `schema_tier` it changes nothing (an
    /// override never lowers a tier) and the topology is refused where the
    /// schema is known in advance.
    pub override_tier: Tier,
}

/// Positions of the canonical envelope fields in the root record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// `event_id`
    pub event_id: usize,
    /// `event_type`
    pub event_type: usize,
    /// `entity_type`
    pub entity_type: usize,
    /// `entity_id`
    pub entity_id: usize,
    /// `entity_version`
    pub entity_version: usize,
    /// `occurred_at`
    pub occurred_at: usize,
    /// `schema_version`
    pub schema_version: usize,
    /// `privacy_tier`
    pub privacy_tier: usize,
    /// `trace_id`, if the schema has it
    pub trace_id: Option<usize>,
    /// `correlation_id`, if the schema has it
    pub correlation_id: Option<usize>,
}

impl Envelope {
    /// For a schema without the event envelope (the passes' tests): no
    /// field is one of its.
    pub const NONE: Envelope = Envelope {
        event_id: usize::MAX,
        event_type: usize::MAX,
        entity_type: usize::MAX,
        entity_id: usize::MAX,
        entity_version: usize::MAX,
        occurred_at: usize::MAX,
        schema_version: usize::MAX,
        privacy_tier: usize::MAX,
        trace_id: None,
        correlation_id: None,
    };
}

impl CompiledSchema {
    /// Compiles schema text.
    ///
    /// # Errors
    /// A [`SchemaError`] when the text is not JSON, not valid Avro, or carries
    /// annotations that cannot be read (an unknown tier, `redact: hash` on a
    /// type that cannot be hashed).
    pub fn compile(text: &str, rules: &Rules) -> Result<Self, SchemaError> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| SchemaError::new("", format!("not JSON: {e}")))?;
        apache_avro::Schema::parse(&json)
            .map_err(|e| SchemaError::new("", format!("not a valid Avro schema: {e}")))?;
        let mut c = Compiler {
            nodes: Vec::new(),
            names: HashMap::new(),
            rules,
            has_hash: false,
            scopes: Vec::new(),
            overridden: Vec::new(),
        };
        let root = c.parse(&json, None, "")?;
        let mut schema = CompiledSchema {
            nodes: c.nodes,
            root,
            has_hash: c.has_hash,
            envelope: Err(String::new()),
            overridden: c.overridden,
            pass_records: Vec::new(),
            subtree: Vec::new(),
            slots: Vec::new(),
        };
        schema.envelope = schema.find_envelope();
        schema.subtree = schema.subtrees();
        schema.pass_records = schema
            .nodes
            .iter()
            .map(|n| match &n.kind {
                Kind::Record(fields) => PassRecord::new(fields),
                _ => Ok(PassRecord::default()),
            })
            .collect::<Result<_, _>>()?;
        schema.slots = schema
            .nodes
            .iter()
            .map(|n| match &n.kind {
                Kind::Record(fields) => fields
                    .iter()
                    .map(|f| pass::Slot::new(f, &schema.nodes))
                    .collect::<Result<_, _>>(),
                _ => Ok(Box::default()),
            })
            .collect::<Result<_, _>>()?;
        Ok(schema)
    }

    /// The root node.
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// A record node's field indexes sorted by field name (none for other
    /// nodes).
    pub fn sorted_fields(&self, id: NodeId) -> impl Iterator<Item = usize> + '_ {
        self.pass_records[id]
            .fields
            .iter()
            .map(|f| f.index as usize)
    }

    /// A record node's fields as the JSON pass reads them (none for other
    /// nodes).
    pub fn pass_record(&self, id: NodeId) -> &PassRecord {
        &self.pass_records[id]
    }

    /// A record node's fields as the Avro pass reads them, in field order
    /// (none for other nodes).
    pub(crate) fn slots(&self, id: NodeId) -> &[pass::Slot] {
        &self.slots[id]
    }

    /// What node `id`'s subtree holds.
    pub fn subtree(&self, id: NodeId) -> Subtree {
        self.subtree[id]
    }

    /// Every node's [`Subtree`]: children first, repeated until nothing
    /// changes (named types can refer to themselves).
    fn subtrees(&self) -> Vec<Subtree> {
        let none = Subtree {
            checks: false,
            max_tier: Tier::Public,
        };
        let mut out = vec![none; self.nodes.len()];
        loop {
            let mut changed = false;
            for (id, node) in self.nodes.iter().enumerate() {
                let mut t = Subtree {
                    checks: matches!(node.kind, Kind::Uuid),
                    max_tier: Tier::Public,
                };
                let mut child = |c: &Subtree| {
                    t.checks |= c.checks;
                    t.max_tier = t.max_tier.max(c.max_tier);
                };
                match &node.kind {
                    Kind::Array(c) | Kind::Map(c) => child(&out[*c]),
                    Kind::Union(bs) => bs.iter().for_each(|b| child(&out[*b])),
                    Kind::Record(fields) => {
                        for f in fields {
                            child(&out[f.node]);
                            child(&Subtree {
                                checks: f.rule != NameRule::None,
                                max_tier: f.class.tier,
                            });
                        }
                    }
                    _ => {}
                }
                if out[id] != t {
                    out[id] = t;
                    changed = true;
                }
            }
            if !changed {
                return out;
            }
        }
    }

    /// The root record's fields (empty when the root is not a record).
    pub fn root_fields(&self) -> &[Field] {
        match &self.nodes[self.root].kind {
            Kind::Record(fields) => fields,
            _ => &[],
        }
    }

    /// The root record's full name.
    pub fn fullname(&self) -> Option<&str> {
        self.nodes[self.root].fullname.as_deref()
    }

    /// True when some field asks for `redact: hash`.
    pub fn has_hash(&self) -> bool {
        self.has_hash
    }

    /// Every named record with its fields.
    pub fn records(&self) -> impl Iterator<Item = (&str, &[Field])> {
        self.nodes
            .iter()
            .filter_map(|n| match (&n.kind, &n.fullname) {
                (Kind::Record(fields), Some(name)) => Some((name.as_str(), fields.as_slice())),
                _ => None,
            })
    }

    /// The topology overrides that matched a field of this schema, in schema
    /// order: those that raised a tier, those that left it as it was, and
    /// those that would have lowered it (and did not).
    pub fn overridden(&self) -> &[OverrideHit] {
        &self.overridden
    }

    /// The envelope view, or why this schema is not an event envelope.
    ///
    /// # Errors
    /// A text naming the missing or mistyped envelope field.
    pub fn envelope(&self) -> Result<&Envelope, &str> {
        self.envelope.as_ref().map_err(String::as_str)
    }

    /// The symbol of an enum value, or the string itself.
    pub fn symbol<'d>(&'d self, node: NodeId, datum: &'d Datum<'_>) -> Option<&'d str> {
        match (&self.nodes[node].kind, datum) {
            (Kind::Enum(symbols), Datum::Enum(i)) => symbols.get(*i as usize).map(String::as_str),
            (Kind::Union(branches), Datum::Union(i, inner)) => {
                self.symbol(*branches.get(*i as usize)?, inner)
            }
            (_, Datum::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Every field of every record reachable from the root, with its path, in
    /// schema order (each named record once).
    pub fn fields_with_paths(&self) -> Vec<(String, &Field)> {
        let mut out = Vec::new();
        let mut seen = vec![false; self.nodes.len()];
        self.collect_fields(self.root, "", &mut seen, &mut out);
        out
    }

    fn collect_fields<'s>(
        &'s self,
        id: NodeId,
        path: &str,
        seen: &mut [bool],
        out: &mut Vec<(String, &'s Field)>,
    ) {
        if std::mem::replace(&mut seen[id], true) {
            return;
        }
        match &self.nodes[id].kind {
            Kind::Record(fields) => {
                for f in fields {
                    let p = if path.is_empty() {
                        f.name.clone()
                    } else {
                        format!("{path}.{}", f.name)
                    };
                    out.push((p.clone(), f));
                    self.collect_fields(f.node, &p, seen, out);
                }
            }
            Kind::Array(c) => self.collect_fields(*c, &format!("{path}[]"), seen, out),
            Kind::Map(c) => self.collect_fields(*c, &format!("{path}{{}}"), seen, out),
            Kind::Union(bs) => {
                for b in bs {
                    self.collect_fields(*b, path, seen, out);
                }
            }
            _ => {}
        }
    }

    fn find_envelope(&self) -> Result<Envelope, String> {
        let fields = match &self.nodes[self.root].kind {
            Kind::Record(fields) => fields,
            _ => return Err("the schema is not a record".to_owned()),
        };
        let find = |name: &str, ok: &dyn Fn(&Kind) -> bool| -> Result<usize, String> {
            let i = fields
                .iter()
                .position(|f| f.name == name)
                .ok_or_else(|| format!("the envelope field {name} is missing"))?;
            if ok(&self.nodes[fields[i].node].kind) {
                Ok(i)
            } else {
                Err(format!("the envelope field {name} has the wrong type"))
            }
        };
        let stringy = |k: &Kind| matches!(k, Kind::String | Kind::Uuid);
        let integral = |k: &Kind| matches!(k, Kind::Int | Kind::Long);
        // A producer without entity versions (see `adapt`) has a nullable
        // one: `["null", "long"]`.
        let version = |k: &Kind| {
            integral(k)
                || matches!(k, Kind::Union(bs) if bs.len() == 2
                    && bs.iter().any(|b| self.nodes[*b].kind == Kind::Null)
                    && bs.iter().any(|b| integral(&self.nodes[*b].kind)))
        };
        let symbolic = |k: &Kind| matches!(k, Kind::Enum(_) | Kind::String);
        let optional_id = |name: &str| fields.iter().position(|f| f.name == name);
        Ok(Envelope {
            event_id: find("event_id", &stringy)?,
            event_type: find("event_type", &|k| matches!(k, Kind::String))?,
            entity_type: find("entity_type", &symbolic)?,
            entity_id: find("entity_id", &stringy)?,
            entity_version: find("entity_version", &version)?,
            occurred_at: find("occurred_at", &|k| matches!(k, Kind::String))?,
            schema_version: find("schema_version", &integral)?,
            privacy_tier: find("privacy_tier", &symbolic)?,
            trace_id: optional_id("trace_id"),
            correlation_id: optional_id("correlation_id"),
        })
    }

    /// True when the node is a string that `redact: hash` can replace
    /// (`string`, `uuid`, or a union of `null` and one of those).
    pub fn hashable(&self, id: NodeId) -> bool {
        hashable(&self.nodes, id)
    }
}

fn hashable(nodes: &[Node], id: NodeId) -> bool {
    let stringy = |id: &NodeId| matches!(nodes[*id].kind, Kind::String | Kind::Uuid);
    match &nodes[id].kind {
        Kind::String | Kind::Uuid => true,
        Kind::Union(bs) => {
            bs.len() == 2
                && bs.iter().filter(|b| stringy(b)).count() == 1
                && bs.iter().any(|b| nodes[*b].kind == Kind::Null)
        }
        _ => false,
    }
}

struct Compiler<'t> {
    nodes: Vec<Node>,
    names: HashMap<String, NodeId>,
    rules: &'t Rules,
    has_hash: bool,
    /// The records being compiled, outermost first, each with the path from
    /// it to the field being compiled: where overrides are looked up.
    scopes: Vec<(String, String)>,
    overridden: Vec<OverrideHit>,
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn join(path: &str, part: &str) -> String {
    if path.is_empty() {
        part.to_owned()
    } else {
        format!("{path}.{part}")
    }
}

impl Compiler<'_> {
    fn push(&mut self, kind: Kind, fullname: Option<String>, attrs: Value) -> NodeId {
        self.nodes.push(Node {
            kind,
            fullname,
            attrs,
        });
        self.nodes.len() - 1
    }

    fn parse(&mut self, v: &Value, ns: Option<&str>, path: &str) -> Result<NodeId, SchemaError> {
        match v {
            Value::String(s) => self.named_or_primitive(s, v.clone(), ns, path),
            Value::Array(branches) => {
                let mut ids = Vec::with_capacity(branches.len());
                for (i, b) in branches.iter().enumerate() {
                    ids.push(self.parse(b, ns, &format!("{path}[{i}]"))?);
                }
                Ok(self.push(Kind::Union(ids), None, Value::Null))
            }
            Value::Object(o) => self.parse_object(o, ns, path),
            _ => Err(SchemaError::new(path, "expected a type")),
        }
    }

    fn named_or_primitive(
        &mut self,
        name: &str,
        attrs: Value,
        ns: Option<&str>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        let logical = attrs.get("logicalType").and_then(Value::as_str);
        let kind = match name {
            "null" => Kind::Null,
            "boolean" => Kind::Boolean,
            "int" => Kind::Int,
            "long" => Kind::Long,
            "float" => Kind::Float,
            "double" => Kind::Double,
            "bytes" => Kind::Bytes,
            "string" if logical == Some("uuid") => Kind::Uuid,
            "string" => Kind::String,
            _ => {
                let full = if name.contains('.') {
                    name.to_owned()
                } else {
                    ns.filter(|n| !n.is_empty())
                        .map_or_else(|| name.to_owned(), |n| format!("{n}.{name}"))
                };
                let id = self
                    .names
                    .get(&full)
                    .or_else(|| self.names.get(name))
                    .ok_or_else(|| SchemaError::new(path, "reference to an undefined type"))?;
                return Ok(*id);
            }
        };
        Ok(self.push(kind, None, attrs))
    }

    fn parse_object(
        &mut self,
        o: &Map<String, Value>,
        ns: Option<&str>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        let ty = o
            .get("type")
            .ok_or_else(|| SchemaError::new(path, "a type object needs \"type\""))?;
        let ty = match ty {
            Value::String(s) => s.as_str(),
            nested => return self.parse(nested, ns, path),
        };
        match ty {
            "record" | "error" | "enum" | "fixed" => self.parse_named(ty, o, ns, path),
            "array" | "map" => {
                let key = if ty == "array" { "items" } else { "values" };
                let child = o
                    .get(key)
                    .ok_or_else(|| SchemaError::new(path, format!("{ty} needs \"{key}\"")))?;
                let child = self.parse(child, ns, &join(path, key))?;
                let mut attrs = o.clone();
                attrs.remove(key);
                let kind = if ty == "array" {
                    Kind::Array(child)
                } else {
                    Kind::Map(child)
                };
                Ok(self.push(kind, None, Value::Object(attrs)))
            }
            _ if PRIMITIVES.contains(&ty) => {
                self.named_or_primitive(ty, Value::Object(o.clone()), ns, path)
            }
            other => self.named_or_primitive(other, Value::String(other.to_owned()), ns, path),
        }
    }

    fn parse_named(
        &mut self,
        ty: &str,
        o: &Map<String, Value>,
        ns: Option<&str>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| SchemaError::new(path, format!("{ty} needs a \"name\"")))?;
        let (fullname, own_ns) = match name.rsplit_once('.') {
            Some((n, _)) => (name.to_owned(), Some(n.to_owned())),
            None => {
                let n = match o.get("namespace").and_then(Value::as_str) {
                    Some(n) => Some(n.to_owned()),
                    None => ns.map(str::to_owned),
                };
                let full = match n.as_deref() {
                    Some(n) if !n.is_empty() => format!("{n}.{name}"),
                    _ => name.to_owned(),
                };
                (full, n)
            }
        };
        let mut attrs = o.clone();
        attrs.insert("name".to_owned(), Value::String(fullname.clone()));
        attrs.insert(
            "namespace".to_owned(),
            Value::String(own_ns.clone().unwrap_or_default()),
        );
        let kind = match ty {
            "enum" => {
                let symbols = o
                    .get("symbols")
                    .and_then(Value::as_array)
                    .ok_or_else(|| SchemaError::new(path, "enum needs \"symbols\""))?
                    .iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| SchemaError::new(path, "enum symbols must be strings"))?;
                Kind::Enum(symbols)
            }
            "fixed" => Kind::Fixed(
                o.get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| SchemaError::new(path, "fixed needs \"size\""))?
                    as usize,
            ),
            _ => {
                attrs.remove("fields");
                Kind::Record(Vec::new())
            }
        };
        let id = self.push(kind, Some(fullname.clone()), Value::Object(attrs));
        self.names.insert(fullname.clone(), id);
        if ty == "record" || ty == "error" {
            self.scopes.push((fullname, String::new()));
            let fields = self.parse_fields(o, own_ns.as_deref(), path);
            self.scopes.pop();
            self.nodes[id].kind = Kind::Record(fields?);
        }
        Ok(id)
    }

    fn parse_fields(
        &mut self,
        record: &Map<String, Value>,
        ns: Option<&str>,
        path: &str,
    ) -> Result<Vec<Field>, SchemaError> {
        let default =
            classify::record_default(record).map_err(|e| SchemaError::new(path, e.to_string()))?;
        let raw = record
            .get("fields")
            .and_then(Value::as_array)
            .ok_or_else(|| SchemaError::new(path, "record needs \"fields\""))?;
        let mut fields = Vec::with_capacity(raw.len());
        for f in raw {
            let f = f
                .as_object()
                .ok_or_else(|| SchemaError::new(path, "a field must be an object"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| SchemaError::new(path, "a field needs a \"name\""))?;
            let fpath = join(path, &format!("fields.{name}"));
            let ty = f
                .get("type")
                .ok_or_else(|| SchemaError::new(&fpath, "a field needs a \"type\""))?;
            // Inside the field's type, every enclosing record's path goes
            // through this field.
            let outer: Vec<String> = self
                .scopes
                .iter_mut()
                .map(|(_, p)| {
                    let inner = join(p, name);
                    std::mem::replace(p, inner)
                })
                .collect();
            let node = self.parse(ty, ns, &fpath);
            let field_paths: Vec<(String, String)> = self
                .scopes
                .iter_mut()
                .zip(outer)
                .map(|((record, p), before)| (record.clone(), std::mem::replace(p, before)))
                .collect();
            let node = node?;
            let classify::Classified { mut class, origin } =
                classify::classify(f, default, &self.rules.tags)
                    .map_err(|e| SchemaError::new(&fpath, e.to_string()))?;
            self.apply_overrides(&mut class, field_paths);
            if class.redact == Redact::Hash {
                self.has_hash = true;
                if !hashable(&self.nodes, node) {
                    return Err(SchemaError::new(
                        &fpath,
                        "\"redact\": \"hash\" needs a string, uuid or [\"null\", \"string\"] field",
                    ));
                }
            }
            let mut attrs = f.clone();
            attrs.remove("type");
            let (keep, hash) = crate::project::treatment_masks(class, &Tier::ALL, pass::ALL_TIERS);
            fields.push(Field {
                name: name.to_owned(),
                node,
                class,
                origin,
                attrs,
                rule: NameRule::of(name),
                plain_name: name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
                keep,
                hash,
            });
        }
        Ok(fields)
    }
}

impl Compiler<'_> {
    /// Raises a field's tier to the strictest override that names it through
    /// any enclosing record; never lowers it.
    fn apply_overrides(&mut self, class: &mut FieldClass, paths: Vec<(String, String)>) {
        if self.rules.overrides.is_empty() {
            return;
        }
        let schema_tier = class.tier;
        for (record, path) in paths {
            let Some(floor) = self.rules.overrides.get(&record, &path) else {
                continue;
            };
            if floor > class.tier {
                class.tier = floor;
                class.raised_from = Some(schema_tier);
            }
            self.overridden.push(OverrideHit {
                record,
                path,
                schema_tier,
                override_tier: floor,
            });
        }
    }
}

/// The strictest tier of any non-null value in `datum` (a value's tier is
/// the highest label on its path from the root), with the path of the first
/// field that reaches it. Used for the declared-tier check; the path names
/// schema fields only, never values.
pub fn max_present_tier(schema: &CompiledSchema, datum: &Datum<'_>) -> (Tier, Option<String>) {
    fn walk<'s>(
        s: &'s CompiledSchema,
        id: NodeId,
        d: &Datum<'_>,
        ceiling: Tier,
        path: &mut Vec<&'s str>,
        best: &mut (Tier, Option<String>),
    ) {
        match (&s.nodes[id].kind, d) {
            (Kind::Record(fields), Datum::Record(values)) => {
                for (f, v) in fields.iter().zip(values) {
                    if best.0 == Tier::Restricted {
                        return;
                    }
                    let t = ceiling.max(f.class.tier);
                    if v.is_null() || t.max(s.subtree[f.node].max_tier) <= best.0 {
                        // Nothing in it can raise the answer.
                        continue;
                    }
                    path.push(&f.name);
                    if t > best.0 {
                        *best = (t, Some(path.join(".")));
                    }
                    walk(s, f.node, v, t, path, best);
                    path.pop();
                }
            }
            (Kind::Array(c), Datum::Array(items)) => {
                for item in items {
                    walk(s, *c, item, ceiling, path, best);
                }
            }
            (Kind::Map(c), Datum::Map(entries)) => {
                for (_, v) in entries {
                    walk(s, *c, v, ceiling, path, best);
                }
            }
            (Kind::Union(bs), Datum::Union(i, inner)) => {
                if let Some(b) = bs.get(*i as usize) {
                    walk(s, *b, inner, ceiling, path, best);
                }
            }
            _ => {}
        }
    }
    let mut best = (Tier::Public, None);
    walk(
        schema,
        schema.root,
        datum,
        Tier::Public,
        &mut Vec::new(),
        &mut best,
    );
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtrees_know_what_they_hold_through_recursion() {
        // Outer holds Inner, which refers back to Outer: the uuid and the
        // restricted field deep down reach the root.
        let text = r#"{"type": "record", "name": "Outer", "fields": [
            {"name": "label", "type": "string", "privacy": "public"},
            {"name": "inner", "type": ["null", {"type": "record", "name": "Inner", "fields": [
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}, "privacy": "public"},
                {"name": "back", "type": ["null", "Outer"], "privacy": "public"},
                {"name": "secret", "type": "string", "privacy": "restricted"}
            ]}], "privacy": "public"},
            {"name": "plain", "type": {"type": "record", "name": "Plain", "fields": [
                {"name": "n", "type": "long", "privacy": "public"}
            ]}, "privacy": "internal"}
        ]}"#;
        let s = CompiledSchema::compile(text, &Rules::default()).unwrap();
        let root = s.subtree(s.root());
        assert!(root.checks);
        assert_eq!(root.max_tier, Tier::Restricted);
        let field = |name: &str| {
            let f = s.root_fields().iter().find(|f| f.name == name).unwrap();
            s.subtree(f.node)
        };
        assert_eq!(field("inner").max_tier, Tier::Restricted);
        assert!(field("inner").checks);
        // The field's own tier is its parent's to count; nothing inside
        // Plain is above public, and nothing there needs a check.
        assert_eq!(field("plain").max_tier, Tier::Public);
        assert!(!field("plain").checks);
        assert!(!field("label").checks);
    }

    /// Every record's pass fields are its fields in name order, with the
    /// name, type, tier, rule and treatment masks of the field they stand
    /// for: over every schema in `avro/` (hashed, removed and kept fields,
    /// nested records).
    #[test]
    fn pass_records_are_the_fields_in_name_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
        let mut files = Vec::new();
        crate::registry::file::payload_files(&dir, &mut files).unwrap();
        let (mut schemas, mut checked) = (0, 0);
        // `envelope.avsc` is the template the event schemas fill in.
        for path in files.iter().filter(|p| !p.ends_with("envelope.avsc")) {
            let text = std::fs::read_to_string(path).unwrap();
            let s = CompiledSchema::compile(&text, &Rules::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            schemas += 1;
            for (id, node) in s.nodes.iter().enumerate() {
                let plan = s.pass_record(id);
                let Kind::Record(fields) = &node.kind else {
                    assert!(plan.fields().is_empty());
                    continue;
                };
                // Each field once.
                let mut indexes: Vec<usize> = s.sorted_fields(id).collect();
                indexes.sort_unstable();
                assert!(
                    indexes.iter().copied().eq(0..fields.len()),
                    "{}",
                    path.display()
                );
                let mut prev: Option<&[u8]> = None;
                for (pf, i) in plan.fields().iter().zip(s.sorted_fields(id)) {
                    let f = &fields[i];
                    let name = plan.name(pf);
                    assert_eq!(name, f.name.as_bytes());
                    assert!(prev.is_none_or(|p| p < name), "{}", path.display());
                    prev = Some(name);
                    assert_eq!(pf.node as usize, f.node);
                    assert_eq!(pf.tier, f.class.tier);
                    assert_eq!(pf.rule, f.rule);
                    assert_eq!(pf.plain_name, f.plain_name);
                    for mask in 0..=pass::ALL_TIERS {
                        let (keep, hash) =
                            crate::project::treatment_masks(f.class, &Tier::ALL, mask);
                        assert_eq!((pf.keep & mask, pf.hash & mask), (keep, hash));
                        assert_eq!((f.keep & mask, f.hash & mask), (keep, hash));
                    }
                    checked += usize::from(pf.hash != 0);
                }
            }
        }
        assert!(
            schemas > 0 && checked > 0,
            "{schemas} schemas, {checked} hashed fields"
        );
    }

    #[test]
    fn name_rules_in_snake_and_camel_case() {
        for (name, rule) in [
            ("created_at", NameRule::Instant),
            ("createdAt", NameRule::Instant),
            ("total_cents", NameRule::Cents),
            ("amountCents", NameRule::Cents),
            ("member_count", NameRule::Count),
            ("failedAttemptCount", NameRule::Count),
            ("format", NameRule::None),
            ("At", NameRule::None),
            ("isActive", NameRule::None),
            ("Count", NameRule::None),
        ] {
            assert_eq!(NameRule::of(name), rule, "{name}");
        }
    }

    #[test]
    fn a_nullable_entity_version_is_still_an_envelope() {
        let text = |version: &str| {
            format!(
                r#"{{"type":"record","name":"E","fields":[
                {{"name":"event_id","type":"string"}},{{"name":"event_type","type":"string"}},
                {{"name":"entity_type","type":"string"}},{{"name":"entity_id","type":"string"}},
                {{"name":"entity_version","type":{version}}},{{"name":"occurred_at","type":"string"}},
                {{"name":"schema_version","type":"int"}},{{"name":"privacy_tier","type":"string"}}]}}"#
            )
        };
        let tags = Rules::default();
        for ok in [r#""long""#, r#"["null","long"]"#, r#"["long","null"]"#] {
            let s = CompiledSchema::compile(&text(ok), &tags).unwrap();
            assert!(s.envelope().is_ok(), "{ok}");
        }
        for bad in [
            r#""string""#,
            r#"["null","string"]"#,
            r#"["null","long","string"]"#,
        ] {
            let s = CompiledSchema::compile(&text(bad), &tags).unwrap();
            assert_eq!(
                s.envelope().unwrap_err(),
                "the envelope field entity_version has the wrong type",
                "{bad}"
            );
        }
    }
}
