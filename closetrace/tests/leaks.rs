//! Kernel tests for CLOSE_WAIT leak hunting: the article's leaky servers,
//! as real processes on loopback.
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Peer, Tracer, kernel_test, keyed_ids, kill};

fn connect_and_close(port: u16, host: &str) -> u16 {
    let mut c = Peer::spawn(&[
        "client",
        "--connect",
        &format!("{host}:{port}"),
        "--hold-ms",
        "50",
        "--verbose",
    ]);
    let cport = c.value("CONNECTED");
    c.wait_done();
    cport
}

fn is_leak(port: u16) -> impl Fn(&Value) -> bool {
    move |r| r["type"] == "close_wait_leak" && r["sport"] == port
}

fn is_resolved(port: u16) -> impl Fn(&Value) -> bool {
    move |r| r["type"] == "close_wait_resolved" && r["sport"] == port
}

/// How a leak is dated. The default mode keeps no kernel entry for a
/// socket entering CLOSE_WAIT: the scan dates it by tcp_info, from the
/// client's FIN. Where ids are keyed hashes (before 5.12) there is no scan:
/// a leak made while tracing is dated by its transition, one from before
/// start-up from then. Either way it began after `connected_at`: the age
/// is no more than the time since (one jiffy of slack: tcp_info counts in
/// jiffies).
fn assert_dated(tracer: &Tracer, leak: &Value, connected_at: Instant, before_start: bool) {
    let waited_ms = connected_at.elapsed().as_secs_f64() * 1000.0;
    let since = match (keyed_ids(&tracer.ready), before_start) {
        (false, _) => "tcp_info",
        (true, false) => "transition",
        (true, true) => "startup",
    };
    assert_eq!(leak["since"], since, "{leak}");
    let age_ms = leak["close_wait_ms"].as_f64().unwrap();
    assert!(
        age_ms <= waited_ms + 10.0,
        "{age_ms} ms > {waited_ms} ms: {leak}"
    );
}

fn holder_pids(leak: &Value) -> Vec<u64> {
    leak["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| h["pid"].as_u64().unwrap())
        .collect()
}

/// Acceptance 1: Accepts, reads EOF, never closes: reported within threshold + 2 s,
/// naming the server and its fd; when it dies, the resolution says so.
#[test]
fn leaky_server_is_reported_with_its_fd() {
    let Some(_k) = kernel_test("leaky_server_is_reported_with_its_fd") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "2s"]);
    assert_eq!(tracer.ready["close_wait_threshold_ms"], 2000);
    // The ready record says how tcp_close is hooked and, when degraded, why.
    let hooks = tracer.ready["hooks"].as_array().unwrap();
    let close = hooks
        .iter()
        .find(|h| h["hook"] == "tcp_close")
        .expect("tcp_close hook reported");
    match close["attach"].as_str().unwrap() {
        "fentry" => assert_eq!(close["status"], "ok"),
        "kprobe" => assert!(close["reason"].as_str().unwrap().contains("fentry")),
        "transitions" => {
            assert_eq!(close["status"], "degraded");
            let why = close["reason"].as_str().unwrap();
            assert!(why.contains("fentry") && why.contains("kprobe"), "{why}");
        }
        other => panic!("unexpected tcp_close attach {other}"),
    }
    // Holders come from the kernel's fd tables (a BPF iterator, 5.8+),
    // not from a readlink of every /proc/PID/fd entry.
    let holders_hook = hooks
        .iter()
        .find(|h| h["hook"] == "socket holders (iter/task_file)")
        .expect("the holders' source reported");
    assert_eq!(
        (
            holders_hook["attach"].as_str(),
            holders_hook["status"].as_str()
        ),
        (Some("iter"), Some("ok")),
        "{holders_hook}"
    );
    let mut server = Peer::spawn(&["server", "--never-close"]);
    let port = server.value("LISTENING");
    let connected_at = Instant::now();
    let cport = connect_and_close(port, "127.0.0.1");
    let fd = server.number("FD");
    let closed_at = Instant::now();
    let leak = tracer
        .wait_record(Duration::from_secs(4), is_leak(port))
        .expect("a close_wait_leak within threshold + 2 s");
    assert!(
        closed_at.elapsed() >= Duration::from_millis(1900),
        "not before the threshold"
    );
    assert_dated(&tracer, &leak, connected_at, false);
    assert_eq!(leak["pid"], server.pid());
    assert_eq!(
        leak["pid_start"],
        server.start(),
        "the kernel's start is /proc's"
    );
    assert_eq!(leak["dport"], cport);
    assert_eq!(leak["recv_q"], 0, "the server read the EOF: {leak}");
    assert_eq!(leak["report"], 1);
    assert!(leak["close_wait_ms"].as_f64().unwrap() >= 1900.0, "{leak}");
    assert_eq!(
        leak["holders"],
        serde_json::json!([{"pid": server.pid(), "pid_start": server.start(),
            "comm": "closetrace-peer", "fd": fd}])
    );
    kill(server.pid());
    let resolved = tracer
        .wait_record(Duration::from_secs(5), is_resolved(port))
        .expect("the kernel closes a dead process's sockets: resolved");
    assert_eq!(resolved["how"], "process_exit", "{resolved}");
    let out = tracer.stop();
    let s = out.summary();
    assert_eq!(s["leaks"][0]["pid"], server.pid());
    assert_eq!(s["leaks"][0]["leaks"], 1);
    assert_eq!(s["leaks"][0]["open"], 0, "no ghost after the process died");
    assert!(
        out.stderr.contains("CLOSE_WAIT leaks by process:"),
        "{}",
        out.stderr
    );
    // So the holders above were the iterator's, read after privileges
    // were dropped: it never fell back to /proc.
    assert!(!out.stderr.contains("fd iterator failed"), "{}", out.stderr);
}

