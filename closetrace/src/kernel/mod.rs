//! The kernel side: loading the eBPF object, attaching its programs with
//! their fallback chain, the maps userspace reads and writes, and the ring
//! buffer. Kernel bytes become model types only in
//! `closetrace_core::kernel::decode`, which `ring` and `maps` call.
pub mod attach;
pub mod attach_btf;
pub mod fds;
pub mod ids;
pub mod load;
pub mod maps;
pub mod offsets;
pub mod ring;
pub mod selection;

use closetrace_core::kernel::CloseHookChoice;
use closetrace_core::model::netns::NetnsReach;
use thiserror::Error;

use offsets::OffsetError;

pub const SYSFS_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "missing privileges: closetrace needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load \
         its eBPF programs; run it as root, e.g. `sudo closetrace`"
    )]
    Privileges,
    #[error(
        "this kernel exposes no BTF ({SYSFS_BTF} is missing): closetrace needs a kernel built \
         with CONFIG_DEBUG_INFO_BTF=y (5.10 or later)"
    )]
    NoBtf,
    #[error("this kernel ({0}) is older than closetrace's floor, Linux 5.10: {1}")]
    TooOld(String, &'static str),
    #[error("{0}")]
    Offsets(#[from] OffsetError),
    #[error("{0}")]
    AttachBtf(#[from] attach_btf::AttachBtfError),
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    #[error("attaching {hook} failed: {reason}")]
    Attach { hook: String, reason: String },
    #[error("kernel map {0}: {1}")]
    Map(&'static str, String),
    #[error("--cgroup: this kernel does not expose sockets' cgroups (no sock.sk_cgrp_data in BTF)")]
    NoSocketCgroups,
}

/// What the kernel side needs from the command line.
pub struct LoadOptions<'a> {
    pub pids: &'a [u32],
    pub ring_bytes: u32,
    pub close_hook: CloseHookChoice,
    /// `--states`: every transition and close, not only what findings need.
    pub stream_all: bool,
    /// In the default mode, the namespaces whose CLOSE_WAIT sockets
    /// userspace finds by sock_diag scans rather than events (see
    /// `Config::own_netns`); None when it cannot scan.
    pub scan: Option<NetnsReach>,
    /// `--netns`: the only namespace seen (inode); 0 for all.
    pub netns: u32,
    /// `--cgroup`: the cgroup ids seen (a subtree); `None` for all.
    pub cgroups: Option<&'a [u64]>,
    /// `--pid-tree`: children of followed processes are followed.
    pub follow_forks: bool,
    /// `--owner-from-io`: refresh owners on every send and receive.
    pub owner_from_io: bool,
    /// Off with `--no-syscall-hooks`: no syscall tracepoint is attached.
    pub syscall_hooks: bool,
    /// Name sockets by a keyed hash, not their cookie (see `ids`).
    pub keyed_ids: bool,
}

/// How application closes are observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseHook {
    Fentry,
    Kprobe,
    /// Neither loads: inferred from owner-context transitions.
    Transitions,
}
