//! Shared harness of the broker tests: real Apache Kafka (KRaft, from
//! `scripts/kafka.sh`: the single node the test script starts and shares,
//! or a cluster of a test's own for tests that kill brokers or need TLS and
//! SASL), the registry stand-in, the processor as a child process
//! (`privacy-router run`), a producer that records where each input landed,
//! readers of the output topics, and the expected outputs computed by the
//! pure engine.
//!
//! Every scenario uses fresh topic names and a fresh consumer group.

#![allow(dead_code, deprecated, unreachable_pub)]

pub mod registry;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use privacy_router::config::Topology;
use privacy_router::order::hold::Holdback;
use privacy_router::order::MemoryStore;
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{Outcome, RawRecord, Source};
use privacy_router::registry::{file, MemoryRegistry};
use privacy_router::reorder::Reorder;
use privacy_router::runtime::kafka::{send_waiting, QuietContext};
use privacy_router::sample::{self, Format, Options};
use privacy_router::schema::{binary, json as sjson, CompiledSchema, SchemaLookup};

pub use registry::Registry;

/// The hash key of every scenario.
pub const KEY: &str = "broker-test-key-0123456789";

/// Broker tests run one at a time: each runs processors, feeders and
/// readers, and several at once on two cores would measure the machine,
/// not the processor. Hold the guard for the whole test.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    Serial {
        _lock: lock,
        started: Instant::now(),
    }
}

/// The turn of one broker test. When it ends, the test's name, whether it
/// passed and how long it took are appended to `target/broker-test-times.txt`
/// (the test script prints the file: the broker tests are most of its time).
pub struct Serial {
    _lock: std::sync::MutexGuard<'static, ()>,
    started: Instant,
}

impl Drop for Serial {
    fn drop(&mut self) {
        use std::io::Write as _;
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        let verdict = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        let line = format!(
            "{:>7.1} s  {verdict:<6} {name}\n",
            self.started.elapsed().as_secs_f64()
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/broker-test-times.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// A random suffix for topic and group names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// A Kafka cluster: the one the test script shares, or one of this test's
/// own (started with `scripts/kafka.sh`, stopped on drop).
pub struct Broker {
    bootstrap: String,
    /// The cluster's folder when this test owns it.
    own: Option<tempfile::TempDir>,
    /// Nodes in the cluster.
    pub nodes: u8,
}

impl Broker {
    /// The single-node Kafka the test script started (`KAFKA_BOOTSTRAP`).
    pub fn shared() -> Broker {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP").expect(
            "KAFKA_BOOTSTRAP is not set: run the tests with `bash scripts/test.sh`, which starts Kafka (scripts/kafka.sh)",
        );
        Broker {
            bootstrap,
            own: None,
            nodes: 1,
        }
    }

    /// A cluster of this test's own: `nodes` combined broker+controller
    /// nodes, also listening with SASL_SSL (SCRAM-SHA-512, user `router`,
    /// password `router-secret`) when `security`.
    pub fn own(nodes: u8, security: bool) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("kafka-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"))
            .args(["start", "--brokers", &nodes.to_string(), "--dir"])
            .arg(dir.path());
        if security {
            cmd.arg("--security");
        }
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/kafka.sh");
        assert!(out.status.success(), "scripts/kafka.sh start failed");
        let bootstrap = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("kafka.sh prints the bootstrap")
            .trim()
            .to_owned();
        Broker {
            bootstrap,
            own: Some(dir),
            nodes,
        }
    }

    fn script(&self, args: &[&str]) {
        let dir = self.own.as_ref().expect("only a test's own cluster").path();
        let status = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"))
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/kafka.sh {args:?}");
    }

    /// SIGKILLs node `n` (1-based).
    pub fn kill_node(&self, n: u8) {
        self.script(&["kill-node", &n.to_string()]);
    }

    /// Starts node `n` again on its log directories, waiting until it answers.
    pub fn start_node(&self, n: u8) {
        self.script(&["start-node", &n.to_string()]);
    }

    /// The cluster's folder (own clusters only).
    pub fn dir(&self) -> &Path {
        self.own.as_ref().expect("only a test's own cluster").path()
    }

    /// The SASL_SSL bootstrap servers and the CA file (`--security`).
    pub fn sasl_ssl(&self) -> (String, PathBuf) {
        let dir = self.dir();
        let b = std::fs::read_to_string(dir.join("bootstrap-sasl-ssl")).unwrap();
        (b.trim().to_owned(), dir.join("tls/ca.pem"))
    }

    /// The process id of node 1 (for CPU accounting): of the shared
    /// cluster through `KAFKA_DIR`, which the test script sets.
    pub fn pid(&self) -> u32 {
        let dir = match &self.own {
            Some(d) => d.path().to_owned(),
            None => PathBuf::from(std::env::var("KAFKA_DIR").expect("KAFKA_DIR is not set")),
        };
        std::fs::read_to_string(dir.join("node-1/pid"))
            .expect("node-1/pid")
            .trim()
            .parse()
            .unwrap()
    }

    /// `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// Creates a topic (compacted when asked) with the cluster's default
    /// replication.
    pub fn create_topic(&self, name: &str, partitions: i32, compact: bool) {
        let mut configs = vec![];
        if compact {
            configs.push(("cleanup.policy", "compact"));
        }
        self.create_topic_with(name, partitions, &configs);
    }

