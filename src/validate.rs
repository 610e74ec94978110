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
    plain_utc_instant(s.as_bytes()) || chrono_utc_instant(s)
}

/// [`is_utc_instant`] of bytes not known to be UTF-8 (false when they are
/// not): the plain form is ASCII.
pub fn is_utc_instant_bytes(b: &[u8]) -> bool {
    plain_utc_instant(b) || std::str::from_utf8(b).is_ok_and(chrono_utc_instant)
}

fn chrono_utc_instant(s: &str) -> bool {
    DateTime::parse_from_rfc3339(s).is_ok_and(|t| t.offset().local_minus_utc() == 0)
}

/// The form producers write, `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` with a real
/// date and time, checked without chrono's general parser (about a third
/// of its time on the pure path). Only ever says yes to what chrono accepts
/// too; anything else goes to chrono, which decides.
fn plain_utc_instant(b: &[u8]) -> bool {
    let Some((
        [y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1],
        rest,
    )) = b.split_first_chunk::<19>()
    else {
        return false;
    };
    let tail_ok = match rest {
        [b'Z'] => true,
        [b'.', frac @ .., b'Z'] => {
            (1..=9).contains(&frac.len()) && frac.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    let digits = [y0, y1, y2, y3, mo0, mo1, d0, d1, h0, h1, mi0, mi1, s0, s1];
    if !tail_ok || !digits.iter().all(|d| d.is_ascii_digit()) {
        return false;
    }
    let n = |a: &u8, b: &u8| u32::from(a - b'0') * 10 + u32::from(b - b'0');
    let year = n(y0, y1) * 100 + n(y2, y3);
    let (month, day) = (n(mo0, mo1), n(d0, d1));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1 && (1..=days).contains(&day) && n(h0, h1) < 24 && n(mi0, mi1) < 60 && n(s0, s1) < 60
}

/// True when `s` is a UUID in any form `uuid::Uuid::try_parse` reads.
pub fn is_uuid(s: &str) -> bool {
    is_uuid_bytes(s.as_bytes())
}

/// [`is_uuid`] of bytes not known to be UTF-8: every form of a UUID is
/// ASCII, so bytes that are one are valid UTF-8 as well.
pub fn is_uuid_bytes(b: &[u8]) -> bool {
    plain_uuid(b) || uuid::Uuid::try_parse_ascii(b).is_ok()
}

/// The hyphenated form, checked without decoding it. Only ever says yes to
/// what `uuid` accepts too; anything else goes to `uuid`, which decides.
fn plain_uuid(b: &[u8]) -> bool {
    /// Each byte's class: 1 a hex digit, 2 a hyphen, 0 anything else.
    const CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut c = 0;
        while c < 256 {
            t[c] = match c as u8 {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => 1,
                b'-' => 2,
                _ => 0,
            };
            c += 1;
        }
        t
    };
    /// The class each position wants.
    const WANT: [u8; 36] = {
        let mut w = [1u8; 36];
        w[8] = 2;
        w[13] = 2;
        w[18] = 2;
        w[23] = 2;
        w
    };
    // Without an early exit: digits and letters come at random, and a
    // branch on each one is mispredicted often enough to cost more than
    // `uuid`'s own parser.
    b.len() == 36
        && b.iter()
            .zip(WANT)
            .fold(true, |ok, (c, w)| ok & (CLASS[usize::from(*c)] == w))
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
    if values[env.event_id].as_str().is_none_or(|s| !is_uuid(s)) {
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
        (Kind::Uuid, Datum::String(x)) if !is_uuid(x) => {
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
        // Leap days: every fourth year, not every hundredth, every 400th.
        for (t, ok) in [
            ("2024-02-29T00:00:00Z", true),
            ("2000-02-29T00:00:00Z", true),
            ("1900-02-29T00:00:00Z", false),
            ("2023-02-29T00:00:00Z", false),
            ("2023-04-31T00:00:00Z", false),
            ("2023-12-31T23:59:59.999999999Z", true),
        ] {
            assert_eq!(is_utc_instant(t), ok, "{t}");
            assert_eq!(plain_utc_instant(t.as_bytes()), ok, "{t}");
        }
    }

    /// Random edits of valid instants and UUIDs: the fast checks say yes
    /// only where chrono and `uuid` do, so the answers are theirs.
    #[test]
    fn the_fast_checks_agree_with_chrono_and_uuid() {
        const CHARS: &[u8] = b"0123456789-:.TtZz+ aAfFgG";
        let mut rng = fastrand::Rng::with_seed(7);
        let mut fast = [0usize; 2];
        for _ in 0..200_000 {
            let (y, mo, d) = (rng.u32(0..10_000), rng.u32(0..14), rng.u32(0..33));
            let (h, mi, sec) = (rng.u32(0..25), rng.u32(0..61), rng.u32(0..61));
            let frac = ["", ".1", ".123", ".123456789", ".1234567891", "."][rng.usize(..6)];
            let mut t =
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}{frac}Z").into_bytes();
            let mut u = uuid::Uuid::from_u128(rng.u128(..))
                .hyphenated()
                .to_string()
                .into_bytes();
            if rng.bool() {
                u.make_ascii_uppercase();
            }
            for b in [&mut t, &mut u] {
                for _ in 0..rng.usize(0..3) {
                    let i = rng.usize(..b.len());
                    match rng.u8(..3) {
                        0 => b[i] = CHARS[rng.usize(..CHARS.len())],
                        1 => drop(b.remove(i)),
                        _ => b.insert(i, CHARS[rng.usize(..CHARS.len())]),
                    }
                }
            }
            let (t, u) = (String::from_utf8(t).unwrap(), String::from_utf8(u).unwrap());
            let chrono =
                DateTime::parse_from_rfc3339(&t).is_ok_and(|x| x.offset().local_minus_utc() == 0);
            assert!(!plain_utc_instant(t.as_bytes()) || chrono, "{t}");
            assert_eq!(is_utc_instant(&t), chrono, "{t}");
            let parsed = uuid::Uuid::try_parse(&u).is_ok();
            assert!(!plain_uuid(u.as_bytes()) || parsed, "{u}");
            assert_eq!(is_uuid(&u), parsed, "{u}");
            fast[0] += usize::from(plain_utc_instant(t.as_bytes()));
            fast[1] += usize::from(plain_uuid(u.as_bytes()));
        }
        // Both answer most of the common forms themselves.
        assert!(fast.iter().all(|n| *n > 20_000), "{fast:?}");
    }
}
