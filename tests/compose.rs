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
        "nats",
        "privacy-router-auth-nats",
    ] {
        assert!(names.contains(&s), "service {s} missing: {names:?}");
    }
    // The ports the README promises.
    assert_eq!(published(&services["kafka"]), [29092]);
    assert_eq!(published(&services["schema-registry"]), [8081]);
    assert_eq!(published(&services["privacy-router"]), [9464]);
    assert_eq!(published(&services["prometheus"]), [9090]);
    assert_eq!(published(&services["nats"]), [4222, 8222]);
    assert_eq!(published(&services["privacy-router-auth-nats"]), [9465]);

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

    // NATS with JetStream, its store in a volume, monitoring on 8222 (the
    // healthcheck asks it whether JetStream is enabled).
    let n = &services["nats"];
    let args: Vec<&str> = n["command"]
        .as_array()
        .expect("nats command is a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"-js"), "JetStream enabled: {args:?}");
    let store = args
        .iter()
        .position(|a| *a == "-sd" || *a == "--store_dir")
        .map(|i| args[i + 1])
        .expect("a JetStream store directory");
    assert!(
        n["volumes"].to_string().contains(&format!(":{store}")),
        "the store {store} is a volume: {}",
        n["volumes"]
    );
    assert!(args.windows(2).any(|w| w == ["-m", "8222"]), "{args:?}");
    assert!(n["healthcheck"]["test"]
        .to_string()
        .contains("8222/healthz"));

    // The second processor: the same image, the NATS topology, --nats-url
    // pointing at the nats service, its own instance id and metrics port,
    // started once Kafka's topics, the registry and NATS are there.
    let q = &services["privacy-router-auth-nats"];
    assert_eq!(q["image"], p["image"], "the same image as privacy-router");
    assert!(q["build"]["context"].as_str().is_some());
    let cmd: Vec<&str> = q["command"]
        .as_array()
        .expect("command is a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(cmd[0], "run");
    let topology = cmd
        .windows(2)
        .find(|w| w[0] == "--topology")
        .map(|w| w[1])
        .expect("--topology");
    assert!(
        topology.ends_with("topology/auth-identity-nats.yaml"),
        "{topology}"
    );
    assert!(
        cmd.windows(2)
            .any(|w| w == ["--nats-url", "nats://nats:4222"]),
        "{cmd:?}"
    );
    let qe = &q["environment"];
    assert_eq!(qe["PRIVACY_ROUTER_BROKERS"], "kafka:9092");
    // The auth service registers no schemas: the file registry over the
    // image's copy of its folder serves them.
    assert!(qe.get("PRIVACY_ROUTER_REGISTRY_URL").is_none(), "{qe}");
    assert_eq!(
        qe["PRIVACY_ROUTER_SCHEMAS"],
        "/etc/privacy-router/avro/producers/auth-identity"
    );
    assert!(std::path::Path::new("avro/producers/auth-identity").is_dir());
    assert_eq!(qe["PRIVACY_ROUTER_METRICS_ADDR"], "0.0.0.0:9465");
    assert_eq!(qe["PRIVACY_ROUTER_HASH_KEY"], "compose-test-key-0123456789");
    assert_ne!(
        qe["PRIVACY_ROUTER_INSTANCE_ID"], e["PRIVACY_ROUTER_INSTANCE_ID"],
        "each processor has its own instance id"
    );
    assert!(q["healthcheck"]["test"]
        .to_string()
        .contains(":9465/readyz"));
    for (dep, cond) in [
        ("kafka-init", "service_completed_successfully"),
        ("nats", "service_healthy"),
    ] {
        assert_eq!(q["depends_on"][dep]["condition"], cond, "depends on {dep}");
    }

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
