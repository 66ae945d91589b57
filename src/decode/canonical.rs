//! Canonical JSON lines (schemas/access-event.schema.json): one object per
//! record with the fields of [`AccessEvent`] under their own names.
//!
//! This is the hot path, so the record is parsed once into [`Scalar`]s that
//! borrow from the input and checked field by field; an event whose strings
//! need no unescaping is decoded without allocating.
//!
//! Almost every record has the plain shape producers write: the known
//! fields once each, strings without escapes, non-negative integers. Such a
//! record is read by [`scan_plain`], a single pass over its bytes, into the
//! same [`RawCanonical`] serde would give; any other record (unknown or
//! repeated fields, escapes, floats, negative numbers, nesting, malformed
//! JSON) goes to serde, so every result and every rejection is serde's.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use super::{DecodeError, Scalar, expect_object, parse_record};
use crate::event::{AccessEvent, MAX_TS_MS, MIN_TS_MS, parse_ts};

/// The record as it came: every field optional and of any type, so that
/// checking (and the error for each problem) happens in one place below.
/// Unknown fields are ignored so producers can add their own.
#[derive(Deserialize, Default, Debug, PartialEq)]
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
    let raw: RawCanonical<'_> = match scan_plain(record) {
        Some(raw) => raw,
        None => parse_record(record)?,
    };
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

/// JSON's whitespace, as serde_json skips it between tokens.
fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// A string at `at` that needs no unescaping (no backslash, no control
/// character, which JSON forbids unescaped) and is valid UTF-8: the text
/// between its quotes and the index after the closing quote.
fn plain_string(bytes: &[u8], at: usize) -> Option<(&str, usize)> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let (length, non_ascii) = string_stop(&bytes[start..])?;
    let end = start + length;
    if bytes[end] != b'"' {
        return None;
    }
    let raw = &bytes[start..end];
    let text = if non_ascii {
        std::str::from_utf8(raw).ok()?
    } else {
        // SAFETY: `string_stop` found no byte of 0x80 or over in `raw`, and
        // ASCII is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(raw) }
    };
    Some((text, end + 1))
}

/// The index of the first quote, backslash or control character, and
/// whether a byte before it is not ASCII: sixteen bytes at a time with the
/// SSE2 that every x86-64 processor has, then eight at a time (see
/// [`string_stop_words`]).
#[cfg(target_arch = "x86_64")]
fn string_stop(bytes: &[u8]) -> Option<(usize, bool)> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut high = 0u32;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 16) {
        // SAFETY: SSE2 is part of the x86-64 baseline, and the load reads
        // the sixteen bytes of `chunk`, unaligned.
        let (stops, highs) = unsafe {
            let block = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'\\' as i8));
            // Unsigned: a byte is under 0x20 when its maximum with 0x1f is 0x1f.
            let limit = _mm_set1_epi8(0x1f);
            let control = _mm_cmpeq_epi8(_mm_max_epu8(block, limit), limit);
            let stops = _mm_or_si128(_mm_or_si128(quote, backslash), control);
            (_mm_movemask_epi8(stops) as u32, _mm_movemask_epi8(block) as u32)
        };
        if stops != 0 {
            let stop = stops.trailing_zeros();
            let before = (1u32 << stop) - 1;
            return Some((at + stop as usize, (high | highs & before) != 0));
        }
        high |= highs;
        at += 16;
    }
    string_stop_words(bytes, at, high != 0)
}

/// [`string_stop`] eight bytes at a time, on every processor.
#[cfg(not(target_arch = "x86_64"))]
fn string_stop(bytes: &[u8]) -> Option<(usize, bool)> {
    string_stop_words(bytes, 0, false)
}

