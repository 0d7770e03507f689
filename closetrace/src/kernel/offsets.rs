//! Kernel structure offsets, resolved from the running kernel's BTF.
//!
//! Rust-built eBPF objects carry no CO-RE relocations, so the programs read
//! `struct sock` fields at offsets that userspace looks up here at load time
//! and passes in through the `CONFIG` global. A field that is missing, of an
//! unexpected size, or a bitfield is a clear error naming it, never a silent
//! wrong read.
use std::path::Path;

use btf_rs::{Btf, Type};
use closetrace_common::{OFFSET_ABSENT, SockOffsets};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF from {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: {strukt} has no member {member} (needed for {field})")]
    NoMember {
        strukt: String,
        member: String,
        field: String,
    },
    #[error("kernel BTF: {field} is a bitfield, which closetrace cannot read")]
    Bitfield { field: String },
    #[error("kernel BTF: {field} is {actual} bytes, expected {expected}")]
    Size {
        field: String,
        actual: usize,
        expected: usize,
    },
    #[error("kernel BTF: {field}: {reason}")]
    Malformed { field: String, reason: String },
    /// Resolved in a child process (see `resolve_in_child`), which failed
    /// with this message, or could not be run.
    #[error("{0}")]
    Child(String),
}

/// `resolve(load_btf(path))` in a forked child that hands back the offsets
/// and exits. Parsing the kernel's BTF this way takes ~40 MiB, the largest
/// allocation of a run: done in a child, it never counts in the daemon's
/// memory. Call it while the process has one thread (fork copies only the
/// caller).
pub fn resolve_in_child(path: &Path) -> Result<SockOffsets, OffsetError> {
    let child_failed =
        |what: &str| OffsetError::Child(format!("{what}: {}", std::io::Error::last_os_error()));
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(child_failed("pipe for the BTF child"));
    }
    let [rx, tx] = fds;
    // SAFETY: the caller is single-threaded, so the child may allocate.
    match unsafe { libc::fork() } {
        -1 => Err(child_failed("fork for the BTF child")),
        0 => {
            let reply = match load_btf(path).and_then(|btf| resolve(&btf)) {
                Ok(off) => [&[0u8][..], bytemuck_bytes(&off)].concat(),
                Err(e) => [&[1u8][..], e.to_string().as_bytes()].concat(),
            };
            // SAFETY: writing our reply to the pipe, then leaving at once:
            // nothing of the parent's state is to be run down here.
            unsafe {
                libc::write(tx, reply.as_ptr().cast(), reply.len());
                libc::_exit(0)
            }
        }
        pid => {
            // SAFETY: the parent's copy of the write end.
            unsafe { libc::close(tx) };
            let reply = read_all(rx);
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match reply.split_first() {
                Some((0, bytes)) if bytes.len() == size_of::<SockOffsets>() => {
                    // SAFETY: SockOffsets is plain u32s: any bytes are a value.
                    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
                }
                Some((1, msg)) => Err(OffsetError::Child(String::from_utf8_lossy(msg).into())),
                _ => Err(OffsetError::Child(
                    "the BTF child died before answering".into(),
                )),
            }
        }
    }
}

fn bytemuck_bytes(off: &SockOffsets) -> &[u8] {
    // SAFETY: SockOffsets is repr(C) u32s with no padding.
    unsafe {
        std::slice::from_raw_parts((off as *const SockOffsets).cast(), size_of::<SockOffsets>())
    }
}

/// Everything until EOF from `fd`, which is then closed.
fn read_all(fd: i32) -> Vec<u8> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: fd is our read end; the File owns and closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut out = Vec::new();
    let _ = f.read_to_end(&mut out);
    out
}

