//! The whole system in one process.

/// Command-line options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Why the command could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Other(String),
}

/// Runs the command.
pub fn run_cli(args: &DemoArgs) -> Result<(), DemoError> {
    let _ = args;
    Err(DemoError::Other("not yet built".into()))
}
