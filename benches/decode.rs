//! Decode throughput: canonical JSON lines and CloudTrail lines, one record
//! per line as they arrive from Kafka, plus a CloudTrail `Records` file.
//!
//! Inputs are generated here rather than read from fixtures so that their
//! size and key count are realistic: 10k events over 2k keys, with a
//! power-law-ish key popularity as in real API traffic.

mod support;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keywatch::decode::{Decoder, Format};
use keywatch::event::{AccessEvent, format_ts};
use support::BenchRng;

const EVENTS: usize = 10_000;
const KEYS: usize = 2_000;
const START_MS: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z

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

fn bench_lines(criterion: &mut Criterion, group_name: &str, lines: &[Vec<u8>], formats: &[Format]) {
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut group = criterion.benchmark_group(group_name);
    group.throughput(Throughput::Elements(lines.len() as u64));
    for format in formats {
        let decoder = Decoder::new(format.clone(), None, 1 << 20);
        // Checked once outside the timing: a bench of a decoder that rejects
        // everything would measure the wrong thing.
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            decoder.decode(line, &mut out);
        }
        assert!(
            out.iter().all(Result::is_ok),
            "{group_name}: generated input must decode"
        );
        group.bench_function(format!("{format:?} ({} B/event)", bytes / lines.len()), |bencher| {
            bencher.iter(|| {
                out.clear();
                for line in lines {
                    decoder.decode(black_box(line), &mut out);
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decode_benches(criterion: &mut Criterion) {
    let canonical = canonical_lines();
    bench_lines(
        criterion,
        "canonical_lines",
        &canonical,
        &[Format::Canonical, Format::Auto],
    );

    let cloudtrail = cloudtrail_lines();
    bench_lines(
        criterion,
        "cloudtrail_lines",
        &cloudtrail,
        &[Format::Cloudtrail, Format::Auto],
    );

    let mut document = b"{\"Records\":[".to_vec();
    for (index, line) in cloudtrail.iter().enumerate() {
        if index > 0 {
            document.push(b',');
        }
        document.extend_from_slice(line);
    }
    document.extend_from_slice(b"]}");
    let decoder = Decoder::new(Format::Cloudtrail, None, 1 << 20);
    let mut group = criterion.benchmark_group("cloudtrail_records_document");
    group.throughput(Throughput::Elements(cloudtrail.len() as u64));
    let mut out = Vec::with_capacity(cloudtrail.len());
    group.bench_function("Cloudtrail (one file)", |bencher| {
        bencher.iter(|| {
            out.clear();
            decoder.decode(black_box(&document), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, decode_benches);
criterion_main!(benches);
