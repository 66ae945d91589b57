//! Bytes to canonical events. One file per input format; every decoder is a
//! pure function from one input record (a line, a file, a Kafka message) to
//! zero or more events, each either decoded or rejected with a reason.
//! [`Decoder::decode_record`] is the one step every driver takes from a
//! record to its events, events without a key and rejections.
//!
//! The decoders never trust their input: every value is first read as a
//! [`Scalar`] of whatever JSON type it really has, then checked, so a wrong
//! type becomes a [`DecodeError`] naming the field rather than a panic or an
//! anonymous serde message.

pub mod canonical;
pub mod cloudtrail;
pub mod mapping;
pub mod parquet;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::event::AccessEvent;

pub use canonical::canonical_key_id;
pub use cloudtrail::{SERVICE_SOURCE_IP, is_records_document, is_service_principal};
pub use mapping::{FieldMapping, MappedDecoder, TsFormat};

/// Why one record could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed json: {0}")]
    MalformedJson(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` has the wrong type: {detail}")]
    WrongType { field: &'static str, detail: String },
    #[error("unparsable ip address `{0}`")]
    BadIp(String),
    #[error("impossible or unparsable timestamp `{0}`")]
    BadTimestamp(String),
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    Oversized { size: usize, limit: usize },
    /// A key id longer than any real API key: state is never made for it.
    #[error("key id of {length} bytes exceeds the limit of {limit} bytes")]
    KeyTooLong { length: usize, limit: usize },
    /// A whole-document record (a CloudTrail `{"Records":[...]}` file or
    /// message) over `input.max_document_bytes`: not read further.
    #[error("document of more than {limit} bytes (at least {size} read) exceeds input.max_document_bytes")]
    DocumentTooLarge { size: usize, limit: usize },
    /// Not an error of the input: the event carries no API key (for example a
    /// CloudTrail event made by an AWS service). Counted and skipped, not
    /// written to the rejected file.
    #[error("event has no api key")]
    NoKey,
}

impl DecodeError {
    /// A short stable name for counting rejections by reason.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::BadIp(_) => "bad_ip",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::KeyTooLong { .. } => "key_too_long",
            DecodeError::DocumentTooLarge { .. } => "document_too_large",
            DecodeError::NoKey => "no_key",
        }
    }

    fn wrong_type(field: &'static str, expected: &str, found: &Scalar<'_>) -> DecodeError {
        DecodeError::WrongType {
            field,
            detail: format!("expected {expected}, found {}", found.type_name()),
        }
    }
}

impl From<serde_json::Error> for DecodeError {
    fn from(error: serde_json::Error) -> Self {
        DecodeError::MalformedJson(error.to_string())
    }
}

/// The input format of a record: the config's `input.format` and the
/// command line's `--format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Sniff each record: CloudTrail if it is a `{"Records":[...]}` document
    /// or has `eventSource` or `eventTime`, canonical otherwise.
    Auto,
    /// keywatch's own access event, one JSON object per line.
    Canonical,
    /// AWS CloudTrail, one event per line or `{"Records":[...]}` documents.
    Cloudtrail,
    /// Another JSON gateway log, read through a field mapping.
    Mapped,
    /// Parquet files (file replay only), columns found through the field
    /// mapping (canonical names without one); see [`parquet`].
    Parquet,
}

/// Longest key id accepted, in bytes. Real API keys and tokens are far
/// shorter (AWS access key ids are 20 characters, JWTs used as keys rarely pass 1 KiB);
/// anything longer is an attack on the key table.
pub const MAX_KEY_ID_BYTES: usize = 2048;

/// Decodes records of one format.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub format: Format,
    /// The field mapping of [`Format::Mapped`] (without one, the canonical
    /// field names at the top level of each record), compiled once by
    /// [`Decoder::new`] so that no record pays for reading its paths.
    mapped: MappedDecoder,
    /// Records longer than this are rejected unread. A CloudTrail
    /// `{"Records":[...]}` document is a whole file rather than one record,
    /// so the limit applies to each of its events instead.
    pub max_record_bytes: usize,
    /// A whole-document record over this many bytes is rejected whole
    /// (`document_too_large`) before it is parsed; the file reader stops
    /// reading such a document at this size.
    pub max_document_bytes: usize,
    /// Bytes of records the file reader puts in one batch, at most (a
    /// batch also closes at its record count); a single record may exceed it.
    pub max_batch_bytes: usize,
}

