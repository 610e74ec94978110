//! Realistic sample events, generated from the schemas in `avro/`.
//!
//! Values follow the field names (an `email` looks like an e-mail address, a
//! `*_cents` is a positive amount, a `*_at` an ISO 8601 UTC instant), entity
//! versions advance per entity, and `privacy_tier` declares what the event
//! really holds. With anomalies on, about one record in eight is a
//! duplicate, a stale version, a gap, two versions of an entity swapped in
//! transit (v + 2 before v + 1: a gap that `on_gap: hold` puts back in
//! order), a declared-tier mismatch or an invalid record of some kind, so a
//! replay shows every behaviour. Deterministic for a seed.

use std::borrow::Cow;

use serde_json::Value;

use crate::classify::Rules;
use crate::record::{Datum, Tier};
use crate::registry::file::FileRegistry;
use crate::route::put_frame_header;
use crate::schema::{binary, json, max_present_tier, CompiledSchema, Kind, NodeId};

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON envelope per line.
    Jsonl,
    /// Confluent-framed Avro, each record preceded by its length (u32, big-endian).
    Framed,
}

/// Generator settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Seed of the pseudo-random sequence.
    pub seed: u64,
    /// Entities per entity type.
    pub entities: usize,
    /// Mix in duplicates, stale versions, gaps, swapped versions,
    /// mismatches and invalid records.
    pub anomalies: bool,
    /// Output format.
    pub format: Format,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 7,
            entities: 40,
            anomalies: true,
            format: Format::Jsonl,
        }
    }
}

struct EventType {
    schema: CompiledSchema,
    id: u32,
    domain: String,
    event_type: String,
}

/// An endless source of sample records.
#[derive(Debug)]
pub struct Generator {
    types: Vec<EventTypeDebug>,
    rng: fastrand::Rng,
    opts: Options,
    versions: Vec<Vec<i64>>,
    history: Vec<(usize, Vec<u8>)>,
    /// The record a swap put off: the next one out.
    swapped: Option<Vec<u8>>,
    clock: i64,
    n: u64,
}

/// Wrapper so the generator can derive `Debug` without printing schemas.
struct EventTypeDebug(EventType);

impl std::fmt::Debug for EventTypeDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.event_type)
    }
}

const DOMAINS: [&str; 7] = [
    "user",
    "supplier",
    "community",
    "product",
    "promotion",
    "post",
    "order",
];
const FIRST: [&str; 12] = [
    "Amara", "Bjorn", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jonas", "Keiko",
    "Luca",
];
const LAST: [&str; 10] = [
    "Okafor",
    "Lindqvist",
    "Wang",
    "Haddad",
    "Novak",
    "Silva",
    "Tanaka",
    "Moreau",
    "Kowalski",
    "Rossi",
];
const CITIES: [&str; 8] = [
    "Lisbon", "Oslo", "Nairobi", "Osaka", "Lyon", "Krakow", "Austin", "Porto",
];
const WORDS: [&str; 16] = [
    "ceramic", "mug", "summer", "sale", "handmade", "linen", "tote", "espresso", "bundle",
    "vintage", "lamp", "organic", "tea", "wool", "scarf", "garden",
];
const PRODUCERS: [&str; 3] = ["social-commerce-api", "user-service", "order-service"];

impl Generator {
    /// A generator over every event type of a loaded `avro/` folder.
    ///
    /// # Panics
    /// When a schema in the folder does not compile; the folder is checked
    /// by the tests and by `check`.
    pub fn new(reg: &FileRegistry, opts: Options) -> Self {
        let types: Vec<EventTypeDebug> = reg
            .events
            .iter()
            .map(|e| {
                EventTypeDebug(EventType {
                    schema: CompiledSchema::compile(&e.text, &Rules::default())
                        .expect("avro/ schemas compile"),
                    id: e.id,
                    domain: e
                        .event_type
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    event_type: e.event_type.clone(),
                })
            })
            .collect();
        let versions = DOMAINS
            .iter()
            .map(|_| vec![0; opts.entities.max(1)])
            .collect();
        Generator {
            types,
            rng: fastrand::Rng::with_seed(opts.seed),
            opts,
            versions,
            history: Vec::new(),
            swapped: None,
            clock: 1_777_000_000,
            n: 0,
        }
    }

    fn entity_id(domain: usize, n: usize) -> String {
        format!(
            "65{:06x}{:016x}",
            domain as u32 * 0x1111,
            n as u64 * 0x9e37_79b9 + 1
        )
    }

    fn uuid(&mut self) -> String {
        uuid_from(&mut self.rng)
    }

    /// The index in [`DOMAINS`] of an event type's domain.
    fn domain_of(&self, t: usize) -> usize {
        DOMAINS
            .iter()
            .position(|d| *d == self.types[t].0.domain)
            .unwrap_or(0)
    }

