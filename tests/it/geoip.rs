//! GeoIP enrichment against MaxMind's own test databases (copied into
//! `tests/data/maxmind/`, see the README there) and against databases built
//! with `mmdb_build`, read back both through `GeoIp` and the raw reader.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keywatch::enrich::mmdb_build::{
    ASN_DATABASE_TYPE, AsnRecord, CITY_DATABASE_TYPE, CityRecord, build_asn_db, build_city_db,
};
use keywatch::enrich::test_world::{synthetic_host, synthetic_world};
use keywatch::enrich::{Country, GeoCache, GeoError, GeoInfo, GeoIp, NetClass};
use maxminddb::{Reader, geoip2};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/maxmind")
        .join(name)
}

fn maxmind_geo() -> GeoIp {
    GeoIp::open(
        Some(&fixture("GeoIP2-City-Test.mmdb")),
        Some(&fixture("GeoLite2-ASN-Test.mmdb")),
    )
    .expect("MaxMind test databases open")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

// --- answers from MaxMind's files, expected values from source-data/*.json ---

#[test]
fn london_answer_prefers_country_over_registered_country() {
    // 81.2.69.142/31: country GB, registered_country US.
    let info = maxmind_geo().lookup(ip("81.2.69.142"));
    assert_eq!(info.class, NetClass::Public);
    assert_eq!(info.country.as_str(), "GB");
    assert!(info.has_location);
    assert_eq!(info.lat, 51.5142_f32);
    assert_eq!(info.lon, -0.0931_f32);
    assert_eq!(info.accuracy_km, 10);
}

#[test]
fn linkoping_answer_from_both_databases() {
    // City 89.160.20.128/25: SE, Linköping, 58.4167/15.6167, 76 km.
    // ASN 89.160.20.128/25: AS29518 "Bredband2 AB".
    let geo = maxmind_geo();
    let info = geo.lookup(ip("89.160.20.200"));
    assert_eq!(info.country.as_str(), "SE");
    assert_eq!((info.lat, info.lon, info.accuracy_km), (58.4167, 15.6167, 76));
    assert_eq!(info.asn, 29_518);
    let names = geo.names(ip("89.160.20.200"));
    assert_eq!(names.city.as_deref(), Some("Linköping"));
    assert_eq!(names.country.as_deref(), Some("Sweden"));
    assert_eq!(names.org.as_deref(), Some("Bredband2 AB"));
}

#[test]
fn asn_without_organisation_gives_number_and_no_name() {
    // ASN 216.160.83.56/29: AS209 with no organisation; City: US, Milton.
    let geo = maxmind_geo();
    let info = geo.lookup(ip("216.160.83.58"));
    assert_eq!(info.asn, 209);
    assert_eq!(info.country.as_str(), "US");
    assert_eq!((info.lat, info.lon, info.accuracy_km), (47.2513, -122.3149, 22));
    let names = geo.names(ip("216.160.83.58"));
    assert_eq!(names.city.as_deref(), Some("Milton"));
    assert_eq!(names.org, None);
}

#[test]
fn asn_only_answers_keep_the_asn() {
    // 1.128.0.0/11 is in the ASN file (AS1221 Telstra) but not the City file.
    let geo = maxmind_geo();
    let info = geo.lookup(ip("1.128.0.1"));
    assert_eq!(info.asn, 1221);
    assert_eq!(info.country, Country::UNKNOWN);
    assert!(!info.has_location);
    assert_eq!(geo.names(ip("1.128.0.1")).org.as_deref(), Some("Telstra Pty Ltd"));
}

#[test]
fn ipv6_answers() {
    let geo = maxmind_geo();
    // City 2001:218::/32: JP, 35.68536/139.75309, 100 km, no city.
    let japan = geo.lookup(ip("2001:218::1"));
    assert_eq!(japan.country.as_str(), "JP");
    // The file holds doubles; GeoInfo keeps them as f32.
    assert_eq!(
        (japan.lat, japan.lon, japan.accuracy_km),
        (35.68536_f64 as f32, 139.75309_f64 as f32, 100)
    );
    assert_eq!(geo.names(ip("2001:218::1")).city, None);
    // ASN 2001:1700::/27: AS6730 "Sunrise Communications AG".
    assert_eq!(geo.lookup(ip("2001:1700::5")).asn, 6730);
}

#[test]
fn location_without_country_is_kept() {
    // City 2a02:d500::/29 has a location but neither country field.
    let info = maxmind_geo().lookup(ip("2a02:d500::1"));
    assert_eq!(info.country, Country::UNKNOWN);
    assert!(info.has_location);
    assert_eq!((info.lat, info.lon), (48.69096, 9.14062));
}

#[test]
fn ipv4_mapped_ipv6_is_answered_as_ipv4() {
    let geo = maxmind_geo();
    let plain = geo.lookup(ip("89.160.20.200"));
    let mapped = geo.lookup(ip("::ffff:89.160.20.200"));
    assert_eq!(plain, mapped);
    assert_eq!(mapped.country.as_str(), "SE");
    assert_eq!(geo.names(ip("::ffff:89.160.20.200")), geo.names(ip("89.160.20.200")));
}

#[test]
fn address_missing_from_the_databases_is_unknown() {
    let geo = maxmind_geo();
    for address in ["8.8.8.8", "81.2.70.1", "3000::1"] {
        let info = geo.lookup(ip(address));
        assert_eq!(info.class, NetClass::Public, "{address}");
        assert_eq!(info.country, Country::UNKNOWN, "{address}");
        assert_eq!(info.asn, 0, "{address}");
        assert!(!info.has_location, "{address}");
        assert_eq!(geo.names(ip(address)).city, None, "{address}");
    }
    assert_eq!(geo.decode_errors(), 0);
}

#[test]
fn non_public_addresses_are_classified_without_a_lookup() {
    let geo = maxmind_geo();
    let cases = [
        ("10.0.0.1", NetClass::Private),
        ("192.168.1.1", NetClass::Private),
        ("127.0.0.1", NetClass::Loopback),
        ("169.254.1.1", NetClass::LinkLocal),
        ("100.64.1.1", NetClass::Reserved),
        ("203.0.113.9", NetClass::Reserved),
        ("::1", NetClass::Loopback),
        ("fd00::1", NetClass::Private),
        ("fe80::1", NetClass::LinkLocal),
        ("2001:db8::1", NetClass::Reserved),
        ("::ffff:10.0.0.1", NetClass::Private),
    ];
    for (address, class) in cases {
        let info = geo.lookup(ip(address));
        assert_eq!(
            info,
            GeoInfo {
                class,
                country: Country::UNKNOWN,
                ..GeoInfo::default()
            },
            "{address}"
        );
    }
}

#[test]
fn reserved_range_is_not_looked_up_even_when_the_file_covers_it() {
    // A private range present in the City file: a lookup would find FR.
    let cities = [CityRecord {
        network: "192.168.0.0/16".parse().unwrap(),
        country_code: "FR".to_string(),
        country_name: "France".to_string(),
        city_name: "Paris".to_string(),
        latitude: 48.85,
        longitude: 2.35,
        accuracy_radius_km: 5,
        geoname_id: 2_988_507,
    }];
    let geo = GeoIp::from_bytes(Some(build_city_db(&cities).unwrap()), None).unwrap();
    let info = geo.lookup(ip("192.168.4.4"));
    assert_eq!(info.class, NetClass::Private);
    assert_eq!(info.country, Country::UNKNOWN);
    assert!(!info.has_location);
}

#[test]
fn country_database_is_accepted_as_city_and_has_no_location() {
    let geo = GeoIp::open(Some(&fixture("GeoIP2-Country-Test.mmdb")), None).unwrap();
    let info = geo.lookup(ip("81.2.69.142"));
    assert_eq!(info.country.as_str(), "GB");
    assert!(!info.has_location);
    assert_eq!(info.asn, 0);
}

#[test]
fn isp_database_is_accepted_as_asn() {
    // ISP ::1.128.0.0/107 = 1.128.0.0/11: AS1221.
    let geo = GeoIp::open(None, Some(&fixture("GeoIP2-ISP-Test.mmdb"))).unwrap();
    assert_eq!(geo.lookup(ip("1.128.0.1")).asn, 1221);
    assert_eq!(geo.lookup(ip("1.128.0.1")).country, Country::UNKNOWN);
}

#[test]
fn geoip_is_shared_by_threads() {
    let geo = Arc::new(maxmind_geo());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let geo = Arc::clone(&geo);
            std::thread::spawn(move || (0..500).map(|_| geo.lookup(ip("89.160.20.130")).asn).sum::<u32>())
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), 500 * 29_518);
    }
}

