//! Unfamiliar networks: a new or still-learning key used from a network no
//! learned key of the organisation uses, far from every place the
//! organisation's keys are used from. A new key has no history of its own
//! to be judged on; the organisation's is the next best thing. A successor
//! key taking over from a rotated one calls from the organisation's places
//! and so stays quiet.
//!
//! The [`OrgTable`] read here is closed per epoch by `crate::fleet::org`,
//! so its content at any event depends on event time only.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Context, Finding};
use crate::baseline::KeyState;
use crate::baseline::geo::distance_km;
use crate::detector::{Detector, Severity};
use crate::enrich::network_kind::NetworkKind;
use crate::enrich::{Country, ResolvedEvent};

/// A located place of the organisation: latitude and longitude rounded to
/// half a degree (about 55 km), enough to say "far from all of them".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cell {
    pub lat2: i16,
    pub lon2: i16,
}

impl Cell {
    pub fn of(lat: f32, lon: f32) -> Cell {
        Cell {
            lat2: (lat * 2.0).round() as i16,
            lon2: (lon * 2.0).round() as i16,
        }
    }

    pub fn lat(&self) -> f32 {
        f32::from(self.lat2) / 2.0
    }

    pub fn lon(&self) -> f32 {
        f32::from(self.lon2) / 2.0
    }
}

/// What the organisation's learned keys use, each item with the last epoch
/// it was used in. Ordered maps, so the table serializes the same way
/// wherever it was built.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrgTable {
    /// The epoch whose events this table judges.
    pub epoch: i64,
    /// The first epoch the table had anything in it. Keys first seen
    /// before it were there before the organisation had a baseline: they
    /// are not new, only not learned yet, and are not judged by it.
    #[serde(default)]
    pub since_epoch: Option<i64>,
    pub asns: BTreeMap<u32, i64>,
    pub countries: BTreeMap<String, i64>,
    pub clients: BTreeMap<String, i64>,
    #[serde(with = "places_as_pairs")]
    pub places: BTreeMap<Cell, i64>,
    /// Learned keys that called in each bucket within the horizon.
    #[serde(default)]
    pub learned_keys: BTreeMap<i64, u64>,
    /// Learned keys the organisation needs before it judges anyone: a
    /// handful of keys is no baseline.
    #[serde(default)]
    pub min_keys: u64,
}

/// JSON map keys are strings: places travel as `[cell, epoch]` pairs.
mod places_as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Cell;

    pub fn serialize<S: Serializer>(places: &BTreeMap<Cell, i64>, serializer: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(&Cell, &i64)> = places.iter().collect();
        pairs.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<Cell, i64>, D::Error> {
        let pairs: Vec<(Cell, i64)> = Vec::deserialize(deserializer)?;
        Ok(pairs.into_iter().collect())
    }
}

impl OrgTable {
    /// Whether the organisation has anything to judge with.
    pub fn is_empty(&self) -> bool {
        self.asns.is_empty()
            || self.places.is_empty()
            || self.learned_keys.values().copied().max().unwrap_or(0) < self.min_keys.max(1)
    }

    /// Distance in km from a point to the nearest place of the organisation.
    pub fn nearest_km(&self, lat: f32, lon: f32) -> Option<f64> {
        self.places
            .keys()
            .map(|cell| distance_km(lat, lon, cell.lat(), cell.lon()))
            .min_by(f64::total_cmp)
    }

    /// Takes the table into use for `epoch`.
    pub fn open(&mut self, epoch: i64) {
        self.epoch = epoch;
        if self.since_epoch.is_none() && !self.is_empty() {
            self.since_epoch = Some(epoch);
        }
    }

    /// Whether a key first seen at `first_ts` was born under this table.
    pub fn saw_born(&self, first_ts: i64, epoch_ms: i64) -> bool {
        self.since_epoch
            .is_some_and(|since| first_ts.div_euclid(epoch_ms.max(1)) >= since)
    }

    /// Places within `horizon` epochs of the newest only.
    pub fn forget_before(&mut self, oldest_epoch: i64) {
        self.asns.retain(|_, last| *last >= oldest_epoch);
        self.countries.retain(|_, last| *last >= oldest_epoch);
        self.clients.retain(|_, last| *last >= oldest_epoch);
        self.places.retain(|_, last| *last >= oldest_epoch);
        self.learned_keys.retain(|bucket, _| *bucket >= oldest_epoch);
    }
}

