//! The generator's world: real cities with their coordinates, and the
//! networks (clouds, hosting, VPN egress, ISPs, mobile carriers) present in
//! them, each given a /24 of ordinary public IPv4 space.
//!
//! The world is the same for every seed, so the GeoIP databases written next
//! to the events depend only on the generator version. Providers carry their
//! real AS numbers and organisation names so evidence in alerts reads like it
//! does in production; the address blocks are plausible for each provider but
//! are not a copy of anyone's routing table.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use crate::enrich::mmdb_build::{AsnRecord, CityRecord};

/// One real city.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct City {
    /// Short code used by the provider tables below (airport-style).
    pub code: &'static str,
    pub country_code: &'static str,
    pub country_name: &'static str,
    pub name: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub geoname_id: u32,
    /// Offset from UTC in January, in minutes; drives the local business day.
    pub utc_offset_minutes: i32,
}

/// What kind of network an address is on: it decides who plausibly uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkKind {
    Cloud,
    Hosting,
    Vpn,
    Isp,
    Mobile,
}

/// One autonomous system and where it has addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    pub asn: u32,
    pub organization: &'static str,
    pub kind: NetworkKind,
    /// First two octets of the /16 its /24s are carved from.
    pub block: [u8; 2],
    /// Space-separated city codes.
    pub cities: &'static str,
}

macro_rules! city {
    ($code:literal, $cc:literal, $country:literal, $name:literal, $lat:literal, $lon:literal, $geo:literal, $off:literal) => {
        City {
            code: $code,
            country_code: $cc,
            country_name: $country,
            name: $name,
            latitude: $lat,
            longitude: $lon,
            geoname_id: $geo,
            utc_offset_minutes: $off,
        }
    };
}

