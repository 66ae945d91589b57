//! The `keywatch` command line: parse, set up logging and signals, call the
//! library. Each subcommand's options live beside the code that runs it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc for every allocation keywatch makes (librdkafka keeps its own):
/// per-key state is a dozen small blocks, and mimalloc puts no header
/// before each (BENCHMARKS.md: 0.89x the resident bytes per key).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Catches stolen or misused API keys by how they are used.
#[derive(Parser)]
#[command(name = "keywatch", version, about)]
struct Cli {
    /// Log line format on stderr: `text` or `json` (one object a line).
    /// Also `KEYWATCH_LOG_FORMAT`; the filter is `KEYWATCH_LOG`
    /// (default `keywatch=info`).
    #[arg(long, global = true, value_enum, env = "KEYWATCH_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The log filter when `KEYWATCH_LOG` is not set: keywatch's lifecycle
/// (start, group join, assignments, restores, checkpoint summaries,
/// shutdown) at info, other crates' warnings only.
const DEFAULT_LOG_FILTER: &str = "warn,keywatch=info";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Replay access logs from files (or a time range of Kafka) through the
    /// engine and write alerts, revocation requests and rejected records.
    Replay(keywatch::replay::ReplayArgs),
    /// Run as a Kafka stream processor.
    Run(keywatch::pipeline::RunArgs),
    /// Generate labelled synthetic traffic with attacks.
    Generate(keywatch::generate::GenerateArgs),
    /// Score an alert file against labelled incidents.
    Eval(keywatch::eval::EvalArgs),
    /// Run the whole system on generated traffic with an in-process Kafka.
    Demo(keywatch::demo::DemoArgs),
    /// List every key seen (from a replay, a snapshot or the changelog) with
    /// its owner, use and flags; `--stale` lists the keys to retire.
    Keys(keywatch::inventory::KeysArgs),
    /// Load and validate the config, model and GeoIP files a run would use,
    /// without connecting to Kafka; exit 2 naming the file and field on a problem.
    CheckConfig(keywatch::check_config::CheckConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result: anyhow::Result<()> = match cli.command {
        Command::Replay(args) => keywatch::replay::run_cli(&args).map_err(anyhow::Error::from),
        Command::Run(args) => keywatch::pipeline::run_cli(&args).map_err(anyhow::Error::from),
        Command::Generate(args) => keywatch::generate::run_cli(&args).map_err(anyhow::Error::from),
        Command::Eval(args) => keywatch::eval::run_cli(&args).map_err(anyhow::Error::from),
        Command::Demo(args) => keywatch::demo::run_cli(&args).map_err(anyhow::Error::from),
        Command::Keys(args) => keywatch::inventory::run_cli(&args).map_err(anyhow::Error::from),
        Command::CheckConfig(args) => keywatch::check_config::run_cli(&args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keywatch: {err:#}");
            ExitCode::from(2)
        }
    }
}
