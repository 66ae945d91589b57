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

use std::collections::{BTreeMap, HashMap};
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
use crate::checkpoint::{Checkpoint, KeyLedger, PartitionId};
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
    /// Where the partition's key entries are in the changelog (incremental
    /// checkpoints), whatever checkpoint was restored.
    pub ledger: KeyLedger,
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

/// What the polling thread learns about the group, for metrics and
/// health: consumer lag of the owned partitions, and how often the member
/// rejoined because it sat idle while the input had lag.
#[derive(Debug, Default)]
pub struct GroupStatus {
    /// High watermark minus position, per owned partition, refreshed every
    /// [`LAG_INTERVAL`]. Partitions no longer owned are removed.
    lag: Mutex<BTreeMap<PartitionId, i64>>,
    /// Rejoins after holding no partitions while the input had lag.
    pub idle_rejoins: std::sync::atomic::AtomicU64,
}

impl GroupStatus {
    /// Consumer lag per owned partition.
    pub fn lag(&self) -> BTreeMap<PartitionId, i64> {
        self.lag.lock().map(|lag| lag.clone()).unwrap_or_default()
    }

    fn set_lag(&self, lag: BTreeMap<PartitionId, i64>) {
        if let Ok(mut current) = self.lag.lock() {
            *current = lag;
        }
    }
}

/// How the polling thread watches its group.
#[derive(Debug, Clone)]
pub struct GroupWatch {
    /// Rejoin after holding no partitions this long while the input has lag
    /// that no member consumes.
    pub rejoin_idle_after: Duration,
    pub status: Arc<GroupStatus>,
}

impl Default for GroupWatch {
    fn default() -> Self {
        GroupWatch {
            rejoin_idle_after: Duration::from_secs(60),
            status: Arc::default(),
        }
    }
}

/// How often the consumer lag of owned partitions is measured.
pub const LAG_INTERVAL: Duration = Duration::from_secs(10);

/// Longest wait for one partition's watermarks when measuring lag.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// What to load when partitions are assigned.
#[derive(Debug, Clone)]
pub enum RestoreFrom {
    /// Nothing: a stateless stage resumes at the committed offsets.
    Nothing,
    /// Checkpoints from the changelog topic of this configuration.
    Changelog(Box<KafkaConfig>),
    /// Nothing, and consumption starts at the partition's first record: a
    /// stage that rebuilds its state from its whole input (the revocation
    /// gate) and produces only what lies past the committed offset.
    Beginning,
}

/// The consumer context: rebalance callbacks that talk to the processing task.
pub struct GroupContext {
    events: Mutex<Option<mpsc::Sender<SourceEvent>>>,
    /// The group generation of the last assignment (-1 before one).
    generation: std::sync::atomic::AtomicI32,
    restore: RestoreFrom,
    group_id: String,
}

/// The group consumer keywatch uses.
pub type GroupConsumer = BaseConsumer<GroupContext>;

/// The consumer group generation this member joined in, as the group
/// coordinator gave it; `None` before the first join. Written into every
/// checkpoint, so a restore prefers the current owner's checkpoints over a
/// zombie's that a rebalance has already replaced.
///
/// Read from what the last assignment recorded, where the group's state is
/// settled, rather than asked of librdkafka from another thread while the
/// group may be rejoining. (This was first blamed for a SIGSEGV after a
/// broker outage; a core dump put that crash in librdkafka's fetch leader
/// discovery instead: BENCHMARKS.md, "The SIGSEGV after a broker outage".)
pub fn group_generation(consumer: &GroupConsumer) -> Option<i32> {
    let generation = consumer.context().generation.load(std::sync::atomic::Ordering::Relaxed);
    (generation >= 0).then_some(generation)
}

