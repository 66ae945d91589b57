//! Alerts and revocation requests: what the SOC and the revocation service
//! receive, with deterministic ids, grouping into incidents and the policy
//! that decides which alerts ask for a revocation.

pub mod cap;
pub mod digest;
pub mod evidence;
pub mod owner;
pub mod policy;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::detector::Detector;
use crate::owners::Owner;
// Every alert carries a severity: readers of alerts find it here.
pub use crate::detector::Severity;

/// What the engine emits, in the order of the events that caused it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Alert(Alert),
    Revocation(RevocationRequest),
    Digest(Digest),
}

/// The event-time span an alert is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub start: String,
    pub end: String,
}

/// One alert (schemas/alert.schema.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: the same input always gives the same id, so a consumer
    /// can drop a repeat delivered after a restart.
    pub id: String,
    /// Alerts on the same key close together in event time share an
    /// incident: the id of the incident's first alert.
    pub incident_id: String,
    pub key_fingerprint: String,
    pub key_hint: String,
    /// Every key an alert of the view across keys is about (one source
    /// calling with many keys), by fingerprint; empty for one key's alerts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    pub detector: Detector,
    pub severity: Severity,
    /// Strength of the evidence in [0, 1].
    pub score: f64,
    /// Event time of the event that triggered the alert.
    pub ts: String,
    pub window: Window,
    /// One line a person can read.
    pub summary: String,
    /// What was observed against what the baseline holds.
    pub evidence: serde_json::Value,
    /// Name and version of the model that judged.
    pub model: String,
    /// Who answers for the key, from the owners file or topic; absent when
    /// the key has no entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// 1 for an alert's first line. Repeats of its finding within the
    /// update window go out again as lines with the same id and a higher
    /// revision: consumers keep the highest revision of each id.
    #[serde(default = "first_revision")]
    pub revision: u32,
    /// Findings folded into the alert up to this revision (1 at first).
    #[serde(default = "first_revision_count")]
    pub count: u64,
    /// Event time of the alert's first finding (its first revision's `ts`).
    #[serde(default)]
    pub first_seen: String,
    /// Event time of the newest finding folded in.
    #[serde(default)]
    pub last_seen: String,
    /// Highest score among the findings folded in.
    #[serde(default)]
    pub peak_score: f64,
}

fn first_revision() -> u32 {
    1
}

fn first_revision_count() -> u64 {
    1
}

impl Alert {
    /// Fills the lifecycle fields of a first revision from `ts` and `score`.
    pub fn first_revision(mut self) -> Alert {
        self.revision = 1;
        self.count = 1;
        self.first_seen = self.ts.clone();
        self.last_seen = self.ts.clone();
        self.peak_score = self.score;
        self
    }
}

/// A request to revoke a key (schemas/revocation.schema.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevocationRequest {
    /// Deterministic; the revocation service acts at most once per key.
    pub idempotency_key: String,
    pub key_fingerprint: String,
    pub key_hint: String,
    pub ts: String,
    pub severity: Severity,
    pub reason: String,
    pub incident_id: String,
    pub alert_ids: Vec<String>,
    pub model: String,
    /// Who answers for the key, from the owners file or topic; absent when
    /// the key has no entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Why this is strong evidence: `stolen_key_pattern` or
    /// `agreeing_detectors` (absent in requests of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<evidence::Basis>,
    /// The detectors that make the evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<Detector>,
}

/// One key's low findings of one UTC day (schemas/digest.schema.json):
/// what a person may want to read once a day, not be paged for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// Deterministic, like an alert's.
    pub id: String,
    pub key_fingerprint: String,
    pub key_hint: String,
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Low findings folded in, including those beyond the listed entries.
    pub findings: u64,
    /// One entry per detector and subject, in order of first appearance.
    pub entries: Vec<DigestEntry>,
    pub model: String,
}

/// Low findings of one detector about one subject within a digest's day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub detector: Detector,
    /// What the findings are about (a country, a network, an endpoint);
    /// empty when the detector has one subject only.
    pub subject: String,
    pub count: u64,
    /// Event times of the first and the last finding.
    pub first: String,
    pub last: String,
    /// Highest score among the findings.
    pub score: f64,
    /// The first finding's summary and evidence.
    pub summary: String,
    pub evidence: serde_json::Value,
}

/// Hex SHA-256 of the parts joined by `|`, truncated to 128 bits, prefixed.
pub fn stable_id(prefix: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            hasher.update(b"|");
        }
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    format!("{prefix}_{}", hex::encode(&digest[..16]))
}
