//! tcp_close by fentry or kprobe: the application dropped its last
//! reference to a socket.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    programs::{FEntryContext, ProbeContext},
};
use closetrace_common::{CloseRecord, LOST_RINGBUF, RECORD_CLOSE, close_src, flags, tcp_state::*};

use crate::emit::{count, wakeup};
use crate::filters::{outside, scanned, watched};
use crate::kread::{
    Btf, Mem, Probe, current_exiting, current_task, endpoints, existing_id, is_tcp, netns_of,
    sock_cgroup, sock_id, sock_id_read,
};
use crate::maps::{EVENTS, PIDS, config};

pub(crate) fn try_close_fentry(ctx: &FEntryContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let cfg = config();
    // The default mode sends only closes of watched or owner-kept sockets,
    // which have a cookie already: a socket without one is not given one
    // (an atomic on a shared counter) only to be dropped.
    let id = if cfg.stream_all != 0 {
        sock_id(sk)
    } else {
        existing_id(cfg, sk).unwrap_or(0)
    };
    emit_close::<Btf>(sk, id, close_src::FENTRY)
}

pub(crate) fn try_close_kprobe(ctx: &ProbeContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0).ok_or(1)?;
    // No cookie helper for kprobes: read the cookie the state hook generated.
    emit_close::<Probe>(sk, sock_id_read(sk)?, close_src::KPROBE)
}

/// The application dropped its last reference to a TCP socket. `M`: how
/// `sk` may be read (a BTF pointer from fentry, a plain one from kprobe).
#[inline(always)]
pub(crate) fn emit_close<M: Mem>(sk: *const u8, sock_id: u64, src: u32) -> Result<(), i32> {
    let cfg = config();
    let off = &cfg.offsets;
    if sock_id == 0 || !is_tcp::<M>(sk, off) {
        return Ok(());
    }
    let state = M::get::<u8>(sk, off.state)? as u32;
    let netns = netns_of::<M>(sk, off);
    let cgroup = sock_cgroup::<M>(sk, off);
    if outside(cfg, netns, cgroup) {
        return Ok(());
    }
    // The default mode wants only closes that end a leak, as in try_state.
    if cfg.stream_all == 0 && (state != CLOSE_WAIT || (scanned(cfg, netns) && !watched(sock_id))) {
        return Ok(());
    }
    let task = current_task(off);
    // Closes in CLOSE_WAIT end leaks: those pass any filter.
    if state != CLOSE_WAIT && cfg.filter_pids != 0 && unsafe { PIDS.get(task.tgid) }.is_none() {
        return Ok(());
    }
    let ep = endpoints::<M>(sk, off)?;
    let fl = if current_exiting(off) {
        flags::CTX_EXITING
    } else {
        0
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = EVENTS.reserve::<CloseRecord>(0) else {
        count(LOST_RINGBUF);
        return Ok(());
    };
    entry.write(CloseRecord {
        kind: RECORD_CLOSE,
        state,
        close_src: src,
        _pad0: 0,
        ts_ns: now,
        sock_id,
        netns,
        family: ep.family,
        sport: ep.sport,
        dport: ep.dport,
        flags: fl,
        _pad1: [0; 4],
        saddr: ep.saddr,
        daddr: ep.daddr,
        task,
        cgroup,
    });
    entry.submit(wakeup(cfg, size_of::<CloseRecord>()));
    Ok(())
}
