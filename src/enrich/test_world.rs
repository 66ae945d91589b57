//! The made-up world that unit tests, integration tests and benches resolve
//! addresses in: one table of named places (a network each, with its city,
//! coordinates and provider) built into GeoIP City and ASN databases, and a
//! synthetic world of realistic size for benches and database tests.
//!
//! It lives in the library, not under `#[cfg(test)]`, because integration
//! tests and benches link the library as any user does; nothing outside tests
//! and benches uses it.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use super::GeoIp;
use super::mmdb_build::{AsnRecord, BuildError, CityRecord, build_asn_db, build_city_db};

/// One network of the hand-made world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    /// What tests call it (`"london"`).
    pub name: &'static str,
    /// CIDR; a string so that a bad one is the builder's error to report.
    pub network: &'static str,
    /// ISO 3166 alpha-2; also written as the country's name.
    pub country: &'static str,
    pub city: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub asn: u32,
    pub organization: &'static str,
}

/// Every named place of the tests. Cities sit where they are on Earth, so
/// distances and travel speeds between places are real ones; the networks
/// are made up, one /16 each in public space, so addresses classify as
/// public and resolve only to the place they belong to.
pub const PLACES: &[Place] = &[
    Place {
        name: "london",
        network: "25.10.0.0/16",
        country: "GB",
        city: "London",
        latitude: 51.5074,
        longitude: -0.1278,
        asn: 2856,
        organization: "British Telecommunications PLC",
    },
    Place {
        name: "manchester",
        network: "25.12.0.0/16",
        country: "GB",
        city: "Manchester",
        latitude: 53.4808,
        longitude: -2.2426,
        asn: 2856,
        organization: "British Telecommunications PLC",
    },
    Place {
        name: "dublin",
        network: "25.11.0.0/16",
        country: "IE",
        city: "Dublin",
        latitude: 53.3498,
        longitude: -6.2603,
        asn: 5466,
        organization: "Eircom Limited",
    },
    Place {
        name: "frankfurt_aws",
        network: "25.20.0.0/16",
        country: "DE",
        city: "Frankfurt am Main",
        latitude: 50.1109,
        longitude: 8.6821,
        asn: 16509,
        organization: "Amazon.com, Inc.",
    },
    Place {
        name: "virginia_aws",
        network: "25.21.0.0/16",
        country: "US",
        city: "Ashburn",
        latitude: 39.0438,
        longitude: -77.4874,
        asn: 16509,
        organization: "Amazon.com, Inc.",
    },
    Place {
        name: "saopaulo",
        network: "25.30.0.0/16",
        country: "BR",
        city: "Sao Paulo",
        latitude: -23.5505,
        longitude: -46.6333,
        asn: 28573,
        organization: "Claro NXT Telecomunicacoes Ltda",
    },
    Place {
        name: "sydney",
        network: "25.31.0.0/16",
        country: "AU",
        city: "Sydney",
        latitude: -33.8688,
        longitude: 151.2093,
        asn: 1221,
        organization: "Telstra Limited",
    },
    Place {
        name: "paris",
        network: "25.32.0.0/16",
        country: "FR",
        city: "Paris",
        latitude: 48.8566,
        longitude: 2.3522,
        asn: 3215,
        organization: "Orange S.A.",
    },
    // Other kinds of network in the cities above, for the risk of a
    // network's kind and for places (a network in a region).
    Place {
        name: "london_hosting",
        network: "25.40.0.0/16",
        country: "GB",
        city: "London",
        latitude: 51.5074,
        longitude: -0.1278,
        asn: 215_999,
        organization: "Thames VPS Hosting Ltd",
    },
    Place {
        name: "london_digitalocean",
        network: "25.41.0.0/16",
        country: "GB",
        city: "London",
        latitude: 51.5074,
        longitude: -0.1278,
        asn: 14061,
        organization: "DIGITALOCEAN-ASN",
    },
    Place {
        name: "london_cable",
        network: "25.42.0.0/16",
        country: "GB",
        city: "London",
        latitude: 51.5074,
        longitude: -0.1278,
        asn: 5089,
        organization: "Virgin Media Limited",
    },
    Place {
        name: "london_mobile",
        network: "25.43.0.0/16",
        country: "GB",
        city: "London",
        latitude: 51.5074,
        longitude: -0.1278,
        asn: 25135,
        organization: "Vodafone Limited",
    },
    Place {
        name: "ohio_aws",
        network: "25.22.0.0/16",
        country: "US",
        city: "Columbus",
        latitude: 39.9612,
        longitude: -82.9988,
        asn: 16509,
        organization: "Amazon.com, Inc.",
    },
];

