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

    let mut p = s.processor("a", &[]);
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
