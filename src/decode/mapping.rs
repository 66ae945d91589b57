//! A configurable field mapping for other JSON gateway logs (Kong, Envoy,
//! NGINX JSON access logs, ...): where each canonical field is found in the
//! gateway's record, written as a dotted path.
//!
//! The record is not built into a full JSON tree: each path is followed by
//! parsing only the objects along it, keeping the leaf strings borrowed from
//! the input where they need no unescaping.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use ipnet::IpNet;

use super::canonical::{check_ts_range, key_field, optional};
use super::{DecodeError, Scalar, expect_object, parse_record};
use crate::event::{AccessEvent, parse_ts};

/// Where each canonical field is found in a gateway's JSON record.
///
/// A path is a dotted list of object keys, such as
/// `request.headers.x-api-key`; a key that itself contains dots is matched
/// whole (`"http.method"` in a flat record), and a number selects an element
/// of an array (`forwarded.0`). Every path defaults to the canonical field
/// name at the top level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Path of the event time, read as `ts_format` says.
    #[serde(default = "default_ts_path")]
    pub ts: String,
    /// How the event time is written: `rfc3339` text (the default),
    /// `epoch_ms` (milliseconds since 1970) or `epoch_s` (seconds since 1970,
    /// fractions allowed). Numbers written as strings are accepted for the
    /// epoch forms.
    #[serde(default)]
    pub ts_format: TsFormat,
    /// Path of the API key id, for example `request.headers.x-api-key`.
    /// Records where it is absent or empty are counted and skipped.
    #[serde(default = "default_key_id_path")]
    pub key_id: String,
    /// Path of the client IP address. `address:port`, `[v6]:port` and a
    /// comma-separated `X-Forwarded-For` list are accepted. In a list, the
    /// client is the right-most entry not in `trusted_proxies`: every proxy
    /// appends the address it received the request from, so entries to the
    /// left of the last untrusted one were written by the client itself and
    /// can be anything it likes.
    #[serde(default = "default_ip_path")]
    pub ip: String,
    /// Networks of your own proxies and load balancers (CIDR such as
    /// `10.0.0.0/8`, or a single address), skipped from the right of an
    /// `X-Forwarded-For` list. When every entry is trusted, the left-most is
    /// the client.
    #[serde(default, with = "cidr_list", skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<IpNet>,
    /// Path of the HTTP method.
    #[serde(default = "default_method_path")]
    pub method: String,
    /// Method used when a record has none at `method`; without it, such a
    /// record is rejected.
    #[serde(default)]
    pub default_method: Option<String>,
    /// Path of the endpoint (route or URL path).
    #[serde(default = "default_endpoint_path")]
    pub endpoint: String,
    /// Path of the HTTP response status (a number, or a number as text).
    #[serde(default = "default_status_path")]
    pub status: String,
    /// Status used when a record has none at `status`; without it, such a
    /// record is rejected.
    #[serde(default)]
    pub default_status: Option<u16>,
    /// Path of the user agent; empty when absent.
    #[serde(default = "default_user_agent_path")]
    pub user_agent: String,
    /// Path of the response size in bytes; 0 when absent.
    #[serde(default = "default_bytes_out_path")]
    pub bytes_out: String,
    /// Path of the request id; none when absent.
    #[serde(default = "default_request_id_path")]
    pub request_id: String,
}

/// How a mapped timestamp is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TsFormat {
    /// RFC 3339 text such as `2026-03-01T12:00:00.123Z`.
    #[default]
    Rfc3339,
    /// Milliseconds since the Unix epoch.
    EpochMs,
    /// Seconds since the Unix epoch, with or without a fraction.
    EpochS,
}

fn default_ts_path() -> String {
    "ts".to_string()
}

fn default_key_id_path() -> String {
    "key_id".to_string()
}

fn default_ip_path() -> String {
    "ip".to_string()
}

fn default_method_path() -> String {
    "method".to_string()
}

fn default_endpoint_path() -> String {
    "endpoint".to_string()
}

fn default_status_path() -> String {
    "status".to_string()
}

fn default_user_agent_path() -> String {
    "user_agent".to_string()
}

fn default_bytes_out_path() -> String {
    "bytes_out".to_string()
}

fn default_request_id_path() -> String {
    "request_id".to_string()
}

