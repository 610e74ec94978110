//! Client settings and topic checks: the three librdkafka clients of a
//! stream thread (the group consumer, the transactional producer and the
//! restore consumer) share the connection settings the operator passes
//! (`-X key=value`: TLS, SASL, timeouts), over defaults that make the
//! guarantees hold.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

use crate::config::Guarantee;

/// librdkafka's log lines, as `tracing` events. Connection trouble is
/// logged by librdkafka as an error although it retries on its own: it is a
/// warning here (ERROR is kept for what an operator must act on).
pub fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// A client-level error reported by librdkafka (it keeps retrying);
/// end-of-partition events, which readers ask for, are not errors.
pub fn forward_error(error: &KafkaError, reason: &str) {
    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
        tracing::warn!(target: "librdkafka", error = %error, reason, "Kafka client error.");
    }
}

/// A record the producer refused, with why.
pub type Refused<'a, K, P, D> = (KafkaError, BaseRecord<'a, K, P, D>);

/// Sends a record, waiting while librdkafka's queue is full (serving
/// delivery reports meanwhile); any other refusal is returned with the
/// record.
///
/// # Errors
/// The producer refused the record for a reason waiting cannot fix.
#[allow(clippy::result_large_err)]
pub fn send_waiting<'a, C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> Result<(), Refused<'a, K, P, C::DeliveryOpaque>>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                wait_for_queue(producer);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits a moment for room in librdkafka's full queue, serving the
/// delivery reports waiting meanwhile. `poll` with a timeout would spin
/// through it (rdkafka floors the remaining time to whole milliseconds and
/// polls with 0): this serves what is there and sleeps instead.
pub(crate) fn wait_for_queue<C: ProducerContext>(producer: &BaseProducer<C>) {
    producer.poll(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(1));
}

/// Waits until librdkafka holds no record of this producer any more
/// (every one delivered, or failed and its report served), or until
/// `until`; `true` when nothing is left.
///
/// The producers are configured with `delivery.report.only.error`, so a
/// delivered record is released on librdkafka's broker thread and only
/// failures come back as reports. The wait is librdkafka's own flush
/// ([`rdkafka_flush::flush`]), which sends every batch at once instead of
/// after `linger.ms`, blocking in slices of at most 10 ms with the waiting
/// failure reports served between them (a failed record counts until its
/// report is served). Not rdkafka's `flush`: it lifts the linger only for
/// an instant and sleeps in steps of 100 ms.
pub fn await_delivered<C: ProducerContext>(
    producer: &BaseProducer<C>,
    until: Option<Instant>,
) -> bool {
    const SLICE: Duration = Duration::from_millis(10);
    loop {
        // Serves the waiting reports (failures: after a purge, one per
        // partition), each releasing its records, for as long as the
        // count falls.
        let mut n = producer.in_flight_count();
        loop {
            if n <= 0 {
                return true;
            }
            producer.poll(Duration::ZERO);
            let after = producer.in_flight_count();
            if after >= n {
                break;
            }
            n = after;
        }
        let slice = match until {
            Some(u) => {
                let left = u.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                left.min(SLICE)
            }
            None => SLICE,
        };
        rdkafka_flush::flush(producer, slice);
    }
}

/// A client context that forwards librdkafka's logs and errors to
/// `tracing` (see [`forward_log`], [`forward_error`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// [`QuietContext`] that also keeps the last client error, so a start-up
/// failure can say why (librdkafka reports a failed authentication or TLS
/// handshake there, and only "transport failure" to the request).
#[derive(Debug, Default)]
pub struct RecordingContext {
    last: std::sync::Mutex<Option<String>>,
    refused: std::sync::Mutex<Option<String>>,
}

impl RecordingContext {
    /// The last error librdkafka reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last.lock().ok()?.clone()
    }

    /// The last authentication or TLS failure librdkafka reported, if any:
    /// the cluster is there and refuses this client, which waiting does
    /// not fix.
    pub fn refusal(&self) -> Option<String> {
        self.refused.lock().ok()?.clone()
    }
}

impl rdkafka::consumer::ConsumerContext for RecordingContext {}

impl ClientContext for RecordingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&error, reason);
        let text = format!("{error}: {reason}");
        if matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SSL
                    | RDKafkaErrorCode::SaslAuthenticationFailed
            )
        ) {
            if let Ok(mut refused) = self.refused.lock() {
                *refused = Some(text.clone());
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(text);
        }
    }
}

impl rdkafka::producer::ProducerContext for QuietContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Connection settings shared by every client.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Operator settings (`-X key=value`), applied last: they win.
    pub overrides: Vec<(String, String)>,
}

