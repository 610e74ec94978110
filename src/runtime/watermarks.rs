//! Waiting for transactions to end, by watermarks: a partition has no open
//! transaction left (as of a moment) once its last stable offset (what
//! `read_committed` readers may see) reaches the high watermark it had
//! then.
//!
//! Used where a transaction ended without this instance's own commit or
//! abort (a producer replaced, a predecessor's transaction on a changelog
//! partition being restored). A transaction still open after three
//! transaction timeouts (Kafka aborts a dead producer's after one) is
//! hanging: the processor stops, naming the partition and offset to abort
//! it at.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{info, warn};

use super::kafka::{Connection, QuietContext};
use super::{Fatal, FatalKind};

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The two clients watermarks are read with: librdkafka answers a
/// watermark query with the client's isolation, so the high watermark
/// (read_uncommitted) and the last stable offset (read_committed) each
/// need a client of their own.
pub(super) struct Watermarks {
    high: BaseConsumer<QuietContext>,
    stable: BaseConsumer<QuietContext>,
    /// Three transaction timeouts: how long a transaction may stay open
    /// before it counts as hanging.
    limit: Duration,
}

impl Watermarks {
    /// Two new clients on `conn`.
    pub(super) fn new(conn: &Connection, transaction_timeout: Duration) -> Result<Self> {
        let client = |isolation: &str| -> Result<BaseConsumer<QuietContext>> {
            let mut c = conn.admin();
            c.set("isolation.level", isolation);
            c.create_with_context(QuietContext)
                .context("creating a watermark client")
        };
        Ok(Watermarks {
            high: client("read_uncommitted")?,
            stable: client("read_committed")?,
            limit: 3 * transaction_timeout,
        })
    }

    /// Waits until no transaction that is open now on any partition of
    /// `topics` is still open. Brokers may still be moving leaders: reading
    /// the topics' partitions is retried until the limit.
    pub(super) fn await_topics(&self, topics: &[String], stop: &AtomicBool) -> Result<()> {
        let started = Instant::now();
        let mut targets = Vec::new();
        'topics: while targets.is_empty() {
            for t in topics {
                let read = self
                    .stable
                    .fetch_metadata(Some(t), REQUEST_TIMEOUT)
                    .and_then(|_| self.high.fetch_metadata(Some(t), REQUEST_TIMEOUT));
                let md = match read {
                    Ok(md) => md,
                    Err(e) if started.elapsed() < self.limit => {
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
        self.await_partitions(targets, started, stop)
    }

    /// Waits until every target partition's last stable offset reaches the
    /// high watermark it had at the start: no transaction that was open
    /// then is still open.
    pub(super) fn await_partitions(
        &self,
        targets: Vec<(String, i32)>,
        started: Instant,
        stop: &AtomicBool,
    ) -> Result<()> {
        let mut targets: Vec<(String, i32, Option<i64>)> =
            targets.into_iter().map(|(t, p)| (t, p, None)).collect();
        loop {
            let mut held = Vec::new();
            for (t, p, hw) in &mut targets {
                let target = match hw {
                    Some(h) => *h,
                    None => match self.high.fetch_watermarks(t, *p, REQUEST_TIMEOUT) {
                        Ok((_, h)) => *hw.insert(h),
                        Err(_) => {
                            held.push((&*t, *p, -1));
                            continue;
                        }
                    },
                };
                match self.stable.fetch_watermarks(t, *p, REQUEST_TIMEOUT) {
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
            if started.elapsed() > self.limit {
                let limit = self.limit;
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
                return Err(Fatal::new(
                    FatalKind::HangingTransaction,
                    format!(
                        "{} partition(s) hold a hanging transaction (first: {}[{}] at offset {}): abort each with kafka-transactions.sh --bootstrap-server <brokers> abort --topic <topic> --partition <partition> --start-offset <offset>, as logged",
                        held.len(),
                        held[0].0,
                        held[0].1,
                        held[0].2
                    ),
                )
                .into());
            }
            if stop.load(Ordering::SeqCst) {
                bail!("stopping while waiting for transactions to end");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
