//! JSON and [`Datum`]s.
//!
//! [`resolve`] reads a plain JSON value (as producers write it, not the Avro
//! JSON encoding) against a schema: record fields by name, missing fields from
//! their defaults, keys the schema does not know dropped, unions by the first
//! branch the value resolves to (the Avro JSON `{"type": value}` form is also
//! accepted). [`render`] writes a datum back as plain JSON.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};
use thiserror::Error;

use super::{binary::MAX_DEPTH, CompiledSchema, Field, Kind, NodeId};
use crate::record::Datum;

/// Why a JSON value does not fit a schema. Names the schema path and what
/// was expected, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: expected {expected}")]
pub struct ResolveError {
    /// Schema path of the mismatch (`data.items[].quantity_count`).
    pub path: String,
    /// What the schema expected there.
    pub expected: &'static str,
}

/// A parsed JSON document as [`resolve`] reads it: what a
/// [`serde_json::Value`] holds, with strings borrowed from the input where
/// they need no unescaping and objects as vectors sorted by key (of equal
/// keys the last one kept, as a [`Map`] keeps it), so reading an event
/// neither copies its strings nor builds a tree of maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as `serde_json` parses it.
    Number(Number),
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object, sorted by key, keys unique.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses a JSON text.
    ///
    /// # Errors
    /// When `bytes` is not JSON (the error names a line and column, never
    /// the text).
    pub fn parse(bytes: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        // One UTF-8 check of the whole text is much cheaper than serde_json's
        // check of each string as it reads a slice; text that is not UTF-8
        // is read as a slice so that the error is the one serde_json gives.
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Json<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(i.into()))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(u.into()))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(f).map_or(Json::Null, Json::Number))
    }
    fn visit_borrowed_str<E>(self, x: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(x)))
    }
    fn visit_str<E>(self, x: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(x.to_owned())))
    }
    fn visit_string<E>(self, x: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(x)))
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(x) = seq.next_element()? {
            out.push(x);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut out: Vec<(Cow<'de, str>, Json<'de>)> = Vec::with_capacity(8);
        while let Some((Key(k), x)) = map.next_entry()? {
            out.push((k, x));
        }
        // A stable sort, then of each run of equal keys the last one read
        // is kept (in one linear pass, however many duplicates there are).
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept = 0;
        for i in 0..out.len() {
            if out.get(i + 1).is_some_and(|next| next.0 == out[i].0) {
                continue;
            }
            out.swap(kept, i);
            kept += 1;
        }
        out.truncate(kept);
        Ok(Json::Object(out))
    }
}

/// An object key, borrowed from the input when it needs no unescaping.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, x: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(x)))
            }
            fn visit_str<E>(self, x: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(x.to_owned())))
            }
            fn visit_string<E>(self, x: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(x)))
            }
        }
        d.deserialize_str(V)
    }
}

/// What a JSON node is, as [`resolve`] looks at it.
#[derive(Debug)]
pub enum Shape<'a, D> {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(&'a Number),
    /// A string.
    String(&'a str),
    /// An array of these items.
    Array(&'a [D]),
    /// An object: read it with [`Doc::get`] and [`Doc::entries`].
    Object,
}

/// A JSON document [`resolve`] can read: a [`serde_json::Value`] or a
/// [`Json`].
pub trait Doc: Sized {
    /// What this node is.
    fn shape(&self) -> Shape<'_, Self>;
    /// An object's value for `key` (`None` for other nodes).
    fn get(&self, key: &str) -> Option<&Self>;
    /// As [`Doc::get`], for keys asked in ascending order: `at` starts at 0
    /// and is moved past what was looked at, so an object kept sorted is
    /// read in one merge with the keys instead of a search per key.
    fn get_ascending(&self, key: &str, at: &mut usize) -> Option<&Self> {
        let _ = at;
        self.get(key)
    }
    /// An object's entries sorted by key (nothing for other nodes).
    fn entries(&self) -> impl Iterator<Item = (&str, &Self)>;
    /// An object's number of entries (0 for other nodes).
    fn object_len(&self) -> usize;
    /// A string node's text.
    fn as_text(&self) -> Option<&str> {
        match self.shape() {
            Shape::String(x) => Some(x),
            _ => None,
        }
    }
    /// A number node's value when it is a non-negative integer.
    fn as_unsigned(&self) -> Option<u64> {
        match self.shape() {
            Shape::Number(n) => n.as_u64(),
            _ => None,
        }
    }
}

impl Doc for Value {
    fn shape(&self) -> Shape<'_, Self> {
        match self {
            Value::Null => Shape::Null,
            Value::Bool(b) => Shape::Bool(*b),
            Value::Number(n) => Shape::Number(n),
            Value::String(x) => Shape::String(x),
            Value::Array(xs) => Shape::Array(xs),
            Value::Object(_) => Shape::Object,
        }
    }
    fn get(&self, key: &str) -> Option<&Self> {
        self.as_object().and_then(|o| o.get(key))
    }
    fn entries(&self) -> impl Iterator<Item = (&str, &Self)> {
        self.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v))
    }
    fn object_len(&self) -> usize {
        self.as_object().map_or(0, Map::len)
    }
}

