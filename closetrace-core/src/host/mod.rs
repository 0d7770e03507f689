//! What reads the running system: sock_diag, fd tables, /proc, cgroups,
//! port sysctls and privileges. Blocking I/O lives here and only here; the
//! coordinator reaches it through the `Host` trait, from a worker thread.
pub mod accept_queue;
pub mod cgroups;
mod diagnose;
pub mod filters;
pub mod holders;
pub mod ipv6_gate;
pub mod lookup;
pub mod netns;
pub mod privileges;
pub mod procs;
pub mod sockets;
pub mod threads;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use std::net::IpAddr;

use crate::model::Holder;
use crate::model::netns::NetnsReach;
use crate::model::ports::PortPolicy;
use crate::model::threads::{ProcessSample, TcpInfo};
use closetrace_common::{AF_INET, AF_INET6};
use holders::FdTables;
use ipv6_gate::Ipv6Gate;
use netns::{Namespace, NetnsError, Switcher};
use sockets::{DiagSocket, KernelView, SnapshotError};

/// What the coordinator asks of the running system, in every network
/// namespace it reads (each socket says which). Every call blocks
/// (netlink dumps, walks of /proc), so the coordinator never calls these
/// itself: a worker thread does, and hands back the answers.
pub trait Host: Send {
    /// TCP sockets whose state is in `states` (bit N is state N), one at a
    /// time: there can be a hundred thousand TIME_WAIT sockets. Each dump
    /// walks the kernel's whole established hash (it is shared by every
    /// namespace), so a tick asks once for all the states it needs, and
    /// only in the namespaces it needs: those in `wanted` (None: all), and
    /// those the host knows to have changed (see `System::visit_where`).
    fn visit_sockets(
        &mut self,
        states: u32,
        wanted: Option<&HashSet<u32>>,
        visit: &mut dyn FnMut(DiagSocket),
    ) -> Result<(), SnapshotError>;
    /// Listeners, with their drop counters.
    fn listeners(&mut self) -> Result<Vec<DiagSocket>, SnapshotError>;
    /// Socket inode -> every process holding it, for the sockets in
    /// `inodes` (the walk reads every fd table; keeping only these bounds
    /// what it costs in memory).
    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>>;
    /// Every socket, with its holders (who holds a port a bind() wanted).
    fn everything(&mut self) -> Result<KernelView, SnapshotError>;
    /// Each namespace's ephemeral ports, by namespace inode.
    fn port_policies(&mut self) -> HashMap<u32, PortPolicy> {
        HashMap::new()
    }
    /// The namespaces the last call read (a namespace skipped, or gone,
    /// says nothing about its sockets); None: every one it covers.
    fn namespaces_read(&self) -> Option<HashSet<u32>> {
        None
    }
    /// Make sure the container names of these cgroups are known to whoever
    /// names containers in records (rescanning cgroupfs if one is new).
    fn learn_containers(&mut self, _cgroups: &[u64]) {}
    /// `--pid`, `--pid-tree`: the processes followed now (pid and start
    /// time), at most once a second; None otherwise.
    fn followed(&mut self) -> Option<Vec<(u32, Option<u64>)>> {
        None
    }
    /// What `pids` are doing, for leak diagnoses (`threads::sample`).
    fn sample_processes(&mut self, pids: &[u32]) -> Vec<ProcessSample>;
    /// The socket with these ends (local, remote) in namespace `netns`,
    /// with the kernel's tcp_info if `info`.
    fn lookup_socket(
        &mut self,
        netns: u32,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        info: bool,
    ) -> Option<(DiagSocket, Option<TcpInfo>)>;
}

/// The ephemeral port range, reserved ports and `tcp_tw_reuse`, from
/// /proc/sys: the network namespace of the thread that reads them.
pub fn port_policy() -> Result<PortPolicy, String> {
    let get = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .map_err(|e| format!("{name}: {e}"))
    };
    PortPolicy::parse(
        &get("ip_local_port_range")?,
        &get("ip_local_reserved_ports").unwrap_or_default(),
        &get("tcp_tw_reuse").unwrap_or_else(|_| "0".into()),
    )
}

