//! The command line: commands, flags (with environment fallbacks for runtime
//! knobs and secrets), and what each command does at start-up.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::ProgressBar;

use crate::config::{self, Topology, TopologyError};
use crate::demo::{self, DemoConfig};
use crate::inspect::candidate::{self, Candidate};
use crate::inspect::check::{self, CheckOptions, HashKey, SchemaInput};
use crate::inspect::describe::OverrideEffects;
use crate::inspect::{describe, inspect_all, override_effects, report, Schemas};
use crate::pipeline::Engine;
use crate::project::Hasher;
use crate::registry::confluent::{ConfluentConfig, ConfluentRegistry};
use crate::registry::file::{self, FileRegistry};
use crate::registry::{Catalogue, SharedRegistry};
use crate::replay::{replay, InputFormat};
use crate::runtime::{self, Connection, NatsConnection, RegistryChoice, RunConfig};
use crate::sample::{self, Format, Options};
use crate::schema::LookupError;
use crate::telemetry::Metrics;

/// Routes raw domain events into public, internal and restricted topics with
/// PII removed by privacy tier.
#[derive(Debug, Parser)]
#[command(name = "privacy-router", version, about, long_about = None)]
#[command(after_help = "Examples:
  PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production privacy-router demo
  PRIVACY_ROUTER_HASH_KEY=... privacy-router run --brokers kafka:9092 --registry-url http://registry:8081
  PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production privacy-router replay samples/events.jsonl
  privacy-router sample --count 200000 --format framed > events.bin
  privacy-router check --topology topology/default.yaml --schemas avro
  privacy-router check --registry-url http://registry:8081 --schema user.created.avsc \
      --subject events.raw-com.privacyrouter.events.user.UserCreated
  privacy-router describe --format mermaid
  privacy-router privacy-report --format html -o privacy-report.html")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PRIVACY_ROUTER_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the processor on Kafka: consume the input topics as a consumer
    /// group and fan every event out to the tier topics, until SIGTERM or
    /// SIGINT.
    #[command(after_help = "Examples:
  PRIVACY_ROUTER_HASH_KEY=... privacy-router run --topology topology/default.yaml \\
      --brokers kafka:9092 --registry-url http://schema-registry:8081
  privacy-router run --brokers broker:9093 --kafka-config client.properties
      (client.properties: librdkafka settings, one KEY=VALUE a line, like kcat -F:
       security.protocol=SASL_SSL, sasl.mechanisms=SCRAM-SHA-512, sasl.username=...,
       sasl.password=...; secrets stay out of the process list)
  PRIVACY_ROUTER_REGISTRY_PASSWORD_FILE=/run/secrets/registry-password privacy-router run \\
      --registry-url https://registry:8081 --registry-user router

Without --registry-url, schemas come from the file registry over --schemas (default: the
topology's schemas.folder, avro/).")]
    Run(Box<RunArgs>),
    /// The embedded demo: an in-process mock Kafka cluster, the sample
    /// events produced into it, the real runtime over them, and what each
    /// tier topic and the dead-letter topic received.
    #[command(after_help = "Examples:
  PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production privacy-router demo
  PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production privacy-router demo --events my-events.jsonl --out demo-out")]
    Demo(DemoArgs),
    /// Run a file of events through the engine and write what each tier
    /// topic and the dead-letter topic would receive.
    #[command(after_help = "Examples:
  PRIVACY_ROUTER_HASH_KEY=demo-key-not-for-production privacy-router replay samples/events.jsonl --out replay-out
  privacy-router sample --format framed | PRIVACY_ROUTER_HASH_KEY=... privacy-router replay - --format framed")]
    Replay(ReplayArgs),
    /// Write realistic sample events generated from the schemas.
    #[command(after_help = "Examples:
  privacy-router sample --count 300 > samples/events.jsonl
  privacy-router sample --count 200000 --no-anomalies --format framed -o load.bin")]
    Sample(SampleArgs),
    /// Check a topology and every schema it reads (the schema folder, or
    /// every version of every input subject in the registry given by
    /// --registry-url), reporting every problem at once with its file or
    /// subject version and path; list the fields that fall to the
    /// fail-closed default or take their tier from tags, and what each
    /// override changes. With --schema and --subject, check a new writer
    /// schema before registering it: what each tier would gain and lose, and
    /// whether the registry would accept its derived tier schemas. Needs no
    /// broker or hash key; exits non-zero on errors (for producers' CI).
    #[command(after_help = "Examples:
  privacy-router check --topology topology/default.yaml --schemas avro
  privacy-router check --registry-url http://registry:8081       # what production reads
  privacy-router check --registry-url http://registry:8081 \\
      --schema user.created.avsc --subject events.raw-com.privacyrouter.events.user.UserCreated
  privacy-router check --format json > check.json       # for CI tools
  privacy-router check --strict                          # warnings fail too
  privacy-router check --allow-fail-closed               # unlabelled fields only warn

Errors: topology problems, schemas that do not compile with the engine's rules
or are not an event envelope, and fields with no label, no mapped tag and no
default from their own record (they fall to the fail-closed default,
restricted); with --schema also a subject that is not an input subject, and a
writer or derived tier schema the registry would refuse (its events would be
dead-lettered as derived_schema_rejected). Warnings: unmapped confluent:tags,
unused tags, a hash key that is too short. Exit status 1 on any error.")]
    Check(CheckArgs),
    /// Print the topology as a graph, like Kafka Streams'
    /// Topology#describe(): input topics, the stages, the state store and
    /// its changelog, the tier and dead-letter topics, tier limits,
    /// overrides and what they change, policies and the processing
    /// guarantee.
    #[command(after_help = "Examples:
  privacy-router describe --topology topology/default.yaml
  privacy-router describe --format mermaid > topology.mmd
  privacy-router describe --registry-url http://registry:8081   # overrides against the registry

Schemas are read only when the topology has classification.overrides, to say
what each one changes; when they cannot be read, describe says so and goes on.")]
    Describe(DescribeArgs),
    /// Write the privacy report: for every version of every event type's
    /// schema, which field reaches which tier and how (kept, hashed,
    /// removed), computed with the engine's own rule and the topology's tier
    /// limits and overrides; with a sign-off block for the reviewer.
    #[command(after_help = "Examples:
  privacy-router privacy-report > privacy-report.md
  privacy-router privacy-report --registry-url http://registry:8081 --format html -o privacy-report.html
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) privacy-router privacy-report --format html -o privacy-report.html

