//! Attack scenarios: what a thief does with a key, as calls interleaved
//! with the owner's ongoing traffic.
//!
//! Each scenario is written from the attacker's side only (where they call
//! from, how much, which endpoints, what the API answers); nothing here
//! knows how any detector works. Several thieves look like the owner (the
//! owner's client, endpoints, hours and rate), and attacks land on every
//! kind of key ([`HostRole`]), not only on ordinary ones. The benign hard cases, unusual traffic
//! that is not an attack, live beside it in [`super::benign`].

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::catalog::{
    ATTACKER_AGENTS, EndpointTemplate, enumeration_endpoints, export_endpoints, fill_path, key_id, sensitive_endpoints,
};
use super::profile::{GenEvent, HOUR_MS, KeyProfile, MINUTE_MS, ordinary_status, response_bytes};
use super::random::{GenRng, between, chance, index, pick, shuffle, uniform, unit};
use super::world::{NetworkKind, World};
use crate::detector::Detector;

/// The kinds of misuse the generator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    StolenKeyNewCountry,
    ImpossibleTravel,
    ScrapingBurst,
    LowAndSlowExfiltration,
    PrivilegeProbing,
    CredentialStuffing,
    DormantReactivated,
    KeyCopied,
    SameProviderOtherRegion,
    DomesticHosting,
    GlobalKeyNewCountry,
    NewKeyLeaked,
    VolumeExfiltration,
    KeySpray,
}

/// The kind of key an attack lands on. Thieves do not pick ordinary keys
/// only: CI keys, VPN-egress keys and keys used worldwide leak too, and they
/// are the ones whose own traffic already looks unusual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostRole {
    Ordinary,
    /// Used from many countries from day one.
    Global,
    /// Bursty scheduled runs from many cloud runner addresses.
    Ci,
    /// Egress alternating between VPN exits in nearby countries.
    Vpn,
    /// A developer who flies abroad for a few days during the run.
    Traveller,
    /// Around 100,000 calls a day.
    Heavy,
    /// First used inside the run, shortly before the attack.
    New,
}

impl HostRole {
    pub fn as_str(self) -> &'static str {
        match self {
            HostRole::Ordinary => "ordinary",
            HostRole::Global => "global",
            HostRole::Ci => "ci",
            HostRole::Vpn => "vpn",
            HostRole::Traveller => "traveller",
            HostRole::Heavy => "heavy",
            HostRole::New => "new",
        }
    }

    /// "on a ci key" / "on an ordinary key", the start of a label's notes.
    pub fn on_key(self) -> String {
        let article = if self == HostRole::Ordinary { "an" } else { "a" };
        format!("on {article} {} key", self.as_str())
    }
}

