//! Where records come from: files and Kafka. The only places that read input.

pub mod file;
pub mod kafka;
pub mod parquet;

use serde::{Deserialize, Serialize};

/// Where one input record was read, written beside every rejection so a
/// person can find the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourceRef {
    File {
        file: String,
        /// 1-based line; for a whole-file document, the line where it starts.
        line: u64,
        /// Position of the event inside a multi-event record (CloudTrail
        /// `Records`), absent for single-event records.
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
}
