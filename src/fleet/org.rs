//! The organisation baseline: which networks, countries, clients and places
//! the organisation's learned keys use, kept in epochs of event time so its
//! content at any event is decided by event time alone.
//!
//! A call of a learned key at time t counts towards bucket
//! `epoch_of(t + org_grace)`; bucket b joins the table when the first event
//! of epoch b+1 arrives, and the table judges events of that epoch. A call
//! that arrives after its bucket joined is more than `org_grace` late and is
//! not counted (`dropped_late`), so a late call never changes a table in
//! use, whatever the batches, partitions or restarts. Items unused by
//! learned keys for `org_horizon` leave the table.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::detect::org::{Cell, OrgContribution, OrgTable};
use crate::enrich::GeoInfo;
use crate::model::AcrossKeysModel;

/// Contributions not closed yet, with clients by interned id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub asns: BTreeSet<u32>,
    pub countries: BTreeSet<[u8; 2]>,
    pub clients: BTreeSet<u32>,
    pub places: BTreeSet<Cell>,
    /// Learned keys that called, by fingerprint bits.
    pub keys: LearnedKeys,
}

/// The learned keys of a bucket: every call of a learned key looks its
/// key up here, so a hash set (O(1), one probe) rather than an ordered
/// set (a search down a tree of up to every key). Only the count is read;
/// a snapshot lists the keys in ascending order, as an ordered set did.
/// Fingerprint bits come from key ids chosen outside, so the hasher is
/// randomly seeded.
#[derive(Debug, Clone, Default)]
pub struct LearnedKeys(HashSet<u128, ahash::RandomState>);

impl LearnedKeys {
    pub fn insert(&mut self, key: u128) -> bool {
        self.0.insert(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: LearnedKeys) {
        self.0.extend(other.0);
    }
}

impl PartialEq for LearnedKeys {
    fn eq(&self, other: &LearnedKeys) -> bool {
        self.0 == other.0
    }
}

impl FromIterator<u128> for LearnedKeys {
    fn from_iter<I: IntoIterator<Item = u128>>(keys: I) -> LearnedKeys {
        let mut set = LearnedKeys::default();
        set.0.extend(keys);
        set
    }
}

impl Serialize for LearnedKeys {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<u128> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        serializer.collect_seq(sorted)
    }
}

impl<'de> Deserialize<'de> for LearnedKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LearnedKeys, D::Error> {
        Ok(Vec::<u128>::deserialize(deserializer)?.into_iter().collect())
    }
}

/// The organisation baseline of one process (or one Kafka partition).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrgBaseline {
    /// The closed table, judging events of `table.epoch`.
    pub table: OrgTable,
    /// Whether `table.epoch` has been set by a first event.
    pub started: bool,
    pub pending: BTreeMap<i64, Pending>,
    pub dropped_late: u64,
}

impl OrgBaseline {
    fn epoch_of(ts_ms: i64, model: &AcrossKeysModel) -> i64 {
        ts_ms.div_euclid(model.org_epoch.as_millis().max(1) as i64)
    }