    /// An event type and an entity of its domain, at random.
    fn pick(&mut self) -> (usize, usize) {
        let t = self.rng.usize(..self.types.len());
        let domain = self.domain_of(t);
        (t, self.rng.usize(..self.versions[domain].len()))
    }

    /// The next valid event: its type's index and value.
    fn valid(&mut self, gap: i64) -> (usize, Datum<'static>) {
        let (t, entity) = self.pick();
        (t, self.valid_for(t, entity, gap))
    }

    /// The next valid event of type `t` for entity `entity` of its domain,
    /// `gap` versions past the next one.
    fn valid_for(&mut self, t: usize, entity: usize, gap: i64) -> Datum<'static> {
        let domain = self.domain_of(t);
        self.versions[domain][entity] += 1 + gap;
        let version = self.versions[domain][entity];
        self.clock += 1 + self.rng.i64(0..30);
        let mut datum = {
            let s = &self.types[t].0.schema;
            value(&mut self.rng, self.clock, s, s.root(), "", 0)
        };
        let (id, eid, trace, corr) = (
            self.uuid(),
            Self::entity_id(domain, entity),
            self.uuid(),
            self.uuid(),
        );
        let producer = PRODUCERS[self.rng.usize(..PRODUCERS.len())];
        let occurred = instant(self.clock, 0);
        let et = &self.types[t].0;
        let s = &et.schema;
        let env = *s.envelope().expect("avro/ schemas are envelopes");
        let Datum::Record(values) = &mut datum else {
            unreachable!()
        };
        values[env.event_id] = Datum::String(Cow::Owned(id));
        values[env.event_type] = Datum::String(Cow::Owned(et.event_type.clone()));
        values[env.entity_type] = Datum::Enum(domain as u32);
        values[env.entity_id] = Datum::String(Cow::Owned(eid));
        values[env.entity_version] = Datum::Long(version);
        values[env.occurred_at] = Datum::String(Cow::Owned(occurred));
        values[env.schema_version] = Datum::Int(1);
        if let Some(i) = env.trace_id {
            values[i] = Datum::Union(1, Box::new(Datum::String(Cow::Owned(trace))));
        }
        if let Some(i) = env.correlation_id {
            values[i] = if version % 3 == 0 {
                Datum::Union(0, Box::new(Datum::Null))
            } else {
                Datum::Union(1, Box::new(Datum::String(Cow::Owned(corr))))
            };
        }
        if let Some(i) = s.root_fields().iter().position(|f| f.name == "producer") {
            values[i] = Datum::String(Cow::Borrowed(producer));
        }
        let (tier, _) = max_present_tier(s, &datum);
        let Datum::Record(values) = &mut datum else {
            unreachable!()
        };
        values[env.privacy_tier] = Datum::Enum(tier.index() as u32);
        datum
    }

    fn encode(&self, t: usize, datum: &Datum<'_>) -> Vec<u8> {
        let et = &self.types[t].0;
        match self.opts.format {
            Format::Jsonl => serde_json::to_vec(&json::render(&et.schema, et.schema.root(), datum))
                .expect("JSON serialises"),
            Format::Framed => {
                let mut out = Vec::with_capacity(512);
                put_frame_header(&mut out, et.id);
                binary::encode(datum, &mut out);
                out
            }
        }
    }

    /// The next record's value.
    pub fn next_record(&mut self) -> Vec<u8> {
        self.n += 1;
        if let Some(bytes) = self.swapped.take() {
            return bytes;
        }
        if !self.opts.anomalies || self.history.len() < 20 || self.rng.u8(..8) != 0 {
            return self.emit_valid(0);
        }
        match self.rng.u8(..13) {
            // A replay of an earlier event: a duplicate if nothing newer
            // happened to that entity since, stale otherwise.
            0..=2 => {
                let i = self
                    .rng
                    .usize(self.history.len().saturating_sub(30)..self.history.len());
                self.history[i].1.clone()
            }
            3 | 4 => {
                let gap = self.rng.i64(1..4);
                self.emit_valid(gap)
            }
            5 => {
                // Declares public while holding more.
                let (t, mut d) = self.valid(0);
                let env = *self.types[t].0.schema.envelope().expect("envelope");
                if let Datum::Record(v) = &mut d {
                    v[env.privacy_tier] = Datum::Enum(Tier::Public.index() as u32);
                }
                self.encode(t, &d)
            }
            12 => self.swap(),
            k => self.invalid(k),
        }
    }

    fn emit_valid(&mut self, gap: i64) -> Vec<u8> {
        let (t, d) = self.valid(gap);
        let bytes = self.encode(t, &d);
        self.remember(t, &bytes);
        bytes
    }

    /// Two consecutive versions of one entity, swapped as a producer's
    /// retry or a second producer instance may swap them: version v + 2
    /// now, v + 1 as the next record. Arriving first, v + 2 is a gap; held
    /// (`on_gap: hold`), it follows v + 1 in order.
    fn swap(&mut self) -> Vec<u8> {
        let (t, entity) = self.pick();
        let d = self.valid_for(t, entity, 0);
        let domain = self.domain_of(t);
        let same_domain: Vec<usize> = (0..self.types.len())
            .filter(|u| self.domain_of(*u) == domain)
            .collect();
        let t2 = same_domain[self.rng.usize(..same_domain.len())];
        let d2 = self.valid_for(t2, entity, 0);
        let (first, second) = (self.encode(t, &d), self.encode(t2, &d2));
        self.remember(t2, &second);
        self.remember(t, &first);
        self.swapped = Some(first);
        second
    }

    /// Keeps a valid record for later duplicates and stale versions.
    fn remember(&mut self, t: usize, bytes: &[u8]) {
        self.history.push((t, bytes.to_vec()));
        if self.history.len() > 256 {
            self.history.drain(..128);
        }
    }

    fn invalid(&mut self, k: u8) -> Vec<u8> {
        let (t, d) = self.valid(0);
        // Undo the version bump: this event will be rejected.
        let et = &self.types[t].0;
        let env = *et.schema.envelope().expect("envelope");
        let Datum::Record(values) = &d else {
            unreachable!()
        };
        let domain = values[env.entity_type].clone();
        if let (Datum::Enum(dom), Some(eid)) = (domain, values[env.entity_id].as_str()) {
            if let Some(slot) = (0..self.versions[dom as usize].len())
                .find(|i| Self::entity_id(dom as usize, *i) == eid)
            {
                self.versions[dom as usize][slot] -= 1;
            }
        }
        if self.opts.format == Format::Framed {
            let mut good = self.encode(t, &d);
            return match k % 4 {
                0 => good[..3].to_vec(),
                1 => {
                    good[1..5].copy_from_slice(&999_999u32.to_be_bytes());
                    good
                }
                2 => {
                    good[0] = 7;
                    good
                }
                _ => {
                    good.truncate(good.len() / 2);
                    good
                }
            };
        }
        let mut v: Value = json::render(&et.schema, et.schema.root(), &d);
        let data_field = |v: &mut Value| {
            v["data"]
                .as_object_mut()
                .map(std::mem::take)
                .unwrap_or_default()
        };
        match k {
            6 => v["event_type"] = Value::from("User.Teleported"),
            7 => v["event_type"] = Value::from(format!("{}.teleported", et.domain)),
            8 => v["entity_version"] = Value::from(0),
            9 => v["occurred_at"] = Value::from("2026-05-01T12:00:00+02:00"),
            10 => {
                // A negative amount where the payload has one, else a missing payload.
                let mut data = data_field(&mut v);
                match data.keys().find(|k| k.ends_with("_cents")).cloned() {
                    Some(k) => {
                        data.insert(k, Value::from(-100));
                    }
                    None => {
                        data.clear();
                    }
                }
                v["data"] = Value::Object(data);
            }
            _ => {
                let mut text = serde_json::to_vec(&v).expect("JSON");
                text.truncate(text.len() / 2);
                return text;
            }
        }
        serde_json::to_vec(&v).expect("JSON")
    }
}

