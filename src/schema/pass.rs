//! The single pass: a framed Avro event read against its writer schema and
//! written into the three tiers' Avro bodies in the same walk, without a
//! [`Datum`] tree in between.
//!
//! It does what decode, validation, the present-tier walk and
//! [`crate::project::encode_projections`] do one after the other, for the
//! common case only. A kept value is copied as the bytes it was read from,
//! in runs that end only where a tier drops or hashes a field. Anything
//! else is a miss (`None`), and the engine then takes the tree path, which
//! decides: a value the decoder or validation refuses, an array or map
//! written in several blocks or with a byte size (the tree writes one
//! block), a varint longer than its shortest form (the tree writes the
//! shortest), items that can take no bytes, a field to hash without a key,
//! an envelope field that is not a scalar, a `fixed` of more than 65,535
//! bytes or an `enum` of more than 65,535 symbols. So the pass
//! never dead-letters anything itself, and what it accepts comes out byte
//! for byte as the tree path writes it: `tests/properties.rs` runs both on
//! the same records, well-formed, anomalous and mutated.

use std::borrow::Cow;

use super::binary::{can_be_empty, Reader, MAX_DEPTH};
use super::{CompiledSchema, Envelope, Field, Kind, NameRule, Node, NodeId, SchemaError};
use crate::project::{put_long_masked, put_masked, Hasher, Pseudonyms};
use crate::record::{Datum, Tier};
use crate::validate::{is_utc_instant_bytes, is_uuid_bytes};

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

impl Drop for Pass<'_> {
    /// Drops the envelope's slots without a call to `Datum`'s drop glue
    /// for those that own nothing. The compiler does not inline that glue,
    /// so each slot cost a call of about 30 instructions, and most slots
    /// are `Null` (every field that is not the envelope's) or a scalar or a
    /// borrowed string; only the rest (a union's box) is dropped as usual.
    fn drop(&mut self) {
        if let Datum::Record(values) = &mut self.envelope {
            for d in values.drain(..) {
                match d {
                    Datum::Null
                    | Datum::Boolean(_)
                    | Datum::Int(_)
                    | Datum::Long(_)
                    | Datum::Float(_)
                    | Datum::Double(_)
                    | Datum::Enum(_)
                    | Datum::String(Cow::Borrowed(_)) => std::mem::forget(d),
                    d => drop(d),
                }
            }
        }
    }
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
    let root = schema.root();
    if !matches!(schema.node(root).kind, Kind::Record(_)) {
        return None;
    }
    let fields = schema.slots(root);
    let mut walk = Walk {
        s: schema,
        r: Reader { buf: body, pos: 0 },
        pseudonyms: Pseudonyms::unnamed(hasher),
        outs,
        runs: [0; 3],
        present: Tier::Public,
        text: b"",
    };
    // Filled in place: a `Datum` pushed is built on the stack in narrow
    // stores and copied in wide loads, which stall (a native profile put
    // most of this function's time there).
    let mut values: Vec<Datum<'_>> = std::iter::repeat_with(|| Datum::Null)
        .take(fields.len())
        .collect();
    for (i, f) in fields.iter().enumerate() {
        let v = walk.field(f, 1, ALL_TIERS, Tier::Public, i == env.entity_id)?;
        if !is_envelope(env, i) {
            continue;
        }
        // Checked as UTF-8 when read; the envelope's strings are read as
        // `str`s after the pass, so these few are made one here (an ASCII
        // one, as most are, with the ASCII check alone).
        let text = if v.leaf == Leaf::Str {
            as_utf8(walk.text)?
        } else {
            ""
        };
        put_envelope_datum(&mut values[i], v, text)?;
    }
    if walk.r.pos != body.len() {
        return None;
    }
    walk.flush(ALL_TIERS, body.len());
    Some(Pass {
        envelope: Datum::Record(values),
        present: walk.present,
        entity_pseudonym: walk.pseudonyms.entity_pseudonym(),
    })
}

