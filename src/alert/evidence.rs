//! Strong evidence: which alerts may ask for a revocation at all. A
//! stolen-key pattern (the policy's detectors) at the policy's severity, or
//! detectors of distinct families agreeing within one incident. Detectors of
//! one family see the same thing (a new country is usually a new network
//! too), so two of them are one sign, not two.

use serde::{Deserialize, Serialize};

use crate::detector::{Detector, Severity};
use crate::model::PolicyModel;

/// Why a request counts as strong evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// A stolen-key pattern at the policy's severity.
    StolenKeyPattern,
    /// Detectors of distinct families agreeing within the incident.
    AgreeingDetectors,
}

/// What a detector looks at; detectors of one family are not independent.
pub fn family(detector: Detector) -> &'static str {
    match detector {
        Detector::NewCountry
        | Detector::NewAsn
        | Detector::NewRegion
        | Detector::ImpossibleTravel
        | Detector::ConcurrentUse
        | Detector::UnfamiliarNetwork => "geography",
        Detector::RateSpike | Detector::RateSurge | Detector::DormantKey | Detector::RateDrop => "rate",
        Detector::ResponseVolume => "volume",
        Detector::NewEndpoint | Detector::SensitiveEndpoint | Detector::EndpointMixShift => "endpoints",
        Detector::NewClient => "client",
        Detector::AuthFailureSpike => "auth",
        Detector::SourceSpray => "across_keys",
        Detector::RevocationHeld => "policy",
    }
}

/// Whether an alert of `detector` at `severity` is strong evidence, given
/// the findings already alerted in its incident (`incident`: detector and
/// severity, the alert itself need not be among them). Returns the basis
/// and the detectors that make it, in first-seen order.
pub fn strong_evidence(
    policy: &PolicyModel,
    detector: Detector,
    severity: Severity,
    incident: impl IntoIterator<Item = (Detector, Severity)>,
) -> Option<(Basis, Vec<Detector>)> {
    if detector == Detector::RevocationHeld {
        return None;
    }
    if severity >= policy.min_severity && policy.detectors.contains(&detector) {
        return Some((Basis::StolenKeyPattern, vec![detector]));
    }
    if policy.min_agreeing_detectors < 2 || severity < policy.agreeing_min_severity {
        return None;
    }
    let mut agreeing: Vec<Detector> = vec![detector];
    let mut families: Vec<&'static str> = vec![family(detector)];
    for (other, other_severity) in incident {
        if other_severity < policy.agreeing_min_severity
            || agreeing.contains(&other)
            || other == Detector::RevocationHeld
        {
            continue;
        }
        agreeing.push(other);
        if !families.contains(&family(other)) {
            families.push(family(other));
        }
    }
    (families.len() >= policy.min_agreeing_detectors).then_some((Basis::AgreeingDetectors, agreeing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    fn policy() -> PolicyModel {
        Model::default_model().policy
    }

    #[test]
    fn a_high_stolen_key_pattern_is_enough_alone() {
        let verdict = strong_evidence(&policy(), Detector::ImpossibleTravel, Severity::High, []);
        assert_eq!(
            verdict,
            Some((Basis::StolenKeyPattern, vec![Detector::ImpossibleTravel]))
        );
    }

    #[test]
    fn one_detector_alone_below_strong_evidence_is_not_enough() {
        let policy = policy();
        assert_eq!(
            strong_evidence(&policy, Detector::ImpossibleTravel, Severity::Medium, []),
            None,
            "a stolen-key pattern below min_severity"
        );
        assert_eq!(
            strong_evidence(&policy, Detector::RateSpike, Severity::Critical, []),
            None,
            "a critical finding of a detector that is not a stolen-key pattern"
        );
        assert_eq!(
            strong_evidence(
                &policy,
                Detector::NewCountry,
                Severity::High,
                [
                    (Detector::NewAsn, Severity::High),
                    (Detector::NewRegion, Severity::Medium)
                ]
            ),
            None,
            "three detectors of one family are one sign"
        );
    }

    #[test]
    fn two_families_agreeing_at_medium_are_strong_evidence() {
        let verdict = strong_evidence(
            &policy(),
            Detector::SensitiveEndpoint,
            Severity::Medium,
            [
                (Detector::NewCountry, Severity::Medium),
                (Detector::NewClient, Severity::Low),
            ],
        );
        assert_eq!(
            verdict,
            Some((
                Basis::AgreeingDetectors,
                vec![Detector::SensitiveEndpoint, Detector::NewCountry]
            ))
        );
        let mut policy = policy();
        policy.min_agreeing_detectors = 0;
        assert_eq!(
            strong_evidence(
                &policy,
                Detector::SensitiveEndpoint,
                Severity::Medium,
                [(Detector::NewCountry, Severity::Medium)]
            ),
            None,
            "0 turns agreement off"
        );
    }
}
