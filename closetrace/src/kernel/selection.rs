//! `--pid-tree` and `--cgroup` in the kernel: keeps its selection maps
//! current while tracing (new cgroups below the chosen one; the processes
//! the fork and exit hooks added and removed).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use closetrace_core::host::cgroups;

/// Keeps the kernel's selection maps current while tracing.
pub struct Upkeep {
    /// `--pid`, `--pid-tree`: the kernel's PIDS map, which its fork hook
    /// extends and its exit hook prunes: what is displayed follows it.
    pub pids: Option<BpfHashMap<MapData, u32, u8>>,
    /// `--cgroup`: the chosen directory and the kernel's CGROUPS map.
    pub cgroup: Option<(PathBuf, BpfHashMap<MapData, u64, u8>)>,
    last: Option<Instant>,
}

impl Upkeep {
    pub fn new(
        pids: Option<BpfHashMap<MapData, u32, u8>>,
        cgroup: Option<(PathBuf, BpfHashMap<MapData, u64, u8>)>,
    ) -> Self {
        Upkeep {
            pids,
            cgroup,
            last: None,
        }
    }

    /// Refresh, at most once a second. Returns the processes to display
    /// when following pids (`None`: no pid selection).
    pub fn refresh(&mut self) -> Option<Vec<u32>> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(Instant::now());
        if let Some((dir, map)) = self.cgroup.as_mut() {
            for id in cgroups::subtree_ids(dir) {
                if map.get(&id, 0).is_err()
                    && let Err(e) = map.insert(id, 1, 0)
                {
                    log::warn!("cannot add cgroup {id} to the filter: {e}");
                }
            }
        }
        let map = self.pids.as_ref()?;
        let mut now: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        now.sort_unstable();
        Some(now)
    }
}
