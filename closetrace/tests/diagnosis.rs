//! Kernel tests for leak diagnosis: a server whose close handler is stuck
//! in a way the diagnosis must name (blocked on a backend, on a mutex,
//! asleep, spinning), a server running out of fds, the peer that closed,
//! and a leak in another network namespace traced from the host.
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Netns, Peer, Tracer, connect_once, connect_once_in, kernel_test};

const WAIT: Duration = Duration::from_secs(10);

/// A leak on `port` whose diagnosis names its holder's threads.
fn diagnosed_leak(port: u16) -> impl Fn(&Value) -> bool {
    move |r| {
        r["type"] == "close_wait_leak"
            && r["sport"] == port
            && r["diagnosis"]["processes"][0]["groups"]
                .as_array()
                .is_some_and(|g| !g.is_empty())
    }
}

/// The group of threads `tid` is in.
fn group_of(leak: &Value, tid: u32) -> &Value {
    let groups = leak["diagnosis"]["processes"][0]["groups"]
        .as_array()
        .expect("groups");
    groups
        .iter()
        .find(|g| {
            g["tids"]
                .as_array()
                .is_some_and(|t| t.contains(&tid.into()))
        })
        .unwrap_or_else(|| panic!("no group holds thread {tid}: {leak}"))
}

/// A server whose close handler is `handler`, and its port.
fn stuck_server(handler: &str) -> (Peer, u16) {
    let mut server = Peer::spawn(&["--comm", "php", "server", "--on-close", handler]);
    let port = server.value("LISTENING");
    (server, port)
}

/// One connection to `server` on `port`, closed by the client: its close
/// handler's thread id, and the leak once `tracer` has diagnosed it.
fn leak_on(tracer: &mut Tracer, server: &mut Peer, port: u16) -> (u32, Value) {
    connect_once(port);
    let tid = server.number("HANDLER");
    let leak = tracer
        .wait_record(WAIT, diagnosed_leak(port))
        .expect("a diagnosed leak");
    (tid, leak)
}

/// Acceptance 1: a close handler blocked in recv on a backend that never
/// answers: the diagnosis names the thread, the call and the backend.
#[test]
fn a_handler_blocked_on_a_backend_names_it() {
    let Some(_k) = kernel_test("a_handler_blocked_on_a_backend_names_it") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut backend = Peer::spawn(&["--comm", "redis", "server", "--never-close", "--no-read"]);
    let bport = backend.value("LISTENING");
    let (mut server, port) = stuck_server(&format!("recv=127.0.0.1:{bport}"));
    let (tid, leak) = leak_on(&mut tracer, &mut server, port);
    let local = server.value("BACKEND");
    let p = &leak["diagnosis"]["processes"][0];
    assert_eq!(p["pid"], server.pid());
    let g = &p["groups"][0];
    assert_eq!(g["suspicion"], "waits_on_peer", "ranked first: {leak}");
    assert!(g["tids"].as_array().unwrap().contains(&tid.into()), "{g}");
    let call = g["syscall"].as_str().unwrap();
    assert!(["recvfrom", "read"].contains(&call), "{g}");
    let fd = &g["fds"][0];
    assert_eq!(fd["kind"], "tcp", "{g}");
    assert_eq!(
        (fd["sport"].clone(), fd["dport"].clone()),
        (local.into(), bport.into())
    );
    assert_eq!(fd["state"], "ESTABLISHED");
    let socket = &leak["diagnosis"]["socket"];
    // The client's one byte, and its FIN (which takes a sequence number).
    assert_eq!(socket["bytes_received"], 2, "{socket}");
    assert!(
        socket["last_data_recv_ms"].as_u64().unwrap() >= 900,
        "{socket}"
    );
}

/// Acceptance 2: a close handler waiting on a mutex another thread holds:
/// the diagnosis names the futex wait and both threads.
#[test]
fn a_handler_waiting_on_a_mutex_names_both_threads() {
    let Some(_k) = kernel_test("a_handler_waiting_on_a_mutex_names_both_threads") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let (mut server, port) = stuck_server("mutex");
    let locker = server.number("LOCKER");
    let (tid, leak) = leak_on(&mut tracer, &mut server, port);
    let waiting = group_of(&leak, tid);
    assert_eq!(waiting["syscall"], "futex", "{waiting}");
    assert_eq!(waiting["suspicion"], "lock");
    let holding = group_of(&leak, locker);
    assert_eq!(
        holding["suspicion"], "sleep",
        "the lock holder sleeps: {holding}"
    );
    assert_ne!(waiting, holding);
}

/// Acceptance 3: a close handler that sleeps: the diagnosis names the sleep.
#[test]
fn a_sleeping_handler_names_the_sleep() {
    let Some(_k) = kernel_test("a_sleeping_handler_names_the_sleep") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let (mut server, port) = stuck_server("sleep");
    let (tid, leak) = leak_on(&mut tracer, &mut server, port);
    let g = group_of(&leak, tid);
    assert_eq!(g["suspicion"], "sleep", "{g}");
    assert!(
        ["clock_nanosleep", "nanosleep"].contains(&g["syscall"].as_str().unwrap()),
        "{g}"
    );
    assert_eq!(g["state"], "S");
}

