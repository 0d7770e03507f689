//! The kernel side: loading the eBPF object, attaching its programs with
//! their fallback chain, the maps userspace reads and writes, and the ring
//! buffer. Kernel bytes become model types only in
//! `closetrace_core::kernel::decode`, which `ring` and `maps` call.
pub mod attach;
pub mod load;
pub mod maps;
pub mod offsets;
pub mod ring;
pub mod selection;
