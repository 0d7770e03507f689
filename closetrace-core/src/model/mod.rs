//! The shared vocabulary: events decoded from kernel records at one
//! boundary (`kernel::decode`) and independent of their layout, and the
//! facts the host layer finds (holders, containers, privileges).
pub mod clock;
pub mod hooks;
pub mod netns;
pub mod ports;
pub mod threads;

use std::fmt;
use std::net::IpAddr;

use closetrace_common::{owner_src, tcp_state};
use compact_str::CompactString;

/// A TCP state as the kernel numbers it (`state as u32` is the kernel's
/// number; `TryFrom<u32>` is the checked way back).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u32)]
pub enum TcpState {
    Established = tcp_state::ESTABLISHED,
    SynSent = tcp_state::SYN_SENT,
    SynRecv = tcp_state::SYN_RECV,
    FinWait1 = tcp_state::FIN_WAIT1,
    FinWait2 = tcp_state::FIN_WAIT2,
    TimeWait = tcp_state::TIME_WAIT,
    Close = tcp_state::CLOSE,
    CloseWait = tcp_state::CLOSE_WAIT,
    LastAck = tcp_state::LAST_ACK,
    Listen = tcp_state::LISTEN,
    Closing = tcp_state::CLOSING,
    NewSynRecv = tcp_state::NEW_SYN_RECV,
    BoundInactive = tcp_state::BOUND_INACTIVE,
}

impl TcpState {
    /// The kernel's name, as `ss` and the tracepoint print it.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::BoundInactive => "BOUND_INACTIVE",
        }
    }
}

impl TryFrom<u32> for TcpState {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            tcp_state::ESTABLISHED => TcpState::Established,
            tcp_state::SYN_SENT => TcpState::SynSent,
            tcp_state::SYN_RECV => TcpState::SynRecv,
            tcp_state::FIN_WAIT1 => TcpState::FinWait1,
            tcp_state::FIN_WAIT2 => TcpState::FinWait2,
            tcp_state::TIME_WAIT => TcpState::TimeWait,
            tcp_state::CLOSE => TcpState::Close,
            tcp_state::CLOSE_WAIT => TcpState::CloseWait,
            tcp_state::LAST_ACK => TcpState::LastAck,
            tcp_state::LISTEN => TcpState::Listen,
            tcp_state::CLOSING => TcpState::Closing,
            tcp_state::NEW_SYN_RECV => TcpState::NewSynRecv,
            tcp_state::BOUND_INACTIVE => TcpState::BoundInactive,
            other => return Err(other),
        })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How closetrace knows who owns a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// Never seen from process context; `owner` is absent.
    Unknown,
    /// The task that caused an owner-only transition (connect, listen, close).
    Transition,
    /// Inherited from the listener that accepted it.
    Listener,
    /// The last task that sent or received on it.
    Io,
    /// Found in a process's fd table at start-up.
    Snapshot,
    /// The task that accept()ed it.
    Accept,
}

impl OwnerSource {
    pub fn name(self) -> &'static str {
        match self {
            OwnerSource::Unknown => "unknown",
            OwnerSource::Transition => "transition",
            OwnerSource::Listener => "listener",
            OwnerSource::Io => "io",
            OwnerSource::Snapshot => "snapshot",
            OwnerSource::Accept => "accept",
        }
    }
}

