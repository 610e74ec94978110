//! `check`, `describe` and `privacy-report` as a user runs them, and the
//! report checked against the engine: every field the report calls removed
//! from a tier is absent from that tier's decoded record, every kept one is
//! there with its value, every hashed one is its pseudonym.

// apache-avro's one-shot datum reader is deprecated in favour of a builder;
// it is the independent reference decoder here.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;

use privacy_router::config::Topology;
use privacy_router::order::MemoryStore;
use privacy_router::pipeline::Engine;
use privacy_router::project::Hasher;
use privacy_router::record::{Outcome, RawHeaders, RawRecord, Source, Tier};
use privacy_router::registry::file;
use privacy_router::sample::{self, Format, Options};
use privacy_router::schema::SchemaLookup;

/// The Confluent-compatible registry stand-in (Confluent's status codes,
/// BACKWARD compatibility by default, the compatibility endpoint).
#[allow(dead_code, unreachable_pub, clippy::result_large_err)]
#[path = "support/registry.rs"]
mod registry;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_privacy-router"));
    c.env_remove("PRIVACY_ROUTER_HASH_KEY")
        .env_remove("PRIVACY_ROUTER_TOPOLOGY")
        .env_remove("PRIVACY_ROUTER_SCHEMAS")
        .env_remove("PRIVACY_ROUTER_REGISTRY_URL")
        .env_remove("PRIVACY_ROUTER_REGISTRY_USER")
        .env_remove("PRIVACY_ROUTER_REGISTRY_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of `avro/` in a temporary folder, to break.
fn copy_of_avro() -> (tempfile::TempDir, PathBuf) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let p = entry.unwrap().path();
            let target = to.join(p.file_name().unwrap());
            if p.is_dir() {
                copy(&p, &target);
            } else {
                std::fs::copy(&p, &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let avro = dir.path().join("avro");
    copy(Path::new("avro"), &avro);
    (dir, avro)
}

/// Adds a field to a payload file.
fn add_field(payload: &Path, field: Value) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(payload).unwrap()).unwrap();
    v["fields"].as_array_mut().unwrap().push(field);
    std::fs::write(payload, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

// ---------------------------------------------------------------- check

#[test]
fn check_passes_on_the_default_topology_without_a_hash_key() {
    let o = run(&[
        "check",
        "--topology",
        "topology/default.yaml",
        "--schemas",
        "avro",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("OK: 0 error(s), 0 warning(s)"), "{out}");
    assert!(out.contains("(55 event types"), "{out}");
    // A missing key is a note, not a failure.
    assert!(
        out.contains("note: <environment>: PRIVACY_ROUTER_HASH_KEY: not set"),
        "{out}"
    );
    // Fields whose tier came from tags are listed.
    assert!(
        out.contains(
            "info: avro/events/user/user.created.avsc: data.email: tier restricted from its \"privacy\" label and confluent:tags PII (they agree) [user.created]"
        ),
        "{out}"
    );
    assert!(!out.contains("fail_closed") && !out.contains("fail-closed default (restricted)"));

    let o = run(&["check", "--format", "json", "--strict"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["event_types"], 55);
    assert_eq!(v["errors"], 0);
    let tagged: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "tag_classified_field")
        .collect();
    assert!(tagged.len() >= 5, "{tagged:?}");
    assert!(tagged
        .iter()
        .any(|f| f["path"] == "data.ip_address" && f["event_types"][0] == "user.login_failed"));

    // With a usable key there is not even a note.
    let o = bin()
        .arg("check")
        .env("PRIVACY_ROUTER_HASH_KEY", "a-key-of-at-least-16-bytes")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!stdout(&o).contains("PRIVACY_ROUTER_HASH_KEY"));
}

#[test]
fn check_fails_on_a_broken_topology_naming_file_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("broken.yaml");
    std::fs::write(
        &t,
        "outputs:\n  public: events.same\n  internal: events.same\nevent_types:\n  User.Locked: {tiers: []}\n",
    )
    .unwrap();
    let o = bin()
        .arg("check")
        .arg("--topology")
        .arg(&t)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let out = stdout(&o);
    let file = t.display().to_string();
    for path in [
        "outputs.internal",
        "event_types.User.Locked",
        "event_types.User.Locked.tiers",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("error: {file}:"))
                    && l.contains(&format!(": {path}: "))),
            "{path} missing:\n{out}"
        );
    }
    assert!(out.contains("FAILED: 3 error(s)"), "{out}");
    assert!(
        stderr(&o).contains("check found 3 error(s)"),
        "{}",
        stderr(&o)
    );

    // A typo in a key is refused too.
    std::fs::write(&t, "classification:\n  tag: {PII: restricted}\n").unwrap();
    let o = bin()
        .args(["check", "--format", "json", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["findings"][0]["file"], file);
    assert!(v["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("tag"));
}

#[test]
fn check_lists_an_unlabelled_field_as_falling_to_the_fail_closed_default() {
    let (_dir, avro) = copy_of_avro();
    let payload = avro.join("events/user/user.created.avsc");
    add_field(
        &payload,
        serde_json::json!({"name": "nickname", "type": ["null", "string"], "default": null, "doc": "Added without a label."}),
    );
    let o = bin()
        .arg("check")
        .arg("--schemas")
        .arg(&avro)
        .output()
        .unwrap();
    assert!(!o.status.success(), "an unlabelled field fails check");
    let out = stdout(&o);
    let line = format!(
        "error: {}: data.nickname: no \"privacy\" label, no mapped tag and no default from its own record: falls to the fail-closed default (restricted); label it [user.created]",
        payload.display()
    );
    assert!(out.contains(&line), "{out}");
    assert!(out.contains("FAILED: 1 error(s)"), "{out}");

    let o = bin()
        .args(["check", "--format", "json", "--schemas"])
        .arg(&avro)
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let f = &v["findings"][0];
    assert_eq!(f["severity"], "error");
    assert_eq!(f["code"], "fail_closed_field");
    assert_eq!(f["path"], "data.nickname");
    assert_eq!(f["file"], payload.display().to_string());

    // Accepting fail-closed fields makes it a warning; --strict makes
    // warnings errors again.
    let o = bin()
        .args(["check", "--allow-fail-closed", "--schemas"])
        .arg(&avro)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("warning: "));
    let o = bin()
        .args(["check", "--allow-fail-closed", "--strict", "--schemas"])
        .arg(&avro)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn check_reports_every_bad_schema_at_once() {
    let (_dir, avro) = copy_of_avro();
    std::fs::write(avro.join("events/user/user.created.avsc"), "{ not json").unwrap();
    std::fs::write(avro.join("events/order/order.created.avsc"), "[").unwrap();
    let o = bin()
        .arg("check")
        .arg("--schemas")
        .arg(&avro)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let out = stdout(&o);
    assert!(out.contains("user.created.avsc: not JSON"), "{out}");
    assert!(out.contains("order.created.avsc: not JSON"), "{out}");

    // Schemas that parse but break the engine's rules: each named with the
    // path inside its file.
    let (_dir, avro) = copy_of_avro();
    add_field(
        &avro.join("events/user/user.created.avsc"),
        serde_json::json!({"name": "x", "type": "long", "privacy": "secret"}),
    );
    add_field(
        &avro.join("events/post/post.created.avsc"),
        serde_json::json!({"name": "y", "type": "long", "privacy": "public", "redact": "hash"}),
    );
    add_field(
        &avro.join("events/order/order.created.avsc"),
        serde_json::json!({"name": "z", "type": "string", "privacy": "public", "confluent:tags": ["PIII"]}),
    );
    let o = bin()
        .arg("check")
        .arg("--schemas")
        .arg(&avro)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let out = stdout(&o);
    let user = avro.join("events/user/user.created.avsc");
    let post = avro.join("events/post/post.created.avsc");
    let order = avro.join("events/order/order.created.avsc");
    assert!(
        out.contains(&format!(
            "error: {}: fields.x: \"privacy\" must be one of public, internal, restricted [user.created]",
            user.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "error: {}: fields.y: \"redact\": \"hash\" needs",
            post.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "warning: {}: data.z: confluent:tags PIII not in the topology's classification.tags",
            order.display()
        )),
        "{out}"
    );
    assert!(out.contains("FAILED: 2 error(s), 1 warning(s)"), "{out}");
}

#[test]
fn check_refuses_a_tier_limit_for_an_event_type_without_a_schema() {
    // A misspelt restriction must not lapse silently: the real
    // user.login_failed would reach every tier.
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("typo.yaml");
    std::fs::write(
        &t,
        "event_types:\n  user.login_faild: {tiers: [restricted]}\n",
    )
    .unwrap();
    let o = bin()
        .arg("check")
        .arg("--topology")
        .arg(&t)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!(
            "error: {}:2:3: event_types.user.login_faild: no schema in the folder avro defines the event type user.login_faild; did you mean user.login_failed?",
            t.display()
        )),
        "{}",
        stdout(&o)
    );
    // run, replay and demo refuse it the same way, before touching anything.
    for args in [
        vec!["replay", "samples/events.jsonl", "--out"],
        vec!["demo", "--out"],
        vec![
            "run",
            "--brokers",
            "127.0.0.1:1",
            "--metrics-addr",
            "off",
            "--out-unused",
        ],
    ] {
        let mut cmd = bin();
        let out_dir = dir.path().join("out");
        let args: Vec<&str> = args.into_iter().filter(|a| *a != "--out-unused").collect();
        cmd.args(&args);
        if args.last() == Some(&"--out") {
            cmd.arg(&out_dir);
        }
        let o = cmd
            .arg("--topology")
            .arg(&t)
            .env("PRIVACY_ROUTER_HASH_KEY", "a-key-of-at-least-16-bytes")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("event_types.user.login_faild: no schema in the folder avro defines the event type user.login_faild; did you mean user.login_failed?"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!out_dir.exists(), "{args:?} wrote output");
    }
}