With --registry-url the report covers every version of every input subject in
the registry production uses, naming each subject, version and schema id. It
is dated with SOURCE_DATE_EPOCH when set (the same inputs then give the same
bytes), else with the current time.")]
    PrivacyReport(ReportArgs),
}

/// Output of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    /// One line per finding.
    Text,
    /// One JSON document, for CI tools.
    Json,
}

/// `check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub registry: RegistryArgs,
    /// A new writer schema (the whole envelope, JSON) to check before it is
    /// registered: needs --subject and --registry-url.
    #[arg(long, value_name = "FILE.avsc", requires = "subject")]
    pub schema: Option<PathBuf>,
    /// The input subject --schema is meant for.
    #[arg(long, requires = "schema")]
    pub subject: Option<String>,
    /// Output layout.
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
    /// Accept fields that fall to the fail-closed default (restricted) with a
    /// warning instead of an error.
    #[arg(long)]
    pub allow_fail_closed: bool,
}

/// Output of `describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DescribeFormat {
    /// Sources, processors and sinks, like Kafka Streams' TopologyDescription.
    Text,
    /// A Mermaid `flowchart LR`.
    Mermaid,
}

/// `describe` flags.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub registry: RegistryArgs,
    /// Output layout.
    #[arg(long, value_enum, default_value_t = DescribeFormat::Text)]
    pub format: DescribeFormat,
}

/// Output of `privacy-report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// GitHub-flavoured Markdown.
    Markdown,
    /// One self-contained HTML page.
    Html,
}

/// `privacy-report` flags.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub registry: RegistryArgs,
    /// Output layout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
    pub format: ReportFormat,
    /// Output file; standard output when omitted.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Where schemas and the topology come from.
#[derive(Debug, Args)]
pub struct Common {
    /// Topology file.
    #[arg(
        long,
        default_value = "topology/default.yaml",
        env = "PRIVACY_ROUTER_TOPOLOGY"
    )]
    pub topology: PathBuf,
    /// Folder of Avro schemas for the file-backed registry [default: the
    /// topology's schemas.folder, which defaults to avro].
    #[arg(long, env = "PRIVACY_ROUTER_SCHEMAS")]
    pub schemas: Option<PathBuf>,
}

impl Common {
    /// The file registry's folder: `--schemas`, else the topology's
    /// `schemas.folder`.
    pub fn schemas_dir(&self, topology: &Topology) -> PathBuf {
        self.schemas
            .clone()
            .unwrap_or_else(|| topology.spec.schemas.folder.clone())
    }
}

/// The secret key of pseudonyms.
#[derive(Debug, Args)]
pub struct Secrets {
    /// Secret key (at least 16 bytes) for `redact: hash` pseudonyms. Prefer
    /// the environment variable: flags show up in process listings.
    #[arg(long, env = "PRIVACY_ROUTER_HASH_KEY", hide_env_values = true)]
    pub hash_key: Option<String>,
}

/// `replay` flags.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Input file, or `-` for standard input.
    #[arg(default_value = "samples/events.jsonl")]
    pub input: PathBuf,
    /// Input layout.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// Output folder.
    #[arg(long, default_value = "replay-out")]
    pub out: PathBuf,
    /// The input topic the records are read as if from (it decides the
    /// adapter, if any) [default: the topology's first input topic].
    #[arg(long)]
    pub topic: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub secrets: Secrets,
}

