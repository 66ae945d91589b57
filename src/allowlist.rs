//! Allowlisted networks for the geography detectors: corporate egress and
//! known VPNs, by CIDR or by ASN (the model's `[allowlist]`). A call from
//! one raises no geography finding (new country, network or region,
//! impossible travel, concurrent use, unfamiliar network) and does not move
//! the key's places, so the next call from the key's usual place is not
//! judged as travel from the VPN's exit. Every other detector still judges
//! the call.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::detector::Detector;

/// Most entries of each list: the check runs on every call.
const MAX_ENTRIES: usize = 1024;

/// The model's `[allowlist]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistModel {
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Autonomous system numbers (without `AS`).
    #[serde(default)]
    pub asns: Vec<u32>,
}

impl AllowlistModel {
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.asns.is_empty()
    }
}

/// Why an allowlist cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("`{0}` is not a network (CIDR) or an address")]
    Network(String),
    #[error("at most {MAX_ENTRIES} networks and {MAX_ENTRIES} ASNs")]
    TooMany,
    #[error("ASN 0 means an unknown network and cannot be allowlisted")]
    AsnZero,
}

/// The allowlist, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    networks: Vec<IpNet>,
    /// Sorted, for a binary search.
    asns: Vec<u32>,
}

impl Allowlist {
    pub fn new(model: &AllowlistModel) -> Result<Allowlist, AllowlistError> {
        if model.cidrs.len() > MAX_ENTRIES || model.asns.len() > MAX_ENTRIES {
            return Err(AllowlistError::TooMany);
        }
        let networks = model
            .cidrs
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map(|network| network.trunc())
                    .map_err(|_| AllowlistError::Network(text.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if model.asns.contains(&0) {
            return Err(AllowlistError::AsnZero);
        }
        let mut asns = model.asns.clone();
        asns.sort_unstable();
        asns.dedup();
        Ok(Allowlist { networks, asns })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.asns.is_empty()
    }

    /// Whether a call from `ip` in network `asn` (0: unknown) is allowlisted.
    pub fn contains(&self, ip: IpAddr, asn: u32) -> bool {
        (asn != 0 && self.asns.binary_search(&asn).is_ok()) || self.networks.iter().any(|network| network.contains(&ip))
    }
}

/// The detectors an allowlisted call never raises: those that judge where
/// a key is used from.
pub fn is_geography(detector: Detector) -> bool {
    matches!(
        detector,
        Detector::NewCountry
            | Detector::NewAsn
            | Detector::NewRegion
            | Detector::ImpossibleTravel
            | Detector::ConcurrentUse
            | Detector::UnfamiliarNetwork
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowlist(cidrs: &[&str], asns: &[u32]) -> Allowlist {
        Allowlist::new(&AllowlistModel {
            cidrs: cidrs.iter().map(|text| text.to_string()).collect(),
            asns: asns.to_vec(),
        })
        .expect("a valid allowlist")
    }

    #[test]
    fn addresses_inside_a_listed_network_or_asn_are_allowlisted_and_others_not() {
        let list = allowlist(&["198.51.100.0/24", "2001:db8::/32", "203.0.113.7"], &[64500]);
        assert!(list.contains("198.51.100.200".parse().unwrap(), 1));
        assert!(list.contains("2001:db8:1::5".parse().unwrap(), 1));
        assert!(list.contains("203.0.113.7".parse().unwrap(), 1));
        assert!(!list.contains("203.0.113.8".parse().unwrap(), 1));
        assert!(list.contains("192.0.2.1".parse().unwrap(), 64500));
        assert!(!list.contains("192.0.2.1".parse().unwrap(), 64501));
        assert!(!list.contains("192.0.2.1".parse().unwrap(), 0));
    }

    #[test]
    fn a_malformed_network_or_asn_zero_is_refused() {
        let bad = AllowlistModel {
            cidrs: vec!["10.0.0.0/33".into()],
            asns: vec![],
        };
        assert!(matches!(Allowlist::new(&bad), Err(AllowlistError::Network(_))));
        let zero = AllowlistModel {
            cidrs: vec![],
            asns: vec![0],
        };
        assert!(matches!(Allowlist::new(&zero), Err(AllowlistError::AsnZero)));
    }
}
