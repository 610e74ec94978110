//! Tier projection: a writer schema and a tier give a **derived schema** (the
//! writer schema with the fields above the tier cut out, or turned into
//! pseudonyms where the field asks for `redact: hash`), and a decoded value
//! gives the Avro body of that tier's record.
//!
//! Both follow one rule, [`treatment`], so the body always matches the
//! derived schema. A field is kept in tier `T` when its own tier is `<= T`;
//! since a container above `T` is removed whole, a field inside a kept
//! container has a path tier `<= T` exactly when its own tier is.

use std::collections::HashSet;
use std::fmt;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use thiserror::Error;

use crate::classify::{FieldClass, Redact};
use crate::record::{Datum, Tier};
use crate::schema::binary::{encode, varint};
use crate::schema::json;
use crate::schema::{CompiledSchema, Field, Kind, NodeId};

/// What happens to a field in one tier's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Carried unchanged.
    Keep,
    /// Replaced by its keyed pseudonym.
    Hash,
    /// Cut out.
    Remove,
}

/// The one rule for fields in tier records and derived schemas.
pub fn treatment(class: FieldClass, tier: Tier) -> Treatment {
    if class.tier <= tier {
        Treatment::Keep
    } else if class.redact == Redact::Hash {
        Treatment::Hash
    } else {
        Treatment::Remove
    }
}

/// [`treatment`] for the outputs in `mask` (bit `i` is `tiers[i]`), as the
/// bits of those that keep the field and those that hash it.
#[inline(always)]
pub(crate) fn treatment_masks(class: FieldClass, tiers: &[Tier], mask: u8) -> (u8, u8) {
    let (mut keep, mut hash) = (0u8, 0u8);
    for (i, t) in tiers.iter().enumerate() {
        if mask & (1 << i) != 0 {
            match treatment(class, *t) {
                Treatment::Keep => keep |= 1 << i,
                Treatment::Hash => hash |= 1 << i,
                Treatment::Remove => {}
            }
        }
    }
    (keep, hash)
}

/// Shortest hash key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// Keyed HMAC-SHA256 pseudonyms: the same value gives the same pseudonym in
/// every event and field, so analytics can count and join without the value.
#[derive(Clone)]
pub struct Hasher {
    keyed: Hmac<Sha256>,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher(<key hidden>)")
    }
}

/// A hash key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the hash key must be at least {MIN_KEY_LEN} bytes")]
pub struct KeyTooShort;

impl Hasher {
    /// A hasher with this secret key.
    ///
    /// # Errors
    /// [`KeyTooShort`] for keys under [`MIN_KEY_LEN`] bytes.
    pub fn new(key: &[u8]) -> Result<Self, KeyTooShort> {
        if key.len() < MIN_KEY_LEN {
            return Err(KeyTooShort);
        }
        Ok(Hasher {
            keyed: Hmac::<Sha256>::new_from_slice(key).map_err(|_| KeyTooShort)?,
        })
    }

    /// The lowercase hex pseudonym of a value.
    pub fn pseudonym(&self, value: &[u8]) -> String {
        let hex = self.pseudonym_hex(value);
        String::from_utf8(hex.to_vec()).expect("hex is ASCII")
    }

    /// The pseudonym as 64 ASCII hex bytes, without allocating.
    pub fn pseudonym_hex(&self, value: &[u8]) -> [u8; 64] {
        let mut mac = self.keyed.clone();
        mac.update(value);
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(mac.finalize().into_bytes()) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
        out
    }
}

/// Each byte's two lowercase hex digits: a pseudonym's 32 bytes in 32
/// lookups (`hex::encode_to_slice`, two nibbles and two bounds checks a
/// byte, took about 150 instructions more a pseudonym).
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [DIGITS[b >> 4], DIGITS[b & 15]];
        b += 1;
    }
    t
};

/// The pseudonyms of one event. The event's `entity_id` is hashed at most
/// once, though the public body, the public key and fields that repeat it
/// (an `actor_id` that is the entity) all need its pseudonym; other values
/// are hashed where they are met (each field once, for every tier).
#[derive(Debug)]
pub struct Pseudonyms<'e> {
    hasher: Option<&'e Hasher>,
    /// `None` until the single pass has read it ([`Pseudonyms::unnamed`]).
    entity_id: Option<&'e [u8]>,
    memo: Option<[u8; 64]>,
}

