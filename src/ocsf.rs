//! Alerts in the SOC's format: each keywatch alert as an OCSF 1.5.0
//! Detection Finding (class_uid 2004), the schema in
//! `schemas/ocsf-detection-finding.schema.json`. A pure function of the
//! alert, so replay and live, and two runs, give byte-identical lines.
//!
//! OCSF 1.5.0 because the Anomaly Analysis object (`anomaly_analyses`, with
//! its Anomaly, Baseline and Observation objects) joined Detection Finding in
//! that release. What maps where:
//!
//! - the alert's id is `finding_info.uid`, its incident `metadata.correlation_uid`,
//!   its detector `finding_info.analytic.name`, its model `analytic.version`;
//! - the key is the affected resource: `uid` its fingerprint, `name` its
//!   masked hint (never a raw key); an alert about many keys lists them all;
//! - where the call came from and what it called (address, place, network,
//!   API operation) become `evidences`;
//! - the detector's observed-versus-baseline numbers become `anomaly_analyses`
//!   through one [`Profile`] per detector;
//! - the whole native evidence, the exact score and any alert field this
//!   module does not know (a later `owner`, say) stay in `unmapped`.
//!
//! Digests are not mapped: a digest is a day's low findings folded for
//! reading, not a finding a SOC triages one by one; they stay native.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert::Alert;
use crate::detector::{Detector, Severity};

/// The OCSF release the lines follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.5.0";
/// Findings.
pub const CATEGORY_UID: u32 = 2;
/// Detection Finding.
pub const CLASS_UID: u32 = 2004;
/// The replay file OCSF alerts go to, beside `alerts.jsonl`.
pub const OCSF_ALERTS_FILE: &str = "alerts.ocsf.jsonl";
/// The revision of an alert's first publication. Later revisions (the same
/// alert updated by repeats) are OCSF updates.
pub const FIRST_REVISION: u64 = 1;

/// Most evidence artifacts of one finding: a spray lists its addresses, and
/// a finding must stay far below the brokers' message limit.
const MAX_EVIDENCES: usize = 32;

/// What the largest finding stays under: a native alert is capped at 32 KiB
/// (`alert::cap`), and its finding repeats its evidence and lists its keys,
/// far below the 1 MiB brokers take by default.
pub const MAX_FINDING_BYTES: usize = 128 * 1024;

/// Which format alerts are written in: keywatch's own (`alerts.jsonl`, the
/// alerts topic), OCSF (`alerts.ocsf.jsonl`, the OCSF alerts topic), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    #[default]
    Native,
    Ocsf,
    Both,
}

impl AlertFormat {
    /// Whether native alerts are written.
    pub fn native(self) -> bool {
        matches!(self, AlertFormat::Native | AlertFormat::Both)
    }

    /// Whether OCSF alerts are written.
    pub fn ocsf(self) -> bool {
        matches!(self, AlertFormat::Ocsf | AlertFormat::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertFormat::Native => "native",
            AlertFormat::Ocsf => "ocsf",
            AlertFormat::Both => "both",
        }
    }
}

/// Why an alert cannot be mapped.
#[derive(Debug, thiserror::Error)]
pub enum OcsfError {
    #[error("alert {id}: `{field}` = `{value}` is not an RFC 3339 time")]
    BadTime {
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("alert {id}: cannot be encoded: {detail}")]
    Encode { id: String, detail: String },
}

/// An OCSF Detection Finding as keywatch emits it. Field order is the
/// serialization order, fixed so lines are byte-identical across runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionFinding {
    pub activity_id: u8,
    pub activity_name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
    pub class_uid: u32,
    pub class_name: &'static str,
    pub type_uid: u32,
    pub type_name: &'static str,
    pub severity_id: u8,
    pub severity: &'static str,
    pub status_id: u8,
    pub status: &'static str,
    /// Event time of the alert (its revision), epoch milliseconds.
    pub time: i64,
    pub start_time: i64,
    pub end_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub is_alert: bool,
    pub confidence_id: u8,
    pub confidence: &'static str,
    pub confidence_score: u8,
    pub message: String,
    pub metadata: Metadata,
    pub finding_info: FindingInfo,
    pub resources: Vec<Resource>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidences: Vec<Evidence>,
    pub anomaly_analyses: Vec<AnomalyAnalysis>,
    pub unmapped: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    pub version: &'static str,
    pub product: Product,
    /// This event: the alert id, with its revision after the first.
    pub uid: String,
    /// The incident the alert belongs to.
    pub correlation_uid: String,
    pub log_name: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Product {
    pub name: &'static str,
    pub vendor_name: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FindingInfo {
    pub uid: String,
    pub title: String,
    pub desc: String,
    pub types: Vec<&'static str>,
    pub analytic: Analytic,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<i64>,
    pub first_seen_time: i64,
    pub last_seen_time: i64,
    pub data_sources: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analytic {
    pub uid: &'static str,
    pub name: &'static str,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    /// The model that judged (`name@version`).
    pub version: String,
}

/// The API key the finding is about (OCSF Resource Details).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    /// The key's fingerprint.
    pub uid: String,
    /// The key's masked hint; absent for the other keys of a many-key alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub criticality: Option<String>,
}

/// An OCSF User or Group known by name only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named {
    pub name: String,
}