/// A host address of the named place of [`PLACES`]; `None` for a name the
/// table does not have.
pub fn host(place: &str, host: u32) -> Option<IpAddr> {
    place_host(PLACES, place, host)
}

/// A host address of a place of `places`: `host` counts from the network's
/// second /24 (or from its first address + 1 for smaller networks), so small
/// numbers never give the network's own address.
fn place_host(places: &[Place], name: &str, host: u32) -> Option<IpAddr> {
    let place = places.iter().find(|place| place.name == name)?;
    match place.network.parse::<IpNet>().ok()? {
        IpNet::V4(net) => {
            let base = u32::from(net.network());
            let offset = if net.prefix_len() <= 23 { 256 } else { 1 };
            Some(IpAddr::V4(Ipv4Addr::from(base + offset + host)))
        }
        IpNet::V6(net) => Some(IpAddr::V6(net.network())),
    }
}

/// City and ASN databases of `places`; every place gets a 20 km accuracy
/// radius and a GeoNames id from the position of its city's first place in
/// the table.
pub fn place_databases(places: &[Place]) -> Result<(Vec<u8>, Vec<u8>), BuildError> {
    let mut cities = Vec::with_capacity(places.len());
    let mut asns = Vec::with_capacity(places.len());
    for (index, place) in places.iter().enumerate() {
        // Places in one city share its id, as networks of one city do in a
        // real City database.
        let first_of_city = places
            .iter()
            .position(|other| other.city == place.city && other.country == place.country)
            .unwrap_or(index);
        let network: IpNet = place.network.parse().map_err(|_| BuildError::InvalidRecord {
            network: IpNet::default(),
            problem: format!("`{}` is not a network", place.network),
        })?;
        cities.push(CityRecord {
            network,
            country_code: place.country.to_string(),
            country_name: place.country.to_string(),
            city_name: place.city.to_string(),
            latitude: place.latitude,
            longitude: place.longitude,
            accuracy_radius_km: 20,
            geoname_id: 1000 + first_of_city as u32,
        });
        asns.push(AsnRecord {
            network,
            asn: place.asn,
            organization: place.organization.to_string(),
        });
    }
    Ok((build_city_db(&cities)?, build_asn_db(&asns)?))
}

/// GeoIP over the databases of [`PLACES`].
///
/// # Panics
/// Never for the table as written: its networks and coordinates are valid,
/// which a test below holds.
pub fn geoip() -> GeoIp {
    let (city, asn) = place_databases(PLACES).expect("the places of the test world are valid");
    GeoIp::from_bytes(Some(city), Some(asn)).expect("databases built here open")
}

/// A deterministic set of City and ASN records covering `network_count`
/// public IPv4 /24s spread over a few dozen real-world cities, for benches
/// and tests that need a database of realistic size.
pub fn synthetic_world(network_count: usize) -> (Vec<CityRecord>, Vec<AsnRecord>) {
    const CITIES: [(&str, &str, &str, f64, f64); 24] = [
        ("US", "United States", "New York", 40.7128, -74.0060),
        ("US", "United States", "San Francisco", 37.7749, -122.4194),
        ("US", "United States", "Chicago", 41.8781, -87.6298),
        ("CA", "Canada", "Toronto", 43.6532, -79.3832),
        ("BR", "Brazil", "Sao Paulo", -23.5505, -46.6333),
        ("AR", "Argentina", "Buenos Aires", -34.6037, -58.3816),
        ("GB", "United Kingdom", "London", 51.5074, -0.1278),
        ("DE", "Germany", "Frankfurt am Main", 50.1109, 8.6821),
        ("FR", "France", "Paris", 48.8566, 2.3522),
        ("NL", "Netherlands", "Amsterdam", 52.3676, 4.9041),
        ("SE", "Sweden", "Stockholm", 59.3293, 18.0686),
        ("PL", "Poland", "Warsaw", 52.2297, 21.0122),
        ("RU", "Russia", "Moscow", 55.7558, 37.6173),
        ("TR", "Turkey", "Istanbul", 41.0082, 28.9784),
        ("IN", "India", "Mumbai", 19.0760, 72.8777),
        ("SG", "Singapore", "Singapore", 1.3521, 103.8198),
        ("JP", "Japan", "Tokyo", 35.6762, 139.6503),
        ("KR", "South Korea", "Seoul", 37.5665, 126.9780),
        ("CN", "China", "Shanghai", 31.2304, 121.4737),
        ("AU", "Australia", "Sydney", -33.8688, 151.2093),
        ("NZ", "New Zealand", "Auckland", -36.8485, 174.7633),
        ("ZA", "South Africa", "Johannesburg", -26.2041, 28.0473),
        ("NG", "Nigeria", "Lagos", 6.5244, 3.3792),
        ("EG", "Egypt", "Cairo", 30.0444, 31.2357),
    ];
    let mut city_records = Vec::with_capacity(network_count);
    let mut asn_records = Vec::with_capacity(network_count);
    for index in 0..network_count {
        let network = synthetic_network(index);
        // A multiplicative step spreads neighbouring networks over cities and
        // providers instead of giving each city one contiguous block.
        let city_index = (index * 7 + index / CITIES.len()) % CITIES.len();
        let (country_code, country_name, city_name, latitude, longitude) = CITIES[city_index];
        city_records.push(CityRecord {
            network,
            country_code: country_code.to_string(),
            country_name: country_name.to_string(),
            city_name: city_name.to_string(),
            latitude,
            longitude,
            accuracy_radius_km: [5, 20, 50, 100, 500][index % 5],
            geoname_id: 1_000_000 + city_index as u32,
        });
        let provider = (index * 13) % 97;
        asn_records.push(AsnRecord {
            network,
            asn: 64_512 + provider as u32,
            organization: format!("Synthetic Provider {provider}"),
        });
    }
    (city_records, asn_records)
}