/// What one contributor (a process, a Kafka partition) saw of learned keys
/// in one bucket: the items of [`OrgTable`], by name, so contributions from
/// different processes merge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrgContribution {
    pub bucket: i64,
    pub asns: BTreeSet<u32>,
    pub countries: BTreeSet<String>,
    pub clients: BTreeSet<String>,
    pub places: BTreeSet<Cell>,
    /// Distinct learned keys that called in the bucket (contributors hold
    /// disjoint keys, so their counts add up).
    #[serde(default)]
    pub learned_keys: u64,
}

impl OrgTable {
    /// Adds a closed contribution, remembering the bucket as the items'
    /// last use.
    pub fn merge(&mut self, contribution: &OrgContribution) {
        let bucket = contribution.bucket;
        let touch = |last: &mut i64| *last = (*last).max(bucket);
        for asn in &contribution.asns {
            touch(self.asns.entry(*asn).or_insert(bucket));
        }
        for country in &contribution.countries {
            touch(self.countries.entry(country.clone()).or_insert(bucket));
        }
        for client in &contribution.clients {
            touch(self.clients.entry(client.clone()).or_insert(bucket));
        }
        for cell in &contribution.places {
            touch(self.places.entry(*cell).or_insert(bucket));
        }
        *self.learned_keys.entry(bucket).or_insert(0) += contribution.learned_keys;
    }
}

/// Calls a young key needs before its last place says where it lives.
const MIN_KEY_EVENTS_FOR_A_HOME: u64 = 5;

/// The check: judges new and still-learning keys on their first use of a
/// network.
pub fn check_unfamiliar_network(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let model = &ctx.model.across_keys;
    let org = ctx.org;
    let geo = &event.geo;
    // Only a call the API served proves the key works: guessed and revoked
    // ids are refused or throttled, and the source view judges whoever
    // sprays them. Every test is pure, so they are ordered by cost: most
    // calls are from learned keys and end at the cheap ones, before
    // `is_empty` walks the organisation's buckets.
    if event.status >= 400
        || geo.asn == 0
        || !geo.has_location
        || state.has_learned(event.ts_ms, &model.org_learned)
        || !org.saw_born(state.first_ts, model.org_epoch.as_millis() as i64)
        || state.geo.asns.contains(geo.asn)
        || org.asns.contains_key(&geo.asn)
        || org.is_empty()
    {
        return;
    }
    let Some(nearest_km) = org.nearest_km(geo.lat, geo.lon) else {
        return;
    };
    let credible_km = nearest_km - f64::from(geo.accuracy_km);
    // Rented servers and anonymising exits no key of the organisation uses
    // are unfamiliar however near: that is where a leaked key is tried.
    let rented = matches!(geo.kind, NetworkKind::Hosting | NetworkKind::Anonymising);
    // A young key already in use somewhere, now on an unfamiliar network
    // far from there: the owner's few hours of history are enough to say
    // where the key lives.
    let from_key_km = state
        .geo
        .last
        .filter(|_| state.events >= MIN_KEY_EVENTS_FOR_A_HOME)
        .map(|last| {
            distance_km(last.lat, last.lon, geo.lat, geo.lon) - f64::from(last.accuracy_km) - f64::from(geo.accuracy_km)
        });
    let moved_far = from_key_km.is_some_and(|km| km > model.org_far_km);
    if credible_km <= model.org_far_km && !rented && !moved_far {
        return;
    }
    let country_known = org.countries.contains_key(geo.country.as_str());
    let client_known = org.clients.contains_key(event.client);
    let severity = Severity::Medium;
    let names = ctx.geo.names(event.ip);
    let country = if geo.country == Country::UNKNOWN {
        "--".to_string()
    } else {
        geo.country.as_str().to_string()
    };
    out.push(Finding {
        detector: Detector::UnfamiliarNetwork,
        severity,
        score: (credible_km / (credible_km + model.org_far_km)).clamp(0.0, 1.0),
        window_start_ms: event.ts_ms,
        subject: format!("AS{}", geo.asn),
        summary: format!(
            "{} key used from AS{} ({}), a network no key of the organisation uses, {:.0} km from its nearest place",
            if state.events == 0 { "new" } else { "still-learning" },
            geo.asn,
            names.org.as_deref().unwrap_or("unknown network"),
            nearest_km
        ),
        evidence: json!({
            "ip": event.ip.to_string(),
            "asn": geo.asn,
            "network": names.org,
            "country": country,
            "city": names.city,
            "nearest_org_place_km": nearest_km.round(),
            "km_from_key_last_use": from_key_km.map(f64::round),
            "network_kind": geo.kind.as_str(),
            "country_used_by_organisation": country_known,
            "client": event.client,
            "client_used_by_organisation": client_known,
            "key_events_before": state.events,
            "organisation_networks": org.asns.len(),
            "organisation_places": org.places.len(),
            "organisation_epoch": org.epoch,
        }),
    });
}
