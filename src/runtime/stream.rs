//! A stream thread (Kafka Streams' `StreamThread`): an OS thread that owns
//! a group consumer (one member of the group) and polls it, hands every
//! record to the engine, and serves rebalances. An instance runs
//! `processing.stream_threads` of them ([`super::run`]); each has its own
//! partitions, their state, its transactional producer and its commits,
//! and shares nothing with its siblings but the metrics, `/readyz` and the
//! shutdown flag.
//!
//! Per record: already processed? → engine → send (tier records, dead
//! letter, changelog: [`super::collector`]) → advance the partition's
//! position ([`super::positions`]). Every `commit_interval_ms`: commit
//! ([`super::transaction`]: resume markers → offsets → commit, in one
//! transaction). On revoke the open transaction commits before the
//! partitions are released; on assign each new partition's state is
//! restored from the changelog ([`super::state`]) before its first record
//! is processed.
//!
//! Every librdkafka call that blocks — polling, restoring, transactional
//! commits — happens here, never on a worker of the async runtime; registry
//! calls are `async` and awaited with `Handle::block_on` from this thread.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::config::StreamConfig;
use super::kafka::{forward_error, forward_log, QuietContext};
use super::nats::NatsInput;
use super::positions::{self, Positions};
use super::state::{encode_value, resume_key, RestoreError, StateStores};
use super::transaction::{Ended, Transaction, TXN_TIMEOUT};
use super::watermarks::Watermarks;
use super::{Fatal, FatalKind, Progress};
use crate::config::{GapPolicy, Guarantee};
use crate::pipeline::{Engine, EngineError};
use crate::record::{Outcome, RawHeaders, RawRecord, Source};
use crate::reorder::{HeldChange, Reorder, Step};
use crate::schema::SchemaLookup;
use crate::telemetry::{self, At, Health, Metrics, RateLimit, RecordEvents, TopicCounters};

/// What the stream thread runs and the handles it reports through.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Resolved once from the topology and the flags.
    pub(crate) config: Arc<StreamConfig>,
    /// Where the counters go.
    pub(crate) metrics: Metrics,
    /// `/readyz`.
    pub(crate) health: Arc<Health>,
    /// Committed input positions, for callers that wait for them.
    pub(crate) progress: Arc<Progress>,
    /// Turns true on shutdown.
    pub(crate) stop: Arc<AtomicBool>,
    /// The async runtime (the NATS input's reader runs there).
    pub(crate) rt: tokio::runtime::Handle,
    /// How to reach NATS, for a topology with a NATS input.
    pub(crate) nats: super::nats::NatsConnection,
}

impl Settings {
    /// This thread's readiness, for `/readyz`.
    fn ready(&self, ready: bool, why: &'static str) {
        self.health
            .set_ready(usize::from(self.config.thread), ready, why);
    }
}

