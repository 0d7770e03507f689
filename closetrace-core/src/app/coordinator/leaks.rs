//! The coordinator's part in CLOSE_WAIT leaks: sockets found by the scan,
//! leaks already there at start-up, reports when a leak is due (checked
//! against the kernel's view first: no ghosts), and their endings.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;

use super::Monitor;
use crate::app::worker::DiagnoseFound;
use crate::host::sockets::{DiagSocket, KernelView, SnapshotError};
use crate::model::{Holder, TcpState};
use crate::output::records::{
    self, CloseWaitLeak, CloseWaitResolved, LeakSince, LeakStats, SockFields, Ts,
};
use crate::output::sink::Sink;
use crate::track::leaks::{Due, Resolved, blame};

impl Monitor {
    /// Track every CLOSE_WAIT socket the scan `found` not yet tracked,
    /// watched in the kernel from now on. Those tracked that are no longer
    /// in CLOSE_WAIT left it before the watch took, or their transition is
    /// still in flight or lost: see `LeakDetector::absent`. Only sockets of
    /// namespaces the scan read (`read`; None: all it covers) can be absent.
    /// `at`: when the tick was asked for, and a time by which its dump
    /// had run.
    pub(super) fn scan_close_wait(
        &mut self,
        (now_ns, dumped_by_ns): (u64, u64),
        found: Result<Vec<DiagSocket>, SnapshotError>,
        read: Option<&HashSet<u32>>,
        sink: &mut Sink,
    ) -> io::Result<()> {
        if self.scan.is_none() {
            return Ok(());
        }
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                if !std::mem::replace(&mut self.diag_warned, true) {
                    log::warn!("cannot list CLOSE_WAIT sockets: {e}");
                }
                return Ok(());
            }
        };
        let present: HashSet<u64> = found.iter().map(|s| s.cookie).collect();
        // A watch is made only for a socket tracked from now on, and undone
        // when it stops being tracked or is seen absent: a stale dump must
        // not watch a socket whose CLOSE_WAIT already ended, as nothing
        // would unwatch it (WATCH would fill with the dead).
        for s in found {
            if self.leaks.is_tracked(s.cookie) {
                self.seen_present(s.cookie);
                continue;
            }
            let entered = self.scan.as_ref().and_then(|k| k.entered(s.cookie));
            let (since, owner) = entered.unwrap_or((0, None));
            let (since, dated) = date_found(since, s.last_ack_recv_ms, now_ns, dumped_by_ns);
            if self.leaks.found(s.sock_ref(), owner, since, dated) {
                self.watch(s.cookie);
            }
        }
        let gone: Vec<u64> = self
            .leaks
            .tracked()
            .filter(|t| {
                let netns = t.sock.netns;
                let was_read = read.is_none_or(|r| r.contains(&netns) || netns == 0);
                self.reach.covers(netns) && was_read && !present.contains(&t.sock.id)
            })
            .map(|t| t.sock.id)
            .collect();
        for id in gone {
            self.seen_absent(id, now_ns, sink)?;
        }
        Ok(())
    }

    /// The kernel sends how socket `id` leaves CLOSE_WAIT from now on (see
    /// `CloseWaitKernel`); nothing without scanning.
    fn watch(&mut self, id: u64) {
        if let Some(k) = self.scan.as_mut() {
            k.watch(id);
        }
    }

    /// The kernel stops sending how socket `id` leaves CLOSE_WAIT.
    pub(super) fn unwatch(&mut self, id: u64) {
        if let Some(k) = self.scan.as_mut() {
            k.unwatch(id);
        }
    }

    /// The kernel's account lists tracked leak `id` in CLOSE_WAIT: watched
    /// again if an absence had unwatched it (its close must be seen).
    fn seen_present(&mut self, id: u64) {
        if self.leaks.present(id) {
            self.watch(id);
        }
    }

    /// The kernel's account no longer lists tracked leak `id` in
    /// CLOSE_WAIT: unwatched, and ended as `unknown` once absent for the
    /// grace period, unless its transition says how first.
    fn seen_absent(&mut self, id: u64, now_ns: u64, sink: &mut Sink) -> io::Result<()> {
        self.unwatch(id);
        match self.leaks.absent(id, now_ns) {
            Some(r) => self.resolve(&r, sink),
            None => Ok(()),
        }
    }

    /// Sockets already in CLOSE_WAIT at start-up, aged from `now_ns`.
    /// `keep`: the sockets `--netns` and `--cgroup` select.
    pub fn seed_leaks(
        &mut self,
        view: &KernelView,
        now_ns: u64,
        keep: &dyn Fn(&DiagSocket) -> bool,
    ) {
        for s in view.by_cookie.values() {
            if s.state != TcpState::CloseWait || !keep(s) {
                continue;
            }
            let sock = s.sock_ref();
            let owner = blame(None, view.holders_of(s.cookie));
            self.leaks.seed(sock, owner, now_ns);
        }
    }

    pub(super) fn resolve(&mut self, r: &Resolved, sink: &mut Sink) -> io::Result<()> {
        if self.shown.remove(&r.tracked.sock.id).is_none() {
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

    /// A leak due now, checked against `view` (the namespaces in `read`;
    /// None: all covered) before it is reported, with what its holders are
    /// doing (`found`).
    pub(super) fn report(
        &mut self,
        d: Due,
        (view, found): (Option<&KernelView>, Option<&DiagnoseFound>),
        read: Option<&HashSet<u32>>,
        now_ns: u64,
        sink: &mut Sink,
    ) -> io::Result<()> {
        let id = d.tracked.sock.id;
        let netns = d.tracked.sock.netns;
        let local =
            self.reach.covers(netns) && read.is_none_or(|r| r.contains(&netns) || netns == 0);
        let by_tuple = !self.ids_are_cookies;
        let diag = view.and_then(|v| v.find(&d.tracked.sock, by_tuple));
        let gone = view.is_some() && local && diag.is_none_or(|s| s.state != TcpState::CloseWait);
        if gone {
            // Left CLOSE_WAIT, seen or not yet: no report; resolved (if it
            // was shown) by its transition or, failing that, as unknown.
            return self.seen_absent(id, now_ns, sink);
        }
        if diag.is_some() {
            self.seen_present(id);
        }
        let holders: &[Holder] = view.map_or(&[], |v| v.holders_of_sock(&d.tracked.sock, by_tuple));
        let owner = blame(d.tracked.owner.clone(), holders);
        if let Some(o) = &owner {
            self.leaks.set_owner(id, o.clone());
        }
        let visible = self.wants(owner.as_ref().map(|o| (o.pid, o.start)))
            || holders.iter().any(|h| self.wants(Some((h.pid, h.start))));
        if !visible {
            return Ok(());
        }
        let first = !self.shown.contains_key(&id);
        let numbered = &mut self.leaks_numbered;
        let leak = *self.shown.entry(id).or_insert_with(|| {
            *numbered += 1;
            *numbered
        });
        let diagnosis = self.diagnosis_of(&d.tracked, owner.as_ref(), holders, found, view);
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
                since: d.tracked.dated,
                recv_q: diag.map(|s| s.rqueue),
                holders: Cow::Borrowed(holders),
                accept_queue: view.is_some_and(|v| v.in_accept_queue(&d.tracked.sock, by_tuple)),
                report: d.tracked.reports,
                leak,
                diagnosis,
            },
            process_leaks,
        )
    }

    /// Reported leaks still open, per blamed process (pid and start), most
    /// first: the metrics gauges and the summary's `open` both read this.
    pub(super) fn open_leaks(&self, now_ns: u64) -> Vec<LeakStats> {
        let mut by_process: HashMap<(u32, Option<u64>), LeakStats> = HashMap::new();
        for t in self.leaks.tracked() {
            let (true, Some(o)) = (self.shown.contains_key(&t.sock.id), &t.owner) else {
                continue;
            };
            let p = by_process
                .entry((o.pid, o.start))
                .or_insert_with(|| LeakStats {
                    pid: o.pid,
                    pid_start: o.start,
                    comm: o.comm.to_string(),
                    ..LeakStats::default()
                });
            p.leaks += 1;
            p.open += 1;
            p.oldest_ms = p
                .oldest_ms
                .max(records::ns_to_ms(now_ns.saturating_sub(t.since_ns)));
        }
        let mut leaks: Vec<_> = by_process.into_values().collect();
        leaks.sort_by(LeakStats::by_open);
        leaks
    }
}

