//! The processor on real Apache Kafka (4.x, KRaft, from `scripts/kafka.sh`):
//! the single node the test script shares, or clusters of a test's own
//! where brokers are killed, with three nodes, or with TLS and SASL. The
//! processor runs as its own process (`privacy-router run`), so it is
//! stopped, killed, frozen and resumed like in production.
//!
//! Every scenario compares what the tier and dead-letter topics hold
//! (`read_committed`) with what the pure engine emits for the same inputs,
//! in produce order: every accepted event exactly once in each tier it may
//! reach, with the same key, headers and projected value (so the ordering
//! state continued where it was: a lost version would turn the next into a
//! gap, a forgotten one a replay into a second emission); every rejected
//! record once in the dead-letter topic, unchanged, with its reason and
//! source headers; nothing else.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use privacy_router::order::hold::HELD_PREFIX;
use privacy_router::record::Outcome;
use support::*;

const QUIET: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until every expected output arrived (read_committed), failing
/// with the log's tail otherwise.
fn wait_for_outputs(s: &Scenario, want: &PerTopic, p: &mut Processor) {
    let wanted: usize = want.values().map(Vec::len).sum();
    let mut counter = OutputCounter::new(&s.broker.bootstrap(), &s.outputs());
    let mut seen = 0;
    let done = wait_until(TIMEOUT, || {
        assert!(p.running(), "the processor exited:\n{}", p.log_text());
        seen = counter.poll();
        seen >= wanted
    });
    assert!(
        done,
        "{seen} of {wanted} outputs after {TIMEOUT:?}:\n{}",
        tail(&p.log_text(), 40)
    );
}

/// Stops the processor with SIGTERM, expecting a clean exit.
fn stop(p: &mut Processor) {
    let status = p.terminate();
    assert!(
        status.success(),
        "exit {status}:\n{}",
        tail(&p.log_text(), 60)
    );
}

/// Reads every output topic and compares it with the pure engine's.
fn verify(s: &Scenario, want: &PerTopic, context: &str) {
    let got = actual(s, want, QUIET, TIMEOUT);
    assert_same(want, &got, context);
}

/// Produce a mix of framed Avro and JSON events with every anomaly, run the
/// processor (two stream threads sharing three partitions) until the outputs
/// are complete, stop it with SIGTERM, compare; the metrics, summed over the
/// threads, say what the topics hold.
#[test]
fn end_to_end_with_metrics_equal_to_the_topics() {
    let _serial = serial();
    let s = Scenario::new(Broker::shared(), 3, "");
    let mut values = s.samples(1500, 11, SampleFormat::Framed, true);
    values.extend(s.samples(500, 12, SampleFormat::Jsonl, true));
    let inputs = produce(&s.broker.bootstrap(), &s.input, &s.files, &values);
    let want = expected(&s, &inputs);
    assert!(want.values().all(|v| !v.is_empty()));

    let counts = expected_counts(&s, &inputs);
    // The registry wants basic auth: the processor sends it, the password
    // read from a file (as a mounted secret would hold it).
    *s.registry.inner.credentials.lock().unwrap() = Some("router:s3cret-pass".to_owned());
    let password = s.dir.path().join("registry-password");
    std::fs::write(&password, "s3cret-pass\n").unwrap();
    let password = password.display().to_string();
    let port = free_port();
    let mut p = s.processor_on(
        "a",
        Some(port),
        &[
            "--registry-user",
            "router",
            "--registry-password-file",
            &password,
            "--stream-threads",
            "2",
        ],
    );
    // Alive at once; ready only once both threads joined and restored
    // their partitions.
    assert!(wait_until(TIMEOUT, || {
        http_get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    }));
    assert_eq!(http_get(port, "/livez"), Some((200, "ok\n".to_owned())));
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

    let (_, m) = http_get(port, "/metrics").unwrap();
    // The build and the standard process metrics are there.
    let build = m
        .lines()
        .find(|l| l.starts_with("privacy_router_build_info{"))
        .unwrap_or_else(|| panic!("no build info:\n{m}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("librdkafka=\"2.")
            && build.ends_with("} 1"),
        "{build}"
    );
    assert!(metric(&m, "process_resident_memory_bytes") > 1e6, "{m}");
    assert!(metric(&m, "process_open_fds") > 3.0, "{m}");
    let started = metric(&m, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started > now - 3600.0 && started <= now, "{started} {now}");
    // The prometheus crate counts CPU in whole seconds: present, maybe 0.
    assert!(
        m.lines()
            .any(|l| l.starts_with("process_cpu_seconds_total ")),
        "{m}"
    );
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
    for (name, label, value) in [
        ("privacy_router_transactions_total", "outcome", "committed"),
        ("privacy_router_fields_redacted_total", "tier", "public"),
        ("privacy_router_registry_lookups_total", "result", "miss"),
        ("privacy_router_registry_lookups_total", "result", "hit"),
    ] {
        assert!(metric(&m, &series(name, label, value)) > 0.0, "{name}");
    }
    assert!(metric(&m, "privacy_router_entities") > 0.0);
    assert_eq!(metric(&m, "privacy_router_assigned_partitions"), 3.0);
    assert_eq!(
        metric(&m, "privacy_router_ready"),
        1.0,
        "ready, as /readyz says"
    );
    assert!(m.contains("privacy_router_commit_seconds_bucket"));
    assert!(m.contains("privacy_router_process_seconds_bucket"));
    assert_no_payload_in(&m, &payload_strings(&s.files, &inputs));

    stop(&mut p);
    verify(&s, &want, "end to end");

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
    assert_eq!(
        log.matches("Stream thread stopped cleanly.").count(),
        2,
        "{log}"
    );
    // Each thread is a member of the group with its own transactional id.
    for client in [
        format!("{}-a", s.topology.spec.application_id),
        format!("{}-a-1", s.topology.spec.application_id),
    ] {
        assert!(
            log.contains(&format!("client={client} ")),
            "{client}: {log}"
        );
    }
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}

/// More stream threads than partitions, with the consumer group protocol of
/// KIP-848: the thread left without a partition joins the group and is
/// ready too (an instance that never turned ready would never finish a
/// rolling deployment), and the outputs are complete and exactly once.
#[test]
fn more_stream_threads_than_partitions_are_ready_and_route_exactly_once() {
    let _serial = serial();
    let mut s = Scenario::new(Broker::shared(), 2, "");
    s.kafka_settings.clear();
    let values = s.samples(3000, 13, SampleFormat::Framed, true);
    let inputs = produce(&s.broker.bootstrap(), &s.input, &s.files, &values);
    let want = expected(&s, &inputs);
    let port = free_port();
    let mut p = s.processor_on(
        "idle",
        Some(port),
        &["--stream-threads", "3", "-X", "group.protocol=consumer"],
    );
    assert!(
        wait_until(TIMEOUT, || http_get(port, "/readyz")
            .is_some_and(|(c, _)| c == 200)),
        "never ready: {:?}\n{}",
        http_get(port, "/readyz"),
        tail(&p.log_text(), 30)
    );
    wait_for_outputs(&s, &want, &mut p);
    let (_, m) = http_get(port, "/metrics").unwrap();
    assert_eq!(metric(&m, "privacy_router_assigned_partitions"), 2.0, "{m}");
    stop(&mut p);
    verify(&s, &want, "three threads on two partitions");
}

/// Inputs for the scenarios that stop mid-stream: `n` framed events with
/// every anomaly; the second half is re-framed with second schema versions,
/// and the registry stand-in keeps those fetches waiting, so the processor
/// stops in the middle of the stream with an open transaction whose
/// records were all sent, until [`release`].
fn held_stream(s: &mut Scenario, n: usize, seed: u64) -> Vec<Input> {
    let (values, keys) = held_values(s, n, seed, n / 2);
    produce_keyed(&s.broker.bootstrap(), &s.input, &values, keys)
}

/// `n` framed sample events keyed by entity, those from `held_from` on
/// re-framed with second-version schema ids that the stand-in registry
/// holds (answers only after `release`, or the client's timeout).
fn held_values(
    s: &mut Scenario,
    n: usize,
    seed: u64,
    held_from: usize,
) -> (Vec<Vec<u8>>, Vec<Option<String>>) {
    let mut values = s.samples(n, seed, SampleFormat::Framed, true);
    let keys: Vec<Option<String>> = values.iter().map(|v| entity_id_of(&s.files, v)).collect();
    let second = s.second_versions();
    let (lo, hi) = (
        *second.values().min().unwrap(),
        *second.values().max().unwrap(),
    );
    reframe(&mut values[held_from..], &|id| second.get(&id).copied());
    let inner = &s.registry.inner;
    inner.hold_ids_to.store(hi, Ordering::SeqCst);
    inner.hold_ids_from.store(lo, Ordering::SeqCst);
    (values, keys)
}

fn release(s: &Scenario) {
    s.registry.inner.hold_ids_from.store(0, Ordering::SeqCst);
}

fn held(s: &Scenario) -> usize {
    s.registry.inner.held.load(Ordering::SeqCst) as usize
}

