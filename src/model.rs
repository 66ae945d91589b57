//! Detection models: every threshold, learning period, sensitive endpoint
//! pattern and revocation rule lives in a `models/*.toml` file, parsed here
//! and validated into typed values before anything runs.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detector::{Detector, Severity};

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid model file {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("invalid model file {path}: field `{field}`: {problem}")]
    Invalid {
        path: String,
        field: String,
        problem: String,
    },
}

/// The model shipped in `models/default.toml`, compiled in so `keywatch`
/// works without a model file.
pub const DEFAULT_MODEL_TOML: &str = include_str!("../models/default.toml");

/// How much history a key needs before a detector judges it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learning {
    /// Event time since the key was first seen.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    /// Events seen on the key.
    pub min_events: u64,
}

/// The whole model file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Name written into every alert with the version.
    pub name: String,
    pub version: String,
    pub geo: GeoModel,
    pub rate: RateModel,
    pub volume: VolumeModel,
    pub endpoints: EndpointModel,
    pub client: ClientModel,
    pub auth_failures: AuthFailureModel,
    pub alerts: AlertModel,
    pub policy: PolicyModel,
    pub networks: NetworkModel,
    /// The view across keys (source spray, organisation baseline). Optional
    /// in model files: absent, the defaults below apply.
    #[serde(default)]
    pub across_keys: AcrossKeysModel,
    /// Event time of one input: reordering, late and far-future events.
    /// Optional in model files: absent, the defaults below apply.
    #[serde(default)]
    pub time: TimeModel,
    /// Bounds on per-partition state. Optional in model files: absent, the
    /// defaults below apply.
    #[serde(default)]
    pub state: StateModel,
    /// Networks whose calls never raise geography findings (corporate
    /// egress, known VPNs). Optional in model files: absent, none.
    #[serde(default, skip_serializing_if = "crate::allowlist::AllowlistModel::is_empty")]
    pub allowlist: crate::allowlist::AllowlistModel,
}

/// Event time of one input (a file replay, one Kafka partition). Events are
/// held until the input's clock (its newest accepted event time) is
/// `max_out_of_order` past them, then judged in event-time order; an event
/// older than its key's newest judged event is late: counted and judged
/// without travel checks. An event more than `max_ahead` past the clock is held
/// apart: it moves the clock only when confirmed, by events of two distinct
/// keys (one, when the input has only seen one key) within `max_ahead` of
/// each other, or by `confirm_after` arrivals in a row all that far ahead
/// (the whole input has moved on). Unconfirmed, it is quarantined to the
/// rejected output (`future_event`) once the clock has moved `max_ahead`
/// past its arrival or when more than `max_ahead_held` wait, and it never
/// moves any key's time. At the end of a replay nothing is left to confirm
/// it, so what is still held is judged in time order
/// ([`crate::engine::Engine::finish`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeModel {
    #[serde(with = "humantime_serde")]
    pub max_out_of_order: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ahead: Duration,
    pub confirm_after: u32,
    pub max_ahead_held: usize,
}

impl Default for TimeModel {
    fn default() -> TimeModel {
        TimeModel {
            max_out_of_order: Duration::from_secs(300),
            max_ahead: Duration::from_secs(3600),
            confirm_after: 256,
            max_ahead_held: 10_000,
        }
    }
}

/// Bounds on the state one engine (one partition) holds, so that memory
/// does not grow with the number of distinct keys, paths or user agents
/// ever seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateModel {
    /// Keys silent for longer than this (in event time) lose their state,
    /// checked once per day of the engine's clock. A key with enough
    /// history for `rate.dormant` keeps a compact record (its first and
    /// last use and its event count), so that its return is still judged
    /// dormant. Longer than `rate.dormant_after`.
    #[serde(with = "humantime_serde")]
    pub evict_after: Duration,
    /// Distinct endpoint templates held before the endpoint table is
    /// rebuilt from the templates that keys still refer to.
    pub max_endpoint_templates: usize,
    /// Distinct client families held before the client table is rebuilt
    /// from the families that keys still refer to.
    pub max_client_families: usize,
}

impl Default for StateModel {
    fn default() -> StateModel {
        StateModel {
            evict_after: Duration::from_secs(60 * 86_400),
            max_endpoint_templates: 100_000,
            max_client_families: 10_000,
        }
    }
}