// ---------------------------------------------------------------- describe

#[test]
fn describe_shows_every_topic_and_stage_in_text_and_mermaid() {
    let text = run(&["describe", "--topology", "topology/default.yaml"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = stdout(&text);
    let mermaid = run(&["describe", "--format", "mermaid"]);
    assert!(mermaid.status.success());
    let mermaid = stdout(&mermaid);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");

    for topic in [
        "events.raw",
        "events.public",
        "events.internal",
        "events.restricted",
        "events.dlq",
        "privacy-router-entity-versions-changelog",
    ] {
        assert!(text.contains(topic), "text lacks {topic}");
        assert!(
            mermaid.contains(&format!("\"{topic}\"")),
            "mermaid lacks {topic}"
        );
    }
    for stage in [
        "decode",
        "validate",
        "tier-check",
        "order",
        "project-public",
        "project-internal",
        "project-restricted",
        "route",
    ] {
        assert!(
            text.contains(&format!("Processor: {stage} (")),
            "text lacks {stage}"
        );
        assert!(
            mermaid.contains(&format!("    {}[\"", stage.replace('-', "_"))),
            "mermaid lacks {stage}"
        );
    }
    for needle in [
        "Source: source (topics: [events.raw])",
        "Processor: order (stores: [entity-versions])",
        "entity-versions: (entity_type, entity_id) -> last accepted entity_version",
        "user.login_failed -> restricted",
        "user.login_succeeded -> restricted",
        "user.locked -> restricted",
        "processing.guarantee: exactly_once",
        "processing.commit_interval_ms: 100",
        "ordering.on_gap: hold",
        "ordering.reorder_window_ms: 2000",
        "ordering.max_held_per_partition: 10000",
        "ordering.on_stale: skip",
        "duplicate and stale skipped; on_gap: hold (held up to 2000 ms of stream time, or of wall-clock time on an idle partition, at most 10000 per partition, then emitted as gaps; held events in the changelog)",
        "--> project-public (accepted, released in order, gap after the window)",
        "sink-changelog (last accepted version, held events)",
        "classification.on_tier_mismatch: emit",
        "classification.tags: INTERNAL -> internal, PII -> restricted, PUBLIC -> public",
        "--> sink-public (all but user.locked, user.login_failed, user.login_succeeded)",
    ] {
        assert!(text.contains(needle), "text lacks {needle:?}:\n{text}");
    }
    for needle in [
        "in_0 --> decode",
        "order[\"order<br/>on_gap: hold\"]",
        "store[(\"entity-versions<br/>state store\")]",
        "store -.->|\"changelog\"| sink_changelog",
        "privacy-router: exactly_once, commit every 100 ms",
        "route -->|\"all but user.locked, user.login_failed, user.login_succeeded\"| sink_public",
        "route --> sink_restricted",
    ] {
        assert!(
            mermaid.contains(needle),
            "mermaid lacks {needle:?}:\n{mermaid}"
        );
    }
    // Deterministic.
    assert_eq!(text, stdout(&run(&["describe"])));
    assert_eq!(mermaid, stdout(&run(&["describe", "--format", "mermaid"])));
}

#[test]
fn describe_follows_the_topology_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("custom.yaml");
    std::fs::write(
        &t,
        "application_id: shop\ninput: {topics: [shop.raw, legacy.raw]}\noutputs: {public: p.pub, internal: p.int, restricted: p.res, dead_letter: p.dlq}\nprocessing: {guarantee: at_least_once, commit_interval_ms: 250}\nordering: {on_gap: dead_letter}\n",
    )
    .unwrap();
    let o = bin()
        .arg("describe")
        .arg("--topology")
        .arg(&t)
        .output()
        .unwrap();
    let text = stdout(&o);
    for needle in [
        "topics: [shop.raw, legacy.raw]",
        "Sink: sink-public (topic: p.pub)",
        "Sink: sink-dead-letter (topic: p.dlq)",
        "Sink: sink-changelog (topic: shop-entity-versions-changelog)",
        "processing.guarantee: at_least_once",
        "processing.commit_interval_ms: 250",
        "sink-dead-letter (version_gap)",
        "    (none)",
    ] {
        assert!(text.contains(needle), "{needle:?}:\n{text}");
    }
    let o = bin()
        .args(["describe", "--format", "mermaid", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    let m = stdout(&o);
    assert!(
        m.contains("in_1([\"legacy.raw\"])") && m.contains("in_1 --> decode"),
        "{m}"
    );
    assert!(
        m.contains("order -->|\"version_gap\"| sink_dead_letter"),
        "{m}"
    );

    std::fs::write(&t, "outputs: {publik: x}\n").unwrap();
    let o = bin()
        .arg("describe")
        .arg("--topology")
        .arg(&t)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("custom.yaml"), "{}", stderr(&o));
}

// ---------------------------------------------------------------- privacy-report

/// One field row of the Markdown report.
#[derive(Debug, Clone)]
struct Row {
    type_name: String,
    tier: String,
    from: String,
    redact: String,
    reach: [String; 3],
}

/// A parsed Markdown report: event type -> (reaches line, field path -> row).
type Parsed = BTreeMap<String, (String, Vec<(String, Row)>)>;

/// Splits a table row on bars not escaped with a backslash.
fn cells(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in line
        .trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .chars()
    {
        match c {
            '|' if !escaped => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    out.iter().map(|c| c.trim().to_owned()).collect()
}

/// Sections are keyed `user.created v1`.
fn parse_markdown(md: &str) -> Parsed {
    let mut parsed = Parsed::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            let et = rest.replacen('`', "", 1);
            parsed.insert(et.clone(), (String::new(), Vec::new()));
            current = Some(et);
            continue;
        }
        let Some(et) = &current else { continue };
        let entry = parsed.get_mut(et).unwrap();
        if line.starts_with("Reaches") {
            entry.0 = line.to_owned();
        } else if line.starts_with("| `") {
            let c = cells(line);
            assert_eq!(c.len(), 9, "{line}");
            entry.1.push((
                c[0].trim_matches('`').to_owned(),
                Row {
                    type_name: c[1].clone(),
                    tier: c[2].clone(),
                    from: c[3].clone(),
                    redact: c[4].clone(),
                    reach: [c[5].clone(), c[6].clone(), c[7].clone()],
                },
            ));
        }
    }
    parsed
}

fn markdown_report() -> String {
    let o = bin()
        .args([
            "privacy-report",
            "--topology",
            "topology/default.yaml",
            "--schemas",
            "avro",
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// The row of `path` in the section of `et` (`user.created` means its
/// version 1).
fn row<'p>(parsed: &'p Parsed, et: &str, path: &str) -> &'p Row {
    let key = if et.contains(' ') {
        et.to_owned()
    } else {
        format!("{et} v1")
    };
    &parsed[&key]
        .1
        .iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("{et} has no row {path}"))
        .1
}

#[test]
fn privacy_report_markdown_states_what_each_tier_gets() {
    let md = markdown_report();
    assert!(md.starts_with("# Privacy report\n"));
    assert!(
        md.contains(&format!(
            "| Generated | 2023-11-14T22:13:20Z by privacy-router {} |",
            env!("CARGO_PKG_VERSION")
        )),
        "dated by SOURCE_DATE_EPOCH"
    );
    assert!(md.contains("| Topology | `topology/default.yaml` (sha256 `"));
    assert!(md.contains("| `PII` | restricted |"), "tag mapping");
    assert!(md.contains("| event types | 55 |"), "summary");
    assert!(md.contains("| fail-closed default | 0 |"));
    let parsed = parse_markdown(&md);
    assert_eq!(parsed.len(), 55);

    // user.created: e-mail asks for a pseudonym, so the lower tiers get it
    // hashed; the phone has no such request and is removed from them.
    let email = row(&parsed, "user.created", "data.email");
    assert_eq!(
        (
            email.tier.as_str(),
            email.from.as_str(),
            email.redact.as_str()
        ),
        ("restricted", "label + tag PII", "hash")
    );
    assert_eq!(email.reach, ["hashed", "hashed", "kept"]);
    let phone = row(&parsed, "user.created", "data.phone");
    assert_eq!(phone.reach, ["removed", "removed", "kept"]);
    assert_eq!(phone.type_name, "null \\| string");
    assert_eq!(
        row(&parsed, "user.created", "data.signup_ip_address").reach,
        ["removed", "removed", "kept"]
    );
    assert_eq!(
        row(&parsed, "user.created", "data.role").reach,
        ["removed", "kept", "kept"]
    );
    // entity_id: internal, hashed in public.
    let id = row(&parsed, "user.created", "entity_id");
    assert_eq!((id.tier.as_str(), id.redact.as_str()), ("internal", "hash"));
    assert_eq!(id.reach, ["hashed", "kept", "kept"]);
    assert!(md.contains("- public: key keyed pseudonym of entity_id;"));

    // user.login_failed reaches restricted only.
    let (reaches, rows) = &parsed["user.login_failed v1"];
    assert!(
        reaches.starts_with("Reaches restricted only")
            && reaches.contains("no public or internal record is written"),
        "{reaches}"
    );
    for (path, r) in rows {
        assert_eq!(r.reach[..2], ["not routed", "not routed"], "{path}");
        assert_eq!(r.reach[2], "kept", "{path}");
    }
    assert!(parsed["user.created v1"]
        .0
        .starts_with("Reaches: public, internal, restricted."));

    // A field inside a removed field goes with it.
    let brand = row(
        &parsed,
        "order.payment_authorized",
        "data.payment_method<OrderPaymentAuthorizedCardPayment>.brand",
    );
    assert_eq!(brand.tier, "internal");
    assert_eq!(
        brand.reach,
        ["removed (container)", "removed (container)", "kept"]
    );

    // Deterministic, and -o writes the same bytes.
    assert_eq!(md, markdown_report());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.md");
    let o = bin()
        .args(["privacy-report", "-o"])
        .arg(&file)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), md);

    // Without SOURCE_DATE_EPOCH it is dated now.
    let now = stdout(&run(&["privacy-report"]));
    let year = chrono::Utc::now().format("| Generated | %Y-").to_string();
    assert!(now.contains(&year), "{now}");
}

