//! Userspace view of live sockets and their owners.
//!
//! This table mirrors what the stream says so that later stages (leak
//! detection, summaries) can ask "who holds socket X, and since when is it
//! in state S", and it fills in owners the kernel does not send: sockets
//! found by the start-up snapshot, children of listeners that existed
//! before closetrace started, and, with `--states`, where the kernel keeps
//! no owner per socket, every owner the stream told earlier (the
//! connecting task, the acceptor) and when the socket entered its state.
//! Pure: events in, no clock, no I/O; bounded so it cannot grow without limit.
use std::collections::VecDeque;

use crate::model::{Accepted, OwnerSource, StateChange, Task, TcpState};
use crate::track::FastHashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEntry {
    pub owner: Option<Task>,
    pub source: OwnerSource,
    pub state: TcpState,
    /// CLOCK_MONOTONIC time the socket entered `state`, if seen.
    pub since_ns: Option<u64>,
}

#[derive(Debug)]
pub struct OwnerTable {
    socks: FastHashMap<u64, SockEntry>,
    listeners: FastHashMap<(u32, u16), Task>,
    /// Insertion order, for evicting the oldest when full.
    order: VecDeque<u64>,
    capacity: usize,
    evicted: u64,
    /// Every transition arrives (`--states`). Otherwise the kernel sends only
    /// what the findings need, so a socket's way to CLOSE is mostly unseen:
    /// keep only CLOSE_WAIT and LISTEN sockets, or entries would go stale.
    complete: bool,
}

impl OwnerTable {
    pub fn new(capacity: usize, complete: bool) -> Self {
        OwnerTable {
            socks: FastHashMap::default(),
            listeners: FastHashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            evicted: 0,
            complete,
        }
    }

    fn keeps(&self, state: TcpState) -> bool {
        self.complete || matches!(state, TcpState::CloseWait | TcpState::Listen)
    }

