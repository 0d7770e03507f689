//! Pre-flight checks, loading the object, and handing out the maps
//! userspace reads. Every failure says what is missing and what to do;
//! optional hooks that do not attach degrade with a reason that the
//! `ready` record carries (see `attach`).
use std::fs;
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::{Btf, Ebpf};
use closetrace_common::{Config, OFFSET_ABSENT, SockOffsets};
use closetrace_core::host::{privileges, procs};
use closetrace_core::model::hooks::HookReport;
use closetrace_core::model::netns::NetnsReach;

use super::attach::{self, brief};
use super::attach_btf;
use super::maps::{NetnsActivity, take_hash, take_map};
use super::offsets;
use super::{CloseHook, LoadError, LoadOptions, SYSFS_BTF};

const TRACEFS: &str = "/sys/kernel/tracing";

/// The loaded programs and the maps userspace reads.
pub struct Kernel {
    /// Kept alive for as long as tracing runs: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub hooks: Vec<HookReport>,
    pub close_hook: CloseHook,
    pub events: RingBuf<MapData>,
    pub lost: PerCpuArray<MapData, u64>,
    pub transitions: PerCpuArray<MapData, u64>,
    /// CLOSE_WAIT entries per namespace slot: which namespaces to scan.
    pub netns_activity: Option<NetnsActivity>,
    /// `--pid`, `--pid-tree`: the followed processes, which the kernel
    /// extends with children (`--pid-tree`) and prunes as they exit.
    pub pids: Option<BpfHashMap<MapData, u32, u8>>,
    /// `--cgroup`: the cgroup ids seen, which userspace keeps up to date.
    pub cgroups: Option<BpfHashMap<MapData, u64, u8>>,
    /// The fd iterator, for the host worker; None where it did not load.
    pub fd_tables: Option<super::fds::FdIterator>,
    /// `--states` with lean owners: the kernel keeps no owner per socket
    /// (only listeners); userspace keeps them from the stream.
    pub owners_in_userspace: bool,
}

/// Checks that need no kernel calls: privileges and BTF.
pub fn preflight() -> Result<(), LoadError> {
    if !privileges::can_load_bpf() {
        return Err(LoadError::Privileges);
    }
    if !Path::new(SYSFS_BTF).exists() {
        return Err(LoadError::NoBtf);
    }
    Ok(())
}

/// tracefs holds the ids of classic tracepoints. Mount it when it is simply
/// not mounted; report (not fail) when that is impossible, since the hooks
/// closetrace requires are BTF tracepoints that do not need it.
pub fn ensure_tracefs() -> Option<String> {
    let mounted = fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
        })
        .unwrap_or(false);
    if mounted {
        return None;
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: constant NUL-terminated strings; mount(2) validates the rest.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    Some(if rc == 0 {
        format!("tracefs was not mounted; mounted it at {TRACEFS}")
    } else {
        format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({}); classic tracepoints unavailable",
            std::io::Error::last_os_error()
        )
    })
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/closetrace"));

/// Load the object configured for `opts`, fill the selection maps, attach
/// every hook, and take out the maps userspace reads.
pub fn load(opts: &LoadOptions<'_>) -> Result<Kernel, LoadError> {
    super::ids::check_floor()?;
    let config = config(opts)?;
    // Only the attach targets' ids, not the whole BTF (see `attach_btf`).
    let btf = attach_btf::read(Path::new(SYSFS_BTF), &attach::btf_targets())?;
    let mut ebpf = open(&btf, &config, opts.ring_bytes)?;
    fill_selection(&mut ebpf, opts)?;
    let (close_hook, mut hooks) = attach::attach_all(&mut ebpf, &btf, opts, config.task_regs != 0)?;
    let (fd_tables, fd_report) = super::fds::load(&btf, &config.offsets);
    hooks.push(fd_report);
    Ok(Kernel {
        events: RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?)
            .map_err(|e| LoadError::Map("EVENTS", e.to_string()))?,
        lost: PerCpuArray::try_from(take_map(&mut ebpf, "LOST")?)
            .map_err(|e| LoadError::Map("LOST", e.to_string()))?,
        transitions: PerCpuArray::try_from(take_map(&mut ebpf, "TRANSITIONS")?)
            .map_err(|e| LoadError::Map("TRANSITIONS", e.to_string()))?,
        netns_activity: Some(NetnsActivity::new(
            PerCpuArray::try_from(take_map(&mut ebpf, "NETNS_ACTIVITY")?)
                .map_err(|e| LoadError::Map("NETNS_ACTIVITY", e.to_string()))?,
        )),
        pids: if opts.pids.is_empty() {
            None
        } else {
            Some(take_hash(&mut ebpf, "PIDS")?)
        },
        cgroups: match opts.cgroups {
            Some(_) => Some(take_hash(&mut ebpf, "CGROUPS")?),
            None => None,
        },
        ebpf,
        hooks,
        close_hook,
        fd_tables,
        owners_in_userspace: config.lean_owners != 0 && config.stream_all != 0,
    })
}

