//! Telemetry as named events: each function here logs *and* counts, with
//! fixed, low-cardinality labels (`topic` and `partition` of the
//! configuration, `tier`, `reason`, `verdict`, `outcome`). The Prometheus
//! registry is injected, so tests read the counters they caused. No payload
//! value ever reaches a label or a log line: the functions take only names
//! from the schema and the topology, codes, counts and durations.
//!
//! [`serve`] exposes `/metrics` (ours, `privacy_router_build_info` and the
//! standard `process_*` metrics), `/livez` and `/healthz` (the process
//! lives) and `/readyz` (joined the group, every assigned partition's state
//! restored).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::order::hold::Release;
use crate::order::Verdict;
use crate::record::{Reason, Refusal, Rejection, Routed, Tier};

/// Metric names, as scraped.
pub mod names {
    /// Input records read, by input topic.
    pub const CONSUMED: &str = "privacy_router_records_consumed_total";
    /// Input records whose outcome is committed (their offsets with it).
    pub const COMMITTED: &str = "privacy_router_input_records_committed_total";
    /// Tier records produced (committed with their transaction), by tier.
    pub const PRODUCED: &str = "privacy_router_records_produced_total";
    /// Dead letters produced, by reason code.
    pub const DEAD_LETTERS: &str = "privacy_router_dead_letters_total";
    /// Ordering verdicts of valid events, by verdict.
    pub const ORDERING: &str = "privacy_router_ordering_total";
    /// Fields removed or pseudonymised in tier records, by tier.
    pub const REDACTED: &str = "privacy_router_fields_redacted_total";
    /// Events holding data above their declared `privacy_tier`.
    pub const TIER_MISMATCHES: &str = "privacy_router_tier_mismatches_total";
    /// Input records skipped because a predecessor's visible transaction
    /// already processed them (see the runtime's resume markers).
    pub const REPLAYED: &str = "privacy_router_replayed_records_skipped_total";
    /// Time the engine spent on one record, in seconds.
    pub const PROCESS_SECONDS: &str = "privacy_router_process_seconds";
    /// Transactions (or at-least-once commits), by outcome.
    pub const TRANSACTIONS: &str = "privacy_router_transactions_total";
    /// Time to commit one transaction, in seconds.
    pub const COMMIT_SECONDS: &str = "privacy_router_commit_seconds";
    /// Consumer lag per input partition, from librdkafka statistics.
    pub const CONSUMER_LAG: &str = "privacy_router_consumer_lag";
    /// Entities in the version store of this instance.
    pub const ENTITIES: &str = "privacy_router_entities";
    /// Changelog records read while restoring partitions.
    pub const RESTORED: &str = "privacy_router_changelog_records_restored_total";
    /// Schema lookups, by result (`hit` in the engine's cache, `miss` went
    /// to the registry).
    pub const REGISTRY_LOOKUPS: &str = "privacy_router_registry_lookups_total";
    /// Registry calls that failed, by kind (`unavailable`, `rejected`).
    pub const REGISTRY_ERRORS: &str = "privacy_router_registry_errors_total";
    /// Partitions assigned to this instance.
    pub const ASSIGNED: &str = "privacy_router_assigned_partitions";
    /// Derived tier schemas the registry refused (409 incompatible, 422
    /// invalid), by tier: the events that need them are dead-lettered as
    /// `derived_schema_rejected` until the subject accepts them.
    pub const DERIVED_REFUSED: &str = "privacy_router_derived_schemas_refused_total";
    /// Always 1, labelled with the build: `version` (the crate's) and
    /// `librdkafka` (the bundled client library's).
    pub const BUILD_INFO: &str = "privacy_router_build_info";
    /// 1 when `/readyz` would answer 200, else 0 (set at each scrape), so
    /// an alert can watch readiness.
    pub const READY: &str = "privacy_router_ready";
    /// Events held for the reorder window (`on_gap: hold`), in total.
    pub const HELD: &str = "privacy_router_held_events_total";
    /// Held events released, by why (`in_order`, `timeout`, `bound`).
    pub const RELEASED: &str = "privacy_router_held_events_released_total";
    /// Events held now.
    pub const HELD_NOW: &str = "privacy_router_held_events";
    /// Age of the oldest held event, per stream thread.
    pub const HELD_OLDEST: &str = "privacy_router_held_oldest_age_seconds";
    /// 1 while the NATS input's client is connected, 0 while it is not, per
    /// stream (only on an instance that has read it).
    pub const NATS_CONNECTED: &str = "privacy_router_nats_connected";

