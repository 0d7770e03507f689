//! closetrace: live TCP teardown tracing with socket owners.
//!
//! Exit codes: 0 on a clean stop (Ctrl-C, SIGTERM, `--duration`), 2 for bad
//! arguments (including a `--pid` that does not exist), 1 for anything else
//! (privileges, kernel support, output failures).
mod app;
mod kernel;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use closetrace_core::app::cli::{self, Cli};

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(cli::Command::Report { file, html }) => app::report::run(file, html.as_deref()),
        Some(cli::Command::GenerateAssets { dir }) => app::assets::write(dir),
        None => app::run::run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("closetrace: error: {e:#}");
            if e.downcast_ref::<app::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Library code reports through `log`; here, at the edge, is where a user
/// sees it: closetrace's own notes and warnings as `closetrace: ...` lines
/// on stderr, other crates' only when they warn. `RUST_LOG` overrides.
fn init_logging() {
    let default = "warn,closetrace=info,closetrace_core=info";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|f, record| match record.level() {
            log::Level::Error => writeln!(f, "closetrace: error: {}", record.args()),
            log::Level::Warn => writeln!(f, "closetrace: warning: {}", record.args()),
            log::Level::Info => writeln!(f, "closetrace: {}", record.args()),
            _ => writeln!(f, "closetrace: {}: {}", record.target(), record.args()),
        })
        .init();
}
