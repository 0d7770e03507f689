//! Kernel tests for port pressure: TIME_WAIT toward one destination until
//! connect() fails, bind() on a held port, listen queue overflow. Each runs
//! in a network namespace it makes, so sysctls can be narrowed safely.
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Netns, Peer, Tracer, kernel_test};

const SERVER: &str = "127.0.0.1:9501";

/// A namespace with 200 ephemeral ports and no tcp_tw_reuse.
fn narrow_netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.sysctl("net/ipv4/ip_local_port_range", "40000 40199");
    ns.sysctl("net/ipv4/tcp_tw_reuse", "0");
    ns
}

/// closetrace (with `tracer_args`) and a server in `ns`, and a client (with
/// `client_args`) connecting until connect() fails. Only that namespace is
/// traced: other tests' TIME_WAIT elsewhere on the host must not crowd it
/// out of the summary's top ten.
fn connect_until_error(
    ns: Netns,
    tracer_args: &[&str],
    client_args: &[&str],
) -> (Netns, Tracer, Peer, Peer) {
    let only = format!("/run/netns/{}", ns.name);
    let tracer = Tracer::start_in(&ns, &[&["--netns", only.as_str()], tracer_args].concat());
    let mut server = Peer::spawn_in(&ns, &["server", "--listen", SERVER, "--connections", "0"]);
    server.value("LISTENING");
    let client_args = [
        &["client", "--connect", SERVER, "--until-error"],
        client_args,
    ]
    .concat();
    let client = Peer::spawn_in(&ns, &client_args);
    (ns, tracer, server, client)
}

/// Acceptance 1: 200 ephemeral ports, no tcp_tw_reuse, a client that
/// closes first: pressure crosses 0.5 before connect() fails with
/// EADDRNOTAVAIL; both name the client, and the count agrees with ss.
#[test]
fn time_wait_pressure_then_eaddrnotavail() {
    let Some(_k) = kernel_test("time_wait_pressure_then_eaddrnotavail") else {
        return;
    };
    let (ns, tracer, _server, mut client) =
        connect_until_error(narrow_netns("tw"), &[], &["--count", "1000"]);
    let errno = client.number("ERROR");
    assert_eq!(errno, 99, "the client ran out of ports: EADDRNOTAVAIL");
    let ss_tw = ns.ss_timewait_count();
    let out = tracer.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let pos = |pred: &dyn Fn(&Value) -> bool| out.records.iter().position(pred);
    let first_pressure = pos(&|r| r["type"] == "time_wait_pressure" && r["dport"] == 9501)
        .expect("a time_wait_pressure record");
    let first_error = pos(&|r| r["type"] == "connect_error").expect("a connect_error record");
    assert!(
        first_pressure < first_error,
        "pressure must come before the failure"
    );
    let p = &out.records[first_pressure];
    assert_eq!(p["level"], "warn");
    assert!(p["ratio"].as_f64().unwrap() >= 0.5, "{p}");
    assert_eq!(p["ports_available"], 200);
    assert_eq!(p["tw_reuse"], false);
    assert!(
        p["pids"].as_array().unwrap().contains(&client.pid().into()),
        "{p}"
    );
    assert!(
        p["exhaustion_s"].as_f64().is_some(),
        "rising: an estimate: {p}"
    );
    let e = &out.records[first_error];
    assert_eq!(e["pid"], client.pid());
    assert_eq!(e["errno"], "EADDRNOTAVAIL");
    assert_eq!(
        (e["daddr"].as_str(), e["dport"].as_u64()),
        (Some("127.0.0.1"), Some(9501))
    );
    // At the failure some ports are still held by sockets on their way to
    // TIME_WAIT (FIN_WAIT1/2, waiting for the server's FIN), so the count
    // then is lower; ss, run after, agrees with closetrace's latest count.
    let at_error = e["time_wait"].as_u64().unwrap();
    assert!((100..=200).contains(&at_error), "{e}");
    let latest = out
        .of_type("time_wait_pressure")
        .filter(|r| r["dport"] == 9501)
        .last()
        .unwrap()["time_wait"]
        .as_f64()
        .unwrap();
    let ours = |d: &&Value| d["dport"] == 9501 && d["netns"] == ns.inode();
    let top = out.summary()["time_wait"]["top"]
        .as_array()
        .unwrap()
        .clone();
    let at_exit = top.iter().find(ours).expect("our destination at exit")["time_wait"]
        .as_f64()
        .unwrap();
    let ss_tw = ss_tw as f64;
    for counted in [latest, at_exit] {
        assert!(
            (counted - ss_tw).abs() <= ss_tw * 0.05,
            "closetrace counted {counted}, ss {ss_tw}"
        );
    }
    assert_eq!(out.summary()["errors"]["connect"]["EADDRNOTAVAIL"], 1);
    assert!(
        top.iter().find(ours).unwrap()["time_wait"]
            .as_u64()
            .unwrap()
            >= 190
    );
}

