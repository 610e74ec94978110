//! `privacy-router check`: the topology and every schema it touches, with
//! every problem at once, each with its file and path.
//!
//! Severities:
//!
//! * **error** — the run would refuse to start or dead-letter every record
//!   of a type: topology problems, unreadable or invalid schemas, schemas
//!   that are not an event envelope. Also fields that fall to the
//!   fail-closed default (no label of their own, no mapped tag, no default
//!   from their own record): safe, but almost always a label forgotten by a
//!   producer; `--allow-fail-closed` makes them warnings.
//!   Also what the topology names that no schema has (configuration fails
//!   closed, see [`crate::config::schemas`]): an event type in `event_types`
//!   or an adapter's mapping (a misspelt name would leave the real one
//!   unlimited), a subject version, an override that matches no field or
//!   would lower one.
//! * **warning** — probably a mistake, never a leak: an unmapped
//!   `confluent:tags` entry, a tag in the topology's map that no field
//!   carries, a hash key that is set but too short. `--strict` makes
//!   warnings errors.
//! * **note** — the hash key is not set while schemas ask for
//!   `redact: hash` (`check` does not need it; `run` does).
//! * **info** — fields whose tier came from Confluent tags.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::candidate::CandidateReport;
use super::{
    inspect_all, override_effects, Inspected, Provenance, SchemaProblem, SchemaSource, Schemas,
    SubjectVersion,
};
use crate::config::yaml::Place;
use crate::config::{self, Problem, Topology};
use crate::project::MIN_KEY_LEN;
use crate::registry::file::{self, FileRegistry, FileRegistryError};
use crate::registry::Catalogue;
use crate::schema::{SchemaLookup, DEFAULT_SUBJECT_TEMPLATE};

/// How serious a finding is. Ordered: errors first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `check` fails.
    Error,
    /// Probably a mistake; an error with `--strict`.
    Warning,
    /// Worth knowing; never a failure.
    Note,
    /// Listed for review.
    Info,
}

impl Severity {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
            Severity::Info => "info",
        }
    }
}

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// A stable code: `topology`, `schema_folder`, `registry`,
    /// `invalid_schema`, `fail_closed_field`, `unmapped_tag`, `unused_tag`,
    /// `hash_key`, `tag_classified_field`, `override`, `no_event_types`,
    /// `schemas_not_checked`, and for `check --schema`: `subject`,
    /// `override_lowers`, `incompatible_schema`,
    /// `derived_schema_incompatible`.
    pub code: &'static str,
    /// The file to fix (or `<environment>`, or the registry's URL).
    pub file: String,
    /// The path in that file: a topology key, a schema path or a field's
    /// value path (`data.email`).
    pub path: String,
    /// What is wrong, naming no payload value (there are none here).
    pub message: String,
    /// The event types it concerns (sorted; empty for topology findings).
    pub event_types: Vec<String>,
    /// Line and column in `file`, for findings in the topology file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    /// The registry subject versions it concerns (sorted), for schemas
    /// read from a registry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<SubjectVersion>,
}

impl Finding {
    /// An error finding without event types, place or subject versions.
    pub fn error(code: &'static str, file: String, path: &str, message: String) -> Finding {
        Finding {
            severity: Severity::Error,
            code,
            file,
            path: path.to_owned(),
            message,
            event_types: Vec::new(),
            place: None,
            schemas: Vec::new(),
        }
    }
}

/// How strict `check` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Warnings become errors.
    pub strict: bool,
    /// Fields that fall to the fail-closed default are warnings, not errors.
    pub allow_fail_closed: bool,
}

/// The state of `PRIVACY_ROUTER_HASH_KEY` (never its value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    /// Not set or empty.
    Missing,
    /// Set, shorter than [`MIN_KEY_LEN`] bytes.
    TooShort,
    /// Set and long enough.
    Usable,
}

