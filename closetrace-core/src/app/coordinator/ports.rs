//! Port pressure: TIME_WAIT per destination, the connect/bind failures it
//! causes, and listen queues that overflow. Feeds the pure TIME_WAIT counter
//! from the stream, reconciles it with the kernel (sock_diag) once a second,
//! polls listeners' drop counters, and turns it all into records.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;

use crate::app::worker::Job;
use crate::host::sockets::{DiagSocket, KernelView, SnapshotError};
use crate::model::clock::WallClock;
use crate::model::netns::NetnsReach;
use crate::model::ports::PortPolicy;
use crate::model::{Holder, SockError, SockRef, StateChange, Syscall, Task, TcpState};
use crate::output::records::{
    self, BindError, Caller, ConnectError, ListenOverflow, PortHolder, Record, SockFields,
    TimeWaitPressure, Ts,
};
use crate::output::sink::Sink;
use crate::output::text::{endpoint, printable};
use crate::track::errors::ErrorLimiter;
use crate::track::timewait::{Dest, Pressure, TimeWaitCounter, Tuple, entered_time_wait};

const RECONCILE_NS: u64 = 1_000_000_000;
/// In the text view, the top TIME_WAIT destinations every this often.
const TOP_EVERY_NS: u64 = 10_000_000_000;
/// Destinations in each `time_wait_top` record.
const TOP_RECORDED: usize = 10;

pub struct PortPressure {
    tw: TimeWaitCounter,
    /// Each namespace's ephemeral ports, by inode (refreshed each scan).
    policies: HashMap<u32, PortPolicy>,
    reach: NetnsReach,
    /// Listening (netns, port)s at the last scan: TIME_WAIT on them is the
    /// server side of a connection, which uses up no ephemeral port.
    listening: HashSet<(u32, u16)>,
    /// Server-side TIME_WAIT per (netns, local port), from the last scan.
    server_side: BTreeMap<(u32, u16), u32>,
    /// Namespaces where sockets entered TIME_WAIT since the last scan.
    entered: HashSet<u32>,
    limiter: ErrorLimiter,
    /// Last drop count per listener cookie.
    listen_drops: HashMap<u64, u32>,
    last_reconcile_ns: u64,
    last_top_ns: u64,
    pub errors: BTreeMap<(&'static str, &'static str), u64>,
    pub listen_overflows: u64,
    /// Reads of the running system these need, for the host worker.
    pub jobs: Vec<Job>,
}

fn tuple(s: &SockRef) -> Tuple {
    (
        Dest {
            netns: s.netns,
            saddr: s.saddr,
            daddr: s.daddr,
            dport: s.dport,
        },
        s.sport,
    )
}

impl PortPressure {
    /// `policies`: the ports of each namespace known at start (none known:
    /// no ratios until a scan reads them).
    pub fn new(warn: f64, reach: NetnsReach, policies: HashMap<u32, PortPolicy>) -> Self {
        PortPressure {
            tw: TimeWaitCounter::new(warn),
            policies,
            reach,
            listening: HashSet::new(),
            server_side: BTreeMap::new(),
            entered: HashSet::new(),
            limiter: ErrorLimiter::default(),
            listen_drops: HashMap::new(),
            last_reconcile_ns: 0,
            last_top_ns: 0,
            errors: BTreeMap::new(),
            listen_overflows: 0,
            jobs: Vec::new(),
        }
    }

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
        if !entered_time_wait(ev) || !self.reach.covers(ev.sock.netns) {
            return Ok(());
        }
        // At -> CLOSE the local address may already be cleared; the local
        // port and remote end are what the timewait socket keeps.
        let t = tuple(&ev.sock);
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

