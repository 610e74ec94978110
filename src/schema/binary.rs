//! Avro binary encoding of [`Datum`]s against a [`CompiledSchema`].
//!
//! Decoding borrows strings and bytes from the input, checks every length
//! against what is left, bounds nesting depth, and never allocates from an
//! untrusted count, so hostile input is an error and never a panic or an
//! allocation bomb. Cross-checked against `apache-avro` in the tests.

use std::borrow::Cow;

use thiserror::Error;

use super::{CompiledSchema, Kind, NodeId};
use crate::record::Datum;

/// Deepest nesting accepted (recursive schemas could otherwise exhaust the
/// stack on crafted input).
pub const MAX_DEPTH: usize = 64;

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Ran out of bytes.
    #[error("the Avro body ends early")]
    Eof,
    /// A varint longer than 10 bytes.
    #[error("a variable-length integer is too long")]
    VarintOverflow,
    /// A negative length or a count larger than the remaining bytes.
    #[error("a length or count is out of range")]
    BadLength,
    /// A string is not UTF-8.
    #[error("a string is not valid UTF-8")]
    BadUtf8,
    /// A union branch or enum symbol index out of range.
    #[error("a union branch or enum index is out of range")]
    BadIndex,
    /// An int does not fit 32 bits.
    #[error("an int is out of range")]
    IntOverflow,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the value nests too deeply")]
    TooDeep,
    /// Bytes left over after the value.
    #[error("bytes remain after the value")]
    TrailingBytes,
}

/// The most items an array of an empty type (`null`, `fixed` of size 0, a
/// record of such) may hold: they take no bytes, so the input's length
/// cannot bound them.
const MAX_EMPTY_ITEMS: u64 = 1 << 16;

/// Whether a value of the node's type can take no bytes at all.
pub(super) fn can_be_empty(s: &CompiledSchema, id: NodeId, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match &s.node(id).kind {
        Kind::Null | Kind::Fixed(0) => true,
        Kind::Record(fields) => fields.iter().all(|f| can_be_empty(s, f.node, depth + 1)),
        _ => false,
    }
}

