//! A consumer in a group, polled on a thread of its own, handing records
//! and rebalance events to one processing task through a bounded channel.
//!
//! Rebalances follow the pattern of quickwit's Kafka source: librdkafka
//! calls the rebalance callback on the polling thread, which tells the
//! processing task and, on revocation, waits until the task has finished its
//! batch, checkpointed and committed. Because records and rebalance events
//! travel through the same channel, every record of a revoked partition that
//! was polled reaches the task before the revocation does.
//!
//! On assignment the callback reads the partitions' checkpoints from the
//! changelog before it assigns them, so consumption starts at the
//! checkpointed offset: no record is fetched from a position the engine
//! state does not match.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::range::read_checkpoints;
use super::{KafkaSourceError, METADATA_TIMEOUT, POLL_INTERVAL};
use crate::checkpoint::{Checkpoint, PartitionId};
use crate::config::KafkaConfig;

/// One input record, detached from the consumer.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Message timestamp in epoch milliseconds, when the broker has one.
    pub timestamp_ms: Option<i64>,
    /// `None` for a message without a value.
    pub payload: Option<Vec<u8>>,
}

impl InputRecord {
    pub fn partition_id(&self) -> PartitionId {
        PartitionId::new(&*self.topic, self.partition)
    }

    fn from_message(message: &BorrowedMessage<'_>, topics: &mut HashMap<String, Arc<str>>) -> InputRecord {
        // Interned so a record costs one allocation (its payload), not two.
        let topic = match topics.get(message.topic()) {
            Some(topic) => Arc::clone(topic),
            None => {
                let topic: Arc<str> = Arc::from(message.topic());
                topics.insert(message.topic().to_string(), Arc::clone(&topic));
                topic
            }
        };
        InputRecord {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// A partition handed to this instance, with what it needs to resume.
#[derive(Debug)]
pub struct AssignedPartition {
    pub id: PartitionId,
    /// The newest checkpoint in the changelog; consumption starts at its
    /// `next_offset`.
    pub checkpoint: Option<Checkpoint>,
    /// The group's committed offset: outputs of records below it were
    /// already delivered before this assignment.
    pub committed: Option<i64>,
}

/// What the consumer thread tells the processing task, in order.
#[derive(Debug)]
pub enum SourceEvent {
    Record(InputRecord),
    Assigned(Vec<AssignedPartition>),
    /// The partitions are being taken away. Unless `lost`, the task must
    /// finish its batch, checkpoint and commit them before answering `done`;
    /// when `lost`, another member may already own them, so it must write
    /// nothing for them.
    Revoked {
        partitions: Vec<PartitionId>,
        lost: bool,
        done: oneshot::Sender<()>,
    },
    /// The assignment could not be restored; the pipeline cannot go on.
    Failed(KafkaSourceError),
}

/// What to load when partitions are assigned.
#[derive(Debug, Clone)]
pub enum RestoreFrom {
    /// Nothing: a stateless stage resumes at the committed offsets.
    Nothing,
    /// Checkpoints from the changelog topic of this configuration.
    Changelog(Box<KafkaConfig>),
}

/// The consumer context: rebalance callbacks that talk to the processing task.
pub struct GroupContext {
    events: Mutex<Option<mpsc::Sender<SourceEvent>>>,
    restore: RestoreFrom,
    group_id: String,
}

/// The group consumer keywatch uses.
pub type GroupConsumer = BaseConsumer<GroupContext>;

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &GroupConsumer, err: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, partitions),
            other => {
                tracing::error!(group = %self.group_id, error = ?other, "rebalance failed; dropping the assignment");
                self.revoke(consumer, partitions);
            }
        }
    }
}

fn partition_ids(partitions: &TopicPartitionList) -> Vec<PartitionId> {
    partitions
        .elements()
        .iter()
        .map(|element| PartitionId::new(element.topic(), element.partition()))
        .collect()
}

fn describe(partitions: &[PartitionId]) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

impl GroupContext {
    fn sender(&self) -> Option<mpsc::Sender<SourceEvent>> {
        self.events.lock().ok().and_then(|guard| guard.clone())
    }

    /// Sends from the polling thread, where blocking is allowed. Callbacks can
    /// also run when the last handle of the consumer is dropped on an async
    /// worker; there the event is dropped rather than blocking the runtime.
    fn send(&self, event: SourceEvent) -> bool {
        let Some(sender) = self.sender() else {
            return false;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            return sender.try_send(event).is_ok();
        }
        sender.blocking_send(event).is_ok()
    }

