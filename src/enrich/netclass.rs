//! Private, loopback and reserved ranges, classified without a lookup.
//!
//! An address in one of these ranges never says where a caller is: a GeoIP
//! database either has no answer or a misleading one (the country of whoever
//! registered the block). Classifying first lets detectors treat "came from
//! our own network" differently from "came from an unknown place".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kind of network an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NetClass {
    #[default]
    Public,
    Private,
    Loopback,
    LinkLocal,
    /// Documentation, benchmarking, multicast, carrier-grade NAT and other
    /// ranges that are not routed on the public internet.
    Reserved,
}

impl NetClass {
    pub fn is_public(self) -> bool {
        self == NetClass::Public
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetClass::Public => "public",
            NetClass::Private => "private",
            NetClass::Loopback => "loopback",
            NetClass::LinkLocal => "link_local",
            NetClass::Reserved => "reserved",
        }
    }
}

/// Classifies `ip`; IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are
/// classified as the IPv4 address they carry, since that is how dual-stack
/// servers log IPv4 clients.
pub fn classify(ip: IpAddr) -> NetClass {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// (network, prefix length, class), checked in order; the first match wins.
const V4_RANGES: [(u32, u8, NetClass); 16] = [
    (u32::from_be_bytes([0, 0, 0, 0]), 8, NetClass::Reserved), // "this network"
    (u32::from_be_bytes([10, 0, 0, 0]), 8, NetClass::Private),
    (u32::from_be_bytes([100, 64, 0, 0]), 10, NetClass::Reserved), // carrier-grade NAT
    (u32::from_be_bytes([127, 0, 0, 0]), 8, NetClass::Loopback),
    (u32::from_be_bytes([169, 254, 0, 0]), 16, NetClass::LinkLocal),
    (u32::from_be_bytes([172, 16, 0, 0]), 12, NetClass::Private),
    (u32::from_be_bytes([192, 0, 0, 0]), 24, NetClass::Reserved), // IETF protocol assignments
    (u32::from_be_bytes([192, 0, 2, 0]), 24, NetClass::Reserved), // TEST-NET-1
    (u32::from_be_bytes([192, 88, 99, 0]), 24, NetClass::Reserved), // deprecated 6to4 relay anycast
    (u32::from_be_bytes([192, 168, 0, 0]), 16, NetClass::Private),
    (u32::from_be_bytes([198, 18, 0, 0]), 15, NetClass::Reserved), // benchmarking
    (u32::from_be_bytes([198, 51, 100, 0]), 24, NetClass::Reserved), // TEST-NET-2
    (u32::from_be_bytes([203, 0, 113, 0]), 24, NetClass::Reserved), // TEST-NET-3
    (u32::from_be_bytes([224, 0, 0, 0]), 4, NetClass::Reserved),   // multicast
    (u32::from_be_bytes([240, 0, 0, 0]), 4, NetClass::Reserved),   // future use
    // Broadcast is inside 240/4 already; listed so the intent is explicit
    // should the 240/4 entry ever be narrowed.
    (u32::from_be_bytes([255, 255, 255, 255]), 32, NetClass::Reserved),
];

fn classify_v4(ip: Ipv4Addr) -> NetClass {
    let bits = u32::from(ip);
    for (network, prefix_len, class) in V4_RANGES {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        if bits & mask == network {
            return class;
        }
    }
    NetClass::Public
}

/// (network, prefix length, class), checked in order; the first match wins.
const V6_RANGES: [(u128, u8, NetClass); 10] = [
    (0, 128, NetClass::Reserved), // unspecified ::
    (1, 128, NetClass::Loopback), // ::1
    // Deprecated IPv4-compatible form; the mapped form was handled by the caller.
    (0, 96, NetClass::Reserved),
    (0x0100_0000_0000_0000_0000_0000_0000_0000, 64, NetClass::Reserved), // discard-only
    (0x2001_0002_0000_0000_0000_0000_0000_0000, 48, NetClass::Reserved), // benchmarking
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32, NetClass::Reserved), // documentation
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7, NetClass::Private),   // unique local
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10, NetClass::LinkLocal),
    // Deprecated site-local: private in practice where it still appears.
    (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10, NetClass::Private),
    (0xff00_0000_0000_0000_0000_0000_0000_0000, 8, NetClass::Reserved), // multicast
];

fn classify_v6(ip: Ipv6Addr) -> NetClass {
    let bits = u128::from(ip);
    for (network, prefix_len, class) in V6_RANGES {
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
        if bits & mask == network {
            return class;
        }
    }
    NetClass::Public
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(text: &str) -> NetClass {
        classify(text.parse().unwrap())
    }

    #[test]
    fn ipv4_special_ranges() {
        let cases = [
            ("10.1.2.3", NetClass::Private),
            ("172.16.0.1", NetClass::Private),
            ("172.31.255.255", NetClass::Private),
            ("192.168.10.20", NetClass::Private),
            ("127.0.0.1", NetClass::Loopback),
            ("127.255.0.9", NetClass::Loopback),
            ("169.254.169.254", NetClass::LinkLocal),
            ("100.64.0.1", NetClass::Reserved),
            ("100.127.255.254", NetClass::Reserved),
            ("192.0.2.55", NetClass::Reserved),
            ("198.51.100.7", NetClass::Reserved),
            ("203.0.113.200", NetClass::Reserved),
            ("198.18.0.1", NetClass::Reserved),
            ("198.19.255.255", NetClass::Reserved),
            ("224.0.0.251", NetClass::Reserved),
            ("239.255.255.250", NetClass::Reserved),
            ("0.0.0.0", NetClass::Reserved),
            ("0.1.2.3", NetClass::Reserved),
            ("240.0.0.1", NetClass::Reserved),
            ("255.255.255.255", NetClass::Reserved),
        ];
        for (address, expected) in cases {
            assert_eq!(class_of(address), expected, "{address}");
        }
    }

    #[test]
    fn ipv4_neighbours_of_special_ranges_are_public() {
        // One step outside each boundary, where an off-by-one in a mask shows.
        for address in [
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.112.255",
            "223.255.255.255",
            "1.1.1.1",
            "8.8.8.8",
            "81.2.69.142",
        ] {
            assert_eq!(class_of(address), NetClass::Public, "{address}");
        }
    }

    #[test]
    fn ipv6_special_ranges() {
        let cases = [
            ("::1", NetClass::Loopback),
            ("::", NetClass::Reserved),
            ("fc00::1", NetClass::Private),
            ("fd12:3456::1", NetClass::Private),
            ("fe80::1", NetClass::LinkLocal),
            ("febf::1", NetClass::LinkLocal),
            ("fec0::1", NetClass::Private),
            ("2001:db8::1", NetClass::Reserved),
            ("2001:2::1", NetClass::Reserved),
            ("100::1", NetClass::Reserved),
            ("ff02::1", NetClass::Reserved),
            ("::10.0.0.1", NetClass::Reserved),
        ];
        for (address, expected) in cases {
            assert_eq!(class_of(address), expected, "{address}");
        }
    }

    #[test]
    fn ipv6_public_addresses() {
        for address in [
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "2001:218::1",
            "2001:db9::1",
            "fbff::1",
        ] {
            assert_eq!(class_of(address), NetClass::Public, "{address}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_classified_as_ipv4() {
        assert_eq!(class_of("::ffff:10.0.0.1"), NetClass::Private);
        assert_eq!(class_of("::ffff:127.0.0.1"), NetClass::Loopback);
        assert_eq!(class_of("::ffff:8.8.8.8"), NetClass::Public);
    }
}
