//! Where a key is used from: countries and networks (ASNs) as decaying top-K
//! tables, and the last located use for impossible travel.

use serde::{Deserialize, Serialize};

use super::topk::TopK;
use crate::enrich::{Country, GeoInfo};

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
    pub fn update(
        &mut self,
        ts_ms: i64,
        ip: std::net::IpAddr,
        geo: &GeoInfo,
        half_life_ms: i64,
        max_countries: usize,
        max_asns: usize,
    ) {
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
        assert!(distance_km(10.0, 10.0, 10.0, 10.0) < 1e-6);
    }
}
