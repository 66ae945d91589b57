//! The revocation gate: pure and synchronous, shared by replay and `run`.
//! It takes the engine's revocation requests (candidates) one by one, in
//! the order the driver gives them, and lets each through or holds it back:
//!
//! 1. `never_revoke` (fingerprint, owner, team) and critical keys: held,
//!    with a high `revocation_held` alert;
//! 2. the per-key cooldown: held quietly (the key's request went out
//!    already, its alerts say the rest);
//! 3. the cap over all keys, then the cap per owner (keys without an owner
//!    share the `unowned` bucket): held, with a high `revocation_held` alert.
//!
//! Caps and cooldown count in the gate's clock: the newest event time of a
//! candidate seen so far, which never goes back, so a cap of N per window
//! holds over every window of that clock whatever order candidates come in.
//!
//! Which candidate a cap lets through depends on the order they are judged
//! in, so the drivers do not judge them as they come: they [`offer`] them,
//! and the gate judges them in event-time order (then idempotency key) once
//! the drivers' watermark says no earlier candidate can come
//! ([`take_ready`]). Replay's watermark is its engine's; `run`'s is the
//! lowest over every keyed partition, so live and replay judge the same
//! candidates in the same order whatever the partitions' interleaving. A
//! candidate older than what was judged already (from a late event) is
//! judged at once and counted.
//!
//! [`offer`]: RevocationGate::offer
//! [`take_ready`]: RevocationGate::take_ready
//! The verdict does not depend on the mode; the mode only routes a request
//! let through (sent, shadow, dropped), so switching modes changes no alert
//! and no later verdict.
//!
//! The state ([`GateState`]) serialises, and also holds each request's
//! delivery status (pending, acked, failed, attempts), which the key
//! inventory reads through [`key_revocation_statuses`].

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Mode, NeverRevoke};
use crate::alert::{Alert, Output, RevocationRequest, Severity, Window, stable_id};
use crate::detector::Detector;
use crate::event::{format_ts, parse_ts};
use crate::model::{PolicyModel, RequestCap};
use crate::owners::{Criticality, OwnerBook};

/// How long (event time) decided requests stay in the state, for
/// de-duplication of a candidate delivered twice and for the inventory.
pub const REQUEST_RETENTION_MS: i64 = 30 * 86_400_000;

/// Per-owner bucket of the keys no owner entry names.
pub const UNOWNED: &str = "unowned";

/// Acknowledgements of unknown requests kept until their request comes (the
/// ack topic is read from its start, possibly before the candidates).
const MAX_UNMATCHED_ACKS: usize = 10_000;

/// Why a candidate was held back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum HoldReason {
    NeverRevoke {
        entry: String,
    },
    CriticalKey,
    Cooldown {
        last_request: String,
    },
    GlobalCap {
        count: u32,
        per: String,
        in_window: u32,
    },
    OwnerCap {
        bucket: String,
        count: u32,
        per: String,
        in_window: u32,
    },
}

impl HoldReason {
    pub fn kind(&self) -> &'static str {
        match self {
            HoldReason::NeverRevoke { .. } => "never_revoke",
            HoldReason::CriticalKey => "critical_key",
            HoldReason::Cooldown { .. } => "cooldown",
            HoldReason::GlobalCap { .. } => "max_requests",
            HoldReason::OwnerCap { .. } => "max_requests_per_owner",
        }
    }
}

/// The gate's verdict on one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let through; the mode decides where it goes.
    Pass(Route),
    Held(HoldReason),
    /// A candidate with an idempotency key already judged (delivered twice,
    /// or read again after a restart): nothing happens.
    Duplicate,
}

/// Where a request let through goes, by mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Send,
    Shadow,
    Drop,
}

impl Route {
    pub fn of(mode: Mode) -> Route {
        match mode {
            Mode::Enforce => Route::Send,
            Mode::Shadow => Route::Shadow,
            Mode::Off => Route::Drop,
        }
    }
}

