//! The compacted owners topic (`kafka.owners_topic`): every instance reads
//! it from its beginning to its end before it starts (so the first alerts
//! already carry owners), then follows it in a thread of its own while the
//! pipeline runs. It is read without joining a group: every instance needs
//! every owner, not a share of them.
//!
//! Record key = key fingerprint, value = a JSON owners entry, empty value =
//! tombstone. A bad record is counted and logged by partition and offset
//! (never its content) and skipped.

use std::sync::PoisonError;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::range::{PartitionRange, RangeEnd, partition_count, range_consumer, read_ranges};
use super::{KafkaSourceError, METADATA_TIMEOUT, POLL_INTERVAL};
use crate::config::KafkaConfig;
use crate::event::Fingerprinter;
use crate::owners::{OwnerBook, SharedOwners};

/// Where reading the owners topic got to, per partition: the offset of the
/// next record.
pub type OwnersPositions = Vec<(i32, i64)>;

/// Reads the whole owners topic into `book`; returns where the follower
/// should continue. A topic that does not exist yet gives no positions (the
/// follower then starts nothing: create the topic before the instances).
pub fn read_owners_topic(
    kafka: &KafkaConfig,
    topic: &str,
    book: &mut OwnerBook,
    fingerprinter: &Fingerprinter,
) -> Result<OwnersPositions, KafkaSourceError> {
    let consumer = range_consumer(kafka, "owners")?;
    let Some(partitions) = partition_count(&consumer, topic)? else {
        tracing::warn!(topic = %topic, "owners topic does not exist; running without its owners");
        return Ok(Vec::new());
    };
    let mut positions = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|error| KafkaSourceError::Read {
                what: format!("watermarks of {topic}/{partition}"),
                error,
            })?;
        let mut next = low;
        if high > low {
            let range = [PartitionRange {
                topic: topic.to_string(),
                partition,
                start: Offset::Beginning,
                end: RangeEnd::CaughtUp { high_watermark: high },
            }];
            read_ranges(&consumer, &range, kafka.restore_timeout, |message| {
                apply(
                    book,
                    message.key(),
                    message.payload(),
                    partition,
                    message.offset(),
                    fingerprinter,
                );
                next = next.max(message.offset() + 1);
                Ok(())
            })?;
        }
        positions.push((partition, next.max(high)));
    }
    tracing::info!(topic = %topic, keys = book.len(), "owners topic read");
    Ok(positions)
}

/// Applies one record, counting and logging a bad one.
fn apply(
    book: &mut OwnerBook,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    partition: i32,
    offset: i64,
    fingerprinter: &Fingerprinter,
) {
    let result = match key {
        Some(key) => book.apply_topic_record(key, value, fingerprinter).map(|_| ()),
        None => Err("the record has no key".to_string()),
    };
    if let Err(reason) = result {
        tracing::warn!(partition, offset, %reason, "owners topic record skipped");
        metrics::counter!("keywatch_owner_records_skipped_total").increment(1);
    }
}

/// Follows the owners topic from `positions` into `shared` until `stop`
/// is cancelled.
pub fn follow_owners_topic(
    kafka: &KafkaConfig,
    topic: &str,
    positions: &OwnersPositions,
    shared: SharedOwners,
    fingerprinter: Fingerprinter,
    stop: CancellationToken,
) -> Result<Option<JoinHandle<()>>, KafkaSourceError> {
    if positions.is_empty() {
        return Ok(None);
    }
    let consumer = range_consumer(kafka, "owners")?;
    let mut assignment = TopicPartitionList::new();
    for (partition, next) in positions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .map_err(|error| KafkaSourceError::Read {
                what: format!("{topic}/{partition}"),
                error,
            })?;
    }
    consumer.assign(&assignment).map_err(|error| KafkaSourceError::Read {
        what: topic.to_string(),
        error,
    })?;
    let handle = std::thread::Builder::new()
        .name("owners".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                match consumer.poll(POLL_INTERVAL) {
                    Some(Ok(message)) => {
                        let mut book = shared.write().unwrap_or_else(PoisonError::into_inner);
                        apply(
                            &mut book,
                            message.key(),
                            message.payload(),
                            message.partition(),
                            message.offset(),
                            &fingerprinter,
                        );
                    }
                    // End-of-partition events and transient errors: the
                    // client retries by itself.
                    Some(Err(_)) => {}
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
        .map_err(|error| KafkaSourceError::Read {
            what: format!("{topic} (cannot start its reader: {error})"),
            error: rdkafka::error::KafkaError::Canceled,
        })?;
    Ok(Some(handle))
}
