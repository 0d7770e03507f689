//! The fd iterator (`closetrace-fds`, `iter/task_file`): every socket in
//! every process's fd table in one read, for naming leak holders. Its own
//! small object, owned by the host worker; where it does not load, the
//! host walks /proc instead, and the ready record says why.
use std::io::{self, Read};

use aya::programs::Iter;
use aya::{Btf, Ebpf};
use closetrace_common::{OFFSET_ABSENT, SockOffsets};
use closetrace_core::host::holders::{FdTables, SocketFd};
use closetrace_core::kernel::decode::{self, DecodeError};
use closetrace_core::model::hooks::{Attach, HookReport};
use thiserror::Error;

use super::attach::brief;
use super::attach_btf;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/closetrace-fds"));

/// What the ready record calls it.
pub const HOOK: &str = "socket holders (iter/task_file)";

/// Why the iterator cannot be used: each said in the ready record.
#[derive(Debug, Error)]
pub enum FdIterError {
    #[error("this kernel's BTF lacks file.f_inode, inode.i_mode or inode.i_ino")]
    NoOffsets,
    #[error("loading the fd iterator failed: {0}")]
    Load(String),
    #[error("starting the fd iterator failed: {0}")]
    Start(String),
    #[error("reading the fd iterator: {0}")]
    Read(#[from] io::Error),
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

pub struct FdIterator {
    ebpf: Ebpf,
}

impl FdIterator {
    /// Load the iterator and run it once, so a kernel that refuses it says
    /// so at start-up rather than at the first leak.
    pub fn load(btf: &Btf, offsets: &SockOffsets) -> Result<FdIterator, FdIterError> {
        let needed = [offsets.file_inode, offsets.inode_mode, offsets.inode_ino];
        if needed.contains(&OFFSET_ABSENT) {
            return Err(FdIterError::NoOffsets);
        }
        let load = |e: String| FdIterError::Load(e);
        let mut ebpf = attach_btf::loader()
            .btf(Some(btf))
            .override_global("OFFSETS", offsets, true)
            .load(OBJECT)
            .map_err(|e| load(brief(e)))?;
        program(&mut ebpf)
            .map_err(load)?
            .load("task_file", btf)
            .map_err(|e| load(brief(e)))?;
        let mut it = FdIterator { ebpf };
        it.read_all()?;
        Ok(it)
    }

    /// One pass: a fresh link and iterator each time (an iterator is read
    /// once), read to the end.
    fn read_all(&mut self) -> Result<Vec<u8>, FdIterError> {
        let start = |e: String| FdIterError::Start(e);
        let prog = program(&mut self.ebpf).map_err(start)?;
        let id = prog.attach().map_err(|e| start(brief(e)))?;
        let link = prog.take_link(id).map_err(|e| start(brief(e)))?;
        let mut file = link.into_file().map_err(|e| start(brief(e)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Iter, String> {
    ebpf.program_mut("socket_fds")
        .ok_or("no socket_fds program in the object")?
        .try_into()
        .map_err(brief)
}

impl FdTables for FdIterator {
    fn socket_fds(&mut self) -> io::Result<Vec<SocketFd>> {
        let bytes = self.read_all().map_err(io::Error::other)?;
        decode::socket_fds(&bytes).map_err(io::Error::other)
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