impl HashKey {
    /// The state of a key, if one is given.
    pub fn of(key: Option<&str>) -> HashKey {
        match key {
            None | Some("") => HashKey::Missing,
            Some(k) if k.len() < MIN_KEY_LEN => HashKey::TooShort,
            Some(_) => HashKey::Usable,
        }
    }
}

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// True when there is no error.
    pub ok: bool,
    /// The topology file.
    pub topology: String,
    /// The schema folder, the registry URL, or the candidate schema file.
    pub schemas: String,
    /// The registry's URL, when schemas came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Event types with a schema.
    pub event_types: usize,
    /// Schema versions read (all versions of every event type).
    pub schema_versions: usize,
    /// Field paths across all schema versions.
    pub fields: usize,
    /// Errors.
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// Everything found: errors first, then by file and path.
    pub findings: Vec<Finding>,
    /// For `check --schema`: what each tier would gain and lose, and the
    /// registry's verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateReport>,
}

/// How much was read, for the report's first line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Event types with a schema.
    pub event_types: usize,
    /// Schema versions.
    pub versions: usize,
    /// Field paths across all schema versions.
    pub fields: usize,
}

/// Where `check` reads the schemas.
pub enum SchemaInput<'a> {
    /// The file registry over a folder; `None`: the topology's
    /// `schemas.folder`.
    Folder(Option<PathBuf>),
    /// A schema registry (every version of the input subjects).
    Registry {
        /// Its base URL, for messages.
        url: String,
        /// The client.
        lookup: &'a mut dyn SchemaLookup,
    },
}

impl std::fmt::Debug for SchemaInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaInput::Folder(dir) => f.debug_tuple("Folder").field(dir).finish(),
            SchemaInput::Registry { url, .. } => f
                .debug_struct("Registry")
                .field("url", url)
                .finish_non_exhaustive(),
        }
    }
}

/// Checks a topology file and the schemas it reads (a folder or a
/// registry). A topology with problems is still checked against the schemas
/// as far as it can be (values at fault replaced by their defaults), so that
/// every problem is reported at once, each once.
pub fn check(
    topology: &Path,
    input: SchemaInput<'_>,
    key: HashKey,
    opts: CheckOptions,
) -> CheckReport {
    let mut findings = Vec::new();
    let (t, problems) = Topology::load_lenient(topology);
    let location = match &input {
        SchemaInput::Folder(Some(dir)) => dir.display().to_string(),
        SchemaInput::Folder(None) => t.as_ref().map_or_else(
            || "avro".to_owned(),
            |t| t.spec.schemas.folder.display().to_string(),
        ),
        SchemaInput::Registry { url, .. } => url.clone(),
    };
    let registry = match &input {
        SchemaInput::Registry { url, .. } => Some(url.clone()),
        SchemaInput::Folder(_) => None,
    };
    findings.extend(topology_findings(topology, &problems));
    let usable =
        t.and_then(|t| for_schemas(t, &problems, matches!(input, SchemaInput::Folder(None))));
    let Some(t) = usable else {
        findings.push(Finding {
            severity: Severity::Note,
            code: "schemas_not_checked",
            file: location.clone(),
            path: String::new(),
            message: "not checked: reading schemas needs the topology's input topics, subject naming and schema folder"
                .to_owned(),
            event_types: Vec::new(),
            place: None,
            schemas: Vec::new(),
        });
        let mut r = report(topology, &location, Counts::default(), findings, opts);
        r.registry = registry;
        return r;
    };
    let schemas = match input {
        SchemaInput::Folder(dir) => {
            Schemas::from_folder(&t, &dir.unwrap_or_else(|| t.spec.schemas.folder.clone()))
        }
        SchemaInput::Registry { url, lookup } => {
            Schemas::from_registry(&t, &url, lookup).map_err(|e| {
                vec![Finding::error(
                    "registry",
                    url.clone(),
                    "",
                    format!("the input subjects cannot be read: {e}"),
                )]
            })
        }
    };
    let mut counts = Counts::default();
    match schemas {
        Err(found) => findings.extend(found),
        Ok(s) => {
            let (inspected, bad) = inspect_all(&t.engine, &s.versions);
            let (found, fields) = check_events(&s, &inspected, &bad, key, opts);
            findings.extend(found);
            findings.extend(
                topology_against(&t, &s.catalogue)
                    .into_iter()
                    .filter(|f| !covered(&problems, &f.path)),
            );
            findings.extend(override_findings(&t, &inspected));
            counts = Counts {
                event_types: s.event_types(),
                versions: s.versions.len(),
                fields,
            };
        }
    }
    let mut r = report(topology, &location, counts, findings, opts);
    r.registry = registry;
    r
}

