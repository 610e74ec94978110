//! The processor on real Kafka-protocol brokers: librdkafka's mock cluster
//! (in this process) and Tansu (a broker process the test script installs),
//! with the registry stand-in. The processor runs as its own process
//! (`privacy-router run`), so it can be stopped and killed like in
//! production.
//!
//! Every scenario compares what the tier and dead-letter topics hold
//! (`read_committed`) with what the pure engine emits for the same inputs:
//! every accepted event once in each tier it may reach, with the same key,
//! headers and projected value; every rejected record once in the
//! dead-letter topic, unchanged, with its reason and source headers.

mod support;

use std::time::Duration;

use support::*;

const QUIET: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(120);

/// Produce a mix of framed Avro and JSON events with every anomaly, run the
/// processor until the outputs are complete, stop it with SIGTERM, compare.
fn end_to_end(broker: Broker) {
    let s = Scenario::new(broker, 3, "");
    let mut values = s.samples(1500, 11, SampleFormat::Framed, true);
    values.extend(s.samples(500, 12, SampleFormat::Jsonl, true));
    let inputs = produce(&s.broker.bootstrap(), &s.input, &s.files, &values);
    let want = expected(&s, &inputs);
    assert!(want.values().all(|v| !v.is_empty()));

    let counts = expected_counts(&s, &inputs);
    // The registry wants basic auth: the processor sends it.
    *s.registry.inner.credentials.lock().unwrap() = Some("router:s3cret-pass".to_owned());
    let port = free_port();
    let mut p = s.processor_on(
        "a",
        Some(port),
        &[
            "--registry-user",
            "router",
            "--registry-password",
            "s3cret-pass",
        ],
    );
    // Alive at once; ready only once it joined and restored its partitions.
    assert!(wait_until(TIMEOUT, || {
        http_get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    }));
    let (code, body) = http_get(port, "/readyz").unwrap();
    assert!(
        (code == 503 && body.starts_with("not ready: ")) || code == 200,
        "{code} {body}"
    );
    assert!(
        wait_until(TIMEOUT, || http_get(port, "/readyz")
            .is_some_and(|(c, _)| c == 200)),
        "never ready:\n{}",
        tail(&p.log_text(), 30)
    );
    wait_for_outputs(&s, &want, &mut p);

    // The metrics say what the topics hold.
    let (_, m) = http_get(port, "/metrics").unwrap();
    let series = |name: &str, label: &str, value: &str| format!("{name}{{{label}=\"{value}\"}}");
    assert_eq!(
        metric(
            &m,
            &series("privacy_router_records_consumed_total", "topic", &s.input)
        ),
        inputs.len() as f64,
        "{m}"
    );
    assert_eq!(
        metric(&m, "privacy_router_input_records_committed_total"),
        inputs.len() as f64
    );
    for (tier, n) in &counts.tiers {
        let name = series("privacy_router_records_produced_total", "tier", tier);
        assert_eq!(metric(&m, &name), *n as f64, "{name}");
    }
    for (reason, n) in &counts.reasons {
        let name = series("privacy_router_dead_letters_total", "reason", reason);
        assert_eq!(metric(&m, &name), *n as f64, "{name}");
    }
    for (verdict, n) in &counts.verdicts {
        let name = series("privacy_router_ordering_total", "verdict", verdict);
        assert_eq!(metric(&m, &name), *n as f64, "{name}");
    }
    assert_eq!(
        metric(&m, "privacy_router_tier_mismatches_total"),
        counts.tier_mismatches as f64
    );
    assert!(
        metric(
            &m,
            &series("privacy_router_transactions_total", "outcome", "committed")
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            &series("privacy_router_fields_redacted_total", "tier", "public")
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            &series("privacy_router_registry_lookups_total", "result", "miss")
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            &series("privacy_router_registry_lookups_total", "result", "hit")
        ) > 0.0
    );
    assert!(metric(&m, "privacy_router_entities") > 0.0);
    assert_eq!(metric(&m, "privacy_router_assigned_partitions"), 3.0);
    assert!(m.contains("privacy_router_commit_seconds_bucket"));
    assert!(m.contains("privacy_router_process_seconds_bucket"));
    assert_no_payload_in(&m, &payload_strings(&s.files, &inputs));

    let status = p.terminate();
    assert!(status.success(), "exit {status}:\n{}", p.log_text());

    let got = actual(&s, &want, QUIET, TIMEOUT);
    assert_same(&want, &got, "end to end");

    // Derived schemas are registered under <tier topic>-<record name>.
    let subjects = s.registry.subjects();
    for t in s.topology.engine.topics.tiers.iter() {
        assert!(
            subjects
                .keys()
                .any(|k| k.starts_with(&format!("{t}-com.privacyrouter.events."))),
            "no derived subject for {t}: {subjects:?}"
        );
    }
    let log = p.log_text();
    assert!(log.contains("Dead-lettered."), "{log}");
    assert!(log.contains("Stream thread stopped cleanly."), "{log}");
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}

#[test]
fn end_to_end_on_the_mock_cluster() {
    end_to_end(Broker::mock());
}

