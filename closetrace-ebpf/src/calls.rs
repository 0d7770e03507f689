//! connect() and bind() failures: EADDRNOTAVAIL and EADDRINUSE, with the
//! caller and the address it wanted. bind()'s arguments are stashed per
//! CPU at entry and looked at again at exit; connect() needs no syscall
//! hook (see `connect_failed`).
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    programs::TracePointContext,
};
use closetrace_common::{
    AF_INET, AF_INET6, EADDRINUSE, EADDRNOTAVAIL, LOST_CALL_ARGS, LOST_RINGBUF, PendingCall,
    RECORD_SOCK_ERROR, SockErrorRecord, syscall,
};

use crate::emit::{count, wakeup};
use crate::filters::outside;
use crate::kread::{
    Btf, Mem, SYSCALL_ARG1, SYSCALL_ARG2, SYSCALL_RET, current_netns, current_regs, current_task,
    endpoints, read,
};
use crate::maps::{CALLS, EVENTS, PIDS, config};

/// A `SYN_SENT -> CLOSE` in process context: a failed connect() when
/// nothing else explains it. tcp_v4_connect() and tcp_v6_connect() enter
/// SYN_SENT before they pick the local port, and on failure (no port free
/// toward this destination, or a bound port whose 4-tuple is taken) go
/// back to CLOSE in the caller, with no error pending, no shutdown and no
/// SYN sent. Every other way out of SYN_SENT sets one of them first: a
/// reset, a timeout or an ICMP error sets `sk_err`, close() sets
/// `sk_shutdown`, and connect(AF_UNSPEC) (tcp_disconnect) sets `sk_err`
/// only after the transition, but leaves the SYN in flight until then.
/// (The local port tells nothing: the tracepoint fires after an
/// auto-bound port is released.) This replaces two syscall tracepoints
/// that ran on every connect() on the host.
#[inline(always)]
pub(crate) fn connect_failed(sk: *const u8) -> bool {
    let off = &config().offsets;
    matches!(Btf::get::<i32>(sk, off.sk_err), Ok(0))
        && matches!(Btf::get::<u8>(sk, off.sk_shutdown), Ok(0))
        // A tcp_sock field, past the BTF type `struct sock`: a probe read.
        && matches!(read::<u32>(sk, off.packets_out), Ok(0))
}

/// A failed connect (see `connect_failed`) as a `connect_error` record.
#[inline(always)]
pub(crate) fn report_failed_connect(sk: *const u8) -> Result<(), i32> {
    let ep = endpoints::<Btf>(sk, &config().offsets)?;
    emit_sock_error(
        syscall::CONNECT,
        EADDRNOTAVAIL,
        ep.family,
        ep.dport,
        ep.daddr,
    )
}

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
    let reported = errno == EADDRNOTAVAIL || errno == EADDRINUSE;
    let call = if let Some(regs) = current_regs() {
        if !reported {
            return Ok(());
        }
        Some(call_from_regs(regs, which)?)
    } else {
        // The stash is cleared whatever the outcome.
        let Some(call) = take_call(which) else {
            return Ok(());
        };
        if !reported {
            return Ok(());
        }
        call
    };
    let Some(call) = call else {
        count(LOST_CALL_ARGS);
        return Ok(());
    };
    let Some((family, port, addr)) = wanted_address(&call)? else {
        return Ok(());
    };
    emit_sock_error(which, errno, family, port, addr)
}

/// The call's arguments from the caller's registers, at its exit (5.15+:
/// no entry hook, see `Config::task_regs`).
#[inline(always)]
fn call_from_regs(regs: *const u8, which: u32) -> Result<PendingCall, i32> {
    let off = &config().offsets;
    Ok(PendingCall {
        syscall: which,
        tid: bpf_get_current_pid_tgid() as u32,
        uaddr: Btf::get(regs, off.regs_arg1)?,
        len: Btf::get(regs, off.regs_arg2)?,
    })
}

/// Before 5.15, this thread's stashed call, cleared: `Some(None)` when the slot holds
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
