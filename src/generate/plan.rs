//! Plans a run before any event is written: gives every key an id, a role
//! (ordinary, heavy, benign hard case or incident) and a behaviour profile,
//! and builds each incident's attacker calls.

use std::collections::HashSet;
use std::sync::Arc;

use super::GenerateConfig;
use super::catalog::{EndpointTemplate, Service, client_agent, key_id, services};
use super::profile::{
    DAY_MS, EndpointPhase, GenEvent, HOUR_MS, KeyProfile, LocationPhase, MINUTE_MS, ScheduledRun, Site, SitePicking,
    Volume, business_hour_shape,
};
use super::random::{GenRng, WeightedTable, between, chance, index, log_normal, pick, shuffle, stream, uniform, unit};
use super::scenario::{Attack, AttackContext, Scenario, attack};
use super::world::{NetworkKind, World};
use crate::eval::{BenignCase, Label};
use crate::event::{format_ts, key_fingerprint};

/// Purposes that separate the random streams of one seed.
const PURPOSE_ROLES: u64 = 1;
const PURPOSE_PROFILE: u64 = 2;
const PURPOSE_ATTACK: u64 = 3;
pub const PURPOSE_TRAFFIC: u64 = 4;

/// Incidents start this many days into the run, so every key has a baseline.
const FIRST_INCIDENT_DAY: u64 = 3;

/// Benign situations that look unusual and are not attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HardCase {
    CloudRegionMigration,
    ReleaseNewEndpoint,
    CiBursty,
    VpnEgress,
    DeveloperTravel,
    GlobalTraffic,
}

impl HardCase {
    pub const ALL: [HardCase; 6] = [
        HardCase::CloudRegionMigration,
        HardCase::ReleaseNewEndpoint,
        HardCase::CiBursty,
        HardCase::VpnEgress,
        HardCase::DeveloperTravel,
        HardCase::GlobalTraffic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HardCase::CloudRegionMigration => "cloud_region_migration",
            HardCase::ReleaseNewEndpoint => "release_new_endpoint",
            HardCase::CiBursty => "ci_bursty",
            HardCase::VpnEgress => "vpn_egress",
            HardCase::DeveloperTravel => "developer_travel",
            HardCase::GlobalTraffic => "global_traffic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ordinary,
    Heavy,
    Case(HardCase),
    Incident(Scenario),
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

/// How many keys play each role at this size.
pub fn role_counts(keys: usize) -> (usize, usize, usize) {
    let per_scenario = keys.div_ceil(300).max(1);
    let per_case = keys.div_ceil(250).max(1);
    let heavy = keys / 400;
    (per_scenario, per_case, heavy)
}

/// Fewest keys a run can have: every role once, and as many ordinary keys.
pub fn minimum_keys() -> usize {
    2 * (Scenario::ALL.len() + HardCase::ALL.len())
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

fn pick_popular(world: &World, rng: &mut GenRng, candidates: &[usize]) -> usize {
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&network| country_popularity(world.city(network).country_code))
        .collect();
    candidates[WeightedTable::new(&weights).sample(rng)]
}

/// A site on `network` with between `ip_counts.0` and `ip_counts.1` addresses.
fn site(world: &World, rng: &mut GenRng, network: usize, ip_counts: (usize, usize), weight: f64) -> Site {
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
fn other_region(world: &World, rng: &mut GenRng, network: usize, used_countries: &[&str]) -> Option<usize> {
    let candidates: Vec<usize> = world
        .same_provider(network)
        .into_iter()
        .filter(|&other| !used_countries.contains(&world.city(other).country_code))
        .collect();
    (!candidates.is_empty()).then(|| pick_popular(world, rng, &candidates))
}

/// How a key is deployed: it decides its networks, rhythm and volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archetype {
    /// A backend service in a cloud region.
    Service,
    /// An internal tool or integration run from an office line.
    Office,
    /// A developer's personal key, from home.
    Developer,
}

struct Builder<'a> {
    world: &'a World,
    services: &'a [Service],
    config: &'a GenerateConfig,
}

impl Builder<'_> {
    fn run_start(&self) -> i64 {
        self.config.start_ms
    }

    fn run_end(&self) -> i64 {
        self.config.start_ms + i64::from(self.config.days) * DAY_MS
    }

    /// A time on day `day` of the run at a local hour of the key.
    fn local_time(&self, profile: &KeyProfile, day: u64, local_hour: f64) -> i64 {
        let local_midnight = self.run_start() + day as i64 * DAY_MS;
        local_midnight + (local_hour * HOUR_MS as f64) as i64 - i64::from(profile.utc_offset_minutes) * MINUTE_MS
    }

