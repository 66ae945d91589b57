//! Producing to output topics: alerts and revocation requests keyed by key
//! fingerprint, dead letters with headers saying where they came from and
//! why, canonical events to the repartition topic and checkpoints to the
//! changelog; in exactly-once mode inside one transaction per batch.
//!
//! The processing stages never produce directly: they fill an [`Outbox`]
//! synchronously, and [`KafkaSink::deliver`] sends it and waits until every
//! message is acknowledged, which is what allows offsets to be committed.

use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::alert::Output;
use crate::checkpoint::{ChangelogMessage, Checkpoint, CheckpointError, PartitionId, encode_checkpoint};
use crate::config::KafkaConfig;
use crate::decode::Rejection;
use crate::engine::Quarantined;
use crate::ocsf::AlertFormat;
use crate::source::kafka::group::InputRecord;

/// How long a transaction step may take before the pipeline gives up.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait between offers when librdkafka's local queue is full.
pub const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(20);

/// Why outputs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("cannot create the kafka producer: {0}")]
    Create(KafkaError),
    #[error("cannot serialise an output for {topic}: {detail}")]
    Encode { topic: String, detail: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("delivery to {topic} failed: {error}")]
    Delivery { topic: String, error: KafkaError },
    #[error("delivery to {topic} was cancelled: the producer went away")]
    Cancelled { topic: String },
    #[error("queueing outputs did not finish: {0}")]
    Queueing(String),
    #[error("transaction step `{step}` failed: {error}")]
    Transaction { step: &'static str, error: KafkaError },
}

/// Offers `record` to librdkafka's local queue through `send`, the
/// producer's send method (`BaseProducer::send`, `ThreadedProducer::send`,
/// `FutureProducer::send_result`), and, while the queue is full, calls
/// `wait_for_room` and offers it again: the queue drains as the brokers
/// acknowledge, so a full queue is backpressure, not an error. Blocks while
/// it waits: call it where blocking is allowed.
pub fn send_when_queue_has_room<P, R, T>(
    producer: &P,
    mut record: R,
    send: impl Fn(&P, R) -> Result<T, (KafkaError, R)>,
    mut wait_for_room: impl FnMut(),
) -> Result<T, KafkaError> {
    loop {
        match send(producer, record) {
            Ok(queued) => return Ok(queued),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                wait_for_room();
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// One message waiting to be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub topic: String,
    /// `None` lets librdkafka pick by key.
    pub partition: Option<i32>,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// Message timestamp in epoch milliseconds; `None` lets the producer
    /// use the current time.
    pub timestamp_ms: Option<i64>,
    /// Produce a null value (a tombstone, which compaction deletes the
    /// key with) instead of `payload`.
    pub tombstone: bool,
}

/// Messages a stage wants written, in order. Filled without I/O.
#[derive(Debug)]
pub struct Outbox {
    pub messages: Vec<OutgoingMessage>,
    /// Largest dead-letter payload; longer records are cut to this size.
    dead_letter_max_bytes: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::with_dead_letter_limit(DEFAULT_DEAD_LETTER_MAX_BYTES)
    }
}

pub use crate::config::kafka::DEFAULT_DEAD_LETTER_MAX_BYTES;

/// Most failing element indexes listed in the `source_indexes` header; the
/// `rejected_count` header gives the full number.
const MAX_LISTED_INDEXES: usize = 256;

/// Longest `reason_detail` header, in bytes.
const MAX_REASON_DETAIL_BYTES: usize = 512;

/// Names the topics outputs go to.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    pub alerts: String,
    pub revocations: String,
    pub digests: String,
    pub dead_letter: String,
    pub changelog: String,
    /// Partitions of the changelog topic, to place each checkpoint.
    pub changelog_partitions: i32,
    /// Which formats alerts go out in, and the topic of OCSF alerts.
    pub alert_output: AlertOutput,
}

/// Where alerts go by format: native alerts to `alerts`, OCSF Detection
/// Findings to `ocsf_topic`.
#[derive(Debug, Clone, Default)]
pub struct AlertOutput {
    pub format: AlertFormat,
    pub ocsf_topic: String,
}

