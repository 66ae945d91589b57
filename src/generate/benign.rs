//! Benign hard cases: traffic that looks unusual and is not an attack
//! (a cloud region migration, a release with a new endpoint or with export
//! downloads, bursty CI, VPN egress, a developer travelling, a key used
//! worldwide, an hourly token refresh, a daylight-saving change, a 401
//! storm after a secret rotation, a key rotated to a successor, heavy-tailed
//! bursts), built as the key's own behaviour profile.
//!
//! The builders of the unusual key kinds (CI, VPN, traveller, global) are
//! also the hosts attacks land on ([`super::plan`]).
//!
//! Each case is written from the owner's side only; nothing here knows how
//! any detector works. The attacks live beside it in [`super::attacks`].

use std::sync::Arc;

use super::catalog::{EndpointTemplate, export_endpoints};
use super::plan::{Archetype, Builder, FIRST_INCIDENT_DAY, other_region, pick_popular, site};
use super::profile::{
    Bursts, DAY_MS, EndpointPhase, GenEvent, HOUR_MS, HourlyCall, KeyProfile, LocationPhase, MINUTE_MS, OffsetChange,
    ScheduledRun, SitePicking, Volume, business_hour_shape,
};
use super::random::{GenRng, WeightedTable, between, chance, index, log_normal, pick, shuffle, uniform, unit};
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
    ReleaseExportEndpoints,
    HourlyTokenRefresh,
    DaylightSavingShift,
    AuthRetryStorm,
    KeyRotation,
    BurstyHeavyTailed,
}

impl HardCase {
    pub const ALL: [HardCase; 12] = [
        HardCase::CloudRegionMigration,
        HardCase::ReleaseNewEndpoint,
        HardCase::CiBursty,
        HardCase::VpnEgress,
        HardCase::DeveloperTravel,
        HardCase::GlobalTraffic,
        HardCase::ReleaseExportEndpoints,
        HardCase::HourlyTokenRefresh,
        HardCase::DaylightSavingShift,
        HardCase::AuthRetryStorm,
        HardCase::KeyRotation,
        HardCase::BurstyHeavyTailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HardCase::CloudRegionMigration => "cloud_region_migration",
            HardCase::ReleaseNewEndpoint => "release_new_endpoint",
            HardCase::CiBursty => "ci_bursty",
            HardCase::VpnEgress => "vpn_egress",
            HardCase::DeveloperTravel => "developer_travel",
            HardCase::GlobalTraffic => "global_traffic",
            HardCase::ReleaseExportEndpoints => "release_export_endpoints",
            HardCase::HourlyTokenRefresh => "hourly_token_refresh",
            HardCase::DaylightSavingShift => "daylight_saving_shift",
            HardCase::AuthRetryStorm => "auth_retry_storm",
            HardCase::KeyRotation => "key_rotation",
            HardCase::BurstyHeavyTailed => "bursty_heavy_tailed",
        }
    }
}

/// A hard case as planned: the key's profile, the span in which the case
/// shows, what it is, and what else it brings.
pub struct CaseBuild {
    pub profile: KeyProfile,
    pub start_ms: i64,
    pub end_ms: i64,
    pub notes: String,
    /// Calls the profile cannot express (a retry storm), in time order.
    pub injected: Vec<GenEvent>,
    /// A second key that belongs to the case (the successor of a rotated
    /// key), with its own notes.
    pub successor: Option<(KeyProfile, String)>,
}

impl CaseBuild {
    fn new(profile: KeyProfile, start_ms: i64, end_ms: i64, notes: String) -> CaseBuild {
        CaseBuild {
            profile,
            start_ms,
            end_ms,
            notes,
            injected: Vec::new(),
            successor: None,
        }
    }
}