/// The changelog records the log says were restored.
fn restored_records(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("Partition state restored."))
        .filter_map(|l| {
            l.split("records=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// SIGKILL while a transaction is open (10,000 events committed, then the
/// processor waits for the registry in the middle of 10,000 more), restart with the same
/// instance id: Kafka hides the open transaction from read_committed
/// readers and aborts it when the restarted instance's producer fences
/// its predecessor; the state restored from the changelog continues the
/// stream, so every output is there exactly once.
#[test]
fn sigkill_with_an_open_transaction_and_restart() {
    let _serial = serial();
    let mut s = Scenario::new(Broker::shared(), 3, "");
    s.registry_timeout_ms = 60_000;
    let bootstrap = s.broker.bootstrap();
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    // Half the stream first, committed before the rest is produced, so the
    // restart has a changelog to restore whatever the commit timing; then
    // a quarter the registry answers and a quarter it holds, so the kill
    // finds a transaction open.
    let (values, keys) = held_values(&mut s, 20_000, 21, 15_000);
    let early = produce_keyed(
        &bootstrap,
        &s.input,
        &values[..10_000],
        keys[..10_000].to_vec(),
    );
    let early_restricted = expected(&s, &early)[&restricted].len();

    let mut first = s.processor("crashy", &[]);
    assert!(
        wait_until(TIMEOUT, || count(&bootstrap, &restricted, true)
            >= early_restricted),
        "the first half was never committed:\n{}",
        tail(&first.log_text(), 30)
    );
    let late = produce_keyed(
        &bootstrap,
        &s.input,
        &values[10_000..],
        keys[10_000..].to_vec(),
    );
    let inputs = [early, late].concat();
    let want = expected(&s, &inputs);
    assert!(
        wait_until(TIMEOUT, || held(&s) > 0),
        "the processor never reached the held quarter:\n{}",
        tail(&first.log_text(), 30)
    );
    std::thread::sleep(Duration::from_millis(500));
    let committed = count(&bootstrap, &restricted, true);
    let uncommitted = count(&bootstrap, &restricted, false);
    assert!(
        committed < uncommitted && uncommitted < want[&restricted].len(),
        "Kafka hides the open transaction ({committed} committed of {uncommitted})"
    );
    first.kill();
    release(&s);
    let killed_log = first.log_text();

    let mut second = s.processor("crashy", &[]);
    wait_for_outputs(&s, &want, &mut second);
    stop(&mut second);
    verify(&s, &want, "after SIGKILL and restart");
    // The killed transaction's records are on the broker, aborted: more
    // records than outputs, read_uncommitted.
    assert!(count(&bootstrap, &restricted, false) > want[&restricted].len());

    let log = second.log_text();
    let restored = restored_records(&log);
    assert!(
        restored > 1000,
        "the restart restored {restored} changelog records:\n{log}"
    );
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&killed_log, &payload);
    assert_no_payload_in(&log, &payload);
}

/// At least 100,000 events, fed while the processor (two stream threads,
/// each with its own transactions) is SIGKILLed at least eight times at
/// random moments (its transactions commit every 100 ms, so most kills find
/// records of the open transaction in flight) and restarted with the same
/// instance id each time.
#[test]
fn random_sigkills_lose_and_duplicate_nothing() {
    let _serial = serial();
    let s = Scenario::new(Broker::shared(), 3, "");
    let mut values = s.samples(80_000, 61, SampleFormat::Framed, true);
    values.extend(s.samples(20_000, 62, SampleFormat::Jsonl, true));
    // Slow enough that at least eight lives (each ~6 s to join and
    // restore) see events flowing.
    let feeder = Feeder::start(&s.broker.bootstrap(), &s.input, &s.files, values, 1_000);
    let mut rng = fastrand::Rng::with_seed(63);
    let mut kills = 0;
    let mut logs = Vec::new();
    let port = free_port();
    while !feeder.done() {
        let mut p = s.processor_on("random", Some(port), &["--stream-threads", "2"]);
        // Kill once this life has committed something, at a random moment
        // of its processing.
        let live = wait_until(TIMEOUT, || {
            assert!(p.running(), "{}", tail(&p.log_text(), 40));
            committed_inputs(port).is_some_and(|n| n > 0.0) || feeder.done()
        });
        assert!(live, "never committed:\n{}", tail(&p.log_text(), 40));
        if feeder.done() {
            logs.push(p.log_text());
            p.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..1500)));
        assert!(p.running(), "{}", tail(&p.log_text(), 40));
        p.kill();
        kills += 1;
        logs.push(p.log_text());
    }
    assert!(kills >= 8, "only {kills} kills while events flowed");
    let inputs = feeder.join();
    assert!(inputs.len() >= 100_000);
    let want = expected(&s, &inputs);
    let mut last = s.processor("random", &["--stream-threads", "2"]);
    wait_for_outputs(&s, &want, &mut last);
    stop(&mut last);
    verify(&s, &want, &format!("after {kills} random SIGKILLs"));
    let payload = payload_strings(&s.files, &inputs[..5000]);
    for log in logs.iter().chain(std::iter::once(&last.log_text())) {
        assert_no_payload_in(log, &payload);
    }
}

/// The topology of the reorder-window scenarios: gaps held for `window_ms`.
fn hold_topology(window_ms: u64) -> String {
    format!("ordering: {{on_gap: hold, reorder_window_ms: {window_ms}}}")
}

/// The state key (`entity_type/entity_id`) and `entity_version` of a
/// sample value.
fn entity_and_version(s: &Scenario, value: &[u8]) -> (String, i64) {
    let e = envelope_of(&s.files, value).expect("a sample value");
    let key = format!(
        "{}/{}",
        e["entity_type"].as_str().unwrap(),
        e["entity_id"].as_str().unwrap()
    );
    (key, e["entity_version"].as_i64().unwrap())
}

/// Sample values (each entity's versions in order, no anomalies) split into
/// what is produced first — every value but the version 2 of every other
/// entity that has one, so that entity's later versions arrive ahead of
/// their next one and are held — and the versions 2 withheld: indexes into
/// `values`, each list in produce order.
fn withhold_versions_2(s: &Scenario, values: &[Vec<u8>]) -> (Vec<usize>, Vec<usize>) {
    let (mut first, mut withheld) = (Vec::new(), Vec::new());
    let mut toggle = false;
    for (i, v) in values.iter().enumerate() {
        if entity_and_version(s, v).1 == 2 {
            toggle = !toggle;
            if toggle {
                withheld.push(i);
                continue;
            }
        }
        first.push(i);
    }
    (first, withheld)
}

/// Ends the window of every event the model holds; returns how many were
/// emitted as gaps.
fn expire_all_as_gaps(model: &mut Model) -> usize {
    let before = model.outcomes.len();
    model.expire_all();
    model.outcomes[before..]
        .iter()
        .filter(|o| matches!(o, Outcome::Routed(r) if r.verdict.label() == "gap"))
        .count()
}

/// Produces `values` but the versions 2 [`withhold_versions_2`] keeps back,
/// and feeds what it produced to a new model: returns the inputs, the
/// model (holding the events that wait for those versions) and the
/// indexes withheld.
fn produce_withholding(s: &Scenario, values: &[Vec<u8>]) -> (Vec<Input>, Model, Vec<usize>) {
    let (first, withheld) = withhold_versions_2(s, values);
    let inputs = produce(
        &s.broker.bootstrap(),
        &s.input,
        &s.files,
        &pick(values, &first),
    );
    let mut model = Model::new(s);
    model.feed(&inputs);
    (inputs, model, withheld)
}

/// `values[i]` for each index.
fn pick(values: &[Vec<u8>], at: &[usize]) -> Vec<Vec<u8>> {
    at.iter().map(|i| values[*i].clone()).collect()
}

/// A series of the processor's metrics on `port` (0 when absent).
fn series(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics").map_or(0.0, |(_, m)| metric(&m, name))
}

const HELD_NOW: &str = "privacy_router_held_events";
const HELD_TOTAL: &str = "privacy_router_held_events_total";

fn released(how: &str) -> String {
    format!("privacy_router_held_events_released_total{{how=\"{how}\"}}")
}

/// Waits until the processor on `port` committed `inputs` input records
/// and holds `held` events (its gauges are set at every commit).
fn wait_for_held(p: &mut Processor, port: u16, inputs: usize, held: usize) {
    let done = wait_until(TIMEOUT, || {
        assert!(p.running(), "the processor exited:\n{}", p.log_text());
        committed_inputs(port).is_some_and(|n| n == inputs as f64)
            && series(port, HELD_NOW) == held as f64
    });
    assert!(
        done,
        "{:?} of {inputs} inputs committed, {} of {held} held:\n{}",
        committed_inputs(port),
        series(port, HELD_NOW),
        tail(&p.log_text(), 40)
    );
}

/// Per record key of a tier topic (read_committed), in topic order: each
/// record's `entity_version` and `x-version-gap` headers. (After
/// [`verify`]: the topic is complete, a short quiet period will do.)
fn versions_by_key(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
) -> BTreeMap<Vec<u8>, Vec<(i64, Option<String>)>> {
    let mut out: BTreeMap<Vec<u8>, Vec<(i64, Option<String>)>> = BTreeMap::new();
    let quiet = Duration::from_millis(700);
    for (key, _, headers) in read_topic(bootstrap, topic, true, at_least, quiet, TIMEOUT).raw {
        let h = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let version = h("entity_version")
            .unwrap_or_else(|| panic!("{topic}: a record without entity_version"))
            .parse()
            .unwrap();
        out.entry(key.expect("tier records are keyed"))
            .or_default()
            .push((version, h("x-version-gap")));
    }
    out
}

/// The `entity_version` header of a normalised record.
fn version_of(r: &Rec) -> i64 {
    let (_, v) = r
        .headers
        .iter()
        .find(|(k, _)| k == "entity_version")
        .expect("tier records carry entity_version");
    String::from_utf8_lossy(v).parse().unwrap()
}

