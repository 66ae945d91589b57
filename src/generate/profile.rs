//! One key's ordinary behaviour — where it calls from, how much and when,
//! which endpoints, with which client — and the owner's traffic it produces
//! hour by hour.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::catalog::{EndpointTemplate, fill_path};
use super::random::{GenRng, WeightedTable, chance, index, log_normal, poisson, uniform, unit};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// One generated call, before it is turned into an [`crate::event::AccessEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenEvent {
    pub ts_ms: i64,
    pub ip: Ipv4Addr,
    pub method: &'static str,
    pub endpoint: String,
    pub status: u16,
    pub user_agent: Arc<str>,
    pub bytes_out: u64,
    /// The key id the call presents when it is not the stream's own key (a
    /// source spraying guessed key ids); `None` for the key's own calls.
    pub key_id: Option<Arc<str>>,
}

/// A network a key calls from, with the few addresses it uses there.
#[derive(Debug, Clone)]
pub struct Site {
    pub network: usize,
    pub ips: Vec<Ipv4Addr>,
    pub weight: f64,
}

/// How a key spreads its calls over its sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SitePicking {
    /// Each call independently, by weight (load-balanced egress, users).
    PerEvent,
    /// One site for a stretch of hours, then another (VPN egress that
    /// changes with the connection).
    AlternateEvery { hours: i64 },
}

/// Where the key calls from from `from_ms` on; no sites means no traffic
/// (its owner is in the air).
#[derive(Debug, Clone)]
pub struct LocationPhase {
    pub from_ms: i64,
    pub sites: Vec<Site>,
    pub picking: SitePicking,
    site_table: WeightedTable,
}

impl LocationPhase {
    pub fn new(from_ms: i64, sites: Vec<Site>, picking: SitePicking) -> LocationPhase {
        let weights: Vec<f64> = sites.iter().map(|site| site.weight).collect();
        LocationPhase {
            from_ms,
            sites,
            picking,
            site_table: WeightedTable::new(&weights),
        }
    }
}

/// Which endpoints the key calls from `from_ms` on: indexes into
/// [`KeyProfile::endpoints`] with their weights.
#[derive(Debug, Clone)]
pub struct EndpointPhase {
    pub from_ms: i64,
    pub endpoints: Vec<usize>,
    pub table: WeightedTable,
}

/// A scheduled job run (CI pipelines, nightly syncs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledRun {
    pub local_minute_of_day: i64,
    pub weekdays_only: bool,
    pub duration_minutes: i64,
    pub calls: f64,
}

/// How many calls a key makes when.
#[derive(Debug, Clone, PartialEq)]
pub enum Volume {
    /// Business-day rhythm in the key's own time zone.
    Seasonal {
        /// Calls on an ordinary weekday at the start of the run.
        weekday_calls: f64,
        /// Expected share of each local hour, averaging 1 over the day.
        hour_shape: [f64; 24],
        /// Weekend volume as a fraction of a weekday's.
        weekend_factor: f64,
        /// Organic growth per day, as a fraction.
        growth_per_day: f64,
    },
    /// Bursts at fixed local times, quiet otherwise.
    Scheduled { runs: Vec<ScheduledRun> },
}

/// Everything that decides one key's ordinary traffic.
#[derive(Debug, Clone)]
pub struct KeyProfile {
    pub key_id: String,
    pub service: usize,
    pub endpoints: Vec<EndpointTemplate>,
    pub endpoint_phases: Vec<EndpointPhase>,
    pub location_phases: Vec<LocationPhase>,
    pub user_agents: Vec<Arc<str>>,
    pub user_agent_table: WeightedTable,
    pub utc_offset_minutes: i32,
    pub volume: Volume,
    /// Half-open periods in which the owner calls at all.
    pub active_periods: Vec<(i64, i64)>,
    /// How many distinct records the key's calls touch.
    pub id_space: u64,
    /// Share of ordinary calls that fail with a client error.
    pub client_error_rate: f64,
    /// Calls made once an hour on top of the volume (a token refresh).
    pub hourly_calls: Vec<HourlyCall>,
    /// A change of the key's UTC offset (a daylight-saving change): the
    /// local clock keeps its rhythm, the UTC hours move.
    pub offset_change: Option<OffsetChange>,
    /// Heavy-tailed bursts on top of the volume, for keys whose traffic
    /// comes in bursts as a matter of course.
    pub bursts: Option<Bursts>,
}

/// One call every hour from `from_ms` on, at a fixed minute of the hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyCall {
    pub from_ms: i64,
    pub minute_of_hour: i64,
    pub template: EndpointTemplate,
}

