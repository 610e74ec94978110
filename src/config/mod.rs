//! The topology file (`topology/*.yaml`) → a validated [`Topology`].
//!
//! Unknown keys are refused (a typo in a redaction rule must not become a
//! leak), and every problem — structural (unknown key, wrong type) and
//! semantic together — is reported at once with the file, the line and
//! column, and the key path of the bad value ([`yaml`]). What can only be
//! checked against the schemas (event types, overrides, tags) is
//! [`schemas::check`]. Runtime knobs (brokers, registry URL, secrets) are CLI
//! flags, not topology keys. What the engine takes from it is
//! [`EngineConfig`].

mod engine;
pub mod schemas;
pub mod yaml;

pub use engine::{
    EngineConfig, GapPolicy, HoldConfig, MismatchPolicy, OutputFormat, StalePolicy, Topics,
};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::adapt::{Adapter, AdapterConfig};
use crate::classify::{Overrides, Rules, TagMap};
use crate::record::{Tier, TopicName};
use crate::schema::{SubjectNaming, DEFAULT_SUBJECT_TEMPLATE};
use crate::validate::is_valid_event_type;

/// The processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs, dead letters, changelog and offsets in one transaction
    /// (Kafka Streams' spelling `exactly_once_v2` is accepted too).
    #[default]
    #[serde(alias = "exactly_once_v2")]
    ExactlyOnce,
    /// For brokers without transactions: outputs before offsets.
    AtLeastOnce,
}

/// The topology file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// Consumer group id and prefix of internal topics
    /// (`<application_id>-entity-versions-changelog`).
    #[serde(default = "default_application_id")]
    pub application_id: String,
    /// What is read.
    #[serde(default)]
    pub input: InputConfig,
    /// Where records go.
    #[serde(default)]
    pub outputs: OutputsConfig,
    /// Delivery guarantee and commit cadence.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// Per-entity ordering.
    #[serde(default)]
    pub ordering: OrderingConfig,
    /// Tag mapping and the declared-tier check.
    #[serde(default)]
    pub classification: ClassificationConfig,
    /// Where writer schemas are found.
    #[serde(default)]
    pub schemas: SchemasConfig,
    /// Settings for single event types.
    #[serde(default)]
    pub event_types: BTreeMap<String, EventTypeConfig>,
    /// Producers that do not write the canonical envelope: per adapter, the
    /// input topics it reads and how their events map onto the envelope.
    #[serde(default)]
    pub adapters: BTreeMap<String, AdapterConfig>,
}

fn default_application_id() -> String {
    "privacy-router".to_owned()
}

/// What is read: Kafka topics, and optionally one NATS JetStream stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Raw topics, read as one consumer group (may be empty when
    /// `nats_jetstream` is set).
    #[serde(default = "default_input_topics")]
    pub topics: Vec<String>,
    /// A JetStream stream read as one more input (an input of kind
    /// `nats_jetstream`); servers and credentials are flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_jetstream: Option<NatsInputConfig>,
}

impl InputConfig {
    /// The names records arrive under: every Kafka topic, then the NATS
    /// input's subject. Adapters, subject names and metrics use them.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.topics.clone();
        names.extend(self.nats_jetstream.iter().map(|n| n.subject.clone()));
        names
    }
}

/// A NATS JetStream input: one stream, one subject, read in stream order
/// by exactly one instance of the group (the owner of the lease topic's
/// only partition, see [`Topology::lease_topic`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsInputConfig {
    /// The JetStream stream (`USER_EVENTS`).
    pub stream: String,
    /// The subject read from it: one literal subject (no wildcards). It
    /// names this input as a topic name does a Kafka input's: adapters list
    /// it, subject names and dead letters' `x-source-topic` carry it.
    pub subject: String,
    /// The durable consumer privacy-router keeps on the stream, acknowledged
    /// after each commit (default: the application id, with '.' as '_').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

impl NatsInputConfig {
    /// The durable consumer's name.
    pub fn consumer_name(&self, application_id: &str) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| application_id.replace('.', "_"))
    }
}