/// Puts an envelope field's value, as the steps after the pass read it,
/// into `slot`, which holds `Null`; `text` is the string `v` read, if it is
/// one. `None` for a value that is not a scalar.
///
/// Each kind is written into the slot where it is made. A `Datum` made
/// first and moved after is built on the stack in narrow stores and copied
/// in wide loads that the processor cannot forward from them: that stall
/// was most of [`project`]'s time in a native profile of the pure path.
#[inline(always)]
pub(super) fn put_envelope_datum<'t>(slot: &mut Datum<'t>, v: Read, text: &'t str) -> Option<()> {
    if v.branch == NO_BRANCH {
        return put_scalar(slot, v, text);
    }
    let mut d = Datum::Null;
    put_scalar(&mut d, v, text)?;
    fill(slot, Datum::Union(v.branch, Box::new(d)));
    Some(())
}

/// [`put_envelope_datum`] of the value inside any union.
#[inline(always)]
fn put_scalar<'t>(slot: &mut Datum<'t>, v: Read, text: &'t str) -> Option<()> {
    match v.leaf {
        Leaf::Null => {}
        Leaf::Int => fill(slot, Datum::Int(i32::try_from(v.number).ok()?)),
        Leaf::Long => fill(slot, Datum::Long(v.number)),
        Leaf::Str => fill(slot, Datum::String(Cow::Borrowed(text))),
        Leaf::Enum => fill(slot, Datum::Enum(u32::try_from(v.number).ok()?)),
        Leaf::Other => return None,
    }
    Some(())
}

/// Writes `d` into `slot`, which holds `Null`: each field's slot is
/// written once. A `Null` has nothing to drop, so it is forgotten, not
/// dropped through a call to `Datum`'s drop glue (which the compiler does
/// not inline; about 30 instructions a field). Were the slot not `Null`,
/// its value would leak, nothing worse.
#[inline(always)]
fn fill<'t>(slot: &mut Datum<'t>, d: Datum<'t>) {
    debug_assert!(matches!(slot, Datum::Null));
    std::mem::forget(std::mem::replace(slot, d));
}

/// Every tier's bit: bit `i` is `Tier::ALL[i]`.
pub(super) const ALL_TIERS: u8 = 0b111;

/// `b` as a `str` if it is UTF-8, as `str::from_utf8` says, with ASCII
/// (most strings are) checked first: [`ascii_str::is_ascii`] reads a short
/// string as a few unaligned words and a long one a vector at a time, where
/// `from_utf8` reads byte by byte up to an aligned word. The JSON pass
/// checks its whole text with it too.
#[inline(always)]
pub(super) fn as_utf8(b: &[u8]) -> Option<&str> {
    match ascii_str::from_ascii(b) {
        Some(s) => Some(s),
        None => std::str::from_utf8(b).ok(),
    }
}

pub(super) fn is_envelope(env: &Envelope, i: usize) -> bool {
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
pub(super) enum Leaf {
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
pub(super) struct Read {
    /// An `int`'s or `long`'s value, an enum's index.
    pub(super) number: i64,
    /// The union branch taken, or [`NO_BRANCH`].
    pub(super) branch: u32,
    pub(super) leaf: Leaf,
}

/// [`Read::branch`] of a value that is not a union's.
pub(super) const NO_BRANCH: u32 = u32::MAX;

/// [`Kind`]'s scalar variants, in four bytes: a `fixed`'s size and an
/// `enum`'s symbol count in 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Uuid,
    Fixed(u16),
    Enum(u16),
}

impl Scalar {
    /// The scalar a node of `kind` holds; `None` for a record, an array, a
    /// map or a union, and for a `fixed` of more than 65,535 bytes or an
    /// `enum` of more than 65,535 symbols (a miss: the tree path reads
    /// those).
    fn of(kind: &Kind) -> Option<Scalar> {
        Some(match kind {
            Kind::Null => Scalar::Null,
            Kind::Boolean => Scalar::Boolean,
            Kind::Int => Scalar::Int,
            Kind::Long => Scalar::Long,
            Kind::Float => Scalar::Float,
            Kind::Double => Scalar::Double,
            Kind::Bytes => Scalar::Bytes,
            Kind::String => Scalar::String,
            Kind::Uuid => Scalar::Uuid,
            Kind::Fixed(n) => Scalar::Fixed(u16::try_from(*n).ok()?),
            Kind::Enum(symbols) => Scalar::Enum(u16::try_from(symbols.len()).ok()?),
            Kind::Array(_) | Kind::Map(_) | Kind::Union(_) | Kind::Record(_) => return None,
        })
    }
}

/// A field's type as the pass reads it: most fields are a scalar or a
/// `["null", scalar]` union, which [`Walk::field`] reads without looking
/// its node up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A scalar.
    Scalar(Scalar),
    /// A union of `null` (branch 0) and a scalar other than `null`
    /// (branch 1).
    Nullable(Scalar),
    /// Anything else: read through the field's node.
    Node,
}

