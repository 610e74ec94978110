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
//!   the input's timestamp);
//! * **memory**: `privacy-router run` over events of ~1,000,000 distinct
//!   entities; resident memory (VmRSS, VmHWM) and tracked entities at the
//!   end.
//!
//! Without `--bench` (as `cargo test` runs it) it does a small smoke run on
//! the Kafka the test script shares, so the harness itself is tested.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use privacy_router::config::{Guarantee, Topology};
use privacy_router::registry::file;
use privacy_router::runtime::kafka::{send_waiting, QuietContext};
use privacy_router::runtime::Connection;
use privacy_router::sample::{Format, Generator, Options};
use privacy_router::schema::{binary, CompiledSchema};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
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

/// User + system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/pid/stat (utime, stime), in clock ticks.
    (ticks(11) + ticks(12)) / 100.0
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
        passthrough(spec, &a);
        return;
    }
    let r = run(&a);
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
}

// The brokers of the broker tests (Apache Kafka from scripts/kafka.sh).
#[path = "../tests/support/mod.rs"]
mod support;

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

fn setup(broker: &Broker, phase: &str, partitions: i32, guarantee: &str) -> Setup {
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

fn files(topology: &Path) -> file::FileRegistry {
    let t = Topology::load(topology).unwrap();
    file::load(Path::new("avro"), &t.engine.subjects, &t.spec.input.topics).unwrap()
}

/// Generates and produces `n` events keyed by entity id; returns the load
/// rate (events/s) and the mean value size.
fn load(brokers: &str, s: &Setup, n: usize, opts: Options, rate: Option<u64>) -> (f64, f64) {
    let reg = files(&s.topology);
    let schemas: HashMap<u32, CompiledSchema> = reg
        .events
        .iter()
        .map(|e| {
            (
                e.id,
                CompiledSchema::compile(&e.text, &Default::default()).unwrap(),
            )
        })
        .collect();
    let producer: BaseProducer<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(QuietContext)
        .unwrap();
    let mut g = Generator::new(&reg, opts);
    let started = Instant::now();
    let mut bytes = 0usize;
    for i in 0..n {
        if let Some(r) = rate {
            let due = started + Duration::from_micros(i as u64 * 1_000_000 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let v = g.next_record();
        bytes += v.len();
        let key = entity_id(&schemas, &v);
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(&s.input).payload(&v[..]);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        send_waiting(&producer, rec).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    (
        n as f64 / started.elapsed().as_secs_f64(),
        bytes as f64 / n as f64,
    )
}

fn entity_id(schemas: &HashMap<u32, CompiledSchema>, v: &[u8]) -> Option<String> {
    if v.first() != Some(&0) || v.len() < 5 {
        return None;
    }
    let s = schemas.get(&u32::from_be_bytes(v[1..5].try_into().ok()?))?;
    let d = binary::decode(s, &v[5..]).ok()?;
    let env = s.envelope().ok()?;
    match &d {
        privacy_router::record::Datum::Record(values) => {
            values.get(env.entity_id)?.as_str().map(str::to_owned)
        }
        _ => None,
    }
}

/// `privacy-router run` as a child process with metrics on a free port.
struct Processor {
    child: Child,
    metrics: String,
}

impl Processor {
    fn start(brokers: &str, s: &Setup, extra: &[String]) -> Processor {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_privacy-router"));
        cmd.arg("run")
            .arg("--topology")
            .arg(&s.topology)
            .args(["--brokers", brokers])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--instance-id", "bench"])
            .env("PRIVACY_ROUTER_HASH_KEY", "bench-key-0123456789abcdef")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(format!("target/bench-e2e/{}.log", s.app)).unwrap());
        for x in extra {
            cmd.args(["-X", x]);
        }
        Processor {
            child: cmd.spawn().unwrap(),
            metrics: format!("127.0.0.1:{port}"),
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).ok()?;
        let status = body.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body))
    }

    fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .map(|(_, b)| {
                b.lines()
                    .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    /// Waits until `n` input records are committed; returns the seconds
    /// from the first record read to that commit.
    fn time_until_committed(
        &mut self,
        n: usize,
        timeout: Duration,
        broker: u32,
    ) -> (f64, f64, f64) {
        let until = Instant::now() + timeout;
        let mut first: Option<Instant> = None;
        let mut cpu0 = (0.0, 0.0);
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "privacy-router exited; see target/bench-e2e/*.log"
            );
            assert!(
                Instant::now() < until,
                "privacy-router did not finish in {timeout:?}"
            );
            if first.is_none() && self.metric("privacy_router_records_consumed_total") > 0.0 {
                first = Some(Instant::now());
                cpu0 = (cpu_secs(self.child.id()), cpu_secs(broker));
                if let Ok(out) = std::env::var("E2E_PERF") {
                    // Profile the processor while it works (for development).
                    let _ = Command::new("perf")
                        .args(["record", "-F", "1999", "-g", "-o", &out, "-p"])
                        .arg(self.child.id().to_string())
                        .args(["--", "sleep", "3"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn();
                }
            }
            if self.metric("privacy_router_input_records_committed_total") >= n as f64 {
                return (
                    first.unwrap().elapsed().as_secs_f64(),
                    cpu_secs(self.child.id()) - cpu0.0,
                    cpu_secs(broker) - cpu0.1,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn run(a: &Args) -> serde_json::Value {
    let mut out = serde_json::json!({
        "broker": a.broker,
        "partitions": a.partitions,
        "guarantee": a.guarantee,
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
        let s = setup(&broker, "tp", a.partitions, &a.guarantee);
        eprintln!("== throughput: loading {} events", a.events);
        let (load_rate, size) = load(&brokers, &s, a.events, sample, None);
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
        let mut p = Processor::start(&brokers, &s, &a.kafka_config);
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
        let s = setup(&broker, "lat", a.partitions, &a.guarantee);
        eprintln!("== latency: {} events/s for {} s", a.rate, a.latency_secs);
        let p = Processor::start(&brokers, &s, &a.kafka_config);
        let until = Instant::now() + Duration::from_secs(120);
        while p.get("/readyz").map(|(c, _)| c) != Some(200) {
            assert!(Instant::now() < until, "privacy-router never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (brokers, topic, stop) = (brokers.clone(), s.tiers[2].clone(), stop.clone());
            std::thread::spawn(move || latencies(&brokers, &topic, &stop))
        };
        // Control: the same measurement on the input topic (producer →
        // broker → reader, no processor).
        let control = {
            let (brokers, topic, stop) = (brokers.clone(), s.input.clone(), stop.clone());
            std::thread::spawn(move || latencies(&brokers, &topic, &stop))
        };
        std::thread::sleep(Duration::from_secs(1));
        let n = (a.rate * a.latency_secs) as usize;
        let (achieved, _) = load(&brokers, &s, n, Options { seed: 8, ..sample }, Some(a.rate));
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
        let s = setup(&broker, "mem", a.partitions, &a.guarantee);
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
        load(&brokers, &s, a.memory_events, opts, None);
        let mut p = Processor::start(&brokers, &s, &a.kafka_config);
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

/// Receive time minus record timestamp of every record of `topic`
/// (read_committed), in milliseconds, until `stop`.
fn latencies(brokers: &str, topic: &str, stop: &AtomicBool) -> Vec<i64> {
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
                out.push(now_ms() - ts);
            }
        }
    }
    out
}

/// The passthrough: the same consumer and producer settings as the
/// processor (`Connection`), the same guarantee and commit interval; it
/// copies every record unchanged.
fn passthrough(spec: &str, a: &Args) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (brokers, input, output, group, expect, mode) = (
        parts[0],
        parts[1],
        parts[2],
        parts[3],
        parts[4].parse::<usize>().unwrap(),
        parts[5],
    );
    let targets: Vec<String> = match mode {
        "copy" => vec![output.to_owned()],
        _ => ["a", "b", "c"]
            .iter()
            .map(|t| format!("{output}.{t}"))
            .collect(),
    };
    let state = format!("{output}.state");
    let eos = a.guarantee == "exactly_once";
    let guarantee = if eos {
        Guarantee::ExactlyOnce
    } else {
        Guarantee::AtLeastOnce
    };
    let conn = Connection {
        brokers: brokers.to_owned(),
        overrides: a
            .kafka_config
            .iter()
            .filter_map(|s| s.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let producer: BaseProducer<QuietContext> = conn
        .producer(group, guarantee)
        .create_with_context(QuietContext)
        .unwrap();
    let consumer: BaseConsumer<QuietContext> = conn
        .consumer(group, "copy")
        .create_with_context(QuietContext)
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    if eos {
        producer.init_transactions(Duration::from_secs(30)).unwrap();
        producer.begin_transaction().unwrap();
    }
    let mut positions: HashMap<i32, i64> = HashMap::new();
    let mut copied = 0usize;
    let mut copied_since_poll = 0u64;
    let mut committed = 0usize;
    let mut first: Option<Instant> = None;
    let mut cpu0 = 0.0;
    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    let interval = Duration::from_millis(100);
    while committed < expect {
        if copied > 0 && last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("   passthrough: {copied} copied, {committed} committed");
            last_report = Instant::now();
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if first.is_none() {
                first = Some(Instant::now());
                cpu0 = cpu_secs(std::process::id());
            }
            let mut headers = OwnedHeaders::new();
            if let Some(hs) = m.headers() {
                for h in hs.iter() {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
            for t in &targets {
                let mut rec: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(t).headers(headers.clone());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(v) = m.payload() {
                    rec = rec.payload(v);
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    rec = rec.timestamp(ts);
                }
                send_waiting(&producer, rec).map_err(|(e, _)| e).unwrap();
            }
            if mode != "copy" {
                let v = m.offset().to_be_bytes();
                let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&state)
                    .key(m.key().unwrap_or_default())
                    .payload(&v[..])
                    .partition(m.partition());
                send_waiting(&producer, rec).map_err(|(e, _)| e).unwrap();
            }
            copied_since_poll += 1;
            if copied_since_poll.is_multiple_of(256) {
                producer.poll(Duration::ZERO);
            }
            positions.insert(m.partition(), m.offset() + 1);
            copied += 1;
        }
        if last_commit.elapsed() >= interval && copied > committed {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &positions {
                tpl.add_partition_offset(input, *p, Offset::Offset(*o))
                    .unwrap();
            }
            // Deliver first in 1 ms steps (rdkafka's flush sleeps in 100 ms
            // steps), as the processor does.
            while producer.in_flight_count() > 0 {
                producer.poll(Duration::from_millis(1));
            }
            if eos {
                let gm = consumer.group_metadata().unwrap();
                producer
                    .send_offsets_to_transaction(&tpl, &gm, Duration::from_secs(30))
                    .unwrap();
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .unwrap();
                producer.begin_transaction().unwrap();
            } else {
                producer.flush(Duration::from_secs(30)).unwrap();
                consumer
                    .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                    .unwrap();
            }
            committed = copied;
            last_commit = Instant::now();
        }
    }
    let secs = first.unwrap().elapsed().as_secs_f64();
    println!("passthrough {secs} {}", cpu_secs(std::process::id()) - cpu0);
    std::io::stdout().flush().unwrap();
}
