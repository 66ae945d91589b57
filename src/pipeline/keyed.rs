//! The keyed stage: one engine per assigned partition of a topic whose
//! records are partitioned by API key, so each key's state lives with the
//! partition that owns it and moves with it, through the changelog, when
//! the partition moves to another instance.
//!
//! After a restart the state comes back from the newest checkpoint and the
//! records after it are processed again. The engine's output depends only on
//! each key's events, so the same alerts come out with the same ids; those
//! of records below the group's committed offset were already delivered and
//! are not produced twice.

use std::collections::HashMap;
use std::sync::Arc;

use super::feedback_feed::FeedbackFeed;
use super::partitions::PartitionBook;
use super::stage::{Progress, Stage};
use crate::alert::Output;
use crate::checkpoint::{Checkpoint, PartitionId, PartitionSnapshot, SnapshotFile};
use crate::counts::Counts;
use crate::decode::{Decoded, Decoder};
use crate::engine::Engine;
use crate::enrich::GeoIp;
use crate::event::AccessEvent;
use crate::event::Fingerprinter;
use crate::feedback::Outcome;
use crate::fleet::spray::{Network, ObservationRecord};
use crate::model::Model;
use crate::sink::kafka::{KafkaSinkError, Outbox, OutputTopics};
use crate::source::kafka::group::{AssignedPartition, InputRecord};

/// The stage's name in logs and progress.
pub const STAGE: &str = "keyed";

/// The state of one owned partition besides its offsets.
struct PartitionState {
    engine: Engine,
    /// Records below this offset were processed and their outputs delivered
    /// before the partition came here: process them for state only.
    replay_below: i64,
    /// Generation of the last checkpoint written or read.
    generation: Option<u64>,
    /// Entries of the feedback feed handed to the engine.
    feedback_seen: usize,
    checkpointed_offset: Option<i64>,
}

/// One engine per partition.
pub struct KeyedStage {
    model: Arc<Model>,
    geo: Arc<GeoIp>,
    decoder: Decoder,
    topics: OutputTopics,
    partitions: PartitionBook<PartitionState>,
    progress: Arc<Progress>,
    scratch_outputs: Vec<Output>,
    /// Where calls for the view across keys go, keyed by source network;
    /// `None` keeps the view in each partition's engine.
    source_topic: Option<String>,
    /// How each partition's engine fingerprints keys.
    fingerprinter: Fingerprinter,
    /// Analysts' feedback (`kafka.feedback_topic`) and where its audit goes.
    feedback: Option<Arc<FeedbackFeed>>,
    feedback_audit_topic: Option<String>,
}

impl KeyedStage {
    pub fn new(
        model: Arc<Model>,
        geo: Arc<GeoIp>,
        decoder: Decoder,
        topics: OutputTopics,
        progress: Arc<Progress>,
    ) -> KeyedStage {
        KeyedStage {
            model,
            geo,
            decoder,
            topics,
            partitions: PartitionBook::new(STAGE, Arc::clone(&progress)),
            progress,
            scratch_outputs: Vec::new(),
            source_topic: None,
            fingerprinter: Fingerprinter::unkeyed(),
            feedback: None,
            feedback_audit_topic: None,
        }
    }

    /// Hands the entries of `feed` to every partition's engine, and the
    /// audit of those applied to `audit_topic` (else to the log only).
    pub fn with_feedback(mut self, feed: Arc<FeedbackFeed>, audit_topic: Option<String>) -> KeyedStage {
        self.feedback = Some(feed);
        self.feedback_audit_topic = audit_topic;
        self
    }

    /// Fingerprints keys with `fingerprinter` (unkeyed by default).
    pub fn with_fingerprinter(mut self, fingerprinter: Fingerprinter) -> KeyedStage {
        self.fingerprinter = fingerprinter;
        self
    }

    /// Sends calls for the view across keys to `topic`, keyed by source
    /// network, for the source stage, instead of judging them per partition.
    pub fn with_source_topic(mut self, topic: String) -> KeyedStage {
        self.source_topic = Some(topic);
        self
    }

    /// The state of every owned partition, for a snapshot file.
    pub fn snapshots(&self) -> SnapshotFile {
        self.partitions
            .iter()
            .filter_map(|(id, owned)| {
                let next_offset = owned.next_offset?;
                Some((
                    id.to_string(),
                    PartitionSnapshot {
                        next_offset,
                        engine: owned.state.engine.snapshot(),
                    },
                ))
            })
            .collect()
    }

