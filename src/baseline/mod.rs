//! Per-key behavioural state, one file per behaviour. Every table is bounded
//! (top-K plus an "other" bucket, fixed rings), so memory per key does not
//! grow with traffic. State holds ids of interned strings; snapshots map them
//! back to strings.

pub mod auth;
pub mod endpoints;
pub mod geo;
pub mod rate;
pub mod topk;

use serde::{Deserialize, Serialize};

use crate::model::Learning;
pub use topk::TopK;

/// Alerting memory of one key: suppression and the open incident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertMemory {
    /// Per detector: event time and severity of its last alert.
    pub last_fired: Vec<(String, i64, crate::alert::Severity)>,
    pub incident_id: Option<String>,
    pub incident_start: i64,
    pub incident_last: i64,
    /// Detectors that fired in the open incident.
    pub incident_detectors: Vec<String>,
    pub incident_alert_ids: Vec<String>,
    /// Whether a revocation was requested in the open incident.
    pub incident_revoked: bool,
}

/// Everything keywatch knows about one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    pub fingerprint: String,
    pub hint: String,
    pub first_ts: i64,
    pub last_ts: i64,
    pub events: u64,
    pub geo: geo::GeoBaseline,
    pub rate: rate::RateBaseline,
    pub endpoints: endpoints::EndpointBaseline,
    pub clients: TopK,
    pub auth: auth::AuthBaseline,
    pub alerts: AlertMemory,
}

impl KeyState {
    pub fn new(fingerprint: String, hint: String, ts_ms: i64, windows_per_long: usize) -> KeyState {
        KeyState {
            fingerprint,
            hint,
            first_ts: ts_ms,
            last_ts: ts_ms,
            events: 0,
            geo: Default::default(),
            rate: rate::RateBaseline::new(windows_per_long),
            endpoints: Default::default(),
            clients: TopK::new(),
            auth: Default::default(),
            alerts: Default::default(),
        }
    }

    /// Whether the key has enough history, in time and in events, to be
    /// judged under `learning`.
    pub fn has_learned(&self, ts_ms: i64, learning: &Learning) -> bool {
        self.events >= learning.min_events && ts_ms - self.first_ts >= learning.min_age.as_millis() as i64
    }

    /// Remaps interned ids after a restore.
    pub fn remap(&mut self, endpoint_map: &impl Fn(u32) -> u32, client_map: &impl Fn(u32) -> u32) {
        self.endpoints.endpoints.remap(endpoint_map);
        for (id, _) in &mut self.endpoints.window_counts {
            *id = endpoint_map(*id);
        }
        self.clients.remap(client_map);
    }
}