fn default_input_topics() -> Vec<String> {
    vec!["events.raw".to_owned()]
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            topics: default_input_topics(),
            nats_jetstream: None,
        }
    }
}

/// Output topics and format.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// Topic of the public tier (no PII at all).
    #[serde(default = "default_public")]
    pub public: String,
    /// Topic of the internal tier (internal ids, no email/phone/IP).
    #[serde(default = "default_internal")]
    pub internal: String,
    /// Topic of the restricted tier (everything).
    #[serde(default = "default_restricted")]
    pub restricted: String,
    /// Dead-letter topic (holds raw PII: restricted).
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    /// `avro` (Confluent wire format, default) or `json`.
    #[serde(default)]
    pub format: OutputFormat,
}

fn default_public() -> String {
    "events.public".to_owned()
}
fn default_internal() -> String {
    "events.internal".to_owned()
}
fn default_restricted() -> String {
    "events.restricted".to_owned()
}
fn default_dead_letter() -> String {
    "events.dlq".to_owned()
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            public: default_public(),
            internal: default_internal(),
            restricted: default_restricted(),
            dead_letter: default_dead_letter(),
            format: OutputFormat::default(),
        }
    }
}

/// Delivery settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// `exactly_once` (default) or `at_least_once`.
    #[serde(default)]
    pub guarantee: Guarantee,
    /// How often the open transaction is committed, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Stream threads per instance (Kafka Streams' `num.stream.threads`):
    /// each owns its partitions, its transactional producer and their
    /// state. `run --stream-threads` overrides it.
    #[serde(default = "default_stream_threads")]
    pub stream_threads: u16,
}

fn default_commit_interval_ms() -> u64 {
    100
}

fn default_stream_threads() -> u16 {
    1
}

/// The most stream threads one instance runs.
pub const MAX_STREAM_THREADS: u16 = 32;

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            guarantee: Guarantee::default(),
            commit_interval_ms: default_commit_interval_ms(),
            stream_threads: default_stream_threads(),
        }
    }
}

/// Ordering settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderingConfig {
    /// `emit` (default, with an `x-version-gap` header), `dead_letter` or
    /// `hold` (for the reorder window).
    #[serde(default)]
    pub on_gap: GapPolicy,
    /// `hold`: how long an event ahead of its entity's next version waits
    /// for the missing ones, in stream time (and wall-clock time as a
    /// backstop), in milliseconds.
    #[serde(default = "default_reorder_window_ms")]
    pub reorder_window_ms: u64,
    /// `hold`: at most this many events held per partition; beyond it the
    /// oldest are emitted as gaps.
    #[serde(default = "default_max_held")]
    pub max_held_per_partition: u64,
    /// `skip` (default) or `dead_letter`: what happens to an event older
    /// than its entity's last emitted version.
    #[serde(default)]
    pub on_stale: StalePolicy,
}

fn default_reorder_window_ms() -> u64 {
    HoldConfig::default().window_ms as u64
}

fn default_max_held() -> u64 {
    HoldConfig::default().max_held as u64
}

impl Default for OrderingConfig {
    fn default() -> Self {
        OrderingConfig {
            on_gap: GapPolicy::default(),
            reorder_window_ms: default_reorder_window_ms(),
            max_held_per_partition: default_max_held(),
            on_stale: StalePolicy::default(),
        }
    }
}

/// Classification settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationConfig {
    /// Confluent tag → tier (default `PII: restricted, INTERNAL: internal,
    /// PUBLIC: public`). Replaces the default map when given.
    #[serde(default)]
    pub tags: TagMap,
    /// `emit` (default: count, log and route) or `dead_letter`.
    #[serde(default)]
    pub on_tier_mismatch: MismatchPolicy,
    /// Compliance's tier floors: per record full name, per field path in
    /// that record, the lowest tier the field may have in every version of
    /// every schema that has it. Only raises a tier; an override below what
    /// a schema says is refused.
    #[serde(default)]
    pub overrides: Overrides,
}

