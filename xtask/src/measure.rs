//! What the benchmark measures about a process and the machine: RSS (now
//! and peak, VmHWM: wait4's ru_maxrss would count the spawning parent's
//! memory, which a vfork-style spawn shares until exec), BPF program run
//! time from the program fds' fdinfo (kernel.bpf_stats_enabled), and the
//! network namespace the churn runs in.
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Send SIGINT and reap `child`; its exit code if it exited.
pub fn interrupt_and_reap(child: Child, timeout: Duration) -> anyhow::Result<Option<i32>> {
    let pid = child.id() as libc::pid_t;
    // The Child is not waited on through std: waitpid below reaps it.
    std::mem::forget(child);
    // SAFETY: signalling and reaping our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: reaping our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)));
        }
        if r < 0 {
            bail!("waitpid({pid}): {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("process {pid} did not stop within {timeout:?} of SIGINT");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Run count and run time of one BPF program, or summed over several.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl RunStats {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// The BPF programs a process holds open, by program name (the kernel
/// keeps 15 bytes of it), each program once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BpfStats {
    pub programs: BTreeMap<String, RunStats>,
}

impl BpfStats {
    pub fn total(&self) -> RunStats {
        self.programs
            .values()
            .fold(RunStats::default(), |a, p| RunStats {
                run_cnt: a.run_cnt + p.run_cnt,
                run_time_ns: a.run_time_ns + p.run_time_ns,
            })
    }

    /// What ran between `earlier` and `self`.
    pub fn since(&self, earlier: &BpfStats) -> BpfStats {
        let programs = self
            .programs
            .iter()
            .map(|(name, now)| {
                let was = earlier.programs.get(name).copied().unwrap_or_default();
                let run = RunStats {
                    run_cnt: now.run_cnt.saturating_sub(was.run_cnt),
                    run_time_ns: now.run_time_ns.saturating_sub(was.run_time_ns),
                };
                (name.clone(), run)
            })
            .collect();
        BpfStats { programs }
    }
}

/// The counters of every BPF program `pid` holds a descriptor for. Ids
/// come from the fds' fdinfo, names from the kernel's program list.
pub fn bpf_stats(pid: u32) -> BpfStats {
    let mut ids = HashSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for entry in dir.flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            ids.extend(id);
        }
    }
    let mut stats = BpfStats::default();
    for info in aya::programs::loaded_programs().flatten() {
        if !ids.contains(&info.id()) {
            continue;
        }
        let name = info.name_as_str().unwrap_or("?").to_string();
        let run = stats.programs.entry(name).or_default();
        run.run_cnt += info.run_count();
        run.run_time_ns += info.run_time().as_nanos() as u64;
    }
    stats
}

/// `kernel.bpf_stats_enabled` set for as long as this lives.
pub struct BpfStatsEnabled {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsEnabled {
    pub fn new() -> anyhow::Result<Self> {
        let previous = fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStatsEnabled { previous })
    }
}

impl Drop for BpfStatsEnabled {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.previous.trim());
    }
}

/// VmRSS of `pid` every `every`, until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<(f64, u64)>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((started.elapsed().as_secs_f64(), kib));
                }
                thread::sleep(every);
            }
            samples
        });
        RssSampler { stop, handle }
    }

    /// (seconds since start, KiB) samples.
    pub fn finish(self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak RSS of `pid` so far.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A network namespace with loopback up and a wide ephemeral port range,
/// deleted on drop. The churn and the tracers run inside it, so TIME_WAIT
/// from the bench never touches the host's ports.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let ok = |c: &mut Command| -> anyhow::Result<()> {
            let st = c.status().with_context(|| format!("{c:?}"))?;
            if !st.success() {
                bail!("{c:?}: {st}");
            }
            Ok(())
        };
        ok(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns { name: name.into() };
        ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        ok(ns.exec("sh").args([
            "-c",
            "echo 1024 65535 > /proc/sys/net/ipv4/ip_local_port_range",
        ]))?;
        Ok(ns)
    }

    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One line describing the machine, for the results file and the README.
pub fn machine() -> serde_json::Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpu": cpu,
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "mem_mib": mem_kib / 1024,
        "kernel": kernel.trim(),
    })
}

/// The median of `v` (NaN-free input), or None when empty.
/// The median over rounds of `t`'s rate divided by `base`'s rate in the
/// same round. A round runs every configuration back to back, so a ratio
/// within it cancels the machine's drift between rounds, which a ratio of
/// medians taken across rounds does not. `runs`: (round, config, rate).
pub fn paired_ratio<T: PartialEq + Copy>(runs: &[(usize, T, f64)], t: T, base: T) -> Option<f64> {
    let ratios = runs
        .iter()
        .filter(|r| r.1 == t)
        .filter_map(|&(round, _, rate)| {
            let b = runs.iter().find(|r| r.0 == round && r.1 == base)?.2;
            (b > 0.0).then(|| rate / b)
        })
        .collect();
    median(ratios)
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Mount tracefs where libbpf looks for tracepoint ids, if it is not there.
pub fn ensure_tracefs() -> anyhow::Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let st = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()?;
    if !st.success() {
        bail!("tracefs is not mounted at {TRACEFS} and mounting it failed");
    }
    Ok(())
}

/// The last `bytes` of a file, as text.
pub fn tail(path: &Path, bytes: u64) -> anyhow::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// utime + stime of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: state is
    // field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn paired_ratios_follow_each_rounds_base() {
        // The base drifts from 100 to 50; the traced config is always 90 %
        // of its round's base, which a ratio of medians would not say.
        let runs = [
            (0, 'b', 100.0),
            (0, 't', 90.0),
            (1, 't', 72.0),
            (1, 'b', 80.0),
            (2, 'b', 50.0),
            (2, 't', 45.0),
        ];
        let r = paired_ratio(&runs, 't', 'b').unwrap();
        assert!((r - 0.9).abs() < 1e-9, "{r}");
        assert_eq!(paired_ratio(&runs, 'x', 'b'), None);
        assert_eq!(paired_ratio(&runs[..2], 't', 'm'), None);
    }

    #[test]
    fn own_rss_and_bpf_stats_read() {
        let me = std::process::id();
        let now = rss_kib(me);
        assert!(now.is_some_and(|k| k > 0));
        // Current first: other test threads may grow it between the reads,
        // and the peak only ever rises.
        assert!(peak_rss_kib(me) >= now);
        // This process holds no BPF programs.
        assert_eq!(bpf_stats(me), BpfStats::default());
        assert_eq!(BpfStats::default().total().ns_per_run(), None);
        let run = |run_cnt, run_time_ns| RunStats {
            run_cnt,
            run_time_ns,
        };
        let before = BpfStats {
            programs: [("a".to_string(), run(1, 100)), ("b".to_string(), run(0, 0))].into(),
        };
        let after = BpfStats {
            programs: [
                ("a".to_string(), run(5, 1100)),
                ("b".to_string(), run(2, 60)),
            ]
            .into(),
        };
        let diff = after.since(&before);
        assert_eq!(diff.programs["a"].ns_per_run(), Some(250.0));
        assert_eq!(diff.total(), run(6, 1060));
    }
}
