//! Where outputs go: files and Kafka. The only places that write output.

pub mod file;
pub mod kafka;

use serde::{Deserialize, Serialize};

use crate::source::SourceRef;

/// Longest excerpt of a rejected record kept in `rejected.jsonl`.
pub const REJECTED_EXCERPT_BYTES: usize = 4096;

/// One rejected input record (a line of `rejected.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Stable reason name (`malformed_json`, `bad_ip`, ...).
    pub reason_kind: String,
    /// The reason in words.
    pub reason: String,
    pub source: SourceRef,
    /// The record's bytes (lossy UTF-8), cut to [`REJECTED_EXCERPT_BYTES`].
    pub record: String,
    /// Whether `record` was cut.
    pub truncated: bool,
}

impl Rejected {
    /// The rejection of `record`, its excerpt with the value of every field
    /// named in `key_fields` masked (see [`redact_key_values`]): pass
    /// [`crate::decode::Decoder::key_field_names`].
    pub fn new(error: &crate::decode::DecodeError, source: SourceRef, record: &[u8], key_fields: &[&str]) -> Rejected {
        let truncated = record.len() > REJECTED_EXCERPT_BYTES;
        let excerpt = &record[..record.len().min(REJECTED_EXCERPT_BYTES)];
        let redacted = redact_key_values(excerpt, key_fields);
        Rejected {
            reason_kind: error.kind().to_string(),
            reason: error.to_string(),
            source,
            record: String::from_utf8_lossy(&redacted).into_owned(),
            truncated,
        }
    }

    /// The rejection of an event the engine quarantined as too far ahead
    /// of its input's time; its record is the event as the engine held it
    /// (by key fingerprint, never the raw id).
    pub fn future_event(event: &crate::engine::Quarantined, source: SourceRef) -> Rejected {
        Rejected {
            reason_kind: "future_event".to_string(),
            reason: format!(
                "event time {} is too far ahead of the input's time {} and no other key confirmed it",
                event.ts, event.input_time
            ),
            source,
            record: serde_json::to_string(event).unwrap_or_default(),
            truncated: false,
        }
    }
}

/// What a masked key value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Masks the value after every occurrence of a field name of `key_fields`
/// in `bytes`, without parsing them: a rejected record is often not valid
/// JSON (cut, broken, or JSON escaped inside a string), and its key must
/// not reach `rejected.jsonl` either way.
///
/// A name matches case-insensitively (HTTP header names such as
/// `X-Api-Key` have any case) when a `:` or `=` follows it, after an
/// optional closing quote (`"` or `\"`) and spaces. The value is a quoted
/// string (to its closing quote, or to the end when it has none) or a bare
/// word (to the next `,`, `}`, `]`, `&`, `;`, quote or whitespace). The
/// quotes around a value are kept, its text becomes [`REDACTED`].
pub fn redact_key_values(bytes: &[u8], key_fields: &[&str]) -> Vec<u8> {
    let mut masked: Vec<(usize, usize)> = Vec::new();
    for name in key_fields.iter().filter(|name| !name.is_empty()) {
        let name = name.as_bytes();
        let mut from = 0;
        while let Some(found) = find_ignore_case(&bytes[from..], name) {
            let name_end = from + found + name.len();
            from = from + found + 1;
            if let Some(value) = value_after_name(bytes, name_end) {
                masked.push(value);
            }
        }
    }
    if masked.is_empty() {
        return bytes.to_vec();
    }
    masked.sort_unstable();
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied_to = 0;
    for (start, end) in masked {
        if start < copied_to {
            // Inside a value already masked (a name repeated in a value).
            continue;
        }
        out.extend_from_slice(&bytes[copied_to..start]);
        out.extend_from_slice(REDACTED.as_bytes());
        copied_to = end;
    }
    out.extend_from_slice(&bytes[copied_to..]);
    out
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len()).find(|&at| haystack[at..at + needle.len()].eq_ignore_ascii_case(needle))
}

