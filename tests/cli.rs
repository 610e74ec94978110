//! The binary as a user runs it: the README's replay command, the sample
//! generator, start-up refusals, and no payload value in any log line.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod support;
use support::{free_port, http_get};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_privacy-router"))
}

const DEMO_KEY: &str = "demo-key-not-for-production";

fn strings(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Array(xs) => xs.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[test]
fn readme_replay_shows_every_behaviour_and_logs_no_payload_value() {
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .args(["replay", "--out"])
        .arg(out.path())
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stderr}");
    // The summary is the command's output (stdout), logs go to stderr.
    for line in [
        "records read",
        "-> public",
        "-> internal",
        "-> restricted",
        "-> dead letter",
        "order: accepted",
        "order: duplicate",
        "order: stale",
        "order: gap",
        // The default topology holds gaps: the sample's swapped versions
        // are put back in order, its real gaps end with the input.
        "held for reordering",
        "released: in_order",
        "released: end_of_input",
        "declared-tier mismatches",
        "dead letter: malformed_json",
        "dead letter: invalid_event_type",
        "dead letter: unknown_event_type",
        "dead letter: negative_cents",
    ] {
        assert!(stdout.contains(line), "summary lacks {line:?}:\n{stdout}");
        assert!(
            !stderr.contains(line),
            "the summary is not a log:\n{stderr}"
        );
    }
    // Its columns line up: every count ends in the same column.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(rows.len() > 10, "{stdout}");
    assert!(
        rows.iter()
            .all(|r| r.chars().count() == rows[0].chars().count()),
        "{stdout}"
    );

    assert!(
        stderr.contains("Dead-lettered.") && stderr.contains("declared privacy tier"),
        "the run logged its events"
    );

    // Every payload string of the sample's data (names, e-mails, addresses,
    // ids...) is absent from the logs and the summary.
    let mut values = BTreeSet::new();
    for line in std::fs::read_to_string("samples/events.jsonl")
        .unwrap()
        .lines()
    {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            strings(&v["data"], &mut values);
            strings(&v["entity_id"], &mut values);
            strings(&v["actor"]["actor_id"], &mut values);
        }
    }
    let values: Vec<&String> = values.iter().filter(|s| s.len() >= 6).collect();
    assert!(values.len() > 500);
    // The contract's one exception (README, "No payload value"): debug
    // lines carry trace ids the envelope classifies internal.
    let traced = std::fs::read_to_string("samples/events.jsonl")
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["trace_id"].as_str().map(str::to_owned))
        .filter(|t| {
            stderr.contains(&format!("trace_id=\"{t}\""))
                || stderr.contains(&format!("trace_id={t}"))
        })
        .count();
    assert!(traced > 10, "debug lines carry trace ids:\n{stderr}");
    for v in values {
        assert!(
            !stderr.contains(v.as_str()) && !stdout.contains(v.as_str()),
            "a payload value reached the log or the summary: {v}"
        );
    }

    // Public and internal hold no e-mail, phone or IP; restricted does.
    let read = |n: &str| std::fs::read_to_string(out.path().join(n)).unwrap();
    let pii = |text: &str| {
        text.contains("@example.com") || text.contains("\"+1555") || text.contains("203.0.113.")
    };
    assert!(!pii(&read("public.jsonl")));
    assert!(!pii(&read("internal.jsonl")));
    assert!(pii(&read("restricted.jsonl")));
    assert!(read("dead-letter.jsonl").lines().count() > 10);
    for line in read("public.jsonl").lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["headers"]["privacy_tier"], "public");
        assert_ne!(
            v["headers"]["event_type"], "user.login_failed",
            "security events are restricted-only"
        );
    }
}

#[test]
fn replay_refuses_to_start_without_the_hash_key() {
    let run = bin()
        .args(["replay", "--out", "target/never"])
        .env_remove("PRIVACY_ROUTER_HASH_KEY")
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("PRIVACY_ROUTER_HASH_KEY"), "{stderr}");
    assert!(!Path::new("target/never").exists());
}

