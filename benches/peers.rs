//! privacy-router side by side with the same job written the way its users
//! would write it themselves: in Kafka Streams (`benches/peers/kafka-streams`),
//! in Quix Streams (`benches/peers/quix`), and the Rust passthroughs that copy
//! records with privacy-router's client settings (the floor). Run it with
//! `bash scripts/bench-peers.sh` (or `cargo bench --bench peers -- --help`).
//!
//! One Apache Kafka broker (scripts/kafka.sh); the same N generated events
//! (the sample's mix without anomalies, so every event gives three tier
//! records) are loaded once as canonical JSON envelopes and once as framed
//! Avro, keyed by entity id. Then, round after round, every implementation
//! runs in turn under each guarantee on fresh output topics with a fresh
//! consumer group, after a warm-up round that is not counted. A
//! `read_committed` reader of the output topics counts what is committed
//! (never watermarks): the measured window runs from the
//! first committed output to the last, and holds the events whose outputs
//! were not in the first transaction; the implementation's CPU (user +
//! system, /proc) and the broker's are taken over the same window, the peak
//! RSS at its end. Ratios are computed within each round, then their median
//! is reported.
//!
//! Without `--bench` (as `cargo test` runs it) it does a small smoke run of
//! the Rust cells on the Kafka the test script shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use privacy_router::runtime::kafka::QuietContext;
use privacy_router::sample::{Format, Options};

#[global_allocator]
static GLOBAL: mimalloc_natural::MiMalloc = mimalloc_natural::MiMalloc;

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;

use common::{cpu_secs, load, passthrough, rdkafka_cpu_secs, rss_kb, Processor};
use support::Broker;

#[derive(Debug, Parser)]
#[command(
    name = "peers",
    about = "privacy-router against Kafka Streams, Quix Streams and Rust passthroughs, side by side on one broker"
)]
struct Args {
    /// Events loaded (each implementation processes all of them).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Interleaved rounds (every cell once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rounds run first and not counted (every cell once, under the first
    /// guarantee): under its first minute or so of load the broker takes
    /// several times its later CPU per event (its JVM warming up, most
    /// likely). Without one, round 1 was the slowest for the cells that
    /// run first (privacy-router's) in each of four full runs.
    #[arg(long, default_value_t = 1)]
    warmup_rounds: usize,
    /// Guarantees to run each implementation under.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "exactly_once,at_least_once"
    )]
    guarantees: Vec<String>,
    /// Implementations to run (default: all).
    #[arg(long, value_delimiter = ',', default_values_t = Impl::ALL.map(|i| i.name().to_owned()))]
    only: Vec<String>,
    /// Seconds one cell may take before it counts as failed.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Broker: `kafka` (a one-node Apache Kafka of the bench's own) or
    /// `shared` (the one in KAFKA_BOOTSTRAP).
    #[arg(long, default_value = "kafka")]
    broker: String,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench-peers.json")]
    out: PathBuf,
    /// Markdown file whose `<!-- bench-peers -->` section gets the table
    /// (none: `-`).
    #[arg(long, default_value = "docs/benchmarks.md")]
    docs: String,
    /// (internal) run as a passthrough copy.
    #[arg(long, hide = true)]
    passthrough: Option<String>,
    /// (internal) the passthrough's guarantee.
    #[arg(long, hide = true, default_value = "exactly_once")]
    guarantee: String,
}

/// One implementation of the job (or of its floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Impl {
    /// privacy-router, framed Avro in and out (its native format).
    RouterAvro,
    /// privacy-router, JSON envelopes in and out (the peers' format).
    RouterJson,
    /// The job in Kafka Streams, JSON.
    KafkaStreams,
    /// The job in Quix Streams, JSON.
    Quix,
    /// Each Avro record unchanged to three topics plus one state record.
    FanoutAvro,
    /// Each JSON record unchanged to three topics plus one state record.
    FanoutJson,
    /// [`Impl::FanoutAvro`] with the four headers the contract puts on
    /// every tier record (`event_type`, `entity_type`, `entity_version`,
    /// `privacy_tier`): what the headers alone cost.
    FanoutAvroHeaders,
    /// [`Impl::FanoutJson`] with the same four headers.
    FanoutJsonHeaders,
    /// Each Avro record unchanged to one topic.
    CopyAvro,
    /// privacy-router Avro, one instance with two stream threads.
    RouterAvroThreads2,
    /// privacy-router Avro, two single-thread instances in one group.
    RouterAvroTwice,
}