/// The running system, read in every namespace `reach` covers: each is
/// entered on the calling thread (the host worker's, or start-up's) and
/// left again, and every socket listed is tagged with its namespace.
pub struct System {
    reach: NetnsReach,
    /// The namespace this process is in, readable without switching.
    own: u32,
    /// Made on first use, on the thread that reads (namespaces are per
    /// thread); None until then, or when it cannot be made.
    switcher: Option<Switcher>,
    /// The namespaces found, and when: found again at most every
    /// `REDISCOVER`, so one tick's reads share one list.
    found: Option<(Instant, Vec<Namespace>)>,
    /// A namespace could not be left: every later read would be wrong, so
    /// none is made again.
    stranded: bool,
    /// The namespaces the last `each` read.
    read: HashSet<u32>,
    /// Namespaces found before and not since, and when they went: counted
    /// as read (and empty) for a while, so what was known of them ends.
    gone: Vec<(u32, Instant)>,
    /// Namespaces whose sockets were listed at least once, and when every
    /// namespace last was (see `visit_where`).
    dumped: HashSet<u32>,
    last_sweep: Option<Instant>,
    /// The kernel's fd iterator, where it loaded: holders without /proc.
    fd_tables: Option<Box<dyn FdTables>>,
    /// Where scans list IPv6 sockets; None (no kernel activity known):
    /// everywhere.
    ipv6: Option<Ipv6Gate>,
}

/// How often socket dumps read every namespace, whatever changed: a safety
/// net under the activity-driven choice of namespaces.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Which namespaces' IPv6 sockets a listing reads.
#[derive(Clone, Copy, Debug)]
enum Ipv6Listing {
    /// Every namespace's: the snapshot, holders and listeners (whose
    /// findings do not feed the gate, or a namespace's IPv6 listener would
    /// keep it open for ever).
    Everywhere,
    /// Where the gate is open (or it is unknown), or everywhere on a
    /// sweep; a namespace whose IPv6 sockets were found stays open.
    Gated { sweep: bool },
}

/// How long a namespace that went away is reported read and empty.
const GONE_FOR: Duration = Duration::from_secs(5);

/// How long one discovery of namespaces serves: below a tick, so that a
/// namespace created while tracing is read by the next tick or the one after.
const REDISCOVER: Duration = Duration::from_millis(500);

impl System {
    pub fn new(reach: NetnsReach) -> System {
        System {
            reach,
            own: sockets::own_netns().unwrap_or(0),
            switcher: None,
            found: None,
            stranded: false,
            read: HashSet::new(),
            gone: Vec::new(),
            dumped: HashSet::new(),
            last_sweep: None,
            fd_tables: None,
            ipv6: None,
        }
    }

    /// Holders from the kernel's fd tables rather than /proc.
    pub fn with_fd_tables(mut self, tables: Option<Box<dyn FdTables>>) -> System {
        self.fd_tables = tables;
        self
    }

    pub fn reach(&self) -> NetnsReach {
        self.reach
    }

