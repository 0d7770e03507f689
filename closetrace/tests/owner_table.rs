//! The kernel's owner table (`SOCKS`) holds the living: a socket leaves it
//! at CLOSE, and nothing enters it after its CLOSE. Under churn a table
//! filled with the dead evicts live owners and makes every insert an
//! eviction. Unless the kernel filters by owner (`--pid`), an open
//! connection has no entry at all: owners are kept only where a finding
//! needs one.
mod support;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use support::{Netns, Tracer, kernel_test};

const CHURN: &str = env!("CARGO_BIN_EXE_closetrace-churn");

/// `connections` of closetrace-churn in `mode` inside `ns`, while `tracer`
/// runs; then its summary, once the last events are in.
fn churn_then_summary(tracer: Tracer, ns: &Netns, mode: &str, connections: u64) -> Value {
    let out = ns
        .exec(CHURN)
        .args(["--mode", mode, "--connections", &connections.to_string()])
        .output()
        .expect("closetrace-churn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    tracer.stop().summary().clone()
}

fn socks_entries(summary: &Value) -> u64 {
    summary["kernel_maps"]["SOCKS"]["entries"]
        .as_u64()
        .expect("SOCKS occupancy in the summary")
}

/// RST churn: the client resets as soon as it is connected, so many
/// children are reset before their server accepts them. Accepting one
/// must not add an entry its CLOSE has already passed.
#[test]
fn churn_leaves_the_owner_table_empty() {
    let Some(_k) = kernel_test("churn_leaves_the_owner_table_empty") else {
        return;
    };
    let ns = Netns::new("owners");
    let connections = 20_000;
    let summary = churn_then_summary(Tracer::start(&[]), &ns, "rst", connections);
    let accepted = &summary["transitions"]["LISTEN->SYN_RECV"];
    assert!(
        accepted.as_u64().unwrap_or(0) >= connections,
        "the churn was seen: {summary}"
    );
    let socks = socks_entries(&summary);
    // Whatever else the host runs keeps a few; the dead would be thousands.
    assert!(
        socks < connections / 20,
        "{socks} entries left after {connections} connections closed"
    );
}

/// `--netns` of another namespace: sockets accepted outside it are never
/// seen to close, so they must never enter the table either. With keyed
/// ids (older kernels), where every socket has an id at accept; with
/// cookies, one outside the selection usually has none yet.
#[test]
fn sockets_outside_the_selection_stay_out_of_the_owner_table() {
    let Some(_k) = kernel_test("sockets_outside_the_selection_stay_out_of_the_owner_table") else {
        return;
    };
    let watched = Netns::new("owners-sel");
    let churned = Netns::new("owners-out");
    let inode = watched.inode().to_string();
    let tracer = Tracer::start_env(&[("CLOSETRACE_SOCKET_IDS", "keyed")], &["--netns", &inode]);
    let connections = 5_000;
    let summary = churn_then_summary(tracer, &churned, "client-close", connections);
    let socks = socks_entries(&summary);
    assert!(
        socks < connections / 20,
        "{socks} entries after {connections} connections outside --netns"
    );
}

/// The owner entries `flags` leave for `n` loopback connections held open
/// (both ends), read from the summary while they still are.
fn entries_for_open_connections(flags: &[&str], n: usize) -> u64 {
    let tracer = Tracer::start(flags);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("listener address");
    let held: Vec<(TcpStream, TcpStream)> = (0..n)
        .map(|_| {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            (client, server)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let summary = tracer.stop().summary().clone();
    drop(held);
    socks_entries(&summary)
}

/// Lean owners: the kernel learns no owner at connect() or accept() unless
/// it filters by owner (`--pid`), so connections that are only open take
/// no entry; with `--states`, userspace keeps their owners from the stream.
#[test]
fn open_connections_take_owner_entries_only_when_filtering_by_owner() {
    let Some(_k) = kernel_test("open_connections_take_owner_entries_only_when_filtering_by_owner")
    else {
        return;
    };
    let n = 200;
    let default = entries_for_open_connections(&[], n);
    let states = entries_for_open_connections(&["--states"], n);
    let me = std::process::id().to_string();
    let followed = entries_for_open_connections(&["--pid", &me], n);
    // Whatever else the host runs may add a few.
    for (mode, kept) in [("the default mode", default), ("--states", states)] {
        assert!(
            kept < n as u64 / 10,
            "{mode} kept {kept} owners for {n} open connections"
        );
    }
    assert!(
        followed >= 2 * n as u64,
        "--pid kept {followed} owners for {n} open connections (two ends each)"
    );
}
