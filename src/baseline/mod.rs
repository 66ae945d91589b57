//! Per-key behavioural state, one file per behaviour. Every table is bounded
//! (top-K plus an "other" bucket, fixed rings), so memory per key does not
//! grow with traffic. State holds ids of interned strings; snapshots map them
//! back to strings.
//!
//! Key state owns its updates: [`KeyState::advance_to`] moves every window
//! and decay to an event's time, [`KeyState::absorb`] makes the event part of
//! the baseline, and [`KeyState::count_event`] counts it once it has been
//! judged. Detectors only read.

pub mod auth;
pub mod compact;
pub mod digest;
pub mod endpoints;
pub mod geo;
pub mod rate;
pub mod recent;
pub mod topk;
pub mod volume;

use serde::{Deserialize, Serialize};

use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;
use crate::model::{EndpointModel, GeoModel, Learning, Model};
pub use topk::TopK;

/// Alerting memory of one key: suppression, the open incident, the pending
/// digest and the last revocation. Most keys never raise a finding, so the
/// record lives behind one box made at the first write: a key without
/// alerts pays a pointer instead of the whole record. Reads go through
/// `Deref` (an empty record when there is none); writes go through
/// [`AlertMemory::make_mut`], so no read can allocate. It serialises as the
/// record itself, so snapshots do not change.
#[derive(Clone, Default)]
pub struct AlertMemory(Option<Box<AlertRecord>>);

/// What a key without alerts remembers: nothing.
static NO_ALERTS: AlertRecord = AlertRecord {
    last_fired: Vec::new(),
    incident_id: None,
    incident_start: 0,
    incident_last: 0,
    incident_detectors: Vec::new(),
    incident_alert_ids: Vec::new(),
    incident_revoked: false,
    digest: None,
    last_revocation: None,
};

impl AlertMemory {
    /// The record, made (empty) on first use.
    pub fn make_mut(&mut self) -> &mut AlertRecord {
        self.0.get_or_insert_with(|| Box::new(NO_ALERTS.clone()))
    }
}

impl std::ops::Deref for AlertMemory {
    type Target = AlertRecord;

    fn deref(&self) -> &AlertRecord {
        self.0.as_deref().unwrap_or(&NO_ALERTS)
    }
}

impl PartialEq for AlertMemory {
    fn eq(&self, other: &AlertMemory) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for AlertMemory {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(formatter)
    }
}

impl From<AlertRecord> for AlertMemory {
    /// Boxes the record unless it is empty.
    fn from(record: AlertRecord) -> AlertMemory {
        if record == NO_ALERTS {
            AlertMemory(None)
        } else {
            AlertMemory(Some(Box::new(record)))
        }
    }
}

impl Serialize for AlertMemory {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AlertMemory {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AlertMemory, D::Error> {
        AlertRecord::deserialize(deserializer).map(AlertMemory::from)
    }
}

/// The alerting memory of a key that has raised a finding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Per detector and subject: the last alert, while it still suppresses
    /// repeats.
    pub last_fired: Vec<Fired>,
    pub incident_id: Option<String>,
    pub incident_start: i64,
    pub incident_last: i64,
    /// Detectors that fired in the open incident.
    pub incident_detectors: Vec<Detector>,
    pub incident_alert_ids: Vec<String>,
    /// Whether a revocation was requested in the open incident.
    pub incident_revoked: bool,
    /// Low findings of the key's current UTC day, not yet sent as a digest.
    /// Boxed, as the revocation mark: few keys with alerts have either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Box<digest::PendingDigest>>,
    /// The last revocation request made for the key, kept across incidents
    /// so that the key inventory can say the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revocation: Option<Box<RevocationMark>>,
}

/// What a key remembers of the last revocation request made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationMark {
    /// Event time of the alert that asked for it.
    pub ts_ms: i64,
    pub idempotency_key: String,
    pub incident_id: String,
}

