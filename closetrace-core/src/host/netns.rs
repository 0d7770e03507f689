//! Every network namespace on the host, and reading one from inside.
//!
//! A node agent runs in the host's namespace while pods each have their
//! own. sock_diag answers only for the namespace of the netlink socket
//! asked, and /proc/sys/net shows the sysctls of the reading thread's
//! namespace, so the host worker enters each namespace in turn (setns(2)
//! on its own thread, which needs CAP_SYS_ADMIN), reads there, and comes
//! back.
//!
//! Namespaces are found where they are held: any process's
//! /proc/PID/ns/net, and bind mounts under /run/netns (`ip netns add`
//! makes those, and no process need be inside). Nothing here keeps a
//! namespace open between scans: one that goes away is simply not found
//! the next time.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("opening network namespace {inode} ({path}): {source}")]
    Open {
        inode: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("network namespace {0} went away before it could be entered")]
    Gone(u32),
    #[error("entering network namespace {inode}: {source}")]
    Enter { inode: u32, source: io::Error },
    #[error("returning to closetrace's own network namespace: {0}")]
    Return(io::Error),
}

/// One network namespace, and a path that names it now (not held open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u32,
    pub path: PathBuf,
}

/// Where bind-mounted namespaces live (`ip netns add`).
const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// Every network namespace some process is in or a bind mount holds, each
/// once, sorted by inode.
pub fn discover() -> Vec<Namespace> {
    let mut found: HashMap<u32, PathBuf> = HashMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(m) = fs::metadata(&path)
            && let Ok(inode) = u32::try_from(m.ino())
        {
            found.entry(inode).or_insert(path);
        }
    };
    for dir in NETNS_DIRS {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                add(e.path());
            }
        }
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                add(p.path().join("ns/net"));
            }
        }
    }
    let mut all: Vec<Namespace> = found
        .into_iter()
        .map(|(inode, path)| Namespace { inode, path })
        .collect();
    all.sort_by_key(|n| n.inode);
    all
}

/// The calling thread's way into other network namespaces and back.
pub struct Switcher {
    /// The namespace the thread started in, held open to return to it.
    home: File,
    pub home_inode: u32,
}

impl Switcher {
    /// For the calling thread (namespaces are per thread).
    pub fn new() -> io::Result<Switcher> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let home_inode = u32::try_from(home.metadata()?.ino()).unwrap_or(0);
        Ok(Switcher { home, home_inode })
    }

    /// Run `read` inside namespace `ns` on this thread, then come back. The
    /// namespace is opened afresh and checked to be the one discovered (a
    /// pid may have been reused since).
    pub fn within<T>(&self, ns: &Namespace, read: impl FnOnce() -> T) -> Result<T, NetnsError> {
        if ns.inode == self.home_inode {
            return Ok(read());
        }
        let file = open_checked(ns)?;
        enter(&file).map_err(|source| NetnsError::Enter {
            inode: ns.inode,
            source,
        })?;
        let out = read();
        // Failing to return would leave every later read in the wrong
        // namespace: the caller must stop using this thread for reads.
        enter(&self.home).map_err(NetnsError::Return)?;
        Ok(out)
    }
}

fn open_checked(ns: &Namespace) -> Result<File, NetnsError> {
    let file = File::open(&ns.path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            NetnsError::Gone(ns.inode)
        } else {
            NetnsError::Open {
                inode: ns.inode,
                path: ns.path.clone(),
                source,
            }
        }
    })?;
    match file.metadata() {
        Ok(m) if m.ino() == u64::from(ns.inode) => Ok(file),
        _ => Err(NetnsError::Gone(ns.inode)),
    }
}

fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a descriptor we hold open; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The path of a bind-mounted namespace by name (`ip netns` names).
pub fn named(name: &str) -> Option<PathBuf> {
    NETNS_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own namespace is always among those found, and reading within
    /// it needs no switch (so no privilege).
    #[test]
    fn finds_its_own_namespace() {
        let own = crate::host::sockets::own_netns().unwrap();
        let all = discover();
        assert!(all.iter().any(|n| n.inode == own), "{all:?}");
        let s = Switcher::new().unwrap();
        assert_eq!(s.home_inode, own);
        let me = Namespace {
            inode: own,
            path: "/nonexistent".into(),
        };
        assert_eq!(s.within(&me, || 7).unwrap(), 7);
    }

    /// A namespace whose path now names another (or nothing) is gone, not
    /// entered by mistake.
    #[test]
    fn a_stale_path_is_gone() {
        let s = Switcher::new().unwrap();
        let stale = Namespace {
            inode: 1,
            path: "/proc/self/ns/net".into(),
        };
        assert!(matches!(s.within(&stale, || ()), Err(NetnsError::Gone(1))));
        let vanished = Namespace {
            inode: 2,
            path: "/run/netns/closetrace-never-made".into(),
        };
        assert!(matches!(
            s.within(&vanished, || ()),
            Err(NetnsError::Gone(2))
        ));
    }
}
