//! The kernel's owner table (`SOCKS`) holds the living: a socket leaves it
//! at CLOSE, and nothing enters it after its CLOSE. Under churn a table
//! filled with the dead evicts live owners and makes every insert an
//! eviction.
mod support;

use std::time::Duration;

use support::{Netns, Tracer, kernel_test};

const CHURN: &str = env!("CARGO_BIN_EXE_closetrace-churn");

/// RST churn: the client resets as soon as it is connected, so many
/// children are reset before their server accepts them. Accepting one
/// must not add an entry its CLOSE has already passed.
#[test]
fn churn_leaves_the_owner_table_empty() {
    let Some(_k) = kernel_test("churn_leaves_the_owner_table_empty") else {
        return;
    };
    let ns = Netns::new("owners");
    let tracer = Tracer::start(&[]);
    let connections = 20_000;
    let out = ns
        .exec(CHURN)
        .args(["--mode", "rst", "--connections", &connections.to_string()])
        .output()
        .expect("closetrace-churn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let done = tracer.stop();
    let summary = done.summary();
    let accepted = &summary["transitions"]["LISTEN->SYN_RECV"];
    assert!(
        accepted.as_u64().unwrap_or(0) >= connections,
        "the churn was seen: {summary}"
    );
    let socks = summary["kernel_maps"]["SOCKS"]["entries"]
        .as_u64()
        .expect("SOCKS occupancy in the summary");
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
    let out = churned
        .exec(CHURN)
        .args([
            "--mode",
            "client-close",
            "--connections",
            &connections.to_string(),
        ])
        .output()
        .expect("closetrace-churn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let done = tracer.stop();
    let summary = done.summary();
    let socks = summary["kernel_maps"]["SOCKS"]["entries"]
        .as_u64()
        .expect("SOCKS occupancy in the summary");
    assert!(
        socks < connections / 20,
        "{socks} entries after {connections} connections outside --netns"
    );
}