pub const CITIES: &[City] = &[
    city!(
        "NYC",
        "US",
        "United States",
        "New York",
        40.7128,
        -74.0060,
        5_128_581,
        -300
    ),
    city!(
        "IAD",
        "US",
        "United States",
        "Ashburn",
        39.0438,
        -77.4874,
        4_744_870,
        -300
    ),
    city!(
        "CMH",
        "US",
        "United States",
        "Columbus",
        39.9612,
        -82.9988,
        4_509_177,
        -300
    ),
    city!(
        "ORD",
        "US",
        "United States",
        "Chicago",
        41.8781,
        -87.6298,
        4_887_398,
        -360
    ),
    city!(
        "DFW",
        "US",
        "United States",
        "Dallas",
        32.7767,
        -96.7970,
        4_684_888,
        -360
    ),
    city!(
        "SFO",
        "US",
        "United States",
        "San Francisco",
        37.7749,
        -122.4194,
        5_391_959,
        -480
    ),
    city!(
        "LAX",
        "US",
        "United States",
        "Los Angeles",
        34.0522,
        -118.2437,
        5_368_361,
        -480
    ),
    city!(
        "SEA",
        "US",
        "United States",
        "Seattle",
        47.6062,
        -122.3321,
        5_809_844,
        -480
    ),
    city!(
        "PDX",
        "US",
        "United States",
        "Portland",
        45.5152,
        -122.6784,
        5_746_545,
        -480
    ),
    city!("YYZ", "CA", "Canada", "Toronto", 43.6532, -79.3832, 6_167_865, -300),
    city!("YUL", "CA", "Canada", "Montreal", 45.5017, -73.5673, 6_077_243, -300),
    city!("MEX", "MX", "Mexico", "Mexico City", 19.4326, -99.1332, 3_530_597, -360),
    city!("GRU", "BR", "Brazil", "Sao Paulo", -23.5505, -46.6333, 3_448_439, -180),
    city!(
        "EZE",
        "AR",
        "Argentina",
        "Buenos Aires",
        -34.6037,
        -58.3816,
        3_435_910,
        -180
    ),
    city!("SCL", "CL", "Chile", "Santiago", -33.4489, -70.6693, 3_871_336, -180),
    city!("BOG", "CO", "Colombia", "Bogota", 4.7110, -74.0721, 3_688_689, -300),
    city!("LHR", "GB", "United Kingdom", "London", 51.5074, -0.1278, 2_643_743, 0),
    city!(
        "MAN",
        "GB",
        "United Kingdom",
        "Manchester",
        53.4808,
        -2.2426,
        2_643_123,
        0
    ),
    city!("DUB", "IE", "Ireland", "Dublin", 53.3498, -6.2603, 2_964_574, 0),
    city!("CDG", "FR", "France", "Paris", 48.8566, 2.3522, 2_988_507, 60),
    city!(
        "FRA",
        "DE",
        "Germany",
        "Frankfurt am Main",
        50.1109,
        8.6821,
        2_925_533,
        60
    ),
    city!("BER", "DE", "Germany", "Berlin", 52.5200, 13.4050, 2_950_159, 60),
    city!("MUC", "DE", "Germany", "Munich", 48.1351, 11.5820, 2_867_714, 60),
    city!("AMS", "NL", "Netherlands", "Amsterdam", 52.3676, 4.9041, 2_759_794, 60),
    city!("ARN", "SE", "Sweden", "Stockholm", 59.3293, 18.0686, 2_673_730, 60),
    city!("HEL", "FI", "Finland", "Helsinki", 60.1699, 24.9384, 658_225, 120),
    city!("WAW", "PL", "Poland", "Warsaw", 52.2297, 21.0122, 756_135, 60),
    city!("MAD", "ES", "Spain", "Madrid", 40.4168, -3.7038, 3_117_735, 60),
    city!("MXP", "IT", "Italy", "Milan", 45.4642, 9.1900, 3_173_435, 60),
    city!("ZRH", "CH", "Switzerland", "Zurich", 47.3769, 8.5417, 2_657_896, 60),
    city!("OTP", "RO", "Romania", "Bucharest", 44.4268, 26.1025, 683_506, 120),
    city!("KBP", "UA", "Ukraine", "Kyiv", 50.4501, 30.5234, 703_448, 120),
    city!("SVO", "RU", "Russia", "Moscow", 55.7558, 37.6173, 524_901, 180),
    city!("IST", "TR", "Turkey", "Istanbul", 41.0082, 28.9784, 745_044, 180),
    city!("TLV", "IL", "Israel", "Tel Aviv", 32.0853, 34.7818, 293_397, 120),
    city!(
        "DXB",
        "AE",
        "United Arab Emirates",
        "Dubai",
        25.2048,
        55.2708,
        292_223,
        240
    ),
    city!("BOM", "IN", "India", "Mumbai", 19.0760, 72.8777, 1_275_339, 330),
    city!("BLR", "IN", "India", "Bengaluru", 12.9716, 77.5946, 1_277_333, 330),
    city!("SIN", "SG", "Singapore", "Singapore", 1.3521, 103.8198, 1_880_252, 480),
    city!("NRT", "JP", "Japan", "Tokyo", 35.6762, 139.6503, 1_850_147, 540),
    city!("KIX", "JP", "Japan", "Osaka", 34.6937, 135.5023, 1_853_909, 540),
    city!("ICN", "KR", "South Korea", "Seoul", 37.5665, 126.9780, 1_835_848, 540),
    city!("HKG", "HK", "Hong Kong", "Hong Kong", 22.3193, 114.1694, 1_819_729, 480),
    city!("PEK", "CN", "China", "Beijing", 39.9042, 116.4074, 1_816_670, 480),
    city!("PVG", "CN", "China", "Shanghai", 31.2304, 121.4737, 1_796_236, 480),
    city!(
        "SGN",
        "VN",
        "Vietnam",
        "Ho Chi Minh City",
        10.8231,
        106.6297,
        1_566_083,
        420
    ),
    city!("CGK", "ID", "Indonesia", "Jakarta", -6.2088, 106.8456, 1_642_911, 420),
    city!("BKK", "TH", "Thailand", "Bangkok", 13.7563, 100.5018, 1_609_350, 420),
    city!("MNL", "PH", "Philippines", "Manila", 14.5995, 120.9842, 1_701_668, 480),
    city!("SYD", "AU", "Australia", "Sydney", -33.8688, 151.2093, 2_147_714, 660),
    city!(
        "MEL",
        "AU",
        "Australia",
        "Melbourne",
        -37.8136,
        144.9631,
        2_158_177,
        660
    ),
    city!(
        "AKL",
        "NZ",
        "New Zealand",
        "Auckland",
        -36.8485,
        174.7633,
        2_193_733,
        780
    ),
    city!(
        "JNB",
        "ZA",
        "South Africa",
        "Johannesburg",
        -26.2041,
        28.0473,
        993_800,
        120
    ),
    city!("LOS", "NG", "Nigeria", "Lagos", 6.5244, 3.3792, 2_332_459, 60),
    city!("NBO", "KE", "Kenya", "Nairobi", -1.2921, 36.8219, 184_745, 180),
    city!("CAI", "EG", "Egypt", "Cairo", 30.0444, 31.2357, 360_630, 120),
];

