//! The transaction (Kafka Streams' `StreamsProducer`): where input offsets
//! are committed.
//!
//! Under `exactly_once` one Kafka transaction is always open. A commit
//! writes a resume marker per input partition the transaction moved (to
//! the changelog), waits for every record sent, sends the input offsets to
//! the transaction and commits it — tier records, dead letters, changelog
//! records and offsets become visible together — then begins the next.
//! Under `at_least_once` the records are delivered first, then the offsets
//! are committed to the group.
//!
//! An abort purges what is in flight, aborts, then runs the caller's undo
//! (versions put back, partitions rewound). A producer that can neither
//! commit nor abort is replaced by a new one with the same transactional
//! id, which ends the old one's transaction (as Kafka Streams does); the
//! processor then waits until no transaction it wrote is left open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::collector::{ProducerCtx, RecordCollector};
use super::config::StreamConfig;
use super::positions::Moved;
use super::state::{encode_value, resume_key};
use super::watermarks::Watermarks;
use super::{Fatal, FatalKind};
use crate::config::Guarantee;

/// How long a transactional call may take before it is retried.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Aborts in a row without a commit before the thread gives up.
const MAX_ABORTS_IN_A_ROW: u32 = 5;

/// How ending the open transaction went.
#[derive(Debug)]
pub(super) enum Ended {
    /// Committed: its records and input offsets are visible.
    Committed,
    /// Aborted (the caller's undo has run with the reason); a new
    /// transaction is open.
    Aborted,
}

/// The producer and its open transaction.
#[derive(Debug)]
pub(super) struct Transaction {
    /// Sends the records of the open transaction.
    collector: RecordCollector,
    /// Names, the guarantee and the transaction timeout.
    config: Arc<StreamConfig>,
    /// The processor is stopping: retries end, waits give up.
    stop: Arc<AtomicBool>,
    /// Aborts since the last commit, not counting those brokers being away
    /// caused (waiting for brokers is not a failure).
    aborts_in_a_row: u32,
}

impl Transaction {
    /// A new producer; under `exactly_once` its transactions initialised
    /// (fencing a predecessor with the same id) and the first one begun.
    pub(super) fn start(config: Arc<StreamConfig>, stop: Arc<AtomicBool>) -> Result<Self> {
        let collector = RecordCollector::new(&config.conn, &config.client_id, config.guarantee)?;
        let txn = Transaction {
            collector,
            config,
            stop,
            aborts_in_a_row: 0,
        };
        if txn.exactly_once() {
            txn.retry("init_transactions", |p| p.init_transactions(TXN_TIMEOUT))?;
            txn.begin()?;
        }
        Ok(txn)
    }

    /// Sends the open transaction's records.
    pub(super) fn collector(&mut self) -> &mut RecordCollector {
        &mut self.collector
    }

