//! CLOSE_WAIT leak detection: a socket whose peer has closed and whose
//! holder has not, for longer than the threshold.
//!
//! Pure: fed transitions and the current time (CLOCK_MONOTONIC ns, the
//! kernel's clock), it says which sockets are due a report and how tracked
//! leaks ended. Reports back off (at ages T, 3T, 7T, 15T, ...) so a long
//! leak is re-reported at most once per threshold period and ever more
//! rarely, never flooding. Bounded: at capacity the oldest is dropped.

use serde::{Deserialize, Serialize};

use crate::model::{Holder, SockRef, StateChange, Task, TcpState};
use crate::track::closes::{How, how_left_close_wait};
use crate::track::{FastHashMap, FastHashSet};

/// Since when a leak's age is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakSince {
    /// From entering CLOSE_WAIT, as the kernel saw it.
    #[default]
    Transition,
    /// From the peer's last ACK, by the socket's tcp_info: its FIN carried
    /// one, so this is when it entered CLOSE_WAIT, unless the peer sent
    /// more after its FIN (then later, and the age a lower bound). The
    /// default mode keeps no kernel entry for a socket entering
    /// CLOSE_WAIT: the scan dates it this way.
    TcpInfo,
    /// Found in CLOSE_WAIT with no date: aged from then, a lower bound.
    /// The start-up snapshot's leaks where no scan runs (`--states`,
    /// `--cgroup`), or a scan's when the kernel gave no tcp_info.
    Startup,
}

/// How long a socket must be missing from the kernel's view before it is
/// taken as gone unseen: several times the pipeline's ring-buffer drain
/// period (50 ms), so a transition still in flight arrives first.
pub const ABSENCE_GRACE_NS: u64 = 250_000_000;

/// Longest gap between two reports of the same leak.
const MAX_REPORT_GAP_NS: u64 = 3600 * 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub sock: SockRef,
    pub owner: Option<Task>,
    /// When it entered CLOSE_WAIT, as `dated` tells.
    pub since_ns: u64,
    pub dated: LeakSince,
    /// Leak reports so far.
    pub reports: u32,
    next_report_ns: u64,
    /// When the kernel's own view first lacked it in CLOSE_WAIT.
    absent_since_ns: Option<u64>,
}

/// A leak to report now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub tracked: Tracked,
    pub age_ns: u64,
}

/// A reported leak that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub tracked: Tracked,
    pub age_ns: u64,
    pub how: How,
    /// The task in whose context it ended (the closer, when closed).
    pub by: Option<Task>,
}

#[derive(Debug)]
pub struct LeakDetector {
    threshold_ns: u64,
    socks: FastHashMap<u64, Tracked>,
    capacity: usize,
    dropped: u64,
    /// Sockets whose CLOSE_WAIT ended since `mark`: a scan taken before
    /// they ended may still list them, and must not bring them back.
    ended_since_mark: FastHashSet<u64>,
}

impl LeakDetector {
    pub fn new(threshold_ns: u64, capacity: usize) -> Self {
        LeakDetector {
            threshold_ns: threshold_ns.max(1),
            socks: FastHashMap::default(),
            capacity: capacity.max(1),
            dropped: 0,
            ended_since_mark: FastHashSet::default(),
        }
    }

    /// A scan of the kernel's sockets is asked for now: what ends from
    /// here on is remembered until the next mark, so that scan's answer,
    /// older than the events seen by the time it arrives, cannot revive it.
    pub fn mark(&mut self) {
        self.ended_since_mark.clear();
    }

    /// Sockets in CLOSE_WAIT now.
    pub fn tracked(&self) -> impl Iterator<Item = &Tracked> {
        self.socks.values()
    }