    /// Every metric of ours, for the checks of `deploy/` (alert rules and
    /// dashboard): labelled ones have no series until a label value is
    /// seen, so a fresh registry does not list them all.
    pub const ALL: &[&str] = &[
        CONSUMED,
        COMMITTED,
        PRODUCED,
        DEAD_LETTERS,
        ORDERING,
        REDACTED,
        TIER_MISMATCHES,
        REPLAYED,
        PROCESS_SECONDS,
        TRANSACTIONS,
        COMMIT_SECONDS,
        CONSUMER_LAG,
        ENTITIES,
        RESTORED,
        REGISTRY_LOOKUPS,
        REGISTRY_ERRORS,
        ASSIGNED,
        DERIVED_REFUSED,
        BUILD_INFO,
        READY,
        HELD,
        RELEASED,
        HELD_NOW,
        HELD_OLDEST,
        NATS_CONNECTED,
    ];
}

/// Every metric of the processor, registered in one injected registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    consumed: IntCounterVec,
    committed_inputs: IntCounter,
    produced: [IntCounter; 3],
    dead_letters: IntCounterVec,
    ordering: IntCounterVec,
    redacted: [IntCounter; 3],
    tier_mismatches: IntCounter,
    replayed: IntCounter,
    process_seconds: Histogram,
    transactions: IntCounterVec,
    commit_seconds: HistogramVec,
    consumer_lag: IntGaugeVec,
    entities: IntGauge,
    restored: IntCounter,
    registry_lookups: IntCounterVec,
    registry_errors: IntCounterVec,
    assigned: IntGauge,
    derived_refused: [IntCounter; 3],
    ready: IntGauge,
    held: IntCounter,
    released: [IntCounter; 3],
    held_now: IntGauge,
    held_oldest: GaugeVec,
    nats_connected: IntGaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Metrics {
    /// Registers every metric in `registry`.
    ///
    /// # Panics
    /// When the registry already holds metrics of these names.
    pub fn new(registry: Registry) -> Self {
        let r = &registry;
        let produced = counter_vec(
            r,
            names::PRODUCED,
            "Tier records produced, by tier.",
            &["tier"],
        );
        let redacted = counter_vec(
            r,
            names::REDACTED,
            "Fields removed or pseudonymised in tier records, by tier.",
            &["tier"],
        );
        let per_tier = |v: &IntCounterVec| Tier::ALL.map(|t| v.with_label_values(&[t.as_str()]));
        let dead_letters = counter_vec(
            r,
            names::DEAD_LETTERS,
            "Dead letters, by reason code.",
            &["reason"],
        );
        let ordering = counter_vec(
            r,
            names::ORDERING,
            "Ordering verdicts, by verdict.",
            &["verdict"],
        );
        let transactions = counter_vec(
            r,
            names::TRANSACTIONS,
            "Transactions (or at-least-once commits), by outcome.",
            &["outcome"],
        );
        let registry_lookups = counter_vec(
            r,
            names::REGISTRY_LOOKUPS,
            "Schema lookups, by result.",
            &["result"],
        );
        let registry_errors = counter_vec(
            r,
            names::REGISTRY_ERRORS,
            "Failed registry calls, by kind.",
            &["kind"],
        );
        // Every label value is known up front: create the series so a scrape
        // shows zeros instead of missing series.
        for reason in Reason::ALL {
            dead_letters.with_label_values(&[reason.code()]);
        }
        for v in VERDICT_LABELS {
            ordering.with_label_values(&[v]);
        }
        for o in ["committed", "aborted"] {
            transactions.with_label_values(&[o]);
        }
        for o in ["hit", "miss"] {
            registry_lookups.with_label_values(&[o]);
        }
        for o in ["unavailable", "refused", "rejected"] {
            registry_errors.with_label_values(&[o]);
        }
        let process_seconds = Histogram::with_opts(
            HistogramOpts::new(names::PROCESS_SECONDS, "Engine time per record.").buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(process_seconds.clone()))
            .expect("registered once");
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new(names::COMMIT_SECONDS, "Time to commit, by outcome.").buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(commit_seconds.clone()))
            .expect("registered once");
        let build_info = IntGaugeVec::new(
            Opts::new(
                names::BUILD_INFO,
                "Always 1; the labels name the build (version, librdkafka).",
            ),
            &["version", "librdkafka"],
        )
        .expect("valid metric");
        r.register(Box::new(build_info.clone()))
            .expect("registered once");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &rdkafka::util::get_rdkafka_version().1,
            ])
            .set(1);
        // The standard process_* metrics: CPU seconds, resident and virtual
        // memory, open and maximum file descriptors, threads, start time.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(names::CONSUMER_LAG, "Consumer lag per input partition."),
            &["topic", "partition"],
        )
        .expect("valid metric");
        r.register(Box::new(consumer_lag.clone()))
            .expect("registered once");
        let nats_connected = IntGaugeVec::new(
            Opts::new(
                names::NATS_CONNECTED,
                "1 while the NATS input's client is connected, 0 while it is not (per stream; only where the input has been read).",
            ),
            &["stream"],
        )
        .expect("valid metric");
        r.register(Box::new(nats_connected.clone()))
            .expect("registered once");
        Metrics {
            nats_connected,
            consumed: counter_vec(
                r,
                names::CONSUMED,
                "Input records read, by topic.",
                &["topic"],
            ),
            committed_inputs: counter(
                r,
                names::COMMITTED,
                "Input records whose outcome is committed.",
            ),
            produced: per_tier(&produced),
            redacted: per_tier(&redacted),
            dead_letters,
            ordering,
            tier_mismatches: counter(
                r,
                names::TIER_MISMATCHES,
                "Events holding data above their declared privacy_tier.",
            ),
            replayed: counter(
                r,
                names::REPLAYED,
                "Input records a predecessor's visible transaction already processed.",
            ),
            process_seconds,
            transactions,
            commit_seconds,
            consumer_lag,
            entities: gauge(r, names::ENTITIES, "Entities in the version store."),
            restored: counter(
                r,
                names::RESTORED,
                "Changelog records read while restoring partitions.",
            ),
            registry_lookups,
            registry_errors,
            assigned: gauge(r, names::ASSIGNED, "Input partitions assigned."),
            derived_refused: per_tier(&counter_vec(
                r,
                names::DERIVED_REFUSED,
                "Derived tier schemas the registry refused, by tier.",
                &["tier"],
            )),
            ready: gauge(
                r,
                names::READY,
                "1 when /readyz answers 200 (every stream thread joined and restored), else 0.",
            ),
            held: counter(
                r,
                names::HELD,
                "Events held for the reorder window (ordering.on_gap: hold).",
            ),
            released: {
                let v = counter_vec(
                    r,
                    names::RELEASED,
                    "Held events released: in_order (the missing versions arrived), timeout (emitted as a gap when the window expired), bound (emitted as a gap, the partition held too many).",
                    &["how"],
                );
                RELEASED_LABELS.map(|l| v.with_label_values(&[l]))
            },
            held_now: gauge(
                r,
                names::HELD_NOW,
                "Events held for the reorder window now.",
            ),
            held_oldest: {
                let g = GaugeVec::new(
                    Opts::new(
                        names::HELD_OLDEST,
                        "Age of the oldest held event on the wall clock, per stream thread (0 when none is held).",
                    ),
                    &["thread"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            registry,
        }
    }

    /// Records whether the instance is ready (see [`Health::ready`]).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The registry the metrics live in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The value of a counter or gauge series, for summaries and tests;
    /// `None` when no such series exists.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = self.registry.gather();
        let family = families.iter().find(|f| f.name() == name)?;
        let metric = family.get_metric().iter().find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })?;
        match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => Some(metric.get_counter().get_value()),
            prometheus::proto::MetricType::GAUGE => Some(metric.get_gauge().get_value()),
            _ => None,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registry::new())
    }
}