macro_rules! provider {
    ($asn:literal, $org:literal, $kind:ident, [$a:literal, $b:literal], $cities:literal) => {
        Provider {
            asn: $asn,
            organization: $org,
            kind: NetworkKind::$kind,
            block: [$a, $b],
            cities: $cities,
        }
    };
}

pub const PROVIDERS: &[Provider] = &[
    // Clouds: where services run.
    provider!(
        16509,
        "AMAZON-02",
        Cloud,
        [52, 95],
        "IAD CMH SFO PDX YUL GRU DUB LHR FRA CDG ARN MXP ZRH MAD TLV DXB BOM SIN NRT KIX ICN HKG CGK SYD JNB"
    ),
    provider!(
        396982,
        "GOOGLE-CLOUD-PLATFORM",
        Cloud,
        [34, 118],
        "IAD CMH ORD DFW LAX PDX YUL YYZ GRU SCL LHR FRA AMS HEL WAW MXP MAD ZRH CDG TLV BOM SIN CGK NRT KIX ICN HKG SYD MEL JNB"
    ),
    provider!(
        8075,
        "MICROSOFT-CORP-MSN-AS-BLOCK",
        Cloud,
        [20, 42],
        "IAD ORD DFW SFO SEA YYZ GRU DUB AMS LHR CDG FRA ZRH ARN WAW SIN HKG NRT ICN BOM SYD JNB DXB"
    ),
    provider!(
        31898,
        "ORACLE-BMC-31898",
        Cloud,
        [129, 146],
        "IAD SFO FRA LHR NRT SYD GRU"
    ),
    provider!(
        45102,
        "Alibaba US Technology Co., Ltd.",
        Cloud,
        [47, 74],
        "SIN HKG FRA IAD NRT CGK"
    ),
    // Hosting: cheap servers, where scripts and stolen keys often run.
    provider!(
        14061,
        "DIGITALOCEAN-ASN",
        Hosting,
        [159, 65],
        "NYC SFO YYZ LHR FRA AMS SIN BLR SYD"
    ),
    provider!(16276, "OVH SAS", Hosting, [51, 75], "CDG FRA LHR WAW YUL SIN SYD IAD"),
    provider!(24940, "Hetzner Online GmbH", Hosting, [95, 216], "MUC HEL IAD PDX SIN"),
    provider!(
        63949,
        "Akamai Connected Cloud",
        Hosting,
        [172, 104],
        "NYC DFW ORD LAX SEA YYZ LHR FRA CDG AMS ARN MXP MAD BOM SIN NRT KIX CGK SYD MEL GRU"
    ),
    provider!(
        20473,
        "AS-CHOOPA",
        Hosting,
        [45, 76],
        "NYC ORD DFW LAX SEA YYZ MEX GRU SCL LHR CDG FRA AMS ARN WAW MAD TLV BOM BLR SIN NRT KIX ICN SYD MEL JNB"
    ),
    provider!(51167, "Contabo GmbH", Hosting, [161, 97], "MUC LHR SIN NRT SYD"),
    provider!(60781, "LeaseWeb Netherlands B.V.", Hosting, [212, 32], "AMS"),
    provider!(49505, "Selectel", Hosting, [92, 53], "SVO"),
    provider!(
        132203,
        "Tencent Building, Kejizhongyi Avenue",
        Hosting,
        [43, 128],
        "PVG PEK HKG SIN ICN NRT BKK CGK FRA"
    ),
    // VPN and secure-web-gateway egress.
    provider!(
        9009,
        "M247 Europe SRL",
        Vpn,
        [146, 70],
        "OTP LHR AMS FRA CDG MXP MAD ARN WAW ZRH NYC LAX ORD YYZ NRT SIN SYD HKG GRU JNB"
    ),
    provider!(
        60068,
        "Datacamp Limited",
        Vpn,
        [89, 187],
        "LHR AMS FRA CDG NYC LAX SIN NRT"
    ),
    provider!(
        53813,
        "ZSCALER-INC",
        Vpn,
        [165, 225],
        "SFO ORD NYC DFW IAD LHR AMS FRA CDG ZRH ARN MAD MXP NRT SIN BOM SYD GRU JNB TLV DXB"
    ),
    provider!(
        13335,
        "CLOUDFLARENET",
        Vpn,
        [104, 28],
        "SFO NYC LHR FRA AMS SIN NRT SYD GRU"
    ),
    // Fixed-line ISPs: offices and people.
    provider!(7922, "COMCAST-7922", Isp, [73, 15], "NYC ORD SFO SEA DFW PDX LAX IAD"),
    provider!(701, "UUNET", Isp, [71, 105], "NYC IAD DFW LAX"),
    provider!(20115, "CHARTER-20115", Isp, [97, 100], "CMH DFW LAX NYC"),
    provider!(7018, "ATT-INTERNET4", Isp, [99, 31], "DFW ORD SFO LAX"),
    provider!(812, "ROGERS-COMMUNICATIONS", Isp, [99, 224], "YYZ YUL"),
    provider!(8151, "UNINET", Isp, [189, 203], "MEX"),
    provider!(28573, "Claro NXT Telecomunicacoes Ltda", Isp, [177, 32], "GRU"),
    provider!(7303, "Telecom Argentina S.A.", Isp, [181, 46], "EZE"),
    provider!(27651, "ENTEL CHILE S.A.", Isp, [190, 54], "SCL"),
    provider!(10620, "Telmex Colombia S.A.", Isp, [186, 28], "BOG"),
    provider!(2856, "British Telecommunications PLC", Isp, [86, 128], "LHR MAN"),
    provider!(5089, "Virgin Media Limited", Isp, [82, 32], "LHR MAN"),
    provider!(5466, "Eircom Limited", Isp, [86, 40], "DUB"),
    provider!(3215, "Orange S.A.", Isp, [90, 16], "CDG"),
    provider!(3320, "Deutsche Telekom AG", Isp, [79, 192], "FRA BER MUC"),
    provider!(1136, "KPN B.V.", Isp, [77, 160], "AMS"),
    provider!(3301, "Telia Company AB", Isp, [78, 64], "ARN"),
    provider!(719, "Elisa Oyj", Isp, [91, 152], "HEL"),
    provider!(5617, "Orange Polska Spolka Akcyjna", Isp, [83, 24], "WAW"),
    provider!(3352, "TELEFONICA DE ESPANA S.A.U.", Isp, [80, 24], "MAD"),
    provider!(3269, "Telecom Italia S.p.A.", Isp, [79, 20], "MXP"),
    provider!(3303, "Swisscom (Schweiz) AG", Isp, [85, 0], "ZRH"),
    provider!(8708, "RCS & RDS SA", Isp, [86, 120], "OTP"),
    provider!(15895, "Kyivstar PJSC", Isp, [46, 211], "KBP"),
    provider!(12389, "PJSC Rostelecom", Isp, [95, 24], "SVO"),
    provider!(9121, "Turk Telekomunikasyon Anonim Sirketi", Isp, [85, 96], "IST"),
    provider!(8551, "Bezeq International Ltd.", Isp, [79, 176], "TLV"),
    provider!(
        5384,
        "Emirates Telecommunications Group Company (Etisalat Group) PJSC",
        Isp,
        [94, 200],
        "DXB"
    ),
    provider!(55836, "Reliance Jio Infocomm Limited", Isp, [49, 36], "BOM BLR"),
    provider!(
        24560,
        "Bharti Airtel Ltd., Telemedia Services",
        Isp,
        [122, 171],
        "BOM BLR"
    ),
    provider!(9506, "Singtel Fibre Broadband", Isp, [116, 86], "SIN"),
    provider!(4713, "NTT Communications Corporation", Isp, [153, 156], "NRT KIX"),
    provider!(4766, "Korea Telecom", Isp, [121, 128], "ICN"),
    provider!(4760, "HKT Limited", Isp, [112, 118], "HKG"),
    provider!(4134, "Chinanet", Isp, [116, 224], "PEK PVG"),
    provider!(4837, "CHINA UNICOM China169 Backbone", Isp, [123, 112], "PEK PVG"),
    provider!(7552, "Viettel Group", Isp, [27, 72], "SGN"),
    provider!(7713, "PT Telekomunikasi Indonesia", Isp, [36, 68], "CGK"),
    provider!(7470, "TRUE INTERNET Co.,Ltd.", Isp, [171, 96], "BKK"),
    provider!(
        9299,
        "Philippine Long Distance Telephone Company",
        Isp,
        [112, 198],
        "MNL"
    ),
    provider!(1221, "Telstra Limited", Isp, [101, 160], "SYD MEL"),
    provider!(4771, "Spark New Zealand Trading Ltd.", Isp, [122, 56], "AKL"),
    provider!(29975, "VODACOM", Isp, [41, 13], "JNB"),
    provider!(29465, "MTN NIGERIA Communication limited", Isp, [102, 89], "LOS"),
    provider!(33771, "Safaricom Limited", Isp, [105, 160], "NBO"),
    provider!(8452, "TE Data", Isp, [41, 32], "CAI"),
    // Mobile carriers: travellers and phones.
    provider!(21928, "T-MOBILE-AS21928", Mobile, [172, 56], "NYC SEA LAX DFW ORD SFO"),
    provider!(12430, "VODAFONE ESPANA S.A.U.", Mobile, [95, 127], "MAD"),
    provider!(3209, "Vodafone GmbH", Mobile, [94, 134], "FRA BER MUC"),
    provider!(25135, "Vodafone Limited", Mobile, [148, 252], "LHR MAN"),
    provider!(17676, "SoftBank Corp.", Mobile, [126, 88], "NRT KIX"),
];

