//! Kernel reads: every read of a kernel structure goes through `read`,
//! with offsets resolved from the running kernel's BTF (`xtask
//! lint-offsets` checks it), and the facts built from them: the current
//! task, a socket's namespace, cgroup and endpoints.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
    bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_task_pt_regs, generated,
};
use closetrace_common::{
    AF_INET, AF_INET6, COMM_LEN, Config, IPPROTO_TCP, OFFSET_ABSENT, PF_EXITING, SockOffsets,
    TaskId,
};

use crate::maps::config;

// Offsets of the syscall tracepoints' fields (their format files, a stable ABI).
pub(crate) const SYSCALL_ARG1: usize = 24;
pub(crate) const SYSCALL_ARG2: usize = 32;
pub(crate) const SYSCALL_RET: usize = 16;

/// x86-64's number for shutdown(2), as `pt_regs.orig_ax` holds it.
pub(crate) const SYS_SHUTDOWN: u64 = 48;

/// The offset that reads an array element itself rather than a field in
/// it (for `fdtable.fd[fd]`): not a struct offset.
pub(crate) const ELEMENT: u32 = 0;

/// A socket's id, from a program given a BTF pointer to it (tp_btf,
/// fentry): its cookie, or where tracing programs cannot ask for one
/// (before 5.12), the keyed hash (`Config::id_key`). The key is frozen
/// .rodata: the verifier never visits the branch not taken, so the helper
/// call it cannot resolve on an old kernel is removed as dead code.
#[inline(always)]
pub(crate) fn sock_id(sk: *const u8) -> u64 {
    let key = config().id_key;
    if key != 0 {
        return keyed_id(sk, key);
    }
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// The socket's id if it may have one in a map: None for a socket with
/// no cookie yet, which no entry or watch can name (userspace watches
/// sockets sock_diag listed, which gave them one), and which is not given
/// one just to look: making a cookie is an atomic operation.
#[inline(always)]
pub(crate) fn existing_id(cfg: &Config, sk: *const u8) -> Option<u64> {
    if cfg.id_key != 0 {
        return Some(sock_id(sk));
    }
    match Btf::get::<u64>(sk, cfg.offsets.cookie) {
        Ok(0) => None,
        Ok(cookie) => Some(cookie),
        Err(_) => Some(sock_id(sk)),
    }
}

/// The same from a classic tracepoint or a kprobe, which cannot call the
/// cookie helper on any kernel: the cookie the state hook made, read
/// from the socket, or the keyed hash.
#[inline(always)]
pub(crate) fn sock_id_read(sk: *const u8) -> Result<u64, i32> {
    let cfg = config();
    if cfg.id_key != 0 {
        return Ok(keyed_id(sk, cfg.id_key));
    }
    let off = &cfg.offsets;
    read(sk, off.cookie)
}

/// murmur3's 64-bit finaliser of the address xor a random key: stable for
/// the socket's life, kept to 62 bits with bit 62 set, so it is never 0
/// ("none"), never looks like a cookie (a counter), nor like a kernel
/// address (whose top bits are all set).
#[inline(always)]
fn keyed_id(sk: *const u8, key: u64) -> u64 {
    // The verifier refuses bitwise operators on a pointer: copy it out as
    // a plain number first.
    let addr: u64 = read((&sk as *const *const u8).cast(), ELEMENT).unwrap_or(0);
    let mut h = addr ^ key;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 2) | (1 << 62)
}

#[inline(always)]
pub(crate) fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    Probe::get(base, off)
}

/// How a program reads kernel memory. The socket readers below take one,
/// so each program uses the cheapest its arguments allow.
pub(crate) trait Mem {
    fn get<T>(base: *const u8, off: u32) -> Result<T, i32>;
}

/// `bpf_probe_read_kernel`: any pointer, in any program (a helper call,
/// 30–50 ns here).
pub(crate) struct Probe;

/// A plain load through a BTF-typed pointer (a `tp_btf` or `fentry`
/// argument, or a pointer field loaded through one): the verifier checks
/// it against the kernel's BTF and turns it into a fault-guarded load, with
/// no helper call. Only for fields of the pointer's own type: `inet_sport`,
/// in `inet_sock` beyond `struct sock`, is refused by the verifier. Offsets
/// come from `config()`, which the verifier reads as constants (.rodata is
/// frozen).
pub(crate) struct Btf;

impl Mem for Probe {
    #[inline(always)]
    fn get<T>(base: *const u8, off: u32) -> Result<T, i32> {
        if off == OFFSET_ABSENT {
            return Err(1);
        }
        unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
    }
}

