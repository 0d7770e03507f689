//! `inet_sock_set_state`: every TCP state change, counted; the owner kept
//! per socket where something in the kernel needs it (see
//! `Config::lean_owners`); and, for what findings need (or every change
//! with `--states`), a record.
//!
//! The steps are separate functions for reading, and `inline(always)` so
//! the verifier sees one program, as it did when they were one function.
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::BtfTracePointContext,
};
use closetrace_common::{
    Config, LOST_RINGBUF, ListenKey, ListenerInfo, RECORD_STATE, SockInfo, StateRecord, TaskId,
    findings_need, flags, owner_src, tcp_state::*,
};

use crate::calls::{connect_failed, report_failed_connect};
use crate::emit::{count, count_transition, mark_ipv6, mark_netns, wakeup};
use crate::filters::{caused_by_owner, may_close, outside, scanned, watched};
use crate::kread::{
    Btf, Mem, SYS_SHUTDOWN, current_exiting, current_regs, current_task, current_thread, endpoints,
    existing_id, is_tcp, local_port, netns_of, sock_cgroup, sock_id,
};
use crate::maps::{EVENTS, IN_SHUTDOWN, LISTENERS, PIDS, SEEDED_BELOW, SOCKS, config};

/// One transition of one socket, as the hook sees it.
struct Transition {
    sk: *const u8,
    old: u32,
    new: u32,
    cookie: u64,
    /// The current task caused it, so it is the owner (see `caused_by_owner`).
    by_owner: bool,
    /// A connect() that failed in its caller (see `connect_failed`).
    failed_connect: bool,
    tgid: u32,
}

/// Who owns the socket, as far as the maps and this transition tell.
struct Owned {
    /// The socket's id: its cookie, or 0 for a child that has none yet.
    sock_id: u64,
    owner: TaskId,
    src: u32,
    /// The socket's entry before this transition (zeroed when unknown).
    known: SockInfo,
    /// Where that entry lives, to update it in place; null when unknown.
    known_ptr: *mut SockInfo,
}

pub(crate) fn try_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let (old, new) = (old as u32, new as u32);
    let cfg = config();
    let off = &cfg.offsets;
    if !is_tcp::<Btf>(sk, off) {
        return Ok(());
    }
    let filtered = cfg.filter_netns != 0 || cfg.filter_cgroups != 0;
    if filtered && outside(cfg, netns_of::<Btf>(sk, off), sock_cgroup::<Btf>(sk, off)) {
        return Ok(());
    }
    // Hot path: ~7 transitions per connection. In the default mode most of
    // them stop at the count just below; the socket's id, the endpoints
    // and the context facts are read only for what is kept or sent.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Reported in every mode, before the quiet path; kept for the flags.
    let failed_connect = old == SYN_SENT && new == CLOSE && tgid != 0 && connect_failed(sk);
    if failed_connect {
        let _ = report_failed_connect(sk);
    }
    let by_owner = caused_by_owner(old, new) && tgid != 0;
    // Most transitions (SYN_SENT -> ESTABLISHED, an RST's -> CLOSE, ...)
    // neither change the owner nor are sent in the default mode: count them,
    // forget the socket at CLOSE, and stop. Each map operation is a cache
    // miss or two; this keeps them to about one per transition. So does a
    // prompt close of a CLOSE_WAIT socket the scans find and nobody
    // watches: its end is not sent, and its owner would be forgotten at
    // CLOSE (see `sent`).
    // With lean owners a connect() is quiet too: its owner is needed only
    // if the socket leaks, and then its holders name it. So is entering
    // CLOSE_WAIT: the scan its namespace's mark sets off finds the socket,
    // dates it by its tcp_info, and its holders (or, never accepted, its
    // listener's) name it.
    let quiet = cfg.stream_all == 0 && cfg.filter_pids == 0;
    if quiet
        && ((!by_owner && !findings_need(old, new))
            || (cfg.lean_owners != 0 && old == CLOSE && new == SYN_SENT)
            || (cfg.lean_owners != 0
                && new == CLOSE_WAIT
                && scanned(cfg, netns_of::<Btf>(sk, off)))
            || (old == CLOSE_WAIT
                && scanned(cfg, netns_of::<Btf>(sk, off))
                && !existing_id(cfg, sk).is_some_and(watched)))
    {
        count_transition(old, new);
        if new == CLOSE_WAIT {
            let netns = netns_of::<Btf>(sk, off);
            mark_netns(netns);
            mark_ipv6(Btf::get(sk, off.family), netns);
        } else if new == CLOSE {
            forget(cfg, sk);
        }
        return Ok(());
    }
    let cookie = sock_id(sk);
    let t = Transition {
        sk,
        old,
        new,
        cookie,
        by_owner,
        failed_connect,
        tgid,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let task = if by_owner {
        current_task(off)
    } else {
        TaskId::EMPTY
    };
    let listen_key = ListenKey {
        netns: netns_of::<Btf>(sk, off),
        port: local_port::<Btf>(sk, off),
        _pad: 0,
    };
    if new == CLOSE_WAIT || new == FIN_WAIT1 {
        mark_ipv6(Btf::get(sk, off.family), listen_key.netns);
    }
    let o = if cfg.stream_all != 0 && cfg.lean_owners != 0 {
        // `--states` with lean owners: every transition is sent and
        // userspace, which sees them all (and every accept()), keeps the
        // owners; the kernel keeps only listeners, for their children.
        count_transition(old, new);
        let o = owner_told(&t, &listen_key, &task);
        keep_listeners(&t, &o.owner, &listen_key);
        o
    } else {
        let o = owner_of(&t, &listen_key, &task);
        keep_books(&t, &o, &listen_key, now);
        if !sent(cfg, &t, &o, listen_key.netns) {
            return Ok(());
        }
        o
    };
    emit_state(cfg, &t, &o, &task, listen_key.netns, now)
}

