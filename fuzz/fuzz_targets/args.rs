//! Argument parsing: durations, ratios, sizes, addresses and whole command
//! lines give a value or a clear error, never a panic.
#![no_main]

use clap::Parser;
use closetrace_core::app::cli::{self, Cli};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cli::parse_duration(text);
    let _ = cli::parse_ratio(text);
    let _ = cli::parse_ring_size(text);
    let _ = cli::parse_metrics_addr(text);
    let args = std::iter::once("closetrace").chain(text.split('\n'));
    if let Ok(c) = Cli::try_parse_from(args) {
        let _ = c.ring_bytes();
    }
});