    fn exactly_once(&self) -> bool {
        self.config.guarantee == Guarantee::ExactlyOnce
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn begin(&self) -> Result<()> {
        self.retry("begin_transaction", |p| p.begin_transaction())
    }

    /// Commits the open transaction with the input offsets in `moved`; a
    /// failure that needs an abort aborts (running `undo` with the reason),
    /// a fatal one is returned.
    pub(super) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        moved: &Moved,
        undo: impl FnOnce(&str),
    ) -> Result<Ended> {
        // Resume markers first: a successor skips what this transaction
        // processed even where it cannot tell by versions.
        let changelog = self.config.changelog.clone();
        for (t, p, next) in moved.iter() {
            self.collector
                .send_state(&changelog, *p, &resume_key(t), &encode_value(*next));
        }
        if let Some(why) = self.collector.take_broken() {
            return self.abort(&why, false, undo);
        }
        let offsets = moved.offsets()?;
        if !self.exactly_once() {
            self.collector.drain();
            if self.collector.take_failed_deliveries() > 0 {
                return self.abort("records could not be delivered", false, undo);
            }
            if !moved.is_empty() {
                if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                    // The next commit covers these offsets; at least once
                    // allows the replay a crash before it would cause.
                    warn!(error = %e, "Offset commit failed; the next commit retries.");
                }
            }
            self.aborts_in_a_row = 0;
            return Ok(Ended::Committed);
        }
        self.collector.drain();
        // A transaction that read no input (held events released when their
        // window ended) still goes with offsets: the group coordinator
        // checks this member's generation only against offsets sent with
        // the transaction, and a member that lost its partitions (a zombie
        // woken after its successor restored and released the same held
        // events) must not commit. The group's committed offsets are sent
        // again as they are.
        let offsets = if moved.is_empty() {
            match consumer.committed(TXN_TIMEOUT) {
                Ok(committed) => committed_only(&committed)?,
                Err(e) => {
                    let away = broker_away(&e);
                    return self.abort(
                        &format!("reading the committed offsets to send with a transaction that read no input: {e}"),
                        away,
                        undo,
                    );
                }
            }
        } else {
            offsets
        };
        let mut offsets_sent = offsets.count() == 0;
        loop {
            let r = if offsets_sent {
                self.collector.producer().commit_transaction(TXN_TIMEOUT)
            } else {
                match self.send_offsets(&offsets, consumer)? {
                    Some(r) => r
                        .map(|()| offsets_sent = true)
                        .and_then(|()| self.collector.producer().commit_transaction(TXN_TIMEOUT)),
                    None => {
                        warn!(
                            waited_s = self.stuck_after().as_secs(),
                            "Sending the input offsets to the transaction did not return (the group coordinator's broker left the cluster?); starting a new producer."
                        );
                        self.renew()?;
                        return self.aborted(
                            "sending the input offsets to the transaction did not return"
                                .to_owned(),
                            false,
                            undo,
                        );
                    }
                }
            };
            match r {
                Ok(()) => break,
                Err(e) if requires_abort(&e) => {
                    return self.abort(&e.to_string(), broker_away(&e), undo);
                }
                Err(e) if retriable(&e) => {
                    warn!(error = %e, "Commit not finished; retrying.");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) if !fenced(&e) && !self.stopping() => {
                    // Fatal to this producer, not to the processor (e.g.
                    // the broker ended the transaction on its timeout while
                    // a broker was away).
                    warn!(error = %e, "The transaction cannot be committed or aborted; starting a new producer.");
                    self.renew()?;
                    return self.aborted(e.to_string(), true, undo);
                }
                Err(e) => return Err(txn_failure(e, "committing the transaction")),
            }
        }
        self.aborts_in_a_row = 0;
        self.begin()?;
        Ok(Ended::Committed)
    }

    /// `send_offsets_to_transaction` on a thread of its own, waited for
    /// up to [`Self::stuck_after`]; `None` when it has not returned by then.
    ///
    /// librdkafka can block in that call far past its timeout: when the
    /// group coordinator's broker left the cluster, the request waits for a
    /// state change of another broker, which may never come
    /// (confluentinc/librdkafka#5456 and #5511; seen in the three-broker
    /// test when the killed tier leader was also the group coordinator).
    /// The call then keeps the old producer alive on its thread until it
    /// returns (its transaction is fenced by the new producer's
    /// `init_transactions` and aborted by the broker); nothing else uses it.
    fn send_offsets<C: ConsumerContext>(
        &self,
        offsets: &TopicPartitionList,
        consumer: &BaseConsumer<C>,
    ) -> Result<Option<KafkaResult<()>>> {
        let Some(group) = consumer.group_metadata() else {
            bail!("the consumer has no group metadata");
        };
        let producer = self.collector.shared_producer();
        let offsets = offsets.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("send-offsets".to_owned())
            .spawn(move || {
                let r = producer.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT);
                let _ = tx.send(r);
            })
            .context("starting the thread that sends the input offsets")?;
        Ok(rx.recv_timeout(self.stuck_after()).ok())
    }

    /// How long a transactional call may run before it is taken as stuck:
    /// librdkafka ends the call itself within its timeout, capped at the
    /// transaction timeout, plus a margin for the last response.
    fn stuck_after(&self) -> Duration {
        TXN_TIMEOUT.min(self.config.transaction_timeout) + Duration::from_secs(5)
    }

    /// Aborts the open transaction, then runs `undo` with the reason (it
    /// puts back what the transaction changed) and begins a new one. When the abort itself
    /// fails for any reason but a newer producer with this transactional id
    /// (the broker aborted the transaction on its timeout while a broker was
    /// away, or left the producer in a state only a new epoch clears), the
    /// producer is replaced. Aborts caused by brokers being away do not
    /// count towards the aborts in a row that end the processor.
    pub(super) fn abort(
        &mut self,
        why: &str,
        broker_away: bool,
        undo: impl FnOnce(&str),
    ) -> Result<Ended> {
        if self.exactly_once() {
            if let Err(e) = self.retry("abort_transaction", |_| self.abort_open(TXN_TIMEOUT)) {
                if is_fenced(&e) || self.stopping() {
                    return Err(e);
                }
                warn!(error = %format!("{e:#}"), "The abort failed; starting a new producer.");
                self.renew()?;
            }
        } else {
            self.collector.drain();
        }
        self.collector.reset();
        self.aborted(why.to_owned(), !broker_away, undo)
    }

    /// The rest of an abort once the transaction has ended: undo, count,
    /// a new transaction.
    fn aborted(&mut self, why: String, counts: bool, undo: impl FnOnce(&str)) -> Result<Ended> {
        undo(&why);
        if counts {
            self.aborts_in_a_row += 1;
        }
        if self.aborts_in_a_row > MAX_ABORTS_IN_A_ROW {
            return Err(Fatal::new(
                FatalKind::TooManyAborts,
                format!(
                    "{} transactions in a row were aborted; last: {why}",
                    self.aborts_in_a_row
                ),
            )
            .into());
        }
        if self.exactly_once() {
            self.begin()?;
        }
        Ok(Ended::Aborted)
    }

    /// Best effort on the way out after a fatal error: abort the open
    /// transaction (bounded wait), ignoring what fails.
    pub(super) fn abort_quietly(&self) {
        if self.exactly_once() {
            if let Err(e) = self.abort_open(Duration::from_secs(5)) {
                warn!(error = %e, "Could not abort the open transaction; the broker will time it out.");
            }
        }
    }

    /// Aborts the open transaction while records may still be queued or in
    /// flight: they are purged first and their delivery reports served,
    /// then the abort is sent.
    fn abort_open(&self, timeout: Duration) -> KafkaResult<()> {
        let until = Instant::now() + timeout;
        self.collector.purge(until);
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let result = self.collector.producer().abort_transaction(left);
        // Reports of what the abort itself failed.
        self.collector.serve_reports();
        result
    }

    /// Replaces the transactional producer: the old one is dropped (what
    /// it still held is purged), the new one initialises its transactions
    /// with the same transactional id, which ends whatever the old one left
    /// open. Then waits until no transaction is open on any partition this
    /// processor writes: a broker that aborts the old transaction while
    /// starting up (a single node restarted after a crash, when the
    /// transaction timed out meanwhile) may skip the abort markers of
    /// partitions whose leaders it does not know yet
    /// (`TransactionMarkerChannelManager`: "likely deleted already"),
    /// leaving it hanging; the next transaction of the same producer id
    /// would then commit its records with its own. No transaction is open
    /// afterwards.
    fn renew(&mut self) -> Result<()> {
        let c = &self.config;
        self.collector = RecordCollector::new(&c.conn, &c.client_id, c.guarantee)?;
        self.retry("init_transactions", |p| p.init_transactions(TXN_TIMEOUT))?;
        info!("A new transactional producer took over.");
        Watermarks::new(&c.conn, c.transaction_timeout)?.await_topics(&c.outputs, &self.stop)
    }

    /// Runs a transactional call until it succeeds, retrying what librdkafka
    /// calls retriable: the one retry helper of every transactional call.
    fn retry(
        &self,
        what: &str,
        mut call: impl FnMut(&BaseProducer<ProducerCtx>) -> KafkaResult<()>,
    ) -> Result<()> {
        retry(&self.stop, what, || call(self.collector.producer()))
    }
}