impl Connection {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        c
    }

    /// The group consumer over the input topics.
    pub fn consumer(&self, group_id: &str, instance_id: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group_id)
            .set("client.id", format!("{group_id}-{instance_id}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // A broker may hold an empty fetch for the whole wait even when
            // records arrive meanwhile (Tansu does): 100 ms instead of
            // librdkafka's 500 keeps end-to-end latency low everywhere.
            .set("fetch.wait.max.ms", "100")
            // librdkafka fetches ahead up to 64 MB per consumer by default,
            // which a processor slower than its fetches keeps full (resident
            // memory, per stream thread). 4 MB is still a tenth of a second
            // of JSON input at 40 MB/s; in the peers bench it held
            // privacy-router's throughput as 8 and 16 MB did, with 15–20 MB
            // less resident memory than 8 (docs/benchmarks.md). A partition
            // whose fetch finds the queue full waits `fetch.queue.backoff.ms`
            // before fetching again: 1 s by default, long enough for a fast
            // consumer to drain the queue and stall. 10 ms: the 1:1 copy
            // passthrough drains 4 MB in about 30 ms at 300,000 events/s,
            // and looked slower with a 50 ms back-off in one pair of runs.
            .set("queued.max.messages.kbytes", "4096")
            .set("fetch.queue.backoff.ms", "10")
            .set("statistics.interval.ms", "5000");
        self.finish(c)
    }

    /// The producer of tier records, dead letters and changelog records:
    /// transactional under `exactly_once`, idempotent otherwise. Keys are
    /// partitioned with murmur2, as the Java clients do, so downstream
    /// Kafka Streams applications see the same key → partition mapping.
    pub fn producer(&self, transactional_id: &str, guarantee: Guarantee) -> ClientConfig {
        let mut c = self.base();
        c.set("client.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            // Delivered records are released on librdkafka's thread; only
            // failures are reported (and counted). Saves a report per
            // record, and makes the commit's wait for delivery cheap.
            .set("delivery.report.only.error", "true");
        if guarantee == Guarantee::ExactlyOnce {
            // 10 s, as Kafka Streams sets under exactly-once (librdkafka's
            // default is 60 s): a crashed instance's open transaction holds
            // back read_committed readers of every partition it wrote to
            // until the broker aborts it at this timeout.
            c.set("transactional.id", transactional_id)
                .set("transaction.timeout.ms", "10000")
                // As Kafka Streams sets it. Under exactly-once a record is
                // visible only once its transaction commits, and the commit
                // sends every batch at once (`await_delivered`), so a long
                // linger delays nothing a reader sees; it fills batches,
                // which costs this process and the broker less per record.
                .set("linger.ms", "100");
        }
        self.finish(c)
    }

    /// The consumer that restores partition state from the changelog: no
    /// group, committed data only, told when it reaches the end.
    pub fn restorer(&self, client_id: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", format!("{client_id}-restore"))
            .set("client.id", format!("{client_id}-restore"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100");
        self.finish(c)
    }

    /// An admin client (creating the changelog topic).
    pub fn admin(&self) -> ClientConfig {
        self.finish(self.base())
    }
}

/// What the topic check found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The cluster could not be asked.
    #[error("cannot read the cluster's metadata: {0}")]
    Metadata(String),
    /// The cluster refused this client: authentication or TLS failed
    /// (credentials, certificates or settings to fix; not retried).
    #[error("the cluster refused this client (authentication or TLS): {0}")]
    Refused(String),
    /// An input topic does not exist.
    #[error("the input topic {0} does not exist")]
    MissingInput(String),
    /// The changelog has fewer partitions than an input topic.
    #[error("the changelog topic {changelog} has {has} partition(s) but the input topic {input} has {needs}: the changelog must be co-partitioned with the input (delete it or add partitions)")]
    NotCoPartitioned {
        /// The changelog topic.
        changelog: String,
        /// Its partitions.
        has: usize,
        /// The input topic with more partitions.
        input: String,
        /// Its partitions.
        needs: usize,
    },
    /// The NATS input's lease topic does not exist and could not be
    /// created.
    #[error(transparent)]
    Lease(CannotCreateLease),
    /// The changelog does not exist and could not be created.
    #[error("the changelog topic {changelog} does not exist and could not be created ({why}); create it with {partitions} partition(s) and cleanup.policy=compact")]
    CannotCreate {
        /// The changelog topic.
        changelog: String,
        /// How many partitions it needs.
        partitions: usize,
        /// Why creating it failed.
        why: String,
    },
}

/// The NATS input's lease topic does not exist and could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lease topic {lease} of the NATS input does not exist and could not be created ({why}); create it with 1 partition")]
pub struct CannotCreateLease {
    /// The lease topic.
    pub lease: String,
    /// Why creating it failed.
    pub why: String,
}

/// Checks the NATS input's lease topic exists, creating it (one partition,
/// compacted: it is never written) when it is missing and `create` allows
/// it. Blocks, like [`check_topics`].
///
/// # Errors
/// [`TopicError::Metadata`] when the cluster cannot be asked;
/// [`TopicError::Lease`] when the topic cannot be created.
pub fn ensure_lease(
    rt: &tokio::runtime::Handle,
    conn: &Connection,
    lease: &str,
    replication: Option<i32>,
    create: bool,
) -> Result<(), TopicError> {
    let timeout = Duration::from_secs(15);
    let admin: AdminClient<QuietContext> = conn
        .admin()
        .create_with_context(QuietContext)
        .map_err(|e| TopicError::Metadata(e.to_string()))?;
    let counts = partition_counts(admin.inner(), &[lease], timeout)?;
    if counts.get(lease).copied().flatten().is_some() {
        return Ok(());
    }
    let cannot = |why: String| {
        TopicError::Lease(CannotCreateLease {
            lease: lease.to_owned(),
            why,
        })
    };
    if !create {
        return Err(cannot(
            "creating internal topics is switched off".to_owned(),
        ));
    }
    create_compacted(rt, &admin, lease, 1, replication, timeout).map_err(cannot)?;
    tracing::info!(lease, "Created the NATS input's lease topic.");
    Ok(())
}

/// Creates a compacted internal topic (one that exists already is fine);
/// the error says why not.
fn create_compacted(
    rt: &tokio::runtime::Handle,
    admin: &AdminClient<QuietContext>,
    name: &str,
    partitions: i32,
    replication: Option<i32>,
    timeout: Duration,
) -> Result<(), String> {
    let replication = TopicReplication::Fixed(replication.unwrap_or(-1));
    let topic = NewTopic::new(name, partitions, replication).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let created = rt
        .block_on(async {
            tokio::time::timeout(timeout, admin.create_topics([&topic], &opts)).await
        })
        .map_err(|_| "the cluster did not answer".to_owned())?
        .map_err(|e| e.to_string())?;
    for r in created {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    Ok(())
}

/// Partition counts of topics, `None` where the topic does not exist.
///
/// # Errors
/// [`TopicError::Metadata`] when the cluster cannot be asked.
pub fn partition_counts<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> Result<HashMap<String, Option<usize>>, TopicError> {
    let mut out = HashMap::new();
    for t in topics {
        let md = client
            .fetch_metadata(Some(t), timeout)
            .map_err(|e| TopicError::Metadata(e.to_string()))?;
        let n = md
            .topics()
            .iter()
            .find(|m| m.name() == *t)
            .filter(|m| m.error().is_none() && !m.partitions().is_empty())
            .map(|m| m.partitions().len());
        out.insert((*t).to_owned(), n);
    }
    Ok(out)
}

/// Checks the input topics exist and the changelog is co-partitioned with
/// them, creating the changelog (compacted) when it is missing and
/// `create` allows it. Returns the input partition counts. Blocks: call
/// it from the stream thread; `rt` runs the admin request.
///
/// # Errors
/// [`TopicError`]: every case says what the operator must do.
pub fn check_topics(
    rt: &tokio::runtime::Handle,
    conn: &Connection,
    inputs: &[String],
    changelog: &str,
    replication: Option<i32>,
    create: bool,
) -> Result<HashMap<String, usize>, TopicError> {
    let admin: AdminClient<QuietContext> = conn
        .admin()
        .create_with_context(QuietContext)
        .map_err(|e| TopicError::Metadata(e.to_string()))?;
    // The metadata is read by a client whose events this thread serves, so
    // a failure can say why (an authentication or TLS error is an event).
    let probe: rdkafka::consumer::BaseConsumer<RecordingContext> = conn
        .admin()
        .create_with_context(RecordingContext::default())
        .map_err(|e| TopicError::Metadata(e.to_string()))?;
    let timeout = Duration::from_secs(15);
    let mut names: Vec<&str> = inputs.iter().map(String::as_str).collect();
    names.push(changelog);
    let counts = partition_counts(probe.client(), &names, timeout).map_err(|e| {
        for _ in 0..5 {
            let _ = probe.poll(Duration::from_millis(100));
        }
        let context = probe.context();
        match (e, context.refusal(), context.last_error()) {
            (TopicError::Metadata(m), Some(why), _) => TopicError::Refused(format!("{m} ({why})")),
            (TopicError::Metadata(m), None, Some(why)) => {
                TopicError::Metadata(format!("{m} ({why})"))
            }
            (e, _, _) => e,
        }
    })?;
    let mut inputs_n = HashMap::new();
    let mut widest: Option<(&str, usize)> = None;
    for t in inputs {
        let n = counts
            .get(t)
            .copied()
            .flatten()
            .ok_or_else(|| TopicError::MissingInput(t.clone()))?;
        inputs_n.insert(t.clone(), n);
        if widest.is_none_or(|(_, w)| n > w) {
            widest = Some((t, n));
        }
    }
    let (input, needs) = widest.unwrap_or(("", 1));
    match counts.get(changelog).copied().flatten() {
        Some(has) if has >= needs => Ok(inputs_n),
        Some(has) => Err(TopicError::NotCoPartitioned {
            changelog: changelog.to_owned(),
            has,
            input: input.to_owned(),
            needs,
        }),
        None if !create => Err(TopicError::CannotCreate {
            changelog: changelog.to_owned(),
            partitions: needs,
            why: "creating internal topics is switched off".to_owned(),
        }),
        None => {
            let cannot = |why: String| TopicError::CannotCreate {
                changelog: changelog.to_owned(),
                partitions: needs,
                why,
            };
            create_compacted(rt, &admin, changelog, needs as i32, replication, timeout)
                .map_err(cannot)?;
            tracing::info!(
                changelog,
                partitions = needs,
                "Created the changelog topic."
            );
            Ok(inputs_n)
        }
    }
}
