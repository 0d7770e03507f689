//! Tracing, in named phases: check the host, resolve the selection, look
//! at the sockets already there, load and attach, start the coordinator,
//! announce `ready`, trace until stopped, then report the summary.
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use closetrace_core::app::cli::Cli;
use closetrace_core::app::coordinator::{Monitor, Settings};
use closetrace_core::app::worker::Worker;
use closetrace_core::host::holders::FdTables;
use closetrace_core::host::sockets::{self, KernelView};
use closetrace_core::host::{Host, System, cgroups, privileges, procs};
use closetrace_core::model::clock::{self, WallClock};
use closetrace_core::model::hooks::{Attach, HookReport, Mode};
use closetrace_core::model::netns::NetnsReach;
use closetrace_core::model::ports::PortPolicy;
use closetrace_core::output::records::{Ready, SCHEMA_VERSION};
use closetrace_core::output::sink::Sink;

use super::host::RunHost;
use super::select::{Selection, select};
use super::trace;
use crate::kernel::ids::SocketIds;
use crate::kernel::load::{self, Kernel};
use crate::kernel::{CloseHook, LoadOptions};
use crate::kernel::{maps, ring, selection::Upkeep};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    host_pids()?;
    let sel = select(&cli)?;
    load::preflight()?;
    let metrics_listener = bind_metrics(&cli)?;
    let out = open_output(&cli)?;
    if let Some(note) = load::ensure_tracefs() {
        log::info!("{note}");
    }
    let reach = reach(&sel);
    let mut existing = Existing::probe(reach);
    let ids = SocketIds::choose();
    let scan = scans_close_wait(&cli, &sel, &existing, &ids);
    let mut kernel = load::load(&LoadOptions {
        pids: &sel.pids,
        ring_bytes: cli.ring_bytes(),
        close_hook: cli.close_hook,
        stream_all: cli.states,
        scan: scan.then_some(reach),
        netns: sel.netns,
        cgroups: sel.cgroup.as_ref().map(|(_, ids)| ids.as_slice()),
        follow_forks: !sel.roots.is_empty(),
        owner_from_io: cli.owner_from_io,
        syscall_hooks: !cli.no_syscall_hooks,
        keyed_ids: ids.keyed(),
    })?;
    let pids = follow_late_children(&mut kernel, &sel)?;
    // Listed once the hooks are attached: a socket made since is seen by
    // them, and the kernel's BTF, parsed by the load, is freed by now.
    existing.look();
    let enters_namespaces = existing.readable && reach.switches(existing.own);
    kernel.hooks.push(existing.diag.clone());
    kernel.hooks.extend(ids.report());
    let clock = WallClock::sample();
    let (mut monitor, seeded, upkeep) = start_coordinator(
        &cli,
        &sel,
        &mut kernel,
        &existing,
        (scan, &ids),
        &pids,
        clock,
    )?;
    drop(existing);
    release_startup_memory();
    // Everything is loaded and attached: keep only what naming leak
    // holders needs.
    let privileges = privileges::drop_after_attach(enters_namespaces)
        .inspect_err(|e| {
            log::warn!("{e}; running with the capabilities it started with");
        })
        .ok();
    let color = cli.color.enabled(cli.output.is_none());
    let mut sink = Sink::new(cli.format, out, clock, color)
        .with_containers(Box::<cgroups::CgroupContainers>::default())
        .with_home_netns(sockets::own_netns().unwrap_or(0));
    let ready = Ready {
        version: SCHEMA_VERSION,
        closetrace: env!("CARGO_PKG_VERSION").into(),
        hooks: Cow::Borrowed(&kernel.hooks),
        pids: Cow::Borrowed(&pids),
        snapshot_sockets: seeded,
        close_wait_threshold_ms: cli.close_wait_threshold.as_millis().min(u64::MAX as u128) as u64,
        mode: if cli.states {
            Mode::States
        } else {
            Mode::Findings
        },
        pid_tree: Cow::Borrowed(&sel.roots),
        privileges: privileges.as_ref().map(Cow::Borrowed),
        netns: (sel.netns != 0).then_some(sel.netns),
        cgroup: sel.cgroup_name(),
    };
    sink.ready(ready)
        .and_then(|()| sink.flush())
        .context("writing output")?;
    let host = RunHost {
        system: System::new(reach).with_fd_tables(
            kernel
                .fd_tables
                .take()
                .map(|t| Box::new(t) as Box<dyn FdTables>),
        ),
        upkeep,
        activity: kernel.netns_activity.take(),
    };
    let started = Instant::now();
    let result = trace(
        &cli,
        kernel,
        host,
        &mut monitor,
        &mut sink,
        metrics_listener,
    );
    finish(&monitor, &mut sink, result, started.elapsed().as_secs_f64())
}