/// `run` flags: runtime knobs, each with an environment fallback.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub secrets: Secrets,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub nats: NatsArgs,
    /// Serve /metrics, /livez, /healthz and /readyz on this address ("off"
    /// for none).
    #[arg(
        long,
        default_value = "0.0.0.0:9464",
        env = "PRIVACY_ROUTER_METRICS_ADDR"
    )]
    pub metrics_addr: String,
    /// This instance's stable name, unique in the group: its transactional
    /// id is <application_id>-<instance_id>, so a restart fences the
    /// crashed predecessor. Defaults to the host name.
    #[arg(long, env = "PRIVACY_ROUTER_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Do not create the changelog topic (nor a NATS input's lease topic)
    /// when it is missing.
    #[arg(long)]
    pub no_create_topics: bool,
    /// Replication factor of a created changelog topic (broker default
    /// when unset).
    #[arg(long, env = "PRIVACY_ROUTER_CHANGELOG_REPLICATION")]
    pub changelog_replication: Option<i32>,
    /// Seconds a shutdown may take to finish the open transaction.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Seconds to wait for an unreachable Kafka cluster at start-up before
    /// exiting with code 9; unset, the processor waits as long as it takes
    /// (retrying with back-off, /readyz saying why).
    #[arg(long, env = "PRIVACY_ROUTER_STARTUP_TIMEOUT_SECS")]
    pub startup_timeout_secs: Option<u64>,
    /// Stream threads of this instance (1 to 32), each with its own
    /// partitions, state and transactional producer; overrides the
    /// topology's processing.stream_threads.
    #[arg(
        long,
        env = "PRIVACY_ROUTER_STREAM_THREADS",
        value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::config::MAX_STREAM_THREADS))
    )]
    pub stream_threads: Option<u16>,
}

/// Kafka connection flags.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers.
    #[arg(long, default_value = "localhost:9092", env = "PRIVACY_ROUTER_BROKERS")]
    pub brokers: String,
    /// Any librdkafka setting (-X security.protocol=SSL), or a librdkafka
    /// properties FILE of such settings, one KEY=VALUE a line, `#` comments
    /// (like kcat -F; keeps secrets out of the process list); repeat it,
    /// later settings win. The environment variable takes a comma-separated
    /// list.
    #[arg(
        short = 'X',
        long = "kafka-config",
        value_name = "KEY=VALUE|FILE",
        env = "PRIVACY_ROUTER_KAFKA_CONFIG",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_config: Vec<String>,
}

/// NATS flags, for a topology with an `input.nats_jetstream`.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (nats://host:4222, tls://…).
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "PRIVACY_ROUTER_NATS_URL",
        value_delimiter = ','
    )]
    pub nats_url: Vec<String>,
    /// A NATS credentials file (.creds: user JWT and NKey seed).
    #[arg(long, env = "PRIVACY_ROUTER_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "PRIVACY_ROUTER_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password. Prefer the environment variable: flags show up in
    /// process listings.
    #[arg(long, env = "PRIVACY_ROUTER_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "PRIVACY_ROUTER_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// PEM file of CA certificates for the NATS servers' TLS (TLS is then
    /// required).
    #[arg(long, env = "PRIVACY_ROUTER_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
}

/// Schema Registry flags.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Confluent-compatible Schema Registry URL(s), comma-separated; the
    /// file registry over --schemas when unset.
    #[arg(long, env = "PRIVACY_ROUTER_REGISTRY_URL", value_delimiter = ',')]
    pub registry_url: Vec<String>,
    /// Basic-auth user of the registry.
    #[arg(long, env = "PRIVACY_ROUTER_REGISTRY_USER")]
    pub registry_user: Option<String>,
    /// Basic-auth password of the registry. Prefer the environment variable
    /// or --registry-password-file: flags show up in process listings.
    #[arg(long, env = "PRIVACY_ROUTER_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,
    /// File holding the registry's basic-auth password (a trailing newline
    /// is dropped), e.g. a mounted Kubernetes Secret.
    #[arg(
        long,
        env = "PRIVACY_ROUTER_REGISTRY_PASSWORD_FILE",
        conflicts_with = "registry_password"
    )]
    pub registry_password_file: Option<PathBuf>,
    /// PEM file of CA certificates for the registry's TLS.
    #[arg(long, env = "PRIVACY_ROUTER_REGISTRY_CA_FILE")]
    pub registry_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with the registry.
    #[arg(long, env = "PRIVACY_ROUTER_REGISTRY_CERT_FILE")]
    pub registry_cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) key of the client certificate.
    #[arg(long, env = "PRIVACY_ROUTER_REGISTRY_KEY_FILE")]
    pub registry_key_file: Option<PathBuf>,
    /// Time limit of one registry request, in milliseconds.
    #[arg(
        long,
        default_value_t = 5000,
        env = "PRIVACY_ROUTER_REGISTRY_TIMEOUT_MS"
    )]
    pub registry_timeout_ms: u64,
}

