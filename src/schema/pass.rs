//! The single pass: a framed Avro event read against its writer schema and
//! written into the three tiers' Avro bodies in the same walk, without a
//! [`Datum`] tree in between.
//!
//! It does what decode, validation, the present-tier walk and
//! [`crate::project::encode_projections`] do one after the other, for the
//! common case only. Anything else is a miss (`None`), and the engine then
//! takes the tree path, which decides: a value the decoder or validation
//! refuses, an array or map written in several blocks or with a byte size
//! (the tree writes one block), items that can take no bytes, a field to
//! hash without a key, an envelope field that is not a scalar. So the pass
//! never dead-letters anything itself, and what it accepts comes out byte
//! for byte as the tree path writes it: `tests/properties.rs` runs both on
//! the same records, well-formed, anomalous and mutated.

use std::borrow::Cow;

use super::binary::{can_be_empty, Reader, MAX_DEPTH};
use super::{CompiledSchema, Envelope, Field, Kind, NameRule, NodeId};
use crate::project::{put_long_masked, put_masked, treatment_masks, Hasher, Pseudonyms};
use crate::record::{Datum, Tier};
use crate::validate::is_utc_instant;

/// What the pass read besides the tier bodies.
#[derive(Debug)]
pub struct Pass<'a> {
    /// The root record with the envelope's fields as decoded and every other
    /// field `Null`: what the steps after projection read.
    pub envelope: Datum<'a>,
    /// The highest tier of a non-null value in the event
    /// ([`super::max_present_tier`]'s tier).
    pub present: Tier,
    /// The pseudonym of the `entity_id`, if the pass computed it.
    pub entity_pseudonym: Option<[u8; 64]>,
}

/// Reads `body` (framed Avro without its 5-byte header) with `schema`, whose
/// envelope is `env`, and appends each tier's projected body to
/// `outs[tier.index()]`. `None` when the tree path must decide; `outs` then
/// hold partial bodies, which the caller drops.
pub fn project<'a>(
    schema: &CompiledSchema,
    env: &Envelope,
    body: &'a [u8],
    hasher: Option<&Hasher>,
    outs: &mut [Vec<u8>; 3],
) -> Option<Pass<'a>> {
    let Kind::Record(fields) = &schema.node(schema.root()).kind else {
        return None;
    };
    let mut walk = Walk {
        s: schema,
        r: Reader { buf: body, pos: 0 },
        pseudonyms: Pseudonyms::unnamed(hasher),
        outs,
        present: Tier::Public,
        text: "",
    };
    let mut values = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let v = walk.field(f, 1, ALL_TIERS, Tier::Public, i == env.entity_id)?;
        if !is_envelope(env, i) {
            values.push(Datum::Null);
            continue;
        }
        let d = match v.leaf {
            Leaf::Null => Datum::Null,
            Leaf::Int => Datum::Int(i32::try_from(v.number).ok()?),
            Leaf::Long => Datum::Long(v.number),
            Leaf::Str => Datum::String(Cow::Borrowed(walk.text)),
            Leaf::Enum => Datum::Enum(u32::try_from(v.number).ok()?),
            Leaf::Other => return None,
        };
        values.push(if v.branch == NO_BRANCH {
            d
        } else {
            Datum::Union(v.branch, Box::new(d))
        });
    }
    if walk.r.pos != body.len() {
        return None;
    }
    Some(Pass {
        envelope: Datum::Record(values),
        present: walk.present,
        entity_pseudonym: walk.pseudonyms.entity_pseudonym(),
    })
}

/// Every tier's bit: bit `i` is `Tier::ALL[i]`.
const ALL_TIERS: u8 = 0b111;

fn is_envelope(env: &Envelope, i: usize) -> bool {
    [
        env.event_id,
        env.event_type,
        env.entity_type,
        env.entity_id,
        env.entity_version,
        env.occurred_at,
        env.schema_version,
        env.privacy_tier,
    ]
    .contains(&i)
        || env.trace_id == Some(i)
        || env.correlation_id == Some(i)
}