/// Per-topic counters resolved once, so the hot path does not hash labels.
#[derive(Debug, Default)]
pub struct TopicCounters {
    /// Looked up for every record: foldhash, a fraction of SipHash's cost.
    consumed: HashMap<Arc<str>, IntCounter, foldhash::fast::RandomState>,
}

impl TopicCounters {
    /// A record was read from `topic`.
    pub fn consumed(&mut self, metrics: &Metrics, topic: &Arc<str>) {
        if let Some(c) = self.consumed.get(topic) {
            c.inc();
            return;
        }
        let c = metrics.consumed.with_label_values(&[topic]);
        c.inc();
        self.consumed.insert(topic.clone(), c);
    }
}

/// The `verdict` label values, in the order of [`Pending`]'s counts.
const VERDICT_LABELS: [&str; 5] = ["accepted", "duplicate", "stale", "gap", "unordered"];

/// How held events are released, as the runtime counts them.
const RELEASED_LABELS: [&str; 3] = ["in_order", "timeout", "bound"];

/// Every [`Release`] label, in [`Pending`]'s order.
const RELEASE_ALL: [Release; 4] = [
    Release::InOrder,
    Release::Timeout,
    Release::Bound,
    Release::EndOfInput,
];

/// Counts of one transaction's outcomes, added to the counters only when it
/// commits, so the counters say what downstream readers can see.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    produced: [u64; 3],
    redacted: [u64; 3],
    dead_letters: Vec<Reason>,
    verdicts: [u64; 5],
    tier_mismatches: u64,
    replayed: u64,
    inputs: u64,
    held: u64,
    released: [u64; 4],
}

