//! Run totals: what was seen, what was lost, which transitions happened.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::model::{MapUse, Task, TcpState};
use crate::output::records::{
    HostScans, LeakStats, ServerTimeWait, SummaryRecord, TimeWaitDest, TimeWaitProcess,
    TimeWaitSummary,
};

#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    /// Sockets seen and not yet closed when tracing stopped.
    pub sockets_open: usize,
    /// Sockets the owner table had to forget because it was full.
    pub owner_table_evicted: u64,
    /// Closes reported (`close` records).
    pub closes: u64,
    /// CLOSE_WAIT sockets the leak detector dropped because it was full.
    pub close_wait_untracked: u64,
    /// The busiest TIME_WAIT destinations at exit, with their share of the
    /// ephemeral ports when known.
    pub time_wait_top: Vec<(crate::track::timewait::Dest, u32, Option<f64>)>,
    pub time_wait_by_process: Vec<(Task, u32)>,
    /// Server-side TIME_WAIT at exit, per namespace and service port.
    pub time_wait_server_side: Vec<ServerTimeWait>,
    /// (syscall, errno) -> failures, suppressed ones included.
    pub errors: BTreeMap<(&'static str, &'static str), u64>,
    pub listen_overflows: u64,
    /// connect/bind failures seen without their address (see
    /// `LOST_CALL_ARGS`), so not reported.
    pub errors_unattributed: u64,
    /// Ticks that asked the host worker nothing because the previous
    /// tick's reads were still under way (a slow system, not lost events).
    pub host_ticks_skipped: u64,
    /// Ticks answered, their reads' total and longest time (ms), and the
    /// most namespaces one tick read.
    host_ticks: u64,
    host_ms_total: f64,
    host_ms_max: f64,
    host_namespaces: u64,
    /// Kernel map occupancy at exit, by map name.
    pub kernel_maps: BTreeMap<&'static str, MapUse>,
    transitions: BTreeMap<(TcpState, TcpState), u64>,
    /// By process: (pid, start), as a reused pid is another process.
    leaks: BTreeMap<(u32, Option<u64>), LeakStats>,
}

impl Summary {
    /// The kernel's transition counts (`old`, `new`, count), which cover
    /// transitions the default mode never sends. Unknown states are skipped.
    pub fn set_transitions(&mut self, counts: impl IntoIterator<Item = (u32, u32, u64)>) {
        self.transitions = counts
            .into_iter()
            .filter(|&(_, _, n)| n > 0)
            .filter_map(|(o, n, c)| {
                Some((
                    (TcpState::try_from(o).ok()?, TcpState::try_from(n).ok()?),
                    c,
                ))
            })
            .collect();
    }

    /// A leak report blaming `who`; returns its running count of leaked sockets.
    pub fn leak_reported(&mut self, who: &Task, first: bool, age_ns: u64) -> u64 {
        let s = self
            .leaks
            .entry((who.pid, who.start))
            .or_insert_with(|| LeakStats {
                pid: who.pid,
                pid_start: who.start,
                comm: who.comm.to_string(),
                ..Default::default()
            });
        if first {
            s.leaks += 1;
        }
        s.oldest_ms = s.oldest_ms.max(crate::output::records::ns_to_ms(age_ns));
        s.leaks
    }

    /// Leaks still open per process, (pid, start), at exit.
    pub fn set_open_leaks(&mut self, open: &HashMap<(u32, Option<u64>), usize>) {
        for (key, s) in self.leaks.iter_mut() {
            s.open = open.get(key).copied().unwrap_or(0) as u64;
        }
    }

    fn leaks_by_count(&self) -> Vec<LeakStats> {
        let mut v: Vec<LeakStats> = self.leaks.values().cloned().collect();
        v.sort_by(LeakStats::by_leaks);
        v
    }

    /// One tick's reads took `ms`, over `namespaces` namespaces (if known).
    pub fn host_scan(&mut self, ms: f64, namespaces: Option<usize>) {
        self.host_ticks += 1;
        self.host_ms_total += ms;
        self.host_ms_max = self.host_ms_max.max(ms);
        if let Some(n) = namespaces {
            self.host_namespaces = self.host_namespaces.max(n as u64);
        }
    }

