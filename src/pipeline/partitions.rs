//! The partitions a stage owns: for each, the offsets every stage keeps (the
//! next record to process, the group's committed offset) beside the stage's
//! own state; assignments and commits are recorded in [`Progress`] as they
//! happen.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::stage::Progress;
use crate::checkpoint::PartitionId;
use crate::source::kafka::group::{AssignedPartition, InputRecord};

/// One owned partition.
pub struct OwnedPartition<S> {
    /// Offset of the next record to process; `None` until the first record
    /// when the partition came without a checkpoint.
    pub next_offset: Option<i64>,
    /// The group's committed next offset.
    pub committed_offset: Option<i64>,
    pub state: S,
}

impl<S> OwnedPartition<S> {
    /// Whether the record at `offset` was processed already: delivered
    /// twice, when a seek raced a fetch.
    pub fn already_processed(&self, offset: i64) -> bool {
        self.next_offset.is_some_and(|next| offset < next)
    }
}

/// The partitions of one stage, in partition order.
pub struct PartitionBook<S> {
    stage: &'static str,
    progress: Arc<Progress>,
    partitions: BTreeMap<PartitionId, OwnedPartition<S>>,
}

impl<S> PartitionBook<S> {
    /// An empty book; `stage` names the stage in [`Progress`].
    pub fn new(stage: &'static str, progress: Arc<Progress>) -> PartitionBook<S> {
        PartitionBook {
            stage,
            progress,
            partitions: BTreeMap::new(),
        }
    }

    /// Takes newly assigned partitions; `open` makes each one's first next
    /// offset and state.
    pub fn assign(
        &mut self,
        partitions: Vec<AssignedPartition>,
        mut open: impl FnMut(AssignedPartition) -> (Option<i64>, S),
    ) {
        let ids: Vec<PartitionId> = partitions.iter().map(|partition| partition.id.clone()).collect();
        let committed: Vec<(PartitionId, i64)> = partitions
            .iter()
            .filter_map(|partition| Some((partition.id.clone(), partition.committed?)))
            .collect();
        self.progress.record_commit(self.stage, &committed);
        for partition in partitions {
            let id = partition.id.clone();
            let committed_offset = partition.committed;
            let (next_offset, state) = open(partition);
            self.partitions.insert(
                id,
                OwnedPartition {
                    next_offset,
                    committed_offset,
                    state,
                },
            );
        }
        self.progress.record_assignment(self.stage, &ids, true);
    }

    /// Drops revoked partitions and their state.
    pub fn revoke(&mut self, partitions: &[PartitionId]) {
        for id in partitions {
            self.partitions.remove(id);
        }
        self.progress.record_assignment(self.stage, partitions, false);
    }

    pub fn get_mut(&mut self, id: &PartitionId) -> Option<&mut OwnedPartition<S>> {
        self.partitions.get_mut(id)
    }

    /// The partition of a record to process, its next offset moved past the
    /// record; `None` for a record of a partition not owned (any more) or
    /// one processed already.
    pub fn claim(&mut self, record: &InputRecord) -> Option<&mut OwnedPartition<S>> {
        let owned = self.partitions.get_mut(&record.partition_id())?;
        if owned.already_processed(record.offset) {
            return None;
        }
        owned.next_offset = Some(record.offset + 1);
        Some(owned)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PartitionId, &OwnedPartition<S>)> {
        self.partitions.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&PartitionId, &mut OwnedPartition<S>)> {
        self.partitions.iter_mut()
    }

    /// Next offsets past the committed ones, of the partitions whose state
    /// `may_commit` allows.
    pub fn offsets_to_commit(&self, may_commit: impl Fn(&S) -> bool) -> Vec<(PartitionId, i64)> {
        self.partitions
            .iter()
            .filter_map(|(id, owned)| {
                let next_offset = owned.next_offset?;
                let moved = owned.committed_offset < Some(next_offset);
                (moved && may_commit(&owned.state)).then(|| (id.clone(), next_offset))
            })
            .collect()
    }

    /// The offsets were committed.
    pub fn committed(&mut self, offsets: &[(PartitionId, i64)]) {
        for (id, offset) in offsets {
            if let Some(owned) = self.partitions.get_mut(id) {
                owned.committed_offset = Some(*offset);
            }
        }
        self.progress.record_commit(self.stage, offsets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(partition: i32, committed: Option<i64>) -> AssignedPartition {
        AssignedPartition {
            id: PartitionId::new("access", partition),
            checkpoint: None,
            ledger: Default::default(),
            committed,
        }
    }

    #[test]
    fn commits_what_moved_and_forgets_what_was_revoked() {
        let progress = Arc::new(Progress::default());
        let mut book: PartitionBook<bool> = PartitionBook::new("keyed", Arc::clone(&progress));
        book.assign(vec![assigned(0, Some(5)), assigned(1, None)], |partition| {
            (partition.committed, partition.id.partition == 0)
        });
        let p0 = PartitionId::new("access", 0);
        let p1 = PartitionId::new("access", 1);
        assert_eq!(progress.committed_offset("keyed", &p0), Some(5));
        assert!(book.offsets_to_commit(|_| true).is_empty(), "nothing moved yet");
        for (_, owned) in book.iter_mut() {
            owned.next_offset = Some(7);
        }
        assert!(book.get_mut(&p0).is_some_and(|owned| owned.already_processed(6)));
        assert_eq!(book.offsets_to_commit(|ready| *ready), vec![(p0.clone(), 7)]);
        assert_eq!(book.offsets_to_commit(|_| true).len(), 2);
        book.committed(&[(p0.clone(), 7)]);
        assert_eq!(book.offsets_to_commit(|_| true), vec![(p1.clone(), 7)]);
        book.revoke(std::slice::from_ref(&p1));
        assert!(book.offsets_to_commit(|_| true).is_empty());
        assert_eq!(progress.snapshot().assigned["keyed"], vec!["access/0".to_string()]);
    }
}