/// Runs a transactional call until it succeeds, retrying what librdkafka
/// calls retriable, unless the processor is stopping.
fn retry(stop: &AtomicBool, what: &str, mut call: impl FnMut() -> KafkaResult<()>) -> Result<()> {
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(e) if retriable(&e) && !stop.load(Ordering::SeqCst) => {
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
    let fencing = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::Fenced
        )
    );
    if fencing {
        // Only a newer producer with this transactional id always ends the
        // processor. The other fencing errors (librdkafka's `_FENCED` after
        // the broker ended a transaction on its timeout, an old epoch) end
        // it only where no caller recovers: an abort that fails with them
        // starts a new producer instead. They are not logged as an exit;
        // when one does end the processor, its error is printed on the way
        // out.
        if fenced(&e) {
            tracing::error!(call = what, error = %e, "This instance was fenced: another instance took over its partitions while it was away. Its open transaction is not committed; exiting.");
        }
        Fatal::new(
            FatalKind::Fenced,
            format!("{what}: fenced by another instance"),
        )
        .caused_by(e)
        .into()
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

/// The partitions of `tpl` that have a committed offset, with it.
fn committed_only(tpl: &TopicPartitionList) -> Result<TopicPartitionList> {
    let mut out = TopicPartitionList::new();
    for el in tpl.elements() {
        if let Offset::Offset(n) = el.offset() {
            out.add_partition_offset(el.topic(), el.partition(), Offset::Offset(n))
                .context("building the offsets to commit")?;
        }
    }
    Ok(out)
}

/// A newer producer with this transactional id exists (another instance
/// with the same `--instance-id` took over): this one must stop, or the two
/// would fence each other in turn.
fn fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::FencedInstanceId)
    )
}

/// [`fenced`] for an error on its way out.
fn is_fenced(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<KafkaError>())
        .any(fenced)
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
