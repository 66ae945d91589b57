//! Reading ranges of topics without joining a group: the changelog when
//! partitions are assigned, the keyed topics for replay.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{KafkaSourceError, METADATA_TIMEOUT, POLL_INTERVAL};
use crate::checkpoint::{CheckpointAssembler, PartitionId, Restored};
use crate::config::KafkaConfig;

/// Context of range consumers: end-of-partition events are how they know
/// they are done, not errors worth a log line.
#[derive(Debug, Default)]
pub struct RangeContext;

impl ClientContext for RangeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for RangeContext {}

/// A consumer that reads topic ranges.
pub type RangeConsumer = BaseConsumer<RangeContext>;

/// A consumer for reading topic ranges, in a group named for `purpose`
/// that it never joins.
pub fn range_consumer(kafka: &KafkaConfig, purpose: &str) -> Result<RangeConsumer, KafkaSourceError> {
    kafka
        .range_consumer_config(purpose)
        .create_with_context(RangeContext)
        .map_err(KafkaSourceError::Create)
}

/// Number of partitions of a topic, or `None` when it does not exist.
pub fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<i32>, KafkaSourceError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|error| KafkaSourceError::Read {
            what: format!("metadata of {topic}"),
            error,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|described| described.name() == topic && described.error().is_none())
        .map(|described| described.partitions().len() as i32)
        .filter(|count| *count > 0))
}

/// Where reading a partition stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd {
    /// Before this offset: the records in between are known to exist.
    Exact(i64),
    /// At the end of the partition as the reader finds it: librdkafka's
    /// end-of-partition event (from the high watermark of fetch responses),
    /// and not before the position has passed `high_watermark`. Some brokers
    /// (tansu) answer offset queries per record batch, so a queried high
    /// watermark alone can be too low to stop at.
    CaughtUp { high_watermark: i64 },
}

/// One partition to read from `start` to `end`.
#[derive(Debug, Clone)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub start: Offset,
    pub end: RangeEnd,
}

/// Progress of one partition being read.
struct RangeState {
    end: RangeEnd,
    end_of_partition_seen: bool,
}

impl RangeState {
    fn done_at(&self, position: Option<i64>) -> bool {
        match (self.end, position) {
            (RangeEnd::Exact(end), Some(position)) => position >= end,
            (RangeEnd::Exact(_), None) => false,
            (RangeEnd::CaughtUp { high_watermark }, position) => {
                // No position after the end event means nothing was there
                // to consume from the start offset.
                self.end_of_partition_seen && position.is_none_or(|position| position >= high_watermark)
            }
        }
    }
}