/// Acceptance 2: A server that closes promptly is never a leak, over 1,000 connections.
#[test]
fn prompt_server_never_leaks() {
    let Some(_k) = kernel_test("prompt_server_never_leaks") else {
        return;
    };
    let tracer = Tracer::start(&["--states", "--close-wait-threshold", "2s"]);
    let mut server = Peer::spawn(&["server", "--connections", "1000", "--close-delay-ms", "5"]);
    let port = server.value("LISTENING");
    let mut c = Peer::spawn(&[
        "client",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--count",
        "1000",
    ]);
    c.wait_done();
    server.wait_done();
    // Long enough for any leak to come due.
    std::thread::sleep(Duration::from_millis(2500));
    let out = tracer.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let close_waits = out
        .of_type("state")
        .filter(|r| r["sport"] == port && r["new"] == "CLOSE_WAIT")
        .count();
    assert_eq!(
        close_waits, 1000,
        "every connection's CLOSE_WAIT was traced"
    );
    let closes = out
        .of_type("close")
        .filter(|r| r["sport"] == port && r["state"] == "CLOSE_WAIT")
        .count();
    assert_eq!(closes, 1000, "every close in CLOSE_WAIT was seen");
    assert_eq!(out.records.iter().filter(|r| is_leak(port)(r)).count(), 0);
    assert_eq!(
        out.records.iter().filter(|r| is_resolved(port)(r)).count(),
        0
    );
}

/// Acceptance 3: Closes after 2.5 x threshold: one report, then resolved
/// as closed. In the default mode the socket's way out of CLOSE_WAIT is
/// sent only because the scan that found it asked the kernel to watch it.
#[test]
fn late_closer_is_reported_once_then_resolved() {
    let Some(_k) = kernel_test("late_closer_is_reported_once_then_resolved") else {
        return;
    };
    late_closer(&[]);
}

/// The same with every state change streamed: the close itself is there too.
#[test]
fn late_closer_streamed() {
    let Some(_k) = kernel_test("late_closer_streamed") else {
        return;
    };
    let (out, port, pid) = late_closer(&["--states"]);
    let close = out
        .of_type("close")
        .find(|r| r["sport"] == port && r["state"] == "CLOSE_WAIT")
        .expect("a close record");
    assert_eq!(close["pid"], pid);
    assert_eq!(close["by"], "close");
}

