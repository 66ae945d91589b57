//! The repartition stage, for input topics not keyed by API key: decodes
//! each record and writes every event as canonical JSON to the repartition
//! topic keyed by the key's fingerprint, so that all events of a key meet in
//! one partition of the keyed stage. The raw key id stays in the payload,
//! never in the message key. Stateless: it resumes at committed offsets.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::decode::{DecodeError, Decoder};
use crate::event::key_fingerprint;
use crate::sink::kafka::{DeadLetter, KafkaSinkError, Outbox, OutputTopics};
use crate::source::kafka::{AssignedPartition, InputRecord};
use crate::state::PartitionId;

use super::stage::{Progress, Stage};

/// Decode, then route by fingerprint.
pub struct RepartitionStage {
    decoder: Decoder,
    repartition_topic: String,
    topics: OutputTopics,
    /// Next offset to process and last committed offset, per owned partition.
    partitions: BTreeMap<PartitionId, (Option<i64>, Option<i64>)>,
    progress: Arc<Progress>,
}

impl RepartitionStage {
    pub fn new(
        decoder: Decoder,
        repartition_topic: String,
        topics: OutputTopics,
        progress: Arc<Progress>,
    ) -> RepartitionStage {
        RepartitionStage {
            decoder,
            repartition_topic,
            topics,
            partitions: BTreeMap::new(),
            progress,
        }
    }
}

impl Stage for RepartitionStage {
    fn name(&self) -> &'static str {
        "repartition"
    }

    fn assigned(&mut self, partitions: Vec<AssignedPartition>) {
        let ids: Vec<PartitionId> = partitions.iter().map(|partition| partition.id.clone()).collect();
        let committed: Vec<(PartitionId, i64)> = partitions
            .iter()
            .filter_map(|partition| Some((partition.id.clone(), partition.committed?)))
            .collect();
        self.progress.record_commit(self.name(), &committed);
        for partition in partitions {
            self.partitions.insert(partition.id, (None, partition.committed));
        }
        self.progress.record_assignment(self.name(), &ids, true);
    }

    fn revoked(&mut self, partitions: &[PartitionId]) {
        for id in partitions {
            self.partitions.remove(id);
        }
        self.progress.record_assignment(self.name(), partitions, false);
    }

    fn owns(&self, topic: &str, partition: i32) -> bool {
        self.partitions
            .keys()
            .any(|id| id.partition == partition && id.topic == topic)
    }

    fn process(&mut self, records: &[InputRecord], outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        let mut decoded = Vec::new();
        let (mut events, mut dead_letters, mut no_key) = (0u64, 0u64, 0u64);
        for record in records {
            let id = record.partition_id();
            let Some((next_offset, _)) = self.partitions.get_mut(&id) else {
                continue;
            };
            if next_offset.is_some_and(|next| record.offset < next) {
                continue;
            }
            *next_offset = Some(record.offset + 1);
            let payload = record.payload.as_deref().unwrap_or_default();
            decoded.clear();
            self.decoder.decode(payload, &mut decoded);
            let multi_event = decoded.len() > 1;
            for (index, result) in decoded.drain(..).enumerate() {
                match result {
                    Ok(event) => {
                        let json = serde_json::to_vec(&event).map_err(|err| KafkaSinkError::Encode {
                            topic: self.repartition_topic.clone(),
                            detail: err.to_string(),
                        })?;
                        outbox.push_repartitioned(
                            &self.repartition_topic,
                            key_fingerprint(&event.key_id),
                            json,
                            record.timestamp_ms,
                        );
                        events += 1;
                    }
                    Err(DecodeError::NoKey) => no_key += 1,
                    Err(error) => {
                        dead_letters += 1;
                        outbox.push_dead_letter(
                            &self.topics,
                            &DeadLetter {
                                record: payload,
                                error: &error,
                                source: &id,
                                offset: record.offset,
                                index: multi_event.then_some(index as u32),
                            },
                        );
                    }
                }
            }
        }
        Progress::add(&self.progress.records, records.len() as u64);
        Progress::add(&self.progress.repartitioned, events);
        Progress::add(&self.progress.dead_letters, dead_letters);
        Progress::add(&self.progress.no_key, no_key);
        Ok(())
    }

    fn checkpoint(&mut self, _due: bool, _outbox: &mut Outbox) -> Result<usize, KafkaSinkError> {
        Ok(0)
    }

    fn offsets_to_commit(&self) -> Vec<(PartitionId, i64)> {
        self.partitions
            .iter()
            .filter_map(|(id, (next_offset, committed))| {
                let next_offset = (*next_offset)?;
                (*committed < Some(next_offset)).then(|| (id.clone(), next_offset))
            })
            .collect()
    }

    fn committed(&mut self, offsets: &[(PartitionId, i64)]) {
        for (id, offset) in offsets {
            if let Some((_, committed)) = self.partitions.get_mut(id) {
                *committed = Some(*offset);
            }
        }
        self.progress.record_commit(self.name(), offsets);
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
            dead_letter: "dlq".into(),
            changelog: "changelog".into(),
            changelog_partitions: 1,
        };
        let mut stage = RepartitionStage::new(
            Decoder::new(Format::Auto, None, 4096),
            "repartition".into(),
            topics,
            Arc::new(Progress::default()),
        );
        stage.assigned(vec![AssignedPartition {
            id: PartitionId::new("raw", 0),
            checkpoint: None,
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
            Some(key_fingerprint("AKIAIOSFODNN7EXAMPLE").as_str())
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