/// Each tier topic holds, per record key, the versions `want` has for it,
/// once each and in increasing order; with `every_version_of`, the
/// restricted one (which every event of these samples reaches) has every
/// version produced of every entity. Returns, per tier, the records with
/// an `x-version-gap` header: (version, header).
fn assert_versions_in_order(
    s: &Scenario,
    want: &PerTopic,
    every_version_of: Option<&[Input]>,
) -> BTreeMap<String, Vec<(i64, String)>> {
    let bootstrap = s.broker.bootstrap();
    let mut gaps = BTreeMap::new();
    for (i, tier) in s.topology.engine.topics.tiers.iter().enumerate() {
        let mut wanted: BTreeMap<Vec<u8>, Vec<i64>> = BTreeMap::new();
        for r in &want[&**tier] {
            let key = r.key.clone().expect("tier records are keyed");
            wanted.entry(key).or_default().push(version_of(r));
        }
        for v in wanted.values_mut() {
            v.sort_unstable();
        }
        if i == 2 {
            if let Some(inputs) = every_version_of {
                let mut produced: BTreeMap<Vec<u8>, Vec<i64>> = BTreeMap::new();
                for input in inputs {
                    let (key, version) = entity_and_version(s, &input.value);
                    let id = key.split_once('/').unwrap().1.as_bytes().to_vec();
                    produced.entry(id).or_default().push(version);
                }
                for (key, v) in produced.iter_mut() {
                    v.sort_unstable();
                    assert_eq!(
                        *v,
                        (1..=v.len() as i64).collect::<Vec<_>>(),
                        "{}",
                        String::from_utf8_lossy(key)
                    );
                }
                assert_eq!(wanted, produced, "{tier}: every version of every entity");
            }
        }
        let by_key = versions_by_key(&bootstrap, tier, want[&**tier].len());
        let mut g = Vec::new();
        for (key, records) in &by_key {
            let versions: Vec<i64> = records.iter().map(|(v, _)| *v).collect();
            assert_eq!(
                Some(&versions),
                wanted.get(key),
                "{tier}: the versions of {}, in topic order",
                String::from_utf8_lossy(key)
            );
            g.extend(
                records
                    .iter()
                    .filter_map(|(v, gap)| gap.clone().map(|gap| (*v, gap))),
            );
        }
        assert_eq!(by_key.len(), wanted.len(), "{tier}: entities");
        gaps.insert(tier.to_string(), g);
    }
    gaps
}

/// The held-event records of the changelog (read_committed or not), per
/// held key in order: `true` for a held record, `false` for a tombstone.
fn held_changelog(s: &Scenario, committed: bool) -> BTreeMap<Vec<u8>, Vec<bool>> {
    let changelog = s.topology.changelog_topic();
    let got = read_topic(
        &s.broker.bootstrap(),
        &changelog,
        committed,
        0,
        Duration::from_millis(700),
        TIMEOUT,
    );
    let mut out: BTreeMap<Vec<u8>, Vec<bool>> = BTreeMap::new();
    for (key, value, _) in got.raw {
        let key = key.unwrap_or_default();
        if key.starts_with(HELD_PREFIX) {
            out.entry(key).or_default().push(value.is_some());
        }
    }
    out
}

/// Held records and tombstones in a [`held_changelog`].
fn held_and_released(records: &BTreeMap<Vec<u8>, Vec<bool>>) -> (usize, usize) {
    let all = records.values().flatten();
    let held = all.clone().filter(|h| **h).count();
    (held, all.count() - held)
}

/// Every event held once (committed) was released once: each held key of
/// the committed changelog is one held record, then one tombstone.
fn assert_held_then_released(s: &Scenario, held: usize) {
    let records = held_changelog(s, true);
    assert_eq!(records.len(), held, "held keys in the changelog");
    for (key, r) in &records {
        assert_eq!(
            r,
            &[true, false],
            "changelog records of {}",
            String::from_utf8_lossy(key)
        );
    }
}

/// `ordering.on_gap: hold` with a window no test outlasts (600 s), so only
/// the missing versions release what is held. Every other entity's version
/// 2 is withheld: its later versions are held, committed (in the changelog,
/// with the input offsets past them, nothing in a tier), and the processor
/// is SIGKILLed. Restarted with the same instance id, it restores them; the
/// versions 2 arrive and release them in version order. Every tier holds
/// each entity's versions once, in order, with no `x-version-gap` header:
/// the same records as had the versions come in order. The restarted
/// instance counts the releases; each held changelog key ends with a
/// tombstone.
#[test]
fn held_events_survive_a_sigkill_and_follow_the_missing_versions_once() {
    let _serial = serial();
    let s = Scenario::new(Broker::shared(), 3, &hold_topology(600_000));
    let bootstrap = s.broker.bootstrap();
    let values = s.samples(2400, 151, SampleFormat::Framed, false);
    let (first, withheld) = withhold_versions_2(&s, &values[..1800]);
    let early = produce(&bootstrap, &s.input, &s.files, &pick(&values, &first));
    let mut model = Model::new(&s);
    model.feed(&early);
    let held = model.held();
    assert!(held > 200, "only {held} held");
    let want_early = model.expected(&s);

    // Two stream threads: each holds the events of its partitions; the
    // gauge is their sum.
    let threads = ["--stream-threads", "2"];
    let port = free_port();
    let mut p = s.processor_on("holder", Some(port), &threads);
    wait_for_outputs(&s, &want_early, &mut p);
    wait_for_held(&mut p, port, early.len(), held);
    assert_eq!(series(port, HELD_TOTAL), held as f64);
    for thread in ["0", "1"] {
        let age = format!("privacy_router_held_oldest_age_seconds{{thread=\"{thread}\"}}");
        assert!(
            wait_until(TIMEOUT, || series(port, &age) > 0.0),
            "the oldest held event of thread {thread} has no age"
        );
    }
    for how in ["in_order", "timeout", "bound"] {
        assert_eq!(series(port, &released(how)), 0.0, "{how}");
    }
    p.kill();
    let killed_log = p.log_text();

    let port = free_port();
    let mut p = s.processor_on("holder", Some(port), &threads);
    // Restored before anything else arrives.
    assert!(
        wait_until(TIMEOUT, || series(port, HELD_NOW) == held as f64),
        "{} of {held} held events restored:\n{}",
        series(port, HELD_NOW),
        tail(&p.log_text(), 40)
    );
    let late_values = [pick(&values, &withheld), values[1800..].to_vec()].concat();
    let late = produce(&bootstrap, &s.input, &s.files, &late_values);
    model.feed(&late);
    assert_eq!(model.held(), 0);
    let want = model.expected(&s);
    // The same records as had every entity's versions come in order.
    let mut in_order: Vec<(usize, Input)> = first.iter().copied().zip(early.clone()).collect();
    in_order.extend(
        withheld
            .iter()
            .copied()
            .chain(1800..values.len())
            .zip(late.clone()),
    );
    in_order.sort_by_key(|(i, _)| *i);
    let in_order: Vec<Input> = in_order.into_iter().map(|(_, i)| i).collect();
    assert_same(
        &expected(&s, &in_order),
        &want,
        "the model against the in-order engine",
    );

    wait_for_outputs(&s, &want, &mut p);
    wait_for_held(&mut p, port, late.len(), 0);
    assert_eq!(series(port, &released("in_order")), held as f64);
    assert_eq!(series(port, &released("timeout")), 0.0);
    assert_eq!(series(port, &released("bound")), 0.0);
    assert_eq!(series(port, HELD_TOTAL), 0.0, "nothing held again");
    assert_eq!(
        series(port, "privacy_router_ordering_total{verdict=\"gap\"}"),
        0.0
    );
    stop(&mut p);
    verify(&s, &want, "held events released after SIGKILL and restart");
    let inputs = [early, late].concat();
    let gaps = assert_versions_in_order(&s, &want, Some(&inputs));
    assert!(gaps.values().all(Vec::is_empty), "{gaps:?}");
    assert_held_then_released(&s, held);

    let log = p.log_text();
    assert!(log.contains("Held events restored"), "{}", tail(&log, 40));
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&killed_log, &payload);
    assert_no_payload_in(&log, &payload);
}

