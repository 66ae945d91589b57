//! End-to-end checks of `keywatch generate` and `keywatch eval`: generated
//! runs are reproducible, well-formed and fully covered by their GeoIP
//! databases, and scoring a hand-written alert file gives exactly the
//! numbers worked out by hand.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use keywatch::alert::{Alert, Severity, Window};
use keywatch::eval::{self, BenignCase, Label, RunMeta, ScoreOptions};
use keywatch::event::{AccessEvent, key_fingerprint, parse_ts};
use keywatch::generate::attacks::Scenario;
use keywatch::generate::{GenerateConfig, Generation};
use maxminddb::{Reader, geoip2};

const SCENARIOS: [&str; 14] = [
    "stolen_key_new_country",
    "impossible_travel",
    "scraping_burst",
    "low_and_slow_exfiltration",
    "privilege_probing",
    "credential_stuffing",
    "dormant_reactivated",
    "key_copied",
    "same_provider_other_region",
    "domestic_hosting",
    "global_key_new_country",
    "new_key_leaked",
    "volume_exfiltration",
    "key_spray",
];

const HARD_CASES: [&str; 12] = [
    "cloud_region_migration",
    "release_new_endpoint",
    "ci_bursty",
    "vpn_egress",
    "developer_travel",
    "global_traffic",
    "release_export_endpoints",
    "hourly_token_refresh",
    "daylight_saving_shift",
    "auth_retry_storm",
    "key_rotation",
    "bursty_heavy_tailed",
];

const RUN_FILES: [&str; 6] = [
    "events.jsonl",
    "labels.jsonl",
    "benign.jsonl",
    "meta.json",
    "geoip-city.mmdb",
    "geoip-asn.mmdb",
];

fn generate(dir: &Path, keys: usize, days: u32, seed: u64) {
    let config = GenerateConfig::new(keys, days, seed, "2026-01-05T00:00:00Z").unwrap();
    Generation::new(config).write_to(dir).unwrap();
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    generate(first.path(), 60, 6, 7);
    generate(second.path(), 60, 6, 7);
    generate(other.path(), 60, 6, 8);
    for name in RUN_FILES {
        assert_eq!(read(first.path(), name), read(second.path(), name), "{name} differs");
    }
    assert_ne!(read(first.path(), "events.jsonl"), read(other.path(), "events.jsonl"));
    assert_ne!(read(first.path(), "labels.jsonl"), read(other.path(), "labels.jsonl"));
}

#[test]
fn command_line_writes_the_same_files_as_the_library() {
    let by_library = tempfile::tempdir().unwrap();
    let by_command = tempfile::tempdir().unwrap();
    generate(by_library.path(), 60, 5, 11);
    let status = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(["generate", "--keys", "60", "--days", "5", "--seed", "11", "--out"])
        .arg(by_command.path())
        .status()
        .unwrap();
    assert!(status.success());
    for name in RUN_FILES {
        assert_eq!(
            read(by_library.path(), name),
            read(by_command.path(), name),
            "{name} differs"
        );
    }
}

/// One medium-sized run shared by the checks below, which each read a
/// different aspect of it.
fn medium_run() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 120, 10, 1);
    dir
}

