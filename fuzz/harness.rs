//! The fuzz harness of `Engine::process`, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`): both compile this file as a module with
//! `#[path = …] mod harness;`, so the set-up, the way fuzz bytes become
//! records and every invariant exist once. It uses only `privacy_router`,
//! `serde_json`, `apache_avro` and `std`, which both crates have.
//!
//! Set-up (once per process): the real schemas of `avro/` through the file
//! registry, plus evolving versions registered on top of the latest version
//! of a few subjects (a restricted field removed, fields relabelled public or
//! internal, fields added with defaults, a record-level default), with every
//! writer's derived tier schemas registered in version order under
//! Confluent's default `BACKWARD` compatibility (so some versions' events
//! meet a refusal: `derived_schema_rejected`). Scenarios: the default
//! topology, a strict variant of it (JSON output, gaps and tier mismatches
//! dead-lettered, a tier limit), and the three adapter topologies with their
//! own schema folders.
//!
//! Per input: a fresh engine, version store and registry overlay, so an
//! input's outcome never depends on the inputs before it and a corpus file
//! replays alike anywhere. Each input is processed up to four times: cold,
//! again with warm caches and the same store (duplicate), with the store one
//! version ahead (stale), and with the store two versions behind (gap).
//!
//! A panic is a finding: `process` panicking, an `EngineError`, a dead letter
//! whose value, key or headers differ from the input, an `x-error-detail`
//! that quotes a string of the input's `data` (six characters or more, and
//! not found in the schemas, the subjects, the topologies, the registry's
//! refusals or the engine's own source, where error text comes from), a tier
//! record on a topic that is not a tier topic, twice on one topic, without
//! a key, or whose Avro value does not decode completely with the derived
//! schema registered for it, a routed event with no tier record, and an
//! ordering verdict that contradicts the contract (§4).

#![allow(dead_code, deprecated)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use privacy_router::config::{EngineConfig, OutputFormat, Topology};
use privacy_router::order::{MemoryStore, Verdict, VersionStore};
use privacy_router::pipeline::Engine;
use privacy_router::project::{derived_schema, Hasher};
use privacy_router::record::{
    OutRecord, Outcome, RawHeaders, RawRecord, Rejection, Routed, Source, Tier,
};
use privacy_router::registry::{file, MemoryRegistry};
use privacy_router::schema::{derived_subject, CompiledSchema, LookupError, SchemaLookup};

/// The fuzz targets, each a folder of `tests/fuzz-corpus/`.
pub(crate) const TARGETS: [&str; 3] = ["framed", "json", "adapter"];

/// The hash key of every scenario.
pub(crate) const HASH_KEY: &[u8] = b"fuzz-key-0123456789";

/// Strings shorter than this in the input are not looked for in error text.
const MIN_QUOTE: usize = 6;

/// Headers every input record carries; a dead letter must keep them.
const ORIGIN_HEADER: (&str, &[u8]) = ("origin", b"fuzz");
const KEY: &[u8] = b"fuzz-record-key";
const PARTITION: i32 = 7;
const OFFSET: i64 = 4242;

/// What the gap pass must see: the store two versions behind the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GapExpect {
    /// Routed with `Verdict::Gap { missing: 1 }`.
    Gap,
    /// Dead-lettered (`ordering.on_gap: dead_letter`).
    DeadLetter,
    /// Ordered by a stream sequence (any increase is accepted) or by the
    /// entity version (a gap), depending on the adapter.
    GapOrAccepted,
}

/// A registry's schemas and subjects after set-up, read-only: every input
/// gets an overlay ([`Lookup`]).
///
/// Set-up registers, in id order, each writer schema's three derived tier
/// schemas in a [`MemoryRegistry`] that enforces Confluent's default
/// `BACKWARD` compatibility, as a production run that met the versions in
/// order would have: what it refused (a field that turns public without a
/// default, say) is refused again when an input needs it.
#[derive(Debug)]
pub(crate) struct BaseRegistry {
    schemas: Vec<Arc<str>>,
    subjects: HashMap<String, Vec<u32>>,
    /// (subject, derived schema) → the registry's refusal.
    refused: HashMap<(String, String), String>,
    /// The registry itself, for registrations set-up did not foresee.
    template: MemoryRegistry,
}

/// Every subject of a registry with its versions' ids, sorted by subject.
fn subject_ids(reg: &mut MemoryRegistry) -> Vec<(String, Vec<u32>)> {
    let subjects = SchemaLookup::subjects(reg).expect("a memory registry answers");
    subjects
        .into_iter()
        .map(|subject| {
            let versions = reg.versions(&subject).expect("a listed subject");
            let ids = versions
                .into_iter()
                .map(|v| reg.version(&subject, v).expect("a listed version").0)
                .collect();
            (subject, ids)
        })
        .collect()
}

