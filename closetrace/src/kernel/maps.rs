//! The maps userspace reads and writes after loading: taking them out of
//! the object, seeding the owners of sockets that predate start-up, the
//! CLOSE_WAIT scan's maps and which namespaces it must read, and how full
//! each map is for the summary.
use std::collections::HashSet;

use aya::Ebpf;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use closetrace_common::{ListenKey, ListenerInfo, NETNS_ACTIVITY_SLOTS, SockInfo};
use closetrace_core::host::sockets::KernelView;
use closetrace_core::kernel::CloseWaitKernel;
use closetrace_core::kernel::decode::{close_wait_entry, seed_info, task_id};
use closetrace_core::model::{MapUse, Task, TcpState};

use super::LoadError;

/// bpf_map_update_elem flag: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> LoadError {
    move |e| LoadError::Map(name, e.to_string())
}

/// A map taken out of the object, to be owned by its reader.
pub fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, LoadError> {
    ebpf.take_map(name)
        .ok_or(LoadError::Map(name, "missing".into()))
}

pub fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, LoadError> {
    BpfHashMap::try_from(take_map(ebpf, name)?).map_err(map_error(name))
}

/// A hash map left in the object, borrowed to fill it.
pub fn hash_mut<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<&'a mut MapData, K, V>, LoadError> {
    let map = ebpf
        .map_mut(name)
        .ok_or(LoadError::Map(name, "missing".into()))?;
    BpfHashMap::try_from(map).map_err(map_error(name))
}

/// A socket that predates start-up, and the owner found for it in /proc.
pub struct Seeded {
    pub cookie: u64,
    pub netns: u32,
    pub sport: u16,
    pub state: TcpState,
    pub owner: Task,
}

/// Give sockets that existed before start-up the owner found in /proc, in
/// the kernel maps, so the programs report them right: listeners always,
/// other sockets unless `listeners_only` (when the kernel keeps no owner
/// per socket, see `Kernel::owners_in_userspace`). Never overwrites what
/// the programs already learned since attaching. Returns what was seeded,
/// for userspace's own tables.
pub fn seed_existing(
    ebpf: &mut Ebpf,
    view: &KernelView,
    listeners_only: bool,
) -> Result<Vec<Seeded>, LoadError> {
    let [Some(sock_map), Some(listen_map)] = ebpf.maps_disjoint_mut(["SOCKS", "LISTENERS"]) else {
        return Err(LoadError::Map("SOCKS", "missing".into()));
    };
    let mut sock_map: BpfHashMap<_, u64, SockInfo> =
        BpfHashMap::try_from(sock_map).map_err(map_error("SOCKS"))?;
    let mut listen_map: BpfHashMap<_, ListenKey, ListenerInfo> =
        BpfHashMap::try_from(listen_map).map_err(map_error("LISTENERS"))?;
    let mut seeded = Vec::new();
    let mut below = 1u64;
    for s in view.by_cookie.values() {
        // Several holders (fork, fd passing): the lowest pid is usually the
        // parent that made it; good enough for ownership of the stream.
        let Some(h) = view.holders_of(s.cookie).iter().min_by_key(|h| h.pid) else {
            continue;
        };
        let owner: Task = h.task();
        // BPF_NOEXIST: what the programs saw since attaching is fresher.
        // `below`: past every cookie seeded here (see `set_seeded_below`).
        if !listeners_only {
            let info = seed_info(&owner, s.state);
            if sock_map.insert(s.cookie, info, BPF_NOEXIST).is_ok() {
                below = below.max(s.cookie.saturating_add(1));
            }
        }
        if s.state == TcpState::Listen {
            let key = ListenKey {
                netns: s.netns,
                port: s.sport,
                _pad: 0,
            };
            let info = ListenerInfo {
                owner: task_id(&owner),
                cookie: s.cookie,
            };
            let _ = listen_map.insert(key, info, BPF_NOEXIST);
        }
        seeded.push(Seeded {
            cookie: s.cookie,
            netns: s.netns,
            sport: s.sport,
            state: s.state,
            owner,
        });
    }
    if !listeners_only {
        set_seeded_below(ebpf, below)?;
    }
    Ok(seeded)
}

/// Tell the programs which cookies the snapshot seeded: those below
/// `below` (see `SEEDED_BELOW` in the eBPF crate).
fn set_seeded_below(ebpf: &mut Ebpf, below: u64) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut("SEEDED_BELOW")
        .ok_or(LoadError::Map("SEEDED_BELOW", "missing".into()))?;
    let mut array: Array<&mut MapData, u64> =
        Array::try_from(map).map_err(map_error("SEEDED_BELOW"))?;
    array.set(0, below, 0).map_err(map_error("SEEDED_BELOW"))
}