#[test]
fn a_broken_topology_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("bad.yaml");
    std::fs::write(&t, "outputs:\n  public: events.x\n  internal: events.x\nprocessing:\n  commit_interval_ms: 0\n").unwrap();
    let run = bin()
        .args(["replay", "--topology"])
        .arg(&t)
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("bad.yaml: 2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("outputs.internal") && stderr.contains("processing.commit_interval_ms"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_sample_is_what_the_generator_writes() {
    let run = bin().args(["sample", "--count", "400"]).output().unwrap();
    assert!(run.status.success());
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        std::fs::read_to_string("samples/events.jsonl").unwrap(),
        "regenerate with: privacy-router sample --count 400 > samples/events.jsonl"
    );
}

#[test]
fn framed_samples_replay_like_json_ones() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.bin");
    let gen = bin()
        .args([
            "sample",
            "--count",
            "500",
            "--no-anomalies",
            "--format",
            "framed",
            "-o",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(gen.status.success());
    let run = bin()
        .arg("replay")
        .arg(&input)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stderr}");
    let squeezed = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(squeezed.contains("order: accepted 500"), "{stdout}");
}

#[test]
fn each_producer_sample_replays_with_its_topology_and_logs_no_payload_value() {
    for (producer, summary) in [
        ("user-service", &["-> public 4", "order: unordered 4"][..]),
        (
            "auth-identity",
            &[
                "order: accepted 3",
                "order: duplicate 1",
                "order: stale 1",
                "order: unordered 1",
                "dead letter: adapter_mismatch",
                "dead letter: unknown_event_type",
                "dead letter: invalid_timestamp",
            ][..],
        ),
        (
            "user-catalogue",
            &[
                "-> restricted 17",
                "order: unordered 17",
                "dead letter: adapter_mismatch",
                "dead letter: unknown_event_type",
            ][..],
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let sample = format!("samples/{producer}.jsonl");
        // No --schemas: the topology names its schema folder.
        let run = bin()
            .args(["replay", &sample, "--topology"])
            .arg(format!("topology/{producer}.yaml"))
            .arg("--out")
            .arg(out.path())
            .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{producer}: {stderr}");
        let squeezed = stdout
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        for line in summary {
            assert!(
                squeezed.contains(line),
                "{producer}: no {line:?}:\n{stdout}"
            );
        }

        // No string of the sample (ids, e-mails, names, addresses...) is
        // in the logs.
        let mut values = BTreeSet::new();
        for line in std::fs::read_to_string(&sample).unwrap().lines() {
            let mut v: Value = serde_json::from_str(line).unwrap();
            // Event type names are schema names (the debug log of schema
            // parsing shows them), not payload values.
            v.as_object_mut().unwrap().remove("eventType");
            strings(&v, &mut values);
        }
        for v in values
            .iter()
            .filter(|s| s.len() >= 6 && !s.contains('-') || s.contains('@'))
        {
            assert!(
                !stderr.contains(v.as_str()) && !stdout.contains(v.as_str()),
                "{producer}: a payload value reached the log or the summary: {v}"
            );
        }

        let read = |n: &str| std::fs::read_to_string(out.path().join(n)).unwrap();
        let pii = |text: &str| {
            [
                "@example.",
                "+33",
                "+351",
                "198.51.100.",
                "203.0.113.",
                "John",
                "Maria",
            ]
            .iter()
            .any(|p| text.contains(p))
        };
        assert!(!pii(&read("public.jsonl")), "{producer}: public");
        assert!(!pii(&read("internal.jsonl")), "{producer}: internal");
        assert!(pii(&read("restricted.jsonl")), "{producer}: restricted");
    }
}

#[test]
fn replay_refuses_a_topic_the_topology_does_not_read() {
    let run = bin()
        .args([
            "replay",
            "samples/user-service.jsonl",
            "--topology",
            "topology/user-service.yaml",
            "--topic",
            "events.raw",
            "--out",
            "target/never-topic",
        ])
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--topic \"events.raw\""), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .args(["--log-format", "json", "replay", "--out"])
        .arg(out.path())
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let mut events = 0;
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        events += 1;
    }
    assert!(events > 20, "{stderr}");
    assert!(
        stderr.contains("\"reason\":\"malformed_json\""),
        "dead letters carry their reason as a field"
    );
}

