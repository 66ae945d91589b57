//! The `[kafka]` section: brokers, topics, group and librdkafka properties.

use serde::{Deserialize, Serialize};

/// Kafka settings for `keywatch run` and `keywatch replay --from-kafka`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {}

impl KafkaConfig {
    /// Checks the section; returns the offending field and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}
