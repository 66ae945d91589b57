//! `keywatch generate --format parquet`: the run's events as
//! `events.parquet` instead of `events.jsonl`, the same events in the same
//! order, with the same labels, benign cases, meta and GeoIP files, so a
//! replay of either file gives the same alerts.
//!
//! Columns have the canonical names (read with no mapping): `ts` as a UTC
//! millisecond timestamp, text columns as UTF-8 (dictionary-encoded where
//! values repeat: method, endpoint, user agent), `status` as UInt16 and
//! `bytes_out` as UInt64, Snappy-compressed, in row groups of a million rows.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    StringBuilder, StringDictionaryBuilder, TimestampMillisecondBuilder, UInt16Builder, UInt64Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{GenerateError, GenerateSummary, Generation, write_error};
use crate::event::AccessEvent;

/// The events file of a Parquet run.
pub const EVENTS_FILE: &str = "events.parquet";

/// Rows per Arrow batch handed to the writer.
const WRITE_BATCH_ROWS: usize = 65_536;

/// Rows per row group: large groups read fastest; readers that split work
/// by row group still get several from a run of millions of events.
const ROW_GROUP_ROWS: usize = 1 << 20;

/// How `keywatch generate` writes the events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    /// `events.jsonl`, canonical JSON lines.
    #[default]
    Jsonl,
    /// `events.parquet`, canonical column names.
    Parquet,
}

/// The Arrow schema of generated Parquet events.
pub fn events_schema() -> SchemaRef {
    let dictionary = || DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("key_id", DataType::Utf8, false),
        Field::new("ip", DataType::Utf8, false),
        Field::new("method", dictionary(), false),
        Field::new("endpoint", dictionary(), false),
        Field::new("status", DataType::UInt16, false),
        Field::new("user_agent", dictionary(), false),
        Field::new("bytes_out", DataType::UInt64, false),
        Field::new("request_id", DataType::Utf8, true),
    ]))
}

/// Writes access events to a Parquet file, a batch of rows at a time.
pub struct EventsWriter {
    writer: ArrowWriter<BufWriter<File>>,
    schema: SchemaRef,
    ts: TimestampMillisecondBuilder,
    key_id: StringBuilder,
    ip: StringBuilder,
    method: StringDictionaryBuilder<Int32Type>,
    endpoint: StringDictionaryBuilder<Int32Type>,
    status: UInt16Builder,
    user_agent: StringDictionaryBuilder<Int32Type>,
    bytes_out: UInt64Builder,
    request_id: StringBuilder,
    rows: usize,
    /// Reused to format addresses without a string per event.
    ip_text: String,
}

/// Why the Parquet events file could not be written.
fn parquet_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

impl EventsWriter {
    pub fn create(path: &Path) -> Result<EventsWriter, std::io::Error> {
        let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let schema = events_schema();
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(properties)).map_err(parquet_error)?;
        Ok(EventsWriter {
            writer,
            schema,
            ts: TimestampMillisecondBuilder::with_capacity(WRITE_BATCH_ROWS).with_timezone("UTC"),
            key_id: StringBuilder::new(),
            ip: StringBuilder::new(),
            method: StringDictionaryBuilder::new(),
            endpoint: StringDictionaryBuilder::new(),
            status: UInt16Builder::with_capacity(WRITE_BATCH_ROWS),
            user_agent: StringDictionaryBuilder::new(),
            bytes_out: UInt64Builder::with_capacity(WRITE_BATCH_ROWS),
            request_id: StringBuilder::new(),
            rows: 0,
            ip_text: String::new(),
        })
    }

    /// Adds one event.
    pub fn push(&mut self, event: &AccessEvent<'_>) -> Result<(), std::io::Error> {
        use std::fmt::Write as _;
        self.ts.append_value(event.ts_ms);
        self.key_id.append_value(&event.key_id);
        self.ip_text.clear();
        let _ = write!(self.ip_text, "{}", event.ip);
        self.ip.append_value(&self.ip_text);
        self.method.append_value(&event.method);
        self.endpoint.append_value(&event.endpoint);
        self.status.append_value(event.status);
        self.user_agent.append_value(&event.user_agent);
        self.bytes_out.append_value(event.bytes_out);
        self.request_id.append_option(event.request_id.as_deref());
        self.rows += 1;
        if self.rows >= WRITE_BATCH_ROWS {
            self.flush_rows()?;
        }
        Ok(())
    }

    fn flush_rows(&mut self) -> Result<(), std::io::Error> {
        if self.rows == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.key_id.finish()),
            Arc::new(self.ip.finish()),
            Arc::new(self.method.finish()),
            Arc::new(self.endpoint.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.user_agent.finish()),
            Arc::new(self.bytes_out.finish()),
            Arc::new(self.request_id.finish()),
        ];
        self.rows = 0;
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(parquet_error)?;
        self.writer.write(&batch).map_err(parquet_error)
    }

    /// Writes what is buffered and the file's footer.
    pub fn finish(mut self) -> Result<(), std::io::Error> {
        self.flush_rows()?;
        let mut file = self.writer.into_inner().map_err(parquet_error)?;
        std::io::Write::flush(&mut file)
    }
}

impl Generation {
    /// Writes the whole run into `dir`, the events as [`EVENTS_FILE`].
    pub fn write_parquet_to(&self, dir: &Path) -> Result<GenerateSummary, GenerateError> {
        std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        let events_path = dir.join(EVENTS_FILE);
        let mut writer = EventsWriter::create(&events_path).map_err(write_error(&events_path))?;
        let counts = self.for_each_event(|event| writer.push(event).map_err(write_error(&events_path)))?;
        writer.finish().map_err(write_error(&events_path))?;
        self.write_beside_events(dir, &counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::FieldMapping;
    use crate::source::parquet::ParquetInput;

    #[test]
    fn written_events_read_back_equal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(EVENTS_FILE);
        let events: Vec<AccessEvent<'static>> = (0..3)
            .map(|index| AccessEvent {
                ts_ms: 1_767_571_200_000 + index,
                key_id: format!("AKIAGENERATED{index}").into(),
                ip: "2001:db8::7".parse().expect("an address"),
                method: "GET".into(),
                endpoint: "/v1/items".into(),
                status: 200 + index as u16,
                user_agent: "sdk/1".into(),
                bytes_out: 900,
                request_id: (index == 1).then(|| "r-1".into()),
            })
            .collect();
        let mut writer = EventsWriter::create(&path).expect("create");
        for event in &events {
            writer.push(event).expect("push");
        }
        writer.finish().expect("finish");
        let mut input = ParquetInput::open(&path, &FieldMapping::default()).expect("open");
        let batch = input.next_batch().expect("read").expect("one batch");
        let view = input.plan().view(&batch).expect("view");
        let read: Vec<AccessEvent<'_>> = (0..view.rows()).map(|row| view.event(row).expect("valid")).collect();
        assert_eq!(read, events);
        assert!(input.next_batch().expect("read").is_none());
    }
}