fn late_closer(flags: &[&str]) -> (support::Finished, u16, u32) {
    let mut args = vec!["--close-wait-threshold", "1s"];
    args.extend_from_slice(flags);
    let mut tracer = Tracer::start(&args);
    let mut server = Peer::spawn(&["server", "--close-delay-ms", "2500"]);
    let port = server.value("LISTENING");
    connect_and_close(port, "127.0.0.1");
    let resolved = tracer
        .wait_record(Duration::from_secs(8), is_resolved(port))
        .expect("resolution after the late close");
    server.wait_done();
    let out = tracer.stop();
    assert_eq!(resolved["how"], "closed", "{resolved}");
    assert_eq!(resolved["pid"], server.pid());
    let ms = resolved["close_wait_ms"].as_f64().unwrap();
    assert!((2400.0..4000.0).contains(&ms), "CLOSE_WAIT lasted {ms} ms");
    let leaks: Vec<&Value> = out.records.iter().filter(|r| is_leak(port)(r)).collect();
    assert_eq!(leaks.len(), 1, "one report, no flood: {leaks:?}");
    (out, port, server.pid())
}

/// Acceptance 4: The parent accepts, forks and closes its copy; the child holds it.
#[test]
fn fork_names_the_child() {
    let Some(_k) = kernel_test("fork_names_the_child") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut server = Peer::spawn(&["server", "--fork-child"]);
    let port = server.value("LISTENING");
    connect_and_close(port, "127.0.0.1");
    let child = server.number("CHILD");
    let leak = tracer.wait_record(Duration::from_secs(5), is_leak(port));
    kill(child);
    let leak = leak.expect("a leak");
    assert_eq!(leak["pid"], child, "the child holds it: {leak}");
    assert_eq!(
        holder_pids(&leak),
        vec![child as u64],
        "not the parent: {leak}"
    );
    tracer.stop();
}

/// Acceptance 5: A passes the fd to B over a Unix socket and closes; B never does.
/// Also: `--pid B` shows the leak although B never touched the socket.
#[test]
fn fd_passing_names_the_receiver() {
    let Some(_k) = kernel_test("fd_passing_names_the_receiver") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("closetrace-pass-{}.sock", std::process::id()));
    let path_s = path.to_str().unwrap();
    let mut b = Peer::spawn(&["holder", "--unix", path_s]);
    b.lines
        .wait_for(Duration::from_secs(10), |l| l == "READY")
        .expect("holder ready");
    let mut tracer = Tracer::start(&[
        "--states",
        "--close-wait-threshold",
        "1s",
        "--pid",
        &b.pid().to_string(),
    ]);
    let mut a = Peer::spawn(&["server", "--pass-to", path_s, "--no-read"]);
    let port = a.value("LISTENING");
    connect_and_close(port, "127.0.0.1");
    let fd = b.number("RECEIVED");
    a.wait_done();
    let leak = tracer
        .wait_record(Duration::from_secs(5), is_leak(port))
        .expect("a leak");
    let _ = std::fs::remove_file(&path);
    assert_eq!(leak["pid"], b.pid(), "{leak}");
    assert_eq!(
        leak["holders"],
        serde_json::json!([{"pid": b.pid(), "pid_start": b.start(), "comm": "closetrace-peer", "fd": fd}])
    );
    assert!(
        leak["recv_q"].as_u64().unwrap() > 0,
        "B never read the EOF: {leak}"
    );
    let out = tracer.stop();
    for r in out.of_type("state") {
        assert_eq!(r["pid"], b.pid(), "--pid shows only B's state changes: {r}");
    }
}

/// A server that stopped accepting: a client gives up and closes, and
/// its connection sits in CLOSE_WAIT in the accept queue, with no fd. The
/// leak names the process holding the listener, and says it was never
/// accepted.
#[test]
fn unaccepted_connection_names_the_listener() {
    let Some(_k) = kernel_test("unaccepted_connection_names_the_listener") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "2s"]);
    let mut server = Peer::spawn(&["server", "--no-accept"]);
    let port = server.value("LISTENING");
    let connected_at = Instant::now();
    let cport = connect_and_close(port, "127.0.0.1");
    let leak = tracer
        .wait_record(Duration::from_secs(5), is_leak(port))
        .expect("a close_wait_leak");
    assert_dated(&tracer, &leak, connected_at, false);
    assert!(leak["close_wait_ms"].as_f64().unwrap() >= 1900.0, "{leak}");
    assert_eq!(leak["dport"], cport);
    assert_eq!(leak["accept_queue"], true, "{leak}");
    assert_eq!(leak["pid"], server.pid(), "{leak}");
    assert_eq!(holder_pids(&leak), vec![server.pid() as u64]);
    kill(server.pid());
    tracer
        .wait_record(Duration::from_secs(5), is_resolved(port))
        .expect("the listener's close ends it: resolved");
    tracer.stop();
}