/// Default of [`Decoder::max_document_bytes`] (`input.max_document_bytes`):
/// 256 MiB, far above a CloudTrail log file (a few MB) yet bounded.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 256 << 20;
/// Default of [`Decoder::max_batch_bytes`] (`input.max_batch_bytes`): 32 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 32 << 20;

/// One item of a decoded record, in the record's order.
#[derive(Debug, PartialEq)]
pub enum Decoded<'a> {
    Event(AccessEvent<'a>),
    /// An event without an API key: counted and skipped, not rejected.
    NoKey,
    Rejected(Rejection),
}

impl<'a> Decoded<'a> {
    /// What the decoder's `index`-th result of a record means; a rejection
    /// names its index only in a record of `several` events.
    pub fn of(result: Result<AccessEvent<'a>, DecodeError>, index: usize, several: bool) -> Decoded<'a> {
        match result {
            Ok(event) => Decoded::Event(event),
            Err(DecodeError::NoKey) => Decoded::NoKey,
            Err(error) => Decoded::Rejected(Rejection {
                error,
                index: several.then_some(index as u32),
            }),
        }
    }
}

/// A record, or one event of a multi-event record, that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub error: DecodeError,
    /// Position of the event inside a record that held several events (a
    /// CloudTrail `Records` document); `None` for a record of one event.
    pub index: Option<u32>,
}

impl Decoder {
    pub fn new(format: Format, mapping: Option<FieldMapping>, max_record_bytes: usize) -> Self {
        Decoder {
            format,
            // Without a mapping (config validation normally prevents it for
            // `mapped`), the default one: the decoder must not panic.
            mapped: MappedDecoder::new(mapping.unwrap_or_default()),
            max_record_bytes,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }

    /// The field mapping of [`Format::Mapped`]: the one given to
    /// [`Decoder::new`], or the default (canonical names) without one.
    pub fn mapping(&self) -> &FieldMapping {
        self.mapped.mapping()
    }

    /// The same decoder with these byte budgets (see the fields).
    pub fn with_byte_budgets(mut self, max_document_bytes: usize, max_batch_bytes: usize) -> Decoder {
        self.max_document_bytes = max_document_bytes;
        self.max_batch_bytes = max_batch_bytes;
        self
    }

    /// Decodes one record. A record may hold several events (a CloudTrail
    /// `{"Records":[...]}` document); each element of `out` is one of them,
    /// in order, so its position is the event's index within the record.
    /// Every record adds at least one element to `out`, except a CloudTrail
    /// `{"Records":[]}` document, which holds no event and adds none (the
    /// drivers track offsets by record, not by element).
    pub fn decode<'a>(&self, record: &'a [u8], out: &mut Vec<Result<AccessEvent<'a>, DecodeError>>) {
        let first = out.len();
        self.decode_unchecked(record, out);
        for item in &mut out[first..] {
            if let Ok(event) = item
                && event.key_id.len() > MAX_KEY_ID_BYTES
            {
                *item = Err(DecodeError::KeyTooLong {
                    length: event.key_id.len(),
                    limit: MAX_KEY_ID_BYTES,
                });
            }
        }
    }

