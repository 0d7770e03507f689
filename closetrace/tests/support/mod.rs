//! Helpers for the kernel tests: run closetrace and closetrace-peer as real
//! processes and read what closetrace reports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CLOSETRACE: &str = env!("CARGO_BIN_EXE_closetrace");
pub const PEER: &str = env!("CARGO_BIN_EXE_closetrace-peer");

/// Set by CI: a kernel test that cannot run there is a failure, not a skip.
pub const REQUIRE_ENV: &str = "CLOSETRACE_REQUIRE_KERNEL_TESTS";

/// Kernel tests share a 2-core machine and watch the whole host; run them
/// one at a time so one test's burst does not cost another its events.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct KernelTest {
    _guard: MutexGuard<'static, ()>,
}

/// Returns None (after saying why) when BPF cannot be loaded here, unless
/// CI demands it, in which case the test fails.
pub fn kernel_test(name: &str) -> Option<KernelTest> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let msg = format!("{name}: needs root to load eBPF programs");
        if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1") {
            panic!("{msg}, and {REQUIRE_ENV}=1 turns that skip into a failure");
        }
        eprintln!("SKIPPED {msg} (set {REQUIRE_ENV}=1 to fail instead)");
        return None;
    }
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Some(KernelTest { _guard: guard })
}

/// Lines of a child's stdout, read on a thread so the test never blocks.
pub struct Lines {
    rx: Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(out: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Wait for a line satisfying `pred`, keeping every line read.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
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

    /// Everything until the writer closes.
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => break,
            }
        }
    }
}

/// A running closetrace with JSON output.
pub struct Tracer {
    pub child: Child,
    pub lines: Lines,
    pub ready: Value,
}

pub struct Finished {
    pub status: ExitStatus,
    /// Every stdout line as written.
    pub raw: Vec<String>,
    pub records: Vec<Value>,
    pub stderr: String,
}