impl TryFrom<u32> for OwnerSource {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            owner_src::UNKNOWN => OwnerSource::Unknown,
            owner_src::TRANSITION => OwnerSource::Transition,
            owner_src::LISTENER => OwnerSource::Listener,
            owner_src::IO => OwnerSource::Io,
            owner_src::SNAPSHOT => OwnerSource::Snapshot,
            owner_src::ACCEPT => OwnerSource::Accept,
            other => return Err(other),
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl Family {
    /// From the kernel's address family number (AF_INET, AF_INET6).
    pub fn from_af(af: u16) -> Option<Family> {
        match af {
            closetrace_common::AF_INET => Some(Family::Ipv4),
            closetrace_common::AF_INET6 => Some(Family::Ipv6),
            _ => None,
        }
    }

    /// An address of this family from the kernel's 16-byte form (network
    /// order; IPv4 in the first four bytes).
    pub fn addr(self, b: &[u8; 16]) -> IpAddr {
        match self {
            Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            Family::Ipv6 => IpAddr::V6(std::net::Ipv6Addr::from(*b)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// A process (and the thread that was seen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    /// Inline up to 24 bytes (a comm is at most 15): decoding an event
    /// allocates nothing for it, and copies are a memcpy.
    pub comm: CompactString,
    /// When the process started, in /proc's clock ticks since boot (field
    /// 22 of /proc/PID/stat); None when unknown. Pids are reused; (pid,
    /// start) names one process for the whole boot.
    pub start: Option<u64>,
}

impl Task {
    /// The same process as (`pid`, `start`). An unknown start on either
    /// side cannot tell two processes apart: then the pid decides.
    pub fn is(&self, pid: u32, start: Option<u64>) -> bool {
        self.pid == pid
            && match (self.start, start) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// A socket's identity and endpoints. `id` is the kernel socket cookie:
/// unique for the boot, and no kernel address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockRef {
    pub id: u64,
    pub netns: u32,
    /// The cgroup (v2) id the socket belongs to; 0 when unknown.
    pub cgroup: u64,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// What the kernel saw around a transition (see `closetrace_common::flags`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The task on the CPU was exiting: the kernel was closing its files.
    pub exiting: bool,
    /// The task on the CPU was inside shutdown(2).
    pub in_shutdown: bool,
    /// The socket had an error pending: the peer reset it, a timeout or
    /// an ICMP error (the kernel sets it before leaving the state).
    pub error: bool,
    /// connect() failed in its caller before sending a SYN (no local
    /// port): SYN_SENT -> CLOSE that no close caused.
    pub connect_failed: bool,
}

/// One TCP state transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// CLOSE_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub sock: SockRef,
    pub old: TcpState,
    pub new: TcpState,
    /// Time spent in `old`, when closetrace saw the socket enter it.
    pub old_ns: Option<u64>,
    /// The task on the CPU when the kernel made the change.
    pub ctx: Task,
    /// The socket's owner; `None` when not yet known.
    pub owner: Option<Task>,
    pub owner_source: OwnerSource,
    pub context: Context,
}

/// How a close was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseVia {
    /// fentry on tcp_close: every last close, exactly.
    Fentry,
    /// kprobe on tcp_close: the same, where trampolines are refused.
    Kprobe,
    /// Inferred from an owner-context transition (neither hook loads here).
    Transition,
}

impl CloseVia {
    pub fn name(self) -> &'static str {
        match self {
            CloseVia::Fentry => "fentry",
            CloseVia::Kprobe => "kprobe",
            CloseVia::Transition => "transition",
        }
    }
}

/// The application (or its exit) released a TCP socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub ts_ns: u64,
    pub sock: SockRef,
    /// TCP state at the close.
    pub state: TcpState,
    /// The task that closed it.
    pub closer: Task,
    /// Closed by the process's exit rather than by close(2).
    pub exiting: bool,
    pub via: CloseVia,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Connect,
    Bind,
}

impl Syscall {
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Connect => "connect",
            Syscall::Bind => "bind",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Errno {
    #[serde(rename = "EADDRINUSE")]
    AddrInUse,
    #[serde(rename = "EADDRNOTAVAIL")]
    AddrNotAvail,
}

impl Errno {
    pub fn name(self) -> &'static str {
        match self {
            Errno::AddrInUse => "EADDRINUSE",
            Errno::AddrNotAvail => "EADDRNOTAVAIL",
        }
    }
}

/// A connect(2) or bind(2) that failed for want of an address or port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockError {
    pub ts_ns: u64,
    pub syscall: Syscall,
    pub errno: Errno,
    pub family: Family,
    /// The address asked for: the destination of a connect, the local address of a bind.
    pub addr: IpAddr,
    pub port: u16,
    pub task: Task,
    /// The caller's network namespace and cgroup (0: unknown).
    pub netns: u32,
    pub cgroup: u64,
}

