//! Geography: first use from a new country, network or region after
//! learning, weighed by the kind of network (a cloud, hosting or anonymising
//! network the key never used is worth a look even at home; a residential
//! or mobile one in the key's home region is not), a data-centre network in
//! two regions at once for longer than a cutover, and impossible travel
//! (with repeated jumps as concurrent use from two places).

use serde_json::json;

use super::{Context, Finding, percent};
use crate::baseline::KeyState;
use crate::baseline::geo::{Jump, country_from_id, country_id, distance_km, place_of, region_key, region_label};
use crate::detector::{Detector, Severity};
use crate::enrich::{Country, NetClass, ResolvedEvent};
use crate::event::format_ts;

/// Jumps in one episode that make concurrent use.
const CONCURRENT_JUMPS: usize = 3;

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
fn plausible_journey(state: &KeyState, event: &ResolvedEvent, ctx: &Context) -> Option<bool> {
    // A late event's time is its key's newest, not its own: no journey
    // can be measured from it.
    if ctx.novelty.late {
        return None;
    }
    let previous = state.geo.last?;
    if !event.geo.has_location {
        return None;
    }
    let geo_model = &ctx.model.geo;
    let distance = distance_km(previous.lat, previous.lon, event.geo.lat, event.geo.lon);
    let hours = (event.ts_ms - previous.ts_ms).max(0) as f64 / 3_600_000.0;
    Some(distance <= hours * geo_model.max_speed_kmh)
}

/// New country or network.
pub fn check_new_place(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    if event.geo.class != NetClass::Public || !event.geo.country.is_known() {
        return;
    }
    let geo_model = &ctx.model.geo;
    let days = (event.ts_ms - state.first_ts) as f64 / 86_400_000.0;
    let country_known = state.geo.countries.contains(country_id(event.geo.country));
    let asn_known = event.geo.asn == 0 || state.geo.asns.contains(event.geo.asn);
    let asn_saturated = state.geo.asns.evicted > 0;
    if !country_known && state.has_learned(event.ts_ms, &geo_model.new_country) {
        let global = is_global(state, ctx);
        let rentable_new = event.geo.kind.is_rentable() && !asn_known;
        // A full country table cannot say "never seen": only a rented or
        // anonymising network new to the key is still worth reporting.
        if state.geo.countries.evicted > 0 && !rentable_new {
            return;
        }
        // The key's own provider in a new country: a new region of a
        // deployment, a VPN exit; not a second party by itself.
        let asn_established = event.geo.asn != 0
            && state.geo.asns.get(event.geo.asn).is_some_and(|entry| {
                event.ts_ms - entry.first_ts >= geo_model.established_after.as_millis() as i64
                    && state.geo.asns.share(event.geo.asn) >= geo_model.established_share
            });
        let journey = plausible_journey(state, event, ctx);
        // A global key explains a new country only while its set of
        // countries is still growing: one whose countries have not changed
        // for `global_settled` has shown where its users are.
        let newest_country_ms = state.geo.countries.entries.iter().map(|entry| entry.first_ts).max();
        let global_settled = global
            && newest_country_ms
                .is_some_and(|newest| event.ts_ms - newest >= geo_model.global_settled.as_millis() as i64);
        // A rented or anonymising network the key never used: a journey or
        // a global key does not explain it.
        let explained = (global && !global_settled) || asn_established || journey == Some(true);
        let severity = if !rentable_new && explained {
            Severity::Low
        } else {
            Severity::Medium
        };
        let names = ctx.geo.names(event.ip);
        let place = names
            .city
            .clone()
            .map_or(event.geo.country.as_str().to_string(), |city| {
                format!("{city}, {}", event.geo.country.as_str())
            });
        let summary = format!(
            "first use from country {} ({place}, AS{}); baseline {} over {:.0} days",
            event.geo.country.as_str(),
            event.geo.asn,
            baseline_countries(state),
            days
        );
        out.push(Finding {
            detector: Detector::NewCountry,
            severity,
            score: if severity == Severity::Low { 0.5 } else { 0.8 },
            window_start_ms: event.ts_ms,
            subject: event.geo.country.as_str().to_string(),
            summary,
            evidence: json!({
                "observed": {
                    "ip": event.ip.to_string(),
                    "country": event.geo.country.as_str(),
                    "country_name": names.country,
                    "city": names.city,
                    "asn": event.geo.asn,
                    "as_org": names.org,
                    "network_known_for_key": asn_known,
                    "network_kind": event.geo.kind.as_str(),
                    "reachable_since_last_use": journey,
                },
                "baseline": {
                    "countries": baseline_countries(state),
                    "networks": baseline_asns(state),
                    "days": (days * 10.0).round() / 10.0,
                    "events": state.events,
                    "global_key": global,
                    "global_key_settled": global_settled,
                },
            }),
        });
        return;
    }
    if country_known && !asn_known && !asn_saturated && state.has_learned(event.ts_ms, &geo_model.new_asn) {
        let kind = event.geo.kind;
        // A second carrier at home (a phone, a new broadband line) is the
        // owner; a rented server or a VPN in the home country may not be.
        let home_region = state
            .geo
            .is_established_region(region_key(&event.geo), event.ts_ms, geo_model);
        if kind.is_consumer() && home_region {
            return;
        }
        let severity = if kind.is_rentable() {
            Severity::Medium
        } else {
            Severity::Low
        };
        let names = ctx.geo.names(event.ip);
        out.push(Finding {
            detector: Detector::NewAsn,
            severity,
            score: if severity == Severity::Low { 0.4 } else { 0.7 },
            window_start_ms: event.ts_ms,
            subject: format!("AS{}", event.geo.asn),
            summary: format!(
                "first use from {} network AS{} ({}) in known country {}; baseline {}",
                kind.as_str(),
                event.geo.asn,
                names.org.clone().unwrap_or_else(|| "unknown org".into()),
                event.geo.country.as_str(),
                baseline_asns(state)
            ),
            evidence: json!({
                "observed": {
                    "ip": event.ip.to_string(),
                    "asn": event.geo.asn,
                    "as_org": names.org,
                    "network_kind": kind.as_str(),
                    "country": event.geo.country.as_str(),
                    "city": names.city,
                    "home_region": home_region,
                },
                "baseline": {"networks": baseline_asns(state), "countries": baseline_countries(state)},
            }),
        });
    }
}