    /// Keys with state, over all owned partitions.
    pub fn keys_tracked(&self) -> usize {
        self.partitions
            .iter()
            .map(|(_, owned)| owned.state.engine.keys_tracked())
            .sum()
    }

    fn process_partition(
        &mut self,
        id: &PartitionId,
        records: &[&InputRecord],
        outbox: &mut Outbox,
        counts: &mut Counts,
    ) -> Result<(), KafkaSinkError> {
        let Some(owned) = self.partitions.get_mut(id) else {
            tracing::debug!(partition = %id, records = records.len(), "records of a partition not owned, skipped");
            return Ok(());
        };
        let mut events: Vec<AccessEvent<'_>> = Vec::with_capacity(records.len());
        let mut event_offsets: Vec<i64> = Vec::with_capacity(records.len());
        let mut scratch = Vec::new();
        let mut rejections = Vec::new();
        let mut last_offset = None;
        for record in records {
            if owned.already_processed(record.offset) {
                continue;
            }
            last_offset = Some(record.offset);
            let payload = record.payload.as_deref().unwrap_or_default();
            for item in self.decoder.decode_record(payload, &mut scratch) {
                match item {
                    Decoded::Event(event) => {
                        events.push(event);
                        event_offsets.push(record.offset);
                    }
                    Decoded::NoKey => counts.no_key += 1,
                    Decoded::Rejected(rejection) => {
                        if record.offset < owned.state.replay_below {
                            continue;
                        }
                        counts.count_rejected(&rejection.error);
                        rejections.push(rejection);
                    }
                }
            }
            // One dead letter per record, naming every element that failed.
            if !rejections.is_empty() {
                outbox.push_dead_letter(&self.topics, record, &rejections);
                rejections.clear();
            }
        }
        let Some(last_offset) = last_offset else {
            return Ok(());
        };
        let state = &mut owned.state;
        if let Some(feed) = &self.feedback {
            let mut entries = Vec::new();
            state.feedback_seen = feed.entries_since(state.feedback_seen, &mut entries);
            for entry in entries {
                state.engine.add_feedback(entry);
            }
        }
        let stats_before = (state.engine.stats().suppressed, state.engine.stats().late_events);
        if let Some(newest) = events.iter().map(|event| event.ts_ms).max() {
            self.progress.saw_event_time(STAGE, newest);
        }
        let replayed = event_offsets.partition_point(|offset| *offset < state.replay_below);
        if replayed > 0 {
            self.scratch_outputs.clear();
            state.engine.process(&events[..replayed], &mut self.scratch_outputs);
            self.scratch_outputs.clear();
            // Their observations were delivered before, like their alerts.
            state.engine.across_mut().take_observations();
        }
        let mut outputs = std::mem::take(&mut self.scratch_outputs);
        outputs.clear();
        if replayed < events.len() {
            state.engine.process(&events[replayed..], &mut outputs);
        }
        let mut result = Ok(());
        for output in &outputs {
            counts.count_output(output);
            if let Err(error) = outbox.push_output(&self.topics, output) {
                result = Err(error);
                break;
            }
        }
        if let Some(topic) = &self.source_topic {
            for observation in state.engine.across_mut().take_observations() {
                let record = ObservationRecord::of(&observation);
                match serde_json::to_vec(&record) {
                    Ok(json) => outbox.push_repartitioned(
                        topic,
                        Network::of(observation.ip).to_string(),
                        json,
                        Some(observation.ts_ms),
                    ),
                    Err(err) => {
                        result = Err(KafkaSinkError::Encode {
                            topic: topic.clone(),
                            detail: err.to_string(),
                        });
                        break;
                    }
                }
            }
        }
        outputs.clear();
        self.scratch_outputs = outputs;
        audit_feedback(&mut state.engine, id, self.feedback_audit_topic.as_deref(), outbox);
        let stats = state.engine.stats();
        Progress::add(
            &self.progress.suppressed,
            stats.suppressed.saturating_sub(stats_before.0),
        );
        Progress::add(
            &self.progress.late_events,
            stats.late_events.saturating_sub(stats_before.1),
        );
        owned.next_offset = Some(last_offset + 1);
        counts.events += events.len() as u64;
        result
    }
}

