//! Which endpoints a key calls: a decaying top-K table, the current mix
//! window, and recent first uses.

use serde::{Deserialize, Serialize};

use super::recent::RecentTimes;
use super::topk::TopK;
use crate::model::EndpointModel;

/// First uses of endpoints within an hour of each other count together.
const FIRST_USES: RecentTimes = RecentTimes {
    span_ms: 3_600_000,
    max_kept: usize::MAX,
};

/// Endpoint mix of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointBaseline {
    pub endpoints: TopK,
    /// Index of the current mix window.
    pub window: i64,
    /// Calls per endpoint id in the current mix window (bounded: new ids past
    /// the bound are counted only in `window_other`).
    pub window_counts: super::compact::CompactVec<(u32, u32)>,
    pub window_other: u32,
    pub window_total: u32,
    /// Window total at which the mix is judged next.
    pub next_check: u32,
    /// Whether the event just absorbed brought the window total to
    /// `next_check`: the mix is judged on it.
    #[serde(skip)]
    pub mix_check_due: bool,
    /// Times of recent first uses of endpoints.
    pub recent_new: super::compact::CompactVec<i64>,
}

impl EndpointBaseline {
    /// Moves the mix window and the decay of the table to `ts_ms`.
    pub fn advance_to(&mut self, ts_ms: i64, model: &EndpointModel) {
        self.advance(ts_ms, model.mix_window.as_millis() as i64, model.mix_min_calls as u32);
        self.endpoints.decay_to(ts_ms, model.half_life.as_millis() as i64);
    }

    /// Counts one call: in the mix window and in the table. The mix is due
    /// to be judged each time the window's count doubles past the model's
    /// minimum.
    pub fn absorb(&mut self, endpoint_id: u32, ts_ms: i64, model: &EndpointModel) {
        self.count_in_window(endpoint_id, model.max_endpoints);
        self.endpoints.add(endpoint_id, ts_ms, model.max_endpoints);
        self.mix_check_due = self.window_total >= self.next_check;
        if self.mix_check_due {
            self.next_check = self.next_check.saturating_mul(2);
        }
    }

    /// Records a judged first use of an endpoint at `ts_ms`.
    pub fn record_first_use(&mut self, ts_ms: i64) {
        FIRST_USES.record(&mut self.recent_new, ts_ms);
    }

    /// The recent first uses as [`EndpointBaseline::record_first_use`] at
    /// `ts_ms` leaves them: the time of the earliest and how many.
    pub fn first_uses_with(&self, ts_ms: i64) -> (i64, usize) {
        FIRST_USES.foresee(&self.recent_new, ts_ms)
    }

    /// Moves the mix window to the one holding `ts_ms`.
    fn advance(&mut self, ts_ms: i64, window_ms: i64, min_calls: u32) {
        let window = ts_ms.div_euclid(window_ms);
        if window != self.window || self.next_check == 0 {
            self.window = window;
            self.window_counts.clear();
            self.window_other = 0;
            self.window_total = 0;
            self.next_check = min_calls.max(1);
        }
    }

    fn count_in_window(&mut self, id: u32, capacity: usize) {
        self.window_total += 1;
        if let Some(slot) = self.window_counts.iter_mut().find(|(slot_id, _)| *slot_id == id) {
            slot.1 += 1;
        } else if self.window_counts.len() < capacity {
            self.window_counts.push((id, 1));
        } else {
            self.window_other += 1;
        }
    }

    /// Jensen-Shannon divergence in bits (0..1) between the current window's
    /// mix and the baseline's.
    pub fn window_divergence(&self) -> f64 {
        let baseline_total = self.endpoints.total();
        let window_total = f64::from(self.window_total);
        if baseline_total <= 0.0 || window_total <= 0.0 {
            return 0.0;
        }
        let mut divergence = 0.0;
        let mut window_seen = 0.0;
        let mut baseline_seen = 0.0;
        let term = |p: f64, q: f64| {
            let m = 0.5 * (p + q);
            let mut value = 0.0;
            if p > 0.0 {
                value += 0.5 * p * (p / m).log2();
            }
            if q > 0.0 {
                value += 0.5 * q * (q / m).log2();
            }
            value
        };
        for entry in &self.endpoints.entries {
            let q = entry.weight / baseline_total;
            let p = self
                .window_counts
                .iter()
                .find(|(id, _)| *id == entry.id)
                .map_or(0.0, |(_, count)| f64::from(*count) / window_total);
            window_seen += p;
            baseline_seen += q;
            divergence += term(p, q);
        }
        // Everything of the window the baseline does not hold, against the
        // baseline's "other" bucket.
        let p_rest = (1.0 - window_seen).max(0.0);
        let q_rest = (1.0 - baseline_seen).max(0.0);
        divergence += term(p_rest, q_rest);
        divergence.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_due_each_time_the_window_count_doubles() {
        let mut mix = EndpointBaseline::default();
        let model = crate::model::Model::default_model().endpoints;
        let mut due_at = Vec::new();
        mix.advance_to(0, &model);
        for call in 1..=1000u32 {
            mix.absorb(1, 0, &model);
            if mix.mix_check_due {
                due_at.push(call);
            }
        }
        let first = model.mix_min_calls as u32;
        assert_eq!(due_at, [first, 2 * first, 4 * first, 8 * first]);
    }

    #[test]
    fn divergence_is_zero_for_the_same_mix_and_high_for_a_new_one() {
        let mut mix = EndpointBaseline::default();
        for _ in 0..90 {
            mix.endpoints.add(1, 0, 8);
        }
        for _ in 0..10 {
            mix.endpoints.add(2, 0, 8);
        }
        mix.advance(0, 3_600_000, 10);
        for _ in 0..9 {
            mix.count_in_window(1, 8);
        }
        mix.count_in_window(2, 8);
        assert!(mix.window_divergence() < 0.01, "{}", mix.window_divergence());
        mix.advance(3_600_000, 3_600_000, 10);
        for _ in 0..10 {
            mix.count_in_window(3, 8);
        }
        assert!(mix.window_divergence() > 0.9, "{}", mix.window_divergence());
    }
}
