//! Writing JSON lines files: alerts (native and OCSF), revocation requests,
//! digests, rejected records.
//! Every output file is created readable by its owner only (mode 0600):
//! alerts name keys and places, rejected records hold parts of raw input.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Rejected;
use crate::alert::Output;
use crate::ocsf::AlertFormat;
use crate::owners::OwnerBook;
use crate::revoke::RevocationGate;

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

    /// Writes one line already encoded as JSON.
    pub fn write_raw_line(&mut self, json: &[u8]) -> Result<(), SinkError> {
        let wrap = |source: std::io::Error| SinkError {
            path: self.path.clone(),
            source,
        };
        self.writer.write_all(json).map_err(wrap)?;
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
/// `revocations.shadow.jsonl`, `digests.jsonl`, `rejected.jsonl`, and
/// `alerts.ocsf.jsonl` when alerts are written in OCSF too.
pub struct OutputFiles {
    pub alerts: JsonlWriter,
    pub revocations: JsonlWriter,
    /// Requests the revocation gate let through in shadow mode.
    pub shadow: JsonlWriter,
    pub digests: JsonlWriter,
    pub rejected: JsonlWriter,
    /// OCSF Detection Findings, when the alert format asks for them.
    pub ocsf_alerts: Option<JsonlWriter>,
    /// Which formats alerts are written in. With OCSF alone,
    /// `alerts.jsonl` is still created (emptied) but gets no line.
    pub alert_format: AlertFormat,
    /// Judges revocation requests before they are written; without one
    /// (older callers) they are written as the engine made them.
    gate: Option<(RevocationGate, OwnerBook)>,
    shadow_scratch: Vec<crate::alert::RevocationRequest>,
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
            shadow: JsonlWriter::create(&dir.join("revocations.shadow.jsonl"))?,
            digests: JsonlWriter::create(&dir.join("digests.jsonl"))?,
            rejected: JsonlWriter::create(&dir.join("rejected.jsonl"))?,
            ocsf_alerts: None,
            alert_format: AlertFormat::Native,
            gate: None,
            shadow_scratch: Vec::new(),
            feedback: None,
        })
    }

    /// The files of a replay writing alerts in `alert_format`.
    pub fn create_with_format(dir: &Path, alert_format: AlertFormat) -> Result<OutputFiles, SinkError> {
        let mut files = OutputFiles::create(dir)?;
        files.alert_format = alert_format;
        if alert_format.ocsf() {
            files.ocsf_alerts = Some(JsonlWriter::create(&dir.join(crate::ocsf::OCSF_ALERTS_FILE))?);
        }
        Ok(files)
    }

    /// Passes every revocation request through `gate` (with `owners` for
    /// owner caps and `never_revoke` by owner or team) before writing.
    pub fn with_gate(mut self, gate: RevocationGate, owners: OwnerBook) -> OutputFiles {
        self.gate = Some((gate, owners));
        self
    }

    /// The gate, for its state (request statuses) after a replay.
    pub fn gate(&self) -> Option<&RevocationGate> {
        self.gate.as_ref().map(|(gate, _)| gate)
    }

    /// Judges the revocation requests among `outputs`, and those held
    /// before, as far as the engine's `watermark` lets (see
    /// [`RevocationGate::pass_outputs`]), and writes those routed to shadow
    /// mode to `revocations.shadow.jsonl`; returns how many. Call before
    /// counting and writing `outputs`.
    pub fn gate_outputs(&mut self, outputs: &mut Vec<Output>, watermark: i64) -> Result<u64, SinkError> {
        let Some((gate, owners)) = &mut self.gate else {
            return Ok(0);
        };
        self.shadow_scratch.clear();
        gate.pass_outputs(outputs, watermark, owners, &mut self.shadow_scratch);
        for request in &self.shadow_scratch {
            self.shadow.write(request)?;
        }
        Ok(self.shadow_scratch.len() as u64)
    }

    /// Revocation candidates the gate holds until the watermark passes
    /// them (0 without a gate).
    pub fn gate_pending(&self) -> usize {
        self.gate.as_ref().map_or(0, |(gate, _)| gate.pending_candidates())
    }

    /// Adds `feedback.jsonl` in `dir`.
    pub fn with_feedback(mut self, dir: &Path) -> Result<OutputFiles, SinkError> {
        self.feedback = Some(JsonlWriter::create(&dir.join("feedback.jsonl"))?);
        Ok(self)
    }

    pub fn write_output(&mut self, output: &Output) -> Result<(), SinkError> {
        match output {
            Output::Alert(alert) => {
                if let Some(ocsf_alerts) = self.ocsf_alerts.as_mut() {
                    ocsf_alerts.write_raw_line(&ocsf_line(alert, &ocsf_alerts.path)?)?;
                }
                if self.alert_format.native() {
                    self.alerts.write(alert)?;
                }
                Ok(())
            }
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
        self.shadow.sync()?;
        self.digests.sync()?;
        if let Some(ocsf_alerts) = self.ocsf_alerts.as_mut() {
            ocsf_alerts.sync()?;
        }
        if let Some(feedback) = &mut self.feedback {
            feedback.sync()?;
        }
        self.rejected.sync()
    }
}

/// An alert's OCSF line; an alert that cannot be mapped stops the replay
/// like a file that cannot be written, rather than going missing.
fn ocsf_line(alert: &crate::alert::Alert, path: &Path) -> Result<Vec<u8>, SinkError> {
    crate::ocsf::to_json_line(alert).map_err(|error| SinkError {
        path: path.to_path_buf(),
        source: std::io::Error::other(error),
    })
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
        for name in [
            "alerts.jsonl",
            "revocations.jsonl",
            "revocations.shadow.jsonl",
            "digests.jsonl",
            "rejected.jsonl",
        ] {
            let mode = std::fs::metadata(dir.join(name)).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(std::fs::read(&old).expect("readable").len(), 0, "truncated");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
