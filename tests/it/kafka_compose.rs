//! docker-compose.yml and the Dockerfile, checked without Docker: the
//! services are there and wired in order, the configuration the keywatch
//! container mounts parses, and the topics the `topics` service creates are
//! the ones that configuration names, compacted where they must be.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keywatch::config::Config;
use serde_norway::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_norway::from_str(&text).expect("valid YAML")
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn words(value: &Value) -> BTreeSet<String> {
    text(value).split_whitespace().map(str::to_string).collect()
}

/// The host file mounted at `target` in a service.
fn mounted(service: &Value, target: &str) -> PathBuf {
    let volumes = service["volumes"].as_sequence().expect("volumes");
    let volume = volumes
        .iter()
        .map(text)
        .find(|volume| volume.split(':').nth(1) == Some(target))
        .unwrap_or_else(|| panic!("nothing mounted at {target}"));
    repo().join(volume.split(':').next().unwrap())
}

#[test]
fn compose_runs_keywatch_against_a_single_kraft_kafka() {
    let compose = compose();
    let services = &compose["services"];
    for name in ["kafka", "topics", "keywatch"] {
        assert!(services.get(name).is_some(), "service {name}");
    }
    let kafka = &services["kafka"];
    assert!(
        text(&kafka["image"]).starts_with("apache/kafka:"),
        "the apache/kafka image"
    );
    let environment = &kafka["environment"];
    assert!(
        text(&environment["KAFKA_PROCESS_ROLES"]).contains("controller"),
        "KRaft, no ZooKeeper"
    );
    assert_eq!(text(&environment["KAFKA_NODE_ID"]), "1");
    assert!(kafka.get("healthcheck").is_some(), "others wait for a healthy broker");

    let topics = &services["topics"];
    assert_eq!(text(&topics["depends_on"]["kafka"]["condition"]), "service_healthy");
    let keywatch = &services["keywatch"];
    assert_eq!(
        text(&keywatch["depends_on"]["topics"]["condition"]),
        "service_completed_successfully"
    );
    assert_eq!(text(&keywatch["build"]["dockerfile"]), "Dockerfile");
    let command: Vec<String> = keywatch["command"].as_sequence().unwrap().iter().map(text).collect();
    assert_eq!(command, ["run", "--config", "/etc/keywatch/keywatch.toml"]);
}

#[test]
fn the_mounted_config_parses_and_names_the_created_topics() {
    let compose = compose();
    let services = &compose["services"];
    let config_path = mounted(&services["keywatch"], "/etc/keywatch/keywatch.toml");
    let config = Config::load(&config_path).expect("the mounted config is valid");
    let kafka = config.kafka.expect("a [kafka] section");

    let advertised = text(&services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]);
    let broker = advertised.trim_start_matches("PLAINTEXT://");
    assert_eq!(kafka.brokers, broker, "keywatch connects where Kafka advertises itself");

    let environment = &services["topics"]["environment"];
    let created = words(&environment["TOPICS"]);
    let compacted = words(&environment["COMPACTED_TOPICS"]);
    assert_eq!(text(&environment["BOOTSTRAP"]), kafka.brokers);
    let mut needed: BTreeSet<String> = kafka.input_topics.iter().cloned().collect();
    needed.extend([
        kafka.alerts_topic.clone(),
        kafka.revocations_topic.clone(),
        kafka.digests_topic.clone(),
        kafka.source_topic.clone(),
        kafka.dead_letter_topic.clone(),
    ]);
    if !kafka.input_keyed_by_key_id {
        needed.insert(kafka.repartition_topic.clone());
    }
    needed.extend(kafka.replay_topic.clone());
    for topic in &needed {
        assert!(created.contains(topic), "{topic} is created");
    }
    assert_eq!(
        compacted,
        BTreeSet::from([kafka.changelog_topic.clone()]),
        "the changelog, and only it, is compacted"
    );
    let unused: Vec<&String> = created.difference(&needed).collect();
    assert!(unused.is_empty(), "topics created for nothing: {unused:?}");
}

#[test]
fn the_dockerfile_copies_what_the_build_needs() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let dockerignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = dockerignore.lines().map(str::trim).collect();
    for line in dockerfile
        .lines()
        .filter(|line| line.starts_with("COPY ") && !line.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(Path::new(&repo().join(source)).exists(), "COPY source {source} exists");
            assert!(
                !ignored.contains(source),
                "COPY source {source} is not in .dockerignore"
            );
        }
    }
    // include_str! and [[bench]] targets must be in the build context.
    for needed in ["src", "models", "benches", "Cargo.lock"] {
        assert!(dockerfile.contains(&format!("COPY {needed}")) || dockerfile.contains(&format!(" {needed} ")));
    }
    assert!(
        dockerfile.contains("--locked"),
        "the image builds the locked dependency versions"
    );
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/keywatch\"]"));
}

#[test]
fn the_image_copies_the_binary_its_build_step_made_with_a_profile_cargo_toml_defines() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let build = dockerfile
        .lines()
        .find(|line| line.starts_with("RUN cargo build"))
        .expect("a cargo build step");
    let words: Vec<&str> = build.split_whitespace().collect();
    let profile = match words.iter().position(|word| *word == "--profile") {
        Some(at) => words[at + 1],
        None if words.contains(&"--release") => "release",
        None => "dev",
    };
    let target_dir = if profile == "dev" { "debug" } else { profile };
    assert!(
        dockerfile.contains(&format!("COPY --from=build /src/target/{target_dir}/keywatch ")),
        "the image copies target/{target_dir}/keywatch, which `{build}` makes"
    );
    if !["dev", "release"].contains(&profile) {
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
        assert!(
            manifest["profile"].get(profile).is_some(),
            "Cargo.toml defines the profile {profile}"
        );
    }
}

#[test]
fn the_metrics_port_is_published() {
    let compose = compose();
    let keywatch = &compose["services"]["keywatch"];
    let config = Config::load(&mounted(keywatch, "/etc/keywatch/keywatch.toml")).unwrap();
    let listen = config
        .kafka
        .unwrap()
        .metrics_listen
        .expect("metrics enabled in the compose config");
    let ports: Vec<String> = keywatch["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(text)
        .collect();
    assert!(
        ports.iter().any(|port| port.ends_with(&format!(":{}", listen.port()))),
        "{ports:?} publishes {listen}"
    );
}