/// The first stop at or after `at`, as [`string_stop`] gives it, with
/// `non_ascii` for the bytes before `at`; eight bytes at a time: for each
/// byte, a zero of `word ^ pattern` or a value under 0x20 sets its high bit
/// in the mask. Carries only run towards higher bytes, so the lowest bit
/// set marks the first such byte exactly.
fn string_stop_words(bytes: &[u8], mut at: usize, non_ascii: bool) -> Option<(usize, bool)> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut high = if non_ascii { HIGHS } else { 0 };
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let mask = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | word.wrapping_sub(ONES * 0x20) & !word)
            & HIGHS;
        if mask != 0 {
            let stop = mask.trailing_zeros() / 8;
            let before = (1u64 << (stop * 8)) - 1;
            return Some((at + stop as usize, (high | word & HIGHS & before) != 0));
        }
        high |= word & HIGHS;
        at += 8;
    }
    let mut non_ascii = high != 0;
    for (index, &byte) in bytes[at..].iter().enumerate() {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            return Some((at + index, non_ascii));
        }
        non_ascii |= byte >= 0x80;
    }
    None
}

/// A plain value at `at`: a string without escapes (borrowed), a
/// non-negative integer that fits a `u64` written without a leading zero,
/// or `null` (an absent field, as serde reads it into an `Option`). `None`
/// for anything else.
fn plain_value(bytes: &[u8], at: usize) -> Option<(Option<Scalar<'_>>, usize)> {
    match bytes.get(at)? {
        b'"' => plain_string(bytes, at).map(|(value, next)| (Some(Scalar::Str(Cow::Borrowed(value))), next)),
        b'n' => (bytes.get(at..at + 4)? == b"null").then_some((None, at + 4)),
        b'0'..=b'9' => {
            let digits = bytes[at..].iter().take_while(|byte| byte.is_ascii_digit()).count();
            // 19 digits always fit a u64; more, a leading zero (invalid
            // JSON), a fraction or an exponent go to serde.
            if digits > 19 || (digits > 1 && bytes[at] == b'0') {
                return None;
            }
            let end = at + digits;
            if matches!(bytes.get(end), Some(b'.' | b'e' | b'E')) {
                return None;
            }
            let value = bytes[at..end]
                .iter()
                .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
            Some((Some(Scalar::UInt(value)), end))
        }
        _ => None,
    }
}

/// The fields of [`RawCanonical`], each with its closing quote.
const FIELD_NAMES: [&[u8]; 9] = [
    b"ts\"",
    b"key_id\"",
    b"ip\"",
    b"method\"",
    b"endpoint\"",
    b"status\"",
    b"user_agent\"",
    b"bytes_out\"",
    b"request_id\"",
];

/// The field named by the string at `at`, as its index in [`FIELD_NAMES`],
/// and the index after the closing quote; `None` for any other name (no
/// two fields start with the same letter, and a name written with escapes
/// is not plain).
fn field_name(bytes: &[u8], at: usize) -> Option<(u32, usize)> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let index = match bytes.get(at + 1)? {
        b't' => 0,
        b'k' => 1,
        b'i' => 2,
        b'm' => 3,
        b'e' => 4,
        b's' => 5,
        b'u' => 6,
        b'b' => 7,
        b'r' => 8,
        _ => return None,
    };
    let name = FIELD_NAMES[index as usize];
    let rest = &bytes[at + 1..];
    // Sixteen bytes at once where the record has them: a call to a general
    // comparison per field costs more than the rest of reading the name.
    let named = match rest.first_chunk::<16>() {
        Some(chunk) => {
            let (word, mask) = FIELD_WORDS[index as usize];
            u128::from_le_bytes(*chunk) & mask == word
        }
        None => rest.starts_with(name),
    };
    named.then_some((index, at + 1 + name.len()))
}

/// Each of [`FIELD_NAMES`] as a little-endian 16-byte word, with the mask
/// of its length.
const FIELD_WORDS: [(u128, u128); 9] = {
    let mut words = [(0u128, 0u128); 9];
    let mut index = 0;
    while index < FIELD_NAMES.len() {
        let name = FIELD_NAMES[index];
        let mut byte = 0;
        while byte < name.len() {
            words[index].0 |= (name[byte] as u128) << (8 * byte);
            words[index].1 |= 0xff << (8 * byte);
            byte += 1;
        }
        index += 1;
    }
    words
};

