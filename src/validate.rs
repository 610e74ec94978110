//! Validation of the canonical envelope's fields, each failure with a stable
//! reason code and a detail that names the schema path, never the value.
//!
//! | rule | reason |
//! |---|---|
//! | `event_type` matches `^[a-z]+\.[a-z_]+$` | `invalid_event_type` |
//! | `event_id` and every `uuid` field is a UUID | `invalid_uuid` |
//! | `entity_id` is not empty | `invalid_entity_id` |
//! | `entity_version >= 1` (where present) | `invalid_entity_version` |
//! | `schema_version >= 1` | `invalid_schema_version` |
//! | every `*_cents >= 0` | `negative_cents` |
//! | every `*_count >= 0` | `negative_count` |
//! | every string `*_at` is an ISO 8601 (RFC 3339) UTC instant | `invalid_timestamp` |

use chrono::DateTime;

use crate::record::{Datum, Reason, Rejection};
use crate::schema::{CompiledSchema, Envelope, Kind, NameRule, NodeId};

/// True when `s` matches `^[a-z]+\.[a-z_]+$`.
pub fn is_valid_event_type(s: &str) -> bool {
    match s.split_once('.') {
        Some((domain, name)) => {
            !domain.is_empty()
                && !name.is_empty()
                && domain.bytes().all(|b| b.is_ascii_lowercase())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        }
        None => false,
    }
}

/// True when `s` is an RFC 3339 instant with a zero UTC offset.
pub fn is_utc_instant(s: &str) -> bool {
    DateTime::parse_from_rfc3339(s).is_ok_and(|t| t.offset().local_minus_utc() == 0)
}

/// Checks an envelope value against every rule.
///
/// # Errors
/// The first failed rule as a [`Rejection`].
pub fn validate(
    schema: &CompiledSchema,
    env: &Envelope,
    datum: &Datum<'_>,
) -> Result<(), Rejection> {
    let Datum::Record(values) = datum else {
        return Err(Rejection::new(
            Reason::SchemaMismatch,
            "the event is not a record",
        ));
    };
    validate_envelope(env, values)?;
    let mut path = Vec::new();
    walk(schema, schema.root(), datum, &mut path)
}

/// Checks the envelope's own rules on the root record's values (ids,
/// versions, the event type's pattern); [`validate`] checks these first,
/// then every field's.
///
/// # Errors
/// The first failed rule as a [`Rejection`].
pub fn validate_envelope(env: &Envelope, values: &[Datum<'_>]) -> Result<(), Rejection> {
    let event_type = values[env.event_type].as_str().unwrap_or("");
    if !is_valid_event_type(event_type) {
        return Err(Rejection::new(
            Reason::InvalidEventType,
            "event_type does not match ^[a-z]+\\.[a-z_]+$",
        ));
    }
    if values[env.event_id]
        .as_str()
        .is_none_or(|s| uuid::Uuid::try_parse(s).is_err())
    {
        return Err(Rejection::new(
            Reason::InvalidUuid,
            "event_id is not a UUID",
        ));
    }
    if values[env.entity_id].as_str().is_none_or(str::is_empty) {
        return Err(Rejection::new(
            Reason::InvalidEntityId,
            "entity_id is empty",
        ));
    }
    // Null only where the schema allows it: producers without entity
    // versions (see `adapt`); whether the topic orders by it is the order
    // stage's question.
    let version = &values[env.entity_version];
    if !version.is_null() && version.as_i64().is_none_or(|v| v < 1) {
        return Err(Rejection::new(
            Reason::InvalidEntityVersion,
            "entity_version is below 1",
        ));
    }
    if values[env.schema_version].as_i64().is_none_or(|v| v < 1) {
        return Err(Rejection::new(
            Reason::InvalidSchemaVersion,
            "schema_version is below 1",
        ));
    }
    Ok(())
}

fn walk<'s>(
    s: &'s CompiledSchema,
    id: NodeId,
    d: &Datum<'_>,
    path: &mut Vec<&'s str>,
) -> Result<(), Rejection> {
    if !s.subtree(id).checks {
        return Ok(());
    }
    match (&s.node(id).kind, d) {
        (Kind::Record(fields), Datum::Record(values)) => {
            for (f, v) in fields.iter().zip(values) {
                path.push(&f.name);
                check_field(f.rule, v, path)?;
                walk(s, f.node, v, path)?;
                path.pop();
            }
        }
        (Kind::Array(c), Datum::Array(items)) => {
            for item in items {
                walk(s, *c, item, path)?;
            }
        }
        (Kind::Map(c), Datum::Map(entries)) => {
            for (_, v) in entries {
                walk(s, *c, v, path)?;
            }
        }
        (Kind::Union(bs), Datum::Union(i, inner)) => {
            if let Some(b) = bs.get(*i as usize) {
                walk(s, *b, inner, path)?;
            }
        }
        (Kind::Uuid, Datum::String(x)) if uuid::Uuid::try_parse(x).is_err() => {
            return Err(Rejection::new(
                Reason::InvalidUuid,
                format!("{} is not a UUID", path.join(".")),
            ));
        }
        _ => {}
    }
    Ok(())
}

fn check_field(rule: NameRule, v: &Datum<'_>, path: &[&str]) -> Result<(), Rejection> {
    match rule {
        NameRule::None => Ok(()),
        NameRule::Cents if v.as_i64().is_some_and(|x| x < 0) => Err(Rejection::new(
            Reason::NegativeCents,
            format!("{} is negative", path.join(".")),
        )),
        NameRule::Count if v.as_i64().is_some_and(|x| x < 0) => Err(Rejection::new(
            Reason::NegativeCount,
            format!("{} is negative", path.join(".")),
        )),
        NameRule::Instant if v.as_str().is_some_and(|x| !is_utc_instant(x)) => Err(Rejection::new(
            Reason::InvalidTimestamp,
            format!("{} is not an ISO 8601 UTC instant", path.join(".")),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_pattern() {
        for ok in ["user.created", "order.item_shipped", "a.b_"] {
            assert!(is_valid_event_type(ok), "{ok}");
        }
        for bad in [
            "",
            "user",
            "User.created",
            "user.",
            ".created",
            "user.created.v2",
            "user.cre-ated",
            "us3r.x",
        ] {
            assert!(!is_valid_event_type(bad), "{bad}");
        }
    }

    #[test]
    fn utc_instants_only() {
        assert!(is_utc_instant("2026-05-01T12:00:00Z"));
        assert!(is_utc_instant("2026-05-01T12:00:00.123+00:00"));
        assert!(!is_utc_instant("2026-05-01T12:00:00+02:00"));
        assert!(!is_utc_instant("2026-05-01"));
        assert!(!is_utc_instant("yesterday"));
    }
}
