//! `cargo xtask demo`: the article's three failures, reproduced in a network
//! namespace the demo makes, with closetrace (default mode, text view)
//! running beside them:
//!   1. a server whose close handler blocks on a backend that never
//!      answers: a CLOSE_WAIT leak, and its diagnosis naming the backend;
//!   2. a client opening a fresh connection per request: TIME_WAIT pressure,
//!      then connect() failing with EADDRNOTAVAIL;
//!   3. a restart that binds the port the blocked server still holds:
//!      EADDRINUSE.
//!
//! closetrace's output is shown as it comes, then checked: each problem must
//! be flagged with the right process, or the demo fails (CI runs it).
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::measure::{Netns, interrupt_and_reap};

const NETNS: &str = "closetrace-demo";
const SERVER: &str = "127.0.0.1:9501";
const API: &str = "127.0.0.1:9502";
const BACKEND: &str = "127.0.0.1:6379";

pub fn run(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF and makes a network namespace: run it as root");
    }
    let started = Instant::now();
    let stage = Stage {
        bin: root.join("target/release"),
        ns: Netns::new(NETNS)?,
    };
    // 200 ephemeral ports and no tcp_tw_reuse, so ports run out in a second.
    stage.sysctl("net/ipv4/ip_local_port_range", "40000 40199")?;
    stage.sysctl("net/ipv4/tcp_tw_reuse", "0")?;
    say("closetrace runs in the namespace, hunting (leak threshold 2 s)");
    let (tracer, mut lines) = stage.closetrace()?;
    let cast = play(&stage)?;
    // The leak is reported once it is 2 s old.
    lines.wait_for(Duration::from_secs(15), |l| l.contains("CLOSE_WAIT LEAK"));
    let _ = interrupt_and_reap(tracer, Duration::from_secs(30));
    let Cast {
        server: (mut server, _server_out),
        backend: (mut backend, _backend_out),
        api: (mut api, _api_out),
        fpm,
        restart,
    } = cast;
    for c in [&mut server, &mut backend, &mut api] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Let the echo threads print what is left (the summary on stderr).
    thread::sleep(Duration::from_millis(300));
    let missing = judge(&lines.rest(), server.id(), fpm, restart);
    say(&format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    drop(stage);
    if !missing.is_empty() {
        bail!("closetrace did not show: {}", missing.join("; "));
    }
    Ok(())
}

/// The demo's namespace and the binaries it runs there.
struct Stage {
    bin: PathBuf,
    ns: Netns,
}

impl Stage {
    fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let st = self
            .ns
            .exec("sh")
            .args(["-c", "echo \"$1\" > /proc/sys/$2", "_", value, key])
            .status()?;
        if !st.success() {
            bail!("setting {key}");
        }
        Ok(())
    }

    /// closetrace in the namespace, once it is ready; its stdout's lines.
    fn closetrace(&self) -> anyhow::Result<(Child, Lines)> {
        let mut tracer = self
            .ns
            .exec(&self.bin.join("closetrace").to_string_lossy())
            .args(["--close-wait-threshold", "2s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting closetrace")?;
        let lines = Lines::new(lines_of(tracer.stdout.take().context("stdout")?, true));
        let mut errs = Lines::new(lines_of(tracer.stderr.take().context("stderr")?, true));
        errs.wait_for(Duration::from_secs(60), |l| l.contains("Ctrl-C to stop"))
            .context("closetrace never became ready")?;
        Ok((tracer, lines))
    }

    /// A closetrace-peer named `comm`, and its stdout's lines.
    fn peer(&self, comm: &str, args: &[&str]) -> anyhow::Result<(Child, Lines)> {
        let mut c = self
            .ns
            .exec(&self.bin.join("closetrace-peer").to_string_lossy())
            .args(["--comm", comm])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {comm}"))?;
        let out = Lines::new(lines_of(c.stdout.take().context("peer stdout")?, false));
        Ok((c, out))
    }

    /// A peer, once it printed a line starting with `until`, with its
    /// output: the reader must live as long as the peer, or the peer dies
    /// of a closed pipe at its next line.
    fn peer_until(
        &self,
        comm: &str,
        args: &[&str],
        until: &str,
        secs: u64,
    ) -> anyhow::Result<(Child, Lines)> {
        let (child, mut out) = self.peer(comm, args)?;
        out.wait_for(Duration::from_secs(secs), |l| l.starts_with(until))
            .with_context(|| format!("{comm} never printed {until}"))?;
        Ok((child, out))
    }
}

