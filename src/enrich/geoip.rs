//! GeoIP City and ASN lookups from MaxMind-format files, with a per-ip cache.
//!
//! One [`GeoIp`] holds the databases in memory and is shared read-only (via
//! `Arc`) by every engine; each engine owns a [`GeoCache`] in front of it,
//! because API traffic repeats the same client addresses many times over.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use maxminddb::{MaxMindDbError, Reader, geoip2};
use serde::Deserialize;

use super::netclass::{self, NetClass};
use super::{Country, GeoInfo, GeoNames};

/// Why a GeoIP database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot open geoip database {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    #[error("cannot open geoip database {}: not a MaxMind DB file: {detail}", path.display())]
    NotMaxMind { path: PathBuf, detail: String },
    #[error(
        "cannot open geoip database {}: its database_type is {found:?}, but it was given as the {expected} database",
        path.display()
    )]
    WrongType {
        path: PathBuf,
        expected: DatabaseKind,
        found: String,
    },
}

/// Which of the two databases a file was given as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// City or Country layout: where an address is.
    City,
    /// ASN or ISP layout: whose network an address is in.
    Asn,
}

impl std::fmt::Display for DatabaseKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            DatabaseKind::City => "City/Country",
            DatabaseKind::Asn => "ASN/ISP",
        })
    }
}

impl DatabaseKind {
    /// Whether a `database_type` from the metadata has this kind's layout.
    /// Matches on words rather than exact names so MaxMind's ("GeoIP2-City",
    /// "GeoLite2-Country", "GeoIP2-ISP"), DB-IP's ("DBIP-City-Lite",
    /// "DBIP-ASN-Lite") and other vendors' names are all accepted.
    pub fn accepts(self, database_type: &str) -> bool {
        let lowered = database_type.to_ascii_lowercase();
        let words: Vec<&str> = lowered.split(|c: char| !c.is_ascii_alphanumeric()).collect();
        let has_word = |wanted: &[&str]| words.iter().any(|word| wanted.contains(word));
        match self {
            // Enterprise files carry the City layout under another name.
            DatabaseKind::City => has_word(&["city", "country", "enterprise"]),
            DatabaseKind::Asn => has_word(&["asn", "isp"]),
        }
    }
}

/// City and ASN readers. Immutable after opening, so `&self` lookups are
/// safe to share between threads.
pub struct GeoIp {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
    /// Records that failed to decode: a damaged file is counted, not fatal,
    /// because one bad record must not stop the stream.
    decode_errors: AtomicU64,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GeoIp")
            .field(
                "city",
                &self.city.as_ref().map(|reader| &reader.metadata().database_type),
            )
            .field("asn", &self.asn.as_ref().map(|reader| &reader.metadata().database_type))
            .field("decode_errors", &self.decode_errors.load(Ordering::Relaxed))
            .finish()
    }
}

/// Just the City fields the hot path needs: decoding the full
/// `geoip2::City` would walk every language's names for nothing.
#[derive(Deserialize, Default)]
struct CityFields<'a> {
    #[serde(borrow, default)]
    country: IsoCode<'a>,
    #[serde(borrow, default)]
    registered_country: IsoCode<'a>,
    #[serde(default)]
    location: LocationFields,
    #[serde(default)]
    city: CityId,
}

#[derive(Deserialize, Default)]
struct CityId {
    #[serde(default)]
    geoname_id: Option<u32>,
}

#[derive(Deserialize, Default)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct LocationFields {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(default)]
    accuracy_radius: Option<u16>,
}

#[derive(Deserialize, Default)]
struct AsnFields {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
}

impl GeoIp {
    /// Opens the databases given; either may be left out. The whole file is
    /// read into memory (City files are tens of MB) so lookups never touch
    /// the filesystem.
    pub fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<GeoIp, GeoError> {
        let city_reader = city.map(|path| open_file(path, DatabaseKind::City)).transpose()?;
        let asn_reader = asn.map(|path| open_file(path, DatabaseKind::Asn)).transpose()?;
        Ok(GeoIp::from_readers(city_reader, asn_reader))
    }

    /// As [`GeoIp::open`], from database bytes already in memory.
    pub fn from_bytes(city: Option<Vec<u8>>, asn: Option<Vec<u8>>) -> Result<GeoIp, GeoError> {
        let city_reader = city
            .map(|bytes| reader_from_bytes(bytes, Path::new("(in-memory City database)"), DatabaseKind::City))
            .transpose()?;
        let asn_reader = asn
            .map(|bytes| reader_from_bytes(bytes, Path::new("(in-memory ASN database)"), DatabaseKind::Asn))
            .transpose()?;
        Ok(GeoIp::from_readers(city_reader, asn_reader))
    }