/// A held event whose reorder window (15 s) ends while its processor is
/// dead: the window counts on the wall clock from when it was held (the
/// time is in its changelog record), so the restarted instance emits it
/// once the window has passed — no sooner — as a gap (`x-version-gap: 1`),
/// its successors after it in order, each once. The missing versions 2
/// that come afterwards are stale; the entities go on from there.
#[test]
fn a_window_ending_across_a_sigkill_emits_the_held_events_once_as_gaps() {
    let _serial = serial();
    let window = Duration::from_secs(15);
    let s = Scenario::new(
        Broker::shared(),
        3,
        &hold_topology(window.as_millis() as u64),
    );
    let bootstrap = s.broker.bootstrap();
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    let values = s.samples(1600, 161, SampleFormat::Framed, false);
    let started = Instant::now();
    let (early, mut model, withheld) = produce_withholding(&s, &values[..1200]);
    let held = model.held();
    assert!(held > 50, "only {held} held");
    let want_early = model.expected(&s);

    let port = free_port();
    let mut p = s.processor_on("expiring", Some(port), &[]);
    wait_for_outputs(&s, &want_early, &mut p);
    wait_for_held(&mut p, port, early.len(), held);
    p.kill();
    // Every event was held after `started`: no window had ended at the
    // kill, and nothing held was sent, not even in an open transaction.
    assert!(
        started.elapsed() < window,
        "the first life took {:?}, longer than the window",
        started.elapsed()
    );
    assert_eq!(
        count(&bootstrap, &restricted, false),
        want_early[&restricted].len()
    );
    let killed_log = p.log_text();

    let gapped = expire_all_as_gaps(&mut model);
    assert!(gapped > 10, "{gapped} gaps");
    let want_expired = model.expected(&s);

    let port = free_port();
    let mut p = s.processor_on("expiring", Some(port), &[]);
    let mut counter = OutputCounter::new(&bootstrap, std::slice::from_ref(&restricted));
    assert!(
        wait_until(TIMEOUT, || {
            assert!(p.running(), "{}", tail(&p.log_text(), 40));
            counter.poll() > want_early[&restricted].len()
        }),
        "the held events were never emitted:\n{}",
        tail(&p.log_text(), 40)
    );
    assert!(
        started.elapsed() >= window,
        "emitted {:?} after the first hold, within the window",
        started.elapsed()
    );
    wait_for_outputs(&s, &want_expired, &mut p);
    wait_for_held(&mut p, port, 0, 0);
    assert_eq!(series(port, &released("timeout")), gapped as f64);
    assert_eq!(series(port, &released("in_order")), (held - gapped) as f64);
    assert_eq!(series(port, &released("bound")), 0.0);

    // The missing versions, late: stale. Then more of every entity.
    let late_values = [pick(&values, &withheld), values[1200..].to_vec()].concat();
    let late = produce(&bootstrap, &s.input, &s.files, &late_values);
    let before = model.outcomes.len();
    model.feed(&late);
    let stale = model.outcomes[before..]
        .iter()
        .filter(|o| matches!(o, Outcome::Skipped(v) if v.label() == "stale"))
        .count();
    assert_eq!(stale, gapped, "each gapped entity's version 2 is stale");
    assert_eq!(model.held(), 0);
    let want = model.expected(&s);
    wait_for_outputs(&s, &want, &mut p);
    wait_for_held(&mut p, port, late.len(), 0);
    assert_eq!(
        series(port, "privacy_router_ordering_total{verdict=\"stale\"}"),
        stale as f64
    );
    stop(&mut p);
    verify(&s, &want, "held events expired across a SIGKILL");
    let inputs = [early, late].concat();
    let gaps = assert_versions_in_order(&s, &want, None);
    // In the restricted tier, every gap is an entity's version 3 after its
    // version 1.
    assert_eq!(gaps[&restricted].len(), gapped, "{gaps:?}");
    assert!(
        gaps[&restricted]
            .iter()
            .all(|(v, gap)| *v == 3 && gap == "1"),
        "{gaps:?}"
    );
    assert_held_then_released(&s, held);
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&killed_log, &payload);
    assert_no_payload_in(&p.log_text(), &payload);
}

/// A frozen instance that holds events whose window ends while it is
/// frozen: a successor (another instance id, so another transactional id)
/// takes its partitions over, restores the held events and emits them as
/// gaps when the window ends. When the zombie wakes, its own window has
/// ended too, and it releases what it still holds in a transaction that
/// reads no input. That transaction must be fenced all the same (it sends
/// the group's committed offsets with its generation, which the group
/// coordinator refuses), so every held event reaches the tiers once.
#[test]
fn a_frozen_holder_whose_window_ends_releases_nothing_once_awake() {
    let _serial = serial();
    let window = Duration::from_secs(15);
    let s = Scenario::new(
        Broker::shared(),
        3,
        &hold_topology(window.as_millis() as u64),
    );
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    let values = s.samples(1200, 163, SampleFormat::Framed, false);
    let started = Instant::now();
    let (inputs, mut model, _) = produce_withholding(&s, &values);
    let held = model.held();
    assert!(held > 30, "only {held} held");
    let want_early = model.expected(&s);

    let port_a = free_port();
    let mut a = s.processor_on("frozen-holder", Some(port_a), &[]);
    wait_for_outputs(&s, &want_early, &mut a);
    wait_for_held(&mut a, port_a, inputs.len(), held);
    signal(a.pid(), "STOP");
    assert!(
        started.elapsed() < window,
        "the holder took {:?} to hold, longer than the window",
        started.elapsed()
    );

    let gapped = expire_all_as_gaps(&mut model);
    assert!(gapped > 5, "{gapped} gaps");
    let want = model.expected(&s);

    let port_b = free_port();
    let mut b = s.processor_on("successor", Some(port_b), &[]);
    wait_for_outputs(&s, &want, &mut b);
    assert!(
        wait_until(TIMEOUT, || series(port_b, HELD_NOW) == 0.0
            && series(port_b, &released("timeout")) == gapped as f64),
        "the successor did not release the held events:\n{}",
        tail(&b.log_text(), 40)
    );
    assert!(started.elapsed() >= window);

    // Awake, the zombie's window has ended: whatever it does, it must not
    // commit what it held.
    let before_wake = a.log_text().len();
    signal(a.pid(), "CONT");
    let gave_up = wait_until(Duration::from_secs(60), || {
        let log = a.log_text();
        let after = log.get(before_wake..).unwrap_or_default();
        !a.running() || after.contains("Partitions revoked.")
    });
    let a_log = a.log_text();
    assert!(
        gave_up,
        "the woken holder kept its partitions:\n{}",
        tail(&a_log, 40)
    );
    // What a zombie's commit would add shows up within a commit interval;
    // give it several.
    std::thread::sleep(Duration::from_secs(3));
    if a.running() {
        stop(&mut a);
    }
    stop(&mut b);
    verify(&s, &want, "a frozen holder woke after its window ended");
    let gaps = assert_versions_in_order(&s, &want, None);
    assert_eq!(gaps[&restricted].len(), gapped, "{gaps:?}");
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&a_log, &payload);
    assert_no_payload_in(&b.log_text(), &payload);
}

/// Stream time is the window's clock, and where it stood at each hold
/// survives a crash: with a window (600 s) the wall clock never reaches
/// here, events are held and committed, then SIGKILL and a restart. Records
/// of other entities stamped just short of the window after the first
/// input release nothing; records stamped past it on every partition end
/// the window of every held event at once: each is emitted once, as a gap,
/// its successors after it in order.
#[test]
fn restored_stream_time_ends_the_window_after_a_sigkill() {
    let _serial = serial();
    let window_ms = 600_000;
    let s = Scenario::new(Broker::shared(), 3, &hold_topology(window_ms));
    let bootstrap = s.broker.bootstrap();
    let values = s.samples(1600, 181, SampleFormat::Framed, false);
    let (first, withheld) = withhold_versions_2(&s, &values[..1200]);
    let epoch_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // Every input is stamped after this, so every hold's stream time is too.
    let t0 = epoch_ms();
    let early = produce(&bootstrap, &s.input, &s.files, &pick(&values, &first));
    let mut model = Model::new(&s);
    model.feed(&early);
    let held = model.held();
    assert!(held > 50, "only {held} held");
    let want_early = model.expected(&s);

    let port = free_port();
    let mut p = s.processor_on("streaming", Some(port), &[]);
    wait_for_outputs(&s, &want_early, &mut p);
    wait_for_held(&mut p, port, early.len(), held);
    p.kill();
    let killed_log = p.log_text();

    let port = free_port();
    let mut p = s.processor_on("streaming", Some(port), &[]);
    assert!(
        wait_until(TIMEOUT, || series(port, HELD_NOW) == held as f64),
        "{} of {held} held events restored:\n{}",
        series(port, HELD_NOW),
        tail(&p.log_text(), 40)
    );
    // Later versions of entities that hold nothing, from the future.
    let gapped: std::collections::BTreeSet<String> = withheld
        .iter()
        .map(|i| entity_and_version(&s, &values[*i]).0)
        .collect();
    let others: Vec<Vec<u8>> = values[1200..]
        .iter()
        .filter(|v| !gapped.contains(&entity_and_version(&s, v).0))
        .take(80)
        .cloned()
        .collect();
    let at = |values: &[Vec<u8>], timestamp: i64| {
        let keys = values.iter().map(|v| entity_id_of(&s.files, v)).collect();
        let inputs = produce_keyed_at(&bootstrap, &s.input, values, keys, Some(timestamp));
        let reached: std::collections::BTreeSet<i32> = inputs.iter().map(|i| i.partition).collect();
        assert_eq!(reached.len(), 3, "every partition is reached");
        inputs
    };
    // Short of every window: nothing is released.
    let almost = at(&others[..40], t0 + window_ms as i64 - 1000);
    model.feed(&almost);
    let want_almost = model.expected(&s);
    wait_for_outputs(&s, &want_almost, &mut p);
    wait_for_held(&mut p, port, almost.len(), held);
    assert_eq!(series(port, &released("timeout")), 0.0);
    // Past every window.
    let future = at(&others[40..], epoch_ms() + window_ms as i64 + 1000);
    let expired = expire_all_as_gaps(&mut model);
    model.feed(&future);
    assert_eq!(model.held(), 0);
    let want = model.expected(&s);
    wait_for_outputs(&s, &want, &mut p);
    wait_for_held(&mut p, port, almost.len() + future.len(), 0);
    assert_eq!(series(port, &released("timeout")), expired as f64);
    assert_eq!(series(port, &released("in_order")), (held - expired) as f64);
    assert_eq!(series(port, HELD_TOTAL), 0.0);
    stop(&mut p);
    verify(&s, &want, "held events expired by the restored stream time");
    let gaps = assert_versions_in_order(&s, &want, None);
    let restricted = &s.topology.engine.topics.tiers[2];
    assert_eq!(gaps[&**restricted].len(), expired, "{gaps:?}");
    assert!(
        gaps[&**restricted]
            .iter()
            .all(|(v, gap)| *v == 3 && gap == "1"),
        "{gaps:?}"
    );
    assert_held_then_released(&s, held);
    let inputs = [early, almost, future].concat();
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&killed_log, &payload);
    assert_no_payload_in(&p.log_text(), &payload);
}