#[test]
fn generated_run_is_well_formed() {
    let dir = medium_run();
    let events_text = String::from_utf8(read(dir.path(), "events.jsonl")).unwrap();
    let meta: RunMeta = serde_json::from_slice(&read(dir.path(), "meta.json")).unwrap();
    let labels: Vec<Label> = eval::read_labels(&dir.path().join("labels.jsonl")).unwrap();
    let benign: Vec<BenignCase> = eval::read_benign_cases(&dir.path().join("benign.jsonl")).unwrap();

    // Every line parses back as a canonical event, in non-decreasing time.
    let mut last_ts = i64::MIN;
    let mut lines = 0u64;
    let mut ips = BTreeSet::new();
    let mut events_by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for line in events_text.lines() {
        let event: AccessEvent<'_> = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(event.ts_ms >= last_ts, "out of order at line {}", lines + 1);
        last_ts = event.ts_ms;
        assert!(
            (event.endpoint.starts_with("/v1/") || event.endpoint == "/oauth/token") && !event.endpoint.contains('{'),
            "{line}"
        );
        assert!((100..600).contains(&event.status));
        ips.insert(event.ip);
        events_by_key
            .entry(event.key_id.into_owned())
            .or_default()
            .push(event.ts_ms);
        lines += 1;
    }
    assert_eq!(meta.events, lines);
    assert_eq!(meta.keys, 120);
    // The run's own keys, and the key ids a spray guessed.
    let spray_labels = labels.iter().filter(|label| label.scenario == "key_spray").count();
    assert!(spray_labels > 0);
    let sprayed = events_by_key.values().filter(|times| times.len() <= 4).count();
    assert!(
        events_by_key.len() >= 120 + 100 * spray_labels && sprayed >= 100 * spray_labels,
        "every key calls at least once, and each spray tries at least 100 key ids: {} keys",
        events_by_key.len()
    );
    let run_start = parse_ts(&meta.start).unwrap();
    let run_end = parse_ts(&meta.end).unwrap();
    assert!(last_ts < run_end);
    assert!(meta.benign_key_days > 1000 && meta.benign_key_days <= 120 * 10 + 8 * 30);
    // Each key's first three days are learning days and not judged.
    let judged = meta.judged_key_days.expect("the generator counts judged key-days");
    assert!(
        judged > 0 && judged < meta.benign_key_days,
        "{judged} of {}",
        meta.benign_key_days
    );

    // Every scenario and hard case appears; each incident has attacker calls
    // in its window, after the baseline days.
    let scenarios: BTreeSet<&str> = labels.iter().map(|label| label.scenario.as_str()).collect();
    assert_eq!(scenarios, SCENARIOS.into_iter().collect());
    let cases: BTreeSet<&str> = benign.iter().map(|case| case.case.as_str()).collect();
    assert_eq!(cases, HARD_CASES.into_iter().collect());
    for label in &labels {
        assert_eq!(label.key_fingerprint, key_fingerprint(&label.key));
        let start = parse_ts(&label.start).unwrap();
        let end = parse_ts(&label.end).unwrap();
        assert!(
            start >= run_start + 3 * 86_400_000 && start <= end && end < run_end,
            "{label:?}"
        );
        let key_events = &events_by_key[&label.key];
        assert!(key_events.contains(&start), "{}: no event at start", label.id);
        // A spray's last call goes to the last key id it tried.
        let end_key_events: Vec<i64> = if label.scenario == "key_spray" {
            events_by_key.values().flatten().copied().collect()
        } else {
            key_events.clone()
        };
        assert!(end_key_events.contains(&end), "{}: no event at end", label.id);
        if label.scenario == "dormant_reactivated" {
            let before: Vec<i64> = key_events.iter().copied().filter(|&ts| ts < start).collect();
            let last_before = before.iter().max().copied().expect("a dormant key has history");
            assert!(
                start - last_before >= 30 * 86_400_000,
                "{}: not dormant long enough",
                label.id
            );
            assert!(last_before < run_start, "dormant history lies before the run");
        }
    }
    let incident_keys: BTreeSet<&str> = labels.iter().map(|label| label.key.as_str()).collect();
    assert_eq!(incident_keys.len(), labels.len(), "one incident per key");

    // Every address resolves to a country and an AS in the generated databases.
    let city_reader = Reader::from_source(read(dir.path(), "geoip-city.mmdb")).unwrap();
    let asn_reader = Reader::from_source(read(dir.path(), "geoip-asn.mmdb")).unwrap();
    let mut countries = BTreeSet::new();
    for &ip in &ips {
        assert!(
            keywatch::enrich::netclass::classify(ip).is_public(),
            "{ip} is not public"
        );
        let city: geoip2::City = city_reader
            .lookup(ip)
            .unwrap()
            .decode()
            .unwrap()
            .unwrap_or_else(|| panic!("{ip} not in the City database"));
        let country = city.country.iso_code.unwrap_or_else(|| panic!("{ip} has no country"));
        countries.insert(country.to_string());
        assert!(city.location.latitude.is_some());
        let asn: geoip2::Asn = asn_reader
            .lookup(ip)
            .unwrap()
            .decode()
            .unwrap()
            .unwrap_or_else(|| panic!("{ip} not in the ASN database"));
        assert!(asn.autonomous_system_number.unwrap_or(0) > 0);
    }
    assert!(countries.len() >= 15, "{countries:?}");
    let unused: IpAddr = "8.8.8.8".parse().unwrap();
    assert!(!city_reader.lookup(unused).unwrap().has_data());
}

