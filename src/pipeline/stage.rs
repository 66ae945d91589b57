//! What the Kafka driver needs from a processing stage. A stage is
//! synchronous and does no I/O: it turns records into messages in an
//! [`Outbox`] and keeps the offsets it has covered; the driver sends,
//! checkpoints and commits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checkpoint::PartitionId;
use crate::counts::Counts;
use crate::sink::kafka::{KafkaSinkError, Outbox};
use crate::source::kafka::group::{AssignedPartition, GroupStatus, InputRecord};

/// A processing stage driven by [`super::driver`].
pub trait Stage: Send {
    /// For logs and progress.
    fn name(&self) -> &'static str;
    /// Partitions handed to this instance, with their checkpoints.
    fn assigned(&mut self, partitions: Vec<AssignedPartition>);
    /// Partitions taken away: their state goes (it is in the changelog).
    fn revoked(&mut self, partitions: &[PartitionId]);
    /// Processes records in order, appending what must be produced.
    fn process(&mut self, records: &[InputRecord], outbox: &mut Outbox) -> Result<(), KafkaSinkError>;
    /// Appends checkpoints: of every partition that moved since its last
    /// one when `due`, otherwise only of partitions that never had one.
    /// Stages without state in a changelog write none.
    fn checkpoint(&mut self, _due: bool, _outbox: &mut Outbox) -> Result<usize, KafkaSinkError> {
        Ok(0)
    }
    /// Next offsets that may be committed now that the outbox was delivered.
    fn offsets_to_commit(&self) -> Vec<(PartitionId, i64)>;
    /// The offsets were committed.
    fn committed(&mut self, offsets: &[(PartitionId, i64)]);
    /// The consumer group generation of this member now, told before each
    /// checkpoint, for stages whose checkpoints record it.
    fn group_generation(&mut self, _generation: Option<i32>) {}
    /// Lets go of events held for ordering by partitions that have had no
    /// record for `idle_after` of wall-clock time at `now`, appending what
    /// they produce; returns how many partitions did. Only stages that hold
    /// events do anything.
    fn release_idle(
        &mut self,
        _now: Instant,
        _idle_after: Duration,
        _outbox: &mut Outbox,
    ) -> Result<usize, KafkaSinkError> {
        Ok(0)
    }
    /// Called about once a second while the stage runs, records or not:
    /// work driven by the wall clock (re-sends of unacknowledged revocation
    /// requests). What it appends is delivered like a batch's outputs.
    fn idle(&mut self, _outbox: &mut Outbox) -> Result<(), KafkaSinkError> {
        Ok(())
    }
}

/// Counters a caller can watch while the pipeline runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Over both stages; `counts.events` are the events given to the
    /// engines, the repartition stage's are in `repartitioned`.
    counts: Mutex<Counts>,
    pub repartitioned: AtomicU64,
    pub batches: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Keys with state in the engines of the partitions owned now (a gauge).
    pub keys: AtomicU64,
    committed: Mutex<BTreeMap<String, BTreeMap<PartitionId, i64>>>,
    assigned: Mutex<BTreeMap<String, BTreeSet<PartitionId>>>,
    /// Alerts the engines held back (already raised in their incident).
    pub suppressed: AtomicU64,
    /// Events that arrived later than their key's newest event.
    pub late_events: AtomicU64,
    /// Bytes written to the changelog.
    pub checkpoint_bytes: AtomicU64,
    /// Liveness and readiness of each stage, for `/healthz` and `/readyz`.
    health: Mutex<BTreeMap<&'static str, StageHealth>>,
    /// What each stage's consumer thread measures (lag, rejoins).
    groups: Mutex<BTreeMap<&'static str, Arc<GroupStatus>>>,
}

/// What `/healthz` and `/readyz` need to know of one stage.
#[derive(Debug, Clone, Copy)]
struct StageHealth {
    /// The last turn of the stage's loop.
    last_tick: Instant,
    /// Whether the stage holds its assignment with state restored (an empty
    /// assignment counts); false before joining and during a rebalance.
    ready: bool,
    /// Newest event time processed, in epoch milliseconds.
    newest_event_ms: Option<i64>,
}

