//! Authorization failures: a spike of 401/403 answers (enumeration,
//! credential stuffing, privilege probing).

use serde_json::json;

use super::{Context, Finding, score_from_p};
use crate::baseline::KeyState;
use crate::baseline::auth::DISPERSION;
use crate::baseline::rate::tail_probability;
use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;

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
    if state.auth.threshold != Some(failures) {
        return;
    }
    let expected = state.auth.usual_failures();
    let p_value = tail_probability(failures, expected, DISPERSION);
    let window_ms = auth_model.window.as_millis() as i64;
    let window_text = humantime::format_duration(auth_model.window).to_string();
    out.push(Finding {
        detector: Detector::AuthFailureSpike,
        severity: if failures >= 5 * auth_model.min_failures { Severity::High } else { Severity::Medium },
        score: score_from_p(p_value),
        window_start_ms: state.auth.window * window_ms,
        subject: String::new(),
        summary: format!(
            "{failures} authorization failures (401/403) of {} calls in {window_text} against {expected:.1} usual; last {} {} from {}",
            state.auth.calls, event.method, event.endpoint, event.ip
        ),
        evidence: json!({
            "observed": {"failures": failures, "calls": state.auth.calls, "window": window_text, "last_endpoint": event.endpoint, "last_status": event.status, "ip": event.ip.to_string()},
            "baseline": {"usual_failures_per_window": (expected * 100.0).round() / 100.0},
            "p_value": p_value,
        }),
    });
}

#[cfg(test)]
mod tests {
    use crate::detect::testkit::*;

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