/// Delivery status of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Sent, not acknowledged yet.
    Pending,
    /// The service said it revoked the key.
    Acked,
    /// The service refused it, or it went unacknowledged `max_attempts` times.
    Failed,
    /// Written to the shadow output only.
    Shadow,
    /// Let through while the mode was `off`: not sent.
    Dropped,
    /// Held back by the gate.
    Held,
}

/// One judged request, as the inventory shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestState {
    pub key_fingerprint: String,
    pub incident_id: String,
    /// Event time of the candidate.
    pub ts: String,
    pub status: RequestStatus,
    /// Sends so far, the first included.
    #[serde(default)]
    pub attempts: u32,
    /// Why it was held, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The service's last status word, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
    #[serde(default)]
    decided_ms: i64,
}

/// A request let through, for the caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Passed {
    ts_ms: i64,
    bucket: String,
}

/// Everything the gate remembers. Every field has a default, so older
/// state loads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    /// Newest candidate event time seen: the clock of caps and cooldown.
    #[serde(default)]
    clock_ms: i64,
    /// Requests let through within the longest cap window, oldest first.
    #[serde(default)]
    passed: VecDeque<Passed>,
    /// Last request let through, per key, within the cooldown.
    #[serde(default)]
    last_passed: BTreeMap<String, i64>,
    /// Judged requests by idempotency key, within [`REQUEST_RETENTION_MS`].
    #[serde(default)]
    requests: BTreeMap<String, RequestState>,
    /// Acknowledgements read before their request.
    #[serde(default)]
    unmatched_acks: BTreeMap<String, String>,
}

impl GateState {
    /// Judged requests by idempotency key.
    pub fn requests(&self) -> impl Iterator<Item = (&str, &RequestState)> {
        self.requests.iter().map(|(key, state)| (key.as_str(), state))
    }
}

/// Each key's latest judged request (by event time, then idempotency key),
/// for the key inventory (`keywatch keys`): its status, attempts and the
/// service's answer.
pub fn key_revocation_statuses(state: &GateState) -> BTreeMap<String, (String, RequestState)> {
    let mut latest: BTreeMap<String, (String, RequestState)> = BTreeMap::new();
    for (key, request) in &state.requests {
        let newer = latest
            .get(&request.key_fingerprint)
            .is_none_or(|(_, known)| known.decided_ms <= request.decided_ms);
        if newer {
            latest.insert(request.key_fingerprint.clone(), (key.clone(), request.clone()));
        }
    }
    latest
}

/// The gate: the policy's settings and the state.
#[derive(Debug, Clone)]
pub struct RevocationGate {
    mode: Mode,
    max_requests: RequestCap,
    max_requests_per_owner: RequestCap,
    never_revoke: Vec<(String, NeverRevoke)>,
    hold_critical: bool,
    cooldown_ms: i64,
    max_attempts: u32,
    model_label: String,
    state: GateState,
    /// Candidates waiting for the watermark, by (event time, idempotency key).
    pending: BTreeMap<(i64, String), RevocationRequest>,
    /// Event time of the newest candidate taken from `pending`.
    judged_through: i64,
    /// Candidates that came older than `judged_through` (judged at once).
    late_candidates: u64,
}

