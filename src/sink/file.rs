//! Writing JSON lines files: alerts, revocation requests, rejected records.
//! Every output file is created readable by its owner only (mode 0600):
//! alerts name keys and places, rejected records hold parts of raw input.

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
        let file = crate::private_file::create_private(path).map_err(|source| SinkError {
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
    /// `feedback.jsonl`, the audit of analysts' feedback, when a replay
    /// was given some.
    pub feedback: Option<JsonlWriter>,
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
            feedback: None,
        })
    }

    /// Adds `feedback.jsonl` in `dir`.
    pub fn with_feedback(mut self, dir: &Path) -> Result<OutputFiles, SinkError> {
        self.feedback = Some(JsonlWriter::create(&dir.join("feedback.jsonl"))?);
        Ok(self)
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
        if let Some(feedback) = &mut self.feedback {
            feedback.sync()?;
        }
        self.rejected.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn output_files_are_readable_by_their_owner_only() {
        let dir = std::env::temp_dir().join(format!("keywatch-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        // A file left world-readable by an older run is tightened too.
        let old = dir.join("rejected.jsonl");
        std::fs::write(&old, b"old\n").expect("write");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut files = OutputFiles::create(&dir).expect("created");
        files.sync().expect("synced");
        for name in ["alerts.jsonl", "revocations.jsonl", "digests.jsonl", "rejected.jsonl"] {
            let mode = std::fs::metadata(dir.join(name)).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(std::fs::read(&old).expect("readable").len(), 0, "truncated");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