impl Pending {
    /// A tier record was sent.
    pub fn produced(&mut self, tier: Tier, redacted_fields: u32) {
        self.produced[tier.index()] += 1;
        self.redacted[tier.index()] += u64::from(redacted_fields);
    }

    /// An ordering verdict.
    pub fn verdict(&mut self, v: Verdict) {
        let i = match v {
            Verdict::Accepted => 0,
            Verdict::Duplicate => 1,
            Verdict::Stale => 2,
            Verdict::Gap { .. } => 3,
            Verdict::Unordered => 4,
        };
        self.verdicts[i] += 1;
    }

    /// A dead letter was sent.
    pub fn dead_letter(&mut self, reason: Reason) {
        self.dead_letters.push(reason);
    }

    /// An event held data above its declared tier.
    pub fn tier_mismatch(&mut self) {
        self.tier_mismatches += 1;
    }

    /// A record a predecessor already processed was skipped.
    pub fn replayed(&mut self) {
        self.replayed += 1;
    }

    /// Events held for the reorder window.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Held events released, by how (those seen).
    pub fn released(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RELEASE_ALL
            .iter()
            .zip(self.released)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.label(), n))
    }

    /// Input records the transaction covers.
    pub fn inputs(&mut self, n: u64) {
        self.inputs += n;
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Pending::default()
    }

    /// Tier records sent to `tier`.
    pub fn produced_to(&self, tier: Tier) -> u64 {
        self.produced[tier.index()]
    }

    /// Ordering verdicts by label (`accepted`, `duplicate`, …), those seen.
    pub fn verdicts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        VERDICT_LABELS
            .iter()
            .zip(self.verdicts)
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| (*l, n))
    }

    /// Dead letters by reason, in the order sent.
    pub fn dead_letters(&self) -> &[Reason] {
        &self.dead_letters
    }

    /// Events that held data above their declared tier.
    pub fn tier_mismatches(&self) -> u64 {
        self.tier_mismatches
    }
}

/// Where a record was read, for log lines.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The input topic (or the replayed file's source topic).
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
}

/// Logs at most [`RateLimit::MAX`] lines per window of one kind, then,
/// when the window ends, says how many it held back.
#[derive(Debug)]
pub struct RateLimit {
    what: &'static str,
    window: Instant,
    logged: u32,
    held_back: u64,
}

impl RateLimit {
    const MAX: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(10);

    /// A limiter for lines about `what` (named in the held-back line).
    pub fn new(what: &'static str) -> Self {
        RateLimit {
            what,
            window: Instant::now(),
            logged: 0,
            held_back: 0,
        }
    }

    /// Whether the next line may be logged.
    pub fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Self::WINDOW {
            self.flush();
        }
        if self.logged < Self::MAX {
            self.logged += 1;
            true
        } else {
            self.held_back += 1;
            false
        }
    }

    /// Ends the window: says how many lines it held back, if any.
    pub fn flush(&mut self) {
        if self.held_back > 0 {
            tracing::warn!(
                held_back = self.held_back,
                lines = self.what,
                window_s = Self::WINDOW.as_secs(),
                "Log lines held back by the rate limit; the metrics count every one."
            );
        }
        self.window = Instant::now();
        self.logged = 0;
        self.held_back = 0;
    }

    /// [`RateLimit::flush`] once the window has passed, so a count of held
    /// back lines is not kept until the next line of the kind.
    pub fn tick(&mut self) {
        if self.held_back > 0 && self.window.elapsed() >= Self::WINDOW {
            self.flush();
        }
    }
}

/// The named events of each record's journey through the engine, as `run`,
/// `demo` and `replay` report them: each logs at one level with one
/// message (the noisy ones rate-limited) and counts into [`Pending`], which
/// becomes the metrics when the records' transaction commits.
#[derive(Debug)]
pub struct RecordEvents {
    pending: Pending,
    dead_letters: RateLimit,
    tier_mismatches: RateLimit,
    gaps: RateLimit,
    /// Derived schemas whose refusal was logged, by (subject, writer id):
    /// each is logged once, however many events it refuses.
    refusals_logged: HashSet<(String, u32)>,
}

impl Default for RecordEvents {
    fn default() -> Self {
        RecordEvents {
            pending: Pending::default(),
            dead_letters: RateLimit::new("dead-lettered"),
            tier_mismatches: RateLimit::new("tier mismatch"),
            gaps: RateLimit::new("version gap"),
            refusals_logged: HashSet::new(),
        }
    }
}