/// Decodes one value of the schema's root type; the whole input must be used.
///
/// # Errors
/// A [`DecodeError`] for anything that is not a well-formed value.
pub fn decode<'a>(schema: &CompiledSchema, bytes: &'a [u8]) -> Result<Datum<'a>, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut d = None;
    r.value(schema, schema.root(), 0, &mut d)?;
    if r.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(d.unwrap_or(Datum::Null))
}

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline(always)]
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Eof);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    pub(super) fn long(&mut self) -> Result<i64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(DecodeError::Eof)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    #[inline]
    pub(super) fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.long()?;
        if n < 0 || n as u64 > self.remaining() as u64 {
            return Err(DecodeError::BadLength);
        }
        Ok(n as usize)
    }

    #[inline]
    pub(super) fn index(&mut self, limit: usize) -> Result<u32, DecodeError> {
        let i = self.long()?;
        if i < 0 || i as u64 >= limit as u64 {
            return Err(DecodeError::BadIndex);
        }
        Ok(i as u32)
    }

    /// Reads a block count for arrays and maps; a negative count is followed
    /// by the block's byte size, which is read and ignored.
    /// `empty_budget`: for items of an empty type, how many more the array
    /// may hold; otherwise the count is bounded by the bytes left.
    fn block_count(&mut self, empty_budget: Option<u64>) -> Result<usize, DecodeError> {
        let n = self.long()?;
        let n = if n < 0 {
            self.long()?;
            n.checked_neg().ok_or(DecodeError::BadLength)?
        } else {
            n
        };
        // Every item takes at least one byte unless the item type is empty
        // (a projection can empty a record: every field removed); beyond
        // that, a count beyond the remaining bytes is treated as hostile.
        let limit = empty_budget.unwrap_or(self.remaining() as u64);
        if n as u64 > limit {
            return Err(DecodeError::BadLength);
        }
        Ok(n as usize)
    }

    /// Reads the blocks of an array or map into `out`, one item at a time.
    fn blocks<T>(
        &mut self,
        empty_items: bool,
        out: &mut Vec<T>,
        mut item: impl FnMut(&mut Self, &mut Vec<T>) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        loop {
            let budget = empty_items.then(|| MAX_EMPTY_ITEMS - out.len() as u64);
            let n = self.block_count(budget)?;
            if n == 0 {
                return Ok(());
            }
            out.reserve(n.min(1024));
            for _ in 0..n {
                item(self, out)?;
            }
        }
    }

    fn value<S: Sink<'a>>(
        &mut self,
        s: &CompiledSchema,
        id: NodeId,
        depth: usize,
        sink: &mut S,
    ) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        sink.put(match &s.node(id).kind {
            Kind::Null => Datum::Null,
            Kind::Boolean => match self.take(1)?[0] {
                0 => Datum::Boolean(false),
                1 => Datum::Boolean(true),
                _ => return Err(DecodeError::BadIndex),
            },
            Kind::Int => {
                Datum::Int(i32::try_from(self.long()?).map_err(|_| DecodeError::IntOverflow)?)
            }
            Kind::Long => Datum::Long(self.long()?),
            Kind::Float => Datum::Float(f32::from_le_bytes(
                self.take(4)?.try_into().map_err(|_| DecodeError::Eof)?,
            )),
            Kind::Double => Datum::Double(f64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| DecodeError::Eof)?,
            )),
            Kind::Bytes => {
                let n = self.len()?;
                Datum::Bytes(Cow::Borrowed(self.take(n)?))
            }
            Kind::String | Kind::Uuid => {
                let n = self.len()?;
                let b = self.take(n)?;
                Datum::String(Cow::Borrowed(
                    std::str::from_utf8(b).map_err(|_| DecodeError::BadUtf8)?,
                ))
            }
            Kind::Fixed(n) => Datum::Fixed(Cow::Borrowed(self.take(*n)?)),
            Kind::Enum(symbols) => Datum::Enum(self.index(symbols.len())?),
            Kind::Array(items) => {
                let empty = can_be_empty(s, *items, depth + 1);
                let mut out = Vec::new();
                self.blocks(empty, &mut out, |r, out| r.value(s, *items, depth + 1, out))?;
                Datum::Array(out)
            }
            Kind::Map(values) => {
                let mut out = Vec::new();
                self.blocks(false, &mut out, |r, out| {
                    let klen = r.len()?;
                    let k = std::str::from_utf8(r.take(klen)?).map_err(|_| DecodeError::BadUtf8)?;
                    let mut v = None;
                    r.value(s, *values, depth + 1, &mut v)?;
                    out.push((Cow::Borrowed(k), v.unwrap_or(Datum::Null)));
                    Ok(())
                })?;
                Datum::Map(out)
            }
            Kind::Union(branches) => {
                let i = self.index(branches.len())?;
                let mut v = None;
                self.value(s, branches[i as usize], depth + 1, &mut v)?;
                Datum::Union(i, Box::new(v.unwrap_or(Datum::Null)))
            }
            Kind::Record(fields) => {
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    self.value(s, f.node, depth + 1, &mut out)?;
                }
                Datum::Record(out)
            }
        });
        Ok(())
    }
}

/// Where [`Reader::value`] puts what it read.
trait Sink<'a> {
    fn put(&mut self, d: Datum<'a>);
}

/// A record's fields, an array's items.
impl<'a> Sink<'a> for Vec<Datum<'a>> {
    fn put(&mut self, d: Datum<'a>) {
        self.push(d);
    }
}

/// One value (the root, a union's branch, a map's value).
impl<'a> Sink<'a> for Option<Datum<'a>> {
    fn put(&mut self, d: Datum<'a>) {
        *self = Some(d);
    }
}