/// The generation librdkafka reports for `consumer` now: call only on the
/// polling thread, in a rebalance callback.
fn joined_generation<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<i32> {
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is the live handle of `consumer`, borrowed for this
    // call. librdkafka returns a new metadata object (or null) that this
    // function alone owns, reads once and destroys before returning.
    let generation = unsafe {
        let metadata = rdkafka::bindings::rd_kafka_consumer_group_metadata(client);
        if metadata.is_null() {
            return None;
        }
        let generation = rdkafka::bindings::rd_kafka_consumer_group_metadata_generation_id(metadata);
        rdkafka::bindings::rd_kafka_consumer_group_metadata_destroy(metadata);
        generation
    };
    (generation >= 0).then_some(generation)
}

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
        if let Some(generation) = joined_generation(consumer) {
            self.generation.store(generation, std::sync::atomic::Ordering::Relaxed);
        }
        let ids = partition_ids(partitions);
        tracing::info!(group = %self.group_id, partitions = %describe(&ids), "partitions assigned");
        let restored = restore_partitions(&self.restore, consumer, partitions, &ids);
        match restored {
            Ok(assigned) => {
                if matches!(self.restore, RestoreFrom::Beginning) {
                    for partition in &assigned {
                        if let Err(error) = partitions.set_partition_offset(
                            &partition.id.topic,
                            partition.id.partition,
                            Offset::Beginning,
                        ) {
                            tracing::error!(partition = %partition.id, %error, "cannot set the start offset");
                        }
                    }
                }
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
        RestoreFrom::Nothing | RestoreFrom::Beginning => Default::default(),
        RestoreFrom::Changelog(kafka) => read_checkpoints(kafka, ids).map_err(|source| KafkaSourceError::Restore {
            partitions: describe(ids),
            source: Box::new(source),
        })?,
    };
    let crate::checkpoint::Restored {
        mut checkpoints,
        fallbacks,
        mut ledgers,
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
            ledger: ledgers.remove(id).unwrap_or_default(),
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
    let elapsed = started.elapsed();
    let source = match restore {
        RestoreFrom::Nothing => "none",
        RestoreFrom::Beginning => "beginning",
        RestoreFrom::Changelog(_) => "changelog",
    };
    for partition in &assigned {
        let keys = partition.checkpoint.as_ref().map_or(0, |c| c.snapshot.keys.len());
        tracing::info!(
            partition = %partition.id,
            source,
            found = partition.checkpoint.is_some(),
            checkpoint_offset = partition.checkpoint.as_ref().map(|c| c.next_offset),
            committed_offset = partition.committed,
            keys,
            elapsed_ms = elapsed.as_millis() as u64,
            "partition restored"
        );
        if matches!(restore, RestoreFrom::Changelog(_)) {
            metrics::histogram!("keywatch_restore_keys").record(keys as f64);
        }
    }
    if matches!(restore, RestoreFrom::Changelog(_)) && !ids.is_empty() {
        // One read serves every partition of the assignment.
        metrics::histogram!("keywatch_restore_seconds").record(elapsed.as_secs_f64());
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
        watch: GroupWatch,
        cancel: CancellationToken,
    ) -> Result<(KafkaSource, mpsc::Receiver<SourceEvent>), KafkaSourceError> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let context = GroupContext {
            events: Mutex::new(Some(sender.clone())),
            generation: std::sync::atomic::AtomicI32::new(-1),
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
        tracing::info!(
            group = %group_id,
            topics = %topics.join(","),
            static_member = kafka.group_instance_id().is_some(),
            "joining the consumer group"
        );
        let consumer = Arc::new(consumer);
        let polled = Arc::clone(&consumer);
        let subscribed = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-poll-{group_id}"))
            .spawn(move || poll_loop(polled, sender, subscribed, watch, cancel))
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

/// Tracks how long a member has held no partitions, and whether the group's
/// committed offsets moved meanwhile (someone is consuming).
#[derive(Debug)]
struct IdleWatch {
    /// When the assignment was last seen non-empty (or the watch started).
    busy_at: Instant,
    /// Lag and committed total at the last idle check.
    last_idle_check: Option<(i64, i64)>,
}

/// What an idle member should do after one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleVerdict {
    Fine,
    /// Idle, with lag: measure again before acting.
    Watch,
    /// Idle past the limit, with lag nobody consumes: rejoin.
    Rejoin,
}

impl IdleWatch {
    fn new(now: Instant) -> IdleWatch {
        IdleWatch {
            busy_at: now,
            last_idle_check: None,
        }
    }

    fn owned_partitions(&mut self, now: Instant) {
        self.busy_at = now;
        self.last_idle_check = None;
    }

    /// Judges an idle member: `lag` and `committed` are totals over the
    /// subscribed topics. A group whose committed offsets stay put while
    /// its input has lag is stuck, whoever owns the partitions.
    fn judge(&mut self, now: Instant, limit: Duration, lag: i64, committed: i64) -> IdleVerdict {
        if lag <= 0 {
            self.last_idle_check = None;
            return IdleVerdict::Fine;
        }
        let previous = self.last_idle_check.replace((lag, committed));
        if now.duration_since(self.busy_at) < limit {
            return IdleVerdict::Watch;
        }
        match previous {
            Some((_, previous_committed)) if previous_committed == committed => {
                self.busy_at = now;
                self.last_idle_check = None;
                IdleVerdict::Rejoin
            }
            _ => IdleVerdict::Watch,
        }
    }
}

/// Measures the lag of the owned partitions and, when the member owns none
/// while the input waits, warns and rejoins the group: a member left with
/// an empty assignment after a rebalance otherwise waits for the next
/// rebalance, which may never come.
fn watch_group(consumer: &GroupConsumer, subscribed: &[String], watch: &GroupWatch, idle: &mut IdleWatch) {
    let now = Instant::now();
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::debug!(%error, "cannot read the assignment");
            return;
        }
    };
    if assignment.count() > 0 {
        idle.owned_partitions(now);
        watch.status.set_lag(owned_lag(consumer, &assignment));
        return;
    }
    watch.status.set_lag(BTreeMap::new());
    let Some((lag, committed)) = group_lag(consumer, subscribed) else {
        return;
    };
    let idle_for = now.duration_since(idle.busy_at);
    match idle.judge(now, watch.rejoin_idle_after, lag, committed) {
        IdleVerdict::Fine | IdleVerdict::Watch => {}
        IdleVerdict::Rejoin => {
            tracing::warn!(
                topics = %subscribed.join(","),
                lag,
                idle_s = idle_for.as_secs(),
                "no partitions while the input has lag that nobody consumes; rejoining the group"
            );
            watch
                .status
                .idle_rejoins
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            consumer.unsubscribe();
            let names: Vec<&str> = subscribed.iter().map(String::as_str).collect();
            if let Err(error) = consumer.subscribe(&names) {
                tracing::error!(%error, "cannot subscribe again");
            }
        }
    }
}

