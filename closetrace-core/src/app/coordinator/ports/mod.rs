//! Port pressure: TIME_WAIT per namespace and destination (`time_wait`),
//! the connect/bind failures it causes, and listen queues that overflow
//! (drop counters polled once a second); all of it turned into records.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;

use crate::app::worker::Job;
use crate::host::sockets::{DiagSocket, KernelView};
use crate::model::clock::WallClock;
use crate::model::netns::NetnsReach;
use crate::model::ports::PortPolicy;
use crate::model::{Holder, SockError, Syscall, TcpState};
use crate::output::records::{
    self, BindError, Caller, ConnectError, ListenOverflow, PortHolder, Record, SockFields, Ts,
};
use crate::output::sink::Sink;
use crate::output::text::{endpoint, printable};
use crate::track::errors::ErrorLimiter;
use crate::track::timewait::TimeWaitCounter;

mod time_wait;

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
}

fn more(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" (+{suppressed} identical suppressed)")
    } else {
        String::new()
    }
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
