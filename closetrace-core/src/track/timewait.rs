//! TIME_WAIT pressure on ephemeral ports, per destination.
//!
//! The unit ports run out on is (local address, remote address, remote
//! port): every connection to that destination needs its own local port,
//! and each one its closer left in TIME_WAIT holds a port for 60 s. Entries
//! are learned from active closes, which lead into TIME_WAIT (the kernel
//! then swaps in a timewait socket that the state tracepoint never reports;
//! see `enters_time_wait`). Expiries are not guessed: the
//! counts are replaced by the kernel's own (sock_diag) at each
//! reconciliation. Pure: events, dumps and the clock come in as arguments.
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use compact_str::CompactString;

use crate::model::ports::PortPolicy;
use crate::model::{SockRef, StateChange, Task, TcpState};

/// The tables here are filled from every TIME_WAIT entry and every socket
/// of each dump.
type HashMap<K, V> = super::FastHashMap<K, V>;

/// Window for `rate_per_s`, kept in this many fixed buckets.
const RATE_WINDOW_NS: u64 = 5_000_000_000;
const RATE_BUCKETS: usize = 20;
const BUCKET_NS: u64 = RATE_WINDOW_NS / RATE_BUCKETS as u64;
/// A further rise of this much in the ratio is reported again.
const WORSE_STEP: f64 = 0.10;
/// TIME_WAIT sockets remembered for attribution to their closer.
const TUPLE_CAPACITY: usize = 65_536;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub netns: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// One TIME_WAIT socket: its destination and local port.
pub type Tuple = (Dest, u16);

/// Entries per second over the last `RATE_WINDOW_NS`, in fixed buckets:
/// constant time and memory however fast sockets enter TIME_WAIT (a list of
/// entry times made each evaluation O(entries) under churn).
#[derive(Debug, Default)]
struct RateWindow {
    counts: [u32; RATE_BUCKETS],
    /// Which bucket (time / BUCKET_NS) each slot currently counts.
    epochs: [u64; RATE_BUCKETS],
    /// First entry of the current run of activity.
    first_ns: Option<u64>,
}

impl RateWindow {
    fn add(&mut self, ts_ns: u64) {
        if self.in_window(ts_ns) == 0 {
            self.first_ns = Some(ts_ns);
        }
        let epoch = ts_ns / BUCKET_NS;
        let slot = (epoch % RATE_BUCKETS as u64) as usize;
        if self.epochs[slot] != epoch {
            self.epochs[slot] = epoch;
            self.counts[slot] = 0;
        }
        self.counts[slot] += 1;
    }

    fn in_window(&self, now_ns: u64) -> u32 {
        let now = now_ns / BUCKET_NS;
        self.epochs
            .iter()
            .zip(self.counts)
            .filter(|&(&e, _)| e <= now && e + RATE_BUCKETS as u64 > now)
            .map(|(_, n)| n)
            .sum()
    }

    /// Entries per second: over the window, or since activity began if
    /// that is shorter (but at least a second, so one entry is not a spike).
    fn per_s(&self, now_ns: u64) -> f64 {
        let window = self.first_ns.map_or(RATE_WINDOW_NS, |first| {
            now_ns
                .saturating_sub(first)
                .clamp(1_000_000_000, RATE_WINDOW_NS)
        });
        self.in_window(now_ns) as f64 / (window as f64 / 1e9)
    }
}

#[derive(Debug, Default)]
struct DestState {
    count: u32,
    rate: RateWindow,
    /// Processes whose active closes put sockets here, recently.
    pids: BTreeMap<u32, CompactString>,
    /// Ratio at the last report while raised; None when not raised.
    raised: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Crossed the warning ratio.
    Warn,
    /// Still above it and worse by a further step.
    Worse,
    /// Fell back below it.
    Cleared,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Warn => "warn",
            Level::Worse => "worse",
            Level::Cleared => "cleared",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pressure {
    pub dest: Dest,
    pub level: Level,
    pub time_wait: u32,
    pub ports_available: u32,
    pub ratio: f64,
    pub rate_per_s: f64,
    /// Seconds until every port is in TIME_WAIT at the current rate.
    pub exhaustion_s: Option<f64>,
    pub tw_reuse: bool,
    pub pids: Vec<(u32, String)>,
}

/// Counts taken from one kernel dump; applied by `end_reconcile` only once
/// the dump is complete, so a failed dump changes nothing.
pub struct Reconciliation {
    generation: u64,
    counts: HashMap<Dest, u32>,
    /// The namespaces the dump covered; None: all. Counts elsewhere stand.
    read: Option<HashSet<u32>>,
}

impl Reconciliation {
    /// One timewait socket the kernel holds.
    pub fn saw(&mut self, tw: &mut TimeWaitCounter, tuple: &Tuple) {
        *self.counts.entry(tuple.0.clone()).or_default() += 1;
        self.still_there(tw, tuple);
    }

