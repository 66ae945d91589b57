//! Turns findings into alerts: repeats as updates of their alert (same id,
//! next revision, a bounded number of them), grouping into incidents,
//! escalation of correlated findings, and the revocation policy.

use crate::alert::digest::{digest_of, low_finding};
use crate::alert::{Alert, Output, RevocationRequest, Window, stable_id};
use crate::baseline::digest::{PendingDigest, day_of};
use crate::baseline::{AlertRecord, Fired, KeyState};
use crate::detect::Finding;
use crate::detector::{Detector, Severity};
use crate::event::format_ts;
use crate::model::Model;

/// Distinct detectors in one incident from which a low finding is raised to
/// medium: several weak signs together are worth a look.
const CORRELATED_DETECTORS: usize = 3;

/// What became of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Alerted {
        revocation: bool,
    },
    /// A repeat sent as an update of its alert (same id, next revision).
    Updated {
        revocation: bool,
    },
    Suppressed,
    /// Folded into the key's daily digest.
    Digested,
}

/// Applies suppression, incident grouping and the revocation policy to one
/// finding on one key, appending the resulting outputs.
pub fn dispose(
    state: &mut KeyState,
    mut finding: Finding,
    trigger_ts_ms: i64,
    model: &Model,
    model_label: &str,
    out: &mut Vec<Output>,
) -> Disposition {
    let memory = state.alerts.make_mut();
    let incident_gap_ms = model.alerts.incident_gap.as_millis() as i64;

    let incident_open = memory.incident_id.is_some() && trigger_ts_ms - memory.incident_last <= incident_gap_ms;
    if incident_open
        && finding.severity == Severity::Low
        && finding.detector.escalatable()
        && memory
            .incident_detectors
            .iter()
            .filter(|detector| **detector != finding.detector)
            .count()
            + 1
            >= CORRELATED_DETECTORS
    {
        finding.severity = Severity::Medium;
    }

    // Repeats are per detector and subject: a repeat of the same finding
    // within the update window updates its alert (same id, next revision),
    // a new country after it is a new alert.
    let update_window_ms = model.alerts.update_window_ms();
    memory
        .last_fired
        .retain(|fired| trigger_ts_ms - fired.ts_ms < update_window_ms);
    let current_incident = memory.incident_id.clone().filter(|_| incident_open);
    let position = memory
        .last_fired
        .iter()
        .position(|fired| fired.detector == finding.detector && fired.subject == finding.subject);
    if let Some(position) = position {
        let fired = &mut memory.last_fired[position];
        // Only an alert that went out, in the incident still open, is
        // updated; a digested low or an alert of an ended incident
        // suppresses repeats as before and is replaced by a higher severity.
        let updatable = !fired.alert_id.is_empty() && current_incident.as_deref() == Some(fired.incident_id.as_str());
        if updatable {
            fired.count += 1;
            fired.last_ms = trigger_ts_ms;
            fired.peak_score = fired.peak_score.max(finding.score);
            if !is_update_due(fired, finding.severity) {
                return Disposition::Suppressed;
            }
            fired.severity = fired.severity.max(finding.severity);
            fired.revision += 1;
            let update = fired.clone();
            join_incident(memory, true, String::new, finding.detector, trigger_ts_ms);
            let alert = Alert {
                id: update.alert_id.clone(),
                incident_id: update.incident_id.clone(),
                key_fingerprint: state.fingerprint.to_string(),
                key_hint: state.hint.to_string(),
                keys: Vec::new(),
                detector: finding.detector,
                severity: update.severity,
                score: finding.score,
                ts: format_ts(trigger_ts_ms),
                window: Window {
                    start: format_ts(update.window_start_ms.min(finding.window_start_ms).min(trigger_ts_ms)),
                    end: format_ts(trigger_ts_ms),
                },
                summary: finding.summary,
                evidence: finding.evidence,
                model: model_label.to_string(),
                revision: update.revision,
                count: update.count,
                first_seen: format_ts(update.ts_ms),
                last_seen: format_ts(trigger_ts_ms),
                peak_score: update.peak_score,
                owner: None,
            };
            let revocation = send_alert(state, alert, update.incident_id, model, model_label, out);
            return Disposition::Updated { revocation };
        }
        if finding.severity <= fired.severity {
            return Disposition::Suppressed;
        }
        memory.last_fired.remove(position);
    }
    let entry = memory.last_fired.len();
    memory.last_fired.push(Fired {
        detector: finding.detector,
        subject: finding.subject.clone(),
        ts_ms: trigger_ts_ms,
        severity: finding.severity,
        alert_id: String::new(),
        incident_id: String::new(),
        revision: 1,
        count: 1,
        last_ms: trigger_ts_ms,
        peak_score: finding.score,
        window_start_ms: finding.window_start_ms.min(trigger_ts_ms),
    });

    if finding.severity == Severity::Low && model.alerts.digest_lows {
        fold_into_digest(state, finding, trigger_ts_ms, incident_open, model_label, out);
        return Disposition::Digested;
    }

    let fingerprint = state.fingerprint.to_string();
    let id = stable_id(
        "al",
        &[
            &fingerprint,
            finding.detector.as_str(),
            &trigger_ts_ms.to_string(),
            &state.events.to_string(),
        ],
    );
    join_incident(
        memory,
        incident_open,
        || stable_id("in", &[&id]),
        finding.detector,
        trigger_ts_ms,
    );
    memory.incident_alert_ids.push(id.clone());
    if memory.incident_alert_ids.len() > 64 {
        memory.incident_alert_ids.remove(0);
    }
    let incident_id = memory.incident_id.clone().unwrap_or_default();
    let fired = &mut memory.last_fired[entry];
    fired.alert_id = id.clone();
    fired.incident_id = incident_id.clone();

    let alert = Alert {
        id,
        incident_id: incident_id.clone(),
        key_fingerprint: fingerprint,
        key_hint: state.hint.to_string(),
        keys: Vec::new(),
        detector: finding.detector,
        severity: finding.severity,
        score: finding.score,
        ts: format_ts(trigger_ts_ms),
        window: Window {
            start: format_ts(finding.window_start_ms.min(trigger_ts_ms)),
            end: format_ts(trigger_ts_ms),
        },
        summary: finding.summary,
        evidence: finding.evidence,
        model: model_label.to_string(),
        owner: None,
        revision: 1,
        count: 1,
        first_seen: String::new(),
        last_seen: String::new(),
        peak_score: 0.0,
    }
    .first_revision();
    let revocation = send_alert(state, alert, incident_id, model, model_label, out);
    Disposition::Alerted { revocation }
}

