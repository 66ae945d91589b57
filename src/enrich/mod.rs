//! Resolving an event into what the engine judges: where and whose network
//! its ip is (GeoIP, address classes), its endpoint as a template and
//! whether that is sensitive, and its client family. [`ResolvedEvent`] is the
//! row that comes out.

pub mod client;
pub mod endpoint;
pub mod geoip;
pub mod mmdb_build;
pub mod netclass;
pub mod network_kind;
pub mod resolved;
#[doc(hidden)]
pub mod test_world;

pub use geoip::{DatabaseKind, GeoCache, GeoError, GeoIp};
pub use netclass::NetClass;
pub use network_kind::{NetworkKind, NetworkKinds};
pub use resolved::ResolvedEvent;

/// ISO 3166 two-letter country code, or `--` when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Country(pub [u8; 2]);

impl Country {
    pub const UNKNOWN: Country = Country(*b"--");

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("--")
    }

    pub fn from_code(code: &str) -> Country {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
            }
            _ => Country::UNKNOWN,
        }
    }

    pub fn is_known(&self) -> bool {
        *self != Country::UNKNOWN
    }
}

/// What is known about one ip. Small and `Copy` so the per-ip cache and the
/// engine pass it around without allocating; names are looked up only when
/// an alert needs them ([`GeoIp::names`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GeoInfo {
    pub class: NetClass,
    pub country: Country,
    /// Autonomous system number, 0 when unknown.
    pub asn: u32,
    /// Latitude and longitude in degrees; meaningful only when `has_location`.
    pub lat: f32,
    pub lon: f32,
    pub has_location: bool,
    /// The database's accuracy radius in km (0 when not given).
    pub accuracy_km: u16,
    /// The City database's city (GeoNames id; a cloud region resolves to
    /// its city), 0 when unknown. With the network it makes a place.
    pub region: u32,
    /// What kind of network `asn` is; set by the engine, which classifies
    /// each network once ([`NetworkKinds`]), not by the GeoIP lookup.
    pub kind: NetworkKind,
}

/// Names for evidence a person reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GeoNames {
    pub city: Option<String>,
    pub country: Option<String>,
    pub org: Option<String>,
}
