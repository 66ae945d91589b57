//! `keywatch replay --from-kafka`: replays a time range of the keyed topic
//! (the input topics when they are keyed by API key, the repartition topic
//! otherwise) through the engine, from empty state or from a snapshot, into
//! the same three files as file replay, and optionally produces the alerts
//! to a topic that is never the live alerts topic.
//!
//! Each partition is read on its own, from the offset of `start` (looked up
//! by message timestamp, checked against the records around it, else the
//! first retained record) to its end as the reader finds it, never stopping
//! before the end offset it had when the replay began. One engine per
//! partition, as in `keywatch run`; partitions are replayed one after the
//! other, so the output files come out in the same order on every run.
//! Events outside `[start, end)` are read but not given to the engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::alert::Output;
use crate::alert::owner::attach_owners;
use crate::checkpoint::{CheckpointError, PartitionId, read_snapshot_file};
use crate::config::{Config, KafkaConfig};
use crate::counts::Counts;
use crate::decode::{Decoded, Decoder};
use crate::engine::{Engine, Quarantined};
use crate::enrich::GeoIp;
use crate::event::AccessEvent;
use crate::model::Model;
use crate::owners::OwnerBook;
use crate::sink::Rejected;
use crate::sink::file::{OutputFiles, SinkError};
use crate::sink::kafka::{QUEUE_FULL_BACKOFF, send_when_queue_has_room};
use crate::source::SourceRef;
use crate::source::kafka::KafkaSourceError;
use crate::source::kafka::range::{
    PartitionRange, RangeConsumer, RangeEnd, partition_count, range_consumer, read_ranges,
};

/// Message timestamps are set when a record is produced, which is after
/// the event it logs happened, but clocks drift: start the lookup this much
/// earlier so events near `start` logged by a fast clock are not skipped.
pub const TIMESTAMP_SLACK: Duration = Duration::from_secs(3600);

/// How long reading one partition may take before the replay gives up.
const PARTITION_READ_TIMEOUT: Duration = Duration::from_secs(3600);

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to replay and where to write it.
#[derive(Debug, Clone)]
pub struct ReplayKafkaOptions {
    /// First event time replayed, epoch milliseconds; from the oldest
    /// retained record when `None`.
    pub start_ms: Option<i64>,
    /// End of the range, exclusive; up to the newest record when `None`.
    pub end_ms: Option<i64>,
    /// Folder for `alerts.jsonl`, `revocations.jsonl`, `rejected.jsonl`.
    pub out_dir: PathBuf,
    /// Snapshot file (`keywatch run --save-snapshot` or `--export-snapshot`)
    /// to start from instead of empty state.
    pub snapshot: Option<PathBuf>,
    /// Also produce the alerts to this topic; refused when it is one of the
    /// live topics.
    pub to_topic: Option<String>,
    /// Events per engine batch (the output does not depend on it).
    pub batch_size: usize,
    /// Owners put on alerts and revocation requests (empty: none).
    pub owners: Arc<OwnerBook>,
}

/// What a replay read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayKafkaSummary {
    pub partitions: usize,
    /// Records read from the topics; events decoded, in the time range or
    /// not; rejections in the time range (written to `rejected.jsonl`).
    pub counts: Counts,
    /// Events in the time range, given to the engine.
    pub events_in_range: u64,
    /// Alerts produced to `to_topic`.
    pub produced: u64,
    /// Partitions where the offset of `start` could not be looked up by
    /// timestamp and which were scanned from their first retained record.
    pub scanned_from_beginning: Vec<String>,
}

/// Why a replay from Kafka could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayKafkaError {
    #[error("the configuration has no [kafka] section")]
    NoKafkaSection,
    #[error("refusing to produce replayed alerts to `{0}`: it is a live topic of the pipeline")]
    LiveTopic(String),
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    #[error(transparent)]
    Files(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot produce to {topic}: {detail}")]
    Produce { topic: String, detail: String },
}

/// Checks that `to_topic` is none of the topics the live pipeline reads or
/// writes, so a replay can never page anyone or corrupt state.
pub fn check_replay_topic(kafka: &KafkaConfig, to_topic: &str) -> Result<(), ReplayKafkaError> {
    let live = [
        &kafka.alerts_topic,
        &kafka.ocsf_alerts_topic,
        &kafka.revocations_topic,
        &kafka.dead_letter_topic,
        &kafka.changelog_topic,
        &kafka.repartition_topic,
    ];
    if live.iter().any(|topic| *topic == to_topic) || kafka.input_topics.iter().any(|topic| topic == to_topic) {
        return Err(ReplayKafkaError::LiveTopic(to_topic.to_string()));
    }
    Ok(())
}

