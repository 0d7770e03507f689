//! The host worker: one thread that runs every blocking read of the
//! running system (the `Host` trait) for the coordinator, so a slow netlink
//! dump or /proc walk never stalls event consumption. The coordinator
//! sends jobs and carries on; answers come back on a channel that the
//! consume loop selects on, like the ring buffer's messages.
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::mpsc as std_mpsc;
use std::thread::{self, JoinHandle};

use tokio::sync::mpsc;

use crate::host::Host;
use crate::host::accept_queue::listeners_of;
use crate::host::sockets::{DiagSocket, KernelView, SnapshotError};
use crate::model::ports::PortPolicy;
use crate::model::threads::{ProcessSample, TcpInfo};
use crate::model::{Holder, SockError, SockRef};
use crate::track::timewait::{Tuple, tuple_of};

/// What one tick needs from the running system.
#[derive(Debug, Clone, PartialEq)]
pub struct TickJob {
    pub now_ns: u64,
    /// List the CLOSE_WAIT sockets (the default mode's scan).
    pub close_wait: bool,
    /// CLOSE_WAIT sockets with their holders, for the leaks due now.
    pub holders: bool,
    /// Count timewait sockets, and read the listeners' drop counters.
    pub ports: bool,
    /// The cgroups of the sockets about to be reported: their containers
    /// must be named.
    pub cgroups: Vec<u64>,
    /// The namespaces whose sockets the coordinator needs listed (tracked
    /// leaks, TIME_WAIT being counted); the host adds those where the
    /// kernel saw a socket enter CLOSE_WAIT. None: every namespace.
    pub namespaces: Option<HashSet<u32>>,
    /// Diagnose the leaks due now (with `holders`).
    pub diagnose: Option<DiagnoseAsk>,
}

/// What a diagnosis of the leaks due needs read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiagnoseAsk {
    /// The leaked sockets: each looked up with its tcp_info, and its peer.
    pub sockets: Vec<SockRef>,
    /// Their owners as the kernel knows them, sampled with their holders.
    pub owners: Vec<u32>,
    /// Processes diagnosed recently: not sampled again yet.
    pub fresh: HashSet<u32>,
    /// Socket ids are not cookies: find sockets by their endpoints.
    pub by_tuple: bool,
}

/// Leaked sockets looked up per tick at most (two round trips each).
pub const MAX_SOCKETS_DIAGNOSED: usize = 64;
/// Processes sampled per tick at most (each a walk of its threads).
pub const MAX_PROCESSES_DIAGNOSED: usize = 8;

/// What the host read for a `DiagnoseAsk`.
#[derive(Debug, Default)]
pub struct DiagnoseFound {
    /// By socket id: its tcp_info, and the peer's socket if on this host.
    pub sockets: HashMap<u64, (Option<TcpInfo>, Option<DiagSocket>)>,
    pub processes: Vec<ProcessSample>,
}

#[derive(Debug)]
pub enum Job {
    Tick(TickJob),
    /// Who holds the port a failed bind() wanted.
    BindHolders {
        error: SockError,
        suppressed: u64,
    },
    /// Who holds listeners whose accept queue overflowed (socket, drops).
    ListenerHolders(Vec<(DiagSocket, u32)>),
}

/// What the worker found for a `TickJob`; each part only if asked.
#[derive(Debug)]
pub struct TickAnswer {
    pub job: TickJob,
    pub close_wait: Option<Result<Vec<DiagSocket>, SnapshotError>>,
    pub holders: Option<Result<KernelView, SnapshotError>>,
    /// Timewait sockets by tuple, in every namespace read.
    pub time_wait: Option<Result<Vec<Tuple>, SnapshotError>>,
    /// The namespaces the CLOSE_WAIT and timewait lists cover (None: every
    /// one the host reads).
    pub read: Option<HashSet<u32>>,
    pub listeners: Option<Result<Vec<DiagSocket>, SnapshotError>>,
    /// Each namespace's port sysctls, read with the timewait sockets.
    pub policies: Option<HashMap<u32, PortPolicy>>,
    /// `--pid`, `--pid-tree`: the processes followed now.
    pub followed: Option<Vec<crate::track::followed::Process>>,
    /// What the leaks due are doing (with `holders`).
    pub diagnosis: Option<DiagnoseFound>,
    /// How long the reads took.
    pub took_ms: f64,
}

