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

/// The largest ratio of observed to expected a key has shown, forgotten
/// with a half-life: a burst the key made last week still explains this
/// week's, one from last year hardly does. An episode under way (a run of
/// windows beyond the key's usual) joins the record only once it is over,
/// so an attack that builds up is judged against the key's past rather than
/// against its own first minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// ln of the ratio, as of `ts_ms`; 0 when the key has shown none.
    pub log_ratio: f32,
    /// ln of the peak ratio of the episode under way; 0 when none.
    pub pending: f32,
    pub ts_ms: i64,
}

impl Record {
    /// The ratio remembered at `ts_ms` (1 when none): its logarithm halves
    /// every `half_life_ms`.
    pub fn ratio_at(&self, ts_ms: i64, half_life_ms: i64) -> f64 {
        if self.log_ratio <= 0.0 {
            return 1.0;
        }
        let age = (ts_ms - self.ts_ms).max(0) as f64;
        (f64::from(self.log_ratio) * 0.5f64.powf(age / half_life_ms.max(1) as f64)).exp()
    }

    /// One closed window: `beyond` is its ratio when it is beyond the key's
    /// usual (part of an episode), `None` when it is not, which closes the
    /// episode under way into the record.
    pub fn observe(&mut self, beyond: Option<f64>, ts_ms: i64, half_life_ms: i64) {
        match beyond {
            Some(ratio) if ratio > 1.0 => self.pending = self.pending.max(ratio.ln() as f32),
            Some(_) => {}
            None if self.pending > 0.0 => {
                let peak = f64::from(self.pending).exp();
                self.pending = 0.0;
                self.raise(peak, ts_ms, half_life_ms);
            }
            None => {}
        }
    }

    /// Remembers `ratio` if it beats what is remembered at `ts_ms`.
    pub fn raise(&mut self, ratio: f64, ts_ms: i64, half_life_ms: i64) {
        if ratio > self.ratio_at(ts_ms, half_life_ms) {
            self.log_ratio = ratio.ln() as f32;
            self.ts_ms = ts_ms;
        }
    }
}

/// The silence that ended with the key's current window: the windows
/// without a single call since the one before, and what the key's own
/// profile expected in them. Set when the key's windows move; read by the
/// drop detector at the first call after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Short windows wholly without calls.
    pub windows: u32,
    /// Calls the key's hour-of-day profile expected in them (no floor; the
    /// quieter of neighbouring hours, so a shifted day is not a silence).
    pub expected: f32,
    /// ln of the probability of not one call in them under the fitted
    /// count distribution.
    pub log_p_none: f32,
    /// Whether the first hour of the silence is one the key is usually busy in.
    pub began_busy: bool,
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
    /// A boxed slice: the ring never changes length.
    pub recent: Box<[u32]>,
    /// Expected calls per short window by UTC hour (bias-corrected EWMA numerator).
    pub profile: [f32; 24],
    /// EWMA weight accumulated per hour (for bias correction).
    pub profile_weight: [f32; 24],
    /// EWMA of `(count - expected)^2 / expected` over closed windows, by UTC
    /// hour (bias-corrected by `profile_weight`): a CI job that bursts at
    /// nine every morning makes nine o'clock noisy, not the whole day.
    pub dispersion: [f32; 24],
    pub closed_windows: u64,
    /// The key's own biggest short-window burst (windows far beyond the fit).
    pub spike_record: Record,
    /// The key's own biggest long-window burst.
    pub surge_record: Record,
    /// EWMA of each closed short window's observed/expected (capped), over
    /// the model's `sustained_smoothing`: the key's level relative to its usual.
    pub level: f32,
    /// Consecutive closed short windows with `level` at or above the
    /// model's `sustained_ratio`.
    pub elevated_windows: u32,
    /// Lowest `level` in the current elevated run.
    pub elevated_min: f32,
    /// The key's own earlier sustained episodes: the lowest level each held.
    pub sustained_record: Record,
    /// The window in which the current elevated run became sustained
    /// (`i64::MIN` when none): the surge detector reports it at its first call.
    pub sustained_window: i64,
    /// The silence that ended with the current window.
    pub silence: Silence,
    /// Thresholds for the current window, settled once when first needed.
    #[serde(skip)]
    pub spike_threshold: Settled,
    #[serde(skip)]
    pub surge_threshold: Settled,
}

/// What a window is compared with for high severity, as a multiple of its
/// expectation: 1 for a key without bursts on record, otherwise
/// `burst_margin` times its biggest burst (what it takes to be medium).
pub fn usual_peak(record: f64, model: &RateModel) -> f64 {
    if record > 1.0 { model.burst_margin * record } else { 1.0 }
}

/// The counts at which a window becomes a low, medium and high finding.
/// Below the key's own biggest burst nothing is found; up to
/// `burst_margin` times it, low. Without bursts on record the three
/// start together (medium); high waits for `high_ratio` times
/// [`usual_peak`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub low: u64,
    pub medium: u64,
    pub high: u64,
}

