//! The reorder window (`ordering.on_gap: hold`, contract §4) around the
//! engine: an event the engine finds ahead of its entity's next version is
//! held ([`Holdback`]); when the missing versions arrive the held events
//! follow them in version order; when the window expires, or the
//! partition holds more than its bound, the oldest are emitted as gaps.
//!
//! [`Reorder::process`] is what the Kafka runtime and `replay` call per
//! input record instead of [`Engine::process`]: one record in, the
//! [`Step`]s it causes out — its own outcome, then any held events it
//! releases, each with the changelog change that goes in the same
//! transaction. Without `hold` it is exactly one step, the engine's
//! outcome.
//!
//! A release is processed by the engine again from the held record, with
//! gaps emitted ([`Gaps::Emit`]): an event whose predecessor arrived is
//! accepted, one whose window expired is a gap with the `x-version-gap`
//! header, and one whose version was emitted meanwhile is a duplicate or
//! stale, as the contract says.

use std::sync::Arc;

use crate::order::hold::{held_key, HeldRecord, Holdback, Release};
use crate::order::{Verdict, VersionStore};
use crate::pipeline::{Engine, EngineError, Gaps};
use crate::record::{Outcome, RawRecord, Source};
use crate::schema::SchemaLookup;

/// One thing an input record caused.
#[derive(Debug)]
pub struct Step {
    /// The input record it is about (a released event's own).
    pub source: Source,
    /// That record's timestamp (outputs keep it).
    pub timestamp: Option<i64>,
    /// What the engine decided ([`Outcome::Held`] for an event now held).
    pub outcome: Outcome,
    /// The changelog change for the held-event table.
    pub held: HeldChange,
}

/// A change of the held-event table, for the changelog.
#[derive(Debug, PartialEq, Eq)]
pub enum HeldChange {
    /// None.
    None,
    /// The event was held: write this changelog record.
    Held {
        /// Changelog key ([`held_key`]).
        key: Vec<u8>,
        /// Changelog value ([`HeldRecord::encode`]).
        value: Vec<u8>,
    },
    /// A held event was released: write a tombstone for its key.
    Released {
        /// Changelog key ([`held_key`]).
        key: Vec<u8>,
        /// Why it was released.
        how: Release,
    },
}

/// The engine with one partition's version store and held events.
pub struct Reorder<'a> {
    /// The pipeline.
    pub engine: &'a mut Engine,
    /// The partition's versions.
    pub store: &'a mut dyn VersionStore,
    /// The partition's held events.
    pub held: &'a mut Holdback,
    /// Schema lookups.
    pub registry: &'a mut dyn SchemaLookup,
}

