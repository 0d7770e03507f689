//! Reads what a leak's holder is doing from /proc: per thread its state,
//! the system call it is in (with fd arguments resolved), its wait channel,
//! kernel stack and CPU time; per process its open fds and RLIMIT_NOFILE.
//!
//! Per-process and per-thread stat and limits go through the procfs crate;
//! `syscall`, `wchan`, `stack` and `sched` are one short file each, read
//! directly. A process or thread that exits while being read yields what
//! was read so far (`partial`), never an error.
use std::fs;
use std::time::{Duration, Instant};

use procfs::process::{LimitValue, Process};

use crate::model::threads::{CallSample, FdTarget, ProcessSample, SchedState, ThreadSample};

/// Threads read per process at most: a process with more is summarised
/// from these, and says how many it had.
pub const MAX_THREADS: usize = 10_000;
/// Threads whose kernel stack and time off CPU are read (the two dearest
/// files); the rest of a bigger process are read without them.
pub const DETAILED_THREADS: usize = 256;
/// Kernel stack frames kept per thread.
const STACK_FRAMES: usize = 6;
/// Between the two CPU reads that tell a busy thread from a blocked one.
pub const CPU_PAUSE: Duration = Duration::from_millis(100);

/// Sample each of `pids`; `socket` names a socket fd's target from its
/// inode, in the namespace of the process given. One pause serves all.
pub fn sample(pids: &[u32], socket: &mut dyn FnMut(u32, u32) -> FdTarget) -> Vec<ProcessSample> {
    let own_exec_start = exec_start_ms("/proc/thread-self/sched");
    let mut samples: Vec<ProcessSample> = pids
        .iter()
        .map(|&pid| read_process(pid, own_exec_start, socket))
        .collect();
    let on_cpu = |s: &ProcessSample| s.threads.iter().any(|t| t.state == SchedState::Running);
    if samples.iter().any(on_cpu) {
        let paused = Instant::now();
        std::thread::sleep(CPU_PAUSE);
        let pause_ms = paused.elapsed().as_secs_f64() * 1000.0;
        for s in samples.iter_mut().filter(|s| on_cpu(s)) {
            s.pause_ms = pause_ms;
            for t in s.threads.iter_mut() {
                if t.state == SchedState::Running {
                    t.cpu_ticks_later = task_cpu(s.pid, t.tid);
                }
            }
        }
    }
    samples
}

fn read_process(
    pid: u32,
    own_exec_start: Option<f64>,
    socket: &mut dyn FnMut(u32, u32) -> FdTarget,
) -> ProcessSample {
    let mut out = ProcessSample {
        pid,
        ticks_per_s: procfs::ticks_per_second().max(1),
        ..ProcessSample::default()
    };
    let Some(p) = i32::try_from(pid).ok().and_then(|p| Process::new(p).ok()) else {
        out.partial = true;
        return out;
    };
    match p.stat() {
        Ok(st) => {
            out.start = Some(st.starttime);
            out.comm = st.comm;
        }
        Err(_) => out.partial = true,
    }
    out.fd_limit = p
        .limits()
        .ok()
        .and_then(|l| match l.max_open_files.soft_limit {
            LimitValue::Value(v) => Some(v),
            LimitValue::Unlimited => None,
        });
    out.fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u32);
    let Ok(tasks) = p.tasks() else {
        out.partial = true;
        return out;
    };
    let mut links = FdCache::default();
    for task in tasks {
        out.threads_total += 1;
        if out.threads.len() >= MAX_THREADS {
            continue;
        }
        let Ok(task) = task else {
            out.partial = true;
            continue;
        };
        let own = (out.threads.len() < DETAILED_THREADS).then_some(own_exec_start);
        match read_thread(&task, pid, own, &mut links, socket) {
            Some(t) => out.threads.push(t),
            None => out.partial = true,
        }
    }
    out
}

/// fd targets already resolved in this process (threads share one table).
#[derive(Default)]
struct FdCache(Vec<(u32, FdTarget)>);

impl FdCache {
    fn target(
        &mut self,
        pid: u32,
        fd: u32,
        socket: &mut dyn FnMut(u32, u32) -> FdTarget,
    ) -> FdTarget {
        if let Some((_, t)) = self.0.iter().find(|(f, _)| *f == fd) {
            return t.clone();
        }
        let t = match fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
            Err(_) => FdTarget::Closed,
            Ok(link) => match FdTarget::from_link(&link.to_string_lossy()) {
                Ok(t) => t,
                Err(inode) => socket(pid, inode),
            },
        };
        self.0.push((fd, t.clone()));
        t
    }
}