/// Schema lookup settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemasConfig {
    /// Subject of a JSON event's schema; `{topic}`, `{event_type}`,
    /// `{domain}` and `{Type}` are filled in.
    #[serde(default = "default_subject_template")]
    pub subject_template: String,
    /// Folder of the file registry (used when no registry URL is given),
    /// relative to the working directory: `envelope.avsc` and
    /// `events/<domain>/<event_type>.avsc`. `--schemas` overrides it.
    #[serde(default = "default_schemas_folder")]
    pub folder: PathBuf,
}

fn default_subject_template() -> String {
    DEFAULT_SUBJECT_TEMPLATE.to_owned()
}

fn default_schemas_folder() -> PathBuf {
    PathBuf::from("avro")
}

impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig {
            subject_template: default_subject_template(),
            folder: default_schemas_folder(),
        }
    }
}

/// Settings for one event type.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeConfig {
    /// The only tiers it reaches (e.g. `[restricted]` for security events).
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
    /// Its subject, overriding the template.
    #[serde(default)]
    pub subject: Option<String>,
    /// Producer `schema_version` → subject version, where the two are
    /// numbered differently. With a map, only the mapped versions are read;
    /// without one, subject version = `schema_version`.
    #[serde(default)]
    pub versions: Option<BTreeMap<u32, u32>>,
}

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the bad value, e.g. `outputs.public`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Where in the file, when known.
    pub place: Option<yaml::Place>,
}

impl Problem {
    /// A problem at `path`, place unknown.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
            place: None,
        }
    }
}

