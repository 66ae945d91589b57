//! Call rate: spikes in the short window and surges in the long one, judged
//! by a tail probability of the key's own fitted count distribution for
//! that hour of day and weighed against the key's own record of bursts;
//! sustained rises of level; busy keys falling silent; and dormant keys
//! that wake up.

use serde_json::json;

use super::{Context, Finding, score_from_p};
use crate::baseline::KeyState;
use crate::baseline::rate::{tail_probability, usual_peak};
use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;
use crate::event::format_ts;

/// A key silent for longer than the model's `dormant_after` is used again.
/// Judged before the event is absorbed.
pub fn check_dormant(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let rate_model = &ctx.model.rate;
    // A key back from eviction is judged on the use it had before.
    let history = state.use_history();
    let silence_ms = event.ts_ms - history.last_ts;
    if history.events == 0 || silence_ms < rate_model.dormant_after.as_millis() as i64 {
        return;
    }
    if history.events < rate_model.dormant.min_events
        || history.last_ts - history.first_ts < rate_model.dormant.min_age.as_millis() as i64
    {
        return;
    }
    let days = silence_ms as f64 / 86_400_000.0;
    out.push(Finding {
        detector: Detector::DormantKey,
        severity: Severity::Medium,
        score: (1.0 - rate_model.dormant_after.as_millis() as f64 / silence_ms as f64 / 2.0).clamp(0.5, 0.99),
        window_start_ms: history.last_ts,
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
                "last_use": format_ts(history.last_ts),
                "first_use": format_ts(history.first_ts),
                "events_before": history.events,
                "silence_days": (days * 10.0).round() / 10.0,
                "dormant_after_days": rate_model.dormant_after.as_secs() / 86_400,
            },
        }),
    });
}

/// A busy key fell silent through hours it is usually active in. Judged at
/// its first call after the silence (event time only: no timers), before
/// the call is absorbed, from the silence its windows recorded on moving.
pub fn check_drop(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let rate_model = &ctx.model.rate;
    let silence = &state.rate.silence;
    // Only the first call of a window can end a silence.
    if state.rate.count != 0 || silence.windows == 0 || state.events == 0 {
        return;
    }
    if !state.has_learned(event.ts_ms, &rate_model.learning) {
        return;
    }
    let silent_ms = event.ts_ms - state.last_ts;
    if silent_ms < rate_model.drop_min_silence.as_millis() as i64
        || silent_ms >= rate_model.dormant_after.as_millis() as i64
    {
        return;
    }
    let expected = f64::from(silence.expected);
    let log_p_none = f64::from(silence.log_p_none);
    if !silence.began_busy || expected < rate_model.drop_min_expected || log_p_none >= rate_model.drop_p_value.ln() {
        return;
    }
    let hours = silent_ms as f64 / 3_600_000.0;
    let p_value = log_p_none.exp();
    let peak = state.rate.peak_hourly(rate_model.window_ms());
    out.push(Finding {
        detector: Detector::RateDrop,
        severity: Severity::Low,
        score: score_from_p(p_value),
        window_start_ms: state.last_ts,
        subject: String::new(),
        summary: format!(
            "no call for {hours:.1} h through hours in which the key usually makes {expected:.0} calls (p={p_value:.1e})"
        ),
        evidence: json!({
            "observed": {"calls": 0, "silent_hours": (hours * 10.0).round() / 10.0, "last_call": format_ts(state.last_ts)},
            "baseline": {
                "expected_calls": expected.round(),
                "busiest_hour_calls": peak.round(),
                "events": state.events,
            },
            "p_value": p_value,
        }),
    });
}

