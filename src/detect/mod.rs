//! Detectors: a key's state plus one event in, findings out. No I/O, no
//! clock: time is the event's. Each file decides one behaviour:
//! `geo.rs` new countries, new networks and impossible travel; `rate.rs`
//! spikes, surges and dormant keys; `endpoints.rs` new and sensitive
//! endpoints and shifts of the mix; `client.rs` new client families;
//! `auth.rs` spikes of authorization failures.

pub mod auth;
pub mod client;
pub mod endpoints;
pub mod geo;
pub mod rate;
#[cfg(test)]
pub mod testkit;

use std::net::IpAddr;

use crate::alert::Severity;
use crate::enrich::{GeoInfo, GeoIp};
use crate::model::Model;

/// Every detector name, as used in alerts, model files and the policy.
pub const DETECTORS: &[&str] = &[
    "new_country",
    "new_asn",
    "impossible_travel",
    "concurrent_use",
    "rate_spike",
    "rate_surge",
    "dormant_key",
    "new_endpoint",
    "sensitive_endpoint",
    "endpoint_mix_shift",
    "new_client",
    "auth_failure_spike",
];

/// One event as detectors see it: resolved, enriched and interned.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub ts_ms: i64,
    pub ip: IpAddr,
    pub geo: GeoInfo,
    pub endpoint_id: u32,
    pub endpoint: &'a str,
    pub endpoint_sensitive: bool,
    pub client_id: u32,
    pub client: &'a str,
    pub method: &'a str,
    pub status: u16,
}

impl EventView<'_> {
    pub fn is_auth_failure(&self) -> bool {
        self.status == 401 || self.status == 403
    }
}

/// What detectors may read besides the key's state.
pub struct Context<'a> {
    pub model: &'a Model,
    pub geo: &'a GeoIp,
    pub endpoint_names: &'a [Box<str>],
    pub client_names: &'a [Box<str>],
}

impl Context<'_> {
    pub fn endpoint_name(&self, id: u32) -> &str {
        self.endpoint_names.get(id as usize).map_or("?", |name| name)
    }

    pub fn client_name(&self, id: u32) -> &str {
        self.client_names.get(id as usize).map_or("?", |name| name)
    }
}

/// A detector's verdict on one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub detector: &'static str,
    pub severity: Severity,
    /// Strength of the evidence in [0, 1].
    pub score: f64,
    /// Event-time start of what the finding is about (the trigger event's
    /// time ends it).
    pub window_start_ms: i64,
    pub summary: String,
    pub evidence: serde_json::Value,
}

/// Percent with no decimals for shares in evidence.
pub fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// Score from a tail probability: 1 - p, kept below 1 and readable.
pub fn score_from_p(p_value: f64) -> f64 {
    let score = 1.0 - p_value.clamp(0.0, 1.0);
    (score * 1e6).round() / 1e6
}