impl AlertOutput {
    /// The `[kafka]` section's choice.
    pub fn of(kafka: &KafkaConfig) -> AlertOutput {
        AlertOutput {
            format: kafka.alert_format,
            ocsf_topic: kafka.ocsf_alerts_topic.clone(),
        }
    }
}

impl Outbox {
    /// An empty outbox whose dead letters hold at most `dead_letter_max_bytes`
    /// of the original record.
    pub fn with_dead_letter_limit(dead_letter_max_bytes: usize) -> Outbox {
        Outbox {
            messages: Vec::new(),
            dead_letter_max_bytes,
        }
    }

    /// An empty outbox with this one's limits, to be appended to it.
    pub fn empty_like(&self) -> Outbox {
        Outbox::with_dead_letter_limit(self.dead_letter_max_bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn clear(&mut self) {
        self.messages.clear();
    }

    /// An alert, revocation request or digest, as JSON, keyed by key fingerprint so
    /// every output about a key lands in one partition in order.
    pub fn push_output(&mut self, topics: &OutputTopics, output: &Output) -> Result<(), KafkaSinkError> {
        if let Output::Alert(alert) = output {
            let routing = &topics.alert_output;
            if routing.format.ocsf() {
                let payload = crate::ocsf::to_json_line(alert).map_err(|error| KafkaSinkError::Encode {
                    topic: routing.ocsf_topic.clone(),
                    detail: error.to_string(),
                })?;
                self.messages.push(OutgoingMessage {
                    topic: routing.ocsf_topic.clone(),
                    partition: None,
                    key: Some(alert.key_fingerprint.clone()),
                    payload,
                    headers: vec![("id", alert.id.as_bytes().to_vec())],
                    timestamp_ms: None,
                    tombstone: false,
                });
            }
            if !routing.format.native() {
                return Ok(());
            }
        }
        let (topic, key, id, payload) = match output {
            Output::Alert(alert) => (
                &topics.alerts,
                &alert.key_fingerprint,
                &alert.id,
                serde_json::to_vec(alert),
            ),
            Output::Revocation(request) => (
                &topics.revocations,
                &request.key_fingerprint,
                &request.idempotency_key,
                serde_json::to_vec(request),
            ),
            Output::Digest(digest) => (
                &topics.digests,
                &digest.key_fingerprint,
                &digest.id,
                serde_json::to_vec(digest),
            ),
        };
        let payload = payload.map_err(|err| KafkaSinkError::Encode {
            topic: topic.clone(),
            detail: err.to_string(),
        })?;
        self.messages.push(OutgoingMessage {
            topic: topic.clone(),
            partition: None,
            key: Some(key.clone()),
            payload,
            headers: vec![("id", id.as_bytes().to_vec())],
            timestamp_ms: None,
            tombstone: false,
        });
        Ok(())
    }

    /// One dead letter for an input record with rejected events: its
    /// original bytes, cut to the configured limit, with headers saying
    /// where it came from, why, which elements of a multi-event record
    /// failed, and whether and from what size it was cut. Once per record,
    /// however many of its elements failed; `rejections` must not be empty.
    pub fn push_dead_letter(&mut self, topics: &OutputTopics, input: &InputRecord, rejections: &[Rejection]) {
        let Some(first) = rejections.first() else {
            return;
        };
        let original = input.payload.as_deref().unwrap_or_default();
        let kept = original.len().min(self.dead_letter_max_bytes);
        let mut headers = dead_letter_headers(input, first, rejections);
        headers.push(("original_size", original.len().to_string().into_bytes()));
        headers.push(("truncated", (kept < original.len()).to_string().into_bytes()));
        self.messages.push(OutgoingMessage {
            topic: topics.dead_letter.clone(),
            partition: None,
            // Never the input's key: producers that key by API key id would
            // otherwise leak it into a topic that is read more widely.
            key: None,
            payload: original[..kept].to_vec(),
            headers,
            timestamp_ms: None,
            tombstone: false,
        });
    }

    /// A dead letter for an event the engine quarantined as too far ahead
    /// of its input's time (`future_event`): the event as the engine held
    /// it (key by fingerprint only, never the raw id), with the headers of
    /// any dead letter naming the input record it came from. The original
    /// bytes are gone by then: quarantine happens batches later, once the
    /// input's time has moved on without confirming the event.
    pub fn push_quarantined(&mut self, topics: &OutputTopics, source: &PartitionId, event: &Quarantined) {
        let payload = serde_json::to_vec(event).unwrap_or_default();
        let detail = format!(
            "event time {} is too far ahead of the input's time {} and no other key confirmed it",
            event.ts, event.input_time
        );
        let kept = payload.len().min(self.dead_letter_max_bytes);
        self.messages.push(OutgoingMessage {
            topic: topics.dead_letter.clone(),
            partition: None,
            key: None,
            headers: vec![
                ("reason", b"future_event".to_vec()),
                ("reason_detail", detail.into_bytes()),
                ("source_topic", source.topic.as_bytes().to_vec()),
                ("source_partition", source.partition.to_string().into_bytes()),
                ("source_offset", event.origin.to_string().into_bytes()),
                ("original_size", payload.len().to_string().into_bytes()),
                ("truncated", (kept < payload.len()).to_string().into_bytes()),
            ],
            payload: payload[..kept].to_vec(),
            timestamp_ms: None,
            tombstone: false,
        });
    }

    /// A canonical event for the repartition topic, keyed by fingerprint.
    /// It keeps the input record's timestamp, as Kafka Streams does, so
    /// time-based retention and lookups treat it like its source.
    pub fn push_repartitioned(
        &mut self,
        topic: &str,
        key_fingerprint: String,
        canonical_json: Vec<u8>,
        timestamp_ms: Option<i64>,
    ) {
        self.messages.push(OutgoingMessage {
            topic: topic.to_string(),
            partition: None,
            key: Some(key_fingerprint),
            payload: canonical_json,
            headers: Vec::new(),
            timestamp_ms,
            tombstone: false,
        });
    }

    /// A checkpoint's chunks and manifest, in the order they must be written.
    pub fn push_checkpoint(&mut self, topics: &OutputTopics, checkpoint: &Checkpoint) -> Result<(), KafkaSinkError> {
        self.push_changelog(topics, &checkpoint.partition, encode_checkpoint(checkpoint)?);
        Ok(())
    }

    /// Changelog messages of one partition's checkpoint, in order, to the
    /// changelog partition of that partition.
    pub fn push_changelog(&mut self, topics: &OutputTopics, source: &PartitionId, messages: Vec<ChangelogMessage>) {
        let partition = source.changelog_partition(topics.changelog_partitions);
        for ChangelogMessage { key, value, tombstone } in messages {
            self.messages.push(OutgoingMessage {
                topic: topics.changelog.clone(),
                partition: Some(partition),
                key: Some(key),
                payload: value,
                headers: Vec::new(),
                timestamp_ms: None,
                tombstone,
            });
        }
    }
}

/// Headers of a dead letter: `reason` (a stable name such as
/// `malformed_json`) and `reason_detail` (in words, cut to 512 bytes) of the
/// first rejection, `source_topic`, `source_partition`, `source_offset`
/// and, for multi-event records, `rejected_count`, `source_index` (the first
/// failing element) and `source_indexes` (the failing elements, comma
/// separated, at most 256 of them).
fn dead_letter_headers(
    input: &InputRecord,
    first: &Rejection,
    rejections: &[Rejection],
) -> Vec<(&'static str, Vec<u8>)> {
    let error = &first.error;
    let mut detail = error.to_string().into_bytes();
    if detail.len() > MAX_REASON_DETAIL_BYTES {
        detail.truncate(MAX_REASON_DETAIL_BYTES);
        // Cut on a character boundary, so the header stays UTF-8.
        let valid = match std::str::from_utf8(&detail) {
            Ok(_) => detail.len(),
            Err(error) => error.valid_up_to(),
        };
        detail.truncate(valid);
        detail.extend_from_slice("…".as_bytes());
    }
    let mut headers = vec![
        ("reason", error.kind().as_bytes().to_vec()),
        ("reason_detail", detail),
        ("source_topic", input.topic.as_bytes().to_vec()),
        ("source_partition", input.partition.to_string().into_bytes()),
        ("source_offset", input.offset.to_string().into_bytes()),
    ];
    if let Some(index) = first.index {
        headers.push(("source_index", index.to_string().into_bytes()));
        headers.push(("rejected_count", rejections.len().to_string().into_bytes()));
        let listed: Vec<String> = rejections
            .iter()
            .filter_map(|rejection| rejection.index)
            .take(MAX_LISTED_INDEXES)
            .map(|index| index.to_string())
            .collect();
        headers.push(("source_indexes", listed.join(",").into_bytes()));
    }
    headers
}

/// The producer of one stage.
pub struct KafkaSink {
    producer: FutureProducer,
    transactional: bool,
    in_transaction: bool,
    /// Messages to this topic may be dropped when they cannot be produced.
    dead_letter_topic: String,
    /// Dead letters dropped so far, by reason.
    dropped_dead_letters: std::collections::BTreeMap<String, u64>,
}

/// Why one message of a delivery failed, and whether it was queued at all.
struct FailedMessage {
    index: usize,
    error: KafkaSinkError,
    /// Refused by librdkafka before it reached a broker (too large, unknown
    /// topic): an open transaction is not affected.
    local: bool,
}

/// Whether a failed message may be dropped rather than stopping the stage:
/// only dead letters, which are a copy of input kept for people, never the
/// outputs, checkpoints or internal topics that correctness depends on.
pub fn is_droppable(message: &OutgoingMessage, dead_letter_topic: &str) -> bool {
    message.topic == dead_letter_topic
}

/// The `reason` label of a dropped dead letter: the librdkafka error code
/// name (`MessageSizeTooLarge`, `TopicAuthorizationFailed`, ...).
fn drop_reason(error: &KafkaSinkError) -> String {
    let code = match error {
        KafkaSinkError::Delivery { error, .. } => error.rdkafka_error_code(),
        _ => None,
    };
    match code {
        Some(code) => format!("{code:?}"),
        None => match error {
            KafkaSinkError::Cancelled { .. } => "cancelled".to_string(),
            _ => "other".to_string(),
        },
    }
}

impl KafkaSink {
    /// An idempotent producer (so retries neither reorder nor repeat), made
    /// transactional when `transactional_id` is given.
    pub fn new(kafka: &KafkaConfig, transactional_id: Option<&str>) -> Result<KafkaSink, KafkaSinkError> {
        let producer: FutureProducer = kafka
            .producer_config(transactional_id)
            .create()
            .map_err(KafkaSinkError::Create)?;
        let sink = KafkaSink {
            producer,
            transactional: transactional_id.is_some(),
            in_transaction: false,
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            dropped_dead_letters: std::collections::BTreeMap::new(),
        };
        Ok(sink)
    }

    /// Registers the transactional id with the brokers, fencing any earlier
    /// producer with the same id and aborting its open transaction.
    pub async fn init_transactions(&self) -> Result<(), KafkaSinkError> {
        let producer = self.producer.clone();
        run_blocking("init_transactions", move || {
            producer.init_transactions(TRANSACTION_TIMEOUT)
        })
        .await
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Opens a transaction (exactly-once mode only).
    pub fn begin(&mut self) -> Result<(), KafkaSinkError> {
        if !self.transactional || self.in_transaction {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|error| KafkaSinkError::Transaction {
                step: "begin_transaction",
                error,
            })?;
        self.in_transaction = true;
        Ok(())
    }

    /// Dead letters dropped so far because they could not be produced, by
    /// reason.
    pub fn dropped_dead_letters(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.dropped_dead_letters
    }

    /// Sends every message of the outbox, in order, and waits until each is
    /// acknowledged by the brokers. Empties the outbox, delivered or not.
    ///
    /// A dead letter that cannot be produced after librdkafka's retries (too
    /// large, topic not authorised, ...) is counted in
    /// `keywatch_dead_letters_dropped_total{reason}` and dropped: one
    /// unproducible record must not stop the group. In a transaction, a
    /// dead letter refused by a broker poisons the transaction, so it is
    /// aborted and everything else is sent again in a new one. Any other
    /// failure is returned.
    pub async fn deliver(&mut self, outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        if outbox.is_empty() {
            return Ok(());
        }
        let mut messages = std::mem::take(&mut outbox.messages);
        let failures;
        (messages, failures) = self.send_all(messages).await?;
        let mut broker_refused_dead_letter = false;
        let mut dropped = vec![false; messages.len()];
        for failure in failures {
            let message = &messages[failure.index];
            if !is_droppable(message, &self.dead_letter_topic) {
                return Err(failure.error);
            }
            self.count_dropped(message, &failure.error);
            dropped[failure.index] = true;
            broker_refused_dead_letter |= !failure.local;
        }
        if broker_refused_dead_letter && self.in_transaction {
            tracing::warn!("a dead letter was refused inside a transaction; sending the batch again without it");
            self.abort_transaction().await?;
            self.begin()?;
            let mut index = 0;
            messages.retain(|_| {
                let keep = !dropped[index];
                index += 1;
                keep
            });
            let failures;
            (messages, failures) = self.send_all(messages).await?;
            // Dead letters were counted once already; anything else refused
            // twice is fatal.
            if let Some(failure) = failures.into_iter().next() {
                return Err(failure.error);
            }
        }
        // The next batch reuses the allocation.
        outbox.messages = messages;
        outbox.clear();
        Ok(())
    }

    fn count_dropped(&mut self, message: &OutgoingMessage, error: &KafkaSinkError) {
        let reason = drop_reason(error);
        tracing::warn!(
            topic = %message.topic,
            bytes = message.payload.len(),
            %reason,
            %error,
            "dead letter cannot be produced; dropped"
        );
        metrics::counter!("keywatch_dead_letters_dropped_total", "reason" => reason.clone()).increment(1);
        *self.dropped_dead_letters.entry(reason).or_default() += 1;
    }

    /// Queues every message and waits for each acknowledgement; returns the
    /// messages (for reuse or a second attempt) and the ones that failed.
    async fn send_all(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(Vec<OutgoingMessage>, Vec<FailedMessage>), KafkaSinkError> {
        let producer = self.producer.clone();
        // Queueing waits while librdkafka's local queue is full: off the
        // async workers.
        let (messages, queued) = tokio::task::spawn_blocking(move || {
            let queued: Vec<Result<DeliveryFuture, KafkaSinkError>> =
                messages.iter().map(|message| enqueue(&producer, message)).collect();
            (messages, queued)
        })
        .await
        .map_err(|error| KafkaSinkError::Queueing(error.to_string()))?;
        let mut failures = Vec::new();
        for (index, (message, queued)) in messages.iter().zip(queued).enumerate() {
            let future = match queued {
                Ok(future) => future,
                Err(error) => {
                    failures.push(FailedMessage {
                        index,
                        error,
                        local: true,
                    });
                    continue;
                }
            };
            let topic = || message.topic.clone();
            let error = match future.await {
                Ok(Ok(_delivery)) => continue,
                Ok(Err((error, _message))) => KafkaSinkError::Delivery { topic: topic(), error },
                Err(_cancelled) => KafkaSinkError::Cancelled { topic: topic() },
            };
            failures.push(FailedMessage {
                index,
                error,
                local: false,
            });
        }
        Ok((messages, failures))
    }

    /// Adds the consumer offsets to the open transaction and commits it:
    /// outputs, checkpoints and offsets become visible together or not at all.
    pub async fn commit_transaction(
        &mut self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), KafkaSinkError> {
        if !self.in_transaction {
            return Ok(());
        }
        let producer = self.producer.clone();
        let result = run_blocking("commit_transaction", move || {
            if offsets.count() > 0 {
                producer.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)?;
            }
            producer.commit_transaction(TRANSACTION_TIMEOUT)
        })
        .await;
        // After a failure the transaction stays open for abort_transaction.
        if result.is_ok() {
            self.in_transaction = false;
        }
        result
    }

    /// Aborts the open transaction, if any.
    pub async fn abort_transaction(&mut self) -> Result<(), KafkaSinkError> {
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        let producer = self.producer.clone();
        run_blocking("abort_transaction", move || {
            producer.abort_transaction(TRANSACTION_TIMEOUT)
        })
        .await
    }
}

/// Queues one message, waiting while librdkafka's local queue is full.
fn enqueue(producer: &FutureProducer, message: &OutgoingMessage) -> Result<DeliveryFuture, KafkaSinkError> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&message.topic).headers(headers);
    if !message.tombstone {
        record = record.payload(message.payload.as_slice());
    }
    if let Some(key) = &message.key {
        record = record.key(key.as_str());
    }
    if let Some(partition) = message.partition {
        record = record.partition(partition);
    }
    if let Some(timestamp_ms) = message.timestamp_ms {
        record = record.timestamp(timestamp_ms);
    }
    send_when_queue_has_room(producer, record, FutureProducer::send_result, || {
        std::thread::sleep(QUEUE_FULL_BACKOFF)
    })
    .map_err(|error| KafkaSinkError::Delivery {
        topic: message.topic.clone(),
        error,
    })
}

/// Runs a blocking librdkafka call off the async workers.
async fn run_blocking<F>(step: &'static str, call: F) -> Result<(), KafkaSinkError>
where
    F: FnOnce() -> Result<(), KafkaError> + Send + 'static,
{
    let result = match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(join_error) => {
            tracing::error!(step, error = %join_error, "blocking kafka call did not finish");
            Err(KafkaError::Canceled)
        }
    };
    result.map_err(|error| KafkaSinkError::Transaction { step, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::PartitionId;
    use crate::decode::DecodeError;

    fn topics() -> OutputTopics {
        OutputTopics {
            alerts: "alerts".into(),
            revocations: "revocations".into(),
            digests: "digests".into(),
            dead_letter: "dlq".into(),
            changelog: "changelog".into(),
            changelog_partitions: 4,
            alert_output: AlertOutput::default(),
        }
    }

    fn input(payload: &[u8]) -> InputRecord {
        InputRecord {
            topic: "access".into(),
            partition: 3,
            offset: 41,
            timestamp_ms: None,
            payload: Some(payload.to_vec()),
        }
    }

    fn header(message: &OutgoingMessage, name: &str) -> Option<String> {
        message
            .headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| String::from_utf8(value.clone()).unwrap())
    }

    #[test]
    fn dead_letters_keep_the_bytes_and_say_where_they_came_from() {
        let input = input(b"{\"ip\":\"nope\"}");
        let rejection = Rejection {
            error: DecodeError::BadIp("nope".into()),
            index: None,
        };
        let mut outbox = Outbox::default();
        outbox.push_dead_letter(&topics(), &input, std::slice::from_ref(&rejection));
        let message = &outbox.messages[0];
        assert_eq!(message.topic, "dlq");
        assert_eq!(message.payload, b"{\"ip\":\"nope\"}");
        assert_eq!(message.key, None, "the input key may be a raw key id");
        assert_eq!(header(message, "reason").as_deref(), Some("bad_ip"));
        assert_eq!(header(message, "source_topic").as_deref(), Some("access"));
        assert_eq!(header(message, "source_partition").as_deref(), Some("3"));
        assert_eq!(header(message, "source_offset").as_deref(), Some("41"));
        assert_eq!(header(message, "original_size").as_deref(), Some("13"));
        assert_eq!(header(message, "truncated").as_deref(), Some("false"));
        assert_eq!(header(message, "source_index"), None);
        assert!(header(message, "reason_detail").unwrap().contains("nope"));
    }

    #[test]
    fn a_record_with_many_bad_elements_is_one_dead_letter_naming_them() {
        let input = input(b"{\"Records\":[...]}");
        let rejections: Vec<Rejection> = [1u32, 4, 7]
            .into_iter()
            .map(|index| Rejection {
                error: DecodeError::BadIp("x".into()),
                index: Some(index),
            })
            .collect();
        let mut outbox = Outbox::default();
        outbox.push_dead_letter(&topics(), &input, &rejections);
        assert_eq!(outbox.len(), 1);
        let message = &outbox.messages[0];
        assert_eq!(header(message, "source_indexes").as_deref(), Some("1,4,7"));
        assert_eq!(header(message, "rejected_count").as_deref(), Some("3"));
        assert_eq!(header(message, "source_index").as_deref(), Some("1"));
        outbox.push_dead_letter(&topics(), &input, &[]);
        assert_eq!(outbox.len(), 1, "no rejection, no dead letter");
    }

    #[test]
    fn a_large_record_is_cut_to_the_limit_with_its_original_size() {
        let big = vec![b'x'; 900_000];
        let rejection = Rejection {
            error: DecodeError::MalformedJson("x".repeat(10_000)),
            index: None,
        };
        let mut outbox = Outbox::with_dead_letter_limit(4096);
        outbox.push_dead_letter(&topics(), &input(&big), &[rejection]);
        let message = &outbox.messages[0];
        assert_eq!(message.payload.len(), 4096);
        assert_eq!(header(message, "original_size").as_deref(), Some("900000"));
        assert_eq!(header(message, "truncated").as_deref(), Some("true"));
        let detail = header(message, "reason_detail").unwrap();
        assert!(detail.len() <= MAX_REASON_DETAIL_BYTES + 3, "{}", detail.len());
        let headers: usize = message
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        assert!(headers < 2048, "headers stay small: {headers}");
    }

    /// A producer whose messages above 2,000 bytes are refused before they
    /// reach any broker: no broker is needed to see how refusals are handled.
    fn small_message_sink() -> KafkaSink {
        let mut kafka = KafkaConfig::new("127.0.0.1:1", vec!["access".into()]);
        kafka.dead_letter_topic = "dlq".into();
        kafka.properties.insert("message.max.bytes".into(), "2000".into());
        KafkaSink::new(&kafka, None).unwrap()
    }

    fn message(topic: &str, bytes: usize) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.into(),
            partition: None,
            key: None,
            payload: vec![b'x'; bytes],
            headers: Vec::new(),
            timestamp_ms: None,
            tombstone: false,
        }
    }