/// The summary, on stderr and as the last record; the run's verdict.
fn finish(
    monitor: &Monitor,
    sink: &mut Sink,
    result: io::Result<()>,
    elapsed: f64,
) -> anyhow::Result<()> {
    let summary = &monitor.summary;
    eprint!("{}", summary.to_text(elapsed));
    match result.and_then(|()| sink.summary(summary.to_record(elapsed))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            Err(anyhow!("output closed (broken pipe); stopped tracing"))
        }
        Err(e) => Err(anyhow!(e).context("writing output")),
    }
}

/// The kernel's hooks name processes by their pids in the initial PID
/// namespace; /proc must number them the same, or names, holders, start
/// times and `--pid` would all be another process's.
fn host_pids() -> anyhow::Result<()> {
    match procs::proc_pid_ns() {
        Some(ns) if ns != procs::INIT_PID_NS => anyhow::bail!(
            "/proc shows the processes of a PID namespace (pid:[{ns}]), not the host's: the \
             kernel names processes by their host pids, so names, fd holders and --pid would \
             not match. Run closetrace in the host's PID namespace (docker run --pid=host, \
             Kubernetes hostPID: true)"
        ),
        _ => Ok(()),
    }
}

/// Bound before anything is loaded: a busy or foreign address fails now.
fn bind_metrics(cli: &Cli) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = cli.metrics else {
        return Ok(None);
    };
    let l = TcpListener::bind(addr)
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    l.set_nonblocking(true).context("--metrics socket")?;
    Ok(Some(l))
}

/// Unbuffered: the sink gathers its records and writes them in large pieces.
fn open_output(cli: &Cli) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match &cli.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    })
}

/// Which network namespaces the host reads: `--netns`'s alone, else every
/// one when this process may enter them, else its own.
fn reach(sel: &Selection) -> NetnsReach {
    let own = sockets::own_netns().unwrap_or(0);
    if sel.netns != 0 {
        NetnsReach::One(sel.netns)
    } else if privileges::can_enter_namespaces() {
        NetnsReach::All { own }
    } else {
        log::warn!(
            "cannot enter other network namespaces (no CAP_SYS_ADMIN): only this one is \
             scanned; other namespaces' leaks are still reported from events, without \
             pre-existing ones, holders or TIME_WAIT reconciliation"
        );
        NetnsReach::Own(own)
    }
}

/// The sockets already there at start-up, in every namespace read, and
/// whether sock_diag can list them.
struct Existing {
    /// closetrace's own namespace.
    own: u32,
    /// The namespaces read.
    reach: NetnsReach,
    /// Whether the namespaces `reach` names can all be read from here.
    readable: bool,
    /// Empty until `look`.
    view: KernelView,
    /// Each namespace's port sysctls.
    policies: HashMap<u32, PortPolicy>,
    diag: HookReport,
}

impl Existing {
    /// Whether sock_diag answers here (tcp_diag is a module on distribution
    /// kernels, and may be absent: closetrace then traces anyway, and says
    /// what that costs), and each namespace's port sysctls.
    fn probe(reach: NetnsReach) -> Existing {
        let own = sockets::own_netns().unwrap_or(0);
        let readable = !reach.switches(own) || privileges::can_enter_namespaces();
        let policies = if readable {
            System::new(reach).port_policies()
        } else {
            HashMap::new()
        };
        let listening = 1 << closetrace_common::tcp_state::LISTEN;
        let diag = match sockets::tcp_sockets_both(listening, sockets::Ext::NONE) {
            Ok(_) => HookReport::ok("sock_diag", Attach::Netlink),
            Err(e) => HookReport::unavailable(
                "sock_diag",
                format!(
                    "{e} (load the tcp_diag module); sockets older than closetrace get no \
                     owner until they act, and leak holders, recv_q and TIME_WAIT \
                     reconciliation are unavailable"
                ),
            ),
        };
        Existing {
            own,
            reach,
            readable,
            view: KernelView::empty(),
            policies,
            diag,
        }
    }

    /// List the sockets (and their holders) in every namespace read.
    fn look(&mut self) {
        if !self.readable || !self.diag.attached() {
            return;
        }
        match System::new(self.reach).snapshot() {
            Ok(view) => self.view = view,
            Err(e) => log::warn!("listing the sockets already there: {e}"),
        }
    }
}

/// Default mode with sock_diag: CLOSE_WAIT sockets are found by scanning
/// every namespace read, so a prompt close costs no record (see
/// `CloseWaitKernel`). With --cgroup, or a --netns this process cannot
/// enter, CLOSE_WAIT sockets come from events, which the kernel filters;
/// the scan could not. Without cookies (`SocketIds::Keyed`) the kernel's
/// maps cannot be asked about sock_diag's sockets: events too.
fn scans_close_wait(cli: &Cli, sel: &Selection, existing: &Existing, ids: &SocketIds) -> bool {
    !cli.states
        && !ids.keyed()
        && existing.diag.attached()
        && existing.own != 0
        && existing.readable
        && sel.cgroup.is_none()
}

