//! Developer tasks. `run` and `test` bootstrap the eBPF toolchain first
//! (scripts/bootstrap, idempotent), so each is one command on a fresh machine.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

mod bench;
mod bench_report;
mod bench_scale;
mod bench_servers;
mod bench_syscalls;
mod deb;
mod demo;
mod fuzz;
mod layers;
mod measure;
mod offsets_rule;
mod soak;
mod vm;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object (release, with BTF) and print where it is.
    BuildEbpf,
    /// Bootstrap, build closetrace (release) and run it; arguments after
    /// `--` go to closetrace. Re-runs itself under sudo when not root.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the kernel tests: on this host, or with --vm inside stock Debian
    /// kernels (6.1, 6.12) booted under qemu.
    IntegrationTest {
        #[arg(long)]
        vm: bool,
    },
    /// Check that no kernel struct offset is hard-coded in the eBPF crate.
    LintOffsets,
    /// Check that imports point one way between the layers (model, kernel,
    /// host, track, output, app) and that no modules import each other.
    LintLayers,
    /// The article's three failures in a namespace, with closetrace beside
    /// them (under 30 s); fails unless each is flagged with its process.
    Demo,
    /// Regenerate deploy/man and deploy/completions from closetrace's clap
    /// definition (a test fails when they are stale).
    Assets,
    /// Build the Debian package (target/deb/closetrace_VERSION_amd64.deb):
    /// the release binary, the systemd unit (installed disabled), its
    /// /etc/default file, man page, completions and alert rules.
    Deb,
    /// Churn with leaks and TIME_WAIT for N minutes beside closetrace;
    /// fails on any loss, a leak unreported, growing RSS or kernel maps
    /// that do not empty (CI: 3 minutes).
    Soak {
        #[arg(long, default_value_t = 3)]
        minutes: u64,
    },
    /// Fuzz the ring-buffer decoder, the report reader and argument
    /// parsing (cargo fuzz, nightly), each for a bounded time, after
    /// replaying fuzz/regressions.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (decode, report, args).
        #[arg(long)]
        target: Option<String>,
    },
    /// Churn and real-server benchmark: no tracer, closetrace (default and --states JSON),
    /// and libbpf-tools tcpstates, side by side. Writes bench/results.json.
    Bench {
        /// CI subset (under 3 minutes): fails on loss at half rate or
        /// unbounded growth; results go to target/bench/quick.json.
        #[arg(long)]
        quick: bool,
        /// Rounds (each tracer once per round); default 5, quick 2.
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds of churn per trial; default 5, quick 3.
        #[arg(long)]
        seconds: Option<u64>,
        /// Where to write the results (JSON; a .md table beside it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only write the .md table again from this results file.
        #[arg(long, value_name = "RESULTS_JSON", conflicts_with_all = ["quick", "rounds", "seconds", "out"])]
        render: Option<PathBuf>,
        /// Only the node-scale run (many namespaces, sockets, TIME_WAIT and
        /// processes), at the quick or full size; results to
        /// target/bench/scale.json.
        #[arg(long)]
        scale_only: bool,
        /// Only the bounded run (5 million connections, 1 million with
        /// --quick, through closetrace with its RSS sampled); results to
        /// target/bench/bounded.json.
        #[arg(long, conflicts_with = "scale_only")]
        bounded_only: bool,
    },
    /// Bootstrap, check formatting and lints, run every test.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The feature that builds closetrace's test and benchmark tools
/// (closetrace-peer, closetrace-churn) and the tests that drive them.
const TESTKIT: &str = "closetrace/testkit";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Bootstrap first: release binaries of the closetrace package into
/// target/release.
fn build_release(bins: &[&str]) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "closetrace",
        "--features",
        "testkit",
    ]);
    for b in bins {
        c.args(["--bin", b]);
    }
    run(&mut c)
}

fn bootstrap() -> anyhow::Result<()> {
    run(&mut Command::new(root().join("scripts/bootstrap")))
}

/// The bootstrap plus the Debian packages the tests drive (Prometheus,
/// Chromium).
fn bootstrap_for_tests() -> anyhow::Result<()> {
    run(Command::new(root().join("scripts/bootstrap")).arg("--test-deps"))
}

/// Build closetrace (whose build script builds the eBPF object) and copy the
/// object out of OUT_DIR to a stable path for inspection (bpftool, objdump).
fn build_ebpf() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "closetrace",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build failed");
    }
    let out_dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "build-script-executed")
        .filter(|m| {
            m["package_id"]
                .as_str()
                .is_some_and(|p| p.contains("/closetrace#"))
        })
        .filter_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .find(|d| d.join("closetrace").is_file())
        .context("cargo did not report closetrace's build output")?;
    let dest = root().join("target/bpf/closetrace.bpf.o");
    std::fs::create_dir_all(dest.parent().expect("parent"))?;
    std::fs::copy(out_dir.join("closetrace"), &dest)?;
    let size = std::fs::metadata(&dest)?.len();
    println!("{} ({size} bytes)", dest.display());
    Ok(dest)
}

