//! Event time of one input: the clock (newest accepted event time), the
//! reorder buffer that puts events within `max_out_of_order` of it into
//! event-time order before they are judged, and the pen where events too far
//! ahead of it wait for confirmation (see [`crate::model::TimeModel`]).
//!
//! Release order is decided by content alone: event time, then the key's
//! fingerprint bits, address, status, bytes, and a fixed hash of method,
//! endpoint template and client family. Interned ids depend on arrival
//! order, so none of them takes part. Any arrangement of the same events
//! within the bound leaves in the same order.
//!
//! Rows are compact and owned: text is interned here once per distinct
//! string ([`HeldText`]), so holding an event allocates nothing once its
//! strings have been seen.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};

/// Strings of held rows interned to ids local to the buffer, each with a
/// content hash (for ordering) and the engine's id once the engine has
/// interned it (`u32::MAX` before), so releasing costs no string lookup.
#[derive(Default)]
pub(crate) struct HeldText {
    index: FxHashMap<Box<str>, u32>,
    pub(crate) names: Vec<Box<str>>,
    hashes: Vec<u64>,
    pub(crate) engine_ids: Vec<u32>,
}

impl HeldText {
    pub(crate) fn intern(&mut self, text: &str) -> u32 {
        if let Some(id) = self.index.get(text) {
            return *id;
        }
        let id = self.names.len() as u32;
        let mut hasher = FxHasher::default();
        text.hash(&mut hasher);
        self.hashes.push(hasher.finish());
        self.names.push(text.into());
        self.engine_ids.push(u32::MAX);
        self.index.insert(text.into(), id);
        id
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    fn hash_of(&self, id: u32) -> u64 {
        self.hashes[id as usize]
    }

    /// Strings held.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// Forgets every string: only when no held row refers to one.
    pub(crate) fn clear(&mut self) {
        *self = HeldText::default();
    }

    /// Forgets the engine's ids (after the engine renumbered its table).
    pub(crate) fn forget_engine_ids(&mut self) {
        self.engine_ids.fill(u32::MAX);
    }
}

/// [`Row::state_hint`] of a row whose key's state index is not known.
pub(crate) const NO_STATE_HINT: u32 = u32::MAX;

/// One held event, resolved only as far as ordering and judging need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub ts_ms: i64,
    /// The key's fingerprint bits: content, unlike its state index.
    pub key_bits: u128,
    /// The key's state index when the row was held ([`NO_STATE_HINT`] for
    /// a light key or a restored row). Eviction and restores move indexes,
    /// so it is only a hint, checked against the key's bits when judged;
    /// it takes no part in the order.
    pub state_hint: u32,
    pub ip: IpAddr,
    pub status: u16,
    pub bytes_out: u64,
    /// Fixed hash of method, endpoint template and client family.
    pub text_hash: u64,
    /// [`HeldText`] ids of method, endpoint template and client family.
    pub method: u32,
    pub endpoint: u32,
    pub client: u32,
    /// Where the driver says the event came from (for a quarantine).
    pub origin: u64,
    /// The clock when the row arrived (for rows held ahead of it).
    pub arrived_clock_ms: i64,
}