/// Load the kernel's BTF, with an error that says what to do about it.
pub fn load_btf(path: &Path) -> Result<Btf, OffsetError> {
    Btf::from_file(path).map_err(|e| OffsetError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Resolve every offset the programs need.
pub fn resolve(btf: &Btf) -> Result<SockOffsets, OffsetError> {
    let sock = |path: &str, size: usize| field_offset(btf, "sock", path, size);
    let optional = |r: Result<u32, OffsetError>| match r {
        Ok(off) => Ok(off),
        // Kernels built without IPv6 or network namespaces lack these; the
        // programs then report IPv4 only, or netns 0.
        Err(OffsetError::NoMember { .. }) => Ok(OFFSET_ABSENT),
        Err(e) => Err(e),
    };
    // Before 5.15 the cgroup pointer shares a u64 with cgroup v1 data.
    let (sk_cgroup, sk_cgroup_packed) = match optional(sock("sk_cgrp_data.cgroup", 8))? {
        OFFSET_ABSENT => (optional(sock("sk_cgrp_data.val", 8))?, 1),
        off => (off, 0),
    };
    Ok(SockOffsets {
        family: sock("__sk_common.skc_family", 2)?,
        num: sock("__sk_common.skc_num", 2)?,
        dport: sock("__sk_common.skc_dport", 2)?,
        rcv_saddr: sock("__sk_common.skc_rcv_saddr", 4)?,
        daddr: sock("__sk_common.skc_daddr", 4)?,
        v6_rcv_saddr: optional(sock("__sk_common.skc_v6_rcv_saddr", 16))?,
        v6_daddr: optional(sock("__sk_common.skc_v6_daddr", 16))?,
        protocol: sock("sk_protocol", 2)?,
        net: optional(sock("__sk_common.skc_net.net", 8))?,
        net_inum: optional(field_offset(btf, "net", "ns.inum", 4))?,
        inet_sport: field_offset(btf, "inet_sock", "inet_sport", 2)?,
        sk_err: sock("sk_err", 4)?,
        state: sock("__sk_common.skc_state", 1)?,
        // `sk_cookie` is a macro for this: the kprobe close path reads it.
        cookie: sock("__sk_common.skc_cookie", 8)?,
        task_flags: field_offset(btf, "task_struct", "flags", 4)?,
        // Kernels without CONFIG_SOCK_CGROUP_DATA: cgroup 0, and --cgroup
        // is refused.
        sk_cgroup,
        sk_cgroup_packed: u32::from(sk_cgroup != OFFSET_ABSENT && sk_cgroup_packed == 1),
        cgroup_kn: optional(field_offset(btf, "cgroup", "kn", 8))?,
        kn_id: optional(field_offset(btf, "kernfs_node", "id", 8))?,
        task_tgid: field_offset(btf, "task_struct", "tgid", 4)?,
        task_nsproxy: field_offset(btf, "task_struct", "nsproxy", 8)?,
        nsproxy_net: optional(field_offset(btf, "nsproxy", "net_ns", 8))?,
        task_group_leader: field_offset(btf, "task_struct", "group_leader", 8)?,
        // Renamed in 5.5; without either, processes are known by pid alone.
        task_start: match optional(field_offset(btf, "task_struct", "start_boottime", 8))? {
            OFFSET_ABSENT => optional(field_offset(btf, "task_struct", "real_start_time", 8))?,
            off => off,
        },
        // An accepted socket's owner is whoever accept()ed it: the new fd
        // leads to the socket through these.
        task_files: field_offset(btf, "task_struct", "files", 8)?,
        files_fdt: field_offset(btf, "files_struct", "fdt", 8)?,
        fdt_max_fds: field_offset(btf, "fdtable", "max_fds", 4)?,
        fdt_fd: field_offset(btf, "fdtable", "fd", 8)?,
        file_private: field_offset(btf, "file", "private_data", 8)?,
        socket_sk: field_offset(btf, "socket", "sk", 8)?,
        // Without it only failed connects that got no port are told from
        // closes (a bitfield in some kernel would be the same).
        sk_shutdown: match sock("sk_shutdown", 1) {
            Err(OffsetError::Bitfield { .. }) => OFFSET_ABSENT,
            r => optional(r)?,
        },
        // x86-64's names: the syscall number and its arguments 1 and 2.
        regs_syscall: optional(field_offset(btf, "pt_regs", "orig_ax", 8))?,
        regs_arg1: optional(field_offset(btf, "pt_regs", "si", 8))?,
        regs_arg2: optional(field_offset(btf, "pt_regs", "dx", 8))?,
        // Tells a connect() that failed before its SYN from a
        // connect(AF_UNSPEC) that aborts one in flight.
        packets_out: field_offset(btf, "tcp_sock", "packets_out", 4)?,
        // The fd iterator: an open file's inode, whether it is a socket,
        // and its number. Missing, holders are read from /proc instead.
        file_inode: optional(field_offset(btf, "file", "f_inode", 8))?,
        inode_mode: optional(field_offset(btf, "inode", "i_mode", 2))?,
        inode_ino: optional(field_offset(btf, "inode", "i_ino", 8))?,
    })
}

/// Byte offset of `path` (dot-separated members, looking through anonymous
/// structs and unions) inside `struct strukt`, checking the field's size.
pub fn field_offset(
    btf: &Btf,
    strukt: &str,
    path: &str,
    expected_size: usize,
) -> Result<u32, OffsetError> {
    let field = format!("{strukt}.{path}");
    let malformed = |e: btf_rs::Error| OffsetError::Malformed {
        field: field.clone(),
        reason: e.to_string(),
    };
    let mut ty = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| OffsetError::NoStruct(strukt.to_string()))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| OffsetError::NoStruct(strukt.to_string()))?;
    let mut owner = format!("struct {strukt}");
    let mut bits = 0u32;
    for name in path.split('.') {
        let found = find_member(btf, &ty, name)
            .map_err(malformed)?
            .ok_or_else(|| OffsetError::NoMember {
                strukt: owner.clone(),
                member: name.to_string(),
                field: field.clone(),
            })?;
        if found.bitfield {
            return Err(OffsetError::Bitfield { field });
        }
        bits += found.bit_offset;
        ty = strip_modifiers(btf, found.ty).map_err(malformed)?;
        owner = format!("{owner}.{name}");
    }
    if !bits.is_multiple_of(8) {
        return Err(OffsetError::Bitfield { field });
    }
    let actual = type_size(btf, &ty).map_err(malformed)?;
    if actual != expected_size {
        return Err(OffsetError::Size {
            field,
            actual,
            expected: expected_size,
        });
    }
    Ok(bits / 8)
}

