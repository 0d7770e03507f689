//! What a leak's holder is doing, as the host reads it from /proc: each
//! thread's scheduler state, the system call it is in with its fd
//! arguments resolved, its wait channel and CPU time. The `track` layer
//! turns these samples into a diagnosis.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::TcpState;

/// A thread's scheduler state (/proc/PID/task/TID/stat, field 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedState {
    #[serde(rename = "R")]
    Running,
    #[serde(rename = "S")]
    Sleeping,
    /// Uninterruptible: disk, NFS, a kernel lock.
    #[serde(rename = "D")]
    DiskSleep,
    #[serde(rename = "T")]
    Stopped,
    #[serde(rename = "Z")]
    Zombie,
    #[serde(rename = "I")]
    Idle,
    #[serde(rename = "?")]
    Other,
}

impl SchedState {
    pub fn from_char(c: char) -> SchedState {
        match c {
            'R' => SchedState::Running,
            'S' => SchedState::Sleeping,
            'D' => SchedState::DiskSleep,
            'T' | 't' => SchedState::Stopped,
            'Z' | 'X' => SchedState::Zombie,
            'I' => SchedState::Idle,
            _ => SchedState::Other,
        }
    }

    pub fn letter(self) -> char {
        match self {
            SchedState::Running => 'R',
            SchedState::Sleeping => 'S',
            SchedState::DiskSleep => 'D',
            SchedState::Stopped => 'T',
            SchedState::Zombie => 'Z',
            SchedState::Idle => 'I',
            SchedState::Other => '?',
        }
    }
}

/// Where a thread is, by /proc/PID/task/TID/syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallSample {
    /// In a system call: its number (x86_64) and six arguments.
    Syscall { nr: u32, args: [u64; 6] },
    /// Blocked in the kernel outside a system call (a page fault, ...).
    Kernel,
    /// Running in user space.
    User,
    /// The file could not be read (the thread exited, or no permission).
    Unknown,
}

impl CallSample {
    /// The system call's number, when in one.
    pub fn nr(&self) -> Option<u32> {
        match self {
            CallSample::Syscall { nr, .. } => Some(*nr),
            _ => None,
        }
    }
}

/// What an fd argument is, by its /proc/PID/fd link.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FdTarget {
    /// A TCP socket, as sock_diag lists it in the holder's namespace.
    Tcp {
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
        state: TcpState,
    },
    /// A TCP listener.
    Listener {
        saddr: IpAddr,
        sport: u16,
    },
    /// Another socket: Unix, UDP, or TCP gone by the time it was looked up.
    Socket,
    Pipe,
    Epoll,
    Eventfd,
    Timerfd,
    Signalfd,
    /// A file, by path.
    File {
        path: String,
    },
    /// Any other anonymous inode, by its name.
    Other {
        name: String,
    },
    /// The fd was not open (any more) when it was looked at.
    Closed,
}

impl FdTarget {
    /// From the text of a /proc/PID/fd link; sockets are looked up by the
    /// caller (`socket:[INODE]` gives `Err(INODE)`).
    pub fn from_link(link: &str) -> Result<FdTarget, u32> {
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        {
            return Err(inode.parse().unwrap_or(0));
        }
        if link.starts_with("pipe:[") {
            return Ok(FdTarget::Pipe);
        }
        if let Some(name) = link.strip_prefix("anon_inode:") {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            return Ok(match name {
                "eventpoll" => FdTarget::Epoll,
                "eventfd" => FdTarget::Eventfd,
                "timerfd" => FdTarget::Timerfd,
                "signalfd" => FdTarget::Signalfd,
                other => FdTarget::Other {
                    name: other.to_string(),
                },
            });
        }
        Ok(FdTarget::File {
            path: link.to_string(),
        })
    }
}

/// One thread, read once.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadSample {
    pub tid: u32,
    pub comm: String,
    pub state: SchedState,
    pub call: CallSample,
    /// The fd arguments of its system call, resolved.
    pub fds: Vec<(u32, FdTarget)>,
    /// The kernel function it waits in (/proc/.../wchan); None if running.
    pub wchan: Option<String>,
    /// Its kernel stack, innermost first, as function names (offsets and
    /// addresses dropped); empty where unreadable.
    pub stack: Vec<String>,
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// The same, read again after the host's short pause (threads on CPU
    /// only): growing CPU tells a busy loop from a blocked thread.
    pub cpu_ticks_later: Option<u64>,
    /// How long since it last ran, in ms (sched's `se.exec_start` against
    /// the reader's own); None where the kernel does not say.
    pub off_cpu_ms: Option<f64>,
}

/// One process, read once: its threads and its fd budget.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ProcessSample {
    pub pid: u32,
    pub start: Option<u64>,
    pub comm: String,
    /// Threads read (at most the host's cap).
    pub threads: Vec<ThreadSample>,
    /// Threads the process had; more than `threads.len()` when capped.
    pub threads_total: u32,
    /// Open fds; None when the fd table could not be read.
    pub fds: Option<u32>,
    /// RLIMIT_NOFILE's soft limit; None when unlimited or unreadable.
    pub fd_limit: Option<u64>,
    /// Clock ticks per second of the CPU times.
    pub ticks_per_s: u64,
    /// How long the pause between the two CPU reads was, in ms.
    pub pause_ms: f64,
    /// Exited (or became unreadable) while being read: what was read stands.
    pub partial: bool,
}

/// What kind of wait a system call is, for ranking threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// Reads or writes an fd: what the fd is decides.
    Io,
    Futex,
    Sleep,
    /// Waits for new work: epoll, poll, select, accept, io_uring.
    Idle,
    Other,
}

