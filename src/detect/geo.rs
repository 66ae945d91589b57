//! Geography: first use from a new country or network after learning, and
//! impossible travel (with repeated jumps as concurrent use from two places).

use serde_json::json;

use super::{Context, EventView, Finding, percent};
use crate::alert::Severity;
use crate::baseline::KeyState;
use crate::baseline::geo::{country_from_id, country_id, distance_km};
use crate::enrich::{Country, NetClass};
use crate::event::format_ts;

/// Jumps within this much event time count together as concurrent use.
const CONCURRENT_WINDOW_MS: i64 = 6 * 3_600_000;
/// Jumps that make concurrent use.
const CONCURRENT_JUMPS: usize = 3;
/// Jump times kept per key.
const MAX_JUMPS_KEPT: usize = 64;

fn baseline_countries(state: &KeyState) -> String {
    let total = state.geo.countries.total();
    if total <= 0.0 {
        return "none".into();
    }
    let mut parts: Vec<String> = state
        .geo
        .countries
        .ranked()
        .iter()
        .take(5)
        .map(|entry| {
            format!(
                "{} {}",
                country_from_id(entry.id).as_str(),
                percent(entry.weight / total)
            )
        })
        .collect();
    if state.geo.countries.other > 0.0 {
        parts.push(format!("other {}", percent(state.geo.countries.other_share())));
    }
    parts.join(", ")
}