// --- opening failures ---

fn open_error(city: Option<&Path>, asn: Option<&Path>) -> String {
    match GeoIp::open(city, asn) {
        Ok(_) => panic!("opening {city:?} / {asn:?} should fail"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn missing_file_names_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let missing = directory.path().join("nowhere-City.mmdb");
    let message = open_error(Some(&missing), None);
    assert!(message.contains(&missing.display().to_string()), "{message}");
    assert!(message.contains("no such file"), "{message}");
    assert!(matches!(GeoIp::open(None, Some(&missing)), Err(GeoError::Open { .. })));
}

#[test]
fn random_bytes_are_not_a_maxmind_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("random.mmdb");
    // A fixed linear congruential sequence: random-looking, same every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    let message = open_error(Some(&path), None);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not a MaxMind DB file"), "{message}");
}

#[test]
fn truncated_and_empty_files_are_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let original = std::fs::read(fixture("GeoIP2-City-Test.mmdb")).unwrap();
    let cases = [
        ("first-half.mmdb", original[..original.len() / 2].to_vec()),
        // Cuts into the metadata map that follows the marker.
        ("cut-metadata.mmdb", original[..original.len() - 40].to_vec()),
        ("empty.mmdb", Vec::new()),
    ];
    for (name, bytes) in cases {
        let path = directory.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let error = GeoIp::open(Some(&path), None)
            .err()
            .unwrap_or_else(|| panic!("{name} should not open"));
        assert!(matches!(error, GeoError::NotMaxMind { .. }), "{name}: {error}");
        assert!(error.to_string().contains(name), "{name}: {error}");
    }
}