/// First wait before asking an unavailable registry again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries of a registry that is unavailable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often JSON subjects are looked up again, so a new schema version
/// takes effect without a restart.
const SUBJECT_REFRESH: Duration = Duration::from_secs(60);
/// The clock is read every this many records (and whenever the input is
/// idle): reading it for every record costs more than the checks are
/// worth.
const TICK_EVERY: u32 = 64;
/// The engine's time is sampled on one record in this many.
const TIME_EVERY: u64 = 16;

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
        let mut guard = self.lock();
        let Some(task) = guard.as_mut() else { return };
        if task.awaiting_assignment && stats.cgrp.as_ref().is_some_and(settled) {
            task.awaiting_assignment = false;
            task.settings.ready(true, "processing");
        }
        for (topic, t) in &stats.topics {
            if !self.inputs.contains(topic) {
                continue;
            }
            for (p, s) in &t.partitions {
                if *p < 0 {
                    continue;
                }
                let Some(pos) = task.positions.next(topic, *p) else {
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

/// The wall clock in milliseconds since the epoch (the reorder window's
/// backstop; 0 if the clock is before the epoch).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether the group membership of a consumer that got no rebalance
/// callback has settled. The consumer group protocol of KIP-848 calls none
/// for an empty assignment, so a thread without partitions (more threads
/// than partitions) or left with only those it kept would never turn ready
/// otherwise. Settled: librdkafka's join state is steady, or the member is
/// still in its initial join state with nothing assigned although its
/// coordinator connection has been up for a few heartbeats (librdkafka
/// gives no other sign that the group answered with an empty assignment;
/// the member epoch it keeps is not in its API).
fn settled(g: &rdkafka::statistics::ConsumerGroup) -> bool {
    const UP_FOR_MS: i64 = 3_000;
    g.join_state == "steady"
        || (g.join_state == "init"
            && g.state == "up"
            && g.assignment_size == 0
            && g.stateage >= UP_FOR_MS)
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

/// When the periodic work of the poll loop is due.
#[derive(Debug)]
struct Timers {
    /// The end of the last commit (the interval counts from there, so a
    /// slow commit does not leave the next transaction with one record).
    last_commit: Instant,
    /// The last time JSON subjects' misses were forgotten.
    last_refresh: Instant,
    /// The last time the state gauges were set.
    last_gauges: Instant,
    /// Records handled since the clock was last read.
    since_tick: u32,
    /// Records handled, for sampling the engine's time.
    handled: u64,
}

/// A wait for the schema registry.
#[derive(Debug)]
struct RegistryWait {
    /// While the registry is away: every assigned partition is paused
    /// until then, so the poll loop serves rebalances and heartbeats
    /// without fetching.
    paused_until: Option<Instant>,
    /// The next wait (100 ms, doubling to 5 s; reset by a record
    /// processed).
    backoff: Duration,
}

/// The state the stream thread works on; behind the context's mutex so the
/// rebalance callbacks (which run inside `poll`, on this same thread) can
/// reach it.
struct Task {
    /// Configuration and handles.
    settings: Arc<Settings>,
    /// The pure pipeline, with its schema caches.
    engine: Engine,
    /// Where the engine's schema lookups go.
    registry: Box<dyn SchemaLookup + Send>,
    /// The producer and its open transaction.
    txn: Transaction,
    /// The assigned partitions' version stores.
    stores: StateStores,
    /// The assigned input partitions.
    assigned: HashSet<(Arc<str>, i32)>,
    /// Where each input partition is, and where the open transaction
    /// started reading it.
    positions: Positions,
    /// Per-record events, counted until the transaction commits.
    events: RecordEvents,
    /// Records read per input topic.
    counters: TopicCounters,
    /// When periodic work is due.
    timers: Timers,
    /// A registry wait in progress, and the next back-off.
    registry_wait: RegistryWait,
    /// Joining the group or rebalancing: no assignment has ended it yet.
    awaiting_assignment: bool,
    /// The state gauges as this thread last reported them (the instance's
    /// are the sums over its threads).
    reported: (i64, i64),
    /// Set in a callback that cannot return an error; the poll loop
    /// returns it.
    fatal: Option<anyhow::Error>,
    /// What the record being handled caused (kept for its capacity).
    steps: Vec<Step>,
    /// Held events as this thread last reported them.
    reported_held: i64,
    /// The thread is ending after a fatal error: leaving the group must not
    /// commit what the failed state holds.
    failed: bool,
    /// The NATS input, for a topology with one (it reads while this
    /// thread holds the lease).
    nats: Option<NatsInput>,
}

/// One input record, from Kafka or NATS, as the engine takes it.
struct Input<'a> {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: RawHeaders<'a>,
    timestamp: Option<i64>,
}

/// What became of an input record.
enum Handled {
    /// Processed (or known as processed): its position moved.
    Done,
    /// The registry is away: the record must be read again after the wait
    /// (the open transaction has committed).
    Wait,
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
/// Start-up problems (topics, clients) as they are; errors of the running
/// thread as a [`Fatal`] of their kind.
pub(crate) fn run(settings: Settings, registry: Box<dyn SchemaLookup + Send>) -> Result<()> {
    let settings = Arc::new(settings);
    let s = &settings;
    let c = &s.config;
    if c.guarantee == Guarantee::ExactlyOnce {
        s.ready(false, "initialising transactions");
    }
    // A failure here is a start-up problem, whatever its kind.
    let txn = Transaction::start(c.clone(), s.stop.clone()).map_err(|e| anyhow!("{e:#}"))?;
    let restorer: BaseConsumer<QuietContext> = c
        .conn
        .restorer(&c.client_id)
        .create_with_context(QuietContext)
        .context("creating the restore consumer")?;

    let nats_config = c.topology.spec.input.nats_jetstream.as_ref();
    let lease = c.topology.lease_topic();
    let nats = match (nats_config, &lease) {
        (Some(n), Some(lease)) => Some(NatsInput::new(
            &s.rt,
            &s.nats,
            n,
            &c.topology.spec.application_id,
            lease,
            &s.metrics,
        )),
        _ => None,
    };
    let task = Task {
        settings: settings.clone(),
        engine: Engine::new(c.topology.engine.clone(), c.hasher.clone()),
        registry,
        txn,
        stores: StateStores::new(restorer),
        assigned: HashSet::new(),
        positions: Positions::new(nats.as_ref().map(|n| positions::Nats {
            subject: n.subject.clone(),
            lease: n.lease.clone(),
        })),
        events: RecordEvents::default(),
        counters: TopicCounters::default(),
        timers: Timers {
            last_commit: Instant::now(),
            last_refresh: Instant::now(),
            last_gauges: Instant::now(),
            since_tick: 0,
            handled: 0,
        },
        registry_wait: RegistryWait {
            paused_until: None,
            backoff: MIN_BACKOFF,
        },
        awaiting_assignment: true,
        reported: (0, 0),
        fatal: None,
        steps: Vec::new(),
        reported_held: 0,
        failed: false,
        nats,
    };
    let ctx = StreamCtx {
        task: Mutex::new(Some(task)),
        metrics: s.metrics.clone(),
        inputs: c.topology.spec.input.topics.iter().cloned().collect(),
    };
    let consumer: BaseConsumer<StreamCtx> = c
        .conn
        .consumer(&c.group, &c.instance_id)
        .create_with_context(ctx)
        .context("creating the consumer")?;
    let mut topics: Vec<&str> = c.inputs.iter().map(|t| &**t).collect();
    topics.extend(lease.as_deref());
    consumer
        .subscribe(&topics)
        .context("subscribing to the input topics")?;
    s.ready(false, "joining the consumer group");
    info!(group = %c.group, client = %c.client_id, guarantee = ?c.guarantee, "Stream thread started.");

    // From here on, an error ends a running processor: it is fatal (an
    // exit code per kind), unlike the start-up problems above.
    let result = poll_loop(s, &consumer).map_err(|e| anyhow::Error::new(Fatal::ending(&e)));
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
                task.txn.abort_quietly();
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
    s.ready(false, "stopped");
    // Drop the task (producer, restorer) before the consumer closes; what
    // it added to the state gauges goes with it.
    let task = consumer.context().lock().take();
    if let Some(mut t) = task {
        telemetry::state_size(&s.metrics, &mut t.reported, 0, 0);
        telemetry::held_now(
            &s.metrics,
            &mut t.reported_held,
            s.config.thread,
            0,
            Duration::ZERO,
        );
        drop(t);
    }
    drop(consumer);
    result?;
    finished.map_err(|e| anyhow::Error::new(Fatal::ending(&e)))?;
    if let Some(e) = late {
        return Err(Fatal::ending(&e).into());
    }
    info!("Stream thread stopped cleanly.");
    Ok(())
}

fn poll_loop(s: &Settings, consumer: &BaseConsumer<StreamCtx>) -> Result<()> {
    let mut consumer_errors = RateLimit::new("consumer error");
    // While this thread reads NATS, the Kafka poll is short (or does not
    // wait at all after NATS messages), so NATS messages wait no longer.
    // Whether this thread reads NATS, as of the end of the last turn (a
    // rebalance during the poll may change it: the next turn sees it).
    let mut nats_busy = false;
    let mut reading_nats = false;
    while !s.stop.load(Ordering::SeqCst) {
        let timeout = match (reading_nats, nats_busy) {
            (false, _) => Duration::from_millis(100),
            (true, false) => Duration::from_millis(5),
            (true, true) => Duration::ZERO,
        };
        let polled = consumer.poll(timeout);
        let mut guard = consumer.context().lock();
        let Some(task) = guard.as_mut() else {
            bail!("the stream task is gone");
        };
        if let Some(e) = task.fatal.take() {
            return Err(e);
        }
        nats_busy = task.drain_nats(consumer)?;
        let idle = !matches!(polled, Some(Ok(_))) && !nats_busy;
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
        reading_nats = task.nats.as_ref().is_some_and(NatsInput::active);
    }
    Ok(())
}

impl Task {
    fn config(&self) -> &StreamConfig {
        &self.settings.config
    }

    fn metrics(&self) -> &Metrics {
        &self.settings.metrics
    }

    fn stopping(&self) -> bool {
        self.settings.stop.load(Ordering::SeqCst)
    }

    fn handle(
        &mut self,
        consumer: &BaseConsumer<StreamCtx>,
        m: &BorrowedMessage<'_>,
    ) -> Result<()> {
        let topic = self.config().input(m.topic());
        if self.nats.as_ref().is_some_and(|n| n.lease == topic) {
            // The lease topic is never written; a record there is no input.
            return Ok(());
        }
        let (p, offset) = (m.partition(), m.offset());
        // Read only for a record that keeps them (a dead letter, a held
        // event): librdkafka parses them into a list of its own.
        let headers = || -> Vec<(String, Vec<u8>)> {
            m.headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let input = Input {
            topic: topic.clone(),
            partition: p,
            offset,
            key: m.key(),
            value: m.payload(),
            headers: RawHeaders::Deferred(&headers),
            timestamp: m.timestamp().to_millis(),
        };
        match self.process(consumer, input)? {
            Handled::Done => {}
            Handled::Wait => self.wait_for_registry(consumer, Some((&topic, p, offset))),
        }
        Ok(())
    }

    /// Processes what the NATS input has (at most a batch, so rebalances
    /// and commits are served between batches); `true` when it processed
    /// something.
    fn drain_nats(&mut self, consumer: &BaseConsumer<StreamCtx>) -> Result<bool> {
        const BATCH: usize = 512;
        if self.registry_wait.paused_until.is_some() {
            return Ok(false);
        }
        let mut done = 0;
        let mut pending = None;
        while done < BATCH {
            let Some(d) = self.nats.as_mut().and_then(NatsInput::next) else {
                break;
            };
            done += 1;
            pending = Some(d.pending);
            let subject = self.nats.as_ref().map(|n| n.subject.clone());
            let Some(subject) = subject else { break };
            let input = Input {
                topic: subject,
                partition: 0,
                offset: d.seq,
                key: None,
                value: Some(&d.message.message.payload),
                headers: (&d.headers).into(),
                timestamp: Some(d.timestamp),
            };
            let handled = self.process(consumer, input)?;
            let Some(nats) = self.nats.as_mut() else {
                break;
            };
            match handled {
                Handled::Done => nats.processed(d),
                Handled::Wait => {
                    nats.put_back(d);
                    self.wait_for_registry(consumer, None);
                    break;
                }
            }
            self.tick(consumer, false)?;
        }
        if let (Some(pending), Some(n)) = (pending, &self.nats) {
            telemetry::consumer_lag(self.metrics(), &n.subject, 0, pending as i64);
        }
        Ok(done > 0)
    }

    /// Hands one input record to the engine and emits what it decided;
    /// [`Handled::Wait`] when the registry is away (nothing of the record
    /// was processed, the open transaction committed).
    fn process(&mut self, consumer: &BaseConsumer<StreamCtx>, input: Input<'_>) -> Result<Handled> {
        let Input {
            topic,
            partition: p,
            offset,
            key,
            value,
            headers,
            timestamp: ts,
        } = input;
        let at = At {
            topic: &topic,
            partition: p,
            offset,
        };
        self.counters.consumed(&self.settings.metrics, &topic);
        if !self.stores.has(p) {
            // Assignments restore before processing; this is a safety net.
            self.restore_partitions(&[p])?;
        }
        if self.stores.processed(&topic, p, offset) {
            self.events.replayed(at);
            self.positions.advance(&topic, p, offset);
            return Ok(Handled::Done);
        }
        let source = Source {
            topic: topic.clone(),
            partition: p,
            offset,
        };
        let raw = RawRecord {
            source: &source,
            key,
            value,
            headers,
        };
        self.timers.handled = self.timers.handled.wrapping_add(1);
        let started = self
            .timers
            .handled
            .is_multiple_of(TIME_EVERY)
            .then(Instant::now);
        let mut steps = std::mem::take(&mut self.steps);
        let (mut store, held) = self.stores.part(p).context("a partition not restored")?;
        // The wall clock only where something is or may be held.
        let wall =
            (self.engine.config().on_gap == GapPolicy::Hold || !held.is_empty()).then(wall_ms);
        let result = Reorder {
            engine: &mut self.engine,
            store: &mut store,
            held,
            registry: self.registry.as_mut(),
        }
        .process(&raw, ts, wall, &mut steps);
        if let Some(t) = started {
            telemetry::processed(&self.settings.metrics, t.elapsed());
        }
        for refusal in self.engine.take_refusals() {
            self.events
                .derived_schema_refused(&self.settings.metrics, &refusal);
        }
        let processed = !steps.is_empty();
        match result {
            Ok(()) => self.registry_wait.backoff = MIN_BACKOFF,
            Err(EngineError::Transient(why)) if !processed => {
                self.steps = steps;
                warn!(
                    topic = %topic,
                    partition = p,
                    offset,
                    error = %why,
                    retry_in_ms = self.registry_wait.backoff.as_millis() as u64,
                    "Schema registry unavailable; waiting, skipping nothing."
                );
                // Nothing stays open while waiting.
                self.commit(consumer)?;
                return Ok(Handled::Wait);
            }
            Err(EngineError::Transient(why)) => {
                // The record was processed; a held event it would have
                // released stays held until its window expires.
                warn!(
                    topic = %topic,
                    partition = p,
                    offset,
                    error = %why,
                    "Schema registry unavailable while releasing a held event; it stays held."
                );
            }
            Err(EngineError::Fatal(why)) => {
                return Err(Fatal::new(
                    FatalKind::RegistryRejected,
                    format!("processing {topic}[{p}]@{offset}: {why}"),
                )
                .into());
            }
        }
        // Output records keep the input record's timestamp, as in Kafka
        // Streams: event time flows through, and end-to-end latency is
        // measurable downstream.
        for step in steps.drain(..) {
            self.emit(step);
        }
        self.steps = steps;
        self.positions.advance(&topic, p, offset);
        if let Some(why) = self.txn.collector().take_broken() {
            self.abort(consumer, &why, false)?;
        }
        Ok(Handled::Done)
    }

    /// Emits, as gaps, the held events whose reorder window has expired
    /// (on a partition that falls idle, the wall-clock time since its last
    /// record counts as stream time).
    fn expire_held(&mut self) -> Result<()> {
        let wall = wall_ms();
        let mut steps = std::mem::take(&mut self.steps);
        for p in self.stores.holding() {
            let Some((mut store, held)) = self.stores.part(p) else {
                continue;
            };
            let result = Reorder {
                engine: &mut self.engine,
                store: &mut store,
                held,
                registry: self.registry.as_mut(),
            }
            .expire(Some(wall), &mut steps);
            for step in steps.drain(..) {
                self.emit(step);
            }
            match result {
                Ok(()) => {}
                Err(EngineError::Transient(why)) => {
                    warn!(partition = p, error = %why, "Schema registry unavailable while releasing held events; they stay held.");
                }
                Err(EngineError::Fatal(why)) => {
                    self.steps = steps;
                    return Err(Fatal::new(
                        FatalKind::RegistryRejected,
                        format!("releasing held events of partition {p}: {why}"),
                    )
                    .into());
                }
            }
        }
        self.steps = steps;
        Ok(())
    }

    /// Sends what the engine decided, with the state that goes with it,
    /// and reports it.
    fn emit(&mut self, step: Step) {
        let Step {
            source,
            timestamp: ts,
            outcome,
            held,
        } = step;
        let at = At {
            topic: &source.topic,
            partition: source.partition,
            offset: source.offset,
        };
        let changelog = &self.settings.config.changelog;
        let collector = self.txn.collector();
        match &held {
            HeldChange::None => {}
            HeldChange::Held { key, value } => {
                collector.send_state(changelog, at.partition, key, value);
            }
            HeldChange::Released { key, how } => {
                collector.send_tombstone(changelog, at.partition, key);
                self.events.released(at, *how);
            }
        }
        match outcome {
            Outcome::Routed(r) => {
                for rec in &r.records {
                    collector.send(rec, ts);
                }
                // The version, in the same transaction as the outputs. An
                // unordered event has none: like a dead letter, its resume
                // marker keeps a replay from sending it twice.
                match &r.state {
                    Some(state) => collector.send_state(
                        changelog,
                        at.partition,
                        &state.key,
                        &encode_value(state.version),
                    ),
                    None => collector.send_state(
                        changelog,
                        at.partition,
                        &resume_key(at.topic),
                        &encode_value(at.offset + 1),
                    ),
                }
                self.events.routed(at, &r);
            }
            Outcome::Skipped(v) => self.events.skipped(at, v),
            // Its changelog record (above) keeps a replay from holding it
            // twice.
            Outcome::Held { .. } => self.events.held(at),
            Outcome::DeadLettered { record, rejection } => {
                collector.send(&record, ts);
                // Dead letters are not versioned: the resume marker keeps a
                // replay from sending one twice. A released event's marker
                // would be behind the input's: it is not written.
                if !matches!(held, HeldChange::Released { .. }) {
                    collector.send_state(
                        changelog,
                        at.partition,
                        &resume_key(at.topic),
                        &encode_value(at.offset + 1),
                    );
                }
                self.events.dead_lettered(at, &rejection);
            }
        }
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
        rewind: Option<(&str, i32, i64)>,
    ) {
        match consumer.assignment() {
            Ok(all) => {
                if let Err(e) = consumer.pause(&all) {
                    warn!(error = %e, "Pausing the input failed.");
                }
            }
            Err(e) => warn!(error = %e, "Reading the assignment failed."),
        }
        if let Some((topic, p, offset)) = rewind {
            if let Err(e) = consumer.seek(topic, p, Offset::Offset(offset), Duration::from_secs(10))
            {
                warn!(topic, partition = p, error = %e, "Rewind failed.");
            }
        }
        let wait = &mut self.registry_wait;
        wait.paused_until = Some(Instant::now() + wait.backoff);
        wait.backoff = (wait.backoff * 2).min(MAX_BACKOFF);
    }

    /// Ends a registry wait: every assigned partition fetches again.
    fn resume_input(&mut self, consumer: &BaseConsumer<StreamCtx>) {
        self.registry_wait.paused_until = None;
        self.stores.touch(wall_ms());
        if let Ok(all) = consumer.assignment() {
            if let Err(e) = consumer.resume(&all) {
                warn!(error = %e, "Resuming the input failed.");
            }
        }
    }

    /// Periodic work: the commit, the end of a registry wait, the subject
    /// refresh, the gauges.
    fn tick(&mut self, consumer: &BaseConsumer<StreamCtx>, idle: bool) -> Result<()> {
        let t = &mut self.timers;
        t.since_tick += 1;
        if !idle && t.since_tick < TICK_EVERY {
            return Ok(());
        }
        t.since_tick = 0;
        // No window ends while the input waits for the registry: the
        // missing versions may be just behind the record it waits on.
        if self.stores.holding_any() && self.registry_wait.paused_until.is_none() {
            self.expire_held()?;
        }
        if self.timers.last_commit.elapsed() >= self.settings.config.commit_interval {
            self.commit(consumer)?;
        }
        if self
            .registry_wait
            .paused_until
            .is_some_and(|t| Instant::now() >= t)
        {
            self.resume_input(consumer);
        }
        if self.timers.last_refresh.elapsed() >= SUBJECT_REFRESH {
            self.engine.forget_misses();
            self.timers.last_refresh = Instant::now();
        }
        if self.timers.last_gauges.elapsed() >= Duration::from_secs(1) {
            self.gauges();
            self.events.tick();
        }
        Ok(())
    }

    fn gauges(&mut self) {
        self.publish_gauges();
        self.timers.last_gauges = Instant::now();
    }

    /// The state-size gauges and the registry lookups counted since the
    /// last call.
    fn publish_gauges(&mut self) {
        let (entities, assigned) = (self.stores.entities(), self.assigned.len());
        telemetry::state_size(
            &self.settings.metrics,
            &mut self.reported,
            entities,
            assigned,
        );
        let stats = self.engine.take_cache_stats();
        telemetry::registry_lookups(self.metrics(), stats.hits, stats.misses);
        let (held, oldest) = self.stores.held();
        let age = oldest.map_or(0, |t| (wall_ms() - t).max(0));
        telemetry::held_now(
            &self.settings.metrics,
            &mut self.reported_held,
            self.settings.config.thread,
            held,
            Duration::from_millis(age as u64),
        );
    }

    /// Commits the open transaction (see [`Transaction::commit`]); the
    /// counts of what it held become metrics.
    fn commit(&mut self, consumer: &BaseConsumer<StreamCtx>) -> Result<()> {
        let result = self.commit_open(consumer);
        self.timers.last_commit = Instant::now();
        result
    }

    fn commit_open(&mut self, consumer: &BaseConsumer<StreamCtx>) -> Result<()> {
        let moved = self.positions.moved();
        if moved.is_empty() && self.stores.unchanged() && self.events.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let metrics = &self.settings.metrics;
        let (stores, positions, events) = (&mut self.stores, &mut self.positions, &mut self.events);
        let ended = self.txn.commit(consumer, &moved, |why| {
            stores.roll_back();
            positions.rewind(consumer);
            events.aborted(metrics, started.elapsed(), why);
        })?;
        if let Ended::Committed = ended {
            self.stores.committed();
            self.stores
                .resumed(moved.iter().map(|(t, p, next)| (t.clone(), *p, *next)));
            if let Some(nats) = &mut self.nats {
                nats.committed();
            }
            let inputs = self.positions.committed(&moved);
            for (t, p, next) in moved.iter() {
                self.settings.progress.set(t, *p, *next);
            }
            self.events.inputs(inputs);
            self.events.committed(metrics, started.elapsed());
            // The gauges and the registry's lookup counts as of this commit
            // (besides every second): once outputs are visible, so are
            // the lookups and the entities behind them.
            self.publish_gauges();
        }
        self.reread_nats();
        Ok(())
    }

    /// After an abort: the NATS input reads again from where the aborted
    /// transaction started.
    fn reread_nats(&mut self) {
        if let Some(from) = self.positions.take_nats_rewind() {
            if let Some(nats) = self.nats.as_mut().filter(|n| n.active()) {
                nats.activate(from);
            }
        }
    }

    /// Aborts the open transaction: the versions it changed are put back,
    /// every partition it read is rewound to where it started.
    fn abort(
        &mut self,
        consumer: &BaseConsumer<StreamCtx>,
        why: &str,
        broker_away: bool,
    ) -> Result<()> {
        let started = Instant::now();
        let metrics = &self.settings.metrics;
        let (stores, positions, events) = (&mut self.stores, &mut self.positions, &mut self.events);
        let r = self.txn.abort(why, broker_away, |why| {
            stores.roll_back();
            positions.rewind(consumer);
            events.aborted(metrics, started.elapsed(), why);
        });
        self.reread_nats();
        r?;
        Ok(())
    }

    fn on_revoke(&mut self, consumer: &BaseConsumer<StreamCtx>, tpl: &TopicPartitionList) {
        self.settings.ready(false, "rebalancing");
        self.awaiting_assignment = true;
        // Finish the open transaction before the partitions are released
        // (not on the way out after a failure: nothing more is committed).
        if !self.failed {
            if let Err(e) = self.commit(consumer) {
                self.fatal = Some(e.context("committing before a rebalance"));
            }
        }
        for el in tpl.elements() {
            let topic = self.config().input(el.topic());
            self.positions.forget(&topic, el.partition());
            self.assigned.remove(&(topic.clone(), el.partition()));
            telemetry::forget_lag(self.metrics(), el.topic(), el.partition());
            if let Some(nats) = self.nats.as_mut().filter(|n| n.lease == topic) {
                // The open transaction has ended above: nothing read from
                // NATS is uncommitted.
                nats.deactivate();
                let subject = nats.subject.clone();
                self.positions.forget(&subject, 0);
                telemetry::forget_lag(self.metrics(), &subject, 0);
            }
        }
        let still: HashSet<i32> = self.assigned.iter().map(|(_, p)| *p).collect();
        self.stores.retain(&still);
        info!(
            revoked = tpl.count(),
            kept = self.assigned.len(),
            "Partitions revoked."
        );
        self.gauges();
    }

    fn on_assign(&mut self, consumer: &BaseConsumer<StreamCtx>, tpl: &TopicPartitionList) {
        self.settings.ready(false, "restoring state");
        self.awaiting_assignment = false;
        // Before restoring: wait until no transaction of a previous owner
        // still holds offsets of these partitions (KIP-447). Asking for the
        // committed offsets of a read_committed consumer does that (the
        // group coordinator answers UNSTABLE_OFFSET_COMMIT until the
        // transaction commits or aborts); restoring first could miss the
        // changelog records such a transaction then commits.
        if self.config().guarantee == Guarantee::ExactlyOnce {
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
            let topic = self.config().input(el.topic());
            self.assigned.insert((topic, el.partition()));
        }
        let mut needed: Vec<i32> = self
            .assigned
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| !self.stores.has(*p))
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
        let lease_assigned = self
            .nats
            .as_ref()
            .is_some_and(|n| tpl.elements().iter().any(|el| *n.lease == *el.topic()));
        if lease_assigned {
            // The lease's changelog partition is 0 and was restored above:
            // read on after the last committed stream sequence.
            if let Some(nats) = self.nats.as_mut() {
                let from = self.stores.resume(&nats.subject, 0).unwrap_or(1);
                nats.activate(from);
            }
        }
        self.gauges();
        // A registry wait pauses partitions, and librdkafka keeps a
        // partition's pause across a revoke and a new assignment. While a
        // wait runs, the tick resumes whatever is assigned when it ends;
        // otherwise nothing assigned may stay paused.
        if self.registry_wait.paused_until.is_none() {
            let _ = consumer.resume(tpl);
        }
        self.settings.ready(true, "processing");
    }

    fn restore_partitions(&mut self, ps: &[i32]) -> Result<()> {
        if ps.is_empty() {
            return Ok(());
        }
        let c = self.settings.config.clone();
        if c.guarantee == Guarantee::ExactlyOnce {
            // A previous owner's committed transaction can still be open on
            // the changelog after its offsets turned stable: Kafka writes the
            // commit markers of each partition separately, and the group
            // coordinator's may come first. Restoring to the last stable
            // offset then would miss the versions that commit writes, so
            // wait until each partition's transactions as of now have ended
            // (a dead owner's is aborted within its transaction timeout).
            let started = Instant::now();
            let targets = ps.iter().map(|p| (c.changelog.clone(), *p)).collect();
            Watermarks::new(&c.conn, c.transaction_timeout)?.await_partitions(
                targets,
                started,
                &self.settings.stop,
            )?;
        }
        let stop = self.settings.stop.clone();
        match self
            .stores
            .restore(&c.changelog, ps, &self.settings.metrics, &|| {
                stop.load(Ordering::SeqCst)
            }) {
            Ok(()) => Ok(()),
            Err(RestoreError::Stopped) => bail!("stopped while restoring partitions {ps:?}"),
            Err(e) => Err(Fatal::new(
                FatalKind::RestoreFailed,
                format!("restoring partitions {ps:?} from the changelog"),
            )
            .caused_by(e)
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::settled;
    use rdkafka::statistics::ConsumerGroup;

    fn group(state: &str, join_state: &str, assignment_size: i32, stateage: i64) -> ConsumerGroup {
        ConsumerGroup {
            state: state.to_owned(),
            join_state: join_state.to_owned(),
            assignment_size,
            stateage,
            ..ConsumerGroup::default()
        }
    }

    #[test]
    fn a_member_without_partitions_settles_once_its_coordinator_was_up_a_while() {
        assert!(settled(&group("up", "steady", 2, 10)));
        assert!(settled(&group("up", "steady", 0, 10)));
        assert!(settled(&group("up", "init", 0, 5_000)));
        // Just connected: the group may not have answered yet.
        assert!(!settled(&group("up", "init", 0, 500)));
        assert!(!settled(&group("query-coord", "init", 0, 60_000)));
        // Classic protocol mid-rebalance.
        assert!(!settled(&group("up", "wait-join", 0, 60_000)));
        assert!(!settled(&group("up", "wait-assign-call", 0, 60_000)));
    }
}
