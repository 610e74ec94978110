//! The Kafka runtime: `privacy-router run` (and the embedded demo) as a
//! long-running consumer-group member.
//!
//! [`run`] starts the telemetry server on the async runtime and
//! `processing.stream_threads` stream threads ([`stream`]), each owning its
//! Kafka clients, its partitions and their state, and chaining the engine's
//! stages; it returns when the shutdown future completes (after every stream
//! thread has committed its open transaction and left the group) or when a
//! stream thread fails (its siblings then stop too).
//!
//! Guarantees: under `exactly_once`, tier records, dead
//! letters, changelog records and input offsets commit in one transaction
//! per commit interval; the version store of each input partition is
//! restored from the changelog before the partition's first record is
//! processed; a registry or broker that is away makes the thread wait,
//! never skip.

mod collector;
mod config;
pub mod kafka;
mod nats;
mod positions;
pub mod state;
mod stream;
mod transaction;
mod watermarks;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tracing::{info, warn};

use crate::config::Topology;
use crate::project::Hasher;
use crate::registry::confluent::{ConfluentConfig, ConfluentRegistry};
use crate::registry::SharedRegistry;
use crate::schema::SchemaLookup;
use crate::telemetry::{self, Health, Metrics};
use kafka::check_topics;
pub use kafka::Connection;
pub use nats::NatsConnection;

/// Why a running processor stopped on its own. Each kind has its own exit
/// code (see `docs/operations.md`), so an orchestrator or an operator can
/// tell a takeover from a problem to fix; a start-up problem (configuration,
/// topics, credentials) exits 1 instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalKind {
    /// Another instance with the same transactional id, or the group,
    /// fenced this one: it commits nothing more.
    Fenced,
    /// The Kafka clients failed in a way retrying does not fix.
    Failed,
    /// The schema registry refused the processor's own requests (401, 403,
    /// another 4xx): its credentials or permissions need fixing.
    RegistryRejected,
    /// Partition state could not be restored from the changelog.
    RestoreFailed,
    /// Transactions kept being aborted without a commit in between.
    TooManyAborts,
    /// A transaction the broker never ended holds an output partition: an
    /// operator aborts it (the log names partition and offset).
    HangingTransaction,
    /// The cluster could not be reached before the start-up deadline
    /// (`--startup-timeout-secs`; without one the processor waits).
    KafkaUnreachable,
}

impl FatalKind {
    /// The process exit code of this kind.
    pub const fn exit_code(self) -> u8 {
        match self {
            FatalKind::Fenced => 3,
            FatalKind::Failed => 4,
            FatalKind::RegistryRejected => 5,
            FatalKind::RestoreFailed => 6,
            FatalKind::TooManyAborts => 7,
            FatalKind::HangingTransaction => 8,
            FatalKind::KafkaUnreachable => 9,
        }
    }
}

