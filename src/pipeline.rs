//! The chain: one raw record in, what to emit out.
//!
//! [`Engine::process`] chains the stages — (adapt →) decode → validate →
//! tier check → order → project → route — over a [`VersionStore`] and a
//! [`SchemaLookup`] handed in by the caller. The adapt stage runs only for
//! input topics whose topology declares an adapter ([`crate::adapt`]). Each
//! step is a small function that returns a `Halt` when the record leaves
//! the chain early; `process` turns that into the [`Outcome`].
//!
//! Framed Avro bound for Avro tiers takes the single pass
//! ([`crate::schema::pass`]): decode, validation and projection in one walk
//! of the bytes, no `Datum` tree; whatever it does not cover or would
//! refuse goes down the tree path, which decides. Both give the same
//! outcome for every record (`tests/properties.rs` checks it).
//!
//! It needs no Kafka: `replay`, the tests and the benchmarks call it
//! directly, and the Kafka runtime calls it per record.
//!
//! What the engine needs of a writer schema before it reads a record with
//! it is [`check_writer_schema`]; `check` reports the same failures.
//!
//! Bad input never fails the call: it comes back as a dead letter, and so
//! does an event whose derived tier schema the registry refuses
//! (`derived_schema_rejected`: every other event type keeps flowing). Only a
//! registry that cannot be reached, or that refuses a writer-schema request
//! ([`EngineError::Transient`]: retry the same record later, skip nothing),
//! or that refuses the processor's registration of a derived schema (401,
//! 403: [`EngineError::Fatal`]) is an error.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState as Fold;
use thiserror::Error;

use crate::config::{EngineConfig, GapPolicy, MismatchPolicy, OutputFormat, StalePolicy};
use crate::order::{entity_key, sequence_key, sequence_verdict, verdict, Verdict, VersionStore};
use crate::project::{
    derived_schema, encode_projections, redacted_fields, write_json_projections, Hasher, NoHashKey,
    Pseudonyms,
};
use crate::record::{
    Datum, LogIds, OrderBy, OutRecord, Outcome, RawRecord, Reason, Refusal, Rejection, Routed,
    StateUpdate, Tier,
};
use crate::route::{dead_letter, event_routing, start_value, tier_record, Framing};
use crate::schema::{
    binary, derived_subject, json, json::Doc, json::Json, json_pass, max_present_tier, pass,
    CompiledSchema, Envelope, Field, LookupError, SchemaError, SchemaLookup,
};
use crate::validate::{is_valid_event_type, validate, validate_envelope};

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

/// Why a record leaves the chain before it is routed. Every step returns
/// it, so `?` carries it to [`Engine::process`], which makes the outcome.
#[derive(Debug)]
enum Halt {
    /// Poison: dead-letter the record.
    Reject(Rejection),
    /// A duplicate or stale version: counted, not emitted.
    Skip(Verdict),
    /// Ahead of the entity's next version under `on_gap: hold`.
    Hold { key: Vec<u8>, version: i64 },
    /// The record was not processed: retry it (transient) or stop (fatal).
    Fail(EngineError),
}

impl From<Rejection> for Halt {
    fn from(r: Rejection) -> Self {
        Halt::Reject(r)
    }
}

impl From<EngineError> for Halt {
    fn from(e: EngineError) -> Self {
        Halt::Fail(e)
    }
}

