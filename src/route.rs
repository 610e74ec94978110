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

use std::sync::Arc;

use crate::order::Verdict;
use crate::project::{encode_projection, treatment, Hasher, NoHashKey, Treatment};
use crate::record::{Datum, OutRecord, RawRecord, Rejection, Tier};
use crate::schema::{binary, json, CompiledSchema, Envelope};

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

/// How a tier record's value is written.
#[derive(Debug, Clone, Copy)]
pub enum Framing<'a> {
    /// Confluent wire format: magic byte, derived schema id, Avro body.
    Avro(u32),
    /// Plain JSON rendered with the derived schema.
    Json(&'a CompiledSchema),
}

/// Appends the Confluent wire-format header.
pub fn put_frame_header(out: &mut Vec<u8>, schema_id: u32) {
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// Builds the record of one tier. Returns it with the number of fields the
/// tier did not get as they were (removed or hashed).
///
/// # Errors
/// [`NoHashKey`] when the tier needs a pseudonym and there is no hasher.
#[allow(clippy::too_many_arguments)]
pub fn tier_record(
    schema: &CompiledSchema,
    env: &Envelope,
    datum: &Datum<'_>,
    verdict: Verdict,
    tier: Tier,
    topic: &Arc<str>,
    framing: Framing<'_>,
    hasher: Option<&Hasher>,
) -> Result<OutRecord, NoHashKey> {
    let fields = schema.root_fields();
    let Datum::Record(values) = datum else {
        unreachable!("validated envelopes are records")
    };
    let visible = |i: usize| treatment(fields[i].class, tier) == Treatment::Keep;

    let entity_id = values[env.entity_id].as_str().unwrap_or_default();
    let key = if visible(env.entity_id) {
        entity_id.as_bytes().to_vec()
    } else {
        hasher
            .ok_or(NoHashKey)?
            .pseudonym(entity_id.as_bytes())
            .into_bytes()
    };

    let mut value = Vec::with_capacity(256);
    match framing {
        Framing::Avro(id) => {
            put_frame_header(&mut value, id);
            encode_projection(schema, datum, tier, hasher, &mut value)?;
        }
        Framing::Json(derived) => {
            let mut body = Vec::with_capacity(256);
            encode_projection(schema, datum, tier, hasher, &mut body)?;
            let d = binary::decode(derived, &body)
                .expect("a projection decodes with its derived schema");
            value = serde_json::to_vec(&json::render(derived, derived.root(), &d))
                .expect("JSON values serialise");
        }
    }

    let mut headers = Vec::with_capacity(5);
    if visible(env.event_type) {
        if let Some(t) = values[env.event_type].as_str() {
            headers.push((H_EVENT_TYPE.into(), t.as_bytes().to_vec()));
        }
    }
    if visible(env.entity_type) {
        if let Some(t) = schema.symbol(fields[env.entity_type].node, &values[env.entity_type]) {
            headers.push((H_ENTITY_TYPE.into(), t.as_bytes().to_vec()));
        }
    }
    if visible(env.entity_version) {
        if let Some(v) = values[env.entity_version].as_i64() {
            headers.push((H_ENTITY_VERSION.into(), v.to_string().into_bytes()));
            if let Verdict::Gap { missing } = verdict {
                headers.push((H_VERSION_GAP.into(), missing.to_string().into_bytes()));
            }
        }
    }
    headers.push((H_TIER.into(), tier.as_str().as_bytes().to_vec()));
    Ok(OutRecord {
        topic: topic.clone(),
        key: Some(key),
        value: Some(value),
        headers,
    })
}

/// The dead-letter record of a rejected input: key, value and headers
/// unchanged, plus the `x-error-*` and `x-source-*` headers.
pub fn dead_letter(raw: &RawRecord<'_>, rejection: &Rejection, topic: &Arc<str>) -> OutRecord {
    let mut headers: Vec<_> = raw
        .headers
        .iter()
        .map(|(k, v)| (k.clone().into(), v.clone()))
        .collect();
    headers.push((
        H_ERROR_REASON.into(),
        rejection.reason.code().as_bytes().to_vec(),
    ));
    headers.push((H_ERROR_DETAIL.into(), rejection.detail.as_bytes().to_vec()));
    headers.push((H_SOURCE_TOPIC.into(), raw.source.topic.as_bytes().to_vec()));
    headers.push((
        H_SOURCE_PARTITION.into(),
        raw.source.partition.to_string().into_bytes(),
    ));
    headers.push((
        H_SOURCE_OFFSET.into(),
        raw.source.offset.to_string().into_bytes(),
    ));
    OutRecord {
        topic: topic.clone(),
        key: raw.key.map(<[u8]>::to_vec),
        value: raw.value.map(<[u8]>::to_vec),
        headers,
    }
}
