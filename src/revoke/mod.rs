//! Revocation safety: every revocation request the engine asks for passes a
//! gate (caps over all keys and per owner, `never_revoke`, a per-key
//! cooldown) before the mode (`enforce`, `shadow`, `off`) decides whether
//! it is sent, written to the shadow output or dropped. The gate is pure and
//! synchronous, so file replay and `keywatch run` share it; acknowledgements
//! and re-sends are tracked in its state too. docs/REVOCATION.md is the
//! runbook for the revocation service's owner.

pub mod evidence;
pub mod gate;
pub mod resend;

use serde::{Deserialize, Serialize};

pub use gate::{GateState, RequestState, RequestStatus, RevocationGate, Route, Verdict, key_revocation_statuses};

/// What happens to a request the gate lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Sent to the revocation service.
    Enforce,
    /// Written to the shadow output only: what enforcement would send.
    #[default]
    Shadow,
    /// Neither sent nor written.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text.trim() {
            "enforce" => Some(Mode::Enforce),
            "shadow" => Some(Mode::Shadow),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One entry of the policy's `never_revoke` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeverRevoke {
    /// `kf_...`: one key.
    Fingerprint(String),
    /// `owner:NAME`: every key of that owner.
    Owner(String),
    /// `team:NAME`: every key of that team.
    Team(String),
}

impl NeverRevoke {
    /// `None` when the entry names none of the three.
    pub fn parse(entry: &str) -> Option<NeverRevoke> {
        let entry = entry.trim();
        let named = |name: &str| Some(name.trim().to_string()).filter(|name| !name.is_empty());
        if let Some(owner) = entry.strip_prefix("owner:") {
            return named(owner).map(NeverRevoke::Owner);
        }
        if let Some(team) = entry.strip_prefix("team:") {
            return named(team).map(NeverRevoke::Team);
        }
        (entry.starts_with("kf_") && entry.len() > 3).then(|| NeverRevoke::Fingerprint(entry.to_string()))
    }

    /// Whether the entry covers the key with this fingerprint and owner.
    pub fn covers(&self, fingerprint: &str, owner: Option<&crate::owners::Owner>) -> bool {
        match self {
            NeverRevoke::Fingerprint(listed) => listed == fingerprint,
            NeverRevoke::Owner(name) => owner.and_then(|owner| owner.owner.as_deref()) == Some(name.as_str()),
            NeverRevoke::Team(name) => owner.and_then(|owner| owner.team.as_deref()) == Some(name.as_str()),
        }
    }
}

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
