//! The single pass for JSON: a canonical JSON event read against its
//! writer schema and written into the three tiers' JSON values in the same
//! walk, without a parsed document or a [`Datum`] tree in between.
//!
//! It does what [`super::json::resolve`], validation, the present-tier walk
//! and [`crate::project::write_json_projections`] do one after the other,
//! for the common case only: objects whose keys come in ascending order (as
//! the tier values write them), strings without escapes, integers in their
//! plain form. Text without whitespace between its tokens is walked in run
//! mode: each output copies runs of the input and is written only where it
//! differs (a field it drops or hashes, a key it does not know, a missing
//! field, a comma, a number written otherwise), so the restricted value is
//! mostly one copy. Other text is walked in write mode, everything written
//! as it is read. A union's branches are tried in order, and a branch is left
//! for the next one only where `resolve` finds that the value does not fit
//! it ([`Stop::Misfit`]). Anything else is a miss (`None`) and the engine
//! takes the tree path, which decides: a text that is not JSON, a value
//! that validation refuses, a missing field whose default is not `null`,
//! bytes and fixed values, a value that could be a union's tagged form
//! (`{"<branch>": value}`), a field to hash without a key. So the pass
//! never dead-letters anything itself, and what it accepts comes out byte
//! for byte as the tree path writes it: `tests/properties.rs` runs both on
//! the same events, well-formed, anomalous, mutated and edited into the
//! edge cases above.

use std::cmp::Ordering;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde_json::Value;

use super::binary::MAX_DEPTH;
use super::json::{self, is_tag_of};
use super::pass::{
    as_utf8, is_envelope, put_envelope_datum, Leaf, Pass, Read, ALL_TIERS, NO_BRANCH,
};
use super::{CompiledSchema, Envelope, Field, Kind, NameRule, NodeId, PassField};
use crate::project::{put_masked, Hasher, Pseudonyms};
use crate::record::{Datum, Tier};
use crate::validate::{is_utc_instant, is_uuid, is_valid_event_type};

/// What picks a JSON event's schema, read before the schema is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    /// The top-level `event_type`, matching `^[a-z]+\.[a-z_]+$`.
    pub event_type: &'a str,
    /// The top-level `schema_version`, at least 1.
    pub schema_version: u32,
}

/// The `event_type` and `schema_version` a JSON event's schema is looked up
/// with: found by their compact keys (`"event_type":"`, then
/// `"schema_version":` after it, where ascending keys put it) where the
/// text has them, read from its top level otherwise. A guess
/// either way: the engine uses the schema only if the pass then reads the
/// same two values at the top level ([`Head::is_read_in`]), and leaves the
/// event to the tree path otherwise, and when the schema cannot be looked
/// up. `None` when nothing usable is found; the tree path then decides, and
/// gives the rejection of a missing or invalid `event_type` or
/// `schema_version`.
#[must_use]
pub fn head(value: &[u8]) -> Option<Head<'_>> {
    static EVENT_TYPE: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(b"\"event_type\":\""));
    static SCHEMA_VERSION: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(b"\"schema_version\":"));
    let compact = || {
        let at = EVENT_TYPE.find(value)? + EVENT_TYPE.needle().len();
        let n = string_len(value.get(at..)?)?;
        let event_type = as_utf8(&value[at..at + n])?;
        // After `event_type`, where ascending keys put it: the search
        // skips `data`, most of the text.
        let at = at + n + SCHEMA_VERSION.find(&value[at + n..])? + SCHEMA_VERSION.needle().len();
        let digits = value[at..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let version = as_utf8(&value[at..at + digits])?;
        Some((event_type, version.parse::<u32>().ok()?))
    };
    let (event_type, schema_version) = compact().or_else(|| top_level(value))?;
    (is_valid_event_type(event_type) && schema_version >= 1).then_some(Head {
        event_type,
        schema_version,
    })
}

impl Head<'_> {
    /// Whether `pass` read this `event_type` and `schema_version` at the top
    /// level of the event, the values the tree path looks its schema up
    /// with.
    #[must_use]
    pub fn is_read_in(&self, env: &Envelope, pass: &Pass<'_>) -> bool {
        let Datum::Record(values) = &pass.envelope else {
            return false;
        };
        values[env.event_type].as_str() == Some(self.event_type)
            && values[env.schema_version].as_i64() == Some(i64::from(self.schema_version))
    }
}

/// `event_type` and `schema_version` read from the top level of a JSON
/// object whose keys ascend.
fn top_level(value: &[u8]) -> Option<(&str, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut sc = Scan::new(text);
    let (mut event_type, mut schema_version) = (None, None);
    let mut key = sc.open_object()?;
    while let Some(k) = key {
        match k {
            "event_type" => event_type = Some(sc.string()?),
            "schema_version" => {
                let (n, integer) = sc.number()?;
                schema_version = Some(n.parse::<u32>().ok().filter(|_| integer)?);
            }
            _ => sc.skip(1)?,
        }
        key = sc.next_key(k)?;
    }
    Some((event_type?, schema_version?))
}