impl BaseRegistry {
    fn new(mut reg: MemoryRegistry, config: &EngineConfig) -> BaseRegistry {
        reg.enforce_backward(true);
        let mut writers = Vec::new();
        while let Ok(text) = reg.schema_by_id(writers.len() as u32 + 1) {
            writers.push(text);
        }
        let mut refused = HashMap::new();
        for text in &writers {
            let Ok(schema) = CompiledSchema::compile(text, &config.rules) else {
                continue;
            };
            for tier in Tier::ALL {
                let subject = derived_subject(&config.topics.tiers[tier.index()], &schema);
                let derived = derived_schema(&schema, tier).to_string();
                if let Err(e) = reg.register(&subject, &derived) {
                    refused.insert((subject, derived), e.to_string());
                }
            }
        }
        let subjects = subject_ids(&mut reg).into_iter().collect();
        let mut schemas = Vec::new();
        while let Ok(text) = reg.schema_by_id(schemas.len() as u32 + 1) {
            schemas.push(text);
        }
        BaseRegistry {
            schemas,
            subjects,
            refused,
            template: reg,
        }
    }

    /// Appends what error text may take from the registry: schemas,
    /// subjects, refusals.
    fn vocabulary(&self, out: &mut String) {
        let subjects = self.subjects.keys().map(String::as_str);
        let refusals = self.refused.values().map(String::as_str);
        for text in self
            .schemas
            .iter()
            .map(|s| &**s)
            .chain(subjects)
            .chain(refusals)
        {
            out.push_str(text);
            out.push('\n');
        }
    }

    fn lookup(&self) -> Lookup<'_> {
        Lookup {
            base: self,
            own: None,
            registered: Vec::new(),
        }
    }
}

/// A registry for one input: the base, read-only, until a registration
/// set-up did not foresee makes it a copy of the real registry.
#[derive(Debug)]
pub(crate) struct Lookup<'a> {
    base: &'a BaseRegistry,
    own: Option<MemoryRegistry>,
    /// (subject, id) of each successful registration.
    registered: Vec<(String, u32)>,
}

impl Lookup<'_> {
    fn ids(&self, subject: &str) -> Option<&Vec<u32>> {
        self.base.subjects.get(subject)
    }

    fn text(&mut self, id: u32) -> Option<Arc<str>> {
        if let Some(own) = &mut self.own {
            return own.schema_by_id(id).ok();
        }
        let i = (id as usize).checked_sub(1)?;
        self.base.schemas.get(i).cloned()
    }
}

impl SchemaLookup for Lookup<'_> {
    fn schema_by_id(&mut self, id: u32) -> Result<Arc<str>, LookupError> {
        self.text(id).ok_or(LookupError::NotFound)
    }

    fn latest(&mut self, subject: &str) -> Result<(u32, Arc<str>), LookupError> {
        if let Some(own) = &mut self.own {
            return own.latest(subject);
        }
        let id = *self
            .ids(subject)
            .and_then(|v| v.last())
            .ok_or(LookupError::NotFound)?;
        Ok((id, self.text(id).ok_or(LookupError::NotFound)?))
    }

    fn version(&mut self, subject: &str, version: u32) -> Result<(u32, Arc<str>), LookupError> {
        if let Some(own) = &mut self.own {
            return own.version(subject, version);
        }
        let id = *self
            .ids(subject)
            .and_then(|v| v.get((version as usize).checked_sub(1)?))
            .ok_or(LookupError::NotFound)?;
        Ok((id, self.text(id).ok_or(LookupError::NotFound)?))
    }

    fn subjects(&mut self) -> Result<Vec<String>, LookupError> {
        if let Some(own) = &mut self.own {
            return SchemaLookup::subjects(own);
        }
        let mut v: Vec<String> = self.base.subjects.keys().cloned().collect();
        v.sort();
        Ok(v)
    }

    fn versions(&mut self, subject: &str) -> Result<Vec<u32>, LookupError> {
        if let Some(own) = &mut self.own {
            return own.versions(subject);
        }
        let n = self.ids(subject).ok_or(LookupError::NotFound)?.len();
        Ok((1..=n as u32).collect())
    }

    fn register(&mut self, subject: &str, schema: &str) -> Result<u32, LookupError> {
        if self.own.is_none() {
            let base = self.base;
            if let Some(id) = base.subjects.get(subject).and_then(|ids| {
                ids.iter()
                    .copied()
                    .find(|id| &*base.schemas[*id as usize - 1] == schema)
            }) {
                self.registered.push((subject.to_owned(), id));
                return Ok(id);
            }
            if let Some(why) = base.refused.get(&(subject.to_owned(), schema.to_owned())) {
                return Err(LookupError::Refused(why.clone()));
            }
            self.own = Some(base.template.clone());
        }
        let own = self.own.as_mut().expect("just made");
        let id = own.register(subject, schema)?;
        self.registered.push((subject.to_owned(), id));
        Ok(id)
    }
}

