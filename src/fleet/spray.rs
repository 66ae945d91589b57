//! The source view: state keyed by source network rather than by key. One
//! network calling with many keys unfamiliar with it (from a network
//! neither the key nor the organisation uses, or refused on a key not
//! learned yet, as guessed keys are) in a short event
//! time is one `source_spray` incident listing every key, raised once when
//! the count crosses the threshold and extended (same incident id, at most
//! `spray_max_alerts` alerts) while it goes on: once when its keys double,
//! and once when it ends (its source quiet for `spray_incident_gap`, or the
//! input over) if it gained keys since, listing them all.
//!
//! Observations are put in event-time order before they are judged: each
//! waits in a heap until the newest event time seen is `reorder_lateness`
//! past it, and leaves in the order of all its fields. So the outputs do
//! not depend on how the observations of several keys interleaved on the
//! way here (batches, partitions, threads), only on the observations.
//! No raw key is held: keys are their fingerprints.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alert::{Alert, Output, Window, stable_id};
use crate::detector::{Detector, Severity};
use crate::event::format_ts;
use crate::key_text::{Hint, fingerprint_bits, fingerprint_text};
use crate::model::AcrossKeysModel;

/// Observations a view holds at most while it waits for its keyed
/// partitions (about 100 MB); past it the oldest is judged at once.
pub const MAX_HELD_OBSERVATIONS: usize = 1 << 20;

/// Distinct addresses remembered per incident, for the evidence.
const MAX_ADDRESSES: usize = 64;

/// One call worth the source view's attention: from a network unfamiliar
/// to its key and to the organisation, or refused on a key not learned
/// yet. Field order is the order
/// observations are judged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Observation {
    pub ts_ms: i64,
    pub ip: IpAddr,
    pub key: u128,
    pub asn: u32,
    pub country: [u8; 2],
    pub refused: bool,
    pub hint: Hint,
}

/// A source network: the /24 of an IPv4 address, the /48 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Network {
    V4([u8; 3]),
    V6([u16; 3]),
}

impl Network {
    pub fn of(ip: IpAddr) -> Network {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Network::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let segments = v6.segments();
                Network::V6([segments[0], segments[1], segments[2]])
            }
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Network::V4([a, b, c]) => write!(formatter, "{a}.{b}.{c}.0/24"),
            Network::V6([a, b, c]) => write!(formatter, "{a:x}:{b:x}:{c:x}::/48"),
        }
    }
}

/// Calls of one key from one source within the window.
#[derive(Debug, Clone, Copy)]
struct KeyCalls {
    last_ts: i64,
    calls: u64,
    refused: u64,
}

/// An open spray incident of one source.
#[derive(Debug, Clone)]
struct Incident {
    id: String,
    /// The id of the incident's first alert, which its later alerts reuse
    /// as revisions of it; empty until the first goes out.
    alert_id: String,
    /// Event time of the first alert.
    first_alert_ts: i64,
    window_start: i64,
    last_ts: i64,
    alerts: usize,
    /// The key count at which the next alert extends the incident.
    next_alert_keys: usize,
    severity: Severity,
    keys: BTreeSet<u128>,
    addresses: BTreeSet<IpAddr>,
    asns: BTreeSet<u32>,
    countries: BTreeSet<[u8; 2]>,
    calls: u64,
    refused: u64,
    /// Keys listed by the incident's last alert.
    listed: usize,
    /// The incident's newest observation: the trigger of its closing alert.
    last: Observation,
}

/// What the view holds for one source network.
#[derive(Debug, Clone, Default)]
struct SourceState {
    last_ts: i64,
    /// Keyed by fingerprint bits, which outsiders can choose through key
    /// ids: a randomly seeded hasher. Only summed, searched and retained,
    /// never read in order.
    keys: HashMap<u128, KeyCalls, ahash::RandomState>,
    incident: Option<Incident>,
}

