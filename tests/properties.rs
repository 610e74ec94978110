//! Property tests: the redactor against an obviously-right model, the entry
//! point against random and mutated bytes, and the engine's ordering against
//! a model.

// apache-avro's one-shot datum reader is deprecated in favour of a builder;
// it is the independent reference decoder here.
#![allow(deprecated)]

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use privacy_router::classify::Rules;
use privacy_router::config::{EngineConfig, GapPolicy, MismatchPolicy, OutputFormat, StalePolicy};
use privacy_router::order::{MemoryStore, VersionStore};
use privacy_router::pipeline::Engine;
use privacy_router::project::{
    derived_schema, encode_projection, write_json_projections, Hasher, Pseudonyms,
};
use privacy_router::record::{Outcome, RawHeaders, RawRecord, Source, Tier};
use privacy_router::registry::file;
use privacy_router::schema::{
    binary, json as sjson, max_present_tier, pass, CompiledSchema, Envelope, SchemaLookup,
};

// ---------------------------------------------------------------- the model

#[derive(Debug)]
struct Rec {
    name: String,
    default: Option<Tier>,
    fields: Vec<F>,
}

#[derive(Debug)]
struct F {
    name: String,
    label: Option<Tier>,
    tags: Vec<&'static str>,
    hash: bool,
    ty: T,
}

#[derive(Debug)]
enum T {
    Str,
    Long,
    NullStr,
    Record(Rc<Rec>),
    Ref(Rc<Rec>),
    Array(Box<T>),
    Map(Box<T>),
    NullRec(Rc<Rec>),
    TwoRecs(Rc<Rec>, Rc<Rec>),
}

const TAGS: [&str; 4] = ["PII", "INTERNAL", "PUBLIC", "UNMAPPED"];

fn tag_tier(tag: &str) -> Option<Tier> {
    match tag {
        "PII" => Some(Tier::Restricted),
        "INTERNAL" => Some(Tier::Internal),
        "PUBLIC" => Some(Tier::Public),
        _ => None,
    }
}

/// The contract's rule, written out plainly: strictest of label and mapped
/// tags; else the record default; else restricted.
fn own_tier(f: &F, rec_default: Option<Tier>) -> Tier {
    let labels: Vec<Tier> = f
        .label
        .into_iter()
        .chain(f.tags.iter().filter_map(|t| tag_tier(t)))
        .collect();
    labels
        .into_iter()
        .max()
        .or(rec_default)
        .unwrap_or(Tier::Restricted)
}

struct Gen {
    rng: fastrand::Rng,
    n: usize,
    completed: Vec<Rc<Rec>>,
}

impl Gen {
    fn tier(&mut self) -> Tier {
        Tier::ALL[self.rng.usize(..3)]
    }

    fn record(&mut self, depth: usize) -> Rc<Rec> {
        self.n += 1;
        let name = format!("R{}", self.n);
        let default = if self.rng.bool() {
            Some(self.tier())
        } else {
            None
        };
        let count = self.rng.usize(1..=4);
        let fields = (0..count)
            .map(|i| {
                let ty = self.ty(depth + 1);
                let stringy = matches!(ty, T::Str | T::NullStr);
                F {
                    name: format!("f{i}"),
                    label: if self.rng.u8(..4) > 0 {
                        Some(self.tier())
                    } else {
                        None
                    },
                    tags: (0..self.rng.usize(0..=2))
                        .map(|_| TAGS[self.rng.usize(..4)])
                        .collect(),
                    hash: stringy && self.rng.u8(..3) == 0,
                    ty,
                }
            })
            .collect();
        let rec = Rc::new(Rec {
            name,
            default,
            fields,
        });
        self.completed.push(rec.clone());
        rec
    }

    fn ty(&mut self, depth: usize) -> T {
        let max = if depth >= 3 { 3 } else { 10 };
        match self.rng.usize(..max) {
            0 => T::Str,
            1 => T::Long,
            2 => T::NullStr,
            3 => T::Record(self.record(depth)),
            4 if !self.completed.is_empty() => {
                let i = self.rng.usize(..self.completed.len());
                T::Ref(self.completed[i].clone())
            }
            4 | 5 => T::Array(Box::new(self.ty(depth + 1))),
            6 => T::Map(Box::new(self.ty(depth + 1))),
            7 => T::NullRec(self.record(depth)),
            8 => T::TwoRecs(self.record(depth), self.record(depth)),
            _ => T::Str,
        }
    }

    fn token(&mut self) -> String {
        self.n += 1;
        format!("tok{:06}z", self.n)
    }

    fn value(&mut self, t: &T) -> Value {
        match t {
            T::Str => Value::from(self.token()),
            T::Long => Value::from(self.rng.i64(..)),
            T::NullStr => {
                if self.rng.bool() {
                    Value::Null
                } else {
                    Value::from(self.token())
                }
            }
            T::Record(r) | T::Ref(r) => self.rec_value(r),
            T::Array(item) => Value::Array(
                (0..self.rng.usize(0..3))
                    .map(|_| self.value(item))
                    .collect(),
            ),
            T::Map(item) => Value::Object(
                (0..self.rng.usize(0..3))
                    .map(|i| (format!("k{i}"), self.value(item)))
                    .collect(),
            ),
            T::NullRec(r) => {
                if self.rng.bool() {
                    Value::Null
                } else {
                    self.rec_value(r)
                }
            }
            T::TwoRecs(a, b) => {
                // Tag the branch explicitly (Avro JSON form) so resolution is exact.
                let (r, name) = if self.rng.bool() {
                    (a, &a.name)
                } else {
                    (b, &b.name)
                };
                json!({ format!("t.{name}"): self.rec_value(r) })
            }
        }
    }

    fn rec_value(&mut self, r: &Rec) -> Value {
        Value::Object(
            r.fields
                .iter()
                .map(|f| (f.name.clone(), self.value(&f.ty)))
                .collect(),
        )
    }
}