impl Row {
    fn order_key(&self) -> (i64, u128, IpAddr, u16, u64, u64) {
        (
            self.ts_ms,
            self.key_bits,
            self.ip,
            self.status,
            self.bytes_out,
            self.text_hash,
        )
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.order_key() == other.order_key()
    }
}
impl Eq for Row {}
impl PartialOrd for Row {
    fn partial_cmp(&self, other: &Row) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Row {
    /// The order of [`Row::order_key`], field by field: almost every pair
    /// differs in time, so most comparisons end at the first field without
    /// building the tuple.
    fn cmp(&self, other: &Row) -> Ordering {
        self.ts_ms
            .cmp(&other.ts_ms)
            .then_with(|| self.key_bits.cmp(&other.key_bits))
            .then_with(|| self.ip.cmp(&other.ip))
            .then_with(|| self.status.cmp(&other.status))
            .then_with(|| self.bytes_out.cmp(&other.bytes_out))
            .then_with(|| self.text_hash.cmp(&other.text_hash))
    }
}

/// The reorder buffer: rows waiting for the watermark, taken smallest
/// first in [`Row`] order.
///
/// Input is almost always in event-time order, so a row not smaller than
/// the newest in order joins the sorted run at its end (no comparison but
/// that one); only a row that arrives out of order goes to a heap. Taking
/// the smallest compares the two heads. Rows equal in order hold the same
/// content (the order covers everything judging reads), so which of two
/// equal rows leaves first changes nothing.
#[derive(Default)]
pub(crate) struct ReorderBuffer {
    /// Rows in arrival order that are also in [`Row`] order.
    in_order: VecDeque<Row>,
    /// Rows that arrived out of order.
    out_of_order: BinaryHeap<Reverse<Row>>,
}

impl ReorderBuffer {
    pub(crate) fn push(&mut self, row: Row) {
        match self.in_order.back() {
            Some(newest) if row < *newest => self.out_of_order.push(Reverse(row)),
            _ => self.in_order.push_back(row),
        }
    }

    /// The smallest row, if any.
    pub(crate) fn peek(&self) -> Option<&Row> {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(run), Some(Reverse(heap))) => Some(if heap < run { heap } else { run }),
            (run, heap) => run.or(heap.map(|Reverse(row)| row)),
        }
    }

    /// Takes the smallest row.
    pub(crate) fn pop(&mut self) -> Option<Row> {
        let from_heap = match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(run), Some(Reverse(heap))) => heap < run,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if from_heap {
            self.out_of_order.pop().map(|Reverse(row)| row)
        } else {
            self.in_order.pop_front()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.in_order.is_empty() && self.out_of_order.is_empty()
    }

    /// Every held row, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Row> {
        self.in_order
            .iter()
            .chain(self.out_of_order.iter().map(|Reverse(row)| row))
    }
}

/// The combined content hash of a row's texts.
pub(crate) fn text_hash(text: &[&HeldText; 3], ids: [u32; 3]) -> u64 {
    let mut hasher = FxHasher::default();
    for (table, id) in text.iter().zip(ids) {
        hasher.write_u64(table.hash_of(id));
    }
    hasher.finish()
}

/// Where an arriving event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Behind the watermark (older than an event already judged): judge it
    /// now, as late when it is also older than its key's newest.
    Late,
    /// Too far ahead of the clock: hold it apart.
    Ahead,
    /// Within the bound: into the reorder buffer.
    InOrder,
}

/// The clock, the reorder buffer and the pen of far-ahead rows.
#[derive(Default)]
pub(crate) struct EventTime {
    /// Newest accepted event time; `None` before the first event.
    pub clock_ms: Option<i64>,
    /// Newest event time judged in order: older arrivals are late.
    pub released_ms: Option<i64>,
    pub held: ReorderBuffer,
    /// Rows too far ahead, in arrival order.
    pub ahead: Vec<Row>,
    /// Arrivals in a row that were all too far ahead.
    pub ahead_run: u32,
    /// Scratch for confirming a jump: (time, key bits) of `ahead`.
    scratch: Vec<(i64, u128)>,
    scratch_keys: FxHashMap<u128, u32>,
}

impl EventTime {
    /// Classifies an arriving event at `ts_ms`.
    pub(crate) fn arrival(&self, ts_ms: i64, max_ahead_ms: i64) -> Arrival {
        if let Some(clock) = self.clock_ms
            && ts_ms > clock.saturating_add(max_ahead_ms)
        {
            return Arrival::Ahead;
        }
        match self.released_ms {
            Some(released) if ts_ms < released => Arrival::Late,
            _ => Arrival::InOrder,
        }
    }

    /// Moves the clock forward to `ts_ms` (never back).
    pub(crate) fn advance(&mut self, ts_ms: i64) {
        self.clock_ms = Some(self.clock_ms.map_or(ts_ms, |clock| clock.max(ts_ms)));
    }

