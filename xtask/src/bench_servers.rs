//! Real servers driven by real clients, from Debian: redis-server under
//! redis-benchmark and nginx under wrk, on loopback in the bench's
//! namespace, each kept-alive and with a new connection per request. The
//! same tracers as the churn bench run round by round in a rotated order;
//! results are medians of requests per second, and ratios to untraced.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::programs_json;
use crate::bench::{Baseline, Bins, Tracer, Trial, settle, start_tracer};
use crate::measure::{BpfStatsEnabled, Netns, median, paired_ratio};

const NETNS: &str = "closetrace-bench-srv";
const PORT: u16 = 16379;
const PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Redis,
    Nginx,
}

/// One server under one client load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub name: &'static str,
    pub server: Server,
    /// A new connection per request (else 50 kept-alive connections).
    pub per_request: bool,
}

pub const LOADS: &[Load] = &[
    Load {
        name: "redis GET/SET, 50 kept-alive connections",
        server: Server::Redis,
        per_request: false,
    },
    Load {
        name: "redis, a new connection per request",
        server: Server::Redis,
        per_request: true,
    },
    Load {
        name: "nginx, keep-alive",
        server: Server::Nginx,
        per_request: false,
    },
    Load {
        name: "nginx, Connection: close",
        server: Server::Nginx,
        per_request: true,
    },
];

/// Install what the loads need from Debian, when missing.
pub fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {} from Debian", missing.join(" "));
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("could not install {}", missing.join(" "));
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// One run of a load: requests per second, and what the tracer cost.
#[derive(Debug, Default, Clone)]
pub struct ServerTrial {
    pub req_per_s: f64,
    pub trial: Trial,
}