/// One Evidence Artifact: a call's source and the API operation it made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autonomous_system: Option<AutonomousSystem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Location {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutonomousSystem {
    pub number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Api {
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ApiResponse>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiResponse {
    pub code: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyAnalysis {
    pub analysis_targets: Vec<AnalysisTarget>,
    pub anomalies: Vec<Measure>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<Measure>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisTarget {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: &'static str,
}

/// An OCSF Anomaly or Baseline: both have this shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measure {
    pub observation_parameter: &'static str,
    pub observation_type: &'static str,
    pub observed_pattern: &'static str,
    pub observations: Vec<Observation>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timespan: Option<Timespan>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timespan {
    pub start_time: i64,
    pub end_time: i64,
}

/// The OCSF `severity_id` of a keywatch severity (OCSF 1 Informational and
/// 6 Fatal are not used).
pub fn severity_id(severity: Severity) -> u8 {
    match severity {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

fn severity_caption(severity: Severity) -> &'static str {
    match severity {
        Severity::Low => "Low",
        Severity::Medium => "Medium",
        Severity::High => "High",
        Severity::Critical => "Critical",
    }
}

/// OCSF Analytic `type_id` and caption: how a detector decides.
fn analytic_type(detector: Detector) -> (u8, &'static str) {
    match detector {
        // A fixed rule over the key's uses: a speed, a count of keys.
        Detector::ImpossibleTravel | Detector::ConcurrentUse | Detector::SourceSpray | Detector::RevocationHeld => {
            (1, "Rule")
        }
        // A tail probability under the key's own fitted distribution.
        Detector::RateSpike
        | Detector::RateSurge
        | Detector::RateDrop
        | Detector::ResponseVolume
        | Detector::AuthFailureSpike
        | Detector::EndpointMixShift => (3, "Statistical"),
        // Something the key's (or the organisation's) baseline does not hold.
        Detector::NewCountry
        | Detector::NewAsn
        | Detector::NewRegion
        | Detector::DormantKey
        | Detector::NewEndpoint
        | Detector::SensitiveEndpoint
        | Detector::NewClient
        | Detector::UnfamiliarNetwork => (2, "Behavioral"),
    }
}

/// A title a person can scan in a queue.
fn title(detector: Detector) -> &'static str {
    match detector {
        Detector::NewCountry => "API key used from a new country",
        Detector::NewAsn => "API key used from a new network",
        Detector::NewRegion => "API key's network used from a new region",
        Detector::ImpossibleTravel => "API key used from places too far apart in time",
        Detector::ConcurrentUse => "API key in use in two places at once",
        Detector::RateSpike => "API key call rate spike",
        Detector::RateSurge => "API key call rate surge",
        Detector::DormantKey => "Dormant API key used again",
        Detector::RateDrop => "Busy API key fell silent",
        Detector::ResponseVolume => "API key downloading far more data than usual",
        Detector::NewEndpoint => "API key calling a new endpoint",
        Detector::SensitiveEndpoint => "API key calling a sensitive endpoint for the first time",
        Detector::EndpointMixShift => "API key's endpoint mix shifted",
        Detector::NewClient => "API key used by a new client",
        Detector::AuthFailureSpike => "API key refused far more often than usual",
        Detector::SourceSpray => "One source calling with many API keys",
        Detector::UnfamiliarNetwork => "New API key used from a network unfamiliar to the organisation",
        Detector::RevocationHeld => "Revocation of an API key held back by policy",
    }
}

/// How a detector's native evidence maps to OCSF anomalies and baselines:
/// the kind of analysis and the pattern it found, then `(parameter,
/// pointer)` pairs into the evidence. A pointer ending in `[]` names a
/// `", "`-joined list whose items become separate observations; a missing
/// or null value is left out.
pub struct Profile {
    pub observation_type: &'static str,
    pub observed_pattern: &'static str,
    pub anomalies: &'static [(&'static str, &'static str)],
    pub baselines: &'static [(&'static str, &'static str)],
}

const GEO_BASELINES: &[(&str, &str)] = &[
    ("countries", "/baseline/countries[]"),
    ("networks", "/baseline/networks[]"),
];

const TRAVEL_ANOMALIES: &[(&str, &str)] = &[
    ("speed_kmh", "/speed_kmh"),
    ("distance_km", "/distance_km"),
    ("elapsed_s", "/elapsed_s"),
    ("recent_jumps", "/recent_jumps"),
];

const TRAVEL_BASELINES: &[(&str, &str)] = &[
    ("max_speed_kmh", "/max_speed_kmh"),
    ("countries", "/baseline/countries[]"),
    ("networks", "/baseline/networks[]"),
];

const RATE_ANOMALIES: &[(&str, &str)] = &[
    ("calls", "/observed/calls"),
    ("window", "/observed/window"),
    ("level", "/observed/level"),
    ("elevated_hours", "/observed/elevated_hours"),
    ("ratio", "/ratio"),
    ("p_value", "/p_value"),
];

const RATE_BASELINES: &[(&str, &str)] = &[
    ("expected_calls", "/baseline/expected_calls"),
    ("biggest_burst_ratio", "/baseline/biggest_burst_ratio"),
    ("earlier_sustained_level", "/baseline/earlier_sustained_level"),
    ("hour_utc", "/baseline/hour_utc"),
];

const ENDPOINT_ANOMALIES: &[(&str, &str)] = &[
    ("endpoint", "/observed/endpoint"),
    ("new_endpoints_last_hour", "/observed/new_endpoints_last_hour"),
];

const ENDPOINT_BASELINES: &[(&str, &str)] = &[
    ("top_endpoints", "/baseline/top_endpoints[]"),
    ("endpoints_known", "/baseline/endpoints_known"),
];

/// The mapping of each detector's evidence; see [`Profile`].
pub fn profile(detector: Detector) -> Profile {
    let profile = |observation_type, observed_pattern, anomalies, baselines| Profile {
        observation_type,
        observed_pattern,
        anomalies,
        baselines,
    };
    match detector {
        Detector::NewCountry => profile(
            "Frequency Analysis",
            "UNSEEN",
            &[("country", "/observed/country"), ("asn", "/observed/asn")],
            GEO_BASELINES,
        ),
        Detector::NewAsn => profile(
            "Frequency Analysis",
            "UNSEEN",
            &[("asn", "/observed/asn"), ("country", "/observed/country")],
            GEO_BASELINES,
        ),
        Detector::NewRegion => profile(
            "Frequency Analysis",
            "UNSEEN",
            &[("region", "/observed/region"), ("asn", "/observed/asn")],
            &[("places", "/baseline/places[]"), ("networks", "/baseline/networks[]")],
        ),
        Detector::ImpossibleTravel => profile("Velocity Analysis", "IMPOSSIBLE", TRAVEL_ANOMALIES, TRAVEL_BASELINES),
        Detector::ConcurrentUse => profile("Velocity Analysis", "CONCURRENT", TRAVEL_ANOMALIES, TRAVEL_BASELINES),
        Detector::RateSpike => profile("Frequency Analysis", "SPIKE", RATE_ANOMALIES, RATE_BASELINES),
        Detector::RateSurge => profile("Frequency Analysis", "SURGE", RATE_ANOMALIES, RATE_BASELINES),
        Detector::DormantKey => profile(
            "Time Pattern Analysis",
            "DORMANT",
            &[("silence_days", "/baseline/silence_days")],
            &[
                ("dormant_after_days", "/baseline/dormant_after_days"),
                ("last_use", "/baseline/last_use"),
                ("events_before", "/baseline/events_before"),
            ],
        ),
        Detector::RateDrop => profile(
            "Frequency Analysis",
            "SILENT",
            &[
                ("calls", "/observed/calls"),
                ("silent_hours", "/observed/silent_hours"),
                ("p_value", "/p_value"),
            ],
            &[
                ("expected_calls", "/baseline/expected_calls"),
                ("busiest_hour_calls", "/baseline/busiest_hour_calls"),
            ],
        ),
        Detector::ResponseVolume => profile(
            "Volume Analysis",
            "HIGH_VOLUME",
            &[
                ("bytes_per_call", "/observed/bytes_per_call"),
                ("big_calls", "/observed/big_calls"),
                ("bytes", "/observed/bytes"),
                ("ratio", "/ratio"),
                ("p_value", "/p_value"),
            ],
            &[
                ("usual_bytes_per_call", "/baseline/usual_bytes_per_call"),
                ("expected_big_calls", "/baseline/expected_big_calls"),
                ("expected_bytes", "/baseline/expected_bytes"),
            ],
        ),
        Detector::NewEndpoint => profile("Frequency Analysis", "UNSEEN", ENDPOINT_ANOMALIES, ENDPOINT_BASELINES),
        Detector::SensitiveEndpoint => profile("Frequency Analysis", "UNSEEN", ENDPOINT_ANOMALIES, ENDPOINT_BASELINES),
        Detector::EndpointMixShift => profile(
            "Distribution Analysis",
            "SHIFT",
            &[
                ("top_endpoints", "/observed/top_endpoints[]"),
                ("divergence_bits", "/divergence_bits"),
            ],
            &[("top_endpoints", "/baseline/top_endpoints[]")],
        ),
        Detector::NewClient => profile(
            "Frequency Analysis",
            "UNSEEN",
            &[("client_family", "/observed/client_family")],
            &[("client_families", "/baseline/client_families[]")],
        ),
        Detector::AuthFailureSpike => profile(
            "Frequency Analysis",
            "SPIKE",
            &[
                ("failures", "/observed/failures"),
                ("window", "/observed/window"),
                ("p_value", "/p_value"),
            ],
            &[("usual_failures_per_window", "/baseline/usual_failures_per_window")],
        ),
        Detector::SourceSpray => profile(
            "Association Analysis",
            "SPRAY",
            &[
                ("keys", "/keys"),
                ("calls", "/calls"),
                ("refused_share", "/refused_share"),
                ("source_network", "/source_network"),
            ],
            &[],
        ),
        Detector::UnfamiliarNetwork => profile(
            "Association Analysis",
            "UNSEEN",
            &[("asn", "/asn"), ("nearest_org_place_km", "/nearest_org_place_km")],
            &[
                ("organisation_networks", "/organisation_networks"),
                ("organisation_places", "/organisation_places"),
            ],
        ),
        // Not an observation of the key but a policy decision about it: the
        // cap or rule reached, against the requests in its window.
        Detector::RevocationHeld => profile(
            "Frequency Analysis",
            "HELD",
            &[("reason", "/reason"), ("in_window", "/in_window")],
            &[("count", "/count"), ("per", "/per")],
        ),
    }
}

/// Alert fields this module maps; every other field goes to `unmapped`.
const MAPPED_FIELDS: &[&str] = &[
    "id",
    "incident_id",
    "key_fingerprint",
    "key_hint",
    "keys",
    "detector",
    "severity",
    "ts",
    "window",
    "summary",
    "model",
];

/// The Detection Finding of an alert. Lifecycle fields, when an alert
/// carries them (`revision`, `count`, `last_seen`), make later revisions
/// OCSF updates (activity 2) of the same finding; without them every alert
/// is a creation (activity 1).
pub fn detection_finding(alert: &Alert) -> Result<DetectionFinding, OcsfError> {
    let native = serde_json::to_value(alert).map_err(|error| OcsfError::Encode {
        id: alert.id.clone(),
        detail: error.to_string(),
    })?;
    let fields = match native {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    finding_of(alert, fields)
}

/// The mapping proper, from the alert and its JSON fields: the fields are
/// read for what `Alert` may carry beyond the fields named here (lifecycle,
/// owner), so such additions map without a change here.
fn finding_of(alert: &Alert, fields: Map<String, Value>) -> Result<DetectionFinding, OcsfError> {
    let time_of = |field: &'static str, value: &str| {
        crate::event::parse_ts(value).ok_or_else(|| OcsfError::BadTime {
            id: alert.id.clone(),
            field,
            value: value.to_string(),
        })
    };
    let time = time_of("ts", &alert.ts)?;
    let window_start = time_of("window.start", &alert.window.start)?;
    let mut window_end = time_of("window.end", &alert.window.end)?;
    if let Some(last_seen) = fields.get("last_seen").and_then(Value::as_str) {
        window_end = window_end.max(time_of("last_seen", last_seen)?);
    }
    let revision = fields.get("revision").and_then(Value::as_u64);
    let update = revision.is_some_and(|revision| revision > FIRST_REVISION);
    let (activity_id, activity_name, type_uid, type_name) = if update {
        (2, "Update", CLASS_UID * 100 + 2, "Detection Finding: Update")
    } else {
        (1, "Create", CLASS_UID * 100 + 1, "Detection Finding: Create")
    };
    let metadata_uid = match revision {
        Some(revision) if update => format!("{}/{revision}", alert.id),
        _ => alert.id.clone(),
    };
    let (analytic_type_id, analytic_type_name) = analytic_type(alert.detector);
    let score = if alert.score.is_finite() {
        alert.score.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (confidence_id, confidence) = if score >= 0.8 {
        (3, "High")
    } else if score >= 0.5 {
        (2, "Medium")
    } else {
        (1, "Low")
    };
    let evidence = &alert.evidence;
    Ok(DetectionFinding {
        activity_id,
        activity_name,
        category_uid: CATEGORY_UID,
        category_name: "Findings",
        class_uid: CLASS_UID,
        class_name: "Detection Finding",
        type_uid,
        type_name,
        severity_id: severity_id(alert.severity),
        severity: severity_caption(alert.severity),
        status_id: 1,
        status: "New",
        time,
        start_time: window_start,
        end_time: window_end,
        count: fields.get("count").and_then(Value::as_u64),
        is_alert: true,
        confidence_id,
        confidence,
        confidence_score: (score * 100.0).round() as u8,
        message: alert.summary.clone(),
        metadata: Metadata {
            version: OCSF_VERSION,
            product: Product {
                name: "keywatch",
                vendor_name: "keywatch",
                version: env!("CARGO_PKG_VERSION"),
            },
            uid: metadata_uid,
            correlation_uid: alert.incident_id.clone(),
            log_name: "alerts",
        },
        finding_info: FindingInfo {
            uid: alert.id.clone(),
            title: title(alert.detector).to_string(),
            desc: alert.summary.clone(),
            types: vec![alert.detector.as_str()],
            analytic: Analytic {
                uid: alert.detector.as_str(),
                name: alert.detector.as_str(),
                type_id: analytic_type_id,
                type_name: analytic_type_name,
                version: alert.model.clone(),
            },
            created_time: (!update).then_some(time),
            modified_time: update.then_some(time),
            first_seen_time: window_start,
            last_seen_time: window_end,
            data_sources: vec!["api access logs"],
        },
        resources: resources(alert, &fields),
        evidences: evidences(evidence),
        anomaly_analyses: vec![anomaly_analysis(alert, window_start, window_end)],
        unmapped: unmapped(fields),
    })
}

/// The finding as one JSON line (without the line end).
pub fn to_json_line(alert: &Alert) -> Result<Vec<u8>, OcsfError> {
    let finding = detection_finding(alert)?;
    serde_json::to_vec(&finding).map_err(|error| OcsfError::Encode {
        id: alert.id.clone(),
        detail: error.to_string(),
    })
}

/// The alert's key first, with its hint and, when the alert names one, its
/// owner; then the other keys of a many-key alert.
fn resources(alert: &Alert, fields: &Map<String, Value>) -> Vec<Resource> {
    let owner = fields.get("owner").and_then(Value::as_object);
    let text = |name: &str| {
        owner
            .and_then(|owner| owner.get(name))
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(str::to_string)
    };
    let mut resources = vec![Resource {
        uid: alert.key_fingerprint.clone(),
        name: Some(alert.key_hint.clone()),
        type_name: "API Key",
        owner: text("owner").map(|name| Named { name }),
        group: text("team").map(|name| Named { name }),
        criticality: text("criticality"),
    }];
    for key in alert.keys.iter().filter(|key| **key != alert.key_fingerprint) {
        resources.push(Resource {
            uid: key.clone(),
            name: None,
            type_name: "API Key",
            owner: None,
            group: None,
            criticality: None,
        });
    }
    resources
}

/// Evidence artifacts from the parts of the native evidence that describe
/// a call: the observed call (or the evidence itself), the current and
/// previous use of a journey, the established use of a network, and each
/// source address of a spray.
fn evidences(evidence: &Value) -> Vec<Evidence> {
    let mut found = Vec::new();
    for (pointer, name) in [
        ("", "observed call"),
        ("/observed", "observed call"),
        ("/current", "current use"),
        ("/previous", "previous use"),
        ("/established", "established use"),
    ] {
        if let Some(Value::Object(part)) = evidence.pointer(pointer)
            && let Some(artifact) = call_evidence(part, name)
        {
            found.push(artifact);
        }
    }
    if let Some(Value::Array(addresses)) = evidence.get("addresses") {
        for address in addresses.iter().filter_map(Value::as_str) {
            found.push(Evidence {
                name: "source address",
                src_endpoint: Some(Endpoint {
                    ip: address.to_string(),
                    location: None,
                    autonomous_system: None,
                }),
                api: None,
            });
        }
    }
    found.truncate(MAX_EVIDENCES);
    found
}

/// One call's source and operation, when the part names either.
fn call_evidence(part: &Map<String, Value>, name: &'static str) -> Option<Evidence> {
    let text = |field: &str| {
        part.get(field)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(str::to_string)
    };
    let number = |field: &str| part.get(field).and_then(Value::as_u64);
    let src_endpoint = text("ip").or_else(|| text("last_ip")).map(|ip| {
        let (mut city, mut country) = (text("city"), text("country"));
        // A journey names its places as `City, CC`.
        if let Some(place) = text("place") {
            match place.rsplit_once(", ") {
                Some((place_city, place_country)) => {
                    city = city.or(Some(place_city.to_string()));
                    country = country.or(Some(place_country.to_string()));
                }
                None => country = country.or(Some(place)),
            }
        }
        let country = country.filter(|code| code.len() == 2 && code.bytes().all(|byte| byte.is_ascii_uppercase()));
        let location = (city.is_some() || country.is_some()).then_some(Location { city, country });
        let autonomous_system = number("asn").filter(|asn| *asn > 0).map(|number| AutonomousSystem {
            number,
            name: text("as_org").or_else(|| text("network")),
        });
        Endpoint {
            ip,
            location,
            autonomous_system,
        }
    });
    let api = text("endpoint").or_else(|| text("last_endpoint")).map(|endpoint| {
        let operation = match text("method") {
            Some(method) => format!("{method} {endpoint}"),
            None => endpoint,
        };
        Api {
            operation,
            response: number("status")
                .or_else(|| number("last_status"))
                .map(|code| ApiResponse { code }),
        }
    });
    if src_endpoint.is_none() && api.is_none() {
        return None;
    }
    Some(Evidence {
        name,
        src_endpoint,
        api,
    })
}

/// Observed against baseline, by the detector's [`Profile`]. A detector
/// whose evidence holds none of its profile's values (evidence cut to fit
/// the size cap, say) still gets one anomaly: its summary.
fn anomaly_analysis(alert: &Alert, window_start: i64, window_end: i64) -> AnomalyAnalysis {
    let profile = profile(alert.detector);
    let timespan = Timespan {
        start_time: window_start,
        end_time: window_end,
    };
    let measures = |pairs: &[(&'static str, &'static str)], timespan: Option<&Timespan>, pattern: &'static str| {
        pairs
            .iter()
            .filter_map(|(parameter, pointer)| {
                let observations: Vec<Observation> = values_at(&alert.evidence, pointer)
                    .into_iter()
                    .map(|value| Observation {
                        value,
                        timespan: timespan.cloned(),
                    })
                    .collect();
                (!observations.is_empty()).then_some(Measure {
                    observation_parameter: parameter,
                    observation_type: profile.observation_type,
                    observed_pattern: pattern,
                    observations,
                })
            })
            .collect::<Vec<Measure>>()
    };
    let mut anomalies = measures(profile.anomalies, Some(&timespan), profile.observed_pattern);
    if anomalies.is_empty() {
        anomalies.push(Measure {
            observation_parameter: alert.detector.as_str(),
            observation_type: profile.observation_type,
            observed_pattern: profile.observed_pattern,
            observations: vec![Observation {
                value: alert.summary.clone(),
                timespan: Some(timespan.clone()),
            }],
        });
    }
    let mut analysis_targets = vec![AnalysisTarget {
        name: alert.key_fingerprint.clone(),
        type_name: "API Key",
    }];
    if alert.detector == Detector::SourceSpray
        && let Some(source) = alert.evidence.get("source_network").and_then(Value::as_str)
    {
        analysis_targets.push(AnalysisTarget {
            name: source.to_string(),
            type_name: "Source Network",
        });
    }
    AnomalyAnalysis {
        analysis_targets,
        anomalies,
        baselines: measures(profile.baselines, None, "NORMAL"),
    }
}

/// The values at a profile pointer, as observation text.
fn values_at(evidence: &Value, pointer: &str) -> Vec<String> {
    let (pointer, list) = match pointer.strip_suffix("[]") {
        Some(pointer) => (pointer, true),
        None => (pointer, false),
    };
    let Some(value) = evidence.pointer(pointer) else {
        return Vec::new();
    };
    let is_asn = pointer.ends_with("/asn");
    match value {
        Value::Null => Vec::new(),
        Value::String(text) if list => text
            .split(", ")
            .filter(|item| !item.is_empty() && *item != "none")
            .map(str::to_string)
            .collect(),
        Value::String(text) if text.is_empty() => Vec::new(),
        Value::String(text) => vec![text.clone()],
        Value::Number(number) if is_asn => vec![format!("AS{number}")],
        Value::Number(number) => vec![number.to_string()],
        Value::Bool(flag) => vec![flag.to_string()],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            })
            .collect(),
        Value::Object(_) => vec![value.to_string()],
    }
}

/// Everything of the alert not mapped above: its native evidence and exact
/// score, and any field added to alerts later.
fn unmapped(mut fields: Map<String, Value>) -> Value {
    for field in MAPPED_FIELDS {
        fields.remove(*field);
    }
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Window;
    use serde_json::json;

    fn alert(detector: Detector, severity: Severity, evidence: Value) -> Alert {
        Alert {
            id: "al_00000000000000000000000000000001".into(),
            incident_id: "in_00000000000000000000000000000001".into(),
            key_fingerprint: "kf_0123456789abcdef0123456789abcdef".into(),
            key_hint: "****MPLE".into(),
            keys: Vec::new(),
            detector,
            severity,
            score: 0.97,
            ts: "2026-01-11T09:00:00.000Z".into(),
            window: Window {
                start: "2026-01-11T08:55:00.000Z".into(),
                end: "2026-01-11T09:00:00.000Z".into(),
            },
            summary: "London, GB to Sao Paulo, BR: 9492 km in 5m".into(),
            evidence,
            model: "default@1".into(),
            owner: None,
            revision: 1,
            count: 1,
            first_seen: "2026-01-11T09:00:00.000Z".into(),
            last_seen: "2026-01-11T09:00:00.000Z".into(),
            peak_score: 0.97,
        }
    }

    fn travel() -> Alert {
        alert(
            Detector::ImpossibleTravel,
            Severity::High,
            json!({
                "previous": {"ts": "2026-01-11T08:55:00.000Z", "ip": "25.10.1.1", "place": "London, GB", "asn": 5089, "established": true},
                "current": {"ts": "2026-01-11T09:00:00.000Z", "ip": "177.10.1.1", "place": "Sao Paulo, BR", "asn": 28573, "as_org": "Claro", "established": false},
                "distance_km": 9492.0,
                "speed_kmh": 113904.0,
                "max_speed_kmh": 1000.0,
                "elapsed_s": 300,
                "baseline": {"countries": "GB 100%", "networks": "AS5089 90%, AS2856 10%"},
            }),
        )
    }

    #[test]
    fn severities_map_to_ocsf_severity_ids() {
        let expected = [
            (Severity::Low, 2, "Low"),
            (Severity::Medium, 3, "Medium"),
            (Severity::High, 4, "High"),
            (Severity::Critical, 5, "Critical"),
        ];
        for (severity, id, caption) in expected {
            let finding = detection_finding(&alert(Detector::NewCountry, severity, json!({}))).unwrap();
            assert_eq!((finding.severity_id, finding.severity), (id, caption), "{severity:?}");
        }
    }

    #[test]
    fn an_alert_is_a_detection_finding_created() {
        let finding = detection_finding(&travel()).unwrap();
        assert_eq!(
            (
                finding.class_uid,
                finding.category_uid,
                finding.activity_id,
                finding.type_uid
            ),
            (2004, 2, 1, 200401)
        );
        assert_eq!(finding.time, 1_768_122_000_000);
        assert_eq!(finding.start_time, 1_768_121_700_000);
        assert_eq!(finding.metadata.version, "1.5.0");
        assert_eq!(finding.metadata.correlation_uid, "in_00000000000000000000000000000001");
        assert_eq!(finding.finding_info.uid, "al_00000000000000000000000000000001");
        assert_eq!(finding.finding_info.analytic.name, "impossible_travel");
        assert_eq!(finding.finding_info.created_time, Some(finding.time));
        assert_eq!(finding.confidence_score, 97);
        assert_eq!(finding.status_id, 1);
    }

    #[test]
    fn a_later_revision_is_an_update_of_the_same_finding() {
        let alert = travel();
        let mut fields = serde_json::to_value(&alert).unwrap().as_object().cloned().unwrap();
        fields.insert("revision".into(), json!(3));
        fields.insert("count".into(), json!(7));
        fields.insert("last_seen".into(), json!("2026-01-11T10:00:00.000Z"));
        let finding = finding_of(&alert, fields.clone()).unwrap();
        assert_eq!((finding.activity_id, finding.type_uid), (2, 200402));
        assert_eq!(finding.count, Some(7));
        assert_eq!(finding.end_time, 1_768_125_600_000);
        assert_eq!(finding.metadata.uid, "al_00000000000000000000000000000001/3");
        assert_eq!(finding.finding_info.uid, "al_00000000000000000000000000000001");
        assert_eq!(finding.finding_info.created_time, None);
        assert_eq!(finding.finding_info.modified_time, Some(finding.time));
        assert_eq!(finding.unmapped["revision"], 3, "lifecycle fields also stay readable");
        fields.insert("revision".into(), json!(FIRST_REVISION));
        assert_eq!(finding_of(&alert, fields).unwrap().activity_id, 1);
    }

    #[test]
    fn evidence_holds_both_ends_of_a_journey_and_the_anomaly_its_speed() {
        let finding = detection_finding(&travel()).unwrap();
        let names: Vec<&str> = finding.evidences.iter().map(|evidence| evidence.name).collect();
        assert_eq!(names, ["current use", "previous use"]);
        let current = finding.evidences[0].src_endpoint.as_ref().unwrap();
        assert_eq!(current.ip, "177.10.1.1");
        assert_eq!(current.location.as_ref().unwrap().country.as_deref(), Some("BR"));
        assert_eq!(current.location.as_ref().unwrap().city.as_deref(), Some("Sao Paulo"));
        assert_eq!(current.autonomous_system.as_ref().unwrap().number, 28573);
        let analysis = &finding.anomaly_analyses[0];
        assert_eq!(analysis.anomalies[0].observation_parameter, "speed_kmh");
        assert_eq!(analysis.anomalies[0].observations[0].value, "113904.0");
        let networks = analysis
            .baselines
            .iter()
            .find(|baseline| baseline.observation_parameter == "networks")
            .unwrap();
        let values: Vec<&str> = networks.observations.iter().map(|o| o.value.as_str()).collect();
        assert_eq!(
            values,
            ["AS5089 90%", "AS2856 10%"],
            "a list becomes one observation per item"
        );
        assert_eq!(finding.unmapped["evidence"]["speed_kmh"], 113904.0);
        assert_eq!(finding.unmapped["score"], 0.97);
    }

    #[test]
    fn the_key_is_a_resource_by_fingerprint_and_hint_only() {
        let mut spray = alert(
            Detector::SourceSpray,
            Severity::High,
            json!({"source_network": "203.0.113.0/24", "addresses": ["203.0.113.7"], "keys": 2, "calls": 40}),
        );
        spray.keys = vec![
            "kf_0123456789abcdef0123456789abcdef".into(),
            "kf_fedcba9876543210fedcba9876543210".into(),
        ];
        let finding = detection_finding(&spray).unwrap();
        let uids: Vec<&str> = finding.resources.iter().map(|resource| resource.uid.as_str()).collect();
        assert_eq!(
            uids,
            [
                "kf_0123456789abcdef0123456789abcdef",
                "kf_fedcba9876543210fedcba9876543210"
            ]
        );
        assert_eq!(finding.resources[0].name.as_deref(), Some("****MPLE"));
        assert_eq!(finding.evidences[0].src_endpoint.as_ref().unwrap().ip, "203.0.113.7");
        assert_eq!(finding.anomaly_analyses[0].analysis_targets[1].name, "203.0.113.0/24");
    }

    #[test]
    fn an_evidence_without_its_profile_values_still_has_an_anomaly() {
        let finding = detection_finding(&alert(
            Detector::RateSpike,
            Severity::Medium,
            json!({"truncated_from_bytes": 40000}),
        ))
        .unwrap();
        let anomaly = &finding.anomaly_analyses[0].anomalies[0];
        assert_eq!(anomaly.observation_parameter, "rate_spike");
        assert_eq!(anomaly.observations[0].value, finding.message);
        assert!(finding.evidences.is_empty());
    }

    #[test]
    fn a_bad_time_is_an_error_not_a_wrong_line() {
        let mut broken = travel();
        broken.ts = "yesterday".into();
        let error = detection_finding(&broken).unwrap_err().to_string();
        assert!(error.contains("ts") && error.contains("yesterday"), "{error}");
    }

    #[test]
    fn every_detector_has_a_profile_whose_anomalies_name_a_parameter() {
        for detector in Detector::ALL {
            let profile = profile(*detector);
            assert!(!profile.anomalies.is_empty(), "{detector}");
            assert!(!title(*detector).is_empty());
            for (parameter, pointer) in profile.anomalies.iter().chain(profile.baselines) {
                assert!(
                    !parameter.is_empty() && pointer.starts_with('/'),
                    "{detector}: {pointer}"
                );
            }
        }
    }

    fn schema() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/ocsf-detection-finding.schema.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("the schema file")).expect("JSON")
    }

    #[test]
    fn the_schema_lists_exactly_the_registry_and_the_constants_here() {
        let schema = schema();
        let listed: std::collections::BTreeSet<&str> = schema["$defs"]["detector"]["enum"]
            .as_array()
            .expect("a detector enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let registry: std::collections::BTreeSet<&str> =
            Detector::ALL.iter().map(|detector| detector.as_str()).collect();
        assert_eq!(listed, registry);
        assert_eq!(schema["properties"]["class_uid"]["const"], CLASS_UID);
        assert_eq!(schema["properties"]["category_uid"]["const"], CATEGORY_UID);
        assert_eq!(
            schema["properties"]["metadata"]["properties"]["version"]["const"],
            OCSF_VERSION
        );
    }

    #[test]
    fn findings_of_every_detector_validate_against_the_schema() {
        let validator = jsonschema::validator_for(&schema()).expect("a valid schema");
        for detector in Detector::ALL {
            let mut sample = travel();
            sample.detector = *detector;
            for evidence in [
                travel().evidence,
                json!({}),
                json!({"observed": {"endpoint": "/v1/x", "status": 403}}),
            ] {
                sample.evidence = evidence;
                let finding = serde_json::to_value(detection_finding(&sample).unwrap()).unwrap();
                let errors: Vec<String> = validator.iter_errors(&finding).map(|error| error.to_string()).collect();
                assert!(errors.is_empty(), "{detector}: {errors:?} in {finding}");
            }
        }
    }

    #[test]
    fn the_largest_alert_keeps_its_finding_far_below_the_message_limit() {
        let mut spray = alert(
            Detector::SourceSpray,
            Severity::High,
            json!({
                "source_network": "203.0.113.0/24",
                "addresses": (0..2000).map(|index| format!("2001:db8::{index:x}")).collect::<Vec<_>>(),
                "asns": (0..2000).collect::<Vec<u32>>(),
                "keys": 500,
            }),
        );
        spray.keys = (0..500).map(|index| format!("kf_{index:032x}")).collect();
        spray.keys[0] = spray.key_fingerprint.clone();
        crate::alert::cap::cap_alert(&mut spray, crate::alert::cap::MAX_ALERT_BYTES);
        let line = to_json_line(&spray).unwrap();
        assert!(line.len() < MAX_FINDING_BYTES, "{} bytes", line.len());
        let finding = detection_finding(&spray).unwrap();
        assert!(finding.evidences.len() <= MAX_EVIDENCES);
        assert_eq!(finding.resources.len(), spray.keys.len());
    }

    #[test]
    fn formats_parse_and_say_what_they_write() {
        assert!(AlertFormat::default().native() && !AlertFormat::default().ocsf());
        assert!(AlertFormat::Both.native() && AlertFormat::Both.ocsf());
        assert!(!AlertFormat::Ocsf.native() && AlertFormat::Ocsf.ocsf());
        let parsed: AlertFormat = serde_json::from_str("\"both\"").unwrap();
        assert_eq!(parsed, AlertFormat::Both);
        assert_eq!(AlertFormat::Ocsf.as_str(), "ocsf");
    }
}
