//! `keywatch replay`: analysts' replay of historical logs through the
//! engine, from [`files`] or from a time range of [`kafka`], into
//! `alerts.jsonl` (and, by `--alert-format`, OCSF `alerts.ocsf.jsonl`),
//! `revocations.jsonl` and `rejected.jsonl`, with a summary.

pub mod files;
pub mod kafka;
mod packed;
pub mod parallel;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::counts::Counts;
use crate::decode::Format;
use crate::ocsf::AlertFormat;
use crate::setup::{EngineArgs, Overrides, Setup, SetupError};
use crate::sink::file::{OutputFiles, SinkError};
use crate::source::file::SourceError;

/// Command-line options of `keywatch replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Input files (plain or gzip; Parquet with `--format parquet`); `-`
    /// reads standard input (not for Parquet).
    #[arg(long, num_args = 1.., required_unless_present = "from_kafka")]
    pub input: Vec<PathBuf>,
    /// Input format (overrides the config; `auto` when neither says).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Folder for alerts.jsonl, revocations.jsonl and rejected.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Events per micro-batch (the output does not depend on it).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Read the input topic of the config's `[kafka]` section instead of files.
    #[arg(long)]
    pub from_kafka: bool,
    /// With --from-kafka: first event time to replay (RFC 3339).
    #[arg(long, requires = "from_kafka")]
    pub start: Option<String>,
    /// With --from-kafka: end of the range, exclusive (RFC 3339).
    #[arg(long, requires = "from_kafka")]
    pub end: Option<String>,
    /// With --from-kafka: start from this saved baseline snapshot instead of empty state.
    #[arg(long, requires = "from_kafka")]
    pub snapshot: Option<PathBuf>,
    /// With --from-kafka: also produce alerts to this topic (never the live alert topic).
    #[arg(long, requires = "from_kafka")]
    pub to_topic: Option<String>,
    /// Do not show a progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Alert format: `native` (alerts.jsonl), `ocsf` (OCSF 1.5.0 Detection
    /// Findings in alerts.ocsf.jsonl; alerts.jsonl is left empty) or `both`.
    /// Digests and revocation requests stay native.
    #[arg(long, value_enum, default_value_t = AlertFormat::Native)]
    pub alert_format: AlertFormat,
    /// Owners file (CSV or JSON lines) whose owners go on alerts and
    /// revocation requests (overrides the config's `owners_file`).
    #[arg(long, value_name = "FILE")]
    pub owners: Option<PathBuf>,
    /// Write the engine's state at the end of a file replay to FILE (the
    /// snapshot file format), for `keywatch keys --snapshot`.
    #[arg(long, value_name = "FILE", conflicts_with = "from_kafka")]
    pub save_snapshot: Option<PathBuf>,
    /// Analysts' feedback and expectations, JSON lines (see docs/FEEDBACK.md),
    /// applied when the replay's event time reaches each entry's `at`; what
    /// became of each entry goes to feedback.jsonl.
    #[arg(long, conflicts_with = "from_kafka")]
    pub feedback: Option<PathBuf>,
    /// Threads of a file replay (default: every core): one judges, the
    /// others decode ahead; the outputs are those of one thread, byte for byte.
    #[arg(long, conflicts_with = "from_kafka")]
    pub threads: Option<usize>,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Parquet(#[from] crate::source::parquet::ParquetSourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Kafka(#[from] kafka::ReplayKafkaError),
    #[error(transparent)]
    Owners(#[from] crate::owners::OwnersError),
    #[error(transparent)]
    Snapshot(crate::checkpoint::CheckpointError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Feedback(#[from] crate::feedback::FeedbackError),
    #[error("interrupted: stopped reading on SIGINT; outputs and summary.json hold everything read before")]
    Interrupted,
}

/// What a file replay did: the summary printed at the end and written to
/// `summary.json`. Holds counts only, so it is as deterministic as the outputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplaySummary {
    pub counts: Counts,
    /// Keys with state at the end.
    pub keys: u64,
    /// Alerts held back as repeats inside the suppression window.
    pub suppressed: u64,
    pub late_events: u64,
    /// Whether reading stopped early (SIGINT): the outputs hold everything
    /// judged up to then.
    pub interrupted: bool,
}

/// `summary.json` keeps the fields, names and order it always had, the
/// engine's counts among the driver's.
impl Serialize for ReplaySummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let counts = &self.counts;
        let mut fields = serializer.serialize_struct("ReplaySummary", 12)?;
        fields.serialize_field("records", &counts.records)?;
        fields.serialize_field("events", &counts.events)?;
        fields.serialize_field("keys", &self.keys)?;
        fields.serialize_field("alerts", &counts.alerts)?;
        fields.serialize_field("alerts_by_severity", &counts.alerts_by_severity)?;
        fields.serialize_field("alerts_by_detector", &counts.alerts_by_detector)?;
        fields.serialize_field("suppressed", &self.suppressed)?;
        fields.serialize_field("revocations", &counts.revocations)?;
        if counts.revocations_shadow > 0 {
            fields.serialize_field("revocations_shadow", &counts.revocations_shadow)?;
        }
        fields.serialize_field("rejected", &counts.rejected)?;
        fields.serialize_field("rejected_by_reason", &counts.rejected_by_reason)?;
        fields.serialize_field("skipped_no_key", &counts.no_key)?;
        fields.serialize_field("late_events", &self.late_events)?;
        if self.interrupted {
            fields.serialize_field("interrupted", &true)?;
        }
        fields.end()
    }
}

