//! The revocation gate stage: the keyed stage writes every revocation
//! request its engines ask for (candidates) to the candidates topic, which
//! has one partition, so one member of the group `<group_id>-revocation-gate`
//! judges the candidates of every key of the deployment with one
//! [`RevocationGate`]: the caps hold over all keys, not per partition.
//!
//! Candidates are judged in event-time order, as replay judges them: each
//! keyed partition writes its watermark to the candidates topic after its
//! candidates ([`crate::revoke::watermark`]), and the gate judges a
//! candidate once every keyed partition has reported past it, so which
//! candidate a cap lets through does not depend on how the partitions'
//! batches interleaved. Requests let through go to the revocations topic (enforce),
//! the shadow topic (shadow) or nowhere (off); held ones raise
//! `revocation_held` alerts on the alerts topic.
//!
//! The mode is the model's until a message on the control topic says
//! otherwise ([`super::control`]), from the next batch on; acknowledgements
//! come the same way. Unacknowledged requests are sent again, same bytes
//! and idempotency key, every `policy.ack_timeout` of wall clock, up to
//! `policy.max_attempts` sends.
//!
//! Restart: the gate's state is not checkpointed but rebuilt. The stage
//! reads the candidates topic from its first retained record and judges the
//! records below the group's committed offset again for state only (their
//! outputs went out before); the verdicts are the same because the gate is
//! deterministic over the same sequence. Requests sent before and still not
//! acknowledged (acks are read from the start of their topic too) are
//! watched again and re-sent after the timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::ControlFeed;
use super::partitions::PartitionBook;
use super::stage::{Progress, Stage};
use crate::alert::{Output, RevocationRequest};
use crate::checkpoint::PartitionId;
use crate::counts::Counts;
use crate::model::Model;
use crate::owners::SharedOwners;
use crate::revoke::resend::Resends;
use crate::revoke::watermark::{Upstream, WatermarkRecord};
use crate::revoke::{Mode, RevocationGate, Route, Verdict};
use crate::sink::kafka::{KafkaSinkError, Outbox, OutgoingMessage, OutputTopics};
use crate::source::kafka::group::{AssignedPartition, InputRecord};

/// The stage's name in logs and progress.
pub const STAGE: &str = "revocation_gate";

/// Where the gate's outputs go.
#[derive(Debug, Clone)]
pub struct GateTopics {
    pub outputs: OutputTopics,
    pub shadow: String,
}

/// Offsets below which records were judged and delivered before.
struct CandidatePartition {
    replay_below: i64,
}

/// The gate over all keys.
pub struct GateStage {
    gate: RevocationGate,
    model_mode: Mode,
    /// Owners known now, kept up to date from the owners topic.
    owners: SharedOwners,
    topics: GateTopics,
    partitions: PartitionBook<CandidatePartition>,
    feed: Arc<ControlFeed>,
    resends: Resends,
    ack_timeout: Duration,
    progress: Arc<Progress>,
    scratch: Vec<Output>,
    /// How far every keyed partition has judged.
    upstream: Upstream,
}

impl GateStage {
    pub fn new(model: &Model, topics: GateTopics, feed: Arc<ControlFeed>, progress: Arc<Progress>) -> GateStage {
        GateStage {
            gate: RevocationGate::new(&model.policy, &model.label()),
            model_mode: model.policy.effective_mode(),
            owners: SharedOwners::default(),
            topics,
            partitions: PartitionBook::new(STAGE, Arc::clone(&progress)),
            feed,
            resends: Resends::default(),
            ack_timeout: model.policy.ack_timeout,
            progress,
            scratch: Vec::new(),
            upstream: Upstream::default(),
        }
    }

    /// Owners for per-owner caps and `never_revoke` by owner or team.
    pub fn with_owners(mut self, owners: SharedOwners) -> GateStage {
        self.owners = owners;
        self
    }

    /// The gate, for its state and statuses.
    pub fn gate(&self) -> &RevocationGate {
        &self.gate
    }

