//! Detectors: per-key state plus one event in, findings out. No I/O.

/// Every detector name, as used in alerts, model files and the policy.
pub const DETECTORS: &[&str] = &[
    "new_country",
    "new_asn",
    "impossible_travel",
    "concurrent_use",
    "rate_spike",
    "rate_surge",
    "dormant_key",
    "new_endpoint",
    "sensitive_endpoint",
    "endpoint_mix_shift",
    "new_client",
    "auth_failure_spike",
];
