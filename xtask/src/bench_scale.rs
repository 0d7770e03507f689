//! The host worker at node scale: closetrace, run in the host's
//! namespaces, watches many network namespaces full of sockets, a pile of
//! TIME_WAIT sockets and thousands of processes, while a leaky churn runs
//! at a fixed rate. It reports how long each tick's reads took (the
//! summary's `host_scans`), peak RSS, and events lost: a slow scan must
//! delay findings, never lose events.
use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{Bins, Running, Tracer, Trial, finish_tracer, run_churn, wait_ready};
use crate::measure::{Netns, peak_rss_kib};

/// What one scale run sets up.
pub struct Scale {
    pub namespaces: usize,
    pub sockets_per_namespace: usize,
    pub time_wait: u64,
    pub processes: usize,
    pub seconds: u64,
}

pub const FULL: Scale = Scale {
    namespaces: 100,
    sockets_per_namespace: 1000,
    time_wait: 50_000,
    processes: 10_000,
    seconds: 20,
};

/// CI's subset: the same shape, a fifth of the size.
pub const QUICK: Scale = Scale {
    namespaces: 20,
    sockets_per_namespace: 1000,
    time_wait: 10_000,
    processes: 2_000,
    seconds: 8,
};

/// Connections per second of the churn running meanwhile: about half
/// what this machine reaches untraced, where nothing may be lost.
const CHURN_RATE: &str = "10000";

