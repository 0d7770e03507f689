//! From /proc samples of a leak's holders to a diagnosis: threads grouped
//! by what they are doing, the likeliest culprits first; how long each has
//! been in its call; and the process's fd budget.
//!
//! Pure: fed samples and the current time (CLOCK_MONOTONIC ns), it keeps
//! per thread the call it was last seen in and since when.
//!
//! The ranking rule (`Suspicion`'s order): a thread blocked on another
//! socket or a pipe (waiting on someone), then one in uninterruptible
//! sleep (D), then one burning CPU, then futex waits (a lock), then
//! sleeps, then anything else, and last the idle ones: epoll, poll,
//! select, accept and io_uring waits, which every server has.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::threads::{
    CallKind, FdBudget, FdTarget, ProcessSample, SchedState, ThreadSample, syscall, syscall_name,
};

/// Why a group of threads may be what keeps the socket open, most likely
/// first (the derived order is the ranking).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suspicion {
    /// Blocked reading or writing another TCP socket, a pipe or a Unix
    /// socket: waiting on someone else.
    WaitsOnPeer,
    /// Uninterruptible sleep: disk, NFS, a kernel lock.
    DiskWait,
    /// On CPU, its CPU time growing: a busy loop.
    Busy,
    /// Waiting for a lock (futex, semaphore, flock).
    Lock,
    Sleep,
    Other,
    /// Waiting for new work: epoll, poll, select, accept, io_uring.
    Idle,
}

/// One fd argument, resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FdArg {
    pub fd: u32,
    #[serde(flatten)]
    pub target: FdTarget,
}

/// Threads doing the same thing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadGroup {
    pub suspicion: Suspicion,
    pub state: SchedState,
    /// The system call they are in; null outside one.
    pub syscall: Option<String>,
    #[serde(default)]
    pub fds: Vec<FdArg>,
    pub wchan: Option<String>,
    /// The first thread's kernel stack, innermost first.
    #[serde(default)]
    pub stack: Vec<String>,
    pub threads: u32,
    /// The first few of them, longest in the call first.
    pub tids: Vec<u32>,
    /// The first thread's name.
    pub comm: String,
    /// How long the first thread has been in this call: since it last ran
    /// (the scheduler's clock), or since closetrace first saw it in it,
    /// whichever is longer. Null for threads on CPU.
    pub in_call_s: Option<f64>,
    /// CPU used per second while sampled (1.0: a whole CPU), for threads
    /// on CPU.
    pub cpu_share: Option<f64>,
}

/// What one holding process is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessDiagnosis {
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub comm: String,
    pub threads: u32,
    /// Groups, likeliest culprit first (at most `MAX_GROUPS`).
    pub groups: Vec<ThreadGroup>,
    /// Threads in groups beyond those shown, or beyond the read cap.
    #[serde(default)]
    pub threads_not_shown: u32,
    pub fd_budget: Option<FdBudget>,
    /// The process exited, or parts were unreadable, while it was read.
    #[serde(default)]
    pub partial: bool,
}

pub const MAX_GROUPS: usize = 8;
const MAX_TIDS: usize = 8;
/// A thread on CPU for at least this share of the pause is busy.
const BUSY_SHARE: f64 = 0.3;
/// Threads remembered at most; past it the memory restarts.
const WATCH_CAPACITY: usize = 100_000;

/// Per thread, the call it was last seen in and since when.
#[derive(Debug, Default)]
pub struct ThreadWatch {
    seen: HashMap<(u32, u32), (CallKey, u64)>,
}

/// What a thread is doing, for "the same call as before".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CallKey {
    nr: Option<u32>,
    fds: Vec<(u32, FdTarget)>,
}

