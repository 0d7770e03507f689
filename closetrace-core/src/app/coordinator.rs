//! The consumer side of the pipeline: runs each decoded event through the
//! state machines (owner table, close inference, leak detector), asks the
//! kernel for holders when a leak is due, and writes records to the sink.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;

use crate::app::ports::PortPressure;
use crate::host::sockets::{Holder, KernelView};
use crate::kernel::CloseWaitKernel;
use crate::model::clock::WallClock;
use crate::model::{Close, KernelEvent, Task, TcpState};
use crate::output::metrics::ProcessLeaks;
use crate::output::records::{
    self, CloseWaitLeak, CloseWaitResolved, ClosedBy, LeakSince, SockFields, Ts,
};
use crate::output::sink::Sink;
use crate::output::summary::Summary;
use crate::track::closes::infer_close;
use crate::track::leaks::{Due, LeakDetector, Resolved};
use crate::track::owners::OwnerTable;

/// Sockets the userspace tables remember at most.
const TABLE_CAPACITY: usize = 65536;

/// What the monitor is asked to do, from the command line and the loader.
pub struct Settings {
    pub threshold_ns: u64,
    pub tw_warn: f64,
    /// `--pid`: what is displayed (the kernel already dropped most else).
    pub pids: Vec<u32>,
    /// No exact tcp_close hook: closes are inferred from transitions.
    pub infer_closes: bool,
    /// `--states`: write every state change and close.
    pub stream_all: bool,
    pub own_netns: u32,
}

pub struct Monitor {
    table: OwnerTable,
    leaks: LeakDetector,
    pub summary: Summary,
    clock: WallClock,
    /// `--pid`: what is displayed (the kernel already dropped most else).
    /// With `--pid-tree` it follows the kernel's set, which may empty.
    by_pid: bool,
    pids: HashSet<u32>,
    /// No exact tcp_close hook: closes are inferred from transitions.
    infer_closes: bool,
    stream_all: bool,
    own_netns: u32,
    /// Leaks that were displayed, so their resolution is displayed too.
    shown: HashSet<u64>,
    ports: PortPressure,
    /// sock_diag failed once already: do not repeat the warning.
    diag_warned: bool,
    /// Set in the default mode: CLOSE_WAIT sockets of this namespace are
    /// found by scanning (see `CloseWaitKernel`).
    scan: Option<Box<dyn CloseWaitKernel>>,
    /// `--pid-tree`: the processes followed now (the kernel adds children).
    follow: Option<Box<dyn FnMut() -> Option<Vec<u32>>>>,
    /// `--metrics`: gauges refreshed each tick.
    pub metrics: Option<std::rc::Rc<std::cell::RefCell<crate::output::metrics::Metrics>>>,
}

impl Monitor {
    pub fn new(s: Settings, clock: WallClock) -> Self {
        Monitor {
            table: OwnerTable::new(TABLE_CAPACITY, s.stream_all),
            leaks: LeakDetector::new(s.threshold_ns, TABLE_CAPACITY),
            summary: Summary::default(),
            clock,
            by_pid: !s.pids.is_empty(),
            pids: s.pids.into_iter().collect(),
            infer_closes: s.infer_closes,
            stream_all: s.stream_all,
            own_netns: s.own_netns,
            shown: HashSet::new(),
            ports: PortPressure::new(s.tw_warn, s.own_netns),
            diag_warned: false,
            scan: None,
            follow: None,
            metrics: None,
        }
    }

    /// Display what `follow` returns from now on (refreshed each tick).
    pub fn follow_with(&mut self, follow: Box<dyn FnMut() -> Option<Vec<u32>>>) {
        self.follow = Some(follow);
    }

    /// Find this namespace's CLOSE_WAIT sockets by scanning from now on.
    pub fn scan_close_wait_with(&mut self, kernel: Box<dyn CloseWaitKernel>) {
        self.scan = Some(kernel);
    }