#[test]
fn end_to_end_on_tansu() {
    end_to_end(Broker::tansu());
}

/// Inputs for the long scenarios: `n` framed events with every anomaly;
/// the second half is re-framed with second schema versions, so the
/// processor fetches schemas mid-stream. With `hold` the registry stand-in
/// keeps those fetches waiting: the processor stops in the middle of the
/// stream with an open transaction whose records were all sent.
fn long_stream(s: &mut Scenario, n: usize, seed: u64) -> Vec<Input> {
    let mut values = s.samples(n, seed, SampleFormat::Framed, true);
    let keys: Vec<Option<String>> = values.iter().map(|v| entity_id_of(&s.files, v)).collect();
    let second = s.second_versions();
    let (lo, hi) = (
        *second.values().min().unwrap(),
        *second.values().max().unwrap(),
    );
    reframe(&mut values[n / 2..], &|id| second.get(&id).copied());
    let inner = &s.registry.inner;
    inner
        .hold_ids_to
        .store(hi, std::sync::atomic::Ordering::SeqCst);
    inner
        .hold_ids_from
        .store(lo, std::sync::atomic::Ordering::SeqCst);
    produce_keyed(&s.broker.bootstrap(), &s.input, &values, keys)
}

fn release(s: &Scenario) {
    s.registry
        .inner
        .hold_ids_from
        .store(0, std::sync::atomic::Ordering::SeqCst);
}

fn held(s: &Scenario) -> bool {
    s.registry
        .inner
        .held
        .load(std::sync::atomic::Ordering::SeqCst)
        > 0
}

/// Waits until every expected output arrived (read_committed), failing
/// with the log's tail otherwise.
fn wait_for_outputs(s: &Scenario, want: &PerTopic, p: &mut Processor) {
    let wanted: usize = want.values().map(Vec::len).sum();
    let mut seen = 0;
    let done = wait_until(TIMEOUT, || {
        assert!(p.running(), "the processor exited:\n{}", p.log_text());
        seen = total(&s.broker.bootstrap(), &s.outputs(), true);
        seen >= wanted
    });
    assert!(
        done,
        "{seen} of {wanted} outputs after {TIMEOUT:?}:\n{}",
        tail(&p.log_text(), 40)
    );
}

/// SIGKILL in the middle of 20,000 events while a transaction is open,
/// restart: every tier and the dead-letter topic hold each output exactly
/// once, and the ordering state continues where it was.
///
/// What the brokers do with the killed processor's open transaction
/// (checked below, before the restart): the mock cluster shows it to
/// `read_committed` readers at once (its fetch answers LastStableOffset =
/// high watermark and never lists aborted transactions); Tansu hides it
/// until the restarted processor's `init_transactions` with the same
/// transactional id, and then shows it instead of dropping it. Kafka would
/// drop it. So on both, the records of the killed transaction stay
/// visible, and the restarted processor must not emit them again: it
/// restores the versions and resume markers that transaction wrote to the
/// changelog, and a replayed event becomes a `duplicate`.
///
/// The kill comes while the processor waits for the registry (so every
/// record of the open transaction has reached the broker): a kill while
/// records are still in flight can leave an event's tier records on the
/// broker without its changelog record, which only a broker that aborts
/// the transaction (Kafka) makes consistent.
fn crash_and_restart(broker: Broker) {
    let mut s = Scenario::new(broker, 3, "");
    s.registry_timeout_ms = 60_000;
    let inputs = long_stream(&mut s, 20_000, 21);
    let want = expected(&s, &inputs);
    let bootstrap = s.broker.bootstrap();
    let restricted = s.topology.engine.topics.tiers[2].to_string();

    let mut first = s.processor("crashy", &[]);
    assert!(
        wait_until(TIMEOUT, || held(&s)),
        "the processor never reached the second half:\n{}",
        tail(&first.log_text(), 30)
    );
    std::thread::sleep(Duration::from_millis(500));
    let committed = count(&bootstrap, &restricted, true);
    let uncommitted = count(&bootstrap, &restricted, false);
    assert!(uncommitted > 0 && uncommitted < want[&restricted].len());
    if s.broker.is_mock() {
        assert_eq!(
            committed, uncommitted,
            "the mock cluster shows open transactions to read_committed readers"
        );
    } else {
        assert!(
            committed < uncommitted,
            "Tansu hides the open transaction ({committed} committed of {uncommitted})"
        );
    }
    first.kill();
    release(&s);
    let killed_log = first.log_text();

    let mut second = s.processor("crashy", &[]);
    wait_for_outputs(&s, &want, &mut second);
    let status = second.terminate();
    assert!(status.success(), "exit {status}:\n{}", second.log_text());
    let got = actual(&s, &want, QUIET, TIMEOUT);
    assert_same(&want, &got, "after SIGKILL and restart");

    let log = second.log_text();
    let restored: u64 = log
        .lines()
        .filter(|l| l.contains("Partition state restored."))
        .filter_map(|l| {
            l.split("records=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        restored > 1000,
        "the restart restored {restored} changelog records:\n{log}"
    );
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&killed_log, &payload);
    assert_no_payload_in(&log, &payload);
}

#[test]
fn sigkill_mid_stream_on_the_mock_cluster() {
    crash_and_restart(Broker::mock());
}

#[test]
fn sigkill_mid_stream_on_tansu() {
    crash_and_restart(Broker::tansu());
}

/// Two instances in one group; one is stopped (SIGTERM) in the middle of
/// the stream; the other takes over its partitions with their restored
/// ordering state. Nothing is lost or duplicated.
#[test]
fn a_second_instance_takes_over_with_the_restored_state() {
    let mut s = Scenario::new(Broker::mock(), 4, "");
    s.registry_timeout_ms = 2000;
    let inputs = long_stream(&mut s, 20_000, 31);
    let want = expected(&s, &inputs);

    let mut a = s.processor("a", &[]);
    let mut b = s.processor("b", &[]);
    // Both reach the second half (each holds a partition of it).
    assert!(
        wait_until(TIMEOUT, || s
            .registry
            .inner
            .held
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2),
        "both instances should wait for the registry:\nA:\n{}\nB:\n{}",
        tail(&a.log_text(), 20),
        tail(&b.log_text(), 20)
    );
    let status = a.terminate();
    assert!(status.success(), "A exit {status}:\n{}", a.log_text());
    release(&s);
    wait_for_outputs(&s, &want, &mut b);
    let status = b.terminate();
    assert!(status.success(), "B exit {status}:\n{}", b.log_text());
    let got = actual(&s, &want, QUIET, TIMEOUT);
    assert_same(&want, &got, "after the takeover");

    let a_log = a.log_text();
    let b_log = b.log_text();
    assert!(
        a_log.contains("Partitions assigned and restored."),
        "{a_log}"
    );
    assert!(
        b_log.matches("Partitions assigned and restored.").count() >= 2,
        "B was assigned A's partitions after A left:\n{b_log}"
    );
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&a_log, &payload);
    assert_no_payload_in(&b_log, &payload);
}