impl AlertRecord {
    /// Whether the key's alerting memory holds the alert or incident `id`
    /// (for feedback naming only an alert).
    pub fn holds_alert(&self, id: &str) -> bool {
        self.incident_id.as_deref() == Some(id)
            || self.incident_alert_ids.iter().any(|alert| alert == id)
            || self
                .last_fired
                .iter()
                .any(|fired| fired.alert_id == id || fired.incident_id == id)
    }

    /// The rules a feedback entry makes on the key: its own scope's, or,
    /// for an alert or incident without a scope, one per alert of it still
    /// open on the key (its detector and subject). Empty when it names an
    /// alert no longer open.
    pub fn feedback_rules(&self, entry: &crate::feedback::FeedbackEntry) -> Vec<crate::feedback::Rule> {
        if let Some(rule) = crate::feedback::scoped_rule(entry) {
            return vec![rule];
        }
        let id = entry.alert_id.as_deref().unwrap_or_default();
        self.last_fired
            .iter()
            .filter(|fired| !fired.alert_id.is_empty() && (fired.alert_id == id || fired.incident_id == id))
            .map(|fired| crate::feedback::alert_rule(entry, fired.detector, &fired.subject))
            .collect()
    }
}

/// The last alert of one detector on one subject (a country, a network,
/// an endpoint) of a key: while its update window lasts, repeats update it
/// (same id, next revision) instead of raising new alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub detector: Detector,
    pub subject: String,
    /// Event time of the alert's first finding: the window runs from it.
    pub ts_ms: i64,
    /// Highest severity so far.
    pub severity: Severity,
    /// The alert's id; empty for a low finding folded into a digest (and
    /// in snapshots made before alerts had revisions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alert_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub incident_id: String,
    /// The last revision sent.
    #[serde(default)]
    pub revision: u32,
    /// Findings folded in, sent or not.
    #[serde(default)]
    pub count: u64,
    /// Event time of the newest finding folded in.
    #[serde(default)]
    pub last_ms: i64,
    #[serde(default)]
    pub peak_score: f64,
    /// Start of the event-time span of the alert's first finding.
    #[serde(default)]
    pub window_start_ms: i64,
}

/// What is new about one event for its key, worked out once, after the
/// key's windows have moved to the event and before it is judged. The
/// detectors of novelty read it, and [`KeyState::absorb`] records it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Novelty {
    /// The impossibly fast move from the key's last located use to this
    /// event, when the key is old enough to be judged on travel.
    pub travel: Option<geo::Jump>,
    /// The key's first use of the event's endpoint, when the key is old
    /// enough to be judged on it.
    pub first_endpoint_use: bool,
    /// A data-centre network used from a new region alongside the key's
    /// established region of it for longer than a cutover, not yet reported.
    pub region_overlap: Option<geo::RegionOverlap>,
    /// The event arrived after the input's watermark had passed it: judged
    /// at the key's newest time, so it is not judged on travel and does not
    /// move the key's places or last located use.
    pub late: bool,
    /// The call came from an allowlisted network (`[allowlist]`): it
    /// raises no geography finding and does not move the key's places.
    pub allowlisted: bool,
}

/// Everything keywatch knows about one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    pub fingerprint: crate::key_text::Fingerprint,
    pub hint: crate::key_text::Hint,
    pub first_ts: i64,
    pub last_ts: i64,
    pub events: u64,
    pub geo: geo::GeoBaseline,
    pub rate: rate::RateBaseline,
    pub volume: volume::VolumeBaseline,
    pub endpoints: endpoints::EndpointBaseline,
    /// Client families by interned id.
    pub clients: TopK,
    pub auth: auth::AuthBaseline,
    pub alerts: AlertMemory,
    /// The key's use before its state was evicted for silence, when it had
    /// enough history to be judged dormant: its return (its first call that
    /// is not a 401) is judged against it. Boxed: only keys back from
    /// eviction have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_eviction: Option<Box<Dormancy>>,
    /// Analysts' verdicts and expectations in force for the key.
    #[serde(default, skip_serializing_if = "crate::feedback::KeyFeedback::is_empty")]
    pub feedback: crate::feedback::KeyFeedback,
}

