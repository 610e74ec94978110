//! The whole pure path on ~400-byte events: decode framed Avro → validate →
//! order → project to three tiers → encode three framed outputs.
//!
//! `cargo bench --bench pipeline` (throughput is reported per event).
//!
//! For instruction counts, `PIPELINE_BATCHES=k` skips criterion and runs
//! `k` batches once: `bash scripts/callgrind-pipeline.sh` runs it under
//! `valgrind --tool=callgrind` with k = 1 and 3 and reports the difference
//! per event, so set-up and generation cancel out.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, Criterion, Throughput};

use privacy_router::config::Topology;
use privacy_router::order::MemoryStore;
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{Outcome, RawRecord, Source};
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
    fn new() -> Self {
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
                format: Format::Framed,
            },
            BATCH,
        );
        let mean = events.iter().map(Vec::len).sum::<usize>() / events.len();
        eprintln!("{BATCH} events, mean framed size {mean} bytes");
        let engine = Engine::new(
            topology.engine.clone(),
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
                headers: &[],
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
    let mut bench = Bench::new();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("framed_avro_to_three_tiers", |b| b.iter(|| bench.batch()));
    group.finish();
}

criterion_group!(benches, pure_path);

fn main() {
    if let Some(k) = std::env::var("PIPELINE_BATCHES")
        .ok()
        .and_then(|k| k.parse::<usize>().ok())
    {
        let mut bench = Bench::new();
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
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