/// A call that failed for want of file descriptors: accept() with
/// EMFILE (the process's RLIMIT_NOFILE) or ENFILE (the system's limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfFds {
    pub ts_ns: u64,
    pub task: Task,
    /// ENFILE: the whole system, not only this process, is out.
    pub system_wide: bool,
}

/// accept() returned a socket: its acceptor owns it. Sent only where
/// userspace keeps owners (`--states`), never shown on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub sock_id: u64,
    pub state: TcpState,
    pub acceptor: Task,
}

/// Everything the ring buffer can carry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    State(StateChange),
    Close(Close),
    SockError(SockError),
    OutOfFds(OutOfFds),
    Accepted(Accepted),
}

/// Test builders shared by the state machines' unit tests.
/// A process that has a socket in its fd table (as close_wait_leak's
/// `holders` lists it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// When the process started, in /proc's clock ticks since boot; with
    /// `pid`, it names the process (pids are reused). None: unreadable.
    #[serde(rename = "pid_start")]
    pub start: Option<u64>,
    pub comm: String,
    pub fd: u32,
}

impl Holder {
    /// The holding process as a task (its main thread).
    pub fn task(&self) -> Task {
        Task {
            pid: self.pid,
            tid: self.pid,
            comm: self.comm.as_str().into(),
            start: self.start,
        }
    }
}

/// What `ready` says about privileges after attaching.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Privileges {
    /// Capabilities still held (names of the well-known ones).
    pub kept: Vec<String>,
    /// Why CAP_BPF is kept, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A container runtime, as records name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Runtime {
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "podman")]
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

/// A container, recognised from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The container id (64 hex digits). Shared: every record about a
    /// socket in a container names it, and a clone is then a count.
    pub id: std::sync::Arc<str>,
}

/// Which container a cgroup belongs to. The host layer answers from
/// cgroupfs; `NoContainers` knows none (tests, tools without cgroups).
pub trait ContainerNames {
    fn container(&self, cgroup: u64) -> Option<Container>;
}

pub struct NoContainers;

impl ContainerNames for NoContainers {
    fn container(&self, _cgroup: u64) -> Option<Container> {
        None
    }
}

/// How full a kernel map was.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MapUse {
    pub entries: u32,
    pub capacity: u32,
}

#[cfg(test)]
pub mod fixtures {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    pub fn task(pid: u32, comm: &str) -> Task {
        Task {
            pid,
            tid: pid,
            comm: comm.into(),
            start: None,
        }
    }

    /// `task`, started at `start` ticks since boot.
    pub fn started(pid: u32, comm: &str, start: u64) -> Task {
        Task {
            start: Some(start),
            ..task(pid, comm)
        }
    }

    /// Socket `id` on 127.0.0.1:`sport` <-> 127.0.0.1:40000 in netns 1, at
    /// t = 1000 * id ns, seen in the context of pid 999 "peer", owner unknown.
    pub fn change(id: u64, sport: u16, old: TcpState, new: TcpState) -> StateChange {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        StateChange {
            ts_ns: 1_000 * id,
            sock: SockRef {
                id,
                netns: 1,
                cgroup: 0,
                family: Family::Ipv4,
                saddr: lo,
                sport,
                daddr: lo,
                dport: 40000,
            },
            old,
            new,
            old_ns: None,
            ctx: task(999, "peer"),
            owner: None,
            owner_source: OwnerSource::Unknown,
            context: Context::default(),
        }
    }

    /// The same, owned by `owner` as learned from a transition.
    pub fn owned(id: u64, sport: u16, old: TcpState, new: TcpState, owner: Task) -> StateChange {
        StateChange {
            owner: Some(owner),
            owner_source: OwnerSource::Transition,
            ..change(id, sport, old, new)
        }
    }
}