impl Scenario {
    pub const ALL: [Scenario; 14] = [
        Scenario::StolenKeyNewCountry,
        Scenario::ImpossibleTravel,
        Scenario::ScrapingBurst,
        Scenario::LowAndSlowExfiltration,
        Scenario::PrivilegeProbing,
        Scenario::CredentialStuffing,
        Scenario::DormantReactivated,
        Scenario::KeyCopied,
        Scenario::SameProviderOtherRegion,
        Scenario::DomesticHosting,
        Scenario::GlobalKeyNewCountry,
        Scenario::NewKeyLeaked,
        Scenario::VolumeExfiltration,
        Scenario::KeySpray,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::StolenKeyNewCountry => "stolen_key_new_country",
            Scenario::ImpossibleTravel => "impossible_travel",
            Scenario::ScrapingBurst => "scraping_burst",
            Scenario::LowAndSlowExfiltration => "low_and_slow_exfiltration",
            Scenario::PrivilegeProbing => "privilege_probing",
            Scenario::CredentialStuffing => "credential_stuffing",
            Scenario::DormantReactivated => "dormant_reactivated",
            Scenario::KeyCopied => "key_copied",
            Scenario::SameProviderOtherRegion => "same_provider_other_region",
            Scenario::DomesticHosting => "domestic_hosting",
            Scenario::GlobalKeyNewCountry => "global_key_new_country",
            Scenario::NewKeyLeaked => "new_key_leaked",
            Scenario::VolumeExfiltration => "volume_exfiltration",
            Scenario::KeySpray => "key_spray",
        }
    }

    /// The kinds of key the scenario may land on: those on which it stays
    /// what it claims to be (a "global key used from a new country" needs a
    /// global key; "the owner's cloud provider in another region" needs an
    /// owner in a cloud).
    pub fn host_roles(self) -> &'static [HostRole] {
        use HostRole::{Ci, Global, Heavy, New, Ordinary, Traveller, Vpn};
        match self {
            Scenario::StolenKeyNewCountry | Scenario::KeyCopied | Scenario::DomesticHosting => {
                &[Ordinary, Ci, Vpn, Traveller, Heavy, New]
            }
            Scenario::ImpossibleTravel => &[Ordinary, Ci, Traveller, Heavy, New],
            Scenario::ScrapingBurst => &[Ordinary, Global, Ci, Vpn, Heavy],
            Scenario::LowAndSlowExfiltration | Scenario::VolumeExfiltration => {
                &[Ordinary, Global, Vpn, Traveller, Heavy]
            }
            Scenario::PrivilegeProbing | Scenario::CredentialStuffing => {
                &[Ordinary, Global, Ci, Vpn, Traveller, Heavy, New]
            }
            Scenario::DormantReactivated => &[Ordinary, Global, Ci, Vpn],
            Scenario::SameProviderOtherRegion => &[Ordinary, Ci, Heavy, New],
            Scenario::GlobalKeyNewCountry => &[Global],
            Scenario::NewKeyLeaked => &[New],
            // The spray is not on the key: it tries key ids that mostly do
            // not exist.
            Scenario::KeySpray => &[Ordinary],
        }
    }

    /// The detectors whose alert counts as detecting this scenario: the
    /// signs of what the attacker does, not whatever else happens to fire on
    /// the key in the window (a new client alone says nothing about
    /// scraping). Written into every label, so the evaluation cannot credit
    /// an unrelated alert with a detection.
    pub fn detectors(self) -> &'static [Detector] {
        match self {
            // Calls from a far, never-used place while the owner goes on
            // calling from home (on a young key, a place no key of the
            // organisation uses).
            Scenario::StolenKeyNewCountry | Scenario::ImpossibleTravel | Scenario::KeyCopied => &[
                Detector::ImpossibleTravel,
                Detector::ConcurrentUse,
                Detector::NewCountry,
                Detector::NewAsn,
                Detector::NewRegion,
                Detector::UnfamiliarNetwork,
            ],
            // Many reads, far above the key's rate, over its own endpoints.
            Scenario::ScrapingBurst => &[
                Detector::RateSpike,
                Detector::RateSurge,
                Detector::EndpointMixShift,
                Detector::NewEndpoint,
            ],
            // A modest extra rate for hours, much of it on bulk exports.
            Scenario::LowAndSlowExfiltration => &[
                Detector::ResponseVolume,
                Detector::RateSurge,
                Detector::RateSpike,
                Detector::EndpointMixShift,
                Detector::NewEndpoint,
                Detector::SensitiveEndpoint,
            ],
            // Admin, IAM and secret endpoints, mostly refused.
            Scenario::PrivilegeProbing => &[
                Detector::SensitiveEndpoint,
                Detector::NewEndpoint,
                Detector::AuthFailureSpike,
                Detector::EndpointMixShift,
            ],
            // Fast enumeration answered mostly 401/403.
            Scenario::CredentialStuffing => &[
                Detector::AuthFailureSpike,
                Detector::RateSpike,
                Detector::RateSurge,
                Detector::NewEndpoint,
                Detector::EndpointMixShift,
            ],
            // A long-silent key used again, from somewhere it never was.
            Scenario::DormantReactivated => &[Detector::DormantKey, Detector::NewCountry, Detector::NewAsn],
            // The owner's own provider in a region the key never used, while
            // the owner goes on calling from home.
            Scenario::SameProviderOtherRegion => &[
                Detector::NewRegion,
                Detector::ImpossibleTravel,
                Detector::ConcurrentUse,
                Detector::NewCountry,
            ],
            // A hosting network at home the key never used.
            Scenario::DomesticHosting => &[Detector::NewAsn, Detector::NewRegion, Detector::UnfamiliarNetwork],
            // A country a worldwide key never used.
            Scenario::GlobalKeyNewCountry => &[
                Detector::NewCountry,
                Detector::NewAsn,
                Detector::ImpossibleTravel,
                Detector::ConcurrentUse,
            ],
            // No history of its own: only the organisation's places tell.
            Scenario::NewKeyLeaked => &[
                Detector::UnfamiliarNetwork,
                Detector::ImpossibleTravel,
                Detector::ConcurrentUse,
                Detector::NewCountry,
                Detector::NewAsn,
            ],
            // Usual calls from usual places with far larger responses.
            Scenario::VolumeExfiltration => &[Detector::ResponseVolume, Detector::RateSurge, Detector::RateSpike],
            // One source trying many key ids.
            Scenario::KeySpray => &[Detector::SourceSpray, Detector::AuthFailureSpike],
        }
    }
}

/// The calls of one incident. `events` may hold a few calls by the owner
/// too (impossible travel needs the owner at home minutes apart); `start`
/// and `end` span the attacker's calls only.
#[derive(Debug, Clone)]
pub struct Attack {
    pub events: Vec<GenEvent>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub notes: String,
    /// The key id the label names when it is not the attacked key's own (a
    /// spray names the first key id it tried).
    pub label_key: Option<String>,
}

/// Everything a scenario needs to know about the run and the key.
pub struct AttackContext<'a> {
    pub world: &'a World,
    pub profile: &'a KeyProfile,
    /// Networks the key has ever called from, so "new" really is new.
    pub own_networks: Vec<usize>,
    pub start_ms: i64,
    pub run_start_ms: i64,
    pub run_end_ms: i64,
    /// Per network of the world, how many keys of the organisation call
    /// from it.
    pub organisation_networks: &'a [u32],
}

