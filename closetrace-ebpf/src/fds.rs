//! `closetrace-fds`: the holders of sockets, from the kernel's own fd
//! tables. A BPF iterator over every open file of every process
//! (`iter/task_file`, Linux 5.8) writes one `SocketFd` per socket, so
//! naming the holders of leaked sockets costs one read of this iterator
//! instead of a readlink of every /proc/PID/fd entry on the host (at node
//! scale, most of a core).
//!
//! Its own object, without the tracer's maps: userspace runs it from the
//! host worker, which cannot reach the tracer's programs.
#![no_std]
#![no_main]

mod object;

use core::ffi::c_void;

use aya_ebpf::bindings::seq_file;
use aya_ebpf::helpers::bpf_seq_write;
use closetrace_common::{Config, S_IFMT, S_IFSOCK, SockOffsets, SocketFd};

/// Offsets resolved from the running kernel's BTF, written before load.
#[unsafe(no_mangle)]
static OFFSETS: SockOffsets = Config::UNSET.offsets;

/// `struct bpf_iter_meta`: where the iterator's output goes.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task_file`, the program's context: one open file of
/// one task (threads sharing their leader's table are skipped), or null
/// pointers once, at the end.
#[repr(C)]
struct TaskFile {
    meta: *const IterMeta,
    task: *const u8,
    fd: u32,
    file: *const u8,
}

#[unsafe(link_section = "iter/task_file")]
#[unsafe(no_mangle)]
pub fn socket_fds(ctx: *mut c_void) -> i32 {
    try_socket_fds(ctx.cast()).unwrap_or(0)
}

fn try_socket_fds(ctx: *const TaskFile) -> Option<i32> {
    let off = offsets();
    let (meta, task, fd, file) = unsafe { ((*ctx).meta, (*ctx).task, (*ctx).fd, (*ctx).file) };
    if task.is_null() || file.is_null() {
        return None;
    }
    let inode: *const u8 = load(file, off.file_inode)?;
    if inode.is_null() {
        return None;
    }
    let mode: u16 = load(inode, off.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let entry = SocketFd {
        tgid: load::<i32>(task, off.task_tgid)? as u32,
        fd,
        inode: load(inode, off.inode_ino)?,
    };
    let seq = unsafe { (*meta).seq };
    let len = size_of::<SocketFd>() as u32;
    unsafe { bpf_seq_write(seq, (&raw const entry).cast(), len) };
    Some(0)
}

/// A plain load through a BTF-typed pointer (the context's task and file,
/// and the inode loaded from the file): the verifier checks it against
/// the kernel's BTF, with the offset a constant of frozen .rodata.
#[inline(always)]
fn load<T>(base: *const u8, off: u32) -> Option<T> {
    if off == closetrace_common::OFFSET_ABSENT {
        return None;
    }
    Some(unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize).cast::<T>()) })
}

#[inline(always)]
fn offsets() -> &'static SockOffsets {
    // As for the tracer's `config()`: the value is patched into .rodata at
    // load time, so its address passes through a volatile read.
    let addr = &raw const OFFSETS;
    unsafe { &*core::ptr::read_volatile(&addr) }
}