/// Counts failed deliveries of the replay producer.
#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            tracing::error!(%error, "replayed alert not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Replays the range; see the module documentation.
pub fn replay_from_kafka(
    config: &Config,
    model: Arc<Model>,
    geo: Arc<GeoIp>,
    options: &ReplayKafkaOptions,
) -> Result<ReplayKafkaSummary, ReplayKafkaError> {
    let kafka = config.kafka.as_ref().ok_or(ReplayKafkaError::NoKafkaSection)?;
    if let Some(topic) = &options.to_topic {
        check_replay_topic(kafka, topic)?;
    }
    let decoder = config.input.keyed_topics_decoder(kafka.input_keyed_by_key_id);
    let mut snapshots = match &options.snapshot {
        Some(path) => read_snapshot_file(path)?,
        None => BTreeMap::new(),
    };
    let producer: Option<ThreadedProducer<DeliveryCounter>> = match &options.to_topic {
        Some(topic) => Some(
            kafka
                .producer_config(None)
                .create_with_context(DeliveryCounter::default())
                .map_err(|error| ReplayKafkaError::Produce {
                    topic: topic.clone(),
                    detail: error.to_string(),
                })?,
        ),
        None => None,
    };
    let consumer = range_consumer(kafka, "replay")?;
    let mut files = OutputFiles::create_with_format(&options.out_dir, kafka.alert_format)?.with_gate(
        crate::revoke::RevocationGate::new(&model.policy, &model.label()),
        (*options.owners).clone(),
    );
    let mut summary = ReplayKafkaSummary::default();
    let range = (options.start_ms.unwrap_or(i64::MIN), options.end_ms.unwrap_or(i64::MAX));

    for topic in kafka.keyed_topics() {
        let partitions =
            partition_count(&consumer, &topic)?.ok_or_else(|| ReplayKafkaError::MissingTopic(topic.clone()))?;
        for partition in 0..partitions {
            let id = PartitionId::new(&topic, partition);
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT)
                .map_err(|error| KafkaSourceError::Read {
                    what: format!("watermarks of {id}"),
                    error,
                })?;
            let mut start = match options.start_ms {
                Some(start_ms) => match start_offset(&consumer, &id, start_ms, low, high) {
                    Some(offset) => offset,
                    None => {
                        summary.scanned_from_beginning.push(id.to_string());
                        low
                    }
                },
                None => low,
            };
            let mut engine = Engine::new(Arc::clone(&model), Arc::clone(&geo))
                .with_fingerprinter(config.fingerprint.resolved.clone());
            if let Some(snapshot) = snapshots.remove(&id) {
                // The snapshot already holds everything before its offset.
                start = start.max(snapshot.next_offset);
                engine.restore(snapshot.engine);
            }
            summary.partitions += 1;
            let mut replay = PartitionReplay {
                id: &id,
                decoder: &decoder,
                engine,
                range,
                batch_size: options.batch_size.max(1),
                pending: Vec::new(),
                outputs: Vec::new(),
                quarantined: Vec::new(),
            };
            let ranges = [PartitionRange {
                topic: topic.clone(),
                partition,
                start: Offset::Offset(start),
                end: RangeEnd::CaughtUp { high_watermark: high },
            }];
            let mut failure: Option<ReplayKafkaError> = None;
            read_ranges(&consumer, &ranges, PARTITION_READ_TIMEOUT, |message| {
                replay.pending.push((
                    message.offset(),
                    message.timestamp().to_millis(),
                    message.payload().unwrap_or_default().to_vec(),
                ));
                if replay.pending.len() >= replay.batch_size
                    && let Err(error) = replay.flush(&mut files, &mut summary, producer.as_ref(), options)
                {
                    failure = Some(error);
                    return Err(KafkaSourceError::Timeout {
                        what: format!("{id} (stopped after an output error)"),
                        timeout: Duration::ZERO,
                    });
                }
                Ok(())
            })
            .map_err(|error| failure.take().unwrap_or(ReplayKafkaError::Source(error)))?;
            replay.flush(&mut files, &mut summary, producer.as_ref(), options)?;
            replay.finish(&mut files, &mut summary, producer.as_ref(), options)?;
            tracing::info!(partition = %id, from = start, to = high, "partition replayed");
        }
    }
    // Every partition is read: the revocation candidates are judged.
    let mut outputs = Vec::new();
    summary.counts.revocations_shadow += files.gate_outputs(&mut outputs, i64::MAX)?;
    write_outputs(&outputs, &mut files, &mut summary, producer.as_ref(), options)?;
    for id in snapshots.keys() {
        tracing::warn!(partition = %id, "snapshot partition not found in the topics; ignored");
    }
    files.sync()?;
    if let (Some(producer), Some(topic)) = (producer, &options.to_topic) {
        producer
            .flush(Duration::from_secs(60))
            .map_err(|error| ReplayKafkaError::Produce {
                topic: topic.clone(),
                detail: error.to_string(),
            })?;
        let failed = producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(ReplayKafkaError::Produce {
                topic: topic.clone(),
                detail: format!("{failed} alerts were not delivered"),
            });
        }
    }
    Ok(summary)
}