/// `own_exec_start`: None to skip the kernel stack and time off CPU;
/// Some(the reader's own `se.exec_start`, if known) to read them.
fn read_thread(
    task: &procfs::process::Task,
    pid: u32,
    own_exec_start: Option<Option<f64>>,
    links: &mut FdCache,
    socket: &mut dyn FnMut(u32, u32) -> FdTarget,
) -> Option<ThreadSample> {
    let tid = u32::try_from(task.tid).ok()?;
    let st = task.stat().ok()?;
    let dir = format!("/proc/{pid}/task/{tid}");
    let call = fs::read_to_string(format!("{dir}/syscall"))
        .map_or(CallSample::Unknown, |s| parse_syscall(&s));
    let mut fds = Vec::new();
    if let CallSample::Syscall { nr, args } = &call
        && let Some((_, _, fd_args)) = crate::model::threads::syscall(*nr)
    {
        for &i in fd_args {
            // An fd argument is an int: the upper half is not part of it.
            let fd = args[i] as u32;
            if (fd as i32) >= 0 {
                fds.push((fd, links.target(pid, fd, socket)));
            }
        }
    }
    let wchan = fs::read_to_string(format!("{dir}/wchan"))
        .ok()
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty() && w != "0");
    let detailed = own_exec_start.is_some();
    let off_cpu_ms = match own_exec_start.flatten() {
        Some(ours) if st.state != 'R' => {
            exec_start_ms(&format!("{dir}/sched")).map(|theirs| (ours - theirs).max(0.0))
        }
        _ => None,
    };
    Some(ThreadSample {
        tid,
        comm: st.comm,
        state: SchedState::from_char(st.state),
        call,
        fds,
        wchan,
        stack: if detailed {
            fs::read_to_string(format!("{dir}/stack"))
                .map(|s| parse_stack(&s))
                .unwrap_or_default()
        } else {
            Vec::new()
        },
        cpu_ticks: st.utime + st.stime,
        cpu_ticks_later: None,
        off_cpu_ms,
    })
}

fn task_cpu(pid: u32, tid: u32) -> Option<u64> {
    let task = Process::new(pid as i32)
        .ok()?
        .task_from_tid(tid as i32)
        .ok()?;
    let st = task.stat().ok()?;
    Some(st.utime + st.stime)
}

/// /proc/PID/task/TID/syscall: `running`, `-1 SP PC` (blocked outside a
/// system call), or `NR ARG0 .. ARG5 SP PC` in hex.
pub fn parse_syscall(text: &str) -> CallSample {
    let mut words = text.split_whitespace();
    match words.next() {
        Some("running") => CallSample::User,
        Some("-1") => CallSample::Kernel,
        Some(nr) => {
            let Ok(nr) = nr.parse::<u32>() else {
                return CallSample::Unknown;
            };
            let mut args = [0u64; 6];
            for a in args.iter_mut() {
                let w = words.next().unwrap_or("0");
                *a = u64::from_str_radix(w.trim_start_matches("0x"), 16).unwrap_or(0);
            }
            CallSample::Syscall { nr, args }
        }
        None => CallSample::Unknown,
    }
}

/// Function names of a /proc/.../stack, innermost first, without the
/// `[<0>]` address column or `+0x../0x..` offsets.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| f.split('+').next().unwrap_or(f).to_string())
        .take(STACK_FRAMES)
        .collect()
}

/// `se.exec_start` of a /proc/.../sched file: when the task last started
/// running, in ms of the scheduler's clock.
fn exec_start_ms(path: &str) -> Option<f64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with("se.exec_start"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines_are_parsed() {
        assert_eq!(parse_syscall("running\n"), CallSample::User);
        assert_eq!(parse_syscall("-1 0x7ffd 0x7f01\n"), CallSample::Kernel);
        assert_eq!(
            parse_syscall("45 0x9 0x7ffc 0x1000 0x0 0x0 0x0 0x7ffd 0x7f01\n"),
            CallSample::Syscall {
                nr: 45,
                args: [9, 0x7ffc, 0x1000, 0, 0, 0]
            }
        );
        assert_eq!(parse_syscall(""), CallSample::Unknown);
    }

    #[test]
    fn stacks_keep_function_names_only() {
        let s = "[<0>] hrtimer_nanosleep+0x74/0xf0\n[<0>] common_nsleep+0x30/0x60\n";
        assert_eq!(parse_stack(s), ["hrtimer_nanosleep", "common_nsleep"]);
    }

    /// This test's own thread, read as a holder's would be.
    #[test]
    fn a_live_process_is_sampled() {
        let me = std::process::id();
        let s = sample(&[me], &mut |_, _| FdTarget::Socket);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert!(!s.threads.is_empty() && s.threads_total as usize >= s.threads.len());
        assert!(s.fds.is_some_and(|n| n >= 3), "{:?}", s.fds);
        assert!(s.start.is_some());
        let gone = sample(&[u32::MAX - 1], &mut |_, _| FdTarget::Socket);
        assert!(gone[0].partial && gone[0].threads.is_empty());
    }
}