    /// Applies what the control and acknowledgement topics brought.
    fn take_feed(&mut self) {
        let (mode, acks) = self.feed.take();
        let mode = mode.map_or(self.model_mode, |control| control.mode);
        if mode != self.gate.mode() {
            let source = if mode == self.model_mode {
                "model"
            } else {
                "control topic"
            };
            tracing::warn!(from = %self.gate.mode(), to = %mode, source, "revocation mode switched");
            metrics::counter!("keywatch_revocation_mode_switches_total", "to" => mode.as_str()).increment(1);
            self.gate.set_mode(mode);
        }
        for ack in acks {
            if self.gate.acknowledge(&ack.idempotency_key, &ack.status) && !self.gate.is_pending(&ack.idempotency_key) {
                self.resends.forget(&ack.idempotency_key);
            }
            metrics::counter!("keywatch_revocation_acks_total").increment(1);
        }
    }

    fn push_request(
        &self,
        topic: &str,
        request: &RevocationRequest,
        attempt: u32,
        outbox: &mut Outbox,
    ) -> Result<(), KafkaSinkError> {
        let payload = serde_json::to_vec(request).map_err(|error| KafkaSinkError::Encode {
            topic: topic.to_string(),
            detail: error.to_string(),
        })?;
        outbox.messages.push(OutgoingMessage {
            topic: topic.to_string(),
            partition: None,
            key: Some(request.key_fingerprint.clone()),
            payload,
            headers: vec![
                ("id", request.idempotency_key.as_bytes().to_vec()),
                ("attempt", attempt.to_string().into_bytes()),
            ],
            timestamp_ms: None,
            tombstone: false,
        });
        Ok(())
    }

    /// Judges one candidate and delivers the verdict; only the state moves
    /// when `replayed` (delivered before the restart).
    fn decide(
        &mut self,
        request: &RevocationRequest,
        replayed: bool,
        now: Instant,
        outbox: &mut Outbox,
        counts: &mut Counts,
    ) -> Result<(), KafkaSinkError> {
        self.scratch.clear();
        let verdict = {
            let owners = self.owners.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.gate.judge(request, &owners, &mut self.scratch)
        };
        if replayed {
            // Judged and delivered before the restart: state only, but a
            // request still waiting for its acknowledgement is watched.
            if self.gate.is_pending(&request.idempotency_key) {
                self.resends.sent(request, now);
            }
            return Ok(());
        }
        match verdict {
            Verdict::Pass(Route::Send) => {
                self.push_request(&self.topics.outputs.revocations, request, 1, outbox)?;
                self.resends.sent(request, now);
                counts.revocations += 1;
            }
            Verdict::Pass(Route::Shadow) => {
                self.push_request(&self.topics.shadow, request, 1, outbox)?;
                counts.revocations_shadow += 1;
            }
            Verdict::Pass(Route::Drop) => {
                tracing::warn!(idempotency_key = %request.idempotency_key, "revocation request dropped: mode is off");
                metrics::counter!("keywatch_revocations_dropped_total").increment(1);
            }
            Verdict::Held(reason) => {
                tracing::warn!(idempotency_key = %request.idempotency_key, reason = reason.kind(), "revocation request held back");
                metrics::counter!("keywatch_revocations_held_total", "reason" => reason.kind()).increment(1);
            }
            Verdict::Duplicate => {}
        }
        for output in &self.scratch {
            counts.count_output(output);
            outbox.push_output(&self.topics.outputs, output)?;
        }
        Ok(())
    }

    /// Sends again what waited `ack_timeout` for its acknowledgement.
    fn resend_due(&mut self, now: Instant, outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        for request in self.resends.due(now, self.ack_timeout) {
            let key = request.idempotency_key.clone();
            if !self.gate.is_pending(&key) {
                self.resends.forget(&key);
                continue;
            }
            if !self.gate.record_resend(&key) {
                tracing::error!(
                    idempotency_key = %key,
                    "revocation request unacknowledged after its last attempt: marked failed, revoke by hand"
                );
                metrics::counter!("keywatch_revocation_failed_total").increment(1);
                self.resends.forget(&key);
                continue;
            }
            let attempts = self
                .gate
                .state()
                .requests()
                .find(|(known, _)| *known == key)
                .map_or(0, |(_, state)| state.attempts);
            tracing::warn!(idempotency_key = %key, attempts, "revocation request unacknowledged: sending it again");
            metrics::counter!("keywatch_revocation_resends_total").increment(1);
            self.push_request(&self.topics.outputs.revocations, &request, attempts, outbox)?;
            self.resends.sent(&request, now);
        }
        Ok(())
    }
}