/// `demo` flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Events to produce into the input topic (JSON lines).
    #[arg(long, default_value = "samples/events.jsonl")]
    pub events: PathBuf,
    /// Output folder for what each topic received.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Serve /metrics while the demo runs.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub secrets: Secrets,
}

/// Output layout of `sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SampleFormat {
    /// JSON lines.
    Jsonl,
    /// Length-prefixed Confluent-framed Avro (ids of the file registry).
    Framed,
}

/// `sample` flags.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// How many records.
    #[arg(long, default_value_t = 300)]
    pub count: usize,
    /// Seed; the same seed gives the same records.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Entities per entity type.
    #[arg(long, default_value_t = 40)]
    pub entities: usize,
    /// Only valid, in-order events.
    #[arg(long)]
    pub no_anomalies: bool,
    /// Output layout.
    #[arg(long, value_enum, default_value_t = SampleFormat::Jsonl)]
    pub format: SampleFormat,
    /// Output file; standard output when omitted.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Sets up `tracing` on standard error.
pub fn init_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The NATS client logs every connection event and every failed
    // reconnect attempt at info; the NATS input says what matters itself.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("async_nats")) {
        if let Ok(d) = "async_nats=warn".parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colour only for a person at a terminal, and never under NO_COLOR
    // (https://no-color.org: set and not empty).
    let colour =
        io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Loads and validates the topology.
///
/// # Errors
/// Every problem of the topology file.
pub fn load_topology(path: &Path) -> Result<Topology> {
    Topology::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Builds the hasher from the secret, if one is set.
///
/// # Errors
/// A key shorter than the minimum.
pub fn hasher(secrets: &Secrets) -> Result<Option<Hasher>> {
    match secrets.hash_key.as_deref().filter(|k| !k.is_empty()) {
        None => Ok(None),
        Some(k) => Ok(Some(
            Hasher::new(k.as_bytes()).context("PRIVACY_ROUTER_HASH_KEY / --hash-key")?,
        )),
    }
}

/// Loads the file registry and checks every schema against the engine's
/// rules, reporting every problem at once. Refuses to start when a schema
/// asks for hashing and no key is set.
///
/// # Errors
/// The folder cannot be read, or schemas cannot be used.
pub fn load_file_registry(
    dir: &Path,
    topology: &Topology,
    engine: &Engine,
) -> Result<FileRegistry> {
    let reg = file::load(dir, &topology.engine.subjects, &topology.spec.input.names())
        .with_context(|| format!("loading schemas from {}", dir.display()))?;
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &reg.events {
        if let Err(r) = engine.check_schema(&e.text) {
            problems
                .entry(r.detail)
                .or_default()
                .push(e.path.display().to_string());
        }
    }
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|(why, files)| match files.as_slice() {
                [one] => format!("  - {one}: {why}"),
                [first, rest @ ..] => format!("  - {first} and {} more: {why}", rest.len()),
                [] => String::new(),
            })
            .collect();
        bail!(
            "schemas in {} cannot be used:\n{}\n(set PRIVACY_ROUTER_HASH_KEY for schemas that ask for `redact: hash`)",
            dir.display(),
            lines.join("\n")
        );
    }
    let catalogue = Catalogue::read(
        &mut reg.registry.clone(),
        &topology.engine.subjects,
        &topology.spec.input.names(),
        format!("the folder {}", dir.display()),
    )
    .map_err(|e| anyhow::anyhow!("reading the schemas of {}: {e}", dir.display()))?;
    check_against(topology, &catalogue)?;
    // Derived schemas from here on meet Confluent's default compatibility,
    // so a refusal shows up in replay and the demo as it would in production.
    let mut reg = reg;
    reg.registry.enforce_backward(true);
    Ok(reg)
}

/// Checks what the topology says about schemas (event types, subject
/// versions, overrides, tags) against the schemas the command reads:
/// errors refuse the command with every problem listed, warnings are logged.
///
/// # Errors
/// A [`TopologyError`] listing every error.
pub fn check_against(topology: &Topology, catalogue: &Catalogue) -> Result<()> {
    let found = config::schemas::check(topology, catalogue);
    for w in &found.warnings {
        tracing::warn!(file = %topology.file.display(), path = %w.path, "{}", w.message);
    }
    if found.errors.is_empty() {
        return Ok(());
    }
    Err(TopologyError {
        file: topology.file.clone(),
        problems: found.errors,
    }
    .into())
}

