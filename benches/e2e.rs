//! End-to-end benchmark: privacy-router on a broker on this machine, against
//! a passthrough consume→produce copy with the same client settings and
//! guarantee. Run it with `bash scripts/bench-e2e.sh` (or `cargo bench
//! --bench e2e -- --help`).
//!
//! Phases (each on fresh topics):
//! * **throughput**: load N generated events (the sample's mix, framed Avro,
//!   ~370 bytes, every anomaly), then time (a) the passthrough copy and (b)
//!   `privacy-router run`, each from its first record to the commit that
//!   covers the last;
//! * **latency**: `privacy-router run` while events are produced at a fixed
//!   rate; a `read_committed` consumer of the restricted topic measures
//!   receive time minus the input record's timestamp (output records keep
//!   the input's timestamp). The first `--latency-warmup-secs` of the load
//!   are not counted: a freshly started broker JVM compiles its hot paths
//!   and every client connects and learns its metadata meanwhile (without
//!   the warm-up a control reader of the input topic alone measured a p50
//!   of 0.4–0.9 s on a fresh broker, and every reader the load's first
//!   second as a backlog);
//! * **memory**: `privacy-router run` over events of ~1,000,000 distinct
//!   entities; resident memory (VmRSS, VmHWM) and tracked entities at the
//!   end.
//!
//! Without `--bench` (as `cargo test` runs it) it does a small smoke run on
//! the Kafka the test script shares, so the harness itself is tested.

use std::io::{BufRead, BufReader};
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

use privacy_router::runtime::kafka::QuietContext;
use privacy_router::sample::{Format, Options};

#[global_allocator]
static GLOBAL: mimalloc_natural::MiMalloc = mimalloc_natural::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "e2e",
    about = "End-to-end benchmark of privacy-router on a local broker"
)]
struct Args {
    /// Broker: `kafka` (a one-node Apache Kafka of the bench's own, from
    /// scripts/kafka.sh) or `shared` (the one in KAFKA_BOOTSTRAP).
    #[arg(long, default_value = "kafka")]
    broker: String,
    /// Events of the throughput phase.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Partitions of the input (and of every other topic).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Broker of the latency phase (as `--broker`).
    #[arg(long, default_value = "kafka")]
    latency_broker: String,
    /// Input rate of the latency phase, events per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Length of the latency phase, seconds (after the warm-up).
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Seconds of load at `--rate` before the latency phase counts (the
    /// broker's JIT, connections, metadata, first transactions).
    #[arg(long, default_value_t = 10)]
    latency_warmup_secs: u64,
    /// Events of the memory phase (each domain has 1,000,000 entities to
    /// draw from, so ~1,000,000 distinct entities for 1,100,000 events).
    #[arg(long, default_value_t = 1_100_000)]
    memory_events: usize,
    /// Phases to run: throughput, latency, memory.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,memory"
    )]
    phases: Vec<String>,
    /// Processing guarantee of both contenders.
    #[arg(long, default_value = "exactly_once")]
    guarantee: String,
    /// privacy-router's `ordering.on_gap`: `emit` or `hold` (the reorder
    /// window, with its default 5,000 ms).
    #[arg(long, default_value = "emit")]
    on_gap: String,
    /// Extra librdkafka settings for both contenders (KEY=VALUE).
    #[arg(short = 'X', long = "kafka-config")]
    kafka_config: Vec<String>,
    /// Where the JSON summary goes.
    #[arg(long, default_value = "target/bench-e2e.json")]
    out: PathBuf,
    /// (internal) run as the passthrough copy.
    #[arg(long, hide = true)]
    passthrough: Option<String>,
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
    if !bench && !args.iter().any(|a| a.starts_with("--passthrough")) {
        // `cargo test` runs bench targets without --bench: a smoke run.
        let mut a = Args::parse_from(["e2e"]);
        a.broker = "shared".into();
        a.events = 3000;
        a.partitions = 3;
        a.phases = vec!["throughput".into()];
        a.out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-e2e-smoke.json");
        let r = run(&a);
        assert_eq!(r["throughput"]["privacy_router"]["events"], 3000);
        println!("e2e smoke run passed");
        return;
    }
    let a = Args::parse_from(args);
    if let Some(spec) = &a.passthrough {
        passthrough(spec, &a.guarantee, &a.kafka_config);
        return;
    }
    let r = run(&a);
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
}

