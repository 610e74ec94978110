//! The version store: last accepted `entity_version` per entity key.
//!
//! The runtime backs it with a compacted changelog topic (each update the
//! pipeline reports is written there in the same transaction as the outputs)
//! and restores it before a partition is processed; [`MemoryStore`] is the
//! in-memory table both use.

use std::collections::HashMap;

/// Last accepted versions by entity key (see [`super::entity_key`]).
pub trait VersionStore {
    /// The last accepted version of an entity.
    fn last_version(&self, key: &[u8]) -> Option<i64>;
    /// Records a newly accepted version.
    fn record(&mut self, key: &[u8], version: i64);
    /// How many entities are tracked.
    fn len(&self) -> usize;
    /// True when no entity is tracked.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hash map from entity key to version: about 60 bytes plus the key per
/// entity. Hashed with foldhash (keyed per process, so input cannot choose
/// collisions), which costs a fraction of SipHash on these short keys.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    map: HashMap<Box<[u8]>, i64, foldhash::fast::RandomState>,
}

impl MemoryStore {
    /// Stops tracking an entity (a rolled-back first sight, or a changelog
    /// tombstone).
    pub fn forget(&mut self, key: &[u8]) {
        self.map.remove(key);
    }

    /// Records a newly accepted version and returns the one it replaced,
    /// with one lookup.
    pub fn replace(&mut self, key: &[u8], version: i64) -> Option<i64> {
        match self.map.get_mut(key) {
            Some(v) => Some(std::mem::replace(v, version)),
            None => {
                self.map.insert(key.into(), version);
                None
            }
        }
    }
}

impl VersionStore for MemoryStore {
    fn last_version(&self, key: &[u8]) -> Option<i64> {
        self.map.get(key).copied()
    }

    fn record(&mut self, key: &[u8], version: i64) {
        self.replace(key, version);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
