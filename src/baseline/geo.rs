//! Where a key is used from: countries, networks (ASNs) and places (a
//! network in a region) as decaying top-K tables, the last located use, and
//! recent jumps between places faster than anyone travels.

use serde::{Deserialize, Serialize};

use super::recent::RecentTimes;
use super::topk::TopK;
use crate::enrich::{Country, GeoInfo, NetClass, ResolvedEvent};
use crate::model::{GeoModel, Model};

/// Jumps within six hours of event time of each other make one episode; at
/// most 64 are kept per key.
const JUMPS: RecentTimes = RecentTimes {
    span_ms: 6 * 3_600_000,
    max_kept: 64,
};

/// A located use of the key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Located {
    pub ts_ms: i64,
    pub lat: f32,
    pub lon: f32,
    pub accuracy_km: u16,
    pub country: [u8; 2],
    pub asn: u32,
    /// Region key of the use ([`region_key`]).
    #[serde(default)]
    pub region: u32,
    /// The address, for evidence.
    pub ip: std::net::IpAddr,
}

/// Geography of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeoBaseline {
    /// Countries by `u16::from_be_bytes(code)`.
    pub countries: TopK,
    pub asns: TopK,
    /// Places: a network in a region. A cloud provider the key uses in
    /// Frankfurt says nothing about the same provider in Tel Aviv.
    #[serde(default)]
    pub network_places: PlaceTable,
    pub last: Option<Located>,
    /// Located uses counted.
    pub located: u64,
    /// Times the key jumped between two distant places too fast, recently.
    pub jumps: super::compact::CompactVec<i64>,
}

/// A move from the last located use to a new one, faster than travel
/// between places not both established for the key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jump {
    pub previous: Located,
    pub distance_km: f64,
    /// The distance less what GeoIP error may explain.
    pub credible_distance_km: f64,
    pub elapsed_ms: i64,
    pub speed_kmh: f64,
    pub from_established: bool,
    pub to_established: bool,
}

pub fn country_id(country: Country) -> u32 {
    u32::from(u16::from_be_bytes(country.0))
}

pub fn country_from_id(id: u32) -> Country {
    let bytes = (id as u16).to_be_bytes();
    Country(bytes)
}

/// Marks region keys made from a country, for databases without cities.
const COUNTRY_REGION: u32 = 0x8000_0000;
/// Marks region keys of non-public address classes.
const CLASS_REGION: u32 = 0xFFFF_FF00;

/// The region of a use: the City database's city (GeoNames ids are below
/// 2^31), or its country when the database has no city, or its address
/// class for addresses that are not public; 0 when nothing is known.
pub fn region_key(geo: &GeoInfo) -> u32 {
    if geo.class != NetClass::Public {
        return CLASS_REGION | geo.class as u32;
    }
    if geo.region != 0 {
        return geo.region & !COUNTRY_REGION;
    }
    if geo.country.is_known() {
        return COUNTRY_REGION | country_id(geo.country);
    }
    0
}

/// The region as text for subjects and evidence: the GeoNames id, or the
/// country code, or the address class.
pub fn region_label(region: u32) -> String {
    if region & CLASS_REGION == CLASS_REGION {
        return "internal".to_string();
    }
    if region & COUNTRY_REGION != 0 {
        return country_from_id(region & !COUNTRY_REGION).as_str().to_string();
    }
    region.to_string()
}

/// The place of a use, `(asn, region key)`; `None` when neither the network
/// nor the region is known.
pub fn place_of(geo: &GeoInfo) -> Option<(u32, u32)> {
    let region = region_key(geo);
    (geo.asn != 0 || region != 0).then_some((geo.asn, region))
}

/// One place of a key: a network in a region, with a sample address to name
/// it by in evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Place {
    pub asn: u32,
    /// Region key ([`region_key`]).
    pub region: u32,
    /// Decayed weight (one call adds 1).
    pub weight: f64,
    pub first_ts: i64,
    pub last_ts: i64,
    /// The first address seen there.
    pub ip: std::net::IpAddr,
    /// Whether its use alongside an established region of its network was
    /// reported; reported once.
    #[serde(default)]
    pub overlap_reported: bool,
}

/// The places of a key: top K by decayed weight plus an "other" bucket, like
/// [`TopK`] but keyed by network and region so places of one network can be
/// found together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaceTable {
    pub entries: super::compact::CompactVec<Place>,
    pub other: f64,
    /// Places evicted so far: a saturated table cannot say "never seen".
    pub evicted: u32,
    decay_day: super::topk::DecayDay,
}

impl Default for PlaceTable {
    fn default() -> Self {
        PlaceTable {
            entries: super::compact::CompactVec::new(),
            other: 0.0,
            evicted: 0,
            decay_day: super::topk::DecayDay::UNSET,
        }
    }
}