/// Spike (short window) and surge (long window), judged after the event is
/// counted against the thresholds the baseline settled for its windows: a
/// window alerts once, when its count reaches the threshold. Severity then
/// weighs the excess against the key's own record of bursts. And sustained
/// surges: a level well above the usual for hours, reported once per run.
pub fn check_rate(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let rate_model = &ctx.model.rate;
    if !state.has_learned(event.ts_ms, &rate_model.learning) {
        return;
    }
    let window_ms = rate_model.window_ms();
    let burst_ms = rate_model.burst_memory.as_millis() as i64;
    let count = u64::from(state.rate.count);
    if state
        .rate
        .spike_threshold
        .get()
        .is_some_and(|thresholds| thresholds.reached_by(count))
    {
        // The fitted mean and dispersion only explain the alert.
        let (expected, dispersion) = state.rate.spike_fit(rate_model);
        let judged = Judged {
            count,
            expected,
            dispersion,
            p_value: tail_probability(count, expected, dispersion),
            record: state.rate.spike_record.ratio_at(event.ts_ms, burst_ms),
        };
        let start = state.rate.window * window_ms;
        out.push(rate_finding(
            Detector::RateSpike,
            state,
            event,
            &judged,
            ctx,
            rate_model.spike_window,
            start,
        ));
    }
    let long_count = state.rate.long_window_count();
    let windows = state.rate.recent.len() as i64 + 1;
    let start = (state.rate.window + 1 - windows) * window_ms;
    // The long window also jumps as old windows leave it: its first call
    // in a new short window reports a level already passed.
    if let Some(thresholds) = state.rate.surge_threshold.get()
        && (thresholds.reached_by(long_count) || state.rate.count == 1 && long_count >= thresholds.low)
    {
        let (expected, dispersion) = state.rate.surge_fit(rate_model);
        let judged = Judged {
            count: long_count,
            expected,
            dispersion,
            p_value: tail_probability(long_count, expected, dispersion),
            record: state.rate.surge_record.ratio_at(event.ts_ms, burst_ms),
        };
        // A burst within one short window fills the long window too: when
        // the spike already said as much about this burst, the surge is
        // the same news.
        let severity = judged.severity(ctx);
        let spike_said_it =
            state.alerts.last_fired.iter().any(|fired| {
                fired.detector == Detector::RateSpike && fired.ts_ms >= start && fired.severity >= severity
            }) || out
                .iter()
                .any(|finding| finding.detector == Detector::RateSpike && finding.severity >= severity);
        if !spike_said_it {
            out.push(rate_finding(
                Detector::RateSurge,
                state,
                event,
                &judged,
                ctx,
                rate_model.surge_window,
                start,
            ));
        }
    }
    if state.rate.sustained_window == state.rate.window && state.rate.count == 1 && state.rate.is_sustained(rate_model)
    {
        out.push(sustained_finding(state, event, ctx, long_count, start));
    }
}

/// A window's count against its fit and the key's own record of bursts.
struct Judged {
    count: u64,
    expected: f64,
    dispersion: f64,
    p_value: f64,
    /// The key's biggest burst (ratio to expected), 1 when it has none.
    record: f64,
}

impl Judged {
    fn ratio(&self) -> f64 {
        self.count as f64 / self.expected.max(1e-9)
    }

    /// Low while within `burst_margin` of what the key has itself shown
    /// (the thresholds keep anything below its own biggest burst out);
    /// high once far above its usual even counting its bursts.
    fn severity(&self, ctx: &Context) -> Severity {
        let model = &ctx.model.rate;
        let ratio = self.ratio();
        if self.record > 1.0 && ratio < model.burst_margin * self.record {
            Severity::Low
        } else if ratio / usual_peak(self.record, model) >= model.high_ratio {
            Severity::High
        } else {
            Severity::Medium
        }
    }
}

