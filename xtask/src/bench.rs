//! `cargo xtask bench`: closetrace side by side with no tracer and with
//! libbpf-tools `tcpstates`, under loopback churn from closetrace-churn in a
//! network namespace the bench makes.
//!
//! Each round runs every tracer once, in an order rotated per round so that
//! drift (thermal, noisy neighbours) spreads over all of them; results are
//! medians over rounds. BPF run time is taken in separate trials with
//! kernel.bpf_stats_enabled=1, so its own cost does not skew throughput.
//! Then each tracer runs at half the untraced rate (where nothing may be
//! lost), and closetrace runs once through a long churn with leaks while
//! its RSS is sampled (where nothing may grow without bound).
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench_report::markdown;
use crate::measure::{
    BpfStats, BpfStatsEnabled, Netns, RssSampler, bpf_stats, cpu_seconds, ensure_tracefs,
    interrupt_and_reap, machine, median, paired_ratio, peak_rss_kib, tail,
};
use crate::{bench_scale, bench_servers, bench_syscalls};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tracer {
    Untraced,
    /// closetrace with no flags: the leak-hunting default.
    Default,
    /// closetrace --states: every state change as JSON lines to a file.
    Json,
    Tcpstates,
}

impl Tracer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tracer::Untraced => "untraced",
            Tracer::Default => "closetrace (default)",
            Tracer::Json => "closetrace --states (JSON to file)",
            Tracer::Tcpstates => "tcpstates (to file)",
        }
    }

    fn is_closetrace(self) -> bool {
        matches!(self, Tracer::Default | Tracer::Json)
    }
}

struct Workload {
    name: &'static str,
    churn: &'static [&'static str],
}

const RST: Workload = Workload {
    name: "rst",
    churn: &["--mode", "rst"],
};
/// Client-first close (TIME_WAIT on the client) with one connection in a
/// thousand leaked in CLOSE_WAIT: every table closetrace keeps is busy.
const CLIENT_CLOSE_LEAKY: Workload = Workload {
    name: "client-close, 0.1% leaked",
    churn: &["--mode", "client-close", "--leak-every", "1000"],
};

const NETNS: &str = "closetrace-bench";

pub struct Options {
    pub quick: bool,
    pub rounds: Option<usize>,
    pub seconds: Option<u64>,
    pub out: Option<PathBuf>,
    /// Only the node-scale run.
    pub scale_only: bool,
    /// Only the bounded run.
    pub bounded_only: bool,
}

pub(crate) struct Bins {
    pub closetrace: PathBuf,
    pub churn: PathBuf,
    pub tcpstates: Option<PathBuf>,
}

