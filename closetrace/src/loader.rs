//! Pre-flight checks, loading, attaching and seeding the kernel side.
//! Every failure says what is missing and what to do; optional hooks that do
//! not attach degrade with a reason that the `ready` record carries.
use std::fs;
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, FEntry, KProbe, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use closetrace_common::{
    COMM_LEN, Config, ListenKey, ListenerInfo, SockInfo, TaskId, owner_src, tcp_state::LISTEN,
};
use thiserror::Error;

use crate::offsets::{self, OffsetError};
use crate::owners::OwnerTable;
use crate::records::HookReport;
use crate::snapshot::KernelView;

pub const SYSFS_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";

/// bpf_map_update_elem flag: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "missing privileges: closetrace needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load \
         its eBPF programs; run it as root, e.g. `sudo closetrace`"
    )]
    Privileges,
    #[error(
        "this kernel exposes no BTF ({SYSFS_BTF} is missing): closetrace needs a kernel built \
         with CONFIG_DEBUG_INFO_BTF=y (5.8 or later)"
    )]
    NoBtf,
    #[error("{0}")]
    Offsets(#[from] OffsetError),
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    #[error("attaching {hook} failed: {reason}")]
    Attach { hook: String, reason: String },
    #[error("kernel map {0}: {1}")]
    Map(&'static str, String),
    #[error("--cgroup: this kernel does not expose sockets' cgroups (no sock.sk_cgrp_data in BTF)")]
    NoSocketCgroups,
}

#[cfg(test)]
mod tests {
    #[test]
    fn verifier_logs_are_cut_to_their_verdict() {
        let log = (0..5000)
            .map(|i| format!("{i}: (79) r2 = *(u64 *)(r1 +16)\n"))
            .collect::<String>();
        let msg = super::brief(format!(
            "load failed. Verifier output: {log}R4 !read_ok\nprocessed 652 insns"
        ));
        assert!(msg.len() < 600, "{}", msg.len());
        assert!(msg.starts_with("load failed. verifier: ..."), "{msg}");
        assert!(
            msg.contains("R4 !read_ok | processed 652 insns (full log: RUST_LOG=debug)"),
            "{msg}"
        );
        assert_eq!(super::brief("plain error"), "plain error");
    }
}

/// What the kernel side needs from the command line.
pub struct LoadOptions<'a> {
    pub pids: &'a [u32],
    pub ring_bytes: u32,
    pub close_hook: CloseHookChoice,
    /// `--states`: every transition and close, not only what findings need.
    pub stream_all: bool,
    /// In the default mode, the namespace whose CLOSE_WAIT sockets
    /// userspace finds by sock_diag scans rather than events (see
    /// `Config::own_netns`); 0 when it cannot scan.
    pub scan_netns: u32,
    /// `--netns`: the only namespace seen (inode); 0 for all.
    pub netns: u32,
    /// `--cgroup`: the cgroup ids seen (a subtree); `None` for all.
    pub cgroups: Option<&'a [u64]>,
    /// `--pid-tree`: children of followed processes are followed.
    pub follow_forks: bool,
}

/// How application closes are observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseHook {
    Fentry,
    Kprobe,
    /// Neither loads: inferred from owner-context transitions.
    Transitions,
}

/// The loaded programs and the maps userspace reads.
pub struct Kernel {
    /// Kept alive for as long as tracing runs: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub hooks: Vec<HookReport>,
    pub close_hook: CloseHook,
    pub events: RingBuf<MapData>,
    pub lost: PerCpuArray<MapData, u64>,
    pub transitions: PerCpuArray<MapData, u64>,
    /// `--pid`, `--pid-tree`: the followed processes, which the kernel
    /// extends with children (`--pid-tree`) and prunes as they exit.
    pub pids: Option<BpfHashMap<MapData, u32, u8>>,
    /// `--cgroup`: the cgroup ids seen, which userspace keeps up to date.
    pub cgroups: Option<BpfHashMap<MapData, u64, u8>>,
}

fn has_cap(mask: u64, cap: u32) -> bool {
    mask & (1u64 << cap) != 0
}

