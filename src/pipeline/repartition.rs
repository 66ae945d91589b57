//! The repartition stage, for input topics not keyed by API key: decodes
//! each record and writes every event as canonical JSON to the repartition
//! topic keyed by the key's fingerprint, so that all events of a key meet in
//! one partition of the keyed stage. The raw key id stays in the payload,
//! never in the message key. Stateless: it resumes at committed offsets.

use std::sync::Arc;

use super::partitions::PartitionBook;
use super::stage::{Progress, Stage};
use crate::checkpoint::PartitionId;
use crate::counts::Counts;
use crate::decode::{Decoded, Decoder};
use crate::event::Fingerprinter;
use crate::sink::kafka::{KafkaSinkError, Outbox, OutputTopics};
use crate::source::kafka::group::{AssignedPartition, InputRecord};

/// The stage's name in logs and progress.
pub const STAGE: &str = "repartition";

/// Decode, then route by fingerprint.
pub struct RepartitionStage {
    decoder: Decoder,
    repartition_topic: String,
    topics: OutputTopics,
    /// Stateless: the book holds only offsets.
    partitions: PartitionBook<()>,
    progress: Arc<Progress>,
    /// The run's fingerprinter: the message key is the key's keyed
    /// fingerprint, so the internal topic's keys reveal nothing a plain
    /// hash of a guessed key id could confirm.
    fingerprinter: Fingerprinter,
}

impl RepartitionStage {
    pub fn new(
        decoder: Decoder,
        repartition_topic: String,
        topics: OutputTopics,
        progress: Arc<Progress>,
        fingerprinter: Fingerprinter,
    ) -> RepartitionStage {
        RepartitionStage {
            decoder,
            repartition_topic,
            topics,
            partitions: PartitionBook::new(STAGE, Arc::clone(&progress)),
            progress,
            fingerprinter,
        }
    }
}

impl Stage for RepartitionStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn assigned(&mut self, partitions: Vec<AssignedPartition>) {
        self.partitions.assign(partitions, |_| (None, ()));
    }

    fn revoked(&mut self, partitions: &[PartitionId]) {
        self.partitions.revoke(partitions);
    }

    fn process(&mut self, records: &[InputRecord], outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        let mut scratch = Vec::new();
        let mut rejections = Vec::new();
        let mut newest_event_ms = i64::MIN;
        // The events go to `repartitioned`: the engines count theirs.
        let mut counts = Counts {
            records: records.len() as u64,
            ..Counts::default()
        };
        let mut repartitioned = 0u64;
        for record in records {
            if self.partitions.claim(record).is_none() {
                continue;
            }
            let payload = record.payload.as_deref().unwrap_or_default();
            for item in self.decoder.decode_record(payload, &mut scratch) {
                match item {
                    Decoded::Event(event) => {
                        newest_event_ms = newest_event_ms.max(event.ts_ms);
                        let json = serde_json::to_vec(&event).map_err(|err| KafkaSinkError::Encode {
                            topic: self.repartition_topic.clone(),
                            detail: err.to_string(),
                        })?;
                        outbox.push_repartitioned(
                            &self.repartition_topic,
                            self.fingerprinter.fingerprint(&event.key_id),
                            json,
                            record.timestamp_ms,
                        );
                        repartitioned += 1;
                    }
                    Decoded::NoKey => counts.no_key += 1,
                    Decoded::Rejected(rejection) => {
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
        Progress::add(&self.progress.repartitioned, repartitioned);
        self.progress.end_batch(STAGE, &counts, newest_event_ms);
        Ok(())
    }

    fn offsets_to_commit(&self) -> Vec<(PartitionId, i64)> {
        self.partitions.offsets_to_commit(|()| true)
    }

    fn committed(&mut self, offsets: &[(PartitionId, i64)]) {
        self.partitions.committed(offsets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Format;

    fn stage() -> RepartitionStage {
        let topics = OutputTopics {
            alerts: "alerts".into(),
            revocations: "revocations".into(),
            digests: "digests".into(),
            dead_letter: "dlq".into(),
            changelog: "changelog".into(),
            changelog_partitions: 1,
            alert_output: Default::default(),
        };
        let mut stage = RepartitionStage::new(
            Decoder::new(Format::Auto, None, 4096),
            "repartition".into(),
            topics,
            Arc::new(Progress::default()),
            Fingerprinter::keyed(b"repartition-test-secret-0123456789", "test").unwrap(),
        );
        stage.assigned(vec![AssignedPartition {
            id: PartitionId::new("raw", 0),
            checkpoint: None,
            ledger: Default::default(),
            committed: None,
        }]);
        stage
    }

    fn record(offset: i64, payload: &str) -> InputRecord {
        InputRecord {
            topic: Arc::from("raw"),
            partition: 0,
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    #[test]
    fn routes_events_by_fingerprint_and_dead_letters_the_rest() {
        let mut stage = stage();
        let good = r#"{"ts":"2026-03-01T12:00:00Z","key_id":"AKIAIOSFODNN7EXAMPLE","ip":"192.0.2.1","method":"GET","endpoint":"/v1/a","status":200}"#;
        let mut outbox = Outbox::default();
        stage
            .process(&[record(0, good), record(1, "{not json"), record(2, good)], &mut outbox)
            .unwrap();
        assert_eq!(outbox.len(), 3);
        let routed = &outbox.messages[0];
        assert_eq!(routed.topic, "repartition");
        assert_eq!(
            routed.key.as_deref(),
            Some(stage.fingerprinter.fingerprint("AKIAIOSFODNN7EXAMPLE").as_str())
        );
        assert_ne!(
            routed.key.as_deref(),
            Some(crate::event::key_fingerprint("AKIAIOSFODNN7EXAMPLE").as_str()),
            "the message key is the keyed fingerprint, not a plain hash"
        );
        assert!(
            !routed.key.as_deref().unwrap().contains("AKIA"),
            "raw key never in the message key"
        );
        let event: crate::event::AccessEvent<'_> = serde_json::from_slice(&routed.payload).unwrap();
        assert_eq!(event.endpoint, "/v1/a");
        assert_eq!(outbox.messages[1].topic, "dlq");
        assert_eq!(stage.offsets_to_commit(), vec![(PartitionId::new("raw", 0), 3)]);
        stage.committed(&[(PartitionId::new("raw", 0), 3)]);
        assert!(stage.offsets_to_commit().is_empty());
    }
}
