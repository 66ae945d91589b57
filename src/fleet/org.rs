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

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

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
    pub keys: BTreeSet<u128>,
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
