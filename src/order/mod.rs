//! Order per entity: the last accepted `entity_version` per (`entity_type`,
//! `entity_id`) decides each event's verdict — the next version is
//! accepted, the same one is a duplicate, a lower one is stale, and a jump
//! is a gap.
//!
//! Producers without an entity version are ordered by what their adapter
//! declares ([`crate::record::OrderBy`]): a stream-wide sequence
//! ([`sequence_verdict`], its own keyspace [`sequence_key`]) or nothing
//! ([`Verdict::Unordered`]).

pub mod hold;
pub mod store;

pub use store::{MemoryStore, VersionStore};

/// The ordering verdict for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// First sight of the entity, or `v == last + 1`.
    Accepted,
    /// `v == last`: already emitted; not emitted again.
    Duplicate,
    /// `v < last`: older than what was emitted; not emitted.
    Stale,
    /// `v > last + 1`: `missing` versions were skipped.
    Gap {
        /// How many versions are missing between the last and this one.
        missing: i64,
    },
    /// The event's topology declares no ordering for it: routed as it came,
    /// without a version-store write.
    Unordered,
}

impl Verdict {
    /// A stable label for metrics and summaries.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Duplicate => "duplicate",
            Verdict::Stale => "stale",
            Verdict::Gap { .. } => "gap",
            Verdict::Unordered => "unordered",
        }
    }
}

/// The verdict for version `v` given the last accepted version.
pub fn verdict(last: Option<i64>, v: i64) -> Verdict {
    match last {
        None => Verdict::Accepted,
        Some(l) if l.checked_add(1) == Some(v) => Verdict::Accepted,
        Some(l) if v == l => Verdict::Duplicate,
        Some(l) if v < l => Verdict::Stale,
        Some(l) => Verdict::Gap {
            missing: v.saturating_sub(l).saturating_sub(1),
        },
    }
}

/// The verdict for sequence number `seq` given the last accepted one, for a
/// sequence shared across entities: per entity it only increases, with
/// holes where other entities' events were numbered, so any increase is
/// accepted; equal is a duplicate and lower is stale.
pub fn sequence_verdict(last: Option<i64>, seq: i64) -> Verdict {
    match last {
        Some(l) if seq == l => Verdict::Duplicate,
        Some(l) if seq < l => Verdict::Stale,
        _ => Verdict::Accepted,
    }
}

/// The state key of an entity ordered by a sequence: `keyspace`, `:`, then
/// [`entity_key`]. Entity types never hold `:`, so these keys never meet
/// entity-version keys, and two adapters' sequences never meet either.
pub fn sequence_key(keyspace: &str, entity_type: &str, entity_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(keyspace.len() + 2 + entity_type.len() + entity_id.len());
    k.extend_from_slice(keyspace.as_bytes());
    k.push(b':');
    k.extend_from_slice(&entity_key(entity_type, entity_id));
    k
}

/// The state key of an entity: `entity_type`, `/`, `entity_id`. Entity types
/// never hold `/`, so the key splits back unambiguously; it is also the
/// changelog record's key.
pub fn entity_key(entity_type: &str, entity_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(entity_type.len() + 1 + entity_id.len());
    k.extend_from_slice(entity_type.as_bytes());
    k.push(b'/');
    k.extend_from_slice(entity_id.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn verdicts_by_example() {
        assert_eq!(verdict(None, 7), Verdict::Accepted);
        assert_eq!(verdict(Some(3), 4), Verdict::Accepted);
        assert_eq!(verdict(Some(3), 3), Verdict::Duplicate);
        assert_eq!(verdict(Some(3), 1), Verdict::Stale);
        assert_eq!(verdict(Some(3), 6), Verdict::Gap { missing: 2 });
        assert_eq!(verdict(Some(i64::MAX), i64::MAX), Verdict::Duplicate);
    }

    #[test]
    fn sequences_only_increase_and_never_gap() {
        assert_eq!(sequence_verdict(None, 42), Verdict::Accepted);
        assert_eq!(sequence_verdict(Some(42), 97), Verdict::Accepted);
        assert_eq!(sequence_verdict(Some(42), 42), Verdict::Duplicate);
        assert_eq!(sequence_verdict(Some(42), 7), Verdict::Stale);
        assert_eq!(
            sequence_key("auth_identity", "user", "u1"),
            b"auth_identity:user/u1"
        );
    }

    /// The obviously-right model: a list of (key, last) pairs searched linearly.
    #[derive(Default)]
    struct Model(Vec<(u8, i64)>);

    impl Model {
        fn apply(&mut self, key: u8, v: i64, gaps_advance: bool) -> &'static str {
            let pos = self.0.iter().position(|(k, _)| *k == key);
            let label = match pos.map(|p| self.0[p].1) {
                None => "accepted",
                Some(l) if v == l + 1 => "accepted",
                Some(l) if v == l => "duplicate",
                Some(l) if v < l => "stale",
                Some(_) => "gap",
            };
            let advance = label == "accepted" || (label == "gap" && gaps_advance);
            if advance {
                match pos {
                    Some(p) => self.0[p].1 = v,
                    None => self.0.push((key, v)),
                }
            }
            label
        }
    }

    proptest! {
        /// The verdict function plus the memory store agree with the model on
        /// any interleaving of entities and versions.
        #[test]
        fn store_and_verdict_match_the_model(events in proptest::collection::vec((0u8..6, 1i64..12), 0..300)) {
            let mut store = MemoryStore::default();
            let mut model = Model::default();
            let mut last_seen: HashMap<u8, i64> = HashMap::new();
            for (k, v) in events {
                let key = entity_key("user", &k.to_string());
                let got = verdict(store.last_version(&key), v);
                if matches!(got, Verdict::Accepted | Verdict::Gap { .. }) {
                    store.record(&key, v);
                    last_seen.insert(k, v);
                }
                prop_assert_eq!(got.label(), model.apply(k, v, true));
            }
            prop_assert_eq!(store.len(), last_seen.len());
            for (k, v) in last_seen {
                prop_assert_eq!(store.last_version(&entity_key("user", &k.to_string())), Some(v));
            }
        }
    }
}