/// Children forked between the first walk of the tree and the fork hook
/// attaching: follow them too. Returns every process followed.
fn follow_late_children(kernel: &mut Kernel, sel: &Selection) -> anyhow::Result<Vec<u32>> {
    let mut pids = sel.pids.clone();
    if let Some(map) = kernel.pids.as_mut() {
        let tree = closetrace_core::host::filters::process_tree(&sel.roots).unwrap_or_default();
        for pid in tree {
            if !pids.contains(&pid) {
                map.insert(pid, 1, 0)
                    .context("adding to the followed processes")?;
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// The coordinator, seeded with what was there before start-up; how many
/// sockets were given an owner from /proc; and, with `--pid-tree` or
/// `--cgroup`, the upkeep of the kernel's selection maps.
fn start_coordinator(
    cli: &Cli,
    sel: &Selection,
    kernel: &mut Kernel,
    existing: &Existing,
    (scan, ids): (bool, &SocketIds),
    pids: &[u32],
    clock: WallClock,
) -> anyhow::Result<(Monitor, usize, Option<Upkeep>)> {
    let mut monitor = Monitor::new(
        Settings {
            threshold_ns: cli.close_wait_threshold.as_nanos().min(u64::MAX as u128) as u64,
            tw_warn: cli.tw_warn,
            pids: pids
                .iter()
                .map(|&p| (p, super::host::start_of(p)))
                .collect(),
            infer_closes: kernel.close_hook == CloseHook::Transitions,
            stream_all: cli.states,
            reach: existing.reach,
            port_policies: existing.policies.clone(),
            ids_are_cookies: !ids.keyed(),
        },
        clock,
    );
    let seeded = maps::seed_existing(&mut kernel.ebpf, &existing.view, kernel.owners_in_userspace)?;
    for s in &seeded {
        monitor
            .table_mut()
            .seed(s.cookie, s.netns, s.sport, s.state, s.owner.clone());
    }
    if scan {
        // The first tick's scan finds the CLOSE_WAIT sockets already here.
        monitor.scan_close_wait_with(Box::new(maps::CloseWaitMaps::take(&mut kernel.ebpf)?));
    } else {
        let cgroup_ids: Option<std::collections::HashSet<u64>> = sel
            .cgroup
            .as_ref()
            .map(|(_, ids)| ids.iter().copied().collect());
        let keep = |s: &sockets::DiagSocket| {
            (sel.netns == 0 || sel.netns == s.netns)
                && cgroup_ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&s.cgroup))
        };
        monitor.seed_leaks(&existing.view, clock::monotonic_ns(), &keep);
    }
    let upkeep = (kernel.pids.is_some() || kernel.cgroups.is_some()).then(|| {
        let dir = sel.cgroup.as_ref().map(|(dir, _)| dir.clone());
        Upkeep::new(kernel.pids.take(), dir.zip(kernel.cgroups.take()))
    });
    Ok((monitor, seeded.len(), upkeep))
}

/// Start-up parsed the kernel's BTF twice and listed every socket: hand
/// that memory back rather than keep it resident for the whole run.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Leaks are checked a few times per threshold, at most once per second.
fn tick_for(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Trace until a signal, `--duration` or an output failure; then detach,
/// so the summary is final.
fn trace(
    cli: &Cli,
    kernel: Kernel,
    host: RunHost,
    monitor: &mut Monitor,
    sink: &mut Sink,
    metrics_listener: Option<TcpListener>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let Kernel {
        ebpf,
        events,
        lost,
        transitions,
        hooks,
        ..
    } = kernel;
    let counters = ring::Counters {
        lost: &lost,
        transitions: &transitions,
    };
    let metrics = metrics_listener.as_ref().map(|_| {
        std::rc::Rc::new(std::cell::RefCell::new(
            closetrace_core::output::metrics::Metrics::new(&hooks),
        ))
    });
    monitor.metrics = metrics.clone();
    let tick = tick_for(cli.close_wait_threshold);
    // Spawned after privileges were dropped: a thread keeps the
    // capabilities it was created with.
    let mut worker = Worker::spawn(Box::new(host))?;
    let result = runtime.block_on(trace::trace(
        events,
        counters,
        &mut worker,
        monitor,
        sink,
        trace::Schedule {
            tick,
            duration: cli.duration,
            exporter: metrics_listener.zip(metrics),
        },
    ));
    monitor
        .summary
        .kernel_maps
        .extend(maps::occupancy_of_remaining(&ebpf));
    drop(ebpf);
    monitor
        .summary
        .set_transitions(counters.transition_counts());
    monitor.summary.errors_unattributed = counters.lost_count(closetrace_common::LOST_CALL_ARGS);
    result
}
