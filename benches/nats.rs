//! NATS JetStream benchmark: `privacy-router run` reading a JetStream stream
//! (`input.nats_jetstream`) into the tier topics of a Kafka on this machine.
//! Run it with `bash scripts/bench-nats.sh` (or `cargo bench --bench nats
//! -- --help`).
//!
//! One Kafka (scripts/kafka.sh), one NATS server with JetStream
//! (scripts/nats.sh, in `target/bench-nats`), one fresh stream (file
//! storage, retention limits) with one subject, fresh output topics (tiers
//! with 3 partitions, dead letters with 1; the processor creates its
//! changelog and lease topic), one processor. Phases:
//! * **throughput**: N generated events (the sample's mix, every anomaly,
//!   Confluent-framed Avro, the file registry over `avro/`) are published
//!   to the stream before the processor starts; then the processor runs
//!   until the commit that covers the last of them. The headline rate
//!   counts from its first committed transaction to that commit (polling
//!   `/metrics` every 20 ms); the e2e benchmark's measure (first record
//!   read to last commit) and the one from the process start are reported
//!   too. CPU seconds from `/proc/<pid>/stat`, peak RSS (VmHWM). Afterwards
//!   every output topic is counted (`read_committed`) against what the pure
//!   engine emits for the same messages.
//! * **latency**: with the processor running and caught up, events are
//!   published at a steady rate; a `read_committed` reader of the
//!   restricted topic takes, for every record, its receive time minus the
//!   record's timestamp. Outputs keep the input's timestamp, which for a
//!   JetStream message is the time the server stored it: so this is
//!   publish → committed output. The publish → stream acknowledgement time
//!   is the control.
//!
//! Without `--bench` (as `cargo test` runs it), or with `--test`, it does a
//! small smoke run on the Kafka and NATS the test script shares
//! (`KAFKA_BOOTSTRAP`, `NATS_URL`), or on its own when they are not set, so
//! the harness itself is tested.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use privacy_router::config::Topology;
use privacy_router::order::hold::Holdback;
use privacy_router::order::MemoryStore;
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{Outcome, RawHeaders, RawRecord, Source};
use privacy_router::registry::file::{self, FileRegistry};
use privacy_router::registry::MemoryRegistry;
use privacy_router::reorder::Reorder;
use privacy_router::runtime::kafka::QuietContext;
use privacy_router::sample::{Format, Generator, Options};