/// Every problem found in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// The file.
    pub file: PathBuf,
    /// The problems, in file order where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem(s) in the topology:",
            self.file.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            match p.place {
                Some(at) => writeln!(
                    f,
                    "  - {}:{at}: {}: {}",
                    self.file.display(),
                    p.path,
                    p.message
                )?,
                None => writeln!(f, "  - {}: {}", p.path, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for TopologyError {}

/// A validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The file it came from.
    pub file: PathBuf,
    /// As written (defaults filled in).
    pub spec: TopologyFile,
    /// What the engine needs.
    pub engine: Arc<EngineConfig>,
    /// Where each key and value stands in the file.
    located: Arc<yaml::Located>,
}

impl Topology {
    /// Where the value at a key path (`event_types.user.created`) stands in
    /// the file, or its nearest enclosing key's.
    pub fn place(&self, path: &str) -> Option<yaml::Place> {
        self.located.key_place(path)
    }

    /// True when the file itself writes the key at `path` (not a default).
    pub fn writes(&self, path: &str) -> bool {
        self.located.has(path)
    }

    /// The changelog topic of the version store.
    pub fn changelog_topic(&self) -> String {
        format!("{}-entity-versions-changelog", self.spec.application_id)
    }

    /// The lease topic of a NATS input (`<application_id>-jetstream-lease`,
    /// one partition, never written): the group member it is assigned to
    /// reads the stream, so exactly one instance does at a time, and its
    /// transactions commit an offset of it, so a fenced member's cannot
    /// commit (KIP-447).
    pub fn lease_topic(&self) -> Option<String> {
        self.spec
            .input
            .nats_jetstream
            .as_ref()
            .map(|_| format!("{}-jetstream-lease", self.spec.application_id))
    }

    /// Reads and validates a topology file.
    ///
    /// # Errors
    /// A [`TopologyError`] listing every problem.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError {
            file: path.to_owned(),
            problems: vec![Problem::new("<file>", e.to_string())],
        })?;
        Self::parse(path, &text)
    }

    /// Validates topology text; `path` is only used in messages.
    ///
    /// # Errors
    /// A [`TopologyError`] listing every problem.
    pub fn parse(path: &Path, text: &str) -> Result<Topology, TopologyError> {
        match Self::parse_lenient(path, text) {
            (Some(t), problems) if problems.is_empty() => Ok(t),
            (_, problems) => Err(TopologyError {
                file: path.to_owned(),
                problems,
            }),
        }
    }

    /// Reads a topology file as far as it can be read, for `check`: every
    /// problem (as [`Topology::load`] reports them), and the topology with
    /// each value at fault for a structural problem replaced by its default
    /// — `None` when the file cannot be read or is not YAML. Semantic
    /// problems leave their values as written. Never run what this returns
    /// with problems: it is for reporting what else is wrong at once.
    pub fn load_lenient(path: &Path) -> (Option<Topology>, Vec<Problem>) {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_lenient(path, &text),
            Err(e) => (None, vec![Problem::new("<file>", e.to_string())]),
        }
    }

    /// [`Topology::load_lenient`] over text; `path` is only used in
    /// messages.
    pub fn parse_lenient(path: &Path, text: &str) -> (Option<Topology>, Vec<Problem>) {
        let mut located = match yaml::Located::parse(text) {
            Ok(l) => l,
            Err(message) => return (None, vec![Problem::new("<yaml>", message)]),
        };
        let mut structural = Vec::new();
        let spec: Option<TopologyFile> = located.read(&mut structural);
        let mut problems: Vec<Problem> = structural
            .into_iter()
            .map(|p| {
                let place = if p.message.starts_with("unknown key") {
                    located.key_place(&p.path)
                } else {
                    located.place(&p.path)
                };
                Problem {
                    message: with_suggestion(&p.path, &p.message),
                    path: p.path,
                    place,
                }
            })
            .collect();
        let Some(spec) = spec else {
            return (None, problems);
        };
        let mut semantic = check(&spec);
        let adapters = build_adapters(&spec, &mut semantic);
        // A value taken out for a structural problem is read as its default;
        // what the semantic checks then say about that path is not news, nor
        // about a list that lost an item (`tiers: [secret]` is one mistake,
        // not also an empty list).
        let structural: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
        for mut p in semantic {
            let follows = structural.iter().any(|s| {
                p.path == *s
                    || p.path
                        .strip_prefix(s.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
                    || s.strip_prefix(p.path.as_str())
                        .is_some_and(|rest| rest.starts_with('['))
            });
            if follows {
                continue;
            }
            p.place = p.place.or_else(|| located.key_place(&p.path));
            problems.push(p);
        }
        // File order; problems without a place (there are none in a file
        // that parsed) last, in the order found.
        problems.sort_by_key(|p| {
            p.place
                .map_or((u64::MAX, u64::MAX), |at| (at.line, at.column))
        });
        let engine = Arc::new(engine_config(&spec, adapters));
        let topology = Topology {
            file: path.to_owned(),
            spec,
            engine,
            located: Arc::new(located),
        };
        (Some(topology), problems)
    }

    /// The default topology (what an empty file gives).
    pub fn default_embedded() -> Topology {
        Self::parse(Path::new("<default>"), "").expect("the default topology is valid")
    }
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check(spec: &TopologyFile) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| problems.push(Problem::new(path, message));
    if !valid_topic(&spec.application_id) {
        problem(
            "application_id",
            "must be 1-249 characters of letters, digits, '.', '_' or '-'".to_owned(),
        );
    }
    if spec.input.topics.is_empty() && spec.input.nats_jetstream.is_none() {
        problem(
            "input.topics",
            "needs at least one topic (or an input.nats_jetstream)".to_owned(),
        );
    }
    if let Some(nats) = &spec.input.nats_jetstream {
        if nats.stream.is_empty()
            || !nats
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            problem(
                "input.nats_jetstream.stream",
                "is not a JetStream stream name (letters, digits, '_' and '-')".to_owned(),
            );
        }
        let literal = !nats.subject.is_empty()
            && nats.subject.len() <= 249
            && nats.subject.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !literal {
            problem(
                "input.nats_jetstream.subject",
                "must be one literal subject of letters, digits, '_' and '-' in \
                 dot-separated tokens (no wildcards: it names the input the way a topic does)"
                    .to_owned(),
            );
        } else if spec.input.topics.contains(&nats.subject) {
            problem(
                "input.nats_jetstream.subject",
                "is also one of input.topics: an input name must be unique".to_owned(),
            );
        }
        if let Some(c) = &nats.consumer {
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                problem(
                    "input.nats_jetstream.consumer",
                    "is not a durable consumer name (letters, digits, '_' and '-')".to_owned(),
                );
            }
        }
    }
    let mut seen: HashMap<&str, String> = HashMap::new();
    let outputs = [
        ("outputs.public", spec.outputs.public.as_str()),
        ("outputs.internal", spec.outputs.internal.as_str()),
        ("outputs.restricted", spec.outputs.restricted.as_str()),
        ("outputs.dead_letter", spec.outputs.dead_letter.as_str()),
    ];
    let inputs = spec
        .input
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("input.topics[{i}]"), t.as_str()));
    for (path, topic) in inputs.chain(outputs.iter().map(|(p, t)| ((*p).to_owned(), *t))) {
        if !valid_topic(topic) {
            problem(
                &path,
                "is not a valid topic name (1-249 characters of letters, digits, '.', '_' or '-')"
                    .to_owned(),
            );
        } else if let Some(other) = seen.get(topic) {
            problem(
                &path,
                format!("is the same topic as {other}; every topic must be distinct"),
            );
        } else {
            seen.insert(topic, path.clone());
        }
    }
    if spec.processing.commit_interval_ms == 0 || spec.processing.commit_interval_ms > 60_000 {
        problem(
            "processing.commit_interval_ms",
            "must be between 1 and 60000".to_owned(),
        );
    }
    if !(1..=3_600_000).contains(&spec.ordering.reorder_window_ms) {
        problem(
            "ordering.reorder_window_ms",
            "must be between 1 and 3600000 (an hour)".to_owned(),
        );
    }
    if !(1..=1_000_000).contains(&spec.ordering.max_held_per_partition) {
        problem(
            "ordering.max_held_per_partition",
            "must be between 1 and 1000000".to_owned(),
        );
    }
    if !(1..=MAX_STREAM_THREADS).contains(&spec.processing.stream_threads) {
        problem(
            "processing.stream_threads",
            format!("must be between 1 and {MAX_STREAM_THREADS}"),
        );
    }
    check_template(
        &spec.schemas.subject_template,
        "schemas.subject_template",
        &mut problem,
    );
    for (event_type, cfg) in &spec.event_types {
        let base = format!("event_types.{event_type}");
        if !is_valid_event_type(event_type) {
            problem(
                &base,
                "is not an event type (^[a-z]+\\.[a-z_]+$)".to_owned(),
            );
        }
        if let Some(tiers) = &cfg.tiers {
            if tiers.is_empty() {
                problem(
                    &format!("{base}.tiers"),
                    "is empty: the event would reach no topic; list at least one tier".to_owned(),
                );
            }
        }
        if let Some(subject) = &cfg.subject {
            check_template(subject, &format!("{base}.subject"), &mut problem);
        }
        for (from, to) in cfg.versions.iter().flatten() {
            if *from == 0 || *to == 0 {
                problem(
                    &format!("{base}.versions.{from}"),
                    "versions start at 1 (schema_version and subject versions alike)".to_owned(),
                );
            }
        }
    }
    for (record, fields) in &spec.classification.overrides.0 {
        let base = format!("classification.overrides.{record}");
        if record.is_empty() || record.split('.').any(|part| part.is_empty()) {
            problem(
                &base,
                "is not a record full name (e.g. com.example.UserCreated)".to_owned(),
            );
        }
        if fields.is_empty() {
            problem(&base, "names no field path".to_owned());
        }
        for path in fields.keys() {
            if path.is_empty() || path.split('.').any(|part| part.is_empty()) {
                problem(
                    &format!("{base}.{path}"),
                    "is not a field path (field names joined by '.')".to_owned(),
                );
            }
        }
    }
    if spec.schemas.folder.as_os_str().is_empty() {
        problem("schemas.folder", "is empty".to_owned());
    }
    let input_names = spec.input.names();
    let mut claimed: HashMap<&str, &str> = HashMap::new();
    for (name, adapter) in &spec.adapters {
        let base = format!("adapters.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            problem(
                &base,
                "is not an adapter name (lowercase letters, digits, '_' and '-')".to_owned(),
            );
        }
        for (i, topic) in adapter.topics.iter().enumerate() {
            let path = format!("{base}.topics[{i}]");
            if !input_names.contains(topic) {
                problem(
                    &path,
                    "is not one of input.topics (nor the input.nats_jetstream subject)".to_owned(),
                );
            } else if let Some(other) = claimed.insert(topic, name) {
                problem(
                    &path,
                    format!("is already read by the adapter {other}; a topic has one adapter"),
                );
            }
        }
        for (producer_type, event_type) in &adapter.event_types {
            if !is_valid_event_type(event_type) {
                problem(
                    &format!("{base}.event_types.{producer_type}"),
                    "is not a canonical event type (^[a-z]+\\.[a-z_]+$)".to_owned(),
                );
            }
        }
    }
    problems
}

