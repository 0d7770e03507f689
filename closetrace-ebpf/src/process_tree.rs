//! `--pid-tree` and `--pid`: followed processes gain their children and
//! lose themselves when they exit.
use aya_ebpf::{
    bindings::BPF_ANY, helpers::bpf_get_current_pid_tgid, programs::BtfTracePointContext,
};

use crate::kread::read;
use crate::maps::{PIDS, config};

pub(crate) fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let cfg = config();
    if cfg.follow_forks == 0 {
        return Ok(());
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { PIDS.get(parent) }.is_none() {
        return Ok(());
    }
    let child: *const u8 = ctx.arg(1);
    let off = &cfg.offsets;
    let tgid: u32 = read(child, off.task_tgid)?;
    // A new thread shares its process's tgid: nothing to add.
    if tgid != parent {
        PIDS.insert(tgid, 1, BPF_ANY as u64)?;
    }
    Ok(())
}

pub(crate) fn try_exit() -> Result<(), i32> {
    if config().filter_pids == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // The process's main thread: the pid is about to be free for reuse.
    if tid == tgid {
        let _ = PIDS.remove(tgid);
    }
    Ok(())
}