impl Thresholds {
    /// The thresholds for a window of fitted `mean` and `dispersion`, with
    /// the key's biggest burst `record` (1 when none).
    fn settle(mean: f64, dispersion: f64, record: f64, p_value: f64, min_count: u64, model: &RateModel) -> Thresholds {
        let significant = tail_threshold(mean, dispersion, p_value).max(min_count);
        let at_ratio = |ratio: f64| (ratio * mean).ceil().min(u64::MAX as f64) as u64;
        let low = significant.max(at_ratio(record));
        let medium = if record > 1.0 {
            significant.max(at_ratio(model.burst_margin * record))
        } else {
            low
        };
        let high = medium.max(at_ratio(model.high_ratio * usual_peak(record, model)));
        Thresholds { low, medium, high }
    }

    /// Whether `count` is exactly at one of the thresholds.
    pub fn reached_by(&self, count: u64) -> bool {
        count == self.low || count == self.medium || count == self.high
    }
}

/// A window's thresholds once settled, in the space of the three counts:
/// `low` is never 0 (a threshold is at least 1), so 0 stands for "not
/// settled yet" instead of an `Option`'s tag and padding (16 bytes a key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled([u64; 3]);

impl Settled {
    pub const NONE: Settled = Settled([0; 3]);

    /// `thresholds` as settled; a `low` of 0, which [`Thresholds::settle`]
    /// never gives, would read back as not settled.
    pub fn of(thresholds: Thresholds) -> Settled {
        Settled([thresholds.low, thresholds.medium, thresholds.high])
    }

    pub fn get(self) -> Option<Thresholds> {
        let [low, medium, high] = self.0;
        (low != 0).then_some(Thresholds { low, medium, high })
    }

    pub fn is_none(self) -> bool {
        self.0[0] == 0
    }
}

/// A window's deviation adds at most this to the dispersion estimate, so one
/// extreme window (or the first day after a shift of hours) cannot make an
/// hour look noisy for weeks.
const MAX_DEVIATION: f64 = 64.0;

/// Share of the model's `sustained_ratio` from which the level is watched:
/// windows above expectation then teach the profile only slowly.
const WATCH_SHARE: f64 = 0.6;

/// The length of a key's rings of recent windows (rate and volume): the
/// long window's short windows but the current one.
pub fn ring_slots(windows_per_long: usize) -> usize {
    windows_per_long.saturating_sub(1).max(1)
}

impl RateBaseline {
    pub fn new(windows_per_long: usize) -> RateBaseline {
        RateBaseline::with_ring(vec![0; ring_slots(windows_per_long)].into_boxed_slice())
    }

    /// A new baseline on `ring` (the recent windows), zeroed: what
    /// [`RateBaseline::new`] gives for a ring of that length, without
    /// allocating one.
    pub fn with_ring(mut ring: Box<[u32]>) -> RateBaseline {
        ring.fill(0);
        RateBaseline {
            window: i64::MIN,
            count: 0,
            recent: ring,
            profile: [0.0; 24],
            profile_weight: [0.0; 24],
            dispersion: [0.0; 24],
            closed_windows: 0,
            spike_record: Record::default(),
            surge_record: Record::default(),
            level: 1.0,
            elevated_windows: 0,
            elevated_min: 0.0,
            sustained_record: Record::default(),
            sustained_window: i64::MIN,
            silence: Silence::default(),
            spike_threshold: Settled::NONE,
            surge_threshold: Settled::NONE,
        }
    }

    /// Learned calls per short window in UTC `hour` (0 before any).
    fn learned(&self, hour: usize) -> f64 {
        let weight = f64::from(self.profile_weight[hour]);
        if weight > 0.0 {
            f64::from(self.profile[hour]) / weight
        } else {
            0.0
        }
    }

    /// Learned overdispersion of UTC `hour`, at least 1.
    fn learned_dispersion(&self, hour: usize) -> f64 {
        let weight = f64::from(self.profile_weight[hour]);
        if weight > 0.0 {
            (f64::from(self.dispersion[hour]) / weight).max(1.0)
        } else {
            1.0
        }
    }

    /// Expected calls in one short window starting at `window` (index): the
    /// largest of the learned values of its hour and `neighbours` hours either
    /// side, so a day that starts an hour earlier (a daylight-saving move)
    /// is still within what the key does.
    pub fn expected(&self, window: i64, window_ms: i64, floor: f64, neighbours: usize) -> f64 {
        let hour = hour_of_day(window * window_ms);
        let mut most = self.learned(hour);
        for offset in 1..=neighbours {
            most = most.max(self.learned((hour + offset) % 24));
            most = most.max(self.learned((hour + 24 - offset % 24) % 24));
        }
        most.max(floor)
    }

    /// Overdispersion (variance / mean) of a short window, at least 1: the
    /// largest of its hour and the neighbouring hours.
    pub fn dispersion_at(&self, window: i64, window_ms: i64, neighbours: usize) -> f64 {
        let hour = hour_of_day(window * window_ms);
        let mut most = self.learned_dispersion(hour);
        for offset in 1..=neighbours {
            most = most.max(self.learned_dispersion((hour + offset) % 24));
            most = most.max(self.learned_dispersion((hour + 24 - offset % 24) % 24));
        }
        most
    }

    /// Calls per hour the key makes in its busiest UTC hour.
    pub fn peak_hourly(&self, window_ms: i64) -> f64 {
        let per_hour = HOUR_MS as f64 / window_ms as f64;
        (0..24).map(|hour| self.learned(hour)).fold(0.0, f64::max) * per_hour
    }

