//! The coordinator's part in leak diagnoses: what to ask the host worker
//! for the leaks due (their sockets, owners and holders; a process at most
//! once per `REFRESH_NS`), turning its samples into diagnoses, and the
//! `fd_exhaustion` records they lead to.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;

use super::Monitor;
use crate::app::worker::{DiagnoseAsk, DiagnoseFound, MAX_SOCKETS_DIAGNOSED};
use crate::host::sockets::KernelView;
use crate::model::{Holder, OutOfFds, Task};
use crate::output::diagnosis::{Diagnosis, Peer, PeerHow};
use crate::output::records::FdExhaustion;
use crate::output::records::{Record, Ts};
use crate::output::sink::Sink;
use crate::output::verdict::exhaustion_text;
use crate::track::diagnosis::{
    ExhaustedBy, Exhaustion, ExhaustionWatch, ProcessDiagnosis, ThreadWatch, fd_budget,
};
use crate::track::leaks::Tracked;

/// A process is sampled again at most this often; reports in between
/// show its latest diagnosis.
const REFRESH_NS: u64 = 5_000_000_000;
/// A diagnosis not refreshed for this long is dropped (the process is
/// gone or leaks no more).
const FORGET_NS: u64 = 120_000_000_000;

/// Diagnoses so far, by pid, and what was said of fd budgets.
#[derive(Debug, Default)]
pub(super) struct Diagnoses {
    watch: ThreadWatch,
    exhaustion: ExhaustionWatch,
    /// The latest diagnosis of each process, and when it was taken.
    latest: HashMap<u32, (u64, ProcessDiagnosis)>,
}

impl Diagnoses {
    /// The latest diagnosis of process (`pid`, `start`).
    pub(super) fn of(&self, pid: u32, start: Option<u64>) -> Option<&ProcessDiagnosis> {
        self.latest
            .get(&pid)
            .map(|(_, d)| d)
            .filter(|d| start.is_none() || d.pid_start.is_none() || d.pid_start == start)
    }
}

impl Monitor {
    /// What to read for the leaks due now (`self.due`).
    pub(super) fn diagnose_ask(&mut self, now_ns: u64) -> Option<DiagnoseAsk> {
        let due = &self.due;
        if due.is_empty() {
            return None;
        }
        let d = &mut self.diagnoses;
        d.latest
            .retain(|_, (at, _)| now_ns.saturating_sub(*at) < FORGET_NS);
        let fresh = d
            .latest
            .iter()
            .filter(|(_, (at, _))| now_ns.saturating_sub(*at) < REFRESH_NS)
            .map(|(pid, _)| *pid)
            .collect();
        let mut owners: Vec<u32> = Vec::new();
        for o in due.iter().filter_map(|d| d.tracked.owner.as_ref()) {
            if !owners.contains(&o.pid) {
                owners.push(o.pid);
            }
        }
        Some(DiagnoseAsk {
            sockets: (due.iter().take(MAX_SOCKETS_DIAGNOSED))
                .map(|d| d.tracked.sock.clone())
                .collect(),
            owners,
            fresh,
            by_tuple: !self.ids_are_cookies,
        })
    }

    /// Take in the host's samples: a diagnosis per process, with its fd
    /// budget, and an `fd_exhaustion` record when that budget says so.
    pub(super) fn learn_diagnoses(
        &mut self,
        found: &DiagnoseFound,
        now_ns: u64,
        sink: &mut Sink,
    ) -> io::Result<()> {
        for s in &found.processes {
            let since = self.leak_times(s.pid, s.start);
            let budget = s.fds.map(|fds| fd_budget(fds, s.fd_limit, &since, now_ns));
            let diag = self.diagnoses.watch.diagnose(s, budget.clone(), now_ns);
            if diag.threads == 0 {
                self.diagnoses.watch.forget(s.pid);
            }
            let said = budget
                .as_ref()
                .and_then(|b| self.diagnoses.exhaustion.on_budget((s.pid, s.start), b));
            if let (Some(state), Some(budget)) = (said, budget) {
                let rec = FdExhaustion {
                    ts: Ts::at(&self.clock, now_ns),
                    pid: s.pid,
                    pid_start: s.start,
                    comm: Cow::Borrowed(&diag.comm),
                    state,
                    cause: (state == Exhaustion::Exhausted).then_some(ExhaustedBy::FdsAtLimit),
                    budget,
                    open_leaks: since.len() as u32,
                };
                self.write_exhaustion(rec, sink)?;
            }
            self.diagnoses.latest.insert(s.pid, (now_ns, diag));
        }
        Ok(())
    }