    /// The next row the watermark has passed, if any.
    pub(crate) fn pop_ready(&mut self, max_out_of_order_ms: i64) -> Option<Row> {
        let watermark = self.clock_ms?.saturating_sub(max_out_of_order_ms);
        if self.held.peek()?.ts_ms > watermark {
            return None;
        }
        let row = self.held.pop()?;
        self.note_released(row.ts_ms);
        Some(row)
    }

    /// The next held row whatever the watermark (end of input).
    pub(crate) fn pop_any(&mut self) -> Option<Row> {
        let row = self.held.pop()?;
        self.note_released(row.ts_ms);
        Some(row)
    }

    fn note_released(&mut self, ts_ms: i64) {
        self.released_ms = Some(self.released_ms.map_or(ts_ms, |released| released.max(ts_ms)));
    }

    /// The time the clock may jump to, confirmed by the rows held ahead:
    /// the earliest time by which `need` distinct keys have rows within
    /// `max_ahead_ms` before it; or, after `confirm_after` ahead arrivals in
    /// a row, the earliest ahead row.
    pub(crate) fn confirmed_jump(&mut self, need: usize, max_ahead_ms: i64, confirm_after: u32) -> Option<i64> {
        if self.ahead.is_empty() {
            return None;
        }
        if self.ahead_run >= confirm_after {
            return self.ahead.iter().map(|row| row.ts_ms).min();
        }
        let first_key = self.ahead[0].key_bits;
        if need > 1 && self.ahead.iter().all(|row| row.key_bits == first_key) {
            return None;
        }
        self.scratch.clear();
        self.scratch
            .extend(self.ahead.iter().map(|row| (row.ts_ms, row.key_bits)));
        self.scratch.sort_unstable();
        self.scratch_keys.clear();
        let mut start = 0;
        for end in 0..self.scratch.len() {
            let (ts_ms, key) = self.scratch[end];
            *self.scratch_keys.entry(key).or_default() += 1;
            while ts_ms - self.scratch[start].0 > max_ahead_ms {
                let old = self.scratch[start].1;
                if let Some(count) = self.scratch_keys.get_mut(&old) {
                    *count -= 1;
                    if *count == 0 {
                        self.scratch_keys.remove(&old);
                    }
                }
                start += 1;
            }
            if self.scratch_keys.len() >= need {
                return Some(ts_ms);
            }
        }
        None
    }

    /// After a confirmed jump to `clock_ms`: the rows still held ahead
    /// count as arriving now, so their wait is measured from the new clock
    /// (a replay's next gap is not taken for a stale arrival).
    pub(crate) fn rearrive(&mut self, clock_ms: i64) {
        for row in &mut self.ahead {
            row.arrived_clock_ms = row.arrived_clock_ms.max(clock_ms);
        }
    }

    /// Moves the rows held ahead that the clock now reaches into the
    /// reorder buffer, each moving the clock in turn, until none is near.
    pub(crate) fn admit_near(&mut self, max_ahead_ms: i64, scratch: &mut Vec<Row>) {
        loop {
            scratch.clear();
            self.take_admitted(max_ahead_ms, scratch);
            if scratch.is_empty() {
                return;
            }
            for row in scratch.iter() {
                self.held.push(*row);
                self.advance(row.ts_ms);
            }
        }
    }

    /// Takes the rows held ahead that are now within `max_ahead_ms` of the
    /// clock into `into`.
    pub(crate) fn take_admitted(&mut self, max_ahead_ms: i64, into: &mut Vec<Row>) {
        let Some(clock) = self.clock_ms else {
            return;
        };
        let limit = clock.saturating_add(max_ahead_ms);
        if self.ahead.iter().all(|row| row.ts_ms > limit) {
            return;
        }
        let mut kept = 0;
        for index in 0..self.ahead.len() {
            let row = self.ahead[index];
            if row.ts_ms <= limit {
                into.push(row);
            } else {
                self.ahead[kept] = row;
                kept += 1;
            }
        }
        self.ahead.truncate(kept);
    }