/// The source view. Synchronous, no I/O, no clock.
pub struct SourceView {
    model: AcrossKeysModel,
    model_label: String,
    pending: BinaryHeap<Reverse<Observation>>,
    newest_ts: i64,
    last_judged_ts: i64,
    /// Keyed by source network, which outsiders choose: a randomly seeded
    /// hasher. Read in order only after sorting (`finish`, `sweep`).
    sources: HashMap<Network, SourceState, ahash::RandomState>,
    next_sweep_ts: i64,
    /// In Kafka, the event time every keyed partition has judged up to
    /// ([`SourceView::upstream_at`]): an observation at or after it may
    /// still be preceded by one that has not arrived.
    upstream_ms: i64,
    /// Judges by `upstream_ms` alone; otherwise (one engine feeding the
    /// view, in replay) by the reorder lateness.
    behind_upstream: bool,
    /// Observations judged after a later one (beyond the reorder lateness).
    pub late: u64,
    /// Observations judged before every keyed partition had passed them,
    /// because the view held [`MAX_HELD_OBSERVATIONS`].
    pub forced: u64,
    /// Alerts emitted.
    pub alerts: u64,
}

impl SourceView {
    pub fn new(model: &AcrossKeysModel, model_label: &str) -> SourceView {
        SourceView {
            model: model.clone(),
            model_label: model_label.to_string(),
            pending: BinaryHeap::new(),
            newest_ts: i64::MIN,
            last_judged_ts: i64::MIN,
            sources: HashMap::default(),
            next_sweep_ts: i64::MIN,
            upstream_ms: i64::MAX,
            behind_upstream: false,
            late: 0,
            forced: 0,
            alerts: 0,
        }
    }

    /// A view fed by several keyed partitions (the source stage in Kafka):
    /// instead of waiting the reorder lateness past the newest observation
    /// it has (which, on one partition of the source topic, need not move
    /// on at all), it judges an observation once every keyed partition has
    /// reported past it ([`SourceView::upstream_at`]). So a partition
    /// running behind the others (catching up, or held by a member that
    /// died) does not make its calls late here, and the view judges in the
    /// order one engine over all the calls would.
    pub fn behind_upstream(model: &AcrossKeysModel, model_label: &str) -> SourceView {
        SourceView {
            upstream_ms: i64::MIN,
            behind_upstream: true,
            ..SourceView::new(model, model_label)
        }
    }

    /// Takes one observation; judges those it has waited for long enough,
    /// appending alerts to `out`.
    pub fn observe(&mut self, observation: Observation, out: &mut Vec<Output>) {
        self.newest_ts = self.newest_ts.max(observation.ts_ms);
        self.pending.push(Reverse(observation));
        self.release(out);
    }

    /// Every keyed partition has judged up to `watermark_ms`
    /// ([`crate::revoke::watermark::Upstream::watermark`]): judges the
    /// observations before it.
    ///
    /// Sources quiet since long before it are as quiet as they will be, so
    /// the view sweeps there too: a spray's end is raised once every keyed
    /// partition has passed it, not only when a later call reaches this
    /// partition of the source topic (which sees only its networks' calls).
    /// The alert is the one replay raises: an incident ends with the same
    /// calls in it whenever its end is noticed.
    pub fn upstream_at(&mut self, watermark_ms: i64, out: &mut Vec<Output>) {
        self.upstream_ms = watermark_ms;
        self.release(out);
        // `i64::MAX` is every keyed partition idle: no event time to sweep at.
        if self.behind_upstream && watermark_ms != i64::MIN && watermark_ms != i64::MAX {
            self.sweep(watermark_ms - 1, out);
        }
    }

    /// Observations waiting to be judged.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Judges, in order, the waiting observations every keyed partition
    /// has passed (behind an upstream) or the newest event time is
    /// `reorder_lateness` past (otherwise); then, over
    /// [`MAX_HELD_OBSERVATIONS`], the oldest, counted as forced.
    fn release(&mut self, out: &mut Vec<Output>) {
        let ready_through = if self.behind_upstream {
            self.upstream_ms.saturating_sub(1)
        } else {
            self.newest_ts
                .saturating_sub(self.model.reorder_lateness.as_millis() as i64)
        };
        while let Some(Reverse(next)) = self.pending.peek() {
            if next.ts_ms > ready_through {
                if self.pending.len() <= MAX_HELD_OBSERVATIONS {
                    break;
                }
                self.forced += 1;
            }
            let next = *next;
            self.pending.pop();
            self.judge(next, out);
        }
    }