/// What is kept of a key evicted for silence: enough to judge its return
/// dormant (its first and last use and its event count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dormancy {
    pub first_ts: i64,
    pub last_ts: i64,
    pub events: u64,
}

/// Whether a call was refused as unauthenticated: anyone who knows a key id
/// can make one from anywhere, so it says nothing of where or how the key
/// is used and feeds only the auth-failure view.
pub fn is_unauthenticated(event: &ResolvedEvent) -> bool {
    event.status == 401
}

impl KeyState {
    pub fn new(
        fingerprint: crate::key_text::Fingerprint,
        hint: crate::key_text::Hint,
        ts_ms: i64,
        windows_per_long: usize,
    ) -> KeyState {
        KeyState::on_windows(
            fingerprint,
            hint,
            ts_ms,
            rate::RateBaseline::new(windows_per_long),
            volume::VolumeBaseline::new(windows_per_long),
        )
    }

    /// A new key's state with `rate` and `volume` as its (new) windowed
    /// baselines.
    fn on_windows(
        fingerprint: crate::key_text::Fingerprint,
        hint: crate::key_text::Hint,
        ts_ms: i64,
        rate: rate::RateBaseline,
        volume: volume::VolumeBaseline,
    ) -> KeyState {
        KeyState {
            fingerprint,
            hint,
            first_ts: ts_ms,
            last_ts: ts_ms,
            events: 0,
            geo: Default::default(),
            rate,
            volume,
            endpoints: Default::default(),
            clients: TopK::new(),
            auth: Default::default(),
            alerts: Default::default(),
            before_eviction: None,
            feedback: Default::default(),
        }
    }

    /// The state [`KeyState::new`] gives, made over this one's rings (the
    /// only parts a new state allocates, all of a model's length), so that
    /// a state lent for one event and given back can be lent again without
    /// allocating. Everything else is dropped and made anew.
    pub fn renew(
        &mut self,
        fingerprint: crate::key_text::Fingerprint,
        hint: crate::key_text::Hint,
        ts_ms: i64,
        windows_per_long: usize,
    ) {
        let slots = rate::ring_slots(windows_per_long);
        if [
            self.rate.recent.len(),
            self.volume.recent.len(),
            self.volume.recent_big.len(),
        ] != [slots; 3]
        {
            // Rings of another model's length.
            *self = KeyState::new(fingerprint, hint, ts_ms, windows_per_long);
            return;
        }
        let rate_ring = std::mem::take(&mut self.rate.recent);
        let volume_ring = std::mem::take(&mut self.volume.recent);
        let big_ring = std::mem::take(&mut self.volume.recent_big);
        *self = KeyState::on_windows(
            fingerprint,
            hint,
            ts_ms,
            rate::RateBaseline::with_ring(rate_ring),
            volume::VolumeBaseline::with_rings(volume_ring, big_ring),
        );
    }

    /// The key's use as dormant detection judges it: its own, or, for a key
    /// back from eviction that has had no authenticated call yet, the use
    /// it had before.
    pub fn use_history(&self) -> Dormancy {
        match self.before_eviction.as_deref() {
            Some(before) => *before,
            None => Dormancy {
                first_ts: self.first_ts,
                last_ts: self.last_ts,
                events: self.events,
            },
        }
    }

    /// What eviction keeps of the key, when it has enough history to be
    /// judged dormant on its return.
    pub fn dormancy_record(&self, model: &Learning) -> Option<Dormancy> {
        let own = Dormancy {
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            events: self.events,
        };
        let record = self.before_eviction.as_deref().copied().unwrap_or(own);
        (record.events >= model.min_events && record.last_ts - record.first_ts >= model.min_age.as_millis() as i64)
            .then_some(record)
    }

