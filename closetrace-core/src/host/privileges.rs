//! Dropping what closetrace no longer needs once its programs are attached.
//!
//! Loading and attaching takes CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN).
//! After that, the maps and the ring buffer are used through file
//! descriptors already open, which needs no capability on 5.19 and later.
//! What remains is naming leak holders: reading other users'
//! /proc/PID/fd (CAP_DAC_READ_SEARCH to list the directory,
//! CAP_SYS_PTRACE to read its links). Every other capability is dropped
//! from the effective, permitted, inheritable and ambient sets, so a bug
//! in the daemon cannot load programs, read kernel memory or write files
//! it could not write as any process.
use thiserror::Error;

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

const NAMES: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (2, "CAP_DAC_READ_SEARCH"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (18, "CAP_SYS_CHROOT"),
    (19, "CAP_SYS_PTRACE"),
    (21, "CAP_SYS_ADMIN"),
    (24, "CAP_SYS_RESOURCE"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("capget failed: {0}")]
    Get(std::io::Error),
    #[error("dropping capabilities failed: {0}")]
    Set(std::io::Error),
}

pub use crate::model::Privileges;

fn name(cap: u32) -> String {
    NAMES
        .iter()
        .find(|(n, _)| *n == cap)
        .map_or_else(|| format!("cap_{cap}"), |(_, s)| (*s).to_string())
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

fn get() -> Result<[Data; 2], PrivilegeError> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header writes two Data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Get(std::io::Error::last_os_error()));
    }
    Ok(data)
}

fn mask(d: &[Data; 2], f: impl Fn(&Data) -> u32) -> u64 {
    u64::from(f(&d[0])) | (u64::from(f(&d[1])) << 32)
}

/// Whether this process may load and attach closetrace's programs:
/// CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN (which stands in for both).
pub fn can_load_bpf() -> bool {
    let Ok(now) = get() else {
        return false;
    };
    let eff = mask(&now, |d| d.effective);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
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

/// The set to keep out of `held`, and why CAP_BPF stays when it does.
fn keep_set(held: u64, release: &str, unprivileged_disabled: bool) -> (u64, Option<String>) {
    let mut keep = (1u64 << CAP_DAC_READ_SEARCH) | (1u64 << CAP_SYS_PTRACE);
    let mut note = None;
    if fd_ops_need_bpf(release, unprivileged_disabled) {
        // CAP_SYS_ADMIN stands in for CAP_BPF before 5.8.
        keep |= (1u64 << CAP_BPF) | (1u64 << CAP_SYS_ADMIN);
        note = Some(format!(
            "kernel {release} with unprivileged BPF disabled needs CAP_BPF for map access"
        ));
    }
    (held & keep, note)
}

/// Drop every capability but those needed from here on.
pub fn drop_after_attach() -> Result<Privileges, PrivilegeError> {
    let now = get()?;
    let held = mask(&now, |d| d.permitted);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(true);
    let (keep, note) = keep_set(held, release.trim(), disabled);
    // Ambient capabilities would survive into anything exec'd.
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        Data {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a v3 header reads two Data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Set(std::io::Error::last_os_error()));
    }
    // Regaining them by exec (setuid-root binaries, file capabilities) is
    // closed off too.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let kept = (0..64)
        .filter(|c| keep & (1u64 << c) != 0)
        .map(name)
        .collect();
    Ok(Privileges { kept, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_naming_holders_needs() {
        let all = u64::MAX >> 23; // caps 0..=40
        let (keep, note) = keep_set(all, "6.18.0", true);
        assert_eq!(keep, (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_PTRACE));
        assert_eq!(note, None);
        // Never adds what was not held.
        assert_eq!(
            keep_set(1 << CAP_SYS_PTRACE, "6.1.0-56-cloud-amd64", true).0,
            1 << 19
        );
    }

    #[test]
    fn old_kernels_keep_cap_bpf_for_map_access() {
        let all = u64::MAX >> 23;
        let (keep, note) = keep_set(all, "5.15.0-91-generic", true);
        assert_ne!(keep & (1 << CAP_BPF), 0);
        assert!(note.unwrap().contains("5.15.0"));
        assert_eq!(keep_set(all, "5.15.0", false).0 & (1 << CAP_BPF), 0);
        assert!(!fd_ops_need_bpf("5.19.0", true));
        assert!(fd_ops_need_bpf("4.19.0", true));
    }

    #[test]
    fn names_are_readable() {
        assert_eq!(name(CAP_SYS_PTRACE), "CAP_SYS_PTRACE");
        assert_eq!(name(40), "cap_40");
    }
}
