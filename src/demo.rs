//! `privacy-router demo`: the whole product on an embedded broker.
//!
//! Starts librdkafka's in-process mock cluster, creates the topics of the
//! topology (the input with several partitions, the tier topics, the
//! dead-letter topic and the changelog), produces the sample events into
//! the input, runs the real runtime ([`crate::runtime::run_watched`], the
//! code path of `run`) with the file registry over `avro/` until every
//! input record is committed and, under `ordering.on_gap: hold`, every held
//! event is released (a real gap after its reorder window, on the wall
//! clock: the sample is produced in well under a window, so stream time
//! does not end it), then reads back what each tier topic and the
//! dead-letter topic received (`read_committed`) and writes it as JSON
//! lines with a summary.
//!
//! The mock cluster keeps everything in memory and ends with the process.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::config::{EngineConfig, GapPolicy, Topology};
use crate::project::Hasher;
use crate::record::{Destination, OutRecord, Tier, TopicName};
use crate::registry::SharedRegistry;
use crate::replay::{bytes_json, headers_json, Renderer};
use crate::runtime::kafka::{send_waiting, QuietContext};
use crate::runtime::{self, Connection, RegistryChoice, RunConfig, Watch};
use crate::telemetry::{names, Metrics};

/// What the demo needs.
#[derive(Debug)]
pub struct DemoConfig {
    /// The topology (its topic names are created on the mock cluster).
    pub topology: Topology,
    /// The file registry over `avro/`.
    pub registry: SharedRegistry,
    /// The pseudonym key.
    pub hasher: Option<Hasher>,
    /// Sample events, one value per line.
    pub events: PathBuf,
    /// Where the JSON lines go.
    pub out: PathBuf,
    /// Partitions of the input topic (and the changelog).
    pub partitions: i32,
    /// Serve `/metrics` here while the demo runs.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Give up when the runtime has not caught up after this long.
    pub timeout: Duration,
}

/// What the demo saw, for the summary and the tests.
#[derive(Debug, Default)]
pub struct DemoReport {
    /// Records produced into the input topic.
    pub produced: u64,
    /// Records read back per output topic.
    pub received: BTreeMap<String, u64>,
    /// Dead letters read back per reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// The summary table.
    pub table: String,
}