/// One topology with its registry.
#[derive(Debug)]
pub(crate) struct Scenario {
    name: String,
    config: Arc<EngineConfig>,
    registry: Arc<BaseRegistry>,
    /// The input topic records come from.
    topic: Arc<str>,
    adapter: bool,
    gap: GapExpect,
}

/// Everything the targets need, built once.
#[derive(Debug)]
pub(crate) struct Harness {
    /// The default topology (`Topology::default_embedded`).
    default: Scenario,
    /// The default topology with JSON output, gaps and tier mismatches
    /// dead-lettered, and `user.login_failed` limited to restricted.
    strict: Scenario,
    /// The adapter topologies (auth-identity, user-catalogue, user-service).
    adapters: Vec<Scenario>,
    /// The writer schema ids a framed input's first byte chooses from.
    writer_ids: Vec<u32>,
    hasher: Hasher,
    /// Text whose words may appear in error details: schemas, subjects,
    /// topologies, the engine's source.
    vocabulary: String,
}

/// One change of a payload record from one version to the next.
enum Change {
    Remove(&'static str),
    Label(&'static str, &'static str),
    Unlabel(&'static str),
    Add(Value),
    RecordDefault(&'static str),
}

/// The versions registered on top of the latest one in `avro/`, per event
/// type: each entry is the change list of one further version. Some are
/// backward compatible in every tier; some make a derived tier schema gain
/// a field without a default, which the registry refuses
/// (`derived_schema_rejected` for the events of that version).
fn evolutions() -> Vec<(&'static str, Vec<Vec<Change>>)> {
    use Change::*;
    vec![
        (
            "user.created",
            vec![
                // A restricted field removed, two fields with defaults
                // relabelled internal and public: compatible.
                vec![
                    Remove("signup_ip_address"),
                    Label("phone", "internal"),
                    Label("referrer_user_id", "public"),
                ],
                // A public field and an unlabelled one (fail closed) added
                // with defaults; a field without a default relabelled public:
                // the public tier's schema is refused.
                vec![
                    Add(
                        json!({"name": "nickname", "type": ["null", "string"], "default": null,
                               "privacy": "public"}),
                    ),
                    Add(json!({"name": "referral_code", "type": "string", "default": ""})),
                    Label("marketing_opt_in", "public"),
                ],
            ],
        ),
        (
            "order.created",
            vec![
                vec![
                    Remove("buyer_phone"),
                    Add(json!({"name": "gift_message", "type": ["null", "string"],
                               "default": null, "privacy": "restricted", "redact": "hash"})),
                ],
                vec![
                    // (shipping_address defines the address type that
                    // billing_address names, so only the latter can go.)
                    Remove("billing_address"),
                    Add(json!({"name": "coupon_code", "type": ["null", "string"],
                               "default": null, "privacy": "public"})),
                ],
            ],
        ),
        (
            "user.login_failed",
            // A record default that unlabelled fields take, a field relabelled
            // public: tiers gain fields without defaults (refused).
            vec![vec![
                RecordDefault("internal"),
                Unlabel("device_id"),
                Unlabel("login_method"),
                Add(json!({"name": "geo_country", "type": ["null", "string"],
                           "default": null})),
                Label("attempted_at", "public"),
            ]],
        ),
        (
            "product.created",
            vec![vec![
                RecordDefault("public"),
                Add(json!({"name": "launch_note", "type": ["null", "string"],
                           "default": null})),
            ]],
        ),
    ]
}

fn apply(payload: &mut Value, changes: &[Change]) {
    let Some(record) = payload.as_object_mut() else {
        return;
    };
    if let Some(Change::RecordDefault(tier)) = changes
        .iter()
        .find(|c| matches!(c, Change::RecordDefault(_)))
    {
        record.insert("privacy".into(), json!(tier));
    }
    let Some(fields) = record.get_mut("fields").and_then(Value::as_array_mut) else {
        return;
    };
    for change in changes {
        let find =
            |fields: &mut Vec<Value>, name: &str| fields.iter().position(|f| f["name"] == name);
        match change {
            Change::Remove(name) => {
                if let Some(i) = find(fields, name) {
                    fields.remove(i);
                }
            }
            Change::Label(name, tier) => {
                if let Some(i) = find(fields, name) {
                    fields[i]["privacy"] = json!(tier);
                    if let Some(f) = fields[i].as_object_mut() {
                        f.remove("confluent:tags");
                    }
                }
            }
            Change::Unlabel(name) => {
                if let Some(i) = find(fields, name) {
                    if let Some(f) = fields[i].as_object_mut() {
                        f.remove("privacy");
                        f.remove("confluent:tags");
                    }
                }
            }
            Change::Add(field) => {
                if find(fields, field["name"].as_str().unwrap_or_default()).is_none() {
                    fields.push(field.clone());
                }
            }
            Change::RecordDefault(_) => {}
        }
    }
}

/// Registers the evolving versions of [`evolutions`] in `reg`.
fn evolve(reg: &mut file::FileRegistry, topology: &Topology) {
    for (event_type, versions) in evolutions() {
        let Some(latest) = reg
            .events
            .iter()
            .filter(|e| e.event_type == event_type)
            .max_by_key(|e| e.version)
        else {
            continue;
        };
        let mut schema: Value = serde_json::from_str(&latest.text).expect("a composed schema");
        for (i, changes) in versions.iter().enumerate() {
            let data = schema["fields"]
                .as_array_mut()
                .and_then(|fs| fs.iter_mut().find(|f| f["name"] == "data"))
                .expect("the envelope has a data field");
            apply(&mut data["type"], changes);
            let text = schema.to_string();
            // A registry takes only valid schemas: an evolution that the
            // schemas in avro/ no longer allow is left out (with the
            // versions after it), not registered.
            if let Err(e) = CompiledSchema::compile(&text, &topology.engine.rules) {
                let version = latest.version as usize + 1 + i;
                eprintln!("fuzz harness: version {version} of {event_type} left out: {e}");
                break;
            }
            for topic in &topology.spec.input.topics {
                let subject = topology.engine.subjects.subject(topic, event_type);
                reg.registry
                    .register(&subject, &text)
                    .expect("the memory registry takes any JSON");
            }
        }
    }
}

fn read_tree(dir: &Path, ext: &str, out: &mut String) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            read_tree(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            if let Ok(text) = fs::read_to_string(&p) {
                out.push_str(&text);
                out.push('\n');
            }
        }
    }
}

impl Harness {
    /// Builds every scenario from the repository at `root` (the folder of
    /// `avro/`, `topology/` and `src/`); the working directory is left as
    /// it is (libFuzzer writes its corpus relative to it).
    pub(crate) fn new(root: &Path) -> Harness {
        let hasher = Hasher::new(HASH_KEY).expect("a long enough key");
        let mut vocabulary = String::new();
        read_tree(&root.join("src"), "rs", &mut vocabulary);
        read_tree(&root.join("topology"), "yaml", &mut vocabulary);
        read_tree(&root.join("avro"), "avsc", &mut vocabulary);

        // The default topology and its evolving registry.
        let topology = Topology::default_embedded();
        let mut reg = file::load(
            &root.join("avro"),
            &topology.engine.subjects,
            &topology.spec.input.topics,
        )
        .expect("avro/ loads");
        evolve(&mut reg, &topology);
        let writers = subject_ids(&mut reg.registry)
            .iter()
            .flat_map(|(_, ids)| ids.iter())
            .max()
            .copied()
            .unwrap_or(0);
        let registry = Arc::new(BaseRegistry::new(reg.registry, &topology.engine));
        let writer_ids = (1..=writers).collect();
        registry.vocabulary(&mut vocabulary);
        let topic: Arc<str> = Arc::from(topology.spec.input.topics[0].as_str());
        let default = Scenario {
            name: "default".into(),
            config: topology.engine.clone(),
            registry: registry.clone(),
            topic: topic.clone(),
            adapter: false,
            gap: GapExpect::Gap,
        };
        let strict_yaml = "outputs:\n  format: json\nordering:\n  on_gap: dead_letter\n\
                           classification:\n  on_tier_mismatch: dead_letter\n\
                           event_types:\n  user.login_failed: {tiers: [restricted]}\n";
        let strict_topology = Topology::parse(Path::new("<fuzz-strict>"), strict_yaml)
            .unwrap_or_else(|e| panic!("the strict topology: {e:?}"));
        assert_eq!(strict_topology.engine.format, OutputFormat::Json);
        assert_eq!(
            strict_topology.spec.input.topics, topology.spec.input.topics,
            "the strict topology reads the default registry"
        );
        let strict = Scenario {
            name: "strict".into(),
            config: strict_topology.engine.clone(),
            registry,
            topic,
            adapter: false,
            gap: GapExpect::DeadLetter,
        };

        let mut adapters = Vec::new();
        for file_name in [
            "topology/auth-identity.yaml",
            "topology/user-catalogue.yaml",
            "topology/user-service.yaml",
        ] {
            let t = Topology::load(&root.join(file_name))
                .unwrap_or_else(|e| panic!("{file_name}: {e:?}"));
            let reg = file::load(
                &root.join(&t.spec.schemas.folder),
                &t.engine.subjects,
                &t.spec.input.topics,
            )
            .unwrap_or_else(|e| panic!("{file_name}: {e}"));
            let registry = Arc::new(BaseRegistry::new(reg.registry, &t.engine));
            registry.vocabulary(&mut vocabulary);
            let mut topics: Vec<&Arc<str>> = t.engine.adapters.keys().collect();
            topics.sort();
            let topic = topics
                .first()
                .map(|t| (*t).clone())
                .unwrap_or_else(|| panic!("{file_name} has no adapter"));
            adapters.push(Scenario {
                name: file_name.into(),
                config: t.engine.clone(),
                registry,
                topic,
                adapter: true,
                gap: GapExpect::GapOrAccepted,
            });
        }
        Harness {
            default,
            strict,
            adapters,
            writer_ids,
            hasher,
            vocabulary,
        }
    }

