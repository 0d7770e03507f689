//! Types shared by the eBPF programs and the userspace daemon.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, built
//! from fixed-width integers and byte arrays with explicit padding, and has
//! its size pinned by a `const` assertion so that a field added on one side
//! only cannot silently shift the other. Kinds and states travel as `u32`;
//! userspace converts them with `TryFrom` at its single decoding boundary.
#![no_std]

/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;

/// Record kinds, the first `u32` of every ring-buffer record.
pub const RECORD_STATE: u32 = 1;
pub const RECORD_CLOSE: u32 = 2;
pub const RECORD_SOCK_ERROR: u32 = 3;
pub const RECORD_ACCEPT: u32 = 4;

/// Syscalls whose failures closetrace reports.
pub mod syscall {
    pub const CONNECT: u32 = 1;
    pub const BIND: u32 = 2;
    /// accept()/accept4() failing with EMFILE or ENFILE: out of fds.
    pub const ACCEPT: u32 = 3;
}

/// errno values reported (positive).
pub const EADDRINUSE: u32 = 98;
pub const EADDRNOTAVAIL: u32 = 99;
/// The process's fd limit (RLIMIT_NOFILE) reached.
pub const EMFILE: u32 = 24;
/// The system's fd limit (fs.file-max) reached.
pub const ENFILE: u32 = 23;

/// Facts about the context of a transition, in `StateRecord::flags`. The
/// kernel only observes; userspace decides what they mean (who closed it).
pub mod flags {
    /// The task on the CPU is exiting (PF_EXITING): its files are being closed.
    pub const CTX_EXITING: u16 = 1;
    /// The task on the CPU is inside shutdown(2).
    pub const CTX_IN_SHUTDOWN: u16 = 2;
    // 4 was SOCK_RESET: a peer's reset sets `sk_err` before the socket
    // leaves its state, so SOCK_ERROR says it.
    /// `sk_err` is set (reset, timeout, refused).
    pub const SOCK_ERROR: u16 = 8;
    /// SYN_SENT -> CLOSE in the caller of connect() with neither `sk_err`
    /// nor `sk_shutdown` set and no SYN in flight: connect() failed before
    /// sending (no port), rather than the application closing or
    /// disconnecting (AF_UNSPEC) a connecting socket.
    pub const CONNECT_FAILED: u16 = 16;
}

/// How a `CloseRecord` was observed.
pub mod close_src {
    pub const FENTRY: u32 = 1;
    pub const KPROBE: u32 = 2;
}

/// `task_struct.flags` bit for a task in do_exit().
pub const PF_EXITING: u32 = 0x4;

/// How the owner recorded in an event was learned.
pub mod owner_src {
    /// No process-context sighting yet.
    pub const UNKNOWN: u32 = 0;
    /// The task on the CPU at a transition that only the owner can cause
    /// (connect, listen, close by the application).
    pub const TRANSITION: u32 = 1;
    /// Inherited by an accepted socket from its listener's owner.
    pub const LISTENER: u32 = 2;
    /// The task that last sent or received on the socket.
    pub const IO: u32 = 3;
    /// Found in a process's fd table by the start-up snapshot.
    pub const SNAPSHOT: u32 = 4;
    /// The task that accept()ed it.
    pub const ACCEPT: u32 = 5;
}

/// Linux `AF_INET` / `AF_INET6`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Kernel TCP state numbers (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;
    pub const BOUND_INACTIVE: u32 = 13;
}

/// A task as seen by the kernel: process id, thread id, name, and when the
/// process started. Pids are reused; (tgid, start_ns) is not, so that pair
/// is what identifies a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskId {
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; COMM_LEN],
    /// The process's (thread group leader's) `start_boottime`: nanoseconds
    /// since boot, suspend included, the clock behind /proc/PID/stat's
    /// starttime. 0 when unknown.
    pub start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TaskId>() == 32);

impl TaskId {
    pub const EMPTY: TaskId = TaskId {
        tgid: 0,
        tid: 0,
        comm: [0; COMM_LEN],
        start_ns: 0,
    };
}