/// Runs the demo.
///
/// # Errors
/// The mock cluster, the sample file or the runtime failed, or the runtime
/// did not catch up in time.
pub async fn demo(config: DemoConfig) -> Result<DemoReport> {
    let started = Instant::now();
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    let spec = &config.topology.spec;
    let engine = &config.topology.engine;
    for t in &spec.input.topics {
        cluster.create_topic(t, config.partitions, 1)?;
    }
    cluster.create_topic(&config.topology.changelog_topic(), config.partitions, 1)?;
    for t in engine.topics.tiers.iter() {
        cluster.create_topic(t, config.partitions, 1)?;
    }
    cluster.create_topic(&engine.topics.dead_letter, 1, 1)?;
    tracing::info!(brokers = %brokers, "Mock cluster up.");

    let Some(input) = spec.input.topics.first().cloned() else {
        anyhow::bail!(
            "the demo produces its sample into a Kafka input topic, and {} has none (it reads NATS JetStream): run it with a topology that has input.topics",
            config.topology.file.display()
        );
    };
    let produced = tokio::task::block_in_place(|| produce(&brokers, &input, &config.events))?;
    let expected = produced.1;

    let metrics = Metrics::default();
    let watch = Watch::default();
    let run = RunConfig {
        topology: config.topology.clone(),
        connection: Connection {
            brokers: brokers.clone(),
            overrides: Vec::new(),
        },
        instance_id: "demo".into(),
        registry: RegistryChoice::Shared(config.registry.clone()),
        hasher: config.hasher.clone(),
        metrics_addr: config.metrics_addr,
        metrics: metrics.clone(),
        create_topics: false,
        changelog_replication: None,
        grace: Duration::from_secs(30),
        stream_threads: config.topology.spec.processing.stream_threads,
        // The embedded cluster is up already.
        startup_timeout: Some(Duration::from_secs(60)),
        nats: crate::runtime::NatsConnection::default(),
    };
    let progress = watch.progress.clone();
    // Held events wait up to a reorder window more.
    let deadline = match engine.on_gap {
        GapPolicy::Hold => config.timeout + Duration::from_millis(engine.hold.window_ms as u64),
        _ => config.timeout,
    };
    let wanted = expected.clone();
    let watched = metrics.clone();
    let caught_up = async move {
        let until = Instant::now() + deadline;
        // Twice in a row: a commit publishes its offsets a moment before
        // its counts.
        let mut settled = 0;
        loop {
            let committed = progress.committed();
            let done = wanted.iter().all(|((t, p), end)| {
                committed
                    .get(&(t.clone(), *p))
                    .is_some_and(|next| next >= end)
            });
            settled = if done && still_held(&watched) == 0 {
                settled + 1
            } else {
                0
            };
            if settled >= 2 || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    runtime::run_watched(run, watch.clone(), caught_up).await?;
    let committed = watch.progress.committed();
    for ((t, p), end) in &expected {
        if committed.get(&(t.clone(), *p)).is_none_or(|n| n < end) {
            bail!("the runtime did not process {t}[{p}] to offset {end} within {deadline:?}");
        }
    }
    let held = still_held(&metrics);
    if held > 0 {
        bail!("the runtime still held {held} event(s) for the reorder window after {deadline:?}");
    }

    let mut registry = config.registry.clone();
    let report = tokio::task::block_in_place(|| {
        read_back(&brokers, &config, &mut registry, produced.0, &metrics)
    })?;
    drop(cluster);
    // The summary is the command's output: stdout (logs go to stderr).
    println!(
        "privacy-router demo ({:.1} s, embedded mock cluster):\n{}",
        started.elapsed().as_secs_f64(),
        report.table
    );
    println!(
        "Wrote {0}/public.jsonl, {0}/internal.jsonl, {0}/restricted.jsonl and {0}/dead-letter.jsonl.",
        config.out.display()
    );
    Ok(report)
}

type Ends = BTreeMap<(String, i32), i64>;

/// The `how` labels of [`names::RELEASED`].
const RELEASED: [&str; 3] = ["in_order", "timeout", "bound"];

/// Events held for the reorder window and not yet released: the larger of
/// those held in committed transactions less those released in committed
/// ones, and the held-events gauge (what is held now, committed or not).
fn still_held(metrics: &Metrics) -> u64 {
    let get = |name: &str, labels: &[(&str, &str)]| metrics.value(name, labels).unwrap_or(0.0);
    let released: f64 = RELEASED
        .iter()
        .map(|how| get(names::RELEASED, &[("how", how)]))
        .sum();
    let committed = (get(names::HELD, &[]) - released).max(0.0);
    committed.max(get(names::HELD_NOW, &[])) as u64
}

/// Produces every line of `events` into `topic`, keyed by `entity_id` where
/// the line is a JSON event that has one. Returns the count and the end
/// offset of every partition written.
fn produce(brokers: &str, topic: &str, events: &PathBuf) -> Result<(u64, Ends)> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .context("creating the sample producer")?;
    let file = File::open(events).with_context(|| format!("opening {}", events.display()))?;
    let mut n = 0u64;
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let key = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
            v.get("entity_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let mut rec: BaseRecord<'_, str, str> = BaseRecord::to(topic).payload(&line);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        send_waiting(&producer, rec)
            .map_err(|(e, _)| e)
            .context("producing a sample event")?;
        n += 1;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("producing the sample events")?;
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut ends = Ends::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) =
                producer
                    .client()
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > 0 {
                ends.insert((topic.to_owned(), p.id()), high);
            }
        }
    }
    Ok((n, ends))
}

