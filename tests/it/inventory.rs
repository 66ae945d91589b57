//! End to end, through the real binary: owners from a CSV or a JSON lines
//! owners file reach alerts and revocation requests; `keywatch keys` lists
//! the same keys from a replay and from the snapshot that replay saved;
//! its flags (dormant, no owner, past expiry, revoked) and `--stale`; and,
//! on a generated run with abandoned keys and an owners file, `--stale`
//! flags exactly the dormant, unowned and expired keys. No output names a
//! raw key id.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use keywatch::enrich::test_world;
use keywatch::event::Fingerprinter;
use serde_json::Value;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;
const PLACES: [&str; 3] = ["london", "saopaulo", "virginia_aws"];
/// Key 0 travels (a revocation), key 1 scrapes, key 2 is past its expiry,
/// key 3 falls silent after two days, key 4 has no owners entry.
const KEYS: [&str; 5] = [
    "AKIAINVENTORYTEST000",
    "AKIAINVENTORYTEST001",
    "AKIAINVENTORYTEST002",
    "AKIAINVENTORYTEST003",
    "AKIAINVENTORYTEST004",
];

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

fn line(ts: i64, key: &str, ip: IpAddr, endpoint: &str) -> String {
    serde_json::json!({
        "ts": keywatch::event::format_ts(ts),
        "key_id": key,
        "ip": ip.to_string(),
        "method": "GET",
        "endpoint": endpoint,
        "status": 200,
        "user_agent": "acme-sdk/1.2.0",
        "bytes_out": 900,
    })
    .to_string()
}

