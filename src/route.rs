//! Routing: tier views become output records (topic, key, headers, framed
//! value), and rejected input becomes a dead-letter record.
//!
//! * Key: `entity_id` as the tier may see it: the value itself where the tier
//!   keeps the field, its keyed pseudonym otherwise (so one entity still maps
//!   to one partition in every tier topic).
//! * Headers `event_type`, `entity_type`, `entity_version` and
//!   `x-version-gap` obey the classification of the field they come from;
//!   `privacy_tier` names the record's tier.
//! * Value: Confluent wire format with the derived schema's id, or JSON.

use crate::classify::FieldClass;
use crate::order::Verdict;
use crate::project::{treatment, NoHashKey, Pseudonyms, Treatment};
use crate::record::{
    Datum, Destination, HeaderValue, OutRecord, RawRecord, Rejection, Tier, TopicName,
};
use crate::schema::{CompiledSchema, Envelope};

/// Header: the event's type.
pub const H_EVENT_TYPE: &str = "event_type";
/// Header: the entity type.
pub const H_ENTITY_TYPE: &str = "entity_type";
/// Header: the entity version.
pub const H_ENTITY_VERSION: &str = "entity_version";
/// Header: the tier of this record.
pub const H_TIER: &str = "privacy_tier";
/// Header: how many versions are missing before this one.
pub const H_VERSION_GAP: &str = "x-version-gap";
/// Dead-letter header: the reason code.
pub const H_ERROR_REASON: &str = "x-error-reason";
/// Dead-letter header: the detail (never a payload value).
pub const H_ERROR_DETAIL: &str = "x-error-detail";
/// Dead-letter header: the input topic.
pub const H_SOURCE_TOPIC: &str = "x-source-topic";
/// Dead-letter header: the input partition.
pub const H_SOURCE_PARTITION: &str = "x-source-partition";
/// Dead-letter header: the input offset.
pub const H_SOURCE_OFFSET: &str = "x-source-offset";
/// Dead-letter header of Kafka Streams (KIP-1034): the input topic.
pub const H_STREAMS_TOPIC: &str = "__streams.errors.topic";
/// Dead-letter header of Kafka Streams (KIP-1034): the input partition.
pub const H_STREAMS_PARTITION: &str = "__streams.errors.partition";
/// Dead-letter header of Kafka Streams (KIP-1034): the input offset.
pub const H_STREAMS_OFFSET: &str = "__streams.errors.offset";
/// Dead-letter header of Kafka Streams (KIP-1034), where it names the Java
/// exception class: here the reason code, the same as `x-error-reason`.
pub const H_STREAMS_EXCEPTION: &str = "__streams.errors.exception";
/// Dead-letter header of Kafka Streams (KIP-1034): the exception's message,
/// here the detail (never a payload value), the same as `x-error-detail`.
pub const H_STREAMS_MESSAGE: &str = "__streams.errors.message";

/// How a tier record's value is written.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    /// Confluent wire format: magic byte, derived schema id, Avro body.
    Avro(u32),
    /// Plain JSON, as the derived schema renders it (see
    /// [`crate::project::write_json_projections`]).
    Json,
}

