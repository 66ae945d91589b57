//! Producing to output topics: alerts and revocation requests keyed by key
//! fingerprint, dead letters with headers saying where they came from and
//! why, canonical events to the repartition topic and checkpoints to the
//! changelog; in exactly-once mode inside one transaction per batch.
//!
//! The processing stages never produce directly: they fill an [`Outbox`]
//! synchronously, and [`KafkaSink::deliver`] sends it and waits until every
//! message is acknowledged, which is what allows offsets to be committed.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::alert::Output;
use crate::config::KafkaConfig;
use crate::decode::DecodeError;
use crate::state::{ChangelogMessage, Checkpoint, PartitionId, StateError, encode_checkpoint};

/// How long a transaction step may take before the pipeline gives up.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait between attempts when librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(20);

/// Why outputs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("cannot create the kafka producer: {0}")]
    Create(KafkaError),
    #[error("cannot serialise an output for {topic}: {detail}")]
    Encode { topic: String, detail: String },
    #[error(transparent)]
    Checkpoint(#[from] StateError),
    #[error("delivery to {topic} failed: {error}")]
    Delivery { topic: String, error: KafkaError },
    #[error("delivery to {topic} was cancelled: the producer went away")]
    Cancelled { topic: String },
    #[error("transaction step `{step}` failed: {error}")]
    Transaction { step: &'static str, error: KafkaError },
}

/// The base client configuration every keywatch client shares: brokers plus
/// the pass-through properties.
pub fn base_client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    config
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
}

/// Messages a stage wants written, in order. Filled without I/O.
#[derive(Debug, Default)]
pub struct Outbox {
    pub messages: Vec<OutgoingMessage>,
}

/// Names the topics outputs go to.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    pub alerts: String,
    pub revocations: String,
    pub dead_letter: String,
    pub changelog: String,
    /// Partitions of the changelog topic, to place each checkpoint.
    pub changelog_partitions: i32,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn clear(&mut self) {
        self.messages.clear();
    }

    /// An alert or revocation request, as JSON, keyed by key fingerprint so
    /// every output about a key lands in one partition in order.
    pub fn push_output(&mut self, topics: &OutputTopics, output: &Output) -> Result<(), KafkaSinkError> {
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
        });
        Ok(())
    }

    /// The original bytes of a record that could not be decoded.
    pub fn push_dead_letter(&mut self, topics: &OutputTopics, letter: &DeadLetter<'_>) {
        self.messages.push(OutgoingMessage {
            topic: topics.dead_letter.clone(),
            partition: None,
            // Never the input's key: producers that key by API key id would
            // otherwise leak it into a topic that is read more widely.
            key: None,
            payload: letter.record.to_vec(),
            headers: dead_letter_headers(letter),
            timestamp_ms: None,
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
        });
    }

    /// A checkpoint's chunks and manifest, in the order they must be written.
    pub fn push_checkpoint(&mut self, topics: &OutputTopics, checkpoint: &Checkpoint) -> Result<(), KafkaSinkError> {
        let partition = checkpoint.partition.changelog_partition(topics.changelog_partitions);
        for ChangelogMessage { key, value } in encode_checkpoint(checkpoint)? {
            self.messages.push(OutgoingMessage {
                topic: topics.changelog.clone(),
                partition: Some(partition),
                key: Some(key),
                payload: value,
                headers: Vec::new(),
                timestamp_ms: None,
            });
        }
        Ok(())
    }
}

/// A record rejected by the decoder, with where it came from.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub record: &'a [u8],
    pub error: &'a DecodeError,
    pub source: &'a PartitionId,
    pub offset: i64,
    /// Position of the event inside a multi-event record.
    pub index: Option<u32>,
}

/// Headers of a dead letter: `reason` (a stable name such as
/// `malformed_json`), `reason_detail` (in words), `source_topic`,
/// `source_partition`, `source_offset` and, for multi-event records,
/// `source_index`.
pub fn dead_letter_headers(letter: &DeadLetter<'_>) -> Vec<(&'static str, Vec<u8>)> {
    let mut headers = vec![
        ("reason", letter.error.kind().as_bytes().to_vec()),
        ("reason_detail", letter.error.to_string().into_bytes()),
        ("source_topic", letter.source.topic.as_bytes().to_vec()),
        ("source_partition", letter.source.partition.to_string().into_bytes()),
        ("source_offset", letter.offset.to_string().into_bytes()),
    ];
    if let Some(index) = letter.index {
        headers.push(("source_index", index.to_string().into_bytes()));
    }
    headers
}