fn rate_finding(
    detector: Detector,
    state: &KeyState,
    event: &ResolvedEvent,
    judged: &Judged,
    ctx: &Context,
    window: std::time::Duration,
    window_start_ms: i64,
) -> Finding {
    let window_text = humantime::format_duration(window).to_string();
    let (count, expected, p_value) = (judged.count, judged.expected, judged.p_value);
    let ratio = judged.ratio();
    let severity = judged.severity(ctx);
    let usual = if judged.record > 1.0 {
        format!("; its biggest burst was {:.0}x", judged.record)
    } else {
        String::new()
    };
    Finding {
        detector,
        severity,
        score: score_from_p(p_value),
        window_start_ms,
        subject: String::new(),
        summary: format!(
            "{count} calls in {window_text} against {expected:.1} expected at this hour ({ratio:.0}x, p={p_value:.1e}){usual}"
        ),
        evidence: json!({
            "observed": {"calls": count, "window": window_text, "last_ip": event.ip.to_string(), "last_endpoint": event.endpoint},
            "baseline": {
                "expected_calls": (expected * 100.0).round() / 100.0,
                "dispersion": (judged.dispersion * 100.0).round() / 100.0,
                "biggest_burst_ratio": (judged.record * 10.0).round() / 10.0,
                "hour_utc": (event.ts_ms / 3_600_000).rem_euclid(24),
                "events": state.events,
            },
            "ratio": (ratio * 10.0).round() / 10.0,
            "p_value": p_value,
        }),
    }
}