impl Shape {
    /// The shape of a value of node `id`.
    fn of(nodes: &[Node], id: NodeId) -> Shape {
        match &nodes[id].kind {
            Kind::Union(b) if b.len() == 2 && matches!(nodes[b[0]].kind, Kind::Null) => {
                match Scalar::of(&nodes[b[1]].kind) {
                    Some(Scalar::Null) | None => Shape::Node,
                    Some(x) => Shape::Nullable(x),
                }
            }
            kind => Scalar::of(kind).map_or(Shape::Node, Shape::Scalar),
        }
    }
}

/// What the pass reads of one [`Field`], in 16 bytes: a record's slots lie
/// in a few cache lines, where its `Field`s take two or three a field, and
/// the pass reads a scalar field's value from its slot alone. Looking its
/// node up first (the schema, its nodes, the node, its kind: each load
/// waiting on the one before) and then jumping on the kind was the
/// costliest part of the walk in a native profile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// The field's type.
    node: u32,
    shape: Shape,
    /// [`Field::keep`].
    keep: u8,
    /// [`Field::hash`].
    hash: u8,
    /// Its own tier (`class.tier`).
    tier: Tier,
    rule: NameRule,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

impl Slot {
    pub(super) fn new(f: &Field, nodes: &[Node]) -> Result<Slot, SchemaError> {
        Ok(Slot {
            node: u32::try_from(f.node)
                .map_err(|_| SchemaError::new("", "a schema too large to compile".to_owned()))?,
            shape: Shape::of(nodes, f.node),
            keep: f.keep,
            hash: f.hash,
            tier: f.class.tier,
            rule: f.rule,
        })
    }
}

impl Read {
    pub(super) fn leaf(leaf: Leaf, number: i64) -> Self {
        Read {
            number,
            branch: NO_BRANCH,
            leaf,
        }
    }

    pub(super) fn as_i64(self) -> Option<i64> {
        matches!(self.leaf, Leaf::Int | Leaf::Long).then_some(self.number)
    }
}

