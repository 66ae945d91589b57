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
//! calls can reach the view long after another's later ones. So after each
//! batch every keyed partition also writes how far its engine has judged
//! ([`crate::revoke::watermark::InputWatermark`], as for the revocation
//! gate) to every partition of the source topic, after its calls; the view
//! judges a call once every keyed partition has reported past it, in the
//! order of its fields. (Waiting `reorder_lateness` past the newest call,
//! as replay's one view does, would not do here: one partition of the
//! source topic sees only its networks' calls, and its newest need not move
//! on.) The alerts then depend on the calls only, not on how the
//! partitions' batches interleaved: the same as replay's. The watermark
//! also sweeps the view, so a spray's end is raised once every keyed
//! partition has passed its quiet gap, not only when another call reaches
//! this partition (which may be never, while its networks are quiet). A keyed partition
//! without events, or idle (`kafka.idle_release`), does not hold the view
//! back; keyed partitions repeat their watermark every
//! [`WATERMARK_REPEAT`](super::keyed) of wall clock, so a source partition
//! that moved or restarted hears from all of them again. While it has not,
//! the view holds the calls, at most
//! [`MAX_HELD_OBSERVATIONS`](crate::fleet::spray::MAX_HELD_OBSERVATIONS),
//! and past that judges the oldest (`keywatch_source_view_forced_total`).
//!
//! A call that arrives after the view has judged later ones (from a late
//! event, or forced) is judged at the view's clock: it counts for its key
//! while the spray window there still covers it and is dropped once it does
//! not, so a window never joins calls further apart than its length.

use std::sync::Arc;

use super::partitions::PartitionBook;
use super::stage::{Progress, Stage};
use crate::checkpoint::PartitionId;
use crate::counts::Counts;
use crate::fleet::SourceView;
use crate::fleet::spray::ObservationRecord;
use crate::model::Model;
use crate::revoke::watermark::{Upstream, WatermarkRecord};
use crate::sink::kafka::{KafkaSinkError, Outbox, OutputTopics};
use crate::source::kafka::group::{AssignedPartition, InputRecord};

/// The stage's name in logs and progress.
pub const STAGE: &str = "by_source";

/// One source partition's view and what it heard of the keyed partitions.
struct SourcePartition {
    view: SourceView,
    upstream: Upstream,
}

/// One source view per partition of the source topic.
pub struct SourceStage {
    model: Arc<Model>,
    topics: OutputTopics,
    partitions: PartitionBook<SourcePartition>,
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
            let view = SourceView::behind_upstream(&model.across_keys, &model.label());
            (
                None,
                SourcePartition {
                    view,
                    upstream: Upstream::default(),
                },
            )
        });
    }

    fn revoked(&mut self, partitions: &[PartitionId]) {
        self.partitions.revoke(partitions);
    }

    fn process(&mut self, records: &[InputRecord], outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        let mut counts = Counts::default();
        let mut newest_event_ms = i64::MIN;
        let mut late = 0;
        let mut forced = 0;
        self.outputs.clear();
        for record in records {
            let Some(owned) = self.partitions.claim(record) else {
                continue;
            };
            let payload = record.payload.as_deref().unwrap_or_default();
            let SourcePartition { view, upstream } = &mut owned.state;
            let (late_before, forced_before) = (view.late, view.forced);
            // Written by the keyed stage; a record that does not read back
            // is skipped (and logged), never fatal.
            if let Some(observation) = serde_json::from_slice::<ObservationRecord>(payload)
                .ok()
                .and_then(|record| record.observation())
            {
                newest_event_ms = newest_event_ms.max(observation.ts_ms);
                view.observe(observation, &mut self.outputs);
            } else if let Ok(WatermarkRecord { watermark }) = serde_json::from_slice::<WatermarkRecord>(payload) {
                upstream.note(&watermark);
                view.upstream_at(upstream.watermark(), &mut self.outputs);
            } else {
                tracing::warn!(partition = %record.partition_id(), offset = record.offset, "unreadable observation skipped")
            }
            late += view.late - late_before;
            forced += view.forced - forced_before;
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
        if forced > 0 {
            metrics::counter!("keywatch_source_view_forced_total").increment(forced);
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
