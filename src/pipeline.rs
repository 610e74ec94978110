//! The pure entry point: one raw record in, what to emit out.
//!
//! [`Engine::process`] chains the stages — (adapt →) decode → validate →
//! tier check → order → project → route — over a [`VersionStore`] and a
//! [`SchemaLookup`] handed in by the caller. The adapt stage runs only for
//! input topics whose topology declares an adapter ([`crate::adapt`]).
//!
//! It needs no Kafka: `replay`, the tests and the benchmarks call it
//! directly, and the Kafka runtime calls it per record.
//!
//! Bad input never fails the call: it comes back as a dead letter, and so
//! does an event whose derived tier schema the registry refuses
//! (`derived_schema_rejected`: every other event type keeps flowing). Only a
//! registry that cannot be reached ([`EngineError::Transient`]: retry the same
//! record later, skip nothing) or that refuses the processor itself (401,
//! 403: [`EngineError::Fatal`]) is an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::adapt::Adapter;
use crate::classify::Rules;
use crate::order::{entity_key, sequence_key, sequence_verdict, verdict, Verdict, VersionStore};
use crate::project::{derived_schema, encode_projections, redacted_fields, Hasher, NoHashKey};
use crate::record::{Datum, OrderBy, OutRecord, RawRecord, Reason, Rejection, Tier};
use crate::route::{dead_letter, event_routing, start_value, tier_record, Framing};
use crate::schema::{binary, json, max_present_tier, CompiledSchema, Envelope};
use crate::validate::{is_valid_event_type, validate};

/// What a registry call can fail with, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LookupError {
    /// The id or subject does not exist (poison: dead-letter the record).
    #[error("not found in the schema registry")]
    NotFound,
    /// The registry cannot be reached or answered 5xx (transient: wait and
    /// retry, skip nothing).
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
    /// The registry refused this schema: incompatible with the subject's
    /// earlier versions (409) or invalid (422). The events that need it are
    /// dead-lettered; nothing else stops.
    #[error("the schema registry refused the schema: {0}")]
    Refused(String),
    /// The registry refused the request itself (401, 403, another 4xx): an
    /// operator must act (fatal).
    #[error("the schema registry refused the request: {0}")]
    Rejected(String),
}

/// A schema registry as the pipeline uses it. The engine caches what it gets,
/// so each id or subject is looked up once.
pub trait SchemaLookup {
    /// The schema text registered under a global id.
    ///
    /// # Errors
    /// [`LookupError`]
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError>;

    /// The latest version of a subject: its id and text.
    ///
    /// # Errors
    /// [`LookupError`]
    fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError>;

    /// One version of a subject (1, 2, …): its id and text.
    ///
    /// # Errors
    /// [`LookupError::NotFound`] when the subject or the version does not
    /// exist.
    fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError>;

    /// Every subject, sorted.
    ///
    /// # Errors
    /// [`LookupError`]
    fn subjects(&mut self) -> Result<Vec<String>, LookupError>;

    /// The versions of a subject, ascending.
    ///
    /// # Errors
    /// [`LookupError::NotFound`] when the subject does not exist.
    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError>;

    /// Registers a schema under a subject (idempotent) and returns its id.
    ///
    /// # Errors
    /// [`LookupError`]
    fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError>;
}

/// What happens to an event that skips versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapPolicy {
    /// Emit it with an `x-version-gap` header (default).
    #[default]
    Emit,
    /// Dead-letter it with reason `version_gap`; the entity's state stays.
    DeadLetter,
}

/// What happens to an event holding data above its declared tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchPolicy {
    /// Count and log it, and route it: projection removes what each tier may
    /// not see whatever the declaration says (default).
    #[default]
    Emit,
    /// Dead-letter it with reason `tier_mismatch` instead of routing it.
    DeadLetter,
}

/// How tier records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Avro in Confluent wire format, with the derived schema registered
    /// under `<tier topic>-<record name>` (default).
    #[default]
    Avro,
    /// Plain JSON of the projected value.
    Json,
}

