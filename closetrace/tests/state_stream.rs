//! Kernel tests for the core state stream: real programs, real sockets on
//! loopback, separate client and server processes.
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{CLOSETRACE, Peer, Tracer, kernel_test};

/// Acceptance 1: the client closes first, the server 200 ms later. The
/// server's CLOSE_WAIT is caused in the client's context and still belongs
/// to the server.
fn client_closes_first(bind: &str) {
    let tracer = Tracer::start(&["--states"]);
    let mut server = Peer::spawn(&["server", "--listen", bind, "--close-delay-ms", "200"]);
    let port = server.value("LISTENING");
    let connect = match bind.parse::<std::net::SocketAddr>().unwrap() {
        std::net::SocketAddr::V4(a) => format!("{}:{port}", a.ip()),
        std::net::SocketAddr::V6(a) => format!("[{}]:{port}", a.ip()),
    };
    let mut client = Peer::spawn(&[
        "client",
        "--connect",
        &connect,
        "--hold-ms",
        "50",
        "--verbose",
    ]);
    let cport = client.value("CONNECTED");
    client.wait_done();
    server.wait_done();
    let out = tracer.stop();
    assert!(out.status.success(), "closetrace failed: {}", out.stderr);

    let family = if bind.starts_with('[') {
        "ipv6"
    } else {
        "ipv4"
    };
    let close_wait = out.find(port, cport, "ESTABLISHED", "CLOSE_WAIT");
    assert_eq!(
        close_wait["pid"],
        server.pid(),
        "owner of CLOSE_WAIT: {close_wait}"
    );
    assert_eq!(
        close_wait["ctx_pid"],
        client.pid(),
        "context of CLOSE_WAIT: {close_wait}"
    );
    assert_eq!(close_wait["family"], family);
    let last_ack = out.find(port, cport, "CLOSE_WAIT", "LAST_ACK");
    assert_eq!(last_ack["pid"], server.pid());
    // The server sat in CLOSE_WAIT for its 200 ms close delay.
    let waited = last_ack["old_ms"].as_f64().expect("old_ms known");
    assert!(
        (150.0..5000.0).contains(&waited),
        "CLOSE_WAIT lasted {waited} ms"
    );
    let fin_wait = out.find(cport, port, "ESTABLISHED", "FIN_WAIT1");
    assert_eq!(fin_wait["pid"], client.pid());
    assert_eq!(fin_wait["comm"], "closetrace-peer");
    // One opaque id per socket, the same across its transitions, and never
    // anything that looks like a kernel address.
    assert_eq!(close_wait["sock"], last_ack["sock"]);
    assert_ne!(close_wait["sock"], fin_wait["sock"]);
    // A cookie (a counter), or before 5.12 a keyed hash whose top two bits
    // are 01 (a kernel address has its top bits set).
    let id = close_wait["sock"].as_u64().unwrap();
    assert!(id < 1 << 48 || id >> 62 == 1, "{id:#x}");
    let s = out.summary();
    assert!(s["events"].as_u64().unwrap() >= 8);
    assert_eq!(s["lost"], 0);
    assert!(
        s["transitions"]["ESTABLISHED->CLOSE_WAIT"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(out.records[0]["type"], "ready");
    assert_eq!(out.records[0]["version"], 1);
}

#[test]
fn owner_is_the_server_ipv4() {
    let Some(_k) = kernel_test("owner_is_the_server_ipv4") else {
        return;
    };
    client_closes_first("127.0.0.1:0");
}

#[test]
fn owner_is_the_server_ipv6() {
    let Some(_k) = kernel_test("owner_is_the_server_ipv6") else {
        return;
    };
    client_closes_first("[::1]:0");
}

/// Acceptance 2: `--pid` with two servers running shows only the named one.
/// Both servers start before closetrace, as a real target would.
#[test]
fn pid_filter_shows_only_the_named_server() {
    let Some(_k) = kernel_test("pid_filter_shows_only_the_named_server") else {
        return;
    };
    let mut a = Peer::spawn(&["server", "--connections", "3"]);
    let mut b = Peer::spawn(&["server", "--connections", "3"]);
    let (pa, pb) = (a.value("LISTENING"), b.value("LISTENING"));
    let tracer = Tracer::start(&["--states", "--pid", &a.pid().to_string()]);
    assert_eq!(tracer.ready["pids"], serde_json::json!([a.pid()]));
    assert_eq!(tracer.ready["mode"], "states");
    for port in [pa, pb] {
        let mut c = Peer::spawn(&[
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            "3",
        ]);
        c.wait_done();
    }
    a.wait_done();
    b.wait_done();
    let tracer_ready = tracer.ready.to_string();
    let out = tracer.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let states: Vec<&Value> = out.of_type("state").collect();
    assert!(
        states
            .iter()
            .filter(|r| r["sport"] == pa && r["new"] == "CLOSE_WAIT")
            .count()
            == 3,
        "server A's three CLOSE_WAITs must appear: {states:?}\nready: {}\nrecords: {:?}\nstderr: {}",
        tracer_ready,
        out.raw
            .iter()
            .map(|l| l.get(..120).unwrap_or(l))
            .collect::<Vec<_>>(),
        out.stderr
    );
    for r in &states {
        assert_eq!(r["pid"], a.pid(), "only server A's sockets: {r}");
        assert_ne!(r["sport"], pb, "server B leaked through: {r}");
        assert_ne!(r["dport"], pb, "a client of B leaked through: {r}");
    }
}

/// Acceptance 3: a one-page ring buffer under a connection burst loses
/// events; the losses are counted, reported, and closetrace exits 0.
#[test]
fn losses_are_counted_and_reported() {
    let Some(_k) = kernel_test("losses_are_counted_and_reported") else {
        return;
    };
    let mut server = Peer::spawn(&["server", "--connections", "0", "--no-read"]);
    let port = server.value("LISTENING");
    let mut tracer = Tracer::start(&["--states", "--ring-buffer-size", "4096"]);
    // Bursts until the kernel reports a loss; one nearly always suffices.
    let mut lost_seen = false;
    for _ in 0..5 {
        let mut c = Peer::spawn(&[
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            "3000",
            "--reset",
        ]);
        c.wait_done();
        if tracer
            .lines
            .wait_for(Duration::from_secs(2), |l| l.contains("\"lost\""))
            .is_some()
        {
            lost_seen = true;
            break;
        }
    }
    drop(server);
    let out = tracer.stop();
    assert!(
        lost_seen,
        "a 4 KiB ring buffer never overflowed: {}",
        out.stderr
    );
    assert!(
        out.status.success(),
        "closetrace must exit 0 after losses: {}",
        out.stderr
    );
    let lost: Vec<&Value> = out.of_type("lost").collect();
    let sum: u64 = lost.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    let last_total = lost.last().unwrap()["total"].as_u64().unwrap();
    assert!(sum > 0);
    assert_eq!(sum, last_total, "lost counts add up to the running total");
    assert_eq!(out.summary()["lost"].as_u64(), Some(sum));
    assert!(
        out.stderr.contains(&format!("{sum} lost")),
        "stderr summary: {}",
        out.stderr
    );
}

fn run_closetrace(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Acceptance 4: bad input gets one clear line and a non-zero exit.
#[test]
fn bad_pid_and_bad_arguments() {
    let Some(_k) = kernel_test("bad_pid_and_bad_arguments") else {
        return;
    };
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let pid = dead.id().to_string();
    let (code, _, err) = run_closetrace(Command::new(CLOSETRACE).args(["--pid", &pid]));
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        format!("closetrace: error: --pid {pid}: no such process")
    );

    let (code, _, err) = run_closetrace(Command::new(CLOSETRACE).args(["--duration", "soon"]));
    assert_eq!(code, 2);
    assert!(err.contains("examples: 500ms"), "{err}");

    let (code, _, err) =
        run_closetrace(Command::new(CLOSETRACE).args(["--output", "/nonexistent/dir/out.jsonl"]));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("closetrace: error: cannot write /nonexistent/dir/out.jsonl"),
        "{err}"
    );
}

#[test]
fn missing_privileges_are_named() {
    let Some(_k) = kernel_test("missing_privileges_are_named") else {
        return;
    };
    use std::os::unix::process::CommandExt;
    // nobody: no capabilities at all.
    let (code, _, err) = run_closetrace(Command::new(CLOSETRACE).uid(65534).gid(65534));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("CAP_BPF") && err.contains("sudo"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// Runs closetrace in a private mount namespace after `setup`, so the test
/// can hide kernel interfaces without touching the host.
fn in_mount_namespace(setup: &str, args: &str) -> (i32, String, String) {
    let script = format!("{setup} && exec {CLOSETRACE} {args}");
    run_closetrace(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]))
}

#[test]
fn kernel_without_btf_is_refused_clearly() {
    let Some(_k) = kernel_test("kernel_without_btf_is_refused_clearly") else {
        return;
    };
    let (code, _, err) = in_mount_namespace("mount -t tmpfs none /sys/kernel/btf", "--duration 1s");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no BTF") && err.contains("CONFIG_DEBUG_INFO_BTF"),
        "{err}"
    );
}