impl Mem for Btf {
    #[inline(always)]
    fn get<T>(base: *const u8, off: u32) -> Result<T, i32> {
        if off == OFFSET_ABSENT {
            return Err(1);
        }
        Ok(unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize) as *const T) })
    }
}

/// The current task as an owner or caller: with its process's start time.
#[inline(always)]
pub(crate) fn current_task(off: &SockOffsets) -> TaskId {
    TaskId {
        start_ns: current_start(off),
        ..current_thread()
    }
}

/// The current task as context only (whoever is on the CPU): no start
/// time, which costs two reads and identifies nothing here.
#[inline(always)]
pub(crate) fn current_thread() -> TaskId {
    let pid_tgid = bpf_get_current_pid_tgid();
    TaskId {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: current_comm(),
        start_ns: 0,
    }
}

/// The current task's comm. The helper writes (and zero-pads) all of the
/// buffer, so it is not cleared byte by byte first, as aya's wrapper does
/// with a call to memset, which a BPF program runs as a loop; two 8-byte
/// stores clear it instead, in case the helper fails.
#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    let mut comm: u128 = 0;
    unsafe {
        generated::bpf_get_current_comm((&raw mut comm).cast(), COMM_LEN as u32);
    }
    comm.to_ne_bytes()
}

/// Two start times of one process: compared at /proc's tick, the grain of
/// owners seeded from /proc.
#[inline(always)]
pub(crate) fn same_start(a: u64, b: u64) -> bool {
    match config().tick_ns as u64 {
        0 => a == b,
        tick => a / tick == b / tick,
    }
}

/// The current task as a BTF pointer, where the kernel has the helper
/// (`Config::task_btf`, 5.11+): its fields are then plain loads, not
/// probe reads. The flag is frozen .rodata, so on older kernels the
/// verifier never visits the call (as for `sock_id`).
#[inline(always)]
fn current_task_btf() -> Option<*const u8> {
    if config().task_btf == 0 {
        return None;
    }
    Some(unsafe { bpf_get_current_task_btf() } as *const u8)
}

/// The current task's saved user registers, where the kernel has
/// `bpf_task_pt_regs` (`Config::task_regs`, 5.15+): the syscall it is in
/// and that syscall's arguments, still there at its exit. A BTF pointer:
/// its fields are plain loads. Frozen .rodata again keeps older kernels'
/// verifiers from visiting the call.
#[inline(always)]
pub(crate) fn current_regs() -> Option<*const u8> {
    if config().task_regs == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task_btf() };
    Some(unsafe { bpf_task_pt_regs(task) } as *const u8)
}

/// When the current process (its thread group leader) started; 0 when
/// unknown. With the pid it names one process: pids are reused.
#[inline(always)]
pub(crate) fn current_start(off: &SockOffsets) -> u64 {
    match current_task_btf() {
        Some(task) => start_of::<Btf>(task, off),
        None => start_of::<Probe>(unsafe { bpf_get_current_task() } as *const u8, off),
    }
}

#[inline(always)]
fn start_of<M: Mem>(task: *const u8, off: &SockOffsets) -> u64 {
    pointer(M::get(task, off.task_group_leader))
        .and_then(|leader| M::get::<u64>(leader, off.task_start).ok())
        .unwrap_or(0)
}

/// PF_EXITING on the current task: its files are closed by do_exit().
#[inline(always)]
pub(crate) fn current_exiting(off: &SockOffsets) -> bool {
    let flags = match current_task_btf() {
        Some(task) => Btf::get::<u32>(task, off.task_flags),
        None => read::<u32>(
            unsafe { bpf_get_current_task() } as *const u8,
            off.task_flags,
        ),
    };
    matches!(flags, Ok(f) if f & PF_EXITING != 0)
}

#[inline(always)]
pub(crate) fn is_tcp<M: Mem>(sk: *const u8, off: &SockOffsets) -> bool {
    matches!(M::get::<u16>(sk, off.protocol), Ok(IPPROTO_TCP))
}

#[inline(always)]
pub(crate) fn netns_of<M: Mem>(sk: *const u8, off: &SockOffsets) -> u32 {
    net_inum::<M>(pointer(M::get(sk, off.net)), off)
}

/// A pointer field; `None` when the kernel lacks the field or it is null.
#[inline(always)]
pub(crate) fn pointer(field: Result<*const u8, i32>) -> Option<*const u8> {
    field.ok().filter(|p| !p.is_null())
}

/// The inode of a `struct net`; 0 when unknown.
#[inline(always)]
pub(crate) fn net_inum<M: Mem>(net: Option<*const u8>, off: &SockOffsets) -> u32 {
    net.and_then(|n| M::get::<u32>(n, off.net_inum).ok())
        .unwrap_or(0)
}