fn alert(id: &str, fingerprint: &str, ts: &str, severity: Severity, detector: &str) -> Alert {
    Alert {
        id: id.to_string(),
        incident_id: id.to_string(),
        key_fingerprint: fingerprint.to_string(),
        key_hint: "****".to_string(),
        keys: Vec::new(),
        detector: detector.parse().expect("a registered detector"),
        severity,
        score: 0.8,
        ts: ts.to_string(),
        window: Window {
            start: ts.to_string(),
            end: ts.to_string(),
        },
        summary: "test".to_string(),
        evidence: serde_json::json!({}),
        model: "test/1".to_string(),
        owner: None,
        revision: 1,
        count: 1,
        first_seen: String::new(),
        last_seen: String::new(),
        peak_score: 0.0,
    }
}

fn write_lines<T: serde::Serialize>(path: &Path, records: &[T]) {
    let text: String = records
        .iter()
        .map(|record| serde_json::to_string(record).unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Three incidents, two benign cases, 2,000 judged key-days and nine alerts
/// whose fate is worked out by hand in the comments.
fn hand_written_run(dir: &Path) -> Vec<Alert> {
    let label = |id: &str, scenario: Scenario, key: &str, start: &str, end: &str| Label {
        id: id.to_string(),
        scenario: scenario.as_str().to_string(),
        key: key.to_string(),
        key_fingerprint: key_fingerprint(key),
        start: start.to_string(),
        end: end.to_string(),
        notes: String::new(),
        detectors: scenario.detectors().to_vec(),
    };
    let labels = [
        label(
            "inc-1",
            Scenario::ScrapingBurst,
            "AKIAAAAAAAAAAAAAAAA1",
            "2026-01-08T10:00:00Z",
            "2026-01-08T11:00:00Z",
        ),
        label(
            "inc-2",
            Scenario::ScrapingBurst,
            "AKIAAAAAAAAAAAAAAAA2",
            "2026-01-09T10:00:00Z",
            "2026-01-09T10:30:00Z",
        ),
        label(
            "inc-3",
            Scenario::ImpossibleTravel,
            "AKIAAAAAAAAAAAAAAAA3",
            "2026-01-10T08:00:00Z",
            "2026-01-10T08:20:00Z",
        ),
    ];
    let benign = [BenignCase {
        id: "benign-1".to_string(),
        case: "vpn_egress".to_string(),
        key: "AKIAAAAAAAAAAAAAAAB1".to_string(),
        key_fingerprint: key_fingerprint("AKIAAAAAAAAAAAAAAAB1"),
        start: "2026-01-05T00:00:00Z".to_string(),
        end: "2026-01-15T00:00:00Z".to_string(),
        notes: String::new(),
    }];
    let meta = RunMeta {
        keys: 200,
        days: 10,
        seed: 1,
        start: "2026-01-05T00:00:00Z".to_string(),
        end: "2026-01-15T00:00:00Z".to_string(),
        events: 0,
        benign_key_days: 2400,
        judged_key_days: Some(2000),
        incidents: 3,
        benign_cases: 1,
        generator: "hand".to_string(),
    };
    write_lines(&dir.join("labels.jsonl"), &labels);
    write_lines(&dir.join("benign.jsonl"), &benign);
    std::fs::write(dir.join("meta.json"), serde_json::to_string(&meta).unwrap()).unwrap();

    let kf = |key: &str| key_fingerprint(key);
    let alerts = vec![
        // inc-1 detected 10 minutes in; a second alert on it also matches.
        alert(
            "a1",
            &kf("AKIAAAAAAAAAAAAAAAA1"),
            "2026-01-08T10:10:00Z",
            Severity::High,
            "rate_spike",
        ),
        alert(
            "a2",
            &kf("AKIAAAAAAAAAAAAAAAA1"),
            "2026-01-08T10:40:00Z",
            Severity::Medium,
            "new_endpoint",
        ),
        // inc-2: only inside the grace hour after its end (30 + 50 = 80 minutes in).
        alert(
            "a3",
            &kf("AKIAAAAAAAAAAAAAAAA2"),
            "2026-01-09T11:20:00Z",
            Severity::Medium,
            "rate_spike",
        ),
        // inc-3: a rate alert inside it is not one of impossible travel's
        // detectors: no detection, and no false alert either...
        alert(
            "a9",
            &kf("AKIAAAAAAAAAAAAAAAA3"),
            "2026-01-10T08:10:00Z",
            Severity::High,
            "rate_spike",
        ),
        // ...a low alert of its detectors reaches it only below medium...
        alert(
            "a4",
            &kf("AKIAAAAAAAAAAAAAAAA3"),
            "2026-01-10T08:05:00Z",
            Severity::Low,
            "new_country",
        ),
        // ...and a critical one 2h after the end is outside the grace: false.
        alert(
            "a5",
            &kf("AKIAAAAAAAAAAAAAAAA3"),
            "2026-01-10T10:20:01Z",
            Severity::Critical,
            "new_country",
        ),
        // On the VPN hard case: one counted false alert, one low.
        alert(
            "a6",
            &kf("AKIAAAAAAAAAAAAAAAB1"),
            "2026-01-06T09:00:00Z",
            Severity::Medium,
            "new_country",
        ),
        alert(
            "a7",
            &kf("AKIAAAAAAAAAAAAAAAB1"),
            "2026-01-07T09:00:00Z",
            Severity::Low,
            "new_country",
        ),
        // A key with no label at all: false.
        alert(
            "a8",
            &kf("AKIAAAAAAAAAAAAAAAC1"),
            "2026-01-11T09:00:00Z",
            Severity::High,
            "auth_failure_spike",
        ),
    ];
    write_lines(&dir.join("alerts.jsonl"), &alerts);
    alerts
}

#[test]
fn scoring_a_hand_written_run_gives_the_expected_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = hand_written_run(dir.path());
    let run = eval::load_labelled_run(&dir.path().join("labels.jsonl")).unwrap();
    assert_eq!(run.benign_cases.len(), 1);
    let card = eval::score(
        &alerts,
        &run.labels,
        &run.benign_cases,
        run.meta.as_ref(),
        &ScoreOptions::default(),
    );
    assert_eq!((card.incidents, card.detected), (3, 2));
    assert_eq!(card.recall, Some(2.0 / 3.0));
    // Detection times 600 s and 4800 s; nearest-rank median and p95.
    assert_eq!(card.median_time_to_detect_s, Some(600.0));
    assert_eq!(card.p95_time_to_detect_s, Some(4800.0));
    assert_eq!(card.alerts_total, 9);
    assert_eq!(card.alerts_below_min_severity, 2);
    assert_eq!(card.alerts_counted, 7);
    assert_eq!(card.alerts_matched, 3);
    assert_eq!(card.alerts_in_incident_other_detector, 1);
    assert_eq!(card.alerts_unmatched, 3);
    assert_eq!(card.precision, Some(4.0 / 7.0));
    assert_eq!(card.benign_key_days, Some(2400));
    assert_eq!(card.judged_key_days, Some(2000));
    assert_eq!(card.false_alerts_per_1k_judged_key_days, Some(1.5));
    // a5, a6, a7 and a8 lie in no incident.
    assert_eq!(card.false_alerts_all_severities, 4);
    assert_eq!(card.false_alerts_all_severities_per_1k_judged_key_days, Some(2.0));
    assert_eq!(card.incidents_only_below_min_severity, 1);
    let by_severity: Vec<(Severity, usize, usize)> = card
        .alerts_by_severity
        .iter()
        .map(|row| (row.severity, row.alerts, row.false_alerts))
        .collect();
    assert_eq!(
        by_severity,
        [
            (Severity::Low, 2, 1),
            (Severity::Medium, 3, 1),
            (Severity::High, 3, 1),
            (Severity::Critical, 1, 1)
        ]
    );
    let scraping = &card.scenarios["scraping_burst"];
    assert_eq!((scraping.incidents, scraping.detected), (2, 2));
    assert_eq!(scraping.median_time_to_detect_s, Some(600.0));
    assert_eq!(scraping.detectors.get("rate_spike"), Some(&2));
    assert_eq!(scraping.detectors.get("new_endpoint"), Some(&1));
    let travel = &card.scenarios["impossible_travel"];
    assert_eq!((travel.incidents, travel.detected), (1, 0));
    assert_eq!(travel.recall, Some(0.0));
    assert_eq!(travel.only_below_min_severity, 1);
    assert_eq!(travel.detectors.get("rate_spike"), Some(&1));
    let vpn = &card.benign_cases["vpn_egress"];
    assert_eq!((vpn.cases, vpn.alerts, vpn.cases_alerted, vpn.low_alerts), (1, 1, 1, 1));

    // Counting low alerts too: inc-3 is detected by a4, the VPN low alert
    // becomes a false alert.
    let with_low = eval::score(
        &alerts,
        &run.labels,
        &run.benign_cases,
        run.meta.as_ref(),
        &ScoreOptions {
            min_severity: Severity::Low,
            ..ScoreOptions::default()
        },
    );
    assert_eq!(with_low.detected, 3);
    assert_eq!(with_low.incidents_only_below_min_severity, 0);
    assert_eq!(with_low.alerts_unmatched, 4);
    assert_eq!(with_low.false_alerts_per_1k_judged_key_days, Some(2.0));

    // Without grace inc-2 is missed, and its alert turns false.
    let no_grace = eval::score(
        &alerts,
        &run.labels,
        &run.benign_cases,
        run.meta.as_ref(),
        &ScoreOptions {
            grace: std::time::Duration::ZERO,
            key_days: Some(4000),
            ..ScoreOptions::default()
        },
    );
    assert_eq!(no_grace.detected, 1);
    assert_eq!(no_grace.alerts_unmatched, 4);
    assert_eq!(no_grace.false_alerts_per_1k_judged_key_days, Some(1.0));

    let table = eval::render_table(&card);
    assert!(
        table.contains("scraping_burst") && table.contains("vpn_egress"),
        "{table}"
    );
}

#[test]
fn eval_command_prints_the_scorecard_as_json() {
    let dir = tempfile::tempdir().unwrap();
    hand_written_run(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("eval")
        .arg("--alerts")
        .arg(dir.path().join("alerts.jsonl"))
        .arg("--labels")
        .arg(dir.path().join("labels.jsonl"))
        .args(["--json", "--grace", "1h", "--min-severity", "medium"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let card: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(card["precision"], 4.0 / 7.0);
    assert_eq!(card["false_alerts_per_1k_judged_key_days"], 1.5);
    assert_eq!(card["false_alerts_all_severities_per_1k_judged_key_days"], 2.0);
    assert_eq!(card["incidents_only_below_min_severity"], 1);
    assert_eq!(card["alerts_by_severity"][0]["severity"], "low");
    assert_eq!(card["median_time_to_detect_s"], 600.0);
    assert_eq!(card["p95_time_to_detect_s"], 4800.0);
    assert_eq!(card["scenarios"]["scraping_burst"]["incidents"], 2);
    assert_eq!(card["scenarios"]["scraping_burst"]["detected"], 2);
    assert!((card["recall"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);

    let table = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("eval")
        .arg("--alerts")
        .arg(dir.path().join("alerts.jsonl"))
        .arg("--labels")
        .arg(dir.path().join("labels.jsonl"))
        .args(["--key-days", "3000"])
        .output()
        .unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("1.00 per 1,000 judged key-days at severity >= medium (3), 1.33 at all severities (4)"),
        "{text}"
    );
    assert!(text.contains("2 below medium not counted"), "{text}");
}
