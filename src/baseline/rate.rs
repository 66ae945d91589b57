//! Per-key call rate with daily seasonality: an hour-of-day profile of the
//! expected calls per short window, an overdispersion estimate, and the
//! counts of the current short and long windows. Thresholds come from a
//! fitted negative binomial (Poisson when not overdispersed) tail.

use serde::{Deserialize, Serialize};
use statrs::distribution::{DiscreteCDF, NegativeBinomial, Poisson};

use crate::model::RateModel;

const HOUR_MS: i64 = 3_600_000;

/// Longest run of empty windows replayed one by one after a silence; past
/// it the profile is simply left as it was (a week of five-minute windows).
const MAX_EMPTY_WINDOWS: i64 = 2016;

/// Smallest count `k` with `P(X >= k) < p_value` under a count distribution
/// of mean `mean` and variance `dispersion * mean`.
pub fn tail_threshold(mean: f64, dispersion: f64, p_value: f64) -> u64 {
    let mean = mean.max(1e-6);
    if dispersion <= 1.05 {
        match Poisson::new(mean) {
            Ok(dist) => smallest_tail_count(|k| dist.sf(k), p_value),
            Err(_) => u64::MAX,
        }
    } else {
        let success = 1.0 / dispersion;
        let size = mean / (dispersion - 1.0);
        match NegativeBinomial::new(size, success) {
            Ok(dist) => smallest_tail_count(|k| dist.sf(k), p_value),
            Err(_) => u64::MAX,
        }
    }
}

/// Tail probability `P(X >= count)` under the same model as [`tail_threshold`].
pub fn tail_probability(count: u64, mean: f64, dispersion: f64) -> f64 {
    if count == 0 {
        return 1.0;
    }
    let mean = mean.max(1e-6);
    if dispersion <= 1.05 {
        Poisson::new(mean).map_or(1.0, |dist| dist.sf(count - 1))
    } else {
        NegativeBinomial::new(mean / (dispersion - 1.0), 1.0 / dispersion).map_or(1.0, |dist| dist.sf(count - 1))
    }
}

/// `sf(k) = P(X > k)`; finds the smallest `k` with `P(X >= k) = sf(k - 1) < p`.
fn smallest_tail_count(sf: impl Fn(u64) -> f64, p_value: f64) -> u64 {
    let mut high = 1u64;
    while sf(high - 1) >= p_value {
        if high > (1 << 40) {
            return u64::MAX;
        }
        high *= 2;
    }
    let mut low = 0u64;
    while low + 1 < high {
        let mid = low + (high - low) / 2;
        if sf(mid - 1) < p_value { high = mid } else { low = mid }
    }
    high
}

/// Rate state of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateBaseline {
    /// Index of the current short window (`ts / window`), `i64::MIN` before the first call.
    pub window: i64,
    /// Calls in the current short window.
    pub count: u32,
    /// Calls in the short windows before the current one that make up the
    /// long window, indexed by window number modulo their count.
    pub recent: Vec<u32>,
    /// Expected calls per short window by UTC hour (bias-corrected EWMA numerator).
    pub profile: [f64; 24],
    /// EWMA weight accumulated per hour (for bias correction).
    pub profile_weight: [f64; 24],
    /// EWMA of `(count - expected)^2 / expected` over closed windows, by UTC
    /// hour (bias-corrected by `profile_weight`): a CI job that bursts at
    /// nine every morning makes nine o'clock noisy, not the whole day.
    pub dispersion: [f64; 24],
    pub closed_windows: u64,
    /// Thresholds for the current window, settled once when first needed.
    #[serde(skip)]
    pub spike_threshold: Option<u64>,
    #[serde(skip)]
    pub surge_threshold: Option<u64>,
}

impl RateBaseline {
    pub fn new(windows_per_long: usize) -> RateBaseline {
        RateBaseline {
            window: i64::MIN,
            count: 0,
            recent: vec![0; windows_per_long.saturating_sub(1).max(1)],
            profile: [0.0; 24],
            profile_weight: [0.0; 24],
            dispersion: [0.0; 24],
            closed_windows: 0,
            spike_threshold: None,
            surge_threshold: None,
        }
    }