#[global_allocator]
static GLOBAL: mimalloc_natural::MiMalloc = mimalloc_natural::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "nats",
    about = "Benchmark of privacy-router reading NATS JetStream into a local Kafka"
)]
struct Args {
    /// Kafka: `kafka` (a one-node Apache Kafka of the bench's own, from
    /// scripts/kafka.sh) or `shared` (the one in KAFKA_BOOTSTRAP).
    #[arg(long, default_value = "kafka")]
    broker: String,
    /// NATS: `own` (a server of the bench's own, scripts/nats.sh in
    /// --nats-dir) or `shared` (the one in NATS_URL).
    #[arg(long, default_value = "own")]
    nats: String,
    /// Folder of the bench's own NATS server (its JetStream store is
    /// emptied first).
    #[arg(long, default_value = "target/bench-nats")]
    nats_dir: PathBuf,
    /// Events of the throughput phase, published before the processor
    /// starts.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Input rate of the latency phase, events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 30)]
    latency_secs: u64,
    /// Phases to run: throughput, latency (without throughput, 1,000
    /// events are processed first, so the processor is running and caught
    /// up when the latency phase starts).
    #[arg(long, value_delimiter = ',', default_value = "throughput,latency")]
    phases: Vec<String>,
    /// Entities per domain the generator draws from.
    #[arg(long, default_value_t = 20_000)]
    entities: usize,
    /// Extra librdkafka settings for the processor (KEY=VALUE).
    #[arg(short = 'X', long = "kafka-config")]
    kafka_config: Vec<String>,
    /// Where the JSON summary goes.
    #[arg(long, default_value = "target/bench-nats.json")]
    out: PathBuf,
    /// A smoke run (small, quick; what `cargo test` runs).
    #[arg(long)]
    test: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    let bench = raw.iter().any(|a| a == "--bench");
    let args: Vec<String> = raw.into_iter().filter(|a| a != "--bench").collect();
    let mut a = Args::parse_from(args);
    if !bench || a.test {
        // `cargo test` runs bench targets without --bench: a smoke run on
        // the test script's servers when it started them.
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        a.broker = if std::env::var_os("KAFKA_BOOTSTRAP").is_some() {
            "shared".into()
        } else {
            "kafka".into()
        };
        a.nats = if std::env::var_os("NATS_URL").is_some() {
            "shared".into()
        } else {
            "own".into()
        };
        a.nats_dir = tmp.join("bench-nats-smoke");
        a.events = 3000;
        a.latency_secs = 3;
        a.phases = vec!["throughput".into(), "latency".into()];
        a.out = tmp.join("bench-nats-smoke.json");
        let r = run(&a);
        assert_eq!(r["throughput"]["events"], 3000);
        assert_eq!(r["throughput"]["outputs_match_engine"], true, "{r:#}");
        assert_eq!(r["latency"]["outputs_match_engine"], true, "{r:#}");
        assert!(r["latency"]["p95_ms"].as_i64().unwrap_or(-1) >= 0, "{r:#}");
        println!("nats smoke run passed");
        return;
    }
    let r = run(&a);
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    let tp = r["throughput"]["events_per_s"]
        .as_f64()
        .map_or("n/a".to_owned(), |x| format!("{x:.0}"));
    let p95 = r["latency"]["p95_ms"]
        .as_i64()
        .map_or("n/a".to_owned(), |x| x.to_string());
    println!("bench-nats: throughput={tp} events/s p95={p95} ms");
}

// The brokers of the broker tests (Apache Kafka from scripts/kafka.sh).
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;

use common::{cpu_secs, Processor};

use support::Broker;

/// A NATS server with JetStream: the test script's (`NATS_URL`) or one of
/// the bench's own (scripts/nats.sh, stopped on drop).
struct Nats {
    url: String,
    /// The server's folder when the bench started it.
    own: Option<PathBuf>,
    /// Its process id, when known (for CPU accounting).
    pid: Option<u32>,
}

