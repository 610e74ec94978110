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
use privacy_router::pipeline::{Engine, Outcome, SchemaLookup};
use privacy_router::project::Hasher;
use privacy_router::record::{RawRecord, Source, Tier};
use privacy_router::registry::file;
use privacy_router::sample::{self, Format, Options};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_privacy-router"));
    c.env_remove("PRIVACY_ROUTER_HASH_KEY")
        .env_remove("PRIVACY_ROUTER_TOPOLOGY")
        .env_remove("PRIVACY_ROUTER_SCHEMAS")
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
        "commit.interval.ms: 100",
        "ordering.on_gap: emit",
        "classification.on_tier_mismatch: emit",
        "classification.tags: INTERNAL -> internal, PII -> restricted, PUBLIC -> public",
        "--> sink-public (all but user.locked, user.login_failed, user.login_succeeded)",
    ] {
        assert!(text.contains(needle), "text lacks {needle:?}:\n{text}");
    }
    for needle in [
        "in_0 --> decode",
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
        "commit.interval.ms: 250",
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

fn parse_markdown(md: &str) -> Parsed {
    let mut parsed = Parsed::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            let et = rest.trim_end_matches('`').to_owned();
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

fn row<'p>(parsed: &'p Parsed, et: &str, path: &str) -> &'p Row {
    &parsed[et]
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
        md.contains("| Generated | 2023-11-14T22:13:20Z |"),
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
    let (reaches, rows) = &parsed["user.login_failed"];
    assert!(
        reaches.starts_with("Reaches restricted only")
            && reaches.contains("no public or internal record is written"),
        "{reaches}"
    );
    for (path, r) in rows {
        assert_eq!(r.reach[..2], ["not routed", "not routed"], "{path}");
        assert_eq!(r.reach[2], "kept", "{path}");
    }
    assert!(parsed["user.created"]
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

    // Without SOURCE_DATE_EPOCH it is simply not dated.
    let undated = stdout(&run(&["privacy-report"]));
    assert!(undated.contains("| Generated | not dated"), "{undated}");
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
    assert!(html.contains("<section id=\"user.login_failed\">"));
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
        stderr(&o).contains("user.created.avsc (user.created): fields.data.fields.x"),
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
        let (_, rows) = &parsed[et];
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
                headers: &[],
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