/// The owner as this transition alone tells it, with no owner entry: the
/// current task when it caused the transition, a new child's listener's
/// owner, else unknown (userspace fills it in).
#[inline(always)]
fn owner_told(t: &Transition, listen_key: &ListenKey, task: &TaskId) -> Owned {
    let mut o = Owned {
        sock_id: t.cookie,
        owner: *task,
        src: if t.by_owner {
            owner_src::TRANSITION
        } else {
            owner_src::UNKNOWN
        },
        known: SockInfo {
            owner: TaskId::EMPTY,
            owner_src: owner_src::UNKNOWN,
            state: 0,
            since_ns: 0,
        },
        known_ptr: core::ptr::null_mut(),
    };
    if t.old == LISTEN
        && t.new == SYN_RECV
        && let Some(p) = LISTENERS.get_ptr(*listen_key)
    {
        let listener = unsafe { *p };
        // As in `owner_of`: a clone that carries its listener's cookie has
        // no id of its own yet.
        if listener.cookie == t.cookie {
            o.sock_id = 0;
        }
        o.owner = listener.owner;
        o.src = owner_src::LISTENER;
    }
    o
}

/// Drop a closed socket's owner entry. Every entry is made under the id
/// `sock_id` gives, which makes the socket's cookie when it has none: a
/// socket still without one has no entry, and is not given a cookie just
/// to look. With lean owners only listeners and the sockets the start-up
/// snapshot seeded have one: the rest are not looked up (see
/// `SEEDED_BELOW`; a listener's close is not quiet, and `keep_books`
/// drops its entry), and the seeded are looked up before deleting, as a
/// lookup that misses is cheaper than a delete that does (it takes the
/// bucket's lock).
#[inline(always)]
fn forget(cfg: &Config, sk: *const u8) {
    let Some(id) = existing_id(cfg, sk) else {
        return;
    };
    if cfg.lean_owners != 0 && cfg.id_key == 0 && after_snapshot(id) {
        return;
    }
    if cfg.lean_owners != 0 && unsafe { SOCKS.get(id) }.is_none() {
        return;
    }
    let _ = SOCKS.remove(id);
}

/// Whether cookie `id` is past every cookie the snapshot seeded (false
/// until userspace has said which those are).
#[inline(always)]
fn after_snapshot(id: u64) -> bool {
    match SEEDED_BELOW.get(0) {
        Some(&below) => below != 0 && id >= below,
        None => false,
    }
}

