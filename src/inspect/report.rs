//! `privacy-router privacy-report`: for every event type and every version
//! of its schema, which field reaches which tier and how — kept, hashed
//! (keyed pseudonym) or removed — as Markdown or self-contained HTML: the
//! evidence a compliance reviewer signs.
//!
//! The report is computed with the engine's own rule
//! ([`treatment`](crate::project::treatment) over each field's
//! classification, see [`super::event_view`]) and the topology's per-event
//! tier limits and overrides, so it says what the engine does. It names
//! where the schemas came from (the file registry's folder, or the registry
//! at a URL with each subject, version and schema id), the tool's version
//! and when it was made, and ends with a sign-off block. Output is
//! deterministic for a given time: event types and versions are sorted,
//! fields are in schema order, and the only time is the one handed in (the
//! CLI takes it from `SOURCE_DATE_EPOCH` when set).

use std::fmt::Write as _;

use super::{
    inspect_all, override_effects, sha256_hex, EventView, FieldView, Origin, OverrideEffect,
    Provenance, Reach, SchemaProblem, Schemas,
};
use crate::config::Topology;
use crate::record::Tier;

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The topology file, as given.
    pub topology: String,
    /// SHA-256 of the topology file's bytes.
    pub topology_sha256: String,
    /// The schema folder or the registry URL, as given.
    pub schemas: String,
    /// The registry's URL, when the schemas came from one.
    pub registry: Option<String>,
    /// SHA-256 over every schema version, in event type and version order.
    pub schemas_sha256: String,
    /// The tool and its version: `privacy-router 0.1.0`.
    pub tool: String,
    /// When it was generated (UTC, RFC 3339).
    pub generated_at: String,
    /// The consumer group id.
    pub application_id: String,
    /// Tier topics by [`Tier::index`].
    pub topics: [String; 3],
    /// The dead-letter topic.
    pub dead_letter: String,
    /// Confluent tag -> tier, sorted by tag.
    pub tags: Vec<(String, Tier)>,
    /// Compliance's overrides and what each changed.
    pub overrides: Vec<OverrideEffect>,
    /// `avro` or `json`.
    pub output_format: String,
    /// Every version of every event type, sorted by event type and version.
    pub events: Vec<EventView>,
}

/// Counts for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Event types.
    pub event_types: usize,
    /// Schema versions (every version of every event type).
    pub versions: usize,
    /// Field paths across all schema versions.
    pub fields: usize,
    /// Field paths by their own tier ([`Tier::index`]).
    pub by_tier: [usize; 3],
    /// Fields that ask for `redact: hash`.
    pub hashed: usize,
    /// Fields whose tier came from tags (alone or with a label).
    pub from_tags: usize,
    /// Fields classified by their record's default.
    pub record_default: usize,
    /// Fields that fall to the fail-closed default.
    pub fail_closed: usize,
    /// Fields an override raised.
    pub raised: usize,
    /// Per tier: schema versions whose event type reaches it.
    pub reaching: [usize; 3],
    /// Per tier: fields kept, hashed, removed (with containers), not routed.
    pub reach: [[usize; 4]; 3],
}

/// A schema version that cannot be reported on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError {
    /// `user.created v2`
    pub label: String,
    /// Its file, or its subject version.
    pub location: String,
    /// Where and what.
    pub problem: SchemaProblem,
}

/// Builds the report of every schema version in `schemas`, generated at
/// `generated_at` by `tool` (name and version).
///
/// # Errors
/// Every schema version that cannot be compiled with the engine's rules (the
/// report would not be evidence of anything for it; `check` says more).
pub fn build(
    t: &Topology,
    topology_bytes: &[u8],
    schemas: &Schemas,
    generated_at: String,
    tool: String,
) -> Result<Report, Vec<ReportError>> {
    let (inspected, bad) = inspect_all(&t.engine, &schemas.versions);
    if !bad.is_empty() {
        return Err(bad
            .into_iter()
            .map(|(source, problem)| ReportError {
                label: source.label(),
                location: source.location(),
                problem,
            })
            .collect());
    }
    let mut all = String::new();
    for v in &schemas.versions {
        let _ = writeln!(all, "{} {}\n{}", v.event_type, v.version, v.text);
    }
    let overrides = override_effects(&t.engine.rules, &inspected);
    let mut views: Vec<EventView> = inspected.into_iter().map(|i| i.view).collect();
    views.sort_by(|a, b| (&a.event_type, a.version, a.id).cmp(&(&b.event_type, b.version, b.id)));
    Ok(Report {
        topology: t.file.display().to_string(),
        topology_sha256: sha256_hex(topology_bytes),
        schemas: schemas.location.clone(),
        registry: schemas.registry.clone(),
        schemas_sha256: sha256_hex(all.as_bytes()),
        tool,
        generated_at,
        application_id: t.spec.application_id.clone(),
        topics: Tier::ALL.map(|tier| t.engine.topics.tiers[tier.index()].to_string()),
        dead_letter: t.engine.topics.dead_letter.to_string(),
        tags: t
            .engine
            .rules
            .tags
            .0
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        overrides,
        output_format: match t.engine.format {
            crate::config::OutputFormat::Avro => "avro".to_owned(),
            crate::config::OutputFormat::Json => "json".to_owned(),
        },
        events: views,
    })
}