#[test]
fn privacy_report_html_is_self_contained_and_escaped() {
    let o = bin()
        .args(["privacy-report", "--format", "html"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let html = stdout(&o);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<style>") && html.trim_end().ends_with("</html>"));
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("src=") && !html.contains("href=\"http"),
        "no external resources"
    );
    assert!(html.contains("<section id=\"user.login_failed-v1\">"));
    assert!(html.contains("Reaches restricted only (topology event_types.user.login_failed.tiers): no public or internal record is written for it."));
    assert!(html.contains(
        "<tr><td><code>data.email</code></td><td>string</td><td><span class=\"tier restricted\">restricted</span></td><td>label + tag PII</td><td>hash</td><td class=\"hashed\">hashed</td><td class=\"hashed\">hashed</td><td class=\"kept\">kept</td>"
    ), "email row");
    assert!(html.contains("2023-11-14T22:13:20Z"));

    // A doc cannot inject markup, in HTML or in Markdown.
    let (_dir, avro) = copy_of_avro();
    add_field(
        &avro.join("events/user/user.created.avsc"),
        serde_json::json!({"name": "bio", "type": "string", "privacy": "restricted",
                           "doc": "<script>alert('x')</script><img src=x onerror=alert(1)> | [x](javascript:alert(1))"}),
    );
    let o = bin()
        .args(["privacy-report", "--format", "html", "--schemas"])
        .arg(&avro)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let html = stdout(&o);
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "markup injected"
    );
    assert!(html.contains(
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    ));
    let o = bin()
        .args(["privacy-report", "--schemas"])
        .arg(&avro)
        .output()
        .unwrap();
    let md = stdout(&o);
    assert!(
        !md.contains("<script") && !md.contains("<img"),
        "markup injected"
    );
    let parsed = parse_markdown(&md);
    assert_eq!(
        row(&parsed, "user.created", "data.bio").reach,
        ["removed", "removed", "kept"]
    );
}