    /// Whether the key has enough history, in time and in events, to be
    /// judged under `learning`.
    pub fn has_learned(&self, ts_ms: i64, learning: &Learning) -> bool {
        self.events >= learning.min_events && ts_ms - self.first_ts >= learning.min_age.as_millis() as i64
    }

    /// Moves every window and decay to an event at `event_ts_ms` and returns
    /// the time the event is judged at. Per key, time never runs backwards:
    /// a late event is judged at the key's newest time, which keeps every
    /// window monotonic. `rate_alpha` is `model.rate.window_alpha()`, which
    /// takes a power and so is computed once by the caller.
    pub fn advance_to(&mut self, event_ts_ms: i64, model: &Model, rate_alpha: f64) -> i64 {
        let ts_ms = if self.events > 0 {
            event_ts_ms.max(self.last_ts)
        } else {
            event_ts_ms
        };
        let robust = self.has_learned(ts_ms, &model.rate.learning);
        // Bytes first: they close their window while the rate still holds its calls.
        self.volume
            .advance(ts_ms.div_euclid(model.rate.window_ms()), &self.rate, &model.volume);
        self.rate.advance_to(ts_ms, &model.rate, rate_alpha, robust);
        self.auth.advance(ts_ms, model.auth_failures.window.as_millis() as i64);
        self.endpoints.advance_to(ts_ms, &model.endpoints);
        self.geo.decay_to(ts_ms, model.geo.half_life.as_millis() as i64);
        self.clients.decay_to(ts_ms, model.client.half_life.as_millis() as i64);
        ts_ms
    }

    /// The event joins the baseline: what was new about it is recorded
    /// first, then every table and window counts it, then the thresholds of
    /// the windows that now hold it are settled (once per window, when first
    /// needed). [`KeyState::advance_to`] must have run for the event.
    pub fn absorb(&mut self, event: &ResolvedEvent, novelty: &Novelty, model: &Model) {
        let ts_ms = event.ts_ms;
        if novelty.travel.is_some() {
            self.geo.record_jump(ts_ms);
        }
        if novelty.first_endpoint_use {
            self.endpoints.record_first_use(ts_ms);
        }

        // Refused calls are not the key's rate: a 401 storm (a client
        // retrying a rotated secret, or someone guessing) is judged by the
        // auth-failure and cross-key detectors, not as a surge of use.
        let failure = event.is_auth_failure();
        if is_unauthenticated(event) {
            // Never a place, a network, an endpoint or a client of the key:
            // whoever knows a key id could otherwise stage travel with it.
            let familiar = self.is_familiar_source(event, model);
            self.auth.count(true, familiar);
            if self.has_learned(ts_ms, &model.auth_failures.learning) {
                self.auth.settle_threshold(&model.auth_failures);
            }
            return;
        }
        if !failure {
            self.rate.count += 1;
        }
        // The key is back: from now on it is judged on its own use.
        self.before_eviction = None;
        self.volume.count(event.bytes_out, &model.volume);
        // Whether a failure is the key's own (its established place and
        // client) is asked of the baseline before the event joins it.
        self.auth
            .count(failure, failure && self.is_familiar_source(event, model));
        self.endpoints.absorb(event.endpoint_id, ts_ms, &model.endpoints);
        self.clients.add(event.client_id, ts_ms, model.client.max_clients);
        if !novelty.late && !novelty.allowlisted {
            self.geo
                .absorb(ts_ms, event.ip, &event.geo, novelty.region_overlap.as_ref(), &model.geo);
        }

        if self.has_learned(ts_ms, &model.rate.learning) {
            self.rate.settle_thresholds(&model.rate, ts_ms);
        }
        if event.is_auth_failure() && self.has_learned(ts_ms, &model.auth_failures.learning) {
            self.auth.settle_threshold(&model.auth_failures);
        }
    }

