//! Arrow record batches (read from Parquet) to canonical events, column by
//! column, through the same [`FieldMapping`] as JSON gateway logs.
//!
//! The mapping's paths are resolved once per file against the Arrow schema
//! ([`ColumnPlan`]): a path names a top-level column, or a dotted walk into
//! struct columns, matched like JSON keys (the whole rest of the path as one
//! name first, then each split point from the left). Types are checked at
//! that point too, so a file whose columns cannot be read is refused whole
//! with the column named, rather than row by row. Each row then becomes an
//! [`AccessEvent`] whose text borrows from the batch's string arrays: no
//! allocation per event. A row whose values are wrong (null key, bad
//! address, impossible time) gives the same [`DecodeError`] as the same
//! values in a mapped JSON record.
//!
//! No I/O here: [`crate::source::parquet`] reads the file.

use std::borrow::Cow;
use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow_array::{Array, ArrayRef, GenericStringArray, RecordBatch, StringViewArray};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Fields, Schema, TimeUnit};

use super::canonical::key_field;
use super::mapping::{mapped_ip, mapped_number, mapped_ts, not_a_number};
use super::{DecodeError, FieldMapping, MAX_KEY_ID_BYTES, Scalar, TsFormat};
use crate::event::AccessEvent;

/// Why a file's columns cannot be read through the mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    #[error("no column for `{field}` at `{path}` (the mapping's path for it); columns are: {available}")]
    Missing {
        field: &'static str,
        path: String,
        available: String,
    },
    #[error("column `{path}` for `{field}` has type {data_type}, which cannot hold {expected}")]
    UnsupportedType {
        field: &'static str,
        path: String,
        data_type: String,
        expected: &'static str,
    },
}

/// What a field's column may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wants {
    Text,
    /// Text, an integer or a float (epoch time by the mapping's `ts_format`,
    /// integers in milliseconds unless it says `epoch_s`), or an Arrow
    /// timestamp of any unit.
    Time,
    /// An integer, or a number as text.
    Number,
}

impl Wants {
    fn describe(self) -> &'static str {
        match self {
            Wants::Text => "text",
            Wants::Time => "a time (timestamp, integer, float or text)",
            Wants::Number => "a number (integer or text)",
        }
    }

    fn accepts(self, data_type: &DataType) -> bool {
        let text = is_text(data_type);
        match self {
            Wants::Text => text,
            Wants::Time => text || is_integer(data_type) || is_float(data_type) || is_timestamp(data_type),
            Wants::Number => text || is_integer(data_type),
        }
    }
}

fn is_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(key, value) => {
            **key == DataType::Int32 && matches!(**value, DataType::Utf8 | DataType::LargeUtf8)
        }
        _ => false,
    }
}

fn is_integer(data_type: &DataType) -> bool {
    data_type.is_integer()
}

fn is_float(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Float32 | DataType::Float64)
}

fn is_timestamp(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Timestamp(_, _))
}

/// Where one field is: child indices from the batch's columns down to the
/// leaf, and the mapping's path for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnPath {
    path: String,
    steps: Vec<usize>,
}

/// The mapping resolved against one file's schema.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    mapping: FieldMapping,
    ts: ColumnPath,
    key_id: ColumnPath,
    ip: ColumnPath,
    method: Option<ColumnPath>,
    endpoint: ColumnPath,
    status: Option<ColumnPath>,
    user_agent: Option<ColumnPath>,
    bytes_out: Option<ColumnPath>,
    request_id: Option<ColumnPath>,
}

/// Finds `path` in `fields` the way the JSON mapping finds it in an
/// object: the whole path as one name first, then a struct named by the
/// part before each dot, from the left.
fn find_path(fields: &Fields, path: &str) -> Option<Vec<usize>> {
    if path.is_empty() {
        return None;
    }
    if let Some(index) = fields.iter().position(|field| field.name() == path) {
        return Some(vec![index]);
    }
    for (dot, _) in path.match_indices('.') {
        let (head, rest) = (&path[..dot], &path[dot + 1..]);
        let Some(index) = fields.iter().position(|field| field.name() == head) else {
            continue;
        };
        if let DataType::Struct(children) = fields[index].data_type()
            && let Some(mut steps) = find_path(children, rest)
        {
            steps.insert(0, index);
            return Some(steps);
        }
    }
    None
}