impl RecordEvents {
    /// The event was routed: one record per tier it reaches. Debug:
    /// `Routed.`; info, rate-limited: a tier mismatch, a version gap.
    pub fn routed(&mut self, at: At<'_>, r: &Routed) {
        for tier in r.records.iter().filter_map(|rec| rec.destination.tier()) {
            self.pending.produced(tier, r.redacted[tier.index()]);
        }
        self.pending.verdict(r.verdict);
        let trace_id = r.log_ids.trace_id.as_deref().unwrap_or("");
        let correlation_id = r.log_ids.correlation_id.as_deref().unwrap_or("");
        let At {
            topic,
            partition,
            offset,
        } = at;
        if let Some(field) = &r.tier_mismatch {
            self.pending.tier_mismatch();
            if self.tier_mismatches.allow() {
                tracing::info!(topic, partition, offset, field = %field, "Event holds data above its declared privacy tier.");
            }
        }
        if let Verdict::Gap { missing } = r.verdict {
            if self.gaps.allow() {
                tracing::info!(
                    topic,
                    partition,
                    offset,
                    missing,
                    "Entity version gap; emitted with x-version-gap."
                );
            }
        }
        tracing::debug!(
            topic,
            partition,
            offset,
            verdict = r.verdict.label(),
            records = r.records.len(),
            trace_id,
            correlation_id,
            "Routed."
        );
    }

    /// The event is ahead of its entity's next version and held for the
    /// reorder window. Debug.
    pub fn held(&mut self, at: At<'_>) {
        self.pending.held += 1;
        let At {
            topic,
            partition,
            offset,
        } = at;
        tracing::debug!(
            topic,
            partition,
            offset,
            "Ahead of the entity's next version; held for the reorder window."
        );
    }

    /// A held event is released (its outcome is reported apart). Debug.
    pub fn released(&mut self, at: At<'_>, how: Release) {
        let i = RELEASE_ALL.iter().position(|r| *r == how).unwrap_or(0);
        self.pending.released[i] += 1;
        let At {
            topic,
            partition,
            offset,
        } = at;
        tracing::debug!(
            topic,
            partition,
            offset,
            how = how.label(),
            "Held event released."
        );
    }

    /// The event's version was already emitted (duplicate) or is older
    /// than one emitted (stale): nothing is sent. Debug.
    pub fn skipped(&mut self, at: At<'_>, v: Verdict) {
        self.pending.verdict(v);
        let At {
            topic,
            partition,
            offset,
        } = at;
        tracing::debug!(
            topic,
            partition,
            offset,
            verdict = v.label(),
            "Version already emitted; skipped."
        );
    }

    /// The record went to the dead-letter topic. Warn, rate-limited.
    pub fn dead_lettered(&mut self, at: At<'_>, rejection: &Rejection) {
        self.pending.dead_letter(rejection.reason);
        if self.dead_letters.allow() {
            let At {
                topic,
                partition,
                offset,
            } = at;
            tracing::warn!(
                topic,
                partition,
                offset,
                reason = rejection.reason.code(),
                detail = %rejection.detail,
                "Dead-lettered."
            );
        }
    }

    /// A predecessor's committed transaction already processed the record
    /// (its resume marker says so): skipped. Debug.
    pub fn replayed(&mut self, at: At<'_>) {
        self.pending.replayed();
        let At {
            topic,
            partition,
            offset,
        } = at;
        tracing::debug!(
            topic,
            partition,
            offset,
            "Already processed by a predecessor; skipped."
        );
    }

    /// The registry refused a derived tier schema. Counted every time the
    /// registry says so (at once: the refusal is not part of a
    /// transaction); logged at error once per subject and writer schema,
    /// since every event that needs it is refused the same way and goes to
    /// the dead-letter topic with the reason.
    pub fn derived_schema_refused(&mut self, metrics: &Metrics, refusal: &Refusal) {
        metrics.derived_refused[refusal.tier.index()].inc();
        if self
            .refusals_logged
            .insert((refusal.subject.clone(), refusal.writer_id))
        {
            tracing::error!(
                subject = %refusal.subject,
                tier = refusal.tier.as_str(),
                writer_schema_id = refusal.writer_id,
                registry = %refusal.message,
                "The registry refused a derived schema; events that need it are dead-lettered as derived_schema_rejected until the subject accepts it (check the subject's compatibility)."
            );
        }
    }

    /// Periodic: reports lines held back in windows that have ended.
    pub fn tick(&mut self) {
        self.dead_letters.tick();
        self.tier_mismatches.tick();
        self.gaps.tick();
    }

    /// The end of the input (replay): reports every line held back.
    pub fn finish(&mut self) {
        self.dead_letters.flush();
        self.tier_mismatches.flush();
        self.gaps.flush();
    }

    /// Input records the open transaction covers.
    pub fn inputs(&mut self, n: u64) {
        self.pending.inputs(n);
    }

