//! `keywatch demo`: the whole system in one process. An in-process Kafka
//! (librdkafka's mock cluster) gets the topics; generated traffic with
//! labelled attacks is produced into the input topic in accelerated event
//! time; the real `keywatch run` pipeline consumes it; a watcher reads the
//! alerts, revocation and dead-letter topics back as the SOC would. At the
//! end the scorecard of `keywatch eval` is printed.
//!
//! `run.rs` is the run itself (cluster, producing, pipeline, watcher, the
//! files written); `display.rs` is what a person sees of it (the live view
//! and the closing lines). The generator writes the run's labels, metadata
//! and GeoIP databases, and eval renders the scorecard, as for any run.

mod display;
mod run;

use std::path::PathBuf;

use rdkafka::error::KafkaError;
use serde::Serialize;

use crate::alert::{Alert, RevocationRequest};
use crate::eval::Scorecard;
use crate::generate::GenerateError;
use crate::pipeline::PipelineError;
use crate::sink::file::SinkError;

pub use run::{MAX_LEAD, run_demo};

/// Command-line options of `keywatch demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// API keys in the generated traffic.
    #[arg(long, default_value_t = 150)]
    pub keys: usize,
    /// Days of traffic.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Event-time seconds per wall-clock second (a week in about a minute).
    #[arg(long, default_value_t = 10_000.0)]
    pub speed: f64,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Folder for the alert, revocation and rejected files and the scorecard.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Plain lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("cannot start the in-process kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Incomplete(String),
}

/// What the demo did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Records produced into the input topic (events and malformed ones).
    pub produced: u64,
    pub events: u64,
    pub malformed: u64,
    /// What the pipeline says it consumed.
    pub processed_records: u64,
    pub processed_events: u64,
    pub dead_letters: u64,
    /// Alerts and revocation requests read back from their topics.
    pub alerts_on_topic: usize,
    pub revocations_on_topic: usize,
    pub dead_letters_on_topic: usize,
    pub wall_seconds: f64,
    pub scorecard: Scorecard,
}

/// One record the watcher read back from an output topic.
enum Seen {
    Alert(Box<Alert>),
    Revocation(Box<RevocationRequest>),
    /// The dead letter as JSON text: its headers and the original record.
    DeadLetter(String),
}

/// Runs the demo, showing it as it goes, then prints the closing lines.
pub fn run_cli(args: &DemoArgs) -> Result<(), DemoError> {
    let report = run_demo(args)?;
    display::print_closing(&report, &args.out);
    Ok(())
}
