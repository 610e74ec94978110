//! What `deploy/` ships for operators, checked against the binary: the
//! Prometheus alerting rules pass `promtool check rules` (the test script
//! installs Debian's `prometheus` for it) and, like the Grafana dashboard,
//! use only metrics the processor exports.

use std::collections::BTreeSet;
use std::process::Command;

use privacy_router::telemetry::{names, Metrics};
use prometheus::Registry;
use serde_json::Value;

/// Every series name the processor exports: ours (`names::ALL`, a unit
/// test of the telemetry module keeps it equal to what is registered) and
/// the process metrics a fresh registry lists; histograms with their
/// `_bucket`, `_sum` and `_count`.
fn exported() -> BTreeSet<String> {
    let text = Metrics::new(Registry::new()).encode();
    let mut names: BTreeSet<String> = names::ALL.iter().map(|n| (*n).to_owned()).collect();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
        }
    }
    // Histograms with labels have no series (and no TYPE line) yet.
    histograms.insert(names::COMMIT_SECONDS.to_owned());
    for h in histograms {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{h}{suffix}"));
        }
    }
    names
}

/// The metric names a PromQL expression uses: its identifiers that are
/// ours or the standard process metrics.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("privacy_router_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The metrics `expr` (of the rule or panel `what`) uses: at least one, and
/// every one exported.
fn exported_metrics_in(what: &str, expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let used = metrics_in(expr);
    assert!(!used.is_empty(), "{what}: {expr}");
    for m in &used {
        assert!(
            exported.contains(m),
            "{what} uses {m}, which is not exported"
        );
    }
    used
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool").args(args).output().expect(
        "promtool is not installed: run the tests with `bash scripts/test.sh`, which installs Debian's prometheus",
    )
}

#[test]
fn alert_rules_pass_promtool_and_use_only_exported_metrics() {
    let out = promtool(&["check", "rules", "deploy/alerts.yml"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 7 rules found"), "{said}");
    // The compose file's Prometheus loads them.
    let out = promtool(&["check", "config", "deploy/prometheus.yml"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let rules: Value =
        serde_saphyr::from_str(&std::fs::read_to_string("deploy/alerts.yml").unwrap())
            .expect("alerts.yml is YAML");
    let exported = exported();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            exported_metrics_in(name, expr, &exported);
            assert!(rule["annotations"]["summary"].is_string(), "{name}");
            alerts.insert(name.to_owned());
        }
    }
    // What the issues ask to watch: readiness, lag, dead letters per reason,
    // aborted transactions, refused derived schemas, registry errors, held
    // events not released.
    for a in [
        "PrivacyRouterNotReady",
        "PrivacyRouterConsumerLagGrowing",
        "PrivacyRouterDeadLetters",
        "PrivacyRouterTransactionsAborted",
        "PrivacyRouterDerivedSchemaRefused",
        "PrivacyRouterRegistryErrors",
        "PrivacyRouterHeldEventsStuck",
    ] {
        assert!(alerts.contains(a), "{a} missing: {alerts:?}");
    }
}

#[test]
fn the_grafana_dashboard_uses_only_exported_metrics() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/privacy-router.json").unwrap(),
    )
    .expect("the dashboard is JSON");
    let exported = exported();
    let mut seen = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            seen.extend(exported_metrics_in(title, expr, &exported));
        }
    }
    // Every metric of ours is on the dashboard somewhere.
    for m in exported.iter().filter(|m| m.starts_with("privacy_router_")) {
        let base = m
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            seen.iter().any(|s| s.starts_with(base)),
            "{m} is on no panel"
        );
    }
}

fn manifest(name: &str) -> Value {
    let path = format!("deploy/kubernetes/{name}");
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Kubernetes manifests, checked against what the binary accepts: each
/// flag and environment variable is one `privacy-router run --help` lists,
/// the pod name is the instance id, the probes and the Service use the
/// metrics port the binary serves, and the hash key comes from the Secret.
#[test]
fn kubernetes_manifests_match_what_the_binary_accepts() {
    let help = Command::new(env!("CARGO_BIN_EXE_privacy-router"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();

    let sts = manifest("statefulset.yaml");
    assert_eq!(sts["kind"], "StatefulSet");
    let spec = &sts["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Arguments: the `run` command and flags it has.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(&format!("{flag} ")), "run has no {flag}");
    }
    let grace_arg = args
        .iter()
        .position(|a| *a == "--shutdown-grace-secs")
        .map_or(30, |i| args[i + 1].parse::<i64>().unwrap());

    // Environment: names the binary reads; the instance id is the pod name;
    // the hash key and the registry password come from the Secret.
    let secret = manifest("secret.example.yaml");
    assert_eq!(secret["kind"], "Secret");
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let mut env = std::collections::BTreeMap::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(
            help.contains(&format!("[env: {name}=]")) || help.contains(&format!("[env: {name}]")),
            "run reads no {name}"
        );
        env.insert(name.to_owned(), e.clone());
    }
    assert_eq!(
        env["PRIVACY_ROUTER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let key = &env["PRIVACY_ROUTER_HASH_KEY"]["valueFrom"]["secretKeyRef"];
    assert_eq!(key["name"], secret_name);
    assert!(secret["stringData"][key["key"].as_str().unwrap()].is_string());
    assert!(
        !c.to_string()
            .contains(secret["stringData"]["hash-key"].as_str().unwrap()),
        "no secret value in the pod spec"
    );
    let password_file = env["PRIVACY_ROUTER_REGISTRY_PASSWORD_FILE"]["value"]
        .as_str()
        .unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| password_file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the password file is on a mounted volume");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], secret_name);

    // The metrics port: what PRIVACY_ROUTER_METRICS_ADDR binds, named
    // `metrics`, probed on /livez and /readyz, and the Service's port.
    let addr = env["PRIVACY_ROUTER_METRICS_ADDR"]["value"]
        .as_str()
        .unwrap();
    let port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let ports = c["ports"].as_array().unwrap();
    assert!(ports
        .iter()
        .any(|p| p["name"] == "metrics" && p["containerPort"] == port));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    assert!(help.contains("/livez") && help.contains("/readyz"));

    // SIGTERM gets longer than the shutdown grace before SIGKILL.
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > grace_arg);

    let svc = manifest("service.yaml");
    assert_eq!(svc["kind"], "Service");
    assert_eq!(svc["metadata"]["name"], spec["serviceName"]);
    assert_eq!(&svc["spec"]["selector"], labels);
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(sp["name"], "metrics");
    assert_eq!(sp["port"], port);
    assert_eq!(sp["targetPort"], "metrics");

    let pdb = manifest("poddisruptionbudget.yaml");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}
