//! Who holds which socket: every process's fd table, read either by the
//! kernel's fd iterator (one read for the whole host) or, where it does not
//! load, by walking /proc/PID/fd (a readlink per open file: at node scale,
//! most of a core per tick).
use std::collections::HashMap;
use std::{fs, io};

use crate::model::Holder;

use super::procs;

/// One socket in one process's fd table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFd {
    pub pid: u32,
    pub fd: u32,
    pub inode: u32,
}

/// Every socket in every fd table on the host, in one pass. Implemented
/// by the kernel layer (a BPF iterator); an error sends the host back to
/// /proc for good.
pub trait FdTables: Send {
    fn socket_fds(&mut self) -> io::Result<Vec<SocketFd>>;
}

/// Socket inode -> its holders, for the inodes `wanted` names: from
/// `tables` while it works, else from /proc.
pub fn holders_of(
    tables: &mut Option<Box<dyn FdTables>>,
    wanted: &dyn Fn(u32) -> bool,
) -> HashMap<u32, Vec<Holder>> {
    let Some(t) = tables else {
        return socket_holders_of(wanted);
    };
    match t.socket_fds() {
        Ok(fds) => name_holders(fds.into_iter().filter(|s| wanted(s.inode))),
        Err(e) => {
            log::warn!("the fd iterator failed ({e}): holders are read from /proc from now on");
            *tables = None;
            socket_holders_of(wanted)
        }
    }
}

/// Map socket inode -> every process holding it, from /proc/*/fd. Processes
/// that vanish or deny access mid-scan are skipped: this is best effort, as
/// with `ss -p`.
pub fn socket_holders() -> HashMap<u32, Vec<Holder>> {
    socket_holders_of(&|_| true)
}

/// `socket_holders`, keeping only the sockets `wanted` names: a node's fd
/// tables can hold a hundred thousand sockets, and a tick wants a few.
pub fn socket_holders_of(wanted: &dyn Fn(u32) -> bool) -> HashMap<u32, Vec<Holder>> {
    let mut found = Vec::new();
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            socket_fds(pid, &mut |fd, inode| {
                if wanted(inode) {
                    found.push(SocketFd { pid, fd, inode });
                }
            });
        }
    }
    name_holders(found.into_iter())
}

/// Each socket's holders, named from /proc/PID/stat once per process.
fn name_holders(fds: impl Iterator<Item = SocketFd>) -> HashMap<u32, Vec<Holder>> {
    let mut names: HashMap<u32, (String, Option<u64>)> = HashMap::new();
    let mut map: HashMap<u32, Vec<Holder>> = HashMap::new();
    for s in fds {
        let (comm, start) = names
            .entry(s.pid)
            .or_insert_with(|| match procs::stat(s.pid) {
                Some(st) => (st.comm, Some(st.start)),
                None => (String::new(), None),
            });
        map.entry(s.inode).or_default().push(Holder {
            pid: s.pid,
            start: *start,
            comm: comm.clone(),
            fd: s.fd,
        });
    }
    // A thread with an fd table of its own (clone without CLONE_FILES) is
    // iterated apart from its leader, under the same pid: one holder each.
    for holders in map.values_mut() {
        holders.sort_by_key(|h| (h.pid, h.fd));
        holders.dedup_by_key(|h| (h.pid, h.fd));
    }
    map
}

/// Each socket in `pid`'s fd table, as (fd, socket inode). The links are
/// read relative to the open fd directory (readlinkat): resolving
/// /proc/PID/fd/N from the root for each of a hundred thousand fds costs
/// three more path lookups apiece.
fn socket_fds(pid: u32, visit: &mut dyn FnMut(u32, u32)) {
    let Ok(path) = std::ffi::CString::new(format!("/proc/{pid}/fd")) else {
        return;
    };
    // SAFETY: open on a valid C string; the result is checked.
    let dir_fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir_fd < 0 {
        return;
    }
    // SAFETY: dir_fd is ours; fdopendir takes it over (closedir closes it).
    let dir = unsafe { libc::fdopendir(dir_fd) };
    if dir.is_null() {
        // SAFETY: still ours when fdopendir fails.
        unsafe { libc::close(dir_fd) };
        return;
    }
    let mut link = [0u8; 64];
    loop {
        // SAFETY: dir is open; the entry stays valid until the next readdir.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let Some(fd) = name.to_str().ok().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // SAFETY: readlinkat into a buffer of the given length.
        let n = unsafe {
            libc::readlinkat(dir_fd, name.as_ptr(), link.as_mut_ptr().cast(), link.len())
        };
        let Ok(n) = usize::try_from(n) else { continue };
        if let Some(inode) = std::str::from_utf8(&link[..n.min(link.len())])
            .ok()
            .and_then(parse_socket_link)
        {
            visit(fd, inode);
        }
    }
    // SAFETY: closes the stream and dir_fd.
    unsafe { libc::closedir(dir) };
}

/// `socket:[12345]` -> 12345
fn parse_socket_link(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// The iterator's answer, or its failure (None).
    struct Fixed(Option<Vec<SocketFd>>);

    impl FdTables for Fixed {
        fn socket_fds(&mut self) -> io::Result<Vec<SocketFd>> {
            self.0.clone().ok_or_else(|| io::Error::other("refused"))
        }
    }

    fn own_listener() -> (TcpListener, u32) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let path = format!("/proc/self/fd/{}", l.as_raw_fd());
        let inode = std::fs::metadata(path).expect("fd").ino() as u32;
        (l, inode)
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
    }

    #[test]
    fn tables_are_filtered_and_named() {
        let me = std::process::id();
        let fds = vec![
            SocketFd {
                pid: me,
                fd: 9,
                inode: 7,
            },
            SocketFd {
                pid: me,
                fd: 3,
                inode: 7,
            },
            SocketFd {
                pid: me,
                fd: 4,
                inode: 8,
            },
        ];
        let mut tables: Option<Box<dyn FdTables>> = Some(Box::new(Fixed(Some(fds))));
        let found = holders_of(&mut tables, &|inode| inode == 7);
        assert_eq!(found.keys().collect::<Vec<_>>(), [&7]);
        let fds: Vec<u32> = found[&7].iter().map(|h| h.fd).collect();
        assert_eq!(fds, [3, 9]);
        assert!(found[&7].iter().all(|h| h.pid == me && !h.comm.is_empty()));
        assert!(tables.is_some());
    }

    #[test]
    fn a_failing_iterator_falls_back_to_proc_for_good() {
        let (l, inode) = own_listener();
        let mut tables: Option<Box<dyn FdTables>> = Some(Box::new(Fixed(None)));
        let found = holders_of(&mut tables, &|i| i == inode);
        assert!(tables.is_none());
        let h = &found[&inode];
        assert_eq!(
            (h[0].pid, h[0].fd),
            (std::process::id(), l.as_raw_fd() as u32)
        );
    }
}
