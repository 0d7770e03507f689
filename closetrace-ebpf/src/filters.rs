//! What the programs skip or pass: `--netns`, `--cgroup`, the default
//! mode's scanned namespace and watched sockets, owner-only transitions.
use closetrace_common::{Config, tcp_state::*};

use crate::maps::{CGROUPS, WATCH};

/// `--netns` and `--cgroup`: a socket's namespace and cgroup never change,
/// so a socket outside them is dropped before any bookkeeping.
#[inline(always)]
pub(crate) fn outside(cfg: &Config, netns: u32, cgroup: u64) -> bool {
    (cfg.filter_netns != 0 && netns != cfg.filter_netns)
        || (cfg.filter_cgroups != 0 && unsafe { CGROUPS.get(cgroup) }.is_none())
}

/// CLOSE_WAIT sockets in this namespace are found by userspace scans.
#[inline(always)]
pub(crate) fn scanned(cfg: &Config, netns: u32) -> bool {
    cfg.scan_all_netns != 0 || (cfg.own_netns != 0 && netns == cfg.own_netns)
}

#[inline(always)]
pub(crate) fn watched(sock_id: u64) -> bool {
    unsafe { WATCH.get(sock_id) }.is_some()
}

/// Transitions that only the owning process can cause, so `current` is the owner.
#[inline(always)]
pub(crate) fn caused_by_owner(old: u32, new: u32) -> bool {
    matches!(
        (old, new),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK)
    )
}

/// Transitions userspace may read as an application's close (or a
/// shutdown(2), when the thread is inside one): `closes::infer_close` and
/// `how_left_close_wait`.
#[inline(always)]
pub(crate) fn may_close(old: u32, new: u32) -> bool {
    matches!(
        (old, new),
        (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK) | (LISTEN, CLOSE)
    ) || (new == CLOSE && matches!(old, ESTABLISHED | CLOSE_WAIT | SYN_RECV | SYN_SENT))
}