    pub fn on_error(
        &mut self,
        e: &SockError,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        *self
            .errors
            .entry((e.syscall.name(), e.errno.name()))
            .or_default() += 1;
        let Some(suppressed) = self.limiter.admit(e) else {
            return Ok(());
        };
        match e.syscall {
            Syscall::Connect => {
                let who = format!("{}({})", printable(&e.task.comm), e.task.pid);
                // The caller's namespace: its ports are the ones used up.
                let netns = if e.netns == 0 {
                    self.reach.home()
                } else {
                    e.netns
                };
                let time_wait = self.tw.toward(netns, e.addr, e.port);
                let text = || {
                    format!(
                        "!! connect() {}: {who} -> {} with {time_wait} sockets in TIME_WAIT toward it{}",
                        e.errno.name(),
                        endpoint(e.addr, e.port),
                        more(suppressed)
                    )
                };
                let rec = ConnectError {
                    caller: Caller::of(e, clock),
                    daddr: e.addr,
                    dport: e.port,
                    time_wait,
                    suppressed,
                    scope: records::Scope::new(e.netns, e.cgroup, sink.containers()),
                };
                sink.record(Record::ConnectError(rec), text)
            }
            Syscall::Bind => {
                // Who holds the port takes a full socket and fd view: the
                // host worker gets it, and `on_bind_holders` writes the
                // record.
                self.jobs.push(Job::BindHolders {
                    error: e.clone(),
                    suppressed,
                });
                Ok(())
            }
        }
    }

