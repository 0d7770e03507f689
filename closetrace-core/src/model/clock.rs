//! Kernel timestamps are CLOCK_MONOTONIC (`bpf_ktime_get_ns`); people and log
//! pipelines want wall-clock time. The offset between the two is sampled once.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC now, in the kernel's `bpf_ktime_get_ns` units.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

impl WallClock {
    pub fn sample() -> Self {
        // Bracket the realtime read with two monotonic reads and take the
        // midpoint, so a preemption between the reads cannot skew the offset.
        let m0 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        Self::from_offset(r - (m0 + m1) / 2)
    }

    pub fn from_offset(offset_ns: i128) -> Self {
        WallClock { offset_ns }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as i128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_offset() {
        let c = WallClock::from_offset(1_700_000_000_000_000_000);
        let t = c.wall(5_000_000_000);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_nanos(1_700_000_005_000_000_000)
        );
        assert_eq!(
            humantime::format_rfc3339_micros(t).to_string(),
            "2023-11-14T22:13:25.000000Z"
        );
    }

    #[test]
    fn sampled_clock_is_close_to_now() {
        let c = WallClock::sample();
        let now = SystemTime::now();
        let got = c.wall(monotonic_ns());
        let diff = now.duration_since(got).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "{diff:?}");
    }
}