impl Doc for Json<'_> {
    fn shape(&self) -> Shape<'_, Self> {
        match self {
            Json::Null => Shape::Null,
            Json::Bool(b) => Shape::Bool(*b),
            Json::Number(n) => Shape::Number(n),
            Json::String(x) => Shape::String(x),
            Json::Array(xs) => Shape::Array(xs),
            Json::Object(_) => Shape::Object,
        }
    }
    fn get(&self, key: &str) -> Option<&Self> {
        let Json::Object(o) = self else { return None };
        o.binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| &o[i].1)
    }
    fn get_ascending(&self, key: &str, at: &mut usize) -> Option<&Self> {
        let Json::Object(o) = self else { return None };
        while let Some((k, v)) = o.get(*at) {
            match k.as_ref().cmp(key) {
                std::cmp::Ordering::Less => *at += 1,
                std::cmp::Ordering::Equal => {
                    *at += 1;
                    return Some(v);
                }
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
    fn entries(&self) -> impl Iterator<Item = (&str, &Self)> {
        let o: &[_] = match self {
            Json::Object(o) => o,
            _ => &[],
        };
        o.iter().map(|(k, v)| (k.as_ref(), v))
    }
    fn object_len(&self) -> usize {
        match self {
            Json::Object(o) => o.len(),
            _ => 0,
        }
    }
}

/// Resolves a JSON value against the schema's root type.
///
/// # Errors
/// A [`ResolveError`] naming the first path that does not fit.
pub fn resolve<'a, D: Doc>(schema: &CompiledSchema, v: &'a D) -> Result<Datum<'a>, ResolveError> {
    // Whether a value fits, and the datum it gives, do not depend on the
    // order its fields are looked up in; which misfit is named first does.
    // So a value that does not fit is read again in schema order.
    if let Ok(d) = resolve_node(schema, schema.root(), v, &mut Vec::new(), 0, Order::Merged) {
        return Ok(d);
    }
    let mut path = Vec::new();
    resolve_node(schema, schema.root(), v, &mut path, 0, Order::Schema).map_err(|expected| {
        ResolveError {
            path: if path.is_empty() {
                "<root>".to_owned()
            } else {
                path.join(".")
            },
            expected,
        }
    })
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// How a record's fields are looked up in a JSON object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// In field-name order, merged with the object's sorted keys.
    Merged,
    /// In schema order, each field looked up: the first misfit in schema
    /// order is the one named.
    Schema,
}

