//! The chaos run behind `scripts/chaos.sh`: Kafka of its own (one or three
//! nodes), the registry stand-in, `--instances` processors in one group,
//! `--events` generated events fed while processors are SIGKILLed at random
//! and restarted (and, with three nodes, one broker killed and restarted),
//! then every tier and the dead-letter topic read `read_committed` and
//! compared with what the pure engine emits for the same inputs.
//!
//! The last line is `chaos: events=N kills=K lost=L duplicated=D
//! misordered=M`; the exit status is 0 only when all three are zero.
//!
//! Without `--bench` (as `cargo test` runs bench targets) it does a small
//! run on the Kafka the test script shares: 6,000 events, 2 instances, 3
//! kills — the same code path, in under a minute.
//! `lost`: expected records missing; `duplicated`: records beyond the
//! expected ones; `misordered`: tier records whose `entity_version` is
//! lower than an earlier record of the same key in the same topic.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use clap::Parser;
use privacy_router::record::Outcome;
use support::*;

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    about = "privacy-router under random kills on real Kafka"
)]
struct Args {
    /// Events to feed.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Processor kills (SIGKILL) over the run.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Processors in the group.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Kafka nodes (1 or 3); with 3, one broker is killed once mid-run.
    #[arg(long, default_value_t = 1)]
    brokers: u8,
    /// Feed rate, events per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Input partitions.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Stream threads per processor.
    #[arg(long, default_value_t = 1)]
    stream_threads: u16,
    /// Seed of the events and of the kill schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A record reduced to what identifies it: key, headers, and the value
/// (tier records without their schema id, which each registry assigns).
fn fingerprint(
    key: &Option<Vec<u8>>,
    value: &Option<Vec<u8>>,
    headers: &[(String, Vec<u8>)],
    dlq: bool,
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let mut hs = headers.to_vec();
    hs.sort();
    hs.hash(&mut h);
    match value {
        Some(v) if !dlq && v.len() >= 5 => v[5..].hash(&mut h),
        other => other.hash(&mut h),
    }
    h.finish()
}

fn version_of(headers: &[(String, Vec<u8>)]) -> Option<i64> {
    headers
        .iter()
        .find(|(k, _)| k == "entity_version")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    let bench = raw.iter().any(|a| a == "--bench");
    let args: Vec<String> = raw.into_iter().filter(|a| a != "--bench").collect();
    let (a, broker) = if bench {
        let a = Args::parse_from(args);
        eprintln!("chaos: starting Kafka ({} node(s))", a.brokers);
        let broker = Broker::own(a.brokers, false);
        (a, broker)
    } else {
        let a = Args::parse_from([
            "chaos",
            "--events",
            "6000",
            "--kills",
            "3",
            "--instances",
            "2",
            "--rate",
            "1500",
            "--stream-threads",
            "2",
        ]);
        (a, Broker::shared())
    };
    let started = Instant::now();
    let s = Scenario::new(broker, a.partitions, "");
    let bootstrap = s.broker.bootstrap();
    let mut values = s.samples(a.events * 4 / 5, a.seed, SampleFormat::Framed, true);
    values.extend(s.samples(
        a.events - values.len(),
        a.seed + 1,
        SampleFormat::Jsonl,
        true,
    ));
    eprintln!("chaos: feeding {} events at {}/s", values.len(), a.rate);
    let feeder = Feeder::start(&bootstrap, &s.input, &s.files, values, a.rate);
    let ids: Vec<String> = (0..a.instances).map(|i| format!("chaos-{i}")).collect();
    let threads = a.stream_threads.to_string();
    let flags = ["--stream-threads", threads.as_str()];
    let mut ps: Vec<Option<Processor>> = ids.iter().map(|i| Some(s.processor(i, &flags))).collect();
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let feed_secs = (a.events as u64 / a.rate.max(1)).max(10);
    let gap = Duration::from_millis(feed_secs * 1000 / (a.kills as u64 + 1));
    let mut kills = 0;
    let mut broker_killed = false;
    while kills < a.kills {
        std::thread::sleep(gap.mul_f64(rng.f64() + 0.5));
        let i = rng.usize(0..ids.len());
        if let Some(mut p) = ps[i].take() {
            p.kill();
            kills += 1;
            eprintln!(
                "chaos: kill {kills}/{} ({}) at {:?}",
                a.kills,
                ids[i],
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(rng.u64(0..3000)));
        }
        ps[i] = Some(s.processor(&ids[i], &flags));
        if a.brokers == 3 && !broker_killed && kills >= a.kills / 2 {
            let leader = s.broker.leader_of(&s.topology.engine.topics.tiers[2], 0);
            eprintln!("chaos: killing broker {leader}");
            s.broker.kill_node(leader as u8);
            std::thread::sleep(Duration::from_secs(15));
            s.broker.start_node(leader as u8);
            broker_killed = true;
        }
    }
    let inputs = feeder.join();
    eprintln!("chaos: fed; computing the expected outputs");
    let (outcomes, _) = outcomes(&s, &inputs);
    let dlq = s.topology.engine.topics.dead_letter.to_string();
    let mut want: HashMap<String, HashMap<u64, i64>> = HashMap::new();
    let mut wanted = 0usize;
    for o in outcomes {
        let records = match o {
            Outcome::Routed(r) => r.records,
            Outcome::Skipped(_) => vec![],
            Outcome::DeadLettered { record, .. } => vec![record],
            Outcome::Held { .. } => panic!("the chaos topology emits gaps; it holds none"),
        };
        for r in records {
            let headers: Vec<(String, Vec<u8>)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect();
            let f = fingerprint(&r.key, &r.value, &headers, *r.topic == *dlq);
            *want
                .entry(r.topic.to_string())
                .or_default()
                .entry(f)
                .or_default() += 1;
            wanted += 1;
        }
    }
    eprintln!("chaos: waiting for {wanted} outputs");
    let mut counter = OutputCounter::new(&bootstrap, &s.outputs());
    let done = wait_until(Duration::from_secs(900), || counter.poll() >= wanted);
    if !done {
        eprintln!("chaos: not every output arrived within 15 minutes");
    }
    for p in ps.iter_mut().flatten() {
        let status = p.terminate();
        if !status.success() {
            eprintln!(
                "chaos: a processor exited {status}:\n{}",
                tail(&p.log_text(), 30)
            );
        }
    }
    let (mut lost, mut duplicated, mut misordered) = (0i64, 0i64, 0i64);
    for topic in s.outputs() {
        let got = read_topic(
            &bootstrap,
            &topic,
            true,
            0,
            Duration::from_secs(3),
            Duration::from_secs(600),
        );
        let is_dlq = topic == dlq;
        let mut counts = want.remove(&topic).unwrap_or_default();
        let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
        for (key, value, headers) in &got.raw {
            let f = fingerprint(key, value, headers, is_dlq);
            let n = counts.entry(f).or_default();
            *n -= 1;
            if *n < 0 {
                duplicated += 1;
            }
            if !is_dlq {
                if let (Some(k), Some(v)) = (key, version_of(headers)) {
                    let prev = last.insert(k.clone(), v);
                    if prev.is_some_and(|p| v < p) {
                        misordered += 1;
                    }
                }
            }
        }
        lost += counts.values().filter(|n| **n > 0).sum::<i64>();
    }
    eprintln!("chaos: took {:?}", started.elapsed());
    println!(
        "chaos: events={} kills={kills} lost={lost} duplicated={duplicated} misordered={misordered}",
        inputs.len()
    );
    let clean = lost == 0 && duplicated == 0 && misordered == 0;
    // `exit` runs no destructors: stop the processors and the broker this
    // run started first (they were left running before).
    drop(ps);
    drop(s);
    std::process::exit(if clean { 0 } else { 1 });
}