impl Stage for GateStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn assigned(&mut self, partitions: Vec<AssignedPartition>) {
        self.partitions.assign(partitions, |partition| {
            let replay_below = partition.committed.unwrap_or(i64::MIN);
            (None, CandidatePartition { replay_below })
        });
    }

    fn revoked(&mut self, partitions: &[PartitionId]) {
        self.partitions.revoke(partitions);
    }

    fn process(&mut self, records: &[InputRecord], outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        self.take_feed();
        let now = Instant::now();
        let mut counts = Counts::default();
        let mut newest_event_ms = i64::MIN;
        for record in records {
            let Some(owned) = self.partitions.claim(record) else {
                continue;
            };
            // What this record lets the gate judge was delivered before the
            // restart when the record itself was.
            let replayed = record.offset < owned.state.replay_below;
            let payload = record.payload.as_deref().unwrap_or_default();
            if let Ok(request) = serde_json::from_slice::<RevocationRequest>(payload) {
                if let Some(ts_ms) = crate::event::parse_ts(&request.ts) {
                    newest_event_ms = newest_event_ms.max(ts_ms);
                }
                if let Some(late) = self.gate.offer(request) {
                    metrics::counter!("keywatch_revocation_late_candidates_total").increment(1);
                    self.decide(&late, replayed, now, outbox, &mut counts)?;
                }
            } else if let Ok(WatermarkRecord { watermark }) = serde_json::from_slice::<WatermarkRecord>(payload) {
                self.upstream.note(&watermark);
            } else {
                tracing::warn!(partition = %record.partition_id(), offset = record.offset, "unreadable revocation candidate skipped");
                continue;
            }
            while let Some(request) = self.gate.take_ready(self.upstream.watermark()) {
                self.decide(&request, replayed, now, outbox, &mut counts)?;
            }
        }
        self.scratch.clear();
        self.resend_due(now, outbox)?;
        self.progress.end_batch(STAGE, &counts, newest_event_ms);
        Ok(())
    }

    fn offsets_to_commit(&self) -> Vec<(PartitionId, i64)> {
        self.partitions.offsets_to_commit(|_| true)
    }

    fn committed(&mut self, offsets: &[(PartitionId, i64)]) {
        self.partitions.committed(offsets);
    }

    fn idle(&mut self, outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        self.take_feed();
        self.resend_due(Instant::now(), outbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revoke::watermark::InputWatermark;
    use crate::revoke::{AckMessage, ControlMessage};

    fn topics() -> GateTopics {
        GateTopics {
            outputs: OutputTopics {
                alerts: "alerts".into(),
                revocations: "revocations".into(),
                digests: "digests".into(),
                dead_letter: "dlq".into(),
                changelog: "changelog".into(),
                changelog_partitions: 1,
                alert_output: Default::default(),
            },
            shadow: "shadow".into(),
        }
    }

    fn candidate(index: i64) -> Vec<u8> {
        let fingerprint = format!("kf_{index:032x}");
        let request = RevocationRequest {
            idempotency_key: crate::alert::stable_id("rv", &[&fingerprint]),
            key_fingerprint: fingerprint.clone(),
            key_hint: "****".into(),
            ts: crate::event::format_ts(1_700_000_000_000 + index * 60_000),
            severity: crate::alert::Severity::High,
            reason: "impossible_travel: test".into(),
            incident_id: crate::alert::stable_id("in", &[&fingerprint]),
            alert_ids: vec![crate::alert::stable_id("al", &[&fingerprint])],
            model: "m".into(),
            basis: None,
            detectors: Vec::new(),
            owner: None,
        };
        serde_json::to_vec(&request).unwrap()
    }

    fn record(offset: i64) -> InputRecord {
        InputRecord {
            topic: Arc::from("candidates"),
            partition: 0,
            offset,
            timestamp_ms: None,
            payload: Some(candidate(offset)),
        }
    }

    fn stage(mode: Mode, ack_timeout: Duration) -> (GateStage, Arc<ControlFeed>) {
        let mut model = Model::default_model();
        model.policy.mode = mode;
        model.policy.ack_timeout = ack_timeout;
        model.policy.max_requests.count = 100;
        model.policy.max_requests_per_owner.count = 100;
        let feed = Arc::new(ControlFeed::default());
        let mut stage = GateStage::new(&model, topics(), Arc::clone(&feed), Arc::new(Progress::default()));
        // One keyed partition, always far ahead: candidates are judged as
        // they come.
        stage.upstream.note(&InputWatermark {
            input: "in/0".into(),
            released_ms: Some(i64::MAX - 1),
            idle: false,
            inputs: 1,
        });
        stage.assigned(vec![AssignedPartition {
            id: PartitionId::new("candidates", 0),
            checkpoint: None,
            committed: None,
            ledger: Default::default(),
        }]);
        (stage, feed)
    }

    fn topics_of(outbox: &Outbox) -> Vec<&str> {
        outbox.messages.iter().map(|message| message.topic.as_str()).collect()
    }

    #[test]
    fn the_kill_switch_changes_routing_from_the_next_batch_without_a_restart() {
        let (mut stage, feed) = stage(Mode::Enforce, Duration::from_secs(300));
        let mut outbox = Outbox::default();
        stage.process(&[record(0)], &mut outbox).unwrap();
        assert_eq!(topics_of(&outbox), vec!["revocations"]);
        feed.push_control(ControlMessage {
            mode: Mode::Off,
            at: None,
            by: Some("oncall".into()),
        });
        outbox.clear();
        stage.process(&[record(1), record(2)], &mut outbox).unwrap();
        assert!(outbox.is_empty(), "off sends nothing: {:?}", topics_of(&outbox));
        feed.push_control(ControlMessage {
            mode: Mode::Shadow,
            at: None,
            by: None,
        });
        stage.process(&[record(3)], &mut outbox).unwrap();
        assert_eq!(topics_of(&outbox), vec!["shadow"]);
    }

    #[test]
    fn shadow_mode_sends_nothing_and_writes_the_same_request_to_the_shadow_topic() {
        let (mut stage, _) = stage(Mode::Shadow, Duration::from_secs(300));
        let mut outbox = Outbox::default();
        stage.process(&[record(0), record(1)], &mut outbox).unwrap();
        assert_eq!(topics_of(&outbox), vec!["shadow", "shadow"]);
        assert_eq!(
            outbox.messages[0].payload,
            candidate(0),
            "same format as a real request"
        );
    }

    #[test]
    fn an_unacknowledged_request_is_sent_again_with_the_same_idempotency_key_and_an_acked_one_is_not() {
        let (mut stage, feed) = stage(Mode::Enforce, Duration::from_millis(200));
        let mut outbox = Outbox::default();
        stage.process(&[record(0), record(1)], &mut outbox).unwrap();
        let first: Vec<(Vec<u8>, Vec<u8>)> = outbox
            .messages
            .iter()
            .filter(|message| {
                message
                    .headers
                    .iter()
                    .any(|(name, value)| *name == "attempt" && value == b"1")
            })
            .map(|message| (message.payload.clone(), message.headers[0].1.clone()))
            .collect();
        assert_eq!(first.len(), 2);
        let acked: RevocationRequest = serde_json::from_slice(&candidate(1)).unwrap();
        feed.push_ack(AckMessage {
            idempotency_key: acked.idempotency_key.clone(),
            status: "revoked".into(),
            detail: None,
        });
        outbox.clear();
        stage.idle(&mut outbox).unwrap();
        assert!(outbox.is_empty(), "nothing goes again before the timeout");
        std::thread::sleep(Duration::from_millis(250));
        stage.idle(&mut outbox).unwrap();
        assert_eq!(outbox.len(), 1, "only the unacknowledged request goes again");
        let again = &outbox.messages[0];
        assert_eq!(again.payload, candidate(0), "byte for byte");
        assert_eq!(again.headers[0].1, first[0].1, "same idempotency key");
        assert!(again.headers.contains(&("attempt", b"2".to_vec())));
        let statuses = crate::revoke::key_revocation_statuses(stage.gate().state());
        let acked_state = &statuses[&acked.key_fingerprint].1;
        assert_eq!(acked_state.status, crate::revoke::RequestStatus::Acked);
    }

    #[test]
    fn after_a_restart_records_below_the_committed_offset_rebuild_state_and_produce_nothing() {
        let (mut stage, _) = stage(Mode::Enforce, Duration::from_secs(300));
        stage.revoked(&[PartitionId::new("candidates", 0)]);
        stage.assigned(vec![AssignedPartition {
            id: PartitionId::new("candidates", 0),
            checkpoint: None,
            committed: Some(2),
            ledger: Default::default(),
        }]);
        let mut outbox = Outbox::default();
        stage.process(&[record(0), record(1), record(2)], &mut outbox).unwrap();
        assert_eq!(
            topics_of(&outbox),
            vec!["revocations"],
            "only the record at the committed offset"
        );
        assert_eq!(
            stage.gate().state().requests().count(),
            3,
            "the earlier ones are in the state"
        );
    }

    /// A candidate of key `index` at minute `minute`, on the candidates
    /// topic at `offset`.
    fn candidate_at(offset: i64, index: i64, minute: i64) -> InputRecord {
        let fingerprint = format!("kf_{index:032x}");
        let mut request: RevocationRequest = serde_json::from_slice(&candidate(index)).unwrap();
        request.ts = crate::event::format_ts(1_700_000_000_000 + minute * 60_000);
        request.key_fingerprint = fingerprint;
        InputRecord {
            payload: Some(serde_json::to_vec(&request).unwrap()),
            ..record(offset)
        }
    }

    fn watermark_at(offset: i64, input: &str, minute: i64) -> InputRecord {
        let record_of = WatermarkRecord {
            watermark: InputWatermark {
                input: input.into(),
                released_ms: Some(1_700_000_000_000 + minute * 60_000),
                idle: false,
                inputs: 2,
            },
        };
        InputRecord {
            payload: Some(serde_json::to_vec(&record_of).unwrap()),
            ..record(offset)
        }
    }

    /// What a gate with a global cap of 1 sends and holds for `records`.
    fn capped_outputs(records: &[InputRecord]) -> Vec<(String, Vec<u8>)> {
        let mut model = Model::default_model();
        model.policy.mode = Mode::Enforce;
        model.policy.max_requests.count = 1;
        let feed = Arc::new(ControlFeed::default());
        let mut stage = GateStage::new(&model, topics(), feed, Arc::new(Progress::default()));
        stage.assigned(vec![AssignedPartition {
            id: PartitionId::new("candidates", 0),
            checkpoint: None,
            committed: None,
            ledger: Default::default(),
        }]);
        let mut outbox = Outbox::default();
        stage.process(records, &mut outbox).unwrap();
        outbox
            .messages
            .iter()
            .map(|message| (message.topic.clone(), message.payload.clone()))
            .collect()
    }

    #[test]
    fn a_cap_lets_through_the_earliest_candidate_whatever_order_the_partitions_wrote_in() {
        // Keyed partition 0 has a candidate at minute 10, partition 1 one at
        // minute 5; the cap of one lets through the earlier, in both orders.
        let partition_0_first = [
            candidate_at(0, 1, 10),
            watermark_at(1, "in/0", 20),
            candidate_at(2, 2, 5),
            watermark_at(3, "in/1", 20),
        ];
        let partition_1_first = [
            candidate_at(0, 2, 5),
            watermark_at(1, "in/1", 20),
            candidate_at(2, 1, 10),
            watermark_at(3, "in/0", 20),
        ];
        let one = capped_outputs(&partition_0_first);
        let other = capped_outputs(&partition_1_first);
        assert_eq!(one, other, "same verdicts in the same order");
        let sent: Vec<RevocationRequest> = one
            .iter()
            .filter(|(topic, _)| topic == "revocations")
            .map(|(_, payload)| serde_json::from_slice(payload).unwrap())
            .collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].key_fingerprint,
            format!("kf_{:032x}", 2),
            "the earlier candidate"
        );
        assert!(
            one.iter().any(|(topic, _)| topic == "alerts"),
            "the other is held with an alert"
        );
    }

    #[test]
    fn nothing_is_judged_until_every_keyed_partition_has_reported_past_it() {
        let records = [candidate_at(0, 1, 10), watermark_at(1, "in/0", 20)];
        assert!(capped_outputs(&records).is_empty(), "partition 1 has not reported");
        let records = [
            candidate_at(0, 1, 10),
            watermark_at(1, "in/0", 20),
            watermark_at(2, "in/1", 10),
        ];
        assert!(
            capped_outputs(&records).is_empty(),
            "partition 1 is at minute 10, not past it"
        );
        let records = [
            candidate_at(0, 1, 10),
            watermark_at(1, "in/0", 20),
            watermark_at(2, "in/1", 11),
        ];
        assert_eq!(capped_outputs(&records).len(), 1);
    }
}