/// Acceptance 4: a close handler that spins: R, and CPU time growing.
#[test]
fn a_spinning_handler_shows_cpu_growing() {
    let Some(_k) = kernel_test("a_spinning_handler_shows_cpu_growing") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let (mut server, port) = stuck_server("spin");
    let (tid, leak) = leak_on(&mut tracer, &mut server, port);
    let g = group_of(&leak, tid);
    assert_eq!(g["suspicion"], "busy", "{g}");
    assert_eq!(g["state"], "R");
    assert!(g["cpu_share"].as_f64().unwrap() >= 0.3, "{g}");
    assert_eq!(
        leak["diagnosis"]["processes"][0]["groups"][0], *g,
        "ranked first"
    );
}

/// Acceptance 5: RLIMIT_NOFILE 64 and a steady leak: `fd_exhaustion`
/// comes with a plausible ETA while fds remain, then the EMFILE itself.
#[test]
fn running_out_of_fds_is_foreseen_then_reported() {
    let Some(_k) = kernel_test("running_out_of_fds_is_foreseen_then_reported") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut server = Peer::spawn(&[
        "--comm",
        "fdleak",
        "server",
        "--never-close",
        "--connections",
        "0",
        "--nofile",
        "64",
    ]);
    let port = server.value("LISTENING");
    let mut client = Peer::spawn(&[
        "client",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--count",
        "90",
        "--hold-ms",
        "150",
    ]);
    let pid = server.pid();
    let is = |state: &'static str| {
        move |r: &Value| r["type"] == "fd_exhaustion" && r["pid"] == pid && r["state"] == state
    };
    let soon = tracer
        .wait_record(Duration::from_secs(30), is("approaching"))
        .expect("fd_exhaustion before the limit");
    assert_eq!(soon["limit"], 64, "{soon}");
    assert!(soon["fds"].as_u64().unwrap() < 64, "{soon}");
    let eta = soon["eta_s"].as_f64().unwrap();
    assert!(eta > 0.0 && eta <= 600.0, "plausible at ~6 leaks/s: {soon}");
    assert!(soon["leak_rate_per_min"].as_f64().unwrap() > 0.0);
    assert_eq!(server.value("ERROR"), 24, "the server then hits EMFILE");
    let out = tracer
        .wait_record(Duration::from_secs(30), is("exhausted"))
        .expect("the EMFILE reported");
    assert!(out["open_leaks"].as_u64().unwrap() > 0, "{out}");
    // The kernel saw accept() fail, before any later read of its fds.
    assert_eq!(out["cause"], "emfile", "{out}");
    assert_eq!(out["fds"], 64, "{out}");
    client.wait_done();
}

/// Acceptance 6: a loopback leak names the peer process that closed.
#[test]
fn a_loopback_leak_names_the_peer_that_closed() {
    let Some(_k) = kernel_test("a_loopback_leak_names_the_peer_that_closed") else {
        return;
    };
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut server = Peer::spawn(&["server", "--never-close"]);
    let port = server.value("LISTENING");
    let mut client = Peer::spawn(&[
        "--comm",
        "cw-client",
        "client",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--hold-ms",
        "20",
    ]);
    let client_pid = client.pid();
    client.wait_done();
    let leak = tracer
        .wait_record(WAIT, |r| {
            r["type"] == "close_wait_leak"
                && r["sport"] == port
                && r["diagnosis"]["peer"].is_object()
        })
        .expect("a leak naming its peer");
    let peer = &leak["diagnosis"]["peer"];
    assert_eq!(peer["pid"], client_pid, "{peer}");
    assert_eq!(peer["comm"], "cw-client");
    assert_eq!(peer["how"], "closed");
}

/// Acceptance 7: a leak in another network namespace, traced from the
/// host, carries the same diagnosis.
#[test]
fn a_leak_in_another_namespace_is_diagnosed_from_the_host() {
    let Some(_k) = kernel_test("a_leak_in_another_namespace_is_diagnosed_from_the_host") else {
        return;
    };
    let ns = Netns::new("diag");
    let mut tracer = Tracer::start(&["--close-wait-threshold", "1s"]);
    let mut backend = Peer::spawn_in(&ns, &["server", "--never-close", "--no-read"]);
    let bport = backend.value("LISTENING");
    let mut server = Peer::spawn_in(
        &ns,
        &[
            "--comm",
            "php",
            "server",
            "--on-close",
            &format!("recv=127.0.0.1:{bport}"),
        ],
    );
    let port = server.value("LISTENING");
    connect_once_in(&ns, port);
    let tid = server.number("HANDLER");
    let leak = tracer
        .wait_record(WAIT, |r| {
            diagnosed_leak(port)(r)
                && r["netns"] == ns.inode()
                && r["diagnosis"]["peer"].is_object()
        })
        .expect("a diagnosed leak in the namespace");
    let g = group_of(&leak, tid);
    assert_eq!(g["suspicion"], "waits_on_peer", "{g}");
    let fd = &g["fds"][0];
    assert_eq!(
        fd["kind"], "tcp",
        "named in the namespace's own sockets: {g}"
    );
    assert_eq!(fd["dport"], bport);
    assert_eq!(leak["diagnosis"]["socket"]["bytes_received"], 2, "{leak}");
    assert_eq!(leak["diagnosis"]["peer"]["how"], "closed");
}
