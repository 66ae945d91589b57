//! Detection quality as a test: generated traffic with labelled attacks and
//! benign changes runs through the real engine and is scored by the
//! evaluation code, against the targets docs/EVALUATION.md documents and no
//! looser. A change that costs recall, leaves an attack reached only at low,
//! or floods the SOC fails here, long before anyone reruns the evaluation.
//! Scored the honest way: only a scenario's own detectors detect it, every
//! severity counts, and rates are per judged key-day (after each key's
//! learning period). The seed is not one of the tuning seeds 1–3. Where a
//! target is missed today the test holds the documented floor instead, so
//! the miss cannot grow unseen.

use std::sync::Arc;

use keywatch::alert::{Alert, Digest, Output};
use keywatch::engine::Engine;
use keywatch::enrich::GeoIp;
use keywatch::eval::{RunMeta, ScoreOptions, Scorecard, score_with_digests};
use keywatch::generate::{GenerateConfig, Generation};
use keywatch::model::Model;

/// The targets of docs/EVALUATION.md.
const MIN_RECALL: f64 = 0.95;
const MIN_SCENARIO_RECALL: f64 = 0.8;
const MAX_FALSE_ALERTS_PER_1K_AT_MEDIUM: f64 = 1.0;
const MAX_FALSE_ALERTS_PER_1K_ALL_SEVERITIES: f64 = 10.0;
/// A benign change may alert at medium or above at most once in ten.
const MAX_BENIGN_CASES_ALERTED_SHARE: f64 = 0.1;
const MAX_MEDIAN_TIME_TO_DETECT_S: f64 = 300.0;

// Targets missed today, each held at the floor it reaches so that it cannot
// get worse unseen. docs/EVALUATION.md ("Where the targets are missed")
// says by how much and why; an entry goes when its target is met.
/// Overall recall: the target is `MIN_RECALL`.
const RECALL_FLOOR: f64 = 0.75;
/// Incidents reached only at low: the target is none.
const MAX_INCIDENTS_ONLY_AT_LOW: usize = 5;
/// Scenarios below `MIN_SCENARIO_RECALL`, with the recall they must keep.
const SCENARIO_RECALL_FLOORS: &[(&str, f64)] = &[
    // A second region of the owner's own provider is low until the two
    // regions have overlapped for 3 hours (a migration's cutover).
    ("same_provider_other_region", 0.2),
    // A leaked key on a network the organisation's VPN or cloud keys use.
    ("new_key_leaked", 0.2),
    // A few very large responses among a traveller's or VPN key's calls.
    ("volume_exfiltration", 0.4),
];
/// Benign cases alerting more often than `MAX_BENIGN_CASES_ALERTED_SHARE`,
/// with the share they must stay within.
const BENIGN_ALERTED_CEILINGS: &[(&str, f64)] = &[
    // A rare burst beyond any the key showed before is a medium surge.
    ("bursty_heavy_tailed", 0.25),
];

fn floor_of(table: &[(&str, f64)], name: &str, default: f64) -> f64 {
    table
        .iter()
        .find(|(listed, _)| *listed == name)
        .map_or(default, |(_, value)| *value)
}

const KEYS: usize = 1000;
const DAYS: u32 = 10;
const SEED: u64 = 11;
const START: &str = "2026-01-05T00:00:00Z";

