//! Which network namespaces closetrace reads the running system of
//! (sock_diag scans, port sysctls), as opposed to those it only hears
//! about through kernel events.

/// The namespaces the host worker reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsReach {
    /// Every namespace on the host (the default, as root): a node agent
    /// sees each pod as if it ran inside it.
    All { own: u32 },
    /// Only `--netns`'s namespace.
    One(u32),
    /// Only closetrace's own: other namespaces could not be entered
    /// (setns(2) needs CAP_SYS_ADMIN).
    Own(u32),
}

impl NetnsReach {
    /// Whether scans read namespace `netns`. 0 (a namespace the kernel
    /// could not name) counts as closetrace's own, as it always has.
    pub fn covers(&self, netns: u32) -> bool {
        match *self {
            NetnsReach::All { .. } => true,
            NetnsReach::One(n) | NetnsReach::Own(n) => netns == n || netns == 0,
        }
    }

    /// closetrace's own namespace, or `--netns`'s.
    pub fn home(&self) -> u32 {
        match *self {
            NetnsReach::All { own } => own,
            NetnsReach::One(n) | NetnsReach::Own(n) => n,
        }
    }

    /// Whether the host worker must enter other namespaces.
    pub fn switches(&self, own: u32) -> bool {
        match *self {
            NetnsReach::All { .. } => true,
            NetnsReach::One(n) => n != own,
            NetnsReach::Own(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_reach_covers() {
        let all = NetnsReach::All { own: 5 };
        assert!(all.covers(5) && all.covers(9) && all.covers(0));
        assert_eq!(all.home(), 5);
        let one = NetnsReach::One(9);
        assert!(one.covers(9) && !one.covers(5));
        assert!(one.switches(5) && !one.switches(9));
        let own = NetnsReach::Own(5);
        assert!(own.covers(5) && own.covers(0) && !own.covers(9));
        assert!(!own.switches(5));
    }
}