/// A copy of [`Progress`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    pub counts: Counts,
    pub repartitioned: u64,
    pub batches: u64,
    pub checkpoints: u64,
    pub keys: u64,
    /// Committed next offsets by stage (`keyed`, `repartition`) and partition.
    pub committed: BTreeMap<String, BTreeMap<String, i64>>,
    /// Partitions this instance owns now, by stage.
    pub assigned: BTreeMap<String, Vec<String>>,
    pub suppressed: u64,
    pub late_events: u64,
    pub checkpoint_bytes: u64,
}

impl Progress {
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    /// Adds what a stage counted in one batch.
    pub(crate) fn add_counts(&self, batch: &Counts) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.add(batch);
        }
    }

    /// Ends a stage's batch: adds what it counted and, when it saw any
    /// event time (`i64::MIN` when none), the newest.
    pub(crate) fn end_batch(&self, stage: &'static str, batch: &Counts, newest_event_ms: i64) {
        self.add_counts(batch);
        if newest_event_ms > i64::MIN {
            self.saw_event_time(stage, newest_event_ms);
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.counts.lock().map(|counts| counts.clone()).unwrap_or_default()
    }

    pub(crate) fn record_commit(&self, stage: &str, offsets: &[(PartitionId, i64)]) {
        if let Ok(mut committed) = self.committed.lock() {
            let stage = committed.entry(stage.to_string()).or_default();
            for (partition, offset) in offsets {
                stage.insert(partition.clone(), *offset);
            }
        }
    }

    pub(crate) fn record_assignment(&self, stage: &str, partitions: &[PartitionId], owned: bool) {
        if let Ok(mut assigned) = self.assigned.lock() {
            let stage = assigned.entry(stage.to_string()).or_default();
            for partition in partitions {
                if owned {
                    stage.insert(partition.clone());
                } else {
                    stage.remove(partition);
                }
            }
        }
    }

    /// The stage's loop turned: it is alive.
    pub(crate) fn tick(&self, stage: &'static str) {
        self.update_health(stage, |health| health.last_tick = Instant::now());
    }

    /// The stage holds a restored assignment (`true`) or is rebalancing.
    pub(crate) fn set_ready(&self, stage: &'static str, ready: bool) {
        self.update_health(stage, |health| health.ready = ready);
    }

    /// The newest event time a stage has processed, in epoch milliseconds.
    pub(crate) fn saw_event_time(&self, stage: &'static str, ts_ms: i64) {
        self.update_health(stage, |health| {
            health.newest_event_ms = Some(health.newest_event_ms.map_or(ts_ms, |newest| newest.max(ts_ms)));
        });
    }

    fn update_health(&self, stage: &'static str, change: impl FnOnce(&mut StageHealth)) {
        if let Ok(mut health) = self.health.lock() {
            let entry = health.entry(stage).or_insert(StageHealth {
                last_tick: Instant::now(),
                ready: false,
                newest_event_ms: None,
            });
            change(entry);
        }
    }

    /// Stages whose loop has not turned within `stale_after`; empty when
    /// all are alive. A stage that never registered is not judged.
    pub fn stalled_stages(&self, stale_after: Duration) -> Vec<&'static str> {
        let Ok(health) = self.health.lock() else {
            return vec!["progress"];
        };
        health
            .iter()
            .filter(|(_, health)| health.last_tick.elapsed() > stale_after)
            .map(|(stage, _)| *stage)
            .collect()
    }

    /// Stages not ready, out of `expected`: those that have not joined their
    /// group, or are rebalancing.
    pub fn unready_stages(&self, expected: &[&'static str]) -> Vec<&'static str> {
        let Ok(health) = self.health.lock() else {
            return expected.to_vec();
        };
        expected
            .iter()
            .filter(|stage| !health.get(*stage).is_some_and(|health| health.ready))
            .copied()
            .collect()
    }

    /// Newest event time per stage, in epoch milliseconds.
    pub fn newest_event_times(&self) -> BTreeMap<&'static str, i64> {
        self.health
            .lock()
            .map(|health| {
                health
                    .iter()
                    .filter_map(|(stage, health)| Some((*stage, health.newest_event_ms?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Registers what a stage's consumer thread measures.
    pub(crate) fn watch_group(&self, stage: &'static str, status: Arc<GroupStatus>) {
        if let Ok(mut groups) = self.groups.lock() {
            groups.insert(stage, status);
        }
    }

    /// Each stage's group status.
    pub fn groups(&self) -> Vec<(&'static str, Arc<GroupStatus>)> {
        self.groups
            .lock()
            .map(|groups| {
                groups
                    .iter()
                    .map(|(stage, status)| (*stage, Arc::clone(status)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Committed next offset of a partition of a stage, if any.
    pub fn committed_offset(&self, stage: &str, partition: &PartitionId) -> Option<i64> {
        self.committed.lock().ok()?.get(stage)?.get(partition).copied()
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let committed = self
            .committed
            .lock()
            .map(|committed| {
                committed
                    .iter()
                    .map(|(stage, offsets)| {
                        let offsets = offsets.iter().map(|(id, offset)| (id.to_string(), *offset)).collect();
                        (stage.clone(), offsets)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let assigned = self
            .assigned
            .lock()
            .map(|assigned| {
                assigned
                    .iter()
                    .map(|(stage, partitions)| (stage.clone(), partitions.iter().map(ToString::to_string).collect()))
                    .collect()
            })
            .unwrap_or_default();
        ProgressSnapshot {
            counts: self.counts(),
            repartitioned: load(&self.repartitioned),
            batches: load(&self.batches),
            checkpoints: load(&self.checkpoints),
            keys: load(&self.keys),
            committed,
            assigned,
            suppressed: load(&self.suppressed),
            late_events: load(&self.late_events),
            checkpoint_bytes: load(&self.checkpoint_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_tracks_commits_and_assignment_by_stage() {
        let progress = Progress::default();
        let p0 = PartitionId::new("access", 0);
        let p1 = PartitionId::new("access", 1);
        progress.record_assignment("keyed", &[p0.clone(), p1.clone()], true);
        progress.record_commit("keyed", &[(p0.clone(), 10)]);
        progress.record_commit("keyed", &[(p0.clone(), 12), (p1.clone(), 3)]);
        progress.record_assignment("keyed", std::slice::from_ref(&p1), false);
        progress.add_counts(&Counts {
            alerts: 2,
            ..Counts::default()
        });
        assert_eq!(progress.committed_offset("keyed", &p0), Some(12));
        assert_eq!(progress.committed_offset("repartition", &p0), None);
        let snapshot = progress.snapshot();
        assert_eq!(snapshot.counts.alerts, 2);
        assert_eq!(snapshot.assigned["keyed"], vec!["access/0".to_string()]);
        assert_eq!(snapshot.committed["keyed"]["access/1"], 3);
    }

    #[test]
    fn health_follows_ticks_and_readiness_by_stage() {
        let progress = Progress::default();
        assert_eq!(
            progress.unready_stages(&["keyed", "by_source"]),
            vec!["keyed", "by_source"]
        );
        progress.tick("keyed");
        progress.set_ready("keyed", true);
        progress.set_ready("by_source", true);
        assert!(progress.unready_stages(&["keyed", "by_source"]).is_empty());
        progress.set_ready("by_source", false);
        assert_eq!(progress.unready_stages(&["keyed", "by_source"]), vec!["by_source"]);
        assert!(progress.stalled_stages(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(progress.stalled_stages(Duration::from_millis(5)).len(), 2);
        progress.saw_event_time("keyed", 5_000);
        progress.saw_event_time("keyed", 3_000);
        assert_eq!(
            progress.newest_event_times()["keyed"],
            5_000,
            "the newest, not the last"
        );
    }
}