    /// Judges every waiting observation: the input has ended.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        while let Some(Reverse(next)) = self.pending.pop() {
            self.judge(next, out);
        }
        let mut open: Vec<(Network, Incident)> = self
            .sources
            .iter_mut()
            .filter_map(|(network, source)| Some((*network, source.incident.take()?)))
            .collect();
        open.sort_by_key(|(network, _)| *network);
        for (network, incident) in open {
            self.close(network, incident, out);
        }
    }

    /// An incident has ended: one last alert lists every key when it
    /// gained keys since its last alert.
    fn close(&mut self, network: Network, mut incident: Incident, out: &mut Vec<Output>) {
        if incident.keys.len() <= incident.listed || incident.alerts >= self.model.spray_max_alerts {
            return;
        }
        let window_ms = self.model.spray_window.as_millis() as i64;
        let trigger = incident.last;
        incident.listed = incident.keys.len();
        let alert = spray_alert(network, &incident, &trigger, &self.model_label, window_ms);
        self.alerts += 1;
        out.push(Output::Alert(alert));
    }

    /// Source networks with state.
    pub fn sources_tracked(&self) -> usize {
        self.sources.len()
    }

    /// Judges one observation at the view's clock: the newest event time
    /// judged so far. In order, that is the observation's own time. A late
    /// one (behind the clock by more than the reorder lateness: in Kafka,
    /// key partitions that progress at different speeds, after a catch-up
    /// or a rebalance) still counts for its key while the window at the
    /// clock covers it, and is dropped once it does not: so a window never
    /// joins calls further apart than its length, whatever order they came
    /// in.
    fn judge(&mut self, observation: Observation, out: &mut Vec<Output>) {
        let ts = observation.ts_ms;
        let window_ms = self.model.spray_window.as_millis() as i64;
        if ts < self.last_judged_ts {
            self.late += 1;
            if ts <= self.last_judged_ts - window_ms {
                return;
            }
        }
        self.last_judged_ts = self.last_judged_ts.max(ts);
        let now = self.last_judged_ts;
        self.sweep(now, out);
        let gap_ms = self.model.spray_incident_gap.as_millis() as i64;
        let max_keys = self.model.spray_max_keys;
        let min_keys = self.model.spray_min_keys;
        let network = Network::of(observation.ip);
        let source = self.sources.entry(network).or_default();
        source.last_ts = source.last_ts.max(ts);
        if source
            .incident
            .as_ref()
            .is_some_and(|incident| now - incident.last_ts > gap_ms)
            && let Some(ended) = source.incident.take()
        {
            self.close(network, ended, out);
        }
        let Some(source) = self.sources.get_mut(&network) else {
            return;
        };
        if source.keys.len() >= max_keys {
            source.keys.retain(|_, calls| calls.last_ts > now - window_ms);
        }
        let known = source.keys.contains_key(&observation.key);
        if known || source.keys.len() < max_keys {
            let calls = source.keys.entry(observation.key).or_insert(KeyCalls {
                last_ts: ts,
                calls: 0,
                refused: 0,
            });
            calls.last_ts = calls.last_ts.max(ts);
            calls.calls += 1;
            calls.refused += u64::from(observation.refused);
        }

        // Only a source with many keys is worth counting them in the window.
        if source.keys.len() >= min_keys {
            source.keys.retain(|_, calls| calls.last_ts > now - window_ms);
        }

        if let Some(incident) = source.incident.as_mut() {
            incident.last_ts = incident.last_ts.max(ts);
            incident.absorb(&observation, max_keys);
            let severity = incident.severity_now(self.model.spray_refused_share);
            let grown = incident.keys.len() >= incident.next_alert_keys;
            let worse = severity > incident.severity;
            // The last alert is kept for the incident's end.
            if (grown || worse) && incident.alerts + 1 < self.model.spray_max_alerts {
                incident.severity = incident.severity.max(severity);
                while incident.next_alert_keys <= incident.keys.len() {
                    incident.next_alert_keys *= 2;
                }
                incident.listed = incident.keys.len();
                let alert = spray_alert(network, incident, &observation, &self.model_label, window_ms);
                incident.alerts += 1;
                self.alerts += 1;
                out.push(Output::Alert(alert));
            }
            return;
        }
        if source.keys.len() < min_keys {
            return;
        }
        let window_start = source.keys.values().map(|calls| calls.last_ts).min().unwrap_or(ts);
        let mut incident = Incident {
            id: String::new(),
            alert_id: String::new(),
            first_alert_ts: ts,
            window_start,
            last_ts: ts,
            alerts: 0,
            next_alert_keys: min_keys * 2,
            severity: Severity::Medium,
            keys: source.keys.keys().copied().collect(),
            addresses: BTreeSet::new(),
            asns: BTreeSet::new(),
            countries: BTreeSet::new(),
            calls: source.keys.values().map(|calls| calls.calls).sum::<u64>() - 1,
            refused: source.keys.values().map(|calls| calls.refused).sum::<u64>() - u64::from(observation.refused),
            listed: 0,
            last: observation,
        };
        incident.keys.remove(&observation.key);
        incident.absorb(&observation, max_keys);
        incident.severity = incident.severity_now(self.model.spray_refused_share);
        incident.listed = incident.keys.len();
        incident.id = stable_id(
            "in",
            &[
                Detector::SourceSpray.as_str(),
                &network.to_string(),
                &ts.to_string(),
                &fingerprint_text(observation.key),
            ],
        );
        let alert = spray_alert(network, &incident, &observation, &self.model_label, window_ms);
        incident.alert_id = alert.id.clone();
        incident.alerts = 1;
        self.alerts += 1;
        out.push(Output::Alert(alert));
        source.incident = Some(incident);
    }

    /// Forgets sources whose window and incident gap have both passed,
    /// once per window of event time.
    fn sweep(&mut self, ts: i64, out: &mut Vec<Output>) {
        if ts < self.next_sweep_ts {
            return;
        }
        let window_ms = self.model.spray_window.as_millis() as i64;
        let keep_ms = window_ms.max(self.model.spray_incident_gap.as_millis() as i64);
        let mut ended: Vec<(Network, Incident)> = self
            .sources
            .iter_mut()
            .filter(|(_, source)| source.last_ts <= ts - keep_ms)
            .filter_map(|(network, source)| Some((*network, source.incident.take()?)))
            .collect();
        ended.sort_by_key(|(network, _)| *network);
        for (network, incident) in ended {
            self.close(network, incident, out);
        }
        self.sources.retain(|_, source| source.last_ts > ts - keep_ms);
        self.next_sweep_ts = ts.saturating_add(window_ms);
    }
}