/// Re-frames the values at `at` with the schema ids of `versions` and keeps
/// the registry stand-in from answering for those ids until [`release`].
fn hold_schema_fetches(s: &Scenario, values: &mut [Vec<u8>], versions: &BTreeMap<u32, u32>) {
    reframe(values, &|id| versions.get(&id).copied());
    let inner = &s.registry.inner;
    inner
        .hold_ids_to
        .store(*versions.values().max().unwrap(), Ordering::SeqCst);
    inner
        .hold_ids_from
        .store(*versions.values().min().unwrap(), Ordering::SeqCst);
}

/// Waits until the processor waits for the registry in the middle of a
/// transaction: a schema fetch the stand-in holds, besides the `before`
/// it held already (a killed processor's may stay counted).
fn wait_for_a_held_fetch(s: &Scenario, p: &mut Processor, before: usize) {
    assert!(
        wait_until(TIMEOUT, || {
            assert!(p.running(), "{}", tail(&p.log_text(), 40));
            held(s) > before
        }),
        "the processor never reached the held schema:\n{}",
        tail(&p.log_text(), 40)
    );
    std::thread::sleep(Duration::from_millis(500));
}

/// SIGKILL twice with transactions open (commits every 5 s; the registry
/// stand-in keeps a schema fetch waiting, so the kill finds the
/// transaction's records sent): first one that holds events (its held
/// changelog records are there, uncommitted), then, restarted, one that
/// releases them (its tombstones and released outputs are there,
/// uncommitted). Each restart with the same instance id aborts the open
/// transaction, restores the held events as committed and reads the inputs
/// again: every version once in every tier, in order, no gap.
#[test]
fn sigkills_in_transactions_that_hold_and_release_lose_and_duplicate_nothing() {
    let _serial = serial();
    let mut s = Scenario::new(Broker::shared(), 3, &hold_topology(600_000));
    s.registry_timeout_ms = 60_000;
    let text = std::fs::read_to_string(&s.topology_path).unwrap();
    let slow = text.replace("commit_interval_ms: 100\n", "commit_interval_ms: 5000\n");
    assert_ne!(text, slow);
    std::fs::write(&s.topology_path, slow).unwrap();
    let bootstrap = s.broker.bootstrap();
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    let versions_a = s.new_versions("second version");
    let versions_b = s.new_versions("third version");
    let values = s.samples(2400, 171, SampleFormat::Framed, false);
    let (first, withheld) = withhold_versions_2(&s, &values[..2000]);
    let mut early_values = pick(&values, &first);
    // The last few of the first part (on every partition, likely) wait for
    // their schema.
    let n = early_values.len();
    hold_schema_fetches(&s, &mut early_values[n - 12..], &versions_a);
    let early = produce(&bootstrap, &s.input, &s.files, &early_values);
    let mut model = Model::new(&s);
    model.feed(&early);
    let held_early = model.held();
    assert!(held_early > 200, "only {held_early} held");
    let want_early = model.expected(&s);

    let mut p = s.processor("twice", &[]);
    wait_for_a_held_fetch(&s, &mut p, 0);
    let (open, _) = held_and_released(&held_changelog(&s, false));
    let (committed, _) = held_and_released(&held_changelog(&s, true));
    assert!(
        committed < open,
        "the open transaction holds events ({committed} held committed, {open} sent)"
    );
    p.kill();
    release(&s);
    let first_log = p.log_text();

    let port = free_port();
    let mut p = s.processor_on("twice", Some(port), &[]);
    wait_for_outputs(&s, &want_early, &mut p);
    assert!(
        wait_until(TIMEOUT, || series(port, HELD_NOW) == held_early as f64),
        "{} of {held_early} held:\n{}",
        series(port, HELD_NOW),
        tail(&p.log_text(), 40)
    );
    // The versions 2, then a few more events that wait for their schema.
    let mut late_values = [pick(&values, &withheld), values[2000..2012].to_vec()].concat();
    let n = late_values.len();
    hold_schema_fetches(&s, &mut late_values[n - 12..], &versions_b);
    let before = held(&s);
    let late = produce(&bootstrap, &s.input, &s.files, &late_values);
    wait_for_a_held_fetch(&s, &mut p, before);
    let (_, open) = held_and_released(&held_changelog(&s, false));
    let (_, committed) = held_and_released(&held_changelog(&s, true));
    assert!(
        committed < open,
        "the open transaction releases held events ({committed} released committed, {open} sent)"
    );
    assert!(count(&bootstrap, &restricted, true) < count(&bootstrap, &restricted, false));
    p.kill();
    release(&s);
    let second_log = p.log_text();

    let rest = produce(&bootstrap, &s.input, &s.files, &values[2012..]);
    model.feed(&late);
    model.feed(&rest);
    assert_eq!(model.held(), 0);
    let want = model.expected(&s);
    let port = free_port();
    let mut p = s.processor_on("twice", Some(port), &[]);
    wait_for_outputs(&s, &want, &mut p);
    assert!(
        wait_until(TIMEOUT, || series(port, HELD_NOW) == 0.0),
        "{}",
        tail(&p.log_text(), 40)
    );
    stop(&mut p);
    verify(&s, &want, "after SIGKILLs while holding and releasing");
    // The killed transactions' records are on the broker, aborted.
    assert!(count(&bootstrap, &restricted, false) > want[&restricted].len());
    let inputs = [early, late, rest].concat();
    let gaps = assert_versions_in_order(&s, &want, Some(&inputs));
    assert!(gaps.values().all(Vec::is_empty), "{gaps:?}");
    assert_held_then_released(&s, held_early);
    let payload = payload_strings(&s.files, &inputs);
    for log in [&first_log, &second_log, &p.log_text()] {
        assert_no_payload_in(log, &payload);
    }
}