impl<'e> Pseudonyms<'e> {
    /// The pseudonyms of an event whose `entity_id` is `entity_id`.
    #[must_use]
    pub fn new(hasher: Option<&'e Hasher>, entity_id: &'e [u8]) -> Self {
        Pseudonyms {
            hasher,
            entity_id: Some(entity_id),
            memo: None,
        }
    }

    /// The pseudonyms of an event whose `entity_id` is not read yet (the
    /// single pass meets it in the record): named by
    /// [`Pseudonyms::name_entity`].
    #[must_use]
    pub fn unnamed(hasher: Option<&'e Hasher>) -> Self {
        Pseudonyms {
            hasher,
            entity_id: None,
            memo: None,
        }
    }

    /// Names the event's `entity_id`, once read.
    pub fn name_entity(&mut self, entity_id: &'e [u8]) {
        self.entity_id = Some(entity_id);
    }

    /// The `entity_id`'s pseudonym, if it was computed.
    #[must_use]
    pub fn entity_pseudonym(&self) -> Option<[u8; 64]> {
        self.memo
    }

    /// Whether there is a key to hash with.
    #[must_use]
    pub fn can_hash(&self) -> bool {
        self.hasher.is_some()
    }

    /// Takes the `entity_id`'s pseudonym computed elsewhere (the single
    /// pass, [`crate::schema::pass`]) with the same hasher.
    pub fn remember_entity(&mut self, pseudonym: [u8; 64]) {
        self.memo = Some(pseudonym);
    }

    /// The pseudonym of `value` as 64 ASCII hex bytes.
    ///
    /// # Errors
    /// [`NoHashKey`] without a hasher.
    pub fn of(&mut self, value: &[u8]) -> Result<[u8; 64], NoHashKey> {
        let h = self.hasher.ok_or(NoHashKey)?;
        if self.entity_id != Some(value) {
            return Ok(h.pseudonym_hex(value));
        }
        Ok(*self.memo.get_or_insert_with(|| h.pseudonym_hex(value)))
    }
}

/// The derived schema of `tier` for a writer schema, as JSON.
///
/// Named types keep their full names; a named type whose definition sat in a
/// removed field is defined at its first remaining use.
pub fn derived_schema(schema: &CompiledSchema, tier: Tier) -> Value {
    let mut defined = HashSet::new();
    emit(schema, schema.root(), tier, &mut defined)
}

fn emit(s: &CompiledSchema, id: NodeId, tier: Tier, defined: &mut HashSet<NodeId>) -> Value {
    let node = s.node(id);
    if let Some(full) = &node.fullname {
        if !defined.insert(id) {
            return Value::String(full.clone());
        }
    }
    match &node.kind {
        Kind::Union(branches) => Value::Array(
            branches
                .iter()
                .map(|b| emit(s, *b, tier, defined))
                .collect(),
        ),
        Kind::Array(items) => with(&node.attrs, "items", emit(s, *items, tier, defined)),
        Kind::Map(values) => with(&node.attrs, "values", emit(s, *values, tier, defined)),
        Kind::Record(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let ty = match treatment(f.class, tier) {
                    Treatment::Keep => emit(s, f.node, tier, defined),
                    Treatment::Hash => hashed_type(s, f),
                    Treatment::Remove => continue,
                };
                let mut attrs = f.attrs.clone();
                if treatment(f.class, tier) == Treatment::Hash
                    && attrs.get("default").is_some_and(|d| !d.is_null())
                {
                    attrs.remove("default");
                }
                attrs.insert("type".to_owned(), ty);
                out.push(Value::Object(attrs));
            }
            with(&node.attrs, "fields", Value::Array(out))
        }
        _ => node.attrs.clone(),
    }
}