/// The `index`-th /24 of the synthetic world: walks upward from 11.0.0.0
/// through ordinary public space and wraps before 100.0.0.0, so it never
/// reaches carrier-grade NAT or any other special range.
pub fn synthetic_network(index: usize) -> IpNet {
    const FIRST: u32 = 11 << 24;
    const NETWORKS_BELOW_100: usize = (100 - 11) << 16;
    let offset = ((index % NETWORKS_BELOW_100) as u32) << 8;
    let address = Ipv4Addr::from(FIRST + offset);
    IpNet::V4(Ipv4Net::new(address, 24).unwrap_or_default())
}

/// A host address inside the `index`-th synthetic network.
pub fn synthetic_host(index: usize, host: u8) -> IpAddr {
    match synthetic_network(index) {
        IpNet::V4(v4) => {
            let network = u32::from(v4.network());
            IpAddr::V4(Ipv4Addr::from(network | u32::from(host)))
        }
        IpNet::V6(v6) => IpAddr::V6(v6.network()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_networks_are_distinct_and_public() {
        let networks: std::collections::HashSet<IpNet> = (0..5000).map(synthetic_network).collect();
        assert_eq!(networks.len(), 5000);
        for index in [0, 1, 255, 4999] {
            let host = synthetic_host(index, 9);
            assert!(synthetic_network(index).contains(&host));
            assert_eq!(crate::enrich::netclass::classify(host), crate::enrich::NetClass::Public);
        }
    }

    #[test]
    fn hand_made_places_resolve_to_their_city_and_provider() {
        let geo = geoip();
        let sydney = host("sydney", 7).unwrap();
        assert_eq!(sydney.to_string(), "25.31.1.7");
        let info = geo.lookup(sydney);
        assert_eq!((info.country.as_str(), info.asn), ("AU", 1221));
        assert!(host("atlantis", 1).is_none());
        let bad = [Place {
            name: "x",
            network: "not a network",
            country: "GB",
            city: "X",
            latitude: 0.0,
            longitude: 0.0,
            asn: 1,
            organization: "X",
        }];
        assert!(place_databases(&bad).is_err());
    }

    #[test]
    fn every_place_has_its_own_name_and_network() {
        let names: std::collections::HashSet<&str> = PLACES.iter().map(|place| place.name).collect();
        let networks: std::collections::HashSet<&str> = PLACES.iter().map(|place| place.network).collect();
        assert_eq!(names.len(), PLACES.len());
        assert_eq!(networks.len(), PLACES.len());
        let geo = geoip();
        for place in PLACES {
            let address = host(place.name, 1).unwrap();
            let info = geo.lookup(address);
            assert_eq!(info.country.as_str(), place.country, "{}", place.name);
            assert_eq!(info.asn, place.asn, "{}", place.name);
            assert_eq!(geo.names(address).city.as_deref(), Some(place.city), "{}", place.name);
        }
    }
}
