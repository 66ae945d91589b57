//! Scores an alert file against labelled incidents.
//!
//! An incident counts as detected when an alert of at least the minimum
//! severity names its key, comes from one of the detectors its label lists
//! (any detector for labels that list none), and falls, in event time, inside
//! the incident or within a grace period after it. An alert inside no
//! incident's window on its key is a false alert; false alerts are normalised
//! by the run's *judged* key-days (benign key-days after each key's learning
//! period, see [`RunMeta::judged_key_days`]) so runs of different sizes
//! compare and learning days, on which most detectors cannot fire, do not
//! dilute the rate. Every severity is reported: alerts and false alerts per
//! severity, the false-alert rate at the minimum severity and at all, and the
//! incidents reached only below the minimum severity.
//!
//! Alerts are counted by distinct id ([`distinct_alerts`]): the SOC receives
//! one alert and its updates (revisions), and an alert's severity is the
//! highest of its revisions.
//!
//! The label, benign-case and run-metadata records are defined here and
//! written by [`crate::generate`], so the two sides cannot drift apart. The
//! scorecard is rendered here too, as the full table of `keywatch eval` and
//! as the brief one the demo prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Digest, Severity};
use crate::detector::Detector;
use crate::event::parse_ts;

/// Command-line options of `keywatch eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Alerts to score (JSON lines, as written by `keywatch replay`).
    #[arg(long)]
    pub alerts: PathBuf,
    /// Labelled incidents (labels.jsonl from `keywatch generate`); meta.json
    /// and benign.jsonl are read from the same folder when present.
    #[arg(long)]
    pub labels: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// How long after an incident's last attacker call an alert still counts
    /// as detecting it.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Alerts below this severity are reported but counted neither as
    /// detections nor as false alerts.
    #[arg(long, default_value = "medium", value_parser = parse_severity)]
    pub min_severity: Severity,
    /// Judged key-days to normalise false alerts by (overrides meta.json).
    #[arg(long)]
    pub key_days: Option<u64>,
    /// Daily digests of low findings to count beside the alerts; by default
    /// digests.jsonl beside the alerts file, when present.
    #[arg(long)]
    pub digests: Option<PathBuf>,
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    Severity::parse(text).ok_or_else(|| format!("unknown severity {text:?}: expected low, medium, high or critical"))
}

/// Why scoring could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: field {field} is not an RFC 3339 time: {value:?}")]
    BadTime {
        path: PathBuf,
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("cannot write the scorecard: {0}")]
    Write(#[source] serde_json::Error),
}

/// One injected incident (a line of labels.jsonl).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub id: String,
    pub scenario: String,
    /// The raw key id. Labels are test data about synthetic keys; alerts
    /// name keys only by fingerprint.
    pub key: String,
    pub key_fingerprint: String,
    /// First attacker call (RFC 3339).
    pub start: String,
    /// Last attacker call (RFC 3339).
    pub end: String,
    /// What the incident was, for a person reading the file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
    /// The detectors whose alerts count as detecting the incident; empty
    /// (as in label files written before the list existed) means any.
    #[serde(default)]
    pub detectors: Vec<Detector>,
}

impl Label {
    /// Whether an alert of `detector` may count as detecting the incident.
    pub fn detected_by(&self, detector: Detector) -> bool {
        self.detectors.is_empty() || self.detectors.contains(&detector)
    }
}

/// One benign hard case (a line of benign.jsonl): traffic that is unusual
/// but legitimate, on which a good detector stays quiet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenignCase {
    pub id: String,
    pub case: String,
    pub key: String,
    pub key_fingerprint: String,
    /// Span in which the unusual-but-benign behaviour is present.
    pub start: String,
    pub end: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

/// What a generated run contains (meta.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub keys: u64,
    pub days: u64,
    pub seed: u64,
    pub start: String,
    pub end: String,
    pub events: u64,
    /// Key-days with traffic outside incident windows.
    pub benign_key_days: u64,
    /// Benign key-days with traffic at least the learning period (3 days,
    /// the longest `min_age` in models/default.toml) after the key's first
    /// call: the denominator of the false-alert rates. Absent in runs
    /// generated before it was counted.
    #[serde(default)]
    pub judged_key_days: Option<u64>,
    #[serde(default)]
    pub incidents: u64,
    #[serde(default)]
    pub benign_cases: u64,
    #[serde(default)]
    pub generator: String,
}

/// How to score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOptions {
    pub grace: Duration,
    pub min_severity: Severity,
    /// Overrides the meta's judged key-days.
    pub key_days: Option<u64>,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            grace: Duration::from_secs(3600),
            min_severity: Severity::Medium,
            key_days: None,
        }
    }
}

