//! Authorization failures: a spike of 401/403 answers (enumeration,
//! credential stuffing, privilege probing), judged by where the failures
//! came from: a storm from the key's own established places and clients is
//! its own service retrying (after a secret rotation, say), one from places
//! or clients the key does not hold is someone else.

use serde_json::json;

use super::{Context, Finding, score_from_p};
use crate::baseline::KeyState;
use crate::baseline::auth::DISPERSION;
use crate::baseline::rate::tail_probability;
use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;

/// The network of an event as a subject: `AS123`, else its country, else
/// its address class.
pub fn network_subject(event: &ResolvedEvent) -> String {
    if event.geo.asn != 0 {
        format!("AS{}", event.geo.asn)
    } else if event.geo.country.is_known() {
        event.geo.country.as_str().to_string()
    } else {
        event.geo.class.as_str().to_string()
    }
}

/// Judged after the event is counted, once the window's failures reach its
/// threshold.
pub fn check_auth_failures(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let auth_model = &ctx.model.auth_failures;
    if !event.is_auth_failure() || !state.has_learned(event.ts_ms, &auth_model.learning) {
        return;
    }
    // The window's threshold was settled when the event was counted; the
    // spike is reported once, when the failures reach it.
    let failures = u64::from(state.auth.failures);
    if state.auth.threshold.map(std::num::NonZeroU64::get) != Some(failures) {
        return;
    }
    let expected = state.auth.usual_failures();
    let p_value = tail_probability(failures, expected, DISPERSION);
    let window_ms = auth_model.window.as_millis() as i64;
    let window_text = humantime::format_duration(auth_model.window).to_string();
    let familiar_share = state.auth.familiar_share();
    let own = familiar_share >= auth_model.familiar_share;
    let severity = if own {
        Severity::Low
    } else if failures >= 5 * auth_model.min_failures {
        Severity::High
    } else {
        Severity::Medium
    };
    let source = if own {
        "the key's own places and clients"
    } else {
        "places or clients the key does not hold"
    };
    out.push(Finding {
        detector: Detector::AuthFailureSpike,
        severity,
        score: score_from_p(p_value),
        window_start_ms: state.auth.window * window_ms,
        subject: network_subject(event),
        summary: format!(
            "{failures} authorization failures (401/403) of {} calls in {window_text} against {expected:.1} usual, {} from {source}; last {} {} from {} (AS{}, {})",
            state.auth.calls,
            super::percent(if own { familiar_share } else { 1.0 - familiar_share }),
            event.method,
            event.endpoint,
            event.ip,
            event.geo.asn,
            event.geo.kind.as_str()
        ),
        evidence: json!({
            "observed": {
                "failures": failures,
                "calls": state.auth.calls,
                "window": window_text,
                "failures_from_established_places_and_clients": state.auth.familiar_failures,
                "last_endpoint": event.endpoint,
                "last_status": event.status,
                "ip": event.ip.to_string(),
                "asn": event.geo.asn,
                "network_kind": event.geo.kind.as_str(),
            },
            "baseline": {"usual_failures_per_window": (expected * 100.0).round() / 100.0},
            "p_value": p_value,
        }),
    });
}

#[cfg(test)]
mod tests {
    use crate::detect::testkit::*;
    use crate::detector::Severity;

    /// Five days of ordinary use from London, then 40 refusals in under
    /// seven minutes from `place`, with the key's own client unless
    /// `user_agent` is given.
    fn storm(key: &str, place: &str, user_agent: Option<&'static str>) -> Vec<crate::alert::Alert> {
        let mut engine = new_engine();
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let start = T0 + 5 * DAY + 10 * HOUR;
        for call in 0..40 {
            let mut refused = event(start + call * 10_000, key, ip(place, 1), "/v1/orders", 401);
            if let Some(agent) = user_agent {
                refused.user_agent = agent.into();
            }
            events.push(refused);
        }
        alerts(&mut engine, &events)
    }

    #[test]
    fn a_retry_storm_from_the_keys_own_address_and_client_is_low() {
        let found = storm("AKIAAUTHTEST00000003", "london", None);
        let spikes = of(&found, "auth_failure_spike");
        assert_eq!(spikes.len(), 1, "{found:#?}");
        assert_eq!(spikes[0].severity, Severity::Low);
        assert_eq!(spikes[0].evidence["observed"]["asn"], 2856);
    }

    #[test]
    fn a_storm_from_a_new_network_or_client_is_medium_or_more() {
        let found = storm("AKIAAUTHTEST00000004", "london_hosting", None);
        let spikes = of(&found, "auth_failure_spike");
        assert_eq!(spikes.len(), 1, "{found:#?}");
        assert!(spikes[0].severity >= Severity::Medium, "{:?}", spikes[0].severity);
        assert_eq!(spikes[0].evidence["observed"]["network_kind"], "hosting");

        let found = storm("AKIAAUTHTEST00000005", "london", Some("curl/8.4.0"));
        let spikes = of(&found, "auth_failure_spike");
        assert_eq!(spikes.len(), 1, "{found:#?}");
        assert!(spikes[0].severity >= Severity::Medium, "{:?}", spikes[0].severity);
    }

    #[test]
    fn forty_denials_in_ten_minutes_are_a_spike_and_two_are_not() {
        let mut engine = new_engine();
        let key = "AKIAAUTHTEST00000001";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let start = T0 + 5 * DAY + 10 * HOUR;
        for call in 0..40 {
            events.push(event(
                start + call * 10_000,
                key,
                ip("london", 1),
                "/v1/customers/{id}",
                403,
            ));
        }
        let found = alerts(&mut engine, &events);
        assert_eq!(of(&found, "auth_failure_spike").len(), 1, "{found:#?}");

        let mut engine = new_engine();
        let key = "AKIAAUTHTEST00000002";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        events.push(event(start, key, ip("london", 1), "/v1/orders", 401));
        events.push(event(start + 1000, key, ip("london", 1), "/v1/orders", 401));
        assert!(of(&alerts(&mut engine, &events), "auth_failure_spike").is_empty());
    }
}
