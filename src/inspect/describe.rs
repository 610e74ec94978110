//! `privacy-router describe`: the topology as a graph, in the manner of
//! Kafka Streams' `Topology#describe()` — sources, processors (the fixed
//! stages), sinks and the state store — as text or as a Mermaid
//! `flowchart LR`.
//!
//! The graph is built from the validated [`Topology`] (its file as written
//! and the [`EngineConfig`](crate::config::EngineConfig) the engine runs
//! with), so policies decide which edges exist: a tier check that only
//! counts has no edge to the dead-letter topic, one that dead-letters has.
//! Output is deterministic: maps are sorted.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::OverrideEffect;
use crate::adapt::AdapterOrdering;
use crate::config::{GapPolicy, MismatchPolicy, OutputFormat, StalePolicy, Topology};
use crate::record::Tier;

/// The name of the version store (Kafka Streams' naming: its changelog is
/// `<application_id>-<store>-changelog`).
pub const STORE_NAME: &str = "entity-versions";

/// What a node of the graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Reads input topics.
    Source,
    /// A stage of the pipeline.
    Processor,
    /// Writes a topic.
    Sink,
}

/// A node of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Stable name, e.g. `tier-check`, `sink-public`.
    pub name: String,
    /// Source, processor or sink.
    pub kind: NodeKind,
    /// Topics read (source) or written (sink).
    pub topics: Vec<String>,
    /// State stores used.
    pub stores: Vec<String>,
    /// What it does, one line.
    pub detail: String,
}

/// An edge of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// From node name.
    pub from: String,
    /// To node name.
    pub to: String,
    /// What flows along it, when not every record.
    pub label: Option<String>,
}

/// The topology as a graph plus its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// The topology file.
    pub file: String,
    /// The consumer group id.
    pub application_id: String,
    /// Nodes in flow order.
    pub nodes: Vec<Node>,
    /// Edges in flow order.
    pub edges: Vec<Edge>,
    /// `name: value` settings, in a fixed order.
    pub settings: Vec<(String, String)>,
    /// Event type -> the tiers it is limited to, sorted.
    pub tier_limits: BTreeMap<String, Vec<Tier>>,
}

/// The serde name of a config enum (`exactly_once`, `dead_letter`).
fn name_of<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

const DLQ: &str = "sink-dead-letter";

/// What `describe` knows about what the topology's
/// `classification.overrides` change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideEffects {
    /// Worked out against the schemas the processor reads.
    Known {
        /// `the folder avro`, `the registry at http://…`.
        source: String,
        /// One per override, in the topology's order.
        effects: Vec<OverrideEffect>,
    },
    /// The schemas could not be read; why (the overrides are still listed).
    Unknown(String),
}

impl OverrideEffects {
    /// No override to describe.
    pub fn none() -> Self {
        OverrideEffects::Known {
            source: String::new(),
            effects: Vec::new(),
        }
    }
}

/// One line per override: `record.path >= tier: what it changed`.
fn override_lines(t: &Topology, effects: &OverrideEffects) -> Vec<String> {
    t.engine
        .rules
        .overrides
        .iter()
        .map(|(record, path, tier)| {
            let what = match effects {
                OverrideEffects::Known { effects, .. } => effects
                    .iter()
                    .find(|e| e.record == record && e.path == path)
                    .map_or_else(|| "not checked".to_owned(), OverrideEffect::summary),
                OverrideEffects::Unknown(why) => {
                    format!("what it changes is not known: {why}")
                }
            };
            format!("{record}.{path} >= {tier}: {what}")
        })
        .collect()
}