/// The result of scoring, as printed by `eval` and the demo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scorecard {
    pub incidents: usize,
    /// Incidents with a counted alert of one of their detectors.
    pub detected: usize,
    /// Detected / incidents; null without incidents.
    pub recall: Option<f64>,
    /// Incidents one of their detectors reached only below the minimum
    /// severity (at the default minimum: only at low).
    pub incidents_only_below_min_severity: usize,
    /// Event time from an incident's start to its first matching alert.
    pub median_time_to_detect_s: Option<f64>,
    pub p95_time_to_detect_s: Option<f64>,
    /// Distinct alerts (by id): what a SOC is sent, updates not counted.
    pub alerts_total: usize,
    /// Alert lines read: first revisions and updates.
    pub alert_lines: usize,
    /// Alerts and false alerts of each severity, lowest first.
    pub alerts_by_severity: Vec<SeverityCount>,
    /// Alerts at or above the minimum severity.
    pub alerts_counted: usize,
    /// Alerts below the minimum severity: reported, not scored.
    pub alerts_below_min_severity: usize,
    /// Counted alerts of an incident's detectors inside its window.
    pub alerts_matched: usize,
    /// Counted alerts inside an incident's window from a detector it does
    /// not list: neither detections nor false alerts.
    pub alerts_in_incident_other_detector: usize,
    /// Counted alerts inside no incident's window: the false alerts.
    pub alerts_unmatched: usize,
    /// Counted alerts that are not false / counted; null without counted
    /// alerts.
    pub precision: Option<f64>,
    pub benign_key_days: Option<u64>,
    /// The denominator of the false-alert rates (meta.json or --key-days).
    pub judged_key_days: Option<u64>,
    /// Counted false alerts per 1,000 judged key-days.
    pub false_alerts_per_1k_judged_key_days: Option<f64>,
    /// False alerts of every severity.
    pub false_alerts_all_severities: usize,
    pub false_alerts_all_severities_per_1k_judged_key_days: Option<f64>,
    /// Every alert, true or false, of every severity: what a SOC receives.
    pub alerts_all_severities_per_1k_judged_key_days: Option<f64>,
    /// Daily digests of low findings (a report read once a day, not alerts),
    /// and the low findings they fold.
    pub digests: usize,
    pub digest_findings: u64,
    pub digests_per_1k_judged_key_days: Option<f64>,
    pub min_severity: Severity,
    pub grace_s: u64,
    pub scenarios: BTreeMap<String, ScenarioScore>,
    pub benign_cases: BTreeMap<String, BenignCaseScore>,
    pub incident_outcomes: Vec<IncidentOutcome>,
}

/// Detection of one scenario's incidents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioScore {
    pub incidents: usize,
    pub detected: usize,
    /// Incidents reached by their detectors only below the minimum severity.
    pub only_below_min_severity: usize,
    pub recall: Option<f64>,
    pub median_time_to_detect_s: Option<f64>,
    /// The detectors that may detect the scenario (from its first label);
    /// empty means any.
    pub counting_detectors: Vec<String>,
    /// Detector name -> counted alerts it raised inside the incidents'
    /// windows, whether or not it may detect the scenario.
    pub detectors: BTreeMap<String, usize>,
}

/// Alerts of one severity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeverityCount {
    pub severity: Severity,
    pub alerts: usize,
    /// Alerts inside no incident's window on their key.
    pub false_alerts: usize,
}

/// Alerts on one kind of benign hard case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenignCaseScore {
    pub cases: usize,
    /// Counted alerts (at or above the minimum severity) in the cases' spans.
    pub alerts: usize,
    /// Cases with at least one counted alert.
    pub cases_alerted: usize,
    /// Alerts below the minimum severity in the cases' spans.
    pub low_alerts: usize,
    pub detectors: BTreeMap<String, usize>,
}

/// What happened to one incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentOutcome {
    pub id: String,
    pub scenario: String,
    pub key_fingerprint: String,
    pub detected: bool,
    /// Not detected, but one of its detectors alerted below the minimum
    /// severity.
    pub only_below_min_severity: bool,
    pub time_to_detect_s: Option<f64>,
    pub detectors: Vec<String>,
}

/// A label or case window in epoch milliseconds; `None` when unparsable,
/// which then matches nothing.
fn window_ms(start: &str, end: &str, grace_ms: i64) -> Option<(i64, i64)> {
    Some((parse_ts(start)?, parse_ts(end)?.saturating_add(grace_ms)))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], fraction: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ratio(numerator: usize, denominator: usize) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Every severity, lowest first.
const SEVERITIES: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

/// Per 1,000 of `key_days`; `None` without key-days.
fn per_1k(count: usize, key_days: Option<u64>) -> Option<f64> {
    key_days
        .filter(|&days| days > 0)
        .map(|days| count as f64 * 1000.0 / days as f64)
}

/// Scores `alerts` against `labels`; `benign_cases` and `meta` add the
/// hard-case table and the false-alert rates.
pub fn score(
    alerts: &[Alert],
    labels: &[Label],
    benign_cases: &[BenignCase],
    meta: Option<&RunMeta>,
    options: &ScoreOptions,
) -> Scorecard {
    score_with_digests(alerts, &[], labels, benign_cases, meta, options)
}