impl From<NoHashKey> for Halt {
    fn from(_: NoHashKey) -> Self {
        Halt::Reject(Rejection::new(
            Reason::RedactionUnavailable,
            "a tier needs a keyed pseudonym and no hash key is configured",
        ))
    }
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

type Cached = Result<Arc<Writer>, Rejection>;

/// The tiers an event reaches, least sensitive first: three at most, kept
/// inline.
type Tiers = smallvec::SmallVec<[Tier; 3]>;

/// Event type → `schema_version` → schema id, for one topic.
type EventTypes = HashMap<String, HashMap<u32, u32, Fold>, Fold>;

/// The pipeline with its caches. One per partition worker (it is `Send`,
/// not shared).
#[derive(Debug)]
pub struct Engine {
    config: Arc<EngineConfig>,
    /// Lent out while [`Engine::emit`] runs (nothing it calls reads this
    /// field: `compile`, which does, runs before it).
    hasher: Option<Box<Hasher>>,
    /// Looked up once per event: foldhash, a fraction of SipHash on a `u32`
    /// (its keys are ids the registry holds).
    by_id: HashMap<u32, Cached, Fold>,
    /// (subject, version) → id: versions never change, so this is never
    /// refreshed.
    by_subject: HashMap<(String, u32), u32>,
    /// topic → event type → `schema_version` → id, for JSON events: the
    /// same answers as `by_subject`, found without building the subject
    /// name. Bounded: topics are the inputs', and at most [`MAX_MISSING`]
    /// event types are kept per topic.
    /// Looked up once per JSON event: foldhash, as `by_id`.
    by_event_type: HashMap<String, EventTypes, Fold>,
    /// Ids and subjects the registry did not have, so a stream of bad
    /// records does not become a stream of registry calls; bounded, because
    /// they come from the input.
    missing_ids: HashSet<u32>,
    missing_subjects: HashMap<(String, u32), Rejection>,
    stats: CacheStats,
    /// Refusals of derived schemas since the last [`Engine::take_refusals`].
    refusals: Vec<Refusal>,
    /// Whether framed Avro bound for Avro tiers, and JSON bound for JSON
    /// tiers, are read in a single pass.
    single_pass: bool,
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
            hasher: hasher.map(Box::new),
            by_id: HashMap::default(),
            by_subject: HashMap::new(),
            by_event_type: HashMap::default(),
            missing_ids: HashSet::new(),
            missing_subjects: HashMap::new(),
            stats: CacheStats::default(),
            refusals: Vec::new(),
            single_pass: true,
        }
    }

    /// Whether framed Avro bound for Avro tiers ([`crate::schema::pass`])
    /// and JSON bound for JSON tiers ([`crate::schema::json_pass`]) are read
    /// and projected in one pass (on by default). Off, every record takes
    /// the tree path (decode, validate, project): the differential tests
    /// compare the two.
    pub fn set_single_pass(&mut self, on: bool) {
        self.single_pass = on;
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
            + self
                .by_event_type
                .values()
                .flat_map(HashMap::values)
                .map(HashMap::len)
                .sum::<usize>()
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
    /// [`EngineError::Transient`] when the registry cannot be reached or
    /// refuses a writer-schema request; [`EngineError::Fatal`] when it
    /// refuses the request to register a derived schema (401, 403). The store
    /// is unchanged then, and the same record must be offered again.
    pub fn process(
        &mut self,
        raw: &RawRecord<'_>,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Outcome, EngineError> {
        self.process_as(raw, store, registry, Gaps::AsConfigured)
    }

    /// Processes one raw record, handling a version gap as `gaps` says:
    /// [`Gaps::Emit`] is how a held event whose window expired is emitted
    /// ([`crate::reorder`]) whatever the topology's `on_gap`.
    ///
    /// # Errors
    /// As [`Engine::process`].
    pub fn process_as(
        &mut self,
        raw: &RawRecord<'_>,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Outcome, EngineError> {
        let routed = match self.single_pass_input(raw) {
            Some(SinglePass::Avro(value)) => self.single(value, store, registry, gaps),
            Some(SinglePass::Json(value)) => self.single_json(raw, value, store, registry, gaps),
            None => self.decoded(raw, store, registry, gaps),
        };
        match routed {
            Ok(routed) => Ok(Outcome::Routed(routed)),
            Err(Halt::Skip(verdict)) => Ok(Outcome::Skipped(verdict)),
            Err(Halt::Hold { key, version }) => Ok(Outcome::Held { key, version }),
            Err(Halt::Reject(rejection)) => Ok(Outcome::DeadLettered {
                record: dead_letter(raw, &rejection, self.config.topics.dead_letter),
                rejection,
            }),
            Err(Halt::Fail(e)) => Err(e),
        }
    }

    /// Decode: the record's value → its writer schema, its value and what
    /// orders it. Confluent-framed Avro is read with the schema its id
    /// names; a JSON event with the schema its `event_type` and
    /// `schema_version` name; a producer's own JSON is adapted onto the
    /// canonical envelope first. A JSON document is kept in `docs`, which
    /// the value borrows from.
    fn decode<'v>(
        &mut self,
        raw: &RawRecord<'v>,
        docs: &'v mut Docs<'v>,
        registry: &mut dyn SchemaLookup,
    ) -> Result<(Arc<Writer>, Datum<'v>, OrderBy), Halt> {
        let value = match raw.value {
            Some(v) if !v.is_empty() => v,
            _ => return Err(Rejection::new(Reason::EmptyValue, "the record has no value").into()),
        };
        let adapter = if self.config.adapters.is_empty() {
            None
        } else {
            self.config.adapters.get(&*raw.source.topic).cloned()
        };
        if let Some(adapter) = adapter {
            // A producer's own JSON: adapted onto the canonical envelope,
            // then read like a canonical JSON event.
            let Some(object) = json_object(value) else {
                return Err(Rejection::new(
                    Reason::MalformedJson,
                    format!(
                        "the value is not a JSON object (the adapter {} reads the producer's JSON events)",
                        adapter.name()
                    ),
                )
                .into());
            };
            let adapted = adapter.apply(object)?;
            let doc: &'v serde_json::Value = docs.adapted.insert(adapted.event);
            let (writer, datum) = self.decode_json(&raw.source.topic, doc, registry)?;
            return Ok((writer, datum, adapted.order_by));
        }
        match value[0] {
            0 => {
                let (writer, body) = self.framed_writer(value, registry)?;
                let datum = read_avro(&writer, body)?;
                Ok((writer, datum, OrderBy::EntityVersion))
            }
            b'{' => {
                let Some(object) = Json::parse(value)
                    .ok()
                    .filter(|j| matches!(j, Json::Object(_)))
                else {
                    return Err(Rejection::new(
                        Reason::MalformedJson,
                        "the value is not a JSON object",
                    )
                    .into());
                };
                let doc: &'v Json<'v> = docs.canonical.insert(object);
                let (writer, datum) = self.decode_json(&raw.source.topic, doc, registry)?;
                Ok((writer, datum, OrderBy::EntityVersion))
            }
            _ => Err(Rejection::new(
                Reason::UnknownMagicByte,
                "the value is neither Confluent-framed Avro (0x00) nor a JSON object",
            )
            .into()),
        }
    }

    /// The writer schema of a Confluent-framed Avro value, and its body.
    fn framed_writer<'v>(
        &mut self,
        value: &'v [u8],
        registry: &mut dyn SchemaLookup,
    ) -> Result<(Arc<Writer>, &'v [u8]), Halt> {
        let Some(header) = value.get(1..5) else {
            return Err(Rejection::new(
                Reason::TruncatedFrame,
                "the frame is shorter than its 5-byte header",
            )
            .into());
        };
        let id = u32::from_be_bytes(header.try_into().expect("4 bytes"));
        let writer = self.writer_by_id(id, registry)?;
        Ok((writer, &value[5..]))
    }

    /// A record down the tree path: decoded, then routed.
    fn decoded(
        &mut self,
        raw: &RawRecord<'_>,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Routed, Halt> {
        let mut docs = Docs::default();
        let (writer, datum, order_by) = self.decode(raw, &mut docs, registry)?;
        self.route(&writer, &datum, order_by, store, registry, gaps)
    }

    /// The value, when the record takes a single pass: not from an adapted
    /// topic, and framed Avro bound for Avro tiers or a JSON object bound
    /// for JSON tiers.
    fn single_pass_input<'v>(&self, raw: &RawRecord<'v>) -> Option<SinglePass<'v>> {
        let value = raw.value?;
        if !self.single_pass
            || (!self.config.adapters.is_empty()
                && self.config.adapters.contains_key(&*raw.source.topic))
        {
            return None;
        }
        match (self.config.format, value.first()) {
            (OutputFormat::Avro, Some(0)) => Some(SinglePass::Avro(value)),
            (OutputFormat::Json, Some(b'{')) => Some(SinglePass::Json(value)),
            _ => None,
        }
    }

    /// A framed Avro event through the single pass ([`crate::schema::pass`]):
    /// read, checked and projected in one walk, then ordered and routed as
    /// [`Engine::route`] does. Whatever the pass leaves to the tree (a value
    /// it would refuse, a declared tier below what the event holds, shapes
    /// it does not cover) is decoded and routed by the tree path instead,
    /// which gives the rejection; nothing is asked of the registry or the
    /// store before that choice is made.
    fn single(
        &mut self,
        value: &[u8],
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Routed, Halt> {
        let (writer, body) = self.framed_writer(value, registry)?;
        let schema = &writer.schema;
        let Ok(env) = schema.envelope() else {
            return self.tree(&writer, body, store, registry, gaps);
        };
        // The frame's schema id is written once the tier's derived schema
        // has one.
        let mut bodies = [(); 3].map(|()| start_value(Framing::Avro(0)));
        let hasher = self.hasher.as_deref();
        let pass = pass::project(schema, env, body, hasher, &mut bodies);
        match pass.and_then(|pass| self.passed(&writer, env, &pass, bodies, store, registry, gaps))
        {
            Some(routed) => routed,
            None => self.tree(&writer, body, store, registry, gaps),
        }
    }

    /// What a single pass read, through the steps after it: the envelope
    /// checked, the tier check, order, framing and routing. `None` when the
    /// tree path must decide (an envelope value it would refuse, a declared
    /// tier below what the event holds), before the store is asked.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn passed(
        &mut self,
        writer: &Writer,
        env: &Envelope,
        pass: &pass::Pass<'_>,
        bodies: [Vec<u8>; 3],
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Option<Result<Routed, Halt>> {
        let schema = &writer.schema;
        let Datum::Record(values) = &pass.envelope else {
            return None;
        };
        if validate_envelope(env, values).is_err() {
            return None;
        }
        let event = Event {
            schema,
            env,
            fields: schema.root_fields(),
            datum: &pass.envelope,
            values,
        };
        let tiers = match self.check_tier(&event, Some(pass.present)) {
            Ok(tiers) if tiers.mismatch.is_none() => tiers,
            _ => return None,
        };
        let bodies = Bodies::Passed {
            bodies,
            entity_pseudonym: pass.entity_pseudonym,
        };
        Some(self.emit(
            writer,
            &event,
            tiers,
            bodies,
            OrderBy::EntityVersion,
            store,
            registry,
            gaps,
        ))
    }

    /// A canonical JSON event through the JSON single pass
    /// ([`crate::schema::json_pass`]), then ordered and routed as
    /// [`Engine::route`] does. Whatever the pass leaves to the tree path
    /// (before or after the schema is looked up) is decoded and routed
    /// there instead, which gives the rejection: so is an event whose schema
    /// cannot be looked up (the tree path then asks again with what it
    /// reads), and one whose top-level `event_type` and `schema_version`
    /// are not the ones the schema was looked up with.
    fn single_json(
        &mut self,
        raw: &RawRecord<'_>,
        value: &[u8],
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Routed, Halt> {
        let Some(head) = json_pass::head(value) else {
            return self.decoded(raw, store, registry, gaps);
        };
        let found = self.writer_for_event_type(
            &raw.source.topic,
            head.event_type,
            head.schema_version,
            registry,
        );
        let Ok(writer) = found else {
            return self.decoded(raw, store, registry, gaps);
        };
        let Ok(env) = writer.schema.envelope() else {
            return self.decoded(raw, store, registry, gaps);
        };
        // A JSON value starts empty ([`start_value`]); each has room for the
        // whole event and pseudonyms wider than the values they replace, so
        // it is not grown as it is written.
        let mut bodies = [(); 3].map(|()| Vec::with_capacity(value.len() + 256));
        let hasher = self.hasher.as_deref();
        let pass = json_pass::project(&writer.schema, env, value, hasher, &mut bodies)
            .filter(|pass| head.is_read_in(env, pass));
        match pass.and_then(|pass| self.passed(&writer, env, &pass, bodies, store, registry, gaps))
        {
            Some(routed) => routed,
            None => self.decoded(raw, store, registry, gaps),
        }
    }

    /// A framed Avro body down the tree path: decoded, then routed.
    fn tree(
        &mut self,
        writer: &Writer,
        body: &[u8],
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Routed, Halt> {
        let datum = read_avro(writer, body)?;
        self.route(
            writer,
            &datum,
            OrderBy::EntityVersion,
            store,
            registry,
            gaps,
        )
    }

    /// Reads a canonical JSON event against the schema registered for its
    /// `event_type`, in the version its `schema_version` names.
    fn decode_json<'v, D: Doc>(
        &mut self,
        topic: &str,
        doc: &'v D,
        registry: &mut dyn SchemaLookup,
    ) -> Result<(Arc<Writer>, Datum<'v>), Halt> {
        let event_type = doc.get("event_type").and_then(Doc::as_text).unwrap_or("");
        if !is_valid_event_type(event_type) {
            return Err(Rejection::new(
                Reason::InvalidEventType,
                "event_type is missing or does not match ^[a-z]+\\.[a-z_]+$",
            )
            .into());
        }
        let Some(schema_version) = doc
            .get("schema_version")
            .and_then(Doc::as_unsigned)
            .filter(|v| *v >= 1)
            .and_then(|v| u32::try_from(v).ok())
        else {
            return Err(Rejection::new(
                Reason::InvalidSchemaVersion,
                "schema_version is missing or not an integer >= 1; it selects the version of the event type's schema",
            )
            .into());
        };
        let writer = self.writer_for_event_type(topic, event_type, schema_version, registry)?;
        let datum = json::resolve(&writer.schema, doc).map_err(|e| {
            Rejection::new(
                Reason::SchemaMismatch,
                format!("the JSON event does not fit its schema at {e}"),
            )
        })?;
        Ok((writer, datum))
    }

    /// A decoded event through the remaining steps; the store takes the new
    /// version only once every tier record is built.
    fn route(
        &mut self,
        writer: &Writer,
        datum: &Datum<'_>,
        order_by: OrderBy,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Routed, Halt> {
        let event = Event::validate(&writer.schema, datum)?;
        let tiers = self.check_tier(&event, None)?;
        self.emit(
            writer,
            &event,
            tiers,
            Bodies::Tree,
            order_by,
            store,
            registry,
            gaps,
        )
    }

    /// A checked event through order, projection (unless the single pass
    /// made the bodies) and routing; the store takes the new version only
    /// once every tier record is built.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        writer: &Writer,
        event: &Event<'_, '_>,
        tiers: TierCheck,
        bodies: Bodies,
        order_by: OrderBy,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Routed, Halt> {
        // The hasher is lent out for the event's steps, which borrow the
        // engine mutably (cloning its `Arc` cost two atomic operations an
        // event), and is put back whatever they return.
        let hasher = self.hasher.take();
        let routed = self.emit_with(
            hasher.as_deref(),
            writer,
            event,
            tiers,
            bodies,
            order_by,
            store,
            registry,
            gaps,
        );
        self.hasher = hasher;
        routed
    }

    /// [`Engine::emit`] with the engine's hasher lent out.
    #[allow(clippy::too_many_arguments)]
    fn emit_with(
        &mut self,
        hasher: Option<&Hasher>,
        writer: &Writer,
        event: &Event<'_, '_>,
        tiers: TierCheck,
        bodies: Bodies,
        order_by: OrderBy,
        store: &mut dyn VersionStore,
        registry: &mut dyn SchemaLookup,
        gaps: Gaps,
    ) -> Result<Routed, Halt> {
        let ordered = self.order(event, order_by, &*store, gaps)?;
        let mut pseudonyms = Pseudonyms::new(hasher, event.entity_id());
        let projected = match bodies {
            Bodies::Tree => {
                self.project(writer, event, tiers.reached, &mut pseudonyms, registry)?
            }
            Bodies::Passed {
                bodies,
                entity_pseudonym,
            } => {
                if let Some(p) = entity_pseudonym {
                    pseudonyms.remember_entity(p);
                }
                self.frame(writer, tiers.reached, bodies, registry)?
            }
        };
        let records = self.build_records(event, ordered.verdict, projected, &mut pseudonyms)?;
        if let Some(state) = &ordered.state {
            store.record(&state.key, state.version);
        }
        Ok(Routed {
            verdict: ordered.verdict,
            records,
            state: ordered.state,
            tier_mismatch: tiers.mismatch,
            redacted: writer.derived.each_ref().map(|d| d.redacted),
            log_ids: event.log_ids(),
        })
    }

    /// Tier check: which tiers the event reaches (all three unless the
    /// topology limits its event type), and whether it holds a value
    /// classified above its declared `privacy_tier`. Such a mismatch is
    /// reported and routed (projection removes what each tier may not see
    /// whatever the declaration says), or dead-lettered where the topology
    /// asks for it.
    /// `present`: the highest tier the event holds, when the single pass
    /// found it already (its path is not known then).
    fn check_tier(
        &self,
        event: &Event<'_, '_>,
        present: Option<Tier>,
    ) -> Result<TierCheck, Rejection> {
        let env = event.env;
        let Some(declared) = event
            .schema
            .symbol(
                event.fields[env.privacy_tier].node,
                &event.values[env.privacy_tier],
            )
            .and_then(Tier::parse)
        else {
            return Err(Rejection::new(
                Reason::SchemaMismatch,
                "privacy_tier is not one of public, internal, restricted",
            ));
        };
        let (present, path) = match present {
            Some(t) => (t, None),
            None => max_present_tier(event.schema, event.datum),
        };
        let mismatch = (present > declared).then(|| path.unwrap_or_default());
        if let Some(p) = &mismatch {
            if self.config.on_tier_mismatch == MismatchPolicy::DeadLetter {
                return Err(Rejection::new(
                    Reason::TierMismatch,
                    format!(
                        "{p} is classified {present}, above the declared privacy_tier {declared}"
                    ),
                ));
            }
        }
        let event_type = event.values[env.event_type].as_str().unwrap_or_default();
        let reaches = self.config.reaches(event_type);
        let reached = Tier::ALL
            .into_iter()
            .filter(|tier| reaches[tier.index()])
            .collect();
        Ok(TierCheck { reached, mismatch })
    }

    /// Order: the event's version (or sequence number) against the last one
    /// the store holds for its entity, and the store write that accepting it
    /// makes. A duplicate or stale version stops here (skipped, or a stale
    /// one dead-lettered where the topology asks), and so does a gap where
    /// the topology dead-letters or holds gaps.
    fn order(
        &self,
        event: &Event<'_, '_>,
        order_by: OrderBy,
        store: &dyn VersionStore,
        gaps: Gaps,
    ) -> Result<Ordered, Halt> {
        let (env, values) = (event.env, event.values);
        let entity_type = event
            .schema
            .symbol(event.fields[env.entity_type].node, &values[env.entity_type])
            .unwrap_or_default();
        let entity_id = values[env.entity_id].as_str().unwrap_or_default();
        let (v, state) = match order_by {
            OrderBy::EntityVersion => {
                let Some(version) = values[env.entity_version].as_i64() else {
                    return Err(Rejection::new(
                        Reason::InvalidEntityVersion,
                        "entity_version is null, and this topic orders events by it",
                    )
                    .into());
                };
                let key = entity_key(entity_type, entity_id);
                let v = verdict(store.last_version(&key), version);
                (v, Some(StateUpdate { key, version }))
            }
            OrderBy::Sequence { value, keyspace } => {
                let key = sequence_key(&keyspace, entity_type, entity_id);
                let v = sequence_verdict(store.last_version(&key), value);
                (
                    v,
                    Some(StateUpdate {
                        key,
                        version: value,
                    }),
                )
            }
            OrderBy::Off => (Verdict::Unordered, None),
        };
        let on_gap = match gaps {
            Gaps::AsConfigured => self.config.on_gap,
            Gaps::Emit => GapPolicy::Emit,
        };
        match v {
            Verdict::Stale if self.config.on_stale == StalePolicy::DeadLetter => {
                Err(Rejection::new(
                    Reason::StaleVersion,
                    "entity_version is older than the last version emitted for the entity",
                )
                .into())
            }
            Verdict::Duplicate | Verdict::Stale => Err(Halt::Skip(v)),
            Verdict::Gap { .. } if on_gap == GapPolicy::Hold => {
                let state = state.expect("a gap is a verdict on a stored version");
                Err(Halt::Hold {
                    key: state.key,
                    version: state.version,
                })
            }
            Verdict::Gap { missing } if on_gap == GapPolicy::DeadLetter => Err(Rejection::new(
                Reason::VersionGap,
                format!("entity_version skips {missing} version(s) after the last accepted one"),
            )
            .into()),
            _ => Ok(Ordered { verdict: v, state }),
        }
    }

    /// Project: the value of each reached tier, holding only what the tier
    /// may see, framed for the output format (registering the tier's
    /// derived schema the first time it is needed).
    fn project(
        &mut self,
        writer: &Writer,
        event: &Event<'_, '_>,
        tiers: Tiers,
        pseudonyms: &mut Pseudonyms<'_>,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Projected, Halt> {
        let mut bufs: [Vec<u8>; 3] = Default::default();
        for (buf, tier) in bufs.iter_mut().zip(&tiers) {
            let framing = match self.config.format {
                OutputFormat::Avro => Framing::Avro(self.derived_id(writer, *tier, registry)?),
                OutputFormat::Json => Framing::Json,
            };
            *buf = start_value(framing);
        }
        match self.config.format {
            OutputFormat::Avro => {
                encode_projections(event.schema, event.datum, &tiers, pseudonyms, &mut bufs)?;
            }
            OutputFormat::Json => {
                write_json_projections(event.schema, event.datum, &tiers, pseudonyms, &mut bufs)?;
            }
        }
        Ok(Projected { tiers, bufs })
    }

    /// A single pass's bodies of the reached tiers; Avro bodies framed with
    /// their derived schemas' ids (registering each the first time, as
    /// [`Engine::project`] does).
    fn frame(
        &mut self,
        writer: &Writer,
        tiers: Tiers,
        mut bodies: [Vec<u8>; 3],
        registry: &mut dyn SchemaLookup,
    ) -> Result<Projected, Halt> {
        let mut bufs: [Vec<u8>; 3] = Default::default();
        for (buf, tier) in bufs.iter_mut().zip(&tiers) {
            let mut body = std::mem::take(&mut bodies[tier.index()]);
            if self.config.format == OutputFormat::Avro {
                let id = self.derived_id(writer, *tier, registry)?;
                body[1..5].copy_from_slice(&id.to_be_bytes());
            }
            *buf = body;
        }
        Ok(Projected { tiers, bufs })
    }

    /// Route: the record of each projected tier, on the tier's topic, keyed
    /// and with headers as the tier may see them.
    fn build_records(
        &self,
        event: &Event<'_, '_>,
        verdict: Verdict,
        projected: Projected,
        pseudonyms: &mut Pseudonyms<'_>,
    ) -> Result<Vec<OutRecord>, NoHashKey> {
        let Projected { tiers, bufs } = projected;
        let mut routing = event_routing(
            event.schema,
            event.env,
            event.datum,
            verdict,
            &tiers,
            pseudonyms,
        );
        // The last record keyed with the `entity_id`, and the last keyed
        // with its pseudonym, take it without a copy.
        let last_keyed = |by_id: bool| {
            tiers
                .iter()
                .copied()
                .rfind(|t| routing.keys_with_entity_id(*t) == by_id)
        };
        let (last_keep, last_hash) = (last_keyed(true), last_keyed(false));
        let mut records = Vec::with_capacity(tiers.len());
        for (tier, buf) in tiers.into_iter().zip(bufs) {
            let topic = self.config.topics.tiers[tier.index()];
            let last = Some(tier) == last_keep || Some(tier) == last_hash;
            records.push(tier_record(&mut routing, tier, topic, buf, last)?);
        }
        Ok(records)
    }

    /// The id of a tier's derived schema, registering it the first time;
    /// a refusal (409, 422) is a rejection of the events that need it.
    fn derived_id(
        &mut self,
        writer: &Writer,
        tier: Tier,
        registry: &mut dyn SchemaLookup,
    ) -> Result<u32, Halt> {
        let derived = &writer.derived[tier.index()];
        if let Some(id) = derived.id.get() {
            return Ok(*id);
        }
        let mut refused = derived.refused.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, at)) = refused.as_ref() {
            if at.elapsed() < REFUSAL_RETRY {
                return Err(r.clone().into());
            }
        }
        let subject = derived_subject(&self.config.topics.tiers[tier.index()], &writer.schema);
        match registry.register(&subject, &derived.text) {
            Ok(id) => {
                *refused = None;
                Ok(*derived.id.get_or_init(|| id))
            }
            Err(LookupError::Unavailable(m)) => Err(EngineError::Transient(m).into()),
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
                Err(r.into())
            }
            Err(other) => Err(EngineError::Fatal(format!(
                "registering the derived {tier} schema under {subject}: {other}"
            ))
            .into()),
        }
    }

    /// A writer schema as the engine keeps it: checked
    /// ([`check_writer_schema`]), refused when it asks for hashing and no
    /// hash key is configured, with what each tier needs of its derived
    /// schema.
    fn compile(&self, id: u32, text: &str) -> Result<Writer, Rejection> {
        let WriterSchema { schema, derived } = check_writer_schema(text, &self.config)?;
        if schema.has_hash() && self.hasher.is_none() {
            return Err(Rejection::new(
                Reason::RedactionUnavailable,
                "the schema asks for hashing and no hash key is configured",
            ));
        }
        let [public, internal, restricted] = derived;
        let derived = [
            (Tier::Public, public),
            (Tier::Internal, internal),
            (Tier::Restricted, restricted),
        ]
        .map(|(tier, d)| DerivedTier {
            text: d.text,
            redacted: redacted_fields(&schema, tier),
            id: OnceLock::new(),
            refused: Mutex::new(None),
        });
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
    ) -> Result<Arc<Writer>, Halt> {
        let unknown = || {
            Halt::Reject(Rejection::new(
                Reason::UnknownSchemaId,
                format!("schema id {id} is not in the registry"),
            ))
        };
        if let Some(c) = self.by_id.get(&id) {
            self.stats.hits += 1;
            return c.clone().map_err(Halt::Reject);
        }
        if self.missing_ids.contains(&id) {
            self.stats.hits += 1;
            return Err(unknown());
        }
        self.stats.misses += 1;
        let cached = match registry.schema_by_id(id) {
            Ok(text) => self.compile(id, &text).map(Arc::new),
            Err(LookupError::NotFound) => {
                remember(&mut self.missing_ids, id);
                return Err(unknown());
            }
            Err(
                LookupError::Unavailable(m) | LookupError::Rejected(m) | LookupError::Refused(m),
            ) => return Err(EngineError::Transient(m).into()),
        };
        // Only ids the registry holds are cached: one entry per registered schema.
        self.by_id.insert(id, cached.clone());
        cached.map_err(Halt::Reject)
    }

    fn writer_for_event_type(
        &mut self,
        topic: &str,
        event_type: &str,
        schema_version: u32,
        registry: &mut dyn SchemaLookup,
    ) -> Result<Arc<Writer>, Halt> {
        let known = self
            .by_event_type
            .get(topic)
            .and_then(|t| t.get(event_type))
            .and_then(|v| v.get(&schema_version));
        if let Some(id) = known {
            return self.writer_by_id(*id, registry);
        }
        let subject = self.config.subjects.subject(topic, event_type);
        let Some(version) = self
            .config
            .subjects
            .subject_version(event_type, schema_version)
        else {
            return Err(Rejection::new(
                Reason::UnknownSchemaVersion,
                format!(
                    "schema_version {schema_version} is not one of the versions the topology maps for this event type"
                ),
            )
            .into());
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
            return Err(r.clone().into());
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
                        return Err(rejection.into());
                    }
                    Err(
                        LookupError::Unavailable(m)
                        | LookupError::Rejected(m)
                        | LookupError::Refused(m),
                    ) => return Err(EngineError::Transient(m).into()),
                }
            }
        };
        let types = self.by_event_type.entry(topic.to_owned()).or_default();
        // Event types come from the input, and a subject template without
        // `{event_type}` maps any of them to a registered subject.
        if types.len() >= MAX_MISSING && !types.contains_key(event_type) {
            types.clear();
        }
        types
            .entry(event_type.to_owned())
            .or_default()
            .insert(schema_version, id);
        self.writer_by_id(id, registry)
    }
}

