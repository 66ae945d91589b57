//! The async edge around a [`Stage`]: takes records and rebalance events
//! from the consumer thread, closes micro-batches by size or age, and for
//! each batch produces the outputs, waits for their delivery, writes due
//! checkpoints and only then commits the offsets they cover. In
//! exactly-once mode all of that is one transaction.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PipelineError;
use super::micro_batch::MicroBatch;
use super::stage::{Progress, Stage};
use crate::checkpoint::PartitionId;
use crate::sink::kafka::{KafkaSink, Outbox};
use crate::source::kafka::group::{KafkaSource, SourceEvent, group_generation};

/// How a stage is batched and checkpointed.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait: Duration,
    pub checkpoint_interval: Duration,
    pub exactly_once: bool,
    /// Largest dead-letter payload, in bytes.
    pub dead_letter_max_bytes: usize,
    /// Wall-clock idleness after which a partition's held events are
    /// judged (`kafka.idle_release`); zero never.
    pub idle_release: Duration,
}

/// How often the loop turns when nothing arrives, so `/healthz` can tell a
/// quiet stage from a stuck one.
const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Most channel events handled per turn of the select loop.
const DRAIN_MAX: usize = 1024;

/// Where the batch-age timer starts, before a batch has a deadline; it is
/// never awaited then.
const BATCH_TIMER_IDLE: Duration = Duration::from_secs(3600);

/// How often checkpoints are summed up in an info line.
const CHECKPOINT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Checkpoints written since the last info summary.
#[derive(Debug, Default)]
struct CheckpointTally {
    partitions: usize,
    bytes: u64,
    slowest: Duration,
}

/// Why a batch is being flushed, which decides how hard it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Size or age: checkpoint when due, commit without waiting.
    Routine,
    /// Revocation or shutdown: checkpoint everything, wait for the commit.
    Final,
}

pub struct Driver<S: Stage> {
    pub stage: S,
    source: KafkaSource,
    sink: KafkaSink,
    settings: DriverSettings,
    batch: MicroBatch,
    outbox: Outbox,
    last_checkpoint: Instant,
    progress: std::sync::Arc<Progress>,
    tally: CheckpointTally,
    last_summary: Instant,
}

fn offsets_list(offsets: &[(PartitionId, i64)]) -> Result<TopicPartitionList, PipelineError> {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (id, offset) in offsets {
        list.add_partition_offset(&id.topic, id.partition, Offset::Offset(*offset))
            .map_err(|error| PipelineError::Commit(error.to_string()))?;
    }
    Ok(list)
}

/// Bytes of the checkpoint messages in the outbox from `from` on.
fn changelog_bytes(outbox: &Outbox, from: usize) -> u64 {
    outbox.messages[from.min(outbox.len())..]
        .iter()
        .map(|message| message.payload.len() as u64)
        .sum()
}

impl<S: Stage> Driver<S> {
    pub fn new(
        stage: S,
        source: KafkaSource,
        sink: KafkaSink,
        settings: DriverSettings,
        progress: std::sync::Arc<Progress>,
    ) -> Driver<S> {
        let batch = MicroBatch::new(settings.batch_max_events, settings.batch_max_wait)
            .with_max_bytes(settings.batch_max_bytes);
        Driver {
            stage,
            source,
            sink,
            batch,
            outbox: Outbox::with_dead_letter_limit(settings.dead_letter_max_bytes),
            last_checkpoint: Instant::now(),
            progress,
            tally: CheckpointTally::default(),
            last_summary: Instant::now(),
            settings,
        }
    }

