//! The ring-buffer decoding boundary: any bytes the kernel (or a bug in it)
//! could hand over give an event or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = closetrace_core::kernel::decode::decode(data) {
        // A decoded event is usable downstream: formatting it must not panic.
        let _ = format!("{ev:?}");
    }
});