/// Acceptance 6: A leak that began before closetrace started is found at start-up.
#[test]
fn leak_from_before_startup_is_reported() {
    let Some(_k) = kernel_test("leak_from_before_startup_is_reported") else {
        return;
    };
    let mut server = Peer::spawn(&["server", "--never-close"]);
    let port = server.value("LISTENING");
    let connected_at = Instant::now();
    connect_and_close(port, "127.0.0.1");
    server.value("FD");
    std::thread::sleep(Duration::from_millis(200));
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let leak = tracer
        .wait_record(Duration::from_secs(4), is_leak(port))
        .expect("a leak");
    // The first scan finds it and its tcp_info dates it from the FIN,
    // before start-up.
    assert_dated(&tracer, &leak, connected_at, true);
    assert_eq!(leak["pid"], server.pid());
    assert_eq!(holder_pids(&leak), vec![server.pid() as u64]);
    tracer.stop();
}

/// Acceptance 7: Swoole PROCESS mode: the master holds connections while the worker
/// that should tell it to close is blocked. The master is named.
#[test]
fn process_mode_names_the_master() {
    let Some(_k) = kernel_test("process_mode_names_the_master") else {
        return;
    };
    let mut master = Peer::spawn(&["server", "--blocked-worker"]);
    let worker = master.number("WORKER");
    let port = master.value("LISTENING");
    let mut tracer = Tracer::start(&[
        "--close-wait-threshold",
        "1s",
        "--pid",
        &master.pid().to_string(),
    ]);
    connect_and_close(port, "127.0.0.1");
    let leak = tracer.wait_record(Duration::from_secs(5), is_leak(port));
    kill(worker);
    let leak = leak.expect("a leak");
    assert_eq!(leak["pid"], master.pid(), "{leak}");
    assert_eq!(
        holder_pids(&leak),
        vec![master.pid() as u64],
        "the worker holds nothing: {leak}"
    );
    tracer.stop();
}

/// Acceptance 8: IPv6 on ::1.
#[test]
fn ipv6_leak() {
    let Some(_k) = kernel_test("ipv6_leak") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut server = Peer::spawn(&["server", "--listen", "[::1]:0", "--never-close"]);
    let port = server.value("LISTENING");
    connect_and_close(port, "[::1]");
    let leak = tracer
        .wait_record(Duration::from_secs(4), is_leak(port))
        .expect("a leak");
    assert_eq!(leak["family"], "ipv6");
    assert_eq!(leak["saddr"], "::1");
    assert_eq!(leak["pid"], server.pid());
    tracer.stop();
}

/// shutdown(SHUT_WR) leaves CLOSE_WAIT without closing: not a close, and
/// the leak's resolution says `shutdown`.
#[test]
fn shutdown_is_not_a_close() {
    let Some(_k) = kernel_test("shutdown_is_not_a_close") else {
        return;
    };
    // Default mode: the resolution comes through the kernel's watch.
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut server = Peer::spawn(&["server", "--shutdown-only", "--close-delay-ms", "1500"]);
    let port = server.value("LISTENING");
    connect_and_close(port, "127.0.0.1");
    let resolved = tracer
        .wait_record(Duration::from_secs(5), is_resolved(port))
        .expect("resolved");
    assert_eq!(resolved["how"], "shutdown", "{resolved}");
    kill(server.pid());
    let out = tracer.stop();
    let summary = out.summary();
    assert_eq!(
        summary["leaks"][0]["open"], 0,
        "no longer in CLOSE_WAIT: {summary}"
    );
}

