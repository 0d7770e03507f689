//! Port pressure's TIME_WAIT half: entries from the stream, the kernel's
//! counts once a second (per namespace read), pressure per namespace and
//! destination against that namespace's ports, server-side TIME_WAIT kept
//! apart, and the top list.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::IpAddr;

use super::PortPressure;
use crate::host::sockets::{DiagSocket, SnapshotError};
use crate::model::clock::WallClock;
use crate::model::ports::PortPolicy;
use crate::model::{StateChange, Task};
use crate::output::records::{self, Record, TimeWaitPressure, Ts};
use crate::output::sink::Sink;
use crate::output::text::{endpoint, printable};
use crate::track::timewait::{Dest, Pressure, Tuple, enters_time_wait, tuple_of};

const RECONCILE_NS: u64 = 1_000_000_000;
/// In the text view, the top TIME_WAIT destinations every this often.
const TOP_EVERY_NS: u64 = 10_000_000_000;
/// Destinations in each `time_wait_top` record.
const TOP_RECORDED: usize = 10;

impl PortPressure {
    /// The ports of namespace `netns` (0, unnamed, is closetrace's own).
    fn policy(&self, netns: u32) -> Option<PortPolicy> {
        let netns = if netns == 0 { self.reach.home() } else { netns };
        self.policies.get(&netns).copied()
    }

    /// A TIME_WAIT socket on a port its namespace does not hand out (a
    /// service port, or one outside the ephemeral range): it blocks no
    /// client's connect(), so it is no port pressure.
    fn server_side(&self, netns: u32, sport: u16) -> bool {
        self.listening.contains(&(netns, sport))
            || self.policy(netns).is_some_and(|p| !p.is_ephemeral(sport))
    }

