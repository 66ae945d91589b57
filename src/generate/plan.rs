//! Plans a run before any event is written: gives every key an id, a role
//! (ordinary, heavy, benign hard case or incident) and a behaviour profile,
//! and builds each incident's attacker calls ([`super::attacks`]) and each
//! hard case's profile ([`super::benign`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::GenerateConfig;
use super::attacks::{Attack, AttackContext, HostRole, Scenario, attack};
use super::benign::HardCase;
use super::catalog::{EndpointTemplate, Service, client_agent, key_id, services};
use super::profile::{
    DAY_MS, EndpointPhase, GenEvent, HOUR_MS, KeyProfile, LocationPhase, MINUTE_MS, Site, SitePicking, Volume,
    business_hour_shape,
};
use super::random::{GenRng, WeightedTable, between, chance, index, log_normal, pick, shuffle, stream, uniform, unit};
use super::world::{NetworkKind, World};
use crate::eval::{BenignCase, Label};
use crate::event::{Fingerprinter, format_ts};

/// Purposes that separate the random streams of one seed.
const PURPOSE_ROLES: u64 = 1;
const PURPOSE_PROFILE: u64 = 2;
const PURPOSE_ATTACK: u64 = 3;
pub const PURPOSE_TRAFFIC: u64 = 4;
const PURPOSE_ABANDONED: u64 = 5;
pub const PURPOSE_OWNERS: u64 = 6;

/// Incidents start this many days into the run, so every key has a baseline.
pub(super) const FIRST_INCIDENT_DAY: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ordinary,
    Heavy,
    Case(HardCase),
    /// The key that takes over from a rotated one; planned with it.
    Successor,
    Incident(Scenario, HostRole),
}

/// Everything decided before the first event.
pub struct Plan {
    pub world: World,
    pub profiles: Vec<KeyProfile>,
    /// Per key, the injected calls (attacker's and the few owner calls a
    /// scenario needs), sorted by time.
    pub injected: Vec<Vec<GenEvent>>,
    /// Per key, the incident windows [start, end] in epoch ms.
    pub incident_windows: Vec<Vec<(i64, i64)>>,
    pub labels: Vec<Label>,
    pub benign_cases: Vec<BenignCase>,
}

/// How many keys play each role at this size: incidents per scenario,
/// occurrences per benign hard case (at least 4 per 1,000 keys, so three
/// seeds give a dozen of each), heavy keys.
pub fn role_counts(keys: usize) -> (usize, usize, usize) {
    let per_scenario = keys.div_ceil(200).max(1);
    let per_case = keys.div_ceil(250).max(1);
    let heavy = keys / 400;
    (per_scenario, per_case, heavy)
}

/// Fewest keys a run can have: every role once (a key rotation takes two
/// keys), and as many ordinary keys.
pub fn minimum_keys() -> usize {
    2 * (Scenario::ALL.len() + HardCase::ALL.len() + 1)
}

/// Relative popularity of a country as the home of an API client.
fn country_popularity(country_code: &str) -> f64 {
    match country_code {
        "US" => 6.0,
        "GB" | "DE" => 2.5,
        "IN" | "FR" | "NL" | "IE" | "CA" | "JP" | "SG" | "AU" | "BR" => 1.5,
        "RU" | "CN" | "NG" | "UA" | "EG" | "KE" => 0.4,
        _ => 0.8,
    }
}

pub(super) fn pick_popular(world: &World, rng: &mut GenRng, candidates: &[usize]) -> usize {
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&network| country_popularity(world.city(network).country_code))
        .collect();
    candidates[WeightedTable::new(&weights).sample(rng)]
}

/// A site on `network` with between `ip_counts.0` and `ip_counts.1` addresses.
pub(super) fn site(world: &World, rng: &mut GenRng, network: usize, ip_counts: (usize, usize), weight: f64) -> Site {
    let ip_count = between(rng, ip_counts.0 as u64, ip_counts.1.max(ip_counts.0) as u64) as usize;
    let mut hosts: Vec<u8> = (2..=250).collect();
    shuffle(rng, &mut hosts);
    let ips = hosts
        .iter()
        .take(ip_count.max(1))
        .map(|&host| world.host(network, host))
        .collect();
    Site { network, ips, weight }
}

