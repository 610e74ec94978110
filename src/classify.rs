//! Classification: from a field's schema annotations to its privacy tier.
//!
//! * `"privacy": "public" | "internal" | "restricted"` on a field is its label;
//!   on a record it is the default for that record's own fields (not for the
//!   fields of records nested inside it).
//! * `"confluent:tags": [...]` on a field map to tiers through [`TagMap`]; an
//!   unmapped tag adds nothing. Where labels and tags disagree the strictest
//!   wins.
//! * **Fail closed**: a field with no label, no mapped tag and no default from
//!   its own record is `restricted`.
//! * **Overrides** from the topology ([`Overrides`]) raise a field's tier —
//!   never lower it — for every version of every schema that has the field.
//!
//! A value's tier is the highest label on its path; because a container above
//! tier `T` is removed whole from `T`'s record, projection only needs each
//! field's own tier (see `project`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::record::Tier;

/// The annotation key for a privacy label.
pub const PRIVACY_KEY: &str = "privacy";
/// The annotation key for Confluent data-contract tags.
pub const TAGS_KEY: &str = "confluent:tags";
/// The annotation key for a treatment other than removal.
pub const REDACT_KEY: &str = "redact";

/// How a field is treated in the records of tiers below its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Redact {
    /// Cut out of the record and of the derived schema (the default).
    Remove,
    /// Replaced by a keyed HMAC-SHA256 pseudonym (hex), stable across events.
    Hash,
}

/// Maps Confluent data-contract tags to tiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagMap(pub BTreeMap<String, Tier>);

impl Default for TagMap {
    fn default() -> Self {
        TagMap(BTreeMap::from([
            ("PII".to_owned(), Tier::Restricted),
            ("INTERNAL".to_owned(), Tier::Internal),
            ("PUBLIC".to_owned(), Tier::Public),
        ]))
    }
}

/// Tier floors set by compliance in the topology: per record full name, per
/// field path inside that record (`email`, or `address.city` through a record
/// defined inline), the lowest tier the field may have. An override can only
/// raise a tier: the field's tier is the stricter of its schema's and the
/// override's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Overrides(pub BTreeMap<String, BTreeMap<String, Tier>>);

impl Overrides {
    /// The override of a field, if any.
    pub fn get(&self, record: &str, path: &str) -> Option<Tier> {
        self.0.get(record)?.get(path).copied()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }

    /// Every override as (record, path, tier).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Tier)> {
        self.0.iter().flat_map(|(r, fields)| {
            fields
                .iter()
                .map(move |(p, t)| (r.as_str(), p.as_str(), *t))
        })
    }
}

/// Everything from the topology that classification needs: the tag map and
/// compliance's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Confluent tag → tier.
    pub tags: TagMap,
    /// Tier floors per record and field path.
    pub overrides: Overrides,
}

impl Rules {
    /// The rules of a tag map without overrides.
    pub fn with_tags(tags: TagMap) -> Self {
        Rules {
            tags,
            overrides: Overrides::default(),
        }
    }
}

/// Where a field's tier came from; `check` reports fail-closed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierSource {
    /// The field's own `privacy` label or a mapped tag.
    Label,
    /// The enclosing record's default.
    RecordDefault,
    /// No label, tag or default: fail closed to `restricted`.
    FailClosed,
}

/// A field's classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldClass {
    /// The field's own tier.
    pub tier: Tier,
    /// Where the tier came from.
    pub source: TierSource,
    /// Treatment below its tier.
    pub redact: Redact,
    /// The tier the schema gave before a topology override raised it; `None`
    /// when no override changed the field.
    pub raised_from: Option<Tier>,
}

/// An annotation that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClassifyError {
    /// `privacy` holds something other than a tier name.
    #[error("\"privacy\" must be one of public, internal, restricted")]
    BadLabel,
    /// `confluent:tags` is not an array of strings.
    #[error("\"confluent:tags\" must be an array of strings")]
    BadTags,
    /// `redact` holds something other than `hash` or `remove`.
    #[error("\"redact\" must be \"hash\" or \"remove\"")]
    BadRedact,
}

/// A record's default tier for its own fields, if it declares one.
///
/// # Errors
/// [`ClassifyError::BadLabel`] when the label is not a tier name.
pub fn record_default(record: &Map<String, Value>) -> Result<Option<Tier>, ClassifyError> {
    label(record)
}

