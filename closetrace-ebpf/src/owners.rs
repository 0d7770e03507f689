//! Owners learned outside state changes: send/recv in the caller's
//! context, a peer's reset, and threads inside shutdown(2).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    programs::BtfTracePointContext,
};
use closetrace_common::{SockInfo, flags, owner_src};

use crate::kread::{current_start, current_task, is_tcp, same_start};
use crate::maps::{IN_SHUTDOWN, SOCKS, config};

/// send/recv on a TCP socket run in the caller's context: the caller holds it.
pub(crate) fn try_io(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if ret < 0 {
        return Ok(());
    }
    let off = &config().offsets;
    if !is_tcp(sk, off) {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        return Ok(());
    }
    let sock_id = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    match SOCKS.get_ptr_mut(sock_id) {
        // The common case: the owner is already right and seen first-hand.
        // Keep it a read.
        // A pid alone is not enough: a new process may reuse a dead owner's.
        Some(p)
            if unsafe {
                (*p).owner.tgid == tgid
                    && (*p).owner_src != owner_src::LISTENER
                    && same_start((*p).owner.start_ns, current_start(off))
            } => {}
        Some(p) => unsafe {
            (*p).owner = current_task(off);
            (*p).owner_src = owner_src::IO;
        },
        None => {
            let info = SockInfo {
                owner: current_task(off),
                owner_src: owner_src::IO,
                state: 0,
                since_ns: 0,
                flags: 0,
                _pad: 0,
            };
            let _ = SOCKS.insert(sock_id, info, BPF_ANY as u64);
        }
    }
    Ok(())
}

/// Remember that the peer reset this socket, so the transition to CLOSE that
/// follows is not mistaken for the application closing it.
pub(crate) fn try_reset(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let sock_id = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    if let Some(p) = SOCKS.get_ptr_mut(sock_id) {
        unsafe { (*p).flags |= flags::SOCK_RESET as u32 };
    }
    Ok(())
}

pub(crate) fn shutdown_mark(enter: bool) -> Result<(), i32> {
    let tid = bpf_get_current_pid_tgid() as u32;
    if enter {
        IN_SHUTDOWN.insert(tid, 1, BPF_ANY as u64)
    } else {
        IN_SHUTDOWN.remove(tid)
    }
}
