//! Per-key response bytes: the bytes and the "big" calls (far above the
//! key's own high quantile of bytes per call) of the short windows that make up the long
//! window (the same windows as the call rate, so calls and bytes line up),
//! the key's usual bytes per call on a log scale, and its usual share of
//! big calls. Exfiltration through a key's usual endpoints shows as many
//! big calls at once, which neither more calls nor the odd large response
//! of a heavy-tailed key do.

use serde::{Deserialize, Serialize};

use super::rate::RateBaseline;
use crate::model::VolumeModel;

/// A window's bytes per call moves the usual by at most this factor either
/// way (ln 4.5 = 1.5), so an exfiltration under way is not learned before
/// it is judged, and a heavy-tailed response does not drag the usual along.
const MAX_LOG_STEP: f64 = 1.5;

/// Response-bytes state of one key. Its windows are the rate baseline's:
/// it is moved before the rate is, while that still holds the window
/// being closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeBaseline {
    /// Bytes in the current short window.
    pub bytes: f32,
    /// Big calls in the current short window.
    pub big: u16,
    /// Bytes of the short windows before the current one that make up the
    /// long window, indexed like the rate's `recent`.
    /// Rings are boxed slices: they never change length.
    pub recent: Box<[f32]>,
    /// Big calls of the same windows.
    pub recent_big: Box<[u16]>,
    /// EWMA numerator of ln(bytes per call) over closed windows with calls.
    pub log_per_call: f32,
    /// EWMA weight, for bias correction.
    pub weight: f32,
    /// The usual bytes per call, kept from the EWMA at each window's close
    /// so counting a call takes no logarithm; 0 before any.
    pub usual: f32,
    /// The key's high quantile (the model's `big_quantile`) of bytes per
    /// call, tracked call by call by multiplicative steps; big calls move
    /// it only a tenth of a step. 0 before the first call.
    pub high: f32,
    /// EWMA of big calls and of calls per closed window: their ratio is the
    /// key's usual share of big calls.
    pub big_calls: f32,
    pub calls: f32,
}

impl VolumeBaseline {
    pub fn new(windows_per_long: usize) -> VolumeBaseline {
        let slots = super::rate::ring_slots(windows_per_long);
        VolumeBaseline::with_rings(vec![0.0; slots].into_boxed_slice(), vec![0; slots].into_boxed_slice())
    }

    /// A new baseline on `recent` and `recent_big`, zeroed: what
    /// [`VolumeBaseline::new`] gives for rings of that length, without
    /// allocating them.
    pub fn with_rings(mut recent: Box<[f32]>, mut recent_big: Box<[u16]>) -> VolumeBaseline {
        recent.fill(0.0);
        recent_big.fill(0);
        VolumeBaseline {
            bytes: 0.0,
            big: 0,
            recent,
            recent_big,
            log_per_call: 0.0,
            weight: 0.0,
            usual: 0.0,
            high: 0.0,
            big_calls: 0.0,
            calls: 0.0,
        }
    }

    /// The key's usual bytes per call (geometric mean over windows), if learned.
    pub fn usual_per_call(&self) -> Option<f64> {
        (self.usual > 0.0).then_some(f64::from(self.usual))
    }

    /// The key's usual share of big calls, at least `floor`.
    pub fn big_share(&self, floor: f64) -> f64 {
        if self.calls > 0.0 {
            (f64::from(self.big_calls) / f64::from(self.calls)).max(floor)
        } else {
            floor
        }
    }

    /// Bytes in the long window ending with the current short window.
    pub fn long_window_bytes(&self) -> f64 {
        self.recent.iter().map(|bytes| f64::from(*bytes)).sum::<f64>() + f64::from(self.bytes)
    }

    /// Big calls in the long window ending with the current short window.
    pub fn long_window_big(&self) -> u64 {
        self.recent_big.iter().map(|big| u64::from(*big)).sum::<u64>() + u64::from(self.big)
    }

    /// Whether a call of `bytes_out` is big for this key: `big_ratio` times
    /// its high quantile of bytes per call.
    pub fn is_big(&self, bytes_out: u64, model: &VolumeModel) -> bool {
        self.high > 0.0 && bytes_out as f64 >= self.big_bytes(model)
    }

