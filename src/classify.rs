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
//! [`classify`] records how it decided ([`Provenance`]: label, tags, both,
//! record default or fail-closed, with the winning tags, and the tags it
//! could not map), so reports read the decision instead of working it out
//! again.
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
    #[cfg(test)]
    pub fn with_tags(tags: TagMap) -> Self {
        Rules {
            tags,
            overrides: Overrides::default(),
        }
    }
}

/// Where a field's tier came from, coarsely: its own annotations (a label
/// or a mapped tag), its record's default, or the fail-closed default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierSource {
    /// The field's own `privacy` label or a mapped tag.
    Label,
    /// The enclosing record's default.
    RecordDefault,
    /// No label, tag or default: fail closed to `restricted`.
    FailClosed,
}

/// Where a field's tier came from, with labels told apart from Confluent
/// tags: what `check` and the privacy report tell reviewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Provenance {
    /// The field's own `"privacy"` label (any mapped tag is less strict).
    Label,
    /// Mapped `"confluent:tags"` decided it: the field has no label, or one
    /// less strict than the tags.
    Tag {
        /// The tags that map to the winning tier.
        tags: Vec<String>,
    },
    /// The label and the strictest mapped tag agree.
    LabelAndTag {
        /// The tags that map to the same tier as the label.
        tags: Vec<String>,
    },
    /// No label or mapped tag: the enclosing record's `"privacy"` default.
    RecordDefault,
    /// No label, no mapped tag, no default from its own record: restricted.
    FailClosed,
}

impl Provenance {
    /// The coarse [`TierSource`]: a label and a tag are both the field's own.
    pub fn source(&self) -> TierSource {
        match self {
            Provenance::Label | Provenance::Tag { .. } | Provenance::LabelAndTag { .. } => {
                TierSource::Label
            }
            Provenance::RecordDefault => TierSource::RecordDefault,
            Provenance::FailClosed => TierSource::FailClosed,
        }
    }

    /// A short human description, e.g. `label + tag PII`.
    pub fn describe(&self) -> String {
        match self {
            Provenance::Label => "label".to_owned(),
            Provenance::Tag { tags } => format!("tag {}", tags.join(", ")),
            Provenance::LabelAndTag { tags } => format!("label + tag {}", tags.join(", ")),
            Provenance::RecordDefault => "record default".to_owned(),
            Provenance::FailClosed => "fail-closed default".to_owned(),
        }
    }
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

/// How [`classify`] reached a field's tier, kept for reports (the pipeline
/// only needs [`FieldClass`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierOrigin {
    /// The field's own `"privacy"` label, if it has one.
    pub label: Option<Tier>,
    /// Which annotation decided the tier.
    pub provenance: Provenance,
    /// The field's tags that the tag map does not know (they add nothing),
    /// sorted, each once.
    pub unmapped_tags: Vec<String>,
}

/// A field classified, with how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The tier and treatment.
    pub class: FieldClass,
    /// How the tier was reached.
    pub origin: TierOrigin,
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

