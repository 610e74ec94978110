//! The whole pure path on ~400-byte events: decode framed Avro → validate →
//! order → project to three tiers → encode three framed outputs.
//!
//! `cargo bench --bench pipeline` (throughput is reported per event), for
//! framed Avro in and out, and for JSON in and out (the peers' format).
//!
//! For instruction counts, `PIPELINE_BATCHES=k` (with `PIPELINE_FORMAT=json`
//! for JSON) skips criterion and runs `k` batches once: `bash scripts/callgrind-pipeline.sh` runs it under
//! `valgrind --tool=callgrind` with k = 1 and 3 and reports the difference
//! per event, so set-up and generation cancel out.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, Criterion, Throughput};

use privacy_router::config::{OutputFormat, Topology};
use privacy_router::order::MemoryStore;
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{Outcome, RawHeaders, RawRecord, Source};
use privacy_router::registry::{file, MemoryRegistry};
use privacy_router::sample::{generate, Format, Options};

const BATCH: usize = 20_000;

struct Bench {
    engine: Engine,
    registry: MemoryRegistry,
    events: Vec<Vec<u8>>,
    source: Source,
}

impl Bench {
    /// `json`: JSON envelopes in, JSON tier records out (the peers'
    /// format); framed Avro both ways otherwise.
    fn new(json: bool) -> Self {
        let topology = Topology::load(Path::new("topology/default.yaml")).unwrap();
        let reg = file::load(
            Path::new("avro"),
            &topology.engine.subjects,
            &topology.spec.input.topics,
        )
        .unwrap();
        let registry = reg.registry.clone();
        let events = generate(
            &reg,
            Options {
                seed: 42,
                entities: 2_000,
                anomalies: false,
                format: if json { Format::Jsonl } else { Format::Framed },
            },
            BATCH,
        );
        let mean = events.iter().map(Vec::len).sum::<usize>() / events.len();
        eprintln!("{BATCH} events, mean framed size {mean} bytes");
        let mut config = (*topology.engine).clone();
        if json {
            config.format = OutputFormat::Json;
        }
        let engine = Engine::new(
            Arc::new(config),
            Some(Hasher::new(b"bench-key-0123456789abcdef").unwrap()),
        );
        let source = Source {
            topic: Arc::from("events.raw"),
            partition: 0,
            offset: 0,
        };
        Bench {
            engine,
            registry,
            events,
            source,
        }
    }

    /// One batch through the engine with a fresh version store.
    fn batch(&mut self) -> usize {
        let mut store = MemoryStore::default();
        let mut bytes = 0usize;
        for e in &self.events {
            let raw = RawRecord {
                source: &self.source,
                key: None,
                value: Some(e),
                headers: RawHeaders::NONE,
            };
            match self
                .engine
                .process(&raw, &mut store, &mut self.registry)
                .unwrap()
            {
                Outcome::Routed(r) => {
                    bytes += r
                        .records
                        .iter()
                        .map(|r| r.value.as_ref().map_or(0, Vec::len))
                        .sum::<usize>()
                }
                other => panic!("bench events are all accepted: {other:?}"),
            }
        }
        black_box(bytes)
    }
}

fn pure_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    let mut bench = Bench::new(false);
    group.bench_function("framed_avro_to_three_tiers", |b| b.iter(|| bench.batch()));
    let mut bench = Bench::new(true);
    group.bench_function("json_to_three_json_tiers", |b| b.iter(|| bench.batch()));
    group.finish();
}

criterion_group!(benches, pure_path);

fn main() {
    if let Some(k) = std::env::var("PIPELINE_BATCHES")
        .ok()
        .and_then(|k| k.parse::<usize>().ok())
    {
        let json = std::env::var("PIPELINE_FORMAT").is_ok_and(|f| f == "json");
        let mut bench = Bench::new(json);
        for _ in 0..k {
            bench.batch();
        }
        eprintln!("{k} batches of {BATCH} events");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// The allocator the binary ships with.
#[global_allocator]
static GLOBAL: mimalloc_natural::MiMalloc = mimalloc_natural::MiMalloc;
