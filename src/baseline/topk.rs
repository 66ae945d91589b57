//! A bounded, decaying frequency table: the top K items of a key plus one
//! "other" bucket. Memory per key is fixed by K whatever the key does.

use serde::{Deserialize, Serialize};

use super::compact::CompactVec;

const DAY_MS: i64 = 86_400_000;

/// One remembered item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u32,
    /// Decayed weight (one call adds 1).
    pub weight: f64,
    /// Calls ever counted while remembered, saturating: no detector reads
    /// it, and 32 bits make an entry 32 bytes instead of 40. Snapshots
    /// written with a larger count read back saturated.
    #[serde(deserialize_with = "saturating_u32")]
    pub count: u32,
    pub first_ts: i64,
    pub last_ts: i64,
}

/// Reads a count written as any unsigned integer, saturating at `u32::MAX`.
fn saturating_u32<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let count = u64::deserialize(deserializer)?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// The event-time day a table's weights are decayed to, in 32 bits. Event
/// times lie between 2000 and 2100 (`MIN_TS_MS` to `MAX_TS_MS` in
/// [`crate::event`]), days 10,957 to 47,482, so 32 bits hold every day
/// exactly; a 64-bit day cost every table 8 bytes with its padding. It
/// serialises as the 64-bit day (`i64::MIN` before the first), as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecayDay(i32);

impl DecayDay {
    /// Before the table's first use.
    pub const UNSET: DecayDay = DecayDay(i32::MIN);

    fn of(day: i64) -> DecayDay {
        DecayDay(day.clamp(i64::from(i32::MIN) + 1, i64::from(i32::MAX)) as i32)
    }

    /// Moves to the day of `ts_ms`. Returns the factor the weights decay by
    /// on the way (their half-life is `half_life_ms`), `None` when the day
    /// does not move forward or is the first.
    pub fn advance(&mut self, ts_ms: i64, half_life_ms: i64) -> Option<f64> {
        let day = ts_ms.div_euclid(DAY_MS);
        if *self == DecayDay::UNSET {
            *self = DecayDay::of(day);
            return None;
        }
        let current = i64::from(self.0);
        if day <= current {
            return None;
        }
        *self = DecayDay::of(day);
        Some(0.5f64.powf(((day - current) * DAY_MS) as f64 / half_life_ms.max(1) as f64))
    }
}

impl Serialize for DecayDay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let day = if *self == DecayDay::UNSET {
            i64::MIN
        } else {
            i64::from(self.0)
        };
        serializer.serialize_i64(day)
    }
}

impl<'de> Deserialize<'de> for DecayDay {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<DecayDay, D::Error> {
        let day = i64::deserialize(deserializer)?;
        Ok(if day == i64::MIN {
            DecayDay::UNSET
        } else {
            DecayDay::of(day)
        })
    }
}

/// Top-K items with exponentially decaying weights. Decay is applied once per
/// event-time day, so an update costs a short linear scan and no float power.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    pub entries: CompactVec<Entry>,
    /// Weight of items that were evicted or never fit.
    pub other: f64,
    /// Items evicted so far: a saturated table cannot say "never seen".
    pub evicted: u32,
    /// Day index the weights are decayed to.
    decay_day: DecayDay,
}

impl TopK {
    pub fn new() -> TopK {
        TopK {
            entries: CompactVec::new(),
            other: 0.0,
            evicted: 0,
            decay_day: DecayDay::UNSET,
        }
    }

    /// Brings the weights to the event-time day of `ts_ms`.
    pub fn decay_to(&mut self, ts_ms: i64, half_life_ms: i64) {
        if let Some(factor) = self.decay_day.advance(ts_ms, half_life_ms) {
            for entry in &mut self.entries {
                entry.weight *= factor;
            }
            self.other *= factor;
        }
    }

    pub fn get(&self, id: u32) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.id == id)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.entries.iter().any(|entry| entry.id == id)
    }

    pub fn total(&self) -> f64 {
        self.entries.iter().map(|entry| entry.weight).sum::<f64>() + self.other
    }

    /// Share of the decayed weight held by `id` (0 when not remembered).
    pub fn share(&self, id: u32) -> f64 {
        let total = self.total();
        if total <= 0.0 {
            return 0.0;
        }
        self.get(id).map_or(0.0, |entry| entry.weight / total)
    }

    pub fn other_share(&self) -> f64 {
        let total = self.total();
        if total <= 0.0 { 0.0 } else { self.other / total }
    }

    /// Counts one use of `id` at `ts_ms`. When the table is full the lightest
    /// entry (the oldest on ties) moves into "other".
    pub fn add(&mut self, id: u32, ts_ms: i64, capacity: usize) {
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.id == id) {
            entry.weight += 1.0;
            entry.count = entry.count.saturating_add(1);
            entry.last_ts = ts_ms;
            return;
        }
        let new_entry = Entry {
            id,
            weight: 1.0,
            count: 1,
            first_ts: ts_ms,
            last_ts: ts_ms,
        };
        if self.entries.len() < capacity {
            self.entries.push(new_entry);
            return;
        }
        let lightest = lightest(&self.entries, |entry| (entry.weight, entry.last_ts));
        self.other += self.entries[lightest].weight;
        self.evicted += 1;
        self.entries[lightest] = new_entry;
    }

    /// Entries by weight, heaviest first, ties by id: a stable order for evidence.
    pub fn ranked(&self) -> Vec<&Entry> {
        let mut ranked: Vec<&Entry> = self.entries.iter().collect();
        ranked.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id)));
        ranked
    }

    /// Remaps ids (after a snapshot is restored into another id space).
    pub fn remap(&mut self, map: impl Fn(u32) -> u32) {
        for entry in &mut self.entries {
            entry.id = map(entry.id);
        }
    }
}

