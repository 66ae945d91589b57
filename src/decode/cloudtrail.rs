//! AWS CloudTrail records, either one event per record (a line, a Kafka
//! message, as EventBridge or a log shipper delivers them) or a whole
//! `{"Records":[...]}` file as CloudTrail writes it to S3.
//!
//! How a CloudTrail event becomes an access event:
//!
//! | access event | CloudTrail                                                    |
//! |--------------|---------------------------------------------------------------|
//! | `key_id`     | `userIdentity.accessKeyId` (none for AWS service events)      |
//! | `ip`         | `sourceIPAddress`; a service principal gives [`SERVICE_SOURCE_IP`] |
//! | `ts`         | `eventTime`                                                   |
//! | `endpoint`   | `eventSource` without `.amazonaws.com`, `:`, `eventName`      |
//! | `method`     | `READ` / `WRITE` from `readOnly`, `CALL` when it is absent    |
//! | `status`     | 200, or derived from `errorCode` by [`status_for_error_code`] |
//! | `user_agent` | `userAgent`                                                   |
//! | `bytes_out`  | `additionalEventData.bytesTransferredOut` (S3), else 0        |
//! | `request_id` | `requestID`, else `eventID`                                   |
//!
//! A call an AWS service made on the caller's behalf with the caller's key
//! (CloudFormation creating a stack, `AWS Internal` for the console's own
//! calls) carries the service's name instead of an address. It is still a
//! use of the key, so it is decoded, not rejected, with the unspecified
//! address [`SERVICE_SOURCE_IP`] as its source, which GeoIP answers as
//! unknown: it counts for the key's rate and endpoints but has no country,
//! network or location, and never makes a place or a journey. Any other
//! text that is not an address is still `bad_ip`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::canonical::{key_field, optional, required};
use super::{DecodeError, ObjectOr, Scalar, expect_object, parse_record};
use crate::event::{AccessEvent, MAX_TS_MS, MIN_TS_MS, parse_ts};

/// The source address of a call made through an AWS service (see the module
/// documentation): `0.0.0.0`, which no real client has.
pub const SERVICE_SOURCE_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Whether a `sourceIPAddress` names an AWS service rather than an address:
/// `AWS Internal`, or a service principal such as
/// `cloudformation.amazonaws.com` (also `.amazonaws.com.cn`).
pub fn is_service_principal(source: &str) -> bool {
    if source.eq_ignore_ascii_case("AWS Internal") {
        return true;
    }
    let Some(service) = source
        .strip_suffix(".amazonaws.com")
        .or_else(|| source.strip_suffix(".amazonaws.com.cn"))
    else {
        return false;
    };
    !service.is_empty()
        && service
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
}

/// The fields of a CloudTrail event this decoder reads; everything else
/// (request parameters, response elements, ...) is skipped unparsed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCloudTrail<'a> {
    #[serde(borrow, default)]
    event_time: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    event_source: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    event_name: Option<Scalar<'a>>,
    #[serde(rename = "sourceIPAddress", borrow, default)]
    source_ip_address: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    user_agent: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    error_code: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    read_only: Option<Scalar<'a>>,
    #[serde(rename = "requestID", borrow, default)]
    request_id: Option<Scalar<'a>>,
    #[serde(rename = "eventID", borrow, default)]
    event_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    user_identity: Option<ObjectOr<UserIdentity<'a>>>,
    #[serde(borrow, default)]
    additional_event_data: Option<ObjectOr<AdditionalEventData<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserIdentity<'a> {
    #[serde(borrow, default)]
    access_key_id: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdditionalEventData<'a> {
    #[serde(borrow, default)]
    bytes_transferred_out: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct RecordsDocument<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<&'a RawValue>,
}