/// The byte range of the value that follows a field name ending at `at`,
/// or `None` when no `:` or `=` follows the name.
fn value_after_name(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let skip_spaces = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    if bytes[at..].starts_with(b"\\\"") {
        at += 2;
    } else if bytes[at..].starts_with(b"\"") {
        at += 1;
    }
    at = skip_spaces(at);
    if !matches!(bytes.get(at), Some(b':' | b'=')) {
        return None;
    }
    at = skip_spaces(at + 1);
    if bytes[at..].starts_with(b"\\\"") {
        // A JSON document escaped inside a string: the value ends at the
        // next escaped quote.
        let start = at + 2;
        let end = (start..bytes.len())
            .find(|&position| bytes[position..].starts_with(b"\\\""))
            .unwrap_or(bytes.len());
        return Some((start, end));
    }
    if bytes.get(at) == Some(&b'"') {
        let start = at + 1;
        let mut position = start;
        while position < bytes.len() {
            match bytes[position] {
                b'\\' => position += 2,
                b'"' => return Some((start, position)),
                _ => position += 1,
            }
        }
        return Some((start, bytes.len()));
    }
    let end = (at..bytes.len())
        .find(|&position| {
            let byte = bytes[position];
            byte.is_ascii_whitespace() || matches!(byte, b',' | b'}' | b']' | b'&' | b';' | b'"' | b'\\')
        })
        .unwrap_or(bytes.len());
    (end > at).then_some((at, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AKIAIOSFODNN7EXAMPLE";

    fn redacted(text: &str, fields: &[&str]) -> String {
        String::from_utf8(redact_key_values(text.as_bytes(), fields)).expect("utf-8 in, utf-8 out")
    }

    #[test]
    fn key_values_are_masked_in_valid_and_broken_json() {
        let valid = format!(r#"{{"key_id": "{KEY}","ip":"1.2.3.4"}}"#);
        assert_eq!(
            redacted(&valid, &["key_id"]),
            r#"{"key_id": "[redacted]","ip":"1.2.3.4"}"#
        );
        let unterminated = format!(r#"{{"ip":"1.2.3.4","key_id":"{KEY}"#);
        assert_eq!(
            redacted(&unterminated, &["key_id"]),
            r#"{"ip":"1.2.3.4","key_id":"[redacted]"#
        );
        let escaped_quote = r#"{"key_id":"ab\"cd","x":1}"#;
        assert_eq!(redacted(escaped_quote, &["key_id"]), r#"{"key_id":"[redacted]","x":1}"#);
        let bare = format!("{{key_id: {KEY}, ip: 1}}");
        assert_eq!(redacted(&bare, &["key_id"]), "{key_id: [redacted], ip: 1}");
        let nested_string = format!(r#"{{"message":"{{\"accessKeyId\":\"{KEY}\",\"x\":1}}"}}"#);
        let masked = redacted(&nested_string, &["accessKeyId"]);
        assert!(!masked.contains(KEY), "{masked}");
        assert!(masked.contains(r#"\"accessKeyId\":\"[redacted]\""#), "{masked}");
    }

    #[test]
    fn header_names_match_in_any_case_and_every_occurrence_is_masked() {
        let record = format!(r#"{{"headers":{{"X-API-KEY":"{KEY}"}},"retry":{{"x-api-key":"{KEY}"}}}}"#);
        let masked = redacted(&record, &["x-api-key"]);
        assert!(!masked.contains(KEY), "{masked}");
        assert_eq!(masked.matches(REDACTED).count(), 2);
        assert_eq!(redacted("no key here", &["key_id"]), "no key here");
        assert_eq!(redacted(r#"{"key_id_count":3}"#, &["key_id"]), r#"{"key_id_count":3}"#);
    }

    #[test]
    fn rejected_excerpt_never_holds_the_key() {
        let record = format!(r#"{{"ts":"bad","key_id":"{KEY}","#);
        let error = crate::decode::DecodeError::MalformedJson("eof".into());
        let source = SourceRef::File {
            file: "f".into(),
            line: 1,
            index: None,
        };
        let rejected = Rejected::new(&error, source, record.as_bytes(), &["key_id"]);
        assert!(!rejected.record.contains(KEY), "{}", rejected.record);
        assert!(!serde_json::to_string(&rejected).expect("serialises").contains(KEY));
    }
}