/// The servers still running after the three acts (with their output
/// readers), and the pids the checks name.
struct Cast {
    server: (Child, Lines),
    backend: (Child, Lines),
    api: (Child, Lines),
    fpm: u32,
    restart: u32,
}

/// The article's three failures, one after the other.
fn play(stage: &Stage) -> anyhow::Result<Cast> {
    say("1/3 swoole-server: its close handler waits on a backend that never answers,");
    say("    so the socket stays in CLOSE_WAIT");
    let backend = stage.peer_until(
        "redis",
        &["server", "--listen", BACKEND, "--never-close", "--no-read"],
        "LISTENING",
        10,
    )?;
    let on_close = format!("recv={BACKEND}");
    let server = stage.peer_until(
        "swoole-server",
        &["server", "--listen", SERVER, "--on-close", &on_close],
        "LISTENING",
        10,
    )?;
    let (mut client, _out) =
        stage.peer_until("php-client", &["client", "--connect", SERVER], "DONE", 10)?;
    let _ = client.wait();

    say("2/3 php-fpm opens a fresh connection per request until connect() fails");
    let api = stage.peer_until(
        "api-server",
        &["server", "--listen", API, "--connections", "0"],
        "LISTENING",
        10,
    )?;
    let fpm_args = [
        "client",
        "--connect",
        API,
        "--count",
        "1000",
        "--until-error",
    ];
    let (mut fpm, _out) = stage.peer_until("php-fpm", &fpm_args, "ERROR", 20)?;
    let _ = fpm.wait();

    say("3/3 a restart binds the port swoole-server still holds");
    let (mut restart, _out) =
        stage.peer_until("swoole-restart", &["bind", "--addr", SERVER], "ERROR", 10)?;
    let _ = restart.wait();
    Ok(Cast {
        server,
        backend,
        api,
        fpm: fpm.id(),
        restart: restart.id(),
    })
}

/// What closetrace must have shown, each with the process it names;
/// returns what is missing.
fn judge(seen: &[String], s: u32, f: u32, r: u32) -> Vec<&'static str> {
    let checks = [
        (
            "the CLOSE_WAIT leak, blamed on swoole-server",
            format!("swoole-server({s})"),
            "CLOSE_WAIT LEAK",
        ),
        (
            "... diagnosed: its close handler blocked in recvfrom on the backend",
            format!("-> {BACKEND} ESTABLISHED"),
            "(swoole-server) in recvfrom(",
        ),
        (
            "TIME_WAIT pressure, with php-fpm as the closer",
            format!("php-fpm({f})"),
            "TIME_WAIT pressure",
        ),
        (
            "connect() EADDRNOTAVAIL, hit by php-fpm",
            format!("php-fpm({f})"),
            "connect() EADDRNOTAVAIL",
        ),
        (
            "bind() EADDRINUSE, hit by swoole-restart",
            format!("swoole-restart({r})"),
            "bind() EADDRINUSE",
        ),
        (
            "... naming swoole-server as the holder",
            format!("swoole-server({s})"),
            "bind() EADDRINUSE",
        ),
    ];
    let mut missing = Vec::new();
    for (what, who, kind) in checks {
        let ok = seen
            .iter()
            .any(|l| l.contains(kind) && l.contains(who.as_str()));
        say(&format!("{} {what}", if ok { "ok  " } else { "MISSING" }));
        if !ok {
            missing.push(what);
        }
    }
    missing
}

fn say(line: &str) {
    println!("demo: {line}");
}

/// Hand each line on as it comes; with `echo`, print it too.
fn lines_of(r: impl std::io::Read + Send + 'static, echo: bool) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                println!("{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A process's output lines, kept as they are waited through.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(rx: Receiver<String>) -> Self {
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line matching `pred` within `timeout`.
    fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.rx.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// Every line so far, waited through or not.
    fn rest(mut self) -> Vec<String> {
        self.seen.extend(self.rx.try_iter());
        self.seen
    }
}