    /// Moves to the window of `ts_ms` under the model's windows; `alpha` is
    /// `model.window_alpha()`, computed once by the caller.
    pub fn advance_to(&mut self, ts_ms: i64, model: &RateModel, alpha: f64, robust: bool) {
        let target = ts_ms.div_euclid(model.window_ms());
        if self.window == i64::MIN {
            self.window = target;
            return;
        }
        if target <= self.window {
            return;
        }
        self.advance(target, model, alpha, robust);
    }

    /// Mean and overdispersion fitted for the current short window.
    pub fn spike_fit(&self, model: &RateModel) -> (f64, f64) {
        let (window_ms, neighbours) = (model.window_ms(), model.seasonal_neighbours);
        (
            self.expected(self.window, window_ms, model.window_floor(), neighbours),
            self.dispersion_at(self.window, window_ms, neighbours),
        )
    }

    /// Mean and overdispersion fitted for the long window ending with the
    /// current short window.
    pub fn surge_fit(&self, model: &RateModel) -> (f64, f64) {
        self.long_fit(self.window, model)
    }

    /// Mean and overdispersion of the long window ending with `last`:
    /// variances add up over the windows, as do means.
    fn long_fit(&self, last: i64, model: &RateModel) -> (f64, f64) {
        let (window_ms, floor, neighbours) = (model.window_ms(), model.window_floor(), model.seasonal_neighbours);
        let (mut variance, mut mean) = (0.0, 0.0);
        for back in 0..=self.recent.len() as i64 {
            let window = last - back;
            let expected = self.expected(window, window_ms, floor, neighbours);
            variance += expected * self.dispersion_at(window, window_ms, neighbours);
            mean += expected;
        }
        let dispersion = if mean <= 0.0 { 1.0 } else { (variance / mean).max(1.0) };
        (mean, dispersion)
    }

    /// Sets the thresholds of the current windows once their counts reach
    /// the model's minimums, so quiet keys cost no statistics at all. The
    /// fit only moves between windows, so one computation serves a window.
    pub fn settle_thresholds(&mut self, model: &RateModel, ts_ms: i64) {
        let burst_ms = model.burst_memory.as_millis() as i64;
        if self.spike_threshold.is_none() && u64::from(self.count) >= model.min_spike_count {
            let (expected, dispersion) = self.spike_fit(model);
            let record = self.spike_record.ratio_at(ts_ms, burst_ms);
            self.spike_threshold = Settled::of(Thresholds::settle(
                expected,
                dispersion,
                record,
                model.spike_p_value,
                model.min_spike_count,
                model,
            ));
        }
        if self.surge_threshold.is_none() && self.long_window_count() >= model.min_surge_count {
            let (expected, dispersion) = self.surge_fit(model);
            let record = self.surge_record.ratio_at(ts_ms, burst_ms);
            self.surge_threshold = Settled::of(Thresholds::settle(
                expected,
                dispersion,
                record,
                model.surge_p_value,
                model.min_surge_count,
                model,
            ));
        }
    }

    /// Whether the current elevated run is a sustained one.
    pub fn is_sustained(&self, model: &RateModel) -> bool {
        u64::from(self.elevated_windows) >= model.sustained_windows()
    }

    /// Moves to window `target`, closing the current and any empty ones.
    ///
    /// With `robust`, a closed window far above what was expected moves the
    /// profile only slowly, so a burst under way does not teach the baseline
    /// to expect it before it has been judged; once a rise has lasted the
    /// model's `sustained_for`, it is a new regime and is learned at the
    /// usual pace.
    ///
    /// A sparse key closes dozens of empty windows at each call, so the
    /// empty ones take a shorter road with the same arithmetic: closing a
    /// window changes only its own hour of the profile, so what the
    /// neighbouring hours contribute is taken once per run of windows in
    /// one hour, and the calls in the long window are kept as a running
    /// sum. Every value is the one the step-by-step fit gives, bit for bit
    /// (the maximum and minimum of the same values do not depend on their
    /// order); the tests hold the step-by-step path as the reference.
    fn advance(&mut self, target: i64, model: &RateModel, alpha: f64, robust: bool) {
        let slots = self.recent.len() as i64;
        let gap = target - self.window;
        let closes = gap.min(MAX_EMPTY_WINDOWS);
        let steps = StepModel::of(model, alpha, robust);
        let mut silence = Silence::default();
        // Calls in the windows before the one being closed.
        let mut earlier = self.recent.iter().map(|slot| u64::from(*slot)).sum::<u64>();

        let first = self.window;
        let count = self.count;
        let hour = hour_of_day(first * steps.window_ms);
        let fit = WindowFit {
            own: self.learned(hour).max(steps.floor),
            judged: self.expected(first, steps.window_ms, steps.floor, steps.neighbours),
            judged_dispersion: self.dispersion_at(first, steps.window_ms, steps.neighbours),
        };
        let mut became_sustained = self.close_fitted(first, hour, count, earlier + u64::from(count), fit, &steps);
        let slot = first.rem_euclid(slots) as usize;
        earlier = earlier - u64::from(self.recent[slot]) + u64::from(count);
        self.recent[slot] = count;

        let mut run_hour = usize::MAX;
        let mut around = Around::NONE;
        for step in 1..closes {
            let window = first + step;
            let hour = hour_of_day(window * steps.window_ms);
            if hour != run_hour {
                around = self.around(hour, steps.neighbours);
                run_hour = hour;
            }
            let weight = f64::from(self.profile_weight[hour]);
            let (learned, learned_dispersion) = if weight > 0.0 {
                (
                    f64::from(self.profile[hour]) / weight,
                    (f64::from(self.dispersion[hour]) / weight).max(1.0),
                )
            } else {
                (0.0, 1.0)
            };
            let dispersion = learned_dispersion.max(around.most_dispersion);
            self.count_silent(&mut silence, learned.min(around.least), dispersion, &steps);
            let fit = WindowFit {
                own: learned.max(steps.floor),
                judged: learned.max(around.most).max(steps.floor),
                judged_dispersion: dispersion,
            };
            became_sustained |= self.close_fitted(window, hour, 0, earlier, fit, &steps);
            let slot = window.rem_euclid(slots) as usize;
            earlier -= u64::from(self.recent[slot]);
            self.recent[slot] = 0;
        }
        if gap > closes {
            // Every window of the long window lies in the skipped silence.
            self.recent.iter_mut().for_each(|slot| *slot = 0);
        }
        self.silence = silence;
        if became_sustained {
            self.sustained_window = target;
        }
        self.window = target;
        self.count = 0;
        self.spike_threshold = Settled::NONE;
        self.surge_threshold = Settled::NONE;
    }

