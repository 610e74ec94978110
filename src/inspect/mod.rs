//! Inspection: what a topology and its schemas will do, worked out without
//! running anything — for producers' CI (`check`), operators (`describe`)
//! and compliance reviewers (`privacy-report`).
//!
//! Everything here reads the same structs the engine runs on (the validated
//! [`Topology`], its [`EngineConfig`], schemas checked by the engine's
//! [`check_writer_schema`]) and calls the engine's rules instead of
//! restating them — which tiers an event type reaches
//! ([`EngineConfig::reaches`]), how classification decided a field's tier
//! (its [`Provenance`]), what a tier does with it ([`treatment`]) — so what a
//! report says is what the engine does. The schemas are [`Schemas`]: every
//! version of every input subject, from the file registry's folder or from
//! the registry production uses (each [`SchemaSource`] names its file, or its
//! subject versions and schema id). The functions return structs and
//! strings; the CLI does the I/O and prints them.
//!
//! * [`check`]: the topology and every schema it touches, with every problem,
//!   every field that falls to the fail-closed default, and what each
//!   override changes.
//! * [`candidate`]: a new writer schema checked before it is registered:
//!   what each tier would gain and lose, and whether the registry would
//!   accept its derived tier schemas.
//! * [`describe`]: the topology as a graph (text or Mermaid), with the
//!   overrides.
//! * [`report`]: which field reaches which tier and how (Markdown or HTML),
//!   with a sign-off block.

pub mod candidate;
pub mod check;
pub mod describe;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::classify::{Redact, Rules, TierOrigin};
use crate::config::{EngineConfig, Topology};
use crate::pipeline::{check_writer_schema, SchemaFault};
use crate::project::{treatment, Treatment};
use crate::record::Tier;
use crate::registry::file::FileRegistry;
use crate::registry::Catalogue;
use crate::schema::{CompiledSchema, Field, Kind, LookupError, NodeId, SchemaLookup};

pub use crate::classify::Provenance;

/// A version of a registry subject that holds a schema.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// Its version (1, 2, …).
    pub version: u32,
    /// The schema's global id.
    pub id: u32,
}

impl fmt::Display for SubjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject {} version {} (id {})",
            self.subject, self.version, self.id
        )
    }
}

/// Where an inspected schema came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The file registry's folder: the event type's payload file for this
    /// version, composed with the folder's `envelope.avsc`.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// The payload file.
        payload: PathBuf,
    },
    /// A whole writer schema in one file (`check --schema`).
    File {
        /// The file.
        file: PathBuf,
    },
    /// A schema registry: the versions are in [`SchemaSource::subjects`].
    Registry {
        /// Its base URL.
        url: String,
    },
}

/// One version of an event type's schema, as the inspections read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSource {
    /// `user.created`
    pub event_type: String,
    /// The subject version it is (for the folder: `N` of
    /// `<event_type>.vN.avsc`; for a candidate: the version it would be).
    pub version: u32,
    /// Its global schema id, when it has one (a candidate has none yet).
    pub id: Option<u32>,
    /// The subject versions that hold it (one per input topic whose naming
    /// gives the subject).
    pub subjects: Vec<SubjectVersion>,
    /// The schema text (for the folder: the composed schema).
    pub text: String,
    /// Where it came from.
    pub origin: Origin,
}

impl SchemaSource {
    /// `user.created v2`
    pub fn label(&self) -> String {
        format!("{} v{}", self.event_type, self.version)
    }

    /// Where a reader finds it: the payload file, the schema file, or the
    /// first subject version that holds it (and how many others do).
    pub fn location(&self) -> String {
        match &self.origin {
            Origin::Folder { payload, .. } => payload.display().to_string(),
            Origin::File { file } => file.display().to_string(),
            Origin::Registry { url } => match self.subjects.as_slice() {
                [] => url.clone(),
                [one] => one.to_string(),
                [first, rest @ ..] => format!("{first} and {} more", rest.len()),
            },
        }
    }

    /// The file to fix for something at a value path (`data.email`): in the
    /// folder, `data` and below are in the payload file and the other
    /// envelope fields in `envelope.avsc`; a candidate is its file; a
    /// registry schema is fixed in the registry (its URL).
    pub fn file_for(&self, value_path: &str) -> String {
        match &self.origin {
            Origin::Folder { dir, payload } => {
                let p = value_path;
                if p == "data" || p.starts_with("data.") || p.starts_with("data<") {
                    payload.display().to_string()
                } else {
                    dir.join("envelope.avsc").display().to_string()
                }
            }
            Origin::File { file } => file.display().to_string(),
            Origin::Registry { url } => url.clone(),
        }
    }