/// A namespace's IPv6 sockets are listed only once the kernel saw IPv6
/// activity there (`Ipv6Gate`): IPv6 TIME_WAIT made after start-up, past
/// the first sweep, is counted at each reconciliation as ss counts it,
/// not dropped by one that skipped the IPv6 dump. (Here the server's
/// CLOSE_WAIT entries mark the namespace too; a remote server's would not,
/// and the client's FIN_WAIT1 does.)
#[test]
fn ipv6_time_wait_made_after_startup_is_counted() {
    let Some(_k) = kernel_test("ipv6_time_wait_made_after_startup_is_counted") else {
        return;
    };
    let ns = Netns::new("tw6");
    let only = format!("/run/netns/{}", ns.name);
    let tracer = Tracer::start_in(&ns, &["--netns", only.as_str()]);
    // Past the first tick's sweep, which lists every family.
    std::thread::sleep(Duration::from_millis(1500));
    let mut server = Peer::spawn_in(
        &ns,
        &["server", "--listen", "[::1]:9502", "--connections", "0"],
    );
    server.value("LISTENING");
    let mut client = Peer::spawn_in(&ns, &["client", "--connect", "[::1]:9502", "--count", "50"]);
    client.wait_done();
    let ss_tw = ns.ss_timewait_count();
    // Two reconciliations (ticks of a second), each replacing the counts
    // with the kernel's.
    std::thread::sleep(Duration::from_millis(2500));
    let out = tracer.stop();
    let top = out.summary()["time_wait"]["top"]
        .as_array()
        .unwrap()
        .clone();
    let ours = top
        .iter()
        .find(|d| d["dport"] == 9502 && d["daddr"] == "::1")
        .unwrap_or_else(|| panic!("no IPv6 destination in {top:?}"));
    assert!(ss_tw >= 50, "ss saw {ss_tw}");
    assert_eq!(
        ours["time_wait"].as_u64().unwrap() as usize,
        ss_tw,
        "{ours}"
    );
}

/// Acceptance 2: bind() on a port a listener holds names both processes.
#[test]
fn bind_error_names_the_holder() {
    let Some(_k) = kernel_test("bind_error_names_the_holder") else {
        return;
    };
    let ns = Netns::new("bind");
    let tracer = Tracer::start_in(&ns, &[]);
    let mut holder = Peer::spawn_in(&ns, &["server", "--listen", SERVER]);
    holder.value("LISTENING");
    let mut binder = Peer::spawn_in(&ns, &["bind", "--addr", SERVER]);
    assert_eq!(binder.number("ERROR"), 98, "EADDRINUSE");
    let out = tracer.stop();
    let e = out
        .of_type("bind_error")
        .next()
        .expect("a bind_error record");
    assert_eq!(e["pid"], binder.pid());
    assert_eq!(e["errno"], "EADDRINUSE");
    assert_eq!(e["sport"], 9501);
    let holders = e["holders"].as_array().unwrap();
    assert!(
        holders
            .iter()
            .any(|h| h["pid"] == holder.pid() && h["state"] == "LISTEN"),
        "the listener's process is named: {e}"
    );
    assert!(e["hint"].as_str().unwrap().contains("SO_REUSEADDR"), "{e}");
}

