//! The stream thread: one OS thread that owns the group consumer, the
//! producer and the partition state, and chains the engine's stages for
//! every record (like a Kafka Streams `StreamThread`).
//!
//! Every librdkafka call that blocks — polling, restoring, transactional
//! commits — happens here, never on a worker of the async runtime; registry
//! calls are `async` and awaited with `Handle::block_on` from this thread.
//!
//! Per record: restore-check → engine → produce (tier records, dead letter,
//! changelog) → advance the partition's position. Every
//! `commit_interval_ms`: resume markers → offsets → commit, in one
//! transaction. On revoke the open transaction commits before the
//! partitions are released; on assign each new partition's state is restored
//! from the changelog before its first record is processed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::kafka::{
    check_topics, forward_error, forward_log, send_waiting, Connection, QuietContext,
};
use super::state::{encode_value, restore, resume_key, Journal, PartitionState, RestoreError};
use super::{Fatal, Progress};
use crate::config::{Guarantee, Topology};
use crate::order::{Verdict, VersionStore};
use crate::pipeline::{Engine, EngineError};
use crate::project::Hasher;
use crate::record::{Destination, OutRecord, Outcome, RawRecord, Source};
use crate::schema::SchemaLookup;
use crate::telemetry::{self, Health, Metrics, Pending, TopicCounters};

/// Everything the stream thread needs.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) topology: Topology,
    pub(crate) conn: Connection,
    pub(crate) instance_id: String,
    pub(crate) hasher: Option<Hasher>,
    pub(crate) metrics: Metrics,
    pub(crate) health: Arc<Health>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) create_topics: bool,
    pub(crate) changelog_replication: Option<i32>,
}

/// How long a transactional call may take before it is retried.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait before asking an unavailable registry again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries of a registry that is unavailable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Aborts in a row without a commit before the thread gives up.
const MAX_ABORTS_IN_A_ROW: u32 = 5;
/// How often JSON subjects are looked up again, so a new schema version
/// takes effect without a restart.
const SUBJECT_REFRESH: Duration = Duration::from_secs(60);

/// Counts delivery failures; in a transaction they also fail the commit.
#[derive(Debug, Default)]
struct ProducerCtx {
    failed: AtomicU64,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&error, reason);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                warn!(topic = m.topic(), partition = m.partition(), error = %e, "Delivery failed.");
            }
        }
    }
}

/// The consumer's context: rebalances and statistics reach the task here.
struct StreamCtx {
    task: Mutex<Option<Task>>,
    metrics: Metrics,
    inputs: HashSet<String>,
}

impl std::fmt::Debug for StreamCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamCtx")
    }
}

