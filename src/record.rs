//! The types that flow through the pipeline: raw input records, decoded
//! values ([`Datum`]), privacy tiers, and what the pipeline emits: output
//! records ([`OutRecord`], each with its [`Destination`]) and the
//! [`Outcome`] of one input record (tier records and the state update, a
//! skip, or a dead letter).
//!
//! Nothing here does I/O; every stage imports these types and nothing from a
//! later stage. The outcome names the ordering verdict
//! ([`crate::order::Verdict`]), the one type taken from a stage.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

use crate::order::Verdict;

/// A privacy tier. Ordered: `Public < Internal < Restricted`.
///
/// A record for tier `T` holds only values classified `<= T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// No PII at all: analytics, consumer APIs.
    Public,
    /// Internal ids and business metrics; never email, phone or IP.
    Internal,
    /// Everything, PII included: compliance and legal hold only.
    Restricted,
}

impl Tier {
    /// All tiers, least to most sensitive.
    pub const ALL: [Tier; 3] = [Tier::Public, Tier::Internal, Tier::Restricted];

    /// The lowercase name used in schemas, headers and topology files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Public => "public",
            Tier::Internal => "internal",
            Tier::Restricted => "restricted",
        }
    }

    /// Parses the lowercase name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "public" => Some(Tier::Public),
            "internal" => Some(Tier::Internal),
            "restricted" => Some(Tier::Restricted),
            _ => None,
        }
    }

    /// Position in [`Tier::ALL`], for per-tier arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded Avro value, positional (record fields in schema order), borrowing
/// from the input buffer where it can.
///
/// Logical types are carried as their underlying Avro type (a `uuid` is a
/// `String`); the compiled schema says what they mean.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum<'a> {
    /// Avro `null`.
    Null,
    /// Avro `boolean`.
    Boolean(bool),
    /// Avro `int`.
    Int(i32),
    /// Avro `long`.
    Long(i64),
    /// Avro `float`.
    Float(f32),
    /// Avro `double`.
    Double(f64),
    /// Avro `bytes`.
    Bytes(Cow<'a, [u8]>),
    /// Avro `string`.
    String(Cow<'a, str>),
    /// Avro `fixed`.
    Fixed(Cow<'a, [u8]>),
    /// Avro `enum`: the symbol's index.
    Enum(u32),
    /// Avro `array`.
    Array(Vec<Datum<'a>>),
    /// Avro `map`, in wire order.
    Map(Vec<(Cow<'a, str>, Datum<'a>)>),
    /// Avro `union`: the branch index and its value.
    Union(u32, Box<Datum<'a>>),
    /// Avro `record`: field values in schema order.
    Record(Vec<Datum<'a>>),
}

impl Datum<'_> {
    /// The same value, owning its strings and bytes.
    pub fn into_owned(self) -> Datum<'static> {
        match self {
            Datum::Null => Datum::Null,
            Datum::Boolean(b) => Datum::Boolean(b),
            Datum::Int(i) => Datum::Int(i),
            Datum::Long(l) => Datum::Long(l),
            Datum::Float(f) => Datum::Float(f),
            Datum::Double(d) => Datum::Double(d),
            Datum::Bytes(b) => Datum::Bytes(Cow::Owned(b.into_owned())),
            Datum::String(s) => Datum::String(Cow::Owned(s.into_owned())),
            Datum::Fixed(b) => Datum::Fixed(Cow::Owned(b.into_owned())),
            Datum::Enum(i) => Datum::Enum(i),
            Datum::Array(xs) => Datum::Array(xs.into_iter().map(Datum::into_owned).collect()),
            Datum::Map(es) => Datum::Map(
                es.into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                    .collect(),
            ),
            Datum::Union(i, d) => Datum::Union(i, Box::new(d.into_owned())),
            Datum::Record(xs) => Datum::Record(xs.into_iter().map(Datum::into_owned).collect()),
        }
    }

    /// The value under any union wrappers.
    pub fn unwrap_union(&self) -> &Self {
        let mut d = self;
        while let Datum::Union(_, inner) = d {
            d = inner;
        }
        d
    }

    /// True for `null`, also inside a union.
    pub fn is_null(&self) -> bool {
        matches!(self.unwrap_union(), Datum::Null)
    }

    /// The string value, also inside a union.
    pub fn as_str(&self) -> Option<&str> {
        match self.unwrap_union() {
            Datum::String(s) => Some(s),
            _ => None,
        }
    }

    /// An `int` or `long` value, also inside a union.
    pub fn as_i64(&self) -> Option<i64> {
        match self.unwrap_union() {
            Datum::Int(i) => Some(i64::from(*i)),
            Datum::Long(l) => Some(*l),
            _ => None,
        }
    }
}

/// What orders an event against the earlier events of its entity.
///
/// Canonical events are ordered by their `entity_version`. A producer
/// without one is ordered by what its topic's adapter declares: a sequence
/// number, or nothing at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderBy {
    /// The envelope's `entity_version`: contiguous per entity, so a skipped
    /// version is a gap.
    EntityVersion,
    /// A number that only increases but is shared across entities (e.g. a
    /// NATS JetStream stream sequence): per entity it has holes, so a jump
    /// is not a gap; equal is a duplicate and lower is stale. `keyspace`
    /// (the adapter's name) keeps these numbers apart from entity versions
    /// and from other streams' sequences in the version store.
    Sequence {
        /// The sequence number of this event.
        value: i64,
        /// The version-store keyspace of this sequence.
        keyspace: Arc<str>,
    },
    /// No ordering: the event is routed as it comes, without a verdict or a
    /// version-store write (the adapter's `ordering: off`, or a missing
    /// sequence its topology routes unordered).
    Off,
}

/// Where a raw record came from: enough to point at it from a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Input topic.
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
}

/// A record as it arrives from the input topic.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Where it came from.
    pub source: &'a Source,
    /// The record key, if any.
    pub key: Option<&'a [u8]>,
    /// The record value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// The record headers, in order.
    pub headers: RawHeaders<'a>,
}