impl Impl {
    const ALL: [Impl; 11] = [
        Impl::RouterAvro,
        Impl::RouterJson,
        Impl::KafkaStreams,
        Impl::Quix,
        Impl::FanoutAvro,
        Impl::FanoutJson,
        Impl::FanoutAvroHeaders,
        Impl::FanoutJsonHeaders,
        Impl::CopyAvro,
        Impl::RouterAvroThreads2,
        Impl::RouterAvroTwice,
    ];

    fn name(self) -> &'static str {
        match self {
            Impl::RouterAvro => "privacy-router-avro",
            Impl::RouterJson => "privacy-router-json",
            Impl::KafkaStreams => "kafka-streams",
            Impl::Quix => "quix",
            Impl::FanoutAvro => "fanout-avro",
            Impl::FanoutJson => "fanout-json",
            Impl::FanoutAvroHeaders => "fanout-avro-headers",
            Impl::FanoutJsonHeaders => "fanout-json-headers",
            Impl::CopyAvro => "copy-avro",
            Impl::RouterAvroThreads2 => "privacy-router-avro-2-threads",
            Impl::RouterAvroTwice => "privacy-router-avro-2-instances",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Impl::RouterAvro => "privacy-router, Avro in/out",
            Impl::RouterJson => "privacy-router, JSON in/out",
            Impl::KafkaStreams => "Kafka Streams 4.4, JSON",
            Impl::Quix => "Quix Streams 3.28, JSON",
            Impl::FanoutAvro => "Rust passthrough, fan-out, Avro",
            Impl::FanoutJson => "Rust passthrough, fan-out, JSON",
            Impl::FanoutAvroHeaders => {
                "Rust passthrough, fan-out with the contract's 4 headers, Avro"
            }
            Impl::FanoutJsonHeaders => {
                "Rust passthrough, fan-out with the contract's 4 headers, JSON"
            }
            Impl::CopyAvro => "Rust passthrough, 1:1, Avro",
            Impl::RouterAvroThreads2 => "privacy-router, Avro, 1 instance × 2 stream threads",
            Impl::RouterAvroTwice => "privacy-router, Avro, 2 instances × 1 stream thread",
        }
    }

    fn json_input(self) -> bool {
        matches!(
            self,
            Impl::RouterJson
                | Impl::KafkaStreams
                | Impl::Quix
                | Impl::FanoutJson
                | Impl::FanoutJsonHeaders
        )
    }

    /// Output records per input event.
    fn outputs_per_event(self) -> usize {
        if self == Impl::CopyAvro {
            1
        } else {
            3
        }
    }
}

/// What one cell measured.
#[derive(Debug, Clone)]
struct Measured {
    events_per_s: f64,
    cpu_us_per_event: f64,
    /// Of `cpu_us_per_event`, what the processor's librdkafka threads
    /// spent (`None` for a processor without librdkafka).
    rdkafka_cpu_us_per_event: Option<f64>,
    broker_cpu_us_per_event: f64,
    peak_rss_mb: f64,
    window_s: f64,
    window_events: f64,
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    let bench = raw.iter().any(|a| a == "--bench");
    let args: Vec<String> = raw.into_iter().filter(|a| a != "--bench").collect();
    let mut a = Args::parse_from(args);
    if let Some(spec) = &a.passthrough {
        passthrough(spec, &a.guarantee, &[]);
        return;
    }
    if !bench {
        // `cargo test` runs bench targets without --bench: a smoke run of
        // the Rust cells (the peers need their own builds: the script's).
        a.broker = "shared".into();
        a.events = 20_000;
        a.partitions = 3;
        a.rounds = 1;
        a.warmup_rounds = 0;
        a.guarantees = vec!["exactly_once".into()];
        a.only = [
            Impl::RouterAvro,
            Impl::RouterJson,
            Impl::FanoutJson,
            Impl::RouterAvroThreads2,
        ]
        .map(|i| i.name().to_owned())
        .to_vec();
        a.out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-peers-smoke.json");
        a.docs = "-".into();
        let r = run(&a);
        for i in [
            "privacy-router-avro",
            "privacy-router-json",
            "fanout-json",
            "privacy-router-avro-2-threads",
        ] {
            let cell = &r["cells"][format!("{i}/exactly_once")];
            assert!(
                cell["events_per_s"]["median"].as_f64().unwrap_or(0.0) > 0.0,
                "{i}: {cell}"
            );
            // The librdkafka threads are found by name, and are a part of
            // the process (within the clock's tick, read a moment later).
            let cpu = cell["cpu_us_per_event"]["median"].as_f64().unwrap_or(0.0);
            let rdkafka = &cell["rdkafka_threads_cpu_us_per_event"]["median"];
            assert!(
                rdkafka.as_f64().is_some_and(|r| r > 0.0 && r < cpu + 1.0),
                "{i}: librdkafka's threads {rdkafka} of {cpu} µs an event"
            );
        }
        println!("peers smoke run passed");
        return;
    }
    let r = run(&a);
    let failed = r["failed"].as_array().map_or(0, Vec::len);
    println!("{}", r["summary"].as_str().unwrap_or_default());
    if failed > 0 {
        std::process::exit(1);
    }
}