    /// New port sysctls, per namespace, from a scan.
    /// Who closed the local end of (`local`, `remote`) in `netns`, if its
    /// TIME_WAIT entry is remembered: a leak's peer that closed. Tried in
    /// the leak's namespace first, then (unless the peer is on loopback,
    /// which never leaves a namespace) in every namespace known.
    pub fn closer_of(
        &self,
        netns: u32,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    ) -> Option<&Task> {
        let tuple = |netns| {
            let dest = Dest {
                netns,
                saddr: local.0,
                daddr: remote.0,
                dport: remote.1,
            };
            (dest, local.1)
        };
        let elsewhere = (!local.0.is_loopback()).then(|| self.policies.keys());
        std::iter::once(netns)
            .chain(
                elsewhere
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|n| *n != netns),
            )
            .find_map(|n| self.tw.closer(&tuple(n)))
    }

    pub fn set_policies(&mut self, policies: HashMap<u32, PortPolicy>) {
        if !policies.is_empty() {
            self.policies = policies;
        }
    }

    pub fn on_state(
        &mut self,
        ev: &StateChange,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        // Only namespaces the scans read: their sysctls set the ports, and
        // sock_diag reconciles their counts.
        if !enters_time_wait(ev) || !self.reach.covers(ev.sock.netns) {
            return Ok(());
        }
        let t = tuple_of(&ev.sock);
        self.entered.insert(ev.sock.netns);
        if self.server_side(ev.sock.netns, ev.sock.sport) {
            if let Some(closer) = ev.owner.clone() {
                self.tw.credit(t, closer, ev.ts_ns);
            }
            return Ok(());
        }
        let dest = t.0.clone();
        self.tw.entered(t, ev.owner.clone(), ev.ts_ns);
        match self
            .policy(dest.netns)
            .and_then(|p| self.tw.evaluate(&dest, ev.ts_ns, &p))
        {
            Some(pr) => write_pressure(&pr, ev.ts_ns, sink, clock),
            None => Ok(()),
        }
    }

    /// The namespaces whose TIME_WAIT the next scan must count: where
    /// sockets entered it since the last scan, or where some are counted.
    pub fn namespaces_needed(&self) -> impl Iterator<Item = u32> + '_ {
        self.entered
            .iter()
            .copied()
            .chain(self.tw.namespaces())
            .chain(self.server_side.keys().map(|(netns, _)| *netns))
    }

    /// Whether this tick should count timewait sockets and read listeners
    /// (once a second).
    pub fn wants_scan(&mut self, now_ns: u64) -> bool {
        // Ticks of a second come a hair early or late: a tenth of slack
        // keeps a tick that comes early from waiting a whole extra second.
        let due = self
            .last_reconcile_ns
            .saturating_add(RECONCILE_NS - RECONCILE_NS / 10);
        if now_ns < due {
            return false;
        }
        self.last_reconcile_ns = now_ns;
        true
    }

    /// Once a second, with what the host worker found: reconcile TIME_WAIT
    /// counts with the kernel's, report pressure changes and the top
    /// destinations, and check listeners for accept-queue overflows.
    /// `time_wait`: the timewait sockets, and the namespaces they were
    /// listed in (None: every one covered).
    pub fn on_scan(
        &mut self,
        now_ns: u64,
        time_wait: Result<(Vec<Tuple>, Option<HashSet<u32>>), SnapshotError>,
        listeners: Result<Vec<DiagSocket>, SnapshotError>,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        // Listeners first: they tell which TIME_WAIT is a server's.
        match listeners {
            Ok(l) => self.check_listeners(l),
            Err(e) => log::warn!("listener check: {e}"),
        }
        match time_wait {
            Ok((dump, read)) => self.reconcile(&dump, read, now_ns, sink, clock)?,
            Err(e) => log::warn!("TIME_WAIT reconciliation: {e}"),
        }
        if now_ns >= self.last_top_ns.saturating_add(TOP_EVERY_NS) {
            self.last_top_ns = now_ns;
            self.write_top(now_ns, sink, clock)?;
        }
        Ok(())
    }

    /// The kernel's TIME_WAIT sockets: client-side ones replace the
    /// counts per destination, server-side ones are counted apart.
    fn reconcile(
        &mut self,
        dump: &[Tuple],
        read: Option<HashSet<u32>>,
        now_ns: u64,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        let covered = |netns: &u32| read.as_ref().is_none_or(|r| r.contains(netns));
        // Server-side counts of namespaces not read this time stand.
        let mut server_side: BTreeMap<(u32, u16), u32> = std::mem::take(&mut self.server_side)
            .into_iter()
            .filter(|((netns, _), _)| !covered(netns))
            .collect();
        let mut r = self.tw.begin_reconcile_of(read.clone());
        for t in dump {
            if self.server_side(t.0.netns, t.1) {
                *server_side.entry((t.0.netns, t.1)).or_default() += 1;
                r.still_there(&mut self.tw, t);
            } else {
                r.saw(&mut self.tw, t);
            }
        }
        self.tw.end_reconcile(r, now_ns);
        self.server_side = server_side;
        self.entered.retain(|netns| !covered(netns));
        let policies = &self.policies;
        let home = self.reach.home();
        let policy_of = |netns: u32| {
            policies
                .get(&if netns == 0 { home } else { netns })
                .copied()
        };
        for pr in self.tw.evaluate_all(now_ns, &policy_of) {
            write_pressure(&pr, now_ns, sink, clock)?;
        }
        Ok(())
    }

    /// The busiest destinations, and server-side TIME_WAIT per service port.
    fn write_top(&mut self, now_ns: u64, sink: &mut Sink, clock: &WallClock) -> io::Result<()> {
        let home = sink.home_netns();
        let top = self.tw.top(TOP_RECORDED);
        let servers = self.server_side_top(TOP_RECORDED);
        if top.is_empty() && servers.is_empty() {
            return Ok(());
        }
        let text = || {
            let list: Vec<String> = top
                .iter()
                .take(3)
                .map(|(d, n)| {
                    let at = elsewhere(d.netns, home);
                    format!("{} -> {} {n}{at}", d.saddr, endpoint(d.daddr, d.dport))
                })
                .collect();
            let served: Vec<String> = servers
                .iter()
                .take(3)
                .map(|s| {
                    format!(
                        "port {} {}{}",
                        s.port,
                        s.time_wait,
                        elsewhere(s.netns, home)
                    )
                })
                .collect();
            let mut line = format!("-- TIME_WAIT top: {}", list.join(", "));
            if !served.is_empty() {
                line += &format!("; server side: {}", served.join(", "));
            }
            line
        };
        let rec = records::TimeWaitTop {
            ts: Ts::at(clock, now_ns),
            top: top
                .iter()
                .map(|(d, n)| records::TimeWaitDest {
                    saddr: d.saddr,
                    daddr: d.daddr,
                    dport: d.dport,
                    time_wait: *n,
                    ratio: self.ratio(d.netns, *n),
                    netns: d.netns,
                })
                .collect(),
            server_side: servers.clone(),
        };
        sink.record(Record::TimeWaitTop(rec), text)
    }

    /// Server-side TIME_WAIT per (netns, local port), most first.
    pub fn server_side_top(&self, n: usize) -> Vec<records::ServerTimeWait> {
        let mut v: Vec<records::ServerTimeWait> = self
            .server_side
            .iter()
            .map(|(&(netns, port), &time_wait)| records::ServerTimeWait {
                netns,
                port,
                time_wait,
            })
            .collect();
        v.sort_by(|a, b| b.time_wait.cmp(&a.time_wait).then(a.port.cmp(&b.port)));
        v.truncate(n);
        v
    }

    pub fn top(&self, n: usize) -> Vec<(Dest, u32)> {
        self.tw.top(n)
    }

    /// `n` TIME_WAIT sockets as a share of namespace `netns`'s ephemeral
    /// ports, if known.
    pub fn ratio(&self, netns: u32, n: u32) -> Option<f64> {
        let available = self.policy(netns)?.available();
        (available > 0).then(|| f64::from(n) / f64::from(available))
    }

    pub fn by_process(&self) -> Vec<(Task, u32)> {
        self.tw.by_process()
    }
}

