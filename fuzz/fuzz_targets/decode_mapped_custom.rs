//! Fuzzes the mapped JSON-lines format with a custom field mapping that uses
//! every kind of path (nested objects, a dotted name read whole, an array
//! index), defaults for method and status, and trusted proxies for an
//! `X-Forwarded-For` list. The first byte of the input
//! picks the timestamp format, the rest is the record. See common.rs for the
//! properties checked.
#![no_main]

use keywatch::decode::{Decoder, FieldMapping, Format, TsFormat};
use libfuzzer_sys::fuzz_target;

mod common;

fn mapping(ts_format: TsFormat) -> FieldMapping {
    // Trusted proxies are read from configuration text (CIDR or a single
    // address), so they are made the same way here.
    let with_proxies: FieldMapping =
        serde_json::from_str(r#"{"trusted_proxies": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]}"#)
            .expect("a valid trusted-proxy list");
    FieldMapping {
        ts: "request.time".into(),
        ts_format,
        key_id: "request.headers.x-api-key".into(),
        ip: "forwarded.0".into(),
        method: "http.method".into(),
        default_method: Some("GET".into()),
        endpoint: "request.path".into(),
        status: "response.status".into(),
        default_status: Some(200),
        user_agent: "request.headers.user-agent".into(),
        bytes_out: "response.bytes".into(),
        request_id: "id".into(),
        trusted_proxies: with_proxies.trusted_proxies,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, record)) = input.split_first() else {
        return;
    };
    let ts_format = match selector % 3 {
        0 => TsFormat::Rfc3339,
        1 => TsFormat::EpochMs,
        _ => TsFormat::EpochS,
    };
    let decoder = Decoder::new(Format::Mapped, Some(mapping(ts_format)), common::MAX_RECORD_BYTES);
    common::check_record(&decoder, record);
});