fn write_events(dir: &Path) -> PathBuf {
    let mut lines: Vec<(i64, String)> = Vec::new();
    for day in 0..6 {
        for hour in 7..21 {
            for slot in 0..10 {
                let ts = T0 + day * DAY + hour * HOUR + slot * 360_000;
                lines.push((ts, line(ts, KEYS[0], host(0, slot as u32), "/v1/orders")));
                lines.push((ts + 1, line(ts + 1, KEYS[1], host(0, 5), "/v1/items/123")));
                lines.push((ts + 2, line(ts + 2, KEYS[2], host(2, 9), "/v1/reports")));
                lines.push((ts + 4, line(ts + 4, KEYS[4], host(2, 7), "/v1/reports")));
                if day < 2 {
                    lines.push((ts + 3, line(ts + 3, KEYS[3], host(0, 3), "/v1/orders")));
                }
            }
        }
    }
    let twist = T0 + 6 * DAY + 9 * HOUR;
    lines.push((
        twist - 300_000,
        line(twist - 300_000, KEYS[0], host(0, 1), "/v1/orders"),
    ));
    lines.push((twist, line(twist, KEYS[0], host(1, 1), "/v1/orders")));
    for call in 0..400 {
        let ts = twist + call * 300;
        lines.push((ts, line(ts, KEYS[1], host(0, 5), "/v1/items/777")));
    }
    lines.sort_by_key(|(ts, _)| *ts);
    let path = dir.join("events.jsonl");
    let text: Vec<String> = lines.into_iter().map(|(_, text)| text).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

/// The same owners as CSV (by key id) and as JSON lines (by fingerprint).
fn write_owners(dir: &Path) -> (PathBuf, PathBuf) {
    let csv = dir.join("owners.csv");
    std::fs::write(
        &csv,
        format!(
            "key_id,owner,team,purpose,criticality,expires\n\
             {},alice,payments,checkout,critical,2027-06-30\n\
             {},bob,search,indexer,medium,\n\
             {},carol,data,reports,low,2026-01-07\n\
             {},dave,growth,campaigns,low,\n",
            KEYS[0], KEYS[1], KEYS[2], KEYS[3]
        ),
    )
    .unwrap();
    let fingerprinter = Fingerprinter::unkeyed();
    let rows = [
        (KEYS[0], "alice", "payments", "checkout", "critical", Some("2027-06-30")),
        (KEYS[1], "bob", "search", "indexer", "medium", None),
        (KEYS[2], "carol", "data", "reports", "low", Some("2026-01-07")),
        (KEYS[3], "dave", "growth", "campaigns", "low", None),
    ];
    let jsonl = dir.join("owners.jsonl");
    let text: Vec<String> = rows
        .iter()
        .map(|(key, owner, team, purpose, criticality, expires)| {
            let mut entry = serde_json::json!({
                "key_fingerprint": fingerprinter.fingerprint(key),
                "owner": owner, "team": team, "purpose": purpose, "criticality": criticality,
            });
            if let Some(expires) = expires {
                entry["expires"] = Value::from(*expires);
            }
            entry.to_string()
        })
        .collect();
    std::fs::write(&jsonl, text.join("\n") + "\n").unwrap();
    (csv, jsonl)
}

fn keywatch(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(args)
        .output()
        .expect("keywatch runs");
    assert!(
        output.status.success(),
        "keywatch {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn geo_args(geo: &(PathBuf, PathBuf)) -> Vec<String> {
    vec![
        "--geoip-city".into(),
        geo.0.display().to_string(),
        "--geoip-asn".into(),
        geo.1.display().to_string(),
    ]
}

fn run(args: Vec<String>) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    String::from_utf8(keywatch(&args).stdout).expect("utf-8")
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

fn replay(events: &Path, geo: &(PathBuf, PathBuf), out: &Path, extra: &[&str]) {
    let mut args = vec![
        "replay".to_string(),
        "--input".into(),
        events.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--no-progress".into(),
    ];
    args.extend(geo_args(geo));
    args.extend(extra.iter().map(|arg| arg.to_string()));
    run(args);
}

#[test]
fn owners_from_a_csv_or_a_jsonl_file_reach_alerts_and_revocation_requests() {
    let dir = tempfile::tempdir().unwrap();
    let geo = write_geoip(dir.path());
    let events = write_events(dir.path());
    let (csv, jsonl) = write_owners(dir.path());
    let fingerprint = Fingerprinter::unkeyed().fingerprint(KEYS[0]);
    let mut outputs = BTreeMap::new();
    for (name, owners) in [("csv", Some(&csv)), ("jsonl", Some(&jsonl)), ("none", None)] {
        let out = dir.path().join(name);
        let owners_arg = owners.map(|path| path.display().to_string());
        let extra: Vec<&str> = match &owners_arg {
            Some(path) => vec!["--owners", path.as_str()],
            None => vec![],
        };
        replay(&events, &geo, &out, &extra);
        let alerts = read_lines(&out.join("alerts.jsonl"));
        // The default policy is shadow mode: requests are written, not sent.
        let mut revocations = read_lines(&out.join("revocations.jsonl"));
        revocations.extend(read_lines(&out.join("revocations.shadow.jsonl")));
        let travelled: Vec<&Value> = alerts
            .iter()
            .chain(&revocations)
            .filter(|output| output["key_fingerprint"] == fingerprint.as_str())
            .collect();
        if owners.is_some() {
            // The owners file marks the key critical: the policy holds its
            // revocation back and says so in a high alert.
            assert!(
                alerts.iter().any(|alert| alert["detector"] == "revocation_held"
                    && alert["key_fingerprint"] == fingerprint.as_str()
                    && alert["evidence"]["reason"] == "critical_key"),
                "{name}: the critical travelling key's revocation is held"
            );
        } else {
            assert!(
                revocations
                    .iter()
                    .any(|request| request["key_fingerprint"] == fingerprint.as_str()),
                "{name}: the travelling key is asked to be revoked"
            );
        }
        for output in &travelled {
            if owners.is_some() {
                assert_eq!(output["owner"]["owner"], "alice", "{name}: {output}");
                assert_eq!(output["owner"]["team"], "payments");
                assert_eq!(output["owner"]["criticality"], "critical");
            } else {
                assert!(output.get("owner").is_none(), "no owners file, no owner: {output}");
            }
        }
        let (alert_schema, revocation_schema) = (validator("alert.schema.json"), validator("revocation.schema.json"));
        for alert in &alerts {
            assert!(alert_schema.is_valid(alert), "{alert}");
        }
        for request in &revocations {
            assert!(revocation_schema.is_valid(request), "{request}");
        }
        outputs.insert(
            name,
            std::fs::read_to_string(out.join("alerts.jsonl")).unwrap()
                + &std::fs::read_to_string(out.join("revocations.jsonl")).unwrap(),
        );
    }
    assert_eq!(
        outputs["csv"], outputs["jsonl"],
        "the two formats give the same outputs"
    );
    assert_ne!(outputs["csv"], outputs["none"]);
    assert!(!outputs["csv"].contains("AKIAINVENTORY"), "no raw key in outputs");
}

#[test]
fn keys_from_a_replay_and_from_its_snapshot_agree_and_carry_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let geo = write_geoip(dir.path());
    let events = write_events(dir.path());
    let (csv, _) = write_owners(dir.path());
    let snapshot = dir.path().join("snapshot.json");
    replay(
        &events,
        &geo,
        &dir.path().join("replayed"),
        &["--save-snapshot", snapshot.to_str().unwrap()],
    );
    let common = |source: Vec<String>| {
        let mut args = vec!["keys".to_string()];
        args.extend(source);
        args.extend(["--owners", csv.to_str().unwrap(), "--dormant-after", "3d", "--json"].map(String::from));
        args
    };
    let mut from_replay_args = vec!["--input".to_string(), events.display().to_string()];
    from_replay_args.extend(geo_args(&geo));
    let from_replay = run(common(from_replay_args));
    let from_snapshot = run(common(vec!["--snapshot".into(), snapshot.display().to_string()]));
    assert_eq!(from_replay, from_snapshot, "the same keys either way");

    let fingerprinter = Fingerprinter::unkeyed();
    let records: BTreeMap<String, Value> = from_replay
        .lines()
        .map(|text| {
            let record: Value = serde_json::from_str(text).unwrap();
            (record["key_fingerprint"].as_str().unwrap().to_string(), record)
        })
        .collect();
    assert_eq!(records.len(), KEYS.len());
    let listed: Vec<&String> = records.keys().collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "fingerprint order");
    let flags = |key: &str| -> Vec<String> {
        records[&fingerprinter.fingerprint(key)]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|flag| flag.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(flags(KEYS[0]), ["revoked"]);
    assert_eq!(flags(KEYS[1]), Vec::<String>::new());
    assert_eq!(flags(KEYS[2]), ["past_expiry"]);
    assert_eq!(flags(KEYS[3]), ["dormant"]);
    assert_eq!(flags(KEYS[4]), ["no_owner"]);
    let travelled = &records[&fingerprinter.fingerprint(KEYS[0])];
    assert_eq!(travelled["revocation"]["status"], "requested");
    assert_eq!(travelled["owner"]["owner"], "alice");
    assert_eq!(travelled["countries"], serde_json::json!(["BR", "GB"]));
    assert!(travelled["calls"].as_u64().unwrap() > 800);
    assert_eq!(records[&fingerprinter.fingerprint(KEYS[1])]["revocation"], Value::Null);

    let stale = run(vec![
        "keys".into(),
        "--snapshot".into(),
        snapshot.display().to_string(),
        "--owners".into(),
        csv.display().to_string(),
        "--dormant-after".into(),
        "3d".into(),
        "--stale".into(),
        "--json".into(),
    ]);
    let reasons: BTreeMap<String, Value> = stale
        .lines()
        .map(|text| {
            let record: Value = serde_json::from_str(text).unwrap();
            (
                record["key_fingerprint"].as_str().unwrap().to_string(),
                record["reasons"].clone(),
            )
        })
        .collect();
    let expected: BTreeMap<String, Value> = [
        (KEYS[2], serde_json::json!(["past_expiry"])),
        (KEYS[3], serde_json::json!(["dormant"])),
        (KEYS[4], serde_json::json!(["no_owner"])),
    ]
    .into_iter()
    .map(|(key, reasons)| (fingerprinter.fingerprint(key), reasons))
    .collect();
    assert_eq!(reasons, expected);

    let table = run(vec![
        "keys".into(),
        "--snapshot".into(),
        snapshot.display().to_string(),
        "--owners".into(),
        csv.display().to_string(),
    ]);
    assert!(table.starts_with("FINGERPRINT"), "{table}");
    assert!(table.contains("alice/payments"), "{table}");
    for output in [&from_replay, &stale, &table] {
        assert!(!output.contains("AKIAINVENTORY"), "no raw key id in the inventory");
    }
}

/// Per key fingerprint, the newest event time, from a generated events file.
fn last_use_by_fingerprint(events: &Path, fingerprinter: &Fingerprinter) -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string(events).unwrap();
    let mut last_use: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_key: BTreeMap<String, i64> = BTreeMap::new();
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let ts = keywatch::event::parse_ts(event["ts"].as_str().unwrap()).unwrap();
        let key = event["key_id"].as_str().unwrap();
        let newest = by_key.entry(key.to_string()).or_insert(ts);
        *newest = (*newest).max(ts);
    }
    for (key, ts) in by_key {
        last_use.insert(fingerprinter.fingerprint(&key), ts);
    }
    last_use
}

