//! closetrace: live TCP teardown tracing with socket owners.
//!
//! Exit codes: 0 on a clean stop (Ctrl-C, SIGTERM, `--duration`), 2 for bad
//! arguments (including a `--pid` that does not exist), 1 for anything else
//! (privileges, kernel support, output failures).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use closetrace::cli::{self, Cli};
use closetrace::clock::WallClock;
use closetrace::loader::{CloseHook, LoadOptions};
use closetrace::monitor::{Monitor, Settings};
use closetrace::records::{Ready, SCHEMA_VERSION};
use closetrace::sink::Sink;
use closetrace::snapshot::KernelView;
use closetrace::{
    cgroups, clock, filters, loader, metrics, pipeline, privileges, procs, records, report, sink,
    snapshot,
};

/// Bad input from the command line: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(cli::Command::Report { file, html }) => run_report(file, html.as_deref()),
        Some(cli::Command::GenerateAssets { dir }) => write_assets(dir),
        None => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("closetrace: error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn write_assets(dir: &std::path::Path) -> anyhow::Result<()> {
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

/// The kernel's hooks name processes by their pids in the initial PID
/// namespace; /proc must number them the same, or names, holders, start
/// times and `--pid` would all be another process's.
fn host_pids() -> anyhow::Result<()> {
    match procs::proc_pid_ns() {
        Some(ns) if ns != procs::INIT_PID_NS => anyhow::bail!(
            "/proc shows the processes of a PID namespace (pid:[{ns}]), not the host's: the \
             kernel names processes by their host pids, so names, fd holders and --pid would \
             not match. Run closetrace in the host's PID namespace (docker run --pid=host, \
             Kubernetes hostPID: true)"
        ),
        _ => Ok(()),
    }
}

/// `closetrace report`: no kernel, no privileges.
fn run_report(file: &std::path::Path, html: Option<&std::path::Path>) -> anyhow::Result<()> {
    let source = file.display().to_string();
    let report = if source == "-" {
        report::Report::read(io::stdin().lock())
    } else {
        let f = File::open(file).map_err(|e| UsageError(format!("cannot read {source}: {e}")))?;
        report::Report::read(io::BufReader::new(f))
    }
    .with_context(|| format!("reading {source}"))?;
    for (n, why) in report.malformed.iter().take(20) {
        eprintln!(
            "closetrace: {}: line {n}: {} (skipped)",
            sink::printable(&source),
            sink::printable(why)
        );
    }
    if report.malformed.len() > 20 {
        eprintln!(
            "closetrace: ... and {} more malformed lines",
            report.malformed.len() - 20
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

/// `--pid` values as process ids: threads map to their process, and a pid
/// that does not exist is refused before anything is loaded.
fn resolve_pids(pids: &[u32], flag: &str) -> Result<Vec<u32>, UsageError> {
    let mut out = Vec::new();
    for &pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|_| UsageError(format!("{flag} {pid}: no such process")))?;
        let tgid = status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| UsageError(format!("{flag} {pid}: cannot read its process id")))?;
        if tgid != pid {
            eprintln!("closetrace: {flag} {pid} is a thread of process {tgid}; following {tgid}");
        }
        if !out.contains(&tgid) {
            out.push(tgid);
        }
    }
    Ok(out)
}

fn open_output(cli: &Cli) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match &cli.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout())),
    })
}

/// What `--pid`, `--pid-tree`, `--netns` and `--cgroup` select.
struct Selection {
    /// `--pid` processes and, with `--pid-tree`, the trees as they are now.
    pids: Vec<u32>,
    roots: Vec<u32>,
    netns: u32,
    cgroup: Option<(std::path::PathBuf, Vec<u64>)>,
}

