//! What reads the running system: sock_diag, fd tables, /proc, cgroups,
//! port sysctls and privileges. Blocking I/O lives here and only here; the
//! coordinator reaches it through the `Host` trait, from a worker thread.
pub mod cgroups;
pub mod filters;
pub mod privileges;
pub mod procs;
pub mod sockets;

use std::collections::HashMap;

use crate::model::Holder;
use crate::model::ports::PortPolicy;
use sockets::{DiagSocket, KernelView, SnapshotError};

/// What the coordinator asks of the running system. Every call blocks
/// (netlink dumps, walks of /proc), so the coordinator never calls these
/// itself: a worker thread does, and hands back the answers.
pub trait Host: Send {
    /// This namespace's CLOSE_WAIT sockets.
    fn close_wait(&mut self) -> Result<Vec<DiagSocket>, SnapshotError>;
    /// This namespace's CLOSE_WAIT sockets with the processes holding them.
    fn close_wait_holders(&mut self) -> Result<KernelView, SnapshotError>;
    /// Every timewait socket (TIME_WAIT, and FIN_WAIT2 handed over early),
    /// one at a time: there can be a hundred thousand.
    fn visit_time_wait(&mut self, visit: &mut dyn FnMut(DiagSocket)) -> Result<(), SnapshotError>;
    /// Listeners, with their drop counters.
    fn listeners(&mut self) -> Result<Vec<DiagSocket>, SnapshotError>;
    /// Socket inode -> every process holding it.
    fn holders(&mut self) -> HashMap<u32, Vec<Holder>>;
    /// Every socket, with its holders (who holds a port a bind() wanted).
    fn everything(&mut self) -> Result<KernelView, SnapshotError>;
    /// Make sure the container names of these cgroups are known to whoever
    /// names containers in records (rescanning cgroupfs if one is new).
    fn learn_containers(&mut self, _cgroups: &[u64]) {}
    /// `--pid`, `--pid-tree`: the processes followed now (pid and start
    /// time), at most once a second; None otherwise.
    fn followed(&mut self) -> Option<Vec<(u32, Option<u64>)>> {
        None
    }
}

/// The ephemeral port range, reserved ports and `tcp_tw_reuse`, from
/// /proc/sys: the network namespace of the thread that reads them.
pub fn port_policy() -> Result<PortPolicy, String> {
    let get = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .map_err(|e| format!("{name}: {e}"))
    };
    PortPolicy::parse(
        &get("ip_local_port_range")?,
        &get("ip_local_reserved_ports").unwrap_or_default(),
        &get("tcp_tw_reuse").unwrap_or_else(|_| "0".into()),
    )
}

/// The running system, as closetrace's own namespace shows it.
pub struct System;

impl Host for System {
    fn close_wait(&mut self) -> Result<Vec<DiagSocket>, SnapshotError> {
        sockets::tcp_sockets_both(sockets::states::CLOSE_WAIT_ONLY, false)
    }

    fn close_wait_holders(&mut self) -> Result<KernelView, SnapshotError> {
        KernelView::take(sockets::states::CLOSE_WAIT_ONLY)
    }

    fn visit_time_wait(&mut self, visit: &mut dyn FnMut(DiagSocket)) -> Result<(), SnapshotError> {
        use closetrace_common::tcp_state::{FIN_WAIT2, TIME_WAIT};
        let states = (1 << TIME_WAIT) | (1 << FIN_WAIT2);
        sockets::visit_tcp_sockets_both(states, false, &mut |s| {
            if s.is_timewait() {
                visit(s);
            }
        })
    }

    fn listeners(&mut self) -> Result<Vec<DiagSocket>, SnapshotError> {
        sockets::tcp_sockets_both(1 << closetrace_common::tcp_state::LISTEN, true)
    }

    fn holders(&mut self) -> HashMap<u32, Vec<Holder>> {
        sockets::socket_holders()
    }

    fn everything(&mut self) -> Result<KernelView, SnapshotError> {
        KernelView::take(sockets::states::ALL)
    }

    fn learn_containers(&mut self, ids: &[u64]) {
        for &id in ids {
            cgroups::container(id);
        }
        cgroups::rescan_missed();
    }
}