/// The key's UTC offset becomes `utc_offset_minutes` at `from_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetChange {
    pub from_ms: i64,
    pub utc_offset_minutes: i32,
}

/// Bursts that start at random (Poisson, `per_day` a day), each lasting
/// `minutes` and running at a Pareto-distributed multiple of the key's
/// ordinary rate: `min_multiplier` and up with tail index `tail_index`,
/// capped at `max_multiplier`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bursts {
    pub per_day: f64,
    pub minutes: (i64, i64),
    pub min_multiplier: f64,
    pub max_multiplier: f64,
    pub tail_index: f64,
}

/// A business-hours curve with the given strength (0 flat, 1 strongly
/// peaked), normalised to average 1.
pub fn business_hour_shape(strength: f64, peak_local_hour: f64) -> [f64; 24] {
    let mut shape = [0.0; 24];
    for (hour, slot) in shape.iter_mut().enumerate() {
        let distance = hour as f64 + 0.5 - peak_local_hour;
        let bump = (-(distance * distance) / (2.0 * 3.2 * 3.2)).exp();
        *slot = (1.0 - strength) + strength * 3.0 * bump;
    }
    let mean: f64 = shape.iter().sum::<f64>() / 24.0;
    for slot in &mut shape {
        *slot /= mean;
    }
    shape
}

/// Monday = 0 ... Sunday = 6, of a local millisecond timestamp.
fn local_weekday(local_ms: i64) -> i64 {
    // 1970-01-01 was a Thursday.
    (local_ms.div_euclid(DAY_MS) + 3).rem_euclid(7)
}

impl KeyProfile {
    /// The key's offset from UTC at `ts_ms`, in minutes.
    pub fn offset_minutes_at(&self, ts_ms: i64) -> i32 {
        match self.offset_change {
            Some(change) if ts_ms >= change.from_ms => change.utc_offset_minutes,
            _ => self.utc_offset_minutes,
        }
    }

    fn local_ms(&self, ts_ms: i64) -> i64 {
        ts_ms + i64::from(self.offset_minutes_at(ts_ms)) * MINUTE_MS
    }

    pub fn is_active(&self, ts_ms: i64) -> bool {
        self.active_periods
            .iter()
            .any(|&(from, until)| (from..until).contains(&ts_ms))
    }

    /// Expected owner calls per hour around `ts_ms`, for attacks that scale
    /// with the key's own rate.
    pub fn expected_hourly_calls(&self, ts_ms: i64, run_start_ms: i64) -> f64 {
        match &self.volume {
            Volume::Seasonal { .. } => self.seasonal_lambda(ts_ms, run_start_ms),
            Volume::Scheduled { runs } => runs.iter().map(|run| run.calls).sum::<f64>() / 24.0,
        }
    }

    /// Average calls per day over a week, at the start of the run.
    pub fn mean_daily_calls(&self) -> f64 {
        match &self.volume {
            Volume::Seasonal {
                weekday_calls,
                weekend_factor,
                ..
            } => weekday_calls * (5.0 + 2.0 * weekend_factor) / 7.0,
            Volume::Scheduled { runs } => runs
                .iter()
                .map(|run| {
                    if run.weekdays_only {
                        run.calls * 5.0 / 7.0
                    } else {
                        run.calls
                    }
                })
                .sum(),
        }
    }

    fn seasonal_lambda(&self, ts_ms: i64, run_start_ms: i64) -> f64 {
        let Volume::Seasonal {
            weekday_calls,
            hour_shape,
            weekend_factor,
            growth_per_day,
        } = &self.volume
        else {
            return 0.0;
        };
        let local = self.local_ms(ts_ms);
        let local_hour = local.div_euclid(HOUR_MS).rem_euclid(24) as usize;
        let day_factor = if local_weekday(local) >= 5 {
            *weekend_factor
        } else {
            1.0
        };
        let days_in = (ts_ms - run_start_ms) as f64 / DAY_MS as f64;
        let growth = (1.0 + growth_per_day * days_in).max(0.5);
        weekday_calls / 24.0 * hour_shape[local_hour] * day_factor * growth
    }

    pub fn location_at(&self, ts_ms: i64) -> &LocationPhase {
        let position = self.location_phases.partition_point(|phase| phase.from_ms <= ts_ms);
        &self.location_phases[position.saturating_sub(1)]
    }

