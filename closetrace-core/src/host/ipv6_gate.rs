//! Which namespaces' IPv6 sockets a scan lists. Every dump walks the
//! whole established hash, which every namespace shares, whatever it
//! finds: a namespace's IPv6 dump costs as much as its IPv4 one (7 ms
//! with 28k timewait sockets on the host, measured), and most namespaces
//! have no IPv6 TCP at all. The kernel counts, per namespace slot, the
//! IPv6 sockets that enter CLOSE_WAIT or close actively (the only way to
//! FIN_WAIT2 and TIME_WAIT): a namespace's IPv6 sockets are listed while
//! its slot moved recently or the last listing found one. A socket that
//! outlasts the linger in a state no dump asks for (FIN_WAIT1 retrying)
//! is found by the next sweep, which lists everything.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use closetrace_common::netns_slot;

/// How long IPv6 activity keeps a namespace's IPv6 sockets listed:
/// TIME_WAIT's 60 s, plus the default 60 s of an orphaned FIN_WAIT2, plus
/// a tick. A socket that stays longer is found meanwhile, which extends it.
pub const IPV6_LINGER: Duration = Duration::from_secs(125);

/// Per namespace slot, until when its IPv6 sockets are listed.
#[derive(Debug, Default)]
pub struct Ipv6Gate {
    open_until: HashMap<u32, Instant>,
}

impl Ipv6Gate {
    /// The kernel's IPv6 bank moved in these slots (0..NETNS_SLOTS).
    pub fn activity(&mut self, slots: impl IntoIterator<Item = u32>, now: Instant) {
        for slot in slots {
            self.open_until.insert(slot, now + IPV6_LINGER);
        }
    }

    /// A listing found IPv6 sockets in these namespaces.
    pub fn found(&mut self, namespaces: &HashSet<u32>, now: Instant) {
        self.activity(namespaces.iter().map(|&ns| netns_slot(ns)), now);
        self.open_until.retain(|_, until| *until > now);
    }

    /// Whether namespace `netns`'s IPv6 sockets are to be listed now.
    pub fn open(&self, netns: u32, now: Instant) -> bool {
        self.open_until
            .get(&netns_slot(netns))
            .is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_active_or_found_then_closed() {
        let t0 = Instant::now();
        let mut g = Ipv6Gate::default();
        let ns = 4026532000;
        assert!(!g.open(ns, t0), "nothing seen: no IPv6 dump");
        g.activity([netns_slot(ns)], t0);
        assert!(g.open(ns, t0 + Duration::from_secs(1)));
        assert!(!g.open(ns + 1, t0), "another slot stays closed");
        // Found again late in the linger: open for another linger.
        let late = t0 + IPV6_LINGER - Duration::from_secs(1);
        g.found(&HashSet::from([ns]), late);
        assert!(g.open(ns, late + Duration::from_secs(60)));
        // Nothing found and no activity: closed after the linger.
        let after = late + IPV6_LINGER;
        g.found(&HashSet::new(), after);
        assert!(!g.open(ns, after));
        assert!(g.open_until.is_empty(), "expired slots are dropped");
    }
}