    #[tokio::test]
    async fn an_unproducible_dead_letter_is_counted_and_skipped() {
        let mut sink = small_message_sink();
        let mut outbox = Outbox::default();
        outbox.messages.push(message("dlq", 50_000));
        sink.deliver(&mut outbox)
            .await
            .expect("a dead letter never stops the stage");
        assert!(outbox.is_empty());
        assert_eq!(sink.dropped_dead_letters().get("MessageSizeTooLarge"), Some(&1));
    }

    #[tokio::test]
    async fn an_unproducible_output_is_fatal() {
        let mut sink = small_message_sink();
        let mut outbox = Outbox::default();
        outbox.messages.push(message("alerts", 50_000));
        let error = sink.deliver(&mut outbox).await.expect_err("outputs may not be dropped");
        assert!(error.to_string().contains("alerts"), "{error}");
        assert!(sink.dropped_dead_letters().is_empty());
    }

    #[test]
    fn checkpoints_go_to_the_partition_of_their_source_partition_manifest_last() {
        let checkpoint = Checkpoint {
            partition: PartitionId::new("access", 6),
            next_offset: 10,
            generation: 0,
            group_generation: None,
            snapshot: crate::engine::EngineSnapshot::default(),
            incremental: false,
        };
        let mut outbox = Outbox::default();
        outbox.push_checkpoint(&topics(), &checkpoint).unwrap();
        assert!(outbox.len() >= 2);
        assert!(
            outbox
                .messages
                .iter()
                .all(|m| m.topic == "changelog" && m.partition == Some(2))
        );
        assert_eq!(outbox.messages.last().unwrap().key.as_deref(), Some("access/6"));
    }

    #[test]
    fn a_full_queue_is_waited_out_and_other_errors_are_not() {
        // A stand-in producer whose queue has room from the third offer on.
        let offers = std::cell::Cell::new(0);
        let mut waits = 0;
        let queued = send_when_queue_has_room(
            &offers,
            "record",
            |offers, record| {
                offers.set(offers.get() + 1);
                if offers.get() < 3 {
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record))
                } else {
                    Ok(record.len())
                }
            },
            || waits += 1,
        );
        assert_eq!(queued.ok(), Some(6));
        assert_eq!((offers.get(), waits), (3, 2));
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let refused = send_when_queue_has_room(
            &(),
            "record",
            |(), record| Err::<(), _>((too_large.clone(), record)),
            || panic!("only a full queue is waited out"),
        );
        assert!(refused.is_err());
    }
}