#[test]
fn privacy_report_refuses_schemas_the_engine_cannot_use() {
    let (_dir, avro) = copy_of_avro();
    add_field(
        &avro.join("events/user/user.created.avsc"),
        serde_json::json!({"name": "x", "type": "long", "privacy": "secret"}),
    );
    let o = bin()
        .args(["privacy-report", "--schemas"])
        .arg(&avro)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    assert!(
        stderr(&o).contains("user.created.avsc (user.created v1): fields.data.fields.x"),
        "{}",
        stderr(&o)
    );
}

// ------------------------------------------------- the report agrees with the engine

const KEY: &[u8] = b"inspect-test-key-0123456789";

/// Every value at `path` in `v`, one entry per place its parent record
/// exists: `Some` when the field is there, `None` when it is not.
fn lookup<'v>(v: &'v Value, path: &str) -> Vec<Option<&'v Value>> {
    let mut parents = vec![v];
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (name, steps) = match part.find(['[', '{', '<']) {
            Some(at) => (&part[..at], &part[at..]),
            None => (*part, ""),
        };
        if i + 1 == parts.len() && steps.is_empty() {
            return parents
                .iter()
                .filter_map(|p| p.as_object())
                .map(|o| o.get(name))
                .collect();
        }
        let mut next = Vec::new();
        for p in parents {
            let Some(mut vals) = p.get(name).filter(|x| !x.is_null()).map(|x| vec![x]) else {
                continue;
            };
            let mut rest = steps;
            while !rest.is_empty() {
                if let Some(r) = rest.strip_prefix("[]") {
                    vals = vals
                        .iter()
                        .flat_map(|x| x.as_array().into_iter().flatten())
                        .collect();
                    rest = r;
                } else if let Some(r) = rest.strip_prefix("{}") {
                    vals = vals
                        .iter()
                        .flat_map(|x| x.as_object().into_iter().flat_map(|o| o.values()))
                        .collect();
                    rest = r;
                } else {
                    // <Branch>: the union's value itself.
                    rest = &rest[rest.find('>').unwrap() + 1..];
                }
                vals.retain(|x| !x.is_null());
            }
            next.extend(vals);
        }
        parents = next;
    }
    parents.into_iter().map(Some).collect()
}

