//! closetrace's kernel programs.
//!
//! `inet_sock_set_state` turns every TCP state change into a ring-buffer
//! record stamped with the socket's owner. The owner is not `current`: most
//! transitions run in softirq or in the peer's syscall, so the owner is kept
//! per socket (by cookie) in `SOCKS` and refreshed only from process context:
//! owner-only transitions (connect, listen, close), accept() for accepted
//! sockets (their listener's owner until then), and, with
//! `--owner-from-io`, every send and receive. With lean owners
//! (`Config::lean_owners`) only listeners and watched leaks make entries; under `--states`
//! userspace then keeps the owners from the stream, and accept() sends it
//! the acceptor.
//!
//! Each entry point below is one line calling a `try_` function in its
//! module: `state` (state changes, failed connects), `owners` (accept,
//! send/recv, shutdown), `calls` (bind failures), `close` (tcp_close),
//! `process_tree` (fork and exit); `maps`, `kread` (kernel reads),
//! `filters` and `emit` serve them all.
#![no_std]
#![no_main]

mod calls;
mod close;
mod emit;
mod filters;
mod kread;
mod maps;
mod object;
mod owners;
mod process_tree;
mod state;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use closetrace_common::syscall;

use calls::{finish_call, stash_call};
use close::{try_close_fentry, try_close_kprobe};
use owners::{shutdown_mark, try_accept, try_io};
use process_tree::{try_exit, try_fork};
use state::try_state;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    try_state(&ctx).map_or_else(|e| e, |()| 0)
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    try_io(&ctx).map_or_else(|e| e, |()| 0)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    try_io(&ctx).map_or_else(|e| e, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_shutdown")]
pub fn sys_enter_shutdown(_ctx: TracePointContext) -> u32 {
    shutdown_mark(true).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_shutdown")]
pub fn sys_exit_shutdown(_ctx: TracePointContext) -> u32 {
    shutdown_mark(false).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    try_accept(&ctx).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    try_accept(&ctx).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    stash_call(&ctx, syscall::BIND).map_or_else(|e| e as u32, |()| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    finish_call(&ctx, syscall::BIND).map_or_else(|e| e as u32, |()| 0)
}

/// `--pid-tree`: a followed process's child is followed too. Runs in the
/// parent's context.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    try_fork(&ctx).map_or_else(|e| e, |()| 0)
}

/// `--pid`, `--pid-tree`: a followed process that exits is dropped, so a
/// later process reusing its pid is not followed by accident.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    try_exit().map_or_else(|e| e, |()| 0)
}

/// The exact close hook where trampolines load.
#[fentry(function = "tcp_close")]
pub fn tcp_close_fentry(ctx: FEntryContext) -> i32 {
    try_close_fentry(&ctx).map_or_else(|e| e, |()| 0)
}

/// The exact close hook where kprobes exist but trampolines do not.
#[kprobe]
pub fn tcp_close_kprobe(ctx: ProbeContext) -> u32 {
    try_close_kprobe(&ctx).map_or_else(|e| e as u32, |()| 0)
}