/// Where a schema version came from, in words (no markup).
fn origin_line(e: &EventView) -> String {
    let mut parts = vec![match &e.origin {
        Origin::Folder { payload, .. } => format!("File {}", payload.display()),
        Origin::File { file } => format!("File {}", file.display()),
        Origin::Registry { url } => format!("Registry {url}"),
    }];
    if e.subjects.is_empty() {
        parts.push(format!("version {}", e.version));
    }
    parts.extend(e.subjects.iter().map(ToString::to_string));
    parts.push(format!("record {}", e.fullname));
    parts.join("; ")
}

/// The anchor of an event type version's section.
fn anchor(e: &EventView) -> String {
    format!("{}-v{}", e.event_type, e.version)
}

impl Report {
    /// The summary counts.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            event_types: self
                .events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            versions: self.events.len(),
            ..Summary::default()
        };
        for e in &self.events {
            for tier in Tier::ALL {
                s.reaching[tier.index()] += usize::from(e.reaches[tier.index()]);
            }
            for f in &e.fields {
                s.fields += 1;
                s.by_tier[f.tier.index()] += 1;
                s.hashed += usize::from(f.hash);
                s.raised += usize::from(f.raised_from.is_some());
                match f.provenance {
                    Provenance::Tag { .. } | Provenance::LabelAndTag { .. } => s.from_tags += 1,
                    Provenance::RecordDefault => s.record_default += 1,
                    Provenance::FailClosed => s.fail_closed += 1,
                    Provenance::Label => {}
                }
                for tier in Tier::ALL {
                    let col = match f.reach[tier.index()] {
                        Reach::Kept => 0,
                        Reach::Hashed => 1,
                        Reach::Removed | Reach::RemovedWithContainer => 2,
                        Reach::NotRouted => 3,
                    };
                    s.reach[tier.index()][col] += 1;
                }
            }
        }
        s
    }
}

/// What the record key and routing headers of a tier are for an event type.
fn key_and_headers(e: &EventView, tier: Tier) -> (String, Vec<&'static str>) {
    let kept = |p: &str| {
        e.field(p)
            .is_some_and(|f| f.reach[tier.index()] == Reach::Kept)
    };
    let key = if kept("entity_id") {
        "entity_id".to_owned()
    } else {
        "keyed pseudonym of entity_id".to_owned()
    };
    let mut headers = Vec::new();
    for (field, header) in [
        ("event_type", "event_type"),
        ("entity_type", "entity_type"),
        ("entity_version", "entity_version"),
    ] {
        if kept(field) {
            headers.push(header);
        }
    }
    if kept("entity_version") {
        headers.push("x-version-gap (on gaps)");
    }
    headers.push("privacy_tier");
    (key, headers)
}

fn reaches_line(e: &EventView) -> String {
    let tiers: Vec<&str> = e.tiers().iter().map(|t| t.as_str()).collect();
    let missing: Vec<&str> = Tier::ALL
        .iter()
        .filter(|t| !e.reaches[t.index()])
        .map(|t| t.as_str())
        .collect();
    if missing.is_empty() {
        format!("Reaches: {}.", tiers.join(", "))
    } else {
        format!(
            "Reaches {} only (topology event_types.{}.tiers): no {} record is written for it.",
            tiers.join(" and "),
            e.event_type,
            missing.join(" or ")
        )
    }
}