impl RevocationGate {
    /// A gate with empty state; its mode is the model's.
    pub fn new(policy: &PolicyModel, model_label: &str) -> RevocationGate {
        RevocationGate {
            mode: policy.effective_mode(),
            max_requests: policy.max_requests,
            max_requests_per_owner: policy.max_requests_per_owner,
            never_revoke: policy
                .never_revoke
                .iter()
                .filter_map(|entry| Some((entry.clone(), NeverRevoke::parse(entry)?)))
                .collect(),
            hold_critical: policy.hold_critical,
            cooldown_ms: policy.cooldown.as_millis() as i64,
            max_attempts: policy.max_attempts.max(1),
            model_label: model_label.to_string(),
            state: GateState::default(),
            pending: BTreeMap::new(),
            judged_through: i64::MIN,
            late_candidates: 0,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches the routing of later requests (the kill switch); verdicts
    /// and state are unaffected.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    pub fn state(&self) -> &GateState {
        &self.state
    }

    pub fn restore(&mut self, state: GateState) {
        self.state = state;
    }

    /// Judges one candidate at its event time, appending a `revocation_held`
    /// alert to `alerts` when a cap, `never_revoke` or criticality holds it.
    pub fn judge(&mut self, request: &RevocationRequest, owners: &OwnerBook, alerts: &mut Vec<Output>) -> Verdict {
        if self.state.requests.contains_key(&request.idempotency_key) {
            return Verdict::Duplicate;
        }
        let ts_ms = parse_ts(&request.ts).unwrap_or(self.state.clock_ms);
        self.advance(ts_ms);
        let clock = self.state.clock_ms;
        let fingerprint = request.key_fingerprint.as_str();
        let owner = owners.get(fingerprint);
        let reason = if let Some((entry, _)) = self
            .never_revoke
            .iter()
            .find(|(_, never)| never.covers(fingerprint, owner))
        {
            Some(HoldReason::NeverRevoke { entry: entry.clone() })
        } else if self.hold_critical && owner.is_some_and(|owner| owner.criticality == Criticality::Critical) {
            Some(HoldReason::CriticalKey)
        } else if let Some(last) = self
            .state
            .last_passed
            .get(fingerprint)
            .filter(|last| clock - **last < self.cooldown_ms)
        {
            Some(HoldReason::Cooldown {
                last_request: format_ts(*last),
            })
        } else {
            let bucket = owner
                .and_then(|owner| owner.owner.clone())
                .unwrap_or_else(|| UNOWNED.to_string());
            let in_window = |cap: RequestCap, bucket: Option<&str>| {
                let since = clock - cap.per.as_millis() as i64;
                self.state
                    .passed
                    .iter()
                    .filter(|passed| passed.ts_ms > since && bucket.is_none_or(|bucket| passed.bucket == bucket))
                    .count() as u32
            };
            let global = in_window(self.max_requests, None);
            let per_owner = in_window(self.max_requests_per_owner, Some(&bucket));
            if global >= self.max_requests.count {
                Some(HoldReason::GlobalCap {
                    count: self.max_requests.count,
                    per: humantime::format_duration(self.max_requests.per).to_string(),
                    in_window: global,
                })
            } else if per_owner >= self.max_requests_per_owner.count {
                Some(HoldReason::OwnerCap {
                    bucket,
                    count: self.max_requests_per_owner.count,
                    per: humantime::format_duration(self.max_requests_per_owner.per).to_string(),
                    in_window: per_owner,
                })
            } else {
                self.state.passed.push_back(Passed { ts_ms: clock, bucket });
                self.state.last_passed.insert(fingerprint.to_string(), clock);
                None
            }
        };
        let (verdict, status, held) = match reason {
            None => {
                let route = Route::of(self.mode);
                let status = match route {
                    Route::Send => RequestStatus::Pending,
                    Route::Shadow => RequestStatus::Shadow,
                    Route::Drop => RequestStatus::Dropped,
                };
                (Verdict::Pass(route), status, None)
            }
            Some(reason) => {
                if !matches!(reason, HoldReason::Cooldown { .. }) {
                    alerts.push(Output::Alert(self.held_alert(request, &reason, clock)));
                }
                let kind = reason.kind().to_string();
                (Verdict::Held(reason), RequestStatus::Held, Some(kind))
            }
        };
        let mut state = RequestState {
            key_fingerprint: request.key_fingerprint.clone(),
            incident_id: request.incident_id.clone(),
            ts: request.ts.clone(),
            status,
            attempts: u32::from(status == RequestStatus::Pending),
            held,
            ack: None,
            decided_ms: clock,
        };
        if let Some(ack) = self.state.unmatched_acks.remove(&request.idempotency_key) {
            apply_ack(&mut state, &ack);
        }
        self.state.requests.insert(request.idempotency_key.clone(), state);
        verdict
    }

    /// Moves the clock to `ts_ms` if it is newer and forgets what fell out
    /// of every window.
    fn advance(&mut self, ts_ms: i64) {
        let state = &mut self.state;
        state.clock_ms = state.clock_ms.max(ts_ms);
        let clock = state.clock_ms;
        let longest = self.max_requests.per.max(self.max_requests_per_owner.per).as_millis() as i64;
        while state
            .passed
            .front()
            .is_some_and(|passed| passed.ts_ms <= clock - longest)
        {
            state.passed.pop_front();
        }
        let cooldown = self.cooldown_ms;
        state.last_passed.retain(|_, last| clock - *last < cooldown);
        state
            .requests
            .retain(|_, request| request.decided_ms > clock - REQUEST_RETENTION_MS);
    }

    fn held_alert(&self, request: &RevocationRequest, reason: &HoldReason, clock: i64) -> Alert {
        let summary = match reason {
            HoldReason::NeverRevoke { entry } => {
                format!("revocation held: the key is on never_revoke ({entry}); decide by hand")
            }
            HoldReason::CriticalKey => {
                "revocation held: the key's owner entry says critical; decide by hand".to_string()
            }
            HoldReason::GlobalCap { count, per, .. } => format!(
                "revocation held: the cap of {count} requests per {per} over all keys is reached; decide by hand"
            ),
            HoldReason::OwnerCap { bucket, count, per, .. } => format!(
                "revocation held: the cap of {count} requests per {per} for owner {bucket} is reached; decide by hand"
            ),
            HoldReason::Cooldown { .. } => "revocation held: cooldown".to_string(),
        };
        let window_ms = match reason {
            HoldReason::GlobalCap { .. } => self.max_requests.per.as_millis() as i64,
            HoldReason::OwnerCap { .. } => self.max_requests_per_owner.per.as_millis() as i64,
            _ => 0,
        };
        let mut evidence = serde_json::to_value(reason).unwrap_or_default();
        if let Some(fields) = evidence.as_object_mut() {
            fields.insert("reason".into(), reason.kind().into());
            fields.insert("held_idempotency_key".into(), request.idempotency_key.clone().into());
            fields.insert("held_key_fingerprint".into(), request.key_fingerprint.clone().into());
            fields.insert("held_incident_id".into(), request.incident_id.clone().into());
            fields.insert("request_reason".into(), request.reason.clone().into());
            fields.insert("alert_ids".into(), request.alert_ids.clone().into());
        }
        Alert {
            id: stable_id(
                "al",
                &[
                    &request.key_fingerprint,
                    Detector::RevocationHeld.as_str(),
                    &request.idempotency_key,
                ],
            ),
            incident_id: request.incident_id.clone(),
            key_fingerprint: request.key_fingerprint.clone(),
            key_hint: request.key_hint.clone(),
            keys: Vec::new(),
            detector: Detector::RevocationHeld,
            severity: Severity::High,
            score: 1.0,
            ts: request.ts.clone(),
            window: Window {
                start: format_ts(clock - window_ms),
                end: format_ts(clock),
            },
            summary,
            evidence,
            model: self.model_label.clone(),
            owner: request.owner.clone(),
            revision: 1,
            count: 1,
            first_seen: request.ts.clone(),
            last_seen: request.ts.clone(),
            peak_score: 1.0,
        }
    }

    /// Takes a candidate to judge in event-time order. Returns it back when
    /// it is older than candidates judged already: judge it at once.
    pub fn offer(&mut self, request: RevocationRequest) -> Option<RevocationRequest> {
        if self.state.requests.contains_key(&request.idempotency_key) {
            // Delivered twice (a keyed partition redoing a batch): judged.
            return None;
        }
        let ts_ms = parse_ts(&request.ts).unwrap_or(i64::MIN);
        if ts_ms < self.judged_through {
            self.late_candidates += 1;
            return Some(request);
        }
        self.pending.insert((ts_ms, request.idempotency_key.clone()), request);
        None
    }

    /// The next candidate to judge now that no candidate older than
    /// `watermark` can come (`i64::MAX` at the end of the input).
    pub fn take_ready(&mut self, watermark: i64) -> Option<RevocationRequest> {
        let entry = self.pending.first_entry()?;
        let ts_ms = entry.key().0;
        if ts_ms >= watermark && watermark != i64::MAX {
            return None;
        }
        self.judged_through = self.judged_through.max(ts_ms);
        Some(entry.remove())
    }

    /// Candidates offered and not judged yet.
    pub fn pending_candidates(&self) -> usize {
        self.pending.len()
    }

    /// Candidates that came older than candidates judged already.
    pub fn late_candidates(&self) -> u64 {
        self.late_candidates
    }

    /// Offers the candidates among `outputs` and judges, in event-time
    /// order, those `watermark` lets go (see [`RevocationGate::take_ready`]):
    /// a request let through is appended (enforce), goes to `shadow`
    /// (shadow) or goes (off); a held one is replaced by its alert, if any.
    /// Replay's driver.
    pub fn pass_outputs(
        &mut self,
        outputs: &mut Vec<Output>,
        watermark: i64,
        owners: &OwnerBook,
        shadow: &mut Vec<RevocationRequest>,
    ) {
        let mut late = Vec::new();
        if outputs.iter().any(|output| matches!(output, Output::Revocation(_))) {
            for output in std::mem::take(outputs) {
                match output {
                    Output::Revocation(request) => late.extend(self.offer(request)),
                    other => outputs.push(other),
                }
            }
        }
        let mut alerts = Vec::new();
        let mut ready = late.into_iter();
        while let Some(request) = ready.next().or_else(|| self.take_ready(watermark)) {
            match self.judge(&request, owners, &mut alerts) {
                Verdict::Pass(Route::Send) => outputs.push(Output::Revocation(request)),
                Verdict::Pass(Route::Shadow) => shadow.push(request),
                Verdict::Pass(Route::Drop) | Verdict::Duplicate => {}
                Verdict::Held(_) => outputs.append(&mut alerts),
            }
        }
    }

    /// Records an acknowledgement; returns whether it named a known request.
    pub fn acknowledge(&mut self, idempotency_key: &str, status: &str) -> bool {
        match self.state.requests.get_mut(idempotency_key) {
            Some(request) => {
                apply_ack(request, status);
                true
            }
            None => {
                if self.state.unmatched_acks.len() < MAX_UNMATCHED_ACKS {
                    self.state
                        .unmatched_acks
                        .insert(idempotency_key.to_string(), status.to_string());
                }
                false
            }
        }
    }

    /// A pending request is about to be sent again: counts the attempt, or
    /// marks it failed (and returns false) once `max_attempts` were made.
    pub fn record_resend(&mut self, idempotency_key: &str) -> bool {
        let Some(request) = self.state.requests.get_mut(idempotency_key) else {
            return false;
        };
        if request.status != RequestStatus::Pending {
            return false;
        }
        if request.attempts >= self.max_attempts {
            request.status = RequestStatus::Failed;
            return false;
        }
        request.attempts += 1;
        true
    }

    /// Whether the request is sent and still waits for its acknowledgement.
    pub fn is_pending(&self, idempotency_key: &str) -> bool {
        self.state
            .requests
            .get(idempotency_key)
            .is_some_and(|request| request.status == RequestStatus::Pending)
    }
}

/// A status word of the service applied to a request's state.
fn apply_ack(request: &mut RequestState, status: &str) {
    request.ack = Some(status.to_string());
    match status {
        "revoked" | "already_revoked" | "accepted" | "acked" => request.status = RequestStatus::Acked,
        "rejected" | "failed" | "not_found" | "error" => request.status = RequestStatus::Failed,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fingerprinter;
    use crate::model::Model;
    use crate::owners::OwnerEntry;
    use std::time::Duration;

    const HOUR: i64 = 3_600_000;
    /// 2026-01-05T00:00:00Z.
    const T0: i64 = 1_767_571_200_000;

    fn policy() -> PolicyModel {
        let mut policy = Model::default_model().policy;
        policy.mode = Mode::Enforce;
        policy
    }

    fn request(fingerprint: &str, incident: &str, ts_ms: i64) -> RevocationRequest {
        RevocationRequest {
            idempotency_key: stable_id("rv", &[fingerprint, incident]),
            key_fingerprint: fingerprint.to_string(),
            key_hint: "****".into(),
            ts: format_ts(T0 + ts_ms),
            severity: Severity::High,
            reason: "impossible_travel: test".into(),
            incident_id: stable_id("in", &[fingerprint, incident]),
            alert_ids: vec![stable_id("al", &[fingerprint, incident])],
            model: "m".into(),
            basis: None,
            detectors: Vec::new(),
            owner: None,
        }
    }

    fn book(entries: &[(&str, &str, &str, Criticality)]) -> OwnerBook {
        let mut book = OwnerBook::default();
        for (fingerprint, owner, team, criticality) in entries {
            book.insert(
                OwnerEntry {
                    key_fingerprint: Some(fingerprint.to_string()),
                    owner: Some(owner.to_string()),
                    team: Some(team.to_string()),
                    criticality: Some(*criticality),
                    ..OwnerEntry::default()
                },
                &Fingerprinter::unkeyed(),
            )
            .unwrap();
        }
        book
    }

    fn held_reasons(alerts: &[Output]) -> Vec<String> {
        alerts
            .iter()
            .map(|output| match output {
                Output::Alert(alert) => {
                    assert_eq!(alert.detector, Detector::RevocationHeld);
                    assert_eq!(alert.severity, Severity::High);
                    alert.evidence["reason"].as_str().unwrap_or_default().to_string()
                }
                other => panic!("not an alert: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_cap_of_one_per_day_lets_exactly_one_through_and_raises_a_cap_alert_for_each_other() {
        let mut policy = policy();
        policy.max_requests = RequestCap {
            count: 1,
            per: Duration::from_secs(86_400),
        };
        policy.max_requests_per_owner = policy.max_requests;
        let mut gate = RevocationGate::new(&policy, "m");
        let mut alerts = Vec::new();
        let verdicts: Vec<Verdict> = (0..5)
            .map(|index| {
                gate.judge(
                    &request(&format!("kf_{index}"), "i", index * HOUR),
                    &OwnerBook::default(),
                    &mut alerts,
                )
            })
            .collect();
        assert_eq!(verdicts[0], Verdict::Pass(Route::Send));
        assert!(verdicts[1..].iter().all(|verdict| matches!(
            verdict,
            Verdict::Held(HoldReason::GlobalCap {
                count: 1,
                in_window: 1,
                ..
            })
        )));
        assert_eq!(held_reasons(&alerts), vec!["max_requests"; 4]);
        let Output::Alert(first) = &alerts[0] else {
            unreachable!()
        };
        assert_eq!(first.key_fingerprint, "kf_1");
        assert_eq!(first.evidence["held_key_fingerprint"], "kf_1");
        assert_eq!(first.evidence["count"], 1);
        assert_eq!(first.evidence["per"], "1day");
        assert_eq!(first.incident_id, request("kf_1", "i", 0).incident_id);
        alerts.clear();
        assert_eq!(
            gate.judge(&request("kf_9", "i", 25 * HOUR), &OwnerBook::default(), &mut alerts),
            Verdict::Pass(Route::Send),
            "the next day has room again"
        );
        assert!(alerts.is_empty());
    }

    #[test]
    fn the_per_owner_cap_holds_one_owner_and_not_another_and_unowned_keys_share_a_bucket() {
        let mut policy = policy();
        policy.max_requests_per_owner = RequestCap {
            count: 1,
            per: Duration::from_secs(3600),
        };
        let owners = book(&[
            ("kf_a1", "alice", "pay", Criticality::Medium),
            ("kf_a2", "alice", "pay", Criticality::Medium),
            ("kf_b1", "bob", "web", Criticality::Medium),
        ]);
        let mut gate = RevocationGate::new(&policy, "m");
        let mut alerts = Vec::new();
        let mut judge = |fingerprint: &str| gate.judge(&request(fingerprint, "i", HOUR), &owners, &mut alerts);
        assert_eq!(judge("kf_a1"), Verdict::Pass(Route::Send));
        assert!(matches!(judge("kf_a2"), Verdict::Held(HoldReason::OwnerCap { ref bucket, .. }) if bucket == "alice"));
        assert_eq!(judge("kf_b1"), Verdict::Pass(Route::Send));
        assert_eq!(judge("kf_x"), Verdict::Pass(Route::Send));
        assert!(matches!(judge("kf_y"), Verdict::Held(HoldReason::OwnerCap { ref bucket, .. }) if bucket == UNOWNED));
        assert_eq!(held_reasons(&alerts), vec!["max_requests_per_owner"; 2]);
    }

    #[test]
    fn never_revoke_holds_by_fingerprint_owner_and_team_and_critical_keys_too() {
        let mut policy = policy();
        policy.never_revoke = vec!["kf_glass".into(), "team:payments".into(), "owner:carol".into()];
        let owners = book(&[
            ("kf_pay", "alice", "payments", Criticality::Low),
            ("kf_carol", "carol", "web", Criticality::Low),
            ("kf_prod", "dave", "web", Criticality::Critical),
            ("kf_ok", "erin", "web", Criticality::High),
        ]);
        let mut gate = RevocationGate::new(&policy, "m");
        let mut alerts = Vec::new();
        for fingerprint in ["kf_glass", "kf_pay", "kf_carol", "kf_prod", "kf_ok"] {
            gate.judge(&request(fingerprint, "i", HOUR), &owners, &mut alerts);
        }
        assert_eq!(
            held_reasons(&alerts),
            vec!["never_revoke", "never_revoke", "never_revoke", "critical_key"]
        );
        let statuses = key_revocation_statuses(gate.state());
        assert_eq!(statuses["kf_ok"].1.status, RequestStatus::Pending);
        assert_eq!(statuses["kf_pay"].1.held.as_deref(), Some("never_revoke"));
        let Output::Alert(team) = &alerts[1] else {
            unreachable!()
        };
        assert_eq!(team.evidence["entry"], "team:payments");
        assert_eq!(gate.state().passed.len(), 1, "held keys take no room in the caps");
    }

    #[test]
    fn cooldown_holds_a_second_request_for_a_key_quietly_until_it_ends() {
        let mut gate = RevocationGate::new(&policy(), "m");
        let owners = OwnerBook::default();
        let mut alerts = Vec::new();
        assert_eq!(
            gate.judge(&request("kf_a", "one", HOUR), &owners, &mut alerts),
            Verdict::Pass(Route::Send)
        );
        assert!(matches!(
            gate.judge(&request("kf_a", "two", 10 * HOUR), &owners, &mut alerts),
            Verdict::Held(HoldReason::Cooldown { .. })
        ));
        assert!(alerts.is_empty(), "a cooldown raises no alert");
        assert_eq!(
            gate.judge(&request("kf_a", "three", 26 * HOUR), &owners, &mut alerts),
            Verdict::Pass(Route::Send)
        );
    }

    #[test]
    fn the_mode_routes_only_and_a_candidate_seen_twice_is_a_duplicate() {
        let mut gate = RevocationGate::new(&policy(), "m");
        let owners = OwnerBook::default();
        let mut alerts = Vec::new();
        gate.set_mode(Mode::Shadow);
        assert_eq!(
            gate.judge(&request("kf_a", "i", HOUR), &owners, &mut alerts),
            Verdict::Pass(Route::Shadow)
        );
        gate.set_mode(Mode::Off);
        assert_eq!(
            gate.judge(&request("kf_b", "i", HOUR), &owners, &mut alerts),
            Verdict::Pass(Route::Drop)
        );
        assert_eq!(
            gate.judge(&request("kf_a", "i", HOUR), &owners, &mut alerts),
            Verdict::Duplicate
        );
        assert_eq!(gate.state().passed.len(), 2, "caps count whatever the routing");
    }

    #[test]
    fn acks_settle_requests_and_resends_stop_at_max_attempts() {
        let mut policy = policy();
        policy.max_attempts = 2;
        let mut gate = RevocationGate::new(&policy, "m");
        let owners = OwnerBook::default();
        let mut alerts = Vec::new();
        let first = request("kf_a", "i", HOUR);
        let second = request("kf_b", "i", HOUR);
        assert!(
            !gate.acknowledge(&second.idempotency_key, "revoked"),
            "an early ack waits"
        );
        gate.judge(&first, &owners, &mut alerts);
        gate.judge(&second, &owners, &mut alerts);
        assert!(!gate.is_pending(&second.idempotency_key), "the early ack applied");
        assert!(gate.record_resend(&first.idempotency_key));
        assert!(!gate.record_resend(&first.idempotency_key), "a third send is not made");
        let statuses = key_revocation_statuses(gate.state());
        assert_eq!(statuses["kf_a"].1.status, RequestStatus::Failed);
        assert_eq!(statuses["kf_a"].1.attempts, 2);
        assert_eq!(statuses["kf_b"].1.status, RequestStatus::Acked);
    }

    #[test]
    fn the_state_round_trips_through_json_and_judges_the_same_after() {
        let mut gate = RevocationGate::new(&policy(), "m");
        let owners = OwnerBook::default();
        let mut alerts = Vec::new();
        gate.judge(&request("kf_a", "i", HOUR), &owners, &mut alerts);
        let json = serde_json::to_string(gate.state()).unwrap();
        let mut restored = RevocationGate::new(&policy(), "m");
        restored.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.state(), gate.state());
        assert!(matches!(
            restored.judge(&request("kf_a", "j", 2 * HOUR), &owners, &mut alerts),
            Verdict::Held(HoldReason::Cooldown { .. })
        ));
        assert!(!json.contains("sk_"), "fingerprints only");
    }

    #[test]
    fn offered_candidates_are_judged_in_event_time_order_once_the_watermark_passes() {
        let mut gate = RevocationGate::new(&policy(), "m");
        assert!(gate.offer(request("kf_b", "late", 3 * HOUR)).is_none());
        assert!(gate.offer(request("kf_a", "early", HOUR)).is_none());
        assert!(
            gate.take_ready(T0 + HOUR).is_none(),
            "not before the watermark passes it"
        );
        assert_eq!(
            gate.take_ready(T0 + 2 * HOUR).map(|r| r.key_fingerprint),
            Some("kf_a".to_string())
        );
        assert!(gate.take_ready(T0 + 2 * HOUR).is_none());
        let behind = gate
            .offer(request("kf_c", "behind", 0))
            .expect("older than judged: at once");
        assert_eq!(behind.key_fingerprint, "kf_c");
        assert_eq!(gate.late_candidates(), 1);
        assert_eq!(
            gate.take_ready(i64::MAX).map(|r| r.key_fingerprint),
            Some("kf_b".to_string())
        );
        assert_eq!(gate.pending_candidates(), 0);
    }
}