impl PlaceTable {
    /// Brings the weights to the event-time day of `ts_ms` (once a day).
    pub fn decay_to(&mut self, ts_ms: i64, half_life_ms: i64) {
        if let Some(factor) = self.decay_day.advance(ts_ms, half_life_ms) {
            for entry in &mut self.entries {
                entry.weight *= factor;
            }
            self.other *= factor;
        }
    }

    pub fn get(&self, asn: u32, region: u32) -> Option<&Place> {
        self.entries
            .iter()
            .find(|entry| entry.asn == asn && entry.region == region)
    }

    pub fn total(&self) -> f64 {
        self.entries.iter().map(|entry| entry.weight).sum::<f64>() + self.other
    }

    /// Counts one use; when full, the lightest place (the oldest on ties)
    /// moves into "other".
    pub fn add(&mut self, asn: u32, region: u32, ip: std::net::IpAddr, ts_ms: i64, capacity: usize) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|entry| entry.asn == asn && entry.region == region)
        {
            entry.weight += 1.0;
            entry.last_ts = ts_ms;
            return;
        }
        let place = Place {
            asn,
            region,
            weight: 1.0,
            first_ts: ts_ms,
            last_ts: ts_ms,
            ip,
            overlap_reported: false,
        };
        if self.entries.len() < capacity {
            self.entries.push(place);
            return;
        }
        let lightest = super::topk::lightest(&self.entries, |place| (place.weight, place.last_ts));
        self.other += self.entries[lightest].weight;
        self.evicted += 1;
        self.entries[lightest] = place;
    }

    /// Places by weight, heaviest first: a stable order for evidence.
    pub fn ranked(&self) -> Vec<&Place> {
        let mut ranked: Vec<&Place> = self.entries.iter().collect();
        ranked.sort_by(|a, b| {
            b.weight
                .total_cmp(&a.weight)
                .then(a.asn.cmp(&b.asn))
                .then(a.region.cmp(&b.region))
        });
        ranked
    }
}

/// A data-centre network used from a region new to the key while the key
/// goes on using its established region of that network: past the overlap a
/// cutover takes, two deployments hold the key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionOverlap {
    /// The key's established place of the network, still in use.
    pub established: Place,
    /// The new place's first use.
    pub new_since_ms: i64,
    /// How long both have been in use together.
    pub overlap_ms: i64,
}

impl GeoBaseline {
    /// Brings the country and network weights to the day of `ts_ms`; done
    /// before an event is judged, so judging and absorbing see one decay.
    pub fn decay_to(&mut self, ts_ms: i64, half_life_ms: i64) {
        self.countries.decay_to(ts_ms, half_life_ms);
        self.asns.decay_to(ts_ms, half_life_ms);
        self.network_places.decay_to(ts_ms, half_life_ms);
    }

    /// Absorbs one use; [`GeoBaseline::decay_to`] must have run for `ts_ms`.
    /// `overlap` is what [`GeoBaseline::region_overlap`] found for it: it is
    /// reported once.
    pub fn absorb(
        &mut self,
        ts_ms: i64,
        ip: std::net::IpAddr,
        geo: &GeoInfo,
        overlap: Option<&RegionOverlap>,
        model: &GeoModel,
    ) {
        let (max_countries, max_asns) = (model.max_countries, model.max_asns);
        if geo.country.is_known() {
            self.countries.add(country_id(geo.country), ts_ms, max_countries);
        }
        if geo.asn != 0 {
            self.asns.add(geo.asn, ts_ms, max_asns);
        }
        let region = region_key(geo);
        if let Some((asn, region)) = place_of(geo) {
            self.network_places.add(asn, region, ip, ts_ms, model.max_places);
            if overlap.is_some()
                && let Some(place) = self
                    .network_places
                    .entries
                    .iter_mut()
                    .find(|entry| entry.asn == asn && entry.region == region)
            {
                place.overlap_reported = true;
            }
        }
        if geo.has_location {
            self.located += 1;
            self.last = Some(Located {
                ts_ms,
                lat: geo.lat,
                lon: geo.lon,
                accuracy_km: geo.accuracy_km,
                country: geo.country.0,
                asn: geo.asn,
                region,
                ip,
            });
        }
    }