impl StreamCtx {
    fn lock(&self) -> MutexGuard<'_, Option<Task>> {
        // The task never panics while holding the lock; if it did, the
        // thread is ending anyway.
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for StreamCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let guard = self.lock();
        for (topic, t) in &stats.topics {
            if !self.inputs.contains(topic) {
                continue;
            }
            for (p, s) in &t.partitions {
                if *p < 0 {
                    continue;
                }
                let Some(task) = guard.as_ref() else { continue };
                let Some(pos) = task.position(topic, *p) else {
                    continue;
                };
                let end = if s.ls_offset >= 0 {
                    s.ls_offset
                } else {
                    s.hi_offset
                };
                if end >= 0 {
                    telemetry::consumer_lag(&self.metrics, topic, *p, (end - pos).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for StreamCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut guard = self.lock();
        let Some(task) = guard.as_mut() else { return };
        match rebalance {
            Rebalance::Revoke(tpl) => task.on_revoke(consumer, tpl),
            Rebalance::Assign(tpl) => task.on_assign(consumer, tpl),
            Rebalance::Error(e) => warn!(error = %e, "Rebalance failed."),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pos {
    /// The next offset to process.
    next: i64,
    /// The first offset processed in the open transaction.
    txn_start: Option<i64>,
}

/// The state the stream thread works on; behind the context's mutex so the
/// rebalance callbacks (which run inside `poll`, on this same thread) can
/// reach it.
struct Task {
    settings: Arc<Settings>,
    engine: Engine,
    registry: Box<dyn SchemaLookup + Send>,
    producer: BaseProducer<ProducerCtx>,
    restorer: BaseConsumer<QuietContext>,
    changelog: String,
    guarantee: Guarantee,
    commit_interval: Duration,
    inputs: Vec<Arc<str>>,
    tier_topics: [Arc<str>; 3],
    parts: HashMap<i32, PartitionState>,
    assigned: HashSet<(Arc<str>, i32)>,
    positions: HashMap<(Arc<str>, i32), Pos>,
    journal: Journal,
    pending: Pending,
    counters: TopicCounters,
    last_commit: Instant,
    last_refresh: Instant,
    last_gauges: Instant,
    aborts_in_a_row: u32,
    /// The producer's client and transactional id, to start a new one.
    client_id: String,
    /// While the registry is away: every assigned partition is paused
    /// until then, so the poll loop serves rebalances and heartbeats
    /// without fetching.
    paused_until: Option<Instant>,
    /// The next wait for the registry (100 ms, doubling to 5 s; reset by a
    /// record processed).
    registry_backoff: Duration,
    /// Records sent, for the delivery-report cadence.
    sends: u64,
    /// Records handled, for sampling the engine's time.
    handled: u64,
    /// Records handled since the last clock check.
    since_tick: u32,
    /// Set by a failed send: the open transaction must be aborted.
    broken: Option<String>,
    /// Set in a callback that cannot return an error.
    fatal: Option<anyhow::Error>,
    /// The thread is ending after a fatal error: leaving the group must not
    /// commit what the failed state holds.
    failed: bool,
    dead_letter_log: RateLimit,
    /// Derived schemas whose refusal was logged, by (subject, writer id):
    /// each is logged once, however many events it refuses.
    refusals_logged: HashSet<(String, u32)>,
}

/// Logs at most `max` lines per window, then says how many it held back.
#[derive(Debug)]
struct RateLimit {
    window: Instant,
    logged: u32,
    held_back: u64,
}

impl RateLimit {
    const MAX: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(10);

    fn new() -> Self {
        RateLimit {
            window: Instant::now(),
            logged: 0,
            held_back: 0,
        }
    }

    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Self::WINDOW {
            if self.held_back > 0 {
                warn!(
                    held_back = self.held_back,
                    "More dead letters than logged; see the dead-letter metrics."
                );
            }
            self.window = Instant::now();
            self.logged = 0;
            self.held_back = 0;
        }
        if self.logged < Self::MAX {
            self.logged += 1;
            true
        } else {
            self.held_back += 1;
            false
        }
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("assigned", &self.assigned.len())
            .finish_non_exhaustive()
    }
}

/// Runs the stream thread until `settings.stop` turns true (then commits
/// and leaves the group) or a fatal error.
///
/// # Errors
/// Start-up problems (topics, clients) and fatal runtime errors (fenced,
/// the registry refusing a derived schema).
pub(crate) fn run(settings: Settings, registry: Box<dyn SchemaLookup + Send>) -> Result<()> {
    let settings = Arc::new(settings);
    let s = &settings;
    let spec = &s.topology.spec;
    let app = spec.application_id.as_str();
    let changelog = s.topology.changelog_topic();
    let guarantee = spec.processing.guarantee;
    s.health.set_ready(false, "checking topics");
    let inputs = check_topics(
        &s.rt,
        &s.conn,
        &spec.input.topics,
        &changelog,
        s.changelog_replication,
        s.create_topics,
    )?;
    info!(inputs = ?inputs, changelog = %changelog, "Topics checked.");

    let client_id = format!("{app}-{}", s.instance_id);
    let producer: BaseProducer<ProducerCtx> = s
        .conn
        .producer(&client_id, guarantee)
        .create_with_context(ProducerCtx::default())
        .context("creating the producer")?;
    if guarantee == Guarantee::ExactlyOnce {
        s.health.set_ready(false, "initialising transactions");
        retry_txn(s, "init_transactions", || {
            producer.init_transactions(TXN_TIMEOUT)
        })?;
        producer
            .begin_transaction()
            .context("beginning the first transaction")?;
    }
    let restorer: BaseConsumer<QuietContext> = s
        .conn
        .restorer(&client_id)
        .create_with_context(QuietContext)
        .context("creating the restore consumer")?;

    let task = Task {
        settings: settings.clone(),
        engine: Engine::new(s.topology.engine.clone(), s.hasher.clone()),
        registry,
        producer,
        restorer,
        changelog,
        guarantee,
        commit_interval: Duration::from_millis(spec.processing.commit_interval_ms),
        inputs: spec
            .input
            .topics
            .iter()
            .map(|t| Arc::from(t.as_str()))
            .collect(),
        tier_topics: s.topology.engine.topics.tiers.clone(),
        parts: HashMap::new(),
        assigned: HashSet::new(),
        positions: HashMap::new(),
        journal: Journal::default(),
        pending: Pending::default(),
        counters: TopicCounters::default(),
        last_commit: Instant::now(),
        last_refresh: Instant::now(),
        last_gauges: Instant::now(),
        aborts_in_a_row: 0,
        client_id: client_id.clone(),
        paused_until: None,
        registry_backoff: MIN_BACKOFF,
        sends: 0,
        handled: 0,
        since_tick: 0,
        broken: None,
        fatal: None,
        failed: false,
        dead_letter_log: RateLimit::new(),
        refusals_logged: HashSet::new(),
    };
    let ctx = StreamCtx {
        task: Mutex::new(Some(task)),
        metrics: s.metrics.clone(),
        inputs: spec.input.topics.iter().cloned().collect(),
    };
    let consumer: BaseConsumer<StreamCtx> = s
        .conn
        .consumer(app, &s.instance_id)
        .create_with_context(ctx)
        .context("creating the consumer")?;
    let topics: Vec<&str> = spec.input.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("subscribing to the input topics")?;
    s.health.set_ready(false, "joining the consumer group");
    info!(group = app, instance = %s.instance_id, guarantee = ?guarantee, "Stream thread started.");

    // From here on, an error ends a running processor: it is fatal (its
    // own exit code), unlike the start-up problems above.
    let result = poll_loop(s, &consumer).map_err(|e| anyhow::Error::new(Fatal(format!("{e:#}"))));
    // Finish the open transaction, then leave the group (the revoke
    // callback finds nothing left to commit).
    let finished = {
        let mut guard = consumer.context().lock();
        match (guard.as_mut(), &result) {
            (Some(task), Ok(())) => task.commit(&consumer),
            (Some(task), Err(_)) => {
                // Failing: abort the open transaction now rather than leave
                // it to the broker's transaction timeout (it would hold back
                // read_committed readers of every partition it touched).
                task.failed = true;
                task.abort_quietly();
                Ok(())
            }
            (None, _) => Ok(()),
        }
    };
    consumer.unsubscribe();
    for _ in 0..20 {
        if consumer.poll(Duration::from_millis(50)).is_none() {
            break;
        }
    }
    let late = consumer
        .context()
        .lock()
        .as_mut()
        .and_then(|t| t.fatal.take());
    s.health.set_ready(false, "stopped");
    // Drop the task (producer, restorer) before the consumer closes.
    let task = consumer.context().lock().take();
    drop(task);
    drop(consumer);
    result?;
    finished?;
    if let Some(e) = late {
        return Err(e);
    }
    info!("Stream thread stopped cleanly.");
    Ok(())
}

fn poll_loop(s: &Settings, consumer: &BaseConsumer<StreamCtx>) -> Result<()> {
    let mut consumer_errors = RateLimit::new();
    while !s.stop.load(Ordering::SeqCst) {
        let polled = consumer.poll(Duration::from_millis(100));
        let mut guard = consumer.context().lock();
        let Some(task) = guard.as_mut() else {
            bail!("the stream task is gone");
        };
        if let Some(e) = task.fatal.take() {
            return Err(e);
        }
        let idle = !matches!(polled, Some(Ok(_)));
        match polled {
            None => {}
            Some(Ok(m)) => task.handle(consumer, &m)?,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
                    return Err(anyhow!(e).context("the consumer failed"));
                }
                if consumer_errors.allow() {
                    warn!(error = %e, "Consumer error; librdkafka retries.");
                }
            }
        }
        task.tick(consumer, idle)?;
    }
    Ok(())
}

/// Runs a transactional call until it succeeds, retrying what librdkafka
/// calls retriable.
fn retry_txn(
    s: &Settings,
    what: &str,
    mut call: impl FnMut() -> rdkafka::error::KafkaResult<()>,
) -> Result<()> {
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(e) if retriable(&e) && !s.stop.load(Ordering::SeqCst) => {
                warn!(call = what, error = %e, "Transactional call failed; retrying.");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(txn_failure(e, what)),
        }
    }
}

/// A transactional call's failure as the operator should read it: a fenced
/// producer is named as such (another instance owns the partitions now;
/// nothing of this one's open transaction is committed).
fn txn_failure(e: KafkaError, what: &str) -> anyhow::Error {
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::Fenced
        )
    );
    if fenced {
        tracing::error!(call = what, error = %e, "This instance was fenced: another instance took over its partitions while it was away. Its open transaction is not committed; exiting.");
        anyhow!(e).context(format!("{what}: fenced by another instance"))
    } else {
        anyhow!(e).context(what.to_owned())
    }
}

