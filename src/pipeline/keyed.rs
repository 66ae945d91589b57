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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::feedback_feed::FeedbackFeed;
use super::partitions::{OwnedPartition, PartitionBook};
use super::stage::{Progress, Stage};
use crate::alert::Output;
use crate::alert::owner::attach_owners;
use crate::checkpoint::{Checkpoint, KeyLedger, PartitionId, PartitionSnapshot, SnapshotFile, encode_incremental};
use crate::config::kafka::ChangelogFormat;
use crate::counts::Counts;
use crate::decode::{Decoded, Decoder};
use crate::engine::{Engine, Quarantined};
use crate::enrich::GeoIp;
use crate::event::AccessEvent;
use crate::event::Fingerprinter;
use crate::feedback::Outcome;
use crate::fleet::spray::{Network, ObservationRecord};
use crate::model::Model;
use crate::owners::SharedOwners;
use crate::revoke::watermark::{InputWatermark, WatermarkRecord};
use crate::sink::kafka::{KafkaSinkError, Outbox, OutgoingMessage, OutputTopics};
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
    /// When the partition last had a record (wall clock), for
    /// `kafka.idle_release`.
    last_input: Option<Instant>,
    /// Held events were judged for idleness since the last checkpoint: the
    /// state moved though the offset did not.
    released_since_checkpoint: bool,
    /// Where the partition's key entries are in the changelog.
    ledger: KeyLedger,
    /// When the partition came here (wall clock).
    assigned_at: Instant,
    /// The last watermark written to the candidates and source topics:
    /// (released, idle), and when (wall clock).
    reported_watermark: Option<(Option<i64>, bool)>,
    reported_at: Option<Instant>,
}

/// A partition without any event for this long (wall clock) reports that
/// it has none, so that it does not hold the revocation gate back.
const EMPTY_PARTITION_AFTER: Duration = Duration::from_secs(5);

/// A partition repeats its watermark this often (wall clock) when it has
/// not changed, so that a source partition that moved to another member
/// or restarted, whose view starts over, hears from every keyed partition
/// again ([`super::by_source`]).
pub const WATERMARK_REPEAT: Duration = Duration::from_secs(10);