impl Finished {
    pub fn of_type<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.records.iter().filter(move |r| r["type"] == ty)
    }

    pub fn summary(&self) -> &Value {
        let last = self.records.last().expect("some output");
        assert_eq!(last["type"], "summary", "summary must be the last line");
        last
    }

    /// State records of the socket with this local and remote port.
    pub fn transitions(&self, sport: u16, dport: u16) -> Vec<&Value> {
        self.of_type("state")
            .filter(|r| r["sport"] == sport && r["dport"] == dport)
            .collect()
    }

    pub fn find(&self, sport: u16, dport: u16, old: &str, new: &str) -> &Value {
        self.transitions(sport, dport)
            .into_iter()
            .find(|r| r["old"] == old && r["new"] == new)
            .unwrap_or_else(|| {
                panic!(
                    "no {old}->{new} for {sport}->{dport}; stream had:\n{}",
                    self.records
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
    }
}

/// A network namespace made for one test, removed when dropped, so sysctls
/// can be narrowed without touching the host.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("ct-{}-{tag}", std::process::id());
        let ok = |c: &mut Command| {
            let st = c.status().expect("run ip");
            assert!(st.success(), "{c:?} failed");
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ok(Command::new("ip").args(["netns", "add", &name]));
        ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// The namespace's inode, as closetrace reports it in `netns`.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("the namespace's bind mount")
    }

    /// Write /proc/sys/<key> (slashes) inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let st = self
            .exec("sh")
            .args(["-c", "echo \"$1\" > /proc/sys/$2", "_", value, key])
            .status()
            .expect("sysctl");
        assert!(st.success(), "setting {key}={value}");
    }

    /// `program` run inside the namespace (same pid: ip execs it).
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Timewait sockets inside the namespace, counted by `ss`: those in
    /// TIME_WAIT and those still in their FIN_WAIT2 substate (ss shows
    /// them as FIN-WAIT-2 with a `timewait` timer). Both hold their port,
    /// and closetrace counts both, so tests compare against this sum.
    pub fn ss_timewait_count(&self) -> usize {
        let out = self
            .exec("ss")
            .args(["-Htano", "state", "time-wait", "state", "fin-wait-2"])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("timer:(timewait"))
            .count()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Socket ids are keyed hashes, not cookies (before 5.12): the kernel's
/// maps cannot be asked about sock_diag's sockets, so CLOSE_WAIT comes
/// from events rather than scans.
pub fn keyed_ids(ready: &Value) -> bool {
    ready["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .any(|h| h["attach"] == "keyed_hash" && h["status"] == "degraded")
}

impl Tracer {
    pub fn start(args: &[&str]) -> Tracer {
        Self::start_cmd(Command::new(CLOSETRACE), args)
    }

    /// A closetrace binary other than the one under test (the one a
    /// package installed).
    pub fn start_binary(path: &str, args: &[&str]) -> Tracer {
        Self::start_cmd(Command::new(path), args)
    }

    /// closetrace with `env` set.
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> Tracer {
        let mut cmd = Command::new(CLOSETRACE);
        cmd.envs(env.iter().copied());
        Self::start_cmd(cmd, args)
    }

    /// closetrace run inside `ns`: its sock_diag and sysctls are that namespace's.
    pub fn start_in(ns: &Netns, args: &[&str]) -> Tracer {
        Self::start_cmd(ns.exec(CLOSETRACE), args)
    }

    /// closetrace run through a wrapper (`setpriv`, ...): `cmd` is the
    /// wrapper with its arguments, closetrace's path is appended.
    pub fn start_wrapped(mut cmd: Command, args: &[&str]) -> Tracer {
        cmd.arg(CLOSETRACE);
        Self::start_cmd(cmd, args)
    }

    fn start_cmd(mut cmd: Command, args: &[&str]) -> Tracer {
        let mut child = cmd
            .args(["--format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn closetrace");
        let mut lines = Lines::new(child.stdout.take().expect("stdout"));
        let Some(ready) = lines.wait_for(Duration::from_secs(60), |l| l.contains("\"ready\""))
        else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("closetrace output");
            panic!(
                "closetrace never became ready: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ready: Value = serde_json::from_str(&ready).expect("ready is JSON");
        Tracer {
            child,
            lines,
            ready,
        }
    }

    /// Wait for a JSON record satisfying `pred`.
    pub fn wait_record(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        self.lines
            .wait_for(timeout, |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| pred(&v))
            })
            .map(|l| serde_json::from_str(&l).expect("JSON"))
    }

    /// Stop with SIGINT, as Ctrl-C would, and collect everything.
    pub fn stop(mut self) -> Finished {
        // Let the last events cross the ring buffer first.
        thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.lines.drain(Duration::from_secs(30));
        let mut stderr = Vec::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_end(&mut e, &mut stderr);
        }
        let status = self.child.wait().expect("closetrace exits");
        let records = self
            .lines
            .seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        Finished {
            status,
            raw: self.lines.seen.clone(),
            records,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// A test that fails before `stop` must not leave closetrace running: it
/// would hold the test harness's output open.
impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One client connection to 127.0.0.1:`port`: connect, send a byte, hold
/// it 20 ms, close first. Against a never-closing server, a CLOSE_WAIT leak.
pub fn connect_once(port: u16) {
    Peer::spawn(&once_args(port)).wait_done();
}

/// The same from inside `ns`.
pub fn connect_once_in(ns: &Netns, port: u16) {
    Peer::spawn_in(ns, &once_args(port)).wait_done();
}

fn once_args(port: u16) -> [String; 5] {
    [
        "client".into(),
        "--connect".into(),
        format!("127.0.0.1:{port}"),
        "--hold-ms".into(),
        "20".into(),
    ]
}

/// Connect once to the server's listening port; returns the port.
pub fn leak_on(server: &mut Peer) -> u16 {
    let port = server.value("LISTENING");
    connect_once(port);
    port
}

/// In `ns`, a listener on `addr` with a backlog of 1 that never accepts,
/// given time for closetrace to take its baseline, then 20 connections to
/// it: its accept queue overflows. The listener, and the `listen_overflow`
/// record `tracer` wrote for port `port` (None if none came in 15 s).
pub fn overflow_a_listener(
    ns: &Netns,
    tracer: &mut Tracer,
    addr: &str,
    port: u16,
) -> (Peer, Option<Value>) {
    let mut server = Peer::spawn_in(
        ns,
        &["server", "--listen", addr, "--backlog", "1", "--no-accept"],
    );
    server.value("LISTENING");
    // Let closetrace take its baseline of the new listener.
    thread::sleep(Duration::from_millis(1500));
    let mut client = Peer::spawn_in(
        ns,
        &[
            "client",
            "--connect",
            addr,
            "--count",
            "20",
            "--connect-timeout-ms",
            "200",
        ],
    );
    let overflow = tracer.wait_record(Duration::from_secs(15), |r| {
        r["type"] == "listen_overflow" && r["sport"] == port
    });
    client.wait_done();
    (server, overflow)
}

/// SIGKILL a process the test made (forked children of peers included).
pub fn kill(pid: u32) {
    // SAFETY: signalling a process of this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// A closetrace-peer process.
pub struct Peer {
    pub child: Child,
    pub lines: Lines,
}

impl Peer {
    /// Any argument bytes: tests name processes with invalid UTF-8.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Peer {
        Self::spawn_cmd(Command::new(PEER), args)
    }

    /// A peer run as user nobody: naming it takes reading another user's
    /// fd table.
    pub fn spawn_as_nobody(args: &[&str]) -> Peer {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", PEER]);
        Self::spawn_cmd(cmd, args)
    }

    pub fn spawn_in<S: AsRef<std::ffi::OsStr>>(ns: &Netns, args: &[S]) -> Peer {
        Self::spawn_cmd(ns.exec(PEER), args)
    }

    fn spawn_cmd<S: AsRef<std::ffi::OsStr>>(mut cmd: Command, args: &[S]) -> Peer {
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn closetrace-peer");
        let lines = Lines::new(child.stdout.take().expect("stdout"));
        Peer { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When it started, as /proc says (the `pid_start` closetrace reports).
    pub fn start(&self) -> u64 {
        closetrace_core::host::procs::stat(self.pid())
            .expect("the peer's /proc/PID/stat")
            .start
    }

    /// The number after `word` on the first line starting with it.
    pub fn value(&mut self, word: &str) -> u16 {
        self.number(word) as u16
    }

    pub fn number(&mut self, word: &str) -> u32 {
        let prefix = format!("{word} ");
        let line = self
            .lines
            .wait_for(Duration::from_secs(20), |l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("peer never printed {word}"));
        line[prefix.len()..].trim().parse().expect("a number")
    }

    pub fn wait_done(&mut self) {
        self.lines
            .wait_for(Duration::from_secs(60), |l| l == "DONE")
            .expect("peer finished");
        let status = self.child.wait().expect("peer exits");
        assert!(status.success(), "peer failed: {status}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
