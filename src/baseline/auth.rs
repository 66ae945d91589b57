//! Authorization failures (401/403) per window against the key's usual level.

use serde::{Deserialize, Serialize};

use super::rate::tail_threshold;
use crate::model::AuthFailureModel;

/// Failures come in small bursts even on healthy keys: a fixed
/// overdispersion keeps one retry loop from looking like an attack.
pub const DISPERSION: f64 = 3.0;

/// Failure counts of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthBaseline {
    pub window: i64,
    pub failures: u32,
    /// Failures of the window from the key's established places with its
    /// established clients: its own service retrying.
    #[serde(default)]
    pub familiar_failures: u32,
    pub calls: u32,
    /// EWMA of failures per window (bias-corrected by `level_weight`).
    pub level: f64,
    pub level_weight: f64,
    /// Threshold of the current window, settled once when first needed.
    #[serde(skip)]
    /// Never 0 (a tail threshold is at least 1), so the `Option` costs no
    /// tag.
    pub threshold: Option<std::num::NonZeroU64>,
}

/// Smoothing per window.
const ALPHA: f64 = 0.01;

impl AuthBaseline {
    pub fn advance(&mut self, ts_ms: i64, window_ms: i64) {
        let window = ts_ms.div_euclid(window_ms);
        if self.calls == 0 && self.level_weight == 0.0 {
            self.window = window;
            return;
        }
        if window <= self.window {
            return;
        }
        // Close the current window, then decay over the empty ones.
        self.level = (1.0 - ALPHA) * self.level + ALPHA * f64::from(self.failures);
        self.level_weight = (1.0 - ALPHA) * self.level_weight + ALPHA;
        let empty = (window - self.window - 1).min(100_000) as i32;
        let keep = (1.0 - ALPHA).powi(empty);
        self.level *= keep;
        self.level_weight = self.level_weight * keep + (1.0 - keep);
        self.window = window;
        self.failures = 0;
        self.familiar_failures = 0;
        self.calls = 0;
        self.threshold = None;
    }

    /// Counts one call of the current window; `familiar` says a failure came
    /// from the key's established place and client.
    pub fn count(&mut self, auth_failure: bool, familiar: bool) {
        if auth_failure {
            self.failures += 1;
            if familiar {
                self.familiar_failures += 1;
            }
        }
        self.calls += 1;
    }

    /// Share of the window's failures that came from the key's established
    /// places and clients (0 without failures).
    pub fn familiar_share(&self) -> f64 {
        if self.failures == 0 {
            0.0
        } else {
            f64::from(self.familiar_failures) / f64::from(self.failures)
        }
    }

    /// Usual failures per window, at least 0.1 so a key that never failed
    /// still has a finite tail.
    pub fn usual_failures(&self) -> f64 {
        let expected = if self.level_weight <= 0.0 {
            0.0
        } else {
            self.level / self.level_weight
        };
        expected.max(0.1)
    }

    /// Sets the window's threshold once its failures reach the model's
    /// minimum. The usual level only moves between windows, so one
    /// computation serves the whole window.
    pub fn settle_threshold(&mut self, model: &AuthFailureModel) {
        if self.threshold.is_some() || u64::from(self.failures) < model.min_failures {
            return;
        }
        let threshold = tail_threshold(self.usual_failures(), DISPERSION, model.p_value).max(model.min_failures);
        self.threshold = std::num::NonZeroU64::new(threshold.max(1));
    }
}