/// A kept value comes out as the bytes it was read from (the pass reads
/// only canonical varints and single-block arrays and maps, which the tree
/// path writes back unchanged), so each output copies runs of the input:
/// `runs[i]` is where the run not yet copied to `outs[i]` starts. A field
/// that an output drops or hashes ends its run ([`Walk::flush`]), and the
/// next starts after the field.
struct Walk<'p, 'a: 'p> {
    s: &'p CompiledSchema,
    r: Reader<'a>,
    /// The `entity_id`'s pseudonym is computed once, once it is read.
    pseudonyms: Pseudonyms<'p>,
    outs: &'p mut [Vec<u8>; 3],
    runs: [usize; 3],
    present: Tier,
    /// The last string read (valid UTF-8).
    text: &'a [u8],
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
        f: &Slot,
        depth: usize,
        mask: u8,
        ceiling: Tier,
        is_entity_id: bool,
    ) -> Option<Read> {
        let (keep, hash) = (f.keep & mask, f.hash & mask);
        if hash != 0 && !self.pseudonyms.can_hash() {
            return None;
        }
        let t = ceiling.max(f.tier);
        let cut = mask & !keep;
        if cut != 0 {
            self.flush(cut, self.r.pos);
        }
        let v = match f.shape {
            Shape::Scalar(x) if depth <= MAX_DEPTH => self.scalar(x)?,
            // As `value` reads a union, its branch one level deeper.
            Shape::Nullable(x) if depth < MAX_DEPTH => match self.index(2)? {
                0 => Read {
                    branch: 0,
                    ..Read::leaf(Leaf::Null, 0)
                },
                _ => Read {
                    branch: 1,
                    ..self.scalar(x)?
                },
            },
            _ => self.value(f.node as NodeId, depth, keep, t)?,
        };
        let broken = match f.rule {
            NameRule::Cents | NameRule::Count => v.as_i64().is_some_and(|x| x < 0),
            NameRule::Instant => v.leaf == Leaf::Str && !is_utc_instant_bytes(self.text),
            _ => false,
        };
        if broken {
            return None;
        }
        if v.leaf != Leaf::Null {
            self.present = self.present.max(t);
        }
        if is_entity_id && v.leaf == Leaf::Str {
            self.pseudonyms.name_entity(self.text);
        }
        if hash != 0 {
            if v.branch != NO_BRANCH {
                self.put_long(hash, i64::from(v.branch));
            }
            if v.leaf == Leaf::Str {
                let hex = self.pseudonyms.of(self.text).ok()?;
                self.put_long(hash, hex.len() as i64);
                self.put(hash, &hex);
            }
        }
        if cut != 0 {
            for (i, run) in self.runs.iter_mut().enumerate() {
                if cut & (1 << i) != 0 {
                    *run = self.r.pos;
                }
            }
        }
        Some(v)
    }

    /// Copies each run in `mask` up to `end` (exclusive) to its output.
    fn flush(&mut self, mask: u8, end: usize) {
        let buf = self.r.buf;
        for (i, (out, run)) in self.outs.iter_mut().zip(&self.runs).enumerate() {
            if mask & (1 << i) != 0 {
                out.extend_from_slice(&buf[*run..end]);
            }
        }
    }

    /// A varint `long` in its shortest form: a longer one (which the tree
    /// path would write back shorter) is a miss. One byte (most lengths,
    /// branches, symbols and counts) is read here, and is its own shortest
    /// form; a longer one in [`Walk::long_varint`].
    #[inline(always)]
    fn long(&mut self) -> Option<i64> {
        match self.r.buf.get(self.r.pos) {
            Some(&b) if b < 0x80 => {
                self.r.pos += 1;
                Some(i64::from(b >> 1) ^ -i64::from(b & 1))
            }
            _ => self.long_varint(),
        }
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Option<i64> {
        let start = self.r.pos;
        let v = self.r.long().ok()?;
        (self.r.pos - start == varint_len(v)).then_some(v)
    }

    /// A length: a canonical `long` that the bytes left can hold.
    #[inline(always)]
    fn len(&mut self) -> Option<usize> {
        let n = self.long()?;
        (n >= 0 && n as u64 <= self.r.remaining() as u64).then_some(n as usize)
    }

    /// A union branch or enum symbol: a canonical `long` below `limit`.
    #[inline(always)]
    fn index(&mut self, limit: usize) -> Option<u32> {
        let i = self.long()?;
        (i >= 0 && (i as u64) < limit as u64).then_some(i as u32)
    }

    /// One value of node `id`, read and checked. The outputs in `mask` keep
    /// it: their runs cover its bytes.
    fn value(&mut self, id: NodeId, depth: usize, mask: u8, ceiling: Tier) -> Option<Read> {
        if depth > MAX_DEPTH {
            return None;
        }
        let s = self.s;
        let leaf = match &s.node(id).kind {
            Kind::Array(items) => {
                if can_be_empty(s, *items, depth + 1) {
                    return None;
                }
                let n = self.block()?;
                if n > 0 {
                    for _ in 0..n {
                        self.value(*items, depth + 1, mask, ceiling)?;
                    }
                    self.end_of_blocks()?;
                }
                Leaf::Other
            }
            Kind::Map(values) => {
                let n = self.block()?;
                if n > 0 {
                    for _ in 0..n {
                        let klen = self.len()?;
                        // A key that is not UTF-8 is a miss.
                        as_utf8(self.r.take(klen).ok()?)?;
                        self.value(*values, depth + 1, mask, ceiling)?;
                    }
                    self.end_of_blocks()?;
                }
                Leaf::Other
            }
            Kind::Union(branches) => {
                let i = self.index(branches.len())?;
                let inner = self.value(branches[i as usize], depth + 1, mask, ceiling)?;
                if inner.branch != NO_BRANCH || i == NO_BRANCH {
                    return None;
                }
                return Some(Read { branch: i, ..inner });
            }
            Kind::Record(_) => {
                for f in s.slots(id) {
                    self.field(f, depth + 1, mask, ceiling, false)?;
                }
                Leaf::Other
            }
            kind => return self.scalar(Scalar::of(kind)?),
        };
        Some(Read::leaf(leaf, 0))
    }

    /// One scalar value, read and checked.
    #[inline(always)]
    fn scalar(&mut self, x: Scalar) -> Option<Read> {
        let mut number = 0;
        let leaf = match x {
            Scalar::Null => Leaf::Null,
            Scalar::Boolean => {
                if self.r.take(1).ok()?[0] > 1 {
                    return None;
                }
                Leaf::Other
            }
            Scalar::Int => {
                let l = self.long()?;
                i32::try_from(l).ok()?;
                number = l;
                Leaf::Int
            }
            Scalar::Long => {
                number = self.long()?;
                Leaf::Long
            }
            Scalar::Float => {
                self.r.take(4).ok()?;
                Leaf::Other
            }
            Scalar::Double => {
                self.r.take(8).ok()?;
                Leaf::Other
            }
            Scalar::Fixed(n) => {
                self.r.take(usize::from(n)).ok()?;
                Leaf::Other
            }
            Scalar::Bytes => {
                let n = self.len()?;
                self.r.take(n).ok()?;
                Leaf::Other
            }
            Scalar::String | Scalar::Uuid => {
                let n = self.len()?;
                let bytes = self.r.take(n).ok()?;
                // Every form of a UUID is ASCII, so one needs no UTF-8 check.
                let ok = if x == Scalar::Uuid {
                    is_uuid_bytes(bytes)
                } else {
                    as_utf8(bytes).is_some()
                };
                if !ok {
                    return None;
                }
                self.text = bytes;
                Leaf::Str
            }
            Scalar::Enum(symbols) => {
                number = i64::from(self.index(usize::from(symbols))?);
                Leaf::Enum
            }
        };
        Some(Read::leaf(leaf, number))
    }

    /// The count of an array's or map's first block: only a plain count
    /// (no byte size) that the bytes left can hold.
    fn block(&mut self) -> Option<usize> {
        // The same bounds as a length: no negative count (a count followed
        // by a byte size), none larger than the bytes left.
        self.len()
    }

    /// The end of an array or map after its first block: one block only.
    fn end_of_blocks(&mut self) -> Option<()> {
        (self.long()? == 0).then_some(())
    }
}

