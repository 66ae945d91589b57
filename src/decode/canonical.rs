//! Canonical JSON lines (schemas/access-event.schema.json): one object per
//! record with the fields of [`AccessEvent`] under their own names.
//!
//! This is the hot path, so the record is parsed once into [`Scalar`]s that
//! borrow from the input and checked field by field; an event whose strings
//! need no unescaping is decoded without allocating.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use super::{DecodeError, Scalar, expect_object, parse_record};
use crate::event::{AccessEvent, MAX_TS_MS, MIN_TS_MS, parse_ts};

/// The record as it came: every field optional and of any type, so that
/// checking (and the error for each problem) happens in one place below.
/// Unknown fields are ignored so producers can add their own.
#[derive(Deserialize)]
struct RawCanonical<'a> {
    #[serde(borrow, default)]
    ts: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    key_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    ip: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    method: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    endpoint: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    status: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    user_agent: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    bytes_out: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    request_id: Option<Scalar<'a>>,
}

/// Decodes one canonical record.
pub fn decode_canonical(record: &[u8]) -> Result<AccessEvent<'_>, DecodeError> {
    expect_object(record)?;
    let raw: RawCanonical<'_> = parse_record(record)?;
    // The key comes first: an event without one is skipped, not rejected,
    // whatever else is wrong with it.
    let key_id = key_field(raw.key_id, "key_id")?;
    Ok(AccessEvent {
        ts_ms: ts_field(required(raw.ts, "ts")?)?,
        key_id,
        ip: ip_field(required(raw.ip, "ip")?)?,
        method: required(raw.method, "method")?.into_text("method")?,
        endpoint: required(raw.endpoint, "endpoint")?.into_text("endpoint")?,
        status: status_field(required(raw.status, "status")?)?,
        user_agent: optional(raw.user_agent)
            .map(|value| value.into_text("user_agent"))
            .transpose()?
            .unwrap_or_default(),
        bytes_out: optional(raw.bytes_out).map(bytes_out_field).transpose()?.unwrap_or(0),
        request_id: optional(raw.request_id)
            .map(|value| value.into_text("request_id"))
            .transpose()?,
    })
}

/// A JSON `null` means the same as an absent field.
pub(crate) fn optional(value: Option<Scalar<'_>>) -> Option<Scalar<'_>> {
    value.filter(|value| *value != Scalar::Null)
}

pub(crate) fn required<'a>(value: Option<Scalar<'a>>, field: &'static str) -> Result<Scalar<'a>, DecodeError> {
    optional(value).ok_or(DecodeError::MissingField(field))
}

/// The key id: absent, null or empty (after [`canonical_key_id`]) means "no
/// key", which callers count and skip; any other non-string is a real error.
pub(crate) fn key_field<'a>(value: Option<Scalar<'a>>, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    let key_id = match optional(value) {
        None => return Err(DecodeError::NoKey),
        Some(value) => value.into_text(field)?,
    };
    let key_id = match key_id {
        Cow::Borrowed(text) => Cow::Borrowed(canonical_key_id(text)),
        Cow::Owned(text) => match canonical_key_id(&text) {
            canonical if canonical.len() == text.len() => Cow::Owned(text),
            canonical => Cow::Owned(canonical.to_string()),
        },
    };
    if key_id.is_empty() {
        return Err(DecodeError::NoKey);
    }
    Ok(key_id)
}