const LEGEND: [&str; 6] = [
    "A field's tier comes from its own \"privacy\" label, from Confluent tags mapped by the topology (where label and tags disagree the strictest wins), or from its record's default; a field with none of these falls to the fail-closed default: restricted.",
    "Compliance may raise a field's tier in the topology (classification.overrides), never lower it: such a field says override, with the tier its schema gave it.",
    "The record for tier T keeps every field classified at or below T. A field above T is removed, or hashed (replaced by a keyed HMAC-SHA256 pseudonym, stable across events; the key is never in the topology) when it asks for \"redact\": \"hash\". A field inside a removed field is removed with it: removed (container).",
    "not routed: the topology limits the event type to other tiers, so that tier's topic receives no record of it at all.",
    "Rejected records go to the dead-letter topic unchanged, with PII: it is restricted.",
    "Paths: a.b is field b of record a; [] steps into array items, {} into map values, <Name> into one record branch of a union. Every version of every event type's schema is listed: events written with an older version are read with it.",
];

/// The sign-off rows: who signs, in which capacity.
const SIGN_OFF: [&str; 2] = ["Reviewed by", "Approved by"];

fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '`' | '[' | ']' | '|' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn code(s: &str) -> String {
    // Paths, names and topics hold no backtick or bar; strip them anyway so a
    // code span cannot be closed early.
    format!("`{}`", s.replace(['`', '|', '\n', '\r'], " "))
}