/// Generates the run, replays it through one engine and scores it.
fn scorecard() -> Scorecard {
    let config = GenerateConfig::new(KEYS, DAYS, SEED, START).expect("valid generator config");
    let generation = Generation::new(config);
    let geo = GeoIp::from_bytes(
        Some(generation.city_database().unwrap()),
        Some(generation.asn_database().unwrap()),
    )
    .expect("generated databases open");
    let mut engine = Engine::new(Arc::new(Model::default_model()), Arc::new(geo));
    let mut batch = Vec::with_capacity(4096);
    let mut outputs = Vec::new();
    let counts = generation
        .for_each_event(|event| {
            batch.push(event.clone().into_owned());
            if batch.len() == batch.capacity() {
                engine.process(&batch, &mut outputs);
                batch.clear();
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    engine.process(&batch, &mut outputs);
    engine.finish(&mut outputs);
    let mut alerts: Vec<Alert> = Vec::new();
    let mut digests: Vec<Digest> = Vec::new();
    for output in outputs {
        match output {
            Output::Alert(alert) => alerts.push(alert),
            Output::Digest(digest) => digests.push(digest),
            Output::Revocation(_) => {}
        }
    }
    let meta = RunMeta {
        keys: KEYS as u64,
        days: u64::from(DAYS),
        seed: SEED,
        start: START.into(),
        end: "2026-01-15T00:00:00Z".into(),
        events: counts.events,
        benign_key_days: counts.benign_key_days,
        judged_key_days: Some(counts.judged_key_days),
        incidents: generation.labels().len() as u64,
        benign_cases: generation.benign_cases().len() as u64,
        generator: String::new(),
    };
    let card = score_with_digests(
        &alerts,
        &digests,
        generation.labels(),
        generation.benign_cases(),
        Some(&meta),
        &ScoreOptions::default(),
    );
    eprintln!("{}", keywatch::eval::render_table(&card));
    card
}

#[test]
fn default_model_on_generated_traffic_meets_the_documented_targets_or_their_documented_floors() {
    let card = scorecard();
    let mut misses = Vec::new();
    let mut check = |holds: bool, what: String| {
        if !holds {
            misses.push(what);
        }
    };

    check(card.incidents >= 40, format!("{} incidents injected", card.incidents));
    let recall = card.recall.unwrap_or(0.0);
    check(
        recall >= RECALL_FLOOR,
        format!("recall {recall:.3} < {RECALL_FLOOR} (target {MIN_RECALL})"),
    );
    for (name, scenario) in &card.scenarios {
        let recall = scenario.recall.unwrap_or(0.0);
        check(
            recall >= floor_of(SCENARIO_RECALL_FLOORS, name, MIN_SCENARIO_RECALL),
            format!(
                "scenario {name}: recall {recall:.2} ({} of {})",
                scenario.detected, scenario.incidents
            ),
        );
    }
    check(
        card.incidents_only_below_min_severity <= MAX_INCIDENTS_ONLY_AT_LOW,
        format!(
            "{} incidents reached only at low",
            card.incidents_only_below_min_severity
        ),
    );
    let at_medium = card.false_alerts_per_1k_judged_key_days.unwrap_or(f64::INFINITY);
    check(
        at_medium <= MAX_FALSE_ALERTS_PER_1K_AT_MEDIUM,
        format!("{at_medium:.2} false alerts per 1,000 judged key-days at medium and above"),
    );
    let all = card
        .false_alerts_all_severities_per_1k_judged_key_days
        .unwrap_or(f64::INFINITY);
    check(
        all <= MAX_FALSE_ALERTS_PER_1K_ALL_SEVERITIES,
        format!("{all:.2} false alerts per 1,000 judged key-days at all severities"),
    );
    check(!card.benign_cases.is_empty(), "no benign cases generated".into());
    for (name, case) in &card.benign_cases {
        let share = case.cases_alerted as f64 / case.cases.max(1) as f64;
        check(
            share <= floor_of(BENIGN_ALERTED_CEILINGS, name, MAX_BENIGN_CASES_ALERTED_SHARE),
            format!(
                "benign case {name}: {} of {} alerted at medium or above ({:?})",
                case.cases_alerted, case.cases, case.detectors
            ),
        );
    }
    let median = card.median_time_to_detect_s.unwrap_or(f64::INFINITY);
    check(
        median <= MAX_MEDIAN_TIME_TO_DETECT_S,
        format!("median time to detect {median:.0} s"),
    );
    assert!(misses.is_empty(), "targets missed:\n{}", misses.join("\n"));
}