fn start_broker(kind: &str) -> Broker {
    match kind {
        "kafka" => Broker::own(1, false),
        "shared" => Broker::shared(),
        other => panic!("unknown broker {other}: kafka or shared"),
    }
}

/// The topology the load and privacy-router read: no tier limits, so every
/// event type reaches all three tiers, as it does in the peers.
fn topology(
    dir: &Path,
    app: &str,
    input: &str,
    tiers: &[String; 3],
    format: &str,
    g: &str,
) -> PathBuf {
    let yaml = format!(
        "application_id: {app}
input: {{topics: [{input}]}}
outputs: {{public: {}, internal: {}, restricted: {}, dead_letter: {app}.dlq, format: {format}}}
processing: {{guarantee: {g}, commit_interval_ms: 100}}
",
        tiers[0], tiers[1], tiers[2]
    );
    let path = dir.join(format!("{app}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run(a: &Args) -> Value {
    let only: Vec<Impl> = Impl::ALL
        .into_iter()
        .filter(|i| a.only.iter().any(|o| o == i.name()))
        .collect();
    assert!(
        !only.is_empty(),
        "--only names none of {:?}",
        Impl::ALL.map(Impl::name)
    );
    let dir = Path::new("target/bench-peers");
    std::fs::create_dir_all(dir).unwrap();
    let broker = start_broker(&a.broker);
    let brokers = broker.bootstrap();
    let run_id = format!("{:06x}", fastrand::u32(..1 << 24));
    let inputs = [
        (Format::Framed, format!("peers-{run_id}.avro")),
        (Format::Jsonl, format!("peers-{run_id}.json")),
    ];
    let sample = |format| Options {
        seed: 11,
        entities: 20_000,
        anomalies: false,
        format,
    };
    // The load's topology names tier topics nobody writes to.
    let none = ["public", "internal", "restricted"].map(|t| format!("peers-{run_id}-load.{t}"));
    for (format, input) in &inputs {
        broker.create_topic(input, a.partitions, false);
        let t = topology(
            dir,
            &format!("peers-{run_id}-load"),
            input,
            &none,
            "avro",
            "exactly_once",
        );
        eprintln!("== loading {} events into {input}", a.events);
        let (rate, size) = load(&brokers, input, &t, a.events, sample(*format), None);
        eprintln!("   at {rate:.0} events/s, mean {size:.0} bytes");
    }
    if only
        .iter()
        .any(|i| matches!(i, Impl::KafkaStreams | Impl::Quix))
    {
        // The peers' classification, from the same schemas and a topology
        // without tier limits (like privacy-router's here), checked by
        // classify.py against privacy-router's own report.
        let t = dir.join(format!("peers-{run_id}-load.yaml"));
        // The Quix peer's virtualenv has PyYAML (scripts/bench-peers.sh
        // makes it first).
        let venv = Path::new("target/peers-venv/bin/python");
        let python = if venv.exists() {
            venv
        } else {
            Path::new("python3")
        };
        let status = Command::new(python)
            .args(["benches/peers/classify.py", "--topology"])
            .arg(&t)
            .arg("-o")
            .arg(dir.join("classification.json"))
            .status()
            .unwrap();
        assert!(status.success(), "benches/peers/classify.py failed");
    }
    // cell name → one Measured per round (None: failed).
    let mut cells: BTreeMap<(Impl, String), Vec<Option<Measured>>> = BTreeMap::new();
    let mut failed = Vec::new();
    // One cell on a settled broker. Its topics (outputs, state, the peers'
    // internal ones) go after it, so every cell meets a broker with the
    // same topics.
    let run_cell = |imp: Impl, g: &str, app: &str, title: &str| {
        eprintln!("== {title}: {} ({g})", imp.name());
        settle(broker.pid());
        let input = &inputs[usize::from(imp.json_input())].1;
        let m = cell(a, &broker, &brokers, dir, imp, g, input, app);
        broker.delete_topics_containing(app);
        match &m {
            Ok(m) => eprintln!(
                "   {:.0} events/s, {:.1} µs CPU/event{} (broker {:.1}), peak RSS {:.0} MB",
                m.events_per_s,
                m.cpu_us_per_event,
                m.rdkafka_cpu_us_per_event
                    .map(|r| format!(", {r:.1} in librdkafka's threads"))
                    .unwrap_or_default(),
                m.broker_cpu_us_per_event,
                m.peak_rss_mb
            ),
            Err(e) => eprintln!("   FAILED: {e}"),
        }
        m
    };
    for round in 1..=a.warmup_rounds {
        let g = &a.guarantees[0];
        let title = format!("warm-up {round}/{} (not counted)", a.warmup_rounds);
        for &imp in &only {
            let app = format!("peers-{run_id}-w{round}-{}-{}", imp.name(), short(g));
            // Not counted, whatever it measured or however it failed.
            let _ = run_cell(imp, g, &app, &title);
        }
    }
    for round in 1..=a.rounds {
        let title = format!("round {round}/{}", a.rounds);
        for g in &a.guarantees {
            for &imp in &only {
                let app = format!("peers-{run_id}-r{round}-{}-{}", imp.name(), short(g));
                let m = run_cell(imp, g, &app, &title);
                if let Err(e) = &m {
                    failed.push(format!("round {round} {} {g}: {e}", imp.name()));
                }
                cells.entry((imp, g.clone())).or_default().push(m.ok());
            }
        }
    }
    report(a, &cells, failed)
}

/// Waits (up to 20 s) until the broker has been nearly idle for a second,
/// so that its background work after one cell (deleting its topics, log
/// cleaning, transaction markers, group expiry) is not counted in the next
/// cell's broker CPU and does not slow it down.
fn settle(broker: u32) {
    let start = Instant::now();
    let mut before = cpu_secs(broker);
    while start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_secs(broker);
        if now - before < 0.1 {
            break;
        }
        before = now;
    }
    eprintln!(
        "   broker settled after {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

fn short(g: &str) -> &str {
    if g == "exactly_once" {
        "eos"
    } else {
        "alos"
    }
}

/// Runs one implementation to the end of the input and measures it.
#[allow(clippy::too_many_arguments)]
fn cell(
    a: &Args,
    broker: &Broker,
    brokers: &str,
    dir: &Path,
    imp: Impl,
    g: &str,
    input: &str,
    app: &str,
) -> Result<Measured, String> {
    let tiers = [
        format!("{app}.public"),
        format!("{app}.internal"),
        format!("{app}.restricted"),
    ];
    let log = dir.join(format!("{app}.log"));
    let (children, outputs) = match imp {
        Impl::RouterAvro | Impl::RouterJson | Impl::RouterAvroThreads2 | Impl::RouterAvroTwice => {
            for t in &tiers {
                broker.create_topic(t, a.partitions, false);
            }
            broker.create_topic(&format!("{app}.dlq"), a.partitions, false);
            broker.create_topic(
                &format!("{app}-entity-versions-changelog"),
                a.partitions,
                true,
            );
            let format = if imp == Impl::RouterJson {
                "json"
            } else {
                "avro"
            };
            let t = topology(dir, app, input, &tiers, format, g);
            let children = match imp {
                Impl::RouterAvroThreads2 => {
                    let flags = ["--stream-threads", "2"];
                    vec![Processor::start_as(brokers, &t, &log, &[], "bench", &flags).child]
                }
                Impl::RouterAvroTwice => ["bench-a", "bench-b"]
                    .into_iter()
                    .map(|i| {
                        let log = dir.join(format!("{app}-{i}.log"));
                        Processor::start_as(brokers, &t, &log, &[], i, &[]).child
                    })
                    .collect(),
                _ => vec![Processor::start(brokers, &t, &log, &[]).child],
            };
            (children, tiers.to_vec())
        }
        Impl::FanoutAvro
        | Impl::FanoutJson
        | Impl::FanoutAvroHeaders
        | Impl::FanoutJsonHeaders
        | Impl::CopyAvro => {
            let mode = match imp {
                Impl::CopyAvro => "copy",
                Impl::FanoutAvroHeaders | Impl::FanoutJsonHeaders => "fanout-headers",
                _ => "fanout",
            };
            let outputs: Vec<String> = if mode == "copy" {
                vec![format!("{app}.copy")]
            } else {
                ["a", "b", "c"].map(|t| format!("{app}.{t}")).to_vec()
            };
            for t in &outputs {
                broker.create_topic(t, a.partitions, false);
            }
            if mode != "copy" {
                broker.create_topic(&format!("{app}.state"), a.partitions, true);
            }
            let base = if mode == "copy" {
                format!("{app}.copy")
            } else {
                app.to_owned()
            };
            // It would stop once it has copied this many: it runs until it
            // is stopped instead, like the others.
            let spec = format!("{brokers}|{input}|{base}|{app}|{}|{mode}", usize::MAX);
            let child = Command::new(std::env::current_exe().unwrap())
                .args(["--bench", "--passthrough", &spec, "--guarantee", g])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            (vec![child], outputs)
        }
        Impl::KafkaStreams | Impl::Quix => {
            for t in &tiers {
                broker.create_topic(t, a.partitions, false);
            }
            let mut cmd = Command::new("bash");
            if imp == Impl::Quix {
                let g = if g == "exactly_once" {
                    "exactly-once"
                } else {
                    "at-least-once"
                };
                cmd.args(["benches/peers/quix/run.sh", "--guarantee", g]);
            } else {
                let g = if g == "exactly_once" {
                    "exactly_once_v2"
                } else {
                    "at_least_once"
                };
                let dlq = format!("{app}.dlq");
                broker.create_topic(&dlq, a.partitions, false);
                cmd.args(["benches/peers/kafka-streams/run.sh", "--guarantee", g])
                    .args(["--dead-letter", &dlq]);
            }
            let child = cmd
                .args(["--bootstrap", brokers, "--input", input])
                .args([
                    "--public",
                    &tiers[0],
                    "--internal",
                    &tiers[1],
                    "--restricted",
                    &tiers[2],
                ])
                .args(["--application-id", app])
                .arg("--classification")
                .arg(dir.join("classification.json"))
                .arg("--state-dir")
                .arg(dir.join("state").join(app))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .map_err(|e| format!("{}: {e}", imp.name()))?;
            (vec![child], tiers.to_vec())
        }
    };
    let mut children: Vec<Running> = children.into_iter().map(Running).collect();
    let expected = a.events * imp.outputs_per_event();
    let m = count(
        brokers,
        &outputs,
        expected,
        imp.outputs_per_event(),
        &mut children,
        broker.pid(),
        Duration::from_secs(a.timeout_secs),
    )
    .map_err(|e| format!("{e} (log: {})", log.display()))?;
    Ok(m)
}

/// A child process stopped (SIGTERM, then SIGKILL after 20 s) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts the committed records of `topics` until `expected`, measuring the
/// window from the first committed record to the last; CPU and peak RSS are
/// the sums over `children`.
fn count(
    brokers: &str,
    topics: &[String],
    expected: usize,
    per_event: usize,
    children: &mut [Running],
    broker_pid: u32,
    timeout: Duration,
) -> Result<Measured, String> {
    let c: BaseConsumer<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("peers-count-{:x}", fastrand::u32(..)))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "20")
        .set("fetch.min.bytes", "1")
        .create_with_context(QuietContext)
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = c
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(t, p.id(), Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    let cpu = || pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let rdkafka_cpu = || {
        pids.iter()
            .filter_map(|p| rdkafka_cpu_secs(*p))
            .reduce(|a, b| a + b)
    };
    let started = Instant::now();
    let mut seen = 0usize;
    let mut first: Option<(Instant, usize, f64, Option<f64>, f64)> = None;
    let mut last_check = Instant::now();
    while seen < expected {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                seen += 1;
                if first.is_none() {
                    let t0 = Instant::now();
                    let (cpu0, rcpu0, bcpu0) = (cpu(), rdkafka_cpu(), cpu_secs(broker_pid));
                    // What the first transaction committed is readable at
                    // once: it is outside the window.
                    while let Some(Ok(_)) = c.poll(Duration::ZERO) {
                        seen += 1;
                    }
                    first = Some((t0, seen, cpu0, rcpu0, bcpu0));
                }
            }
            Some(Err(e)) => return Err(format!("counting outputs: {e}")),
            None => {}
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = Instant::now();
            for child in children.iter_mut() {
                if let Ok(Some(status)) = child.0.try_wait() {
                    return Err(format!(
                        "exited ({status}) after {seen} of {expected} outputs"
                    ));
                }
            }
            if started.elapsed() > timeout {
                return Err(format!("{seen} of {expected} outputs after {timeout:?}"));
            }
        }
    }
    let (t0, seen0, cpu0, rcpu0, bcpu0) = first.expect("records were counted");
    let window_s = t0.elapsed().as_secs_f64();
    let (cpu1, rcpu1, bcpu1) = (cpu(), rdkafka_cpu(), cpu_secs(broker_pid));
    let hwm: u64 = pids.iter().map(|p| rss_kb(*p).1).sum();
    if seen > expected {
        return Err(format!("{seen} outputs, {expected} expected: duplicates"));
    }
    let window_events = (expected - seen0) as f64 / per_event as f64;
    if window_events < 1.0 || window_s <= 0.0 {
        return Err("every output came in the first transaction: too few events to measure".into());
    }
    Ok(Measured {
        events_per_s: window_events / window_s,
        cpu_us_per_event: 1e6 * (cpu1 - cpu0) / window_events,
        rdkafka_cpu_us_per_event: rcpu0.zip(rcpu1).map(|(a, b)| 1e6 * (b - a) / window_events),
        broker_cpu_us_per_event: 1e6 * (bcpu1 - bcpu0) / window_events,
        peak_rss_mb: hwm as f64 / 1024.0,
        window_s,
        window_events,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn stats(v: Vec<f64>) -> Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({"median": median(v.clone()), "min": min, "max": max, "rounds": v})
}

type Cells = BTreeMap<(Impl, String), Vec<Option<Measured>>>;

/// Per round, `f(a) / f(b)` where both cells of that round succeeded.
fn ratios(cells: &Cells, a: Impl, b: Impl, g: &str, f: fn(&Measured) -> f64) -> Vec<f64> {
    let (Some(xs), Some(ys)) = (cells.get(&(a, g.to_owned())), cells.get(&(b, g.to_owned())))
    else {
        return Vec::new();
    };
    xs.iter()
        .zip(ys)
        .filter_map(|(x, y)| Some(f(x.as_ref()?) / f(y.as_ref()?)))
        .collect()
}

fn report(a: &Args, cells: &Cells, failed: Vec<String>) -> Value {
    let mut out = json!({
        "events": a.events,
        "partitions": a.partitions,
        "rounds": a.rounds,
        "warmup_rounds": a.warmup_rounds,
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "cells": {},
        "failed": failed,
    });
    let mut table = String::from(
        "| implementation | guarantee | events/s (median) | range | CPU µs/event | of which librdkafka's threads | peak RSS MB | broker CPU µs/event |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((imp, g), rounds) in cells {
        let ok: Vec<&Measured> = rounds.iter().flatten().collect();
        let pick = |f: fn(&Measured) -> f64| ok.iter().map(|m| f(m)).collect::<Vec<_>>();
        let rate = pick(|m| m.events_per_s);
        let rdkafka: Vec<f64> = ok
            .iter()
            .filter_map(|m| m.rdkafka_cpu_us_per_event)
            .collect();
        out["cells"][format!("{}/{g}", imp.name())] = json!({
            "implementation": imp.label(),
            "events_per_s": stats(rate.clone()),
            "cpu_us_per_event": stats(pick(|m| m.cpu_us_per_event)),
            "rdkafka_threads_cpu_us_per_event": if rdkafka.is_empty() {
                Value::Null
            } else {
                stats(rdkafka.clone())
            },
            "broker_cpu_us_per_event": stats(pick(|m| m.broker_cpu_us_per_event)),
            "peak_rss_mb": stats(pick(|m| m.peak_rss_mb)),
            "window_seconds": pick(|m| m.window_s),
            "window_events": pick(|m| m.window_events),
            "failed_rounds": rounds.len() - ok.len(),
        });
        let lo = rate.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rate.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.0}–{:.0} | {:.1} | {} | {:.0} | {:.1} |\n",
            imp.label(),
            g.replace('_', "-"),
            median(rate.clone()),
            lo,
            hi,
            median(pick(|m| m.cpu_us_per_event)),
            if rdkafka.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.1}", median(rdkafka.clone()))
            },
            median(pick(|m| m.peak_rss_mb)),
            median(pick(|m| m.broker_cpu_us_per_event)),
        ));
    }
    let mut summary = String::from("bench-peers:");
    let mut ratio_lines = String::new();
    for g in &a.guarantees {
        let rate = |m: &Measured| m.events_per_s;
        let cpu = |m: &Measured| m.cpu_us_per_event;
        let rss = |m: &Measured| m.peak_rss_mb;
        let named = [
            (
                "vs-kafka-streams",
                ratios(cells, Impl::RouterJson, Impl::KafkaStreams, g, rate),
            ),
            (
                "vs-quix",
                ratios(cells, Impl::RouterJson, Impl::Quix, g, rate),
            ),
            (
                "cpu-vs-fanout",
                ratios(cells, Impl::RouterAvro, Impl::FanoutAvro, g, cpu),
            ),
            (
                "cpu-vs-fanout-with-headers",
                ratios(cells, Impl::RouterAvro, Impl::FanoutAvroHeaders, g, cpu),
            ),
            (
                "json-cpu-vs-fanout",
                ratios(cells, Impl::RouterJson, Impl::FanoutJson, g, cpu),
            ),
            (
                "json-cpu-vs-fanout-with-headers",
                ratios(cells, Impl::RouterJson, Impl::FanoutJsonHeaders, g, cpu),
            ),
            (
                "cpu-vs-kafka-streams",
                ratios(cells, Impl::RouterJson, Impl::KafkaStreams, g, cpu),
            ),
            (
                "rss-vs-kafka-streams",
                ratios(cells, Impl::RouterJson, Impl::KafkaStreams, g, rss),
            ),
            (
                "2-threads-vs-1",
                ratios(cells, Impl::RouterAvroThreads2, Impl::RouterAvro, g, rate),
            ),
            (
                "2-instances-vs-1",
                ratios(cells, Impl::RouterAvroTwice, Impl::RouterAvro, g, rate),
            ),
            (
                "2-threads-vs-2-instances",
                ratios(
                    cells,
                    Impl::RouterAvroThreads2,
                    Impl::RouterAvroTwice,
                    g,
                    rate,
                ),
            ),
        ];
        for (name, v) in named {
            let m = median(v.clone());
            out["ratios"][g][name] = json!({"median": m, "rounds": v});
            if !m.is_nan() {
                ratio_lines.push_str(&format!("| {name} | {} | {m:.2} |\n", g.replace('_', "-")));
            }
            if g == "exactly_once"
                && ["vs-kafka-streams", "vs-quix", "cpu-vs-fanout"].contains(&name)
            {
                if m.is_nan() {
                    summary.push_str(&format!(" {name}=n/a"));
                } else {
                    summary.push_str(&format!(" {name}={m:.2}"));
                }
            }
        }
    }
    out["summary"] = json!(summary);
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    if a.docs != "-" {
        let section = format!(
            "<!-- bench-peers:begin (written by scripts/bench-peers.sh) -->\n{} events, {} partitions, median of {} interleaved rounds after {} not counted (warm-up), {} ({}).\n\n{table}\n| ratio (per round, median) | guarantee | |\n|---|---|---:|\n{ratio_lines}\n`{summary}`\n<!-- bench-peers:end -->",
            a.events, a.partitions, a.rounds, a.warmup_rounds, out["date"].as_str().unwrap_or_default(), out["machine"].as_str().unwrap_or_default(),
        );
        write_section(Path::new(&a.docs), &section);
    }
    out
}

/// Replaces the `bench-peers` section of a Markdown file (or appends it).
fn write_section(path: &Path, section: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (
        text.find("<!-- bench-peers:begin"),
        text.find("<!-- bench-peers:end -->"),
    ) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{section}{}",
            &text[..b],
            &text[e + "<!-- bench-peers:end -->".len()..]
        ),
        _ => format!("{text}\n## Side by side with the peers\n\n{section}\n"),
    };
    std::fs::write(path, text).unwrap();
}