#[test]
fn keys_stale_on_a_generated_run_flags_its_dormant_unowned_and_expired_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    let generated_arg = generated.display().to_string();
    run([
        "generate",
        "--keys",
        "60",
        "--days",
        "5",
        "--seed",
        "3",
        "--abandoned-keys",
        "8",
        "--owners",
        "--unkeyed-fingerprints",
        "--out",
        &generated_arg,
    ]
    .map(String::from)
    .to_vec());
    let events = generated.join("events.jsonl");
    let owners_path = generated.join("owners.csv");
    let fingerprinter = Fingerprinter::unkeyed();
    let owners = keywatch::owners::OwnerBook::load(&owners_path, &fingerprinter).unwrap();
    let last_use = last_use_by_fingerprint(&events, &fingerprinter);
    let newest = *last_use.values().max().unwrap();

    let stale = run([
        "keys",
        "--input",
        events.to_str().unwrap(),
        "--geoip-city",
        generated.join("geoip-city.mmdb").to_str().unwrap(),
        "--geoip-asn",
        generated.join("geoip-asn.mmdb").to_str().unwrap(),
        "--owners",
        owners_path.to_str().unwrap(),
        "--unkeyed-fingerprints",
        "--stale",
        "--json",
    ]
    .map(String::from)
    .to_vec());
    let flagged: BTreeMap<String, BTreeSet<String>> = stale
        .lines()
        .map(|text| {
            let record: Value = serde_json::from_str(text).unwrap();
            let reasons = record["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|reason| reason.as_str().unwrap().to_string())
                .collect();
            (record["key_fingerprint"].as_str().unwrap().to_string(), reasons)
        })
        .collect();

    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (fingerprint, last) in &last_use {
        let mut reasons = BTreeSet::new();
        if newest - last >= 30 * DAY {
            reasons.insert("dormant".to_string());
        }
        match owners.get(fingerprint) {
            None => {
                reasons.insert("no_owner".to_string());
            }
            Some(owner) if owner.expires_ms.is_some_and(|expires| expires < newest) => {
                reasons.insert("past_expiry".to_string());
            }
            Some(_) => {}
        }
        if !reasons.is_empty() {
            expected.insert(fingerprint.clone(), reasons);
        }
    }
    let count = |reason: &str| expected.values().filter(|reasons| reasons.contains(reason)).count();
    assert!(count("dormant") >= 8, "the abandoned keys are dormant: {expected:?}");
    assert!(count("no_owner") >= 3 && count("past_expiry") >= 1, "{expected:?}");
    assert_eq!(flagged, expected, "exactly the dormant, unowned and expired keys");
    let active_owned = last_use
        .keys()
        .filter(|fingerprint| !expected.contains_key(*fingerprint))
        .count();
    assert!(active_owned > 30, "most keys are active and owned: {active_owned}");
    assert!(!stale.contains("\"key_id\""));
    let raw_ids: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .take(200)
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["key_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(raw_ids.iter().all(|id| !stale.contains(id.as_str())), "no raw key id");
}
