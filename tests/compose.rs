//! `docker-compose.yml` cannot run here (no Docker engine), so it is checked
//! the way `docker compose` itself reads it: `docker-compose config` (the
//! test script installs Debian's `docker-compose`) must accept it, and the
//! normalised file must have the services, ports and settings the README
//! promises.

use std::process::Command;

use serde_json::Value;

fn config(hash_key: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("docker-compose");
    cmd.args(["-f", "docker-compose.yml", "config"]);
    cmd.env_remove("PRIVACY_ROUTER_HASH_KEY");
    if let Some(k) = hash_key {
        cmd.env("PRIVACY_ROUTER_HASH_KEY", k);
    }
    cmd.output().expect(
        "docker-compose is not installed: run the tests with `bash scripts/test.sh`, which installs it",
    )
}

fn published(service: &Value) -> Vec<u64> {
    service["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| match p {
                    Value::Object(o) => o.get("published").and_then(|v| {
                        v.as_u64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    }),
                    Value::String(s) => s.split(':').next().and_then(|x| x.parse().ok()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_file_parses_and_wires_the_stack() {
    let out = config(Some("compose-test-key-0123456789"));
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_saphyr::from_slice(&out.stdout).expect("normalised YAML");
    let services = doc["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for s in [
        "kafka",
        "kafka-init",
        "schema-registry",
        "privacy-router",
        "prometheus",
    ] {
        assert!(names.contains(&s), "service {s} missing: {names:?}");
    }
    // The ports the README promises.
    assert_eq!(published(&services["kafka"]), [29092]);
    assert_eq!(published(&services["schema-registry"]), [8081]);
    assert_eq!(published(&services["privacy-router"]), [9464]);
    assert_eq!(published(&services["prometheus"]), [9090]);

    // Kafka in KRaft mode, one node, with the transaction log settings one
    // node needs for exactly-once.
    let k = &services["kafka"]["environment"];
    assert_eq!(k["KAFKA_PROCESS_ROLES"], "broker,controller");
    for key in [
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    ] {
        assert_eq!(
            k[key].as_str().or(k[key].as_u64().map(|_| "1")),
            Some("1"),
            "{key}"
        );
    }

    // Topics: tiers, dead letters and the compacted, co-partitioned changelog.
    let init = services["kafka-init"]["command"].to_string();
    for t in [
        "events.raw",
        "events.public",
        "events.internal",
        "events.restricted",
        "events.dlq",
    ] {
        assert!(
            init.contains(&format!("--topic {t} ")),
            "kafka-init does not create {t}"
        );
    }
    assert!(
        init.contains("privacy-router-entity-versions-changelog --partitions 6 --config cleanup.policy=compact"),
        "the changelog is compacted and has the input's partitions: {init}"
    );
    assert!(init.contains("events.raw --partitions 6"));

    // The processor: built from the repository, wired to Kafka and the
    // registry, metrics on 9464, the key from the environment.
    let p = &services["privacy-router"];
    assert!(
        p["build"]["context"].as_str().is_some(),
        "built from the Dockerfile"
    );
    let e = &p["environment"];
    assert_eq!(e["PRIVACY_ROUTER_BROKERS"], "kafka:9092");
    assert_eq!(
        e["PRIVACY_ROUTER_REGISTRY_URL"],
        "http://schema-registry:8081"
    );
    assert_eq!(e["PRIVACY_ROUTER_METRICS_ADDR"], "0.0.0.0:9464");
    assert_eq!(e["PRIVACY_ROUTER_HASH_KEY"], "compose-test-key-0123456789");
    assert_eq!(p["command"][0], "run");
    assert_eq!(
        p["depends_on"]["kafka-init"]["condition"],
        "service_completed_successfully"
    );

    // Prometheus scrapes the processor.
    let prom = std::fs::read_to_string("deploy/prometheus.yml").unwrap();
    assert!(prom.contains("privacy-router:9464"));
    assert!(services["prometheus"]["volumes"]
        .to_string()
        .contains("prometheus.yml"));
    assert!(std::path::Path::new("Dockerfile").exists());
}

#[test]
fn compose_refuses_to_start_without_the_hash_key() {
    let out = config(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PRIVACY_ROUTER_HASH_KEY"));
}