#[test]
fn the_report_agrees_with_the_engine() {
    let md = markdown_report();
    let parsed = parse_markdown(&md);

    let topology = Topology::load(Path::new("topology/default.yaml")).unwrap();
    let reg = file::load(
        Path::new("avro"),
        &topology.engine.subjects,
        &topology.spec.input.topics,
    )
    .unwrap();
    let hasher = Hasher::new(KEY).unwrap();
    let mut engine = Engine::new(topology.engine.clone(), Some(hasher.clone()));
    let mut registry = reg.registry.clone();
    let records = sample::generate(
        &reg,
        Options {
            seed: 11,
            entities: 5,
            anomalies: false,
            format: Format::Jsonl,
        },
        3000,
    );
    // The first few events of every type.
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in &records {
        let v: Value = serde_json::from_slice(r).unwrap();
        let list = by_type
            .entry(v["event_type"].as_str().unwrap().to_owned())
            .or_default();
        if list.len() < 3 {
            list.push(v);
        }
    }
    assert_eq!(by_type.len(), 55, "every event type is sampled");

    let source = Source {
        topic: Arc::from("events.raw"),
        partition: 0,
        offset: 0,
    };
    let mut checked = [0usize; 4]; // kept, hashed, removed, not routed
    for (et, events) in &by_type {
        let (_, rows) = &parsed[&format!("{et} v1")];
        // Branch-qualified paths name the same JSON key as their plain
        // form; where two rows of one plain path disagree, skip that tier.
        let plain = |p: &str| {
            let mut out = String::new();
            let mut skip = false;
            for c in p.chars() {
                match c {
                    '<' => skip = true,
                    '>' => skip = false,
                    c if !skip => out.push(c),
                    _ => {}
                }
            }
            out
        };
        for input in events {
            let bytes = serde_json::to_vec(input).unwrap();
            let raw = RawRecord {
                source: &source,
                key: None,
                value: Some(&bytes),
                headers: RawHeaders::NONE,
            };
            let outcome = engine
                .process(&raw, &mut MemoryStore::default(), &mut registry)
                .unwrap();
            let Outcome::Routed(routed) = outcome else {
                panic!("{et}: {outcome:?}");
            };
            let mut outputs: [Option<Value>; 3] = [None, None, None];
            for rec in &routed.records {
                let tier =
                    Tier::parse(std::str::from_utf8(rec.header("privacy_tier").unwrap()).unwrap())
                        .unwrap();
                let v = rec.value.as_deref().unwrap();
                let id = u32::from_be_bytes(v[1..5].try_into().unwrap());
                let text = registry.schema_by_id(id).unwrap();
                let schema = apache_avro::Schema::parse_str(&text).unwrap();
                let d = apache_avro::from_avro_datum(&schema, &mut &v[5..], None).unwrap();
                outputs[tier.index()] = Some(Value::try_from(d).unwrap());
            }
            for tier in Tier::ALL {
                let i = tier.index();
                let out = outputs[i].as_ref();
                for (path, r) in rows {
                    let ambiguous = rows.iter().any(|(p, o)| {
                        p != path && plain(p) == plain(path) && o.reach[i] != r.reach[i]
                    });
                    if ambiguous {
                        continue;
                    }
                    let path_plain = plain(path);
                    let want = lookup(input, &path_plain);
                    match r.reach[i].as_str() {
                        "not routed" => {
                            assert!(
                                out.is_none(),
                                "{et}: {tier} record exists, report says not routed"
                            );
                            checked[3] += 1;
                        }
                        "removed" | "removed (container)" => {
                            let out = out.unwrap_or_else(|| panic!("{et}: no {tier} record"));
                            let got = lookup(out, &path_plain);
                            assert!(
                                got.iter().all(Option::is_none),
                                "{et}: {path} is in the {tier} record, the report says removed"
                            );
                            checked[2] += 1;
                        }
                        "kept" => {
                            let out = out.unwrap_or_else(|| panic!("{et}: no {tier} record"));
                            let got = lookup(out, &path_plain);
                            assert_eq!(got.len(), want.len(), "{et}: {tier} {path}");
                            for (g, w) in got.iter().zip(&want) {
                                if let Some(w) = w {
                                    let g = g.unwrap_or_else(|| {
                                        panic!("{et}: {path} is missing from the {tier} record, the report says kept")
                                    });
                                    if !w.is_object() && !w.is_array() {
                                        assert_eq!(g, *w, "{et}: {tier} {path}");
                                    }
                                }
                            }
                            checked[0] += 1;
                        }
                        "hashed" => {
                            let out = out.unwrap_or_else(|| panic!("{et}: no {tier} record"));
                            let got = lookup(out, &path_plain);
                            assert_eq!(got.len(), want.len(), "{et}: {tier} {path}");
                            for (g, w) in got.iter().zip(&want) {
                                let g = g.unwrap_or_else(|| panic!("{et}: {tier} {path} missing"));
                                match w.and_then(|w| w.as_str()) {
                                    Some(s) => assert_eq!(
                                        g.as_str(),
                                        Some(hasher.pseudonym(s.as_bytes()).as_str()),
                                        "{et}: {tier} {path} is not the pseudonym"
                                    ),
                                    None => assert!(g.is_null(), "{et}: {tier} {path}"),
                                }
                            }
                            checked[1] += 1;
                        }
                        other => panic!("{et}: {path}: unknown treatment {other}"),
                    }
                }
            }
        }
    }
    assert!(
        checked.iter().all(|n| *n > 50),
        "every treatment was checked against the engine: {checked:?}"
    );
}

// ------------------------------------------------- against a schema registry

const USER_CREATED: &str = "events.raw-com.privacyrouter.events.user.UserCreated";
const PUBLIC_USER_CREATED: &str = "events.public-com.privacyrouter.events.user.UserCreated";

/// The registry stand-in on a runtime of its own (the binary under test
/// talks to it over HTTP).
struct StandIn {
    registry: registry::Registry,
    _rt: tokio::runtime::Runtime,
}

impl StandIn {
    fn start() -> StandIn {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let registry = rt.block_on(registry::Registry::start());
        StandIn { registry, _rt: rt }
    }

    fn url(&self) -> &str {
        &self.registry.url
    }

    /// Every event type of `avro/` as version 1 of its input subject, as
    /// producers would have registered them.
    fn with_every_event_type() -> StandIn {
        let s = StandIn::start();
        for e in composed_events() {
            s.registry.register(&subject_of(&e.event_type), &e.text);
        }
        s
    }
}

fn subject_of(event_type: &str) -> String {
    Topology::default_embedded()
        .engine
        .subjects
        .subject("events.raw", event_type)
}

/// The composed schemas of `avro/` (the file registry's).
fn composed_events() -> Vec<file::EventSchema> {
    let t = Topology::load(Path::new("topology/default.yaml")).unwrap();
    file::load(Path::new("avro"), &t.engine.subjects, &t.spec.input.topics)
        .unwrap()
        .events
}