/// Effective capabilities from /proc/self/status.
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Checks that need no kernel calls: privileges and BTF.
pub fn preflight() -> Result<(), LoadError> {
    let caps = effective_caps();
    let enough =
        has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON));
    if !enough {
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

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> LoadError {
    move |e| LoadError::Map(name, e.to_string())
}

pub fn load(opts: &LoadOptions<'_>) -> Result<Kernel, LoadError> {
    // Two parses of the kernel's BTF (ours for offsets, aya's for loading)
    // are the largest allocations closetrace ever makes: never hold both.
    let offsets = {
        let vmlinux = offsets::load_btf(Path::new(SYSFS_BTF))?;
        offsets::resolve(&vmlinux)?
    };
    let config = Config {
        offsets,
        filter_pids: u32::from(!opts.pids.is_empty()),
        stream_all: u32::from(opts.stream_all),
        // Wake the reader once an eighth of the ring is full; below that it
        // drains on its own timer. One wakeup per record costs more than the
        // record under churn.
        wakeup_bytes: opts.ring_bytes / 8,
        own_netns: opts.scan_netns,
        filter_netns: opts.netns,
        filter_cgroups: u32::from(opts.cgroups.is_some()),
        follow_forks: u32::from(opts.follow_forks),
        tick_ns: crate::procs::tick_ns() as u32,
    };
    if opts.cgroups.is_some() && offsets.sk_cgroup == closetrace_common::OFFSET_ABSENT {
        return Err(LoadError::NoSocketCgroups);
    }
    let btf =
        Btf::from_sys_fs().map_err(|e| LoadError::Load(format!("reading kernel BTF: {e}")))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", opts.ring_bytes)
        .load(OBJECT)
        .map_err(|e| {
            let text = brief(e);
            if text.contains("Operation not permitted") {
                LoadError::Privileges
            } else {
                LoadError::Load(text)
            }
        })?;

    let mut pids: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
        ebpf.map_mut("PIDS")
            .ok_or(LoadError::Map("PIDS", "missing".into()))?,
    )
    .map_err(map_err("PIDS"))?;
    for pid in opts.pids {
        pids.insert(pid, 1, 0).map_err(map_err("PIDS"))?;
    }
    if let Some(ids) = opts.cgroups {
        let mut map: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
            ebpf.map_mut("CGROUPS")
                .ok_or(LoadError::Map("CGROUPS", "missing".into()))?,
        )
        .map_err(map_err("CGROUPS"))?;
        for id in ids {
            map.insert(id, 1, 0).map_err(map_err("CGROUPS"))?;
        }
    }

    let mut hooks = Vec::new();
    // The state hook is the tool; without it there is nothing to run.
    attach_btf_tp(
        &mut ebpf,
        &btf,
        "inet_sock_set_state",
        "sock:inet_sock_set_state",
    )
    .map_err(|reason| LoadError::Attach {
        hook: "sock:inet_sock_set_state".into(),
        reason,
    })?;
    hooks.push(ok_hook("sock:inet_sock_set_state", "tp_btf"));
    // Owner refresh from send/recv: optional (the tracepoints are 6.3+).
    for (prog, hook) in [
        ("sock_send_length", "sock:sock_send_length"),
        ("sock_recv_length", "sock:sock_recv_length"),
    ] {
        hooks.push(optional_hook(
            hook,
            "tp_btf",
            attach_btf_tp(&mut ebpf, &btf, prog, hook),
            "owners of accepted sockets come from their listener until the acceptor closes or \
             shuts them down",
        ));
    }
    hooks.push(optional_hook(
        "tcp:tcp_receive_reset",
        "tp_btf",
        attach_btf_tp(
            &mut ebpf,
            &btf,
            "tcp_receive_reset",
            "tcp:tcp_receive_reset",
        ),
        "a peer's reset is told from a close only by the socket's pending error",
    ));
    let shutdown = attach_tracepoint(
        &mut ebpf,
        "sys_enter_shutdown",
        "syscalls",
        "sys_enter_shutdown",
    )
    .and_then(|()| {
        attach_tracepoint(
            &mut ebpf,
            "sys_exit_shutdown",
            "syscalls",
            "sys_exit_shutdown",
        )
    });
    hooks.push(optional_hook(
        "syscalls:sys_enter_shutdown/sys_exit_shutdown",
        "tracepoint",
        shutdown,
        "shutdown(SHUT_WR) cannot be told from close(); half-closes count as closes",
    ));
    let calls = ["connect", "bind"].iter().try_for_each(|call| {
        let (enter, exit) = (format!("sys_enter_{call}"), format!("sys_exit_{call}"));
        attach_tracepoint(&mut ebpf, &enter, "syscalls", &enter)?;
        attach_tracepoint(&mut ebpf, &exit, "syscalls", &exit)
    });
    hooks.push(optional_hook(
        "syscalls:sys_enter/exit_connect, sys_enter/exit_bind",
        "tracepoint",
        calls,
        "connect() EADDRNOTAVAIL and bind() EADDRINUSE failures are not reported",
    ));
    let (close_hook, report) = attach_close_hook(&mut ebpf, &btf, opts.close_hook);
    hooks.push(report);
    if opts.follow_forks {
        // Without it --pid-tree would silently follow only the processes
        // there at start: refuse instead.
        let hook = "sched:sched_process_fork";
        attach_btf_tp(&mut ebpf, &btf, "sched_process_fork", hook).map_err(|reason| {
            LoadError::Attach {
                hook: hook.into(),
                reason,
            }
        })?;
        hooks.push(ok_hook(hook, "tp_btf"));
    }
    let follows_pids = !opts.pids.is_empty();
    if follows_pids {
        let hook = "sched:sched_process_exit";
        let attached = attach_btf_tp(&mut ebpf, &btf, "sched_process_exit", hook);
        if opts.follow_forks {
            attached.clone().map_err(|reason| LoadError::Attach {
                hook: hook.into(),
                reason,
            })?;
        }
        hooks.push(optional_hook(
            hook,
            "tp_btf",
            attached,
            "a followed process that exits stays followed, and so would a new process reusing \
             its pid",
        ));
    }

    let events = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .ok_or(LoadError::Map("EVENTS", "missing".into()))?,
    )
    .map_err(map_err("EVENTS"))?;
    let lost = PerCpuArray::try_from(
        ebpf.take_map("LOST")
            .ok_or(LoadError::Map("LOST", "missing".into()))?,
    )
    .map_err(map_err("LOST"))?;
    let transitions = PerCpuArray::try_from(
        ebpf.take_map("TRANSITIONS")
            .ok_or(LoadError::Map("TRANSITIONS", "missing".into()))?,
    )
    .map_err(map_err("TRANSITIONS"))?;
    let pids = if follows_pids {
        Some(take_hash(&mut ebpf, "PIDS")?)
    } else {
        None
    };
    let cgroups = if opts.cgroups.is_some() {
        Some(take_hash(&mut ebpf, "CGROUPS")?)
    } else {
        None
    };
    Ok(Kernel {
        ebpf,
        hooks,
        close_hook,
        events,
        lost,
        transitions,
        pids,
        cgroups,
    })
}