    fn sites_for(&self, rng: &mut GenRng, archetype: Archetype) -> Vec<Site> {
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

    fn base_profile(&self, rng: &mut GenRng, key: String, archetype: Archetype, sites: Vec<Site>) -> KeyProfile {
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
        }
    }

    fn ordinary(&self, rng: &mut GenRng, key: String) -> KeyProfile {
        let archetype = match index(rng, 20) {
            0..=10 => Archetype::Service,
            11..=16 => Archetype::Office,
            _ => Archetype::Developer,
        };
        let sites = self.sites_for(rng, archetype);
        self.base_profile(rng, key, archetype, sites)
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
    fn ensure_volume(profile: &mut KeyProfile, minimum: f64, maximum: f64) {
        if let Volume::Seasonal { weekday_calls, .. } = &mut profile.volume {
            *weekday_calls = weekday_calls.clamp(minimum, maximum);
        }
    }

    /// Builds a hard-case key and the span in which the case shows.
    fn hard_case(&self, rng: &mut GenRng, key: String, case: HardCase) -> (KeyProfile, i64, i64, String) {
        let world = self.world;
        let (run_start, run_end) = (self.run_start(), self.run_end());
        let last_day = u64::from(self.config.days) - 2;
        match case {
            HardCase::CloudRegionMigration => {
                let clouds = world.networks_of(&[NetworkKind::Cloud]);
                let old_region = pick_popular(world, rng, &clouds);
                let old_site = site(world, rng, old_region, (2, 5), 1.0);
                let mut profile = self.base_profile(rng, key, Archetype::Service, vec![old_site.clone()]);
                Self::ensure_volume(&mut profile, 60.0, 20_000.0);
                let home_country = world.city(old_region).country_code;
                let new_region = other_region(world, rng, old_region, &[home_country]).unwrap_or(old_region);
                let new_site = site(world, rng, new_region, (2, 5), 1.0);
                let day = between(rng, FIRST_INCIDENT_DAY, last_day);
                let cutover = self.local_time(&profile, day, uniform(rng, 9.0, 11.0));
                // Both regions serve for two hours during the cutover.
                profile.location_phases.push(LocationPhase::new(
                    cutover,
                    vec![old_site, new_site.clone()],
                    SitePicking::PerEvent,
                ));
                profile.location_phases.push(LocationPhase::new(
                    cutover + 2 * HOUR_MS,
                    vec![new_site],
                    SitePicking::PerEvent,
                ));
                let notes = format!(
                    "moves from AS{} {} to {}, {}",
                    world.provider(old_region).asn,
                    world.city(old_region).name,
                    world.city(new_region).name,
                    world.city(new_region).country_code
                );
                (profile, cutover, run_end, notes)
            }
            HardCase::ReleaseNewEndpoint => {
                let mut profile = self.ordinary(rng, key);
                Self::ensure_volume(&mut profile, 60.0, 20_000.0);
                let service = &self.services[profile.service];
                let unused: Vec<&EndpointTemplate> = service
                    .endpoints
                    .iter()
                    .filter(|endpoint| !profile.endpoints.contains(endpoint))
                    .collect();
                let new_endpoint = (*pick(rng, &unused)).clone();
                let notes = format!("release adds {} {}", new_endpoint.method, new_endpoint.path);
                profile.endpoints.push(new_endpoint);
                let old_count = profile.endpoints.len() - 1;
                let old_weights: Vec<f64> = (1..=old_count).map(|rank| 1.0 / (rank as f64).powf(1.1)).collect();
                let old_total: f64 = old_weights.iter().sum();
                let mut weights = old_weights;
                weights.push(old_total * uniform(rng, 0.1, 0.3));
                let day = between(rng, FIRST_INCIDENT_DAY, last_day);
                let release = self.local_time(&profile, day, uniform(rng, 10.0, 16.0));
                profile.endpoint_phases.push(EndpointPhase {
                    from_ms: release,
                    endpoints: (0..=old_count).collect(),
                    table: WeightedTable::new(&weights),
                });
                (profile, release, run_end, notes)
            }
            HardCase::CiBursty => {
                let clouds = world.networks_of(&[NetworkKind::Cloud]);
                let runner_network = pick_popular(world, rng, &clouds);
                // CI runners come and go: many addresses in the provider's block.
                let runners = site(world, rng, runner_network, (10, 34), 1.0);
                let mut profile = self.base_profile(rng, key, Archetype::Service, vec![runners]);
                let mut runs = vec![ScheduledRun {
                    local_minute_of_day: between(rng, 60, 240) as i64,
                    weekdays_only: false,
                    duration_minutes: between(rng, 8, 20) as i64,
                    calls: uniform(rng, 300.0, 2000.0),
                }];
                for _ in 0..between(rng, 1, 3) {
                    runs.push(ScheduledRun {
                        local_minute_of_day: between(rng, 9 * 60, 18 * 60) as i64,
                        weekdays_only: true,
                        duration_minutes: between(rng, 5, 15) as i64,
                        calls: uniform(rng, 100.0, 800.0),
                    });
                }
                let notes = format!("{} scheduled runs a day, quiet in between", runs.len());
                profile.volume = Volume::Scheduled { runs };
                (profile, run_start, run_end, notes)
            }
            HardCase::VpnEgress => {
                let vpns = world.networks_of(&[NetworkKind::Vpn]);
                let primary = pick_popular(world, rng, &vpns);
                let mut sites = vec![site(world, rng, primary, (2, 2), 1.0)];
                let mut nearby: Vec<usize> = world
                    .same_provider(primary)
                    .into_iter()
                    .filter(|&other| world.city(other).country_code != world.city(primary).country_code)
                    .collect();
                nearby.sort_by(|&a, &b| world.distance_km(primary, a).total_cmp(&world.distance_km(primary, b)));
                let mut countries = vec![world.city(primary).country_code];
                for other in nearby {
                    if sites.len() >= 2 + index(rng, 2) {
                        break;
                    }
                    if countries.contains(&world.city(other).country_code) {
                        continue;
                    }
                    countries.push(world.city(other).country_code);
                    sites.push(site(world, rng, other, (2, 2), 1.0));
                }
                let mut profile = self.base_profile(rng, key, Archetype::Office, sites.clone());
                Self::ensure_volume(&mut profile, 40.0, 20_000.0);
                let hours = between(rng, 1, 4) as i64;
                profile.location_phases = vec![LocationPhase::new(
                    i64::MIN,
                    sites,
                    SitePicking::AlternateEvery { hours },
                )];
                let notes = format!(
                    "AS{} egress alternating every {hours} h between {}",
                    world.provider(primary).asn,
                    countries.join(", ")
                );
                (profile, run_start, run_end, notes)
            }
            HardCase::DeveloperTravel => {
                let home_sites = self.sites_for(rng, Archetype::Developer);
                let home = home_sites[0].network;
                let mut profile = self.base_profile(rng, key, Archetype::Developer, home_sites.clone());
                Self::ensure_volume(&mut profile, 40.0, 2_000.0);
                let destinations: Vec<usize> = world
                    .networks_of(&[NetworkKind::Isp, NetworkKind::Mobile])
                    .into_iter()
                    .filter(|&other| {
                        world.city(other).country_code != world.city(home).country_code
                            && world.distance_km(home, other) > 1500.0
                    })
                    .collect();
                let destination = pick_popular(world, rng, &destinations);
                let distance = world.distance_km(home, destination);
                // Airliner speed plus time at both airports.
                let flight_ms = ((distance / 800.0 + 2.5) * HOUR_MS as f64) as i64;
                let day = between(
                    rng,
                    FIRST_INCIDENT_DAY,
                    last_day.saturating_sub(1).max(FIRST_INCIDENT_DAY),
                );
                let departure = self.local_time(&profile, day, uniform(rng, 6.0, 10.0));
                let arrival = departure + flight_ms;
                let stay_ms = between(rng, 2, 4) as i64 * DAY_MS;
                let return_departure = arrival + stay_ms;
                let return_arrival = return_departure + flight_ms;
                let destination_site = site(world, rng, destination, (1, 2), 1.0);
                profile.location_phases = vec![
                    LocationPhase::new(i64::MIN, home_sites.clone(), SitePicking::PerEvent),
                    LocationPhase::new(departure, Vec::new(), SitePicking::PerEvent),
                    LocationPhase::new(arrival, vec![destination_site], SitePicking::PerEvent),
                    LocationPhase::new(return_departure, Vec::new(), SitePicking::PerEvent),
                    LocationPhase::new(return_arrival, home_sites, SitePicking::PerEvent),
                ];
                let notes = format!(
                    "flies {} to {}, {} ({distance:.0} km, {:.1} h gap) and back",
                    world.city(home).name,
                    world.city(destination).name,
                    world.city(destination).country_code,
                    flight_ms as f64 / HOUR_MS as f64
                );
                (profile, departure, return_arrival.min(run_end), notes)
            }
            HardCase::GlobalTraffic => {
                let candidates = world.networks_of(&[NetworkKind::Isp, NetworkKind::Mobile, NetworkKind::Cloud]);
                let wanted = 8 + index(rng, 8);
                let mut order = candidates.clone();
                shuffle(rng, &mut order);
                let mut countries: Vec<&str> = Vec::new();
                let mut sites = Vec::new();
                for network in order {
                    if sites.len() >= wanted {
                        break;
                    }
                    let country = world.city(network).country_code;
                    if countries.contains(&country) {
                        continue;
                    }
                    countries.push(country);
                    let weight = log_normal(rng, 1.0, 0.7);
                    sites.push(site(world, rng, network, (3, 8), weight));
                }
                let mut profile = self.base_profile(rng, key, Archetype::Service, sites);
                Self::ensure_volume(&mut profile, 200.0, 20_000.0);
                // Users around the world flatten the daily curve.
                if let Volume::Seasonal { hour_shape, .. } = &mut profile.volume {
                    *hour_shape = business_hour_shape(uniform(rng, 0.05, 0.2), 14.0);
                }
                let notes = format!("traffic from {} countries from day one", countries.len());
                (profile, run_start, run_end, notes)
            }
        }
    }
}

/// All networks a profile ever calls from.
fn own_networks(profile: &KeyProfile) -> Vec<usize> {
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
            if let Some(position) = assign.next() {
                roles[position] = Role::Case(case);
            }
        }
    }
    for scenario in Scenario::ALL {
        for _ in 0..per_scenario {
            if let Some(position) = assign.next() {
                roles[position] = Role::Incident(scenario);
            }
        }
    }

    let mut profiles = Vec::with_capacity(config.keys);
    let mut injected = vec![Vec::new(); config.keys];
    let mut incident_windows = vec![Vec::new(); config.keys];
    let mut labels = Vec::new();
    let mut benign_cases = Vec::new();
    for (position, key) in key_ids.into_iter().enumerate() {
        let mut rng = stream(config.seed, PURPOSE_PROFILE, position as u64);
        let profile = match roles[position] {
            Role::Ordinary => builder.ordinary(&mut rng, key),
            Role::Heavy => builder.heavy(&mut rng, key),
            Role::Case(case) => {
                let (profile, start, end, notes) = builder.hard_case(&mut rng, key, case);
                benign_cases.push(BenignCase {
                    id: String::new(),
                    case: case.as_str().to_string(),
                    key: profile.key_id.clone(),
                    key_fingerprint: key_fingerprint(&profile.key_id),
                    start: format_ts(start),
                    end: format_ts(end),
                    notes,
                });
                profile
            }
            Role::Incident(scenario) => {
                let mut profile = builder.ordinary(&mut rng, key);
                Builder::ensure_volume(&mut profile, 40.0, 20_000.0);
                let mut attack_rng = stream(config.seed, PURPOSE_ATTACK, position as u64);
                let day = between(&mut attack_rng, FIRST_INCIDENT_DAY, u64::from(config.days) - 2);
                let local_hour = uniform(&mut attack_rng, 9.0, 17.0);
                let start_ms = builder
                    .local_time(&profile, day, local_hour)
                    .max(run_start + FIRST_INCIDENT_DAY as i64 * DAY_MS);
                if scenario == Scenario::DormantReactivated {
                    // The owner stopped using the key weeks before: its
                    // history lies before the run.
                    let silent_days = between(&mut attack_rng, 31, 45) as i64;
                    let last_use = start_ms - silent_days * DAY_MS;
                    let history_days = between(&mut attack_rng, 10, 21) as i64;
                    profile.active_periods = vec![(last_use - history_days * DAY_MS, last_use)];
                }
                let context = AttackContext {
                    world: &world,
                    profile: &profile,
                    own_networks: own_networks(&profile),
                    start_ms,
                    run_start_ms: run_start,
                    run_end_ms: run_end,
                };
                let Attack {
                    events,
                    start_ms: attack_start,
                    end_ms: attack_end,
                    notes,
                } = attack(&context, scenario, &mut attack_rng);
                injected[position] = events;
                incident_windows[position].push((attack_start, attack_end));
                labels.push(Label {
                    id: String::new(),
                    scenario: scenario.as_str().to_string(),
                    key: profile.key_id.clone(),
                    key_fingerprint: key_fingerprint(&profile.key_id),
                    start: format_ts(attack_start),
                    end: format_ts(attack_end),
                    notes,
                });
                profile
            }
        };
        profiles.push(profile);
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
