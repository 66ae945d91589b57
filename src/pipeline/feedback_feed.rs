//! The feedback topic in `keywatch run`: a thread reads every partition of
//! `kafka.feedback_topic` from the beginning, as no group member, so every
//! instance holds every entry. The keyed stage hands the entries to each
//! partition's engine, which applies those of its keys by event time
//! ([`crate::feedback`]). A partition's engine gets the entries read before
//! it was assigned as a backlog (those its restored clock has passed were
//! applied before its checkpoint and are skipped), later ones as they come.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::feedback::{FeedbackEntry, MAX_PENDING};
use crate::source::kafka::KafkaSourceError;
use crate::source::kafka::range::{partition_count, range_consumer};

/// Why the feedback topic cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackFeedError {
    #[error(transparent)]
    Kafka(#[from] KafkaSourceError),
    #[error("feedback topic {0} does not exist")]
    NoTopic(String),
    #[error("cannot assign the feedback topic {topic}: {error}")]
    Assign {
        topic: String,
        error: rdkafka::error::KafkaError,
    },
    #[error("cannot start the feedback reader: {0}")]
    Thread(std::io::Error),
}

/// How long a poll waits; also how long stopping may take.
const POLL: Duration = Duration::from_millis(200);

/// Every entry read from the feedback topic, in the order read.
pub struct FeedbackFeed {
    entries: Arc<Mutex<Vec<FeedbackEntry>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl FeedbackFeed {
    /// Starts reading `topic`. A missing topic is an error: feedback that
    /// is silently not read is worse than none.
    pub fn start(kafka: &KafkaConfig, topic: &str) -> Result<FeedbackFeed, FeedbackFeedError> {
        let consumer = range_consumer(kafka, "feedback")?;
        let Some(partitions) = partition_count(&consumer, topic)? else {
            return Err(FeedbackFeedError::NoTopic(topic.to_string()));
        };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|error| FeedbackFeedError::Assign {
                    topic: topic.to_string(),
                    error,
                })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|error| FeedbackFeedError::Assign {
                topic: topic.to_string(),
                error,
            })?;
        let entries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopping) = (Arc::clone(&entries), Arc::clone(&stop));
        let reader = std::thread::Builder::new()
            .name("feedback".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let Some(result) = consumer.poll(POLL) else {
                        continue;
                    };
                    let Ok(message) = result else {
                        continue;
                    };
                    let text = message.payload().map(String::from_utf8_lossy).unwrap_or_default();
                    match FeedbackEntry::parse(&text) {
                        Ok(entry) => {
                            if let Ok(mut entries) = into.lock()
                                && entries.len() < MAX_PENDING
                            {
                                entries.push(entry);
                            }
                        }
                        Err(detail) => tracing::warn!(
                            partition = message.partition(),
                            offset = message.offset(),
                            %detail,
                            "feedback message refused"
                        ),
                    }
                }
            })
            .map_err(FeedbackFeedError::Thread)?;
        Ok(FeedbackFeed {
            entries,
            stop,
            reader: Some(reader),
        })
    }

    /// A feed holding `entries`, reading nothing (tests).
    pub fn fixed(entries: Vec<FeedbackEntry>) -> FeedbackFeed {
        FeedbackFeed {
            entries: Arc::new(Mutex::new(entries)),
            stop: Arc::new(AtomicBool::new(true)),
            reader: None,
        }
    }

    /// Appends the entries after the first `seen` to `into`; returns how
    /// many entries have been read in all.
    pub fn entries_since(&self, seen: usize, into: &mut Vec<FeedbackEntry>) -> usize {
        let Ok(entries) = self.entries.lock() else {
            return seen;
        };
        if let Some(new) = entries.get(seen..) {
            into.extend_from_slice(new);
        }
        entries.len()
    }
}

impl Drop for FeedbackFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
