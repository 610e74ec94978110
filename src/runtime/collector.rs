//! The record collector (Kafka Streams' `RecordCollector`): sends tier
//! records, dead letters and changelog records through the producer,
//! serves delivery reports, and latches the first send that failed so the
//! open transaction is aborted rather than committed without it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message as _;
use rdkafka_topic::Topic;
use tracing::warn;

use super::kafka::{await_delivered, forward_error, forward_log, wait_for_queue, Connection};
use crate::config::Guarantee;
use crate::record::{HeaderName, HeaderValue, OutRecord};

/// Delivery reports are served every this many sends (they would otherwise
/// pile up until the commit drains them).
const REPORT_EVERY: u64 = 256;

/// Counts delivery failures; in a transaction they also fail the commit.
#[derive(Debug, Default)]
pub(super) struct ProducerCtx {
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

/// The producer of one stream thread, and what its sends left behind.
pub(super) struct RecordCollector {
    /// Transactional under `exactly_once`, idempotent otherwise; shared
    /// only with a transactional call left running on a thread of its own
    /// (see `Transaction::send_offsets`).
    producer: Arc<BaseProducer<ProducerCtx>>,
    /// The handles of the topics sent to so far (the tier topics, the
    /// dead-letter topic, the changelog), each looked up once.
    topics: Vec<Topic<ProducerCtx>>,
    /// Records sent, for the delivery-report cadence.
    sends: u64,
    /// The first send refused since the last commit or abort: the open
    /// transaction must be aborted, and nothing more is sent until then.
    broken: Option<String>,
}

impl std::fmt::Debug for RecordCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCollector")
            .field("sends", &self.sends)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl RecordCollector {
    /// A collector over a new producer with the client (and transactional)
    /// id `client_id`.
    pub(super) fn new(conn: &Connection, client_id: &str, guarantee: Guarantee) -> Result<Self> {
        let producer = conn
            .producer(client_id, guarantee)
            .create_with_context(ProducerCtx::default())
            .context("creating the producer")?;
        Ok(RecordCollector {
            producer: Arc::new(producer),
            topics: Vec::new(),
            sends: 0,
            broken: None,
        })
    }

    /// The producer, for the transactional calls.
    pub(super) fn producer(&self) -> &BaseProducer<ProducerCtx> {
        &self.producer
    }

    /// The producer, for a call that may outlive this collector.
    pub(super) fn shared_producer(&self) -> Arc<BaseProducer<ProducerCtx>> {
        Arc::clone(&self.producer)
    }

    /// Sends an engine output (tier record or dead letter) with the input
    /// record's timestamp.
    pub(super) fn send(&mut self, rec: &OutRecord, ts: Option<i64>) {
        self.produce(
            &rec.topic,
            None,
            rec.key.as_deref(),
            rec.value.as_deref(),
            ts,
            &rec.headers,
        );
    }

    /// Sends a changelog record to partition `p` of `topic`.
    pub(super) fn send_state(&mut self, topic: &str, p: i32, key: &[u8], value: &[u8]) {
        self.produce(topic, Some(p), Some(key), Some(value), None, &[]);
    }

    /// Sends a changelog tombstone (a released held event) to partition `p`.
    pub(super) fn send_tombstone(&mut self, topic: &str, p: i32, key: &[u8]) {
        self.produce(topic, Some(p), Some(key), None, None, &[]);
    }

    /// Queues a record through the topic's handle, waiting while
    /// librdkafka's queue is full ([`wait_for_queue`], as
    /// [`super::kafka::send_waiting`] does).
    fn produce(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        ts: Option<i64>,
        headers: &[(HeaderName, HeaderValue)],
    ) {
        if self.broken.is_some() {
            return;
        }
        let handle = match self.topics.iter().position(|t| t.name() == topic) {
            Some(i) => &self.topics[i],
            None => match Topic::new(&self.producer, topic) {
                Some(t) => {
                    self.topics.push(t);
                    &self.topics[self.topics.len() - 1]
                }
                None => {
                    self.broken = Some(format!("producing to {topic}: no topic handle"));
                    return;
                }
            },
        };
        loop {
            let hs = headers.iter().map(|(k, v)| (&k[..], &v[..]));
            match handle.produce(partition, key, value, ts, hs) {
                Ok(()) => break,
                Err(RDKafkaErrorCode::QueueFull) => wait_for_queue(&self.producer),
                Err(code) => {
                    let e = KafkaError::MessageProduction(code);
                    self.broken = Some(format!("producing to {topic}: {e}"));
                    return;
                }
            }
        }
        self.sends = self.sends.wrapping_add(1);
        if self.sends.is_multiple_of(REPORT_EVERY) {
            self.producer.poll(Duration::ZERO);
        }
    }

    /// Why the open transaction must be aborted, if a send was refused;
    /// clears the latch.
    pub(super) fn take_broken(&mut self) -> Option<String> {
        self.broken.take()
    }

    /// Delivery failures reported since the last call.
    pub(super) fn take_failed_deliveries(&self) -> u64 {
        self.producer.context().failed.swap(0, Ordering::Relaxed)
    }

    /// Waits until every record sent is delivered (or failed), serving
    /// the reports of failures ([`await_delivered`]); warns every 10 s
    /// meanwhile.
    pub(super) fn drain(&self) {
        while !await_delivered(
            &self.producer,
            Some(Instant::now() + Duration::from_secs(10)),
        ) {
            warn!(
                in_flight = self.producer.in_flight_count(),
                "Records not delivered yet; waiting (is the broker reachable?)."
            );
        }
    }

    /// Drops what is queued or in flight and serves the delivery reports
    /// that leaves, until `until` at the latest (an abort waits for every
    /// outstanding record to be reported, and nothing else polls this
    /// producer).
    pub(super) fn purge(&self, until: Instant) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        await_delivered(&self.producer, Some(until));
    }

    /// Serves the delivery reports waiting now.
    pub(super) fn serve_reports(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Clears the delivery-failure count and the send latch: what they
    /// refer to was aborted.
    pub(super) fn reset(&mut self) {
        self.producer.context().failed.store(0, Ordering::Relaxed);
        self.broken = None;
    }
}