/// The owner: the current task for an owner-only transition, else the
/// socket's entry, else (for a socket accepted but not yet seen from its
/// acceptor) its listener's owner.
#[inline(always)]
fn owner_of(t: &Transition, listen_key: &ListenKey, task: &TaskId) -> Owned {
    let (old, new) = (t.old, t.new);
    // An accepted child (LISTEN -> SYN_RECV, then SYN_RECV -> ...) inherits
    // its listener's owner until the acceptor is seen.
    // A zeroed local and a flag rather than an Option of a struct: LLVM
    // otherwise leaves registers the verifier sees as uninitialised.
    let mut listener = ListenerInfo {
        owner: TaskId::EMPTY,
        cookie: 0,
    };
    let mut has_listener = false;
    if old == LISTEN
        && new == SYN_RECV
        && let Some(p) = LISTENERS.get_ptr(*listen_key)
    {
        listener = unsafe { *p };
        has_listener = true;
    }
    // Kernels that copy the listener's cookie into the clone: the child has
    // no id of its own yet. Report 0 rather than the listener's id, and keep
    // the listener's bookkeeping untouched.
    let sock_id = if has_listener && listener.cookie == t.cookie {
        0
    } else {
        t.cookie
    };
    // Same zeroed-local pattern as the listener above.
    let mut known = SockInfo {
        owner: TaskId::EMPTY,
        owner_src: owner_src::UNKNOWN,
        state: 0,
        since_ns: 0,
    };
    let mut known_ptr: *mut SockInfo = core::ptr::null_mut();
    // A socket leaving CLOSE, or a child just cloned from its listener, is
    // new to the map (CLOSE removed it): skip the lookup. A listener that
    // closes (LISTEN -> CLOSE) is not: its entry must be found and removed.
    let fresh = old == CLOSE || (old == LISTEN && new == SYN_RECV);
    // Lean owners: an open connection has no entry, unless it predates
    // start-up (then its snapshot owner gives way to this one, and its
    // holders name it if it leaks).
    let unkept = fresh || (config().lean_owners != 0 && old == ESTABLISHED);
    if sock_id != 0
        && !unkept
        && let Some(p) = SOCKS.get_ptr_mut(sock_id)
    {
        known = unsafe { *p };
        known_ptr = p;
    }
    let is_known = !known_ptr.is_null();
    // Unknown and not new: an accepted socket whose birth the default mode
    // skipped (or that closetrace never saw accepted) belongs to its
    // listener's owner until its acceptor is seen doing I/O.
    if !is_known
        && !has_listener
        && !fresh
        && !t.by_owner
        && let Some(p) = LISTENERS.get_ptr(*listen_key)
    {
        listener = unsafe { *p };
        has_listener = true;
    }
    let (owner, src) = if t.by_owner {
        (*task, owner_src::TRANSITION)
    } else if is_known {
        (known.owner, known.owner_src)
    } else if has_listener {
        (listener.owner, owner_src::LISTENER)
    } else {
        (TaskId::EMPTY, owner_src::UNKNOWN)
    };
    Owned {
        sock_id,
        owner,
        src,
        known,
        known_ptr,
    }
}

/// Listeners and sockets in the maps, whatever the filter says, so that
/// ownership is right when a filtered-in process later inherits or
/// receives a socket.
#[inline(always)]
fn keep_books(t: &Transition, o: &Owned, listen_key: &ListenKey, now: u64) {
    let new = t.new;
    keep_listeners(t, &o.owner, listen_key);
    if new == CLOSE_WAIT {
        mark_netns(listen_key.netns);
    }
    let is_known = !o.known_ptr.is_null();
    if o.sock_id == 0 {
        // Nothing to keep under an id the socket does not have yet.
    } else if !is_known && new != LISTEN && config().lean_owners != 0 {
        // Lean owners: only a listener takes an entry (its children's
        // owner). An active close is sent with its closer, and a watched
        // socket leaving CLOSE_WAIT is named by the transition or by its
        // holders; nothing later needs their owner (`forget` relies on it).
    } else if new == CLOSE {
        // Gone from the state machine: drop it so the map holds only the living.
        if is_known {
            let _ = SOCKS.remove(o.sock_id);
        }
    } else if is_known {
        // In place: an LRU map update allocates a new element every time.
        unsafe {
            (*o.known_ptr).owner = o.owner;
            (*o.known_ptr).owner_src = o.src;
            (*o.known_ptr).state = new;
            (*o.known_ptr).since_ns = now;
        }
    } else {
        let info = SockInfo {
            owner: o.owner,
            owner_src: o.src,
            state: new,
            since_ns: now,
        };
        let _ = SOCKS.insert(o.sock_id, info, BPF_ANY as u64);
    }
}

/// Listeners by namespace and port, for their children's owner.
#[inline(always)]
fn keep_listeners(t: &Transition, owner: &TaskId, listen_key: &ListenKey) {
    if t.new == LISTEN && listen_key.port != 0 {
        let info = ListenerInfo {
            owner: *owner,
            cookie: t.cookie,
        };
        let _ = LISTENERS.insert(*listen_key, info, BPF_ANY as u64);
    } else if t.old == LISTEN && t.new == CLOSE {
        let _ = LISTENERS.remove(*listen_key);
    }
}