/// One engine per partition.
pub struct KeyedStage {
    model: Arc<Model>,
    geo: Arc<GeoIp>,
    decoder: Decoder,
    topics: OutputTopics,
    partitions: PartitionBook<PartitionState>,
    progress: Arc<Progress>,
    /// Buffers of each judging thread, kept from batch to batch; the first
    /// is the calling thread's.
    scratch: Vec<Scratch>,
    /// Threads that judge the partitions of a batch (at least 1).
    judge_threads: usize,
    /// Where calls for the view across keys go, keyed by source network;
    /// `None` keeps the view in each partition's engine.
    source_topic: Option<String>,
    /// Partitions of `source_topic`, each of which gets every watermark.
    source_partitions: i32,
    /// How each partition's engine fingerprints keys.
    fingerprinter: Fingerprinter,
    /// Owners put on alerts and revocation requests, kept up to date from
    /// the owners topic.
    owners: Option<SharedOwners>,
    /// The consumer group generation of this member, recorded in every
    /// checkpoint so a zombie's later write loses to the current owner's.
    group_generation: Option<i32>,
    /// How checkpoints are laid out in the changelog.
    changelog_format: ChangelogFormat,
    /// Analysts' feedback (`kafka.feedback_topic`) and where its audit goes.
    feedback: Option<Arc<FeedbackFeed>>,
    feedback_audit_topic: Option<String>,
    /// With the revocation gate downstream: how many keyed partitions there
    /// are, for the watermarks written after the candidates.
    candidate_watermarks: Option<u32>,
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
            scratch: vec![Scratch::default()],
            judge_threads: 1,
            source_topic: None,
            source_partitions: 0,
            fingerprinter: Fingerprinter::unkeyed(),
            owners: None,
            group_generation: None,
            changelog_format: ChangelogFormat::default(),
            feedback: None,
            feedback_audit_topic: None,
            candidate_watermarks: None,
        }
    }

    /// Writes each partition's watermark to the revocation candidates topic
    /// (the `revocations` output topic) after its candidates, so that the
    /// gate judges candidates in event-time order ([`crate::revoke::watermark`]);
    /// `inputs` is the number of keyed partitions (0 when unknown).
    pub fn with_candidate_watermarks(mut self, inputs: u32) -> KeyedStage {
        self.candidate_watermarks = Some(inputs);
        self
    }

    /// Puts the owners of `owners` on alerts and revocation requests.
    pub fn with_owners(mut self, owners: SharedOwners) -> KeyedStage {
        self.owners = Some(owners);
        self
    }

    /// Writes checkpoints in `format` (whole partitions by default).
    pub fn with_changelog_format(mut self, format: ChangelogFormat) -> KeyedStage {
        self.changelog_format = format;
        self
    }

    /// Hands the entries of `feed` to every partition's engine, and the
    /// audit of those applied to `audit_topic` (else to the log only).
    pub fn with_feedback(mut self, feed: Arc<FeedbackFeed>, audit_topic: Option<String>) -> KeyedStage {
        self.feedback = Some(feed);
        self.feedback_audit_topic = audit_topic;
        self
    }

    /// Judges the partitions of a batch on up to `threads` threads (one by
    /// default); the outputs are the same whatever the number.
    pub fn with_judge_threads(mut self, threads: usize) -> KeyedStage {
        self.judge_threads = threads.max(1);
        self
    }

    /// Fingerprints keys with `fingerprinter` (unkeyed by default).
    pub fn with_fingerprinter(mut self, fingerprinter: Fingerprinter) -> KeyedStage {
        self.fingerprinter = fingerprinter;
        self
    }

    /// Sends calls for the view across keys to `topic`, keyed by source
    /// network, for the source stage, instead of judging them per partition;
    /// and each partition's watermark to every one of its `partitions`
    /// after them, so that the source stage judges them in event-time order
    /// ([`super::by_source`]).
    pub fn with_source_topic(mut self, topic: String, partitions: i32) -> KeyedStage {
        self.source_topic = Some(topic);
        self.source_partitions = partitions;
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

    /// What judging reads, beside the partitions and the judging threads'
    /// buffers, which it changes.
    fn split(&mut self) -> (Judge<'_>, &mut PartitionBook<PartitionState>, &mut Vec<Scratch>) {
        let KeyedStage {
            topics,
            decoder,
            owners,
            source_topic,
            source_partitions,
            progress,
            feedback,
            feedback_audit_topic,
            candidate_watermarks,
            partitions,
            scratch,
            ..
        } = self;
        let watermarks = WatermarkTo::of(
            topics,
            *candidate_watermarks,
            source_topic.as_deref(),
            *source_partitions,
        );
        let judge = Judge {
            topics,
            decoder,
            owners: owners.as_ref(),
            source_topic: source_topic.as_deref(),
            progress,
            feedback: feedback.as_deref(),
            feedback_audit_topic: feedback_audit_topic.as_deref(),
            watermarks,
        };
        (judge, partitions, scratch)
    }

    /// Keys with state, over all owned partitions.
    pub fn keys_tracked(&self) -> usize {
        self.partitions
            .iter()
            .map(|(_, owned)| owned.state.engine.keys_tracked())
            .sum()
    }
}

/// What judging a partition reads and leaves unchanged: shared by the
/// threads that judge the partitions of a batch.
struct Judge<'a> {
    topics: &'a OutputTopics,
    decoder: &'a Decoder,
    owners: Option<&'a SharedOwners>,
    source_topic: Option<&'a str>,
    progress: &'a Progress,
    feedback: Option<&'a FeedbackFeed>,
    feedback_audit_topic: Option<&'a str>,
    watermarks: Option<WatermarkTo<'a>>,
}

/// Buffers a judging thread reuses from batch to batch.
#[derive(Default)]
struct Scratch {
    outputs: Vec<Output>,
    /// Events the engine quarantined, on their way to the dead-letter topic.
    quarantined: Vec<Quarantined>,
}

impl<'a> Judge<'a> {
    fn emit_to<'s>(&'s self, scratch: &'s mut Vec<Quarantined>) -> Emit<'s> {
        Emit {
            topics: self.topics,
            owners: self.owners,
            source_topic: self.source_topic,
            quarantined: scratch,
        }
    }

