//! Builds small MaxMind-format City and ASN databases, in the real GeoIP2
//! record layout: the generator writes its world with them, and the test
//! world ([`super::test_world`]) builds the databases tests and benches use.
//!
//! The records are written with the same keys and value types MaxMind uses
//! (`country.iso_code` as a string, `location.accuracy_radius` as uint16,
//! `autonomous_system_number` as uint32, ...), so the `maxminddb` crate's
//! `geoip2::City` and `geoip2::Asn` decode them and the lookup code is exercised
//! exactly as it is against a purchased file.

use std::time::{Duration, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net};
use mmdb_writer::{IpVersion, Writer};
use serde::Serialize;

/// `database_type` written into built City databases. It names the layout the
/// records follow, so readers (ours and other tools) treat the file as a City
/// database; the description says the contents are synthetic.
pub const CITY_DATABASE_TYPE: &str = "GeoIP2-City";

/// `database_type` written into built ASN databases.
pub const ASN_DATABASE_TYPE: &str = "GeoLite2-ASN";

/// A fixed build time: the wall clock would make two builds of the same
/// records differ, and reproducible bytes are what tests and fixtures need.
const BUILD_EPOCH_SECONDS: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

/// One network of a City database.
#[derive(Debug, Clone, PartialEq)]
pub struct CityRecord {
    pub network: IpNet,
    /// ISO 3166 alpha-2 code; empty when the country is not known.
    pub country_code: String,
    /// English country name; empty to leave it out.
    pub country_name: String,
    /// English city name; empty to leave it out.
    pub city_name: String,
    /// Degrees, -90..=90.
    pub latitude: f64,
    /// Degrees, -180..=180.
    pub longitude: f64,
    pub accuracy_radius_km: u16,
    /// GeoNames id of the city; 0 to leave it out.
    pub geoname_id: u32,
}

/// One network of an ASN database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnRecord {
    pub network: IpNet,
    pub asn: u32,
    /// Organisation name; empty to leave it out.
    pub organization: String,
}

/// Why a database could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid record for network {network}: {problem}")]
    InvalidRecord { network: IpNet, problem: String },
    #[error("cannot insert network {network} into the database: {source}")]
    Insert {
        network: IpNet,
        #[source]
        source: mmdb_writer::Error,
    },
    #[error("cannot serialize the database: {0}")]
    Serialize(#[source] mmdb_writer::Error),
}

/// Builds a GeoIP2-City layout database from `records`.
///
/// When networks overlap, the more specific one wins whatever the input order
/// (as in real files); for the same network the later record wins. The output
/// is an IPv6-tree database, with IPv4 networks stored under `::/96` and
/// aliased from `::ffff:0:0/96`, like MaxMind's own files.
pub fn build_city_db(records: &[CityRecord]) -> Result<Vec<u8>, BuildError> {
    let mut writer = new_writer(
        CITY_DATABASE_TYPE,
        "keywatch synthetic City database (not real geolocation)",
    );
    for record in in_insertion_order(records, |record| record.network) {
        let network = storable_network(record.network);
        let value = city_value(record)?;
        writer
            .insert(network, &value)
            .map_err(|source| BuildError::Insert { network, source })?;
    }
    writer.to_bytes().map_err(BuildError::Serialize)
}

/// Builds a GeoLite2-ASN layout database from `records`; overlap and ordering
/// rules as for [`build_city_db`].
pub fn build_asn_db(records: &[AsnRecord]) -> Result<Vec<u8>, BuildError> {
    let mut writer = new_writer(
        ASN_DATABASE_TYPE,
        "keywatch synthetic ASN database (not real routing data)",
    );
    for record in in_insertion_order(records, |record| record.network) {
        let network = storable_network(record.network);
        if record.asn == 0 {
            return Err(BuildError::InvalidRecord {
                network,
                problem: "AS number 0 is reserved and means unknown to the reader".to_string(),
            });
        }
        let value = AsnValue {
            autonomous_system_number: record.asn,
            autonomous_system_organization: non_empty(&record.organization),
        };
        writer
            .insert(network, &value)
            .map_err(|source| BuildError::Insert { network, source })?;
    }
    writer.to_bytes().map_err(BuildError::Serialize)
}

