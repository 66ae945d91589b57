//! End to end: `keywatch replay` on files, through the real binary. Checks
//! the outputs against the JSON schemas, that bad records are rejected with
//! their reason and line while the records around them are processed, that
//! two runs are byte-identical whatever the batch size, and that start-up
//! problems name the file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use keywatch::enrich::test_world;
use serde_json::Value;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

/// The places the scenario uses, by their names in the test world.
const PLACES: [&str; 3] = ["london", "saopaulo", "virginia_aws"];

fn host(place: usize, index: u32) -> IpAddr {
    test_world::host(PLACES[place], index).expect("a place of the test world")
}

fn write_geoip(dir: &Path) -> (PathBuf, PathBuf) {
    let (city_db, asn_db) = test_world::place_databases(test_world::PLACES).unwrap();
    let city = dir.join("city.mmdb");
    let asn = dir.join("asn.mmdb");
    std::fs::write(&city, city_db).unwrap();
    std::fs::write(&asn, asn_db).unwrap();
    (city, asn)
}

fn line(ts: i64, key: &str, ip: IpAddr, endpoint: &str, status: u16) -> String {
    serde_json::json!({
        "ts": keywatch::event::format_ts(ts),
        "key_id": key,
        "ip": ip.to_string(),
        "method": "GET",
        "endpoint": endpoint,
        "status": status,
        "user_agent": "acme-sdk/1.2.0",
        "bytes_out": 900,
    })
    .to_string()
}

/// Three keys with six days of history, then: key 0 is used from Sao Paulo
/// minutes after London; key 1 scrapes; key 2 probes an admin endpoint. Bad
/// lines are mixed in. Returns the file and the number of valid events.
fn write_events(dir: &Path) -> (PathBuf, usize) {
    let mut lines: Vec<(i64, String)> = Vec::new();
    let keys = ["AKIAREPLAYTEST000000", "AKIAREPLAYTEST000001", "AKIAREPLAYTEST000002"];
    for day in 0..6 {
        for hour in 7..21 {
            for slot in 0..10 {
                let ts = T0 + day * DAY + hour * HOUR + slot * 360_000;
                lines.push((ts, line(ts, keys[0], host(0, slot as u32), "/v1/orders", 200)));
                lines.push((ts + 1, line(ts + 1, keys[1], host(0, 5), "/v1/items/123", 200)));
                lines.push((ts + 2, line(ts + 2, keys[2], host(2, 9), "/v1/reports", 200)));
            }
        }
    }
    let twist = T0 + 6 * DAY + 9 * HOUR;
    lines.push((
        twist - 300_000,
        line(twist - 300_000, keys[0], host(0, 1), "/v1/orders", 200),
    ));
    lines.push((twist, line(twist, keys[0], host(1, 1), "/v1/orders", 200)));
    for call in 0..400 {
        let ts = twist + call * 300;
        lines.push((ts, line(ts, keys[1], host(0, 5), "/v1/items/777", 200)));
    }
    lines.push((
        twist + 5000,
        line(twist + 5000, keys[2], host(2, 9), "/v1/admin/api-keys", 403),
    ));
    lines.sort_by_key(|(ts, _)| *ts);
    let valid = lines.len();
    let mut text: Vec<String> = lines.into_iter().map(|(_, text)| text).collect();
    text.insert(10, "{not json".into());
    text.insert(
        20,
        line(T0, keys[0], host(0, 1), "/v1/orders", 200).replace(&host(0, 1).to_string(), "999.1.1.1"),
    );
    text.insert(30, r#"{"ts":"2026-13-45T00:00:00Z","key_id":"AKIAREPLAYTEST000000","ip":"25.10.1.1","method":"GET","endpoint":"/","status":200,"user_agent":"x","bytes_out":1}"#.into());
    text.insert(40, r#"{"ts":"2026-01-05T10:00:00Z","ip":"25.10.1.1","method":"GET","endpoint":"/","status":200,"user_agent":"x","bytes_out":1}"#.into());
    text.insert(50, format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20)));
    let path = dir.join("events.jsonl");
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    (path, valid)
}

fn keywatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(args)
        .output()
        .expect("keywatch runs")
}

fn replay(events: &Path, geo: &(PathBuf, PathBuf), out: &Path, batch_size: &str) -> std::process::Output {
    keywatch(&[
        "replay",
        "--input",
        events.to_str().unwrap(),
        "--geoip-city",
        geo.0.to_str().unwrap(),
        "--geoip-asn",
        geo.1.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        batch_size,
    ])
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
}

