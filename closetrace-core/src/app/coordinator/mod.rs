//! The coordinator: runs each decoded event through the state machines
//! (owner table, close inference, leak detector, port pressure) and writes
//! records to the sink. It does no blocking I/O: what it needs from the
//! running system it asks as `Job`s, which the host worker answers
//! (`on_answer`) while events keep flowing.
mod diagnosis;
mod leaks;
pub mod ports;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;

use crate::app::worker::{Answer, Job, TickAnswer, TickJob};
use crate::kernel::CloseWaitKernel;
use crate::model::clock::WallClock;
use crate::model::netns::NetnsReach;
use crate::model::ports::PortPolicy;
use crate::model::{Close, KernelEvent, TcpState};
use crate::output::records::{self, ClosedBy, SockFields, Ts};
use crate::output::sink::Sink;
use crate::output::summary::Summary;
use crate::track::FastHashMap;
use crate::track::closes::infer_close;
use crate::track::followed::{Followed, Process};
use crate::track::leaks::{Due, LeakDetector};
use crate::track::owners::OwnerTable;
use ports::PortPressure;

/// Sockets the userspace tables remember at most.
const TABLE_CAPACITY: usize = 65536;

/// What the monitor is asked to do, from the command line and the loader.
pub struct Settings {
    pub threshold_ns: u64,
    pub tw_warn: f64,
    /// `--pid`, `--pid-tree`: the processes displayed (the kernel already
    /// dropped most else), with their start times; empty for all.
    pub pids: Vec<Process>,
    /// No exact tcp_close hook: closes are inferred from transitions.
    pub infer_closes: bool,
    /// `--states`: write every state change and close.
    pub stream_all: bool,
    /// The namespaces whose sockets and sysctls the host worker reads.
    pub reach: NetnsReach,
    /// Each namespace's ephemeral ports known at start, by inode (an
    /// unknown one gets no ratios until a scan reads it).
    pub port_policies: HashMap<u32, PortPolicy>,
    /// The kernel names sockets by cookie, as sock_diag does; false: by a
    /// keyed hash, and sock_diag's sockets are matched by endpoints.
    pub ids_are_cookies: bool,
}