    fn assign(&self, consumer: &GroupConsumer, partitions: &mut TopicPartitionList) {
        let ids = partition_ids(partitions);
        tracing::info!(group = %self.group_id, partitions = %describe(&ids), "partitions assigned");
        let restored = restore_partitions(&self.restore, consumer, partitions, &ids);
        match restored {
            Ok(assigned) => {
                for partition in &assigned {
                    if let Some(checkpoint) = &partition.checkpoint {
                        let offset = Offset::Offset(checkpoint.next_offset);
                        if let Err(error) =
                            partitions.set_partition_offset(&partition.id.topic, partition.id.partition, offset)
                        {
                            tracing::error!(partition = %partition.id, %error, "cannot set the start offset");
                        }
                    }
                }
                // Sent before assigning, so it precedes every record of
                // these partitions in the channel.
                self.send(SourceEvent::Assigned(assigned));
                let result = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(partitions),
                    _ => consumer.assign(partitions),
                };
                if let Err(error) = result {
                    tracing::error!(group = %self.group_id, %error, "assign failed");
                }
            }
            Err(error) => {
                tracing::error!(group = %self.group_id, %error, "cannot restore the assigned partitions");
                self.send(SourceEvent::Failed(error));
                // Consume nothing rather than resume with state that does not
                // match the offsets; the pipeline is stopping.
                let result = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => Ok(()),
                    _ => consumer.assign(&TopicPartitionList::new()),
                };
                if let Err(error) = result {
                    tracing::error!(group = %self.group_id, %error, "unassign failed");
                }
            }
        }
    }

    fn revoke(&self, consumer: &GroupConsumer, partitions: &TopicPartitionList) {
        let ids = partition_ids(partitions);
        let lost = consumer.assignment_lost();
        tracing::info!(group = %self.group_id, partitions = %describe(&ids), lost, "partitions revoked");
        let (done, finished) = oneshot::channel();
        if self.send(SourceEvent::Revoked {
            partitions: ids,
            lost,
            done,
        }) && tokio::runtime::Handle::try_current().is_err()
        {
            // Hold the partitions until their state is safe; a dropped
            // answer means the task has gone, which is fine too.
            let _ = finished.blocking_recv();
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(partitions),
            _ => consumer.unassign(),
        };
        if let Err(error) = result {
            tracing::warn!(group = %self.group_id, %error, "unassign failed");
        }
    }
}

/// Reads the committed offsets and, when restoring from a changelog, the
/// checkpoints of newly assigned partitions.
fn restore_partitions(
    restore: &RestoreFrom,
    consumer: &GroupConsumer,
    partitions: &TopicPartitionList,
    ids: &[PartitionId],
) -> Result<Vec<AssignedPartition>, KafkaSourceError> {
    let started = Instant::now();
    let restored = match restore {
        RestoreFrom::Nothing => Default::default(),
        RestoreFrom::Changelog(kafka) => read_checkpoints(kafka, ids).map_err(|source| KafkaSourceError::Restore {
            partitions: describe(ids),
            source: Box::new(source),
        })?,
    };
    let crate::checkpoint::Restored {
        mut checkpoints,
        fallbacks,
    } = restored;
    let committed: HashMap<(String, i32), Offset> =
        match consumer.committed_offsets(partitions.clone(), METADATA_TIMEOUT) {
            Ok(list) => list.to_topic_map(),
            Err(error) => {
                // Only costs repeated outputs after the checkpoint, never lost ones.
                tracing::warn!(%error, "cannot read committed offsets; outputs after the checkpoints may repeat");
                HashMap::new()
            }
        };
    let assigned: Vec<AssignedPartition> = ids
        .iter()
        .map(|id| AssignedPartition {
            id: id.clone(),
            checkpoint: checkpoints.remove(id),
            committed: match committed.get(&(id.topic.clone(), id.partition)) {
                Some(Offset::Offset(offset)) => Some(*offset),
                _ => None,
            },
        })
        .collect();
    if let RestoreFrom::Changelog(kafka) = restore
        && !kafka.allow_missing_checkpoint
    {
        // Committed offsets say state was built; without any checkpoint
        // (not even an unusable one) it would silently start empty.
        let missing: Vec<&AssignedPartition> = assigned
            .iter()
            .filter(|partition| {
                partition.checkpoint.is_none()
                    && partition.committed.is_some()
                    && !fallbacks.contains_key(&partition.id)
            })
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|partition| partition.id.to_string()).collect();
            return Err(KafkaSourceError::MissingCheckpoint {
                partitions: names.join(", "),
                changelog: kafka.changelog_topic.clone(),
            });
        }
    }
    for partition in &assigned {
        tracing::info!(
            partition = %partition.id,
            checkpoint_offset = partition.checkpoint.as_ref().map(|c| c.next_offset),
            committed_offset = partition.committed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partition restored"
        );
    }
    Ok(assigned)
}