    /// What the hours around `hour` (not `hour` itself) contribute to the
    /// fits of its windows; NaN, which `f64::max` and `f64::min` pass over,
    /// where there are none.
    fn around(&self, hour: usize, neighbours: usize) -> Around {
        let mut around = Around::NONE;
        for offset in 1..=neighbours {
            for other in [(hour + offset) % 24, (hour + 24 - offset % 24) % 24] {
                if other != hour {
                    let learned = self.learned(other);
                    around.most = around.most.max(learned);
                    around.least = around.least.min(learned);
                    around.most_dispersion = around.most_dispersion.max(self.learned_dispersion(other));
                }
            }
        }
        around
    }

    /// Counts an empty window into the silence under way, from the
    /// quietest `expected` value around its hour and its `dispersion`.
    fn count_silent(&self, silence: &mut Silence, expected: f64, dispersion: f64, steps: &StepModel) {
        // P(0) of a negative binomial of mean m and variance d*m is
        // d^(-m/(d-1)); of a Poisson, e^-m.
        let log_p_none = if dispersion <= 1.05 {
            -expected
        } else {
            -expected * dispersion.ln() / (dispersion - 1.0)
        };
        if silence.windows == 0 {
            let hourly = expected * HOUR_MS as f64 / steps.window_ms as f64;
            silence.began_busy = hourly > 0.0 && hourly >= steps.drop_busy_share * self.peak_hourly(steps.window_ms);
        }
        silence.windows += 1;
        silence.expected += expected as f32;
        silence.log_p_none += log_p_none as f32;
    }

    /// Closes one short window of UTC `hour` fitted by `fit`: its count
    /// joins the profile, the key's record of bursts and its level.
    /// `long_count` is the calls of the long window ending with it. Returns
    /// whether the window made the current elevated run sustained.
    fn close_fitted(
        &mut self,
        window: i64,
        hour: usize,
        count: u32,
        long_count: u64,
        fit: WindowFit,
        steps: &StepModel,
    ) -> bool {
        let model = steps.model;
        let (alpha, level_alpha) = (steps.alpha, steps.level_alpha);
        let WindowFit {
            own,
            judged,
            judged_dispersion,
        } = fit;
        let end_ms = (window + 1) * steps.window_ms;
        let observed = f64::from(count);
        let spread = (judged_dispersion * judged).sqrt();
        let burst_ms = steps.burst_ms;

        // The key's own record of bursts, short and long.
        let spike_burst = (u64::from(count) >= model.min_spike_count
            && observed > judged + model.burst_sd * spread + 1.0)
            .then(|| observed / judged);
        self.spike_record.observe(spike_burst, end_ms, burst_ms);
        let mut surge_burst = None;
        if long_count >= model.min_surge_count {
            let (long_expected, long_dispersion) = self.long_fit(window, model);
            let long_observed = long_count as f64;
            if long_observed > long_expected + model.burst_sd * (long_dispersion * long_expected).sqrt() + 1.0 {
                surge_burst = Some(long_observed / long_expected);
            }
        }
        self.surge_record.observe(surge_burst, end_ms, burst_ms);

        // The level: a burst moves it a little, a lasting rise all the way.
        let ratio = (observed / judged).min(model.sustained_cap);
        self.level = ((1.0 - level_alpha) * f64::from(self.level) + level_alpha * ratio) as f32;
        let sustained = |elevated: u32| u64::from(elevated) >= steps.sustained_windows;
        let mut became_sustained = false;
        if f64::from(self.level) >= model.sustained_ratio && long_count >= model.min_surge_count {
            self.elevated_min = if self.elevated_windows == 0 {
                self.level
            } else {
                self.elevated_min.min(self.level)
            };
            self.elevated_windows += 1;
            became_sustained = u64::from(self.elevated_windows) == steps.sustained_windows;
        } else {
            if sustained(self.elevated_windows) {
                // The episode is over: it is part of what the key does.
                self.sustained_record
                    .raise(f64::from(self.elevated_min), end_ms, burst_ms);
            }
            self.elevated_windows = 0;
        }

        let limit = judged + model.outlier_sd * spread + 1.0;
        // A window at the sustained ratio itself (with a cushion for small
        // counts), or any window above expectation while the level is
        // rising toward it, is held back too: otherwise the profile (and
        // the busiest neighbour hour it is judged by) would learn a rise
        // within the hour, before it had lasted long enough to be judged.
        let watched = observed > judged
            && (f64::from(self.level) >= WATCH_SHARE * model.sustained_ratio
                || observed >= model.sustained_ratio * judged + 2.0);
        if steps.robust && (observed > limit || watched) && !sustained(self.elevated_windows) {
            // An outlier: it moves the profile only a tenth as fast, toward
            // the limit, and leaves the dispersion alone, so an anomaly under
            // way is judged against the key's usual self rather than
            // against itself.
            let slow = alpha / 10.0;
            let weight = f64::from(self.profile_weight[hour]);
            self.profile[hour] = ((1.0 - slow) * f64::from(self.profile[hour]) + slow * limit * weight) as f32;
            self.closed_windows += 1;
            return became_sustained;
        }
        let deviation = ((observed - own).powi(2) / own).min(MAX_DEVIATION);
        self.dispersion[hour] = ((1.0 - alpha) * f64::from(self.dispersion[hour]) + alpha * deviation) as f32;
        self.profile[hour] = ((1.0 - alpha) * f64::from(self.profile[hour]) + alpha * observed) as f32;
        self.profile_weight[hour] = ((1.0 - alpha) * f64::from(self.profile_weight[hour]) + alpha) as f32;
        self.closed_windows += 1;
        became_sustained
    }