/// Classifies one field from its annotations and its record's default, and
/// records how: which annotation won and which tags counted for nothing.
///
/// # Errors
/// A [`ClassifyError`] when an annotation cannot be read; callers treat the
/// schema as invalid rather than guess.
pub fn classify(
    field: &Map<String, Value>,
    record_default: Option<Tier>,
    tags: &TagMap,
) -> Result<Classified, ClassifyError> {
    let own = label(field)?;
    // The field's mapped tags with their tiers, and the tags the map does
    // not know.
    let mut mapped: Vec<(&str, Tier)> = Vec::new();
    let mut unmapped_tags: Vec<String> = Vec::new();
    match field.get(TAGS_KEY) {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                let tag = item.as_str().ok_or(ClassifyError::BadTags)?;
                match tags.0.get(tag) {
                    Some(t) => mapped.push((tag, *t)),
                    None => unmapped_tags.push(tag.to_owned()),
                }
            }
        }
        Some(_) => return Err(ClassifyError::BadTags),
    }
    unmapped_tags.sort();
    unmapped_tags.dedup();
    let tagged = mapped.iter().map(|(_, t)| *t).max();
    let redact = match field.get(REDACT_KEY) {
        None => Redact::Remove,
        Some(Value::String(s)) if s == "hash" => Redact::Hash,
        Some(Value::String(s)) if s == "remove" => Redact::Remove,
        Some(_) => return Err(ClassifyError::BadRedact),
    };
    // The tags that map to the winning tier, sorted, each once.
    let winning = |tier: Tier| -> Vec<String> {
        let mut names: Vec<String> = mapped
            .iter()
            .filter(|(_, t)| *t == tier)
            .map(|(name, _)| (*name).to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    // Where labels and tags disagree the strictest wins.
    let (tier, provenance) = match (own, tagged) {
        (Some(l), Some(t)) if t == l => (l, Provenance::LabelAndTag { tags: winning(l) }),
        (Some(l), Some(t)) if t > l => (t, Provenance::Tag { tags: winning(t) }),
        (Some(l), _) => (l, Provenance::Label),
        (None, Some(t)) => (t, Provenance::Tag { tags: winning(t) }),
        (None, None) => match record_default {
            Some(d) => (d, Provenance::RecordDefault),
            None => (Tier::Restricted, Provenance::FailClosed),
        },
    };
    Ok(Classified {
        class: FieldClass {
            tier,
            source: provenance.source(),
            redact,
            raised_from: None,
        },
        origin: TierOrigin {
            label: own,
            provenance,
            unmapped_tags,
        },
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

    /// The classification alone, as the pipeline reads it.
    fn classify_field(
        field: &Map<String, Value>,
        record_default: Option<Tier>,
        tags: &TagMap,
    ) -> Result<FieldClass, ClassifyError> {
        classify(field, record_default, tags).map(|c| c.class)
    }

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
    fn provenance_names_the_annotation_that_won_and_the_unmapped_tags() {
        let tags = TagMap::default();
        let origin = |v: Value, default| classify(&obj(v), default, &tags).unwrap().origin;
        let o = origin(json!({"name": "x", "privacy": "public"}), None);
        assert_eq!(
            (o.label, o.provenance),
            (Some(Tier::Public), Provenance::Label)
        );
        let o = origin(
            json!({"name": "x", "privacy": "public", "confluent:tags": ["PII", "NOPE", "INTERNAL", "PII"]}),
            None,
        );
        assert_eq!(
            o.provenance,
            Provenance::Tag {
                tags: vec!["PII".to_owned()]
            }
        );
        assert_eq!(o.label, Some(Tier::Public));
        assert_eq!(o.unmapped_tags, ["NOPE"]);
        let o = origin(
            json!({"name": "x", "privacy": "restricted", "confluent:tags": ["PII"]}),
            None,
        );
        assert_eq!(
            o.provenance,
            Provenance::LabelAndTag {
                tags: vec!["PII".to_owned()]
            }
        );
        let o = origin(
            json!({"name": "x", "privacy": "restricted", "confluent:tags": ["PUBLIC"]}),
            None,
        );
        assert_eq!(o.provenance, Provenance::Label);
        let o = origin(json!({"name": "x", "confluent:tags": ["INTERNAL"]}), None);
        assert_eq!(
            (o.label, o.provenance),
            (
                None,
                Provenance::Tag {
                    tags: vec!["INTERNAL".to_owned()]
                }
            )
        );
        let o = origin(
            json!({"name": "x", "confluent:tags": ["NOPE"]}),
            Some(Tier::Public),
        );
        assert_eq!(o.provenance, Provenance::RecordDefault);
        assert_eq!(
            origin(json!({"name": "x"}), None).provenance,
            Provenance::FailClosed
        );
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