/// The kernel side of CLOSE_WAIT scanning: when a socket entered CLOSE_WAIT
/// and who owned it (`SOCKS`), and which ones userspace watches (`WATCH`).
pub struct CloseWaitMaps {
    socks: BpfHashMap<MapData, u64, SockInfo>,
    watch: BpfHashMap<MapData, u64, u8>,
}

impl CloseWaitMaps {
    /// Take the maps out of `ebpf` (after `seed_existing`, which uses SOCKS).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(CloseWaitMaps {
            socks: take_hash(ebpf, "SOCKS")?,
            watch: take_hash(ebpf, "WATCH")?,
        })
    }
}

impl CloseWaitKernel for CloseWaitMaps {
    fn entered(&self, cookie: u64) -> Option<(u64, Option<Task>)> {
        let info = self.socks.get(&cookie, 0).ok()?;
        Some(close_wait_entry(&info))
    }

    fn watch(&mut self, cookie: u64) {
        if let Err(e) = self.watch.insert(cookie, 1, 0) {
            log::warn!("watching a CLOSE_WAIT socket: {e}");
        }
    }

    fn occupancy(&self) -> Vec<(&'static str, MapUse)> {
        vec![
            (
                "SOCKS",
                occupancy(&self.socks, closetrace_common::SOCKS_CAPACITY),
            ),
            (
                "WATCH",
                occupancy(&self.watch, closetrace_common::WATCH_CAPACITY),
            ),
        ]
    }

    fn unwatch(&mut self, cookie: u64) {
        let _ = self.watch.remove(&cookie);
    }
}

/// How full a hash map is: its entries counted by walking its keys.
pub fn occupancy<T: std::borrow::Borrow<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &BpfHashMap<T, K, V>,
    capacity: u32,
) -> MapUse {
    MapUse {
        entries: map.keys().filter(Result::is_ok).count() as u32,
        capacity,
    }
}

/// How full one map still held by `ebpf` is, if it is there.
fn occupancy_in<K: aya::Pod, V: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
    capacity: u32,
) -> Option<(&'static str, MapUse)> {
    let map = BpfHashMap::<_, K, V>::try_from(ebpf.map(name)?).ok()?;
    Some((name, occupancy(&map, capacity)))
}

/// Occupancy of the kernel maps still held by `ebpf` (the ones taken out
/// are counted by their holders), for the summary.
pub fn occupancy_of_remaining(ebpf: &Ebpf) -> Vec<(&'static str, MapUse)> {
    use closetrace_common as c;
    [
        occupancy_in::<u64, SockInfo>(ebpf, "SOCKS", c::SOCKS_CAPACITY),
        occupancy_in::<u64, u8>(ebpf, "WATCH", c::WATCH_CAPACITY),
        occupancy_in::<ListenKey, ListenerInfo>(ebpf, "LISTENERS", c::LISTENERS_CAPACITY),
        occupancy_in::<u32, u8>(ebpf, "IN_SHUTDOWN", c::IN_SHUTDOWN_CAPACITY),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The kernel's CLOSE_WAIT entries per namespace slot, and its IPv6
/// activity in a second bank (`netns_ipv6_slot`), and which slots moved
/// since the last look: the namespaces a scan must read, and those whose
/// IPv6 sockets it must list.
pub struct NetnsActivity {
    map: PerCpuArray<MapData, u64>,
    last: Vec<u64>,
}

impl NetnsActivity {
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        NetnsActivity {
            map,
            last: vec![0; NETNS_ACTIVITY_SLOTS as usize],
        }
    }

    /// Slots of either bank whose count changed since the previous call
    /// (None if the map cannot be read: a scan then reads everything).
    pub fn moved(&mut self) -> Option<HashSet<u32>> {
        let mut moved = HashSet::new();
        for slot in 0..NETNS_ACTIVITY_SLOTS {
            let now: u64 = match self.map.get(&slot, 0) {
                Ok(per_cpu) => per_cpu.iter().sum(),
                Err(e) => {
                    log::warn!("reading NETNS_ACTIVITY: {e}");
                    return None;
                }
            };
            if now != self.last[slot as usize] {
                self.last[slot as usize] = now;
                moved.insert(slot);
            }
        }
        Some(moved)
    }
}
