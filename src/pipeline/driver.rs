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
use crate::source::kafka::group::{KafkaSource, SourceEvent};

/// How a stage is batched and checkpointed.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait: Duration,
    pub checkpoint_interval: Duration,
    pub exactly_once: bool,
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
}

fn offsets_list(offsets: &[(PartitionId, i64)]) -> Result<TopicPartitionList, PipelineError> {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (id, offset) in offsets {
        list.add_partition_offset(&id.topic, id.partition, Offset::Offset(*offset))
            .map_err(|error| PipelineError::Commit(error.to_string()))?;
    }
    Ok(list)
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
            settings,
            batch,
            outbox: Outbox::default(),
            last_checkpoint: Instant::now(),
            progress,
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
        let result: Result<(), PipelineError> = loop {
            // A far deadline when the batch is empty: the branch is disabled
            // then, but its future is still built.
            let deadline = self
                .batch
                .deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let has_deadline = self.batch.deadline().is_some();
            let step: Result<bool, PipelineError> = tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    tracing::info!(stage = name, "stopping: finishing the batch in hand");
                    match self.flush(Flush::Final).await {
                        Ok(()) => on_stop(&self.stage).map(|()| true),
                        Err(error) => Err(error),
                    }
                }
                _ = tokio::time::sleep_until(deadline), if has_deadline => self.flush(Flush::Routine).await.map(|()| true),
                event = events.recv() => match event {
                    None => Ok(false),
                    Some(event) => self.handle(event, stopping).await.map(|()| true),
                },
            };
            match step {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
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

    async fn handle(&mut self, event: SourceEvent, stopping: bool) -> Result<(), PipelineError> {
        match event {
            SourceEvent::Record(record) => {
                // After the final flush, nothing more is processed: these
                // records are not committed and will be read again.
                if !stopping && self.batch.push(record, Instant::now()) {
                    self.flush(Flush::Routine).await?;
                }
                Ok(())
            }
            SourceEvent::Assigned(partitions) => {
                self.stage.assigned(partitions);
                Ok(())
            }
            SourceEvent::Revoked { partitions, lost, done } => {
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
        if self.settings.exactly_once {
            self.stage.checkpoint(checkpoint_due, &mut self.outbox)?;
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
            self.last_checkpoint = Instant::now();
            self.stage.committed(&offsets);
            return Ok(());
        }
        self.sink.deliver(&mut self.outbox).await?;
        if checkpoint_due {
            self.stage.checkpoint(true, &mut self.outbox)?;
            self.last_checkpoint = Instant::now();
        } else {
            self.stage.checkpoint(false, &mut self.outbox)?;
        }
        self.sink.deliver(&mut self.outbox).await?;
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
