//! `privacy-router privacy-report`: for every event type, which field
//! reaches which tier and how — kept, hashed (keyed pseudonym) or removed —
//! as Markdown or self-contained HTML: the evidence a compliance reviewer
//! signs.
//!
//! The report is computed with the engine's own rule
//! ([`treatment`](crate::project::treatment) over each field's
//! classification, see [`super::event_view`]) and the topology's per-event
//! tier limits, so it says what the engine does. Output is deterministic:
//! event types are sorted, fields are in schema order, and the only date is
//! the one handed in (the CLI takes it from `SOURCE_DATE_EPOCH`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{compile_event, event_view, sha256_hex, EventView, FieldView, Provenance, Reach};
use crate::config::Topology;
use crate::record::Tier;
use crate::registry::file::EventSchema;

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The topology file, as given.
    pub topology: String,
    /// SHA-256 of the topology file's bytes.
    pub topology_sha256: String,
    /// The schema folder, as given.
    pub schemas: String,
    /// SHA-256 over every event type's composed schema, in event-type order.
    pub schemas_sha256: String,
    /// When it was generated (UTC, RFC 3339), if dated.
    pub generated_at: Option<String>,
    /// The consumer group id.
    pub application_id: String,
    /// Tier topics by [`Tier::index`].
    pub topics: [String; 3],
    /// The dead-letter topic.
    pub dead_letter: String,
    /// Confluent tag -> tier, sorted by tag.
    pub tags: Vec<(String, Tier)>,
    /// `avro` or `json`.
    pub output_format: String,
    /// Every event type, sorted.
    pub events: Vec<EventView>,
}

/// Counts for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Event types.
    pub event_types: usize,
    /// Field paths across all event types.
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
    /// Per tier: event types that reach it.
    pub reaching: [usize; 3],
    /// Per tier: fields kept, hashed, removed (with containers), not routed.
    pub reach: [[usize; 4]; 3],
}

/// A schema that cannot be reported on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError {
    /// The event type.
    pub event_type: String,
    /// Its file.
    pub file: PathBuf,
    /// Where and what.
    pub problem: super::SchemaProblem,
}

