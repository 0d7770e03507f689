//! What /proc says about one process: its name, its parent, and when it
//! started. A pid is reused once its process is gone; the pair (pid, start)
//! is not, so that pair is what names a process for the whole boot.
use std::fs;
use std::sync::OnceLock;

/// Inode of the initial PID namespace (the kernel's PROC_PID_INIT_INO,
/// fixed since Linux 3.8).
pub const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// The PID namespace whose numbers /proc shows; None when it cannot be
/// told.
pub fn proc_pid_ns() -> Option<u64> {
    // /proc/self exists only if /proc's namespace holds this process, and
    // the only one holding a process of the initial namespace is that one.
    if pid_ns_of("self") == Some(INIT_PID_NS) {
        return Some(INIT_PID_NS);
    }
    // Otherwise ask its pid 1 (which may refuse to be looked at).
    pid_ns_of("1")
}

/// The PID namespace of /proc/`pid` ("pid:[N]" -> N).
fn pid_ns_of(pid: &str) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    link.to_str()?
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The fields of /proc/PID/stat closetrace uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// Clock ticks since boot when the process started (field 22).
    pub start: u64,
}

/// Parse /proc/PID/stat. The name (field 2) is in parentheses and may
/// itself hold spaces, parentheses and newlines: fields are counted after
/// the last ')'.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // rest: state (field 3), ppid (4), ..., starttime (22).
    let ppid = rest.nth(1)?.parse().ok()?;
    let start = rest.nth(17)?.parse().ok()?;
    Some(Stat { ppid, start })
}

pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One field of /proc/`pid`/status (`pid` may be `self`), trimmed.
pub fn status_field(pid: &str, key: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// The process a task id belongs to (a thread's id maps to its process).
pub fn tgid(pid: u32) -> Result<u32, &'static str> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err("no such process");
    }
    status_field(&pid.to_string(), "Tgid")
        .and_then(|v| v.parse().ok())
        .ok_or("cannot read its process id")
}

pub fn comm(pid: u32) -> Option<String> {
    let c = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(c.trim_end_matches('\n').to_string())
}

/// Nanoseconds per clock tick (USER_HZ), the unit of /proc's start times.
pub fn tick_ns() -> u64 {
    static TICK_NS: OnceLock<u64> = OnceLock::new();
    *TICK_NS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // USER_HZ is 100 on every architecture closetrace builds for.
        1_000_000_000 / if hz > 0 { hz as u64 } else { 100 }
    })
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
        let tail = "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 4242 1000";
        let st = |head: &str| parse_stat(&format!("{head} {tail}"));
        let want = |ppid| Some(Stat { ppid, start: 4242 });
        assert_eq!(st("42 (nginx) S 1"), want(1));
        assert_eq!(st("43 (a) b (c) R 7"), want(7));
        assert_eq!(st("44 (x\ny) S 9"), want(9));
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