struct Found {
    bit_offset: u32,
    ty: Type,
    bitfield: bool,
}

/// Find `name` among the members of a struct or union, descending into
/// anonymous members.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<Found>, btf_rs::Error> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        let member_name = btf.resolve_name(m)?;
        if member_name == name {
            return Ok(Some(Found {
                bit_offset: m.bit_offset(),
                ty: btf.resolve_chained_type(m)?,
                bitfield: m.bitfield_size().is_some_and(|s| s != 0),
            }));
        }
        if member_name.is_empty() {
            let inner = strip_modifiers(btf, btf.resolve_chained_type(m)?)?;
            if let Some(mut found) = find_member(btf, &inner, name)? {
                found.bit_offset += m.bit_offset();
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

fn strip_modifiers(btf: &Btf, mut ty: Type) -> Result<Type, btf_rs::Error> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        }
    }
}

fn type_size(btf: &Btf, ty: &Type) -> Result<usize, btf_rs::Error> {
    Ok(match ty {
        Type::Int(i) => i.size(),
        Type::Ptr(_) => std::mem::size_of::<usize>(),
        Type::Struct(s) | Type::Union(s) => s.size(),
        Type::Enum(e) => e.size(),
        Type::Enum64(e) => e.size(),
        Type::Array(a) => {
            let elem = strip_modifiers(btf, btf.resolve_chained_type(a)?)?;
            a.len() * type_size(btf, &elem)?
        }
        other => {
            let stripped = strip_modifiers(btf, other.clone())?;
            if std::mem::discriminant(&stripped) == std::mem::discriminant(other) {
                0
            } else {
                type_size(btf, &stripped)?
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    fn kernel_btf() -> Option<Btf> {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            eprintln!("skipping: {VMLINUX} not present");
            return None;
        }
        Some(load_btf(path).expect("kernel BTF parses"))
    }

    #[test]
    fn resolves_sock_offsets_on_this_kernel() {
        let Some(btf) = kernel_btf() else { return };
        let off = resolve(&btf).unwrap();
        // skc_daddr opens struct sock_common on every kernel since 2.6; the
        // rest are distinct and inside the first cache lines of struct sock.
        assert_eq!(off.daddr, 0);
        assert_eq!(off.rcv_saddr, 4);
        let all = [off.family, off.num, off.dport, off.protocol];
        for (i, a) in all.iter().enumerate() {
            assert!(*a < 1024, "offset {a} implausible");
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn missing_member_is_named() {
        let Some(btf) = kernel_btf() else { return };
        let err = field_offset(&btf, "sock", "__sk_common.skc_no_such_field", 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF: struct sock.__sk_common has no member skc_no_such_field \
             (needed for sock.__sk_common.skc_no_such_field)"
        );
        let err = field_offset(&btf, "no_such_struct_xyz", "a", 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF has no struct no_such_struct_xyz"
        );
    }

    #[test]
    fn wrong_size_and_bitfields_are_refused() {
        let Some(btf) = kernel_btf() else { return };
        let err = field_offset(&btf, "sock", "__sk_common.skc_family", 4).unwrap_err();
        assert!(
            matches!(
                err,
                OffsetError::Size {
                    actual: 2,
                    expected: 4,
                    ..
                }
            ),
            "{err}"
        );
        // skc_reuse is a 4-bit bitfield in sock_common.
        let err = field_offset(&btf, "sock", "__sk_common.skc_reuse", 1).unwrap_err();
        assert!(matches!(err, OffsetError::Bitfield { .. }), "{err}");
    }

    /// A hand-built BTF: `struct sock_common { int skc_daddr; ... }` and
    /// `struct sock { struct sock_common __sk_common; }`, where the common
    /// part lacks the members named in `missing`.
    fn tiny_btf(missing: &[&str]) -> Btf {
        let mut strings = vec![0u8];
        let mut name = |s: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let (int, short) = (name("int"), name("unsigned short"));
        let members: Vec<(&str, u32, u32)> = [
            ("skc_daddr", 1, 0),
            ("skc_rcv_saddr", 1, 32),
            ("skc_dport", 2, 96),
            ("skc_num", 2, 112),
            ("skc_family", 2, 128),
        ]
        .into_iter()
        .filter(|(n, _, _)| !missing.contains(n))
        .collect();
        let member_names: Vec<u32> = members.iter().map(|(n, _, _)| name(n)).collect();
        let (common, sock, sk_common) = (name("sock_common"), name("sock"), name("__sk_common"));
        let mut types = Vec::new();
        let mut put = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // 1: int, 2: unsigned short (BTF_KIND_INT = 1, with an encoding word).
        for (n, size) in [(int, 4), (short, 2)] {
            put(n);
            put(1 << 24);
            put(size);
            put(size * 8);
        }
        // 3: struct sock_common (BTF_KIND_STRUCT = 4).
        put(common);
        put((4 << 24) | members.len() as u32);
        put(24);
        for ((_, ty, bits), n) in members.iter().zip(&member_names) {
            put(*n);
            put(*ty);
            put(*bits);
        }
        // 4: struct sock { struct sock_common __sk_common; }
        put(sock);
        put((4 << 24) | 1);
        put(24);
        put(sk_common);
        put(3);
        put(0);
        let blob = crate::kernel::attach_btf::blob(&types, &strings);
        Btf::from_bytes(&blob).expect("hand-built BTF parses")
    }

    #[test]
    fn a_btf_lacking_a_needed_member_gets_a_clear_error() {
        let full = tiny_btf(&[]);
        assert_eq!(
            field_offset(&full, "sock", "__sk_common.skc_family", 2).unwrap(),
            16
        );
        assert_eq!(
            field_offset(&full, "sock", "__sk_common.skc_num", 2).unwrap(),
            14
        );
        let err = resolve(&tiny_btf(&["skc_family"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF: struct sock.__sk_common has no member skc_family \
             (needed for sock.__sk_common.skc_family)"
        );
        // The rest of what resolve() needs is absent from this tiny BTF too:
        // the first missing piece is named, never a silent default.
        let err = resolve(&full).unwrap_err();
        assert!(err.to_string().contains("sk_protocol"), "{err}");
    }

    /// The child hands back exactly what resolving here gives, and its
    /// failure as the same message.
    #[test]
    fn resolving_in_a_child_gives_the_same_offsets() {
        let Some(btf) = kernel_btf() else { return };
        let here = resolve(&btf).unwrap();
        assert_eq!(resolve_in_child(Path::new(VMLINUX)).unwrap(), here);
        let Err(err) = resolve_in_child(Path::new("/nonexistent/vmlinux")) else {
            panic!("a missing file must not resolve");
        };
        assert!(
            err.to_string()
                .starts_with("cannot read kernel BTF from /nonexistent/vmlinux"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_btf_says_where() {
        let Err(err) = load_btf(Path::new("/nonexistent/vmlinux")) else {
            panic!("a missing file must not parse");
        };
        assert!(
            err.to_string()
                .starts_with("cannot read kernel BTF from /nonexistent/vmlinux")
        );
    }
}
