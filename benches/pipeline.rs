//! The whole pure path on ~400-byte events: decode framed Avro → validate →
//! order → project to three tiers → encode three framed outputs.
//!
//! `cargo bench --bench pipeline` (throughput is reported per event).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use privacy_router::config::Topology;
use privacy_router::order::MemoryStore;
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{Outcome, RawRecord, Source};
use privacy_router::registry::file;
use privacy_router::sample::{generate, Format, Options};

const BATCH: usize = 20_000;

fn pure_path(c: &mut Criterion) {
    let topology = Topology::load(Path::new("topology/default.yaml")).unwrap();
    let reg = file::load(
        Path::new("avro"),
        &topology.engine.subjects,
        &topology.spec.input.topics,
    )
    .unwrap();
    let mut registry = reg.registry.clone();
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
    let mut engine = Engine::new(
        topology.engine.clone(),
        Some(Hasher::new(b"bench-key-0123456789abcdef").unwrap()),
    );
    let source = Source {
        topic: Arc::from("events.raw"),
        partition: 0,
        offset: 0,
    };

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("framed_avro_to_three_tiers", |b| {
        b.iter_batched_ref(
            MemoryStore::default,
            |store| {
                let mut bytes = 0usize;
                for e in &events {
                    let raw = RawRecord {
                        source: &source,
                        key: None,
                        value: Some(e),
                        headers: &[],
                    };
                    match engine.process(&raw, store, &mut registry).unwrap() {
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
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, pure_path);
criterion_main!(benches);

/// The allocator the binary ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
