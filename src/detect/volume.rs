//! Response volume: the big calls of the long window (each far above the
//! key's own high quantile of bytes per call) against the key's usual
//! share of them. More
//! calls at the usual size are the rate detectors' business, and a
//! heavy-tailed key's odd large response is within its usual share; many
//! calls that each carry many times the usual bytes through the key's own
//! endpoints are how a stolen key exfiltrates.

use serde_json::json;
use statrs::distribution::{DiscreteCDF, Poisson};

use super::{Context, Finding, score_from_p};
use crate::baseline::KeyState;
use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;
use crate::model::VolumeModel;

/// Judged after the event is counted, and only when the event is itself a
/// big call (so ordinary calls cost nothing). A finding is made when the
/// event lifts the long window to a higher severity than it had without
/// it: a window reports once per level.
pub fn check_volume(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let model = &ctx.model.volume;
    let volume = &state.volume;
    if volume.big == 0 || !volume.is_big(event.bytes_out, model) {
        return;
    }
    if !state.has_learned(event.ts_ms, &model.learning) {
        return;
    }
    let Some(usual) = volume.usual_per_call() else {
        return;
    };
    let usual = usual.max(1.0);
    let calls = state.rate.long_window_count();
    let big = volume.long_window_big();
    let bytes = volume.long_window_bytes();
    let expected_big = calls as f64 * volume.big_share(model.min_big_share);
    let Some((severity, p_value)) = judge_window(big, expected_big, bytes, calls, usual, model) else {
        return;
    };
    let before = judge_window(
        big - 1,
        expected_big,
        bytes - event.bytes_out as f64,
        calls.saturating_sub(1),
        usual,
        model,
    );
    if before.is_some_and(|(before, _)| before >= severity) {
        return;
    }
    let rate_model = &ctx.model.rate;
    let (expected_calls, _) = state.rate.surge_fit(rate_model);
    let per_call = bytes / calls.max(1) as f64;
    let ratio = per_call / usual;
    let expected_bytes = expected_calls * usual;
    let windows = state.rate.recent.len() as i64 + 1;
    let window_ms = rate_model.window_ms();
    let window_text = humantime::format_duration(rate_model.surge_window).to_string();
    out.push(Finding {
        detector: Detector::ResponseVolume,
        severity,
        score: score_from_p(p_value),
        window_start_ms: (state.rate.window + 1 - windows) * window_ms,
        subject: String::new(),
        summary: format!(
            "{big} of {calls} calls in {window_text} returned over {} each ({expected_big:.1} expected); {} in all, {} per call against the key's usual {} ({ratio:.0}x)",
            human_bytes(volume.big_bytes(model)),
            human_bytes(bytes),
            human_bytes(per_call),
            human_bytes(usual)
        ),
        evidence: json!({
            "observed": {
                "big_calls": big,
                "calls": calls,
                "bytes": bytes.round(),
                "bytes_per_call": per_call.round(),
                "window": window_text,
                "last_ip": event.ip.to_string(),
                "last_endpoint": event.endpoint,
                "last_bytes": event.bytes_out,
            },
            "baseline": {
                "usual_bytes_per_call": usual.round(),
                "big_call_bytes": volume.big_bytes(model).round(),
                "expected_big_calls": (expected_big * 100.0).round() / 100.0,
                "expected_calls": (expected_calls * 10.0).round() / 10.0,
                "expected_bytes": expected_bytes.round(),
                "events": state.events,
            },
            "ratio": (ratio * 10.0).round() / 10.0,
            "p_value": p_value,
        }),
    });
}

/// The severity of a long window with `big` big calls where
/// `expected_big` were expected, and its tail probability: low and medium
/// by the probability, medium too when the bytes per call reach the model's
/// `medium_ratio`, high when the probability says medium and the bytes per
/// call reach its `high_ratio`.
fn judge_window(
    big: u64,
    expected_big: f64,
    bytes: f64,
    calls: u64,
    usual: f64,
    model: &VolumeModel,
) -> Option<(Severity, f64)> {
    if big < model.min_big_calls || bytes < model.min_bytes {
        return None;
    }
    let p_value = Poisson::new(expected_big.max(1e-9)).map_or(1.0, |dist| dist.sf(big - 1));
    let per_call_ratio = bytes / calls.max(1) as f64 / usual;
    if p_value >= model.low_p_value {
        return None;
    }
    let severity = if p_value < model.medium_p_value && per_call_ratio >= model.high_ratio {
        Severity::High
    } else if p_value < model.medium_p_value || per_call_ratio >= model.medium_ratio {
        Severity::Medium
    } else {
        Severity::Low
    };
    Some((severity, p_value))
}