/// A tracer while it runs, and where its output goes.
pub(crate) struct Running {
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Trial {
    conn_per_s: f64,
    connections: u64,
    pub events: Option<u64>,
    pub lost: Option<u64>,
    /// Tracer CPU while the churn ran (user + sys).
    pub cpu_s: Option<f64>,
    pub max_rss_kib: Option<u64>,
    pub bpf: Option<BpfStats>,
    pub summary: Option<Value>,
}

pub fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF and makes a network namespace: run it as root");
    }
    let plan = Plan {
        rounds: opts.rounds.unwrap_or(if opts.quick { 2 } else { 5 }),
        seconds: opts.seconds.unwrap_or(if opts.quick { 3 } else { 5 }),
        bins: Bins {
            closetrace: root.join("target/release/closetrace"),
            churn: root.join("target/release/closetrace-churn"),
            tcpstates: if opts.quick { None } else { find_tcpstates() },
        },
        scratch: root.join("target/bench"),
    };
    let tracers: Vec<Tracer> = [
        Tracer::Untraced,
        Tracer::Default,
        Tracer::Json,
        Tracer::Tcpstates,
    ]
    .into_iter()
    .filter(|t| *t != Tracer::Tcpstates || plan.bins.tcpstates.is_some())
    .collect();
    let workloads: &[Workload] = if opts.quick {
        &[CLIENT_CLOSE_LEAKY]
    } else {
        &[RST, CLIENT_CLOSE_LEAKY]
    };
    fs::create_dir_all(&plan.scratch)?;
    let started = Instant::now();
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    let size = if opts.quick {
        &bench_scale::QUICK
    } else {
        &bench_scale::FULL
    };
    if opts.scale_only {
        let scale = bench_scale::run(&plan.bins, &plan.scratch, size, &mut checks)?;
        let out = opts
            .out
            .clone()
            .unwrap_or_else(|| plan.scratch.join("scale.json"));
        fs::write(&out, serde_json::to_string_pretty(&scale)?)?;
        println!("{}", bench_scale::markdown(&scale));
        return verdict(&checks);
    }
    let connections = if opts.quick { 1_000_000 } else { 5_000_000 };
    if opts.bounded_only {
        let bounded = bounded_run(&plan.bins, &plan.scratch, connections, &mut checks)?;
        let out = opts
            .out
            .clone()
            .unwrap_or_else(|| plan.scratch.join("bounded.json"));
        fs::write(&out, serde_json::to_string_pretty(&bounded)?)?;
        println!("{bounded}");
        return verdict(&checks);
    }
    let mut results = Vec::new();
    for w in workloads {
        results.push(workload(&plan, &tracers, w, &mut checks)?);
    }
    let bounded = bounded_run(&plan.bins, &plan.scratch, connections, &mut checks)?;
    let scale = bench_scale::run(&plan.bins, &plan.scratch, size, &mut checks)?;
    let servers = real_servers(&plan, &tracers, opts.quick)?;
    let syscalls = bench_syscalls::run(&plan.bins, &plan.scratch, plan.rounds)?;
    let report = json!({
        "closetrace": env!("CARGO_PKG_VERSION"),
        "date": today(),
        "machine": machine(),
        "quick": opts.quick,
        "rounds": plan.rounds,
        "seconds_per_trial": plan.seconds,
        "workloads": results,
        "servers": servers,
        "syscalls": syscalls,
        "bounded": bounded,
        "scale": scale,
        "checks": checks.iter().map(|(n, ok, d)| json!({"check": n, "ok": ok, "detail": d})).collect::<Vec<_>>(),
        "bench_seconds": started.elapsed().as_secs(),
    });
    let out = opts.out.clone().unwrap_or_else(|| {
        if opts.quick {
            plan.scratch.join("quick.json")
        } else {
            root.join("bench/results.json")
        }
    });
    write_report(&report, &out)?;
    verdict(&checks)
}

/// The real-server loads (quick: the first, redis kept alive).
fn real_servers(plan: &Plan, tracers: &[Tracer], quick: bool) -> anyhow::Result<Vec<Value>> {
    bench_servers::ensure_packages()?;
    let loads = if quick {
        &bench_servers::LOADS[..1]
    } else {
        bench_servers::LOADS
    };
    loads
        .iter()
        .map(|l| {
            bench_servers::load(
                &plan.bins,
                &plan.scratch,
                tracers,
                l,
                plan.rounds,
                plan.seconds,
            )
        })
        .collect()
}

/// What every trial shares.
struct Plan {
    rounds: usize,
    seconds: u64,
    bins: Bins,
    scratch: PathBuf,
}