    /// Track every CLOSE_WAIT socket of this namespace not yet tracked,
    /// watched in the kernel from now on. Those tracked that are no longer
    /// in CLOSE_WAIT left it before the watch took, or their transition is
    /// still in flight or lost: see `LeakDetector::absent`.
    fn scan_close_wait(&mut self, now_ns: u64, sink: &mut Sink) -> io::Result<()> {
        let Some(kernel) = self.scan.as_mut() else {
            return Ok(());
        };
        let netns = self.own_netns;
        let mut found = Vec::new();
        let dumped = crate::host::sockets::visit_tcp_sockets_both(
            crate::host::sockets::states::CLOSE_WAIT_ONLY,
            false,
            &mut |s| found.push(s.sock_ref(netns)),
        );
        if let Err(e) = dumped {
            if !std::mem::replace(&mut self.diag_warned, true) {
                log::warn!("cannot list CLOSE_WAIT sockets: {e}");
            }
            return Ok(());
        }
        let present: HashSet<u64> = found.iter().map(|s| s.id).collect();
        for sock in found {
            if self.leaks.is_tracked(sock.id) {
                continue;
            }
            let (since, owner) = kernel.entered(sock.id).unwrap_or((0, None));
            let known = since != 0 && since <= now_ns;
            kernel.watch(sock.id);
            let since = if known { since } else { now_ns };
            self.leaks.found(sock, owner, since, !known);
        }
        let gone: Vec<u64> = self
            .leaks
            .tracked()
            .filter(|t| t.sock.netns == netns && !present.contains(&t.sock.id))
            .map(|t| t.sock.id)
            .collect();
        for id in gone {
            if let Some(k) = self.scan.as_mut() {
                k.unwatch(id);
            }
            if let Some(r) = self.leaks.absent(id, now_ns) {
                self.resolve(&r, sink)?;
            }
        }
        Ok(())
    }

    pub fn table_mut(&mut self) -> &mut OwnerTable {
        &mut self.table
    }

    fn wants(&self, pid: Option<u32>) -> bool {
        !self.by_pid || pid.is_some_and(|p| self.pids.contains(&p))
    }

    /// Sockets already in CLOSE_WAIT at start-up, aged from `now_ns`.
    /// `keep`: the sockets `--netns` and `--cgroup` select.
    pub fn seed_leaks(
        &mut self,
        view: &KernelView,
        now_ns: u64,
        keep: &dyn Fn(&crate::host::sockets::DiagSocket) -> bool,
    ) {
        for s in view.by_cookie.values() {
            if TcpState::try_from(s.state as u32) != Ok(TcpState::CloseWait) || !keep(s) {
                continue;
            }
            let sock = s.sock_ref(self.own_netns);
            let owner = blame(None, view.holders_of(s.cookie));
            self.leaks.seed(sock, owner, now_ns);
        }
    }

    pub fn on_event(&mut self, ev: KernelEvent, sink: &mut Sink) -> io::Result<()> {
        self.summary.events += 1;
        match ev {
            KernelEvent::State(mut ev) => {
                self.table.apply(&mut ev);
                let resolved = self.leaks.on_state(&ev);
                if ev.old == TcpState::CloseWait
                    && let Some(k) = self.scan.as_mut()
                {
                    k.unwatch(ev.sock.id);
                }
                if self.stream_all && self.wants(ev.owner.as_ref().map(|o| o.pid)) {
                    sink.state(&ev)?;
                }
                if self.infer_closes
                    && let Some(close) = infer_close(&ev)
                {
                    self.close(&close, sink)?;
                }
                if let Some(r) = resolved {
                    self.resolve(&r, sink)?;
                }
                self.ports.on_state(&ev, sink, &self.clock)
            }
            KernelEvent::Close(close) => self.close(&close, sink),
            KernelEvent::SockError(e) => self.ports.on_error(&e, sink, &self.clock),
        }
    }

    fn close(&mut self, c: &Close, sink: &mut Sink) -> io::Result<()> {
        if !self.stream_all || !self.wants(Some(c.closer.pid)) {
            return Ok(());
        }
        self.summary.closes += 1;
        sink.close(records::Close {
            ts: Ts::at(&self.clock, c.ts_ns),
            pid: c.closer.pid,
            pid_start: c.closer.start,
            comm: Cow::Borrowed(&c.closer.comm),
            sock: SockFields::new(&c.sock, sink.containers()),
            state: c.state,
            by: if c.exiting {
                ClosedBy::Exit
            } else {
                ClosedBy::Close
            },
            via: c.via,
        })
    }

    fn resolve(&mut self, r: &Resolved, sink: &mut Sink) -> io::Result<()> {
        if !self.shown.remove(&r.tracked.sock.id) {
            return Ok(());
        }
        let owner = r.tracked.owner.as_ref();
        sink.resolved(CloseWaitResolved {
            ts: Ts::at(&self.clock, r.tracked.since_ns + r.age_ns),
            pid: owner.map(|o| o.pid),
            pid_start: owner.and_then(|o| o.start),
            comm: owner.map(|o| Cow::Borrowed(o.comm.as_str())),
            sock: SockFields::new(&r.tracked.sock, sink.containers()),
            close_wait_ms: records::ns_to_ms(r.age_ns),
            how: r.how,
            by_pid: r.by.as_ref().map(|t| t.pid),
        })
    }

