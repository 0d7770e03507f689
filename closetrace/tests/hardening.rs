//! closetrace must never be the thing that breaks or leaks: hostile process
//! names, no kernel addresses in any output, and faults (SIGKILL and
//! restart, two instances, stdout closed, a full disk), each ending with a
//! clear message, the right exit code and, where possible, the summary.
mod support;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{CLOSETRACE, Lines, Peer, Tracer, kernel_test};

/// A name made to break output: a newline (forge a second line), an ANSI
/// colour sequence, a quote (break naive JSON), and a byte that is not
/// UTF-8. 13 bytes, under the kernel's 15.
const HOSTILE: &[u8] = b"ev\nil\x1b[31m\"q\xff";

fn leak_on_server(args: &[&OsStr]) -> (Peer, u16) {
    let mut server = Peer::spawn(args);
    let port = support::leak_on(&mut server);
    (server, port)
}

fn hostile_server() -> (Peer, u16) {
    leak_on_server(&[
        OsStr::new("--comm"),
        OsStr::from_bytes(HOSTILE),
        OsStr::new("server"),
        OsStr::new("--never-close"),
    ])
}

#[test]
fn hostile_process_names_stay_inert() {
    let Some(_k) = kernel_test("hostile_process_names_stay_inert") else {
        return;
    };
    // JSON: every line parses (Tracer::stop panics otherwise) and the name
    // arrives intact as far as UTF-8 allows.
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let (server, port) = hostile_server();
    let leak = tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port
        })
        .expect("leak reported");
    assert_eq!(leak["comm"], "ev\nil\u{1b}[31m\"q\u{fffd}", "{leak}");
    assert_eq!(leak["pid"], server.pid());
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.stderr);
    drop(server);

    // Text, as on a terminal with colour forced: one line per finding, no
    // escape byte from the name, nothing split.
    let mut child = Command::new(CLOSETRACE)
        .args(["--close-wait-threshold", "1s", "--color", "always"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("closetrace text");
    let mut stderr = child.stderr.take().expect("stderr");
    // Wait for ready on stderr (the text view prints hook status there).
    let ready = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let mut lines = Lines::new(child.stdout.take().expect("stdout"));
    std::thread::sleep(Duration::from_secs(3));
    let (server, port) = hostile_server();
    let line = lines
        .wait_for(Duration::from_secs(15), |l| {
            l.contains("CLOSE_WAIT LEAK") && l.contains(&port.to_string())
        })
        .expect("a leak line");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    lines.drain(Duration::from_secs(10));
    let _ = child.wait();
    let _ = ready.join();
    assert!(line.contains("ev?il?[31m\"q\u{fffd}"), "{line:?}");
    // The only escapes are closetrace's own colour codes, at the ends.
    let inner = line
        .trim_start_matches("\u{1b}[1;31m")
        .trim_end_matches("\u{1b}[0m");
    assert!(!inner.contains('\u{1b}'), "{line:?}");
    assert!(
        !lines.seen.iter().any(|l| l.starts_with("il")),
        "the name split a line: {:?}",
        lines.seen
    );
    drop(server);
}

/// Any number that looks like a kernel pointer: 0xffff... in hex text, or
/// a decimal at or above 0xffff_0000_0000_0000.
fn kernel_address_in(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    if let Some(i) = lower.find("0xffff").or_else(|| lower.find("ffff8")) {
        return Some(text[i.saturating_sub(20)..(i + 30).min(text.len())].to_string());
    }
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|t| t.len() >= 19)
        .find(|t| t.parse::<u128>().is_ok_and(|n| n >= 0xffff_0000_0000_0000))
        .map(str::to_string)
}