// The brokers of the broker tests (Apache Kafka from scripts/kafka.sh).
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;

use common::{load, passthrough, Processor};

use support::Broker;

fn start_broker(kind: &str) -> Broker {
    match kind {
        "kafka" => Broker::own(1, false),
        "shared" => Broker::shared(),
        other => panic!("unknown broker {other}: kafka or shared"),
    }
}

/// Topics and topology of one phase.
struct Setup {
    app: String,
    input: String,
    topology: PathBuf,
    tiers: [String; 3],
}

fn setup(broker: &Broker, phase: &str, partitions: i32, guarantee: &str, on_gap: &str) -> Setup {
    let app = format!("bench-{phase}-{:06x}", fastrand::u32(..1 << 24));
    let input = format!("{app}.raw");
    let tiers = [
        format!("{app}.public"),
        format!("{app}.internal"),
        format!("{app}.restricted"),
    ];
    broker.create_topic(&input, partitions, false);
    for t in &tiers {
        broker.create_topic(t, partitions, false);
    }
    broker.create_topic(&format!("{app}.dlq"), partitions, false);
    broker.create_topic(
        &format!("{app}-entity-versions-changelog"),
        partitions,
        true,
    );
    let yaml = format!(
        "application_id: {app}
input: {{topics: [{input}]}}
outputs: {{public: {}, internal: {}, restricted: {}, dead_letter: {app}.dlq}}
processing: {{guarantee: {guarantee}, commit_interval_ms: 100}}
ordering: {{on_gap: {on_gap}}}
event_types:
  user.login_succeeded: {{tiers: [restricted]}}
  user.login_failed: {{tiers: [restricted]}}
  user.locked: {{tiers: [restricted]}}
",
        tiers[0], tiers[1], tiers[2]
    );
    let dir = Path::new("target/bench-e2e");
    std::fs::create_dir_all(dir).unwrap();
    let topology = dir.join(format!("{app}.yaml"));
    std::fs::write(&topology, yaml).unwrap();
    Setup {
        app,
        input,
        topology,
        tiers,
    }
}

impl Setup {
    fn log(&self) -> PathBuf {
        PathBuf::from(format!("target/bench-e2e/{}.log", self.app))
    }
}