    /// Bytes from which a call is big.
    pub fn big_bytes(&self, model: &VolumeModel) -> f64 {
        model.big_ratio * f64::from(self.high)
    }

    /// Moves to short window `target` (of the rate's windows). Must run
    /// before the rate moves: `rate` still holds the window being closed.
    pub fn advance(&mut self, target: i64, rate: &RateBaseline, model: &VolumeModel) {
        if rate.window == i64::MIN || target <= rate.window {
            return;
        }
        let slots = self.recent.len() as i64;
        let closing = rate.window;
        if rate.count > 0 {
            self.learn(f64::from(self.bytes), f64::from(rate.count), f64::from(self.big), model);
        }
        let gap = target - closing;
        if gap > slots {
            self.recent.iter_mut().for_each(|slot| *slot = 0.0);
            self.recent_big.iter_mut().for_each(|slot| *slot = 0);
        } else {
            self.recent[closing.rem_euclid(slots) as usize] = self.bytes;
            self.recent_big[closing.rem_euclid(slots) as usize] = self.big;
            for window in closing + 1..target {
                self.recent[window.rem_euclid(slots) as usize] = 0.0;
                self.recent_big[window.rem_euclid(slots) as usize] = 0;
            }
        }
        self.bytes = 0.0;
        self.big = 0;
    }

    /// A closed window with calls joins the usual bytes per call and the
    /// usual share of big calls, each held back when far off, so an
    /// exfiltration under way is not learned before it is judged.
    fn learn(&mut self, bytes: f64, calls: f64, big: f64, model: &VolumeModel) {
        let alpha = model.alpha;
        let mut observed = (bytes.max(1.0) / calls).ln();
        if let Some(usual) = self.usual_per_call() {
            let usual = usual.ln();
            observed = observed.clamp(usual - MAX_LOG_STEP, usual + MAX_LOG_STEP);
        }
        self.log_per_call = ((1.0 - alpha) * f64::from(self.log_per_call) + alpha * observed) as f32;
        self.weight = ((1.0 - alpha) * f64::from(self.weight) + alpha) as f32;
        self.usual = (f64::from(self.log_per_call) / f64::from(self.weight)).exp() as f32;

        // A window with more big calls than chance allows teaches the share
        // only a tenth as fast, and only half as much again as expected: a
        // key that really has taken to large downloads gets there over
        // days, an exfiltration under way does not raise its own bar.
        let expected_big = calls * self.big_share(model.min_big_share);
        let (big, big_alpha) = if big > expected_big + 1.0 + 3.0 * expected_big.sqrt() {
            (1.5 * expected_big, alpha / 10.0)
        } else {
            (big, alpha)
        };
        self.big_calls = ((1.0 - big_alpha) * f64::from(self.big_calls) + big_alpha * big) as f32;
        self.calls = ((1.0 - big_alpha) * f64::from(self.calls) + big_alpha * calls) as f32;
    }

    /// Counts one call's response bytes into the current window, and moves
    /// the high quantile: up by a step of `quantile_step * q` (in log
    /// terms) for a call above it, down by `quantile_step * (1 - q)` for
    /// one below, which settles where a share `1 - q` of calls is above.
    /// Steps are `exp(x)` to second order: no logarithm per call.
    pub fn count(&mut self, bytes_out: u64, model: &VolumeModel) {
        let bytes = bytes_out.max(1) as f64;
        self.bytes += bytes_out as f32;
        if self.high <= 0.0 {
            self.high = bytes as f32;
            return;
        }
        let step = |x: f64| 1.0 + x + x * x / 2.0;
        let quantile = model.big_quantile;
        let factor = if self.is_big(bytes_out, model) {
            // A big call moves the quantile a tenth of a step: enough for a
            // key whose sizes really are that wide to get there, too little
            // for an exfiltration to hide itself within the hour.
            self.big = self.big.saturating_add(1);
            step(model.quantile_step * quantile / 10.0)
        } else if bytes > f64::from(self.high) {
            step(model.quantile_step * quantile)
        } else {
            step(-model.quantile_step * (1.0 - quantile))
        };
        self.high = (f64::from(self.high) * factor) as f32;
    }
}
