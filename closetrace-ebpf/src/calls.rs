//! connect() and bind(): arguments are stashed per CPU at entry and looked
//! at again at exit, where only EADDRNOTAVAIL and EADDRINUSE produce a
//! record, with the caller and the address it wanted.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    programs::TracePointContext,
};
use closetrace_common::{
    AF_INET, AF_INET6, EADDRINUSE, EADDRNOTAVAIL, LOST_CALL_ARGS, LOST_RINGBUF, PendingCall,
    RECORD_SOCK_ERROR, SockErrorRecord,
};

use crate::emit::{count, wakeup};
use crate::filters::outside;
use crate::kread::{SYSCALL_ARG1, SYSCALL_ARG2, SYSCALL_RET, current_netns, current_task};
use crate::maps::{CALLS, EVENTS, PIDS, config};

pub(crate) fn stash_call(ctx: &TracePointContext, which: u32) -> Result<(), i32> {
    let Some(slot) = CALLS.get_ptr_mut(0) else {
        return Ok(());
    };
    let uaddr: u64 = unsafe { ctx.read_at(SYSCALL_ARG1)? };
    let len: u64 = unsafe { ctx.read_at(SYSCALL_ARG2)? };
    let tid = bpf_get_current_pid_tgid() as u32;
    unsafe {
        *slot = PendingCall {
            syscall: which,
            tid,
            uaddr,
            len,
        }
    };
    Ok(())
}

pub(crate) fn finish_call(ctx: &TracePointContext, which: u32) -> Result<(), i32> {
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET)? };
    let errno = (-ret) as u32;
    let Some(call) = take_call(which) else {
        return Ok(());
    };
    if errno != EADDRNOTAVAIL && errno != EADDRINUSE {
        return Ok(());
    }
    let Some(call) = call else {
        count(LOST_CALL_ARGS);
        return Ok(());
    };
    let Some((family, port, addr)) = wanted_address(&call)? else {
        return Ok(());
    };
    emit_sock_error(which, errno, family, port, addr)
}

/// This thread's stashed call, cleared: `Some(None)` when the slot holds
/// another call (ours was overwritten), `None` without a slot.
#[inline(always)]
fn take_call(which: u32) -> Option<Option<PendingCall>> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let slot = CALLS.get_ptr_mut(0)?;
    let call = unsafe { *slot };
    let mine = call.tid == tid && call.syscall == which;
    if mine {
        unsafe { (*slot).tid = 0 };
    }
    Some(mine.then_some(call))
}

/// The inet address the caller passed: (family, port, address), or None
/// for other families and short sockaddrs. It is still in the caller's
/// memory at exit.
#[inline(always)]
fn wanted_address(call: &PendingCall) -> Result<Option<(u16, u16, [u8; 16])>, i32> {
    if call.len < 16 {
        return Ok(None);
    }
    let sa: [u8; 28] = if call.len >= 28 {
        unsafe { bpf_probe_read_user(call.uaddr as *const [u8; 28]) }?
    } else {
        let head: [u8; 16] = unsafe { bpf_probe_read_user(call.uaddr as *const [u8; 16]) }?;
        let mut full = [0u8; 28];
        full[..16].copy_from_slice(&head);
        full
    };
    let family = u16::from_ne_bytes([sa[0], sa[1]]);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => addr[..4].copy_from_slice(&sa[4..8]),
        AF_INET6 => addr.copy_from_slice(&sa[8..24]),
        _ => return Ok(None),
    }
    Ok(Some((family, u16::from_be_bytes([sa[2], sa[3]]), addr)))
}

/// A failed call's record, if the caller passes `--pid`, `--netns` and
/// `--cgroup`.
#[inline(always)]
pub(crate) fn emit_sock_error(
    which: u32,
    errno: u32,
    family: u16,
    port: u16,
    addr: [u8; 16],
) -> Result<(), i32> {
    let cfg = config();
    let task = current_task(&cfg.offsets);
    if cfg.filter_pids != 0 && unsafe { PIDS.get(task.tgid) }.is_none() {
        return Ok(());
    }
    let netns = current_netns(&cfg.offsets);
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if outside(cfg, netns, cgroup) {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = EVENTS.reserve::<SockErrorRecord>(0) else {
        count(LOST_RINGBUF);
        return Ok(());
    };
    entry.write(SockErrorRecord {
        kind: RECORD_SOCK_ERROR,
        syscall: which,
        errno,
        family,
        port,
        ts_ns: now,
        addr,
        task,
        netns,
        _pad: 0,
        cgroup,
    });
    entry.submit(wakeup(cfg, size_of::<SockErrorRecord>()));
    Ok(())
}
