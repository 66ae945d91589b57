//! The canonical access event, borrowed from the bytes it was decoded from,
//! and the redaction helpers that keep raw key ids out of every output.

use std::borrow::Cow;
use std::net::IpAddr;

use hmac::Hmac;
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

/// The unkeyed fingerprint of a key id: the first 128 bits of SHA-256 of
/// the key id, hex encoded, prefixed `kf_`. This is [`Fingerprinter::unkeyed`]:
/// for tests, the demo and generated data only, since anyone holding a
/// candidate key id can confirm it against an unkeyed fingerprint offline.
pub fn key_fingerprint(key_id: &str) -> String {
    Fingerprinter::unkeyed().fingerprint(key_id)
}

/// Environment variable holding the fingerprint secret (see [`Fingerprinter`]).
pub const FINGERPRINT_KEY_ENV: &str = "KEYWATCH_FINGERPRINT_KEY";

/// Shortest fingerprint secret accepted, in bytes: HMAC-SHA-256 is only as
/// strong as its key, and a short one can be guessed.
pub const MIN_FINGERPRINT_SECRET_BYTES: usize = 16;

/// Why a fingerprint secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("fingerprint secret from {origin} is {len} bytes; at least {MIN_FINGERPRINT_SECRET_BYTES} are needed")]
    TooShort { origin: String, len: usize },
    #[error("cannot read fingerprint secret file {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// How key ids become fingerprints, the only identity of a key in any
/// output (alerts, revocation requests, digests, snapshots).
///
/// Keyed (the production mode): `kf_` followed by the lowercase hex of the
/// first 16 bytes of HMAC-SHA-256(key = the secret's bytes, message = the
/// key id's UTF-8 bytes after canonicalisation, see
/// [`crate::decode::canonical_key_id`]). A revocation service that holds the
/// same secret computes the same value from the keys it manages; anyone
/// without the secret cannot confirm a guessed key id from an alert.
///
/// Unkeyed: `kf_` and the first 16 bytes of plain SHA-256 of the key id, for
/// tests, the demo and generated data.
///
/// `Debug` and [`Fingerprinter::mode_name`] never show the secret.
#[derive(Clone)]
pub struct Fingerprinter {
    /// The HMAC state after absorbing the secret: cloning it per key skips
    /// re-deriving the padded key blocks.
    keyed: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Fingerprinter({})", self.mode_name())
    }
}

/// Two fingerprinters are equal when they fingerprint alike; compared by
/// their answer for a fixed probe, since the secret is not kept apart.
impl PartialEq for Fingerprinter {
    fn eq(&self, other: &Fingerprinter) -> bool {
        const PROBE: &str = "keywatch-fingerprinter-equality-probe";
        self.is_keyed() == other.is_keyed() && self.fingerprint(PROBE) == other.fingerprint(PROBE)
    }
}

impl Eq for Fingerprinter {}

impl Default for Fingerprinter {
    fn default() -> Self {
        Fingerprinter::unkeyed()
    }
}

impl Fingerprinter {
    /// Plain SHA-256: for tests, the demo and generated data.
    pub fn unkeyed() -> Fingerprinter {
        Fingerprinter { keyed: None }
    }

    /// HMAC-SHA-256 with `secret`; `origin` names where it came from in errors.
    pub fn keyed(secret: &[u8], origin: &str) -> Result<Fingerprinter, FingerprintError> {
        if secret.len() < MIN_FINGERPRINT_SECRET_BYTES {
            return Err(FingerprintError::TooShort {
                origin: origin.to_string(),
                len: secret.len(),
            });
        }
        // HMAC accepts a key of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(secret).ok();
        Ok(Fingerprinter { keyed: mac })
    }

    /// The secret in a file: its bytes, without trailing line ends
    /// (`\n`, `\r\n`), so that `echo secret > file` works as expected.
    pub fn from_file(path: &std::path::Path) -> Result<Fingerprinter, FingerprintError> {
        let bytes = std::fs::read(path).map_err(|source| FingerprintError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let end = bytes
            .iter()
            .rposition(|byte| *byte != b'\n' && *byte != b'\r')
            .map_or(0, |last| last + 1);
        Fingerprinter::keyed(&bytes[..end], &path.display().to_string())
    }

    /// Whether fingerprints are keyed.
    pub fn is_keyed(&self) -> bool {
        self.keyed.is_some()
    }

    /// `hmac-sha256` or `unkeyed`, for logs: never the secret.
    pub fn mode_name(&self) -> &'static str {
        if self.is_keyed() { "hmac-sha256" } else { "unkeyed" }
    }

