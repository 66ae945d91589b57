//! A byte cap on one alert's JSON. Evidence can embed input-controlled text
//! (endpoint paths, user agents) and lists that grow with an attack (the
//! addresses of a spray); an alert too large for the alerts topic would stop
//! the group, since outputs cannot be dropped. Over the cap, the alert is
//! shrunk in steps, each cutting long strings and long lists shorter, with a
//! visible marker, until it fits. The steps depend only on the alert, so
//! replay and live cut the same alert the same way, and the id (computed
//! before) does not change.

use serde_json::{Map, Value};

use super::Alert;

/// Largest alert, in bytes of its JSON. Roomy enough for the 500 key
/// fingerprints a spray alert may list, far below the 1 MiB brokers take.
pub const MAX_ALERT_BYTES: usize = 32 * 1024;

/// Longest summary, in bytes.
const MAX_SUMMARY_BYTES: usize = 1024;

/// Appended to a cut string.
pub const CUT_MARKER: &str = "…[truncated]";

/// Evidence field that says the evidence was cut, holding the size of the
/// whole alert before.
pub const EVIDENCE_CUT_FIELD: &str = "truncated_from_bytes";

/// Successive limits: (longest string in bytes, most list items).
const STEPS: &[(usize, usize)] = &[(256, 64), (128, 16), (64, 8), (32, 4), (16, 1)];

/// Shrinks `alert` to at most `max_bytes` of JSON; returns whether it was
/// cut. The summary is cut to 1 KiB whatever the total.
pub fn cap_alert(alert: &mut Alert, max_bytes: usize) -> bool {
    let mut cut = cut_string(&mut alert.summary, MAX_SUMMARY_BYTES);
    let original = json_len(alert);
    if original <= max_bytes {
        return cut;
    }
    for (longest_string, most_items) in STEPS {
        shrink(&mut alert.evidence, *longest_string, *most_items);
        mark(&mut alert.evidence, original);
        cut = true;
        if json_len(alert) <= max_bytes {
            return cut;
        }
    }
    // Evidence as small as it gets: keep only the marker, then cut the
    // key list of a many-key alert.
    let mut marker = Map::new();
    marker.insert(EVIDENCE_CUT_FIELD.into(), Value::from(original as u64));
    alert.evidence = Value::Object(marker);
    while json_len(alert) > max_bytes && alert.keys.len() > 1 {
        let keep = alert.keys.len() / 2;
        alert.keys.truncate(keep);
        if let Value::Object(evidence) = &mut alert.evidence {
            evidence.insert("keys_listed".into(), Value::from(keep as u64));
        }
    }
    cut
}

/// Shrinks a piece of evidence on its own to at most `max_bytes` of JSON,
/// by the same steps as an alert's, marking it when cut (a digest entry's
/// evidence, which no whole-alert cap covers); returns whether it was cut.
pub fn cap_evidence(evidence: &mut Value, max_bytes: usize) -> bool {
    let value_len = |value: &Value| serde_json::to_vec(value).map_or(usize::MAX, |json| json.len());
    let original = value_len(evidence);
    if original <= max_bytes {
        return false;
    }
    for (longest_string, most_items) in STEPS {
        shrink(evidence, *longest_string, *most_items);
        mark(evidence, original);
        if value_len(evidence) <= max_bytes {
            return true;
        }
    }
    let mut marker = Map::new();
    marker.insert(EVIDENCE_CUT_FIELD.into(), Value::from(original as u64));
    *evidence = Value::Object(marker);
    true
}

fn json_len(alert: &Alert) -> usize {
    serde_json::to_vec(alert).map_or(usize::MAX, |json| json.len())
}

fn mark(evidence: &mut Value, original: usize) {
    if let Value::Object(fields) = evidence {
        fields.insert(EVIDENCE_CUT_FIELD.into(), Value::from(original as u64));
    }
}