#[test]
fn no_output_carries_a_kernel_address() {
    let Some(_k) = kernel_test("no_output_carries_a_kernel_address") else {
        return;
    };
    assert!(kernel_address_in("sock 18446612682385317504").is_some());
    assert!(kernel_address_in("0xffff888012345678").is_some());
    assert!(kernel_address_in("{\"sock\":31655,\"netns\":4026531840}").is_none());

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let out_dir = std::env::temp_dir().join(format!("closetrace-addr-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let text_out = out_dir.join("text.log");
    // JSON (stdout) and text (a file) at once, every record kind we can
    // provoke: states, closes, a leak and its end.
    let mut json = Tracer::start(&[
        "--states",
        "--close-wait-threshold",
        "1s",
        "--metrics",
        &metrics_port.to_string(),
    ]);
    let mut text = Command::new(CLOSETRACE)
        .args(["--states", "--close-wait-threshold", "1s", "-o"])
        .arg(&text_out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("closetrace text");
    std::thread::sleep(Duration::from_secs(2));
    let (server, port) = leak_on_server(&[OsStr::new("server"), OsStr::new("--never-close")]);
    json.wait_record(Duration::from_secs(15), |r| {
        r["type"] == "close_wait_leak" && r["sport"] == port
    })
    .expect("leak");
    let mut scrape = String::new();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    s.read_to_string(&mut scrape).unwrap();
    drop(server);
    json.wait_record(Duration::from_secs(15), |r| {
        r["type"] == "close_wait_resolved" && r["sport"] == port
    })
    .expect("resolution");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(text.id() as i32, libc::SIGINT) };
    let text_status = text.wait().expect("text closetrace");
    let done = json.stop();
    assert!(done.status.success() && text_status.success());
    let json_lines = done.raw.clone();
    let jsonl = out_dir.join("events.jsonl");
    std::fs::write(&jsonl, json_lines.join("\n")).unwrap();
    let report = Command::new(CLOSETRACE)
        .arg("report")
        .arg(&jsonl)
        .output()
        .expect("report");
    let outputs = [
        ("json", json_lines.join("\n")),
        ("json stderr", done.stderr.clone()),
        ("text", std::fs::read_to_string(&text_out).unwrap()),
        ("metrics", scrape),
        (
            "report",
            String::from_utf8_lossy(&report.stdout).into_owned(),
        ),
    ];
    for (what, out) in &outputs {
        assert!(out.len() > 100, "{what} is nearly empty: {out}");
        if let Some(hit) = kernel_address_in(out) {
            panic!("{what} output carries a kernel address: {hit}");
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// Loaded BPF programs of closetrace's (their names, truncated by the
/// kernel to 15 bytes).
fn our_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            matches!(
                p.name_as_str(),
                Some("inet_sock_set_s" | "sys_exit_accept" | "sys_exit_bind")
            )
        })
        .count()
}

#[test]
fn sigkill_leaves_nothing_behind_and_two_instances_coexist() {
    let Some(_k) = kernel_test("sigkill_leaves_nothing_behind_and_two_instances_coexist") else {
        return;
    };
    // Instances of earlier tests may still be exiting: let them go first.
    let settle = Instant::now() + Duration::from_secs(10);
    while our_programs() > 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = our_programs();
    let first = Tracer::start(&[]);
    assert!(
        our_programs() > before,
        "closetrace's programs are visible while it runs"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGKILL) };
    drop(first);
    // The kernel frees programs once their last fd closes: nothing pinned,
    // nothing left attached.
    let deadline = Instant::now() + Duration::from_secs(10);
    while our_programs() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        our_programs(),
        before,
        "programs outlived a SIGKILLed closetrace"
    );

    // Started again, twice at once: each sees the leak, neither loses.
    let mut a = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut b = Tracer::start(&["--close-wait-threshold", "1s"]);
    let (server, port) = leak_on_server(&[OsStr::new("server"), OsStr::new("--never-close")]);
    for t in [&mut a, &mut b] {
        let leak = t
            .wait_record(Duration::from_secs(15), |r| {
                r["type"] == "close_wait_leak" && r["sport"] == port
            })
            .expect("both instances report the leak");
        assert_eq!(leak["pid"], server.pid());
    }
    for t in [a, b] {
        let done = t.stop();
        assert!(done.status.success(), "{}", done.stderr);
        assert_eq!(done.summary()["lost"], 0);
    }
}

/// Connections until `child` exits (or a minute passes).
fn churn_until_exit(child: &mut std::process::Child, per_round: u32) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "closetrace never stopped");
        let mut server = Peer::spawn(&["server", "--connections", &per_round.to_string()]);
        let port = server.value("LISTENING");
        let mut c = Peer::spawn(&[
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            &per_round.to_string(),
        ]);
        c.wait_done();
        server.wait_done();
    }
}

/// `--output` on a file system that fills up: exit 1 naming the error,
/// summary on stderr, and what was written before is intact JSON.
#[test]
fn full_output_filesystem_is_a_clear_error() {
    let Some(_k) = kernel_test("full_output_filesystem_is_a_clear_error") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("closetrace-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a small tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _guard = Unmount(dir.clone());
    let out = dir.join("events.jsonl");
    let mut child = Command::new(CLOSETRACE)
        .args(["--states", "--format", "json", "-o"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("closetrace");
    std::thread::sleep(Duration::from_secs(2));
    let status = churn_until_exit(&mut child, 300);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("events in"), "no summary on stderr: {err}");
    // Every complete line that made it to disk is valid JSON.
    let written = std::fs::read_to_string(&out).unwrap_or_default();
    let complete: Vec<&str> = written.lines().filter(|l| l.ends_with('}')).collect();
    assert!(complete.len() > 10, "{} lines written", complete.len());
    for l in complete {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

/// Once attached, closetrace holds only the capabilities naming leak
/// holders and entering other network namespaces need, and still does its
/// whole job with them: map updates (the CLOSE_WAIT watch), sock_diag, and
/// another user's fd table.
#[test]
fn capabilities_are_dropped_after_attach() {
    let Some(_k) = kernel_test("capabilities_are_dropped_after_attach") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let kept: Vec<&str> = tracer.ready["privileges"]["kept"]
        .as_array()
        .expect("ready lists the capabilities kept")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        kept,
        ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"]
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", tracer.child.id())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect(name)
    };
    let three = (1u64 << 2) | (1u64 << 19) | (1u64 << 21);
    assert_eq!(field("CapEff:"), three, "{status}");
    assert_eq!(field("CapPrm:"), three);
    assert_eq!(field("CapAmb:"), 0);
    assert_eq!(field("NoNewPrivs:"), 1);

    let mut server = Peer::spawn_as_nobody(&["server", "--never-close"]);
    let port = support::leak_on(&mut server);
    let leak = tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port
        })
        .expect("leak reported after dropping capabilities");
    assert_eq!(leak["holders"][0]["pid"], server.pid(), "{leak}");
    drop(server);
    // Its end comes through the kernel watch the scan set up.
    let end = tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_resolved" && r["sport"] == port
        })
        .expect("resolution");
    assert_eq!(end["how"], "process_exit", "{end}");
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.stderr);
}