/// How a JSON event's `event_type` maps to a registry subject, and its
/// `schema_version` to a version of that subject.
///
/// The template may use `{topic}` (input topic), `{event_type}`, `{domain}`
/// (the part before the dot) and `{Type}` (the event type in PascalCase:
/// `user.login_failed` → `UserLoginFailed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectNaming {
    /// The template used unless an event type overrides it.
    pub template: String,
    /// Subjects (templates too) for single event types.
    pub overrides: HashMap<String, String>,
    /// Per event type, producer `schema_version` → subject version, where
    /// the two are numbered differently. An event type with a map reads only
    /// the versions it maps; every other event type reads subject version
    /// `schema_version`.
    pub versions: HashMap<String, BTreeMap<u32, u32>>,
}

/// The default subject template: topic-record naming with our namespace.
pub const DEFAULT_SUBJECT_TEMPLATE: &str = "{topic}-com.privacyrouter.events.{domain}.{Type}";

impl Default for SubjectNaming {
    fn default() -> Self {
        SubjectNaming {
            template: DEFAULT_SUBJECT_TEMPLATE.to_owned(),
            overrides: HashMap::new(),
            versions: HashMap::new(),
        }
    }
}

/// `user.login_failed` → `UserLoginFailed`.
pub fn pascal_case(event_type: &str) -> String {
    event_type
        .split(['.', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

impl SubjectNaming {
    /// The subject of an event type read from `topic`.
    pub fn subject(&self, topic: &str, event_type: &str) -> String {
        let template = self.overrides.get(event_type).unwrap_or(&self.template);
        let domain = event_type.split('.').next().unwrap_or_default();
        template
            .replace("{topic}", topic)
            .replace("{event_type}", event_type)
            .replace("{domain}", domain)
            .replace("{Type}", &pascal_case(event_type))
    }

    /// The subject version a JSON event of `event_type` with
    /// `schema_version` is read with; `None` when the topology maps this
    /// event type's versions and not this one.
    pub fn subject_version(&self, event_type: &str, schema_version: u32) -> Option<u32> {
        match self.versions.get(event_type) {
            Some(map) => map.get(&schema_version).copied(),
            None => Some(schema_version),
        }
    }

    /// The event type whose subject (read from `topic`) is `subject`, if
    /// any: the inverse of [`SubjectNaming::subject`]. Candidates are read
    /// off the subject (an event type written out, or a PascalCase name
    /// split back into domain and type) and each is checked by producing
    /// the subject again, so a wrong guess is never returned.
    pub fn event_type_of(&self, topic: &str, subject: &str) -> Option<String> {
        let fits = |t: &str| is_valid_event_type(t) && self.subject(topic, t) == subject;
        if let Some(t) = self.overrides.keys().find(|t| fits(t)) {
            return Some(t.clone());
        }
        let bytes = subject.as_bytes();
        let lower = |b: u8| b.is_ascii_lowercase() || b == b'_' || b == b'.';
        // `{event_type}` written out: a maximal run of [a-z_.] or part of one.
        let mut i = 0;
        while i < bytes.len() {
            if !lower(bytes[i]) {
                i += 1;
                continue;
            }
            let run_end = (i..bytes.len())
                .find(|&j| !lower(bytes[j]))
                .unwrap_or(bytes.len());
            for a in i..run_end {
                for b in a + 3..=run_end {
                    if fits(&subject[a..b]) {
                        return Some(subject[a..b].to_owned());
                    }
                }
            }
            i = run_end;
        }
        // `{Type}` (with or without `{domain}`): a PascalCase word, split at
        // each word boundary into domain and type.
        for word in subject.split(|c: char| !c.is_ascii_alphanumeric()) {
            if !word.starts_with(|c: char| c.is_ascii_uppercase()) {
                continue;
            }
            let snake = snake_words(word);
            for (at, _) in snake.match_indices('_') {
                let t = format!("{}.{}", &snake[..at], &snake[at + 1..]);
                if fits(&t) {
                    return Some(t);
                }
            }
        }
        None
    }
}

/// `UserLoginFailed` → `user_login_failed`.
fn snake_words(pascal: &str) -> String {
    let mut out = String::with_capacity(pascal.len() + 4);
    for (i, c) in pascal.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The topics records go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Tier topics, indexed by [`Tier::index`].
    pub tiers: [Arc<str>; 3],
    /// The dead-letter topic (restricted: it holds raw PII).
    pub dead_letter: Arc<str>,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            tiers: [
                Arc::from("events.public"),
                Arc::from("events.internal"),
                Arc::from("events.restricted"),
            ],
            dead_letter: Arc::from("events.dlq"),
        }
    }
}

/// Everything the engine needs to know, built from the topology.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Output topics.
    pub topics: Topics,
    /// Value format of tier records.
    pub format: OutputFormat,
    /// Gap handling.
    pub on_gap: GapPolicy,
    /// Declared-tier mismatch handling.
    pub on_tier_mismatch: MismatchPolicy,
    /// Classification rules: the Confluent tag map and compliance's
    /// overrides.
    pub rules: Rules,
    /// JSON `event_type` → subject.
    pub subjects: SubjectNaming,
    /// Event types limited to some tiers; all others reach all three.
    pub tier_limits: HashMap<String, HashSet<Tier>>,
    /// Input topics whose records are a producer's own JSON events, with the
    /// adapter that maps them onto the canonical envelope. Other topics
    /// carry canonical events.
    pub adapters: HashMap<Arc<str>, Arc<Adapter>>,
}