/// A fatal error of a running processor: it stops (after aborting its open
/// transaction) and the process exits with [`FatalKind::exit_code`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fatal {
    /// What went wrong, as a decision.
    pub kind: FatalKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Fatal {
    pub(crate) fn new(kind: FatalKind, message: impl Into<String>) -> Self {
        Fatal {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// An error ending the stream thread, as a [`Fatal`] of the kind found
    /// in its chain ([`FatalKind::Failed`] if none), with the whole chain
    /// as its message.
    pub(crate) fn ending(e: &anyhow::Error) -> Self {
        let kind = e
            .chain()
            .find_map(|c| c.downcast_ref::<Fatal>().map(|f| f.kind))
            .unwrap_or(FatalKind::Failed);
        Fatal::new(kind, format!("{e:#}"))
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }
}

/// Where schemas come from.
#[derive(Debug, Clone)]
pub enum RegistryChoice {
    /// A Confluent-compatible Schema Registry.
    Confluent(ConfluentConfig),
    /// An in-process registry (the file registry over `avro/`).
    Shared(SharedRegistry),
}

/// Everything `run` needs; built by the CLI from the topology file and the
/// flags.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The validated topology.
    pub topology: Topology,
    /// Brokers and operator client settings.
    pub connection: Connection,
    /// This instance's stable name: its transactional id is
    /// `<application_id>-<instance_id>`, so a restarted instance fences its
    /// predecessor. Two live instances must not share it.
    pub instance_id: String,
    /// Schemas.
    pub registry: RegistryChoice,
    /// The pseudonym key.
    pub hasher: Option<Hasher>,
    /// Where `/metrics`, `/livez`, `/healthz` and `/readyz` are served; `None` for
    /// nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics (registry injected by the caller).
    pub metrics: Metrics,
    /// Create the changelog topic when it is missing.
    pub create_topics: bool,
    /// Replication factor of a created changelog (broker default if unset).
    pub changelog_replication: Option<i32>,
    /// How long shutdown may take before the process gives up on the
    /// stream threads.
    pub grace: Duration,
    /// Stream threads (1 to 32): `processing.stream_threads` unless the
    /// command line says otherwise.
    pub stream_threads: u16,
    /// How long to wait for an unreachable cluster at start-up before
    /// giving up with [`FatalKind::KafkaUnreachable`]; `None` waits as long
    /// as it takes.
    pub startup_timeout: Option<Duration>,
    /// How to reach NATS (used when the topology has a NATS input).
    pub nats: NatsConnection,
}

/// Committed input positions per (topic, partition), for callers that wait
/// until the processor has caught up (the demo, tests).
#[derive(Debug, Default)]
pub struct Progress {
    committed: Mutex<HashMap<(String, i32), i64>>,
}

impl Progress {
    fn set(&self, topic: &str, partition: i32, next: i64) {
        if let Ok(mut m) = self.committed.lock() {
            m.insert((topic.to_owned(), partition), next);
        }
    }

    /// The next offset to process of every partition committed so far.
    pub fn committed(&self) -> HashMap<(String, i32), i64> {
        self.committed.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// A running processor's handles, for callers that watch it.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Committed positions.
    pub progress: Arc<Progress>,
    /// Readiness.
    pub health: Arc<Health>,
}

/// Runs the processor until `shutdown` completes or the stream thread
/// fails.
///
/// # Errors
/// Start-up problems (topics, registry settings, the metrics address) and
/// fatal runtime errors, with what the operator must do.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    run_watched(config, Watch::default(), shutdown).await
}

/// [`run`] with the caller's [`Watch`].
///
/// # Errors
/// As [`run`].
pub async fn run_watched(
    config: RunConfig,
    watch: Watch,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let rt = tokio::runtime::Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = match config.metrics_addr {
        Some(addr) => {
            let listener = telemetry::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            info!(addr = %listener.local_addr().unwrap_or(addr), "Serving /metrics, /livez, /healthz and /readyz.");
            Some(tokio::spawn(telemetry::serve(
                listener,
                config.metrics.clone(),
                watch.health.clone(),
                async {
                    let _ = server_stop_rx.await;
                },
            )))
        }
        None => None,
    };
    let threads = config.stream_threads.max(1);
    watch
        .health
        .threads(usize::from(threads), "checking topics");
    let mut shutdown = std::pin::pin!(shutdown);
    let result = match check_topics_once(&config, threads, &rt, &watch.health, &mut shutdown).await
    {
        Ok(true) => run_threads(&config, threads, &watch, &rt, &stop, shutdown).await,
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    let _ = server_stop_tx.send(());
    if let Some(s) = server {
        let _ = s.await;
    }
    result
}

/// Checks the input topics and the changelog (creating it when allowed)
/// once for every stream thread, on a thread of its own (the checks block).
/// With more than one stream thread the inputs must have equal partition
/// counts: each thread owns partition `p` of every input with its state.
///
/// A cluster that cannot be reached is asked again with back-off (1 s
/// doubling to 30 s), logging the brokers and librdkafka's reason and
/// saying it on `/readyz`, until it answers, `shutdown` completes (`false`)
/// or the start-up deadline passes ([`FatalKind::KafkaUnreachable`]).
async fn check_topics_once(
    config: &RunConfig,
    threads: u16,
    rt: &tokio::runtime::Handle,
    health: &Health,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<bool> {
    let changelog = config.topology.changelog_topic();
    let brokers = &config.connection.brokers;
    let deadline = config
        .startup_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let mut backoff = Duration::from_secs(1);
    let counts =
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (rt, conn) = (rt.clone(), config.connection.clone());
            let inputs = config.topology.spec.input.topics.clone();
            let lease = config.topology.lease_topic();
            let (replication, create) = (config.changelog_replication, config.create_topics);
            let checked = changelog.clone();
            std::thread::Builder::new()
                .name("topic-check".to_owned())
                .spawn(move || {
                    let r = check_topics(&rt, &conn, &inputs, &checked, replication, create)
                        .and_then(|counts| match &lease {
                            Some(l) => kafka::ensure_lease(&rt, &conn, l, replication, create)
                                .map(|()| counts),
                            None => Ok(counts),
                        });
                    let _ = tx.send(r);
                })
                .context("starting the topic check")?;
            let checked = tokio::select! {
                r = rx => r.map_err(|_| anyhow!("the topic check ended without a result"))?,
                () = &mut *shutdown => {
                    health.wait(None);
                    return Ok(false);
                }
            };
            match checked {
                Ok(counts) => break counts,
                Err(kafka::TopicError::Metadata(why)) => {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() + backoff > d) {
                        health.wait(None);
                        return Err(Fatal::new(
                            FatalKind::KafkaUnreachable,
                            format!(
                                "Kafka at {brokers} could not be reached within the start-up \
                             deadline (--startup-timeout-secs): {why}"
                            ),
                        )
                        .into());
                    }
                    warn!(
                        brokers = %brokers,
                        error = %why,
                        retry_in_ms = backoff.as_millis() as u64,
                        "Kafka cannot be reached yet; waiting for it."
                    );
                    health.wait(Some(format!("waiting for Kafka at {brokers}: {why}")));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut *shutdown => {
                            health.wait(None);
                            return Ok(false);
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    health.wait(None);
                    return Err(e.into());
                }
            }
        };
    health.wait(None);
    info!(inputs = ?counts, changelog = %changelog, "Topics checked.");
    let mut sizes = counts.values();
    let first = sizes.next();
    if threads > 1 && sizes.any(|n| Some(n) != first) {
        bail!(
            "the input topics have different partition counts ({counts:?}); with \
             stream_threads {threads} each thread owns partition p of every input, so give \
             them equal counts or run one stream thread"
        );
    }
    Ok(true)
}

/// Runs `threads` stream threads until `shutdown` completes or one of them
/// fails; a failing thread stops its siblings (they commit what they hold)
/// and its error is the instance's, so the exit code keeps its kind.
async fn run_threads(
    config: &RunConfig,
    threads: u16,
    watch: &Watch,
    rt: &tokio::runtime::Handle,
    stop: &Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, Result<()>)>();
    // Each thread has its own registry client and caches; all are built
    // before the first thread starts, so bad settings stop nothing running.
    let registries = (0..threads)
        .map(|_| -> Result<Box<dyn SchemaLookup + Send>> {
            Ok(match &config.registry {
                RegistryChoice::Confluent(c) => Box::new(
                    ConfluentRegistry::new(c, rt.clone(), config.metrics.clone())
                        .context("schema registry settings")?,
                ),
                RegistryChoice::Shared(r) => Box::new(r.clone()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut running = 0usize;
    let mut first: Option<anyhow::Error> = None;
    for (n, registry) in (0..threads).zip(registries) {
        let settings = stream::Settings {
            config: Arc::new(config::StreamConfig::build(config, n)),
            metrics: config.metrics.clone(),
            health: watch.health.clone(),
            progress: watch.progress.clone(),
            stop: stop.clone(),
            rt: rt.clone(),
            nats: config.nats.clone(),
        };
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("stream-thread-{n}"))
            .spawn(move || {
                let span = tracing::info_span!("stream", thread = n);
                // A panic must end the instance like an error does, not
                // leave it running with a thread less.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    span.in_scope(|| stream::run(settings, registry))
                }))
                .unwrap_or_else(|_| Err(anyhow!("stream thread {n} panicked")));
                let _ = done.send((n, r));
            });
        match spawned {
            Ok(_) => running += 1,
            Err(e) => {
                first = Some(anyhow!(e).context("starting a stream thread"));
                break;
            }
        }
    }
    drop(done_tx);

    let ended = |first: &mut Option<anyhow::Error>, n: u16, r: Result<()>| {
        if let Err(e) = r {
            if first.is_none() {
                *first = Some(e);
            } else {
                warn!(thread = n, error = %format!("{e:#}"), "Another stream thread failed too.");
            }
        }
    };
    if first.is_none() {
        tokio::pin!(shutdown);
        tokio::select! {
            r = done_rx.recv() => match r {
                Some((n, r)) => {
                    running -= 1;
                    ended(&mut first, n, r);
                    if first.is_none() {
                        first = Some(anyhow!("stream thread {n} ended on its own"));
                    }
                    if running > 0 {
                        warn!(thread = n, "A stream thread ended; stopping the others.");
                    }
                }
                None => running = 0,
            },
            () = &mut shutdown => info!("Shutting down: finishing the open transactions."),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + config.grace;
    while running > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((n, r))) => {
                running -= 1;
                ended(&mut first, n, r);
            }
            Ok(None) => break,
            Err(_) => {
                warn!(grace_s = config.grace.as_secs(), threads = running, "Stream threads did not stop in time; their open transactions will be aborted by the broker.");
                if first.is_none() {
                    first = Some(anyhow!("shutdown took longer than {:?}", config.grace));
                }
                break;
            }
        }
    }
    first.map_or(Ok(()), Err)
}