    /// An admin client of this cluster.
    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap()
    }

    /// Runs an admin request to its end.
    fn admin_call<F: std::future::Future>(request: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(request)
    }

    /// The admin options of these helpers.
    fn admin_options() -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
    }

    /// Deletes every topic whose name contains `part`; returns how many.
    pub fn delete_topics_containing(&self, part: &str) -> usize {
        let admin = self.admin();
        let Ok(md) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) else {
            return 0;
        };
        let names: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| n.contains(part))
            .collect();
        if names.is_empty() {
            return 0;
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Self::admin_call(admin.delete_topics(&refs, &Self::admin_options()))
            .map_or(0, |r| r.iter().filter(|x| x.is_ok()).count())
    }

    /// Creates a topic with these settings.
    pub fn create_topic_with(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin = self.admin();
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
        for (k, v) in configs {
            t = t.set(k, v);
        }
        let r = Self::admin_call(admin.create_topics([&t], &Self::admin_options())).unwrap();
        for x in r {
            x.unwrap();
        }
        // Leaders elected and known to every broker before anyone produces.
        assert!(
            wait_until(Duration::from_secs(30), || {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(name), Duration::from_secs(5));
                md.is_ok_and(|md| {
                    md.topics().iter().any(|t| {
                        t.name() == name
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
            }),
            "topic {name} has no leaders"
        );
    }

    /// Aborts a transaction the broker left hanging, as an operator would
    /// (`bin/kafka-transactions.sh abort`, KIP-664).
    pub fn abort_hanging(&self, topic: &str, partition: i32, start_offset: i64) {
        let libs = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/kafka-4.4.0/libs/*");
        let out = Command::new("java")
            .arg("-cp")
            .arg(libs)
            .arg("org.apache.kafka.tools.TransactionsCommand")
            .args([
                "--bootstrap-server",
                &self.bootstrap(),
                "abort",
                "--topic",
                topic,
            ])
            .args(["--partition", &partition.to_string()])
            .args(["--start-offset", &start_offset.to_string()])
            .output()
            .expect("running TransactionsCommand");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Ended meanwhile (the broker wrote its markers late): nothing to do.
        let gone = text.contains("Could not find any open transactions starting at offset");
        assert!(
            out.status.success() || gone,
            "kafka-transactions abort failed: {text}"
        );
    }

    /// Waits until every partition of `topics` (and of Kafka's internal
    /// topics) has all the cluster's nodes in sync, as after a broker
    /// restart once it caught up.
    pub fn wait_in_sync(&self, topics: &[String]) {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        let mut names: Vec<String> = topics.to_vec();
        names.push("__consumer_offsets".to_owned());
        names.push("__transaction_state".to_owned());
        let synced = wait_until(Duration::from_secs(120), || {
            names.iter().all(|t| {
                c.fetch_metadata(Some(t), Duration::from_secs(5))
                    .is_ok_and(|md| {
                        md.topics().iter().all(|m| {
                            m.partitions().iter().all(|p| {
                                p.isr().len() == usize::from(self.nodes) && p.leader() >= 0
                            })
                        })
                    })
            })
        });
        assert!(synced, "the cluster's replicas never caught up");
    }

    /// The leader node of a partition.
    pub fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        md.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .unwrap()
            .leader()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_KAFKA").is_some() {
            // For diagnosis: leave the cluster running and its folder.
            if let Some(dir) = self.own.take() {
                eprintln!(
                    "kept Kafka at {} in {}",
                    self.bootstrap,
                    dir.keep().display()
                );
            }
            return;
        }
        if let Some(dir) = &self.own {
            let _ = Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"))
                .args(["stop", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One scenario: topics, topology file, registry, inputs.
pub struct Scenario {
    pub broker: Broker,
    pub rt: tokio::runtime::Runtime,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    pub topology_path: PathBuf,
    pub topology: Topology,
    pub input: String,
    pub partitions: i32,
    /// Extra `-X` settings for the processor.
    pub kafka_settings: Vec<String>,
    /// The processor's registry request time limit.
    pub registry_timeout_ms: u64,
    pub files: file::FileRegistry,
    /// For a scenario whose input is a NATS JetStream stream (its subject
    /// is `input`): the stream and the server.
    pub nats: Option<NatsInput>,
}

/// The NATS side of a scenario.
#[derive(Debug, Clone)]
pub struct NatsInput {
    /// The stream's name.
    pub stream: String,
    /// The server (`NATS_URL`).
    pub url: String,
}

/// A JetStream context on the server at `url`.
pub async fn nats_context(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to NATS at {url}: {e}"));
    async_nats::jetstream::new(client)
}

/// The NATS server the test script started (`NATS_URL`); a test that needs
/// it fails without it, it never skips.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").expect(
        "NATS_URL is not set: run the tests through scripts/test.sh, or start \
         `bash scripts/nats.sh start --dir target/test-nats` and export NATS_URL",
    )
}

impl Scenario {
    /// Fresh topics on `broker`, a topology naming them, and the registry
    /// stand-in holding every event schema of `avro/` under the input
    /// topic's subjects (with the same ids as the file registry).
    pub fn new(broker: Broker, partitions: i32, extra_topology: &str) -> Scenario {
        Scenario::with_guarantee(broker, partitions, "exactly_once", extra_topology)
    }

    /// [`Scenario::new`] with a processing guarantee.
    pub fn with_guarantee(
        broker: Broker,
        partitions: i32,
        guarantee: &str,
        extra_topology: &str,
    ) -> Scenario {
        Scenario::build(
            broker,
            partitions,
            guarantee,
            extra_topology,
            &[("cleanup.policy", "compact")],
        )
    }

    /// [`Scenario::new`] with these settings of the changelog topic.
    pub fn with_changelog(broker: Broker, partitions: i32, changelog: &[(&str, &str)]) -> Scenario {
        Scenario::build(broker, partitions, "exactly_once", "", changelog)
    }

    /// A scenario whose input is a fresh JetStream stream on the test
    /// script's NATS server (limits retention, file storage), one subject
    /// (the scenario's `input`), and no Kafka input: the changelog has one
    /// partition.
    pub fn over_nats(broker: Broker, extra_topology: &str) -> Scenario {
        Scenario::nats_with(broker, extra_topology, None)
    }

    /// [`Scenario::over_nats`] with a topology of its own: `template` with
    /// `{app}`, `{input}` (the subject) and `{stream}` filled in. Writer
    /// schemas come from its `schemas.folder`.
    pub fn over_nats_from(broker: Broker, template: &str) -> Scenario {
        Scenario::nats_with(broker, "", Some(template))
    }

    fn nats_with(broker: Broker, extra_topology: &str, template: Option<&str>) -> Scenario {
        let url = nats_url();
        let stream = unique("STREAM").replace(['.', '-'], "_");
        let mut s = Scenario::build_with(
            broker,
            1,
            "exactly_once",
            extra_topology,
            &[("cleanup.policy", "compact")],
            Some(&stream),
            template,
        );
        let subject = s.input.clone();
        let js = s.rt.block_on(nats_context(&url));
        s.rt.block_on(js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }))
        .expect("creating the JetStream stream");
        s.nats = Some(NatsInput { stream, url });
        s
    }

    /// Publishes `values` to the scenario's stream in order; returns them
    /// as inputs (partition 0, offset = stream sequence).
    pub fn publish(&self, values: &[Vec<u8>]) -> Vec<Input> {
        let n = self.nats.as_ref().expect("a NATS scenario");
        let subject = self.input.clone();
        self.rt.block_on(async {
            let js = nats_context(&n.url).await;
            // Acknowledgements awaited in windows: the client allows a few
            // thousand outstanding ones, then waits for a free slot.
            let mut out = Vec::with_capacity(values.len());
            for chunk in values.chunks(1_000) {
                let mut acks = Vec::with_capacity(chunk.len());
                for v in chunk {
                    acks.push(
                        js.publish(subject.clone(), v.clone().into())
                            .await
                            .expect("publishing"),
                    );
                }
                for (ack, v) in acks.into_iter().zip(chunk) {
                    let ack = ack.await.expect("the stream's acknowledgement");
                    out.push(Input {
                        key: None,
                        value: v.clone(),
                        headers: Vec::new(),
                        partition: 0,
                        offset: ack.sequence as i64,
                    });
                }
            }
            out
        })
    }

    fn build(
        broker: Broker,
        partitions: i32,
        guarantee: &str,
        extra_topology: &str,
        changelog: &[(&str, &str)],
    ) -> Scenario {
        Scenario::build_with(
            broker,
            partitions,
            guarantee,
            extra_topology,
            changelog,
            None,
            None,
        )
    }

    fn build_with(
        broker: Broker,
        partitions: i32,
        guarantee: &str,
        extra_topology: &str,
        changelog: &[(&str, &str)],
        nats_stream: Option<&str>,
        template: Option<&str>,
    ) -> Scenario {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let registry = rt.block_on(Registry::start());
        let app = unique("app");
        let input = unique("raw");
        let inputs = match nats_stream {
            None => format!("input:\n  topics: [{input}]"),
            Some(stream) => format!(
                "input:\n  topics: []\n  nats_jetstream: {{stream: {stream}, subject: {input}}}"
            ),
        };
        let yaml = format!(
            "application_id: {app}
{inputs}
outputs:
  public: {app}.public
  internal: {app}.internal
  restricted: {app}.restricted
  dead_letter: {app}.dlq
processing:
  guarantee: {guarantee}
  commit_interval_ms: 100
event_types:
  user.login_succeeded: {{tiers: [restricted]}}
  user.login_failed: {{tiers: [restricted]}}
  user.locked: {{tiers: [restricted]}}
{extra_topology}"
        );
        let yaml = match template {
            Some(t) => t
                .replace("{app}", &app)
                .replace("{input}", &input)
                .replace("{stream}", nats_stream.unwrap_or_default()),
            None => yaml,
        };
        let dir = tempfile::tempdir().unwrap();
        let topology_path = dir.path().join("topology.yaml");
        std::fs::write(&topology_path, &yaml).unwrap();
        let topology = Topology::load(&topology_path).unwrap();
        if nats_stream.is_none() {
            broker.create_topic(&input, partitions, false);
        }
        for t in topology.engine.topics.tiers.iter() {
            broker.create_topic(t, 3, false);
        }
        broker.create_topic(&topology.engine.topics.dead_letter, 1, false);
        broker.create_topic_with(&topology.changelog_topic(), partitions, changelog);
        let files = file::load(
            &topology.spec.schemas.folder,
            &topology.engine.subjects,
            &topology.spec.input.names(),
        )
        .unwrap();
        for e in &files.events {
            let subject = topology.engine.subjects.subject(&input, &e.event_type);
            assert_eq!(registry.register(&subject, &e.text), e.id);
        }
        // A killed member leaves the group after the session timeout.
        let kafka_settings = vec!["session.timeout.ms=6000".to_owned()];
        Scenario {
            broker,
            rt,
            registry,
            dir,
            topology_path,
            topology,
            input,
            partitions,
            kafka_settings,
            registry_timeout_ms: 3000,
            files,
            nats: None,
        }
    }

    /// Registers a second version of every event schema (the same fields,
    /// a `doc` added) under the same subjects, in the stand-in and in the
    /// file registry the expected outputs use, with the same ids; returns
    /// the id map old → new. Records re-framed with the new ids make the
    /// processor fetch schemas mid-stream.
    pub fn second_versions(&mut self) -> BTreeMap<u32, u32> {
        self.new_versions("second version")
    }

    /// [`Scenario::second_versions`] with another `doc`: called again with
    /// a new one, a third version, and so on.
    pub fn new_versions(&mut self, doc: &str) -> BTreeMap<u32, u32> {
        let mut map = BTreeMap::new();
        for e in &self.files.events {
            let mut v: Value = serde_json::from_str(&e.text).unwrap();
            v["doc"] = Value::from(doc);
            let text = v.to_string();
            let subject = self
                .topology
                .engine
                .subjects
                .subject(&self.input, &e.event_type);
            let id = self.registry.register(&subject, &text);
            let again = self.files.registry.register(&subject, &text).unwrap();
            assert_eq!(id, again, "the stand-in and the file registry agree on ids");
            map.insert(e.id, id);
        }
        map
    }

    /// Output topics: public, internal, restricted, dead letter.
    pub fn outputs(&self) -> Vec<String> {
        let t = &self.topology.engine.topics;
        let mut v: Vec<String> = t.tiers.iter().map(|s| s.to_string()).collect();
        v.push(t.dead_letter.to_string());
        v
    }

    /// Generated sample records (values), deterministic for a seed.
    pub fn samples(
        &self,
        count: usize,
        seed: u64,
        format: Format,
        anomalies: bool,
    ) -> Vec<Vec<u8>> {
        sample::generate(
            &self.files,
            Options {
                seed,
                entities: 60,
                anomalies,
                format,
            },
            count,
        )
    }

    /// A generator of sample records over `entities` entities per type,
    /// without anomalies (each entity's versions in order): one generator
    /// keeps versions going across calls.
    pub fn generator(&self, seed: u64, entities: usize) -> sample::Generator {
        sample::Generator::new(
            &self.files,
            Options {
                seed,
                entities,
                anomalies: false,
                format: Format::Framed,
            },
        )
    }

    /// Starts `privacy-router run` against this scenario.
    pub fn processor(&self, instance: &str, extra_args: &[&str]) -> Processor {
        self.processor_on(instance, None, extra_args)
    }

    /// Starts `privacy-router run` serving its telemetry on `metrics_port`.
    pub fn processor_on(
        &self,
        instance: &str,
        metrics_port: Option<u16>,
        extra_args: &[&str],
    ) -> Processor {
        self.launch(instance, &self.broker.bootstrap(), metrics_port, extra_args)
    }

    /// Starts `privacy-router run` reading schemas from another registry.
    pub fn launch_with_registry(&self, instance: &str, registry_url: &str) -> Processor {
        self.start(instance, &self.broker.bootstrap(), registry_url, None, &[])
    }

    /// Starts `privacy-router run` with other bootstrap servers (another
    /// listener of the same cluster).
    pub fn processor_with_brokers(
        &self,
        instance: &str,
        brokers: &str,
        extra_args: &[&str],
    ) -> Processor {
        self.launch(instance, brokers, None, extra_args)
    }

    fn launch(
        &self,
        instance: &str,
        brokers: &str,
        metrics_port: Option<u16>,
        extra_args: &[&str],
    ) -> Processor {
        self.start(
            instance,
            brokers,
            &self.registry.url,
            metrics_port,
            extra_args,
        )
    }

    fn start(
        &self,
        instance: &str,
        brokers: &str,
        registry_url: &str,
        metrics_port: Option<u16>,
        extra_args: &[&str],
    ) -> Processor {
        // Logs stay in target/tmp/test-logs for diagnosis after a failure.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!(
            "{}-{instance}-{:04x}.log",
            self.topology.spec.application_id,
            fastrand::u16(..)
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_privacy-router"));
        cmd.arg("run")
            .arg("--topology")
            .arg(&self.topology_path)
            .args(["--brokers", brokers])
            .args(["--registry-url", registry_url])
            .args(["--instance-id", instance])
            .args([
                "--metrics-addr",
                &metrics_port.map_or("off".to_owned(), |p| format!("127.0.0.1:{p}")),
            ])
            .args([
                "--registry-timeout-ms",
                &self.registry_timeout_ms.to_string(),
            ])
            .env("PRIVACY_ROUTER_HASH_KEY", KEY)
            .env("RUST_LOG", "info,privacy_router=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for s in &self.kafka_settings {
            cmd.args(["-X", s]);
        }
        if let Some(n) = &self.nats {
            cmd.args(["--nats-url", &n.url]);
        }
        cmd.args(extra_args);
        Processor {
            child: Some(cmd.spawn().expect("starting privacy-router")),
            log,
        }
    }
}

/// A processor child process.
pub struct Processor {
    child: Option<Child>,
    /// Its standard error (the log).
    pub log: PathBuf,
}

impl Processor {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!(
                    "the processor did not stop after SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no goodbye, no commit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An input record and where it landed.
#[derive(Debug, Clone)]
pub struct Input {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The headers it was produced with ([`input_headers`]).
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

/// The headers the `i`-th record of a produce call is sent with. A
/// producer's headers are read by the processor only for a record that
/// keeps them (its dead letter, a held event's copy in the changelog); the
/// scenarios compare those records with the engine's, headers included.
pub fn input_headers(i: usize) -> Vec<(String, Vec<u8>)> {
    vec![("x-producer-seq".to_owned(), i.to_string().into_bytes())]
}

/// [`input_headers`] as rdkafka sends them.
fn owned_headers(i: usize) -> OwnedHeaders {
    input_headers(i)
        .iter()
        .fold(OwnedHeaders::new(), |hs, (key, value)| {
            hs.insert(Header {
                key,
                value: Some(value),
            })
        })
}

struct Landed(Mutex<Vec<Option<(i32, i64)>>>);

impl ClientContext for Landed {}

impl ProducerContext for Landed {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, r: &DeliveryResult<'_>, i: Box<usize>) {
        let m = r.as_ref().expect("input delivered");
        self.0.lock().unwrap()[*i] = Some((m.partition(), m.offset()));
    }
}

/// The `entity_id` of a sample value, for the record key (as producers key
/// their records).
pub fn entity_id_of(files: &file::FileRegistry, value: &[u8]) -> Option<String> {
    envelope_of(files, value)?
        .get("entity_id")?
        .as_str()
        .map(str::to_owned)
}

/// A sample value (a JSON envelope, or framed Avro read with the file
/// registry's schema of its id, a re-framed value's too) as JSON.
pub fn envelope_of(files: &file::FileRegistry, value: &[u8]) -> Option<Value> {
    match value.first()? {
        b'{' => serde_json::from_slice(value).ok(),
        0 => {
            let id = u32::from_be_bytes(value.get(1..5)?.try_into().ok()?);
            let text: Arc<str> = match files.events.iter().find(|e| e.id == id) {
                Some(e) => Arc::from(e.text.as_str()),
                None => files.registry.clone().schema_by_id(id).ok()?,
            };
            // Compiled once per text, as `decode_framed` parses.
            thread_local! {
                static COMPILED: std::cell::RefCell<HashMap<Arc<str>, Option<Rc<CompiledSchema>>>> =
                    std::cell::RefCell::default();
            }
            let schema = COMPILED.with_borrow_mut(|compiled| {
                compiled
                    .entry(text)
                    .or_insert_with_key(|t| {
                        CompiledSchema::compile(t, &Default::default())
                            .ok()
                            .map(Rc::new)
                    })
                    .clone()
            })?;
            let d = binary::decode(&schema, &value[5..]).ok()?;
            Some(sjson::render(&schema, schema.root(), &d))
        }
        _ => None,
    }
}

/// Produces `values` into `topic`, keyed by entity id, in order; returns
/// where each landed.
pub fn produce(
    brokers: &str,
    topic: &str,
    files: &file::FileRegistry,
    values: &[Vec<u8>],
) -> Vec<Input> {
    let keys: Vec<Option<String>> = values.iter().map(|v| entity_id_of(files, v)).collect();
    produce_keyed(brokers, topic, values, keys)
}

/// Produces `values` with these keys, in order; returns where each landed.
pub fn produce_keyed(
    brokers: &str,
    topic: &str,
    values: &[Vec<u8>],
    keys: Vec<Option<String>>,
) -> Vec<Input> {
    produce_keyed_at(brokers, topic, values, keys, None)
}

/// [`produce_keyed`] with this record timestamp (ms since the epoch; the
/// producer's clock when `None`).
pub fn produce_keyed_at(
    brokers: &str,
    topic: &str,
    values: &[Vec<u8>],
    keys: Vec<Option<String>>,
    timestamp: Option<i64>,
) -> Vec<Input> {
    let landed = Landed(Mutex::new(vec![None; values.len()]));
    let producer: BaseProducer<Landed> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(landed)
        .unwrap();
    for (i, v) in values.iter().enumerate() {
        let mut rec: BaseRecord<'_, str, [u8], Box<usize>> =
            BaseRecord::with_opaque_to(topic, Box::new(i))
                .payload(&v[..])
                .headers(owned_headers(i));
        if let Some(k) = &keys[i] {
            rec = rec.key(k);
        }
        if let Some(t) = timestamp {
            rec = rec.timestamp(t);
        }
        send_waiting(&producer, rec).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let at = producer.context().0.lock().unwrap().clone();
    values
        .iter()
        .zip(keys)
        .zip(at)
        .enumerate()
        .map(|(i, ((v, k), at))| {
            let (partition, offset) = at.expect("delivered");
            Input {
                key: k.map(String::into_bytes),
                value: v.clone(),
                headers: input_headers(i),
                partition,
                offset,
            }
        })
        .collect()
}

/// A record as the tests compare it: key, headers, and the value decoded
/// (tier records, with the schema the registry holds for their id) or raw
/// (dead letters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: String,
}

/// A record as read: key, value, headers.
pub type RawRec = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// What a topic received.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Raw records: key, value, headers.
    pub raw: Vec<RawRec>,
}

/// Reads `topic` from the beginning until `at_least` records arrived and
/// nothing more came for `quiet`, or `timeout` passed.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    committed_only: bool,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> Received {
    let consumer: BaseConsumer<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if committed_only {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create_with_context(QuietContext)
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Received::default();
    let started = Instant::now();
    let mut last = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.raw.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                ));
                last = Instant::now();
            }
            _ => {
                let enough = out.raw.len() >= at_least;
                if (enough && last.elapsed() >= quiet) || started.elapsed() >= timeout {
                    break;
                }
            }
        }
    }
    out
}

/// Decodes a framed Avro value with the schema `schema_of(id)` using
/// apache-avro (the reference decoder), as JSON text.
pub fn decode_framed(value: &[u8], schema_of: &mut dyn FnMut(u32) -> String) -> String {
    assert_eq!(value[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes(value[1..5].try_into().unwrap());
    let text = schema_of(id);
    // Parsing a schema costs far more than decoding a record with it, and
    // the tests decode hundreds of thousands of records with a handful of
    // schemas: each text is parsed once (keyed by the text itself, so ids
    // that differ between registries cannot mix schemas up).
    thread_local! {
        static PARSED: std::cell::RefCell<HashMap<String, Rc<apache_avro::Schema>>> =
            std::cell::RefCell::default();
    }
    let schema = PARSED.with_borrow_mut(|parsed| {
        Rc::clone(
            parsed
                .entry(text)
                .or_insert_with_key(|t| Rc::new(apache_avro::Schema::parse_str(t).unwrap())),
        )
    });
    let v = apache_avro::from_avro_datum(&schema, &mut &value[5..], None).unwrap();
    serde_json::Value::try_from(v).unwrap().to_string()
}

pub fn normalise(raw: &RawRec, dead_letter: bool, schema_of: &mut dyn FnMut(u32) -> String) -> Rec {
    let (key, value, headers) = raw;
    let value = match (dead_letter, value) {
        (_, None) => "<null>".to_owned(),
        (true, Some(v)) => hex::encode(v),
        (false, Some(v)) => decode_framed(v, schema_of),
    };
    let mut headers = headers.clone();
    // The registry's own words for a refusal differ from registry to
    // registry: what is compared is the reason and the subject.
    for (k, v) in headers.iter_mut() {
        if (k == "x-error-detail" || k == "__streams.errors.message")
            && v.starts_with(b"the registry refused")
        {
            if let Some(at) = v.windows(2).position(|w| w == b": ") {
                v.truncate(at);
            }
        }
    }
    headers.sort();
    Rec {
        key: key.clone(),
        headers,
        value,
    }
}

/// What the pure engine's outcomes add up to, for comparing with metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Ordering verdicts by label.
    pub verdicts: BTreeMap<String, u64>,
    /// Dead letters by reason code.
    pub reasons: BTreeMap<String, u64>,
    /// Tier records by tier name.
    pub tiers: BTreeMap<String, u64>,
    /// Events holding data above their declared tier.
    pub tier_mismatches: u64,
}

/// The pure engine with a partition's reorder window around it
/// ([`Reorder`], as the runtime drives it), fed inputs in produce order
/// (which is each entity's order). It reads no clock: a held event is
/// released by its missing versions, or by [`Model::expire_all`] where a
/// test lets the window pass. One store and one holdback for every input
/// partition (entities never span partitions; `max_held_per_partition`
/// then bounds them all together).
pub struct Model {
    engine: Engine,
    /// The registry the engine reads and registers derived schemas in.
    pub registry: MemoryRegistry,
    store: MemoryStore,
    held: Holdback,
    topic: Arc<str>,
    /// Every outcome so far, released events in their release order.
    pub outcomes: Vec<Outcome>,
}

impl Model {
    /// A model of `s`'s topology, nothing seen yet.
    pub fn new(s: &Scenario) -> Model {
        let mut registry: MemoryRegistry = s.files.registry.clone();
        // As the stand-in does (Confluent's default compatibility).
        registry.enforce_backward(true);
        Model {
            engine: Engine::new(
                s.topology.engine.clone(),
                Some(Hasher::new(KEY.as_bytes()).unwrap()),
            ),
            registry,
            store: MemoryStore::default(),
            held: Holdback::default(),
            topic: Arc::from(s.input.as_str()),
            outcomes: Vec::new(),
        }
    }

    fn reorder(&mut self) -> Reorder<'_> {
        Reorder {
            engine: &mut self.engine,
            store: &mut self.store,
            held: &mut self.held,
            registry: &mut self.registry,
        }
    }

    /// Processes `inputs` in order.
    pub fn feed(&mut self, inputs: &[Input]) {
        let mut steps = Vec::new();
        for i in inputs {
            let source = Source {
                topic: self.topic.clone(),
                partition: i.partition,
                offset: i.offset,
            };
            let raw = RawRecord {
                source: &source,
                key: i.key.as_deref(),
                value: Some(&i.value),
                headers: (&i.headers).into(),
            };
            self.reorder()
                .process(&raw, None, None, &mut steps)
                .unwrap();
        }
        self.outcomes.extend(steps.into_iter().map(|s| s.outcome));
    }

    /// Every held event's window expired: each is emitted as a gap (with
    /// the held events that then follow in order), oldest first.
    pub fn expire_all(&mut self) {
        let mut steps = Vec::new();
        self.reorder().release_all(&mut steps).unwrap();
        self.outcomes.extend(steps.into_iter().map(|s| s.outcome));
    }

    /// Events held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// What the outcomes so far put in each output topic, normalised.
    pub fn expected(&self, s: &Scenario) -> PerTopic {
        expected_of(s, self.outcomes.clone(), &mut self.registry.clone())
    }
}

/// Every input through the pure engine (with the reorder window when the
/// topology holds gaps), in produce order (which is each entity's order),
/// as the runtime would see it.
pub fn outcomes(s: &Scenario, inputs: &[Input]) -> (Vec<Outcome>, MemoryRegistry) {
    let mut m = Model::new(s);
    m.feed(inputs);
    (m.outcomes, m.registry)
}

/// The counts the pure engine gives for `inputs`.
pub fn expected_counts(s: &Scenario, inputs: &[Input]) -> Counts {
    let mut c = Counts::default();
    for outcome in outcomes(s, inputs).0 {
        match outcome {
            Outcome::Routed(r) => {
                *c.verdicts.entry(r.verdict.label().to_owned()).or_default() += 1;
                c.tier_mismatches += u64::from(r.tier_mismatch.is_some());
                for rec in r.records {
                    let i = s
                        .topology
                        .engine
                        .topics
                        .tiers
                        .iter()
                        .position(|t| *t == rec.topic)
                        .unwrap();
                    let tier = ["public", "internal", "restricted"][i];
                    *c.tiers.entry(tier.to_owned()).or_default() += 1;
                }
            }
            Outcome::Skipped(v) => *c.verdicts.entry(v.label().to_owned()).or_default() += 1,
            Outcome::Held { .. } => {}
            Outcome::DeadLettered { rejection, .. } => {
                *c.reasons
                    .entry(rejection.reason.code().to_owned())
                    .or_default() += 1
            }
        }
    }
    c
}

/// `GET path` on 127.0.0.1:port: the status and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The value of a metric series in a Prometheus text exposition.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Expected and actual records per output topic.
pub type PerTopic = BTreeMap<String, Vec<Rec>>;

/// What the pure engine emits for `inputs` (in produce order, which is each
/// entity's order), normalised.
pub fn expected(s: &Scenario, inputs: &[Input]) -> PerTopic {
    let (outcomes, mut reg) = outcomes(s, inputs);
    expected_of(s, outcomes, &mut reg)
}

/// What `outcomes` put in each output topic, normalised (derived schemas
/// from `reg`).
pub fn expected_of(s: &Scenario, outcomes: Vec<Outcome>, reg: &mut MemoryRegistry) -> PerTopic {
    let mut out = PerTopic::new();
    for t in s.outputs() {
        out.insert(t, Vec::new());
    }
    let dlq = s.topology.engine.topics.dead_letter.to_string();
    for outcome in outcomes {
        let records = match outcome {
            Outcome::Routed(r) => r.records,
            Outcome::Skipped(_) | Outcome::Held { .. } => vec![],
            Outcome::DeadLettered { record, .. } => vec![record],
        };
        for r in records {
            let raw = (
                r.key.clone(),
                r.value.clone(),
                r.headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
            );
            let is_dlq = *r.topic == *dlq;
            let rec = normalise(&raw, is_dlq, &mut |id| {
                reg.schema_by_id(id).unwrap().to_string()
            });
            out.get_mut(&*r.topic).unwrap().push(rec);
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Reads every output topic (`read_committed`) until the expected counts
/// arrived and a quiet period passed, normalised with the registry
/// stand-in's schemas.
pub fn actual(s: &Scenario, want: &PerTopic, quiet: Duration, timeout: Duration) -> PerTopic {
    let dlq = s.topology.engine.topics.dead_letter.to_string();
    let mut out = PerTopic::new();
    for (topic, recs) in want {
        let got = read_topic(
            &s.broker.bootstrap(),
            topic,
            true,
            recs.len(),
            quiet,
            timeout,
        );
        let mut v: Vec<Rec> = got
            .raw
            .iter()
            .map(|r| {
                normalise(r, *topic == dlq, &mut |id| {
                    s.registry.schema(id).expect("derived schema registered")
                })
            })
            .collect();
        v.sort();
        out.insert(topic.clone(), v);
    }
    out
}

/// Asserts `got` equals `want` topic by topic, describing the difference
/// (missing and duplicated records) when it does not.
pub fn assert_same(want: &PerTopic, got: &PerTopic, context: &str) {
    for (topic, w) in want {
        let g = &got[topic];
        if w == g {
            continue;
        }
        fn count(v: &[Rec]) -> BTreeMap<&Rec, usize> {
            let mut m: BTreeMap<&Rec, usize> = BTreeMap::new();
            for r in v {
                *m.entry(r).or_default() += 1;
            }
            m
        }
        let (cw, cg) = (count(w), count(g));
        let missing = cw
            .iter()
            .filter(|(r, n)| cg.get(*r).copied().unwrap_or(0) < **n)
            .count();
        let extra = cg
            .iter()
            .filter(|(r, n)| cw.get(*r).copied().unwrap_or(0) < **n)
            .count();
        let show = |r: &Rec| {
            format!(
                "key={} headers={:?} value={}",
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()),
                r.headers
                    .iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>(),
                &r.value[..r.value.len().min(300)]
            )
        };
        let unexpected = cg
            .iter()
            .find(|(r, n)| cw.get(*r).copied().unwrap_or(0) < **n)
            .map(|(r, n)| format!("{n}x {}", show(r)));
        let short = cw
            .iter()
            .find(|(r, n)| cg.get(*r).copied().unwrap_or(0) < **n)
            .map(|(r, n)| format!("{n}x {}", show(r)));
        panic!(
            "{context}: {topic} received {} records, expected {}: {missing} expected record(s) missing or short, {extra} unexpected or duplicated\n  e.g. unexpected: {unexpected:?}\n  e.g. missing: {short:?}",
            g.len(),
            w.len()
        );
    }
}

/// Strings of the inputs' payloads (data, entity ids, actor ids) of at
/// least six characters: none may appear in a log.
pub fn payload_strings(files: &file::FileRegistry, inputs: &[Input]) -> BTreeSet<String> {
    fn strings(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) if s.len() >= 6 => {
                out.insert(s.clone());
            }
            Value::Array(xs) => xs.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for i in inputs {
        // Framed values are read only with the files' own schemas, not a
        // re-framed value's schema registered elsewhere.
        let v = match i.value.first() {
            Some(0) if i.value.len() > 5 => {
                let id = u32::from_be_bytes(i.value[1..5].try_into().unwrap());
                if files.events.iter().any(|e| e.id == id) {
                    envelope_of(files, &i.value)
                } else {
                    None
                }
            }
            Some(b'{') => envelope_of(files, &i.value),
            _ => None,
        };
        if let Some(v) = v {
            strings(&v["data"], &mut out);
            strings(&v["entity_id"], &mut out);
            strings(&v["actor"]["actor_id"], &mut out);
        }
    }
    out
}

/// Asserts no payload string appears in `log` as a whole token: an enum
/// symbol such as `MEMBER` inside Kafka's `UNKNOWN_MEMBER_ID` is not a leak,
/// `"MEMBER"` or `role=MEMBER` is.
///
/// Every occurrence of every payload string is found in one pass over the
/// log (Aho-Corasick, overlapping matches): searching the log once per
/// string took minutes for the larger tests.
pub fn assert_no_payload_in(log: &str, payload: &BTreeSet<String>) {
    assert!(payload.len() > 100, "too few payload strings to check");
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let patterns: Vec<&str> = payload.iter().map(String::as_str).collect();
    let ac = aho_corasick::AhoCorasick::new(&patterns).expect("payload strings form an automaton");
    for m in ac.find_overlapping_iter(log) {
        let before = log[..m.start()].chars().next_back();
        let after = log[m.end()..].chars().next();
        assert!(
            word(before) || word(after),
            "a payload value reached the log: {}",
            patterns[m.pattern().as_usize()]
        );
    }
}

/// The hanging transactions a processor's log names (it stops, exit code 3,
/// when Kafka leaves one of its transactions open): (topic, partition,
/// start offset) from its `abort --topic … --partition … --start-offset …`.
pub fn hanging_in(log: &str) -> Vec<(String, i32, i64)> {
    log.lines()
        .filter(|l| l.contains("A transaction is hanging"))
        .filter_map(|l| {
            let after = |key: &str| {
                l.split(key)
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            };
            let topic = after("abort --topic ")?;
            let partition = after("--partition ")?.parse().ok()?;
            let offset = after("--start-offset ")?
                .trim_end_matches([')', ','])
                .parse()
                .ok()?;
            Some((topic, partition, offset))
        })
        .collect()
}

/// Waits until `cond` holds, up to `timeout`; false when it timed out.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// The end of a processor's log, for failure messages: its last `lines`
/// lines above debug level (per-record debug lines would crowd out the
/// warnings), then its last three lines of any level.
pub fn tail(log: &str, lines: usize) -> String {
    let last = |all: Vec<&str>, n: usize| all[all.len().saturating_sub(n)..].join("\n");
    let notable = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
    format!(
        "{}\n[… the last lines, any level:]\n{}",
        last(notable, lines),
        last(log.lines().collect(), 3)
    )
}

/// Counts the records of `topic` (read_committed or not) right now.
pub fn count(brokers: &str, topic: &str, committed_only: bool) -> usize {
    read_topic(
        brokers,
        topic,
        committed_only,
        0,
        Duration::from_millis(700),
        Duration::from_secs(20),
    )
    .raw
    .len()
}

/// Counts the committed records of some topics as they are committed, each
/// record read once (re-reading whole topics on every check would compete
/// with the processors for the two cores while they catch up).
pub struct OutputCounter {
    consumer: BaseConsumer<QuietContext>,
    seen: usize,
}

impl OutputCounter {
    /// A `read_committed` reader of every partition of `topics`, from the
    /// beginning.
    pub fn new(brokers: &str, topics: &[String]) -> OutputCounter {
        let consumer: BaseConsumer<QuietContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("counter"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create_with_context(QuietContext)
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .unwrap();
            for p in md.topics().iter().flat_map(|t| t.partitions()) {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        OutputCounter { consumer, seen: 0 }
    }

    /// Reads what is committed now (until nothing comes for 100 ms, or for
    /// a second at most); the total so far.
    pub fn poll(&mut self) -> usize {
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => self.seen += 1,
                Some(Err(_)) => {}
                None => break,
            }
        }
        self.seen
    }
}

/// Total of a topic list's counts.
pub fn total(brokers: &str, topics: &[String], committed_only: bool) -> usize {
    topics
        .iter()
        .map(|t| count(brokers, t, committed_only))
        .sum()
}

/// Re-frames framed sample values with another schema id (same schema
/// body): `map(id)`.
pub fn reframe(values: &mut [Vec<u8>], map: &dyn Fn(u32) -> Option<u32>) {
    for v in values {
        if v.first() == Some(&0) && v.len() >= 5 {
            let id = u32::from_be_bytes(v[1..5].try_into().unwrap());
            if let Some(n) = map(id) {
                v[1..5].copy_from_slice(&n.to_be_bytes());
            }
        }
    }
}

/// `Format` re-exported for tests.
#[allow(unused_imports)]
pub use privacy_router::sample::Format as SampleFormat;

/// Produces `values` in the background at about `rate` records per second
/// (keyed by entity id, in order), recording where each landed; `join`
/// returns the inputs once all are delivered.
pub struct Feeder {
    handle: Option<std::thread::JoinHandle<Vec<Input>>>,
    /// Records sent so far.
    pub sent: Arc<std::sync::atomic::AtomicUsize>,
}

impl Feeder {
    /// Starts feeding.
    pub fn start(
        brokers: &str,
        topic: &str,
        files: &file::FileRegistry,
        values: Vec<Vec<u8>>,
        rate: u64,
    ) -> Feeder {
        let keys: Vec<Option<String>> = values.iter().map(|v| entity_id_of(files, v)).collect();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (brokers, topic, counter) = (brokers.to_owned(), topic.to_owned(), sent.clone());
        let handle = std::thread::spawn(move || {
            let landed = Landed(Mutex::new(vec![None; values.len()]));
            let producer: BaseProducer<Landed> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("partitioner", "murmur2_random")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("message.timeout.ms", "300000")
                .create_with_context(landed)
                .unwrap();
            let started = Instant::now();
            for (i, v) in values.iter().enumerate() {
                let due = started + Duration::from_micros(i as u64 * 1_000_000 / rate.max(1));
                while Instant::now() < due {
                    producer.poll(Duration::from_millis(1));
                }
                let mut rec: BaseRecord<'_, str, [u8], Box<usize>> =
                    BaseRecord::with_opaque_to(&topic, Box::new(i))
                        .payload(&v[..])
                        .headers(owned_headers(i));
                if let Some(k) = &keys[i] {
                    rec = rec.key(k);
                }
                send_waiting(&producer, rec).map_err(|(e, _)| e).unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            producer.flush(Duration::from_secs(300)).unwrap();
            let at = producer.context().0.lock().unwrap().clone();
            values
                .into_iter()
                .zip(keys)
                .zip(at)
                .enumerate()
                .map(|(i, ((value, k), at))| {
                    let (partition, offset) = at.expect("delivered");
                    Input {
                        key: k.map(String::into_bytes),
                        value,
                        headers: input_headers(i),
                        partition,
                        offset,
                    }
                })
                .collect()
        });
        Feeder {
            handle: Some(handle),
            sent,
        }
    }

    /// True once every record was handed to the producer.
    pub fn done(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for every delivery; where each input landed.
    pub fn join(mut self) -> Vec<Input> {
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("the feeder failed")
    }
}

/// The input records committed by the processor serving metrics on
/// `port`, if it answers.
pub fn committed_inputs(port: u16) -> Option<f64> {
    http_get(port, "/metrics")
        .map(|(_, m)| metric(&m, "privacy_router_input_records_committed_total"))
}

/// Per partition of `topic`: (read_committed end = last stable offset,
/// high watermark).
pub fn stable_and_high(brokers: &str, topic: &str) -> Vec<(i64, i64)> {
    let committed: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let uncommitted: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let md = committed
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (_, lso) = committed
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            let (_, hw) = uncommitted
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            (lso, hw)
        })
        .collect()
}

/// Java's `String.hashCode` (UTF-16 code units), which Kafka uses to place
/// a transactional id on a partition of `__transaction_state`.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of `__transaction_state` that coordinates
/// `transactional_id` (`partitions`: `transaction.state.log.num.partitions`):
/// Kafka's `Utils.abs(hashCode) % partitions`, where `Utils.abs` maps
/// `i32::MIN` to 0.
pub fn transaction_partition(transactional_id: &str, partitions: i32) -> i32 {
    let h = java_hash(transactional_id);
    (if h == i32::MIN { 0 } else { h.abs() }) % partitions
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}
