//! Decoder tests on real CloudTrail data (tests/data/cloudtrail, see its
//! README for sources and licences), the canonical JSON schema, and
//! property tests that hostile input never panics and that canonical events
//! survive a serialise/decode round trip.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;

use keywatch::decode::{
    DecodeError, Decoder, FieldMapping, Format, canonical_key_id, is_records_document, is_service_principal,
};
use keywatch::event::{AccessEvent, parse_ts};
use proptest::prelude::*;

const MAX_RECORD_BYTES: usize = 1 << 20;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cloudtrail")
        .join(name)
}

/// A fixture's bytes, gunzipped when the name ends in `.gz` (as the file
/// reader does before the decoder sees a file).
fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("fixture {}: {error}", path.display()));
    if !name.ends_with(".gz") {
        return bytes;
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut plain)
        .unwrap_or_else(|error| panic!("gunzip {}: {error}", path.display()));
    plain
}

fn decoder(format: Format) -> Decoder {
    Decoder::new(format, None, MAX_RECORD_BYTES)
}

/// Decodes a file the way the file reader does: whole when it is a Records
/// document, line by line otherwise.
fn decode_file(format: Format, bytes: &[u8]) -> Vec<Result<AccessEvent<'_>, DecodeError>> {
    let decoder = decoder(format);
    let mut out = Vec::new();
    if is_records_document(bytes) {
        decoder.decode(bytes, &mut out);
    } else {
        for line in bytes.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            decoder.decode(line, &mut out);
        }
    }
    out
}