    /// Report the leaks due at `now_ns`, each checked against the kernel's
    /// own view first: a socket that is gone, or no longer in CLOSE_WAIT,
    /// is resolved rather than reported (no ghosts).
    pub fn on_tick(&mut self, now_ns: u64, sink: &mut Sink) -> io::Result<()> {
        if let Some(pids) = self.follow.as_mut().and_then(|f| f()) {
            if pids.is_empty() && !self.pids.is_empty() {
                log::info!(
                    "every process followed has exited; leaks they left are still \
                     reported as they end, and a new process reusing a pid is not followed"
                );
            }
            self.pids = pids.into_iter().collect();
        }
        self.ports.on_tick(now_ns, sink, &self.clock)?;
        self.scan_close_wait(now_ns, sink)?;
        if let Some(m) = &self.metrics {
            m.borrow_mut().update(&self.metrics_view(now_ns));
        }
        let due = self.leaks.due(now_ns);
        if due.is_empty() {
            return Ok(());
        }
        // Only CLOSE_WAIT sockets matter here: a due leak no longer among
        // them is gone.
        let view = match KernelView::take(crate::host::sockets::states::CLOSE_WAIT_ONLY) {
            Ok(v) => Some(v),
            Err(e) => {
                if !std::mem::replace(&mut self.diag_warned, true) {
                    log::warn!("cannot list sockets for leak holders: {e}");
                }
                None
            }
        };
        for d in due {
            self.report(d, view.as_ref(), now_ns, sink)?;
        }
        Ok(())
    }

    fn report(
        &mut self,
        d: Due,
        view: Option<&KernelView>,
        now_ns: u64,
        sink: &mut Sink,
    ) -> io::Result<()> {
        let id = d.tracked.sock.id;
        let local = d.tracked.sock.netns == self.own_netns || d.tracked.sock.netns == 0;
        let diag = view.and_then(|v| v.by_cookie.get(&id));
        let gone = view.is_some()
            && local
            && diag.is_none_or(|s| TcpState::try_from(s.state as u32) != Ok(TcpState::CloseWait));
        if gone {
            // Left CLOSE_WAIT, seen or not yet: no report; resolved (if it
            // was shown) by its transition or, failing that, as unknown.
            if let Some(r) = self.leaks.absent(id, now_ns) {
                self.resolve(&r, sink)?;
            }
            return Ok(());
        }
        let holders: &[Holder] = view.map_or(&[], |v| v.holders_of(id));
        let owner = blame(d.tracked.owner.clone(), holders);
        if let Some(o) = &owner {
            self.leaks.set_owner(id, o.clone());
        }
        let visible = self.wants(owner.as_ref().map(|o| o.pid))
            || holders.iter().any(|h| self.wants(Some(h.pid)));
        if !visible {
            return Ok(());
        }
        let first = self.shown.insert(id);
        let process_leaks = match &owner {
            Some(o) => self.summary.leak_reported(o, first, d.age_ns),
            None => 0,
        };
        sink.leak(
            CloseWaitLeak {
                ts: Ts::at(&self.clock, now_ns),
                pid: owner.as_ref().map(|o| o.pid),
                pid_start: owner.as_ref().and_then(|o| o.start),
                comm: owner.as_ref().map(|o| Cow::Borrowed(o.comm.as_str())),
                sock: SockFields::new(&d.tracked.sock, sink.containers()),
                close_wait_ms: records::ns_to_ms(d.age_ns),
                since: if d.tracked.from_startup {
                    LeakSince::Startup
                } else {
                    LeakSince::Transition
                },
                recv_q: diag.map(|s| s.rqueue),
                holders: Cow::Borrowed(holders),
                report: d.tracked.reports,
            },
            process_leaks,
        )
    }

    /// Reported leaks still open, per blamed process (pid and start), most
    /// first: the metrics gauges and the summary's `open` both read this.
    fn open_leaks(&self, now_ns: u64) -> Vec<ProcessLeaks> {
        let mut by_process: HashMap<(u32, Option<u64>), ProcessLeaks> = HashMap::new();
        for t in self.leaks.tracked() {
            let (true, Some(o)) = (self.shown.contains(&t.sock.id), &t.owner) else {
                continue;
            };
            let p = by_process
                .entry((o.pid, o.start))
                .or_insert_with(|| ProcessLeaks {
                    pid: o.pid,
                    start: o.start,
                    comm: o.comm.clone(),
                    open: 0,
                    oldest_s: 0.0,
                });
            p.open += 1;
            p.oldest_s = p
                .oldest_s
                .max(now_ns.saturating_sub(t.since_ns) as f64 / 1e9);
        }
        let mut leaks: Vec<_> = by_process.into_values().collect();
        leaks.sort_by(|a, b| {
            (b.open.cmp(&a.open))
                .then(a.pid.cmp(&b.pid))
                .then(a.start.cmp(&b.start))
        });
        leaks
    }