/// The server, running in `ns` until dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(ns: &Netns, server: Server, scratch: &Path) -> anyhow::Result<Running> {
    let child = match server {
        Server::Redis => ns
            .exec("redis-server")
            .args(["--port", &PORT.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
        Server::Nginx => {
            let dir = scratch.join("nginx");
            fs::create_dir_all(&dir)?;
            let conf = dir.join("nginx.conf");
            fs::write(
                &conf,
                format!(
                    // One process, so killing it ends nginx: a master's
                    // worker would outlive it, holding its namespace.
                    "daemon off; master_process off; pid {d}/nginx.pid; error_log stderr;\n\
                     events {{ worker_connections 4096; }}\n\
                     http {{ access_log off; client_body_temp_path {d}/body;\n\
                     keepalive_requests 1000000;\n\
                     server {{ listen 127.0.0.1:{PORT}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
                    d = dir.display()
                ),
            )?;
            ns.exec("nginx")
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting nginx")?
        }
    };
    let running = Running(child);
    wait_listening(ns)?;
    Ok(running)
}

/// Until something accepts on PORT in `ns`.
fn wait_listening(ns: &Netns) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ok = ns
            .exec("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{PORT}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("the server never listened on {PORT}")
}

/// The client's run; its requests per second.
fn drive(ns: &Netns, load: &Load, seconds: u64) -> anyhow::Result<f64> {
    let out = match load.server {
        Server::Redis => {
            let mut c = ns.exec("redis-benchmark");
            c.args(["-h", "127.0.0.1", "-p", &PORT.to_string(), "-t", "get,set"])
                .args(["-c", "50", "--csv"]);
            // Sized to run about `seconds` here: keep-alive serves ~10x more.
            let n = if load.per_request {
                c.args(["-k", "0"]);
                6_000 * seconds
            } else {
                60_000 * seconds
            };
            c.args(["-n", &n.to_string()]);
            c.output().context("running redis-benchmark")?
        }
        Server::Nginx => {
            let mut c = ns.exec("wrk");
            c.args(["-t", "2", "-c", "50", "-d", &format!("{seconds}s")]);
            if load.per_request {
                c.args(["-H", "Connection: close"]);
            }
            c.arg(format!("http://127.0.0.1:{PORT}/"));
            c.output().context("running wrk")?
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} client failed: {text}", load.name);
    }
    match load.server {
        Server::Redis => redis_rps(&text),
        Server::Nginx => wrk_rps(&text),
    }
    .with_context(|| format!("no rate in the {} client's output: {text}", load.name))
}

/// redis-benchmark --csv: `"test","rps",...` lines; the mean of GET and SET.
fn redis_rps(csv: &str) -> Option<f64> {
    let rates: Vec<f64> = csv
        .lines()
        .filter(|l| l.starts_with("\"GET\"") || l.starts_with("\"SET\""))
        .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
        .collect();
    (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
}

/// wrk: `Requests/sec:  12345.67`.
fn wrk_rps(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One load under one tracer, in a fresh namespace.
pub fn trial(
    bins: &Bins,
    scratch: &Path,
    tracer: Tracer,
    load: &Load,
    seconds: u64,
    want_bpf: bool,
) -> anyhow::Result<ServerTrial> {
    let ns = &Netns::new(NETNS)?;
    let _server = start_server(ns, load.server, scratch)?;
    let running = start_tracer(ns, bins, scratch, tracer, &[])?;
    let base = Baseline::take(running.as_ref());
    let req_per_s = drive(ns, load, seconds)?;
    let mut trial = Trial::default();
    settle(tracer, running, base, want_bpf, &mut trial)?;
    Ok(ServerTrial { req_per_s, trial })
}

/// Every tracer once per round (rotated), then one run each with BPF
/// statistics on: medians, ratios to untraced, BPF ns per program run.
pub fn load(
    bins: &Bins,
    scratch: &Path,
    tracers: &[Tracer],
    load: &Load,
    rounds: usize,
    seconds: u64,
) -> anyhow::Result<Value> {
    eprintln!("bench: {}: {rounds} rounds of {seconds} s", load.name);
    let mut runs: Vec<(usize, Tracer, f64)> = Vec::new();
    for round in 0..rounds {
        for i in 0..tracers.len() {
            let t = tracers[(i + round) % tracers.len()];
            let r = trial(bins, scratch, t, load, seconds, false)?;
            eprintln!(
                "bench:   round {} {:<36} {:>9.0} req/s",
                round + 1,
                t.name(),
                r.req_per_s
            );
            runs.push((round, t, r.req_per_s));
        }
    }
    let rate_of = |t: Tracer| median(runs.iter().filter(|r| r.1 == t).map(|r| r.2).collect());
    let untraced = rate_of(Tracer::Untraced).context("no untraced run")?;
    let mut rows = Vec::new();
    for &t in tracers {
        let rate = rate_of(t).unwrap_or(0.0);
        let cost = if t == Tracer::Untraced {
            None
        } else {
            let _stats = BpfStatsEnabled::new()?;
            Some(trial(bins, scratch, t, load, seconds, true)?)
        };
        let bpf = cost.as_ref().and_then(|c| c.trial.bpf.clone());
        let reqs = cost.as_ref().map_or(0.0, |c| c.req_per_s) * seconds as f64;
        rows.push(json!({
            "tracer": t.name(),
            "req_per_s": rate.round(),
            "ratio": paired_ratio(&runs, t, Tracer::Untraced).map(|r| (r * 1000.0).round() / 1000.0),
            "req_per_s_by_round": runs.iter().filter(|r| r.1 == t).map(|r| r.2.round()).collect::<Vec<_>>(),
            "bpf_ns_per_run": bpf.as_ref().and_then(|b| b.total().ns_per_run()).map(f64::round),
            "bpf_runs_per_req": bpf.as_ref().map(|b| {
                ((b.total().run_cnt as f64 / reqs.max(1.0)) * 100.0).round() / 100.0
            }),
            "bpf_programs": bpf.as_ref().map(|b| programs_json(b, reqs)),
            "cpu_s": cost.as_ref().and_then(|c| c.trial.cpu_s).map(|c| (c * 100.0).round() / 100.0),
        }));
    }
    Ok(json!({
        "load": load.name,
        "untraced_req_per_s": untraced.round(),
        "results": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_rates_are_read() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"100000.00\",\"0.2\"\n\"GET\",\"120000.00\",\"0.2\"\n";
        assert_eq!(redis_rps(csv), Some(110_000.0));
        assert_eq!(redis_rps("nothing"), None);
        let wrk = "Running 5s test\n  2 threads\nRequests/sec:  45678.90\nTransfer/sec: 6MB\n";
        assert_eq!(wrk_rps(wrk), Some(45_678.9));
        assert_eq!(wrk_rps("Requests/sec: x"), None);
    }
}