fn value(
    r: &mut fastrand::Rng,
    clock: i64,
    s: &CompiledSchema,
    id: NodeId,
    name: &str,
    depth: usize,
) -> Datum<'static> {
    let owned = |x: String| Datum::String(Cow::Owned(x));
    match &s.node(id).kind {
        Kind::Null => Datum::Null,
        Kind::Boolean => Datum::Boolean(r.bool()),
        Kind::Int if name.ends_with("_count") => Datum::Int(r.i32(0..500)),
        Kind::Long if name.ends_with("_count") => Datum::Long(r.i64(0..5000)),
        Kind::Long if name.ends_with("_cents") => Datum::Long(r.i64(99..250_000)),
        Kind::Int => Datum::Int(r.i32(0..1000)),
        Kind::Long => Datum::Long(r.i64(0..100_000)),
        Kind::Float => Datum::Float(r.f32() * 100.0),
        Kind::Double => Datum::Double((r.f64() * 10_000.0).round() / 100.0),
        Kind::Bytes => Datum::Bytes(Cow::Owned((0..8).map(|_| r.u8(..)).collect())),
        Kind::Fixed(n) => Datum::Fixed(Cow::Owned((0..*n).map(|_| r.u8(..)).collect())),
        Kind::Uuid => owned(uuid_from(r)),
        Kind::String => owned(text_for(r, clock, name)),
        Kind::Enum(symbols) => Datum::Enum(r.u32(..symbols.len() as u32)),
        Kind::Array(items) => {
            let n = if depth > 3 { 0 } else { r.usize(1..=3) };
            Datum::Array(
                (0..n)
                    .map(|_| value(r, clock, s, *items, name, depth + 1))
                    .collect(),
            )
        }
        Kind::Map(values) => {
            let n = if depth > 3 { 0 } else { r.usize(1..=2) };
            Datum::Map(
                (0..n)
                    .map(|i| {
                        let k = Cow::Owned(format!("{}_{i}", WORDS[i % WORDS.len()]));
                        (k, value(r, clock, s, *values, name, depth + 1))
                    })
                    .collect(),
            )
        }
        Kind::Union(branches) => {
            let non_null: Vec<usize> = (0..branches.len())
                .filter(|i| s.node(branches[*i]).kind != Kind::Null)
                .collect();
            let pick = if non_null.is_empty() || (non_null.len() < branches.len() && r.u8(..4) == 0)
            {
                (0..branches.len())
                    .find(|i| !non_null.contains(i))
                    .unwrap_or(0)
            } else {
                non_null[r.usize(..non_null.len())]
            };
            Datum::Union(
                pick as u32,
                Box::new(value(r, clock, s, branches[pick], name, depth + 1)),
            )
        }
        Kind::Record(fields) => Datum::Record(
            fields
                .iter()
                .map(|f| value(r, clock, s, f.node, &f.name, depth + 1))
                .collect(),
        ),
    }
}

