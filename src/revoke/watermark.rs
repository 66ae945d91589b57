//! Watermarks of the revocation candidates in `keywatch run`. The keyed
//! stage's partitions write their candidates to one candidates topic, in
//! whatever interleaving the group's members happen to run in; the gate must
//! judge them in event-time order to decide as replay does
//! ([`super::gate`]). So after each batch every keyed partition also writes
//! how far its engine has judged ([`InputWatermark`]) to the same topic,
//! after its candidates: no candidate of that partition older than that can
//! follow (except from a late event). The gate judges a candidate once every
//! keyed partition has reported past it ([`Upstream::watermark`]).
//!
//! A partition that has never had an event does not hold the others back,
//! nor does one whose held events were let go by `kafka.idle_release`; when
//! every partition is idle or empty, the gate judges everything it holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A record of the candidates topic that is not a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkRecord {
    pub watermark: InputWatermark,
}

/// How far one keyed partition has judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputWatermark {
    /// The keyed partition (`topic/partition`).
    pub input: String,
    /// Its engine's [`crate::engine::Engine::candidate_watermark`]; `None`
    /// when it has had no event.
    pub released_ms: Option<i64>,
    /// Its held events were judged for idleness (`kafka.idle_release`).
    #[serde(default)]
    pub idle: bool,
    /// How many keyed partitions there are in all (0 when unknown).
    pub inputs: u32,
}

/// What one keyed partition said last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    NoEvents,
    Events(i64),
    Idle(i64),
}

/// The gate's view of every keyed partition's progress.
#[derive(Debug, Default)]
pub struct Upstream {
    reports: BTreeMap<String, Report>,
    inputs: u32,
}

impl Upstream {
    /// Takes one partition's report. A partition's time never goes back (a
    /// restored instance may report from an older checkpoint).
    pub fn note(&mut self, watermark: &InputWatermark) {
        self.inputs = self.inputs.max(watermark.inputs);
        let before = self.reports.get(&watermark.input).copied();
        let newest_before = match before {
            Some(Report::Events(ms) | Report::Idle(ms)) => Some(ms),
            _ => None,
        };
        let released = match (watermark.released_ms, newest_before) {
            (Some(ms), Some(old)) => Some(ms.max(old)),
            (ms, old) => ms.or(old),
        };
        let report = match released {
            None => Report::NoEvents,
            Some(ms) if watermark.idle => Report::Idle(ms),
            Some(ms) => Report::Events(ms),
        };
        self.reports.insert(watermark.input.clone(), report);
    }

    /// The event time before which the gate may judge every candidate:
    /// `i64::MIN` until every keyed partition has reported, then the lowest
    /// over partitions with events that are not idle; `i64::MAX` when every
    /// partition is idle or empty and at least one is idle.
    pub fn watermark(&self) -> i64 {
        if (self.reports.len() as u32) < self.inputs || self.reports.is_empty() {
            return i64::MIN;
        }
        let active = self.reports.values().filter_map(|report| match report {
            Report::Events(ms) => Some(*ms),
            _ => None,
        });
        match active.min() {
            Some(lowest) => lowest,
            None if self.reports.values().any(|report| matches!(report, Report::Idle(_))) => i64::MAX,
            None => i64::MIN,
        }
    }

    /// Keyed partitions heard from.
    pub fn reported(&self) -> usize {
        self.reports.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(input: &str, released_ms: Option<i64>, idle: bool) -> InputWatermark {
        InputWatermark {
            input: input.into(),
            released_ms,
            idle,
            inputs: 2,
        }
    }

    #[test]
    fn the_watermark_waits_for_every_partition_then_is_the_lowest() {
        let mut upstream = Upstream::default();
        upstream.note(&report("in/0", Some(500), false));
        assert_eq!(upstream.watermark(), i64::MIN, "partition 1 has not reported");
        upstream.note(&report("in/1", Some(200), false));
        assert_eq!(upstream.watermark(), 200);
        upstream.note(&report("in/1", Some(900), false));
        assert_eq!(upstream.watermark(), 500);
    }

    #[test]
    fn a_partition_never_goes_back_and_an_empty_one_holds_nobody() {
        let mut upstream = Upstream::default();
        upstream.note(&report("in/0", Some(500), false));
        upstream.note(&report("in/1", None, false));
        assert_eq!(upstream.watermark(), 500, "an empty partition does not hold the others");
        upstream.note(&report("in/0", Some(100), false));
        assert_eq!(upstream.watermark(), 500, "a restored instance's older report");
    }

    #[test]
    fn idle_partitions_hold_nobody_and_all_idle_lets_everything_go() {
        let mut upstream = Upstream::default();
        upstream.note(&report("in/0", Some(500), true));
        upstream.note(&report("in/1", Some(300), false));
        assert_eq!(upstream.watermark(), 300);
        upstream.note(&report("in/1", Some(300), true));
        assert_eq!(upstream.watermark(), i64::MAX);
        upstream.note(&report("in/0", Some(600), false));
        assert_eq!(upstream.watermark(), 600, "a new record ends idleness");
    }

    #[test]
    fn a_watermark_record_round_trips_and_is_not_a_candidate() {
        let record = WatermarkRecord {
            watermark: report("in/0", Some(5), false),
        };
        let json = serde_json::to_vec(&record).unwrap();
        assert_eq!(serde_json::from_slice::<WatermarkRecord>(&json).unwrap(), record);
        assert!(serde_json::from_slice::<crate::alert::RevocationRequest>(&json).is_err());
    }
}