/// Reads the ranges, all of one topic, calling `visit` for each message in
/// offset order per partition. The consumer must come from
/// [`range_consumer`], which asks for end-of-partition events.
pub fn read_ranges<F>(
    consumer: &RangeConsumer,
    ranges: &[PartitionRange],
    timeout: Duration,
    mut visit: F,
) -> Result<u64, KafkaSourceError>
where
    F: FnMut(&BorrowedMessage<'_>) -> Result<(), KafkaSourceError>,
{
    let what = || {
        ranges
            .iter()
            .map(|range| format!("{}/{}", range.topic, range.partition))
            .collect::<Vec<_>>()
            .join(",")
    };
    let Some(topic) = ranges.first().map(|range| range.topic.clone()) else {
        return Ok(0);
    };
    assert!(
        ranges.iter().all(|range| range.topic == topic),
        "end-of-partition events name no topic: read one topic at a time"
    );
    let mut pending: HashMap<i32, RangeState> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for range in ranges {
        let empty = match (range.end, range.start) {
            (RangeEnd::Exact(end), Offset::Offset(start)) => start >= end,
            (RangeEnd::Exact(end), _) => end <= 0,
            (RangeEnd::CaughtUp { .. }, _) => false,
        };
        if empty {
            continue;
        }
        assignment
            .add_partition_offset(&range.topic, range.partition, range.start)
            .map_err(|error| KafkaSourceError::Read { what: what(), error })?;
        pending.insert(
            range.partition,
            RangeState {
                end: range.end,
                end_of_partition_seen: false,
            },
        );
    }
    if pending.is_empty() {
        return Ok(0);
    }
    consumer
        .assign(&assignment)
        .map_err(|error| KafkaSourceError::Read { what: what(), error })?;
    let position_of = |partition: i32| -> Option<i64> {
        let positions = consumer.position().ok()?;
        match positions.find_partition(&topic, partition)?.offset() {
            Offset::Offset(position) => Some(position),
            _ => None,
        }
    };
    let deadline = Instant::now() + timeout;
    let mut messages = 0u64;
    let result = loop {
        if pending.is_empty() {
            break Ok(messages);
        }
        if Instant::now() >= deadline {
            break Err(KafkaSourceError::Timeout { what: what(), timeout });
        }
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(state) = pending.get(&partition) else {
                    continue;
                };
                let wanted = match state.end {
                    RangeEnd::Exact(end) => message.offset() < end,
                    RangeEnd::CaughtUp { .. } => true,
                };
                if wanted {
                    messages += 1;
                    if let Err(error) = visit(&message) {
                        break Err(error);
                    }
                }
                if state.done_at(Some(message.offset() + 1)) {
                    pending.remove(&partition);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(state) = pending.get_mut(&partition) {
                    state.end_of_partition_seen = true;
                    if state.done_at(position_of(partition)) {
                        pending.remove(&partition);
                    }
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "error while reading a topic range");
            }
            None => {
                // Transaction markers and aborted records take offsets but
                // are never delivered; the position still moves past them.
                let partitions: Vec<i32> = pending.keys().copied().collect();
                for partition in partitions {
                    let position = position_of(partition);
                    if position.is_some() && pending.get(&partition).is_some_and(|state| state.done_at(position)) {
                        pending.remove(&partition);
                    }
                }
            }
        }
    };
    let _ = consumer.unassign();
    result
}

/// Reads the newest usable checkpoint of each partition from the changelog
/// topic. A partition whose checkpoints cannot be used falls back (to the
/// previous generation, else to empty state) with an error log line and a
/// count in `keywatch_restore_fallbacks_total{reason}`; it never fails the
/// other partitions of the assignment.
pub fn read_checkpoints(kafka: &KafkaConfig, partitions: &[PartitionId]) -> Result<Restored, KafkaSourceError> {
    if partitions.is_empty() {
        return Ok(Restored::default());
    }
    let consumer = range_consumer(kafka, "restore")?;
    let topic = &kafka.changelog_topic;
    let Some(changelog_partitions) = partition_count(&consumer, topic)? else {
        tracing::warn!(topic = %topic, "changelog topic does not exist; starting without checkpoints");
        return Ok(Restored::default());
    };
    let mut wanted: Vec<i32> = partitions
        .iter()
        .map(|id| id.changelog_partition(changelog_partitions))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut ranges = Vec::with_capacity(wanted.len());
    for partition in wanted {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|error| KafkaSourceError::Read {
                what: format!("watermarks of {topic}/{partition}"),
                error,
            })?;
        if high > low {
            ranges.push(PartitionRange {
                topic: topic.clone(),
                partition,
                start: Offset::Beginning,
                end: RangeEnd::CaughtUp { high_watermark: high },
            });
        }
    }
    let mut assembler = CheckpointAssembler::new(partitions.iter().cloned());
    read_ranges(&consumer, &ranges, kafka.restore_timeout, |message| {
        if let Some(key) = message.key() {
            assembler.push(key, message.payload());
        }
        Ok(())
    })?;
    let restored = assembler.finish();
    for (partition, fallback) in &restored.fallbacks {
        tracing::error!(
            partition = %partition,
            reason = fallback.reason,
            detail = %fallback.detail,
            "checkpoint unusable; restoring from a fallback"
        );
        metrics::counter!("keywatch_restore_fallbacks_total", "reason" => fallback.reason).increment(1);
    }
    Ok(restored)
}