    /// Runs until the source has left the group after `cancel`, or fails.
    /// `on_stop` runs once, after the final checkpoint of a clean shutdown.
    pub async fn run<F>(
        mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        cancel: CancellationToken,
        mut on_stop: F,
    ) -> Result<(), PipelineError>
    where
        F: FnMut(&S) -> Result<(), PipelineError>,
    {
        let name = self.stage.name();
        let mut stopping = false;
        let mut ticks = tokio::time::interval(TICK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The cancellation and batch-age futures live across turns of the
        // loop: built afresh per turn, as they were, each record registered
        // and dropped a timer and a cancellation waiter, which cost more
        // than the record's processing under load. The timer is reset only
        // when the batch's deadline changes (a batch's first record).
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let batch_age = tokio::time::sleep(BATCH_TIMER_IDLE);
        tokio::pin!(batch_age);
        let mut armed_for: Option<Instant> = None;
        let result: Result<(), PipelineError> = loop {
            let deadline = self.batch.deadline();
            if deadline != armed_for {
                if let Some(deadline) = deadline {
                    batch_age.as_mut().reset(deadline);
                }
                armed_for = deadline;
            }
            let step: Result<bool, PipelineError> = tokio::select! {
                biased;
                _ = &mut cancelled, if !stopping => {
                    stopping = true;
                    tracing::info!(stage = name, "stopping: finishing the batch in hand");
                    match self.flush(Flush::Final).await {
                        Ok(()) => on_stop(&self.stage).map(|()| true),
                        Err(error) => Err(error),
                    }
                }
                _ = &mut batch_age, if deadline.is_some() => self.flush(Flush::Routine).await.map(|()| true),
                _ = ticks.tick() => {
                    self.progress.tick(name);
                    self.summarise_checkpoints(false);
                    match self.release_idle(stopping).await {
                        Ok(()) => self.idle(stopping).await.map(|()| true),
                        Err(error) => Err(error),
                    }
                }
                event = events.recv() => match event {
                    None => Ok(false),
                    Some(event) => match self.handle(event, stopping).await {
                        Ok(()) => self.drain_waiting(&mut events, stopping).await.map(|()| true),
                        Err(error) => Err(error),
                    },
                },
            };
            match step {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        self.progress.set_ready(name, false);
        self.summarise_checkpoints(true);
        if result.is_err() {
            let _ = self.sink.abort_transaction().await;
        }
        // Dropping the receiver tells the consumer thread to leave the group
        // if it has not already.
        drop(events);
        self.source.join().await;
        tracing::info!(stage = name, ok = result.is_ok(), "stage stopped");
        result
    }

    /// Handles, in order, the events already waiting in the channel, up to
    /// [`DRAIN_MAX`]: under load a turn of the select loop and a task
    /// wake-up per record cost more than the record's processing. Bounded,
    /// so cancellation and batch deadlines are still seen promptly; the
    /// order of events, hence every output, is unchanged.
    ///
    /// This was once taken out because `keywatch run` died with SIGSEGV
    /// after a broker outage with it; that crash is not caused here: it
    /// happens without this drain too, inside librdkafka's fetch leader
    /// discovery (BENCHMARKS.md, "The SIGSEGV after a broker outage").
    async fn drain_waiting(
        &mut self,
        events: &mut mpsc::Receiver<SourceEvent>,
        stopping: bool,
    ) -> Result<(), PipelineError> {
        for _ in 0..DRAIN_MAX {
            match events.try_recv() {
                Ok(event) => self.handle(event, stopping).await?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    async fn handle(&mut self, event: SourceEvent, stopping: bool) -> Result<(), PipelineError> {
        match event {
            SourceEvent::Record(record) => {
                // After the final flush, nothing more is processed: these
                // records are not committed and will be read again.
                if !stopping && self.batch.push(record, Instant::now) {
                    self.flush(Flush::Routine).await?;
                }
                Ok(())
            }
            SourceEvent::Assigned(partitions) => {
                let ids: Vec<String> = partitions.iter().map(|partition| partition.id.to_string()).collect();
                self.stage.assigned(partitions);
                self.progress.set_ready(self.stage.name(), true);
                tracing::info!(
                    stage = self.stage.name(),
                    partitions = %ids.join(","),
                    count = ids.len(),
                    "assignment taken over"
                );
                Ok(())
            }
            SourceEvent::Revoked { partitions, lost, done } => {
                self.progress.set_ready(self.stage.name(), false);
                tracing::info!(
                    stage = self.stage.name(),
                    partitions = partitions.len(),
                    lost,
                    "handing partitions over"
                );
                if lost {
                    // Another member may own them already: writing a
                    // checkpoint now could overwrite its newer one.
                    self.batch.retain(|record| {
                        !partitions
                            .iter()
                            .any(|id| id.partition == record.partition && id.topic == *record.topic)
                    });
                } else {
                    self.flush(Flush::Final).await?;
                }
                self.stage.revoked(&partitions);
                let _ = done.send(());
                Ok(())
            }
            SourceEvent::Failed(error) => Err(error.into()),
        }
    }

    /// Lets the stage do its wall-clock work; delivers what it produced
    /// with the batch in hand.
    async fn idle(&mut self, stopping: bool) -> Result<(), PipelineError> {
        if stopping {
            return Ok(());
        }
        let before = self.outbox.len();
        self.stage.idle(&mut self.outbox)?;
        if self.outbox.len() > before {
            self.flush(Flush::Routine).await?;
        }
        Ok(())
    }

    /// Counts checkpoints once they are durable: debug per batch, and an
    /// info summary every minute.
    fn record_checkpoints(&mut self, written: usize, bytes: u64, took: Duration) {
        if written == 0 {
            return;
        }
        tracing::debug!(
            stage = self.stage.name(),
            partitions = written,
            bytes,
            took_ms = took.as_millis() as u64,
            "checkpoint written"
        );
        metrics::histogram!("keywatch_checkpoint_seconds", "stage" => self.stage.name()).record(took.as_secs_f64());
        metrics::histogram!("keywatch_checkpoint_bytes", "stage" => self.stage.name()).record(bytes as f64);
        Progress::add(&self.progress.checkpoint_bytes, bytes);
        self.tally.partitions += written;
        self.tally.bytes += bytes;
        self.tally.slowest = self.tally.slowest.max(took);
    }

    fn summarise_checkpoints(&mut self, now: bool) {
        if !now && self.last_summary.elapsed() < CHECKPOINT_SUMMARY_INTERVAL {
            return;
        }
        self.last_summary = Instant::now();
        let tally = std::mem::take(&mut self.tally);
        if tally.partitions == 0 {
            return;
        }
        tracing::info!(
            stage = self.stage.name(),
            partition_checkpoints = tally.partitions,
            bytes = tally.bytes,
            slowest_ms = tally.slowest.as_millis() as u64,
            "checkpoints written"
        );
    }

    /// With `idle_release` set and no batch in hand, lets idle partitions
    /// judge their held events, and delivers what they produce as a batch.
    async fn release_idle(&mut self, stopping: bool) -> Result<(), PipelineError> {
        let idle_after = self.settings.idle_release;
        if idle_after.is_zero() || stopping || self.batch.deadline().is_some() {
            return Ok(());
        }
        let released = self
            .stage
            .release_idle(std::time::Instant::now(), idle_after, &mut self.outbox)?;
        if released > 0 {
            self.flush(Flush::Routine).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, kind: Flush) -> Result<(), PipelineError> {
        let records = self.batch.take();
        if !records.is_empty() {
            self.stage.process(&records, &mut self.outbox)?;
            Progress::add(&self.progress.batches, 1);
        }
        tracing::debug!(
            stage = self.stage.name(),
            records = records.len(),
            outputs = self.outbox.len(),
            final_flush = kind == Flush::Final,
            "flushing a batch"
        );
        let checkpoint_due = self.settings.exactly_once
            || kind == Flush::Final
            || self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval;
        self.stage.group_generation(group_generation(self.source.consumer()));
        if self.settings.exactly_once {
            let started = std::time::Instant::now();
            let before = self.outbox.len();
            let written = self.stage.checkpoint(checkpoint_due, &mut self.outbox)?;
            let bytes = changelog_bytes(&self.outbox, before);
            let offsets = self.stage.offsets_to_commit();
            if self.outbox.is_empty() && offsets.is_empty() {
                return Ok(());
            }
            self.sink.begin()?;
            self.sink.deliver(&mut self.outbox).await?;
            let group = self
                .source
                .consumer()
                .group_metadata()
                .ok_or_else(|| PipelineError::Commit("the consumer has no group metadata".into()))?;
            self.sink.commit_transaction(offsets_list(&offsets)?, group).await?;
            // The checkpoints are durable with the transaction.
            self.record_checkpoints(written, bytes, started.elapsed());
            self.last_checkpoint = Instant::now();
            self.stage.committed(&offsets);
            return Ok(());
        }
        self.sink.deliver(&mut self.outbox).await?;
        let started = std::time::Instant::now();
        let written = self.stage.checkpoint(checkpoint_due, &mut self.outbox)?;
        if checkpoint_due {
            self.last_checkpoint = Instant::now();
        }
        let bytes = changelog_bytes(&self.outbox, 0);
        self.sink.deliver(&mut self.outbox).await?;
        self.record_checkpoints(written, bytes, started.elapsed());
        let offsets = self.stage.offsets_to_commit();
        tracing::debug!(
            stage = self.stage.name(),
            partitions = offsets.len(),
            "delivered; committing"
        );
        if offsets.is_empty() {
            return Ok(());
        }
        let mode = match kind {
            Flush::Routine => CommitMode::Async,
            Flush::Final => CommitMode::Sync,
        };
        match self.source.commit(offsets_list(&offsets)?, mode).await {
            Ok(()) => self.stage.committed(&offsets),
            // A lost commit only means outputs after the checkpoint are
            // produced again after a restart; the next commit covers it.
            Err(error) => tracing::warn!(stage = self.stage.name(), %error, "offset commit failed"),
        }
        Ok(())
    }
}
