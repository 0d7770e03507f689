//! Attaching: the required state hook, the optional ones (each degrading
//! with a reason and its cost when it does not attach), and tcp_close's
//! fallback chain: fentry, else kprobe, else inference from transitions.
use aya::programs::{BtfTracePoint, FEntry, KProbe, TracePoint};
use aya::{Btf, Ebpf};
use closetrace_core::kernel::CloseHookChoice;
use closetrace_core::model::hooks::{Attach, HookReport};

use super::attach_btf::TargetKind;
use super::{CloseHook, LoadError, LoadOptions};

/// Every hook `opts` asks for. Fails only when a hook closetrace cannot do
/// without fails; the reports say how each of the others came up.
pub fn attach_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    opts: &LoadOptions<'_>,
    task_regs: bool,
) -> Result<(CloseHook, Vec<HookReport>), LoadError> {
    let mut hooks = Vec::new();
    // The state hook is the tool; without it there is nothing to run.
    required(
        attach_btf_tp(ebpf, btf, "inet_sock_set_state", "sock:inet_sock_set_state"),
        "sock:inet_sock_set_state",
    )?;
    hooks.push(HookReport::ok("sock:inet_sock_set_state", Attach::TpBtf));
    attach_owner_hooks(ebpf, btf, opts, &mut hooks);
    attach_optional(ebpf, opts.syscall_hooks, task_regs, &mut hooks);
    let (close_hook, report) = attach_close_hook(ebpf, btf, opts.close_hook);
    hooks.push(report);
    attach_process_hooks(ebpf, btf, opts, &mut hooks)?;
    Ok((close_hook, hooks))
}

/// The `tp_btf` tracepoints and fentry functions any configuration may
/// attach to: what `attach_btf` finds in the kernel's BTF.
const BTF_TRACEPOINTS: &[&str] = &[
    "inet_sock_set_state",
    "sock_send_length",
    "sock_recv_length",
    "sched_process_fork",
    "sched_process_exit",
];
const FENTRY_FUNCTIONS: &[&str] = &["tcp_close"];
/// What the fd iterator (`fds`, `iter/task_file`) loads against.
const ITER_FUNCTIONS: &[&str] = &["bpf_iter_task_file"];

/// The kernel BTF names aya looks up to attach the programs above
/// (`btf_trace_<tracepoint>` typedefs, and functions).
pub fn btf_targets() -> Vec<(TargetKind, String)> {
    let tracepoints = BTF_TRACEPOINTS
        .iter()
        .map(|tp| (TargetKind::Typedef, format!("btf_trace_{tp}")));
    let functions = FENTRY_FUNCTIONS
        .iter()
        .chain(ITER_FUNCTIONS)
        .map(|f| (TargetKind::Func, f.to_string()));
    tracepoints.chain(functions).collect()
}

fn required(result: Result<(), String>, hook: &str) -> Result<(), LoadError> {
    result.map_err(|reason| LoadError::Attach {
        hook: hook.into(),
        reason,
    })
}

/// Where accepted sockets' owners come from: accept(), once a connection
/// (with lean owners it only catches EMFILE/ENFILE); every send and
/// receive too with `--owner-from-io`.
fn attach_owner_hooks(
    ebpf: &mut Ebpf,
    btf: &Btf,
    opts: &LoadOptions<'_>,
    hooks: &mut Vec<HookReport>,
) {
    hooks.push(syscall_hook(
        opts.syscall_hooks,
        "syscalls:sys_exit_accept/sys_exit_accept4",
        "accept() failing for want of fds (EMFILE, ENFILE) is not reported, and accepted \
         sockets are owned by their listener's owner until the acceptor closes or shuts them \
         down",
        || attach_syscall_exit(ebpf, "accept").and_then(|()| attach_syscall_exit(ebpf, "accept4")),
    ));
    if !opts.owner_from_io {
        return;
    }
    // The tracepoints are 6.3+.
    for (prog, hook) in [
        ("sock_send_length", "sock:sock_send_length"),
        ("sock_recv_length", "sock:sock_recv_length"),
    ] {
        hooks.push(optional_hook(
            hook,
            Attach::TpBtf,
            attach_btf_tp(ebpf, btf, prog, hook),
            "owners are not refreshed from I/O (--owner-from-io)",
        ));
    }
}

/// Hooks whose absence costs one detail, each said in its report. With
/// `task_regs` (5.15+) only syscall exits are hooked: bind()'s arguments
/// and shutdown(2) are read from the caller's registers. A syscall entry
/// hook slows every syscall on the host even when it runs nothing (see
/// `xtask bench`'s syscall rows). A peer's reset and a failed connect()
/// need no hook: the state program tells them by `sk_err` and
/// `sk_shutdown` (see `connect_failed` in the eBPF crate).
fn attach_optional(ebpf: &mut Ebpf, syscalls: bool, task_regs: bool, hooks: &mut Vec<HookReport>) {
    const NO_BIND_ERRORS: &str = "bind() EADDRINUSE and EADDRNOTAVAIL failures are not reported";
    if task_regs {
        hooks.push(syscall_hook(
            syscalls,
            "syscalls:sys_exit_bind",
            NO_BIND_ERRORS,
            || attach_syscall_exit(ebpf, "bind"),
        ));
        return;
    }
    hooks.push(syscall_hook(
        syscalls,
        "syscalls:sys_enter_shutdown/sys_exit_shutdown",
        "shutdown(SHUT_WR) cannot be told from close(); half-closes count as closes",
        || attach_syscall(ebpf, "shutdown"),
    ));
    hooks.push(syscall_hook(
        syscalls,
        "syscalls:sys_enter/exit_bind",
        NO_BIND_ERRORS,
        || attach_syscall(ebpf, "bind"),
    ));
}