/// [`score`], also counting the daily digests of low findings: an incident
/// whose detectors appear only in a digest was reached only at low, and
/// digest findings in a benign case's span are its low findings.
pub fn score_with_digests(
    alerts: &[Alert],
    digests: &[Digest],
    labels: &[Label],
    benign_cases: &[BenignCase],
    meta: Option<&RunMeta>,
    options: &ScoreOptions,
) -> Scorecard {
    // Per key: (detector, first, last, count) of every digest entry.
    let mut digest_entries: BTreeMap<&str, Vec<(Detector, i64, i64, u64)>> = BTreeMap::new();
    for digest in digests {
        for entry in &digest.entries {
            if let (Some(first), Some(last)) = (parse_ts(&entry.first), parse_ts(&entry.last)) {
                digest_entries
                    .entry(digest.key_fingerprint.as_str())
                    .or_default()
                    .push((entry.detector, first, last, entry.count));
            }
        }
    }
    let digest_entries_in = |fingerprint: &str, window: Option<(i64, i64)>| -> Vec<(Detector, u64)> {
        let Some((from, until)) = window else {
            return Vec::new();
        };
        digest_entries
            .get(fingerprint)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|(_, first, last, _)| *last >= from && *first <= until)
                    .map(|(detector, _, _, count)| (*detector, *count))
                    .collect()
            })
            .unwrap_or_default()
    };
    let alert_lines = alerts.len();
    let distinct = distinct_alerts(alerts);
    let alerts = &distinct[..];
    let grace_ms = i64::try_from(options.grace.as_millis()).unwrap_or(i64::MAX);
    let alert_times: Vec<Option<i64>> = alerts.iter().map(|alert| parse_ts(&alert.ts)).collect();
    let counted = |position: usize| alerts[position].severity >= options.min_severity;

    // An alert of the view across keys is about every key it lists.
    let mut alerts_by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (position, alert) in alerts.iter().enumerate() {
        let listed = alert.keys.iter().filter(|key| **key != alert.key_fingerprint);
        for fingerprint in std::iter::once(&alert.key_fingerprint).chain(listed) {
            let positions = alerts_by_key.entry(fingerprint.as_str()).or_default();
            if positions.last() != Some(&position) {
                positions.push(position);
            }
        }
    }
    let alerts_in = |fingerprint: &str, window: Option<(i64, i64)>| -> Vec<usize> {
        let Some((from, until)) = window else {
            return Vec::new();
        };
        alerts_by_key
            .get(fingerprint)
            .map(|positions| {
                positions
                    .iter()
                    .copied()
                    .filter(|&position| alert_times[position].is_some_and(|ts| ts >= from && ts <= until))
                    .collect()
            })
            .unwrap_or_default()
    };

    // An alert inside an incident's window is no false alert whatever its
    // detector; it detects the incident only when its detector is one the
    // scenario names.
    let mut in_incident = vec![false; alerts.len()];
    let mut detecting = vec![false; alerts.len()];
    let mut outcomes = Vec::with_capacity(labels.len());
    for label in labels {
        let window = window_ms(&label.start, &label.end, grace_ms);
        let in_window = alerts_in(&label.key_fingerprint, window);
        let mut matching = Vec::new();
        let mut detected_at_any_severity = false;
        for position in in_window {
            in_incident[position] = true;
            if !label.detected_by(alerts[position].detector) {
                continue;
            }
            detecting[position] = true;
            detected_at_any_severity = true;
            if counted(position) {
                matching.push(position);
            }
        }
        if digest_entries_in(&label.key_fingerprint, window)
            .iter()
            .any(|(detector, _)| label.detected_by(*detector))
        {
            detected_at_any_severity = true;
        }
        let first_alert_ms = matching.iter().filter_map(|&position| alert_times[position]).min();
        let time_to_detect_s = match (first_alert_ms, window) {
            (Some(first), Some((start, _))) => Some((first - start) as f64 / 1000.0),
            _ => None,
        };
        let detectors: BTreeSet<String> = matching
            .iter()
            .map(|&position| alerts[position].detector.to_string())
            .collect();
        outcomes.push(IncidentOutcome {
            id: label.id.clone(),
            scenario: label.scenario.clone(),
            key_fingerprint: label.key_fingerprint.clone(),
            detected: !matching.is_empty(),
            only_below_min_severity: matching.is_empty() && detected_at_any_severity,
            time_to_detect_s,
            detectors: detectors.into_iter().collect(),
        });
    }

    let mut scenarios: BTreeMap<String, ScenarioScore> = BTreeMap::new();
    let mut scenario_ttd: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (label, outcome) in labels.iter().zip(&outcomes) {
        let entry = scenarios
            .entry(label.scenario.clone())
            .or_insert_with(|| ScenarioScore {
                incidents: 0,
                detected: 0,
                only_below_min_severity: 0,
                recall: None,
                median_time_to_detect_s: None,
                counting_detectors: label.detectors.iter().map(|detector| detector.to_string()).collect(),
                detectors: BTreeMap::new(),
            });
        entry.incidents += 1;
        if outcome.detected {
            entry.detected += 1;
        }
        if outcome.only_below_min_severity {
            entry.only_below_min_severity += 1;
        }
        if let Some(ttd) = outcome.time_to_detect_s {
            scenario_ttd.entry(label.scenario.clone()).or_default().push(ttd);
        }
        let window = window_ms(&label.start, &label.end, grace_ms);
        for position in alerts_in(&label.key_fingerprint, window) {
            if counted(position) {
                *entry
                    .detectors
                    .entry(alerts[position].detector.to_string())
                    .or_default() += 1;
            }
        }
    }
    for (name, entry) in &mut scenarios {
        entry.recall = ratio(entry.detected, entry.incidents);
        let mut times = scenario_ttd.remove(name).unwrap_or_default();
        times.sort_by(f64::total_cmp);
        entry.median_time_to_detect_s = percentile(&times, 0.5);
    }

    let mut benign_scores: BTreeMap<String, BenignCaseScore> = BTreeMap::new();
    for case in benign_cases {
        let entry = benign_scores
            .entry(case.case.clone())
            .or_insert_with(|| BenignCaseScore {
                cases: 0,
                alerts: 0,
                cases_alerted: 0,
                low_alerts: 0,
                detectors: BTreeMap::new(),
            });
        entry.cases += 1;
        let window = window_ms(&case.start, &case.end, grace_ms);
        let mut alerted = false;
        for position in alerts_in(&case.key_fingerprint, window) {
            if counted(position) {
                entry.alerts += 1;
                alerted = true;
                *entry
                    .detectors
                    .entry(alerts[position].detector.to_string())
                    .or_default() += 1;
            } else {
                entry.low_alerts += 1;
            }
        }
        entry.low_alerts += digest_entries_in(&case.key_fingerprint, window)
            .iter()
            .map(|(_, count)| *count as usize)
            .sum::<usize>();
        if alerted {
            entry.cases_alerted += 1;
        }
    }

    let alerts_by_severity: Vec<SeverityCount> = SEVERITIES
        .iter()
        .map(|&severity| {
            let of_severity = || (0..alerts.len()).filter(move |&position| alerts[position].severity == severity);
            SeverityCount {
                severity,
                alerts: of_severity().count(),
                false_alerts: of_severity().filter(|&position| !in_incident[position]).count(),
            }
        })
        .collect();
    let count_where = |keep: &dyn Fn(usize) -> bool| (0..alerts.len()).filter(|&position| keep(position)).count();
    let alerts_counted = count_where(&counted);
    let alerts_matched = count_where(&|position| counted(position) && detecting[position]);
    let alerts_in_incident_other_detector =
        count_where(&|position| counted(position) && in_incident[position] && !detecting[position]);
    let alerts_unmatched = count_where(&|position| counted(position) && !in_incident[position]);
    let false_alerts_all_severities = count_where(&|position| !in_incident[position]);
    let benign_key_days = meta.map(|meta| meta.benign_key_days);
    let judged_key_days = options.key_days.or(meta.and_then(|meta| meta.judged_key_days));
    let mut times: Vec<f64> = outcomes.iter().filter_map(|outcome| outcome.time_to_detect_s).collect();
    times.sort_by(f64::total_cmp);
    let detected = outcomes.iter().filter(|outcome| outcome.detected).count();

    Scorecard {
        incidents: labels.len(),
        detected,
        recall: ratio(detected, labels.len()),
        incidents_only_below_min_severity: outcomes
            .iter()
            .filter(|outcome| outcome.only_below_min_severity)
            .count(),
        median_time_to_detect_s: percentile(&times, 0.5),
        p95_time_to_detect_s: percentile(&times, 0.95),
        alerts_total: alerts.len(),
        alert_lines,
        alerts_by_severity,
        alerts_counted,
        alerts_below_min_severity: alerts.len() - alerts_counted,
        alerts_matched,
        alerts_in_incident_other_detector,
        alerts_unmatched,
        precision: ratio(alerts_counted - alerts_unmatched, alerts_counted),
        benign_key_days,
        judged_key_days,
        false_alerts_per_1k_judged_key_days: per_1k(alerts_unmatched, judged_key_days),
        false_alerts_all_severities,
        false_alerts_all_severities_per_1k_judged_key_days: per_1k(false_alerts_all_severities, judged_key_days),
        alerts_all_severities_per_1k_judged_key_days: per_1k(alerts.len(), judged_key_days),
        digests: digests.len(),
        digest_findings: digests.iter().map(|digest| digest.findings).sum(),
        digests_per_1k_judged_key_days: per_1k(digests.len(), judged_key_days),
        min_severity: options.min_severity,
        grace_s: options.grace.as_secs(),
        scenarios,
        benign_cases: benign_scores,
        incident_outcomes: outcomes,
    }
}

