//! Sockets still in a listener's accept queue. A connection the server
//! never accepted has no inode and no fd, so no process holds it: the
//! processes holding its listener answer for it (a stuck accept loop
//! leaks CLOSE_WAIT sockets this way, one per client that gave up).
use std::collections::HashMap;

use super::sockets::DiagSocket;

/// For each socket of `sockets` with no inode, the inode of the listener
/// it arrived on: same namespace, family and local port, and its local
/// address or a wildcard one (an exact address wins). A dual-stack
/// listener's IPv4 children are IPv6 sockets too (mapped addresses).
pub fn listeners_of<'a>(
    sockets: impl IntoIterator<Item = &'a DiagSocket>,
    listeners: &[DiagSocket],
) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    for s in sockets.into_iter().filter(|s| s.inode == 0) {
        let same_port = |l: &&DiagSocket| {
            l.netns == s.netns && l.family == s.family && l.sport == s.sport && l.inode != 0
        };
        let exact = listeners
            .iter()
            .filter(same_port)
            .find(|l| l.saddr == s.saddr);
        let any = || (listeners.iter().filter(same_port)).find(|l| l.saddr.is_unspecified());
        if let Some(l) = exact.or_else(any) {
            out.insert(s.cookie, l.inode);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TcpState::{CloseWait, Listen};

    fn listener(inode: u32, addr: &str, port: u16, netns: u32) -> DiagSocket {
        let mut l = DiagSocket::on_loopback(u64::from(inode), Listen, port, netns);
        l.saddr = addr.parse().unwrap();
        l
    }

    #[test]
    fn an_unaccepted_socket_is_its_listeners() {
        let mut queued = DiagSocket::on_loopback(7, CloseWait, 8080, 1);
        queued.inode = 0;
        let accepted = DiagSocket::on_loopback(8, CloseWait, 8080, 1);
        let elsewhere = {
            let mut s = DiagSocket::on_loopback(9, CloseWait, 8080, 2);
            s.inode = 0;
            s
        };
        let listeners = [
            listener(100, "0.0.0.0", 8080, 1),
            listener(101, "127.0.0.1", 8080, 1),
            listener(102, "127.0.0.1", 8081, 1),
            listener(103, "127.0.0.1", 9090, 2),
        ];
        let found = listeners_of([&queued, &accepted, &elsewhere], &listeners);
        // The exact address wins over the wildcard; an accepted socket and
        // one with no listener of its port in its namespace are not queued.
        assert_eq!(found, HashMap::from([(7, 101)]));
        let wildcard_only = listeners_of([&queued], &listeners[..1]);
        assert_eq!(wildcard_only, HashMap::from([(7, 100)]));
    }
}
