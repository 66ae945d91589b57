//! generate

/// Command-line options.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {}

/// Why the command could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    Other(String),
}

/// Runs the command.
pub fn run_cli(args: &GenerateArgs) -> Result<(), GenerateError> {
    let _ = args;
    Err(GenerateError::Other("not yet built".into()))
}
