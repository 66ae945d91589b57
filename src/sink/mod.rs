//! Where outputs go: files and Kafka. The only places that write output.

pub mod file;
pub mod kafka;

use serde::{Deserialize, Serialize};

use crate::source::SourceRef;

/// Longest excerpt of a rejected record kept in `rejected.jsonl`.
pub const REJECTED_EXCERPT_BYTES: usize = 4096;

/// One rejected input record (a line of `rejected.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Stable reason name (`malformed_json`, `bad_ip`, ...).
    pub reason_kind: String,
    /// The reason in words.
    pub reason: String,
    pub source: SourceRef,
    /// The record's bytes (lossy UTF-8), cut to [`REJECTED_EXCERPT_BYTES`].
    pub record: String,
    /// Whether `record` was cut.
    pub truncated: bool,
}

impl Rejected {
    pub fn new(error: &crate::decode::DecodeError, source: SourceRef, record: &[u8]) -> Rejected {
        let truncated = record.len() > REJECTED_EXCERPT_BYTES;
        let excerpt = &record[..record.len().min(REJECTED_EXCERPT_BYTES)];
        Rejected {
            reason_kind: error.kind().to_string(),
            reason: error.to_string(),
            source,
            record: String::from_utf8_lossy(excerpt).into_owned(),
            truncated,
        }
    }
}