impl Default for FieldMapping {
    fn default() -> Self {
        FieldMapping {
            ts: default_ts_path(),
            ts_format: TsFormat::default(),
            key_id: default_key_id_path(),
            ip: default_ip_path(),
            trusted_proxies: Vec::new(),
            method: default_method_path(),
            default_method: None,
            endpoint: default_endpoint_path(),
            status: default_status_path(),
            default_status: None,
            user_agent: default_user_agent_path(),
            bytes_out: default_bytes_out_path(),
            request_id: default_request_id_path(),
        }
    }
}

/// Decodes one record through `mapping`.
pub fn decode_mapped<'a>(record: &'a [u8], mapping: &FieldMapping) -> Result<AccessEvent<'a>, DecodeError> {
    expect_object(record)?;
    let root: RawObject<'a> = parse_record(record)?;
    let lookup = |path: &str| -> Result<Option<Scalar<'a>>, DecodeError> { root.lookup(path).map(optional) };

    let key_id = key_field(lookup(&mapping.key_id)?, "key_id")?;
    let ts_ms = match lookup(&mapping.ts)? {
        None => return Err(DecodeError::MissingField("ts")),
        Some(value) => mapped_ts(value, mapping.ts_format, &mapping.ts)?,
    };
    let ip = match lookup(&mapping.ip)? {
        None => return Err(DecodeError::MissingField("ip")),
        Some(value) => mapped_ip(value.into_text("ip")?, &mapping.trusted_proxies)?,
    };
    let method = match (lookup(&mapping.method)?, &mapping.default_method) {
        (Some(value), _) => value.into_text("method")?,
        (None, Some(default)) => Cow::Owned(default.clone()),
        (None, None) => return Err(DecodeError::MissingField("method")),
    };
    let endpoint = match lookup(&mapping.endpoint)? {
        None => return Err(DecodeError::MissingField("endpoint")),
        Some(value) => value.into_text("endpoint")?,
    };
    let status = match (lookup(&mapping.status)?, mapping.default_status) {
        (Some(value), _) => mapped_number(value, "status", &mapping.status)
            .and_then(|status| u16::try_from(status).map_err(|_| not_a_number("status", &mapping.status)))?,
        (None, Some(default)) => default,
        (None, None) => return Err(DecodeError::MissingField("status")),
    };
    let user_agent = match lookup(&mapping.user_agent)? {
        None => Cow::Borrowed(""),
        Some(value) => value.into_text("user_agent")?,
    };
    let bytes_out = match lookup(&mapping.bytes_out)? {
        None => 0,
        Some(value) => mapped_number(value, "bytes_out", &mapping.bytes_out)?,
    };
    let request_id = lookup(&mapping.request_id)?
        .map(|value| value.into_text("request_id"))
        .transpose()?;
    Ok(AccessEvent {
        ts_ms,
        key_id,
        ip,
        method,
        endpoint,
        status,
        user_agent,
        bytes_out,
        request_id,
    })
}

pub(crate) fn mapped_ts(value: Scalar<'_>, format: TsFormat, path: &str) -> Result<i64, DecodeError> {
    let bad = |value: &dyn fmt::Display| DecodeError::BadTimestamp(value.to_string());
    match (format, value) {
        (TsFormat::Rfc3339, Scalar::Str(text)) => parse_ts(&text).ok_or_else(|| bad(&text)),
        (TsFormat::EpochMs, Scalar::Int(millis)) => check_ts_range(i128::from(millis)),
        (TsFormat::EpochMs, Scalar::UInt(millis)) => check_ts_range(i128::from(millis)),
        (TsFormat::EpochS, Scalar::Int(seconds)) => check_ts_range(i128::from(seconds) * 1000),
        (TsFormat::EpochS, Scalar::UInt(seconds)) => check_ts_range(i128::from(seconds) * 1000),
        (TsFormat::EpochMs, Scalar::Float(millis)) => epoch_float(millis, 1.0),
        (TsFormat::EpochS, Scalar::Float(seconds)) => epoch_float(seconds, 1000.0),
        (TsFormat::EpochMs | TsFormat::EpochS, Scalar::Str(text)) => match text.trim().parse::<f64>() {
            Ok(number) => mapped_ts(Scalar::Float(number), format, path),
            Err(_) => Err(bad(&text)),
        },
        (format, other) => Err(DecodeError::WrongType {
            field: "ts",
            detail: format!(
                "at `{path}`: expected a {format:?} timestamp, found {}",
                other.type_name()
            ),
        }),
    }
}