/// Fatal or transient trouble: the record was not processed and must be
/// offered again (transient) or the processor must stop (fatal).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// Wait and retry the same record; skip nothing.
    #[error("transient: {0}")]
    Transient(String),
    /// Stop cleanly; an operator must act.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// A version-store write the caller must persist (the changelog record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    /// `entity_type/entity_id`.
    pub key: Vec<u8>,
    /// The newly accepted version.
    pub version: i64,
}

/// Facts about a routed event for telemetry: no payload values, only names
/// from the schema and the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Accepted, a gap that was emitted, or unordered.
    pub verdict: Verdict,
    /// One record per tier the event reaches.
    pub records: Vec<OutRecord>,
    /// The store write to persist with the records; `None` for an
    /// [`Verdict::Unordered`] event, which touches no state.
    pub state: Option<StateUpdate>,
    /// The schema path of a field above the declared tier, if any.
    pub tier_mismatch: Option<String>,
    /// Per tier ([`Tier::index`]): how many fields its record removes or
    /// pseudonymises.
    pub redacted: [u32; 3],
    /// The event's `trace_id` and `correlation_id` for log lines, each only
    /// where its schema classifies it at most internal (ids that may be
    /// logged; a producer that marks one restricted keeps it out of logs).
    pub log_ids: LogIds,
}

/// Ids of an event that may appear in log lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogIds {
    /// `trace_id`, when present and classified at most internal.
    pub trace_id: Option<String>,
    /// `correlation_id`, when present and classified at most internal.
    pub correlation_id: Option<String>,
}

/// What to do with one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Emit these tier records and persist the state update.
    Routed(Routed),
    /// A duplicate or stale version: counted, not emitted.
    Skipped(Verdict),
    /// Produce this record to the dead-letter topic.
    DeadLettered {
        /// The dead-letter record (the original, plus error headers).
        record: OutRecord,
        /// Why.
        rejection: Rejection,
    },
}

/// A writer schema with what the engine derived from it.
#[derive(Debug)]
struct Writer {
    /// Its registry id.
    id: u32,
    schema: CompiledSchema,
    derived: [DerivedTier; 3],
}

#[derive(Debug)]
struct DerivedTier {
    text: String,
    /// Fields removed or pseudonymised in this tier.
    redacted: u32,
    /// Compiled only for JSON output.
    compiled: Option<CompiledSchema>,
    /// Registered lazily, once.
    id: OnceLock<u32>,
    /// The registry's last refusal of this schema and when it came: events
    /// that need it are dead-lettered without asking again until
    /// [`REFUSAL_RETRY`] has passed. Read only while `id` is unset.
    refused: Mutex<Option<(Rejection, Instant)>>,
}