/// Sends the audit of feedback the engine applied (or refused) to the
/// audit topic and the log. An entry names one key, held by one partition:
/// the other partitions' "unmatched" records are noise, logged at debug.
fn audit_feedback(engine: &mut Engine, partition: &PartitionId, topic: Option<&str>, outbox: &mut Outbox) {
    let mut audit = Vec::new();
    engine.take_feedback_audit(&mut audit);
    for record in audit {
        let json = serde_json::to_string(&record).unwrap_or_default();
        if !matches!(record.outcome, Outcome::Applied | Outcome::Refused) {
            tracing::debug!(%partition, audit = %json, "feedback not for this partition's keys");
            continue;
        }
        tracing::info!(%partition, audit = %json, "feedback");
        if let Some(topic) = topic {
            let key = record.key_fingerprint.clone().unwrap_or_default();
            outbox.push_repartitioned(topic, key, json.into_bytes(), None);
        }
    }
}

impl Stage for KeyedStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn assigned(&mut self, partitions: Vec<AssignedPartition>) {
        self.partitions.assign(partitions, |partition| {
            let mut engine = Engine::new(Arc::clone(&self.model), Arc::clone(&self.geo))
                .with_fingerprinter(self.fingerprinter.clone());
            if self.source_topic.is_some() {
                engine.across_mut().spray_elsewhere();
            }
            let (next_offset, generation) = match partition.checkpoint {
                Some(Checkpoint {
                    next_offset,
                    generation,
                    snapshot,
                    ..
                }) => match engine.check_snapshot(&snapshot) {
                    Ok(()) => {
                        engine.restore(snapshot);
                        (Some(next_offset), Some(generation))
                    }
                    Err(error) => {
                        // Empty state for this partition alone, rebuilt from
                        // the input; the committed offset still keeps its
                        // outputs from being produced twice. The next
                        // checkpoint continues the generations, so it does
                        // not overwrite the refused one's slot.
                        tracing::error!(
                            partition = %partition.id,
                            reason = error.reason(),
                            %error,
                            "checkpoint refused; starting the partition with empty state"
                        );
                        metrics::counter!("keywatch_restore_fallbacks_total", "reason" => error.reason()).increment(1);
                        (None, Some(generation))
                    }
                },
                None => (None, None),
            };
            tracing::info!(
                partition = %partition.id,
                keys = engine.keys_tracked(),
                next_offset,
                committed_offset = partition.committed,
                "engine restored"
            );
            // Entries read before: those the restored clock has passed
            // were applied before the checkpoint.
            let mut feedback_seen = 0;
            if let Some(feed) = &self.feedback {
                let mut entries = Vec::new();
                feedback_seen = feed.entries_since(0, &mut entries);
                for entry in entries {
                    engine.add_feedback_backlog(entry);
                }
            }
            let state = PartitionState {
                engine,
                replay_below: partition.committed.unwrap_or(i64::MIN),
                generation,
                checkpointed_offset: next_offset,
                feedback_seen,
            };
            (next_offset, state)
        });
    }

    fn revoked(&mut self, partitions: &[PartitionId]) {
        self.partitions.revoke(partitions);
    }

    fn process(&mut self, records: &[InputRecord], outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        // Records of one partition stay in order; partitions are handled in
        // the order they first appear, which keeps the outbox deterministic.
        let mut groups: Vec<(PartitionId, Vec<&InputRecord>)> = Vec::new();
        let mut index: HashMap<(&str, i32), usize> = HashMap::new();
        for record in records {
            let position = *index.entry((&*record.topic, record.partition)).or_insert_with(|| {
                groups.push((record.partition_id(), Vec::new()));
                groups.len() - 1
            });
            groups[position].1.push(record);
        }
        let mut counts = Counts {
            records: records.len() as u64,
            ..Counts::default()
        };
        let mut result = Ok(());
        for (id, group) in &groups {
            result = self.process_partition(id, group, outbox, &mut counts);
            if result.is_err() {
                break;
            }
        }
        self.progress.add_counts(&counts);
        self.progress
            .keys
            .store(self.keys_tracked() as u64, std::sync::atomic::Ordering::Relaxed);
        result
    }

    fn checkpoint(&mut self, due: bool, outbox: &mut Outbox) -> Result<usize, KafkaSinkError> {
        let mut written = 0;
        for (id, owned) in self.partitions.iter_mut() {
            let Some(next_offset) = owned.next_offset else {
                continue;
            };
            let state = &mut owned.state;
            let moved = state.checkpointed_offset != Some(next_offset);
            let never_checkpointed = state.generation.is_none();
            if !moved || !(due || never_checkpointed) {
                continue;
            }
            let generation = state.generation.map_or(0, |generation| generation + 1);
            outbox.push_checkpoint(
                &self.topics,
                &Checkpoint {
                    partition: id.clone(),
                    next_offset,
                    generation,
                    group_generation: None,
                    snapshot: state.engine.snapshot(),
                },
            )?;
            state.generation = Some(generation);
            state.checkpointed_offset = Some(next_offset);
            written += 1;
        }
        Progress::add(&self.progress.checkpoints, written as u64);
        Ok(written)
    }

    fn offsets_to_commit(&self) -> Vec<(PartitionId, i64)> {
        // Without a checkpoint a restart starts over from the beginning to
        // rebuild state, so nothing may be committed yet.
        self.partitions.offsets_to_commit(|state| state.generation.is_some())
    }

    fn committed(&mut self, offsets: &[(PartitionId, i64)]) {
        self.partitions.committed(offsets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Format;
    use crate::detect::testkit::{DAY, ENDPOINTS, HOUR, T0, event, geo, history, ip};
    use crate::pipeline::partitions::OwnedPartition;

    const KEY: &str = "AKIAKEYEDSTAGE000001";

    fn topics() -> OutputTopics {
        OutputTopics {
            alerts: "alerts".into(),
            revocations: "revocations".into(),
            digests: "digests".into(),
            dead_letter: "dlq".into(),
            changelog: "changelog".into(),
            changelog_partitions: 1,
        }
    }

    fn stage() -> KeyedStage {
        KeyedStage::new(
            Arc::new(Model::default_model()),
            geo(),
            Decoder::new(Format::Canonical, None, 1 << 20),
            topics(),
            Arc::new(Progress::default()),
        )
    }

    fn id() -> PartitionId {
        PartitionId::new("access", 0)
    }

    /// Days of use from London, a malformed record, then use from Sydney.
    fn records() -> Vec<InputRecord> {
        let mut events = history(KEY, "london", 4, 4, ENDPOINTS);
        let travel = T0 + 3 * DAY + 21 * HOUR;
        events.push(event(travel, KEY, ip("sydney", 1), "/v1/orders", 200));
        events.push(event(travel + 60_000, KEY, ip("sydney", 1), "/v1/orders", 200));
        // Later use moves the input's watermark past the travel, so it is judged.
        events.push(event(travel + 600_000, KEY, ip("sydney", 1), "/v1/orders", 200));
        let mut payloads: Vec<Vec<u8>> = events.iter().map(|e| serde_json::to_vec(e).unwrap()).collect();
        payloads.insert(payloads.len() - 3, b"{broken".to_vec());
        payloads
            .into_iter()
            .enumerate()
            .map(|(offset, payload)| InputRecord {
                topic: Arc::from("access"),
                partition: 0,
                offset: offset as i64,
                timestamp_ms: None,
                payload: Some(payload),
            })
            .collect()
    }

    fn assign(stage: &mut KeyedStage, checkpoint: Option<i64>, committed: Option<i64>) {
        stage.assigned(vec![AssignedPartition {
            id: id(),
            checkpoint: checkpoint.map(|next_offset| Checkpoint {
                partition: id(),
                next_offset,
                generation: 3,
                group_generation: None,
                snapshot: Engine::new(Arc::new(Model::default_model()), geo()).snapshot(),
            }),
            committed,
        }]);
    }

    fn owned(stage: &KeyedStage) -> &OwnedPartition<PartitionState> {
        let (_, owned) = stage
            .partitions
            .iter()
            .find(|(partition, _)| **partition == id())
            .unwrap();
        owned
    }

    fn topics_of(outbox: &Outbox) -> Vec<&str> {
        outbox.messages.iter().map(|message| message.topic.as_str()).collect()
    }

    #[test]
    fn outputs_below_the_committed_offset_are_not_produced_again() {
        let records = records();
        let mut fresh = stage();
        assign(&mut fresh, Some(0), None);
        let mut everything = Outbox::default();
        fresh.process(&records, &mut everything).unwrap();
        let produced = topics_of(&everything);
        assert!(produced.contains(&"alerts"), "the travel is flagged: {produced:?}");
        assert_eq!(produced.iter().filter(|topic| **topic == "dlq").count(), 1);

        // After a restart from the same checkpoint, with everything already
        // committed, the records rebuild state and produce nothing.
        let mut restarted = stage();
        assign(&mut restarted, Some(0), Some(records.len() as i64));
        let mut again = Outbox::default();
        for chunk in records.chunks(7) {
            restarted.process(chunk, &mut again).unwrap();
        }
        assert!(again.is_empty(), "{:?}", topics_of(&again));
        assert_eq!(owned(&restarted).next_offset, Some(records.len() as i64));
        let state = |stage: &KeyedStage| serde_json::to_string(&owned(stage).state.engine.snapshot()).unwrap();
        assert_eq!(state(&restarted), state(&fresh), "the same state either way");

        // Committed up to just before the travel: exactly its outputs come out.
        let travel_offset = records.len() as i64 - 3;
        let mut partly = stage();
        assign(&mut partly, Some(0), Some(travel_offset));
        let mut tail = Outbox::default();
        partly.process(&records, &mut tail).unwrap();
        let alert_payloads = |outbox: &Outbox| -> Vec<Vec<u8>> {
            outbox
                .messages
                .iter()
                .filter(|message| message.topic == "alerts")
                .map(|message| message.payload.clone())
                .collect()
        };
        assert_eq!(
            alert_payloads(&tail),
            alert_payloads(&everything),
            "the same alerts, ids included"
        );
        assert!(
            !topics_of(&tail).contains(&"dlq"),
            "the dead letter was before the committed offset"
        );
    }

    #[test]
    fn commits_wait_for_a_first_checkpoint_and_routine_checkpoints_skip_idle_partitions() {
        let records = records();
        let mut stage = stage();
        assign(&mut stage, None, None);
        let mut outbox = Outbox::default();
        stage.process(&records[..10], &mut outbox).unwrap();
        assert!(
            stage.offsets_to_commit().is_empty(),
            "no checkpoint yet: a restart starts over"
        );
        outbox.clear();
        assert_eq!(
            stage.checkpoint(false, &mut outbox).unwrap(),
            1,
            "the first checkpoint is not delayed"
        );
        assert_eq!(outbox.messages.last().unwrap().key.as_deref(), Some("access/0"));
        assert_eq!(stage.offsets_to_commit(), vec![(id(), 10)]);
        stage.committed(&[(id(), 10)]);
        assert!(stage.offsets_to_commit().is_empty());

        outbox.clear();
        stage.process(&records[10..20], &mut outbox).unwrap();
        outbox.clear();
        assert_eq!(stage.checkpoint(false, &mut outbox).unwrap(), 0, "not due yet");
        assert_eq!(
            stage.offsets_to_commit(),
            vec![(id(), 20)],
            "outputs delivered may be committed"
        );
        assert_eq!(stage.checkpoint(true, &mut outbox).unwrap(), 1);
        assert_eq!(stage.checkpoint(true, &mut outbox).unwrap(), 0, "nothing moved since");

        stage.revoked(&[id()]);
        assert_eq!(stage.partitions.iter().count(), 0);
        assert!(stage.offsets_to_commit().is_empty());
    }

    #[test]
    fn a_checkpoint_of_another_model_starts_the_partition_empty_instead_of_failing() {
        let mut stage = stage();
        let mut snapshot = Engine::new(Arc::new(Model::default_model()), geo()).snapshot();
        snapshot.model = "retired-model@0".into();
        stage.assigned(vec![AssignedPartition {
            id: id(),
            checkpoint: Some(Checkpoint {
                partition: id(),
                next_offset: 5,
                generation: 3,
                group_generation: None,
                snapshot,
            }),
            committed: Some(5),
        }]);
        let owned = owned(&stage);
        assert_eq!(owned.next_offset, None, "rebuilt from the start of the input");
        assert_eq!(
            owned.state.generation,
            Some(3),
            "the next checkpoint takes the other slot"
        );
        assert_eq!(
            owned.state.replay_below, 5,
            "outputs already delivered are not produced twice"
        );
    }
}
