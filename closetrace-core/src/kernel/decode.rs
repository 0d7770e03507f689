//! The one place where kernel bytes become typed events. Every record is
//! checked for its kind and exact size before any field is read, and every
//! enumerated value goes through `TryFrom`: nothing is transmuted.
use closetrace_common::{
    ACCEPT_RECORD_SIZE, AcceptRecord, CLOSE_RECORD_SIZE, COMM_LEN, CloseRecord, EADDRINUSE,
    EADDRNOTAVAIL, EMFILE, ENFILE, RECORD_ACCEPT, RECORD_CLOSE, RECORD_SOCK_ERROR, RECORD_STATE,
    SOCK_ERROR_RECORD_SIZE, STATE_RECORD_SIZE, SockErrorRecord, SockInfo, SocketFd, StateRecord,
    TaskId, close_src, flags, owner_src, syscall,
};
use compact_str::CompactString;
use thiserror::Error;

use crate::host::holders;
use crate::model::{
    Accepted, Close, CloseVia, Context, Errno, Family, KernelEvent, OutOfFds, OwnerSource,
    SockError, SockRef, StateChange, Syscall, Task, TcpState,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short to hold a kind")]
    NoKind { len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record kind {kind} is {len} bytes, expected {expected} (truncated)")]
    Truncated {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("record kind {kind} is {len} bytes, expected {expected} (oversized)")]
    Oversized {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("unknown TCP state {0}")]
    UnknownState(u32),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("unknown owner source {0}")]
    UnknownOwnerSource(u32),
    #[error("unknown close source {0}")]
    UnknownCloseSource(u32),
    #[error("unknown syscall {0}")]
    UnknownSyscall(u32),
    #[error("unexpected errno {0}")]
    UnknownErrno(u32),
    #[error("fd iterator output of {len} bytes is not whole entries of {entry}")]
    PartialFdEntry { len: usize, entry: usize },
}