fn resolve_node<'a, 's, D: Doc>(
    s: &'s CompiledSchema,
    id: NodeId,
    v: &'a D,
    path: &mut Vec<&'s str>,
    depth: usize,
    order: Order,
) -> Result<Datum<'a>, &'static str> {
    if depth > MAX_DEPTH {
        return Err("less nesting");
    }
    let node = s.node(id);
    Ok(match (&node.kind, v.shape()) {
        (Kind::Null, Shape::Null) => Datum::Null,
        (Kind::Boolean, Shape::Bool(b)) => Datum::Boolean(b),
        (Kind::Int, Shape::Number(n)) => Datum::Int(
            n.as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or("a 32-bit integer")?,
        ),
        (Kind::Long, Shape::Number(n)) => Datum::Long(n.as_i64().ok_or("a 64-bit integer")?),
        (Kind::Float, Shape::Number(n)) => Datum::Float(n.as_f64().ok_or("a number")? as f32),
        (Kind::Double, Shape::Number(n)) => Datum::Double(n.as_f64().ok_or("a number")?),
        (Kind::String | Kind::Uuid, Shape::String(x)) => Datum::String(Cow::Borrowed(x)),
        (Kind::Bytes, Shape::String(x)) => {
            Datum::Bytes(Cow::Owned(latin1(x).ok_or("bytes as a latin-1 string")?))
        }
        (Kind::Fixed(n), Shape::String(x)) => {
            let b = latin1(x).ok_or("a fixed as a latin-1 string")?;
            if b.len() != *n {
                return Err("a fixed of the schema's size");
            }
            Datum::Fixed(Cow::Owned(b))
        }
        (Kind::Enum(symbols), Shape::String(x)) => Datum::Enum(
            symbols
                .iter()
                .position(|sym| sym == x)
                .ok_or("one of the enum's symbols")? as u32,
        ),
        (Kind::Array(items), Shape::Array(xs)) => {
            let mut out = Vec::with_capacity(xs.len());
            for x in xs {
                out.push(resolve_node(s, *items, x, path, depth + 1, order)?);
            }
            Datum::Array(out)
        }
        (Kind::Map(values), Shape::Object) => {
            let mut out = Vec::with_capacity(v.object_len());
            for (k, x) in v.entries() {
                out.push((
                    Cow::Borrowed(k),
                    resolve_node(s, *values, x, path, depth + 1, order)?,
                ));
            }
            Datum::Map(out)
        }
        (Kind::Union(branches), _) => resolve_union(s, branches, v, path, depth, order)?,
        (Kind::Record(fields), Shape::Object) => {
            let field = |f: &'s Field, x: Option<&'a D>, path: &mut Vec<&'s str>, order| match x {
                Some(x) => resolve_node(s, f.node, x, path, depth + 1, order),
                None => match f.attrs.get("default") {
                    Some(def) => default_datum(s, f.node, def),
                    None => Err("a value for a field that has no default"),
                },
            };
            let mut out = Vec::with_capacity(fields.len());
            match order {
                Order::Merged => {
                    out.resize_with(fields.len(), || Datum::Null);
                    let mut at = 0;
                    for i in s.sorted_fields(id) {
                        let f = &fields[i];
                        path.push(&f.name);
                        out[i] = field(f, v.get_ascending(&f.name, &mut at), path, order)?;
                        path.pop();
                    }
                }
                Order::Schema => {
                    for f in fields {
                        path.push(&f.name);
                        out.push(field(f, v.get(&f.name), path, order)?);
                        path.pop();
                    }
                }
            }
            Datum::Record(out)
        }
        (Kind::Null, _) => return Err("null"),
        (Kind::Boolean, _) => return Err("a boolean"),
        (Kind::Int | Kind::Long, _) => return Err("an integer"),
        (Kind::Float | Kind::Double, _) => return Err("a number"),
        (Kind::String | Kind::Uuid | Kind::Bytes | Kind::Fixed(_) | Kind::Enum(_), _) => {
            return Err("a string")
        }
        (Kind::Array(_), _) => return Err("an array"),
        (Kind::Map(_) | Kind::Record(_), _) => return Err("an object"),
    })
}

/// Whether `key` tags a value as union branch `id` in the Avro JSON
/// encoding (`{"<branch type name>": value}`): the branch's full or short
/// name, and the branch not a map (whose keys are its own).
pub(super) fn is_tag_of(s: &CompiledSchema, id: NodeId, key: &str) -> bool {
    let name = branch_name(s, id);
    let short = name.rsplit('.').next().unwrap_or(&name);
    (key == name.as_ref() || key == short) && !matches!(s.node(id).kind, Kind::Map(_))
}

fn branch_name(s: &CompiledSchema, id: NodeId) -> Cow<'_, str> {
    let n = s.node(id);
    if let Some(full) = &n.fullname {
        return Cow::Borrowed(full);
    }
    Cow::Borrowed(match n.kind {
        Kind::Null => "null",
        Kind::Boolean => "boolean",
        Kind::Int => "int",
        Kind::Long => "long",
        Kind::Float => "float",
        Kind::Double => "double",
        Kind::Bytes => "bytes",
        Kind::String | Kind::Uuid => "string",
        Kind::Array(_) => "array",
        Kind::Map(_) => "map",
        _ => "",
    })
}

