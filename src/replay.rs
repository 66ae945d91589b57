//! Drives the engine from files.

/// Command-line options.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {}

/// Why the command could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Other(String),
}

/// Runs the command.
pub fn run_cli(args: &ReplayArgs) -> Result<(), ReplayError> {
    let _ = args;
    Err(ReplayError::Other("not yet built".into()))
}