impl ThreadWatch {
    /// The diagnosis of one sample taken at `now_ns`; `budget` is the
    /// process's fd budget (see `fd_budget`).
    pub fn diagnose(
        &mut self,
        s: &ProcessSample,
        budget: Option<FdBudget>,
        now_ns: u64,
    ) -> ProcessDiagnosis {
        self.seen
            .retain(|(pid, tid), _| *pid != s.pid || s.threads.iter().any(|t| t.tid == *tid));
        if self.seen.len() > WATCH_CAPACITY {
            self.seen.clear();
        }
        let mut groups: HashMap<GroupKey, Vec<Member>> = HashMap::new();
        for t in &s.threads {
            let key = CallKey {
                nr: t.call.nr(),
                fds: t.fds.clone(),
            };
            let first = match self.seen.get(&(s.pid, t.tid)) {
                Some((k, since)) if *k == key => *since,
                _ => now_ns,
            };
            self.seen.insert((s.pid, t.tid), (key, first));
            let seen_s = now_ns.saturating_sub(first) as f64 / 1e9;
            let in_call = (t.state != SchedState::Running)
                .then(|| seen_s.max(t.off_cpu_ms.unwrap_or(0.0) / 1000.0));
            let share = cpu_share(t, s);
            groups
                .entry(GroupKey::of(t, share))
                .or_default()
                .push((t, in_call, share));
        }
        let mut shown: Vec<ThreadGroup> = groups.into_iter().map(|(k, v)| k.group(v)).collect();
        shown.sort_by(|a, b| {
            (a.suspicion, std::cmp::Reverse(a.threads))
                .cmp(&(b.suspicion, std::cmp::Reverse(b.threads)))
                .then(
                    b.in_call_s
                        .unwrap_or(0.0)
                        .total_cmp(&a.in_call_s.unwrap_or(0.0)),
                )
        });
        let hidden: u32 = shown.iter().skip(MAX_GROUPS).map(|g| g.threads).sum();
        shown.truncate(MAX_GROUPS);
        ProcessDiagnosis {
            pid: s.pid,
            pid_start: s.start,
            comm: s.comm.clone(),
            threads: s.threads_total,
            groups: shown,
            threads_not_shown: hidden + s.threads_total.saturating_sub(s.threads.len() as u32),
            fd_budget: budget,
            partial: s.partial,
        }
    }

    /// Forget a process's threads (it exited).
    pub fn forget(&mut self, pid: u32) {
        self.seen.retain(|(p, _), _| *p != pid);
    }
}

/// CPU per second over the host's pause, for a thread read twice.
fn cpu_share(t: &ThreadSample, s: &ProcessSample) -> Option<f64> {
    let later = t.cpu_ticks_later?;
    if s.pause_ms <= 0.0 {
        return None;
    }
    let used_s = later.saturating_sub(t.cpu_ticks) as f64 / s.ticks_per_s as f64;
    Some((used_s / (s.pause_ms / 1000.0)).min(1.0))
}

/// A thread in a group: its sample, time in its call, CPU share.
type Member<'a> = (&'a ThreadSample, Option<f64>, Option<f64>);

/// What makes threads one group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    suspicion: Suspicion,
    state: SchedState,
    nr: Option<u32>,
    fds: Vec<(u32, FdTarget)>,
    wchan: Option<String>,
}

impl GroupKey {
    fn of(t: &ThreadSample, share: Option<f64>) -> GroupKey {
        let nr = t.call.nr();
        GroupKey {
            suspicion: suspicion(t, nr, share),
            state: t.state,
            nr,
            fds: t.fds.clone(),
            wchan: t.wchan.clone(),
        }
    }

    fn group(self, mut members: Vec<Member>) -> ThreadGroup {
        members.sort_by(|a, b| b.1.unwrap_or(0.0).total_cmp(&a.1.unwrap_or(0.0)));
        let (first, in_call_s, cpu_share) = members[0];
        ThreadGroup {
            suspicion: self.suspicion,
            state: self.state,
            syscall: self.nr.map(syscall_name),
            fds: self
                .fds
                .into_iter()
                .map(|(fd, target)| FdArg { fd, target })
                .collect(),
            wchan: self.wchan,
            stack: first.stack.clone(),
            threads: members.len() as u32,
            tids: members.iter().take(MAX_TIDS).map(|m| m.0.tid).collect(),
            comm: first.comm.clone(),
            in_call_s,
            cpu_share,
        }
    }
}