/// Geography: new countries and networks, impossible travel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoModel {
    /// Countries remembered per key (top-K; the rest share one bucket).
    pub max_countries: usize,
    /// Networks (ASNs) remembered per key.
    pub max_asns: usize,
    /// Places (a network in a region) remembered per key.
    pub max_places: usize,
    /// Half-life of the weight of a country or network in the baseline.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    pub new_country: Learning,
    pub new_asn: Learning,
    pub new_region: Learning,
    pub impossible_travel: Learning,
    /// Speed above which travel between two uses is impossible.
    pub max_speed_kmh: f64,
    /// Distances shorter than this are never impossible travel.
    pub min_distance_km: f64,
    /// Extra distance allowed per location for GeoIP error, on top of the
    /// databases' own accuracy radius.
    pub location_error_km: f64,
    /// A location holding at least this share of the key's baseline is
    /// established: travel between established locations is not impossible.
    pub established_share: f64,
    /// ... and has been part of it for at least this long.
    #[serde(with = "humantime_serde")]
    pub established_after: Duration,
    /// Concurrent use of one provider's network (the same ASN) from two
    /// distant regions is a cutover until it lasts this long.
    #[serde(with = "humantime_serde")]
    pub same_network_overlap: Duration,
    /// A key whose baseline spreads over at least this many countries is
    /// global: new countries on it are low severity.
    pub global_key_countries: usize,
    /// A global key whose set of countries has not grown for this long
    /// has settled: a new country is no longer explained by it being global.
    #[serde(with = "humantime_serde")]
    pub global_settled: Duration,
}

/// Call rate with daily seasonality.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateModel {
    pub learning: Learning,
    /// Length of the short window (spikes).
    #[serde(with = "humantime_serde")]
    pub spike_window: Duration,
    /// Length of the long window (sustained surges).
    #[serde(with = "humantime_serde")]
    pub surge_window: Duration,
    /// Tail probability below which a window's count is anomalous.
    pub spike_p_value: f64,
    pub surge_p_value: f64,
    /// Windows with fewer calls than this never alert.
    pub min_spike_count: u64,
    pub min_surge_count: u64,
    /// Smoothing of the hour-of-day profile per day (0..1).
    pub profile_alpha: f64,
    /// Floor of the expected calls per hour, so a quiet hour does not make
    /// every call an anomaly.
    pub min_hourly_rate: f64,
    /// A key silent for this long that is used again has woken up.
    #[serde(with = "humantime_serde")]
    pub dormant_after: Duration,
    pub dormant: Learning,
    /// Hours either side of a window's own whose expectation it is judged
    /// against (the largest for rises, the smallest for silences), so a day
    /// shifted by a daylight-saving move stays within the key's usual.
    pub seasonal_neighbours: usize,
    /// A closed window beyond its expectation by this many standard
    /// deviations teaches the profile only slowly.
    pub outlier_sd: f64,
    /// A window beyond its expectation by this many standard deviations is
    /// a burst, and joins the key's own record of bursts.
    pub burst_sd: f64,
    /// Half-life of the key's record of bursts (of its logarithm).
    #[serde(with = "humantime_serde")]
    pub burst_memory: Duration,
    /// A spike or surge is medium only when its ratio to expected is at
    /// least this multiple of the key's own biggest burst; below, it is low.
    pub burst_margin: f64,
    /// ... and high when its ratio to the key's own usual (expected times
    /// its biggest burst) reaches this.
    pub high_ratio: f64,
    /// Level (smoothed observed/expected) at which the key is elevated.
    pub sustained_ratio: f64,
    /// An elevation lasting this long is a sustained surge.
    #[serde(with = "humantime_serde")]
    pub sustained_for: Duration,
    /// Time constant of the level's smoothing.
    #[serde(with = "humantime_serde")]
    pub sustained_smoothing: Duration,
    /// One window's ratio counts for at most this in the level, so a single
    /// burst cannot look like a lasting rise.
    pub sustained_cap: f64,
    /// A sustained surge is medium only when its level is at least this
    /// multiple of the key's own earlier sustained episodes.
    pub sustained_margin: f64,
    /// A busy key silent for at least this long ...
    #[serde(with = "humantime_serde")]
    pub drop_min_silence: Duration,
    /// ... through hours in which its profile expected at least this many calls ...
    pub drop_min_expected: f64,
    /// ... with a probability of not one call below this has dropped.
    pub drop_p_value: f64,
    /// The silence must begin in an hour with at least this share of the
    /// key's busiest hour: a key that stops mid-day, not at its day's end.
    pub drop_busy_share: f64,
}

/// Response bytes: big calls (far above the key's usual bytes per call)
/// against the key's usual share of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeModel {
    pub learning: Learning,
    /// Smoothing of the key's usual bytes per call and share of big calls,
    /// per short window with calls.
    pub alpha: f64,
    /// A call with at least this multiple of the key's `big_quantile` of
    /// bytes per call is big.
    pub big_ratio: f64,
    /// The quantile of bytes per call tracked per key (0.99: all but one
    /// call in a hundred) ...
    pub big_quantile: f64,
    /// ... by steps of this much in log terms.
    pub quantile_step: f64,
    /// The usual share of big calls is taken as at least this.
    pub min_big_share: f64,
    /// Big calls in the long window needed for any finding.
    pub min_big_calls: u64,
    /// Bytes in the long window needed for any finding.
    pub min_bytes: f64,
    /// Tail probability of the long window's big calls, given its calls and
    /// the key's usual share, below which it is low, and medium.
    pub low_p_value: f64,
    pub medium_p_value: f64,
    /// A low window whose bytes per call reach this multiple of the usual
    /// is medium: so much more data per call is no chance.
    pub medium_ratio: f64,
    /// A medium window whose bytes per call reach this multiple of the
    /// usual is high.
    pub high_ratio: f64,
}