    /// The move from the last located use to a public use at `ts_ms`
    /// located by `geo`, when it is faster than the model allows over more
    /// than its minimum distance (after GeoIP error) and not between two
    /// established places.
    pub fn jump_to(&self, ts_ms: i64, geo: &GeoInfo, model: &GeoModel) -> Option<Jump> {
        if geo.class != NetClass::Public || !geo.has_location {
            return None;
        }
        let previous = self.last?;
        let distance_km = distance_km(previous.lat, previous.lon, geo.lat, geo.lon);
        let error_km = f64::from(previous.accuracy_km) + f64::from(geo.accuracy_km) + 2.0 * model.location_error_km;
        let credible_distance_km = distance_km - error_km;
        if credible_distance_km <= model.min_distance_km {
            return None;
        }
        let elapsed_ms = (ts_ms - previous.ts_ms).max(1000);
        let speed_kmh = credible_distance_km / (elapsed_ms as f64 / 3_600_000.0);
        if speed_kmh <= model.max_speed_kmh {
            return None;
        }
        let from_established =
            self.is_established(Country(previous.country), previous.asn, previous.region, ts_ms, model);
        let to_established = self.is_established(geo.country, geo.asn, region_key(geo), ts_ms, model);
        if from_established && to_established {
            // Both places are habitual for this key (multi-region service,
            // corporate VPN egress): not travel at all.
            return None;
        }
        Some(Jump {
            previous,
            distance_km,
            credible_distance_km,
            elapsed_ms,
            speed_kmh,
            from_established,
            to_established,
        })
    }

    /// Records a jump at `ts_ms`.
    pub fn record_jump(&mut self, ts_ms: i64) {
        JUMPS.record(&mut self.jumps, ts_ms);
    }

    /// The recent jumps as [`GeoBaseline::record_jump`] at `ts_ms` leaves
    /// them: the time of the episode's first jump and how many.
    pub fn jumps_with(&self, ts_ms: i64) -> (i64, usize) {
        JUMPS.foresee(&self.jumps, ts_ms)
    }

    /// Whether a place (a network in a region of a country) is an
    /// established part of the key's baseline: travel between established
    /// places is habitual, and sensitive calls and failures from them are
    /// the key's own. A place is established when it holds the model's
    /// `established_share` of the baseline, or its country does and the key
    /// already used this network there (a second carrier at home); it must
    /// have been in the baseline for `established_after` either way, so a
    /// second party cannot establish itself in one burst.
    pub fn is_established(&self, country: Country, asn: u32, region: u32, now_ms: i64, model: &GeoModel) -> bool {
        let min_age_ms = model.established_after.as_millis() as i64;
        let Some(place) = self.network_places.get(asn, region) else {
            return false;
        };
        if now_ms - place.first_ts < min_age_ms {
            return false;
        }
        let total = self.network_places.total();
        if total > 0.0 && place.weight / total >= model.established_share {
            return true;
        }
        let country_settled = self
            .countries
            .get(country_id(country))
            .is_some_and(|entry| now_ms - entry.first_ts >= min_age_ms);
        country_settled && self.countries.share(country_id(country)) >= model.established_share
    }

    /// Whether the place of `geo` is established ([`GeoBaseline::is_established`]).
    pub fn is_established_at(&self, geo: &GeoInfo, now_ms: i64, model: &GeoModel) -> bool {
        place_of(geo).is_some_and(|(asn, region)| self.is_established(geo.country, asn, region, now_ms, model))
    }

    /// Whether `region` holds an established place of the key, of any
    /// network: the key's home city, or one of its cloud regions.
    pub fn is_established_region(&self, region: u32, now_ms: i64, model: &GeoModel) -> bool {
        let min_age_ms = model.established_after.as_millis() as i64;
        let total = self.network_places.total();
        if region == 0 || total <= 0.0 {
            return false;
        }
        let (weight, settled) = self
            .network_places
            .entries
            .iter()
            .filter(|place| place.region == region)
            .fold((0.0, false), |(weight, settled), place| {
                (weight + place.weight, settled || now_ms - place.first_ts >= min_age_ms)
            });
        settled && weight / total >= model.established_share
    }

    /// A data-centre network used at `now_ms` from a region new to the key
    /// (not established) while the key's established region of the same
    /// network, older than the new one by `established_after`, went on
    /// being used for longer than `same_network_overlap` after the new one
    /// appeared; once per place. A cutover (both regions for a couple of
    /// hours, then only the new one) never gets here. Cheap when nothing is
    /// new: one scan of the places, and a second only for a young place.
    /// Places that appeared before `judged_from_ms` (while the key was
    /// learning) are part of its footprint, not new.
    pub fn region_overlap(
        &self,
        now_ms: i64,
        judged_from_ms: i64,
        geo: &GeoInfo,
        model: &GeoModel,
    ) -> Option<RegionOverlap> {
        if !geo.kind.is_datacentre() || geo.class != NetClass::Public || geo.asn == 0 {
            return None;
        }
        let overlap_ms = model.same_network_overlap.as_millis() as i64;
        let region = region_key(geo);
        let place = self.network_places.get(geo.asn, region)?;
        // Judged while the new place is young (its first day), and only
        // while it is in continuous use: its previous call within the
        // cutover allowance. A place the key calls once a day is a rare
        // site, not a second deployment.
        let min_age_ms = model.established_after.as_millis() as i64;
        let age_ms = now_ms - place.first_ts;
        if place.overlap_reported
            || age_ms < overlap_ms
            || age_ms > min_age_ms
            || now_ms - place.last_ts > overlap_ms
            || place.first_ts < judged_from_ms
        {
            return None;
        }
        if self.is_established(geo.country, geo.asn, region, now_ms, model) {
            return None;
        }
        let total = self.network_places.total();
        let established = self
            .network_places
            .entries
            .iter()
            .filter(|other| {
                other.asn == geo.asn
                    && other.region != region
                    && other.first_ts <= place.first_ts - min_age_ms
                    && total > 0.0
                    && other.weight / total >= model.established_share
                    && other.last_ts - place.first_ts >= overlap_ms
            })
            .max_by_key(|other| other.last_ts)?;
        Some(RegionOverlap {
            established: *established,
            new_since_ms: place.first_ts,
            overlap_ms: established.last_ts.min(now_ms) - place.first_ts,
        })
    }