/// High watermark minus position of each owned partition.
fn owned_lag(consumer: &GroupConsumer, assignment: &TopicPartitionList) -> BTreeMap<PartitionId, i64> {
    let positions = consumer.position().map(|list| list.to_topic_map()).unwrap_or_default();
    let mut lag = BTreeMap::new();
    for element in assignment.elements() {
        // A broker that does not answer quickly is not waited for: this
        // runs on the polling thread.
        let Ok((_low, high)) = consumer.fetch_watermarks(element.topic(), element.partition(), LAG_QUERY_TIMEOUT)
        else {
            break;
        };
        let position = match positions.get(&(element.topic().to_string(), element.partition())) {
            Some(Offset::Offset(offset)) => Some(*offset),
            _ => None,
        };
        // Before the first fetch the position is unknown: count it all.
        let behind = position.map_or(high, |position| high - position).max(0);
        lag.insert(PartitionId::new(element.topic(), element.partition()), behind);
    }
    lag
}

/// Total lag of the group over `topics` (high watermark minus committed
/// offset, or minus the low watermark where nothing is committed) and the
/// total of its committed offsets. `None` when the broker cannot say.
fn group_lag(consumer: &GroupConsumer, topics: &[String]) -> Option<(i64, i64)> {
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT).ok()?;
        for described in metadata.topics() {
            for partition in described.partitions() {
                partitions.add_partition(topic, partition.id());
            }
        }
    }
    if partitions.count() == 0 {
        return None;
    }
    let committed = consumer
        .committed_offsets(partitions.clone(), METADATA_TIMEOUT)
        .ok()?
        .to_topic_map();
    let (mut lag, mut committed_total) = (0i64, 0i64);
    for element in partitions.elements() {
        let (low, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), LAG_QUERY_TIMEOUT)
            .ok()?;
        let start = match committed.get(&(element.topic().to_string(), element.partition())) {
            Some(Offset::Offset(offset)) => {
                committed_total += offset;
                *offset
            }
            _ => low,
        };
        lag += (high - start).max(0);
    }
    Some((lag, committed_total))
}