    fn decode_unchecked<'a>(&self, record: &'a [u8], out: &mut Vec<Result<AccessEvent<'a>, DecodeError>>) {
        let wants_cloudtrail = match self.format {
            Format::Cloudtrail | Format::Auto if cloudtrail::is_records_document(record) => {
                if record.len() > self.max_document_bytes {
                    out.push(Err(DecodeError::DocumentTooLarge {
                        size: record.len(),
                        limit: self.max_document_bytes,
                    }));
                    return;
                }
                cloudtrail::decode_records_document(record, self.max_record_bytes, out);
                return;
            }
            Format::Cloudtrail => true,
            Format::Auto => cloudtrail::looks_like_cloudtrail(record),
            Format::Canonical | Format::Mapped => false,
            Format::Parquet => {
                out.push(Err(DecodeError::MalformedJson(
                    "parquet is read a file at a time by `keywatch replay`, not record by record".to_string(),
                )));
                return;
            }
        };
        if record.len() > self.max_record_bytes {
            out.push(Err(DecodeError::Oversized {
                size: record.len(),
                limit: self.max_record_bytes,
            }));
            return;
        }
        let event = if wants_cloudtrail {
            cloudtrail::decode_event(record)
        } else if self.format == Format::Mapped {
            self.mapped.decode(record)
        } else {
            canonical::decode_canonical(record)
        };
        out.push(event);
    }

    /// Decodes one record into its events, events without a key and
    /// rejections, in order. `scratch` is reused from record to record, so
    /// a record costs no allocation of its own.
    pub fn decode_record<'a, 's>(
        &self,
        record: &'a [u8],
        scratch: &'s mut Vec<Result<AccessEvent<'a>, DecodeError>>,
    ) -> impl Iterator<Item = Decoded<'a>> + use<'a, 's> {
        scratch.clear();
        self.decode(record, scratch);
        let several_events = scratch.len() > 1;
        scratch
            .drain(..)
            .enumerate()
            .map(move |(index, result)| Decoded::of(result, index, several_events))
    }

    /// The names of the fields that may hold a key id in this decoder's
    /// records, whose values are masked in rejected excerpts: the mapped
    /// key field (its last path step, and the whole path for flat records),
    /// and always the canonical `key_id` and CloudTrail's `accessKeyId`,
    /// since `auto` may read either.
    pub fn key_field_names(&self) -> [&str; 4] {
        // Without a configured mapping, the default's key path is `key_id`.
        let mapped = match self.format {
            Format::Mapped => self.mapped.mapping().key_id.as_str(),
            _ => "key_id",
        };
        let leaf = mapped.rsplit('.').next().unwrap_or(mapped);
        [leaf, mapped, "key_id", "accessKeyId"]
    }

    /// Convenience for tests and tools: decodes one record into a new vector.
    pub fn decode_to_vec<'a>(&self, record: &'a [u8]) -> Vec<Result<AccessEvent<'a>, DecodeError>> {
        let mut out = Vec::new();
        self.decode(record, &mut out);
        out
    }
}

/// Parses one record as `T`. The record's UTF-8 is checked once, whole
/// (word at a time over ASCII), and the parser then reads it as text,
/// instead of checking every string it borrows on its own, which costs a
/// call per field. A record that is not UTF-8 is parsed as bytes, so its
/// error is the one it always was.
fn parse_record<'a, T: Deserialize<'a>>(record: &'a [u8]) -> Result<T, DecodeError> {
    match std::str::from_utf8(record) {
        Ok(text) => Ok(serde_json::from_str(text)?),
        Err(_) => Ok(serde_json::from_slice(record)?),
    }
}

/// An address as `str::parse::<IpAddr>` reads it, with dotted-quad IPv4
/// (most of every log) read in one pass without the standard parser's
/// generic machinery. What the pass accepts the standard parser reads the
/// same (four decimal octets of at most three digits, no leading zero, none
/// over 255); anything else is left to it.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    match plain_ipv4(text.as_bytes()) {
        Some(ip) => Some(IpAddr::V4(ip)),
        None => text.parse().ok(),
    }
}

fn plain_ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (index, octet) in octets.iter_mut().enumerate() {
        if index > 0 {
            if bytes.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let digits = bytes[at.min(bytes.len())..]
            .iter()
            .take(4)
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if digits == 0 || digits > 3 || (digits > 1 && bytes[at] == b'0') {
            return None;
        }
        let value = bytes[at..at + digits]
            .iter()
            .fold(0u16, |value, digit| value * 10 + u16::from(digit - b'0'));
        *octet = u8::try_from(value).ok()?;
        at += digits;
    }
    (at == bytes.len()).then_some(Ipv4Addr::from(octets))
}

