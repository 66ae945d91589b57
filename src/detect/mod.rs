//! Detectors: a key's state plus one resolved event in, findings out. They
//! read state and never change it; no I/O, no clock: time is the event's.
//! Each file decides one behaviour: `geo.rs` new countries, networks and
//! regions and impossible travel; `rate.rs` spikes, surges, drops and dormant
//! keys; `volume.rs` response bytes far above the key's usual;
//! `endpoints.rs` new and sensitive endpoints and shifts of the mix;
//! `client.rs` new client families; `auth.rs` spikes of authorization
//! failures; `org.rs` new keys on networks the organisation never uses. [`CHECKS`] lists them all, once.
//!
//! Adding a detector: its entry in the registry (`src/detector.rs`, with its
//! phase), its check in a file here with a line in [`CHECKS`], its section
//! of the model (`src/model.rs` and `models/default.toml`), and, if it keeps
//! state, a baseline in `src/baseline/` that `KeyState` advances and
//! absorbs. Tests then ask for its name in the alert schema and the README.

pub mod auth;
pub mod client;
pub mod endpoints;
pub mod geo;
pub mod org;
pub mod rate;
#[cfg(test)]
pub mod testkit;
pub mod volume;

use crate::baseline::{KeyState, Novelty};
use crate::detector::{Detector, Phase, Severity};
use crate::enrich::{GeoIp, ResolvedEvent};
use crate::model::Model;

/// A detector check: reads the key's state and the event, appends findings.
pub type CheckFn = fn(&KeyState, &ResolvedEvent, &Context, &mut Vec<Finding>);

/// One check and the detectors it reports, which share its phase.
pub struct Check {
    pub detectors: &'static [Detector],
    pub phase: Phase,
    pub judge: CheckFn,
}

impl Check {
    /// Fails the build when the detectors of one check disagree on their phase.
    const fn new(detectors: &'static [Detector], judge: CheckFn) -> Check {
        assert!(!detectors.is_empty(), "a check reports at least one detector");
        let phase = detectors[0].phase();
        let mut index = 1;
        while index < detectors.len() {
            assert!(
                detectors[index].phase() as u8 == phase as u8,
                "the detectors of one check are judged in one phase"
            );
            index += 1;
        }
        Check {
            detectors,
            phase,
            judge,
        }
    }
}

/// Every check, in the order its findings are disposed of within a phase.
pub const CHECKS: &[Check] = &[
    Check::new(&[Detector::DormantKey], rate::check_dormant),
    Check::new(&[Detector::RateDrop], rate::check_drop),
    Check::new(
        &[Detector::ImpossibleTravel, Detector::ConcurrentUse],
        geo::check_travel,
    ),
    Check::new(&[Detector::NewCountry, Detector::NewAsn], geo::check_new_place),
    Check::new(&[Detector::NewRegion], geo::check_new_region),
    Check::new(
        &[Detector::NewEndpoint, Detector::SensitiveEndpoint],
        endpoints::check_new_endpoint,
    ),
    Check::new(&[Detector::NewClient], client::check_new_client),
    Check::new(&[Detector::UnfamiliarNetwork], org::check_unfamiliar_network),
    Check::new(&[Detector::RateSpike, Detector::RateSurge], rate::check_rate),
    Check::new(&[Detector::ResponseVolume], volume::check_volume),
    Check::new(&[Detector::AuthFailureSpike], auth::check_auth_failures),
    Check::new(&[Detector::EndpointMixShift], endpoints::check_mix_shift),
];

/// Runs every check of `phase` on one event, in [`CHECKS`] order.
pub fn judge(phase: Phase, state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    // A 401 says only that someone holds the key id: it feeds the
    // auth-failure view and nothing that judges where or how the key is used.
    let unauthenticated = crate::baseline::is_unauthenticated(event);
    for check in CHECKS.iter().filter(|check| check.phase == phase) {
        if unauthenticated && !check.detectors.contains(&Detector::AuthFailureSpike) {
            continue;
        }
        let first_new = out.len();
        (check.judge)(state, event, ctx, out);
        debug_assert!(
            out[first_new..]
                .iter()
                .all(|finding| check.detectors.contains(&finding.detector)),
            "a check reports only its own detectors: {:?}",
            check.detectors
        );
    }
}

/// What detectors may read besides the key's state.
pub struct Context<'a> {
    pub model: &'a Model,
    pub geo: &'a GeoIp,
    pub endpoint_names: &'a [Box<str>],
    pub client_names: &'a [Box<str>],
    /// What is new about the event for its key, worked out once per event.
    pub novelty: Novelty,
    /// The organisation's table for the event's epoch (view across keys).
    pub org: &'a org::OrgTable,
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
    pub detector: Detector,
    pub severity: Severity,
    /// Strength of the evidence in [0, 1].
    pub score: f64,
    /// Event-time start of what the finding is about (the trigger event's
    /// time ends it).
    pub window_start_ms: i64,
    /// What the finding is about (a country code, a network, an endpoint),
    /// empty when the detector has one subject only. Repeats are suppressed
    /// per key, detector and subject: a second new country still alerts.
    pub subject: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_detector_is_reported_by_exactly_one_check() {
        for detector in Detector::ALL
            .iter()
            .filter(|detector| detector.phase() != Phase::AcrossKeys)
        {
            let reporting = CHECKS.iter().filter(|check| check.detectors.contains(detector)).count();
            assert_eq!(reporting, 1, "{detector}");
        }
    }
}