    /// True when nothing was counted since the last commit or abort.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// What was counted since the last commit or abort.
    pub fn counts(&self) -> &Pending {
        &self.pending
    }

    /// The records' transaction committed: the counts become metrics.
    pub fn committed(&mut self, metrics: &Metrics, took: Duration) {
        committed(metrics, &mut self.pending, took);
    }

    /// The records' transaction was aborted: the counts are dropped (the
    /// records will be processed again).
    pub fn aborted(&mut self, metrics: &Metrics, took: Duration, why: &str) {
        aborted(metrics, &mut self.pending, took, why);
    }
}

/// A transaction committed: its outcomes become visible, and so do its counts.
fn committed(metrics: &Metrics, pending: &mut Pending, took: Duration) {
    let p = std::mem::take(pending);
    for t in Tier::ALL {
        metrics.produced[t.index()].inc_by(p.produced[t.index()]);
        metrics.redacted[t.index()].inc_by(p.redacted[t.index()]);
    }
    for r in p.dead_letters {
        metrics.dead_letters.with_label_values(&[r.code()]).inc();
    }
    for (i, v) in VERDICT_LABELS.iter().enumerate() {
        if p.verdicts[i] > 0 {
            metrics
                .ordering
                .with_label_values(&[v])
                .inc_by(p.verdicts[i]);
        }
    }
    metrics.tier_mismatches.inc_by(p.tier_mismatches);
    metrics.replayed.inc_by(p.replayed);
    metrics.held.inc_by(p.held);
    for (c, n) in metrics.released.iter().zip(p.released) {
        c.inc_by(n);
    }
    metrics.committed_inputs.inc_by(p.inputs);
    metrics.transactions.with_label_values(&["committed"]).inc();
    metrics
        .commit_seconds
        .with_label_values(&["committed"])
        .observe(took.as_secs_f64());
    tracing::debug!(took_ms = took.as_millis() as u64, "Transaction committed.");
}

/// A transaction was aborted: its outcomes will be produced again.
fn aborted(metrics: &Metrics, pending: &mut Pending, took: Duration, why: &str) {
    *pending = Pending::default();
    metrics.transactions.with_label_values(&["aborted"]).inc();
    metrics
        .commit_seconds
        .with_label_values(&["aborted"])
        .observe(took.as_secs_f64());
    tracing::warn!(
        error = why,
        "Transaction aborted; its records will be processed again."
    );
}

/// The engine spent `took` on one record.
pub fn processed(metrics: &Metrics, took: Duration) {
    metrics.process_seconds.observe(took.as_secs_f64());
}

/// Schema lookups answered by the engine's cache (`hits`) or sent to the
/// registry (`misses`).
pub fn registry_lookups(metrics: &Metrics, hits: u64, misses: u64) {
    metrics
        .registry_lookups
        .with_label_values(&["hit"])
        .inc_by(hits);
    metrics
        .registry_lookups
        .with_label_values(&["miss"])
        .inc_by(misses);
}

/// A registry call failed. `what` names the call (`schema by id`, `latest
/// version`, `register`), never a payload value.
pub fn registry_error(metrics: &Metrics, kind: &'static str, what: &str, status: Option<u16>) {
    metrics.registry_errors.with_label_values(&[kind]).inc();
    tracing::warn!(
        kind,
        call = what,
        status = status.unwrap_or(0),
        "Schema registry call failed."
    );
}

/// Partition state was restored from the changelog.
pub fn restored(
    metrics: &Metrics,
    topic: &str,
    partition: i32,
    records: u64,
    entities: usize,
    took: Duration,
) {
    metrics.restored.inc_by(records);
    tracing::info!(
        changelog = topic,
        partition,
        records,
        entities,
        took_ms = took.as_millis() as u64,
        "Partition state restored."
    );
}

/// The version store now tracks `n` entities; `assigned` input partitions.
///
/// Each stream thread adds the change since its `last` report, so the
/// instance's gauges are the sums over its threads.
pub fn state_size(metrics: &Metrics, last: &mut (i64, i64), entities: usize, assigned: usize) {
    let now = (entities as i64, assigned as i64);
    metrics.entities.add(now.0 - last.0);
    metrics.assigned.add(now.1 - last.1);
    *last = now;
}

/// Events held now by one stream thread (`last`: what it reported before;
/// the instance's gauge is the sum), and the wall-clock age of its oldest.
pub fn held_now(metrics: &Metrics, last: &mut i64, thread: u16, held: usize, oldest: Duration) {
    let now = held as i64;
    metrics.held_now.add(now - *last);
    *last = now;
    metrics
        .held_oldest
        .with_label_values(&[&thread.to_string()])
        .set(oldest.as_secs_f64());
}

