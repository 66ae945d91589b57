//! Analysts' feedback and expectations: verdicts on alerts and keys that
//! the engine applies by event time, so a replay with the same feedback
//! gives the same outputs.
//!
//! An entry names a key (`key_fingerprint`), an alert or an incident
//! (`alert_id`: an `al_` or `in_` id), or both; a verdict
//! (`false_positive`, `expected_change`, `confirmed`); optionally a scope
//! (a detector and a value: a country code, `AS123`, an endpoint, a client
//! family, a finding's subject); `expires`, `analyst`, `note`; and `at`, the
//! event time it takes effect. Expectations ("key K will be used from BR
//! until D") are `expected_change` entries given ahead of time.
//!
//! The engine holds entries until its clock (the newest event time it has
//! judged) reaches `at`, then turns each into rules in its key's state,
//! which snapshots carry:
//! - `false_positive` and `expected_change`: findings in the scope are
//!   dropped until `expires`: the value is known to the key. A scope with a
//!   value and no detector covers every geography detector for a country or
//!   network. Without a scope, an alert's entry takes the alert's detector
//!   and subject (an incident's: those of each of its open alerts), so its
//!   repeats stop.
//! - `confirmed`: findings in the scope (without one, any of the key's) are
//!   raised one severity step and say who confirmed them.
//!
//! Every entry leaves one audit record (`feedback.jsonl` in replay), also
//! when it matched nothing.

use std::collections::VecDeque;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::detector::{Detector, Severity};
use crate::event::{format_ts, parse_ts};

/// Rules kept per key; beyond, the one expiring first gives way.
pub const MAX_RULES_PER_KEY: usize = 32;
/// Entries waiting for their `at`; beyond, the newest are refused (audited).
pub const MAX_PENDING: usize = 65_536;
/// How long an entry without `expires` stays in force.
pub const DEFAULT_EXPIRY_MS: i64 = 30 * 86_400_000;

/// Why feedback cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("cannot read feedback file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("feedback file {path}, line {line}: {detail}")]
    Line { path: String, line: usize, detail: String },
}

/// An analyst's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    FalsePositive,
    ExpectedChange,
    Confirmed,
}

/// What an entry is about: a detector, a value, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<Detector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One feedback entry (a line of a feedback file, a message of the
/// feedback topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// End of the verdict (RFC 3339); absent, 30 days after `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default)]
    pub analyst: String,
    #[serde(default)]
    pub note: String,
    /// Event time the entry takes effect (RFC 3339).
    pub at: String,
}

impl FeedbackEntry {
    /// Parses one JSON line and checks it.
    pub fn parse(line: &str) -> Result<FeedbackEntry, String> {
        let entry: FeedbackEntry = serde_json::from_str(line).map_err(|err| err.to_string())?;
        entry.check()?;
        Ok(entry)
    }

    /// Checks what parsing cannot: times, ids, a target.
    pub fn check(&self) -> Result<(), String> {
        let at_ms = parse_ts(&self.at).ok_or_else(|| format!("`at` {:?} is not an RFC 3339 time", self.at))?;
        if let Some(expires) = &self.expires {
            let until = parse_ts(expires).ok_or_else(|| format!("`expires` {expires:?} is not an RFC 3339 time"))?;
            if until <= at_ms {
                return Err("`expires` is not after `at`".into());
            }
        }
        if self.alert_id.is_none() && self.key_fingerprint.is_none() {
            return Err("needs an `alert_id` or a `key_fingerprint`".into());
        }
        if let Some(id) = &self.alert_id
            && !(id.starts_with("al_") || id.starts_with("in_"))
        {
            return Err(format!("`alert_id` {id:?} is no alert (al_) or incident (in_) id"));
        }
        if let Some(fingerprint) = &self.key_fingerprint
            && !is_fingerprint(fingerprint)
        {
            return Err("`key_fingerprint` is not kf_ and 32 hex digits (raw key ids are not accepted)".into());
        }
        let scoped = self
            .scope
            .as_ref()
            .is_some_and(|scope| scope.detector.is_some() || scope.value.is_some());
        if self.alert_id.is_none() && !scoped && self.verdict != Verdict::Confirmed {
            return Err("a verdict on a whole key needs a scope (a detector, a value or both)".into());
        }
        Ok(())
    }