fn select(cli: &Cli) -> Result<Selection, UsageError> {
    let fixed = resolve_pids(&cli.pids, "--pid")?;
    let roots = resolve_pids(&cli.pid_trees, "--pid-tree")?;
    let tree = filters::process_tree(&roots).map_err(|e| UsageError(e.to_string()))?;
    let mut pids = fixed;
    pids.extend(tree);
    pids.sort_unstable();
    pids.dedup();
    let netns = match &cli.netns {
        Some(arg) => filters::resolve_netns(arg).map_err(|e| UsageError(e.to_string()))?,
        None => 0,
    };
    let cgroup = match &cli.cgroup {
        Some(arg) => {
            let dir = cgroups::resolve_arg(arg).map_err(|e| UsageError(e.to_string()))?;
            let ids = cgroups::subtree_ids(&dir);
            Some((dir, ids))
        }
        None => None,
    };
    Ok(Selection {
        pids,
        roots,
        netns,
        cgroup,
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    host_pids()?;
    let sel = select(&cli)?;
    let pids = sel.pids.clone();
    loader::preflight()?;
    // Bound before anything is loaded: a busy or foreign address fails now.
    let metrics_listener = match cli.metrics {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
            l.set_nonblocking(true).context("--metrics socket")?;
            Some(l)
        }
        None => None,
    };
    let out = open_output(&cli)?;
    if let Some(note) = loader::ensure_tracefs() {
        eprintln!("closetrace: {note}");
    }
    // The namespace sock_diag and the port sysctls describe.
    let netns = snapshot::own_netns().unwrap_or(0);
    // sock_diag can be missing (tcp_diag is a module on distribution
    // kernels, and may be absent): trace anyway, and say what that costs.
    let (view, diag) = match KernelView::take(snapshot::states::HELD) {
        Ok(v) => (
            v,
            records::HookReport {
                hook: "sock_diag".into(),
                attach: "netlink".into(),
                status: "ok",
                reason: None,
            },
        ),
        Err(e) => (
            KernelView::empty(),
            records::HookReport {
                hook: "sock_diag".into(),
                attach: "none".into(),
                status: "unavailable",
                reason: Some(format!(
                    "{e} (load the tcp_diag module); sockets older than closetrace get no owner \
                     until they act, and leak holders, recv_q and TIME_WAIT reconciliation are \
                     unavailable"
                )),
            },
        ),
    };
    // Default mode with sock_diag: CLOSE_WAIT sockets here are found by
    // scanning, so a prompt close costs no record (see CloseWaitKernel).
    // With --netns elsewhere or --cgroup, CLOSE_WAIT sockets come from
    // events, which the kernel filters; the scan could not.
    let scan = !cli.states
        && diag.status == "ok"
        && netns != 0
        && (sel.netns == 0 || sel.netns == netns)
        && sel.cgroup.is_none();
    let mut kernel = loader::load(&LoadOptions {
        pids: &pids,
        ring_bytes: cli.ring_bytes(),
        close_hook: cli.close_hook,
        stream_all: cli.states,
        scan_netns: if scan { netns } else { 0 },
        netns: sel.netns,
        cgroups: sel.cgroup.as_ref().map(|(_, ids)| ids.as_slice()),
        follow_forks: !sel.roots.is_empty(),
    })?;
    let mut pids = pids;
    if let Some(map) = kernel.pids.as_mut() {
        // Children forked between the first walk and the fork hook.
        for pid in filters::process_tree(&sel.roots).unwrap_or_default() {
            if !pids.contains(&pid) {
                map.insert(pid, 1, 0)
                    .context("adding to the followed processes")?;
                pids.push(pid);
            }
        }
    }
    kernel.hooks.push(diag);
    let clock = WallClock::sample();
    let threshold = cli.close_wait_threshold;
    let mut monitor = Monitor::new(
        Settings {
            threshold_ns: threshold.as_nanos().min(u64::MAX as u128) as u64,
            tw_warn: cli.tw_warn,
            pids: pids.clone(),
            infer_closes: kernel.close_hook == CloseHook::Transitions,
            stream_all: cli.states,
            own_netns: netns,
        },
        clock,
    );
    let seeded = loader::seed_existing(&mut kernel, monitor.table_mut(), &view, netns)?;
    if scan {
        // The first tick's scan finds the CLOSE_WAIT sockets already here.
        monitor.scan_close_wait_with(Box::new(loader::CloseWaitMaps::take(&mut kernel.ebpf)?));
    } else {
        let cgroup_ids: Option<std::collections::HashSet<u64>> = sel
            .cgroup
            .as_ref()
            .map(|(_, ids)| ids.iter().copied().collect());
        let keep = |s: &snapshot::DiagSocket| {
            (sel.netns == 0 || sel.netns == netns)
                && cgroup_ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&s.cgroup))
        };
        monitor.seed_leaks(&view, clock::monotonic_ns(), &keep);
    }
    if kernel.pids.is_some() || kernel.cgroups.is_some() {
        let mut upkeep = filters::Upkeep::new(
            kernel.pids.take(),
            sel.cgroup
                .as_ref()
                .map(|(dir, _)| dir.clone())
                .zip(kernel.cgroups.take()),
        );
        monitor.follow_with(Box::new(move || upkeep.refresh()));
    }
    drop(view);
    // Start-up parsed the kernel's BTF twice and listed every socket: hand
    // that memory back rather than keep it resident for the whole run.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }

    // Everything is loaded and attached: keep only what naming leak
    // holders needs.
    let privileges = match privileges::drop_after_attach() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("closetrace: warning: {e}; running with the capabilities it started with");
            None
        }
    };
    let color = cli.color.enabled(cli.output.is_none());
    let mut sink = Sink::new(cli.format, out, clock, color);
    sink.ready(&Ready {
        kind: "ready",
        version: SCHEMA_VERSION,
        closetrace: env!("CARGO_PKG_VERSION"),
        hooks: &kernel.hooks,
        pids: &pids,
        snapshot_sockets: seeded,
        close_wait_threshold_ms: threshold.as_millis().min(u64::MAX as u128) as u64,
        mode: if cli.states { "states" } else { "findings" },
        pid_tree: &sel.roots,
        privileges: privileges.as_ref(),
        netns: (sel.netns != 0).then_some(sel.netns),
        cgroup: sel.cgroup.as_ref().map(|(dir, _)| {
            let root = cgroups::cgroup2_root().unwrap_or_default();
            format!("/{}", dir.strip_prefix(&root).unwrap_or(dir).display())
        }),
    })
    .and_then(|()| sink.flush())
    .context("writing output")?;
    // Leaks are checked a few times per threshold, at most once per second.
    let tick = (threshold / 4).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(1),
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let loader::Kernel {
        ebpf,
        events,
        lost,
        transitions,
        hooks,
        ..
    } = kernel;
    let metrics = metrics_listener
        .as_ref()
        .map(|_| std::rc::Rc::new(std::cell::RefCell::new(metrics::Metrics::new(&hooks))));
    monitor.metrics = metrics.clone();
    let result = runtime.block_on(async {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let exporter = async {
            let (Some(std_listener), Some(metrics)) = (metrics_listener, metrics.as_ref()) else {
                return;
            };
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("closetrace: warning: --metrics: {e}; not serving metrics");
                    return;
                }
            };
            let mut stop = stop_tx.subscribe();
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        let Ok((stream, _)) = conn else { continue };
                        let body = || {
                            let mut m = metrics.borrow_mut();
                            m.update_kernel(
                                &pipeline::transition_counts(&transitions),
                                pipeline::lost_count(&lost, closetrace_common::LOST_RINGBUF),
                            );
                            m.render()
                        };
                        if let Err(e) = metrics::serve_one(stream, body).await {
                            log::debug!("metrics scrape: {e}");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        };
        let trigger = async {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let timeout = async {
                match cli.duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = timeout => {}
                // The pipeline stopped on its own (output failed).
                _ = stop_rx.changed() => {}
            }
            let _ = stop_tx.send(true);
            io::Result::Ok(())
        };
        let pipeline = pipeline::run(events, &lost, &mut monitor, &mut sink, tick, &stop_tx);
        let (signals, result, ()) = tokio::join!(trigger, pipeline, exporter);
        signals.and(result)
    });
    // Detach before reporting, so the summary is final.
    monitor
        .summary
        .kernel_maps
        .extend(loader::map_occupancy(&ebpf));
    drop(ebpf);
    monitor
        .summary
        .set_transitions(pipeline::transition_counts(&transitions));
    monitor.summary.errors_unattributed =
        pipeline::lost_count(&lost, closetrace_common::LOST_CALL_ARGS);
    let summary = &monitor.summary;

    let elapsed = started.elapsed().as_secs_f64();
    eprint!("{}", summary.to_text(elapsed));
    match result.and_then(|()| sink.summary(&summary.to_record(elapsed))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            Err(anyhow!("output closed (broken pipe); stopped tracing"))
        }
        Err(e) => Err(anyhow!(e).context("writing output")),
    }
}