fn retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_retriable(),
        KafkaError::Flush(_) => true,
        _ => false,
    }
}

/// The producer's `transaction.timeout.ms` (10 s unless the operator set
/// another).
fn transaction_timeout(conn: &super::kafka::Connection) -> Duration {
    conn.overrides
        .iter()
        .rev()
        .find(|(k, _)| k == "transaction.timeout.ms")
        .and_then(|(_, v)| v.trim().parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// A newer producer with this transactional id exists (another instance
/// with the same `--instance-id` took over): this one must stop, or the two
/// would fence each other in turn.
fn fenced_code(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::FencedInstanceId)
    )
}

/// [`fenced_code`] for an error on its way out.
fn is_fenced(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<KafkaError>())
        .any(fenced_code)
}

/// The transaction failed because brokers were away (records timed out,
/// no leader, no coordinator): waiting is the remedy, not giving up.
fn broker_away(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let by_code = matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageTimedOut
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
                | C::NetworkException
        )
    );
    // librdkafka reports records that timed out in a transaction as the
    // transaction's failure, naming them in the text.
    by_code || e.to_string().contains("timed out")
}

fn requires_abort(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.txn_requires_abort())
}

impl Task {
    fn metrics(&self) -> &Metrics {
        &self.settings.metrics
    }

    fn stopping(&self) -> bool {
        self.settings.stop.load(Ordering::SeqCst)
    }

    fn position(&self, topic: &str, p: i32) -> Option<i64> {
        self.positions
            .iter()
            .find(|((t, q), _)| *q == p && &**t == topic)
            .map(|(_, pos)| pos.next)
    }

    fn input(&self, topic: &str) -> Arc<str> {
        self.inputs
            .iter()
            .find(|t| &***t == topic)
            .cloned()
            .unwrap_or_else(|| Arc::from(topic))
    }