/// Two instances in one group; one is stopped (SIGTERM) in the middle of
/// the stream; the other takes over its partitions with their restored
/// ordering state. Nothing is lost or duplicated.
#[test]
fn a_second_instance_takes_over_with_the_restored_state() {
    let _serial = serial();
    let mut s = Scenario::new(Broker::shared(), 4, "");
    s.registry_timeout_ms = 2000;
    let inputs = held_stream(&mut s, 20_000, 31);
    let want = expected(&s, &inputs);

    let mut a = s.processor("a", &[]);
    let mut b = s.processor("b", &[]);
    // A must own partitions (restored) when it is stopped: the registry
    // holds whoever processes first, and an assignment may still be
    // waiting for the previous owner's transaction to end.
    assert!(
        wait_until(TIMEOUT, || held(&s) >= 2
            && a.log_text().contains("Partitions assigned and restored.")),
        "both instances should wait for the registry, A with partitions:\nA:\n{}\nB:\n{}",
        tail(&a.log_text(), 20),
        tail(&b.log_text(), 20)
    );
    stop(&mut a);
    release(&s);
    wait_for_outputs(&s, &want, &mut b);
    stop(&mut b);
    verify(&s, &want, "after the takeover");

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

/// A zombie: an instance is frozen (SIGSTOP) in the middle of a
/// transaction; a second instance with another instance id takes its
/// partitions and goes on; then the frozen one is resumed (SIGCONT). It
/// is fenced: it commits nothing more and causes no duplicate, and it
/// exits (exit code 3, naming the fencing) or recovers cleanly.
#[test]
fn a_frozen_zombie_is_fenced() {
    let _serial = serial();
    let s = Scenario::new(Broker::shared(), 3, "");
    // 30 s of events: they still flow when A is frozen, so A most likely
    // holds an open transaction with records in it (frozen just after a
    // commit, it holds nothing, and there is nothing for it to abort).
    let values = s.samples(30_000, 71, SampleFormat::Framed, true);
    let feeder = Feeder::start(&s.broker.bootstrap(), &s.input, &s.files, values, 1_000);
    let port_a = free_port();
    let mut a = s.processor_on("zombie", Some(port_a), &[]);
    assert!(
        wait_until(TIMEOUT, || committed_inputs(port_a)
            .is_some_and(|n| n > 2000.0)),
        "{}",
        tail(&a.log_text(), 30)
    );
    let frozen_at = committed_inputs(port_a).unwrap_or(0.0);
    assert!(
        !feeder.done(),
        "the events ended before A was frozen: it would hold nothing"
    );
    signal(a.pid(), "STOP");
    let port_b = free_port();
    let mut b = s.processor_on("successor", Some(port_b), &[]);
    // B gets every partition once A's session expires, and goes on.
    assert!(
        wait_until(TIMEOUT, || committed_inputs(port_b)
            .is_some_and(|n| n > 2000.0)),
        "the successor never took over:\n{}",
        tail(&b.log_text(), 40)
    );
    let before_wake = a.log_text().len();
    signal(a.pid(), "CONT");
    // The zombie finds out; it must not commit what it held.
    let exit = a.wait_exit(Duration::from_secs(60));
    let a_log = a.log_text();
    let after_wake = a_log.get(before_wake..).unwrap_or_default();
    match exit {
        Some(status) => {
            assert_eq!(
                status.code(),
                Some(3),
                "a fenced zombie exits 3:\n{}",
                tail(&a_log, 40)
            );
            assert!(
                a_log.contains("fenced") || a_log.contains("Fenced"),
                "the zombie says why it stops:\n{}",
                tail(&a_log, 40)
            );
        }
        None => {
            // It recovered: once awake it lost its partitions, aborting
            // what it held. Frozen just after a commit, it held nothing:
            // then there is nothing to abort and only the loss shows.
            assert!(
                after_wake.contains("Transaction aborted")
                    || after_wake.contains("Partitions revoked."),
                "the woken zombie neither aborted nor gave its partitions up:\n{}",
                tail(&a_log, 60)
            );
            stop(&mut a);
        }
    }
    let inputs = feeder.join();
    let want = expected(&s, &inputs);
    wait_for_outputs(&s, &want, &mut b);
    stop(&mut b);
    verify(&s, &want, "after the zombie was resumed");
    assert!(frozen_at > 0.0);
    let payload = payload_strings(&s.files, &inputs);
    assert_no_payload_in(&a_log, &payload);
    assert_no_payload_in(&b.log_text(), &payload);
}

/// An instance killed and never restarted; its partitions go to an instance
/// with another id (which cannot fence it: only the broker's transaction
/// timeout ends the dead transaction). That timeout is 10 s, as in Kafka
/// Streams: the dead transaction holds back read_committed readers of the
/// partitions it wrote for no longer than that.
#[test]
fn a_dead_transaction_holds_readers_back_no_longer_than_its_timeout() {
    let _serial = serial();
    let mut s = Scenario::new(Broker::shared(), 3, "");
    s.registry_timeout_ms = 60_000;
    let inputs = held_stream(&mut s, 20_000, 81);
    let want = expected(&s, &inputs);
    let bootstrap = s.broker.bootstrap();
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    let mut a = s.processor("gone", &[]);
    assert!(
        wait_until(TIMEOUT, || held(&s) > 0),
        "{}",
        tail(&a.log_text(), 30)
    );
    std::thread::sleep(Duration::from_millis(500));
    a.kill();
    let killed = Instant::now();
    let open = |topic: &str| {
        stable_and_high(&bootstrap, topic)
            .iter()
            .any(|(lso, hw)| lso < hw)
    };
    assert!(open(&restricted), "the dead transaction is open at first");
    // Aborted by the broker within transaction.timeout.ms (10 s) plus its
    // check interval (1 s in scripts/kafka.sh).
    assert!(
        wait_until(Duration::from_secs(30), || !open(&restricted)),
        "still open after {:?}",
        killed.elapsed()
    );
    let held_for = killed.elapsed();
    assert!(
        held_for <= Duration::from_secs(13),
        "readers were held back for {held_for:?}"
    );
    release(&s);
    let mut b = s.processor("new-identity", &[]);
    wait_for_outputs(&s, &want, &mut b);
    stop(&mut b);
    verify(&s, &want, "after a crash taken over by a new identity");
}

/// The registry answers 503 at start-up, then the single broker is
/// SIGKILLed for 20 s in the middle of the stream and restarted on its log
/// directories: the processor waits and retries, skips nothing and
/// dead-letters nothing because of it.
#[test]
fn registry_503_and_a_broker_killed_for_20_s_lose_nothing() {
    let _serial = serial();
    let mut s = Scenario::new(Broker::own(1, false), 3, "");
    let inputs = held_stream(&mut s, 20_000, 41);
    let want = expected(&s, &inputs);
    let inner = s.registry.inner.clone();
    inner.unavailable.store(true, Ordering::SeqCst);

    let mut p = s.processor("flaky", &[]);
    assert!(
        wait_until(TIMEOUT, || inner.refused.load(Ordering::SeqCst) >= 3),
        "the processor should keep asking the registry:\n{}",
        tail(&p.log_text(), 20)
    );
    assert_eq!(
        total(&s.broker.bootstrap(), &s.outputs(), false),
        0,
        "nothing is emitted or dead-lettered while the registry is down"
    );
    inner.unavailable.store(false, Ordering::SeqCst);
    assert!(
        wait_until(TIMEOUT, || held(&s) > 0),
        "{}",
        tail(&p.log_text(), 20)
    );
    s.broker.kill_node(1);
    release(&s);
    std::thread::sleep(Duration::from_secs(20));
    assert!(
        p.running(),
        "the processor survives the broker being away:\n{}",
        tail(&p.log_text(), 30)
    );
    s.broker.start_node(1);

    // Kafka 4.4 restarting after a crash can abort the processor's timed-out
    // transaction while it does not know its partitions' leaders yet, and
    // skip the abort markers (see docs/architecture.md): the transaction
    // hangs. The processor then stops rather than commit it with its next
    // one; the operator aborts it and restarts the processor.
    let wanted: usize = want.values().map(Vec::len).sum();
    let mut counter = OutputCounter::new(&s.broker.bootstrap(), &s.outputs());
    let mut logs = Vec::new();
    let done = wait_until(TIMEOUT, || {
        if !p.running() {
            let log = p.log_text();
            let hanging = hanging_in(&log);
            assert!(
                !hanging.is_empty(),
                "the processor exited, not for a hanging transaction:\n{}",
                tail(&log, 40)
            );
            for (topic, partition, offset) in hanging {
                s.broker.abort_hanging(&topic, partition, offset);
            }
            logs.push(log);
            p = s.processor("flaky", &[]);
        }
        counter.poll() >= wanted
    });
    assert!(done, "{}", tail(&p.log_text(), 40));
    stop(&mut p);
    verify(&s, &want, "after registry 503 and a broker killed for 20 s");
    for l in &logs {
        assert_no_payload_in(l, &payload_strings(&s.files, &inputs));
    }
    let log = logs.first().cloned().unwrap_or_else(|| p.log_text());
    assert!(
        log.contains("The schema registry is unavailable at start-up"),
        "{log}"
    );
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}

/// Three brokers (replication 3, min.insync.replicas 2): the leader of a
/// tier partition (the group coordinator's broker when it leads one) and
/// the processor's transaction coordinator are SIGKILLed mid-stream (and
/// restarted): nothing lost, nothing duplicated, nothing dead-lettered
/// because of it.
#[test]
fn three_brokers_lose_a_tier_leader_and_the_transaction_coordinator() {
    let _serial = serial();
    let s = Scenario::new(Broker::own(3, false), 3, "");
    let values = s.samples(30_000, 91, SampleFormat::Framed, true);
    let bootstrap = s.broker.bootstrap();
    let feeder = Feeder::start(&bootstrap, &s.input, &s.files, values, 1_500);
    let port = free_port();
    let mut p = s.processor_on("ha", Some(port), &[]);
    assert!(
        wait_until(TIMEOUT, || committed_inputs(port)
            .is_some_and(|n| n > 3000.0)),
        "{}",
        tail(&p.log_text(), 30)
    );
    // The leader of a restricted partition; the group coordinator's broker
    // when it leads one (it usually does: three partitions, three brokers),
    // so that the processor loses its group coordinator too: librdkafka's
    // send_offsets_to_transaction can then block past its timeout
    // (confluentinc/librdkafka#5511), which the processor must survive.
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    let group_coordinator = s.broker.leader_of(
        "__consumer_offsets",
        transaction_partition(&s.topology.spec.application_id, 10),
    );
    let leader = (0..3)
        .map(|p| s.broker.leader_of(&restricted, p))
        .find(|l| *l == group_coordinator)
        .unwrap_or_else(|| s.broker.leader_of(&restricted, 0));
    s.broker.kill_node(leader as u8);
    let before = committed_inputs(port).unwrap_or(0.0);
    assert!(
        wait_until(TIMEOUT, || committed_inputs(port)
            .is_some_and(|n| n > before + 3000.0)),
        "no progress without the tier leader {leader} ({} inputs sent):\n{}",
        feeder.sent.load(Ordering::SeqCst),
        tail(&p.log_text(), 40)
    );
    s.broker.start_node(leader as u8);
    let mut topics = s.outputs();
    topics.push(s.input.clone());
    topics.push(s.topology.changelog_topic());
    s.broker.wait_in_sync(&topics);
    // The coordinator of transactional id <application_id>-<instance_id>.
    let txn_id = format!("{}-ha", s.topology.spec.application_id);
    let coordinator = s
        .broker
        .leader_of("__transaction_state", transaction_partition(&txn_id, 10));
    s.broker.kill_node(coordinator as u8);
    let before = committed_inputs(port).unwrap_or(0.0);
    assert!(
        wait_until(TIMEOUT, || committed_inputs(port)
            .is_some_and(|n| n > before + 3000.0)
            || feeder.done()),
        "no progress without the transaction coordinator {coordinator} ({} inputs sent):\n{}",
        feeder.sent.load(Ordering::SeqCst),
        tail(&p.log_text(), 40)
    );
    s.broker.start_node(coordinator as u8);
    let inputs = feeder.join();
    let want = expected(&s, &inputs);
    wait_for_outputs(&s, &want, &mut p);
    stop(&mut p);
    verify(
        &s,
        &want,
        "after losing a tier leader and the transaction coordinator",
    );
    assert_no_payload_in(&p.log_text(), &payload_strings(&s.files, &inputs));
}

/// Three instances in one group on a 6-partition input, each with 1 to 3
/// stream threads (drawn again at every start); for `secs` they stop
/// (SIGTERM), crash (SIGKILL) and start again every few seconds while
/// events flow; then the survivors finish the stream.
fn rebalance_storm(extra: &[&str], session_timeout: bool, secs: u64, seed: u64) {
    let mut s = Scenario::new(Broker::shared(), 6, "");
    if !session_timeout {
        // The consumer group protocol (KIP-848) sets timeouts on the broker.
        s.kafka_settings.clear();
    }
    let rate = 2_000;
    let values = s.samples((rate * secs) as usize, seed, SampleFormat::Framed, true);
    let feeder = Feeder::start(&s.broker.bootstrap(), &s.input, &s.files, values, rate);
    let ids = ["storm-a", "storm-b", "storm-c"];
    let mut rng = fastrand::Rng::with_seed(seed);
    // Each start runs 1 to 3 stream threads, so an instance's thread count
    // changes between its lives (a dropped thread's transactional id is
    // never fenced: the broker aborts its open transaction on timeout).
    let start = |id: &str, rng: &mut fastrand::Rng| {
        let threads = rng.u8(1..=3).to_string();
        let mut args = extra.to_vec();
        args.extend(["--stream-threads", &threads]);
        s.processor(id, &args)
    };
    let mut ps: Vec<Option<Processor>> = ids.iter().map(|i| Some(start(i, &mut rng))).collect();
    let until = Instant::now() + Duration::from_secs(secs);
    let (mut terms, mut kills, mut starts) = (0, 0, 0);
    let mut logs = Vec::new();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(rng.u64(1000..3000)));
        let i = rng.usize(0..ids.len());
        match ps[i].take() {
            Some(mut p) => {
                if rng.bool() {
                    stop(&mut p);
                    terms += 1;
                } else {
                    p.kill();
                    kills += 1;
                }
                logs.push(p.log_text());
            }
            None => {
                ps[i] = Some(start(ids[i], &mut rng));
                starts += 1;
            }
        }
    }
    for (i, p) in ps.iter_mut().enumerate() {
        if p.is_none() {
            *p = Some(start(ids[i], &mut rng));
        }
    }
    let inputs = feeder.join();
    let want = expected(&s, &inputs);
    let mut first = ps[0].take().unwrap();
    wait_for_outputs(&s, &want, &mut first);
    stop(&mut first);
    for p in ps.iter_mut().flatten() {
        stop(p);
        logs.push(p.log_text());
    }
    verify(
        &s,
        &want,
        &format!("after a storm of {terms} stops, {kills} kills and {starts} starts"),
    );
    assert!(
        terms + kills >= 10,
        "{terms} stops, {kills} kills, {starts} starts"
    );
    let payload = payload_strings(&s.files, &inputs[..3000]);
    for log in &logs {
        assert_no_payload_in(log, &payload);
    }
}

