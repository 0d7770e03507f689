//! What /proc says about one process: its name, its parent, and when it
//! started. A pid is reused once its process is gone; the pair (pid, start)
//! is not, so that pair is what names a process for the whole boot.
//!
//! Per-process files are read and parsed by the procfs crate. The walk of
//! every fd table (`holders::socket_holders`, where the fd iterator does
//! not load) stays hand-written: procfs spends four syscalls per fd where
//! a readlink is enough, and measured 20-25% slower on 18,000 socket fds
//! (see examples/fd_walk_cost.rs).
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use procfs::FromRead;
use procfs::process::Process;

/// Inode of the initial PID namespace (the kernel's PROC_PID_INIT_INO,
/// fixed since Linux 3.8).
pub const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// The PID namespace whose numbers /proc shows; None when it cannot be
/// told.
pub fn proc_pid_ns() -> Option<u64> {
    // /proc/self exists only if /proc's namespace holds this process, and
    // the only one holding a process of the initial namespace is that one.
    if ns_inode("self", "pid") == Some(INIT_PID_NS) {
        return Some(INIT_PID_NS);
    }
    // Otherwise ask its pid 1 (which may refuse to be looked at).
    ns_inode("1", "pid")
}

/// The inode of /proc/`pid`/ns/`kind` (`pid` may be `self`): the
/// namespace's id, as the kernel reports it.
pub fn ns_inode(pid: &str, kind: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

/// The fields of /proc/PID/stat closetrace uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// Clock ticks since boot when the process started (field 22).
    pub start: u64,
    /// The process's name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
}

impl Stat {
    fn from_procfs(st: procfs::process::Stat) -> Option<Stat> {
        Some(Stat {
            ppid: u32::try_from(st.ppid).ok()?,
            start: st.starttime,
            comm: st.comm,
        })
    }
}

/// Parse /proc/PID/stat. The name (field 2) is in parentheses and may
/// itself hold spaces, parentheses and newlines.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    Stat::from_procfs(procfs::process::Stat::from_read(stat.as_bytes()).ok()?)
}

pub fn stat(pid: u32) -> Option<Stat> {
    let p = Process::new(i32::try_from(pid).ok()?).ok()?;
    Stat::from_procfs(p.stat().ok()?)
}

/// The process a task id belongs to (a thread's id maps to its process).
pub fn tgid(pid: u32) -> Result<u32, &'static str> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(|pid| Process::new(pid).ok())
        .ok_or("no such process")?;
    let status = p.status().map_err(|_| "cannot read its process id")?;
    u32::try_from(status.tgid).map_err(|_| "cannot read its process id")
}

/// Every process now, with its parent.
pub fn parents() -> std::collections::HashMap<u32, u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Default::default();
    };
    all.flatten()
        .filter_map(|p| {
            let st = Stat::from_procfs(p.stat().ok()?)?;
            Some((u32::try_from(p.pid).ok()?, st.ppid))
        })
        .collect()
}

/// Nanoseconds per clock tick (USER_HZ), the unit of /proc's start times.
pub fn tick_ns() -> u64 {
    static TICK_NS: OnceLock<u64> = OnceLock::new();
    // USER_HZ is 100 on every architecture closetrace builds for.
    *TICK_NS.get_or_init(|| 1_000_000_000 / procfs::ticks_per_second().max(1))
}

/// A kernel start time (ns since boot) in /proc's ticks, rounded down as
/// the kernel rounds it for /proc/PID/stat, so the two compare equal.
pub fn ticks(start_ns: u64) -> u64 {
    start_ns / tick_ns()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // Fields 5 to 52 of a 6.x kernel's line: starttime (22) is 4242.
        let tail = format!("{}4242 1000{}", "0 ".repeat(17), " 0".repeat(29));
        let st = |head: &str| parse_stat(&format!("{head} {tail}"));
        let want = |ppid, comm: &str| {
            Some(Stat {
                ppid,
                start: 4242,
                comm: comm.into(),
            })
        };
        assert_eq!(st("42 (nginx) S 1"), want(1, "nginx"));
        assert_eq!(st("43 (a) b (c) R 7"), want(7, "a) b (c"));
        assert_eq!(st("44 (x\ny) S 9"), want(9, "x\ny"));
        assert_eq!(parse_stat("42 (nginx) S 1 42 42 0 -1"), None, "truncated");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_started_before_now() {
        let me = stat(std::process::id()).expect("own stat");
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-parameter; CLOCK_BOOTTIME exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let now = ticks(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
        assert!(me.start > 0 && me.start <= now, "{} vs {now}", me.start);
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
    }
}