/// Builds the graph of a topology.
pub fn graph(t: &Topology) -> Graph {
    let spec = &t.spec;
    let cfg = &t.engine;
    let changelog = t.changelog_topic();
    let mut tier_limits: BTreeMap<String, Vec<Tier>> = BTreeMap::new();
    for (event_type, tiers) in &cfg.tier_limits {
        let mut v: Vec<Tier> = tiers.iter().copied().collect();
        v.sort();
        tier_limits.insert(event_type.clone(), v);
    }
    let excluded = |tier: Tier| -> Vec<&str> {
        tier_limits
            .keys()
            .filter(|e| !cfg.reaches(e)[tier.index()])
            .map(String::as_str)
            .collect()
    };
    let node = |name: &str, kind, topics: Vec<String>, stores: Vec<String>, detail: String| Node {
        name: name.to_owned(),
        kind,
        topics,
        stores,
        detail,
    };
    let proc = |name: &str, detail: String| node(name, NodeKind::Processor, vec![], vec![], detail);
    let mut source = Vec::new();
    if !spec.input.topics.is_empty() {
        source.push("raw events, one consumer group".to_owned());
    }
    if let Some(nats) = &spec.input.nats_jetstream {
        source.push(format!(
            "NATS JetStream stream {} subject {}, durable consumer {}: read in stream order by the group member that owns partition 0 of {}; the stream sequence is kept in the changelog with the outputs, acknowledged after each commit",
            nats.stream,
            nats.subject,
            nats.consumer_name(&spec.application_id),
            t.lease_topic().unwrap_or_default()
        ));
    }
    let mut nodes = vec![node(
        "source",
        NodeKind::Source,
        spec.input.names(),
        vec![],
        source.join("; "),
    )];
    if !spec.adapters.is_empty() {
        let each: Vec<String> = spec
            .adapters
            .iter()
            .map(|(name, a)| {
                let ordering = match &a.ordering {
                    Some(AdapterOrdering::Off) => "ordering off (unordered)".to_owned(),
                    Some(AdapterOrdering::EntityVersion) | None => {
                        "ordered by entity_version".to_owned()
                    }
                    Some(AdapterOrdering::Sequence(q)) => {
                        format!("ordered by the sequence {}", q.field)
                    }
                };
                format!(
                    "{name} on [{}]: {} event type(s) mapped onto the canonical envelope, {ordering}",
                    a.topics.join(", "),
                    a.event_types.len()
                )
            })
            .collect();
        nodes.push(proc(
            "adapt",
            format!(
                "producer JSON onto the canonical envelope: {}",
                each.join("; ")
            ),
        ));
    }
    nodes.extend([

        proc(
            "decode",
            format!(
                "Confluent wire format (0x00, schema id, Avro) or a JSON envelope read against subject {}; writer schemas from the registry, compiled once per id",
                cfg.subjects.template
            ),
        ),
        proc(
            "validate",
            "event_type ^[a-z]+\\.[a-z_]+$, event_id uuid, entity_version >= 1, schema_version >= 1, *_cents >= 0, *_count >= 0, *_at ISO 8601 UTC".to_owned(),
        ),
        proc(
            "tier-check",
            format!(
                "declared privacy_tier against the most sensitive non-null field; on_tier_mismatch: {}",
                name_of(&cfg.on_tier_mismatch)
            ),
        ),
        node(
            "order",
            NodeKind::Processor,
            vec![],
            vec![STORE_NAME.to_owned()],
            {
                let stale = match cfg.on_stale {
                    StalePolicy::Skip => "duplicate and stale skipped",
                    StalePolicy::DeadLetter => "duplicate skipped, stale dead-lettered",
                };
                let mut d = format!(
                    "per (entity_type, entity_id): first sight or last + 1 accepted, {stale}; on_gap: {}",
                    name_of(&cfg.on_gap)
                );
                if cfg.on_gap == GapPolicy::Hold {
                    let _ = write!(
                        d,
                        " (held up to {} ms of stream time, or of wall-clock time on an idle partition, at most {} per partition, then emitted as gaps; held events in the changelog)",
                        cfg.hold.window_ms, cfg.hold.max_held
                    );
                }
                d
            },
        ),
    ]);
    for tier in Tier::ALL {
        let not = excluded(tier);
        let mut detail = format!(
            "keeps fields classified <= {tier}, pseudonymises \"redact\": \"hash\" fields above it, removes the rest (derived {tier} schema)"
        );
        if !not.is_empty() {
            let _ = write!(detail, "; skipped for {}", not.join(", "));
        }
        nodes.push(proc(&format!("project-{tier}"), detail));
    }
    nodes.push(proc(
        "route",
        format!(
            "key entity_id (its keyed pseudonym where the tier may not see it); headers event_type, entity_type, entity_version, x-version-gap where the tier may see them, privacy_tier; value {}",
            match cfg.format {
                OutputFormat::Avro =>
                    "Avro in Confluent wire format, derived schema under <tier topic>-<record name>",
                OutputFormat::Json => "JSON of the projected value",
            }
        ),
    ));
    for tier in Tier::ALL {
        nodes.push(node(
            &format!("sink-{tier}"),
            NodeKind::Sink,
            vec![cfg.topics.tiers[tier.index()].to_string()],
            vec![],
            match tier {
                Tier::Public => "no PII at all: analytics, consumer APIs",
                Tier::Internal => "internal ids and business metrics; never e-mail, phone or IP",
                Tier::Restricted => "everything: compliance and legal hold only",
            }
            .to_owned(),
        ));
    }
    nodes.push(node(
        DLQ,
        NodeKind::Sink,
        vec![cfg.topics.dead_letter.to_string()],
        vec![],
        "rejected records unchanged, with x-error-reason, x-error-detail, x-source-topic, x-source-partition, x-source-offset and Kafka Streams' __streams.errors.* (KIP-1034); holds raw PII: restricted".to_owned(),
    ));
    nodes.push(node(
        "sink-changelog",
        NodeKind::Sink,
        vec![changelog.clone()],
        vec![STORE_NAME.to_owned()],
        format!("compacted changelog of the {STORE_NAME} store, co-partitioned with the input"),
    ));

    let mut edges = Vec::new();
    let mut edge = |from: &str, to: &str, label: Option<String>| {
        edges.push(Edge {
            from: from.to_owned(),
            to: to.to_owned(),
            label,
        })
    };
    if spec.adapters.is_empty() {
        edge("source", "decode", None);
    } else {
        edge("source", "adapt", None);
        edge("adapt", "decode", Some("canonical JSON".to_owned()));
        edge(
            "adapt",
            DLQ,
            Some("adapter_mismatch, unknown_event_type".to_owned()),
        );
    }
    edge("decode", "validate", None);
    edge(
        "decode",
        DLQ,
        Some("undecodable, unknown schema or event type".to_owned()),
    );
    edge("validate", "tier-check", None);
    edge("validate", DLQ, Some("invalid".to_owned()));
    edge("tier-check", "order", None);
    if cfg.on_tier_mismatch == MismatchPolicy::DeadLetter {
        edge("tier-check", DLQ, Some("tier_mismatch".to_owned()));
    }
    let forward = match cfg.on_gap {
        GapPolicy::Emit => "accepted, gap",
        GapPolicy::DeadLetter => "accepted",
        GapPolicy::Hold => "accepted, released in order, gap after the window",
    };
    for tier in Tier::ALL {
        edge(
            "order",
            &format!("project-{tier}"),
            Some(forward.to_owned()),
        );
    }
    if cfg.on_gap == GapPolicy::DeadLetter {
        edge("order", DLQ, Some("version_gap".to_owned()));
    }
    if cfg.on_stale == StalePolicy::DeadLetter {
        edge("order", DLQ, Some("stale_version".to_owned()));
    }
    let state = if cfg.on_gap == GapPolicy::Hold {
        "last accepted version, held events"
    } else {
        "last accepted version"
    };
    edge("order", "sink-changelog", Some(state.to_owned()));
    for tier in Tier::ALL {
        edge(&format!("project-{tier}"), "route", None);
    }
    for tier in Tier::ALL {
        edge(
            &format!("project-{tier}"),
            DLQ,
            Some("redaction_unavailable".to_owned()),
        );
    }
    for tier in Tier::ALL {
        let not = excluded(tier);
        let label = (!not.is_empty()).then(|| format!("all but {}", not.join(", ")));
        edge("route", &format!("sink-{tier}"), label);
    }

    let settings = vec![
        ("application_id".to_owned(), spec.application_id.clone()),
        (
            "processing.guarantee".to_owned(),
            name_of(&spec.processing.guarantee),
        ),
        (
            "processing.commit_interval_ms".to_owned(),
            spec.processing.commit_interval_ms.to_string(),
        ),
        (
            "processing.stream_threads".to_owned(),
            spec.processing.stream_threads.to_string(),
        ),
        ("outputs.format".to_owned(), name_of(&cfg.format)),
        ("ordering.on_gap".to_owned(), name_of(&cfg.on_gap)),
        (
            "ordering.reorder_window_ms".to_owned(),
            cfg.hold.window_ms.to_string(),
        ),
        (
            "ordering.max_held_per_partition".to_owned(),
            cfg.hold.max_held.to_string(),
        ),
        ("ordering.on_stale".to_owned(), name_of(&cfg.on_stale)),
        (
            "classification.on_tier_mismatch".to_owned(),
            name_of(&cfg.on_tier_mismatch),
        ),
        (
            "classification.tags".to_owned(),
            cfg.rules
                .tags
                .0
                .iter()
                .map(|(tag, tier)| format!("{tag} -> {tier}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "schemas.subject_template".to_owned(),
            cfg.subjects.template.clone(),
        ),
    ];
    let mut overrides: Vec<_> = cfg.subjects.overrides.iter().collect();
    overrides.sort();
    let mut settings = settings;
    for (event_type, subject) in overrides {
        settings.push((format!("event_types.{event_type}.subject"), subject.clone()));
    }
    Graph {
        file: t.file.display().to_string(),
        application_id: spec.application_id.clone(),
        nodes,
        edges,
        settings,
        tier_limits,
    }
}

impl Graph {
    fn next(&self, name: &str) -> Vec<String> {
        self.edges
            .iter()
            .filter(|e| e.from == name)
            .map(|e| match &e.label {
                Some(l) => format!("{} ({l})", e.to),
                None => e.to.clone(),
            })
            .collect()
    }

    fn prev(&self, name: &str) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for e in self.edges.iter().filter(|e| e.to == name) {
            if !v.contains(&e.from.as_str()) {
                v.push(&e.from);
            }
        }
        v
    }

    fn setting(&self, key: &str) -> &str {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The text form, like Kafka Streams' `TopologyDescription`, with each
/// override and what it changes.
pub fn text(t: &Topology, overrides: &OverrideEffects) -> String {
    let g = graph(t);
    let mut s = String::new();
    let _ = writeln!(s, "Topology: {}", g.file);
    let _ = writeln!(s, "  Sub-topology: 0 (application_id {})", g.application_id);
    for n in &g.nodes {
        let kind = match n.kind {
            NodeKind::Source => "Source",
            NodeKind::Processor => "Processor",
            NodeKind::Sink => "Sink",
        };
        let what = match n.kind {
            NodeKind::Source => format!("topics: [{}]", n.topics.join(", ")),
            NodeKind::Sink => format!("topic: {}", n.topics.join(", ")),
            NodeKind::Processor => format!("stores: [{}]", n.stores.join(", ")),
        };
        let _ = writeln!(s, "    {kind}: {} ({what})", n.name);
        let _ = writeln!(s, "      {}", n.detail);
        let next = g.next(&n.name);
        if !next.is_empty() {
            let _ = writeln!(s, "      --> {}", next.join(", "));
        }
        let prev = g.prev(&n.name);
        if !prev.is_empty() {
            let _ = writeln!(s, "      <-- {}", prev.join(", "));
        }
    }
    let _ = writeln!(s, "  State stores:");
    let held = if t.engine.on_gap == GapPolicy::Hold {
        " and the held events (raw input records: restricted, like the dead-letter topic)"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "    {STORE_NAME}: (entity_type, entity_id) -> last accepted entity_version, plus resume markers{held}; changelog topic {} (compacted, co-partitioned with the input, restored before a partition is processed)",
        t.changelog_topic()
    );
    let _ = writeln!(s, "  Topics:");
    for topic in &t.spec.input.topics {
        let _ = writeln!(s, "    input        {topic}");
    }
    if let (Some(nats), Some(lease)) = (&t.spec.input.nats_jetstream, t.lease_topic()) {
        let _ = writeln!(
            s,
            "    input        NATS JetStream {} subject {} (consumer {}; read by the owner of {lease}[0])",
            nats.stream,
            nats.subject,
            nats.consumer_name(&t.spec.application_id)
        );
    }
    for tier in Tier::ALL {
        let _ = writeln!(
            s,
            "    {:<12} {}",
            tier.as_str(),
            t.engine.topics.tiers[tier.index()]
        );
    }
    let _ = writeln!(s, "    dead letter  {}", t.engine.topics.dead_letter);
    let _ = writeln!(s, "    changelog    {}", t.changelog_topic());
    let _ = writeln!(
        s,
        "  Tier limits (every other event type reaches all three tiers):"
    );
    if g.tier_limits.is_empty() {
        let _ = writeln!(s, "    (none)");
    }
    for (event_type, tiers) in &g.tier_limits {
        let names: Vec<&str> = tiers.iter().map(|t| t.as_str()).collect();
        let _ = writeln!(s, "    {event_type} -> {}", names.join(", "));
    }
    let against = match overrides {
        OverrideEffects::Known { source, .. } if !source.is_empty() => {
            format!(", checked against {source}")
        }
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "  Overrides (classification.overrides: tier floors that raise a field's tier in every version of every schema, never lower it{against}):"
    );
    let lines = override_lines(t, overrides);
    if lines.is_empty() {
        let _ = writeln!(s, "    (none)");
    }
    for l in lines {
        let _ = writeln!(s, "    {l}");
    }
    let _ = writeln!(s, "  Settings:");
    for (k, v) in &g.settings {
        let _ = writeln!(s, "    {k}: {v}");
    }
    s
}

/// Makes text safe inside a quoted Mermaid label.
fn label(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

fn mermaid_id(name: &str) -> String {
    name.replace('-', "_")
}

/// The Mermaid form: a `flowchart LR` with topics as stadiums, stages as
/// boxes, the state store as a cylinder, and the overrides (if any) as a
/// note feeding the projections.
pub fn mermaid(t: &Topology, overrides: &OverrideEffects) -> String {
    let g = graph(t);
    let mut s = String::new();
    let _ = writeln!(s, "flowchart LR");
    let _ = writeln!(s, "  %% privacy-router topology: {}", label(&g.file));
    for (i, topic) in t.spec.input.topics.iter().enumerate() {
        let _ = writeln!(s, "  in_{i}([\"{}\"])", label(topic));
    }
    let _ = writeln!(
        s,
        "  subgraph app[\"{}: {}, commit every {} ms\"]",
        label(&g.application_id),
        label(g.setting("processing.guarantee")),
        label(g.setting("processing.commit_interval_ms")),
    );
    let _ = writeln!(s, "    direction LR");
    for n in g.nodes.iter().filter(|n| n.kind == NodeKind::Processor) {
        let extra = match n.name.as_str() {
            "decode" => "Avro or JSON".to_owned(),
            "validate" => "ids, versions, amounts, timestamps".to_owned(),
            "tier-check" => format!(
                "on_tier_mismatch: {}",
                g.setting("classification.on_tier_mismatch")
            ),
            "order" => format!("on_gap: {}", g.setting("ordering.on_gap")),
            "route" => format!("key entity_id; {}", g.setting("outputs.format")),
            _ => String::new(),
        };
        let title = n.name.replace('-', " ");
        if extra.is_empty() {
            let _ = writeln!(s, "    {}[\"{}\"]", mermaid_id(&n.name), label(&title));
        } else {
            let _ = writeln!(
                s,
                "    {}[\"{}<br/>{}\"]",
                mermaid_id(&n.name),
                label(&title),
                label(&extra)
            );
        }
    }
    let _ = writeln!(s, "    store[(\"{STORE_NAME}<br/>state store\")]");
    let lines = override_lines(t, overrides);
    if !lines.is_empty() {
        let _ = writeln!(
            s,
            "    overrides[/\"classification overrides<br/>{}\"/]",
            lines
                .iter()
                .map(|l| label(l))
                .collect::<Vec<_>>()
                .join("<br/>")
        );
    }
    let _ = writeln!(s, "  end");
    for n in g.nodes.iter().filter(|n| n.kind == NodeKind::Sink) {
        let _ = writeln!(
            s,
            "  {}([\"{}\"])",
            mermaid_id(&n.name),
            label(&n.topics.join(", "))
        );
    }
    // The store's edge to the changelog stands for the order stage's.
    for e in g.edges.iter().filter(|e| e.to != "sink-changelog") {
        let from = if e.from == "source" {
            None
        } else {
            Some(mermaid_id(&e.from))
        };
        let to = mermaid_id(&e.to);
        let arrow = match &e.label {
            Some(l) => format!("-->|\"{}\"|", label(l)),
            None => "-->".to_owned(),
        };
        match from {
            Some(f) => {
                let _ = writeln!(s, "  {f} {arrow} {to}");
            }
            None => {
                for i in 0..t.spec.input.topics.len() {
                    let _ = writeln!(s, "  in_{i} {arrow} {to}");
                }
            }
        }
    }
    let _ = writeln!(s, "  order --- store");
    if !lines.is_empty() {
        for tier in Tier::ALL {
            let _ = writeln!(s, "  overrides -.->|\"raise tiers\"| project_{tier}");
        }
    }
    let _ = writeln!(s, "  store -.->|\"changelog\"| sink_changelog");
    let _ = writeln!(s, "  classDef topic fill:#e8f0fe,stroke:#1a73e8");
    let _ = writeln!(s, "  classDef dlq fill:#fce8e6,stroke:#d93025");
    let _ = writeln!(s, "  classDef store fill:#fef7e0,stroke:#f9ab00");
    let topics: Vec<String> = (0..t.spec.input.topics.len())
        .map(|i| format!("in_{i}"))
        .chain(
            [
                "sink-public",
                "sink-internal",
                "sink-restricted",
                "sink-changelog",
            ]
            .iter()
            .map(|n| mermaid_id(n)),
        )
        .collect();
    let _ = writeln!(s, "  class {} topic", topics.join(","));
    let _ = writeln!(s, "  class {} dlq", mermaid_id(DLQ));
    let _ = writeln!(s, "  class store store");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topology(yaml: &str) -> Topology {
        Topology::parse(Path::new("t.yaml"), yaml).unwrap()
    }

    #[test]
    fn text_lists_every_topic_stage_and_setting() {
        let t = topology("event_types:\n  user.locked: {tiers: [restricted]}\n");
        let s = text(&t, &OverrideEffects::none());
        for needle in [
            "Source: source (topics: [events.raw])",
            "Processor: decode",
            "Processor: validate",
            "Processor: tier-check",
            "Processor: order (stores: [entity-versions])",
            "Processor: project-public",
            "Processor: project-internal",
            "Processor: project-restricted",
            "Processor: route",
            "Sink: sink-public (topic: events.public)",
            "Sink: sink-dead-letter (topic: events.dlq)",
            "Sink: sink-changelog (topic: privacy-router-entity-versions-changelog)",
            "user.locked -> restricted",
            "processing.guarantee: exactly_once",
            "processing.commit_interval_ms: 100",
            "processing.stream_threads: 1",
            "ordering.on_gap: emit",
            "classification.on_tier_mismatch: emit",
            "--> sink-public (all but user.locked)",
            "  Overrides (classification.overrides: tier floors that raise a field's tier in every version of every schema, never lower it):\n    (none)\n",
        ] {
            assert!(s.contains(needle), "{needle:?} missing:\n{s}");
        }
        assert_eq!(s, text(&t, &OverrideEffects::none()), "deterministic");
    }

    #[test]
    fn policies_decide_the_dead_letter_edges() {
        let emit = text(&topology(""), &OverrideEffects::none());
        assert!(!emit.contains("tier_mismatch)"));
        assert!(!emit.contains("version_gap)"));
        let dl = topology(
            "ordering: {on_gap: dead_letter}\nclassification: {on_tier_mismatch: dead_letter}\n",
        );
        let s = text(&dl, &OverrideEffects::none());
        assert!(s.contains("sink-dead-letter (tier_mismatch)"), "{s}");
        assert!(s.contains("sink-dead-letter (version_gap)"), "{s}");
        let m = mermaid(&dl, &OverrideEffects::none());
        assert!(
            m.contains("tier_check -->|\"tier_mismatch\"| sink_dead_letter"),
            "{m}"
        );
    }

    #[test]
    fn mermaid_is_a_flowchart_with_every_topic() {
        let t = topology("input: {topics: [a.raw, b.raw]}\napplication_id: app\n");
        let m = mermaid(&t, &OverrideEffects::none());
        assert!(m.starts_with("flowchart LR\n"));
        for needle in [
            "in_0([\"a.raw\"])",
            "in_1([\"b.raw\"])",
            "in_1 --> decode",
            "sink_changelog([\"app-entity-versions-changelog\"])",
            "sink_dead_letter([\"events.dlq\"])",
            "store[(",
        ] {
            assert!(m.contains(needle), "{needle:?} missing:\n{m}");
        }
    }

    #[test]
    fn a_producer_adapter_is_a_stage_before_decode() {
        let t = Topology::load(Path::new("topology/auth-identity.yaml")).unwrap();
        let text = text(&t, &OverrideEffects::none());
        assert!(text.contains("Processor: adapt"), "{text}");
        assert!(text.contains("ordered by the sequence"), "{text}");
        assert!(text.contains("--> adapt"), "{text}");
        let m = mermaid(&t, &OverrideEffects::none());
        assert!(m.contains("adapt"), "{m}");
        let plain = super::text(
            &Topology::load(Path::new("topology/default.yaml")).unwrap(),
            &OverrideEffects::none(),
        );
        assert!(!plain.contains("Processor: adapt"));
    }

    #[test]
    fn overrides_are_listed_with_what_they_change() {
        let t = topology(
            "classification:\n  overrides:\n    com.x.Data: {email: restricted, city: internal}\n",
        );
        let known = OverrideEffects::Known {
            source: "the folder avro".to_owned(),
            effects: vec![OverrideEffect {
                record: "com.x.Data".to_owned(),
                path: "email".to_owned(),
                tier: Tier::Restricted,
                uses: vec![super::super::OverrideUse {
                    event_type: "user.created".to_owned(),
                    version: 2,
                    schema_tier: Tier::Internal,
                    fields: vec!["data.email".to_owned()],
                }],
            }],
        };
        let s = text(&t, &known);
        assert!(
            s.contains("never lower it, checked against the folder avro):\n"),
            "{s}"
        );
        assert!(
            s.contains("    com.x.Data.city >= internal: not checked\n"),
            "{s}"
        );
        assert!(
            s.contains("    com.x.Data.email >= restricted: raises data.email from internal to restricted in user.created v2\n"),
            "{s}"
        );
        let s = text(
            &t,
            &OverrideEffects::Unknown("avro: no such folder".to_owned()),
        );
        assert!(
            s.contains("    com.x.Data.email >= restricted: what it changes is not known: avro: no such folder\n"),
            "{s}"
        );
        let m = mermaid(&t, &known);
        assert!(m.contains("    overrides[/\"classification overrides<br/>com.x.Data.city #gt;= internal: not checked<br/>"), "{m}");
        assert!(
            m.contains("  overrides -.->|\"raise tiers\"| project_public"),
            "{m}"
        );
        assert!(!mermaid(&topology(""), &OverrideEffects::none()).contains("overrides"));
    }
}