/// Bytes for people: `512 B`, `3.4 KiB`, `12.0 MiB`.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::rate::tests::{Rng, bursty, series};
    use crate::detect::testkit::*;
    use crate::detector::Severity;
    use crate::event::AccessEvent;

    /// Response sizes of ordinary calls: log-normal around 4 KiB, with a
    /// heavy tail (one call in fifty is a 40-400 KiB listing).
    fn ordinary_bytes(rng: &mut Rng) -> u64 {
        let normal = (-2.0 * rng.unit().ln()).sqrt() * (std::f64::consts::TAU * rng.unit()).cos();
        let mut bytes = 4096.0 * (0.6 * normal).exp();
        if rng.unit() < 0.02 {
            bytes *= 10.0 * rng.unit().powf(-1.0);
        }
        bytes.min(4e6) as u64
    }

    /// Business-hours traffic of `per_window` calls a window on average,
    /// days `from_day` to `to_day`, with ordinary response sizes.
    fn ordinary(key: &str, from_day: i64, to_day: i64, per_window: f64, seed: u64) -> Vec<AccessEvent<'static>> {
        let mut rng = Rng::new(seed);
        let mut events = series(key, T0 + from_day * DAY, T0 + to_day * DAY, &mut rng, |rng, start| {
            let hour = (start / HOUR).rem_euclid(24);
            if (8..20).contains(&hour) {
                rng.poisson(per_window)
            } else {
                0
            }
        });
        for event in &mut events {
            event.bytes_out = ordinary_bytes(&mut rng);
        }
        events
    }

    #[test]
    fn fifty_times_the_bytes_at_twice_the_calls_is_medium_or_high_within_the_hour() {
        let mut engine = new_engine();
        let key = "AKIAVOLUME0000000001";
        let mut events = ordinary(key, 0, 6, 5.0, 21);
        // Day 5 from 10:00 for two hours: as many extra calls again, through
        // the key's own endpoints and place, carrying 49 times the owner's
        // bytes between them (50x in all).
        let start = T0 + 5 * DAY + 10 * HOUR;
        let mut rng = Rng::new(22);
        let mut extra = series(key, start, start + 2 * HOUR, &mut rng, |rng, _| rng.poisson(5.0));
        for event in &mut extra {
            event.bytes_out = 49 * 4096 + (rng.unit() * 8192.0) as u64;
        }
        events.extend(extra);
        events.sort_by_key(|event| event.ts_ms);
        let found = alerts(&mut engine, &events);
        let volume = of(&found, "response_volume");
        let first_medium = volume
            .iter()
            .find(|alert| alert.severity >= Severity::Medium)
            .unwrap_or_else(|| panic!("{found:#?}"));
        assert!(
            first_medium.ts.as_str() < "2026-01-10T11:00:00Z",
            "within the first hour: {volume:#?}"
        );
        assert!(
            first_medium.evidence["observed"]["big_calls"].as_u64().unwrap() >= 5,
            "{first_medium:#?}"
        );
        assert!(
            first_medium.evidence["baseline"]["usual_bytes_per_call"]
                .as_f64()
                .unwrap()
                < 10_000.0,
            "{first_medium:#?}"
        );
        assert!(
            volume.iter().all(|alert| alert.ts.as_str() >= "2026-01-10T10:00:00Z"),
            "nothing before the exfiltration: {volume:#?}"
        );
    }

    #[test]
    fn ordinary_traffic_with_heavy_tailed_sizes_raises_no_rate_or_volume_alert() {
        let mut engine = new_engine();
        let found = alerts(&mut engine, &ordinary("AKIAVOLUME0000000002", 0, 14, 5.0, 31));
        for detector in ["response_volume", "rate_spike", "rate_surge", "rate_drop"] {
            assert!(of(&found, detector).is_empty(), "{detector}: {found:#?}");
        }
    }

    #[test]
    fn bursts_of_ordinary_calls_are_not_volume() {
        let mut engine = new_engine();
        let mut events = bursty("AKIAVOLUME0000000003", 41, 20);
        let mut rng = Rng::new(42);
        for event in &mut events {
            event.bytes_out = ordinary_bytes(&mut rng);
        }
        let found = alerts(&mut engine, &events);
        assert!(of(&found, "response_volume").is_empty(), "{found:#?}");
    }
}
