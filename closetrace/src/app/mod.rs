//! The commands: tracing (`run`, in named phases), `report`, and writing
//! the generated assets. The only layer that sees every other one.
pub mod assets;
pub mod host;
pub mod report;
pub mod run;
pub mod select;

/// Bad input from the command line: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
pub mod trace;
