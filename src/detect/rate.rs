//! Call rate: spikes in the short window and sustained surges in the long
//! one, judged by a tail probability of the key's own fitted count
//! distribution for that hour of day; and dormant keys that wake up.

use serde_json::json;

use super::{Context, Finding, score_from_p};
use crate::baseline::KeyState;
use crate::baseline::rate::tail_probability;
use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;
use crate::event::format_ts;

/// A key silent for longer than the model's `dormant_after` is used again.
/// Judged before the event is absorbed.
pub fn check_dormant(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let rate_model = &ctx.model.rate;
    let silence_ms = event.ts_ms - state.last_ts;
    if state.events == 0 || silence_ms < rate_model.dormant_after.as_millis() as i64 {
        return;
    }
    if state.events < rate_model.dormant.min_events
        || state.last_ts - state.first_ts < rate_model.dormant.min_age.as_millis() as i64
    {
        return;
    }
    let days = silence_ms as f64 / 86_400_000.0;
    out.push(Finding {
        detector: Detector::DormantKey,
        severity: Severity::Medium,
        score: (1.0 - rate_model.dormant_after.as_millis() as f64 / silence_ms as f64 / 2.0).clamp(0.5, 0.99),
        window_start_ms: state.last_ts,
        subject: String::new(),
        summary: format!(
            "key silent for {days:.0} days used again from {} ({}), calling {}",
            event.ip,
            event.geo.country.as_str(),
            event.endpoint
        ),
        evidence: json!({
            "observed": {"ip": event.ip.to_string(), "country": event.geo.country.as_str(), "asn": event.geo.asn, "endpoint": event.endpoint},
            "baseline": {
                "last_use": format_ts(state.last_ts),
                "first_use": format_ts(state.first_ts),
                "events_before": state.events,
                "silence_days": (days * 10.0).round() / 10.0,
                "dormant_after_days": rate_model.dormant_after.as_secs() / 86_400,
            },
        }),
    });
}

/// Spike (short window) and surge (long window). Judged after the event is
/// counted, against the thresholds the baseline settled for its windows: a
/// window alerts once, when its count reaches the threshold.
pub fn check_rate(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let rate_model = &ctx.model.rate;
    if !state.has_learned(event.ts_ms, &rate_model.learning) {
        return;
    }
    let window_ms = rate_model.window_ms();
    let count = u64::from(state.rate.count);
    if state.rate.spike_threshold == Some(count) {
        // The fitted mean and dispersion only explain the alert.
        let (expected, dispersion) = state.rate.spike_fit(rate_model);
        let p_value = tail_probability(count, expected, dispersion);
        let start = state.rate.window * window_ms;
        out.push(rate_finding(
            Detector::RateSpike,
            state,
            event,
            count,
            expected,
            dispersion,
            p_value,
            rate_model.spike_window,
            start,
        ));
    }
    let long_count = state.rate.long_window_count();
    if let Some(threshold) = state.rate.surge_threshold
        && (long_count >= threshold && state.rate.count == 1 || long_count == threshold)
    {
        let (expected, dispersion) = state.rate.surge_fit(rate_model);
        let windows = state.rate.recent.len() as i64 + 1;
        let p_value = tail_probability(long_count, expected, dispersion);
        let start = (state.rate.window + 1 - windows) * window_ms;
        out.push(rate_finding(
            Detector::RateSurge,
            state,
            event,
            long_count,
            expected,
            dispersion,
            p_value,
            rate_model.surge_window,
            start,
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn rate_finding(
    detector: Detector,
    state: &KeyState,
    event: &ResolvedEvent,
    count: u64,
    expected: f64,
    dispersion: f64,
    p_value: f64,
    window: std::time::Duration,
    window_start_ms: i64,
) -> Finding {
    let window_text = humantime::format_duration(window).to_string();
    let ratio = count as f64 / expected.max(1e-9);
    Finding {
        detector,
        severity: if ratio >= 10.0 {
            Severity::High
        } else {
            Severity::Medium
        },
        score: score_from_p(p_value),
        window_start_ms,
        subject: String::new(),
        summary: format!(
            "{count} calls in {window_text} against {expected:.1} expected at this hour ({ratio:.0}x, p={p_value:.1e})"
        ),
        evidence: json!({
            "observed": {"calls": count, "window": window_text, "last_ip": event.ip.to_string(), "last_endpoint": event.endpoint},
            "baseline": {
                "expected_calls": (expected * 100.0).round() / 100.0,
                "dispersion": (dispersion * 100.0).round() / 100.0,
                "hour_utc": (event.ts_ms / 3_600_000).rem_euclid(24),
                "events": state.events,
            },
            "ratio": (ratio * 10.0).round() / 10.0,
            "p_value": p_value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::testkit::*;

    #[test]
    fn a_burst_of_300_calls_in_five_minutes_is_a_spike() {
        let mut engine = new_engine();
        let key = "AKIARATETEST00000001";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let burst_start = T0 + 5 * DAY + 10 * HOUR;
        for call in 0..300 {
            events.push(event(
                burst_start + call * 1000,
                key,
                ip("london", 1),
                "/v1/orders/{id}",
                200,
            ));
        }
        let found = alerts(&mut engine, &events);
        let spikes = of(&found, "rate_spike");
        assert_eq!(spikes.len(), 1, "{found:#?}");
        assert!(spikes[0].evidence["observed"]["calls"].as_u64().unwrap() >= 12);
        assert!(spikes[0].evidence["p_value"].as_f64().unwrap() < 1e-7);
    }

    #[test]
    fn ordinary_days_raise_no_rate_alert() {
        let mut engine = new_engine();
        let found = alerts(
            &mut engine,
            &history("AKIARATETEST00000002", "london", 10, 40, ENDPOINTS),
        );
        assert!(
            of(&found, "rate_spike").is_empty() && of(&found, "rate_surge").is_empty(),
            "{found:#?}"
        );
    }

    #[test]
    fn a_sustained_surge_over_an_hour_is_a_surge() {
        let mut engine = new_engine();
        let key = "AKIARATETEST00000003";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let start = T0 + 5 * DAY + 10 * HOUR;
        // 8 calls a minute for an hour: never 30 in five minutes would be a
        // spike at this key's rate only with a lower floor, but 480 in an
        // hour against 12 expected is a surge.
        for call in 0..480 {
            events.push(event(start + call * 7_500, key, ip("london", 1), "/v1/orders", 200));
        }
        let found = alerts(&mut engine, &events);
        assert!(!of(&found, "rate_surge").is_empty(), "{found:#?}");
    }

    #[test]
    fn a_key_silent_for_forty_days_wakes_up() {
        let mut engine = new_engine();
        let key = "AKIARATETEST00000004";
        let mut events = history(key, "london", 5, 2, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(last + 40 * DAY, key, ip("london", 1), "/v1/orders", 200));
        let found = alerts(&mut engine, &events);
        assert_eq!(of(&found, "dormant_key").len(), 1, "{found:#?}");

        let mut engine = new_engine();
        let key = "AKIARATETEST00000005";
        let mut events = history(key, "london", 5, 2, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(last + 10 * DAY, key, ip("london", 1), "/v1/orders", 200));
        assert!(of(&alerts(&mut engine, &events), "dormant_key").is_empty());
    }
}