/// The topology's own problems as findings.
pub fn topology_findings(file: &Path, problems: &[Problem]) -> Vec<Finding> {
    problems
        .iter()
        .map(|p| Finding {
            place: p.place,
            ..Finding::error(
                "topology",
                file.display().to_string(),
                &p.path,
                p.message.clone(),
            )
        })
        .collect()
}

/// True when a finding at `path` follows from a topology problem already
/// reported (at the path or above it): it is reported once.
pub fn covered(problems: &[Problem], path: &str) -> bool {
    problems.iter().any(|p| {
        path == p.path
            || path
                .strip_prefix(p.path.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// A topology with problems, made fit to read schemas with: a subject
/// template or subject at fault is replaced by the default naming (it
/// would make every event type look unknown). `None` when schemas cannot be
/// read with it at all (no input topic; a schema folder at fault when the
/// folder is the topology's).
pub fn for_schemas(
    mut t: Topology,
    problems: &[Problem],
    folder_from_topology: bool,
) -> Option<Topology> {
    if problems.is_empty() {
        return Some(t);
    }
    let at = |prefix: &str| {
        problems.iter().any(|p| {
            p.path == prefix
                || p.path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    };
    if t.spec.input.names().is_empty() || (folder_from_topology && at("schemas.folder")) {
        return None;
    }
    let engine = Arc::make_mut(&mut t.engine);
    if at("schemas.subject_template") {
        engine.subjects.template = DEFAULT_SUBJECT_TEMPLATE.to_owned();
    }
    let bad: Vec<String> = engine
        .subjects
        .overrides
        .keys()
        .filter(|e| at(&format!("event_types.{e}.subject")))
        .cloned()
        .collect();
    for e in bad {
        engine.subjects.overrides.remove(&e);
    }
    Some(t)
}

/// What the topology names that the schemas do not have, as findings
/// ([`crate::config::schemas::check`]: errors and warnings).
pub fn topology_against(t: &Topology, catalogue: &Catalogue) -> Vec<Finding> {
    let found = config::schemas::check(t, catalogue);
    let as_finding = |severity, code, p: crate::config::Problem| Finding {
        severity,
        code,
        file: t.file.display().to_string(),
        path: p.path,
        message: p.message,
        event_types: Vec::new(),
        place: p.place,
        schemas: Vec::new(),
    };
    found
        .errors
        .into_iter()
        .map(|p| as_finding(Severity::Error, "topology", p))
        .chain(
            found
                .warnings
                .into_iter()
                .map(|p| as_finding(Severity::Warning, "unused_tag", p)),
        )
        .collect()
}

/// Each `classification.overrides` entry that names a field, with what it
/// changed (info findings on the topology file). Overrides that match
/// nothing or would lower a tier are errors of [`topology_against`].
pub fn override_findings(t: &Topology, inspected: &[Inspected]) -> Vec<Finding> {
    override_effects(&t.engine.rules, inspected)
        .into_iter()
        .filter(|e| !e.uses.is_empty())
        .map(|e| {
            let mut types: Vec<String> = e.uses.iter().map(|u| u.event_type.clone()).collect();
            types.dedup();
            let key = e.key();
            Finding {
                severity: Severity::Info,
                code: "override",
                file: t.file.display().to_string(),
                place: t.place(&key),
                path: key,
                message: format!("tier floor {}: {}", e.tier, e.summary()),
                event_types: types,
                schemas: Vec::new(),
            }
        })
        .collect()
}

/// The file registry over `dir` for the topology, or every file that cannot
/// be used ([`file::load`] reports them all at once).
///
/// # Errors
/// Findings naming each bad file: `schema_folder` for a folder (or its
/// envelope) that is missing or cannot be listed, `invalid_schema` for a
/// file that cannot be read or used.
pub fn load_schemas(t: &Topology, dir: &Path) -> Result<FileRegistry, Vec<Finding>> {
    file::load(dir, &t.engine.subjects, &t.spec.input.names()).map_err(|e| {
        e.problems
            .into_iter()
            .map(|p| {
                let (code, path, message) = match p {
                    FileRegistryError::Io { path, source } => {
                        ("schema_folder", path, format!("cannot be read: {source}"))
                    }
                    FileRegistryError::Unreadable { path, source } => {
                        ("invalid_schema", path, format!("cannot be read: {source}"))
                    }
                    FileRegistryError::Bad { path, message } => ("invalid_schema", path, message),
                };
                Finding::error(code, path.display().to_string(), "", message)
            })
            .collect()
    })
}

/// Checks compiled schema versions against a topology: lists the versions
/// that do not compile (`bad`), fields that fall to the fail-closed default,
/// fields classified by tags and unmapped tags, and what the hash key
/// setting means for them. Returns the findings (not yet sorted or made
/// strict) and how many field paths were seen.
pub fn check_events(
    schemas: &Schemas,
    inspected: &[Inspected],
    bad: &[(SchemaSource, SchemaProblem)],
    key: HashKey,
    opts: CheckOptions,
) -> (Vec<Finding>, usize) {
    let mut findings = findings_of(inspected, bad, key, opts);
    let fields = inspected.iter().map(|i| i.view.fields.len()).sum();
    if schemas.versions.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "no_event_types",
            file: schemas.location.clone(),
            path: String::new(),
            message: format!("{} holds no event type schema", schemas.source()),
            event_types: Vec::new(),
            place: None,
            schemas: Vec::new(),
        });
    }
    (findings, fields)
}

/// The findings of compiled schema versions and of those that do not
/// compile; the same finding in several files' event types or several
/// subject versions is one finding naming them all.
pub fn findings_of(
    inspected: &[Inspected],
    bad: &[(SchemaSource, SchemaProblem)],
    key: HashKey,
    opts: CheckOptions,
) -> Vec<Finding> {
    // (severity, code, file, path, message) -> (event types, subject versions)
    type Key = (Severity, &'static str, String, String, String);
    type Seen = (Vec<String>, Vec<SubjectVersion>);
    let mut grouped: BTreeMap<Key, Seen> = BTreeMap::new();
    let mut add = |k: Key, source: &SchemaSource| {
        let e = grouped.entry(k).or_default();
        e.0.push(source.event_type.clone());
        e.1.extend(source.refs().iter().cloned());
    };
    for (source, p) in bad {
        let (file, path) = source.problem_at(p);
        add(
            (
                Severity::Error,
                "invalid_schema",
                file,
                path,
                p.message.clone(),
            ),
            source,
        );
    }
    let mut hashing = std::collections::BTreeSet::new();
    for i in inspected {
        if i.schema.has_hash() {
            hashing.insert(i.source.event_type.clone());
        }
        for f in &i.view.fields {
            let file = i.source.file_for(&f.path);
            if let Some((severity, code, message)) = provenance_finding(f, opts) {
                add(
                    (severity, code, file.clone(), f.path.clone(), message),
                    &i.source,
                );
            }
            if !f.unmapped_tags.is_empty() {
                add(
                    (
                        Severity::Warning,
                        "unmapped_tag",
                        file,
                        f.path.clone(),
                        format!(
                            "confluent:tags {} not in the topology's classification.tags: adds nothing",
                            f.unmapped_tags.join(", ")
                        ),
                    ),
                    &i.source,
                );
            }
        }
    }
    let mut findings: Vec<Finding> = grouped
        .into_iter()
        .map(
            |((severity, code, file, path, message), (mut types, mut refs))| {
                types.sort();
                types.dedup();
                refs.sort();
                refs.dedup();
                Finding {
                    severity,
                    code,
                    file,
                    path,
                    message,
                    event_types: types,
                    place: None,
                    schemas: refs,
                }
            },
        )
        .collect();
    let env = |severity, message: String| Finding {
        severity,
        code: "hash_key",
        file: "<environment>".to_owned(),
        path: "PRIVACY_ROUTER_HASH_KEY".to_owned(),
        message,
        event_types: Vec::new(),
        place: None,
        schemas: Vec::new(),
    };
    let hashing = hashing.len();
    match key {
        HashKey::Missing if hashing > 0 => findings.push(env(
            Severity::Note,
            format!(
                "not set; {hashing} event type(s) ask for \"redact\": \"hash\", so run, demo and replay need it (check does not)"
            ),
        )),
        HashKey::TooShort => findings.push(env(
            Severity::Warning,
            format!("is set but shorter than {MIN_KEY_LEN} bytes: run, demo and replay would refuse it"),
        )),
        _ => {}
    }
    findings
}

/// What a field's provenance is worth reporting: fail-closed fields and
/// fields whose tier came from tags.
fn provenance_finding(
    f: &super::FieldView,
    opts: CheckOptions,
) -> Option<(Severity, &'static str, String)> {
    // What the schema says; an override that raised it is listed apart.
    let tier = f.schema_tier();
    Some(match &f.provenance {
        Provenance::FailClosed => (
            if opts.allow_fail_closed {
                Severity::Warning
            } else {
                Severity::Error
            },
            "fail_closed_field",
            "no \"privacy\" label, no mapped tag and no default from its own record: \
             falls to the fail-closed default (restricted); label it"
                .to_owned(),
        ),
        Provenance::Tag { tags } => (
            Severity::Info,
            "tag_classified_field",
            match f.label {
                Some(l) => format!(
                    "tier {tier} from confluent:tags {}, stricter than its \"privacy\" label {l}",
                    tags.join(", ")
                ),
                None => format!(
                    "tier {tier} from confluent:tags {} (no \"privacy\" label)",
                    tags.join(", ")
                ),
            },
        ),
        Provenance::LabelAndTag { tags } => (
            Severity::Info,
            "tag_classified_field",
            format!(
                "tier {tier} from its \"privacy\" label and confluent:tags {} (they agree)",
                tags.join(", ")
            ),
        ),
        Provenance::Label | Provenance::RecordDefault => return None,
    })
}

/// Sorts the findings, applies `--strict` and counts.
pub fn report(
    topology: &Path,
    schemas: &str,
    counts: Counts,
    mut findings: Vec<Finding>,
    opts: CheckOptions,
) -> CheckReport {
    if opts.strict {
        for f in &mut findings {
            if f.severity == Severity::Warning {
                f.severity = Severity::Error;
            }
        }
    }
    findings.sort_by(|a, b| {
        (
            a.severity, &a.file, a.place, &a.path, a.code, &a.message, &a.schemas,
        )
            .cmp(&(
                b.severity, &b.file, b.place, &b.path, b.code, &b.message, &b.schemas,
            ))
    });
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    CheckReport {
        ok: errors == 0,
        topology: topology.display().to_string(),
        schemas: schemas.to_owned(),
        registry: None,
        event_types: counts.event_types,
        schema_versions: counts.versions,
        fields: counts.fields,
        errors,
        warnings,
        findings,
        candidate: None,
    }
}

/// `subject S version 2 (id 7)`, or the first of several `and 3 more`.
fn refs_text(refs: &[SubjectVersion]) -> Option<String> {
    match refs {
        [] => None,
        [one] => Some(one.to_string()),
        [first, rest @ ..] => Some(format!("{first} and {} more", rest.len())),
    }
}

impl CheckReport {
    /// Human-readable: one line per finding, then the verdict.
    pub fn text(&self) -> String {
        let mut s = String::new();
        match &self.candidate {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "privacy-router check: topology {}, schema {} for subject {} against the registry at {} ({} field paths)",
                    self.topology, c.file, c.subject, c.registry, self.fields
                );
                s.push_str(&c.text());
            }
            None => {
                let what = if self.registry.is_some() {
                    "registry"
                } else {
                    "schemas"
                };
                let _ = writeln!(
                    s,
                    "privacy-router check: topology {}, {what} {} ({} event types, {} schema versions, {} field paths)",
                    self.topology, self.schemas, self.event_types, self.schema_versions, self.fields
                );
            }
        }
        for f in &self.findings {
            let _ = write!(s, "{}: ", f.severity.as_str());
            if !f.file.is_empty() {
                match f.place {
                    Some(at) => {
                        let _ = write!(s, "{}:{at}: ", f.file);
                    }
                    None => {
                        let _ = write!(s, "{}: ", f.file);
                    }
                }
            }
            if let Some(refs) = refs_text(&f.schemas) {
                let _ = write!(s, "{refs}: ");
            }
            if !f.path.is_empty() {
                let _ = write!(s, "{}: ", f.path);
            }
            s.push_str(&f.message);
            match f.event_types.as_slice() {
                [] => {}
                [one] => {
                    let _ = write!(s, " [{one}]");
                }
                many if many.len() <= 3 => {
                    let _ = write!(s, " [{}]", many.join(", "));
                }
                many => {
                    let _ = write!(s, " [{} and {} more]", many[..2].join(", "), many.len() - 2);
                }
            }
            s.push('\n');
        }
        let fail_closed = self
            .findings
            .iter()
            .any(|f| f.code == "fail_closed_field" && f.severity == Severity::Error);
        if fail_closed {
            s.push_str(
                "hint: give each field that falls to the fail-closed default a \"privacy\" label (or its record \
                 a default); --allow-fail-closed accepts them as restricted\n",
            );
        }
        let _ = writeln!(
            s,
            "{}: {} error(s), {} warning(s)",
            if self.ok { "OK" } else { "FAILED" },
            self.errors,
            self.warnings
        );
        s
    }

    /// The report as pretty JSON, for CI tools.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, payload: serde_json::Value) -> SchemaSource {
        let envelope: serde_json::Value =
            serde_json::from_str(include_str!("../../avro/envelope.avsc")).unwrap();
        let (_, schema) = file::compose(&envelope, event_type, payload).unwrap();
        let domain = event_type.split('.').next().unwrap();
        SchemaSource {
            version: 1,
            event_type: event_type.to_owned(),
            id: Some(1),
            subjects: Vec::new(),
            text: schema.to_string(),
            origin: super::super::Origin::Folder {
                dir: PathBuf::from("s"),
                payload: PathBuf::from(format!("s/events/{domain}/{event_type}.avsc")),
            },
        }
    }

    fn payload(fields: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"type": "record", "name": "Data", "namespace": "t", "fields": fields})
    }

    fn run(yaml: &str, events: &[SchemaSource], key: HashKey, opts: CheckOptions) -> CheckReport {
        let t = Topology::parse(Path::new("t.yaml"), yaml).unwrap();
        use crate::schema::SchemaLookup as _;
        let mut registry = crate::registry::MemoryRegistry::default();
        for e in events {
            registry
                .register(
                    &t.engine.subjects.subject("events.raw", &e.event_type),
                    &e.text,
                )
                .unwrap();
        }
        let catalogue = Catalogue::read(
            &mut registry,
            &t.engine.subjects,
            &t.spec.input.topics,
            "the folder s",
        )
        .unwrap();
        let schemas = Schemas {
            location: "s".to_owned(),
            registry: None,
            versions: events.to_vec(),
            catalogue,
        };
        let (inspected, bad) = inspect_all(&t.engine, &schemas.versions);
        let (mut found, fields) = check_events(&schemas, &inspected, &bad, key, opts);
        found.extend(topology_against(&t, &schemas.catalogue));
        found.extend(override_findings(&t, &inspected));
        report(
            Path::new("t.yaml"),
            "s",
            Counts {
                event_types: events.len(),
                versions: events.len(),
                fields,
            },
            found,
            opts,
        )
    }

    #[test]
    fn fail_closed_fields_are_errors_with_file_and_path() {
        let events = [event(
            "user.created",
            payload(serde_json::json!([
                {"name": "ok", "type": "string", "privacy": "public"},
                {"name": "nick", "type": "string"}
            ])),
        )];
        let r = run("", &events, HashKey::Usable, CheckOptions::default());
        assert!(!r.ok);
        assert_eq!(r.errors, 1);
        let f = &r.findings[0];
        assert_eq!(
            (f.severity, f.code, f.file.as_str(), f.path.as_str()),
            (
                Severity::Error,
                "fail_closed_field",
                "s/events/user/user.created.avsc",
                "data.nick"
            )
        );
        assert_eq!(f.event_types, ["user.created"]);
        let lenient = CheckOptions {
            allow_fail_closed: true,
            ..CheckOptions::default()
        };
        let r = run("", &events, HashKey::Usable, lenient);
        assert!(r.ok);
        assert_eq!(r.warnings, 1);
        let strict = CheckOptions {
            strict: true,
            ..lenient
        };
        assert!(!run("", &events, HashKey::Usable, strict).ok);
    }

    #[test]
    fn shared_envelope_problems_are_reported_once_for_every_event_type() {
        let p = payload(serde_json::json!([{"name": "x", "type": "long", "privacy": "public"}]));
        let mut events = vec![event("user.created", p.clone()), event("post.created", p)];
        for e in &mut events {
            e.text = e.text.replace(
                "\"privacy\":\"internal\",\"type\":\"string\"",
                "\"type\":\"string\"",
            );
        }
        let r = run("", &events, HashKey::Usable, CheckOptions::default());
        let f: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.code == "fail_closed_field")
            .collect();
        assert_eq!(f.len(), 1, "{:?}", r.findings);
        assert_eq!(f[0].file, "s/envelope.avsc");
        assert_eq!(f[0].path, "producer");
        assert_eq!(f[0].event_types, ["post.created", "user.created"]);
    }

    #[test]
    fn schema_errors_point_into_the_payload_file() {
        let events = [event(
            "user.created",
            payload(
                serde_json::json!([{"name": "x", "type": "long", "privacy": "public", "redact": "hash"}]),
            ),
        )];
        let r = run("", &events, HashKey::Usable, CheckOptions::default());
        let f = &r.findings[0];
        assert_eq!(f.code, "invalid_schema");
        assert_eq!(f.file, "s/events/user/user.created.avsc");
        assert_eq!(f.path, "fields.x");
    }

    #[test]
    fn warnings_notes_and_tags() {
        let events = [event(
            "user.created",
            payload(serde_json::json!([
                {"name": "a", "type": "string", "privacy": "public", "confluent:tags": ["PII", "NOPE"]},
                {"name": "b", "type": "string", "confluent:tags": ["INTERNAL"]}
            ])),
        )];
        let r = run(
            "event_types:\n  user.created_typo: {tiers: [restricted]}\nclassification:\n  tags: {PII: restricted, INTERNAL: internal, UNUSED: public}\n",
            &events,
            HashKey::Missing,
            CheckOptions::default(),
        );
        // A misspelt event type is an error: its restriction would lapse.
        assert!(!r.ok, "{}", r.text());
        let codes: Vec<(Severity, &str, &str)> = r
            .findings
            .iter()
            .map(|f| (f.severity, f.code, f.path.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                (Severity::Error, "topology", "event_types.user.created_typo"),
                (Severity::Warning, "unmapped_tag", "data.a"),
                (
                    Severity::Warning,
                    "unused_tag",
                    "classification.tags.UNUSED"
                ),
                (Severity::Note, "hash_key", "PRIVACY_ROUTER_HASH_KEY"),
                (Severity::Info, "tag_classified_field", "data.a"),
                (Severity::Info, "tag_classified_field", "data.b"),
            ]
        );
        let text = r.text();
        assert!(
            text.contains("t.yaml:2:3: event_types.user.created_typo: no schema in the folder s defines the event type user.created_typo; did you mean user.created?"),
            "{text}"
        );
        assert!(text.contains("data.a: tier restricted from confluent:tags PII, stricter than its \"privacy\" label public"), "{text}");
        assert!(
            text.contains(
                "data.b: tier internal from confluent:tags INTERNAL (no \"privacy\" label)"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("FAILED: 1 error(s), 2 warning(s)\n"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(json["findings"][0]["severity"], "error");
        assert_eq!(json["findings"][1]["severity"], "warning");
        assert_eq!(HashKey::of(Some("short")), HashKey::TooShort);
        assert_eq!(HashKey::of(Some("")), HashKey::Missing);
    }
}