/// Rejects anything but a JSON object before serde sees it: a derived struct
/// would otherwise also accept a JSON array, field by field in order.
fn expect_object(record: &[u8]) -> Result<(), DecodeError> {
    match record.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        Some(_) => Err(DecodeError::MalformedJson("expected a json object".to_string())),
        None => Err(DecodeError::MalformedJson("empty record".to_string())),
    }
}

/// One JSON value read without judging its type, so that the decoder, not
/// serde, decides what a wrong type means. Strings borrow from the input when
/// they need no unescaping; arrays and objects are skipped, not built.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl<'a> Scalar<'a> {
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::UInt(_) => "an integer",
            Scalar::Float(_) => "a float",
            Scalar::Str(_) => "a string",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        }
    }

    /// The string value, or an error naming the field.
    fn into_text(self, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
        match self {
            Scalar::Str(text) => Ok(text),
            other => Err(DecodeError::wrong_type(field, "a string", &other)),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor(PhantomData))
    }
}

/// The [`Visitor`] methods that read a JSON scalar as a [`Scalar`], for the
/// visitors that read any value (`$de` is the visitor's input lifetime).
macro_rules! scalar_visits {
    ($de:lifetime) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Scalar::Null)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Scalar::Null)
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
            Ok(Scalar::Bool(value))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(Scalar::Int(value))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(Scalar::UInt(value))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
            Ok(Scalar::Float(value))
        }

        fn visit_borrowed_str<E: de::Error>(self, value: &$de str) -> Result<Self::Value, E> {
            Ok(Scalar::Str(Cow::Borrowed(value)))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(Scalar::Str(Cow::Owned(value.to_owned())))
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
            Ok(Scalar::Str(Cow::Owned(value)))
        }
    };
}
pub(crate) use scalar_visits;