/// Consumer lag of one input partition (from librdkafka statistics).
pub fn consumer_lag(metrics: &Metrics, topic: &str, partition: i32, lag: i64) {
    metrics
        .consumer_lag
        .with_label_values(&[topic, &partition.to_string()])
        .set(lag);
}

/// Whether the NATS input's client is connected to a server.
pub fn nats_connected(metrics: &Metrics, stream: &str, connected: bool) {
    metrics
        .nats_connected
        .with_label_values(&[stream])
        .set(i64::from(connected));
}

/// Forgets the lag series of a partition this instance no longer owns.
pub fn forget_lag(metrics: &Metrics, topic: &str, partition: i32) {
    let _ = metrics
        .consumer_lag
        .remove_label_values(&[topic, &partition.to_string()]);
}

/// Liveness and readiness, shared between the stream threads and
/// `/readyz`: the instance is ready when every stream thread is.
#[derive(Debug, Default)]
pub struct Health {
    /// Per stream thread: ready, and why (not).
    threads: Mutex<Vec<(bool, &'static str)>>,
    /// What the whole instance waits for before its threads start (the
    /// cluster, at start-up); it comes first.
    waiting: Mutex<Option<String>>,
}

impl Health {
    /// Starts tracking `n` stream threads, none of them ready yet, and why.
    pub fn threads(&self, n: usize, why: &'static str) {
        if let Ok(mut t) = self.threads.lock() {
            *t = vec![(false, why); n.max(1)];
        }
    }

    /// Stream thread `thread` is ready (joined the group, every partition
    /// it was assigned restored) or not, and why.
    pub fn set_ready(&self, thread: usize, ready: bool, why: &'static str) {
        if let Ok(mut t) = self.threads.lock() {
            if t.len() <= thread {
                t.resize(thread + 1, (false, "starting"));
            }
            t[thread] = (ready, why);
        }
    }

    /// The instance waits for something before its threads start
    /// (`Some(why)`), or no longer (`None`).
    pub fn wait(&self, why: Option<String>) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = why;
        }
    }

    /// Whether `/readyz` answers 200, and why: what the instance waits for,
    /// else the first thread that is not ready says why.
    pub fn ready(&self) -> (bool, String) {
        if let Some(why) = self.waiting.lock().ok().and_then(|w| w.clone()) {
            return (false, why);
        }
        let Ok(t) = self.threads.lock() else {
            return (false, "unknown".to_owned());
        };
        let (ready, why) = match t.iter().find(|(ready, _)| !ready) {
            Some((_, why)) => (false, *why),
            None if t.is_empty() => (false, "starting"),
            None => (true, "processing"),
        };
        (ready, why.to_owned())
    }
}