fn resolve_union<'a, 's, D: Doc>(
    s: &'s CompiledSchema,
    branches: &[NodeId],
    v: &'a D,
    path: &mut Vec<&'s str>,
    depth: usize,
    order: Order,
) -> Result<Datum<'a>, &'static str> {
    // The Avro JSON encoding: {"<branch type name>": value}.
    if let Shape::Object = v.shape() {
        if v.object_len() == 1 {
            let (k, inner) = v.entries().next().expect("one entry");
            for (i, b) in branches.iter().enumerate() {
                if is_tag_of(s, *b, k) {
                    return Ok(Datum::Union(
                        i as u32,
                        Box::new(resolve_node(s, *b, inner, path, depth + 1, order)?),
                    ));
                }
            }
        }
    }
    let mut first_err = "a value of one of the union's branches";
    let depth_before = path.len();
    for (i, b) in branches.iter().enumerate() {
        match resolve_node(s, *b, v, path, depth + 1, order) {
            Ok(d) => return Ok(Datum::Union(i as u32, Box::new(d))),
            Err(e) => {
                path.truncate(depth_before);
                if !matches!(s.node(*b).kind, Kind::Null) {
                    first_err = e;
                }
            }
        }
    }
    Err(first_err)
}

fn default_datum(
    s: &CompiledSchema,
    id: NodeId,
    def: &Value,
) -> Result<Datum<'static>, &'static str> {
    // A union's default belongs to its first branch.
    match &s.node(id).kind {
        Kind::Union(branches) => {
            let first = *branches.first().ok_or("a union with branches")?;
            Ok(Datum::Union(0, Box::new(default_datum(s, first, def)?)))
        }
        _ => resolve_node(s, id, def, &mut Vec::new(), 0, Order::Schema)
            .map(Datum::into_owned)
            .map_err(|_| "a default that fits its type"),
    }
}