    /// A process the kernel saw fail with EMFILE or ENFILE: said once, if
    /// it is one that leaks.
    pub(super) fn out_of_fds(&mut self, e: &OutOfFds, sink: &mut Sink) -> io::Result<()> {
        let who = (e.task.pid, e.task.start);
        let since = self.leak_times(who.0, who.1);
        let known = self.diagnoses.of(who.0, who.1).cloned();
        if (since.is_empty() && known.is_none()) || !self.diagnoses.exhaustion.on_emfile(who) {
            return Ok(());
        }
        let mut budget = known.and_then(|d| d.fd_budget).unwrap_or_default();
        let cause = if e.system_wide {
            ExhaustedBy::Enfile
        } else {
            // EMFILE: the process is at its limit, whatever was last read.
            if let Some(l) = budget.limit {
                budget.fds = budget.fds.max(u32::try_from(l).unwrap_or(u32::MAX));
            }
            budget.eta_s = Some(0.0);
            ExhaustedBy::Emfile
        };
        let rec = FdExhaustion {
            ts: Ts::at(&self.clock, e.ts_ns),
            pid: who.0,
            pid_start: who.1,
            comm: Cow::Borrowed(&e.task.comm),
            state: Exhaustion::Exhausted,
            cause: Some(cause),
            budget,
            open_leaks: since.len() as u32,
        };
        self.write_exhaustion(rec, sink)
    }

    fn write_exhaustion(&self, rec: FdExhaustion<'_>, sink: &mut Sink) -> io::Result<()> {
        if !self.wants(Some((rec.pid, rec.pid_start))) {
            return Ok(());
        }
        let text = exhaustion_text(&rec);
        sink.record(Record::FdExhaustion(rec), || text)
    }

    /// When each open leak of the process entered CLOSE_WAIT.
    fn leak_times(&self, pid: u32, start: Option<u64>) -> Vec<u64> {
        self.leaks
            .tracked()
            .filter(|t| t.owner.as_ref().is_some_and(|o| o.is(pid, start)))
            .map(|t| t.since_ns)
            .collect()
    }

    /// One leak's diagnosis: its holders (the blamed one first), its
    /// socket's tcp_info, and its peer.
    pub(super) fn diagnosis_of(
        &self,
        t: &Tracked,
        owner: Option<&Task>,
        holders: &[Holder],
        found: Option<&DiagnoseFound>,
        view: Option<&KernelView>,
    ) -> Option<Diagnosis> {
        let mut pids: Vec<(u32, Option<u64>)> = owner.iter().map(|o| (o.pid, o.start)).collect();
        let mut seen: HashSet<u32> = pids.iter().map(|p| p.0).collect();
        pids.extend(
            holders
                .iter()
                .filter(|h| seen.insert(h.pid))
                .map(|h| (h.pid, h.start)),
        );
        let processes: Vec<ProcessDiagnosis> = pids
            .iter()
            .filter_map(|&(pid, start)| self.diagnoses.of(pid, start))
            // Gone before it was read: nothing to show.
            .filter(|d| d.threads > 0)
            .cloned()
            .collect();
        let (info, peer_sock) = match found.and_then(|f| f.sockets.get(&t.sock.id)) {
            Some((info, peer)) => (*info, peer.as_ref()),
            None => (None, None),
        };
        let s = &t.sock;
        let held_peer = peer_sock
            .filter(|p| !p.is_timewait())
            .and_then(|p| view.and_then(|v| v.holders.get(&p.inode)))
            .and_then(|h| h.first())
            .map(|h| peer(&h.task(), PeerHow::Holds));
        let peer = held_peer.or_else(|| {
            let closer = (self.ports).closer_of(s.netns, (s.daddr, s.dport), (s.saddr, s.sport))?;
            Some(peer(closer, PeerHow::Closed))
        });
        let d = Diagnosis {
            processes,
            socket: info,
            peer,
        };
        (d != Diagnosis::default()).then_some(d)
    }
}

fn peer(t: &Task, how: PeerHow) -> Peer {
    Peer {
        pid: t.pid,
        pid_start: t.start,
        comm: t.comm.to_string(),
        how,
    }
}