/// The headers of an input record, in order: read already, or read only
/// when something keeps them (its dead letter, a held event's copy).
/// Reading a Kafka record's headers parses its header bytes into a list
/// that librdkafka allocates, one allocation per header, on every record,
/// including one without headers; the tier records of an accepted event
/// carry none of them.
#[derive(Clone, Copy)]
pub enum RawHeaders<'a> {
    /// Headers read already.
    Read(&'a [(String, Vec<u8>)]),
    /// Headers read when [`RawHeaders::to_vec`] is called.
    Deferred(&'a dyn Fn() -> Vec<(String, Vec<u8>)>),
}

impl RawHeaders<'_> {
    /// No headers.
    pub const NONE: RawHeaders<'static> = RawHeaders::Read(&[]);

    /// The headers, read now where they were deferred.
    pub fn to_vec(&self) -> Vec<(String, Vec<u8>)> {
        match self {
            RawHeaders::Read(h) => h.to_vec(),
            RawHeaders::Deferred(read) => read(),
        }
    }
}

impl<'a> From<&'a Vec<(String, Vec<u8>)>> for RawHeaders<'a> {
    fn from(h: &'a Vec<(String, Vec<u8>)>) -> Self {
        RawHeaders::Read(h)
    }
}

/// Names and sizes only: header values may be payload.
impl fmt::Debug for RawHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawHeaders::Read(h) => f
                .debug_list()
                .entries(h.iter().map(|(k, v)| (k, v.len())))
                .finish(),
            RawHeaders::Deferred(_) => f.write_str("<not read yet>"),
        }
    }
}

/// A header name: our own names are static, copied input headers are not.
pub type HeaderName = Cow<'static, str>;

/// A header value. Short ones (every routing header) are held inline, so
/// each tier record's copy costs no allocation and no reference count.
pub type HeaderValue = smallvec::SmallVec<[u8; 24]>;

/// What an output record is for: the tier it was projected for, or the
/// dead-letter topic. Set where the record is built, so nothing downstream
/// works it out again from the topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A tier record: holds only what this tier may see.
    Tier(Tier),
    /// A dead letter: the input record unchanged (raw PII included), plus
    /// the error headers.
    DeadLetter,
}