/// Counts results by `ok` or the error kind.
fn outcome_counts(results: &[Result<AccessEvent<'_>, DecodeError>]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for result in results {
        let kind = match result {
            Ok(_) => "ok",
            Err(error) => error.kind(),
        };
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

/// CloudTrail began in 2013; the fixtures were written up to 2025.
fn assert_plausible_times(results: &[Result<AccessEvent<'_>, DecodeError>]) {
    let earliest = parse_ts("2013-01-01T00:00:00Z").expect("valid");
    let latest = parse_ts("2027-01-01T00:00:00Z").expect("valid");
    for event in results.iter().flatten() {
        assert!(
            (earliest..latest).contains(&event.ts_ms),
            "implausible time {} in {event:?}",
            event.ts_ms
        );
    }
}

fn ok_event<'r, 'a>(results: &'r [Result<AccessEvent<'a>, DecodeError>], index: usize) -> &'r AccessEvent<'a> {
    match &results[index] {
        Ok(event) => event,
        Err(error) => panic!("event {index} was rejected: {error}"),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid ip in test")
}

#[test]
fn panther_sample_known_records() {
    let bytes = fixture("panther-sample.jsonl");
    let results = decode_file(Format::Cloudtrail, &bytes);
    assert_eq!(results.len(), 35);

    let denied = ok_event(&results, 10);
    assert_eq!(denied.key_id, "SAMPLE_ACCESS_KEY");
    assert_eq!(denied.ip, ip("1.2.3.4"));
    assert_eq!(denied.endpoint, "ec2:GetPasswordData");
    assert_eq!((denied.method.as_ref(), denied.status), ("READ", 403));
    assert_eq!(denied.ts_ms, parse_ts("2024-12-11T21:45:56Z").expect("valid"));
    assert_eq!(
        denied.request_id.as_deref(),
        Some("b22ce7ac-297f-41b4-a92e-f4aa38668c6d")
    );

    let not_found = ok_event(&results, 16);
    assert_eq!(
        (not_found.endpoint.as_ref(), not_found.status),
        ("iam:DeleteGroupPolicy", 404)
    );

    let rds_denied = ok_event(&results, 22);
    assert_eq!(rds_denied.key_id, "AKIAIOSFODNN7EXAMPLE");
    assert_eq!(rds_denied.ip, ip("10.0.2.100"));
    assert_eq!(
        (
            rds_denied.endpoint.as_ref(),
            rds_denied.method.as_ref(),
            rds_denied.status
        ),
        ("rds:ModifyDBInstance", "WRITE", 403)
    );
    assert_eq!(rds_denied.user_agent, "aws-cli/2.13.0");

    let unknown_error = ok_event(&results, 12);
    assert_eq!(
        (unknown_error.endpoint.as_ref(), unknown_error.status),
        ("ec2:StopInstances", 400)
    );

    let plain = ok_event(&results, 0);
    assert_eq!(plain.key_id, "AKIAI123456789EXAMPLE");
    assert_eq!(plain.endpoint, "lambda:UpdateFunctionConfiguration20150331v2");
    assert_eq!(
        (plain.status, plain.ts_ms),
        (200, parse_ts("2019-01-01T00:00:00Z").expect("valid"))
    );

    // A key used through "AWS Internal" is a real use of the key, from a
    // service rather than an address; an autoscaling service event has no
    // key at all.
    let through_service = ok_event(&results, 3);
    assert_eq!(through_service.ip, keywatch::decode::SERVICE_SOURCE_IP);
    assert_eq!(through_service.endpoint, "iam:UpdateLoginProfile");
    assert_eq!(results[9], Err(DecodeError::NoKey));
}

#[test]
fn panther_sample_counts_and_auto_agrees() {
    let bytes = fixture("panther-sample.jsonl");
    let results = decode_file(Format::Cloudtrail, &bytes);
    let expected = BTreeMap::from([("no_key", 6), ("ok", 29)]);
    assert_eq!(outcome_counts(&results), expected);
    assert_plausible_times(&results);
    assert_eq!(
        decode_file(Format::Auto, &bytes),
        results,
        "auto detects cloudtrail per line"
    );
}

#[test]
fn panther_all_counts() {
    let bytes = fixture("panther-all.jsonl.gz");
    assert!(!is_records_document(&bytes));
    let results = decode_file(Format::Auto, &bytes);
    assert_eq!(results.len(), 461);
    let counts = outcome_counts(&results);
    // 35 uses of a key through a service (`AWS Internal`, `*.amazonaws.com`)
    // were `bad_ip` before they became a source kind; the one left is a
    // placeholder text.
    assert_eq!(counts, BTreeMap::from([("bad_ip", 1), ("no_key", 106), ("ok", 354)]));
    let bad_sources: Vec<&str> = results
        .iter()
        .filter_map(|result| match result {
            Err(DecodeError::BadIp(source)) => Some(source.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        bad_sources.iter().all(|source| !is_service_principal(source)),
        "no service principal is a bad_ip: {bad_sources:?}"
    );
    let through_services = results
        .iter()
        .flatten()
        .filter(|event| event.ip == keywatch::decode::SERVICE_SOURCE_IP)
        .count();
    assert_eq!(through_services, 35);
    assert_plausible_times(&results);
    let statuses: BTreeMap<u16, usize> = results.iter().flatten().fold(BTreeMap::new(), |mut acc, event| {
        *acc.entry(event.status).or_default() += 1;
        acc
    });
    assert!(statuses[&200] > 250, "{statuses:?}");
    assert!(statuses[&403] >= 20, "{statuses:?}");
    assert!(
        statuses.contains_key(&401) && statuses.contains_key(&404),
        "{statuses:?}"
    );
    for event in results.iter().flatten() {
        assert!(!event.key_id.is_empty());
        let (service, name) = event.endpoint.split_once(':').expect("service:name");
        assert!(!service.is_empty() && !name.is_empty() && !service.ends_with(".amazonaws.com"));
    }
}

#[test]
fn stratus_records_document() {
    let bytes = fixture("stratus-ec2-get-password-data.json");
    assert!(is_records_document(&bytes), "pretty-printed Records document");
    let results = decode_file(Format::Auto, &bytes);
    assert_eq!(results.len(), 34);
    assert_eq!(outcome_counts(&results), BTreeMap::from([("ok", 34)]));
    assert_plausible_times(&results);

    let first = ok_event(&results, 0);
    assert_eq!(first.key_id, "ASIANQQHHS551LWULIWD");
    assert_eq!(first.ip, ip("200.249.253.51"));
    assert_eq!(first.endpoint, "ec2:GetPasswordData");
    assert_eq!((first.method.as_ref(), first.status), ("READ", 403));
    assert_eq!(first.ts_ms, parse_ts("2024-07-30T21:31:21Z").expect("valid"));
    assert!(first.user_agent.starts_with("stratus-red-team_"));

    let by_status = results
        .iter()
        .flatten()
        .fold(BTreeMap::new(), |mut acc: BTreeMap<u16, usize>, event| {
            *acc.entry(event.status).or_default() += 1;
            acc
        });
    assert_eq!(by_status, BTreeMap::from([(200, 2), (403, 32)]));
    // Temporary credentials probing for passwords; a long-term key assuming a role.
    let per_key = results
        .iter()
        .flatten()
        .fold(BTreeMap::new(), |mut acc: BTreeMap<&str, usize>, event| {
            *acc.entry(event.key_id.as_ref()).or_default() += 1;
            acc
        });
    assert_eq!(
        per_key,
        BTreeMap::from([("AKIAWOGXN38MFN92ING5", 4), ("ASIANQQHHS551LWULIWD", 30)])
    );
    let assume_role_denied = results
        .iter()
        .flatten()
        .filter(|event| event.endpoint == "sts:AssumeRole" && event.status == 403)
        .count();
    assert_eq!(assume_role_denied, 2);
}

#[test]
fn stratus_scrambled_ips_are_bad_ip() {
    let bytes = fixture("stratus-sts-federation-token.json");
    let results = decode_file(Format::Cloudtrail, &bytes);
    assert_eq!(
        results,
        vec![
            Err(DecodeError::BadIp("255.090.254.5".to_string())),
            Err(DecodeError::BadIp("255.090.254.5".to_string())),
        ]
    );
}

#[test]
fn stratus_gzip_records_document() {
    let bytes = fixture("stratus-ec2-steal-instance-credentials.json.gz");
    assert!(is_records_document(&bytes));
    let results = decode_file(Format::Auto, &bytes);
    assert_eq!(outcome_counts(&results), BTreeMap::from([("ok", 45)]));
    assert_plausible_times(&results);
    let first = ok_event(&results, 0);
    assert_eq!(first.endpoint, "ssm:SendCommand");
    assert_eq!((first.method.as_ref(), first.status), ("WRITE", 200));
    assert_eq!(first.ip, ip("18.236.253.47"));
    assert_eq!(
        first.request_id.as_deref(),
        Some("ff024f6e-78cd-4f36-95cf-7179c6421e32")
    );
}

#[test]
fn one_bad_element_does_not_spoil_the_document() {
    let bytes = fixture("stratus-sts-federation-token.json");
    let text = String::from_utf8(bytes).expect("utf-8 fixture");
    let good = String::from_utf8(fixture("panther-sample.jsonl"))
        .expect("utf-8 fixture")
        .lines()
        .next()
        .expect("a line")
        .to_string();
    let spliced = text.replacen(
        "\"Records\":[",
        &format!("\"Records\":[{good}, \"not an event\", {{}},"),
        1,
    );
    let results = decode_file(Format::Cloudtrail, spliced.as_bytes());
    assert_eq!(results.len(), 5);
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(DecodeError::MalformedJson(_))));
    assert_eq!(results[2], Err(DecodeError::NoKey));
    assert!(matches!(results[3], Err(DecodeError::BadIp(_))));
}

#[test]
fn schema_accepts_what_the_decoder_accepts() {
    let schema_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/access-event.schema.json");
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(schema_path).expect("schema file")).expect("schema is json");
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles");

    for example in schema["examples"].as_array().expect("examples") {
        assert!(validator.is_valid(example));
        let line = serde_json::to_vec(example).expect("serialises");
        assert!(decoder(Format::Canonical).decode_to_vec(&line)[0].is_ok());
    }
    let example = &schema["examples"][0];
    let variant = |field: &str, value: serde_json::Value| {
        let mut record = example.clone();
        record[field] = value;
        record
    };
    let accepted = [
        variant("ts", serde_json::json!(1_772_368_496_789_i64)),
        variant("ip", serde_json::json!("2001:db8::1")),
        variant("request_id", serde_json::Value::Null),
    ];
    for record in accepted {
        assert!(validator.is_valid(&record), "{record}");
        let line = serde_json::to_vec(&record).expect("serialises");
        assert!(decoder(Format::Canonical).decode_to_vec(&line)[0].is_ok(), "{record}");
    }
    let rejected = [
        variant("status", serde_json::json!("200")),
        variant("ip", serde_json::json!("example.com")),
        variant("ts", serde_json::json!(1_000)),
        variant("bytes_out", serde_json::json!(-1)),
        variant("key_id", serde_json::json!("")),
    ];
    for record in rejected {
        assert!(!validator.is_valid(&record), "{record}");
        let line = serde_json::to_vec(&record).expect("serialises");
        assert!(decoder(Format::Canonical).decode_to_vec(&line)[0].is_err(), "{record}");
    }
}

#[test]
fn mapping_from_config_toml() {
    let mapping: FieldMapping = toml::from_str(
        r#"
        ts = "time"
        ts_format = "epoch_s"
        key_id = "request.headers.x-api-key"
        ip = "client.address"
        method = "request.method"
        endpoint = "route"
        status = "response.status"
        "#,
    )
    .expect("mapping parses");
    let decoder = Decoder::new(Format::Mapped, Some(mapping), MAX_RECORD_BYTES);
    let record = br#"{"time":1772368496,"client":{"address":"198.51.100.4:55012"},"route":"/orders",
        "request":{"method":"PUT","headers":{"x-api-key":"gw_key_1"}},"response":{"status":204}}"#;
    let event = decoder.decode_to_vec(record).remove(0).expect("decodes");
    assert_eq!(event.key_id, "gw_key_1");
    assert_eq!(event.ip, ip("198.51.100.4"));
    assert_eq!(
        (event.method.as_ref(), event.endpoint.as_ref(), event.status),
        ("PUT", "/orders", 204)
    );
    assert_eq!(event.ts_ms, 1_772_368_496_000);
}

/// Strategy for JSON-ish text: fragments of real records, JSON punctuation
/// and literals, mixed so that most inputs get past the first byte.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"Records\"".to_string()),
        Just("\"eventTime\"".to_string()),
        Just("\"eventSource\"".to_string()),
        Just("\"userIdentity\"".to_string()),
        Just("\"accessKeyId\"".to_string()),
        Just("\"sourceIPAddress\"".to_string()),
        Just("\"key_id\"".to_string()),
        Just("\"ts\"".to_string()),
        Just("\"ip\"".to_string()),
        Just("\"status\"".to_string()),
        Just("\"2026-03-01T00:00:00Z\"".to_string()),
        Just("\"10.0.0.1\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("-1e999".to_string()),
        Just("18446744073709551616".to_string()),
        "\"[^\"\\\\]{0,8}\"".prop_map(|s| s),
        "[0-9]{1,14}".prop_map(|s| s),
        "\\PC{0,3}".prop_map(|s| s),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

fn all_formats() -> Vec<Decoder> {
    let mapping: FieldMapping = toml::from_str(
        r#"
        key_id = "userIdentity.accessKeyId"
        ip = "a.0.b"
        ts_format = "epoch_s"
        "#,
    )
    .expect("mapping parses");
    vec![
        decoder(Format::Auto),
        decoder(Format::Canonical),
        decoder(Format::Cloudtrail),
        decoder(Format::Mapped),
        Decoder::new(Format::Mapped, Some(mapping), MAX_RECORD_BYTES),
        Decoder::new(Format::Auto, None, 64),
    ]
}

/// Every decoder adds at least one result per record, and a single-event
/// record exactly one.
fn check_never_panics(record: &[u8]) {
    for decoder in all_formats() {
        let results = decoder.decode_to_vec(record);
        assert!(!results.is_empty(), "{:?} produced nothing", decoder.format);
        let is_document =
            decoder.format != Format::Canonical && decoder.format != Format::Mapped && is_records_document(record);
        if !is_document {
            assert_eq!(results.len(), 1, "{:?}", decoder.format);
        }
        for result in results {
            if let Err(error) = result {
                assert!(!error.kind().is_empty() && !error.to_string().is_empty());
            }
        }
    }
}

fn arbitrary_event() -> impl Strategy<Value = AccessEvent<'static>> {
    let ts = keywatch::event::MIN_TS_MS..keywatch::event::MAX_TS_MS;
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(IpAddr::from),
    ];
    (
        ts,
        "\\PC{1,24}".prop_filter("a canonical key id", |key| canonical_key_id(key) == key.as_str()),
        ip,
        "[A-Z]{3,7}",
        "\\PC{0,40}",
        any::<u16>(),
        "\\PC{0,30}",
        any::<u64>(),
        proptest::option::of("\\PC{0,20}"),
    )
        .prop_map(
            |(ts_ms, key_id, ip, method, endpoint, status, user_agent, bytes_out, request_id)| AccessEvent {
                ts_ms,
                key_id: key_id.into(),
                ip,
                method: method.into(),
                endpoint: endpoint.into(),
                status,
                user_agent: user_agent.into(),
                bytes_out,
                request_id: request_id.map(Into::into),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_never_panics(&bytes);
    }

    #[test]
    fn jsonish_text_never_panics(text in jsonish()) {
        check_never_panics(text.as_bytes());
    }

    #[test]
    fn damaged_real_records_never_panic(
        line in 0usize..35,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = fixture("panther-sample.jsonl");
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let mut damaged = lines[line].to_vec();
        let at = flip.index(damaged.len());
        damaged[at] = byte;
        damaged.truncate(cut.index(damaged.len() + 1));
        check_never_panics(&damaged);
        let mut document = b"{\"Records\":[".to_vec();
        document.extend_from_slice(&damaged);
        document.extend_from_slice(b",{}]}");
        check_never_panics(&document);
    }

    #[test]
    fn canonical_round_trip(event in arbitrary_event()) {
        // Serialised timestamps carry milliseconds, so the round trip is exact.
        let line = serde_json::to_vec(&event).expect("serialises");
        for format in [Format::Canonical, Format::Auto, Format::Mapped] {
            let decoded = decoder(format).decode_to_vec(&line);
            prop_assert_eq!(decoded, vec![Ok(event.clone())]);
        }
    }
}