/// Classifies one field from its annotations and its record's default.
///
/// # Errors
/// A [`ClassifyError`] when an annotation cannot be read; callers treat the
/// schema as invalid rather than guess.
pub fn classify_field(
    field: &Map<String, Value>,
    record_default: Option<Tier>,
    tags: &TagMap,
) -> Result<FieldClass, ClassifyError> {
    let own = label(field)?;
    let tagged = match field.get(TAGS_KEY) {
        None => None,
        Some(Value::Array(items)) => {
            let mut strictest: Option<Tier> = None;
            for item in items {
                let tag = item.as_str().ok_or(ClassifyError::BadTags)?;
                if let Some(t) = tags.0.get(tag) {
                    strictest = Some(strictest.map_or(*t, |s| s.max(*t)));
                }
            }
            strictest
        }
        Some(_) => return Err(ClassifyError::BadTags),
    };
    let redact = match field.get(REDACT_KEY) {
        None => Redact::Remove,
        Some(Value::String(s)) if s == "hash" => Redact::Hash,
        Some(Value::String(s)) if s == "remove" => Redact::Remove,
        Some(_) => return Err(ClassifyError::BadRedact),
    };
    let (tier, source) = match (own, tagged) {
        (Some(a), Some(b)) => (a.max(b), TierSource::Label),
        (Some(a), None) | (None, Some(a)) => (a, TierSource::Label),
        (None, None) => match record_default {
            Some(d) => (d, TierSource::RecordDefault),
            None => (Tier::Restricted, TierSource::FailClosed),
        },
    };
    Ok(FieldClass {
        tier,
        source,
        redact,
        raised_from: None,
    })
}

fn label(obj: &Map<String, Value>) -> Result<Option<Tier>, ClassifyError> {
    match obj.get(PRIVACY_KEY) {
        None => Ok(None),
        Some(Value::String(s)) => Tier::parse(s).map(Some).ok_or(ClassifyError::BadLabel),
        Some(_) => Err(ClassifyError::BadLabel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn unlabelled_field_fails_closed_even_in_a_public_container() {
        let c = classify_field(&obj(json!({"name": "x"})), None, &TagMap::default()).unwrap();
        assert_eq!(c.tier, Tier::Restricted);
        assert_eq!(c.source, TierSource::FailClosed);
    }

    #[test]
    fn record_default_applies_to_unlabelled_fields() {
        let c = classify_field(
            &obj(json!({"name": "x"})),
            Some(Tier::Public),
            &TagMap::default(),
        )
        .unwrap();
        assert_eq!(
            (c.tier, c.source),
            (Tier::Public, TierSource::RecordDefault)
        );
    }

    #[test]
    fn strictest_of_label_and_tags_wins() {
        let tags = TagMap::default();
        let f = obj(json!({"name": "x", "privacy": "public", "confluent:tags": ["PII"]}));
        assert_eq!(
            classify_field(&f, None, &tags).unwrap().tier,
            Tier::Restricted
        );
        let f = obj(json!({"name": "x", "privacy": "restricted", "confluent:tags": ["PUBLIC"]}));
        assert_eq!(
            classify_field(&f, None, &tags).unwrap().tier,
            Tier::Restricted
        );
    }

    #[test]
    fn unmapped_tag_adds_nothing() {
        let f = obj(json!({"name": "x", "confluent:tags": ["SOMETHING"]}));
        let c = classify_field(&f, Some(Tier::Internal), &TagMap::default()).unwrap();
        assert_eq!(
            (c.tier, c.source),
            (Tier::Internal, TierSource::RecordDefault)
        );
        let c = classify_field(&f, None, &TagMap::default()).unwrap();
        assert_eq!(c.tier, Tier::Restricted);
    }

    #[test]
    fn bad_annotations_are_errors_not_guesses() {
        let tags = TagMap::default();
        let f = obj(json!({"name": "x", "privacy": "secret"}));
        assert_eq!(
            classify_field(&f, None, &tags),
            Err(ClassifyError::BadLabel)
        );
        let f = obj(json!({"name": "x", "confluent:tags": "PII"}));
        assert_eq!(classify_field(&f, None, &tags), Err(ClassifyError::BadTags));
        let f = obj(json!({"name": "x", "privacy": "public", "redact": "mask"}));
        assert_eq!(
            classify_field(&f, None, &tags),
            Err(ClassifyError::BadRedact)
        );
    }
}