/// Cuts every string longer than `longest_string` bytes and every list
/// longer than `most_items`, keeping the first items and a last one that
/// says how many were left out. Object keys are kept.
fn shrink(value: &mut Value, longest_string: usize, most_items: usize) {
    match value {
        Value::String(text) => {
            cut_string(text, longest_string);
        }
        Value::Array(items) => {
            if items.len() > most_items {
                let left_out = items.len() - most_items;
                items.truncate(most_items);
                items.push(Value::String(format!("…[{left_out} more]")));
            }
            for item in items.iter_mut() {
                shrink(item, longest_string, most_items);
            }
        }
        Value::Object(fields) => {
            for (_, field) in fields.iter_mut() {
                shrink(field, longest_string, most_items);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Cuts `text` to at most `longest` bytes on a character boundary, marker
/// included; returns whether it was cut.
pub fn cut_string(text: &mut String, longest: usize) -> bool {
    if text.len() <= longest {
        return false;
    }
    let mut end = longest.saturating_sub(CUT_MARKER.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(CUT_MARKER);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Severity, Window};
    use crate::detector::Detector;
    use serde_json::json;

    fn alert(evidence: Value) -> Alert {
        Alert {
            id: "al_00000000000000000000000000000000".into(),
            incident_id: "in_00000000000000000000000000000000".into(),
            key_fingerprint: "kf_00000000000000000000000000000000".into(),
            key_hint: "…abcd".into(),
            keys: Vec::new(),
            detector: Detector::SourceSpray,
            severity: Severity::High,
            score: 0.5,
            ts: "2026-03-01T00:00:00Z".into(),
            window: Window {
                start: "2026-03-01T00:00:00Z".into(),
                end: "2026-03-01T00:00:00Z".into(),
            },
            summary: "new endpoints".into(),
            evidence,
            model: "default@1".into(),
            owner: None,
            revision: 1,
            count: 1,
            first_seen: String::new(),
            last_seen: String::new(),
            peak_score: 0.0,
        }
    }

    #[test]
    fn a_small_alert_is_left_alone() {
        let mut small = alert(json!({"endpoints": ["/v1/a", "/v1/b"]}));
        let before = small.clone();
        assert!(!cap_alert(&mut small, MAX_ALERT_BYTES));
        assert_eq!(small, before);
    }

    #[test]
    fn long_endpoint_names_and_many_items_are_cut_under_the_cap_with_a_marker() {
        let long_path = format!("/v1/{}", "é".repeat(40_000));
        let addresses: Vec<String> = (0..5_000).map(|i| format!("198.51.{}.{}", i / 256, i % 256)).collect();
        let mut big = alert(json!({"endpoints": [long_path, "/v1/short"], "addresses": addresses, "count": 5000}));
        big.summary = format!("new endpoint {}", "x".repeat(5_000));
        let original = serde_json::to_vec(&big).unwrap().len();
        assert!(cap_alert(&mut big, MAX_ALERT_BYTES));
        let json = serde_json::to_vec(&big).unwrap();
        assert!(json.len() <= MAX_ALERT_BYTES, "{} bytes", json.len());
        // The size before, once the summary was cut.
        let recorded = big.evidence[EVIDENCE_CUT_FIELD].as_u64().unwrap() as usize;
        assert!(
            recorded > MAX_ALERT_BYTES && recorded < original,
            "{recorded} of {original}"
        );
        assert_eq!(big.evidence["count"], json!(5000), "numbers are kept");
        let endpoint = big.evidence["endpoints"][0].as_str().unwrap();
        assert!(endpoint.ends_with(CUT_MARKER), "{endpoint}");
        assert_eq!(big.evidence["endpoints"][1], json!("/v1/short"));
        let listed = big.evidence["addresses"].as_array().unwrap();
        assert!(listed.last().unwrap().as_str().unwrap().contains("more]"));
        assert!(big.summary.len() <= 1024 && big.summary.ends_with(CUT_MARKER));
    }

    #[test]
    fn cutting_is_deterministic() {
        let make = || {
            let items: Vec<String> = (0..3_000)
                .map(|i| format!("/v1/endpoint/{i}/{}", "z".repeat(i % 97)))
                .collect();
            alert(json!({"endpoints": items}))
        };
        let (mut first, mut second) = (make(), make());
        cap_alert(&mut first, 4096);
        cap_alert(&mut second, 4096);
        assert_eq!(
            serde_json::to_vec(&first).unwrap(),
            serde_json::to_vec(&second).unwrap()
        );
        assert!(serde_json::to_vec(&first).unwrap().len() <= 4096);
    }

    #[test]
    fn a_many_key_alert_keeps_a_marker_when_even_the_keys_must_go() {
        let mut many = alert(json!({"keys": 10_000}));
        many.keys = (0..10_000).map(|i| format!("kf_{i:032x}")).collect();
        cap_alert(&mut many, MAX_ALERT_BYTES);
        assert!(serde_json::to_vec(&many).unwrap().len() <= MAX_ALERT_BYTES);
        assert_eq!(many.evidence["keys_listed"], json!(many.keys.len() as u64));
        assert!(many.evidence[EVIDENCE_CUT_FIELD].as_u64().unwrap() > MAX_ALERT_BYTES as u64);
    }
}
