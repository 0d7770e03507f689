//! The host's reads for a leak's diagnosis: its holders' threads (socket
//! fds named in each holder's own network namespace) and single sockets
//! by tuple, in any namespace closetrace reaches. None of this counts as
//! a namespace read for the scans (`System::read` is left alone).
use std::collections::HashMap;
use std::net::IpAddr;

use super::netns::Namespace;
use super::sockets::{self, DiagSocket};
use super::{System, lookup, threads};
use crate::model::TcpState;
use crate::model::threads::{FdTarget, ProcessSample, TcpInfo};

impl System {
    /// Run `read` inside namespace `netns`: at home directly, else through
    /// `via` (a /proc/PID/ns/net link) or a discovered mount. None when it
    /// cannot be entered or is outside `--netns`.
    fn in_namespace<T>(
        &mut self,
        netns: u32,
        via: Option<u32>,
        read: impl FnOnce() -> T,
    ) -> Option<T> {
        if netns == 0 || !self.reach.covers(netns) {
            return None;
        }
        if netns == self.own {
            return Some(read());
        }
        let ns = match via {
            Some(pid) => Namespace {
                inode: netns,
                path: format!("/proc/{pid}/ns/net").into(),
            },
            None => self
                .found
                .as_ref()
                .and_then(|(_, all)| all.iter().find(|n| n.inode == netns).cloned())?,
        };
        self.open_switcher()?
            .within(&ns, read)
            .inspect_err(|e| log::debug!("diagnosis in network namespace {netns}: {e}"))
            .ok()
    }

    /// What `pids` are doing (`threads::sample`).
    pub fn sample_processes(&mut self, pids: &[u32]) -> Vec<ProcessSample> {
        // Each process's TCP sockets by inode, dumped once per namespace
        // and only if one of its threads waits on a socket; timewait
        // sockets, which no fd holds, are left out.
        let mut by_ns: HashMap<u32, HashMap<u32, DiagSocket>> = HashMap::new();
        let mut name_socket = |pid: u32, inode: u32| -> FdTarget {
            let netns = super::procs::ns_inode(&pid.to_string(), "net")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0);
            if let std::collections::hash_map::Entry::Vacant(slot) = by_ns.entry(netns) {
                let mut all = HashMap::new();
                self.in_namespace(netns, Some(pid), || {
                    sockets::visit_tcp_sockets_both(
                        sockets::states::HELD,
                        sockets::Ext::NONE,
                        &mut |s| {
                            all.insert(s.inode, s);
                        },
                    )
                });
                slot.insert(all);
            }
            by_ns
                .get(&netns)
                .and_then(|all| all.get(&inode))
                .map_or(FdTarget::Socket, socket_target)
        };
        threads::sample(pids, &mut name_socket)
    }

    /// The socket with these ends in namespace `netns`.
    pub fn lookup_socket(
        &mut self,
        netns: u32,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        info: bool,
    ) -> Option<(DiagSocket, Option<TcpInfo>)> {
        let netns = if netns == 0 { self.own } else { netns };
        let found = self.in_namespace(netns, None, || lookup::tcp_socket(local, remote, info))?;
        found
            .inspect_err(|e| log::debug!("looking a socket up: {e}"))
            .ok()
            .flatten()
            .map(|(mut s, i)| {
                s.netns = netns;
                (s, i)
            })
    }
}

fn socket_target(s: &DiagSocket) -> FdTarget {
    if s.state == TcpState::Listen {
        return FdTarget::Listener {
            saddr: s.saddr,
            sport: s.sport,
        };
    }
    FdTarget::Tcp {
        saddr: s.saddr,
        sport: s.sport,
        daddr: s.daddr,
        dport: s.dport,
        state: s.state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::netns::NetnsReach;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A thread of this process blocked in read() on a TCP socket: the
    /// sample names the call and the socket's endpoints.
    #[test]
    fn a_thread_blocked_on_a_socket_is_named_with_its_endpoints() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let local = c.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let mut b = [0u8; 1];
            let _ = (&c).read(&mut b);
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let own = sockets::own_netns().unwrap_or(0);
        let mut sys = System::new(NetnsReach::Own(own));
        let s = sys.sample_processes(&[std::process::id()]);
        let t = s[0].threads.iter().find(|t| t.tid == tid).expect("thread");
        assert_eq!(t.fds.len(), 1, "{t:?}");
        match &t.fds[0].1 {
            FdTarget::Tcp { sport, state, .. } => {
                assert_eq!(*sport, local.port());
                assert_eq!(*state, TcpState::Established);
            }
            other => panic!("{other:?}"),
        }
    }
}