/// Reads `value` (a JSON object) with `schema`, whose envelope is `env`, and
/// appends each tier's projected JSON value to `outs[tier.index()]`. `None`
/// when the tree path must decide; `outs` then hold partial values, which
/// the caller drops.
pub fn project<'a>(
    schema: &CompiledSchema,
    env: &Envelope,
    value: &'a [u8],
    hasher: Option<&Hasher>,
    outs: &mut [Vec<u8>; 3],
) -> Option<Pass<'a>> {
    let text = as_utf8(value)?;
    let lens = outs.each_ref().map(Vec::len);
    // In run mode first; a text with whitespace between its tokens, which
    // the outputs do not have, is walked again in write mode.
    match walk(schema, env, text, hasher, outs, true) {
        Err(true) => {
            for (out, len) in outs.iter_mut().zip(lens) {
                out.truncate(len);
            }
            walk(schema, env, text, hasher, outs, false).ok()
        }
        walked => walked.ok(),
    }
}

/// [`project`] in run mode (`runs`) or write mode. `Err(spaced)` when the
/// tree path must decide, or in run mode when the text has whitespace
/// between its tokens (`spaced`).
fn walk<'a>(
    schema: &CompiledSchema,
    env: &Envelope,
    text: &'a str,
    hasher: Option<&Hasher>,
    outs: &mut [Vec<u8>; 3],
    runs: bool,
) -> Result<Pass<'a>, bool> {
    let root = schema.root();
    let Kind::Record(fields) = &schema.node(root).kind else {
        return Err(false);
    };
    let mut walk = Walk {
        s: schema,
        sc: Scan::new(text),
        pseudonyms: Pseudonyms::unnamed(hasher),
        outs,
        present: Tier::Public,
        text: "",
        scratch: Vec::new(),
        runs: runs.then_some([0; 3]),
        broken: false,
    };
    let mut values = Vec::new();
    values.resize_with(fields.len(), || Datum::Null);
    let read = walk.record(
        root,
        fields,
        0,
        ALL_TIERS,
        Tier::Public,
        Some((env, &mut values)),
    );
    let spaced = runs && walk.sc.spaced;
    if read.is_err() || spaced {
        return Err(spaced);
    }
    // The rest of each run, up to the root's closing brace.
    let end = walk.sc.pos;
    walk.splice(ALL_TIERS, end, end, b"");
    walk.sc.ws();
    if walk.sc.pos != text.len() || walk.broken {
        return Err(false);
    }
    Ok(Pass {
        envelope: Datum::Record(values),
        present: walk.present,
        entity_pseudonym: walk.pseudonyms.entity_pseudonym(),
    })
}