/// Acceptance 3: backlog 1, never accepts, 20 connections: an overflow for
/// that listener and its process.
#[test]
fn listen_overflow_names_the_listener() {
    let Some(_k) = kernel_test("listen_overflow_names_the_listener") else {
        return;
    };
    let ns = Netns::new("backlog");
    let mut tracer = Tracer::start_in(&ns, &[]);
    let (server, overflow) = support::overflow_a_listener(&ns, &mut tracer, SERVER, 9501);
    let out = tracer.stop();
    let o = overflow.unwrap_or_else(|| panic!("no listen_overflow: {}", out.stderr));
    assert_eq!(o["pid"], server.pid());
    assert_eq!(o["sport"], 9501);
    assert_eq!(o["backlog"], 1);
    assert!(o["dropped"].as_u64().unwrap() > 0, "{o}");
    assert!(out.summary()["listen_overflows"].as_u64().unwrap() >= 1);
    // The client gave up on connects still in SYN_SENT and closed them:
    // closes, not failed connects (see `connect_failed` in the eBPF crate).
    assert_eq!(
        out.of_type("connect_error").count(),
        0,
        "{:?}",
        out.of_type("connect_error").collect::<Vec<_>>()
    );
}

/// connect(AF_UNSPEC) aborts connects still in SYN_SENT (their SYNs are
/// dropped by a full listener): the kernel takes them to CLOSE in the
/// caller before it sets their error, as a failed connect() does, but with
/// their SYN in flight. No `connect_error`, though each transition is seen.
#[test]
fn an_aborted_connect_is_not_a_failed_one() {
    let Some(_k) = kernel_test("an_aborted_connect_is_not_a_failed_one") else {
        return;
    };
    let ns = Netns::new("unspec");
    let only = format!("/run/netns/{}", ns.name);
    let tracer = Tracer::start_in(&ns, &["--netns", &only, "--states"]);
    let mut server = Peer::spawn_in(
        &ns,
        &[
            "server",
            "--listen",
            SERVER,
            "--backlog",
            "1",
            "--no-accept",
        ],
    );
    server.value("LISTENING");
    let aborts = ["--count", "5", "--abort-after-ms", "200"];
    let mut client = Peer::spawn_in(
        &ns,
        &[&["client", "--connect", SERVER][..], &aborts].concat(),
    );
    client
        .lines
        .wait_for(Duration::from_secs(20), |l| l == "DONE")
        .expect("the client finished");
    let pending = client.lines.seen.iter().filter(|l| *l == "PENDING").count();
    assert!(pending > 0, "no connect was still in SYN_SENT when aborted");
    let out = tracer.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let mine = |r: &&Value| r["pid"] == client.pid();
    let aborted = out
        .of_type("state")
        .filter(mine)
        .filter(|r| r["old"] == "SYN_SENT" && r["new"] == "CLOSE")
        .count();
    assert_eq!(aborted, pending);
    let errors: Vec<&Value> = out.of_type("connect_error").collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        out.summary()["errors"]["connect"]["EADDRNOTAVAIL"],
        Value::Null
    );
}