/// The subjects of a version, or `-`.
fn subjects_cell(e: &EventView) -> String {
    if e.subjects.is_empty() {
        return "-".to_owned();
    }
    e.subjects
        .iter()
        .map(|s| format!("{} v{} (id {})", s.subject, s.version, s.id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a version came from, for the schema table: the file, or the
/// registry.
fn source_cell(e: &EventView) -> String {
    match &e.origin {
        Origin::Folder { payload, .. } => payload.display().to_string(),
        Origin::File { file } => file.display().to_string(),
        Origin::Registry { url } => url.clone(),
    }
}

impl Report {
    /// The report as Markdown (GitHub-flavoured tables).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let sum = self.summary();
        let _ = writeln!(s, "# Privacy report\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| Topology | {} (sha256 {}) |",
            code(&self.topology),
            code(&self.topology_sha256)
        );
        match &self.registry {
            Some(url) => {
                let _ = writeln!(
                    s,
                    "| Schema registry | {} ({} event types, {} schema versions, sha256 {}) |",
                    code(url),
                    sum.event_types,
                    sum.versions,
                    code(&self.schemas_sha256)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| Schemas | {} ({} event types, {} schema versions, sha256 {}) |",
                    code(&self.schemas),
                    sum.event_types,
                    sum.versions,
                    code(&self.schemas_sha256)
                );
            }
        }
        let _ = writeln!(
            s,
            "| Generated | {} by {} |",
            md(&self.generated_at),
            md(&self.tool)
        );
        let _ = writeln!(s, "| Application id | {} |", code(&self.application_id));
        let _ = writeln!(s, "| Output format | {} |", md(&self.output_format));
        let _ = writeln!(s, "\n## How to read it\n");
        for l in LEGEND {
            let _ = writeln!(s, "- {}", md(l));
        }
        let _ = writeln!(s, "\n## Topics\n\n| tier | topic |\n|---|---|");
        for tier in Tier::ALL {
            let _ = writeln!(s, "| {tier} | {} |", code(&self.topics[tier.index()]));
        }
        let _ = writeln!(
            s,
            "| dead letter (restricted) | {} |",
            code(&self.dead_letter)
        );
        let _ = writeln!(s, "\n## Tag mapping\n\n| Confluent tag | tier |\n|---|---|");
        if self.tags.is_empty() {
            let _ = writeln!(s, "| (none) | |");
        }
        for (tag, tier) in &self.tags {
            let _ = writeln!(s, "| {} | {tier} |", code(tag));
        }
        let _ = writeln!(
            s,
            "\n## Overrides\n\n| record | field path | tier floor | what it changed |\n|---|---|---|---|"
        );
        if self.overrides.is_empty() {
            let _ = writeln!(s, "| (none) | | | |");
        }
        for o in &self.overrides {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                code(&o.record),
                code(&o.path),
                o.tier,
                md(&o.summary())
            );
        }
        let _ = writeln!(s, "\n## Summary\n\n| | count |\n|---|---|");
        for (k, v) in summary_rows(&sum) {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(
            s,
            "\n| tier | topic | schema versions reaching it | fields kept | hashed | removed | not routed |\n|---|---|---|---|---|---|---|"
        );
        for tier in Tier::ALL {
            let r = sum.reach[tier.index()];
            let _ = writeln!(
                s,
                "| {tier} | {} | {} | {} | {} | {} | {} |",
                code(&self.topics[tier.index()]),
                sum.reaching[tier.index()],
                r[0],
                r[1],
                r[2],
                r[3]
            );
        }
        let _ = writeln!(
            s,
            "\n## Schema versions\n\n| event type | version | subjects (version, id) | source | sha256 |\n|---|---|---|---|---|"
        );
        for e in &self.events {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                code(&e.event_type),
                e.version,
                md(&subjects_cell(e)),
                code(&source_cell(e)),
                code(&e.fingerprint[..16])
            );
        }
        let _ = writeln!(s, "\n## Event types\n");
        for e in &self.events {
            let _ = writeln!(s, "### {} v{}\n", code(&e.event_type), e.version);
            let _ = writeln!(
                s,
                "{}, sha256 {}.\n",
                md(&origin_line(e)),
                code(&e.fingerprint[..16])
            );
            let _ = writeln!(s, "{}\n", md(&reaches_line(e)));
            for tier in e.tiers() {
                let (key, headers) = key_and_headers(e, tier);
                let _ = writeln!(
                    s,
                    "- {tier}: key {}; headers {}",
                    md(&key),
                    md(&headers.join(", "))
                );
            }
            let _ = writeln!(
                s,
                "\n| field | type | tier | tier from | redact | public | internal | restricted | description |\n|---|---|---|---|---|---|---|---|---|"
            );
            for f in &e.fields {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    code(&f.path),
                    md(&f.type_name),
                    f.tier,
                    md(&f.tier_from()),
                    if f.hash { "hash" } else { "" },
                    f.reach[0].as_str(),
                    f.reach[1].as_str(),
                    f.reach[2].as_str(),
                    md(f.doc.as_deref().unwrap_or(""))
                );
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "## Sign-off\n\nI have reviewed this report ({}, generated {}) and confirm that each tier receives only what is listed above.\n\n| | name | role | date | signature |\n|---|---|---|---|---|",
            md(&self.tool),
            md(&self.generated_at)
        );
        for who in SIGN_OFF {
            let _ = writeln!(s, "| {who} | | | | |");
        }
        s
    }

    /// The report as one self-contained HTML page (inline CSS with a print
    /// stylesheet, no scripts, every text escaped, a
    /// Content-Security-Policy that allows nothing but the inline style).
    /// Long paths and names wrap, so every column stays on a 1,200 px page.
    pub fn html(&self) -> String {
        let sum = self.summary();
        let mut s = String::new();
        s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        s.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n");
        let _ = writeln!(s, "<title>Privacy report: {}</title>", h(&self.topology));
        s.push_str(CSS);
        s.push_str("</head>\n<body>\n<h1>Privacy report</h1>\n<table class=\"meta\">\n");
        let _ = writeln!(
            s,
            "<tr><th>Topology</th><td><code>{}</code> (sha256 <code>{}</code>)</td></tr>",
            h(&self.topology),
            h(&self.topology_sha256)
        );
        let (label, location) = match &self.registry {
            Some(url) => ("Schema registry", url.as_str()),
            None => ("Schemas", self.schemas.as_str()),
        };
        let _ = writeln!(
            s,
            "<tr><th>{label}</th><td><code>{}</code> ({} event types, {} schema versions, sha256 <code>{}</code>)</td></tr>",
            h(location),
            sum.event_types,
            sum.versions,
            h(&self.schemas_sha256)
        );
        let _ = writeln!(
            s,
            "<tr><th>Generated</th><td>{} by {}</td></tr>",
            h(&self.generated_at),
            h(&self.tool)
        );
        let _ = writeln!(
            s,
            "<tr><th>Application id</th><td><code>{}</code></td></tr>",
            h(&self.application_id)
        );
        let _ = writeln!(
            s,
            "<tr><th>Output format</th><td>{}</td></tr>\n</table>",
            h(&self.output_format)
        );
        s.push_str("<h2>How to read it</h2>\n<ul>\n");
        for l in LEGEND {
            let _ = writeln!(s, "<li>{}</li>", h(l));
        }
        s.push_str("</ul>\n<h2>Topics</h2>\n<table>\n<tr><th>tier</th><th>topic</th></tr>\n");
        for tier in Tier::ALL {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td><code>{}</code></td></tr>",
                badge(tier),
                h(&self.topics[tier.index()])
            );
        }
        let _ = writeln!(
            s,
            "<tr><td>dead letter ({})</td><td><code>{}</code></td></tr>\n</table>",
            badge(Tier::Restricted),
            h(&self.dead_letter)
        );
        s.push_str("<h2>Tag mapping</h2>\n<table>\n<tr><th>Confluent tag</th><th>tier</th></tr>\n");
        if self.tags.is_empty() {
            s.push_str("<tr><td colspan=\"2\">(none)</td></tr>\n");
        }
        for (tag, tier) in &self.tags {
            let _ = writeln!(
                s,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                h(tag),
                badge(*tier)
            );
        }
        s.push_str("</table>\n<h2>Overrides</h2>\n<table class=\"wide\">\n<colgroup><col class=\"o-record\"><col class=\"o-path\"><col class=\"o-tier\"><col class=\"o-what\"></colgroup>\n<thead><tr><th>record</th><th>field path</th><th>tier floor</th><th>what it changed</th></tr></thead>\n<tbody>\n");
        if self.overrides.is_empty() {
            s.push_str("<tr><td colspan=\"4\">(none)</td></tr>\n");
        }
        for o in &self.overrides {
            let _ = writeln!(
                s,
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                h(&o.record),
                h(&o.path),
                badge(o.tier),
                h(&o.summary())
            );
        }
        s.push_str("</tbody>\n</table>\n<h2>Summary</h2>\n<table>\n");
        for (k, v) in summary_rows(&sum) {
            let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", h(&k), h(&v));
        }
        s.push_str("</table>\n<table>\n<tr><th>tier</th><th>topic</th><th>schema versions reaching it</th><th>fields kept</th><th>hashed</th><th>removed</th><th>not routed</th></tr>\n");
        for tier in Tier::ALL {
            let r = sum.reach[tier.index()];
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                badge(tier),
                h(&self.topics[tier.index()]),
                sum.reaching[tier.index()],
                r[0],
                r[1],
                r[2],
                r[3]
            );
        }
        s.push_str("</table>\n<h2>Schema versions</h2>\n<table class=\"wide versions\">\n<colgroup><col class=\"v-type\"><col class=\"v-version\"><col class=\"v-subjects\"><col class=\"v-source\"><col class=\"v-sha\"></colgroup>\n<thead><tr><th>event type</th><th>version</th><th>subjects (version, id)</th><th>source</th><th>sha256</th></tr></thead>\n<tbody>\n");
        for e in &self.events {
            let _ = writeln!(
                s,
                "<tr><td><a href=\"#{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                h(&anchor(e)),
                h(&e.event_type),
                e.version,
                h(&subjects_cell(e)),
                h(&source_cell(e)),
                h(&e.fingerprint[..16])
            );
        }
        s.push_str("</tbody>\n</table>\n<h2>Event types</h2>\n");
        for e in &self.events {
            let _ = writeln!(
                s,
                "<section id=\"{}\">\n<h3><code>{}</code> v{}</h3>",
                h(&anchor(e)),
                h(&e.event_type),
                e.version
            );
            let _ = writeln!(
                s,
                "<p class=\"origin\">{}, sha256 <code>{}</code>.</p>",
                h(&origin_line(e)),
                h(&e.fingerprint[..16])
            );
            let class = if e.limited { "limited" } else { "reaches" };
            let _ = writeln!(s, "<p class=\"{class}\">{}</p>\n<ul>", h(&reaches_line(e)));
            for tier in e.tiers() {
                let (key, headers) = key_and_headers(e, tier);
                let _ = writeln!(
                    s,
                    "<li>{}: key {}; headers {}</li>",
                    badge(tier),
                    h(&key),
                    h(&headers.join(", "))
                );
            }
            s.push_str("</ul>\n<table class=\"fields\">\n<colgroup><col class=\"c-path\"><col class=\"c-type\"><col class=\"c-tier\"><col class=\"c-from\"><col class=\"c-redact\"><col class=\"c-reach\"><col class=\"c-reach\"><col class=\"c-reach\"><col class=\"c-doc\"></colgroup>\n<thead><tr><th>field</th><th>type</th><th>tier</th><th>tier from</th><th>redact</th><th>public</th><th>internal</th><th>restricted</th><th>description</th></tr></thead>\n<tbody>\n");
            for f in &e.fields {
                field_row(&mut s, f);
            }
            s.push_str("</tbody>\n</table>\n</section>\n");
        }
        let _ = writeln!(
            s,
            "<section class=\"signoff\">\n<h2>Sign-off</h2>\n<p>I have reviewed this report ({}, generated {}) and confirm that each tier receives only what is listed above.</p>",
            h(&self.tool),
            h(&self.generated_at)
        );
        s.push_str("<table class=\"signoff\">\n<thead><tr><th></th><th>name</th><th>role</th><th>date</th><th>signature</th></tr></thead>\n<tbody>\n");
        for who in SIGN_OFF {
            let _ = writeln!(
                s,
                "<tr><th>{who}</th><td class=\"line\"></td><td class=\"line\"></td><td class=\"line\"></td><td class=\"line\"></td></tr>"
            );
        }
        s.push_str("</tbody>\n</table>\n</section>\n</body>\n</html>\n");
        s
    }
}