/// Builds every adapter, adding the problems of those that cannot be built.
fn build_adapters(spec: &TopologyFile, problems: &mut Vec<Problem>) -> Vec<(String, Arc<Adapter>)> {
    let mut built = Vec::new();
    for (name, adapter) in &spec.adapters {
        match adapter.build(name) {
            Ok(a) => built.push((name.clone(), Arc::new(a))),
            Err(ps) => {
                problems.extend(ps.into_iter().map(|(path, message)| {
                    Problem::new(format!("adapters.{name}.{path}"), message)
                }))
            }
        }
    }
    built
}

/// A serde message with a "did you mean" for an unknown key or variant.
fn with_suggestion(path: &str, message: &str) -> String {
    let expected: Vec<&str> = message
        .split_once("expected ")
        .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let got = if message.starts_with("unknown key") {
        path.rsplit('.').next().unwrap_or(path).to_owned()
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        rest.split('`').next().unwrap_or_default().to_owned()
    } else {
        return message.to_owned();
    };
    match did_you_mean(&got, expected.iter().copied()) {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message.to_owned(),
    }
}

/// The candidate closest to `word`, if one is close enough to be a likely
/// misspelling of it.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (word.len().max(c.len()) / 3).max(2))
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

fn check_template(template: &str, path: &str, problem: &mut impl FnMut(&str, String)) {
    if template.is_empty() {
        problem(path, "is empty".to_owned());
        return;
    }
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            problem(path, "has an unclosed '{'".to_owned());
            return;
        };
        let name = &rest[start + 1..start + end];
        if !matches!(name, "topic" | "event_type" | "domain" | "Type") {
            problem(
                path,
                format!("uses {{{name}}}; the placeholders are {{topic}}, {{event_type}}, {{domain}} and {{Type}}"),
            );
        }
        rest = &rest[start + end + 1..];
    }
}