fn validator(name: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").join(name)).unwrap(),
    )
    .unwrap();
    jsonschema::validator_for(&schema).expect("valid schema")
}

#[test]
fn replay_detects_rejects_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let geo = write_geoip(dir.path());
    let (events, valid) = write_events(dir.path());

    let first = dir.path().join("first");
    let run = replay(&events, &geo, &first, "4096");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("rejected") && stdout.contains("alerts"), "{stdout}");

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(first.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["events"].as_u64().unwrap() as usize,
        valid,
        "every valid record around the bad ones is processed"
    );
    assert_eq!(summary["rejected"], 4);
    assert_eq!(summary["skipped_no_key"], 1);

    let rejected = read_lines(&first.join("rejected.jsonl"));
    let reasons: Vec<&str> = rejected
        .iter()
        .map(|entry| entry["reason_kind"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["malformed_json", "bad_ip", "bad_timestamp", "oversized"]);
    assert_eq!(rejected[0]["source"]["line"], 11);
    assert!(
        rejected[0]["source"]["file"]
            .as_str()
            .unwrap()
            .ends_with("events.jsonl")
    );
    assert_eq!(rejected[3]["truncated"], true);

    let alerts = read_lines(&first.join("alerts.jsonl"));
    let detectors: Vec<&str> = alerts.iter().map(|alert| alert["detector"].as_str().unwrap()).collect();
    for expected in ["impossible_travel", "rate_spike", "sensitive_endpoint"] {
        assert!(detectors.contains(&expected), "{expected} missing from {detectors:?}");
    }
    let alert_schema = validator("alert.schema.json");
    for alert in &alerts {
        let errors: Vec<String> = alert_schema.iter_errors(alert).map(|err| err.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?} in {alert}");
    }
    // Shadow mode by default: the requests are written, none is sent.
    assert!(read_lines(&first.join("revocations.jsonl")).is_empty());
    let revocations = read_lines(&first.join("revocations.shadow.jsonl"));
    assert!(!revocations.is_empty(), "impossible travel asks for a revocation");
    let revocation_schema = validator("revocation.schema.json");
    for request in &revocations {
        let errors: Vec<String> = revocation_schema
            .iter_errors(request)
            .map(|err| err.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {request}");
    }
    let digest_schema = validator("digest.schema.json");
    for digest in &read_lines(&first.join("digests.jsonl")) {
        let errors: Vec<String> = digest_schema.iter_errors(digest).map(|err| err.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?} in {digest}");
    }
    let everything = std::fs::read_to_string(first.join("alerts.jsonl")).unwrap()
        + &std::fs::read_to_string(first.join("revocations.shadow.jsonl")).unwrap()
        + &std::fs::read_to_string(first.join("digests.jsonl")).unwrap();
    assert!(!everything.contains("AKIAREPLAYTEST"), "no raw key in outputs");

    for (name, batch_size) in [("again", "4096"), ("one", "1"), ("large", "10000")] {
        let out = dir.path().join(name);
        let run = replay(&events, &geo, &out, batch_size);
        assert!(run.status.success());
        for file in [
            "alerts.jsonl",
            "revocations.jsonl",
            "revocations.shadow.jsonl",
            "digests.jsonl",
            "rejected.jsonl",
            "summary.json",
        ] {
            assert_eq!(
                std::fs::read(first.join(file)).unwrap(),
                std::fs::read(out.join(file)).unwrap(),
                "{file} differs with batch size {batch_size}"
            );
        }
    }
}

#[test]
fn replay_reads_real_cloudtrail_documents_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cloudtrail");
    let out = dir.path().join("out");
    let inputs = [
        data.join("stratus-ec2-get-password-data.json"),
        data.join("stratus-ec2-steal-instance-credentials.json.gz"),
        data.join("panther-sample.jsonl"),
    ];
    let mut args = vec![
        "replay",
        "--format",
        "cloudtrail",
        "--out",
        out.to_str().unwrap(),
        "--input",
    ];
    args.extend(inputs.iter().map(|path| path.to_str().unwrap()));
    let run = keywatch(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["events"].as_u64().unwrap() > 10, "{summary}");
    let records = summary["records"].as_u64().unwrap();
    let accounted = summary["events"].as_u64().unwrap()
        + summary["rejected"].as_u64().unwrap()
        + summary["skipped_no_key"].as_u64().unwrap();
    assert!(
        accounted >= records,
        "every record is processed, rejected or skipped: {summary}"
    );
}

