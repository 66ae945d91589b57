//! A key's low findings of the current UTC day, held in its state until the
//! day is over and they go out as one digest (`alert::digest`).

use serde::{Deserialize, Serialize};

use crate::detector::Detector;

const DAY_MS: i64 = 86_400_000;
/// Distinct detector and subject pairs listed per key and day; further
/// findings are only counted, so a key cannot grow its state without bound.
pub const MAX_ENTRIES: usize = 32;
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

/// One low finding to fold in.
pub struct LowFinding {
    pub detector: Detector,
    pub subject: String,
    pub score: f64,
    pub summary: String,
    pub evidence: serde_json::Value,
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
    pub fn add(&mut self, finding: LowFinding, ts_ms: i64) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_split_at_utc_midnight() {
        assert_eq!(day_of(DAY_MS - 1) + 1, day_of(DAY_MS));
        assert_eq!(day_of(-1), -1);
    }
}