impl Incident {
    fn absorb(&mut self, observation: &Observation, max_keys: usize) {
        if observation.ts_ms >= self.last.ts_ms {
            self.last = *observation;
        }
        if self.keys.len() < max_keys {
            self.keys.insert(observation.key);
        }
        if self.addresses.len() < MAX_ADDRESSES {
            self.addresses.insert(observation.ip);
        }
        if self.asns.len() < MAX_ADDRESSES && observation.asn != 0 {
            self.asns.insert(observation.asn);
        }
        if self.countries.len() < MAX_ADDRESSES {
            self.countries.insert(observation.country);
        }
        self.calls += 1;
        self.refused += u64::from(observation.refused);
    }

    fn refused_share(&self) -> f64 {
        self.refused as f64 / self.calls.max(1) as f64
    }

    /// High when most calls were refused: someone guessing keys.
    fn severity_now(&self, refused_share: f64) -> Severity {
        if self.refused_share() >= refused_share {
            Severity::High
        } else {
            Severity::Medium
        }
    }
}

fn spray_alert(
    network: Network,
    incident: &Incident,
    trigger: &Observation,
    model_label: &str,
    window_ms: i64,
) -> Alert {
    let ts = trigger.ts_ms;
    let source = network.to_string();
    let key_count = incident.keys.len();
    // Later alerts of an incident are revisions of its first.
    let id = if !incident.alert_id.is_empty() {
        incident.alert_id.clone()
    } else {
        stable_id(
            "al",
            &[
                Detector::SourceSpray.as_str(),
                &source,
                &ts.to_string(),
                &key_count.to_string(),
                &incident.calls.to_string(),
            ],
        )
    };
    let score = (key_count as f64 / (key_count as f64 + 20.0)).clamp(0.0, 1.0);
    let refused_share = incident.refused_share();
    let countries: Vec<String> = incident
        .countries
        .iter()
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .collect();
    let mut alert = Alert {
        id,
        incident_id: incident.id.clone(),
        key_fingerprint: fingerprint_text(trigger.key),
        key_hint: trigger.hint.as_str().to_string(),
        detector: Detector::SourceSpray,
        severity: incident.severity,
        score,
        ts: format_ts(ts),
        window: Window {
            start: format_ts(incident.window_start.min(ts)),
            end: format_ts(ts),
        },
        summary: format!(
            "source {source} called with {key_count} keys unfamiliar with it ({} calls, {:.0}% refused)",
            incident.calls,
            refused_share * 100.0
        ),
        evidence: json!({
            "source_network": source,
            "addresses": incident.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "asns": incident.asns,
            "countries": countries,
            "keys": key_count,
            "calls": incident.calls,
            "refused_calls": incident.refused,
            "refused_share": (refused_share * 1000.0).round() / 1000.0,
            "window_seconds": window_ms / 1000,
            "alert_of_incident": incident.alerts + 1,
        }),
        model: model_label.to_string(),
        keys: incident.keys.iter().map(|key| fingerprint_text(*key)).collect(),
        owner: None,
        revision: (incident.alerts + 1) as u32,
        // Calls folded into the incident.
        count: incident.calls,
        first_seen: format_ts(incident.first_alert_ts.min(ts)),
        last_seen: format_ts(ts),
        // The score grows with the keys, which only grow.
        peak_score: score,
    };
    // A spray's address list grows with the attack: bounded like every alert.
    crate::alert::cap::cap_alert(&mut alert, crate::alert::cap::MAX_ALERT_BYTES);
    alert
}