/// How many fields of the schema a tier's record removes or pseudonymises:
/// the outermost ones (a field inside a removed record is not counted
/// again). A static figure per schema and tier, for the redaction metrics.
pub fn redacted_fields(schema: &CompiledSchema, tier: Tier) -> u32 {
    fn walk(s: &CompiledSchema, id: NodeId, tier: Tier, seen: &mut HashSet<NodeId>) -> u32 {
        if s.node(id).fullname.is_some() && !seen.insert(id) {
            return 0;
        }
        match &s.node(id).kind {
            Kind::Union(bs) => bs.iter().map(|b| walk(s, *b, tier, seen)).sum(),
            Kind::Array(c) | Kind::Map(c) => walk(s, *c, tier, seen),
            Kind::Record(fields) => fields
                .iter()
                .map(|f| match treatment(f.class, tier) {
                    Treatment::Keep => walk(s, f.node, tier, seen),
                    Treatment::Hash | Treatment::Remove => 1,
                })
                .sum(),
            _ => 0,
        }
    }
    walk(schema, schema.root(), tier, &mut HashSet::new())
}

fn with(attrs: &Value, key: &str, child: Value) -> Value {
    let mut o = attrs.as_object().cloned().unwrap_or_else(Map::new);
    o.insert(key.to_owned(), child);
    Value::Object(o)
}

/// A hashed field is a plain string, nullable where the original was.
fn hashed_type(s: &CompiledSchema, f: &Field) -> Value {
    match &s.node(f.node).kind {
        Kind::Union(branches) => Value::Array(
            branches
                .iter()
                .map(|b| match s.node(*b).kind {
                    Kind::Null => Value::String("null".to_owned()),
                    _ => Value::String("string".to_owned()),
                })
                .collect(),
        ),
        _ => Value::String("string".to_owned()),
    }
}

/// A field that must be hashed but no hasher was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the schema asks for hashing and no hash key is configured")]
pub struct NoHashKey;

/// Appends the Avro body of `tier`'s record for a decoded value.
///
/// # Errors
/// [`NoHashKey`] when a field must be hashed for this tier and `hasher` is
/// `None`; nothing useful is left in `out` then.
pub fn encode_projection(
    s: &CompiledSchema,
    datum: &Datum<'_>,
    tier: Tier,
    hasher: Option<&Hasher>,
    out: &mut Vec<u8>,
) -> Result<(), NoHashKey> {
    let mut outs = [std::mem::take(out), Vec::new(), Vec::new()];
    let r = encode_projections(
        s,
        datum,
        &[tier],
        &mut Pseudonyms::new(hasher, &[]),
        &mut outs,
    );
    *out = std::mem::take(&mut outs[0]);
    r
}

/// Appends the Avro bodies of several tiers' records in one walk of the
/// value: `outs[i]` receives the body of `tiers[i]`. Each value is encoded
/// and each pseudonym computed once, then copied to every tier that gets it.
///
/// # Errors
/// [`NoHashKey`] when a field must be hashed for one of the tiers and
/// `pseudonyms` has no hasher.
///
/// # Panics
/// When more than three tiers are asked for.
pub fn encode_projections(
    s: &CompiledSchema,
    datum: &Datum<'_>,
    tiers: &[Tier],
    pseudonyms: &mut Pseudonyms<'_>,
    outs: &mut [Vec<u8>; 3],
) -> Result<(), NoHashKey> {
    let (mut p, mask) = Projector::new(s, tiers, pseudonyms, outs);
    p.node(s.root(), datum, mask)
}

/// Writes the same bytes to every output in `mask` (bit `i` is `outs[i]`).
#[inline(always)]
pub(crate) fn put_masked(outs: &mut [Vec<u8>; 3], mask: u8, bytes: &[u8]) {
    for (i, out) in outs.iter_mut().enumerate() {
        if mask & (1 << i) != 0 {
            out.extend_from_slice(bytes);
        }
    }
}

/// Writes a zig-zag varint `long` to every output in `mask`.
#[inline(always)]
pub(crate) fn put_long_masked(outs: &mut [Vec<u8>; 3], mask: u8, v: i64) {
    if (0..64).contains(&v) {
        // One byte (lengths, union and enum indexes mostly are).
        let byte = (v as u8) << 1;
        for (i, out) in outs.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                out.push(byte);
            }
        }
        return;
    }
    let (buf, n) = varint(v);
    put_masked(outs, mask, &buf[..n]);
}

struct Projector<'p, 'e> {
    s: &'p CompiledSchema,
    tiers: &'p [Tier],
    pseudonyms: &'p mut Pseudonyms<'e>,
    outs: &'p mut [Vec<u8>; 3],
    scratch: Vec<u8>,
}

