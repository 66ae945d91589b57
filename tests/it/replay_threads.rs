//! `keywatch replay --threads N` through the real binary: generated traffic
//! with attacks (a spray of guessed keys, stolen keys, digests of low
//! findings), made messy (events out of order, late events, events dated
//! far ahead, bad records), with revocations in enforce mode under a cap,
//! analysts' feedback and an owners file, and user agents whose family
//! trimming would change, replayed as one file and as three files merged by
//! time, gives byte for byte the same outputs and summary at 1, 2, 3 and 7
//! threads and at batch sizes from 1 to 4096 (the rejected output too: its
//! bad records and quarantined events interleave in one order).

use std::path::{Path, PathBuf};
use std::process::Command;

use keywatch::generate::{GenerateConfig, Generation};
use serde_json::Value;

/// Files a replay writes, all compared.
const OUTPUTS: [&str; 7] = [
    "alerts.jsonl",
    "revocations.jsonl",
    "revocations.shadow.jsonl",
    "digests.jsonl",
    "rejected.jsonl",
    "feedback.jsonl",
    "summary.json",
];

/// Generated traffic (with its GeoIP databases and owners file in `dir`),
/// made messy: returns the lines.
fn messy_lines(dir: &Path) -> Vec<String> {
    let generation = Generation::new(GenerateConfig::new(60, 5, 11, "2026-01-05T00:00:00Z").unwrap());
    generation.write_to(dir).unwrap();
    generation.write_owners(dir).unwrap();
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Neighbours swapped: out of order within the reorder bound.
    for index in (3..lines.len() - 1).step_by(7) {
        lines.swap(index, index + 1);
    }
    // Every 4000th event arrives 3000 events later: behind the watermark.
    let mut index = 1000;
    while index + 3000 < lines.len() {
        let late = lines.remove(index);
        lines.insert(index + 3000, late);
        index += 4000;
    }
    // Some user agents whose family ends in a non-ASCII space (`edge\u2003`
    // before its version): a family that trimming the family again would
    // change, so the texts the decoders resolve must be taken as they are.
    for line in lines.iter_mut().skip(11).step_by(97) {
        *line = line.replacen(r#""user_agent":""#, r#""user_agent":"edge\u2003/"#, 1);
    }
    // Events dated far ahead of the input (quarantined) and bad records.
    let far = r#"{"ts":"2099-01-01T00:00:00Z","key_id":"AKIAFARAHEADKEY00001","ip":"192.0.2.7","method":"GET","endpoint":"/v1/orders","status":200,"user_agent":"x","bytes_out":1}"#;
    for (at, line) in [
        (500, far.to_string()),
        (900, "{not json".to_string()),
        (
            1500,
            r#"{"ts":"2026-01-05T10:00:00Z","ip":"192.0.2.1","method":"GET","endpoint":"/","status":200}"#.into(),
        ),
        (2500, far.replace("00001", "00002")),
        (7000, r#"{"ts":"yesterday","key_id":"AKIABADTIMEKEY000001"}"#.into()),
    ] {
        let at = at.min(lines.len());
        lines.insert(at, line);
    }
    lines
}

/// The default model in enforce mode with a cap of one request a day over
/// all keys, so the gate holds candidates back.
fn capped_model(dir: &Path) -> PathBuf {
    let mut text = keywatch::model::DEFAULT_MODEL_TOML.to_string();
    for (from, to) in [
        ("mode = \"shadow\"", "mode = \"enforce\""),
        (
            "max_requests = { count = 5, per = \"1h\" }",
            "max_requests = { count = 2, per = \"1d\" }",
        ),
    ] {
        assert!(text.contains(from), "the default model has `{from}`");
        text = text.replace(from, to);
    }
    let path = dir.join("capped.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn replay(dir: &Path, inputs: &[PathBuf], out: &Path, threads: usize, batch_size: usize, feedback: Option<&Path>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keywatch"));
    command.arg("replay").arg("--input").args(inputs);
    command
        .arg("--geoip-city")
        .arg(dir.join("geoip-city.mmdb"))
        .arg("--geoip-asn")
        .arg(dir.join("geoip-asn.mmdb"))
        .arg("--model")
        .arg(dir.join("capped.toml"))
        .arg("--owners")
        .arg(dir.join("owners.csv"))
        .arg("--out")
        .arg(out)
        .arg("--batch-size")
        .arg(batch_size.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--no-progress");
    if let Some(feedback) = feedback {
        command.arg("--feedback").arg(feedback);
    }
    let output = command.output().expect("keywatch runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Feedback on the first alerts of a run: two false positives, one
/// confirmation, and an entry for an alert id no key holds.
fn write_feedback(dir: &Path, alerts: &[Value]) -> PathBuf {
    let mut entries = Vec::new();
    for (alert, verdict) in alerts.iter().zip(["false_positive", "confirmed", "false_positive"]) {
        let at = keywatch::event::parse_ts(alert["window"]["end"].as_str().or(alert["ts"].as_str()).unwrap_or(""))
            .unwrap_or(1_767_571_200_000)
            + 600_000;
        entries.push(serde_json::json!({
            "alert_id": alert["id"],
            "verdict": verdict,
            "analyst": "a.analyst",
            "at": keywatch::event::format_ts(at),
        }));
    }
    entries.push(serde_json::json!({
        "alert_id": "al_00000000000000000000000000000000",
        "verdict": "false_positive",
        "at": "2026-01-08T00:00:00Z",
    }));
    let text: Vec<String> = entries.iter().map(Value::to_string).collect();
    let path = dir.join("feedback.jsonl");
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

fn assert_same_outputs(reference: &Path, other: &Path, what: &str) {
    for file in OUTPUTS {
        let expected = std::fs::read(reference.join(file)).unwrap_or_default();
        let got = std::fs::read(other.join(file)).unwrap_or_default();
        assert!(expected == got, "{file} differs: {what}");
    }
}

#[test]
fn replay_at_any_thread_count_and_batch_size_is_byte_identical_to_one_thread_for_one_file_and_merged_files() {
    let dir = tempfile::tempdir().unwrap();
    let lines = messy_lines(dir.path());
    capped_model(dir.path());
    let whole = dir.path().join("messy.jsonl");
    std::fs::write(&whole, lines.join("\n") + "\n").unwrap();
    // Three files, each line going to one by turns: merged by time they
    // give back one stream.
    let mut parts = Vec::new();
    for part in 0..3 {
        let text: Vec<&str> = lines.iter().skip(part).step_by(3).map(String::as_str).collect();
        let path = dir.path().join(format!("part-{part}.jsonl"));
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        parts.push(path);
    }

    // A first run without feedback names alerts for the feedback file.
    let plain = dir.path().join("plain");
    replay(dir.path(), std::slice::from_ref(&whole), &plain, 1, 700, None);
    let alerts = lines_of(&plain.join("alerts.jsonl"));
    let feedback = write_feedback(dir.path(), &alerts);

    for (inputs, name) in [(vec![whole.clone()], "one file"), (parts.clone(), "three files")] {
        let reference = dir.path().join(format!("{name}-1"));
        replay(dir.path(), &inputs, &reference, 1, 700, Some(&feedback));

        // What the scenario must exercise, or the comparison proves little.
        let alerts = lines_of(&reference.join("alerts.jsonl"));
        let detectors: Vec<&str> = alerts.iter().filter_map(|alert| alert["detector"].as_str()).collect();
        for detector in ["source_spray", "revocation_held", "impossible_travel"] {
            assert!(detectors.contains(&detector), "{name}: no {detector} in {detectors:?}");
        }
        assert!(
            !lines_of(&reference.join("revocations.jsonl")).is_empty(),
            "{name}: no revocation"
        );
        assert!(
            !lines_of(&reference.join("digests.jsonl")).is_empty(),
            "{name}: no digest"
        );
        let audit = lines_of(&reference.join("feedback.jsonl"));
        assert!(audit.len() >= 4, "{name}: feedback audit {audit:?}");
        let rejected = std::fs::read_to_string(reference.join("rejected.jsonl")).unwrap();
        assert!(
            rejected.contains("malformed_json"),
            "{name}: no malformed_json rejection"
        );
        assert!(rejected.contains("future_event"), "{name}: no future_event rejection");
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(reference.join("summary.json")).unwrap()).unwrap();
        assert!(summary["late_events"].as_u64().unwrap_or(0) > 0, "{name}: {summary}");
        assert!(summary["skipped_no_key"].as_u64().unwrap_or(0) > 0, "{name}: {summary}");

        for (threads, batch_size) in [(2, 700), (3, 700), (7, 700), (1, 1), (2, 3), (3, 4096)] {
            let out = dir.path().join(format!("{name}-{threads}-{batch_size}"));
            replay(dir.path(), &inputs, &out, threads, batch_size, Some(&feedback));
            assert_same_outputs(
                &reference,
                &out,
                &format!("{name} at {threads} threads, batches of {batch_size}"),
            );
        }
    }
}

#[test]
fn zero_threads_is_refused_with_a_message_naming_the_option() {
    let output = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args([
            "replay",
            "--input",
            "/nonexistent.jsonl",
            "--out",
            "/tmp/never",
            "--threads",
            "0",
        ])
        .output()
        .expect("keywatch runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");
}