/// user.created's composed schema with its payload changed by `edit`.
fn user_created_with(edit: impl FnOnce(&mut Vec<Value>)) -> String {
    let e = composed_events()
        .into_iter()
        .find(|e| e.event_type == "user.created")
        .unwrap();
    let mut v: Value = serde_json::from_str(&e.text).unwrap();
    let data = v["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "data")
        .unwrap();
    edit(data["type"]["fields"].as_array_mut().unwrap());
    v.to_string()
}

fn user_created() -> String {
    user_created_with(|_| {})
}

/// Registers, under each output subject, the derived schema of `text` for
/// every tier it reaches, as the processor does when it first writes an
/// event of that schema.
fn register_derived(registry: &registry::Registry, text: &str) {
    use privacy_router::project::derived_schema;
    use privacy_router::schema::derived_subject;
    let t = Topology::load(Path::new("topology/default.yaml")).unwrap();
    let schema = privacy_router::schema::CompiledSchema::compile(text, &t.engine.rules).unwrap();
    for tier in Tier::ALL {
        let topic = &t.engine.topics.tiers[tier.index()];
        registry.register(
            &derived_subject(topic, &schema),
            &derived_schema(&schema, tier).to_string(),
        );
    }
}

#[test]
fn check_against_the_registry_names_subject_version_and_id() {
    let s = StandIn::with_every_event_type();
    let o = run(&["check", "--registry-url", s.url()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.starts_with(&format!(
            "privacy-router check: topology topology/default.yaml, registry {} (55 event types, 55 schema versions, ",
            s.url()
        )),
        "{out}"
    );
    // Fields classified by tags are listed against the subject version.
    let id = s.registry.subjects()[USER_CREATED][0];
    assert!(
        out.contains(&format!(
            "info: {}: subject {USER_CREATED} version 1 (id {id}): data.email: tier restricted from its \"privacy\" label and confluent:tags PII (they agree) [user.created]",
            s.url()
        )),
        "{out}"
    );
    assert!(out.contains("OK: 0 error(s), 0 warning(s)"), "{out}");

    // A producer registers a version 2 with a field nobody labelled: the
    // check of what production reads fails, naming subject, version and id.
    let v2 = user_created_with(|fields| {
        fields.push(
            serde_json::json!({"name": "nickname", "type": ["null", "string"], "default": null}),
        );
    });
    let id2 = s.registry.register(USER_CREATED, &v2);
    let o = run(&["check", "--registry-url", s.url()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "error: {}: subject {USER_CREATED} version 2 (id {id2}): data.nickname: no \"privacy\" label, no mapped tag and no default from its own record: falls to the fail-closed default (restricted); label it [user.created]",
            s.url()
        )),
        "{out}"
    );
    assert!(
        out.contains("(55 event types, 56 schema versions, "),
        "{out}"
    );
    assert!(out.contains("FAILED: 1 error(s)"), "{out}");
    let o = run(&["check", "--format", "json", "--registry-url", s.url()]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["registry"], s.url());
    assert_eq!(v["schema_versions"], 56);
    let f = &v["findings"][0];
    assert_eq!(f["code"], "fail_closed_field");
    assert_eq!(
        f["schemas"],
        serde_json::json!([{"subject": USER_CREATED, "version": 2, "id": id2}])
    );

    // A tier limit for an event type that has no subject is refused, with
    // the registry named.
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("typo.yaml");
    std::fs::write(
        &t,
        "event_types:\n  user.login_faild: {tiers: [restricted]}\n",
    )
    .unwrap();
    let o = bin()
        .args(["check", "--registry-url", s.url(), "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains(&format!(
            "event_types.user.login_faild: no schema in the registry at {} defines the event type user.login_faild; did you mean user.login_failed?",
            s.url()
        )),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_schema_prints_what_each_tier_gains_and_loses_for_a_compatible_change() {
    let s = StandIn::start();
    let v1 = user_created();
    let id1 = s.registry.register(USER_CREATED, &v1);
    register_derived(&s.registry, &v1);
    // A new public field with a default, and an internal one dropped.
    let v2 = user_created_with(|fields| {
        fields.retain(|f| f["name"] != "marketing_opt_in");
        fields.push(serde_json::json!({"name": "nickname", "type": ["null", "string"], "default": null, "privacy": "public"}));
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user.created.v2.avsc");
    std::fs::write(&file, &v2).unwrap();
    let o = bin()
        .args([
            "check",
            "--registry-url",
            s.url(),
            "--subject",
            USER_CREATED,
            "--schema",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    for needle in [
        format!(
            "privacy-router check: topology topology/default.yaml, schema {} for subject {USER_CREATED} against the registry at {}",
            file.display(),
            s.url()
        ),
        format!("event type user.created; latest now: subject {USER_CREATED} version 1 (id {id1})\n"),
        format!("writer schema under {USER_CREATED}: compatible\n"),
        format!("public (events.public, subject {PUBLIC_USER_CREATED}):\n  gains data.nickname (null | string): new field; tier public, kept\n  registry: compatible\n"),
        "internal (events.internal, subject events.internal-com.privacyrouter.events.user.UserCreated):\n  gains data.nickname (null | string): new field; tier public, kept\n  loses data.marketing_opt_in (boolean): removed from the schema\n  registry: compatible\n".to_owned(),
        "restricted (events.restricted, subject events.restricted-com.privacyrouter.events.user.UserCreated):\n  gains data.nickname".to_owned(),
        "OK: 0 error(s)".to_owned(),
    ] {
        assert!(out.contains(&needle), "{needle:?} missing:\n{out}");
    }
    // Nothing was registered by the check.
    assert_eq!(s.registry.subjects()[USER_CREATED].len(), 1);

    // JSON for CI tools.
    let o = bin()
        .args([
            "check",
            "--format",
            "json",
            "--registry-url",
            s.url(),
            "--subject",
            USER_CREATED,
            "--schema",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let public = &v["candidate"]["tiers"][0];
    assert_eq!(public["tier"], "public");
    assert_eq!(public["compatible"], true);
    assert_eq!(public["gains"][0]["path"], "data.nickname");
}

#[test]
fn check_schema_fails_when_a_derived_schema_would_be_refused() {
    let s = StandIn::start();
    let v1 = user_created();
    s.registry.register(USER_CREATED, &v1);
    register_derived(&s.registry, &v1);
    // locale becomes public: the public derived schema gains a field without
    // a default, which BACKWARD refuses.
    let v2 = user_created_with(|fields| {
        for f in fields.iter_mut().filter(|f| f["name"] == "locale") {
            f["privacy"] = "public".into();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v2.avsc");
    std::fs::write(&file, &v2).unwrap();
    let o = bin()
        .args([
            "check",
            "--registry-url",
            s.url(),
            "--subject",
            USER_CREATED,
            "--schema",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!("public (events.public, subject {PUBLIC_USER_CREATED}):\n  gains data.locale (string): tier internal -> public, kept\n  registry: INCOMPATIBLE: ")),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("error: ") && l.contains("<derived public schema>"))
        .unwrap_or_else(|| panic!("no error for the public schema:\n{out}"));
    assert!(
        line.starts_with(&format!("error: {}: <derived public schema>: the registry at {} would refuse the derived public schema as the next version of subject {PUBLIC_USER_CREATED}", file.display(), s.url())),
        "{line}"
    );
    assert!(line.contains("derived_schema_rejected"), "{line}");
    // The internal and restricted schemas are unchanged: accepted.
    assert!(!out.contains("<derived internal schema>"), "{out}");
    assert!(out.contains("FAILED: 1 error(s)"), "{out}");
    assert!(
        stderr(&o).contains("check found 1 error(s)"),
        "{}",
        stderr(&o)
    );

    // A subject that is not an input subject, and a file that is not Avro,
    // are named.
    std::fs::write(
        &file,
        r#"{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nonsense"}]}"#,
    )
    .unwrap();
    let o = bin()
        .args([
            "check",
            "--registry-url",
            s.url(),
            "--subject",
            "other-value",
            "--schema",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.contains("error: <command line>: --subject: other-value is not an input subject of topology/default.yaml"), "{out}");
    assert!(
        out.contains(&format!(
            "error: {}: <root>: not a valid Avro schema",
            file.display()
        )),
        "{out}"
    );
    // --schema needs a registry.
    let o = bin()
        .args(["check", "--subject", USER_CREATED, "--schema"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--schema needs --registry-url"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn privacy_report_from_the_registry_names_registry_subjects_versions_and_ids() {
    let s = StandIn::with_every_event_type();
    let v2 = user_created_with(|fields| {
        fields.push(serde_json::json!({"name": "nickname", "type": ["null", "string"], "default": null, "privacy": "public"}));
    });
    let id2 = s.registry.register(USER_CREATED, &v2);
    let id1 = s.registry.subjects()[USER_CREATED][0];
    let report = |format: &str| {
        let o = bin()
            .args([
                "privacy-report",
                "--format",
                format,
                "--registry-url",
                s.url(),
            ])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let md = report("markdown");
    for needle in [
        format!("| Schema registry | `{}` (55 event types, 56 schema versions, sha256 `", s.url()),
        format!("| Generated | 2023-11-14T22:13:20Z by privacy-router {} |", env!("CARGO_PKG_VERSION")),
        format!("| `user.created` | 1 | {USER_CREATED} v1 (id {id1}) | `{}` |", s.url()),
        format!("| `user.created` | 2 | {USER_CREATED} v2 (id {id2}) | `{}` |", s.url()),
        format!("Registry {}; subject {USER_CREATED} version 2 (id {id2}); record com.privacyrouter.events.user.UserCreated, sha256 `", s.url()),
        "## Sign-off\n".to_owned(),
    ] {
        assert!(md.contains(&needle), "{needle:?} missing");
    }
    let parsed = parse_markdown(&md);
    assert_eq!(parsed.len(), 56);
    assert_eq!(
        row(&parsed, "user.created v2", "data.nickname").reach,
        ["kept", "kept", "kept"]
    );
    assert!(parsed["user.created v1"]
        .1
        .iter()
        .all(|(p, _)| p != "data.nickname"));
    assert_eq!(
        md,
        report("markdown"),
        "deterministic with SOURCE_DATE_EPOCH"
    );

    let html = report("html");
    assert!(html.contains(&format!(
        "<tr><th>Schema registry</th><td><code>{}</code>",
        s.url()
    )));
    assert!(html.contains("<section id=\"user.created-v2\">"));
    assert!(html.contains("@media print{"), "print stylesheet");
    assert!(
        html.contains("<section class=\"signoff\">"),
        "sign-off block"
    );
    assert!(!html.contains("<script"));

    // The registry's subjects with a topology that names what it has not:
    // refused, as run would refuse it.
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("typo.yaml");
    std::fs::write(
        &t,
        "event_types:\n  user.login_faild: {tiers: [restricted]}\n",
    )
    .unwrap();
    let o = bin()
        .args(["privacy-report", "--registry-url", s.url(), "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(
        stderr(&o).contains("did you mean user.login_failed?"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn overrides_are_shown_by_check_describe_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("overrides.yaml");
    let default = std::fs::read_to_string("topology/default.yaml").unwrap();
    std::fs::write(
        &t,
        default.replacen(
            "classification:\n",
            "classification:\n  overrides:\n    com.privacyrouter.events.user.UserCreatedData: {locale: restricted, email: restricted}\n",
            1,
        ),
    )
    .unwrap();
    let line = t.display().to_string();
    // The line of the inserted override map (two after `classification:`).
    let at_line = 3 + default
        .lines()
        .position(|l| l == "classification:")
        .unwrap();

    let o = bin()
        .args(["check", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "info: {line}:{at_line}:53: classification.overrides.com.privacyrouter.events.user.UserCreatedData.locale: tier floor restricted: raises data.locale from internal to restricted in user.created v1 [user.created]"
        )),
        "{out}"
    );
    assert!(
        out.contains("classification.overrides.com.privacyrouter.events.user.UserCreatedData.email: tier floor restricted: leaves data.email as it is (already restricted) in user.created v1"),
        "{out}"
    );

    let o = bin()
        .args(["describe", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("checked against the folder avro):\n    com.privacyrouter.events.user.UserCreatedData.email >= restricted: leaves data.email as it is (already restricted) in user.created v1\n    com.privacyrouter.events.user.UserCreatedData.locale >= restricted: raises data.locale from internal to restricted in user.created v1\n"),
        "{out}"
    );
    let o = bin()
        .args(["describe", "--format", "mermaid", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("overrides -.->|\"raise tiers\"| project_public"));
    // Without its schemas, describe still lists them.
    let o = bin()
        .args(["describe", "--schemas", "no-such-folder", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("UserCreatedData.locale >= restricted: what it changes is not known: schemas in no-such-folder cannot be read"),
        "{}",
        stdout(&o)
    );

    let o = bin()
        .args(["privacy-report", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    let md = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        md.contains("| `com.privacyrouter.events.user.UserCreatedData` | `locale` | restricted | raises data.locale from internal to restricted in user.created v1 |"),
        "{md}"
    );
    let parsed = parse_markdown(&md);
    let locale = row(&parsed, "user.created", "data.locale");
    assert_eq!(locale.tier, "restricted");
    assert_eq!(locale.from, "override (schema said internal: label)");
    assert_eq!(locale.reach, ["removed", "removed", "kept"]);
    assert!(md.contains("| raised by an override | 1 |"), "{md}");
    let o = bin()
        .args(["privacy-report", "--format", "html", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("<td class=\"override\">override (schema said internal: label)</td>")
    );
}

#[test]
fn a_topology_with_ten_mistakes_lists_all_ten_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("ten.yaml");
    std::fs::write(
        &t,
        "application_id: privacy-router
retention: 7d
input:
  topics: [events.raw]
  partitions: 3
outputs:
  public: events.public
  internal: events.public
  restricted: \"events restricted\"
processing:
  commit_interval_ms: soon
schemas:
  subject_template: \"{topic}-com.privacyrouter.events.{domain}.{Tpye}\"
event_types:
  user.login_faild: {tiers: [restricted]}
  user.locked: {tiers: [secret]}
  user.deleted: {tiers: []}
  user.created: {tier: [public]}
",
    )
    .unwrap();
    let o = bin()
        .args(["check", "--topology"])
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let file = t.display().to_string();
    let expected = [
        ("2:1", "retention", "unknown key"),
        ("5:3", "input.partitions", "unknown key"),
        (
            "8:3",
            "outputs.internal",
            "is the same topic as outputs.public",
        ),
        ("9:3", "outputs.restricted", "is not a valid topic name"),
        ("11:23", "processing.commit_interval_ms", "invalid type"),
        ("13:3", "schemas.subject_template", "uses {Tpye}"),
        (
            "15:3",
            "event_types.user.login_faild",
            "did you mean user.login_failed?",
        ),
        (
            "16:25",
            "event_types.user.locked.tiers[0]",
            "unknown variant `secret`",
        ),
        ("17:18", "event_types.user.deleted.tiers", "is empty"),
        (
            "18:18",
            "event_types.user.created.tier",
            "did you mean `tiers`?",
        ),
    ];
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 10, "{out}");
    for (at, path, what) in expected {
        let prefix = format!("error: {file}:{at}: {path}: ");
        let hits: Vec<&&str> = errors.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(
            hits.len(),
            1,
            "{prefix} listed {} times:\n{out}",
            hits.len()
        );
        assert!(hits[0].contains(what), "{}", hits[0]);
    }
    assert!(out.contains("FAILED: 10 error(s)"), "{out}");
    // No value from the file is quoted beyond the key paths and the values
    // at fault; no schema or payload value at all.
    assert!(!out.contains("7d") && !out.contains("\"3\""), "{out}");
    assert!(
        stderr(&o).contains("check found 10 error(s)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_schema_file_that_is_not_avro_is_named() {
    let (_dir, avro) = copy_of_avro();
    let payload = avro.join("events/post/post.hidden.avsc");
    std::fs::write(&payload, r#"{"type": "record", "name": "PostHiddenData", "fields": [{"name": "x", "type": "nonsense"}]}"#).unwrap();
    let o = bin()
        .arg("check")
        .arg("--schemas")
        .arg(&avro)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "error: {}: <root>: not a valid Avro schema",
            payload.display()
        )),
        "{out}"
    );
    assert!(out.contains("[post.hidden]"), "{out}");
    let o = bin()
        .arg("privacy-report")
        .arg("--schemas")
        .arg(&avro)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{} (post.hidden v1)", payload.display())),
        "{}",
        stderr(&o)
    );
}

/// Against a real registry: Apicurio Registry 3.x's Confluent-compatible
/// API, started by `scripts/test.sh` (`scripts/registry.sh start`), whose
/// base URL it exports as `APICURIO_URL`. Fails without it, like the broker
/// tests without `KAFKA_BOOTSTRAP`; `--skip apicurio` leaves it out.
#[test]
fn apicurio_check_and_report_against_a_real_registry() {
    use privacy_router::project::derived_schema;
    use privacy_router::registry::confluent::{ConfluentConfig, ConfluentRegistry};
    use privacy_router::schema::derived_subject;
    let url = std::env::var("APICURIO_URL").expect(
        "APICURIO_URL is not set: run the tests with `bash scripts/test.sh`, which starts Apicurio Registry (scripts/registry.sh)",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut client = ConfluentRegistry::new(
        &ConfluentConfig {
            urls: vec![url.clone()],
            timeout: std::time::Duration::from_secs(10),
            ..ConfluentConfig::default()
        },
        rt.handle().clone(),
        privacy_router::telemetry::Metrics::default(),
    )
    .unwrap();
    // Topics of this run only: the registry is shared.
    let run_id = format!("{:08x}", fastrand::u32(..));
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("apicurio.yaml");
    std::fs::write(
        &topology,
        format!("input: {{topics: [raw-{run_id}]}}\noutputs: {{public: pub-{run_id}, internal: int-{run_id}, restricted: res-{run_id}, dead_letter: dlq-{run_id}}}\n"),
    )
    .unwrap();
    let t = Topology::load(&topology).unwrap();
    let subject = t
        .engine
        .subjects
        .subject(&format!("raw-{run_id}"), "user.created");
    let v1 = user_created();
    let id1 = client.register(&subject, &v1).unwrap();
    let schema = privacy_router::schema::CompiledSchema::compile(&v1, &t.engine.rules).unwrap();
    for tier in Tier::ALL {
        let topic = &t.engine.topics.tiers[tier.index()];
        client
            .register(
                &derived_subject(topic, &schema),
                &derived_schema(&schema, tier).to_string(),
            )
            .unwrap();
    }

    // check and privacy-report read it.
    let o = bin()
        .args(["check", "--registry-url", &url, "--topology"])
        .arg(&topology)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!("registry {url} (1 event types, 1 schema versions")),
        "{out}"
    );
    assert!(
        out.contains(&format!("subject {subject} version 1 (id {id1})")),
        "{out}"
    );
    let o = bin()
        .args(["privacy-report", "--registry-url", &url, "--topology"])
        .arg(&topology)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!(
        "| `user.created` | 1 | {subject} v1 (id {id1}) | `{url}` |"
    )));

    // A compatible change passes; a public field without a default in the
    // public schema is refused by the registry (Apicurio gives no reasons).
    let file = dir.path().join("candidate.avsc");
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        bin()
            .args([
                "check",
                "--registry-url",
                &url,
                "--subject",
                &subject,
                "--topology",
            ])
            .arg(&topology)
            .arg("--schema")
            .arg(&file)
            .output()
            .unwrap()
    };
    let o = check(&user_created_with(|fields| {
        fields.push(serde_json::json!({"name": "nickname", "type": ["null", "string"], "default": null, "privacy": "public"}));
    }));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("  gains data.nickname (null | string): new field; tier public, kept")
    );
    let o = check(&user_created_with(|fields| {
        for f in fields.iter_mut().filter(|f| f["name"] == "locale") {
            f["privacy"] = "public".into();
        }
    }));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("would refuse the derived public schema as the next version of subject pub-{run_id}-com.privacyrouter.events.user.UserCreated")),
        "{out}"
    );
    drop(client);
}

#[test]
fn every_version_in_the_schema_folder_is_checked_and_reported() {
    let (_dir, avro) = copy_of_avro();
    let v1 = avro.join("events/user/user.created.avsc");
    let v2 = avro.join("events/user/user.created.v2.avsc");
    std::fs::copy(&v1, &v2).unwrap();
    add_field(
        &v2,
        serde_json::json!({"name": "nickname", "type": ["null", "string"], "default": null}),
    );
    let o = bin()
        .arg("check")
        .arg("--schemas")
        .arg(&avro)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("(55 event types, 56 schema versions, "),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "error: {}: data.nickname: no \"privacy\" label",
            v2.display()
        )),
        "{out}"
    );
    add_field(
        &v2,
        serde_json::json!({"name": "x", "type": "string", "privacy": "public"}),
    );
    let mut payload: Value = serde_json::from_str(&std::fs::read_to_string(&v2).unwrap()).unwrap();
    for f in payload["fields"].as_array_mut().unwrap() {
        if f["name"] == "nickname" {
            f["privacy"] = "internal".into();
        }
    }
    std::fs::write(&v2, payload.to_string()).unwrap();
    let o = bin()
        .args(["privacy-report", "--schemas"])
        .arg(&avro)
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let md = stdout(&o);
    let parsed = parse_markdown(&md);
    assert_eq!(parsed.len(), 56);
    assert_eq!(
        row(&parsed, "user.created v2", "data.nickname").reach,
        ["removed", "kept", "kept"]
    );
    assert!(
        md.contains(&format!(
            "File {}; subject {USER_CREATED} version 2 (id ",
            v2.display()
        )),
        "{md}"
    );
}
