//! What the end-to-end benchmarks share (`benches/e2e.rs`,
//! `benches/peers.rs`): loading generated events, CPU and memory of a
//! process, `privacy-router run` as a child process, and the Rust
//! passthroughs (consume → produce copies with the processor's client
//! settings) that are the floor every implementation is measured against.

#![allow(dead_code, unreachable_pub)] // each bench uses its own part of it

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use privacy_router::config::{Guarantee, Topology};
use privacy_router::registry::file;
use privacy_router::route::{H_ENTITY_TYPE, H_ENTITY_VERSION, H_EVENT_TYPE, H_TIER};
use privacy_router::runtime::kafka::{await_delivered, send_waiting, QuietContext};
use privacy_router::runtime::Connection;
use privacy_router::sample::{Generator, Options};
use privacy_router::schema::{binary, CompiledSchema};

/// User + system CPU seconds of a process so far.
pub fn cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// User + system CPU seconds in a `/proc/…/stat` line (a process's or a
/// thread's).
fn stat_cpu_secs(stat: &str) -> f64 {
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/pid/stat (utime, stime), in clock ticks.
    (ticks(11) + ticks(12)) / 100.0
}

/// User + system CPU seconds so far of a process's librdkafka threads
/// (named `rdk:…`: the producers' and consumers' broker threads and their
/// main threads), or `None` when it has none (a JVM). What the process's
/// own threads spend inside librdkafka (`rd_kafka_producev`, building the
/// headers, polling) is not in it.
pub fn rdkafka_cpu_secs(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut found = false;
    let mut secs = 0.0;
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The thread's name is the second field, in parentheses.
        let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')'));
        if name.is_some_and(|(n, _)| n.starts_with("rdk:")) {
            found = true;
            secs += stat_cpu_secs(&stat);
        }
    }
    found.then_some(secs)
}

/// Resident memory of a process now and at its peak (VmRSS, VmHWM), in KiB.
pub fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// The file registry over `avro/` for a topology.
pub fn files(topology: &Path) -> file::FileRegistry {
    let t = Topology::load(topology).unwrap();
    file::load(Path::new("avro"), &t.engine.subjects, &t.spec.input.topics).unwrap()
}

/// Generates and produces `n` events keyed by entity id; returns the load
/// rate (events/s) and the mean value size.
pub fn load(
    brokers: &str,
    input: &str,
    topology: &Path,
    n: usize,
    opts: Options,
    rate: Option<u64>,
) -> (f64, f64) {
    let reg = files(topology);
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
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(input).payload(&v[..]);
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

/// The entity id of a framed Avro event, or of a JSON envelope.
fn entity_id(schemas: &HashMap<u32, CompiledSchema>, v: &[u8]) -> Option<String> {
    if v.first() == Some(&b'{') {
        let doc: serde_json::Value = serde_json::from_slice(v).ok()?;
        return doc.get("entity_id")?.as_str().map(str::to_owned);
    }
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
pub struct Processor {
    /// The process.
    pub child: Child,
    metrics: String,
}

impl Processor {
    /// Starts `privacy-router run` over `topology`, logging to `log`, with
    /// extra librdkafka settings.
    pub fn start(brokers: &str, topology: &Path, log: &Path, extra: &[String]) -> Processor {
        Processor::start_as(brokers, topology, log, extra, "bench", &[])
    }

    /// [`Processor::start`] with another instance id and more `run` flags.
    pub fn start_as(
        brokers: &str,
        topology: &Path,
        log: &Path,
        extra: &[String],
        instance: &str,
        flags: &[&str],
    ) -> Processor {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // `PRIVACY_ROUTER_BIN`: another build of the processor, for an A/B
        // comparison of two builds on one broker.
        let bin = std::env::var_os("PRIVACY_ROUTER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_privacy-router").into());
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--topology")
            .arg(topology)
            .args(["--brokers", brokers])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--instance-id", instance])
            .args(flags)
            .env("PRIVACY_ROUTER_HASH_KEY", "bench-key-0123456789abcdef")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for x in extra {
            cmd.args(["-X", x]);
        }
        Processor {
            child: cmd.spawn().unwrap(),
            metrics: format!("127.0.0.1:{port}"),
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).ok()?;
        let status = body.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body))
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .map(|(_, b)| {
                b.lines()
                    .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    pub fn rss(&self) -> (u64, u64) {
        rss_kb(self.child.id())
    }

    /// Waits until `n` input records are committed; returns the seconds
    /// from the first record read to that commit.
    pub fn time_until_committed(
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

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The passthrough: the same consumer and producer settings as the
/// processor (`Connection`), the same guarantee and commit interval; it
/// copies every record unchanged.
pub fn passthrough(spec: &str, guarantee: &str, kafka_config: &[String]) {
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
    let eos = guarantee == "exactly_once";
    let guarantee = if eos {
        Guarantee::ExactlyOnce
    } else {
        Guarantee::AtLeastOnce
    };
    let conn = Connection {
        brokers: brokers.to_owned(),
        overrides: kafka_config
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
            for (t, tier) in targets.iter().zip(["public", "internal", "restricted"]) {
                let mut headers = headers.clone();
                if mode == "fanout-headers" {
                    // The contract's routing headers, with values of the
                    // usual sizes.
                    for (key, value) in [
                        (H_EVENT_TYPE, "order.created"),
                        (H_ENTITY_TYPE, "order"),
                        (H_ENTITY_VERSION, "12"),
                        (H_TIER, tier),
                    ] {
                        headers = headers.insert(Header {
                            key,
                            value: Some(value),
                        });
                    }
                }
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(t).headers(headers);
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
            // Deliver first, as the processor does.
            await_delivered(&producer, None);
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
