//! The resolved row: one event as baselines absorb it and detectors judge
//! it, with its endpoint and client interned, its ip looked up and its time
//! set on its key's clock. Plain values, built once per event.

use std::net::IpAddr;

use super::GeoInfo;

/// One event resolved for judging.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedEvent<'a> {
    /// Event time on the key's clock: never before the key's newest event.
    pub ts_ms: i64,
    pub ip: IpAddr,
    pub geo: GeoInfo,
    /// Interned id of `endpoint`.
    pub endpoint_id: u32,
    /// The endpoint template (`/v1/orders/{id}`).
    pub endpoint: &'a str,
    /// Whether the template matches one of the model's sensitive patterns.
    pub endpoint_sensitive: bool,
    /// Interned id of `client`.
    pub client_id: u32,
    /// The client family (`aws-cli`).
    pub client: &'a str,
    pub method: &'a str,
    pub status: u16,
    /// Response bytes.
    pub bytes_out: u64,
}

impl ResolvedEvent<'_> {
    /// Whether the call was refused for lack of authorization (401/403).
    pub fn is_auth_failure(&self) -> bool {
        self.status == 401 || self.status == 403
    }
}