/// Reads every version of the input subjects from the registry of
/// `config` (on a blocking thread: the client waits on the async runtime).
///
/// # Errors
/// Unusable registry settings, or a registry that cannot answer.
pub async fn registry_catalogue(
    config: &ConfluentConfig,
    topology: &Topology,
    metrics: &Metrics,
) -> Result<Catalogue> {
    let rt = tokio::runtime::Handle::current();
    let config = config.clone();
    let metrics = metrics.clone();
    let naming = topology.engine.subjects.clone();
    let topics = topology.spec.input.names();
    tokio::task::spawn_blocking(move || -> Result<Catalogue> {
        let mut registry =
            ConfluentRegistry::new(&config, rt, metrics).context("schema registry settings")?;
        let source = format!("the registry at {}", registry.url());
        Catalogue::read(&mut registry, &naming, &topics, source.clone()).map_err(|e| {
            anyhow::Error::new(e).context(format!("reading the input subjects from {source}"))
        })
    })
    .await
    .context("reading the registry")?
}

/// [`registry_catalogue`] for `run`: a registry that is away at start-up is
/// waited for (with back-off, logging its address and why), not a reason to
/// exit; `None` when a shutdown signal came first.
///
/// # Errors
/// Unusable registry settings, or a registry that refuses the request.
async fn wait_for_catalogue(
    config: &ConfluentConfig,
    topology: &Topology,
    metrics: &Metrics,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Catalogue>> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match registry_catalogue(config, topology, metrics).await {
            Ok(c) => return Ok(Some(c)),
            Err(e)
                if e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<LookupError>(),
                        Some(LookupError::Unavailable(_))
                    )
                }) =>
            {
                tracing::warn!(
                    registry = %loggable_urls(&config.urls),
                    error = %format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "The schema registry is unavailable at start-up; the topology is checked against it before processing, so waiting."
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut *shutdown => return Ok(None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Start-up problems and I/O errors, with context.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => tokio_runtime()?.block_on(run_kafka(*args)),
        Command::Demo(args) => tokio_runtime()?.block_on(run_demo(args)),
        Command::Replay(args) => run_replay(args),
        Command::Sample(args) => run_sample(args),
        Command::Check(args) => run_check(args),
        Command::Describe(args) => run_describe(args),
        Command::PrivacyReport(args) => run_privacy_report(args),
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A future that completes on SIGTERM or SIGINT. The handlers are
/// installed when this is called, not when the future is first polled: a
/// signal that arrives while the processor is still starting (reading the
/// registry, checking topics) ends it cleanly once it can stop, instead of
/// killing it with the signal's default action. Call it inside the async
/// runtime.
pub fn shutdown_signal() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        Box::pin(async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut term), Err(_)) => {
                    term.recv().await;
                }
                (Err(_), _) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        })
    }
    #[cfg(not(unix))]
    {
        Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// `-X key=value` settings and properties files, in order.
///
/// # Errors
/// A setting without `=` that is no readable file, or a file line that is
/// not `KEY=VALUE` (named by file and line; the line is not repeated, it
/// may hold a secret).
pub fn kafka_overrides(settings: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for s in settings.iter().filter(|s| !s.trim().is_empty()) {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => out.push((k.trim().to_owned(), v.to_owned())),
            Some(_) => bail!("-X {s:?}: expected KEY=VALUE (a librdkafka setting)"),
            None => out.extend(kafka_properties(Path::new(s.trim()))?),
        }
    }
    Ok(out)
}

/// A librdkafka properties file: `KEY=VALUE` lines, blank lines and `#`
/// or `!` comments.
fn kafka_properties(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--kafka-config {}: neither KEY=VALUE nor a readable librdkafka properties file",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            _ => bail!(
                "{}:{}: expected KEY=VALUE (a librdkafka setting)",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(out)
}

/// The registry password: the flag or its variable, else the file's first
/// line.
///
/// # Errors
/// The password file cannot be read.
fn registry_password(args: &RegistryArgs) -> Result<Option<String>> {
    match &args.registry_password_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--registry-password-file {}", f.display()))?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        None => Ok(args.registry_password.clone()),
    }
}

fn instance_id(flag: Option<String>) -> String {
    flag.filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "0".to_owned())
}

/// The registry a `run` uses: the Confluent REST API when a URL is set,
/// the file registry over `--schemas` otherwise.
///
/// # Errors
/// The file registry cannot be loaded.
pub fn registry_choice(
    args: &RegistryArgs,
    common: &Common,
    topology: &Topology,
    engine: &Engine,
) -> Result<RegistryChoice> {
    let urls: Vec<String> = args
        .registry_url
        .iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        let reg = load_file_registry(&common.schemas_dir(topology), topology, engine)?;
        return Ok(RegistryChoice::Shared(SharedRegistry::new(reg.registry)));
    }
    for (n, u) in urls.iter().enumerate() {
        // The URL itself is not repeated: it may hold a password.
        match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => bail!(
                "--registry-url (URL {} of {}): not an http:// or https:// URL with a host",
                n + 1,
                urls.len()
            ),
            Err(e) => bail!(
                "--registry-url (URL {} of {}) does not parse: {e}",
                n + 1,
                urls.len()
            ),
        }
    }
    Ok(RegistryChoice::Confluent(ConfluentConfig {
        urls,
        username: args.registry_user.clone(),
        password: registry_password(args)?,
        ca_file: args.registry_ca_file.clone(),
        cert_file: args.registry_cert_file.clone(),
        key_file: args.registry_key_file.clone(),
        timeout: Duration::from_millis(args.registry_timeout_ms),
    }))
}

