//! What the engine runs with: the output topics, the output format and the
//! policies for gaps and tier mismatches ([`EngineConfig`]), built from the
//! topology ([`super::Topology`]) or by hand in tests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::adapt::Adapter;
use crate::classify::Rules;
use crate::record::{Tier, TopicName};
use crate::schema::SubjectNaming;

/// What happens to an event that skips versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapPolicy {
    /// Emit it with an `x-version-gap` header (default).
    #[default]
    Emit,
    /// Dead-letter it with reason `version_gap`; the entity's state stays.
    DeadLetter,
    /// Hold it for the reorder window ([`HoldConfig`]): released in version
    /// order when the missing versions arrive, emitted as a gap when the
    /// window expires.
    Hold,
}

/// What happens to an event older than its entity's last emitted version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// Count it and emit nothing (default).
    #[default]
    Skip,
    /// Dead-letter it with reason `stale_version`.
    DeadLetter,
}

/// The reorder window of `on_gap: hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldConfig {
    /// How long an event is held, in stream time: the input partition's
    /// highest record timestamp, moved forward by the wall-clock time for
    /// which the partition has had no record (see [`crate::order::hold`]).
    pub window_ms: i64,
    /// At most this many events are held per partition; beyond it the
    /// oldest are emitted as gaps.
    pub max_held: usize,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            window_ms: 5_000,
            max_held: 10_000,
        }
    }
}

/// What happens to an event holding data above its declared tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchPolicy {
    /// Count and log it, and route it: projection removes what each tier may
    /// not see whatever the declaration says (default).
    #[default]
    Emit,
    /// Dead-letter it with reason `tier_mismatch` instead of routing it.
    DeadLetter,
}

/// How tier records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Avro in Confluent wire format, with the derived schema registered
    /// under `<tier topic>-<record name>` (default).
    #[default]
    Avro,
    /// Plain JSON of the projected value.
    Json,
}

/// The topics records go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Tier topics, indexed by [`Tier::index`].
    pub tiers: [TopicName; 3],
    /// The dead-letter topic (restricted: it holds raw PII).
    pub dead_letter: TopicName,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            tiers: [
                TopicName::new("events.public"),
                TopicName::new("events.internal"),
                TopicName::new("events.restricted"),
            ],
            dead_letter: TopicName::new("events.dlq"),
        }
    }
}

/// Everything the engine needs to know, built from the topology.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Output topics.
    pub topics: Topics,
    /// Value format of tier records.
    pub format: OutputFormat,
    /// Gap handling.
    pub on_gap: GapPolicy,
    /// The reorder window, for `on_gap: hold`.
    pub hold: HoldConfig,
    /// Stale-version handling.
    pub on_stale: StalePolicy,
    /// Declared-tier mismatch handling.
    pub on_tier_mismatch: MismatchPolicy,
    /// Classification rules: the Confluent tag map and compliance's
    /// overrides.
    pub rules: Rules,
    /// JSON `event_type` → subject.
    pub subjects: SubjectNaming,
    /// Event types limited to some tiers; all others reach all three.
    pub tier_limits: HashMap<String, HashSet<Tier, Fold>, Fold>,
    /// Input topics whose records are a producer's own JSON events, with the
    /// adapter that maps them onto the canonical envelope. Other topics
    /// carry canonical events.
    pub adapters: HashMap<Arc<str>, Arc<Adapter>, Fold>,
}

/// The hasher of the maps looked up for every event: foldhash, as the
/// engine's own maps, not SipHash (about 200 instructions an event). Their
/// keys come from the topology; an event only looks one up.
type Fold = foldhash::fast::RandomState;

impl EngineConfig {
    /// Per tier ([`Tier::index`]), whether events of `event_type` reach it:
    /// all three tiers, unless the topology limits the event type to some
    /// (`event_types.<type>.tiers`).
    pub fn reaches(&self, event_type: &str) -> [bool; 3] {
        let limit = self.tier_limits.get(event_type);
        Tier::ALL.map(|t| limit.is_none_or(|l| l.contains(&t)))
    }
}