/// Observations as they travel between processes (the repartition by
/// source in Kafka): plain text fields, fingerprints only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationRecord {
    pub ts_ms: i64,
    pub ip: IpAddr,
    pub key_fingerprint: String,
    pub key_hint: String,
    pub asn: u32,
    pub country: String,
    pub refused: bool,
}

impl ObservationRecord {
    pub fn of(observation: &Observation) -> ObservationRecord {
        ObservationRecord {
            ts_ms: observation.ts_ms,
            ip: observation.ip,
            key_fingerprint: fingerprint_text(observation.key),
            key_hint: observation.hint.as_str().to_string(),
            asn: observation.asn,
            country: String::from_utf8_lossy(&observation.country).into_owned(),
            refused: observation.refused,
        }
    }

    /// `None` for a record whose fingerprint is not one.
    pub fn observation(&self) -> Option<Observation> {
        let country = match self.country.as_bytes() {
            [a, b] => [*a, *b],
            _ => *b"--",
        };
        Some(Observation {
            ts_ms: self.ts_ms,
            ip: self.ip,
            key: fingerprint_bits(&self.key_fingerprint)?,
            asn: self.asn,
            country,
            refused: self.refused,
            hint: Hint::new(&self.key_hint),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_571_200_000;

    fn view() -> SourceView {
        SourceView::new(&AcrossKeysModel::default(), "default@1")
    }

    fn observation(ts_ms: i64, ip: &str, key: u128, refused: bool) -> Observation {
        Observation {
            ts_ms,
            ip: ip.parse().expect("an address"),
            key,
            asn: 64_500,
            country: *b"NL",
            refused,
            hint: Hint::new("AKIA****TEST"),
        }
    }

    /// `keys` keys from one address, one call each, `gap_ms` apart.
    fn spray(keys: u128, gap_ms: i64, refused: bool) -> Vec<Observation> {
        (0..keys)
            .map(|key| observation(T0 + key as i64 * gap_ms, "203.0.113.7", 1000 + key, refused))
            .collect()
    }

    /// Ends the input and returns the alerts among `out` and what that gave.
    fn finish_alerts(view: &mut SourceView, mut out: Vec<Output>) -> Vec<Alert> {
        view.finish(&mut out);
        out.into_iter()
            .filter_map(|output| match output {
                Output::Alert(alert) => Some(alert),
                Output::Revocation(_) | Output::Digest(_) => None,
            })
            .collect()
    }

    fn run(view: &mut SourceView, observations: &[Observation]) -> Vec<Alert> {
        let mut out = Vec::new();
        for observation in observations {
            view.observe(*observation, &mut out);
        }
        finish_alerts(view, out)
    }

    #[test]
    fn one_key_short_of_the_threshold_raises_nothing() {
        assert!(run(&mut view(), &spray(19, 1000, true)).is_empty());
    }

    #[test]
    fn the_call_that_crosses_the_threshold_raises_one_alert_listing_every_key() {
        let alerts = run(&mut view(), &spray(20, 1000, true));
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let alert = &alerts[0];
        assert_eq!(alert.detector, Detector::SourceSpray);
        assert_eq!(alert.severity, Severity::High, "every call was refused");
        assert_eq!(alert.key_fingerprint, fingerprint_text(1019), "the 20th key crossed it");
        assert_eq!(alert.keys.len(), 20);
        let mut sorted = alert.keys.clone();
        sorted.sort();
        assert_eq!(alert.keys, sorted, "keys are listed in a fixed order");
        assert!(alert.keys.contains(&fingerprint_text(1000)));
        assert_eq!(alert.evidence["source_network"], "203.0.113.0/24");
        assert_eq!(alert.ts, format_ts(T0 + 19_000));
    }

    #[test]
    fn keys_spread_wider_than_the_window_raise_nothing() {
        // 20 keys, one every 40 s: never 20 within 10 minutes.
        assert!(run(&mut view(), &spray(20, 40_000, true)).is_empty());
    }

    /// `observations` as two streams that reach the view one after the
    /// other: those at odd positions first, then those at even positions
    /// (two key partitions, the second far behind the first).
    fn second_stream_far_behind(observations: &[Observation]) -> Vec<Observation> {
        let odd = observations.iter().skip(1).step_by(2);
        let even = observations.iter().step_by(2);
        odd.chain(even).copied().collect()
    }

    #[test]
    fn keys_wider_apart_than_the_window_raise_nothing_even_when_a_stream_arrives_far_behind() {
        // 40 keys one every 61 s (40 minutes): never 20 within 10 minutes,
        // in order or not. Behind the clock by more than the reorder
        // lateness, the second stream's calls count only within the window
        // at the view's clock.
        let observations = spray(40, 61_000, false);
        assert!(run(&mut view(), &observations).is_empty());
        let mut skewed = view();
        assert!(run(&mut skewed, &second_stream_far_behind(&observations)).is_empty());
        assert!(skewed.late > 0, "the second stream came in late");
    }

    #[test]
    fn a_spray_within_the_window_is_raised_even_when_half_of_it_arrives_late() {
        // 20 keys within 190 s, the second half arriving after the first
        // has moved the clock past the reorder lateness.
        let observations = spray(20, 10_000, true);
        let mut skewed = view();
        let alerts = run(&mut skewed, &second_stream_far_behind(&observations));
        assert!(skewed.late > 0, "the second stream came in late");
        assert!(!alerts.is_empty());
        assert_eq!(alerts[0].keys.len(), 20, "{:#?}", alerts[0]);
    }

    /// Keyed partition `index` of `inputs` reports it has judged up to
    /// `released_ms`.
    fn report(
        upstream: &mut crate::revoke::watermark::Upstream,
        index: usize,
        inputs: usize,
        released_ms: Option<i64>,
    ) {
        upstream.note(&crate::revoke::watermark::InputWatermark {
            input: format!("keys/{index}"),
            released_ms,
            idle: false,
            inputs: inputs as u32,
        });
    }

    /// Feeds `streams` (one per keyed partition) to a view behind its
    /// upstream, the later streams arriving whole after the earlier ones,
    /// each followed by its partition's watermark; then every partition
    /// reports past the end.
    fn run_behind_upstream(view: &mut SourceView, streams: &[Vec<Observation>]) -> Vec<Alert> {
        let mut upstream = crate::revoke::watermark::Upstream::default();
        let mut out = Vec::new();
        for (index, stream) in streams.iter().enumerate() {
            for observation in stream {
                view.observe(*observation, &mut out);
            }
            let newest = stream.iter().map(|observation| observation.ts_ms + 1).max();
            report(&mut upstream, index, streams.len(), newest);
            view.upstream_at(upstream.watermark(), &mut out);
        }
        for index in 0..streams.len() {
            report(&mut upstream, index, streams.len(), Some(i64::MAX - 1));
        }
        view.upstream_at(upstream.watermark(), &mut out);
        finish_alerts(view, out)
    }

    #[test]
    fn behind_its_upstream_a_view_judges_a_partition_far_behind_as_if_in_order() {
        // A spray, then two hours of other sources; the partition holding
        // every other call of all of it arrives after the other has ended.
        let mut observations = spray(30, 10_000, true);
        for minute in 0..120 {
            let ip = format!("192.0.2.{}", minute % 200 + 1);
            observations.push(observation(T0 + 600_000 + minute * 60_000, &ip, 7, false));
        }
        let in_order = run(&mut view(), &observations);
        assert!(!in_order.is_empty());
        let odd: Vec<Observation> = observations.iter().skip(1).step_by(2).copied().collect();
        let even: Vec<Observation> = observations.iter().step_by(2).copied().collect();

        let mut live = SourceView::behind_upstream(&AcrossKeysModel::default(), "default@1");
        let alerts = run_behind_upstream(&mut live, &[odd.clone(), even.clone()]);
        assert_eq!(live.late, 0, "nothing was judged before its partition reported past it");
        assert_eq!(live.forced, 0);
        assert_eq!(
            alerts, in_order,
            "the same alerts as one engine judging in event-time order"
        );

        let mut unaware = view();
        let skewed: Vec<Observation> = odd.into_iter().chain(even).collect();
        let without = run(&mut unaware, &skewed);
        assert!(unaware.late > 0, "without the watermarks the second partition is late");
        assert_ne!(without, in_order, "and its alerts differ");
    }

    #[test]
    fn behind_its_upstream_a_view_raises_a_sprays_end_once_every_partition_has_passed_it() {
        // A spray of 100 keys, then nothing more on this source partition:
        // the keyed partitions report two hours later (calls elsewhere).
        let observations = spray(100, 1000, true);
        let replayed = run(&mut view(), &observations);
        assert_eq!(replayed.len(), 3, "first, doubling, end");

        let mut live = SourceView::behind_upstream(&AcrossKeysModel::default(), "default@1");
        let mut upstream = crate::revoke::watermark::Upstream::default();
        let mut out = Vec::new();
        for observation in &observations {
            live.observe(*observation, &mut out);
        }
        let mut both_report = |released_ms: i64, out: &mut Vec<Output>| {
            for index in 0..2 {
                report(&mut upstream, index, 2, Some(released_ms));
            }
            live.upstream_at(upstream.watermark(), out);
        };
        both_report(T0 + 100_000, &mut out);
        let alerts = |out: &[Output]| out.iter().filter(|output| matches!(output, Output::Alert(_))).count();
        assert_eq!(alerts(&out), 2, "the spray has not ended yet");
        both_report(T0 + 7_200_000, &mut out);
        assert_eq!(alerts(&out), 3, "ended by the watermark alone, no later call");
        let live_alerts = finish_alerts(&mut live, out);
        assert_eq!(live_alerts, replayed, "the same alerts as replay");
    }

    #[test]
    fn a_view_waiting_for_a_silent_partition_judges_its_oldest_past_the_cap() {
        let mut view = SourceView::behind_upstream(&AcrossKeysModel::default(), "default@1");
        let mut out = Vec::new();
        for index in 0..(MAX_HELD_OBSERVATIONS as i64 + 3) {
            let key = 1000 + (index % 5) as u128;
            view.observe(observation(T0 + index, "198.51.100.9", key, false), &mut out);
        }
        assert_eq!(view.held(), MAX_HELD_OBSERVATIONS);
        assert_eq!(
            view.forced, 3,
            "no partition reported: only what is over the cap is judged"
        );
        assert_eq!(view.late, 0);
    }

    #[test]
    fn accepted_calls_make_a_medium_spray_and_refused_ones_a_high_one() {
        let alerts = run(&mut view(), &spray(25, 1000, false));
        assert_eq!(alerts.len(), 2, "raised at 20 keys, closed at 25");
        assert!(alerts.iter().all(|alert| alert.severity == Severity::Medium));
    }

    #[test]
    fn a_continuing_spray_is_one_incident_with_a_few_alerts() {
        let alerts = run(&mut view(), &spray(300, 2000, true));
        assert!(
            (1..=AcrossKeysModel::default().spray_max_alerts).contains(&alerts.len()),
            "{}",
            alerts.len()
        );
        let incident = &alerts[0].incident_id;
        assert!(alerts.iter().all(|alert| &alert.incident_id == incident));
        let listed: Vec<usize> = alerts.iter().map(|alert| alert.keys.len()).collect();
        assert!(listed.windows(2).all(|pair| pair[0] < pair[1]), "{listed:?}");
        assert_eq!(listed.last(), Some(&300), "the incident's end lists every key");
        let ids: BTreeSet<&String> = alerts.iter().map(|alert| &alert.id).collect();
        assert_eq!(ids.len(), 1, "later alerts are revisions of the first");
        let revisions: Vec<u32> = alerts.iter().map(|alert| alert.revision).collect();
        let expected: Vec<u32> = (1..=alerts.len() as u32).collect();
        assert_eq!(revisions, expected);
    }

    #[test]
    fn a_spray_after_a_quiet_gap_is_a_new_incident() {
        let mut observations = spray(20, 1000, true);
        let later = T0 + 3 * 3_600_000;
        observations.extend((0..20).map(|key| observation(later + key as i64 * 1000, "203.0.113.7", 5000 + key, true)));
        let alerts = run(&mut view(), &observations);
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
        assert_ne!(alerts[0].incident_id, alerts[1].incident_id);
    }

    #[test]
    fn a_spray_that_ends_is_closed_by_later_traffic_with_every_key_listed() {
        let mut view = view();
        let mut out = Vec::new();
        for observation in spray(100, 1000, true) {
            view.observe(observation, &mut out);
        }
        // Two hours later, other sources only: the sweep ends the spray.
        for minute in 0..130 {
            let ip = format!("192.0.2.{}", minute % 200 + 1);
            view.observe(observation(T0 + 7_200_000 + minute * 60_000, &ip, 1, false), &mut out);
        }
        let alerts: Vec<&Alert> = out
            .iter()
            .filter_map(|output| match output {
                Output::Alert(alert) => Some(alert),
                Output::Revocation(_) | Output::Digest(_) => None,
            })
            .collect();
        assert_eq!(alerts.len(), 3, "first, doubling, end");
        assert_eq!(alerts[2].keys.len(), 100);
        assert_eq!(alerts[2].incident_id, alerts[0].incident_id);
        assert_eq!(alerts[2].key_fingerprint, fingerprint_text(1099), "the last key called");
    }

    #[test]
    fn the_listed_keys_are_capped() {
        let alerts = run(&mut view(), &spray(800, 100, true));
        let model = AcrossKeysModel::default();
        assert!(alerts.iter().all(|alert| alert.keys.len() <= model.spray_max_keys));
    }

    #[test]
    fn sources_whose_window_has_passed_are_forgotten() {
        let mut view = view();
        let mut out = Vec::new();
        for host in 0..200u32 {
            let ip = format!("198.51.{}.{}", host / 10, host % 10 + 1);
            view.observe(
                observation(T0 + i64::from(host) * 1000, &ip, u128::from(host), true),
                &mut out,
            );
        }
        assert!(view.sources_tracked() >= 2);
        // Two hours later one call from elsewhere: every old source is gone.
        view.observe(observation(T0 + 2 * 3_600_000, "192.0.2.1", 7, true), &mut out);
        view.observe(observation(T0 + 3 * 3_600_000, "192.0.2.1", 7, true), &mut out);
        assert_eq!(view.sources_tracked(), 1);
        assert!(out.is_empty());
    }

    #[test]
    fn arrival_order_within_the_lateness_does_not_change_the_alerts() {
        let mut observations = spray(60, 1500, true);
        observations.extend(spray(10, 1500, false).into_iter().map(|mut observation| {
            observation.key += 10_000;
            observation
        }));
        observations.sort();
        let in_order = run(&mut view(), &observations);
        assert!(!in_order.is_empty());
        // Swap neighbours and reverse runs of ten: every observation stays
        // well within the two-minute lateness of its place.
        let mut shuffled = observations.clone();
        for chunk in shuffled.chunks_mut(10) {
            chunk.reverse();
        }
        assert_ne!(shuffled, observations);
        assert_eq!(run(&mut view(), &shuffled), in_order);
    }

    #[test]
    fn observations_travel_as_records_and_back() {
        let observation = observation(T0, "2001:db8::7", 0xabc, true);
        let record = ObservationRecord::of(&observation);
        assert_eq!(record.key_fingerprint, "kf_00000000000000000000000000000abc");
        let text = serde_json::to_string(&record).unwrap();
        let back: ObservationRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.observation(), Some(observation));
        assert_eq!(Network::of(observation.ip).to_string(), "2001:db8:0::/48");
    }
}
