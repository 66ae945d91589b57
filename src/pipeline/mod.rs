//! Drives the engine from Kafka.

/// Command-line options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

/// Why the command could not run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Other(String),
}

/// Runs the command.
pub fn run_cli(args: &RunArgs) -> Result<(), PipelineError> {
    let _ = args;
    Err(PipelineError::Other("not yet built".into()))
}
