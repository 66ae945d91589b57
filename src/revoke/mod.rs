//! Revocation safety: every revocation request the engine asks for passes a
//! gate (caps over all keys and per owner, `never_revoke`, a per-key
//! cooldown) before the mode (`enforce`, `shadow`, `off`) decides whether
//! it is sent, written to the shadow output or dropped. The gate is pure and
//! synchronous, so file replay and `keywatch run` share it; acknowledgements
//! and re-sends are tracked in its state too. docs/REVOCATION.md is the
//! runbook for the revocation service's owner.

pub mod gate;
pub mod resend;
pub mod watermark;

use serde::{Deserialize, Serialize};

// The mode and `never_revoke` entries are model values, and the evidence
// rule runs where alerts are made; both live below this module.
pub use crate::alert::evidence;
pub use crate::model::{NeverRevoke, RevocationMode as Mode};
pub use gate::{GateState, RequestState, RequestStatus, RevocationGate, Route, Verdict, key_revocation_statuses};

/// A message of the control topic: the runtime kill switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlMessage {
    pub mode: Mode,
    /// When it was decided (free text, RFC 3339 by convention); logged.
    #[serde(default)]
    pub at: Option<String>,
    /// Who decided it; logged.
    #[serde(default)]
    pub by: Option<String>,
}

/// A message of the acknowledgement topic, written by the revocation service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckMessage {
    pub idempotency_key: String,
    /// `revoked` (or `already_revoked`, `accepted`): done, no re-send;
    /// `rejected` (or `failed`, `not_found`): refused, no re-send; anything
    /// else (`received`, `in_progress`) is noted and the request still waits.
    pub status: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_revoke_entries_parse_by_prefix_and_refuse_the_rest() {
        assert_eq!(
            NeverRevoke::parse("kf_0123"),
            Some(NeverRevoke::Fingerprint("kf_0123".into()))
        );
        assert_eq!(
            NeverRevoke::parse("owner: alice"),
            Some(NeverRevoke::Owner("alice".into()))
        );
        assert_eq!(
            NeverRevoke::parse("team:payments"),
            Some(NeverRevoke::Team("payments".into()))
        );
        assert_eq!(NeverRevoke::parse("team:"), None);
        assert_eq!(NeverRevoke::parse("alice"), None);
        assert_eq!(NeverRevoke::parse("kf_"), None);
    }

    #[test]
    fn control_messages_read_the_mode_and_refuse_an_unknown_one() {
        let message: ControlMessage =
            serde_json::from_str(r#"{"mode":"off","at":"2026-01-01T00:00:00Z","by":"oncall"}"#).unwrap();
        assert_eq!(message.mode, Mode::Off);
        assert_eq!(message.by.as_deref(), Some("oncall"));
        assert!(serde_json::from_str::<ControlMessage>(r#"{"mode":"revoke-all"}"#).is_err());
    }
}