/// The producer of one stage.
pub struct KafkaSink {
    producer: FutureProducer,
    transactional: bool,
    in_transaction: bool,
}

impl KafkaSink {
    /// An idempotent producer (so retries neither reorder nor repeat), made
    /// transactional when `transactional_id` is given.
    pub fn new(kafka: &KafkaConfig, transactional_id: Option<&str>) -> Result<KafkaSink, KafkaSinkError> {
        let mut config = base_client_config(kafka);
        config.set("enable.idempotence", "true");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        let producer: FutureProducer = config.create().map_err(KafkaSinkError::Create)?;
        let sink = KafkaSink {
            producer,
            transactional: transactional_id.is_some(),
            in_transaction: false,
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

    /// Sends every message of the outbox, in order, and waits until each is
    /// acknowledged by the brokers. Empties the outbox.
    pub async fn deliver(&mut self, outbox: &mut Outbox) -> Result<usize, KafkaSinkError> {
        let mut deliveries: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(outbox.len());
        for (index, message) in outbox.messages.iter().enumerate() {
            let future = self.enqueue(message).await?;
            deliveries.push((index, future));
        }
        let count = deliveries.len();
        for (index, future) in deliveries {
            let topic = || outbox.messages[index].topic.clone();
            match future.await {
                Ok(Ok(_delivery)) => {}
                Ok(Err((error, _message))) => return Err(KafkaSinkError::Delivery { topic: topic(), error }),
                Err(_cancelled) => return Err(KafkaSinkError::Cancelled { topic: topic() }),
            }
        }
        outbox.clear();
        Ok(count)
    }

    async fn enqueue(&self, message: &OutgoingMessage) -> Result<DeliveryFuture, KafkaSinkError> {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
            for (name, value) in &message.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&message.topic)
                .payload(message.payload.as_slice())
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_str());
            }
            if let Some(partition) = message.partition {
                record = record.partition(partition);
            }
            if let Some(timestamp_ms) = message.timestamp_ms {
                record = record.timestamp(timestamp_ms);
            }
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The local queue drains as the brokers acknowledge; wait
                    // without blocking the runtime.
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => {
                    return Err(KafkaSinkError::Delivery {
                        topic: message.topic.clone(),
                        error,
                    });
                }
            }
        }
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

    /// Waits until everything queued is delivered.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaSinkError> {
        let producer = self.producer.clone();
        run_blocking("flush", move || producer.flush(timeout)).await
    }
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

    fn topics() -> OutputTopics {
        OutputTopics {
            alerts: "alerts".into(),
            revocations: "revocations".into(),
            dead_letter: "dlq".into(),
            changelog: "changelog".into(),
            changelog_partitions: 4,
        }
    }

    #[test]
    fn dead_letters_keep_the_bytes_and_say_where_they_came_from() {
        let source = PartitionId::new("access", 3);
        let error = DecodeError::BadIp("nope".into());
        let letter = DeadLetter {
            record: b"{\"ip\":\"nope\"}",
            error: &error,
            source: &source,
            offset: 41,
            index: None,
        };
        let mut outbox = Outbox::default();
        outbox.push_dead_letter(&topics(), &letter);
        let message = &outbox.messages[0];
        assert_eq!(message.topic, "dlq");
        assert_eq!(message.payload, b"{\"ip\":\"nope\"}");
        assert_eq!(message.key, None, "the input key may be a raw key id");
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| String::from_utf8(value.clone()).unwrap())
        };
        assert_eq!(header("reason").as_deref(), Some("bad_ip"));
        assert_eq!(header("source_topic").as_deref(), Some("access"));
        assert_eq!(header("source_partition").as_deref(), Some("3"));
        assert_eq!(header("source_offset").as_deref(), Some("41"));
        assert_eq!(header("source_index"), None);
        assert!(header("reason_detail").unwrap().contains("nope"));

        let indexed = DeadLetter {
            index: Some(2),
            ..letter
        };
        assert!(dead_letter_headers(&indexed).contains(&("source_index", b"2".to_vec())));
    }

    #[test]
    fn checkpoints_go_to_the_partition_of_their_source_partition_manifest_last() {
        let checkpoint = Checkpoint {
            partition: PartitionId::new("access", 6),
            next_offset: 10,
            generation: 0,
            snapshot: crate::engine::EngineSnapshot::default(),
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
    fn client_config_passes_properties_through() {
        let mut kafka = KafkaConfig::new("b1:9092,b2:9092", vec!["in".into()]);
        kafka.properties.insert("security.protocol".into(), "sasl_ssl".into());
        let config = base_client_config(&kafka);
        assert_eq!(config.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
    }
}
