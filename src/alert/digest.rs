//! The daily digest of a key's low findings: lows are folded here instead
//! of going out one by one, and the day's digest goes out once the key's
//! event time has moved to a later UTC day (or when a replay ends).

use serde::{Deserialize, Serialize};

use crate::alert::{Digest, DigestEntry, stable_id};
use crate::detect::Finding;
use crate::detector::Detector;
use crate::event::format_ts;

const DAY_MS: i64 = 86_400_000;
/// Distinct detector and subject pairs listed per key and day; further
/// findings are only counted, so a key cannot grow its state without bound.
const MAX_ENTRIES: usize = 32;

/// Low findings of one key and one UTC day, kept in the key's state until
/// the day is over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDigest {
    /// Days since the Unix epoch.
    pub day: i64,
    pub findings: u64,
    pub entries: Vec<PendingEntry>,
}

/// One detector and subject within a pending digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEntry {
    pub detector: Detector,
    pub subject: String,
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub score: f64,
    pub summary: String,
    pub evidence: serde_json::Value,
}

/// The UTC day of an event time, as days since the epoch.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

impl PendingDigest {
    pub fn new(day: i64) -> PendingDigest {
        PendingDigest {
            day,
            findings: 0,
            entries: Vec::new(),
        }
    }

    /// Folds one low finding in.
    pub fn add(&mut self, finding: Finding, ts_ms: i64) {
        self.findings += 1;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|entry| entry.detector == finding.detector && entry.subject == finding.subject)
        {
            entry.count += 1;
            entry.last_ms = entry.last_ms.max(ts_ms);
            entry.score = entry.score.max(finding.score);
            return;
        }
        if self.entries.len() < MAX_ENTRIES {
            self.entries.push(PendingEntry {
                detector: finding.detector,
                subject: finding.subject,
                count: 1,
                first_ms: ts_ms,
                last_ms: ts_ms,
                score: finding.score,
                summary: finding.summary,
                evidence: finding.evidence,
            });
        }
    }

    /// The digest a reader receives.
    pub fn finish(self, fingerprint: &str, hint: &str, model_label: &str) -> Digest {
        let day = format_ts(self.day * DAY_MS)[..10].to_string();
        Digest {
            id: stable_id("dg", &[fingerprint, &day]),
            key_fingerprint: fingerprint.to_string(),
            key_hint: hint.to_string(),
            day,
            findings: self.findings,
            entries: self
                .entries
                .into_iter()
                .map(|entry| DigestEntry {
                    detector: entry.detector,
                    subject: entry.subject,
                    count: entry.count,
                    first: format_ts(entry.first_ms),
                    last: format_ts(entry.last_ms),
                    score: entry.score,
                    summary: entry.summary,
                    evidence: entry.evidence,
                })
                .collect(),
            model: model_label.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Severity;

    fn low(detector: Detector, subject: &str, score: f64) -> Finding {
        Finding {
            detector,
            severity: Severity::Low,
            score,
            window_start_ms: 0,
            subject: subject.to_string(),
            summary: format!("{detector} {subject}"),
            evidence: serde_json::json!({"subject": subject}),
        }
    }

    #[test]
    fn findings_of_one_detector_and_subject_share_an_entry() {
        let day = day_of(1_767_571_200_000);
        let mut pending = PendingDigest::new(day);
        pending.add(low(Detector::NewEndpoint, "/v1/a", 0.3), 1_767_571_200_000);
        pending.add(low(Detector::NewEndpoint, "/v1/a", 0.6), 1_767_571_300_000);
        pending.add(low(Detector::NewEndpoint, "/v1/b", 0.3), 1_767_571_400_000);
        let digest = pending.finish("kf_x", "AKIA...1234", "default/1");
        assert_eq!(digest.findings, 3);
        assert_eq!(digest.entries.len(), 2);
        assert_eq!(digest.entries[0].count, 2);
        assert_eq!(digest.entries[0].score, 0.6);
        assert_eq!(digest.entries[0].last, format_ts(1_767_571_300_000));
        assert_eq!(digest.day, "2026-01-05");
        assert!(digest.id.starts_with("dg_"));
    }

    #[test]
    fn entries_are_bounded_and_overflow_is_still_counted() {
        let mut pending = PendingDigest::new(0);
        for index in 0..(MAX_ENTRIES + 10) {
            pending.add(low(Detector::NewEndpoint, &format!("/v1/{index}"), 0.3), 1000);
        }
        assert_eq!(pending.entries.len(), MAX_ENTRIES);
        assert_eq!(pending.findings as usize, MAX_ENTRIES + 10);
    }

    #[test]
    fn days_split_at_utc_midnight() {
        assert_eq!(day_of(DAY_MS - 1) + 1, day_of(DAY_MS));
        assert_eq!(day_of(-1), -1);
    }
}