/// The key has held a level well above its usual for the model's
/// `sustained_for`: medium, unless it had such episodes before at about
/// this level.
fn sustained_finding(
    state: &KeyState,
    event: &ResolvedEvent,
    ctx: &Context,
    long_count: u64,
    window_start_ms: i64,
) -> Finding {
    let rate_model = &ctx.model.rate;
    let level = f64::from(state.rate.elevated_min);
    let record = state
        .rate
        .sustained_record
        .ratio_at(event.ts_ms, rate_model.burst_memory.as_millis() as i64);
    let severity = if record > 1.0 && level < rate_model.sustained_margin * record {
        Severity::Low
    } else {
        Severity::Medium
    };
    let (expected, _) = state.rate.surge_fit(rate_model);
    let elevated_ms = i64::from(state.rate.elevated_windows) * rate_model.window_ms();
    let hours = elevated_ms as f64 / 3_600_000.0;
    let window_text = humantime::format_duration(rate_model.surge_window).to_string();
    Finding {
        detector: Detector::RateSurge,
        severity,
        score: (1.0 - 1.0 / level.max(1.0)).clamp(0.0, 0.99),
        window_start_ms: window_start_ms.min(event.ts_ms - elevated_ms),
        subject: String::new(),
        summary: format!(
            "sustained rise: at least {level:.1}x the usual rate for {hours:.1} h ({long_count} calls in the last {window_text} against {expected:.0} expected)"
        ),
        evidence: json!({
            "observed": {"calls": long_count, "window": window_text, "level": (level * 10.0).round() / 10.0, "elevated_hours": (hours * 10.0).round() / 10.0},
            "baseline": {
                "expected_calls": (expected * 10.0).round() / 10.0,
                "earlier_sustained_level": (record * 10.0).round() / 10.0,
                "events": state.events,
            },
            "ratio": (level * 10.0).round() / 10.0,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::alert::Alert;
    use crate::detect::testkit::*;
    use crate::detector::Severity;
    use crate::event::AccessEvent;

    /// A fixed-seed generator (xorshift64*), so the series are the same on
    /// every run.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        /// Uniform in (0, 1).
        pub(crate) fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            (bits as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Poisson by counting exponential gaps (small means only).
        pub(crate) fn poisson(&mut self, mean: f64) -> u64 {
            let mut count = 0;
            let mut elapsed = -self.unit().ln();
            while elapsed < mean {
                count += 1;
                elapsed -= self.unit().ln();
            }
            count
        }
    }

    /// Calls of one key: `calls_in(rng, window_start)` calls in each
    /// five-minute window from `from` to `to`, spread over the window.
    pub(crate) fn series(
        key: &str,
        from: i64,
        to: i64,
        rng: &mut Rng,
        mut calls_in: impl FnMut(&mut Rng, i64) -> u64,
    ) -> Vec<AccessEvent<'static>> {
        let window = 5 * 60_000;
        let mut events = Vec::new();
        let mut start = from;
        while start < to {
            let calls = calls_in(rng, start);
            for call in 0..calls {
                let ts = start + (call as i64 * window) / calls as i64;
                let endpoint = ENDPOINTS[(events.len() + call as usize) % ENDPOINTS.len()];
                events.push(event(ts, key, ip("london", (call % 20) as u16), endpoint, 200));
            }
            start += window;
        }
        events
    }

    fn medium_or_above<'a>(found: &'a [Alert], detectors: &[&str]) -> Vec<&'a Alert> {
        found
            .iter()
            .filter(|alert| detectors.contains(&alert.detector.as_str()) && alert.severity >= Severity::Medium)
            .collect()
    }

    const RATE: &[&str] = &["rate_spike", "rate_surge", "rate_drop"];

    /// A key whose traffic is a steady trickle plus heavy-tailed bursts:
    /// in 4% of five-minute windows a burst of Pareto-distributed size
    /// (minimum 10 calls, tail index 1.3, so some are hundreds of times
    /// the usual window).
    pub(crate) fn bursty(key: &str, seed: u64, days: i64) -> Vec<AccessEvent<'static>> {
        let mut rng = Rng::new(seed);
        series(key, T0, T0 + days * DAY, &mut rng, |rng, _| bursty_calls(rng))
    }

    /// Calls of one five-minute window of [`bursty`].
    pub(crate) fn bursty_calls(rng: &mut Rng) -> u64 {
        let mut calls = rng.poisson(2.0);
        if rng.unit() < 0.04 {
            calls += (10.0 * rng.unit().powf(-1.0 / 1.3)).min(20_000.0) as u64;
        }
        calls
    }

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
        // A call a minute for an hour: five in five minutes is no spike at
        // this key's rate (and a burst the spike reports is not reported
        // again as a surge), but 60 in an hour against 12 expected is a
        // surge.
        for call in 0..60 {
            events.push(event(start + call * 60_000, key, ip("london", 1), "/v1/orders", 200));
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

    #[test]
    fn heavy_tailed_bursts_normal_for_the_key_raise_at_most_one_medium_incident_a_month() {
        // Three keys, 3 days of learning and a month judged each.
        let mut medium = Vec::new();
        let mut all = 0;
        for seed in 1..=3u64 {
            let mut engine = new_engine();
            let key = format!("AKIABURSTY0000000{seed:03}");
            let found = alerts(&mut engine, &bursty(&key, seed, 33));
            all += found
                .iter()
                .filter(|alert| RATE.contains(&alert.detector.as_str()))
                .count();
            medium.extend(medium_or_above(&found, RATE).into_iter().cloned());
            assert!(of(&found, "response_volume").is_empty(), "{found:#?}");
        }
        // One burst episode beyond the key's record is one incident; it may
        // rise from medium to high as the burst grows.
        let incidents: std::collections::BTreeSet<&str> =
            medium.iter().map(|alert| alert.incident_id.as_str()).collect();
        assert!(
            incidents.len() <= 3,
            "{} medium+ incidents: {medium:#?}",
            incidents.len()
        );
        assert!(
            medium.len() <= 4,
            "{} medium+ rate alerts of {all}: {medium:#?}",
            medium.len()
        );
    }

    #[test]
    fn a_sustained_fourfold_level_is_a_medium_surge_and_is_then_learned() {
        let mut engine = new_engine();
        let key = "AKIARATESHIFT0000001";
        let mut rng = Rng::new(7);
        let shift = T0 + 5 * DAY + 10 * HOUR;
        // 120 calls an hour, then four times that from day 5, 10:00, on.
        let events = series(key, T0, T0 + 12 * DAY, &mut rng, |rng, start| {
            let hour = (start / HOUR).rem_euclid(24);
            if !(8..20).contains(&hour) {
                return 0;
            }
            rng.poisson(if start >= shift { 40.0 } else { 10.0 })
        });
        // Every line: a surge may reach medium as an update of a low.
        let found = alert_lines(&mut engine, &events);
        let surges = medium_or_above(&found, &["rate_surge"]);
        assert!(!surges.is_empty(), "{found:#?}");
        assert!(
            surges[0].ts.as_str() < "2026-01-10T12:00:00Z",
            "within two hours: {surges:#?}"
        );
        // The new level is learned: nothing at medium from its third day on.
        let late: Vec<_> = medium_or_above(&found, RATE)
            .into_iter()
            .filter(|alert| alert.ts.as_str() >= "2026-01-12T00:00:00Z")
            .collect();
        assert!(late.is_empty(), "{late:#?}");
    }

    #[test]
    fn a_sustained_rise_on_a_bursty_key_is_still_a_medium_surge() {
        let mut engine = new_engine();
        let key = "AKIARATESHIFT0000002";
        // Four times the usual (trickle and bursts: about three calls a
        // window) for six hours on day 10, without a burst standing out.
        let rise = (T0 + 10 * DAY + 9 * HOUR, T0 + 10 * DAY + 15 * HOUR);
        let mut rng = Rng::new(11);
        let events = series(key, T0, T0 + 11 * DAY, &mut rng, |rng, start| {
            if (rise.0..rise.1).contains(&start) {
                rng.poisson(12.0)
            } else {
                bursty_calls(rng)
            }
        });
        let found = alerts(&mut engine, &events);
        let surges: Vec<_> = medium_or_above(&found, &["rate_surge"])
            .into_iter()
            .filter(|alert| alert.ts.as_str() >= "2026-01-15T09:00:00Z")
            .collect();
        assert!(!surges.is_empty(), "{found:#?}");
        assert!(surges[0].summary.contains("sustained"), "{surges:#?}");
    }

    #[test]
    fn a_busy_key_silent_through_its_busy_hours_is_a_low_drop() {
        let mut engine = new_engine();
        let key = "AKIARATEDROP00000001";
        let mut rng = Rng::new(3);
        let silence = (T0 + 6 * DAY + 11 * HOUR, T0 + 6 * DAY + 16 * HOUR);
        let events = series(key, T0, T0 + 8 * DAY, &mut rng, |rng, start| {
            let hour = (start / HOUR).rem_euclid(24);
            if !(8..20).contains(&hour) || (silence.0..silence.1).contains(&start) {
                return 0;
            }
            rng.poisson(10.0)
        });
        let found = alerts(&mut engine, &events);
        let drops = of(&found, "rate_drop");
        assert_eq!(drops.len(), 1, "only the mid-day silence, not the nights: {found:#?}");
        assert_eq!(drops[0].severity, Severity::Low);
        assert_eq!(drops[0].ts, "2026-01-11T16:00:00.000Z");
        assert!(drops[0].evidence["baseline"]["expected_calls"].as_f64().unwrap() > 400.0);
    }

    #[test]
    fn a_one_hour_daylight_saving_shift_of_a_business_key_raises_nothing_at_medium() {
        let mut engine = new_engine();
        let key = "AKIARATEDST000000001";
        let mut rng = Rng::new(5);
        let moved = T0 + 10 * DAY;
        // 09:00-17:00 local at UTC+1, then at UTC+2: an hour earlier in UTC.
        let events = series(key, T0, T0 + 20 * DAY, &mut rng, |rng, start| {
            let shift = if start >= moved { 2 } else { 1 };
            let local_hour = (start / HOUR + shift).rem_euclid(24);
            let mean = match local_hour {
                9 | 16 => 4.0,
                10..=15 => 8.0,
                _ => 0.0,
            };
            rng.poisson(mean)
        });
        let found = alerts(&mut engine, &events);
        let medium = medium_or_above(&found, RATE);
        assert!(medium.is_empty(), "{medium:#?}");
    }
}