/// True when `bytes` start (after whitespace) with `{"Records":`, the shape
/// of a CloudTrail log file. The file reader uses it to decide between
/// "the whole file is one record" and "one record per line"; it looks at a
/// few bytes only and does not validate the rest.
pub fn is_records_document(bytes: &[u8]) -> bool {
    let mut rest = skip_whitespace(bytes);
    // Files written by some tools start with a UTF-8 byte order mark.
    if let Some(after_bom) = rest.strip_prefix(b"\xEF\xBB\xBF") {
        rest = skip_whitespace(after_bom);
    }
    let Some(rest) = rest.strip_prefix(b"{") else {
        return false;
    };
    let Some(rest) = skip_whitespace(rest).strip_prefix(b"\"Records\"") else {
        return false;
    };
    skip_whitespace(rest).starts_with(b":")
}

fn skip_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// True when a record has an `"eventSource"` or `"eventTime"` key. A byte
/// scan, not a parse: cheap enough to run on every record in auto mode.
/// Requiring the `:` after the closing quote means a string value that
/// merely says `eventTime` does not count, and quotes inside strings are
/// always escaped, so only a real key can match.
pub(crate) fn looks_like_cloudtrail(record: &[u8]) -> bool {
    // Fast path for canonical producers, which write `ts` or `key_id` first;
    // no CloudTrail event has either key, so the scan can be skipped.
    if let Some(after_brace) = skip_whitespace(record).strip_prefix(b"{") {
        let first_key = skip_whitespace(after_brace);
        if first_key.starts_with(b"\"ts\"") || first_key.starts_with(b"\"key_id\"") {
            return false;
        }
    }
    record.iter().enumerate().any(|(position, &byte)| {
        byte == b'"' && {
            let after = &record[position + 1..];
            let key_rest = after
                .strip_prefix(b"eventSource\"")
                .or_else(|| after.strip_prefix(b"eventTime\""));
            key_rest.is_some_and(|rest| skip_whitespace(rest).starts_with(b":"))
        }
    })
}

/// Decodes a `{"Records":[...]}` document. Each element is decoded on its
/// own, so a bad element yields an error at its index and the others still
/// decode; a document that is not valid JSON as a whole yields one error.
pub(crate) fn decode_records_document<'a>(
    document: &'a [u8],
    max_event_bytes: usize,
    out: &mut Vec<Result<AccessEvent<'a>, DecodeError>>,
) {
    let parsed: RecordsDocument<'a> = match serde_json::from_slice(document) {
        Ok(parsed) => parsed,
        Err(error) => {
            out.push(Err(DecodeError::MalformedJson(format!(
                "cloudtrail records document: {error}"
            ))));
            return;
        }
    };
    out.reserve(parsed.records.len());
    for element in parsed.records {
        let element = element.get().as_bytes();
        if element.len() > max_event_bytes {
            out.push(Err(DecodeError::Oversized {
                size: element.len(),
                limit: max_event_bytes,
            }));
        } else {
            out.push(decode_event(element));
        }
    }
}

/// Decodes one CloudTrail event object.
pub fn decode_event(record: &[u8]) -> Result<AccessEvent<'_>, DecodeError> {
    expect_object(record)?;
    let raw: RawCloudTrail<'_> = parse_record(record)?;
    // The key first: AWS service events have neither a key nor an IP, and
    // they must be skipped as keyless, not rejected for their IP.
    let key_id = match raw.user_identity {
        None => return Err(DecodeError::NoKey),
        Some(ObjectOr::Other(found)) => {
            return Err(DecodeError::WrongType {
                field: "userIdentity",
                detail: format!("expected an object, found {found}"),
            });
        }
        Some(ObjectOr::Object(identity)) => key_field(identity.access_key_id, "userIdentity.accessKeyId")?,
    };
    let ip_text = required(raw.source_ip_address, "sourceIPAddress")?.into_text("sourceIPAddress")?;
    let ip: IpAddr = match super::parse_ip(&ip_text) {
        Some(ip) => ip,
        None if is_service_principal(&ip_text) => SERVICE_SOURCE_IP,
        None => return Err(DecodeError::BadIp(ip_text.into_owned())),
    };
    let ts_text = required(raw.event_time, "eventTime")?.into_text("eventTime")?;
    let ts_ms = parse_event_time(&ts_text).ok_or_else(|| DecodeError::BadTimestamp(ts_text.clone().into_owned()))?;
    let event_source = required(raw.event_source, "eventSource")?.into_text("eventSource")?;
    let event_name = required(raw.event_name, "eventName")?.into_text("eventName")?;
    let service = event_source.strip_suffix(".amazonaws.com").unwrap_or(&event_source);
    let status = match optional(raw.error_code) {
        None => 200,
        Some(code) => status_for_error_code(&code.into_text("errorCode")?),
    };
    let user_agent = optional(raw.user_agent)
        .map(|value| value.into_text("userAgent"))
        .transpose()?
        .unwrap_or_default();
    let request_id = [raw.request_id, raw.event_id]
        .into_iter()
        .filter_map(|value| match optional(value) {
            Some(Scalar::Str(id)) if !id.is_empty() => Some(id),
            _ => None,
        })
        .next();
    Ok(AccessEvent {
        ts_ms,
        key_id,
        ip,
        method: Cow::Borrowed(method_for_read_only(raw.read_only.as_ref())),
        endpoint: endpoint_of(service, &event_name),
        status,
        user_agent,
        bytes_out: bytes_out(raw.additional_event_data),
        request_id,
    })
}

