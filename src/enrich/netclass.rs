//! Private, loopback and reserved ranges, classified without a lookup.

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