#[derive(Debug)]
pub enum Answer {
    Tick(Box<TickAnswer>),
    BindHolders {
        error: SockError,
        suppressed: u64,
        /// Boxed: a view is large beside the other answers.
        view: Box<Result<KernelView, SnapshotError>>,
    },
    ListenerHolders {
        overflowing: Vec<(DiagSocket, u32)>,
        holders: HashMap<u32, Vec<Holder>>,
    },
}

/// The worker thread, its job queue and its answers.
pub struct Worker {
    jobs: Option<std_mpsc::Sender<Job>>,
    pub answers: mpsc::UnboundedReceiver<Answer>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Start the thread.
    pub fn spawn(mut host: Box<dyn Host>) -> io::Result<Worker> {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let (answer, answers) = mpsc::unbounded_channel();
        let thread = thread::Builder::new()
            .name("closetrace-host".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    if answer.send(run(host.as_mut(), job)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(jobs),
            answers,
            thread: Some(thread),
        })
    }

    /// Queue a job; false if the worker is gone (it only stops with us).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread once its current job is done.
        self.jobs = None;
        self.answers.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(host: &mut dyn Host, job: Job) -> Answer {
    match job {
        Job::Tick(job) => Answer::Tick(Box::new(tick(host, job))),
        Job::BindHolders { error, suppressed } => Answer::BindHolders {
            error,
            suppressed,
            view: Box::new(host.everything()),
        },
        Job::ListenerHolders(overflowing) => {
            let inodes = overflowing.iter().map(|(l, _)| l.inode).collect();
            Answer::ListenerHolders {
                holders: host.holders(&inodes),
                overflowing,
            }
        }
    }
}

fn tick(host: &mut dyn Host, job: TickJob) -> TickAnswer {
    let started = std::time::Instant::now();
    host.learn_containers(&job.cgroups);
    let dump = dump(host, &job);
    let read = dump.as_ref().and_then(|_| host.namespaces_read());
    let listeners = job.ports.then(|| host.listeners());
    let policies = job.ports.then(|| host.port_policies());
    let (mut close_wait, mut time_wait, mut holders) = (None, None, None);
    let mut diagnosis = None;
    match dump {
        None => {}
        Some(Err(e)) => {
            close_wait = job.close_wait.then(|| failed(&e));
            holders = job.holders.then(|| failed(&e));
            time_wait = job.ports.then(|| failed(&e));
        }
        Some(Ok(d)) => {
            if job.holders {
                let by_cookie = d.close_wait.iter().map(|s| (s.cookie, s.clone())).collect();
                let mut inodes: HashSet<u32> = d.close_wait.iter().map(|s| s.inode).collect();
                let sockets = job.diagnose.as_ref().map(|a| look_up(host, a));
                // Peers that still hold their end: their holders come from
                // the same fd walk.
                let peers = sockets.iter().flat_map(|s| s.values());
                inodes.extend(peers.filter_map(|(_, p)| p.as_ref()).map(|p| p.inode));
                // Never accepted: their listeners' holders answer for them.
                let queued_on = match d.close_wait.iter().any(|s| s.inode == 0) {
                    true => listeners_of(
                        &d.close_wait,
                        &host.listeners().unwrap_or_else(|e| {
                            log::debug!("listing listeners for unaccepted sockets: {e}");
                            Vec::new()
                        }),
                    ),
                    false => HashMap::new(),
                };
                inodes.extend(queued_on.values());
                let mut view = KernelView::new(by_cookie, host.holders(&inodes));
                view.queued_on = queued_on;
                if let (Some(ask), Some(sockets)) = (&job.diagnose, sockets) {
                    diagnosis = Some(DiagnoseFound {
                        processes: host.sample_processes(&to_sample(ask, &view)),
                        sockets,
                    });
                }
                holders = Some(Ok(view));
            }
            close_wait = job.close_wait.then_some(Ok(d.close_wait));
            time_wait = job.ports.then_some(Ok(d.time_wait));
        }
    }
    TickAnswer {
        close_wait,
        holders,
        time_wait,
        read,
        listeners,
        policies,
        followed: host.followed(),
        diagnosis,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        job,
    }
}

/// Each leaked socket (up to the cap) with its tcp_info, and its peer:
/// the socket with the reversed tuple in the same namespace, if any.
fn look_up(
    host: &mut dyn Host,
    ask: &DiagnoseAsk,
) -> HashMap<u64, (Option<TcpInfo>, Option<DiagSocket>)> {
    let mut out = HashMap::new();
    for s in ask.sockets.iter().take(MAX_SOCKETS_DIAGNOSED) {
        let (local, remote) = ((s.saddr, s.sport), (s.daddr, s.dport));
        let info = host
            .lookup_socket(s.netns, local, remote, true)
            .and_then(|(_, i)| i);
        let peer = host
            .lookup_socket(s.netns, remote, local, false)
            .map(|(p, _)| p);
        out.insert(s.id, (info, peer));
    }
    out
}

/// The processes to sample: the owners and holders of the leaked sockets
/// not diagnosed recently, up to the cap.
fn to_sample(ask: &DiagnoseAsk, view: &KernelView) -> Vec<u32> {
    let holders = (ask.sockets.iter()).flat_map(|s| view.holders_of_sock(s, ask.by_tuple));
    let mut pids: Vec<u32> = Vec::new();
    for pid in ask.owners.iter().copied().chain(holders.map(|h| h.pid)) {
        if !ask.fresh.contains(&pid) && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids.truncate(MAX_PROCESSES_DIAGNOSED);
    pids
}

/// The one dump's failure, for each part that needed it.
fn failed<T>(e: &SnapshotError) -> Result<T, SnapshotError> {
    Err(SnapshotError::Netlink(io::Error::other(e.to_string())))
}

/// One tick's sockets, from one dump per namespace and family: CLOSE_WAIT
/// (for the scan and the holders), and timewait sockets as tuples.
struct Dump {
    close_wait: Vec<DiagSocket>,
    time_wait: Vec<Tuple>,
}

fn dump(host: &mut dyn Host, job: &TickJob) -> Option<Result<Dump, SnapshotError>> {
    use closetrace_common::tcp_state::{CLOSE_WAIT, FIN_WAIT2, TIME_WAIT};
    let mut states = 0u32;
    if job.close_wait || job.holders {
        states |= 1 << CLOSE_WAIT;
    }
    if job.ports {
        states |= (1 << TIME_WAIT) | (1 << FIN_WAIT2);
    }
    if states == 0 {
        return None;
    }
    let mut d = Dump {
        close_wait: Vec::new(),
        time_wait: Vec::new(),
    };
    let result = host.visit_sockets(states, job.namespaces.as_ref(), &mut |s| {
        if s.is_timewait() {
            d.time_wait.push(tuple_of(&s.sock_ref()));
        } else if s.state == crate::model::TcpState::CloseWait {
            d.close_wait.push(s);
        }
    });
    Some(result.map(|()| d))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::TcpState;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A host whose CLOSE_WAIT list blocks until the test lets it go.
    pub(crate) struct Slow {
        gate: Arc<Mutex<()>>,
        calls: Arc<Mutex<u32>>,
    }

    /// The test's side of a `Slow` host: holding `gate` keeps it stuck;
    /// `calls` counts the lists it returned.
    pub(crate) struct Stuck {
        pub gate: Arc<Mutex<()>>,
        pub calls: Arc<Mutex<u32>>,
    }

    impl Stuck {
        pub(crate) fn new() -> Stuck {
            Stuck {
                gate: Arc::new(Mutex::new(())),
                calls: Arc::new(Mutex::new(0)),
            }
        }

        pub(crate) fn host(&self) -> Slow {
            Slow {
                gate: self.gate.clone(),
                calls: self.calls.clone(),
            }
        }
    }

    fn sock(cookie: u64, state: TcpState) -> DiagSocket {
        DiagSocket::on_loopback(cookie, state, 9000, 5)
    }

    impl Host for Slow {
        /// Every state asked for, in one dump: a CLOSE_WAIT socket, a
        /// TIME_WAIT one, and a full FIN_WAIT2 one (not a timewait socket).
        fn visit_sockets(
            &mut self,
            states: u32,
            _wanted: Option<&HashSet<u32>>,
            visit: &mut dyn FnMut(DiagSocket),
        ) -> Result<(), SnapshotError> {
            let _wait = self.gate.lock().unwrap();
            *self.calls.lock().unwrap() += 1;
            for s in [
                sock(7, TcpState::CloseWait),
                sock(8, TcpState::TimeWait),
                sock(9, TcpState::FinWait2),
            ] {
                if states & (1 << s.state as u32) != 0 {
                    visit(s);
                }
            }
            Ok(())
        }
        fn listeners(&mut self) -> Result<Vec<DiagSocket>, SnapshotError> {
            Ok(Vec::new())
        }
        fn holders(&mut self, _inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
            HashMap::new()
        }
        fn everything(&mut self) -> Result<KernelView, SnapshotError> {
            Ok(KernelView::empty())
        }
        fn sample_processes(&mut self, _pids: &[u32]) -> Vec<ProcessSample> {
            Vec::new()
        }
        fn lookup_socket(
            &mut self,
            _netns: u32,
            _local: (std::net::IpAddr, u16),
            _remote: (std::net::IpAddr, u16),
            _info: bool,
        ) -> Option<(DiagSocket, Option<TcpInfo>)> {
            None
        }
    }

    fn job(now_ns: u64) -> TickJob {
        TickJob {
            now_ns,
            close_wait: true,
            holders: false,
            ports: true,
            cgroups: vec![],
            namespaces: None,
            diagnose: None,
        }
    }

    /// The submitter never waits for the host: a job is queued at once
    /// while the worker is stuck, and answered when it gets free.
    #[test]
    fn a_slow_host_does_not_block_the_submitter() {
        let stuck = Stuck::new();
        let held = stuck.gate.lock().unwrap();
        let mut w = Worker::spawn(Box::new(stuck.host())).unwrap();
        assert!(w.submit(Job::Tick(job(1))));
        assert!(w.submit(Job::Tick(job(2))));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*stuck.calls.lock().unwrap(), 0, "the host is still blocked");
        assert!(w.answers.try_recv().is_err(), "nothing answered yet");
        drop(held);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for want in [1, 2] {
            let Some(Answer::Tick(a)) = rt.block_on(w.answers.recv()) else {
                panic!("no tick answer");
            };
            assert_eq!(a.job.now_ns, want);
            let cw = a.close_wait.unwrap().unwrap();
            assert_eq!(cw.iter().map(|s| s.cookie).collect::<Vec<_>>(), [7]);
            let tw = a.time_wait.unwrap().unwrap();
            assert_eq!(
                tw.len(),
                1,
                "a full FIN_WAIT2 socket holds no timewait slot"
            );
            assert_eq!((tw[0].0.netns, tw[0].1), (5, 9000));
            assert!(a.holders.is_none(), "not asked for");
        }
    }
}