fn run(a: &Args) -> serde_json::Value {
    let mut out = serde_json::json!({
        "broker": a.broker,
        "partitions": a.partitions,
        "guarantee": a.guarantee,
        "on_gap": a.on_gap,
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
    });
    let sample = Options {
        seed: 7,
        entities: 20_000,
        anomalies: true,
        format: Format::Framed,
    };
    if a.phases.iter().any(|p| p == "throughput") {
        // A fresh broker per phase: one phase's data does not slow the next.
        let broker = start_broker(&a.broker);
        let brokers = broker.bootstrap();
        let s = setup(&broker, "tp", a.partitions, &a.guarantee, &a.on_gap);
        eprintln!("== throughput: loading {} events", a.events);
        let (load_rate, size) = load(&brokers, &s.input, &s.topology, a.events, sample, None);
        eprintln!("   loaded at {load_rate:.0} events/s, mean {size:.0} bytes");
        // Two references with the processor's client settings and
        // guarantee: a 1:1 copy, and a copy with privacy-router's output
        // shape (each record unchanged to three topics plus one keyed state
        // record per input partition), i.e. the same I/O without the work.
        let mut refs = Vec::new();
        for mode in ["copy", "fanout"] {
            let out_base = format!("{}.{mode}", s.app);
            if mode == "copy" {
                broker.create_topic(&out_base, a.partitions, false);
            } else {
                for t in ["a", "b", "c", "state"] {
                    broker.create_topic(&format!("{out_base}.{t}"), a.partitions, t == "state");
                }
            }
            eprintln!("== throughput: passthrough ({mode})");
            let spec = format!(
                "{brokers}|{}|{out_base}|{}-{mode}|{}|{mode}",
                s.input, s.app, a.events
            );
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args([
                "--bench",
                "--passthrough",
                &spec,
                "--guarantee",
                &a.guarantee,
            ]);
            for x in &a.kafka_config {
                cmd.args(["-X", x]);
            }
            let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
            let line = BufReader::new(child.stdout.take().unwrap())
                .lines()
                .map_while(Result::ok)
                .find(|l| l.starts_with("passthrough "))
                .expect("the passthrough reports");
            let _ = child.wait();
            let secs: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            let cpu: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            let rate = a.events as f64 / secs;
            eprintln!("   passthrough ({mode}): {rate:.0} events/s ({secs:.2} s); CPU s {cpu:.2}");
            refs.push((mode, rate, secs, cpu));
        }
        let pass_rate = refs[0].1;
        let fanout_rate = refs[1].1;
        eprintln!("== throughput: privacy-router");
        let mut p = Processor::start(&brokers, &s.topology, &s.log(), &a.kafka_config);
        let (secs_pr, cpu_pr, cpu_broker) =
            p.time_until_committed(a.events, Duration::from_secs(900), broker.pid());
        let rate = a.events as f64 / secs_pr;
        let (rss, hwm) = p.rss();
        let produced = p.metric("privacy_router_records_produced_total");
        let dead = p.metric("privacy_router_dead_letters_total");
        let commits = p.metric("privacy_router_commit_seconds_count");
        let commit_ms = 1000.0 * p.metric("privacy_router_commit_seconds_sum") / commits.max(1.0);
        let process_us = 1e6 * p.metric("privacy_router_process_seconds_sum")
            / p.metric("privacy_router_process_seconds_count").max(1.0);
        eprintln!("   {commits} commits, {commit_ms:.1} ms each on average; engine {process_us:.1} µs per record");
        p.stop();
        eprintln!(
            "   privacy-router: {rate:.0} events/s ({secs_pr:.2} s), {:.0}% of the 1:1 copy, {:.0}% of the fan-out copy; CPU s: processor {cpu_pr:.2}, broker {cpu_broker:.2}; RSS {} MB (peak {} MB)",
            100.0 * rate / pass_rate,
            100.0 * rate / fanout_rate,
            rss / 1024,
            hwm / 1024
        );
        out["throughput"] = serde_json::json!({
            "events": a.events,
            "mean_value_bytes": size.round(),
            "load_events_per_s": load_rate.round(),
            "passthrough_copy": {"events_per_s": refs[0].1.round(), "seconds": refs[0].2, "cpu_seconds": refs[0].3},
            "passthrough_fanout": {"events_per_s": refs[1].1.round(), "seconds": refs[1].2, "cpu_seconds": refs[1].3},
            "privacy_router": {
                "events": a.events,
                "events_per_s": rate.round(),
                "seconds": secs_pr,
                "tier_records": produced,
                "dead_letters": dead,
                "rss_mb": rss / 1024,
                "peak_rss_mb": hwm / 1024,
                "cpu_seconds": cpu_pr,
                "commits": commits,
                "mean_commit_ms": commit_ms,
                "mean_engine_us_per_record": process_us,
                "broker_cpu_seconds": cpu_broker,
            },
            "ratio_to_copy": rate / pass_rate,
            "ratio_to_fanout": rate / fanout_rate,
        });
    }
    if a.phases.iter().any(|p| p == "latency") {
        // A fresh broker per phase: one phase's data does not slow the next.
        let broker = start_broker(&a.latency_broker);
        let brokers = broker.bootstrap();
        let s = setup(&broker, "lat", a.partitions, &a.guarantee, &a.on_gap);
        eprintln!(
            "== latency: {} events/s for {} s after {} s of warm-up",
            a.rate, a.latency_secs, a.latency_warmup_secs
        );
        let p = Processor::start(&brokers, &s.topology, &s.log(), &a.kafka_config);
        let until = Instant::now() + Duration::from_secs(120);
        while p.get("/readyz").map(|(c, _)| c) != Some(200) {
            assert!(Instant::now() < until, "privacy-router never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Records produced before this are the warm-up's, not counted.
        let counted_from = Arc::new(AtomicI64::new(i64::MAX));
        let read = |topic: &str| {
            let (brokers, topic) = (brokers.clone(), topic.to_owned());
            let (stop, from) = (stop.clone(), counted_from.clone());
            std::thread::spawn(move || latencies(&brokers, &topic, &stop, &from))
        };
        let reader = read(&s.tiers[2]);
        // Control: the same measurement on the input topic (producer →
        // broker → reader, no processor).
        let control = read(&s.input);
        std::thread::sleep(Duration::from_secs(1));
        counted_from.store(
            now_ms() + 1000 * a.latency_warmup_secs as i64,
            Ordering::SeqCst,
        );
        let n = (a.rate * (a.latency_warmup_secs + a.latency_secs)) as usize;
        let (achieved, _) = load(
            &brokers,
            &s.input,
            &s.topology,
            n,
            Options { seed: 8, ..sample },
            Some(a.rate),
        );
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::SeqCst);
        let mut lat = reader.join().unwrap();
        let mut ctl = control.join().unwrap();
        let commits = p.metric("privacy_router_commit_seconds_count");
        let commit_ms = 1000.0 * p.metric("privacy_router_commit_seconds_sum") / commits.max(1.0);
        p.stop();
        ctl.sort_unstable();
        let cq = |f: f64| {
            ctl.get(((ctl.len() as f64 * f) as usize).min(ctl.len().saturating_sub(1)))
                .copied()
                .unwrap_or(-1)
        };
        eprintln!(
            "   control (input topic): p50 {} ms, p99 {} ms; {commits} commits of {commit_ms:.1} ms on average",
            cq(0.5),
            cq(0.99)
        );
        lat.sort_unstable();
        let q = |f: f64| {
            lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(-1)
        };
        eprintln!(
            "   {} records at {achieved:.0} events/s: p50 {} ms, p99 {} ms, max {} ms",
            lat.len(),
            q(0.5),
            q(0.99),
            lat.last().copied().unwrap_or(-1)
        );
        out["latency"] = serde_json::json!({
            "broker": a.latency_broker,
            "input_events_per_s": achieved.round(),
            "warmup_s": a.latency_warmup_secs,
            "records_measured": lat.len(),
            "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
            "control_input_p50_ms": cq(0.5), "control_input_p99_ms": cq(0.99),
            "mean_commit_ms": commit_ms,
            "max_ms": lat.last().copied().unwrap_or(-1),
        });
    }
    if a.phases.iter().any(|p| p == "memory") {
        // A fresh broker per phase: one phase's data does not slow the next.
        let broker = start_broker(&a.broker);
        let brokers = broker.bootstrap();
        let s = setup(&broker, "mem", a.partitions, &a.guarantee, &a.on_gap);
        eprintln!(
            "== memory: loading {} events of distinct entities",
            a.memory_events
        );
        let opts = Options {
            seed: 9,
            entities: 1_000_000,
            anomalies: false,
            format: Format::Framed,
        };
        load(&brokers, &s.input, &s.topology, a.memory_events, opts, None);
        let mut p = Processor::start(&brokers, &s.topology, &s.log(), &a.kafka_config);
        let (secs, _, _) =
            p.time_until_committed(a.memory_events, Duration::from_secs(1800), broker.pid());
        std::thread::sleep(Duration::from_millis(1500));
        let entities = p.metric("privacy_router_entities");
        let (rss, hwm) = p.rss();
        p.stop();
        eprintln!(
            "   {entities:.0} entities tracked: RSS {} MB, peak {} MB ({:.0} events/s)",
            rss / 1024,
            hwm / 1024,
            a.memory_events as f64 / secs
        );
        out["memory"] = serde_json::json!({
            "events": a.memory_events,
            "entities": entities,
            "rss_mb": rss / 1024,
            "peak_rss_mb": hwm / 1024,
            "events_per_s": (a.memory_events as f64 / secs).round(),
        });
    }
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    out
}

/// Receive time minus record timestamp, in milliseconds, of every record of
/// `topic` (read_committed) timestamped at `from` (epoch ms) or later, until
/// `stop`.
fn latencies(brokers: &str, topic: &str, stop: &AtomicBool, from: &AtomicI64) -> Vec<i64> {
    let c: BaseConsumer<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("lat-{:x}", fastrand::u32(..)))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(QuietContext)
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
            if let Some(ts) = m.timestamp().to_millis() {
                if ts >= from.load(Ordering::Relaxed) {
                    out.push(now_ms() - ts);
                }
            }
        }
    }
    out
}