    fn handle(
        &mut self,
        consumer: &BaseConsumer<StreamCtx>,
        m: &BorrowedMessage<'_>,
    ) -> Result<()> {
        let topic = self.input(m.topic());
        let p = m.partition();
        let offset = m.offset();
        self.counters.consumed(&self.settings.metrics, &topic);
        if !self.parts.contains_key(&p) {
            // Assignments restore before processing; this is a safety net.
            self.restore_partitions(&[p])?;
        }
        let already = self.parts[&p]
            .resume
            .get(&topic)
            .is_some_and(|r| offset < *r);
        if already {
            self.pending.replayed();
            self.advance(&topic, p, offset);
            return Ok(());
        }
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let source = Source {
            topic: topic.clone(),
            partition: p,
            offset,
        };
        let raw = RawRecord {
            source: &source,
            key: m.key(),
            value: m.payload(),
            headers: &headers,
        };
        // The engine's time is sampled (one record in 16): reading the clock
        // twice per record costs more than the histogram is worth.
        self.handled = self.handled.wrapping_add(1);
        let timed = self.handled.is_multiple_of(16);
        let outcome = {
            let started = timed.then(Instant::now);
            let part = self.parts.get_mut(&p).expect("restored above");
            let mut store = self.journal.store(p, &mut part.store);
            let result = self
                .engine
                .process(&raw, &mut store, self.registry.as_mut());
            if let Some(t) = started {
                telemetry::processed(&self.settings.metrics, t.elapsed());
            }
            for refusal in self.engine.take_refusals() {
                let first = self
                    .refusals_logged
                    .insert((refusal.subject.clone(), refusal.writer_id));
                telemetry::derived_schema_refused(&self.settings.metrics, &refusal, first);
            }
            match result {
                Ok(o) => {
                    self.registry_backoff = MIN_BACKOFF;
                    o
                }
                Err(EngineError::Transient(why)) => {
                    warn!(
                        topic = %topic,
                        partition = p,
                        offset,
                        error = %why,
                        retry_in_ms = self.registry_backoff.as_millis() as u64,
                        "Schema registry unavailable; waiting, skipping nothing."
                    );
                    // Nothing stays open while waiting.
                    self.commit(consumer)?;
                    self.wait_for_registry(consumer, &topic, p, offset);
                    return Ok(());
                }
                Err(EngineError::Fatal(why)) => {
                    bail!("processing {topic}[{p}]@{offset}: {why}")
                }
            }
        };
        // Output records keep the input record's timestamp, as in Kafka
        // Streams: event time flows through, and end-to-end latency is
        // measurable downstream.
        let ts = m.timestamp().to_millis();
        self.emit(outcome, &topic, p, offset, ts);
        self.advance(&topic, p, offset);
        if let Some(why) = self.broken.take() {
            self.abort(consumer, &why, false)?;
        }
        Ok(())
    }

    /// Waits for the registry without leaving the group: this record is
    /// put back (the partition is rewound to it, which also drops what was
    /// fetched after it), every assigned partition is paused, and the poll
    /// loop goes on serving rebalances and heartbeats until the back-off has
    /// passed ([`Task::tick`] resumes them). Blocking here instead would
    /// hold up every rebalance of the group for as long as the registry is
    /// away.
    fn wait_for_registry(
        &mut self,
        consumer: &BaseConsumer<StreamCtx>,
        topic: &str,
        p: i32,
        offset: i64,
    ) {
        match consumer.assignment() {
            Ok(all) => {
                if let Err(e) = consumer.pause(&all) {
                    warn!(error = %e, "Pausing the input failed.");
                }
            }
            Err(e) => warn!(error = %e, "Reading the assignment failed."),
        }
        if let Err(e) = consumer.seek(topic, p, Offset::Offset(offset), Duration::from_secs(10)) {
            warn!(topic, partition = p, error = %e, "Rewind failed.");
        }
        self.paused_until = Some(Instant::now() + self.registry_backoff);
        self.registry_backoff = (self.registry_backoff * 2).min(MAX_BACKOFF);
    }

    /// Ends a registry wait: every assigned partition fetches again.
    fn resume_input(&mut self, consumer: &BaseConsumer<StreamCtx>) {
        self.paused_until = None;
        if let Ok(all) = consumer.assignment() {
            if let Err(e) = consumer.resume(&all) {
                warn!(error = %e, "Resuming the input failed.");
            }
        }
    }

    fn advance(&mut self, topic: &Arc<str>, p: i32, offset: i64) {
        let pos = self.positions.entry((topic.clone(), p)).or_insert(Pos {
            next: offset,
            txn_start: None,
        });
        pos.next = offset + 1;
        pos.txn_start.get_or_insert(offset);
    }

    fn emit(&mut self, outcome: Outcome, topic: &Arc<str>, p: i32, offset: i64, ts: Option<i64>) {
        match outcome {
            Outcome::Routed(r) => {
                for rec in &r.records {
                    if let Destination::Tier(tier) = rec.destination {
                        self.pending.produced(tier, r.redacted[tier.index()]);
                    }
                    self.send(rec, None, ts);
                }
                // The version, in the same transaction as the outputs. An
                // unordered event has none: like a dead letter, its resume
                // marker keeps a replay from sending it twice.
                let changelog = self.changelog.clone();
                match &r.state {
                    Some(state) => self.send_raw(
                        &changelog,
                        Some(p),
                        &state.key,
                        &encode_value(state.version),
                    ),
                    None => self.send_raw(
                        &changelog,
                        Some(p),
                        &resume_key(topic),
                        &encode_value(offset + 1),
                    ),
                }
                self.pending.verdict(r.verdict);
                let trace_id = r.log_ids.trace_id.as_deref().unwrap_or("");
                let correlation_id = r.log_ids.correlation_id.as_deref().unwrap_or("");
                if let Some(field) = &r.tier_mismatch {
                    self.pending.tier_mismatch();
                    debug!(topic = %topic, partition = p, offset, field = %field, trace_id, correlation_id, "Event holds data above its declared privacy tier.");
                }
                if let Verdict::Gap { missing } = r.verdict {
                    debug!(topic = %topic, partition = p, offset, missing, trace_id, correlation_id, "Entity version gap; emitted with x-version-gap.");
                }
                debug!(topic = %topic, partition = p, offset, verdict = r.verdict.label(), records = r.records.len(), trace_id, correlation_id, "Routed.");
            }
            Outcome::Skipped(v) => {
                self.pending.verdict(v);
                debug!(topic = %topic, partition = p, offset, verdict = v.label(), "Version already emitted; skipped.");
            }
            Outcome::DeadLettered { record, rejection } => {
                self.send(&record, None, ts);
                // Dead letters are not versioned: the resume marker keeps a
                // replay from sending one twice.
                let changelog = self.changelog.clone();
                self.send_raw(
                    &changelog,
                    Some(p),
                    &resume_key(topic),
                    &encode_value(offset + 1),
                );
                self.pending.dead_letter(rejection.reason);
                if self.dead_letter_log.allow() {
                    warn!(
                        topic = %topic,
                        partition = p,
                        offset,
                        reason = rejection.reason.code(),
                        detail = %rejection.detail,
                        "Dead-lettered."
                    );
                }
            }
        }
    }