fn suspicion(t: &ThreadSample, nr: Option<u32>, share: Option<f64>) -> Suspicion {
    if t.state == SchedState::DiskSleep {
        return Suspicion::DiskWait;
    }
    if share.is_some_and(|s| s >= BUSY_SHARE) {
        return Suspicion::Busy;
    }
    let Some((_, kind, _)) = nr.and_then(syscall) else {
        return Suspicion::Other;
    };
    match kind {
        CallKind::Futex => Suspicion::Lock,
        CallKind::Sleep => Suspicion::Sleep,
        CallKind::Idle => Suspicion::Idle,
        CallKind::Other => Suspicion::Other,
        CallKind::Io => {
            let on_peer = t.fds.iter().any(|(_, f)| {
                matches!(f, FdTarget::Tcp { .. } | FdTarget::Pipe | FdTarget::Socket)
            });
            let idle = t.fds.iter().any(|(_, f)| {
                matches!(
                    f,
                    FdTarget::Listener { .. } | FdTarget::Epoll | FdTarget::Eventfd
                )
            });
            match (on_peer, idle) {
                (true, _) => Suspicion::WaitsOnPeer,
                (false, true) => Suspicion::Idle,
                _ => Suspicion::Other,
            }
        }
    }
}

/// A process's fd budget: `fds` open of `limit`, and its open leaks'
/// entry times (`since_ns`, CLOCK_MONOTONIC) for the rate.
pub fn fd_budget(fds: u32, limit: Option<u64>, since_ns: &[u64], now_ns: u64) -> FdBudget {
    let rate_per_s = leak_rate(since_ns, now_ns);
    let eta_s = match limit {
        Some(l) if fds as u64 >= l => Some(0.0),
        Some(l) if rate_per_s > 0.0 => Some((l - fds as u64) as f64 / rate_per_s),
        _ => None,
    };
    FdBudget {
        fds,
        limit,
        leak_rate_per_min: rate_per_s * 60.0,
        eta_s,
    }
}

/// Leaks per second. Three or more spread over at least `STEADY_SPAN_S`:
/// their pace. Fewer, or a burst: their count over their age, at least a
/// minute (one leak a second old is not sixty a minute).
fn leak_rate(since_ns: &[u64], now_ns: u64) -> f64 {
    let (Some(&first), Some(&last)) = (since_ns.iter().min(), since_ns.iter().max()) else {
        return 0.0;
    };
    let span_s = last.saturating_sub(first) as f64 / 1e9;
    if since_ns.len() >= 3 && span_s >= STEADY_SPAN_S {
        return (since_ns.len() - 1) as f64 / span_s;
    }
    let age_s = now_ns.saturating_sub(first) as f64 / 1e9;
    since_ns.len() as f64 / age_s.max(60.0)
}

const STEADY_SPAN_S: f64 = 2.0;

/// When to say a process is running out of fds: once when the ETA drops
/// under an hour, and once when it hits the limit (EMFILE).
#[derive(Debug, Default)]
pub struct ExhaustionWatch {
    said: HashMap<(u32, Option<u64>), (bool, bool)>,
}

/// What to say about a process's fd budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhaustion {
    /// Under an hour to EMFILE at its leak rate.
    Approaching,
    /// It hit the limit: a call failed with EMFILE, or its fds reached it.
    Exhausted,
}

/// How a process was seen to run out of fds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExhaustedBy {
    /// Its open fds reached RLIMIT_NOFILE when read.
    FdsAtLimit,
    /// The kernel saw its accept() fail with EMFILE (its own limit).
    Emfile,
    /// ... with ENFILE: the system's file table is full.
    Enfile,
}

/// An ETA under this is worth a record.
pub const EXHAUSTION_HORIZON_S: f64 = 3600.0;
const PROCESSES_WATCHED: usize = 4096;

impl ExhaustionWatch {
    /// A fresh budget for the process (`pid`, `start`).
    pub fn on_budget(&mut self, who: (u32, Option<u64>), b: &FdBudget) -> Option<Exhaustion> {
        if b.limit.is_some_and(|l| b.fds as u64 >= l) {
            return self.on_emfile(who).then_some(Exhaustion::Exhausted);
        }
        let soon = b.eta_s.is_some_and(|e| e < EXHAUSTION_HORIZON_S);
        let entry = self.entry(who);
        (soon && !std::mem::replace(&mut entry.0, true)).then_some(Exhaustion::Approaching)
    }

    /// The process hit EMFILE: true the first time.
    pub fn on_emfile(&mut self, who: (u32, Option<u64>)) -> bool {
        let entry = self.entry(who);
        entry.0 = true;
        !std::mem::replace(&mut entry.1, true)
    }

    fn entry(&mut self, who: (u32, Option<u64>)) -> &mut (bool, bool) {
        if self.said.len() >= PROCESSES_WATCHED && !self.said.contains_key(&who) {
            self.said.clear();
        }
        self.said.entry(who).or_default()
    }
}

#[cfg(test)]
mod tests;