/// Serves `/metrics`, `/livez` and `/healthz` (the same: the process
/// answers) and `/readyz` on `listener` until
/// `shutdown` completes.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let readiness = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                m.set_ready(readiness.ready().0);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    match h.ready() {
                        (true, _) => (StatusCode::OK, "ready\n".to_owned()),
                        (false, why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the telemetry address.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LogIds, OutRecord, TopicName};

    #[test]
    fn names_all_is_every_registered_metric() {
        let m = Metrics::new(Registry::new());
        // Give the labelled metrics without preset series one each.
        m.consumed.with_label_values(&["t"]).inc();
        m.consumer_lag.with_label_values(&["t", "0"]).set(1);
        m.commit_seconds
            .with_label_values(&["committed"])
            .observe(0.1);
        m.held_oldest.with_label_values(&["0"]).set(1.0);
        nats_connected(&m, "S", true);
        let registered: HashSet<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .filter(|n| n.starts_with("privacy_router_"))
            .collect();
        let all: HashSet<String> = names::ALL.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(registered, all);
    }

    #[test]
    fn metrics_name_the_build_and_the_process() {
        let text = Metrics::new(Registry::new()).encode();
        let build = text
            .lines()
            .find(|l| l.starts_with("privacy_router_build_info{"))
            .expect("build info");
        assert!(build.ends_with("} 1"), "{build}");
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{build}"
        );
        assert!(
            build.contains(&format!(
                "librdkafka=\"{}\"",
                rdkafka::util::get_rdkafka_version().1
            )),
            "{build}"
        );
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name}missing:\n{text}"
            );
        }
    }

    #[test]
    fn the_instance_is_ready_only_when_every_stream_thread_is() {
        let h = Health::default();
        assert_eq!(h.ready(), (false, "starting".to_owned()));
        h.threads(2, "checking topics");
        h.set_ready(0, true, "processing");
        assert_eq!(h.ready(), (false, "checking topics".to_owned()));
        h.set_ready(1, false, "restoring state");
        assert_eq!(h.ready(), (false, "restoring state".to_owned()));
        h.set_ready(1, true, "processing");
        assert_eq!(h.ready(), (true, "processing".to_owned()));
        h.set_ready(0, false, "rebalancing");
        assert_eq!(h.ready(), (false, "rebalancing".to_owned()));
        h.wait(Some("waiting for Kafka at b:9092: timed out".to_owned()));
        assert_eq!(
            h.ready(),
            (false, "waiting for Kafka at b:9092: timed out".to_owned())
        );
        h.wait(None);
        assert_eq!(h.ready(), (false, "rebalancing".to_owned()));
    }

    #[test]
    fn state_gauges_are_the_sums_over_the_threads() {
        let m = Metrics::new(Registry::new());
        let (mut a, mut b) = ((0, 0), (0, 0));
        state_size(&m, &mut a, 10, 2);
        state_size(&m, &mut b, 5, 1);
        state_size(&m, &mut a, 12, 2);
        assert_eq!((m.entities.get(), m.assigned.get()), (17, 3));
        state_size(&m, &mut b, 0, 0);
        assert_eq!((m.entities.get(), m.assigned.get()), (12, 2));
    }

    #[test]
    fn the_rate_limit_holds_back_after_its_maximum_and_starts_again() {
        let mut r = RateLimit::new("test");
        let allowed = (0..50).filter(|_| r.allow()).count();
        assert_eq!(allowed, RateLimit::MAX as usize);
        assert_eq!(r.held_back, 50 - u64::from(RateLimit::MAX));
        r.flush();
        assert_eq!(r.held_back, 0);
        assert!(r.allow());
    }

    #[test]
    fn record_events_count_what_the_metrics_get_at_commit() {
        let mut e = RecordEvents::default();
        let at = At {
            topic: "raw",
            partition: 0,
            offset: 7,
        };
        let rec = |tier| OutRecord {
            topic: TopicName::new("t"),
            destination: crate::record::Destination::Tier(tier),
            key: None,
            value: None,
            headers: Vec::new(),
        };
        let routed = Routed {
            verdict: Verdict::Gap { missing: 2 },
            records: vec![rec(Tier::Public), rec(Tier::Restricted)],
            state: None,
            tier_mismatch: Some("payload.email".to_owned()),
            redacted: [3, 1, 0],
            log_ids: LogIds::default(),
        };
        e.routed(at, &routed);
        e.skipped(at, Verdict::Duplicate);
        e.dead_lettered(
            at,
            &Rejection {
                reason: Reason::InvalidUuid,
                detail: "event_id".to_owned(),
            },
        );
        e.replayed(at);
        let c = e.counts();
        assert_eq!(c.produced_to(Tier::Public), 1);
        assert_eq!(c.produced_to(Tier::Internal), 0);
        assert_eq!(c.produced_to(Tier::Restricted), 1);
        assert_eq!(
            c.verdicts().collect::<Vec<_>>(),
            [("duplicate", 1), ("gap", 1)]
        );
        assert_eq!(c.dead_letters(), [Reason::InvalidUuid]);
        assert_eq!(c.tier_mismatches(), 1);

        let metrics = Metrics::default();
        e.inputs(4);
        e.committed(&metrics, Duration::from_millis(1));
        assert!(e.is_empty());
        let v = |name, labels: &[(&str, &str)]| metrics.value(name, labels).unwrap_or(0.0);
        assert_eq!(v(names::PRODUCED, &[("tier", "public")]), 1.0);
        assert_eq!(v(names::REDACTED, &[("tier", "public")]), 3.0);
        assert_eq!(v(names::ORDERING, &[("verdict", "gap")]), 1.0);
        assert_eq!(v(names::DEAD_LETTERS, &[("reason", "invalid_uuid")]), 1.0);
        assert_eq!(v(names::TIER_MISMATCHES, &[]), 1.0);
        assert_eq!(v(names::REPLAYED, &[]), 1.0);
        assert_eq!(v(names::COMMITTED, &[]), 4.0);
    }

    #[test]
    fn an_abort_drops_the_counts() {
        let mut e = RecordEvents::default();
        let at = At {
            topic: "raw",
            partition: 0,
            offset: 1,
        };
        e.skipped(at, Verdict::Stale);
        let metrics = Metrics::default();
        e.aborted(&metrics, Duration::ZERO, "test");
        assert!(e.is_empty());
        let v = |name, labels: &[(&str, &str)]| metrics.value(name, labels).unwrap_or(0.0);
        assert_eq!(v(names::ORDERING, &[("verdict", "stale")]), 0.0);
        assert_eq!(v(names::TRANSACTIONS, &[("outcome", "aborted")]), 1.0);
    }
}