    /// Countries holding at least `min_share` of the baseline.
    pub fn significant_countries(&self, min_share: f64) -> usize {
        let total = self.countries.total();
        if total <= 0.0 {
            return 0;
        }
        self.countries
            .entries
            .iter()
            .filter(|entry| entry.weight / total >= min_share)
            .count()
    }
}

impl super::KeyState {
    /// Whether the key's client family `client_id` is established: in its
    /// baseline for the geo model's `established_after` with at least its
    /// `established_share`, as places are.
    pub fn is_established_client(&self, client_id: u32, now_ms: i64, model: &GeoModel) -> bool {
        let min_age_ms = model.established_after.as_millis() as i64;
        self.clients
            .get(client_id)
            .is_some_and(|entry| now_ms - entry.first_ts >= min_age_ms)
            && self.clients.share(client_id) >= model.established_share
    }

    /// Whether an event comes from the key's own established place with its
    /// own established client: what the key's owner does every day.
    pub fn is_familiar_source(&self, event: &ResolvedEvent, model: &Model) -> bool {
        self.geo.is_established_at(&event.geo, event.ts_ms, &model.geo)
            && self.is_established_client(event.client_id, event.ts_ms, &model.geo)
    }
}

/// Great-circle distance in km (haversine).
pub fn distance_km(lat1: f32, lon1: f32, lat2: f32, lon2: f32) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    // Most uses repeat the last place: the formula gives exactly 0 there,
    // without its trigonometry.
    if lat1 == lat2 && lon1 == lon2 && lat1.is_finite() && lon1.is_finite() {
        return 0.0;
    }
    let (lat1, lon1, lat2, lon2) = (
        f64::from(lat1).to_radians(),
        f64::from(lon1).to_radians(),
        f64::from(lat2).to_radians(),
        f64::from(lon2).to_radians(),
    );
    let dlat = lat2 - lat1;
    let dlon = lon2 - lon1;
    let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_the_city_else_the_country_else_the_address_class() {
        let mut geo = GeoInfo {
            country: Country::from_code("DE"),
            asn: 16509,
            region: 2_925_533,
            ..GeoInfo::default()
        };
        assert_eq!(region_key(&geo), 2_925_533);
        assert_eq!(region_label(region_key(&geo)), "2925533");
        geo.region = 0;
        assert_eq!(region_label(region_key(&geo)), "DE");
        assert_eq!(place_of(&geo), Some((16509, region_key(&geo))));
        geo.class = NetClass::Private;
        assert_eq!(region_label(region_key(&geo)), "internal");
        let unknown = GeoInfo {
            country: Country::UNKNOWN,
            ..GeoInfo::default()
        };
        assert_eq!(place_of(&unknown), None, "nothing known: no place");
    }

    #[test]
    fn places_of_one_network_in_two_regions_are_two_places_and_the_lightest_goes() {
        let ip: std::net::IpAddr = "25.20.1.1".parse().unwrap();
        let mut table = PlaceTable::default();
        for _ in 0..5 {
            table.add(16509, 1, ip, 0, 2);
        }
        table.add(16509, 2, ip, 10, 2);
        assert_eq!(table.entries.len(), 2);
        table.add(14061, 1, ip, 20, 2);
        assert!(table.get(16509, 1).is_some() && table.get(14061, 1).is_some());
        assert!(table.get(16509, 2).is_none(), "the lightest place was evicted");
        assert_eq!((table.evicted, table.other), (1, 1.0));
    }

    #[test]
    fn london_to_sydney_is_about_17000_km() {
        let km = distance_km(51.5074, -0.1278, -33.8688, 151.2093);
        assert!((km - 16_990.0).abs() < 60.0, "{km}");
        assert_eq!(distance_km(10.0, 10.0, 10.0, 10.0), 0.0);
        assert!(distance_km(f32::NAN, 10.0, f32::NAN, 10.0).is_nan());
    }
}
