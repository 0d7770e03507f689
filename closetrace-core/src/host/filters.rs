//! What `--netns`, `--cgroup` and `--pid-tree` select, resolved from their
//! arguments, and kept current while tracing: cgroups created below the
//! chosen one join the kernel's filter, and the processes the kernel added
//! to a followed tree become what userspace displays.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FilterError {
    #[error(
        "--netns {0}: neither a namespace inode nor a readable namespace file \
         (e.g. /run/netns/NAME or /proc/PID/ns/net)"
    )]
    Netns(String),
    #[error("--pid-tree {0}: no such process")]
    NoProcess(u32),
}

/// `--netns`: an inode number, or a namespace file whose inode it is.
pub fn resolve_netns(arg: &str) -> Result<u32, FilterError> {
    let bad = || FilterError::Netns(arg.into());
    if let Ok(inode) = arg.trim().parse::<u32>() {
        return if inode == 0 { Err(bad()) } else { Ok(inode) };
    }
    let meta = fs::metadata(arg).map_err(|_| bad())?;
    // Namespace files live on nsfs; anything else is a mistake, such as a
    // directory or a config file given by accident.
    if !on_nsfs(arg) {
        return Err(bad());
    }
    u32::try_from(meta.ino()).map_err(|_| bad())
}

fn on_nsfs(path: &str) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed out-parameter of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// `roots` and all their descendants, as processes (tgids) now.
pub fn process_tree(roots: &[u32]) -> Result<Vec<u32>, FilterError> {
    let parents = crate::host::procs::parents();
    for &r in roots {
        if !parents.contains_key(&r) {
            return Err(FilterError::NoProcess(r));
        }
    }
    Ok(descendants(roots, &parents))
}

fn descendants(roots: &[u32], parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut todo: Vec<u32> = roots.to_vec();
    let mut out = Vec::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        out.push(p);
        if let Some(c) = children.get(&p) {
            todo.extend(c);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_follow_every_generation_once() {
        // 1 -> 10 -> {11, 12 -> 13}; 20 unrelated; a cycle cannot loop.
        let parents: HashMap<u32, u32> = [
            (10, 1),
            (11, 10),
            (12, 10),
            (13, 12),
            (20, 1),
            (30, 31),
            (31, 30),
        ]
        .into_iter()
        .collect();
        assert_eq!(descendants(&[10], &parents), vec![10, 11, 12, 13]);
        assert_eq!(descendants(&[12, 13], &parents), vec![12, 13]);
        assert_eq!(descendants(&[30], &parents), vec![30, 31]);
    }

    #[test]
    fn this_process_tree_includes_itself() {
        let me = std::process::id();
        assert!(process_tree(&[me]).unwrap().contains(&me));
        assert!(matches!(
            process_tree(&[u32::MAX - 1]),
            Err(FilterError::NoProcess(_))
        ));
    }

    #[test]
    fn netns_arguments() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(resolve_netns("/proc/self/ns/net").unwrap(), own);
        assert_eq!(resolve_netns(&own.to_string()).unwrap(), own);
        for bad in ["0", "/etc/passwd", "/tmp", "/no/such/ns", "net"] {
            assert!(resolve_netns(bad).is_err(), "{bad}");
        }
    }
}
