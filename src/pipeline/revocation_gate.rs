//! The revocation gate stage: the keyed stage writes every revocation
//! request its engines ask for (candidates) to the candidates topic, which
//! has one partition, so one member of the group `<group_id>-revocation-gate`
//! judges the candidates of every key of the deployment with one
//! [`RevocationGate`]: the caps hold over all keys, not per partition.
//!
//! Candidates are judged in the order of the candidates topic (the gate's
//! clock, the newest candidate event time, keeps the caps honest whatever
//! that order). Requests let through go to the revocations topic (enforce),
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
            let replayed = record.offset < owned.state.replay_below;
            let payload = record.payload.as_deref().unwrap_or_default();
            let Ok(request) = serde_json::from_slice::<RevocationRequest>(payload) else {
                tracing::warn!(partition = %record.partition_id(), offset = record.offset, "unreadable revocation candidate skipped");
                continue;
            };
            if let Some(ts_ms) = crate::event::parse_ts(&request.ts) {
                newest_event_ms = newest_event_ms.max(ts_ms);
            }
            self.scratch.clear();
            let verdict = {
                let owners = self.owners.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                self.gate.judge(&request, &owners, &mut self.scratch)
            };
            if replayed {
                // Judged and delivered before the restart: state only, but a
                // request still waiting for its acknowledgement is watched.
                if self.gate.is_pending(&request.idempotency_key) {
                    self.resends.sent(&request, now);
                }
                continue;
            }
            match verdict {
                Verdict::Pass(Route::Send) => {
                    self.push_request(&self.topics.outputs.revocations, &request, 1, outbox)?;
                    self.resends.sent(&request, now);
                    counts.revocations += 1;
                }
                Verdict::Pass(Route::Shadow) => {
                    self.push_request(&self.topics.shadow, &request, 1, outbox)?;
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
        }
        self.scratch.clear();
        self.resend_due(now, outbox)?;
        self.progress.add_counts(&counts);
        if newest_event_ms > i64::MIN {
            self.progress.saw_event_time(STAGE, newest_event_ms);
        }
        Ok(())
    }

    fn checkpoint(&mut self, _due: bool, _outbox: &mut Outbox) -> Result<usize, KafkaSinkError> {
        Ok(0)
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
}
