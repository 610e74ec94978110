//! `privacy-router check --schema FILE --subject SUBJECT --registry-url URL`:
//! a producer's CI checks a new writer schema before registering it.
//!
//! The schema is compiled with the topology's rules (fields that fall to the
//! fail-closed default and bad annotations are listed, as `check` lists them
//! for registered schemas) and must be an event envelope. Then, for each tier
//! its event type reaches, the derived schema the processor would register
//! under `<tier topic>-<record full name>` is put to the registry's
//! compatibility endpoint, and compared with the derived schema of the
//! subject's current latest version: what the tier would **gain** and
//! **lose** (field paths added or removed, and why: a new field, a removed
//! one, a tier change), computed from the compiled schemas alone — no
//! payload is involved. A derived schema the registry would refuse is an
//! error: once the writer schema is registered, its events would be
//! dead-lettered as `derived_schema_rejected`.
//!
//! The registry is reached through [`CandidateRegistry`], so the check runs
//! against the real client ([`ConfluentRegistry`]) or a test double.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::check::{
    findings_of, for_schemas, override_findings, report, topology_findings, CheckOptions,
    CheckReport, Counts, Finding, HashKey, Severity,
};
use super::{compile_event, event_view, EventView, FieldView, Inspected, Origin, Reach};
use super::{SchemaSource, SubjectVersion};
use crate::config::{OutputFormat, Topology};
use crate::project::derived_schema;
use crate::record::Tier;
use crate::registry::confluent::{Compatibility, ConfluentRegistry};
use crate::schema::{derived_subject, LookupError, SchemaLookup};

/// What the candidate check asks a registry: the subject's versions (through
/// [`SchemaLookup`]) and whether a subject would accept a schema.
pub trait CandidateRegistry: SchemaLookup {
    /// Whether `subject` would accept `schema` as its next version (a
    /// subject without versions accepts anything).
    ///
    /// # Errors
    /// [`LookupError`] when the registry cannot answer.
    fn check_compatibility(
        &mut self,
        subject: &str,
        schema: &str,
    ) -> Result<Compatibility, LookupError>;
}

impl CandidateRegistry for ConfluentRegistry {
    fn check_compatibility(
        &mut self,
        subject: &str,
        schema: &str,
    ) -> Result<Compatibility, LookupError> {
        self.compatibility_blocking(subject, schema)
    }
}

/// The schema to check and the subject it is meant for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The writer schema file (`.avsc`, the whole envelope).
    pub file: PathBuf,
    /// The input subject the producer would register it under.
    pub subject: String,
}

/// One field a tier would gain, lose or see change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// Value path (`data.email`).
    pub path: String,
    /// Its type (in the candidate, or in the latest version for a loss).
    pub type_name: String,
    /// Why: `new field`, `removed from the schema`, `tier restricted ->
    /// public`, `hashed -> kept`, …
    pub why: String,
}

/// What one tier would get from the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierPreview {
    /// The tier.
    pub tier: Tier,
    /// Its topic.
    pub topic: String,
    /// False when the topology limits the event type to other tiers.
    pub routed: bool,
    /// The subject the derived schema is registered under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Field paths the tier's record would have that it has not now.
    pub gains: Vec<FieldChange>,
    /// Field paths the tier's record has now and would not have.
    pub losses: Vec<FieldChange>,
    /// Field paths it keeps with another treatment or type.
    pub changes: Vec<FieldChange>,
    /// The registry's verdict on the derived schema; `None` when not asked
    /// (not routed, JSON output, or the registry did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatible: Option<bool>,
    /// The registry's reasons, when it gives them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
}

/// What `check --schema` found out about the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CandidateReport {
    /// The schema file.
    pub file: String,
    /// The input subject.
    pub subject: String,
    /// The registry's URL.
    pub registry: String,
    /// The event type the subject belongs to, if it is an input subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The subject's latest version now; `None` when it has none yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<SubjectVersion>,
    /// The registry's verdict on the schema under its own subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatible: Option<bool>,
    /// The registry's reasons, when it gives them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    /// Per tier, what it would gain and lose (empty when the schema could
    /// not be compiled or the subject is not an input subject).
    pub tiers: Vec<TierPreview>,
}

fn verdict(compatible: Option<bool>, messages: &[String], not_asked: &str) -> String {
    let reasons = if messages.is_empty() {
        String::new()
    } else {
        format!(": {}", messages.join("; "))
    };
    match compatible {
        Some(true) => "compatible".to_owned(),
        Some(false) => format!("INCOMPATIBLE{reasons}"),
        None => not_asked.to_owned(),
    }
}