/// Endpoint mix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointModel {
    /// Endpoints remembered per key.
    pub max_endpoints: usize,
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    pub new_endpoint: Learning,
    /// Glob patterns (`*` matches any run of characters, case-insensitive)
    /// of endpoints whose first use by a key is suspicious.
    pub sensitive_patterns: Vec<String>,
    pub mix_shift: Learning,
    /// Window over which the mix is compared with the baseline.
    #[serde(with = "humantime_serde")]
    pub mix_window: Duration,
    /// Calls needed in the window before the mix is judged.
    pub mix_min_calls: u64,
    /// Jensen-Shannon divergence (bits, 0..1) above which the mix has shifted.
    pub mix_max_divergence: f64,
}

/// Client fingerprint: the user-agent family.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientModel {
    pub max_clients: usize,
    /// Half-life of the weight of a client family in the baseline.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    pub new_client: Learning,
}

/// Spikes of 401/403 answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFailureModel {
    pub learning: Learning,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub min_failures: u64,
    pub p_value: f64,
    /// A spike whose failures come at least this share from the key's
    /// established places with its established clients (a retry loop of
    /// its own service) is low.
    pub familiar_share: f64,
}

/// Kinds of network: lists of well-known ASNs per kind, then patterns on
/// the ASN database's organisation name for the rest (`*` matches any run of
/// characters, case-insensitive). Anonymising patterns are tried first, then
/// hosting, cloud, mobile and residential ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkModel {
    pub cloud: Vec<u32>,
    pub hosting: Vec<u32>,
    pub anonymising: Vec<u32>,
    pub residential: Vec<u32>,
    pub mobile: Vec<u32>,
    pub anonymising_patterns: Vec<String>,
    pub hosting_patterns: Vec<String>,
    pub cloud_patterns: Vec<String>,
    pub mobile_patterns: Vec<String>,
    pub residential_patterns: Vec<String>,
}

/// Grouping and suppression of alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertModel {
    /// Alerts on one key within this event time of the incident's last alert
    /// join that incident.
    #[serde(with = "humantime_serde")]
    pub incident_gap: Duration,
    /// A detector that fired on a key stays quiet on it this long, unless
    /// its severity rises.
    #[serde(with = "humantime_serde")]
    pub suppress: Duration,
    /// Low findings are folded into one daily digest per key instead of
    /// going out one by one as alerts. A low adds little alone; lows still
    /// count towards correlation, which raises them to medium.
    #[serde(default = "default_true")]
    pub digest_lows: bool,
    /// Repeats of an alert's finding (same detector and subject) within
    /// this event time of its first finding update that alert (same id,
    /// next revision) instead of raising new ones; absent, `suppress`.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub update_window: Option<Duration>,
}

impl AlertModel {
    /// The update window in milliseconds (`update_window`, else `suppress`).
    pub fn update_window_ms(&self) -> i64 {
        self.update_window.unwrap_or(self.suppress).as_millis() as i64
    }
}

fn default_true() -> bool {
    true
}

/// Which alerts ask for a revocation, and the safety gate every request
/// passes before it is sent (see `crate::revoke` and docs/REVOCATION.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyModel {
    /// Older model files: `revoke = false` is `mode = "off"`; `true` leaves
    /// the mode as `mode` says (its default when absent).
    #[serde(default = "default_true")]
    pub revoke: bool,
    /// What happens to a request the gate lets through: sent (`enforce`),
    /// written to the shadow output only (`shadow`), or no requests at all
    /// (`off`). A mode on the control topic overrides it in `run`.
    #[serde(default)]
    pub mode: RevocationMode,
    /// Lowest severity that asks for a revocation on its own.
    pub min_severity: Severity,
    /// Stolen-key patterns: a finding of one of these at `min_severity` or
    /// above is strong evidence alone.
    pub detectors: Vec<Detector>,
    /// Detectors of distinct families (see `crate::alert::evidence`)
    /// alerting at `agreeing_min_severity` or above within one incident are
    /// strong evidence too. 0 turns agreement off.
    #[serde(default = "default_min_agreeing_detectors")]
    pub min_agreeing_detectors: usize,
    #[serde(default = "default_agreeing_min_severity")]
    pub agreeing_min_severity: Severity,
    /// At most `count` requests per `per` of event time over all keys.
    #[serde(default = "default_max_requests")]
    pub max_requests: RequestCap,
    /// At most `count` requests per `per` for the keys of one owner; keys
    /// with no owner share one bucket, `unowned`.
    #[serde(default = "default_max_requests_per_owner")]
    pub max_requests_per_owner: RequestCap,
    /// Keys never revoked automatically: `kf_...` fingerprints,
    /// `owner:NAME` or `team:NAME`.
    #[serde(default)]
    pub never_revoke: Vec<String>,
    /// Keys whose owner entry says `criticality = critical` are held like
    /// `never_revoke` ones.
    #[serde(default = "default_true")]
    pub hold_critical: bool,
    /// No second request for one key within this event time of the last.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// A sent request not acknowledged within this wall-clock time is sent
    /// again, with the same idempotency key (`run` only).
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Sends of one request, the first included, before it is marked failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// What happens to a request the gate lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RevocationMode {
    /// Sent to the revocation service.
    Enforce,
    /// Written to the shadow output only: what enforcement would send.
    #[default]
    Shadow,
    /// Neither sent nor written.
    Off,
}