#[test]
fn a_rebalance_storm_loses_and_duplicates_nothing() {
    let _serial = serial();
    rebalance_storm(&[], true, 60, 101);
}

/// The same storm with the consumer group protocol of KIP-848
/// (`group.protocol=consumer`), which librdkafka 2.12 and Kafka 4.x speak:
/// assignments change incrementally, and the processor's revoke and assign
/// callbacks handle partial assignments.
#[test]
fn a_rebalance_storm_with_the_kip_848_protocol_loses_and_duplicates_nothing() {
    let _serial = serial();
    rebalance_storm(&["-X", "group.protocol=consumer"], false, 60, 111);
}

/// The broker listens with TLS and SASL/SCRAM too: the processor reaches it
/// through librdkafka settings alone, end to end; a wrong password fails
/// start-up with a clear error and no secret in the log. The good settings
/// come from a properties file (`--kafka-config FILE`).
#[test]
fn tls_and_sasl_scram_through_librdkafka_settings() {
    let _serial = serial();
    let broker = Broker::own(1, true);
    let (sasl_ssl, ca) = broker.sasl_ssl();
    let mut s = Scenario::new(broker, 3, "");
    let values = s.samples(2000, 121, SampleFormat::Framed, true);
    let inputs = produce(&s.broker.bootstrap(), &s.input, &s.files, &values);
    let want = expected(&s, &inputs);
    let secure = |password: &str| {
        vec![
            "security.protocol=SASL_SSL".to_owned(),
            "sasl.mechanisms=SCRAM-SHA-512".to_owned(),
            "sasl.username=router".to_owned(),
            format!("sasl.password={password}"),
            format!("ssl.ca.location={}", ca.display()),
            "session.timeout.ms=6000".to_owned(),
        ]
    };
    // Wrong password: refused at start-up, clearly, without the secret.
    s.kafka_settings = secure("not-the-password-42");
    let mut wrong = s.processor_with_brokers("wrong", &sasl_ssl, &[]);
    let status = wrong
        .wait_exit(Duration::from_secs(90))
        .expect("start-up fails with a wrong password");
    assert_eq!(status.code(), Some(1));
    let log = wrong.log_text();
    assert!(
        log.contains("uthentication") || log.contains("SASL"),
        "the error says authentication failed:\n{log}"
    );
    assert!(!log.contains("not-the-password-42"), "{log}");

    // The right one from a librdkafka properties file (`--kafka-config
    // FILE`, like kcat -F), so the password is on no command line.
    let properties = s.dir.path().join("client.properties");
    let mut text = "# librdkafka settings of the processor\n\n".to_owned();
    for line in secure("router-secret") {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&properties, text).unwrap();
    s.kafka_settings = vec![properties.display().to_string()];
    let mut p = s.processor_with_brokers("secure", &sasl_ssl, &[]);
    wait_for_outputs(&s, &want, &mut p);
    stop(&mut p);
    verify(&s, &want, "over SASL_SSL");
    let log = p.log_text();
    assert!(!log.contains("router-secret"), "{log}");
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}

/// The changelog is compacted for real (small segments, a low dirty ratio)
/// while the processor runs; a restore after compaction yields the same
/// versions: the next events are ordered against them as the pure engine
/// orders them.
#[test]
fn a_restore_after_compaction_yields_the_same_versions() {
    let _serial = serial();
    let s = Scenario::with_changelog(
        Broker::shared(),
        3,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "500"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "100"),
            ("min.compaction.lag.ms", "0"),
        ],
    );
    let bootstrap = s.broker.bootstrap();
    let changelog = s.topology.changelog_topic();
    // Few entities, many versions each: most changelog records are
    // superseded. One generator, so versions keep increasing.
    let mut g = s.generator(131, 20);
    let mut next = |n: usize| (0..n).map(|_| g.next_record()).collect::<Vec<_>>();
    let mut inputs = produce(&bootstrap, &s.input, &s.files, &next(6000));
    let want = expected(&s, &inputs);
    let mut p = s.processor("compacted", &[]);
    wait_for_outputs(&s, &want, &mut p);
    let written = count(&bootstrap, &changelog, false);
    // The cleaner runs once a segment has rolled: keep a trickle going.
    let compacted = wait_until(Duration::from_secs(120), || {
        inputs.extend(produce(&bootstrap, &s.input, &s.files, &next(30)));
        std::thread::sleep(Duration::from_millis(700));
        count(&bootstrap, &changelog, false) < written / 2
    });
    assert!(
        compacted,
        "the changelog of {written} records was never compacted"
    );
    let want = expected(&s, &inputs);
    wait_for_outputs(&s, &want, &mut p);
    stop(&mut p);
    // Restart on the compacted changelog; more versions of the same
    // entities follow.
    inputs.extend(produce(&bootstrap, &s.input, &s.files, &next(3000)));
    let want = expected(&s, &inputs);
    let mut q = s.processor("compacted", &[]);
    wait_for_outputs(&s, &want, &mut q);
    stop(&mut q);
    verify(&s, &want, "after a restore from the compacted changelog");
    let restored = restored_records(&q.log_text());
    assert!(
        restored > 0 && (restored as usize) < written / 2,
        "restored {restored} of {written} changelog records"
    );
}