impl Nats {
    fn shared() -> Nats {
        let url = std::env::var("NATS_URL").expect(
            "NATS_URL is not set: run through scripts/test.sh, or use --nats own (the default)",
        );
        let pid = std::env::var("NATS_DIR").ok().and_then(|d| {
            std::fs::read_to_string(Path::new(&d).join("pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        Nats {
            url,
            own: None,
            pid,
        }
    }

    fn own(dir: &Path) -> Nats {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats.sh");
        // A server an earlier run left in this folder is stopped, and the
        // store emptied: every run starts from nothing.
        let _ = Command::new("bash")
            .arg(&script)
            .args(["stop", "--dir"])
            .arg(dir)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir.join("jetstream"));
        let out = Command::new("bash")
            .arg(&script)
            .args(["start", "--dir"])
            .arg(dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/nats.sh");
        assert!(out.status.success(), "scripts/nats.sh start failed");
        let url = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("nats.sh prints the URL")
            .trim()
            .to_owned();
        let pid = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        Nats {
            url,
            own: Some(dir.to_owned()),
            pid,
        }
    }

    fn cpu(&self) -> f64 {
        self.pid.map_or(0.0, cpu_secs)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(dir) = &self.own {
            let _ = Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats.sh"))
                .args(["stop", "--dir"])
                .arg(dir)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The processor, stopped (SIGTERM) when dropped, also on a panic.
struct Running(Option<Processor>);

impl Running {
    fn p(&mut self) -> &mut Processor {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.stop();
        }
    }
}

/// Names, topology and schemas of the run.
struct Setup {
    app: String,
    stream: String,
    subject: String,
    dir: PathBuf,
    topology_path: PathBuf,
    topology: Topology,
    files: FileRegistry,
}

impl Setup {
    fn new(broker: &Broker, dir: &Path) -> Setup {
        let tag = format!("{:06x}", fastrand::u32(..1 << 24));
        let app = format!("bench-nats-{tag}");
        let stream = format!("BENCH_NATS_{tag}");
        let subject = format!("{app}.raw");
        let yaml = format!(
            "application_id: {app}
input:
  topics: []
  nats_jetstream: {{stream: {stream}, subject: {subject}}}
outputs:
  public: {app}.public
  internal: {app}.internal
  restricted: {app}.restricted
  dead_letter: {app}.dlq
processing:
  guarantee: exactly_once
  commit_interval_ms: 100
ordering:
  on_gap: emit
event_types:
  user.login_succeeded: {{tiers: [restricted]}}
  user.login_failed: {{tiers: [restricted]}}
  user.locked: {{tiers: [restricted]}}
"
        );
        std::fs::create_dir_all(dir).unwrap();
        let topology_path = dir.join(format!("{app}.yaml"));
        std::fs::write(&topology_path, yaml).unwrap();
        let topology = Topology::load(&topology_path).unwrap();
        for t in topology.engine.topics.tiers.iter() {
            broker.create_topic(t, 3, false);
        }
        broker.create_topic(&topology.engine.topics.dead_letter, 1, false);
        // The file registry the processor reads without --registry-url:
        // the generator frames events with its ids.
        let files = file::load(
            &topology.spec.schemas.folder,
            &topology.engine.subjects,
            &topology.spec.input.names(),
        )
        .unwrap();
        Setup {
            app,
            stream,
            subject,
            dir: dir.to_owned(),
            topology_path,
            topology,
            files,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.app))
    }

    /// Output topics: public, internal, restricted, dead letter.
    fn outputs(&self) -> Vec<String> {
        let t = &self.topology.engine.topics;
        let mut v: Vec<String> = t.tiers.iter().map(|s| s.to_string()).collect();
        v.push(t.dead_letter.to_string());
        v
    }
}

/// The pure engine over the messages in stream order, as the runtime reads
/// them (the subject as the topic, partition 0, the stream sequence as the
/// offset): how many records each output topic gets.
struct Model {
    engine: Engine,
    registry: MemoryRegistry,
    store: MemoryStore,
    held: Holdback,
    subject: Arc<str>,
    outputs: Vec<String>,
    next_seq: i64,
}

impl Model {
    fn new(s: &Setup) -> Model {
        let mut registry: MemoryRegistry = s.files.registry.clone();
        registry.enforce_backward(true);
        Model {
            engine: Engine::new(
                s.topology.engine.clone(),
                Some(Hasher::new(b"bench-key-0123456789abcdef").unwrap()),
            ),
            registry,
            store: MemoryStore::default(),
            held: Holdback::default(),
            subject: Arc::from(s.subject.as_str()),
            outputs: s.outputs(),
            next_seq: 1,
        }
    }

    /// Records per output topic (public, internal, restricted, dead
    /// letter) for the next messages of the stream.
    fn feed(&mut self, values: &[Vec<u8>]) -> [usize; 4] {
        let mut steps = Vec::new();
        for v in values {
            let source = Source {
                topic: self.subject.clone(),
                partition: 0,
                offset: self.next_seq,
            };
            self.next_seq += 1;
            let raw = RawRecord {
                source: &source,
                key: None,
                value: Some(v),
                headers: RawHeaders::NONE,
            };
            Reorder {
                engine: &mut self.engine,
                store: &mut self.store,
                held: &mut self.held,
                registry: &mut self.registry,
            }
            .process(&raw, None, None, &mut steps)
            .unwrap();
        }
        let mut counts = [0; 4];
        for step in steps {
            let records = match step.outcome {
                Outcome::Routed(r) => r.records,
                Outcome::DeadLettered { record, .. } => vec![record],
                Outcome::Skipped(_) | Outcome::Held { .. } => vec![],
            };
            for r in records {
                let i = self
                    .outputs
                    .iter()
                    .position(|t| **t == *r.topic)
                    .expect("an output topic");
                counts[i] += 1;
            }
        }
        counts
    }
}

/// A JetStream context on `url`.
async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to NATS at {url}: {e}"));
    async_nats::jetstream::new(client)
}

/// Publishes `values` in order, keeping up to `window` acknowledgements
/// outstanding; returns the publish rate (events/s).
async fn publish_all(
    js: &async_nats::jetstream::Context,
    subject: &str,
    values: &[Vec<u8>],
) -> f64 {
    // Below the context's limit of acknowledgements in flight (5,000),
    // where a publish would wait for one.
    const WINDOW: usize = 2048;
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for v in values {
        if pending.len() >= WINDOW {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                pending.pop_front().unwrap();
            ack.await.expect("the stream's acknowledgement");
        }
        pending.push_back(
            js.publish(subject.to_owned(), v.clone().into())
                .await
                .expect("publishing"),
        );
    }
    for ack in pending {
        ack.await.expect("the stream's acknowledgement");
    }
    values.len() as f64 / started.elapsed().as_secs_f64()
}

/// Publishes `values` at `rate` per second; returns the achieved rate and
/// the publish → acknowledgement time of each, in milliseconds.
async fn publish_at(
    js: &async_nats::jetstream::Context,
    subject: &str,
    values: &[Vec<u8>],
    rate: u64,
) -> (f64, Vec<f64>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
        Instant,
        async_nats::jetstream::context::PublishAckFuture,
    )>();
    let acker = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Some((sent, ack)) = rx.recv().await {
            ack.await.expect("the stream's acknowledgement");
            lat.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        lat
    });
    let started = tokio::time::Instant::now();
    for (i, v) in values.iter().enumerate() {
        let due = started + Duration::from_micros(i as u64 * 1_000_000 / rate);
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        let ack = js
            .publish(subject.to_owned(), v.clone().into())
            .await
            .expect("publishing");
        tx.send((sent, ack)).unwrap();
    }
    let achieved = values.len() as f64 / started.elapsed().as_secs_f64();
    drop(tx);
    (achieved, acker.await.unwrap())
}

/// Waits until the processor has committed `n` input records in all;
/// panics when it exits or `timeout` passes.
fn wait_committed(p: &mut Processor, n: usize, timeout: Duration, log: &Path) {
    let until = Instant::now() + timeout;
    while p.metric("privacy_router_input_records_committed_total") < n as f64 {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "privacy-router exited; see {}",
            log.display()
        );
        assert!(
            Instant::now() < until,
            "privacy-router did not commit {n} records in {timeout:?}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `read_committed` reader of every partition of `topics`, from
/// `offset`.
fn reader(brokers: &str, topics: &[String], offset: Offset) -> BaseConsumer<QuietContext> {
    let c: BaseConsumer<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-nats-{:x}", fastrand::u32(..)))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(QuietContext)
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(topic, p.id(), offset).unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    c
}

/// Committed records per topic of `topics`: read until `want` in all, then
/// until nothing more comes for 1.5 s (so extras would be counted too).
fn count_committed(brokers: &str, topics: &[String], want: usize) -> Vec<usize> {
    let c = reader(brokers, topics, Offset::Beginning);
    let mut counts = vec![0; topics.len()];
    let until = Instant::now() + Duration::from_secs(300);
    let mut last = Instant::now();
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let i = topics.iter().position(|t| t == m.topic()).unwrap();
                counts[i] += 1;
                last = Instant::now();
            }
            Some(Err(e)) => panic!("reading the outputs: {e}"),
            None => {}
        }
        let total: usize = counts.iter().sum();
        if total >= want && last.elapsed() > Duration::from_millis(1500) {
            return counts;
        }
        if Instant::now() > until {
            eprintln!("   counting the outputs timed out at {counts:?} (want {want} in all)");
            return counts;
        }
    }
}