    /// Calls in the long window ending with the current short window.
    pub fn long_window_count(&self) -> u64 {
        self.recent.iter().map(|count| u64::from(*count)).sum::<u64>() + u64::from(self.count)
    }
}

/// The step-by-step path [`RateBaseline::advance`] replaced, kept as the
/// reference its shorter road must match bit for bit.
#[cfg(test)]
impl RateBaseline {
    /// The quietest learned value of the window's hour and its neighbours,
    /// without floor: what a silence is judged against.
    fn quiet_expected(&self, window: i64, window_ms: i64, neighbours: usize) -> f64 {
        let hour = hour_of_day(window * window_ms);
        let mut least = self.learned(hour);
        for offset in 1..=neighbours {
            least = least.min(self.learned((hour + offset) % 24));
            least = least.min(self.learned((hour + 24 - offset % 24) % 24));
        }
        least
    }

    /// Moves to window `target`, closing the current and any empty ones.
    ///
    /// With `robust`, a closed window far above what was expected moves the
    /// profile only slowly, so a burst under way does not teach the baseline
    /// to expect it before it has been judged; once a rise has lasted the
    /// model's `sustained_for`, it is a new regime and is learned at the
    /// usual pace.
    fn advance_stepwise(&mut self, target: i64, model: &RateModel, alpha: f64, robust: bool) {
        let slots = self.recent.len() as i64;
        let gap = target - self.window;
        let closes = gap.min(MAX_EMPTY_WINDOWS);
        let level_alpha = model.level_alpha();
        let mut silence = Silence::default();
        let mut became_sustained = false;
        for step in 0..closes {
            let window = self.window + step;
            let count = if step == 0 { self.count } else { 0 };
            if step > 0 {
                self.add_to_silence_stepwise(&mut silence, window, model);
            }
            became_sustained |= self.close_window_stepwise(window, count, model, alpha, level_alpha, robust);
            self.recent[window.rem_euclid(slots) as usize] = count;
        }
        if gap > closes {
            // Every window of the long window lies in the skipped silence.
            self.recent.iter_mut().for_each(|slot| *slot = 0);
        }
        self.silence = silence;
        if became_sustained {
            self.sustained_window = target;
        }
        self.window = target;
        self.count = 0;
        self.spike_threshold = Settled::NONE;
        self.surge_threshold = Settled::NONE;
    }

    /// Counts an empty window into the silence under way.
    fn add_to_silence_stepwise(&self, silence: &mut Silence, window: i64, model: &RateModel) {
        let (window_ms, neighbours) = (model.window_ms(), model.seasonal_neighbours);
        let expected = self.quiet_expected(window, window_ms, neighbours);
        let dispersion = self.dispersion_at(window, window_ms, neighbours);
        // P(0) of a negative binomial of mean m and variance d*m is
        // d^(-m/(d-1)); of a Poisson, e^-m.
        let log_p_none = if dispersion <= 1.05 {
            -expected
        } else {
            -expected * dispersion.ln() / (dispersion - 1.0)
        };
        if silence.windows == 0 {
            let hourly = expected * HOUR_MS as f64 / window_ms as f64;
            silence.began_busy = hourly > 0.0 && hourly >= model.drop_busy_share * self.peak_hourly(window_ms);
        }
        silence.windows += 1;
        silence.expected += expected as f32;
        silence.log_p_none += log_p_none as f32;
    }