    /// Runs the target `name` on one input.
    pub(crate) fn run(&self, name: &str, data: &[u8]) {
        match name {
            "framed" => self.framed(data),
            "json" => self.json(data),
            "adapter" => self.adapter(data),
            other => panic!("no fuzz target {other}"),
        }
    }

    /// Confluent-framed Avro: the first byte chooses a registered writer
    /// schema (bit 7: the strict topology), the rest is the Avro body. The
    /// input is also offered unframed, as the raw value.
    pub(crate) fn framed(&self, data: &[u8]) {
        let Some((&selector, body)) = data.split_first() else {
            return;
        };
        let id = self.writer_ids[(selector & 0x7f) as usize % self.writer_ids.len()];
        let mut value = Vec::with_capacity(body.len() + 5);
        value.push(0);
        value.extend_from_slice(&id.to_be_bytes());
        value.extend_from_slice(body);
        let scenario = if selector & 0x80 == 0 {
            &self.default
        } else {
            &self.strict
        };
        self.check(scenario, &value);
        self.check(&self.default, data);
    }

    /// A canonical JSON event (or any bytes) as the value, under the default
    /// and the strict topology.
    pub(crate) fn json(&self, data: &[u8]) {
        self.check(&self.default, data);
        self.check(&self.strict, data);
    }