/// How full a hash map is: its entries counted by walking its keys.
pub fn occupancy<T: std::borrow::Borrow<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &BpfHashMap<T, K, V>,
    capacity: u32,
) -> crate::summary::MapUse {
    crate::summary::MapUse {
        entries: map.keys().filter(Result::is_ok).count() as u32,
        capacity,
    }
}

/// Occupancy of the kernel maps still held by `ebpf` (the ones taken out
/// are counted by their holders), for the summary.
pub fn map_occupancy(ebpf: &Ebpf) -> Vec<(&'static str, crate::summary::MapUse)> {
    use closetrace_common as c;
    let mut out = Vec::new();
    let mut add = |name: &'static str,
                   use_: Result<crate::summary::MapUse, aya::maps::MapError>| {
        if let Ok(u) = use_ {
            out.push((name, u));
        }
    };
    let get = |name: &str| {
        ebpf.map(name)
            .ok_or(aya::maps::MapError::InvalidName { name: name.into() })
    };
    add(
        "SOCKS",
        get("SOCKS").and_then(|m| {
            BpfHashMap::<_, u64, SockInfo>::try_from(m).map(|h| occupancy(&h, c::SOCKS_CAPACITY))
        }),
    );
    add(
        "WATCH",
        get("WATCH").and_then(|m| {
            BpfHashMap::<_, u64, u8>::try_from(m).map(|h| occupancy(&h, c::WATCH_CAPACITY))
        }),
    );
    add(
        "LISTENERS",
        get("LISTENERS").and_then(|m| {
            BpfHashMap::<_, ListenKey, ListenerInfo>::try_from(m)
                .map(|h| occupancy(&h, c::LISTENERS_CAPACITY))
        }),
    );
    add(
        "IN_SHUTDOWN",
        get("IN_SHUTDOWN").and_then(|m| {
            BpfHashMap::<_, u32, u8>::try_from(m).map(|h| occupancy(&h, c::IN_SHUTDOWN_CAPACITY))
        }),
    );
    out
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, LoadError> {
    BpfHashMap::try_from(
        ebpf.take_map(name)
            .ok_or(LoadError::Map(name, "missing".into()))?,
    )
    .map_err(map_err(name))
}

/// An aya error as one readable message: a rejected program's verifier log
/// runs to tens of kilobytes, so keep its last lines (where the verdict is)
/// and leave the whole log to `RUST_LOG=debug`.
fn brief(err: impl std::fmt::Display) -> String {
    let text = format!("{err:#}");
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text;
    };
    log::debug!("full verifier log:{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
    format!(
        "{} verifier: ...{tail} (full log: RUST_LOG=debug)",
        head.trim_end()
    )
}

fn ok_hook(hook: &str, attach: &str) -> HookReport {
    HookReport {
        hook: hook.into(),
        attach: attach.into(),
        status: "ok",
        reason: None,
    }
}

fn optional_hook(hook: &str, attach: &str, result: Result<(), String>, cost: &str) -> HookReport {
    match result {
        Ok(()) => ok_hook(hook, attach),
        Err(reason) => HookReport {
            hook: hook.into(),
            attach: "none".into(),
            status: "unavailable",
            reason: Some(format!("{reason}; {cost}")),
        },
    }
}

/// Which tcp_close methods to try (`--close-hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseHookChoice {
    /// fentry, else kprobe, else inference from transitions.
    Auto,
    Fentry,
    Kprobe,
    Transitions,
}