    /// Closes one short window: its count joins the profile, the key's
    /// record of bursts and its level. Returns whether the window made the
    /// current elevated run sustained.
    fn close_window_stepwise(
        &mut self,
        window: i64,
        count: u32,
        model: &RateModel,
        alpha: f64,
        level_alpha: f64,
        robust: bool,
    ) -> bool {
        let (window_ms, floor, neighbours) = (model.window_ms(), model.window_floor(), model.seasonal_neighbours);
        let hour = hour_of_day(window * window_ms);
        let end_ms = (window + 1) * window_ms;
        let own = self.learned(hour).max(floor);
        let judged = self.expected(window, window_ms, floor, neighbours);
        let judged_dispersion = self.dispersion_at(window, window_ms, neighbours);
        let observed = f64::from(count);
        let spread = (judged_dispersion * judged).sqrt();
        let burst_ms = model.burst_memory.as_millis() as i64;

        // The key's own record of bursts, short and long.
        let spike_burst = (u64::from(count) >= model.min_spike_count
            && observed > judged + model.burst_sd * spread + 1.0)
            .then(|| observed / judged);
        self.spike_record.observe(spike_burst, end_ms, burst_ms);
        // `recent` holds the windows before this one: with it, the long
        // window ending here.
        let long_count = self.recent.iter().map(|slot| u64::from(*slot)).sum::<u64>() + u64::from(count);
        let mut surge_burst = None;
        if long_count >= model.min_surge_count {
            let (long_expected, long_dispersion) = self.long_fit(window, model);
            let long_observed = long_count as f64;
            if long_observed > long_expected + model.burst_sd * (long_dispersion * long_expected).sqrt() + 1.0 {
                surge_burst = Some(long_observed / long_expected);
            }
        }
        self.surge_record.observe(surge_burst, end_ms, burst_ms);

        // The level: a burst moves it a little, a lasting rise all the way.
        let ratio = (observed / judged).min(model.sustained_cap);
        self.level = ((1.0 - level_alpha) * f64::from(self.level) + level_alpha * ratio) as f32;
        let mut became_sustained = false;
        if f64::from(self.level) >= model.sustained_ratio && long_count >= model.min_surge_count {
            self.elevated_min = if self.elevated_windows == 0 {
                self.level
            } else {
                self.elevated_min.min(self.level)
            };
            self.elevated_windows += 1;
            became_sustained = u64::from(self.elevated_windows) == model.sustained_windows();
        } else {
            if self.is_sustained(model) {
                // The episode is over: it is part of what the key does.
                self.sustained_record
                    .raise(f64::from(self.elevated_min), end_ms, burst_ms);
            }
            self.elevated_windows = 0;
        }

        let limit = judged + model.outlier_sd * spread + 1.0;
        // A window at the sustained ratio itself (with a cushion for small
        // counts), or any window above expectation while the level is
        // rising toward it, is held back too: otherwise the profile (and
        // the busiest neighbour hour it is judged by) would learn a rise
        // within the hour, before it had lasted long enough to be judged.
        let watched = observed > judged
            && (f64::from(self.level) >= WATCH_SHARE * model.sustained_ratio
                || observed >= model.sustained_ratio * judged + 2.0);
        if robust && (observed > limit || watched) && !self.is_sustained(model) {
            // An outlier: it moves the profile only a tenth as fast, toward
            // the limit, and leaves the dispersion alone, so an anomaly under
            // way is judged against the key's usual self rather than
            // against itself.
            let slow = alpha / 10.0;
            let weight = f64::from(self.profile_weight[hour]);
            self.profile[hour] = ((1.0 - slow) * f64::from(self.profile[hour]) + slow * limit * weight) as f32;
            self.closed_windows += 1;
            return became_sustained;
        }
        let deviation = ((observed - own).powi(2) / own).min(MAX_DEVIATION);
        self.dispersion[hour] = ((1.0 - alpha) * f64::from(self.dispersion[hour]) + alpha * deviation) as f32;
        self.profile[hour] = ((1.0 - alpha) * f64::from(self.profile[hour]) + alpha * observed) as f32;
        self.profile_weight[hour] = ((1.0 - alpha) * f64::from(self.profile_weight[hour]) + alpha) as f32;
        self.closed_windows += 1;
        became_sustained
    }
}

/// A short window's fit: its own hour's learned calls (floored), and the
/// expectation and overdispersion it is judged by.
#[derive(Debug, Clone, Copy)]
struct WindowFit {
    own: f64,
    judged: f64,
    judged_dispersion: f64,
}

/// What the hours around one hour contribute to its windows' fits: the
/// most and least learned calls and the most overdispersion.
#[derive(Debug, Clone, Copy)]
struct Around {
    most: f64,
    least: f64,
    most_dispersion: f64,
}

impl Around {
    /// No neighbouring hours: NaN is passed over by `f64::max` and `f64::min`.
    const NONE: Around = Around {
        most: f64::NAN,
        least: f64::NAN,
        most_dispersion: f64::NAN,
    };
}

/// The model's values every closed window reads, derived once per advance.
struct StepModel<'a> {
    model: &'a RateModel,
    alpha: f64,
    level_alpha: f64,
    robust: bool,
    window_ms: i64,
    floor: f64,
    neighbours: usize,
    burst_ms: i64,
    sustained_windows: u64,
    drop_busy_share: f64,
}