/// The kernel names processes by host pids. Inside a PID namespace the test
/// makes, with a /proc of its own, every pid closetrace looked up would be
/// another process's: refused, saying why. In the same namespace with the
/// host's /proc it runs, since /proc then numbers processes as the kernel does.
#[test]
fn a_proc_of_another_pid_namespace_is_refused() {
    let Some(_k) = kernel_test("a_proc_of_another_pid_namespace_is_refused") else {
        return;
    };
    let (code, out, err) = run_closetrace(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", CLOSETRACE])
            .args(["--format", "json", "--duration", "1s"]),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("PID namespace") && err.contains("hostPID") && out.is_empty(),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let (code, out, err) = run_closetrace(
        Command::new("unshare")
            .args(["--pid", "--fork", CLOSETRACE])
            .args(["--format", "json", "--duration", "1s"]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("{\"type\":\"ready\""), "{out}");
}

#[test]
fn unmounted_tracefs_is_mounted() {
    let Some(_k) = kernel_test("unmounted_tracefs_is_mounted") else {
        return;
    };
    let setup = "for m in $(awk '$3==\"tracefs\"{print $2}' /proc/self/mounts | sort -r); do umount $m; done";
    let (code, out, err) = in_mount_namespace(setup, "--format json --duration 1s");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("tracefs was not mounted; mounted it at /sys/kernel/tracing"),
        "{err}"
    );
    assert!(
        out.lines().last().unwrap_or("").contains("\"summary\""),
        "{out}"
    );
}

/// A reader that goes away: one line saying so, non-zero exit, and the
/// summary still printed.
#[test]
fn closed_stdout_pipe_ends_cleanly() {
    let Some(_k) = kernel_test("closed_stdout_pipe_ends_cleanly") else {
        return;
    };
    let mut child = Command::new(CLOSETRACE)
        .args(["--states", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = support::Lines::new(child.stdout.take().unwrap());
    if lines
        .wait_for(Duration::from_secs(60), |l| l.contains("\"ready\""))
        .is_none()
    {
        let _ = child.kill();
        panic!("closetrace never became ready");
    }
    // The reader goes away: its thread exits, closing the pipe, at the next line.
    drop(lines);
    let mut server = Peer::spawn(&["server", "--connections", "0", "--no-read"]);
    let port = server.value("LISTENING");
    let mut status = None;
    for _ in 0..50 {
        let mut c = Peer::spawn(&[
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            "20",
        ]);
        c.wait_done();
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    let Some(status) = status else {
        let _ = child.kill();
        panic!("closetrace kept running with nobody reading");
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("closetrace: error: output closed (broken pipe)"),
        "{err}"
    );
    assert!(err.contains(" events in "), "summary still printed: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--output FILE` gets the whole stream and SIGTERM stops cleanly, like Ctrl-C.
#[test]
fn output_file_and_sigterm() {
    let Some(_k) = kernel_test("output_file_and_sigterm") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("closetrace-test-{}.jsonl", std::process::id()));
    let child = Command::new(CLOSETRACE)
        .args(["--states", "--format", "json", "--output"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The file gets the ready line once tracing has begun.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains("\"ready\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no ready line in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut server = Peer::spawn(&["server"]);
    let port = server.value("LISTENING");
    Peer::spawn(&["client", "--connect", &format!("127.0.0.1:{port}")]).wait_done();
    server.wait_done();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        out.stdout.is_empty(),
        "stdout must stay empty with --output"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "state" && r["sport"] == port && r["new"] == "CLOSE_WAIT"),
        "{text}"
    );
    assert_eq!(records.last().unwrap()["type"], "summary");
    assert!(err.contains(" events in "), "{err}");
}

/// Without --states closetrace hunts: the kernel sends only what findings
/// need, so no state or close records are written, yet every transition is
/// still counted in the summary.
#[test]
fn default_mode_counts_but_does_not_stream() {
    let Some(_k) = kernel_test("default_mode_counts_but_does_not_stream") else {
        return;
    };
    let tracer = Tracer::start(&[]);
    assert_eq!(tracer.ready["mode"], "findings");
    let mut server = Peer::spawn(&["server", "--connections", "5"]);
    let port = server.value("LISTENING");
    Peer::spawn(&[
        "client",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--count",
        "5",
    ])
    .wait_done();
    server.wait_done();
    let out = tracer.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.of_type("state").count(),
        0,
        "no state stream by default"
    );
    assert_eq!(
        out.of_type("close").count(),
        0,
        "no close stream by default"
    );
    let summary = out.summary();
    let t = &summary["transitions"];
    for key in [
        "SYN_SENT->ESTABLISHED",
        "ESTABLISHED->FIN_WAIT1",
        "ESTABLISHED->CLOSE_WAIT",
    ] {
        let n = t[key].as_u64().unwrap_or(0);
        assert!(n >= 5, "{key} counted in the kernel: {n} in {summary}");
    }
    let counted: u64 = t
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let delivered = summary["events"].as_u64().unwrap();
    assert!(
        delivered <= counted / 4,
        "only what findings need reaches userspace: {delivered} of {counted}"
    );
}

/// Owners come from accept(), not from every message: the send/recv hooks
/// are attached only with --owner-from-io, and then owners come from I/O.
#[test]
fn owner_from_io_is_opt_in() {
    let Some(_k) = kernel_test("owner_from_io_is_opt_in") else {
        return;
    };
    let hooks = |t: &Tracer| -> Vec<String> {
        t.ready["hooks"]
            .as_array()
            .expect("hooks")
            .iter()
            .map(|h| format!("{} {}", h["hook"], h["status"]))
            .collect()
    };
    let plain = Tracer::start(&[]);
    let listed = hooks(&plain);
    assert!(
        listed
            .iter()
            .any(|h| h.contains("sys_exit_accept") && h.contains("ok")),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|h| h.contains("sock_send_length")),
        "{listed:?}"
    );
    drop(plain);
    let with_io = Tracer::start(&["--owner-from-io"]);
    let listed = hooks(&with_io);
    for hook in ["sock:sock_send_length", "sock:sock_recv_length"] {
        assert!(
            listed.iter().any(|h| h.contains(hook)),
            "{hook}: {listed:?}"
        );
    }
}
