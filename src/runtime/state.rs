//! Partition state backed by the changelog topic
//! (`<application_id>-entity-versions-changelog`), co-partitioned with the
//! input: partition `p` of the changelog holds the state of partition `p`
//! of every input topic.
//!
//! Two kinds of changelog records, both written in the transaction of the
//! outputs they describe:
//!
//! * **entity versions**: key `entity_type/entity_id`, value the last
//!   accepted version (8 bytes, big-endian);
//! * **resume markers**: key `0x00 "resume" 0x00 <input topic>`, value the
//!   next input offset to process in that topic's partition `p`;
//! * **held events** (`ordering.on_gap: hold`): key `0x00 "held" 0x00
//!   <version> <entity key>`, value the held input record
//!   ([`crate::order::hold::HeldRecord`]); a tombstone once it is released.
//!   They hold the raw input, PII included: with `hold`, the changelog is
//!   restricted like the dead-letter topic.
//!
//! A broker that aborts a crashed producer's transaction hides both with
//! its outputs. librdkafka's mock cluster (the embedded demo's broker)
//! instead shows a crashed transaction's records to `read_committed` readers; the
//! resume marker then tells the successor that those inputs were already
//! processed, and the restored versions make any replay a `duplicate`, so
//! outputs stay exactly-once per event either way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::QuietContext;
use crate::order::hold::{Holdback, HELD_PREFIX};
use crate::order::{MemoryStore, VersionStore};
use crate::telemetry::{self, Metrics};

/// Prefix of resume-marker keys; entity keys never start with a NUL byte.
/// Held events (`on_gap: hold`) have keys of their own
/// ([`crate::order::hold::held_key`]).
const RESUME_PREFIX: &[u8] = b"\0resume\0";

/// The changelog key of the resume marker of an input topic.
pub fn resume_key(topic: &str) -> Vec<u8> {
    let mut k = RESUME_PREFIX.to_vec();
    k.extend_from_slice(topic.as_bytes());
    k
}