/// The offset of the first record at or after `start_ms - TIMESTAMP_SLACK`,
/// or `None` when the broker cannot say (no lookup by timestamp, or an
/// answer that the records around it contradict).
fn start_offset(consumer: &RangeConsumer, id: &PartitionId, start_ms: i64, low: i64, high: i64) -> Option<i64> {
    if high <= low {
        return Some(low);
    }
    let target = start_ms.saturating_sub(TIMESTAMP_SLACK.as_millis() as i64);
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(&id.topic, id.partition, Offset::Offset(target))
        .ok()?;
    let answer = match consumer.offsets_for_times(query, LOOKUP_TIMEOUT) {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(partition = %id, %error, "offset lookup by timestamp failed; scanning from the beginning");
            return None;
        }
    };
    let offset = answer
        .find_partition(&id.topic, id.partition)
        .map(|element| (element.offset(), element.error()));
    let found = match offset {
        Some((Offset::Offset(offset), Ok(()))) => offset.clamp(low, high),
        Some((Offset::End, Ok(()))) => high,
        other => {
            tracing::warn!(partition = %id, answer = ?other.map(|(offset, _)| offset), "no usable offset for the start time");
            return None;
        }
    };
    // Every record before the answer must be older than the target and the
    // answer itself not older: check the two neighbours, since some brokers
    // (and librdkafka's mock cluster) answer without looking.
    let before_ok = found == low || timestamp_at(consumer, id, found - 1).is_some_and(|ts| ts < target);
    let at_ok = found == high || timestamp_at(consumer, id, found).is_some_and(|ts| ts >= target);
    if before_ok && at_ok {
        Some(found)
    } else {
        tracing::warn!(partition = %id, offset = found, "offset lookup by timestamp is not trustworthy here; scanning from the beginning");
        None
    }
}

/// The timestamp of the record at `offset` (or the next one present).
fn timestamp_at(consumer: &RangeConsumer, id: &PartitionId, offset: i64) -> Option<i64> {
    let range = [PartitionRange {
        topic: id.topic.clone(),
        partition: id.partition,
        start: Offset::Offset(offset),
        end: RangeEnd::Exact(offset + 1),
    }];
    let mut timestamp = None;
    read_ranges(consumer, &range, LOOKUP_TIMEOUT, |message| {
        timestamp = message.timestamp().to_millis();
        Ok(())
    })
    .ok()?;
    timestamp
}

/// One partition being replayed.
struct PartitionReplay<'a> {
    id: &'a PartitionId,
    decoder: &'a Decoder,
    engine: Engine,
    range: (i64, i64),
    batch_size: usize,
    /// Records read and not yet processed: offset, timestamp, payload.
    pending: Vec<(i64, Option<i64>, Vec<u8>)>,
    outputs: Vec<Output>,
    /// Events the engine quarantined, for the rejected output.
    quarantined: Vec<Quarantined>,
}

