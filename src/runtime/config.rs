//! The stream thread's configuration, built once from the topology and the
//! flags ([`super::RunConfig`]) and shared by every part of the thread:
//! names resolved, durations as [`Duration`].

use std::sync::Arc;
use std::time::Duration;

use super::kafka::Connection;
use super::RunConfig;
use crate::config::{Guarantee, Topology};
use crate::project::Hasher;

/// librdkafka's `transaction.timeout.ms` as the producer sets it (see
/// [`Connection::producer`]) unless the operator overrides it.
const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What the stream thread runs, resolved.
#[derive(Debug)]
pub(crate) struct StreamConfig {
    /// The validated topology (the engine's configuration is in it).
    pub(crate) topology: Topology,
    /// Brokers and the operator's client settings.
    pub(crate) conn: Connection,
    /// The consumer group: the topology's `application_id`.
    pub(crate) group: String,
    /// This thread's stable name: the instance id for thread 0,
    /// `<instance_id>-<n>` for thread n ≥ 1.
    pub(crate) instance_id: String,
    /// Which of the instance's stream threads this is (0 for the first).
    pub(crate) thread: u16,
    /// `<application_id>-<instance_id>` (thread 0) or
    /// `<application_id>-<instance_id>-<n>`: the producer's client and
    /// transactional id, the consumer's client id and the restore group, so
    /// a restarted instance's threads fence their predecessors'.
    pub(crate) client_id: String,
    /// Input topics, shared with every position and counter that names one.
    pub(crate) inputs: Vec<Arc<str>>,
    /// The tier topics, the dead-letter topic and the changelog: every topic
    /// the producer writes.
    pub(crate) outputs: Vec<String>,
    /// The changelog of entity versions and resume markers.
    pub(crate) changelog: String,
    /// Exactly-once (transactions) or at-least-once.
    pub(crate) guarantee: Guarantee,
    /// How often the open transaction is committed.
    pub(crate) commit_interval: Duration,
    /// The producer's transaction timeout: how long a dead instance's open
    /// transaction holds back readers before the broker aborts it.
    pub(crate) transaction_timeout: Duration,
    /// The pseudonym key.
    pub(crate) hasher: Option<Hasher>,
}

impl StreamConfig {
    /// Resolves what stream thread `thread` needs from the caller's config.
    /// Thread 0 keeps the ids of a single-threaded instance, so raising the
    /// thread count still fences the previous process.
    pub(crate) fn build(run: &RunConfig, thread: u16) -> Self {
        let topology = run.topology.clone();
        let spec = &topology.spec;
        let group = spec.application_id.clone();
        let changelog = topology.changelog_topic();
        let topics = &topology.engine.topics;
        let mut outputs: Vec<String> = topics.tiers.iter().map(|t| t.to_string()).collect();
        outputs.push(topics.dead_letter.to_string());
        outputs.push(changelog.clone());
        let transaction_timeout = run
            .connection
            .overrides
            .iter()
            .rev()
            .find(|(k, _)| k == "transaction.timeout.ms")
            .and_then(|(_, v)| v.trim().parse().ok())
            .map_or(DEFAULT_TRANSACTION_TIMEOUT, Duration::from_millis);
        let instance_id = match thread {
            0 => run.instance_id.clone(),
            n => format!("{}-{n}", run.instance_id),
        };
        StreamConfig {
            client_id: format!("{group}-{instance_id}"),
            inputs: spec
                .input
                .topics
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
            outputs,
            changelog,
            guarantee: spec.processing.guarantee,
            commit_interval: Duration::from_millis(spec.processing.commit_interval_ms),
            transaction_timeout,
            group,
            instance_id,
            thread,
            conn: run.connection.clone(),
            hasher: run.hasher.clone(),
            topology,
        }
    }

    /// The input topic `name` as the shared name, if it is one.
    pub(crate) fn input(&self, name: &str) -> Arc<str> {
        self.inputs
            .iter()
            .find(|t| &***t == name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }
}