    /// A producer's own JSON event (or any bytes) on each adapter topology.
    pub(crate) fn adapter(&self, data: &[u8]) {
        for s in &self.adapters {
            self.check(s, data);
        }
    }

    fn process(
        &self,
        s: &Scenario,
        engine: &mut Engine,
        raw: &RawRecord<'_>,
        store: &mut MemoryStore,
        lookup: &mut Lookup<'_>,
        pass: &str,
    ) -> Outcome {
        match engine.process(raw, store, lookup) {
            Ok(o) => {
                self.check_outcome(s, raw, &o, lookup, pass);
                o
            }
            Err(e) => panic!("[{} {pass}] process returned an error: {e:?}", s.name),
        }
    }

    /// Every invariant for one value under one scenario.
    fn check(&self, s: &Scenario, value: &[u8]) {
        let source = Source {
            topic: s.topic.clone(),
            partition: PARTITION,
            offset: OFFSET,
        };
        let headers = vec![(ORIGIN_HEADER.0.to_owned(), ORIGIN_HEADER.1.to_vec())];
        let raw = RawRecord {
            source: &source,
            key: Some(KEY),
            value: Some(value),
            headers: (&headers).into(),
        };
        let mut engine = Engine::new(s.config.clone(), Some(self.hasher.clone()));
        let mut lookup = s.registry.lookup();
        let mut store = MemoryStore::default();

        let first = self.process(s, &mut engine, &raw, &mut store, &mut lookup, "cold");
        let label = match &first {
            Outcome::Routed(r) => r.verdict.label(),
            Outcome::Skipped(v) => v.label(),
            Outcome::DeadLettered { rejection, .. } => rejection.reason.code(),
            Outcome::Held { .. } => "held",
        };
        OUTCOMES.with(|o| *o.borrow_mut().entry((s.name.clone(), label)).or_default() += 1);
        if let Outcome::Skipped(v) = &first {
            panic!(
                "[{}] an empty version store skipped the event as {v:?}",
                s.name
            );
        }
        // The same record again, warm caches, same store.
        let second = self.process(s, &mut engine, &raw, &mut store, &mut lookup, "again");
        match (&first, &second) {
            (
                Outcome::DeadLettered { rejection: a, .. },
                Outcome::DeadLettered { rejection: b, .. },
            ) => assert_eq!(
                a.reason, b.reason,
                "[{}] the same record was rejected differently with warm caches",
                s.name
            ),
            (Outcome::Routed(r), Outcome::Skipped(Verdict::Duplicate)) if r.state.is_some() => {}
            (Outcome::Routed(a), Outcome::Routed(b))
                if a.state.is_none() && a.verdict == Verdict::Unordered =>
            {
                assert_eq!(
                    a.records, b.records,
                    "[{}] an unordered event was routed differently the second time",
                    s.name
                );
            }
            (a, b) => panic!(
                "[{}] the same record twice: first {}, then {}",
                s.name,
                describe(a),
                describe(b)
            ),
        }
        let Outcome::Routed(Routed {
            state: Some(state), ..
        }) = &first
        else {
            return;
        };
        // The store one version ahead: stale.
        if let Some(ahead) = state.version.checked_add(1) {
            let mut store = MemoryStore::default();
            store.record(&state.key, ahead);
            let o = self.process(s, &mut engine, &raw, &mut store, &mut lookup, "stale");
            assert!(
                matches!(o, Outcome::Skipped(Verdict::Stale)),
                "[{}] version {} after {ahead}: {}",
                s.name,
                state.version,
                describe(&o)
            );
        }
        // The store two versions behind: a gap of one.
        if let Some(behind) = state.version.checked_sub(2) {
            let mut store = MemoryStore::default();
            store.record(&state.key, behind);
            let o = self.process(s, &mut engine, &raw, &mut store, &mut lookup, "gap");
            let ok = match (&o, s.gap) {
                (Outcome::Routed(r), GapExpect::Gap) => r.verdict == Verdict::Gap { missing: 1 },
                (Outcome::Routed(r), GapExpect::GapOrAccepted) => {
                    matches!(r.verdict, Verdict::Gap { missing: 1 } | Verdict::Accepted)
                }
                (Outcome::DeadLettered { .. }, GapExpect::DeadLetter) => true,
                _ => false,
            };
            assert!(
                ok,
                "[{}] version {} after {behind}: {}",
                s.name,
                state.version,
                describe(&o)
            );
            if let Outcome::Routed(r) = &o {
                let topics = |r: &Routed| r.records.iter().map(|x| x.topic).collect::<Vec<_>>();
                let Outcome::Routed(f) = &first else {
                    unreachable!()
                };
                assert_eq!(
                    topics(r),
                    topics(f),
                    "[{}] a gap reaches other tiers than the accepted event",
                    s.name
                );
            }
        }
    }