fn new_writer(database_type: &str, description: &str) -> Writer {
    Writer::builder(database_type)
        .ip_version(IpVersion::V6)
        .description(&[("en", description)])
        .build_epoch(UNIX_EPOCH + Duration::from_secs(BUILD_EPOCH_SECONDS))
        .build()
}

/// Broad networks first, so a later more specific insert overrides the part
/// of the broad one it covers; the sort is stable, so duplicates keep input
/// order and the last one wins.
fn in_insertion_order<T>(records: &[T], network_of: impl Fn(&T) -> IpNet) -> Vec<&T> {
    let mut ordered: Vec<&T> = records.iter().collect();
    ordered.sort_by_key(|record| {
        let network = storable_network(network_of(record));
        (network.prefix_len_in_tree(), network.trunc())
    });
    ordered
}

/// The writer refuses IPv4-mapped IPv6 networks (that range aliases the IPv4
/// subtree), so store them as the IPv4 network they mean.
fn storable_network(network: IpNet) -> IpNet {
    if let IpNet::V6(v6) = network
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4_network) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4_network.trunc());
    }
    network.trunc()
}

/// Prefix length as a position in the IPv6 tree, so that IPv4 and IPv6
/// networks sort on one scale.
trait TreePrefix {
    fn prefix_len_in_tree(&self) -> u8;
}

impl TreePrefix for IpNet {
    fn prefix_len_in_tree(&self) -> u8 {
        match self {
            IpNet::V4(v4) => 96 + v4.prefix_len(),
            IpNet::V6(v6) => v6.prefix_len(),
        }
    }
}

#[derive(Serialize)]
struct EnglishName<'a> {
    en: &'a str,
}

#[derive(Serialize)]
struct CityPart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    geoname_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    names: Option<EnglishName<'a>>,
}

#[derive(Serialize)]
struct ContinentPart {
    code: &'static str,
}

#[derive(Serialize)]
struct CountryPart<'a> {
    iso_code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    names: Option<EnglishName<'a>>,
}

#[derive(Serialize)]
struct LocationPart {
    accuracy_radius: u16,
    latitude: f64,
    longitude: f64,
}

#[derive(Serialize)]
struct CityValue<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    city: Option<CityPart<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    continent: Option<ContinentPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<CountryPart<'a>>,
    location: LocationPart,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_country: Option<CountryPart<'a>>,
}

#[derive(Serialize)]
struct AsnValue<'a> {
    autonomous_system_number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    autonomous_system_organization: Option<&'a str>,
}

