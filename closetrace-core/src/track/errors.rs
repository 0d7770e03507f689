//! Rate limiting of identical connect/bind failures: a process retrying
//! in a loop gets one record per interval, with the count it suppressed.
use std::collections::HashMap;
use std::net::IpAddr;

use crate::model::{Errno, SockError};

/// Identical errors are reported at most once per this interval.
const ERROR_INTERVAL_NS: u64 = 1_000_000_000;
/// Past this many keys, those idle for ten intervals are forgotten.
const KEYS_KEPT: usize = 4096;

/// Rate limiting of identical error records.
#[derive(Debug, Default)]
pub struct ErrorLimiter {
    last: HashMap<(u32, Errno, IpAddr, u16), (u64, u64)>,
}

impl ErrorLimiter {
    /// Some(suppressed since the last report) when this one is to be reported.
    pub fn admit(&mut self, e: &SockError) -> Option<u64> {
        let key = (e.task.pid, e.errno, e.addr, e.port);
        if self.last.len() > KEYS_KEPT {
            self.last
                .retain(|_, (t, _)| t.saturating_add(10 * ERROR_INTERVAL_NS) > e.ts_ns);
        }
        match self.last.get_mut(&key) {
            Some((t, n)) if e.ts_ns < t.saturating_add(ERROR_INTERVAL_NS) => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let suppressed = *n;
                (*t, *n) = (e.ts_ns, 0);
                Some(suppressed)
            }
            None => {
                self.last.insert(key, (e.ts_ns, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, Syscall, fixtures::task};

    fn err(pid: u32, ts_ns: u64) -> SockError {
        SockError {
            ts_ns,
            syscall: Syscall::Connect,
            errno: Errno::AddrNotAvail,
            family: Family::Ipv4,
            addr: "127.0.0.1".parse().unwrap(),
            port: 80,
            task: task(pid, "cli"),
            netns: 1,
            cgroup: 0,
        }
    }

    #[test]
    fn identical_errors_are_rate_limited_and_counted() {
        let s = 1_000_000_000;
        let mut l = ErrorLimiter::default();
        assert_eq!(l.admit(&err(1, 0)), Some(0));
        for i in 1..10 {
            assert_eq!(l.admit(&err(1, i * s / 20)), None);
        }
        // Another process is not identical.
        assert_eq!(l.admit(&err(2, s / 2)), Some(0));
        assert_eq!(l.admit(&err(1, s)), Some(9));
        assert_eq!(l.admit(&err(1, s + 1)), None);
    }
}
