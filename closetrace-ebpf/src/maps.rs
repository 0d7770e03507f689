//! Every map the programs share with userspace and with each other, and
//! the configuration userspace writes before load.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use closetrace_common::{
    CGROUPS_CAPACITY, Config, IN_SHUTDOWN_CAPACITY, LISTENERS_CAPACITY, LOST_SLOTS, ListenKey,
    ListenerInfo, NETNS_ACTIVITY_SLOTS, PIDS_CAPACITY, PendingCall, SOCKS_CAPACITY, SockInfo,
    TRANSITION_SLOTS, WATCH_CAPACITY,
};

/// Offsets and filter switches, written by userspace before load.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::UNSET;

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Failed ring-buffer reserves, per CPU, so counting never contends.
#[map]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Transitions seen (after the `--pid` filter), per CPU, indexed
/// `old * STATE_SLOTS + new`: counted here so that the default mode need
/// not send every transition to userspace to summarise them.
#[map]
pub(crate) static TRANSITIONS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);

/// Per CPU, when accept() last reported running out of fds: a server
/// that loops on a failing accept() reports once a second per CPU.
#[map]
pub(crate) static OUT_OF_FDS_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// CLOSE_WAIT entries per namespace slot (`netns_slot`), per CPU: the
/// scans read only namespaces whose slot moved (and, now and then, all).
/// The second bank (`netns_ipv6_slot`) counts IPv6 sockets alone, so a
/// namespace's IPv6 dump is made only where one may be found.
#[map]
pub(crate) static NETNS_ACTIVITY: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(NETNS_ACTIVITY_SLOTS, 0);

/// Owner and current state per socket cookie. LRU so that sockets whose end
/// we miss (lost events, sockets closed before start-up) cannot fill it.
#[map]
pub(crate) static SOCKS: LruHashMap<u64, SockInfo> =
    LruHashMap::with_max_entries(SOCKS_CAPACITY, 0);

/// One past the highest cookie the start-up snapshot gave an entry in
/// `SOCKS` (0 until userspace has seeded it: then every closing socket is
/// looked up). With lean owners no other socket but a listener gets one,
/// so a socket closing with a cookie at or above it is not looked up: a
/// hash lookup that misses costs a cache miss or two on every connection.
#[map]
pub(crate) static SEEDED_BELOW: Array<u64> = Array::with_max_entries(1, 0);

/// Owner of each listening port, inherited by the sockets it accepts.
#[map]
pub(crate) static LISTENERS: LruHashMap<ListenKey, ListenerInfo> =
    LruHashMap::with_max_entries(LISTENERS_CAPACITY, 0);

/// CLOSE_WAIT sockets (by cookie) of closetrace's own namespace that
/// userspace tracks as possible leaks: how they leave CLOSE_WAIT is sent.
/// The rest leave unreported in the default mode: a prompt close is the
/// common case and needs no record.
#[map]
pub(crate) static WATCH: LruHashMap<u64, u8> = LruHashMap::with_max_entries(WATCH_CAPACITY, 0);

/// `--pid` filter: tgids whose sockets are reported. With `--pid-tree`
/// the programs below add forked children and remove exited processes.
#[map]
pub(crate) static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PIDS_CAPACITY, 0);

/// `--cgroup` filter: cgroup ids (the given cgroup and its descendants,
/// kept up to date by userspace).
#[map]
pub(crate) static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(CGROUPS_CAPACITY, 0);

/// The connect/bind in flight on each CPU. The failures reported here
/// (EADDRNOTAVAIL, EADDRINUSE) return before the call can sleep, so entry
/// and exit meet on one CPU; a per-CPU slot costs a fraction of a per-thread
/// hash map insert and delete on every connect().
#[map]
pub(crate) static CALLS: PerCpuArray<PendingCall> = PerCpuArray::with_max_entries(1, 0);

/// Threads currently inside shutdown(2): their CLOSE_WAIT -> LAST_ACK is a
/// half-close, not a close. LRU in case an exit event is ever missed.
#[map]
pub(crate) static IN_SHUTDOWN: LruHashMap<u32, u8> =
    LruHashMap::with_max_entries(IN_SHUTDOWN_CAPACITY, 0);

#[inline(always)]
pub(crate) fn config() -> &'static Config {
    // The value is patched into .rodata at load time, so the compiler must
    // not fold the compile-time placeholder: its address passes through a
    // volatile read. A reference, not a copy: the stack is 512 bytes.
    let addr = &raw const CONFIG;
    unsafe { &*core::ptr::read_volatile(&addr) }
}
