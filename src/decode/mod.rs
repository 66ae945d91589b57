//! Bytes to canonical events. One file per input format; every decoder is a
//! pure function from one input record (a line, a file, a Kafka message) to
//! zero or more events, each either decoded or rejected with a reason.

pub mod canonical;
pub mod cloudtrail;
pub mod mapping;

use serde::{Deserialize, Serialize};

use crate::event::AccessEvent;

pub use mapping::FieldMapping;

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
            DecodeError::NoKey => "no_key",
        }
    }
}

/// The input format of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Sniff each record: CloudTrail if it has `eventSource` or `Records`,
    /// canonical otherwise.
    Auto,
    Canonical,
    Cloudtrail,
    /// Another JSON gateway log, read through a field mapping.
    Mapped,
}

/// Decodes records of one format.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub format: Format,
    pub mapping: Option<FieldMapping>,
    /// Records longer than this are rejected unread.
    pub max_record_bytes: usize,
}

impl Decoder {
    pub fn new(format: Format, mapping: Option<FieldMapping>, max_record_bytes: usize) -> Self {
        Decoder {
            format,
            mapping,
            max_record_bytes,
        }
    }

    /// Decodes one record. A record may hold several events (a CloudTrail
    /// `{"Records":[...]}` document); each element of `out` is one of them,
    /// in order, so its position is the event's index within the record.
    pub fn decode<'a>(&self, record: &'a [u8], out: &mut Vec<Result<AccessEvent<'a>, DecodeError>>) {
        todo_decode(self, record, out)
    }
}

fn todo_decode<'a>(_decoder: &Decoder, _record: &'a [u8], _out: &mut Vec<Result<AccessEvent<'a>, DecodeError>>) {
    unimplemented!("decoders")
}