/// One workload: every tracer once per round, in a rotating order (the
/// machine's noise then falls on all alike); then, per tracer, a run with
/// BPF statistics and one at half the untraced rate, which must lose
/// nothing.
fn workload(
    plan: &Plan,
    tracers: &[Tracer],
    w: &Workload,
    checks: &mut Vec<(String, bool, String)>,
) -> anyhow::Result<serde_json::Value> {
    let (bins, scratch, seconds) = (&plan.bins, &plan.scratch, plan.seconds);
    eprintln!(
        "bench: workload {}: {} rounds of {seconds} s",
        w.name, plan.rounds
    );
    let mut trials: Vec<(Tracer, Trial)> = Vec::new();
    for round in 0..plan.rounds {
        for i in 0..tracers.len() {
            let t = tracers[(i + round) % tracers.len()];
            let trial = run_trial(bins, scratch, t, w, seconds, None, false)?;
            eprintln!(
                "bench:   round {} {:<36} {:>8.0} conn/s",
                round + 1,
                t.name(),
                trial.conn_per_s
            );
            trials.push((t, trial));
        }
    }
    let untraced = median_of(&trials, Tracer::Untraced, |t| Some(t.conn_per_s))
        .context("no untraced trial")?;
    let by_round: Vec<(usize, Tracer, f64)> = trials
        .iter()
        .enumerate()
        .map(|(i, (t, x))| (i / tracers.len(), *t, x.conn_per_s))
        .collect();
    let mut rows = Vec::new();
    for &t in tracers {
        let (cost, half) = if t == Tracer::Untraced {
            (None, None)
        } else {
            let cost = {
                let _stats = BpfStatsEnabled::new()?;
                run_trial(bins, scratch, t, w, seconds, None, true)?
            };
            let rate = (untraced / 2.0) as u64;
            let half = run_trial(bins, scratch, t, w, seconds, Some(rate), false)?;
            (Some(cost), Some(half))
        };
        if t.is_closetrace() {
            let lost = half.as_ref().and_then(|h| h.lost).unwrap_or(u64::MAX);
            checks.push((
                format!("{}: {} loses nothing at half rate", w.name, t.name()),
                lost == 0,
                format!("lost {lost}"),
            ));
        }
        rows.push(summarize(
            t,
            &trials,
            &by_round,
            cost.as_ref(),
            half.as_ref(),
        ));
    }
    Ok(json!({
        "workload": w.name,
        "churn_args": w.churn,
        "untraced_conn_per_s": untraced.round(),
        "results": rows,
    }))
}

/// The results as JSON at `out` and as a Markdown table beside it.
fn write_report(report: &serde_json::Value, out: &Path) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(out, serde_json::to_string_pretty(report)? + "\n")?;
    let table = markdown(report);
    fs::write(out.with_extension("md"), &table)?;
    println!("{table}");
    println!("bench: results in {}", out.display());
    Ok(())
}

/// Every check, and failure if any failed.
fn verdict(checks: &[(String, bool, String)]) -> anyhow::Result<()> {
    for (name, ok, detail) in checks {
        println!(
            "bench: {} {name} ({detail})",
            if *ok { "ok  " } else { "FAIL" }
        );
    }
    let failed = checks.iter().filter(|c| !c.1).count();
    if failed > 0 {
        bail!("{failed} benchmark check(s) failed");
    }
    Ok(())
}