/// One `sock:inet_sock_set_state` transition of a TCP socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateRecord {
    /// Always [`RECORD_STATE`].
    pub kind: u32,
    pub old_state: u32,
    pub new_state: u32,
    /// One of [`owner_src`].
    pub owner_src: u32,
    /// `bpf_ktime_get_ns()`, CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// When the socket entered `old_state`; 0 when closetrace did not see it.
    pub old_since_ns: u64,
    /// Socket cookie: unique for the boot, never a kernel address.
    pub sock_id: u64,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// Bits of [`flags`].
    pub flags: u16,
    pub _pad: [u8; 4],
    /// Local address: 4 bytes for IPv4 (rest zero) or 16 for IPv6, network order.
    pub saddr: [u8; 16],
    /// Remote address, like `saddr`.
    pub daddr: [u8; 16],
    /// The task on the CPU when the transition ran.
    pub ctx: TaskId,
    /// The socket's owner as closetrace knows it (see `owner_src`).
    pub owner: TaskId,
    /// Id of the cgroup (v2) the socket belongs to: its creator's, which
    /// accepted sockets inherit from their listener. 0: unknown.
    pub cgroup: u64,
}
pub const STATE_RECORD_SIZE: usize = 160;
const _: () = assert!(core::mem::size_of::<StateRecord>() == STATE_RECORD_SIZE);

/// A TCP socket's last close, seen at `tcp_close` (fentry or kprobe).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseRecord {
    /// Always [`RECORD_CLOSE`].
    pub kind: u32,
    /// TCP state when the application closed it.
    pub state: u32,
    /// One of [`close_src`].
    pub close_src: u32,
    pub _pad0: u32,
    pub ts_ns: u64,
    pub sock_id: u64,
    pub netns: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    /// Bits of [`flags`] (CTX_EXITING when the close is the process's exit).
    pub flags: u16,
    pub _pad1: [u8; 4],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The closing task.
    pub task: TaskId,
    /// The socket's cgroup, as in `StateRecord::cgroup`.
    pub cgroup: u64,
}
pub const CLOSE_RECORD_SIZE: usize = 120;
const _: () = assert!(core::mem::size_of::<CloseRecord>() == CLOSE_RECORD_SIZE);

/// A connect(2) or bind(2) that failed with EADDRNOTAVAIL or EADDRINUSE.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockErrorRecord {
    /// Always [`RECORD_SOCK_ERROR`].
    pub kind: u32,
    /// One of [`syscall`].
    pub syscall: u32,
    /// Positive errno.
    pub errno: u32,
    /// Address family from the caller's sockaddr.
    pub family: u16,
    /// Port from the caller's sockaddr, host order.
    pub port: u16,
    pub ts_ns: u64,
    /// Address from the caller's sockaddr (4 bytes for IPv4), network order.
    pub addr: [u8; 16],
    /// The calling task.
    pub task: TaskId,
    /// The caller's network namespace (inode); 0 when unknown.
    pub netns: u32,
    pub _pad: u32,
    /// The caller's cgroup (v2) id.
    pub cgroup: u64,
}
pub const SOCK_ERROR_RECORD_SIZE: usize = 88;
const _: () = assert!(core::mem::size_of::<SockErrorRecord>() == SOCK_ERROR_RECORD_SIZE);

/// accept()/accept4() returned a TCP socket: its acceptor. Sent only with
/// `--states` and lean owners, where userspace keeps the owner of every
/// socket instead of the kernel (see `Config::lean_owners`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AcceptRecord {
    /// Always [`RECORD_ACCEPT`].
    pub kind: u32,
    /// TCP state when accept() returned it.
    pub state: u32,
    pub sock_id: u64,
    /// The accepting task.
    pub task: TaskId,
}
pub const ACCEPT_RECORD_SIZE: usize = 48;
const _: () = assert!(core::mem::size_of::<AcceptRecord>() == ACCEPT_RECORD_SIZE);