/// Fork until a child gets `pid` (the kernel hands out ns_last_pid + 1):
/// the reuse a busy host produces on its own, made deterministic.
fn spawn_with_pid(pid: u32, args: &[&str]) -> Option<Peer> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let peer = Peer::spawn(args);
        if peer.pid() == pid {
            return Some(peer);
        }
    }
    None
}

/// `--pid P`: once P exits, a new process that is given P is a stranger.
/// Its leak is not reported, while P's own leak was, and ended with it.
#[test]
fn a_reused_pid_is_not_followed() {
    let Some(_k) = kernel_test("a_reused_pid_is_not_followed") else {
        return;
    };
    let (first, port) = leak_on_server(&[OsStr::new("server"), OsStr::new("--never-close")]);
    let pid = first.pid();
    let mut tracer = Tracer::start(&["--pid", &pid.to_string(), "--close-wait-threshold", "1s"]);
    assert!(
        tracer.ready["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["hook"] == "sched:sched_process_exit" && h["status"] == "ok")
    );
    // The followed process's leak is shown, and ends with it.
    tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port && r["pid"] == pid
        })
        .expect("the followed process's leak");
    drop(first);
    tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_resolved" && r["sport"] == port
        })
        .expect("its end");
    // Let the display follow the kernel's set (refreshed once a second).
    std::thread::sleep(Duration::from_millis(1500));
    let mut stranger = spawn_with_pid(pid, &["server", "--never-close"])
        .expect("could not get the pid reused (ns_last_pid)");
    let reused_port = support::leak_on(&mut stranger);
    // Three thresholds: long past when the followed process's leak showed.
    std::thread::sleep(Duration::from_secs(3));
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.of_type("close_wait_leak")
            .all(|r| r["sport"] != reused_port),
        "the stranger reusing pid {pid} was taken for the followed process"
    );
    assert!(
        done.stderr.contains("every process followed has exited"),
        "{}",
        done.stderr
    );
    drop(stranger);
}

/// Waits for the leak on `port` and checks it blames process (`pid`, `start`).
fn leak_blames(tracer: &mut Tracer, port: u16, pid: u32, start: u64) -> Value {
    let leak = tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port
        })
        .unwrap_or_else(|| panic!("no leak reported on port {port}"));
    assert_eq!(
        (&leak["pid"], &leak["pid_start"]),
        (&pid.into(), &start.into()),
        "{leak}"
    );
    leak
}

/// Whole host: a process given a dead leaker's pid is another process. The
/// kernel names each with its own start time, equal to /proc's; the
/// newcomer inherits neither the leaker's leak nor its count.
#[test]
fn a_reused_pid_is_another_process() {
    let Some(_k) = kernel_test("a_reused_pid_is_another_process") else {
        return;
    };
    let mut tracer = Tracer::start(&["--states", "--close-wait-threshold", "1s"]);
    let never_close = [OsStr::new("server"), OsStr::new("--never-close")];
    let (first, port) = leak_on_server(&never_close);
    let (pid, first_start) = (first.pid(), first.start());
    let leak = leak_blames(&mut tracer, port, pid, first_start);
    assert_eq!(leak["holders"][0]["pid_start"], first_start, "{leak}");
    drop(first);
    let ended = tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_resolved" && r["sport"] == port
        })
        .expect("its end");
    assert_eq!(ended["pid_start"], first_start, "{ended}");

    let mut stranger = spawn_with_pid(pid, &["server", "--never-close"])
        .expect("could not get the pid reused (ns_last_pid)");
    let second_start = stranger.start();
    assert_ne!(second_start, first_start);
    let reused_port = support::leak_on(&mut stranger);
    leak_blames(&mut tracer, reused_port, pid, second_start);
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.stderr);
    // Every state change names its owner by the process it belongs to.
    for (sport, start) in [(port, first_start), (reused_port, second_start)] {
        let owned: Vec<_> = done
            .of_type("state")
            .filter(|r| r["sport"] == sport && r["pid"] == pid)
            .collect();
        assert!(!owned.is_empty(), "no state records of port {sport}");
        for r in owned {
            assert_eq!(r["pid_start"], start, "{r}");
        }
    }
    let mut rows: Vec<_> = done.summary()["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["pid"] == pid)
        .map(|l| {
            (
                l["pid_start"].as_u64(),
                l["leaks"].as_u64(),
                l["open"].as_u64(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (Some(first_start), Some(1), Some(0)),
            (Some(second_start), Some(1), Some(1))
        ],
        "the summary merged two processes that shared pid {pid}"
    );
    drop(stranger);
}
