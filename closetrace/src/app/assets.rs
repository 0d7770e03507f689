//! `closetrace generate-assets DIR`: the man page and completions.
use std::fs;
use std::path::Path;

use anyhow::Context;
use closetrace_core::app::cli;

pub fn write(dir: &Path) -> anyhow::Result<()> {
    for (name, bytes) in cli::assets().context("generating the man page")? {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