    /// The fingerprint of `key_id`.
    pub fn fingerprint(&self, key_id: &str) -> String {
        crate::key_text::fingerprint_text(self.bits(key_id))
    }

    /// The 128 bits of the fingerprint of `key_id`: the first half of its
    /// HMAC (keyed) or SHA-256 (unkeyed).
    pub fn bits(&self, key_id: &str) -> u128 {
        let mut bytes = [0u8; 16];
        match &self.keyed {
            Some(mac) => {
                let mut mac = mac.clone();
                hmac::Mac::update(&mut mac, key_id.as_bytes());
                bytes.copy_from_slice(&hmac::Mac::finalize(mac).into_bytes()[..16]);
            }
            None => bytes.copy_from_slice(&Sha256::digest(key_id.as_bytes())[..16]),
        }
        u128::from_be_bytes(bytes)
    }
}

/// Key ids shorter than this get no characters in their hint.
pub const HINT_MIN_KEY_CHARS: usize = 20;

/// A masked form of the key id a person can recognise without being able to
/// use it: `****` and the last four characters of ids of
/// [`HINT_MIN_KEY_CHARS`] or more characters, `****` alone for shorter ones.
/// Four characters of a long key leave far too many candidates to confirm
/// it from an alert; of a short key, they would be a large part of it.
pub fn key_hint(key_id: &str) -> String {
    let count = key_id.chars().count();
    if count < HINT_MIN_KEY_CHARS {
        return "****".to_string();
    }
    let tail_start = key_id.char_indices().nth(count - 4).map_or(0, |(at, _)| at);
    format!("****{}", &key_id[tail_start..])
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
        assert_eq!(key_hint(key), "****MPLE");
        assert_eq!(key_hint("short"), "****");
        assert_eq!(key_hint("sk_live_0123456789a"), "****", "19 characters show nothing");
        assert_eq!(key_hint("sk_live_0123456789ab"), "****89ab");
        assert_eq!(
            key_hint("ключ_ключ_ключ_ключ_éèêë"),
            "****éèêë",
            "characters, not bytes"
        );
        assert_eq!(
            format_ts(parse_ts("2026-03-01T12:34:56.789Z").unwrap()),
            "2026-03-01T12:34:56.789Z"
        );
    }

    #[test]
    fn unkeyed_fingerprint_is_truncated_sha256() {
        let fp = key_fingerprint("AKIAIOSFODNN7EXAMPLE");
        let expected = format!("kf_{}", hex::encode(&Sha256::digest(b"AKIAIOSFODNN7EXAMPLE")[..16]));
        assert_eq!(fp, expected);
        assert_eq!(Fingerprinter::unkeyed().mode_name(), "unkeyed");
    }

    /// RFC 4231 test case 1: HMAC-SHA-256(key = 20 bytes of 0x0b,
    /// "Hi There") begins b0344c61d8db38535ca8afceaf0bf12b.
    #[test]
    fn keyed_fingerprint_is_truncated_hmac_sha256() {
        let fingerprinter = Fingerprinter::keyed(&[0x0b; 20], "test").expect("long enough");
        assert_eq!(
            fingerprinter.fingerprint("Hi There"),
            "kf_b0344c61d8db38535ca8afceaf0bf12b"
        );
        assert_eq!(fingerprinter.mode_name(), "hmac-sha256");
        assert_ne!(fingerprinter.fingerprint("k"), key_fingerprint("k"));
        let other = Fingerprinter::keyed(&[0x0c; 20], "test").expect("long enough");
        assert_ne!(
            fingerprinter.fingerprint("k"),
            other.fingerprint("k"),
            "the secret matters"
        );
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        let err = Fingerprinter::keyed(b"tooshort", "KEYWATCH_FINGERPRINT_KEY").unwrap_err();
        assert!(err.to_string().contains("KEYWATCH_FINGERPRINT_KEY"), "{err}");
        let secret = b"a-secret-of-enough-bytes";
        let fingerprinter = Fingerprinter::keyed(secret, "test").expect("long enough");
        let shown = format!("{fingerprinter:?}");
        assert_eq!(shown, "Fingerprinter(hmac-sha256)");
    }

    #[test]
    fn secret_file_loses_only_its_line_end() {
        let dir = std::env::temp_dir().join(format!("keywatch-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("secret");
        std::fs::write(&path, b"0123456789abcdef-secret\r\n").expect("write");
        let from_file = Fingerprinter::from_file(&path).expect("readable");
        let direct = Fingerprinter::keyed(b"0123456789abcdef-secret", "test").expect("long enough");
        assert_eq!(from_file.fingerprint("k"), direct.fingerprint("k"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