/// A connect/bind in flight on one CPU, from syscall entry to exit. The
/// sockaddr itself is read from user memory only if the call fails.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    pub syscall: u32,
    /// The calling thread: a call that slept may exit on another CPU, or
    /// find its slot taken; its exit then does not match.
    pub tid: u32,
    pub uaddr: u64,
    pub len: u64,
}
const _: () = assert!(core::mem::size_of::<PendingCall>() == 24);

/// Per-socket bookkeeping, kept in the kernel's `SOCKS` LRU map by cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockInfo {
    pub owner: TaskId,
    pub owner_src: u32,
    /// Last state seen, so a lost event cannot make `old_since_ns` lie.
    pub state: u32,
    /// When the socket entered `state`; 0 when unknown.
    pub since_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SockInfo>() == 48);

/// Key of the `LISTENERS` map: a listening port inside a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 8);

/// Value of the `LISTENERS` map: who owns a listening port, and the
/// listener's own cookie (older kernels copy it into accepted children at
/// clone time, so a child's first transition can carry it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenerInfo {
    pub owner: TaskId,
    pub cookie: u64,
}
const _: () = assert!(core::mem::size_of::<ListenerInfo>() == 40);

/// Sentinel for a field the running kernel does not have.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Byte offsets into kernel structures, resolved by userspace from the running
/// kernel's BTF and written into the `CONFIG` global at load time. Rust eBPF
/// objects carry no CO-RE relocations, so nothing here is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.__sk_common.skc_family` (u16)
    pub family: u32,
    /// `sock.__sk_common.skc_num` (u16, host order)
    pub num: u32,
    /// `sock.__sk_common.skc_dport` (__be16)
    pub dport: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (__be32)
    pub rcv_saddr: u32,
    /// `sock.__sk_common.skc_daddr` (__be32)
    pub daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (in6_addr), or OFFSET_ABSENT without IPv6
    pub v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (in6_addr), or OFFSET_ABSENT without IPv6
    pub v6_daddr: u32,
    /// `sock.sk_protocol` (u16)
    pub protocol: u32,
    /// `sock.__sk_common.skc_net.net` (struct net *), or OFFSET_ABSENT without netns
    pub net: u32,
    /// `net.ns.inum` (u32), or OFFSET_ABSENT without netns
    pub net_inum: u32,
    /// `inet_sock.inet_sport` (__be16): still set at `-> CLOSE`, after the
    /// kernel has released the port and zeroed `skc_num`.
    pub inet_sport: u32,
    /// `sock.sk_err` (int)
    pub sk_err: u32,
    /// `sock.__sk_common.skc_state` (u8)
    pub state: u32,
    /// `sock.__sk_common.skc_cookie` (atomic64_t, `sk_cookie`): kprobes
    /// cannot call the cookie helper
    pub cookie: u32,
    /// `task_struct.flags` (unsigned int)
    pub task_flags: u32,
    /// `sock.sk_cgrp_data.cgroup` (struct cgroup *), or OFFSET_ABSENT
    /// without socket cgroup data
    pub sk_cgroup: u32,
    /// `cgroup.kn` (struct kernfs_node *)
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64): the cgroup id, its directory's inode
    pub kn_id: u32,
    /// `task_struct.tgid` (pid_t): `--pid-tree` follows forks by it
    pub task_tgid: u32,
    /// `task_struct.nsproxy` (struct nsproxy *)
    pub task_nsproxy: u32,
    /// `nsproxy.net_ns` (struct net *)
    pub nsproxy_net: u32,
    /// `task_struct.group_leader` (struct task_struct *)
    pub task_group_leader: u32,
    /// `task_struct.start_boottime` (u64; `real_start_time` before 5.5), or
    /// OFFSET_ABSENT: processes then carry start 0, known by pid alone
    pub task_start: u32,
    /// `task_struct.files` (struct files_struct *): accept()'s new fd to
    /// its socket, with the five below
    pub task_files: u32,
    /// `files_struct.fdt` (struct fdtable *)
    pub files_fdt: u32,
    /// `fdtable.max_fds` (unsigned int)
    pub fdt_max_fds: u32,
    /// `fdtable.fd` (struct file **)
    pub fdt_fd: u32,
    /// `file.private_data` (void *: the `struct socket` of a socket file)
    pub file_private: u32,
    /// `socket.sk` (struct sock *)
    pub socket_sk: u32,
    /// Non-zero: `sk_cgroup` is `sock.sk_cgrp_data.val` (u64; kernels
    /// before 5.15 pack it), the cgroup pointer when its bit 0 is clear.
    pub sk_cgroup_packed: u32,
    /// `sock.sk_shutdown` (u8): close() sets it before leaving SYN_SENT,
    /// a failed connect() does not
    pub sk_shutdown: u32,
    /// `pt_regs.orig_ax` (unsigned long): the syscall a task is in, read
    /// through `bpf_task_pt_regs` (`Config::task_regs`)
    pub regs_syscall: u32,
    /// `pt_regs.si` (unsigned long): a syscall's second argument, still
    /// there at its exit
    pub regs_arg1: u32,
    /// `pt_regs.dx` (unsigned long): its third
    pub regs_arg2: u32,
    /// `tcp_sock.packets_out` (u32): the SYN in flight of a socket in
    /// SYN_SENT; none when connect() failed before sending it
    pub packets_out: u32,
    /// `file.f_inode` (struct inode *): the fd iterator's way from an open
    /// file to its socket inode, with the two below
    pub file_inode: u32,
    /// `inode.i_mode` (umode_t, u16)
    pub inode_mode: u32,
    /// `inode.i_ino` (unsigned long)
    pub inode_ino: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 152);

