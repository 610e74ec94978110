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

use serde::Serialize;

use super::{compile_event, event_view, field_file, Provenance, SchemaProblem};
use crate::config::yaml::Place;
use crate::config::{self, Topology};
use crate::project::MIN_KEY_LEN;
use crate::registry::file::{self, EventSchema, FileRegistry, FileRegistryError};
use crate::registry::Catalogue;

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
    /// A stable code: `topology`, `schema_folder`, `invalid_schema`,
    /// `fail_closed_field`, `unmapped_tag`, `tier_limit_without_schema`,
    /// `hash_key`, `tag_classified_field`, `no_event_types`,
    /// `schemas_not_checked`.
    pub code: &'static str,
    /// The file to fix (or `<environment>`).
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
    /// The schema folder.
    pub schemas: String,
    /// Event types found in the schema folder.
    pub event_types: usize,
    /// Field paths across all event types.
    pub fields: usize,
    /// Errors.
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// Everything found: errors first, then by file and path.
    pub findings: Vec<Finding>,
}

/// Checks a topology file and the schema folder it reads.
///
/// Reads files; everything after loading is [`check_events`].
pub fn check(topology: &Path, schemas: &Path, key: HashKey, opts: CheckOptions) -> CheckReport {
    let mut findings = Vec::new();
    let mut counts = (0, 0);
    match Topology::load(topology) {
        Err(e) => {
            for p in e.problems {
                findings.push(Finding {
                    place: p.place,
                    ..error("topology", &e.file, &p.path, p.message)
                });
            }
            findings.push(Finding {
                severity: Severity::Note,
                code: "schemas_not_checked",
                file: schemas.display().to_string(),
                path: String::new(),
                message: "not checked: reading schemas needs a valid topology (tag map, subjects)"
                    .to_owned(),
                event_types: Vec::new(),
                place: None,
            });
        }
        Ok(t) => match load_schemas(&t, schemas) {
            Err(found) => findings.extend(found),
            Ok(reg) => {
                let (found, fields) = check_events(&t, schemas, &reg.events, key, opts);
                findings.extend(found);
                counts = (reg.events.len(), fields);
                match Catalogue::read(
                    &mut reg.registry.clone(),
                    &t.engine.subjects,
                    &t.spec.input.topics,
                    format!("the folder {}", schemas.display()),
                ) {
                    Ok(catalogue) => findings.extend(topology_against(&t, &catalogue)),
                    Err(e) => findings.push(error("schema_folder", schemas, "", e.to_string())),
                }
            }
        },
    }
    report(topology, schemas, counts, findings, opts)
}

fn error(code: &'static str, file: &Path, path: &str, message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        code,
        file: file.display().to_string(),
        path: path.to_owned(),
        message,
        event_types: Vec::new(),
        place: None,
    }
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

/// The file registry over `dir` for the topology, or every file that cannot
/// be read as JSON (all at once), or the first file that cannot be composed.
///
/// # Errors
/// Findings naming each bad file.
pub fn load_schemas(t: &Topology, dir: &Path) -> Result<FileRegistry, Vec<Finding>> {
    let mut files = Vec::new();
    if let Err(e) = avsc_files(dir, &mut files) {
        return Err(vec![error(
            "schema_folder",
            dir,
            "",
            format!("cannot be read: {e}"),
        )]);
    }
    files.sort();
    let bad: Vec<Finding> = files
        .iter()
        .filter_map(|f| {
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => {
                    return Some(error(
                        "invalid_schema",
                        f,
                        "",
                        format!("cannot be read: {e}"),
                    ))
                }
            };
            serde_json::from_str::<serde_json::Value>(&text)
                .err()
                .map(|e| error("invalid_schema", f, "", format!("not JSON: {e}")))
        })
        .collect();
    if !bad.is_empty() {
        return Err(bad);
    }
    file::load(dir, &t.engine.subjects, &t.spec.input.topics).map_err(|e| {
        vec![match e {
            FileRegistryError::Io { path, source } => error(
                "schema_folder",
                &path,
                "",
                format!("cannot be read: {source}"),
            ),
            FileRegistryError::Bad { path, message } => error("invalid_schema", &path, "", message),
        }]
    })
}

