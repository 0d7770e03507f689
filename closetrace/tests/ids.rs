//! Kernel tests for how sockets are named: by cookie where tracing
//! programs may ask for it (5.12+), else by a keyed hash; either way one
//! id per socket across all its records, and never a kernel address.
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Peer, Tracer, connect_once, kernel_test, keyed_ids, kill};

/// The keyed hashes have bit 62 set and 63 clear (a kernel address has
/// its top bits set); cookies are a counter.
const KEYED_BIT: u64 = 1 << 62;

fn is_keyed_id(id: u64) -> bool {
    id & KEYED_BIT != 0 && id < 1 << 63
}

/// One connection's records with `--states`: every record about the
/// server's socket carries one id, the client's another. With cookies it
/// is sock_diag's cookie (`ss -e`); with keyed hashes it is not, and has
/// the keyed bit.
#[test]
fn a_sockets_records_share_one_opaque_id() {
    let Some(_k) = kernel_test("a_sockets_records_share_one_opaque_id") else {
        return;
    };
    let mut tracer = Tracer::start(&["--states", "--close-wait-threshold", "1s"]);
    let mut server = Peer::spawn(&["server", "--never-close"]);
    let port = server.value("LISTENING");
    connect_once(port);
    tracer
        .wait_record(Duration::from_secs(10), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port
        })
        .expect("the leak");
    let diag = closetrace_core::host::sockets::tcp_sockets_both(
        u32::MAX,
        closetrace_core::host::sockets::Ext::NONE,
    )
    .unwrap();
    let cookie = diag
        .iter()
        .find(|s| s.sport == port && s.dport != 0)
        .expect("the server's socket in sock_diag")
        .cookie;
    let ready = tracer.ready.clone();
    let out = tracer.stop();
    let server_side: Vec<&Value> = out
        .records
        .iter()
        .filter(|r| r["sport"] == port && r["dport"] != 0)
        .collect();
    let client_side: Vec<&Value> = out.records.iter().filter(|r| r["dport"] == port).collect();
    let kinds = |v: &[&Value]| v.iter().map(|r| r["type"].clone()).collect::<Vec<_>>();
    assert!(server_side.len() >= 3, "{:?}", kinds(&server_side));
    assert!(client_side.len() >= 3, "{:?}", kinds(&client_side));
    let ids = |v: &[&Value]| {
        let mut ids: Vec<u64> = v.iter().map(|r| r["sock"].as_u64().unwrap()).collect();
        ids.dedup();
        ids
    };
    let (s, c) = (ids(&server_side), ids(&client_side));
    assert_eq!(s.len(), 1, "one id for the server's socket: {s:?}");
    assert_eq!(c.len(), 1, "one id for the client's socket: {c:?}");
    assert_ne!(s, c);
    if keyed_ids(&ready) {
        assert!(
            s[0] & KEYED_BIT != 0 && c[0] & KEYED_BIT != 0,
            "{s:?} {c:?}"
        );
        assert_ne!(s[0], cookie);
    } else {
        assert_eq!(s[0], cookie, "the id is the cookie ss -e shows");
    }
}

/// Keyed ids forced on this kernel (as an older one needs them): the
/// default mode still finds a leak with its holder and fd, from its
/// transitions, says why in `ready`, and names how it ends.
#[test]
fn keyed_ids_still_find_leaks_with_their_holders() {
    let Some(_k) = kernel_test("keyed_ids_still_find_leaks_with_their_holders") else {
        return;
    };
    let mut tracer = Tracer::start_env(
        &[("CLOSETRACE_SOCKET_IDS", "keyed")],
        &["--close-wait-threshold", "1s"],
    );
    assert!(keyed_ids(&tracer.ready), "{}", tracer.ready);
    let mut server = Peer::spawn(&["server", "--never-close"]);
    let port = server.value("LISTENING");
    connect_once(port);
    let fd = server.number("FD");
    let leak = tracer
        .wait_record(Duration::from_secs(10), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port
        })
        .expect("the leak, from its transitions");
    assert_eq!(leak["pid"], server.pid());
    assert_eq!(leak["holders"][0]["fd"], fd, "{leak}");
    assert_eq!(
        leak["recv_q"], 0,
        "found in sock_diag by its endpoints: {leak}"
    );
    let id = leak["sock"].as_u64().unwrap();
    assert!(is_keyed_id(id), "{leak}");
    kill(server.pid());
    let resolved = tracer
        .wait_record(Duration::from_secs(5), |r| {
            r["type"] == "close_wait_resolved" && r["sport"] == port
        })
        .expect("resolved");
    assert_eq!(resolved["how"], "process_exit", "{resolved}");
    assert_eq!(resolved["sock"], id);
}