impl<'p, 'e> Projector<'p, 'e> {
    /// A projector for `tiers` (at most three), and the mask of all its
    /// outputs.
    fn new(
        s: &'p CompiledSchema,
        tiers: &'p [Tier],
        pseudonyms: &'p mut Pseudonyms<'e>,
        outs: &'p mut [Vec<u8>; 3],
    ) -> (Self, u8) {
        assert!(tiers.len() <= 3, "at most three tiers");
        let mask = (1u8 << tiers.len()) - 1;
        let p = Projector {
            s,
            tiers,
            pseudonyms,
            outs,
            scratch: Vec::new(),
        };
        (p, mask)
    }

    /// Writes the same bytes to every output in `mask`.
    fn put(&mut self, mask: u8, bytes: &[u8]) {
        put_masked(self.outs, mask, bytes);
    }

    fn put_long(&mut self, mask: u8, v: i64) {
        put_long_masked(self.outs, mask, v);
    }

    /// Projects `d` (of node `id`) into every output in `mask`, all of which
    /// keep it.
    fn node(&mut self, id: NodeId, d: &Datum<'_>, mask: u8) -> Result<(), NoHashKey> {
        match (&self.s.node(id).kind, d) {
            (Kind::Record(fields), Datum::Record(values)) => {
                for (f, v) in fields.iter().zip(values) {
                    let (keep, hash) = treatment_masks(f.class, self.tiers, mask);
                    if hash != 0 {
                        if !self.pseudonyms.can_hash() {
                            return Err(NoHashKey);
                        }
                        if let Datum::Union(i, _) = v {
                            self.put_long(hash, i64::from(*i));
                        }
                        if let Some(x) = v.as_str() {
                            let hex = self.pseudonyms.of(x.as_bytes())?;
                            self.put_long(hash, hex.len() as i64);
                            self.put(hash, &hex);
                        }
                    }
                    if keep != 0 {
                        self.node(f.node, v, keep)?;
                    }
                }
            }
            (Kind::Union(branches), Datum::Union(i, inner)) => {
                self.put_long(mask, i64::from(*i));
                if let Some(b) = branches.get(*i as usize) {
                    self.node(*b, inner, mask)?;
                }
            }
            (Kind::Array(items), Datum::Array(xs)) => {
                if !xs.is_empty() {
                    self.put_long(mask, xs.len() as i64);
                    for x in xs {
                        self.node(*items, x, mask)?;
                    }
                }
                self.put(mask, &[0]);
            }
            (Kind::Map(values), Datum::Map(entries)) => {
                if !entries.is_empty() {
                    self.put_long(mask, entries.len() as i64);
                    for (k, x) in entries {
                        self.put_long(mask, k.len() as i64);
                        self.put(mask, k.as_bytes());
                        self.node(*values, x, mask)?;
                    }
                }
                self.put(mask, &[0]);
            }
            (_, Datum::Null) => {}
            (_, Datum::String(x)) => {
                self.put_long(mask, x.len() as i64);
                self.put(mask, x.as_bytes());
            }
            (_, Datum::Bytes(x)) => {
                self.put_long(mask, x.len() as i64);
                self.put(mask, x);
            }
            (_, Datum::Long(x)) => self.put_long(mask, *x),
            (_, Datum::Int(x)) => self.put_long(mask, i64::from(*x)),
            (_, Datum::Enum(x)) => self.put_long(mask, i64::from(*x)),
            (_, leaf) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                encode(leaf, &mut scratch);
                self.put(mask, &scratch);
                self.scratch = scratch;
            }
        }
        Ok(())
    }
}

/// Appends the JSON values of several tiers' records in one walk of the
/// value: `outs[i]` receives what `json::write` gives for `tiers[i]`'s
/// projection decoded with its derived schema, byte for byte (keys sorted,
/// a map's last duplicate key winning, pseudonyms as strings), without
/// encoding and decoding Avro in between. The keep/hash/remove decision is
/// [`treatment`], as for the Avro bodies.
///
/// # Errors
/// [`NoHashKey`] when a field must be hashed for one of the tiers and
/// `pseudonyms` has no hasher.
///
/// # Panics
/// When more than three tiers are asked for.
pub fn write_json_projections(
    s: &CompiledSchema,
    datum: &Datum<'_>,
    tiers: &[Tier],
    pseudonyms: &mut Pseudonyms<'_>,
    outs: &mut [Vec<u8>; 3],
) -> Result<(), NoHashKey> {
    let (mut p, mask) = Projector::new(s, tiers, pseudonyms, outs);
    p.json(s.root(), datum, mask)
}