fn epoch_float(value: f64, to_millis: f64) -> Result<i64, DecodeError> {
    let millis = value * to_millis;
    // Compared as floats first: the range check below then cannot overflow.
    if !millis.is_finite() || millis.abs() > 1e15 {
        return Err(DecodeError::BadTimestamp(value.to_string()));
    }
    check_ts_range(millis.round() as i128)
}

/// Gateways log the client address in several shapes: one address, with
/// or without a port, or an `X-Forwarded-For` list. In a list the client is
/// the right-most entry that is not one of `trusted_proxies` (see
/// [`FieldMapping::ip`]); an unparsable entry at or right of it makes the
/// record a `bad_ip`, since nothing left of it can be trusted.
pub(crate) fn mapped_ip(text: Cow<'_, str>, trusted_proxies: &[IpNet]) -> Result<IpAddr, DecodeError> {
    let parse = |entry: &str| {
        let entry = entry.trim();
        entry
            .parse::<IpAddr>()
            .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
            .ok()
    };
    let mut leftmost_trusted = None;
    for entry in text.rsplit(',') {
        let Some(ip) = parse(entry) else {
            return Err(DecodeError::BadIp(text.into_owned()));
        };
        let canonical = ip.to_canonical();
        if !trusted_proxies.iter().any(|network| network.contains(&canonical)) {
            return Ok(ip);
        }
        leftmost_trusted = Some(ip);
    }
    leftmost_trusted.ok_or_else(|| DecodeError::BadIp(text.into_owned()))
}

/// `trusted_proxies` as text: `10.0.0.0/8`, `2001:db8::/32`, or a single
/// address for one host.
mod cidr_list {
    use std::net::IpAddr;

    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(networks: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(networks.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .map(|network| network.trunc())
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| D::Error::custom(format!("`{text}` is not a network (CIDR) or an address")))
            })
            .collect()
    }
}

pub(crate) fn mapped_number(value: Scalar<'_>, field: &'static str, path: &str) -> Result<u64, DecodeError> {
    match value {
        Scalar::UInt(number) => Ok(number),
        Scalar::Str(text) => text.trim().parse().map_err(|_| not_a_number(field, path)),
        _ => Err(not_a_number(field, path)),
    }
}

pub(crate) fn not_a_number(field: &'static str, path: &str) -> DecodeError {
    DecodeError::WrongType {
        field,
        detail: format!("at `{path}`: expected a non-negative integer in range"),
    }
}

/// One JSON object with its values left unparsed. Keys borrow from the input
/// unless escaped.
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawObject<'a> {
    /// Follows a dotted path. Absent at any step gives `None`; a non-object
    /// in the middle of the path also gives `None`, as the field is not there.
    fn lookup(&self, path: &str) -> Result<Option<Scalar<'a>>, DecodeError> {
        if path.is_empty() {
            return Ok(None);
        }
        // The whole rest as one key first, so flat records with dotted keys
        // work; then each split point from the left.
        if let Some(value) = self.get(path) {
            return Ok(Some(serde_json::from_str(value.get())?));
        }
        for (dot, _) in path.match_indices('.') {
            let (head, rest) = (&path[..dot], &path[dot + 1..]);
            let Some(value) = self.get(head) else { continue };
            if let Some(found) = lookup_in(value, rest)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(name, _)| name == key).map(|(_, value)| *value)
    }
}