/// What kind of value was read, as far as the steps after it need it:
/// rules, hashing, the present tier and the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Null,
    Int,
    Long,
    /// A string: [`Walk::text`] holds it until the next one is read.
    Str,
    Enum,
    /// Anything else (a record, an array, bytes, a number with a fraction).
    Other,
}

/// A value read. Sixteen bytes, so that it comes back in registers: a
/// larger one came back through memory, and was read back before the
/// stores had landed (a store-forwarding stall on every field).
#[derive(Debug, Clone, Copy)]
struct Read {
    /// An `int`'s or `long`'s value, an enum's index.
    number: i64,
    /// The union branch taken, or [`NO_BRANCH`].
    branch: u32,
    leaf: Leaf,
}

/// [`Read::branch`] of a value that is not a union's.
const NO_BRANCH: u32 = u32::MAX;

impl Read {
    fn leaf(leaf: Leaf, number: i64) -> Self {
        Read {
            number,
            branch: NO_BRANCH,
            leaf,
        }
    }

    fn as_i64(self) -> Option<i64> {
        matches!(self.leaf, Leaf::Int | Leaf::Long).then_some(self.number)
    }
}

struct Walk<'p, 'a: 'p> {
    s: &'p CompiledSchema,
    r: Reader<'a>,
    /// The `entity_id`'s pseudonym is computed once, once it is read.
    pseudonyms: Pseudonyms<'p>,
    outs: &'p mut [Vec<u8>; 3],
    present: Tier,
    /// The last string read.
    text: &'a str,
}