    /// Sockets dropped because the detector was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn track(&mut self, sock: SockRef, owner: Option<Task>, since_ns: u64, dated: LeakSince) {
        // Full: forget the oldest. A linear scan, but only ever at capacity.
        let full = !self.socks.contains_key(&sock.id) && self.socks.len() >= self.capacity;
        if full
            && let Some(oldest) = self
                .socks
                .values()
                .min_by_key(|t| t.since_ns)
                .map(|t| t.sock.id)
        {
            self.socks.remove(&oldest);
            self.dropped += 1;
        }
        let next_report_ns = since_ns.saturating_add(self.threshold_ns);
        self.socks.insert(
            sock.id,
            Tracked {
                sock,
                owner,
                since_ns,
                dated,
                reports: 0,
                next_report_ns,
                absent_since_ns: None,
            },
        );
    }

    pub fn is_tracked(&self, sock_id: u64) -> bool {
        self.socks.contains_key(&sock_id)
    }

    /// The kernel's account shows the socket in CLOSE_WAIT again: an
    /// absence seen before was a dump that missed it (dumps of a busy hash
    /// table skip sockets that move), not its end. Without this, two such
    /// misses a grace period apart ended a live leak as `unknown`, and the
    /// next scan found it again as a new one.
    /// Returns whether it had been seen absent (and so was unwatched).
    pub fn present(&mut self, sock_id: u64) -> bool {
        self.socks
            .get_mut(&sock_id)
            .is_some_and(|t| t.absent_since_ns.take().is_some())
    }

    /// A socket a scan found in CLOSE_WAIT, in it since `since_ns` as
    /// `dated` tells. Already tracked, or ended since the scan was asked
    /// for: unchanged. Returns whether it is tracked from now on.
    pub fn found(
        &mut self,
        sock: SockRef,
        owner: Option<Task>,
        since_ns: u64,
        dated: LeakSince,
    ) -> bool {
        let new = !self.is_tracked(sock.id) && !self.ended_since_mark.contains(&sock.id);
        if new {
            self.track(sock, owner, since_ns, dated);
        }
        new
    }

    /// A socket found in CLOSE_WAIT at start-up, aged from `now`.
    pub fn seed(&mut self, sock: SockRef, owner: Option<Task>, now_ns: u64) {
        self.track(sock, owner, now_ns, LeakSince::Startup);
    }

    /// Apply a transition; returns the resolution if it ended a reported leak.
    pub fn on_state(&mut self, ev: &StateChange) -> Option<Resolved> {
        if ev.new == TcpState::CloseWait {
            let (sock, owner) = (ev.sock.clone(), ev.owner.clone());
            self.track(sock, owner, ev.ts_ns, LeakSince::Transition);
            return None;
        }
        // Any other transition of a tracked socket means it left CLOSE_WAIT
        // (possibly through a transition whose event was lost).
        let tracked = self.socks.remove(&ev.sock.id)?;
        self.ended_since_mark.insert(ev.sock.id);
        let how = if ev.old == TcpState::CloseWait {
            how_left_close_wait(ev)
        } else {
            How::Unknown
        };
        self.resolved(tracked, ev.ts_ns, how, Some(ev.ctx.clone()))
    }

    /// The kernel's own account (sock_diag) says the socket is gone or no
    /// longer in CLOSE_WAIT, and closetrace has not seen it leave. Its way
    /// out may still be on the way: records wait in the ring buffer up to
    /// the reader's drain period, while the kernel's view is immediate. So
    /// it ends as `unknown` only once it has been absent for
    /// `ABSENCE_GRACE_NS`; until then the transition can still say how.
    pub fn absent(&mut self, sock_id: u64, now_ns: u64) -> Option<Resolved> {
        let t = self.socks.get_mut(&sock_id)?;
        let since = *t.absent_since_ns.get_or_insert(now_ns);
        if now_ns.saturating_sub(since) < ABSENCE_GRACE_NS {
            return None;
        }
        let tracked = self.socks.remove(&sock_id)?;
        self.ended_since_mark.insert(sock_id);
        self.resolved(tracked, now_ns, How::Unknown, None)
    }

    fn resolved(
        &self,
        tracked: Tracked,
        now_ns: u64,
        how: How,
        by: Option<Task>,
    ) -> Option<Resolved> {
        (tracked.reports > 0).then(|| Resolved {
            age_ns: now_ns.saturating_sub(tracked.since_ns),
            tracked,
            how,
            by,
        })
    }

    /// Leaks due a report at `now_ns`; each is scheduled for its next one.
    pub fn due(&mut self, now_ns: u64) -> Vec<Due> {
        let t = self.threshold_ns;
        let mut out = Vec::new();
        for tracked in self.socks.values_mut() {
            if now_ns < tracked.next_report_ns {
                continue;
            }
            tracked.reports += 1;
            // Gaps of 2T, 4T, 8T ... after the first report, capped.
            let gap = t
                .saturating_mul(1u64 << tracked.reports.min(40))
                .min(MAX_REPORT_GAP_NS.max(t));
            tracked.next_report_ns = now_ns.saturating_add(gap);
            out.push(Due {
                age_ns: now_ns.saturating_sub(tracked.since_ns),
                tracked: tracked.clone(),
            });
        }
        out.sort_by_key(|d| d.tracked.since_ns);
        out
    }

    /// Learn a better owner for a tracked socket (from its fd holders).
    pub fn set_owner(&mut self, sock_id: u64, owner: Task) {
        if let Some(t) = self.socks.get_mut(&sock_id) {
            t.owner = Some(owner);
        }
    }
}

