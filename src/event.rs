//! The canonical access event, borrowed from the bytes it was decoded from,
//! and the redaction helpers that keep raw key ids out of every output.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One API call, as every decoder produces it.
///
/// Text fields borrow from the input buffer whenever the input needs no
/// unescaping, so decoding a batch does not allocate per event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent<'a> {
    /// Event time in milliseconds since the Unix epoch (UTC).
    #[serde(rename = "ts", with = "ts_rfc3339")]
    pub ts_ms: i64,
    /// The API key identifier as it appears in the log. Never written out:
    /// outputs carry [`key_fingerprint`] and [`key_hint`] instead.
    #[serde(borrow)]
    pub key_id: Cow<'a, str>,
    pub ip: IpAddr,
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    #[serde(borrow)]
    pub endpoint: Cow<'a, str>,
    pub status: u16,
    #[serde(borrow, default)]
    pub user_agent: Cow<'a, str>,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Cow<'a, str>>,
}

impl AccessEvent<'_> {
    /// Detaches the event from its input buffer.
    pub fn into_owned(self) -> AccessEvent<'static> {
        AccessEvent {
            ts_ms: self.ts_ms,
            key_id: Cow::Owned(self.key_id.into_owned()),
            ip: self.ip,
            method: Cow::Owned(self.method.into_owned()),
            endpoint: Cow::Owned(self.endpoint.into_owned()),
            status: self.status,
            user_agent: Cow::Owned(self.user_agent.into_owned()),
            bytes_out: self.bytes_out,
            request_id: self.request_id.map(|id| Cow::Owned(id.into_owned())),
        }
    }
}

/// A stable, non-reversible identifier for a key: the first 128 bits of
/// SHA-256 of the key id, hex encoded, prefixed `kf_`. A revocation service
/// that holds the keys computes the same value to find the key to revoke.
pub fn key_fingerprint(key_id: &str) -> String {
    let digest = Sha256::digest(key_id.as_bytes());
    format!("kf_{}", hex::encode(&digest[..16]))
}

/// A masked form of the key id a person can recognise without being able to
/// use it: the first four and last four characters of ids of 16 or more
/// characters, nothing of shorter ones.
pub fn key_hint(key_id: &str) -> String {
    let chars: Vec<char> = key_id.chars().collect();
    if chars.len() < 16 {
        return "****".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_ts(ts_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ts_ms) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => ts_ms.to_string(),
    }
}

/// Earliest and latest event time accepted: 2000-01-01 and 2100-01-01.
/// Anything outside is an impossible timestamp and is rejected.
pub const MIN_TS_MS: i64 = 946_684_800_000;
pub const MAX_TS_MS: i64 = 4_102_444_800_000;

/// Parses an RFC 3339 timestamp into epoch milliseconds, checking that it
/// lies in the accepted range.
pub fn parse_ts(text: &str) -> Option<i64> {
    let ts_ms = parse_ts_fast(text).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|dt| dt.timestamp_millis())
    })?;
    (MIN_TS_MS..MAX_TS_MS).contains(&ts_ms).then_some(ts_ms)
}

/// Fast path for the common `YYYY-MM-DDTHH:MM:SS[.fff]Z` form.
fn parse_ts_fast(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let mut value = 0i64;
        for &c in &b[range] {
            if !c.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(c - b'0');
        }
        Some(value)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut millis = 0i64;
    let mut pos = 19;
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 3 {
                millis = millis * 10 + i64::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let digits = pos - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    if pos + 1 != b.len() || b[pos] != b'Z' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Serde adapter: RFC 3339 text on output; RFC 3339 text or epoch
/// milliseconds on input.
pub mod ts_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ts_ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_ts(*ts_ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<'a> {
            Millis(i64),
            Text(&'a str),
            Owned(String),
        }
        let ts_ms = match Raw::deserialize(deserializer)? {
            Raw::Millis(ms) => Some(ms).filter(|ms| (super::MIN_TS_MS..super::MAX_TS_MS).contains(ms)),
            Raw::Text(text) => super::parse_ts(text),
            Raw::Owned(text) => super::parse_ts(&text),
        };
        ts_ms.ok_or_else(|| D::Error::custom("impossible or unparsable timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_and_slow_timestamp_parsers_agree() {
        for text in [
            "2026-03-01T12:34:56Z",
            "2026-03-01T12:34:56.789Z",
            "2024-02-29T00:00:00.5Z",
            "1999-12-31T23:59:59Z",
        ] {
            let slow = chrono::DateTime::parse_from_rfc3339(text)
                .map(|d| d.timestamp_millis())
                .ok();
            assert_eq!(parse_ts_fast(text), slow, "{text}");
        }
        assert_eq!(parse_ts("2026-02-30T00:00:00Z"), None);
        assert_eq!(parse_ts("1970-01-01T00:00:00Z"), None, "before the accepted range");
        assert_eq!(
            parse_ts("2026-03-01T12:34:56+02:00"),
            Some(parse_ts("2026-03-01T10:34:56Z").unwrap())
        );
    }

    #[test]
    fn fingerprint_and_hint_hide_the_key() {
        let key = "AKIAIOSFODNN7EXAMPLE";
        let fp = key_fingerprint(key);
        assert!(fp.starts_with("kf_") && fp.len() == 35);
        assert!(!fp.contains(key));
        assert_eq!(key_hint(key), "AKIA****MPLE");
        assert_eq!(key_hint("short"), "****");
        assert_eq!(
            format_ts(parse_ts("2026-03-01T12:34:56.789Z").unwrap()),
            "2026-03-01T12:34:56.789Z"
        );
    }
}