    /// Counts a judged event. Last of all, so detectors and their evidence
    /// see the history before it.
    pub fn count_event(&mut self, ts_ms: i64) {
        self.events += 1;
        self.last_ts = ts_ms;
    }

    /// What is new about `event` for this key; see [`Novelty`].
    pub fn novelty(&self, event: &ResolvedEvent, model: &Model) -> Novelty {
        if is_unauthenticated(event) {
            return Novelty::default();
        }
        Novelty {
            travel: self.travel_jump(event, &model.geo),
            first_endpoint_use: self.is_judged_first_use(event, &model.endpoints),
            region_overlap: self.judged_region_overlap(event, &model.geo),
            late: false,
            allowlisted: false,
        }
    }

    /// The move from the key's last located use to this event, when it is
    /// impossibly fast between places not both established and the key is
    /// old enough to be judged on travel.
    fn travel_jump(&self, event: &ResolvedEvent, model: &GeoModel) -> Option<geo::Jump> {
        if !self.has_learned(event.ts_ms, &model.impossible_travel) {
            return None;
        }
        self.geo.jump_to(event.ts_ms, &event.geo, model)
    }

    /// The event's use of a new region alongside the key's established
    /// region of its network, when the key is old enough to be judged on
    /// new regions.
    fn judged_region_overlap(&self, event: &ResolvedEvent, model: &GeoModel) -> Option<geo::RegionOverlap> {
        if !self.has_learned(event.ts_ms, &model.new_region) {
            return None;
        }
        let judged_from_ms = self.first_ts + model.new_region.min_age.as_millis() as i64;
        self.geo.region_overlap(event.ts_ms, judged_from_ms, &event.geo, model)
    }

    /// Whether the event is the key's first use of its endpoint and the key
    /// is old enough to be judged on it. A saturated table cannot say "never
    /// seen", so it judges nothing new.
    fn is_judged_first_use(&self, event: &ResolvedEvent, model: &EndpointModel) -> bool {
        let table = &self.endpoints.endpoints;
        !table.contains(event.endpoint_id) && table.evicted == 0 && self.has_learned(event.ts_ms, &model.new_endpoint)
    }

    /// Checks what a snapshot from outside says about the key before any
    /// window arithmetic trusts it: the rings have the length this model
    /// gives them (a ring of length zero would divide by zero), times are
    /// in order and every number is finite.
    pub fn check_shape(&self, windows_per_long: usize) -> Result<(), String> {
        let slots = windows_per_long.saturating_sub(1).max(1);
        if self.rate.recent.len() != slots {
            return Err(format!(
                "rate ring of {} windows, expected {slots}",
                self.rate.recent.len()
            ));
        }
        if self.volume.recent.len() != slots || self.volume.recent_big.len() != slots {
            return Err(format!(
                "volume rings of {} and {} windows, expected {slots}",
                self.volume.recent.len(),
                self.volume.recent_big.len()
            ));
        }
        if self.first_ts > self.last_ts {
            return Err("first use after last use".into());
        }
        let numbers = [
            self.geo.countries.other,
            self.geo.asns.other,
            self.geo.network_places.other,
            self.clients.other,
            self.endpoints.endpoints.other,
            self.auth.level,
            self.auth.level_weight,
        ];
        if numbers.iter().any(|value| !value.is_finite()) {
            return Err("a weight is not a finite number".into());
        }
        Ok(())
    }

