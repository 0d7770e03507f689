//! cgroup (v2) ids, their paths, and the containers those paths name.
//!
//! The kernel reports a socket's cgroup as an id: the inode number of its
//! directory in the cgroup2 file system. Paths come from walking that file
//! system, cached, so events stay cheap; container runtimes are recognised
//! from the path alone.
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::model::{Container, ContainerNames, Runtime};

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (see /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("--cgroup {0}: not a cgroup directory under {1}")]
    NotACgroup(String, String),
}

/// Where the cgroup2 file system is mounted (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NoCgroup2)?;
    root_from_mountinfo(&info).ok_or(CgroupError::NoCgroup2)
}

fn root_from_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|l| {
        // "... mount-point options - fstype source super-options"
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next() == Some("cgroup2"))
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// `--cgroup PATH`: an absolute directory, or a path relative to the cgroup2
/// root (`system.slice/nginx.service`, or `/system.slice/...` as
/// /proc/PID/cgroup prints it).
pub fn resolve_arg(arg: &str) -> Result<PathBuf, CgroupError> {
    let root = cgroup2_root()?;
    let given = Path::new(arg);
    let candidates = [given.to_path_buf(), root.join(arg.trim_start_matches('/'))];
    candidates
        .into_iter()
        .find(|p| p.starts_with(&root) && p.join("cgroup.procs").exists())
        .ok_or_else(|| CgroupError::NotACgroup(arg.into(), root.display().to_string()))
}

/// The ids of `dir` and every cgroup below it.
pub fn subtree_ids(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    walk(dir, &mut |_, ino| out.push(ino));
    out
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, u64)) {
    let Ok(meta) = fs::metadata(dir) else { return };
    f(dir, meta.ino());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), f);
        }
    }
}

/// The container a cgroup path names, by the layouts runtimes use with the
/// systemd and cgroupfs drivers:
/// `docker-<id>.scope`, `/docker/<id>`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `/libpod_parent/libpod-<id>`,
/// and kubepods' bare `/<id>` under a pod.
pub fn container_of(path: &str) -> Option<Container> {
    let mut parent = "";
    let mut found = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let name = part.strip_suffix(".scope").unwrap_or(part);
        let guess = [
            ("docker-", Runtime::Docker),
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
            ("libpod-", Runtime::Podman),
        ]
        .iter()
        .find_map(|(prefix, rt)| name.strip_prefix(prefix).map(|id| (*rt, id)))
        .or_else(|| match parent {
            "docker" => Some((Runtime::Docker, name)),
            _ if parent.starts_with("pod") || path.contains("kubepods") => {
                Some((Runtime::Containerd, name))
            }
            _ => None,
        });
        if let Some((runtime, id)) = guess
            && is_container_id(id)
        {
            found = Some(Container {
                runtime,
                id: id.into(),
            });
        }
        parent = name;
    }
    found
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Cached id -> container lookups, shared by the coordinator (which only
/// reads it: no I/O on the event path) and the host worker (which rescans
/// the tree, at most once a second, when an id is new). Cgroups come and
/// go with containers; records ask for every socket they name.
struct Known {
    containers: HashMap<u64, Option<Container>>,
    scanned: Option<Instant>,
    /// An id was asked for that the cache did not know.
    missed: bool,
}

fn known() -> &'static Mutex<Known> {
    static KNOWN: OnceLock<Mutex<Known>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        Mutex::new(Known {
            containers: HashMap::new(),
            scanned: None,
            missed: false,
        })
    })
}

/// Walk the cgroup tree (without holding the cache's lock) and add every
/// cgroup to the cache, unless it was walked less than a second ago.
fn rescan() {
    let Ok(root) = cgroup2_root() else {
        return;
    };
    {
        let Ok(mut k) = known().lock() else {
            return;
        };
        if k.scanned
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        k.scanned = Some(Instant::now());
        k.missed = false;
    }
    let mut found = Vec::new();
    walk(&root, &mut |p, ino| {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        found.push((ino, container_of(&format!("/{}", rel.display()))));
    });
    if let Ok(mut k) = known().lock() {
        for (ino, c) in found {
            k.containers.entry(ino).or_insert(c);
        }
    }
}

/// The container cgroup `id` belongs to, if any, rescanning the tree when
/// the id is new (blocking: for the host worker and start-up).
pub fn container(id: u64) -> Option<Container> {
    if id == 0 {
        return None;
    }
    if let Some(c) = known().lock().ok()?.containers.get(&id) {
        return c.clone();
    }
    rescan();
    // Ids that are still unknown stay unknown until the next rescan.
    known().lock().ok()?.containers.get(&id).cloned().flatten()
}

/// The container of cgroup `id` as far as the cache knows, without any
/// I/O; an unknown id is looked up by the next `rescan_missed`. `Err`:
/// not known yet.
fn known_container(id: u64) -> Result<Option<Container>, ()> {
    if id == 0 {
        return Ok(None);
    }
    let mut k = known().lock().map_err(|_| ())?;
    match k.containers.get(&id) {
        Some(c) => Ok(c.clone()),
        None => {
            k.missed = true;
            Err(())
        }
    }
}

/// Rescan if a lookup missed since the last one (host worker, each tick).
pub fn rescan_missed() {
    if known().lock().is_ok_and(|k| k.missed) {
        rescan();
    }
}

/// Container names for records, from the cache only (see `Known`). The
/// last answer the cache knew is kept here: a busy stream names the same
/// few cgroups over and over, and a known id's answer never changes.
#[derive(Default)]
pub struct CgroupContainers {
    last: RefCell<Option<(u64, Option<Container>)>>,
}

impl ContainerNames for CgroupContainers {
    fn container(&self, cgroup: u64) -> Option<Container> {
        if let Some((id, c)) = self.last.borrow().as_ref()
            && *id == cgroup
        {
            return c.clone();
        }
        let answer = known_container(cgroup).ok()?;
        *self.last.borrow_mut() = Some((cgroup, answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6c0e2bc0a7d5e3b0b1a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607";

    #[test]
    fn runtimes_are_recognised_from_their_paths() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
            ),
            (
                format!("/kubepods/besteffort/pod7d3a/{ID}"),
                Runtime::Containerd,
            ),
            (format!("/kubepods.slice/crio-{ID}.scope"), Runtime::CriO),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                Runtime::Podman,
            ),
        ];
        for (path, runtime) in cases {
            let c = container_of(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((c.runtime, &*c.id), (runtime, ID), "{path}");
        }
    }

    #[test]
    fn ordinary_cgroups_are_not_containers() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/docker",
            "/system.slice/docker-notanid.scope",
            "/kubepods/besteffort/pod7d3a",
        ] {
            assert_eq!(container_of(path), None, "{path}");
        }
    }

    #[test]
    fn cgroup2_root_from_mountinfo() {
        let hybrid = "24 31 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            root_from_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1 = "24 31 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(root_from_mountinfo(v1), None);
    }

    #[test]
    fn cgroup_arguments_must_name_a_cgroup() {
        let Ok(root) = cgroup2_root() else {
            eprintln!("skipped: no cgroup2 mount here");
            return;
        };
        assert_eq!(resolve_arg("/").unwrap(), root);
        assert_eq!(resolve_arg(root.to_str().unwrap()).unwrap(), root);
        let err = resolve_arg("/no/such/cgroup").unwrap_err().to_string();
        assert!(err.contains("not a cgroup directory"), "{err}");
        assert!(resolve_arg("/etc").is_err());
        assert!(!subtree_ids(&root).is_empty());
    }
}