fn schema_json(t: &T, defined: &mut Vec<String>) -> Value {
    match t {
        T::Str => json!("string"),
        T::Long => json!("long"),
        T::NullStr => json!(["null", "string"]),
        T::Record(r) => rec_schema(r, defined),
        T::Ref(r) if defined.contains(&r.name) => json!(format!("t.{}", r.name)),
        T::Ref(r) => rec_schema(r, defined),
        T::Array(i) => json!({"type": "array", "items": schema_json(i, defined)}),
        T::Map(i) => json!({"type": "map", "values": schema_json(i, defined)}),
        T::NullRec(r) => json!(["null", rec_schema(r, defined)]),
        T::TwoRecs(a, b) => {
            let a = rec_schema(a, defined);
            json!([a, rec_schema(b, defined)])
        }
    }
}

fn rec_schema(r: &Rec, defined: &mut Vec<String>) -> Value {
    if defined.contains(&r.name) {
        return json!(format!("t.{}", r.name));
    }
    defined.push(r.name.clone());
    let fields: Vec<Value> = r
        .fields
        .iter()
        .map(|f| {
            let mut o = Map::new();
            o.insert("name".into(), json!(f.name));
            o.insert("type".into(), schema_json(&f.ty, defined));
            if let Some(l) = f.label {
                o.insert("privacy".into(), json!(l.as_str()));
            }
            if !f.tags.is_empty() {
                o.insert("confluent:tags".into(), json!(f.tags));
            }
            if f.hash {
                o.insert("redact".into(), json!("hash"));
            }
            Value::Object(o)
        })
        .collect();
    let mut o = Map::new();
    o.insert("type".into(), json!("record"));
    o.insert("name".into(), json!(r.name));
    o.insert("namespace".into(), json!("t"));
    if let Some(d) = r.default {
        o.insert("privacy".into(), json!(d.as_str()));
    }
    o.insert("fields".into(), Value::Array(fields));
    Value::Object(o)
}

/// What tier `tier` must receive, computed from the spec alone.
fn expected(t: &T, v: &Value, tier: Tier, h: &Hasher) -> Value {
    match (t, v) {
        (T::Record(r) | T::Ref(r) | T::NullRec(r), Value::Object(_)) => expected_rec(r, v, tier, h),
        (T::TwoRecs(a, b), Value::Object(o)) => {
            let (k, inner) = o.iter().next().unwrap();
            let r = if *k == format!("t.{}", a.name) { a } else { b };
            expected_rec(r, inner, tier, h)
        }
        (T::Array(i), Value::Array(xs)) => {
            Value::Array(xs.iter().map(|x| expected(i, x, tier, h)).collect())
        }
        (T::Map(i), Value::Object(o)) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), expected(i, x, tier, h)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

fn expected_rec(r: &Rec, v: &Value, tier: Tier, h: &Hasher) -> Value {
    let mut out = Map::new();
    for f in &r.fields {
        let x = &v[&f.name];
        if own_tier(f, r.default) <= tier {
            out.insert(f.name.clone(), expected(&f.ty, x, tier, h));
        } else if f.hash {
            let hashed = x
                .as_str()
                .map_or(Value::Null, |s| Value::from(h.pseudonym(s.as_bytes())));
            out.insert(f.name.clone(), hashed);
        }
    }
    Value::Object(out)
}

fn tokens(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with("tok") => out.push(s.clone()),
        Value::Array(xs) => xs.iter().for_each(|x| tokens(x, out)),
        Value::Object(o) => o.iter().for_each(|(_, x)| tokens(x, out)),
        _ => {}
    }
}

fn visible_in(v: &Value, token: &str) -> bool {
    let mut visible = Vec::new();
    tokens(v, &mut visible);
    visible.iter().any(|t| t == token)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// For random schemas and values: no value of a field classified above T
    /// appears in T's output, every field at or below T is carried unchanged,
    /// and the output decodes (with apache-avro, an independent decoder) with
    /// the derived schema.
    #[test]
    fn projection_matches_the_model(seed in any::<u64>()) {
        let mut g = Gen { rng: fastrand::Rng::with_seed(seed), n: 0, completed: Vec::new() };
        let root = g.record(0);
        let value = g.rec_value(&root);
        let text = rec_schema(&root, &mut Vec::new()).to_string();
        let schema = CompiledSchema::compile(&text, &Rules::default()).expect("generated schema compiles");
        let datum = sjson::resolve(&schema, &value).expect("generated value resolves");
        // The engine reads JSON events as a borrowed `Json`, not a `Value`:
        // the same datum.
        let bytes = serde_json::to_vec(&value).unwrap();
        let borrowed = sjson::Json::parse(&bytes).expect("serialised JSON parses");
        prop_assert_eq!(sjson::resolve(&schema, &borrowed), Ok(datum.clone()));
        let h = Hasher::new(b"property-test-key-0123456789").unwrap();
        let mut all_tokens = Vec::new();
        tokens(&value, &mut all_tokens);
        // The JSON values of all three tiers, written in one walk straight
        // from the writer's value (what the engine writes for JSON output).
        let mut json_outs: [Vec<u8>; 3] = Default::default();
        write_json_projections(&schema, &datum, &Tier::ALL, &mut Pseudonyms::new(Some(&h), b""), &mut json_outs).unwrap();
        // The single pass over the value's Avro encoding: the bodies the
        // tree's projection writes, byte for byte, and the same present tier.
        let mut avro = Vec::new();
        binary::encode(&datum, &mut avro);
        let mut passed: [Vec<u8>; 3] = Default::default();
        let pass = pass::project(&schema, &Envelope::NONE, &avro, Some(&h), &mut passed);
        prop_assert!(pass.is_some(), "the single pass reads a well-formed value of one-block arrays");
        prop_assert_eq!(pass.unwrap().present, max_present_tier(&schema, &datum).0);
        for tier in Tier::ALL {
            let mut body = Vec::new();
            encode_projection(&schema, &datum, tier, Some(&h), &mut body).unwrap();
            prop_assert_eq!(&passed[tier.index()], &body, "single-pass body of tier {}", tier);
            let derived = derived_schema(&schema, tier);
            let avro = apache_avro::Schema::parse(&derived).expect("derived schema is valid Avro");
            let decoded = apache_avro::from_avro_datum(&avro, &mut body.as_slice(), None).expect("decodes");
            let got = Value::try_from(decoded).unwrap();
            let want = expected_rec(&root, &value, tier, &h);
            // The JSON output (written straight from the decoded projection)
            // is byte for byte the rendered value's serialisation.
            let compiled = CompiledSchema::compile(&derived.to_string(), &Rules::default()).expect("derived schema compiles");
            let d = binary::decode(&compiled, &body).expect("our decoder reads the projection");
            let mut direct = Vec::new();
            sjson::write(&compiled, compiled.root(), &d, &mut direct);
            prop_assert_eq!(
                String::from_utf8(direct.clone()).unwrap(),
                serde_json::to_string(&sjson::render(&compiled, compiled.root(), &d)).unwrap()
            );
            // ... and so is the value written without the Avro round trip.
            prop_assert_eq!(
                String::from_utf8(json_outs[tier.index()].clone()).unwrap(),
                String::from_utf8(direct).unwrap(),
                "JSON of tier {}", tier
            );
            for t in &all_tokens {
                prop_assert_eq!(contains(&json_outs[tier.index()], t.as_bytes()), visible_in(&want, t), "token {} in the JSON of tier {}", t, tier);
            }
            prop_assert_eq!(&got, &want, "tier {}", tier);
            let mut visible = Vec::new();
            tokens(&want, &mut visible);
            for t in &all_tokens {
                prop_assert_eq!(contains(&body, t.as_bytes()), visible.contains(t), "token {} in tier {}", t, tier);
            }
        }
    }
}