    /// The namespaces to read now.
    fn namespaces(&mut self) -> Vec<Namespace> {
        let home = self.reach.home();
        let only_home = || {
            vec![Namespace {
                inode: home,
                path: "/proc/thread-self/ns/net".into(),
            }]
        };
        let wanted = match self.reach {
            NetnsReach::Own(_) => return only_home(),
            NetnsReach::All { .. } => None,
            NetnsReach::One(n) => Some(n),
        };
        let fresh = self
            .found
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < REDISCOVER);
        if !fresh {
            let now = netns::discover();
            if let Some((_, before)) = &self.found {
                let went = before
                    .iter()
                    .filter(|b| !now.iter().any(|n| n.inode == b.inode))
                    .map(|b| (b.inode, Instant::now()));
                self.gone.extend(went);
            }
            self.gone.retain(|(_, at)| at.elapsed() < GONE_FOR);
            self.found = Some((Instant::now(), now));
        }
        let all = self.found.as_ref().map_or(&[][..], |(_, v)| v.as_slice());
        all.iter()
            .filter(|n| wanted.is_none_or(|w| w == n.inode))
            .cloned()
            .collect()
    }

    /// Sockets in `states`, in the namespaces `pick` chooses, plus those
    /// never listed yet (new ones: their sockets may predate anything the
    /// kernel marked), plus every one each `SWEEP_EVERY`.
    pub fn visit_where(
        &mut self,
        states: u32,
        pick: &dyn Fn(u32) -> bool,
        visit: &mut dyn FnMut(DiagSocket),
    ) -> Result<(), SnapshotError> {
        let sweep = self.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
        if sweep {
            self.last_sweep = Some(Instant::now());
        }
        let dumped = std::mem::take(&mut self.dumped);
        let choose = |ns: u32| sweep || !dumped.contains(&ns) || pick(ns);
        // A CLOSE_WAIT socket the kernel kept no entry for is dated by its
        // tcp_info (`DiagSocket::last_ack_recv_ms`).
        let ext = if states & (1 << closetrace_common::tcp_state::CLOSE_WAIT) != 0 {
            sockets::Ext::INFO
        } else {
            sockets::Ext::NONE
        };
        let ipv6 = Ipv6Listing::Gated { sweep };
        let result = self.visit_in(&choose, ipv6, states, ext, visit);
        // Forget namespaces that went away: containers come and go.
        let found = self
            .found
            .as_ref()
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        self.dumped = dumped
            .into_iter()
            .chain(self.read.iter().copied())
            .filter(|ns| found.iter().any(|n| n.inode == *ns))
            .collect();
        result.map(|_| ())
    }

    /// The kernel's IPv6 activity moved in these namespace slots: from now
    /// on, a namespace's IPv6 sockets are listed only where it did lately
    /// (see `Ipv6Gate`).
    pub fn ipv6_activity(&mut self, slots: impl IntoIterator<Item = u32>) {
        let gate = self.ipv6.get_or_insert_with(Ipv6Gate::default);
        gate.activity(slots, Instant::now());
    }

    /// No more gate: every namespace's IPv6 sockets are listed again
    /// (the kernel's activity could not be read).
    pub fn ipv6_everywhere(&mut self) {
        self.ipv6 = None;
    }

    /// `read` run inside each namespace, with its inode: the answers of
    /// those that could be read. Only the home namespace failing is an
    /// error; others come and go, and are skipped when gone.
    fn each<T>(
        &mut self,
        read: impl FnMut(u32) -> Result<T, SnapshotError>,
    ) -> Result<Vec<T>, SnapshotError> {
        self.each_where(&|_| true, read)
    }

    /// `each`, in the namespaces `choose` keeps.
    fn each_where<T>(
        &mut self,
        choose: &dyn Fn(u32) -> bool,
        mut read: impl FnMut(u32) -> Result<T, SnapshotError>,
    ) -> Result<Vec<T>, SnapshotError> {
        let home = self.reach.home();
        let mut namespaces = self.namespaces();
        namespaces.retain(|n| choose(n.inode));
        self.open_switcher();
        let mut out = Vec::with_capacity(namespaces.len());
        // A namespace that went away has no sockets left: read, and empty.
        self.read = self.gone.iter().map(|(ns, _)| *ns).collect();
        for ns in &namespaces {
            let answer = match (&self.switcher, self.stranded) {
                (_, true) => continue,
                (Some(s), false) => s.within(ns, || read(ns.inode)),
                (None, false) if ns.inode == self.own => Ok(read(ns.inode)),
                (None, false) => continue,
            };
            match answer {
                Ok(Ok(v)) => {
                    self.read.insert(ns.inode);
                    out.push(v);
                }
                Ok(Err(e)) if ns.inode == home => return Err(e),
                Ok(Err(e)) => log::debug!("network namespace {}: {e}", ns.inode),
                Err(NetnsError::Return(e)) => {
                    log::error!(
                        "cannot return to closetrace's network namespace ({e}): no more reads"
                    );
                    self.stranded = true;
                }
                Err(e) => log::debug!("{e}"),
            }
        }
        Ok(out)
    }

    /// The switcher, opened the first time another namespace is wanted
    /// (None when this process cannot enter them).
    fn open_switcher(&mut self) -> Option<&Switcher> {
        if self.switcher.is_none() && self.reach.switches(self.own) {
            self.switcher = Switcher::new()
                .inspect_err(|e| log::warn!("cannot enter other network namespaces: {e}"))
                .ok();
        }
        self.switcher.as_ref()
    }

    /// Each socket in `states` of the namespaces `choose` keeps, tagged
    /// with its namespace, handed to `visit` as the dump is parsed; IPv6
    /// ones where `ipv6` says.
    fn visit_in(
        &mut self,
        choose: &dyn Fn(u32) -> bool,
        ipv6: Ipv6Listing,
        states: u32,
        ext: sockets::Ext,
        visit: &mut dyn FnMut(DiagSocket),
    ) -> Result<(), SnapshotError> {
        let (gate, everywhere) = match ipv6 {
            Ipv6Listing::Everywhere => (None, true),
            Ipv6Listing::Gated { sweep } => (self.ipv6.take(), sweep),
        };
        let now = Instant::now();
        let mut found_ipv6 = HashSet::new();
        let result = self.each_where(choose, |netns| {
            sockets::visit_tcp_sockets(AF_INET, states, ext, &mut |mut s| {
                s.netns = netns;
                visit(s);
            })?;
            if everywhere || gate.as_ref().is_none_or(|g| g.open(netns, now)) {
                // As in `visit_tcp_sockets_both`: IPv6 failing is no error.
                let _ = sockets::visit_tcp_sockets(AF_INET6, states, ext, &mut |mut s| {
                    s.netns = netns;
                    found_ipv6.insert(netns);
                    visit(s);
                });
            }
            Ok(())
        });
        if let Ipv6Listing::Gated { .. } = ipv6 {
            self.ipv6 = gate.map(|mut g| {
                g.found(&found_ipv6, now);
                g
            });
        }
        result.map(|_| ())
    }

    /// Sockets in `states` in every namespace read, tagged.
    fn sockets(
        &mut self,
        states: u32,
        ext: sockets::Ext,
    ) -> Result<Vec<DiagSocket>, SnapshotError> {
        let mut all = Vec::new();
        self.visit_in(&|_| true, Ipv6Listing::Everywhere, states, ext, &mut |s| {
            all.push(s)
        })?;
        Ok(all)
    }

    /// Every socket a process can hold, with its holders: the start-up
    /// snapshot.
    pub fn snapshot(&mut self) -> Result<KernelView, SnapshotError> {
        self.view(sockets::states::HELD)
    }

    /// Sockets in `states` with their holders (fd tables are global:
    /// socket inodes are unique across namespaces). Built as the dump is
    /// parsed: a node can hold a hundred thousand sockets.
    fn view(&mut self, states: u32) -> Result<KernelView, SnapshotError> {
        let mut by_cookie = HashMap::new();
        let (all, ext) = (Ipv6Listing::Everywhere, sockets::Ext::NONE);
        self.visit_in(&|_| true, all, states, ext, &mut |s| {
            by_cookie.insert(s.cookie, s);
        })?;
        let inodes: HashSet<u32> = by_cookie.values().map(|s| s.inode).collect();
        let holders = holders::holders_of(&mut self.fd_tables, &|inode| inodes.contains(&inode));
        Ok(KernelView::new(by_cookie, holders))
    }
}