/// Registry URLs as they may be logged: without user names and passwords.
fn loggable_urls(urls: &[String]) -> String {
    urls.iter()
        .map(|u| crate::registry::confluent::split_credentials(u).0)
        .collect::<Vec<_>>()
        .join(",")
}

/// The one line that says what `run` will do: the effective settings,
/// never a secret.
fn log_start(args: &RunArgs, topology: &Topology, registry: &RegistryChoice, instance: &str) {
    use sha2::Digest;
    let sha256 = std::fs::read(&args.common.topology)
        .map(|b| hex::encode(sha2::Sha256::digest(b)))
        .unwrap_or_else(|_| "<unreadable>".to_owned());
    let registry = match registry {
        RegistryChoice::Confluent(c) => loggable_urls(&c.urls),
        RegistryChoice::Shared(_) => format!(
            "file registry over {}",
            args.common.schemas_dir(topology).display()
        ),
    };
    let p = &topology.spec.processing;
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        brokers = %args.kafka.brokers,
        registry = %registry,
        topology = %args.common.topology.display(),
        topology_sha256 = %sha256,
        application_id = %topology.spec.application_id,
        instance_id = %instance,
        guarantee = %match p.guarantee {
            config::Guarantee::ExactlyOnce => "exactly_once",
            config::Guarantee::AtLeastOnce => "at_least_once",
        },
        commit_interval_ms = p.commit_interval_ms,
        stream_threads = args.stream_threads.unwrap_or(p.stream_threads),
        "Starting privacy-router."
    );
}

async fn run_kafka(args: RunArgs) -> Result<()> {
    let mut shutdown = shutdown_signal();
    let topology = load_topology(&args.common.topology)?;
    let hasher = hasher(&args.secrets)?;
    let engine = Engine::new(topology.engine.clone(), hasher.clone());
    let registry = registry_choice(&args.registry, &args.common, &topology, &engine)?;
    let instance = instance_id(args.instance_id.clone());
    log_start(&args, &topology, &registry, &instance);
    let metrics = Metrics::default();
    if let RegistryChoice::Confluent(c) = &registry {
        let Some(catalogue) = wait_for_catalogue(c, &topology, &metrics, &mut shutdown).await?
        else {
            return Ok(());
        };
        check_against(&topology, &catalogue)?;
    }
    let metrics_addr = match args.metrics_addr.trim() {
        "" | "off" | "none" => None,
        a => Some(a.parse::<SocketAddr>().with_context(|| {
            format!("--metrics-addr {a:?} is not an address like 0.0.0.0:9464")
        })?),
    };
    let stream_threads = args
        .stream_threads
        .unwrap_or(topology.spec.processing.stream_threads);
    let config = RunConfig {
        topology,
        connection: Connection {
            brokers: args.kafka.brokers.clone(),
            overrides: kafka_overrides(&args.kafka.kafka_config)?,
        },
        instance_id: instance,
        registry,
        hasher,
        metrics_addr,
        metrics,
        create_topics: !args.no_create_topics,
        changelog_replication: args.changelog_replication,
        grace: Duration::from_secs(args.shutdown_grace_secs),
        stream_threads,
        startup_timeout: args.startup_timeout_secs.map(Duration::from_secs),
        nats: NatsConnection {
            urls: args.nats.nats_url.clone(),
            creds_file: args.nats.nats_creds_file.clone(),
            user: args
                .nats
                .nats_user
                .clone()
                .zip(args.nats.nats_password.clone()),
            token: args.nats.nats_token.clone(),
            tls_ca_file: args.nats.nats_ca_file.clone(),
        },
    };
    runtime::run(config, shutdown).await
}

async fn run_demo(args: DemoArgs) -> Result<()> {
    let topology = load_topology(&args.common.topology)?;
    let hasher = hasher(&args.secrets)?;
    let engine = Engine::new(topology.engine.clone(), hasher.clone());
    let reg = load_file_registry(&args.common.schemas_dir(&topology), &topology, &engine)?;
    demo::demo(DemoConfig {
        topology,
        registry: SharedRegistry::new(reg.registry),
        hasher,
        events: args.events,
        out: args.out,
        partitions: args.partitions,
        metrics_addr: args.metrics_addr,
        timeout: Duration::from_secs(120),
    })
    .await?;
    Ok(())
}