/// One /24 of one provider in one city.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub provider: usize,
    pub city: usize,
    pub block: Ipv4Net,
}

/// All cities and networks, with lookups the traffic model needs.
#[derive(Debug, Clone)]
pub struct World {
    pub networks: Vec<Network>,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    pub fn new() -> World {
        let mut networks = Vec::new();
        for (provider_index, provider) in PROVIDERS.iter().enumerate() {
            for (slot, code) in provider.cities.split_ascii_whitespace().enumerate() {
                let Some(city) = city_index(code) else {
                    continue;
                };
                // Spread the /24s through the /16 rather than packing them,
                // as real allocations are.
                let third_octet = ((slot * 7 + 11) % 256) as u8;
                let address = Ipv4Addr::new(provider.block[0], provider.block[1], third_octet, 0);
                let Ok(block) = Ipv4Net::new(address, 24) else {
                    continue;
                };
                networks.push(Network {
                    provider: provider_index,
                    city,
                    block,
                });
            }
        }
        World { networks }
    }

    pub fn provider(&self, network: usize) -> &'static Provider {
        &PROVIDERS[self.networks[network].provider]
    }

    pub fn city(&self, network: usize) -> &'static City {
        &CITIES[self.networks[network].city]
    }

    pub fn kind(&self, network: usize) -> NetworkKind {
        self.provider(network).kind
    }

    /// Networks of the given kinds, in table order.
    pub fn networks_of(&self, kinds: &[NetworkKind]) -> Vec<usize> {
        (0..self.networks.len())
            .filter(|&network| kinds.contains(&self.kind(network)))
            .collect()
    }

    /// Networks of the same provider in other cities.
    pub fn same_provider(&self, network: usize) -> Vec<usize> {
        let provider = self.networks[network].provider;
        (0..self.networks.len())
            .filter(|&other| other != network && self.networks[other].provider == provider)
            .collect()
    }

    /// Great-circle distance between the cities of two networks, in km.
    pub fn distance_km(&self, first: usize, second: usize) -> f64 {
        city_distance_km(self.city(first), self.city(second))
    }

    /// A host address inside a network; `host` 1..=254 (never the network or
    /// broadcast address).
    pub fn host(&self, network: usize, host: u8) -> Ipv4Addr {
        let octets = self.networks[network].block.network().octets();
        Ipv4Addr::new(octets[0], octets[1], octets[2], host.clamp(1, 254))
    }

    /// Records for the City database, one per network.
    pub fn city_records(&self) -> Vec<CityRecord> {
        self.networks
            .iter()
            .map(|network| {
                let city = &CITIES[network.city];
                let provider = &PROVIDERS[network.provider];
                CityRecord {
                    network: IpNet::V4(network.block),
                    country_code: city.country_code.to_string(),
                    country_name: city.country_name.to_string(),
                    city_name: city.name.to_string(),
                    latitude: city.latitude,
                    longitude: city.longitude,
                    accuracy_radius_km: accuracy_radius_km(provider.kind),
                    geoname_id: city.geoname_id,
                }
            })
            .collect()
    }

    /// Records for the ASN database, one per network.
    pub fn asn_records(&self) -> Vec<AsnRecord> {
        self.networks
            .iter()
            .map(|network| {
                let provider = &PROVIDERS[network.provider];
                AsnRecord {
                    network: IpNet::V4(network.block),
                    asn: provider.asn,
                    organization: provider.organization.to_string(),
                }
            })
            .collect()
    }
}