/// A `long` as a zig-zag varint: the bytes and how many are used.
pub fn varint(v: i64) -> ([u8; 10], usize) {
    let mut buf = [0u8; 10];
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 0;
    while z >= 0x80 {
        buf[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    buf[n] = z as u8;
    (buf, n + 1)
}

/// Appends a zig-zag varint `long`.
pub fn put_long(out: &mut Vec<u8>, v: i64) {
    let (buf, n) = varint(v);
    out.extend_from_slice(&buf[..n]);
}

/// Appends length-prefixed bytes (`bytes` and `string`).
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Appends a datum as-is (no projection). The datum must match the schema it
/// was decoded or resolved with.
pub fn encode(datum: &Datum<'_>, out: &mut Vec<u8>) {
    match datum {
        Datum::Null => {}
        Datum::Boolean(b) => out.push(u8::from(*b)),
        Datum::Int(i) => put_long(out, i64::from(*i)),
        Datum::Long(l) => put_long(out, *l),
        Datum::Float(f) => out.extend_from_slice(&f.to_le_bytes()),
        Datum::Double(d) => out.extend_from_slice(&d.to_le_bytes()),
        Datum::Bytes(b) => put_bytes(out, b),
        Datum::String(s) => put_bytes(out, s.as_bytes()),
        Datum::Fixed(b) => out.extend_from_slice(b),
        Datum::Enum(i) => put_long(out, i64::from(*i)),
        Datum::Array(items) => {
            if !items.is_empty() {
                put_long(out, items.len() as i64);
                for i in items {
                    encode(i, out);
                }
            }
            out.push(0);
        }
        Datum::Map(entries) => {
            if !entries.is_empty() {
                put_long(out, entries.len() as i64);
                for (k, v) in entries {
                    put_bytes(out, k.as_bytes());
                    encode(v, out);
                }
            }
            out.push(0);
        }
        Datum::Union(i, inner) => {
            put_long(out, i64::from(*i));
            encode(inner, out);
        }
        Datum::Record(fields) => {
            for f in fields {
                encode(f, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Rules;

    fn schema(text: &str) -> CompiledSchema {
        CompiledSchema::compile(text, &Rules::default()).unwrap()
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        let s = schema(r#""long""#);
        for v in [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 35] {
            let mut out = Vec::new();
            put_long(&mut out, v);
            assert_eq!(decode(&s, &out), Ok(Datum::Long(v)));
        }
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let s = schema(r#"{"type":"array","items":"null"}"#);
        let mut out = Vec::new();
        put_long(&mut out, i64::MAX / 2);
        assert_eq!(decode(&s, &out), Err(DecodeError::BadLength));
        let s = schema(r#""string""#);
        let mut out = Vec::new();
        put_long(&mut out, 10);
        out.extend_from_slice(b"abc");
        assert_eq!(decode(&s, &out), Err(DecodeError::BadLength));
        assert_eq!(decode(&s, &[0xff; 11]), Err(DecodeError::VarintOverflow));
    }

    #[test]
    fn arrays_of_empty_items_decode_up_to_a_bound() {
        // A projection can remove every field of a record: its items take
        // no bytes, so their count may exceed the bytes that follow.
        let s = schema(r#"{"type":"array","items":{"type":"record","name":"E","fields":[]}}"#);
        assert_eq!(
            decode(&s, &[6, 0]),
            Ok(Datum::Array(vec![Datum::Record(vec![]); 3]))
        );
        let mut out = Vec::new();
        put_long(&mut out, 1 << 16);
        put_long(&mut out, 0);
        assert!(decode(&s, &out).is_ok());
        for blocks in [vec![(1 << 16) + 1], vec![1 << 15, 1 << 15, 1]] {
            let mut out = Vec::new();
            for n in blocks {
                put_long(&mut out, n);
            }
            put_long(&mut out, 0);
            assert_eq!(decode(&s, &out), Err(DecodeError::BadLength));
        }
    }

    #[test]
    fn deep_recursion_is_refused() {
        let s = schema(
            r#"{"type":"record","name":"N","fields":[{"name":"next","privacy":"public","type":["null","N"]}]}"#,
        );
        let bytes = vec![2u8; 200];
        assert_eq!(decode(&s, &bytes), Err(DecodeError::TooDeep));
    }

    #[test]
    #[allow(deprecated)] // apache-avro's one-shot writer: the reference encoder here
    fn agrees_with_apache_avro() {
        let text = r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"long"},{"name":"b","type":["null","string"]},
            {"name":"c","type":{"type":"array","items":"int"}},
            {"name":"d","type":{"type":"map","values":"double"}},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"f","type":{"type":"fixed","name":"F","size":2}},
            {"name":"g","type":"bytes"},{"name":"h","type":"boolean"},{"name":"i","type":"float"}]}"#;
        let avro = apache_avro::Schema::parse_str(text).unwrap();
        use apache_avro::types::Value as V;
        let v = V::Record(vec![
            ("a".into(), V::Long(-123456789)),
            ("b".into(), V::Union(1, Box::new(V::String("héllo".into())))),
            ("c".into(), V::Array(vec![V::Int(1), V::Int(-2)])),
            (
                "d".into(),
                V::Map([("k".to_owned(), V::Double(1.5))].into()),
            ),
            ("e".into(), V::Enum(1, "Y".into())),
            ("f".into(), V::Fixed(2, vec![7, 8])),
            ("g".into(), V::Bytes(vec![0, 255])),
            ("h".into(), V::Boolean(true)),
            ("i".into(), V::Float(0.25)),
        ]);
        let bytes = apache_avro::to_avro_datum(&avro, v).unwrap();
        let s = schema(text);
        let d = decode(&s, &bytes).unwrap();
        let mut again = Vec::new();
        encode(&d, &mut again);
        assert_eq!(again, bytes);
    }
}