/// Whom to name for a socket: its owner if it still holds it, else the
/// first process that does (fork, fd passing), else the owner as known.
/// "It" is the process, not the pid: a holder that was given a dead
/// owner's pid is another process.
pub fn blame(owner: Option<Task>, holders: &[Holder]) -> Option<Task> {
    if let Some(o) = &owner
        && holders.iter().any(|h| o.is(h.pid, h.start))
    {
        return owner;
    }
    holders.first().map(Holder::task).or(owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{change, owned, started, task};
    use TcpState::*;

    const S: u64 = 1_000_000_000;

    fn enter(id: u64, at: u64) -> StateChange {
        let mut ev = owned(id, 9501, Established, CloseWait, task(10, "srv"));
        ev.ts_ns = at;
        ev
    }

    fn leave(id: u64, at: u64) -> StateChange {
        let mut ev = change(id, 9501, CloseWait, LastAck);
        ev.ts_ns = at;
        ev.ctx = task(10, "srv");
        ev
    }

    #[test]
    fn prompt_close_is_never_a_leak() {
        let mut d = LeakDetector::new(2 * S, 100);
        for i in 0..1000 {
            d.on_state(&enter(i, i * S / 100));
            assert_eq!(d.on_state(&leave(i, i * S / 100 + S / 10)), None);
        }
        assert!(d.due(100 * S).is_empty());
        assert_eq!(d.tracked().count(), 0);
    }

    #[test]
    fn leak_is_reported_after_threshold_with_backoff() {
        let mut d = LeakDetector::new(2 * S, 100);
        d.on_state(&enter(1, 10 * S));
        assert!(d.due(11 * S).is_empty());
        let due = d.due(12 * S);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].age_ns, 2 * S);
        assert_eq!(due[0].tracked.owner.as_ref().unwrap().pid, 10);
        // Not again within the next 2T, then at age 3T + ...
        assert!(d.due(13 * S).is_empty());
        assert!(d.due(15 * S).is_empty());
        let again = d.due(16 * S);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].tracked.reports, 2);
        // ... then 4T later: reports get rarer, never more than one per T.
        assert!(d.due(23 * S).is_empty());
        assert_eq!(d.due(24 * S).len(), 1);
    }

    #[test]
    fn late_close_gives_one_report_then_resolution() {
        let mut d = LeakDetector::new(2 * S, 100);
        d.on_state(&enter(1, 0));
        let mut reports = 0;
        let mut now = 0;
        while now < 5 * S {
            reports += d.due(now).len();
            now += S / 10;
        }
        assert_eq!(reports, 1, "closing at 2.5 x threshold: one report");
        let r = d.on_state(&leave(1, 5 * S)).expect("resolution");
        assert_eq!(r.how, How::Closed);
        assert_eq!(r.age_ns, 5 * S);
        assert_eq!(r.by.unwrap().pid, 10);
        assert_eq!(d.tracked().count(), 0);
    }

    #[test]
    fn resolutions_say_how() {
        let mut d = LeakDetector::new(S, 100);
        for id in 1..=4 {
            d.on_state(&enter(id, 0));
        }
        assert_eq!(d.due(S).len(), 4);
        let mut exit = leave(1, 2 * S);
        exit.context.exiting = true;
        assert_eq!(d.on_state(&exit).unwrap().how, How::ProcessExit);
        let mut rst = change(2, 9501, CloseWait, Close);
        rst.context.error = true;
        assert_eq!(d.on_state(&rst).unwrap().how, How::Reset);
        let mut shut = leave(3, 2 * S);
        shut.context.in_shutdown = true;
        assert_eq!(d.on_state(&shut).unwrap().how, How::Shutdown);
        // Missing from the kernel's view: not yet taken as gone.
        assert_eq!(d.absent(4, 3 * S), None);
        let later = 3 * S + ABSENCE_GRACE_NS;
        let r = d.absent(4, later).unwrap();
        assert_eq!((r.how, r.age_ns), (How::Unknown, later));
        assert_eq!(d.absent(4, later), None, "no ghost left behind");
    }

    #[test]
    fn a_transition_in_flight_beats_the_kernel_view() {
        let mut d = LeakDetector::new(S, 100);
        d.on_state(&enter(1, 0));
        assert_eq!(d.due(S).len(), 1);
        // The socket has left CLOSE_WAIT; sock_diag says so at once ...
        assert_eq!(d.absent(1, 2 * S), None);
        // ... and its transition, still in the ring buffer, follows.
        let r = d
            .on_state(&leave(1, 2 * S - 1))
            .expect("resolved by the event");
        assert_eq!(r.how, How::Closed);
        assert_eq!(d.absent(1, 3 * S), None, "already resolved");
    }

    #[test]
    fn startup_seeds_age_from_start_and_owner_can_be_corrected() {
        let mut d = LeakDetector::new(S, 100);
        let sock = change(5, 9501, CloseWait, CloseWait).sock;
        d.seed(sock, None, 100 * S);
        d.set_owner(5, task(42, "holder"));
        let due = d.due(101 * S);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].tracked.dated, LeakSince::Startup);
        assert_eq!(due[0].tracked.owner.as_ref().unwrap().pid, 42);
    }

    #[test]
    fn bounded() {
        let mut d = LeakDetector::new(S, 10);
        for id in 0..100 {
            d.on_state(&enter(id, id));
        }
        assert_eq!(d.tracked().count(), 10);
        assert_eq!(d.dropped(), 90);
        assert!(d.tracked().all(|t| t.sock.id >= 90), "the newest are kept");
    }

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

    #[test]
    fn a_leak_missed_by_two_dumps_apart_stays_one_leak() {
        let mut d = LeakDetector::new(S, 10);
        d.on_state(&enter(7, 0));
        assert!(!d.due(2 * S).is_empty());
        // A busy dump misses it, the next one sees it again...
        assert_eq!(d.absent(7, 3 * S), None, "within the grace period");
        assert!(d.present(7), "seen absent before: to be watched again");
        assert!(!d.present(7), "present twice: nothing to redo");
        // ...and one much later misses it once more: a new absence, not
        // the end of the first one.
        assert_eq!(d.absent(7, 3 * S + ABSENCE_GRACE_NS + 1), None);
        assert!(d.is_tracked(7), "still the same leak");
        // Really gone: absent for a whole grace period.
        let r = d
            .absent(7, 3 * S + 2 * ABSENCE_GRACE_NS + 2)
            .expect("ended");
        assert_eq!(r.how, How::Unknown);
    }

    /// The scan's dump predates the reset that ended this leak: the leak
    /// stays ended (it was counted twice, as a new one, before).
    #[test]
    fn a_stale_scan_does_not_revive_an_ended_leak() {
        let mut d = LeakDetector::new(S, 10);
        let ev = enter(9, 0);
        let sock = ev.sock.clone();
        d.on_state(&ev);
        d.mark();
        let mut rst = change(9, 9501, CloseWait, Close);
        rst.context.error = true;
        assert!(d.on_state(&rst).is_some() || !d.is_tracked(9));
        assert!(!d.found(sock.clone(), None, S, LeakSince::Transition));
        assert!(!d.is_tracked(9), "revived from a dump older than its end");
        // The next scan is asked after the end: a socket of that id in
        // CLOSE_WAIT then is news.
        d.mark();
        assert!(d.found(sock.clone(), None, 2 * S, LeakSince::TcpInfo));
        assert!(d.is_tracked(9));
        assert!(!d.found(sock, None, 3 * S, LeakSince::TcpInfo), "already");
    }
}