/// One socket in one process's fd table, as the fd iterator
/// (`iter/task_file`, the `closetrace-fds` object) writes it: the holders
/// of leaked sockets without reading every /proc/PID/fd link.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFd {
    /// The process (thread group) whose fd table holds it.
    pub tgid: u32,
    pub fd: u32,
    /// The socket's inode (`socket:[N]`).
    pub inode: u64,
}
const _: () = assert!(core::mem::size_of::<SocketFd>() == 16);

/// `S_IFMT` and `S_IFSOCK`: an inode's file type, and a socket's.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;

/// Everything userspace hands the programs at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub offsets: SockOffsets,
    /// Non-zero: emit only sockets whose owner's tgid is in the `PIDS` map.
    pub filter_pids: u32,
    /// Non-zero: emit every state change and every close. Zero (the
    /// leak-hunting default): only what the findings need, see
    /// `findings_need`; everything else is only counted in `TRANSITIONS`.
    pub stream_all: u32,
    /// Records are submitted without waking the reader until this many
    /// bytes wait in the ring buffer; the reader also drains on a timer.
    /// Zero: wake on every record the reader has not caught up with.
    pub wakeup_bytes: u32,
    /// The network namespace (inode) userspace scans. In the default mode
    /// the CLOSE_WAIT sockets of a scanned namespace are found by sock_diag
    /// scans, not events: only the ends of those userspace watches
    /// (`WATCH`) are sent. Zero: none (unless `scan_all_netns`).
    pub own_netns: u32,
    /// Non-zero: only sockets (and callers) of this network namespace
    /// (inode) are seen at all, `--netns`.
    pub filter_netns: u32,
    /// Non-zero: only sockets (and callers) whose cgroup id is in the
    /// `CGROUPS` map are seen at all, `--cgroup`.
    pub filter_cgroups: u32,
    /// Non-zero: a fork by a process in `PIDS` adds the child,
    /// `--pid-tree`. (With any pid filter a process in `PIDS` that exits
    /// is removed, so that a later process reusing its pid is not taken
    /// for it.)
    pub follow_forks: u32,
    /// Nanoseconds per /proc clock tick: owners seeded from /proc carry a
    /// start time rounded to it, so start times compare at this grain.
    pub tick_ns: u32,
    /// Non-zero: refresh owners from every send and receive
    /// (`--owner-from-io`), a per-message cost; zero: from accept(),
    /// connect(), listen() and close only.
    pub owner_from_io: u32,
    /// Non-zero: userspace scans every network namespace (it can enter
    /// them), so every namespace counts as scanned (see `own_netns`).
    pub scan_all_netns: u32,
    /// Zero: sockets are named by their cookie (`bpf_get_socket_cookie`,
    /// which tracing programs may call from Linux 5.12). Non-zero (older
    /// kernels): by a hash of the socket keyed with this random value,
    /// opaque and stable for the socket's life, never its address.
    pub id_key: u64,
    /// Non-zero: `bpf_get_current_task_btf` exists (Linux 5.11), so the
    /// current task's fields are plain loads instead of probe reads.
    pub task_btf: u32,
    /// Non-zero: `bpf_task_pt_regs` exists (Linux 5.15), so a syscall's
    /// arguments are read from the caller's registers at its exit, and
    /// shutdown(2) from the syscall number: no syscall entry hooks, whose
    /// mere presence slows every syscall on the host.
    pub task_regs: u32,
    /// Non-zero (when every socket the programs see is in a scanned
    /// namespace and no pid is followed): no owner entry at connect() or
    /// accept(), nor when a socket enters CLOSE_WAIT (its namespace's
    /// activity slot is bumped; the scan dates it by tcp_info). Entries are
    /// made only for listeners and for watched CLOSE_WAIT sockets once they
    /// move on; an active close is sent with its closer and keeps none: a
    /// leak's holders come from the fd tables when it is due, and nothing
    /// else in the kernel reads an owner learned at the connection's start. With
    /// `--states` every transition is still sent, with the owner only when
    /// the transition itself tells it; userspace, which sees them all,
    /// keeps the rest (accept() sends an `AcceptRecord`).
    pub lean_owners: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 216);