/// A cursor over a JSON text that reads the part of JSON the pass covers:
/// every method returns `None` (or `false`) at anything else.
#[derive(Clone, Copy)]
struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Where the last object key read starts (its opening quote).
    key_at: usize,
    /// Whether whitespace was skipped.
    spaced: bool,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan {
            text,
            b: text.as_bytes(),
            pos: 0,
            key_at: 0,
            spaced: false,
        }
    }

    /// Skips whitespace. Inline for the usual answer, none: a compact
    /// text has none, and this is asked around every token.
    #[inline(always)]
    fn ws(&mut self) {
        if let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.pos) {
            self.skip_ws();
        }
    }

    #[inline(never)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.pos) {
            self.pos += 1;
        }
        self.spaced = true;
    }

    /// Where the last key read begins with the comma before it, if the
    /// comma is right before it.
    fn sep(&self) -> usize {
        if self.key_at > 0 && self.b[self.key_at - 1] == b',' {
            self.key_at - 1
        } else {
            self.key_at
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    fn byte(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// A string without escapes or control characters; its text.
    fn string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let start = self.pos;
        let n = string_len(self.b.get(start..)?)?;
        self.pos = start + n + 1;
        // Both ends are quotes, ASCII: the slice is on character boundaries.
        self.text.get(start..start + n)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number in JSON's grammar; its text and whether it is an integer
    /// (no fraction, no exponent).
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let mut integer = true;
        if self.eat(b'.') {
            if self.digits() == 0 {
                return None;
            }
            integer = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            integer = false;
        }
        Some((self.text.get(start..self.pos)?, integer))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.b.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// After a key's string: `:` and the whitespace around it.
    fn colon(&mut self) -> Option<()> {
        self.ws();
        self.byte(b':')?;
        self.ws();
        Some(())
    }

    /// `{`, and its first key if it has one (the cursor then at its value).
    fn open_object(&mut self) -> Option<Option<&'a str>> {
        self.ws();
        self.byte(b'{')?;
        self.ws();
        if self.eat(b'}') {
            return Some(None);
        }
        self.key_at = self.pos;
        let k = self.string()?;
        self.colon()?;
        Some(Some(k))
    }

    /// After a value in an object whose last key was `prev`: the next key,
    /// which must come after `prev` (no duplicates, ascending), or `None`
    /// at the closing `}`.
    fn next_key(&mut self, prev: &str) -> Option<Option<&'a str>> {
        let key = self.following_key()?;
        if key.is_some_and(|k| k <= prev) {
            return None;
        }
        Some(key)
    }

    /// After a value in an object: the next key, whatever its order (the
    /// caller checks it), or `None` at the closing `}`.
    fn following_key(&mut self) -> Option<Option<&'a str>> {
        self.following_key_like(None).map(|(k, _)| k)
    }

    /// [`Scan::following_key`] where the key is likely `expect`, a name
    /// with only ASCII letters, digits and `_`: where the text has that
    /// name between quotes, it is the key `string` would read, found
    /// without scanning for the closing quote. Whether it was.
    #[inline(always)]
    fn following_key_like(&mut self, expect: Option<&[u8]>) -> Option<(Option<&'a str>, bool)> {
        self.ws();
        if self.eat(b'}') {
            return Some((None, false));
        }
        self.byte(b',')?;
        self.ws();
        self.key_at = self.pos;
        let (k, hit) = match expect.and_then(|e| self.quoted(e)) {
            Some(k) => (k, true),
            None => (self.string()?, false),
        };
        self.colon()?;
        Some((Some(k), hit))
    }

    /// `"name"` at the cursor, `name` as for [`Scan::following_key_like`]:
    /// its text, the cursor after it.
    #[inline(always)]
    fn quoted(&mut self, name: &[u8]) -> Option<&'a str> {
        let n = name.len();
        let start = self.pos + 1;
        let q = self.b.get(self.pos..start + n + 1)?;
        if q[0] != b'"' || q[n + 1] != b'"' || key_order(&q[1..n + 1], name).is_ne() {
            return None;
        }
        self.pos = start + n + 1;
        self.text.get(start..start + n)
    }

    /// Skips a value, checking it.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' => {
                self.pos += 1;
                self.ws();
                if !self.eat(b'}') {
                    loop {
                        self.string()?;
                        self.colon()?;
                        self.skip(depth + 1)?;
                        self.ws();
                        if self.eat(b',') {
                            self.ws();
                            continue;
                        }
                        self.byte(b'}')?;
                        break;
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                self.ws();
                if !self.eat(b']') {
                    loop {
                        self.skip(depth + 1)?;
                        self.ws();
                        if self.eat(b',') {
                            self.ws();
                            continue;
                        }
                        self.byte(b']')?;
                        break;
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => {
                self.number()?;
            }
        }
        Some(())
    }
}

/// The length of the string that `rest` starts with, up to its closing
/// quote; `None` at a backslash or a control character first, or without a
/// closing quote. Eight bytes at a time: in each word, the lowest byte
/// flagged by any of the three tests is the first such byte (a test can
/// flag a byte wrongly only above one it flags rightly).
fn string_len(rest: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (x.wrapping_sub(ONES * 0x20) & !x);
        let hits = hits & HIGH;
        if hits != 0 {
            let i = at + (hits.trailing_zeros() / 8) as usize;
            return (rest[i] == b'"').then_some(i);
        }
        at += 8;
    }
    for (i, c) in words.remainder().iter().enumerate() {
        match c {
            b'"' => return Some(at + i),
            b'\\' | 0..0x20 => return None,
            _ => {}
        }
    }
    None
}

/// `a.cmp(b)` (byte order, as `str`'s), without a call to `memcmp`: keys
/// are short, and compared once for each field of each event. Eight bytes
/// at a time as big-endian words; once a whole word is left, the last
/// eight bytes (overlapping what was found equal) decide the rest.
#[inline(always)]
fn key_order(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    let word = |s: &[u8], at: usize| u64::from_be_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    if n >= 8 {
        let mut at = 0;
        while at + 8 < n {
            let (x, y) = (word(a, at), word(b, at));
            if x != y {
                return x.cmp(&y);
            }
            at += 8;
        }
        let (x, y) = (word(a, n - 8), word(b, n - 8));
        if x != y {
            return x.cmp(&y);
        }
    } else {
        for i in 0..n {
            if a[i] != b[i] {
                return a[i].cmp(&b[i]);
            }
        }
    }
    a.len().cmp(&b.len())
}