impl Projector<'_, '_> {
    /// The JSON counterpart of [`Projector::node`].
    fn json(&mut self, id: NodeId, d: &Datum<'_>, mask: u8) -> Result<(), NoHashKey> {
        match (&self.s.node(id).kind, d) {
            (Kind::Record(fields), Datum::Record(values)) => {
                self.put(mask, b"{");
                // The outputs that have no field of this record yet.
                let mut empty = mask;
                for i in self.s.sorted_fields(id) {
                    let (Some(f), Some(v)) = (fields.get(i), values.get(i)) else {
                        continue;
                    };
                    let (keep, hash) = treatment_masks(f.class, self.tiers, mask);
                    let here = keep | hash;
                    if here == 0 {
                        continue;
                    }
                    self.put(here & !empty, b",");
                    empty &= !here;
                    let mut key = std::mem::take(&mut self.scratch);
                    key.clear();
                    // Avro names need no escaping.
                    key.push(b'"');
                    key.extend_from_slice(f.name.as_bytes());
                    key.extend_from_slice(b"\":");
                    self.put(here, &key);
                    self.scratch = key;
                    if hash != 0 {
                        if !self.pseudonyms.can_hash() {
                            return Err(NoHashKey);
                        }
                        match v.as_str() {
                            Some(x) => {
                                let hex = self.pseudonyms.of(x.as_bytes())?;
                                self.put(hash, b"\"");
                                self.put(hash, &hex);
                                self.put(hash, b"\"");
                            }
                            None => self.put(hash, b"null"),
                        }
                    }
                    if keep != 0 {
                        self.json(f.node, v, keep)?;
                    }
                }
                self.put(mask, b"}");
            }
            (Kind::Union(branches), Datum::Union(i, inner)) => match branches.get(*i as usize) {
                Some(b) => self.json(*b, inner, mask)?,
                None => self.put(mask, b"null"),
            },
            (Kind::Array(items), Datum::Array(xs)) => {
                self.put(mask, b"[");
                for (n, x) in xs.iter().enumerate() {
                    if n > 0 {
                        self.put(mask, b",");
                    }
                    self.json(*items, x, mask)?;
                }
                self.put(mask, b"]");
            }
            (Kind::Map(values), Datum::Map(entries)) => {
                // Sorted by key; of equal keys the last one, as `json::write`.
                let mut order: Vec<usize> = (0..entries.len()).collect();
                order.sort_by(|a, b| entries[*a].0.cmp(&entries[*b].0));
                self.put(mask, b"{");
                let mut first = true;
                for (n, i) in order.iter().enumerate() {
                    let (k, x) = &entries[*i];
                    if order.get(n + 1).is_some_and(|j| entries[*j].0 == *k) {
                        continue;
                    }
                    let mut key = std::mem::take(&mut self.scratch);
                    key.clear();
                    if !first {
                        key.push(b',');
                    }
                    first = false;
                    json::write_str(&mut key, k);
                    key.push(b':');
                    self.put(mask, &key);
                    self.scratch = key;
                    self.json(*values, x, mask)?;
                }
                self.put(mask, b"}");
            }
            (_, leaf) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                json::write(self.s, id, leaf, &mut scratch);
                self.put(mask, &scratch);
                self.scratch = scratch;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Rules;
    use crate::schema::binary::decode;
    use serde_json::json;

    const TEXT: &str = r#"{"type":"record","name":"E","namespace":"t","fields":[
        {"name":"id","type":"string","privacy":"public"},
        {"name":"email","type":["null","string"],"privacy":"restricted","redact":"hash","default":null},
        {"name":"billing","privacy":"restricted","type":{"type":"record","name":"Addr","fields":[
            {"name":"city","type":"string","privacy":"public"},
            {"name":"street","type":"string","privacy":"restricted"}]}},
        {"name":"shipping","privacy":"internal","type":"Addr"},
        {"name":"note","type":"string"}]}"#;

    fn hasher() -> Hasher {
        Hasher::new(b"0123456789abcdef-test").unwrap()
    }