    /// Where a schema problem is to be fixed, and the path there: in the
    /// folder, problems inside `data` in the payload file (path relative to
    /// it), problems in other envelope fields in `envelope.avsc`; elsewhere
    /// the schema's own file or registry, with the path as found.
    pub fn problem_at(&self, p: &SchemaProblem) -> (String, String) {
        let Origin::Folder { dir, payload } = &self.origin else {
            return (self.file_for(""), p.path.clone());
        };
        if let Some(rest) = p.path.strip_prefix("fields.data") {
            if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
                let rest = rest.strip_prefix('.').unwrap_or(rest);
                let path = if rest.is_empty() { "<root>" } else { rest };
                return (payload.display().to_string(), path.to_owned());
            }
        }
        if p.path.starts_with("fields.") {
            return (
                dir.join("envelope.avsc").display().to_string(),
                p.path.clone(),
            );
        }
        (payload.display().to_string(), p.path.clone())
    }

    /// The subject versions to name in a finding: those of a registry
    /// schema (a folder's are implied by its files).
    pub fn refs(&self) -> &[SubjectVersion] {
        match self.origin {
            Origin::Registry { .. } => &self.subjects,
            _ => &[],
        }
    }
}

/// The schemas an inspection reads: every version of every event type of
/// the topology's input subjects.
#[derive(Debug, Clone)]
pub struct Schemas {
    /// The folder or the registry URL, as given.
    pub location: String,
    /// The registry's URL when they come from one.
    pub registry: Option<String>,
    /// Every version, sorted by event type and version.
    pub versions: Vec<SchemaSource>,
    /// The same as configuration is checked against it.
    pub catalogue: Catalogue,
}

impl Schemas {
    /// The schemas of the file registry over `dir` (every
    /// `<event_type>.avsc` and `<event_type>.vN.avsc`).
    ///
    /// # Errors
    /// Findings naming each file that cannot be read or composed.
    pub fn from_folder(t: &Topology, dir: &Path) -> Result<Schemas, Vec<check::Finding>> {
        let reg: FileRegistry = check::load_schemas(t, dir)?;
        let naming = &t.engine.subjects;
        let topics = &t.spec.input.names();
        let catalogue = Catalogue::read(
            &mut reg.registry.clone(),
            naming,
            topics,
            format!("the folder {}", dir.display()),
        )
        .map_err(|e| {
            vec![check::Finding::error(
                "schema_folder",
                dir.display().to_string(),
                "",
                e.to_string(),
            )]
        })?;
        let mut versions: Vec<SchemaSource> = reg
            .events
            .iter()
            .map(|e| SchemaSource {
                event_type: e.event_type.clone(),
                version: e.version,
                id: Some(e.id),
                subjects: topics
                    .iter()
                    .map(|topic| SubjectVersion {
                        subject: naming.subject(topic, &e.event_type),
                        version: e.version,
                        id: e.id,
                    })
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                text: e.text.clone(),
                origin: Origin::Folder {
                    dir: dir.to_owned(),
                    payload: e.path.clone(),
                },
            })
            .collect();
        versions.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
        Ok(Schemas {
            location: dir.display().to_string(),
            registry: None,
            versions,
            catalogue,
        })
    }