    /// Event time it takes effect; checked by [`FeedbackEntry::check`].
    pub fn at_ms(&self) -> i64 {
        parse_ts(&self.at).unwrap_or(i64::MAX)
    }

    /// Event time it ends.
    pub fn expires_ms(&self) -> i64 {
        self.expires
            .as_deref()
            .and_then(parse_ts)
            .unwrap_or_else(|| self.at_ms().saturating_add(DEFAULT_EXPIRY_MS))
    }
}

/// Whether `text` is a key fingerprint: `kf_` and 32 lowercase hex digits.
fn is_fingerprint(text: &str) -> bool {
    text.strip_prefix("kf_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')))
}

/// Reads a feedback file of JSON lines (blank lines and `#` comments
/// skipped). A bad line stops the replay: feedback is analysts' intent.
pub fn read_feedback_file(path: &Path) -> Result<Vec<FeedbackEntry>, FeedbackError> {
    let text = std::fs::read_to_string(path).map_err(|source| FeedbackError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = FeedbackEntry::parse(line).map_err(|detail| FeedbackError::Line {
            path: path.display().to_string(),
            line: index + 1,
            detail,
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// What a rule's value is, worked out once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleValue {
    /// Any value.
    Any,
    /// A country code: matches geography findings of calls from (or
    /// travel from) that country, and findings about it.
    Country(String),
    /// `AS123`: likewise for a network.
    Asn(u32),
    /// A finding's subject (an endpoint, a client family, ...).
    Subject(String),
}

impl RuleValue {
    fn of(value: Option<&str>) -> RuleValue {
        let Some(value) = value.map(str::trim).filter(|value| !value.is_empty()) else {
            return RuleValue::Any;
        };
        if value.len() == 2 && value.bytes().all(|byte| byte.is_ascii_alphabetic()) {
            return RuleValue::Country(value.to_ascii_uppercase());
        }
        if let Some(number) = value
            .strip_prefix("AS")
            .or_else(|| value.strip_prefix("as"))
            .and_then(|digits| digits.parse::<u32>().ok())
        {
            return RuleValue::Asn(number);
        }
        RuleValue::Subject(value.to_string())
    }
}

/// One verdict in force on a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<Detector>,
    pub value: RuleValue,
    pub from_ms: i64,
    pub until_ms: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub analyst: String,
}

/// Where the judged call came from, for matching rules on a country or a
/// network: the call's place and, for travel, the place it left.
#[derive(Debug, Clone, Copy, Default)]
pub struct Whereabouts {
    pub country: [u8; 2],
    pub asn: u32,
    pub from: Option<([u8; 2], u32)>,
}

/// What the rules in force do to a finding.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Dropped: a false positive or an expected change.
    Silence,
    /// Raised one step; the analyst who confirmed it.
    Confirm(String),
}

impl Rule {
    fn covers(&self, detector: Detector, subject: &str, place: &Whereabouts) -> bool {
        if self.detector.is_some_and(|own| own != detector) {
            return false;
        }
        let geography = crate::allowlist::is_geography(detector);
        match &self.value {
            RuleValue::Any => true,
            RuleValue::Country(code) => {
                let code = code.as_bytes();
                subject.eq_ignore_ascii_case(&self.value_text())
                    || (geography
                        && (place.country.as_slice() == code
                            || place.from.is_some_and(|(from, _)| from.as_slice() == code)))
            }
            RuleValue::Asn(asn) => {
                subject.eq_ignore_ascii_case(&self.value_text())
                    || subject
                        .strip_prefix(&self.value_text())
                        .is_some_and(|rest| rest.starts_with('/'))
                    || (geography && (place.asn == *asn || place.from.is_some_and(|(_, from)| from == *asn)))
            }
            RuleValue::Subject(text) => subject == text,
        }
    }

    fn value_text(&self) -> String {
        match &self.value {
            RuleValue::Any => String::new(),
            RuleValue::Country(code) => code.clone(),
            RuleValue::Asn(asn) => format!("AS{asn}"),
            RuleValue::Subject(text) => text.clone(),
        }
    }
}

/// A key's rules in force, bounded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyFeedback {
    pub rules: Vec<Rule>,
}

impl KeyFeedback {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Adds a rule, dropping expired ones and, when full, the one expiring
    /// first.
    pub fn add(&mut self, rule: Rule, now_ms: i64) {
        self.rules.retain(|rule| rule.until_ms > now_ms);
        if self.rules.len() >= MAX_RULES_PER_KEY
            && let Some(first) = self
                .rules
                .iter()
                .enumerate()
                .min_by_key(|(index, rule)| (rule.until_ms, *index))
                .map(|(index, _)| index)
        {
            self.rules.remove(first);
        }
        self.rules.push(rule);
    }

    /// What the rules in force at `ts_ms` do to a finding of `detector`
    /// about `subject`: silence wins over confirmation.
    pub fn effect(&mut self, detector: Detector, subject: &str, place: &Whereabouts, ts_ms: i64) -> Option<Effect> {
        if self.rules.iter().any(|rule| rule.until_ms <= ts_ms) {
            self.rules.retain(|rule| rule.until_ms > ts_ms);
        }
        let mut effect = None;
        for rule in self
            .rules
            .iter()
            .filter(|rule| rule.from_ms <= ts_ms && rule.covers(detector, subject, place))
        {
            match rule.verdict {
                Verdict::FalsePositive | Verdict::ExpectedChange => return Some(Effect::Silence),
                Verdict::Confirmed => effect = Some(Effect::Confirm(rule.analyst.clone())),
            }
        }
        effect
    }
}

/// Raises a confirmed finding one step and says in its evidence who
/// confirmed it.
pub fn confirm(severity: &mut Severity, evidence: &mut serde_json::Value, analyst: &str) {
    *severity = match *severity {
        Severity::Low => Severity::Medium,
        Severity::Medium => Severity::High,
        Severity::High | Severity::Critical => Severity::Critical,
    };
    if let serde_json::Value::Object(fields) = evidence {
        fields.insert("confirmed_by".into(), serde_json::Value::from(analyst));
    }
}

/// The rules an entry makes with a scope of its own, or `None` when it
/// takes its scope from an alert.
pub fn scoped_rule(entry: &FeedbackEntry) -> Option<Rule> {
    let scope = entry
        .scope
        .as_ref()
        .filter(|scope| scope.detector.is_some() || scope.value.is_some());
    if scope.is_none() && entry.alert_id.is_some() {
        return None;
    }
    Some(Rule {
        verdict: entry.verdict,
        detector: scope.and_then(|scope| scope.detector),
        value: RuleValue::of(scope.and_then(|scope| scope.value.as_deref())),
        from_ms: entry.at_ms(),
        until_ms: entry.expires_ms(),
        analyst: entry.analyst.clone(),
    })
}

/// A rule for one alert's detector and subject.
pub fn alert_rule(entry: &FeedbackEntry, detector: Detector, subject: &str) -> Rule {
    Rule {
        verdict: entry.verdict,
        detector: Some(detector),
        value: if subject.is_empty() {
            RuleValue::Any
        } else {
            RuleValue::Subject(subject.to_string())
        },
        from_ms: entry.at_ms(),
        until_ms: entry.expires_ms(),
        analyst: entry.analyst.clone(),
    }
}

/// Entries waiting for the engine's clock to reach their `at`, in order of
/// `at`, then of arrival.
#[derive(Debug, Clone, Default)]
pub struct FeedbackBook {
    pending: VecDeque<FeedbackEntry>,
    /// `at` of the first pending entry, i64::MAX when none: the one check
    /// on the hot path.
    next_at_ms: i64,
}

impl FeedbackBook {
    pub fn new() -> FeedbackBook {
        FeedbackBook {
            pending: VecDeque::new(),
            next_at_ms: i64::MAX,
        }
    }

    /// Adds a checked entry; gives it back when the book is full.
    pub fn add(&mut self, entry: FeedbackEntry) -> Result<(), Box<FeedbackEntry>> {
        if self.pending.len() >= MAX_PENDING {
            return Err(Box::new(entry));
        }
        let at_ms = entry.at_ms();
        // After every entry at or before its time: ties keep arrival order.
        let position = self.pending.partition_point(|pending| pending.at_ms() <= at_ms);
        self.pending.insert(position, entry);
        self.next_at_ms = self.pending.front().map_or(i64::MAX, FeedbackEntry::at_ms);
        Ok(())
    }

    /// Whether an entry is due at `clock_ms`.
    pub fn is_due(&self, clock_ms: i64) -> bool {
        self.next_at_ms <= clock_ms
    }

    /// The next entry due at `clock_ms`.
    pub fn pop_due(&mut self, clock_ms: i64) -> Option<FeedbackEntry> {
        if !self.is_due(clock_ms) {
            return None;
        }
        let entry = self.pending.pop_front();
        self.next_at_ms = self.pending.front().map_or(i64::MAX, FeedbackEntry::at_ms);
        entry
    }

    /// Entries not yet due, in order (for snapshots and the end of a replay).
    pub fn pending(&self) -> impl Iterator<Item = &FeedbackEntry> {
        self.pending.iter()
    }

    /// Takes every entry not yet due.
    pub fn take_pending(&mut self) -> Vec<FeedbackEntry> {
        self.next_at_ms = i64::MAX;
        self.pending.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What became of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Rules were added to the key's state.
    Applied,
    /// No key or open alert matched it when its time came.
    Unmatched,
    /// The input ended before the engine's clock reached `at`.
    NotReached,
    /// Refused: the book of pending entries was full.
    Refused,
}

/// The audit record of one entry (`feedback.jsonl`). Keys by fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackAudit {
    pub outcome: Outcome,
    /// The engine's clock when the entry was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// The key it applied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Rules it added.
    pub rules: usize,
    pub detail: String,
    pub entry: FeedbackEntry,
}

impl FeedbackAudit {
    pub fn new(outcome: Outcome, clock_ms: Option<i64>, detail: impl Into<String>, entry: FeedbackEntry) -> Self {
        FeedbackAudit {
            outcome,
            applied_at: clock_ms.map(format_ts),
            key_fingerprint: None,
            rules: 0,
            detail: detail.into(),
            entry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: &str) -> FeedbackEntry {
        FeedbackEntry::parse(line).expect("a valid entry")
    }

    fn finding(detector: Detector, subject: &str) -> (Detector, String) {
        (detector, subject.to_string())
    }

    const KEY: &str = "kf_0123456789abcdef0123456789abcdef";

    #[test]
    fn entries_without_a_target_or_with_bad_times_or_raw_keys_are_refused() {
        for line in [
            r#"{"verdict":"confirmed","at":"2026-01-01T00:00:00Z"}"#,
            r#"{"key_fingerprint":"AKIAEXAMPLE","verdict":"confirmed","at":"2026-01-01T00:00:00Z"}"#,
            r#"{"alert_id":"al_1","verdict":"confirmed","at":"yesterday"}"#,
            r#"{"alert_id":"al_1","verdict":"confirmed","at":"2026-01-02T00:00:00Z","expires":"2026-01-01T00:00:00Z"}"#,
            r#"{"alert_id":"al_1","verdict":"maybe","at":"2026-01-01T00:00:00Z"}"#,
        ] {
            assert!(FeedbackEntry::parse(line).is_err(), "{line}");
        }
        let whole_key =
            format!(r#"{{"key_fingerprint":"{KEY}","verdict":"false_positive","at":"2026-01-01T00:00:00Z"}}"#);
        assert!(
            FeedbackEntry::parse(&whole_key).is_err(),
            "silencing a whole key needs a scope"
        );
    }

    #[test]
    fn a_country_expectation_silences_geography_findings_from_or_to_it_until_expiry() {
        let line = format!(
            r#"{{"key_fingerprint":"{KEY}","verdict":"expected_change","scope":{{"value":"br"}},"at":"2026-01-01T00:00:00Z","expires":"2026-01-02T00:00:00Z"}}"#
        );
        let entry = entry(&line);
        let rule = scoped_rule(&entry).expect("a scoped rule");
        assert_eq!(rule.value, RuleValue::Country("BR".into()));
        let mut rules = KeyFeedback::default();
        rules.add(rule, entry.at_ms());
        let from_brazil = Whereabouts {
            country: *b"BR",
            asn: 7,
            from: None,
        };
        let back_from_brazil = Whereabouts {
            country: *b"GB",
            asn: 8,
            from: Some((*b"BR", 7)),
        };
        let at = entry.at_ms();
        let travel = finding(Detector::ImpossibleTravel, "");
        assert_eq!(
            rules.effect(travel.0, &travel.1, &from_brazil, at - 1),
            None,
            "not before `at`"
        );
        assert_eq!(
            rules.effect(travel.0, &travel.1, &from_brazil, at),
            Some(Effect::Silence)
        );
        assert_eq!(
            rules.effect(travel.0, &travel.1, &back_from_brazil, at),
            Some(Effect::Silence)
        );
        assert_eq!(
            rules.effect(
                finding(Detector::RateSpike, "").0,
                &finding(Detector::RateSpike, "").1,
                &from_brazil,
                at
            ),
            None,
            "a country says nothing of rates"
        );
        assert_eq!(
            rules.effect(
                finding(Detector::NewCountry, "BR").0,
                &finding(Detector::NewCountry, "BR").1,
                &from_brazil,
                entry.expires_ms()
            ),
            None,
            "over at expiry"
        );
        assert!(rules.is_empty(), "expired rules are dropped");
    }

    #[test]
    fn rules_per_key_are_bounded_dropping_the_one_expiring_first() {
        let mut rules = KeyFeedback::default();
        for index in 0..(MAX_RULES_PER_KEY as i64 + 5) {
            rules.add(
                Rule {
                    verdict: Verdict::FalsePositive,
                    detector: Some(Detector::NewEndpoint),
                    value: RuleValue::Subject(format!("/v1/{index}")),
                    from_ms: 0,
                    until_ms: 1_000 + index,
                    analyst: String::new(),
                },
                0,
            );
        }
        assert_eq!(rules.rules.len(), MAX_RULES_PER_KEY);
        assert_eq!(rules.rules[0].until_ms, 1_005);
    }

    #[test]
    fn the_book_releases_entries_in_order_of_at_then_arrival_and_only_when_due() {
        let mut book = FeedbackBook::new();
        for (at, note) in [("02", "b"), ("01", "a"), ("02", "c")] {
            let line =
                format!(r#"{{"alert_id":"al_x","verdict":"confirmed","note":"{note}","at":"2026-01-{at}T00:00:00Z"}}"#);
            assert!(book.add(entry(&line)).is_ok());
        }
        let day2 = parse_ts("2026-01-02T00:00:00Z").unwrap();
        assert!(!book.is_due(day2 - 86_400_001));
        let mut notes = Vec::new();
        while let Some(entry) = book.pop_due(day2) {
            notes.push(entry.note);
        }
        assert_eq!(notes, ["a", "b", "c"]);
        assert!(book.is_empty());
    }

    mod through_the_engine {
        //! Feedback and allowlists as the engine applies them, on a
        //! hand-built log: a key learned in London, then someone using it
        //! from Sao Paulo at the same time (concurrent use, repeating).

        use std::sync::Arc;

        use crate::alert::{Alert, Output};
        use crate::detect::testkit::*;
        use crate::engine::Engine;
        use crate::event::{AccessEvent, format_ts};
        use crate::feedback::{FeedbackAudit, FeedbackEntry, Outcome};
        use crate::model::Model;

        const KEY: &str = "AKIAFEEDBACKTEST0001";

        /// Five days in London, then `steps` calls five minutes apart
        /// alternating between Sao Paulo and London; and the time of the
        /// first of those.
        fn log(steps: i64) -> (Vec<AccessEvent<'static>>, i64) {
            let mut events = history(KEY, "london", 5, 12, ENDPOINTS);
            let last = events.last().unwrap().ts_ms;
            for step in 1..=steps {
                let place = if step % 2 == 0 { "london" } else { "saopaulo" };
                events.push(event(last + step * 5 * 60_000, KEY, ip(place, 3), "/v1/orders", 200));
            }
            (events, last + 5 * 60_000)
        }

        fn engine_with(model: Model) -> Engine {
            Engine::new(Arc::new(model), geo())
        }

        /// Every output line as JSON, and the audit, fed in batches of `batch`.
        fn run(
            engine: &mut Engine,
            events: &[AccessEvent<'_>],
            feedback: &[FeedbackEntry],
            batch: usize,
        ) -> (Vec<String>, Vec<FeedbackAudit>) {
            for entry in feedback {
                engine.add_feedback(entry.clone());
            }
            let mut out = Vec::new();
            for chunk in events.chunks(batch) {
                engine.process(chunk, &mut out);
            }
            engine.finish(&mut out);
            let mut audit = Vec::new();
            engine.take_feedback_audit(&mut audit);
            let lines = out
                .iter()
                .map(|output| match output {
                    Output::Alert(alert) => serde_json::to_string(alert).unwrap(),
                    Output::Revocation(request) => serde_json::to_string(request).unwrap(),
                    Output::Digest(digest) => serde_json::to_string(digest).unwrap(),
                })
                .collect();
            (lines, audit)
        }

        fn alert_lines(lines: &[String]) -> Vec<Alert> {
            lines
                .iter()
                .filter_map(|line| serde_json::from_str::<Alert>(line).ok())
                .filter(|alert| alert.id.starts_with("al_"))
                .collect()
        }

        fn entry(text: String) -> FeedbackEntry {
            FeedbackEntry::parse(&text).expect("a valid entry")
        }

        #[test]
        fn a_repeat_within_the_window_is_the_same_alert_at_revision_two_with_a_count() {
            let (events, _) = log(12);
            let mut engine = engine_with(Model::default_model());
            let lines = alert_lines(&run(&mut engine, &events, &[], 1000).0);
            let first = lines
                .iter()
                .find(|alert| alert.revision == 1 && alert.detector.as_str() == "concurrent_use")
                .unwrap_or_else(|| panic!("a concurrent-use alert: {lines:#?}"));
            let second = lines
                .iter()
                .find(|alert| alert.id == first.id && alert.revision == 2)
                .unwrap_or_else(|| panic!("an update of {}: {lines:#?}", first.id));
            assert_eq!(first.count, 1);
            assert_eq!(second.count, 2);
            assert_eq!(second.incident_id, first.incident_id);
            assert_eq!(second.first_seen, first.ts);
            assert!(second.last_seen > first.last_seen);
            assert!(second.peak_score >= first.peak_score);
            let ids: std::collections::BTreeSet<&str> = lines
                .iter()
                .filter(|alert| alert.detector.as_str() == "concurrent_use")
                .map(|alert| alert.id.as_str())
                .collect();
            assert_eq!(ids.len(), 1, "repeats raise no new concurrent-use alert: {lines:#?}");
            let revisions: Vec<u32> = lines
                .iter()
                .filter(|alert| alert.id == first.id)
                .map(|alert| alert.revision)
                .collect();
            assert!(
                revisions.windows(2).all(|pair| pair[1] == pair[0] + 1),
                "revisions go up one by one: {revisions:?}"
            );
            assert!(
                (revisions.len() as u64)
                    < lines
                        .iter()
                        .filter(|alert| alert.id == first.id)
                        .map(|alert| alert.count)
                        .max()
                        .unwrap(),
                "fewer updates than repeats: {revisions:?}"
            );
        }

        #[test]
        fn expected_change_on_an_incident_stops_its_repeats_and_is_audited() {
            let (events, start) = log(24);
            let mut engine = engine_with(Model::default_model());
            let (lines, _) = run(&mut engine, &events, &[], 1000);
            let before = alert_lines(&lines);
            let incident = before
                .iter()
                .find(|alert| alert.detector.as_str() == "concurrent_use")
                .map(|alert| alert.incident_id.clone())
                .expect("a concurrent-use incident");
            let later_lines = |alerts: &[Alert], from: &str| {
                alerts
                    .iter()
                    .filter(|alert| alert.incident_id == incident && alert.ts.as_str() > from)
                    .count()
            };
            let at = format_ts(start + 40 * 60_000);
            assert!(
                later_lines(&before, &at) > 0,
                "without feedback the incident goes on: {before:#?}"
            );

            let feedback = [entry(format!(
                r#"{{"alert_id":"{incident}","verdict":"expected_change","analyst":"ana","note":"dual-site rollout","at":"{at}"}}"#
            ))];
            let mut engine = engine_with(Model::default_model());
            let (lines, audit) = run(&mut engine, &events, &feedback, 1000);
            let after = alert_lines(&lines);
            assert_eq!(later_lines(&after, &at), 0, "repeats after `at` stop: {after:#?}");
            assert_eq!(
                after.iter().filter(|alert| alert.ts.as_str() <= at.as_str()).count(),
                before.iter().filter(|alert| alert.ts.as_str() <= at.as_str()).count(),
                "nothing changes before `at`"
            );
            assert_eq!(audit.len(), 1);
            assert_eq!(audit[0].outcome, Outcome::Applied);
            assert!(audit[0].rules >= 1);
            assert!(
                audit[0]
                    .key_fingerprint
                    .as_deref()
                    .is_some_and(|fingerprint| fingerprint.starts_with("kf_"))
            );
        }

        #[test]
        fn the_same_feedback_gives_byte_identical_outputs_whatever_the_batches() {
            let (events, start) = log(24);
            let fingerprint = crate::event::Fingerprinter::unkeyed().fingerprint(KEY);
            let feedback = [
                entry(format!(
                    r#"{{"key_fingerprint":"{fingerprint}","verdict":"expected_change","scope":{{"value":"BR"}},"at":"{}","expires":"{}"}}"#,
                    format_ts(start + 30 * 60_000),
                    format_ts(start + 10 * HOUR)
                )),
                entry(format!(
                    r#"{{"key_fingerprint":"{fingerprint}","verdict":"confirmed","scope":{{"detector":"rate_spike"}},"at":"{}"}}"#,
                    format_ts(start)
                )),
                entry(format!(
                    r#"{{"alert_id":"al_00000000000000000000000000000000","verdict":"false_positive","at":"{}"}}"#,
                    format_ts(start)
                )),
                entry(format!(
                    r#"{{"key_fingerprint":"{fingerprint}","verdict":"false_positive","scope":{{"detector":"new_client"}},"at":"{}"}}"#,
                    format_ts(start + 400 * DAY)
                )),
            ];
            let runs: Vec<(Vec<String>, Vec<String>)> = [1usize, 7, 5000]
                .iter()
                .map(|batch| {
                    let mut engine = engine_with(Model::default_model());
                    let (lines, audit) = run(&mut engine, &events, &feedback, *batch);
                    let audit = audit
                        .iter()
                        .map(|record| serde_json::to_string(record).unwrap())
                        .collect();
                    (lines, audit)
                })
                .collect();
            assert!(runs.iter().all(|other| *other == runs[0]));
            let outcomes: Vec<&str> = runs[0]
                .1
                .iter()
                .map(|line| {
                    let record: FeedbackAudit = serde_json::from_str(line).unwrap();
                    match record.outcome {
                        Outcome::Applied => "applied",
                        Outcome::Unmatched => "unmatched",
                        Outcome::NotReached => "not_reached",
                        Outcome::Refused => "refused",
                    }
                })
                .collect();
            assert_eq!(outcomes, ["applied", "unmatched", "applied", "not_reached"]);
        }

        #[test]
        fn feedback_at_a_future_time_has_no_effect_before_it() {
            let (events, start) = log(24);
            let mut engine = engine_with(Model::default_model());
            let (plain, _) = run(&mut engine, &events, &[], 1000);
            let fingerprint = crate::event::Fingerprinter::unkeyed().fingerprint(KEY);
            let future = [entry(format!(
                r#"{{"key_fingerprint":"{fingerprint}","verdict":"expected_change","scope":{{"value":"BR"}},"at":"{}"}}"#,
                format_ts(start + 30 * DAY)
            ))];
            let mut engine = engine_with(Model::default_model());
            let (with_future, audit) = run(&mut engine, &events, &future, 1000);
            assert_eq!(plain, with_future);
            assert_eq!(audit[0].outcome, Outcome::NotReached);
            let now = [entry(format!(
                r#"{{"key_fingerprint":"{fingerprint}","verdict":"expected_change","scope":{{"value":"BR"}},"at":"{}"}}"#,
                format_ts(start)
            ))];
            let mut engine = engine_with(Model::default_model());
            let (with_now, _) = run(&mut engine, &events, &now, 1000);
            assert_ne!(plain, with_now, "the same entry in force does change the outputs");
        }

        fn geography_alerts(model: Model, place: &str) -> Vec<Alert> {
            let mut engine = engine_with(model);
            let mut events = history(KEY, "london", 5, 12, ENDPOINTS);
            let last = events.last().unwrap().ts_ms;
            events.push(event(last + 10 * 60_000, KEY, ip(place, 7), "/v1/orders", 200));
            events.push(event(last + 20 * 60_000, KEY, ip("london", 3), "/v1/orders", 200));
            alerts(&mut engine, &events)
                .into_iter()
                .filter(|alert| crate::allowlist::is_geography(alert.detector))
                .collect()
        }

        #[test]
        fn an_allowlisted_cidr_or_asn_raises_no_geography_alert() {
            let plain = geography_alerts(Model::default_model(), "sydney");
            assert!(!plain.is_empty(), "a call from Sydney is news without an allowlist");

            let mut by_cidr = Model::default_model();
            by_cidr.allowlist.cidrs = vec![format!("{}/32", ip("sydney", 7))];
            let alerts = geography_alerts(by_cidr, "sydney");
            assert!(alerts.is_empty(), "{alerts:#?}");

            let asn = geo().lookup(ip("sydney", 7)).asn;
            assert_ne!(asn, 0);
            let mut by_asn = Model::default_model();
            by_asn.allowlist.asns = vec![asn];
            let alerts = geography_alerts(by_asn, "sydney");
            assert!(alerts.is_empty(), "{alerts:#?}");
        }
    }
}