/// Appends the Confluent wire-format header.
pub fn put_frame_header(out: &mut Vec<u8>, schema_id: u32) {
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// What the tier records of one event share, built once per event: the
/// routing headers and the key, each with the classification of the
/// envelope field it comes from, which decides what each tier gets.
#[derive(Debug, Clone)]
pub struct EventRouting {
    headers: Vec<(FieldClass, &'static str, RoutingValue)>,
    entity_id_class: FieldClass,
    entity_id: Vec<u8>,
    /// The key of tiers that may not see `entity_id`; `None` without a
    /// hasher, or when every routed tier sees it.
    pseudonym: Option<Vec<u8>>,
}

impl EventRouting {
    /// Whether `tier`'s record is keyed with the `entity_id` itself (the
    /// tier sees it), not with its pseudonym.
    pub fn keys_with_entity_id(&self, tier: Tier) -> bool {
        treatment(self.entity_id_class, tier) == Treatment::Keep
    }
}

/// A routing header's value, kept so that each tier record's copy is one
/// move of a whole buffer: `HeaderValue::from_slice` copies the bytes with
/// a call to `memcpy` into a value on the stack, which the record's header
/// list then reads back in wider loads that the processor cannot forward
/// from those stores (a stall that was most of [`tier_record`]'s time in a
/// native profile of the pure path).
#[derive(Debug, Clone)]
enum RoutingValue {
    /// Up to [`INLINE`] bytes: the buffer and the length.
    Inline([u8; INLINE], usize),
    /// Longer values (an `event_type` may be).
    Spilled(Vec<u8>),
}

/// What a [`HeaderValue`] holds without an allocation.
const INLINE: usize = 24;

/// Each tier's name as a whole [`HeaderValue`] buffer, by [`Tier::index`].
const TIER_VALUES: [[u8; INLINE]; 3] = {
    let mut t = [[0u8; INLINE]; 3];
    let mut i = 0;
    while i < 3 {
        let name = Tier::ALL[i].as_str().as_bytes();
        let mut j = 0;
        while j < name.len() {
            t[i][j] = name[j];
            j += 1;
        }
        i += 1;
    }
    t
};

impl RoutingValue {
    fn new(v: &[u8]) -> Self {
        match v.len() {
            len @ ..=INLINE => {
                let mut buf = [0u8; INLINE];
                buf[..len].copy_from_slice(v);
                RoutingValue::Inline(buf, len)
            }
            _ => RoutingValue::Spilled(v.to_vec()),
        }
    }

    fn header_value(&self) -> HeaderValue {
        match self {
            RoutingValue::Inline(buf, len) => HeaderValue::from_buf_and_len(*buf, *len),
            RoutingValue::Spilled(v) => HeaderValue::from_slice(v),
        }
    }
}

/// Collects the routing facts of an event bound for `tiers`.
pub fn event_routing(
    schema: &CompiledSchema,
    env: &Envelope,
    datum: &Datum<'_>,
    verdict: Verdict,
    tiers: &[Tier],
    pseudonyms: &mut Pseudonyms<'_>,
) -> EventRouting {
    let fields = schema.root_fields();
    let class = |i: usize| fields[i].class;
    let values: &[Datum<'_>] = match datum {
        Datum::Record(values) => values,
        _ => &[],
    };
    let mut headers = Vec::with_capacity(4);
    if let Some(t) = values.get(env.event_type).and_then(Datum::as_str) {
        headers.push((
            class(env.event_type),
            H_EVENT_TYPE,
            RoutingValue::new(t.as_bytes()),
        ));
    }
    if let Some(t) = values
        .get(env.entity_type)
        .and_then(|d| schema.symbol(fields[env.entity_type].node, d))
    {
        headers.push((
            class(env.entity_type),
            H_ENTITY_TYPE,
            RoutingValue::new(t.as_bytes()),
        ));
    }
    if let Some(v) = values.get(env.entity_version).and_then(Datum::as_i64) {
        let c = class(env.entity_version);
        headers.push((c, H_ENTITY_VERSION, decimal(v)));
        if let Verdict::Gap { missing } = verdict {
            headers.push((c, H_VERSION_GAP, decimal(missing)));
        }
    }
    let entity_id = values
        .get(env.entity_id)
        .and_then(Datum::as_str)
        .unwrap_or_default()
        .as_bytes();
    let entity_id_class = class(env.entity_id);
    let hidden_somewhere = tiers
        .iter()
        .any(|t| treatment(entity_id_class, *t) != Treatment::Keep);
    EventRouting {
        headers,
        entity_id_class,
        entity_id: entity_id.to_vec(),
        pseudonym: if hidden_somewhere {
            pseudonyms.of(entity_id).ok().map(|p| p.to_vec())
        } else {
            None
        },
    }
}

/// A number as a header value, in decimal, without a `String` between.
fn decimal(v: impl Into<i128>) -> RoutingValue {
    let v: i128 = v.into();
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    let mut rest = v.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if v < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    RoutingValue::new(&digits[at..])
}

/// Starts a tier record's value: the wire-format header for Avro, nothing
/// for JSON. The projected Avro body (see
/// [`crate::project::encode_projections`]) or JSON value (see
/// [`crate::project::write_json_projections`]) is appended to it before
/// [`tier_record`] finishes it.
pub fn start_value(framing: Framing) -> Vec<u8> {
    let mut v = Vec::with_capacity(512);
    if let Framing::Avro(id) = framing {
        put_frame_header(&mut v, id);
    }
    v
}

/// Builds the record of one tier from its value buffer: [`start_value`]
/// followed by the projected value. `last`: no later record of the event
/// is keyed as this one is (with the `entity_id`, or with its pseudonym),
/// so the key is moved out of `routing` instead of copied.
///
/// # Errors
/// [`NoHashKey`] when the tier needs the key's pseudonym and there is no
/// hasher.
pub fn tier_record(
    routing: &mut EventRouting,
    tier: Tier,
    topic: TopicName,
    buf: Vec<u8>,
    last: bool,
) -> Result<OutRecord, NoHashKey> {
    let visible = |class: FieldClass| treatment(class, tier) == Treatment::Keep;
    let key = if routing.keys_with_entity_id(tier) {
        &mut routing.entity_id
    } else {
        routing.pseudonym.as_mut().ok_or(NoHashKey)?
    };
    let key = if last {
        std::mem::take(key)
    } else {
        key.clone()
    };

    let mut headers = Vec::with_capacity(routing.headers.len() + 1);
    for (class, name, v) in &routing.headers {
        if visible(*class) {
            headers.push(((*name).into(), v.header_value()));
        }
    }
    headers.push((
        H_TIER.into(),
        HeaderValue::from_buf_and_len(TIER_VALUES[tier.index()], tier.as_str().len()),
    ));
    Ok(OutRecord {
        topic,
        destination: Destination::Tier(tier),
        key: Some(key),
        value: Some(buf),
        headers,
    })
}

/// The dead-letter record of a rejected input: key, value and headers
/// unchanged, plus the `x-error-*` and `x-source-*` headers and the same
/// facts under Kafka Streams' `__streams.errors.*` names (KIP-1034), so
/// tools written for its dead-letter queues read ours.
pub fn dead_letter(raw: &RawRecord<'_>, rejection: &Rejection, topic: TopicName) -> OutRecord {
    let mut headers: Vec<_> = raw
        .headers
        .to_vec()
        .into_iter()
        .map(|(k, v)| (k.into(), HeaderValue::from_vec(v)))
        .collect();
    let reason = HeaderValue::from_slice(rejection.reason.code().as_bytes());
    let detail = HeaderValue::from_slice(rejection.detail.as_bytes());
    let source_topic = HeaderValue::from_slice(raw.source.topic.as_bytes());
    let partition = HeaderValue::from_slice(raw.source.partition.to_string().as_bytes());
    let offset = HeaderValue::from_slice(raw.source.offset.to_string().as_bytes());
    // `HeaderValue::clone` copies byte by byte; `from_slice` is a memcpy.
    headers.extend([
        (H_ERROR_REASON.into(), HeaderValue::from_slice(&reason)),
        (H_ERROR_DETAIL.into(), HeaderValue::from_slice(&detail)),
        (
            H_SOURCE_TOPIC.into(),
            HeaderValue::from_slice(&source_topic),
        ),
        (
            H_SOURCE_PARTITION.into(),
            HeaderValue::from_slice(&partition),
        ),
        (H_SOURCE_OFFSET.into(), HeaderValue::from_slice(&offset)),
        (H_STREAMS_TOPIC.into(), source_topic),
        (H_STREAMS_PARTITION.into(), partition),
        (H_STREAMS_OFFSET.into(), offset),
        (H_STREAMS_EXCEPTION.into(), reason),
        (H_STREAMS_MESSAGE.into(), detail),
    ]);
    OutRecord {
        topic,
        destination: Destination::DeadLetter,
        key: raw.key.map(<[u8]>::to_vec),
        value: raw.value.map(<[u8]>::to_vec),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        for v in [0i64, 7, 10, 1234, -1, -90, i64::MAX, i64::MIN] {
            assert_eq!(
                &decimal(v).header_value()[..],
                v.to_string().as_bytes(),
                "{v}"
            );
        }
        assert_eq!(
            &decimal(u64::MAX).header_value()[..],
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn routing_values_are_the_bytes_they_were_made_from() {
        let long: Vec<u8> = (0..60u8).map(|i| b'a' + i % 26).collect();
        for len in [0, 1, 11, INLINE - 1, INLINE, INLINE + 1, 60] {
            let v = RoutingValue::new(&long[..len]);
            assert_eq!(matches!(v, RoutingValue::Inline(..)), len <= INLINE);
            assert_eq!(&v.header_value()[..], &long[..len], "{len}");
        }
        for tier in Tier::ALL {
            let v = HeaderValue::from_buf_and_len(TIER_VALUES[tier.index()], tier.as_str().len());
            assert_eq!(&v[..], tier.as_str().as_bytes());
        }
    }
}