fn field_row(s: &mut String, f: &FieldView) {
    let from_class = match (f.raised_from, &f.provenance) {
        (Some(_), _) => " class=\"override\"",
        (None, Provenance::FailClosed) => " class=\"failclosed\"",
        _ => "",
    };
    let _ = write!(
        s,
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td{from_class}>{}</td><td>{}</td>",
        h(&f.path),
        h(&f.type_name),
        badge(f.tier),
        h(&f.tier_from()),
        if f.hash { "hash" } else { "" }
    );
    for r in f.reach {
        let class = match r {
            Reach::Kept => "kept",
            Reach::Hashed => "hashed",
            Reach::Removed | Reach::RemovedWithContainer => "removed",
            Reach::NotRouted => "notrouted",
        };
        let _ = write!(s, "<td class=\"{class}\">{}</td>", r.as_str());
    }
    let _ = writeln!(s, "<td>{}</td></tr>", h(f.doc.as_deref().unwrap_or("")));
}

fn summary_rows(sum: &Summary) -> Vec<(String, String)> {
    vec![
        ("event types".to_owned(), sum.event_types.to_string()),
        ("schema versions".to_owned(), sum.versions.to_string()),
        ("field paths".to_owned(), sum.fields.to_string()),
        (
            "classified public".to_owned(),
            sum.by_tier[Tier::Public.index()].to_string(),
        ),
        (
            "classified internal".to_owned(),
            sum.by_tier[Tier::Internal.index()].to_string(),
        ),
        (
            "classified restricted".to_owned(),
            sum.by_tier[Tier::Restricted.index()].to_string(),
        ),
        ("redact: hash".to_owned(), sum.hashed.to_string()),
        ("tier from tags".to_owned(), sum.from_tags.to_string()),
        (
            "tier from record default".to_owned(),
            sum.record_default.to_string(),
        ),
        (
            "fail-closed default".to_owned(),
            sum.fail_closed.to_string(),
        ),
        ("raised by an override".to_owned(), sum.raised.to_string()),
    ]
}