/// Receive time minus record timestamp, in milliseconds, of every record
/// of `topic` (read_committed, from its end) stamped at `since_ms` or
/// later, until `stop`.
fn latencies(brokers: &str, topic: &str, since_ms: &AtomicI64, stop: &AtomicBool) -> Vec<i64> {
    let c = reader(brokers, &[topic.to_owned()], Offset::End);
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
            if let Some(ts) = m.timestamp().to_millis() {
                if ts >= since_ms.load(Ordering::SeqCst) {
                    out.push(now_ms() - ts);
                }
            }
        }
    }
    out
}

/// Nearest-rank quantile of sorted values.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn run(a: &Args) -> serde_json::Value {
    let throughput = a.phases.iter().any(|p| p == "throughput");
    let latency = a.phases.iter().any(|p| p == "latency");
    let mut out = serde_json::json!({
        "broker": a.broker,
        "nats": a.nats,
        "guarantee": "exactly_once",
        "on_gap": "emit",
        "commit_interval_ms": 100,
        "tier_partitions": 3,
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let broker = match a.broker.as_str() {
        "kafka" => {
            eprintln!("== starting Kafka (scripts/kafka.sh)");
            Broker::own(1, false)
        }
        "shared" => Broker::shared(),
        other => panic!("unknown broker {other}: kafka or shared"),
    };
    let brokers = broker.bootstrap();
    let nats = match a.nats.as_str() {
        "own" => {
            eprintln!(
                "== starting NATS (scripts/nats.sh, {})",
                a.nats_dir.display()
            );
            Nats::own(&a.nats_dir)
        }
        "shared" => Nats::shared(),
        other => panic!("unknown NATS server {other}: own or shared"),
    };
    out["nats_server"] = Command::new("nats-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .into();
    let s = Setup::new(&broker, &Path::new("target/bench-nats").join("run"));
    let js = rt.block_on(jetstream(&nats.url));
    rt.block_on(js.create_stream(async_nats::jetstream::stream::Config {
        name: s.stream.clone(),
        subjects: vec![s.subject.clone()],
        storage: async_nats::jetstream::stream::StorageType::File,
        retention: async_nats::jetstream::stream::RetentionPolicy::Limits,
        ..Default::default()
    }))
    .expect("creating the JetStream stream");

    // One generator: the latency phase's events continue the throughput
    // phase's entities and versions.
    let mut g = Generator::new(
        &s.files,
        Options {
            seed: 7,
            entities: a.entities,
            anomalies: true,
            format: Format::Framed,
        },
    );
    let mut model = Model::new(&s);
    let restricted = s.topology.engine.topics.tiers[2].to_string();

    // ---- throughput ------------------------------------------------------
    let first_n = if throughput { a.events } else { 1000 };
    let values: Vec<Vec<u8>> = (0..first_n).map(|_| g.next_record()).collect();
    let size = values.iter().map(Vec::len).sum::<usize>() as f64 / first_n as f64;
    let want = model.feed(&values);
    eprintln!(
        "== {}: publishing {first_n} events to {} ({})",
        if throughput { "throughput" } else { "warm-up" },
        s.stream,
        s.subject
    );
    let load_rate = rt.block_on(publish_all(&js, &s.subject, &values));
    drop(values);
    eprintln!("   published at {load_rate:.0} events/s, mean {size:.0} bytes");

    let nats_flag = ["--nats-url", nats.url.as_str()];
    let started = Instant::now();
    let mut p = Running(Some(Processor::start_as(
        &brokers,
        &s.topology_path,
        &s.log(),
        &a.kafka_config,
        "bench",
        &nats_flag,
    )));
    let pid = p.p().child.id();
    // Kafka's process, for CPU accounting (the shared one's through
    // KAFKA_DIR, which the test script sets).
    let kafka_pid =
        (a.broker == "kafka" || std::env::var_os("KAFKA_DIR").is_some()).then(|| broker.pid());
    let kafka_cpu_now = || kafka_pid.map_or(0.0, cpu_secs);
    let until = started + Duration::from_secs(900);
    let mut first_read: Option<(Instant, f64, f64, f64)> = None;
    let mut first_commit: Option<(Instant, f64)> = None;
    loop {
        let proc = p.p();
        assert!(
            proc.child.try_wait().unwrap().is_none(),
            "privacy-router exited; see {}",
            s.log().display()
        );
        assert!(
            Instant::now() < until,
            "privacy-router did not finish in 900 s; see {}",
            s.log().display()
        );
        if first_read.is_none() && proc.metric("privacy_router_records_consumed_total") > 0.0 {
            first_read = Some((Instant::now(), cpu_secs(pid), kafka_cpu_now(), nats.cpu()));
        }
        let committed = proc.metric("privacy_router_input_records_committed_total");
        if first_commit.is_none() && committed > 0.0 {
            first_commit = Some((Instant::now(), committed));
        }
        if committed >= first_n as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = Instant::now();
    let (read_at, cpu0, kafka0, nats0) = first_read.unwrap_or((done, 0.0, 0.0, 0.0));
    let (commit_at, committed_then) = first_commit.unwrap();
    let cpu_total = cpu_secs(pid);
    let cpu_run = cpu_total - cpu0;
    let kafka_cpu = kafka_cpu_now() - kafka0;
    let nats_cpu = nats.cpu() - nats0;
    let (rss, hwm) = p.p().rss();
    let secs_read = done.duration_since(read_at).as_secs_f64();
    let secs_commit = done.duration_since(commit_at).as_secs_f64();
    let secs_start = done.duration_since(started).as_secs_f64();
    let rate_commit = (first_n as f64 - committed_then) / secs_commit.max(1e-3);
    let rate_read = first_n as f64 / secs_read.max(1e-3);
    let rate_start = first_n as f64 / secs_start;
    let proc = p.p();
    let produced = proc.metric("privacy_router_records_produced_total");
    let dead = proc.metric("privacy_router_dead_letters_total");
    let commits = proc.metric("privacy_router_commit_seconds_count");
    let commit_ms = 1000.0 * proc.metric("privacy_router_commit_seconds_sum") / commits.max(1.0);
    let process_us = 1e6 * proc.metric("privacy_router_process_seconds_sum")
        / proc.metric("privacy_router_process_seconds_count").max(1.0);
    let got = count_committed(&brokers, &s.outputs(), want.iter().sum());
    let matches = got[..] == want[..];
    eprintln!(
        "   outputs (public, internal, restricted, dead letters): {got:?}, the engine's: {want:?}{}",
        if matches { "" } else { "  MISMATCH" }
    );
    if throughput {
        eprintln!(
            "   privacy-router: {rate_commit:.0} events/s from the first commit to the last \
             ({secs_commit:.2} s); {rate_read:.0} from the first record read ({secs_read:.2} s); \
             {rate_start:.0} from the process start ({secs_start:.2} s)"
        );
        eprintln!(
            "   CPU s: processor {cpu_run:.2} while reading ({cpu_total:.2} in all), Kafka \
             {kafka_cpu:.2}, NATS {nats_cpu:.2}; RSS {} MB (peak {} MB); {commits} commits of \
             {commit_ms:.1} ms on average; engine {process_us:.1} µs per record",
            rss / 1024,
            hwm / 1024
        );
        out["throughput"] = serde_json::json!({
            "events": first_n,
            "mean_value_bytes": size.round(),
            "publish_events_per_s": load_rate.round(),
            "events_per_s": rate_commit.round(),
            "seconds": secs_commit,
            "measured_from": "first committed transaction to the commit covering the last event",
            "events_in_first_commit": committed_then,
            "events_per_s_from_first_read": rate_read.round(),
            "seconds_from_first_read": secs_read,
            "events_per_s_from_process_start": rate_start.round(),
            "seconds_from_process_start": secs_start,
            "cpu_seconds": cpu_run,
            "cpu_seconds_total": cpu_total,
            "kafka_cpu_seconds": kafka_cpu,
            "nats_cpu_seconds": nats_cpu,
            "rss_mb": rss / 1024,
            "peak_rss_mb": hwm / 1024,
            "tier_records": produced,
            "dead_letters": dead,
            "commits": commits,
            "mean_commit_ms": commit_ms,
            "mean_engine_us_per_record": process_us,
            "outputs": {"public": got[0], "internal": got[1], "restricted": got[2], "dead_letter": got[3]},
            "engine_expects": {"public": want[0], "internal": want[1], "restricted": want[2], "dead_letter": want[3]},
            "outputs_match_engine": matches,
        });
    }

    // ---- latency ---------------------------------------------------------
    if latency {
        let n = (a.rate * a.latency_secs) as usize;
        let values: Vec<Vec<u8>> = (0..n).map(|_| g.next_record()).collect();
        let want_l = model.feed(&values);
        eprintln!("== latency: {} events/s for {} s", a.rate, a.latency_secs);
        let stop = Arc::new(AtomicBool::new(false));
        let since = Arc::new(AtomicI64::new(i64::MAX));
        let reader = {
            let (brokers, topic, since, stop) = (
                brokers.clone(),
                restricted.clone(),
                since.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || latencies(&brokers, &topic, &since, &stop))
        };
        // The reader is at the end of the topic before anything is sent.
        std::thread::sleep(Duration::from_secs(2));
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        since.store(now_ms() - 1, Ordering::SeqCst);
        let (achieved, mut acks) = rt.block_on(publish_at(&js, &s.subject, &values, a.rate));
        wait_committed(p.p(), first_n + n, Duration::from_secs(120), &s.log());
        let cpu = cpu_secs(pid) - cpu0;
        let secs = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        let mut lat = reader.join().unwrap();
        let (_, hwm_l) = p.p().rss();
        let proc = p.p();
        let commits_all = proc.metric("privacy_router_commit_seconds_count");
        let commit_ms_all =
            1000.0 * proc.metric("privacy_router_commit_seconds_sum") / commits_all.max(1.0);
        lat.sort_unstable();
        acks.sort_by(f64::total_cmp);
        let q = |f: f64| quantile(&lat, f).unwrap_or(-1);
        let qa = |f: f64| quantile(&acks, f).map_or(-1.0, |x| (x * 10.0).round() / 10.0);
        let matches_l = lat.len() == want_l[2];
        eprintln!(
            "   {} restricted records (the engine expects {}) at {achieved:.0} events/s: p50 {} ms, \
             p95 {} ms, p99 {} ms, max {} ms",
            lat.len(),
            want_l[2],
            q(0.5),
            q(0.95),
            q(0.99),
            q(1.0)
        );
        eprintln!(
            "   control (publish → JetStream acknowledgement): p50 {} ms, p99 {} ms; processor \
             CPU {cpu:.2} s in {secs:.1} s ({:.0}% of a core); peak RSS {} MB",
            qa(0.5),
            qa(0.99),
            100.0 * cpu / secs,
            hwm_l / 1024
        );
        out["latency"] = serde_json::json!({
            "input_events_per_s": achieved.round(),
            "seconds": a.latency_secs,
            "events": n,
            "records_measured": lat.len(),
            "engine_expects_restricted": want_l[2],
            "outputs_match_engine": matches_l,
            "p50_ms": q(0.5), "p90_ms": q(0.9), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "max_ms": q(1.0),
            "control_publish_ack_p50_ms": qa(0.5),
            "control_publish_ack_p99_ms": qa(0.99),
            "processor_cpu_seconds": cpu,
            "processor_cpu_share_of_a_core": cpu / secs,
            "peak_rss_mb": hwm_l / 1024,
            "mean_commit_ms_whole_run": commit_ms_all,
        });
    }
    drop(p);
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    out
}