// ------------------------------------------------------- the entry point

/// The schemas in `avro/` for the topic `events.raw`.
fn avro_folder(subjects: &privacy_router::schema::SubjectNaming) -> file::FileRegistry {
    file::load(
        std::path::Path::new("avro"),
        subjects,
        &["events.raw".to_owned()],
    )
    .unwrap()
}

fn engine_and_registry() -> (
    Engine,
    privacy_router::registry::MemoryRegistry,
    Vec<file::EventSchema>,
) {
    let cfg = Arc::new(EngineConfig::default());
    let reg = avro_folder(&cfg.subjects);
    let engine = Engine::new(
        cfg,
        Some(Hasher::new(b"fuzz-key-0123456789abcdef").unwrap()),
    );
    (engine, reg.registry, reg.events)
}

fn run_one(
    engine: &mut Engine,
    store: &mut MemoryStore,
    reg: &mut privacy_router::registry::MemoryRegistry,
    value: &[u8],
) -> Outcome {
    let source = Source {
        topic: Arc::from("events.raw"),
        partition: 0,
        offset: 0,
    };
    let raw = RawRecord {
        source: &source,
        key: None,
        value: Some(value),
        headers: RawHeaders::NONE,
    };
    engine
        .process(&raw, store, reg)
        .expect("the file registry never fails")
}

/// A `Json` as the `Value` it stands for.
fn json_value(j: &sjson::Json<'_>) -> Value {
    match j {
        sjson::Json::Null => Value::Null,
        sjson::Json::Bool(b) => Value::Bool(*b),
        sjson::Json::Number(n) => Value::Number(n.clone()),
        sjson::Json::String(x) => Value::String(x.to_string()),
        sjson::Json::Array(xs) => Value::Array(xs.iter().map(json_value).collect()),
        sjson::Json::Object(o) => {
            assert!(
                o.windows(2).all(|w| w[0].0 < w[1].0),
                "keys sorted and unique"
            );
            Value::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), json_value(v)))
                    .collect(),
            )
        }
    }
}