/// A writer schema the engine can use, with its derived tier schemas.
#[derive(Debug)]
pub struct WriterSchema {
    /// Compiled with the topology's rules; an event envelope.
    pub schema: CompiledSchema,
    /// Per tier ([`Tier::index`]): the derived schema.
    pub derived: [DerivedSchema; 3],
}

/// A tier's derived schema: the writer schema without what the tier may not
/// see.
#[derive(Debug)]
pub struct DerivedSchema {
    /// Its text, as it is registered.
    pub text: String,
    /// Compiled with the topology's rules (JSON output reads it).
    pub compiled: CompiledSchema,
}

/// Why a writer schema cannot be used: every record written with it is
/// dead-lettered with [`SchemaFault::reason`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchemaFault {
    /// It does not compile with the topology's rules: not JSON, not Avro,
    /// or an annotation that cannot be read.
    #[error("{0}")]
    Invalid(SchemaError),
    /// It is not an event envelope: why (a missing or mistyped envelope
    /// field).
    #[error("{0}")]
    NotEnvelope(String),
    /// A tier's derived schema is not valid Avro or does not compile.
    #[error("derived {tier} schema: {message}")]
    Derived {
        /// The tier.
        tier: Tier,
        /// What is wrong with it.
        message: String,
    },
}

impl SchemaFault {
    /// The dead-letter reason of the records written with the schema.
    pub fn reason(&self) -> Reason {
        match self {
            SchemaFault::Invalid(_) | SchemaFault::Derived { .. } => Reason::InvalidSchema,
            SchemaFault::NotEnvelope(_) => Reason::SchemaMismatch,
        }
    }
}