/// Real databases are far less sure where a data-centre or mobile address
/// is than where a fixed line is; mimic that.
fn accuracy_radius_km(kind: NetworkKind) -> u16 {
    match kind {
        NetworkKind::Cloud => 500,
        NetworkKind::Hosting => 200,
        NetworkKind::Vpn => 500,
        NetworkKind::Isp => 20,
        NetworkKind::Mobile => 100,
    }
}

pub fn city_index(code: &str) -> Option<usize> {
    CITIES.iter().position(|city| city.code == code)
}

/// Haversine distance in km.
pub fn city_distance_km(first: &City, second: &City) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lat2) = (first.latitude.to_radians(), second.latitude.to_radians());
    let delta_lat = lat2 - lat1;
    let delta_lon = (second.longitude - first.longitude).to_radians();
    let a = (delta_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (delta_lon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{NetClass, netclass::classify};
    use std::collections::HashSet;
    use std::net::IpAddr;

    #[test]
    fn every_provider_city_exists() {
        for provider in PROVIDERS {
            for code in provider.cities.split_ascii_whitespace() {
                assert!(
                    city_index(code).is_some(),
                    "{} lists unknown city {code}",
                    provider.organization
                );
            }
        }
    }

    #[test]
    fn blocks_are_distinct_and_public() {
        let world = World::new();
        let mut blocks = HashSet::new();
        for network in &world.networks {
            assert!(blocks.insert(network.block), "{} allocated twice", network.block);
            for host in [1u8, 254] {
                let octets = network.block.network().octets();
                let address = IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], host));
                assert_eq!(classify(address), NetClass::Public, "{address}");
            }
        }
        let mut provider_blocks = HashSet::new();
        for provider in PROVIDERS {
            assert!(provider_blocks.insert(provider.block), "{:?} shared", provider.block);
        }
    }

    #[test]
    fn distance_is_plausible() {
        let london = &CITIES[city_index("LHR").unwrap()];
        let new_york = &CITIES[city_index("NYC").unwrap()];
        let distance = city_distance_km(london, new_york);
        assert!((5500.0..5650.0).contains(&distance), "{distance}");
    }

    #[test]
    fn every_city_has_an_isp_or_mobile_network() {
        let world = World::new();
        let covered: HashSet<usize> = world
            .networks_of(&[NetworkKind::Isp, NetworkKind::Mobile])
            .into_iter()
            .map(|network| world.networks[network].city)
            .collect();
        for (index, city) in CITIES.iter().enumerate() {
            assert!(covered.contains(&index), "{} has no ISP", city.name);
        }
    }
}
