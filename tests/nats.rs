//! The NATS JetStream input (`input.nats_jetstream`) on real servers:
//! Debian's `nats-server` with JetStream (`scripts/nats.sh`, started by the
//! test script: `NATS_URL`, `NATS_DIR`) and Apache Kafka. Every expected
//! output is the pure engine's for the same messages, read as the Kafka
//! path reads a record (the subject as the topic, partition 0, the stream
//! sequence as the offset).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use privacy_router::sample::Format;
use support::{
    actual, assert_no_payload_in, assert_same, nats_context, payload_strings, read_topic, serial,
    signal, wait_until, Broker, Input, Model, Scenario,
};

/// The auth service's topology, reading the scenario's stream and subject.
fn auth_template() -> String {
    let t = std::fs::read_to_string("topology/auth-identity-nats.yaml").unwrap();
    let mut out = String::new();
    for line in t.lines() {
        let line = match line.trim_start() {
            l if l.starts_with("application_id:") => "application_id: {app}".to_owned(),
            l if l.starts_with("stream: USER_EVENTS") => "    stream: {stream}".to_owned(),
            l if l.starts_with("subject: user.events") => "    subject: {input}".to_owned(),
            l if l.starts_with("consumer: ") => continue,
            l if l.starts_with("topics: [user.events]") => "    topics: [{input}]".to_owned(),
            l if l.starts_with("public: events.public") => "  public: {app}.public".to_owned(),
            l if l.starts_with("internal: events.internal") => {
                "  internal: {app}.internal".to_owned()
            }
            l if l.starts_with("restricted: events.restricted") => {
                "  restricted: {app}.restricted".to_owned()
            }
            l if l.starts_with("dead_letter: events.dlq") => "  dead_letter: {app}.dlq".to_owned(),
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert!(out.contains("subject: {input}") && out.contains("topics: [{input}]"));
    out
}

/// Committed outputs of the scenario, compared with the engine's for
/// `inputs` (every one exactly once).
fn assert_exactly_once(s: &Scenario, inputs: &[Input], context: &str) {
    let mut model = Model::new(s);
    model.feed(inputs);
    let want = model.expected(s);
    let got = actual(s, &want, Duration::from_secs(3), Duration::from_secs(120));
    assert_same(&want, &got, context);
}

/// The durable consumer's acknowledged floor (stream sequence), as the
/// server reports it.
fn ack_floor(s: &Scenario) -> u64 {
    let n = s.nats.as_ref().unwrap();
    let durable = s.topology.spec.application_id.replace('.', "_");
    s.rt.block_on(async {
        let js = nats_context(&n.url).await;
        let stream = js.get_stream(&n.stream).await.unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&durable).await.unwrap();
        c.info().await.unwrap().ack_floor.stream_sequence
    })
}

#[test]
fn the_seed_identity_events_published_to_jetstream_reach_the_tiers_as_the_kafka_path_routes_them() {
    let _serial = serial();
    let s = Scenario::over_nats_from(Broker::shared(), &auth_template());
    // Seeds 000/001: V1 (the full user) and V2 (minimal, with the stream
    // sequence), then a message that is no JSON at all.
    let mut values: Vec<Vec<u8>> = std::fs::read_to_string("samples/auth-identity.jsonl")
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    assert!(values.len() >= 3, "the seed examples");
    values.push(b"{not json: user@example.com".to_vec());
    let inputs = s.publish(&values);
    let mut p = s.processor("a", &[]);
    assert_exactly_once(&s, &inputs, "seed events over NATS");

    // The malformed message is dead-lettered with the subject and its
    // stream sequence as its source.
    let dlq = read_topic(
        &s.broker.bootstrap(),
        &s.topology.engine.topics.dead_letter,
        true,
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let last = inputs.last().unwrap();
    let bad: Vec<_> = dlq
        .raw
        .iter()
        .filter(|(_, v, _)| v.as_deref() == Some(&last.value[..]))
        .collect();
    assert_eq!(
        bad.len(),
        1,
        "the malformed message once in the dead letters"
    );
    let header = |name: &str| {
        bad[0]
            .2
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("x-source-topic").as_deref(), Some(s.input.as_str()));
    assert_eq!(header("x-source-partition").as_deref(), Some("0"));
    assert_eq!(
        header("x-source-offset"),
        Some(last.offset.to_string()),
        "the stream sequence"
    );
    assert_eq!(header("x-error-reason").as_deref(), Some("malformed_json"));

    // Acknowledged to JetStream once committed.
    assert!(
        wait_until(Duration::from_secs(20), || ack_floor(&s)
            >= last.offset as u64),
        "JetStream's ack floor {} never reached the last sequence {}",
        ack_floor(&s),
        last.offset
    );
    let log = p.log_text();
    p.terminate();
    assert!(log.contains("Reading NATS JetStream."), "{log}");
    // The personal data of the events: e-mail addresses, user names,
    // display names, avatars.
    let mut pii = std::collections::BTreeSet::new();
    for v in &values[..values.len() - 1] {
        let doc: serde_json::Value = serde_json::from_slice(v).unwrap();
        for field in ["email", "username", "displayName", "avatar"] {
            if let Some(x) = doc[field].as_str().filter(|x| x.len() >= 6) {
                pii.insert(x.to_owned());
            }
        }
    }
    assert!(pii.contains("user@example.com"), "{pii:?}");
    for x in &pii {
        assert!(
            !log.contains(x.as_str()),
            "a payload value reached the log: {x}"
        );
    }
}

/// Publishes `values` at about `per_second`, in chunks, on this thread.
fn publish_paced(s: &Scenario, values: &[Vec<u8>], per_second: usize) -> Vec<Input> {
    let chunk = (per_second / 10).max(1);
    let mut out = Vec::with_capacity(values.len());
    for c in values.chunks(chunk) {
        let started = Instant::now();
        out.extend(s.publish(c));
        std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
    }
    out
}

#[test]
fn a_sigkilled_reader_is_taken_over_and_every_message_reaches_every_tier_once() {
    let _serial = serial();
    let s = Scenario::over_nats(Broker::shared(), "");
    let values = s.samples(24_000, 7, Format::Framed, true);
    let (first, second) = values.split_at(4_000);
    let mut inputs = s.publish(first);
    let mut a = s.processor("a", &[]);
    let mut b = s.processor("b", &[]);
    // Exactly one of them reads the stream.
    assert!(
        wait_until(Duration::from_secs(60), || {
            a.log_text().contains("Reading NATS JetStream.")
                || b.log_text().contains("Reading NATS JetStream.")
        }),
        "nobody reads the stream:\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    let a_reads = a.log_text().contains("Reading NATS JetStream.");
    let b_reads = b.log_text().contains("Reading NATS JetStream.");
    assert!(
        a_reads != b_reads,
        "one reader per stream, not {a_reads} {b_reads}"
    );
    let (reader, other) = if a_reads {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // The reader is killed while messages keep arriving (4,000/s for 5 s).
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| publish_paced(&s, second, 4_000));
        std::thread::sleep(Duration::from_millis(2_500));
        reader.kill();
        inputs.extend(publisher.join().unwrap());
    });
    assert!(
        wait_until(Duration::from_secs(90), || other
            .log_text()
            .contains("Reading NATS JetStream.")),
        "the other instance never took the stream over:\n{}",
        other.log_text()
    );
    assert_exactly_once(&s, &inputs, "after a SIGKILL of the reader");
    // A third instance joins: nothing is read twice.
    let mut again = s.processor("c", &[]);
    std::thread::sleep(Duration::from_secs(8));
    assert_exactly_once(&s, &inputs, "after a third instance joined");
    let logs = [other.log_text(), again.log_text()];
    other.terminate();
    again.terminate();
    let payload = payload_strings(&s.files, &inputs);
    for log in &logs {
        assert_no_payload_in(log, &payload);
    }
}

#[test]
fn sigkills_mid_stream_and_restarts_lose_and_duplicate_nothing() {
    let _serial = serial();
    let s = Scenario::over_nats(Broker::shared(), "");
    let values = s.samples(30_000, 11, Format::Framed, true);
    let mut inputs = Vec::new();
    let mut logs = Vec::new();
    // Messages arrive at 1,000/s for 30 s; the processor is killed (no
    // goodbye, no commit) three times meanwhile, each time a second after
    // it started reading, and started again.
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    let mut committed = Vec::new();
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| publish_paced(&s, &values, 1_000));
        for round in 0..3 {
            let mut p = s.processor("a", &[]);
            assert!(
                wait_until(Duration::from_secs(60), || p
                    .log_text()
                    .contains("Reading NATS JetStream.")),
                "round {round}: never read:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(1_000));
            logs.push(p.log_text());
            p.kill();
            committed.push(support::count(&s.broker.bootstrap(), &restricted, true));
        }
        inputs = publisher.join().unwrap();
    });
    let mut model = Model::new(&s);
    model.feed(&inputs);
    let total = model.expected(&s)[&restricted].len();
    assert!(
        committed[0] > 0 && committed.windows(2).all(|w| w[0] < w[1]) && committed[2] < total,
        "each kill came mid-stream: restricted records committed {committed:?} of {total}"
    );
    let mut p = s.processor("a", &[]);
    assert_exactly_once(&s, &inputs, "after three SIGKILLs");
    logs.push(p.log_text());
    p.terminate();
    let payload = payload_strings(&s.files, &inputs);
    for log in &logs {
        assert_no_payload_in(log, &payload);
    }
}

