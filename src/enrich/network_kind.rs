//! The kind of network an address is in: a cloud, a hosting company, an
//! anonymising service (VPN, proxy, Tor), a residential ISP or a mobile
//! carrier. A stolen key usually runs from a rented server or behind a VPN,
//! its owner from an office, a home or a deployment it keeps using; so the
//! kind of a network the key never used is a risk factor.
//!
//! The kind comes from the model's `[networks]` lists of well-known ASNs,
//! then from patterns on the ASN database's organisation name. Each engine
//! classifies a network once and remembers it: the per-event cost is one
//! hash probe, and the organisation name is read only on the first sight of
//! a network.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::GeoIp;
use super::endpoint::SensitiveMatcher;
use crate::model::NetworkModel;

/// What kind of network an ASN is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NetworkKind {
    /// In no list and matching no pattern, or no ASN at all.
    #[default]
    Unknown,
    /// A public cloud: where services run.
    Cloud,
    /// Rented servers and VPS: where scripts, and stolen keys, often run.
    Hosting,
    /// VPN, proxy and Tor egress: hides who calls.
    Anonymising,
    /// A fixed-line ISP: homes and offices.
    Residential,
    /// A mobile carrier: phones and travellers.
    Mobile,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Unknown => "unknown",
            NetworkKind::Cloud => "cloud",
            NetworkKind::Hosting => "hosting",
            NetworkKind::Anonymising => "anonymising",
            NetworkKind::Residential => "residential",
            NetworkKind::Mobile => "mobile",
        }
    }

    /// Networks where anyone can rent a machine or hide: a key's first use
    /// of one is worth a look even in the key's home country.
    pub fn is_rentable(self) -> bool {
        matches!(
            self,
            NetworkKind::Cloud | NetworkKind::Hosting | NetworkKind::Anonymising
        )
    }

    /// Networks of people: homes, offices and phones.
    pub fn is_consumer(self) -> bool {
        matches!(self, NetworkKind::Residential | NetworkKind::Mobile)
    }

    /// Networks of data centres, where one region is one building and a
    /// workload in two regions at once is two deployments.
    pub fn is_datacentre(self) -> bool {
        matches!(self, NetworkKind::Cloud | NetworkKind::Hosting)
    }
}

/// Classifies networks by the model's lists and patterns, remembering each
/// answer. One per engine.
pub struct NetworkKinds {
    /// Every ASN classified so far, seeded with the model's lists.
    known: FxHashMap<u32, NetworkKind>,
    /// Organisation-name patterns per kind, in the order they are tried.
    patterns: Vec<(NetworkKind, SensitiveMatcher)>,
}

impl NetworkKinds {
    pub fn new(model: &NetworkModel) -> NetworkKinds {
        let mut known = FxHashMap::default();
        for (kind, asns) in [
            (NetworkKind::Cloud, &model.cloud),
            (NetworkKind::Hosting, &model.hosting),
            (NetworkKind::Anonymising, &model.anonymising),
            (NetworkKind::Residential, &model.residential),
            (NetworkKind::Mobile, &model.mobile),
        ] {
            for asn in asns {
                known.insert(*asn, kind);
            }
        }
        // Anonymising first: "VPN hosting" is a VPN. Hosting before cloud:
        // "cloud hosting" is rented servers. Consumer kinds last, as their
        // words ("communications", "telecom") also appear in carriers'
        // data-centre arms that the lists name.
        let patterns = [
            (NetworkKind::Anonymising, &model.anonymising_patterns),
            (NetworkKind::Hosting, &model.hosting_patterns),
            (NetworkKind::Cloud, &model.cloud_patterns),
            (NetworkKind::Mobile, &model.mobile_patterns),
            (NetworkKind::Residential, &model.residential_patterns),
        ]
        .into_iter()
        .map(|(kind, patterns)| (kind, SensitiveMatcher::new(patterns)))
        .collect();
        NetworkKinds { known, patterns }
    }

    /// The kind of `asn`, the network of `ip`. The first time an ASN is
    /// seen outside the lists its organisation name is read from the ASN
    /// database and matched; the answer is kept for every later event.
    pub fn kind_of(&mut self, geo: &GeoIp, ip: IpAddr, asn: u32) -> NetworkKind {
        if asn == 0 {
            return NetworkKind::Unknown;
        }
        if let Some(kind) = self.known.get(&asn) {
            return *kind;
        }
        let kind = self.classify_org(geo.asn_org(ip).as_deref());
        self.known.insert(asn, kind);
        kind
    }

    /// The kind an organisation name says, by the model's patterns.
    pub fn classify_org(&self, org: Option<&str>) -> NetworkKind {
        let Some(org) = org else {
            return NetworkKind::Unknown;
        };
        self.patterns
            .iter()
            .find(|(_, matcher)| matcher.matches(org))
            .map_or(NetworkKind::Unknown, |(kind, _)| *kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::test_world;
    use crate::model::Model;

    fn kinds() -> NetworkKinds {
        NetworkKinds::new(&Model::default_model().networks)
    }

    #[test]
    fn well_known_networks_are_classified_by_the_model_lists() {
        let mut kinds = kinds();
        let geo = GeoIp::empty();
        let ip: IpAddr = "8.8.8.8".parse().unwrap();
        for (asn, kind) in [
            (16509, NetworkKind::Cloud),
            (15169, NetworkKind::Cloud),
            (8075, NetworkKind::Cloud),
            (14061, NetworkKind::Hosting),
            (24940, NetworkKind::Hosting),
            (9009, NetworkKind::Anonymising),
            (7922, NetworkKind::Residential),
            (21928, NetworkKind::Mobile),
        ] {
            assert_eq!(kinds.kind_of(&geo, ip, asn), kind, "AS{asn}");
        }
        assert_eq!(kinds.kind_of(&geo, ip, 0), NetworkKind::Unknown);
    }

    #[test]
    fn organisation_names_are_classified_by_the_patterns() {
        let kinds = kinds();
        for (org, kind) in [
            ("Acme VPS Hosting Ltd", NetworkKind::Hosting),
            ("FastVPN Networks", NetworkKind::Anonymising),
            ("Example Proxy Services", NetworkKind::Anonymising),
            ("Nordic Datacenter AB", NetworkKind::Hosting),
            ("Example Mobile Telecommunications", NetworkKind::Mobile),
            ("Example Broadband Ltd", NetworkKind::Residential),
            ("Acme Widgets Inc", NetworkKind::Unknown),
        ] {
            assert_eq!(kinds.classify_org(Some(org)), kind, "{org}");
        }
        assert_eq!(kinds.classify_org(None), NetworkKind::Unknown);
    }

    #[test]
    fn an_unlisted_network_is_classified_from_the_database_once() {
        let mut kinds = kinds();
        let geo = test_world::geoip();
        let address = test_world::host("london_hosting", 1).unwrap();
        let asn = geo.lookup(address).asn;
        assert!(!kinds.known.contains_key(&asn), "the test network is in no list");
        assert_eq!(kinds.kind_of(&geo, address, asn), NetworkKind::Hosting);
        // Remembered: a lookup without a database gives the same answer.
        assert_eq!(kinds.kind_of(&GeoIp::empty(), address, asn), NetworkKind::Hosting);
    }
}
