//! A short `keywatch demo` end to end: generated traffic through the
//! in-process Kafka and the real pipeline. Checks that every produced record
//! was processed, that alerts reached the alerts topic, and that the demo's
//! scorecard is what `keywatch eval` computes on the files it wrote.

use std::process::Command;

use keywatch::demo::{DemoArgs, run_demo};
use serde_json::Value;

#[test]
fn a_short_demo_runs_end_to_end_and_scores_like_eval() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let args = DemoArgs {
        keys: 60,
        days: 6,
        speed: 1e9,
        seed: 3,
        out: out.clone(),
        plain: true,
    };
    let report = run_demo(&args).expect("the demo runs");

    assert!(report.events > 10_000, "{} events", report.events);
    assert_eq!(
        report.processed_records, report.produced,
        "every produced record was consumed"
    );
    assert_eq!(report.processed_events + report.dead_letters, report.produced);
    assert_eq!(
        report.dead_letters, report.malformed,
        "malformed records went to the dead-letter topic"
    );
    assert!(report.alerts_on_topic > 0, "alerts reached the alerts topic");
    assert!(report.scorecard.incidents >= 8);
    assert!(report.scorecard.detected > 0);

    let eval = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(["eval", "--json", "--alerts"])
        .arg(out.join("alerts.jsonl"))
        .arg("--labels")
        .arg(out.join("labels.jsonl"))
        .output()
        .expect("eval runs");
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let from_eval: Value = serde_json::from_slice(&eval.stdout).expect("eval prints json");
    let from_demo = serde_json::to_value(&report.scorecard).unwrap();
    for field in [
        "recall",
        "precision",
        "false_alerts_per_1k_judged_key_days",
        "median_time_to_detect_s",
        "p95_time_to_detect_s",
        "scenarios",
    ] {
        assert_eq!(from_eval[field], from_demo[field], "{field}");
    }
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out.join("scorecard.json")).unwrap()).unwrap();
    assert_eq!(written, from_demo);
}
