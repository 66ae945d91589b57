//! Decode per event against the bare JSON parse of the same bytes, in the
//! same run: canonical lines, mapped (Kong-like, nested) lines and
//! CloudTrail lines, plus a CloudTrail `Records` file.
//!
//! The reference for each input is serde_json parsing every line into a
//! derived struct of borrowed `&str` and integer fields (the fields the
//! decoder reads, nothing else): the least any JSON decoder of these records
//! must do. Beside it run keywatch's decoder and the parse it is built on
//! (serde_json over text checked as UTF-8 once per record).
//!
//! Timing is interleaved: each round times every subject once, in turn, and
//! the figure kept is the median round, so a machine shared with other work
//! slows reference and subject alike. Each line prints ns per event and the
//! ratio to the reference of its input. `cargo bench --bench decode [filter]`.
//!
//! Inputs are generated here rather than read from fixtures so that their
//! size and key count are realistic: 10k events over 2k keys, with a
//! power-law-ish key popularity as in real API traffic.

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use keywatch::decode::{Decoder, FieldMapping, Format};
use keywatch::event::{AccessEvent, format_ts};
use serde::Deserialize;
use support::BenchRng;

const EVENTS: usize = 10_000;
const KEYS: usize = 2_000;
const START_MS: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z
/// Rounds of the interleaved timing; the median round is reported.
const ROUNDS: usize = 15;

const ENDPOINTS: [&str; 8] = [
    "/v1/items",
    "/v1/items/{id}",
    "/v1/orders",
    "/v1/orders/{id}/refund",
    "/v1/users/me",
    "/v2/search",
    "/v1/payments",
    "/v1/webhooks",
];
const AGENTS: [&str; 4] = [
    "python-requests/2.32.3",
    "okhttp/4.12.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "sdk-go/1.8.2",
];
const STATUSES: [u16; 8] = [200, 200, 200, 200, 201, 404, 403, 429];

/// Canonical lines, serialised with the event's own `Serialize` impl.
fn canonical_lines() -> Vec<Vec<u8>> {
    let mut rng = BenchRng::seeded(0x9E37_79B9_7F4A_7C15);
    (0..EVENTS)
        .map(|index| {
            let key = rng.skewed_below(KEYS, 3);
            let event = AccessEvent {
                ts_ms: START_MS + index as i64 * 37,
                key_id: format!("key_live_{key:08x}{:016x}", key as u64 * 0x5851_F42D).into(),
                ip: std::net::IpAddr::from([198, 51, (key % 200) as u8, rng.below(250) as u8]),
                method: ["GET", "POST", "PUT", "DELETE"][rng.below(4)].into(),
                endpoint: ENDPOINTS[rng.below(ENDPOINTS.len())].into(),
                status: STATUSES[rng.below(STATUSES.len())],
                user_agent: AGENTS[key % AGENTS.len()].into(),
                bytes_out: rng.below(20_000) as u64,
                request_id: Some(format!("req_{:016x}", rng.next_u64()).into()),
            };
            serde_json::to_vec(&event).expect("an event serialises")
        })
        .collect()
}

/// A gateway's own log lines (Kong-like: nested request and response
/// objects, a forwarded-for list, a dotted flat key), read through
/// [`mapped_mapping`].
fn mapped_lines() -> Vec<Vec<u8>> {
    let mut rng = BenchRng::seeded(0x2545_F491_4F6C_DD1D);
    (0..EVENTS)
        .map(|index| {
            let key = rng.skewed_below(KEYS, 3);
            format!(
                concat!(
                    r#"{{"started_at":{ts},"client_ip":"198.51.{octet}.{host}, 10.0.0.1","#,
                    r#""request":{{"method":"{method}","uri":"{endpoint}?page=2","#,
                    r#""headers":{{"x-api-key":"kg_live_{key:08x}{salt:016x}","user-agent":"{agent}","accept":"*/*"}},"#,
                    r#""id":"r-{request:016x}"}},"response":{{"status":{status},"size":{size}}},"#,
                    r#""http.route":"{endpoint}","latencies":{{"proxy":3,"kong":1,"request":5}}}}"#
                ),
                ts = START_MS + index as i64 * 37,
                octet = key % 200,
                host = rng.below(250),
                method = ["GET", "POST", "PUT", "DELETE"][rng.below(4)],
                endpoint = ENDPOINTS[rng.below(ENDPOINTS.len())],
                key = key,
                salt = key as u64 * 0x5851_F42D,
                agent = AGENTS[key % AGENTS.len()],
                request = rng.next_u64(),
                status = STATUSES[rng.below(STATUSES.len())],
                size = rng.below(20_000),
            )
            .into_bytes()
        })
        .collect()
}