    /// No databases: every public address is of unknown place and network.
    pub fn empty() -> GeoIp {
        GeoIp::from_readers(None, None)
    }

    fn from_readers(city: Option<Reader<Vec<u8>>>, asn: Option<Reader<Vec<u8>>>) -> GeoIp {
        GeoIp {
            city,
            asn,
            decode_errors: AtomicU64::new(0),
        }
    }

    pub fn has_city(&self) -> bool {
        self.city.is_some()
    }

    pub fn has_asn(&self) -> bool {
        self.asn.is_some()
    }

    /// `database_type` of the City database, if one is loaded.
    pub fn city_database_type(&self) -> Option<&str> {
        self.city
            .as_ref()
            .map(|reader| reader.metadata().database_type.as_str())
    }

    /// `database_type` of the ASN database, if one is loaded.
    pub fn asn_database_type(&self) -> Option<&str> {
        self.asn.as_ref().map(|reader| reader.metadata().database_type.as_str())
    }

    /// Records that could not be decoded since opening; each such lookup
    /// answered "unknown".
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// Where and whose `ip` is. Non-public addresses are answered from their
    /// class alone; an address missing from the databases gets unknown
    /// fields. Never fails.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let ip = ip.to_canonical();
        // The unspecified address is no client's: it stands for a call
        // made through a cloud service (a CloudTrail service principal,
        // `crate::decode::SERVICE_SOURCE_IP`), which has no network and no
        // place. It is answered as an address no database knows, which
        // makes no place, no country and no journey.
        if ip.is_unspecified() {
            return GeoInfo {
                country: Country::UNKNOWN,
                ..GeoInfo::default()
            };
        }
        let class = netclass::classify(ip);
        let mut info = GeoInfo {
            class,
            country: Country::UNKNOWN,
            ..GeoInfo::default()
        };
        if class != NetClass::Public {
            return info;
        }
        if let Some(city) = self
            .city
            .as_ref()
            .and_then(|reader| self.decode::<CityFields>(reader, ip))
        {
            let code = city.country.iso_code.or(city.registered_country.iso_code);
            info.region = city.city.geoname_id.unwrap_or(0);
            info.country = code.map_or(Country::UNKNOWN, Country::from_code);
            if let (Some(lat), Some(lon)) = (city.location.latitude, city.location.longitude) {
                info.lat = lat as f32;
                info.lon = lon as f32;
                info.has_location = true;
                info.accuracy_km = city.location.accuracy_radius.unwrap_or(0);
            }
        }
        if let Some(asn) = self
            .asn
            .as_ref()
            .and_then(|reader| self.decode::<AsnFields>(reader, ip))
        {
            info.asn = asn.autonomous_system_number.unwrap_or(0);
        }
        info
    }

    /// English city and country names and the AS organisation of `ip`, for
    /// evidence a person reads. Allocates; not for the per-event path.
    pub fn names(&self, ip: IpAddr) -> GeoNames {
        let ip = ip.to_canonical();
        let mut names = GeoNames::default();
        if !netclass::classify(ip).is_public() {
            return names;
        }
        if let Some(city) = self
            .city
            .as_ref()
            .and_then(|reader| self.decode::<geoip2::City>(reader, ip))
        {
            names.city = city.city.names.english.map(str::to_string);
            names.country = city
                .country
                .names
                .english
                .or(city.registered_country.names.english)
                .map(str::to_string);
        }
        if let Some(asn) = self
            .asn
            .as_ref()
            .and_then(|reader| self.decode::<geoip2::Asn>(reader, ip))
        {
            names.org = asn.autonomous_system_organization.map(str::to_string);
        }
        names
    }

    /// The AS organisation of `ip` alone, for classifying its network once
    /// per network. Allocates; not for the per-event path.
    pub fn asn_org(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        if !netclass::classify(ip).is_public() {
            return None;
        }
        self.asn
            .as_ref()
            .and_then(|reader| self.decode::<geoip2::Asn>(reader, ip))
            .and_then(|asn| asn.autonomous_system_organization.map(str::to_string))
    }

    /// The record for `ip`, or `None` when there is none or it cannot be
    /// read. An IPv6 address asked of an IPv4-only file is simply absent.
    fn decode<'reader, T: Deserialize<'reader>>(&self, reader: &'reader Reader<Vec<u8>>, ip: IpAddr) -> Option<T> {
        if ip.is_ipv6() && reader.metadata().ip_version == 4 {
            return None;
        }
        let decoded = reader.lookup(ip).and_then(|result| result.decode::<T>());
        match decoded {
            Ok(record) => record,
            Err(_) => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

fn open_file(path: &Path, kind: DatabaseKind) -> Result<Reader<Vec<u8>>, GeoError> {
    let bytes = std::fs::read(path).map_err(|error| GeoError::Open {
        path: path.to_path_buf(),
        detail: describe_io_error(&error),
    })?;
    reader_from_bytes(bytes, path, kind)
}

fn reader_from_bytes(bytes: Vec<u8>, path: &Path, kind: DatabaseKind) -> Result<Reader<Vec<u8>>, GeoError> {
    if bytes.is_empty() {
        return Err(GeoError::NotMaxMind {
            path: path.to_path_buf(),
            detail: "the file is empty".to_string(),
        });
    }
    let reader = Reader::from_source(bytes).map_err(|error| GeoError::NotMaxMind {
        path: path.to_path_buf(),
        detail: describe_reader_error(&error),
    })?;
    let database_type = &reader.metadata().database_type;
    if !kind.accepts(database_type) {
        return Err(GeoError::WrongType {
            path: path.to_path_buf(),
            expected: kind,
            found: database_type.clone(),
        });
    }
    Ok(reader)
}

fn describe_io_error(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::IsADirectory => "is a directory".to_string(),
        _ => error.to_string(),
    }
}

fn describe_reader_error(error: &MaxMindDbError) -> String {
    error.to_string()
}

/// A bounded per-ip cache in front of [`GeoIp`], owned by one engine.
///
/// Client addresses come from outside, so the hasher is randomly seeded:
/// crafted addresses cannot pile into one bucket. Nothing reads the map in
/// order.
///
/// When full it is cleared rather than evicting one entry: with no ordering
/// to maintain a hit stays a single hash probe, and the working set of hot
/// addresses refills within a batch. Answers never depend on the cache.
#[derive(Debug)]
pub struct GeoCache {
    /// Keyed by [`cache_key`]: one 128-bit word hashes in one step.
    entries: HashMap<u128, GeoInfo, ahash::RandomState>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

/// An address as one word, for the cache: the IPv6 form, IPv4 as the
/// IPv4-mapped IPv6 address it is looked up as. Two addresses share a word
/// exactly when the lookup reads them as the same address.
fn cache_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

impl GeoCache {
    /// A cache holding at most `capacity` addresses; 0 disables caching.
    pub fn new(capacity: usize) -> GeoCache {
        GeoCache {
            // Reserve lazily up to a point: a huge configured capacity should
            // not cost memory before traffic arrives.
            entries: HashMap::with_capacity_and_hasher(capacity.min(4096), ahash::RandomState::new()),
            capacity,
            hits: 0,
            misses: 0,
        }
    }

    pub fn lookup(&mut self, geo: &GeoIp, ip: IpAddr) -> GeoInfo {
        let key = cache_key(ip);
        if let Some(info) = self.entries.get(&key) {
            self.hits += 1;
            return *info;
        }
        self.misses += 1;
        let info = geo.lookup(ip);
        if self.capacity == 0 {
            return info;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(key, info);
        info
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn misses(&self) -> u64 {
        self.misses
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every answer, e.g. after the databases were reloaded.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::mmdb_build::{AsnRecord, CityRecord, build_asn_db, build_city_db};

    fn london() -> CityRecord {
        CityRecord {
            network: "81.2.69.0/24".parse().unwrap(),
            country_code: "GB".to_string(),
            country_name: "United Kingdom".to_string(),
            city_name: "London".to_string(),
            latitude: 51.5,
            longitude: -0.125,
            accuracy_radius_km: 20,
            geoname_id: 2_643_743,
        }
    }

    fn sample_geo() -> GeoIp {
        let cities = [
            london(),
            CityRecord {
                network: "2a02:c7f::/32".parse().unwrap(),
                country_code: "GB".to_string(),
                country_name: "United Kingdom".to_string(),
                city_name: String::new(),
                latitude: 52.0,
                longitude: -1.0,
                accuracy_radius_km: 200,
                geoname_id: 0,
            },
        ];
        let asns = [AsnRecord {
            network: "81.2.0.0/16".parse().unwrap(),
            asn: 20_712,
            organization: "Andrews & Arnold Ltd".to_string(),
        }];
        GeoIp::from_bytes(
            Some(build_city_db(&cities).unwrap()),
            Some(build_asn_db(&asns).unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn geoip_is_send_and_sync() {
        fn assert_shareable<T: Send + Sync>() {}
        assert_shareable::<GeoIp>();
    }

    #[test]
    fn public_address_gets_country_location_and_asn() {
        let info = sample_geo().lookup("81.2.69.10".parse().unwrap());
        assert_eq!(info.class, NetClass::Public);
        assert_eq!(info.country.as_str(), "GB");
        assert!(info.has_location);
        assert_eq!((info.lat, info.lon, info.accuracy_km), (51.5, -0.125, 20));
        assert_eq!(info.asn, 20_712);
        assert_eq!(info.region, 2_643_743, "the region is the city's GeoNames id");
        assert_eq!(
            sample_geo().lookup("2a02:c7f::1".parse().unwrap()).region,
            0,
            "no city, no region"
        );
    }

    #[test]
    fn the_organisation_alone_is_read_for_classifying_a_network() {
        let geo = sample_geo();
        assert_eq!(
            geo.asn_org("81.2.69.10".parse().unwrap()).as_deref(),
            Some("Andrews & Arnold Ltd")
        );
        assert_eq!(geo.asn_org("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn asn_known_but_city_unknown_keeps_the_asn() {
        let info = sample_geo().lookup("81.2.1.1".parse().unwrap());
        assert_eq!(info.country, Country::UNKNOWN);
        assert!(!info.has_location);
        assert_eq!(info.asn, 20_712);
    }

    #[test]
    fn mapped_address_answers_like_ipv4() {
        let geo = sample_geo();
        let plain = geo.lookup("81.2.69.10".parse().unwrap());
        let mapped = geo.lookup("::ffff:81.2.69.10".parse().unwrap());
        assert_eq!(plain, mapped);
    }

    #[test]
    fn private_address_is_not_looked_up() {
        // The sample db has no private ranges, so prove the short cut with a
        // db that does: a lookup would find GB here.
        let cities = [CityRecord {
            network: "10.0.0.0/8".parse().unwrap(),
            country_code: "GB".to_string(),
            country_name: String::new(),
            city_name: String::new(),
            latitude: 1.0,
            longitude: 1.0,
            accuracy_radius_km: 1,
            geoname_id: 0,
        }];
        let geo = GeoIp::from_bytes(Some(build_city_db(&cities).unwrap()), None).unwrap();
        let info = geo.lookup("10.1.2.3".parse().unwrap());
        assert_eq!(info.class, NetClass::Private);
        assert_eq!(info.country, Country::UNKNOWN);
        assert!(!info.has_location);
        assert_eq!(geo.names("10.1.2.3".parse().unwrap()), GeoNames::default());
    }

    #[test]
    fn registered_country_is_the_fallback_country() {
        // mmdb_build always writes both fields, so write the record by hand.
        #[derive(serde::Serialize)]
        struct Code {
            iso_code: &'static str,
        }
        #[derive(serde::Serialize)]
        struct RegisteredOnly {
            registered_country: Code,
        }
        let mut writer = mmdb_writer::Writer::new("GeoIP2-City");
        let network: ipnet::IpNet = "81.2.69.0/24".parse().unwrap();
        writer
            .insert(
                network,
                &RegisteredOnly {
                    registered_country: Code { iso_code: "US" },
                },
            )
            .unwrap();
        let geo = GeoIp::from_bytes(Some(writer.to_bytes().unwrap()), None).unwrap();
        let info = geo.lookup("81.2.69.1".parse().unwrap());
        assert_eq!(info.country.as_str(), "US");
        assert!(!info.has_location);
    }

    #[test]
    fn damaged_record_is_counted_and_answers_unknown() {
        // `location.latitude` as a string cannot decode as a double.
        #[derive(serde::Serialize)]
        struct BadLocation {
            latitude: &'static str,
        }
        #[derive(serde::Serialize)]
        struct Damaged {
            location: BadLocation,
        }
        let mut writer = mmdb_writer::Writer::new("GeoIP2-City");
        let network: ipnet::IpNet = "81.2.69.0/24".parse().unwrap();
        writer
            .insert(
                network,
                &Damaged {
                    location: BadLocation { latitude: "north" },
                },
            )
            .unwrap();
        let geo = GeoIp::from_bytes(Some(writer.to_bytes().unwrap()), None).unwrap();
        let info = geo.lookup("81.2.69.1".parse().unwrap());
        assert_eq!(info.country, Country::UNKNOWN);
        assert!(!info.has_location);
        assert_eq!(geo.decode_errors(), 1);
    }

    #[test]
    fn names_come_from_both_databases() {
        let names = sample_geo().names("81.2.69.10".parse().unwrap());
        assert_eq!(names.city.as_deref(), Some("London"));
        assert_eq!(names.country.as_deref(), Some("United Kingdom"));
        assert_eq!(names.org.as_deref(), Some("Andrews & Arnold Ltd"));
        let without_city = sample_geo().names("2a02:c7f::1".parse().unwrap());
        assert_eq!(without_city.city, None);
        assert_eq!(without_city.country.as_deref(), Some("United Kingdom"));
    }

    #[test]
    fn empty_geoip_knows_only_classes() {
        let geo = GeoIp::empty();
        let public = geo.lookup("81.2.69.10".parse().unwrap());
        assert_eq!(public.class, NetClass::Public);
        assert_eq!(public.country, Country::UNKNOWN);
        assert_eq!(public.asn, 0);
        assert_eq!(geo.lookup("127.0.0.1".parse().unwrap()).class, NetClass::Loopback);
    }

    #[test]
    fn database_kinds_accept_vendor_names() {
        for name in [
            "GeoIP2-City",
            "GeoLite2-City",
            "GeoIP2-Country",
            "DBIP-City-Lite",
            "GeoIP2-Enterprise",
        ] {
            assert!(DatabaseKind::City.accepts(name), "{name}");
            assert!(!DatabaseKind::Asn.accepts(name), "{name}");
        }
        for name in ["GeoLite2-ASN", "GeoIP2-ISP", "DBIP-ASN-Lite"] {
            assert!(DatabaseKind::Asn.accepts(name), "{name}");
            assert!(!DatabaseKind::City.accepts(name), "{name}");
        }
        assert!(!DatabaseKind::City.accepts("GeoIP2-Anonymous-IP"));
        assert!(!DatabaseKind::Asn.accepts("GeoIP2-Connection-Type"));
    }

    #[test]
    fn city_bytes_given_as_asn_fail_clearly() {
        let city_bytes = build_city_db(&[CityRecord {
            accuracy_radius_km: 5,
            ..london()
        }])
        .unwrap();
        let message = GeoIp::from_bytes(None, Some(city_bytes)).unwrap_err().to_string();
        assert!(message.contains("GeoIP2-City") && message.contains("ASN"), "{message}");
    }

    #[test]
    fn cache_counts_and_clears_when_full() {
        let geo = sample_geo();
        let mut cache = GeoCache::new(2);
        let first: IpAddr = "81.2.69.1".parse().unwrap();
        let second: IpAddr = "81.2.69.2".parse().unwrap();
        let third: IpAddr = "81.2.69.3".parse().unwrap();
        assert_eq!(cache.lookup(&geo, first), geo.lookup(first));
        assert_eq!(cache.lookup(&geo, first), geo.lookup(first));
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        cache.lookup(&geo, second);
        assert_eq!(cache.len(), 2);
        cache.lookup(&geo, third);
        assert_eq!(cache.len(), 1, "a full cache is cleared before inserting");
        cache.lookup(&geo, first);
        assert_eq!((cache.hits(), cache.misses()), (1, 4));
    }

    #[test]
    fn cache_of_zero_capacity_never_stores() {
        let geo = sample_geo();
        let mut cache = GeoCache::new(0);
        let ip: IpAddr = "81.2.69.1".parse().unwrap();
        assert_eq!(cache.lookup(&geo, ip), geo.lookup(ip));
        assert_eq!(cache.lookup(&geo, ip), geo.lookup(ip));
        assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 2, 0));
    }

    #[test]
    fn cache_treats_mapped_and_plain_forms_as_one_address() {
        let geo = sample_geo();
        let mut cache = GeoCache::new(16);
        cache.lookup(&geo, "81.2.69.1".parse().unwrap());
        cache.lookup(&geo, "::ffff:81.2.69.1".parse().unwrap());
        assert_eq!(cache.hits(), 1);
    }

    #[test]
    fn cache_keys_are_distinct_for_addresses_the_lookup_tells_apart() {
        let key = |text: &str| cache_key(text.parse().unwrap());
        assert_eq!(key("81.2.69.1"), key("::ffff:81.2.69.1"));
        let distinct = [
            "81.2.69.1",
            "81.2.69.2",
            "::81.2.69.1",
            "::1",
            "0.0.0.0",
            "::",
            "2001:db8::1",
        ];
        for (index, first) in distinct.iter().enumerate() {
            for second in &distinct[index + 1..] {
                assert_ne!(key(first), key(second), "{first} and {second}");
            }
        }
    }
}