/// One alert per id, as the SOC keeps it: repeats of a finding go out as
/// updates (the same id, a higher revision), and so do the later alerts of
/// a spray incident. Each keeps its first line's time and window (when it
/// was raised), the highest severity of its lines (severity only rises)
/// and every key any of them listed; ids keep the order they first appear
/// in. Old files, whose ids never repeat, are unchanged.
pub fn distinct_alerts(alerts: &[Alert]) -> Vec<Alert> {
    let mut position_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut distinct: Vec<Alert> = Vec::new();
    for alert in alerts {
        match position_of.get(alert.id.as_str()) {
            None => {
                position_of.insert(alert.id.as_str(), distinct.len());
                distinct.push(alert.clone());
            }
            Some(&position) => {
                let kept = &mut distinct[position];
                kept.severity = kept.severity.max(alert.severity);
                kept.revision = kept.revision.max(alert.revision);
                kept.count = kept.count.max(alert.count);
                kept.peak_score = kept.peak_score.max(alert.peak_score).max(alert.score);
                for key in &alert.keys {
                    if !kept.keys.contains(key) {
                        kept.keys.push(key.clone());
                    }
                }
            }
        }
    }
    distinct
}

/// `4m 12s`, `1h 03m`, `12s`, or `-` when absent.
fn human_duration(seconds: Option<f64>) -> String {
    let Some(seconds) = seconds else {
        return "-".to_string();
    };
    let whole = seconds.round() as i64;
    if whole < 60 {
        return format!("{whole}s");
    }
    if whole < 3600 {
        return format!("{}m {:02}s", whole / 60, whole % 60);
    }
    format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60)
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{:.1}%", value * 100.0))
}

