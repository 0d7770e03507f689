//! What a walk of every process's fd table costs (naming socket holders),
//! with closetrace's own walk and with the procfs crate, on this machine as
//! it is: run it beside a process holding many sockets. Prints sockets
//! found and the median ms per walk for each, interleaved.
use std::collections::HashMap;
use std::time::Instant;

use closetrace_core::host::holders;

const ROUNDS: usize = 7;

fn ours() -> usize {
    holders::socket_holders().values().map(Vec::len).sum()
}

fn with_procfs() -> usize {
    let mut map: HashMap<u64, Vec<(i32, i32)>> = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return 0;
    };
    for p in all.flatten() {
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(inode) = fd.target {
                map.entry(inode).or_default().push((p.pid, fd.fd));
            }
        }
    }
    map.values().map(Vec::len).sum()
}

fn measure(name: &str, walk: fn() -> usize) {
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        found = walk();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{name:<18} {found:>7} socket fds  median {:>8.2} ms  min {:>8.2} ms",
        times[times.len() / 2],
        times[0]
    );
}

fn main() {
    for _ in 0..2 {
        measure("closetrace walk", ours);
        measure("procfs crate", with_procfs);
    }
}
