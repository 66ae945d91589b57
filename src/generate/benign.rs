//! Benign hard cases: traffic that looks unusual and is not an attack
//! (a cloud region migration, a release with a new endpoint, bursty CI,
//! VPN egress, a developer travelling, a key used worldwide), built as the
//! key's own behaviour profile.
//!
//! Each case is written from the owner's side only; nothing here knows how
//! any detector works. The attacks live beside it in [`super::attacks`].

use super::catalog::EndpointTemplate;
use super::plan::{Archetype, Builder, FIRST_INCIDENT_DAY, other_region, pick_popular, site};
use super::profile::{
    DAY_MS, EndpointPhase, HOUR_MS, KeyProfile, LocationPhase, ScheduledRun, SitePicking, Volume, business_hour_shape,
};
use super::random::{GenRng, WeightedTable, between, index, log_normal, pick, shuffle, uniform};
use super::world::NetworkKind;

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

impl Builder<'_> {
    /// Builds a hard-case key and the span in which the case shows.
    pub(super) fn hard_case(&self, rng: &mut GenRng, key: String, case: HardCase) -> (KeyProfile, i64, i64, String) {
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
