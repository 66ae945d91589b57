//! Re-sends of unacknowledged requests in `run`: when each pending request
//! was last sent, by the wall clock. Kept apart from the gate's state on
//! purpose: the wall clock only decides when the same request (same bytes,
//! same idempotency key) goes out again, never a verdict or an alert.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::alert::RevocationRequest;

/// Pending requests and when each was last sent.
#[derive(Debug, Default)]
pub struct Resends {
    sent: BTreeMap<String, (Instant, RevocationRequest)>,
}

impl Resends {
    /// `request` was sent (or sent again) at `now`.
    pub fn sent(&mut self, request: &RevocationRequest, now: Instant) {
        self.sent
            .insert(request.idempotency_key.clone(), (now, request.clone()));
    }

    /// Stops watching a request (acknowledged, failed).
    pub fn forget(&mut self, idempotency_key: &str) {
        self.sent.remove(idempotency_key);
    }

    /// Requests last sent `timeout` or longer before `now`, in idempotency
    /// key order.
    pub fn due(&self, now: Instant, timeout: Duration) -> Vec<RevocationRequest> {
        self.sent
            .values()
            .filter(|(at, _)| now.saturating_duration_since(*at) >= timeout)
            .map(|(_, request)| request.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str) -> RevocationRequest {
        RevocationRequest {
            idempotency_key: key.into(),
            key_fingerprint: "kf_a".into(),
            key_hint: "****".into(),
            ts: "2026-01-01T00:00:00Z".into(),
            severity: crate::alert::Severity::High,
            reason: "r".into(),
            incident_id: "in_a".into(),
            alert_ids: vec!["al_a".into()],
            model: "m".into(),
            basis: None,
            detectors: Vec::new(),
            owner: None,
        }
    }

    #[test]
    fn a_request_is_due_after_the_timeout_and_not_before_or_once_forgotten() {
        let start = Instant::now();
        let mut resends = Resends::default();
        resends.sent(&request("rv_a"), start);
        resends.sent(&request("rv_b"), start + Duration::from_secs(30));
        let timeout = Duration::from_secs(60);
        assert!(resends.due(start + Duration::from_secs(59), timeout).is_empty());
        let due = resends.due(start + Duration::from_secs(60), timeout);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].idempotency_key, "rv_a");
        resends.forget("rv_a");
        assert_eq!(resends.due(start + Duration::from_secs(95), timeout).len(), 1);
    }
}
