//! closetrace's kernel programs.
//!
//! `inet_sock_set_state` turns every TCP state change into a ring-buffer
//! record stamped with the socket's owner. The owner is not `current`: most
//! transitions run in softirq or in the peer's syscall, so the owner is kept
//! per socket (by cookie) in `SOCKS` and refreshed only from process context:
//! owner-only transitions (connect, listen, close), send/recv on the socket,
//! and inheritance from the listener for accepted sockets.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use closetrace_common::{
    AF_INET, AF_INET6, CGROUPS_CAPACITY, COMM_LEN, CloseRecord, Config, EADDRINUSE, EADDRNOTAVAIL,
    IN_SHUTDOWN_CAPACITY, IPPROTO_TCP, LISTENERS_CAPACITY, LOST_CALL_ARGS, LOST_RINGBUF,
    LOST_SLOTS, ListenKey, ListenerInfo, OFFSET_ABSENT, PF_EXITING, PIDS_CAPACITY, PendingCall,
    RECORD_CLOSE, RECORD_SOCK_ERROR, RECORD_STATE, SOCKS_CAPACITY, STATE_SLOTS, SockErrorRecord,
    SockInfo, SockOffsets, StateRecord, TRANSITION_SLOTS, TaskId, WATCH_CAPACITY, close_src,
    findings_need, flags, owner_src, syscall, tcp_state::*,
};

/// Offsets and filter switches, written by userspace before load.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::UNSET;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Failed ring-buffer reserves, per CPU, so counting never contends.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Transitions seen (after the `--pid` filter), per CPU, indexed
/// `old * STATE_SLOTS + new`: counted here so that the default mode need
/// not send every transition to userspace to summarise them.
#[map]
static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);

/// Owner and current state per socket cookie. LRU so that sockets whose end
/// we miss (lost events, sockets closed before start-up) cannot fill it.
#[map]
static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(SOCKS_CAPACITY, 0);

/// Owner of each listening port, inherited by the sockets it accepts.
#[map]
static LISTENERS: LruHashMap<ListenKey, ListenerInfo> =
    LruHashMap::with_max_entries(LISTENERS_CAPACITY, 0);

/// CLOSE_WAIT sockets (by cookie) of closetrace's own namespace that
/// userspace tracks as possible leaks: how they leave CLOSE_WAIT is sent.
/// The rest leave unreported in the default mode: a prompt close is the
/// common case and needs no record.
#[map]
static WATCH: LruHashMap<u64, u8> = LruHashMap::with_max_entries(WATCH_CAPACITY, 0);

/// `--pid` filter: tgids whose sockets are reported. With `--pid-tree`
/// the programs below add forked children and remove exited processes.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PIDS_CAPACITY, 0);

/// `--cgroup` filter: cgroup ids (the given cgroup and its descendants,
/// kept up to date by userspace).
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(CGROUPS_CAPACITY, 0);

/// The connect/bind in flight on each CPU. The failures reported here
/// (EADDRNOTAVAIL, EADDRINUSE) return before the call can sleep, so entry
/// and exit meet on one CPU; a per-CPU slot costs a fraction of a per-thread
/// hash map insert and delete on every connect().
#[map]
static CALLS: PerCpuArray<PendingCall> = PerCpuArray::with_max_entries(1, 0);

/// Threads currently inside shutdown(2): their CLOSE_WAIT -> LAST_ACK is a
/// half-close, not a close. LRU in case an exit event is ever missed.
#[map]
static IN_SHUTDOWN: LruHashMap<u32, u8> = LruHashMap::with_max_entries(IN_SHUTDOWN_CAPACITY, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    try_state(&ctx).map_or_else(|e| e, |()| 0)
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    try_io(&ctx).map_or_else(|e| e, |()| 0)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    try_io(&ctx).map_or_else(|e| e, |()| 0)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    try_reset(&ctx).map_or_else(|e| e, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_shutdown")]
pub fn sys_enter_shutdown(_ctx: TracePointContext) -> u32 {
    shutdown_mark(true).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_shutdown")]
pub fn sys_exit_shutdown(_ctx: TracePointContext) -> u32 {
    shutdown_mark(false).map_or_else(|e| e as u32, |()| 0)
}

// connect/bind: arguments are stashed per thread at entry and looked at
// again at exit, where only EADDRNOTAVAIL / EADDRINUSE produce a record.
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    stash_call(&ctx, syscall::CONNECT).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    finish_call(&ctx, syscall::CONNECT).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    stash_call(&ctx, syscall::BIND).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    finish_call(&ctx, syscall::BIND).map_or_else(|e| e as u32, |()| 0)
}

/// `--pid-tree`: a followed process's child is followed too. Runs in the
/// parent's context.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    try_fork(&ctx).map_or_else(|e| e, |()| 0)
}

/// `--pid`, `--pid-tree`: a followed process that exits is dropped, so a
/// later process reusing its pid is not followed by accident.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    try_exit().map_or_else(|e| e, |()| 0)
}