impl PartitionReplay<'_> {
    fn flush(
        &mut self,
        files: &mut OutputFiles,
        summary: &mut ReplayKafkaSummary,
        producer: Option<&ThreadedProducer<DeliveryCounter>>,
        options: &ReplayKafkaOptions,
    ) -> Result<(), ReplayKafkaError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let (start_ms, end_ms) = self.range;
        let counts = &mut summary.counts;
        let mut events: Vec<AccessEvent<'_>> = Vec::with_capacity(pending.len());
        // Each event's offset, for the rejection of an event quarantined as
        // too far ahead.
        let mut offsets: Vec<u64> = Vec::with_capacity(pending.len());
        // Rejections with the number of events before them: each is written
        // after the events before it are judged, so the rejected output has
        // one order whatever the batch size.
        let mut rejects: Vec<(usize, Rejected)> = Vec::new();
        let mut scratch = Vec::new();
        for (offset, timestamp_ms, payload) in &pending {
            counts.records += 1;
            for item in self.decoder.decode_record(payload, &mut scratch) {
                match item {
                    Decoded::Event(event) => {
                        counts.events += 1;
                        if (start_ms..end_ms).contains(&event.ts_ms) {
                            events.push(event);
                            offsets.push(u64::try_from(*offset).unwrap_or(0));
                        }
                    }
                    Decoded::NoKey => counts.no_key += 1,
                    Decoded::Rejected(rejection) => {
                        // A rejected record has no event time; its message
                        // time says whether it belongs to the range.
                        if timestamp_ms
                            .is_some_and(|ts| ts < start_ms.saturating_sub(TIMESTAMP_SLACK.as_millis() as i64))
                        {
                            continue;
                        }
                        counts.count_rejected(&rejection.error);
                        let source = SourceRef::Kafka {
                            topic: self.id.topic.clone(),
                            partition: self.id.partition,
                            offset: *offset,
                            index: rejection.index,
                        };
                        let rejected =
                            Rejected::new(&rejection.error, source, payload, &self.decoder.key_field_names());
                        rejects.push((events.len(), rejected));
                    }
                }
            }
        }
        summary.events_in_range += events.len() as u64;
        let mut rejects = rejects.into_iter().peekable();
        let mut start = 0;
        loop {
            while let Some((_, rejected)) = rejects.next_if(|(after, _)| *after <= start) {
                files.write_rejected(&rejected)?;
            }
            if start >= events.len() {
                break;
            }
            let end = rejects.peek().map_or(events.len(), |(after, _)| *after);
            self.outputs.clear();
            self.engine
                .process_with_origins(&events[start..end], &offsets[start..end], &mut self.outputs);
            self.write_outputs(files, summary, producer, options)?;
            start = end;
        }
        Ok(())
    }

    /// The partition's range has been read: what the engine still holds
    /// back for ordering (the source view) is judged and written.
    fn finish(
        &mut self,
        files: &mut OutputFiles,
        summary: &mut ReplayKafkaSummary,
        producer: Option<&ThreadedProducer<DeliveryCounter>>,
        options: &ReplayKafkaOptions,
    ) -> Result<(), ReplayKafkaError> {
        self.outputs.clear();
        self.engine.finish(&mut self.outputs);
        self.write_outputs(files, summary, producer, options)
    }

    fn write_outputs(
        &mut self,
        files: &mut OutputFiles,
        summary: &mut ReplayKafkaSummary,
        producer: Option<&ThreadedProducer<DeliveryCounter>>,
        options: &ReplayKafkaOptions,
    ) -> Result<(), ReplayKafkaError> {
        self.engine.take_quarantined(&mut self.quarantined);
        for event in self.quarantined.drain(..) {
            let counts = &mut summary.counts;
            counts.rejected += 1;
            *counts.rejected_by_reason.entry("future_event".to_string()).or_default() += 1;
            let source = SourceRef::Kafka {
                topic: self.id.topic.clone(),
                partition: self.id.partition,
                offset: i64::try_from(event.origin).unwrap_or(i64::MAX),
                index: None,
            };
            files.write_rejected(&Rejected::future_event(&event, source))?;
        }
        attach_owners(&options.owners, &mut self.outputs);
        // Partitions are read one after another: their candidates wait in
        // the gate until every partition is read, then are judged in event
        // time order, as `run`'s gate judges them across partitions.
        summary.counts.revocations_shadow += files.gate_outputs(&mut self.outputs, i64::MIN)?;
        write_outputs(&self.outputs, files, summary, producer, options)
    }
}

/// Writes `outputs` (and produces their alerts with `--to-topic`).
fn write_outputs(
    outputs: &[Output],
    files: &mut OutputFiles,
    summary: &mut ReplayKafkaSummary,
    producer: Option<&ThreadedProducer<DeliveryCounter>>,
    options: &ReplayKafkaOptions,
) -> Result<(), ReplayKafkaError> {
    for output in outputs {
        files.write_output(output)?;
        summary.counts.count_output(output);
        if let (Output::Alert(alert), Some(producer), Some(topic)) = (output, producer, &options.to_topic) {
            produce_alert(producer, topic, alert)?;
            summary.produced += 1;
        }
    }
    Ok(())
}

fn produce_alert(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    alert: &crate::alert::Alert,
) -> Result<(), ReplayKafkaError> {
    let payload = serde_json::to_vec(alert).map_err(|error| ReplayKafkaError::Produce {
        topic: topic.to_string(),
        detail: error.to_string(),
    })?;
    let record = BaseRecord::to(topic)
        .key(alert.key_fingerprint.as_str())
        .payload(&payload);
    send_when_queue_has_room(producer, record, ThreadedProducer::send, || {
        std::thread::sleep(QUEUE_FULL_BACKOFF)
    })
    .map_err(|error| ReplayKafkaError::Produce {
        topic: topic.to_string(),
        detail: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_alerts_never_go_to_live_topics() {
        let mut kafka = KafkaConfig::new("b:9092", vec!["access".into()]);
        kafka.replay_topic = Some("alerts-replay".into());
        for live in [
            "keywatch-alerts",
            "keywatch-revocations",
            "keywatch-changelog",
            "access",
        ] {
            assert!(
                matches!(check_replay_topic(&kafka, live), Err(ReplayKafkaError::LiveTopic(_))),
                "{live}"
            );
        }
        assert!(check_replay_topic(&kafka, "alerts-replay").is_ok());
    }
}