    /// What the metrics gauges show: reported leaks still open, by the
    /// process blamed; the busiest TIME_WAIT destinations; error totals.
    pub fn metrics_view(&self, now_ns: u64) -> crate::output::metrics::View {
        let leaks = self.open_leaks(now_ns);
        let time_wait = self
            .ports
            .top(crate::output::metrics::MAX_DESTINATIONS)
            .into_iter()
            .map(|(d, n)| (d.daddr.to_string(), d.dport, n, self.ports.ratio(n)))
            .collect();
        let errors = self
            .ports
            .errors
            .iter()
            .map(|(&(call, errno), &n)| (call, errno, n))
            .collect();
        crate::output::metrics::View {
            leaks,
            time_wait,
            errors,
        }
    }

    /// Leaks still open at exit, for the summary.
    pub fn finish(&mut self) {
        if let Some(k) = &self.scan {
            self.summary.kernel_maps.extend(k.occupancy());
        }
        self.summary.sockets_open = self.table.len();
        self.summary.owner_table_evicted = self.table.evicted();
        self.summary.close_wait_untracked = self.leaks.dropped();
        let open: HashMap<(u32, Option<u64>), usize> = self
            .open_leaks(crate::model::clock::monotonic_ns())
            .into_iter()
            .map(|p| ((p.pid, p.start), p.open as usize))
            .collect();
        self.summary.set_open_leaks(&open);
        self.summary.time_wait_top = (self.ports.top(10).into_iter())
            .map(|(d, n)| (d, n, self.ports.ratio(n)))
            .collect();
        self.summary.time_wait_by_process = self.ports.by_process();
        self.summary.errors = self.ports.errors.clone();
        self.summary.listen_overflows = self.ports.listen_overflows;
    }
}

/// Whom to name for a socket: its owner if it still holds it, else the
/// first process that does (fork, fd passing), else the owner as known.
/// "It" is the process, not the pid: a holder that was given a dead
/// owner's pid is another process.
fn blame(owner: Option<Task>, holders: &[Holder]) -> Option<Task> {
    if let Some(o) = &owner
        && holders.iter().any(|h| o.is(h.pid, h.start))
    {
        return owner;
    }
    match holders.first() {
        Some(h) => Some(Task {
            pid: h.pid,
            tid: h.pid,
            comm: h.comm.clone(),
            start: h.start,
        }),
        None => owner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{started, task};

    fn holder(pid: u32, comm: &str, fd: u32) -> Holder {
        Holder {
            pid,
            start: None,
            comm: comm.into(),
            fd,
        }
    }

    #[test]
    fn blame_prefers_an_owner_that_still_holds_it() {
        let hs = [holder(20, "child", 4), holder(10, "parent", 5)];
        assert_eq!(blame(Some(task(10, "parent")), &hs).unwrap().pid, 10);
        // The parent closed its copy: the child holds it.
        assert_eq!(blame(Some(task(10, "parent")), &hs[..1]).unwrap().pid, 20);
        assert_eq!(blame(None, &hs).unwrap().pid, 20);
        assert_eq!(blame(Some(task(10, "parent")), &[]).unwrap().pid, 10);
        assert_eq!(blame(None, &[]), None);
    }

    #[test]
    fn blame_tells_a_reused_pid_from_the_owner() {
        let owner = started(10, "srv", 500);
        let stranger = Holder {
            start: Some(9000),
            ..holder(10, "srv", 4)
        };
        // Same pid, later start: the holder is the newcomer, not the owner.
        let named = blame(Some(owner.clone()), std::slice::from_ref(&stranger)).unwrap();
        assert_eq!((named.pid, named.start), (10, Some(9000)));
        let same = Holder {
            start: Some(500),
            ..stranger
        };
        assert_eq!(blame(Some(owner.clone()), &[same]), Some(owner.clone()));
        // A start /proc would not give: the pid decides.
        assert_eq!(
            blame(Some(owner.clone()), &[holder(10, "srv", 4)]),
            Some(owner)
        );
    }
}