struct ScalarVisitor<'a>(PhantomData<Scalar<'a>>);

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any json value")
    }

    scalar_visits!('de);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// A nested object read as `T`, or the JSON type it had instead. Lets a
/// record with, say, `"userIdentity": "x"` be judged by the decoder instead
/// of failing inside serde.
#[derive(Debug)]
pub(crate) enum ObjectOr<T> {
    Object(T),
    Other(&'static str),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOrVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOrVisitor<T> {
            type Value = ObjectOr<T>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("any json value")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(ObjectOr::Object)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                ScalarVisitor(PhantomData)
                    .visit_seq(seq)
                    .map(|_| ObjectOr::Other("an array"))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("null"))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a boolean"))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("an integer"))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("an integer"))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a float"))
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a string"))
            }
        }

        deserializer.deserialize_any(ObjectOrVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(format: Format) -> Decoder {
        Decoder::new(format, None, 4096)
    }

    #[test]
    fn addresses_read_as_the_standard_parser_reads_them() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.1",
            "10.0.0.01",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.",
            "1.2.3.4 ",
            "1..2.3",
            "1234.1.1.1",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
            "",
            "a.b.c.d",
        ] {
            assert_eq!(parse_ip(text), text.parse().ok(), "{text:?}");
        }
        assert!(
            plain_ipv4(b"146.70.18.164").is_some(),
            "a dotted quad takes the one pass"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_reads_as_the_standard_parser_reads_it(text in "[0-9.:a ]{0,18}") {
            proptest::prop_assert_eq!(parse_ip(&text), text.parse::<IpAddr>().ok());
        }
    }

    const CANONICAL: &str = r#"{"ts":"2026-03-01T12:00:00Z","key_id":"k1","ip":"192.0.2.1","method":"GET","endpoint":"/v1/a","status":200}"#;
    const CLOUDTRAIL: &str = r#"{"eventTime":"2026-03-01T12:00:00Z","eventSource":"s3.amazonaws.com","eventName":"ListBuckets","sourceIPAddress":"192.0.2.1","userIdentity":{"accessKeyId":"AKIA1"}}"#;

    #[test]
    fn auto_sniffs_each_record() {
        let auto = decoder(Format::Auto);
        let canonical = auto.decode_to_vec(CANONICAL.as_bytes());
        assert_eq!(canonical[0].as_ref().map(|e| e.endpoint.as_ref()), Ok("/v1/a"));
        let cloudtrail = auto.decode_to_vec(CLOUDTRAIL.as_bytes());
        assert_eq!(
            cloudtrail[0].as_ref().map(|e| e.endpoint.as_ref()),
            Ok("s3:ListBuckets")
        );
        let document = format!(r#"{{"Records":[{CLOUDTRAIL},{CLOUDTRAIL}]}}"#);
        assert_eq!(auto.decode_to_vec(document.as_bytes()).len(), 2);
    }

    #[test]
    fn oversized_records_are_rejected_unread() {
        let small = Decoder::new(Format::Canonical, None, 16);
        assert_eq!(
            small.decode_to_vec(b"{ not even json but long }"),
            vec![Err(DecodeError::Oversized { size: 26, limit: 16 })]
        );
        // In a Records document the limit is per event, not per file.
        let limit = CLOUDTRAIL.len();
        let document = format!(r#"{{"Records":[{CLOUDTRAIL},{CLOUDTRAIL}]}}"#);
        let per_event = Decoder::new(Format::Cloudtrail, None, limit).decode_to_vec(document.as_bytes());
        assert!(per_event.iter().all(Result::is_ok), "{per_event:?}");
        let too_small = Decoder::new(Format::Cloudtrail, None, limit - 1).decode_to_vec(document.as_bytes());
        assert!(
            too_small
                .iter()
                .all(|r| matches!(r, Err(DecodeError::Oversized { .. })))
        );
    }

    #[test]
    fn key_ids_over_the_limit_are_rejected_as_key_too_long() {
        let long_key = "k".repeat(MAX_KEY_ID_BYTES + 1);
        let record = CANONICAL.replace(r#""key_id":"k1""#, &format!(r#""key_id":"{long_key}""#));
        assert!(record.contains(&long_key), "the fixture's key is k1");
        let decoded = decoder(Format::Canonical).decode_to_vec(record.as_bytes());
        assert_eq!(
            decoded,
            vec![Err(DecodeError::KeyTooLong {
                length: MAX_KEY_ID_BYTES + 1,
                limit: MAX_KEY_ID_BYTES
            })]
        );
        assert_eq!(decoded[0].as_ref().unwrap_err().kind(), "key_too_long");
        let longest = CANONICAL.replace(
            r#""key_id":"k1""#,
            &format!(r#""key_id":"{}""#, "k".repeat(MAX_KEY_ID_BYTES)),
        );
        assert!(decoder(Format::Canonical).decode_to_vec(longest.as_bytes())[0].is_ok());
    }

    #[test]
    fn documents_over_their_budget_are_rejected_whole() {
        let document = format!(r#"{{"Records":[{CLOUDTRAIL},{CLOUDTRAIL}]}}"#);
        let fits = Decoder::new(Format::Auto, None, 4096).with_byte_budgets(document.len(), 1 << 20);
        assert_eq!(fits.decode_to_vec(document.as_bytes()).len(), 2);
        let too_small = Decoder::new(Format::Auto, None, 4096).with_byte_budgets(document.len() - 1, 1 << 20);
        let rejected = too_small.decode_to_vec(document.as_bytes());
        assert_eq!(
            rejected,
            vec![Err(DecodeError::DocumentTooLarge {
                size: document.len(),
                limit: document.len() - 1
            })]
        );
        assert_eq!(rejected[0].as_ref().unwrap_err().kind(), "document_too_large");
    }

    #[test]
    fn forced_formats_do_not_sniff() {
        let as_canonical = decoder(Format::Canonical).decode_to_vec(CLOUDTRAIL.as_bytes());
        assert_eq!(as_canonical, vec![Err(DecodeError::NoKey)]);
        let as_cloudtrail = decoder(Format::Cloudtrail).decode_to_vec(CANONICAL.as_bytes());
        assert_eq!(as_cloudtrail, vec![Err(DecodeError::NoKey)]);
    }

    #[test]
    fn mapped_without_a_mapping_reads_canonical_names() {
        let decoded = decoder(Format::Mapped).decode_to_vec(CANONICAL.as_bytes());
        let canonical = decoder(Format::Canonical).decode_to_vec(CANONICAL.as_bytes());
        assert_eq!(decoded, canonical);
        assert!(decoded[0].is_ok());
    }

    #[test]
    fn record_items_carry_an_index_only_in_multi_event_records() {
        let auto = decoder(Format::Auto);
        let mut scratch = Vec::new();
        let single: Vec<Decoded<'_>> = auto.decode_record(b"{broken", &mut scratch).collect();
        assert!(
            matches!(&single[..], [Decoded::Rejected(Rejection { index: None, .. })]),
            "{single:?}"
        );
        let no_key = r#"{"eventTime":"2026-03-01T12:00:00Z","eventSource":"s3.amazonaws.com","eventName":"ListBuckets","sourceIPAddress":"192.0.2.1","userIdentity":{"type":"AWSService"}}"#;
        let bad_ip = CLOUDTRAIL.replace("192.0.2.1", "nope");
        let document = format!(r#"{{"Records":[{CLOUDTRAIL},{no_key},{bad_ip}]}}"#);
        let items: Vec<Decoded<'_>> = auto.decode_record(document.as_bytes(), &mut scratch).collect();
        assert!(matches!(items[0], Decoded::Event(_)), "{items:?}");
        assert_eq!(items[1], Decoded::NoKey);
        assert!(
            matches!(
                &items[2],
                Decoded::Rejected(Rejection {
                    error: DecodeError::BadIp(_),
                    index: Some(2)
                })
            ),
            "{items:?}"
        );
    }

    #[test]
    fn key_field_names_follow_the_mapping() {
        let mapping = FieldMapping {
            key_id: "request.headers.x-api-key".to_string(),
            ..FieldMapping::default()
        };
        let mapped = Decoder::new(Format::Mapped, Some(mapping), 4096);
        let names = mapped.key_field_names();
        assert!(names.contains(&"x-api-key") && names.contains(&"request.headers.x-api-key"));
        assert!(decoder(Format::Auto).key_field_names().contains(&"accessKeyId"));
        assert!(decoder(Format::Canonical).key_field_names().contains(&"key_id"));
    }

    #[test]
    fn scalar_reads_every_json_type() {
        let parsed: Vec<Scalar<'_>> =
            serde_json::from_str(r#"[null,true,-1,1,1.5,"a","a\"b",[1,[2]],{"x":{}}]"#).expect("valid json");
        assert_eq!(
            parsed,
            vec![
                Scalar::Null,
                Scalar::Bool(true),
                Scalar::Int(-1),
                Scalar::UInt(1),
                Scalar::Float(1.5),
                Scalar::Str(Cow::Borrowed("a")),
                Scalar::Str(Cow::Owned("a\"b".to_string())),
                Scalar::Array,
                Scalar::Object,
            ]
        );
        assert!(
            matches!(&parsed[5], Scalar::Str(Cow::Borrowed(_))),
            "unescaped strings borrow"
        );
    }

    /// Found by the `decode_cloudtrail` and `decode_auto` fuzz targets
    /// (fuzz/): an empty `Records` document, with any whitespace, is a
    /// document of no events, not a malformed record and not a panic.
    #[test]
    fn an_empty_records_document_gives_no_item_and_no_rejection() {
        let found_by_fuzzing: [&[u8]; 2] = [b"{\"Records\":[\n   \n]}\n", b"{\"Records\":[   \r\r]}\r\r "];
        for format in [Format::Cloudtrail, Format::Auto] {
            for record in found_by_fuzzing {
                let mut scratch = Vec::new();
                let items: Vec<Decoded<'_>> = decoder(format.clone()).decode_record(record, &mut scratch).collect();
                assert!(items.is_empty(), "{format:?} {items:?}");
            }
        }
    }
}