/// A changelog value: a version or an offset, 8 bytes big-endian.
pub fn encode_value(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

/// The state of each partition number, looked up for every record: foldhash,
/// a fraction of SipHash's cost (the keys are partition numbers).
pub type Parts = HashMap<i32, PartitionState, foldhash::fast::RandomState>;

/// The state of one partition number across the input topics.
#[derive(Debug)]
pub struct PartitionState {
    /// Last accepted versions of the entities whose events arrive here.
    pub store: MemoryStore,
    /// Per input topic: inputs below this offset were processed by a
    /// transaction the changelog shows.
    pub resume: HashMap<Arc<str>, i64, foldhash::fast::RandomState>,
    /// Events held for the reorder window, journaled per transaction.
    pub held: Holdback,
}

impl Default for PartitionState {
    fn default() -> Self {
        PartitionState {
            store: MemoryStore::default(),
            resume: HashMap::default(),
            held: Holdback::journaled(),
        }
    }
}

impl PartitionState {
    /// Applies one changelog record. Returns false for a record this
    /// version does not understand (it is skipped, and counted by the
    /// caller).
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> bool {
        if let Some(rest) = key.strip_prefix(HELD_PREFIX) {
            return self.held.apply(rest, value);
        }
        let Some(v) = value.and_then(|v| <[u8; 8]>::try_from(v).ok()) else {
            if value.is_none() && !key.starts_with(RESUME_PREFIX) {
                self.store.forget(key);
                return true;
            }
            return false;
        };
        let v = i64::from_be_bytes(v);
        match key.strip_prefix(RESUME_PREFIX) {
            Some(topic) => match std::str::from_utf8(topic) {
                Ok(t) => {
                    let e = self.resume.entry(Arc::from(t)).or_insert(v);
                    *e = (*e).max(v);
                    true
                }
                Err(_) => false,
            },
            None => {
                self.store.record(key, v);
                true
            }
        }
    }
}

/// Versions changed by the open transaction, with what they were before.
/// Each change is sent to the changelog as its event is processed, in the
/// same transaction as the event's outputs; the journal is forgotten when
/// that transaction commits and rolled back when it is aborted.
///
/// An undo log: one entry per change, its key copied into one shared
/// buffer kept across transactions, so recording a change looks nothing
/// up and (once the buffers have grown) allocates nothing.
/// Rolled back newest first, each key ends at its version from before the
/// transaction. A long transaction's log is compacted to the first change
/// of each key whenever it doubles, so it stays within about twice the
/// entities the transaction touched.
#[derive(Debug)]
pub struct Journal {
    /// The changes, oldest first.
    undo: Vec<Change>,
    /// The changed keys, back to back.
    keys: Vec<u8>,
    /// Compact the log when it reaches this many changes.
    compact_at: usize,
}

/// One change in the [`Journal`].
#[derive(Debug)]
struct Change {
    partition: i32,
    /// Where the key lies in [`Journal::keys`].
    key: std::ops::Range<usize>,
    /// The version before the change; `None` for a first sight.
    before: Option<i64>,
}

/// The journal's size before its first compaction, and what it shrinks
/// back to after a long transaction.
const JOURNAL_CHANGES: usize = 1 << 16;

impl Default for Journal {
    fn default() -> Self {
        Journal {
            undo: Vec::new(),
            keys: Vec::new(),
            compact_at: JOURNAL_CHANGES,
        }
    }
}

impl Journal {
    /// True when the transaction changed no version.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// The changed keys of each partition, with their current versions.
    #[cfg(test)]
    pub fn changes<'a>(
        &'a self,
        parts: &'a Parts,
    ) -> impl Iterator<Item = (i32, &'a [u8], i64)> + 'a {
        self.first_changes().filter_map(move |(p, k, _)| {
            let v = parts.get(&p)?.store.last_version(k)?;
            Some((p, k, v))
        })
    }

    /// The first change of each key, oldest first: the one that knows the
    /// version from before the transaction.
    fn first_changes(&self) -> impl Iterator<Item = (i32, &[u8], Option<i64>)> {
        let mut seen = HashSet::new();
        self.undo.iter().filter_map(move |c| {
            let k = &self.keys[c.key.clone()];
            seen.insert((c.partition, k))
                .then_some((c.partition, k, c.before))
        })
    }

    /// Notes that `key` of partition `p` was `before` until now.
    fn push(&mut self, p: i32, key: &[u8], before: Option<i64>) {
        if self.undo.len() >= self.compact_at {
            self.compact();
        }
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        self.undo.push(Change {
            partition: p,
            key: start..self.keys.len(),
            before,
        });
    }

    /// Keeps only the first change of each key.
    fn compact(&mut self) {
        let mut kept = Journal {
            compact_at: usize::MAX,
            ..Journal::default()
        };
        for (p, k, before) in self.first_changes() {
            kept.push(p, k, before);
        }
        self.compact_at = (kept.undo.len() * 2).max(JOURNAL_CHANGES);
        self.undo = kept.undo;
        self.keys = kept.keys;
    }

    /// Forgets the changes (they were committed).
    pub fn clear(&mut self) {
        self.undo.clear();
        self.keys.clear();
        self.compact_at = JOURNAL_CHANGES;
        // The buffers are kept for the next transaction, but not all that
        // an unusually long one grew (both calls do nothing below that).
        self.undo.shrink_to(4 * JOURNAL_CHANGES);
        self.keys.shrink_to(4 * JOURNAL_CHANGES * 32);
    }

    /// Puts every changed version back (the transaction was aborted).
    pub fn roll_back(&mut self, parts: &mut Parts) {
        for c in self.undo.iter().rev() {
            let Some(part) = parts.get_mut(&c.partition) else {
                continue;
            };
            let key = &self.keys[c.key.clone()];
            match c.before {
                Some(v) => part.store.record(key, v),
                None => part.store.forget(key),
            }
        }
        self.clear();
    }

    /// The store of partition `p`, recording what the engine changes.
    pub fn store<'a>(&'a mut self, p: i32, store: &'a mut MemoryStore) -> Journaled<'a> {
        Journaled {
            journal: self,
            partition: p,
            store,
        }
    }
}

/// A [`VersionStore`] that remembers what it overwrote.
#[derive(Debug)]
pub struct Journaled<'a> {
    journal: &'a mut Journal,
    partition: i32,
    store: &'a mut MemoryStore,
}

