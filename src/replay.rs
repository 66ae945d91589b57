//! Drives the engine from files: analysts' replay of historical logs.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::alert::Output;
use crate::decode::{DecodeError, Decoder, Format};
use crate::engine::Engine;
use crate::runtime::{EngineArgs, Overrides, Runtime, SetupError};
use crate::sink::Rejected;
use crate::sink::file::{OutputFiles, SinkError};
use crate::source::SourceRef;
use crate::source::file::{RecordReader, SourceError};

/// Command-line options of `keywatch replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Input files (plain or gzip); `-` reads standard input.
    #[arg(long, num_args = 1.., required_unless_present = "from_kafka")]
    pub input: Vec<PathBuf>,
    /// Input format (overrides the config; `auto` when neither says).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
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
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Auto,
    Canonical,
    Cloudtrail,
    Mapped,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Kafka(String),
    #[error("{0}")]
    Usage(String),
}

/// What a replay did: the summary printed at the end and written to
/// `summary.json`. Holds counts only, so it is as deterministic as the outputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplaySummary {
    pub records: u64,
    pub events: u64,
    pub keys: u64,
    pub alerts: u64,
    pub alerts_by_severity: BTreeMap<String, u64>,
    pub alerts_by_detector: BTreeMap<String, u64>,
    pub suppressed: u64,
    pub revocations: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Events without an API key, skipped.
    pub skipped_no_key: u64,
    pub late_events: u64,
}

impl ReplaySummary {
    /// Counts one output.
    pub fn count_output(&mut self, output: &Output) {
        match output {
            Output::Alert(alert) => {
                self.alerts += 1;
                *self
                    .alerts_by_severity
                    .entry(alert.severity.as_str().to_string())
                    .or_default() += 1;
                *self.alerts_by_detector.entry(alert.detector.to_string()).or_default() += 1;
            }
            Output::Revocation(_) => self.revocations += 1,
        }
    }

    /// Counts one decode failure; returns whether it is a rejection (as
    /// opposed to an event without a key, which is only skipped).
    pub fn count_decode_error(&mut self, error: &DecodeError) -> bool {
        if *error == DecodeError::NoKey {
            self.skipped_no_key += 1;
            return false;
        }
        self.rejected += 1;
        *self.rejected_by_reason.entry(error.kind().to_string()).or_default() += 1;
        true
    }

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
        format!(
            "records       {}\nevents        {}\nkeys          {}\nalerts        {} ({})\n  detectors   {}\nsuppressed    {} (repeats inside the suppression window)\nrevocations   {}\nrejected      {} ({})\nno api key    {} (skipped)\nlate events   {}\n",
            self.records,
            self.events,
            self.keys,
            self.alerts,
            join(&self.alerts_by_severity),
            join(&self.alerts_by_detector),
            self.suppressed,
            self.revocations,
            self.rejected,
            join(&self.rejected_by_reason),
            self.skipped_no_key,
            self.late_events,
        )
    }
}

impl From<FormatArg> for Format {
    fn from(format: FormatArg) -> Format {
        match format {
            FormatArg::Auto => Format::Auto,
            FormatArg::Canonical => Format::Canonical,
            FormatArg::Cloudtrail => Format::Cloudtrail,
            FormatArg::Mapped => Format::Mapped,
        }
    }
}

