//! Partition positions: where each assigned input partition is, and where
//! the open transaction started reading it.
//!
//! A position moves forward with every record handled; the input offsets a
//! commit sends are the positions the open transaction moved; an abort
//! seeks every such partition back to where the transaction started.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

/// One input partition's position.
#[derive(Debug, Clone, Copy)]
struct Pos {
    /// The next offset to process.
    next: i64,
    /// The first offset processed in the open transaction.
    txn_start: Option<i64>,
}

/// The input partitions the open transaction moved, with their next
/// offsets: what a commit sends as the consumer group's offsets.
#[derive(Debug, Default)]
pub(super) struct Moved(Vec<(Arc<str>, i32, i64)>, Option<Nats>);

/// The NATS input among the positions: its subject is not a Kafka topic.
#[derive(Debug, Clone)]
pub(super) struct Nats {
    /// The input's name (its position's key).
    pub(super) subject: Arc<str>,
    /// The lease topic, whose partition 0 stands in for it in the group's
    /// offsets.
    pub(super) lease: Arc<str>,
}

impl Moved {
    /// True when the open transaction read nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (topic, partition, next offset to process).
    pub(super) fn iter(&self) -> impl Iterator<Item = &(Arc<str>, i32, i64)> {
        self.0.iter()
    }

    /// The offsets to commit, in the form the group coordinator takes. The
    /// NATS input's position is in the changelog only; in its place the
    /// lease partition's offset (always 0: it is never written) goes with
    /// the transaction, so a member that lost the lease is fenced.
    pub(super) fn offsets(&self) -> Result<TopicPartitionList> {
        let mut offsets = TopicPartitionList::new();
        for (t, p, next) in &self.0 {
            let (t, p, next) = match &self.1 {
                Some(n) if *t == n.subject => (&n.lease, 0, 0),
                _ => (t, *p, *next),
            };
            offsets
                .add_partition_offset(t, p, Offset::Offset(next))
                .context("building the offsets to commit")?;
        }
        Ok(offsets)
    }
}

/// Every assigned input partition's position.
#[derive(Debug, Default)]
pub(super) struct Positions {
    /// Advanced for every record: foldhash, a fraction of SipHash's cost.
    by_partition: HashMap<(Arc<str>, i32), Pos, foldhash::fast::RandomState>,
    /// The NATS input, if the topology has one.
    nats: Option<Nats>,
    /// Where an abort put the NATS input back: its reader starts again
    /// there (there is no consumer to seek).
    nats_rewound: Option<i64>,
}

impl Positions {
    /// Positions of the Kafka inputs and, if `nats`, of the NATS input.
    pub(super) fn new(nats: Option<Nats>) -> Self {
        Positions {
            nats,
            ..Positions::default()
        }
    }

    /// Where the last abort put the NATS input back, once.
    pub(super) fn take_nats_rewind(&mut self) -> Option<i64> {
        self.nats_rewound.take()
    }

    /// The next offset to process in `topic`'s partition `p`, if known.
    pub(super) fn next(&self, topic: &str, p: i32) -> Option<i64> {
        self.by_partition
            .iter()
            .find(|((t, q), _)| *q == p && &**t == topic)
            .map(|(_, pos)| pos.next)
    }

    /// The record at `offset` was handled.
    pub(super) fn advance(&mut self, topic: &Arc<str>, p: i32, offset: i64) {
        let pos = self.by_partition.entry((topic.clone(), p)).or_insert(Pos {
            next: offset,
            txn_start: None,
        });
        pos.next = offset + 1;
        pos.txn_start.get_or_insert(offset);
    }

    /// The partitions the open transaction moved.
    pub(super) fn moved(&self) -> Moved {
        Moved(
            self.by_partition
                .iter()
                .filter(|(_, pos)| pos.txn_start.is_some())
                .map(|((t, p), pos)| (t.clone(), *p, pos.next))
                .collect(),
            self.nats.clone(),
        )
    }

    /// The transaction that moved `moved` committed: returns how many input
    /// records it covered.
    pub(super) fn committed(&mut self, moved: &Moved) -> u64 {
        let mut inputs = 0;
        for (t, p, next) in moved.iter() {
            if let Some(pos) = self.by_partition.get_mut(&(t.clone(), *p)) {
                if let Some(start) = pos.txn_start.take() {
                    inputs += (next - start).max(0) as u64;
                }
            }
        }
        inputs
    }

    /// The open transaction was aborted: every partition it moved goes back
    /// to where the transaction started, and the consumer fetches from
    /// there again.
    pub(super) fn rewind<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        for ((t, p), pos) in self.by_partition.iter_mut() {
            if let Some(start) = pos.txn_start.take() {
                pos.next = start;
                if self.nats.as_ref().is_some_and(|n| *t == n.subject) {
                    self.nats_rewound = Some(start);
                    continue;
                }
                if let Err(e) = consumer.seek(t, *p, Offset::Offset(start), Duration::from_secs(10))
                {
                    warn!(topic = %t, partition = *p, error = %e, "Rewind failed.");
                }
            }
        }
    }

    /// The partition was revoked.
    pub(super) fn forget(&mut self, topic: &Arc<str>, p: i32) {
        self.by_partition.remove(&(topic.clone(), p));
    }
}