impl Host for System {
    fn visit_sockets(
        &mut self,
        states: u32,
        wanted: Option<&HashSet<u32>>,
        visit: &mut dyn FnMut(DiagSocket),
    ) -> Result<(), SnapshotError> {
        self.visit_where(states, &|ns| wanted.is_none_or(|w| w.contains(&ns)), visit)
    }

    fn listeners(&mut self) -> Result<Vec<DiagSocket>, SnapshotError> {
        self.sockets(
            1 << closetrace_common::tcp_state::LISTEN,
            sockets::Ext::MEMINFO,
        )
    }

    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
        holders::holders_of(&mut self.fd_tables, &|inode| inodes.contains(&inode))
    }

    fn everything(&mut self) -> Result<KernelView, SnapshotError> {
        self.view(sockets::states::ALL)
    }

    fn port_policies(&mut self) -> HashMap<u32, PortPolicy> {
        let per_ns = self
            .each(|netns| Ok((netns, port_policy())))
            .unwrap_or_default();
        per_ns
            .into_iter()
            .filter_map(|(netns, p)| {
                p.inspect_err(|e| log::debug!("ports of network namespace {netns}: {e}"))
                    .ok()
                    .map(|p| (netns, p))
            })
            .collect()
    }

    fn learn_containers(&mut self, ids: &[u64]) {
        for &id in ids {
            cgroups::container(id);
        }
        cgroups::rescan_missed();
    }

    fn namespaces_read(&self) -> Option<HashSet<u32>> {
        Some(self.read.clone())
    }

    fn sample_processes(&mut self, pids: &[u32]) -> Vec<ProcessSample> {
        System::sample_processes(self, pids)
    }

    fn lookup_socket(
        &mut self,
        netns: u32,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        info: bool,
    ) -> Option<(DiagSocket, Option<TcpInfo>)> {
        System::lookup_socket(self, netns, local, remote, info)
    }
}
