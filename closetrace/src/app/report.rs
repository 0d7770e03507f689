//! `closetrace report`: no kernel, no privileges.
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use closetrace_core::output::{report, text};

use super::UsageError;

/// Malformed lines named one by one; past this, only counted.
const MALFORMED_SHOWN: usize = 20;

pub fn run(file: &Path, html: Option<&Path>) -> anyhow::Result<()> {
    let source = file.display().to_string();
    let report = if source == "-" {
        report::Report::read(io::stdin().lock())
    } else {
        let f = File::open(file).map_err(|e| UsageError(format!("cannot read {source}: {e}")))?;
        report::Report::read(io::BufReader::new(f))
    }
    .with_context(|| format!("reading {source}"))?;
    for (n, why) in report.malformed.iter().take(MALFORMED_SHOWN) {
        eprintln!(
            "closetrace: {}: line {n}: {} (skipped)",
            text::printable(&source),
            text::printable(why)
        );
    }
    if report.malformed.len() > MALFORMED_SHOWN {
        eprintln!(
            "closetrace: ... and {} more malformed lines",
            report.malformed.len() - MALFORMED_SHOWN
        );
    }
    let mut out = io::stdout().lock();
    out.write_all(report.to_text(&source).as_bytes())
        .context("writing the report")?;
    if let Some(path) = html {
        fs::write(path, report::render_html(&report, &source))
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "\nHTML report with charts: {}", path.display())
            .context("writing the report")?;
    }
    Ok(())
}