/// Whether this transition is counted and sent: `--pid` (CLOSE_WAIT
/// transitions pass whoever owns them: the leak detector needs them to
/// name holders the owner table cannot know; userspace filters what it
/// displays), then, in the default mode, only what findings need, and
/// CLOSE_WAIT exits of the scanned namespace only for watched sockets.
#[inline(always)]
fn sent(cfg: &Config, t: &Transition, o: &Owned, netns: u32) -> bool {
    let (old, new) = (t.old, t.new);
    let wanted = cfg.filter_pids == 0 || unsafe { PIDS.get(o.owner.tgid) }.is_some();
    if wanted {
        count_transition(old, new);
    }
    let close_wait = old == CLOSE_WAIT || new == CLOSE_WAIT;
    if !wanted && !close_wait {
        return false;
    }
    if cfg.stream_all == 0 {
        if !findings_need(old, new) {
            return false;
        }
        if close_wait && scanned(cfg, netns) && (new == CLOSE_WAIT || !watched(o.sock_id)) {
            return false;
        }
    }
    true
}

/// What userspace needs to tell a close from a reset, a half-close or an
/// exit, in this transition's context.
#[inline(always)]
fn context_flags(cfg: &Config, t: &Transition, ctx_task: &TaskId) -> u16 {
    let off = &cfg.offsets;
    let mut fl = 0;
    if matches!(Btf::get::<i32>(t.sk, off.sk_err), Ok(e) if e != 0) {
        fl |= flags::SOCK_ERROR;
    }
    // Told apart so that userspace does not read it as a close.
    if t.failed_connect {
        fl |= flags::CONNECT_FAILED;
    }
    if t.tgid != 0 {
        if current_exiting(off) {
            fl |= flags::CTX_EXITING;
        }
        // Only a close it would otherwise be taken for needs telling
        // apart: a lookup saved on every other record.
        if may_close(t.old, t.new) && in_shutdown(cfg, ctx_task.tid) {
            fl |= flags::CTX_IN_SHUTDOWN;
        }
    }
    fl
}

/// Whether the current thread is inside shutdown(2): its syscall number,
/// or on kernels before 5.15 the mark the shutdown hooks leave.
#[inline(always)]
fn in_shutdown(cfg: &Config, tid: u32) -> bool {
    match current_regs() {
        Some(regs) => matches!(
            Btf::get::<u64>(regs, cfg.offsets.regs_syscall),
            Ok(SYS_SHUTDOWN)
        ),
        None => unsafe { IN_SHUTDOWN.get(tid) }.is_some(),
    }
}

/// The record, written field by field into the ring buffer: a whole
/// StateRecord built first would not fit on the 512-byte BPF stack beside
/// the caller's locals. Everything is read before reserving: an early
/// return after `reserve` is a reference leak to the verifier.
#[inline(always)]
fn emit_state(
    cfg: &Config,
    t: &Transition,
    o: &Owned,
    task: &TaskId,
    netns: u32,
    now: u64,
) -> Result<(), i32> {
    let off = &cfg.offsets;
    let ep = endpoints::<Btf>(t.sk, off)?;
    let ctx_task = if t.by_owner { *task } else { current_thread() };
    let old_since_ns = if !o.known_ptr.is_null() && o.known.state == t.old {
        o.known.since_ns
    } else {
        0
    };
    let fl = context_flags(cfg, t, &ctx_task);
    let cgroup = sock_cgroup::<Btf>(t.sk, off);
    let Some(mut entry) = EVENTS.reserve::<StateRecord>(0) else {
        count(LOST_RINGBUF);
        return Ok(());
    };
    let r = entry.as_mut_ptr();
    unsafe {
        (*r).kind = RECORD_STATE;
        (*r).old_state = t.old;
        (*r).new_state = t.new;
        (*r).owner_src = o.src;
        (*r).ts_ns = now;
        (*r).old_since_ns = old_since_ns;
        (*r).sock_id = o.sock_id;
        (*r).netns = netns;
        (*r).family = ep.family;
        (*r).sport = ep.sport;
        (*r).dport = ep.dport;
        (*r).flags = fl;
        (*r)._pad = [0; 4];
        (*r).saddr = ep.saddr;
        (*r).daddr = ep.daddr;
        (*r).ctx = ctx_task;
        (*r).owner = o.owner;
        (*r).cgroup = cgroup;
    }
    entry.submit(wakeup(cfg, size_of::<StateRecord>()));
    Ok(())
}
