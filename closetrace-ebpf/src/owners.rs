//! Owners learned outside state changes: accept() in the acceptor's
//! context (kept here, sent to userspace with `--states` and lean owners,
//! or not at all with lean owners otherwise: see `Config::lean_owners`),
//! send/recv in the caller's (`--owner-from-io`); and, on kernels before
//! 5.15, threads inside shutdown(2).
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::{BtfTracePointContext, TracePointContext},
};
use closetrace_common::{
    AcceptRecord, Config, EMFILE, ENFILE, LOST_RINGBUF, RECORD_ACCEPT, SockInfo, TaskId, owner_src,
    syscall,
    tcp_state::{CLOSE, ESTABLISHED},
};

use crate::calls::emit_sock_error;
use crate::emit::{count, wakeup};
use crate::filters::outside;
use crate::kread::{
    Btf, Probe, SYSCALL_RET, current_start, current_task, is_tcp, netns_of, read, same_start,
    sock_cgroup, sock_id, sock_id_read, socket_of_fd,
};
use crate::maps::{EVENTS, IN_SHUTDOWN, OUT_OF_FDS_LAST, SOCKS, config};

/// accept() and accept4() return the new socket's fd in the acceptor's
/// context: the acceptor owns it (each prefork worker its own sockets),
/// learned once per connection instead of per message.
pub(crate) fn try_accept(ctx: &TracePointContext) -> Result<(), i32> {
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET)? };
    if ret < 0 {
        return out_of_fds((-ret) as u32);
    }
    let cfg = config();
    // Lean owners: an accepted socket's owner matters only if it leaks,
    // and then its holders name it; with `--states`, userspace keeps it.
    if cfg.lean_owners != 0 && cfg.stream_all == 0 {
        return Ok(());
    }
    let off = &cfg.offsets;
    let Some(sk) = socket_of_fd(ret as u32, off) else {
        return Ok(());
    };
    if !is_tcp::<Probe>(sk, off) {
        return Ok(());
    }
    // The state hook asked for the cookie at the child's first transition;
    // a classic tracepoint cannot call the helper, so read what it made.
    // A socket outside `--netns`/`--cgroup` is skipped by the state
    // program, its CLOSE included: an entry made here would never go.
    let filtered = cfg.filter_netns != 0 || cfg.filter_cgroups != 0;
    if filtered
        && outside(
            cfg,
            netns_of::<Probe>(sk, off),
            sock_cgroup::<Probe>(sk, off),
        )
    {
        return Ok(());
    }
    let sock_id = sock_id_read(sk)?;
    if sock_id == 0 {
        return Ok(());
    }
    let state = u32::from(read::<u8>(sk, off.state)?);
    if state == CLOSE {
        // Reset before it was accepted: its end already passed, and an
        // entry now would outlive it.
        return Ok(());
    }
    let owner = current_task(off);
    if cfg.lean_owners != 0 {
        return send_acceptor(cfg, sock_id, state, owner);
    }
    // With --states every child has an entry since LISTEN -> SYN_RECV,
    // and otherwise one that left ESTABLISHED before it was accepted (into
    // CLOSE_WAIT, which findings keep): update it in place. Otherwise it
    // is usually new: insert without looking first (a miss costs as much
    // again). A refused NOEXIST insert on an LRU map still takes and
    // returns a free node, so it is not the way to find one known.
    if (cfg.stream_all != 0 || state != ESTABLISHED) && set_owner(sock_id, owner) {
        return Ok(());
    }
    let info = SockInfo {
        owner,
        owner_src: owner_src::ACCEPT,
        state,
        since_ns: 0,
    };
    if SOCKS.insert(sock_id, info, BPF_NOEXIST as u64).is_err() {
        set_owner(sock_id, owner);
    }
    Ok(())
}

/// `--states` with lean owners: the acceptor goes to userspace, which
/// keeps every socket's owner there.
#[inline(always)]
fn send_acceptor(cfg: &Config, sock_id: u64, state: u32, owner: TaskId) -> Result<(), i32> {
    let Some(mut entry) = EVENTS.reserve::<AcceptRecord>(0) else {
        count(LOST_RINGBUF);
        return Ok(());
    };
    let r = entry.as_mut_ptr();
    unsafe {
        (*r).kind = RECORD_ACCEPT;
        (*r).state = state;
        (*r).sock_id = sock_id;
        (*r).task = owner;
    }
    entry.submit(wakeup(cfg, size_of::<AcceptRecord>()));
    Ok(())
}

/// The acceptor as the owner of a socket already in `SOCKS`; false when
/// it is not there.
#[inline(always)]
fn set_owner(sock_id: u64, owner: TaskId) -> bool {
    let Some(p) = SOCKS.get_ptr_mut(sock_id) else {
        return false;
    };
    unsafe {
        (*p).owner = owner;
        (*p).owner_src = owner_src::ACCEPT;
    }
    true
}

/// accept() failed for want of fds: reported (at most once a second per
/// CPU), for the leak diagnosis's fd budget.
#[inline(always)]
fn out_of_fds(errno: u32) -> Result<(), i32> {
    if errno != EMFILE && errno != ENFILE {
        return Ok(());
    }
    let Some(last) = OUT_OF_FDS_LAST.get_ptr_mut(0) else {
        return Ok(());
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(unsafe { *last }) < 1_000_000_000 {
        return Ok(());
    }
    unsafe { *last = now };
    emit_sock_error(syscall::ACCEPT, errno, 0, 0, [0; 16])
}

/// send/recv on a TCP socket run in the caller's context: the caller holds it.
pub(crate) fn try_io(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if ret < 0 {
        return Ok(());
    }
    let cfg = config();
    let off = &cfg.offsets;
    if !is_tcp::<Btf>(sk, off) {
        return Ok(());
    }
    // As in accept: what the state program skips must not enter the table.
    let filtered = cfg.filter_netns != 0 || cfg.filter_cgroups != 0;
    if filtered && outside(cfg, netns_of::<Btf>(sk, off), sock_cgroup::<Btf>(sk, off)) {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        return Ok(());
    }
    let sock_id = sock_id(sk);
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
            };
            let _ = SOCKS.insert(sock_id, info, BPF_ANY as u64);
        }
    }
    Ok(())
}

/// Older kernels (no `Config::task_regs`): threads inside shutdown(2),
/// for the state program's `in_shutdown`.
pub(crate) fn shutdown_mark(enter: bool) -> Result<(), i32> {
    let tid = bpf_get_current_pid_tgid() as u32;
    if enter {
        IN_SHUTDOWN.insert(tid, 1, BPF_ANY as u64)
    } else {
        IN_SHUTDOWN.remove(tid)
    }
}