fn engine_config(spec: &TopologyFile, adapters: Vec<(String, Arc<Adapter>)>) -> EngineConfig {
    let o = &spec.outputs;
    let by_name: HashMap<String, Arc<Adapter>> = adapters.into_iter().collect();
    EngineConfig {
        topics: Topics {
            tiers: [
                TopicName::new(&o.public),
                TopicName::new(&o.internal),
                TopicName::new(&o.restricted),
            ],
            dead_letter: TopicName::new(&o.dead_letter),
        },
        format: o.format,
        on_gap: spec.ordering.on_gap,
        hold: HoldConfig {
            window_ms: spec.ordering.reorder_window_ms as i64,
            max_held: spec.ordering.max_held_per_partition as usize,
        },
        on_stale: spec.ordering.on_stale,
        on_tier_mismatch: spec.classification.on_tier_mismatch,
        rules: Rules {
            tags: spec.classification.tags.clone(),
            overrides: spec.classification.overrides.clone(),
        },
        subjects: SubjectNaming {
            template: spec.schemas.subject_template.clone(),
            overrides: spec
                .event_types
                .iter()
                .filter_map(|(t, c)| c.subject.clone().map(|s| (t.clone(), s)))
                .collect(),
            versions: spec
                .event_types
                .iter()
                .filter_map(|(t, c)| c.versions.clone().map(|v| (t.clone(), v)))
                .collect(),
        },
        tier_limits: spec
            .event_types
            .iter()
            .filter_map(|(t, c)| {
                c.tiers
                    .as_ref()
                    .map(|tiers| (t.clone(), tiers.iter().copied().collect()))
            })
            .collect(),
        adapters: spec
            .adapters
            .iter()
            .flat_map(|(name, a)| {
                let adapter = by_name.get(name).cloned();
                a.topics
                    .iter()
                    .filter_map(move |t| Some((Arc::from(t.as_str()), adapter.clone()?)))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let t = Topology::default_embedded();
        assert_eq!(t.spec.input.topics, ["events.raw"]);
        assert_eq!(&*t.engine.topics.tiers[0], "events.public");
        assert_eq!(
            t.changelog_topic(),
            "privacy-router-entity-versions-changelog"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Topology::parse(Path::new("t.yaml"), "outputs:\n  pubic: x\n").unwrap_err();
        assert!(err.to_string().contains("pubic"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "
outputs:
  public: events.same
  internal: events.same
  dead_letter: 'bad topic'
processing:
  commit_interval_ms: 0
  stream_threads: 0
schemas:
  subject_template: '{topic}-{nope}'
event_types:
  User.Created: {tiers: []}
";
        let err = Topology::parse(Path::new("t.yaml"), text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "outputs.internal",
                "outputs.dead_letter",
                "processing.commit_interval_ms",
                "processing.stream_threads",
                "schemas.subject_template",
                "event_types.User.Created",
                "event_types.User.Created.tiers"
            ],
            "{err}"
        );
        assert!(err.to_string().starts_with("t.yaml: 7 problem(s)"));
    }

    #[test]
    fn a_nats_input_needs_one_literal_subject_of_its_own_and_names_the_input() {
        let ok = Topology::parse(
            Path::new("t.yaml"),
            "application_id: app.one\ninput:\n  topics: []\n  nats_jetstream: {stream: USER_EVENTS, subject: user.events}\n",
        )
        .unwrap();
        assert_eq!(ok.spec.input.names(), ["user.events"]);
        assert_eq!(ok.lease_topic().as_deref(), Some("app.one-jetstream-lease"));
        let nats = ok.spec.input.nats_jetstream.as_ref().unwrap();
        assert_eq!(nats.consumer_name("app.one"), "app_one");
        for (input, path) in [
            (
                "  nats_jetstream: {stream: USER_EVENTS, subject: 'user.*'}",
                "input.nats_jetstream.subject",
            ),
            (
                "  nats_jetstream: {stream: USER_EVENTS, subject: 'user.>'}",
                "input.nats_jetstream.subject",
            ),
            (
                "  nats_jetstream: {stream: USER_EVENTS, subject: 'user..events'}",
                "input.nats_jetstream.subject",
            ),
            (
                "  nats_jetstream: {stream: USER.EVENTS, subject: user.events}",
                "input.nats_jetstream.stream",
            ),
            (
                "  nats_jetstream: {stream: U, subject: a.b, consumer: 'c d'}",
                "input.nats_jetstream.consumer",
            ),
        ] {
            let text = format!("input:\n  topics: []\n{input}\n");
            let err = Topology::parse(Path::new("t.yaml"), &text).unwrap_err();
            let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
            assert_eq!(paths, [path], "{input}: {err}");
        }
        // Its subject may not also be a Kafka input's name.
        let err = Topology::parse(
            Path::new("t.yaml"),
            "input:\n  topics: [user.events]\n  nats_jetstream: {stream: S, subject: user.events}\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("input name must be unique"),
            "{err}"
        );
        // No input at all is refused; the NATS input alone is enough.
        let err = Topology::parse(Path::new("t.yaml"), "input:\n  topics: []\n").unwrap_err();
        assert!(err.to_string().contains("input.topics"), "{err}");
        // An adapter may read the NATS input.
        Topology::parse(
            Path::new("t.yaml"),
            "input:\n  topics: []\n  nats_jetstream: {stream: S, subject: user.events}\nadapters:\n  a:\n    topics: [user.events]\n    type_field: action\n    event_types: {created: identity.created}\n    envelope:\n      event_id: {uuid_from: ['$']}\n      entity_type: {const: user}\n      entity_id: {path: id}\n      occurred_at: {path: timestamp}\n      producer: {const: p}\n      actor: {const: {actor_type: SYSTEM}}\n      schema_version: {const: 1}\n      privacy_tier: {const: restricted}\n      data: {path: '$'}\n    ordering: off\n",
        )
        .unwrap();
    }

    #[test]
    fn every_shipped_topology_loads() {
        for file in std::fs::read_dir("topology").unwrap() {
            let path = file.unwrap().path();
            let t = Topology::load(&path).unwrap_or_else(|e| panic!("{e}"));
            for (name, adapter) in &t.spec.adapters {
                for topic in &adapter.topics {
                    assert!(
                        t.engine.adapters.contains_key(topic.as_str()),
                        "{}: {name} does not read {topic}",
                        path.display()
                    );
                }
            }
        }
        let t = Topology::load(Path::new("topology/auth-identity.yaml")).unwrap();
        assert_eq!(
            t.spec.schemas.folder,
            Path::new("avro/producers/auth-identity")
        );
        assert_eq!(t.engine.adapters.len(), 1);
        assert_eq!(
            Topology::default_embedded().spec.schemas.folder,
            Path::new("avro")
        );
        assert!(Topology::default_embedded().engine.adapters.is_empty());
    }

    #[test]
    fn broken_adapters_are_refused_with_every_problem() {
        let adapter = |topics: &str, extra: &str| {
            format!(
                "    topics: {topics}
    type_field: type
    event_types: {{A: a.b{extra}}}
    envelope:
      event_id: {{path: id}}
      entity_type: {{const: user}}
      entity_id: {{path: id}}
      occurred_at: {{path: at}}
      producer: {{const: p}}
      actor: {{const: {{actor_type: SYSTEM}}}}
      schema_version: {{const: 1}}
      privacy_tier: {{const: internal}}
      data: {{path: payload}}
    ordering: off
"
            )
        };
        let text = format!(
            "input:
  topics: [a.events, b.events]
schemas:
  folder: ''
adapters:
  first:
{}  Second:
{}  third:
    topics: [b.events]
    event_types: {{A: a.b}}
    ordering: {{sequence: {{field: seq, when_missing: dead_letter}}}}
",
            adapter("[a.events, c.events]", ""),
            adapter("[a.events]", ", B: Not.Valid"),
        );
        let err = Topology::parse(Path::new("t.yaml"), &text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            // In file order; Second claimed the topic (adapters are checked
            // in name order) though first is written above it.
            [
                "schemas.folder",
                "adapters.first.topics[0]",
                "adapters.first.topics[1]",
                "adapters.Second",
                "adapters.Second.event_types.B",
                "adapters.third.type_field",
                "adapters.third.envelope.event_id",
                "adapters.third.envelope.entity_type",
                "adapters.third.envelope.entity_id",
                "adapters.third.envelope.occurred_at",
                "adapters.third.envelope.producer",
                "adapters.third.envelope.actor",
                "adapters.third.envelope.schema_version",
                "adapters.third.envelope.privacy_tier",
                "adapters.third.envelope.data",
            ],
            "{err}"
        );
        assert!(
            err.to_string().contains("is already read by the adapter"),
            "{err}"
        );
        let typo = "adapters:\n  x:\n    topics: [events.raw]\n    envelop: {}\n";
        let err = Topology::parse(Path::new("t.yaml"), typo).unwrap_err();
        assert!(err.to_string().contains("envelop"), "{err}");
    }
}