    #[cfg(test)]
    pub fn get(&self, sock: u64) -> Option<&SockEntry> {
        self.socks.get(&sock)
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Entries dropped because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Record a socket found at start-up with its holder.
    pub fn seed(&mut self, sock: u64, netns: u32, port: u16, state: TcpState, owner: Task) {
        if state == TcpState::Listen {
            self.listeners.insert((netns, port), owner.clone());
        }
        if !self.keeps(state) {
            return;
        }
        self.insert(
            sock,
            SockEntry {
                owner: Some(owner),
                source: OwnerSource::Snapshot,
                state,
                since_ns: None,
            },
        );
    }

    /// accept() returned socket `a.sock_id`: its acceptor owns it.
    pub fn accepted(&mut self, a: &Accepted) {
        if !self.complete || a.state == TcpState::Close {
            return;
        }
        match self.socks.get_mut(&a.sock_id) {
            Some(e) => {
                e.owner = Some(a.acceptor.clone());
                e.source = OwnerSource::Accept;
            }
            None => self.insert(
                a.sock_id,
                SockEntry {
                    owner: Some(a.acceptor.clone()),
                    source: OwnerSource::Accept,
                    state: a.state,
                    since_ns: None,
                },
            ),
        }
    }

    /// Apply one transition, filling in `ev.owner` when the kernel did not
    /// know it, or knew only the listener's, but this table knows better;
    /// and how long the socket was in its old state, when the kernel did
    /// not say.
    pub fn apply(&mut self, ev: &mut StateChange) {
        let id = ev.sock.id;
        // A listener's owner (all the kernel knows of a child it keeps no
        // entry for) gives way to one seen first-hand.
        let weak = ev.owner.is_none() || ev.owner_source == OwnerSource::Listener;
        let mut known = None;
        if let Some(e) = self.socks.get(&id) {
            if ev.old_ns.is_none()
                && e.state == ev.old
                && let Some(since) = e.since_ns
            {
                ev.old_ns = ev.ts_ns.checked_sub(since);
            }
            if weak && (ev.owner.is_none() || e.source != OwnerSource::Listener) {
                known = e.owner.clone().map(|o| (o, e.source));
            }
        }
        if ev.owner.is_none() && known.is_none() {
            let child = ev.old == TcpState::SynRecv
                || (ev.old == TcpState::Listen && ev.new == TcpState::SynRecv);
            if child {
                known = self
                    .listeners
                    .get(&(ev.sock.netns, ev.sock.sport))
                    .map(|o| (o.clone(), OwnerSource::Listener));
            }
        }
        if let Some((owner, source)) = known {
            ev.owner = Some(owner);
            ev.owner_source = source;
        }
        let listen_key = (ev.sock.netns, ev.sock.sport);
        match (ev.old, ev.new) {
            (_, TcpState::Listen) if ev.sock.sport != 0 => {
                if let Some(owner) = &ev.owner {
                    self.listeners.insert(listen_key, owner.clone());
                }
            }
            (TcpState::Listen, TcpState::Close) => {
                self.listeners.remove(&listen_key);
            }
            _ => {}
        }
        if id == 0 {
            // The kernel has not given this (accepted) socket its own id yet.
            return;
        }
        if ev.new == TcpState::Close || !self.keeps(ev.new) {
            self.socks.remove(&id);
            return;
        }
        let entry = SockEntry {
            owner: ev.owner.clone(),
            source: ev.owner_source,
            state: ev.new,
            since_ns: Some(ev.ts_ns),
        };
        self.insert(id, entry);
    }

    fn insert(&mut self, id: u64, entry: SockEntry) {
        if self.socks.insert(id, entry).is_none() {
            self.order.push_back(id);
        }
        while self.socks.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.socks.remove(&oldest).is_some() {
                self.evicted += 1;
            }
        }
        // `order` keeps ids of sockets already removed at CLOSE; compact it
        // once it is mostly stale so it stays bounded too.
        if self.order.len() > 2 * self.capacity {
            let socks = &self.socks;
            self.order.retain(|id| socks.contains_key(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{self, owned, task};

    fn change(
        id: u64,
        port: u16,
        old: TcpState,
        new: TcpState,
        owner: Option<Task>,
    ) -> StateChange {
        match owner {
            Some(o) => owned(id, port, old, new, o),
            None => fixtures::change(id, port, old, new),
        }
    }

    #[test]
    fn accepted_socket_inherits_listener_owner() {
        let mut t = OwnerTable::new(16, true);
        t.apply(&mut change(
            1,
            9501,
            TcpState::Close,
            TcpState::Listen,
            Some(task(10, "srv")),
        ));
        let mut child = change(2, 9501, TcpState::Listen, TcpState::SynRecv, None);
        t.apply(&mut child);
        assert_eq!(child.owner, Some(task(10, "srv")));
        assert_eq!(child.owner_source, OwnerSource::Listener);
        // Later transitions of the child, seen in the peer's context, keep it.
        let mut cw = change(2, 9501, TcpState::Established, TcpState::CloseWait, None);
        t.apply(&mut cw);
        assert_eq!(cw.owner.unwrap().pid, 10);
    }

    #[test]
    fn child_without_its_own_id_yet_inherits_on_its_next_transition() {
        let mut t = OwnerTable::new(16, true);
        t.apply(&mut change(
            1,
            9501,
            TcpState::Close,
            TcpState::Listen,
            Some(task(10, "srv")),
        ));
        // Older kernels: the clone carries no id of its own at first (0).
        let mut birth = change(0, 9501, TcpState::Listen, TcpState::SynRecv, None);
        t.apply(&mut birth);
        assert_eq!(birth.owner.as_ref().unwrap().pid, 10);
        assert!(t.get(0).is_none(), "nothing kept under id 0");
        let mut est = change(3, 9501, TcpState::SynRecv, TcpState::Established, None);
        t.apply(&mut est);
        assert_eq!(est.owner_source, OwnerSource::Listener);
        assert_eq!(t.get(3).unwrap().owner.as_ref().unwrap().pid, 10);
    }

    #[test]
    fn kernel_owner_wins_and_other_ports_do_not_inherit() {
        let mut t = OwnerTable::new(16, true);
        t.apply(&mut change(
            1,
            9501,
            TcpState::Close,
            TcpState::Listen,
            Some(task(10, "srv")),
        ));
        let mut other = change(3, 8080, TcpState::Listen, TcpState::SynRecv, None);
        t.apply(&mut other);
        assert_eq!(other.owner, None);
        let mut known = change(
            4,
            9501,
            TcpState::Listen,
            TcpState::SynRecv,
            Some(task(11, "w")),
        );
        t.apply(&mut known);
        assert_eq!(known.owner.unwrap().pid, 11);
        assert_eq!(t.get(4).unwrap().state, TcpState::SynRecv);
    }

    #[test]
    fn closed_sockets_and_listeners_are_forgotten() {
        let mut t = OwnerTable::new(16, true);
        t.apply(&mut change(
            1,
            9501,
            TcpState::Close,
            TcpState::Listen,
            Some(task(10, "srv")),
        ));
        t.apply(&mut change(
            1,
            9501,
            TcpState::Listen,
            TcpState::Close,
            Some(task(10, "srv")),
        ));
        assert!(t.is_empty());
        let mut child = change(2, 9501, TcpState::Listen, TcpState::SynRecv, None);
        t.apply(&mut child);
        assert_eq!(
            child.owner, None,
            "a closed listener must not lend its owner"
        );
        t.apply(&mut change(
            2,
            9501,
            TcpState::SynRecv,
            TcpState::Close,
            None,
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn snapshot_seeds_owners() {
        let mut t = OwnerTable::new(16, true);
        t.seed(7, 1, 9501, TcpState::CloseWait, task(23308, "php"));
        let mut ev = change(7, 9501, TcpState::CloseWait, TcpState::LastAck, None);
        t.apply(&mut ev);
        assert_eq!(ev.owner.unwrap().comm, "php");
        assert_eq!(ev.owner_source, OwnerSource::Snapshot);
    }

    #[test]
    fn table_is_bounded() {
        let mut t = OwnerTable::new(100, true);
        for id in 0..10_000u64 {
            t.apply(&mut change(
                id,
                1,
                TcpState::Close,
                TcpState::SynSent,
                Some(task(1, "c")),
            ));
            if id % 2 == 0 {
                t.apply(&mut change(id, 1, TcpState::SynSent, TcpState::Close, None));
            }
        }
        assert!(t.len() <= 100);
        assert!(t.order.len() <= 200);
        assert!(t.evicted() > 0);
        // The newest sockets survive eviction.
        assert!(t.get(9_999).is_some());
    }

    /// `--states` with lean owners: the kernel sends a child's listener
    /// owner, or none; the acceptor, sent apart, wins from then on.
    #[test]
    fn acceptor_overrides_the_listener_owner_the_kernel_sends() {
        let mut t = OwnerTable::new(16, true);
        let (parent, worker) = (task(10, "master"), task(11, "worker"));
        t.apply(&mut change(
            1,
            80,
            TcpState::Close,
            TcpState::Listen,
            Some(parent.clone()),
        ));
        let mut birth = change(
            2,
            80,
            TcpState::Listen,
            TcpState::SynRecv,
            Some(parent.clone()),
        );
        birth.owner_source = OwnerSource::Listener;
        t.apply(&mut birth);
        t.accepted(&Accepted {
            sock_id: 2,
            state: TcpState::Established,
            acceptor: worker.clone(),
        });
        // The kernel knows only the listener's owner: the table knows better.
        let mut cw = change(
            2,
            80,
            TcpState::Established,
            TcpState::CloseWait,
            Some(parent.clone()),
        );
        cw.owner_source = OwnerSource::Listener;
        t.apply(&mut cw);
        assert_eq!(cw.owner, Some(worker.clone()));
        assert_eq!(cw.owner_source, OwnerSource::Accept);
        // Unknown to the kernel: filled in, with the time in CLOSE_WAIT.
        let mut end = change(2, 80, TcpState::CloseWait, TcpState::LastAck, None);
        end.ts_ns = cw.ts_ns + 5_000;
        t.apply(&mut end);
        assert_eq!(end.owner, Some(worker));
        assert_eq!(end.old_ns, Some(5_000));
        // A first-hand owner from the kernel is never replaced.
        let mut other = change(
            3,
            80,
            TcpState::Listen,
            TcpState::SynRecv,
            Some(parent.clone()),
        );
        other.owner_source = OwnerSource::Listener;
        t.apply(&mut other);
        let mut closer = owned(3, 80, TcpState::CloseWait, TcpState::LastAck, task(12, "x"));
        t.apply(&mut closer);
        assert_eq!(closer.owner.unwrap().pid, 12);
    }

    #[test]
    fn accepts_are_kept_only_with_every_transition_and_never_when_closed() {
        let acceptor = task(11, "worker");
        let accept = |id, state| Accepted {
            sock_id: id,
            state,
            acceptor: acceptor.clone(),
        };
        let mut findings = OwnerTable::new(16, false);
        findings.accepted(&accept(2, TcpState::Established));
        assert!(findings.is_empty());
        let mut t = OwnerTable::new(16, true);
        t.accepted(&accept(2, TcpState::Close));
        assert!(
            t.is_empty(),
            "reset before accept(): its end already passed"
        );
        // Accepted before closetrace saw it born: kept as accepted.
        t.accepted(&accept(4, TcpState::CloseWait));
        let e = t.get(4).unwrap();
        assert_eq!(
            (e.source, e.state),
            (OwnerSource::Accept, TcpState::CloseWait)
        );
    }

    #[test]
    fn findings_mode_keeps_only_close_wait_and_listeners() {
        let mut t = OwnerTable::new(16, false);
        let srv = task(10, "srv");
        t.seed(1, 1, 9501, TcpState::Listen, srv.clone());
        t.seed(2, 1, 9501, TcpState::Established, srv.clone());
        assert!(t.get(1).is_some() && t.get(2).is_none());
        t.apply(&mut change(
            3,
            9501,
            TcpState::Established,
            TcpState::CloseWait,
            Some(srv.clone()),
        ));
        assert_eq!(t.get(3).unwrap().state, TcpState::CloseWait);
        // LAST_ACK -> CLOSE is not sent in this mode: forget it at LAST_ACK.
        let mut ev = change(3, 9501, TcpState::CloseWait, TcpState::LastAck, None);
        t.apply(&mut ev);
        assert_eq!(ev.owner, Some(srv), "still filled in on the way out");
        assert!(t.get(3).is_none());
        assert_eq!(t.len(), 1);
    }
}