fn avsc_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            avsc_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks loaded event types against a validated topology: compiles each
/// with the engine's rules, lists fields that fall to the fail-closed
/// default, fields classified by tags and unmapped tags, and tier limits
/// without a schema. Returns the findings (not yet sorted or made strict)
/// and how many field paths were seen.
pub fn check_events(
    t: &Topology,
    schemas_dir: &Path,
    events: &[EventSchema],
    key: HashKey,
    opts: CheckOptions,
) -> (Vec<Finding>, usize) {
    // (severity, code, file, path, message) -> event types
    type Key = (Severity, &'static str, PathBuf, String, String);
    let mut grouped: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    let mut add = |k: Key, event_type: &str| {
        grouped.entry(k).or_default().push(event_type.to_owned());
    };
    let mut fields = 0;
    let mut hashing = 0;
    for e in events {
        let schema = match compile_event(&e.text, &t.engine) {
            Ok(s) => s,
            Err(p) => {
                let (file, path) = problem_location(schemas_dir, e, &p);
                add(
                    (Severity::Error, "invalid_schema", file, path, p.message),
                    &e.event_type,
                );
                continue;
            }
        };
        hashing += usize::from(schema.has_hash());
        let view = event_view(e, &schema, &t.engine);
        fields += view.fields.len();
        for f in &view.fields {
            let file = field_file(schemas_dir, e, &f.path);
            if let Some((severity, code, message)) = provenance_finding(f, opts) {
                add(
                    (severity, code, file.clone(), f.path.clone(), message),
                    &e.event_type,
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
                    &e.event_type,
                );
            }
        }
    }
    let mut findings: Vec<Finding> = grouped
        .into_iter()
        .map(|((severity, code, file, path, message), mut types)| {
            types.sort();
            types.dedup();
            Finding {
                severity,
                code,
                file: file.display().to_string(),
                path,
                message,
                event_types: types,
                place: None,
            }
        })
        .collect();
    if events.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "no_event_types",
            file: schemas_dir.display().to_string(),
            path: String::new(),
            message: "holds no event type schema".to_owned(),
            event_types: Vec::new(),
            place: None,
        });
    }
    let env = |severity, message: String| Finding {
        severity,
        code: "hash_key",
        file: "<environment>".to_owned(),
        path: "PRIVACY_ROUTER_HASH_KEY".to_owned(),
        message,
        event_types: Vec::new(),
        place: None,
    };
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
    (findings, fields)
}

/// What a field's provenance is worth reporting: fail-closed fields and
/// fields whose tier came from tags.
fn provenance_finding(
    f: &super::FieldView,
    opts: CheckOptions,
) -> Option<(Severity, &'static str, String)> {
    let tier = f.tier;
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

/// Where a schema problem is to be fixed: problems inside `data` in the
/// payload file (path relative to it), problems in other envelope fields in
/// the envelope file, the rest in the event type's file.
fn problem_location(dir: &Path, e: &EventSchema, p: &SchemaProblem) -> (PathBuf, String) {
    if let Some(rest) = p.path.strip_prefix("fields.data") {
        if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            let path = if rest.is_empty() { "<root>" } else { rest };
            return (e.path.clone(), path.to_owned());
        }
    }
    if p.path.starts_with("fields.") {
        return (dir.join("envelope.avsc"), p.path.clone());
    }
    (e.path.clone(), p.path.clone())
}

/// Sorts the findings, applies `--strict` and counts.
pub fn report(
    topology: &Path,
    schemas: &Path,
    (event_types, fields): (usize, usize),
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
        (a.severity, &a.file, a.place, &a.path, a.code, &a.message)
            .cmp(&(b.severity, &b.file, b.place, &b.path, b.code, &b.message))
    });
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    CheckReport {
        ok: errors == 0,
        topology: topology.display().to_string(),
        schemas: schemas.display().to_string(),
        event_types,
        fields,
        errors,
        warnings,
        findings,
    }
}

impl CheckReport {
    /// Human-readable: one line per finding, then the verdict.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "privacy-router check: topology {}, schemas {} ({} event types, {} field paths)",
            self.topology, self.schemas, self.event_types, self.fields
        );
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
        serde_json::to_string_pretty(self).expect("the report serialises") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, payload: serde_json::Value) -> EventSchema {
        let envelope: serde_json::Value =
            serde_json::from_str(include_str!("../../avro/envelope.avsc")).unwrap();
        let (fullname, schema) = file::compose(&envelope, event_type, payload).unwrap();
        let domain = event_type.split('.').next().unwrap();
        EventSchema {
            version: 1,
            event_type: event_type.to_owned(),
            fullname,
            path: PathBuf::from(format!("s/events/{domain}/{event_type}.avsc")),
            text: schema.to_string(),
            id: 1,
        }
    }

    fn payload(fields: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"type": "record", "name": "Data", "namespace": "t", "fields": fields})
    }

    fn run(yaml: &str, events: &[EventSchema], key: HashKey, opts: CheckOptions) -> CheckReport {
        let t = Topology::parse(Path::new("t.yaml"), yaml).unwrap();
        let (mut found, fields) = check_events(&t, Path::new("s"), events, key, opts);
        use crate::registry::SchemaLookup as _;
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
        found.extend(topology_against(&t, &catalogue));
        report(
            Path::new("t.yaml"),
            Path::new("s"),
            (events.len(), fields),
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