/// A network of the same provider as `network` in a country not yet used.
pub(super) fn other_region(world: &World, rng: &mut GenRng, network: usize, used_countries: &[&str]) -> Option<usize> {
    let candidates: Vec<usize> = world
        .same_provider(network)
        .into_iter()
        .filter(|&other| !used_countries.contains(&world.city(other).country_code))
        .collect();
    (!candidates.is_empty()).then(|| pick_popular(world, rng, &candidates))
}

/// How a key is deployed: it decides its networks, rhythm and volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Archetype {
    /// A backend service in a cloud region.
    Service,
    /// An internal tool or integration run from an office line.
    Office,
    /// A developer's personal key, from home.
    Developer,
}

/// Builds key profiles; [`super::benign`] adds the hard cases' builder.
pub(super) struct Builder<'a> {
    pub(super) world: &'a World,
    pub(super) services: &'a [Service],
    pub(super) config: &'a GenerateConfig,
}

impl Builder<'_> {
    pub(super) fn run_start(&self) -> i64 {
        self.config.start_ms
    }

    pub(super) fn run_end(&self) -> i64 {
        self.config.start_ms + i64::from(self.config.days) * DAY_MS
    }

    /// A time on day `day` of the run at a local hour of the key.
    pub(super) fn local_time(&self, profile: &KeyProfile, day: u64, local_hour: f64) -> i64 {
        let local_midnight = self.run_start() + day as i64 * DAY_MS;
        local_midnight + (local_hour * HOUR_MS as f64) as i64 - i64::from(profile.utc_offset_minutes) * MINUTE_MS
    }

    pub(super) fn sites_for(&self, rng: &mut GenRng, archetype: Archetype) -> Vec<Site> {
        let world = self.world;
        match archetype {
            Archetype::Service => {
                let clouds = world.networks_of(&[NetworkKind::Cloud]);
                let primary = pick_popular(world, rng, &clouds);
                let mut sites = vec![site(world, rng, primary, (2, 6), 1.0)];
                let extra_regions = match index(rng, 20) {
                    0..=4 => 1,
                    5 => 2,
                    _ => 0,
                };
                for _ in 0..extra_regions {
                    let used: Vec<&str> = sites.iter().map(|site| world.city(site.network).country_code).collect();
                    if let Some(region) = other_region(world, rng, primary, &used) {
                        let weight = uniform(rng, 0.15, 0.5);
                        sites.push(site(world, rng, region, (2, 4), weight));
                    }
                }
                sites
            }
            Archetype::Office => {
                let isps = world.networks_of(&[NetworkKind::Isp]);
                let primary = pick_popular(world, rng, &isps);
                let mut sites = vec![site(world, rng, primary, (1, 2), 1.0)];
                let primary_city = world.networks[primary].city;
                if chance(rng, 0.2) {
                    // A backup line from another ISP in the same city.
                    let backups: Vec<usize> = isps
                        .iter()
                        .copied()
                        .filter(|&other| world.networks[other].city == primary_city && other != primary)
                        .collect();
                    if !backups.is_empty() {
                        let backup = *pick(rng, &backups);
                        sites.push(site(world, rng, backup, (1, 1), 0.1));
                    }
                }
                if chance(rng, 0.15) {
                    // A second office abroad.
                    let home_country = world.city(primary).country_code;
                    let abroad: Vec<usize> = isps
                        .iter()
                        .copied()
                        .filter(|&other| world.city(other).country_code != home_country)
                        .collect();
                    let office = pick_popular(world, rng, &abroad);
                    let weight = uniform(rng, 0.2, 0.6);
                    sites.push(site(world, rng, office, (1, 2), weight));
                }
                sites
            }
            Archetype::Developer => {
                let isps = world.networks_of(&[NetworkKind::Isp]);
                let primary = pick_popular(world, rng, &isps);
                let mut sites = vec![site(world, rng, primary, (1, 3), 1.0)];
                let primary_city = world.networks[primary].city;
                let mobiles: Vec<usize> = world
                    .networks_of(&[NetworkKind::Mobile])
                    .into_iter()
                    .filter(|&other| world.networks[other].city == primary_city)
                    .collect();
                if !mobiles.is_empty() && chance(rng, 0.3) {
                    let mobile = *pick(rng, &mobiles);
                    sites.push(site(world, rng, mobile, (2, 2), 0.1));
                }
                sites
            }
        }
    }

    fn seasonal_volume(&self, rng: &mut GenRng, archetype: Archetype) -> Volume {
        let (weekday_calls, strength, weekend_factor) = match archetype {
            Archetype::Service => (
                log_normal(rng, 90.0, 1.5),
                uniform(rng, 0.2, 0.6),
                uniform(rng, 0.55, 0.9),
            ),
            Archetype::Office => (
                log_normal(rng, 60.0, 1.2),
                uniform(rng, 0.7, 0.95),
                uniform(rng, 0.1, 0.35),
            ),
            Archetype::Developer => (
                log_normal(rng, 15.0, 1.0),
                uniform(rng, 0.8, 1.0),
                uniform(rng, 0.15, 0.5),
            ),
        };
        Volume::Seasonal {
            weekday_calls: weekday_calls.clamp(4.0, 40_000.0),
            hour_shape: business_hour_shape(strength, uniform(rng, 11.0, 15.0)),
            weekend_factor,
            growth_per_day: uniform(rng, 0.0, 0.01),
        }
    }

    /// A Zipf-weighted subset of the service's endpoints; leaves at least
    /// one endpoint unused so a release can add it later.
    fn endpoint_mix(&self, rng: &mut GenRng, service: &Service) -> (Vec<EndpointTemplate>, EndpointPhase) {
        // Real mixes are read-heavy: a random order in which reads tend to
        // rank first, so the Zipf head is mostly GETs.
        let mut ranked: Vec<(f64, usize)> = service
            .endpoints
            .iter()
            .enumerate()
            .map(|(position, endpoint)| {
                let write_penalty = if endpoint.method == "GET" { 1.0 } else { 2.5 };
                (unit(rng) * write_penalty, position)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let order: Vec<usize> = ranked.into_iter().map(|(_, position)| position).collect();
        let wanted = 5 + (35.0 * unit(rng).powf(1.5)) as usize;
        let count = wanted.min(service.endpoints.len() - 1);
        let endpoints: Vec<EndpointTemplate> = order
            .iter()
            .take(count)
            .map(|&position| service.endpoints[position].clone())
            .collect();
        let table = WeightedTable::zipf(count, uniform(rng, 0.9, 1.3));
        let phase = EndpointPhase {
            from_ms: i64::MIN,
            endpoints: (0..count).collect(),
            table,
        };
        (endpoints, phase)
    }

    pub(super) fn base_profile(
        &self,
        rng: &mut GenRng,
        key: String,
        archetype: Archetype,
        sites: Vec<Site>,
    ) -> KeyProfile {
        let service_index = index(rng, self.services.len());
        let service = &self.services[service_index];
        let (endpoints, phase) = self.endpoint_mix(rng, service);
        let mut user_agents: Vec<Arc<str>> = vec![Arc::from(client_agent(rng, service))];
        let mut agent_weights = vec![1.0];
        if chance(rng, 0.15) {
            // Two deployments on different SDK versions.
            user_agents.push(Arc::from(client_agent(rng, service)));
            agent_weights.push(uniform(rng, 0.1, 0.4));
        }
        let utc_offset_minutes = self.world.city(sites[0].network).utc_offset_minutes;
        KeyProfile {
            key_id: key,
            service: service_index,
            endpoints,
            endpoint_phases: vec![phase],
            location_phases: vec![LocationPhase::new(i64::MIN, sites, SitePicking::PerEvent)],
            user_agent_table: WeightedTable::new(&agent_weights),
            user_agents,
            utc_offset_minutes,
            volume: self.seasonal_volume(rng, archetype),
            active_periods: vec![(self.run_start(), self.run_end())],
            id_space: log_normal(rng, 400.0, 1.0).clamp(30.0, 20_000.0) as u64,
            client_error_rate: uniform(rng, 0.005, 0.03),
            hourly_calls: Vec::new(),
            offset_change: None,
            bursts: None,
        }
    }

    pub(super) fn ordinary(&self, rng: &mut GenRng, key: String) -> KeyProfile {
        let archetype = match index(rng, 20) {
            0..=10 => Archetype::Service,
            11..=16 => Archetype::Office,
            _ => Archetype::Developer,
        };
        let sites = self.sites_for(rng, archetype);
        self.base_profile(rng, key, archetype, sites)
    }

    /// The key an incident of `scenario` lands on, of kind `host`. Drawn
    /// again (a few times at most) until the scenario can happen on it: the
    /// owner's provider must have another region, the owner's country a
    /// hosting network.
    pub(super) fn host_profile(&self, rng: &mut GenRng, key: String, host: HostRole, scenario: Scenario) -> KeyProfile {
        const ATTEMPTS: usize = 30;
        let last_trip_day = u64::from(self.config.days).saturating_sub(2).max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let key = key.clone();
            let mut profile = match host {
                HostRole::Ordinary | HostRole::New if scenario == Scenario::SameProviderOtherRegion => {
                    let sites = self.sites_for(rng, Archetype::Service);
                    self.base_profile(rng, key, Archetype::Service, sites)
                }
                HostRole::Ordinary | HostRole::New => self.ordinary(rng, key),
                HostRole::Global => self.global_profile(rng, key).0,
                HostRole::Ci => self.ci_profile(rng, key).0,
                HostRole::Vpn => self.vpn_profile(rng, key).0,
                HostRole::Traveller => self.traveller_profile(rng, key, (1, last_trip_day)).0,
                HostRole::Heavy => self.heavy(rng, key),
            };
            if host != HostRole::Heavy {
                // Busy enough to have a baseline worth departing from.
                Self::ensure_volume(&mut profile, 40.0, 20_000.0);
            }
            if attempt >= ATTEMPTS || self.suits(&profile, scenario) {
                return profile;
            }
        }
    }

    /// Whether `scenario` can happen as described on the key of `profile`.
    fn suits(&self, profile: &KeyProfile, scenario: Scenario) -> bool {
        let world = self.world;
        let own = own_networks(profile);
        let Some(&home) = own.first() else {
            return false;
        };
        match scenario {
            Scenario::SameProviderOtherRegion => {
                world.kind(home) == NetworkKind::Cloud
                    && world.same_provider(home).iter().any(|other| !own.contains(other))
            }
            Scenario::DomesticHosting => {
                let country = world.city(home).country_code;
                world
                    .networks_of(&[NetworkKind::Hosting])
                    .into_iter()
                    .any(|network| world.city(network).country_code == country)
            }
            _ => true,
        }
    }

    fn heavy(&self, rng: &mut GenRng, key: String) -> KeyProfile {
        let sites = self.sites_for(rng, Archetype::Service);
        let mut profile = self.base_profile(rng, key, Archetype::Service, sites);
        profile.volume = Volume::Seasonal {
            weekday_calls: uniform(rng, 100_000.0, 115_000.0),
            hour_shape: business_hour_shape(uniform(rng, 0.2, 0.4), uniform(rng, 12.0, 15.0)),
            weekend_factor: uniform(rng, 0.7, 0.9),
            growth_per_day: uniform(rng, 0.0, 0.005),
        };
        profile
    }

    /// Keeps a key busy enough to have a baseline worth departing from.
    pub(super) fn ensure_volume(profile: &mut KeyProfile, minimum: f64, maximum: f64) {
        if let Volume::Seasonal { weekday_calls, .. } = &mut profile.volume {
            *weekday_calls = weekday_calls.clamp(minimum, maximum);
        }
    }
}