pub struct Monitor {
    table: OwnerTable,
    leaks: LeakDetector,
    pub summary: Summary,
    clock: WallClock,
    /// `--pid`, `--pid-tree`: the processes displayed; None for all. It
    /// follows the kernel's set, which may empty.
    followed: Option<Followed>,
    /// No exact tcp_close hook: closes are inferred from transitions.
    infer_closes: bool,
    stream_all: bool,
    reach: NetnsReach,
    /// Leaks that were displayed (so their resolution is displayed too),
    /// with the number each was given.
    shown: FastHashMap<u64, u64>,
    /// Leaks numbered so far.
    leaks_numbered: u64,
    diagnoses: diagnosis::Diagnoses,
    ports: PortPressure,
    /// sock_diag failed once already: do not repeat the warning.
    diag_warned: bool,
    /// Set in the default mode: CLOSE_WAIT sockets of this namespace are
    /// found by scanning (see `CloseWaitKernel`).
    scan: Option<Box<dyn CloseWaitKernel>>,
    /// A tick's job is with the host worker: the next tick asks nothing.
    tick_in_flight: bool,
    /// Leaks due at the tick in flight, reported when its answer arrives.
    due: Vec<Due>,
    /// Jobs for the host worker, taken by the consume loop.
    jobs: Vec<Job>,
    /// Jobs handed to the worker and not answered yet.
    outstanding: usize,
    /// See `Settings::ids_are_cookies`.
    ids_are_cookies: bool,
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
            followed: (!s.pids.is_empty()).then(|| Followed::new(s.pids)),
            infer_closes: s.infer_closes,
            stream_all: s.stream_all,
            reach: s.reach,
            shown: FastHashMap::default(),
            leaks_numbered: 0,
            diagnoses: diagnosis::Diagnoses::default(),
            ids_are_cookies: s.ids_are_cookies,
            ports: PortPressure::new(s.tw_warn, s.reach, s.port_policies),
            diag_warned: false,
            scan: None,
            tick_in_flight: false,
            due: Vec::new(),
            jobs: Vec::new(),
            outstanding: 0,
            metrics: None,
        }
    }

    /// Find CLOSE_WAIT sockets by scanning (every namespace `reach`
    /// covers) from now on.
    pub fn scan_close_wait_with(&mut self, kernel: Box<dyn CloseWaitKernel>) {
        self.scan = Some(kernel);
    }

    /// The namespaces whose sockets the scans list.
    pub fn reach(&self) -> NetnsReach {
        self.reach
    }

    pub fn table_mut(&mut self) -> &mut OwnerTable {
        &mut self.table
    }

    /// The jobs queued for the host worker since the last call.
    pub fn take_jobs(&mut self) -> Vec<Job> {
        let mut jobs = std::mem::take(&mut self.jobs);
        jobs.append(&mut self.ports.jobs);
        self.outstanding += jobs.len();
        jobs
    }

    /// Whether an answer is still to come for a job taken.
    pub fn awaits_answer(&self) -> bool {
        self.outstanding > 0
    }

    /// Whether records about this process are displayed.
    fn wants(&self, who: Option<(u32, Option<u64>)>) -> bool {
        match &self.followed {
            None => true,
            Some(f) => who.is_some_and(|(pid, start)| f.contains(pid, start)),
        }
    }

    pub fn on_event(&mut self, ev: KernelEvent, sink: &mut Sink) -> io::Result<()> {
        self.summary.events += 1;
        match ev {
            KernelEvent::State(mut ev) => {
                self.table.apply(&mut ev);
                let resolved = self.leaks.on_state(&ev);
                if ev.old == TcpState::CloseWait {
                    self.unwatch(ev.sock.id);
                }
                if self.stream_all && self.wants(ev.owner.as_ref().map(|o| (o.pid, o.start))) {
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
            KernelEvent::OutOfFds(e) => self.out_of_fds(&e, sink),
            KernelEvent::Accepted(a) => {
                self.table.accepted(&a);
                Ok(())
            }
        }
    }

    fn close(&mut self, c: &Close, sink: &mut Sink) -> io::Result<()> {
        if !self.stream_all || !self.wants(Some((c.closer.pid, c.closer.start))) {
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

    /// A tick: decide which leaks are due and ask the host worker for what
    /// the tick needs (one tick's job at a time; a tick that finds one still
    /// with the worker asks nothing, so a slow host slows findings, never
    /// event consumption).
    pub fn on_tick(&mut self, now_ns: u64) {
        if self.tick_in_flight {
            self.summary.host_ticks_skipped += 1;
            return;
        }
        self.due = self.leaks.due(now_ns);
        let diagnose = self.diagnose_ask(now_ns);
        let job = TickJob {
            now_ns,
            close_wait: self.scan.is_some(),
            holders: !self.due.is_empty(),
            ports: self.ports.wants_scan(now_ns),
            cgroups: self.due.iter().map(|d| d.tracked.sock.cgroup).collect(),
            namespaces: self.namespaces_needed(),
            diagnose,
        };
        self.tick_in_flight = true;
        self.leaks.mark();
        self.jobs.push(Job::Tick(job));
    }

    /// Every namespace, when there are many, is not listed each tick: only
    /// those with tracked leaks or TIME_WAIT being counted (the host adds
    /// the ones where the kernel saw a socket enter CLOSE_WAIT).
    fn namespaces_needed(&self) -> Option<HashSet<u32>> {
        if !matches!(self.reach, NetnsReach::All { .. }) {
            return None;
        }
        let leaks = self.leaks.tracked().map(|t| t.sock.netns);
        Some(leaks.chain(self.ports.namespaces_needed()).collect())
    }

    /// What the host worker found for a job.
    pub fn on_answer(&mut self, answer: Answer, sink: &mut Sink) -> io::Result<()> {
        self.outstanding = self.outstanding.saturating_sub(1);
        match answer {
            Answer::Tick(a) => self.on_tick_answer(*a, sink),
            Answer::BindHolders {
                error,
                suppressed,
                view,
            } => {
                let view = (*view)
                    .inspect_err(|e| log::warn!("cannot list sockets for bind() holders: {e}"))
                    .ok();
                self.ports
                    .on_bind_holders(&error, suppressed, view.as_ref(), sink, &self.clock)
            }
            Answer::ListenerHolders {
                overflowing,
                holders,
            } => self.ports.on_listener_holders(
                overflowing,
                &holders,
                crate::model::clock::monotonic_ns(),
                sink,
                &self.clock,
            ),
        }
    }

    /// In the order the tick always ran: followed processes, ports, the
    /// CLOSE_WAIT scan, the metrics, then the leaks that were due.
    fn on_tick_answer(&mut self, a: TickAnswer, sink: &mut Sink) -> io::Result<()> {
        self.tick_in_flight = false;
        let now_ns = a.job.now_ns;
        let namespaces = a.read.as_ref().map(HashSet::len);
        self.summary.host_scan(a.took_ms, namespaces);
        if let (Some(now), Some(f)) = (a.followed, self.followed.as_mut())
            && f.refresh(now)
        {
            log::info!(
                "every process followed has exited; leaks they left are still \
                 reported as they end, and a new process reusing a pid is not followed"
            );
        }
        if let Some(policies) = a.policies {
            self.ports.set_policies(policies);
        }
        if let (Some(tw), Some(listeners)) = (a.time_wait, a.listeners) {
            let dump = tw.map(|t| (t, a.read.clone()));
            self.ports
                .on_scan(now_ns, dump, listeners, sink, &self.clock)?;
        }
        if let Some(found) = a.close_wait {
            // The dump ran after `now_ns` and within the tick's time.
            let dumped_by_ns = now_ns + (a.took_ms * 1e6) as u64;
            let at = (now_ns, dumped_by_ns);
            self.scan_close_wait(at, found, a.read.as_ref(), sink)?;
        }
        if let Some(m) = &self.metrics {
            m.borrow_mut().update(&self.metrics_view(now_ns));
        }
        let view = a.holders.and_then(|v| {
            v.inspect_err(|e| {
                if !std::mem::replace(&mut self.diag_warned, true) {
                    log::warn!("cannot list sockets for leak holders: {e}");
                }
            })
            .ok()
        });
        if let Some(found) = &a.diagnosis {
            self.learn_diagnoses(found, now_ns, sink)?;
        }
        for d in std::mem::take(&mut self.due) {
            // Ended while the worker looked: its resolution was written.
            if self.leaks.is_tracked(d.tracked.sock.id) {
                let seen = (view.as_ref(), a.diagnosis.as_ref());
                self.report(d, seen, a.read.as_ref(), now_ns, sink)?;
            }
        }
        Ok(())
    }

    /// What the metrics gauges show: reported leaks still open, by the
    /// process blamed; the busiest TIME_WAIT destinations; error totals.
    pub fn metrics_view(&self, now_ns: u64) -> crate::output::metrics::View {
        let leaks = self.open_leaks(now_ns);
        let time_wait = self
            .ports
            .top(crate::output::metrics::MAX_DESTINATIONS)
            .into_iter()
            .map(|(d, n)| {
                let ratio = self.ports.ratio(d.netns, n);
                (d.netns, d.daddr.to_string(), d.dport, n, ratio)
            })
            .collect();
        let errors = self
            .ports
            .errors
            .iter()
            .map(|(&(call, errno), &n)| (call, errno, n))
            .collect();
        let fd_budgets = leaks
            .iter()
            .filter_map(|p| {
                let d = self.diagnoses.of(p.pid, p.pid_start)?;
                let b = d.fd_budget.clone()?;
                Some((p.pid, p.pid_start, p.comm.clone(), b))
            })
            .collect();
        crate::output::metrics::View {
            leaks,
            time_wait,
            errors,
            fd_budgets,
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
            .map(|p| (p.process(), p.open as usize))
            .collect();
        self.summary.set_open_leaks(&open);
        self.summary.time_wait_top = (self.ports.top(10).into_iter())
            .map(|(d, n)| {
                let ratio = self.ports.ratio(d.netns, n);
                (d, n, ratio)
            })
            .collect();
        self.summary.time_wait_by_process = self.ports.by_process();
        self.summary.time_wait_server_side = self.ports.server_side_top(10);
        self.summary.errors = self.ports.errors.clone();
        self.summary.listen_overflows = self.ports.listen_overflows;
    }
}