impl From<SchemaFault> for Rejection {
    fn from(f: SchemaFault) -> Self {
        Rejection::new(f.reason(), f.to_string())
    }
}

/// What the engine needs of a writer schema before it reads any record with
/// it: it compiles with the topology's rules, it is an event envelope, and
/// each tier's derived schema is valid Avro that compiles too. The engine
/// refuses a schema that fails ([`Engine::check_schema`]), and `check`
/// reports the same failure. Whether a hash key is needed is
/// [`CompiledSchema::has_hash`]: the engine refuses that apart.
///
/// # Errors
/// The first [`SchemaFault`], in that order.
pub fn check_writer_schema(text: &str, config: &EngineConfig) -> Result<WriterSchema, SchemaFault> {
    let schema = CompiledSchema::compile(text, &config.rules).map_err(SchemaFault::Invalid)?;
    if let Err(why) = schema.envelope() {
        return Err(SchemaFault::NotEnvelope(why.to_owned()));
    }
    let derive = |tier: Tier| -> Result<DerivedSchema, SchemaFault> {
        let fault = |e: &dyn std::fmt::Display| SchemaFault::Derived {
            tier,
            message: e.to_string(),
        };
        let derived = derived_schema(&schema, tier);
        apache_avro::Schema::parse(&derived).map_err(|e| fault(&e))?;
        let text = derived.to_string();
        let compiled = CompiledSchema::compile(&text, &config.rules).map_err(|e| fault(&e))?;
        Ok(DerivedSchema { text, compiled })
    };
    let derived = [
        derive(Tier::Public)?,
        derive(Tier::Internal)?,
        derive(Tier::Restricted)?,
    ];
    Ok(WriterSchema { schema, derived })
}