/// The test script's NATS server: its folder and port.
fn nats_server() -> (PathBuf, u16) {
    let dir = PathBuf::from(
        std::env::var("NATS_DIR")
            .expect("NATS_DIR is not set: run the tests through scripts/test.sh (it starts NATS)"),
    );
    let url = support::nats_url();
    let port = url.rsplit(':').next().unwrap().parse().unwrap();
    (dir, port)
}

fn nats_script(args: &[&str]) {
    let ok = Command::new("bash")
        .arg("scripts/nats.sh")
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "scripts/nats.sh {args:?} failed");
}

#[test]
fn nats_down_for_a_while_loses_nothing_and_dead_letters_nothing() {
    let _serial = serial();
    let (dir, port) = nats_server();
    let dir = dir.to_str().unwrap().to_owned();
    let s = Scenario::over_nats(Broker::shared(), "");
    let values = s.samples(8_000, 5, Format::Framed, false);
    let (first, second) = values.split_at(4_000);
    let mut inputs = s.publish(first);
    let metrics_port = support::free_port();
    let mut p = s.processor_on("a", Some(metrics_port), &[]);
    let stream = &s.nats.as_ref().unwrap().stream;
    let series = format!("privacy_router_nats_connected{{stream=\"{stream}\"}}");
    let connected = || {
        support::http_get(metrics_port, "/metrics").map(|(_, body)| support::metric(&body, &series))
    };
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    assert!(
        wait_until(Duration::from_secs(60), || {
            support::count(&s.broker.bootstrap(), &restricted, true) >= 200
        }),
        "no progress:\n{}",
        p.log_text()
    );
    // Down for longer than a few reconnect attempts (the processor may
    // have read everything published so far, or not).
    assert_eq!(connected(), Some(1.0), "connected before the outage");
    nats_script(&["stop", "--dir", &dir]);
    let down = Instant::now();
    assert!(
        wait_until(Duration::from_secs(8), || connected() == Some(0.0)),
        "the gauge says the connection is lost"
    );
    std::thread::sleep(Duration::from_secs(8).saturating_sub(down.elapsed()));
    assert!(p.running(), "the processor must wait for NATS, not exit");
    nats_script(&["start", "--dir", &dir, "--port", &port.to_string()]);
    let back = down.elapsed();
    inputs.extend(s.publish(second));
    assert_exactly_once(&s, &inputs, "NATS down and back");
    assert_eq!(connected(), Some(1.0), "connected again");
    let log = p.log_text();
    p.terminate();
    assert!(
        log.contains("NATS connection lost; reconnecting, skipping nothing.")
            && log.contains("Connected to NATS."),
        "the wait is logged (down for {back:?}):\n{}",
        support::tail(&log, 40)
    );
    let counts: BTreeMap<&str, usize> = [(
        "dead letters",
        support::count(
            &s.broker.bootstrap(),
            &s.topology.engine.topics.dead_letter,
            true,
        ),
    )]
    .into();
    assert_eq!(
        counts["dead letters"], 0,
        "nothing dead-lettered for an outage"
    );
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}

