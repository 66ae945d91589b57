//! The source stage: the view across keys in Kafka. The keyed stage writes
//! each call worth its attention (from a network unfamiliar to its key and
//! to the organisation, or refused on a key not learned yet) to the source
//! topic, keyed by source
//! network, so every call of one network reaches one partition here, from
//! whichever key partition it came. One [`SourceView`] per assigned
//! partition judges them in event-time order, as file replay does in one
//! process, and its `source_spray` alerts go to the alerts topic.
//!
//! The view's state is not checkpointed: it spans minutes of event time,
//! and a restart starts it empty at the committed offset, so a spray cut
//! by a restart may be raised late or as a second incident.
//!
//! Key partitions progress at their own speed (one catching up, one held
//! by a member that died until its session times out), so one partition's
//! calls can reach the view long after another's later ones. A call more
//! than `reorder_lateness` behind the view's clock is judged at that clock:
//! it counts for its key while the spray window there still covers it and
//! is dropped once it does not. A spray split that way across partitions
//! may be raised later or missed; a window never joins calls further apart
//! than its length, so no spray is made up of keys that were never used
//! together.

use std::sync::Arc;

use super::partitions::PartitionBook;
use super::stage::{Progress, Stage};
use crate::checkpoint::PartitionId;
use crate::counts::Counts;
use crate::fleet::SourceView;
use crate::fleet::spray::ObservationRecord;
use crate::model::Model;
use crate::sink::kafka::{KafkaSinkError, Outbox, OutputTopics};
use crate::source::kafka::group::{AssignedPartition, InputRecord};

/// The stage's name in logs and progress.
pub const STAGE: &str = "by_source";

/// One source view per partition of the source topic.
pub struct SourceStage {
    model: Arc<Model>,
    topics: OutputTopics,
    partitions: PartitionBook<SourceView>,
    progress: Arc<Progress>,
    outputs: Vec<crate::alert::Output>,
}

impl SourceStage {
    pub fn new(model: Arc<Model>, topics: OutputTopics, progress: Arc<Progress>) -> SourceStage {
        SourceStage {
            model,
            topics,
            partitions: PartitionBook::new(STAGE, Arc::clone(&progress)),
            progress,
            outputs: Vec::new(),
        }
    }
}

impl Stage for SourceStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn assigned(&mut self, partitions: Vec<AssignedPartition>) {
        let model = Arc::clone(&self.model);
        self.partitions.assign(partitions, |_| {
            (None, SourceView::new(&model.across_keys, &model.label()))
        });
    }

    fn revoked(&mut self, partitions: &[PartitionId]) {
        self.partitions.revoke(partitions);
    }

    fn process(&mut self, records: &[InputRecord], outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        let mut counts = Counts::default();
        let mut newest_event_ms = i64::MIN;
        let mut late = 0;
        self.outputs.clear();
        for record in records {
            let Some(owned) = self.partitions.claim(record) else {
                continue;
            };
            let payload = record.payload.as_deref().unwrap_or_default();
            // Written by the keyed stage; a record that does not read back
            // is skipped (and logged), never fatal.
            match serde_json::from_slice::<ObservationRecord>(payload)
                .ok()
                .and_then(|record| record.observation())
            {
                Some(observation) => {
                    newest_event_ms = newest_event_ms.max(observation.ts_ms);
                    let late_before = owned.state.late;
                    owned.state.observe(observation, &mut self.outputs);
                    late += owned.state.late - late_before;
                }
                None => {
                    tracing::warn!(partition = %record.partition_id(), offset = record.offset, "unreadable observation skipped")
                }
            }
        }
        let mut result = Ok(());
        for output in &self.outputs {
            counts.count_output(output);
            if let Err(error) = outbox.push_output(&self.topics, output) {
                result = Err(error);
                break;
            }
        }
        self.outputs.clear();
        if late > 0 {
            metrics::counter!("keywatch_source_view_late_total").increment(late);
        }
        self.progress.end_batch(STAGE, &counts, newest_event_ms);
        result
    }

    fn offsets_to_commit(&self) -> Vec<(PartitionId, i64)> {
        self.partitions.offsets_to_commit(|_| true)
    }

    fn committed(&mut self, offsets: &[(PartitionId, i64)]) {
        self.partitions.committed(offsets);
    }
}