/// How long a refused derived schema is not offered to the registry again
/// (an operator may change the subject's compatibility meanwhile).
const REFUSAL_RETRY: Duration = Duration::from_secs(60);

/// The registry refused a derived tier schema: what telemetry reports (the
/// subject and the registry's message name schema fields, never values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The output subject, `<tier topic>-<record name>`.
    pub subject: String,
    /// The tier.
    pub tier: Tier,
    /// The writer schema's registry id.
    pub writer_id: u32,
    /// The registry's answer.
    pub message: String,
}

type Cached = Result<Arc<Writer>, Rejection>;

/// The pipeline with its caches. One per partition worker (it is `Send`,
/// not shared).
#[derive(Debug)]
pub struct Engine {
    config: Arc<EngineConfig>,
    hasher: Option<Hasher>,
    by_id: HashMap<u32, Cached>,
    /// (subject, version) → id: versions never change, so this is never
    /// refreshed.
    by_subject: HashMap<(String, u32), u32>,
    /// Ids and subjects the registry did not have, so a stream of bad
    /// records does not become a stream of registry calls; bounded, because
    /// they come from the input.
    missing_ids: HashSet<u32>,
    missing_subjects: HashMap<(String, u32), Rejection>,
    stats: CacheStats,
    /// Refusals of derived schemas since the last [`Engine::take_refusals`].
    refusals: Vec<Refusal>,
}

/// How often the engine's schema caches answered (hits) and how often it
/// asked the registry (misses), since the last [`Engine::take_cache_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answered from the cache (a remembered miss included).
    pub hits: u64,
    /// Asked the registry.
    pub misses: u64,
}

/// The most missing ids or subjects remembered before the memory is cleared.
const MAX_MISSING: usize = 1024;

impl Engine {
    /// An engine with empty caches.
    pub fn new(config: Arc<EngineConfig>, hasher: Option<Hasher>) -> Self {
        Engine {
            config,
            hasher,
            by_id: HashMap::new(),
            by_subject: HashMap::new(),
            missing_ids: HashSet::new(),
            missing_subjects: HashMap::new(),
            stats: CacheStats::default(),
            refusals: Vec::new(),
        }
    }