fn find_tcpstates() -> Option<PathBuf> {
    let known = || {
        ["/usr/sbin/tcpstates", "/usr/bin/tcpstates"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = known() {
        return Some(p);
    }
    eprintln!("bench: tcpstates is missing; installing Debian package libbpf-tools");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "libbpf-tools"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("bench: could not install libbpf-tools; tcpstates left out of the comparison");
    }
    known()
}

#[allow(clippy::too_many_arguments)]
fn run_trial(
    bins: &Bins,
    scratch: &Path,
    tracer: Tracer,
    w: &Workload,
    seconds: u64,
    rate: Option<u64>,
    want_bpf: bool,
) -> anyhow::Result<Trial> {
    // A namespace per trial: each starts without the previous trial's
    // TIME_WAIT sockets (the kernel drops them with the namespace).
    let ns = &Netns::new(NETNS)?;
    let running = start_tracer(ns, bins, scratch, tracer, &[])?;
    let base = Baseline::take(running.as_ref());
    let mut churn = ns.exec(&bins.churn.to_string_lossy());
    churn
        .args(w.churn)
        .args(["--duration", &format!("{seconds}s")]);
    if let Some(r) = rate {
        churn.args(["--rate", &r.to_string()]);
    }
    let churned = run_churn(&mut churn)?;
    let mut trial = Trial {
        conn_per_s: churned["rate"].as_f64().unwrap_or(0.0),
        connections: churned["connections"].as_u64().unwrap_or(0),
        ..Trial::default()
    };
    settle(tracer, running, base, want_bpf, &mut trial)?;
    Ok(trial)
}

/// A tracer's CPU time and BPF counters before a load.
pub(crate) struct Baseline {
    pid: u32,
    cpu_s: Option<f64>,
    bpf: BpfStats,
}

impl Baseline {
    pub(crate) fn take(running: Option<&Running>) -> Option<Baseline> {
        let pid = running?.child.id();
        Some(Baseline {
            pid,
            cpu_s: cpu_seconds(pid),
            bpf: bpf_stats(pid),
        })
    }
}

/// After a load: what the tracer spent on it (CPU, and BPF counters when
/// `want_bpf`), then stop it and read its summary, all into `trial`.
pub(crate) fn settle(
    tracer: Tracer,
    running: Option<Running>,
    base: Option<Baseline>,
    want_bpf: bool,
    trial: &mut Trial,
) -> anyhow::Result<()> {
    let (Some(running), Some(base)) = (running, base) else {
        return Ok(());
    };
    trial.cpu_s = cpu_seconds(base.pid).zip(base.cpu_s).map(|(a, b)| a - b);
    if want_bpf {
        let now = bpf_stats(base.pid);
        trial.bpf = Some(now.since(&base.bpf));
    }
    finish_tracer(tracer, running, trial)
}

pub(crate) fn run_churn(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.output().context("running closetrace-churn")?;
    if !out.status.success() {
        bail!(
            "closetrace-churn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("churn output: {line}"))
}

pub(crate) fn start_tracer(
    ns: &Netns,
    bins: &Bins,
    scratch: &Path,
    tracer: Tracer,
    extra: &[&str],
) -> anyhow::Result<Option<Running>> {
    let stem = match tracer {
        Tracer::Untraced => return Ok(None),
        Tracer::Default => "closetrace",
        Tracer::Json => "closetrace-states",
        Tracer::Tcpstates => "tcpstates",
    };
    let out = scratch.join(format!("{stem}.out"));
    let err = scratch.join(format!("{stem}.err"));
    let _ = fs::remove_file(&out);
    let mut cmd = match tracer {
        Tracer::Tcpstates => {
            // Run in the host's namespaces: it traces every namespace
            // anyway, and `ip netns exec` remounts /sys without tracefs,
            // where libbpf looks for the tracepoint's id.
            ensure_tracefs()?;
            let path = bins.tcpstates.as_ref().context("tcpstates")?;
            let mut c = Command::new(path);
            c.stdout(File::create(&out)?);
            c
        }
        _ => {
            let mut c = ns.exec(&bins.closetrace.to_string_lossy());
            c.args(["--format", "json", "--output"]).arg(&out);
            if tracer == Tracer::Json {
                c.arg("--states");
            }
            c.stdout(Stdio::null());
            c
        }
    };
    cmd.args(extra).stderr(File::create(&err)?);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", tracer.name()))?;
    wait_ready(tracer, Running { child, out, err }).map(Some)
}

/// `r` once it is tracing: closetrace's `ready` record is out (tcpstates
/// says nothing until its first event: it gets two seconds to attach).
pub(crate) fn wait_ready(tracer: Tracer, mut r: Running) -> anyhow::Result<Running> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = r.child.try_wait()? {
            bail!(
                "{} exited early ({st}): {}",
                tracer.name(),
                fs::read_to_string(&r.err).unwrap_or_default()
            );
        }
        let ready = match tracer {
            Tracer::Tcpstates => {
                thread::sleep(Duration::from_secs(2));
                // It must still be running: an attach failure exits.
                if let Some(st) = r.child.try_wait()? {
                    bail!(
                        "tcpstates exited ({st}): {}",
                        fs::read_to_string(&r.err).unwrap_or_default()
                    );
                }
                true
            }
            _ => fs::read_to_string(&r.out).is_ok_and(|t| t.contains("\"type\":\"ready\"")),
        };
        if ready {
            return Ok(r);
        }
        if Instant::now() > deadline {
            let _ = r.child.kill();
            bail!("{} never became ready", tracer.name());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn finish_tracer(tracer: Tracer, r: Running, trial: &mut Trial) -> anyhow::Result<()> {
    trial.max_rss_kib = peak_rss_kib(r.child.id());
    let exit_code = interrupt_and_reap(r.child, Duration::from_secs(60))?;
    let err = fs::read_to_string(&r.err).unwrap_or_default();
    if tracer == Tracer::Tcpstates {
        // A header, then one line per event; perf-buffer losses go to stderr
        // as "lost N events on CPU #C".
        let lines = BufReader::new(File::open(&r.out)?).split(b'\n').count() as u64;
        trial.events = Some(lines.saturating_sub(1));
        trial.lost = Some(
            err.lines()
                .filter_map(|l| {
                    l.strip_prefix("lost ")?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum(),
        );
        return Ok(());
    }
    if exit_code != Some(0) {
        bail!("{} exited with {exit_code:?}: {err}", tracer.name());
    }
    // The summary is the last line; the file can be hundreds of megabytes.
    let out = tail(&r.out, 256 * 1024)?;
    let summary = out
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["type"] == "summary")
        })
        .with_context(|| format!("no summary from {}: {err}", tracer.name()))?;
    trial.events = summary["events"].as_u64();
    trial.lost = summary["lost"].as_u64();
    trial.summary = Some(summary);
    Ok(())
}

fn median_of(
    trials: &[(Tracer, Trial)],
    t: Tracer,
    f: impl Fn(&Trial) -> Option<f64>,
) -> Option<f64> {
    median(
        trials
            .iter()
            .filter(|(k, _)| *k == t)
            .filter_map(|(_, x)| f(x))
            .collect(),
    )
}

fn summarize(
    t: Tracer,
    trials: &[(Tracer, Trial)],
    by_round: &[(usize, Tracer, f64)],
    cost: Option<&Trial>,
    half: Option<&Trial>,
) -> Value {
    let m = |f: &dyn Fn(&Trial) -> Option<f64>| median_of(trials, t, f);
    let rate = m(&|x| Some(x.conn_per_s)).unwrap_or(0.0);
    let events = m(&|x| x.events.map(|e| e as f64));
    let lost = m(&|x| x.lost.map(|e| e as f64));
    let cpu_per_100k = m(&|x| {
        let (cpu, ev) = (x.cpu_s?, x.events?);
        (ev > 0).then(|| cpu / ev as f64 * 100_000.0)
    });
    let round = |v: f64, d: i32| (v * 10f64.powi(d)).round() / 10f64.powi(d);
    json!({
        "tracer": t.name(),
        "conn_per_s": rate.round(),
        "retained": paired_ratio(by_round, t, Tracer::Untraced).map(|r| round(r, 3)),
        "conn_per_s_by_round": by_round.iter().filter(|r| r.1 == t).map(|r| r.2.round()).collect::<Vec<_>>(),
        "events": events.map(f64::round),
        "lost": lost.map(f64::round),
        "lost_pct": events.zip(lost).map(|(e, l)| round(100.0 * l / (e + l).max(1.0), 3)),
        "cpu_s": m(&|x| x.cpu_s).map(|v| round(v, 2)),
        "cpu_s_per_100k_events": cpu_per_100k.map(|v| round(v, 3)),
        "bpf_ns_per_run": cost.and_then(|c| c.bpf.as_ref()?.total().ns_per_run()).map(f64::round),
        "bpf_runs_per_conn": cost.and_then(|c| {
            let b = c.bpf.as_ref()?.total();
            (c.connections > 0).then(|| round(b.run_cnt as f64 / c.connections as f64, 1))
        }),
        "bpf_programs": cost.and_then(|c| Some(programs_json(c.bpf.as_ref()?, c.connections as f64))),
        "peak_rss_mib": m(&|x| x.max_rss_kib.map(|k| k as f64 / 1024.0)).map(|v| round(v, 1)),
        "half_rate": half.map(|h| json!({
            "conn_per_s": h.conn_per_s.round(),
            "events": h.events,
            "lost": h.lost,
        })),
    })
}

/// Each program's ns per run and runs per unit of work (connection or
/// request), the busiest first.
pub(crate) fn programs_json(bpf: &BpfStats, units: f64) -> Value {
    let mut programs: Vec<_> = bpf.programs.iter().filter(|(_, r)| r.run_cnt > 0).collect();
    programs.sort_by_key(|(_, r)| std::cmp::Reverse(r.run_time_ns));
    let rows: Vec<Value> = programs
        .into_iter()
        .map(|(name, r)| {
            json!({
                "program": name,
                "ns_per_run": r.ns_per_run().map(f64::round),
                "runs_per_unit": (units > 0.0).then(|| (r.run_cnt as f64 / units * 100.0).round() / 100.0),
            })
        })
        .collect();
    Value::Array(rows)
}

/// closetrace (default mode, 2 s leak threshold) through `connections`
/// churned with leaks, its RSS sampled: peak and late growth must stay
/// small, nothing may be lost at this rate, and every leak the generator
/// made is reported.
fn bounded_run(
    bins: &Bins,
    scratch: &Path,
    connections: u64,
    checks: &mut Vec<(String, bool, String)>,
) -> anyhow::Result<Value> {
    eprintln!("bench: {connections} connections through closetrace (default mode), RSS sampled");
    let ns = &Netns::new(NETNS)?;
    let running = start_tracer(
        ns,
        bins,
        scratch,
        Tracer::Default,
        &["--close-wait-threshold", "2s"],
    )?
    .context("closetrace")?;
    let pid = running.child.id();
    let sampler = RssSampler::start(pid, Duration::from_millis(500));
    let mut churn = ns.exec(&bins.churn.to_string_lossy());
    churn.args(CLIENT_CLOSE_LEAKY.churn).args([
        "--connections",
        &connections.to_string(),
        "--hold-leaks",
        "4s",
    ]);
    let churned = run_churn(&mut churn)?;
    let samples = sampler.finish();
    let mut trial = Trial::default();
    finish_tracer(Tracer::Default, running, &mut trial)?;
    let peak_mib = trial.max_rss_kib.unwrap_or(0) as f64 / 1024.0;
    // Growth after the first quarter: tables fill early, then must hold.
    let quarter = samples.len() / 4;
    let first = samples.get(quarter).map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let growth_mib = (last as f64 - first as f64) / 1024.0;
    let created = churned["leaks"].as_u64().unwrap_or(0);
    let churn_pid = churned["pid"].as_u64().unwrap_or(0);
    let summary = trial.summary.clone().unwrap_or_default();
    let reported = summary["leaks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["pid"].as_u64() == Some(churn_pid))
        .map(|l| l["leaks"].as_u64().unwrap_or(0))
        .sum::<u64>();
    let lost = trial.lost.unwrap_or(u64::MAX);
    checks.push((
        format!("peak RSS after {connections} connections <= 64 MiB"),
        peak_mib <= 64.0,
        format!("{peak_mib:.1} MiB"),
    ));
    checks.push((
        "RSS does not grow after the first quarter (<= 8 MiB)".into(),
        growth_mib <= 8.0,
        format!("{growth_mib:+.1} MiB"),
    ));
    // This run churns at full rate: the bar there is the full-rate one
    // (under 1 %); the half-rate trials are where nothing may be lost.
    let events = trial.events.unwrap_or(0);
    checks.push((
        "bounded run (full rate): under 1% lost".into(),
        lost.saturating_mul(100) < events.max(1),
        format!("lost {lost}, delivered {events}"),
    ));
    checks.push((
        "bounded run: every leak the generator made is reported".into(),
        reported == created,
        format!("{reported} reported of {created}"),
    ));
    Ok(json!({
        "connections": churned["connections"],
        "conn_per_s": churned["rate"].as_f64().map(f64::round),
        "peak_rss_mib": (peak_mib * 10.0).round() / 10.0,
        "rss_at_end_mib": (last as f64 / 1024.0 * 10.0).round() / 10.0,
        "rss_growth_after_first_quarter_mib": (growth_mib * 10.0).round() / 10.0,
        "events": trial.events,
        "lost": trial.lost,
        "leaks_created": created,
        "leaks_reported": reported,
        "rss_samples_mib": samples.iter().step_by(4).map(|(t, k)| json!([(t * 10.0).round() / 10.0, *k / 1024])).collect::<Vec<_>>(),
    }))
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