impl ReplaySummary {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        let join = |map: &BTreeMap<String, u64>| {
            if map.is_empty() {
                return "none".to_string();
            }
            map.iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let counts = &self.counts;
        format!(
            "records       {}\nevents        {}\nkeys          {}\nalerts        {} ({})\n  detectors   {}\n  updates     {} (repeats sent as new revisions of an alert)\ndigests       {} (folding {} low findings)\nsuppressed    {} (repeats inside the suppression window)\nrevocations   {} (shadow {})\nrejected      {} ({})\nno api key    {} (skipped)\nlate events   {}\n",
            counts.records,
            counts.events,
            self.keys,
            counts.alerts,
            join(&counts.alerts_by_severity),
            join(&counts.alerts_by_detector),
            counts.alert_updates,
            counts.digests,
            counts.digest_findings,
            self.suppressed,
            counts.revocations,
            counts.revocations_shadow,
            counts.rejected,
            join(&counts.rejected_by_reason),
            counts.no_key,
            self.late_events,
        ) + if self.interrupted {
            "interrupted   yes (stopped reading on SIGINT; everything read was judged and written)\n"
        } else {
            ""
        }
    }
}

/// Runs the command.
pub fn run_cli(args: &ReplayArgs) -> Result<(), ReplayError> {
    let threads = args.threads.unwrap_or_else(parallel::default_threads);
    if threads == 0 {
        return Err(ReplayError::Usage("--threads must be at least 1".into()));
    }
    let overrides = Overrides {
        format: args.format.clone(),
        batch_size: args.batch_size,
        ..args.engine.overrides(args.config.clone())
    };
    let setup = Setup::load(&overrides)?;
    let owners = Arc::new(setup.owners(args.owners.as_deref())?);
    if args.from_kafka {
        return replay_kafka_cli(args, &setup, owners);
    }
    if args.input.is_empty() {
        return Err(ReplayError::Usage("give at least one --input file".into()));
    }
    let mut engine = setup.engine();
    // Owners (for per-owner caps and never_revoke by owner or team) come
    // from the owners file; without one every key is unowned.
    let mut outputs = OutputFiles::create_with_format(&args.out, args.alert_format)?.with_gate(
        crate::revoke::RevocationGate::new(&setup.model.policy, &setup.model.label()),
        (*owners).clone(),
    );
    if let Some(path) = &args.feedback {
        for entry in crate::feedback::read_feedback_file(path)? {
            engine.add_feedback(entry);
        }
        outputs = outputs.with_feedback(&args.out)?;
    }
    let bar = files::progress_bar(&args.input, args.no_progress);
    let started = std::time::Instant::now();
    let stop = stop_on_sigint();
    // Parquet is read column-wise by its own reader, on one thread.
    let parquet = setup.config.input.decoder().format == crate::decode::Format::Parquet;
    let summary = if threads == 1 || parquet {
        files::replay_files(
            &args.input,
            &setup.config.input.decoder(),
            &mut engine,
            setup.config.input.batch_size,
            &mut outputs,
            bar.as_ref(),
            &stop,
            &owners,
        )?
    } else {
        parallel::replay_files_parallel(
            &args.input,
            &setup.config.input.decoder(),
            &mut engine,
            setup.config.input.batch_size,
            threads,
            &mut outputs,
            bar.as_ref(),
            &stop,
            &owners,
        )?
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    write_summary(&args.out, &summary)?;
    if let Some(path) = &args.save_snapshot {
        save_snapshot(path, &engine)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    print!("{}", summary.render());
    println!(
        "took          {elapsed:.1}s ({:.0} events/s)\nwrote         {}/{}revocations.jsonl, revocations.shadow.jsonl, digests.jsonl, rejected.jsonl, summary.json",
        summary.counts.events as f64 / elapsed.max(1e-9),
        args.out.display(),
        alert_files(args.alert_format),
    );
    if summary.interrupted {
        return Err(ReplayError::Interrupted);
    }
    Ok(())
}

/// A flag set by the first SIGINT, so a replay stops reading and still
/// flushes what it has; a second SIGINT ends the process at once.
fn stop_on_sigint() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("sigint".into()).spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            let _ = ready_tx.send(());
            return;
        };
        runtime.block_on(async move {
            let Ok(mut interrupts) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else {
                let _ = ready_tx.send(());
                return;
            };
            let _ = ready_tx.send(());
            if interrupts.recv().await.is_some() {
                flag.store(true, Ordering::Relaxed);
                eprintln!("keywatch: interrupted, finishing held events and flushing outputs (SIGINT again aborts)");
            }
            if interrupts.recv().await.is_some() {
                std::process::exit(130);
            }
        });
    });
    if spawned.is_ok() {
        // The handler is in place before the first record is read.
        let _ = ready_rx.recv_timeout(std::time::Duration::from_secs(5));
    }
    stop
}