    pub fn endpoint_phase_at(&self, ts_ms: i64) -> &EndpointPhase {
        let position = self.endpoint_phases.partition_point(|phase| phase.from_ms <= ts_ms);
        &self.endpoint_phases[position.saturating_sub(1)]
    }

    /// An address the owner would use at `ts_ms`, if the owner can call then.
    pub fn owner_ip(&self, rng: &mut GenRng, ts_ms: i64) -> Option<Ipv4Addr> {
        let phase = self.location_at(ts_ms);
        if phase.sites.is_empty() {
            return None;
        }
        let site = match phase.picking {
            SitePicking::PerEvent => &phase.sites[phase.site_table.sample(rng)],
            SitePicking::AlternateEvery { hours } => {
                let block = ts_ms.div_euclid(HOUR_MS * hours.max(1));
                // A fixed scramble of the block number: alternation that is
                // not a plain round-robin, and the same on every run.
                let scrambled = (block as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
                &phase.sites[(scrambled % phase.sites.len() as u64) as usize]
            }
        };
        Some(site.ips[index(rng, site.ips.len())])
    }

    /// The user-agent the owner's client sends.
    pub fn owner_agent(&self, rng: &mut GenRng) -> Arc<str> {
        Arc::clone(&self.user_agents[self.user_agent_table.sample(rng)])
    }

    /// An endpoint from the owner's mix at `ts_ms` (index into `endpoints`).
    pub fn owner_endpoint(&self, rng: &mut GenRng, ts_ms: i64) -> usize {
        let phase = self.endpoint_phase_at(ts_ms);
        phase.endpoints[phase.table.sample(rng)]
    }

    /// An ordinary call by the owner (or by someone using the owner's
    /// client and endpoint mix) at `ts_ms` from `ip`.
    pub fn ordinary_call(&self, rng: &mut GenRng, ts_ms: i64, ip: Ipv4Addr, user_agent: Arc<str>) -> GenEvent {
        let template = &self.endpoints[self.owner_endpoint(rng, ts_ms)];
        let status = ordinary_status(rng, template.method, self.client_error_rate);
        GenEvent {
            ts_ms,
            ip,
            method: template.method,
            endpoint: fill_path(rng, &template.path, self.id_space, None),
            status,
            user_agent,
            bytes_out: response_bytes(rng, template, status),
            key_id: None,
        }
    }

    /// Appends the owner's calls in `[hour_start, hour_start + 1h)`.
    pub fn owner_hour(&self, rng: &mut GenRng, hour_start_ms: i64, run_start_ms: i64, out: &mut Vec<GenEvent>) {
        let hour_end_ms = hour_start_ms + HOUR_MS;
        if !self
            .active_periods
            .iter()
            .any(|&(from, until)| from < hour_end_ms && hour_start_ms < until)
        {
            return;
        }
        let first_new = out.len();
        match &self.volume {
            Volume::Seasonal { .. } => {
                let count = poisson(rng, self.seasonal_lambda(hour_start_ms, run_start_ms));
                for _ in 0..count {
                    // Given the count, Poisson arrivals are uniform in the hour.
                    let ts_ms = hour_start_ms + (unit(rng) * HOUR_MS as f64) as i64;
                    self.push_owner_call(rng, ts_ms, out);
                }
            }
            Volume::Scheduled { runs } => {
                for (run_index, run) in runs.iter().enumerate() {
                    self.scheduled_calls(rng, run_index, run, hour_start_ms, out);
                }
            }
        }
        if let Some(bursts) = &self.bursts {
            self.burst_calls(rng, bursts, hour_start_ms, run_start_ms, out);
        }
        for hourly in &self.hourly_calls {
            let ts_ms = hour_start_ms + hourly.minute_of_hour * MINUTE_MS + (unit(rng) * 20_000.0) as i64;
            if ts_ms < hourly.from_ms || !self.is_active(ts_ms) {
                continue;
            }
            let Some(ip) = self.owner_ip(rng, ts_ms) else {
                continue;
            };
            let user_agent = self.owner_agent(rng);
            out.push(GenEvent {
                ts_ms,
                ip,
                method: hourly.template.method,
                endpoint: hourly.template.path.clone(),
                status: 200,
                user_agent,
                bytes_out: response_bytes(rng, &hourly.template, 200),
                key_id: None,
            });
        }
        // Now and then a handful of calls fail authorisation together: an
        // expired token refresh, a permissions change rolled back. Ordinary,
        // and a baseline has to tolerate it.
        let new_calls = out.len() - first_new;
        if new_calls > 0 && chance(rng, 0.002) {
            let burst_status = if chance(rng, 0.5) { 401 } else { 403 };
            let burst_len = (1 + index(rng, 3)).min(new_calls);
            let burst_first = first_new + index(rng, new_calls - burst_len + 1);
            for event in &mut out[burst_first..burst_first + burst_len] {
                event.status = burst_status;
                event.bytes_out = 90 + (unit(rng) * 200.0) as u64;
            }
        }
    }

    /// The bursts starting in this hour, kept inside it so a key's calls
    /// stay in hour order.
    fn burst_calls(
        &self,
        rng: &mut GenRng,
        bursts: &Bursts,
        hour_start_ms: i64,
        run_start_ms: i64,
        out: &mut Vec<GenEvent>,
    ) {
        let base_hourly = self.expected_hourly_calls(hour_start_ms, run_start_ms).max(1.0);
        for _ in 0..poisson(rng, bursts.per_day / 24.0) {
            let minutes =
                bursts.minutes.0 + index(rng, (bursts.minutes.1 - bursts.minutes.0 + 1).max(1) as usize) as i64;
            let minutes = minutes.clamp(1, 59);
            // Pareto by inversion: heavy-tailed sizes, most bursts small.
            let multiplier =
                (bursts.min_multiplier * (1.0 - unit(rng)).powf(-1.0 / bursts.tail_index)).min(bursts.max_multiplier);
            let start = hour_start_ms + (unit(rng) * ((60 - minutes) * MINUTE_MS) as f64) as i64;
            let count = poisson(rng, base_hourly * multiplier * minutes as f64 / 60.0);
            for _ in 0..count {
                let ts_ms = start + (unit(rng) * (minutes * MINUTE_MS) as f64) as i64;
                self.push_owner_call(rng, ts_ms, out);
            }
        }
    }

    /// Every owner call in `[from_ms, to_ms)`, for checks on a profile.
    #[cfg(test)]
    pub fn owner_calls(&self, rng: &mut GenRng, from_ms: i64, to_ms: i64, run_start_ms: i64) -> Vec<GenEvent> {
        let mut calls = Vec::new();
        let mut hour = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
        while hour < to_ms {
            self.owner_hour(rng, hour, run_start_ms, &mut calls);
            hour += HOUR_MS;
        }
        calls.retain(|event| (from_ms..to_ms).contains(&event.ts_ms));
        calls.sort_by_key(|event| event.ts_ms);
        calls
    }

    fn push_owner_call(&self, rng: &mut GenRng, ts_ms: i64, out: &mut Vec<GenEvent>) {
        if !self.is_active(ts_ms) {
            return;
        }
        let Some(ip) = self.owner_ip(rng, ts_ms) else {
            return;
        };
        let user_agent = self.owner_agent(rng);
        out.push(self.ordinary_call(rng, ts_ms, ip, user_agent));
    }

    fn scheduled_calls(
        &self,
        rng: &mut GenRng,
        run_index: usize,
        run: &ScheduledRun,
        hour_start_ms: i64,
        out: &mut Vec<GenEvent>,
    ) {
        let offset_ms = i64::from(self.offset_minutes_at(hour_start_ms)) * MINUTE_MS;
        let hour_end_ms = hour_start_ms + HOUR_MS;
        // A run may start the local day before and spill into this hour.
        let local_day = (hour_start_ms + offset_ms).div_euclid(DAY_MS);
        for day in [local_day - 1, local_day] {
            if run.weekdays_only && local_weekday(day * DAY_MS) >= 5 {
                continue;
            }
            // Schedulers start a little late, by a different amount each day.
            let jitter_minutes =
                ((day as u64 ^ (run_index as u64) << 40).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 60) as i64;
            let run_start = day * DAY_MS - offset_ms + (run.local_minute_of_day + jitter_minutes) * MINUTE_MS;
            let run_end = run_start + run.duration_minutes.max(1) * MINUTE_MS;
            let overlap_start = run_start.max(hour_start_ms);
            let overlap_end = run_end.min(hour_end_ms);
            if overlap_start >= overlap_end {
                continue;
            }
            let share = (overlap_end - overlap_start) as f64 / (run_end - run_start) as f64;
            let count = poisson(rng, run.calls * share);
            for _ in 0..count {
                let ts_ms = overlap_start + (unit(rng) * (overlap_end - overlap_start) as f64) as i64;
                self.push_owner_call(rng, ts_ms, out);
            }
        }
    }
}

/// Status of an ordinary call: mostly success, a background of ordinary
/// client errors, rarely a server error.
pub fn ordinary_status(rng: &mut GenRng, method: &str, client_error_rate: f64) -> u16 {
    let draw = unit(rng);
    if draw < client_error_rate * 0.55 {
        return 404;
    }
    if draw < client_error_rate * 0.9 {
        return 400;
    }
    if draw < client_error_rate {
        return if method == "GET" { 429 } else { 422 };
    }
    if draw < client_error_rate + 0.0008 {
        return *super::random::pick(rng, &[500, 502, 503]);
    }
    match method {
        "POST" => 201,
        "DELETE" => 204,
        _ => 200,
    }
}

/// Response size for a call with `status`.
pub fn response_bytes(rng: &mut GenRng, template: &EndpointTemplate, status: u16) -> u64 {
    if template.method == "HEAD" || status == 204 {
        return 0;
    }
    if status >= 400 {
        return uniform(rng, 80.0, 400.0) as u64;
    }
    log_normal(rng, f64::from(template.typical_bytes.max(1)), 0.6).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::random::stream;

    fn profile(volume: Volume) -> KeyProfile {
        let endpoints = vec![EndpointTemplate {
            method: "GET",
            path: "/v1/orders/{n}".to_string(),
            typical_bytes: 1000,
        }];
        KeyProfile {
            key_id: "AKIAEXAMPLEEXAMPLE00".to_string(),
            service: 0,
            endpoints,
            endpoint_phases: vec![EndpointPhase {
                from_ms: i64::MIN,
                endpoints: vec![0],
                table: WeightedTable::new(&[1.0]),
            }],
            location_phases: vec![LocationPhase::new(
                i64::MIN,
                vec![Site {
                    network: 0,
                    ips: vec![Ipv4Addr::new(52, 95, 11, 7)],
                    weight: 1.0,
                }],
                SitePicking::PerEvent,
            )],
            user_agents: vec![Arc::from("stripe-python/7.1.0")],
            user_agent_table: WeightedTable::new(&[1.0]),
            utc_offset_minutes: 0,
            volume,
            active_periods: vec![(0, i64::MAX)],
            id_space: 100,
            client_error_rate: 0.01,
            hourly_calls: Vec::new(),
            offset_change: None,
            bursts: None,
        }
    }

    #[test]
    fn hour_shape_averages_one_and_peaks_in_business_hours() {
        let shape = business_hour_shape(0.9, 13.0);
        let mean: f64 = shape.iter().sum::<f64>() / 24.0;
        assert!((mean - 1.0).abs() < 1e-9);
        assert!(shape[13] > 3.0 * shape[3], "{shape:?}");
    }

    #[test]
    fn weekends_are_quieter_and_calls_stay_in_their_hour() {
        let key = profile(Volume::Seasonal {
            weekday_calls: 2400.0,
            hour_shape: business_hour_shape(0.5, 13.0),
            weekend_factor: 0.3,
            growth_per_day: 0.0,
        });
        let monday_noon = crate::event::parse_ts("2026-01-05T12:00:00Z").unwrap();
        let saturday_noon = monday_noon + 5 * DAY_MS;
        let mut rng = stream(1, 1, 1);
        let mut weekday = Vec::new();
        key.owner_hour(&mut rng, monday_noon, monday_noon, &mut weekday);
        let mut weekend = Vec::new();
        key.owner_hour(&mut rng, saturday_noon, monday_noon, &mut weekend);
        assert!(
            weekday.len() > 2 * weekend.len(),
            "{} vs {}",
            weekday.len(),
            weekend.len()
        );
        assert!(
            weekday
                .iter()
                .all(|event| (monday_noon..monday_noon + HOUR_MS).contains(&event.ts_ms))
        );
    }

    #[test]
    fn scheduled_runs_are_quiet_outside_their_window() {
        let key = profile(Volume::Scheduled {
            runs: vec![ScheduledRun {
                local_minute_of_day: 120,
                weekdays_only: false,
                duration_minutes: 10,
                calls: 500.0,
            }],
        });
        let midnight = crate::event::parse_ts("2026-01-06T00:00:00Z").unwrap();
        let mut rng = stream(1, 1, 1);
        let mut calls = Vec::new();
        for hour in 0..24 {
            key.owner_hour(&mut rng, midnight + hour * HOUR_MS, midnight, &mut calls);
        }
        assert!(calls.len() > 300);
        let run_start = midnight + 2 * HOUR_MS;
        assert!(
            calls
                .iter()
                .all(|event| (run_start..run_start + 30 * MINUTE_MS).contains(&event.ts_ms))
        );
    }
}