/// `run` against a cluster that is not there yet does not crash: it says
/// what it will do in one line (no secret), waits with back-off (the log
/// names the brokers and librdkafka's reason, `/readyz` answers 503 with
/// it, `/livez` 200), and gives up with exit code 9 at the start-up
/// deadline.
#[test]
fn run_waits_for_an_absent_cluster_and_gives_up_at_the_startup_deadline() {
    use sha2::Digest;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let (kafka, metrics) = (free_port(), free_port());
    let brokers = format!("127.0.0.1:{kafka}");
    let started = Instant::now();
    let child = bin()
        .args(["run", "--brokers", &brokers, "--metrics-addr"])
        .arg(format!("127.0.0.1:{metrics}"))
        .args([
            "--startup-timeout-secs",
            "17",
            "--instance-id",
            "startup-test",
        ])
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waiting = format!("not ready: waiting for Kafka at {brokers}: ");
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(40) {
        if let Some((code, body)) = http_get(metrics, "/readyz") {
            if body.starts_with(&waiting) {
                seen = Some((code, body));
                assert_eq!(http_get(metrics, "/livez"), Some((200, "ok\n".to_owned())));
                let (_, m) = http_get(metrics, "/metrics").unwrap();
                assert!(m.lines().any(|l| l == "privacy_router_ready 0"), "{m}");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (code, body) = seen.unwrap_or_else(|| panic!("/readyz never said it waits:\n{stderr}"));
    assert_eq!(code, 503, "{body}");
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(17));
    assert!(
        stderr.contains("could not be reached within the start-up deadline"),
        "{stderr}"
    );
    let waits: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Kafka cannot be reached yet"))
        .collect();
    assert!(
        !waits.is_empty()
            && waits
                .iter()
                .all(|l| l.contains(&brokers) && l.contains("error=")),
        "{stderr}"
    );
    // The start-up line, first, with the effective settings.
    let start = stderr
        .lines()
        .find(|l| l.contains("Starting privacy-router."))
        .unwrap_or_else(|| panic!("no start-up line:\n{stderr}"));
    let sha = hex::encode(sha2::Sha256::digest(
        std::fs::read("topology/default.yaml").unwrap(),
    ));
    for field in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        format!("brokers={brokers}"),
        "registry=file registry over avro".to_owned(),
        "topology=topology/default.yaml".to_owned(),
        format!("topology_sha256={sha}"),
        "application_id=privacy-router".to_owned(),
        "instance_id=startup-test".to_owned(),
        "guarantee=exactly_once".to_owned(),
        "commit_interval_ms=100".to_owned(),
        "stream_threads=1".to_owned(),
    ] {
        assert!(start.contains(&field), "{field} missing: {start}");
    }
    assert!(!stderr.contains(DEMO_KEY), "the hash key is a secret");
    // Logs on stderr, nothing on stdout; no colour when not a terminal.
    assert!(out.stdout.is_empty());
    assert!(!stderr.contains('\u{1b}'), "escape codes in a pipe");
}

/// A registry URL that does not parse is refused at start-up, without
/// repeating it (it may hold a password); one with a password is logged
/// without it.
#[test]
fn registry_urls_are_checked_and_logged_without_credentials() {
    let run = bin()
        .args(["run", "--brokers", "127.0.0.1:1", "--metrics-addr", "off"])
        .args(["--registry-url", "http//user:s3cret@registry:8081"])
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--registry-url (URL 1 of 1) does not parse"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // A parsable URL with credentials: the start-up line shows it without
    // them, then the processor waits for the (absent) registry.
    let registry = free_port();
    let mut child = bin()
        .args(["run", "--brokers", "127.0.0.1:1", "--metrics-addr", "off"])
        .arg("--registry-url")
        .arg(format!("http://user:s3cret@127.0.0.1:{registry}"))
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) > 0 {
        text.push_str(&line);
        line.clear();
        if text.contains("The schema registry is unavailable at start-up") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains(&format!("registry=http://127.0.0.1:{registry} ")),
        "{text}"
    );
    assert!(
        text.contains("The schema registry is unavailable at start-up"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

/// `-X KEY=VALUE` and `--kafka-config FILE` (librdkafka properties, like
/// kcat -F) apply in order; a bad line is named by file and line and not
/// repeated (it may hold a secret).
#[test]
fn kafka_settings_come_from_flags_and_properties_files_in_order() {
    use privacy_router::cli::kafka_overrides;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("client.properties");
    std::fs::write(
        &f,
        "# the processor's client\n! also a comment\n\nsecurity.protocol = SASL_SSL\nsasl.password=p=w\n",
    )
    .unwrap();
    let file = f.display().to_string();
    let got = kafka_overrides(&[
        "acks=all".to_owned(),
        file.clone(),
        "security.protocol=SSL".to_owned(),
    ])
    .unwrap();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        got,
        pairs(&[
            ("acks", "all"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "p=w"),
            ("security.protocol", "SSL"),
        ])
    );
    std::fs::write(&f, "acks=all\nsasl.password s3cret\n").unwrap();
    let err = format!(
        "{:#}",
        kafka_overrides(std::slice::from_ref(&file)).unwrap_err()
    );
    assert!(
        err.contains(&format!("{file}:2: expected KEY=VALUE")),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    let err = format!(
        "{:#}",
        kafka_overrides(&["no-such-file".to_owned()]).unwrap_err()
    );
    assert!(
        err.contains("neither KEY=VALUE nor a readable librdkafka properties file"),
        "{err}"
    );
}

/// The registry password comes from a flag, the environment or a file, not
/// two of them; an unreadable file is named.
#[test]
fn the_registry_password_file_is_read_or_named() {
    let run = bin()
        .args(["describe", "--registry-url", "http://127.0.0.1:1"])
        .args(["--registry-password", "x", "--registry-password-file", "y"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "a usage error");
    let run = bin()
        .args(["privacy-report", "--registry-url", "http://127.0.0.1:1"])
        .args(["--registry-password-file", "target/no-such-password-file"])
        .env_remove("PRIVACY_ROUTER_REGISTRY_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--registry-password-file target/no-such-password-file"),
        "{stderr}"
    );
}

/// Output files go where they are asked, folders created; replay's errors
/// name the file and the line; an empty input is said, not silent.
#[test]
fn commands_create_their_output_folders_and_name_what_they_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("a/b/report.html");
    let run = bin()
        .args(["privacy-report", "--format", "html", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(std::fs::read_to_string(&report).unwrap().contains("<html"));

    let sample = dir.path().join("c/d/sample.bin");
    let run = bin()
        .args(["sample", "--format", "framed", "--count", "3", "-o"])
        .arg(&sample)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut bytes = std::fs::read(&sample).unwrap();
    assert!(bytes.len() > 12);

    // A framed input cut inside its last record: the file and the record.
    bytes.truncate(bytes.len() - 3);
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &bytes).unwrap();
    let run = bin()
        .args(["replay", "--format", "framed"])
        .arg(&cut)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "replaying {}: the framed input ends inside record 2",
            cut.display()
        )),
        "{stderr}"
    );

    // An empty input: a warning, and a summary of zeros.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let run = bin()
        .arg("replay")
        .arg(&empty)
        .arg("--out")
        .arg(dir.path().join("out2"))
        .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("holds no records"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("records read"));
}

/// Colour only for a person at a terminal: under a pseudo-terminal
/// (util-linux `script`) the log lines are coloured, unless NO_COLOR is set.
#[test]
fn logs_are_coloured_only_at_a_terminal_and_never_under_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let at_terminal = |no_color: Option<&str>| {
        let command = format!(
            "{} replay samples/events.jsonl --out {}",
            env!("CARGO_BIN_EXE_privacy-router"),
            dir.path().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &command, "/dev/null"])
            .env("PRIVACY_ROUTER_HASH_KEY", DEMO_KEY)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().expect("util-linux script");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = at_terminal(None);
    assert!(coloured.contains("records read"), "{coloured}");
    assert!(
        coloured.contains("\u{1b}["),
        "a terminal gets colour:\n{coloured}"
    );
    let plain = at_terminal(Some("1"));
    assert!(plain.contains("records read"), "{plain}");
    assert!(!plain.contains("\u{1b}["), "NO_COLOR:\n{plain}");
    // NO_COLOR set but empty does not count (no-color.org).
    assert!(at_terminal(Some("")).contains("\u{1b}["));
}
