//! Port pressure: TIME_WAIT per destination, the connect/bind failures it
//! causes, and listen queues that overflow. Feeds the pure TIME_WAIT counter
//! from the stream, reconciles it with the kernel (sock_diag) once a second,
//! polls listeners' drop counters, and turns it all into records.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io;

use crate::app::worker::Job;
use crate::host::sockets::{DiagSocket, KernelView, SnapshotError};
use crate::model::clock::WallClock;
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
    policy: Option<PortPolicy>,
    own_netns: u32,
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
    /// `policy`: this namespace's ports; None when unknown (no ratios).
    pub fn new(warn: f64, own_netns: u32, policy: Option<PortPolicy>) -> Self {
        PortPressure {
            tw: TimeWaitCounter::new(warn),
            policy,
            own_netns,
            limiter: ErrorLimiter::default(),
            listen_drops: HashMap::new(),
            last_reconcile_ns: 0,
            last_top_ns: 0,
            errors: BTreeMap::new(),
            listen_overflows: 0,
            jobs: Vec::new(),
        }
    }

    fn local(&self, netns: u32) -> bool {
        netns == self.own_netns || netns == 0
    }

    pub fn on_state(
        &mut self,
        ev: &StateChange,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        // Only this namespace: its sysctls set the ports, and sock_diag (the
        // reconciliation) sees only it.
        if !entered_time_wait(ev) || !self.local(ev.sock.netns) {
            return Ok(());
        }
        // At -> CLOSE the local address may already be cleared; the local
        // port and remote end are what the timewait socket keeps.
        let t = tuple(&ev.sock);
        let dest = t.0.clone();
        self.tw.entered(t, ev.owner.clone(), ev.ts_ns);
        match self
            .policy
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
                let time_wait = self.tw.toward(self.own_netns, e.addr, e.port);
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
        let (holders, time_wait) = view.map_or((Vec::new(), 0), |v| port_holders(v, e.port));
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
    pub fn on_scan(
        &mut self,
        now_ns: u64,
        time_wait: Result<Vec<Tuple>, SnapshotError>,
        listeners: Result<Vec<DiagSocket>, SnapshotError>,
        sink: &mut Sink,
        clock: &WallClock,
    ) -> io::Result<()> {
        match time_wait {
            Ok(dump) => {
                let mut r = self.tw.begin_reconcile();
                for t in &dump {
                    r.saw(&mut self.tw, t);
                }
                self.tw.end_reconcile(r, now_ns);
                if let Some(p) = self.policy {
                    for pr in self.tw.evaluate_all(now_ns, &p) {
                        write_pressure(&pr, now_ns, sink, clock)?;
                    }
                }
            }
            Err(e) => log::warn!("TIME_WAIT reconciliation: {e}"),
        }
        if now_ns >= self.last_top_ns.saturating_add(TOP_EVERY_NS) {
            self.last_top_ns = now_ns;
            let top = self.tw.top(TOP_RECORDED);
            if !top.is_empty() {
                let text = || {
                    let list: Vec<String> = top
                        .iter()
                        .take(3)
                        .map(|(d, n)| format!("{} -> {} {n}", d.saddr, endpoint(d.daddr, d.dport)))
                        .collect();
                    format!("-- TIME_WAIT top: {}", list.join(", "))
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
                            ratio: self.ratio(*n),
                        })
                        .collect(),
                };
                sink.record(Record::TimeWaitTop(rec), text)?;
            }
        }
        match listeners {
            Ok(l) => self.check_listeners(l),
            Err(e) => log::warn!("listener check: {e}"),
        }
        Ok(())
    }

    /// Listeners whose drop counters grew since the previous check: the
    /// host worker finds their holders (see `on_listener_holders`).
    fn check_listeners(&mut self, listeners: Vec<DiagSocket>) {
        let mut overflowing = Vec::new();
        let mut seen = HashMap::with_capacity(listeners.len());
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
            let sock = l.sock_ref(self.own_netns);
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

    /// `n` TIME_WAIT sockets as a share of the ephemeral ports, if known.
    pub fn ratio(&self, n: u32) -> Option<f64> {
        let available = self.policy?.available();
        (available > 0).then(|| f64::from(n) / f64::from(available))
    }

    pub fn by_process(&self) -> Vec<(Task, u32)> {
        self.tw.by_process()
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
        )
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
    };
    sink.record(Record::TimeWaitPressure(rec), text)
}

/// Who holds `port` locally: every non-TIME_WAIT socket on it with its
/// processes, and how many TIME_WAIT sockets.
fn port_holders(view: &KernelView, port: u16) -> (Vec<PortHolder>, u32) {
    let mut holders = Vec::new();
    let mut time_wait = 0;
    let mut on_port: Vec<&DiagSocket> = view
        .by_cookie
        .values()
        .filter(|s| s.sport == port)
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