impl VersionStore for Journaled<'_> {
    fn last_version(&self, key: &[u8]) -> Option<i64> {
        self.store.last_version(key)
    }

    fn record(&mut self, key: &[u8], version: i64) {
        let before = self.store.replace(key, version);
        self.journal.push(self.partition, key, before);
    }

    fn len(&self) -> usize {
        self.store.len()
    }
}

/// Why a partition could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The changelog could not be read.
    #[error("reading changelog partition {partition}: {error}")]
    Kafka {
        /// The partition.
        partition: i32,
        /// The client error.
        error: KafkaError,
    },
    /// Asked to stop.
    #[error("stopped while restoring")]
    Stopped,
}

/// What a restore read.
#[derive(Debug, Default)]
pub struct Restored {
    /// The state.
    pub state: PartitionState,
    /// Records read.
    pub records: u64,
    /// Records skipped as not understood.
    pub unknown: u64,
    /// Time taken.
    pub took: Duration,
}

/// Reads changelog partitions `ps` from the beginning to their ends
/// (committed records only), all at once. A partition's end is where
/// librdkafka reports end-of-partition, confirmed by a quiet poll; the
/// watermark alone is not trusted (some brokers report it low after
/// multi-record batches). While the broker is away, it waits: a partial
/// restore would re-emit events.
///
/// # Errors
/// [`RestoreError`] when the changelog cannot be read or `stop()` turns true.
pub fn restore<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    changelog: &str,
    ps: &[i32],
    stop: &dyn Fn() -> bool,
) -> Result<HashMap<i32, Restored>, RestoreError> {
    let started = Instant::now();
    let first = ps.first().copied().unwrap_or_default();
    let kafka = |error| RestoreError::Kafka {
        partition: first,
        error,
    };
    let mut tpl = TopicPartitionList::new();
    for p in ps {
        tpl.add_partition_offset(changelog, *p, Offset::Beginning)
            .map_err(kafka)?;
    }
    consumer.assign(&tpl).map_err(kafka)?;
    let mut out: HashMap<i32, Restored> = ps.iter().map(|p| (*p, Restored::default())).collect();
    // Per partition: the next offset seen, and whether the end was reported.
    let mut next: HashMap<i32, i64> = ps.iter().map(|p| (*p, 0)).collect();
    let mut eof: HashSet<i32> = HashSet::new();
    let mut quiet = 0u32;
    let mut last_report = Instant::now();
    let result = loop {
        if stop() {
            break Err(RestoreError::Stopped);
        }
        let all_eof = eof.len() == ps.len();
        match consumer.poll(Duration::from_millis(if all_eof { 300 } else { 500 })) {
            Some(Ok(m)) => {
                let p = m.partition();
                eof.remove(&p);
                quiet = 0;
                next.insert(p, m.offset() + 1);
                if let Some(r) = out.get_mut(&p) {
                    r.records += 1;
                    if !r.state.apply(m.key().unwrap_or_default(), m.payload()) {
                        r.unknown += 1;
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => {
                if last_report.elapsed() > Duration::from_secs(5) {
                    tracing::warn!(error = %e, "Changelog read failed; retrying.");
                    last_report = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            None if all_eof => break Ok(()),
            None => {
                // No end-of-partition event, nothing arriving: done with a
                // partition if its watermark agrees (a broker may not
                // report the event).
                quiet += 1;
                if quiet >= 6 {
                    quiet = 0;
                    for p in ps {
                        if eof.contains(p) {
                            continue;
                        }
                        if let Ok((low, high)) =
                            consumer.fetch_watermarks(changelog, *p, Duration::from_secs(5))
                        {
                            if next[p].max(low) >= high {
                                eof.insert(*p);
                            }
                        }
                    }
                }
            }
        }
    };
    let _ = consumer.unassign();
    result?;
    let took = started.elapsed();
    for r in out.values_mut() {
        r.took = took;
    }
    Ok(out)
}

/// The version stores of the assigned partitions, what the open
/// transaction changed in them, and the consumer that restores them.
pub(super) struct StateStores {
    /// Reads the changelog (no group, committed records only).
    restorer: BaseConsumer<QuietContext>,
    /// Per partition number: versions and resume markers.
    parts: Parts,
    /// What the open transaction changed, to put back on abort.
    journal: Journal,
}

impl std::fmt::Debug for StateStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStores")
            .field("partitions", &self.parts.len())
            .finish_non_exhaustive()
    }
}

impl StateStores {
    /// Empty stores restoring with `restorer`.
    pub(super) fn new(restorer: BaseConsumer<QuietContext>) -> Self {
        StateStores {
            restorer,
            parts: Parts::default(),
            journal: Journal::default(),
        }
    }

    /// Whether partition `p` is restored.
    pub(super) fn has(&self, p: i32) -> bool {
        self.parts.contains_key(&p)
    }

    /// Whether a predecessor's committed transaction already processed the
    /// record at `offset` of `topic`'s partition `p` (its resume marker is
    /// past it).
    pub(super) fn processed(&self, topic: &str, p: i32, offset: i64) -> bool {
        self.parts
            .get(&p)
            .and_then(|s| s.resume.get(topic))
            .is_some_and(|r| offset < *r)
    }

    /// Partition `p`'s version store, journaled, and its held events;
    /// `None` if not restored.
    pub(super) fn part(&mut self, p: i32) -> Option<(Journaled<'_>, &mut Holdback)> {
        let part = self.parts.get_mut(&p)?;
        Some((self.journal.store(p, &mut part.store), &mut part.held))
    }

    /// The input resumes after a wait: no window counts the wait as idle
    /// time (see [`Holdback::touch`]).
    pub(super) fn touch(&mut self, wall: i64) {
        for part in self.parts.values_mut() {
            part.held.touch(wall);
        }
    }

    /// Whether any partition holds events.
    pub(super) fn holding_any(&self) -> bool {
        self.parts.values().any(|s| !s.held.is_empty())
    }

    /// The partitions that hold events.
    pub(super) fn holding(&self) -> Vec<i32> {
        let mut ps: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, s)| !s.held.is_empty())
            .map(|(p, _)| *p)
            .collect();
        ps.sort_unstable();
        ps
    }

    /// Events held across the partitions, and the wall-clock time (ms
    /// since the epoch) the oldest was held.
    pub(super) fn held(&self) -> (usize, Option<i64>) {
        let n = self.parts.values().map(|p| p.held.len()).sum();
        let oldest = self
            .parts
            .values()
            .filter_map(|p| p.held.oldest().map(|(_, _, r)| r.held_wall))
            .min();
        (n, oldest)
    }

    /// Entities tracked across the partitions.
    pub(super) fn entities(&self) -> usize {
        self.parts.values().map(|p| p.store.len()).sum()
    }

    /// True when the open transaction changed no version.
    pub(super) fn unchanged(&self) -> bool {
        self.journal.is_empty()
    }

    /// Where the changelog says `topic`'s partition `p` resumes (the next
    /// offset, or stream sequence, to process), if it says.
    pub(super) fn resume(&self, topic: &str, p: i32) -> Option<i64> {
        self.parts
            .get(&p)
            .and_then(|s| s.resume.get(topic))
            .copied()
    }

    /// A transaction committed positions `next` for (topic, partition):
    /// the resume markers it wrote hold here too, so what it processed is
    /// known as processed without restoring again.
    pub(super) fn resumed(&mut self, moved: impl Iterator<Item = (Arc<str>, i32, i64)>) {
        for (t, p, next) in moved {
            if let Some(part) = self.parts.get_mut(&p) {
                let e = part.resume.entry(t).or_insert(next);
                *e = (*e).max(next);
            }
        }
    }

    /// The open transaction committed: its changes stay.
    pub(super) fn committed(&mut self) {
        self.journal.clear();
        for part in self.parts.values_mut() {
            part.held.commit();
        }
    }

    /// The open transaction was aborted: its changes are put back.
    pub(super) fn roll_back(&mut self) {
        self.journal.roll_back(&mut self.parts);
        for part in self.parts.values_mut() {
            part.held.roll_back();
        }
    }

    /// Drops the partitions not in `kept`.
    pub(super) fn retain(&mut self, kept: &HashSet<i32>) {
        self.parts.retain(|p, _| kept.contains(p));
    }

    /// Restores partitions `ps` from `changelog`, reporting each.
    ///
    /// # Errors
    /// As [`restore`].
    pub(super) fn restore(
        &mut self,
        changelog: &str,
        ps: &[i32],
        metrics: &Metrics,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), RestoreError> {
        for (p, r) in restore(&self.restorer, changelog, ps, stop)? {
            if r.unknown > 0 {
                tracing::warn!(
                    partition = p,
                    records = r.unknown,
                    "Changelog records not understood; skipped."
                );
            }
            if !r.state.held.is_empty() {
                tracing::info!(
                    partition = p,
                    held = r.state.held.len(),
                    "Held events restored; each is released in order or when its window expires."
                );
            }
            telemetry::restored(
                metrics,
                changelog,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_records_rebuild_versions_and_resume_markers() {
        let mut s = PartitionState::default();
        assert!(s.apply(b"user/u1", Some(&encode_value(3))));
        assert!(s.apply(b"user/u1", Some(&encode_value(4))));
        assert!(s.apply(&resume_key("events.raw"), Some(&encode_value(120))));
        assert!(s.apply(&resume_key("events.raw"), Some(&encode_value(90))));
        assert!(!s.apply(b"user/u2", Some(b"short")));
        assert_eq!(s.store.last_version(b"user/u1"), Some(4));
        assert_eq!(s.resume.get("events.raw"), Some(&120));
        assert!(s.apply(b"user/u1", None));
        assert_eq!(s.store.last_version(b"user/u1"), None);
    }

    #[test]
    fn an_aborted_transaction_rolls_its_versions_back() {
        let mut parts = Parts::default();
        parts.insert(0, PartitionState::default());
        parts.get_mut(&0).unwrap().store.record(b"user/a", 1);
        let mut j = Journal::default();
        {
            let store = &mut parts.get_mut(&0).unwrap().store;
            let mut js = j.store(0, store);
            js.record(b"user/a", 2);
            js.record(b"user/a", 3);
            js.record(b"user/b", 1);
        }
        let mut changes: Vec<_> = j
            .changes(&parts)
            .map(|(p, k, v)| (p, k.to_vec(), v))
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            [(0, b"user/a".to_vec(), 3), (0, b"user/b".to_vec(), 1)]
        );
        j.roll_back(&mut parts);
        let s = &parts[&0].store;
        assert_eq!(s.last_version(b"user/a"), Some(1));
        assert_eq!(s.last_version(b"user/b"), None);
        assert!(j.is_empty());
    }

    #[test]
    fn a_long_transaction_keeps_a_bounded_journal_and_still_rolls_back() {
        let mut parts = Parts::default();
        for p in [0, 1] {
            parts.insert(p, PartitionState::default());
        }
        parts.get_mut(&0).unwrap().store.record(b"user/a", 7);
        parts.get_mut(&1).unwrap().store.record(b"user/a", 70);
        let mut j = Journal::default();
        for v in 8..300_000 {
            for p in [0, 1] {
                let store = &mut parts.get_mut(&p).unwrap().store;
                let mut js = j.store(p, store);
                js.record(b"user/a", v);
                js.record(format!("user/n{}", v % 5).as_bytes(), v);
            }
            assert!(j.undo.len() <= JOURNAL_CHANGES, "{}", j.undo.len());
        }
        assert_eq!(parts[&1].store.last_version(b"user/n3"), Some(299_998));
        j.roll_back(&mut parts);
        assert_eq!(parts[&0].store.last_version(b"user/a"), Some(7));
        assert_eq!(parts[&1].store.last_version(b"user/a"), Some(70));
        for p in [0, 1] {
            assert_eq!(parts[&p].store.len(), 1, "partition {p}");
        }
        assert!(j.is_empty());
    }
}