#[test]
fn city_database_given_as_asn_fails_clearly() {
    let city = fixture("GeoIP2-City-Test.mmdb");
    let message = open_error(None, Some(&city));
    assert!(message.contains("GeoIP2-City-Test.mmdb"), "{message}");
    assert!(message.contains("\"GeoIP2-City\""), "{message}");
    assert!(message.contains("ASN"), "{message}");
}

#[test]
fn asn_and_other_databases_given_as_city_fail_clearly() {
    for name in ["GeoLite2-ASN-Test.mmdb", "GeoIP2-Anonymous-IP-Test.mmdb"] {
        let error = GeoIp::open(Some(&fixture(name)), None)
            .err()
            .unwrap_or_else(|| panic!("{name} is not a City db"));
        assert!(matches!(error, GeoError::WrongType { .. }), "{name}: {error}");
        assert!(error.to_string().contains(name), "{error}");
    }
}

// --- databases built by mmdb_build ---

#[test]
fn built_databases_round_trip_through_geoip_and_the_raw_reader() {
    let (cities, asns) = synthetic_world(2000);
    let city_bytes = build_city_db(&cities).unwrap();
    let asn_bytes = build_asn_db(&asns).unwrap();
    assert_eq!(
        city_bytes,
        build_city_db(&cities).unwrap(),
        "city bytes are deterministic"
    );
    assert_eq!(asn_bytes, build_asn_db(&asns).unwrap(), "asn bytes are deterministic");

    let city_reader = Reader::from_source(city_bytes.clone()).unwrap();
    let asn_reader = Reader::from_source(asn_bytes.clone()).unwrap();
    assert_eq!(city_reader.metadata().database_type, CITY_DATABASE_TYPE);
    assert_eq!(asn_reader.metadata().database_type, ASN_DATABASE_TYPE);
    assert_eq!(
        city_reader.metadata().ip_version,
        6,
        "IPv4 networks live in an IPv6 tree, as in real files"
    );

    let geo = GeoIp::from_bytes(Some(city_bytes), Some(asn_bytes)).unwrap();
    for index in (0..2000).step_by(37) {
        let address = synthetic_host(index, 77);
        let city_record = &cities[index];
        let asn_record = &asns[index];

        let info = geo.lookup(address);
        assert_eq!(info.class, NetClass::Public);
        assert_eq!(info.country.as_str(), city_record.country_code);
        assert_eq!(info.lat, city_record.latitude as f32);
        assert_eq!(info.lon, city_record.longitude as f32);
        assert_eq!(info.accuracy_km, city_record.accuracy_radius_km);
        assert_eq!(info.asn, asn_record.asn);
        let names = geo.names(address);
        assert_eq!(names.city.as_deref(), Some(city_record.city_name.as_str()));
        assert_eq!(names.country.as_deref(), Some(city_record.country_name.as_str()));
        assert_eq!(names.org.as_deref(), Some(asn_record.organization.as_str()));

        let raw_city: geoip2::City = city_reader.lookup(address).unwrap().decode().unwrap().unwrap();
        assert_eq!(raw_city.country.iso_code, Some(city_record.country_code.as_str()));
        assert_eq!(
            raw_city.registered_country.iso_code,
            Some(city_record.country_code.as_str())
        );
        assert_eq!(raw_city.city.geoname_id, Some(city_record.geoname_id));
        assert_eq!(raw_city.location.latitude, Some(city_record.latitude));
        assert_eq!(raw_city.location.longitude, Some(city_record.longitude));
        assert!(raw_city.continent.code.is_some());
        let raw_asn: geoip2::Asn = asn_reader.lookup(address).unwrap().decode().unwrap().unwrap();
        assert_eq!(raw_asn.autonomous_system_number, Some(asn_record.asn));
        let network = asn_reader.lookup(address).unwrap().network().unwrap();
        assert_eq!(network.to_string(), asn_record.network.to_string());
    }
    // Just past the last network: not covered.
    assert_eq!(geo.lookup(synthetic_host(2000, 1)).country, Country::UNKNOWN);
}