/// A client bound to a fixed port reconnects to where that port's last
/// connection sits in TIME_WAIT: connect() fails with EADDRNOTAVAIL
/// although the socket has its port. Reported with no syscall hook at all,
/// from the transition the failure makes; with `--states`, that transition
/// is written, and is not taken for the client closing its socket.
#[test]
fn bound_port_in_time_wait_is_eaddrnotavail_without_syscall_hooks() {
    let Some(_k) = kernel_test("bound_port_in_time_wait_is_eaddrnotavail_without_syscall_hooks")
    else {
        return;
    };
    let ns = narrow_netns("boundtw");
    // With timestamps, connect() on a bound port takes over a TIME_WAIT of
    // the same four-tuple (tcp_twsk_unique), whatever tcp_tw_reuse says, so
    // whether it failed depended on the server closing its end before the
    // client reconnected. Without them, the TIME_WAIT always refuses.
    ns.sysctl("net/ipv4/tcp_timestamps", "0");
    let (_ns, tracer, _server, mut client) = connect_until_error(
        ns,
        &["--no-syscall-hooks", "--states"],
        &["--source-port", "40100", "--count", "2"],
    );
    assert_eq!(client.number("ERROR"), 99, "EADDRNOTAVAIL");
    let out = tracer.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let errors: Vec<&Value> = out.of_type("connect_error").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0];
    assert_eq!(e["pid"], client.pid(), "{e}");
    assert_eq!(e["errno"], "EADDRNOTAVAIL");
    assert_eq!(
        (e["daddr"].as_str(), e["dport"].as_u64()),
        (Some("127.0.0.1"), Some(9501))
    );
    assert_eq!(out.summary()["errors"]["connect"]["EADDRNOTAVAIL"], 1);
    let mine = |r: &&Value| r["pid"] == client.pid();
    let failed: Vec<&Value> = out
        .of_type("state")
        .filter(mine)
        .filter(|r| r["old"] == "SYN_SENT" && r["new"] == "CLOSE")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    // The first connection's close, which put its port in TIME_WAIT, and
    // nothing for the connect that failed.
    let closes: Vec<&str> = out
        .of_type("close")
        .filter(mine)
        .filter_map(|c| c["state"].as_str())
        .collect();
    assert_eq!(closes, ["ESTABLISHED"]);
}

/// Acceptance 4: the server closes first, so TIME_WAIT sits on the server:
/// counted there, attributed to the server, no pressure on the client side.
#[test]
fn server_side_time_wait_is_not_client_pressure() {
    let Some(_k) = kernel_test("server_side_time_wait_is_not_client_pressure") else {
        return;
    };
    let ns = narrow_netns("srvtw");
    // Only this namespace, as in the test above.
    let only = format!("/run/netns/{}", ns.name);
    let tracer = Tracer::start_in(&ns, &["--netns", &only]);
    let mut server = Peer::spawn_in(
        &ns,
        &[
            "server",
            "--listen",
            SERVER,
            "--connections",
            "150",
            "--no-read",
        ],
    );
    server.value("LISTENING");
    let mut client = Peer::spawn_in(
        &ns,
        &[
            "client",
            "--connect",
            SERVER,
            "--count",
            "150",
            "--silent",
            "--wait-eof",
        ],
    );
    client.wait_done();
    server.wait_done();
    // A reconciliation after the churn (they run once a second).
    std::thread::sleep(Duration::from_millis(2500));
    let ss_tw = ns.ss_timewait_count();
    let out = tracer.stop();
    // Fewer than 150: with 200 client ports, a reused port's SYN ends the
    // server's TIME_WAIT socket for that 4-tuple. What counts is agreement.
    assert!(
        ss_tw >= 50,
        "the server holds the TIME_WAIT sockets: ss saw {ss_tw}"
    );
    assert_eq!(
        out.of_type("time_wait_pressure").count(),
        0,
        "no pressure anywhere"
    );
    let by = &out.summary()["time_wait"]["by_process"];
    let srv = by
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == server.pid())
        .unwrap_or_else(|| panic!("server not credited: {by}"));
    let n = srv["time_wait"].as_u64().unwrap() as f64;
    assert!(
        (n - ss_tw as f64).abs() <= ss_tw as f64 * 0.05,
        "counted {n}, ss {ss_tw}"
    );
    assert!(
        by.as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != client.pid()),
        "the client left no TIME_WAIT: {by}"
    );
    // Kept out of the destinations (one line per client port, before),
    // shown apart on the service port.
    let tw = &out.summary()["time_wait"];
    let in_ns = |d: &&Value| d["netns"] == ns.inode();
    assert_eq!(
        tw["top"].as_array().unwrap().iter().filter(in_ns).count(),
        0,
        "no destination counts the server's TIME_WAIT: {tw}"
    );
    let served = tw["server_side"]
        .as_array()
        .and_then(|v| v.iter().find(in_ns))
        .unwrap_or_else(|| panic!("no server-side TIME_WAIT: {tw}\n{}", out.stderr));
    assert_eq!(served["port"], 9501);
    let n = served["time_wait"].as_f64().unwrap();
    assert!(
        (n - ss_tw as f64).abs() <= ss_tw as f64 * 0.05,
        "server side {n}, ss {ss_tw}"
    );
}
