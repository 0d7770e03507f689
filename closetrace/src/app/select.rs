//! What `--pid`, `--pid-tree`, `--netns` and `--cgroup` select, resolved
//! before anything is loaded: bad input is a usage error (exit 2).
use std::path::PathBuf;

use closetrace_core::app::cli::Cli;
use closetrace_core::host::{cgroups, filters, procs};

use super::UsageError;

pub struct Selection {
    /// `--pid` processes and, with `--pid-tree`, the trees as they are now.
    pub pids: Vec<u32>,
    pub roots: Vec<u32>,
    /// `--netns` inode; 0 for every namespace.
    pub netns: u32,
    /// `--cgroup`: the directory and the ids of its subtree now.
    pub cgroup: Option<(PathBuf, Vec<u64>)>,
}

impl Selection {
    /// The cgroup as `ready` names it: a path under the cgroup2 mount.
    pub fn cgroup_name(&self) -> Option<String> {
        self.cgroup.as_ref().map(|(dir, _)| {
            let root = cgroups::cgroup2_root().unwrap_or_default();
            format!("/{}", dir.strip_prefix(&root).unwrap_or(dir).display())
        })
    }
}

/// `--pid` values as process ids: threads map to their process, and a pid
/// that does not exist is refused before anything is loaded.
fn resolve_pids(pids: &[u32], flag: &str) -> Result<Vec<u32>, UsageError> {
    let mut out = Vec::new();
    for &pid in pids {
        let tgid = procs::tgid(pid).map_err(|e| UsageError(format!("{flag} {pid}: {e}")))?;
        if tgid != pid {
            log::info!("{flag} {pid} is a thread of process {tgid}; following {tgid}");
        }
        if !out.contains(&tgid) {
            out.push(tgid);
        }
    }
    Ok(out)
}

pub fn select(cli: &Cli) -> Result<Selection, UsageError> {
    let fixed = resolve_pids(&cli.pids, "--pid")?;
    let roots = resolve_pids(&cli.pid_trees, "--pid-tree")?;
    let tree = filters::process_tree(&roots).map_err(|e| UsageError(e.to_string()))?;
    let mut pids = fixed;
    pids.extend(tree);
    pids.sort_unstable();
    pids.dedup();
    let netns = match &cli.netns {
        Some(arg) => filters::resolve_netns(arg).map_err(|e| UsageError(e.to_string()))?,
        None => 0,
    };
    let cgroup = match &cli.cgroup {
        Some(arg) => {
            let dir = cgroups::resolve_arg(arg).map_err(|e| UsageError(e.to_string()))?;
            let ids = cgroups::subtree_ids(&dir);
            Some((dir, ids))
        }
        None => None,
    };
    Ok(Selection {
        pids,
        roots,
        netns,
        cgroup,
    })
}