fn detector_list(detectors: &BTreeMap<String, usize>) -> String {
    if detectors.is_empty() {
        return "-".to_string();
    }
    detectors
        .iter()
        .map(|(name, count)| format!("{name}({count})"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scorecard as tables for a terminal.
pub fn render_table(card: &Scorecard) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Incidents        {} detected of {}  recall {}  (by their scenario's detectors, severity >= {})",
        card.detected,
        card.incidents,
        percent(card.recall),
        card.min_severity.as_str()
    );
    let _ = writeln!(
        out,
        "                 {} more reached only below {}",
        card.incidents_only_below_min_severity,
        card.min_severity.as_str()
    );
    let _ = writeln!(
        out,
        "Time to detect   median {}  p95 {}  (event time, first matching alert - incident start)",
        human_duration(card.median_time_to_detect_s),
        human_duration(card.p95_time_to_detect_s)
    );
    let _ = writeln!(
        out,
        "Alerts           {} counted (severity >= {}, grace {}), {} detected an incident, {} in an incident from another detector, {} in none",
        card.alerts_counted,
        card.min_severity.as_str(),
        human_duration(Some(card.grace_s as f64)),
        card.alerts_matched,
        card.alerts_in_incident_other_detector,
        card.alerts_unmatched
    );
    let _ = writeln!(
        out,
        "                 {} below {} not counted",
        card.alerts_below_min_severity,
        card.min_severity.as_str()
    );
    let _ = writeln!(out, "Precision        {}", percent(card.precision));
    let rate = |rate: Option<f64>| rate.map_or_else(|| "-".to_string(), |rate| format!("{rate:.2}"));
    let _ = writeln!(
        out,
        "False alerts     {} per 1,000 judged key-days at severity >= {} ({}), {} at all severities ({})",
        rate(card.false_alerts_per_1k_judged_key_days),
        card.min_severity.as_str(),
        card.alerts_unmatched,
        rate(card.false_alerts_all_severities_per_1k_judged_key_days),
        card.false_alerts_all_severities
    );
    let _ = writeln!(
        out,
        "All alerts       {} per 1,000 judged key-days, every severity, true or false ({} distinct ids, {} lines with updates)",
        rate(card.alerts_all_severities_per_1k_judged_key_days),
        card.alerts_total,
        card.alert_lines
    );
    let _ = writeln!(
        out,
        "Digests          {} per 1,000 judged key-days ({} daily digests folding {} low findings)",
        rate(card.digests_per_1k_judged_key_days),
        card.digests,
        card.digest_findings
    );
    match card.judged_key_days {
        Some(days) => {
            let _ = writeln!(
                out,
                "                 over {days} judged key-days (benign key-days after each key's learning period)"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "                 no judged key-days known: pass --key-days or keep a current meta.json beside the labels"
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<28} {:>9} {:>12}", "severity", "alerts", "false alerts");
    for row in &card.alerts_by_severity {
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>12}",
            row.severity.as_str(),
            row.alerts,
            row.false_alerts
        );
    }

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>7} {:>10} {:>11}  alerts in window by detector",
        "scenario", "incidents", "detected", "recall", "only below", "median ttd"
    );
    for (name, scenario) in &card.scenarios {
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>9} {:>7} {:>10} {:>11}  {}",
            name,
            scenario.incidents,
            scenario.detected,
            percent(scenario.recall),
            scenario.only_below_min_severity,
            human_duration(scenario.median_time_to_detect_s),
            detector_list(&scenario.detectors)
        );
    }

    if !card.benign_cases.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>7} {:>8} {:>10}  detectors",
            "benign hard case", "cases", "alerts", "alerted", "low alerts"
        );
        for (name, case) in &card.benign_cases {
            let _ = writeln!(
                out,
                "{:<28} {:>6} {:>7} {:>8} {:>10}  {}",
                name,
                case.cases,
                case.alerts,
                case.cases_alerted,
                case.low_alerts,
                detector_list(&case.detectors)
            );
        }
    }
    out
}

/// Width of the terminal the demo's live view and [`render_brief`] assume.
pub const BRIEF_WIDTH: usize = 80;

/// The scorecard as the demo prints it under its live view: each incident
/// detected or missed with its time to detect and first detectors (one line
/// each, cut to [`BRIEF_WIDTH`]), then the totals. [`render_table`] is the
/// full table `keywatch eval` prints.
pub fn render_brief(card: &Scorecard) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scorecard (keywatch eval, severity >= {})",
        card.min_severity.as_str()
    );
    let _ = writeln!(out, "{:<26} {:<9} {:>9}  detectors", "incident", "result", "detect in");
    for outcome in &card.incident_outcomes {
        let result = if outcome.detected { "detected" } else { "MISSED" };
        let detectors: Vec<&str> = outcome.detectors.iter().take(3).map(String::as_str).collect();
        let line = format!(
            "{:<26} {:<9} {:>9}  {}",
            outcome.scenario,
            result,
            human_duration(outcome.time_to_detect_s),
            detectors.join(", ")
        );
        let _ = writeln!(out, "{}", fit_line(&line, BRIEF_WIDTH));
    }
    let _ = writeln!(
        out,
        "recall {} ({} of {}), precision {}, false alerts {:.2} per 1,000 judged key-days",
        percent(card.recall),
        card.detected,
        card.incidents,
        percent(card.precision),
        card.false_alerts_per_1k_judged_key_days.unwrap_or(0.0),
    );
    let alerted: usize = card.benign_cases.values().map(|case| case.cases_alerted).sum();
    let cases: usize = card.benign_cases.values().map(|case| case.cases).sum();
    let _ = writeln!(
        out,
        "benign hard cases alerted: {alerted} of {cases}; alerts below {}: {}",
        card.min_severity.as_str(),
        card.alerts_below_min_severity
    );
    let _ = writeln!(
        out,
        "all severities: {:.2} false/1k judged key-days; {} incidents only below {}",
        card.false_alerts_all_severities_per_1k_judged_key_days.unwrap_or(0.0),
        card.incidents_only_below_min_severity,
        card.min_severity.as_str()
    );
    out
}