struct Walk<'p, 'a: 'p> {
    s: &'p CompiledSchema,
    sc: Scan<'a>,
    /// The `entity_id`'s pseudonym is computed once, once it is read.
    pseudonyms: Pseudonyms<'p>,
    outs: &'p mut [Vec<u8>; 3],
    present: Tier,
    /// The last string read.
    text: &'a str,
    /// Where a number or a literal is formatted.
    scratch: Vec<u8>,
    /// In run mode, where the run of the input not yet copied to each
    /// output starts: an output is written only where it differs from the
    /// input ([`Walk::splice`]), and copies the runs between. `None` in
    /// write mode, where everything is written as it is read.
    runs: Option<[usize; 3]>,
    /// A run mode splice came before the one before it: a miss.
    broken: bool,
}

/// Why the walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The value does not resolve to the type, exactly where
    /// [`super::json::resolve`] finds that it does not: a union then tries
    /// its next branch, as `resolve` does.
    Misfit,
    /// Anything else: the tree path decides.
    Miss,
}

use Stop::{Misfit, Miss};

type Step<T> = Result<T, Stop>;

/// A scan's `None` (a text the pass does not read) as a [`Stop::Miss`].
trait OrMiss<T> {
    fn or_miss(self) -> Step<T>;
}

impl<T> OrMiss<T> for Option<T> {
    #[inline(always)]
    fn or_miss(self) -> Step<T> {
        self.ok_or(Miss)
    }
}

/// A shape check: [`Stop::Misfit`] unless `fits`.
#[inline(always)]
fn fit(fits: bool) -> Step<()> {
    if fits {
        Ok(())
    } else {
        Err(Misfit)
    }
}