/// " [netns N]" for a namespace other than closetrace's own (`home`).
fn elsewhere(netns: u32, home: u32) -> String {
    if netns == 0 || netns == home {
        String::new()
    } else {
        format!(" [netns {netns}]")
    }
}

fn write_pressure(p: &Pressure, ts_ns: u64, sink: &mut Sink, clock: &WallClock) -> io::Result<()> {
    let home = sink.home_netns();
    let text = || {
        let closers: Vec<String> = p
            .pids
            .iter()
            .map(|(pid, c)| format!("{}({pid})", printable(c)))
            .collect();
        let eta = p
            .exhaustion_s
            .map_or(String::new(), |s| format!(", ports exhausted in ~{s:.1} s"));
        format!(
            "!! TIME_WAIT pressure ({}) {} -> {}: {} of {} ports ({:.0}%), {:.1}/s{eta}; closers: {}",
            p.level.name(),
            p.dest.saddr,
            endpoint(p.dest.daddr, p.dest.dport),
            p.time_wait,
            p.ports_available,
            p.ratio * 100.0,
            p.rate_per_s,
            closers.join(", ")
        ) + &elsewhere(p.dest.netns, home)
    };
    let rec = TimeWaitPressure {
        ts: Ts::at(clock, ts_ns),
        level: p.level,
        saddr: p.dest.saddr,
        daddr: p.dest.daddr,
        dport: p.dest.dport,
        time_wait: p.time_wait,
        ports_available: p.ports_available,
        ratio: p.ratio,
        rate_per_s: p.rate_per_s,
        exhaustion_s: p.exhaustion_s,
        tw_reuse: p.tw_reuse,
        pids: p.pids.iter().map(|(pid, _)| *pid).collect(),
        netns: p.dest.netns,
    };
    sink.record(Record::TimeWaitPressure(rec), text)
}