impl Default for TopK {
    fn default() -> Self {
        TopK::new()
    }
}

/// The index of the entry to evict from a full table: the lightest, the
/// least recently used among equally light ones, the first among equals.
/// `weight_and_last` gives an entry's decayed weight and last use.
pub fn lightest<T>(entries: &[T], weight_and_last: impl Fn(&T) -> (f64, i64)) -> usize {
    let mut lightest = 0;
    for (index, entry) in entries.iter().enumerate() {
        let (weight, last_ts) = weight_and_last(entry);
        let (current_weight, current_last_ts) = weight_and_last(&entries[lightest]);
        if weight < current_weight || (weight == current_weight && last_ts < current_last_ts) {
            lightest = index;
        }
    }
    lightest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decay_day_serialises_as_the_64_bit_day_it_stands_for() {
        let mut day = DecayDay::UNSET;
        assert_eq!(serde_json::to_string(&day).unwrap(), i64::MIN.to_string());
        assert_eq!(
            day.advance(crate::event::MAX_TS_MS - 1, DAY_MS),
            None,
            "the first day sets it"
        );
        let last = (crate::event::MAX_TS_MS - 1).div_euclid(DAY_MS);
        assert_eq!(serde_json::to_string(&day).unwrap(), last.to_string());
        for text in [i64::MIN.to_string(), last.to_string(), "10957".to_string()] {
            let back: DecayDay = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
    }

    #[test]
    fn a_decay_day_decays_by_the_days_it_moves_and_never_back() {
        let mut day = DecayDay::UNSET;
        let start = crate::event::MIN_TS_MS;
        assert_eq!(day.advance(start, DAY_MS), None);
        assert_eq!(day.advance(start + DAY_MS / 2, DAY_MS), None, "same day");
        assert_eq!(day.advance(start + 3 * DAY_MS, DAY_MS), Some(0.125), "three half-lives");
        assert_eq!(day.advance(start, DAY_MS), None, "an earlier day does not move it");
        assert_eq!(day.advance(start + 4 * DAY_MS, 2 * DAY_MS), Some(0.5f64.powf(0.5)));
    }

    #[test]
    fn a_table_header_takes_32_bytes() {
        assert_eq!(std::mem::size_of::<TopK>(), 32);
        assert_eq!(std::mem::size_of::<super::super::geo::PlaceTable>(), 32);
    }

    #[test]
    fn keeps_the_heaviest_and_counts_the_rest_as_other() {
        let mut table = TopK::new();
        for _ in 0..10 {
            table.add(1, 0, 2);
        }
        table.add(2, 1, 2);
        table.add(3, 2, 2);
        assert!(table.contains(1) && table.contains(3) && !table.contains(2));
        assert_eq!(table.other, 1.0);
        assert_eq!(table.evicted, 1);
        assert!((table.share(1) - 10.0 / 12.0).abs() < 1e-9);
    }

    #[test]
    fn a_table_holds_as_many_slots_as_items() {
        let mut table = TopK::new();
        table.add(1, 0, 64);
        assert_eq!(table.entries.capacity(), 1);
        for id in 2..=8 {
            table.add(id, 0, 64);
        }
        assert_eq!(table.entries.len(), 8);
        assert_eq!(table.entries.capacity(), 8);
    }

    #[test]
    fn an_entry_is_32_bytes_and_reads_a_larger_count_saturated() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        let json = r#"{"id":1,"weight":2.0,"count":5000000000,"first_ts":0,"last_ts":1}"#;
        let entry: Entry = serde_json::from_str(json).unwrap();
        assert_eq!(entry.count, u32::MAX);
        let mut table = TopK::new();
        table.entries.push(entry);
        table.add(1, 2, 4);
        assert_eq!(table.entries[0].count, u32::MAX);
    }

    #[test]
    fn weights_halve_after_one_half_life() {
        let mut table = TopK::new();
        table.decay_to(0, DAY_MS);
        table.add(7, 0, 4);
        table.decay_to(DAY_MS, DAY_MS);
        assert!((table.get(7).unwrap().weight - 0.5).abs() < 1e-9);
        table.decay_to(DAY_MS / 2, DAY_MS);
        assert!(
            (table.get(7).unwrap().weight - 0.5).abs() < 1e-9,
            "time never runs backwards"
        );
    }
}
