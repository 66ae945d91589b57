//! Authorization failures: a spike of 401/403 answers (enumeration,
//! credential stuffing, privilege probing).

use serde_json::json;

use super::{Context, EventView, Finding, score_from_p};
use crate::alert::Severity;
use crate::baseline::KeyState;
use crate::baseline::rate::{tail_probability, tail_threshold};

/// Failures come in small bursts even on healthy keys: a fixed
/// overdispersion keeps one retry loop from looking like an attack.
const DISPERSION: f64 = 3.0;

/// Judged after the event is counted.
pub fn check_auth_failures(state: &mut KeyState, view: &EventView, ctx: &Context, out: &mut Vec<Finding>) {
    let auth_model = &ctx.model.auth_failures;
    if !view.is_auth_failure() || !state.has_learned(view.ts_ms, &auth_model.learning) {
        return;
    }
    let failures = u64::from(state.auth.failures);
    if failures < auth_model.min_failures {
        return;
    }
    // The usual level only moves between windows, so the threshold is
    // computed once per window.
    let expected = state.auth.expected().max(0.1);
    let threshold = *state
        .auth
        .threshold
        .get_or_insert_with(|| tail_threshold(expected, DISPERSION, auth_model.p_value).max(auth_model.min_failures));
    if failures != threshold {
        return;
    }
    let p_value = tail_probability(failures, expected, DISPERSION);
    let window_ms = auth_model.window.as_millis() as i64;
    let window_text = humantime::format_duration(auth_model.window).to_string();
    out.push(Finding {
        detector: "auth_failure_spike",
        severity: if failures >= 5 * auth_model.min_failures { Severity::High } else { Severity::Medium },
        score: score_from_p(p_value),
        window_start_ms: state.auth.window * window_ms,
        summary: format!(
            "{failures} authorization failures (401/403) of {} calls in {window_text} against {expected:.1} usual; last {} {} from {}",
            state.auth.calls, view.method, view.endpoint, view.ip
        ),
        evidence: json!({
            "observed": {"failures": failures, "calls": state.auth.calls, "window": window_text, "last_endpoint": view.endpoint, "last_status": view.status, "ip": view.ip.to_string()},
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