/// The cgroup (v2) id a socket belongs to; 0 when unknown.
#[inline(always)]
pub(crate) fn sock_cgroup<M: Mem>(sk: *const u8, off: &SockOffsets) -> u64 {
    if off.sk_cgroup_packed != 0 {
        // A number, not a BTF pointer: follow it with probe reads. Bit 0
        // set: cgroup v1 net_prio/net_cls data instead, the cgroup unknown.
        let packed: u64 = M::get(sk, off.sk_cgroup).unwrap_or(1);
        if packed & 1 != 0 {
            return 0;
        }
        return pointer(Probe::get(packed as *const u8, off.cgroup_kn))
            .and_then(|kn| Probe::get::<u64>(kn, off.kn_id).ok())
            .unwrap_or(0);
    }
    pointer(M::get(sk, off.sk_cgroup))
        .and_then(|cgrp| pointer(M::get(cgrp, off.cgroup_kn)))
        .and_then(|kn| M::get::<u64>(kn, off.kn_id).ok())
        .unwrap_or(0)
}

/// The current task's network namespace (inode); 0 when unknown.
#[inline(always)]
pub(crate) fn current_netns(off: &SockOffsets) -> u32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let net = pointer(read(task, off.task_nsproxy))
        .and_then(|nsproxy| pointer(read(nsproxy, off.nsproxy_net)));
    net_inum::<Probe>(net, off)
}

/// The local port: `skc_num`, or for sockets not yet hashed `inet_sport`
/// (beyond `struct sock`, so always probed).
#[inline(always)]
pub(crate) fn local_port<M: Mem>(sk: *const u8, off: &SockOffsets) -> u16 {
    match M::get::<u16>(sk, off.num) {
        Ok(num) if num != 0 => num,
        _ => u16::from_be(read(sk, off.inet_sport).unwrap_or(0)),
    }
}

pub(crate) struct Endpoints {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[inline(always)]
pub(crate) fn endpoints<M: Mem>(sk: *const u8, off: &SockOffsets) -> Result<Endpoints, i32> {
    let family: u16 = M::get(sk, off.family)?;
    let (saddr, daddr) = match family {
        AF_INET => {
            // As whole words, loaded and stored in memory order (the
            // address's first byte first): zeroing byte arrays would be a
            // memset call each.
            let v4 = |addr: u32| u128::from(addr).to_ne_bytes();
            (
                v4(M::get::<u32>(sk, off.rcv_saddr)?),
                v4(M::get::<u32>(sk, off.daddr)?),
            )
        }
        AF_INET6 => {
            // Probed straight into place: 16-byte loads through the BTF
            // pointer would take two more stack temporaries, and the state
            // program's stack is at the verifier's limit.
            (read(sk, off.v6_rcv_saddr)?, read(sk, off.v6_daddr)?)
        }
        _ => return Err(1),
    };
    Ok(Endpoints {
        family,
        sport: local_port::<M>(sk, off),
        dport: u16::from_be(M::get(sk, off.dport)?),
        saddr,
        daddr,
    })
}

/// The `struct sock` behind the current task's file descriptor `fd`,
/// through its fd table: `files->fdt->fd[fd]->private_data->sk`. Only for
/// an fd known to be a socket (accept()'s result).
#[inline(always)]
pub(crate) fn socket_of_fd(fd: u32, off: &SockOffsets) -> Option<*const u8> {
    let (fds, max_fds) = match current_task_btf() {
        Some(task) => fd_array::<Btf>(task, off),
        None => fd_array::<Probe>(unsafe { bpf_get_current_task() } as *const u8, off),
    }?;
    if fd >= max_fds {
        return None;
    }
    // `fd` is `struct file **`: a number to the verifier, so the element
    // and what follows are probe reads either way.
    let slot = fds.wrapping_add(fd as usize * size_of::<usize>());
    let file = pointer(read(slot, ELEMENT))?;
    let socket = pointer(read(file, off.file_private))?;
    pointer(read(socket, off.socket_sk))
}

/// A task's fd array and its length: `files->fdt->{fd, max_fds}`.
#[inline(always)]
fn fd_array<M: Mem>(task: *const u8, off: &SockOffsets) -> Option<(*const u8, u32)> {
    let files = pointer(M::get(task, off.task_files))?;
    let fdt = pointer(M::get(files, off.files_fdt))?;
    let max_fds: u32 = M::get(fdt, off.fdt_max_fds).ok()?;
    let fds = pointer(M::get(fdt, off.fdt_fd))?;
    Some((fds, max_fds))
}