    fn check_outcome(
        &self,
        s: &Scenario,
        raw: &RawRecord<'_>,
        o: &Outcome,
        lookup: &mut Lookup<'_>,
        pass: &str,
    ) {
        match o {
            Outcome::DeadLettered { record, rejection } => {
                self.check_dead_letter(s, raw, record, rejection, pass)
            }
            Outcome::Routed(r) => self.check_routed(s, r, lookup, pass),
            // An empty store never holds; the harness's scenarios do not hold.
            Outcome::Skipped(_) | Outcome::Held { .. } => {}
        }
    }

    fn check_dead_letter(
        &self,
        s: &Scenario,
        raw: &RawRecord<'_>,
        record: &OutRecord,
        rejection: &Rejection,
        pass: &str,
    ) {
        let name = &s.name;
        assert_eq!(
            record.topic, s.config.topics.dead_letter,
            "[{name} {pass}] a dead letter on another topic"
        );
        assert!(
            record.value.as_deref() == raw.value,
            "[{name} {pass}] the dead letter's value is not the input's ({})",
            rejection.reason.code()
        );
        assert_eq!(
            record.key.as_deref(),
            raw.key,
            "[{name} {pass}] the dead letter's key"
        );
        assert_eq!(
            record.header(ORIGIN_HEADER.0),
            Some(ORIGIN_HEADER.1),
            "[{name} {pass}] the dead letter lost an input header"
        );
        let header = |n: &str| {
            record
                .header(n)
                .unwrap_or_else(|| panic!("[{name} {pass}] the dead letter has no {n} header"))
        };
        assert_eq!(header("x-error-reason"), rejection.reason.code().as_bytes());
        assert_eq!(header("x-error-detail"), rejection.detail.as_bytes());
        assert_eq!(header("x-source-topic"), s.topic.as_bytes());
        assert_eq!(
            header("x-source-partition"),
            PARTITION.to_string().as_bytes()
        );
        assert_eq!(header("x-source-offset"), OFFSET.to_string().as_bytes());
        // Kafka Streams' names (KIP-1034) for the same facts.
        assert_eq!(
            header("__streams.errors.exception"),
            rejection.reason.code().as_bytes()
        );
        assert_eq!(
            header("__streams.errors.message"),
            rejection.detail.as_bytes()
        );
        assert_eq!(header("__streams.errors.topic"), s.topic.as_bytes());
        assert_eq!(
            header("__streams.errors.partition"),
            PARTITION.to_string().as_bytes()
        );
        assert_eq!(
            header("__streams.errors.offset"),
            OFFSET.to_string().as_bytes()
        );
        self.check_no_quote(s, raw.value.unwrap_or_default(), &rejection.detail, pass);
    }