/// tcp_close: fentry, else kprobe, else inference from transitions (or only
/// what `choice` allows); the report says which, and why each better method
/// was refused or not tried.
fn attach_close_hook(
    ebpf: &mut Ebpf,
    btf: &Btf,
    choice: CloseHookChoice,
) -> (CloseHook, HookReport) {
    use CloseHookChoice::*;
    let not_tried = |m: &str| format!("{m} not tried (--close-hook {choice:?})").to_lowercase();
    let fentry_err = if matches!(choice, Auto | Fentry) {
        let r = (|| -> Result<(), String> {
            let p: &mut FEntry = program(ebpf, "tcp_close_fentry")?;
            p.load("tcp_close", btf)
                .map_err(|e| format!("fentry: load: {}", brief(e)))?;
            p.attach()
                .map_err(|e| format!("fentry: attach: {}", brief(e)))?;
            Ok(())
        })();
        match r {
            Ok(()) => return (CloseHook::Fentry, ok_hook("tcp_close", "fentry")),
            Err(e) if e.contains("Operation not permitted") => {
                "fentry refused: BPF_PROG_LOAD returned EPERM (this kernel refuses BPF trampolines)"
                    .into()
            }
            Err(e) => e,
        }
    } else {
        not_tried("fentry")
    };
    let kprobe_err = if matches!(choice, Auto | Kprobe) {
        let r = (|| -> Result<(), String> {
            let p: &mut KProbe = program(ebpf, "tcp_close_kprobe")?;
            p.load()
                .map_err(|e| format!("kprobe: load: {}", brief(e)))?;
            p.attach("tcp_close", 0)
                .map_err(|e| format!("kprobe: attach: {}", brief(e)))?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                let mut report = ok_hook("tcp_close", "kprobe");
                report.status = "degraded";
                report.reason = Some(format!(
                    "{fentry_err}; kprobe works the same, a little slower"
                ));
                return (CloseHook::Kprobe, report);
            }
            Err(e) if e.contains("devices/kprobe") => {
                "kprobe unavailable: no kprobe event source (/sys/bus/event_source/devices/kprobe; \
                 kernel built without CONFIG_KPROBES)"
                    .to_string()
            }
            Err(e) => e,
        }
    } else {
        not_tried("kprobe")
    };
    let report = HookReport {
        hook: "tcp_close".into(),
        attach: "transitions".into(),
        status: "degraded",
        reason: Some(format!(
            "{fentry_err}; {kprobe_err}; closes are inferred from the transitions only a close \
             causes, in the closer's context (closing a socket already in CLOSE goes unseen)"
        )),
    };
    (CloseHook::Transitions, report)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| format!("{e}"))
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(), String> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load()
        .map_err(|e| format!("{category}:{name}: load: {e:#}"))?;
    p.attach(category, name)
        .map_err(|e| format!("{category}:{name}: attach: {e:#}"))?;
    Ok(())
}