impl Config {
    /// Every offset absent: programs emit nothing until userspace fills it in.
    pub const UNSET: Config = Config {
        offsets: SockOffsets {
            family: OFFSET_ABSENT,
            num: OFFSET_ABSENT,
            dport: OFFSET_ABSENT,
            rcv_saddr: OFFSET_ABSENT,
            daddr: OFFSET_ABSENT,
            v6_rcv_saddr: OFFSET_ABSENT,
            v6_daddr: OFFSET_ABSENT,
            protocol: OFFSET_ABSENT,
            net: OFFSET_ABSENT,
            net_inum: OFFSET_ABSENT,
            inet_sport: OFFSET_ABSENT,
            sk_err: OFFSET_ABSENT,
            state: OFFSET_ABSENT,
            cookie: OFFSET_ABSENT,
            task_flags: OFFSET_ABSENT,
            sk_cgroup: OFFSET_ABSENT,
            cgroup_kn: OFFSET_ABSENT,
            kn_id: OFFSET_ABSENT,
            task_tgid: OFFSET_ABSENT,
            task_nsproxy: OFFSET_ABSENT,
            nsproxy_net: OFFSET_ABSENT,
            task_group_leader: OFFSET_ABSENT,
            task_start: OFFSET_ABSENT,
            task_files: OFFSET_ABSENT,
            files_fdt: OFFSET_ABSENT,
            fdt_max_fds: OFFSET_ABSENT,
            fdt_fd: OFFSET_ABSENT,
            file_private: OFFSET_ABSENT,
            socket_sk: OFFSET_ABSENT,
            sk_cgroup_packed: 0,
            sk_shutdown: OFFSET_ABSENT,
            regs_syscall: OFFSET_ABSENT,
            regs_arg1: OFFSET_ABSENT,
            regs_arg2: OFFSET_ABSENT,
            packets_out: OFFSET_ABSENT,
            file_inode: OFFSET_ABSENT,
            inode_mode: OFFSET_ABSENT,
            inode_ino: OFFSET_ABSENT,
        },
        filter_pids: 0,
        stream_all: 0,
        wakeup_bytes: 0,
        own_netns: 0,
        filter_netns: 0,
        filter_cgroups: 0,
        follow_forks: 0,
        tick_ns: 0,
        owner_from_io: 0,
        scan_all_netns: 0,
        id_key: 0,
        task_btf: 0,
        task_regs: 0,
        lean_owners: 0,
        _pad: 0,
    };
}