/// A producer's legal schema change that the output subject refuses: a
/// field of user.created becomes public in version 2, so the public
/// derived schema gains a field without a default, which the registry's
/// default BACKWARD compatibility refuses (409). The events that need it
/// are dead-lettered as derived_schema_rejected, unchanged; every other
/// event (and user.created version 1) keeps flowing; the refusal is
/// counted and logged once.
#[test]
fn a_refused_derived_schema_dead_letters_only_the_events_that_need_it() {
    let _serial = serial();
    let s = Scenario::new(Broker::shared(), 3, "");
    let subject = s.topology.engine.subjects.subject(&s.input, "user.created");
    let v1 = &s
        .files
        .events
        .iter()
        .find(|e| e.event_type == "user.created")
        .unwrap()
        .text;
    let mut v2: serde_json::Value = serde_json::from_str(v1).unwrap();
    for f in v2["fields"].as_array_mut().unwrap() {
        if f["name"] == "data" {
            for g in f["type"]["fields"].as_array_mut().unwrap() {
                if g["name"] == "locale" {
                    g["privacy"] = "public".into();
                }
            }
        }
    }
    let v2 = v2.to_string();
    s.registry.register(&subject, &v2);
    let mut files = s.files.clone();
    privacy_router::schema::SchemaLookup::register(&mut files.registry, &subject, &v2).unwrap();
    let s = Scenario { files, ..s };

    let mut values = s.samples(1500, 141, SampleFormat::Jsonl, false);
    // Every user.created of the second half written with version 2.
    for v in &mut values[750..] {
        let mut e: serde_json::Value = serde_json::from_slice(v).unwrap();
        if e["event_type"] == "user.created" {
            e["schema_version"] = 2.into();
            *v = serde_json::to_vec(&e).unwrap();
        }
    }
    // Version 1 events first (they register the public derived schema),
    // then version 2.
    let mut inputs = produce(&s.broker.bootstrap(), &s.input, &s.files, &values[..750]);
    let port = free_port();
    let mut p = s.processor_on("refused", Some(port), &[]);
    wait_for_outputs(&s, &expected(&s, &inputs), &mut p);
    inputs.extend(produce(
        &s.broker.bootstrap(),
        &s.input,
        &s.files,
        &values[750..],
    ));
    let want = expected(&s, &inputs);
    let counts = expected_counts(&s, &inputs);
    let refused = counts
        .reasons
        .get("derived_schema_rejected")
        .copied()
        .unwrap_or(0);
    assert!(refused > 0, "{counts:?}");
    wait_for_outputs(&s, &want, &mut p);
    let (_, m) = http_get(port, "/metrics").unwrap();
    assert!(
        metric(
            &m,
            "privacy_router_derived_schemas_refused_total{tier=\"public\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "privacy_router_dead_letters_total{reason=\"derived_schema_rejected\"}"
        ),
        refused as f64
    );
    stop(&mut p);
    verify(&s, &want, "with a refused derived schema");
    assert!(s.registry.inner.refusals.load(Ordering::SeqCst) >= 1);
    let log = p.log_text();
    let public_subject = format!(
        "{}-com.privacyrouter.events.user.UserCreated",
        s.topology.engine.topics.tiers[0]
    );
    assert_eq!(
        log.matches("The registry refused a derived schema").count(),
        1,
        "logged once per subject and schema:\n{log}"
    );
    assert!(log.contains(&public_subject), "{log}");
    assert!(p.log_text().contains("Stream thread stopped cleanly."));
    assert_no_payload_in(&log, &payload_strings(&s.files, &inputs));
}

/// `at_least_once` (for brokers without transactions): without a crash it
/// delivers the same records, once each; offsets are committed after the
/// records are delivered.
#[test]
fn at_least_once_delivers_every_output() {
    let _serial = serial();
    let s = Scenario::with_guarantee(Broker::shared(), 3, "at_least_once", "");
    let values = s.samples(1500, 51, SampleFormat::Framed, true);
    let inputs = produce(&s.broker.bootstrap(), &s.input, &s.files, &values);
    let want = expected(&s, &inputs);
    let mut p = s.processor("alo", &[]);
    wait_for_outputs(&s, &want, &mut p);
    stop(&mut p);
    verify(&s, &want, "at least once");
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

/// The same refusal against a real registry (Apicurio Registry with
/// Confluent's default BACKWARD compatibility, which the test script starts
/// and names in APICURIO_URL): the processor reads JSON events of two
/// versions of user.created from it, registers the derived schemas in it,
/// and dead-letters the version 2 events whose public schema it refuses,
/// while the other event type keeps flowing.
#[test]
fn a_refused_derived_schema_on_apicurio() {
    let _serial = serial();
    let url = std::env::var("APICURIO_URL").expect(
        "APICURIO_URL is not set: run the tests with `bash scripts/test.sh`, which starts Apicurio Registry",
    );
    let s = Scenario::new(Broker::shared(), 2, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let register = |subject: &str, schema: &str| -> (u16, String) {
        rt.block_on(async {
            let r = http
                .post(format!("{url}/subjects/{subject}/versions"))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(serde_json::json!({ "schema": schema }).to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let text = |t: &str| {
        s.files
            .events
            .iter()
            .find(|e| e.event_type == t)
            .unwrap()
            .text
            .clone()
    };
    let subject = |t: &str| s.topology.engine.subjects.subject(&s.input, t);
    // Every event type the topology names must have a schema (or the
    // processor refuses to start): the three restricted-only ones too.
    for t in [
        "user.created",
        "user.login_failed",
        "user.login_succeeded",
        "user.locked",
    ] {
        let (status, body) = register(&subject(t), &text(t));
        assert_eq!(status, 200, "{body}");
    }
    let event = |t: &str, id: &str, version: i64, schema_version: i64| {
        let mut e: serde_json::Value = serde_json::from_str(
            r#"{"event_id":"0b6f5f0e-7c57-4d0e-9a31-6d1f1c2b8e01","entity_type":"user",
                "occurred_at":"2026-05-01T12:00:00Z","producer":"p","actor":{"actor_type":"SYSTEM"},
                "privacy_tier":"restricted"}"#,
        )
        .unwrap();
        e["event_type"] = t.into();
        e["entity_id"] = id.into();
        e["entity_version"] = version.into();
        e["schema_version"] = schema_version.into();
        e["data"] = if t == "user.created" {
            serde_json::json!({"email": "apicurio.person@example.org", "phone": null, "first_name": "Apicuriofirst",
                "last_name": "Apicuriolast", "date_of_birth": null, "role": "CONSUMER", "signup_source": "WEB",
                "referrer_user_id": null, "locale": "pt-PT", "marketing_opt_in": false,
                "signup_ip_address": "203.0.113.9", "created_at": "2026-05-01T11:59:00Z"})
        } else {
            serde_json::json!({"attempted_email": "apicurio.person@example.org", "ip_address": "203.0.113.9",
                "user_agent": "agent", "device_id": null, "login_method": "PASSWORD",
                "failure_reason": "INVALID_PASSWORD", "failure_detail": null,
                "consecutive_failure_count": 1, "attempted_at": "2026-05-01T11:59:00Z"})
        };
        serde_json::to_vec(&e).unwrap()
    };
    let bootstrap = s.broker.bootstrap();
    let first: Vec<Vec<u8>> = (0..3)
        .map(|i| event("user.created", &format!("apicurio-{i}"), 1, 1))
        .collect();
    produce(&bootstrap, &s.input, &s.files, &first);
    let mut p = s.launch_with_registry("apicurio", &url);
    let public = s.topology.engine.topics.tiers[0].to_string();
    assert!(
        wait_until(TIMEOUT, || {
            assert!(p.running(), "{}", p.log_text());
            count(&bootstrap, &public, true) == 3
        }),
        "{}",
        tail(&p.log_text(), 40)
    );
    // Version 2: `locale` public, so the public derived schema gains a
    // field without a default.
    let mut v2: serde_json::Value = serde_json::from_str(&text("user.created")).unwrap();
    for f in v2["fields"].as_array_mut().unwrap() {
        if f["name"] == "data" {
            for g in f["type"]["fields"].as_array_mut().unwrap() {
                if g["name"] == "locale" {
                    g["privacy"] = "public".into();
                }
            }
        }
    }
    let (status, body) = register(&subject("user.created"), &v2.to_string());
    assert_eq!(status, 200, "a producer's own subject accepts it: {body}");
    let second: Vec<Vec<u8>> = (0..3)
        .map(|i| event("user.created", &format!("apicurio-{i}"), 2, 2))
        .chain((0..2).map(|i| event("user.login_failed", &format!("apicurio-login-{i}"), 1, 1)))
        .collect();
    produce(&bootstrap, &s.input, &s.files, &second);
    let dlq = s.topology.engine.topics.dead_letter.to_string();
    let restricted = s.topology.engine.topics.tiers[2].to_string();
    assert!(
        wait_until(TIMEOUT, || count(&bootstrap, &dlq, true) == 3
            && count(&bootstrap, &restricted, true) == 3 + 2),
        "{}",
        tail(&p.log_text(), 40)
    );
    stop(&mut p);
    let dead = read_topic(&bootstrap, &dlq, true, 3, QUIET, TIMEOUT);
    for (_, value, headers) in &dead.raw {
        let h = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        assert_eq!(h("x-error-reason"), "derived_schema_rejected");
        // Kafka Streams' dead-letter headers (KIP-1034) carry the same facts.
        assert_eq!(h("__streams.errors.exception"), "derived_schema_rejected");
        assert_eq!(h("__streams.errors.message"), h("x-error-detail"));
        assert_eq!(h("__streams.errors.topic"), h("x-source-topic"));
        assert!(!h("x-source-topic").is_empty());
        assert_eq!(h("__streams.errors.partition"), h("x-source-partition"));
        assert!(h("x-source-partition").parse::<i32>().is_ok());
        assert_eq!(h("__streams.errors.offset"), h("x-source-offset"));
        assert!(h("x-source-offset").parse::<i64>().is_ok());
        assert!(h("x-error-detail").contains(&format!(
            "{public}-com.privacyrouter.events.user.UserCreated"
        )));
        assert!(
            h("x-error-detail").contains("409"),
            "{}",
            h("x-error-detail")
        );
        assert!(
            !h("x-error-detail").contains("Apicurio"),
            "no payload value"
        );
        let v: serde_json::Value = serde_json::from_slice(value.as_deref().unwrap()).unwrap();
        assert_eq!(v["schema_version"], 2, "unchanged");
    }
    // Public still holds only the version 1 events; restricted all the rest.
    assert_eq!(count(&bootstrap, &public, true), 3);
    let log = p.log_text();
    assert_eq!(
        log.matches("The registry refused a derived schema").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("apicurio.person"), "{log}");
}

/// The wait for delivery before a commit sends every batch at once: with a
/// linger of 9.5 s (under exactly-once records time out after 10 s, and the
/// linger must be shorter), the records reach the broker well within a
/// wait of 6 s, not after the linger (which would hold every commit).
#[test]
fn waiting_for_delivery_sends_at_once_whatever_the_linger() {
    use privacy_router::config::Guarantee;
    use privacy_router::runtime::kafka::{await_delivered, send_waiting, Connection, QuietContext};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let broker = Broker::shared();
    let topic = format!("linger-{:08x}", fastrand::u32(..));
    broker.create_topic(&topic, 3, false);
    let conn = Connection {
        brokers: broker.bootstrap(),
        overrides: vec![("linger.ms".into(), "9500".into())],
    };
    for guarantee in [Guarantee::AtLeastOnce, Guarantee::ExactlyOnce] {
        let producer: BaseProducer<QuietContext> = conn
            .producer(&format!("{topic}-{guarantee:?}"), guarantee)
            .create_with_context(QuietContext)
            .unwrap();
        if guarantee == Guarantee::ExactlyOnce {
            producer.init_transactions(Duration::from_secs(30)).unwrap();
            producer.begin_transaction().unwrap();
        }
        for i in 0..1000u32 {
            let key = i.to_string();
            send_waiting(&producer, BaseRecord::to(&topic).key(&key).payload(&key))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        assert!(producer.in_flight_count() > 0, "{guarantee:?}: lingering");
        let started = Instant::now();
        assert!(
            await_delivered(&producer, Some(started + Duration::from_secs(6))),
            "{guarantee:?}: {} records still in flight after {:?}",
            producer.in_flight_count(),
            started.elapsed()
        );
        if guarantee == Guarantee::ExactlyOnce {
            producer
                .commit_transaction(Duration::from_secs(30))
                .unwrap();
        }
    }
    assert_eq!(count(&broker.bootstrap(), &topic, true), 2000);
}
