//! The `keywatch` command line: parse, set up logging and signals, call the
//! library. Each subcommand's options live beside the code that runs it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Catches stolen or misused API keys by how they are used.
#[derive(Parser)]
#[command(name = "keywatch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Load and validate the config, model and GeoIP files a run would use,
    /// without connecting to Kafka; exit 2 naming the file and field on a problem.
    CheckConfig(keywatch::check_config::CheckConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result: anyhow::Result<()> = match cli.command {
        Command::Replay(args) => keywatch::replay::run_cli(&args).map_err(anyhow::Error::from),
        Command::Run(args) => keywatch::pipeline::run_cli(&args).map_err(anyhow::Error::from),
        Command::Generate(args) => keywatch::generate::run_cli(&args).map_err(anyhow::Error::from),
        Command::Eval(args) => keywatch::eval::run_cli(&args).map_err(anyhow::Error::from),
        Command::Demo(args) => keywatch::demo::run_cli(&args).map_err(anyhow::Error::from),
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