/// Transitions the findings (leaks, TIME_WAIT, close inference) are made
/// from; in the default mode the kernel emits only these. Into or out of
/// CLOSE_WAIT (leaks and how they ended), active closes (ESTABLISHED or
/// SYN_RECV -> FIN_WAIT1: from then on the socket holds its port, in
/// FIN_WAIT and then TIME_WAIT, and the closer is the task on the CPU, so
/// no owner entry is needed to name it when it gets there), and listeners
/// opening and closing (accepted sockets inherit their owner).
pub const fn findings_need(old: u32, new: u32) -> bool {
    use tcp_state::*;
    old == CLOSE_WAIT
        || new == CLOSE_WAIT
        || new == LISTEN
        || (new == CLOSE && old == LISTEN)
        || (new == FIN_WAIT1 && (old == ESTABLISHED || old == SYN_RECV))
}

/// `TRANSITIONS` is indexed `old * STATE_SLOTS + new`.
pub const STATE_SLOTS: u32 = 16;
pub const TRANSITION_SLOTS: u32 = STATE_SLOTS * STATE_SLOTS;

/// Capacities of the kernel's hash maps, shared so the summary can say how
/// full each was.
pub const SOCKS_CAPACITY: u32 = 65536;
pub const LISTENERS_CAPACITY: u32 = 4096;
pub const WATCH_CAPACITY: u32 = 65536;
pub const IN_SHUTDOWN_CAPACITY: u32 = 4096;
pub const PIDS_CAPACITY: u32 = 16384;
pub const CGROUPS_CAPACITY: u32 = 16384;

/// Index of the failed-reserve counter in the per-CPU `LOST` array.
pub const LOST_RINGBUF: u32 = 0;
/// connect/bind failures whose arguments were not at hand at exit (the call
/// was preempted and its per-CPU slot reused): counted, not reported.
pub const LOST_CALL_ARGS: u32 = 1;
pub const LOST_SLOTS: u32 = 2;

/// `NETNS_ACTIVITY` slots: a namespace's CLOSE_WAIT entries count in slot
/// `netns_slot(inode)`, so the scans can skip namespaces where nothing
/// entered CLOSE_WAIT (namespaces sharing a slot are read together).
pub const NETNS_SLOTS: u32 = 256;

pub const fn netns_slot(netns: u32) -> u32 {
    netns % NETNS_SLOTS
}

/// The second bank of `NETNS_ACTIVITY`: an IPv6 socket of the namespace
/// entered CLOSE_WAIT or made an active close (FIN_WAIT1, the only way to
/// FIN_WAIT2 and TIME_WAIT). Every socket a dump looks for comes from one
/// of those, so the scans skip a namespace's IPv6 dump (a walk of the
/// whole established hash, shared by every namespace) while its slot is
/// quiet and the last one found nothing.
pub const fn netns_ipv6_slot(netns: u32) -> u32 {
    NETNS_SLOTS + netns_slot(netns)
}

/// Both banks.
pub const NETNS_ACTIVITY_SLOTS: u32 = 2 * NETNS_SLOTS;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), made only of integers and byte arrays,
    // with every padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::TaskId {}
    unsafe impl aya::Pod for super::StateRecord {}
    unsafe impl aya::Pod for super::CloseRecord {}
    unsafe impl aya::Pod for super::SockErrorRecord {}
    unsafe impl aya::Pod for super::AcceptRecord {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::ListenerInfo {}
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SocketFd {}
}