/// JSON-ish text: objects with repeated keys, escapes, numbers of every
/// kind, nesting, and now and then a syntax error.
fn json_text(rng: &mut fastrand::Rng, depth: usize, out: &mut String) {
    const KEYS: [&str; 6] = ["a", "b", "event_type", "ab", "a\\b", "\\u00e9"];
    const SCALARS: [&str; 16] = [
        "null",
        "true",
        "false",
        "0",
        "-1",
        "7",
        "18446744073709551615",
        "-9223372036854775808",
        "1.5",
        "-2e3",
        "1e400",
        "\"x\"",
        "\"\\n\\\"q\"",
        "\"\\ud83d\\ude00\"",
        "\"é\"",
        "tru",
    ];
    match rng.usize(0..if depth > 3 { 1 } else { 4 }) {
        0 => out.push_str(SCALARS[rng.usize(0..SCALARS.len())]),
        1 => {
            out.push('[');
            for i in 0..rng.usize(0..4) {
                if i > 0 {
                    out.push(',');
                }
                json_text(rng, depth + 1, out);
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            for i in 0..rng.usize(0..5) {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(KEYS[rng.usize(0..KEYS.len())]);
                out.push_str("\":");
                json_text(rng, depth + 1, out);
            }
            out.push('}');
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// `Json::parse` accepts exactly what `serde_json` accepts as a `Value`
    /// and holds the same value: sorted keys, the last duplicate winning,
    /// numbers as `serde_json` parses them, strings unescaped.
    #[test]
    fn borrowed_json_is_the_value(seed in any::<u64>()) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut text = String::new();
        json_text(&mut rng, 0, &mut text);
        let want = serde_json::from_str::<Value>(&text);
        let got = sjson::Json::parse(text.as_bytes());
        match (want, got) {
            (Ok(v), Ok(j)) => prop_assert_eq!(json_value(&j), v, "{}", text),
            (Err(_), Err(_)) => {}
            (v, j) => prop_assert!(false, "{}: Value {:?}, Json {:?}", text, v.is_ok(), j.is_ok()),
        }
    }

    /// Random bytes, random frames with real schema ids, and random JSON-ish
    /// text never panic; anything not routed is dead-lettered unchanged.
    #[test]
    fn random_bytes_never_panic(prefix in 0u8..4, id in 0u32..70, body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (mut engine, mut reg, _) = engine_and_registry();
        let mut store = MemoryStore::default();
        let mut value = match prefix {
            0 => vec![0],
            1 => b"{".to_vec(),
            _ => Vec::new(),
        };
        if prefix == 0 { value.extend_from_slice(&id.to_be_bytes()); }
        value.extend_from_slice(&body);
        match run_one(&mut engine, &mut store, &mut reg, &value) {
            Outcome::DeadLettered { record, .. } => prop_assert_eq!(record.value.as_deref(), Some(value.as_slice())),
            Outcome::Routed(_) | Outcome::Skipped(_) => {}
            Outcome::Held { .. } => prop_assert!(false, "held without on_gap: hold"),
        }
    }
}

/// One random change to a framed event past its 5-byte header: cut short
/// anywhere, a bit flipped, a byte inserted, or a byte below 0x80 written
/// as two (where it ends a varint, the same number in a longer form than
/// the shortest, which the tree path writes back shorter). Values of six
/// bytes or fewer (the anomalies' empty and truncated ones) are left as
/// they are.
fn mutate(rng: &mut fastrand::Rng, m: &mut Vec<u8>) {
    if m.len() <= 6 {
        return;
    }
    match rng.u8(..4) {
        0 => m.truncate(rng.usize(0..m.len())),
        1 => {
            let i = rng.usize(5..m.len());
            m[i] ^= 1 << rng.u8(0..8);
        }
        2 => {
            let i = rng.usize(5..m.len());
            m.insert(i, rng.u8(..));
        }
        _ => {
            let i = rng.usize(5..m.len());
            if m[i] < 0x80 {
                m[i] |= 0x80;
                m.insert(i + 1, 0);
            }
        }
    }
}

#[test]
fn mutated_real_events_never_panic() {
    let (mut engine, mut reg, _) = engine_and_registry();
    let file = avro_folder(&engine.config().subjects);
    let opts = privacy_router::sample::Options {
        seed: 11,
        entities: 5,
        anomalies: false,
        format: privacy_router::sample::Format::Framed,
    };
    let events = privacy_router::sample::generate(&file, opts, 300);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut store = MemoryStore::default();
    let (mut routed, mut dead) = (0, 0);
    for e in &events {
        for _ in 0..20 {
            let mut m = e.clone();
            mutate(&mut rng, &mut m);
            match run_one(&mut engine, &mut store, &mut reg, &m) {
                Outcome::DeadLettered { record, .. } => {
                    assert_eq!(record.value.as_deref(), Some(m.as_slice()));
                    dead += 1;
                }
                _ => routed += 1,
            }
        }
    }
    // Both kinds happen: flips inside strings still decode, truncations do not.
    assert!(
        routed > 100 && dead > 1000,
        "routed {routed}, dead-lettered {dead}"
    );
}

/// One random change to a JSON event's text: cut short, a byte flipped,
/// or a piece of JSON (an escape, whitespace, a number's other forms, an
/// extra key, brackets, quotes) inserted anywhere.
fn mutate_json(rng: &mut fastrand::Rng, m: &mut Vec<u8>) {
    const PIECES: [&str; 18] = [
        "\\n",
        "\\u0041",
        " ",
        "\n",
        "-0",
        "-",
        ".5",
        "e3",
        "0",
        "null",
        "\"zz\":1,",
        "\"a\":\"b\",",
        "{",
        "}",
        "[",
        ",",
        "\\",
        "\"",
    ];
    if m.len() <= 2 {
        return;
    }
    match rng.u8(..4) {
        0 => m.truncate(rng.usize(0..m.len())),
        1 => {
            let i = rng.usize(..m.len());
            m[i] ^= 1 << rng.u8(0..8);
        }
        _ => {
            let i = rng.usize(1..m.len());
            let piece = PIECES[rng.usize(..PIECES.len())].as_bytes();
            m.splice(i..i, piece.iter().copied());
        }
    }
}

/// Through the whole engine, a single pass (framed Avro to Avro tiers, or
/// JSON to JSON tiers, read and projected in one walk) and the tree path
/// give the same outcome for every record: the same tier records byte for
/// byte (values, keys, headers), verdicts and store writes, holds, and dead
/// letters with their reasons and details. On generated events with
/// anomalies and mutated copies of them, under random policies, tier
/// limits, and with or without a hash key.
fn single_pass_routes_as_the_tree_does(seed: u64, json: bool) -> Result<(), TestCaseError> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cfg = EngineConfig {
        on_gap: [GapPolicy::Emit, GapPolicy::DeadLetter, GapPolicy::Hold][rng.usize(..3)],
        on_stale: [StalePolicy::Skip, StalePolicy::DeadLetter][rng.usize(..2)],
        on_tier_mismatch: [MismatchPolicy::Emit, MismatchPolicy::DeadLetter][rng.usize(..2)],
        format: if json {
            OutputFormat::Json
        } else {
            OutputFormat::Avro
        },
        ..EngineConfig::default()
    };
    let file = avro_folder(&cfg.subjects);
    if rng.bool() {
        let limited = &file.events[rng.usize(..file.events.len())].event_type;
        cfg.tier_limits
            .insert(limited.clone(), [Tier::Restricted].into_iter().collect());
    }
    let keyed = rng.u8(..4) != 0;
    let cfg = Arc::new(cfg);
    let engine = |single: bool| {
        let hasher = keyed.then(|| Hasher::new(b"fuzz-key-0123456789abcdef").unwrap());
        let mut e = Engine::new(cfg.clone(), hasher);
        e.set_single_pass(single);
        e
    };
    let (mut single, mut tree) = (engine(true), engine(false));
    let (mut reg_single, mut reg_tree) = (file.registry.clone(), file.registry.clone());
    let (mut store_single, mut store_tree) = (MemoryStore::default(), MemoryStore::default());
    let opts = privacy_router::sample::Options {
        seed,
        entities: 4,
        anomalies: true,
        format: if json {
            privacy_router::sample::Format::Jsonl
        } else {
            privacy_router::sample::Format::Framed
        },
    };
    let events = privacy_router::sample::generate(&file, opts, 120);
    let (mut routed, mut mutants_routed) = (0, 0);
    for e in &events {
        let a = run_one(&mut single, &mut store_single, &mut reg_single, e);
        let b = run_one(&mut tree, &mut store_tree, &mut reg_tree, e);
        routed += usize::from(matches!(a, Outcome::Routed(_)));
        prop_assert_eq!(a, b);
        // A mutated copy has the original's entity and version: on the
        // stores above it would only be a duplicate, its bodies never
        // written. On empty stores it is routed if it reads at all.
        for _ in 0..2 {
            let mut m = e.clone();
            if json {
                mutate_json(&mut rng, &mut m);
            } else {
                mutate(&mut rng, &mut m);
            }
            let (mut s1, mut s2) = (MemoryStore::default(), MemoryStore::default());
            let a = run_one(&mut single, &mut s1, &mut reg_single, &m);
            let b = run_one(&mut tree, &mut s2, &mut reg_tree, &m);
            mutants_routed += usize::from(matches!(a, Outcome::Routed(_)));
            prop_assert_eq!(a, b);
        }
    }
    // Some of them read and are routed, so their bodies are compared
    // (for Avro, at least 24 of the 240 in each of 300 seeds tried;
    // truncations never read).
    prop_assert!(
        !keyed || mutants_routed > 8,
        "mutants routed {}",
        mutants_routed
    );
    // Without a key every event is dead-lettered (its public tier needs
    // pseudonyms), by both paths alike.
    prop_assert!(!keyed || routed > 50, "routed {}", routed);
    // Equal outcomes carry equal store writes; the stores agree too.
    prop_assert_eq!(store_single.len(), store_tree.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// [`single_pass_routes_as_the_tree_does`] for framed Avro.
    #[test]
    fn the_single_pass_routes_as_the_tree_does(seed in any::<u64>()) {
        single_pass_routes_as_the_tree_does(seed, false)?;
    }

    /// [`single_pass_routes_as_the_tree_does`] for JSON.
    #[test]
    fn the_json_pass_routes_as_the_tree_does(seed in any::<u64>()) {
        single_pass_routes_as_the_tree_does(seed, true)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Through the whole engine, each (entity, version) sequence gets the
    /// verdicts of a trivially-correct model, and tier records are emitted
    /// exactly for accepted and gap events.
    #[test]
    fn engine_ordering_matches_the_model(steps in proptest::collection::vec((0usize..4, 1i64..8), 1..60)) {
        let (mut engine, mut reg, events) = engine_and_registry();
        let product = events.iter().find(|e| e.event_type == "product.price_changed").unwrap();
        let schema = CompiledSchema::compile(&product.text, &Rules::default()).unwrap();
        let mut store = MemoryStore::default();
        let mut model: HashMap<usize, i64> = HashMap::new();
        for (entity, version) in steps {
            let framed = product_event(&schema, product.id, entity, version);
            let want = match model.get(&entity) {
                None => "accepted",
                Some(l) if version == l + 1 => "accepted",
                Some(l) if version == *l => "duplicate",
                Some(l) if version < *l => "stale",
                Some(_) => "gap",
            };
            if want == "accepted" || want == "gap" { model.insert(entity, version); }
            match run_one(&mut engine, &mut store, &mut reg, &framed) {
                Outcome::Routed(r) => {
                    prop_assert_eq!(r.verdict.label(), want);
                    prop_assert_eq!(r.records.len(), 3);
                }
                Outcome::Skipped(v) => prop_assert_eq!(v.label(), want),
                Outcome::DeadLettered { rejection, .. } => prop_assert!(false, "dead-lettered: {}", rejection),
                Outcome::Held { .. } => prop_assert!(false, "held without on_gap: hold"),
            }
        }
        prop_assert_eq!(store.len(), model.len());
    }
}

// ------------------------------------------------- the reorder window

/// The reorder window, written the obvious way: lists searched linearly,
/// one rule per sentence of the contract (§4) and the topology's
/// `ordering` settings.
#[derive(Default)]
struct WindowModel {
    window: i64,
    bound: usize,
    last: Vec<(usize, i64)>,
    /// (entity, version, stream time when held, input index), hold order.
    held: Vec<(usize, i64, i64, usize)>,
    stream: i64,
    /// (input index, entity, version, label, gap header).
    out: Vec<(usize, usize, i64, &'static str, Option<i64>)>,
}

impl WindowModel {
    fn last(&self, e: usize) -> Option<i64> {
        self.last.iter().find(|(x, _)| *x == e).map(|(_, v)| *v)
    }

    fn set_last(&mut self, e: usize, v: i64) {
        self.last.retain(|(x, _)| *x != e);
        self.last.push((e, v));
    }

    /// An event emitted (or skipped) now: its verdict against the last
    /// emitted version; gaps are emitted (a release).
    fn emit(&mut self, i: usize, e: usize, v: i64) {
        let (label, gap) = match self.last(e) {
            None => ("accepted", None),
            Some(l) if v == l + 1 => ("accepted", None),
            Some(l) if v == l => ("duplicate", None),
            Some(l) if v < l => ("stale", None),
            Some(l) => ("gap", Some(v - l - 1)),
        };
        if label == "accepted" || label == "gap" {
            self.set_last(e, v);
        }
        self.out.push((i, e, v, label, gap));
        if label == "accepted" || label == "gap" {
            self.follow(e);
        }
    }

    /// Held versions of `e` at most `upto`, lowest first.
    fn release(&mut self, e: usize, upto: i64) {
        loop {
            let next = self
                .held
                .iter()
                .filter(|h| h.0 == e && h.1 <= upto)
                .min_by_key(|h| h.1)
                .copied();
            let Some(h) = next else { break };
            self.held.retain(|x| !(x.0 == h.0 && x.1 == h.1));
            self.emit(h.3, e, h.1);
        }
        self.follow(e);
    }

    /// Held versions that now follow the last emitted one.
    fn follow(&mut self, e: usize) {
        while let Some(l) = self.last(e) {
            let next = self
                .held
                .iter()
                .filter(|h| h.0 == e && h.1 <= l + 1)
                .min_by_key(|h| h.1)
                .copied();
            let Some(h) = next else { break };
            self.held.retain(|x| !(x.0 == h.0 && x.1 == h.1));
            self.emit(h.3, e, h.1);
        }
    }

    fn input(&mut self, i: usize, e: usize, v: i64, ts: i64) {
        self.stream = self.stream.max(ts);
        let ahead = matches!(self.last(e), Some(l) if v > l + 1);
        if self.held.iter().any(|h| h.0 == e && h.1 == v) {
            self.out.push((i, e, v, "duplicate", None));
        } else if ahead {
            self.held.push((e, v, self.stream, i));
            self.out.push((i, e, v, "held", None));
            while self.held.len() > self.bound {
                let (oe, ov, _, _) = self.held[0];
                self.release(oe, ov);
            }
        } else {
            self.emit(i, e, v);
        }
        while let Some(&(oe, ov, at, _)) = self.held.first() {
            if self.stream < at + self.window {
                break;
            }
            self.release(oe, ov);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// `on_gap: hold` through the whole engine and the reorder driver, on
    /// random interleavings of each entity's versions with swaps,
    /// duplicates and drops and timestamps that sometimes go back: every
    /// step matches the model of the window (what is held, what is released
    /// in order or as a gap, with which header, what is a duplicate or
    /// stale); each version reaches the tiers at most once and in rising
    /// order per entity; and once the input ends nothing stays held.
    #[test]
    fn the_reorder_window_matches_the_model(
        entities in proptest::collection::vec((1i64..9, proptest::collection::vec(0u8..10, 12)), 1..4),
        order in proptest::collection::vec(any::<u8>(), 0..40),
        steps in proptest::collection::vec(0i64..8, 40),
        bound in 1usize..6,
    ) {
        use privacy_router::config::{GapPolicy, HoldConfig};
        use privacy_router::order::hold::Holdback;
        use privacy_router::reorder::{Reorder, Step};

        // Each entity's stream: versions 1..=n, then perturbed: a swap of
        // neighbours, a duplicate, a drop, per the entity's dice.
        let mut streams: Vec<Vec<i64>> = Vec::new();
        for (n, dice) in &entities {
            let mut s: Vec<i64> = (1..=*n).collect();
            for (k, d) in dice.iter().enumerate() {
                let i = k % s.len().max(1);
                match d {
                    0 | 1 if i + 1 < s.len() => s.swap(i, i + 1),
                    2 if !s.is_empty() => { let x = s[i]; s.insert(i, x) }
                    3 if s.len() > 1 => { s.remove(i); }
                    _ => {}
                }
            }
            streams.push(s);
        }
        // Interleaved by `order`, then whatever is left in entity order.
        let mut cursor = vec![0usize; streams.len()];
        let mut inputs: Vec<(usize, i64)> = Vec::new();
        for o in order {
            let e = o as usize % streams.len();
            if cursor[e] < streams[e].len() {
                inputs.push((e, streams[e][cursor[e]]));
                cursor[e] += 1;
            }
        }
        for (e, s) in streams.iter().enumerate() {
            inputs.extend(s[cursor[e]..].iter().map(|v| (e, *v)));
        }

        let window = 1_000;
        let cfg = EngineConfig {
            on_gap: GapPolicy::Hold,
            hold: HoldConfig { window_ms: window, max_held: bound },
            ..EngineConfig::default()
        };
        let (_, mut reg, events) = engine_and_registry();
        let mut engine = Engine::new(Arc::new(cfg), Some(Hasher::new(b"fuzz-key-0123456789abcdef").unwrap()));
        let product = events.iter().find(|e| e.event_type == "product.price_changed").unwrap();
        let schema = CompiledSchema::compile(&product.text, &Rules::default()).unwrap();
        let mut store = MemoryStore::default();
        let mut held = Holdback::default();
        let mut model = WindowModel { window, bound, ..WindowModel::default() };
        let mut got: Vec<(usize, usize, i64, &'static str, Option<i64>)> = Vec::new();
        let mut ts = 0i64;
        let record = |s: &Step, got: &mut Vec<_>| {
            let i = s.source.offset as usize;
            let (e, v) = inputs[i];
            let (label, gap) = match &s.outcome {
                Outcome::Routed(r) => {
                    assert_eq!(r.records.len(), 3);
                    let gap = r.records[0].header("x-version-gap")
                        .map(|h| std::str::from_utf8(h).unwrap().parse::<i64>().unwrap());
                    (r.verdict.label(), gap)
                }
                Outcome::Skipped(v) => (v.label(), None),
                Outcome::Held { .. } => ("held", None),
                Outcome::DeadLettered { rejection, .. } => panic!("dead-lettered: {rejection}"),
            };
            got.push((i, e, v, label, gap));
        };
        let mut out = Vec::new();
        for (i, (e, v)) in inputs.iter().enumerate() {
            // Mostly forward, sometimes back (a late producer's clock), in
            // 100 ms steps so that the window's edge is met exactly.
            ts += steps[i % steps.len()] * 100 - 100;
            let value = product_event(&schema, product.id, *e, *v);
            let source = Source { topic: Arc::from("events.raw"), partition: 0, offset: i as i64 };
            let raw = RawRecord { source: &source, key: None, value: Some(&value), headers: RawHeaders::NONE };
            Reorder { engine: &mut engine, store: &mut store, held: &mut held, registry: &mut reg }
                .process(&raw, Some(ts), None, &mut out)
                .expect("the memory registry never fails");
            for s in out.drain(..) {
                record(&s, &mut got);
            }
            model.input(i, *e, *v, ts);
        }
        Reorder { engine: &mut engine, store: &mut store, held: &mut held, registry: &mut reg }
            .release_all(&mut out)
            .unwrap();
        for s in out.drain(..) {
            record(&s, &mut got);
        }
        while let Some(&(oe, ov, _, _)) = model.held.first() {
            model.release(oe, ov);
        }
        prop_assert_eq!(&got, &model.out);
        prop_assert!(held.is_empty());
        // Whatever the model: at most once, rising per entity.
        let mut emitted: HashMap<usize, i64> = HashMap::new();
        for (_, e, v, label, _) in &got {
            if *label == "accepted" || *label == "gap" {
                prop_assert!(emitted.get(e).is_none_or(|l| v > l), "entity {} version {} after {:?}", e, v, emitted.get(e));
                emitted.insert(*e, *v);
            }
        }
        // Nothing lost that could be kept: every version of an entity above
        // the first one emitted and not dropped from its stream reached
        // the tiers, unless it came after a higher one was emitted.
        for (e, s) in streams.iter().enumerate() {
            let reached: Vec<i64> = got.iter()
                .filter(|g| g.1 == e && (g.3 == "accepted" || g.3 == "gap"))
                .map(|g| g.2)
                .collect();
            let max = s.iter().max().copied();
            prop_assert_eq!(reached.last().copied(), max, "entity {}'s highest version reaches the tiers", e);
        }
    }
}

fn product_event(schema: &CompiledSchema, id: u32, entity: usize, version: i64) -> Vec<u8> {
    let v = json!({
        "event_id": "6f1c1f1e-8a33-4a55-9d0c-2b9a7f2e9a11", "event_type": "product.price_changed",
        "entity_type": "product", "entity_id": format!("p{entity}"), "entity_version": version,
        "occurred_at": "2026-05-01T12:00:00Z", "producer": "catalog", "actor": {"actor_type": "SYSTEM"},
        "schema_version": 1, "privacy_tier": "internal",
        "data": {"previous_price_cents": 100, "new_price_cents": 120, "currency": "EUR",
                 "change_reason": "PROMOTION", "cost_cents": 50, "changed_by_user_id": "u1",
                 "effective_at": "2026-05-01T12:00:00Z"}
    });
    let datum = sjson::resolve(schema, &v).expect("the test event fits its schema");
    let mut framed = vec![0];
    framed.extend_from_slice(&id.to_be_bytes());
    binary::encode(&datum, &mut framed);
    framed
}

/// Producer events (each producer topology's own sample, through its
/// adapter) with random structural damage — keys removed, values replaced
/// by other JSON types, text truncated — never panic; what is not routed is
/// dead-lettered unchanged, and details never quote a value.
#[test]
fn mutated_producer_events_never_panic() {
    use privacy_router::config::Topology;
    use serde_json::Value;

    fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Object(o) = v {
            for (k, x) in o {
                at.push(k.clone());
                out.push(at.clone());
                paths(x, at, out);
                at.pop();
            }
        }
    }
    fn slot<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
        let mut cur = v;
        for k in path {
            cur = cur.as_object_mut()?.get_mut(k)?;
        }
        Some(cur)
    }

    let mut rng = fastrand::Rng::with_seed(17);
    for (topology, sample) in [
        ("topology/user-service.yaml", "samples/user-service.jsonl"),
        ("topology/auth-identity.yaml", "samples/auth-identity.jsonl"),
        (
            "topology/user-catalogue.yaml",
            "samples/user-catalogue.jsonl",
        ),
    ] {
        let t = Topology::load(std::path::Path::new(topology)).unwrap();
        let topic = t.spec.input.topics[0].clone();
        let mut reg = file::load(
            &t.spec.schemas.folder,
            &t.engine.subjects,
            &t.spec.input.topics,
        )
        .unwrap()
        .registry;
        let mut engine = Engine::new(
            t.engine.clone(),
            Some(Hasher::new(b"fuzz-key-0123456789abcdef").unwrap()),
        );
        let mut store = MemoryStore::default();
        let lines: Vec<Value> = std::fs::read_to_string(sample)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(!lines.is_empty(), "{sample}");
        let (mut routed, mut dead) = (0, 0);
        for (n, e) in lines.iter().cycle().take(lines.len() * 60).enumerate() {
            let mut v = e.clone();
            let mut all = Vec::new();
            paths(&v, &mut Vec::new(), &mut all);
            let bytes = match rng.u8(..4) {
                0 if !all.is_empty() => {
                    let p = &all[rng.usize(..all.len())];
                    let (last, parent) = p.split_last().unwrap();
                    if let Some(Value::Object(o)) = slot(&mut v, parent) {
                        o.remove(last);
                    }
                    serde_json::to_vec(&v).unwrap()
                }
                1 if !all.is_empty() => {
                    let p = &all[rng.usize(..all.len())];
                    let replacement = match rng.u8(..5) {
                        0 => Value::Null,
                        1 => Value::from(-7),
                        2 => Value::from("not-what-you-expect"),
                        3 => Value::Array(vec![Value::from(1)]),
                        _ => serde_json::json!({"x": true}),
                    };
                    if let Some(s) = slot(&mut v, p) {
                        *s = replacement;
                    }
                    serde_json::to_vec(&v).unwrap()
                }
                2 => {
                    let mut b = serde_json::to_vec(&v).unwrap();
                    b.truncate(rng.usize(1..b.len()));
                    b
                }
                _ => serde_json::to_vec(&v).unwrap(),
            };
            let source = Source {
                topic: Arc::from(topic.as_str()),
                partition: 0,
                offset: n as i64,
            };
            let raw = RawRecord {
                source: &source,
                key: None,
                value: Some(&bytes),
                headers: RawHeaders::NONE,
            };
            match engine
                .process(&raw, &mut store, &mut reg)
                .expect("the file registry never fails")
            {
                Outcome::DeadLettered { record, rejection } => {
                    assert_eq!(record.value.as_deref(), Some(bytes.as_slice()));
                    assert!(
                        !rejection.detail.contains("not-what-you-expect"),
                        "{}",
                        rejection.detail
                    );
                    dead += 1;
                }
                _ => routed += 1,
            }
        }
        assert!(
            routed > 0 && dead > 0,
            "{topology}: routed {routed}, dead-lettered {dead}"
        );
    }
}

/// The JSON pass against the tree path on the edge cases of JSON it reads
/// or leaves alone: every value of real events (array items included)
/// replaced by numbers in each form (`-0`, fractions, exponents, out of
/// range), escapes, `null`, other shapes, and each object wrapped as a
/// union's tagged form; each field removed; each key of each object given
/// twice; the whole text pretty-printed or with its top-level keys
/// reversed. Both give the same outcome for each.
#[test]
fn the_json_pass_agrees_on_edge_cases() {
    const PLACE: &str = "\"__placeholder__\"";
    const RAW: [&str; 17] = [
        "-0",
        "0",
        "-5",
        "1.0",
        "1e2",
        "1.5",
        "99999999999999999999",
        "2147483648",
        "null",
        "true",
        "\"\\u0041b\"",
        "\"a\\\"b\"",
        "\"x\"",
        "{}",
        "[]",
        "{\"null\":null}",
        "[1]",
    ];
    fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        let children: Vec<(Value, &Value)> = match v {
            Value::Object(o) => o.iter().map(|(k, x)| (Value::from(k.clone()), x)).collect(),
            Value::Array(xs) => xs
                .iter()
                .enumerate()
                .map(|(i, x)| (Value::from(i), x))
                .collect(),
            _ => return,
        };
        for (k, x) in children {
            at.push(k);
            out.push(at.clone());
            paths(x, at, out);
            at.pop();
        }
    }
    /// The object's text once for each of its keys, with that key given
    /// again right after it, `null` the second time: the tree path keeps
    /// the last value of a key (serde_json's rule), so a pass that kept the
    /// first, or cut the second out as a key the schema lacks, disagrees.
    fn duplicated_keys(o: &serde_json::Map<String, Value>) -> Vec<String> {
        (0..o.len())
            .map(|i| {
                let entries: Vec<String> = o
                    .iter()
                    .enumerate()
                    .flat_map(|(j, (k, x))| {
                        let key = Value::from(k.clone());
                        let again = (j == i).then(|| format!("{key}:null"));
                        std::iter::once(format!("{key}:{x}")).chain(again)
                    })
                    .collect();
                format!("{{{}}}", entries.join(","))
            })
            .collect()
    }
    fn slot<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
        let mut cur = v;
        for k in path {
            cur = match k {
                Value::String(k) => cur.as_object_mut()?.get_mut(k)?,
                _ => cur.as_array_mut()?.get_mut(k.as_u64()? as usize)?,
            };
        }
        Some(cur)
    }
    let cfg = Arc::new(EngineConfig {
        format: OutputFormat::Json,
        ..EngineConfig::default()
    });
    let file = avro_folder(&cfg.subjects);
    let names: Vec<String> = file
        .events
        .iter()
        .flat_map(|e| {
            let v: Value = serde_json::from_str(&e.text).unwrap();
            let mut found = Vec::new();
            let mut stack = vec![v];
            while let Some(v) = stack.pop() {
                match v {
                    Value::Object(o) => {
                        if let (Some(Value::String(n)), Some(Value::String(t))) =
                            (o.get("name"), o.get("type"))
                        {
                            if t == "record" {
                                found.push(n.clone());
                                if let Some(Value::String(ns)) = o.get("namespace") {
                                    found.push(format!("{ns}.{n}"));
                                }
                            }
                        }
                        stack.extend(o.into_iter().map(|(_, x)| x));
                    }
                    Value::Array(xs) => stack.extend(xs),
                    _ => {}
                }
            }
            found
        })
        .chain(["null", "string", "long", "map"].map(String::from))
        .collect();
    let engine = |single: bool| {
        let mut e = Engine::new(
            cfg.clone(),
            Some(Hasher::new(b"fuzz-key-0123456789abcdef").unwrap()),
        );
        e.set_single_pass(single);
        e
    };
    let (mut single, mut tree) = (engine(true), engine(false));
    let (mut reg_single, mut reg_tree) = (file.registry.clone(), file.registry.clone());
    let opts = privacy_router::sample::Options {
        seed: 5,
        entities: 3,
        anomalies: false,
        format: privacy_router::sample::Format::Jsonl,
    };
    let events = privacy_router::sample::generate(&file, opts, 60);
    // A version 2 of the first event's type that reads its version 1 events
    // too (one more field, `null` by default): a decoy naming it must not
    // make the pass read a version 1 event with it.
    let first_type: Value =
        serde_json::from_slice::<Value>(&events[0]).unwrap()["event_type"].clone();
    let first = file
        .events
        .iter()
        .find(|e| first_type == e.event_type.as_str())
        .unwrap();
    let mut v2: Value = serde_json::from_str(&first.text).unwrap();
    v2["fields"].as_array_mut().unwrap().push(json!(
        {"name": "zz_extra", "type": ["null", "string"], "default": null, "privacy": "public"}
    ));
    let subject = cfg.subjects.subject("events.raw", &first.event_type);
    for reg in [&mut reg_single, &mut reg_tree] {
        reg.register(&subject, &v2.to_string()).unwrap();
    }
    let mut variants: Vec<Vec<u8>> = Vec::new();
    for e in &events {
        let v: Value = serde_json::from_slice(e).unwrap();
        // A nested `event_type` and `schema_version` naming another schema,
        // ahead of the top-level ones (key `aaa`) and after them (`zzz`).
        let decoyed = |event_type: &str, version: u32| {
            let nested =
                format!("{{\"event_type\":\"{event_type}\",\"schema_version\":{version}}}");
            let ahead = format!("{{\"aaa\":{nested},");
            let after = format!(",\"zzz\":{nested}}}");
            [
                [ahead.as_bytes(), &e[1..]].concat(),
                [&e[..e.len() - 1], after.as_bytes()].concat(),
            ]
        };
        if v["event_type"] == first.event_type.as_str() {
            variants.extend(decoyed(&first.event_type, 2));
        }
        variants.push(serde_json::to_vec_pretty(&v).unwrap());
        for other in &file.events {
            variants.extend(decoyed(&other.event_type, other.version));
        }
        if let Value::Object(o) = &v {
            let reversed: Vec<String> = o
                .iter()
                .rev()
                .map(|(k, x)| format!("{}:{x}", Value::from(k.clone())))
                .collect();
            variants.push(format!("{{{}}}", reversed.join(",")).into_bytes());
            variants.extend(duplicated_keys(o).into_iter().map(String::into_bytes));
        }
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        for p in &all {
            let mut w = v.clone();
            let original = slot(&mut w, p).unwrap().clone();
            *slot(&mut w, p).unwrap() = Value::from(&PLACE[1..PLACE.len() - 1]);
            let text = serde_json::to_string(&w).unwrap();
            for raw in RAW {
                variants.push(text.replacen(PLACE, raw, 1).into_bytes());
            }
            if let Value::Object(o) = &original {
                for dup in duplicated_keys(o) {
                    variants.push(text.replacen(PLACE, &dup, 1).into_bytes());
                }
            }
            if original.is_object() {
                for n in &names {
                    let tagged = format!("{{{}:{original}}}", Value::from(n.clone()));
                    variants.push(text.replacen(PLACE, &tagged, 1).into_bytes());
                }
            }
            let (last, parent) = p.split_last().unwrap();
            if let (Value::String(last), Some(Value::Object(o))) = (last, slot(&mut w, parent)) {
                o.remove(last);
                variants.push(serde_json::to_vec(&w).unwrap());
            }
        }
    }
    let mut routed = 0;
    for m in &variants {
        let (mut s1, mut s2) = (MemoryStore::default(), MemoryStore::default());
        let a = run_one(&mut single, &mut s1, &mut reg_single, m);
        let b = run_one(&mut tree, &mut s2, &mut reg_tree, m);
        routed += usize::from(matches!(a, Outcome::Routed(_)));
        assert_eq!(a, b, "{}", String::from_utf8_lossy(m));
    }
    // Many read and are routed, so their bodies are compared (12,980 of
    // 87,269: most tagged forms fit no branch).
    assert!(routed > 3000, "routed {routed} of {}", variants.len());
}