/// Reads every output topic from the beginning (committed records only)
/// and writes the JSON lines.
fn read_back(
    brokers: &str,
    config: &DemoConfig,
    registry: &mut SharedRegistry,
    produced: u64,
    metrics: &Metrics,
) -> Result<DemoReport> {
    fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    let engine = &config.topology.engine;
    let mut report = DemoReport {
        produced,
        ..Default::default()
    };
    let mut renderer = Renderer::default();
    let mut outputs: Vec<(String, TopicName, Destination)> = Tier::ALL
        .iter()
        .map(|t| {
            let topic = engine.topics.tiers[t.index()];
            (format!("{t}.jsonl"), topic, Destination::Tier(*t))
        })
        .collect();
    outputs.push((
        "dead-letter.jsonl".into(),
        engine.topics.dead_letter,
        Destination::DeadLetter,
    ));
    for (file, topic, destination) in outputs {
        let path = config.out.join(&file);
        let mut w = BufWriter::new(
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        let records = read_topic(brokers, topic, destination)?;
        report
            .received
            .insert(topic.to_string(), records.len() as u64);
        let dead = destination == Destination::DeadLetter;
        for (partition, offset, rec) in records {
            let value = if dead {
                bytes_json(rec.value.as_deref())
            } else {
                renderer.value(registry, rec.value.as_deref().unwrap_or_default())?
            };
            if dead {
                let reason = rec
                    .header("x-error-reason")
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .unwrap_or_default();
                *report.dead_letters.entry(reason).or_default() += 1;
            }
            let line = json!({
                "partition": partition,
                "offset": offset,
                "key": bytes_json(rec.key.as_deref()),
                "headers": headers_json(&rec),
                "value": value,
            });
            serde_json::to_writer(&mut w, &line)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    report.table = table(&report, metrics, engine);
    Ok(report)
}

fn table(report: &DemoReport, metrics: &Metrics, engine: &EngineConfig) -> String {
    let mut rows = Vec::new();
    let mut row = |k: &str, v: u64| rows.push((k.to_owned(), v));
    row("records produced to the input", report.produced);
    for t in Tier::ALL {
        let topic = &engine.topics.tiers[t.index()];
        row(
            &format!("-> {topic} ({t})"),
            report.received.get(&**topic).copied().unwrap_or(0),
        );
    }
    row(
        &format!("-> {} (dead letter)", engine.topics.dead_letter),
        report
            .received
            .get(&*engine.topics.dead_letter)
            .copied()
            .unwrap_or(0),
    );
    let get =
        |name: &str, labels: &[(&str, &str)]| metrics.value(name, labels).unwrap_or(0.0) as u64;
    for v in ["accepted", "duplicate", "stale", "gap", "unordered"] {
        row(
            &format!("order: {v}"),
            get(names::ORDERING, &[("verdict", v)]),
        );
    }
    let held = get(names::HELD, &[]);
    if held > 0 {
        row("held for reordering", held);
        for how in RELEASED {
            let n = get(names::RELEASED, &[("how", how)]);
            if n > 0 {
                row(&format!("released: {how}"), n);
            }
        }
    }
    row("declared-tier mismatches", get(names::TIER_MISMATCHES, &[]));
    for (reason, n) in &report.dead_letters {
        row(&format!("dead letter: {reason}"), *n);
    }
    row(
        "transactions committed",
        get(names::TRANSACTIONS, &[("outcome", "committed")]),
    );
    crate::replay::aligned(&rows)
}

/// Every committed record of a topic, from the beginning to the end of
/// each partition, as records for `destination` (what the topic holds).
fn read_topic(
    brokers: &str,
    topic: TopicName,
    destination: Destination,
) -> Result<Vec<(i32, i64, OutRecord)>> {
    let consumer: BaseConsumer<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "privacy-router-demo-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietContext)?;
    let md = consumer
        .client()
        .fetch_metadata(Some(topic.as_str()), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut open = 0;
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic.as_str(), p.id(), Offset::Beginning)?;
            open += 1;
        }
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while open > 0 && Instant::now() < until {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    std::borrow::Cow::Owned(h.key.to_owned()),
                                    crate::record::HeaderValue::from(h.value.unwrap_or_default()),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.partition(),
                    m.offset(),
                    OutRecord {
                        topic,
                        destination,
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    },
                ));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => tracing::warn!(error = %e, "Reading back failed; retrying."),
            None => {}
        }
    }
    if open > 0 {
        bail!("could not read {topic} to its end");
    }
    Ok(out)
}