pub fn run(
    bins: &Bins,
    scratch: &Path,
    s: &Scale,
    checks: &mut Vec<(String, bool, String)>,
) -> anyhow::Result<Value> {
    eprintln!(
        "bench: scale: {} namespaces x {} sockets, {} TIME_WAIT, {} processes",
        s.namespaces, s.sockets_per_namespace, s.time_wait, s.processes
    );
    // Forked first: children inherit every descriptor, and 10,000 copies
    // of the held sockets would be another benchmark.
    let sleepers = Children::sleepers(s.processes)?;
    let spaces: Vec<Netns> = (0..s.namespaces)
        .map(|i| Netns::new(&format!("ct-scale-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let held = hold_sockets(&spaces, s.sockets_per_namespace)?;
    let churn_ns = Netns::new("ct-scale-churn")?;
    make_time_wait(bins, &churn_ns, s.time_wait)?;
    let (trial, startup_kib) = trace_while_churning(bins, scratch, &churn_ns, s.seconds)?;
    let startup_mib = startup_kib.unwrap_or(0) as f64 / 1024.0;
    drop(sleepers);
    drop(held);
    let summary = trial.summary.clone().unwrap_or_default();
    let host = &summary["host_scans"];
    let peak_mib = trial.max_rss_kib.unwrap_or(0) as f64 / 1024.0;
    let lost = trial.lost.unwrap_or(u64::MAX);
    let read = host["namespaces"].as_u64().unwrap_or(0);
    checks.push((
        "scale: no event lost while the host is scanned".into(),
        lost == 0,
        format!("lost {lost} of {}", trial.events.unwrap_or(0)),
    ));
    checks.push((
        "scale: every namespace is read".into(),
        read > s.namespaces as u64,
        format!("{read} read, {} made", s.namespaces),
    ));
    checks.push((
        "scale: peak RSS <= 64 MiB".into(),
        peak_mib <= 64.0,
        format!("{peak_mib:.1} MiB"),
    ));
    Ok(json!({
        "namespaces": s.namespaces,
        "sockets_per_namespace": s.sockets_per_namespace,
        "time_wait": s.time_wait,
        "processes": s.processes,
        "seconds": s.seconds,
        "host_scans": host,
        "peak_rss_mib": (peak_mib * 10.0).round() / 10.0,
        "peak_rss_at_ready_mib": (startup_mib * 10.0).round() / 10.0,
        "events": trial.events,
        "lost": trial.lost,
    }))
}

/// `per_namespace` open TCP sockets in each namespace (half client, half
/// server ends of loopback connections), each namespace's held by a process
/// forked for it (one process may not hold them all: RLIMIT_NOFILE).
fn hold_sockets(spaces: &[Netns], per_namespace: usize) -> anyhow::Result<Children> {
    let (rx, tx) = pipe()?;
    let mut holders = Children(Vec::with_capacity(spaces.len()));
    for ns in spaces {
        let path = std::ffi::CString::new(format!("/run/netns/{}", ns.name))?;
        // SAFETY: this process is single-threaded here, so the child may
        // allocate; it only builds sockets, reports, and waits to be killed.
        match unsafe { libc::fork() } {
            -1 => bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                let ok = connections_in(&path, per_namespace / 2);
                let byte = if ok.is_some() { b"y" } else { b"n" };
                // SAFETY: a write to our pipe, then wait for SIGKILL.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    libc::write(tx, byte.as_ptr().cast(), 1);
                    loop {
                        libc::pause();
                    }
                }
            }
            pid => holders.0.push(pid),
        }
    }
    // SAFETY: our copy of the write end; the children keep theirs.
    unsafe { libc::close(tx) };
    for _ in 0..spaces.len() {
        let mut byte = 0u8;
        // SAFETY: reading one byte into a local.
        let n = unsafe { libc::read(rx, (&raw mut byte).cast(), 1) };
        if n != 1 || byte != b'y' {
            bail!("a socket holder failed in its namespace");
        }
    }
    // SAFETY: done with the read end.
    unsafe { libc::close(rx) };
    Ok(holders)
}

fn pipe() -> anyhow::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// In a holder, inside the namespace at `path`: `n` loopback connections,
/// both ends kept open (leaked on purpose: the process is killed).
fn connections_in(path: &std::ffi::CStr, n: usize) -> Option<()> {
    // SAFETY: open and setns on a path we own; this process only.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 || unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    let addr = listener.local_addr().ok()?;
    for _ in 0..n {
        std::mem::forget(TcpStream::connect(addr).ok()?);
        std::mem::forget(listener.accept().ok()?.0);
    }
    std::mem::forget(listener);
    Some(())
}

/// About `n` TIME_WAIT sockets in `ns`: clients that close first.
fn make_time_wait(bins: &Bins, ns: &Netns, n: u64) -> anyhow::Result<()> {
    let mut churn = ns.exec(&bins.churn.to_string_lossy());
    churn.args(["--mode", "client-close", "--connections", &n.to_string()]);
    run_churn(&mut churn).map(|_| ())
}

/// closetrace on the host, default mode (a short leak threshold, so holder
/// walks run too), while a leaky churn runs at `CHURN_RATE` in `ns`.
fn trace_while_churning(
    bins: &Bins,
    scratch: &Path,
    ns: &Netns,
    seconds: u64,
) -> anyhow::Result<(Trial, Option<u64>)> {
    let out = scratch.join("scale.out");
    let err = scratch.join("scale.err");
    let _ = fs::remove_file(&out);
    let child = Command::new(&bins.closetrace)
        .args([
            "--format",
            "json",
            "--close-wait-threshold",
            "2s",
            "--output",
        ])
        .arg(&out)
        .stderr(File::create(&err)?)
        .spawn()
        .context("starting closetrace")?;
    let running: Running = wait_ready(Tracer::Default, Running { child, out, err })?;
    let startup_kib = peak_rss_kib(running.child.id());
    let mut churn = ns.exec(&bins.churn.to_string_lossy());
    churn.args([
        "--mode",
        "client-close",
        "--leak-every",
        "1000",
        "--rate",
        CHURN_RATE,
        "--duration",
        &format!("{seconds}s"),
        "--hold-leaks",
        "3s",
    ]);
    run_churn(&mut churn)?;
    let mut trial = Trial::default();
    finish_tracer(Tracer::Default, running, &mut trial)?;
    Ok((trial, startup_kib))
}

/// Processes forked from here, killed and reaped on drop.
struct Children(Vec<libc::pid_t>);

impl Children {
    /// `n` processes that only wait.
    fn sleepers(n: usize) -> anyhow::Result<Children> {
        let mut pids = Vec::with_capacity(n);
        for _ in 0..n {
            // SAFETY: the child only calls async-signal-safe functions
            // (pause, _exit) before it is killed.
            match unsafe { libc::fork() } {
                -1 => {
                    let e = std::io::Error::last_os_error();
                    drop(Children(pids));
                    bail!("fork: {e}");
                }
                // SAFETY: as above; the parent dying kills it too.
                0 => unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    libc::pause();
                    libc::_exit(0)
                },
                pid => pids.push(pid),
            }
        }
        Ok(Children(pids))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: our own children.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &self.0 {
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

/// The scale figure as a Markdown paragraph.
pub fn markdown(s: &Value) -> String {
    let h = &s["host_scans"];
    format!(
        "\nScale: closetrace on the host while {} namespaces x {} sockets, {} TIME_WAIT sockets \
         and {} extra processes exist, and a leaky churn runs at {} connections/s for {} s: \
         host reads per tick {} ms mean, {} ms max ({} ticks, {} skipped, {} namespaces read); \
         peak RSS {} MiB ({} MiB by the end of start-up); {} events, {} lost.\n",
        s["namespaces"],
        s["sockets_per_namespace"],
        s["time_wait"],
        s["processes"],
        CHURN_RATE,
        s["seconds"],
        h["mean_ms"],
        h["max_ms"],
        h["ticks"],
        h["skipped"],
        h["namespaces"],
        s["peak_rss_mib"],
        s["peak_rss_at_ready_mib"],
        s["events"],
        s["lost"],
    )
}