    /// A failed bind() with who holds the port it wanted, from `view`.
    pub fn on_bind_holders(
        &mut self,
        e: &SockError,
        suppressed: u64,
        view: Option<&KernelView>,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        // Only the caller's namespace: a port bound in another is no conflict.
        let netns = if e.netns == 0 {
            self.reach.home()
        } else {
            e.netns
        };
        let (holders, time_wait) = view.map_or((Vec::new(), 0), |v| port_holders(v, netns, e.port));
        let hint = bind_hint(&holders, time_wait);
        let who = format!("{}({})", printable(&e.task.comm), e.task.pid);
        let held: Vec<String> = holders
            .iter()
            .map(|h| match (h.pid, &h.comm) {
                (Some(p), Some(c)) => format!(
                    "{} {}({p}) fd {}",
                    h.state.name(),
                    printable(c),
                    h.fd.unwrap_or(0)
                ),
                _ => h.state.name().to_string(),
            })
            .collect();
        let text = || {
            format!(
                "!! bind() {}: {who} {} held by [{}] and {time_wait} TIME_WAIT; {hint}{}",
                e.errno.name(),
                endpoint(e.addr, e.port),
                held.join(", "),
                more(suppressed)
            )
        };
        let rec = BindError {
            caller: Caller::of(e, clock),
            saddr: e.addr,
            sport: e.port,
            holders,
            time_wait,
            hint: Cow::Borrowed(hint),
            suppressed,
            scope: records::Scope::new(e.netns, e.cgroup, sink.containers()),
        };
        sink.record(Record::BindError(rec), text)
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
        if now_ns < self.last_reconcile_ns.saturating_add(RECONCILE_NS) {
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

    /// Listeners whose drop counters grew since the previous check: the
    /// host worker finds their holders (see `on_listener_holders`).
    fn check_listeners(&mut self, listeners: Vec<DiagSocket>) {
        let mut overflowing = Vec::new();
        let mut seen = HashMap::with_capacity(listeners.len());
        self.listening = listeners.iter().map(|l| (l.netns, l.sport)).collect();
        for l in listeners {
            let Some(drops) = l.drops else { continue };
            let before = self.listen_drops.get(&l.cookie).copied();
            seen.insert(l.cookie, drops);
            // The first sight is a baseline: drops from before closetrace are not news.
            if let Some(b) = before
                && drops > b
            {
                overflowing.push((l, drops - b));
            }
        }
        self.listen_drops = seen;
        if !overflowing.is_empty() {
            self.jobs.push(Job::ListenerHolders(overflowing));
        }
    }

    /// Overflowing listeners, with the processes holding them.
    pub fn on_listener_holders(
        &mut self,
        overflowing: Vec<(DiagSocket, u32)>,
        holders: &HashMap<u32, Vec<Holder>>,
        now_ns: u64,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        for (l, dropped) in overflowing {
            self.listen_overflows += 1;
            let h = holders
                .get(&l.inode)
                .and_then(|v| v.iter().min_by_key(|h| h.pid));
            let sock = l.sock_ref();
            let text = || {
                format!(
                    "!! listen queue overflow: {} {}: backlog {}, {} queued, {dropped} dropped (the owner is not accepting fast enough)",
                    h.map_or("?".into(), |h| format!("{}({})", printable(&h.comm), h.pid)),
                    endpoint(l.saddr, l.sport),
                    l.wqueue,
                    l.rqueue
                )
            };
            let rec = ListenOverflow {
                ts: Ts::at(clock, now_ns),
                pid: h.map(|h| h.pid),
                comm: h.map(|h| Cow::Borrowed(h.comm.as_str())),
                sock: SockFields::new(&sock, sink.containers()),
                backlog: l.wqueue,
                queued: l.rqueue,
                dropped,
                total_dropped: l.drops.unwrap_or(0),
            };
            sink.record(Record::ListenOverflow(rec), text)?;
        }
        Ok(())
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

fn more(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" (+{suppressed} identical suppressed)")
    } else {
        String::new()
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

/// Who holds `port` in namespace `netns`: every non-TIME_WAIT socket on it
/// with its processes, and how many TIME_WAIT sockets.
fn port_holders(view: &KernelView, netns: u32, port: u16) -> (Vec<PortHolder>, u32) {
    let mut holders = Vec::new();
    let mut time_wait = 0;
    let mut on_port: Vec<&DiagSocket> = view
        .by_cookie
        .values()
        .filter(|s| s.sport == port && s.netns == netns)
        .collect();
    on_port.sort_by_key(|s| (s.state, s.cookie));
    for s in on_port {
        let state = s.state;
        if state == TcpState::TimeWait {
            time_wait += 1;
            continue;
        }
        let procs = view.holders_of(s.cookie);
        if procs.is_empty() {
            holders.push(PortHolder {
                pid: None,
                comm: None,
                fd: None,
                state,
                daddr: s.daddr,
                dport: s.dport,
            });
        }
        for h in procs {
            holders.push(PortHolder {
                pid: Some(h.pid),
                comm: Some(h.comm.clone()),
                fd: Some(h.fd),
                state,
                daddr: s.daddr,
                dport: s.dport,
            });
        }
    }
    (holders, time_wait)
}

fn bind_hint(holders: &[PortHolder], time_wait: u32) -> &'static str {
    if holders.iter().any(|h| h.state == TcpState::Listen) {
        "a listener holds the port: SO_REUSEADDR would not help; stop it, choose another port, \
         or share it with SO_REUSEPORT set by both"
    } else if !holders.is_empty() {
        "connected sockets hold the port: SO_REUSEADDR would have let bind() succeed unless one \
         of them is listening"
    } else if time_wait > 0 {
        "only TIME_WAIT sockets hold the port: SO_REUSEADDR would have let bind() succeed"
    } else {
        "nothing visible in this network namespace holds the port (another namespace, or it was \
         released since)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_hints() {
        let h = |state| PortHolder {
            pid: Some(1),
            comm: Some("x".into()),
            fd: Some(3),
            state,
            daddr: "0.0.0.0".parse().unwrap(),
            dport: 0,
        };
        assert!(bind_hint(&[h(TcpState::Listen)], 0).contains("would not help"));
        assert!(bind_hint(&[], 3).contains("would have let bind() succeed"));
        assert!(bind_hint(&[h(TcpState::Established)], 0).contains("connected sockets"));
        assert!(bind_hint(&[], 0).contains("nothing visible"));
    }
}