fn mapped_mapping() -> FieldMapping {
    FieldMapping {
        ts: "started_at".into(),
        ts_format: keywatch::decode::TsFormat::EpochMs,
        key_id: "request.headers.x-api-key".into(),
        ip: "client_ip".into(),
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("a network")],
        method: "request.method".into(),
        endpoint: "http.route".into(),
        status: "response.status".into(),
        user_agent: "request.headers.user-agent".into(),
        bytes_out: "response.size".into(),
        request_id: "request.id".into(),
        ..FieldMapping::default()
    }
}

const CLOUDTRAIL_CALLS: [(&str, &str, bool); 8] = [
    ("s3.amazonaws.com", "GetObject", true),
    ("s3.amazonaws.com", "ListBuckets", true),
    ("ec2.amazonaws.com", "DescribeInstances", true),
    ("sts.amazonaws.com", "GetCallerIdentity", true),
    ("iam.amazonaws.com", "CreateAccessKey", false),
    ("lambda.amazonaws.com", "Invoke", false),
    ("dynamodb.amazonaws.com", "PutItem", false),
    ("kms.amazonaws.com", "Decrypt", true),
];

/// CloudTrail events of the size real ones have (~1.2 KB, with request and
/// response elements the decoder must skip).
fn cloudtrail_lines() -> Vec<Vec<u8>> {
    let mut rng = BenchRng::seeded(0xD1B5_4A32_D192_ED03);
    (0..EVENTS)
        .map(|index| {
            let key = rng.skewed_below(KEYS, 3);
            let (source, name, read_only) = CLOUDTRAIL_CALLS[rng.below(CLOUDTRAIL_CALLS.len())];
            let error = if rng.below(10) == 0 {
                r#""errorCode":"AccessDenied","errorMessage":"User is not authorized to perform this action","#
            } else {
                ""
            };
            format!(
                concat!(
                    r#"{{"eventVersion":"1.09","userIdentity":{{"type":"IAMUser","principalId":"AIDA{key:016X}","#,
                    r#""arn":"arn:aws:iam::123456789012:user/user-{key}","accountId":"123456789012","#,
                    r#""accessKeyId":"AKIA{key:016X}","userName":"user-{key}"}},"#,
                    r#""eventTime":"{time}","eventSource":"{source}","eventName":"{name}","#,
                    r#""awsRegion":"us-east-1","sourceIPAddress":"203.0.{octet}.{host}","#,
                    r#""userAgent":"aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0 exe/x86_64.ubuntu.22 prompt/off","#,
                    r#"{error}"requestParameters":{{"bucketName":"data-{key}","key":"reports/2026/03/{index}.csv","#,
                    r#""Host":"data-{key}.s3.us-east-1.amazonaws.com"}},"responseElements":null,"#,
                    r#""additionalEventData":{{"SignatureVersion":"SigV4","CipherSuite":"TLS_AES_128_GCM_SHA256","#,
                    r#""bytesTransferredIn":0,"AuthenticationMethod":"AuthHeader","bytesTransferredOut":{bytes}}},"#,
                    r#""requestID":"{request:016X}","eventID":"{event:032x}","readOnly":{read_only},"#,
                    r#""eventType":"AwsApiCall","managementEvent":false,"recipientAccountId":"123456789012","#,
                    r#""eventCategory":"Data","tlsDetails":{{"tlsVersion":"TLSv1.3","#,
                    r#""cipherSuite":"TLS_AES_128_GCM_SHA256","clientProvidedHostHeader":"{source}"}}}}"#
                ),
                key = key,
                time = format_ts(START_MS + index as i64 * 37),
                source = source,
                name = name,
                octet = key % 250,
                host = rng.below(250),
                error = error,
                index = index,
                bytes = rng.below(1 << 20),
                request = rng.next_u64(),
                event = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
                read_only = read_only,
            )
            .into_bytes()
        })
        .collect()
}