/// The exact close hook where trampolines load.
#[fentry(function = "tcp_close")]
pub fn tcp_close_fentry(ctx: FEntryContext) -> i32 {
    try_close_fentry(&ctx).map_or_else(|e| e, |()| 0)
}

/// The exact close hook where kprobes exist but trampolines do not.
#[kprobe]
pub fn tcp_close_kprobe(ctx: ProbeContext) -> u32 {
    try_close_kprobe(&ctx).map_or_else(|e| e as u32, |()| 0)
}

#[inline(always)]
fn config() -> &'static Config {
    // The value is patched into .rodata at load time, so the compiler must
    // not fold the compile-time placeholder: its address passes through a
    // volatile read. A reference, not a copy: the stack is 512 bytes.
    let addr = &raw const CONFIG;
    unsafe { &*core::ptr::read_volatile(&addr) }
}

#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    if off == OFFSET_ABSENT {
        return Err(1);
    }
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
}

/// The current task as an owner or caller: with its process's start time.
#[inline(always)]
fn current_task(off: &SockOffsets) -> TaskId {
    TaskId {
        start_ns: current_start(off),
        ..current_thread()
    }
}

/// The current task as context only (whoever is on the CPU): no start
/// time, which costs two reads and identifies nothing here.
#[inline(always)]
fn current_thread() -> TaskId {
    let pid_tgid = bpf_get_current_pid_tgid();
    TaskId {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        start_ns: 0,
    }
}

/// Two start times of one process: compared at /proc's tick, the grain of
/// owners seeded from /proc.
#[inline(always)]
fn same_start(a: u64, b: u64) -> bool {
    match config().tick_ns as u64 {
        0 => a == b,
        tick => a / tick == b / tick,
    }
}

/// When the current process (its thread group leader) started; 0 when
/// unknown. With the pid it names one process: pids are reused.
#[inline(always)]
fn current_start(off: &SockOffsets) -> u64 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    pointer(read(task, off.task_group_leader))
        .and_then(|leader| read::<u64>(leader, off.task_start).ok())
        .unwrap_or(0)
}

/// PF_EXITING on the current task: its files are closed by do_exit().
#[inline(always)]
fn current_exiting(off: &SockOffsets) -> bool {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    matches!(read::<u32>(task, off.task_flags), Ok(f) if f & PF_EXITING != 0)
}

#[inline(always)]
fn is_tcp(sk: *const u8, off: &SockOffsets) -> bool {
    matches!(read::<u16>(sk, off.protocol), Ok(IPPROTO_TCP))
}

#[inline(always)]
fn netns_of(sk: *const u8, off: &SockOffsets) -> u32 {
    net_inum(pointer(read(sk, off.net)), off)
}

/// A pointer field; `None` when the kernel lacks the field or it is null.
#[inline(always)]
fn pointer(field: Result<*const u8, i32>) -> Option<*const u8> {
    field.ok().filter(|p| !p.is_null())
}

/// The inode of a `struct net`; 0 when unknown.
#[inline(always)]
fn net_inum(net: Option<*const u8>, off: &SockOffsets) -> u32 {
    net.and_then(|n| read::<u32>(n, off.net_inum).ok())
        .unwrap_or(0)
}

/// The cgroup (v2) id a socket belongs to; 0 when unknown.
#[inline(always)]
fn sock_cgroup(sk: *const u8, off: &SockOffsets) -> u64 {
    pointer(read(sk, off.sk_cgroup))
        .and_then(|cgrp| pointer(read(cgrp, off.cgroup_kn)))
        .and_then(|kn| read::<u64>(kn, off.kn_id).ok())
        .unwrap_or(0)
}

/// The current task's network namespace (inode); 0 when unknown.
#[inline(always)]
fn current_netns(off: &SockOffsets) -> u32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let net = pointer(read(task, off.task_nsproxy))
        .and_then(|nsproxy| pointer(read(nsproxy, off.nsproxy_net)));
    net_inum(net, off)
}