impl RevocationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationMode::Enforce => "enforce",
            RevocationMode::Shadow => "shadow",
            RevocationMode::Off => "off",
        }
    }

    pub fn parse(text: &str) -> Option<RevocationMode> {
        match text.trim() {
            "enforce" => Some(RevocationMode::Enforce),
            "shadow" => Some(RevocationMode::Shadow),
            "off" => Some(RevocationMode::Off),
            _ => None,
        }
    }
}

impl std::fmt::Display for RevocationMode {
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

/// A rate limit: `count` within any `per` of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCap {
    pub count: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

fn default_min_agreeing_detectors() -> usize {
    2
}

fn default_agreeing_min_severity() -> Severity {
    Severity::Medium
}

fn default_max_requests() -> RequestCap {
    RequestCap {
        count: 5,
        per: Duration::from_secs(3600),
    }
}

fn default_max_requests_per_owner() -> RequestCap {
    RequestCap {
        count: 2,
        per: Duration::from_secs(3600),
    }
}

fn default_cooldown() -> Duration {
    Duration::from_secs(86_400)
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_max_attempts() -> u32 {
    5
}

impl PolicyModel {
    /// The mode the model asks for, `revoke = false` read as `off`.
    pub fn effective_mode(&self) -> RevocationMode {
        if self.revoke { self.mode } else { RevocationMode::Off }
    }
}

/// The view across keys: state kept per source network and for the whole
/// organisation rather than per key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcrossKeysModel {
    /// A source network (the /24 of an IPv4 address, the /48 of an IPv6
    /// one) calling with at least `spray_min_keys` keys unfamiliar with it
    /// (from a network neither the key nor the organisation uses, or
    /// refused on a key not learned yet) within `spray_window` is spraying
    /// keys.
    pub spray_min_keys: usize,
    #[serde(with = "humantime_serde")]
    pub spray_window: Duration,
    /// A spray that goes on within this event time of its last call stays
    /// one incident.
    #[serde(with = "humantime_serde")]
    pub spray_incident_gap: Duration,
    /// Alerts per spray incident: the first, then one each time the count
    /// of keys doubles, up to this many.
    pub spray_max_alerts: usize,
    /// Keys remembered per source network (and listed in an alert).
    pub spray_max_keys: usize,
    /// Share of refused (401/403) calls from which a spray is high.
    pub spray_refused_share: f64,
    /// Observations are put in event-time order per source after waiting
    /// this long in event time; later ones are taken as they come.
    #[serde(with = "humantime_serde")]
    pub reorder_lateness: Duration,
    /// Length of an organisation epoch: events of epoch E are judged on the
    /// organisation table closed at the end of epoch E-1.
    #[serde(with = "humantime_serde")]
    pub org_epoch: Duration,
    /// Calls within this event time of an epoch's end count towards the
    /// table of the epoch after next, so a late call never changes a
    /// table in use.
    #[serde(with = "humantime_serde")]
    pub org_grace: Duration,
    /// Networks, countries, clients and places not used by a learned key
    /// for this long leave the organisation table.
    #[serde(with = "humantime_serde")]
    pub org_horizon: Duration,
    /// Keys with this much history contribute to the organisation table;
    /// keys with less are judged by it.
    pub org_learned: Learning,
    /// Learned keys the organisation needs in one epoch before its table
    /// judges anyone; keys first seen before that are not judged by it.
    pub org_min_keys: u64,
    /// A network unknown to the organisation this far from all of its
    /// located places is unfamiliar.
    pub org_far_km: f64,
}

impl Default for AcrossKeysModel {
    fn default() -> AcrossKeysModel {
        AcrossKeysModel {
            spray_min_keys: 20,
            spray_window: Duration::from_secs(600),
            spray_incident_gap: Duration::from_secs(3600),
            spray_max_alerts: 3,
            spray_max_keys: 500,
            spray_refused_share: 0.5,
            reorder_lateness: Duration::from_secs(120),
            org_epoch: Duration::from_secs(86_400),
            org_grace: Duration::from_secs(3600),
            org_horizon: Duration::from_secs(90 * 86_400),
            org_learned: Learning {
                min_age: Duration::from_secs(2 * 86_400),
                min_events: 20,
            },
            org_min_keys: 20,
            org_far_km: 1000.0,
        }
    }
}

impl RateModel {
    /// Length of the short window in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.spike_window.as_millis() as i64
    }