    /// Expected calls in one short window starting at `window` (index).
    pub fn expected(&self, window: i64, window_ms: i64, floor: f64) -> f64 {
        let hour = hour_of_day(window * window_ms);
        let weight = self.profile_weight[hour];
        let learned = if weight > 0.0 { self.profile[hour] / weight } else { 0.0 };
        learned.max(floor)
    }

    /// Overdispersion (variance / mean) of a short window, at least 1.
    pub fn dispersion_at(&self, window: i64, window_ms: i64) -> f64 {
        let hour = hour_of_day(window * window_ms);
        let weight = self.profile_weight[hour];
        if weight <= 0.0 {
            1.0
        } else {
            (self.dispersion[hour] / weight).max(1.0)
        }
    }

    /// Overdispersion of the long window ending with the current window:
    /// variances add up over the windows, as do means.
    pub fn long_window_dispersion(&self, window_ms: i64, floor: f64) -> f64 {
        let windows = self.recent.len() as i64;
        let (mut variance, mut mean) = (0.0, 0.0);
        for back in 0..=windows {
            let window = self.window - back;
            let expected = self.expected(window, window_ms, floor);
            variance += expected * self.dispersion_at(window, window_ms);
            mean += expected;
        }
        if mean <= 0.0 { 1.0 } else { (variance / mean).max(1.0) }
    }

    /// Moves to the window of `ts_ms` under the model's windows; `alpha` is
    /// `model.window_alpha()`, computed once by the caller.
    pub fn advance_to(&mut self, ts_ms: i64, model: &RateModel, alpha: f64, robust: bool) {
        self.advance(ts_ms, model.window_ms(), alpha, model.window_floor(), robust);
    }

    /// Mean and overdispersion fitted for the current short window.
    pub fn spike_fit(&self, model: &RateModel) -> (f64, f64) {
        let window_ms = model.window_ms();
        (
            self.expected(self.window, window_ms, model.window_floor()),
            self.dispersion_at(self.window, window_ms),
        )
    }

    /// Mean and overdispersion fitted for the long window ending with the
    /// current short window.
    pub fn surge_fit(&self, model: &RateModel) -> (f64, f64) {
        let (window_ms, floor) = (model.window_ms(), model.window_floor());
        (
            self.long_window_expected(window_ms, floor),
            self.long_window_dispersion(window_ms, floor),
        )
    }

    /// Sets the thresholds of the current windows once their counts reach
    /// the model's minimums, so quiet keys cost no statistics at all. The
    /// fit only moves between windows, so one computation serves a window.
    pub fn settle_thresholds(&mut self, model: &RateModel) {
        if self.spike_threshold.is_none() && u64::from(self.count) >= model.min_spike_count {
            let (expected, dispersion) = self.spike_fit(model);
            let threshold = tail_threshold(expected, dispersion, model.spike_p_value).max(model.min_spike_count);
            self.spike_threshold = Some(threshold);
        }
        if self.surge_threshold.is_none() && self.long_window_count() >= model.min_surge_count {
            let (expected, dispersion) = self.surge_fit(model);
            let threshold = tail_threshold(expected, dispersion, model.surge_p_value).max(model.min_surge_count);
            self.surge_threshold = Some(threshold);
        }
    }

    /// Moves to the window of `ts_ms`, closing the current and any empty ones.
    /// `alpha` is the per-window smoothing; `floor` the minimum expected count.
    ///
    /// With `robust`, a closed window counts for at most four standard
    /// deviations above what was expected, so a burst under way does not
    /// teach the baseline to expect it before it has been judged.
    fn advance(&mut self, ts_ms: i64, window_ms: i64, alpha: f64, floor: f64, robust: bool) {
        let target = ts_ms.div_euclid(window_ms);
        if self.window == i64::MIN {
            self.window = target;
            return;
        }
        if target <= self.window {
            return;
        }
        let slots = self.recent.len() as i64;
        let gap = target - self.window;
        let closes = gap.min(MAX_EMPTY_WINDOWS);
        for step in 0..closes {
            let window = self.window + step;
            let count = if step == 0 { self.count } else { 0 };
            self.close_window(window, count, window_ms, alpha, floor, robust);
            self.recent[window.rem_euclid(slots) as usize] = count;
        }
        if gap > closes {
            // Every window of the long window lies in the skipped silence.
            self.recent.iter_mut().for_each(|slot| *slot = 0);
        }
        self.window = target;
        self.count = 0;
        self.spike_threshold = None;
        self.surge_threshold = None;
    }