#[test]
fn start_up_problems_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "").unwrap();
    let out = dir.path().join("out");
    // Runs a replay with one bad file behind `flag`; returns its stderr
    // after checking that it failed.
    let fails_with = |flag: &str, file: &Path| {
        let run = keywatch(&[
            "replay",
            "--input",
            events.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            flag,
            file.to_str().unwrap(),
        ]);
        assert!(!run.status.success(), "{flag} {} was accepted", file.display());
        String::from_utf8_lossy(&run.stderr).into_owned()
    };

    assert!(fails_with("--geoip-city", &dir.path().join("nowhere.mmdb")).contains("nowhere.mmdb"));

    let corrupt = dir.path().join("corrupt.mmdb");
    std::fs::write(&corrupt, b"definitely not a maxmind database").unwrap();
    assert!(fails_with("--geoip-asn", &corrupt).contains("corrupt.mmdb"));

    let model = dir.path().join("bad-model.toml");
    std::fs::write(&model, "name = \"x\"\n").unwrap();
    assert!(fails_with("--model", &model).contains("bad-model.toml"));

    let config = dir.path().join("bad-config.toml");
    std::fs::write(&config, "[input]\nbatch_size = 0\n").unwrap();
    let stderr = fails_with("--config", &config);
    assert!(
        stderr.contains("bad-config.toml") && stderr.contains("input.batch_size"),
        "{stderr}"
    );
}

/// 21 keys with six days of history, then one address in Sao Paulo tries
/// 120 guessed key ids (mostly refused) and a key issued that day is used
/// from Sydney. Written as one file and as three consecutive parts.
fn write_spray(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let mut lines: Vec<(i64, String)> = Vec::new();
    for day in 0..6 {
        for hour in 7..21 {
            for owner in 0..21i64 {
                let ts = T0 + day * DAY + hour * HOUR + owner * 60_000;
                let key = format!("AKIASPRAYTESTOWNER{owner:02}");
                let place = (owner % 2) as usize * 2;
                lines.push((ts, line(ts, &key, host(place, 3), "/v1/orders", 200)));
            }
        }
    }
    let start = T0 + 6 * DAY + 10 * HOUR;
    for guess in 0..120 {
        let ts = start + guess * 2500;
        let status = if guess % 8 == 0 { 200 } else { 401 };
        let key = format!("AKIAGUESSED{guess:09}");
        lines.push((ts, line(ts, &key, host(1, 77), "/v1/orders", status)));
    }
    let sydney = test_world::host("sydney", 12).expect("a place of the test world");
    for call in 0..4 {
        let ts = start + 30_000 + call * 45_000;
        lines.push((ts, line(ts, "AKIALEAKEDTHATDAY000", sydney, "/v1/orders", 200)));
    }
    lines.sort_by_key(|(ts, _)| *ts);
    let text: Vec<String> = lines.into_iter().map(|(_, text)| text).collect();
    let whole = dir.join("spray.jsonl");
    std::fs::write(&whole, text.join("\n") + "\n").unwrap();
    let mut parts = Vec::new();
    let cuts = [0, text.len() / 3, text.len() - 50, text.len()];
    for (index, range) in cuts.windows(2).enumerate() {
        let part = dir.join(format!("spray-{index}.jsonl"));
        std::fs::write(&part, text[range[0]..range[1]].join("\n") + "\n").unwrap();
        parts.push(part);
    }
    (whole, parts)
}