/// A decoded event that passed validation: its schema, envelope and
/// top-level values, as the later steps read them.
struct Event<'e, 'v> {
    schema: &'e CompiledSchema,
    env: &'e Envelope,
    /// The writer schema's top-level fields (the envelope's).
    fields: &'e [Field],
    datum: &'e Datum<'v>,
    /// The values of `fields`, in schema order.
    values: &'e [Datum<'v>],
}

impl<'e, 'v> Event<'e, 'v> {
    /// The `entity_id`'s bytes (empty when it is not a string).
    fn entity_id(&self) -> &'e [u8] {
        self.values[self.env.entity_id]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
    }

    /// Validate: the writer schema is an event envelope and the value keeps
    /// its rules (ids, versions, timestamps, amounts).
    fn validate(schema: &'e CompiledSchema, datum: &'e Datum<'v>) -> Result<Self, Rejection> {
        let env = schema
            .envelope()
            .map_err(|why| Rejection::new(Reason::SchemaMismatch, why))?;
        validate(schema, env, datum)?;
        let Datum::Record(values) = datum else {
            return Err(Rejection::new(
                Reason::SchemaMismatch,
                "the event is not a record",
            ));
        };
        Ok(Event {
            schema,
            env,
            fields: schema.root_fields(),
            datum,
            values,
        })
    }

    /// The event's `trace_id` and `correlation_id` for log lines, each only
    /// where its schema classifies it at most internal.
    fn log_ids(&self) -> LogIds {
        if !tracing::enabled!(target: "privacy_router::telemetry", tracing::Level::DEBUG) {
            // Only telemetry's debug line "Routed." reads them: not copied
            // unless it is on.
            return LogIds::default();
        }
        let loggable = |i: Option<usize>| {
            let i = i?;
            (self.fields[i].class.tier <= Tier::Internal)
                .then(|| self.values[i].as_str().map(str::to_owned))
                .flatten()
        };
        LogIds {
            trace_id: loggable(self.env.trace_id),
            correlation_id: loggable(self.env.correlation_id),
        }
    }
}

