//! Revocation safety end to end, through the real `keywatch replay` on
//! generated traffic: shadow mode (the default) writes the would-be requests
//! to `revocations.shadow.jsonl` and sends none, byte-identical whatever the
//! batch size; a cap holds requests back and raises one `revocation_held`
//! alert for each.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use keywatch::generate::{GenerateConfig, Generation};
use serde_json::Value;

fn generate(dir: &Path) -> PathBuf {
    let config = GenerateConfig::new(60, 5, 5, "2026-01-05T00:00:00Z").unwrap();
    Generation::new(config).write_to(dir).unwrap();
    dir.join("events.jsonl")
}

/// The default model with `[policy]` lines replaced.
fn model_with(dir: &Path, name: &str, replacements: &[(&str, &str)]) -> PathBuf {
    let mut text = keywatch::model::DEFAULT_MODEL_TOML.to_string();
    for (from, to) in replacements {
        assert!(text.contains(from), "the default model has `{from}`");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn replay(dir: &Path, events: &Path, out: &Path, model: Option<&Path>, batch_size: &str) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keywatch"));
    command
        .arg("replay")
        .arg("--input")
        .arg(events)
        .arg("--geoip-city")
        .arg(dir.join("geoip-city.mmdb"))
        .arg("--geoip-asn")
        .arg(dir.join("geoip-asn.mmdb"))
        .arg("--out")
        .arg(out)
        .arg("--batch-size")
        .arg(batch_size)
        .arg("--no-progress");
    if let Some(model) = model {
        command.arg("--model").arg(model);
    }
    let output = command.output().expect("keywatch runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn ts_ms(value: &Value) -> i64 {
    keywatch::event::parse_ts(value["ts"].as_str().unwrap()).unwrap()
}

#[test]
fn shadow_mode_writes_the_would_be_requests_sends_none_and_is_byte_identical_across_batch_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path());
    let first = dir.path().join("first");
    replay(dir.path(), &events, &first, None, "4096");
    assert!(
        lines(&first.join("revocations.jsonl")).is_empty(),
        "shadow mode sends nothing"
    );
    let shadow = lines(&first.join("revocations.shadow.jsonl"));
    assert!(!shadow.is_empty(), "the generated attacks ask for revocations");
    for request in &shadow {
        assert!(request["idempotency_key"].as_str().unwrap().starts_with("rv_"));
        assert!(request["basis"].is_string(), "each says why it is strong evidence");
    }
    let summary: Value = serde_json::from_slice(&std::fs::read(first.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["revocations"], 0);
    assert_eq!(summary["revocations_shadow"], shadow.len());

    let again = dir.path().join("again");
    replay(dir.path(), &events, &again, None, "7");
    for file in ["revocations.jsonl", "revocations.shadow.jsonl", "alerts.jsonl"] {
        assert_eq!(
            std::fs::read(first.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap(),
            "{file} differs between batch sizes"
        );
    }
}

#[test]
fn a_cap_of_one_per_day_lets_one_request_through_per_day_and_raises_a_cap_alert_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path());
    let wide = [
        ("mode = \"shadow\"", "mode = \"enforce\""),
        (
            "max_requests = { count = 5, per = \"1h\" }",
            "max_requests = { count = 100000, per = \"1h\" }",
        ),
        (
            "max_requests_per_owner = { count = 2, per = \"1h\" }",
            "max_requests_per_owner = { count = 100000, per = \"1h\" }",
        ),
        ("cooldown = \"24h\"", "cooldown = \"1s\""),
    ];
    let uncapped_model = model_with(dir.path(), "uncapped.toml", &wide);
    let uncapped = dir.path().join("uncapped");
    replay(dir.path(), &events, &uncapped, Some(&uncapped_model), "4096");
    let candidates = lines(&uncapped.join("revocations.jsonl"));
    assert!(
        candidates.len() >= 2,
        "needs several candidates, got {}",
        candidates.len()
    );

    for (name, per) in [("day", "1d"), ("ever", "3650d")] {
        let mut capped = wide;
        capped[1].1 = if per == "1d" {
            "max_requests = { count = 1, per = \"1d\" }"
        } else {
            "max_requests = { count = 1, per = \"3650d\" }"
        };
        let model = model_with(dir.path(), &format!("{name}.toml"), &capped);
        let out = dir.path().join(name);
        replay(dir.path(), &events, &out, Some(&model), "4096");
        let sent = lines(&out.join("revocations.jsonl"));
        let held: Vec<Value> = lines(&out.join("alerts.jsonl"))
            .into_iter()
            .filter(|alert| alert["detector"] == "revocation_held")
            .collect();
        assert!(!sent.is_empty());
        if name == "ever" {
            assert_eq!(sent.len(), 1, "a cap of one in the window lets exactly one through");
        }
        for pair in sent.windows(2) {
            assert!(
                ts_ms(&pair[1]) - ts_ms(&pair[0]) >= 86_400_000,
                "two sent within one day"
            );
        }
        assert_eq!(
            sent.len() + held.len(),
            candidates.len(),
            "every other candidate is held, with an alert"
        );
        let held_keys: BTreeSet<&str> = held
            .iter()
            .map(|alert| {
                assert_eq!(alert["severity"], "high");
                assert_eq!(alert["evidence"]["reason"], "max_requests");
                assert_eq!(alert["evidence"]["count"], 1);
                alert["evidence"]["held_idempotency_key"].as_str().unwrap()
            })
            .collect();
        let sent_keys: BTreeSet<&str> = sent
            .iter()
            .map(|request| request["idempotency_key"].as_str().unwrap())
            .collect();
        let all: BTreeSet<&str> = candidates
            .iter()
            .map(|request| request["idempotency_key"].as_str().unwrap())
            .collect();
        assert!(held_keys.is_disjoint(&sent_keys));
        assert_eq!(
            held_keys.union(&sent_keys).copied().collect::<BTreeSet<_>>(),
            all,
            "held and sent are the candidates"
        );
    }
}