/// Builds the report.
///
/// # Errors
/// Every schema that cannot be compiled with the engine's rules (the report
/// would not be evidence of anything for it; `check` says more).
pub fn build(
    t: &Topology,
    topology_bytes: &[u8],
    schemas: &Path,
    events: &[EventSchema],
    generated_at: Option<String>,
) -> Result<Report, Vec<ReportError>> {
    let mut views = Vec::with_capacity(events.len());
    let mut errors = Vec::new();
    let mut sorted: Vec<&EventSchema> = events.iter().collect();
    sorted.sort_by(|a, b| a.event_type.cmp(&b.event_type));
    let mut all = String::new();
    for e in sorted {
        all.push_str(&e.event_type);
        all.push('\n');
        all.push_str(&e.text);
        all.push('\n');
        match compile_event(&e.text, &t.engine) {
            Ok(s) => views.push(event_view(e, &s, &t.engine)),
            Err(problem) => errors.push(ReportError {
                event_type: e.event_type.clone(),
                file: e.path.clone(),
                problem,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Report {
        topology: t.file.display().to_string(),
        topology_sha256: sha256_hex(topology_bytes),
        schemas: schemas.display().to_string(),
        schemas_sha256: sha256_hex(all.as_bytes()),
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
        output_format: match t.engine.format {
            crate::pipeline::OutputFormat::Avro => "avro".to_owned(),
            crate::pipeline::OutputFormat::Json => "json".to_owned(),
        },
        events: views,
    })
}

impl Report {
    /// The summary counts.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            event_types: self.events.len(),
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

const LEGEND: [&str; 5] = [
    "A field's tier comes from its own \"privacy\" label, from Confluent tags mapped by the topology (where label and tags disagree the strictest wins), or from its record's default; a field with none of these falls to the fail-closed default: restricted.",
    "The record for tier T keeps every field classified at or below T. A field above T is removed, or hashed (replaced by a keyed HMAC-SHA256 pseudonym, stable across events; the key is never in the topology) when it asks for \"redact\": \"hash\". A field inside a removed field is removed with it: removed (container).",
    "not routed: the topology limits the event type to other tiers, so that tier's topic receives no record of it at all.",
    "Rejected records go to the dead-letter topic unchanged, with PII: it is restricted.",
    "Paths: a.b is field b of record a; [] steps into array items, {} into map values, <Name> into one record branch of a union.",
];

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

impl Report {
    fn dated(&self) -> String {
        match &self.generated_at {
            Some(d) => d.clone(),
            None => "not dated (set SOURCE_DATE_EPOCH to date the report)".to_owned(),
        }
    }

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
        let _ = writeln!(
            s,
            "| Schemas | {} ({} event types, sha256 {}) |",
            code(&self.schemas),
            sum.event_types,
            code(&self.schemas_sha256)
        );
        let _ = writeln!(s, "| Generated | {} |", md(&self.dated()));
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
        let _ = writeln!(s, "\n## Summary\n\n| | count |\n|---|---|");
        for (k, v) in summary_rows(&sum) {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(
            s,
            "\n| tier | topic | event types reaching it | fields kept | hashed | removed | not routed |\n|---|---|---|---|---|---|---|"
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
        let _ = writeln!(s, "\n## Event types\n");
        for e in &self.events {
            let _ = writeln!(s, "### {}\n", code(&e.event_type));
            let _ = writeln!(
                s,
                "Schema {}, record {}, sha256 {}.\n",
                code(&e.file.display().to_string()),
                code(&e.fullname),
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
                    md(&f.provenance.describe()),
                    if f.hash { "hash" } else { "" },
                    f.reach[0].as_str(),
                    f.reach[1].as_str(),
                    f.reach[2].as_str(),
                    md(f.doc.as_deref().unwrap_or(""))
                );
            }
            s.push('\n');
        }
        s
    }

    /// The report as one self-contained HTML page (inline CSS, no scripts,
    /// every text escaped, a Content-Security-Policy that allows nothing
    /// but the inline style).
    pub fn html(&self) -> String {
        let sum = self.summary();
        let mut s = String::new();
        s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
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
        let _ = writeln!(
            s,
            "<tr><th>Schemas</th><td><code>{}</code> ({} event types, sha256 <code>{}</code>)</td></tr>",
            h(&self.schemas),
            sum.event_types,
            h(&self.schemas_sha256)
        );
        let _ = writeln!(
            s,
            "<tr><th>Generated</th><td>{}</td></tr>",
            h(&self.dated())
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
        s.push_str("</table>\n<h2>Summary</h2>\n<table>\n");
        for (k, v) in summary_rows(&sum) {
            let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", h(&k), h(&v));
        }
        s.push_str("</table>\n<table>\n<tr><th>tier</th><th>topic</th><th>event types reaching it</th><th>fields kept</th><th>hashed</th><th>removed</th><th>not routed</th></tr>\n");
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
        s.push_str("</table>\n<h2>Event types</h2>\n<p class=\"toc\">");
        let links: Vec<String> = self
            .events
            .iter()
            .map(|e| format!("<a href=\"#{0}\">{0}</a>", h(&e.event_type)))
            .collect();
        s.push_str(&links.join(" · "));
        s.push_str("</p>\n");
        for e in &self.events {
            let _ = writeln!(
                s,
                "<section id=\"{0}\">\n<h3><code>{0}</code></h3>",
                h(&e.event_type)
            );
            let _ = writeln!(
                s,
                "<p>Schema <code>{}</code>, record <code>{}</code>, sha256 <code>{}</code>.</p>",
                h(&e.file.display().to_string()),
                h(&e.fullname),
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
            s.push_str("</ul>\n<table class=\"fields\">\n<tr><th>field</th><th>type</th><th>tier</th><th>tier from</th><th>redact</th><th>public</th><th>internal</th><th>restricted</th><th>description</th></tr>\n");
            for f in &e.fields {
                field_row(&mut s, f);
            }
            s.push_str("</table>\n</section>\n");
        }
        s.push_str("</body>\n</html>\n");
        s
    }
}

fn field_row(s: &mut String, f: &FieldView) {
    let from_class = match f.provenance {
        Provenance::FailClosed => " class=\"failclosed\"",
        _ => "",
    };
    let _ = write!(
        s,
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td{from_class}>{}</td><td>{}</td>",
        h(&f.path),
        h(&f.type_name),
        badge(f.tier),
        h(&f.provenance.describe()),
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

const CSS: &str = "<style>
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#202124;line-height:1.4}
h1{margin-top:0}h3{margin-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #dadce0;padding:.25rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f1f3f4}
table.meta th{width:10rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem}
.tier{border-radius:.6rem;padding:0 .45rem;font-size:.8rem;font-weight:600}
.tier.public{background:#e6f4ea;color:#137333}
.tier.internal{background:#fef7e0;color:#8a5a00}
.tier.restricted{background:#fce8e6;color:#a50e0e}
td.kept{color:#137333}td.hashed{color:#8a5a00;font-weight:600}
td.removed{color:#a50e0e}td.notrouted{color:#5f6368;background:#f1f3f4}
td.failclosed{background:#fce8e6;font-weight:600}
p.limited{font-weight:600;color:#a50e0e}
p.toc{line-height:1.8}
section{margin-bottom:2rem}
</style>
";

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{"type":"record","name":"XData","namespace":"t","doc":"<b>payload</b>","fields":[
        {"name":"email","type":"string","privacy":"restricted","redact":"hash","doc":"<script>alert(1)</script> & | pipes"},
        {"name":"city","type":"string","privacy":"public","doc":"[click](javascript:alert(1))"},
        {"name":"nickname","type":"string"}]}"#;

    fn fixture(yaml: &str) -> (Topology, Vec<EventSchema>) {
        let t = Topology::parse(Path::new("t.yaml"), yaml).unwrap();
        let envelope: serde_json::Value =
            serde_json::from_str(include_str!("../../avro/envelope.avsc")).unwrap();
        let payload: serde_json::Value = serde_json::from_str(PAYLOAD).unwrap();
        let (fullname, schema) =
            crate::registry::file::compose(&envelope, "user.created", payload).unwrap();
        let e = EventSchema {
            version: 1,
            event_type: "user.created".to_owned(),
            fullname,
            path: PathBuf::from("avro/events/user/user.created.avsc"),
            text: schema.to_string(),
            id: 1,
        };
        (t, vec![e])
    }

    fn report(yaml: &str, date: Option<&str>) -> Report {
        let (t, events) = fixture(yaml);
        build(
            &t,
            yaml.as_bytes(),
            Path::new("avro"),
            &events,
            date.map(str::to_owned),
        )
        .unwrap()
    }

    #[test]
    fn markdown_shows_each_field_per_tier() {
        let r = report("", Some("2024-01-01T00:00:00Z"));
        let m = r.markdown();
        assert!(m.contains("| Generated | 2024-01-01T00:00:00Z |"), "{m}");
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
        assert_eq!(
            m,
            report("", Some("2024-01-01T00:00:00Z")).markdown(),
            "deterministic"
        );
        let s = r.summary();
        assert_eq!(s.event_types, 1);
        assert_eq!(s.fail_closed, 1);
    }

    #[test]
    fn a_restricted_only_event_type_reaches_no_other_tier() {
        let r = report(
            "event_types:\n  user.created: {tiers: [restricted]}\n",
            None,
        );
        let m = r.markdown();
        assert!(m.contains("Reaches restricted only"), "{m}");
        assert!(m.contains("no public or internal record is written"), "{m}");
        assert!(
            m.contains(
                "| `data.city` | string | public | label |  | not routed | not routed | kept |"
            ),
            "{m}"
        );
        assert!(m.contains("not dated"));
        assert!(!m.contains("- public: key"), "{m}");
    }

    #[test]
    fn docs_cannot_inject_markup() {
        let r = report("", None);
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
        let (t, mut events) = fixture("");
        events[0].text = events[0]
            .text
            .replace("\"restricted\",\"redact\"", "\"secret\",\"redact\"");
        let errors = build(&t, b"", Path::new("avro"), &events, None).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].problem.path, "fields.data.fields.email");
    }
}