/// Run `cargo test`, echoing its output, and close with one total line over
/// every suite (cargo's own last line is that of whichever suite ran last).
fn test(args: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cargo()
        .args(["test", "--no-fail-fast", "--features", TESTKIT])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: not root: the kernel tests skipped themselves (they need to load eBPF)");
    }
    println!("closetrace: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// `ok. 28 passed; 0 failed; ...` -> the number before `word`.
fn count_before(s: &str, word: &str) -> u64 {
    s.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn lint_offsets() -> anyhow::Result<()> {
    let dir = root().join("closetrace-ebpf/src");
    let files = ebpf_sources(&dir).with_context(|| format!("reading {}", dir.display()))?;
    // lib.rs is the host-side stub: no kernel reads, no helper.
    let files: Vec<_> = files
        .into_iter()
        .filter(|(n, _)| !n.ends_with("/lib.rs"))
        .collect();
    let problems = offsets_rule::check_crate(&files);
    if !problems.is_empty() {
        bail!("hard-coded kernel offsets:\n{}", problems.join("\n"));
    }
    println!(
        "xtask: no hard-coded kernel struct offsets in closetrace-ebpf ({} files)",
        files.len()
    );
    Ok(())
}

/// Every .rs file under `dir`, recursively, as (path from the workspace
/// root, source), sorted by path.
fn ebpf_sources(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path
                    .strip_prefix(root())
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.push((name, std::fs::read_to_string(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn lint_layers() -> anyhow::Result<()> {
    let sources = layers::read_sources(&root()).context("reading the sources")?;
    let problems = layers::check(&sources);
    if !problems.is_empty() {
        bail!(
            "imports against the layering (README, Code map):\n{}",
            problems.join("\n")
        );
    }
    println!(
        "xtask: imports point one way across {} modules (closetrace-core, closetrace)",
        sources.len()
    );
    Ok(())
}

/// Lint the eBPF crate for its real target: on the host it would link std.
fn clippy_ebpf() -> anyhow::Result<()> {
    let mut c = Command::new("rustup");
    c.current_dir(root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "closetrace-ebpf",
            "--bins",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        )
        .env_remove("RUSTC")
        .env_remove("CARGO");
    run(&mut c)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => {
            bootstrap()?;
            build_ebpf()?;
        }
        Task::Run { args } => {
            bootstrap()?;
            build_release(&["closetrace"])?;
            let bin = root().join("target/release/closetrace");
            // SAFETY: geteuid has no preconditions.
            let mut cmd = if unsafe { libc::geteuid() } == 0 {
                Command::new(&bin)
            } else {
                eprintln!("xtask: closetrace needs root to load eBPF; running it with sudo");
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            let status = cmd.args(&args).status().context("starting closetrace")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::LintOffsets => lint_offsets()?,
        Task::LintLayers => lint_layers()?,
        Task::Fuzz { seconds, target } => {
            bootstrap()?;
            fuzz::run(&root(), seconds, target.as_deref())?;
        }
        Task::Soak { minutes } => {
            bootstrap()?;
            build_release(&["closetrace", "closetrace-churn"])?;
            soak::run(&root(), minutes)?;
        }
        Task::Assets => {
            run(cargo().args(["build", "-p", "closetrace", "--bin", "closetrace"]))?;
            run(Command::new(root().join("target/debug/closetrace"))
                .arg("generate-assets")
                .arg(root().join("deploy")))?;
        }
        Task::Deb => {
            bootstrap()?;
            build_release(&["closetrace"])?;
            deb::build(&root())?;
        }
        Task::Demo => {
            bootstrap()?;
            build_release(&["closetrace", "closetrace-peer"])?;
            demo::run(&root())?;
        }
        Task::Bench {
            render: Some(results),
            ..
        } => bench_report::render(&results)?,
        Task::Bench {
            quick,
            rounds,
            seconds,
            out,
            render: None,
            scale_only,
            bounded_only,
        } => {
            bootstrap()?;
            build_release(&["closetrace", "closetrace-churn"])?;
            bench::run(
                &root(),
                &bench::Options {
                    quick,
                    rounds,
                    seconds,
                    out,
                    scale_only,
                    bounded_only,
                },
            )?;
        }
        Task::IntegrationTest { vm: true } => {
            bootstrap()?;
            vm::run(&root())?;
        }
        Task::IntegrationTest { vm: false } => {
            bootstrap()?;
            let kernel_tests = [
                "--test",
                "state_stream",
                "--test",
                "leaks",
                "--test",
                "ports",
            ];
            run(cargo()
                .args(["test", "-p", "closetrace", "--features", "testkit"])
                .args(kernel_tests))?;
        }
        Task::Test { args } => {
            bootstrap_for_tests()?;
            lint_offsets()?;
            lint_layers()?;
            run(cargo().args(["fmt", "--all", "--check"]))?;
            run(cargo()
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "closetrace-ebpf",
                    "--all-targets",
                    "--features",
                    TESTKIT,
                ])
                .args(["--", "-D", "warnings"]))?;
            clippy_ebpf()?;
            // tests/package.rs installs the package this builds.
            build_release(&["closetrace"])?;
            deb::build(&root())?;
            // Default members: the eBPF crate only builds for the BPF target.
            test(&args)?;
        }
    }
    Ok(())
}