/// Replays files through an engine into output files. Events are handed to
/// the engine in micro-batches of `batch_size` records; the outputs do not
/// depend on it.
pub fn replay_files(
    inputs: &[PathBuf],
    decoder: &Decoder,
    engine: &mut Engine,
    batch_size: usize,
    outputs: &mut OutputFiles,
    progress: Option<&ProgressBar>,
) -> Result<ReplaySummary, ReplayError> {
    let mut summary = ReplaySummary::default();
    let mut buffer = Vec::new();
    let mut spans = Vec::new();
    let mut emitted = Vec::new();
    for input in inputs {
        let mut reader = RecordReader::open(input, decoder.max_record_bytes)?;
        let name = reader.name().to_string();
        if let Some(bar) = progress {
            bar.set_message(name.clone());
        }
        while reader.next_batch(&mut buffer, &mut spans, batch_size.max(1))? {
            // Events borrow from this batch's buffer: one allocation per
            // batch, none per event.
            let mut events = Vec::with_capacity(spans.len());
            let mut decoded = Vec::new();
            for span in &spans {
                summary.records += 1;
                let record = &buffer[span.range.clone()];
                if let Some(size) = span.oversized {
                    let error = DecodeError::Oversized {
                        size,
                        limit: decoder.max_record_bytes,
                    };
                    summary.count_decode_error(&error);
                    let source = SourceRef::File {
                        file: name.clone(),
                        line: span.line,
                        index: None,
                    };
                    outputs.write_rejected(&Rejected::new(&error, source, record))?;
                    continue;
                }
                decoded.clear();
                decoder.decode(record, &mut decoded);
                let multi = decoded.len() > 1;
                for (index, result) in decoded.drain(..).enumerate() {
                    match result {
                        Ok(event) => events.push(event),
                        Err(error) => {
                            if summary.count_decode_error(&error) {
                                let source = SourceRef::File {
                                    file: name.clone(),
                                    line: span.line,
                                    index: multi.then_some(index as u32),
                                };
                                outputs.write_rejected(&Rejected::new(&error, source, record))?;
                            }
                        }
                    }
                }
            }
            // A whole CloudTrail document is one record of many events:
            // hand them to the engine in batches too.
            for chunk in events.chunks(batch_size.max(1)) {
                emitted.clear();
                engine.process(chunk, &mut emitted);
                summary.events += chunk.len() as u64;
                for output in &emitted {
                    summary.count_output(output);
                    outputs.write_output(output)?;
                }
            }
            if let Some(bar) = progress {
                bar.set_position(reader.bytes_read);
            }
        }
    }
    outputs.sync()?;
    let stats = engine.stats();
    summary.keys = engine.keys_tracked() as u64;
    summary.suppressed = stats.suppressed;
    summary.late_events = stats.late_events;
    Ok(summary)
}

fn progress_bar(inputs: &[PathBuf], hidden: bool) -> Option<ProgressBar> {
    if hidden || !std::io::stderr().is_terminal() {
        return None;
    }
    let total: u64 = inputs
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Runs the command.
pub fn run_cli(args: &ReplayArgs) -> Result<(), ReplayError> {
    let overrides = Overrides {
        format: args.format.map(Format::from),
        batch_size: args.batch_size,
        ..args.engine.overrides(args.config.clone())
    };
    let runtime = Runtime::load(&overrides)?;
    if args.from_kafka {
        return replay_kafka_cli(args, &runtime);
    }
    if args.input.is_empty() {
        return Err(ReplayError::Usage("give at least one --input file".into()));
    }
    let mut engine = runtime.engine();
    let mut outputs = OutputFiles::create(&args.out)?;
    let bar = progress_bar(&args.input, args.no_progress);
    let started = std::time::Instant::now();
    let summary = replay_files(
        &args.input,
        &runtime.decoder,
        &mut engine,
        runtime.config.input.batch_size,
        &mut outputs,
        bar.as_ref(),
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    write_summary(&args.out, &summary)?;
    let elapsed = started.elapsed().as_secs_f64();
    print!("{}", summary.render());
    println!(
        "took          {elapsed:.1}s ({:.0} events/s)\nwrote         {}/alerts.jsonl, revocations.jsonl, rejected.jsonl, summary.json",
        summary.events as f64 / elapsed.max(1e-9),
        args.out.display()
    );
    Ok(())
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
fn replay_kafka_cli(args: &ReplayArgs, runtime: &Runtime) -> Result<(), ReplayError> {
    let options = crate::replay_kafka::ReplayKafkaOptions {
        start_ms: parse_time(&args.start, "--start")?,
        end_ms: parse_time(&args.end, "--end")?,
        out_dir: args.out.clone(),
        snapshot: args.snapshot.clone(),
        to_topic: args.to_topic.clone(),
        batch_size: runtime.config.input.batch_size,
    };
    let summary = crate::replay_kafka::replay_from_kafka(
        &runtime.config,
        Arc::clone(&runtime.model),
        Arc::clone(&runtime.geo),
        &options,
    )
    .map_err(|err| ReplayError::Kafka(err.to_string()))?;
    println!(
        "partitions    {}\nrecords       {}\nevents        {} ({} in range)\nalerts        {}\nrevocations   {}\nrejected      {}\nno api key    {} (skipped)",
        summary.partitions,
        summary.records,
        summary.events,
        summary.events_in_range,
        summary.alerts,
        summary.revocations,
        summary.rejected,
        summary.no_key
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
        "wrote         {}/alerts.jsonl, revocations.jsonl, rejected.jsonl",
        args.out.display()
    );
    Ok(())
}

/// Writes `summary.json` beside the outputs.
pub fn write_summary(dir: &Path, summary: &ReplaySummary) -> Result<(), SinkError> {
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(summary).unwrap_or_default();
    std::fs::write(&path, text + "\n").map_err(|source| SinkError { path, source })
}
