//! The detector registry and alert severities: the closed sets that findings,
//! alerts, model files, the revocation policy and key state all agree on.
//! Each detector is declared once, below, with its name, the phase it is
//! judged in and whether policy may escalate it. A leaf module: it uses no
//! other module of the crate, so every layer can name detectors.

use serde::{Deserialize, Serialize};

/// How bad an alert is. Ordered: `Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// When a detector judges an event, relative to the event joining its key's
/// baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Against the baseline as it was: is this new for the key?
    Before,
    /// On windows that now count the event: has a count become anomalous?
    After,
    /// Not per key: judged by the view across keys, on state kept per
    /// source or for the whole organisation.
    AcrossKeys,
}

/// A name that is not in the registry.
#[derive(Debug, thiserror::Error)]
#[error("unknown detector `{0}`")]
pub struct UnknownDetector(pub String);

/// Declares [`Detector`] from one table, so a detector's name, phase and
/// escalation cannot be spelled in two places.
macro_rules! detector_registry {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident => $name:literal, $phase:ident, escalatable: $escalatable:literal;
    )*) => {
        /// Every detector. Serialized as its name (`new_country`) in alerts,
        /// model files and snapshots.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Detector {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl Detector {
            /// The whole registry, in declaration order.
            pub const ALL: &'static [Detector] = &[$(Detector::$variant),*];

            /// The name in alerts, model files, the alert schema and the README.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Detector::$variant => $name,)*
                }
            }

            /// Whether the detector judges before or after the event joins
            /// the baseline.
            pub const fn phase(self) -> Phase {
                match self {
                    $(Detector::$variant => Phase::$phase,)*
                }
            }

            /// Whether correlation with other detectors in one incident may
            /// raise its low findings to medium.
            pub const fn escalatable(self) -> bool {
                match self {
                    $(Detector::$variant => $escalatable,)*
                }
            }
        }
    };
}

// Only weak behavioural signs are escalatable. Geographic findings are low
// only when the baseline explains them (a global key, a known network, a
// plausible journey): correlation must not undo that.
detector_registry! {
    /// First use from a country the key's baseline does not hold.
    NewCountry => "new_country", Before, escalatable: false;
    /// First use from a network (ASN) in a known country.
    NewAsn => "new_asn", Before, escalatable: true;
    /// A known network (ASN) used from a region (city, or cloud region) the
    /// key never used it from.
    NewRegion => "new_region", Before, escalatable: true;
    /// Two uses farther apart than anyone can travel in the time between.
    ImpossibleTravel => "impossible_travel", Before, escalatable: false;
    /// Repeated impossible jumps: the key is in use in two places.
    ConcurrentUse => "concurrent_use", Before, escalatable: false;
    /// Calls in the short window far above the key's usual for the hour.
    RateSpike => "rate_spike", After, escalatable: false;
    /// Calls in the long window far above the key's usual for the hour.
    RateSurge => "rate_surge", After, escalatable: false;
    /// A key silent for long used again.
    DormantKey => "dormant_key", Before, escalatable: false;
    /// A busy key fell silent for hours it is usually active in.
    RateDrop => "rate_drop", Before, escalatable: false;
    /// Response bytes far above the key's usual volume.
    ResponseVolume => "response_volume", After, escalatable: false;
    /// First call to an endpoint.
    NewEndpoint => "new_endpoint", Before, escalatable: true;
    /// First call to an endpoint matching the model's sensitive patterns.
    SensitiveEndpoint => "sensitive_endpoint", Before, escalatable: false;
    /// The window's endpoint mix diverges from the baseline.
    EndpointMixShift => "endpoint_mix_shift", After, escalatable: false;
    /// A user-agent family the key never used.
    NewClient => "new_client", Before, escalatable: true;
    /// A spike of 401/403 answers.
    AuthFailureSpike => "auth_failure_spike", After, escalatable: false;
    /// One source (address or network) calling with many keys in a short time.
    SourceSpray => "source_spray", AcrossKeys, escalatable: false;
    /// A new or still-learning key used from a network no key of the
    /// organisation ever used, far from all of them.
    /// Judged per key, before the event joins the baseline, on the
    /// organisation's table of the event's epoch.
    UnfamiliarNetwork => "unfamiliar_network", Before, escalatable: false;
    /// A revocation request held back by the revocation gate (a cap,
    /// `never_revoke`, a critical key): not sent, a person decides.
    /// Raised by the gate over all keys, not by a check.
    RevocationHeld => "revocation_held", AcrossKeys, escalatable: false;
}

impl std::fmt::Display for Detector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for Detector {
    type Err = UnknownDetector;

    fn from_str(name: &str) -> Result<Detector, UnknownDetector> {
        Detector::ALL
            .iter()
            .copied()
            .find(|detector| detector.as_str() == name)
            .ok_or_else(|| UnknownDetector(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn registry_names() -> BTreeSet<String> {
        Detector::ALL
            .iter()
            .map(|detector| detector.as_str().to_string())
            .collect()
    }

    fn read(relative: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    #[test]
    fn names_serialize_parse_and_display_alike() {
        for detector in Detector::ALL {
            let json = serde_json::to_string(detector).unwrap();
            assert_eq!(json, format!("\"{}\"", detector.as_str()));
            assert_eq!(serde_json::from_str::<Detector>(&json).unwrap(), *detector);
            assert_eq!(detector.as_str().parse::<Detector>().unwrap(), *detector);
            assert_eq!(detector.to_string(), detector.as_str());
        }
        assert_eq!(registry_names().len(), Detector::ALL.len(), "names are unique");
        assert!("rate".parse::<Detector>().is_err());
        assert!(serde_json::from_str::<Detector>("\"rate\"").is_err());
    }

    fn schema_enum(file: &str, pointer: &str) -> BTreeSet<String> {
        let schema: serde_json::Value = serde_json::from_str(&read(file)).unwrap();
        schema
            .pointer(pointer)
            .and_then(|value| value.as_array())
            .unwrap_or_else(|| panic!("{file} has {pointer}"))
            .iter()
            .map(|name| name.as_str().expect("a name").to_string())
            .collect()
    }

    #[test]
    fn the_alert_and_digest_schemas_list_exactly_the_registry() {
        assert_eq!(
            schema_enum("schemas/alert.schema.json", "/properties/detector/enum"),
            registry_names(),
            "schemas/alert.schema.json `detector` enum"
        );
        assert_eq!(
            schema_enum(
                "schemas/digest.schema.json",
                "/properties/entries/items/properties/detector/enum"
            ),
            registry_names(),
            "schemas/digest.schema.json `detector` enum"
        );
    }

    #[test]
    fn the_readme_table_lists_exactly_the_registry() {
        let readme = read("README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|line| !line.starts_with("| detector | what it sees |"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .collect();
        assert!(
            !table.is_empty(),
            "README.md has the `| detector | what it sees |` table"
        );
        let mut listed = BTreeSet::new();
        for row in table {
            let first_column = row.split('|').nth(1).unwrap_or_default();
            for name in first_column.split('`').skip(1).step_by(2) {
                assert!(listed.insert(name.to_string()), "{name} listed twice in README.md");
            }
        }
        assert_eq!(listed, registry_names(), "README.md detector table");
    }
}