/// How often one repeated consumer error is written to the log: during a
/// broker outage librdkafka returns the same error from every poll.
const REPEATED_ERROR_EVERY: Duration = Duration::from_secs(10);

/// Writes a consumer error when it first appears, then at most once per
/// [`REPEATED_ERROR_EVERY`] with the number of repeats in between.
#[derive(Debug, Default)]
struct RepeatedErrors {
    /// The last error written, when, and its repeats since.
    last: Option<(String, Instant, u64)>,
}

impl RepeatedErrors {
    /// Returns whether the error was written.
    fn report(&mut self, error: &str, now: Instant) -> bool {
        if let Some((last, at, repeats)) = &mut self.last
            && last == error
            && now.duration_since(*at) < REPEATED_ERROR_EVERY
        {
            *repeats += 1;
            return false;
        }
        self.flush();
        tracing::warn!(%error, "kafka consumer error");
        self.last = Some((error.to_string(), now, 0));
        true
    }

    /// Writes how often the last error repeated since it was written.
    fn flush(&mut self) {
        if let Some((error, _, repeats)) = self.last.take()
            && repeats > 0
        {
            tracing::warn!(%error, repeats, "kafka consumer error repeated");
        }
    }
}

fn poll_loop(
    consumer: Arc<GroupConsumer>,
    sender: mpsc::Sender<SourceEvent>,
    subscribed: Vec<String>,
    watch: GroupWatch,
    cancel: CancellationToken,
) {
    let mut topics = HashMap::new();
    let mut idle = IdleWatch::new(Instant::now());
    let mut errors = RepeatedErrors::default();
    let mut next_lag_check = Instant::now() + LAG_INTERVAL;
    while !cancel.is_cancelled() && !sender.is_closed() {
        if Instant::now() >= next_lag_check {
            next_lag_check = Instant::now() + LAG_INTERVAL;
            watch_group(&consumer, &subscribed, &watch, &mut idle);
        }
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
                errors.report(&error.to_string(), Instant::now());
            }
        }
    }
    errors.flush();
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    #[test]
    fn a_repeated_consumer_error_is_written_once_per_interval_and_a_new_one_at_once() {
        let mut errors = RepeatedErrors::default();
        let start = Instant::now();
        assert!(errors.report("AllBrokersDown", start));
        assert!(!errors.report("AllBrokersDown", start + Duration::from_millis(100)));
        assert!(!errors.report("AllBrokersDown", start + Duration::from_secs(9)));
        assert!(errors.report("AllBrokersDown", start + REPEATED_ERROR_EVERY));
        assert!(errors.report("UnknownTopicOrPartition", start + REPEATED_ERROR_EVERY));
        assert!(errors.report("AllBrokersDown", start + REPEATED_ERROR_EVERY));
    }

    #[test]
    fn an_idle_member_rejoins_only_when_lag_waits_and_nobody_commits() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut idle = IdleWatch::new(start);
        assert_eq!(idle.judge(at(10), LIMIT, 500, 100), IdleVerdict::Watch);
        assert_eq!(
            idle.judge(at(70), LIMIT, 500, 100),
            IdleVerdict::Rejoin,
            "stuck past the limit"
        );
        // The rejoin restarts the clock.
        assert_eq!(idle.judge(at(80), LIMIT, 500, 100), IdleVerdict::Watch);
    }

    #[test]
    fn an_idle_member_stays_put_while_others_consume_or_nothing_waits() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut idle = IdleWatch::new(start);
        assert_eq!(idle.judge(at(61), LIMIT, 500, 100), IdleVerdict::Watch, "first measure");
        assert_eq!(
            idle.judge(at(71), LIMIT, 400, 200),
            IdleVerdict::Watch,
            "committed offsets moved: another member consumes"
        );
        assert_eq!(idle.judge(at(81), LIMIT, 0, 200), IdleVerdict::Fine, "no lag");
        assert_eq!(idle.judge(at(91), LIMIT, 10, 200), IdleVerdict::Watch);
        idle.owned_partitions(at(95));
        assert_eq!(
            idle.judge(at(100), LIMIT, 10, 200),
            IdleVerdict::Watch,
            "owned partitions lately"
        );
    }
}