impl Destination {
    /// The tier of a tier record; `None` for a dead letter.
    pub fn tier(self) -> Option<Tier> {
        match self {
            Destination::Tier(t) => Some(t),
            Destination::DeadLetter => None,
        }
    }
}

/// A topic name, interned: a copy is a pointer and a length, without the
/// atomic reference count an `Arc<str>` clone and drop take (six for an
/// event's three tier records, when they held an `Arc<str>`). Each distinct
/// name is kept once for the life of the process, so it is for names that
/// are few and fixed: the topology's output topics (tiers and dead
/// letter), never a name read from input.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(&'static str);

impl TopicName {
    /// The interned name.
    pub fn new(name: &str) -> Self {
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = names.get(name) {
            return TopicName(n);
        }
        let n: &'static str = Box::leak(name.into());
        names.insert(n);
        TopicName(n)
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for TopicName {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl From<&str> for TopicName {
    fn from(name: &str) -> Self {
        TopicName::new(name)
    }
}

impl PartialEq<str> for TopicName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TopicName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: TopicName,
    /// The tier it was built for, or the dead letter.
    pub destination: Destination,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` only for the dead letter of a tombstone.
    pub value: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl OutRecord {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
    }
}

/// Why a record was dead-lettered: a stable code, written to the
/// `x-error-reason` header and used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The record had no value, or an empty one.
    EmptyValue,
    /// The first byte is neither the Confluent magic byte `0x00` nor `{`.
    UnknownMagicByte,
    /// A Confluent frame shorter than its 5-byte header.
    TruncatedFrame,
    /// The frame names a schema id the registry does not hold.
    UnknownSchemaId,
    /// The registry holds a schema for this id or subject that is not valid Avro.
    InvalidSchema,
    /// The Avro body does not decode with its writer schema.
    MalformedAvro,
    /// The value starts like JSON but is not a JSON object.
    MalformedJson,
    /// A producer's event does not fit the adapter its topic declares: the
    /// field naming the event type, or a field the adapter maps into the
    /// canonical envelope, is missing or of the wrong JSON type.
    AdapterMismatch,
    /// The event does not have the shape of its schema, or the schema is not an
    /// event envelope.
    SchemaMismatch,
    /// No schema is registered for the JSON event's `event_type`.
    UnknownEventType,
    /// The JSON event's `schema_version` names a version that its subject
    /// does not have (it is never read with another version).
    UnknownSchemaVersion,
    /// `event_type` is missing or does not match `^[a-z]+\.[a-z_]+$`.
    InvalidEventType,
    /// `event_id` (or another `uuid` field) is not a UUID.
    InvalidUuid,
    /// `entity_id` is empty.
    InvalidEntityId,
    /// `entity_version < 1`.
    InvalidEntityVersion,
    /// `schema_version < 1`.
    InvalidSchemaVersion,
    /// A `*_cents` field is negative.
    NegativeCents,
    /// A `*_count` field is negative.
    NegativeCount,
    /// A `*_at` field is not an ISO 8601 UTC instant.
    InvalidTimestamp,
    /// A non-null field is classified above the declared `privacy_tier`
    /// (dead-lettered only when the topology asks for it).
    TierMismatch,
    /// `entity_version` skips versions (dead-lettered only when the topology
    /// asks for it).
    VersionGap,
    /// `entity_version` is older than the entity's last emitted version
    /// (dead-lettered only when the topology asks for it).
    StaleVersion,
    /// The schema asks for hashing (or the key must be pseudonymised) but no
    /// hash key is configured.
    RedactionUnavailable,
    /// The registry refused a derived tier schema the event needs
    /// (incompatible with the output subject's earlier versions, or
    /// invalid); the event stays replayable once the subject accepts it.
    DerivedSchemaRejected,
}

impl Reason {
    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 24] = [
        Reason::EmptyValue,
        Reason::UnknownMagicByte,
        Reason::TruncatedFrame,
        Reason::UnknownSchemaId,
        Reason::InvalidSchema,
        Reason::MalformedAvro,
        Reason::MalformedJson,
        Reason::AdapterMismatch,
        Reason::SchemaMismatch,
        Reason::UnknownEventType,
        Reason::UnknownSchemaVersion,
        Reason::InvalidEventType,
        Reason::InvalidUuid,
        Reason::InvalidEntityId,
        Reason::InvalidEntityVersion,
        Reason::InvalidSchemaVersion,
        Reason::NegativeCents,
        Reason::NegativeCount,
        Reason::InvalidTimestamp,
        Reason::TierMismatch,
        Reason::VersionGap,
        Reason::StaleVersion,
        Reason::RedactionUnavailable,
        Reason::DerivedSchemaRejected,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::EmptyValue => "empty_value",
            Reason::UnknownMagicByte => "unknown_magic_byte",
            Reason::TruncatedFrame => "truncated_frame",
            Reason::UnknownSchemaId => "unknown_schema_id",
            Reason::InvalidSchema => "invalid_schema",
            Reason::MalformedAvro => "malformed_avro",
            Reason::MalformedJson => "malformed_json",
            Reason::AdapterMismatch => "adapter_mismatch",
            Reason::SchemaMismatch => "schema_mismatch",
            Reason::UnknownEventType => "unknown_event_type",
            Reason::UnknownSchemaVersion => "unknown_schema_version",
            Reason::InvalidEventType => "invalid_event_type",
            Reason::InvalidUuid => "invalid_uuid",
            Reason::InvalidEntityId => "invalid_entity_id",
            Reason::InvalidEntityVersion => "invalid_entity_version",
            Reason::InvalidSchemaVersion => "invalid_schema_version",
            Reason::NegativeCents => "negative_cents",
            Reason::NegativeCount => "negative_count",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TierMismatch => "tier_mismatch",
            Reason::VersionGap => "version_gap",
            Reason::StaleVersion => "stale_version",
            Reason::RedactionUnavailable => "redaction_unavailable",
            Reason::DerivedSchemaRejected => "derived_schema_rejected",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejection: a reason code and a detail text that names schema paths and
/// limits but never quotes a payload value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code.
    pub reason: Reason,
    /// Human-readable detail without payload values.
    pub detail: String,
}

impl Rejection {
    /// A rejection with its detail.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
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
    /// Empty unless debug logging is on: only a debug line reads them.
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
    /// Ahead of its entity's next version, under `on_gap: hold`: to be held
    /// for the reorder window ([`crate::reorder`]); nothing is emitted yet.
    Held {
        /// The entity's state key.
        key: Vec<u8>,
        /// Its version.
        version: i64,
    },
    /// Produce this record to the dead-letter topic.
    DeadLettered {
        /// The dead-letter record (the original, plus error headers).
        record: OutRecord,
        /// Why.
        rejection: Rejection,
    },
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_name_is_kept_once_and_reads_as_given() {
        let a = TopicName::new("events.public");
        let b = TopicName::from(String::from("events.public").as_str());
        let c = TopicName::new("events.internal");
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "one copy a name");
        assert_ne!(a, c);
        assert_eq!(&*a, "events.public");
        assert_eq!(a, "events.public");
        assert_eq!(c.to_string(), "events.internal");
        assert_eq!(format!("{a:?}"), "\"events.public\"");
    }

    #[test]
    fn deferred_headers_are_read_when_kept_and_never_shown() {
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            vec![("traceparent".to_owned(), b"00-secret".to_vec())]
        };
        let h = RawHeaders::Deferred(&read);
        assert_eq!(format!("{h:?}"), "<not read yet>");
        assert_eq!(reads.get(), 0, "not read to be shown");
        assert_eq!(h.to_vec(), read());
        let kept = vec![("traceparent".to_owned(), b"00-secret".to_vec())];
        let shown = format!("{:?}", RawHeaders::from(&kept));
        assert_eq!(shown, r#"[("traceparent", 9)]"#, "names and sizes only");
        assert_eq!(RawHeaders::NONE.to_vec(), Vec::new());
    }

    #[test]
    fn the_readme_lists_every_reason_code_once() {
        let readme = include_str!("../README.md");
        let list = readme
            .split("Reason codes:")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("the README has a reason code list");
        let listed: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
        let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(listed, codes);
    }
}
