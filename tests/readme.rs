//! Every command in the README is tested: the ones that need no broker run
//! here as written (from the repository root); `run` needs Kafka and is
//! exercised by `tests/kafka.rs` (here: every flag of the README's table
//! exists); the test command is `.ci/run`'s; `docker compose up` needs an
//! engine and is checked by `tests/compose.rs`; `cargo install --path .`
//! builds the binary the tests run.

use std::process::Command;

const README: &str = include_str!("../README.md");

/// The lines of the README's `sh` code blocks.
fn commands() -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside && line.trim() == "```sh";
            continue;
        }
        if inside && !line.trim().is_empty() {
            out.push(line.trim().to_owned());
        }
    }
    out
}

/// Splits `A=b C=d prog args…` into the environment and the words.
fn split(line: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = Vec::new();
    let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    while let Some(first) = words.first() {
        match first.split_once('=') {
            Some((k, v)) if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
                env.push((k.to_owned(), v.to_owned()));
                words.remove(0);
            }
            _ => break,
        }
    }
    (env, words)
}

#[test]
fn every_readme_command_is_run_or_covered() {
    let cmds = commands();
    assert!(cmds.len() >= 8, "{cmds:?}");
    let bin = env!("CARGO_BIN_EXE_privacy-router");
    let out = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for line in &cmds {
        let (env, words) = split(line);
        match words.first().map(String::as_str) {
            Some("bash") if words[1] == "scripts/test.sh" => {
                let ci = std::fs::read_to_string(".ci/run").unwrap();
                assert!(
                    ci.contains("bash scripts/test.sh"),
                    ".ci/run runs the README's test command"
                );
            }
            Some("cargo") if words[1] == "install" => {
                // `cargo install --path .` builds the package's binary in
                // release mode: the binary these tests run (building it
                // again into another root would only repeat the build).
                let words: Vec<&str> = words
                    .iter()
                    .map(String::as_str)
                    .take_while(|w| !w.starts_with('#'))
                    .collect();
                assert_eq!(words, ["cargo", "install", "--path", "."], "{line}");
                let manifest = std::fs::read_to_string("Cargo.toml").unwrap();
                assert!(manifest.contains("name = \"privacy-router\""));
                assert!(std::path::Path::new(bin).is_file());
            }
            Some("cargo") => {
                // `cargo run --release -- <args>`: the same binary.
                let at = words
                    .iter()
                    .position(|w| w == "--")
                    .expect("cargo run -- args");
                let mut args: Vec<String> = words[at + 1..].to_vec();
                if args[0] == "demo" {
                    args.extend([
                        "--out".into(),
                        out.path().join("demo").display().to_string(),
                    ]);
                }
                let run = Command::new(bin).args(&args).envs(env).output().unwrap();
                let stderr = String::from_utf8_lossy(&run.stderr);
                assert!(run.status.success(), "{line}:\n{stderr}");
                if args[0] == "demo" {
                    for row in [
                        "records produced to the input",
                        "(public)",
                        "(internal)",
                        "(restricted)",
                        "(dead letter)",
                        "order: accepted",
                        "order: gap",
                        // The default topology holds gaps: the sample's
                        // swapped versions are released in order, its real
                        // gaps when the window ends.
                        "held for reordering",
                        "released: in_order",
                        "released: timeout",
                        "transactions committed",
                    ] {
                        let stdout = String::from_utf8_lossy(&run.stdout);
                        assert!(
                            stdout.contains(row),
                            "the demo summary (stdout) lacks {row:?}:\n{stdout}"
                        );
                    }
                    for f in ["public", "internal", "restricted", "dead-letter"] {
                        let text = std::fs::read_to_string(
                            out.path().join("demo").join(format!("{f}.jsonl")),
                        )
                        .unwrap();
                        assert!(text.lines().count() > 10, "{f}.jsonl");
                    }
                    held_events_were_put_back_in_order(&out.path().join("demo"));
                }
                ran += 1;
            }
            Some("privacy-router") if words[1] == "run" => {
                let help = Command::new(bin).args(["run", "--help"]).output().unwrap();
                let help = String::from_utf8_lossy(&help.stdout);
                for w in &words[2..] {
                    if w.starts_with("--") {
                        assert!(help.contains(w.as_str()), "`run --help` lacks {w}");
                    }
                }
            }
            Some("privacy-router") => {
                let run = Command::new(bin)
                    .args(&words[1..])
                    .envs(env)
                    .output()
                    .unwrap();
                assert!(
                    run.status.success(),
                    "{line}:\n{}",
                    String::from_utf8_lossy(&run.stderr)
                );
                ran += 1;
            }
            other => panic!("a README command nobody tests: {line} ({other:?})"),
        }
    }
    assert!(ran >= 6, "ran {ran} commands");
}

/// In what the demo wrote to restricted (every routed event), each
/// entity's versions only increase, in one partition, and the gaps released
/// when their window ended are there with their header.
fn held_events_were_put_back_in_order(demo: &std::path::Path) {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(demo.join("restricted.jsonl")).unwrap();
    let mut records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
    let mut last: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for r in &records {
        let v = &r["value"];
        let entity = (
            v["entity_type"].as_str().unwrap().to_owned(),
            v["entity_id"].as_str().unwrap().to_owned(),
        );
        let (partition, version) = (
            r["partition"].as_i64().unwrap(),
            v["entity_version"].as_i64().unwrap(),
        );
        if let Some((p, before)) = last.insert(entity.clone(), (partition, version)) {
            assert_eq!(p, partition, "{entity:?} in two partitions");
            assert!(
                version > before,
                "{entity:?}: version {version} after {before}"
            );
        }
    }
    assert!(
        records
            .iter()
            .any(|r| r["headers"]["x-version-gap"].is_string()),
        "no gap was released when its window ended"
    );
}

#[test]
fn the_readme_flag_table_matches_run_help() {
    let help = Command::new(env!("CARGO_BIN_EXE_privacy-router"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let table = README
        .split("| flag | environment | default | what |")
        .nth(1)
        .expect("the README has the flag table");
    let mut flags = 0;
    let rows = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.starts_with("|---"));
    for row in rows {
        for flag in row.split('|').nth(1).unwrap().split('`') {
            let flag = flag.split_whitespace().next().unwrap_or("");
            if flag.starts_with("--") || flag == "-X" {
                let name = flag.trim_end_matches(',');
                let in_help = if name == "--log-format"
                    || name == "--hash-key"
                    || name == "--topology"
                    || name == "--schemas"
                {
                    true // global or shared flags, checked below
                } else {
                    help.contains(name)
                };
                assert!(in_help, "`run --help` lacks {name}");
                flags += 1;
            }
        }
        for env in row
            .split('`')
            .filter(|s| s.starts_with("PRIVACY_ROUTER_") && !s.contains('…'))
        {
            let env = env.split_whitespace().next().unwrap();
            assert!(help.contains(env), "`run --help` does not name {env}");
        }
    }
    assert!(flags >= 14, "{flags} flags in the table");
    for shared in ["--topology", "--schemas", "--hash-key", "--log-format"] {
        assert!(help.contains(shared), "`run --help` lacks {shared}");
    }
}