/// A group consumer polled on its own thread.
pub struct KafkaSource {
    consumer: Arc<GroupConsumer>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaSource {
    /// Joins `group_id`, subscribes to `topics` and starts polling. Events
    /// arrive on the returned channel, which holds at most `capacity` of them
    /// so a slow task slows the polling rather than filling memory. The
    /// channel closes after the consumer has left the group, which it does
    /// when `cancel` fires or the receiver is dropped.
    pub fn start(
        kafka: &KafkaConfig,
        group_id: &str,
        topics: &[String],
        restore: RestoreFrom,
        capacity: usize,
        cancel: CancellationToken,
    ) -> Result<(KafkaSource, mpsc::Receiver<SourceEvent>), KafkaSourceError> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let context = GroupContext {
            events: Mutex::new(Some(sender.clone())),
            restore,
            group_id: group_id.to_string(),
        };
        let consumer: GroupConsumer = kafka
            .group_consumer_config(group_id)
            .create_with_context(context)
            .map_err(KafkaSourceError::Create)?;
        let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_names)
            .map_err(|error| KafkaSourceError::Subscribe {
                topics: topics.join(","),
                error,
            })?;
        let consumer = Arc::new(consumer);
        let polled = Arc::clone(&consumer);
        let thread = std::thread::Builder::new()
            .name(format!("kafka-poll-{group_id}"))
            .spawn(move || poll_loop(polled, sender, cancel))
            .map_err(|error| KafkaSourceError::Create(KafkaError::ClientCreation(error.to_string())))?;
        Ok((
            KafkaSource {
                consumer,
                thread: Some(thread),
            },
            receiver,
        ))
    }

    pub fn consumer(&self) -> &Arc<GroupConsumer> {
        &self.consumer
    }

    /// Commits offsets (the next offset to read, per partition). `Sync`
    /// waits for the broker, off the async workers.
    pub async fn commit(&self, offsets: TopicPartitionList, mode: CommitMode) -> Result<(), KafkaSourceError> {
        if offsets.count() == 0 {
            return Ok(());
        }
        match mode {
            CommitMode::Async => self.consumer.commit(&offsets, mode).map_err(KafkaSourceError::Commit),
            CommitMode::Sync => {
                let consumer = Arc::clone(&self.consumer);
                match tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync)).await {
                    Ok(result) => result.map_err(KafkaSourceError::Commit),
                    Err(_) => Err(KafkaSourceError::Commit(KafkaError::Canceled)),
                }
            }
        }
    }

    /// Waits for the polling thread to leave the group.
    pub async fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn poll_loop(consumer: Arc<GroupConsumer>, sender: mpsc::Sender<SourceEvent>, cancel: CancellationToken) {
    let mut topics = HashMap::new();
    while !cancel.is_cancelled() && !sender.is_closed() {
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Ok(message)) => {
                let record = InputRecord::from_message(&message, &mut topics);
                if sender.blocking_send(SourceEvent::Record(record)).is_err() {
                    break;
                }
            }
            Some(Err(error)) => {
                // librdkafka reports broker and partition trouble here and
                // recovers by itself; the records are not lost.
                tracing::warn!(%error, "kafka consumer error");
            }
        }
    }
    // Leaving the group revokes the assignment through the rebalance
    // callback, so the task checkpoints and commits before the partitions
    // move. Records polled meanwhile are not forwarded: they were neither
    // processed nor committed and will be read again by the next owner.
    drop(sender);
    // Unsubscribing rather than closing: the last handle's drop closes the
    // consumer, and closing twice makes librdkafka complain.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let _ = consumer.poll(POLL_INTERVAL);
        if consumer
            .assignment()
            .map(|assignment| assignment.count() == 0)
            .unwrap_or(true)
        {
            break;
        }
    }
    if let Ok(mut events) = consumer.context().events.lock() {
        events.take();
    }
    tracing::debug!("kafka consumer closed");
}