/// The registry answers 503 at start-up, then the broker goes down in the
/// middle of the stream: the processor waits and retries, skips nothing
/// and dead-letters nothing it should not.
#[test]
fn registry_503_and_broker_down_lose_nothing() {
    let mut s = Scenario::new(Broker::mock(), 3, "");
    let inputs = long_stream(&mut s, 20_000, 41);
    let want = expected(&s, &inputs);
    let inner = s.registry.inner.clone();
    inner
        .unavailable
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let mut p = s.processor("flaky", &[]);
    assert!(
        wait_until(TIMEOUT, || inner
            .refused
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3),
        "the processor should keep asking the registry:\n{}",
        tail(&p.log_text(), 20)
    );
    let bootstrap = s.broker.bootstrap();
    assert_eq!(
        total(&bootstrap, &s.outputs(), false),
        0,
        "nothing is emitted or dead-lettered while the registry is down"
    );
    inner
        .unavailable
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // Mid-stream (waiting for second schema versions), take the broker away.
    assert!(
        wait_until(TIMEOUT, || held(&s)),
        "{}",
        tail(&p.log_text(), 20)
    );
    let cluster = s.broker.mock_cluster();
    cluster.broker_down(1).unwrap();
    release(&s);
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        p.running(),
        "the processor survives the broker being away:\n{}",
        tail(&p.log_text(), 30)
    );
    cluster.broker_up(1).unwrap();

    wait_for_outputs(&s, &want, &mut p);
    let status = p.terminate();
    assert!(status.success(), "exit {status}:\n{}", p.log_text());
    let got = actual(&s, &want, QUIET, TIMEOUT);
    assert_same(&want, &got, "after registry 503 and broker down");
    let log = p.log_text();
    assert!(
        log.contains("Schema registry unavailable; waiting, skipping nothing."),
        "{log}"
    );
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}

/// `at_least_once` (for brokers without transactions): without a crash it
/// delivers the same records, once each; offsets are committed after the
/// records are delivered.
#[test]
fn at_least_once_delivers_every_output() {
    let s = Scenario::with_guarantee(Broker::mock(), 3, "at_least_once", "");
    let values = s.samples(1500, 51, SampleFormat::Framed, true);
    let inputs = produce(&s.broker.bootstrap(), &s.input, &s.files, &values);
    let want = expected(&s, &inputs);
    let mut p = s.processor("alo", &[]);
    wait_for_outputs(&s, &want, &mut p);
    let status = p.terminate();
    assert!(status.success(), "exit {status}:\n{}", p.log_text());
    let got = actual(&s, &want, QUIET, TIMEOUT);
    assert_same(&want, &got, "at least once");
    // The group's committed offsets cover every input.
    use rdkafka::consumer::Consumer as _;
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", s.broker.bootstrap())
        .set("group.id", &s.topology.spec.application_id)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition(&s.input, part);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
        .sum();
    assert_eq!(total, inputs.len() as i64, "committed offsets");
    let log = p.log_text();
    assert!(log.contains("guarantee=AtLeastOnce"), "{log}");
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}