/// What the tier check found.
struct TierCheck {
    /// The tiers the event reaches, least sensitive first.
    reached: Tiers,
    /// The schema path of a value above the declared tier, if any.
    mismatch: Option<String>,
}

/// How [`Engine::process_as`] treats a version gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gaps {
    /// As the topology's `ordering.on_gap` says.
    AsConfigured,
    /// Emitted with the `x-version-gap` header: a held event whose reorder
    /// window expired.
    Emit,
}

/// What the order step decided.
struct Ordered {
    /// Accepted, a gap to emit, or unordered.
    verdict: Verdict,
    /// The store write that accepting the event makes.
    state: Option<StateUpdate>,
}

/// The JSON documents an event's value borrows from: an adapter's output,
/// or a canonical JSON event (which borrows from the record).
#[derive(Default)]
struct Docs<'v> {
    adapted: Option<serde_json::Value>,
    canonical: Option<Json<'v>>,
}

/// A record's value, for the single pass that reads it.
enum SinglePass<'v> {
    /// Framed Avro, for Avro tiers ([`crate::schema::pass`]).
    Avro(&'v [u8]),
    /// A JSON object, for JSON tiers ([`crate::schema::json_pass`]).
    Json(&'v [u8]),
}

/// Where an event's tier bodies come from.
enum Bodies {
    /// Projected from the decoded tree once the event is ordered.
    Tree,
    /// Written by a single pass, by tier index: Avro bodies each after a
    /// frame header whose schema id is still to be set, or JSON values.
    Passed {
        bodies: [Vec<u8>; 3],
        entity_pseudonym: Option<[u8; 64]>,
    },
}

/// A framed Avro body read with its writer schema.
fn read_avro<'v>(writer: &Writer, body: &'v [u8]) -> Result<Datum<'v>, Halt> {
    binary::decode(&writer.schema, body)
        .map_err(|e| Rejection::new(Reason::MalformedAvro, e.to_string()).into())
}

/// The projected values of one event, ready to be framed into records.
struct Projected {
    /// The tiers projected, least sensitive first.
    tiers: Tiers,
    /// Each tier's value, by position in `tiers`: [`start_value`] followed
    /// by the projected Avro body or JSON value.
    bufs: [Vec<u8>; 3],
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
