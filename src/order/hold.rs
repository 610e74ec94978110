//! The events a partition holds for its reorder window
//! (`ordering.on_gap: hold`, contract §4): an event whose version is ahead
//! of its entity's next one waits here for the missing versions.
//!
//! [`Holdback`] is the table; [`crate::reorder`] decides when an event is
//! held and released. Each held event is also a changelog record (key
//! [`held_key`], value [`HeldRecord::encode`]), written in the transaction
//! that moves the input offset past it and removed (a tombstone) in the
//! transaction that emits it, so a held event survives a crash and is
//! emitted once.
//!
//! **The clock.** An event is held until its partition's *stream time* has
//! moved the reorder window past the stream time at which it was held.
//! Stream time is the highest record timestamp seen on the partition (as in
//! Kafka Streams), moved forward by the wall-clock time for which the
//! partition has had no record: a partition that falls idle still sees its
//! windows end, while one that is busy — catching up on a backlog after a
//! restart, say — is judged by its records' timestamps alone, so a
//! producer's reorder of a few milliseconds is put back in order however
//! late the processor reads it. (Counting the wall clock from the hold
//! instead would release events as gaps right after a long outage, just
//! before the missing versions, waiting in the backlog, are read.) Stream
//! time only grows, so the oldest held event is always the next to expire.
//! `replay` passes no wall clock and its records carry no timestamps, so
//! what it holds is released only by the missing versions, the bound, or
//! the end of the input: deterministic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Prefix of held-event keys in the changelog; entity keys never start
/// with a NUL byte.
pub const HELD_PREFIX: &[u8] = b"\0held\0";

/// The changelog key of a held event: [`HELD_PREFIX`], the version (8 bytes
/// big-endian), then the entity key.
pub fn held_key(entity_key: &[u8], version: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(HELD_PREFIX.len() + 8 + entity_key.len());
    k.extend_from_slice(HELD_PREFIX);
    k.extend_from_slice(&version.to_be_bytes());
    k.extend_from_slice(entity_key);
    k
}

/// The entity key and version of a held-event changelog key (without its
/// prefix).
pub fn split_held_key(rest: &[u8]) -> Option<(&[u8], i64)> {
    let (v, key) = rest.split_first_chunk::<8>()?;
    Some((key, i64::from_be_bytes(*v)))
}

/// A held input record, as it arrived, with what its release needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRecord {
    /// Input topic.
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The record's timestamp (outputs keep it).
    pub timestamp: Option<i64>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The partition's stream time when it was held.
    pub held_stream: i64,
    /// The wall clock (ms since the epoch) when it was held (for the age of
    /// the oldest held event).
    pub held_wall: i64,
}

/// Format byte of [`HeldRecord::encode`].
const FORMAT: u8 = 1;
/// Length of an absent key or value.
const ABSENT: u32 = u32::MAX;

impl HeldRecord {
    /// The changelog value: a format byte, then big-endian fields and
    /// length-prefixed bytes.
    pub fn encode(&self) -> Vec<u8> {
        let size = 64
            + self.topic.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.push(FORMAT);
        out.extend_from_slice(&self.held_stream.to_be_bytes());
        out.extend_from_slice(&self.held_wall.to_be_bytes());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.timestamp.unwrap_or(i64::MIN).to_be_bytes());
        bytes(&mut out, Some(self.topic.as_bytes()));
        bytes(&mut out, self.key.as_deref());
        bytes(&mut out, self.value.as_deref());
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (k, v) in &self.headers {
            bytes(&mut out, Some(k.as_bytes()));
            bytes(&mut out, Some(v));
        }
        out
    }

    /// Reads [`HeldRecord::encode`]'s output; `None` when it is not one.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        if r.take(1)? != [FORMAT] {
            return None;
        }
        let held_stream = r.i64()?;
        let held_wall = r.i64()?;
        let partition = i32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let offset = r.i64()?;
        let timestamp = Some(r.i64()?).filter(|t| *t != i64::MIN);
        let topic = Arc::from(std::str::from_utf8(r.bytes()??).ok()?);
        let key = r.bytes()?.map(<[u8]>::to_vec);
        let value = r.bytes()?.map(<[u8]>::to_vec);
        let n = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
        let mut headers = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let k = std::str::from_utf8(r.bytes()??).ok()?.to_owned();
            let v = r.bytes()??.to_vec();
            headers.push((k, v));
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(HeldRecord {
            topic,
            partition,
            offset,
            timestamp,
            key,
            value,
            headers,
            held_stream,
            held_wall,
        })
    }
}

