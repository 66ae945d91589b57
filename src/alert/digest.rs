//! The daily digest of a key's low findings: lows are folded into the key's
//! pending digest (`baseline::digest`) instead of going out one by one, and
//! the day's digest goes out once the key's event time has moved to a later
//! UTC day (or when a replay ends).

use crate::alert::cap::{cap_evidence, cut_string};
use crate::alert::{Digest, DigestEntry, stable_id};
use crate::baseline::digest::{LowFinding, PendingDigest};
use crate::detect::Finding;
use crate::event::format_ts;

const DAY_MS: i64 = 86_400_000;

/// Longest subject of a digest entry, in bytes.
const MAX_ENTRY_SUBJECT_BYTES: usize = 256;
/// Longest summary of a digest entry, in bytes.
const MAX_ENTRY_SUMMARY_BYTES: usize = 512;
/// Largest evidence of a digest entry, in bytes of JSON: with at most
/// `MAX_ENTRIES` entries, a digest stays within about 64 KiB.
const MAX_ENTRY_EVIDENCE_BYTES: usize = 1024;

/// The low finding as a digest keeps it. Subject, summary and evidence may
/// embed input text (endpoint paths, user agents): each is bounded here,
/// before the pending digest holds it, deterministically.
pub fn low_finding(finding: Finding) -> LowFinding {
    let (mut subject, mut summary, mut evidence) = (finding.subject, finding.summary, finding.evidence);
    cut_string(&mut subject, MAX_ENTRY_SUBJECT_BYTES);
    cut_string(&mut summary, MAX_ENTRY_SUMMARY_BYTES);
    cap_evidence(&mut evidence, MAX_ENTRY_EVIDENCE_BYTES);
    LowFinding {
        detector: finding.detector,
        subject,
        score: finding.score,
        summary,
        evidence,
    }
}

/// The digest a reader receives.
pub fn digest_of(pending: PendingDigest, fingerprint: &str, hint: &str, model_label: &str) -> Digest {
    let day = format_ts(pending.day * DAY_MS)[..10].to_string();
    Digest {
        id: stable_id("dg", &[fingerprint, &day]),
        key_fingerprint: fingerprint.to_string(),
        key_hint: hint.to_string(),
        day,
        findings: pending.findings,
        entries: pending
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::digest::{MAX_ENTRIES, day_of};
    use crate::detector::{Detector, Severity};

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
        pending.add(low_finding(low(Detector::NewEndpoint, "/v1/a", 0.3)), 1_767_571_200_000);
        pending.add(low_finding(low(Detector::NewEndpoint, "/v1/a", 0.6)), 1_767_571_300_000);
        pending.add(low_finding(low(Detector::NewEndpoint, "/v1/b", 0.3)), 1_767_571_400_000);
        let digest = digest_of(pending, "kf_x", "AKIA...1234", "default/1");
        assert_eq!(digest.findings, 3);
        assert_eq!(digest.entries.len(), 2);
        assert_eq!(digest.entries[0].count, 2);
        assert_eq!(digest.entries[0].score, 0.6);
        assert_eq!(digest.entries[0].last, format_ts(1_767_571_300_000));
        assert_eq!(digest.day, "2026-01-05");
        assert!(digest.id.starts_with("dg_"));
    }

    #[test]
    fn a_digest_of_long_input_text_stays_within_its_budget() {
        let mut pending = PendingDigest::new(0);
        for index in 0..(MAX_ENTRIES + 10) {
            let path = format!("/v1/{index}/{}", "x".repeat(20_000));
            let mut finding = low(Detector::NewEndpoint, &path, 0.3);
            finding.evidence = serde_json::json!({"endpoint": path, "seen": vec![path.clone(); 50]});
            finding.summary = format!("new endpoint {path}");
            pending.add(low_finding(finding), 1000);
        }
        let digest = digest_of(pending, "kf_x", "****", "default/1");
        let bytes = serde_json::to_vec(&digest).unwrap().len();
        assert!(bytes <= 64 * 1024, "digest of {bytes} bytes");
        assert_eq!(digest.entries.len(), MAX_ENTRIES);
        assert!(
            digest.entries[0]
                .evidence
                .get(crate::alert::cap::EVIDENCE_CUT_FIELD)
                .is_some()
        );
        assert!(digest.entries[0].subject.ends_with(crate::alert::cap::CUT_MARKER));
    }

    #[test]
    fn entries_are_bounded_and_overflow_is_still_counted() {
        let mut pending = PendingDigest::new(0);
        for index in 0..(MAX_ENTRIES + 10) {
            pending.add(
                low_finding(low(Detector::NewEndpoint, &format!("/v1/{index}"), 0.3)),
                1000,
            );
        }
        assert_eq!(pending.entries.len(), MAX_ENTRIES);
        assert_eq!(pending.findings as usize, MAX_ENTRIES + 10);
    }
}