    /// One the kernel holds that no destination counts (see `credit`):
    /// its closer stays credited.
    pub fn still_there(&mut self, tw: &mut TimeWaitCounter, tuple: &Tuple) {
        let key = tw.key_of(tuple);
        if let Some(t) = tw.tuples.get_mut(&key) {
            t.seen = self.generation;
        }
    }
}

/// One TIME_WAIT socket closetrace saw enter. Keyed by a hash of its
/// tuple rather than the tuple (44 bytes): 40 bytes an entry instead of
/// 72, and under churn the table sits at tens of thousands of entries
/// (tombstones from `retain` make it double: 14 MiB with tuples as keys).
/// Two tuples sharing a 64-bit hash would share a closer.
#[derive(Debug)]
struct Remembered {
    closer: Arc<Task>,
    /// When it entered TIME_WAIT.
    ts_ns: u64,
    /// The reconciliation that last saw it.
    seen: u64,
    netns: u32,
}

#[derive(Debug)]
pub struct TimeWaitCounter {
    warn: f64,
    dests: HashMap<Dest, DestState>,
    /// TIME_WAIT sockets by a 64-bit hash of their tuple (see `Remembered`).
    tuples: HashMap<u64, Remembered>,
    /// Hashes tuples for `tuples`; keyed per run, and of quality: two
    /// tuples sharing a hash would share a closer.
    hasher: foldhash::quality::RandomState,
    /// Each closer once, shared by its tuples: a churning client closes
    /// tens of thousands of them.
    closers: HashMap<(u32, u32, Option<u64>), Arc<Task>>,
    /// The closer interned last: a churning client is the next one too.
    last_closer: Option<Arc<Task>>,
    /// Reconciliations begun so far.
    generation: u64,
    /// When the kernel's counts were last taken; None before the first time.
    last_reconcile_ns: Option<u64>,
}

/// A socket's TIME_WAIT identity: its destination, and the local port it
/// holds (at -> CLOSE the local address may already be cleared; the port
/// and the remote end are what the timewait socket keeps).
pub fn tuple_of(s: &SockRef) -> Tuple {
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

/// The TIME_WAIT entry this transition foretells: an active close (the
/// closer's FIN, sent in its own context). From then on the socket holds
/// its port, in FIN_WAIT and then TIME_WAIT. It is counted on the way in
/// rather than at FIN_WAIT2 or CLOSING -> CLOSE, so that the kernel need
/// keep no owner entry until the socket gets there; a close the peer
/// answers with a reset never gets there, and leaves the count at the
/// next reconciliation.
pub fn enters_time_wait(ev: &StateChange) -> bool {
    matches!(
        (ev.old, ev.new),
        (
            TcpState::Established | TcpState::SynRecv,
            TcpState::FinWait1
        )
    ) && !ev.context.error
}

impl TimeWaitCounter {
    pub fn new(warn: f64) -> Self {
        TimeWaitCounter {
            warn,
            dests: HashMap::default(),
            tuples: HashMap::default(),
            hasher: foldhash::quality::RandomState::default(),
            closers: HashMap::default(),
            last_closer: None,
            generation: 0,
            last_reconcile_ns: None,
        }
    }

    /// A socket entered TIME_WAIT at `ts_ns`, closed by `closer`.
    pub fn entered(&mut self, tuple: Tuple, closer: Option<Task>, ts_ns: u64) {
        let st = self.dests.entry(tuple.0.clone()).or_default();
        // A reconciliation after this entry already counted it.
        if self.last_reconcile_ns.is_none_or(|r| ts_ns > r) {
            st.count += 1;
        }
        st.rate.add(ts_ns);
        if let Some(c) = closer {
            if st.pids.get(&c.pid) != Some(&c.comm) {
                st.pids.insert(c.pid, c.comm.clone());
            }
            self.credit(tuple, c, ts_ns);
        }
    }

    /// Who closed the connection with this tuple, if it is remembered.
    pub fn closer(&self, tuple: &Tuple) -> Option<&Task> {
        self.tuples.get(&self.key_of(tuple)).map(|r| &*r.closer)
    }

    /// A socket entered TIME_WAIT that uses up no ephemeral port (a
    /// server's, on its service port): its closer is credited in
    /// `by_process`, but no destination counts it.
    pub fn credit(&mut self, tuple: Tuple, closer: Task, ts_ns: u64) {
        let key = self.key_of(&tuple);
        let room = self.tuples.len() < TUPLE_CAPACITY;
        let remembered = Remembered {
            closer: self.intern(closer),
            ts_ns,
            seen: self.generation,
            netns: tuple.0.netns,
        };
        match self.tuples.entry(key) {
            Entry::Occupied(mut e) => *e.get_mut() = remembered,
            Entry::Vacant(e) if room => {
                e.insert(remembered);
            }
            Entry::Vacant(_) => {}
        }
    }

    fn key_of(&self, tuple: &Tuple) -> u64 {
        self.hasher.hash_one(tuple)
    }

    fn intern(&mut self, task: Task) -> Arc<Task> {
        if let Some(last) = &self.last_closer
            && **last == task
        {
            return last.clone();
        }
        let key = (task.pid, task.tid, task.start);
        let shared = match self.closers.get(&key) {
            Some(known) if known.comm == task.comm => known.clone(),
            _ => {
                let shared = Arc::new(task);
                self.closers.insert(key, shared.clone());
                shared
            }
        };
        self.last_closer = Some(shared.clone());
        shared
    }

    /// Replace the counts with the kernel's: `dump` is every TIME_WAIT
    /// socket it holds now, taken at `now_ns`.
    #[cfg(test)]
    pub fn reconcile(&mut self, dump: &[Tuple], now_ns: u64) {
        let mut r = self.begin_reconcile();
        for t in dump {
            r.saw(self, t);
        }
        self.end_reconcile(r, now_ns);
    }

    /// A reconciliation in three steps, so the kernel's dump can be fed in
    /// socket by socket as it is parsed (see `Reconciliation`).
    pub fn begin_reconcile(&mut self) -> Reconciliation {
        self.begin_reconcile_of(None)
    }

    /// A reconciliation from a dump of only the namespaces in `read` (one
    /// that could not be read that time keeps its counts).
    pub fn begin_reconcile_of(&mut self, read: Option<HashSet<u32>>) -> Reconciliation {
        self.generation += 1;
        Reconciliation {
            generation: self.generation,
            counts: HashMap::default(),
            read,
        }
    }

    pub fn end_reconcile(&mut self, r: Reconciliation, now_ns: u64) {
        let covered = |netns: u32| r.read.as_ref().is_none_or(|read| read.contains(&netns));
        for (d, st) in self.dests.iter_mut() {
            if covered(d.netns) {
                st.count = 0;
            }
        }
        for (d, n) in r.counts {
            self.dests.entry(d).or_default().count = n;
        }
        // Sockets gone from TIME_WAIT no longer count for their closer.
        self.tuples
            .retain(|_, t| t.ts_ns > now_ns || t.seen == r.generation || !covered(t.netns));
        // The cache holds a reference too: drop it first.
        self.last_closer = None;
        self.closers.retain(|_, t| Arc::strong_count(t) > 1);
        self.dests
            .retain(|_, st| st.count > 0 || st.raised.is_some() || st.rate.in_window(now_ns) > 0);
        for st in self.dests.values_mut() {
            if st.count == 0 {
                st.pids.clear();
            }
        }
        self.last_reconcile_ns = Some(now_ns);
    }

    /// Check one destination's ratio against the thresholds.
    pub fn evaluate(&mut self, dest: &Dest, now_ns: u64, policy: &PortPolicy) -> Option<Pressure> {
        let warn = self.warn;
        let st = self.dests.get_mut(dest)?;
        let available = policy.available();
        let rate = st.rate.per_s(now_ns);
        let reuse = policy.reuse_applies(dest.daddr);
        // With tcp_tw_reuse a port in TIME_WAIT for over a second can be
        // reused by connect(), so only about one second's worth block ports.
        let blocking = if reuse {
            (st.count as f64).min(rate)
        } else {
            st.count as f64
        };
        let ratio = blocking / available as f64;
        let level = match st.raised {
            None if ratio >= warn => Level::Warn,
            Some(last) if ratio >= warn && ratio >= last + WORSE_STEP => Level::Worse,
            Some(_) if ratio < warn => Level::Cleared,
            _ => return None,
        };
        st.raised = (level != Level::Cleared).then_some(ratio);
        let left = available as f64 - blocking;
        Some(Pressure {
            dest: dest.clone(),
            level,
            time_wait: st.count,
            ports_available: available,
            ratio: (ratio * 1000.0).round() / 1000.0,
            rate_per_s: (rate * 10.0).round() / 10.0,
            exhaustion_s: (rate > 0.0 && left > 0.0 && level != Level::Cleared)
                .then(|| (left / rate * 10.0).round() / 10.0),
            tw_reuse: reuse,
            pids: st.pids.iter().map(|(p, c)| (*p, c.to_string())).collect(),
        })
    }

    /// Evaluate every destination (after a reconciliation), each against
    /// its namespace's ports (`policy_of` its netns; None: not evaluated).
    pub fn evaluate_all(
        &mut self,
        now_ns: u64,
        policy_of: &dyn Fn(u32) -> Option<PortPolicy>,
    ) -> Vec<Pressure> {
        let mut dests: Vec<Dest> = self.dests.keys().cloned().collect();
        dests.sort();
        dests
            .iter()
            .filter_map(|d| self.evaluate(d, now_ns, &policy_of(d.netns)?))
            .collect()
    }

    /// Namespaces with a destination still being counted.
    pub fn namespaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.dests.keys().map(|d| d.netns)
    }

    /// TIME_WAIT sockets toward `daddr:dport` from any local address.
    pub fn toward(&self, netns: u32, daddr: IpAddr, dport: u16) -> u32 {
        self.dests
            .iter()
            .filter(|(d, _)| d.netns == netns && d.daddr == daddr && d.dport == dport)
            .map(|(_, s)| s.count)
            .sum()
    }

    /// Destinations with the most TIME_WAIT sockets.
    pub fn top(&self, n: usize) -> Vec<(Dest, u32)> {
        let mut v: Vec<(Dest, u32)> = self
            .dests
            .iter()
            .filter(|(_, s)| s.count > 0)
            .map(|(d, s)| (d.clone(), s.count))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// TIME_WAIT sockets per closing process, among those closetrace saw
    /// enter. Per process, not pid: TIME_WAIT outlives short-lived closers,
    /// and on a busy host their pids come round again.
    pub fn by_process(&self) -> Vec<(Task, u32)> {
        let mut m: BTreeMap<(u32, Option<u64>), (Task, u32)> = BTreeMap::new();
        for task in self.tuples.values().map(|t| &t.closer) {
            m.entry((task.pid, task.start))
                .or_insert_with(|| ((**task).clone(), 0))
                .1 += 1;
        }
        let mut v: Vec<(Task, u32)> = m.into_values().collect();
        v.sort_by(|a, b| {
            (b.1.cmp(&a.1))
                .then(a.0.pid.cmp(&b.0.pid))
                .then(a.0.start.cmp(&b.0.start))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{change, started, task};

    const S: u64 = 1_000_000_000;

    fn policy(ports: u16, reuse: u8) -> PortPolicy {
        PortPolicy {
            lo: 40000,
            hi: 40000 + ports - 1,
            reserved: 0,
            tw_reuse: reuse,
        }
    }

    fn dest(dport: u16) -> Dest {
        Dest {
            netns: 1,
            saddr: "127.0.0.1".parse().unwrap(),
            daddr: "127.0.0.2".parse().unwrap(),
            dport,
        }
    }

    #[test]
    fn entries_are_active_closes_without_an_error() {
        use TcpState::*;
        for (old, new) in [(Established, FinWait1), (SynRecv, FinWait1)] {
            assert!(enters_time_wait(&change(1, 1, old, new)), "{old:?}");
        }
        let mut failed = change(1, 1, Established, FinWait1);
        failed.context.error = true;
        assert!(!enters_time_wait(&failed));
        // The rest of the way in is not counted again, and a passive close
        // never gets there.
        for (old, new) in [
            (FinWait1, FinWait2),
            (FinWait2, Close),
            (Closing, Close),
            (CloseWait, LastAck),
            (LastAck, Close),
        ] {
            assert!(!enters_time_wait(&change(1, 1, old, new)), "{old:?}");
        }
    }

    /// A closer of thousands of sockets is kept once, and forgotten with
    /// its last TIME_WAIT socket; a reused pid with a new start is another.
    #[test]
    fn closers_are_shared_by_their_sockets() {
        let mut c = TimeWaitCounter::new(0.5);
        for port in 0..5000u16 {
            c.entered((dest(80), 10_000 + port), Some(task(7, "cli")), S);
        }
        let reused = Task {
            start: Some(99),
            ..task(7, "cli")
        };
        c.entered((dest(80), 9_999), Some(reused), S);
        assert_eq!(c.closers.len(), 2);
        let first = c.closer(&(dest(80), 10_000)).unwrap();
        let last = c.closer(&(dest(80), 14_999)).unwrap();
        assert!(std::ptr::eq(first, last), "one allocation for one closer");
        assert_eq!(c.by_process().len(), 2);
        // The kernel's dump no longer has them: tuples and closers go.
        let r = c.begin_reconcile();
        c.end_reconcile(r, 2 * S);
        assert!(c.closers.is_empty());
        assert!(c.by_process().is_empty());
    }

    /// A dump that skipped a namespace (gone, or not enterable that time)
    /// changes nothing there; the namespaces it read are replaced.
    #[test]
    fn reconciling_some_namespaces_keeps_the_others() {
        let mut c = TimeWaitCounter::new(0.5);
        let here = dest(80);
        let there = Dest {
            netns: 2,
            ..dest(80)
        };
        let closer = task(7, "cli");
        c.entered((here.clone(), 40001), Some(closer.clone()), S);
        c.entered((there.clone(), 40001), Some(closer.clone()), S);
        c.entered((there.clone(), 40002), Some(closer), S);
        let mut r = c.begin_reconcile_of(Some([1].into()));
        r.saw(&mut c, &(here.clone(), 40001));
        r.saw(&mut c, &(here.clone(), 40005));
        c.end_reconcile(r, 2 * S);
        assert_eq!(c.toward(1, here.daddr, 80), 2, "read: the kernel's count");
        assert_eq!(c.toward(2, there.daddr, 80), 2, "not read: kept");
        assert_eq!(c.by_process()[0].1, 3, "the closer keeps all three");
    }

    #[test]
    fn warn_worse_and_clear_with_a_fake_clock() {
        let p = policy(200, 0);
        let mut c = TimeWaitCounter::new(0.5);
        let mut reports = Vec::new();
        for i in 0..180u64 {
            let now = i * S / 100; // 100 per second
            c.entered((dest(80), 40000 + i as u16), Some(task(7, "cli")), now);
            if let Some(r) = c.evaluate(&dest(80), now, &p) {
                reports.push((i, r));
            }
        }
        // 100 of 200 -> warn, then at 0.6, 0.7, 0.8, 0.9 -> worse.
        let at: Vec<(u64, Level)> = reports.iter().map(|(i, r)| (*i, r.level)).collect();
        assert_eq!(
            at,
            vec![
                (99, Level::Warn),
                (119, Level::Worse),
                (139, Level::Worse),
                (159, Level::Worse),
                (179, Level::Worse)
            ]
        );
        let first = &reports[0].1;
        assert_eq!(
            (first.time_wait, first.ports_available, first.ratio),
            (100, 200, 0.5)
        );
        assert_eq!(first.pids, vec![(7, "cli".to_string())]);
        assert!(
            (first.rate_per_s - 100.0).abs() < 1.0,
            "{}",
            first.rate_per_s
        );
        assert!(
            (first.exhaustion_s.unwrap() - 1.0).abs() < 0.1,
            "{:?}",
            first.exhaustion_s
        );
        // 60 s later the kernel has expired them: cleared.
        c.reconcile(&[], 62 * S);
        let cleared = c.evaluate_all(62 * S, &|_| Some(p));
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].level, Level::Cleared);
        assert_eq!(cleared[0].time_wait, 0);
        assert!(
            c.evaluate_all(63 * S, &|_| Some(p)).is_empty(),
            "cleared once"
        );
    }

    #[test]
    fn reconciliation_sets_counts_and_is_not_double_counted() {
        let mut c = TimeWaitCounter::new(0.5);
        for i in 0..10 {
            c.entered((dest(80), 40000 + i), Some(task(7, "cli")), S + i as u64);
        }
        assert_eq!(c.toward(1, dest(80).daddr, 80), 10);
        // The kernel knows of 8 (2 were reused or expired), taken at 2 s.
        let dump: Vec<Tuple> = (0..8).map(|i| (dest(80), 40000 + i)).collect();
        c.reconcile(&dump, 2 * S);
        assert_eq!(c.toward(1, dest(80).daddr, 80), 8);
        // An event older than the dump arriving late is already counted.
        c.entered((dest(80), 40008), None, 2 * S - 1);
        assert_eq!(c.toward(1, dest(80).daddr, 80), 8);
        c.entered((dest(80), 40009), None, 2 * S + 1);
        assert_eq!(c.toward(1, dest(80).daddr, 80), 9);
        assert_eq!(c.top(5), vec![(dest(80), 9)]);
        // Attribution follows the kernel: 8 of the closer's sockets remain.
        assert_eq!(c.by_process(), vec![(task(7, "cli"), 8)]);
    }

    #[test]
    fn server_side_time_wait_spreads_over_destinations() {
        // The server closed first: its TIME_WAIT sockets each face a
        // different client port, so no destination is under pressure.
        let p = policy(200, 0);
        let mut c = TimeWaitCounter::new(0.5);
        for i in 0..150u16 {
            let d = dest(40000 + i);
            c.entered((d.clone(), 9501), Some(task(9, "srv")), i as u64);
            assert_eq!(c.evaluate(&d, i as u64, &p), None);
        }
        assert_eq!(c.by_process(), vec![(task(9, "srv"), 150)]);
        // A later process given pid 9 is counted apart.
        let again = started(9, "srv", 700);
        c.entered((dest(1), 9501), Some(again.clone()), 200);
        assert_eq!(c.by_process(), vec![(task(9, "srv"), 150), (again, 1)]);
    }

    #[test]
    fn rate_window_forgets_old_entries_in_constant_space() {
        let mut r = RateWindow::default();
        for i in 0..1_000_000u64 {
            r.add(i * 1000); // 1 ms of 1e6 per second
        }
        assert!((r.per_s(S) - 1e6).abs() < 1.0, "{}", r.per_s(S));
        // 10 s later nothing is in the window.
        assert_eq!(r.in_window(11 * S), 0);
        r.add(11 * S);
        assert_eq!(r.per_s(11 * S), 1.0, "a new run starts its own window");
        for i in 0..50u64 {
            r.add(20 * S + i * S / 10); // 10/s for 5 s
        }
        assert!((r.per_s(25 * S) - 10.0).abs() < 1.0, "{}", r.per_s(25 * S));
    }

    #[test]
    fn tw_reuse_relieves_loopback_only_when_set() {
        let mut c = TimeWaitCounter::new(0.5);
        let lo = Dest {
            daddr: "127.0.0.1".parse().unwrap(),
            ..dest(80)
        };
        for i in 0..150u64 {
            c.entered((lo.clone(), 40000 + i as u16), None, i * S / 10); // 10/s over 15 s
        }
        // tcp_tw_reuse=2 and loopback: only ~1 s of entries blocks ports.
        assert_eq!(c.evaluate(&lo, 15 * S, &policy(200, 2)), None);
        let r = c
            .evaluate(&lo, 15 * S, &policy(200, 0))
            .expect("pressure without reuse");
        assert_eq!(r.level, Level::Warn);
        assert!(!r.tw_reuse);
    }
}