/// The key's places for evidence: `AS16509/2925533 80%`.
fn baseline_places(state: &KeyState) -> String {
    let places = &state.geo.network_places;
    let total = places.total();
    if total <= 0.0 {
        return "none".into();
    }
    places
        .ranked()
        .iter()
        .take(5)
        .map(|place| {
            format!(
                "AS{}/{} {}",
                place.asn,
                region_label(place.region),
                percent(place.weight / total)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A known network in a region the key never used it from, and a
/// data-centre network in two regions at once for longer than a cutover.
///
/// The first use is low: it is how a deployment grows into a region, and a
/// new country is [`check_new_place`]'s to judge. Residential and mobile
/// networks move their addresses between cities of one country, so a new
/// city of one in a known country says nothing. The overlap is medium: a
/// cutover runs both regions for a couple of hours and then only the new
/// one, while a copy of the key runs beside the owner.
pub fn check_new_region(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    if event.geo.class != NetClass::Public || event.geo.asn == 0 {
        return;
    }
    let geo_model = &ctx.model.geo;
    let Some((asn, region)) = place_of(&event.geo) else {
        return;
    };
    // Named only when a finding is made: this runs on every event.
    let subject = || format!("AS{asn}/{}", region_label(region));
    if let Some(overlap) = ctx.novelty.region_overlap {
        let names_now = ctx.geo.names(event.ip);
        let names_before = ctx.geo.names(overlap.established.ip);
        let place_now = names_now.city.clone().unwrap_or_else(|| region_label(region));
        let place_before = names_before
            .city
            .clone()
            .unwrap_or_else(|| region_label(overlap.established.region));
        let overlap_text =
            humantime::format_duration(std::time::Duration::from_secs((overlap.overlap_ms / 1000).max(0) as u64));
        out.push(Finding {
            detector: Detector::NewRegion,
            severity: Severity::Medium,
            score: 0.8,
            window_start_ms: overlap.new_since_ms,
            subject: subject(),
            summary: format!(
                "AS{asn} ({}) used from {place_now} alongside the key's established {place_before} for {overlap_text}, longer than a cutover ({})",
                event.geo.kind.as_str(),
                humantime::format_duration(geo_model.same_network_overlap)
            ),
            evidence: json!({
                "observed": {
                    "ip": event.ip.to_string(),
                    "asn": asn,
                    "as_org": names_now.org,
                    "network_kind": event.geo.kind.as_str(),
                    "country": event.geo.country.as_str(),
                    "city": names_now.city,
                    "region": region_label(region),
                    "first_use": format_ts(overlap.new_since_ms),
                },
                "established": {
                    "ip": overlap.established.ip.to_string(),
                    "city": names_before.city,
                    "region": region_label(overlap.established.region),
                    "first_use": format_ts(overlap.established.first_ts),
                    "last_use": format_ts(overlap.established.last_ts),
                },
                "overlap_s": overlap.overlap_ms / 1000,
                "cutover_allowance_s": geo_model.same_network_overlap.as_secs(),
                "baseline": {"places": baseline_places(state)},
            }),
        });
        return;
    }
    let places = &state.geo.network_places;
    if places.get(asn, region).is_some()
        || places.evicted > 0
        || !state.geo.asns.contains(asn)
        || !state.geo.countries.contains(country_id(event.geo.country))
        || event.geo.kind.is_consumer()
        || !state.has_learned(event.ts_ms, &geo_model.new_region)
    {
        return;
    }
    let names = ctx.geo.names(event.ip);
    let place_now = names.city.clone().unwrap_or_else(|| region_label(region));
    out.push(Finding {
        detector: Detector::NewRegion,
        severity: Severity::Low,
        score: 0.4,
        window_start_ms: event.ts_ms,
        subject: subject(),
        summary: format!(
            "first use of known network AS{asn} ({}, {}) from {place_now}, {}; baseline {}",
            names.org.clone().unwrap_or_else(|| "unknown org".into()),
            event.geo.kind.as_str(),
            event.geo.country.as_str(),
            baseline_places(state)
        ),
        evidence: json!({
            "observed": {
                "ip": event.ip.to_string(),
                "asn": asn,
                "as_org": names.org,
                "network_kind": event.geo.kind.as_str(),
                "country": event.geo.country.as_str(),
                "city": names.city,
                "region": region_label(region),
            },
            "baseline": {"places": baseline_places(state), "networks": baseline_asns(state)},
        }),
    });
}

/// Impossible travel between the previous located use and this one; several
/// jumps in one episode are concurrent use from two places. Judged before
/// the event is absorbed, counting it among the jumps it will join.
pub fn check_travel(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let geo_model = &ctx.model.geo;
    let Some(Jump {
        previous,
        distance_km: distance,
        credible_distance_km: credible_distance,
        elapsed_ms,
        speed_kmh: speed,
        from_established,
        to_established,
    }) = ctx.novelty.travel
    else {
        return;
    };
    let previous_country = Country(previous.country);
    let (episode_start_ms, recent_jumps) = state.geo.jumps_with(event.ts_ms);
    let global = is_global(state, ctx);
    if global {
        // A key used around the world jumps between its countries all day:
        // a low alert every few hours would say only that. A new country
        // on it is still reported.
        return;
    }
    // One provider's network in two regions at once is what a deployment
    // does while it moves between regions; only an overlap that lasts longer
    // than a cutover says the key was copied.
    let same_network = previous.asn != 0 && previous.asn == event.geo.asn;
    let episode_ms = event.ts_ms - episode_start_ms;
    let overlap_ms = geo_model.same_network_overlap.as_millis() as i64;
    // Both regions were in use from the episode's first jump until the
    // previous place's last use; a quiet key's first call after a cutover
    // still jumps from the old region, hours later, without any overlap.
    let both_in_use_ms = previous.ts_ms - episode_start_ms;
    let concurrent = recent_jumps >= CONCURRENT_JUMPS && (!same_network || both_in_use_ms >= overlap_ms);
    let names_now = ctx.geo.names(event.ip);
    let names_before = ctx.geo.names(previous.ip);
    let place = |names: &crate::enrich::GeoNames, country: &str| {
        names
            .city
            .clone()
            .map_or(country.to_string(), |city| format!("{city}, {country}"))
    };
    let place_before = place(&names_before, previous_country.as_str());
    let place_now = place(&names_now, event.geo.country.as_str());
    let evidence = json!({
        "previous": {
            "ts": format_ts(previous.ts_ms),
            "ip": previous.ip.to_string(),
            "place": place_before,
            "asn": previous.asn,
            "established": from_established,
        },
        "current": {
            "ts": format_ts(event.ts_ms),
            "ip": event.ip.to_string(),
            "place": place_now,
            "asn": event.geo.asn,
            "as_org": names_now.org,
            "established": to_established,
        },
        "distance_km": distance.round(),
        "distance_after_geoip_error_km": credible_distance.round(),
        "elapsed_s": elapsed_ms / 1000,
        "speed_kmh": speed.round(),
        "max_speed_kmh": geo_model.max_speed_kmh,
        "baseline": {"countries": baseline_countries(state), "networks": baseline_asns(state)},
        "recent_jumps": recent_jumps,
        "same_network": same_network,
        "episode_s": episode_ms / 1000,
        "both_in_use_s": both_in_use_ms / 1000,
    });
    if concurrent {
        out.push(Finding {
            detector: Detector::ConcurrentUse,
            severity: Severity::Critical,
            score: 0.99,
            window_start_ms: episode_start_ms,
            subject: String::new(),
            summary: format!(
                "key used alternately from {place_before} and {place_now}, {:.0} km apart, {} jumps in {}",
                distance,
                recent_jumps,
                humantime::format_duration(std::time::Duration::from_secs((episode_ms / 1000).max(0) as u64))
            ),
            evidence,
        });
        return;
    }
    let severity = if same_network { Severity::Low } else { Severity::High };
    out.push(Finding {
        detector: Detector::ImpossibleTravel,
        severity,
        score: (1.0 - geo_model.max_speed_kmh / speed).clamp(0.0, 0.999),
        window_start_ms: previous.ts_ms,
        subject: String::new(),
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
    use crate::detect::testkit::*;
    use crate::detector::Severity;

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

    /// Alerts of any detector at medium or above.
    fn serious(found: &[crate::alert::Alert]) -> Vec<&crate::alert::Alert> {
        found
            .iter()
            .filter(|alert| alert.severity >= Severity::Medium)
            .collect()
    }

    #[test]
    fn a_hosting_network_never_used_is_medium_even_in_the_home_city() {
        for (index, place) in ["london_hosting", "london_digitalocean"].iter().enumerate() {
            let mut engine = new_engine();
            let key = format!("AKIAGEOKIND0000000{index}");
            let mut events = history(&key, "london", 5, 12, ENDPOINTS);
            let last = events.last().unwrap().ts_ms;
            events.push(event(last + 10 * 60_000, &key, ip(place, 3), "/v1/orders", 200));
            let found = alerts(&mut engine, &events);
            let new_asn = of(&found, "new_asn");
            assert_eq!(new_asn.len(), 1, "{place}: {found:#?}");
            assert_eq!(new_asn[0].severity, Severity::Medium, "{place}");
            assert_eq!(new_asn[0].evidence["observed"]["network_kind"], "hosting", "{place}");
        }
    }

    #[test]
    fn a_residential_or_mobile_network_in_the_home_city_is_not_news() {
        for (index, place) in ["london_cable", "london_mobile"].iter().enumerate() {
            let mut engine = new_engine();
            let key = format!("AKIAGEOKIND0000001{index}");
            let mut events = history(&key, "london", 5, 12, ENDPOINTS);
            let last = events.last().unwrap().ts_ms;
            events.push(event(last + 10 * 60_000, &key, ip(place, 3), "/v1/orders", 200));
            let found = alerts(&mut engine, &events);
            assert!(of(&found, "new_asn").is_empty(), "{place}: {found:#?}");
            assert!(serious(&found).is_empty(), "{place}: {found:#?}");
        }
    }

    #[test]
    fn a_new_country_on_a_never_used_cloud_is_medium_even_as_a_plausible_journey() {
        let mut engine = new_engine();
        let key = "AKIAGEOKIND00000020";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        // Frankfurt a day later is a plausible journey, but from AWS.
        events.push(event(last + 24 * HOUR, key, ip("frankfurt_aws", 3), "/v1/orders", 200));
        let found = alerts(&mut engine, &events);
        let new_country = of(&found, "new_country");
        assert_eq!(new_country.len(), 1, "{found:#?}");
        assert_eq!(new_country[0].severity, Severity::Medium);
        assert_eq!(new_country[0].evidence["observed"]["network_kind"], "cloud");
    }

    /// Five days in Virginia (AWS), then from 08:00 a call every five
    /// minutes (the key's usual rate) alternating between Virginia and Ohio
    /// (AWS, 400 km away: no travel) for `both_hours`, then Ohio alone
    /// until 20:00.
    fn second_region(key: &str, both_hours: i64) -> Vec<crate::alert::Alert> {
        let mut engine = new_engine();
        let mut events = history(key, "virginia_aws", 5, 12, ENDPOINTS);
        let start = T0 + 5 * DAY + 8 * HOUR;
        for call in 0..(12 * 12) {
            let place = if call < both_hours * 12 && call % 2 == 0 {
                "virginia_aws"
            } else {
                "ohio_aws"
            };
            events.push(event(
                start + call * 5 * 60_000,
                key,
                ip(place, (call % 20) as u16),
                ENDPOINTS[(call % 4) as usize],
                200,
            ));
        }
        alerts(&mut engine, &events)
    }

    #[test]
    fn a_cloud_region_used_alongside_the_owner_past_the_cutover_is_medium() {
        let found = second_region("AKIAGEOREGION000001", 5);
        let regions = of(&found, "new_region");
        // First use, then the overlap: one alert, raised to medium by an
        // update (the last revision, which the consumer keeps).
        assert_eq!(regions.len(), 1, "{found:#?}");
        assert!(regions[0].revision > 1, "{found:#?}");
        assert_eq!(regions[0].severity, Severity::Medium);
        let regions = [regions[0], regions[0]];
        assert_eq!(regions[1].evidence["observed"]["asn"], 16509);
        assert!(
            regions[1].summary.contains("Columbus") && regions[1].summary.contains("Ashburn"),
            "{}",
            regions[1].summary
        );
        let overlap_s = regions[1].evidence["overlap_s"].as_i64().unwrap();
        assert!((3 * 3600..4 * 3600).contains(&overlap_s), "{overlap_s}");
    }

    #[test]
    fn a_cloud_region_migration_within_the_cutover_is_at_most_low() {
        let found = second_region("AKIAGEOREGION000002", 2);
        assert!(serious(&found).is_empty(), "{found:#?}");
        let regions = of(&found, "new_region");
        assert_eq!(regions.len(), 1, "the first use only: {found:#?}");
        assert_eq!(regions[0].severity, Severity::Low);
    }

    #[test]
    fn a_quiet_key_after_a_cutover_is_not_concurrent_use() {
        let mut engine = new_engine();
        let key = "AKIAGEOREGION000003";
        let mut events = history(key, "frankfurt_aws", 5, 12, ENDPOINTS);
        let start = T0 + 5 * DAY + 9 * HOUR;
        // Two hours of cutover, a call every 20 minutes alternating, the
        // last from Frankfurt; then the key's next call, from Virginia, four
        // hours later: a jump, but the two regions were not in use together
        // for longer than the cutover.
        for call in 0..7 {
            let place = if call % 2 == 0 { "frankfurt_aws" } else { "virginia_aws" };
            events.push(event(start + call * 20 * 60_000, key, ip(place, 1), "/v1/orders", 200));
        }
        events.push(event(start + 6 * HOUR, key, ip("virginia_aws", 1), "/v1/orders", 200));
        let found = alerts(&mut engine, &events);
        assert!(of(&found, "concurrent_use").is_empty(), "{found:#?}");
        assert!(
            !of(&found, "impossible_travel").is_empty(),
            "the jumps themselves are seen: {found:#?}"
        );
    }

    #[test]
    fn a_rare_second_region_called_now_and_then_is_not_a_copy() {
        let mut engine = new_engine();
        let key = "AKIAGEOREGION000004";
        let mut events = history(key, "virginia_aws", 6, 12, ENDPOINTS);
        // Ohio a few times a day from day 3 on, hours apart, while Virginia
        // goes on: a minor site of the service, never in continuous use.
        for day in 3..6 {
            for hour in [9, 13, 17] {
                events.push(event(
                    T0 + day * DAY + hour * HOUR + 60_000,
                    key,
                    ip("ohio_aws", 1),
                    "/v1/orders",
                    200,
                ));
            }
        }
        events.sort_by_key(|event| event.ts_ms);
        let found = alerts(&mut engine, &events);
        let regions = of(&found, "new_region");
        assert_eq!(regions.len(), 1, "{found:#?}");
        assert_eq!(regions[0].severity, Severity::Low);
    }
}
