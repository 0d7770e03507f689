//! The running system as the host worker reads it during a run: the core
//! `System`, plus `--pid-tree`/`--cgroup` upkeep of the kernel's selection
//! maps (a cgroup walk and a map read, so off the event path too).
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use closetrace_core::host::sockets::{DiagSocket, KernelView, SnapshotError};
use closetrace_core::host::{Host, System};
use closetrace_core::model::Holder;
use closetrace_core::model::ports::PortPolicy;
use closetrace_core::model::threads::{ProcessSample, TcpInfo};

use crate::kernel::maps::NetnsActivity;
use crate::kernel::selection::Upkeep;
use closetrace_common::{NETNS_SLOTS, netns_slot};

/// When a process started, in /proc's ticks (None once it is gone).
pub fn start_of(pid: u32) -> Option<u64> {
    closetrace_core::host::procs::stat(pid).map(|s| s.start)
}

pub struct RunHost {
    pub system: System,
    pub upkeep: Option<Upkeep>,
    /// Which namespaces the kernel saw a socket enter CLOSE_WAIT in.
    pub activity: Option<NetnsActivity>,
}

impl Host for RunHost {
    /// The namespaces wanted, and those whose activity slot moved: read
    /// before the dump, so a socket entering CLOSE_WAIT meanwhile is seen
    /// now or by the next tick.
    fn visit_sockets(
        &mut self,
        states: u32,
        wanted: Option<&HashSet<u32>>,
        visit: &mut dyn FnMut(DiagSocket),
    ) -> Result<(), SnapshotError> {
        let moved = self.activity.as_mut().and_then(NetnsActivity::moved);
        match &moved {
            Some(moved) => {
                let ipv6 = moved.iter().filter_map(|s| s.checked_sub(NETNS_SLOTS));
                self.system.ipv6_activity(ipv6);
            }
            // Activity unknown: every namespace is read, IPv6 included.
            None => self.system.ipv6_everywhere(),
        }
        match (wanted, moved) {
            (Some(wanted), Some(moved)) => {
                let pick = |ns: u32| wanted.contains(&ns) || moved.contains(&netns_slot(ns));
                self.system.visit_where(states, &pick, visit)
            }
            _ => self.system.visit_where(states, &|_| true, visit),
        }
    }

    fn listeners(&mut self) -> Result<Vec<DiagSocket>, SnapshotError> {
        self.system.listeners()
    }

    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
        self.system.holders(inodes)
    }

    fn everything(&mut self) -> Result<KernelView, SnapshotError> {
        self.system.everything()
    }

    fn port_policies(&mut self) -> HashMap<u32, PortPolicy> {
        self.system.port_policies()
    }

    fn namespaces_read(&self) -> Option<HashSet<u32>> {
        self.system.namespaces_read()
    }

    fn learn_containers(&mut self, cgroups: &[u64]) {
        self.system.learn_containers(cgroups);
    }

    fn sample_processes(&mut self, pids: &[u32]) -> Vec<ProcessSample> {
        self.system.sample_processes(pids)
    }

    fn lookup_socket(
        &mut self,
        netns: u32,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        info: bool,
    ) -> Option<(DiagSocket, Option<TcpInfo>)> {
        self.system.lookup_socket(netns, local, remote, info)
    }

    fn followed(&mut self) -> Option<Vec<(u32, Option<u64>)>> {
        let pids = self.upkeep.as_mut()?.refresh()?;
        Some(pids.into_iter().map(|pid| (pid, start_of(pid))).collect())
    }
}