impl Builder<'_> {
    /// A CI key: bursts of calls from many runner addresses in one cloud
    /// region at scheduled times, quiet in between.
    pub(super) fn ci_profile(&self, rng: &mut GenRng, key: String) -> (KeyProfile, String) {
        let world = self.world;
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
        (profile, notes)
    }

    /// A key behind VPN egress that alternates between nearby countries.
    pub(super) fn vpn_profile(&self, rng: &mut GenRng, key: String) -> (KeyProfile, String) {
        let world = self.world;
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
        (profile, notes)
    }

    /// A developer's key that flies abroad for a few days, leaving on a day
    /// in `days` (run days); returns the profile, departure, return and a
    /// description.
    pub(super) fn traveller_profile(
        &self,
        rng: &mut GenRng,
        key: String,
        days: (u64, u64),
    ) -> (KeyProfile, i64, i64, String) {
        let world = self.world;
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
        let day = between(rng, days.0, days.1.max(days.0));
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
        (profile, departure, return_arrival, notes)
    }

    /// A key used from many countries from day one.
    pub(super) fn global_profile(&self, rng: &mut GenRng, key: String) -> (KeyProfile, String) {
        let world = self.world;
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
        (profile, notes)
    }

    /// Adds `added` to the key's endpoints from `release_ms` on, taking
    /// `share` of its calls between them.
    fn release(profile: &mut KeyProfile, added: Vec<EndpointTemplate>, share: f64, release_ms: i64) {
        let old_count = profile.endpoints.len();
        let added_count = added.len();
        profile.endpoints.extend(added);
        let old_weights: Vec<f64> = (1..=old_count).map(|rank| 1.0 / (rank as f64).powf(1.1)).collect();
        let old_total: f64 = old_weights.iter().sum();
        let mut weights = old_weights;
        let each = old_total * share / (1.0 - share).max(0.01) / added_count.max(1) as f64;
        weights.extend(std::iter::repeat_n(each, added_count));
        profile.endpoint_phases.push(EndpointPhase {
            from_ms: release_ms,
            endpoints: (0..old_count + added_count).collect(),
            table: WeightedTable::new(&weights),
        });
    }

    /// The first day at or after `first_day` on which the key's local day is
    /// a Sunday, when daylight saving changes; `first_day` if the run has
    /// none left.
    fn first_sunday(&self, profile: &KeyProfile, first_day: u64, last_day: u64) -> u64 {
        (first_day..=last_day)
            .find(|&day| {
                let local_noon =
                    self.local_time(profile, day, 12.0) + i64::from(profile.utc_offset_minutes) * MINUTE_MS;
                // 1970-01-01 was a Thursday: day 3 of a Monday-first week.
                (local_noon.div_euclid(DAY_MS) + 3).rem_euclid(7) == 6
            })
            .unwrap_or(first_day)
    }

    /// Builds a hard-case key and the span in which the case shows.
    /// `successor_key` is the id the successor of a rotated key gets.
    pub(super) fn hard_case(
        &self,
        rng: &mut GenRng,
        key: String,
        case: HardCase,
        successor_key: Option<String>,
    ) -> CaseBuild {
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
                CaseBuild::new(profile, cutover, run_end, notes)
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
                let share = uniform(rng, 0.1, 0.3);
                let day = between(rng, FIRST_INCIDENT_DAY, last_day);
                let release = self.local_time(&profile, day, uniform(rng, 10.0, 16.0));
                Self::release(&mut profile, vec![new_endpoint], share / (1.0 + share), release);
                CaseBuild::new(profile, release, run_end, notes)
            }
            HardCase::CiBursty => {
                let (profile, notes) = self.ci_profile(rng, key);
                CaseBuild::new(profile, run_start, run_end, notes)
            }
            HardCase::VpnEgress => {
                let (profile, notes) = self.vpn_profile(rng, key);
                CaseBuild::new(profile, run_start, run_end, notes)
            }
            HardCase::DeveloperTravel => {
                let days = (FIRST_INCIDENT_DAY, last_day.saturating_sub(1).max(FIRST_INCIDENT_DAY));
                let (profile, departure, return_arrival, notes) = self.traveller_profile(rng, key, days);
                CaseBuild::new(profile, departure, return_arrival.min(run_end), notes)
            }
            HardCase::GlobalTraffic => {
                let (profile, notes) = self.global_profile(rng, key);
                CaseBuild::new(profile, run_start, run_end, notes)
            }
            HardCase::ReleaseExportEndpoints => {
                let mut profile = self.ordinary(rng, key);
                Self::ensure_volume(&mut profile, 150.0, 20_000.0);
                // The usual export flow: start an export, poll it, download it.
                let added: Vec<EndpointTemplate> = export_endpoints()
                    .into_iter()
                    .filter(|endpoint| endpoint.path.starts_with("/v1/exports"))
                    .collect();
                let share = uniform(rng, 0.03, 0.08);
                let day = between(rng, FIRST_INCIDENT_DAY, last_day);
                let release = self.local_time(&profile, day, uniform(rng, 10.0, 16.0));
                let notes = format!(
                    "release adds {} from the key's own places and client, {:.0}% of calls",
                    added
                        .iter()
                        .map(|endpoint| format!("{} {}", endpoint.method, endpoint.path))
                        .collect::<Vec<_>>()
                        .join(", "),
                    share * 100.0
                );
                Self::release(&mut profile, added, share, release);
                CaseBuild::new(profile, release, run_end, notes)
            }
            HardCase::HourlyTokenRefresh => {
                let mut profile = self.ordinary(rng, key);
                Self::ensure_volume(&mut profile, 40.0, 20_000.0);
                let day = between(rng, FIRST_INCIDENT_DAY, last_day);
                let from = self.local_time(&profile, day, uniform(rng, 9.0, 17.0));
                let minute_of_hour = between(rng, 0, 59) as i64;
                let template = EndpointTemplate {
                    method: "POST",
                    path: "/oauth/token".to_string(),
                    typical_bytes: 900,
                };
                let notes = format!(
                    "starts {} {} once an hour at minute {minute_of_hour}, from its own places and client",
                    template.method, template.path
                );
                profile.hourly_calls.push(HourlyCall {
                    from_ms: from,
                    minute_of_hour,
                    template,
                });
                CaseBuild::new(profile, from, run_end, notes)
            }
            HardCase::DaylightSavingShift => {
                let sites = self.sites_for(rng, Archetype::Office);
                let mut profile = self.base_profile(rng, key, Archetype::Office, sites);
                Self::ensure_volume(&mut profile, 300.0, 20_000.0);
                // A business-hours key: the office opens and closes on the
                // hour, with little traffic in between.
                if let Volume::Seasonal { hour_shape, .. } = &mut profile.volume {
                    let opens = between(rng, 7, 9) as usize;
                    let closes = opens + between(rng, 8, 10) as usize;
                    *hour_shape = office_hours_shape(opens, closes, uniform(rng, 0.01, 0.05));
                }
                let day = self.first_sunday(&profile, FIRST_INCIDENT_DAY, u64::from(self.config.days) - 1);
                let change = self.local_time(&profile, day, 2.0);
                let old_offset = profile.utc_offset_minutes;
                let new_offset = if chance(rng, 0.5) {
                    old_offset + 60
                } else {
                    old_offset - 60
                };
                profile.offset_change = Some(OffsetChange {
                    from_ms: change,
                    utc_offset_minutes: new_offset,
                });
                let notes = format!(
                    "business-hours key; UTC offset {} -> {} at 02:00 local on run day {day}, same local hours",
                    format_offset(old_offset),
                    format_offset(new_offset)
                );
                CaseBuild::new(profile, change, run_end, notes)
            }
            HardCase::AuthRetryStorm => {
                let mut profile = self.ordinary(rng, key);
                Self::ensure_volume(&mut profile, 60.0, 20_000.0);
                let day = between(rng, FIRST_INCIDENT_DAY, last_day);
                let rotation = self.local_time(&profile, day, uniform(rng, 9.0, 17.0));
                let storm_ms = between(rng, 2, 10) as i64 * MINUTE_MS;
                let count = log_normal(rng, 120.0, 0.8).clamp(30.0, 600.0) as usize;
                // The deployment still holds the old secret: every call it
                // makes is refused until it picks up the new one.
                profile.active_periods = vec![(run_start, rotation), (rotation + storm_ms, run_end)];
                let ip = profile
                    .owner_ip(rng, rotation)
                    .unwrap_or_else(|| profile.location_phases[0].sites[0].ips[0]);
                let agent = Arc::clone(&profile.user_agents[0]);
                let mut times: Vec<i64> = (0..count)
                    .map(|_| rotation + (unit(rng) * storm_ms as f64) as i64)
                    .collect();
                times.sort_unstable();
                let injected: Vec<GenEvent> = times
                    .into_iter()
                    .map(|ts_ms| {
                        let mut event = profile.ordinary_call(rng, ts_ms, ip, Arc::clone(&agent));
                        event.status = 401;
                        event.bytes_out = uniform(rng, 80.0, 300.0) as u64;
                        event
                    })
                    .collect();
                let notes = format!(
                    "secret rotated: {count} calls answered 401 in {} min from the owner's own {ip} and client, then 200s",
                    storm_ms / MINUTE_MS
                );
                let mut build = CaseBuild::new(profile, rotation, rotation + storm_ms + HOUR_MS, notes);
                build.injected = injected;
                build
            }
            HardCase::KeyRotation => {
                let mut profile = self.ordinary(rng, key);
                Self::ensure_volume(&mut profile, 40.0, 20_000.0);
                let day = between(rng, FIRST_INCIDENT_DAY, last_day);
                let cutover = self.local_time(&profile, day, uniform(rng, 9.0, 17.0));
                let mut successor = profile.clone();
                successor.key_id = successor_key.unwrap_or_else(|| format!("{}-rotated", profile.key_id));
                successor.active_periods = vec![(cutover, run_end)];
                profile.active_periods = vec![(run_start, cutover)];
                let notes = format!(
                    "retired at the cutover; successor {} takes over the same traffic",
                    self.config.fingerprinter.fingerprint(&successor.key_id)
                );
                let successor_notes = format!(
                    "successor of {}: a new key with the same places, client, endpoints and rate",
                    self.config.fingerprinter.fingerprint(&profile.key_id)
                );
                let mut build = CaseBuild::new(profile, cutover, run_end, notes);
                build.successor = Some((successor, successor_notes));
                build
            }
            HardCase::BurstyHeavyTailed => {
                let mut profile = self.ordinary(rng, key);
                // Busy enough that a burst is many calls, not a stray one.
                Self::ensure_volume(&mut profile, 500.0, 5_000.0);
                let bursts = Bursts {
                    per_day: uniform(rng, 3.0, 10.0),
                    minutes: (2, 15),
                    min_multiplier: 10.0,
                    max_multiplier: 100.0,
                    tail_index: uniform(rng, 1.1, 1.6),
                };
                let notes = format!(
                    "about {:.0} bursts a day of 10-100x its rate (Pareto tail {:.1}) for 2-15 min, from day one",
                    bursts.per_day, bursts.tail_index
                );
                profile.bursts = Some(bursts);
                CaseBuild::new(profile, run_start, run_end, notes)
            }
        }
    }
}