/// When a socket a scan found in CLOSE_WAIT entered it: the kernel's
/// entry (`kernel_since`, 0 for none) if it kept one; else its peer's last
/// ACK, `last_ack_ms` before the dump (taken at `dumped_by_ns` at the
/// latest, so the age is never overstated); else, undated, from now.
pub(super) fn date_found(
    kernel_since: u64,
    last_ack_ms: Option<u32>,
    now_ns: u64,
    dumped_by_ns: u64,
) -> (u64, LeakSince) {
    if kernel_since != 0 && kernel_since <= now_ns {
        return (kernel_since, LeakSince::Transition);
    }
    match last_ack_ms {
        Some(ms) => {
            let since = dumped_by_ns.saturating_sub(u64::from(ms) * 1_000_000);
            (since.min(now_ns), LeakSince::TcpInfo)
        }
        None => (now_ns, LeakSince::Startup),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::app::coordinator::Settings;
    use crate::model::fixtures::change;
    use crate::model::netns::NetnsReach;
    use crate::model::{KernelEvent, Task, clock::WallClock};
    use crate::output::sink::Format;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    /// The kernel's WATCH map, as a set the test can read.
    struct Watched(Rc<RefCell<HashSet<u64>>>);

    impl crate::kernel::CloseWaitKernel for Watched {
        fn entered(&self, _cookie: u64) -> Option<(u64, Option<Task>)> {
            None
        }
        fn watch(&mut self, cookie: u64) {
            self.0.borrow_mut().insert(cookie);
        }
        fn unwatch(&mut self, cookie: u64) {
            self.0.borrow_mut().remove(&cookie);
        }
    }

    fn scanning_monitor() -> (Monitor, Rc<RefCell<HashSet<u64>>>, Sink) {
        let settings = Settings {
            threshold_ns: S,
            tw_warn: 0.5,
            pids: vec![],
            infer_closes: false,
            stream_all: false,
            reach: NetnsReach::Own(1),
            port_policies: Default::default(),
            ids_are_cookies: true,
        };
        let mut monitor = Monitor::new(settings, WallClock::from_offset(0));
        let watched = Rc::new(RefCell::new(HashSet::new()));
        monitor.scan_close_wait_with(Box::new(Watched(watched.clone())));
        let sink = Sink::new(
            Format::Json,
            Box::new(io::sink()),
            WallClock::from_offset(0),
            false,
        );
        (monitor, watched, sink)
    }

    /// A scan asked for before a leak ended answers after its end was seen:
    /// the dead socket is neither tracked nor watched again (a watch nothing
    /// would undo filled WATCH in the soak when 2,700 leaks ended at once).
    #[test]
    fn a_stale_scan_watches_no_ended_leak() {
        let (mut m, watched, mut sink) = scanning_monitor();
        let cw = |id| DiagSocket::on_loopback(id, TcpState::CloseWait, 9000, 1);
        m.leaks.mark();
        m.scan_close_wait((S, S), Ok(vec![cw(9), cw(10)]), None, &mut sink)
            .unwrap();
        assert_eq!(*watched.borrow(), HashSet::from([9, 10]));
        // A scan is asked for; then socket 9's holder closes it.
        m.leaks.mark();
        let close = change(9, 9000, TcpState::CloseWait, TcpState::LastAck);
        m.on_event(KernelEvent::State(close), &mut sink).unwrap();
        assert_eq!(*watched.borrow(), HashSet::from([10]));
        // The scan's dump predates the close.
        m.scan_close_wait((2 * S, 2 * S), Ok(vec![cw(9), cw(10)]), None, &mut sink)
            .unwrap();
        assert_eq!(*watched.borrow(), HashSet::from([10]), "9 watched again");
        assert!(!m.leaks.is_tracked(9));
        // Missed by one dump (unwatched), seen by the next: watched again,
        // or its close would go unseen.
        m.leaks.mark();
        m.scan_close_wait((3 * S, 3 * S), Ok(vec![]), None, &mut sink)
            .unwrap();
        assert!(watched.borrow().is_empty());
        m.scan_close_wait((4 * S, 4 * S), Ok(vec![cw(10)]), None, &mut sink)
            .unwrap();
        assert_eq!(*watched.borrow(), HashSet::from([10]));
    }

    #[test]
    fn the_kernel_entry_dates_first_then_tcp_info_then_now() {
        let now = 10_000 * MS;
        assert_eq!(
            date_found(4_000 * MS, Some(1), now, now + 5 * MS),
            (4_000 * MS, LeakSince::Transition)
        );
        // The FIN came 3 s before a dump that ran by now + 5 ms.
        assert_eq!(
            date_found(0, Some(3_000), now, now + 5 * MS),
            (7_005 * MS, LeakSince::TcpInfo)
        );
        // An entry from the future (another clock) is no date.
        assert_eq!(
            date_found(now + MS, None, now, now),
            (now, LeakSince::Startup)
        );
        // An ACK younger than the dump's lag is dated now, never later.
        assert_eq!(
            date_found(0, Some(1), now, now + 5 * MS),
            (now, LeakSince::TcpInfo)
        );
    }
}