    /// Decodes and judges one partition's records of a batch, in offset
    /// order, putting what comes out into `outbox`. It reads and changes
    /// only this partition's state, so partitions can be judged on
    /// different threads.
    fn partition(
        &self,
        scratch: &mut Scratch,
        id: &PartitionId,
        owned: &mut OwnedPartition<PartitionState>,
        records: &[&InputRecord],
        outbox: &mut Outbox,
        counts: &mut Counts,
    ) -> Result<(), KafkaSinkError> {
        let mut events: Vec<AccessEvent<'_>> = Vec::with_capacity(records.len());
        let mut event_offsets: Vec<i64> = Vec::with_capacity(records.len());
        let mut decoded = Vec::new();
        let mut rejections = Vec::new();
        let mut last_offset = None;
        for record in records {
            if owned.already_processed(record.offset) {
                continue;
            }
            last_offset = Some(record.offset);
            let payload = record.payload.as_deref().unwrap_or_default();
            for item in self.decoder.decode_record(payload, &mut decoded) {
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
                outbox.push_dead_letter(self.topics, record, &rejections);
                rejections.clear();
            }
        }
        let Some(last_offset) = last_offset else {
            return Ok(());
        };
        let state = &mut owned.state;
        if let Some(feed) = self.feedback {
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
        // Each event's input offset goes with it, to name the record should
        // the event be quarantined (offsets are never negative).
        let origins: Vec<u64> = event_offsets.iter().map(|offset| *offset as u64).collect();
        let outputs = &mut scratch.outputs;
        if replayed > 0 {
            outputs.clear();
            state
                .engine
                .process_with_origins(&events[..replayed], &origins[..replayed], outputs);
            // Their observations were delivered before, like their alerts.
            state.engine.across_mut().take_observations();
        }
        outputs.clear();
        if replayed < events.len() {
            state
                .engine
                .process_with_origins(&events[replayed..], &origins[replayed..], outputs);
        }
        let result = emit(
            self.emit_to(&mut scratch.quarantined),
            id,
            state,
            outputs,
            outbox,
            counts,
        );
        outputs.clear();
        audit_feedback(&mut state.engine, id, self.feedback_audit_topic, outbox);
        let stats = state.engine.stats();
        Progress::add(
            &self.progress.suppressed,
            stats.suppressed.saturating_sub(stats_before.0),
        );
        Progress::add(
            &self.progress.late_events,
            stats.late_events.saturating_sub(stats_before.1),
        );
        if let Some(to) = self.watermarks {
            report_watermark(to, id, state, false, false, outbox);
        }
        owned.next_offset = Some(last_offset + 1);
        state.last_input = Some(Instant::now());
        counts.events += events.len() as u64;
        result
    }
}

/// One partition's share of a batch, judged by whichever thread takes it.
struct Share<'b> {
    id: &'b PartitionId,
    owned: Option<&'b mut OwnedPartition<PartitionState>>,
    records: &'b [&'b InputRecord],
    outbox: Outbox,
    counts: Counts,
    result: Result<(), KafkaSinkError>,
}

/// Takes shares off `shares` until none is left, judging each.
fn judge_shares(judge: &Judge<'_>, scratch: &mut Scratch, shares: &[Mutex<Share<'_>>], next: &AtomicUsize) {
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(share) = shares.get(index) else {
            return;
        };
        let mut share = share.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Share {
            id,
            owned,
            records,
            outbox,
            counts,
            result,
        } = &mut *share;
        if let Some(owned) = owned.as_deref_mut() {
            *result = judge.partition(scratch, id, owned, records, outbox, counts);
        }
    }
}

/// Where [`emit`] sends what a partition's engine produced.
struct Emit<'a> {
    topics: &'a OutputTopics,
    /// Owners put on alerts and revocation requests before they go.
    owners: Option<&'a SharedOwners>,
    source_topic: Option<&'a str>,
    quarantined: &'a mut Vec<Quarantined>,
}

/// Puts the owners known now on the alerts and revocation requests in
/// `outputs` (digests carry none).
fn attach_shared_owners(owners: Option<&SharedOwners>, outputs: &mut [Output]) {
    if let Some(owners) = owners
        && outputs.iter().any(|output| !matches!(output, Output::Digest(_)))
    {
        let book = owners.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        attach_owners(&book, outputs);
    }
}