/// Cuts `line` to `width` characters, the last one an ellipsis when cut.
pub fn fit_line(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Reads a JSON-lines file of `T`, skipping blank lines.
pub fn read_json_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, EvalError> {
    let file = File::open(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut records = Vec::new();
    for (line_index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| EvalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|source| EvalError::Parse {
            path: path.to_path_buf(),
            line: line_index + 1,
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Reads labels and checks that their times parse, so a typo in a
/// hand-written label file is reported rather than scored as a miss.
pub fn read_labels(path: &Path) -> Result<Vec<Label>, EvalError> {
    let labels: Vec<Label> = read_json_lines(path)?;
    for (position, label) in labels.iter().enumerate() {
        check_time(path, position, "start", &label.start)?;
        check_time(path, position, "end", &label.end)?;
    }
    Ok(labels)
}

/// Reads benign cases, checking times as [`read_labels`] does.
pub fn read_benign_cases(path: &Path) -> Result<Vec<BenignCase>, EvalError> {
    let cases: Vec<BenignCase> = read_json_lines(path)?;
    for (position, case) in cases.iter().enumerate() {
        check_time(path, position, "start", &case.start)?;
        check_time(path, position, "end", &case.end)?;
    }
    Ok(cases)
}

fn check_time(path: &Path, position: usize, field: &'static str, value: &str) -> Result<(), EvalError> {
    if parse_ts(value).is_some() {
        return Ok(());
    }
    Err(EvalError::BadTime {
        path: path.to_path_buf(),
        line: position + 1,
        field,
        value: value.to_string(),
    })
}

pub fn read_meta(path: &Path) -> Result<RunMeta, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| EvalError::Parse {
        path: path.to_path_buf(),
        line: 1,
        source,
    })
}

/// Labels of a run with what lies beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledRun {
    pub labels: Vec<Label>,
    /// From benign.jsonl beside the labels; empty when absent.
    pub benign_cases: Vec<BenignCase>,
    /// From meta.json beside the labels.
    pub meta: Option<RunMeta>,
}

/// Reads `labels_path` and, when present, meta.json and benign.jsonl from
/// the same folder.
pub fn load_labelled_run(labels_path: &Path) -> Result<LabelledRun, EvalError> {
    let labels = read_labels(labels_path)?;
    let folder = labels_path.parent().unwrap_or(Path::new("."));
    let meta_path = folder.join("meta.json");
    let meta = if meta_path.exists() {
        Some(read_meta(&meta_path)?)
    } else {
        None
    };
    let benign_path = folder.join("benign.jsonl");
    let benign_cases = if benign_path.exists() {
        read_benign_cases(&benign_path)?
    } else {
        Vec::new()
    };
    Ok(LabelledRun {
        labels,
        benign_cases,
        meta,
    })
}

/// Runs the command.
pub fn run_cli(args: &EvalArgs) -> Result<(), EvalError> {
    let alerts: Vec<Alert> = read_json_lines(&args.alerts)?;
    let beside_alerts = args.alerts.with_file_name("digests.jsonl");
    let digests: Vec<Digest> = match &args.digests {
        Some(path) => read_json_lines(path)?,
        None if beside_alerts.is_file() => read_json_lines(&beside_alerts)?,
        None => Vec::new(),
    };
    let run = load_labelled_run(&args.labels)?;
    let options = ScoreOptions {
        grace: args.grace,
        min_severity: args.min_severity,
        key_days: args.key_days,
    };
    let card = score_with_digests(
        &alerts,
        &digests,
        &run.labels,
        &run.benign_cases,
        run.meta.as_ref(),
        &options,
    );
    if args.json {
        let text = serde_json::to_string_pretty(&card).map_err(EvalError::Write)?;
        println!("{text}");
    } else {
        print!("{}", render_table(&card));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Window;

    fn alert(fingerprint: &str, ts: &str, severity: Severity, detector: &str) -> Alert {
        Alert {
            id: format!("al_{fingerprint}_{ts}_{detector}"),
            incident_id: String::new(),
            key_fingerprint: fingerprint.to_string(),
            key_hint: "****".to_string(),
            keys: Vec::new(),
            detector: detector.parse().expect("a registered detector"),
            severity,
            score: 0.9,
            ts: ts.to_string(),
            window: Window {
                start: ts.to_string(),
                end: ts.to_string(),
            },
            summary: String::new(),
            evidence: serde_json::Value::Null,
            model: "test".to_string(),
            owner: None,
            revision: 1,
            count: 1,
            first_seen: String::new(),
            last_seen: String::new(),
            peak_score: 0.0,
        }
    }

    fn label(id: &str, scenario: &str, fingerprint: &str, start: &str, end: &str) -> Label {
        Label {
            id: id.to_string(),
            scenario: scenario.to_string(),
            key: String::new(),
            key_fingerprint: fingerprint.to_string(),
            start: start.to_string(),
            end: end.to_string(),
            notes: String::new(),
            detectors: Vec::new(),
        }
    }

    #[test]
    fn grace_period_extends_the_window_and_severity_filters() {
        let labels = [label("i1", "s", "kf_a", "2026-01-08T10:00:00Z", "2026-01-08T10:30:00Z")];
        let late = [alert("kf_a", "2026-01-08T11:20:00Z", Severity::High, "new_country")];
        let card = score(&late, &labels, &[], None, &ScoreOptions::default());
        assert_eq!(
            card.detected, 1,
            "50 minutes after the end is inside the default 1h grace"
        );
        assert_eq!(card.median_time_to_detect_s, Some(4800.0));
        let card = score(
            &[alert("kf_a", "2026-01-08T11:40:00Z", Severity::High, "new_country")],
            &labels,
            &[],
            None,
            &ScoreOptions::default(),
        );
        assert_eq!(card.detected, 0);
        assert_eq!(card.alerts_unmatched, 1);
        let low = [alert("kf_a", "2026-01-08T10:05:00Z", Severity::Low, "new_country")];
        let card = score(&low, &labels, &[], None, &ScoreOptions::default());
        assert_eq!(
            (card.detected, card.alerts_counted, card.alerts_below_min_severity),
            (0, 0, 1)
        );
        let options = ScoreOptions {
            min_severity: Severity::Low,
            ..ScoreOptions::default()
        };
        let card = score(&low, &labels, &[], None, &options);
        assert_eq!(card.detected, 1);
        assert_eq!(card.median_time_to_detect_s, Some(300.0));
    }

    #[test]
    fn alert_before_the_start_does_not_detect() {
        let labels = [label("i1", "s", "kf_a", "2026-01-08T10:00:00Z", "2026-01-08T10:30:00Z")];
        let early = [alert("kf_a", "2026-01-08T09:59:59Z", Severity::Critical, "rate_spike")];
        let card = score(&early, &labels, &[], None, &ScoreOptions::default());
        assert_eq!(card.detected, 0);
        assert_eq!(card.precision, Some(0.0));
    }

    fn meta(benign_key_days: u64, judged_key_days: Option<u64>) -> RunMeta {
        RunMeta {
            keys: 10,
            days: 10,
            seed: 1,
            start: "2026-01-05T00:00:00Z".to_string(),
            end: "2026-01-15T00:00:00Z".to_string(),
            events: 0,
            benign_key_days,
            judged_key_days,
            incidents: 0,
            benign_cases: 0,
            generator: String::new(),
        }
    }

    #[test]
    fn false_alerts_are_per_judged_key_day_at_the_minimum_and_at_all_severities() {
        let alerts = [
            alert("kf_a", "2026-01-08T10:00:00Z", Severity::High, "new_country"),
            alert("kf_b", "2026-01-08T10:00:00Z", Severity::Low, "new_asn"),
            alert("kf_b", "2026-01-09T10:00:00Z", Severity::Low, "new_client"),
        ];
        let card = score(&alerts, &[], &[], Some(&meta(800, Some(500))), &ScoreOptions::default());
        assert_eq!(card.benign_key_days, Some(800));
        assert_eq!(card.judged_key_days, Some(500), "learning days are not the denominator");
        assert_eq!(card.false_alerts_per_1k_judged_key_days, Some(2.0));
        assert_eq!(card.false_alerts_all_severities, 3);
        assert_eq!(card.false_alerts_all_severities_per_1k_judged_key_days, Some(6.0));
        let low = &card.alerts_by_severity[0];
        assert_eq!((low.severity, low.alerts, low.false_alerts), (Severity::Low, 2, 2));
        assert_eq!(card.alerts_by_severity.len(), 4);

        let card = score(&alerts, &[], &[], Some(&meta(800, None)), &ScoreOptions::default());
        assert_eq!(
            card.false_alerts_per_1k_judged_key_days, None,
            "an old meta without judged key-days gives no rate rather than a diluted one"
        );
        let overridden = ScoreOptions {
            key_days: Some(1000),
            ..ScoreOptions::default()
        };
        let card = score(&alerts, &[], &[], Some(&meta(800, None)), &overridden);
        assert_eq!(card.false_alerts_all_severities_per_1k_judged_key_days, Some(3.0));
    }

    #[test]
    fn only_the_scenarios_detectors_detect_it() {
        let mut travel = label(
            "i1",
            "impossible_travel",
            "kf_a",
            "2026-01-08T10:00:00Z",
            "2026-01-08T10:30:00Z",
        );
        travel.detectors = vec![Detector::ImpossibleTravel, Detector::NewCountry];
        let labels = [travel];
        let unrelated = [alert("kf_a", "2026-01-08T10:05:00Z", Severity::High, "new_client")];
        let card = score(&unrelated, &labels, &[], None, &ScoreOptions::default());
        assert_eq!(card.detected, 0, "an unrelated detector does not detect");
        assert_eq!(card.alerts_in_incident_other_detector, 1);
        assert_eq!(card.alerts_unmatched, 0, "nor is its alert false: the key was misused");
        assert_eq!(card.precision, Some(1.0));

        let both = [
            unrelated[0].clone(),
            alert("kf_a", "2026-01-08T10:12:00Z", Severity::Medium, "new_country"),
        ];
        let card = score(&both, &labels, &[], None, &ScoreOptions::default());
        assert_eq!(card.detected, 1);
        assert_eq!(
            card.median_time_to_detect_s,
            Some(720.0),
            "timed from its own detector's alert"
        );
        assert_eq!(card.incident_outcomes[0].detectors, ["new_country"]);

        let mut any = labels[0].clone();
        any.detectors.clear();
        let card = score(&unrelated, &[any], &[], None, &ScoreOptions::default());
        assert_eq!(card.detected, 1, "a label without detectors takes any");
    }

    #[test]
    fn incidents_reached_only_at_low_are_counted() {
        let mut labels = [
            label("i1", "s", "kf_a", "2026-01-08T10:00:00Z", "2026-01-08T10:30:00Z"),
            label("i2", "s", "kf_b", "2026-01-08T10:00:00Z", "2026-01-08T10:30:00Z"),
            label("i3", "s", "kf_c", "2026-01-08T10:00:00Z", "2026-01-08T10:30:00Z"),
        ];
        for label in &mut labels {
            label.detectors = vec![Detector::NewCountry];
        }
        let alerts = [
            // i1: low only.
            alert("kf_a", "2026-01-08T10:05:00Z", Severity::Low, "new_country"),
            // i2: low and medium: detected, not "only low".
            alert("kf_b", "2026-01-08T10:05:00Z", Severity::Low, "new_country"),
            alert("kf_b", "2026-01-08T10:06:00Z", Severity::Medium, "new_country"),
            // i3: low from a detector it does not list: reached by nothing.
            alert("kf_c", "2026-01-08T10:05:00Z", Severity::Low, "new_client"),
        ];
        let card = score(&alerts, &labels, &[], None, &ScoreOptions::default());
        assert_eq!(card.detected, 1);
        assert_eq!(card.incidents_only_below_min_severity, 1);
        assert_eq!(card.scenarios["s"].only_below_min_severity, 1);
        assert!(card.incident_outcomes[0].only_below_min_severity);
        assert_eq!(card.false_alerts_all_severities, 0);
    }

    #[test]
    fn old_label_and_meta_files_still_load() {
        let old_label = r#"{"id":"i1","scenario":"s","key":"k","key_fingerprint":"kf_a","start":"2026-01-08T10:00:00Z","end":"2026-01-08T10:30:00Z"}"#;
        let label: Label = serde_json::from_str(old_label).expect("a label without detectors loads");
        assert!(label.detectors.is_empty() && label.detected_by(Detector::NewClient));
        let old_meta = r#"{"keys":1,"days":10,"seed":1,"start":"2026-01-05T00:00:00Z","end":"2026-01-15T00:00:00Z","events":5,"benign_key_days":7}"#;
        let meta: RunMeta = serde_json::from_str(old_meta).expect("a meta without judged key-days loads");
        assert_eq!(meta.judged_key_days, None);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&values, 0.5), Some(2.0));
        assert_eq!(percentile(&values, 0.95), Some(4.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(human_duration(Some(252.0)), "4m 12s");
        assert_eq!(human_duration(Some(3780.0)), "1h 03m");
    }

    #[test]
    fn an_alert_about_many_keys_detects_the_incident_of_each() {
        let mut spray = label(
            "i1",
            "key_spray",
            "kf_b",
            "2026-01-08T10:00:00Z",
            "2026-01-08T10:30:00Z",
        );
        spray.detectors = vec![Detector::SourceSpray];
        let mut across = alert("kf_a", "2026-01-08T10:05:00Z", Severity::High, "source_spray");
        across.keys = vec!["kf_a".into(), "kf_b".into(), "kf_c".into()];
        let card = score(&[across], &[spray], &[], None, &ScoreOptions::default());
        assert_eq!(card.detected, 1);
        assert_eq!(card.alerts_matched, 1, "the alert is counted once");
        assert_eq!(card.alerts_total, 1);
    }

    fn digest(fingerprint: &str, detector: Detector, first: &str, count: u64) -> Digest {
        Digest {
            id: "dg_x".into(),
            key_fingerprint: fingerprint.into(),
            key_hint: "****".into(),
            day: first[..10].to_string(),
            findings: count,
            entries: vec![crate::alert::DigestEntry {
                detector,
                subject: String::new(),
                count,
                first: first.into(),
                last: first.into(),
                score: 0.3,
                summary: String::new(),
                evidence: serde_json::json!({}),
            }],
            model: "m".into(),
        }
    }

    #[test]
    fn digests_count_as_low_findings_and_are_reported_apart() {
        let mut travel = label("i1", "s", "kf_a", "2026-01-08T10:00:00Z", "2026-01-08T10:30:00Z");
        travel.detectors = vec![Detector::NewCountry];
        let case = BenignCase {
            id: "b1".into(),
            case: "c".into(),
            key: "k".into(),
            key_fingerprint: "kf_b".into(),
            start: "2026-01-08T00:00:00Z".into(),
            end: "2026-01-09T00:00:00Z".into(),
            notes: String::new(),
        };
        let digests = [
            digest("kf_a", Detector::NewCountry, "2026-01-08T10:10:00Z", 1),
            digest("kf_b", Detector::NewEndpoint, "2026-01-08T12:00:00Z", 3),
        ];
        let card = score_with_digests(
            &[],
            &digests,
            &[travel],
            &[case],
            Some(&meta(1000, Some(500))),
            &ScoreOptions::default(),
        );
        assert_eq!(card.detected, 0);
        assert_eq!(
            card.incidents_only_below_min_severity, 1,
            "seen only in a digest: only at low"
        );
        assert_eq!(card.benign_cases["c"].low_alerts, 3);
        assert_eq!(card.benign_cases["c"].cases_alerted, 0);
        assert_eq!(card.digests, 2);
        assert_eq!(card.digest_findings, 4);
        assert_eq!(card.digests_per_1k_judged_key_days, Some(4.0));
        assert_eq!(card.alerts_all_severities_per_1k_judged_key_days, Some(0.0));
    }
}