    /// Every version of every subject the topology's input topics use, read
    /// from the registry at `url`. A schema held by several subjects (one per
    /// input topic) is one [`SchemaSource`] naming them all.
    ///
    /// # Errors
    /// The registry's error.
    pub fn from_registry(
        t: &Topology,
        url: &str,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Schemas, LookupError> {
        let catalogue = Catalogue::read(
            registry,
            &t.engine.subjects,
            &t.spec.input.names(),
            format!("the registry at {url}"),
        )?;
        let mut by_key: BTreeMap<(String, u32), SchemaSource> = BTreeMap::new();
        for k in &catalogue.schemas {
            let sv = SubjectVersion {
                subject: k.subject.clone(),
                version: k.version,
                id: k.id,
            };
            by_key
                .entry((k.event_type.clone(), k.id))
                .and_modify(|s| {
                    s.subjects.push(sv.clone());
                    s.version = s.version.min(k.version);
                })
                .or_insert_with(|| SchemaSource {
                    event_type: k.event_type.clone(),
                    version: k.version,
                    id: Some(k.id),
                    subjects: vec![sv.clone()],
                    text: k.text.to_string(),
                    origin: Origin::Registry {
                        url: url.to_owned(),
                    },
                });
        }
        let mut versions: Vec<SchemaSource> = by_key.into_values().collect();
        versions.sort_by(|a, b| {
            (&a.event_type, a.version, a.id).cmp(&(&b.event_type, b.version, b.id))
        });
        Ok(Schemas {
            location: url.to_owned(),
            registry: Some(url.to_owned()),
            versions,
            catalogue,
        })
    }

    /// How many event types have a schema.
    pub fn event_types(&self) -> usize {
        self.versions
            .iter()
            .map(|v| v.event_type.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// `the folder avro`, `the registry at http://…`: how messages name
    /// them.
    pub fn source(&self) -> &str {
        &self.catalogue.source
    }
}

/// A schema version compiled with the engine's rules, with its view.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// Where it came from.
    pub source: SchemaSource,
    /// Compiled with the topology's rules.
    pub schema: CompiledSchema,
    /// Field by field.
    pub view: EventView,
}

/// Compiles every version ([`compile_event`]) and views it; returns those
/// that compile and, apart, every one that does not with its problem.
pub fn inspect_all(
    config: &EngineConfig,
    versions: &[SchemaSource],
) -> (Vec<Inspected>, Vec<(SchemaSource, SchemaProblem)>) {
    let mut ok = Vec::with_capacity(versions.len());
    let mut bad = Vec::new();
    for v in versions {
        match compile_event(&v.text, config) {
            Ok(schema) => {
                let view = event_view(v, &schema, config);
                ok.push(Inspected {
                    source: v.clone(),
                    schema,
                    view,
                });
            }
            Err(p) => bad.push((v.clone(), p)),
        }
    }
    (ok, bad)
}

/// What one `classification.overrides` entry does to one schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideUse {
    /// The event type.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// The tier its schema gives the field.
    pub schema_tier: Tier,
    /// The field's value paths in the event (`data.email`).
    pub fields: Vec<String>,
}

/// One `classification.overrides` entry and what it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideEffect {
    /// The record full name it is keyed by.
    pub record: String,
    /// The field path inside that record.
    pub path: String,
    /// The tier floor it sets.
    pub tier: Tier,
    /// Every schema version with the field, in event type and version
    /// order.
    pub uses: Vec<OverrideUse>,
}

impl OverrideEffect {
    /// Its key path in the topology: `classification.overrides.<record>.<path>`.
    pub fn key(&self) -> String {
        format!("classification.overrides.{}.{}", self.record, self.path)
    }

    /// The uses where it raised the field's tier.
    pub fn raised(&self) -> impl Iterator<Item = &OverrideUse> {
        self.uses.iter().filter(|u| u.schema_tier < self.tier)
    }

