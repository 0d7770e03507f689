//! Dropping what closetrace no longer needs once its programs are attached.
//!
//! Loading and attaching takes CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN).
//! After that, the maps and the ring buffer are used through file
//! descriptors already open, which needs no capability on 5.19 and later.
//! What remains is naming leak holders: reading other users'
//! /proc/PID/fd (CAP_DAC_READ_SEARCH to list the directory,
//! CAP_SYS_PTRACE to read its links); and, when every network namespace is
//! read, entering them (setns needs CAP_SYS_ADMIN). Every other capability is dropped
//! from the effective, permitted, inheritable and ambient sets, so a bug
//! in the daemon cannot load programs, read kernel memory or write files
//! it could not write as any process.
//!
//! The `caps` crate does the capget/capset calls and names capabilities.
//! Capabilities are per thread: threads started after the drop inherit
//! the reduced sets, threads started before it keep theirs.
use caps::{CapSet, Capability, CapsHashSet};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("reading capabilities failed: {0}")]
    Get(caps::errors::CapsError),
    #[error("dropping capabilities failed: {0}")]
    Set(caps::errors::CapsError),
}

pub use crate::model::Privileges;

/// Whether this thread may load and attach closetrace's programs:
/// CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN (which stands in for both).
pub fn can_load_bpf() -> bool {
    let Ok(eff) = caps::read(None, CapSet::Effective) else {
        return false;
    };
    eff.contains(&Capability::CAP_SYS_ADMIN)
        || (eff.contains(&Capability::CAP_BPF) && eff.contains(&Capability::CAP_PERFMON))
}

/// Whether this thread may enter other network namespaces (setns(2)
/// needs CAP_SYS_ADMIN), to read their sockets and sysctls.
pub fn can_enter_namespaces() -> bool {
    caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false)
}

/// Map operations on existing fds are refused without CAP_BPF before 5.19
/// when unprivileged BPF is disabled.
fn fd_ops_need_bpf(release: &str, unprivileged_disabled: bool) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    unprivileged_disabled && (major, minor) < (5, 19)
}

/// The set to keep out of `held`, and why CAP_BPF or CAP_SYS_ADMIN stays
/// when it does. `namespaces`: other network namespaces are read.
fn keep_set(
    held: &CapsHashSet,
    release: &str,
    disabled: bool,
    namespaces: bool,
) -> (CapsHashSet, Option<String>) {
    let mut wanted = vec![Capability::CAP_DAC_READ_SEARCH, Capability::CAP_SYS_PTRACE];
    let mut notes = Vec::new();
    if namespaces {
        wanted.push(Capability::CAP_SYS_ADMIN);
        notes.push(
            "CAP_SYS_ADMIN is kept to enter other network namespaces (setns) and read their \
             sockets and port sysctls"
                .to_string(),
        );
    }
    if fd_ops_need_bpf(release, disabled) {
        // CAP_SYS_ADMIN stands in for CAP_BPF before 5.8.
        wanted.extend([Capability::CAP_BPF, Capability::CAP_SYS_ADMIN]);
        notes.push(format!(
            "kernel {release} with unprivileged BPF disabled needs CAP_BPF for map access"
        ));
    }
    let keep = wanted.into_iter().filter(|c| held.contains(c)).collect();
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    (keep, note)
}

/// Drop every capability but those needed from here on. `namespaces`:
/// other network namespaces are read (keeps CAP_SYS_ADMIN).
pub fn drop_after_attach(namespaces: bool) -> Result<Privileges, PrivilegeError> {
    let held = caps::read(None, CapSet::Permitted).map_err(PrivilegeError::Get)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(true);
    let (keep, note) = keep_set(&held, release.trim(), disabled, namespaces);
    // Ambient capabilities would survive into anything exec'd; effective
    // must shrink before permitted can.
    caps::clear(None, CapSet::Ambient).map_err(PrivilegeError::Set)?;
    caps::clear(None, CapSet::Inheritable).map_err(PrivilegeError::Set)?;
    caps::set(None, CapSet::Effective, &keep).map_err(PrivilegeError::Set)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(PrivilegeError::Set)?;
    // Regaining them by exec (setuid-root binaries, file capabilities) is
    // closed off too.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(Privileges {
        kept: kept.iter().map(Capability::to_string).collect(),
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> CapsHashSet {
        caps::all()
    }

    #[test]
    fn keeps_only_what_naming_holders_needs() {
        let (keep, note) = keep_set(&all(), "6.18.0", true, false);
        let want: CapsHashSet = [Capability::CAP_DAC_READ_SEARCH, Capability::CAP_SYS_PTRACE]
            .into_iter()
            .collect();
        assert_eq!(keep, want);
        assert_eq!(note, None);
        // Never adds what was not held.
        let ptrace: CapsHashSet = [Capability::CAP_SYS_PTRACE].into_iter().collect();
        assert_eq!(
            keep_set(&ptrace, "6.1.0-56-cloud-amd64", true, false).0,
            ptrace
        );
    }

    #[test]
    fn reading_other_namespaces_keeps_sys_admin_and_says_why() {
        let (keep, note) = keep_set(&all(), "6.18.0", true, true);
        assert!(keep.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!keep.contains(&Capability::CAP_BPF));
        assert!(note.unwrap().contains("setns"));
    }

    #[test]
    fn old_kernels_keep_cap_bpf_for_map_access() {
        let (keep, note) = keep_set(&all(), "5.15.0-91-generic", true, false);
        assert!(keep.contains(&Capability::CAP_BPF));
        assert!(note.unwrap().contains("5.15.0"));
        assert!(
            !keep_set(&all(), "5.15.0", false, false)
                .0
                .contains(&Capability::CAP_BPF)
        );
        assert!(!fd_ops_need_bpf("5.19.0", true));
        assert!(fd_ops_need_bpf("4.19.0", true));
    }

    #[test]
    fn names_are_readable() {
        assert_eq!(Capability::CAP_SYS_PTRACE.to_string(), "CAP_SYS_PTRACE");
        assert_eq!(Capability::CAP_BPF.to_string(), "CAP_BPF");
    }
}
