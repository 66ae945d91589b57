//! Micro-batches of input records, closed by size (records or bytes) or by
//! age, whichever comes first, so latency stays bounded when input is slow,
//! overhead stays low when it is fast, and memory stays bounded when
//! records are large.

use std::time::Duration;

use tokio::time::Instant;

use crate::source::kafka::group::InputRecord;

/// Records waiting to be processed together.
#[derive(Debug)]
pub struct MicroBatch {
    records: Vec<InputRecord>,
    max_records: usize,
    /// Payload bytes at which the batch closes, whatever its record count.
    max_bytes: usize,
    bytes: usize,
    max_wait: Duration,
    deadline: Option<Instant>,
}

impl MicroBatch {
    pub fn new(max_records: usize, max_wait: Duration) -> MicroBatch {
        MicroBatch {
            records: Vec::with_capacity(max_records.clamp(1, 1 << 16)),
            max_records: max_records.max(1),
            max_bytes: usize::MAX,
            bytes: 0,
            max_wait,
            deadline: None,
        }
    }

    /// Closes the batch once its payloads hold `max_bytes` bytes.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> MicroBatch {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Adds a record; returns true when the batch is full and must be
    /// processed now. `now` is read only for a batch's first record, the
    /// only one whose arrival sets the deadline.
    pub fn push(&mut self, record: InputRecord, now: impl FnOnce() -> Instant) -> bool {
        if self.records.is_empty() {
            self.deadline = Some(now() + self.max_wait);
        }
        self.bytes = self.bytes.saturating_add(record.payload.as_ref().map_or(0, Vec::len));
        self.records.push(record);
        self.records.len() >= self.max_records || self.bytes >= self.max_bytes
    }

    /// When the oldest record has waited long enough; `None` when empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes the records out, leaving the batch empty and its clock stopped.
    pub fn take(&mut self) -> Vec<InputRecord> {
        self.deadline = None;
        self.bytes = 0;
        std::mem::replace(
            &mut self.records,
            Vec::with_capacity(self.max_records.clamp(1, 1 << 16)),
        )
    }

    /// Drops the records of partitions that are no longer ours.
    pub fn retain(&mut self, mut keep: impl FnMut(&InputRecord) -> bool) {
        self.records.retain(|record| keep(record));
        self.bytes = self
            .records
            .iter()
            .map(|record| record.payload.as_ref().map_or(0, Vec::len))
            .sum();
        if self.records.is_empty() {
            self.deadline = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn record(partition: i32, offset: i64) -> InputRecord {
        InputRecord {
            topic: Arc::from("access"),
            partition,
            offset,
            timestamp_ms: None,
            payload: Some(b"{}".to_vec()),
        }
    }

    #[test]
    fn closes_on_size() {
        let mut batch = MicroBatch::new(3, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!batch.push(record(0, 0), || now));
        assert!(!batch.push(record(0, 1), || now));
        assert!(batch.push(record(1, 0), || now), "third record fills it");
        let records = batch.take();
        assert_eq!(records.len(), 3);
        assert!(batch.records.is_empty() && batch.deadline().is_none());
    }

    #[test]
    fn closes_on_bytes_before_the_record_count() {
        let mut batch = MicroBatch::new(1000, Duration::from_secs(60)).with_max_bytes(10);
        let now = Instant::now();
        let sized = |offset: i64, bytes: usize| InputRecord {
            payload: Some(vec![b'x'; bytes]),
            ..record(0, offset)
        };
        assert!(!batch.push(sized(0, 4), || now));
        assert!(!batch.push(sized(1, 5), || now));
        assert!(batch.push(sized(2, 1), || now), "10 bytes fill it");
        assert_eq!(batch.take().len(), 3);
        assert!(!batch.push(sized(3, 9), || now), "the count restarts after take");
        batch.retain(|_| false);
        assert!(batch.push(sized(4, 10), || now), "retain recounts");
    }

    #[test]
    fn deadline_starts_with_the_first_record() {
        let mut batch = MicroBatch::new(100, Duration::from_millis(200));
        assert_eq!(batch.deadline(), None);
        let first = Instant::now();
        batch.push(record(0, 0), || first);
        batch.push(record(0, 1), || first + Duration::from_millis(150));
        assert_eq!(
            batch.deadline(),
            Some(first + Duration::from_millis(200)),
            "age of the oldest record"
        );
        batch.take();
        let later = first + Duration::from_secs(5);
        batch.push(record(0, 2), || later);
        assert_eq!(batch.deadline(), Some(later + Duration::from_millis(200)));
    }

    #[test]
    fn retain_drops_revoked_partitions() {
        let mut batch = MicroBatch::new(10, Duration::from_secs(1));
        let now = Instant::now();
        batch.push(record(0, 0), || now);
        batch.push(record(1, 0), || now);
        batch.retain(|record| record.partition != 1);
        assert_eq!(batch.records.len(), 1);
        batch.retain(|_| false);
        assert_eq!(batch.deadline(), None, "an empty batch has no deadline");
    }
}
