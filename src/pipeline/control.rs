//! The control and acknowledgement topics, read by every instance outside
//! any consumer group: all their partitions are assigned, from the first
//! retained record, so after a restart the newest kill-switch message holds
//! again and acknowledgements of earlier requests are known. A thread reads
//! them into a [`ControlFeed`] that the revocation gate stage takes from at
//! each batch (and each second when idle).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::revoke::{AckMessage, ControlMessage};
use crate::source::kafka::KafkaSourceError;
use crate::source::kafka::range::{partition_count, range_consumer};

/// How long a poll waits, which bounds how late a cancellation is seen.
const POLL: Duration = Duration::from_millis(100);

/// How often a topic that does not exist yet is looked for again.
const RETRY_MISSING: Duration = Duration::from_secs(5);

/// What the reader has seen and the gate stage has not taken yet.
#[derive(Debug, Default)]
pub struct ControlFeed {
    inner: Mutex<FeedInner>,
    /// The control topic has been read to its end once (or does not
    /// exist): the newest mode is known.
    ready: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct FeedInner {
    /// The newest control message: stays until a newer one comes.
    mode: Option<ControlMessage>,
    acks: Vec<AckMessage>,
}

impl ControlFeed {
    pub fn push_control(&self, message: ControlMessage) {
        if let Ok(mut inner) = self.inner.lock() {
            tracing::warn!(
                mode = %message.mode,
                at = message.at.as_deref().unwrap_or(""),
                by = message.by.as_deref().unwrap_or(""),
                "revocation control message read"
            );
            inner.mode = Some(message);
        }
    }

    pub fn push_ack(&self, ack: AckMessage) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.acks.push(ack);
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the control topic has been read to its end, at most
    /// `timeout`; returns whether it was.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The newest control message (kept) and the acknowledgements since the
    /// last call (taken).
    pub fn take(&self) -> (Option<ControlMessage>, Vec<AckMessage>) {
        match self.inner.lock() {
            Ok(mut inner) => (inner.mode.clone(), std::mem::take(&mut inner.acks)),
            Err(_) => (None, Vec::new()),
        }
    }
}

/// One topic read from its start by assignment: partitions assigned once
/// the topic exists, and whether every partition has been read to its end
/// once.
struct TopicReader {
    topic: String,
    consumer: crate::source::kafka::range::RangeConsumer,
    partitions: Option<i32>,
    at_end: std::collections::BTreeSet<i32>,
    last_lookup: Option<std::time::Instant>,
}

impl TopicReader {
    fn new(kafka: &KafkaConfig, topic: &str, purpose: &str) -> Result<TopicReader, KafkaSourceError> {
        Ok(TopicReader {
            topic: topic.to_string(),
            consumer: range_consumer(kafka, &format!("{purpose}-{}", kafka.instance_name()))?,
            partitions: None,
            at_end: Default::default(),
            last_lookup: None,
        })
    }

    /// Assigns every partition from its start once the topic exists; returns
    /// whether the topic was found missing (nothing to read).
    fn assign_when_there(&mut self) -> bool {
        if self.partitions.is_some() || self.last_lookup.is_some_and(|at| at.elapsed() < RETRY_MISSING) {
            return false;
        }
        self.last_lookup = Some(std::time::Instant::now());
        match partition_count(&self.consumer, &self.topic) {
            Ok(Some(count)) => {
                let mut list = TopicPartitionList::new();
                for partition in 0..count {
                    let _ = list.add_partition_offset(&self.topic, partition, Offset::Beginning);
                }
                match self.consumer.assign(&list) {
                    Ok(()) => self.partitions = Some(count),
                    Err(error) => tracing::warn!(topic = %self.topic, %error, "cannot assign the topic"),
                }
                false
            }
            Ok(None) => {
                tracing::warn!(topic = %self.topic, "topic does not exist yet; looking again later");
                true
            }
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "cannot read the topic's metadata");
                false
            }
        }
    }

    /// Polls once; hands a message's payload to `on_payload`.
    fn poll(&mut self, on_payload: impl FnOnce(&[u8], i64)) {
        if self.partitions.is_none() {
            std::thread::sleep(POLL);
            return;
        }
        match self.consumer.poll(POLL) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.at_end.insert(partition);
            }
            Some(Err(error)) => tracing::warn!(topic = %self.topic, %error, "reading the topic"),
            Some(Ok(message)) => on_payload(message.payload().unwrap_or_default(), message.offset()),
        }
    }

    fn caught_up(&self) -> bool {
        self.partitions
            .is_some_and(|count| (0..count).all(|partition| self.at_end.contains(&partition)))
    }
}

/// Starts the reader thread; it stops when `cancel` fires.
pub fn start_reader(
    kafka: &KafkaConfig,
    feed: Arc<ControlFeed>,
    cancel: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, KafkaSourceError> {
    let mut control = TopicReader::new(kafka, &kafka.control_topic, "control")?;
    let mut acks = TopicReader::new(kafka, &kafka.revocation_acks_topic, "acks")?;
    std::thread::Builder::new()
        .name("kafka-control".into())
        .spawn(move || {
            while !cancel.is_cancelled() {
                if control.assign_when_there() {
                    // No control topic: nothing can override the model.
                    feed.set_ready();
                }
                acks.assign_when_there();
                control.poll(
                    |payload, offset| match serde_json::from_slice::<ControlMessage>(payload) {
                        Ok(message) => feed.push_control(message),
                        Err(error) => tracing::warn!(offset, %error, "unreadable control message skipped"),
                    },
                );
                if control.caught_up() {
                    feed.set_ready();
                }
                acks.poll(|payload, offset| match serde_json::from_slice::<AckMessage>(payload) {
                    Ok(ack) => feed.push_ack(ack),
                    Err(error) => tracing::warn!(offset, %error, "unreadable acknowledgement skipped"),
                });
            }
        })
        .map_err(|error| KafkaSourceError::Create(KafkaError::ClientCreation(error.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revoke::Mode;

    #[test]
    fn the_newest_mode_stays_and_acks_are_taken_once() {
        let feed = ControlFeed::default();
        for mode in [Mode::Off, Mode::Enforce] {
            feed.push_control(ControlMessage {
                mode,
                at: None,
                by: None,
            });
        }
        feed.push_ack(AckMessage {
            idempotency_key: "rv_a".into(),
            status: "revoked".into(),
            detail: None,
        });
        let (mode, acks) = feed.take();
        assert_eq!(mode.map(|message| message.mode), Some(Mode::Enforce));
        assert_eq!(acks.len(), 1);
        let (mode, acks) = feed.take();
        assert_eq!(mode.map(|message| message.mode), Some(Mode::Enforce));
        assert!(acks.is_empty());
    }
}
