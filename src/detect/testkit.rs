//! Test fixtures for detector tests: addresses in the places of the test
//! world ([`crate::enrich::test_world`]), and helpers that drive the real
//! engine with a key's history and then one twist.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use crate::alert::{Alert, Output};
use crate::engine::Engine;
use crate::enrich::GeoIp;
use crate::enrich::test_world;
use crate::event::AccessEvent;
use crate::model::Model;

pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 24 * HOUR;
/// 2026-01-05T00:00:00Z, a Monday.
pub const T0: i64 = 1_767_571_200_000;

/// An address in a place of the test world (`host` picks the host within
/// its /16).
pub fn ip(place: &str, host: u16) -> IpAddr {
    test_world::host(place, u32::from(host)).expect("known place")
}

pub fn geo() -> Arc<GeoIp> {
    Arc::new(test_world::geoip())
}

/// An engine on the default model, except that low findings go out as
/// alerts rather than into daily digests: detector tests see every finding.
pub fn new_engine() -> Engine {
    let mut model = Model::default_model();
    model.alerts.digest_lows = false;
    Engine::new(Arc::new(model), geo())
}

pub fn event(ts_ms: i64, key: &str, ip: IpAddr, endpoint: &str, status: u16) -> AccessEvent<'static> {
    AccessEvent {
        ts_ms,
        key_id: Cow::Owned(key.to_string()),
        ip,
        method: Cow::Borrowed("GET"),
        endpoint: Cow::Owned(endpoint.to_string()),
        status,
        user_agent: Cow::Borrowed("acme-sdk/1.4.2 python/3.11"),
        bytes_out: 512,
        request_id: None,
    }
}

/// `days` of ordinary traffic: `per_hour` calls each hour between 08:00 and
/// 20:00 UTC, spread evenly, cycling over `endpoints`, from `place`.
pub fn history(key: &str, place: &str, days: i64, per_hour: i64, endpoints: &[&str]) -> Vec<AccessEvent<'static>> {
    let mut events = Vec::new();
    let mut call = 0usize;
    for day in 0..days {
        for hour in 8..20 {
            for slot in 0..per_hour {
                let ts = T0 + day * DAY + hour * HOUR + slot * (HOUR / per_hour.max(1));
                let endpoint = endpoints[call % endpoints.len()];
                events.push(event(ts, key, ip(place, (call % 50) as u16), endpoint, 200));
                call += 1;
            }
        }
    }
    events
}

/// Runs events through the engine in one batch, then judges what the
/// engine holds to order them (the batch is all there is for now); returns
/// the alerts as a consumer keeps them: one per id, its highest revision,
/// in the order ids first appeared.
pub fn alerts(engine: &mut Engine, events: &[AccessEvent<'_>]) -> Vec<Alert> {
    let mut kept: Vec<Alert> = Vec::new();
    for alert in alert_lines(engine, events) {
        match kept.iter_mut().find(|earlier| earlier.id == alert.id) {
            Some(earlier) if alert.revision > earlier.revision => *earlier = alert,
            Some(_) => {}
            None => kept.push(alert),
        }
    }
    kept
}

/// [`alerts`] with every line the engine sent: first revisions and updates.
pub fn alert_lines(engine: &mut Engine, events: &[AccessEvent<'_>]) -> Vec<Alert> {
    let mut out = Vec::new();
    engine.process(events, &mut out);
    engine.release_held(&mut out);
    out.into_iter()
        .filter_map(|output| match output {
            Output::Alert(alert) => Some(alert),
            Output::Revocation(_) | Output::Digest(_) => None,
        })
        .collect()
}

/// Alerts of one detector.
pub fn of<'a>(alerts: &'a [Alert], detector: &str) -> Vec<&'a Alert> {
    alerts
        .iter()
        .filter(|alert| alert.detector.as_str() == detector)
        .collect()
}

pub const ENDPOINTS: &[&str] = &["/v1/orders", "/v1/orders/{id}", "/v1/customers/{id}", "/v1/invoices"];
