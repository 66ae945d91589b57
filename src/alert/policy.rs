//! Turns findings into alerts: suppression of repeats, grouping into
//! incidents, escalation of correlated findings, and the revocation policy.

use crate::alert::{Alert, Output, RevocationRequest, Window, stable_id};
use crate::baseline::{Fired, KeyState};
use crate::detect::Finding;
use crate::detector::Severity;
use crate::event::format_ts;
use crate::model::Model;

/// Distinct detectors in one incident from which a low finding is raised to
/// medium: several weak signs together are worth a look.
const CORRELATED_DETECTORS: usize = 3;

/// What became of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Alerted { revocation: bool },
    Suppressed,
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
    let memory = &mut state.alerts;
    let incident_gap_ms = model.alerts.incident_gap.as_millis() as i64;
    let suppress_ms = model.alerts.suppress.as_millis() as i64;

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

    // Suppression is per detector and subject: a repeat of the same finding
    // is quiet for a while, a new country after a suppressed one is not.
    memory.last_fired.retain(|fired| trigger_ts_ms - fired.ts_ms < suppress_ms);
    match memory
        .last_fired
        .iter_mut()
        .find(|fired| fired.detector == finding.detector && fired.subject == finding.subject)
    {
        Some(fired) if finding.severity <= fired.severity => return Disposition::Suppressed,
        Some(fired) => {
            fired.ts_ms = trigger_ts_ms;
            fired.severity = finding.severity;
        }
        None => memory.last_fired.push(Fired {
            detector: finding.detector,
            subject: finding.subject.clone(),
            ts_ms: trigger_ts_ms,
            severity: finding.severity,
        }),
    }

    let id = stable_id(
        "al",
        &[
            &state.fingerprint,
            finding.detector.as_str(),
            &trigger_ts_ms.to_string(),
            &state.events.to_string(),
        ],
    );
    if !incident_open {
        memory.incident_id = Some(stable_id("in", &[&id]));
        memory.incident_start = trigger_ts_ms;
        memory.incident_detectors.clear();
        memory.incident_alert_ids.clear();
        memory.incident_revoked = false;
    }
    memory.incident_last = trigger_ts_ms;
    if !memory.incident_detectors.contains(&finding.detector) {
        memory.incident_detectors.push(finding.detector);
    }
    memory.incident_alert_ids.push(id.clone());
    if memory.incident_alert_ids.len() > 64 {
        memory.incident_alert_ids.remove(0);
    }
    let incident_id = memory.incident_id.clone().unwrap_or_default();

    let alert = Alert {
        id,
        incident_id: incident_id.clone(),
        key_fingerprint: state.fingerprint.clone(),
        key_hint: state.hint.clone(),
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
    };
    let policy = &model.policy;
    let revoke = policy.revoke
        && !memory.incident_revoked
        && alert.severity >= policy.min_severity
        && policy.detectors.contains(&alert.detector);
    let revocation = revoke.then(|| {
        memory.incident_revoked = true;
        RevocationRequest {
            idempotency_key: stable_id("rv", &[&state.fingerprint, &incident_id]),
            key_fingerprint: state.fingerprint.clone(),
            key_hint: state.hint.clone(),
            ts: alert.ts.clone(),
            severity: alert.severity,
            reason: format!("{}: {}", alert.detector, alert.summary),
            incident_id: incident_id.clone(),
            alert_ids: memory.incident_alert_ids.clone(),
            model: model_label.to_string(),
        }
    });
    out.push(Output::Alert(alert));
    if let Some(request) = revocation {
        out.push(Output::Revocation(request));
        return Disposition::Alerted { revocation: true };
    }
    Disposition::Alerted { revocation: false }
}