    /// The detail quotes no string of the input's `data` (the whole event for
    /// an adapter, whose event is its own payload).
    ///
    /// A string found in the detail and nowhere in the vocabulary is a
    /// suspect, not yet a finding: error text is built from templates and
    /// schema names, and a payload string may match across their seams
    /// (`"at is not an ISO 8601"` in `occurred_at is not an ISO 8601 UTC
    /// instant`). So the event is processed again with that string shifted
    /// (a→b, 0→1, …) wherever it stands in the payload; only when the new
    /// detail holds the shifted string does the detail quote the payload.
    fn check_no_quote(&self, s: &Scenario, value: &[u8], detail: &str, pass: &str) {
        if detail.len() < MIN_QUOTE || value.first() != Some(&b'{') {
            return;
        }
        let Ok(doc) = serde_json::from_slice::<Value>(value) else {
            return;
        };
        let payload = if s.adapter {
            Some(&doc)
        } else {
            doc.get("data")
        };
        let Some(payload) = payload else {
            return;
        };
        let mut strings = Vec::new();
        collect_strings(payload, &mut strings, 0);
        for q in strings {
            if q.chars().count() < MIN_QUOTE || !detail.contains(q) || self.vocabulary.contains(q) {
                continue;
            }
            let shifted = shift(q);
            if shifted == q || self.vocabulary.contains(&shifted) {
                continue;
            }
            let mut changed = doc.clone();
            let payload = if s.adapter {
                Some(&mut changed)
            } else {
                changed.get_mut("data")
            };
            if let Some(p) = payload {
                replace_strings(p, q, &shifted, 0);
            }
            let bytes = serde_json::to_vec(&changed).expect("a JSON value serialises");
            if let Some(again) = self.detail_of(s, &bytes) {
                assert!(
                    !again.contains(&shifted),
                    "[{} {pass}] x-error-detail quotes the payload string {q:?}: {detail:?} \
                     (with {shifted:?} in its place: {again:?})",
                    s.name
                );
            }
        }
    }

    /// The detail of the dead letter a fresh engine makes of `value`, if any.
    fn detail_of(&self, s: &Scenario, value: &[u8]) -> Option<String> {
        let source = Source {
            topic: s.topic.clone(),
            partition: PARTITION,
            offset: OFFSET,
        };
        let raw = RawRecord {
            source: &source,
            key: Some(KEY),
            value: Some(value),
            headers: RawHeaders::NONE,
        };
        let mut engine = Engine::new(s.config.clone(), Some(self.hasher.clone()));
        let mut lookup = s.registry.lookup();
        match engine.process(&raw, &mut MemoryStore::default(), &mut lookup) {
            Ok(Outcome::DeadLettered { rejection, .. }) => Some(rejection.detail),
            _ => None,
        }
    }

    fn check_routed(&self, s: &Scenario, r: &Routed, lookup: &mut Lookup<'_>, pass: &str) {
        let name = &s.name;
        assert!(
            !r.records.is_empty(),
            "[{name} {pass}] a routed event reached no tier"
        );
        let tiers = &s.config.topics.tiers;
        let mut seen = [false; 3];
        for rec in &r.records {
            let Some(i) = tiers.iter().position(|t| *t == rec.topic) else {
                panic!(
                    "[{name} {pass}] a tier record on {:?}, which is not a tier topic",
                    rec.topic
                );
            };
            assert!(!seen[i], "[{name} {pass}] two records on {}", rec.topic);
            seen[i] = true;
            let tier = Tier::ALL[i];
            assert!(
                rec.key.is_some(),
                "[{name} {pass}] a tier record without a key"
            );
            assert_eq!(
                rec.header("privacy_tier"),
                Some(tier.as_str().as_bytes()),
                "[{name} {pass}] the tier header of {}",
                rec.topic
            );
            let value = rec
                .value
                .as_deref()
                .unwrap_or_else(|| panic!("[{name} {pass}] a tier record without a value"));
            match s.config.format {
                OutputFormat::Avro => check_avro(name, pass, &rec.topic, value, lookup),
                OutputFormat::Json => {
                    let v: Value = serde_json::from_slice(value).unwrap_or_else(|e| {
                        panic!("[{name} {pass}] a JSON tier record is not JSON: {e}")
                    });
                    assert!(
                        v.is_object(),
                        "[{name} {pass}] a JSON tier record is not an object"
                    );
                }
            }
        }
        if let Some(limit) = r
            .records
            .first()
            .and_then(|rec| rec.header("event_type"))
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| s.config.tier_limits.get(t))
        {
            for (i, _) in seen.iter().enumerate().filter(|(_, s)| **s) {
                assert!(
                    limit.contains(&Tier::ALL[i]),
                    "[{name} {pass}] a tier record beyond the event type's tier limit"
                );
            }
        }
    }
}