impl<'p, 'a: 'p> Walk<'p, 'a> {
    /// Writes the same bytes to every output in `mask`.
    #[inline(always)]
    fn put(&mut self, mask: u8, bytes: &[u8]) {
        put_masked(self.outs, mask, bytes);
    }

    #[inline(always)]
    fn put_long(&mut self, mask: u8, v: i64) {
        put_long_masked(self.outs, mask, v);
    }

    /// One record field: read into the outputs in `mask` that keep it,
    /// pseudonymised into those that hash it, checked against its name's
    /// rule. `ceiling`: the highest label on the way from the root.
    fn field(
        &mut self,
        f: &Field,
        depth: usize,
        mask: u8,
        ceiling: Tier,
        is_entity_id: bool,
    ) -> Option<Read> {
        let (keep, hash) = treatment_masks(f.class, &Tier::ALL, mask);
        if hash != 0 && !self.pseudonyms.can_hash() {
            return None;
        }
        let t = ceiling.max(f.class.tier);
        let v = self.value(f.node, depth, keep, t)?;
        let broken = match f.rule {
            NameRule::Cents | NameRule::Count => v.as_i64().is_some_and(|x| x < 0),
            NameRule::Instant => v.leaf == Leaf::Str && !is_utc_instant(self.text),
            _ => false,
        };
        if broken {
            return None;
        }
        if v.leaf != Leaf::Null {
            self.present = self.present.max(t);
        }
        if is_entity_id && v.leaf == Leaf::Str {
            self.pseudonyms.name_entity(self.text.as_bytes());
        }
        if hash != 0 {
            if v.branch != NO_BRANCH {
                self.put_long(hash, i64::from(v.branch));
            }
            if v.leaf == Leaf::Str {
                let hex = self.pseudonyms.of(self.text.as_bytes()).ok()?;
                self.put_long(hash, hex.len() as i64);
                self.put(hash, &hex);
            }
        }
        Some(v)
    }

    /// One value of node `id`, written to the outputs in `mask`.
    fn value(&mut self, id: NodeId, depth: usize, mask: u8, ceiling: Tier) -> Option<Read> {
        if depth > MAX_DEPTH {
            return None;
        }
        let s = self.s;
        let mut number = 0;
        let leaf = match &s.node(id).kind {
            Kind::Null => Leaf::Null,
            Kind::Boolean => {
                let b = self.r.take(1).ok()?[0];
                if b > 1 {
                    return None;
                }
                self.put(mask, &[b]);
                Leaf::Other
            }
            Kind::Int => {
                let l = self.r.long().ok()?;
                i32::try_from(l).ok()?;
                self.put_long(mask, l);
                number = l;
                Leaf::Int
            }
            Kind::Long => {
                let l = self.r.long().ok()?;
                self.put_long(mask, l);
                number = l;
                Leaf::Long
            }
            Kind::Float => {
                let b = self.r.take(4).ok()?;
                self.put(mask, b);
                Leaf::Other
            }
            Kind::Double => {
                let b = self.r.take(8).ok()?;
                self.put(mask, b);
                Leaf::Other
            }
            Kind::Fixed(n) => {
                let b = self.r.take(*n).ok()?;
                self.put(mask, b);
                Leaf::Other
            }
            Kind::Bytes => {
                let n = self.r.len().ok()?;
                let b = self.r.take(n).ok()?;
                self.put_long(mask, n as i64);
                self.put(mask, b);
                Leaf::Other
            }
            kind @ (Kind::String | Kind::Uuid) => {
                let n = self.r.len().ok()?;
                let b = self.r.take(n).ok()?;
                let x = std::str::from_utf8(b).ok()?;
                if matches!(kind, Kind::Uuid) && uuid::Uuid::try_parse(x).is_err() {
                    return None;
                }
                self.put_long(mask, n as i64);
                self.put(mask, b);
                self.text = x;
                Leaf::Str
            }
            Kind::Enum(symbols) => {
                let i = self.r.index(symbols.len()).ok()?;
                self.put_long(mask, i64::from(i));
                number = i64::from(i);
                Leaf::Enum
            }
            Kind::Array(items) => {
                if can_be_empty(s, *items, depth + 1) {
                    return None;
                }
                let n = self.block()?;
                if n > 0 {
                    self.put_long(mask, n as i64);
                    for _ in 0..n {
                        self.value(*items, depth + 1, mask, ceiling)?;
                    }
                    self.end_of_blocks()?;
                }
                self.put(mask, &[0]);
                Leaf::Other
            }
            Kind::Map(values) => {
                let n = self.block()?;
                if n > 0 {
                    self.put_long(mask, n as i64);
                    for _ in 0..n {
                        let klen = self.r.len().ok()?;
                        let k = self.r.take(klen).ok()?;
                        std::str::from_utf8(k).ok()?;
                        self.put_long(mask, klen as i64);
                        self.put(mask, k);
                        self.value(*values, depth + 1, mask, ceiling)?;
                    }
                    self.end_of_blocks()?;
                }
                self.put(mask, &[0]);
                Leaf::Other
            }
            Kind::Union(branches) => {
                let i = self.r.index(branches.len()).ok()?;
                self.put_long(mask, i64::from(i));
                let inner = self.value(branches[i as usize], depth + 1, mask, ceiling)?;
                if inner.branch != NO_BRANCH || i == NO_BRANCH {
                    return None;
                }
                return Some(Read { branch: i, ..inner });
            }
            Kind::Record(fields) => {
                for f in fields {
                    self.field(f, depth + 1, mask, ceiling, false)?;
                }
                Leaf::Other
            }
        };
        Some(Read::leaf(leaf, number))
    }

    /// The count of an array's or map's first block: only a plain count
    /// (no byte size) that the bytes left can hold.
    fn block(&mut self) -> Option<usize> {
        let n = self.r.long().ok()?;
        if n < 0 || n as u64 > self.r.remaining() as u64 {
            return None;
        }
        Some(n as usize)
    }

    /// The end of an array or map after its first block: one block only.
    fn end_of_blocks(&mut self) -> Option<()> {
        (self.r.long().ok()? == 0).then_some(())
    }
}