/// Puts into the outbox what a partition's engine produced: its outputs,
/// the calls for the view across keys (to the source topic, when that view
/// runs apart) and the events it quarantined (to the dead-letter topic,
/// like other rejects, except those of records whose outputs were
/// delivered before the partition came here).
fn emit(
    to: Emit<'_>,
    id: &PartitionId,
    state: &mut PartitionState,
    outputs: &mut [Output],
    outbox: &mut Outbox,
    counts: &mut Counts,
) -> Result<(), KafkaSinkError> {
    attach_shared_owners(to.owners, outputs);
    for output in outputs.iter() {
        // Revocation requests are candidates here: the gate stage counts
        // what it sends or shadows.
        if !matches!(output, Output::Revocation(_)) {
            counts.count_output(output);
        }
        outbox.push_output(to.topics, output)?;
    }
    if let Some(topic) = to.source_topic {
        for observation in state.engine.across_mut().take_observations() {
            let record = ObservationRecord::of(&observation);
            let json = serde_json::to_vec(&record).map_err(|err| KafkaSinkError::Encode {
                topic: topic.to_string(),
                detail: err.to_string(),
            })?;
            outbox.push_repartitioned(
                topic,
                Network::of(observation.ip).to_string(),
                json,
                Some(observation.ts_ms),
            );
        }
    }
    state.engine.take_quarantined(to.quarantined);
    for event in to.quarantined.drain(..) {
        if (event.origin as i64) < state.replay_below {
            continue;
        }
        counts.rejected += 1;
        *counts.rejected_by_reason.entry("future_event".to_string()).or_default() += 1;
        outbox.push_quarantined(to.topics, id, &event);
    }
    Ok(())
}

impl KeyedStage {
    /// Judges the events held for ordering by every partition that has had
    /// no record for `idle_after` of wall-clock time at `now`, as if its
    /// input's time had moved past them (`kafka.idle_release`); returns how
    /// many partitions let events go. Partitions still replaying records
    /// whose outputs were delivered before are left alone.
    pub fn release_idle_partitions(
        &mut self,
        now: Instant,
        idle_after: Duration,
        outbox: &mut Outbox,
    ) -> Result<usize, KafkaSinkError> {
        let mut released = 0;
        let mut counts = Counts::default();
        let (judge, partitions, scratch) = self.split();
        let Scratch { outputs, quarantined } = &mut scratch[0];
        let mut result = Ok(());
        for (id, owned) in partitions.iter_mut() {
            let state = &mut owned.state;
            let replaying = owned.next_offset.is_none_or(|next| next < state.replay_below);
            let idle = state
                .last_input
                .is_none_or(|last| now.saturating_duration_since(last) >= idle_after);
            if replaying || !idle || state.engine.held_events() == 0 {
                continue;
            }
            outputs.clear();
            state.engine.release_held(outputs);
            state.released_since_checkpoint = true;
            state.last_input = Some(now);
            released += 1;
            tracing::info!(partition = %id, outputs = outputs.len(), "idle partition: held events judged");
            result = emit(judge.emit_to(quarantined), id, state, outputs, outbox, &mut counts);
            if result.is_err() {
                break;
            }
            if let Some(to) = judge.watermarks {
                report_watermark(to, id, state, true, false, outbox);
            }
        }
        outputs.clear();
        self.progress.add_counts(&counts);
        result.map(|()| released)
    }
}

/// Where a partition's watermark goes: the candidates topic (the
/// `revocations` output topic) with the revocation gate downstream, and
/// every partition of the source topic with the source stage downstream.
#[derive(Debug, Clone, Copy)]
struct WatermarkTo<'a> {
    candidates: Option<&'a str>,
    source: Option<(&'a str, i32)>,
    /// Keyed partitions in all (0 when unknown).
    inputs: u32,
}

impl<'a> WatermarkTo<'a> {
    fn of(
        topics: &'a OutputTopics,
        candidate_watermarks: Option<u32>,
        source_topic: Option<&'a str>,
        source_partitions: i32,
    ) -> Option<WatermarkTo<'a>> {
        let to = WatermarkTo {
            candidates: candidate_watermarks.map(|_| topics.revocations.as_str()),
            source: source_topic.map(|topic| (topic, source_partitions)),
            inputs: candidate_watermarks.unwrap_or(0),
        };
        (to.candidates.is_some() || to.source.is_some()).then_some(to)
    }
}