    /// The registry's refusals of derived schemas since the last call (each
    /// refusal once, when the registry answered it; later events that need
    /// the schema are dead-lettered without a new refusal).
    pub fn take_refusals(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.refusals)
    }

    /// The cache statistics since the last call, which resets them.
    pub fn take_cache_stats(&mut self) -> CacheStats {
        std::mem::take(&mut self.stats)
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Forgets which ids, subjects and versions the registry did not have,
    /// so a schema registered since takes effect. What it had is kept: an
    /// id's schema and a subject version's id never change.
    pub fn forget_misses(&mut self) {
        self.missing_subjects.clear();
        self.missing_ids.clear();
    }

    /// How many schema ids and subjects the caches hold, misses included:
    /// bounded by the registry's size plus a fixed allowance for misses.
    pub fn cache_entries(&self) -> usize {
        self.by_id.len()
            + self.by_subject.len()
            + self.missing_ids.len()
            + self.missing_subjects.len()
    }

    /// Compiles a schema the way `process` would, reporting why it cannot be
    /// used: for start-up checks.
    ///
    /// # Errors
    /// The rejection that records written with this schema would get.
    pub fn check_schema(&self, text: &str) -> Result<CompiledSchema, Rejection> {
        let w = self.compile(0, text)?;
        Ok(w.schema)
    }

    /// Processes one raw record.
    ///
    /// # Errors
    /// [`EngineError`] when the registry is unavailable (transient) or
    /// refuses to register a derived schema (fatal). The store is unchanged
    /// then, and the same record must be offered again.
    pub fn process(
        &mut self,
        raw: &RawRecord<'_>,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Outcome, EngineError> {
        let dl = |rejection: Rejection, topic: &Arc<str>| Outcome::DeadLettered {
            record: dead_letter(raw, &rejection, topic),
            rejection,
        };
        let topic = self.config.topics.dead_letter.clone();
        let value = match raw.value {
            Some(v) if !v.is_empty() => v,
            _ => {
                return Ok(dl(
                    Rejection::new(Reason::EmptyValue, "the record has no value"),
                    &topic,
                ))
            }
        };
        let adapter = if self.config.adapters.is_empty() {
            None
        } else {
            self.config.adapters.get(&*raw.source.topic).cloned()
        };
        let mut order_by = OrderBy::EntityVersion;
        let json_doc;
        let (writer, datum) = if let Some(adapter) = adapter {
            // A producer's own JSON: adapted onto the canonical envelope,
            // then read like a canonical JSON event.
            let Some(doc) = json_object(value) else {
                return Ok(dl(
                    Rejection::new(
                        Reason::MalformedJson,
                        format!(
                            "the value is not a JSON object (the adapter {} reads the producer's JSON events)",
                            adapter.name()
                        ),
                    ),
                    &topic,
                ));
            };
            let adapted = match adapter.apply(doc) {
                Ok(a) => a,
                Err(r) => return Ok(dl(r, &topic)),
            };
            order_by = adapted.order_by;
            json_doc = adapted.event;
            match self.decode_json(&raw.source.topic, &json_doc, registry)? {
                Ok(decoded) => decoded,
                Err(r) => return Ok(dl(r, &topic)),
            }
        } else {
            match value[0] {
                0 => {
                    let Some(header) = value.get(1..5) else {
                        return Ok(dl(
                            Rejection::new(
                                Reason::TruncatedFrame,
                                "the frame is shorter than its 5-byte header",
                            ),
                            &topic,
                        ));
                    };
                    let id = u32::from_be_bytes(header.try_into().expect("4 bytes"));
                    let writer = match self.writer_by_id(id, registry)? {
                        Ok(w) => w,
                        Err(r) => return Ok(dl(r, &topic)),
                    };
                    match binary::decode(&writer.schema, &value[5..]) {
                        Ok(d) => (writer, d),
                        Err(e) => {
                            return Ok(dl(
                                Rejection::new(Reason::MalformedAvro, e.to_string()),
                                &topic,
                            ))
                        }
                    }
                }
                b'{' => {
                    let Some(doc) = json_object(value) else {
                        return Ok(dl(
                            Rejection::new(Reason::MalformedJson, "the value is not a JSON object"),
                            &topic,
                        ));
                    };
                    json_doc = doc;
                    match self.decode_json(&raw.source.topic, &json_doc, registry)? {
                        Ok(decoded) => decoded,
                        Err(r) => return Ok(dl(r, &topic)),
                    }
                }
                _ => {
                    return Ok(dl(
                        Rejection::new(
                            Reason::UnknownMagicByte,
                            "the value is neither Confluent-framed Avro (0x00) nor a JSON object",
                        ),
                        &topic,
                    ))
                }
            }
        };
        match self.route(&writer, &datum, order_by, store, registry)? {
            Ok(outcome) => Ok(outcome),
            Err(r) => Ok(dl(r, &topic)),
        }
    }

    /// Reads a canonical JSON event against the schema registered for its
    /// `event_type`, in the version its `schema_version` names.
    fn decode_json<'v>(
        &mut self,
        topic: &str,
        doc: &'v serde_json::Value,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Result<(Arc<Writer>, Datum<'v>), Rejection>, EngineError> {
        let event_type = doc.get("event_type").and_then(|v| v.as_str()).unwrap_or("");
        if !is_valid_event_type(event_type) {
            return Ok(Err(Rejection::new(
                Reason::InvalidEventType,
                "event_type is missing or does not match ^[a-z]+\\.[a-z_]+$",
            )));
        }
        let Some(schema_version) = doc
            .get("schema_version")
            .and_then(serde_json::Value::as_u64)
            .filter(|v| *v >= 1)
            .and_then(|v| u32::try_from(v).ok())
        else {
            return Ok(Err(Rejection::new(
                Reason::InvalidSchemaVersion,
                "schema_version is missing or not an integer >= 1; it selects the version of the event type's schema",
            )));
        };
        let writer =
            match self.writer_for_event_type(topic, event_type, schema_version, registry)? {
                Ok(w) => w,
                Err(r) => return Ok(Err(r)),
            };
        Ok(match json::resolve(&writer.schema, doc) {
            Ok(d) => Ok((writer, d)),
            Err(e) => Err(Rejection::new(
                Reason::SchemaMismatch,
                format!("the JSON event does not fit its schema at {e}"),
            )),
        })
    }

    fn route(
        &mut self,
        writer: &Writer,
        datum: &Datum<'_>,
        order_by: OrderBy,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Result<Outcome, Rejection>, EngineError> {
        let schema = &writer.schema;
        let env: &Envelope = match schema.envelope() {
            Ok(e) => e,
            Err(why) => return Ok(Err(Rejection::new(Reason::SchemaMismatch, why))),
        };
        if let Err(r) = validate(schema, env, datum) {
            return Ok(Err(r));
        }
        let Datum::Record(values) = datum else {
            return Ok(Err(Rejection::new(
                Reason::SchemaMismatch,
                "the event is not a record",
            )));
        };
        let fields = schema.root_fields();
        let Some(declared) = schema
            .symbol(fields[env.privacy_tier].node, &values[env.privacy_tier])
            .and_then(Tier::parse)
        else {
            return Ok(Err(Rejection::new(
                Reason::SchemaMismatch,
                "privacy_tier is not one of public, internal, restricted",
            )));
        };
        let (present, path) = max_present_tier(schema, datum);
        let tier_mismatch = (present > declared).then(|| path.unwrap_or_default());
        if let Some(p) = &tier_mismatch {
            if self.config.on_tier_mismatch == MismatchPolicy::DeadLetter {
                return Ok(Err(Rejection::new(
                    Reason::TierMismatch,
                    format!(
                        "{p} is classified {present}, above the declared privacy_tier {declared}"
                    ),
                )));
            }
        }

        let entity_type = schema
            .symbol(fields[env.entity_type].node, &values[env.entity_type])
            .unwrap_or_default();
        let entity_id = values[env.entity_id].as_str().unwrap_or_default();
        let (v, state) = match order_by {
            OrderBy::EntityVersion => {
                let Some(version) = values[env.entity_version].as_i64() else {
                    return Ok(Err(Rejection::new(
                        Reason::InvalidEntityVersion,
                        "entity_version is null, and this topic orders events by it",
                    )));
                };
                let key = entity_key(entity_type, entity_id);
                (
                    verdict(store.last_version(&key), version),
                    Some((key, version)),
                )
            }
            OrderBy::Sequence { value, keyspace } => {
                let key = sequence_key(&keyspace, entity_type, entity_id);
                (
                    sequence_verdict(store.last_version(&key), value),
                    Some((key, value)),
                )
            }
            OrderBy::Off => (Verdict::Unordered, None),
        };
        match v {
            Verdict::Duplicate | Verdict::Stale => return Ok(Ok(Outcome::Skipped(v))),
            Verdict::Gap { missing } if self.config.on_gap == GapPolicy::DeadLetter => {
                return Ok(Err(Rejection::new(
                    Reason::VersionGap,
                    format!(
                        "entity_version skips {missing} version(s) after the last accepted one"
                    ),
                )))
            }
            _ => {}
        }

        let event_type = values[env.event_type].as_str().unwrap_or_default();
        let config = self.config.clone();
        let limit = config.tier_limits.get(event_type);
        let no_key = || {
            Rejection::new(
                Reason::RedactionUnavailable,
                "a tier needs a keyed pseudonym and no hash key is configured",
            )
        };
        let mut tiers = Vec::with_capacity(3);
        let mut framings = Vec::with_capacity(3);
        let mut bufs: [Vec<u8>; 3] = Default::default();
        for tier in Tier::ALL {
            if limit.is_some_and(|l| !l.contains(&tier)) {
                continue;
            }
            let topic = &config.topics.tiers[tier.index()];
            let derived = &writer.derived[tier.index()];
            let framing = match config.format {
                OutputFormat::Avro => {
                    match self.derived_id(writer, tier, derived, topic, registry)? {
                        Ok(id) => Framing::Avro(id),
                        Err(r) => return Ok(Err(r)),
                    }
                }
                OutputFormat::Json => {
                    Framing::Json(derived.compiled.as_ref().expect("compiled for JSON output"))
                }
            };
            bufs[tiers.len()] = start_value(framing);
            tiers.push(tier);
            framings.push(framing);
        }
        if encode_projections(schema, datum, &tiers, self.hasher.as_ref(), &mut bufs).is_err() {
            return Ok(Err(no_key()));
        }
        let routing = event_routing(schema, env, datum, v, &tiers, self.hasher.as_ref());
        let mut records = Vec::with_capacity(tiers.len());
        for (i, (tier, framing)) in tiers.iter().zip(framings).enumerate() {
            let topic = &config.topics.tiers[tier.index()];
            let buf = std::mem::take(&mut bufs[i]);
            match tier_record(&routing, *tier, topic, framing, buf) {
                Ok(r) => records.push(r),
                Err(NoHashKey) => return Ok(Err(no_key())),
            }
        }
        if let Some((key, version)) = &state {
            store.record(key, *version);
        }
        let loggable = |i: Option<usize>| {
            let i = i?;
            (fields[i].class.tier <= Tier::Internal)
                .then(|| values[i].as_str().map(str::to_owned))
                .flatten()
        };
        let log_ids = LogIds {
            trace_id: loggable(env.trace_id),
            correlation_id: loggable(env.correlation_id),
        };
        Ok(Ok(Outcome::Routed(Routed {
            verdict: v,
            records,
            state: state.map(|(key, version)| StateUpdate { key, version }),
            tier_mismatch,
            redacted: writer.derived.each_ref().map(|d| d.redacted),
            log_ids,
        })))
    }

    /// The id of a tier's derived schema, registering it the first time;
    /// a refusal (409, 422) is a rejection of the events that need it.
    fn derived_id(
        &mut self,
        writer: &Writer,
        tier: Tier,
        derived: &DerivedTier,
        topic: &str,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Result<u32, Rejection>, EngineError> {
        if let Some(id) = derived.id.get() {
            return Ok(Ok(*id));
        }
        let mut refused = derived.refused.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, at)) = refused.as_ref() {
            if at.elapsed() < REFUSAL_RETRY {
                return Ok(Err(r.clone()));
            }
        }
        let subject = derived_subject(topic, &writer.schema);
        match registry.register(&subject, &derived.text) {
            Ok(id) => {
                *refused = None;
                Ok(Ok(*derived.id.get_or_init(|| id)))
            }
            Err(LookupError::Unavailable(m)) => Err(EngineError::Transient(m)),
            Err(LookupError::Refused(message)) => {
                let r = Rejection::new(
                    Reason::DerivedSchemaRejected,
                    format!(
                        "the registry refused the derived {tier} schema of writer schema {} under the subject {subject}: {message}",
                        writer.id
                    ),
                );
                *refused = Some((r.clone(), Instant::now()));
                self.refusals.push(Refusal {
                    subject,
                    tier,
                    writer_id: writer.id,
                    message,
                });
                Ok(Err(r))
            }
            Err(other) => Err(EngineError::Fatal(format!(
                "registering the derived {tier} schema under {subject}: {other}"
            ))),
        }
    }

    fn compile(&self, id: u32, text: &str) -> Result<Writer, Rejection> {
        let schema = CompiledSchema::compile(text, &self.config.rules)
            .map_err(|e| Rejection::new(Reason::InvalidSchema, e.to_string()))?;
        if schema.has_hash() && self.hasher.is_none() {
            return Err(Rejection::new(
                Reason::RedactionUnavailable,
                "the schema asks for hashing and no hash key is configured",
            ));
        }
        let derive = |tier: Tier| -> Result<DerivedTier, Rejection> {
            let text = derived_schema(&schema, tier).to_string();
            let compiled = match self.config.format {
                OutputFormat::Json => Some(
                    CompiledSchema::compile(&text, &self.config.rules).map_err(|e| {
                        Rejection::new(Reason::InvalidSchema, format!("derived {tier} schema: {e}"))
                    })?,
                ),
                OutputFormat::Avro => None,
            };
            Ok(DerivedTier {
                text,
                redacted: redacted_fields(&schema, tier),
                compiled,
                id: OnceLock::new(),
                refused: Mutex::new(None),
            })
        };
        let derived = [
            derive(Tier::Public)?,
            derive(Tier::Internal)?,
            derive(Tier::Restricted)?,
        ];
        Ok(Writer {
            id,
            schema,
            derived,
        })
    }

    fn writer_by_id(
        &mut self,
        id: u32,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Cached, EngineError> {
        let unknown = || {
            Err(Rejection::new(
                Reason::UnknownSchemaId,
                format!("schema id {id} is not in the registry"),
            ))
        };
        if let Some(c) = self.by_id.get(&id) {
            self.stats.hits += 1;
            return Ok(c.clone());
        }
        if self.missing_ids.contains(&id) {
            self.stats.hits += 1;
            return Ok(unknown());
        }
        self.stats.misses += 1;
        let cached = match registry.schema_by_id(id) {
            Ok(text) => self.compile(id, &text).map(Arc::new),
            Err(LookupError::NotFound) => {
                remember(&mut self.missing_ids, id);
                return Ok(unknown());
            }
            Err(
                LookupError::Unavailable(m) | LookupError::Rejected(m) | LookupError::Refused(m),
            ) => return Err(EngineError::Transient(m)),
        };
        // Only ids the registry holds are cached: one entry per registered schema.
        self.by_id.insert(id, cached.clone());
        Ok(cached)
    }

    fn writer_for_event_type(
        &mut self,
        topic: &str,
        event_type: &str,
        schema_version: u32,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Cached, EngineError> {
        let subject = self.config.subjects.subject(topic, event_type);
        let Some(version) = self
            .config
            .subjects
            .subject_version(event_type, schema_version)
        else {
            return Ok(Err(Rejection::new(
                Reason::UnknownSchemaVersion,
                format!(
                    "schema_version {schema_version} is not one of the versions the topology maps for this event type"
                ),
            )));
        };
        let key = (subject, version);
        let unknown = |subject: &str| {
            Rejection::new(
                Reason::UnknownSchemaVersion,
                format!(
                    "the subject {subject} has no version {version} (schema_version {schema_version}); the event is not read with another version"
                ),
            )
        };
        if let Some(r) = self.missing_subjects.get(&key) {
            self.stats.hits += 1;
            return Ok(Err(r.clone()));
        }
        let id = match self.by_subject.get(&key) {
            Some(id) => *id,
            None => {
                self.stats.misses += 1;
                match registry.version(&key.0, version) {
                    Ok((id, _)) => {
                        self.by_subject.insert(key, id);
                        id
                    }
                    Err(LookupError::NotFound) => {
                        // Which is missing, the subject or the version?
                        // Only the answer differs; both are dead letters.
                        let subject_known =
                            matches!(registry.versions(&key.0), Ok(v) if !v.is_empty());
                        let rejection = if subject_known {
                            unknown(&key.0)
                        } else {
                            Rejection::new(
                                Reason::UnknownEventType,
                                "no schema is registered for the event type's subject",
                            )
                        };
                        if self.missing_subjects.len() >= MAX_MISSING {
                            self.missing_subjects.clear();
                        }
                        self.missing_subjects.insert(key, rejection.clone());
                        return Ok(Err(rejection));
                    }
                    Err(
                        LookupError::Unavailable(m)
                        | LookupError::Rejected(m)
                        | LookupError::Refused(m),
                    ) => return Err(EngineError::Transient(m)),
                }
            }
        };
        self.writer_by_id(id, registry)
    }
}

/// The subject a tier's derived schema is registered under:
/// `<tier topic>-<record full name>` (topic-record naming, since one topic
/// holds many event types).
pub fn derived_subject(topic: &str, schema: &CompiledSchema) -> String {
    format!("{topic}-{}", schema.fullname().unwrap_or("record"))
}

/// The value as a JSON object, if it is one.
fn json_object(value: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .filter(serde_json::Value::is_object)
}

fn remember<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, item: T) {
    if set.len() >= MAX_MISSING {
        set.clear();
    }
    set.insert(item);
}