/// x86_64 system calls closetrace names: (number, name, kind, which
/// arguments are fds).
const SYSCALLS: &[(u32, &str, CallKind, &[usize])] = &[
    (0, "read", CallKind::Io, &[0]),
    (1, "write", CallKind::Io, &[0]),
    (3, "close", CallKind::Other, &[0]),
    (7, "poll", CallKind::Idle, &[]),
    (16, "ioctl", CallKind::Other, &[0]),
    (17, "pread64", CallKind::Io, &[0]),
    (18, "pwrite64", CallKind::Io, &[0]),
    (19, "readv", CallKind::Io, &[0]),
    (20, "writev", CallKind::Io, &[0]),
    (23, "select", CallKind::Idle, &[]),
    (24, "sched_yield", CallKind::Other, &[]),
    (34, "pause", CallKind::Sleep, &[]),
    (35, "nanosleep", CallKind::Sleep, &[]),
    (40, "sendfile", CallKind::Io, &[0, 1]),
    (42, "connect", CallKind::Io, &[0]),
    (43, "accept", CallKind::Idle, &[0]),
    (44, "sendto", CallKind::Io, &[0]),
    (45, "recvfrom", CallKind::Io, &[0]),
    (46, "sendmsg", CallKind::Io, &[0]),
    (47, "recvmsg", CallKind::Io, &[0]),
    (48, "shutdown", CallKind::Other, &[0]),
    (61, "wait4", CallKind::Other, &[]),
    (65, "semop", CallKind::Futex, &[]),
    (72, "fcntl", CallKind::Other, &[0]),
    (73, "flock", CallKind::Futex, &[0]),
    (74, "fsync", CallKind::Io, &[0]),
    (75, "fdatasync", CallKind::Io, &[0]),
    (128, "rt_sigtimedwait", CallKind::Sleep, &[]),
    (130, "rt_sigsuspend", CallKind::Sleep, &[]),
    (202, "futex", CallKind::Futex, &[]),
    (220, "semtimedop", CallKind::Futex, &[]),
    (230, "clock_nanosleep", CallKind::Sleep, &[]),
    (232, "epoll_wait", CallKind::Idle, &[0]),
    (247, "waitid", CallKind::Other, &[]),
    (270, "pselect6", CallKind::Idle, &[]),
    (271, "ppoll", CallKind::Idle, &[]),
    (275, "splice", CallKind::Io, &[0, 2]),
    (281, "epoll_pwait", CallKind::Idle, &[0]),
    (288, "accept4", CallKind::Idle, &[0]),
    (299, "recvmmsg", CallKind::Io, &[0]),
    (307, "sendmmsg", CallKind::Io, &[0]),
    (426, "io_uring_enter", CallKind::Idle, &[0]),
    (441, "epoll_pwait2", CallKind::Idle, &[0]),
    (449, "futex_wait", CallKind::Futex, &[]),
    (455, "futex_waitv", CallKind::Futex, &[]),
];

/// A system call's name, kind and fd arguments, if closetrace knows it.
pub fn syscall(nr: u32) -> Option<(&'static str, CallKind, &'static [usize])> {
    SYSCALLS
        .iter()
        .find(|(n, ..)| *n == nr)
        .map(|&(_, name, kind, fds)| (name, kind, fds))
}

/// The name of a system call, or `syscall_N`.
pub fn syscall_name(nr: u32) -> String {
    syscall(nr).map_or_else(|| format!("syscall_{nr}"), |(n, ..)| n.to_string())
}

/// How a process is running out of file descriptors.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct FdBudget {
    /// Open fds when last read.
    pub fds: u32,
    /// RLIMIT_NOFILE's soft limit; None when unlimited or unreadable.
    pub limit: Option<u64>,
    /// Leaks (fds held in CLOSE_WAIT) per minute, from its open leaks.
    pub leak_rate_per_min: f64,
    /// Seconds until the fds reach the limit at that rate; None when it
    /// does not leak or has no limit.
    pub eta_s: Option<f64>,
}

/// The leaked socket, from the kernel's tcp_info (INET_DIAG_INFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TcpInfo {
    /// Since data was last received, and sent (ms).
    pub last_data_recv_ms: u32,
    pub last_data_sent_ms: u32,
    /// Bytes received from the peer in the connection's life (its FIN
    /// counts one, as it takes a sequence number).
    pub bytes_received: u64,
    /// Bytes sent and acknowledged by the peer.
    pub bytes_acked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_links_are_told_apart() {
        assert_eq!(FdTarget::from_link("socket:[4242]"), Err(4242));
        assert_eq!(FdTarget::from_link("pipe:[7]"), Ok(FdTarget::Pipe));
        assert_eq!(
            FdTarget::from_link("anon_inode:[eventpoll]"),
            Ok(FdTarget::Epoll)
        );
        assert_eq!(
            FdTarget::from_link("anon_inode:[eventfd]"),
            Ok(FdTarget::Eventfd)
        );
        assert_eq!(
            FdTarget::from_link("anon_inode:inotify"),
            Ok(FdTarget::Other {
                name: "inotify".into()
            })
        );
        assert_eq!(
            FdTarget::from_link("/var/log/x.log"),
            Ok(FdTarget::File {
                path: "/var/log/x.log".into()
            })
        );
    }

    #[test]
    fn syscalls_are_named_with_their_fd_arguments() {
        assert_eq!(syscall(45), Some(("recvfrom", CallKind::Io, &[0usize][..])));
        assert_eq!(syscall(202).map(|s| s.1), Some(CallKind::Futex));
        assert_eq!(syscall_name(9999), "syscall_9999");
        let mut nrs: Vec<u32> = SYSCALLS.iter().map(|s| s.0).collect();
        nrs.dedup();
        assert_eq!(nrs.len(), SYSCALLS.len(), "sorted, no duplicates");
    }
}