/// Whether a repeat folded into `fired` (its count already raised) is sent
/// as an update: when it raises the alert's severity, or when the count
/// reaches a power of two (2, 4, 8, ...). A key hammering one finding thus
/// sends about log2(repeats) updates, not one per event, and which repeats
/// are sent depends on the repeats only.
fn is_update_due(fired: &Fired, severity: Severity) -> bool {
    severity > fired.severity || fired.count.is_power_of_two()
}

/// Sends an alert (a first revision or an update) of the key's open
/// incident `incident_id`, with the revocation request the policy asks for;
/// returns whether one was asked for.
fn send_alert(
    state: &mut KeyState,
    mut alert: Alert,
    incident_id: String,
    model: &Model,
    model_label: &str,
    out: &mut Vec<Output>,
) -> bool {
    let memory = state.alerts.make_mut();
    // Evidence may embed input text: bounded before anyone reads it.
    super::cap::cap_alert(&mut alert, super::cap::MAX_ALERT_BYTES);
    // Strong evidence only (super::evidence); the request is a
    // candidate that the revocation gate still judges.
    let policy = &model.policy;
    let incident_start = memory.incident_start;
    let evidence = (policy.effective_mode() != crate::model::RevocationMode::Off && !memory.incident_revoked)
        .then(|| {
            super::evidence::strong_evidence(
                policy,
                alert.detector,
                alert.severity,
                memory
                    .last_fired
                    .iter()
                    .filter(|fired| fired.ts_ms >= incident_start)
                    .map(|fired| (fired.detector, fired.severity)),
            )
        })
        .flatten();
    let revocation = evidence.map(|(basis, detectors)| {
        memory.incident_revoked = true;
        RevocationRequest {
            basis: Some(basis),
            detectors,
            idempotency_key: stable_id("rv", &[&alert.key_fingerprint, &incident_id]),
            key_fingerprint: alert.key_fingerprint.clone(),
            key_hint: alert.key_hint.clone(),
            ts: alert.ts.clone(),
            severity: alert.severity,
            reason: format!("{}: {}", alert.detector, alert.summary),
            incident_id: incident_id.clone(),
            alert_ids: memory.incident_alert_ids.clone(),
            model: model_label.to_string(),
            owner: None,
        }
    });
    out.push(Output::Alert(alert));
    if let Some(request) = revocation {
        out.push(Output::Revocation(request));
        return true;
    }
    false
}