/// `--pid-tree` needs the fork hook (without it, it would silently follow
/// only the processes there at start: refuse instead); `--pid` prunes
/// exited processes with the exit hook.
fn attach_process_hooks(
    ebpf: &mut Ebpf,
    btf: &Btf,
    opts: &LoadOptions<'_>,
    hooks: &mut Vec<HookReport>,
) -> Result<(), LoadError> {
    if opts.follow_forks {
        let hook = "sched:sched_process_fork";
        required(attach_btf_tp(ebpf, btf, "sched_process_fork", hook), hook)?;
        hooks.push(HookReport::ok(hook, Attach::TpBtf));
    }
    if !opts.pids.is_empty() {
        let hook = "sched:sched_process_exit";
        let attached = attach_btf_tp(ebpf, btf, "sched_process_exit", hook);
        if opts.follow_forks {
            required(attached.clone(), hook)?;
        }
        hooks.push(optional_hook(
            hook,
            Attach::TpBtf,
            attached,
            "a followed process that exits stays followed, and so would a new process reusing \
             its pid",
        ));
    }
    Ok(())
}

fn optional_hook(hook: &str, attach: Attach, result: Result<(), String>, cost: &str) -> HookReport {
    match result {
        Ok(()) => HookReport::ok(hook, attach),
        Err(reason) => HookReport::unavailable(hook, format!("{reason}; {cost}")),
    }
}

/// A syscall tracepoint hook, attached by `attach` unless
/// `--no-syscall-hooks` turned them off; `cost` is what its absence costs.
fn syscall_hook(
    on: bool,
    hook: &str,
    cost: &str,
    attach: impl FnOnce() -> Result<(), String>,
) -> HookReport {
    if !on {
        return HookReport::off(hook, format!("--no-syscall-hooks; {cost}"));
    }
    optional_hook(hook, Attach::Tracepoint, attach(), cost)
}

/// A syscall's exit tracepoint (program `sys_exit_NAME`).
fn attach_syscall_exit(ebpf: &mut Ebpf, call: &str) -> Result<(), String> {
    let exit = format!("sys_exit_{call}");
    attach_tracepoint(ebpf, &exit, "syscalls", &exit)
}

/// A syscall's enter and exit tracepoints (programs `sys_enter_NAME` and
/// `sys_exit_NAME`).
fn attach_syscall(ebpf: &mut Ebpf, call: &str) -> Result<(), String> {
    let (enter, exit) = (format!("sys_enter_{call}"), format!("sys_exit_{call}"));
    attach_tracepoint(ebpf, &enter, "syscalls", &enter)?;
    attach_tracepoint(ebpf, &exit, "syscalls", &exit)
}

/// tcp_close: fentry, else kprobe, else inference from transitions (or only
/// what `choice` allows); the report says which, and why each better method
/// was refused or not tried.
pub fn attach_close_hook(
    ebpf: &mut Ebpf,
    btf: &Btf,
    choice: CloseHookChoice,
) -> (CloseHook, HookReport) {
    use CloseHookChoice::*;
    let not_tried = |m: &str| format!("{m} not tried (--close-hook {choice:?})").to_lowercase();
    let fentry_err =
        if matches!(choice, Auto | Fentry) {
            let r = (|| -> Result<(), String> {
                let p: &mut FEntry = program(ebpf, "tcp_close_fentry")?;
                p.load("tcp_close", btf)
                    .map_err(|e| format!("fentry: load: {}", brief(e)))?;
                p.attach()
                    .map_err(|e| format!("fentry: attach: {}", brief(e)))?;
                Ok(())
            })();
            match r {
            Ok(()) => return (CloseHook::Fentry, HookReport::ok("tcp_close", Attach::Fentry)),
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
                let report = HookReport::degraded(
                    "tcp_close",
                    Attach::Kprobe,
                    format!("{fentry_err}; kprobe works the same, a little slower"),
                );
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
    let report = HookReport::degraded(
        "tcp_close",
        Attach::Transitions,
        format!(
            "{fentry_err}; {kprobe_err}; closes are inferred from the transitions only a close \
             causes, in the closer's context (closing a socket already in CLOSE goes unseen)"
        ),
    );
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

/// An aya error as one readable message: a rejected program's verifier log
/// runs to tens of kilobytes, so keep its last lines (where the verdict is)
/// and leave the whole log to `RUST_LOG=debug`.
pub fn brief(err: impl std::fmt::Display) -> String {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use aya::Btf;
    use aya_obj::btf::BtfKind;

    use crate::kernel::attach_btf::{self, TargetKind};

    /// On the running kernel, the stand-in and the whole parse agree on
    /// every target closetrace attaches to.
    #[test]
    fn running_kernel_ids_match_the_whole_parse() {
        let path = Path::new(crate::kernel::SYSFS_BTF);
        if !path.exists() {
            assert!(std::env::var_os("CI").is_none(), "CI kernels have BTF");
            return;
        }
        let full = Btf::from_sys_fs().unwrap();
        let stand = attach_btf::read(path, &super::btf_targets()).unwrap();
        for (kind, name) in super::btf_targets() {
            let aya_kind = match kind {
                TargetKind::Typedef => BtfKind::Typedef,
                TargetKind::Func => BtfKind::Func,
            };
            let want = full.id_by_type_name_kind(&name, aya_kind).ok();
            let got = stand.id_by_type_name_kind(&name, aya_kind).ok();
            assert_eq!(got, want, "{name}");
        }
        let state = stand.id_by_type_name_kind("btf_trace_inet_sock_set_state", BtfKind::Typedef);
        assert!(state.is_ok(), "the state hook's target is found");
    }

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