/// All networks a profile ever calls from.
pub(super) fn own_networks(profile: &KeyProfile) -> Vec<usize> {
    let mut networks = Vec::new();
    for phase in &profile.location_phases {
        for site in &phase.sites {
            if !networks.contains(&site.network) {
                networks.push(site.network);
            }
        }
    }
    networks
}

/// How many of the organisation's keys call from each network of the world.
pub(super) fn organisation_networks(world: &World, profiles: &[KeyProfile]) -> Vec<u32> {
    let mut keys = vec![0; world.networks.len()];
    for profile in profiles {
        for network in own_networks(profile) {
            if let Some(count) = keys.get_mut(network) {
                *count += 1;
            }
        }
    }
    keys
}

fn benign_record(
    fingerprinter: &Fingerprinter,
    case: HardCase,
    profile: &KeyProfile,
    start_ms: i64,
    end_ms: i64,
    notes: String,
) -> BenignCase {
    BenignCase {
        id: String::new(),
        case: case.as_str().to_string(),
        key: profile.key_id.clone(),
        key_fingerprint: fingerprinter.fingerprint(&profile.key_id),
        start: format_ts(start_ms),
        end: format_ts(end_ms),
        notes,
    }
}

/// Plans the run.
pub fn plan(config: &GenerateConfig) -> Plan {
    let world = World::new();
    let services = services();
    let builder = Builder {
        world: &world,
        services: &services,
        config,
    };
    let (run_start, run_end) = (builder.run_start(), builder.run_end());

    let mut role_rng = stream(config.seed, PURPOSE_ROLES, 0);
    let mut seen = HashSet::new();
    let key_ids: Vec<String> = (0..config.keys)
        .map(|_| {
            loop {
                let candidate = key_id(&mut role_rng);
                if seen.insert(candidate.clone()) {
                    break candidate;
                }
            }
        })
        .collect();
    let (per_scenario, per_case, heavy) = role_counts(config.keys);
    let mut roles = vec![Role::Ordinary; config.keys];
    // The position of each rotated key's successor.
    let mut successor_of: HashMap<usize, usize> = HashMap::new();
    let mut order: Vec<usize> = (0..config.keys).collect();
    shuffle(&mut role_rng, &mut order);
    let mut assign = order.into_iter();
    for _ in 0..heavy {
        if let Some(position) = assign.next() {
            roles[position] = Role::Heavy;
        }
    }
    for case in HardCase::ALL {
        for _ in 0..per_case {
            let Some(position) = assign.next() else {
                break;
            };
            roles[position] = Role::Case(case);
            if case == HardCase::KeyRotation
                && let Some(other) = assign.next()
            {
                // The successor is planned with its predecessor, so it
                // comes later in key order.
                let (first, second) = (position.min(other), position.max(other));
                roles[first] = Role::Case(case);
                roles[second] = Role::Successor;
                successor_of.insert(first, second);
            }
        }
    }
    for scenario in Scenario::ALL {
        // Round the scenario's host kinds from a random start, so every
        // kind is hit across seeds and no seed favours one.
        let hosts = scenario.host_roles();
        let offset = index(&mut role_rng, hosts.len());
        for count in 0..per_scenario {
            if let Some(position) = assign.next() {
                roles[position] = Role::Incident(scenario, hosts[(offset + count) % hosts.len()]);
            }
        }
    }

    // First every key's own behaviour, then the attacks, which need to know
    // where the whole organisation calls from.
    let mut profiles = Vec::with_capacity(config.keys);
    let mut injected = vec![Vec::new(); config.keys];
    let mut incident_windows = vec![Vec::new(); config.keys];
    let mut labels = Vec::new();
    let mut benign_cases = Vec::new();
    let mut successors: HashMap<usize, KeyProfile> = HashMap::new();
    for (position, key) in key_ids.iter().enumerate() {
        let key = key.clone();
        let mut rng = stream(config.seed, PURPOSE_PROFILE, position as u64);
        let profile = match roles[position] {
            Role::Ordinary => builder.ordinary(&mut rng, key),
            Role::Heavy => builder.heavy(&mut rng, key),
            Role::Successor => successors
                .remove(&position)
                .unwrap_or_else(|| builder.ordinary(&mut rng, key)),
            Role::Case(case) => {
                let successor_key = successor_of.get(&position).map(|&other| key_ids[other].clone());
                let build = builder.hard_case(&mut rng, key, case, successor_key);
                benign_cases.push(benign_record(
                    &config.fingerprinter,
                    case,
                    &build.profile,
                    build.start_ms,
                    build.end_ms,
                    build.notes,
                ));
                if let Some((successor, notes)) = build.successor {
                    benign_cases.push(benign_record(
                        &config.fingerprinter,
                        case,
                        &successor,
                        build.start_ms,
                        build.end_ms,
                        notes,
                    ));
                    if let Some(&other) = successor_of.get(&position) {
                        successors.insert(other, successor);
                    }
                }
                injected[position] = build.injected;
                build.profile
            }
            Role::Incident(scenario, host) => builder.host_profile(&mut rng, key, host, scenario),
        };
        profiles.push(profile);
    }

    let organisation = organisation_networks(&world, &profiles);
    let earliest_incident = run_start + FIRST_INCIDENT_DAY as i64 * DAY_MS;
    for position in 0..profiles.len() {
        let Role::Incident(scenario, host) = roles[position] else {
            continue;
        };
        let profile = &mut profiles[position];
        let mut attack_rng = stream(config.seed, PURPOSE_ATTACK, position as u64);
        let day = between(&mut attack_rng, FIRST_INCIDENT_DAY, u64::from(config.days) - 2);
        let local_hour = uniform(&mut attack_rng, 9.0, 17.0);
        let mut start_ms = builder.local_time(profile, day, local_hour).max(earliest_incident);
        if scenario == Scenario::DormantReactivated {
            // The owner stopped using the key weeks before: its history
            // lies before the run.
            let silent_days = between(&mut attack_rng, 31, 45) as i64;
            let last_use = start_ms - silent_days * DAY_MS;
            let history_days = between(&mut attack_rng, 10, 21) as i64;
            profile.active_periods = vec![(last_use - history_days * DAY_MS, last_use)];
        } else if host == HostRole::New {
            let first_use = if scenario == Scenario::NewKeyLeaked {
                // Issued in the morning, leaked (a public repository, a
                // pasted log) and used by someone else hours later.
                let issued = builder.local_time(profile, day, uniform(&mut attack_rng, 7.0, 10.0));
                let hours_later = uniform(&mut attack_rng, 2.0, 8.0);
                start_ms = (issued + (hours_later * HOUR_MS as f64) as i64).max(earliest_incident);
                issued.min(start_ms - HOUR_MS)
            } else {
                start_ms - (uniform(&mut attack_rng, 6.0, 48.0) * HOUR_MS as f64) as i64
            };
            profile.active_periods = vec![(first_use.max(run_start), run_end)];
        }
        let profile = &profiles[position];
        let context = AttackContext {
            world: &world,
            profile,
            own_networks: own_networks(profile),
            start_ms,
            run_start_ms: run_start,
            run_end_ms: run_end,
            organisation_networks: &organisation,
        };
        let Attack {
            events,
            start_ms: attack_start,
            end_ms: attack_end,
            notes,
            label_key,
        } = attack(&context, scenario, &mut attack_rng);
        injected[position] = events;
        incident_windows[position].push((attack_start, attack_end));
        let notes = if scenario == Scenario::KeySpray {
            notes
        } else {
            format!("{}: {notes}", host.on_key())
        };
        let label_key = label_key.unwrap_or_else(|| profile.key_id.clone());
        labels.push(Label {
            id: String::new(),
            scenario: scenario.as_str().to_string(),
            key_fingerprint: config.fingerprinter.fingerprint(&label_key),
            key: label_key,
            start: format_ts(attack_start),
            end: format_ts(attack_end),
            notes,
            detectors: scenario.detectors().to_vec(),
        });
    }

    // Abandoned keys come last, from their own random streams, and after
    // the attacks were planned: asking for them changes no other key.
    let mut abandoned_rng = stream(config.seed, PURPOSE_ABANDONED, 0);
    for index in 0..config.abandoned_keys {
        let key = loop {
            let candidate = key_id(&mut abandoned_rng);
            if seen.insert(candidate.clone()) {
                break candidate;
            }
        };
        let position = profiles.len();
        let mut rng = stream(config.seed, PURPOSE_ABANDONED, 1 + index as u64);
        let mut profile = builder.ordinary(&mut rng, key);
        // In use for a few weeks, then left: silent for over a month when
        // the run starts, so dormant at its end whatever its length.
        let silent_days = between(&mut rng, 31, 45) as i64;
        let history_days = between(&mut rng, 10, 30) as i64;
        let last_use = run_start - silent_days * DAY_MS;
        profile.active_periods = vec![(last_use - history_days * DAY_MS, last_use)];
        debug_assert_eq!(position, injected.len());
        profiles.push(profile);
        injected.push(Vec::new());
        incident_windows.push(Vec::new());
    }

    // Number incidents and cases in time order, so ids read chronologically.
    labels.sort_by(|a, b| (&a.start, &a.key).cmp(&(&b.start, &b.key)));
    for (position, label) in labels.iter_mut().enumerate() {
        label.id = format!("inc-{:04}", position + 1);
    }
    benign_cases.sort_by(|a, b| (&a.case, &a.start, &a.key).cmp(&(&b.case, &b.start, &b.key)));
    for (position, case) in benign_cases.iter_mut().enumerate() {
        case.id = format!("benign-{:04}", position + 1);
    }
    Plan {
        world,
        profiles,
        injected,
        incident_windows,
        labels,
        benign_cases,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: usize) -> GenerateConfig {
        GenerateConfig {
            keys,
            days: 8,
            seed: 5,
            start_ms: crate::event::parse_ts("2026-01-05T00:00:00Z").unwrap(),
            fingerprinter: crate::event::Fingerprinter::unkeyed(),
            abandoned_keys: 0,
        }
    }

    #[test]
    fn every_role_is_filled_at_the_minimum_size() {
        let plan = plan(&config(minimum_keys()));
        for scenario in Scenario::ALL {
            assert!(
                plan.labels.iter().any(|label| label.scenario == scenario.as_str()),
                "{scenario:?}"
            );
        }
        for case in HardCase::ALL {
            assert!(
                plan.benign_cases.iter().any(|benign| benign.case == case.as_str()),
                "{case:?}"
            );
        }
    }

    #[test]
    fn a_rotated_key_and_its_successor_are_two_keys_of_the_run_in_one_case() {
        let plan = plan(&config(minimum_keys()));
        assert_eq!(
            plan.profiles.len(),
            minimum_keys(),
            "the successor is one of the run's keys"
        );
        let rotation: Vec<&BenignCase> = plan
            .benign_cases
            .iter()
            .filter(|benign| benign.case == HardCase::KeyRotation.as_str())
            .collect();
        assert_eq!(rotation.len(), 2);
        assert_ne!(rotation[0].key, rotation[1].key);
        assert_eq!(rotation[0].start, rotation[1].start);
        for benign in rotation {
            assert!(plan.profiles.iter().any(|profile| profile.key_id == benign.key));
        }
    }

    #[test]
    fn incidents_start_after_the_baseline_days_and_end_in_the_run() {
        let config = config(60);
        let plan = plan(&config);
        let earliest = config.start_ms + FIRST_INCIDENT_DAY as i64 * DAY_MS;
        let run_end = config.start_ms + 8 * DAY_MS;
        for label in &plan.labels {
            let start = crate::event::parse_ts(&label.start).unwrap();
            let end = crate::event::parse_ts(&label.end).unwrap();
            assert!(start >= earliest && start <= end && end < run_end, "{label:?}");
        }
    }

    #[test]
    fn dormant_keys_have_history_only_weeks_before_the_incident() {
        let plan = plan(&config(60));
        for label in plan
            .labels
            .iter()
            .filter(|label| label.scenario == "dormant_reactivated")
        {
            let profile = plan
                .profiles
                .iter()
                .find(|profile| profile.key_id == label.key)
                .unwrap();
            let start = crate::event::parse_ts(&label.start).unwrap();
            let last_use = profile.active_periods.iter().map(|&(_, until)| until).max().unwrap();
            assert!(start - last_use >= 30 * DAY_MS);
        }
    }
}
