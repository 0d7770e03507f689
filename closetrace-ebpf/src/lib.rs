// Host-side stub: closetrace's build script depends on this crate so that
// cargo rebuilds the embedded eBPF object whenever its sources change.
#![no_std]