/// Decode one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let kind_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::NoKind { len: bytes.len() })?;
    let kind = u32::from_ne_bytes(kind_bytes);
    match kind {
        RECORD_STATE => {
            let raw: StateRecord = read_exact(kind, bytes, STATE_RECORD_SIZE)?;
            decode_state(&raw).map(KernelEvent::State)
        }
        RECORD_SOCK_ERROR => {
            let raw: SockErrorRecord = read_exact(kind, bytes, SOCK_ERROR_RECORD_SIZE)?;
            if raw.syscall == syscall::ACCEPT {
                return decode_out_of_fds(&raw).map(KernelEvent::OutOfFds);
            }
            decode_sock_error(&raw).map(KernelEvent::SockError)
        }
        RECORD_CLOSE => {
            let raw: CloseRecord = read_exact(kind, bytes, CLOSE_RECORD_SIZE)?;
            decode_close(&raw).map(KernelEvent::Close)
        }
        RECORD_ACCEPT => {
            let raw: AcceptRecord = read_exact(kind, bytes, ACCEPT_RECORD_SIZE)?;
            Ok(KernelEvent::Accepted(Accepted {
                sock_id: raw.sock_id,
                state: TcpState::try_from(raw.state).map_err(DecodeError::UnknownState)?,
                acceptor: task(&raw.task),
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The fd iterator's output: `SocketFd` entries back to back. Sockets
/// whose inode does not fit the 32 bits sock_diag reports are skipped.
pub fn socket_fds(bytes: &[u8]) -> Result<Vec<holders::SocketFd>, DecodeError> {
    let entry = std::mem::size_of::<SocketFd>();
    if !bytes.len().is_multiple_of(entry) {
        return Err(DecodeError::PartialFdEntry {
            len: bytes.len(),
            entry,
        });
    }
    let mut out = Vec::with_capacity(bytes.len() / entry);
    for chunk in bytes.chunks_exact(entry) {
        let raw: SocketFd = read_exact(0, chunk, entry)?;
        if let Ok(inode) = u32::try_from(raw.inode) {
            out.push(holders::SocketFd {
                pid: raw.tgid,
                fd: raw.fd,
                inode,
            });
        }
    }
    Ok(out)
}

fn read_exact<T: aya::Pod>(kind: u32, bytes: &[u8], expected: usize) -> Result<T, DecodeError> {
    debug_assert_eq!(std::mem::size_of::<T>(), expected);
    let len = bytes.len();
    if len < expected {
        return Err(DecodeError::Truncated {
            kind,
            len,
            expected,
        });
    }
    if len > expected {
        return Err(DecodeError::Oversized {
            kind,
            len,
            expected,
        });
    }
    // SAFETY: the length was checked above and T is Pod (any bit pattern is
    // valid); read_unaligned because the buffer carries no alignment promise.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn decode_state(r: &StateRecord) -> Result<StateChange, DecodeError> {
    let old = TcpState::try_from(r.old_state).map_err(DecodeError::UnknownState)?;
    let new = TcpState::try_from(r.new_state).map_err(DecodeError::UnknownState)?;
    let owner_source =
        OwnerSource::try_from(r.owner_src).map_err(DecodeError::UnknownOwnerSource)?;
    let sock = sock_ref(
        (r.sock_id, r.netns, r.cgroup),
        r.family,
        (&r.saddr, r.sport),
        (&r.daddr, r.dport),
    )?;
    let old_ns =
        (r.old_since_ns != 0 && r.old_since_ns <= r.ts_ns).then(|| r.ts_ns - r.old_since_ns);
    let owner = (owner_source != OwnerSource::Unknown && r.owner.tgid != 0).then(|| task(&r.owner));
    Ok(StateChange {
        ts_ns: r.ts_ns,
        sock,
        old,
        new,
        old_ns,
        ctx: task(&r.ctx),
        owner_source: if owner.is_some() {
            owner_source
        } else {
            OwnerSource::Unknown
        },
        owner,
        context: Context {
            exiting: r.flags & flags::CTX_EXITING != 0,
            in_shutdown: r.flags & flags::CTX_IN_SHUTDOWN != 0,
            error: r.flags & flags::SOCK_ERROR != 0,
            connect_failed: r.flags & flags::CONNECT_FAILED != 0,
        },
    })
}

fn decode_close(r: &CloseRecord) -> Result<Close, DecodeError> {
    let state = TcpState::try_from(r.state).map_err(DecodeError::UnknownState)?;
    let via = match r.close_src {
        close_src::FENTRY => CloseVia::Fentry,
        close_src::KPROBE => CloseVia::Kprobe,
        other => return Err(DecodeError::UnknownCloseSource(other)),
    };
    Ok(Close {
        ts_ns: r.ts_ns,
        sock: sock_ref(
            (r.sock_id, r.netns, r.cgroup),
            r.family,
            (&r.saddr, r.sport),
            (&r.daddr, r.dport),
        )?,
        state,
        closer: task(&r.task),
        exiting: r.flags & flags::CTX_EXITING != 0,
        via,
    })
}

fn decode_out_of_fds(r: &SockErrorRecord) -> Result<OutOfFds, DecodeError> {
    let system_wide = match r.errno {
        EMFILE => false,
        ENFILE => true,
        other => return Err(DecodeError::UnknownErrno(other)),
    };
    Ok(OutOfFds {
        ts_ns: r.ts_ns,
        task: task(&r.task),
        system_wide,
    })
}

fn decode_sock_error(r: &SockErrorRecord) -> Result<SockError, DecodeError> {
    let syscall = match r.syscall {
        syscall::CONNECT => Syscall::Connect,
        syscall::BIND => Syscall::Bind,
        other => return Err(DecodeError::UnknownSyscall(other)),
    };
    let errno = match r.errno {
        EADDRINUSE => Errno::AddrInUse,
        EADDRNOTAVAIL => Errno::AddrNotAvail,
        other => return Err(DecodeError::UnknownErrno(other)),
    };
    let family = Family::from_af(r.family).ok_or(DecodeError::UnknownFamily(r.family))?;
    let addr = family.addr(&r.addr);
    Ok(SockError {
        ts_ns: r.ts_ns,
        syscall,
        errno,
        family,
        addr,
        port: r.port,
        task: task(&r.task),
        netns: r.netns,
        cgroup: r.cgroup,
    })
}

fn sock_ref(
    (id, netns, cgroup): (u64, u32, u64),
    family: u16,
    (saddr, sport): (&[u8; 16], u16),
    (daddr, dport): (&[u8; 16], u16),
) -> Result<SockRef, DecodeError> {
    let family = Family::from_af(family).ok_or(DecodeError::UnknownFamily(family))?;
    Ok(SockRef {
        id,
        netns,
        cgroup,
        family,
        saddr: family.addr(saddr),
        sport,
        daddr: family.addr(daddr),
        dport,
    })
}

/// `comm` is NUL-padded and may hold any bytes the process chose.
pub fn comm_string(comm: &[u8; COMM_LEN]) -> CompactString {
    let end = comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
    CompactString::from_utf8_lossy(&comm[..end])
}

pub fn task(t: &TaskId) -> Task {
    Task {
        pid: t.tgid,
        tid: t.tid,
        comm: comm_string(&t.comm),
        start: (t.start_ns != 0).then(|| crate::host::procs::ticks(t.start_ns)),
    }
}

/// A process as the kernel's maps hold it: the inverse of `task`, with
/// the start time back in the kernel's unit (decoding rounds it to ticks
/// again, so the two compare equal).
pub fn task_id(t: &Task) -> TaskId {
    let mut comm = [0u8; COMM_LEN];
    let n = t.comm.len().min(COMM_LEN - 1);
    comm[..n].copy_from_slice(&t.comm.as_bytes()[..n]);
    TaskId {
        tgid: t.pid,
        tid: t.tid,
        comm,
        start_ns: t.start.map_or(0, |s| s * crate::host::procs::tick_ns()),
    }
}

/// An owner found in /proc for a socket that predates start-up, as the
/// kernel's socket map holds it.
pub fn seed_info(owner: &Task, state: TcpState) -> SockInfo {
    SockInfo {
        owner: task_id(owner),
        owner_src: owner_src::SNAPSHOT,
        state: state as u32,
        since_ns: 0,
    }
}

/// When a socket entered CLOSE_WAIT (0: it is not there, or the kernel did
/// not see it enter) and its owner, from the kernel's socket map.
pub fn close_wait_entry(info: &SockInfo) -> (u64, Option<Task>) {
    let since = if info.state == closetrace_common::tcp_state::CLOSE_WAIT {
        info.since_ns
    } else {
        0
    };
    let owner =
        (info.owner_src != owner_src::UNKNOWN && info.owner.tgid != 0).then(|| task(&info.owner));
    (since, owner)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use closetrace_common::{AF_INET, AF_INET6, owner_src, tcp_state};

    use super::*;

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn record() -> StateRecord {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        StateRecord {
            kind: RECORD_STATE,
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::CLOSE_WAIT,
            owner_src: owner_src::LISTENER,
            ts_ns: 5_000_000_000,
            old_since_ns: 4_750_000_000,
            sock_id: 0x1234,
            netns: 4026531840,
            family: AF_INET,
            sport: 9501,
            dport: 54004,
            flags: flags::SOCK_ERROR | flags::CTX_EXITING,
            _pad: [0; 4],
            saddr,
            daddr: saddr,
            ctx: TaskId {
                tgid: 200,
                tid: 201,
                comm: comm("client"),
                start_ns: 0,
            },
            owner: TaskId {
                tgid: 100,
                tid: 100,
                comm: comm("server"),
                // 12.345 s after boot: tick 1234 at USER_HZ 100.
                start_ns: 12_345_678_901,
            },
            cgroup: 77,
        }
    }

    fn pod_bytes<T: aya::Pod>(r: &T) -> Vec<u8> {
        // SAFETY: T is Pod; viewing it as bytes is what the kernel does.
        unsafe {
            std::slice::from_raw_parts((r as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn bytes(r: &StateRecord) -> Vec<u8> {
        pod_bytes(r)
    }

    fn close_record() -> CloseRecord {
        let r = record();
        CloseRecord {
            kind: RECORD_CLOSE,
            state: tcp_state::CLOSE_WAIT,
            close_src: close_src::FENTRY,
            _pad0: 0,
            ts_ns: r.ts_ns,
            sock_id: r.sock_id,
            netns: r.netns,
            family: AF_INET6,
            sport: 9501,
            dport: 54004,
            flags: flags::CTX_EXITING,
            _pad1: [0; 4],
            saddr: Ipv6Addr::LOCALHOST.octets(),
            daddr: Ipv6Addr::LOCALHOST.octets(),
            task: r.owner,
            cgroup: r.cgroup,
        }
    }

    #[test]
    fn decodes_a_sock_error() {
        let r = SockErrorRecord {
            kind: RECORD_SOCK_ERROR,
            syscall: syscall::CONNECT,
            errno: EADDRNOTAVAIL,
            family: AF_INET,
            port: 9501,
            ts_ns: 7,
            addr: record().saddr,
            task: record().ctx,
            netns: 4026531840,
            _pad: 0,
            cgroup: 77,
        };
        let Ok(KernelEvent::SockError(e)) = decode(&pod_bytes(&r)) else {
            panic!("not a sock error");
        };
        assert_eq!(
            (e.syscall, e.errno, e.port),
            (Syscall::Connect, Errno::AddrNotAvail, 9501)
        );
        assert_eq!(e.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(e.task.pid, 200);
        assert_eq!((e.netns, e.cgroup), (4026531840, 77));
        let mut bad = r;
        bad.errno = 1;
        assert_eq!(decode(&pod_bytes(&bad)), Err(DecodeError::UnknownErrno(1)));
        let mut bad = r;
        bad.syscall = 9;
        assert_eq!(
            decode(&pod_bytes(&bad)),
            Err(DecodeError::UnknownSyscall(9))
        );
        // accept() out of fds: the process that hit it; other errnos are refused.
        let mut emfile = r;
        (emfile.syscall, emfile.errno) = (syscall::ACCEPT, EMFILE);
        let Ok(KernelEvent::OutOfFds(o)) = decode(&pod_bytes(&emfile)) else {
            panic!("not decoded as out of fds");
        };
        assert_eq!((o.task.pid, o.system_wide), (200, false));
        emfile.errno = EADDRINUSE;
        assert_eq!(
            decode(&pod_bytes(&emfile)),
            Err(DecodeError::UnknownErrno(EADDRINUSE))
        );
        let b = pod_bytes(&r);
        assert!(matches!(
            decode(&b[..40]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn decodes_an_accept() {
        let mut r = AcceptRecord {
            kind: RECORD_ACCEPT,
            state: TcpState::Established as u32,
            sock_id: 42,
            task: TaskId {
                tgid: 300,
                tid: 301,
                comm: comm("worker"),
                start_ns: 5,
            },
        };
        let Ok(KernelEvent::Accepted(a)) = decode(&pod_bytes(&r)) else {
            panic!("not an accept");
        };
        assert_eq!((a.sock_id, a.state), (42, TcpState::Established));
        assert_eq!((a.acceptor.pid, a.acceptor.comm.as_str()), (300, "worker"));
        let b = pod_bytes(&r);
        assert!(matches!(
            decode(&b[..ACCEPT_RECORD_SIZE - 4]),
            Err(DecodeError::Truncated { .. })
        ));
        r.state = 99;
        assert_eq!(decode(&pod_bytes(&r)), Err(DecodeError::UnknownState(99)));
    }

    #[test]
    fn decodes_a_close() {
        let Ok(KernelEvent::Close(c)) = decode(&pod_bytes(&close_record())) else {
            panic!("not a close");
        };
        assert_eq!(c.state, TcpState::CloseWait);
        assert_eq!(c.via, CloseVia::Fentry);
        assert!(c.exiting);
        assert_eq!(c.closer.pid, 100);
        assert_eq!(c.sock.cgroup, 77);
        assert_eq!(c.sock.saddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        let b = pod_bytes(&close_record());
        assert!(matches!(
            decode(&b[..CLOSE_RECORD_SIZE - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut r = close_record();
        r.close_src = 9;
        assert_eq!(
            decode(&pod_bytes(&r)),
            Err(DecodeError::UnknownCloseSource(9))
        );
    }

    #[test]
    fn decodes_a_state_change() {
        let Ok(KernelEvent::State(s)) = decode(&bytes(&record())) else {
            panic!("not a state change");
        };
        assert_eq!(
            s.context,
            Context {
                exiting: true,
                in_shutdown: false,
                error: true,
                connect_failed: false,
            }
        );
        assert_eq!(s.old, TcpState::Established);
        assert_eq!(s.new, TcpState::CloseWait);
        assert_eq!(s.sock.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((s.sock.sport, s.sock.dport), (9501, 54004));
        assert_eq!(s.old_ns, Some(250_000_000));
        assert_eq!(s.ctx.pid, 200);
        assert_eq!(s.ctx.comm, "client");
        let owner = s.owner.unwrap();
        assert_eq!((owner.pid, owner.comm.as_str()), (100, "server"));
        assert_eq!(
            owner.start,
            Some(12_345_678_901 / crate::host::procs::tick_ns())
        );
        assert_eq!(s.ctx.start, None, "0 is unknown");
        assert_eq!(s.owner_source, OwnerSource::Listener);
    }

    #[test]
    fn decodes_ipv6() {
        let mut r = record();
        r.family = AF_INET6;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        let Ok(KernelEvent::State(s)) = decode(&bytes(&r)) else {
            panic!("not a state change");
        };
        assert_eq!(s.sock.family, Family::Ipv6);
        assert_eq!(s.sock.saddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn socket_fds_are_whole_entries() {
        let entries = [
            SocketFd {
                tgid: 10,
                fd: 3,
                inode: 77,
            },
            SocketFd {
                tgid: 11,
                fd: 4,
                inode: u64::from(u32::MAX) + 1,
            },
        ];
        let bytes: Vec<u8> = entries.iter().flat_map(pod_bytes).collect();
        let fds = socket_fds(&bytes).expect("whole entries");
        let want = holders::SocketFd {
            pid: 10,
            fd: 3,
            inode: 77,
        };
        assert_eq!(fds, [want], "the 33-bit inode is skipped");
        assert!(matches!(
            socket_fds(&bytes[..20]),
            Err(DecodeError::PartialFdEntry { len: 20, entry: 16 })
        ));
        assert_eq!(socket_fds(&[]), Ok(vec![]));
    }

    #[test]
    fn rejects_truncated_and_oversized() {
        let b = bytes(&record());
        assert_eq!(
            decode(&b[..100]),
            Err(DecodeError::Truncated {
                kind: RECORD_STATE,
                len: 100,
                expected: STATE_RECORD_SIZE
            })
        );
        let mut big = b.clone();
        big.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode(&big),
            Err(DecodeError::Oversized { len, .. }) if len == STATE_RECORD_SIZE + 8
        ));
        assert_eq!(decode(&b[..3]), Err(DecodeError::NoKind { len: 3 }));
        assert_eq!(decode(&[]), Err(DecodeError::NoKind { len: 0 }));
    }

    #[test]
    fn rejects_unknown_values() {
        let mut r = record();
        r.new_state = 99;
        assert_eq!(decode(&bytes(&r)), Err(DecodeError::UnknownState(99)));
        let mut r = record();
        r.old_state = 0;
        assert_eq!(decode(&bytes(&r)), Err(DecodeError::UnknownState(0)));
        let mut r = record();
        r.family = 1;
        assert_eq!(decode(&bytes(&r)), Err(DecodeError::UnknownFamily(1)));
        let mut r = record();
        r.owner_src = 77;
        assert_eq!(decode(&bytes(&r)), Err(DecodeError::UnknownOwnerSource(77)));
        let mut r = record();
        r.kind = 42;
        assert_eq!(decode(&bytes(&r)), Err(DecodeError::UnknownKind(42)));
    }

    #[test]
    fn unknown_owner_and_missing_entry_time() {
        let mut r = record();
        r.owner_src = owner_src::UNKNOWN;
        r.old_since_ns = 0;
        let Ok(KernelEvent::State(s)) = decode(&bytes(&r)) else {
            panic!("not a state change");
        };
        assert_eq!(s.owner, None);
        assert_eq!(s.owner_source, OwnerSource::Unknown);
        assert_eq!(s.old_ns, None);
        // An entry time after the event (clock confusion) is not reported as negative.
        let mut r = record();
        r.old_since_ns = r.ts_ns + 1;
        let Ok(KernelEvent::State(s)) = decode(&bytes(&r)) else {
            panic!("not a state change");
        };
        assert_eq!(s.old_ns, None);
    }

    #[test]
    fn comm_with_invalid_utf8_is_lossy_not_a_panic() {
        let mut c = [0xffu8; COMM_LEN];
        c[3] = 0;
        assert_eq!(comm_string(&c), "\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(comm_string(&[b'a'; COMM_LEN]), "a".repeat(16));
    }
}