fn run_replay(args: ReplayArgs) -> Result<()> {
    let topology = load_topology(&args.common.topology)?;
    let mut engine = Engine::new(topology.engine.clone(), hasher(&args.secrets)?);
    let mut reg =
        load_file_registry(&args.common.schemas_dir(&topology), &topology, &engine)?.registry;
    let (mut input, len): (Box<dyn BufRead>, Option<u64>) = if args.input == Path::new("-") {
        (Box::new(BufReader::new(io::stdin())), None)
    } else {
        let f =
            File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 16, f)), len)
    };
    let progress = match len {
        Some(n) if n > 4 << 20 && io::stderr().is_terminal() => ProgressBar::new(n),
        _ => ProgressBar::hidden(),
    };
    let names = topology.spec.input.names();
    let topic = match args.topic {
        Some(t) if names.contains(&t) => t,
        Some(t) => bail!(
            "--topic {t:?} is not one of the topology's input topics ({})",
            names.join(", ")
        ),
        None => names
            .first()
            .cloned()
            .context("the topology has no input")?,
    };
    let summary = replay(
        &mut engine,
        &mut reg,
        &mut input,
        &topic,
        args.format,
        &args.out,
        &progress,
    )
    .with_context(|| format!("replaying {}", args.input.display()))?;
    if summary.consumed == 0 {
        tracing::warn!(input = %args.input.display(), "The input holds no records: nothing was replayed.");
    }
    // The summary is the command's output: stdout (logs go to stderr).
    println!(
        "privacy-router replay of {}:\n{}",
        args.input.display(),
        summary.table()
    );
    println!(
        "Wrote {0}/public.jsonl, {0}/internal.jsonl, {0}/restricted.jsonl and {0}/dead-letter.jsonl.",
        args.out.display()
    );
    Ok(())
}