impl std::fmt::Debug for Reorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reorder")
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Reorder<'_> {
    /// Processes one input record (with its timestamp; `wall_ms`, the wall
    /// clock in ms since the epoch, or `None` for a deterministic run),
    /// appending the steps it causes to `out`.
    ///
    /// # Errors
    /// As [`Engine::process`]. When `out` is still empty the record was not
    /// processed and nothing changed; otherwise the steps in `out` are
    /// complete (the record's own first) and a held event whose release
    /// failed stays held, to be released when its window expires.
    pub fn process(
        &mut self,
        raw: &RawRecord<'_>,
        timestamp: Option<i64>,
        wall_ms: Option<i64>,
        out: &mut Vec<Step>,
    ) -> Result<(), EngineError> {
        self.held.observe(timestamp, wall_ms);
        let outcome = self.engine.process(raw, self.store, self.registry)?;
        let step = |outcome, held| Step {
            source: raw.source.clone(),
            timestamp,
            outcome,
            held,
        };
        match outcome {
            Outcome::Held { key, version } => {
                let record = HeldRecord {
                    topic: raw.source.topic.clone(),
                    partition: raw.source.partition,
                    offset: raw.source.offset,
                    timestamp,
                    key: raw.key.map(<[u8]>::to_vec),
                    value: raw.value.map(<[u8]>::to_vec),
                    headers: raw.headers.to_vec(),
                    held_stream: self.held.stream_time().unwrap_or(0),
                    held_wall: wall_ms.unwrap_or(0),
                };
                let value = record.encode();
                if !self.held.hold(&key, version, record) {
                    // The same version is held already: the first one wins.
                    out.push(step(Outcome::Skipped(Verdict::Duplicate), HeldChange::None));
                } else {
                    let change = HeldChange::Held {
                        key: held_key(&key, version),
                        value,
                    };
                    out.push(step(Outcome::Held { key, version }, change));
                    let max = self.engine.config().hold.max_held;
                    while self.held.len() > max {
                        let Some((k, v)) = self.held.oldest().map(|(k, v, _)| (k.to_vec(), v))
                        else {
                            break;
                        };
                        let before = self.held.len();
                        self.release_up_to(&k, v, Release::Bound, out)?;
                        if self.held.len() >= before {
                            break;
                        }
                    }
                }
            }
            Outcome::Routed(r) => {
                // The key is copied only where something is held.
                let next = r
                    .state
                    .as_ref()
                    .filter(|_| !self.held.is_empty())
                    .map(|s| (s.key.clone(), s.version));
                out.push(step(Outcome::Routed(r), HeldChange::None));
                if let Some((key, version)) = next {
                    self.release_following(&key, version, out)?;
                }
            }
            other => out.push(step(other, HeldChange::None)),
        }
        self.expire(wall_ms, out)
    }

    /// Emits, as gaps, the held events whose window has expired (and the
    /// held events that then follow in order).
    ///
    /// # Errors
    /// As [`Reorder::process`]; the steps in `out` are complete.
    pub fn expire(&mut self, wall_ms: Option<i64>, out: &mut Vec<Step>) -> Result<(), EngineError> {
        let window = self.engine.config().hold.window_ms;
        while let Some((key, version)) = self.held.expired(window, wall_ms) {
            let before = self.held.len();
            self.release_up_to(&key, version, Release::Timeout, out)?;
            if self.held.len() >= before {
                break;
            }
        }
        Ok(())
    }

    /// Emits every held event, oldest first (`replay`'s end of input), as
    /// the windows ending would: each release takes the oldest held event,
    /// its entity's lower held versions before it and those that then
    /// follow in order, and leaves the entity's later ones to their turn.
    ///
    /// # Errors
    /// As [`Reorder::process`].
    pub fn release_all(&mut self, out: &mut Vec<Step>) -> Result<(), EngineError> {
        while let Some((key, version, _)) = self.held.oldest() {
            let key = key.to_vec();
            let before = self.held.len();
            self.release_up_to(&key, version, Release::EndOfInput, out)?;
            if self.held.len() >= before {
                break;
            }
        }
        Ok(())
    }

    /// Releases the entity's held versions up to `version`, lowest first
    /// (a lower one held later must not turn stale behind a higher one),
    /// then those that follow in order.
    fn release_up_to(
        &mut self,
        key: &[u8],
        version: i64,
        how: Release,
        out: &mut Vec<Step>,
    ) -> Result<(), EngineError> {
        while let Some(v) = self.held.first_version(key).filter(|v| *v <= version) {
            if !self.release(key, v, how, out)? {
                break;
            }
        }
        match self.store.last_version(key) {
            Some(last) => self.release_following(key, last, out),
            None => Ok(()),
        }
    }

    /// After the entity's store moved to `version`: releases the held
    /// versions that now follow in order.
    fn release_following(
        &mut self,
        key: &[u8],
        version: i64,
        out: &mut Vec<Step>,
    ) -> Result<(), EngineError> {
        let mut last = version;
        while let Some(v) = self
            .held
            .first_version(key)
            .filter(|v| *v <= last.saturating_add(1))
        {
            if !self.release(key, v, Release::InOrder, out)? {
                break;
            }
            // A release that was dead-lettered leaves the version where it
            // was: its successors wait for their window.
            last = self.store.last_version(key).unwrap_or(last);
        }
        Ok(())
    }

    /// Releases one held event; false if it was not held (the loops
    /// above then stop rather than ask again).
    fn release(
        &mut self,
        key: &[u8],
        version: i64,
        how: Release,
        out: &mut Vec<Step>,
    ) -> Result<bool, EngineError> {
        let Some(record) = self.held.get(key, version) else {
            return Ok(false);
        };
        let source = Source {
            topic: Arc::clone(&record.topic),
            partition: record.partition,
            offset: record.offset,
        };
        let raw = RawRecord {
            source: &source,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: (&record.headers).into(),
        };
        let outcome = self
            .engine
            .process_as(&raw, self.store, self.registry, Gaps::Emit)?;
        self.held.take(key, version);
        out.push(Step {
            source: source.clone(),
            timestamp: record.timestamp,
            outcome,
            held: HeldChange::Released {
                key: held_key(key, version),
                how,
            },
        });
        Ok(true)
    }
}
