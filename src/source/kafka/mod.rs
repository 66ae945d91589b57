//! Consuming Kafka: [`group`], a consumer in a group that feeds the
//! pipeline, and [`range`], plain readers of topic ranges for restoring
//! checkpoints and for replay.

pub mod group;
pub mod owners;
pub mod range;

use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::checkpoint::CheckpointError;

/// How long one poll waits before a loop looks at its stop condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Timeout of metadata, watermark and committed-offset requests.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("cannot create the kafka consumer: {0}")]
    Create(KafkaError),
    #[error("cannot subscribe to {topics}: {error}")]
    Subscribe { topics: String, error: KafkaError },
    #[error("cannot read {what}: {error}")]
    Read { what: String, error: KafkaError },
    #[error("reading {what} did not reach the end within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("cannot restore partitions {partitions}: {source}")]
    Restore {
        partitions: String,
        source: Box<KafkaSourceError>,
    },
    #[error(
        "partitions {partitions} have committed offsets but no checkpoint in changelog topic {changelog}: their state would silently start empty; restore the changelog, or set kafka.allow_missing_checkpoint = true to rebuild from the input"
    )]
    MissingCheckpoint { partitions: String, changelog: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot commit offsets: {0}")]
    Commit(KafkaError),
}
