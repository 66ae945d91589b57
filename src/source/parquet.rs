//! Parquet input files (`--format parquet`): opened, checked against the
//! field mapping, and read a batch of rows at a time as Arrow record
//! batches, decompressing only the columns the mapping reads. Turning rows
//! into events is [`crate::decode::parquet`]'s job.

use std::fs::File;
use std::path::Path;

use arrow_array::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::decode::FieldMapping;
use crate::decode::parquet::{ColumnError, ColumnPlan};

/// Rows per Arrow batch read: large enough that per-batch costs (column
/// views, null masks) vanish per row, small enough to stay in cache.
pub const BATCH_ROWS: usize = 8192;

/// Why a Parquet input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParquetSourceError {
    #[error("cannot read input {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("input {path} is not a readable parquet file: {detail}")]
    NotParquet { path: String, detail: String },
    #[error("input {path}: {source}")]
    Columns {
        path: String,
        #[source]
        source: ColumnError,
    },
    #[error("cannot read input {path} at row {row}: {detail}")]
    Read { path: String, row: u64, detail: String },
    #[error("--format parquet reads files, not standard input (parquet needs to seek)")]
    Stdin,
}

/// One Parquet file being read.
pub struct ParquetInput {
    name: String,
    reader: ParquetRecordBatchReader,
    plan: ColumnPlan,
    /// Rows handed out so far.
    pub rows_read: u64,
    /// Rows in the file, from its footer.
    pub total_rows: u64,
    /// The file's size in bytes.
    pub file_bytes: u64,
}

impl ParquetInput {
    /// Opens `path`, reads its footer and resolves `mapping` against its
    /// schema: a file that is not Parquet, or lacks a column the mapping
    /// needs, is refused here, before any row is read.
    pub fn open(path: &Path, mapping: &FieldMapping) -> Result<ParquetInput, ParquetSourceError> {
        let name = path.display().to_string();
        if name == "-" {
            return Err(ParquetSourceError::Stdin);
        }
        let file = File::open(path).map_err(|source| ParquetSourceError::Open {
            path: name.clone(),
            source,
        })?;
        let file_bytes = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let not_parquet = |error: parquet::errors::ParquetError| ParquetSourceError::NotParquet {
            path: name.clone(),
            detail: error.to_string(),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(not_parquet)?;
        let columns = |source| ParquetSourceError::Columns {
            path: name.clone(),
            source,
        };
        let full_plan = ColumnPlan::new(builder.schema(), mapping).map_err(columns)?;
        let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let projection = ProjectionMask::roots(builder.parquet_schema(), full_plan.root_columns());
        let reader = builder
            .with_projection(projection)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(not_parquet)?;
        // The batches have the projected schema: resolve again against it.
        let plan = ColumnPlan::new(&reader_schema(&reader), mapping).map_err(columns)?;
        Ok(ParquetInput {
            name,
            reader,
            plan,
            rows_read: 0,
            total_rows,
            file_bytes,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mapping resolved against this file's batches.
    pub fn plan(&self) -> &ColumnPlan {
        &self.plan
    }

    /// The next batch of rows, `None` at the end of the file. A page that
    /// cannot be decoded (a damaged file) ends the replay with the row it
    /// was at: unlike a bad JSON line, there is no next row to resync to.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, ParquetSourceError> {
        match self.reader.next() {
            None => Ok(None),
            Some(Ok(batch)) => {
                self.rows_read += batch.num_rows() as u64;
                Ok(Some(batch))
            }
            Some(Err(error)) => Err(ParquetSourceError::Read {
                path: self.name.clone(),
                row: self.rows_read,
                detail: error.to_string(),
            }),
        }
    }

    /// Bytes of the file read so far, estimated from rows, for a progress bar.
    pub fn bytes_estimate(&self) -> u64 {
        if self.total_rows == 0 {
            return self.file_bytes;
        }
        (self.file_bytes as f64 * self.rows_read as f64 / self.total_rows as f64) as u64
    }
}

fn reader_schema(reader: &ParquetRecordBatchReader) -> arrow_schema::Schema {
    use arrow_array::RecordBatchReader;
    reader.schema().as_ref().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_parquet_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.parquet");
        std::fs::write(&path, b"{\"ts\":\"2026-01-05T00:00:00Z\"}\n").expect("write");
        let error = ParquetInput::open(&path, &FieldMapping::default())
            .err()
            .expect("not parquet");
        assert!(matches!(error, ParquetSourceError::NotParquet { .. }), "{error}");
        assert!(error.to_string().contains("events.parquet"), "{error}");
        let missing = ParquetInput::open(&dir.path().join("absent.parquet"), &FieldMapping::default())
            .err()
            .expect("absent");
        assert!(matches!(missing, ParquetSourceError::Open { .. }), "{missing}");
        assert!(matches!(
            ParquetInput::open(Path::new("-"), &FieldMapping::default()),
            Err(ParquetSourceError::Stdin)
        ));
    }
}
