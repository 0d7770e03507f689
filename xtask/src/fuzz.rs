//! `cargo xtask fuzz`: bounded libFuzzer runs of closetrace's three input
//! boundaries (the ring-buffer decoder, the report reader, argument
//! parsing), after replaying every input that once crashed them.
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

pub const TARGETS: &[&str] = &["decode", "report", "args"];

/// cargo-fuzz from crates.io, once.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (once)");
    crate::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env_remove("RUSTC")
            .env_remove("CARGO"),
    )
}

/// `cargo +nightly fuzz run TARGET DIRS -- ARGS` in fuzz/. The targets
/// depend on closetrace-core alone, so no eBPF object is built (sanitizers
/// cannot build for BPF).
fn fuzz_run(root: &Path, target: &str, dirs: &[&Path], args: &[String]) -> anyhow::Result<()> {
    let mut c = Command::new("rustup");
    c.current_dir(root.join("fuzz"))
        .args(["run", "nightly", "cargo", "fuzz", "run", target])
        .args(dirs)
        .arg("--")
        .args(args)
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    crate::run(&mut c)
}

pub fn run(root: &Path, seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    for target in targets {
        let regressions = root.join("fuzz/regressions").join(target);
        if regressions.is_dir() {
            eprintln!("xtask: fuzz {target}: replaying fuzz/regressions/{target}");
            fuzz_run(root, target, &[&regressions], &["-runs=0".into()])?;
        }
        let corpus = root.join("target/fuzz-corpus").join(target);
        let artifacts = root.join("target/fuzz-artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = root.join("fuzz/seeds").join(target);
        let mut dirs: Vec<&Path> = vec![&corpus];
        if seeds.is_dir() {
            dirs.push(&seeds);
        }
        eprintln!("xtask: fuzz {target}: {seconds} s");
        fuzz_run(
            root,
            target,
            &dirs,
            &[
                format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048".into(),
                "-timeout=10".into(),
                format!("-artifact_prefix={}/", artifacts.display()),
            ],
        )
        .with_context(|| {
            format!(
                "fuzz target {target} found a crash: the input is in {}; copy it to \
                 fuzz/regressions/{target}/ and fix it",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}
