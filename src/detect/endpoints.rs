//! Endpoint mix: never-seen endpoints, first use of sensitive endpoints
//! (patterns from the model) judged by where and how it happened, and a
//! shift of the whole mix over a window.

use serde_json::json;

use super::{Context, Finding, percent};
use crate::baseline::KeyState;
use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;

/// First uses within the baseline's span that make a burst worth a medium
/// alert.
const NEW_ENDPOINT_BURST: usize = 3;

fn top_endpoints(state: &KeyState, ctx: &Context) -> String {
    let total = state.endpoints.endpoints.total();
    if total <= 0.0 {
        return "none".into();
    }
    state
        .endpoints
        .endpoints
        .ranked()
        .iter()
        .take(5)
        .map(|entry| format!("{} {}", ctx.endpoint_name(entry.id), percent(entry.weight / total)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Never-seen and sensitive endpoints. Judged before the event is absorbed,
/// counting it among the recent first uses it will join.
pub fn check_new_endpoint(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    if !ctx.novelty.first_endpoint_use {
        return;
    }
    let (first_recent_ms, recent_new) = state.endpoints.first_uses_with(event.ts_ms);
    let baseline = json!({
        "top_endpoints": top_endpoints(state, ctx),
        "endpoints_known": state.endpoints.endpoints.entries.len(),
        "events": state.events,
    });
    if event.endpoint_sensitive {
        out.push(sensitive_first_use(state, event, ctx, recent_new, baseline));
        return;
    }
    let burst = recent_new >= NEW_ENDPOINT_BURST;
    out.push(Finding {
        detector: Detector::NewEndpoint,
        severity: if burst { Severity::Medium } else { Severity::Low },
        score: if burst { 0.7 } else { 0.4 },
        window_start_ms: first_recent_ms,
        subject: event.endpoint.to_string(),
        summary: format!(
            "first call to {} {} ({} new endpoint{} in the last hour)",
            event.method,
            event.endpoint,
            recent_new,
            if recent_new == 1 { "" } else { "s" }
        ),
        evidence: json!({
            "observed": {"endpoint": event.endpoint, "method": event.method, "status": event.status, "new_endpoints_last_hour": recent_new},
            "baseline": baseline,
        }),
    });
}

/// The first call to a sensitive endpoint, judged in context. From the
/// key's established place with its established client and not refused, it
/// is what a release adding an export or an hourly token refresh looks like:
/// low. Refused (401/403), or from a place or client the key does not hold,
/// or as one of a burst of first uses (as for any new endpoint), it is
/// medium; refused from a place the key does not hold, high.
fn sensitive_first_use(
    state: &KeyState,
    event: &ResolvedEvent,
    ctx: &Context,
    recent_new: usize,
    baseline: serde_json::Value,
) -> Finding {
    let geo_model = &ctx.model.geo;
    let denied = event.is_auth_failure();
    let place_established = state.geo.is_established_at(&event.geo, event.ts_ms, geo_model);
    let client_established = state.is_established_client(event.client_id, event.ts_ms, geo_model);
    let (severity, score, context) = if denied && !place_established {
        (Severity::High, 0.9, "refused, from a place the key does not hold")
    } else if denied {
        (Severity::Medium, 0.75, "refused")
    } else if !place_established {
        (Severity::Medium, 0.75, "from a place the key does not hold")
    } else if !client_established {
        (Severity::Medium, 0.7, "with a client the key does not hold")
    } else if recent_new >= NEW_ENDPOINT_BURST {
        (Severity::Medium, 0.7, "among several new endpoints within the hour")
    } else {
        (Severity::Low, 0.4, "from the key's established place and client")
    };
    Finding {
        detector: Detector::SensitiveEndpoint,
        severity,
        score,
        window_start_ms: event.ts_ms,
        subject: event.endpoint.to_string(),
        summary: format!(
            "first call to sensitive endpoint {} {} (status {}) {context}: {} ({}, AS{} {})",
            event.method,
            event.endpoint,
            event.status,
            event.ip,
            event.geo.country.as_str(),
            event.geo.asn,
            event.geo.kind.as_str()
        ),
        evidence: json!({
            "observed": {
                "endpoint": event.endpoint,
                "method": event.method,
                "status": event.status,
                "ip": event.ip.to_string(),
                "country": event.geo.country.as_str(),
                "asn": event.geo.asn,
                "network_kind": event.geo.kind.as_str(),
                "client": event.client,
                "place_established": place_established,
                "client_established": client_established,
                "new_endpoints_last_hour": recent_new,
            },
            "baseline": baseline,
        }),
    }
}

/// Shift of the mix: judged after the event is counted, each time the
/// window's call count doubles past the model's minimum.
pub fn check_mix_shift(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    let endpoint_model = &ctx.model.endpoints;
    if !state.endpoints.mix_check_due {
        return;
    }
    if !state.has_learned(event.ts_ms, &endpoint_model.mix_shift) {
        return;
    }
    let divergence = state.endpoints.window_divergence();
    if divergence <= endpoint_model.mix_max_divergence {
        return;
    }
    let window_ms = endpoint_model.mix_window.as_millis() as i64;
    let total = f64::from(state.endpoints.window_total);
    let mut window_top: Vec<(u32, u32)> = state.endpoints.window_counts.to_vec();
    window_top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let observed: Vec<String> = window_top
        .iter()
        .take(5)
        .map(|(id, count)| format!("{} {}", ctx.endpoint_name(*id), percent(f64::from(*count) / total)))
        .collect();
    out.push(Finding {
        detector: Detector::EndpointMixShift,
        severity: Severity::Medium,
        score: divergence.clamp(0.0, 0.999),
        window_start_ms: state.endpoints.window * window_ms,
        subject: String::new(),
        summary: format!(
            "endpoint mix shifted (Jensen-Shannon {:.2} > {:.2}) over {} calls: now {}",
            divergence,
            endpoint_model.mix_max_divergence,
            state.endpoints.window_total,
            observed.join(", ")
        ),
        evidence: json!({
            "observed": {"calls": state.endpoints.window_total, "top_endpoints": observed.join(", ")},
            "baseline": {"top_endpoints": top_endpoints(state, ctx)},
            "divergence_bits": (divergence * 1000.0).round() / 1000.0,
        }),
    });
}

#[cfg(test)]
mod tests {
    use crate::detect::testkit::*;
    use crate::detector::Severity;

    // Was `first_use_of_an_admin_endpoint_denied_is_high`, from the key's
    // own place and client: issue 9 judges sensitive first uses in context,
    // so a refusal at home is medium and high needs a place the key does
    // not hold.
    #[test]
    fn an_admin_endpoint_refused_is_high_from_a_new_place_and_medium_from_home() {
        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000001";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(
            last + 60_000,
            key,
            ip("london_hosting", 2),
            "/v1/admin/users",
            403,
        ));
        let found = alerts(&mut engine, &events);
        let sensitive = of(&found, "sensitive_endpoint");
        assert_eq!(sensitive.len(), 1, "{found:#?}");
        assert_eq!(sensitive[0].severity, Severity::High);
        assert_eq!(sensitive[0].evidence["observed"]["place_established"], false);
        assert!(of(&found, "new_endpoint").is_empty());

        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000011";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(last + 60_000, key, ip("london", 2), "/v1/admin/users", 403));
        let found = alerts(&mut engine, &events);
        let sensitive = of(&found, "sensitive_endpoint");
        assert_eq!(sensitive.len(), 1, "{found:#?}");
        assert_eq!(sensitive[0].severity, Severity::Medium);
    }

    #[test]
    fn a_release_adding_an_export_and_a_token_refresh_from_home_is_low() {
        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000006";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(last + 60_000, key, ip("london", 7), "/v1/reports/export", 200));
        events.push(event(last + 3 * 60_000, key, ip("london", 8), "/oauth/token", 200));
        let found = alerts(&mut engine, &events);
        let sensitive = of(&found, "sensitive_endpoint");
        assert_eq!(sensitive.len(), 2, "{found:#?}");
        assert!(
            sensitive.iter().all(|alert| alert.severity == Severity::Low),
            "{sensitive:#?}"
        );
        assert_eq!(sensitive[0].evidence["observed"]["place_established"], true);
        assert_eq!(sensitive[0].evidence["observed"]["client_established"], true);
    }

    #[test]
    fn three_sensitive_first_uses_within_the_hour_from_home_are_medium() {
        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000008";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        for (step, endpoint) in ["/v1/customers/export", "/v1/exports/{id}", "/v1/exports/{id}/download"]
            .iter()
            .enumerate()
        {
            events.push(event(
                last + (step as i64 + 1) * 60_000,
                key,
                ip("london", 7),
                endpoint,
                200,
            ));
        }
        let found = alerts(&mut engine, &events);
        let severities: Vec<Severity> = of(&found, "sensitive_endpoint")
            .iter()
            .map(|alert| alert.severity)
            .collect();
        assert_eq!(
            severities,
            [Severity::Low, Severity::Low, Severity::Medium],
            "{found:#?}"
        );
    }

    #[test]
    fn an_export_answered_from_a_new_place_or_with_a_new_client_is_medium() {
        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000007";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(
            last + 60_000,
            key,
            ip("london_cable", 7),
            "/v1/reports/export",
            200,
        ));
        let mut foreign_client = event(last + 2 * 60_000, key, ip("london", 7), "/v1/keys", 200);
        foreign_client.user_agent = "python-requests/2.31".into();
        events.push(foreign_client);
        let found = alerts(&mut engine, &events);
        let sensitive = of(&found, "sensitive_endpoint");
        assert_eq!(sensitive.len(), 2, "{found:#?}");
        assert!(
            sensitive.iter().all(|alert| alert.severity == Severity::Medium),
            "{sensitive:#?}"
        );
        assert_eq!(sensitive[1].evidence["observed"]["client_established"], false);
    }

    #[test]
    fn one_new_endpoint_is_low_and_a_known_one_is_nothing() {
        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000002";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        events.push(event(last + 60_000, key, ip("london", 2), "/v1/orders/8812", 200));
        events.push(event(last + 120_000, key, ip("london", 2), "/v1/shipments", 200));
        let found = alerts(&mut engine, &events);
        let new = of(&found, "new_endpoint");
        assert_eq!(new.len(), 1, "only /v1/shipments is new: {found:#?}");
        assert_eq!(new[0].severity, Severity::Low);
    }

    #[test]
    fn three_new_endpoints_within_an_hour_are_medium() {
        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000003";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        for (step, endpoint) in ["/v1/reports", "/v1/reports/download", "/v1/bulk"].iter().enumerate() {
            events.push(event(
                last + (step as i64 + 1) * 60_000,
                key,
                ip("london", 2),
                endpoint,
                200,
            ));
        }
        let found = alerts(&mut engine, &events);
        assert!(
            of(&found, "new_endpoint")
                .iter()
                .any(|alert| alert.severity == Severity::Medium),
            "{found:#?}"
        );
    }

    #[test]
    fn an_hour_spent_on_a_rare_endpoint_is_a_mix_shift() {
        let mut engine = new_engine();
        let key = "AKIAENDPTEST00000004";
        let mut endpoints: Vec<&str> = ENDPOINTS.to_vec();
        endpoints.extend(std::iter::repeat_n("/v1/orders", 30));
        endpoints.push("/v1/customers");
        let mut events = history(key, "london", 6, 40, &endpoints);
        let start = T0 + 6 * DAY + 10 * HOUR;
        for call in 0..200 {
            events.push(event(start + call * 15_000, key, ip("london", 2), "/v1/customers", 200));
        }
        let found = alerts(&mut engine, &events);
        assert_eq!(of(&found, "endpoint_mix_shift").len(), 1, "{found:#?}");

        let mut engine = new_engine();
        let found = alerts(
            &mut engine,
            &history("AKIAENDPTEST00000005", "london", 8, 40, &endpoints),
        );
        assert!(of(&found, "endpoint_mix_shift").is_empty(), "{found:#?}");
    }
}