/// `--netns` and `--cgroup`: a socket's namespace and cgroup never change,
/// so a socket outside them is dropped before any bookkeeping.
#[inline(always)]
fn outside(cfg: &Config, netns: u32, cgroup: u64) -> bool {
    (cfg.filter_netns != 0 && netns != cfg.filter_netns)
        || (cfg.filter_cgroups != 0 && unsafe { CGROUPS.get(cgroup) }.is_none())
}

/// CLOSE_WAIT sockets in this namespace are found by userspace scans.
#[inline(always)]
fn scanned(cfg: &Config, netns: u32) -> bool {
    cfg.own_netns != 0 && netns == cfg.own_netns
}

#[inline(always)]
fn watched(sock_id: u64) -> bool {
    unsafe { WATCH.get(sock_id) }.is_some()
}

/// Transitions that only the owning process can cause, so `current` is the owner.
#[inline(always)]
fn caused_by_owner(old: u32, new: u32) -> bool {
    matches!(
        (old, new),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK)
    )
}

/// The local port: `skc_num`, or for sockets not yet hashed `inet_sport`.
#[inline(always)]
fn local_port(sk: *const u8, off: &SockOffsets) -> u16 {
    match read::<u16>(sk, off.num) {
        Ok(num) if num != 0 => num,
        _ => u16::from_be(read(sk, off.inet_sport).unwrap_or(0)),
    }
}

struct Endpoints {
    family: u16,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[inline(always)]
fn endpoints(sk: *const u8, off: &SockOffsets) -> Result<Endpoints, i32> {
    let family: u16 = read(sk, off.family)?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    match family {
        AF_INET => {
            saddr[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.rcv_saddr)?);
            daddr[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.daddr)?);
        }
        AF_INET6 => {
            saddr = read(sk, off.v6_rcv_saddr)?;
            daddr = read(sk, off.v6_daddr)?;
        }
        _ => return Err(1),
    }
    Ok(Endpoints {
        family,
        sport: local_port(sk, off),
        dport: u16::from_be(read(sk, off.dport)?),
        saddr,
        daddr,
    })
}