/// A prefork server (nginx, php-fpm): the parent opens the listener and
/// forks workers that accept on it. Each accepted socket belongs to the
/// worker that accept()ed it, not to the parent that owns the listener:
/// with `--states`, every CLOSE_WAIT names its worker.
#[test]
fn prefork_workers_own_what_they_accept() {
    let Some(_k) = kernel_test("prefork_workers_own_what_they_accept") else {
        return;
    };
    let mut server = Peer::spawn(&[
        "server",
        "--prefork",
        "2",
        "--connections",
        "2",
        "--never-close",
    ]);
    let port = server.value("LISTENING");
    let workers: Vec<u32> = distinct_lines(&mut server, "WORKER ", 2)
        .iter()
        .map(|l| l[7..].parse().unwrap())
        .collect();
    let tracer = Tracer::start(&["--states"]);
    for _ in 0..4 {
        // Closed after a pause, so a worker has accepted it by then.
        let mut c = Peer::spawn(&[
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--hold-ms",
            "300",
        ]);
        c.wait_done();
    }
    let mut accepted_by = std::collections::HashMap::new();
    for line in distinct_lines(&mut server, "ACCEPTED_BY ", 4) {
        let mut it = line.split_whitespace().skip(1);
        let (pid, peer): (u32, u16) = (
            it.next().unwrap().parse().unwrap(),
            it.next().unwrap().parse().unwrap(),
        );
        accepted_by.insert(peer, pid);
    }
    let out = tracer.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let close_waits: Vec<&Value> = out
        .of_type("state")
        .filter(|r| r["sport"] == port && r["new"] == "CLOSE_WAIT")
        .collect();
    assert_eq!(close_waits.len(), 4, "{close_waits:?}");
    for r in close_waits {
        let peer = r["dport"].as_u64().unwrap() as u16;
        let worker = *accepted_by
            .get(&peer)
            .unwrap_or_else(|| panic!("no worker accepted {peer}: {accepted_by:?} {r}"));
        assert!(workers.contains(&worker));
        assert_eq!(r["pid"], worker, "the worker that accepted it: {r}");
        assert_ne!(r["pid"], server.pid(), "not the parent: {r}");
        assert_eq!(r["owner"], "accept", "{r}");
    }
}

/// The first `n` different lines starting with `prefix` a peer printed.
fn distinct_lines(peer: &mut Peer, prefix: &str, n: usize) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    while got.len() < n {
        let line = peer
            .lines
            .wait_for(Duration::from_secs(10), |l| {
                l.starts_with(prefix) && !got.iter().any(|g| g == l)
            })
            .unwrap_or_else(|| panic!("only {got:?} starting with {prefix:?}"));
        got.push(line);
    }
    got
}

/// `--no-syscall-hooks`: the syscall tracepoints are reported off (not
/// unavailable), and a leak is still found and named, from the listener's
/// owner and the fd tables.
#[test]
fn without_syscall_hooks_a_leak_is_still_named() {
    let Some(_k) = kernel_test("without_syscall_hooks_a_leak_is_still_named") else {
        return;
    };
    let mut tracer = Tracer::start(&["--no-syscall-hooks", "--close-wait-threshold", "2s"]);
    let hooks = tracer.ready["hooks"].as_array().unwrap().clone();
    let syscall_hooks: Vec<&Value> = hooks
        .iter()
        .filter(|h| h["hook"].as_str().unwrap().starts_with("syscalls:"))
        .collect();
    // accept's, bind's, and before 5.15 shutdown's.
    assert!(
        syscall_hooks
            .iter()
            .any(|h| h["hook"].as_str().unwrap().contains("sys_exit_accept")),
        "{hooks:?}"
    );
    for h in syscall_hooks {
        assert_eq!(h["status"], "off", "{h}");
        assert!(h["reason"].as_str().unwrap().contains("--no-syscall-hooks"));
    }
    let mut server = Peer::spawn(&["server", "--never-close"]);
    let port = server.value("LISTENING");
    connect_and_close(port, "127.0.0.1");
    let fd = server.number("FD");
    let leak = tracer
        .wait_record(Duration::from_secs(5), is_leak(port))
        .expect("a close_wait_leak within threshold + 3 s");
    assert_eq!(leak["pid"], server.pid(), "{leak}");
    assert_eq!(leak["holders"][0]["fd"], fd, "{leak}");
    kill(server.pid());
    tracer.stop();
}