fn baseline_asns(state: &KeyState) -> String {
    let total = state.geo.asns.total();
    if total <= 0.0 {
        return "none".into();
    }
    state
        .geo
        .asns
        .ranked()
        .iter()
        .take(5)
        .map(|entry| format!("AS{} {}", entry.id, percent(entry.weight / total)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_global(state: &KeyState, ctx: &Context) -> bool {
    let geo_model = &ctx.model.geo;
    state.geo.significant_countries(0.01) >= geo_model.global_key_countries || state.geo.countries.other_share() > 0.1
}

/// Whether the key's previous located use was long enough ago to have
/// travelled here at a plausible speed (a person on a journey rather than a
/// second party using the key). `None` without a previous location.
fn plausible_journey(state: &KeyState, view: &EventView, ctx: &Context) -> Option<bool> {
    let previous = state.geo.last?;
    if !view.geo.has_location {
        return None;
    }
    let geo_model = &ctx.model.geo;
    let distance = distance_km(previous.lat, previous.lon, view.geo.lat, view.geo.lon);
    let hours = (view.ts_ms - previous.ts_ms).max(0) as f64 / 3_600_000.0;
    Some(distance <= hours * geo_model.max_speed_kmh)
}

/// New country or network.
pub fn check_new_place(state: &KeyState, view: &EventView, ctx: &Context, out: &mut Vec<Finding>) {
    if view.geo.class != NetClass::Public || !view.geo.country.is_known() {
        return;
    }
    let geo_model = &ctx.model.geo;
    let days = (view.ts_ms - state.first_ts) as f64 / 86_400_000.0;
    let country_known = state.geo.countries.contains(country_id(view.geo.country));
    let asn_known = view.geo.asn == 0 || state.geo.asns.contains(view.geo.asn);
    let asn_saturated = state.geo.asns.evicted > 0;
    if !country_known && state.has_learned(view.ts_ms, &geo_model.new_country) {
        let global = is_global(state, ctx);
        // The key's own provider in a new country: a new region of a
        // deployment, a VPN exit; not a second party by itself.
        let asn_established = view.geo.asn != 0
            && state.geo.asns.get(view.geo.asn).is_some_and(|entry| {
                view.ts_ms - entry.first_ts >= geo_model.established_after.as_millis() as i64
                    && state.geo.asns.share(view.geo.asn) >= geo_model.established_share
            });
        let journey = plausible_journey(state, view, ctx);
        let severity = if global || asn_established || journey == Some(true) {
            Severity::Low
        } else {
            Severity::Medium
        };
        let names = ctx.geo.names(view.ip);
        let place = names
            .city
            .clone()
            .map_or(view.geo.country.as_str().to_string(), |city| {
                format!("{city}, {}", view.geo.country.as_str())
            });
        let summary = format!(
            "first use from country {} ({place}, AS{}); baseline {} over {:.0} days",
            view.geo.country.as_str(),
            view.geo.asn,
            baseline_countries(state),
            days
        );
        out.push(Finding {
            detector: "new_country",
            severity,
            score: if severity == Severity::Low { 0.5 } else { 0.8 },
            window_start_ms: view.ts_ms,
            summary,
            evidence: json!({
                "observed": {
                    "ip": view.ip.to_string(),
                    "country": view.geo.country.as_str(),
                    "country_name": names.country,
                    "city": names.city,
                    "asn": view.geo.asn,
                    "as_org": names.org,
                    "network_known_for_key": asn_known,
                    "reachable_since_last_use": journey,
                },
                "baseline": {
                    "countries": baseline_countries(state),
                    "networks": baseline_asns(state),
                    "days": (days * 10.0).round() / 10.0,
                    "events": state.events,
                    "global_key": global,
                },
            }),
        });
        return;
    }
    if country_known && !asn_known && !asn_saturated && state.has_learned(view.ts_ms, &geo_model.new_asn) {
        let names = ctx.geo.names(view.ip);
        out.push(Finding {
            detector: "new_asn",
            severity: Severity::Low,
            score: 0.4,
            window_start_ms: view.ts_ms,
            summary: format!(
                "first use from network AS{} ({}) in known country {}; baseline {}",
                view.geo.asn,
                names.org.clone().unwrap_or_else(|| "unknown org".into()),
                view.geo.country.as_str(),
                baseline_asns(state)
            ),
            evidence: json!({
                "observed": {"ip": view.ip.to_string(), "asn": view.geo.asn, "as_org": names.org, "country": view.geo.country.as_str()},
                "baseline": {"networks": baseline_asns(state), "countries": baseline_countries(state)},
            }),
        });
    }
}

/// Impossible travel between the previous located use and this one; several
/// jumps close together are concurrent use from two places.
pub fn check_travel(state: &mut KeyState, view: &EventView, ctx: &Context, out: &mut Vec<Finding>) {
    if view.geo.class != NetClass::Public || !view.geo.has_location {
        return;
    }
    let geo_model = &ctx.model.geo;
    let Some(previous) = state.geo.last else {
        return;
    };
    if !state.has_learned(view.ts_ms, &geo_model.impossible_travel) {
        return;
    }
    let distance = distance_km(previous.lat, previous.lon, view.geo.lat, view.geo.lon);
    let error = f64::from(previous.accuracy_km) + f64::from(view.geo.accuracy_km) + 2.0 * geo_model.location_error_km;
    let credible_distance = distance - error;
    if credible_distance <= geo_model.min_distance_km {
        return;
    }
    let elapsed_ms = (view.ts_ms - previous.ts_ms).max(1000);
    let hours = elapsed_ms as f64 / 3_600_000.0;
    let speed = credible_distance / hours;
    if speed <= geo_model.max_speed_kmh {
        return;
    }
    let previous_country = Country(previous.country);
    let established_share = geo_model.established_share;
    let min_age_ms = geo_model.established_after.as_millis() as i64;
    let from_established = state.geo.is_established(
        previous_country,
        previous.asn,
        established_share,
        view.ts_ms,
        min_age_ms,
    );
    let to_established = state.geo.is_established(
        view.geo.country,
        view.geo.asn,
        established_share,
        view.ts_ms,
        min_age_ms,
    );
    if from_established && to_established {
        // Both places are habitual for this key (multi-region service,
        // corporate VPN egress): not travel at all.
        return;
    }
    state.geo.jumps.retain(|ts| view.ts_ms - *ts <= CONCURRENT_WINDOW_MS);
    state.geo.jumps.push(view.ts_ms);
    if state.geo.jumps.len() > MAX_JUMPS_KEPT {
        // The first jump dates the episode; the count only needs to be large.
        state.geo.jumps.remove(1);
    }
    let global = is_global(state, ctx);
    // One provider's network in two regions at once is what a deployment
    // does while it moves between regions; only an overlap that lasts longer
    // than a cutover says the key was copied.
    let same_network = previous.asn != 0 && previous.asn == view.geo.asn;
    let episode_ms = view.ts_ms - state.geo.jumps[0];
    let overlap_ms = geo_model.same_network_overlap.as_millis() as i64;
    let concurrent =
        state.geo.jumps.len() >= CONCURRENT_JUMPS && !global && (!same_network || episode_ms >= overlap_ms);
    let names_now = ctx.geo.names(view.ip);
    let names_before = ctx.geo.names(previous.ip);
    let place = |names: &crate::enrich::GeoNames, country: &str| {
        names
            .city
            .clone()
            .map_or(country.to_string(), |city| format!("{city}, {country}"))
    };
    let place_before = place(&names_before, previous_country.as_str());
    let place_now = place(&names_now, view.geo.country.as_str());
    let evidence = json!({
        "previous": {
            "ts": format_ts(previous.ts_ms),
            "ip": previous.ip.to_string(),
            "place": place_before,
            "asn": previous.asn,
            "established": from_established,
        },
        "current": {
            "ts": format_ts(view.ts_ms),
            "ip": view.ip.to_string(),
            "place": place_now,
            "asn": view.geo.asn,
            "as_org": names_now.org,
            "established": to_established,
        },
        "distance_km": distance.round(),
        "distance_after_geoip_error_km": credible_distance.round(),
        "elapsed_s": elapsed_ms / 1000,
        "speed_kmh": speed.round(),
        "max_speed_kmh": geo_model.max_speed_kmh,
        "baseline": {"countries": baseline_countries(state), "networks": baseline_asns(state)},
        "recent_jumps": state.geo.jumps.len(),
        "same_network": same_network,
        "episode_s": episode_ms / 1000,
    });
    if concurrent {
        out.push(Finding {
            detector: "concurrent_use",
            severity: Severity::Critical,
            score: 0.99,
            window_start_ms: state.geo.jumps[0],
            summary: format!(
                "key used alternately from {place_before} and {place_now}, {:.0} km apart, {} jumps in {}",
                distance,
                state.geo.jumps.len(),
                humantime::format_duration(std::time::Duration::from_secs((episode_ms / 1000).max(0) as u64))
            ),
            evidence,
        });
        return;
    }
    let severity = if global || same_network {
        Severity::Low
    } else {
        Severity::High
    };
    out.push(Finding {
        detector: "impossible_travel",
        severity,
        score: (1.0 - geo_model.max_speed_kmh / speed).clamp(0.0, 0.999),
        window_start_ms: previous.ts_ms,
        summary: format!(
            "{place_before} to {place_now}: {:.0} km in {} at {:.0} km/h",
            distance,
            humantime::format_duration(std::time::Duration::from_secs((elapsed_ms / 1000) as u64)),
            speed
        ),
        evidence,
    });
}

#[cfg(test)]
mod tests {
    use crate::alert::Severity;
    use crate::detect::testkit::*;

    #[test]
    fn london_then_sydney_ten_minutes_later_is_impossible_travel() {
        let mut engine = new_engine();
        let mut events = history("AKIAGEOTEST000000001", "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(
            last + 10 * 60_000,
            "AKIAGEOTEST000000001",
            ip("sydney", 7),
            "/v1/orders",
            200,
        ));
        let alerts = alerts(&mut engine, &events);
        let travel = of(&alerts, "impossible_travel");
        assert_eq!(travel.len(), 1, "{alerts:#?}");
        assert_eq!(travel[0].severity, Severity::High);
        assert!(
            travel[0].summary.contains("London") && travel[0].summary.contains("Sydney"),
            "{}",
            travel[0].summary
        );
        assert!(travel[0].evidence["speed_kmh"].as_f64().unwrap() > 900.0);
    }

    #[test]
    fn short_hops_and_slow_journeys_are_not_impossible_travel() {
        let mut engine = new_engine();
        let mut events = history("AKIAGEOTEST000000002", "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        // Manchester is 262 km from London: below the minimum distance.
        events.push(event(
            last + 60_000,
            "AKIAGEOTEST000000002",
            ip("manchester", 1),
            "/v1/orders",
            200,
        ));
        // Sydney a day and a half later: a plausible flight.
        events.push(event(
            last + 36 * HOUR,
            "AKIAGEOTEST000000002",
            ip("sydney", 1),
            "/v1/orders",
            200,
        ));
        let alerts = alerts(&mut engine, &events);
        assert!(of(&alerts, "impossible_travel").is_empty(), "{alerts:#?}");
    }

    #[test]
    fn alternating_between_established_regions_is_not_travel() {
        let mut engine = new_engine();
        let key = "AKIAGEOTEST000000003";
        let mut events = Vec::new();
        for minute in 0..(5 * 24 * 60) {
            let place = if minute % 2 == 0 {
                "frankfurt_aws"
            } else {
                "virginia_aws"
            };
            events.push(event(
                T0 + minute * 60_000,
                key,
                ip(place, (minute % 10) as u16),
                "/v1/orders",
                200,
            ));
        }
        let alerts = alerts(&mut engine, &events);
        assert!(
            of(&alerts, "impossible_travel").is_empty() && of(&alerts, "concurrent_use").is_empty(),
            "{alerts:#?}"
        );
    }

    #[test]
    fn alternating_between_london_and_sao_paulo_is_concurrent_use() {
        let mut engine = new_engine();
        let key = "AKIAGEOTEST000000004";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        for step in 1..=8 {
            let place = if step % 2 == 0 { "london" } else { "saopaulo" };
            events.push(event(last + step * 5 * 60_000, key, ip(place, 3), "/v1/orders", 200));
        }
        let alerts = alerts(&mut engine, &events);
        let concurrent = of(&alerts, "concurrent_use");
        assert_eq!(concurrent.len(), 1, "{alerts:#?}");
        assert_eq!(concurrent[0].severity, Severity::Critical);
    }

    #[test]
    fn new_country_is_medium_on_a_new_network_and_low_on_a_known_one() {
        let mut engine = new_engine();
        let mut events = history("AKIAGEOTEST000000005", "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        // Paris ten minutes after London: too close for impossible travel,
        // too fast for a journey.
        events.push(event(
            last + 10 * 60_000,
            "AKIAGEOTEST000000005",
            ip("paris", 1),
            "/v1/orders",
            200,
        ));
        let found = alerts(&mut engine, &events);
        let new_country = of(&found, "new_country");
        assert_eq!(new_country.len(), 1, "{found:#?}");
        assert_eq!(new_country[0].severity, Severity::Medium);
        assert!(
            new_country[0].summary.contains("FR") && new_country[0].summary.contains("GB 100%"),
            "{}",
            new_country[0].summary
        );

        // A service moving between two regions of its own cloud provider.
        let mut engine = new_engine();
        let mut events = history("AKIAGEOTEST000000006", "virginia_aws", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(
            last + 12 * HOUR,
            "AKIAGEOTEST000000006",
            ip("frankfurt_aws", 1),
            "/v1/orders",
            200,
        ));
        let found = alerts(&mut engine, &events);
        let new_country = of(&found, "new_country");
        assert_eq!(new_country.len(), 1, "{found:#?}");
        assert_eq!(new_country[0].severity, Severity::Low);
    }

    #[test]
    fn a_journey_at_plausible_speed_is_low() {
        let mut engine = new_engine();
        let mut events = history("AKIAGEOTEST000000008", "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(
            last + 30 * HOUR,
            "AKIAGEOTEST000000008",
            ip("sydney", 1),
            "/v1/orders",
            200,
        ));
        let found = alerts(&mut engine, &events);
        let new_country = of(&found, "new_country");
        assert_eq!(new_country.len(), 1, "{found:#?}");
        assert_eq!(new_country[0].severity, Severity::Low);
        assert_eq!(new_country[0].evidence["observed"]["reachable_since_last_use"], true);
    }

    #[test]
    fn a_young_key_is_not_judged() {
        let mut engine = new_engine();
        let mut events = history("AKIAGEOTEST000000007", "london", 1, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(
            last + 3 * HOUR,
            "AKIAGEOTEST000000007",
            ip("paris", 1),
            "/v1/orders",
            200,
        ));
        let found = alerts(&mut engine, &events);
        assert!(of(&found, "new_country").is_empty(), "{found:#?}");
    }
}