fn bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&ABSENT.to_be_bytes()),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// Outer `None`: truncated; inner `None`: absent.
    fn bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        if n == ABSENT {
            return Some(None);
        }
        self.take(n as usize).map(Some)
    }
}

/// A held event with its place in the hold order.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    record: Arc<HeldRecord>,
}

/// What to put back when the open transaction is aborted.
#[derive(Debug)]
enum Undo {
    /// It was held: forget it.
    Unhold(Box<[u8]>, i64),
    /// It was released: hold it again, in its old place.
    Rehold(Box<[u8]>, i64, Entry),
}

/// Why a held event was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// The versions before it arrived: emitted in order.
    InOrder,
    /// Its reorder window expired: emitted as a gap.
    Timeout,
    /// The partition held more than `max_held_per_partition`: the oldest
    /// was emitted as a gap.
    Bound,
    /// `replay` reached the end of its input.
    EndOfInput,
}

impl Release {
    /// A stable label for metrics and summaries.
    pub fn label(self) -> &'static str {
        match self {
            Release::InOrder => "in_order",
            Release::Timeout => "timeout",
            Release::Bound => "bound",
            Release::EndOfInput => "end_of_input",
        }
    }
}

/// The held events of one partition, by entity and in hold order.
#[derive(Debug, Default)]
pub struct Holdback {
    /// Entity key → version → held event.
    entities: HashMap<Box<[u8]>, BTreeMap<i64, Entry>, foldhash::fast::RandomState>,
    /// Hold order: sequence → (entity key, version).
    order: BTreeMap<u64, (Box<[u8]>, i64)>,
    next_seq: u64,
    /// The highest record timestamp seen.
    stream_time: Option<i64>,
    /// The wall clock when the partition last had a record (or when the
    /// first expiry check after a restore ran): idle time counts from there.
    last_record_wall: Option<i64>,
    /// Changes since the last [`Holdback::commit`], when journaling.
    undo: Option<Vec<Undo>>,
    /// Stream time at the last commit, when journaling.
    committed_stream_time: Option<i64>,
}

impl Holdback {
    /// An empty table that journals its changes until
    /// [`Holdback::commit`], for [`Holdback::roll_back`] (the Kafka
    /// runtime's transactions).
    pub fn journaled() -> Self {
        Holdback {
            undo: Some(Vec::new()),
            ..Holdback::default()
        }
    }

    /// How many events are held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The partition's stream time: the highest record timestamp seen.
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// A record with timestamp `ts` was read at `wall` (the wall clock, if
    /// the caller reads one): stream time moves forward, idle time restarts.
    pub fn observe(&mut self, ts: Option<i64>, wall: Option<i64>) {
        if wall.is_some() {
            self.last_record_wall = wall;
        }
        if let Some(t) = ts.filter(|t| *t >= 0) {
            if self.stream_time.is_none_or(|s| t > s) {
                self.stream_time = Some(t);
            }
        }
    }

    /// The partition's input was paused (waiting for the registry) until
    /// `wall`: that wait is not idle time, its windows count from here.
    pub fn touch(&mut self, wall: i64) {
        self.last_record_wall = Some(wall);
    }

    /// Whether version `version` of entity `key` is held.
    pub fn contains(&self, key: &[u8], version: i64) -> bool {
        self.entities
            .get(key)
            .is_some_and(|vs| vs.contains_key(&version))
    }

    /// The lowest held version of an entity.
    pub fn first_version(&self, key: &[u8]) -> Option<i64> {
        self.entities
            .get(key)
            .and_then(|vs| vs.first_key_value())
            .map(|(v, _)| *v)
    }

    /// Holds an event; false (and nothing changes) when that version of
    /// the entity is held already.
    pub fn hold(&mut self, key: &[u8], version: i64, record: HeldRecord) -> bool {
        if self.contains(key, version) {
            return false;
        }
        self.push(key, version, record);
        if let Some(u) = &mut self.undo {
            u.push(Undo::Unhold(key.into(), version));
        }
        true
    }