/// The reference for canonical lines: the fields the decoder reads, as
/// borrowed text and integers, nothing checked beyond JSON types.
#[derive(Deserialize)]
#[allow(dead_code)]
struct BareCanonical<'a> {
    ts: &'a str,
    key_id: &'a str,
    ip: &'a str,
    method: &'a str,
    endpoint: &'a str,
    status: u16,
    user_agent: &'a str,
    bytes_out: u64,
    request_id: Option<&'a str>,
}

/// The reference for the mapped lines: the same fields along their paths.
#[derive(Deserialize)]
#[allow(dead_code)]
struct BareMapped<'a> {
    started_at: u64,
    client_ip: &'a str,
    #[serde(borrow)]
    request: BareRequest<'a>,
    response: BareResponse,
    #[serde(rename = "http.route")]
    route: &'a str,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BareRequest<'a> {
    method: &'a str,
    #[serde(borrow)]
    headers: BareHeaders<'a>,
    id: &'a str,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BareHeaders<'a> {
    #[serde(rename = "x-api-key")]
    key: &'a str,
    #[serde(rename = "user-agent")]
    agent: &'a str,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BareResponse {
    status: u16,
    size: u64,
}

/// The reference for CloudTrail lines.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct BareCloudTrail<'a> {
    event_time: &'a str,
    event_source: &'a str,
    event_name: &'a str,
    #[serde(rename = "sourceIPAddress")]
    source_ip_address: &'a str,
    user_agent: &'a str,
    error_code: Option<&'a str>,
    read_only: Option<bool>,
    #[serde(rename = "requestID")]
    request_id: Option<&'a str>,
    #[serde(rename = "eventID")]
    event_id: Option<&'a str>,
    #[serde(borrow)]
    user_identity: BareIdentity<'a>,
    additional_event_data: Option<BareAdditional>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct BareIdentity<'a> {
    access_key_id: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct BareAdditional {
    bytes_transferred_out: Option<u64>,
}

/// One timed subject: runs over every line and returns a count, so the
/// work cannot be optimised away.
type Subject<'a> = Box<dyn FnMut(&[Vec<u8>]) -> usize + 'a>;

/// Times `subjects` (the first is the reference) over `lines` holding
/// `events` events, interleaved over `ROUNDS` rounds, and prints the median
/// of each in ns per event and as a ratio to
/// the reference's median.
fn compare(group: &str, lines: &[Vec<u8>], events: usize, mut subjects: Vec<(String, Subject<'_>)>) {
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut rounds: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); subjects.len()];
    // One warm-up pass each, which also checks every subject read every line.
    for (name, subject) in &mut subjects {
        assert_eq!(subject(lines), lines.len(), "{group}/{name}: every line must decode");
    }
    for _ in 0..ROUNDS {
        for (index, (_, subject)) in subjects.iter_mut().enumerate() {
            let started = Instant::now();
            black_box(subject(black_box(lines)));
            rounds[index].push(started.elapsed());
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let medians: Vec<Duration> = rounds.iter_mut().map(median).collect();
    println!(
        "{group} ({events} events, {} B/event; median of {ROUNDS} interleaved rounds)",
        bytes / events
    );
    for ((name, _), time) in subjects.iter().zip(&medians) {
        let per_line = time.as_secs_f64() * 1e9 / events as f64;
        println!(
            "  {name:<44} {per_line:>8.1} ns/event  {:>5.2}x reference  {:>6.2} M events/s",
            time.as_secs_f64() / medians[0].as_secs_f64(),
            1e3 / per_line
        );
    }
}

/// keywatch's decoder over the lines; counts events decoded.
fn keywatch_subject<'a>(decoder: Decoder) -> Subject<'a> {
    Box::new(move |lines: &[Vec<u8>]| {
        // One vector per pass (10k lines), reused line to line.
        let mut out = Vec::with_capacity(4);
        let mut decoded = 0;
        for line in lines {
            out.clear();
            decoder.decode(line, &mut out);
            decoded += out.iter().filter(|item| item.is_ok()).count();
        }
        decoded
    })
}

/// The same borrowed struct (a type with one lifetime) through serde_json
/// from bytes (the reference), then through serde_json reading the record
/// as text after one UTF-8 check of the whole record, which is how
/// keywatch's decoders parse. The SIMD parsers measured against these
/// (sonic-rs 0.5, simd-json 0.19) were slower on these records and are no
/// longer built; BENCHMARKS.md keeps their figures.
macro_rules! bare_subjects {
    ($bare:ident) => {{
        let subjects: Vec<(String, Subject<'_>)> = vec![
            (
                "reference: serde_json, borrowed fields".to_string(),
                Box::new(|lines: &[Vec<u8>]| {
                    lines
                        .iter()
                        .filter(|line| serde_json::from_slice::<$bare<'_>>(line).is_ok())
                        .count()
                }),
            ),
            (
                "serde_json, UTF-8 checked once, from_str".to_string(),
                Box::new(|lines: &[Vec<u8>]| {
                    lines
                        .iter()
                        .filter(|line| {
                            std::str::from_utf8(line)
                                .ok()
                                .and_then(|text| serde_json::from_str::<$bare<'_>>(text).ok())
                                .is_some()
                        })
                        .count()
                }),
            ),
        ];
        subjects
    }};
}

fn main() {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let wanted = |group: &str| filter.as_deref().is_none_or(|filter| group.contains(filter));

    if wanted("canonical_lines") {
        let lines = canonical_lines();
        let mut subjects = bare_subjects!(BareCanonical);
        subjects.push((
            "keywatch decode, canonical".to_string(),
            keywatch_subject(Decoder::new(Format::Canonical, None, 1 << 20)),
        ));
        subjects.push((
            "keywatch decode, auto".to_string(),
            keywatch_subject(Decoder::new(Format::Auto, None, 1 << 20)),
        ));
        compare("canonical_lines", &lines, lines.len(), subjects);
    }

    if wanted("mapped_lines") {
        let lines = mapped_lines();
        let mut subjects = bare_subjects!(BareMapped);
        subjects.push((
            "keywatch decode, mapped".to_string(),
            keywatch_subject(Decoder::new(Format::Mapped, Some(mapped_mapping()), 1 << 20)),
        ));
        compare("mapped_lines", &lines, lines.len(), subjects);
    }

    if wanted("cloudtrail_lines") {
        let lines = cloudtrail_lines();
        let mut subjects = bare_subjects!(BareCloudTrail);
        subjects.push((
            "keywatch decode, cloudtrail".to_string(),
            keywatch_subject(Decoder::new(Format::Cloudtrail, None, 1 << 20)),
        ));
        subjects.push((
            "keywatch decode, auto".to_string(),
            keywatch_subject(Decoder::new(Format::Auto, None, 1 << 20)),
        ));
        compare("cloudtrail_lines", &lines, lines.len(), subjects);
    }

    if wanted("cloudtrail_records_document") {
        // The same events as one `{"Records":[...]}` file: the reference
        // parses the document into its events' borrowed fields.
        let events = cloudtrail_lines();
        let mut document = b"{\"Records\":[".to_vec();
        for (index, line) in events.iter().enumerate() {
            if index > 0 {
                document.push(b',');
            }
            document.extend_from_slice(line);
        }
        document.extend_from_slice(b"]}");
        #[derive(Deserialize)]
        struct BareDocument<'a> {
            #[serde(rename = "Records", borrow)]
            records: Vec<BareCloudTrail<'a>>,
        }
        let count = events.len();
        let decoder = Decoder::new(Format::Cloudtrail, None, 1 << 20);
        let subjects: Vec<(String, Subject<'_>)> = vec![
            (
                "reference: serde_json, borrowed fields".to_string(),
                Box::new(|documents: &[Vec<u8>]| {
                    documents
                        .iter()
                        .filter_map(|document| serde_json::from_slice::<BareDocument<'_>>(document).ok())
                        .map(|parsed| parsed.records.len())
                        .sum::<usize>()
                        / count
                }),
            ),
            (
                "keywatch decode, cloudtrail".to_string(),
                Box::new(move |documents: &[Vec<u8>]| {
                    let mut out = Vec::with_capacity(count);
                    let mut decoded = 0;
                    for document in documents {
                        out.clear();
                        decoder.decode(document, &mut out);
                        decoded += out.iter().filter(|item| item.is_ok()).count();
                    }
                    decoded / count
                }),
            ),
        ];
        // One "line" (the file) per round: ratios are per event all the same.
        compare("cloudtrail_records_document (one file)", &[document], count, subjects);
    }
}