fn text_for(r: &mut fastrand::Rng, clock: i64, name: &str) -> String {
    let first = FIRST[r.usize(..FIRST.len())];
    let last = LAST[r.usize(..LAST.len())];
    let word = WORDS[r.usize(..WORDS.len())];
    let word2 = WORDS[r.usize(..WORDS.len())];
    let n = r.u32(1..9999);
    if name.ends_with("_at") {
        return instant(clock, -r.i64(0..86_400));
    }
    if name.contains("email") {
        format!(
            "{}.{}{n}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        )
    } else if name.contains("phone") {
        format!("+1555{:07}", r.u32(0..10_000_000))
    } else if name.contains("ip_address") || name.ends_with("_ip") || name == "ip" {
        format!("203.0.113.{}", r.u8(1..255))
    } else if name.contains("user_agent") {
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".to_owned()
    } else if name.contains("first_name") || name == "given_name" {
        first.to_owned()
    } else if name.contains("last_name") || name == "family_name" {
        last.to_owned()
    } else if name.contains("full_name") || name.contains("recipient") || name.contains("holder") {
        format!("{first} {last}")
    } else if name.contains("street") || name.contains("line1") || name.contains("line2") {
        format!("{} {} Street", r.u32(1..300), last)
    } else if name.contains("city") {
        CITIES[r.usize(..CITIES.len())].to_owned()
    } else if name.contains("postal") || name.contains("zip") {
        format!("{:05}", r.u32(1000..99999))
    } else if name.contains("country") {
        ["PT", "NO", "KE", "JP", "FR", "PL", "US"][r.usize(..7)].to_owned()
    } else if name.contains("birth") {
        format!(
            "19{:02}-{:02}-{:02}",
            r.u8(50..99),
            r.u8(1..13),
            r.u8(1..29)
        )
    } else if name.contains("currency") {
        "EUR".to_owned()
    } else if name.ends_with("_id") || name == "id" {
        format!("{:024x}", r.u128(..) & ((1u128 << 96) - 1))
    } else if name.contains("url") || name.contains("avatar") || name.contains("image") {
        format!("https://cdn.example.com/{word}/{n}.jpg")
    } else if name.contains("last4") {
        format!("{:04}", r.u32(0..10_000))
    } else if name.contains("code") || name.contains("sku") || name.contains("tracking") {
        format!("{}-{n:04}", word.to_uppercase())
    } else if name.contains("tax") {
        format!("TAX{:09}", r.u32(..1_000_000_000))
    } else if name.contains("name") || name.contains("title") {
        format!("{} {}", capitalise(word), capitalise(word2))
    } else {
        format!("{word} {word2} {}", WORDS[n as usize % WORDS.len()])
    }
}

fn uuid_from(r: &mut fastrand::Rng) -> String {
    let mut b = [0u8; 16];
    r.fill(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

fn instant(clock: i64, offset: i64) -> String {
    chrono::DateTime::from_timestamp(clock + offset, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn capitalise(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// `count` records, each as its value bytes.
pub fn generate(reg: &FileRegistry, opts: Options, count: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(reg, opts);
    (0..count).map(|_| g.next_record()).collect()
}