/// Adds a low finding to the key's digest of the day. It still joins the
/// key's incident, so that later findings can be correlated with it.
fn fold_into_digest(
    state: &mut KeyState,
    finding: Finding,
    trigger_ts_ms: i64,
    incident_open: bool,
    model_label: &str,
    out: &mut Vec<Output>,
) {
    flush_digest_before(state, trigger_ts_ms, model_label, out);
    let (fingerprint, events) = (state.fingerprint.to_string(), state.events);
    let memory = state.alerts.make_mut();
    let incident_id = || {
        stable_id(
            "in",
            &[
                &fingerprint,
                finding.detector.as_str(),
                &trigger_ts_ms.to_string(),
                &events.to_string(),
            ],
        )
    };
    join_incident(memory, incident_open, incident_id, finding.detector, trigger_ts_ms);
    memory
        .digest
        .get_or_insert_with(|| Box::new(PendingDigest::new(day_of(trigger_ts_ms))))
        .add(low_finding(finding), trigger_ts_ms);
}

/// Opens a new incident unless one is open (its id made by `new_id`), and
/// records `detector` in it at `ts_ms`.
fn join_incident(
    memory: &mut AlertRecord,
    incident_open: bool,
    new_id: impl FnOnce() -> String,
    detector: Detector,
    ts_ms: i64,
) {
    if !incident_open {
        memory.incident_id = Some(new_id());
        memory.incident_start = ts_ms;
        memory.incident_detectors.clear();
        memory.incident_alert_ids.clear();
        memory.incident_revoked = false;
    }
    memory.incident_last = ts_ms;
    if !memory.incident_detectors.contains(&detector) {
        memory.incident_detectors.push(detector);
    }
}

/// Sends the key's digest when its day is over at `ts_ms`.
pub fn flush_digest_before(state: &mut KeyState, ts_ms: i64, model_label: &str, out: &mut Vec<Output>) {
    if state
        .alerts
        .digest
        .as_ref()
        .is_some_and(|pending| pending.day < day_of(ts_ms))
    {
        flush_digest(state, model_label, out);
    }
}