/// The envelope of the root record, and its values as they are read.
type Collect<'e, 'a> = Option<(&'e Envelope, &'e mut Vec<Datum<'a>>)>;

impl<'p, 'a: 'p> Walk<'p, 'a> {
    #[inline(always)]
    fn put(&mut self, mask: u8, bytes: &[u8]) {
        put_masked(self.outs, mask, bytes);
    }

    /// Bytes that come out as they were read: written in write mode, left
    /// in the runs in run mode.
    #[inline(always)]
    fn same(&mut self, mask: u8, bytes: &[u8]) {
        if self.runs.is_none() {
            put_masked(self.outs, mask, bytes);
        }
    }

    /// The bytes read since `start`, as [`Walk::same`].
    #[inline(always)]
    fn copy(&mut self, mask: u8, start: usize) {
        if self.runs.is_none() {
            let b = self.sc.b;
            put_masked(self.outs, mask, &b[start..self.sc.pos]);
        }
    }

    /// Each output in `mask` has `lit` where the input has `from..to`: in
    /// run mode, its run up to `from` is copied, then `lit`, and its run
    /// starts again at `to`; in write mode, `lit` is written.
    ///
    /// Inline for the usual answer, no output (`mask` 0).
    #[inline(always)]
    fn splice(&mut self, mask: u8, from: usize, to: usize, lit: &[u8]) {
        if mask != 0 {
            self.splice_into(mask, from, to, lit);
        }
    }

    /// [`Walk::splice`] into at least one output.
    fn splice_into(&mut self, mask: u8, from: usize, to: usize, lit: &[u8]) {
        let Some(runs) = &mut self.runs else {
            put_masked(self.outs, mask, lit);
            return;
        };
        let b = self.sc.b;
        for (i, (out, run)) in self.outs.iter_mut().zip(runs.iter_mut()).enumerate() {
            if mask & (1 << i) != 0 {
                match b.get(*run..from) {
                    Some(kept) => {
                        out.extend_from_slice(kept);
                        out.extend_from_slice(lit);
                        *run = to;
                    }
                    None => self.broken = true,
                }
            }
        }
    }

    /// A record's object, at depth `depth`: fields in name order, as the
    /// tier values write them, merged with the object's keys (ascending);
    /// keys the schema does not have are skipped. At the root, `env`
    /// collects the envelope's values.
    fn record(
        &mut self,
        id: NodeId,
        fields: &'p [Field],
        depth: usize,
        mask: u8,
        ceiling: Tier,
        mut env: Collect<'_, 'a>,
    ) -> Step<()> {
        let s = self.s;
        fit(self.sc.peek() == Some(b'{'))?;
        let mut key = self.sc.open_object().or_miss()?;
        self.same(mask, b"{");
        // The outputs that have no field of this object yet.
        let mut empty = mask;
        // The key read before `key`. Keys must ascend (the order the tier
        // values are written in; a duplicate does not). Every key read so
        // far is before the name of the field at hand: it was the name of
        // an earlier field, or it was cut out for being before the name of
        // this field or an earlier one. So a key at or after that name is
        // after them all, and only a key before it (one the schema lacks)
        // is compared with `prev`.
        let mut prev: Option<&str> = None;
        // `key` is known to be the name of the field at hand.
        let mut named = false;
        let plan = s.pass_record(id);
        let pass_fields = plan.fields();
        for (j, pf) in pass_fields.iter().enumerate() {
            let i = pf.index as usize;
            let name = plan.name(pf);
            let mut order = Ordering::Greater;
            if named {
                order = Ordering::Equal;
            } else {
                while let Some(k) = key {
                    order = key_order(k.as_bytes(), name);
                    if order != Ordering::Less {
                        break;
                    }
                    key = self.cut_unknown(k, prev, mask, depth)?;
                    prev = Some(k);
                }
            }
            named = false;
            let (keep, hash) = (pf.keep & mask, pf.hash & mask);
            if hash != 0 && !self.pseudonyms.can_hash() {
                return Err(Miss);
            }
            let here = keep | hash;
            let is_entity_id = env.as_ref().is_some_and(|(e, _)| e.entity_id == i);
            // `Equal` only where the loop above compared a key.
            let v = if order == Ordering::Equal {
                let sep = self.sc.sep();
                self.key(here, empty, name, sep);
                let v = self.field(pf, depth, keep, hash, ceiling, is_entity_id)?;
                // Cut out of the outputs that drop it.
                self.splice(mask & !here, sep, self.sc.pos, b"");
                prev = key;
                // Most objects have the next field's key next.
                let next = pass_fields.get(j + 1);
                let expect = next.filter(|f| f.plain_name).map(|f| plan.name(f));
                (key, named) = self.sc.following_key_like(expect).or_miss()?;
                v
            } else {
                let branch = missing(s, &fields[i])?;
                self.missing_key(here, empty, name, key.is_some());
                Read {
                    number: 0,
                    branch,
                    leaf: Leaf::Null,
                }
            };
            empty &= !here;
            if let Some((e, values)) = env.as_mut() {
                if is_envelope(e, i) {
                    put_envelope_datum(&mut values[i], v, self.text).or_miss()?;
                }
            }
        }
        while let Some(k) = key {
            key = self.cut_unknown(k, prev, mask, depth)?;
            prev = Some(k);
        }
        self.same(mask, b"}");
        Ok(())
    }

    /// Cuts the key just read, `k`, one the schema does not have, and its
    /// value out of the outputs in `mask`; the key after it. A miss where
    /// `k` does not come after `prev`, the key before it.
    fn cut_unknown(
        &mut self,
        k: &str,
        prev: Option<&str>,
        mask: u8,
        depth: usize,
    ) -> Step<Option<&'a str>> {
        if prev.is_some_and(|p| k <= p) {
            return Err(Miss);
        }
        let sep = self.sc.sep();
        self.sc.skip(depth + 1).or_miss()?;
        self.splice(mask, sep, self.sc.pos, b"");
        self.sc.following_key().or_miss()
    }

    /// The key just read, `"name":`, in the outputs in `here`, after a
    /// comma in those that are not `empty`. In write mode it is copied from
    /// the input, with the comma before it, where it is written there
    /// without spaces. In run mode only the comma can differ: the input has
    /// one unless the key is its object's first. `sep`: where the key
    /// begins with the comma before it ([`Scan::sep`]).
    fn key(&mut self, here: u8, empty: u8, name: &[u8], sep: usize) {
        let (b, at, end) = (self.sc.b, self.sc.key_at, self.sc.pos);
        let comma = here & !empty;
        if self.runs.is_some() {
            if sep < at {
                self.splice(here & empty, sep, at, b"");
            } else {
                self.splice(comma, at, at, b",");
            }
            return;
        }
        if end - at == name.len() + 3 {
            if comma != 0 && at > 0 && b[at - 1] == b',' {
                self.put(comma, &b[at - 1..end]);
                self.put(here & empty, &b[at..end]);
            } else {
                self.put(comma, b",");
                self.put(here, &b[at..end]);
            }
        } else {
            self.put(comma, b",");
            self.put(here, b"\"");
            self.put(here, name);
            self.put(here, b"\":");
        }
    }

    /// The key of a field the object does not have and its `null` value, in
    /// the outputs in `here`, after a comma in those that are not `empty`.
    /// In run mode they go where the input has the next key (`before_key`),
    /// with the comma before it, or its object's closing brace.
    fn missing_key(&mut self, here: u8, empty: u8, name: &[u8], before_key: bool) {
        let comma = here & !empty;
        if self.runs.is_none() {
            self.put(comma, b",");
            self.put(here, b"\"");
            self.put(here, name);
            self.put(here, b"\":null");
            return;
        }
        let at = if before_key {
            self.sc.sep()
        } else {
            self.sc.pos - 1
        };
        let mut lit = std::mem::take(&mut self.scratch);
        for first in [true, false] {
            lit.clear();
            if !first {
                lit.push(b',');
            }
            lit.push(b'"');
            lit.extend_from_slice(name);
            lit.extend_from_slice(b"\":null");
            self.splice(if first { here & empty } else { comma }, at, at, &lit);
        }
        self.scratch = lit;
    }

    /// A field's value: read into the outputs in `keep`, pseudonymised into
    /// those in `hash`, checked against its name's rule. `ceiling`: the
    /// highest label on the way from the root.
    fn field(
        &mut self,
        f: &PassField,
        depth: usize,
        keep: u8,
        hash: u8,
        ceiling: Tier,
        is_entity_id: bool,
    ) -> Step<Read> {
        let t = ceiling.max(f.tier);
        let start = self.sc.pos;
        let v = self.value(f.node as NodeId, depth + 1, keep, t)?;
        let broken = match f.rule {
            NameRule::Cents | NameRule::Count => v.as_i64().is_some_and(|x| x < 0),
            NameRule::Instant => v.leaf == Leaf::Str && !is_utc_instant(self.text),
            _ => false,
        };
        if broken {
            // Resolved, then refused by validation: the tree path's answer.
            return Err(Miss);
        }
        if v.leaf != Leaf::Null {
            self.present = self.present.max(t);
        }
        if is_entity_id && v.leaf == Leaf::Str {
            self.pseudonyms.name_entity(self.text.as_bytes());
        }
        if hash != 0 {
            let end = self.sc.pos;
            if v.leaf == Leaf::Str {
                let hex = self.pseudonyms.of(self.text.as_bytes()).map_err(|_| Miss)?;
                let mut quoted = [b'"'; 66];
                quoted[1..65].copy_from_slice(&hex);
                self.splice(hash, start, end, &quoted);
            } else {
                self.splice(hash, start, end, b"null");
            }
        }
        Ok(v)
    }

    /// One value of node `id`, read, checked and written to the outputs in
    /// `mask`.
    fn value(&mut self, id: NodeId, depth: usize, mask: u8, ceiling: Tier) -> Step<Read> {
        if depth > MAX_DEPTH {
            return Err(Miss);
        }
        let s = self.s;
        let start = self.sc.pos;
        let c = self.sc.peek().or_miss()?;
        let number_ahead = c == b'-' || c.is_ascii_digit();
        let mut number = 0;
        let leaf = match &s.node(id).kind {
            Kind::Null => {
                fit(c == b'n')?;
                self.sc.literal(b"null").or_miss()?;
                self.copy(mask, start);
                Leaf::Null
            }
            Kind::Boolean => {
                fit(c == b't' || c == b'f')?;
                let word: &[u8] = if c == b't' { b"true" } else { b"false" };
                self.sc.literal(word).or_miss()?;
                self.copy(mask, start);
                Leaf::Other
            }
            kind @ (Kind::Int | Kind::Long) => {
                fit(number_ahead)?;
                let (text, integer) = self.sc.number().or_miss()?;
                // A fraction or an exponent is a float to the tree path's
                // parser, not an integer.
                fit(integer)?;
                // The plain form only: `-0` is written back as `0`.
                if text == "-0" {
                    return Err(Miss);
                }
                let l: i64 = text.parse().map_err(|_| Misfit)?;
                let int = matches!(kind, Kind::Int);
                if int {
                    fit(i32::try_from(l).is_ok())?;
                }
                self.copy(mask, start);
                number = l;
                if int {
                    Leaf::Int
                } else {
                    Leaf::Long
                }
            }
            kind @ (Kind::Float | Kind::Double) => {
                fit(number_ahead)?;
                let (text, _) = self.sc.number().or_miss()?;
                // Parsed as the tree path's parser parses it.
                let f: f64 = serde_json::from_str(text).map_err(|_| Miss)?;
                if !f.is_finite() {
                    return Err(Miss);
                }
                let mut w = std::mem::take(&mut self.scratch);
                w.clear();
                json::number(
                    &mut w,
                    if matches!(kind, Kind::Float) {
                        f64::from(f as f32)
                    } else {
                        f
                    },
                );
                // In run mode only a number written otherwise is spliced.
                if self.runs.is_none() || w != text.as_bytes() {
                    self.splice(mask, start, self.sc.pos, &w);
                }
                self.scratch = w;
                Leaf::Other
            }
            kind @ (Kind::String | Kind::Uuid) => {
                fit(c == b'"')?;
                let x = self.sc.string().or_miss()?;
                if matches!(kind, Kind::Uuid) && !is_uuid(x) {
                    return Err(Miss);
                }
                self.copy(mask, start);
                self.text = x;
                Leaf::Str
            }
            Kind::Enum(symbols) => {
                fit(c == b'"')?;
                let x = self.sc.string().or_miss()?;
                // Compared as keys are, without a call to `memcmp`.
                number = symbols
                    .iter()
                    .position(|y| {
                        y.len() == x.len() && key_order(y.as_bytes(), x.as_bytes()).is_eq()
                    })
                    .ok_or(Misfit)? as i64;
                self.copy(mask, start);
                Leaf::Enum
            }
            Kind::Bytes | Kind::Fixed(_) => {
                fit(c == b'"')?;
                return Err(Miss);
            }
            Kind::Array(items) => {
                fit(c == b'[')?;
                self.sc.byte(b'[').or_miss()?;
                self.sc.ws();
                self.same(mask, b"[");
                if !self.sc.eat(b']') {
                    loop {
                        self.value(*items, depth + 1, mask, ceiling)?;
                        self.sc.ws();
                        if self.sc.eat(b',') {
                            self.sc.ws();
                            self.same(mask, b",");
                            continue;
                        }
                        self.sc.byte(b']').or_miss()?;
                        break;
                    }
                }
                self.same(mask, b"]");
                Leaf::Other
            }
            Kind::Map(values) => {
                fit(c == b'{')?;
                self.sc.byte(b'{').or_miss()?;
                self.sc.ws();
                self.same(mask, b"{");
                let mut prev: Option<&str> = None;
                if !self.sc.eat(b'}') {
                    loop {
                        let at = self.sc.pos;
                        let k = self.sc.string().or_miss()?;
                        // Ascending, as the tree path writes a map's keys.
                        if prev.is_some_and(|p| p >= k) {
                            return Err(Miss);
                        }
                        if prev.is_some() {
                            self.same(mask, b",");
                        }
                        prev = Some(k);
                        self.copy(mask, at);
                        self.same(mask, b":");
                        self.sc.colon().or_miss()?;
                        self.value(*values, depth + 1, mask, ceiling)?;
                        self.sc.ws();
                        if self.sc.eat(b',') {
                            self.sc.ws();
                            continue;
                        }
                        self.sc.byte(b'}').or_miss()?;
                        break;
                    }
                }
                self.same(mask, b"}");
                Leaf::Other
            }
            Kind::Union(branches) => return self.union(branches, depth, mask, ceiling),
            Kind::Record(fields) => {
                self.record(id, fields, depth, mask, ceiling, None)?;
                Leaf::Other
            }
        };
        Ok(Read::leaf(leaf, number))
    }

    /// A union's value: its branches tried in order, the first that the
    /// value resolves to taken, as [`super::json::resolve`] takes it.
    fn union(&mut self, branches: &[NodeId], depth: usize, mask: u8, ceiling: Tier) -> Step<Read> {
        if self.maybe_tagged(branches, depth) {
            return Err(Miss);
        }
        let (sc, present, text, runs) = (self.sc, self.present, self.text, self.runs);
        let lens = self.outs.each_ref().map(Vec::len);
        for (i, b) in branches.iter().enumerate() {
            match self.value(*b, depth + 1, mask, ceiling) {
                Ok(inner) => {
                    let branch = u32::try_from(i)
                        .ok()
                        .filter(|b| *b != NO_BRANCH)
                        .or_miss()?;
                    return Ok(Read { branch, ..inner });
                }
                Err(Miss) => return Err(Miss),
                Err(Misfit) => {
                    // What the branch wrote and read is undone.
                    self.sc = sc;
                    self.present = present;
                    self.text = text;
                    self.runs = runs;
                    for (out, len) in self.outs.iter_mut().zip(lens) {
                        out.truncate(len);
                    }
                }
            }
        }
        Err(Misfit)
    }

    /// Whether the value ahead is an object of one entry whose key names one
    /// of `branches` that is not a map: the tree path reads it as the Avro
    /// JSON encoding's `{"<branch>": value}`, so the pass leaves it alone.
    fn maybe_tagged(&self, branches: &[NodeId], depth: usize) -> bool {
        if self.sc.peek() != Some(b'{') {
            return false;
        }
        let mut ahead = self.sc;
        let Some(first) = ahead.open_object() else {
            return true;
        };
        let Some(k) = first else { return false };
        if ahead.skip(depth + 1).is_none() {
            return true;
        }
        ahead.ws();
        if ahead.peek() != Some(b'}') {
            return false;
        }
        branches.iter().any(|b| is_tag_of(self.s, *b, k))
    }
}