    #[test]
    fn removed_definition_is_redefined_at_first_remaining_use() {
        let s = CompiledSchema::compile(TEXT, &Rules::default()).unwrap();
        let derived = derived_schema(&s, Tier::Internal);
        let fields: Vec<&str> = derived["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["id", "email", "shipping"]);
        assert_eq!(derived["fields"][2]["type"]["name"], json!("t.Addr"));
        let cities: Vec<&str> = derived["fields"][2]["type"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(cities, ["city"]);
        apache_avro::Schema::parse(&derived).expect("derived schema is valid Avro");
    }

    #[test]
    fn projection_decodes_with_the_derived_schema() {
        let s = CompiledSchema::compile(TEXT, &Rules::default()).unwrap();
        let v = json!({"id": "e1", "email": "a@b.example", "billing": {"city": "Oslo", "street": "Main 1"},
                       "shipping": {"city": "Bergen", "street": "Side 2"}, "note": "unlabelled"});
        let d = crate::schema::json::resolve(&s, &v).unwrap();
        let h = hasher();
        for tier in Tier::ALL {
            let mut body = Vec::new();
            encode_projection(&s, &d, tier, Some(&h), &mut body).unwrap();
            let derived =
                CompiledSchema::compile(&derived_schema(&s, tier).to_string(), &Rules::default())
                    .unwrap();
            let back = crate::schema::json::render(
                &derived,
                derived.root(),
                &decode(&derived, &body).unwrap(),
            );
            let expected = match tier {
                Tier::Public => json!({"id": "e1", "email": h.pseudonym(b"a@b.example")}),
                Tier::Internal => {
                    json!({"id": "e1", "email": h.pseudonym(b"a@b.example"), "shipping": {"city": "Bergen"}})
                }
                Tier::Restricted => v.clone(),
            };
            assert_eq!(back, expected, "tier {tier}");
        }
    }

    #[test]
    fn hashing_without_a_key_is_an_error() {
        let s = CompiledSchema::compile(TEXT, &Rules::default()).unwrap();
        let v = json!({"id": "e1", "email": "a@b.example", "billing": {"city": "c", "street": "s"},
                       "shipping": {"city": "c", "street": "s"}, "note": "n"});
        let d = crate::schema::json::resolve(&s, &v).unwrap();
        assert_eq!(
            encode_projection(&s, &d, Tier::Public, None, &mut Vec::new()),
            Err(NoHashKey)
        );
        assert!(encode_projection(&s, &d, Tier::Restricted, None, &mut Vec::new()).is_ok());
    }

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = hasher();
        let b = Hasher::new(b"another-key-of-16-bytes").unwrap();
        assert_eq!(a.pseudonym(b"x"), a.pseudonym(b"x"));
        assert_ne!(a.pseudonym(b"x"), b.pseudonym(b"x"));
        assert_eq!(a.pseudonym(b"x").len(), 64);
        assert_eq!(Hasher::new(b"short").unwrap_err(), KeyTooShort);
    }

    #[test]
    fn pseudonyms_are_the_lowercase_hex_hmac_sha256_of_the_value() {
        // Python: hmac.new(key, value, hashlib.sha256).hexdigest()
        let all: Vec<u8> = (0..=255).collect();
        for (value, expected) in [
            (
                &b"entity-1"[..],
                "82ebdde252475a6210ad9b6f2781d72d272858f1deb3661155cc94b26d081c15",
            ),
            (
                b"",
                "581a1872a057fa6dfae3c8df2d10a1eb6c13fe980ee98b14e0a7e21c58f8c598",
            ),
            (
                &all[..],
                "1c4be48640c0aff76a5997bd7c546c6ccc55f1577cdcb4ee42f84be1b6e8932a",
            ),
        ] {
            assert_eq!(hasher().pseudonym(value), expected);
        }
    }

    #[test]
    fn an_events_pseudonyms_are_the_hashers_whichever_value_comes_first() {
        let h = hasher();
        for first in [&b"entity-1"[..], b"someone@example.org"] {
            let mut p = Pseudonyms::new(Some(&h), b"entity-1");
            for v in [first, b"entity-1", b"other", b"entity-1", b""] {
                assert_eq!(p.of(v).unwrap(), h.pseudonym_hex(v));
            }
        }
        assert_eq!(Pseudonyms::new(None, b"x").of(b"x"), Err(NoHashKey));
    }
}