/// Escapes text for HTML element content and attribute values.
pub fn h(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

fn badge(t: Tier) -> String {
    format!("<span class=\"tier {0}\">{0}</span>", t.as_str())
}

/// The page's style: long paths, names and hashes wrap anywhere, the field
/// tables have fixed column widths that fit a 1,200 px page, and a print
/// stylesheet (landscape A4, header rows repeated, colours kept, no table
/// row split across pages, the sign-off block on one page).
const CSS: &str = "<style>
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#202124;line-height:1.4;max-width:100%}
h1{margin-top:0}h3{margin-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;max-width:100%}
table.wide,table.fields{width:100%;table-layout:fixed}
th,td{border:1px solid #dadce0;padding:.25rem .5rem;text-align:left;vertical-align:top;font-size:.9rem;overflow-wrap:anywhere;word-break:break-word}
th{background:#f1f3f4}
table.meta th{width:10rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem;overflow-wrap:anywhere;word-break:break-all}
col.c-path{width:19%}col.c-type{width:12%}col.c-tier{width:9.5%}col.c-from{width:13%}col.c-redact{width:6%}col.c-reach{width:8%}col.c-doc{width:16.5%}
table.fields th{font-size:.8rem;padding:.25rem .35rem}
col.o-record{width:30%}col.o-path{width:15%}col.o-tier{width:10%}col.o-what{width:45%}
col.v-type{width:20%}col.v-version{width:7%}col.v-subjects{width:35%}col.v-source{width:26%}col.v-sha{width:12%}
.tier{border-radius:.6rem;padding:0 .45rem;font-size:.8rem;font-weight:600;white-space:nowrap}
.tier.public{background:#e6f4ea;color:#137333}
.tier.internal{background:#fef7e0;color:#8a5a00}
.tier.restricted{background:#fce8e6;color:#a50e0e}
td.kept,td.hashed,td.removed,td.notrouted{font-size:.8rem;padding:.25rem .35rem;word-break:normal}
td.kept{color:#137333}td.hashed{color:#8a5a00;font-weight:600}
td.removed{color:#a50e0e}td.notrouted{color:#5f6368;background:#f1f3f4}
td.failclosed{background:#fce8e6;font-weight:600}
td.override{background:#e8f0fe;font-weight:600}
p.limited{font-weight:600;color:#a50e0e}
p.origin{overflow-wrap:anywhere}
section{margin-bottom:2rem}
table.signoff{width:100%;table-layout:fixed}
table.signoff td.line{height:2.5rem}
table.signoff th:first-child{width:9rem}
@media print{
@page{size:A4 landscape;margin:12mm}
body{margin:0;font-size:9pt;color:#000}
a{color:inherit;text-decoration:none}
th,td{font-size:8pt;padding:.15rem .3rem}
code{font-size:7.5pt}
h2,h3{break-after:avoid}
thead{display:table-header-group}
tr,p.origin,p.limited,p.reaches{break-inside:avoid}
section.signoff{break-inside:avoid;break-before:page}
th,.tier,td.kept,td.hashed,td.removed,td.notrouted,td.failclosed,td.override{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
</style>
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;
    use crate::schema::SchemaLookup as _;
    use std::path::Path;

    const PAYLOAD: &str = r#"{"type":"record","name":"XData","namespace":"t","doc":"<b>payload</b>","fields":[
        {"name":"email","type":"string","privacy":"restricted","redact":"hash","doc":"<script>alert(1)</script> & | pipes"},
        {"name":"city","type":"string","privacy":"public","doc":"[click](javascript:alert(1))"},
        {"name":"nickname","type":"string"}]}"#;

    fn composed(payload: &str) -> String {
        let envelope: serde_json::Value =
            serde_json::from_str(include_str!("../../avro/envelope.avsc")).unwrap();
        let payload: serde_json::Value = serde_json::from_str(payload).unwrap();
        let (_, schema) =
            crate::registry::file::compose(&envelope, "user.created", payload).unwrap();
        schema.to_string()
    }

    /// The topology and its schemas, read from an in-memory registry holding
    /// each of `versions` as the next version of user.created's subject.
    fn fixture(yaml: &str, versions: &[&str]) -> (Topology, Schemas) {
        let t = Topology::parse(Path::new("t.yaml"), yaml).unwrap();
        let mut registry = MemoryRegistry::default();
        let subject = t.engine.subjects.subject("events.raw", "user.created");
        for v in versions {
            registry.register(&subject, &composed(v)).unwrap();
        }
        let schemas = Schemas::from_registry(&t, "http://registry:8081", &mut registry).unwrap();
        (t, schemas)
    }

    fn report(yaml: &str, date: &str) -> Report {
        let (t, schemas) = fixture(yaml, &[PAYLOAD]);
        build(
            &t,
            yaml.as_bytes(),
            &schemas,
            date.to_owned(),
            "privacy-router 9.9.9".to_owned(),
        )
        .unwrap()
    }

    #[test]
    fn markdown_shows_each_field_per_tier() {
        let r = report("", "2024-01-01T00:00:00Z");
        let m = r.markdown();
        assert!(
            m.contains("| Generated | 2024-01-01T00:00:00Z by privacy-router 9.9.9 |"),
            "{m}"
        );
        assert!(
            m.contains("| Schema registry | `http://registry:8081` (1 event types, 1 schema versions, sha256 `"),
            "{m}"
        );
        assert!(
            m.contains("| `user.created` | 1 | events.raw-com.privacyrouter.events.user.UserCreated v1 (id 1) | `http://registry:8081` |"),
            "{m}"
        );
        assert!(m.contains("### `user.created` v1\n"), "{m}");
        assert!(
            m.contains("Registry http://registry:8081; subject events.raw-com.privacyrouter.events.user.UserCreated version 1 (id 1); record com.privacyrouter.events.user.UserCreated, sha256 `"),
            "{m}"
        );
        assert!(
            m.contains(
                "| `data.email` | string | restricted | label | hash | hashed | hashed | kept |"
            ),
            "{m}"
        );
        assert!(m.contains(
            "| `data.nickname` | string | restricted | fail-closed default |  | removed | removed | kept |"
        ), "{m}");
        assert!(
            m.contains("| `entity_id` | string | internal | label | hash | hashed | kept | kept |")
        );
        assert!(
            m.contains("- public: key keyed pseudonym of entity_id;"),
            "{m}"
        );
        assert!(m.contains("## Overrides\n\n| record | field path | tier floor | what it changed |\n|---|---|---|---|\n| (none) | | | |"), "{m}");
        assert!(m.contains("## Sign-off\n"), "{m}");
        assert!(m.contains("| Reviewed by | | | | |"), "{m}");
        assert_eq!(
            m,
            report("", "2024-01-01T00:00:00Z").markdown(),
            "deterministic"
        );
        let s = r.summary();
        assert_eq!((s.event_types, s.versions), (1, 1));
        assert_eq!(s.fail_closed, 1);
    }

    #[test]
    fn every_version_is_reported_and_overrides_say_what_they_raised() {
        let v2 = PAYLOAD.replace(
            r#"{"name":"city","type":"string","privacy":"public""#,
            r#"{"name":"city","type":"string","privacy":"internal""#,
        );
        let yaml =
            "classification:\n  overrides:\n    t.XData: {city: restricted, email: internal}\n";
        let (t, schemas) = fixture(yaml, &[PAYLOAD, &v2]);
        let r = build(&t, b"", &schemas, "x".to_owned(), "tool".to_owned()).unwrap();
        assert_eq!(r.events.len(), 2);
        let m = r.markdown();
        assert!(
            m.contains("### `user.created` v1\n") && m.contains("### `user.created` v2\n"),
            "{m}"
        );
        assert!(
            m.contains("| `data.city` | string | restricted | override (schema said public: label) |  | removed | removed | kept |"),
            "{m}"
        );
        assert!(
            m.contains("| `data.city` | string | restricted | override (schema said internal: label) |  | removed | removed | kept |"),
            "{m}"
        );
        assert!(
            m.contains("| `t.XData` | `city` | restricted | raises data.city from public to restricted in user.created v1; raises data.city from internal to restricted in user.created v2 |"),
            "{m}"
        );
        assert!(
            m.contains("| `t.XData` | `email` | internal | leaves data.email as it is (its schema says restricted, stricter; an override never lowers a tier) in user.created v1, v2 |"),
            "{m}"
        );
        assert_eq!(r.summary().raised, 2);
        let html = r.html();
        assert!(
            html.contains("<td class=\"override\">override (schema said public: label)</td>"),
            "{html}"
        );
    }

    #[test]
    fn a_restricted_only_event_type_reaches_no_other_tier() {
        let r = report("event_types:\n  user.created: {tiers: [restricted]}\n", "x");
        let m = r.markdown();
        assert!(m.contains("Reaches restricted only"), "{m}");
        assert!(m.contains("no public or internal record is written"), "{m}");
        assert!(
            m.contains(
                "| `data.city` | string | public | label |  | not routed | not routed | kept |"
            ),
            "{m}"
        );
        assert!(!m.contains("- public: key"), "{m}");
    }

    #[test]
    fn html_wraps_long_paths_prints_and_has_a_sign_off_block() {
        let html = report("", "2024-01-01T00:00:00Z").html();
        assert!(html.contains("@media print{"), "print stylesheet");
        assert!(html.contains("overflow-wrap:anywhere"));
        assert!(html.contains("table.wide,table.fields{width:100%;table-layout:fixed}"));
        assert!(html.contains("<section class=\"signoff\">\n<h2>Sign-off</h2>"));
        for who in ["Reviewed by", "Approved by"] {
            assert!(html.contains(&format!("<tr><th>{who}</th><td class=\"line\"></td>")));
        }
        assert!(html.contains("<th>name</th><th>role</th><th>date</th><th>signature</th>"));
        assert!(html.contains("<section id=\"user.created-v1\">"));
    }

    #[test]
    fn docs_cannot_inject_markup() {
        let r = report("", "x");
        let html = r.html();
        assert!(!html.contains("<script>"), "raw script tag in HTML");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; | pipes"));
        assert!(html.contains("default-src 'none'"));
        let m = r.markdown();
        assert!(!m.contains("<script>"));
        assert!(
            m.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; \\| pipes"),
            "{m}"
        );
        assert!(m.contains("\\[click\\](javascript:alert(1))"), "{m}");
        assert_eq!(
            h("<a href='x'>\"&"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;"
        );
    }

    #[test]
    fn a_schema_that_does_not_compile_is_an_error_not_a_report() {
        let bad = PAYLOAD.replace("\"restricted\",\"redact\"", "\"secret\",\"redact\"");
        let (t, schemas) = fixture("", &[PAYLOAD, &bad]);
        let errors = build(&t, b"", &schemas, "x".to_owned(), "t".to_owned()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].label, "user.created v2");
        assert_eq!(
            errors[0].location,
            "subject events.raw-com.privacyrouter.events.user.UserCreated version 2 (id 2)"
        );
        assert_eq!(errors[0].problem.path, "fields.data.fields.email");
    }
}