/// At most this many distinct CloudTrail endpoints are kept for the life of
/// the process (a few MB at most); AWS has some tens of thousands of
/// `service:action` pairs, so real traffic never reaches it. Past it, a new
/// endpoint is built per event, as crafted input may name endless ones.
const MAX_SHARED_ENDPOINTS: usize = 1 << 17;

/// Endpoints come from outside: the sets' hashers are randomly seeded.
type EndpointSet = HashSet<&'static str, ahash::RandomState>;

/// Endpoints kept for the life of the process, shared by every thread.
static SHARED_ENDPOINTS: Mutex<Option<EndpointSet>> = Mutex::new(None);
/// How many endpoints [`SHARED_ENDPOINTS`] holds, read without its lock.
static SHARED_ENDPOINT_COUNT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's view of [`SHARED_ENDPOINTS`] (no lock per event) and
    /// the scratch the endpoint is written into to look it up.
    static LOCAL_ENDPOINTS: RefCell<(EndpointSet, String)> =
        RefCell::new((EndpointSet::with_hasher(ahash::RandomState::new()), String::new()));
}

/// The endpoint `service:action` of a CloudTrail event. It is made of two
/// fields apart in the record, so it cannot borrow from it; it borrows from
/// a process-wide table instead, which every endpoint joins once: decoding
/// allocates nothing per event once an endpoint has been seen.
fn endpoint_of(service: &str, event_name: &str) -> Cow<'static, str> {
    LOCAL_ENDPOINTS.with(|local| {
        let Ok(mut local) = local.try_borrow_mut() else {
            return Cow::Owned(format!("{service}:{event_name}"));
        };
        let (seen, scratch) = &mut *local;
        scratch.clear();
        scratch.push_str(service);
        scratch.push(':');
        scratch.push_str(event_name);
        if let Some(endpoint) = seen.get(scratch.as_str()) {
            return Cow::Borrowed(*endpoint);
        }
        match shared_endpoint(scratch) {
            Some(endpoint) => {
                seen.insert(endpoint);
                Cow::Borrowed(endpoint)
            }
            None => Cow::Owned(scratch.clone()),
        }
    })
}

/// `endpoint` from the process-wide table, added if there is room.
fn shared_endpoint(endpoint: &str) -> Option<&'static str> {
    let mut shared = SHARED_ENDPOINTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let table = shared.get_or_insert_with(|| EndpointSet::with_hasher(ahash::RandomState::new()));
    if let Some(kept) = table.get(endpoint) {
        return Some(kept);
    }
    if SHARED_ENDPOINT_COUNT.load(Ordering::Relaxed) >= MAX_SHARED_ENDPOINTS {
        return None;
    }
    // Kept until the process ends, by design: bounded above.
    let kept: &'static str = Box::leak(endpoint.to_owned().into_boxed_str());
    table.insert(kept);
    SHARED_ENDPOINT_COUNT.store(table.len(), Ordering::Relaxed);
    Some(kept)
}