fn latin1_string(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// Renders a datum of the node's type as plain JSON: records as objects,
/// enums as symbols, unions as their value, bytes as latin-1 strings.
pub fn render(s: &CompiledSchema, id: NodeId, d: &Datum<'_>) -> Value {
    match (&s.node(id).kind, d) {
        (_, Datum::Null) => Value::Null,
        (_, Datum::Boolean(b)) => Value::Bool(*b),
        (_, Datum::Int(i)) => Value::from(*i),
        (_, Datum::Long(l)) => Value::from(*l),
        (_, Datum::Float(f)) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        (_, Datum::Double(f)) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        (_, Datum::Bytes(b) | Datum::Fixed(b)) => Value::String(latin1_string(b)),
        (_, Datum::String(x)) => Value::String(x.to_string()),
        (Kind::Enum(symbols), Datum::Enum(i)) => symbols
            .get(*i as usize)
            .map_or(Value::Null, |x| Value::String(x.clone())),
        (Kind::Array(items), Datum::Array(xs)) => {
            Value::Array(xs.iter().map(|x| render(s, *items, x)).collect())
        }
        (Kind::Map(values), Datum::Map(entries)) => Value::Object(
            entries
                .iter()
                .map(|(k, x)| (k.to_string(), render(s, *values, x)))
                .collect::<Map<_, _>>(),
        ),
        (Kind::Union(branches), Datum::Union(i, inner)) => match branches.get(*i as usize) {
            Some(b) => render(s, *b, inner),
            None => Value::Null,
        },
        (Kind::Record(fields), Datum::Record(values)) => Value::Object(
            fields
                .iter()
                .zip(values)
                .map(|(f, x)| (f.name.clone(), render(s, f.node, x)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Appends what `serde_json::to_vec(&render(s, id, d))` gives, byte for
/// byte (object keys in `serde_json::Map`'s sorted order, a map's last
/// duplicate key winning), without building the [`Value`] tree: no string
/// is copied and no map is allocated.
pub fn write(s: &CompiledSchema, id: NodeId, d: &Datum<'_>, out: &mut Vec<u8>) {
    match (&s.node(id).kind, d) {
        (_, Datum::Null) => out.extend_from_slice(b"null"),
        (_, Datum::Boolean(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        (_, Datum::Int(i)) => scalar(out, i),
        (_, Datum::Long(l)) => scalar(out, l),
        (_, Datum::Float(f)) => number(out, f64::from(*f)),
        (_, Datum::Double(f)) => number(out, *f),
        (_, Datum::Bytes(b) | Datum::Fixed(b)) => scalar(out, &latin1_string(b)),
        (_, Datum::String(x)) => write_str(out, x),
        (Kind::Enum(symbols), Datum::Enum(i)) => match symbols.get(*i as usize) {
            Some(x) => write_str(out, x),
            None => out.extend_from_slice(b"null"),
        },
        (Kind::Array(items), Datum::Array(xs)) => {
            out.push(b'[');
            for (n, x) in xs.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write(s, *items, x, out);
            }
            out.push(b']');
        }
        (Kind::Map(values), Datum::Map(entries)) => {
            // Sorted by key; of equal keys the last one, as collecting into
            // a `Map` keeps it.
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_by(|a, b| entries[*a].0.cmp(&entries[*b].0));
            out.push(b'{');
            let mut first = true;
            for (n, i) in order.iter().enumerate() {
                let (k, x) = &entries[*i];
                if order.get(n + 1).is_some_and(|j| entries[*j].0 == *k) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_str(out, k);
                out.push(b':');
                write(s, *values, x, out);
            }
            out.push(b'}');
        }
        (Kind::Union(branches), Datum::Union(i, inner)) => match branches.get(*i as usize) {
            Some(b) => write(s, *b, inner, out),
            None => out.extend_from_slice(b"null"),
        },
        (Kind::Record(fields), Datum::Record(values)) => {
            // Field names are unique in a record (Avro requires it).
            out.push(b'{');
            let mut first = true;
            for i in s.sorted_fields(id) {
                let Some(value) = values.get(i) else {
                    continue;
                };
                if !first {
                    out.push(b',');
                }
                first = false;
                write_str(out, &fields[i].name);
                out.push(b':');
                write(s, fields[i].node, value, out);
            }
            out.push(b'}');
        }
        _ => out.extend_from_slice(b"null"),
    }
}

/// A JSON string as `serde_json` writes it: it escapes only `"`, `\` and
/// control characters, so a string without them is copied as it is.
pub fn write_str(out: &mut Vec<u8>, x: &str) {
    // A fold without an early exit, which the compiler vectorises (`any`
    // stops at the first hit and checks byte by byte); most strings here
    // have nothing to escape and are short.
    let escape = x
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escape {
        scalar(out, x);
    } else {
        out.reserve(x.len() + 2);
        out.push(b'"');
        out.extend_from_slice(x.as_bytes());
        out.push(b'"');
    }
}

/// A JSON scalar (number or escaped string) as `serde_json` writes it.
fn scalar<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("scalars serialise into a Vec");
}

/// A float as `render` turns it into JSON: `null` when not finite.
pub(super) fn number(out: &mut Vec<u8>, f: f64) {
    match Number::from_f64(f) {
        Some(n) => scalar(out, &n),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Rules;
    use serde_json::json;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for c in (0u32..0x100)
            .chain([0x2028, 0x1F600])
            .filter_map(char::from_u32)
        {
            for x in [
                format!("{c}"),
                format!("ab{c}"),
                format!("{c}{}", "x".repeat(40)),
            ] {
                let mut out = Vec::new();
                write_str(&mut out, &x);
                assert_eq!(out, serde_json::to_vec(&x).unwrap(), "{:?}", x);
            }
        }
    }

    #[test]
    fn write_is_the_rendered_values_serialisation_byte_for_byte() {
        let s = CompiledSchema::compile(
            r#"{"type":"record","name":"W","namespace":"t","fields":[
              {"name":"z","type":"string"},
              {"name":"b","type":"boolean"},
              {"name":"i","type":"int"},
              {"name":"l","type":"long"},
              {"name":"f","type":"float"},
              {"name":"d","type":"double"},
              {"name":"raw","type":"bytes"},
              {"name":"fx","type":{"type":"fixed","name":"F2","size":2}},
              {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
              {"name":"a","type":{"type":"array","items":["null","double"]}},
              {"name":"m","type":{"type":"map","values":"long"}},
              {"name":"u","type":["null","string"]}]}"#,
            &Rules::default(),
        )
        .unwrap();
        let cases = [
            (
                f32::NAN,
                f64::INFINITY,
                7u32,
                vec![("b", 1), ("a", 2), ("b", 3), ("\u{e9}\"", 4)],
            ),
            (1.5, -0.0, 1, vec![]),
            (f32::MIN_POSITIVE, 1e300, 0, vec![("k", 1)]),
        ];
        for (f, d, e, m) in cases {
            let datum = Datum::Record(vec![
                Datum::String(Cow::Borrowed("quote \" back \\ nl \n ctl \u{1} é 😀")),
                Datum::Boolean(true),
                Datum::Int(i32::MIN),
                Datum::Long(i64::MAX),
                Datum::Float(f),
                Datum::Double(d),
                Datum::Bytes(Cow::Borrowed(&[0, 0x7f, 0xe9, 0xff])),
                Datum::Fixed(Cow::Borrowed(b"\"\\")),
                Datum::Enum(e),
                Datum::Array(vec![
                    Datum::Union(1, Box::new(Datum::Double(0.1))),
                    Datum::Union(0, Box::new(Datum::Null)),
                    Datum::Union(9, Box::new(Datum::Null)),
                ]),
                Datum::Map(
                    m.into_iter()
                        .map(|(k, v)| (Cow::Borrowed(k), Datum::Long(v)))
                        .collect(),
                ),
                Datum::Long(3),
            ]);
            let mut out = Vec::new();
            write(&s, s.root(), &datum, &mut out);
            let want = serde_json::to_vec(&render(&s, s.root(), &datum)).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    fn schema() -> CompiledSchema {
        CompiledSchema::compile(
            r#"{"type":"record","name":"R","namespace":"t","fields":[
              {"name":"id","type":"string"},
              {"name":"n","type":["null","long"],"default":null},
              {"name":"pay","type":[
                 {"type":"record","name":"Card","fields":[{"name":"last4","type":"string"}]},
                 {"type":"record","name":"Wallet","fields":[{"name":"provider","type":"string"}]}]},
              {"name":"tags","type":{"type":"array","items":"string"},"default":[]}]}"#,
            &Rules::default(),
        )
        .unwrap()
    }

    #[test]
    fn unknown_keys_are_dropped_and_defaults_filled() {
        let s = schema();
        let v = json!({"id": "a", "pay": {"provider": "x"}, "secret": "never forwarded"});
        let d = resolve(&s, &v).unwrap();
        let back = render(&s, s.root(), &d);
        assert_eq!(
            back,
            json!({"id": "a", "n": null, "pay": {"provider": "x"}, "tags": []})
        );
    }

    #[test]
    fn tagged_union_form_is_accepted() {
        let s = schema();
        let v = json!({"id": "a", "n": {"long": 5}, "pay": {"t.Card": {"last4": "1234"}}});
        let d = resolve(&s, &v).unwrap();
        assert_eq!(render(&s, s.root(), &d)["n"], json!(5));
        assert_eq!(render(&s, s.root(), &d)["pay"], json!({"last4": "1234"}));
    }

    #[test]
    fn mismatch_names_the_path_not_the_value() {
        let s = schema();
        let err = resolve(&s, &json!({"id": 7, "pay": {"provider": "x"}})).unwrap_err();
        assert_eq!(err.path, "id");
        assert!(!err.to_string().contains('7'));
        let err = resolve(&s, &json!({"id": "x"})).unwrap_err();
        assert_eq!(err.path, "pay");
    }

    /// Fields are looked up in name order when the document is a [`Json`];
    /// the datum keeps schema order and an error still names the first field
    /// in schema order that does not fit, as with a `Value`.
    #[test]
    fn fields_out_of_name_order_resolve_and_fail_as_in_schema_order() {
        let s = CompiledSchema::compile(
            r#"{"type":"record","name":"R","fields":[
              {"name":"zeta","type":"string"},
              {"name":"mid","type":{"type":"record","name":"M","fields":[
                 {"name":"y","type":"long"},{"name":"b","type":"long","default":4}]}},
              {"name":"alpha","type":"long","default":1}]}"#,
            &Rules::default(),
        )
        .unwrap();
        for text in [
            r#"{"alpha":2,"extra":0,"mid":{"y":3},"zeta":"z"}"#,
            r#"{"zeta":"z","mid":{"b":5,"y":3,"a":0}}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let doc = Json::parse(text.as_bytes()).unwrap();
            assert_eq!(resolve(&s, &doc).unwrap(), resolve(&s, &value).unwrap());
        }
        for (text, path) in [
            (r#"{"alpha":"x","mid":{"y":3},"zeta":1}"#, "zeta"),
            (
                r#"{"alpha":"x","mid":{"b":"x","y":"x"},"zeta":"z"}"#,
                "mid.y",
            ),
            (r#"{"alpha":"x","mid":{"y":3},"zeta":"z"}"#, "alpha"),
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let doc = Json::parse(text.as_bytes()).unwrap();
            assert_eq!(resolve(&s, &doc).unwrap_err().path, path, "{text}");
            assert_eq!(
                resolve(&s, &value).unwrap_err(),
                resolve(&s, &doc).unwrap_err()
            );
        }
    }
}