fn try_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let (old, new) = (old as u32, new as u32);
    let cfg = config();
    let off = &cfg.offsets;
    if !is_tcp(sk, off) {
        return Ok(());
    }
    let filtered = cfg.filter_netns != 0 || cfg.filter_cgroups != 0;
    if filtered && outside(cfg, netns_of(sk, off), sock_cgroup(sk, off)) {
        return Ok(());
    }
    // Hot path: ~7 transitions per connection. In the default mode most of
    // them stop at the count just below; the endpoints and context facts
    // are read only for what is sent.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let by_owner = caused_by_owner(old, new) && tgid != 0;
    // Most transitions (SYN_SENT -> ESTABLISHED, an RST's -> CLOSE, ...)
    // neither change the owner nor are sent in the default mode: count them,
    // forget the socket at CLOSE, and stop. Each map operation is a cache
    // miss or two; this keeps them to about one per transition.
    if !by_owner && cfg.stream_all == 0 && cfg.filter_pids == 0 && !findings_need(old, new) {
        count_transition(old, new);
        if new == CLOSE {
            let _ = SOCKS.remove(cookie);
        }
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let task = if by_owner {
        current_task(off)
    } else {
        TaskId::EMPTY
    };

    let listen_key = ListenKey {
        netns: netns_of(sk, off),
        port: local_port(sk, off),
        _pad: 0,
    };
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
        && let Some(p) = LISTENERS.get_ptr(listen_key)
    {
        listener = unsafe { *p };
        has_listener = true;
    }
    // Kernels that copy the listener's cookie into the clone: the child has
    // no id of its own yet. Report 0 rather than the listener's id, and keep
    // the listener's bookkeeping untouched.
    let sock_id = if has_listener && listener.cookie == cookie {
        0
    } else {
        cookie
    };
    // Same zeroed-local pattern as the listener above.
    let mut known = SockInfo {
        owner: TaskId::EMPTY,
        owner_src: owner_src::UNKNOWN,
        state: 0,
        since_ns: 0,
        flags: 0,
        _pad: 0,
    };
    let mut known_ptr: *mut SockInfo = core::ptr::null_mut();
    // A socket leaving CLOSE, or a child just cloned from its listener, is
    // new to the map (CLOSE removed it): skip the lookup. A listener that
    // closes (LISTEN -> CLOSE) is not: its entry must be found and removed.
    let fresh = old == CLOSE || (old == LISTEN && new == SYN_RECV);
    if sock_id != 0
        && !fresh
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
        && let Some(p) = LISTENERS.get_ptr(listen_key)
    {
        listener = unsafe { *p };
        has_listener = true;
    }
    let (owner, src) = if by_owner {
        (task, owner_src::TRANSITION)
    } else if is_known {
        (known.owner, known.owner_src)
    } else if has_listener {
        (listener.owner, owner_src::LISTENER)
    } else {
        (TaskId::EMPTY, owner_src::UNKNOWN)
    };

    // Bookkeeping happens whatever the filter says, so that ownership is
    // right when a filtered-in process later inherits or receives a socket.
    if new == LISTEN && listen_key.port != 0 {
        let info = ListenerInfo { owner, cookie };
        let _ = LISTENERS.insert(listen_key, info, BPF_ANY as u64);
    } else if old == LISTEN && new == CLOSE {
        let _ = LISTENERS.remove(listen_key);
    }
    if sock_id == 0 {
        // Nothing to keep under an id the socket does not have yet.
    } else if new == CLOSE {
        // Gone from the state machine: drop it so the map holds only the living.
        if is_known {
            let _ = SOCKS.remove(sock_id);
        }
    } else if is_known {
        // In place: an LRU map update allocates a new element every time.
        unsafe {
            (*known_ptr).owner = owner;
            (*known_ptr).owner_src = src;
            (*known_ptr).state = new;
            (*known_ptr).since_ns = now;
        }
    } else {
        let info = SockInfo {
            owner,
            owner_src: src,
            state: new,
            since_ns: now,
            flags: 0,
            _pad: 0,
        };
        let _ = SOCKS.insert(sock_id, info, BPF_ANY as u64);
    }

    let wanted = cfg.filter_pids == 0 || unsafe { PIDS.get(owner.tgid) }.is_some();
    if wanted {
        count_transition(old, new);
    }
    // CLOSE_WAIT transitions pass the filter whoever owns them: the leak
    // detector needs them to name holders (fork, fd passing) that the owner
    // table cannot know. Userspace filters what it displays.
    let close_wait = old == CLOSE_WAIT || new == CLOSE_WAIT;
    if !wanted && !close_wait {
        return Ok(());
    }
    let netns = listen_key.netns;
    if cfg.stream_all == 0 {
        if !findings_need(old, new) {
            return Ok(());
        }
        if close_wait && scanned(cfg, netns) && (new == CLOSE_WAIT || !watched(sock_id)) {
            return Ok(());
        }
    }
    let ep = endpoints(sk, off)?;
    let ctx_task = if by_owner { task } else { current_thread() };
    let old_since_ns = if is_known && known.state == old {
        known.since_ns
    } else {
        0
    };
    let mut fl = (known.flags as u16) & flags::SOCK_RESET;
    if matches!(read::<i32>(sk, off.sk_err), Ok(e) if e != 0) {
        fl |= flags::SOCK_ERROR;
    }
    if tgid != 0 {
        if current_exiting(off) {
            fl |= flags::CTX_EXITING;
        }
        if unsafe { IN_SHUTDOWN.get(ctx_task.tid) }.is_some() {
            fl |= flags::CTX_IN_SHUTDOWN;
        }
    }

    let Some(mut entry) = EVENTS.reserve::<StateRecord>(0) else {
        count(LOST_RINGBUF);
        return Ok(());
    };
    // Field by field into the ring buffer: a whole StateRecord built first
    // would not fit on the 512-byte BPF stack beside this function's locals.
    let r = entry.as_mut_ptr();
    unsafe {
        (*r).kind = RECORD_STATE;
        (*r).old_state = old;
        (*r).new_state = new;
        (*r).owner_src = src;
        (*r).ts_ns = now;
        (*r).old_since_ns = old_since_ns;
        (*r).sock_id = sock_id;
        (*r).netns = netns;
        (*r).family = ep.family;
        (*r).sport = ep.sport;
        (*r).dport = ep.dport;
        (*r).flags = fl;
        (*r)._pad = [0; 4];
        (*r).saddr = ep.saddr;
        (*r).daddr = ep.daddr;
        (*r).ctx = ctx_task;
        (*r).owner = owner;
        (*r).cgroup = sock_cgroup(sk, off);
    }
    entry.submit(wakeup(cfg, size_of::<StateRecord>()));
    Ok(())
}