/// Writes how far a partition's engine has judged, after what it sent,
/// when that changed since the last report or `repeat` says to say it
/// again.
fn report_watermark(
    to: WatermarkTo<'_>,
    id: &PartitionId,
    state: &mut PartitionState,
    idle: bool,
    repeat: bool,
    outbox: &mut Outbox,
) {
    let watermark = state.engine.candidate_watermark();
    let released_ms = (watermark > i64::MIN).then_some(watermark);
    if state.reported_watermark == Some((released_ms, idle)) && !repeat {
        return;
    }
    state.reported_watermark = Some((released_ms, idle));
    state.reported_at = Some(Instant::now());
    let record = WatermarkRecord {
        watermark: InputWatermark {
            input: id.to_string(),
            released_ms,
            idle,
            inputs: to.inputs,
        },
    };
    let payload = serde_json::to_vec(&record).unwrap_or_default();
    let message = |topic: &str, partition: Option<i32>| OutgoingMessage {
        topic: topic.to_string(),
        partition,
        key: Some(format!("watermark:{id}")),
        payload: payload.clone(),
        headers: Vec::new(),
        timestamp_ms: None,
        tombstone: false,
    };
    if let Some(topic) = to.candidates {
        outbox.messages.push(message(topic, None));
    }
    if let Some((topic, partitions)) = to.source {
        for partition in 0..partitions {
            outbox.messages.push(message(topic, Some(partition)));
        }
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
            let mut ledger = partition.ledger;
            let mut restored_incremental = false;
            let (next_offset, generation) = match partition.checkpoint {
                Some(Checkpoint {
                    next_offset,
                    generation,
                    snapshot,
                    incremental,
                    ..
                }) => match engine.check_snapshot(&snapshot) {
                    Ok(()) => {
                        engine.restore(snapshot);
                        restored_incremental = incremental;
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
            if !restored_incremental {
                // Key entries of state not restored are deleted by the next
                // checkpoint.
                ledger.forget_state();
            }
            if self.changelog_format == ChangelogFormat::Incremental {
                // Every key is written by the first checkpoint, unless its
                // entry in the changelog is what was restored.
                engine.track_changes();
                if restored_incremental {
                    engine.clear_changes();
                }
            }
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
                last_input: None,
                released_since_checkpoint: false,
                ledger,
                feedback_seen,
                assigned_at: Instant::now(),
                reported_watermark: None,
                reported_at: None,
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
        let threads = self.judge_threads.min(groups.len()).max(1);
        if self.scratch.len() < threads {
            self.scratch.resize_with(threads, Scratch::default);
        }
        let (judge, partitions, scratch) = self.split();
        let mut owned: HashMap<&PartitionId, &mut OwnedPartition<PartitionState>> = partitions.iter_mut().collect();
        let mut result = Ok(());
        if threads == 1 {
            let scratch = &mut scratch[0];
            for (id, group) in &groups {
                let Some(partition) = owned.remove(id) else {
                    tracing::debug!(partition = %id, records = group.len(), "records of a partition not owned, skipped");
                    continue;
                };
                result = judge.partition(scratch, id, partition, group, outbox, &mut counts);
                if result.is_err() {
                    break;
                }
            }
        } else {
            // Each partition's engine is independent of the others', so
            // the partitions of a batch are judged on several threads; their
            // outputs are then put in the outbox in the order one thread
            // would have put them there.
            let shares: Vec<Mutex<Share<'_>>> = groups
                .iter()
                .map(|(id, group)| {
                    let partition = owned.remove(id);
                    if partition.is_none() {
                        tracing::debug!(partition = %id, records = group.len(), "records of a partition not owned, skipped");
                    }
                    Mutex::new(Share {
                        id,
                        owned: partition,
                        records: group,
                        outbox: outbox.empty_like(),
                        counts: Counts::default(),
                        result: Ok(()),
                    })
                })
                .collect();
            let next = AtomicUsize::new(0);
            let (mine, others) = scratch.split_at_mut(1);
            std::thread::scope(|scope| {
                for scratch in others.iter_mut().take(threads - 1) {
                    let (judge, shares, next) = (&judge, &shares, &next);
                    scope.spawn(move || judge_shares(judge, scratch, shares, next));
                }
                judge_shares(&judge, &mut mine[0], &shares, &next);
            });
            for share in shares {
                let mut share = share.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
                outbox.messages.append(&mut share.outbox.messages);
                counts.add(&share.counts);
                if share.result.is_err() {
                    result = share.result;
                    break;
                }
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
            let moved = state.checkpointed_offset != Some(next_offset) || state.released_since_checkpoint;
            let never_checkpointed = state.generation.is_none();
            if !moved || !(due || never_checkpointed) {
                continue;
            }
            let generation = state.generation.map_or(0, |generation| generation + 1);
            let incremental = self.changelog_format == ChangelogFormat::Incremental;
            let checkpoint = Checkpoint::of(
                &state.engine,
                id.clone(),
                next_offset,
                generation,
                self.group_generation,
                incremental,
            );
            if incremental {
                let mut changed = Vec::new();
                state.engine.changed_keys(|bits, key| changed.push((bits, key)));
                let messages = encode_incremental(&checkpoint, &changed, &mut state.ledger)?;
                drop(changed);
                state.engine.clear_changes();
                outbox.push_changelog(&self.topics, id, messages);
            } else {
                outbox.push_checkpoint(&self.topics, &checkpoint)?;
            }
            state.generation = Some(generation);
            state.checkpointed_offset = Some(next_offset);
            state.released_since_checkpoint = false;
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

    fn group_generation(&mut self, generation: Option<i32>) {
        self.group_generation = generation;
    }

    fn release_idle(
        &mut self,
        now: Instant,
        idle_after: Duration,
        outbox: &mut Outbox,
    ) -> Result<usize, KafkaSinkError> {
        self.release_idle_partitions(now, idle_after, outbox)
    }

    fn idle(&mut self, outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        let KeyedStage {
            topics,
            candidate_watermarks,
            source_topic,
            source_partitions,
            partitions,
            ..
        } = self;
        let Some(to) = WatermarkTo::of(
            topics,
            *candidate_watermarks,
            source_topic.as_deref(),
            *source_partitions,
        ) else {
            return Ok(());
        };
        let now = Instant::now();
        for (id, owned) in partitions.iter_mut() {
            let state = &mut owned.state;
            match state.reported_watermark {
                // Not heard of yet downstream: a restored partition says
                // how far it had judged, one without any event that it has
                // none.
                None => {
                    let restored = state.engine.candidate_watermark() > i64::MIN;
                    let empty = state.last_input.is_none()
                        && now.saturating_duration_since(state.assigned_at) >= EMPTY_PARTITION_AFTER;
                    if restored || empty {
                        report_watermark(to, id, state, false, false, outbox);
                    }
                }
                // Said before and unchanged since: said again now and then.
                Some((_, idle)) => {
                    let due = state
                        .reported_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= WATERMARK_REPEAT);
                    if due && to.source.is_some() {
                        report_watermark(to, id, state, idle, true, outbox);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Format;
    use crate::detect::testkit::{DAY, ENDPOINTS, HOUR, T0, event, geo, history, ip};

    const KEY: &str = "AKIAKEYEDSTAGE000001";

    fn topics() -> OutputTopics {
        OutputTopics {
            alerts: "alerts".into(),
            revocations: "revocations".into(),
            digests: "digests".into(),
            dead_letter: "dlq".into(),
            changelog: "changelog".into(),
            changelog_partitions: 1,
            alert_output: Default::default(),
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
                incremental: false,
            }),
            ledger: KeyLedger::default(),
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

    /// `records()` for key `key`, on partition `partition`.
    fn records_of(key: &str, partition: i32) -> Vec<InputRecord> {
        records()
            .into_iter()
            .map(|mut record| {
                let payload = String::from_utf8(record.payload.take().unwrap()).unwrap();
                record.payload = Some(payload.replace(KEY, key).into_bytes());
                record.partition = partition;
                record
            })
            .collect()
    }

    #[test]
    fn partitions_judged_on_several_threads_give_the_outputs_and_state_of_one_thread() {
        const PARTITIONS: i32 = 5;
        // The partitions' records interleaved, as a consumer hands them over.
        let per_partition: Vec<Vec<InputRecord>> = (0..PARTITIONS)
            .map(|partition| records_of(&format!("AKIAKEYEDSTAGE00000{partition}"), partition))
            .collect();
        let mut batch = Vec::new();
        for index in 0..per_partition[0].len() {
            for partition in per_partition.iter().rev() {
                batch.push(partition[index].clone());
            }
        }
        let run = |threads: usize| {
            let mut stage = stage().with_judge_threads(threads);
            stage.assigned(
                (0..PARTITIONS)
                    .map(|partition| AssignedPartition {
                        id: PartitionId::new("access", partition),
                        checkpoint: None,
                        ledger: KeyLedger::default(),
                        committed: None,
                    })
                    .collect(),
            );
            let mut outbox = Outbox::default();
            for chunk in batch.chunks(37) {
                stage.process(chunk, &mut outbox).unwrap();
            }
            let progress = stage.progress.counts();
            (
                outbox.messages,
                serde_json::to_string(&stage.snapshots()).unwrap(),
                progress,
            )
        };
        let (one_outputs, one_state, one_counts) = run(1);
        let alerts = one_outputs.iter().filter(|message| message.topic == "alerts").count();
        assert!(
            alerts >= PARTITIONS as usize,
            "each partition's travel is flagged: {alerts}"
        );
        assert_eq!(
            one_outputs.iter().filter(|message| message.topic == "dlq").count(),
            PARTITIONS as usize
        );
        for threads in [2, 4, 8] {
            let (outputs, state, counts) = run(threads);
            assert_eq!(outputs, one_outputs, "{threads} threads");
            assert_eq!(state, one_state, "{threads} threads");
            assert_eq!(counts, one_counts, "{threads} threads");
        }
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

    /// The changelog as a compacted topic keeps it, read back.
    fn read_back(changelog: &[crate::sink::kafka::OutgoingMessage]) -> crate::checkpoint::Restored {
        let mut assembler = crate::checkpoint::CheckpointAssembler::new([id()]);
        for message in changelog {
            let value = (!message.tombstone).then_some(message.payload.as_slice());
            assembler.push(message.key.as_deref().unwrap_or_default().as_bytes(), value);
        }
        assembler.finish()
    }

    #[test]
    fn an_incremental_changelog_restores_the_state_a_whole_checkpoint_would() {
        let records = records();
        let mut writer = stage().with_changelog_format(ChangelogFormat::Incremental);
        assign(&mut writer, None, None);
        let mut changelog = Vec::new();
        let mut key_entries = Vec::new();
        for chunk in records.chunks(4) {
            let mut outbox = Outbox::default();
            writer.process(chunk, &mut outbox).unwrap();
            writer.checkpoint(true, &mut outbox).unwrap();
            let written: Vec<_> = outbox
                .messages
                .into_iter()
                .filter(|message| message.topic == "changelog")
                .collect();
            key_entries.push(
                written
                    .iter()
                    .filter(|message| message.key.as_deref().is_some_and(|key| key.contains("/k/")))
                    .count(),
            );
            changelog.extend(written);
        }
        assert!(key_entries.iter().all(|entries| *entries <= 1), "{key_entries:?}");
        let restored = read_back(&changelog);
        assert!(restored.fallbacks.is_empty(), "{:?}", restored.fallbacks);
        let checkpoint = restored.checkpoints[&id()].clone();
        assert!(checkpoint.incremental);
        assert_eq!(checkpoint.next_offset, records.len() as i64);
        let whole = owned(&writer).state.engine.snapshot();
        assert_eq!(
            serde_json::to_string(&checkpoint.snapshot).unwrap(),
            serde_json::to_string(&whole).unwrap(),
            "the same state as a whole checkpoint"
        );

        // A restart from it writes nothing for keys that did not change.
        let mut restarted = stage().with_changelog_format(ChangelogFormat::Incremental);
        restarted.assigned(vec![AssignedPartition {
            id: id(),
            checkpoint: Some(checkpoint),
            ledger: restored.ledgers[&id()].clone(),
            committed: Some(records.len() as i64),
        }]);
        let mut outbox = Outbox::default();
        restarted.group_generation(Some(2));
        restarted
            .partitions
            .get_mut(&id())
            .unwrap()
            .state
            .released_since_checkpoint = true;
        assert_eq!(restarted.checkpoint(true, &mut outbox).unwrap(), 1);
        assert!(
            outbox
                .messages
                .iter()
                .all(|message| !message.key.as_deref().unwrap_or_default().contains("/k/")),
            "no key entry rewritten"
        );
        changelog.extend(outbox.messages);
        let again = read_back(&changelog);
        assert!(again.fallbacks.is_empty(), "{:?}", again.fallbacks);
        assert_eq!(again.checkpoints[&id()].group_generation, Some(2));
        assert_eq!(again.checkpoints[&id()].snapshot.keys.len(), whole.keys.len());
    }

    #[test]
    fn an_idle_partition_judges_its_held_events_only_when_idle_long_enough() {
        let records = records();
        let mut stage = stage();
        assign(&mut stage, Some(0), None);
        let mut outbox = Outbox::default();
        // Everything up to the travel and one call after it: the travel is
        // held, waiting for the input's time to pass it.
        stage.process(&records[..records.len() - 1], &mut outbox).unwrap();
        let alerts = |outbox: &Outbox| outbox.messages.iter().filter(|m| m.topic == "alerts").count();
        assert_eq!(alerts(&outbox), 0, "held for ordering");
        outbox.clear();
        let now = Instant::now();
        let idle = Duration::from_secs(30);
        assert_eq!(
            stage.release_idle_partitions(now, idle, &mut outbox).unwrap(),
            0,
            "not idle yet"
        );
        assert!(outbox.is_empty());
        assert_eq!(
            stage
                .release_idle_partitions(now + Duration::from_secs(31), idle, &mut outbox)
                .unwrap(),
            1
        );
        assert!(alerts(&outbox) > 0, "the travel is judged once the partition is idle");
        let mut again = Outbox::default();
        assert_eq!(
            stage
                .release_idle_partitions(now + Duration::from_secs(90), idle, &mut again)
                .unwrap(),
            0,
            "nothing left to let go"
        );
        assert_eq!(
            stage.checkpoint(true, &mut again).unwrap(),
            1,
            "the state moved without a new offset"
        );
    }

    #[test]
    fn a_far_future_event_is_dead_lettered_with_the_record_it_came_from() {
        let mut records = records();
        let other = event(T0 + DAY, "AKIAKEYEDSTAGE000002", ip("london", 1), "/v1/orders", 200);
        let far = event(4_070_908_800_000, KEY, ip("london", 1), "/v1/orders", 200);
        let at = records.len() / 2;
        for (shift, payload) in [serde_json::to_vec(&other).unwrap(), serde_json::to_vec(&far).unwrap()]
            .into_iter()
            .enumerate()
        {
            records.insert(
                at + shift,
                InputRecord {
                    topic: Arc::from("access"),
                    partition: 0,
                    offset: 0,
                    timestamp_ms: None,
                    payload: Some(payload),
                },
            );
        }
        for (offset, record) in records.iter_mut().enumerate() {
            record.offset = offset as i64;
        }
        let mut stage = stage();
        assign(&mut stage, Some(0), None);
        let mut outbox = Outbox::default();
        stage.process(&records, &mut outbox).unwrap();
        let letters: Vec<_> = outbox
            .messages
            .iter()
            .filter(|m| {
                m.headers
                    .iter()
                    .any(|(name, value)| *name == "reason" && value == b"future_event")
            })
            .collect();
        assert_eq!(letters.len(), 1, "{:?}", topics_of(&outbox));
        let offset = letters[0]
            .headers
            .iter()
            .find(|(name, _)| *name == "source_offset")
            .unwrap();
        assert_eq!(offset.1, (at + 1).to_string().into_bytes());
        assert!(!String::from_utf8_lossy(&letters[0].payload).contains(KEY));
    }

    #[test]
    fn checkpoints_carry_the_group_generation_of_the_member_that_wrote_them() {
        let records = records();
        let mut stage = stage();
        assign(&mut stage, None, None);
        let mut outbox = Outbox::default();
        stage.process(&records[..5], &mut outbox).unwrap();
        outbox.clear();
        stage.group_generation(Some(12));
        assert_eq!(stage.checkpoint(true, &mut outbox).unwrap(), 1);
        let manifest: crate::checkpoint::Manifest =
            serde_json::from_slice(&outbox.messages.last().unwrap().payload).unwrap();
        assert_eq!(manifest.group_generation, Some(12));
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
                incremental: false,
            }),
            ledger: KeyLedger::default(),
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
