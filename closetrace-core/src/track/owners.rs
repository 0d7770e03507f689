//! Userspace view of live sockets and their owners.
//!
//! The kernel keeps the authoritative owner per socket; this table mirrors
//! what the stream says so that later stages (leak detection, summaries) can
//! ask "who holds socket X, and since when is it in state S", and it fills in
//! owners the kernel could not know: sockets found by the start-up snapshot,
//! and children of listeners that existed before closetrace started.
//! Pure: events in, no clock, no I/O; bounded so it cannot grow without limit.
use std::collections::VecDeque;

use crate::model::{OwnerSource, StateChange, Task, TcpState};
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

    /// Apply one transition, filling in `ev.owner` when the kernel did not
    /// know it but this table does.
    pub fn apply(&mut self, ev: &mut StateChange) {
        let id = ev.sock.id;
        if ev.owner.is_none() {
            let known = self
                .socks
                .get(&id)
                .and_then(|e| e.owner.clone().map(|o| (o, e.source)));
            let inherited = || {
                (ev.old == TcpState::SynRecv
                    || (ev.old == TcpState::Listen && ev.new == TcpState::SynRecv))
                    .then(|| self.listeners.get(&(ev.sock.netns, ev.sock.sport)).cloned())
                    .flatten()
                    .map(|o| (o, OwnerSource::Listener))
            };
            if let Some((owner, source)) = known.or_else(inherited) {
                ev.owner = Some(owner);
                ev.owner_source = source;
            }
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