/// The bytes of `v`'s shortest zig-zag varint.
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Rules;
    use crate::schema::binary::{decode, encode, DecodeError};

    /// The body of `{note, ref, tags}` with these values, its strings
    /// written as the bytes given.
    fn body(note: &[u8], reference: &[u8], key: &[u8]) -> Vec<u8> {
        // Encoded with placeholders of the same lengths, then overwritten:
        // `encode` takes only `str`s.
        let fill = |b: &[u8]| Cow::Owned("x".repeat(b.len()));
        let d = Datum::Record(vec![
            Datum::String(fill(note)),
            Datum::String(fill(reference)),
            Datum::Map(vec![(fill(key), Datum::String(Cow::Borrowed("v")))]),
        ]);
        let mut out = Vec::new();
        encode(&d, &mut out);
        for b in [note, reference, key] {
            let at = out
                .windows(b.len())
                .position(|w| w.iter().all(|c| *c == b'x'))
                .unwrap();
            out[at..at + b.len()].copy_from_slice(b);
        }
        out
    }

    #[test]
    fn slots_carry_scalar_and_nullable_scalar_shapes() {
        let s = CompiledSchema::compile(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":"string"},
                {"name":"b","type":["null","string"]},
                {"name":"c","type":["string","null"]},
                {"name":"d","type":["null",{"type":"enum","name":"E","symbols":["X","Y"]}]},
                {"name":"e","type":{"type":"fixed","name":"F","size":3}},
                {"name":"f","type":["null",{"type":"record","name":"I","fields":[
                    {"name":"n","type":["null","long"]}]}]},
                {"name":"g","type":{"type":"array","items":"int"}},
                {"name":"h","type":["null","E"]},
                {"name":"i","type":["null","boolean","int"]},
                {"name":"j","type":"null"}]}"#,
            &Rules::default(),
        )
        .unwrap();
        let shapes: Vec<Shape> = s.slots(s.root()).iter().map(|f| f.shape).collect();
        assert_eq!(
            shapes,
            [
                Shape::Scalar(Scalar::String),
                Shape::Nullable(Scalar::String),
                Shape::Node,
                Shape::Nullable(Scalar::Enum(2)),
                Shape::Scalar(Scalar::Fixed(3)),
                Shape::Node,
                Shape::Node,
                Shape::Nullable(Scalar::Enum(2)),
                Shape::Node,
                Shape::Scalar(Scalar::Null),
            ]
        );
        let inner = s.slots(s.root())[5].node as NodeId;
        let Kind::Union(b) = &s.node(inner).kind else {
            panic!("f is a union")
        };
        assert_eq!(s.slots(b[1])[0].shape, Shape::Nullable(Scalar::Long));
        assert!(s.slots(inner).is_empty(), "a union has no slots");

        // Read from the slots as the tree path reads each value: a branch
        // or a symbol out of range, or a boolean that is not 0 or 1, is a
        // miss, and the tree refuses it.
        let read = |b: &[u8]| {
            let mut outs = [Vec::new(), Vec::new(), Vec::new()];
            project(&s, &Envelope::NONE, b, None, &mut outs).map(|_| outs)
        };
        // a="x", b=null, c="y", d=Y, e=3 bytes, f={n: 5}, g=[], h=X, i=true, j.
        let good = [
            &[2, b'x'][..],
            &[0],
            &[0, 2, b'y'],
            &[2, 2],
            b"abc",
            &[2, 2, 10],
            &[0],
            &[2, 0],
            &[2, 1],
        ]
        .concat();
        let outs = read(&good).expect("a well-formed body is read");
        assert_eq!(outs[2], good, "the restricted body keeps every byte");
        assert!(decode(&s, &good).is_ok());
        for (at, bad) in [
            (2, 4),
            (3, 4),
            (6, 6),
            (7, 4),
            (11, 4),
            (12, 4),
            (16, 4),
            (18, 2),
        ] {
            let mut b = good.clone();
            b[at] = bad;
            assert!(read(&b).is_none(), "byte {at} set to {bad}");
            assert!(decode(&s, &b).is_err(), "byte {at} set to {bad}");
        }
    }

    #[test]
    fn strings_are_read_only_when_utf8_and_uuids_only_when_uuids() {
        let s = CompiledSchema::compile(
            r#"{"type":"record","name":"R","fields":[
                {"name":"note","type":"string","privacy":"public"},
                {"name":"ref","type":{"type":"string","logicalType":"uuid"},"privacy":"public"},
                {"name":"tags","type":{"type":"map","values":"string"},"privacy":"public"}]}"#,
            &Rules::default(),
        )
        .unwrap();
        let uuid = b"67e55044-10b1-426f-9247-bb680e5fe0c8";
        let braced = b"{67e55044-10b1-426f-9247-bb680e5fe0c8}";
        let read = |b: &[u8]| {
            let mut outs = [Vec::new(), Vec::new(), Vec::new()];
            project(&s, &Envelope::NONE, b, None, &mut outs).is_some()
        };
        for (note, reference, key) in [
            (&b"plain"[..], &uuid[..], &b"k"[..]),
            (
                "na\u{ef}ve caf\u{e9} \u{1f600}".as_bytes(),
                &braced[..],
                "cl\u{e9}".as_bytes(),
            ),
        ] {
            let b = body(note, reference, key);
            assert!(read(&b), "{:?}", String::from_utf8_lossy(note));
            assert!(decode(&s, &b).is_ok());
        }
        // Not UTF-8: a lone continuation byte, a cut sequence, an overlong
        // form, a surrogate. The pass leaves each to the tree path, which
        // refuses it.
        for bad in [
            &b"ab\x80"[..],
            b"\xc3",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xff",
        ] {
            for b in [body(bad, uuid, b"k"), body(b"ok", uuid, bad)] {
                assert!(!read(&b), "{bad:?}");
                assert_eq!(decode(&s, &b), Err(DecodeError::BadUtf8), "{bad:?}");
            }
        }
        // Not a UUID, though UTF-8 (and of a UUID's length).
        let not_uuid = "67e55044-10b1-426f-9247-bb680e5fe0\u{e9}".as_bytes();
        assert!(!read(&body(b"ok", not_uuid, b"k")));
        assert!(!read(&body(
            b"ok",
            b"67e55044-10b1-426f-9247-bb680e5fe0cg",
            b"k"
        )));
    }
}