    /// The floor of expected calls in one short window.
    pub fn window_floor(&self) -> f64 {
        self.min_hourly_rate * self.window_ms() as f64 / 3_600_000.0
    }

    /// Smoothing per closed short window that gives the model's smoothing
    /// per day for each hour-of-day slot (each slot closes
    /// `windows per hour` windows a day).
    pub fn window_alpha(&self) -> f64 {
        let windows_per_day = 86_400_000.0 / self.window_ms() as f64;
        1.0 - (1.0 - self.profile_alpha).powf(24.0 / windows_per_day)
    }

    /// Short windows an elevation must last to be sustained (at least 1).
    pub fn sustained_windows(&self) -> u64 {
        (self.sustained_for.as_millis() as i64 / self.window_ms()).max(1) as u64
    }

    /// Smoothing of the level per closed short window.
    pub fn level_alpha(&self) -> f64 {
        let smoothing_ms = self.sustained_smoothing.as_millis().max(1) as f64;
        1.0 - (-(self.window_ms() as f64) / smoothing_ms).exp()
    }
}

impl Model {
    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Model::parse(&text, &path.display().to_string())
    }

    /// The compiled-in default model.
    pub fn default_model() -> Model {
        Model::parse(DEFAULT_MODEL_TOML, "models/default.toml").expect("the default model is valid")
    }

    /// Parses and validates model text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Model, ModelError> {
        let model: Model = toml::from_str(text).map_err(|err| ModelError::Parse {
            path: origin.to_string(),
            detail: err.to_string(),
        })?;
        model.validate(origin)?;
        Ok(model)
    }

    /// `name@version`, as written into alerts.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    fn validate(&self, origin: &str) -> Result<(), ModelError> {
        let invalid = |field: &str, problem: &str| ModelError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            problem: problem.to_string(),
        };
        // Every number read from the file is checked here first, so a NaN
        // (which fails no `<` or `>` comparison) or a negative value is
        // named before any range check could let it through.
        for (field, value) in [
            ("geo.max_speed_kmh", self.geo.max_speed_kmh),
            ("geo.min_distance_km", self.geo.min_distance_km),
            ("geo.location_error_km", self.geo.location_error_km),
            ("geo.established_share", self.geo.established_share),
            ("rate.spike_p_value", self.rate.spike_p_value),
            ("rate.surge_p_value", self.rate.surge_p_value),
            ("rate.profile_alpha", self.rate.profile_alpha),
            ("rate.min_hourly_rate", self.rate.min_hourly_rate),
            ("endpoints.mix_max_divergence", self.endpoints.mix_max_divergence),
            ("auth_failures.p_value", self.auth_failures.p_value),
            ("auth_failures.familiar_share", self.auth_failures.familiar_share),
            ("rate.outlier_sd", self.rate.outlier_sd),
            ("rate.burst_sd", self.rate.burst_sd),
            ("rate.burst_margin", self.rate.burst_margin),
            ("rate.high_ratio", self.rate.high_ratio),
            ("rate.sustained_ratio", self.rate.sustained_ratio),
            ("rate.sustained_cap", self.rate.sustained_cap),
            ("rate.sustained_margin", self.rate.sustained_margin),
            ("rate.drop_min_expected", self.rate.drop_min_expected),
            ("rate.drop_p_value", self.rate.drop_p_value),
            ("rate.drop_busy_share", self.rate.drop_busy_share),
            ("volume.alpha", self.volume.alpha),
            ("volume.big_ratio", self.volume.big_ratio),
            ("volume.big_quantile", self.volume.big_quantile),
            ("volume.quantile_step", self.volume.quantile_step),
            ("volume.min_big_share", self.volume.min_big_share),
            ("volume.min_bytes", self.volume.min_bytes),
            ("volume.low_p_value", self.volume.low_p_value),
            ("volume.medium_p_value", self.volume.medium_p_value),
            ("volume.medium_ratio", self.volume.medium_ratio),
            ("volume.high_ratio", self.volume.high_ratio),
            ("across_keys.spray_refused_share", self.across_keys.spray_refused_share),
            ("across_keys.org_far_km", self.across_keys.org_far_km),
        ] {
            if !value.is_finite() {
                return Err(invalid(field, "must be a finite number"));
            }
            if value < 0.0 {
                return Err(invalid(field, "must not be negative"));
            }
        }
        let probability = |value: f64, field: &str| {
            if value > 0.0 && value < 1.0 {
                Ok(())
            } else {
                Err(invalid(field, "must be a probability strictly between 0 and 1"))
            }
        };
        probability(self.rate.spike_p_value, "rate.spike_p_value")?;
        probability(self.rate.surge_p_value, "rate.surge_p_value")?;
        probability(self.auth_failures.p_value, "auth_failures.p_value")?;
        probability(self.rate.drop_p_value, "rate.drop_p_value")?;
        probability(self.rate.drop_busy_share, "rate.drop_busy_share")?;
        if !(self.volume.alpha > 0.0 && self.volume.alpha <= 1.0) {
            return Err(invalid("volume.alpha", "must be in (0, 1]"));
        }
        probability(self.volume.low_p_value, "volume.low_p_value")?;
        probability(self.volume.medium_p_value, "volume.medium_p_value")?;
        probability(self.volume.min_big_share, "volume.min_big_share")?;
        probability(self.volume.big_quantile, "volume.big_quantile")?;
        if !(self.volume.quantile_step > 0.0 && self.volume.quantile_step <= 0.5) {
            return Err(invalid("volume.quantile_step", "must be in (0, 0.5]"));
        }
        for (field, value) in [
            ("rate.burst_margin", self.rate.burst_margin),
            ("rate.sustained_ratio", self.rate.sustained_ratio),
            ("rate.sustained_margin", self.rate.sustained_margin),
            ("volume.big_ratio", self.volume.big_ratio),
            ("volume.medium_ratio", self.volume.medium_ratio),
            ("volume.high_ratio", self.volume.high_ratio),
        ] {
            if value < 1.0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.rate.seasonal_neighbours > 11 {
            return Err(invalid("rate.seasonal_neighbours", "must be at most 11"));
        }
        probability(self.geo.established_share, "geo.established_share")?;
        if self.auth_failures.familiar_share > 1.0 {
            return Err(invalid(
                "auth_failures.familiar_share",
                "must be a share between 0 and 1",
            ));
        }
        if !(self.rate.profile_alpha > 0.0 && self.rate.profile_alpha <= 1.0) {
            return Err(invalid("rate.profile_alpha", "must be in (0, 1]"));
        }
        if !(self.endpoints.mix_max_divergence > 0.0 && self.endpoints.mix_max_divergence <= 1.0) {
            return Err(invalid("endpoints.mix_max_divergence", "must be in (0, 1]"));
        }
        for (field, value) in [
            ("geo.max_countries", self.geo.max_countries),
            ("geo.max_asns", self.geo.max_asns),
            ("geo.max_places", self.geo.max_places),
            ("endpoints.max_endpoints", self.endpoints.max_endpoints),
            ("client.max_clients", self.client.max_clients),
        ] {
            if value == 0 || value > 255 {
                return Err(invalid(field, "must be between 1 and 255"));
            }
        }
        if self.geo.max_speed_kmh <= 0.0 {
            return Err(invalid("geo.max_speed_kmh", "must be positive"));
        }
        for (field, value) in [
            ("rate.spike_window", self.rate.spike_window),
            ("rate.surge_window", self.rate.surge_window),
            ("endpoints.mix_window", self.endpoints.mix_window),
            ("auth_failures.window", self.auth_failures.window),
            ("geo.half_life", self.geo.half_life),
            ("endpoints.half_life", self.endpoints.half_life),
            ("client.half_life", self.client.half_life),
            ("rate.burst_memory", self.rate.burst_memory),
            ("rate.sustained_for", self.rate.sustained_for),
            ("rate.sustained_smoothing", self.rate.sustained_smoothing),
            ("rate.drop_min_silence", self.rate.drop_min_silence),
        ] {
            if value.as_millis() < 1000 {
                return Err(invalid(field, "must be at least 1s"));
            }
        }
        if 3_600_000 % self.rate.spike_window.as_millis() != 0
            || !self
                .rate
                .surge_window
                .as_millis()
                .is_multiple_of(self.rate.spike_window.as_millis())
        {
            return Err(invalid(
                "rate.spike_window",
                "must divide one hour and rate.surge_window",
            ));
        }
        if self.rate.surge_window.as_millis() / self.rate.spike_window.as_millis() > 64 {
            return Err(invalid("rate.surge_window", "may hold at most 64 spike windows"));
        }
        self.validate_networks(origin)?;
        if let Err(problem) = crate::allowlist::Allowlist::new(&self.allowlist) {
            return Err(invalid("allowlist.cidrs", &problem.to_string()));
        }
        let time = &self.time;
        if time.max_ahead <= time.max_out_of_order {
            return Err(invalid("time.max_ahead", "must be longer than time.max_out_of_order"));
        }
        if time.max_out_of_order > Duration::from_secs(86_400) {
            return Err(invalid(
                "time.max_out_of_order",
                "must be at most a day (events wait this long)",
            ));
        }
        if time.confirm_after == 0 || time.max_ahead_held == 0 {
            return Err(invalid(
                "time.confirm_after",
                "and time.max_ahead_held must be at least 1",
            ));
        }
        let across = &self.across_keys;
        if across.spray_min_keys < 2 || across.spray_min_keys > across.spray_max_keys || across.spray_max_keys > 500 {
            return Err(invalid(
                "across_keys.spray_min_keys",
                "must be at least 2 and at most across_keys.spray_max_keys (itself at most 500)",
            ));
        }
        if across.spray_max_alerts == 0 {
            return Err(invalid("across_keys.spray_max_alerts", "must be at least 1"));
        }
        for (field, value) in [
            ("across_keys.spray_window", across.spray_window),
            ("across_keys.spray_incident_gap", across.spray_incident_gap),
            ("across_keys.org_epoch", across.org_epoch),
            ("across_keys.org_horizon", across.org_horizon),
        ] {
            if value.as_millis() < 1000 {
                return Err(invalid(field, "must be at least 1s"));
            }
        }
        if across.org_grace >= across.org_epoch {
            return Err(invalid(
                "across_keys.org_grace",
                "must be shorter than across_keys.org_epoch",
            ));
        }
        if self.state.evict_after <= self.rate.dormant_after {
            return Err(invalid("state.evict_after", "must be longer than rate.dormant_after"));
        }
        if self.state.max_endpoint_templates < 16 || self.state.max_client_families < 16 {
            return Err(invalid(
                "state.max_endpoint_templates",
                "state.max_endpoint_templates and state.max_client_families must be at least 16",
            ));
        }
        self.validate_policy(origin)?;
        for pattern in &self.endpoints.sensitive_patterns {
            if pattern.is_empty() {
                return Err(invalid(
                    "endpoints.sensitive_patterns",
                    "an empty pattern matches nothing",
                ));
            }
        }
        Ok(())
    }

    /// Caps of at least one request over at least a second, and
    /// `never_revoke` entries that name a fingerprint, owner or team.
    fn validate_policy(&self, origin: &str) -> Result<(), ModelError> {
        let invalid = |field: &str, problem: String| ModelError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            problem,
        };
        let policy = &self.policy;
        for (field, cap) in [
            ("policy.max_requests", policy.max_requests),
            ("policy.max_requests_per_owner", policy.max_requests_per_owner),
        ] {
            if cap.count == 0 || cap.per.as_millis() < 1000 {
                return Err(invalid(
                    field,
                    "needs count of at least 1 and per of at least 1s (mode = \"off\" stops requests)".into(),
                ));
            }
        }
        if policy.min_agreeing_detectors == 1 {
            return Err(invalid(
                "policy.min_agreeing_detectors",
                "1 would let any one detector revoke; use 0 (off) or at least 2".into(),
            ));
        }
        if policy.max_attempts == 0 {
            return Err(invalid("policy.max_attempts", "must be at least 1".into()));
        }
        for entry in &policy.never_revoke {
            if NeverRevoke::parse(entry).is_none() {
                return Err(invalid(
                    "policy.never_revoke",
                    format!("`{entry}` is not a kf_ fingerprint, owner:NAME or team:NAME"),
                ));
            }
        }
        Ok(())
    }

    /// An ASN listed under two kinds, ASN 0 (no network) in a list, or an
    /// empty pattern is a mistake in the file.
    fn validate_networks(&self, origin: &str) -> Result<(), ModelError> {
        let invalid = |field: &str, problem: String| ModelError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            problem,
        };
        let networks = &self.networks;
        let lists = [
            ("networks.cloud", &networks.cloud),
            ("networks.hosting", &networks.hosting),
            ("networks.anonymising", &networks.anonymising),
            ("networks.residential", &networks.residential),
            ("networks.mobile", &networks.mobile),
        ];
        let mut seen: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
        for (field, asns) in lists {
            for asn in asns.iter() {
                if *asn == 0 {
                    return Err(invalid(field, "ASN 0 is no network".to_string()));
                }
                if let Some(other) = seen.insert(*asn, field)
                    && other != field
                {
                    return Err(invalid(field, format!("AS{asn} is also listed in {other}")));
                }
            }
        }
        for (field, patterns) in [
            ("networks.anonymising_patterns", &networks.anonymising_patterns),
            ("networks.hosting_patterns", &networks.hosting_patterns),
            ("networks.cloud_patterns", &networks.cloud_patterns),
            ("networks.mobile_patterns", &networks.mobile_patterns),
            ("networks.residential_patterns", &networks.residential_patterns),
        ] {
            if patterns.iter().any(String::is_empty) {
                return Err(invalid(field, "an empty pattern matches nothing".to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_across_keys_section_in_the_default_file_matches_the_built_in_defaults() {
        let from_file = Model::default_model().across_keys;
        let built_in = AcrossKeysModel::default();
        assert_eq!(format!("{from_file:?}"), format!("{built_in:?}"));
        let without = DEFAULT_MODEL_TOML
            .split("[across_keys]")
            .next()
            .unwrap_or(DEFAULT_MODEL_TOML);
        assert_ne!(without, DEFAULT_MODEL_TOML, "the section was found");
        let parsed = Model::parse(without, "old.toml").expect("a model without the section is valid");
        assert_eq!(format!("{:?}", parsed.across_keys), format!("{built_in:?}"));
    }

    #[test]
    fn default_model_is_valid() {
        let model = Model::default_model();
        assert_eq!(model.geo.max_speed_kmh, 1000.0);
        assert_eq!(model.geo.min_distance_km, 500.0);
    }

    #[test]
    fn invalid_model_names_the_field() {
        let text = DEFAULT_MODEL_TOML.replace("spike_p_value = ", "spike_p_value = 2.0 #");
        let err = Model::parse(&text, "bad.toml").unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("rate.spike_p_value"), "{err}");
        let err = Model::parse("name = 1", "worse.toml").unwrap_err().to_string();
        assert!(err.contains("worse.toml"), "{err}");
    }

    #[test]
    fn every_number_rejects_nan_infinity_and_negatives() {
        for (line, field) in [
            ("max_speed_kmh = 1000.0", "geo.max_speed_kmh"),
            ("min_distance_km = 500.0", "geo.min_distance_km"),
            ("location_error_km = 50.0", "geo.location_error_km"),
            ("min_hourly_rate = 2.0", "rate.min_hourly_rate"),
        ] {
            let key = line.split(" = ").next().unwrap_or(line);
            for (value, problem) in [("nan", "finite"), ("inf", "finite"), ("-1.0", "negative")] {
                let text = DEFAULT_MODEL_TOML.replace(line, &format!("{key} = {value}"));
                assert_ne!(text, DEFAULT_MODEL_TOML, "{line} was found");
                let err = Model::parse(&text, "n.toml").unwrap_err().to_string();
                assert!(err.contains(field) && err.contains(problem), "{err}");
            }
        }
    }

    #[test]
    fn nested_unknown_fields_are_rejected() {
        let text = DEFAULT_MODEL_TOML.replace(
            r#"new_country = { min_age = "2d", min_events = 20 }"#,
            r#"new_country = { min_age = "2d", min_events = 20, bogus = 1 }"#,
        );
        assert_ne!(text, DEFAULT_MODEL_TOML, "the section was found");
        let err = Model::parse(&text, "u.toml").unwrap_err().to_string();
        assert!(err.contains("u.toml") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn a_network_listed_under_two_kinds_is_rejected() {
        let text = DEFAULT_MODEL_TOML.replace("hosting = [14061,", "hosting = [16509, 14061,");
        assert_ne!(text, DEFAULT_MODEL_TOML, "the hosting list was found");
        let err = Model::parse(&text, "kinds.toml").unwrap_err().to_string();
        assert!(err.contains("networks.") && err.contains("AS16509"), "{err}");
    }

    #[test]
    fn the_policy_defaults_to_shadow_and_reads_older_files_and_bad_entries() {
        let policy = Model::default_model().policy;
        assert_eq!(policy.effective_mode(), RevocationMode::Shadow);
        assert_eq!(policy.max_requests.count, 5);
        assert_eq!(policy.cooldown, Duration::from_secs(86_400));
        // An older file: `revoke` and no mode, caps or lists.
        let start = DEFAULT_MODEL_TOML.find("[policy]").unwrap();
        let end = start + DEFAULT_MODEL_TOML[start..].find("\n[networks]").unwrap();
        let older = |revoke: &str| {
            format!(
                "{}[policy]\nrevoke = {revoke}\nmin_severity = \"high\"\ndetectors = [\"impossible_travel\"]\n{}",
                &DEFAULT_MODEL_TOML[..start],
                &DEFAULT_MODEL_TOML[end..]
            )
        };
        let off = Model::parse(&older("false"), "old.toml").unwrap().policy;
        assert_eq!(off.effective_mode(), RevocationMode::Off, "revoke = false is off");
        let on = Model::parse(&older("true"), "old.toml").unwrap().policy;
        assert_eq!(on.effective_mode(), RevocationMode::Shadow);
        for (from, to, field) in [
            ("never_revoke = []", "never_revoke = [\"alice\"]", "policy.never_revoke"),
            (
                "max_requests = { count = 5, per = \"1h\" }",
                "max_requests = { count = 0, per = \"1h\" }",
                "policy.max_requests",
            ),
            (
                "min_agreeing_detectors = 2",
                "min_agreeing_detectors = 1",
                "policy.min_agreeing_detectors",
            ),
            ("mode = \"shadow\"", "mode = \"maybe\"", "mode"),
        ] {
            let text = DEFAULT_MODEL_TOML.replace(from, to);
            assert_ne!(text, DEFAULT_MODEL_TOML, "{from}");
            let err = Model::parse(&text, "p.toml").unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn the_policy_names_only_registered_detectors() {
        let text = DEFAULT_MODEL_TOML.replace(
            r#"detectors = ["impossible_travel", "concurrent_use"]"#,
            r#"detectors = ["impossible_travel", "teleport"]"#,
        );
        assert_ne!(text, DEFAULT_MODEL_TOML, "the policy line was found");
        let err = Model::parse(&text, "policy.toml").unwrap_err().to_string();
        assert!(err.contains("policy.toml") && err.contains("teleport"), "{err}");
        assert_eq!(
            Model::default_model().policy.detectors,
            [Detector::ImpossibleTravel, Detector::ConcurrentUse]
        );
    }
}