    fn close_window(&mut self, window: i64, count: u32, window_ms: i64, alpha: f64, floor: f64, robust: bool) {
        let expected = self.expected(window, window_ms, floor);
        let hour = hour_of_day(window * window_ms);
        let observed = f64::from(count);
        let limit = expected + 4.0 * (self.dispersion_at(window, window_ms) * expected).sqrt() + 1.0;
        if robust && observed > limit {
            // An outlier: it moves the profile only a tenth as fast, toward
            // the limit, and leaves the dispersion alone, so an anomaly under
            // way is judged against the key's usual self rather than
            // against itself; a lasting change of level still gets learned.
            let slow = alpha / 10.0;
            self.profile[hour] = (1.0 - slow) * self.profile[hour] + slow * limit * self.profile_weight[hour];
            self.closed_windows += 1;
            return;
        }
        let deviation = (observed - expected).powi(2) / expected;
        self.dispersion[hour] = (1.0 - alpha) * self.dispersion[hour] + alpha * deviation;
        self.profile[hour] = (1.0 - alpha) * self.profile[hour] + alpha * observed;
        self.profile_weight[hour] = (1.0 - alpha) * self.profile_weight[hour] + alpha;
        self.closed_windows += 1;
    }

    /// Calls in the long window ending with the current short window.
    pub fn long_window_count(&self) -> u64 {
        self.recent.iter().map(|count| u64::from(*count)).sum::<u64>() + u64::from(self.count)
    }

    /// Expected calls over the long window ending with the current window.
    pub fn long_window_expected(&self, window_ms: i64, floor: f64) -> f64 {
        let windows = self.recent.len() as i64;
        (0..=windows)
            .map(|back| self.expected(self.window - back, window_ms, floor))
            .sum()
    }
}

fn hour_of_day(ts_ms: i64) -> usize {
    (ts_ms.div_euclid(HOUR_MS).rem_euclid(24)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_grow_with_mean_and_dispersion() {
        let calm = tail_threshold(2.0, 1.0, 1e-7);
        let busier = tail_threshold(20.0, 1.0, 1e-7);
        let bursty = tail_threshold(2.0, 50.0, 1e-7);
        assert!(calm > 2 && calm < 20, "{calm}");
        assert!(busier > calm);
        assert!(bursty > calm * 5, "{bursty} vs {calm}");
        assert!(tail_probability(calm, 2.0, 1.0) < 1e-7);
        assert!(tail_probability(calm - 1, 2.0, 1.0) >= 1e-7);
    }

    #[test]
    fn profile_learns_hour_of_day() {
        let window_ms = 300_000;
        let mut rate = RateBaseline::new(12);
        for day in 0..5i64 {
            for hour in 0..24i64 {
                let calls = if hour == 9 { 60 } else { 1 };
                for call in 0..calls {
                    let ts = day * 86_400_000 + hour * HOUR_MS + call * (HOUR_MS / calls);
                    rate.advance(ts, window_ms, 0.03, 0.01, false);
                    rate.count += 1;
                }
            }
        }
        let nine = rate.expected(9 * 12, window_ms, 0.01);
        let three = rate.expected(3 * 12, window_ms, 0.01);
        assert!(nine > 3.0 && nine < 6.0, "{nine}");
        assert!(three < 0.5, "{three}");
    }

    #[test]
    fn long_window_sums_recent_windows() {
        let window_ms = 1000;
        let mut rate = RateBaseline::new(4);
        for second in 0..10i64 {
            rate.advance(second * 1000, window_ms, 0.1, 0.1, false);
            rate.count += 2;
        }
        assert_eq!(rate.long_window_count(), 8);
        rate.advance(100_000, window_ms, 0.1, 0.1, false);
        rate.count += 1;
        assert_eq!(rate.long_window_count(), 1);
    }
}