#[inline(always)]
fn count_transition(old: u32, new: u32) {
    let slot = (old % STATE_SLOTS) * STATE_SLOTS + new % STATE_SLOTS;
    if let Some(n) = TRANSITIONS.get_ptr_mut(slot) {
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
fn wakeup(cfg: &Config, size: usize) -> u64 {
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
fn count(slot: u32) {
    if let Some(n) = LOST.get_ptr_mut(slot) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU.
        unsafe { *n += 1 };
    }
}

/// send/recv on a TCP socket run in the caller's context: the caller holds it.
fn try_io(ctx: &BtfTracePointContext) -> Result<(), i32> {
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
fn try_reset(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let sock_id = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    if let Some(p) = SOCKS.get_ptr_mut(sock_id) {
        unsafe { (*p).flags |= flags::SOCK_RESET as u32 };
    }
    Ok(())
}

fn shutdown_mark(enter: bool) -> Result<(), i32> {
    let tid = bpf_get_current_pid_tgid() as u32;
    if enter {
        IN_SHUTDOWN.insert(tid, 1, BPF_ANY as u64)
    } else {
        IN_SHUTDOWN.remove(tid)
    }
}

// Offsets of the syscall tracepoints' fields (their format files, a stable ABI).
const SYSCALL_ARG1: usize = 24;
const SYSCALL_ARG2: usize = 32;
const SYSCALL_RET: usize = 16;

fn stash_call(ctx: &TracePointContext, which: u32) -> Result<(), i32> {
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

fn finish_call(ctx: &TracePointContext, which: u32) -> Result<(), i32> {
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET)? };
    let errno = (-ret) as u32;
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = CALLS.get_ptr_mut(0) else {
        return Ok(());
    };
    let call = unsafe { *slot };
    let mine = call.tid == tid && call.syscall == which;
    if mine {
        unsafe { (*slot).tid = 0 };
    }
    if errno != EADDRNOTAVAIL && errno != EADDRINUSE {
        return Ok(());
    }
    if !mine {
        count(LOST_CALL_ARGS);
        return Ok(());
    }
    if call.len < 16 {
        return Ok(());
    }
    // The caller's sockaddr is still in its memory at exit.
    let sa: [u8; 28] = if call.len >= 28 {
        unsafe { bpf_probe_read_user(call.uaddr as *const [u8; 28]) }?
    } else {
        let head: [u8; 16] = unsafe { bpf_probe_read_user(call.uaddr as *const [u8; 16]) }?;
        let mut full = [0u8; 28];
        full[..16].copy_from_slice(&head);
        full
    };
    // Only inet sockets.
    let family = u16::from_ne_bytes([sa[0], sa[1]]);
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
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
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&sa[4..8]);
    } else {
        addr.copy_from_slice(&sa[8..24]);
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
        port: u16::from_be_bytes([sa[2], sa[3]]),
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

fn try_close_fentry(ctx: &FEntryContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let sock_id = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    emit_close(sk, sock_id, close_src::FENTRY)
}

fn try_close_kprobe(ctx: &ProbeContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0).ok_or(1)?;
    // No cookie helper for kprobes: read the cookie the state hook generated.
    let sock_id: u64 = read(sk, config().offsets.cookie)?;
    emit_close(sk, sock_id, close_src::KPROBE)
}

/// The application dropped its last reference to a TCP socket.
#[inline(always)]
fn emit_close(sk: *const u8, sock_id: u64, src: u32) -> Result<(), i32> {
    let cfg = config();
    let off = &cfg.offsets;
    if sock_id == 0 || !is_tcp(sk, off) {
        return Ok(());
    }
    let state = read::<u8>(sk, off.state)? as u32;
    let netns = netns_of(sk, off);
    let cgroup = sock_cgroup(sk, off);
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
    let ep = endpoints(sk, off)?;
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

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let cfg = config();
    if cfg.follow_forks == 0 {
        return Ok(());
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { PIDS.get(parent) }.is_none() {
        return Ok(());
    }
    let child: *const u8 = ctx.arg(1);
    let off = &cfg.offsets;
    let tgid: u32 = read(child, off.task_tgid)?;
    // A new thread shares its process's tgid: nothing to add.
    if tgid != parent {
        PIDS.insert(tgid, 1, BPF_ANY as u64)?;
    }
    Ok(())
}

fn try_exit() -> Result<(), i32> {
    if config().filter_pids == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // The process's main thread: the pid is about to be free for reuse.
    if tid == tgid {
        let _ = PIDS.remove(tgid);
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
