//! The fd iterator (`closetrace-fds`, `iter/task_file`): every socket in
//! every process's fd table in one read, for naming leak holders. Its own
//! small object, owned by the host worker; where it does not load, the
//! host walks /proc instead, and the ready record says why.
use std::io::Read;

use aya::programs::Iter;
use aya::{Btf, Ebpf};
use closetrace_common::{OFFSET_ABSENT, SockOffsets};
use closetrace_core::host::holders::{FdTables, SocketFd};
use closetrace_core::kernel::decode;
use closetrace_core::model::hooks::{Attach, HookReport};

use super::attach::brief;
use super::attach_btf;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/closetrace-fds"));

/// What the ready record calls it.
pub const HOOK: &str = "socket holders (iter/task_file)";

pub struct FdIterator {
    ebpf: Ebpf,
}

impl FdIterator {
    /// Load the iterator and run it once, so a kernel that refuses it says
    /// so at start-up rather than at the first leak.
    pub fn load(btf: &Btf, offsets: &SockOffsets) -> Result<FdIterator, String> {
        let needed = [offsets.file_inode, offsets.inode_mode, offsets.inode_ino];
        if needed.contains(&OFFSET_ABSENT) {
            return Err("this kernel's BTF lacks file.f_inode, inode.i_mode or inode.i_ino".into());
        }
        let mut ebpf = attach_btf::loader()
            .btf(Some(btf))
            .override_global("OFFSETS", offsets, true)
            .load(OBJECT)
            .map_err(brief)?;
        let prog: &mut Iter = ebpf
            .program_mut("socket_fds")
            .ok_or("no socket_fds program in the object")?
            .try_into()
            .map_err(brief)?;
        prog.load("task_file", btf).map_err(brief)?;
        let mut it = FdIterator { ebpf };
        it.read_all()?;
        Ok(it)
    }

    /// One pass: a fresh link and iterator each time (an iterator is read
    /// once), read to the end.
    fn read_all(&mut self) -> Result<Vec<u8>, String> {
        let prog: &mut Iter = self
            .ebpf
            .program_mut("socket_fds")
            .ok_or("the program is gone")?
            .try_into()
            .map_err(brief)?;
        let id = prog.attach().map_err(brief)?;
        let link = prog.take_link(id).map_err(brief)?;
        let mut file = link.into_file().map_err(brief)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("reading the iterator: {e}"))?;
        Ok(bytes)
    }
}

impl FdTables for FdIterator {
    fn socket_fds(&mut self) -> Result<Vec<SocketFd>, String> {
        let bytes = self.read_all()?;
        decode::socket_fds(&bytes).map_err(|e| e.to_string())
    }
}

/// The iterator, or the report of why holders come from /proc.
pub fn load(btf: &Btf, offsets: &SockOffsets) -> (Option<FdIterator>, HookReport) {
    match FdIterator::load(btf, offsets) {
        Ok(it) => (Some(it), HookReport::ok(HOOK, Attach::Iter)),
        Err(reason) => (
            None,
            HookReport::degraded(
                HOOK,
                Attach::Procfs,
                format!(
                    "{reason}; holders are read from /proc/PID/fd instead, a readlink per \
                     open file on the host at each tick that names leak holders"
                ),
            ),
        ),
    }
}