#[test]
fn built_database_opens_from_a_file_like_a_real_one() {
    let (cities, asns) = synthetic_world(50);
    let directory = tempfile::tempdir().unwrap();
    let city_path = directory.path().join("city.mmdb");
    let asn_path = directory.path().join("asn.mmdb");
    std::fs::write(&city_path, build_city_db(&cities).unwrap()).unwrap();
    std::fs::write(&asn_path, build_asn_db(&asns).unwrap()).unwrap();
    let from_files = GeoIp::open(Some(&city_path), Some(&asn_path)).unwrap();
    let from_bytes = GeoIp::from_bytes(
        Some(build_city_db(&cities).unwrap()),
        Some(build_asn_db(&asns).unwrap()),
    )
    .unwrap();
    for index in 0..50 {
        let address = synthetic_host(index, 1);
        assert_eq!(from_files.lookup(address), from_bytes.lookup(address));
        assert!(from_files.lookup(address).has_location);
    }
}

#[test]
fn built_ipv6_and_overlapping_networks_answer_most_specific() {
    let record = |network: &str, city: &str| CityRecord {
        network: network.parse().unwrap(),
        country_code: "DE".to_string(),
        country_name: "Germany".to_string(),
        city_name: city.to_string(),
        latitude: 50.0,
        longitude: 8.0,
        accuracy_radius_km: 50,
        geoname_id: 1,
    };
    let cities = [
        record("2a01:4f8:1::/48", "Falkenstein"),
        record("2a01:4f8::/32", "Nuremberg"),
    ];
    let asns = [AsnRecord {
        network: "2a01:4f8::/32".parse().unwrap(),
        asn: 24_940,
        organization: "Hetzner".into(),
    }];
    let geo = GeoIp::from_bytes(
        Some(build_city_db(&cities).unwrap()),
        Some(build_asn_db(&asns).unwrap()),
    )
    .unwrap();
    assert_eq!(geo.names(ip("2a01:4f8:1::9")).city.as_deref(), Some("Falkenstein"));
    assert_eq!(geo.names(ip("2a01:4f8:2::9")).city.as_deref(), Some("Nuremberg"));
    assert_eq!(geo.lookup(ip("2a01:4f8:2::9")).asn, 24_940);
    assert_eq!(geo.lookup(ip("2a01:4f9::1")).asn, 0);
}

// --- cache ---

/// Repeated public addresses of both families, mapped forms, private
/// addresses and misses, in a fixed order.
fn address_mix() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for round in 0..40_usize {
        addresses.push(ip("89.160.20.130"));
        addresses.push(ip("::ffff:89.160.20.130"));
        addresses.push(ip("81.2.69.142"));
        addresses.push(ip("2001:218::1"));
        addresses.push(ip("10.1.2.3"));
        addresses.push(ip("8.8.8.8"));
        addresses.push(IpAddr::V4(std::net::Ipv4Addr::new(
            216,
            160,
            83,
            (56 + round % 8) as u8,
        )));
        addresses.push(IpAddr::V4(std::net::Ipv4Addr::new(
            1,
            128,
            (round % 7) as u8,
            round as u8,
        )));
    }
    addresses
}

#[test]
fn cache_answers_equal_uncached_answers() {
    let geo = maxmind_geo();
    let addresses = address_mix();
    // Capacity 5 forces many clears; 4096 never clears; 0 never stores.
    for capacity in [0, 1, 5, 4096] {
        let mut cache = GeoCache::new(capacity);
        for &address in &addresses {
            assert_eq!(
                cache.lookup(&geo, address),
                geo.lookup(address),
                "{address} at capacity {capacity}"
            );
        }
        assert_eq!(cache.hits() + cache.misses(), addresses.len() as u64);
        assert!(cache.len() <= capacity);
        if capacity == 4096 {
            // 5 fixed + 8 Milton + 40 Telstra distinct addresses (mapped = plain).
            assert_eq!(cache.misses(), 5 + 8 + 40);
        }
    }
}