/// Sends the key's pending digest, whatever its day (the end of a replay).
pub fn flush_digest(state: &mut KeyState, model_label: &str, out: &mut Vec<Output>) {
    if state.alerts.digest.is_none() {
        return;
    }
    if let Some(pending) = state.alerts.make_mut().digest.take() {
        out.push(Output::Digest(digest_of(
            *pending,
            &state.fingerprint.to_string(),
            &state.hint,
            model_label,
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Detector;

    fn finding(detector: Detector, subject: &str, severity: Severity) -> Finding {
        Finding {
            detector,
            severity,
            score: 0.8,
            window_start_ms: 0,
            subject: subject.to_string(),
            summary: format!("{detector} {subject}"),
            evidence: serde_json::json!({}),
        }
    }

    fn model() -> Model {
        let mut model = Model::default_model();
        model.policy.mode = crate::model::RevocationMode::Off;
        model
    }

    #[test]
    fn repeats_update_their_alert_per_detector_and_subject() {
        let model = model();
        let mut state = KeyState::new("kf_a".into(), "****".into(), 0, 12);
        let mut out = Vec::new();
        let hour = 3_600_000;
        let mut judge = |subject: &str, severity: Severity, ts: i64, out: &mut Vec<Output>| {
            dispose(
                &mut state,
                finding(Detector::NewCountry, subject, severity),
                ts,
                &model,
                "m",
                out,
            )
        };
        let alerted = Disposition::Alerted { revocation: false };
        let updated = Disposition::Updated { revocation: false };
        assert_eq!(judge("FR", Severity::Medium, hour, &mut out), alerted);
        assert_eq!(
            judge("FR", Severity::Medium, 2 * hour, &mut out),
            updated,
            "a first repeat updates the alert"
        );
        assert_eq!(
            judge("BR", Severity::Medium, 3 * hour, &mut out),
            alerted,
            "a new country after a repeat still alerts"
        );
        assert_eq!(
            judge("FR", Severity::High, 3 * hour, &mut out),
            updated,
            "a higher severity goes out as an update"
        );
        assert_eq!(
            judge("FR", Severity::High, 10 * hour, &mut out),
            alerted,
            "after the window a repeat is a new alert"
        );
        let alerts: Vec<&Alert> = out
            .iter()
            .filter_map(|output| match output {
                Output::Alert(alert) => Some(alert),
                _ => None,
            })
            .collect();
        assert_eq!(alerts.len(), 5);
        assert_eq!(alerts[1].id, alerts[0].id);
        assert_eq!((alerts[1].revision, alerts[1].count), (2, 2));
        assert_eq!(alerts[3].id, alerts[0].id);
        assert_eq!((alerts[3].revision, alerts[3].severity), (3, Severity::High));
        assert_ne!(alerts[4].id, alerts[0].id);
        assert_eq!(alerts[4].revision, 1);
    }

    #[test]
    fn a_hammered_finding_sends_updates_only_at_powers_of_two() {
        let model = model();
        let mut state = KeyState::new("kf_a".into(), "****".into(), 0, 12);
        let mut out = Vec::new();
        for minute in 0..100 {
            dispose(
                &mut state,
                finding(Detector::SensitiveEndpoint, "/admin", Severity::Medium),
                1_000 + minute * 60_000,
                &model,
                "m",
                &mut out,
            );
        }
        let sent: Vec<(u32, u64)> = out
            .iter()
            .filter_map(|output| match output {
                Output::Alert(alert) => Some((alert.revision, alert.count)),
                _ => None,
            })
            .collect();
        assert_eq!(sent, [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 64)]);
    }

    #[test]
    fn lows_join_the_incident_and_correlation_raises_a_later_low_to_medium() {
        let model = model();
        let mut state = KeyState::new("kf_a".into(), "****".into(), 0, 12);
        let mut out = Vec::new();
        for (detector, subject) in [(Detector::NewAsn, "AS1"), (Detector::NewClient, "curl")] {
            let disposition = dispose(
                &mut state,
                finding(detector, subject, Severity::Low),
                1000,
                &model,
                "m",
                &mut out,
            );
            assert_eq!(disposition, Disposition::Digested);
        }
        assert!(out.is_empty(), "lows wait for the day's digest: {out:?}");
        let third = dispose(
            &mut state,
            finding(Detector::NewEndpoint, "/v1/x", Severity::Low),
            2000,
            &model,
            "m",
            &mut out,
        );
        assert_eq!(third, Disposition::Alerted { revocation: false });
        assert!(matches!(&out[..], [Output::Alert(alert)] if alert.severity == Severity::Medium));
    }
}