/// A key id as the key's owner knows it: without surrounding whitespace
/// and without an HTTP `Bearer ` scheme (any case), so that the same key
/// logged as `Authorization: Bearer k`, ` k` or `k` is one key with one
/// fingerprint. A subslice of `key_id`: no allocation.
pub fn canonical_key_id(key_id: &str) -> &str {
    let start = key_id.trim_start();
    let bytes = start.as_bytes();
    const SCHEME: &[u8] = b"bearer";
    if bytes.len() > SCHEME.len()
        && bytes[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        && bytes[SCHEME.len()].is_ascii_whitespace()
    {
        // The scheme and the space after it are ASCII: a char boundary.
        return start[SCHEME.len()..].trim();
    }
    start.trim_end()
}

/// RFC 3339 text or integer epoch milliseconds, within the accepted range.
fn ts_field(value: Scalar<'_>) -> Result<i64, DecodeError> {
    match value {
        Scalar::Str(text) => parse_ts(&text).ok_or_else(|| DecodeError::BadTimestamp(text.into_owned())),
        Scalar::Int(millis) => check_ts_range(i128::from(millis)),
        Scalar::UInt(millis) => check_ts_range(i128::from(millis)),
        other => Err(DecodeError::wrong_type(
            "ts",
            "an RFC 3339 string or integer epoch milliseconds",
            &other,
        )),
    }
}

pub(crate) fn check_ts_range(millis: i128) -> Result<i64, DecodeError> {
    if (i128::from(MIN_TS_MS)..i128::from(MAX_TS_MS)).contains(&millis) {
        // In range, so it fits an i64.
        Ok(millis as i64)
    } else {
        Err(DecodeError::BadTimestamp(millis.to_string()))
    }
}

fn ip_field(value: Scalar<'_>) -> Result<IpAddr, DecodeError> {
    let text = value.into_text("ip")?;
    text.parse().map_err(|_| DecodeError::BadIp(text.into_owned()))
}

fn status_field(value: Scalar<'_>) -> Result<u16, DecodeError> {
    match value {
        Scalar::UInt(status) => u16::try_from(status).map_err(|_| DecodeError::WrongType {
            field: "status",
            detail: format!("{status} is not an http status"),
        }),
        other => Err(DecodeError::wrong_type("status", "an integer http status", &other)),
    }
}

fn bytes_out_field(value: Scalar<'_>) -> Result<u64, DecodeError> {
    match value {
        Scalar::UInt(bytes) => Ok(bytes),
        other => Err(DecodeError::wrong_type("bytes_out", "a non-negative integer", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"ts":"2026-03-01T12:34:56.789Z","key_id":"key_live_0001","ip":"2001:db8::7","method":"POST","endpoint":"/v1/charges","status":201,"user_agent":"sdk/1.2","bytes_out":512,"request_id":"req-9","extra":{"ignored":[1,2]}}"#;

    /// The full record with one field replaced by a JSON value, or removed
    /// when the value is not JSON (such as `absent`).
    fn with(field: &str, json_value: &str) -> String {
        with_in(FULL, field, json_value)
    }

    fn with_in(record: &str, field: &str, json_value: &str) -> String {
        let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(record).expect("valid");
        match serde_json::from_str(json_value) {
            Ok(value) => object.insert(field.to_string(), value),
            Err(_) => object.remove(field),
        };
        serde_json::to_string(&object).expect("serialises")
    }

    #[test]
    fn decodes_every_field_and_borrows_strings() {
        let event = decode_canonical(FULL.as_bytes()).expect("valid record");
        assert_eq!(event.ts_ms, parse_ts("2026-03-01T12:34:56.789Z").expect("valid ts"));
        assert_eq!(event.key_id, "key_live_0001");
        assert_eq!(event.ip, "2001:db8::7".parse::<IpAddr>().expect("valid ip"));
        assert_eq!(
            (event.method.as_ref(), event.endpoint.as_ref()),
            ("POST", "/v1/charges")
        );
        assert_eq!((event.status, event.bytes_out), (201, 512));
        assert_eq!(event.user_agent, "sdk/1.2");
        assert_eq!(event.request_id.as_deref(), Some("req-9"));
        for text in [&event.key_id, &event.method, &event.endpoint, &event.user_agent] {
            assert!(matches!(text, Cow::Borrowed(_)), "{text} was copied");
        }
    }

    #[test]
    fn key_ids_are_canonical_and_stay_borrowed() {
        for (written, canonical) in [
            ("k_live_1", "k_live_1"),
            ("  k_live_1\t", "k_live_1"),
            ("Bearer k_live_1", "k_live_1"),
            ("bearer   k_live_1 ", "k_live_1"),
            ("BEARER\tk_live_1", "k_live_1"),
            ("Bearerk_live_1", "Bearerk_live_1"),
            ("Bearer", "Bearer"),
        ] {
            assert_eq!(canonical_key_id(written), canonical, "{written:?}");
        }
        let record = with("key_id", r#""Bearer key_live_0001 ""#);
        let event = decode_canonical(record.as_bytes()).expect("valid record");
        assert_eq!(event.key_id, "key_live_0001");
        assert!(matches!(event.key_id, Cow::Borrowed(_)), "a subslice, not a copy");
        let escaped = with("key_id", r#""Bearer key_live_\u0030001""#);
        let event = decode_canonical(escaped.as_bytes()).expect("valid record");
        assert_eq!(event.key_id, "key_live_0001");
        assert_eq!(
            decode_canonical(with("key_id", r#""Bearer  ""#).as_bytes()),
            Err(DecodeError::NoKey),
            "a scheme without a key is no key"
        );
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let record = with("endpoint", r#""/v1/a\"b\u00e9""#);
        let event = decode_canonical(record.as_bytes()).expect("valid record");
        assert_eq!(event.endpoint, "/v1/a\"bé");
    }

    #[test]
    fn optional_fields_default() {
        let mut record = with("user_agent", "absent");
        record = with_in(&record, "bytes_out", "null");
        record = with_in(&record, "request_id", "absent");
        let event = decode_canonical(record.as_bytes()).expect("valid record");
        assert_eq!(
            (event.user_agent.as_ref(), event.bytes_out, event.request_id),
            ("", 0, None)
        );
    }

    #[test]
    fn epoch_millis_timestamps() {
        let record = with("ts", "1772368496789");
        let event = decode_canonical(record.as_bytes()).expect("valid");
        assert_eq!(event.ts_ms, 1_772_368_496_789);
        assert_eq!(
            decode_canonical(with("ts", "1772368496").as_bytes()),
            Err(DecodeError::BadTimestamp("1772368496".into())),
            "seconds are not milliseconds: year 1970"
        );
    }

    #[test]
    fn each_problem_has_its_own_error() {
        let cases = [
            ("key_id", "absent", DecodeError::NoKey),
            ("key_id", r#""""#, DecodeError::NoKey),
            ("key_id", "null", DecodeError::NoKey),
            ("ts", "absent", DecodeError::MissingField("ts")),
            ("ip", "absent", DecodeError::MissingField("ip")),
            ("method", "null", DecodeError::MissingField("method")),
            ("ip", r#""example.com""#, DecodeError::BadIp("example.com".into())),
            ("ip", r#""010.1.2.3""#, DecodeError::BadIp("010.1.2.3".into())),
            (
                "ts",
                r#""2026-02-30T00:00:00Z""#,
                DecodeError::BadTimestamp("2026-02-30T00:00:00Z".into()),
            ),
            (
                "ts",
                r#""2150-01-01T00:00:00Z""#,
                DecodeError::BadTimestamp("2150-01-01T00:00:00Z".into()),
            ),
            ("ts", "-5", DecodeError::BadTimestamp("-5".into())),
        ];
        for (field, value, expected) in cases {
            assert_eq!(
                decode_canonical(with(field, value).as_bytes()),
                Err(expected),
                "{field}={value}"
            );
        }
        let wrong_types = [
            ("key_id", "7"),
            ("ip", "[1]"),
            ("status", r#""200""#),
            ("status", "70000"),
            ("status", "-1"),
            ("bytes_out", "1.5"),
            ("ts", "true"),
            ("endpoint", "{}"),
        ];
        for (field, value) in wrong_types {
            match decode_canonical(with(field, value).as_bytes()) {
                Err(DecodeError::WrongType { field: named, detail }) => {
                    assert_eq!(named, field);
                    assert!(!detail.is_empty());
                }
                other => panic!("{field}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_records() {
        for record in [
            "",
            "   ",
            "[1,2]",
            "42",
            "{",
            r#"{"key_id":"k""#,
            "{\"ts\":1,}",
            r#"{"a":1} x"#,
        ] {
            match decode_canonical(record.as_bytes()) {
                Err(DecodeError::MalformedJson(detail)) => assert!(!detail.is_empty()),
                other => panic!("{record:?}: {other:?}"),
            }
        }
        assert!(matches!(
            decode_canonical(b"{\"key_id\":\"\xff\"}"),
            Err(DecodeError::MalformedJson(_))
        ));
        let duplicate = r#"{"key_id":"a","key_id":"b"}"#;
        assert!(matches!(
            decode_canonical(duplicate.as_bytes()),
            Err(DecodeError::MalformedJson(_))
        ));
    }
}