fn attach_btf_tp(ebpf: &mut Ebpf, btf: &Btf, prog: &str, tracepoint: &str) -> Result<(), String> {
    let p: &mut BtfTracePoint = program(ebpf, prog)?;
    p.load(prog, btf)
        .map_err(|e| format!("{tracepoint}: load: {e:#}"))?;
    p.attach()
        .map_err(|e| format!("{tracepoint}: attach: {e:#}"))?;
    Ok(())
}

/// Give sockets that existed before start-up the owner found in /proc, in the
/// kernel maps (so the programs report them right) and in `table`. Never
/// overwrites what the programs already learned since attaching.
pub fn seed_existing(
    kernel: &mut Kernel,
    table: &mut OwnerTable,
    view: &KernelView,
    netns: u32,
) -> Result<usize, LoadError> {
    let [Some(sock_map), Some(listen_map)] = kernel.ebpf.maps_disjoint_mut(["SOCKS", "LISTENERS"])
    else {
        return Err(LoadError::Map("SOCKS", "missing".into()));
    };
    let mut sock_map: BpfHashMap<_, u64, SockInfo> =
        BpfHashMap::try_from(sock_map).map_err(map_err("SOCKS"))?;
    let mut listen_map: BpfHashMap<_, ListenKey, ListenerInfo> =
        BpfHashMap::try_from(listen_map).map_err(map_err("LISTENERS"))?;
    let mut seeded = 0;
    for s in view.by_cookie.values() {
        // Several holders (fork, fd passing): the lowest pid is usually the
        // parent that made it; good enough for ownership of the stream.
        let Some(h) = view.holders_of(s.cookie).iter().min_by_key(|h| h.pid) else {
            continue;
        };
        let Ok(state) = crate::model::TcpState::try_from(s.state as u32) else {
            continue;
        };
        let owner = TaskId {
            tgid: h.pid,
            tid: h.pid,
            comm: comm_bytes(&h.comm),
            // Back to the kernel's unit; decoding rounds it to ticks again.
            start_ns: h.start.map_or(0, |t| t * crate::procs::tick_ns()),
        };
        let info = SockInfo {
            owner,
            owner_src: owner_src::SNAPSHOT,
            state: s.state as u32,
            since_ns: 0,
            flags: 0,
            _pad: 0,
        };
        // BPF_NOEXIST: what the programs saw since attaching is fresher.
        let _ = sock_map.insert(s.cookie, info, BPF_NOEXIST);
        if s.state as u32 == LISTEN {
            let key = ListenKey {
                netns,
                port: s.sport,
                _pad: 0,
            };
            let info = ListenerInfo {
                owner,
                cookie: s.cookie,
            };
            let _ = listen_map.insert(key, info, BPF_NOEXIST);
        }
        let task = crate::model::Task {
            pid: h.pid,
            tid: h.pid,
            comm: h.comm.clone(),
            start: h.start,
        };
        table.seed(s.cookie, netns, s.sport, state, task);
        seeded += 1;
    }
    Ok(seeded)
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
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or(LoadError::Map(name, "missing".into()))
        };
        let (socks, watch) = (take("SOCKS")?, take("WATCH")?);
        Ok(CloseWaitMaps {
            socks: BpfHashMap::try_from(socks).map_err(map_err("SOCKS"))?,
            watch: BpfHashMap::try_from(watch).map_err(map_err("WATCH"))?,
        })
    }
}

impl crate::monitor::CloseWaitKernel for CloseWaitMaps {
    fn entered(&self, cookie: u64) -> Option<(u64, Option<crate::model::Task>)> {
        let info = self.socks.get(&cookie, 0).ok()?;
        let since = if info.state == closetrace_common::tcp_state::CLOSE_WAIT {
            info.since_ns
        } else {
            0
        };
        let owner = (info.owner_src != owner_src::UNKNOWN && info.owner.tgid != 0)
            .then(|| crate::decode::task(&info.owner));
        Some((since, owner))
    }

    fn watch(&mut self, cookie: u64) {
        if let Err(e) = self.watch.insert(cookie, 1, 0) {
            log::warn!("watching a CLOSE_WAIT socket: {e}");
        }
    }

    fn occupancy(&self) -> Vec<(&'static str, crate::summary::MapUse)> {
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

fn comm_bytes(s: &str) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    let n = s.len().min(COMM_LEN - 1);
    c[..n].copy_from_slice(&s.as_bytes()[..n]);
    c
}