impl AttackContext<'_> {
    fn home_network(&self) -> usize {
        self.own_networks[0]
    }

    fn home_countries_count(&self) -> usize {
        let mut countries = self.home_countries();
        countries.sort_unstable();
        countries.dedup();
        countries.len()
    }

    fn home_countries(&self) -> Vec<&'static str> {
        self.own_networks
            .iter()
            .map(|&network| self.world.city(network).country_code)
            .collect()
    }

    /// A network of one of `kinds` in a country the key never used, at least
    /// `min_distance_km` from its home.
    fn foreign_network(&self, rng: &mut GenRng, kinds: &[NetworkKind], min_distance_km: f64) -> usize {
        let home_countries = self.home_countries();
        let candidates: Vec<usize> = self
            .world
            .networks_of(kinds)
            .into_iter()
            .filter(|&network| {
                !home_countries.contains(&self.world.city(network).country_code)
                    && self
                        .own_networks
                        .iter()
                        .all(|&own| self.world.distance_km(own, network) >= min_distance_km)
            })
            .collect();
        if candidates.is_empty() {
            return self.farthest_network(kinds);
        }
        *pick(rng, &candidates)
    }

    fn farthest_network(&self, kinds: &[NetworkKind]) -> usize {
        let home = self.home_network();
        self.world
            .networks_of(kinds)
            .into_iter()
            .max_by(|&a, &b| {
                self.world
                    .distance_km(home, a)
                    .total_cmp(&self.world.distance_km(home, b))
            })
            .unwrap_or(home)
    }

    /// A network of one of `kinds` in the key's home country that the key
    /// never used; a foreign one when the country has none.
    fn domestic_network(&self, rng: &mut GenRng, kinds: &[NetworkKind]) -> usize {
        let home_country = self.world.city(self.home_network()).country_code;
        let candidates: Vec<usize> = self
            .world
            .networks_of(kinds)
            .into_iter()
            .filter(|&network| {
                self.world.city(network).country_code == home_country && !self.own_networks.contains(&network)
            })
            .collect();
        if candidates.is_empty() {
            return self.foreign_network(rng, kinds, 0.0);
        }
        *pick(rng, &candidates)
    }

    /// A network of one of `kinds` no key of the organisation uses, as far
    /// from every network it uses as the world allows and, where nothing is
    /// far (a large organisation calls from most cities), in the country
    /// fewest of its keys call from.
    fn far_from_organisation(&self, rng: &mut GenRng, kinds: &[NetworkKind]) -> usize {
        let mut candidates: Vec<(f64, u32, usize)> = self
            .world
            .networks_of(kinds)
            .into_iter()
            .filter(|&network| self.organisation_networks.get(network).copied().unwrap_or(0) == 0)
            .map(|network| {
                let nearest_km = self.organisation_distance_km(network);
                (nearest_km, self.organisation_keys_in_country(network), network)
            })
            .collect();
        if candidates.is_empty() {
            return self.foreign_network(rng, kinds, 3000.0);
        }
        // Distances within 100 km count as the same: a city apart, not a
        // continent.
        candidates.sort_by(|a, b| {
            (b.0 / 100.0)
                .floor()
                .total_cmp(&(a.0 / 100.0).floor())
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        candidates.truncate(3);
        pick(rng, &candidates).2
    }

    /// How many of the organisation's key-network uses lie in the country
    /// of `network`.
    fn organisation_keys_in_country(&self, network: usize) -> u32 {
        let country = self.world.city(network).country_code;
        (0..self.organisation_networks.len())
            .filter(|&other| self.world.city(other).country_code == country)
            .map(|other| self.organisation_networks[other])
            .sum()
    }

    /// Distance from `network` to the nearest network the organisation uses.
    fn organisation_distance_km(&self, network: usize) -> f64 {
        (0..self.organisation_networks.len())
            .filter(|&own| self.organisation_networks[own] > 0)
            .map(|own| self.world.distance_km(own, network))
            .fold(f64::INFINITY, f64::min)
    }

    /// Between `counts.0` and `counts.1` addresses on `network`.
    fn hosts(&self, rng: &mut GenRng, network: usize, counts: (u64, u64)) -> Vec<Ipv4Addr> {
        let count = between(rng, counts.0.max(1), counts.1.max(counts.0).max(1));
        (0..count)
            .map(|_| self.world.host(network, between(rng, 2, 250) as u8))
            .collect()
    }

    fn describe(&self, network: usize) -> String {
        let city = self.world.city(network);
        let provider = self.world.provider(network);
        format!(
            "AS{} {} in {}, {}",
            provider.asn, provider.organization, city.name, city.country_code
        )
    }

    /// The owner's own address at `ts_ms`, or one from the home network.
    fn owner_like_ip(&self, rng: &mut GenRng, ts_ms: i64) -> Ipv4Addr {
        self.profile
            .owner_ip(rng, ts_ms)
            .unwrap_or_else(|| self.world.host(self.home_network(), 10))
    }

    fn baseline_hourly(&self) -> f64 {
        self.profile.expected_hourly_calls(self.start_ms, self.run_start_ms)
    }
}

/// Sorted times: `count` calls spread uniformly over `duration_ms`.
fn spread(rng: &mut GenRng, start_ms: i64, duration_ms: i64, count: usize) -> Vec<i64> {
    let mut times: Vec<i64> = (0..count)
        .map(|_| start_ms + (unit(rng) * duration_ms as f64) as i64)
        .collect();
    times.sort_unstable();
    times
}

fn attacker_agent(rng: &mut GenRng, profile: &KeyProfile, own_agent_probability: f64) -> Arc<str> {
    if chance(rng, own_agent_probability) {
        return Arc::clone(&profile.user_agents[0]);
    }
    Arc::from(*pick(rng, ATTACKER_AGENTS))
}

/// How the numeric ids of a call's path are chosen.
#[derive(Debug, Clone, Copy)]
enum Ids {
    /// From the key's own pool of records.
    Pool(u64),
    /// Counting up, as an enumeration does.
    Sequential(u64),
}

fn call(
    rng: &mut GenRng,
    ts_ms: i64,
    ip: Ipv4Addr,
    template: &EndpointTemplate,
    status: u16,
    user_agent: &Arc<str>,
    ids: Ids,
) -> GenEvent {
    let endpoint = match ids {
        Ids::Pool(id_space) => fill_path(rng, &template.path, id_space, None),
        Ids::Sequential(next_id) => fill_path(rng, &template.path, 1000, Some(next_id)),
    };
    GenEvent {
        ts_ms,
        ip,
        method: template.method,
        endpoint,
        status,
        user_agent: Arc::clone(user_agent),
        bytes_out: response_bytes(rng, template, status),
        key_id: None,
    }
}

/// Calls that use the key's own endpoints from `ips`, at `times`.
fn own_endpoint_calls(
    context: &AttackContext<'_>,
    rng: &mut GenRng,
    times: &[i64],
    ips: &[Ipv4Addr],
    user_agent: &Arc<str>,
) -> Vec<GenEvent> {
    times
        .iter()
        .map(|&ts_ms| {
            let ip = ips[index(rng, ips.len())];
            context.profile.ordinary_call(rng, ts_ms, ip, Arc::clone(user_agent))
        })
        .collect()
}

/// Builds the attack of `scenario` starting at `context.start_ms`.
pub fn attack(context: &AttackContext<'_>, scenario: Scenario, rng: &mut GenRng) -> Attack {
    let t0 = context.start_ms;
    let profile = context.profile;
    let mut owner_events = Vec::new();
    let mut label_key = None;
    let (attacker_events, notes) = match scenario {
        Scenario::StolenKeyNewCountry => {
            let kinds: &[NetworkKind] = match index(rng, 20) {
                0..=9 => &[NetworkKind::Hosting],
                10..=16 => &[NetworkKind::Isp],
                _ => &[NetworkKind::Vpn],
            };
            let network = context.foreign_network(rng, kinds, 800.0);
            let ips = context.hosts(rng, network, (1, 2));
            let count = between(rng, 20, 150) as usize;
            let duration = between(rng, 60, 360) as i64 * MINUTE_MS;
            let agent = attacker_agent(rng, profile, 0.5);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            (events, format!("{count} calls from {}", context.describe(network)))
        }
        Scenario::ImpossibleTravel => {
            let network = context.foreign_network(
                rng,
                &[NetworkKind::Isp, NetworkKind::Hosting, NetworkKind::Mobile],
                5000.0,
            );
            let ips = context.hosts(rng, network, (1, 1));
            let count = between(rng, 5, 30) as usize;
            let duration = between(rng, 10, 40) as i64 * MINUTE_MS;
            let agent = attacker_agent(rng, profile, 0.7);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            // The owner at home just before and just after: the two places
            // are minutes apart, which no traveller manages.
            let last = times.last().copied().unwrap_or(t0);
            let mut owner_times = vec![
                t0 - between(rng, 2, 8) as i64 * MINUTE_MS,
                t0 - between(rng, 9, 15) as i64 * MINUTE_MS,
                last + between(rng, 1, 6) as i64 * MINUTE_MS,
            ];
            owner_times.sort_unstable();
            for ts_ms in owner_times {
                let ip = context.owner_like_ip(rng, ts_ms);
                let agent = profile.owner_agent(rng);
                owner_events.push(profile.ordinary_call(rng, ts_ms, ip, agent));
            }
            let distance = context.world.distance_km(context.home_network(), network);
            (
                events,
                format!(
                    "{count} calls from {}, {distance:.0} km from home, minutes after the owner",
                    context.describe(network)
                ),
            )
        }
        Scenario::ScrapingBurst => {
            let multiplier = uniform(rng, 10.0, 100.0);
            let duration_minutes = between(rng, 20, 120) as i64;
            let hourly = context.baseline_hourly().max(3.0) * multiplier;
            let count = ((hourly * duration_minutes as f64 / 60.0) as usize).clamp(60, 60_000);
            let (ips, source) = if chance(rng, 0.5) {
                let ip = context.owner_like_ip(rng, t0);
                (vec![ip], "the key's own network".to_string())
            } else {
                let network = context.domestic_network(rng, &[NetworkKind::Hosting, NetworkKind::Cloud]);
                (context.hosts(rng, network, (1, 3)), context.describe(network))
            };
            let agent = attacker_agent(rng, profile, 0.4);
            let readable: Vec<&EndpointTemplate> = profile
                .endpoints
                .iter()
                .filter(|endpoint| endpoint.method == "GET")
                .collect();
            let times = spread(rng, t0, duration_minutes * MINUTE_MS, count);
            let mut next_id = 10_000 + between(rng, 0, 50_000);
            let events = times
                .iter()
                .map(|&ts_ms| {
                    let ip = ips[index(rng, ips.len())];
                    if readable.is_empty() {
                        return profile.ordinary_call(rng, ts_ms, ip, Arc::clone(&agent));
                    }
                    let template = readable[index(rng, readable.len())];
                    next_id += 1;
                    let status = ordinary_status(rng, template.method, 0.02);
                    call(rng, ts_ms, ip, template, status, &agent, Ids::Sequential(next_id))
                })
                .collect();
            (
                events,
                format!("{count} calls in {duration_minutes} min (about {multiplier:.0}x) from {source}"),
            )
        }
        Scenario::LowAndSlowExfiltration => {
            let duration = between(rng, 3, 8) as i64 * HOUR_MS;
            let extra_rate = context.baseline_hourly().max(2.0) * uniform(rng, 0.5, 2.0);
            let count = ((extra_rate * duration as f64 / HOUR_MS as f64) as usize).clamp(20, 20_000);
            let (ips, source) = if chance(rng, 0.5) {
                (
                    vec![context.owner_like_ip(rng, t0)],
                    "the key's own network".to_string(),
                )
            } else {
                let network = context.domestic_network(rng, &[NetworkKind::Hosting, NetworkKind::Vpn]);
                (context.hosts(rng, network, (1, 1)), context.describe(network))
            };
            let agent = attacker_agent(rng, profile, 0.6);
            let exports = export_endpoints();
            let times = spread(rng, t0, duration, count);
            let events = times
                .iter()
                .map(|&ts_ms| {
                    let ip = ips[index(rng, ips.len())];
                    if chance(rng, 0.4) {
                        let template = pick(rng, &exports);
                        let status = ordinary_status(rng, template.method, 0.01);
                        call(rng, ts_ms, ip, template, status, &agent, Ids::Pool(profile.id_space))
                    } else {
                        profile.ordinary_call(rng, ts_ms, ip, Arc::clone(&agent))
                    }
                })
                .collect();
            (
                events,
                format!(
                    "{count} extra calls over {} h with bulk export endpoints from {source}",
                    duration / HOUR_MS
                ),
            )
        }
        Scenario::PrivilegeProbing => {
            let count = between(rng, 15, 80) as usize;
            let duration = between(rng, 10, 60) as i64 * MINUTE_MS;
            let (ips, source) = if chance(rng, 0.5) {
                (
                    vec![context.owner_like_ip(rng, t0)],
                    "the key's own network".to_string(),
                )
            } else {
                let network = context.foreign_network(rng, &[NetworkKind::Hosting], 0.0);
                (context.hosts(rng, network, (1, 1)), context.describe(network))
            };
            let agent = attacker_agent(rng, profile, 0.3);
            let mut sensitive = sensitive_endpoints();
            shuffle(rng, &mut sensitive);
            sensitive.truncate(between(rng, 4, 10) as usize);
            let times = spread(rng, t0, duration, count);
            let events = times
                .iter()
                .map(|&ts_ms| {
                    let ip = ips[index(rng, ips.len())];
                    if chance(rng, 0.15) {
                        return profile.ordinary_call(rng, ts_ms, ip, Arc::clone(&agent));
                    }
                    let template = pick(rng, &sensitive);
                    let status = match index(rng, 20) {
                        0..=15 => 403,
                        16 => 401,
                        17 => 404,
                        _ => 200,
                    };
                    call(rng, ts_ms, ip, template, status, &agent, Ids::Pool(50))
                })
                .collect();
            (
                events,
                format!(
                    "{count} calls to {} admin/IAM/secret endpoints from {source}",
                    sensitive.len()
                ),
            )
        }
        Scenario::CredentialStuffing => {
            let count = between(rng, 100, 600) as usize;
            let duration = between(rng, 5, 30) as i64 * MINUTE_MS;
            let network = context.foreign_network(rng, &[NetworkKind::Hosting, NetworkKind::Vpn], 0.0);
            let ips = context.hosts(rng, network, (3, 10));
            let agent = attacker_agent(rng, profile, 0.0);
            let targets = enumeration_endpoints();
            let times = spread(rng, t0, duration, count);
            let mut next_id = 1_000 + between(rng, 0, 9_000);
            let events = times
                .iter()
                .map(|&ts_ms| {
                    let ip = ips[index(rng, ips.len())];
                    let template = pick(rng, &targets);
                    next_id += 1 + between(rng, 0, 2);
                    let status = match index(rng, 20) {
                        0..=10 => 401,
                        11..=16 => 403,
                        17..=18 => 200,
                        _ => 404,
                    };
                    call(rng, ts_ms, ip, template, status, &agent, Ids::Sequential(next_id))
                })
                .collect();
            (
                events,
                format!(
                    "{count} enumeration calls, mostly 401/403, from {} addresses of {}",
                    ips.len(),
                    context.describe(network)
                ),
            )
        }
        Scenario::DormantReactivated => {
            let network =
                context.foreign_network(rng, &[NetworkKind::Hosting, NetworkKind::Vpn, NetworkKind::Isp], 0.0);
            let ips = context.hosts(rng, network, (1, 2));
            let count = between(rng, 30, 300) as usize;
            let duration = between(rng, 60, 240) as i64 * MINUTE_MS;
            let agent = attacker_agent(rng, profile, 0.5);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            let last_owner_call = profile
                .active_periods
                .iter()
                .map(|&(_, until)| until)
                .max()
                .unwrap_or(t0);
            (
                events,
                format!(
                    "{count} calls from {} after {} days without use",
                    context.describe(network),
                    (t0 - last_owner_call) / super::profile::DAY_MS
                ),
            )
        }
        Scenario::KeyCopied => {
            let network = context.foreign_network(rng, &[NetworkKind::Cloud, NetworkKind::Hosting], 3000.0);
            let ips = context.hosts(rng, network, (1, 3));
            let duration = between(rng, 3, 10) as i64 * HOUR_MS;
            let rate = context.baseline_hourly().max(2.0) * uniform(rng, 0.5, 1.5);
            let count = ((rate * duration as f64 / HOUR_MS as f64) as usize).clamp(10, 50_000);
            let agent = attacker_agent(rng, profile, 0.8);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            (
                events,
                format!(
                    "{count} calls over {} h from {} while the owner keeps calling from home",
                    duration / HOUR_MS,
                    context.describe(network)
                ),
            )
        }
        Scenario::SameProviderOtherRegion => {
            let home = context.home_network();
            let regions: Vec<usize> = context
                .world
                .same_provider(home)
                .into_iter()
                .filter(|network| !context.own_networks.contains(network))
                .collect();
            let network = if regions.is_empty() {
                context.domestic_network(rng, &[NetworkKind::Cloud])
            } else {
                *pick(rng, &regions)
            };
            let ips = context.hosts(rng, network, (1, 3));
            let duration = between(rng, 2, 6) as i64 * HOUR_MS;
            let rate = context.baseline_hourly().max(2.0) * uniform(rng, 0.5, 1.2);
            let count = ((rate * duration as f64 / HOUR_MS as f64) as usize).clamp(10, 50_000);
            let agent = Arc::clone(&profile.user_agents[0]);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            let distance = context.world.distance_km(home, network);
            (
                events,
                format!(
                    "{count} calls over {} h from {}, {distance:.0} km from the owner's {} region, \
                     with the owner's client, endpoints and rate while the owner keeps calling",
                    duration / HOUR_MS,
                    context.describe(network),
                    context.world.city(home).name
                ),
            )
        }
        Scenario::DomesticHosting => {
            let network = context.domestic_network(rng, &[NetworkKind::Hosting]);
            let ips = context.hosts(rng, network, (1, 2));
            let duration = between(rng, 1, 5) as i64 * HOUR_MS;
            let rate = context.baseline_hourly().max(2.0) * uniform(rng, 0.3, 1.0);
            let count = ((rate * duration as f64 / HOUR_MS as f64) as usize).clamp(10, 20_000);
            let agent = Arc::clone(&profile.user_agents[0]);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            (
                events,
                format!(
                    "{count} calls over {} h from {} in the owner's country, with the owner's client and endpoints",
                    duration / HOUR_MS,
                    context.describe(network)
                ),
            )
        }
        Scenario::GlobalKeyNewCountry => {
            let network = context.foreign_network(
                rng,
                &[
                    NetworkKind::Hosting,
                    NetworkKind::Isp,
                    NetworkKind::Vpn,
                    NetworkKind::Mobile,
                ],
                0.0,
            );
            let ips = context.hosts(rng, network, (1, 2));
            let count = between(rng, 20, 200) as usize;
            let duration = between(rng, 60, 240) as i64 * MINUTE_MS;
            let agent = attacker_agent(rng, profile, 0.6);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            (
                events,
                format!(
                    "{count} calls from {}, a country none of the key's {} countries",
                    context.describe(network),
                    context.home_countries_count()
                ),
            )
        }
        Scenario::NewKeyLeaked => {
            let network =
                context.far_from_organisation(rng, &[NetworkKind::Hosting, NetworkKind::Vpn, NetworkKind::Isp]);
            let ips = context.hosts(rng, network, (1, 2));
            let count = between(rng, 20, 300) as usize;
            let duration = between(rng, 60, 240) as i64 * MINUTE_MS;
            let agent = attacker_agent(rng, profile, 0.4);
            let times = spread(rng, t0, duration, count);
            let events = own_endpoint_calls(context, rng, &times, &ips, &agent);
            let first_use = profile.active_periods.iter().map(|&(from, _)| from).min().unwrap_or(t0);
            (
                events,
                format!(
                    "key first used {:.1} h before; {count} calls from {}, a network no key of the organisation \
                     uses, {:.0} km from the nearest one it uses ({} key-network uses in that country)",
                    (t0 - first_use) as f64 / HOUR_MS as f64,
                    context.describe(network),
                    context.organisation_distance_km(network),
                    context.organisation_keys_in_country(network)
                ),
            )
        }
        Scenario::VolumeExfiltration => {
            let duration = between(rng, 2, 6) as i64 * HOUR_MS;
            let extra = uniform(rng, 0.8, 1.3);
            let rate = context.baseline_hourly().max(4.0) * extra;
            let count = ((rate * duration as f64 / HOUR_MS as f64) as usize).clamp(20, 50_000);
            let size_factor = uniform(rng, 40.0, 120.0);
            let agent = Arc::clone(&profile.user_agents[0]);
            // Reads of the key's own endpoints, asking for far bigger pages.
            let readable: Vec<&EndpointTemplate> = profile
                .endpoints
                .iter()
                .filter(|endpoint| endpoint.method == "GET" && endpoint.typical_bytes > 0)
                .collect();
            let times = spread(rng, t0, duration, count);
            let events = times
                .iter()
                .map(|&ts_ms| {
                    let ip = context.owner_like_ip(rng, ts_ms);
                    // The owner's own mix of reads.
                    let owner_choice = &profile.endpoints[profile.owner_endpoint(rng, ts_ms)];
                    let template = if owner_choice.method == "GET" || readable.is_empty() {
                        owner_choice
                    } else {
                        readable[index(rng, readable.len())]
                    };
                    let mut event = call(rng, ts_ms, ip, template, 200, &agent, Ids::Pool(profile.id_space));
                    event.status = 200;
                    event.bytes_out = ((event.bytes_out.max(500) as f64) * size_factor) as u64;
                    event
                })
                .collect();
            (
                events,
                format!(
                    "{count} extra calls over {} h (about {:.1}x the key's calls) from the owner's places with \
                     the owner's client and endpoints, responses about {size_factor:.0}x their usual size",
                    duration / HOUR_MS,
                    1.0 + extra
                ),
            )
        }
        Scenario::KeySpray => {
            let network = context.foreign_network(rng, &[NetworkKind::Hosting, NetworkKind::Vpn], 0.0);
            let ip = context.world.host(network, between(rng, 2, 250) as u8);
            let key_count = between(rng, 100, 300) as usize;
            let mut sprayed: Vec<Arc<str>> = Vec::with_capacity(key_count);
            while sprayed.len() < key_count {
                let candidate = key_id(rng);
                if candidate != profile.key_id && !sprayed.iter().any(|known| **known == *candidate) {
                    sprayed.push(Arc::from(candidate));
                }
            }
            let calls_per_key: Vec<usize> = (0..key_count).map(|_| between(rng, 1, 4) as usize).collect();
            let count: usize = calls_per_key.iter().sum();
            let duration = between(rng, 5, 30) as i64 * MINUTE_MS;
            let agent = attacker_agent(rng, profile, 0.0);
            // One cheap read is enough to tell whether a key id works.
            let probe = profile
                .endpoints
                .iter()
                .find(|endpoint| endpoint.method == "GET")
                .cloned()
                .unwrap_or_else(|| enumeration_endpoints()[0].clone());
            let times = spread(rng, t0, duration, count);
            let mut next_time = times.iter();
            let mut events = Vec::with_capacity(count);
            for (sprayed_key, &calls) in sprayed.iter().zip(&calls_per_key) {
                for _ in 0..calls {
                    let Some(&ts_ms) = next_time.next() else {
                        break;
                    };
                    let status = match index(rng, 20) {
                        0..=17 => 401,
                        18 => 403,
                        _ => 429,
                    };
                    let mut event = call(rng, ts_ms, ip, &probe, status, &agent, Ids::Pool(profile.id_space));
                    event.key_id = Some(Arc::clone(sprayed_key));
                    events.push(event);
                }
            }
            label_key = sprayed.first().map(|first| first.to_string());
            (
                events,
                format!(
                    "{key_count} key ids sprayed ({count} calls, mostly 401) in {} min from {ip} of {}; \
                     the label names the first",
                    duration / MINUTE_MS,
                    context.describe(network)
                ),
            )
        }
    };
    let attacker_events: Vec<GenEvent> = attacker_events
        .into_iter()
        .filter(|event| event.ts_ms < context.run_end_ms)
        .collect();
    let start_ms = attacker_events.first().map_or(t0, |event| event.ts_ms);
    let end_ms = attacker_events.last().map_or(t0, |event| event.ts_ms);
    let mut events = attacker_events;
    events.extend(
        owner_events
            .into_iter()
            .filter(|event| event.ts_ms < context.run_end_ms),
    );
    events.sort_by_key(|event| event.ts_ms);
    Attack {
        events,
        start_ms,
        end_ms,
        notes,
        label_key,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};
    use std::sync::OnceLock;

    use super::*;
    use crate::event::parse_ts;
    use crate::generate::GenerateConfig;
    use crate::generate::plan::{Plan, organisation_networks, own_networks, plan};
    use crate::generate::random::stream;

    const RUN_START: &str = "2026-01-05T00:00:00Z";

    fn planned(keys: usize, seed: u64) -> Plan {
        plan(&GenerateConfig {
            keys,
            days: 10,
            seed,
            start_ms: parse_ts(RUN_START).unwrap(),
            fingerprinter: crate::event::Fingerprinter::unkeyed(),
            abandoned_keys: 0,
        })
    }

    fn network_of(world: &World, ip: Ipv4Addr) -> usize {
        world
            .networks
            .iter()
            .position(|network| network.block.contains(&ip))
            .expect("every generated address is in the world")
    }

    /// One incident of a scenario: its plan, the attacked key's position
    /// and the label's start and end.
    struct Incident<'a> {
        plan: &'a Plan,
        position: usize,
        start_ms: i64,
        end_ms: i64,
        notes: &'a str,
    }

    impl Incident<'_> {
        fn profile(&self) -> &KeyProfile {
            &self.plan.profiles[self.position]
        }

        /// The injected calls inside the label's window that come from
        /// networks the key never used, or carry another key id: the
        /// attacker's.
        fn attacker_calls(&self) -> Vec<&GenEvent> {
            let own = own_networks(self.profile());
            self.plan.injected[self.position]
                .iter()
                .filter(|event| (self.start_ms..=self.end_ms).contains(&event.ts_ms))
                .filter(|event| event.key_id.is_some() || !own.contains(&network_of(&self.plan.world, event.ip)))
                .collect()
        }
    }

    /// Every incident of `scenario` in 1,000-key runs of seeds 1-3.
    fn for_each_incident(plans: &[Plan], scenario: Scenario, mut check: impl FnMut(&Incident<'_>)) -> usize {
        let mut seen = 0;
        for plan in plans {
            for label in plan.labels.iter().filter(|label| label.scenario == scenario.as_str()) {
                let position = plan
                    .profiles
                    .iter()
                    .position(|profile| profile.key_id == label.key)
                    .or_else(|| {
                        plan.injected.iter().position(|events| {
                            events
                                .iter()
                                .any(|event| event.key_id.as_deref() == Some(label.key.as_str()))
                        })
                    })
                    .expect("a label names a planned or sprayed key");
                check(&Incident {
                    plan,
                    position,
                    start_ms: parse_ts(&label.start).unwrap(),
                    end_ms: parse_ts(&label.end).unwrap(),
                    notes: &label.notes,
                });
                seen += 1;
            }
        }
        assert!(seen >= 3, "{scenario:?} is injected in every run");
        seen
    }

    /// 1,000-key plans of seeds 1-3, planned once for all the checks.
    fn three_seeds() -> &'static [Plan] {
        static PLANS: OnceLock<Vec<Plan>> = OnceLock::new();
        PLANS.get_or_init(|| (1..=3).map(|seed| planned(1000, seed)).collect())
    }

    #[test]
    fn attacks_land_on_every_key_role_and_only_where_their_scenario_allows() {
        let plans = three_seeds();
        let mut roles_seen = BTreeSet::new();
        for scenario in Scenario::ALL {
            for_each_incident(plans, scenario, |incident| {
                if scenario == Scenario::KeySpray {
                    return;
                }
                let role = scenario
                    .host_roles()
                    .iter()
                    .find(|role| incident.notes.starts_with(&format!("{}: ", role.on_key())))
                    .unwrap_or_else(|| panic!("{scenario:?} notes name an allowed role: {}", incident.notes));
                roles_seen.insert(*role);
            });
        }
        let every_role = [
            HostRole::Ordinary,
            HostRole::Global,
            HostRole::Ci,
            HostRole::Vpn,
            HostRole::Traveller,
            HostRole::Heavy,
            HostRole::New,
        ];
        assert_eq!(roles_seen, every_role.into_iter().collect());
    }

    #[test]
    fn new_country_attacks_never_come_from_a_country_the_key_uses() {
        let plans = three_seeds();
        for scenario in [
            Scenario::StolenKeyNewCountry,
            Scenario::ImpossibleTravel,
            Scenario::KeyCopied,
            Scenario::GlobalKeyNewCountry,
        ] {
            for_each_incident(plans, scenario, |incident| {
                let world = &incident.plan.world;
                let own_countries: HashSet<&str> = own_networks(incident.profile())
                    .into_iter()
                    .map(|network| world.city(network).country_code)
                    .collect();
                let calls = incident.attacker_calls();
                assert!(!calls.is_empty(), "{scenario:?}: {}", incident.notes);
                for call in calls {
                    let country = world.city(network_of(world, call.ip)).country_code;
                    assert!(
                        !own_countries.contains(country),
                        "{scenario:?} from {country}: {}",
                        incident.notes
                    );
                }
            });
        }
    }

    #[test]
    fn same_provider_other_region_uses_the_owners_provider_client_and_endpoints_elsewhere() {
        let plans = three_seeds();
        for_each_incident(plans, Scenario::SameProviderOtherRegion, |incident| {
            let world = &incident.plan.world;
            let profile = incident.profile();
            let own = own_networks(profile);
            let home_asn = world.provider(own[0]).asn;
            let calls = incident.attacker_calls();
            assert!(calls.len() >= 10, "{}", incident.notes);
            for call in &calls {
                let network = network_of(world, call.ip);
                assert_eq!(world.provider(network).asn, home_asn, "{}", incident.notes);
                assert!(!own.contains(&network));
                assert_eq!(call.user_agent, profile.user_agents[0]);
            }
            // Its owner keeps calling from home meanwhile.
            assert!(profile.is_active(incident.start_ms));
        });
    }

    #[test]
    fn domestic_hosting_comes_from_a_hosting_network_in_the_owners_country_with_its_client() {
        let plans = three_seeds();
        for_each_incident(plans, Scenario::DomesticHosting, |incident| {
            let world = &incident.plan.world;
            let profile = incident.profile();
            let home_country = world.city(own_networks(profile)[0]).country_code;
            let calls = incident.attacker_calls();
            assert!(!calls.is_empty(), "{}", incident.notes);
            for call in calls {
                let network = network_of(world, call.ip);
                assert_eq!(world.kind(network), NetworkKind::Hosting, "{}", incident.notes);
                assert_eq!(world.city(network).country_code, home_country, "{}", incident.notes);
                assert_eq!(call.user_agent, profile.user_agents[0]);
            }
        });
    }

    #[test]
    fn global_key_new_country_lands_on_keys_used_from_many_countries() {
        let plans = three_seeds();
        for_each_incident(plans, Scenario::GlobalKeyNewCountry, |incident| {
            let world = &incident.plan.world;
            let countries: HashSet<&str> = own_networks(incident.profile())
                .into_iter()
                .map(|network| world.city(network).country_code)
                .collect();
            assert!(countries.len() >= 8, "{}", incident.notes);
        });
    }

    #[test]
    fn leaked_new_key_is_first_used_hours_before_and_attacked_from_outside_the_organisation() {
        let plans = three_seeds();
        for_each_incident(plans, Scenario::NewKeyLeaked, |incident| {
            let profile = incident.profile();
            let first_use = profile.active_periods.iter().map(|&(from, _)| from).min().unwrap();
            let lead = incident.start_ms - first_use;
            assert!(
                (HOUR_MS..=12 * HOUR_MS).contains(&lead),
                "first used {} h before: {}",
                lead / HOUR_MS,
                incident.notes
            );
            let organisation = organisation_networks(&incident.plan.world, &incident.plan.profiles);
            let calls = incident.attacker_calls();
            assert!(!calls.is_empty());
            for call in calls {
                assert!(
                    organisation[network_of(&incident.plan.world, call.ip)] == 0,
                    "{}",
                    incident.notes
                );
            }
        });
    }

    #[test]
    fn volume_exfiltration_returns_twenty_times_the_keys_median_bytes_from_its_own_places_and_client() {
        let plans = three_seeds();
        for_each_incident(plans, Scenario::VolumeExfiltration, |incident| {
            let profile = incident.profile();
            let run_start = parse_ts(RUN_START).unwrap();
            let mut rng = stream(9, 9, incident.position as u64);
            let day_before = incident.start_ms - 24 * HOUR_MS;
            let mut owner_bytes: Vec<u64> = profile
                .owner_calls(&mut rng, day_before, incident.start_ms, run_start)
                .iter()
                .map(|event| event.bytes_out)
                .collect();
            owner_bytes.sort_unstable();
            let median = owner_bytes[owner_bytes.len() / 2].max(1);
            let attack = &incident.plan.injected[incident.position];
            assert!(attack.len() >= 20);
            let mean = attack.iter().map(|event| event.bytes_out).sum::<u64>() / attack.len() as u64;
            assert!(
                mean >= 20 * median,
                "mean {mean} vs median {median}: {}",
                incident.notes
            );
            let own = own_networks(profile);
            for event in attack {
                assert!(
                    own.contains(&network_of(&incident.plan.world, event.ip)),
                    "{}",
                    incident.notes
                );
                assert_eq!(event.user_agent, profile.user_agents[0]);
                assert!(profile.endpoints.iter().any(|endpoint| endpoint.method == event.method));
                assert_eq!(event.status, 200);
            }
        });
    }

    #[test]
    fn key_spray_tries_at_least_a_hundred_key_ids_from_one_address_mostly_refused() {
        let plans = three_seeds();
        for_each_incident(plans, Scenario::KeySpray, |incident| {
            let calls = incident.attacker_calls();
            let keys: HashSet<&str> = calls.iter().filter_map(|event| event.key_id.as_deref()).collect();
            assert!(keys.len() >= 100, "{} keys: {}", keys.len(), incident.notes);
            let sources: HashSet<Ipv4Addr> = calls.iter().map(|event| event.ip).collect();
            assert_eq!(sources.len(), 1);
            let refused = calls.iter().filter(|event| event.status == 401).count();
            assert!(refused * 10 >= calls.len() * 8, "{refused} of {} refused", calls.len());
            assert!(calls.len() <= 4 * keys.len(), "a few calls each");
            let organisation_keys: HashSet<&str> = incident
                .plan
                .profiles
                .iter()
                .map(|profile| profile.key_id.as_str())
                .collect();
            assert!(keys.iter().all(|key| !organisation_keys.contains(key)), "guessed ids");
        });
    }
}