thread_local! {
    /// How the first pass of each input ended, per scenario.
    static OUTCOMES: RefCell<BTreeMap<(String, &'static str), u64>> =
        const { RefCell::new(BTreeMap::new()) };
    /// Derived schemas parsed by apache-avro, by text.
    static PARSED: RefCell<HashMap<Arc<str>, apache_avro::Schema>> = RefCell::new(HashMap::new());
}

/// A tier record in Confluent wire format decodes completely with the
/// schema registered for its id, under a subject of its own topic.
fn check_avro(name: &str, pass: &str, topic: &str, value: &[u8], lookup: &mut Lookup<'_>) {
    assert!(
        value.len() >= 5 && value[0] == 0,
        "[{name} {pass}] a tier record on {topic} is not Confluent-framed"
    );
    let id = u32::from_be_bytes(value[1..5].try_into().expect("4 bytes"));
    let prefix = format!("{topic}-");
    assert!(
        lookup
            .registered
            .iter()
            .any(|(subject, i)| *i == id && subject.starts_with(&prefix)),
        "[{name} {pass}] a tier record on {topic} names schema {id}, not registered under a subject of {topic}"
    );
    let text = lookup.text(id).expect("registered");
    PARSED.with(|parsed| {
        let mut parsed = parsed.borrow_mut();
        if !parsed.contains_key(&text) {
            let schema = apache_avro::Schema::parse_str(&text).unwrap_or_else(|e| {
                panic!("[{name} {pass}] the derived schema {id} does not parse: {e}")
            });
            if parsed.len() > 4096 {
                parsed.clear();
            }
            parsed.insert(text.clone(), schema);
        }
        let schema = &parsed[&text];
        let mut body = &value[5..];
        if let Err(e) = apache_avro::from_avro_datum(schema, &mut body, None) {
            panic!("[{name} {pass}] a tier record on {topic} does not decode with its schema {id}: {e}");
        }
        assert!(
            body.is_empty(),
            "[{name} {pass}] a tier record on {topic} has {} bytes after its datum",
            body.len()
        );
    });
}

/// How the first pass of the inputs so far ended on this thread: (scenario,
/// verdict or dead-letter reason) → count.
pub(crate) fn outcome_counts() -> BTreeMap<(String, &'static str), u64> {
    OUTCOMES.with(|o| o.borrow().clone())
}

/// Each ASCII letter and digit replaced by the next one (z→a, 9→0).
fn shift(q: &str) -> String {
    q.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            other => other,
        })
        .collect()
}

/// Replaces every string (and object key) equal to `from` by `to`.
fn replace_strings(v: &mut Value, from: &str, to: &str, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::String(s) if s == from => *s = to.to_owned(),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|x| replace_strings(x, from, to, depth + 1)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut x) in entries {
                replace_strings(&mut x, from, to, depth + 1);
                map.insert(if k == from { to.to_owned() } else { k }, x);
            }
        }
        _ => {}
    }
}

fn collect_strings<'v>(v: &'v Value, out: &mut Vec<&'v str>, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items
            .iter()
            .for_each(|x| collect_strings(x, out, depth + 1)),
        Value::Object(map) => {
            for (k, x) in map {
                out.push(k);
                collect_strings(x, out, depth + 1);
            }
        }
        _ => {}
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Routed(r) => format!("routed ({:?}, {} records)", r.verdict, r.records.len()),
        Outcome::Skipped(v) => format!("skipped ({v:?})"),
        Outcome::Held { version, .. } => format!("held (version {version})"),
        Outcome::DeadLettered { rejection, .. } => {
            format!("dead-lettered ({})", rejection.reason.code())
        }
    }
}