fn city_value(record: &CityRecord) -> Result<CityValue<'_>, BuildError> {
    let invalid = |problem: String| BuildError::InvalidRecord {
        network: record.network,
        problem,
    };
    if !(record.latitude.is_finite() && (-90.0..=90.0).contains(&record.latitude)) {
        return Err(invalid(format!("latitude {} is outside -90..=90", record.latitude)));
    }
    if !(record.longitude.is_finite() && (-180.0..=180.0).contains(&record.longitude)) {
        return Err(invalid(format!("longitude {} is outside -180..=180", record.longitude)));
    }
    let country_code = record.country_code.as_str();
    let code_is_valid = country_code.len() == 2 && country_code.bytes().all(|byte| byte.is_ascii_uppercase());
    if !country_code.is_empty() && !code_is_valid {
        return Err(invalid(format!(
            "country code {country_code:?} is not two upper-case ISO 3166 letters"
        )));
    }

    let has_city = !record.city_name.is_empty() || record.geoname_id != 0;
    let city = has_city.then(|| CityPart {
        geoname_id: (record.geoname_id != 0).then_some(record.geoname_id),
        names: non_empty(&record.city_name).map(|en| EnglishName { en }),
    });
    let country = || {
        (!country_code.is_empty()).then(|| CountryPart {
            iso_code: country_code,
            names: non_empty(&record.country_name).map(|en| EnglishName { en }),
        })
    };
    Ok(CityValue {
        city,
        continent: continent_of(country_code).map(|code| ContinentPart { code }),
        country: country(),
        location: LocationPart {
            accuracy_radius: record.accuracy_radius_km,
            latitude: record.latitude,
            longitude: record.longitude,
        },
        // Synthetic networks are registered where they are used; real files
        // differ for mobile and VPN ranges, which the reader handles anyway.
        registered_country: country(),
    })
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Continent code (as in GeoIP2 `continent.code`) of an ISO 3166 country.
fn continent_of(country_code: &str) -> Option<&'static str> {
    // Space-separated so the table stays readable and easy to check by eye.
    const TABLE: [(&str, &str); 7] = [
        (
            "AF",
            "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG ML MR MU MW \
             MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
        ),
        ("AN", "AQ BV GS HM TF"),
        (
            "AS",
            "AE AF AM AZ BD BH BN BT CC CN CX GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV \
             MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE",
        ),
        (
            "EU",
            "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU LV MC \
             MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
        ),
        (
            "NA",
            "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI PA PM PR SV \
             SX TC TT US VC VG VI",
        ),
        (
            "OC",
            "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
        ),
        ("SA", "AR BO BR CL CO EC FK GF GY PE PY SR UY VE"),
    ];
    if country_code.len() != 2 {
        return None;
    }
    TABLE
        .iter()
        .find(|(_, countries)| countries.split_ascii_whitespace().any(|code| code == country_code))
        .map(|(continent, _)| *continent)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::enrich::test_world::synthetic_world;
    use maxminddb::{Reader, geoip2};

    fn london() -> CityRecord {
        CityRecord {
            network: "81.2.69.0/24".parse().unwrap(),
            country_code: "GB".to_string(),
            country_name: "United Kingdom".to_string(),
            city_name: "London".to_string(),
            latitude: 51.5142,
            longitude: -0.0931,
            accuracy_radius_km: 10,
            geoname_id: 2_643_743,
        }
    }

    #[test]
    fn city_record_decodes_with_the_geoip2_layout() {
        let bytes = build_city_db(&[london()]).unwrap();
        let reader = Reader::from_source(bytes).unwrap();
        assert_eq!(reader.metadata().database_type, CITY_DATABASE_TYPE);
        assert_eq!(reader.metadata().ip_version, 6);
        let result = reader.lookup("81.2.69.7".parse().unwrap()).unwrap();
        let city: geoip2::City = result.decode().unwrap().unwrap();
        assert_eq!(city.city.names.english, Some("London"));
        assert_eq!(city.city.geoname_id, Some(2_643_743));
        assert_eq!(city.country.iso_code, Some("GB"));
        assert_eq!(city.country.names.english, Some("United Kingdom"));
        assert_eq!(city.registered_country.iso_code, Some("GB"));
        assert_eq!(city.continent.code, Some("EU"));
        assert_eq!(city.location.latitude, Some(51.5142));
        assert_eq!(city.location.longitude, Some(-0.0931));
        assert_eq!(city.location.accuracy_radius, Some(10));
    }

    #[test]
    fn ipv4_network_answers_through_the_mapped_form_too() {
        let bytes = build_city_db(&[london()]).unwrap();
        let reader = Reader::from_source(bytes).unwrap();
        let mapped: IpAddr = "::ffff:81.2.69.7".parse().unwrap();
        let city: geoip2::City = reader.lookup(mapped).unwrap().decode().unwrap().unwrap();
        assert_eq!(city.country.iso_code, Some("GB"));
        let outside = reader.lookup("81.2.70.1".parse().unwrap()).unwrap();
        assert!(!outside.has_data());
    }

    #[test]
    fn mapped_ipv6_network_is_stored_as_ipv4() {
        let mut record = london();
        record.network = "::ffff:81.2.69.0/120".parse().unwrap();
        let bytes = build_city_db(&[record]).unwrap();
        let reader = Reader::from_source(bytes).unwrap();
        assert!(reader.lookup("81.2.69.200".parse().unwrap()).unwrap().has_data());
    }

    #[test]
    fn more_specific_network_wins_whatever_the_input_order() {
        let broad = CityRecord {
            network: "81.2.0.0/16".parse().unwrap(),
            city_name: "Broad".to_string(),
            ..london()
        };
        let forward = build_city_db(&[broad.clone(), london()]).unwrap();
        let backward = build_city_db(&[london(), broad]).unwrap();
        assert_eq!(forward, backward);
        let reader = Reader::from_source(forward).unwrap();
        let inner: geoip2::City = reader
            .lookup("81.2.69.1".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        let outer: geoip2::City = reader
            .lookup("81.2.1.1".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert_eq!(inner.city.names.english, Some("London"));
        assert_eq!(outer.city.names.english, Some("Broad"));
    }

    #[test]
    fn empty_names_are_left_out() {
        let record = CityRecord {
            country_code: String::new(),
            country_name: String::new(),
            city_name: String::new(),
            geoname_id: 0,
            ..london()
        };
        let reader = Reader::from_source(build_city_db(&[record]).unwrap()).unwrap();
        let city: geoip2::City = reader
            .lookup("81.2.69.1".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert!(city.city.is_empty());
        assert!(city.country.is_empty());
        assert!(city.continent.is_empty());
        assert_eq!(city.location.latitude, Some(51.5142));
    }

    #[test]
    fn invalid_records_are_rejected_with_the_network() {
        let bad_latitude = CityRecord {
            latitude: 91.0,
            ..london()
        };
        let message = build_city_db(&[bad_latitude]).unwrap_err().to_string();
        assert!(
            message.contains("81.2.69.0/24") && message.contains("latitude"),
            "{message}"
        );

        let bad_code = CityRecord {
            country_code: "gbr".to_string(),
            ..london()
        };
        assert!(matches!(
            build_city_db(&[bad_code]),
            Err(BuildError::InvalidRecord { .. })
        ));

        let zero_asn = AsnRecord {
            network: "81.2.69.0/24".parse().unwrap(),
            asn: 0,
            organization: String::new(),
        };
        assert!(matches!(
            build_asn_db(&[zero_asn]),
            Err(BuildError::InvalidRecord { .. })
        ));
    }

    #[test]
    fn asn_record_decodes_with_the_geolite2_layout() {
        let records = [AsnRecord {
            network: "2a00:1450::/32".parse().unwrap(),
            asn: 15_169,
            organization: "GOOGLE".to_string(),
        }];
        let reader = Reader::from_source(build_asn_db(&records).unwrap()).unwrap();
        assert_eq!(reader.metadata().database_type, ASN_DATABASE_TYPE);
        let asn: geoip2::Asn = reader
            .lookup("2a00:1450::1".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert_eq!(asn.autonomous_system_number, Some(15_169));
        assert_eq!(asn.autonomous_system_organization, Some("GOOGLE"));
    }

    #[test]
    fn same_records_give_the_same_bytes() {
        let (cities, asns) = synthetic_world(300);
        assert_eq!(build_city_db(&cities).unwrap(), build_city_db(&cities).unwrap());
        assert_eq!(build_asn_db(&asns).unwrap(), build_asn_db(&asns).unwrap());
    }

    #[test]
    fn built_databases_pass_the_reader_verifier() {
        let (cities, asns) = synthetic_world(500);
        Reader::from_source(build_city_db(&cities).unwrap())
            .unwrap()
            .verify()
            .unwrap();
        Reader::from_source(build_asn_db(&asns).unwrap())
            .unwrap()
            .verify()
            .unwrap();
    }

    #[test]
    fn continent_table_knows_common_countries_and_not_junk() {
        assert_eq!(continent_of("US"), Some("NA"));
        assert_eq!(continent_of("BR"), Some("SA"));
        assert_eq!(continent_of("AU"), Some("OC"));
        assert_eq!(continent_of("JP"), Some("AS"));
        assert_eq!(continent_of("NG"), Some("AF"));
        assert_eq!(continent_of("DE"), Some("EU"));
        assert_eq!(continent_of("AQ"), Some("AN"));
        assert_eq!(continent_of("ZZ"), None);
        assert_eq!(continent_of("U"), None);
    }
}