    /// Moves to the epoch of an event at `ts_ms`: buckets before it close
    /// and are handed to `closed` (with client names from `client_names`),
    /// then merged into the table when `merge` (one process sees every key;
    /// in Kafka the shared table is merged elsewhere).
    pub fn advance_to(
        &mut self,
        ts_ms: i64,
        model: &AcrossKeysModel,
        client_names: &[Box<str>],
        merge: bool,
        closed: &mut Vec<OrgContribution>,
    ) {
        let epoch = Self::epoch_of(ts_ms, model);
        if !self.started {
            self.started = true;
            self.table.epoch = epoch;
            return;
        }
        if epoch <= self.table.epoch {
            return;
        }
        let first_closed = closed.len();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= epoch {
                break;
            }
            let (bucket, pending) = entry.remove_entry();
            closed.push(OrgContribution {
                bucket,
                asns: pending.asns,
                countries: pending
                    .countries
                    .iter()
                    .map(|code| String::from_utf8_lossy(code).into_owned())
                    .collect(),
                clients: pending
                    .clients
                    .iter()
                    .filter_map(|id| client_names.get(*id as usize).map(|name| name.to_string()))
                    .collect(),
                places: pending.places,
                learned_keys: pending.keys.len() as u64,
            });
        }
        if merge {
            for contribution in &closed[first_closed..] {
                self.table.merge(contribution);
            }
            let horizon = Self::epoch_of(model.org_horizon.as_millis() as i64, model).max(1);
            self.table.forget_before(epoch - horizon);
        }
        self.table.min_keys = model.org_min_keys;
        self.table.open(epoch);
    }

    /// A call of a learned key joins its bucket.
    pub fn contribute(&mut self, ts_ms: i64, key: u128, geo: &GeoInfo, client_id: u32, model: &AcrossKeysModel) {
        let bucket = Self::epoch_of(ts_ms + model.org_grace.as_millis() as i64, model);
        if self.started && bucket < self.table.epoch {
            self.dropped_late += 1;
            return;
        }
        let pending = self.pending.entry(bucket).or_default();
        if geo.asn != 0 {
            pending.asns.insert(geo.asn);
        }
        if geo.country.is_known() {
            pending.countries.insert(geo.country.0);
        }
        pending.clients.insert(client_id);
        pending.keys.insert(key);
        if geo.has_location {
            pending.places.insert(Cell::of(geo.lat, geo.lon));
        }
    }

    /// Remaps interned client ids after a restore.
    pub fn remap_clients(&mut self, client_map: &impl Fn(u32) -> u32) {
        for pending in self.pending.values_mut() {
            pending.clients = pending.clients.iter().map(|id| client_map(*id)).collect();
        }
    }

    /// Adds another baseline's state (a restored snapshot): tables and
    /// pending buckets are unions.
    pub fn absorb_snapshot(&mut self, other: OrgBaseline) {
        if !other.started {
            return;
        }
        if !self.started {
            *self = other;
            return;
        }
        self.table.epoch = self.table.epoch.max(other.table.epoch);
        self.table.since_epoch = match (self.table.since_epoch, other.table.since_epoch) {
            (Some(mine), Some(theirs)) => Some(mine.min(theirs)),
            (mine, theirs) => mine.or(theirs),
        };
        let OrgTable {
            asns,
            countries,
            clients,
            places,
            ..
        } = other.table;
        for (asn, last) in asns {
            let entry = self.table.asns.entry(asn).or_insert(last);
            *entry = (*entry).max(last);
        }
        for (country, last) in countries {
            let entry = self.table.countries.entry(country).or_insert(last);
            *entry = (*entry).max(last);
        }
        for (client, last) in clients {
            let entry = self.table.clients.entry(client).or_insert(last);
            *entry = (*entry).max(last);
        }
        for (bucket, count) in other.table.learned_keys {
            let entry = self.table.learned_keys.entry(bucket).or_insert(0);
            *entry = (*entry).max(count);
        }
        for (cell, last) in places {
            let entry = self.table.places.entry(cell).or_insert(last);
            *entry = (*entry).max(last);
        }
        for (bucket, pending) in other.pending {
            let mine = self.pending.entry(bucket).or_default();
            mine.asns.extend(pending.asns);
            mine.countries.extend(pending.countries);
            mine.clients.extend(pending.clients);
            mine.places.extend(pending.places);
            mine.keys.extend(pending.keys);
        }
        self.dropped_late += other.dropped_late;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_keys_serialise_as_the_ascending_list_an_ordered_set_gave_and_read_back_equal() {
        let keys = [u128::MAX, 7, 1 << 100, 0, 42];
        let mut learned = LearnedKeys::default();
        for key in keys {
            learned.insert(key);
        }
        let ordered: BTreeSet<u128> = keys.into_iter().collect();
        let json = serde_json::to_string(&learned).unwrap();
        assert_eq!(json, serde_json::to_string(&ordered).unwrap());
        let back: LearnedKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(back, learned);
        assert_eq!(back.len(), 5);
    }

    #[test]
    fn a_key_calling_twice_in_a_bucket_counts_once() {
        let model = AcrossKeysModel::default();
        let mut org = OrgBaseline::default();
        let geo = GeoInfo::default();
        org.contribute(0, 9, &geo, 0, &model);
        org.contribute(1, 9, &geo, 0, &model);
        org.contribute(2, 10, &geo, 0, &model);
        let keys: usize = org.pending.values().map(|pending| pending.keys.len()).sum();
        assert_eq!(keys, 2);
    }
}