/// The reader is frozen (SIGSTOP) mid-stream, holding messages in an open
/// transaction; another instance takes the lease over and reads on. When
/// the zombie wakes it must commit nothing of what it held: it is fenced
/// (exit 3) or, rejoining, aborts — every message reaches every tier once.
#[test]
fn a_frozen_reader_is_fenced_when_it_wakes() {
    let _serial = serial();
    let s = Scenario::over_nats(Broker::shared(), "");
    let values = s.samples(30_000, 23, Format::Framed, true);
    let mut inputs = Vec::new();
    let mut logs = Vec::new();
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| publish_paced(&s, &values, 1_000));
        let mut a = s.processor("zombie", &[]);
        assert!(
            wait_until(Duration::from_secs(60), || a
                .log_text()
                .contains("Reading NATS JetStream.")),
            "never read:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_secs(3));
        signal(a.pid(), "STOP");
        let mut b = s.processor("successor", &[]);
        assert!(
            wait_until(Duration::from_secs(90), || b
                .log_text()
                .contains("Reading NATS JetStream.")),
            "the successor never took the stream over:\n{}",
            support::tail(&b.log_text(), 40)
        );
        std::thread::sleep(Duration::from_secs(3));
        signal(a.pid(), "CONT");
        // The zombie finds out, by its failed commit or the rebalance.
        let exit = a.wait_exit(Duration::from_secs(30));
        let a_log = a.log_text();
        match exit {
            Some(status) => assert_eq!(
                status.code(),
                Some(3),
                "a fenced zombie exits 3:\n{}",
                support::tail(&a_log, 40)
            ),
            None => {
                assert!(
                    wait_until(Duration::from_secs(30), || a
                        .log_text()
                        .contains("Stopped reading NATS JetStream: the lease moved.")),
                    "the zombie neither stopped nor gave the stream up:\n{}",
                    support::tail(&a.log_text(), 60)
                );
                a.terminate();
            }
        }
        logs.push(a.log_text());
        inputs = publisher.join().unwrap();
        assert_exactly_once(&s, &inputs, "after the zombie woke");
        logs.push(b.log_text());
        b.terminate();
    });
    let payload = payload_strings(&s.files, &inputs);
    for log in &logs {
        assert_no_payload_in(log, &payload);
    }
}
