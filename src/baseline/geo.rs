//! Where a key is used from: countries and networks (ASNs) as decaying top-K
//! tables, the last located use, and recent jumps between places faster
//! than anyone travels.

use serde::{Deserialize, Serialize};

use super::recent::RecentTimes;
use super::topk::TopK;
use crate::enrich::{Country, GeoInfo, NetClass};
use crate::model::GeoModel;

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
    /// The address, for evidence.
    pub ip: std::net::IpAddr,
}

/// Geography of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeoBaseline {
    /// Countries by `u16::from_be_bytes(code)`.
    pub countries: TopK,
    pub asns: TopK,
    /// Places: a network in a country (`place_id`). A cloud provider the key
    /// uses in Paris says nothing about the same provider in Tel Aviv.
    #[serde(default)]
    pub places: TopK,
    pub last: Option<Located>,
    /// Located uses counted.
    pub located: u64,
    /// Times the key jumped between two distant places too fast, recently.
    pub jumps: Vec<i64>,
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

/// Id of a (country, network) place.
pub fn place_id(country: Country, asn: u32) -> u32 {
    let mixed = (u64::from(country_id(country)) << 32 | u64::from(asn)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as u32
}

pub fn country_from_id(id: u32) -> Country {
    let bytes = (id as u16).to_be_bytes();
    Country(bytes)
}

impl GeoBaseline {
    /// Brings the country and network weights to the day of `ts_ms`; done
    /// before an event is judged, so judging and absorbing see one decay.
    pub fn decay_to(&mut self, ts_ms: i64, half_life_ms: i64) {
        self.countries.decay_to(ts_ms, half_life_ms);
        self.asns.decay_to(ts_ms, half_life_ms);
    }

    /// Absorbs one use; [`GeoBaseline::decay_to`] must have run for `ts_ms`.
    pub fn absorb(&mut self, ts_ms: i64, ip: std::net::IpAddr, geo: &GeoInfo, model: &GeoModel) {
        let (max_countries, max_asns) = (model.max_countries, model.max_asns);
        let half_life_ms = model.half_life.as_millis() as i64;
        if geo.country.is_known() {
            self.countries.add(country_id(geo.country), ts_ms, max_countries);
        }
        if geo.asn != 0 {
            self.asns.add(geo.asn, ts_ms, max_asns);
        }
        if geo.country.is_known() || geo.asn != 0 {
            self.places.decay_to(ts_ms, half_life_ms);
            self.places.add(place_id(geo.country, geo.asn), ts_ms, max_asns);
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
        let min_age_ms = model.established_after.as_millis() as i64;
        let established =
            |country: Country, asn: u32| self.is_established(country, asn, model.established_share, ts_ms, min_age_ms);
        let from_established = established(Country(previous.country), previous.asn);
        let to_established = established(geo.country, geo.asn);
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

    /// Whether a place (a network in a country) is an established part of
    /// the key's baseline: travel between established places is habitual. A
    /// place is established when it holds `min_share` of the baseline, or
    /// its country does and the key already used this network there (a
    /// second carrier at home); it must have been in the baseline for
    /// `min_age_ms` either way, so a second party cannot establish itself in
    /// one burst.
    pub fn is_established(&self, country: Country, asn: u32, min_share: f64, now_ms: i64, min_age_ms: i64) -> bool {
        let settled = |table: &TopK, id: u32| table.get(id).is_some_and(|entry| now_ms - entry.first_ts >= min_age_ms);
        let country_established =
            settled(&self.countries, country_id(country)) && self.countries.share(country_id(country)) >= min_share;
        let place = place_id(country, asn);
        settled(&self.places, place) && (self.places.share(place) >= min_share || country_established)
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
    fn london_to_sydney_is_about_17000_km() {
        let km = distance_km(51.5074, -0.1278, -33.8688, 151.2093);
        assert!((km - 16_990.0).abs() < 60.0, "{km}");
        assert_eq!(distance_km(10.0, 10.0, 10.0, 10.0), 0.0);
        assert!(distance_km(f32::NAN, 10.0, f32::NAN, 10.0).is_nan());
    }
}
