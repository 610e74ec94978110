//! The Kafka runtime: `privacy-router run` (and the embedded demo) as a
//! long-running consumer-group member.
//!
//! [`run`] starts the telemetry server on the async runtime and one stream
//! thread ([`stream`]) that owns the Kafka clients and chains the engine's
//! stages; it returns when the shutdown future completes (after the stream
//! thread has committed its open transaction and left the group) or when the
//! stream thread fails.
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

use anyhow::{anyhow, Context, Result};
use tracing::{info, warn};

use crate::config::Topology;
use crate::project::Hasher;
use crate::registry::confluent::{ConfluentConfig, ConfluentRegistry};
use crate::registry::SharedRegistry;
use crate::schema::SchemaLookup;
use crate::telemetry::{self, Health, Metrics};
pub use kafka::Connection;

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
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` for
    /// nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics (registry injected by the caller).
    pub metrics: Metrics,
    /// Create the changelog topic when it is missing.
    pub create_topics: bool,
    /// Replication factor of a created changelog (broker default if unset).
    pub changelog_replication: Option<i32>,
    /// How long shutdown may take before the process gives up on the
    /// stream thread.
    pub grace: Duration,
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
            info!(addr = %listener.local_addr().unwrap_or(addr), "Serving /metrics, /healthz and /readyz.");
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
    let registry: Box<dyn SchemaLookup + Send> = match &config.registry {
        RegistryChoice::Confluent(c) => Box::new(
            ConfluentRegistry::new(c, rt.clone(), config.metrics.clone())
                .context("schema registry settings")?,
        ),
        RegistryChoice::Shared(r) => Box::new(r.clone()),
    };
    let settings = stream::Settings {
        config: Arc::new(config::StreamConfig::build(&config)),
        metrics: config.metrics.clone(),
        health: watch.health.clone(),
        progress: watch.progress.clone(),
        stop: stop.clone(),
        rt,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stream-thread".to_owned())
        .spawn(move || {
            let r = stream::run(settings, registry);
            let _ = done_tx.send(r);
        })
        .context("starting the stream thread")?;

    tokio::pin!(shutdown);
    let mut done_rx = done_rx;
    let result = tokio::select! {
        r = &mut done_rx => r.unwrap_or_else(|_| Err(anyhow!("the stream thread ended without a result"))),
        () = &mut shutdown => {
            info!("Shutting down: finishing the open transaction.");
            stop.store(true, Ordering::SeqCst);
            match tokio::time::timeout(config.grace, &mut done_rx).await {
                Ok(r) => r.unwrap_or_else(|_| Err(anyhow!("the stream thread ended without a result"))),
                Err(_) => {
                    warn!(grace_s = config.grace.as_secs(), "The stream thread did not stop in time; its open transaction will be aborted by the broker.");
                    Err(anyhow!("shutdown took longer than {:?}", config.grace))
                }
            }
        }
    };
    let _ = server_stop_tx.send(());
    if let Some(s) = server {
        let _ = s.await;
    }
    result
}
