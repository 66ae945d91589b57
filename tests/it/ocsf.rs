//! OCSF output end to end: `keywatch replay --alert-format` on generated
//! traffic writes one OCSF Detection Finding per native alert, each valid
//! against `schemas/ocsf-detection-finding.schema.json`, byte-identical
//! across runs, with no raw key; `ocsf` alone writes no native alert line;
//! and `run` with `alert_format = "both"` produces every alert to both
//! topics on the mock cluster. Also holds the SOC runbook to the detector
//! registry.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use keywatch::generate::{GenerateConfig, Generation};
use keywatch::ocsf::AlertFormat;
use serde_json::Value;

use crate::kafka_support::*;

fn ocsf_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/ocsf-detection-finding.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("a valid schema")
}

fn assert_valid(validator: &jsonschema::Validator, finding: &Value) {
    let errors: Vec<String> = validator.iter_errors(finding).map(|err| err.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?} in {finding}");
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .lines()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
}

fn replay(run: &Path, out: &Path, format: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(["replay", "--no-progress", "--unkeyed-fingerprints", "--input"])
        .arg(run.join("events.jsonl"))
        .arg("--geoip-city")
        .arg(run.join("geoip-city.mmdb"))
        .arg("--geoip-asn")
        .arg(run.join("geoip-asn.mmdb"))
        .arg("--out")
        .arg(out)
        .args(["--alert-format", format])
        .output()
        .expect("keywatch runs");
    assert!(
        output.status.success(),
        "replay --alert-format {format}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn severity_id(severity: &str) -> u64 {
    match severity {
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        other => panic!("unknown severity {other}"),
    }
}

#[test]
fn replay_writes_one_valid_ocsf_finding_per_alert_and_the_same_bytes_every_time() {
    let run = tempfile::tempdir().unwrap();
    let config = GenerateConfig::new(80, 8, 5, "2026-01-05T00:00:00Z").unwrap();
    Generation::new(config).write_to(run.path()).unwrap();
    let both = run.path().join("both");
    replay(run.path(), &both, "both");

    let native = lines(&both.join("alerts.jsonl"));
    let findings = lines(&both.join("alerts.ocsf.jsonl"));
    assert!(native.len() >= 10, "the generated run raises alerts: {}", native.len());
    let detectors: BTreeSet<&str> = native.iter().map(|alert| alert["detector"].as_str().unwrap()).collect();
    assert!(detectors.len() >= 4, "several detectors are mapped: {detectors:?}");
    assert_eq!(findings.len(), native.len(), "one finding per alert");
    let validator = ocsf_validator();
    for (alert, finding) in native.iter().zip(&findings) {
        assert_valid(&validator, finding);
        assert_eq!(finding["finding_info"]["uid"], alert["id"], "1:1 by id, in order");
        assert_eq!(finding["metadata"]["correlation_uid"], alert["incident_id"]);
        assert_eq!(finding["finding_info"]["analytic"]["name"], alert["detector"]);
        assert_eq!(finding["resources"][0]["uid"], alert["key_fingerprint"]);
        assert_eq!(finding["resources"][0]["name"], alert["key_hint"]);
        assert_eq!(
            finding["severity_id"].as_u64(),
            Some(severity_id(alert["severity"].as_str().unwrap()))
        );
        // A first revision is a Create, a later one an Update.
        let type_uid = if alert["revision"].as_u64() == Some(1) {
            200401
        } else {
            200402
        };
        assert_eq!(
            (finding["class_uid"].as_u64(), finding["type_uid"].as_u64()),
            (Some(2004), Some(type_uid))
        );
        assert_eq!(finding["unmapped"]["evidence"], alert["evidence"]);
        assert_eq!(
            finding["time"].as_i64(),
            keywatch::event::parse_ts(alert["ts"].as_str().unwrap())
        );
    }
    let ocsf_text = std::fs::read_to_string(both.join("alerts.ocsf.jsonl")).unwrap();
    let raw_keys: BTreeSet<String> = std::fs::read_to_string(run.path().join("events.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| event["key_id"].as_str().map(str::to_string))
        .collect();
    assert!(!raw_keys.is_empty());
    for key in &raw_keys {
        assert!(
            !ocsf_text.contains(key.as_str()),
            "a raw key id reached the OCSF output"
        );
    }

    // Byte-identical again; `ocsf` alone writes the same findings and no
    // native line; `native` writes the same native alerts and no OCSF file.
    let again = run.path().join("again");
    replay(run.path(), &again, "both");
    let only_ocsf = run.path().join("ocsf");
    replay(run.path(), &only_ocsf, "ocsf");
    let only_native = run.path().join("native");
    replay(run.path(), &only_native, "native");
    let read = |dir: &Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    assert_eq!(read(&both, "alerts.ocsf.jsonl"), read(&again, "alerts.ocsf.jsonl"));
    assert_eq!(read(&both, "alerts.jsonl"), read(&again, "alerts.jsonl"));
    assert_eq!(read(&both, "alerts.ocsf.jsonl"), read(&only_ocsf, "alerts.ocsf.jsonl"));
    assert!(
        read(&only_ocsf, "alerts.jsonl").is_empty(),
        "ocsf alone writes no native alert"
    );
    assert_eq!(read(&both, "alerts.jsonl"), read(&only_native, "alerts.jsonl"));
    assert!(!only_native.join("alerts.ocsf.jsonl").exists());
    for name in ["revocations.jsonl", "digests.jsonl", "summary.json"] {
        assert_eq!(
            read(&only_native, name),
            read(&only_ocsf, name),
            "{name} does not depend on the format"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_both_formats_produces_every_alert_to_both_topics() {
    let brokers = Brokers::mock();
    let bootstrap = brokers.bootstrap_servers();
    let (mut config, input) = brokers.prepare("ocsf", true).await;
    let ocsf_topic = "ocsf-alerts-ocsf".to_string();
    {
        let kafka = kafka_of_mut(&mut config);
        kafka.alert_format = AlertFormat::Both;
        kafka.ocsf_alerts_topic = ocsf_topic.clone();
    }
    if let Brokers::Mock(cluster) = &brokers {
        cluster.create_topic(&ocsf_topic, PARTITIONS, 1).expect("topic");
    }
    let records = travel_scenario(6, 10, 0);
    let landed = produce(&bootstrap, &input, &records, Placement::KeyedByKeyId).await;
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 3, "the travelling keys are flagged: {expected:?}");

    let pipeline = RunningPipeline::start(&config);
    let ends = end_offsets(&bootstrap, &input);
    wait_caught_up(&[&pipeline.progress], "keyed", &input, &ends, brokers.catch_up()).await;
    pipeline.stop().await;

    let native = read_alerts(&bootstrap, &kafka_of(&config).alerts_topic);
    let native_ids: BTreeSet<String> = native.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(native_ids, expected);
    let validator = ocsf_validator();
    let mut ocsf_ids = BTreeSet::new();
    for message in read_topic(&bootstrap, &ocsf_topic) {
        let finding: Value = serde_json::from_slice(&message.payload).expect("JSON");
        assert_valid(&validator, &finding);
        let id = finding["finding_info"]["uid"].as_str().unwrap().to_string();
        assert_eq!(message.headers["id"], id);
        assert_eq!(
            message.key.as_deref(),
            finding["resources"][0]["uid"].as_str(),
            "keyed by fingerprint"
        );
        ocsf_ids.insert(id);
    }
    assert_eq!(ocsf_ids, native_ids, "the same alerts in both formats");
}

#[test]
fn the_runbook_has_a_section_for_exactly_the_registered_detectors() {
    let runbook = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/RUNBOOK.md")).unwrap();
    let sections: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("### `")?.strip_suffix('`'))
        .collect();
    let registry: BTreeSet<&str> = keywatch::detector::Detector::ALL
        .iter()
        .map(|detector| detector.as_str())
        .collect();
    assert_eq!(sections, registry, "docs/RUNBOOK.md detector sections");
    assert!(
        runbook.contains("(REVOCATION.md)"),
        "the runbook links the revocation service's"
    );
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(readme.contains("(docs/RUNBOOK.md)"), "the README links the runbook");
}