fn leaf_type<'s>(fields: &'s Fields, steps: &[usize]) -> Option<&'s DataType> {
    let (first, rest) = steps.split_first()?;
    let data_type = fields.get(*first)?.data_type();
    if rest.is_empty() {
        return Some(data_type);
    }
    match data_type {
        DataType::Struct(children) => leaf_type(children, rest),
        _ => None,
    }
}

impl ColumnPlan {
    /// Resolves every path of `mapping` in `schema`. A field the engine
    /// needs (time, key, address, endpoint, and method and status unless
    /// the mapping gives their defaults) must have a column; the others may
    /// be absent, as in JSON.
    pub fn new(schema: &Schema, mapping: &FieldMapping) -> Result<ColumnPlan, ColumnError> {
        let fields = schema.fields();
        let resolve = |field: &'static str, path: &str, wants: Wants| -> Result<Option<ColumnPath>, ColumnError> {
            let Some(steps) = find_path(fields, path) else {
                return Ok(None);
            };
            let data_type = leaf_type(fields, &steps).unwrap_or(&DataType::Null);
            if !wants.accepts(data_type) {
                return Err(ColumnError::UnsupportedType {
                    field,
                    path: path.to_string(),
                    data_type: data_type.to_string(),
                    expected: wants.describe(),
                });
            }
            Ok(Some(ColumnPath {
                path: path.to_string(),
                steps,
            }))
        };
        let required = |field: &'static str, path: &str, wants: Wants| -> Result<ColumnPath, ColumnError> {
            resolve(field, path, wants)?.ok_or_else(|| ColumnError::Missing {
                field,
                path: path.to_string(),
                available: fields
                    .iter()
                    .map(|field| field.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        };
        // The key first, as the decoder judges it first.
        let key_id = required("key_id", &mapping.key_id, Wants::Text)?;
        let ts = required("ts", &mapping.ts, Wants::Time)?;
        let ip = required("ip", &mapping.ip, Wants::Text)?;
        let method = match &mapping.default_method {
            Some(_) => resolve("method", &mapping.method, Wants::Text)?,
            None => Some(required("method", &mapping.method, Wants::Text)?),
        };
        let status = match mapping.default_status {
            Some(_) => resolve("status", &mapping.status, Wants::Number)?,
            None => Some(required("status", &mapping.status, Wants::Number)?),
        };
        Ok(ColumnPlan {
            ts,
            key_id,
            ip,
            method,
            endpoint: required("endpoint", &mapping.endpoint, Wants::Text)?,
            status,
            user_agent: resolve("user_agent", &mapping.user_agent, Wants::Text)?,
            bytes_out: resolve("bytes_out", &mapping.bytes_out, Wants::Number)?,
            request_id: resolve("request_id", &mapping.request_id, Wants::Text)?,
            mapping: mapping.clone(),
        })
    }

    fn paths(&self) -> impl Iterator<Item = &ColumnPath> {
        [&self.ts, &self.key_id, &self.ip, &self.endpoint].into_iter().chain(
            [
                &self.method,
                &self.status,
                &self.user_agent,
                &self.bytes_out,
                &self.request_id,
            ]
            .into_iter()
            .flatten(),
        )
    }

    /// The top-level columns the mapping reads, in schema order: the only
    /// ones worth decompressing.
    pub fn root_columns(&self) -> Vec<usize> {
        let mut roots: Vec<usize> = self.paths().filter_map(|path| path.steps.first().copied()).collect();
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    /// The names under which the key's value may appear in a rejected
    /// row's excerpt, for masking: the path and its last step.
    pub fn key_field_names(&self) -> [&str; 2] {
        let path = self.key_id.path.as_str();
        [path.rsplit('.').next().unwrap_or(path), path]
    }

    /// This plan's columns in `batch`, ready to read row by row. Fails only
    /// when the batch does not have the schema the plan was made for.
    pub fn view<'b>(&'b self, batch: &'b RecordBatch) -> Result<BatchView<'b>, ColumnError> {
        let columns = batch.columns();
        let text = |path: &ColumnPath, field: &'static str| -> Result<TextColumn<'b>, ColumnError> {
            let (array, nulls) = leaf(columns, &path.steps);
            TextColumn::new(array, nulls).ok_or_else(|| unsupported(field, path, array, Wants::Text))
        };
        let optional_text =
            |path: &Option<ColumnPath>, field: &'static str| path.as_ref().map(|path| text(path, field)).transpose();
        let number = |path: &ColumnPath, field: &'static str| -> Result<ValueColumn<'b>, ColumnError> {
            let (array, nulls) = leaf(columns, &path.steps);
            ValueColumn::new(array, nulls).ok_or_else(|| unsupported(field, path, array, Wants::Number))
        };
        let optional_number =
            |path: &Option<ColumnPath>, field: &'static str| path.as_ref().map(|path| number(path, field)).transpose();
        Ok(BatchView {
            plan: self,
            rows: batch.num_rows(),
            ts: number(&self.ts, "ts")?,
            key_id: text(&self.key_id, "key_id")?,
            ip: text(&self.ip, "ip")?,
            method: optional_text(&self.method, "method")?,
            endpoint: text(&self.endpoint, "endpoint")?,
            status: optional_number(&self.status, "status")?,
            user_agent: optional_text(&self.user_agent, "user_agent")?,
            bytes_out: optional_number(&self.bytes_out, "bytes_out")?,
            request_id: optional_text(&self.request_id, "request_id")?,
        })
    }
}

fn unsupported(field: &'static str, path: &ColumnPath, array: &dyn Array, wants: Wants) -> ColumnError {
    ColumnError::UnsupportedType {
        field,
        path: path.path.clone(),
        data_type: array.data_type().to_string(),
        expected: wants.describe(),
    }
}

/// The leaf array at `steps` and its nulls, a null struct above it
/// counting as a null value (Arrow leaves the children's slots of a null
/// struct undefined).
fn leaf<'b>(columns: &'b [ArrayRef], steps: &[usize]) -> (&'b dyn Array, Option<NullBuffer>) {
    let mut array: &'b dyn Array = columns[steps[0]].as_ref();
    let mut nulls: Option<NullBuffer> = None;
    for &step in &steps[1..] {
        let Some(parent) = array.as_struct_opt() else { break };
        nulls = NullBuffer::union(nulls.as_ref(), parent.nulls());
        array = parent.column(step).as_ref();
    }
    let nulls = NullBuffer::union(nulls.as_ref(), array.logical_nulls().as_ref());
    (array, nulls)
}

/// A text column of any of Arrow's string layouts.
enum TextArray<'b> {
    Utf8(&'b GenericStringArray<i32>),
    LargeUtf8(&'b GenericStringArray<i64>),
    View(&'b StringViewArray),
    /// Dictionary-encoded text (Parquet's dictionary pages read as such):
    /// each row's key indexes the values.
    Dictionary {
        keys: &'b [i32],
        values: Box<TextArray<'b>>,
    },
}

impl<'b> TextArray<'b> {
    fn new(array: &'b dyn Array) -> Option<TextArray<'b>> {
        Some(match array.data_type() {
            DataType::Utf8 => TextArray::Utf8(array.as_string_opt::<i32>()?),
            DataType::LargeUtf8 => TextArray::LargeUtf8(array.as_string_opt::<i64>()?),
            DataType::Utf8View => TextArray::View(array.as_string_view_opt()?),
            DataType::Dictionary(_, _) => {
                let dictionary = array.as_dictionary_opt::<Int32Type>()?;
                let values = TextArray::new(dictionary.values().as_ref())?;
                if matches!(values, TextArray::Dictionary { .. }) {
                    return None;
                }
                TextArray::Dictionary {
                    keys: dictionary.keys().values(),
                    values: Box::new(values),
                }
            }
            _ => return None,
        })
    }

    fn len(&self) -> usize {
        match self {
            TextArray::Utf8(array) => array.len(),
            TextArray::LargeUtf8(array) => array.len(),
            TextArray::View(array) => array.len(),
            TextArray::Dictionary { keys, .. } => keys.len(),
        }
    }

    /// The text at `row`, which is below [`TextArray::len`]; `None` only
    /// for a dictionary key out of range (which Arrow's own checks should
    /// already have refused).
    fn get(&self, row: usize) -> Option<&'b str> {
        match self {
            TextArray::Utf8(array) => Some(array.value(row)),
            TextArray::LargeUtf8(array) => Some(array.value(row)),
            TextArray::View(array) => Some(array.value(row)),
            TextArray::Dictionary { keys, values } => {
                let key = usize::try_from(keys[row]).ok()?;
                (key < values.len()).then(|| values.get(key)).flatten()
            }
        }
    }
}

/// One text field's column in a batch.
struct TextColumn<'b> {
    array: TextArray<'b>,
    nulls: Option<NullBuffer>,
}

impl<'b> TextColumn<'b> {
    fn new(array: &'b dyn Array, nulls: Option<NullBuffer>) -> Option<TextColumn<'b>> {
        Some(TextColumn {
            array: TextArray::new(array)?,
            nulls,
        })
    }

    /// The row's text, `None` when null.
    fn get(&self, row: usize) -> Option<&'b str> {
        if self.nulls.as_ref().is_some_and(|nulls| nulls.is_null(row)) {
            return None;
        }
        self.array.get(row)
    }
}

/// A column of numbers or times, of whatever Arrow type the file has.
enum ValueArray<'b> {
    Text(TextArray<'b>),
    Signed(SignedSlice<'b>),
    Unsigned(UnsignedSlice<'b>),
    Float32(&'b [f32]),
    Float64(&'b [f64]),
    /// An Arrow timestamp: the unit's count since the epoch, UTC.
    Timestamp(&'b [i64], TimeUnit),
}

enum SignedSlice<'b> {
    I8(&'b [i8]),
    I16(&'b [i16]),
    I32(&'b [i32]),
    I64(&'b [i64]),
}

enum UnsignedSlice<'b> {
    U8(&'b [u8]),
    U16(&'b [u16]),
    U32(&'b [u32]),
    U64(&'b [u64]),
}

struct ValueColumn<'b> {
    array: ValueArray<'b>,
    nulls: Option<NullBuffer>,
}

impl<'b> ValueColumn<'b> {
    fn new(array: &'b dyn Array, nulls: Option<NullBuffer>) -> Option<ValueColumn<'b>> {
        let values = match array.data_type() {
            DataType::Int8 => ValueArray::Signed(SignedSlice::I8(array.as_primitive_opt::<Int8Type>()?.values())),
            DataType::Int16 => ValueArray::Signed(SignedSlice::I16(array.as_primitive_opt::<Int16Type>()?.values())),
            DataType::Int32 => ValueArray::Signed(SignedSlice::I32(array.as_primitive_opt::<Int32Type>()?.values())),
            DataType::Int64 => ValueArray::Signed(SignedSlice::I64(array.as_primitive_opt::<Int64Type>()?.values())),
            DataType::UInt8 => ValueArray::Unsigned(UnsignedSlice::U8(array.as_primitive_opt::<UInt8Type>()?.values())),
            DataType::UInt16 => {
                ValueArray::Unsigned(UnsignedSlice::U16(array.as_primitive_opt::<UInt16Type>()?.values()))
            }
            DataType::UInt32 => {
                ValueArray::Unsigned(UnsignedSlice::U32(array.as_primitive_opt::<UInt32Type>()?.values()))
            }
            DataType::UInt64 => {
                ValueArray::Unsigned(UnsignedSlice::U64(array.as_primitive_opt::<UInt64Type>()?.values()))
            }
            DataType::Float32 => ValueArray::Float32(array.as_primitive_opt::<Float32Type>()?.values()),
            DataType::Float64 => ValueArray::Float64(array.as_primitive_opt::<Float64Type>()?.values()),
            DataType::Timestamp(unit, _) => {
                let values: &[i64] = match unit {
                    TimeUnit::Second => array.as_primitive_opt::<TimestampSecondType>()?.values(),
                    TimeUnit::Millisecond => array.as_primitive_opt::<TimestampMillisecondType>()?.values(),
                    TimeUnit::Microsecond => array.as_primitive_opt::<TimestampMicrosecondType>()?.values(),
                    TimeUnit::Nanosecond => array.as_primitive_opt::<TimestampNanosecondType>()?.values(),
                };
                ValueArray::Timestamp(values, *unit)
            }
            _ => ValueArray::Text(TextArray::new(array)?),
        };
        Some(ValueColumn { array: values, nulls })
    }

    /// The row's value as the JSON decoder would have seen it, `None` when
    /// null. Timestamps come as epoch milliseconds (rounded down, as the
    /// RFC 3339 parser does with finer fractions).
    fn get(&self, row: usize) -> Option<Value<'b>> {
        if self.nulls.as_ref().is_some_and(|nulls| nulls.is_null(row)) {
            return None;
        }
        Some(match &self.array {
            ValueArray::Text(array) => Value::Scalar(Scalar::Str(Cow::Borrowed(array.get(row)?))),
            ValueArray::Signed(slice) => {
                let value = match slice {
                    SignedSlice::I8(values) => i64::from(values[row]),
                    SignedSlice::I16(values) => i64::from(values[row]),
                    SignedSlice::I32(values) => i64::from(values[row]),
                    SignedSlice::I64(values) => values[row],
                };
                // JSON reads a non-negative integer as unsigned.
                match u64::try_from(value) {
                    Ok(unsigned) => Value::Scalar(Scalar::UInt(unsigned)),
                    Err(_) => Value::Scalar(Scalar::Int(value)),
                }
            }
            ValueArray::Unsigned(slice) => Value::Scalar(Scalar::UInt(match slice {
                UnsignedSlice::U8(values) => u64::from(values[row]),
                UnsignedSlice::U16(values) => u64::from(values[row]),
                UnsignedSlice::U32(values) => u64::from(values[row]),
                UnsignedSlice::U64(values) => values[row],
            })),
            ValueArray::Float32(values) => Value::Scalar(Scalar::Float(f64::from(values[row]))),
            ValueArray::Float64(values) => Value::Scalar(Scalar::Float(values[row])),
            ValueArray::Timestamp(values, unit) => {
                let value = values[row];
                Value::EpochMs(match unit {
                    TimeUnit::Second => i128::from(value) * 1000,
                    TimeUnit::Millisecond => i128::from(value),
                    TimeUnit::Microsecond => i128::from(value.div_euclid(1000)),
                    TimeUnit::Nanosecond => i128::from(value.div_euclid(1_000_000)),
                })
            }
        })
    }
}

/// A row's value: what JSON would have held, or a typed time.
enum Value<'b> {
    Scalar(Scalar<'b>),
    EpochMs(i128),
}

/// One batch's columns, read row by row into events.
pub struct BatchView<'b> {
    plan: &'b ColumnPlan,
    rows: usize,
    ts: ValueColumn<'b>,
    key_id: TextColumn<'b>,
    ip: TextColumn<'b>,
    method: Option<TextColumn<'b>>,
    endpoint: TextColumn<'b>,
    status: Option<ValueColumn<'b>>,
    user_agent: Option<TextColumn<'b>>,
    bytes_out: Option<ValueColumn<'b>>,
    request_id: Option<TextColumn<'b>>,
}

impl<'b> BatchView<'b> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// See [`ColumnPlan::key_field_names`].
    pub fn key_field_names(&self) -> [&'b str; 2] {
        self.plan.key_field_names()
    }

    /// The event of `row` (below [`BatchView::rows`]), or why there is
    /// none: the checks and errors of a mapped JSON record, in its order
    /// (the key first, so a row without one is skipped whatever else is
    /// wrong with it).
    pub fn event(&self, row: usize) -> Result<AccessEvent<'b>, DecodeError> {
        let mapping = &self.plan.mapping;
        let text = |column: &Option<TextColumn<'b>>| column.as_ref().and_then(|column| column.get(row));
        let key_id = key_field(
            self.key_id.get(row).map(|key| Scalar::Str(Cow::Borrowed(key))),
            "key_id",
        )?;
        if key_id.len() > MAX_KEY_ID_BYTES {
            return Err(DecodeError::KeyTooLong {
                length: key_id.len(),
                limit: MAX_KEY_ID_BYTES,
            });
        }
        let ts_ms = match self.ts.get(row) {
            None => return Err(DecodeError::MissingField("ts")),
            Some(Value::EpochMs(millis)) => super::canonical::check_ts_range(millis)?,
            // Typed numbers are epoch times whatever the mapping's text
            // format: milliseconds, unless it says seconds.
            Some(Value::Scalar(number @ (Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_)))) => {
                let format = match mapping.ts_format {
                    TsFormat::EpochS => TsFormat::EpochS,
                    TsFormat::Rfc3339 | TsFormat::EpochMs => TsFormat::EpochMs,
                };
                mapped_ts(number, format, &mapping.ts)?
            }
            Some(Value::Scalar(other)) => mapped_ts(other, mapping.ts_format, &mapping.ts)?,
        };
        let ip = match self.ip.get(row) {
            None => return Err(DecodeError::MissingField("ip")),
            // One plain address (the common case) is its own client
            // whatever the trusted proxies; anything else (a list, a port,
            // spaces) takes the mapping's full rule.
            Some(text) => match super::parse_ip(text) {
                Some(ip) => ip,
                None => mapped_ip(Cow::Borrowed(text), &mapping.trusted_proxies)?,
            },
        };
        let method = match (text(&self.method), &mapping.default_method) {
            (Some(method), _) => Cow::Borrowed(method),
            (None, Some(default)) => Cow::Borrowed(default.as_str()),
            (None, None) => return Err(DecodeError::MissingField("method")),
        };
        let endpoint = match self.endpoint.get(row) {
            None => return Err(DecodeError::MissingField("endpoint")),
            Some(endpoint) => Cow::Borrowed(endpoint),
        };
        let status = match (
            self.status.as_ref().and_then(|column| column.get(row)),
            mapping.default_status,
        ) {
            (Some(value), _) => number(value, "status", &mapping.status)
                .and_then(|status| u16::try_from(status).map_err(|_| not_a_number("status", &mapping.status)))?,
            (None, Some(default)) => default,
            (None, None) => return Err(DecodeError::MissingField("status")),
        };
        let bytes_out = match self.bytes_out.as_ref().and_then(|column| column.get(row)) {
            None => 0,
            Some(value) => number(value, "bytes_out", &mapping.bytes_out)?,
        };
        Ok(AccessEvent {
            ts_ms,
            key_id,
            ip,
            method,
            endpoint,
            status,
            user_agent: Cow::Borrowed(text(&self.user_agent).unwrap_or("")),
            bytes_out,
            request_id: text(&self.request_id).map(Cow::Borrowed),
        })
    }

    /// The row as a JSON object of the mapping's paths, for a rejection's
    /// excerpt; the key's value is left out (`null` or `"[redacted]"`), as
    /// no raw key may reach an output file.
    pub fn row_excerpt(&self, row: usize) -> String {
        let mut text = String::from("{");
        let mut field = |path: &str, value: serde_json::Value| {
            if text.len() > 1 {
                text.push(',');
            }
            let _ = write!(text, "{}:{}", serde_json::Value::from(path), value);
        };
        let show_text =
            |column: &TextColumn<'b>| column.get(row).map_or(serde_json::Value::Null, serde_json::Value::from);
        let show_value = |column: &ValueColumn<'b>| match column.get(row) {
            None => serde_json::Value::Null,
            Some(Value::EpochMs(millis)) => serde_json::Value::from(millis.to_string()),
            Some(Value::Scalar(scalar)) => match scalar {
                Scalar::Int(number) => serde_json::Value::from(number),
                Scalar::UInt(number) => serde_json::Value::from(number),
                Scalar::Float(number) => serde_json::Value::from(number),
                Scalar::Str(text) => serde_json::Value::from(text.as_ref()),
                _ => serde_json::Value::Null,
            },
        };
        let plan = self.plan;
        field(&plan.ts.path, show_value(&self.ts));
        let key = match self.key_id.get(row) {
            None => serde_json::Value::Null,
            Some(_) => serde_json::Value::from("[redacted]"),
        };
        field(&plan.key_id.path, key);
        field(&plan.ip.path, show_text(&self.ip));
        for (path, column) in [(&plan.method, &self.method), (&plan.user_agent, &self.user_agent)] {
            if let (Some(path), Some(column)) = (path, column) {
                field(&path.path, show_text(column));
            }
        }
        field(&plan.endpoint.path, show_text(&self.endpoint));
        for (path, column) in [(&plan.status, &self.status), (&plan.bytes_out, &self.bytes_out)] {
            if let (Some(path), Some(column)) = (path, column) {
                field(&path.path, show_value(column));
            }
        }
        if let (Some(path), Some(column)) = (&plan.request_id, &self.request_id) {
            field(&path.path, show_text(column));
        }
        text.push('}');
        text
    }
}

/// A number field's value, with the JSON mapping's errors.
fn number(value: Value<'_>, field: &'static str, path: &str) -> Result<u64, DecodeError> {
    match value {
        Value::Scalar(scalar) => mapped_number(scalar, field, path),
        Value::EpochMs(_) => Err(not_a_number(field, path)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{Int64Builder, StringBuilder, StringDictionaryBuilder};
    use arrow_array::{StructArray, TimestampMicrosecondArray, UInt16Array};
    use arrow_schema::Field;

    use super::*;

    fn text_array(values: &[Option<&str>]) -> ArrayRef {
        let mut builder = StringBuilder::new();
        for value in values {
            builder.append_option(*value);
        }
        Arc::new(builder.finish())
    }

    /// A batch with canonical column names; rows 1 and 2 are bad.
    fn canonical_batch() -> RecordBatch {
        let mut endpoints = StringDictionaryBuilder::<Int32Type>::new();
        for endpoint in ["/v1/a", "/v1/b", "/v1/a", "/v1/a"] {
            endpoints.append_value(endpoint);
        }
        let ts = TimestampMicrosecondArray::from(vec![
            1_772_368_496_789_999,
            1_772_368_496_790_000,
            1_772_368_496_791_000,
            1_772_368_496_792_000,
        ])
        .with_timezone("UTC");
        RecordBatch::try_from_iter([
            ("ts", Arc::new(ts) as ArrayRef),
            (
                "key_id",
                text_array(&[Some("k1"), Some("k2"), None, Some("  Bearer k4 ")]),
            ),
            (
                "ip",
                text_array(&[Some("192.0.2.1"), Some("nope"), Some("192.0.2.3"), Some("192.0.2.4")]),
            ),
            (
                "method",
                text_array(&[Some("GET"), Some("GET"), Some("POST"), Some("PUT")]),
            ),
            ("endpoint", Arc::new(endpoints.finish()) as ArrayRef),
            (
                "status",
                Arc::new(UInt16Array::from(vec![200, 200, 201, 404])) as ArrayRef,
            ),
        ])
        .expect("a valid batch")
    }

    #[test]
    fn canonical_columns_decode_with_borrowed_text() {
        let batch = canonical_batch();
        let plan = ColumnPlan::new(&batch.schema(), &FieldMapping::default()).expect("plan");
        let view = plan.view(&batch).expect("view");
        let event = view.event(0).expect("row 0 is valid");
        assert_eq!(event.ts_ms, 1_772_368_496_789, "micros round down to millis");
        assert_eq!((event.key_id.as_ref(), event.endpoint.as_ref()), ("k1", "/v1/a"));
        assert!(matches!(event.key_id, Cow::Borrowed(_)) && matches!(event.endpoint, Cow::Borrowed(_)));
        assert_eq!((event.status, event.bytes_out, event.user_agent.as_ref()), (200, 0, ""));
        assert_eq!(event.request_id, None);
        let last = view.event(3).expect("row 3 is valid");
        assert_eq!(last.key_id, "k4", "the key is canonicalised as in JSON");
    }

    #[test]
    fn bad_rows_give_the_json_errors() {
        let batch = canonical_batch();
        let plan = ColumnPlan::new(&batch.schema(), &FieldMapping::default()).expect("plan");
        let view = plan.view(&batch).expect("view");
        assert_eq!(view.event(1), Err(DecodeError::BadIp("nope".into())));
        assert_eq!(view.event(2), Err(DecodeError::NoKey));
        let excerpt = view.row_excerpt(1);
        let parsed: serde_json::Value = serde_json::from_str(&excerpt).expect("json excerpt");
        assert_eq!(parsed["key_id"], "[redacted]");
        assert_eq!(parsed["ip"], "nope");
        assert!(!excerpt.contains("k2"), "{excerpt}");
    }

    #[test]
    fn nested_struct_paths_and_defaults_follow_the_mapping() {
        let request_fields = Fields::from(vec![
            Field::new("x-api-key", DataType::Utf8, true),
            Field::new("path", DataType::Utf8, true),
        ]);
        let request = StructArray::new(
            request_fields,
            vec![
                text_array(&[Some("kg_1"), Some("kg_2")]),
                text_array(&[Some("/x"), Some("/y")]),
            ],
            Some(NullBuffer::from(vec![true, false])),
        );
        let mut started = Int64Builder::new();
        started.append_value(1_772_368_496);
        started.append_value(1_772_368_497);
        let batch = RecordBatch::try_from_iter([
            ("started", Arc::new(started.finish()) as ArrayRef),
            ("request", Arc::new(request) as ArrayRef),
            (
                "http.client",
                text_array(&[Some("203.0.113.9, 10.0.0.1"), Some("203.0.113.9")]),
            ),
        ])
        .expect("a valid batch");
        let mapping: FieldMapping = toml::from_str(
            r#"
            ts = "started"
            ts_format = "epoch_s"
            key_id = "request.x-api-key"
            endpoint = "request.path"
            ip = "http.client"
            trusted_proxies = ["10.0.0.0/8"]
            default_method = "GET"
            default_status = 200
            "#,
        )
        .expect("mapping");
        let plan = ColumnPlan::new(&batch.schema(), &mapping).expect("plan");
        assert_eq!(plan.root_columns(), vec![0, 1, 2]);
        let view = plan.view(&batch).expect("view");
        let event = view.event(0).expect("valid");
        assert_eq!(event.ts_ms, 1_772_368_496_000);
        assert_eq!((event.key_id.as_ref(), event.endpoint.as_ref()), ("kg_1", "/x"));
        assert_eq!(event.ip.to_string(), "203.0.113.9");
        assert_eq!((event.method.as_ref(), event.status), ("GET", 200));
        assert_eq!(view.event(1), Err(DecodeError::NoKey), "a null struct nulls its fields");
    }

    #[test]
    fn missing_and_mistyped_columns_are_refused_with_their_name() {
        let batch = canonical_batch();
        let mapping = FieldMapping {
            key_id: "api_key".into(),
            ..FieldMapping::default()
        };
        let missing = ColumnPlan::new(&batch.schema(), &mapping).expect_err("no api_key column");
        assert!(
            matches!(&missing, ColumnError::Missing { field: "key_id", path, .. } if path == "api_key"),
            "{missing}"
        );
        let mapping = FieldMapping {
            ip: "status".into(),
            ..FieldMapping::default()
        };
        let mistyped = ColumnPlan::new(&batch.schema(), &mapping).expect_err("status is not text");
        assert!(
            matches!(mistyped, ColumnError::UnsupportedType { field: "ip", .. }),
            "{mistyped}"
        );
    }

    #[test]
    fn text_times_and_numbers_parse_like_json() {
        let batch = RecordBatch::try_from_iter([
            ("ts", text_array(&[Some("2026-03-01T12:34:56.5Z"), Some("yesterday")])),
            ("key_id", text_array(&[Some("k"), Some("k")])),
            ("ip", text_array(&[Some("192.0.2.1"), Some("192.0.2.1")])),
            ("method", text_array(&[Some("GET"), Some("GET")])),
            ("endpoint", text_array(&[Some("/"), Some("/")])),
            ("status", text_array(&[Some("404"), Some("70000")])),
        ])
        .expect("a valid batch");
        let plan = ColumnPlan::new(&batch.schema(), &FieldMapping::default()).expect("plan");
        let view = plan.view(&batch).expect("view");
        let event = view.event(0).expect("valid");
        assert_eq!((event.ts_ms, event.status), (1_772_368_496_500, 404));
        assert_eq!(view.event(1), Err(DecodeError::BadTimestamp("yesterday".into())));
    }
}