    /// One line: what it raised, from which tier, in which event types and
    /// versions, and where it changed nothing.
    pub fn summary(&self) -> String {
        if self.uses.is_empty() {
            return "matches no field of the schemas read".to_owned();
        }
        // (fields, schema tier) -> event type -> versions
        type Groups = BTreeMap<(String, Tier), BTreeMap<String, Vec<u32>>>;
        let mut raised: Groups = BTreeMap::new();
        let mut kept: Groups = BTreeMap::new();
        for u in &self.uses {
            let fields = if u.fields.is_empty() {
                format!("{}.{}", short_name(&self.record), self.path)
            } else {
                u.fields.join(", ")
            };
            let g = if u.schema_tier < self.tier {
                &mut raised
            } else {
                &mut kept
            };
            g.entry((fields, u.schema_tier))
                .or_default()
                .entry(u.event_type.clone())
                .or_default()
                .push(u.version);
        }
        let list = |types: &BTreeMap<String, Vec<u32>>| -> String {
            types
                .iter()
                .map(|(t, vs)| {
                    let vs: Vec<String> = vs.iter().map(|v| format!("v{v}")).collect();
                    format!("{t} {}", vs.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut parts = Vec::new();
        for ((fields, from), types) in &raised {
            parts.push(format!(
                "raises {fields} from {from} to {} in {}",
                self.tier,
                list(types)
            ));
        }
        for ((fields, from), types) in &kept {
            let why = if *from == self.tier {
                format!("already {from}")
            } else {
                format!("its schema says {from}, stricter; an override never lowers a tier")
            };
            parts.push(format!(
                "leaves {fields} as it is ({why}) in {}",
                list(types)
            ));
        }
        parts.join("; ")
    }
}

/// What each override of `rules` does to each inspected schema version, in
/// the order of the topology's overrides.
pub fn override_effects(rules: &Rules, inspected: &[Inspected]) -> Vec<OverrideEffect> {
    rules
        .overrides
        .iter()
        .map(|(record, path, tier)| {
            let mut uses = Vec::new();
            for i in inspected {
                let Some(hit) = i
                    .schema
                    .overridden()
                    .iter()
                    .find(|h| h.record == record && h.path == path)
                else {
                    continue;
                };
                let fields: Vec<String> = i
                    .view
                    .fields
                    .iter()
                    .filter(|f| f.overrides.iter().any(|(r, p)| r == record && p == path))
                    .map(|f| f.path.clone())
                    .collect();
                uses.push(OverrideUse {
                    event_type: i.source.event_type.clone(),
                    version: i.source.version,
                    schema_tier: hit.schema_tier,
                    fields,
                });
            }
            uses.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
            OverrideEffect {
                record: record.to_owned(),
                path: path.to_owned(),
                tier,
                uses,
            }
        })
        .collect()
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
    /// Where its own tier came from (what the schema says; see
    /// `raised_from`).
    pub provenance: Provenance,
    /// The tier its schema gave it before a `classification.overrides`
    /// entry raised it to `tier`; `None` when no override changed it.
    pub raised_from: Option<Tier>,
    /// The `classification.overrides` entries (record full name, path in
    /// that record) that name this field at this path.
    pub overrides: Vec<(String, String)>,
    /// `"redact": "hash"`: pseudonymised below its tier.
    pub hash: bool,
    /// Tags on the field that the topology's tag map does not know.
    pub unmapped_tags: Vec<String>,
    /// Per tier ([`Tier::index`]): what the tier's record does with it.
    pub reach: [Reach; 3],
}

impl FieldView {
    /// Where its tier came from, for reports: the provenance, or for a field
    /// an override raised, `override (schema said internal: label)`.
    pub fn tier_from(&self) -> String {
        match self.raised_from {
            Some(t) => format!("override (schema said {t}: {})", self.provenance.describe()),
            None => self.provenance.describe(),
        }
    }

    /// The tier its schema gives it, before any override.
    pub fn schema_tier(&self) -> Tier {
        self.raised_from.unwrap_or(self.tier)
    }
}

/// One event type's schema, field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    /// `user.created`
    pub event_type: String,
    /// The subject version it is.
    pub version: u32,
    /// Its global schema id, when it has one.
    pub id: Option<u32>,
    /// The subject versions that hold it.
    pub subjects: Vec<SubjectVersion>,
    /// Where it came from.
    pub origin: Origin,
    /// The record's full name.
    pub fullname: String,
    /// SHA-256 of the schema text, hex.
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

/// Compiles an event type's schema and checks it as the engine does
/// ([`check_writer_schema`]): an envelope (or every record would be
/// dead-lettered as `schema_mismatch`) and a valid derived schema per tier.
/// Does not need the hash key: whether a schema asks for hashing is
/// [`CompiledSchema::has_hash`].
///
/// # Errors
/// The first [`SchemaProblem`] of the schema.
pub fn compile_event(text: &str, config: &EngineConfig) -> Result<CompiledSchema, SchemaProblem> {
    check_writer_schema(text, config)
        .map(|w| w.schema)
        .map_err(SchemaProblem::from)
}

impl From<SchemaFault> for SchemaProblem {
    fn from(fault: SchemaFault) -> Self {
        let reason = fault.reason();
        match fault {
            SchemaFault::Invalid(e) => SchemaProblem {
                path: e.path,
                message: e.message,
            },
            SchemaFault::NotEnvelope(why) => SchemaProblem {
                path: "<root>".to_owned(),
                message: format!(
                    "{why}: not an event envelope, every record would be dead-lettered ({reason})"
                ),
            },
            SchemaFault::Derived { tier, message } => SchemaProblem {
                path: format!("<derived {tier} schema>"),
                message: format!("the derived schema is not valid Avro: {message}"),
            },
        }
    }
}

/// The view of a compiled schema version.
pub fn event_view(
    source: &SchemaSource,
    schema: &CompiledSchema,
    config: &EngineConfig,
) -> EventView {
    let reaches = config.reaches(&source.event_type);
    let mut fields = Vec::new();
    let mut walker = Walker {
        schema,
        config,
        reaches,
        out: &mut fields,
        stack: Vec::new(),
        scopes: Vec::new(),
    };
    walker.node(schema.root(), "", Tier::Public, [true; 3]);
    EventView {
        event_type: source.event_type.clone(),
        version: source.version,
        id: source.id,
        subjects: source.subjects.clone(),
        origin: source.origin.clone(),
        fullname: schema.fullname().unwrap_or("").to_owned(),
        fingerprint: sha256_hex(source.text.as_bytes()),
        reaches,
        limited: config.tier_limits.contains_key(&source.event_type),
        fields,
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
    /// The named records on the current path, outermost first, each with
    /// the field path from it to where the walk is: where overrides are
    /// looked up (as the compiler does).
    scopes: Vec<(String, String)>,
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
                let named = s.node(id).fullname.clone();
                if let Some(name) = &named {
                    self.scopes.push((name.clone(), String::new()));
                }
                for f in fields {
                    self.field(f, path, ceiling, alive);
                }
                if named.is_some() {
                    self.scopes.pop();
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
        let TierOrigin {
            label,
            provenance,
            unmapped_tags,
        } = f.origin.clone();
        let tier = f.class.tier;
        // Inside the field, every enclosing record's path goes through it.
        let outer: Vec<String> = self
            .scopes
            .iter_mut()
            .map(|(_, p)| {
                let inner = if p.is_empty() {
                    f.name.clone()
                } else {
                    format!("{p}.{}", f.name)
                };
                std::mem::replace(p, inner)
            })
            .collect();
        let overrides: Vec<(String, String)> = self
            .scopes
            .iter()
            .filter(|(r, p)| self.config.rules.overrides.get(r, p).is_some())
            .cloned()
            .collect();
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
            raised_from: f.class.raised_from,
            overrides,
            hash: f.class.redact == Redact::Hash,
            unmapped_tags,
            reach,
        });
        // Below a field, only the tiers that keep it still hold anything.
        self.node(f.node, &path, ceiling.max(tier), child_alive);
        for ((_, p), before) in self.scopes.iter_mut().zip(outer) {
            *p = before;
        }
    }
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
    use std::sync::Arc;

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

    fn event(text: &str) -> SchemaSource {
        SchemaSource {
            version: 1,
            event_type: "user.created".to_owned(),
            id: Some(1),
            subjects: Vec::new(),
            text: text.to_owned(),
            origin: Origin::Folder {
                dir: PathBuf::from("avro"),
                payload: PathBuf::from("avro/events/user/user.created.avsc"),
            },
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
            tier_limits: [(
                "user.created".to_owned(),
                [Tier::Restricted].into_iter().collect(),
            )]
            .into_iter()
            .collect(),
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

    #[test]
    fn the_engine_refuses_what_compile_event_refuses_with_the_reason_it_names() {
        let config = Arc::new(EngineConfig::default());
        let engine = crate::pipeline::Engine::new(config.clone(), None);
        let p = compile_event(TEXT, &config).unwrap_err();
        assert_eq!(p.path, "<root>");
        let r = engine.check_schema(TEXT).unwrap_err();
        assert_eq!(r.reason, crate::record::Reason::SchemaMismatch);
        assert_eq!(
            p.message,
            format!(
                "{}: not an event envelope, every record would be dead-lettered (schema_mismatch)",
                r.detail
            )
        );
        let bad = r#"{"type":"record","name":"E","fields":[{"name":"x","type":"long","privacy":"secret"}]}"#;
        let p = compile_event(bad, &config).unwrap_err();
        let r = engine.check_schema(bad).unwrap_err();
        assert_eq!(r.reason, crate::record::Reason::InvalidSchema);
        assert_eq!(r.detail, format!("{}: {}", p.path, p.message));
    }
}