fn run_sample(args: SampleArgs) -> Result<()> {
    let topology = load_topology(&args.common.topology)?;
    let dir = args.common.schemas_dir(&topology);
    let reg = file::load(
        &dir,
        &topology.engine.subjects,
        &topology.spec.input.names(),
    )
    .with_context(|| format!("loading schemas from {}", dir.display()))?;
    let format = match args.format {
        SampleFormat::Jsonl => Format::Jsonl,
        SampleFormat::Framed => Format::Framed,
    };
    let mut g = sample::Generator::new(
        &reg,
        Options {
            seed: args.seed,
            entities: args.entities,
            anomalies: !args.no_anomalies,
            format,
        },
    );
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::new({
            create_parent(p)?;
            File::create(p).with_context(|| format!("creating {}", p.display()))?
        })),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    for _ in 0..args.count {
        let rec = g.next_record();
        match format {
            Format::Jsonl => {
                out.write_all(&rec)?;
                out.write_all(b"\n")?;
            }
            Format::Framed => {
                out.write_all(&(rec.len() as u32).to_be_bytes())?;
                out.write_all(&rec)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The registry settings of `check`, `describe` and `privacy-report`, when
/// a URL is given.
fn confluent_config(args: &RegistryArgs) -> Result<Option<ConfluentConfig>> {
    let urls: Vec<String> = args
        .registry_url
        .iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Ok(None);
    }
    Ok(Some(ConfluentConfig {
        urls,
        username: args.registry_user.clone(),
        password: registry_password(args)?,
        ca_file: args.registry_ca_file.clone(),
        cert_file: args.registry_cert_file.clone(),
        key_file: args.registry_key_file.clone(),
        timeout: Duration::from_millis(args.registry_timeout_ms),
    }))
}

/// A registry client with the runtime its calls wait on (kept alive as long
/// as the client). Its blocking calls are made from this thread, which is
/// not one of the runtime's.
struct RegistryClient {
    registry: ConfluentRegistry,
    url: String,
    _rt: tokio::runtime::Runtime,
}

impl RegistryClient {
    fn new(config: &ConfluentConfig) -> Result<RegistryClient> {
        let rt = tokio_runtime()?;
        let registry = ConfluentRegistry::new(config, rt.handle().clone(), Metrics::default())
            .context("schema registry settings")?;
        let url = registry.url().to_owned();
        Ok(RegistryClient {
            registry,
            url,
            _rt: rt,
        })
    }
}

/// The schemas `describe` and `privacy-report` read: the registry's input
/// subjects with --registry-url, the schema folder otherwise.
fn read_schemas(common: &Common, registry: &RegistryArgs, topology: &Topology) -> Result<Schemas> {
    match confluent_config(registry)? {
        Some(config) => {
            let mut client = RegistryClient::new(&config)?;
            Schemas::from_registry(topology, &client.url, &mut client.registry).map_err(|e| {
                anyhow::anyhow!(
                    "reading the input subjects from the registry at {}: {e}",
                    client.url
                )
            })
        }
        None => {
            let dir = common.schemas_dir(topology);
            Schemas::from_folder(topology, &dir).map_err(|found| {
                let lines: Vec<String> = found
                    .iter()
                    .map(|f| format!("  - {}: {}", f.file, f.message))
                    .collect();
                anyhow::anyhow!(
                    "schemas in {} cannot be read:\n{}",
                    dir.display(),
                    lines.join("\n")
                )
            })
        }
    }
}

fn run_check(args: CheckArgs) -> Result<()> {
    // Only whether the key is set and long enough: check never needs it.
    let key = HashKey::of(std::env::var("PRIVACY_ROUTER_HASH_KEY").ok().as_deref());
    let opts = CheckOptions {
        strict: args.strict,
        allow_fail_closed: args.allow_fail_closed,
    };
    let topology = &args.common.topology;
    let report = match (confluent_config(&args.registry)?, &args.schema) {
        (None, Some(_)) => bail!(
            "check --schema needs --registry-url (or PRIVACY_ROUTER_REGISTRY_URL): it asks the registry whether it would accept the schema and its derived tier schemas"
        ),
        (None, None) => check::check(
            topology,
            SchemaInput::Folder(args.common.schemas.clone()),
            key,
            opts,
        ),
        (Some(config), schema) => {
            let mut client = RegistryClient::new(&config)?;
            let url = client.url.clone();
            match (schema, &args.subject) {
                (Some(file), Some(subject)) => candidate::check_candidate(
                    topology,
                    &Candidate {
                        file: file.clone(),
                        subject: subject.clone(),
                    },
                    &url,
                    &mut client.registry,
                    key,
                    opts,
                ),
                _ => check::check(
                    topology,
                    SchemaInput::Registry {
                        url,
                        lookup: &mut client.registry,
                    },
                    key,
                    opts,
                ),
            }
        }
    };
    let out = match args.format {
        CheckFormat::Text => report.text(),
        CheckFormat::Json => report.json(),
    };
    io::stdout().lock().write_all(out.as_bytes())?;
    if !report.ok {
        bail!(
            "check found {} error(s) in {} and {}",
            report.errors,
            topology.display(),
            report.schemas
        );
    }
    Ok(())
}

fn run_describe(args: DescribeArgs) -> Result<()> {
    let topology = load_topology(&args.common.topology)?;
    // Schemas are read only to say what the overrides change.
    let overrides = if topology.engine.rules.overrides.is_empty() {
        OverrideEffects::none()
    } else {
        match read_schemas(&args.common, &args.registry, &topology) {
            Ok(schemas) => {
                let (inspected, _) = inspect_all(&topology.engine, &schemas.versions);
                OverrideEffects::Known {
                    source: schemas.source().to_owned(),
                    effects: override_effects(&topology.engine.rules, &inspected),
                }
            }
            Err(e) => OverrideEffects::Unknown(format!("{e:#}").replace('\n', " ")),
        }
    };
    let out = match args.format {
        DescribeFormat::Text => describe::text(&topology, &overrides),
        DescribeFormat::Mermaid => describe::mermaid(&topology, &overrides),
    };
    io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// The report date from `SOURCE_DATE_EPOCH` (seconds since the epoch), if
/// set: reproducible builds' convention for a fixed timestamp.
///
/// # Errors
/// The variable is set but not a number of seconds.
pub fn source_date() -> Result<Option<String>> {
    let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") else {
        return Ok(None);
    };
    let v = v.to_string_lossy();
    let secs: i64 = v
        .trim()
        .parse()
        .ok()
        .context("SOURCE_DATE_EPOCH must be a number of seconds since 1970-01-01")?;
    let date =
        chrono::DateTime::from_timestamp(secs, 0).context("SOURCE_DATE_EPOCH is out of range")?;
    Ok(Some(date.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn run_privacy_report(args: ReportArgs) -> Result<()> {
    let topology = load_topology(&args.common.topology)?;
    let bytes = std::fs::read(&args.common.topology)
        .with_context(|| format!("reading {}", args.common.topology.display()))?;
    let schemas = read_schemas(&args.common, &args.registry, &topology)?;
    // Configuration fails closed: a topology the processor would refuse
    // with these schemas is no evidence of what it does.
    check_against(&topology, &schemas.catalogue)?;
    let generated_at = match source_date()? {
        Some(d) => d,
        None => chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    };
    let tool = format!("privacy-router {}", env!("CARGO_PKG_VERSION"));
    let report = report::build(&topology, &bytes, &schemas, generated_at, tool).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "  - {} ({}): {}: {}",
                    e.location, e.label, e.problem.path, e.problem.message
                )
            })
            .collect();
        anyhow::anyhow!(
            "schemas cannot be used, so there is nothing to report for them (privacy-router check says more):\n{}",
            lines.join("\n")
        )
    })?;
    let out = match args.format {
        ReportFormat::Markdown => report.markdown(),
        ReportFormat::Html => report.html(),
    };
    match &args.output {
        Some(p) => {
            create_parent(p)?;
            std::fs::write(p, out).with_context(|| format!("writing {}", p.display()))?;
        }
        None => io::stdout().lock().write_all(out.as_bytes())?,
    }
    Ok(())
}

/// Creates the folder an output file goes to, when it is missing.
fn create_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        None => Ok(()),
    }
}
