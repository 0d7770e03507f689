//! The processes `--pid` and `--pid-tree` follow, as processes: a pid and
//! its start time. The kernel's map tells which pids are followed now; a
//! process that exits stays followed for its own events, which may still
//! be on their way, but a newcomer given its pid is a stranger.
use std::collections::HashMap;

/// Exited processes remembered at most (a forking server's tree churns).
const EXITED_KEPT: usize = 4096;

/// A process: its pid, and its start time when known.
pub type Process = (u32, Option<u64>);

#[derive(Debug, Default)]
pub struct Followed {
    /// Followed now, by pid.
    alive: HashMap<u32, Option<u64>>,
    /// Followed once, by pid: only their start time names them now.
    exited: HashMap<u32, u64>,
}

impl Followed {
    pub fn new(now: impl IntoIterator<Item = Process>) -> Followed {
        Followed {
            alive: now.into_iter().collect(),
            exited: HashMap::new(),
        }
    }

    /// The processes followed now. A process no longer among them has
    /// exited. Returns true when the last one has just gone.
    pub fn refresh(&mut self, now: impl IntoIterator<Item = Process>) -> bool {
        let now: HashMap<u32, Option<u64>> = now.into_iter().collect();
        let had_any = !self.alive.is_empty();
        for (pid, start) in self.alive.drain() {
            let same = now.get(&pid).is_some_and(|s| *s == start || s.is_none());
            if let (false, Some(start)) = (same, start) {
                if self.exited.len() >= EXITED_KEPT
                    && let Some(&old) = self.exited.keys().next()
                {
                    self.exited.remove(&old);
                }
                self.exited.insert(pid, start);
            }
        }
        self.alive = now;
        had_any && self.alive.is_empty()
    }

    /// Whether the process (`pid`, `start`) is or was followed. A start
    /// time the event does not carry cannot tell processes apart: the pid
    /// decides, for a process followed now.
    pub fn contains(&self, pid: u32, start: Option<u64>) -> bool {
        let now = match self.alive.get(&pid) {
            Some(Some(s)) => start.is_none_or(|t| t == *s),
            Some(None) => true,
            None => false,
        };
        now || (start.is_some() && self.exited.get(&pid) == start.as_ref())
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.alive.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_process_keeps_its_events_and_not_its_pid() {
        let mut f = Followed::new([(10, Some(500))]);
        assert!(f.contains(10, Some(500)));
        assert!(f.contains(10, None));
        assert!(!f.contains(11, Some(500)));
        // It exits before its last events are read.
        assert!(f.refresh([]), "the last one has gone");
        assert!(f.contains(10, Some(500)), "its own events still show");
        assert!(
            !f.contains(10, Some(9000)),
            "a newcomer with its pid does not"
        );
        assert!(!f.contains(10, None), "nor an event that cannot tell");
    }

    #[test]
    fn a_pid_taken_over_while_followed_is_another_process() {
        let mut f = Followed::new([(10, Some(500))]);
        // --pid-tree: the kernel followed a child that got pid 10 again.
        assert!(!f.refresh([(10, Some(700)), (12, None)]));
        assert!(f.contains(10, Some(700)));
        assert!(
            f.contains(10, Some(500)),
            "the first one's events still show"
        );
        assert!(f.contains(12, Some(1)), "no start known: the pid decides");
        assert_eq!(f.pids(), vec![10, 12]);
    }

    #[test]
    fn exited_processes_are_bounded() {
        let mut f = Followed::default();
        for pid in 0..(EXITED_KEPT as u32 + 100) {
            f.refresh([(pid, Some(1))]);
        }
        assert!(f.exited.len() <= EXITED_KEPT);
    }
}
