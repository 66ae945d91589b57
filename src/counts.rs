//! What went through a driver, counted the same way by every one of them:
//! file replay, Kafka replay, the Kafka pipeline's progress and the demo.
//! Records in; events, rejections by reason and events without a key out of
//! the decoder; alerts by severity and detector and revocation requests out
//! of the engine.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::alert::Output;
use crate::decode::DecodeError;

/// Counts of records, decoded items and engine outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Input records read (lines, documents, Kafka messages).
    pub records: u64,
    /// Events decoded.
    pub events: u64,
    /// Records, or events of multi-event records, the decoder rejected:
    /// written to `rejected.jsonl` or the dead-letter topic.
    pub rejected: u64,
    /// `rejected` by [`DecodeError::kind`].
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Events without an API key, skipped.
    pub no_key: u64,
    /// Distinct alerts (first revisions); updates are counted apart.
    pub alerts: u64,
    /// Updates of alerts already sent (revision 2 and above).
    pub alert_updates: u64,
    pub alerts_by_severity: BTreeMap<String, u64>,
    pub alerts_by_detector: BTreeMap<String, u64>,
    /// Daily digests of low findings, and the findings they fold.
    pub digests: u64,
    pub digest_findings: u64,
    /// Revocation requests.
    pub revocations: u64,
    /// Revocation requests the gate let through in shadow mode: written to
    /// the shadow output, not sent.
    #[serde(default)]
    pub revocations_shadow: u64,
}

impl Counts {
    /// Counts one rejection.
    pub fn count_rejected(&mut self, error: &DecodeError) {
        self.rejected += 1;
        *self.rejected_by_reason.entry(error.kind().to_string()).or_default() += 1;
    }

    /// Counts one output of the engine.
    pub fn count_output(&mut self, output: &Output) {
        match output {
            Output::Alert(alert) if alert.revision > 1 => self.alert_updates += 1,
            Output::Alert(alert) => {
                self.alerts += 1;
                *self
                    .alerts_by_severity
                    .entry(alert.severity.as_str().to_string())
                    .or_default() += 1;
                *self.alerts_by_detector.entry(alert.detector.to_string()).or_default() += 1;
            }
            Output::Revocation(_) => self.revocations += 1,
            Output::Digest(digest) => {
                self.digests += 1;
                self.digest_findings += digest.findings;
            }
        }
    }

    /// Adds counts made elsewhere, such as one batch's.
    pub fn add(&mut self, other: &Counts) {
        let add_map = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
            for (name, count) in from {
                *into.entry(name.clone()).or_default() += count;
            }
        };
        self.records += other.records;
        self.events += other.events;
        self.rejected += other.rejected;
        add_map(&mut self.rejected_by_reason, &other.rejected_by_reason);
        self.no_key += other.no_key;
        self.alerts += other.alerts;
        self.alert_updates += other.alert_updates;
        add_map(&mut self.alerts_by_severity, &other.alerts_by_severity);
        add_map(&mut self.alerts_by_detector, &other.alerts_by_detector);
        self.revocations += other.revocations;
        self.revocations_shadow += other.revocations_shadow;
        self.digests += other.digests;
        self.digest_findings += other.digest_findings;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_merges_the_breakdowns() {
        let mut total = Counts::default();
        let mut batch = Counts {
            records: 3,
            events: 2,
            ..Counts::default()
        };
        batch.count_rejected(&DecodeError::BadIp("x".into()));
        total.add(&batch);
        batch.count_rejected(&DecodeError::MissingField("ts"));
        total.add(&batch);
        assert_eq!(total.records, 6);
        assert_eq!(total.events, 4);
        assert_eq!(total.rejected, 3);
        assert_eq!(total.rejected_by_reason["bad_ip"], 2);
        assert_eq!(total.rejected_by_reason["missing_field"], 1);
    }
}