    /// Takes the rows held ahead too long (the clock moved `max_ahead_ms`
    /// past their arrival) or beyond `max_held` (the furthest ahead first)
    /// into `into`.
    pub(crate) fn take_expired(&mut self, max_ahead_ms: i64, max_held: usize, into: &mut Vec<Row>) {
        if let Some(clock) = self.clock_ms {
            let waited = self
                .ahead
                .iter()
                .take_while(|row| clock - row.arrived_clock_ms > max_ahead_ms)
                .count();
            into.extend(self.ahead.drain(..waited));
        }
        while self.ahead.len() > max_held {
            let furthest = self
                .ahead
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.cmp(b.1))
                .map(|(index, _)| index)
                .unwrap_or(0);
            into.push(self.ahead.remove(furthest));
        }
    }
}

/// One held event in a snapshot: the key by fingerprint, never its raw id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldEvent {
    pub ts_ms: i64,
    /// The key's fingerprint.
    pub key: String,
    pub ip: IpAddr,
    pub method: String,
    /// The endpoint template.
    pub endpoint: String,
    /// The client family.
    pub client: String,
    pub status: u16,
    pub bytes_out: u64,
    #[serde(default)]
    pub origin: u64,
    #[serde(default)]
    pub arrived_clock_ms: i64,
}

/// The event time of an input in a snapshot, so a checkpoint keeps the
/// events it holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventTimeSnapshot {
    pub clock_ms: Option<i64>,
    pub released_ms: Option<i64>,
    /// The reorder buffer, in release order.
    pub held: Vec<HeldEvent>,
    /// Events held too far ahead, in arrival order.
    pub ahead: Vec<HeldEvent>,
    #[serde(default)]
    pub ahead_run: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts_ms: i64, key_bits: u128) -> Row {
        Row {
            ts_ms,
            key_bits,
            state_hint: NO_STATE_HINT,
            ip: IpAddr::from([192, 0, 2, 1]),
            status: 200,
            bytes_out: 0,
            text_hash: 0,
            method: 0,
            endpoint: 0,
            client: 0,
            origin: 0,
            arrived_clock_ms: 0,
        }
    }

    #[test]
    fn rows_leave_in_time_then_content_order_whatever_the_arrival() {
        let rows = [row(30, 1), row(10, 2), row(10, 1), row(20, 9)];
        let mut time = EventTime::default();
        for row in rows.iter().rev() {
            time.held.push(*row);
            time.advance(row.ts_ms);
        }
        time.advance(1_000);
        let order: Vec<(i64, u128)> = std::iter::from_fn(|| time.pop_ready(0))
            .map(|row| (row.ts_ms, row.key_bits))
            .collect();
        assert_eq!(order, [(10, 1), (10, 2), (20, 9), (30, 1)]);
    }

    #[test]
    fn one_key_alone_far_ahead_confirms_no_jump_but_two_keys_do() {
        let mut time = EventTime::default();
        time.advance(0);
        time.ahead.push(row(4_000_000_000_000, 7));
        time.ahead_run = 1;
        assert_eq!(time.confirmed_jump(2, 3_600_000, 256), None);
        time.ahead.push(row(10_000_000, 8));
        assert_eq!(time.confirmed_jump(2, 3_600_000, 256), None, "too far apart to agree");
        time.ahead.push(row(10_000_500, 7));
        assert_eq!(time.confirmed_jump(2, 3_600_000, 256), Some(10_000_500));
    }

    #[test]
    fn a_held_row_waits_until_the_clock_has_moved_max_ahead_past_its_arrival() {
        let mut time = EventTime::default();
        time.advance(1_000);
        let mut far = row(4_000_000_000_000, 7);
        far.arrived_clock_ms = 1_000;
        time.ahead.push(far);
        let mut out = Vec::new();
        time.advance(1_000 + 3_600_000);
        time.take_expired(3_600_000, 10, &mut out);
        assert!(out.is_empty());
        time.advance(1_001 + 3_600_000);
        time.take_expired(3_600_000, 10, &mut out);
        assert_eq!(out.len(), 1);
    }
}
