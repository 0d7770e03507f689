//! Counting and submitting: per-CPU counters, and the wakeup policy for
//! records submitted to the ring buffer.
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use closetrace_common::{AF_INET6, Config, STATE_SLOTS, netns_ipv6_slot, netns_slot};

use crate::maps::{EVENTS, LOST, NETNS_ACTIVITY, TRANSITIONS};

#[inline(always)]
pub(crate) fn count_transition(old: u32, new: u32) {
    let slot = (old % STATE_SLOTS) * STATE_SLOTS + new % STATE_SLOTS;
    if let Some(n) = TRANSITIONS.get_ptr_mut(slot) {
        // Per-CPU slot, as for `LOST`.
        unsafe { *n += 1 };
    }
}

/// A socket of namespace `netns` entered CLOSE_WAIT: the scans must read it.
#[inline(always)]
pub(crate) fn mark_netns(netns: u32) {
    bump(NETNS_ACTIVITY.get_ptr_mut(netns_slot(netns)));
}

/// A socket of namespace `netns` entered a state the scans list, or that
/// leads to one (see `netns_ipv6_slot`): if it is IPv6, its namespace's
/// IPv6 sockets must be listed too.
#[inline(always)]
pub(crate) fn mark_ipv6(family: Result<u16, i32>, netns: u32) {
    if matches!(family, Ok(AF_INET6)) {
        bump(NETNS_ACTIVITY.get_ptr_mut(netns_ipv6_slot(netns)));
    }
}

#[inline(always)]
fn bump(slot: Option<*mut u64>) {
    if let Some(n) = slot {
        // Per-CPU slot, as for `LOST`.
        unsafe { *n += 1 };
    }
}

/// Submit flags for a reserved record of `size` bytes: batch wakeups (see
/// `Config::wakeup_bytes`). Wake the reader when this record carries the
/// backlog across a multiple of the threshold, not on every record above
/// it: each forced wakeup is an interrupt, and a reader that is already
/// awake does not need another.
#[inline(always)]
pub(crate) fn wakeup(cfg: &Config, size: usize) -> u64 {
    let step = cfg.wakeup_bytes as u64;
    if step == 0 {
        return 0;
    }
    // Reserved records count as available: this one is included.
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let before = avail.saturating_sub(size as u64 + 8);
    if avail / step != before / step {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub(crate) fn count(slot: u32) {
    if let Some(n) = LOST.get_ptr_mut(slot) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU.
        unsafe { *n += 1 };
    }
}