/// Flat traffic from local hour `opens` until `closes`, `floor` of it
/// outside, normalised to average 1.
fn office_hours_shape(opens: usize, closes: usize, floor: f64) -> [f64; 24] {
    let mut shape = [floor; 24];
    for slot in shape.iter_mut().take(closes.min(24)).skip(opens) {
        *slot = 1.0;
    }
    let mean: f64 = shape.iter().sum::<f64>() / 24.0;
    for slot in &mut shape {
        *slot /= mean;
    }
    shape
}

/// "+01:00" for 60 minutes east of UTC.
fn format_offset(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let minutes = minutes.abs();
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::net::Ipv4Addr;
    use std::sync::OnceLock;

    use super::*;
    use crate::eval::BenignCase;
    use crate::event::parse_ts;
    use crate::generate::GenerateConfig;
    use crate::generate::plan::{Plan, plan, role_counts};
    use crate::generate::random::stream;

    const RUN_START: &str = "2026-01-05T00:00:00Z";
    const DAYS: u32 = 10;

    /// A 1,000-key plan, planned once for all the checks.
    fn planned() -> &'static Plan {
        static PLAN: OnceLock<Plan> = OnceLock::new();
        PLAN.get_or_init(|| {
            plan(&GenerateConfig {
                keys: 1000,
                days: DAYS,
                seed: 2,
                start_ms: parse_ts(RUN_START).unwrap(),
                fingerprinter: crate::event::Fingerprinter::unkeyed(),
                abandoned_keys: 0,
            })
        })
    }

    fn run_start() -> i64 {
        parse_ts(RUN_START).unwrap()
    }

    fn run_end() -> i64 {
        run_start() + i64::from(DAYS) * DAY_MS
    }

    /// Each occurrence of `case`: its record, the key's position, its start.
    fn occurrences(case: HardCase) -> Vec<(&'static BenignCase, usize, i64)> {
        let plan = planned();
        let found: Vec<_> = plan
            .benign_cases
            .iter()
            .filter(|record| record.case == case.as_str())
            .map(|record| {
                let position = plan
                    .profiles
                    .iter()
                    .position(|profile| profile.key_id == record.key)
                    .expect("a case names a planned key");
                (record, position, parse_ts(&record.start).unwrap())
            })
            .collect();
        assert!(!found.is_empty(), "{case:?} occurs");
        found
    }

    fn owner_ips(profile: &KeyProfile) -> HashSet<Ipv4Addr> {
        profile
            .location_phases
            .iter()
            .flat_map(|phase| phase.sites.iter().flat_map(|site| site.ips.iter().copied()))
            .collect()
    }

    fn calls(position: usize, from_ms: i64, to_ms: i64) -> Vec<GenEvent> {
        let mut rng = stream(7, 7, position as u64);
        planned().profiles[position].owner_calls(&mut rng, from_ms, to_ms, run_start())
    }

    #[test]
    fn every_case_occurs_at_least_four_times_per_thousand_keys() {
        assert!(role_counts(1000).1 >= 4);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for record in &planned().benign_cases {
            *counts.entry(record.case.as_str()).or_default() += 1;
        }
        for case in HardCase::ALL {
            let wanted = if case == HardCase::KeyRotation { 8 } else { 4 };
            assert!(
                counts.get(case.as_str()).copied().unwrap_or(0) >= wanted,
                "{case:?}: {counts:?}"
            );
        }
    }

    #[test]
    fn export_release_adds_downloads_from_the_owners_places_and_client_answered_200() {
        for (record, position, release) in occurrences(HardCase::ReleaseExportEndpoints) {
            let profile = &planned().profiles[position];
            let before = calls(position, run_start(), release);
            assert!(before.iter().all(|event| !event.endpoint.starts_with("/v1/exports")));
            let after = calls(position, release, run_end());
            let exports: Vec<&GenEvent> = after
                .iter()
                .filter(|event| event.endpoint.starts_with("/v1/exports"))
                .collect();
            assert!(
                exports.iter().any(|event| event.endpoint.ends_with("/download")),
                "{}",
                record.notes
            );
            let ips = owner_ips(profile);
            for event in &exports {
                assert!(ips.contains(&event.ip) && profile.user_agents.contains(&event.user_agent));
            }
            let answered = exports.iter().filter(|event| event.status < 300).count();
            assert!(answered * 10 >= exports.len() * 9, "{answered} of {}", exports.len());
        }
    }

    #[test]
    fn token_refresh_calls_the_token_endpoint_once_an_hour_from_its_start() {
        for (_, position, from) in occurrences(HardCase::HourlyTokenRefresh) {
            let is_token = |event: &GenEvent| event.endpoint == "/oauth/token";
            assert!(!calls(position, run_start(), from).iter().any(is_token));
            let first_hour = (from.div_euclid(HOUR_MS) + 1) * HOUR_MS;
            let day = calls(position, first_hour, first_hour + 24 * HOUR_MS);
            let mut per_hour = [0usize; 24];
            for event in day.iter().filter(|event| is_token(event)) {
                assert_eq!((event.method, event.status), ("POST", 200));
                per_hour[((event.ts_ms - first_hour) / HOUR_MS) as usize] += 1;
            }
            assert_eq!(per_hour, [1; 24]);
        }
    }

    #[test]
    fn daylight_saving_moves_the_open_utc_hours_by_one() {
        for (record, position, change) in occurrences(HardCase::DaylightSavingShift) {
            let profile = &planned().profiles[position];
            let shift =
                profile.offset_change.expect("the offset changes").utc_offset_minutes - profile.utc_offset_minutes;
            assert_eq!(shift.abs(), 60, "{}", record.notes);
            // The UTC hours of a weekday at which the office is open,
            // before and after the change.
            let open_hours = |day_start: i64| -> Vec<i64> {
                let calls: Vec<f64> = (0..24)
                    .map(|hour| profile.expected_hourly_calls(day_start + hour * HOUR_MS, run_start()))
                    .collect();
                let busiest = calls.iter().copied().fold(0.0, f64::max);
                (0..24).filter(|&hour| calls[hour as usize] >= busiest / 2.0).collect()
            };
            let friday_before = (change - 2 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
            let tuesday_after = (change + 2 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
            let before = open_hours(friday_before);
            let after = open_hours(tuesday_after);
            assert!((8..=10).contains(&before.len()), "{before:?}");
            let moved_by = -i64::from(shift) / 60;
            let mut expected: Vec<i64> = before.iter().map(|hour| (hour + moved_by).rem_euclid(24)).collect();
            expected.sort_unstable();
            assert_eq!(after, expected, "{}", record.notes);
        }
    }

    #[test]
    fn retry_storm_is_dozens_of_401s_in_minutes_from_the_owners_address_and_client() {
        for (record, position, rotation) in occurrences(HardCase::AuthRetryStorm) {
            let profile = &planned().profiles[position];
            let storm = &planned().injected[position];
            assert!(storm.len() >= 30, "{}", record.notes);
            assert!(storm.iter().all(|event| event.status == 401));
            let first = storm.first().unwrap().ts_ms;
            let last = storm.last().unwrap().ts_ms;
            assert!(first >= rotation && last - first <= 10 * MINUTE_MS);
            let sources: HashSet<Ipv4Addr> = storm.iter().map(|event| event.ip).collect();
            assert_eq!(sources.len(), 1);
            assert!(owner_ips(profile).is_superset(&sources));
            assert!(storm.iter().all(|event| event.user_agent == profile.user_agents[0]));
            // Then ordinary calls again.
            let after = calls(position, last, last + 6 * HOUR_MS);
            assert!(after.iter().any(|event| event.status < 300));
        }
    }

    #[test]
    fn rotation_successor_has_no_calls_before_the_cutover_and_the_old_key_none_after() {
        let plan = planned();
        let occurrences = occurrences(HardCase::KeyRotation);
        for (record, position, cutover) in &occurrences {
            let profile = &plan.profiles[*position];
            let all = calls(*position, run_start(), run_end());
            assert!(!all.is_empty(), "{}", record.notes);
            if record.notes.starts_with("successor") {
                assert!(all.iter().all(|event| event.ts_ms >= *cutover));
                let (_, old_position, _) = occurrences
                    .iter()
                    .find(|(other, _, start)| other.key != record.key && start == cutover)
                    .expect("the retired key is in the case");
                let old = &plan.profiles[*old_position];
                assert_ne!(old.key_id, profile.key_id);
                assert_eq!(owner_ips(old), owner_ips(profile));
                assert_eq!(old.user_agents, profile.user_agents);
                assert_eq!(old.endpoints, profile.endpoints);
                assert_eq!(old.volume, profile.volume);
            } else {
                assert!(all.iter().all(|event| event.ts_ms < *cutover));
            }
        }
    }

    #[test]
    fn bursty_key_has_minutes_at_ten_times_its_usual_rate_from_day_one() {
        for (record, position, start) in occurrences(HardCase::BurstyHeavyTailed) {
            assert_eq!(start, run_start());
            let first_days = calls(position, run_start(), run_start() + 2 * DAY_MS);
            let mut per_five_minutes = vec![0usize; 2 * 24 * 12];
            for event in &first_days {
                per_five_minutes[((event.ts_ms - run_start()) / (5 * MINUTE_MS)) as usize] += 1;
            }
            let mut sorted = per_five_minutes.clone();
            sorted.sort_unstable();
            let median = sorted[sorted.len() / 2].max(1);
            let busiest = *sorted.last().unwrap();
            assert!(
                busiest >= 10 * median,
                "busiest {busiest} vs median {median}: {}",
                record.notes
            );
        }
    }
}
