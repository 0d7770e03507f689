//! closetrace without the kernel: everything that builds and is tested
//! without the eBPF object or root. The `closetrace` crate adds the kernel
//! side (loading, attaching, maps, the ring buffer) and the commands.
//!
//! Layers, and what each may import (`cargo xtask lint-layers` checks it):
//! - `model`: the shared vocabulary (events, sockets, tasks, hooks, clocks);
//!   imports nothing of closetrace.
//! - `kernel`: the one decoding boundary, kernel bytes to model and back;
//!   imports `model`.
//! - `host`: what reads the running system (sock_diag, /proc, cgroups,
//!   sysctls, privileges); imports `model`.
//! - `track`: pure state machines fed events and a clock; imports `model`.
//! - `output`: records, text, sinks, summary, metrics, report; imports
//!   `model` and `track`.
//! - `app`: the command line and the coordinator; imports every layer.
pub mod app;
pub mod host;
pub mod kernel;
pub mod model;
pub mod output;
pub mod track;