/// A field the object does not have: with a `null` default, the union
/// branch it reads as ([`NO_BRANCH`] for a `null` field, 0 for a union
/// whose first branch is `null`). A [`Stop::Misfit`] without a default, as
/// for [`super::json::resolve`]; any other default is resolved by the tree
/// path.
fn missing(s: &CompiledSchema, f: &Field) -> Step<u32> {
    match f.attrs.get("default") {
        None => return Err(Misfit),
        Some(Value::Null) => {}
        Some(_) => return Err(Miss),
    }
    match &s.node(f.node).kind {
        Kind::Null => Ok(NO_BRANCH),
        Kind::Union(branches)
            if branches
                .first()
                .is_some_and(|b| matches!(s.node(*b).kind, Kind::Null)) =>
        {
            Ok(0)
        }
        _ => Err(Miss),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time scan finds what a byte-by-byte one finds, for
    /// every position of a quote, a backslash or a control character among
    /// ASCII, multi-byte and high bytes.
    #[test]
    fn string_len_is_the_byte_by_byte_answer() {
        fn plain(rest: &[u8]) -> Option<usize> {
            for (i, c) in rest.iter().enumerate() {
                match c {
                    b'"' => return Some(i),
                    b'\\' | 0..0x20 => return None,
                    _ => {}
                }
            }
            None
        }
        let fillers: [&[u8]; 5] = [b"a", "é".as_bytes(), "€".as_bytes(), b"\x7f", b"\xff\x80"];
        let specials: [&[u8]; 6] = [b"\"", b"\\", b"\x00", b"\x1f", b"\n", b" "];
        for filler in fillers {
            for len in 0..40 {
                let base: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
                assert_eq!(string_len(&base), plain(&base));
                for special in specials {
                    for at in 0..=len {
                        let mut s = base.clone();
                        s.splice(at..at, special.iter().copied());
                        s.extend_from_slice(b"\"tail");
                        assert_eq!(string_len(&s), plain(&s), "{s:?}");
                    }
                }
            }
        }
    }

    /// A key read where the next field's name is expected reads as any key
    /// does: the same key, the cursor at the same place, a miss where the
    /// plain read misses; and it says it was the name expected only where
    /// it was. After a value, the texts are the rest of an object.
    #[test]
    fn a_key_expected_reads_as_any_key() {
        let texts = [
            r#","amount":1"#,
            r#","amount_cents":1"#,
            r#","amoun":1"#,
            r#","amounT":1"#,
            r#","":1"#,
            r#","amount" :1"#,
            r#" , "amount":1"#,
            r#","am\u006funt":1"#,
            r#","amount"#,
            r#","amount":"#,
            r#","amount""#,
            "}",
            r#""amount":1"#,
        ];
        for text in texts {
            for expect in ["amount", "amount_cents", "a", "b"] {
                let mut plain = Scan::new(text);
                let mut like = Scan::new(text);
                let read = plain.following_key();
                let got = like.following_key_like(Some(expect.as_bytes()));
                assert_eq!(got.map(|(k, _)| k), read, "{text} {expect}");
                assert_eq!(like.pos, plain.pos, "{text} {expect}");
                assert_eq!(like.key_at, plain.key_at, "{text} {expect}");
                assert_eq!(like.spaced, plain.spaced, "{text} {expect}");
                let hit = got.is_some_and(|(_, hit)| hit);
                assert_eq!(hit, read == Some(Some(expect)), "{text} {expect}");
            }
        }
    }

    /// The word-at-a-time key comparison orders as `cmp` does, for every
    /// length pair up to 20 and a first difference at every position, up
    /// or down, with the bytes after it all lower or all higher.
    #[test]
    fn key_order_is_cmp() {
        for la in 0..=20usize {
            for lb in 0..=20usize {
                let a: Vec<u8> = (0..la).map(|i| b'a' + (i % 26) as u8).collect();
                let b: Vec<u8> = (0..lb).map(|i| b'a' + (i % 26) as u8).collect();
                assert_eq!(key_order(&a, &b), a.cmp(&b), "{a:?} {b:?}");
                for at in 0..la.min(lb) {
                    // The first difference decides, whatever the bytes
                    // after it say.
                    for (d, rest) in [(1u8, 0u8), (0x80, 0), (0xff, 0xff), (0x7f, 0xff)] {
                        let mut c = b.clone();
                        c[at] = c[at].wrapping_add(d);
                        c[at + 1..].fill(rest);
                        assert_eq!(key_order(&a, &c), a.cmp(&c), "{a:?} {c:?}");
                        assert_eq!(key_order(&c, &a), c.cmp(&a), "{c:?} {a:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn head_reads_compact_and_spaced_text() {
        let compact =
            br#"{"a":{"event_type":"x.y"},"event_type":"user.created","schema_version":2}"#;
        // The compact search finds the nested key first: a guess the
        // engine checks against what the pass reads at the top level.
        assert_eq!(head(compact).map(|h| h.event_type), Some("x.y"));
        let spaced = br#"{ "event_type" : "user.created", "schema_version" : 2 }"#;
        assert_eq!(
            head(spaced),
            Some(Head {
                event_type: "user.created",
                schema_version: 2
            })
        );
        assert_eq!(
            head(br#"{"event_type":"user.created","schema_version":0}"#),
            None
        );
        assert_eq!(
            head(br#"{"event_type":"User.created","schema_version":1}"#),
            None
        );
        // `schema_version` is looked for after `event_type`, where
        // ascending keys put it; keys out of that order are for the tree
        // path (the pass would not read them either).
        assert_eq!(
            head(br#"{"schema_version":2,"event_type":"user.created"}"#),
            None
        );
        assert_eq!(
            head(
                br#"{"data":{"schema_version":9},"event_type":"user.created","schema_version":2}"#
            )
            .map(|h| h.schema_version),
            Some(2)
        );
    }
}
