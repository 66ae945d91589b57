//! Writing JSON lines files: alerts, revocation requests, rejected records.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Rejected;
use crate::alert::Output;

/// Why an output file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct SinkError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// One JSON object per line.
pub struct JsonlWriter {
    path: PathBuf,
    writer: BufWriter<File>,
    lines: u64,
}

impl JsonlWriter {
    pub fn create(path: &Path) -> Result<JsonlWriter, SinkError> {
        let file = File::create(path).map_err(|source| SinkError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            writer: BufWriter::with_capacity(1 << 16, file),
            lines: 0,
        })
    }

    pub fn write<T: Serialize>(&mut self, value: &T) -> Result<(), SinkError> {
        let wrap = |source: std::io::Error| SinkError {
            path: self.path.clone(),
            source,
        };
        serde_json::to_writer(&mut self.writer, value).map_err(|err| wrap(std::io::Error::other(err)))?;
        self.writer.write_all(b"\n").map_err(wrap)?;
        self.lines += 1;
        Ok(())
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Flushes and syncs to disk, so what was written survives a crash.
    pub fn sync(&mut self) -> Result<(), SinkError> {
        let wrap = |source: std::io::Error| SinkError {
            path: self.path.clone(),
            source,
        };
        self.writer.flush().map_err(wrap)?;
        self.writer.get_ref().sync_data().map_err(wrap)
    }
}

/// The files of a replay: `alerts.jsonl`, `revocations.jsonl`,
/// `digests.jsonl`, `rejected.jsonl`.
pub struct OutputFiles {
    pub alerts: JsonlWriter,
    pub revocations: JsonlWriter,
    pub digests: JsonlWriter,
    pub rejected: JsonlWriter,
}

impl OutputFiles {
    pub fn create(dir: &Path) -> Result<OutputFiles, SinkError> {
        std::fs::create_dir_all(dir).map_err(|source| SinkError {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(OutputFiles {
            alerts: JsonlWriter::create(&dir.join("alerts.jsonl"))?,
            revocations: JsonlWriter::create(&dir.join("revocations.jsonl"))?,
            digests: JsonlWriter::create(&dir.join("digests.jsonl"))?,
            rejected: JsonlWriter::create(&dir.join("rejected.jsonl"))?,
        })
    }

    pub fn write_output(&mut self, output: &Output) -> Result<(), SinkError> {
        match output {
            Output::Alert(alert) => self.alerts.write(alert),
            Output::Revocation(request) => self.revocations.write(request),
            Output::Digest(digest) => self.digests.write(digest),
        }
    }

    pub fn write_rejected(&mut self, rejected: &Rejected) -> Result<(), SinkError> {
        self.rejected.write(rejected)
    }

    pub fn sync(&mut self) -> Result<(), SinkError> {
        self.alerts.sync()?;
        self.revocations.sync()?;
        self.digests.sync()?;
        self.rejected.sync()
    }
}