/// The programs' configuration, with the running kernel's struct offsets.
fn config(opts: &LoadOptions<'_>) -> Result<Config, LoadError> {
    // Parsing the kernel's whole BTF is the largest allocation closetrace
    // could make: btf-rs's, for offsets, is made in a child process, so it
    // never counts here (aya gets a stand-in, see `attach_btf`).
    let offsets = offsets::resolve_in_child(Path::new(SYSFS_BTF))?;
    if opts.cgroups.is_some() && offsets.sk_cgroup == OFFSET_ABSENT {
        return Err(LoadError::NoSocketCgroups);
    }
    Ok(Config {
        offsets,
        filter_pids: u32::from(!opts.pids.is_empty()),
        stream_all: u32::from(opts.stream_all),
        // Wake the reader once an eighth of the ring is full; below that it
        // drains on its own timer. One wakeup per record costs more than the
        // record under churn.
        wakeup_bytes: opts.ring_bytes / 8,
        own_netns: opts.scan.map_or(0, |r| r.home()),
        filter_netns: opts.netns,
        filter_cgroups: u32::from(opts.cgroups.is_some()),
        follow_forks: u32::from(opts.follow_forks),
        tick_ns: procs::tick_ns() as u32,
        owner_from_io: u32::from(opts.owner_from_io),
        scan_all_netns: u32::from(matches!(opts.scan, Some(NetnsReach::All { .. }))),
        id_key: if opts.keyed_ids {
            super::ids::random_key()
        } else {
            0
        },
        // Kernels with keyed ids (or tests posing as one) take the older
        // kernels' path here too.
        task_btf: u32::from(!opts.keyed_ids && super::ids::task_btf_helper()),
        task_regs: u32::from(uses_task_regs(opts, &offsets)),
        lean_owners: u32::from(lean_owners(opts)),
        _pad: 0,
    })
}

/// Whether owners are kept only where findings need them
/// (`Config::lean_owners`), with no pid filter and no `--owner-from-io`
/// (both need the kernel to know every socket's owner), and either:
/// - `--states`: userspace sees every transition and accept(), so it
///   keeps the owners;
/// - or every socket the programs see is in a namespace the CLOSE_WAIT
///   scans read, so a leak is named by its holders. Sockets of a namespace
///   the scans cannot read are reported from events, which carry owners.
fn lean_owners(opts: &LoadOptions<'_>) -> bool {
    let all_scanned = match opts.scan {
        Some(NetnsReach::All { .. }) => true,
        Some(reach) => opts.netns != 0 && reach.home() == opts.netns,
        None => false,
    };
    (opts.stream_all || all_scanned) && opts.pids.is_empty() && !opts.owner_from_io
}

/// Whether syscall arguments come from the caller's registers at exit
/// (`Config::task_regs`); the keyed-ids tests take the older path too.
fn uses_task_regs(opts: &LoadOptions<'_>, offsets: &SockOffsets) -> bool {
    !opts.keyed_ids
        && super::ids::task_regs_helper()
        && [offsets.regs_syscall, offsets.regs_arg1, offsets.regs_arg2]
            .iter()
            .all(|&o| o != OFFSET_ABSENT)
}

/// The object, loaded into the kernel with `config` (no program attached).
fn open(btf: &Btf, config: &Config, ring_bytes: u32) -> Result<Ebpf, LoadError> {
    attach_btf::loader()
        .btf(Some(btf))
        .override_global("CONFIG", config, true)
        .map_max_entries("EVENTS", ring_bytes)
        .load(OBJECT)
        .map_err(|e| {
            let text = brief(e);
            if text.contains("Operation not permitted") {
                LoadError::Privileges
            } else {
                LoadError::Load(text)
            }
        })
}

/// `--pid` and `--cgroup` in the kernel's selection maps.
fn fill_selection(ebpf: &mut Ebpf, opts: &LoadOptions<'_>) -> Result<(), LoadError> {
    let mut pids: BpfHashMap<_, u32, u8> = super::maps::hash_mut(ebpf, "PIDS")?;
    for pid in opts.pids {
        pids.insert(pid, 1, 0)
            .map_err(|e| LoadError::Map("PIDS", e.to_string()))?;
    }
    if let Some(ids) = opts.cgroups {
        let mut map: BpfHashMap<_, u64, u8> = super::maps::hash_mut(ebpf, "CGROUPS")?;
        for id in ids {
            map.insert(id, 1, 0)
                .map_err(|e| LoadError::Map("CGROUPS", e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use closetrace_core::kernel::CloseHookChoice;

    fn opts(scan: Option<NetnsReach>) -> LoadOptions<'static> {
        LoadOptions {
            pids: &[],
            ring_bytes: 1 << 20,
            close_hook: CloseHookChoice::Auto,
            stream_all: false,
            scan,
            netns: 0,
            cgroups: None,
            follow_forks: false,
            owner_from_io: false,
            syscall_hooks: true,
            keyed_ids: false,
        }
    }

    #[test]
    fn owners_are_lean_only_where_every_socket_seen_is_scanned() {
        let all = Some(NetnsReach::All { own: 7 });
        assert!(lean_owners(&opts(all)));
        // Only its own namespace scanned: the others' leaks come from
        // events, which carry owners.
        assert!(!lean_owners(&opts(Some(NetnsReach::Own(7)))));
        assert!(!lean_owners(&opts(None)));
        // ... unless --netns keeps only that namespace in view.
        let own_only = LoadOptions {
            netns: 7,
            ..opts(Some(NetnsReach::Own(7)))
        };
        assert!(lean_owners(&own_only));
        let elsewhere = LoadOptions {
            netns: 9,
            ..opts(Some(NetnsReach::Own(7)))
        };
        assert!(!lean_owners(&elsewhere));
        // --states keeps them in userspace, with or without scans.
        let states = LoadOptions {
            stream_all: true,
            ..opts(None)
        };
        assert!(lean_owners(&states));
        // Modes that filter by owners keep them per connection.
        let pids = LoadOptions {
            pids: &[42],
            ..opts(all)
        };
        let io = LoadOptions {
            owner_from_io: true,
            ..opts(all)
        };
        let states_of_pids = LoadOptions {
            pids: &[42],
            ..states
        };
        for o in [pids, io, states_of_pids] {
            assert!(!lean_owners(&o));
        }
    }
}