impl CandidateReport {
    /// The per-tier preview as text lines (the findings follow it).
    pub fn text(&self) -> String {
        let mut s = String::new();
        if let Some(e) = &self.event_type {
            let latest = match &self.latest {
                Some(l) => format!("latest now: {l}"),
                None => "the subject has no version yet".to_owned(),
            };
            let _ = writeln!(s, "event type {e}; {latest}");
        }
        if self.compatible.is_some() {
            let _ = writeln!(
                s,
                "writer schema under {}: {}",
                self.subject,
                verdict(self.compatible, &self.messages, "")
            );
        }
        let line = |s: &mut String, label: &str, list: &[FieldChange]| {
            for c in list {
                let _ = writeln!(s, "  {label} {} ({}): {}", c.path, c.type_name, c.why);
            }
        };
        for t in &self.tiers {
            if !t.routed {
                let _ = writeln!(
                    s,
                    "{} ({}): not routed (the topology limits the event type to other tiers)",
                    t.tier, t.topic
                );
                continue;
            }
            let _ = writeln!(
                s,
                "{} ({}, subject {}):",
                t.tier,
                t.topic,
                t.subject.as_deref().unwrap_or("-")
            );
            if t.gains.is_empty() && t.losses.is_empty() && t.changes.is_empty() {
                let _ = writeln!(s, "  no change");
            }
            line(&mut s, "gains", &t.gains);
            line(&mut s, "loses", &t.losses);
            line(&mut s, "changes", &t.changes);
            let _ = writeln!(
                s,
                "  registry: {}",
                verdict(
                    t.compatible,
                    &t.messages,
                    "not asked (no derived schema is registered for JSON output)"
                )
            );
        }
        s
    }
}

/// The fields a tier's record holds, with what it does to each.
fn present(v: &EventView, tier: Tier) -> BTreeMap<&str, (&FieldView, Reach)> {
    v.fields
        .iter()
        .filter_map(|f| {
            let r = f.reach[tier.index()];
            matches!(r, Reach::Kept | Reach::Hashed).then_some((f.path.as_str(), (f, r)))
        })
        .collect()
}

/// What tier `tier` gains, loses and sees change going from `old` (the
/// subject's latest version, if any) to `new`.
pub fn diff(
    old: Option<&EventView>,
    new: &EventView,
    tier: Tier,
) -> (Vec<FieldChange>, Vec<FieldChange>, Vec<FieldChange>) {
    let before = old.map(|o| present(o, tier)).unwrap_or_default();
    let after = present(new, tier);
    let mut gains = Vec::new();
    let mut losses = Vec::new();
    let mut changes = Vec::new();
    for f in &new.fields {
        let Some((_, reach)) = after.get(f.path.as_str()) else {
            continue;
        };
        match before.get(f.path.as_str()) {
            None => {
                let why = match old.map(|o| o.field(&f.path)) {
                    None => format!("new subject; tier {}, {}", f.tier, reach.as_str()),
                    Some(None) => format!("new field; tier {}, {}", f.tier, reach.as_str()),
                    Some(Some(was)) => moved(was, f, reach.as_str()),
                };
                gains.push(FieldChange {
                    path: f.path.clone(),
                    type_name: f.type_name.clone(),
                    why,
                });
            }
            Some((was, was_reach)) => {
                let mut what = Vec::new();
                if was_reach != reach {
                    what.push(format!("{} -> {}", was_reach.as_str(), reach.as_str()));
                }
                if was.type_name != f.type_name {
                    what.push(format!("type {} -> {}", was.type_name, f.type_name));
                }
                if !what.is_empty() {
                    changes.push(FieldChange {
                        path: f.path.clone(),
                        type_name: f.type_name.clone(),
                        why: what.join("; "),
                    });
                }
            }
        }
    }
    if let Some(o) = old {
        for f in &o.fields {
            if !before.contains_key(f.path.as_str()) || after.contains_key(f.path.as_str()) {
                continue;
            }
            let why = match new.field(&f.path) {
                None => "removed from the schema".to_owned(),
                Some(is) => moved(f, is, "removed"),
            };
            losses.push(FieldChange {
                path: f.path.clone(),
                type_name: f.type_name.clone(),
                why,
            });
        }
    }
    (gains, losses, changes)
}