/// CloudTrail writes RFC 3339 UTC; events exported again by a SIEM or an
/// Athena query often carry `2024-12-11 21:45:56.000000000` instead, still
/// UTC. Both are accepted, with the same range check.
fn parse_event_time(text: &str) -> Option<i64> {
    parse_ts(text).or_else(|| {
        let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()?;
        let ts_ms = naive.and_utc().timestamp_millis();
        (MIN_TS_MS..MAX_TS_MS).contains(&ts_ms).then_some(ts_ms)
    })
}

/// `readOnly` is a boolean in CloudTrail itself but a string in some
/// re-exported logs. Any other value is treated as absent rather than
/// rejected: the event is still a call made with the key.
fn method_for_read_only(read_only: Option<&Scalar<'_>>) -> &'static str {
    match read_only {
        Some(Scalar::Bool(true)) => "READ",
        Some(Scalar::Bool(false)) => "WRITE",
        Some(Scalar::Str(text)) if text.eq_ignore_ascii_case("true") => "READ",
        Some(Scalar::Str(text)) if text.eq_ignore_ascii_case("false") => "WRITE",
        _ => "CALL",
    }
}

/// S3 data events report the bytes sent to the caller; nothing else does.
/// A value that is not a sensible byte count counts as unknown (0).
fn bytes_out(additional: Option<ObjectOr<AdditionalEventData<'_>>>) -> u64 {
    let Some(ObjectOr::Object(data)) = additional else {
        return 0;
    };
    match data.bytes_transferred_out {
        Some(Scalar::UInt(bytes)) => bytes,
        Some(Scalar::Float(bytes)) if bytes.is_finite() && bytes >= 0.0 => bytes as u64,
        Some(Scalar::Str(text)) => text.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// The HTTP status a CloudTrail `errorCode` stands for. Detectors care about
/// the class (authentication failed, permission denied, throttled, not
/// found), so codes are matched by the words AWS services use in them rather
/// than by an exhaustive list, which would always be out of date.
pub fn status_for_error_code(error_code: &str) -> u16 {
    const AUTHENTICATION: [&str; 13] = [
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AuthFailure",
        "IncompleteSignature",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "InvalidSignature",
        "MissingAuthenticationToken",
        "MissingAuthentication",
        "UnrecognizedClient",
        "RequestExpired",
        "TokenRefreshRequired",
    ];
    const FORBIDDEN: [&str; 7] = [
        "AccessDenied",
        "Unauthorized",
        "Forbidden",
        "NotAuthorized",
        "OptInRequired",
        "AccountProblem",
        "Blocked",
    ];
    const THROTTLED: [&str; 5] = [
        "Throttl",
        "RequestLimitExceeded",
        "TooManyRequests",
        "SlowDown",
        "ProvisionedThroughputExceeded",
    ];
    if error_code.is_empty() {
        return 200;
    }
    // EC2 prefixes its codes with who is at fault.
    if error_code.starts_with("Server.") {
        return 500;
    }
    let code = error_code.strip_prefix("Client.").unwrap_or(error_code);
    let contains_any = |words: &[&str]| words.iter().any(|word| code.contains(word));
    if contains_any(&AUTHENTICATION) {
        401
    } else if contains_any(&FORBIDDEN) {
        403
    } else if contains_any(&THROTTLED) {
        429
    } else if code.starts_with("NoSuch") || code.contains("NotFound") {
        404
    } else if code.contains("DryRunOperation") {
        // The caller had the permission and asked not to act; EC2 answers 412.
        412
    } else if code.contains("ServiceUnavailable") {
        503
    } else if code.contains("InternalError") || code.contains("InternalFailure") || code.contains("ServiceFailure") {
        500
    } else {
        400
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "accessKeyId": "AKIAIOSFODNN7EXAMPLE", "userName": "alice",
                         "sessionContext": {"attributes": {"mfaAuthenticated": "false"}}},
        "eventTime": "2024-08-02T08:23:24Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateAccessKey",
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": {"userName": "bob", "tags": [{"k": "v"}]},
        "responseElements": null,
        "requestID": "req-1",
        "eventID": "evt-1",
        "readOnly": false
    }"#;

    fn edited(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(EVENT).expect("fixture is valid json");
        edit(&mut object);
        serde_json::to_string(&object).expect("serialises")
    }

    #[test]
    fn maps_every_field() {
        let event = decode_event(EVENT.as_bytes()).expect("valid event");
        assert_eq!(event.key_id, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(event.ip.to_string(), "198.51.100.7");
        assert_eq!(event.ts_ms, parse_ts("2024-08-02T08:23:24Z").expect("valid ts"));
        assert_eq!(event.endpoint, "iam:CreateAccessKey");
        assert_eq!(event.method, "WRITE");
        assert_eq!(event.status, 200);
        assert_eq!(event.user_agent, "aws-cli/2.15.0");
        assert_eq!(event.bytes_out, 0);
        assert_eq!(event.request_id.as_deref(), Some("req-1"));
        assert!(matches!(event.key_id, Cow::Borrowed(_)));
    }

    #[test]
    fn read_only_and_request_id_fallbacks() {
        let cases = [
            (serde_json::json!(true), "READ"),
            (serde_json::json!("true"), "READ"),
            (serde_json::json!("false"), "WRITE"),
            (serde_json::json!(null), "CALL"),
            (serde_json::json!(7), "CALL"),
        ];
        for (read_only, method) in cases {
            let record = edited(|object| {
                object.insert("readOnly".into(), read_only.clone());
            });
            assert_eq!(
                decode_event(record.as_bytes()).expect("valid").method,
                method,
                "{read_only}"
            );
        }
        let record = edited(|object| {
            object.remove("readOnly");
            object.remove("requestID");
        });
        let event = decode_event(record.as_bytes()).expect("valid");
        assert_eq!(
            (event.method.as_ref(), event.request_id.as_deref()),
            ("CALL", Some("evt-1"))
        );
    }

    #[test]
    fn event_time_forms() {
        let rfc3339 = parse_event_time("2024-12-11T21:45:56Z");
        assert!(rfc3339.is_some());
        assert_eq!(parse_event_time("2024-12-11 21:45:56.000000000"), rfc3339);
        assert_eq!(parse_event_time("2024-12-11 21:45:56"), rfc3339);
        assert_eq!(parse_event_time("1999-12-11 21:45:56"), None);
        assert_eq!(parse_event_time("2024-12-32 21:45:56"), None);
        assert_eq!(parse_event_time("yesterday"), None);
    }

    #[test]
    fn s3_bytes_transferred_out() {
        let record = edited(|object| {
            object.insert(
                "additionalEventData".into(),
                serde_json::json!({"bytesTransferredIn": 0.0, "bytesTransferredOut": 4096.0}),
            );
        });
        assert_eq!(decode_event(record.as_bytes()).expect("valid").bytes_out, 4096);
    }

    #[test]
    fn service_events_have_no_key_even_without_an_ip() {
        let record = edited(|object| {
            object.insert(
                "userIdentity".into(),
                serde_json::json!({"type": "AWSService", "invokedBy": "x"}),
            );
            object.insert("sourceIPAddress".into(), serde_json::json!("ec2.amazonaws.com"));
        });
        assert_eq!(decode_event(record.as_bytes()), Err(DecodeError::NoKey));
    }

    #[test]
    fn service_principals_are_a_source_not_a_bad_ip() {
        for principal in [
            "AWS Internal",
            "secretsmanager.amazonaws.com",
            "eks-nodegroup.amazonaws.com",
            "s3.cn-north-1.amazonaws.com.cn",
        ] {
            let record = edited(|object| {
                object.insert("sourceIPAddress".into(), serde_json::json!(principal));
            });
            let event = decode_event(record.as_bytes()).expect("a call made through a service");
            assert_eq!(event.ip, SERVICE_SOURCE_IP, "{principal}");
            assert_eq!(event.key_id, "AKIAIOSFODNN7EXAMPLE");
        }
        for not_a_service in [
            "redacted",
            ".amazonaws.com",
            "evil.com/.amazonaws.com",
            "<Victim source IP>",
        ] {
            let record = edited(|object| {
                object.insert("sourceIPAddress".into(), serde_json::json!(not_a_service));
            });
            assert_eq!(
                decode_event(record.as_bytes()),
                Err(DecodeError::BadIp(not_a_service.into())),
                "{not_a_service}"
            );
        }
    }

    /// Calls through a service, interleaved with the key's own calls from
    /// its home, make no finding: no new place, no journey to 0.0.0.0.
    #[test]
    fn calls_through_a_service_never_move_the_key() {
        use crate::detect::testkit::{alerts, history, new_engine};
        let key = "AKIASERVICETEST00001";
        let mut engine = new_engine();
        let mut events = history(key, "london", 6, 12, &["/v1/orders"]);
        // The last day's calls alternate between home and a service.
        let last_day = events.len() - 12 * 12;
        for call in events[last_day..].iter_mut().step_by(2) {
            call.ip = SERVICE_SOURCE_IP;
        }
        let found = alerts(&mut engine, &events);
        assert!(found.is_empty(), "{found:#?}");
        assert_eq!(engine.stats().events, events.len() as u64, "every call counted");
        let snapshot = engine.snapshot();
        let places = &snapshot.keys[0].geo.network_places.entries;
        assert_eq!(places.len(), 1, "home only, no place for the service: {places:?}");
    }

    /// A service call between two distant uses does not hide the journey:
    /// the key's last located use is still the first place.
    #[test]
    fn a_service_call_does_not_hide_impossible_travel() {
        use crate::detect::testkit::{self, alerts, event, history, new_engine};
        let key = "AKIASERVICETEST00002";
        let mut engine = new_engine();
        let mut events = history(key, "london", 5, 12, &["/v1/orders"]);
        let last = events.last().expect("a history").ts_ms;
        events.push(event(last + 60_000, key, SERVICE_SOURCE_IP, "/v1/orders", 200));
        events.push(event(last + 600_000, key, testkit::ip("sydney", 7), "/v1/orders", 200));
        let found = alerts(&mut engine, &events);
        assert!(
            found.iter().any(|alert| alert.detector.as_str() == "impossible_travel"),
            "{found:#?}"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let record = edited(|object| {
            object.insert("userIdentity".into(), serde_json::json!("alice"));
        });
        assert!(matches!(
            decode_event(record.as_bytes()),
            Err(DecodeError::WrongType {
                field: "userIdentity",
                ..
            })
        ));
        let record = edited(|object| {
            object.remove("eventTime");
        });
        assert_eq!(
            decode_event(record.as_bytes()),
            Err(DecodeError::MissingField("eventTime"))
        );
        let record = edited(|object| {
            object.insert("eventTime".into(), serde_json::json!("2024-13-01T00:00:00Z"));
        });
        assert!(matches!(
            decode_event(record.as_bytes()),
            Err(DecodeError::BadTimestamp(_))
        ));
        let record = edited(|object| {
            object.insert("errorCode".into(), serde_json::json!(403));
        });
        assert!(matches!(
            decode_event(record.as_bytes()),
            Err(DecodeError::WrongType { field: "errorCode", .. })
        ));
    }

    #[test]
    fn error_codes_map_to_status_classes() {
        let cases = [
            ("", 200),
            ("AccessDenied", 403),
            ("AccessDeniedException", 403),
            ("VpceAccessDenied", 403),
            ("Client.UnauthorizedOperation", 403),
            ("UnauthorizedOperation", 403),
            ("InvalidClientTokenId", 401),
            ("CloudTrailInvalidClientTokenIdException", 401),
            ("SignatureDoesNotMatch", 401),
            ("AuthFailure", 401),
            ("Client.AuthFailure", 401),
            ("ExpiredToken", 401),
            ("ExpiredTokenException", 401),
            ("InvalidAccessKeyId", 401),
            ("UnrecognizedClientException", 401),
            ("Throttling", 429),
            ("ThrottlingException", 429),
            ("Client.RequestLimitExceeded", 429),
            ("NoSuchEntity", 404),
            ("NoSuchBucket", 404),
            ("EntityNotFoundException", 404),
            ("Client.InvalidInstanceID.NotFound", 404),
            ("ValidationError", 400),
            ("EntityAlreadyExists", 400),
            ("Client.DryRunOperation", 412),
            ("Server.InternalError", 500),
            ("InternalFailure", 500),
            ("ServiceUnavailableException", 503),
        ];
        for (code, status) in cases {
            assert_eq!(status_for_error_code(code), status, "{code}");
        }
    }

    /// The endpoint is the same text whether it comes from the shared table
    /// or is built, and the second event of an endpoint borrows it.
    #[test]
    fn endpoints_are_shared_not_built_per_event() {
        let first = endpoint_of("iam", "CreateAccessKey");
        let second = endpoint_of("iam", "CreateAccessKey");
        assert_eq!(first, "iam:CreateAccessKey");
        match (&first, &second) {
            (Cow::Borrowed(a), Cow::Borrowed(b)) => assert!(std::ptr::eq(*a, *b), "one shared copy"),
            other => panic!("expected borrowed endpoints, got {other:?}"),
        }
        assert_eq!(endpoint_of("s3", ""), "s3:");
        assert_eq!(endpoint_of("", "x:y"), ":x:y");
    }

    #[test]
    fn records_documents_decode_element_by_element() {
        let keyless = r#"{"eventTime":"2024-08-02T08:23:24Z","userIdentity":{"type":"AWSService"}}"#;
        let document = format!("\n  {{ \"Records\" : [{EVENT}, 5, {keyless}, {EVENT}] }}\n");
        assert!(is_records_document(document.as_bytes()));
        let mut out = Vec::new();
        decode_records_document(document.as_bytes(), 1 << 20, &mut out);
        assert_eq!(out.len(), 4);
        assert!(out[0].is_ok() && out[3].is_ok());
        assert!(matches!(out[1], Err(DecodeError::MalformedJson(_))));
        assert_eq!(out[2], Err(DecodeError::NoKey));

        let mut out = Vec::new();
        decode_records_document(br#"{"Records":[{"a":1},"#, 1 << 20, &mut out);
        assert!(matches!(out.as_slice(), [Err(DecodeError::MalformedJson(_))]));
        let mut out = Vec::new();
        decode_records_document(br#"{"Records":{}}"#, 1 << 20, &mut out);
        assert!(matches!(out.as_slice(), [Err(DecodeError::MalformedJson(_))]));
    }

    #[test]
    fn sniffing() {
        assert!(is_records_document(b"{\"Records\":[]}"));
        assert!(is_records_document(b"\xEF\xBB\xBF {\n \"Records\" :[]}"));
        assert!(!is_records_document(b"{\"Records\""));
        assert!(!is_records_document(b"{\"records\":[]}"));
        assert!(!is_records_document(b"[{\"Records\":[]}]"));
        assert!(!is_records_document(b""));
        assert!(looks_like_cloudtrail(EVENT.as_bytes()));
        assert!(looks_like_cloudtrail(b"{\"eventTime\" : 1}"));
        assert!(!looks_like_cloudtrail(b"{\"eventTime\""));
        assert!(!looks_like_cloudtrail(
            b"{\"endpoint\":\"eventTime\",\"ua\":\"\\\"eventSource\\\":\"}"
        ));
        assert!(!looks_like_cloudtrail(b"{\"ts\":1,\"endpoint\":\"/eventSource\"}"));
        assert!(!looks_like_cloudtrail(b"\""));
        assert!(
            !looks_like_cloudtrail(b" { \"ts\":1,\"eventTime\":2}"),
            "canonical first key"
        );
    }
}
