//! Client fingerprint: a user-agent family the key has never used.

use serde_json::json;

use super::{Context, Finding, percent};
use crate::baseline::KeyState;
use crate::detector::{Detector, Severity};
use crate::enrich::ResolvedEvent;

/// Judged before the event is absorbed.
pub fn check_new_client(state: &KeyState, event: &ResolvedEvent, ctx: &Context, out: &mut Vec<Finding>) {
    if state.clients.contains(event.client_id) || state.clients.evicted > 0 {
        return;
    }
    if !state.has_learned(event.ts_ms, &ctx.model.client.new_client) {
        return;
    }
    let total = state.clients.total();
    let known: Vec<String> = state
        .clients
        .ranked()
        .iter()
        .take(4)
        .map(|entry| {
            format!(
                "{} {}",
                ctx.client_name(entry.id),
                percent(entry.weight / total.max(1e-9))
            )
        })
        .collect();
    out.push(Finding {
        detector: Detector::NewClient,
        severity: Severity::Low,
        score: 0.4,
        window_start_ms: event.ts_ms,
        subject: event.client.to_string(),
        summary: format!(
            "first use of client family {} (known: {})",
            event.client,
            known.join(", ")
        ),
        evidence: json!({
            "observed": {"client_family": event.client, "ip": event.ip.to_string()},
            "baseline": {"client_families": known.join(", ")},
        }),
    });
}

#[cfg(test)]
mod tests {
    use crate::detect::testkit::*;

    #[test]
    fn a_new_client_family_is_low_and_a_new_version_is_nothing() {
        let mut engine = new_engine();
        let key = "AKIACLIENTTEST000001";
        let mut events = history(key, "london", 5, 12, ENDPOINTS);
        let last = events.last().unwrap().ts_ms;
        let mut upgraded = event(last + 60_000, key, ip("london", 1), "/v1/orders", 200);
        upgraded.user_agent = "acme-sdk/2.0.0 python/3.12".into();
        let mut curl = event(last + 120_000, key, ip("london", 1), "/v1/orders", 200);
        curl.user_agent = "curl/8.5.0".into();
        events.push(upgraded);
        events.push(curl);
        let found = alerts(&mut engine, &events);
        let clients = of(&found, "new_client");
        assert_eq!(clients.len(), 1, "{found:#?}");
        assert!(clients[0].summary.contains("curl"));
    }
}
