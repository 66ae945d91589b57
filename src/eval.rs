//! Scores an alert file against labelled incidents.

/// Command-line options.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {}

/// Why the command could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Other(String),
}

/// Runs the command.
pub fn run_cli(args: &EvalArgs) -> Result<(), EvalError> {
    let _ = args;
    Err(EvalError::Other("not yet built".into()))
}