fn parse_time(text: &Option<String>, flag: &str) -> Result<Option<i64>, ReplayError> {
    match text {
        None => Ok(None),
        Some(text) => crate::event::parse_ts(text)
            .map(Some)
            .ok_or_else(|| ReplayError::Usage(format!("{flag} `{text}` is not an RFC 3339 time"))),
    }
}

/// `keywatch replay --from-kafka`: a time range of the input topic through
/// the same engine, into files (and a replay topic when asked).
fn replay_kafka_cli(
    args: &ReplayArgs,
    setup: &Setup,
    owners: Arc<crate::owners::OwnerBook>,
) -> Result<(), ReplayError> {
    let options = kafka::ReplayKafkaOptions {
        start_ms: parse_time(&args.start, "--start")?,
        end_ms: parse_time(&args.end, "--end")?,
        out_dir: args.out.clone(),
        snapshot: args.snapshot.clone(),
        to_topic: args.to_topic.clone(),
        batch_size: setup.config.input.batch_size,
        owners,
    };
    // The command line's alert format applies to the files of this replay.
    let mut config = setup.config.clone();
    if let Some(kafka) = config.kafka.as_mut() {
        kafka.alert_format = args.alert_format;
    }
    let summary = kafka::replay_from_kafka(&config, Arc::clone(&setup.model), Arc::clone(&setup.geo), &options)?;
    let counts = &summary.counts;
    println!(
        "partitions    {}\nrecords       {}\nevents        {} ({} in range)\nalerts        {}\nrevocations   {}\nrejected      {}\nno api key    {} (skipped)",
        summary.partitions,
        counts.records,
        counts.events,
        summary.events_in_range,
        counts.alerts,
        counts.revocations,
        counts.rejected,
        counts.no_key
    );
    if !summary.scanned_from_beginning.is_empty() {
        println!(
            "scanned from the first record (no offset lookup by time): {}",
            summary.scanned_from_beginning.join(", ")
        );
    }
    if let Some(topic) = &args.to_topic {
        println!("produced      {} alerts to {topic}", summary.produced);
    }
    println!(
        "wrote         {}/{}revocations.jsonl, digests.jsonl, rejected.jsonl",
        args.out.display(),
        alert_files(args.alert_format),
    );
    Ok(())
}

/// The alert files a replay writes lines to, for its closing message.
fn alert_files(format: AlertFormat) -> String {
    let mut files = String::new();
    if format.native() {
        files.push_str("alerts.jsonl, ");
    }
    if format.ocsf() {
        files.push_str(crate::ocsf::OCSF_ALERTS_FILE);
        files.push_str(", ");
    }
    files
}

/// The partition name a file replay's state is saved under.
pub const FILE_REPLAY_PARTITION: &str = "replay/0";

/// Writes the engine's state as a snapshot file of one partition,
/// [`FILE_REPLAY_PARTITION`].
pub fn save_snapshot(path: &Path, engine: &crate::engine::Engine) -> Result<(), ReplayError> {
    let mut snapshots = crate::checkpoint::SnapshotFile::new();
    snapshots.insert(
        FILE_REPLAY_PARTITION.to_string(),
        crate::checkpoint::PartitionSnapshot {
            next_offset: 0,
            engine: engine.snapshot(),
        },
    );
    crate::checkpoint::write_snapshot_file(path, &snapshots).map_err(ReplayError::Snapshot)
}

/// Writes `summary.json` beside the outputs.
pub fn write_summary(dir: &Path, summary: &ReplaySummary) -> Result<(), SinkError> {
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(summary).unwrap_or_default();
    crate::private_file::write_private(&path, (text + "\n").as_bytes()).map_err(|source| SinkError { path, source })
}