/// Why a field that both versions have reaches a tier in one and not the
/// other.
fn moved(was: &FieldView, is: &FieldView, now: &str) -> String {
    let source = |f: &FieldView| match f.raised_from {
        Some(_) => " (override)".to_owned(),
        None => String::new(),
    };
    if was.tier != is.tier {
        format!(
            "tier {}{} -> {}{}, {now}",
            was.tier,
            source(was),
            is.tier,
            source(is)
        )
    } else if was.path_tier != is.path_tier {
        format!(
            "a containing field's tier {} -> {}, {now}",
            was.path_tier, is.path_tier
        )
    } else {
        format!("its treatment changed, {now}")
    }
}

/// The subject's latest version: (version, id, text), or `None` when it has
/// none.
fn latest(
    registry: &mut dyn CandidateRegistry,
    subject: &str,
) -> Result<Option<(u32, u32, String)>, LookupError> {
    let versions = match registry.versions(subject) {
        Ok(v) => v,
        Err(LookupError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(v) = versions.last().copied() else {
        return Ok(None);
    };
    let (id, text) = registry.version(subject, v)?;
    Ok(Some((v, id, text.to_string())))
}

fn registry_error(url: &str, what: &str, e: &LookupError) -> Finding {
    Finding::error("registry", url.to_owned(), "", format!("{what}: {e}"))
}

/// Checks `candidate` against the topology and the registry at `url` (see
/// the module docs). Every problem is a finding; errors make it fail.
pub fn check_candidate(
    topology: &Path,
    candidate: &Candidate,
    url: &str,
    registry: &mut dyn CandidateRegistry,
    key: HashKey,
    opts: CheckOptions,
) -> CheckReport {
    let file = candidate.file.display().to_string();
    let subject = candidate.subject.as_str();
    let mut findings = Vec::new();
    let mut rep = CandidateReport {
        file: file.clone(),
        subject: subject.to_owned(),
        registry: url.to_owned(),
        event_type: None,
        latest: None,
        compatible: None,
        messages: Vec::new(),
        tiers: Vec::new(),
    };
    let (t, problems) = Topology::load_lenient(topology);
    findings.extend(topology_findings(topology, &problems));
    let text = match std::fs::read_to_string(&candidate.file) {
        Ok(text) => Some(text),
        Err(e) => {
            findings.push(Finding::error(
                "invalid_schema",
                file.clone(),
                "",
                format!("cannot be read: {e}"),
            ));
            None
        }
    };
    let t = t.and_then(|t| for_schemas(t, &problems, false));
    let fields = match (t, text) {
        (Some(t), Some(text)) => assess(
            &t,
            candidate,
            &text,
            url,
            registry,
            key,
            opts,
            &mut rep,
            &mut findings,
        ),
        (None, _) => {
            findings.push(Finding {
                severity: Severity::Note,
                code: "schemas_not_checked",
                file: file.clone(),
                path: String::new(),
                message: "not checked: checking a schema needs the topology's input topics and subject naming".to_owned(),
                event_types: Vec::new(),
                place: None,
                schemas: Vec::new(),
            });
            0
        }
        (Some(_), None) => 0,
    };
    let mut r = report(
        topology,
        &file,
        Counts {
            event_types: usize::from(rep.event_type.is_some()),
            versions: 1,
            fields,
        },
        findings,
        opts,
    );
    r.registry = Some(url.to_owned());
    r.candidate = Some(rep);
    r
}

/// The checks that need a usable topology and the schema text; returns how
/// many field paths the candidate has.
#[allow(clippy::too_many_arguments)]
fn assess(
    t: &Topology,
    candidate: &Candidate,
    text: &str,
    url: &str,
    registry: &mut dyn CandidateRegistry,
    key: HashKey,
    opts: CheckOptions,
    rep: &mut CandidateReport,
    findings: &mut Vec<Finding>,
) -> usize {
    let file = candidate.file.display().to_string();
    let subject = candidate.subject.as_str();
    let event_type = t
        .spec
        .input
        .names()
        .iter()
        .find_map(|topic| t.engine.subjects.event_type_of(topic, subject));
    if event_type.is_none() {
        findings.push(Finding::error(
            "subject",
            "<command line>".to_owned(),
            "--subject",
            format!(
                "{subject} is not an input subject of {}: its subject naming ({}) gives no event type for it on the input topics {}",
                t.file.display(),
                t.engine.subjects.template,
                t.spec.input.names().join(", ")
            ),
        ));
    }
    rep.event_type.clone_from(&event_type);
    let schema = match compile_event(text, &t.engine) {
        Ok(s) => s,
        Err(p) => {
            findings.push(Finding {
                event_types: event_type.into_iter().collect(),
                ..Finding::error("invalid_schema", file, &p.path, p.message)
            });
            return 0;
        }
    };
    let Some(event_type) = event_type else {
        // Classification can still be checked; tiers and the registry need
        // the event type.
        let source = SchemaSource {
            event_type: subject.to_owned(),
            version: 1,
            id: None,
            subjects: Vec::new(),
            text: text.to_owned(),
            origin: Origin::File {
                file: candidate.file.clone(),
            },
        };
        let view = event_view(&source, &schema, &t.engine);
        let fields = view.fields.len();
        let inspected = [Inspected {
            source,
            schema,
            view,
        }];
        findings.extend(findings_of(&inspected, &[], key, opts));
        return fields;
    };

    let latest = match latest(registry, subject) {
        Ok(l) => l,
        Err(e) => {
            findings.push(registry_error(
                url,
                &format!("the versions of subject {subject} cannot be read"),
                &e,
            ));
            None
        }
    };
    let same_as_latest = latest.as_ref().is_some_and(|(_, _, old)| {
        serde_json::from_str::<serde_json::Value>(old).ok()
            == serde_json::from_str::<serde_json::Value>(text).ok()
    });
    let source = SchemaSource {
        event_type: event_type.clone(),
        version: match &latest {
            Some((v, _, _)) if same_as_latest => *v,
            Some((v, _, _)) => v + 1,
            None => 1,
        },
        id: latest
            .as_ref()
            .filter(|_| same_as_latest)
            .map(|(_, id, _)| *id),
        subjects: Vec::new(),
        text: text.to_owned(),
        origin: Origin::File {
            file: candidate.file.clone(),
        },
    };
    let old_view = latest.as_ref().and_then(|(version, id, old)| {
        rep.latest = Some(SubjectVersion {
            subject: subject.to_owned(),
            version: *version,
            id: *id,
        });
        let old_source = SchemaSource {
            event_type: event_type.clone(),
            version: *version,
            id: Some(*id),
            subjects: Vec::new(),
            text: old.clone(),
            origin: Origin::Registry {
                url: url.to_owned(),
            },
        };
        match compile_event(old, &t.engine) {
            Ok(s) => Some(event_view(&old_source, &s, &t.engine)),
            Err(p) => {
                findings.push(Finding {
                    severity: Severity::Note,
                    event_types: vec![event_type.clone()],
                    ..Finding::error(
                        "latest_not_compared",
                        url.to_owned(),
                        &p.path,
                        format!(
                            "subject {subject} version {version} (id {id}) does not compile with the topology's rules ({}): what each tier gains and loses is listed against nothing",
                            p.message
                        ),
                    )
                });
                None
            }
        }
    });
    let view = event_view(&source, &schema, &t.engine);
    let fields = view.fields.len();
    let inspected = Inspected {
        source,
        schema,
        view,
    };
    findings.extend(findings_of(
        std::slice::from_ref(&inspected),
        &[],
        key,
        opts,
    ));
    findings.extend(override_findings(t, std::slice::from_ref(&inspected)));
    for hit in inspected.schema.overridden() {
        if hit.override_tier < hit.schema_tier {
            let at = format!("classification.overrides.{}.{}", hit.record, hit.path);
            findings.push(Finding {
                place: t.place(&at),
                event_types: vec![event_type.clone()],
                ..Finding::error(
                    "override_lowers",
                    t.file.display().to_string(),
                    &at,
                    format!(
                        "would lower the field from {} (what {file} says) to {}: an override only raises a tier, so once this schema is registered the topology is refused at start-up",
                        hit.schema_tier, hit.override_tier
                    ),
                )
            });
        }
    }

    // The writer schema under its own subject.
    match registry.check_compatibility(subject, text) {
        Ok(c) => {
            if !c.compatible {
                findings.push(Finding {
                    event_types: vec![event_type.clone()],
                    ..Finding::error(
                        "incompatible_schema",
                        file.clone(),
                        "<root>",
                        format!(
                            "the registry at {url} would refuse it as the next version of subject {subject}{}",
                            reasons(&c.messages)
                        ),
                    )
                });
            }
            rep.compatible = Some(c.compatible);
            rep.messages = c.messages;
        }
        Err(e) => findings.push(registry_error(
            url,
            &format!("cannot check the schema against subject {subject}"),
            &e,
        )),
    }

    // Each tier's derived schema under its output subject.
    for tier in Tier::ALL {
        let topic = t.engine.topics.tiers[tier.index()].to_string();
        if !inspected.view.reaches[tier.index()] {
            rep.tiers.push(TierPreview {
                tier,
                topic,
                routed: false,
                subject: None,
                gains: Vec::new(),
                losses: Vec::new(),
                changes: Vec::new(),
                compatible: None,
                messages: Vec::new(),
            });
            continue;
        }
        let out_subject = derived_subject(&topic, &inspected.schema);
        let (gains, losses, changes) = diff(old_view.as_ref(), &inspected.view, tier);
        let (mut compatible, mut messages) = (None, Vec::new());
        if t.engine.format == OutputFormat::Avro {
            let derived = derived_schema(&inspected.schema, tier).to_string();
            match registry.check_compatibility(&out_subject, &derived) {
                Ok(c) => {
                    if !c.compatible {
                        findings.push(Finding {
                            event_types: vec![event_type.clone()],
                            ..Finding::error(
                                "derived_schema_incompatible",
                                file.clone(),
                                &format!("<derived {tier} schema>"),
                                format!(
                                    "the registry at {url} would refuse the derived {tier} schema as the next version of subject {out_subject}{}: once this schema is registered, its events would be dead-lettered as derived_schema_rejected (other event types keep flowing)",
                                    reasons(&c.messages)
                                ),
                            )
                        });
                    }
                    compatible = Some(c.compatible);
                    messages = c.messages;
                }
                Err(e) => findings.push(registry_error(
                    url,
                    &format!(
                        "cannot check the derived {tier} schema against subject {out_subject}"
                    ),
                    &e,
                )),
            }
        }
        rep.tiers.push(TierPreview {
            tier,
            topic,
            routed: true,
            subject: Some(out_subject),
            gains,
            losses,
            changes,
            compatible,
            messages,
        });
    }
    fields
}

fn reasons(messages: &[String]) -> String {
    if messages.is_empty() {
        String::new()
    } else {
        format!(" ({})", messages.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;
    use std::sync::Arc;

    /// A memory registry whose compatibility verdicts are given by a rule.
    struct Fake {
        registry: MemoryRegistry,
        refuse: Vec<String>,
        asked: Vec<String>,
    }

    impl SchemaLookup for Fake {
        fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError> {
            self.registry.schema_by_id(id)
        }
        fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError> {
            self.registry.latest(subject)
        }
        fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError> {
            self.registry.version(subject, version)
        }
        fn subjects(&mut self) -> Result<Vec<String>, LookupError> {
            SchemaLookup::subjects(&mut self.registry)
        }
        fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError> {
            self.registry.versions(subject)
        }
        fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError> {
            self.registry.register(subject, schema)
        }
    }

    impl CandidateRegistry for Fake {
        fn check_compatibility(
            &mut self,
            subject: &str,
            _schema: &str,
        ) -> Result<Compatibility, LookupError> {
            self.asked.push(subject.to_owned());
            let refused = self.refuse.iter().any(|s| s == subject);
            Ok(Compatibility {
                compatible: !refused,
                messages: if refused {
                    vec!["reader field x has no default".to_owned()]
                } else {
                    Vec::new()
                },
            })
        }
    }

    fn composed(fields: serde_json::Value) -> String {
        let envelope: serde_json::Value =
            serde_json::from_str(include_str!("../../avro/envelope.avsc")).unwrap();
        let payload = serde_json::json!({"type": "record", "name": "Data", "namespace": "t", "fields": fields});
        let (_, schema) =
            crate::registry::file::compose(&envelope, "user.created", payload).unwrap();
        schema.to_string()
    }

    const SUBJECT: &str = "events.raw-com.privacyrouter.events.user.UserCreated";

    fn run(
        old: Option<&str>,
        new: &str,
        refuse: &[&str],
        yaml: &str,
    ) -> (CheckReport, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("t.yaml");
        std::fs::write(&topology, yaml).unwrap();
        let file = dir.path().join("new.avsc");
        std::fs::write(&file, new).unwrap();
        let mut fake = Fake {
            registry: MemoryRegistry::default(),
            refuse: refuse.iter().map(|s| (*s).to_owned()).collect(),
            asked: Vec::new(),
        };
        if let Some(old) = old {
            fake.registry.register(SUBJECT, old).unwrap();
        }
        let r = check_candidate(
            &topology,
            &Candidate {
                file,
                subject: SUBJECT.to_owned(),
            },
            "http://r",
            &mut fake,
            HashKey::Usable,
            CheckOptions::default(),
        );
        (r, fake.asked)
    }

    #[test]
    fn gains_and_losses_per_tier_come_from_the_compiled_schemas() {
        let old = composed(serde_json::json!([
            {"name": "city", "type": "string", "privacy": "public"},
            {"name": "phone", "type": "string", "privacy": "restricted"},
            {"name": "gone", "type": "string", "privacy": "internal"}
        ]));
        let new = composed(serde_json::json!([
            {"name": "city", "type": "string", "privacy": "internal"},
            {"name": "phone", "type": "string", "privacy": "public"},
            {"name": "nick", "type": ["null", "string"], "privacy": "public", "default": null}
        ]));
        let (r, asked) = run(Some(&old), &new, &[], "");
        assert!(r.ok, "{}", r.text());
        let c = r.candidate.as_ref().unwrap();
        assert_eq!(c.event_type.as_deref(), Some("user.created"));
        assert_eq!(c.latest.as_ref().unwrap().version, 1);
        let public = &c.tiers[0];
        let paths = |l: &[FieldChange]| l.iter().map(|c| c.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&public.gains), ["data.phone", "data.nick"]);
        assert_eq!(public.gains[0].why, "tier restricted -> public, kept");
        assert_eq!(public.gains[1].why, "new field; tier public, kept");
        assert_eq!(paths(&public.losses), ["data.city"]);
        assert_eq!(public.losses[0].why, "tier public -> internal, removed");
        let internal = &c.tiers[1];
        assert_eq!(paths(&internal.gains), ["data.phone", "data.nick"]);
        assert_eq!(paths(&internal.losses), ["data.gone"]);
        assert_eq!(internal.losses[0].why, "removed from the schema");
        assert_eq!(
            public.subject.as_deref(),
            Some("events.public-com.privacyrouter.events.user.UserCreated")
        );
        // The writer schema's subject, then one derived subject per tier.
        assert_eq!(asked.len(), 4, "{asked:?}");
        let text = r.text();
        assert!(
            text.contains("  gains data.phone (string): tier restricted -> public, kept\n"),
            "{text}"
        );
        assert!(text.contains("  registry: compatible\n"), "{text}");
    }

    #[test]
    fn a_refused_derived_schema_fails_naming_the_subject() {
        let old =
            composed(serde_json::json!([{"name": "x", "type": "string", "privacy": "restricted"}]));
        let new =
            composed(serde_json::json!([{"name": "x", "type": "string", "privacy": "public"}]));
        let out = "events.public-com.privacyrouter.events.user.UserCreated";
        let (r, _) = run(Some(&old), &new, &[out], "");
        assert!(!r.ok);
        let f = r
            .findings
            .iter()
            .find(|f| f.code == "derived_schema_incompatible")
            .unwrap();
        assert_eq!(f.path, "<derived public schema>");
        assert!(f.message.contains(out), "{}", f.message);
        assert!(f.message.contains("derived_schema_rejected"));
        assert!(f.message.contains("reader field x has no default"));
    }

    #[test]
    fn tier_limits_skip_tiers_and_unknown_subjects_fail() {
        let new =
            composed(serde_json::json!([{"name": "x", "type": "string", "privacy": "public"}]));
        let (r, asked) = run(
            None,
            &new,
            &[],
            "event_types:\n  user.created: {tiers: [restricted]}\n",
        );
        assert!(r.ok, "{}", r.text());
        let c = r.candidate.as_ref().unwrap();
        assert!(!c.tiers[0].routed && !c.tiers[1].routed && c.tiers[2].routed);
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(c.tiers[2]
            .gains
            .iter()
            .all(|g| g.why.starts_with("new subject")));

        let (r, _) = run(
            None,
            &new,
            &[],
            "schemas:\n  subject_template: '{topic}-{event_type}'\n",
        );
        assert!(!r.ok);
        assert_eq!(r.findings[0].code, "subject");
        assert!(r.findings[0].message.contains(SUBJECT));
    }

    #[test]
    fn a_file_that_is_not_avro_is_named() {
        let (r, _) = run(None, r#"{"type": "nonsense"}"#, &[], "");
        assert!(!r.ok);
        let f = &r.findings[0];
        assert_eq!(f.code, "invalid_schema");
        assert!(f.file.ends_with("new.avsc"), "{}", f.file);
        assert!(
            f.message.contains("not a valid Avro schema"),
            "{}",
            f.message
        );
    }
}