    /// Remaps interned ids after a restore.
    pub fn remap(&mut self, endpoint_map: &impl Fn(u32) -> u32, client_map: &impl Fn(u32) -> u32) {
        self.endpoints.endpoints.remap(endpoint_map);
        for (id, _) in &mut self.endpoints.window_counts {
            *id = endpoint_map(*id);
        }
        self.clients.remap(client_map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renewed state is the new state, whatever the old one held, and
    /// reuses the rings' allocations when they have the model's length.
    #[test]
    fn a_renewed_state_is_a_new_state_on_the_same_rings() {
        let mut state = KeyState::new("kf_a".into(), "AKIA…0001".into(), 1_000, 12);
        state.events = 9;
        state.last_ts = 5_000;
        state.rate.recent[3] = 7;
        state.rate.count = 2;
        state.volume.recent[1] = 2.5;
        state.volume.recent_big[0] = 4;
        state.clients.add(3, 2_000, 8);
        state.auth.failures = 6;
        state.before_eviction = Some(Box::new(Dormancy {
            first_ts: 1,
            last_ts: 2,
            events: 3,
        }));
        state.alerts.make_mut().digest = Some(Box::new(digest::PendingDigest::new(5)));
        let rings = (state.rate.recent.as_ptr(), state.volume.recent.as_ptr());
        state.renew("kf_b".into(), "AKIA…0002".into(), 7_000, 12);
        assert_eq!(state, KeyState::new("kf_b".into(), "AKIA…0002".into(), 7_000, 12));
        assert_eq!((state.rate.recent.as_ptr(), state.volume.recent.as_ptr()), rings);
        state.renew("kf_c".into(), "AKIA…0003".into(), 8_000, 24);
        assert_eq!(state, KeyState::new("kf_c".into(), "AKIA…0003".into(), 8_000, 24));
    }

    /// The boxed and sliced parts of the compact layout serialise as the
    /// plain records and lists they hold, so snapshots and changelog
    /// entries written before it still load, and those written now load in
    /// older readers of the same version.
    #[test]
    fn boxed_parts_serialise_as_the_plain_records_snapshots_hold() {
        let mut state = KeyState::new("kf_a".into(), "AKIA…0001".into(), 1_000, 12);
        state.before_eviction = Some(Box::new(Dormancy {
            first_ts: 1,
            last_ts: 2,
            events: 3,
        }));
        state.alerts.make_mut().last_revocation = Some(Box::new(RevocationMark {
            ts_ms: 4,
            idempotency_key: "rv_1".into(),
            incident_id: "in_1".into(),
        }));
        state.alerts.make_mut().digest = Some(Box::new(digest::PendingDigest::new(5)));
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json["before_eviction"],
            serde_json::json!({"first_ts": 1, "last_ts": 2, "events": 3})
        );
        assert_eq!(
            json["alerts"]["last_revocation"],
            serde_json::json!({"ts_ms": 4, "idempotency_key": "rv_1", "incident_id": "in_1"})
        );
        assert_eq!(
            json["alerts"]["digest"],
            serde_json::json!({"day": 5, "findings": 0, "entries": []})
        );
        assert_eq!(json["rate"]["recent"], serde_json::json!(vec![0; 11]));
        assert_eq!(json["volume"]["recent"], serde_json::json!(vec![0.0; 11]));
        assert_eq!(json["volume"]["recent_big"], serde_json::json!(vec![0; 11]));
        let back: KeyState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        assert!(back.check_shape(12).is_ok());
    }

    /// A key's state in the compact layout (boxed alert memory, boxed-slice
    /// tables, 32-bit top-K counts) written to a snapshot reads back to the
    /// same state, and writes the same snapshot again, bit for bit.
    #[test]
    fn a_snapshot_of_the_compact_layout_round_trips_bit_for_bit() {
        let mut state = KeyState::new("kf_a".into(), "…0001".into(), 1_000, 12);
        for hour in 0..24 {
            state.rate.profile[hour] = 0.37 * hour as f32 + 1e-6;
            state.rate.profile_weight[hour] = 1.0 - 0.9f32.powi(hour as i32);
            state.rate.dispersion[hour] = 1.5 + hour as f32 / 7.0;
        }
        state.clients.add(3, 1_000, 8);
        state.clients.add(4, 2_000, 8);
        state.geo.jumps.push(1_500);
        state.alerts.make_mut().incident_id = Some("in_1".into());
        let json = serde_json::to_string(&state).unwrap();
        let back: KeyState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}