/// The record read in one pass, when it has the plain shape (see the
/// module header); `None` sends it to serde.
fn scan_plain(bytes: &[u8]) -> Option<RawCanonical<'_>> {
    let mut at = skip_whitespace(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_whitespace(bytes, at + 1);
    let mut raw = RawCanonical::default();
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        let mut seen = 0u16;
        loop {
            let (bit, next) = field_name(bytes, at)?;
            at = skip_whitespace(bytes, next);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            let (value, next) = plain_value(bytes, skip_whitespace(bytes, at + 1))?;
            let field = match bit {
                0 => &mut raw.ts,
                1 => &mut raw.key_id,
                2 => &mut raw.ip,
                3 => &mut raw.method,
                4 => &mut raw.endpoint,
                5 => &mut raw.status,
                6 => &mut raw.user_agent,
                7 => &mut raw.bytes_out,
                _ => &mut raw.request_id,
            };
            // A repeated field is an error serde names.
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            *field = value;
            at = skip_whitespace(bytes, next);
            match bytes.get(at) {
                Some(b',') => at = skip_whitespace(bytes, at + 1),
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_whitespace(bytes, at) == bytes.len()).then_some(raw)
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
    super::parse_ip(&text).ok_or_else(|| DecodeError::BadIp(text.into_owned()))
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
    fn field_names_are_read_alike_with_and_without_sixteen_bytes_after_them() {
        for (index, name) in FIELD_NAMES.iter().enumerate() {
            let name = std::str::from_utf8(name).expect("ascii");
            // The name then nothing, then padding past sixteen bytes: both
            // ways of comparing.
            for tail in ["", ":1}", ": \"a long enough value\"}"] {
                let record = format!("\"{name}{tail}");
                let want = Some((index as u32, 1 + name.len()));
                assert_eq!(field_name(record.as_bytes(), 0), want, "{record}");
                // One byte changed anywhere in the name: not this field.
                for position in 2..=name.len() {
                    let mut changed = record.clone().into_bytes();
                    changed[position] ^= 0x20;
                    assert_eq!(field_name(&changed, 0), None, "{}", String::from_utf8_lossy(&changed));
                }
                // Cut short: not a field.
                let cut = &record.as_bytes()[..name.len()];
                assert_eq!(field_name(cut, 0), None);
            }
        }
        assert_eq!(field_name(b"\"zz\": 1, \"padding\": 22222}", 0), None);
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

    /// The record as serde alone reads it.
    fn serde_raw(record: &str) -> Option<RawCanonical<'_>> {
        parse_record::<RawCanonical<'_>>(record.as_bytes()).ok()
    }

    #[test]
    fn plain_records_skip_serde_and_read_the_same() {
        let generated = r#"{"ts":"2025-11-21T14:01:57.350Z","key_id":"sk_live_Ss9Du62xNxxPdRNVEFUQMPZh","ip":"146.70.18.164","method":"GET","endpoint":"/v1/places/pl_JplzArRB8hWLK8","status":200,"user_agent":"mapkit-js/12.30.6 lang/js node/20.11.0 os/linux","bytes_out":2287}"#;
        let spaced = "{ \"ts\" : 1772368496789 ,\n\t\"key_id\": \"k\", \"ip\":\"10.0.0.1\", \"status\": 0, \"bytes_out\": null, \"method\": \"é\" }\r\n";
        for record in [generated, spaced, "{}", " {} "] {
            let plain = scan_plain(record.as_bytes()).unwrap_or_else(|| panic!("{record:?} is plain"));
            assert_eq!(Some(plain), serde_raw(record), "{record:?}");
        }
        let plain = scan_plain(generated.as_bytes()).expect("plain");
        assert!(matches!(plain.key_id, Some(Scalar::Str(Cow::Borrowed(_)))));
        assert_eq!(plain.status, Some(Scalar::UInt(200)));
    }

    #[test]
    fn records_that_are_not_plain_go_to_serde() {
        for record in [
            FULL,
            r#"{"key_id":"a\"b"}"#,
            r#"{"key_id":"a","key_id":"b"}"#,
            r#"{"key_id":"a","key_id":null}"#,
            "{\"key_id\":\"a\tb\"}",
            r#"{"status":-1}"#,
            r#"{"status":1.5}"#,
            r#"{"status":1e3}"#,
            r#"{"status":01}"#,
            r#"{"status":18446744073709551616}"#,
            r#"{"status":true}"#,
            r#"{"status":[1]}"#,
            r#"{"status":1,}"#,
            r#"{"status":1} x"#,
            r#"{"status":nul}"#,
            r#"{"status":nullx}"#,
            "\u{c}{}",
            "{\"ts\":1}\u{e9}",
            "{\"ts\":\"abcdefghijklmn\tq\"}",
        ] {
            assert_eq!(scan_plain(record.as_bytes()), None, "{record:?}");
        }
        assert_eq!(scan_plain(b"{\"key_id\":\"\xff\"}"), None, "not UTF-8");
        assert_eq!(
            scan_plain(b"{\"key_id\":\"abcdefghij\xc3\"}"),
            None,
            "not UTF-8 after a chunk"
        );
    }

    proptest::proptest! {
        #[test]
        fn string_stop_finds_the_first_quote_backslash_or_control_and_non_ascii_before_it(bytes in proptest::collection::vec(
            proptest::sample::select(vec![b'a', b'"', b'\\', 0x1f, 0x20, 0x00, 0x7f, 0x80, 0xff, 0xa2, 0xdc]),
            0..40,
        )) {
            let expected = bytes
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
                .map(|stop| (stop, bytes[..stop].iter().any(|&byte| byte >= 0x80)));
            proptest::prop_assert_eq!(string_stop(&bytes), expected);
        }

        /// Long runs without a stop, so that the stop (or its absence)
        /// falls in any sixteen- or eight-byte block or in the tail.
        #[test]
        fn string_stop_finds_a_stop_after_long_plain_runs(
            plain in proptest::collection::vec(proptest::sample::select(vec![b'a', 0x20, 0x7f, 0x80, 0xc3, 0xff]), 0..90),
            stop in proptest::option::of(proptest::sample::select(vec![b'"', b'\\', 0x00, 0x0a, 0x1f])),
            after in proptest::collection::vec(proptest::sample::select(vec![b'a', b'"', 0x80]), 0..20),
        ) {
            let mut bytes = plain;
            bytes.extend(stop);
            bytes.extend(&after);
            let expected = bytes
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
                .map(|stop| (stop, bytes[..stop].iter().any(|&byte| byte >= 0x80)));
            proptest::prop_assert_eq!(string_stop(&bytes), expected);
            proptest::prop_assert_eq!(string_stop_words(&bytes, 0, false), expected);
        }
    }

    proptest::proptest! {
        /// Whatever the record, the one-pass reading either declines it or
        /// reads exactly what serde reads, and serde accepts it.
        #[test]
        fn plain_reading_equals_serde(
            parts in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "ts", "key_id", "ip", "method", "endpoint", "status",
                        "user_agent", "bytes_out", "request_id", "extra", "k\\u0065y", "key", "tss", "i", "",
                    ]),
                    proptest::sample::select(vec![
                        "\"x\"", "\"\"", "\"a b/é\"", "\"abcdefghijéklmnopqrs\"", "\"abcdefghijklmn\tq\"", "\"a\\\"b\"", "\"\\u00e9\"", "\"a\tb\"",
                        "0", "7", "00", "01", "-1", "1.5", "2e3", "200",
                        "1234567890123456789", "18446744073709551615", "18446744073709551616",
                        "99999999999999999999", "null", "nul", "true", "false", "[1, \"a\"]", "{\"a\": {}}",
                    ]),
                    proptest::sample::select(vec!["", " ", "\n", "\t ", "\r", "\u{c}"]),
                ),
                0..8,
            ),
            open in proptest::sample::select(vec!["{", " {", "\t{", "[", ""]),
            close in proptest::sample::select(vec!["}", "} ", "}\r\n", ",}", "} x", "", "}}"]),
        ) {
            let members: Vec<String> = parts
                .iter()
                .map(|(name, value, space)| format!("{space}\"{name}\"{space}:{space}{value}{space}"))
                .collect();
            let record = format!("{open}{}{close}", members.join(","));
            if let Some(plain) = scan_plain(record.as_bytes()) {
                proptest::prop_assert_eq!(Some(plain), serde_raw(&record), "{:?}", record);
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