#[test]
fn the_view_across_keys_in_replay_is_byte_identical_whatever_the_batches_and_file_splits() {
    let dir = tempfile::tempdir().unwrap();
    let geo = write_geoip(dir.path());
    let (whole, parts) = write_spray(dir.path());
    let first = dir.path().join("whole");
    let run = replay(&whole, &geo, &first, "4096");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let alerts = read_lines(&first.join("alerts.jsonl"));
    let sprays: Vec<&Value> = alerts
        .iter()
        .filter(|alert| alert["detector"] == "source_spray")
        .collect();
    assert!((1..=3).contains(&sprays.len()), "{sprays:#?}");
    assert!(
        sprays
            .iter()
            .all(|alert| alert["incident_id"] == sprays[0]["incident_id"])
    );
    assert_eq!(sprays[0]["severity"], "high");
    assert_eq!(sprays[0]["keys"].as_array().map(Vec::len), Some(20));
    assert!(
        alerts
            .iter()
            .any(|alert| alert["detector"] == "unfamiliar_network" && alert["severity"] != "low"),
        "the key leaked on its first day is judged by the organisation's places"
    );
    assert!(
        alerts
            .iter()
            .all(|alert| alert["detector"] == "source_spray" || alert.get("keys").is_none()),
        "alerts about one key carry no key list"
    );
    let alert_schema = validator("alert.schema.json");
    for alert in &alerts {
        let errors: Vec<String> = alert_schema.iter_errors(alert).map(|err| err.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?} in {alert}");
    }
    let text = std::fs::read_to_string(first.join("alerts.jsonl")).unwrap();
    assert!(
        !text.contains("AKIAGUESSED") && !text.contains("AKIALEAKED"),
        "no raw key"
    );

    for batch_size in ["1", "7", "100000"] {
        let out = dir.path().join(format!("batch-{batch_size}"));
        assert!(replay(&whole, &geo, &out, batch_size).status.success());
        assert_eq!(
            std::fs::read(first.join("alerts.jsonl")).unwrap(),
            std::fs::read(out.join("alerts.jsonl")).unwrap(),
            "alerts differ with batch size {batch_size}"
        );
    }
    let split = dir.path().join("split");
    let mut args: Vec<String> = vec!["replay".into(), "--input".into()];
    args.extend(parts.iter().map(|part| part.display().to_string()));
    for (flag, value) in [
        ("--geoip-city", geo.0.display().to_string()),
        ("--geoip-asn", geo.1.display().to_string()),
        ("--out", split.display().to_string()),
        ("--batch-size", "13".to_string()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(keywatch(&args).status.success());
    assert_eq!(
        std::fs::read(first.join("alerts.jsonl")).unwrap(),
        std::fs::read(split.join("alerts.jsonl")).unwrap(),
        "alerts differ when the input is split into files"
    );
}

/// With a fingerprint secret, every key is named by HMAC-SHA-256 under it
/// (as docs/OPERATIONS.md computes it), nothing in the outputs or the
/// rejected excerpts holds a raw key id, the secret never reaches the log,
/// and the output files are readable by their owner only.
#[test]
fn replay_with_a_secret_names_keys_by_hmac_and_leaks_no_key() {
    use keywatch::event::{Fingerprinter, key_fingerprint};
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let geo = write_geoip(dir.path());
    let (events, _) = write_events(dir.path());
    let secret = "replay-test-fingerprint-secret-0123";
    let secret_path = dir.path().join("fingerprint.key");
    std::fs::write(&secret_path, format!("{secret}\n")).unwrap();
    let out = dir.path().join("keyed");
    let run = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args([
            "replay",
            "--input",
            events.to_str().unwrap(),
            "--geoip-city",
            geo.0.to_str().unwrap(),
            "--geoip-asn",
            geo.1.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--fingerprint-key-file",
            secret_path.to_str().unwrap(),
        ])
        .env("KEYWATCH_LOG", "info")
        .output()
        .expect("keywatch runs");
    let log = String::from_utf8_lossy(&run.stderr).into_owned() + &String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{log}");
    assert!(log.contains("hmac-sha256"), "the mode is logged: {log}");
    assert!(!log.contains(secret), "the secret is never logged");

    let keyed = Fingerprinter::keyed(secret.as_bytes(), "test").unwrap();
    let keys = ["AKIAREPLAYTEST000000", "AKIAREPLAYTEST000001", "AKIAREPLAYTEST000002"];
    let alerts = read_lines(&out.join("alerts.jsonl"));
    assert!(!alerts.is_empty());
    for alert in &alerts {
        let fingerprint = alert["key_fingerprint"].as_str().unwrap();
        assert!(
            keys.iter().any(|key| keyed.fingerprint(key) == fingerprint),
            "{fingerprint} is the HMAC of a key"
        );
        assert!(
            keys.iter().all(|key| key_fingerprint(key) != fingerprint),
            "not unkeyed"
        );
        assert!(alert["key_hint"].as_str().unwrap().len() <= 8);
    }
    for file in [
        "alerts.jsonl",
        "revocations.jsonl",
        "digests.jsonl",
        "rejected.jsonl",
        "summary.json",
    ] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(!text.contains("AKIAREPLAYTEST"), "raw key id in {file}");
        let mode = std::fs::metadata(out.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let rejected = read_lines(&out.join("rejected.jsonl"));
    assert!(
        rejected
            .iter()
            .any(|entry| entry["record"].as_str().unwrap().contains("\"key_id\":\"[redacted]\"")),
        "{rejected:?}"
    );
}