fn lookup_in<'a>(value: &'a RawValue, path: &str) -> Result<Option<Scalar<'a>>, DecodeError> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'{') => serde_json::from_str::<RawObject<'a>>(text)?.lookup(path),
        Some(b'[') => {
            let elements: Vec<&'a RawValue> = serde_json::from_str(text)?;
            let (index, rest) = path.split_once('.').unwrap_or((path, ""));
            let Some(element) = index.parse::<usize>().ok().and_then(|index| elements.get(index)) else {
                return Ok(None);
            };
            if rest.is_empty() {
                Ok(Some(serde_json::from_str(element.get())?))
            } else {
                lookup_in(element, rest)
            }
        }
        _ => Ok(None),
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawObjectVisitor;

        impl<'de> Visitor<'de> for RawObjectVisitor {
            type Value = RawObject<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a json object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    let Scalar::Str(key) = key else {
                        return Err(de::Error::custom("object key is not a string"));
                    };
                    entries.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(RawObject(entries))
            }
        }

        deserializer.deserialize_map(RawObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KONG_LIKE: &str = r#"{
        "started_at": 1772368496789,
        "client_ip": "203.0.113.9, 10.0.0.1",
        "request": {"method": "GET", "uri": "/v2/items?page=2",
                    "headers": {"x-api-key": "kg_live_abc", "user-agent": "curl/8.5"}, "id": "r-1"},
        "response": {"status": "404", "size": 1200},
        "http.route": "/v2/items",
        "hops": [{"addr": "[2001:db8::1]:443"}]
    }"#;

    fn kong_mapping() -> FieldMapping {
        toml::from_str(
            r#"
            ts = "started_at"
            ts_format = "epoch_ms"
            key_id = "request.headers.x-api-key"
            ip = "client_ip"
            trusted_proxies = ["10.0.0.0/8"]
            method = "request.method"
            endpoint = "http.route"
            status = "response.status"
            user_agent = "request.headers.user-agent"
            bytes_out = "response.size"
            request_id = "request.id"
            "#,
        )
        .expect("mapping parses")
    }

    #[test]
    fn follows_dotted_paths() {
        let event = decode_mapped(KONG_LIKE.as_bytes(), &kong_mapping()).expect("valid record");
        assert_eq!(event.ts_ms, 1_772_368_496_789);
        assert_eq!(event.key_id, "kg_live_abc");
        assert_eq!(event.ip.to_string(), "203.0.113.9");
        assert_eq!((event.method.as_ref(), event.endpoint.as_ref()), ("GET", "/v2/items"));
        assert_eq!((event.status, event.bytes_out), (404, 1200));
        assert_eq!(event.user_agent, "curl/8.5");
        assert_eq!(event.request_id.as_deref(), Some("r-1"));
        assert!(matches!(event.key_id, Cow::Borrowed(_)), "leaf strings borrow");
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_entry() {
        let trusted: Vec<IpNet> = ["10.0.0.0/8", "2001:db8:ff::/48", "198.51.100.7/32"]
            .iter()
            .map(|text| text.parse().expect("a network"))
            .collect();
        let client = |list: &str, trusted: &[IpNet]| mapped_ip(Cow::Borrowed(list), trusted).map(|ip| ip.to_string());
        // The client wrote 1.2.3.4 itself; our proxy saw 203.0.113.9.
        assert_eq!(
            client("1.2.3.4, 203.0.113.9, 10.0.0.1", &trusted),
            Ok("203.0.113.9".into())
        );
        assert_eq!(
            client("1.2.3.4, 203.0.113.9:5555, 198.51.100.7, 10.1.2.3", &trusted),
            Ok("203.0.113.9".into()),
            "several trusted hops, a port"
        );
        assert_eq!(
            client("203.0.113.9, [2001:db8:ff::1]:443", &trusted),
            Ok("203.0.113.9".into())
        );
        assert_eq!(
            client("10.0.0.2, 10.0.0.1", &trusted),
            Ok("10.0.0.2".into()),
            "all trusted"
        );
        assert_eq!(
            client("1.2.3.4, 203.0.113.9", &[]),
            Ok("203.0.113.9".into()),
            "no trusted list"
        );
        assert_eq!(client("203.0.113.9", &trusted), Ok("203.0.113.9".into()));
        assert_eq!(
            client("not-an-ip, 203.0.113.9, 10.0.0.1", &trusted),
            Ok("203.0.113.9".into())
        );
        assert!(matches!(
            client("203.0.113.9, garbage, 10.0.0.1", &trusted),
            Err(DecodeError::BadIp(_))
        ));
        assert!(matches!(client("", &trusted), Err(DecodeError::BadIp(_))));
    }

    #[test]
    fn trusted_proxies_parse_networks_and_addresses() {
        let mapping: FieldMapping =
            toml::from_str(r#"trusted_proxies = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]"#).expect("parses");
        let shown: Vec<String> = mapping.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]);
        let err = toml::from_str::<FieldMapping>(r#"trusted_proxies = ["10.0.0.0/33"]"#).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn array_indices_and_socket_addresses() {
        let mapping = FieldMapping {
            ip: "hops.0.addr".into(),
            ..kong_mapping()
        };
        let event = decode_mapped(KONG_LIKE.as_bytes(), &mapping).expect("valid record");
        assert_eq!(event.ip.to_string(), "2001:db8::1");
    }

    #[test]
    fn defaults_fill_missing_method_and_status() {
        let record = br#"{"t":"2026-03-01T00:00:00Z","k":"key1","a":"192.0.2.1","path":"/x"}"#;
        let mapping: FieldMapping = toml::from_str(
            r#"
            ts = "t"
            key_id = "k"
            ip = "a"
            endpoint = "path"
            default_method = "POST"
            default_status = 200
            "#,
        )
        .expect("mapping parses");
        let event = decode_mapped(record, &mapping).expect("valid record");
        assert_eq!((event.method.as_ref(), event.status), ("POST", 200));
        let strict = FieldMapping {
            default_status: None,
            ..mapping
        };
        assert_eq!(decode_mapped(record, &strict), Err(DecodeError::MissingField("status")));
    }

    #[test]
    fn timestamp_formats() {
        let ts_ms = 1_772_368_496_500;
        let cases: [(TsFormat, serde_json::Value); 6] = [
            (TsFormat::Rfc3339, "2026-03-01T12:34:56.5Z".into()),
            (TsFormat::EpochMs, ts_ms.into()),
            (TsFormat::EpochMs, "1772368496500".into()),
            (TsFormat::EpochS, 1_772_368_496.5.into()),
            (TsFormat::EpochS, "1772368496.5".into()),
            (TsFormat::EpochS, (ts_ms / 1000).into()),
        ];
        for (format, value) in cases {
            let text = value.to_string();
            let scalar: Scalar<'_> = serde_json::from_str(&text).expect("scalar");
            let parsed = mapped_ts(scalar, format, "ts");
            let expected = if value.is_u64() && format == TsFormat::EpochS {
                ts_ms - 500
            } else {
                ts_ms
            };
            assert_eq!(parsed, Ok(expected), "{format:?} {value}");
        }
        assert!(matches!(
            mapped_ts(Scalar::Float(f64::NAN), TsFormat::EpochS, "ts"),
            Err(DecodeError::BadTimestamp(_))
        ));
        assert!(matches!(
            mapped_ts(Scalar::Float(1e300), TsFormat::EpochMs, "ts"),
            Err(DecodeError::BadTimestamp(_))
        ));
        assert!(matches!(
            mapped_ts(Scalar::UInt(5), TsFormat::Rfc3339, "ts"),
            Err(DecodeError::WrongType { field: "ts", .. })
        ));
    }

    #[test]
    fn problems_are_reported() {
        let mapping = kong_mapping();
        let no_key = KONG_LIKE.replace("kg_live_abc", "");
        assert_eq!(decode_mapped(no_key.as_bytes(), &mapping), Err(DecodeError::NoKey));
        let bad_ip = KONG_LIKE.replace("203.0.113.9", "unknown");
        assert!(matches!(
            decode_mapped(bad_ip.as_bytes(), &mapping),
            Err(DecodeError::BadIp(_))
        ));
        let bad_status = KONG_LIKE.replace("\"404\"", "\"not found\"");
        assert!(matches!(
            decode_mapped(bad_status.as_bytes(), &mapping),
            Err(DecodeError::WrongType { field: "status", .. })
        ));
        let huge_status = KONG_LIKE.replace("\"404\"", "70000");
        assert!(matches!(
            decode_mapped(huge_status.as_bytes(), &mapping),
            Err(DecodeError::WrongType { field: "status", .. })
        ));
        assert!(matches!(
            decode_mapped(b"[]", &mapping),
            Err(DecodeError::MalformedJson(_))
        ));
    }

    #[test]
    fn unknown_mapping_keys_are_rejected() {
        let error = toml::from_str::<FieldMapping>("key = \"x\"").expect_err("unknown field");
        assert!(error.to_string().contains("unknown field"), "{error}");
        assert_eq!(
            toml::from_str::<FieldMapping>("").expect("all defaults"),
            FieldMapping::default()
        );
    }
}
