//! Times of recent occurrences on one key (first uses of endpoints, jumps
//! between places) kept over a span of event time. Detectors judge an event
//! before it is absorbed, so they ask what the times will be once it is
//! recorded; [`RecentTimes::foresee`] answers that without changing them.

/// How long occurrences are remembered, and how many at most.
#[derive(Debug, Clone, Copy)]
pub struct RecentTimes {
    /// Occurrences more than this much event time older than the newest
    /// are forgotten.
    pub span_ms: i64,
    /// Past this many, the second oldest is dropped: the oldest dates the
    /// episode, the count only needs to be large.
    pub max_kept: usize,
}

impl RecentTimes {
    /// Records an occurrence at `ts_ms` in `times` (oldest first).
    pub fn record(&self, times: &mut super::compact::CompactVec<i64>, ts_ms: i64) {
        times.retain(|ts| ts_ms - *ts <= self.span_ms);
        times.push(ts_ms);
        if times.len() > self.max_kept {
            times.remove(1);
        }
    }

    /// `times` as [`RecentTimes::record`] at `ts_ms` would leave them: the
    /// time of the oldest and how many.
    pub fn foresee(&self, times: &[i64], ts_ms: i64) -> (i64, usize) {
        let mut oldest = None;
        let mut count = 1;
        for ts in times.iter().filter(|ts| ts_ms - **ts <= self.span_ms) {
            oldest.get_or_insert(*ts);
            count += 1;
        }
        (oldest.unwrap_or(ts_ms), count.min(self.max_kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foresee_tells_what_record_leaves() {
        const SPAN: i64 = 3_600_000;
        for rule in [
            RecentTimes {
                span_ms: SPAN,
                max_kept: usize::MAX,
            },
            RecentTimes {
                span_ms: SPAN,
                max_kept: 64,
            },
        ] {
            let mut times = super::super::compact::CompactVec::new();
            // A burst past the number kept, then times just inside and just
            // outside the span.
            let burst = (0..100i64).map(|step| step * 10_000);
            for ts in burst.chain([SPAN, 2 * SPAN + 1, 2 * SPAN + 2, 5 * SPAN]) {
                let foreseen = rule.foresee(&times, ts);
                rule.record(&mut times, ts);
                assert_eq!(foreseen, (times[0], times.len()), "at {ts} with {rule:?}");
                assert!(times.len() <= rule.max_kept);
            }
            assert_eq!(times, [5 * SPAN]);
        }
    }
}