    /// Adds an event at the end of the hold order.
    fn push(&mut self, key: &[u8], version: i64, record: HeldRecord) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.insert(
            key.into(),
            version,
            Entry {
                seq,
                record: Arc::new(record),
            },
        );
    }

    fn insert(&mut self, key: Box<[u8]>, version: i64, entry: Entry) {
        self.order.insert(entry.seq, (key.clone(), version));
        self.entities.entry(key).or_default().insert(version, entry);
    }

    fn remove(&mut self, key: &[u8], version: i64) -> Option<Entry> {
        let vs = self.entities.get_mut(key)?;
        let entry = vs.remove(&version)?;
        if vs.is_empty() {
            self.entities.remove(key);
        }
        self.order.remove(&entry.seq);
        Some(entry)
    }

    /// A held event, left where it is (a release reads it, and takes it
    /// out only once it was processed: a failed release leaves it held in
    /// its place).
    pub fn get(&self, key: &[u8], version: i64) -> Option<Arc<HeldRecord>> {
        self.entities
            .get(key)?
            .get(&version)
            .map(|e| Arc::clone(&e.record))
    }

    /// Takes a held event out (it was released).
    pub fn take(&mut self, key: &[u8], version: i64) -> Option<Arc<HeldRecord>> {
        let entry = self.remove(key, version)?;
        let record = entry.record.clone();
        if let Some(u) = &mut self.undo {
            u.push(Undo::Rehold(key.into(), version, entry));
        }
        Some(record)
    }

    /// The oldest held event (the first held of those still held).
    pub fn oldest(&self) -> Option<(&[u8], i64, &HeldRecord)> {
        let (_, (key, version)) = self.order.first_key_value()?;
        let entry = self.entities.get(key)?.get(version)?;
        Some((key, *version, &entry.record))
    }

    /// The oldest held event if its window of `window_ms` has passed in
    /// stream time, counting, when `wall_now` is given, the wall-clock time
    /// since the partition last had a record.
    pub fn expired(&mut self, window_ms: i64, wall_now: Option<i64>) -> Option<(Box<[u8]>, i64)> {
        let idle = match wall_now {
            Some(w) => (w - *self.last_record_wall.get_or_insert(w)).max(0),
            None => 0,
        };
        let (key, version, r) = self.oldest()?;
        let now = self.stream_time.unwrap_or(0).saturating_add(idle);
        (now >= r.held_stream.saturating_add(window_ms)).then(|| (key.into(), version))
    }

    /// The open transaction committed: its changes stay.
    pub fn commit(&mut self) {
        if let Some(u) = &mut self.undo {
            u.clear();
            self.committed_stream_time = self.stream_time;
        }
    }

    /// The open transaction was aborted: what it held is forgotten, what
    /// it released is held again, stream time goes back.
    pub fn roll_back(&mut self) {
        let Some(mut undo) = self.undo.take() else {
            return;
        };
        while let Some(u) = undo.pop() {
            match u {
                Undo::Unhold(k, v) => {
                    self.remove(&k, v);
                }
                Undo::Rehold(k, v, e) => self.insert(k, v, e),
            }
        }
        self.undo = Some(undo);
        self.stream_time = self.committed_stream_time;
    }

    /// Restores a held event from its changelog record (`rest`: the key
    /// after [`HELD_PREFIX`]); a tombstone releases it. False for a record
    /// that is not one.
    pub fn apply(&mut self, rest: &[u8], value: Option<&[u8]>) -> bool {
        let Some((key, version)) = split_held_key(rest) else {
            return false;
        };
        match value {
            None => {
                self.remove(key, version);
                true
            }
            Some(v) => match HeldRecord::decode(v) {
                Some(record) => {
                    // A later record of the same key replaces the earlier.
                    self.remove(key, version);
                    self.stream_time = self.stream_time.max(Some(record.held_stream));
                    self.committed_stream_time = self.stream_time;
                    self.push(key, version, record);
                    true
                }
                None => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, held_stream: i64) -> HeldRecord {
        HeldRecord {
            topic: Arc::from("events.raw"),
            partition: 3,
            offset,
            timestamp: Some(held_stream),
            key: Some(b"u1".to_vec()),
            value: Some(b"{\"x\":1}".to_vec()),
            headers: vec![("h".into(), b"v".to_vec()), ("e".into(), Vec::new())],
            held_stream,
            held_wall: 1_000 + held_stream,
        }
    }

    #[test]
    fn held_records_round_trip_through_the_changelog_encoding() {
        let r = record(42, 7);
        assert_eq!(HeldRecord::decode(&r.encode()), Some(r.clone()));
        let bare = HeldRecord {
            timestamp: None,
            key: None,
            value: None,
            headers: Vec::new(),
            ..r
        };
        let e = bare.encode();
        assert_eq!(HeldRecord::decode(&e), Some(bare));
        for cut in 0..e.len() {
            assert_eq!(HeldRecord::decode(&e[..cut]), None, "cut at {cut}");
        }
        let k = held_key(b"user/u1", 9);
        assert_eq!(
            split_held_key(&k[HELD_PREFIX.len()..]),
            Some((&b"user/u1"[..], 9))
        );
    }

    #[test]
    fn the_oldest_expires_first_by_stream_time_and_idle_time() {
        let mut h = Holdback::default();
        h.observe(Some(100), None);
        assert!(h.hold(b"user/a", 3, record(1, 100)));
        assert!(
            !h.hold(b"user/a", 3, record(2, 100)),
            "a held version twice"
        );
        assert!(h.hold(b"user/b", 5, record(3, 150)));
        assert_eq!(h.len(), 2);
        assert_eq!(h.expired(1_000, None), None);
        h.observe(Some(1_099), None);
        assert_eq!(h.expired(1_000, None), None);
        h.observe(Some(50), None); // late records do not move stream time back
        h.observe(Some(1_100), None);
        assert_eq!(h.expired(1_000, None), Some((b"user/a"[..].into(), 3)));
        // An idle partition: the wall clock since its last record counts.
        let mut idle = Holdback::default();
        idle.observe(Some(100), Some(50_000));
        idle.hold(b"user/a", 3, record(1, 100));
        assert_eq!(idle.expired(1_000, Some(50_999)), None);
        assert_eq!(
            idle.expired(1_000, Some(51_000)),
            Some((b"user/a"[..].into(), 3))
        );
        // A busy partition (a restart's backlog): 850 s passed on the wall
        // clock, but records kept coming with timestamps short of the
        // window, so only the idle time since the last one counts.
        let mut busy = Holdback::default();
        busy.observe(Some(100), Some(50_000));
        busy.hold(b"user/a", 3, record(1, 100));
        busy.observe(Some(900), Some(900_000));
        assert_eq!(busy.expired(1_000, Some(900_199)), None);
        assert!(busy.expired(1_000, Some(900_200)).is_some());
        // Restored: idle time counts from the first check.
        let mut restored = Holdback::default();
        let k = held_key(b"user/a", 3);
        restored.apply(&k[HELD_PREFIX.len()..], Some(&record(1, 100).encode()));
        assert_eq!(restored.expired(1_000, Some(7_000_000)), None);
        assert_eq!(restored.expired(1_000, Some(7_000_999)), None);
        assert_eq!(
            restored.expired(1_000, Some(7_001_000)),
            Some((b"user/a"[..].into(), 3))
        );
    }

    #[test]
    fn an_abort_puts_back_what_the_transaction_held_and_released() {
        let mut h = Holdback::journaled();
        h.observe(Some(10), None);
        h.hold(b"user/a", 3, record(1, 10));
        h.commit();
        h.observe(Some(20), None);
        h.hold(b"user/b", 4, record(2, 20));
        assert!(h.take(b"user/a", 3).is_some());
        assert_eq!(h.len(), 1);
        h.roll_back();
        assert!(h.contains(b"user/a", 3));
        assert!(!h.contains(b"user/b", 4));
        assert_eq!(h.stream_time(), Some(10));
        assert_eq!(
            h.oldest().map(|(k, v, _)| (k.to_vec(), v)),
            Some((b"user/a".to_vec(), 3))
        );
        // Reading a held event (a release that may fail) leaves it in its
        // place.
        h.hold(b"user/c", 9, record(3, 10));
        assert!(h.get(b"user/a", 3).is_some());
        assert_eq!(h.oldest().map(|(_, v, _)| v), Some(3));
    }

    #[test]
    fn changelog_records_restore_held_events_in_hold_order() {
        let mut h = Holdback::default();
        let a = held_key(b"user/a", 3);
        let b = held_key(b"user/b", 4);
        assert!(h.apply(&a[HELD_PREFIX.len()..], Some(&record(1, 10).encode())));
        assert!(h.apply(&b[HELD_PREFIX.len()..], Some(&record(2, 20).encode())));
        assert!(h.apply(&a[HELD_PREFIX.len()..], None));
        assert!(!h.apply(b"short", None));
        assert!(!h.apply(&b[HELD_PREFIX.len()..], Some(b"garbage")));
        assert_eq!(h.len(), 1);
        assert_eq!(h.stream_time(), Some(20));
        assert_eq!(h.first_version(b"user/b"), Some(4));
    }
}