impl<'a> StepModel<'a> {
    fn of(model: &'a RateModel, alpha: f64, robust: bool) -> StepModel<'a> {
        StepModel {
            model,
            alpha,
            level_alpha: model.level_alpha(),
            robust,
            window_ms: model.window_ms(),
            floor: model.window_floor(),
            neighbours: model.seasonal_neighbours,
            burst_ms: model.burst_memory.as_millis() as i64,
            sustained_windows: model.sustained_windows(),
            drop_busy_share: model.drop_busy_share,
        }
    }
}

fn hour_of_day(ts_ms: i64) -> usize {
    (ts_ms.div_euclid(HOUR_MS).rem_euclid(24)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    fn model() -> RateModel {
        Model::default_model().rate
    }

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

    /// Feeds `calls(day, hour)` calls an hour, spread evenly, for `days`.
    fn learn(rate: &mut RateBaseline, model: &RateModel, days: i64, calls: impl Fn(i64, i64) -> i64) {
        let alpha = model.window_alpha();
        for day in 0..days {
            for hour in 0..24i64 {
                let calls = calls(day, hour);
                for call in 0..calls {
                    let ts = day * 86_400_000 + hour * HOUR_MS + call * (HOUR_MS / calls);
                    rate.advance_to(ts, model, alpha, day >= 3);
                    rate.count += 1;
                }
            }
        }
    }

    #[test]
    fn profile_learns_hour_of_day_and_judges_by_the_busiest_neighbour() {
        let model = model();
        let window_ms = model.window_ms();
        let mut rate = RateBaseline::new(12);
        learn(&mut rate, &model, 5, |_, hour| if hour == 9 { 60 } else { 1 });
        let nine = rate.learned(9);
        assert!(nine > 3.0 && nine < 6.0, "{nine}");
        assert!(rate.learned(3) < 0.5, "{}", rate.learned(3));
        // Eight and ten o'clock are judged against nine's level, three
        // o'clock against its own (or the floor).
        let eight = rate.expected(8 * 12, window_ms, model.window_floor(), 1);
        assert!((eight - nine).abs() < 1e-9, "{eight} vs {nine}");
        let three = rate.expected(3 * 12, window_ms, model.window_floor(), 1);
        assert!(three < 0.5, "{three}");
        // Without neighbours, eight o'clock is judged by itself.
        assert!(rate.expected(8 * 12, window_ms, model.window_floor(), 0) < 0.5);
    }

    #[test]
    fn long_window_sums_recent_windows() {
        let model = model();
        let alpha = model.window_alpha();
        let mut rate = RateBaseline::new(4);
        let window_ms = model.window_ms();
        for window in 0..10i64 {
            rate.advance_to(window * window_ms, &model, alpha, false);
            rate.count += 2;
        }
        assert_eq!(rate.long_window_count(), 8);
        rate.advance_to(100 * window_ms, &model, alpha, false);
        rate.count += 1;
        assert_eq!(rate.long_window_count(), 1);
    }

    #[test]
    fn a_record_holds_an_episode_only_once_it_is_over_and_fades() {
        let day = 86_400_000;
        let mut record = Record::default();
        record.observe(Some(5.0), 0, 30 * day);
        record.observe(Some(20.0), 1, 30 * day);
        assert_eq!(record.ratio_at(1, 30 * day), 1.0, "not while under way");
        record.observe(None, 2, 30 * day);
        assert!((record.ratio_at(2, 30 * day) - 20.0).abs() < 1e-3);
        // ln 20 halves in a half-life: sqrt(20).
        let later = record.ratio_at(2 + 30 * day, 30 * day);
        assert!((later - 20f64.sqrt()).abs() < 1e-3, "{later}");
        record.observe(Some(3.0), 3, 30 * day);
        record.observe(None, 4, 30 * day);
        assert!(
            (record.ratio_at(4, 30 * day) - 20.0).abs() < 1e-2,
            "a smaller episode keeps the record"
        );
    }

    #[test]
    fn a_silence_through_busy_hours_is_measured_against_the_profile() {
        let model = model();
        let window_ms = model.window_ms();
        let mut rate = RateBaseline::new(12);
        // 120 calls an hour from 08:00 to 20:00 UTC for a week.
        learn(
            &mut rate,
            &model,
            7,
            |_, hour| if (8..20).contains(&hour) { 120 } else { 0 },
        );
        // Day 7: calls until 10:00, then nothing until 15:00.
        let day7 = 7 * 86_400_000;
        rate.advance_to(day7 + 10 * HOUR_MS - 1000, &model, model.window_alpha(), true);
        rate.count += 1;
        rate.advance_to(day7 + 15 * HOUR_MS, &model, model.window_alpha(), true);
        let silence = rate.silence;
        assert!(silence.began_busy);
        assert_eq!(i64::from(silence.windows), 5 * HOUR_MS / window_ms);
        assert!(silence.expected > 400.0, "{silence:?}");
        assert!(silence.log_p_none < -100.0, "{silence:?}");
        // The evening is not busy: a silence from 20:00 did not begin busy.
        let mut evening = rate.clone();
        evening.advance_to(day7 + 20 * HOUR_MS - 1000, &model, model.window_alpha(), true);
        evening.count += 1;
        evening.advance_to(day7 + 23 * HOUR_MS, &model, model.window_alpha(), true);
        assert!(!evening.silence.began_busy, "{:?}", evening.silence);
    }

    /// A small deterministic generator for the randomised states below.
    struct Draws(u64);

    impl Draws {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound.max(1)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Often zero, otherwise spread over several orders of magnitude.
        fn amount(&mut self, scale: f64) -> f32 {
            match self.below(4) {
                0 => 0.0,
                _ => (scale * self.unit().powi(3)) as f32,
            }
        }
    }

    fn random_record(draws: &mut Draws, window_ms: i64) -> Record {
        Record {
            log_ratio: draws.amount(4.0),
            pending: if draws.below(3) == 0 { draws.amount(4.0) } else { 0.0 },
            ts_ms: draws.below(1_000) as i64 * window_ms,
        }
    }

    fn random_state(draws: &mut Draws, model: &RateModel) -> RateBaseline {
        let window_ms = model.window_ms();
        let mut rate = RateBaseline::new(1 + draws.below(24) as usize);
        rate.window = 10_000 + draws.below(500) as i64;
        rate.count = match draws.below(3) {
            0 => 0,
            1 => draws.below(5) as u32,
            _ => draws.below(2_000) as u32,
        };
        for slot in rate.recent.iter_mut() {
            *slot = if draws.below(2) == 0 {
                0
            } else {
                draws.below(400) as u32
            };
        }
        for hour in 0..24 {
            let weight = if draws.below(5) == 0 { 0.0 } else { draws.unit() as f32 };
            rate.profile_weight[hour] = weight;
            rate.profile[hour] = draws.amount(60.0) * weight;
            rate.dispersion[hour] = draws.amount(80.0) * weight;
        }
        rate.closed_windows = draws.below(100_000);
        rate.spike_record = random_record(draws, window_ms);
        rate.surge_record = random_record(draws, window_ms);
        rate.sustained_record = random_record(draws, window_ms);
        rate.level = (draws.unit() * 12.0) as f32;
        rate.elevated_windows = draws.below(40) as u32;
        rate.elevated_min = (draws.unit() * 6.0) as f32;
        rate
    }

    /// Models that reach every branch of closing a window: no, one and
    /// more neighbours than a day has hours, long windows judged from a
    /// single call, spikes from none.
    fn varied_models() -> Vec<RateModel> {
        let mut models = Vec::new();
        for neighbours in [1, 0, 2, 13, 30] {
            let mut varied = model();
            varied.seasonal_neighbours = neighbours;
            models.push(varied);
        }
        let mut eager = model();
        eager.min_surge_count = 1;
        eager.min_spike_count = 0;
        eager.sustained_ratio = 1.5;
        models.push(eager);
        let mut shy = model();
        shy.min_surge_count = 3;
        shy.outlier_sd = 0.5;
        shy.burst_sd = 0.5;
        models.push(shy);
        models
    }

    #[test]
    fn closing_runs_of_windows_matches_the_step_by_step_path_bit_for_bit() {
        let mut draws = Draws(0x0123_4567_89ab_cdef);
        let mut compared = 0;
        for model in varied_models() {
            let alpha = model.window_alpha();
            for _ in 0..1_500 {
                let state = random_state(&mut draws, &model);
                let gap = match draws.below(6) {
                    0 => 1,
                    1 => 1 + draws.below(12) as i64,
                    2 => 1 + draws.below(300) as i64,
                    3 => MAX_EMPTY_WINDOWS - 2 + draws.below(5) as i64,
                    _ => 1 + draws.below(700) as i64,
                };
                let robust = draws.below(4) != 0;
                let target = state.window + gap;
                let mut fast = state.clone();
                fast.advance(target, &model, alpha, robust);
                let mut reference = state.clone();
                reference.advance_stepwise(target, &model, alpha, robust);
                // Debug prints every float in a form that reads back to the
                // same bits (and tells -0 from 0): equal text, equal state.
                assert_eq!(
                    format!("{fast:?}"),
                    format!("{reference:?}"),
                    "from {state:?}, gap {gap}, robust {robust}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 7 * 1_500);
    }

    #[test]
    fn a_learned_week_then_sparse_calls_stays_identical_to_the_step_by_step_path() {
        // States grown by the baseline itself rather than drawn: a busy
        // week, then calls hours apart, each advance compared.
        let model = model();
        let alpha = model.window_alpha();
        let mut fast = RateBaseline::new(12);
        learn(
            &mut fast,
            &model,
            7,
            |day, hour| if (8..20).contains(&hour) { 30 + day } else { 2 },
        );
        let mut reference = fast.clone();
        let mut draws = Draws(42);
        let mut ts = 7 * 86_400_000;
        for _ in 0..400 {
            ts += draws.below(6 * HOUR_MS as u64) as i64;
            let robust = draws.below(3) != 0;
            let calls = draws.below(40) as u32;
            let target = ts.div_euclid(model.window_ms());
            if target > fast.window {
                fast.advance(target, &model, alpha, robust);
                reference.advance_stepwise(target, &model, alpha, robust);
            }
            fast.count += calls;
            reference.count += calls;
            assert_eq!(format!("{fast:?}"), format!("{reference:?}"));
        }
    }
}