    fn host_scans(&self) -> HostScans {
        let round = |v: f64| (v * 100.0).round() / 100.0;
        HostScans {
            ticks: self.host_ticks,
            skipped: self.host_ticks_skipped,
            mean_ms: round(self.host_ms_total / self.host_ticks.max(1) as f64),
            max_ms: round(self.host_ms_max),
            namespaces: self.host_namespaces,
        }
    }

    pub fn to_record(&self, duration_s: f64) -> SummaryRecord {
        SummaryRecord {
            duration_s: (duration_s * 1000.0).round() / 1000.0,
            events: self.events,
            lost: self.lost,
            undecodable: self.undecodable,
            sockets_open: self.sockets_open,
            owner_table_evicted: self.owner_table_evicted,
            closes: self.closes,
            close_wait_untracked: self.close_wait_untracked,
            time_wait: TimeWaitSummary {
                top: self
                    .time_wait_top
                    .iter()
                    .map(|(d, n, ratio)| TimeWaitDest {
                        saddr: d.saddr,
                        daddr: d.daddr,
                        dport: d.dport,
                        time_wait: *n,
                        ratio: *ratio,
                        netns: d.netns,
                    })
                    .collect(),
                by_process: self
                    .time_wait_by_process
                    .iter()
                    .map(|(t, n)| TimeWaitProcess {
                        pid: t.pid,
                        pid_start: t.start,
                        comm: t.comm.to_string(),
                        time_wait: *n,
                    })
                    .collect(),
                server_side: self.time_wait_server_side.clone(),
            },
            errors: self
                .errors
                .iter()
                .fold(BTreeMap::new(), |mut m, ((call, errno), n)| {
                    m.entry(Cow::Borrowed(*call))
                        .or_insert_with(BTreeMap::new)
                        .insert(Cow::Borrowed(*errno), *n);
                    m
                }),
            errors_unattributed: self.errors_unattributed,
            listen_overflows: self.listen_overflows,
            leaks: self.leaks_by_count(),
            transitions: self
                .transitions
                .iter()
                .map(|((o, n), c)| (format!("{}->{}", o.name(), n.name()), *c))
                .collect(),
            kernel_maps: self
                .kernel_maps
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), *v))
                .collect(),
            host_scans: self.host_scans(),
        }
    }

    /// The human summary closetrace prints to stderr on exit.
    pub fn to_text(&self, duration_s: f64) -> String {
        let mut s = format!(
            "closetrace: {} events in {:.1} s, {} lost, {} undecodable\n",
            self.events, duration_s, self.lost, self.undecodable
        );
        if self.host_ticks > 0 {
            let h = self.host_scans();
            let _ = writeln!(
                s,
                "  host reads: {} ticks, {:.1} ms mean, {:.1} ms max, up to {} network namespaces",
                h.ticks, h.mean_ms, h.max_ms, h.namespaces
            );
        }
        if self.host_ticks_skipped > 0 {
            let _ = writeln!(
                s,
                "  {} ticks asked the host nothing: its previous scan was still running \
                 (findings came later; no event was lost to it)",
                self.host_ticks_skipped
            );
        }
        if !self.time_wait_top.is_empty() {
            s += "  TIME_WAIT top destinations:\n";
            for (d, n, _) in &self.time_wait_top {
                let _ = writeln!(
                    s,
                    "    {} -> {} {n}",
                    d.saddr,
                    crate::output::text::endpoint(d.daddr, d.dport)
                );
            }
        }
        if !self.time_wait_server_side.is_empty() {
            s += "  TIME_WAIT on service ports (the server closed first):\n";
            for t in &self.time_wait_server_side {
                let _ = writeln!(s, "    port {} {} (netns {})", t.port, t.time_wait, t.netns);
            }
        }
        if !self.time_wait_by_process.is_empty() {
            s += "  TIME_WAIT by closing process:\n";
            for (t, n) in &self.time_wait_by_process {
                let _ = writeln!(
                    s,
                    "    {}({}): {n}",
                    crate::output::text::printable(&t.comm),
                    t.pid
                );
            }
        }
        for ((call, errno), n) in &self.errors {
            let _ = writeln!(s, "  {call}() {errno}: {n}");
        }
        if self.errors_unattributed > 0 {
            let _ = writeln!(
                s,
                "  connect()/bind() failures without their address: {}",
                self.errors_unattributed
            );
        }
        if self.listen_overflows > 0 {
            let _ = writeln!(s, "  listen queue overflows: {}", self.listen_overflows);
        }
        if !self.leaks.is_empty() {
            s += "  CLOSE_WAIT leaks by process:\n";
            for l in self.leaks_by_count() {
                // A pid that two processes had in turn: say which is which.
                let reused = self.leaks.keys().filter(|k| k.0 == l.pid).count() > 1;
                let start = match l.pid_start {
                    Some(t) if reused => format!(", started at tick {t}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "    {}({}{start}): {} leaked, {} still open, oldest {:.1} s",
                    crate::output::text::printable(&l.comm),
                    l.pid,
                    l.leaks,
                    l.open,
                    l.oldest_ms / 1000.0
                );
            }
        }
        let mut rows: Vec<_> = self.transitions.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for ((o, n), c) in rows {
            let t = format!("{o} -> {n}");
            let _ = writeln!(s, "  {t:<30} {c:>10}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::started;

    #[test]
    fn counts_transitions() {
        let mut s = Summary::default();
        // ESTABLISHED=1, CLOSE_WAIT=8, LAST_ACK=9; 99 is no state.
        s.set_transitions([(1, 8, 2), (8, 9, 1), (1, 2, 0), (99, 1, 5)]);
        s.events = 3;
        s.lost = 3;
        let r = s.to_record(1.23456);
        assert_eq!(r.events, 3);
        assert_eq!(r.lost, 3);
        assert_eq!(r.duration_s, 1.235);
        assert_eq!(r.transitions["ESTABLISHED->CLOSE_WAIT"], 2);
        assert_eq!(r.transitions["CLOSE_WAIT->LAST_ACK"], 1);
        assert_eq!(
            r.transitions.len(),
            2,
            "zero counts and unknown states are left out"
        );
        let php = started(7, "php", 500);
        assert_eq!(s.leak_reported(&php, true, 2_000_000_000), 1);
        assert_eq!(s.leak_reported(&php, false, 4_000_000_000), 1);
        assert_eq!(s.leak_reported(&php, true, 1_000_000_000), 2);
        s.set_open_leaks(&HashMap::from([((7, Some(500)), 1)]));
        let r = s.to_record(1.0);
        assert_eq!(r.leaks.len(), 1);
        assert_eq!(
            (r.leaks[0].leaks, r.leaks[0].open, r.leaks[0].oldest_ms),
            (2, 1, 4000.0)
        );
        let text = s.to_text(2.0);
        assert!(
            text.contains("    php(7): 2 leaked, 1 still open, oldest 4.0 s"),
            "{text}"
        );
        assert!(text.starts_with("closetrace: 3 events in 2.0 s, 3 lost, 0 undecodable\n"));
        let rows: Vec<&str> = text.lines().filter(|l| l.contains(" -> ")).collect();
        assert!(
            rows[0].contains("ESTABLISHED -> CLOSE_WAIT") && rows[0].ends_with(" 2"),
            "{text}"
        );
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let mut s = Summary::default();
        let first = started(7, "srv", 500);
        let second = started(7, "srv", 9000);
        s.leak_reported(&first, true, 2_000_000_000);
        s.leak_reported(&first, true, 3_000_000_000);
        assert_eq!(
            s.leak_reported(&second, true, 1_000_000_000),
            1,
            "the newcomer starts its own count"
        );
        s.set_open_leaks(&HashMap::from([((7, Some(9000)), 1)]));
        let r = s.to_record(1.0);
        let rows: Vec<_> = r
            .leaks
            .iter()
            .map(|l| (l.pid, l.pid_start, l.leaks, l.open))
            .collect();
        assert_eq!(rows, [(7, Some(500), 2, 0), (7, Some(9000), 1, 1)]);
        let text = s.to_text(1.0);
        assert!(
            text.contains("srv(7, started at tick 500): 2 leaked, 0 still open")
                && text.contains("srv(7, started at tick 9000): 1 leaked, 1 still open"),
            "{text}"
        );
    }
}