    fn send(&mut self, rec: &OutRecord, partition: Option<i32>, ts: Option<i64>) {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(&v[..]),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&rec.topic).headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(&k[..]);
        }
        if let Some(v) = &rec.value {
            record = record.payload(&v[..]);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(ts) = ts {
            record = record.timestamp(ts);
        }
        self.produce(record);
    }

    fn send_raw(&mut self, topic: &str, partition: Option<i32>, key: &[u8], value: &[u8]) {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key).payload(value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.produce(record);
    }

    fn produce(&mut self, record: BaseRecord<'_, [u8], [u8]>) {
        if self.broken.is_some() {
            return;
        }
        match send_waiting(&self.producer, record) {
            Ok(()) => {
                // Serve delivery reports now and then (they would otherwise
                // pile up until the commit drains them).
                self.sends = self.sends.wrapping_add(1);
                if self.sends.is_multiple_of(256) {
                    self.producer.poll(Duration::ZERO);
                }
            }
            Err((e, r)) => self.broken = Some(format!("producing to {}: {e}", r.topic)),
        }
    }

    fn tick(&mut self, consumer: &BaseConsumer<StreamCtx>, idle: bool) -> Result<()> {
        // Reading the clock for every record costs more than the check is
        // worth: look every 64 records, and whenever the input is idle.
        self.since_tick += 1;
        if !idle && self.since_tick < 64 {
            return Ok(());
        }
        self.since_tick = 0;
        if self.last_commit.elapsed() >= self.commit_interval {
            self.commit(consumer)?;
        }
        if self.paused_until.is_some_and(|t| Instant::now() >= t) {
            self.resume_input(consumer);
        }
        if self.last_refresh.elapsed() >= SUBJECT_REFRESH {
            self.engine.forget_misses();
            self.last_refresh = Instant::now();
        }
        if self.last_gauges.elapsed() >= Duration::from_secs(1) {
            self.gauges();
        }
        Ok(())
    }

    fn gauges(&mut self) {
        let entities = self.parts.values().map(|p| p.store.len()).sum();
        telemetry::state_size(self.metrics(), entities, self.assigned.len());
        let stats = self.engine.take_cache_stats();
        telemetry::registry_lookups(self.metrics(), stats.hits, stats.misses);
        self.last_gauges = Instant::now();
    }

    /// Commits the open transaction: resume markers, then offsets, then the
    /// commit. A failure that needs an abort aborts and rewinds; a fatal one
    /// is returned.
    fn commit(&mut self, consumer: &BaseConsumer<StreamCtx>) -> Result<()> {
        let result = self.commit_open(consumer);
        // The interval counts from the end of a commit, so a slow commit
        // does not leave the next transaction with a single record.
        self.last_commit = Instant::now();
        result
    }

    fn commit_open(&mut self, consumer: &BaseConsumer<StreamCtx>) -> Result<()> {
        let dirty: Vec<(Arc<str>, i32, i64)> = self
            .positions
            .iter()
            .filter(|(_, pos)| pos.txn_start.is_some())
            .map(|((t, p), pos)| (t.clone(), *p, pos.next))
            .collect();
        if dirty.is_empty() && self.journal.is_empty() && self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let changelog = self.changelog.clone();
        for (t, p, next) in &dirty {
            self.send_raw(&changelog, Some(*p), &resume_key(t), &encode_value(*next));
        }
        if let Some(why) = self.broken.take() {
            return self.abort(consumer, &why, false);
        }
        let mut offsets = TopicPartitionList::new();
        for (t, p, next) in &dirty {
            offsets
                .add_partition_offset(t, *p, Offset::Offset(*next))
                .context("building the offsets to commit")?;
        }
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                let Some(group) = consumer.group_metadata() else {
                    bail!("the consumer has no group metadata");
                };
                self.drain();
                let mut offsets_sent = dirty.is_empty();
                loop {
                    let r = if offsets_sent {
                        self.producer.commit_transaction(TXN_TIMEOUT)
                    } else {
                        self.producer
                            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
                            .map(|()| offsets_sent = true)
                            .and_then(|()| self.producer.commit_transaction(TXN_TIMEOUT))
                    };
                    match r {
                        Ok(()) => break,
                        Err(e) if requires_abort(&e) => {
                            return self.abort(consumer, &e.to_string(), broker_away(&e));
                        }
                        Err(e) if retriable(&e) => {
                            warn!(error = %e, "Commit not finished; retrying.");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) if !fenced_code(&e) && !self.stopping() => {
                            // Fatal to this producer, not to the processor
                            // (e.g. the broker ended the transaction on its
                            // timeout while a broker was away).
                            warn!(error = %e, "The transaction cannot be committed or aborted; starting a new producer.");
                            self.renew_producer()?;
                            return self.abort_renewed(consumer, &e.to_string());
                        }
                        Err(e) => return Err(txn_failure(e, "committing the transaction")),
                    }
                }
            }
            Guarantee::AtLeastOnce => {
                self.drain();
                if self.producer.context().failed.swap(0, Ordering::Relaxed) > 0 {
                    return self.abort(consumer, "records could not be delivered", false);
                }
                if !dirty.is_empty() {
                    if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                        // The next commit covers these offsets; at least once
                        // allows the replay a crash before it would cause.
                        warn!(error = %e, "Offset commit failed; the next commit retries.");
                    }
                }
            }
        }
        self.journal.clear();
        let mut inputs = 0;
        for (t, p, next) in &dirty {
            if let Some(pos) = self.positions.get_mut(&(t.clone(), *p)) {
                if let Some(start) = pos.txn_start.take() {
                    inputs += (next - start).max(0) as u64;
                }
            }
            self.settings.progress.set(t, *p, *next);
        }
        self.pending.inputs(inputs);
        self.aborts_in_a_row = 0;
        let m = self.settings.metrics.clone();
        telemetry::committed(&m, &mut self.pending, started.elapsed());
        if self.guarantee == Guarantee::ExactlyOnce {
            let producer = &self.producer;
            retry_txn(&self.settings, "begin_transaction", || {
                producer.begin_transaction()
            })?;
        }
        Ok(())
    }

    /// Best effort on the way out after a fatal error: abort the open
    /// transaction (bounded wait), ignoring what fails.
    fn abort_quietly(&mut self) {
        if self.guarantee == Guarantee::ExactlyOnce {
            if let Err(e) = self.abort_open(Duration::from_secs(5)) {
                warn!(error = %e, "Could not abort the open transaction; the broker will time it out.");
            }
        }
    }

    /// Aborts the open transaction while records may still be queued or in
    /// flight: they are purged first and their delivery reports served (an
    /// abort waits for every outstanding record to be reported, and nothing
    /// else polls this producer), then the abort is sent.
    fn abort_open(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        let until = Instant::now() + timeout;
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        while self.producer.in_flight_count() > 0 && Instant::now() < until {
            self.producer.poll(Duration::from_millis(10));
        }
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let result = self.producer.abort_transaction(left);
        // Reports of what the abort itself failed.
        self.producer.poll(Duration::ZERO);
        result
    }

    /// Waits until every record sent is delivered (or failed), serving
    /// delivery reports. `rdkafka`'s own flush sleeps in steps of 100 ms,
    /// which would put 100 ms on every commit; this polls in 1 ms steps.
    fn drain(&self) {
        let mut last_report = Instant::now();
        while self.producer.in_flight_count() > 0 {
            self.producer.poll(Duration::from_millis(1));
            if last_report.elapsed() > Duration::from_secs(10) {
                warn!(
                    in_flight = self.producer.in_flight_count(),
                    "Records not delivered yet; waiting (is the broker reachable?)."
                );
                last_report = Instant::now();
            }
        }
    }

    /// Aborts the open transaction, puts the versions it changed back and
    /// rewinds every partition it read to where it started. When the abort
    /// itself fails for any reason but a newer producer with this
    /// transactional id (the broker aborted the transaction on its timeout
    /// while a broker was away, or left the producer in a state only a new
    /// epoch clears), the producer is replaced by a new one, which
    /// initialises its transactions and so ends this one, as Kafka Streams
    /// does. Aborts caused by brokers being away do not count towards the
    /// aborts in a row that end the processor: waiting for brokers is not
    /// a failure.
    fn abort(
        &mut self,
        consumer: &BaseConsumer<StreamCtx>,
        why: &str,
        broker_away: bool,
    ) -> Result<()> {
        let started = Instant::now();
        if self.guarantee == Guarantee::ExactlyOnce {
            if let Err(e) = retry_txn(&self.settings, "abort_transaction", || {
                self.abort_open(TXN_TIMEOUT)
            }) {
                if is_fenced(&e) || self.stopping() {
                    return Err(e);
                }
                warn!(error = %format!("{e:#}"), "The abort failed; starting a new producer.");
                self.renew_producer()?;
            }
        } else {
            self.drain();
        }
        self.producer.context().failed.store(0, Ordering::Relaxed);
        self.rewind(consumer);
        let m = self.settings.metrics.clone();
        telemetry::aborted(&m, &mut self.pending, started.elapsed(), why);
        if !broker_away {
            self.aborts_in_a_row += 1;
        }
        if self.aborts_in_a_row > MAX_ABORTS_IN_A_ROW {
            bail!(
                "{} transactions in a row were aborted; last: {why}",
                self.aborts_in_a_row
            );
        }
        if self.guarantee == Guarantee::ExactlyOnce {
            let producer = &self.producer;
            retry_txn(&self.settings, "begin_transaction", || {
                producer.begin_transaction()
            })?;
        }
        Ok(())
    }

    /// After [`Task::renew_producer`] ended the open transaction: the rest of
    /// an abort (state back, rewind, a new transaction).
    fn abort_renewed(&mut self, consumer: &BaseConsumer<StreamCtx>, why: &str) -> Result<()> {
        self.rewind(consumer);
        let m = self.settings.metrics.clone();
        telemetry::aborted(&m, &mut self.pending, Duration::ZERO, why);
        self.aborts_in_a_row += 1;
        if self.aborts_in_a_row > MAX_ABORTS_IN_A_ROW {
            bail!(
                "{} transactions in a row were aborted; last: {why}",
                self.aborts_in_a_row
            );
        }
        let producer = &self.producer;
        retry_txn(&self.settings, "begin_transaction", || {
            producer.begin_transaction()
        })
    }

    /// Puts back the versions the open transaction changed and rewinds every
    /// partition it read to where it started.
    fn rewind(&mut self, consumer: &BaseConsumer<StreamCtx>) {
        self.journal.roll_back(&mut self.parts);
        for ((t, p), pos) in self.positions.iter_mut() {
            if let Some(start) = pos.txn_start.take() {
                pos.next = start;
                if let Err(e) = consumer.seek(t, *p, Offset::Offset(start), Duration::from_secs(10))
                {
                    warn!(topic = %t, partition = *p, error = %e, "Rewind failed.");
                }
            }
        }
    }

    /// Replaces the transactional producer: the old one is dropped (what
    /// it still held is purged), the new one initialises its transactions
    /// with the same transactional id, which ends whatever the old one left
    /// open. No transaction is open afterwards.
    fn renew_producer(&mut self) -> Result<()> {
        let producer: BaseProducer<ProducerCtx> = self
            .settings
            .conn
            .producer(&self.client_id, self.guarantee)
            .create_with_context(ProducerCtx::default())
            .context("creating a new producer")?;
        let old = std::mem::replace(&mut self.producer, producer);
        drop(old);
        self.broken = None;
        let producer = &self.producer;
        retry_txn(&self.settings, "init_transactions", || {
            producer.init_transactions(TXN_TIMEOUT)
        })?;
        info!("A new transactional producer took over.");
        self.await_no_hanging_transactions()
    }

    /// Waits until no transaction is open on any partition this processor
    /// writes (tier, dead-letter and changelog topics), as of now: each
    /// partition's last stable offset must reach the high watermark it has
    /// at the start. Called after a transaction ended without this
    /// instance's own commit or abort. Kafka then ends it on the broker,
    /// but a broker that aborts it while starting up (a single node
    /// restarted after a crash, when the transaction timed out meanwhile)
    /// may skip the abort markers of partitions whose leaders it does not
    /// know yet (`TransactionMarkerChannelManager`: "likely deleted
    /// already"), leaving the transaction hanging; the next transaction of
    /// the same producer id would then commit its records with its own.
    /// A transaction still open after twice the transaction timeout is such
    /// a hanging one: the processor stops (fatal) naming the partition and
    /// the offset an operator aborts it at, rather than commit it.
    fn await_no_hanging_transactions(&self) -> Result<()> {
        let mut topics: Vec<String> = self.tier_topics.iter().map(|t| t.to_string()).collect();
        topics.push(self.settings.topology.engine.topics.dead_letter.to_string());
        topics.push(self.changelog.clone());
        let (high, low) = self.watermark_clients()?;
        let timeout = Duration::from_secs(10);
        let started = Instant::now();
        let limit = 3 * transaction_timeout(&self.settings.conn);
        // Brokers may still be moving leaders: errors are retried until the
        // limit, like a partition that is held.
        let mut targets = Vec::new();
        'topics: while targets.is_empty() {
            for t in &topics {
                let read = low
                    .fetch_metadata(Some(t), timeout)
                    .and_then(|_| high.fetch_metadata(Some(t), timeout));
                let md = match read {
                    Ok(md) => md,
                    Err(e) if started.elapsed() < limit => {
                        warn!(topic = %t, error = %e, "Reading an output topic's metadata failed; retrying.");
                        targets.clear();
                        std::thread::sleep(Duration::from_millis(500));
                        continue 'topics;
                    }
                    Err(e) => return Err(anyhow!(e).context("reading the output topics' metadata")),
                };
                for p in md.topics().iter().flat_map(|m| m.partitions()) {
                    targets.push((t.clone(), p.id()));
                }
            }
        }
        self.await_closed(&high, &low, targets, started)
    }

    /// The high watermark (read_uncommitted) and the last stable offset
    /// (read_committed) of a partition come from two clients of their own,
    /// as librdkafka answers a watermark query with the client's isolation.
    fn watermark_clients(
        &self,
    ) -> Result<(BaseConsumer<QuietContext>, BaseConsumer<QuietContext>)> {
        let client = |isolation: &str| -> Result<BaseConsumer<QuietContext>> {
            let mut c = self.settings.conn.admin();
            c.set("isolation.level", isolation);
            c.create_with_context(QuietContext)
                .context("creating a watermark client")
        };
        Ok((client("read_uncommitted")?, client("read_committed")?))
    }

    /// Waits until every target partition's last stable offset reaches the
    /// high watermark it had at the start: no transaction that was open
    /// then is still open. One still open after three transaction
    /// timeouts (Kafka aborts a dead producer's after one) is hanging: the
    /// processor stops, naming the partition and offset to abort it at.
    fn await_closed(
        &self,
        high: &BaseConsumer<QuietContext>,
        low: &BaseConsumer<QuietContext>,
        targets: Vec<(String, i32)>,
        started: Instant,
    ) -> Result<()> {
        let timeout = Duration::from_secs(10);
        let limit = 3 * transaction_timeout(&self.settings.conn);
        let mut targets: Vec<(String, i32, Option<i64>)> =
            targets.into_iter().map(|(t, p)| (t, p, None)).collect();
        loop {
            let mut held = Vec::new();
            for (t, p, hw) in &mut targets {
                let target = match hw {
                    Some(h) => *h,
                    None => match high.fetch_watermarks(t, *p, timeout) {
                        Ok((_, h)) => *hw.insert(h),
                        Err(_) => {
                            held.push((&*t, *p, -1));
                            continue;
                        }
                    },
                };
                match low.fetch_watermarks(t, *p, timeout) {
                    Ok((_, lso)) if lso >= target => {}
                    Ok((_, lso)) => held.push((&*t, *p, lso)),
                    Err(_) => held.push((&*t, *p, -1)),
                }
            }
            if held.is_empty() {
                if started.elapsed() > Duration::from_secs(1) {
                    info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "No transaction left open on the partitions waited for."
                    );
                }
                return Ok(());
            }
            if started.elapsed() > limit {
                if held.iter().any(|(_, _, lso)| *lso < 0) {
                    bail!("the output partitions' offsets could not be read for {limit:?}: is the cluster reachable?");
                }
                for (t, p, lso) in &held {
                    tracing::error!(
                        topic = %t,
                        partition = *p,
                        offset = *lso,
                        "A transaction is hanging on an output partition: the broker never ended it. Stopping rather than committing its records with the next transaction. Abort it (kafka-transactions.sh --bootstrap-server ... abort --topic {t} --partition {p} --start-offset {lso}), then restart."
                    );
                }
                bail!(
                    "{} partition(s) hold a hanging transaction (first: {}[{}] at offset {}): abort each with kafka-transactions.sh --bootstrap-server <brokers> abort --topic <topic> --partition <partition> --start-offset <offset>, as logged",
                    held.len(),
                    held[0].0,
                    held[0].1,
                    held[0].2
                );
            }
            if self.stopping() {
                bail!("stopping while waiting for transactions to end");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn on_revoke(&mut self, consumer: &BaseConsumer<StreamCtx>, tpl: &TopicPartitionList) {
        self.settings.health.set_ready(false, "rebalancing");
        // Finish the open transaction before the partitions are released
        // (not on the way out after a failure: nothing more is committed).
        if !self.failed {
            if let Err(e) = self.commit(consumer) {
                self.fatal = Some(e.context("committing before a rebalance"));
            }
        }
        for el in tpl.elements() {
            let topic = self.input(el.topic());
            self.positions.remove(&(topic.clone(), el.partition()));
            self.assigned.remove(&(topic, el.partition()));
            telemetry::forget_lag(self.metrics(), el.topic(), el.partition());
        }
        let still: HashSet<i32> = self.assigned.iter().map(|(_, p)| *p).collect();
        self.parts.retain(|p, _| still.contains(p));
        info!(
            revoked = tpl.count(),
            kept = self.assigned.len(),
            "Partitions revoked."
        );
        self.gauges();
    }

    fn on_assign(&mut self, consumer: &BaseConsumer<StreamCtx>, tpl: &TopicPartitionList) {
        self.settings.health.set_ready(false, "restoring state");
        // Before restoring: wait until no transaction of a previous owner
        // still holds offsets of these partitions (KIP-447). Asking for the
        // committed offsets of a read_committed consumer does that (the
        // group coordinator answers UNSTABLE_OFFSET_COMMIT until the
        // transaction commits or aborts); restoring first could miss the
        // changelog records such a transaction then commits.
        if self.guarantee == Guarantee::ExactlyOnce {
            let started = Instant::now();
            match consumer.committed_offsets(tpl.clone(), TXN_TIMEOUT) {
                Ok(_) => {
                    let waited = started.elapsed();
                    if waited > Duration::from_secs(1) {
                        info!(
                            waited_ms = waited.as_millis() as u64,
                            "Waited for a previous owner's transaction to end before restoring."
                        );
                    }
                }
                Err(e) => {
                    if !self.stopping() {
                        self.fatal =
                            Some(anyhow!(e).context(
                                "reading the committed offsets of newly assigned partitions",
                            ));
                    }
                    return;
                }
            }
        }
        for el in tpl.elements() {
            let topic = self.input(el.topic());
            self.assigned.insert((topic, el.partition()));
        }
        let mut needed: Vec<i32> = self
            .assigned
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| !self.parts.contains_key(p))
            .collect();
        needed.sort_unstable();
        needed.dedup();
        if let Err(e) = self.restore_partitions(&needed) {
            if !self.stopping() {
                self.fatal = Some(e);
            }
            return;
        }
        info!(
            assigned = self.assigned.len(),
            "Partitions assigned and restored."
        );
        self.gauges();
        // A registry wait pauses partitions, and librdkafka keeps a
        // partition's pause across a revoke and a new assignment. While a
        // wait runs, the tick resumes whatever is assigned when it ends;
        // otherwise nothing assigned may stay paused.
        if self.paused_until.is_none() {
            let _ = consumer.resume(tpl);
        }
        self.settings.health.set_ready(true, "processing");
    }

    fn restore_partitions(&mut self, ps: &[i32]) -> Result<()> {
        if ps.is_empty() {
            return Ok(());
        }
        if self.guarantee == Guarantee::ExactlyOnce {
            // A previous owner's committed transaction can still be open on
            // the changelog after its offsets turned stable: Kafka writes the
            // commit markers of each partition separately, and the group
            // coordinator's may come first. Restoring to the last stable
            // offset then would miss the versions that commit writes, so
            // wait until each partition's transactions as of now have ended
            // (a dead owner's is aborted within its transaction timeout).
            let started = Instant::now();
            let (high, low) = self.watermark_clients()?;
            let targets = ps.iter().map(|p| (self.changelog.clone(), *p)).collect();
            self.await_closed(&high, &low, targets, started)?;
        }
        let stop = self.settings.stop.clone();
        let restored = match restore(&self.restorer, &self.changelog, ps, &|| {
            stop.load(Ordering::SeqCst)
        }) {
            Ok(r) => r,
            Err(RestoreError::Stopped) => bail!("stopped while restoring partitions {ps:?}"),
            Err(e) => return Err(e.into()),
        };
        for (p, r) in restored {
            if r.unknown > 0 {
                warn!(
                    partition = p,
                    records = r.unknown,
                    "Changelog records not understood; skipped."
                );
            }
            telemetry::restored(
                self.metrics(),
                &self.changelog,
                p,
                r.records,
                r.state.store.len(),
                r.took,
            );
            self.parts.insert(p, r.state);
        }
        Ok(())
    }
}
